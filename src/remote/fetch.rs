//! Ranged GETs in parallel under one memory bound: a [`Budget`] of requests and bytes shared by
//! every thread of a load, and [`stream`], which keeps a read's ranges in flight within it and
//! hands each to the calling thread as it lands.

use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;

use super::client::{spawn, Client, Object};
use crate::base::error::Result;

/// Requests and bytes in flight, shared by all readers of a load: at most `concurrency` requests
/// and `range_bytes × concurrency` bytes fetched but not yet copied.
pub(crate) struct Budget {
    /// Requests and bytes free; negative while a nested read runs on credit (see [`Budget::take`]).
    free: Mutex<(i64, i64)>,
    total: (i64, i64),
    freed: Condvar,
}

thread_local! {
    /// How many ranges this thread is copying right now (in `land`). A copy runs on the rayon
    /// pool and may, while it waits for its own parallel pieces, run another read of the same
    /// load on this thread: that nested read must not wait for permits that only the suspended
    /// outer read can give back.
    static LANDING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A share of the [`Budget`], given back when dropped (after its bytes were copied, or when its
/// request was abandoned).
pub(crate) struct Permit {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut free = self.budget.free.lock().unwrap_or_else(|p| p.into_inner());
        free.0 += 1;
        free.1 += self.bytes as i64;
        self.budget.freed.notify_all();
    }
}

impl Budget {
    pub(crate) fn new(concurrency: usize, bytes: u64) -> Arc<Budget> {
        let total = (
            concurrency.max(1) as i64,
            bytes.clamp(1, i64::MAX as u64) as i64,
        );
        Arc::new(Budget {
            free: Mutex::new(total),
            total,
            freed: Condvar::new(),
        })
    }

    /// A permit for a request of `bytes`, if there is room now.
    fn try_take(self: &Arc<Self>, bytes: u64) -> Option<Permit> {
        let bytes = bytes.min(self.total.1 as u64);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.0 <= 0 || free.1 < bytes as i64 {
            return None;
        }
        free.0 -= 1;
        free.1 -= bytes as i64;
        Some(Permit {
            budget: self.clone(),
            bytes,
        })
    }

    /// A permit for a request of `bytes`, waiting for room. Only a reader with nothing in flight
    /// waits, so the permits it waits for belong to readers that are making progress; a read
    /// nested in a copy on this thread (see `LANDING`) takes its first permit on credit instead,
    /// so the bound is exceeded by at most one range per nested read.
    fn take(self: &Arc<Self>, bytes: u64) -> Permit {
        let bytes = bytes.min(self.total.1 as u64);
        let nested = LANDING.with(|l| l.get()) > 0;
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while !nested && (free.0 <= 0 || free.1 < bytes as i64) {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        free.0 -= 1;
        free.1 -= bytes as i64;
        Permit {
            budget: self.clone(),
            bytes,
        }
    }
}

/// Fetches `ranges` of `obj` (at most `concurrency` of this read at once, within `budget`) and
/// calls `land(i, bytes)` on the calling thread for range `i` as it arrives, in any order. The
/// first error (of a request or of `land`) stops the read: requests still in flight are
/// abandoned and their permits given back.
pub(crate) fn stream(
    client: &Arc<Client>,
    budget: &Arc<Budget>,
    obj: &Arc<Object>,
    ranges: &[std::ops::Range<u64>],
    mut land: impl FnMut(usize, Bytes) -> Result<()>,
) -> Result<()> {
    type Landed = (usize, Result<Bytes>, Permit);
    let (tx, rx) = crossbeam_channel::unbounded::<Landed>();
    let mut tasks = Vec::new();
    let abandon = |tasks: &mut Vec<tokio::task::JoinHandle<()>>| {
        for t in tasks.drain(..) {
            t.abort();
        }
    };
    let limit = client.options.concurrency.max(1);
    let (mut next, mut in_flight) = (0, 0);
    let outcome = 'read: loop {
        while next < ranges.len() && in_flight < limit {
            let r = ranges[next].clone();
            let len = r.end - r.start;
            let permit = if in_flight == 0 {
                budget.take(len)
            } else {
                match budget.try_take(len) {
                    Some(p) => p,
                    None => break,
                }
            };
            let fut = client.fetch(obj, r);
            let i = next;
            match spawn(async move { (i, fut.await, permit) }, tx.clone()) {
                Ok(t) => tasks.push(t),
                Err(e) => break 'read Err(e),
            }
            next += 1;
            in_flight += 1;
        }
        if in_flight == 0 {
            break Ok(());
        }
        let Ok((i, got, permit)) = rx.recv() else {
            break Err(crate::ErrorKind::Remote {
                url: obj.url.clone(),
                range: None,
                reason: "a request task ended without an answer".into(),
            }
            .into());
        };
        in_flight -= 1;
        let landed = got.and_then(|bytes| {
            LANDING.with(|l| l.set(l.get() + 1));
            let r = land(i, bytes);
            LANDING.with(|l| l.set(l.get() - 1));
            r
        });
        drop(permit);
        if let Err(e) = landed {
            break Err(e);
        }
    };
    abandon(&mut tasks);
    outcome
}

/// Fetches bytes `range` of `obj` into `dst` (as long as the range), in ranges of the client's
/// `range_bytes`, several at once within `budget`, each copied into place by `copy`.
pub(crate) fn into(
    client: &Arc<Client>,
    budget: &Arc<Budget>,
    obj: &Arc<Object>,
    range: std::ops::Range<u64>,
    dst: &mut [u8],
    copy: fn(&mut [u8], &[u8]),
) -> Result<()> {
    let ranges = cut(range.start, range.end, client.options.range_bytes);
    stream(client, budget, obj, &ranges, |i, bytes| {
        let at = (ranges[i].start - range.start) as usize;
        copy(&mut dst[at..at + bytes.len()], &bytes);
        Ok(())
    })
}

/// `[start, end)` cut into ranges of `step` bytes (the last one shorter).
pub(crate) fn cut(start: u64, end: u64, step: u64) -> Vec<std::ops::Range<u64>> {
    let step = step.max(1);
    let mut out = Vec::new();
    let mut a = start;
    while a < end {
        let b = (a + step).min(end);
        out.push(a..b);
        a = b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_requests_and_bytes_and_gives_back_on_drop() {
        let b = Budget::new(2, 100);
        let p1 = b.try_take(60).unwrap();
        assert!(b.try_take(60).is_none(), "bytes bound");
        let p2 = b.try_take(40).unwrap();
        assert!(b.try_take(1).is_none(), "request bound");
        drop(p1);
        drop(p2);
        let p3 = b.take(1000); // clamped to the whole budget
        assert_eq!(*b.free.lock().unwrap(), (1, 0));
        drop(p3);
        assert_eq!(*b.free.lock().unwrap(), (2, 100));
        assert_eq!(cut(10, 35, 10), vec![10..20, 20..30, 30..35]);
        assert!(cut(5, 5, 10).is_empty());
        // A read nested in a copy takes its permit on credit rather than waiting forever.
        let held = b.take(100);
        LANDING.with(|l| l.set(1));
        let nested = b.take(10);
        LANDING.with(|l| l.set(0));
        assert_eq!(*b.free.lock().unwrap(), (0, -10));
        drop((held, nested));
        assert_eq!(*b.free.lock().unwrap(), (2, 100));
    }
}
