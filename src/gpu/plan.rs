//! The plan of a GPU load: which stored bytes go where, which parts need the strided kernel, which
//! values need a cast.
//!
//! * A whole tensor, or a part whose box is one or a few contiguous runs of a stored slice (a
//!   split along axis 0), is copied straight from the file mapping into the variable.
//! * A part that is many strided runs (a split along another axis), or any value to cast, is
//!   uploaded once into a device scratch buffer and scattered (or converted) by one kernel launch
//!   per 2-D block. The uploads of a device run in waves of at most `Sizes::scratch` bytes of
//!   scratch: each wave's scratch is one buffer, allocated when the wave runs and freed after it,
//!   so a model of large transposed tensors never needs its own size again in scratch.
//! * Bytes prepared on the host (V1 files, big-endian bundles, initializers that are no repeated
//!   pattern) are uploaded as they are.

use std::ops::Range;
use std::sync::Arc;

use super::exec::{Check, Job, Kernel, Link, Transfer, UploadSource};
use crate::base::device::DeviceMemory;
use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::base::slice::{for_each_run, Region, Run};
use crate::reader::stored::DeviceSource;

/// A part needing at most this many copies per stored slice is copied directly; more go through
/// scratch and the strided kernel.
const DIRECT_RUNS: usize = 8;

/// A 2-D block of runs with constant strides (elements).
#[derive(Debug, PartialEq, Eq)]
struct Block {
    src: u64,
    dst: u64,
    rows: u64,
    row: u64,
    src_stride: u64,
    dst_stride: u64,
}

/// Groups runs (in order) into 2-D blocks: a split along axis 1 of a matrix is one block.
fn blocks(runs: impl IntoIterator<Item = Run>) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    for r in runs {
        if let Some(b) = out.last_mut() {
            if b.row == r.len {
                if b.rows == 1 && r.src > b.src && r.dst > b.dst {
                    b.src_stride = r.src - b.src;
                    b.dst_stride = r.dst - b.dst;
                    b.rows = 2;
                    continue;
                }
                if b.rows > 1
                    && r.src == b.src + b.rows * b.src_stride
                    && r.dst == b.dst + b.rows * b.dst_stride
                {
                    b.rows += 1;
                    continue;
                }
            }
        }
        out.push(Block {
            src: r.src,
            dst: r.dst,
            rows: 1,
            row: r.len,
            src_stride: r.len,
            dst_stride: r.len,
        });
    }
    out
}

/// Every kernel of `kernels/` the planner launches: the elements it reads and writes (a plain
/// copy by element size), its row copy and its transposing copy. The emulated device reads its
/// kernels' meaning here too.
pub(super) const KERNELS: &[(DType, DType, &str, &str)] = &[
    (DType::U8, DType::U8, "copy2d_1", "transpose2d_1"),
    (DType::U16, DType::U16, "copy2d_2", "transpose2d_2"),
    (DType::U32, DType::U32, "copy2d_4", "transpose2d_4"),
    (DType::U64, DType::U64, "copy2d_8", "transpose2d_8"),
    (DType::C128, DType::C128, "copy2d_16", "transpose2d_16"),
    (
        DType::F32,
        DType::BF16,
        "cast2d_f32_bf16",
        "transpose2d_f32_bf16",
    ),
    (
        DType::F32,
        DType::F16,
        "cast2d_f32_f16",
        "transpose2d_f32_f16",
    ),
    (
        DType::BF16,
        DType::F32,
        "cast2d_bf16_f32",
        "transpose2d_bf16_f32",
    ),
    (
        DType::F16,
        DType::F32,
        "cast2d_f16_f32",
        "transpose2d_f16_f32",
    ),
];

/// What kernel `name` of [`KERNELS`] moves: source and destination element types, and whether it
/// writes transposed.
#[cfg(test)]
pub(super) fn kernel_types(name: &str) -> Option<(DType, DType, bool)> {
    let &(from, to, _, transpose) = KERNELS.iter().find(|e| e.2 == name || e.3 == name)?;
    Some((from, to, transpose == name))
}

