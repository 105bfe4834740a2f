//! Work units: the planned uploads cut into byte ranges of one source (a shard mapping, or bytes
//! prepared on the host) of at most a unit's size, neighbouring entries joined, each with the
//! transfers it feeds and the checksum pieces it holds.

use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use super::{CrcPiece, Job, Transfer, UploadSource, GAP, PIECE};

/// A unit of work: a byte range of one source, the copies from it, and the checksum pieces in it
/// (check, offset of the piece in its entry, range in the source).
pub(crate) struct Unit {
    pub(crate) src: UploadSource,
    pub(crate) range: Range<usize>,
    pub(crate) copies: Vec<Transfer>,
    pub(crate) crcs: Vec<(usize, u64, Range<usize>)>,
}

/// Cuts the jobs (in file order) into units of at most `max` bytes: neighbouring entries of one
/// source share a unit; a larger entry is cut. Returns the registrable units and the host-owned
/// ones.
pub(crate) fn units(mut jobs: Vec<Job>, max: usize) -> (Vec<Unit>, Vec<Unit>) {
    // Each mapping's units in increasing file order (a partitioned tensor's slices can lie on both
    // sides of another tensor): the registrar's windows rely on it, and reads stay sequential.
    jobs.sort_by_cached_key(order);
    let (mut mapped, mut owned): (Vec<Unit>, Vec<Unit>) = (Vec::new(), Vec::new());
    for job in jobs {
        // Remote shards go with the host-owned units: only the ring carries them.
        let out = match job.src {
            UploadSource::Mapped(_) => &mut mapped,
            _ => &mut owned,
        };
        let mut start = job.range.start;
        loop {
            // Join the previous unit when close, same source, and small enough.
            let joinable = out.last().is_some_and(|u| {
                u.src.same(&job.src)
                    && start >= u.range.end
                    && start - u.range.end <= GAP
                    && job.range.end - u.range.start <= max
            });
            if !joinable {
                let end = job.range.end.min(start + max);
                out.push(Unit {
                    src: job.src.clone(),
                    range: start..end,
                    copies: Vec::new(),
                    crcs: Vec::new(),
                });
            }
            let u = out.last_mut().expect("a unit was just pushed or joined");
            let end = job.range.end.min(u.range.start + max).max(start);
            u.range.end = u.range.end.max(end);
            for c in &job.copies {
                let (a, b) = (c.src.max(start), (c.src + c.len).min(end));
                if a < b {
                    u.copies.push(Transfer {
                        src: a,
                        len: b - a,
                        dst: c.dst + (a - c.src) as u64,
                        mem: c.mem,
                    });
                }
            }
            if let Some(check) = job.check {
                if start < end {
                    u.crcs
                        .push((check, (start - job.range.start) as u64, start..end));
                }
            }
            start = end;
            if start >= job.range.end {
                break;
            }
        }
    }
    for u in mapped.iter_mut().chain(owned.iter_mut()) {
        coalesce(&mut u.copies);
    }

    (mapped, owned)
}

/// The order units are cut in: each mapping's (and each remote object's) jobs in file order, so
/// that neighbours join; host-owned bytes last.
fn order(j: &Job) -> (u8, String, usize, usize) {
    match &j.src {
        UploadSource::Mapped(m) => (0, String::new(), Arc::as_ptr(m) as usize, j.range.start),
        #[cfg(feature = "remote")]
        UploadSource::Remote(r) => (1, r.url().to_string(), 0, j.range.start),
        UploadSource::Owned(_) => (2, String::new(), 0, 0),
    }
}

/// Merges copies that continue each other in both source and destination, within one
/// destination allocation.
fn coalesce(copies: &mut Vec<Transfer>) {
    copies.sort_unstable_by_key(|c| (c.src, c.dst));
    let mut out: Vec<Transfer> = Vec::with_capacity(copies.len());
    for c in copies.drain(..) {
        match out.last_mut() {
            Some(p)
                if p.src + p.len == c.src && p.dst + p.len as u64 == c.dst && p.mem == c.mem =>
            {
                p.len += c.len
            }
            _ => out.push(c),
        }
    }
    *copies = out;
}

