//! Transposed copies: a 2-D box into a buffer that holds it column-major (a candle `Linear`
//! weight holding a TensorFlow dense kernel), in blocks of rows gathered through square tiles;
//! and the same for a convolution's kernel, TensorFlow's `[spatial..., in, out]` held as candle's
//! `[out, in, spatial...]` (see [`held_dims`]).

use rayon::prelude::*;

use super::{BAND, STEP};

/// Source rows per block of a transposing gather: their lines stay in cache while the block's
/// columns are gathered. A row length that is a multiple of 4 KiB (BERT's 3,072 float32 columns)
/// puts a column of every row in one set of the first-level cache, so few rows: with 4 x 4 tiles,
/// cold memory on this project's VM (2 cores, AMD EPYC, 2026-12-04), a 768 x 3,072 float32 matrix
/// moved 4.2–5.2 GB/s in blocks of 16 rows against 3.3–3.6 in blocks of 64, and a 3,072 x 768 one
/// 4.8–6.1 against 4.4–6.1 (one thread, three rounds).
pub(super) const TRANSPOSE_BLOCK: usize = 16;

/// How a value held transposed lies: TensorFlow's `[spatial..., in, out]` (a 2-D value's
/// `[in, out]`, no spatial axes but its rows) seen as `[rows, mid, cols]` (`rows` the product
/// of the spatial axes, or a 2-D value's rows; `mid` = in, 1 for a 2-D value; `cols` = out),
/// held as `[cols, mid, rows]`: candle's `Linear` weight `[out, in]` and convolution weight
/// `[out, in, kh, kw]` (a 1-D convolution's `[out, in, k]`, a transposed convolution's
/// `[in, out, kh, kw]` for TensorFlow's `[kh, kw, out, in]`). `None` for fewer than 2 axes.
pub(crate) fn held_dims(shape: &[u64]) -> Option<(usize, usize, usize)> {
    let u = |x: u64| x as usize;
    match shape {
        [] | [_] => None,
        [rows, cols] => Some((u(*rows), 1, u(*cols))),
        [spatial @ .., mid, cols] => Some((u(spatial.iter().product()), u(*mid), u(*cols))),
    }
}

/// How a destination holds a value of TensorFlow's layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(not(feature = "candle"), allow(dead_code))]
pub(crate) enum Held {
    /// Row-major, as TensorFlow holds it.
    #[default]
    AsStored,
    /// Transposed ([`held_dims`]): a dense kernel `[in, out]` as `[out, in]`, a convolution's
    /// `[spatial..., in, out]` as `[out, in, spatial...]` (candle's `Linear` and `Conv` weights).
    Transposed,
    /// A depthwise convolution's kernel `[spatial..., in, multiplier]` as `[in * multiplier, 1,
    /// spatial...]` (candle's weight of a convolution grouped by input channel): output channel
    /// `i * multiplier + k` is TensorFlow's `(i, k)`, so it is the transpose of `[spatial, in *
    /// multiplier]`. A value of fewer than 3 axes is held as [`Held::Transposed`] holds it.
    Depthwise,
}

impl Held {
    /// `(rows, mid, cols)` of the value of TensorFlow shape `shape` as this holds it (see
    /// [`held_dims`]); `None` as stored, or for fewer than 2 axes.
    pub(crate) fn dims(self, shape: &[u64]) -> Option<(usize, usize, usize)> {
        match (self, shape) {
            (Held::AsStored, _) => None,
            (Held::Depthwise, [spatial @ .., i, k]) if !spatial.is_empty() => Some((
                spatial.iter().product::<u64>() as usize,
                1,
                (i * k) as usize,
            )),
            _ => held_dims(shape),
        }
    }

    /// The shape the value of TensorFlow shape `shape` has as this holds it.
    #[cfg(any(test, feature = "cuda"))]
    pub(crate) fn shape(self, shape: &[u64]) -> Vec<u64> {
        match (self, shape) {
            (Held::AsStored, _) => shape.to_vec(),
            (Held::Depthwise, [spatial @ .., i, k]) if !spatial.is_empty() => {
                [&[i * k, 1][..], spatial].concat()
            }
            _ => held_shape(shape),
        }
    }
}

/// The shape of a value of TensorFlow shape `shape` held transposed ([`held_dims`]): `[out, in,
/// spatial...]`; `shape` itself for fewer than 2 axes.
#[cfg(any(test, feature = "cuda"))]
pub(crate) fn held_shape(shape: &[u64]) -> Vec<u64> {
    match shape {
        [spatial @ .., mid, cols] => [&[*cols, *mid][..], spatial].concat(),
        _ => shape.to_vec(),
    }
}