/// The kernel that moves `from` elements into `to` elements, by rows or `transposed`.
fn kernel_name(from: DType, to: DType, transposed: bool) -> Option<&'static str> {
    // A plain copy moves bytes: the kernel of the element size.
    let plain = |d: DType| match d.size()? {
        1 => Some(DType::U8),
        2 => Some(DType::U16),
        4 => Some(DType::U32),
        8 => Some(DType::U64),
        16 => Some(DType::C128),
        _ => None,
    };
    let (from, to) = if from == to {
        let p = plain(from)?;
        (p, p)
    } else {
        (from, to)
    };
    let &(_, _, rows, transpose) = KERNELS.iter().find(|k| (k.0, k.1) == (from, to))?;
    Some(if transposed { transpose } else { rows })
}

/// `runs` (element offsets of a `[rows, cols]` value, row-major) cut at the ends of its rows, one
/// at a time: a whole `[rows, cols]` value is `rows` pieces, which [`blocks`] merges into one as
/// they come (collected first, a tall narrow value's pieces took 24 bytes per row of host memory).
fn split_at_rows(runs: &[Run], cols: u64) -> impl Iterator<Item = Run> + '_ {
    runs.iter().flat_map(move |r| {
        let mut at = *r;
        std::iter::from_fn(move || {
            (at.len > 0).then(|| {
                let n = at.len.min(cols - at.dst % cols);
                let piece = Run { len: n, ..at };
                at = Run {
                    src: at.src + n,
                    dst: at.dst + n,
                    len: at.len - n,
                };
                piece
            })
        })
    })
}

/// `(rows, mid, cols)` of [`Held::dims`](crate::base::copy::Held::dims) with the axes of extent 1
/// folded away, as a 2-D `(rows, 1, cols)` wherever that is the same permutation; `None` when
/// the held layout is the value's own (at most one extent above 1: a `[n, 1]` or `[1, n]`
/// matrix, a `[1, 1, 1, n]` kernel), which is then copied as it lies.
pub(super) fn held_moves((rows, mid, cols): (u64, u64, u64)) -> Option<(u64, u64, u64)> {
    let dims = match (rows, mid, cols) {
        (_, 1, _) => (rows, 1, cols),
        // [1, mid, cols] held [cols, mid, 1]: the 2-D [mid, cols] transposed.
        (1, _, _) => (mid, 1, cols),
        // [rows, mid, 1] held [1, mid, rows]: the 2-D [rows, mid] transposed.
        (_, _, 1) => (rows, 1, mid),
        _ => (rows, mid, cols),
    };
    (dims.0 > 1 && dims.1 > 0 && dims.2 > 1).then_some(dims)
}

/// The launches that write `runs` (element offsets of a `[rows, mid, cols]` value, row-major;
/// sources relative to `src`) into a destination holding it as `[cols, mid, rows]`: a 2-D value
/// `[rows, cols]` is `mid` 1 and held `[cols, rows]`; a convolution's kernel `[spatial..., in,
/// out]` is held `[out, in, spatial...]`, a depthwise one's `[spatial..., in, mult]` `[in * mult,
/// 1, spatial...]` (see [`Held::dims`](crate::base::copy::Held::dims)).
///
/// Element (r, m, c) lies at `(r * mid + m) * cols + c` and is held at `(c * mid + m) * rows +
/// r`: each run's piece within a row of `cols` is a row of a 2-D transpose written `mid * rows`
/// elements apart (`dst_col`), and pieces whose held places step evenly share a launch. A whole
/// kernel is one launch per spatial position (its `[in, out]` block, written `rows` apart), or,
/// where the input channels are fewer than the positions (a first layer's 7 x 7 x 3), one per
/// channel (its `[spatial, out]` block, written contiguously).
pub(super) fn transposed_launches(
    runs: &[Run],
    (rows, mid, cols): (u64, u64, u64),
    name: &'static str,
    (src, size): (u64, u64),
    (dst, dsize): (u64, u64),
) -> Vec<Kernel> {
    let held = split_at_rows(runs, cols).map(|p| {
        let (i, j) = (p.dst / cols, p.dst % cols);
        let (r, m) = (i / mid, i % mid);
        Run {
            dst: (j * mid + m) * rows + r,
            ..p
        }
    });
    let blocks = if mid > 1 && mid < rows {
        // By channel, then position: consecutive positions are held next to each other.
        let mut pieces: Vec<Run> = held.collect();
        pieces.sort_unstable_by_key(|p| (p.dst / rows % mid, p.dst % rows, p.dst));
        blocks(pieces)
    } else {
        blocks(held)
    };
    blocks
        .into_iter()
        .map(|b| Kernel {
            name,
            src: src.wrapping_add(b.src * size),
            dst: dst + b.dst * dsize,
            rows: b.rows,
            row: b.row,
            src_stride: b.src_stride,
            dst_stride: if b.rows > 1 { b.dst_stride } else { 1 },
            dst_col: mid * rows,
        })
        .collect()
}