/// Bytes checksummed and then copied at a time by [`crc_and_copy`]: small enough that the copy
/// reads them from the first-level cache the checksum brought them into. Checksumming a whole
/// 1 MiB piece before copying it read every byte from farther away twice: on this project's VM
/// (AVX-512 checksums, streaming copies, 2 cores, 2 GiB through a 4 × 64 MiB ring, 2026-12-04)
/// the ring's CPU side moved 11.0 / 13.7 / 13.7 GB/s that way (three rounds) and 16.8 / 16.7 /
/// 16.6 GB/s in 16 KiB steps with a running checksum (32 KiB: 16.0–16.1; 8 KiB: 17.2–17.4;
/// 4 KiB, with one checksum call per step, fell back to 13.1–13.6 as each step's fixed cost
/// grew, so 16 KiB keeps a margin from that edge; the copy alone: 19.1–20.5), as the host's
/// loads already did in their own steps (`base::copy`).
const STEP: usize = 16 << 10;

/// Checksums the pieces of `u` that fall in `sub` (a range of the source), and copies `sub` into
/// `dst` when given, step by step ([`STEP`]).
pub(super) fn crc_and_copy(u: &Unit, sub: Range<usize>, dst: Option<&mut [u8]>) -> Vec<CrcPiece> {
    let _reading = crate::base::sigbus::reading(); // `src` may be a file mapping
    let src = u.src.bytes();
    let Some(d) = dst else {
        return crc_pieces(u, sub, src, 0);
    };
    // Each checksum piece in `sub` with its range there and its running checksum.
    let mut parts: Vec<(CrcPiece, Range<usize>, crate::base::crc::Running)> = u
        .crcs
        .iter()
        .filter_map(|(check, off, r)| {
            let (a, b) = (r.start.max(sub.start), r.end.min(sub.end));
            (a < b).then(|| {
                let piece = CrcPiece {
                    check: *check,
                    off: off + (a - r.start) as u64,
                    len: (b - a) as u64,
                    crc: 0,
                };
                (piece, a..b, crate::base::crc::Running::new())
            })
        })
        .collect();
    // The pieces are in source order and apart (`units` makes them so): each step looks only
    // at those from the first not yet ended on, up to the first that starts after it.
    debug_assert!(parts.windows(2).all(|w| w[0].1.end <= w[1].1.start));
    let (mut s, mut first) = (sub.start, 0);
    while s < sub.end {
        let e = (s + STEP).min(sub.end);
        while first < parts.len() && parts[first].1.end <= s {
            first += 1;
        }
        for (_, r, running) in &mut parts[first..] {
            if r.start >= e {
                break;
            }
            let (a, b) = (r.start.max(s), r.end.min(e));
            if a < b {
                running.update(&src[a..b]);
            }
        }
        // A staging buffer is read by the GPU, not by this CPU: no read for ownership.
        crate::base::copy::stream_copy(&mut d[s - sub.start..e - sub.start], &src[s..e]);
        s = e;
    }
    parts
        .into_iter()
        .map(|(mut piece, _, running)| {
            piece.crc = running.finish();
            piece
        })
        .collect()
}

/// The checksum pieces of `u` that fall in `sub` (a range of the source), reading the source's
/// bytes from `bytes`, which holds the source from offset `base` on.
pub(super) fn crc_pieces(u: &Unit, sub: Range<usize>, bytes: &[u8], base: usize) -> Vec<CrcPiece> {
    let mut parts = Vec::new();
    for (check, off, r) in &u.crcs {
        let (a, b) = (r.start.max(sub.start), r.end.min(sub.end));
        if a < b {
            parts.push(CrcPiece {
                check: *check,
                off: off + (a - r.start) as u64,
                len: (b - a) as u64,
                crc: crate::base::crc::serial(&bytes[a - base..b - base]),
            });
        }
    }
    parts
}