/// [`transpose_whole`] in bands of destination rows (source columns) run in parallel, each band
/// the held rows of its columns, gathered a block of rows at a time.
pub(super) fn transpose_parallel(src: &[u8], rows: usize, mid: usize, size: usize, dst: &mut [u8]) {
    let row_bytes = src.len() / rows.max(1);
    let cols = row_bytes / (mid * size).max(1);
    let held_row = rows * mid * size; // bytes of one held row (one column of every `mid` block)
    let band_cols = (BAND / held_row.max(1)).clamp(1, cols.max(1));
    crate::base::par::run(|| {
        dst.par_chunks_mut(band_cols * held_row)
            .enumerate()
            .for_each(|(k, out)| {
                let _reading = crate::base::sigbus::reading(); // `src` may be a file mapping
                held_rows(src, 0, rows, mid, cols, k * band_cols, size, out);
            })
    });
}

/// Rows `first..` of the `[rows, mid * cols]` view of a value held transposed (`src`: those
/// whole rows) into `out`, which holds the held rows (source columns) `c0..` (each `mid * rows`
/// elements): a few source rows at a time, so that their lines stay in cache, each of the `mid`
/// blocks of their columns through [`gather`].
#[allow(clippy::too_many_arguments)]
pub(super) fn held_rows(
    src: &[u8],
    first: usize,
    rows: usize,
    mid: usize,
    cols: usize,
    c0: usize,
    size: usize,
    out: &mut [u8],
) {
    let row_bytes = mid * cols * size;
    if row_bytes == 0 {
        return;
    }
    if rows == 1 && mid > 1 {
        // One spatial position (a 1 x 1 convolution): a transpose of `[mid, cols]`, whose rows
        // are long enough for the tiles (per block of columns, one source row each, they would
        // go element by element).
        let (row, n) = (cols * size, src.len() / (cols * size));
        for m in (0..n).step_by(TRANSPOSE_BLOCK) {
            let end = (m + TRANSPOSE_BLOCK).min(n);
            gather(&src[m * row..end * row], m, row, c0, mid, size, out);
        }
        return;
    }
    let n = src.len() / row_bytes;
    for r in (0..n).step_by(TRANSPOSE_BLOCK) {
        let end = (r + TRANSPOSE_BLOCK).min(n);
        let block = &src[r * row_bytes..end * row_bytes];
        for i in 0..mid {
            gather(
                block,
                i * rows + first + r,
                row_bytes,
                i * cols + c0,
                mid * rows,
                size,
                out,
            );
        }
    }
}

/// Writes the whole value `src` (row-major, `[rows, mid, cols]` as [`held_dims`] sees it) into
/// `dst` held transposed (`[cols, mid, rows]`; a `rows`-row matrix transposed where `mid` is 1).
#[cfg(any(test, feature = "cuda"))]
pub(crate) fn transpose_whole(src: &[u8], rows: usize, mid: usize, size: usize, dst: &mut [u8]) {
    transpose_rows(src, 0, rows, mid, size, dst);
}

/// [`transpose_whole`] with each element converted by `convert` (a run of source elements into
/// a run of `size`-byte elements, as [`cast::convert`](crate::load::cast::convert)): a few rows
/// at a time into a buffer that stays in cache, then gathered from there. So no whole converted
/// copy is allocated, zeroed and read back. Errors only if even that buffer cannot be had
/// (`tensor` names the value).
pub(crate) fn transpose_converted(
    src: &[u8],
    rows: usize,
    mid: usize,
    size: usize,
    dst: &mut [u8],
    convert: impl Fn(&[u8], &mut [u8]),
    tensor: &str,
) -> crate::Result<()> {
    if rows == 0 || dst.is_empty() {
        return Ok(());
    }
    let (row_in, row_out) = (src.len() / rows, dst.len() / rows);
    // Whole cache lines of each column's run per block, as in `copy_verify`'s transposed steps.
    let step = (STEP / row_out.max(1))
        .max(1)
        .next_multiple_of((64 / size.max(1)).max(1))
        .min(rows);
    let mut block = crate::base::mmap::alloc_zeroed(step * row_out, tensor)?;
    for r0 in (0..rows).step_by(step) {
        let r1 = (r0 + step).min(rows);
        let b = &mut block[..(r1 - r0) * row_out];
        convert(&src[r0 * row_in..r1 * row_in], b);
        transpose_rows(b, r0, rows, mid, size, dst);
    }
    Ok(())
}