/// Addresses in a wave's scratch before it is allocated: `SCRATCH | offset` (device addresses
/// never have the top bit set). [`Uploads::place_scratch`] relocates them.
const SCRATCH: u64 = 1 << 63;

/// Scratch offsets are aligned as device allocations are.
const SCRATCH_ALIGN: usize = 256;

/// One wave of uploads of one device: the jobs (byte ranges of a source and the transfers they
/// feed), the checksums their bytes must match, the kernels that scatter or convert from scratch,
/// and the bytes of scratch they use (addressed `SCRATCH | offset` until placed).
#[derive(Default)]
pub(super) struct Uploads {
    pub jobs: Vec<Job>,
    pub checks: Vec<Check>,
    pub kernels: Vec<Kernel>,
    pub scratch_len: usize,
}

/// Where a stored piece's elements go: a variable's device memory, its dtype there, the box of
/// the tensor it holds, and the elements of it this device takes (empty: all; a replica's share
/// otherwise, in row-major element offsets of the variable).
pub(super) struct Target<'a> {
    pub name: &'a str,
    pub mem: &'a Arc<dyn DeviceMemory>,
    pub dtype: DType,
    pub want: Region,
    pub keep: &'a [Range<u64>],
    /// The destination holds the value transposed: its `(rows, mid, cols)` as
    /// [`Held::dims`](crate::base::copy::Held::dims) sees TensorFlow's shape.
    pub transposed: Option<(u64, u64, u64)>,
}

impl Target<'_> {
    /// The dimensions of a value whose held layout differs from its own ([`held_moves`]): a
    /// `[n, 1]` or `[1, n]` value lies in memory the same either way, and is copied as it is.
    fn transposes(&self) -> Option<(u64, u64, u64)> {
        self.transposed.and_then(held_moves)
    }
}

/// The parts of `runs` whose destination elements lie in `keep` (every run when it is empty).
fn keep_runs(runs: Vec<Run>, keep: &[Range<u64>]) -> Vec<Run> {
    if keep.is_empty() {
        return runs;
    }
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        for k in keep {
            let (a, b) = (r.dst.max(k.start), (r.dst + r.len).min(k.end));
            if a < b {
                out.push(Run {
                    src: r.src + (a - r.dst),
                    dst: a,
                    len: b - a,
                });
            }
        }
    }
    out
}

impl Uploads {
    /// Allocates this wave's scratch on `link` and points every transfer into it and every kernel
    /// reading it at the allocation; the memory must outlive the wave's execution.
    pub(super) fn place_scratch<L: Link>(
        &mut self,
        link: &L,
    ) -> Result<Option<Arc<dyn DeviceMemory>>> {
        if self.scratch_len == 0 {
            return Ok(None);
        }
        let m = link.alloc(self.scratch_len, "scratch")?;
        let base = m.ptr();
        for c in self.jobs.iter_mut().flat_map(|j| j.copies.iter_mut()) {
            if c.dst & SCRATCH != 0 {
                c.dst = base + (c.dst & !SCRATCH);
            }
        }
        for k in &mut self.kernels {
            k.src = k.src.wrapping_sub(SCRATCH).wrapping_add(base);
        }
        Ok(Some(m))
    }

