//! The fused verify-and-copy stage. A stored tensor (or stored slice) is read from the mapping once:
//! it is cut into bands of rows of about 4 MiB that are processed in parallel, and each band is
//! walked in small sub-bands that are checksummed and then copied into every destination that
//! needs them while the bytes are still in cache. Destinations are split into disjoint row ranges
//! per band, so the parallel writes need no locks and no unsafe code; no intermediate buffer is
//! allocated, whatever the tensor's size.

use rayon::prelude::*;

use crate::base::slice::{for_each_run, intersect, Run};

/// Bytes of source per parallel band.
const BAND: usize = 4 << 20;
/// Bytes of source per checksum-then-copy step inside a band (stays in L1/L2).
const STEP: usize = 64 << 10;

/// One destination: its buffer and the box (full-tensor coordinates) it holds.
pub(crate) struct Dst<'a> {
    pub buf: &'a mut [u8],
    pub want: &'a [(u64, u64)],
}

/// A destination's rows that fall in one band: the piece of its buffer and the box of that piece.
struct Piece<'a> {
    buf: &'a mut [u8],
    want: Vec<(u64, u64)>,
}

/// Copies every element of `src` (row-major box `have`, `size`-byte elements) that lies in a
/// destination's box into that destination, and returns the CRC32C of all of `src`, computed in the
/// same pass. Destinations must be sized for their boxes; elements outside `have` are not touched.
pub(crate) fn copy_verify(src: &[u8], have: &[(u64, u64)], size: usize, dsts: Vec<Dst<'_>>) -> u32 {
    if let [d] = &dsts[..] {
        if d.want == have {
            // The whole source into one destination (the common case): plain chunks, no band
            // bookkeeping.
            let Some(Dst { buf, .. }) = dsts.into_iter().next() else {
                return 0;
            };
            return copy_whole(src, buf);
        }
    }
    if have.is_empty() {
        // A scalar: one element.
        for d in dsts {
            d.buf.copy_from_slice(src);
        }
        return crate::base::crc::serial(src);
    }
    let rows = have[0].1;
    let row_bytes = (src.len() as u64).checked_div(rows).unwrap_or(0) as usize;
    if rows == 0 || row_bytes == 0 {
        return crate::base::crc::serial(src);
    }
    let band_rows = (BAND / row_bytes).max(1) as u64;
    let bands: Vec<(u64, u64)> = (0..rows.div_ceil(band_rows))
        .map(|b| {
            let r0 = have[0].0 + b * band_rows;
            (r0, (r0 + band_rows).min(have[0].0 + rows))
        })
        .collect();
    // Split each destination into one piece per band (disjoint row ranges of its buffer).
    let mut pieces: Vec<Vec<Piece<'_>>> = bands.iter().map(|_| Vec::new()).collect();
    for d in dsts {
        let want = d.want;
        let dst_row_bytes = (d.buf.len() as u64).checked_div(want[0].1).unwrap_or(0) as usize;
        let mut rest: &mut [u8] = d.buf;
        let mut row = want[0].0; // first row of `rest`
        for (b, &(r0, r1)) in bands.iter().enumerate() {
            let (lo, hi) = (r0.max(want[0].0), r1.min(want[0].0 + want[0].1));
            if lo >= hi {
                continue;
            }
            let skip = (lo - row) as usize * dst_row_bytes;
            let take = (hi - lo) as usize * dst_row_bytes;
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
            let (piece, tail) = tail.split_at_mut(take);
            rest = tail;
            row = hi;
            let mut box_ = want.to_vec();
            box_[0] = (lo, hi - lo);
            pieces[b].push(Piece {
                buf: piece,
                want: box_,
            });
        }
    }
    let work: Vec<((u64, u64), Vec<Piece<'_>>)> = bands.into_iter().zip(pieces).collect();
    let band = |((r0, r1), mut pieces): ((u64, u64), Vec<Piece<'_>>)| -> (u32, usize) {
        let step_rows = (STEP / row_bytes).max(1) as u64;
        let mut crc = crate::base::crc::Running::new();
        let mut s0 = r0;
        while s0 < r1 {
            let s1 = (s0 + step_rows).min(r1);
            let a = (s0 - have[0].0) as usize * row_bytes;
            let b = (s1 - have[0].0) as usize * row_bytes;
            crc.update(&src[a..b]);
            let mut step = have.to_vec();
            step[0] = (s0, s1 - s0);
            for p in &mut pieces {
                if let Some(inter) = intersect(&step, &p.want) {
                    for_each_run(
                        have,
                        &p.want,
                        &inter,
                        |Run {
                             src: s,
                             dst: d,
                             len,
                         }| {
                            let (s, d, n) =
                                (s as usize * size, d as usize * size, len as usize * size);
                            p.buf[d..d + n].copy_from_slice(&src[s..s + n]);
                        },
                    );
                }
            }
            s0 = s1;
        }
        (crc.finish(), (r1 - r0) as usize * row_bytes)
    };
    let crcs: Vec<(u32, usize)> = if work.len() == 1 {
        work.into_iter().map(band).collect()
    } else {
        work.into_par_iter().map(band).collect()
    };
    crcs.into_iter().fold(0, |acc, (crc, len)| {
        crate::base::crc::combine(acc, crc, len as u64)
    })
}

/// `dst = src` with the CRC32C of `src`: bands in parallel, steps checksummed then copied in cache.
fn copy_whole(src: &[u8], dst: &mut [u8]) -> u32 {
    fn serial(src: &[u8], dst: &mut [u8]) -> u32 {
        let mut crc = crate::base::crc::Running::new();
        for (s, d) in src.chunks(STEP).zip(dst.chunks_mut(STEP)) {
            crc.update(s);
            d.copy_from_slice(s);
        }
        crc.finish()
    }
    if src.len() <= BAND {
        return serial(src, dst);
    }
    src.par_chunks(BAND)
        .zip(dst.par_chunks_mut(BAND))
        .map(|(s, d)| (serial(s, d), s.len()))
        .collect::<Vec<_>>()
        .into_iter()
        .fold(0, |acc, (crc, len)| {
            crate::base::crc::combine(acc, crc, len as u64)
        })
}

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
                            let r = work(&items[i]);
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

    /// Element-by-element oracle for one destination.
    fn naive(src: &[u8], have: &[(u64, u64)], want: &[(u64, u64)], size: usize, out: &mut [u8]) {
        if let Some(inter) = intersect(have, want) {
            for_each_run(have, want, &inter, |r| {
                let (s, d, n) = (
                    r.src as usize * size,
                    r.dst as usize * size,
                    r.len as usize * size,
                );
                out[d..d + n].copy_from_slice(&src[s..s + n]);
            });
        }
    }

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

    #[test]
    fn bands_match_the_oracle() {
        // A stored slice of rows [100, 100+3000) x 700 columns of u32, copied into boxes that cut it
        // along both axes, with bands of several rows and steps of a few rows.
        let have = [(100u64, 3000u64), (0, 700)];
        let size = 4;
        let src: Vec<u8> = (0..3000 * 700 * size)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let wants: Vec<Vec<(u64, u64)>> = vec![
            vec![(0, 1000), (0, 700)],
            vec![(1000, 2500), (0, 300)],
            vec![(1000, 2500), (300, 400)],
            vec![(100, 3000), (0, 700)],
            vec![(50, 20), (0, 700)], // no overlap
        ];
        let mut bufs: Vec<Vec<u8>> = wants
            .iter()
            .map(|w| vec![0u8; (w[0].1 * w[1].1) as usize * size])
            .collect();
        let dsts = bufs
            .iter_mut()
            .zip(&wants)
            .map(|(b, w)| Dst { buf: b, want: w })
            .collect();
        let crc = copy_verify(&src, &have, size, dsts);
        assert_eq!(crc, crc32c::crc32c(&src));
        for (b, w) in bufs.iter().zip(&wants) {
            let mut want_buf = vec![0u8; b.len()];
            naive(&src, &have, w, size, &mut want_buf);
            assert!(*b == want_buf, "box {w:?}");
        }
        // A scalar and an empty tensor.
        let mut one = [0u8; 4];
        assert_eq!(
            copy_verify(
                &[1, 2, 3, 4],
                &[],
                4,
                vec![Dst {
                    buf: &mut one,
                    want: &[]
                }]
            ),
            crc32c::crc32c(&[1, 2, 3, 4])
        );
        assert_eq!(one, [1, 2, 3, 4]);
        assert_eq!(copy_verify(&[], &[(0, 0), (0, 3)], 4, vec![]), 0);
    }
}
