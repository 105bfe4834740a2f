//! The staging ring's buffers as they become usable. Page-locking fresh memory costs time a first
//! load of a process would otherwise wait for before its first byte moves (12–19 ms for the
//! ring's 256 MiB on an H200): the first buffer is page-locked before the ring starts, the others
//! by a helper thread while the ring already fills and copies through the first ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Mutex;

/// The buffers a ring may use: those ready now, and those still being page-locked, which join
/// as they are ([`Staged::poll`]).
pub(crate) struct Staged<'a> {
    ready: Vec<&'a mut [u8]>,
    coming: Option<Receiver<&'a mut [u8]>>,
}

impl<'a> Staged<'a> {
    /// Buffers that are all usable now.
    pub(crate) fn new(ready: Vec<&'a mut [u8]>) -> Staged<'a> {
        Staged {
            ready,
            coming: None,
        }
    }

    /// Takes in the buffers page-locked since the last call; returns how many are usable (the
    /// first ones in the order they came, never fewer than before).
    pub(crate) fn poll(&mut self) -> usize {
        if let Some(rx) = &self.coming {
            loop {
                match rx.try_recv() {
                    Ok(b) => self.ready.push(b),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.coming = None;
                        break;
                    }
                }
            }
        }
        self.ready.len()
    }

    /// Usable buffer `b` (below what [`poll`](Self::poll) said).
    pub(crate) fn buffer(&mut self, b: usize) -> &mut [u8] {
        &mut *self.ready[b]
    }
}