/// For each piece of `u` (as [`pieces`] cuts it), whether a copy takes any of its bytes: one pass
/// over the copies.
pub(super) fn needed_pieces(u: &Unit) -> Vec<bool> {
    let n = u.range.len().div_ceil(PIECE);
    let mut needed = vec![false; n];
    for c in u.copies.iter().filter(|c| c.len > 0) {
        let first = (c.src - u.range.start) / PIECE;
        let last = (c.src + c.len - 1 - u.range.start) / PIECE;
        for flag in &mut needed[first.min(n)..(last + 1).min(n)] {
            *flag = true;
        }
    }
    needed
}

/// `r` cut into pieces of [`PIECE`] bytes, to checksum (and copy) in parallel.
pub(super) fn pieces(r: &Range<usize>) -> impl IndexedParallelIterator<Item = Range<usize>> + '_ {
    (0..(r.end - r.start).div_ceil(PIECE))
        .into_par_iter()
        .map(move |i| r.start + i * PIECE..(r.start + (i + 1) * PIECE).min(r.end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit (here at an offset of its source) is cut into pieces of `PIECE` bytes, the last
    /// shorter; a piece is needed where a copy takes any of its bytes (an empty copy takes none).
    #[test]
    fn pieces_cut_a_unit_and_copies_mark_those_they_take() {
        let start = 3 * PIECE + 5;
        let range = start..start + 2 * PIECE + 100;
        let got: Vec<Range<usize>> = pieces(&range).collect();
        let want = [
            start..start + PIECE,
            start + PIECE..start + 2 * PIECE,
            start + 2 * PIECE..range.end,
        ];
        assert_eq!(got, want);
        let t = |src: usize, len: usize| Transfer {
            src,
            len,
            dst: 0,
            mem: 0,
        };
        let mut u = Unit {
            src: UploadSource::Owned(Arc::new(Vec::new())),
            range,
            copies: vec![
                t(start + PIECE - 1, 1),   // the last byte of piece 0
                t(start + PIECE + 10, 0),  // nothing of piece 1
                t(start + 2 * PIECE, 100), // all of piece 2
            ],
            crcs: Vec::new(),
        };
        assert_eq!(needed_pieces(&u), [true, false, true]);
        u.copies = vec![t(start + PIECE, PIECE)]; // exactly piece 1
        assert_eq!(needed_pieces(&u), [false, true, false]);
    }

    /// Copies that continue each other in source and destination become one, within one
    /// destination allocation only (a copy across an allocation's end fails on a GPU).
    #[test]
    fn copies_that_continue_each_other_merge_within_an_allocation() {
        let t = |src: usize, len: usize, dst: u64, mem: u64| Transfer { src, len, dst, mem };
        let mut copies = vec![
            t(300, 50, 5300, 5000), // continues the next one (given out of order)
            t(100, 200, 5100, 5000),
            t(350, 10, 9000, 9000), // continues in the source only
            t(360, 10, 9010, 9000), // continues the one before
            t(370, 10, 9030, 9000), // a gap in the destination
            t(380, 10, 9040, 9040), // continues, into the next allocation
        ];
        coalesce(&mut copies);
        let got: Vec<(usize, usize, u64, u64)> = copies
            .iter()
            .map(|c| (c.src, c.len, c.dst, c.mem))
            .collect();
        assert_eq!(
            got,
            [
                (100, 250, 5100, 5000),
                (350, 20, 9000, 9000),
                (370, 10, 9030, 9000),
                (380, 10, 9040, 9040),
            ]
        );
    }

    /// Neighbouring jobs of one source share a unit while the gap between them is at most
    /// [`GAP`] and the unit stays within its size; an empty job adds no copy and no checksum
    /// piece.
    #[test]
    fn neighbouring_jobs_join_within_a_gap_and_a_unit() {
        let file = Arc::new(vec![0u8; 1 << 20]);
        let job = |range: Range<usize>, k: usize| Job {
            src: UploadSource::Owned(file.clone()),
            copies: vec![Transfer {
                src: range.start,
                len: range.len(),
                dst: (k as u64 + 1) << 32,
                mem: (k as u64 + 1) << 32,
            }],
            range,
            check: Some(k),
        };
        let max = 200_000;
        let a = 1000 + GAP; // a gap of exactly GAP: joined
        let b = a + 1000 + GAP + 1; // one byte more: a new unit
        let c = b + 1000; // adjacent and small: joined
        let d = c + 1000; // adjacent, but the unit would pass `max`: a new unit
        let e = d + 199_500;
        let jobs = vec![
            job(0..1000, 0),
            job(a..a + 1000, 1),
            job(b..b + 1000, 2),
            job(c..c + 1000, 3),
            job(d..e, 4),
            job(e..e, 5),
        ];
        let (mapped, owned) = units(jobs, max);
        assert!(mapped.is_empty());
        let got: Vec<(Range<usize>, usize, usize)> = owned
            .iter()
            .map(|u| (u.range.clone(), u.copies.len(), u.crcs.len()))
            .collect();
        assert_eq!(got, [(0..a + 1000, 2, 2), (b..d, 2, 2), (d..e, 1, 1)]);
        for u in &owned {
            assert!(u.copies.iter().all(|c| c.len > 0));
            assert!(u.crcs.iter().all(|(_, _, r)| !r.is_empty()));
        }
    }

    /// Checksum pieces crossing the steps of a piece, and a piece cut inside entries at both ends:
    /// every piece's checksum is its bytes', and the copy is the source.
    #[test]
    fn stepwise_checksums_equal_whole_ones() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 31 + i / 977) as u8).collect();
        let entries = [
            0..5_000,
            5_000..5_001,
            5_001..40_000,
            40_000..131_072,
            131_072..200_000,
        ];
        let u = Unit {
            src: UploadSource::Owned(Arc::new(bytes.clone())),
            range: 0..bytes.len(),
            copies: Vec::new(),
            crcs: entries
                .iter()
                .enumerate()
                .map(|(i, r)| (i, 7 * i as u64, r.clone()))
                .collect(),
        };
        for sub in [
            3_000..90_000,
            0..200_000,
            5_000..5_001,
            40_001..40_002,
            16_384..49_152,
        ] {
            let mut dst = vec![0u8; sub.len()];
            let got = crc_and_copy(&u, sub.clone(), Some(&mut dst));
            assert!(dst == bytes[sub.clone()], "{sub:?}");
            let want = crc_and_copy(&u, sub.clone(), None);
            assert_eq!(got.len(), want.len(), "{sub:?}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(
                    (g.check, g.off, g.len, g.crc),
                    (w.check, w.off, w.len, w.crc)
                );
                let r = &entries[g.check];
                let a = r.start + (g.off - 7 * g.check as u64) as usize;
                let b = a + g.len as usize;
                assert!(r.start <= a && b <= r.end && sub.start <= a && b <= sub.end);
                assert_eq!(g.crc, crc32c::crc32c(&bytes[a..b]), "{sub:?} {}", g.check);
            }
            let covered: u64 = got.iter().map(|g| g.len).sum();
            assert_eq!(covered, sub.len() as u64, "{sub:?}");
        }
        // Thousands of tiny entries in one piece, some across steps.
        let tiny = Unit {
            crcs: (0..4000).map(|i| (i, 0, i * 50..(i + 1) * 50)).collect(),
            ..u
        };
        let sub = 1_234..199_999;
        let mut dst = vec![0u8; sub.len()];
        let got = crc_and_copy(&tiny, sub.clone(), Some(&mut dst));
        assert!(dst == bytes[sub.clone()]);
        assert_eq!(got.len(), 4000 - 1_234 / 50);
        for g in &got {
            let a = (g.check * 50).max(sub.start);
            let b = a + g.len as usize;
            assert_eq!(g.crc, crc32c::crc32c(&bytes[a..b]), "entry {}", g.check);
        }
    }
}
