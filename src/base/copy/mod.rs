//! The copies of a load. [`copy_verify`] reads a stored box once and copies what each destination
//! box needs while computing the CRC32C of all of it: the source is cut into bands of rows of about
//! 4 MiB that are processed in parallel, and each band is walked in small steps that are
//! checksummed and then copied into every destination that needs them while the bytes are still
//! in cache. Destinations are split into disjoint row ranges per band, so the parallel writes need
//! no locks (each band holds its own slices), and no intermediate buffer is allocated whatever the
//! tensor's size. Transposed copies move square tiles through SIMD registers where the CPU allows
//! ([`gather`]'s `tile`, the only unsafe code here besides [`stream_copy`]'s). Inside
//! [`serially`](crate::base::par::serially) the bands run one after the other on the calling
//! thread. [`stream_copy`] copies with non-temporal stores, for buffers a GPU reads by DMA.

use rayon::prelude::*;

use crate::base::crc;
use crate::base::slice::{for_each_run, Region, Run};

mod transpose;
#[cfg(any(test, feature = "cuda"))]
pub(crate) use transpose::transpose_whole;
use transpose::{gather, held_rows, transpose_parallel, TRANSPOSE_BLOCK};
#[cfg(test)]
pub(crate) use transpose::{held_dims, held_shape};
pub(crate) use transpose::{transpose_converted, Held};

/// Bytes of source per parallel band.
const BAND: usize = 4 << 20;
/// Bytes of source per checksum-then-copy step inside a band (stays in L1/L2).
const STEP: usize = 64 << 10;
/// The same for [`copy_whole`] (a whole tensor into one buffer, the common case): 16 KiB steps
/// stay in the first-level cache between the checksum's read and the copy's. On this project's
/// VM (2 cores, AVX-512), `cargo bench --bench load`'s 1 GB load into buffers the trainer holds
/// moved 10.02 and 9.98 GiB/s with 64 KiB steps and 10.36 and 10.96 GiB/s with 16 KiB steps
/// (the two builds run in turn, twice, 2026-12-04). The banded path's [`STEP`] stays 64 KiB: its
/// steps are whole rows copied into boxes, and at 16 KiB the re-split benchmark (512 MB) took
/// 177 and 174 ms against 161 and 155 ms (the same way, the same day).
const WHOLE_STEP: usize = 16 << 10;

/// One destination: its buffer and the box (full-tensor coordinates) it holds.
pub(crate) struct Dst<'a> {
    pub buf: &'a mut [u8],
    pub want: &'a Region,
    /// How the buffer holds the box: row-major, or transposed (a 2-D box column-major, as a
    /// candle `Linear` weight holds a TensorFlow dense kernel; a box of more axes as a candle
    /// convolution's weight holds TensorFlow's kernel, [`Held`]).
    pub held: Held,
}

/// A destination's rows that fall in one band: the piece of its buffer and the box of that piece.
struct Piece<'a> {
    buf: &'a mut [u8],
    want: Region,
}

