//! The staged pipeline of a host load: a reader thread runs readahead over the planned reads, in
//! file order and a bounded window ahead, while the workers of the rayon pool verify and copy.

use rayon::prelude::*;

/// Items are handed to the workers in batches of consecutive items of about this many bytes (or
/// [`BATCH_ITEMS`] items), so that tiny tensors cost one channel message per batch, not per tensor.
const BATCH_BYTES: u64 = 4 << 20;
const BATCH_ITEMS: usize = 256;

/// Runs `work` on every item on the current rayon pool, in two stages. A reader thread walks the
/// items in (file) order and calls `prefetch` on each (readahead), at most `window` bytes ahead of
/// the work completed: the workers pay it back through a credit channel as batches finish, so the
/// reader never runs further ahead than that and a cold file is read ahead in large sequential
/// requests while the workers verify and copy what is already in memory. The pipeline's pool
/// threads never wait on its channel (only the reader does), so nested parallelism inside `work`
/// cannot deadlock on it; work that waits on something else (a read from object storage waits for
/// its answers and its budget) must not hold what it waits for while it runs parallel work (see
/// `remote::fetch::stream`, which copies [`serially`](crate::base::par::serially)). Results
/// come back in item order; after the first error no new item is started, and the error of the
/// earliest failing item is returned. A panic in `work` is resumed after both stages stopped.
///
/// Consecutive items go to a worker in batches: `next` joins the batch that ends with `last` when
/// `joins(last, next, bytes, n)` says so (`bytes` and `n`: the batch's bytes and items so far).
/// [`by_size`] makes batches of about [`BATCH_BYTES`] for items that keep a core busy. Before a
/// batch's items, its worker calls `enter` on them, and drops what it returns after them (a batch
/// of items that wait on the network can fetch their bytes together there).
pub(crate) fn pipeline<I: Sync, R: Send, G>(
    items: &[I],
    window: u64,
    bytes_of: impl Fn(&I) -> u64 + Sync,
    joins: impl Fn(&I, &I, u64, usize) -> bool,
    enter: impl Fn(&[I]) -> G + Sync,
    prefetch: impl Fn(&I) + Sync,
    work: impl Fn(&I) -> crate::Result<R> + Sync,
) -> crate::Result<Vec<R>> {
    use std::sync::atomic::{AtomicBool, Ordering};

    // Consecutive items in batches: (first, end, bytes).
    let mut batches: Vec<(usize, usize, u64)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let b = bytes_of(item);
        match batches.last_mut() {
            Some(last) if joins(&items[last.1 - 1], item, last.2, last.1 - last.0) => {
                last.1 = i + 1;
                last.2 = last.2.saturating_add(b);
            }
            _ => batches.push((i, i + 1, b)),
        }
    }
    let (credit_tx, credit_rx) = crossbeam_channel::bounded::<u64>(batches.len().max(1));
    let stop = AtomicBool::new(false);
    // Per batch: NEW, then PREFETCHED by the reader or DONE by a worker first. Workers do not wait
    // for the reader, so a batch may finish before its readahead: it is then never prefetched, and
    // only a batch the reader counted in flight pays a credit back.
    const NEW: u8 = 0;
    const PREFETCHED: u8 = 1;
    const DONE: u8 = 2;
    let state: Vec<std::sync::atomic::AtomicU8> = batches
        .iter()
        .map(|_| std::sync::atomic::AtomicU8::new(NEW))
        .collect();
    let outcome = std::thread::scope(|threads| {
        // Stage 1: the reader, on its own thread (it is the only one that waits).
        let (stop_ref, batches_ref, prefetch, state_ref) = (&stop, &batches, &prefetch, &state);
        threads.spawn(move || {
            let mut in_flight = 0u64;
            for (k, &(a, b, bytes)) in batches_ref.iter().enumerate() {
                let bytes = bytes.max(1);
                while in_flight > 0 && in_flight.saturating_add(bytes) > window {
                    match credit_rx.recv() {
                        Ok(done) => in_flight = in_flight.saturating_sub(done),
                        Err(_) => return, // the workers are done
                    }
                }
                if stop_ref.load(Ordering::Relaxed) {
                    return;
                }
                let claimed = state_ref[k].compare_exchange(
                    NEW,
                    PREFETCHED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if claimed.is_err() {
                    continue; // already done by a worker: nothing to read ahead
                }
                in_flight = in_flight.saturating_add(bytes);
                items[a..b].iter().for_each(prefetch);
            }
        });
        // Stage 2: verify and copy, one task per batch on the pool.
        let credit_tx = credit_tx; // dropped when this closure ends: the reader then stops waiting
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::base::par::run(|| {
                batches
                    .par_iter()
                    .enumerate()
                    .with_max_len(1)
                    .map(|(k, &(a, b, bytes))| {
                        let entered = (!stop.load(Ordering::Relaxed)).then(|| enter(&items[a..b]));
                        let out: Vec<(usize, crate::Result<R>)> = (a..b)
                            .map_while(|i| {
                                if stop.load(Ordering::Relaxed) {
                                    return None;
                                }
                                let r = {
                                    // The work reads file mappings on this pool thread.
                                    let _reading = crate::base::sigbus::reading();
                                    work(&items[i])
                                };
                                if r.is_err() {
                                    stop.store(true, Ordering::Relaxed);
                                }
                                Some((i, r))
                            })
                            .collect();
                        drop(entered);
                        if state[k].swap(DONE, Ordering::AcqRel) == PREFETCHED {
                            let _ = credit_tx.try_send(bytes.max(1));
                        }
                        out
                    })
                    .collect::<Vec<_>>()
            })
        }));
        stop.store(true, Ordering::Relaxed);
        drop(credit_tx);
        run
    });
    let batches_out = match outcome {
        Ok(b) => b,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    let mut results = Vec::with_capacity(items.len());
    for (_, r) in batches_out.into_iter().flatten() {
        // In item order: the first error met is the earliest failing item's.
        results.push(r?);
    }
    if results.len() != items.len() {
        // Only possible if an error stopped the run, and it was returned above.
        return Err(crate::ErrorKind::InvalidArgument("load pipeline stopped early".into()).into());
    }
    Ok(results)
}