/// Writes rows `first..` of the `[rows, mid * cols]` view of a value (`src`: whole rows,
/// row-major) into `dst`, which holds the whole value held transposed.
fn transpose_rows(src: &[u8], first: usize, rows: usize, mid: usize, size: usize, dst: &mut [u8]) {
    let cols = dst.len() / (rows * mid * size).max(1);
    held_rows(src, first, rows, mid, cols, 0, size, dst);
}

/// Gathers columns `c0..` of rows `first..` of a `rows`-row matrix (`src`: those whole rows of
/// `row_bytes` each) into `out`, which holds columns `c0..` transposed (each a run of `rows`
/// elements). Column by column, so that each write is a contiguous run of `out` while the few
/// source rows stay in cache. On x86-64 and AArch64 the 2-, 4- and 8-byte elements go in square
/// tiles of 16 bytes a row (8 x 8, 4 x 4 and 2 x 2 elements) transposed in SSE2 or NEON
/// registers, and only the edges element by element: on this project's VM (2 cores, AMD EPYC, 2026-12-04) a 768 x 768
/// float32 matrix went from 1.2–5.4 GB/s element by element to 10–17 GB/s (the same run, cache
/// warm; `cargo bench --features candle --bench candle` has the load's end-to-end effect).
pub(super) fn gather(
    src: &[u8],
    first: usize,
    row_bytes: usize,
    c0: usize,
    rows: usize,
    size: usize,
    out: &mut [u8],
) {
    let n = src.len() / row_bytes.max(1);
    let cols = out.len() / (rows * size).max(1);
    // The tiles cover the whole tiles of the box; the elements left, if any, go one by one.
    let (tr, tc) = tiled(src, first, row_bytes, c0, rows, size, out);
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn go(
        src: &[u8],
        first: usize,
        row_bytes: usize,
        c0: usize,
        rows: usize,
        out: &mut [u8],
        size: usize,
        (n, cols, tr, tc): (usize, usize, usize, usize),
    ) {
        for c in 0..cols {
            // Columns of whole tiles have their first `tr` rows written already.
            let r0 = if c < tc { tr } else { 0 };
            let run = &mut out[(c * rows + first + r0) * size..(c * rows + first + n) * size];
            for (r, o) in (r0..).zip(run.chunks_exact_mut(size)) {
                let at = r * row_bytes + (c0 + c) * size;
                o.copy_from_slice(&src[at..at + size]);
            }
        }
    }
    let rest = (n, cols, tr, tc);
    // A constant element size in each arm, so that each element is one fixed-size move.
    match size {
        2 => go(src, first, row_bytes, c0, rows, out, 2, rest),
        4 => go(src, first, row_bytes, c0, rows, out, 4, rest),
        8 => go(src, first, row_bytes, c0, rows, out, 8, rest),
        _ => go(src, first, row_bytes, c0, rows, out, size, rest),
    }
}

