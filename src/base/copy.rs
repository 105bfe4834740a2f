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
    /// The buffer holds the (2-D) box transposed: column-major, as a candle `Linear` weight holds a
    /// TensorFlow dense kernel.
    pub transposed: bool,
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
        if d.want == have && !d.transposed {
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
        if d.transposed && d.want == have && src.len() > BAND && !crate::base::par::is_serial() {
            // A large whole matrix into a transposed buffer: the destination's rows are the
            // source's columns, so bands of columns are disjoint and run in parallel, after a
            // parallel checksum of the source.
            let crc = crc::crc32c(src);
            transpose_parallel(src, rows as usize, size, d.buf);
            return crc;
        }
    }
    if dsts.iter().any(|d| d.transposed) {
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
                copy_box(src, have, &step, size, d.buf, d.want, d.transposed);
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
        copy_box(src, have, step, size, p.buf, &p.want, false);
    }
}

/// Copies what box `part` of `src` (which holds box `have`) shares with `want` into `dst` (which
/// holds box `want`, row-major or, with `transposed`, a 2-D box column-major). Held transposed,
/// the meeting goes through [`gather`]'s tiles in blocks of rows: a 4,096 x 4,096 float32 piece
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
    transposed: bool,
) {
    let Some(inter) = part.intersect(want) else {
        return;
    };
    if transposed {
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
    }
    // Row-major (or, held transposed, not 2-D: a value of one dimension is its own transpose).
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

/// Source rows per block of a transposing gather: their lines stay in cache while the block's
/// columns are gathered. A row length that is a multiple of 4 KiB (BERT's 3,072 float32 columns)
/// puts a column of every row in one set of the first-level cache, so few rows: with 4 x 4 tiles,
/// cold memory on this project's VM (2 cores, AMD EPYC, 2026-12-04), a 768 x 3,072 float32 matrix
/// moved 4.2–5.2 GB/s in blocks of 16 rows against 3.3–3.6 in blocks of 64, and a 3,072 x 768 one
/// 4.8–6.1 against 4.4–6.1 (one thread, three rounds).
const TRANSPOSE_BLOCK: usize = 16;

/// [`transpose_whole`] in bands of destination rows (source columns) run in parallel, each band
/// the box of its columns, gathered by [`copy_box`] a block of rows at a time.
fn transpose_parallel(src: &[u8], rows: usize, size: usize, dst: &mut [u8]) {
    let row_bytes = src.len() / rows.max(1);
    let cols = row_bytes / size.max(1);
    let band_cols = (BAND / (rows * size).max(1)).clamp(1, cols.max(1));
    let whole = Region::whole(&[rows as u64, cols as u64]);
    crate::base::par::run(|| {
        dst.par_chunks_mut(band_cols * rows * size)
            .enumerate()
            .for_each(|(k, out)| {
                let _reading = crate::base::sigbus::reading(); // `src` may be a file mapping
                let width = out.len() / (rows * size).max(1);
                let band = Region::new(vec![
                    (0, rows as u64),
                    ((k * band_cols) as u64, width as u64),
                ]);
                copy_box(src, &whole, &whole, size, out, &band, true);
            })
    });
}

/// Writes the whole `rows`-row matrix `src` (row-major) into `dst` transposed.
#[cfg(any(test, feature = "cuda"))]
pub(crate) fn transpose_whole(src: &[u8], rows: usize, size: usize, dst: &mut [u8]) {
    transpose_rows(src, 0, rows, size, dst);
}

/// Writes the whole `rows`-row matrix `src` (row-major) into `dst` transposed, each element
/// converted by `convert` (a run of source elements into a run of `size`-byte elements, as [`cast::convert`](crate::load::cast::convert)): a few rows at a time
/// into a buffer that stays in cache, then gathered from there. So no whole converted copy is
/// allocated, zeroed and read back. Errors only if even that buffer cannot be had (`tensor` names
/// the value).
pub(crate) fn transpose_converted(
    src: &[u8],
    rows: usize,
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
        transpose_rows(b, r0, rows, size, dst);
    }
    Ok(())
}

