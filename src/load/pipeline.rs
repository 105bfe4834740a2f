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
/// requests while the workers verify and copy what is already in memory. Pool threads never wait on
/// a channel (only the reader does), so nested parallelism inside `work` cannot deadlock. Results
/// come back in item order; after the first error no new item is started, and the error of the
/// earliest failing item is returned. A panic in `work` is resumed after both stages stopped.
pub(crate) fn pipeline<I: Sync, R: Send>(
    items: &[I],
    window: u64,
    bytes_of: impl Fn(&I) -> u64 + Sync,
    prefetch: impl Fn(&I) + Sync,
    work: impl Fn(&I) -> crate::Result<R> + Sync,
) -> crate::Result<Vec<R>> {
    use std::sync::atomic::{AtomicBool, Ordering};

    // Consecutive items in batches: (first, end, bytes).
    let mut batches: Vec<(usize, usize, u64)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let b = bytes_of(item);
        match batches.last_mut() {
            Some(last) if last.2 + b <= BATCH_BYTES && last.1 - last.0 < BATCH_ITEMS => {
                last.1 = i + 1;
                last.2 += b;
            }
            _ => batches.push((i, i + 1, b)),
        }
    }
    let (credit_tx, credit_rx) = crossbeam_channel::bounded::<u64>(batches.len().max(1));
    let stop = AtomicBool::new(false);
    let outcome = std::thread::scope(|threads| {
        // Stage 1: the reader, on its own thread (it is the only one that waits).
        let (stop_ref, batches_ref, prefetch) = (&stop, &batches, &prefetch);
        threads.spawn(move || {
            let mut in_flight = 0u64;
            for &(a, b, bytes) in batches_ref {
                let bytes = bytes.max(1);
                while in_flight > 0 && in_flight + bytes > window {
                    match credit_rx.recv() {
                        Ok(done) => in_flight -= done,
                        Err(_) => return, // the workers are done
                    }
                }
                if stop_ref.load(Ordering::Relaxed) {
                    return;
                }
                items[a..b].iter().for_each(prefetch);
                in_flight += bytes;
            }
        });
        // Stage 2: verify and copy, one task per batch on the pool.
        let credit_tx = credit_tx; // dropped when this closure ends: the reader then stops waiting
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batches
                .par_iter()
                .with_max_len(1)
                .map(|&(a, b, bytes)| {
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
                    let _ = credit_tx.try_send(bytes.max(1));
                    out
                })
                .collect::<Vec<_>>()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_orders_results_stops_on_errors_and_runs_concurrently() {
        let items: Vec<u64> = (0..500).collect();
        let seen = std::sync::atomic::AtomicU64::new(0);
        let out = pipeline(
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
        let err = pipeline(
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
                    let r = pipeline(items, 1 << 20, |_| 8, |_| {}, |&i| Ok(i + t)).unwrap();
                    assert_eq!(r.len(), 500);
                });
            }
        });
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
            pipeline(
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
                    pipeline(
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
}
