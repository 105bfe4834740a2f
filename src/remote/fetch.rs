//! Ranged GETs in parallel under one memory bound: a [`Budget`] of requests and bytes shared by
//! every thread of a load, and [`stream`], which keeps a read's ranges in flight within it and
//! hands their bodies to the calling thread piece by piece as they arrive (never gathered whole,
//! unless the reader asks for that with [`stream_whole`]).

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

/// What a request task hands the reading thread: chunks of its range as they arrive (the
/// offset of the first within the range, then the chunks in order), then its end, with the
/// permit, which is given back only after every chunk before it was copied.
enum Event {
    Data(u64, Vec<Bytes>),
    End(Result<()>, Permit),
}

/// Fetches `ranges` of `obj` (at most `concurrency` of this read at once, within `budget`) and
/// calls `land(i, at, bytes)` on the calling thread for each piece of range `i` as it arrives
/// (`at` its offset within the range): a range's pieces come in order, those of different ranges
/// interleaved. The read returns once every range arrived whole. The first error (of a request
/// or of `land`) stops it: requests still in flight are abandoned and their permits given back.
pub(crate) fn stream(
    client: &Arc<Client>,
    budget: &Arc<Budget>,
    obj: &Arc<Object>,
    ranges: &[std::ops::Range<u64>],
    mut land: impl FnMut(usize, u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let (tx, rx) = crossbeam_channel::unbounded::<(usize, Event)>();
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
            let i = next;
            let data = tx.clone();
            let fut = client.fetch(obj, r, move |at, chunks| {
                data.send((i, Event::Data(at, chunks))).is_ok()
            });
            match spawn(
                async move { (i, Event::End(fut.await, permit)) },
                tx.clone(),
            ) {
                Ok(t) => tasks.push(t),
                Err(e) => break 'read Err(e),
            }
            next += 1;
            in_flight += 1;
        }
        if in_flight == 0 {
            break Ok(());
        }
        let Ok((i, event)) = rx.recv() else {
            break Err(crate::ErrorKind::Remote {
                url: obj.url.clone(),
                range: None,
                reason: "a request task ended without an answer".into(),
            }
            .into());
        };
        match event {
            Event::Data(mut at, chunks) => {
                LANDING.with(|l| l.set(l.get() + 1));
                let landed = chunks.iter().try_for_each(|c| {
                    let r = land(i, at, c);
                    at += c.len() as u64;
                    r
                });
                LANDING.with(|l| l.set(l.get() - 1));
                if let Err(e) = landed {
                    break Err(e);
                }
            }
            Event::End(done, permit) => {
                in_flight -= 1;
                drop(permit);
                if let Err(e) = done {
                    break Err(e);
                }
            }
        }
    };
    abandon(&mut tasks);
    outcome
}

/// [`stream`] for a reader that needs each range whole (a box of whole rows, say): the pieces of
/// a range are gathered into one buffer (within the same budget) and `land(i, bytes)` is called
/// once range `i` is complete.
pub(crate) fn stream_whole(
    client: &Arc<Client>,
    budget: &Arc<Budget>,
    obj: &Arc<Object>,
    ranges: &[std::ops::Range<u64>],
    mut land: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut parts: Vec<Vec<u8>> = vec![Vec::new(); ranges.len()];
    stream(client, budget, obj, ranges, |i, at, bytes| {
        let want = (ranges[i].end - ranges[i].start) as usize;
        if at == 0 && bytes.len() == want {
            return land(i, bytes);
        }
        let part = &mut parts[i];
        if part.capacity() == 0 {
            part.reserve_exact(want);
        }
        part.extend_from_slice(bytes);
        if part.len() < want {
            return Ok(());
        }
        let whole = std::mem::take(part);
        land(i, &whole)
    })
}

/// Fetches bytes `range` of `obj` into `dst` (as long as the range), in ranges of the client's
/// `range_bytes`, several at once within `budget`, each piece copied into place by `copy` as it
/// arrives.
pub(crate) fn into(
    client: &Arc<Client>,
    budget: &Arc<Budget>,
    obj: &Arc<Object>,
    range: std::ops::Range<u64>,
    dst: &mut [u8],
    copy: fn(&mut [u8], &[u8]),
) -> Result<()> {
    let ranges = cut(range.start, range.end, client.options.range_bytes);
    stream(client, budget, obj, &ranges, |i, at, bytes| {
        let at = (ranges[i].start - range.start + at) as usize;
        copy(&mut dst[at..at + bytes.len()], bytes);
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