/// Writes rows `first..` of a `rows`-row matrix (`src`: whole rows, row-major) into `dst`, which
/// holds the whole matrix transposed.
fn transpose_rows(src: &[u8], first: usize, rows: usize, size: usize, dst: &mut [u8]) {
    gather(src, first, dst.len() / rows.max(1), 0, rows, size, dst);
}

/// Gathers columns `c0..` of rows `first..` of a `rows`-row matrix (`src`: those whole rows of
/// `row_bytes` each) into `out`, which holds columns `c0..` transposed (each a run of `rows`
/// elements). Column by column, so that each write is a contiguous run of `out` while the few
/// source rows stay in cache. On x86-64 and AArch64 the 2-, 4- and 8-byte elements go in square
/// tiles of 16 bytes a row (8 x 8, 4 x 4 and 2 x 2 elements) transposed in SSE2 or NEON
/// registers, and only the edges element by element: on this project's VM (2 cores, AMD EPYC, 2026-12-04) a 768 x 768
/// float32 matrix went from 1.2–5.4 GB/s element by element to 10–17 GB/s (the same run, cache
/// warm; `cargo bench --features candle --bench candle` has the load's end-to-end effect).
fn gather(
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
mod tests {
    use super::*;

    /// Element-by-element oracle for one destination.
    fn naive(src: &[u8], have: &Region, want: &Region, size: usize, out: &mut [u8]) {
        if let Some(inter) = have.intersect(want) {
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

    /// `f` as it runs in a load, or [`serially`](crate::base::par::serially), as it runs while
    /// a read on object storage holds its permits: the same bytes either way.
    fn ways<R>(serial: bool, f: impl FnOnce() -> R) -> R {
        if serial {
            crate::base::par::serially(f)
        } else {
            f()
        }
    }

    #[test]
    fn a_whole_copy_and_a_checksum_are_the_same_serially() {
        let src: Vec<u8> = (0..(3 * BAND + 12345))
            .map(|i| (i * 29 % 251) as u8)
            .collect();
        for serial in [false, true] {
            let mut dst = vec![0u8; src.len()];
            let crc = ways(serial, || copy_whole(&src, &mut dst));
            assert_eq!(crc, crc32c::crc32c(&src), "serial {serial}");
            assert!(dst == src, "serial {serial}");
            assert_eq!(ways(serial, || crc::crc32c(&src)), crc);
        }
    }

    #[test]
    fn bands_match_the_oracle() {
        for serial in [false, true] {
            // A stored slice of rows [100, 100+3000) x 700 columns of u32, copied into boxes that cut it
            // along both axes, with bands of several rows and steps of a few rows.
            let have = Region::new(vec![(100u64, 3000u64), (0, 700)]);
            let size = 4;
            let src: Vec<u8> = (0..3000 * 700 * size)
                .map(|i| (i * 31 % 251) as u8)
                .collect();
            let wants: Vec<Region> = vec![
                Region::new(vec![(0, 1000), (0, 700)]),
                Region::new(vec![(1000, 2500), (0, 300)]),
                Region::new(vec![(1000, 2500), (300, 400)]),
                Region::new(vec![(100, 3000), (0, 700)]),
                Region::new(vec![(50, 20), (0, 700)]), // no overlap
            ];
            let mut bufs: Vec<Vec<u8>> = wants
                .iter()
                .map(|w| vec![0u8; w.num_elements().unwrap() as usize * size])
                .collect();
            let dsts = bufs
                .iter_mut()
                .zip(&wants)
                .map(|(b, w)| Dst {
                    buf: b,
                    want: w,
                    transposed: false,
                })
                .collect();
            let crc = ways(serial, || copy_verify(&src, &have, size, dsts));
            assert_eq!(crc, crc32c::crc32c(&src));
            for (b, w) in bufs.iter().zip(&wants) {
                let mut want_buf = vec![0u8; b.len()];
                naive(&src, &have, w, size, &mut want_buf);
                assert!(*b == want_buf, "box {w:?} serial {serial}");
            }
        }
        // A scalar and an empty tensor.
        let mut one = [0u8; 4];
        assert_eq!(
            copy_verify(
                &[1, 2, 3, 4],
                &Region::default(),
                4,
                vec![Dst {
                    buf: &mut one,
                    want: &Region::default(),
                    transposed: false,
                }]
            ),
            crc32c::crc32c(&[1, 2, 3, 4])
        );
        assert_eq!(one, [1, 2, 3, 4]);
        assert_eq!(
            copy_verify(&[], &Region::new(vec![(0, 0), (0, 3)]), 4, vec![]),
            0
        );
    }

    /// Each box of `bands_match_the_oracle`'s kind as the only destination (the path a single
    /// destination takes depends on its box), for a source at row 0 and one further down, and
    /// boxes without columns.
    #[test]
    fn a_single_destination_gets_its_box_whatever_the_box() {
        let size = 4;
        for first in [0u64, 100] {
            let have = Region::new(vec![(first, 3000), (0, 700)]);
            let src: Vec<u8> = (0..3000 * 700 * size)
                .map(|i| (i * 37 % 251) as u8)
                .collect();
            for want in [
                have.clone(),
                Region::new(vec![(first, 1000), (0, 700)]),
                Region::new(vec![(first + 500, 2500), (100, 300)]),
                Region::new(vec![(0, first + 3000), (0, 700)]),
            ] {
                let mut got = vec![0u8; want.num_elements().unwrap() as usize * size];
                let dst = Dst {
                    buf: &mut got,
                    want: &want,
                    transposed: false,
                };
                let crc = copy_verify(&src, &have, size, vec![dst]);
                assert_eq!(crc, crc32c::crc32c(&src));
                let mut expect = vec![0u8; got.len()];
                naive(&src, &have, &want, size, &mut expect);
                assert!(got == expect, "rows from {first}: box {want:?}");
            }
        }
        // Rows without columns: nothing to copy, the checksum of nothing.
        let none = Region::new(vec![(0, 5), (0, 0)]);
        assert_eq!(copy_verify(&[], &none, 4, vec![]), 0);
    }

    #[test]
    fn transposed_destinations_match_the_oracle() {
        // Boxes of a 300 x 70 source of 2-, 4- and 8-byte elements, some held transposed, with
        // runs that span several rows (whole-width boxes) and runs cut by the box.
        for size in [1usize, 2, 4, 8] {
            let have = Region::new(vec![(10u64, 300u64), (0, 70)]);
            let src: Vec<u8> = (0..300 * 70 * size).map(|i| (i * 7 % 253) as u8).collect();
            let wants = [
                (Region::new(vec![(10, 300), (0, 70)]), true),
                (Region::new(vec![(0, 100), (0, 70)]), true),
                (Region::new(vec![(200, 200), (5, 60)]), true),
                (Region::new(vec![(20, 30), (0, 70)]), false),
            ];
            let mut bufs: Vec<Vec<u8>> = wants
                .iter()
                .map(|(w, _)| vec![0u8; w.num_elements().unwrap() as usize * size])
                .collect();
            let dsts = bufs
                .iter_mut()
                .zip(&wants)
                .map(|(buf, (want, transposed))| Dst {
                    buf,
                    want,
                    transposed: *transposed,
                })
                .collect();
            assert_eq!(copy_verify(&src, &have, size, dsts), crc32c::crc32c(&src));
            for (b, (w, transposed)) in bufs.iter().zip(&wants) {
                let mut plain = vec![0u8; b.len()];
                naive(&src, &have, w, size, &mut plain);
                let [(_, rows), (_, cols)] = w.dims() else {
                    unreachable!()
                };
                let (rows, cols) = (*rows as usize, *cols as usize);
                let mut want_buf = plain.clone();
                if *transposed {
                    for r in 0..rows {
                        for c in 0..cols {
                            let (from, to) = ((r * cols + c) * size, (c * rows + r) * size);
                            want_buf[to..to + size].copy_from_slice(&plain[from..from + size]);
                        }
                    }
                }
                assert!(
                    *b == want_buf,
                    "size {size} box {w:?} transposed {transposed}"
                );
            }
        }
    }

    #[test]
    fn gathered_columns_equal_element_by_element_at_every_tile_edge() {
        // Blocks of source rows and ranges of columns that cut the 16-byte tiles everywhere (fewer
        // rows or columns than a tile, one more, a few tiles and a part), at column offsets that
        // leave the tiles unaligned: every element where it belongs, nothing else written.
        for size in [1usize, 2, 4, 8, 3] {
            for (rows, cols) in [
                (1usize, 1usize),
                (7, 9),
                (8, 8),
                (9, 17),
                (33, 35),
                (64, 20),
            ] {
                let row_bytes = cols * size;
                let src: Vec<u8> = (0..rows * row_bytes)
                    .map(|i| (i * 29 % 251) as u8)
                    .collect();
                for (first, n) in [(0, rows), (rows / 3, rows - rows / 3), (rows - 1, 1)] {
                    for (c0, width) in [(0, cols), (1, cols - 1), (cols / 2, cols - cols / 2)] {
                        if width == 0 {
                            continue;
                        }
                        let block = &src[first * row_bytes..(first + n) * row_bytes];
                        let mut out = vec![0xAAu8; width * rows * size];
                        gather(block, first, row_bytes, c0, rows, size, &mut out);
                        for c in 0..width {
                            for r in 0..rows {
                                let at = (c * rows + r) * size;
                                let got = &out[at..at + size];
                                if (first..first + n).contains(&r) {
                                    let from = r * row_bytes + (c0 + c) * size;
                                    assert_eq!(
                                        got,
                                        &src[from..from + size],
                                        "size {size}, {rows} x {cols}, rows {first}+{n}, \
                                         columns {c0}+{width}: ({r}, {c})"
                                    );
                                } else {
                                    assert!(got.iter().all(|&b| b == 0xAA), "({r}, {c}) written");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn converted_transposes_equal_a_conversion_then_a_transpose() {
        // Block by block through a small buffer: the same bytes as converting the whole matrix
        // and transposing it, for widening and narrowing casts, one row, one column, and blocks
        // that end mid-matrix (1,000 rows of 3 float32 are several blocks).
        use crate::load::cast::convert;
        use crate::DType::{BF16, F16, F32};
        for (from, to) in [(BF16, F32), (F16, F32), (F32, BF16), (F32, F16)] {
            let (fs, ts) = (from.size().unwrap(), to.size().unwrap());
            for (rows, cols) in [
                (1usize, 1usize),
                (1, 40),
                (40, 1),
                (37, 29),
                (1000, 3),
                (3, 1000),
            ] {
                let src: Vec<u8> = (0..rows * cols * fs)
                    .map(|i| (i * 31 % 253) as u8)
                    .collect();
                let mut converted = vec![0u8; rows * cols * ts];
                convert(from, to, &src, &mut converted);
                let mut want = vec![0u8; converted.len()];
                transpose_whole(&converted, rows, ts, &mut want);
                let mut got = vec![0xAAu8; want.len()];
                transpose_converted(
                    &src,
                    rows,
                    ts,
                    &mut got,
                    |s, d| convert(from, to, s, d),
                    "t",
                )
                .unwrap();
                assert!(got == want, "{from} to {to}, {rows} x {cols}");
            }
        }
    }

    #[test]
    fn a_piece_lands_where_its_box_meets_a_transposed_box() {
        // A stored piece of a 50 x 70 tensor (rows 10..40, columns 30..70, as a slice of a
        // variable partitioned along both axes) into boxes held transposed that start before it,
        // inside it and past it on either axis: each element of the meeting at its place in the
        // transposed box, nothing else written.
        for size in [1usize, 2, 4, 8] {
            let el = |r: u64, c: u64| -> Vec<u8> {
                (0..size as u64)
                    .map(|k| ((r * 70 + c) * 8 + k) as u8 ^ (r as u8))
                    .collect()
            };
            let have = Region::new(vec![(10, 30), (30, 40)]);
            let src: Vec<u8> = (10..40)
                .flat_map(|r| (30..70).flat_map(move |c| el(r, c)))
                .collect();
            for want in [
                Region::new(vec![(0, 50), (0, 70)]),
                Region::new(vec![(15, 20), (20, 30)]),
                Region::new(vec![(0, 50), (35, 35)]),
                Region::new(vec![(12, 3), (31, 9)]),
            ] {
                let [(wr0, wrn), (wc0, wcn)] = *want.dims() else {
                    unreachable!()
                };
                let mut got = vec![0xAAu8; (wrn * wcn) as usize * size];
                copy_box(&src, &have, &have, size, &mut got, &want, true);
                for r in wr0..wr0 + wrn {
                    for c in wc0..wc0 + wcn {
                        let at = (((c - wc0) * wrn + (r - wr0)) as usize) * size;
                        let inside = (10..40).contains(&r) && (30..70).contains(&c);
                        let want_el = if inside { el(r, c) } else { vec![0xAA; size] };
                        assert_eq!(
                            got[at..at + size],
                            want_el,
                            "size {size}, {want:?}: ({r}, {c})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_large_matrix_is_transposed_in_parallel_bands() {
        // Over BAND bytes: the parallel path, for 4- and 2-byte elements (and serially, the
        // steps of the transposed path).
        for (rows, cols, size, serial) in [
            (1100usize, 1003usize, 4usize, false),
            (777, 3001, 2, false),
            (1100, 1003, 4, true),
        ] {
            let src: Vec<u8> = (0..rows * cols * size)
                .map(|i| (i * 13 % 251) as u8)
                .collect();
            let have = Region::whole(&[rows as u64, cols as u64]);
            let mut got = vec![0u8; src.len()];
            let dsts = vec![Dst {
                buf: &mut got,
                want: &have,
                transposed: true,
            }];
            let crc = ways(serial, || copy_verify(&src, &have, size, dsts));
            assert_eq!(crc, crc32c::crc32c(&src));
            for r in 0..rows {
                for c in 0..cols {
                    let (from, to) = ((r * cols + c) * size, (c * rows + r) * size);
                    assert_eq!(
                        got[to..to + size],
                        src[from..from + size],
                        "({r}, {c}) serial {serial}"
                    );
                }
            }
            let mut whole = vec![0u8; src.len()];
            transpose_whole(&src, rows, size, &mut whole);
            assert!(whole == got, "transpose_whole {rows} x {cols}");
            // A box of it, transposed, as the only destination (not the whole-matrix path).
            let want = Region::new(vec![(1, rows as u64 - 2), (3, cols as u64 - 5)]);
            let (wr, wc) = (rows - 2, cols - 5);
            let mut part = vec![0u8; wr * wc * size];
            let dst = Dst {
                buf: &mut part,
                want: &want,
                transposed: true,
            };
            assert_eq!(
                ways(serial, || copy_verify(&src, &have, size, vec![dst])),
                crc
            );
            for r in 0..wr {
                for c in 0..wc {
                    let (from, to) = (((r + 1) * cols + c + 3) * size, (c * wr + r) * size);
                    assert_eq!(
                        part[to..to + size],
                        src[from..from + size],
                        "box ({r}, {c})"
                    );
                }
            }
        }
    }

    #[test]
    fn equals_a_plain_copy_at_every_alignment_and_length() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut buf = vec![0u8; 5100];
        for off in [0usize, 1, 31, 32, 33, 64] {
            for len in [0usize, 1, 31, 32, 33, 4096, 4999 - off] {
                buf.fill(0xAA);
                stream_copy(&mut buf[off..off + len], &src[..len]);
                assert_eq!(&buf[off..off + len], &src[..len], "off {off} len {len}");
                assert!(buf[..off].iter().all(|&b| b == 0xAA));
                assert!(buf[off + len..].iter().all(|&b| b == 0xAA));
            }
        }
    }
}