/// Copies every element of `src` (row-major box `have`, `size`-byte elements) that lies in a
/// destination's box into that destination, and returns the CRC32C of all of `src`, computed in the
/// same pass. Destinations must be sized for their boxes; elements outside `have` are not touched.
pub(crate) fn copy_verify(src: &[u8], have: &Region, size: usize, mut dsts: Vec<Dst<'_>>) -> u32 {
    if let [d] = &dsts[..] {
        if d.want == have && d.held == Held::AsStored {
            // The whole source into one destination (the common case): plain chunks, no band
            // bookkeeping.
            let Some(Dst { buf, .. }) = dsts.into_iter().next() else {
                return 0;
            };
            return copy_whole(src, buf);
        }
    }
    let Some((first_row, rows)) = have.rows() else {
        // A scalar: one element.
        for d in dsts {
            d.buf.copy_from_slice(src);
        }
        return crc::serial(src);
    };
    let row_bytes = (src.len() as u64).checked_div(rows).unwrap_or(0) as usize;
    if rows == 0 || row_bytes == 0 {
        return crc::serial(src);
    }
    if let [d] = &mut dsts[..] {
        let parallel = d.want == have && src.len() > BAND && !crate::base::par::is_serial();
        if let Some((rows, mid, _)) = parallel.then(|| d.held.dims(&have.shape())).flatten() {
            // A large whole value into a transposed buffer: the destination's rows are the
            // source's columns, so bands of columns are disjoint and run in parallel, after a
            // parallel checksum of the source.
            let crc = crc::crc32c(src);
            transpose_parallel(src, rows, mid, size, d.buf);
            return crc;
        }
    }
    if dsts.iter().any(|d| d.held != Held::AsStored) {
        // Transposed rows are not contiguous in their buffer: no disjoint bands to write in
        // parallel, so one pass in steps (other tensors of the load keep the other cores busy).
        // Steps of whole cache lines of elements per destination row (16 rows of 4-byte
        // elements, 32 of 2-byte ones).
        let step_rows = (STEP / row_bytes)
            .max(1)
            .next_multiple_of((64 / size.max(1)).max(1)) as u64;
        let mut running = crc::Running::new();
        let mut s0 = first_row;
        while s0 < first_row + rows {
            let s1 = (s0 + step_rows).min(first_row + rows);
            running.update(
                &src[(s0 - first_row) as usize * row_bytes..(s1 - first_row) as usize * row_bytes],
            );
            let step = have.with_rows(s0, s1 - s0);
            for d in &mut dsts {
                copy_box(src, have, &step, size, d.buf, d.want, d.held);
            }
            s0 = s1;
        }
        return running.finish();
    }
    let band_rows = (BAND / row_bytes).max(1) as u64;
    let bands: Vec<(u64, u64)> = (0..rows.div_ceil(band_rows))
        .map(|b| {
            let r0 = first_row + b * band_rows;
            (r0, (r0 + band_rows).min(first_row + rows))
        })
        .collect();
    let pieces = split_into_bands(dsts, &bands);
    let copy_band = |((r0, r1), mut pieces): ((u64, u64), Vec<Piece<'_>>)| -> (u32, usize) {
        let _reading = crate::base::sigbus::reading(); // `src` may be a file mapping
        let step_rows = (STEP / row_bytes).max(1) as u64;
        let mut running = crc::Running::new();
        let mut s0 = r0;
        while s0 < r1 {
            let s1 = (s0 + step_rows).min(r1);
            let bytes =
                &src[(s0 - first_row) as usize * row_bytes..(s1 - first_row) as usize * row_bytes];
            running.update(bytes);
            copy_step(src, have, &have.with_rows(s0, s1 - s0), size, &mut pieces);
            s0 = s1;
        }
        (running.finish(), (r1 - r0) as usize * row_bytes)
    };
    let work: Vec<((u64, u64), Vec<Piece<'_>>)> = bands.into_iter().zip(pieces).collect();
    let crcs: Vec<(u32, usize)> = if work.len() == 1 || crate::base::par::is_serial() {
        work.into_iter().map(copy_band).collect()
    } else {
        crate::base::par::run(|| work.into_par_iter().map(copy_band).collect())
    };
    crcs.into_iter()
        .fold(0, |acc, (c, len)| crc::combine(acc, c, len as u64))
}

/// Splits each destination into one piece per band of source rows it overlaps (disjoint row
/// ranges of its buffer).
fn split_into_bands<'a>(dsts: Vec<Dst<'a>>, bands: &[(u64, u64)]) -> Vec<Vec<Piece<'a>>> {
    let mut pieces: Vec<Vec<Piece<'a>>> = bands.iter().map(|_| Vec::new()).collect();
    for d in dsts {
        let Some((want_row, want_rows)) = d.want.rows() else {
            debug_assert!(false, "a scalar destination of a box with rows");
            continue;
        };
        let dst_row_bytes = (d.buf.len() as u64).checked_div(want_rows).unwrap_or(0) as usize;
        let mut rest: &'a mut [u8] = d.buf;
        let mut row = want_row; // first row of `rest`
        for (b, &(r0, r1)) in bands.iter().enumerate() {
            let (lo, hi) = (r0.max(want_row), r1.min(want_row + want_rows));
            if lo >= hi {
                continue;
            }
            let skip = (lo - row) as usize * dst_row_bytes;
            let take = (hi - lo) as usize * dst_row_bytes;
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
            let (piece, tail) = tail.split_at_mut(take);
            rest = tail;
            row = hi;
            pieces[b].push(Piece {
                buf: piece,
                want: d.want.with_rows(lo, hi - lo),
            });
        }
    }
    pieces
}