/// Runs `f` over `bufs` as `lock` makes them usable: the first is locked here first (its refusal
/// is returned, and nothing runs), the others in order by a helper thread while `f` runs, which
/// stops at the first refusal and once `f` has returned. Returns `f`'s result (or its panic,
/// after the helper stopped) and the start addresses of the buffers locked, first to last: the
/// caller unlocks those, and only those.
pub(crate) fn staggered<'a, R>(
    mut bufs: Vec<&'a mut [u8]>,
    lock: &(dyn Fn(&mut [u8]) -> std::result::Result<(), String> + Sync),
    f: impl FnOnce(&mut Staged<'a>) -> R,
) -> std::result::Result<(std::thread::Result<R>, Vec<usize>), String> {
    if bufs.is_empty() {
        return Ok((Ok(f(&mut Staged::new(bufs))), Vec::new()));
    }
    let rest = bufs.split_off(1);
    lock(&mut *bufs[0])?;
    // Each buffer listed as soon as it is locked, so that the list is whole whatever happens.
    let locked = Mutex::new(vec![bufs[0].as_ptr() as usize]);
    let stop = AtomicBool::new(false);
    let (tx, rx) = channel();
    let mut staged = Staged {
        ready: bufs,
        coming: Some(rx),
    };
    let r = std::thread::scope(|s| {
        let (stop, locked) = (&stop, &locked);
        let helper = move || {
            // A panic in `lock` (none is expected: it reports refusals) only ends the helper; the
            // scope would otherwise raise it again past the ring's result.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                for b in rest {
                    if stop.load(Ordering::Relaxed) || lock(&mut *b).is_err() {
                        break;
                    }
                    locked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(b.as_ptr() as usize);
                    // A ring that has finished no longer takes it: still locked, still listed.
                    let _ = tx.send(b);
                }
            }));
        };
        // Without a helper (no thread to be had) the ring keeps to the first buffer.
        let _ = std::thread::Builder::new().spawn_scoped(s, helper);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut staged)));
        stop.store(true, Ordering::Relaxed);
        r // the scope waits for the helper
    });
    let locked = locked.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok((r, locked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn the_first_buffer_is_locked_before_the_ring_starts_and_the_rest_join_in_order() {
        let mut mem = vec![0u8; 4 * 64];
        let bufs: Vec<&mut [u8]> = mem.chunks_mut(64).collect();
        let addrs: Vec<usize> = bufs.iter().map(|b| b.as_ptr() as usize).collect();
        let order = Mutex::new(Vec::new());
        let lock = |b: &mut [u8]| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            b[0] = 1; // locked buffers are marked
            order.lock().unwrap().push(b.as_ptr() as usize);
            Ok::<(), String>(())
        };
        let (r, locked) = staggered(bufs, &lock, |s| {
            let first = s.poll();
            assert!(first >= 1);
            assert_eq!(
                s.buffer(0)[0],
                1,
                "the first buffer is locked before the ring runs"
            );
            let mut seen = vec![first];
            while s.poll() < 4 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            seen.push(s.poll());
            for b in 0..4 {
                assert_eq!(
                    s.buffer(b)[0],
                    1,
                    "buffer {b} handed over before it was locked"
                );
            }
            seen
        })
        .unwrap();
        let seen = r.unwrap();
        assert_eq!(seen.last(), Some(&4));
        assert_eq!(locked, addrs, "every buffer locked, in order");
        assert_eq!(*order.lock().unwrap(), addrs);
    }

    /// A ring that waits until the helper is done (its channel closes): the buffers usable then.
    fn all_the_helper_locks(s: &mut Staged<'_>) -> usize {
        while s.coming.is_some() {
            s.poll();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        s.poll()
    }

    #[test]
    fn a_refusal_stops_the_helper_and_the_ring_goes_on_with_what_was_locked() {
        let mut mem = vec![0u8; 4 * 64];
        let bufs: Vec<&mut [u8]> = mem.chunks_mut(64).collect();
        let addrs: Vec<usize> = bufs.iter().map(|b| b.as_ptr() as usize).collect();
        let calls = Mutex::new(0);
        let lock = |_: &mut [u8]| {
            let mut n = calls.lock().unwrap();
            *n += 1;
            if *n == 3 {
                Err("refused".to_string())
            } else {
                Ok(())
            }
        };
        let (r, locked) = staggered(bufs, &lock, all_the_helper_locks).unwrap();
        assert_eq!(r.unwrap(), 2);
        assert_eq!(locked, addrs[..2], "only the buffers locked are listed");
        assert_eq!(*calls.lock().unwrap(), 3, "nothing tried after the refusal");

        // A panic in the helper's locking ends the helper, not the ring.
        let bufs: Vec<&mut [u8]> = mem.chunks_mut(64).collect();
        let calls = Mutex::new(0);
        let lock = |_: &mut [u8]| {
            let mut n = calls.lock().unwrap();
            *n += 1;
            assert!(*n < 2, "a bug in the locking");
            Ok::<(), String>(())
        };
        let (r, locked) = staggered(bufs, &lock, all_the_helper_locks).unwrap();
        assert_eq!(r.unwrap(), 1);
        assert_eq!(locked, addrs[..1]);

        // The first buffer refused: nothing runs.
        let mut mem = [0u8; 2 * 64];
        let bufs: Vec<&mut [u8]> = mem.chunks_mut(64).collect();
        let ran = std::cell::Cell::new(false);
        let e = staggered(bufs, &|_| Err("no".to_string()), |_| ran.set(true));
        assert_eq!(e.err().as_deref(), Some("no"));
        assert!(!ran.get());
    }

    #[test]
    fn a_ring_that_ends_early_stops_the_helper_and_a_panic_comes_back_after_it() {
        let mut mem = vec![0u8; 8 * 64];
        let bufs: Vec<&mut [u8]> = mem.chunks_mut(64).collect();
        let addrs: Vec<usize> = bufs.iter().map(|b| b.as_ptr() as usize).collect();
        let lock = |_: &mut [u8]| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok::<(), String>(())
        };
        let (r, locked) = staggered(bufs, &lock, |s| s.poll()).unwrap();
        assert_eq!(r.unwrap(), 1);
        assert!(
            locked.len() < 4,
            "the helper stopped once the ring ended ({} locked)",
            locked.len()
        );
        assert_eq!(locked, addrs[..locked.len()]);

        let bufs: Vec<&mut [u8]> = mem.chunks_mut(64).collect();
        let (r, locked) =
            staggered(bufs, &lock, |_| -> () { panic!("the trainer's callback") }).unwrap();
        assert!(r.is_err(), "the panic is returned");
        assert_eq!(locked, addrs[..locked.len()], "what was locked is listed");
    }
}