/// [`gather`]'s whole tiles: returns how many leading rows and columns they covered (`(0, 0)`
/// where there are no tiles for this element size or architecture).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn tiled(
    src: &[u8],
    first: usize,
    row_bytes: usize,
    c0: usize,
    rows: usize,
    size: usize,
    out: &mut [u8],
) -> (usize, usize) {
    if !matches!(size, 2 | 4 | 8) {
        return (0, 0);
    }
    let k = 16 / size; // a tile is k x k elements, 16 bytes a row
    let n = src.len() / row_bytes.max(1);
    let cols = out.len() / (rows * size).max(1);
    let (tr, tc) = (n / k * k, cols / k * k);
    // Every byte the tiles read and write lies inside `src` and `out` (else no tiles: the caller
    // copies everything element by element, with its bounds checks).
    let fits = tr > 0 && tc > 0 && first + n <= rows && (c0 + tc) * size <= row_bytes;
    if !fits {
        return (0, 0);
    }
    let (s, d) = (src.as_ptr(), out.as_mut_ptr());
    let d_stride = rows * size;
    for c in (0..tc).step_by(k) {
        for r in (0..tr).step_by(k) {
            let from = r * row_bytes + (c0 + c) * size;
            let to = (c * rows + first + r) * size;
            // SAFETY: tile row i reads bytes `from + i * row_bytes ..+ 16`, below
            // `(tr - 1) * row_bytes + (c0 + tc) * size <= n * row_bytes <= src.len()` (`n` is
            // `src.len() / row_bytes`); tile column j writes `to + j * d_stride ..+ 16`, below
            // `((tc - 1) * rows + first + n) * size <= cols * rows * size <= out.len()` (as
            // `first + n <= rows`, and `cols` is `out.len() / (rows * size)`). `src` and `out`
            // cannot overlap (one is borrowed mutably).
            unsafe {
                let (s, d) = (s.add(from), d.add(to));
                match size {
                    2 => tile::t8x8(s, row_bytes, d, d_stride),
                    4 => tile::t4x4(s, row_bytes, d, d_stride),
                    _ => tile::t2x2(s, row_bytes, d, d_stride),
                }
            }
        }
    }
    (tr, tc)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn tiled(
    _src: &[u8],
    _first: usize,
    _row_bytes: usize,
    _c0: usize,
    _rows: usize,
    _size: usize,
    _out: &mut [u8],
) -> (usize, usize) {
    (0, 0)
}

/// Square tiles of 16 bytes a row transposed in SSE2 registers (part of every x86-64 CPU). Each
/// reads row `i` of the tile at `s + i * ss` and writes its column `j` (a row of the transposed
/// tile) at `d + j * ds`.
#[cfg(target_arch = "x86_64")]
mod tile {
    use std::arch::x86_64::*;

    /// # Safety
    /// `s + i * ss ..+ 16` readable for every `i < N`.
    #[inline(always)]
    unsafe fn load<const N: usize>(s: *const u8, ss: usize) -> [__m128i; N] {
        // SAFETY: as the caller promised; unaligned loads.
        std::array::from_fn(|i| unsafe { _mm_loadu_si128(s.add(i * ss) as *const __m128i) })
    }

    /// # Safety
    /// `d + j * ds ..+ 16` writable for every `j < N`.
    #[inline(always)]
    unsafe fn store<const N: usize>(d: *mut u8, ds: usize, v: [__m128i; N]) {
        for (j, v) in v.into_iter().enumerate() {
            // SAFETY: as the caller promised; unaligned stores.
            unsafe { _mm_storeu_si128(d.add(j * ds) as *mut __m128i, v) };
        }
    }

    /// 8 x 8 elements of 2 bytes.
    ///
    /// # Safety
    /// 8 rows of 16 bytes readable at `s + i * ss`, 8 of 16 writable at `d + j * ds`.
    #[inline(always)]
    pub(super) unsafe fn t8x8(s: *const u8, ss: usize, d: *mut u8, ds: usize) {
        // SAFETY: as the caller promised.
        let [r0, r1, r2, r3, r4, r5, r6, r7]: [__m128i; 8] = unsafe { load(s, ss) };
        // SAFETY: register-only SSE2 (part of every x86-64 CPU).
        let c = unsafe {
            // Rows interleaved in pairs: a0 holds columns 0-3 of rows 0 and 1, a1 their columns
            // 4-7, a2 and a3 those of rows 2 and 3, ...
            let (a0, a1) = (_mm_unpacklo_epi16(r0, r1), _mm_unpackhi_epi16(r0, r1));
            let (a2, a3) = (_mm_unpacklo_epi16(r2, r3), _mm_unpackhi_epi16(r2, r3));
            let (a4, a5) = (_mm_unpacklo_epi16(r4, r5), _mm_unpackhi_epi16(r4, r5));
            let (a6, a7) = (_mm_unpacklo_epi16(r6, r7), _mm_unpackhi_epi16(r6, r7));
            // Pairs of pairs: b0 holds rows 0-3 of columns 0 and 1, b1 of columns 2 and 3, b2
            // of 4 and 5, b3 of 6 and 7; b4..b7 rows 4-7 likewise.
            let (b0, b1) = (_mm_unpacklo_epi32(a0, a2), _mm_unpackhi_epi32(a0, a2));
            let (b2, b3) = (_mm_unpacklo_epi32(a1, a3), _mm_unpackhi_epi32(a1, a3));
            let (b4, b5) = (_mm_unpacklo_epi32(a4, a6), _mm_unpackhi_epi32(a4, a6));
            let (b6, b7) = (_mm_unpacklo_epi32(a5, a7), _mm_unpackhi_epi32(a5, a7));
            // The halves joined: one column each.
            [
                _mm_unpacklo_epi64(b0, b4),
                _mm_unpackhi_epi64(b0, b4),
                _mm_unpacklo_epi64(b1, b5),
                _mm_unpackhi_epi64(b1, b5),
                _mm_unpacklo_epi64(b2, b6),
                _mm_unpackhi_epi64(b2, b6),
                _mm_unpacklo_epi64(b3, b7),
                _mm_unpackhi_epi64(b3, b7),
            ]
        };
        // SAFETY: as the caller promised.
        unsafe { store(d, ds, c) }
    }

    /// 4 x 4 elements of 4 bytes.
    ///
    /// # Safety
    /// 4 rows of 16 bytes readable at `s + i * ss`, 4 of 16 writable at `d + j * ds`.
    #[inline(always)]
    pub(super) unsafe fn t4x4(s: *const u8, ss: usize, d: *mut u8, ds: usize) {
        // SAFETY: as the caller promised.
        let [r0, r1, r2, r3]: [__m128i; 4] = unsafe { load(s, ss) };
        // SAFETY: register-only SSE2 (part of every x86-64 CPU).
        let c = unsafe {
            let (a0, a1) = (_mm_unpacklo_epi32(r0, r1), _mm_unpacklo_epi32(r2, r3));
            let (a2, a3) = (_mm_unpackhi_epi32(r0, r1), _mm_unpackhi_epi32(r2, r3));
            [
                _mm_unpacklo_epi64(a0, a1),
                _mm_unpackhi_epi64(a0, a1),
                _mm_unpacklo_epi64(a2, a3),
                _mm_unpackhi_epi64(a2, a3),
            ]
        };
        // SAFETY: as the caller promised.
        unsafe { store(d, ds, c) }
    }

    /// 2 x 2 elements of 8 bytes.
    ///
    /// # Safety
    /// 2 rows of 16 bytes readable at `s + i * ss`, 2 of 16 writable at `d + j * ds`.
    #[inline(always)]
    pub(super) unsafe fn t2x2(s: *const u8, ss: usize, d: *mut u8, ds: usize) {
        // SAFETY: as the caller promised.
        let [r0, r1]: [__m128i; 2] = unsafe { load(s, ss) };
        // SAFETY: register-only SSE2 (part of every x86-64 CPU).
        let c = unsafe { [_mm_unpacklo_epi64(r0, r1), _mm_unpackhi_epi64(r0, r1)] };
        // SAFETY: as the caller promised.
        unsafe { store(d, ds, c) }
    }
}

/// The same tiles in NEON registers (part of every AArch64 CPU), by `trn1`/`trn2` at 16-, 32-
/// and 64-bit lanes. Tested under QEMU's user-mode emulation (`scripts/other-platforms.sh`).
#[cfg(target_arch = "aarch64")]
#[allow(unused_unsafe)] // NEON intrinsics are safe to call where the target has NEON
mod tile {
    use std::arch::aarch64::*;

    /// # Safety
    /// `s + i * ss ..+ 16` readable for every `i < N`.
    #[inline(always)]
    unsafe fn load<const N: usize>(s: *const u8, ss: usize) -> [uint8x16_t; N] {
        // SAFETY: as the caller promised; `vld1q_u8` has no alignment requirement.
        std::array::from_fn(|i| unsafe { vld1q_u8(s.add(i * ss)) })
    }

    /// # Safety
    /// `d + j * ds ..+ 16` writable for every `j < N`.
    #[inline(always)]
    unsafe fn store<const N: usize>(d: *mut u8, ds: usize, v: [uint8x16_t; N]) {
        for (j, v) in v.into_iter().enumerate() {
            // SAFETY: as the caller promised; `vst1q_u8` has no alignment requirement.
            unsafe { vst1q_u8(d.add(j * ds), v) };
        }
    }

    /// 8 x 8 elements of 2 bytes.
    ///
    /// # Safety
    /// 8 rows of 16 bytes readable at `s + i * ss`, 8 of 16 writable at `d + j * ds`.
    #[inline(always)]
    pub(super) unsafe fn t8x8(s: *const u8, ss: usize, d: *mut u8, ds: usize) {
        // SAFETY: as the caller promised.
        let r: [uint8x16_t; 8] = unsafe { load(s, ss) };
        // SAFETY: register-only NEON.
        let c = unsafe {
            let r = r.map(|v| vreinterpretq_u16_u8(v));
            // Row pairs, 16-bit lanes: e[0] = [a0 b0 a2 b2 a4 b4 a6 b6], o[0] = [a1 b1 a3 b3 ..];
            // e[1], o[1] of rows 2-3, and so on.
            let e = [0, 2, 4, 6].map(|i| vreinterpretq_u32_u16(vtrn1q_u16(r[i], r[i + 1])));
            let o = [0, 2, 4, 6].map(|i| vreinterpretq_u32_u16(vtrn2q_u16(r[i], r[i + 1])));
            // Pairs of pairs, 32-bit lanes: from e[0], e[1] [a0b0 c0d0 a4b4 c4d4] (rows 0-3 of
            // columns 0 and 4) and [a2b2 c2d2 a6b6 c6d6] (2 and 6); from o[0], o[1] columns 1, 5
            // and 3, 7; rows 4-7 likewise from e[2], e[3], o[2], o[3].
            let q = |x: uint32x4_t, y: uint32x4_t| {
                (
                    vreinterpretq_u64_u32(vtrn1q_u32(x, y)),
                    vreinterpretq_u64_u32(vtrn2q_u32(x, y)),
                )
            };
            let ((c04, c26), (c15, c37)) = (q(e[0], e[1]), q(o[0], o[1]));
            let ((h04, h26), (h15, h37)) = (q(e[2], e[3]), q(o[2], o[3]));
            // The halves joined, 64-bit lanes: one column each.
            let lo = |x, y| vreinterpretq_u8_u64(vtrn1q_u64(x, y));
            let hi = |x, y| vreinterpretq_u8_u64(vtrn2q_u64(x, y));
            [
                lo(c04, h04),
                lo(c15, h15),
                lo(c26, h26),
                lo(c37, h37),
                hi(c04, h04),
                hi(c15, h15),
                hi(c26, h26),
                hi(c37, h37),
            ]
        };
        // SAFETY: as the caller promised.
        unsafe { store(d, ds, c) }
    }

    /// 4 x 4 elements of 4 bytes.
    ///
    /// # Safety
    /// 4 rows of 16 bytes readable at `s + i * ss`, 4 of 16 writable at `d + j * ds`.
    #[inline(always)]
    pub(super) unsafe fn t4x4(s: *const u8, ss: usize, d: *mut u8, ds: usize) {
        // SAFETY: as the caller promised.
        let r: [uint8x16_t; 4] = unsafe { load(s, ss) };
        // SAFETY: register-only NEON.
        let c = unsafe {
            let r = r.map(|v| vreinterpretq_u32_u8(v));
            // e0 = [a0 b0 a2 b2], o0 = [a1 b1 a3 b3]; e1, o1 the same of rows 2 and 3.
            let e0 = vreinterpretq_u64_u32(vtrn1q_u32(r[0], r[1]));
            let o0 = vreinterpretq_u64_u32(vtrn2q_u32(r[0], r[1]));
            let e1 = vreinterpretq_u64_u32(vtrn1q_u32(r[2], r[3]));
            let o1 = vreinterpretq_u64_u32(vtrn2q_u32(r[2], r[3]));
            [
                vreinterpretq_u8_u64(vtrn1q_u64(e0, e1)),
                vreinterpretq_u8_u64(vtrn1q_u64(o0, o1)),
                vreinterpretq_u8_u64(vtrn2q_u64(e0, e1)),
                vreinterpretq_u8_u64(vtrn2q_u64(o0, o1)),
            ]
        };
        // SAFETY: as the caller promised.
        unsafe { store(d, ds, c) }
    }

    /// 2 x 2 elements of 8 bytes.
    ///
    /// # Safety
    /// 2 rows of 16 bytes readable at `s + i * ss`, 2 of 16 writable at `d + j * ds`.
    #[inline(always)]
    pub(super) unsafe fn t2x2(s: *const u8, ss: usize, d: *mut u8, ds: usize) {
        // SAFETY: as the caller promised.
        let [r0, r1]: [uint8x16_t; 2] = unsafe { load(s, ss) };
        // SAFETY: register-only NEON.
        let c = unsafe {
            let (a, b) = (vreinterpretq_u64_u8(r0), vreinterpretq_u64_u8(r1));
            [
                vreinterpretq_u8_u64(vtrn1q_u64(a, b)),
                vreinterpretq_u8_u64(vtrn2q_u64(a, b)),
            ]
        };
        // SAFETY: as the caller promised.
        unsafe { store(d, ds, c) }
    }
}