/// Copies the part of `step` (a few rows of the source box `have`) each piece needs.
fn copy_step(src: &[u8], have: &Region, step: &Region, size: usize, pieces: &mut [Piece<'_>]) {
    for p in pieces {
        copy_box(src, have, step, size, p.buf, &p.want, Held::AsStored);
    }
}

/// Copies what box `part` of `src` (which holds box `have`) shares with `want` into `dst` (which
/// holds box `want` as `held` says: row-major or transposed, a 2-D box column-major, a box of
/// more axes as [`Held::dims`] says; one of fewer axes is its own transpose). Held transposed,
/// the meeting goes through [`gather`]'s tiles in blocks of rows (for a box of more axes, where
/// the meeting is whole rows: [`held_box`]): a 4,096 x 4,096 float32 piece
/// into a box of half its columns, or of a quarter of it, moved 0.40–0.60 GB/s element by element
/// (the code before 2026-12-04) and 2.45–3.66 GB/s so (one thread, this project's VM, AMD EPYC,
/// three rounds of each in turn).
pub(crate) fn copy_box(
    src: &[u8],
    have: &Region,
    part: &Region,
    size: usize,
    dst: &mut [u8],
    want: &Region,
    held: Held,
) {
    let Some(inter) = part.intersect(want) else {
        return;
    };
    if held != Held::AsStored {
        if let ([(hr0, _), (hc0, hcn)], [(wr0, wrn), (wc0, _)], [(ir0, irn), (ic0, icn)]) =
            (have.dims(), want.dims(), inter.dims())
        {
            // A 2-D box held transposed: the rows of the intersection gathered column by column
            // (in tiles) straight into the destination's columns that hold them, a few rows at a
            // time so that their lines stay in cache (as `transpose_parallel`'s blocks).
            let u = |x: u64| x as usize;
            let row_bytes = u(*hcn) * size;
            let out = &mut dst[u(ic0 - wc0) * u(*wrn) * size..u(ic0 - wc0 + icn) * u(*wrn) * size];
            for r in (u(*ir0)..u(ir0 + irn)).step_by(TRANSPOSE_BLOCK) {
                let end = (r + TRANSPOSE_BLOCK).min(u(ir0 + irn));
                let rows = &src[(r - u(*hr0)) * row_bytes..(end - u(*hr0)) * row_bytes];
                gather(
                    rows,
                    r - u(*wr0),
                    row_bytes,
                    u(ic0 - hc0),
                    u(*wrn),
                    size,
                    out,
                );
            }
            return;
        }
        if want.dims().len() > 2 {
            held_box(src, have, &inter, size, dst, want, held);
            return;
        }
    }
    // Row-major (or, held transposed, of fewer than 2 axes: its own transpose).
    for_each_run(
        have,
        want,
        &inter,
        |Run {
             src: s,
             dst: d,
             len,
         }| {
            let (s, d, n) = (s as usize * size, d as usize * size, len as usize * size);
            dst[d..d + n].copy_from_slice(&src[s..s + n]);
        },
    );
}

/// [`copy_box`] of `inter` into a box of more than 2 axes held transposed. Where `inter` is whole
/// rows of both boxes (a load's steps, a range fetched from object storage, a part of a value
/// partitioned along axis 0), through [`held_rows`]'s tiles; else (a part cut along another axis)
/// element by element.
fn held_box(
    src: &[u8],
    have: &Region,
    inter: &Region,
    size: usize,
    dst: &mut [u8],
    want: &Region,
    held: Held,
) {
    let Some((rows, mid, cols)) = held.dims(&want.shape()) else {
        return;
    };
    let (h, w, i) = (have.dims(), want.dims(), inter.dims());
    let whole_rows = h[1..] == i[1..] && w[1..] == i[1..];
    if let (true, Some(&(h0, _)), Some(&(w0, wn)), Some(&(i0, i_n))) =
        (whole_rows, h.first(), w.first(), i.first())
    {
        // `rows` is the product of the spatial axes: each row of axis 0 is `per` of them.
        let per = (rows as u64).checked_div(wn).unwrap_or(0) as usize;
        let row_bytes = mid * cols * size;
        let from = (i0 - h0) as usize * per;
        let part = &src[from * row_bytes..(from + i_n as usize * per) * row_bytes];
        held_rows(
            part,
            (i0 - w0) as usize * per,
            rows,
            mid,
            cols,
            0,
            size,
            dst,
        );
        return;
    }
    // Element `e` of the box, row-major (spatial, in, out), at `(out * mid + in) * rows + spatial`
    // held.
    for_each_run(
        have,
        want,
        inter,
        |Run {
             src: s,
             dst: d,
             len,
         }| {
            for k in 0..len as usize {
                let e = d as usize + k;
                let (o, rest) = (e % cols, e / cols);
                let (m, r) = (rest % mid, rest / mid);
                let at = ((o * mid + m) * rows + r) * size;
                let from = (s as usize + k) * size;
                dst[at..at + size].copy_from_slice(&src[from..from + size]);
            }
        },
    );
}

/// `dst = src` with the CRC32C of what was copied: bands in parallel, steps copied then
/// checksummed in cache.
pub(crate) fn copy_whole(src: &[u8], dst: &mut [u8]) -> u32 {
    fn serial(src: &[u8], dst: &mut [u8]) -> u32 {
        let _reading = crate::base::sigbus::reading(); // `src` may be a file mapping
        let mut running = crc::Running::new();
        for (s, d) in src.chunks(WHOLE_STEP).zip(dst.chunks_mut(WHOLE_STEP)) {
            // The copy's bytes are checksummed (still in cache), not the source's: a file
            // written in place meanwhile cannot give the copy bytes other than those checked.
            d.copy_from_slice(s);
            running.update(d);
        }
        running.finish()
    }
    if src.len() <= BAND || crate::base::par::is_serial() {
        return serial(src, dst);
    }
    crate::base::par::run(|| {
        src.par_chunks(BAND)
            .zip(dst.par_chunks_mut(BAND))
            .map(|(s, d)| (serial(s, d), s.len()))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .fold(0, |acc, (c, len)| crc::combine(acc, c, len as u64))
}

/// `dst.copy_from_slice(src)` with non-temporal stores where the CPU has AVX (a plain copy up to
/// `dst`'s first 32-byte boundary and after its last); a plain copy otherwise. Panics, as `copy_from_slice` does, if the lengths differ.
#[cfg(any(test, feature = "cuda"))]
pub(crate) fn stream_copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "stream_copy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx") {
            // Up to the first 32-byte boundary of `dst` with a plain copy (pieces of a body land
            // at any offset), the whole 32-byte blocks after it streamed, the tail plain.
            let head = dst.as_ptr().align_offset(32).min(dst.len());
            dst[..head].copy_from_slice(&src[..head]);
            let n = (dst.len() - head) / 32 * 32;
            // SAFETY: AVX is present (checked above); `dst[head..]` and `src[head..]` hold at
            // least `n` bytes, `dst[head..]` starts 32-byte aligned as the stores require, and the
            // two slices cannot overlap (one is borrowed mutably).
            unsafe { stream_avx(dst[head..].as_mut_ptr(), src[head..].as_ptr(), n) };
            dst[head + n..].copy_from_slice(&src[head + n..]);
            return;
        }
    }
    dst.copy_from_slice(src);
}

/// # Safety
/// AVX must be present; `d` must be 32-byte aligned with `n` (a multiple of 32) writable bytes,
/// `s` must have `n` readable bytes, and the ranges must not overlap.
#[cfg(all(target_arch = "x86_64", any(test, feature = "cuda")))]
#[target_feature(enable = "avx")]
unsafe fn stream_avx(d: *mut u8, s: *const u8, n: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256, _mm_sfence};
    let mut i = 0;
    while i < n {
        // SAFETY: `i + 32 <= n`, inside both ranges; `d + i` is 32-byte aligned.
        unsafe {
            let v = _mm256_loadu_si256(s.add(i) as *const __m256i);
            _mm256_stream_si256(d.add(i) as *mut __m256i, v);
        }
        i += 32;
    }
    // Streaming stores are weakly ordered: make them visible before anything that follows (the
    // DMA is queued after this returns).
    // SAFETY: no memory is touched. (An unsafe call before Rust 1.87, a safe one in a function
    // with the target feature since.)
    #[allow(unused_unsafe)]
    unsafe {
        _mm_sfence()
    };
}

#[cfg(test)]
mod tests;
