//! Ranged GETs in parallel under one memory bound: a [`Budget`] of requests and bytes shared by
//! every thread of a load, and [`stream`], which keeps a read's ranges in flight within it and
//! hands their bodies to the calling thread piece by piece as they arrive (never gathered whole,
//! unless the reader asks for that with [`stream_whole`]).

use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;

use super::client::{Client, Object};
use super::runtime::{spawn, unpanicked};
use crate::base::error::Result;

/// Requests and bytes in flight, shared by all readers of a load: at most `concurrency` requests
/// and `range_bytes × concurrency` bytes fetched but not yet copied.
pub(crate) struct Budget {
    /// Requests and bytes free.
    free: Mutex<(i64, i64)>,
    total: (i64, i64),
    freed: Condvar,
    /// The load's cancel token: a read under this budget stops when it is cancelled, between
    /// the pieces of its ranges (and at least every [`CANCEL_POLL`] while it waits for them).
    cancel: Option<crate::load::CancelToken>,
}

/// How often a read with a cancel token looks at it while it waits for an answer.
pub(crate) const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(100);

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
        Budget::cancellable(concurrency, bytes, None)
    }

    /// [`new`](Self::new), for a load that `cancel` stops.
    pub(crate) fn cancellable(
        concurrency: usize,
        bytes: u64,
        cancel: Option<crate::load::CancelToken>,
    ) -> Arc<Budget> {
        let total = (
            concurrency.max(1) as i64,
            bytes.clamp(1, i64::MAX as u64) as i64,
        );
        Arc::new(Budget {
            free: Mutex::new(total),
            total,
            freed: Condvar::new(),
            cancel,
        })
    }

    /// The cancel token of the load this budget serves, if it has one.
    pub(crate) fn cancel(&self) -> Option<&crate::load::CancelToken> {
        self.cancel.as_ref()
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

    /// A permit for a request of `bytes`, waiting for room, or
    /// [`Cancelled`](crate::ErrorKind::Cancelled) once `cancel` is (looked at every
    /// [`CANCEL_POLL`] while it waits). Only a reader with
    /// nothing in flight waits, so the permits it waits for belong to readers that are making
    /// progress: a reader holds permits only while it waits for its answers (on a channel, not on
    /// the pool) or copies them in, and it copies [`serially`](crate::base::par::serially), so
    /// that no job of the pool that waits here can end up under it (see [`stream`]).
    fn take(
        self: &Arc<Self>,
        bytes: u64,
        cancel: Option<&crate::load::CancelToken>,
    ) -> Result<Permit> {
        let bytes = bytes.min(self.total.1 as u64);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while free.0 <= 0 || free.1 < bytes as i64 {
            free = match cancel {
                None => self.freed.wait(free).unwrap_or_else(|p| p.into_inner()),
                Some(c) => {
                    c.check()?;
                    let waited = self.freed.wait_timeout(free, CANCEL_POLL);
                    waited.unwrap_or_else(|p| p.into_inner()).0
                }
            };
        }
        free.0 -= 1;
        free.1 -= bytes as i64;
        Ok(Permit {
            budget: self.clone(),
            bytes,
        })
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
/// `land` runs [`serially`](crate::base::par::serially): the crate's copies and checksums in it
/// stay on this thread.
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
    // The load's token, or without one this thread's scope (a checkpoint opened within a load).
    let scoped = match &budget.cancel {
        Some(_) => None,
        None => super::runtime::scoped_cancel(),
    };
    let cancel = budget.cancel.as_ref().or(scoped.as_ref());
    let outcome = 'read: loop {
        if let Some(c) = cancel {
            if let Err(e) = c.check() {
                break Err(e);
            }
        }
        while next < ranges.len() && in_flight < limit {
            // No new request once cancelled (the wait for a permit may have been long).
            if let Some(Err(e)) = cancel.map(|c| c.check()) {
                break 'read Err(e);
            }
            let r = ranges[next].clone();
            let len = r.end - r.start;
            let permit = if in_flight == 0 {
                match budget.take(len, cancel) {
                    Ok(p) => p,
                    Err(e) => break 'read Err(e),
                }
            } else {
                match budget.try_take(len) {
                    Some(p) => p,
                    None => break,
                }
            };
            let i = next;
            let data = tx.clone();
            let (url, span) = (obj.url.clone(), (r.start, r.end));
            let fut = client.fetch(obj, r, move |at, chunks| {
                data.send((i, Event::Data(at, chunks))).is_ok()
            });
            // A panic in the request is this read's error: the task still answers, so the
            // read does not wait for it forever.
            let fut = unpanicked(fut);
            let answer = async move {
                let done = fut.await.unwrap_or_else(|reason| {
                    Err(crate::ErrorKind::Remote {
                        url,
                        range: Some(span),
                        reason,
                    }
                    .into())
                });
                (i, Event::End(done, permit))
            };
            match spawn(answer, tx.clone()) {
                Ok(t) => tasks.push(t),
                Err(e) => break 'read Err(e),
            }
            next += 1;
            in_flight += 1;
        }
        if in_flight == 0 {
            break Ok(());
        }
        let got = match cancel {
            None => rx.recv().map_err(|_| ()),
            // Woken now and then to look at the token, so that a stalled answer does not hold a
            // cancelled load.
            Some(_) => match rx.recv_timeout(CANCEL_POLL) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue 'read,
                r => r.map_err(|_| ()),
            },
        };
        let Ok((i, event)) = got else {
            break Err(crate::ErrorKind::Remote {
                url: obj.url.clone(),
                range: None,
                reason: "a request task ended without an answer".into(),
            }
            .into());
        };
        match event {
            Event::Data(at, chunks) => {
                if let Err(e) = land_chunks(&mut land, i, at, &chunks) {
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

/// Hands `chunks` of range `i` (the first at offset `at` within it) to `land`, in order, on this
/// thread alone: a parallel copy would let this thread, while it waits for its pieces, run other
/// jobs of the pool, and a thread that took a piece could, waiting in turn, start a read that
/// waits for the permits this read holds, never to give the piece back (the whole load hangs).
fn land_chunks(
    land: &mut impl FnMut(usize, u64, &[u8]) -> Result<()>,
    i: usize,
    mut at: u64,
    chunks: &[Bytes],
) -> Result<()> {
    crate::base::par::serially(|| {
        chunks.iter().try_for_each(|c| {
            let r = land(i, at, c);
            at += c.len() as u64;
            r
        })
    })
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
        let p3 = b.take(1000, None).unwrap(); // clamped to the whole budget
        assert_eq!(*b.free.lock().unwrap(), (1, 0));
        drop(p3);
        assert_eq!(*b.free.lock().unwrap(), (2, 100));
        assert_eq!(cut(10, 35, 10), vec![10..20, 20..30, 30..35]);
        assert!(cut(5, 5, 10).is_empty());
    }

    /// A read waiting for a permit of a cancelled load stops waiting (and starts no request):
    /// it waited until a permit came back, then sent requests it abandoned at once.
    #[test]
    fn a_wait_for_a_permit_ends_when_the_load_is_cancelled() {
        let token = crate::load::CancelToken::new();
        let b = Budget::cancellable(1, 100, Some(token.clone()));
        let held = b.try_take(10).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = b.clone();
        std::thread::spawn(move || {
            let _ = tx.send(waiter.take(10, waiter.cancel()).map(drop));
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        token.cancel();
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("still waiting for a permit after the cancel");
        let e = got.unwrap_err();
        assert!(matches!(e.kind(), crate::ErrorKind::Cancelled), "{e}");
        drop(held);
    }

    /// `stream`'s pieces reach `land` in order, with their offsets, and serially.
    #[test]
    fn chunks_land_in_order_and_serially() {
        let mut seen = Vec::new();
        let chunks = [Bytes::from_static(b"abc"), Bytes::from_static(b"de")];
        let mut land = |i: usize, at: u64, b: &[u8]| {
            seen.push((i, at, b.to_vec(), crate::base::par::is_serial()));
            Ok(())
        };
        land_chunks(&mut land, 3, 10, &chunks).unwrap();
        assert_eq!(
            seen,
            [
                (3, 10, b"abc".to_vec(), true),
                (3, 13, b"de".to_vec(), true)
            ]
        );
        assert!(!crate::base::par::is_serial());
    }

    /// What `stream` meets on a load's pool: each job holds the only permit while it copies a
    /// range, and the others wait for it. A copy in parallel bands hung such a pool (a thread
    /// that took a band went on, while waiting for another, to a job that waited for the permit,
    /// which the band's owner could then never give back: found by review, hung in the first
    /// rounds here); copied [`serially`](crate::base::par::serially), as `stream` copies, every
    /// round ends. Each round under a watchdog.
    #[test]
    fn jobs_holding_the_only_permit_while_copying_never_strand_the_pool() {
        use rayon::prelude::*;
        let src: Arc<Vec<u8>> = Arc::new((0..12 << 20).map(|i| (i % 251) as u8).collect());
        let want = crate::base::crc::crc32c(&src);
        for round in 0..4 {
            let (budget, src) = (Budget::new(1, 1 << 30), src.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(4)
                    .build()
                    .unwrap();
                let crcs: Vec<u32> = pool.install(|| {
                    (0..12)
                        .into_par_iter()
                        .with_max_len(1)
                        .map(|_| {
                            let _permit = budget.take(1, None).unwrap();
                            let mut dst = vec![0u8; src.len()];
                            crate::base::par::serially(|| {
                                crate::base::copy::copy_whole(&src, &mut dst)
                            })
                        })
                        .collect()
                });
                let _ = tx.send(crcs);
            });
            let crcs = rx
                .recv_timeout(std::time::Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("round {round}: the pool hung"));
            assert!(crcs.iter().all(|&c| c == want));
        }
    }
}