/// The `joins` of [`pipeline`] for items that keep a core busy, given the batch's bytes and items
/// so far and the next item's bytes: batches of about [`BATCH_BYTES`] and at most [`BATCH_ITEMS`]
/// items (an item larger than that is a batch of its own).
pub(crate) fn by_size(bytes: u64, next: u64, n: usize) -> bool {
    bytes.saturating_add(next) <= BATCH_BYTES && n < BATCH_ITEMS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`pipeline`] with the default batches.
    fn batched<I: Sync, R: Send>(
        items: &[I],
        window: u64,
        bytes_of: impl Fn(&I) -> u64 + Sync,
        prefetch: impl Fn(&I) + Sync,
        work: impl Fn(&I) -> crate::Result<R> + Sync,
    ) -> crate::Result<Vec<R>> {
        let joins = |_: &I, next: &I, bytes, n| by_size(bytes, bytes_of(next), n);
        pipeline(items, window, &bytes_of, joins, |_| (), prefetch, work)
    }

    #[test]
    fn pipeline_orders_results_stops_on_errors_and_runs_concurrently() {
        let items: Vec<u64> = (0..500).collect();
        let seen = std::sync::atomic::AtomicU64::new(0);
        let out = batched(
            &items,
            64,
            |_| 16,
            |_| {
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
            |&i| Ok(i * 2),
        )
        .unwrap();
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        // Prefetching is a hint that may stop once the work is done.
        assert!(seen.into_inner() <= 500);
        let err = batched(
            &items,
            64,
            |_| 1,
            |_| {},
            |&i| {
                if i == 77 {
                    Err(crate::ErrorKind::InvalidArgument("boom".into()).into())
                } else {
                    Ok(i)
                }
            },
        );
        assert!(err.unwrap_err().to_string().contains("boom"));
        // Several pipelines sharing the pool from different threads (each blocks pool threads on
        // its own channel) all finish.
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let items = &items;
                s.spawn(move || {
                    let r = batched(items, 1 << 20, |_| 8, |_| {}, |&i| Ok(i + t)).unwrap();
                    assert_eq!(r.len(), 500);
                });
            }
        });
    }

    #[test]
    fn a_batch_finished_before_its_readahead_pays_no_credit() {
        // Two batches on two workers: the small first one is slow, the large second one done at
        // once, before the reader reached it. Its credit, larger than what the reader counted in
        // flight, once overflowed that count (a panic in debug builds, a stalled readahead in
        // release); now it is never prefetched and pays nothing back.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let items: Vec<u64> = vec![100, 5 << 20];
        let prefetched = std::sync::Mutex::new(Vec::new());
        for _ in 0..5 {
            prefetched.lock().unwrap().clear();
            let out = pool.install(|| {
                batched(
                    &items,
                    64,
                    |&b| b,
                    |&b| prefetched.lock().unwrap().push(b),
                    |&b| {
                        if b == 100 {
                            std::thread::sleep(std::time::Duration::from_millis(30));
                        }
                        Ok(b)
                    },
                )
            });
            assert_eq!(out.unwrap(), items);
            assert_eq!(prefetched.lock().unwrap()[0], 100);
        }
    }

    #[test]
    fn pipeline_with_nested_parallel_work_and_a_tiny_window_does_not_deadlock() {
        // Every batch exceeds the window, so the reader waits for each credit while the work itself
        // forks nested parallel jobs (the shape that once parked pool threads on a channel).
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(8)
            .build()
            .unwrap();
        let items: Vec<u64> = (0..64).collect();
        let out = pool.install(|| {
            batched(
                &items,
                1,
                |_| 300 << 20,
                |_| {},
                |&i| {
                    let v: Vec<u64> = (0..20_000u64).collect();
                    Ok(v.par_chunks(100)
                        .map(|c| c.iter().sum::<u64>())
                        .sum::<u64>()
                        + i)
                },
            )
        });
        assert_eq!(out.unwrap().len(), 64);
    }

    #[test]
    fn a_panic_in_work_propagates_instead_of_hanging() {
        let items: Vec<u64> = (0..50).collect();
        for threads in [1, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.install(|| {
                    batched(
                        &items,
                        1,
                        |_| 4 << 20,
                        |_| {},
                        |&i| {
                            if i == 3 {
                                panic!("boom");
                            }
                            Ok(i)
                        },
                    )
                })
            }));
            assert!(r.is_err());
        }
    }

    /// Batches are runs of consecutive items of about `BATCH_BYTES`, at most `BATCH_ITEMS`
    /// items, an item larger than that alone; each batch is entered once, before its work.
    #[test]
    fn batches_are_about_batch_bytes_and_entered_once_each() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let batches = |sizes: &[u64]| -> Vec<Vec<u64>> {
            let entered = std::sync::Mutex::new(Vec::new());
            let out = pool.install(|| {
                pipeline(
                    sizes,
                    u64::MAX,
                    |&b| b,
                    |_, &next, bytes, n| by_size(bytes, next, n),
                    |batch: &[u64]| {
                        let at = (batch.as_ptr() as usize - sizes.as_ptr() as usize)
                            / std::mem::size_of::<u64>();
                        entered.lock().unwrap().push((at, batch.to_vec()))
                    },
                    |_| {},
                    |&b| Ok(b),
                )
            });
            assert_eq!(out.unwrap(), sizes);
            let mut e = entered.into_inner().unwrap();
            e.sort();
            e.into_iter().map(|(_, b)| b).collect()
        };
        let mib = 1u64 << 20;
        let lens = |b: Vec<Vec<u64>>| b.iter().map(Vec::len).collect::<Vec<_>>();
        // 1 MiB items: four to a batch; 16-byte items: 256 to a batch.
        assert_eq!(lens(batches(&[mib; 10])), [4, 4, 2]);
        assert_eq!(lens(batches(&[16; 600])), [256, 256, 88]);
        // An item over BATCH_BYTES is a batch of its own; the rest fill up to it.
        assert_eq!(
            batches(&[mib, 5 * mib, 3 * mib, mib, mib]),
            [vec![mib], vec![5 * mib], vec![3 * mib, mib], vec![mib]]
        );
    }

    /// The reader stays exactly `window` bytes ahead of the work done (and goes on through the
    /// whole run): the readahead neither stops nor runs away.
    #[test]
    fn readahead_runs_window_bytes_ahead_of_the_work() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let items: Vec<u64> = (0..100).collect();
        let (done, prefetched) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let leads = std::sync::Mutex::new(Vec::new());
        let out = pool.install(|| {
            pipeline(
                &items,
                30,
                |_| 10,
                |_, _, _, _| false,
                |_| (),
                |&i| {
                    // The lead by the item's place (a reader that fell behind skips items that
                    // are done, so a count of its calls would lag): it can be negative.
                    let p = i as i64 + 1;
                    prefetched.fetch_max(p as usize, SeqCst);
                    leads.lock().unwrap().push(p - done.load(SeqCst) as i64);
                },
                |&i| {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    // Once, give the reader all the time it needs to fill the window (on a
                    // loaded machine it may be starved for the 5 ms of one item): a reader that
                    // stops short of it still fails the test, after 5 s.
                    let start = std::time::Instant::now();
                    while i == 10
                        && prefetched.load(SeqCst) < done.load(SeqCst) + 3
                        && start.elapsed().as_secs() < 5
                    {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    done.fetch_add(1, SeqCst);
                    Ok(i)
                },
            )
        });
        assert_eq!(out.unwrap(), items);
        let leads = leads.into_inner().unwrap();
        // Three items of 10 bytes in a window of 30, never more; reached, and through the run.
        assert_eq!(leads.iter().max(), Some(&3), "{leads:?}");
        assert!(
            leads.len() >= 50,
            "{} items read ahead: {leads:?}",
            leads.len()
        );
    }
}