    /// Uploads bytes prepared on the host (already verified) into `mem`.
    pub(super) fn host(&mut self, bytes: Arc<Vec<u8>>, mem: &dyn DeviceMemory) {
        let len = bytes.len();
        self.jobs.push(Job {
            src: UploadSource::Owned(bytes),
            range: 0..len,
            copies: vec![Transfer {
                src: 0,
                len,
                dst: mem.ptr(),
                mem: mem.ptr(),
            }],
            check: None,
        });
    }

    /// Names the variables (or parts) the piece of the last check feeds, on every device: a
    /// checksum error names them.
    pub(super) fn name_last_check(&mut self, variables: Vec<String>) {
        if let Some(c) = self.checks.last_mut() {
            c.variables = variables;
        }
    }

    /// Plans stored piece `src` (elements of `dtype`) into every target it intersects; returns
    /// whether it is read at all, or `None` (and plans nothing) when its scratch would take this
    /// wave past `budget` bytes: the caller starts a new wave (an empty one takes any piece).
    /// With `verify` the whole entry is uploaded through the checksum; without, only the bytes
    /// the targets take, unchecked here: the caller has the same bytes of the same mapping
    /// verified by another device's upload.
    pub(super) fn piece(
        &mut self,
        src: &DeviceSource,
        dtype: DType,
        targets: &[Target<'_>],
        verify: bool,
        budget: usize,
    ) -> Result<Option<bool>> {
        let users: Vec<(&Target<'_>, Vec<Run>)> = targets
            .iter()
            .filter_map(|t| {
                let inter = src.region.intersect(&t.want)?;
                let mut runs = Vec::new();
                for_each_run(&src.region, &t.want, &inter, |r| runs.push(r));
                let runs = keep_runs(runs, t.keep);
                (!runs.is_empty()).then_some((t, runs))
            })
            .collect();
        if users.is_empty() {
            return Ok(Some(false));
        }
        let size = dtype.size().unwrap_or(1);
        let direct = |t: &Target<'_>, runs: &[Run]| {
            t.dtype == dtype && t.transposes().is_none() && runs.len() <= DIRECT_RUNS
        };
        // The elements the kernels read, as scratch clusters: each user's source hull, overlapping
        // hulls merged (a replica's share and the tail are far apart: two small clusters, not one
        // that spans the piece). One scratch buffer and one upload per cluster.
        let mut clusters: Vec<(u64, u64)> = users
            .iter()
            .filter(|(t, runs)| !direct(t, runs))
            .map(|(_, runs)| {
                runs.iter().fold((u64::MAX, 0), |(lo, hi), r| {
                    (lo.min(r.src), hi.max(r.src + r.len))
                })
            })
            .collect();
        clusters.sort_unstable();
        clusters.dedup_by(|next, prev| {
            let overlaps = next.0 <= prev.1;
            if overlaps {
                prev.1 = prev.1.max(next.1);
            }
            overlaps
        });
        let size64 = size as u64;
        let need: usize = clusters
            .iter()
            .map(|&(lo, hi)| ((hi - lo) * size64) as usize)
            .map(|n| n.next_multiple_of(SCRATCH_ALIGN))
            .sum();
        if self.scratch_len > 0 && self.scratch_len + need > budget {
            return Ok(None);
        }
        let mut bases: Vec<Option<u64>> = vec![None; clusters.len()];
        let mut copies = Vec::new();
        for (t, runs) in users {
            let dsize = t.dtype.size().unwrap_or(1) as u64;
            if direct(t, &runs) {
                copies.extend(runs.iter().map(|r| Transfer {
                    src: src.range.start + r.src as usize * size,
                    len: r.len as usize * size,
                    dst: t.mem.ptr() + r.dst * dsize,
                    mem: t.mem.ptr(),
                }));
                continue;
            }
            // This user's cluster, uploaded once into scratch; then one kernel launch per 2-D
            // block. `base` is where element 0 of the piece would be.
            let lo_t = runs.iter().map(|r| r.src).min().unwrap_or(0);
            let c = clusters
                .iter()
                .position(|&(lo, hi)| lo <= lo_t && lo_t < hi)
                .ok_or_else(|| {
                    ErrorKind::InvalidArgument(format!(
                        "internal: no scratch for {} at element {lo_t}",
                        t.name
                    ))
                })?;
            let base = match bases[c] {
                Some(p) => p,
                None => {
                    let (lo, hi) = clusters[c];
                    let (from, len) = (lo as usize * size, (hi - lo) as usize * size);
                    let p = SCRATCH | self.scratch_len as u64;
                    self.scratch_len += len.next_multiple_of(SCRATCH_ALIGN);
                    copies.push(Transfer {
                        src: src.range.start + from,
                        len,
                        dst: p,
                        mem: SCRATCH,
                    });
                    bases[c] = Some(p.wrapping_sub(from as u64));
                    p.wrapping_sub(from as u64)
                }
            };
            let unsupported = || ErrorKind::Unsupported {
                tensor: t.name.to_string(),
                what: format!(
                    "no device kernel moves {dtype} into {}{}",
                    t.dtype,
                    if t.transposes().is_some() {
                        " transposed"
                    } else {
                        ""
                    }
                ),
            };
            if let Some(shape) = t.transposes() {
                let name = kernel_name(dtype, t.dtype, true).ok_or_else(unsupported)?;
                self.kernels.extend(transposed_launches(
                    &runs,
                    shape,
                    name,
                    (base, size as u64),
                    (t.mem.ptr(), dsize),
                ));
                continue;
            }
            let name = kernel_name(dtype, t.dtype, false).ok_or_else(unsupported)?;
            self.kernels
                .extend(blocks(runs.iter().copied()).into_iter().map(|b| Kernel {
                    name,
                    src: base.wrapping_add(b.src * size as u64),
                    dst: t.mem.ptr() + b.dst * dsize,
                    rows: b.rows,
                    row: b.row,
                    src_stride: b.src_stride,
                    dst_stride: b.dst_stride,
                    dst_col: 0,
                }));
        }
        if verify {
            self.checks.push(Check {
                expected: src.crc,
                path: src.path.clone(),
                tensor: src.entry.clone(),
                offset: src.offset,
                size: src.range.len() as u64,
                variables: Vec::new(),
            });
            self.jobs.push(Job {
                src: src.map.clone().into(),
                range: src.range.clone(),
                copies,
                check: Some(self.checks.len() - 1),
            });
        } else {
            // Only the bytes the copies take: one job per cluster of copies less than a unit
            // gap apart (jobs of one source must not overlap: units follow file order).
            copies.sort_unstable_by_key(|c| c.src);
            let from: super::exec::UploadSource = src.map.clone().into();
            let mut job: Option<Job> = None;
            for c in copies {
                match &mut job {
                    Some(j) if c.src <= j.range.end + super::exec::GAP => {
                        j.range.end = j.range.end.max(c.src + c.len);
                        j.copies.push(c);
                    }
                    _ => {
                        self.jobs.extend(job.take());
                        job = Some(Job {
                            src: from.clone(),
                            range: c.src..c.src + c.len,
                            copies: vec![c],
                            check: None,
                        });
                    }
                }
            }
            self.jobs.extend(job);
        }
        Ok(Some(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_group_into_blocks() {
        // A [4, 6] tensor split along axis 1: part [:, 2:5] is 4 runs of 3 at stride 6 -> 1 block.
        let runs: Vec<Run> = (0..4)
            .map(|r| Run {
                src: r * 6 + 2,
                dst: r * 3,
                len: 3,
            })
            .collect();
        assert_eq!(
            blocks(runs.iter().copied()),
            vec![Block {
                src: 2,
                dst: 0,
                rows: 4,
                row: 3,
                src_stride: 6,
                dst_stride: 3
            }]
        );
        // A break in the stride starts a new block.
        let mut runs2 = runs.clone();
        runs2.push(Run {
            src: 100,
            dst: 12,
            len: 3,
        });
        assert_eq!(blocks(runs2).len(), 2);
        assert_eq!(blocks([]), vec![]);
    }

    /// A stored float32 piece of `shape`, the whole of its tensor: a mapped file of zeros.
    fn piece_of(dir: &std::path::Path, shape: &[u64]) -> DeviceSource {
        let len = shape.iter().product::<u64>() as usize * 4;
        let path = dir.join("piece");
        std::fs::write(&path, vec![0u8; len]).unwrap();
        let map = crate::base::mmap::MappedFile::open(&path).unwrap();
        DeviceSource {
            region: Region::whole(shape),
            map: crate::reader::stored::SourceBytes::Mapped(Arc::new(map)),
            range: 0..len,
            crc: 0,
            path,
            entry: "piece".into(),
            offset: 0,
        }
    }

    fn target<'a>(mem: &'a Arc<dyn DeviceMemory>, dtype: DType, want: Region) -> Target<'a> {
        Target {
            name: "v",
            mem,
            dtype,
            want,
            keep: &[],
            transposed: None,
        }
    }

    #[test]
    fn a_wave_takes_pieces_up_to_its_scratch_budget_exactly() {
        // Rows 8..16 of a [16, 16] float32 piece cast to bfloat16: scratch for elements 128..256
        // of the piece, 512 bytes (the rows it reads, not those before them).
        let tmp = tempfile::tempdir().unwrap();
        let src = piece_of(tmp.path(), &[16, 16]);
        let link = super::super::emulated::HostLink::default();
        let mem = link.alloc(8 * 16 * 2, "v").unwrap();
        let t = [target(
            &mem,
            DType::BF16,
            Region::new(vec![(8, 8), (0, 16)]),
        )];
        let plan = |u: &mut Uploads, budget| u.piece(&src, DType::F32, &t, true, budget).unwrap();
        // An empty wave takes a piece whatever the budget.
        let mut u = Uploads::default();
        assert_eq!(plan(&mut u, 0), Some(true));
        assert_eq!(u.scratch_len, 512);
        // A second piece fits a budget of exactly both; one byte less, it opens the next wave,
        // and nothing of it is planned in this one.
        let mut full = Uploads::default();
        plan(&mut full, 0);
        assert_eq!(plan(&mut full, 1023), None);
        assert_eq!(
            (full.jobs.len(), full.kernels.len(), full.scratch_len),
            (u.jobs.len(), u.kernels.len(), 512)
        );
        assert_eq!(plan(&mut u, 1024), Some(true));
        assert_eq!((u.jobs.len(), u.scratch_len), (2, 1024));
    }

    #[test]
    fn an_unverified_piece_reads_only_what_its_copies_take() {
        // A [2, 32768] float32 piece (128 KiB a row) and three direct copies of 16 elements: two
        // in row 0 (at bytes 0 and 4,000) and one in row 1 (byte 131,072). Unverified, the copies
        // less than a unit gap apart share a job and the others get their own: two jobs reading
        // 4,128 bytes, not the 131 KiB between them.
        let tmp = tempfile::tempdir().unwrap();
        let src = piece_of(tmp.path(), &[2, 32768]);
        let link = super::super::emulated::HostLink::default();
        let mems: Vec<Arc<dyn DeviceMemory>> =
            (0..3).map(|_| link.alloc(64, "v").unwrap()).collect();
        let boxes = [((0, 1), (0, 16)), ((0, 1), (1000, 16)), ((1, 1), (0, 16))];
        let t: Vec<Target<'_>> = mems
            .iter()
            .zip(boxes)
            .map(|(m, (r, c))| target(m, DType::F32, Region::new(vec![r, c])))
            .collect();
        let mut u = Uploads::default();
        assert_eq!(u.piece(&src, DType::F32, &t, false, 0).unwrap(), Some(true));
        let jobs: Vec<(Range<usize>, usize, bool)> = u
            .jobs
            .iter()
            .map(|j| (j.range.clone(), j.copies.len(), j.check.is_some()))
            .collect();
        assert_eq!(jobs, vec![(0..4064, 2, false), (131072..131136, 1, false)]);
        assert!(u.checks.is_empty() && u.kernels.is_empty());
        // Verified, the whole piece is read through its checksum.
        let mut u = Uploads::default();
        u.piece(&src, DType::F32, &t, true, 0).unwrap();
        assert_eq!(u.jobs.len(), 1);
        assert_eq!(
            (u.jobs[0].range.clone(), u.jobs[0].copies.len()),
            (0..262144, 3)
        );
        assert_eq!((u.checks.len(), u.checks[0].size), (1, 262144));
    }
}
