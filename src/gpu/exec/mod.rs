//! The GPU load: uploads planned byte ranges to device memory.
//!
//! * **Pinned staging ring** (always). A worker fills a few pinned buffers of 64 MiB (checksum,
//!   then a streaming copy that skips the read for ownership, 1 MiB at a time in parallel), queues
//!   their copies on two lanes, and reuses a buffer only after its fence. It also carries
//!   host-owned sources (V1 files, big-endian bundles, unmapped initializers). In a fresh
//!   process it starts as soon as its first buffer is pinned; the others join as they are
//!   ([`Staged`]).
//! * **Registered DMA** (opt-in, `LoadOptions::register_mappings`). A second worker takes batches
//!   of up to 256 MiB ([`Sizes`]) of a shard mapping, page-locks them in place (read-only
//!   registration), queues copies straight from the page cache into the destinations, and
//!   checksums the same bytes on the CPU while the DMA runs. A batch is unregistered once its
//!   copies are done (two batches in flight). It carries every mapped unit; the ring carries the
//!   host-owned ones and what registration refuses, and pins its buffers only if there are any,
//!   so a process that loads once pins no staging. (When both took mapped units, on an H200, the
//!   load was slower than with the ring alone: page-locking holds a driver lock that the ring's
//!   copies waited on; README, GPU.)
//!
//! The report says what each worker carried. The checksums of every entry are combined from the
//! pieces computed on the way and compared before the kernels (strided slice copies and casts from
//! scratch buffers) run. Any error stops every worker; every queued copy is waited for and every
//! registration undone before this returns.

mod registrar;
mod ring;
mod staged;
mod units;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::base::device::DeviceMemory;
use crate::base::error::{ErrorKind, Result};
use crate::base::mmap::MappedFile;
use crate::load::DeviceStats;
use registrar::registrar;
use ring::ring;
pub(crate) use staged::{staggered, Staged};
pub(crate) use units::{units, Unit};

/// The sizes the executor works in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    /// Bytes per unit of work (and per staging buffer).
    pub unit: usize,
    /// Staging buffers in the ring (at most `staging * unit` bytes of pinned memory).
    pub staging: usize,
    /// Bytes registered at once by the DMA path.
    pub reg_batch: usize,
    /// A replicated variable of at least this many bytes is loaded by shares and all-gathered
    /// (when there is a gather); smaller ones are uploaded whole to every replica.
    pub share_min: usize,
    /// Device scratch (strided parts, casts, transposes) live at once per device: the uploads
    /// run in waves that each need at most this much (a single larger piece has a wave of its
    /// own), and each wave's scratch is freed before the next is allocated.
    pub scratch: usize,
    /// How far past the units in work the files are hinted for readahead.
    pub read_ahead: usize,
}

impl Default for Sizes {
    fn default() -> Sizes {
        // 4 x 64 MiB = 256 MiB of pinned staging, whatever the checkpoint size.
        Sizes {
            unit: 64 << 20,
            staging: 4,
            reg_batch: 256 << 20,
            share_min: 1 << 20,
            scratch: 1 << 30,
            read_ahead: 512 << 20,
        }
    }
}
/// Entries closer than this in a file share a unit (the gap is uploaded, not copied anywhere).
pub(crate) const GAP: usize = 64 << 10;
/// Bytes checksummed (and copied) per parallel task.
const PIECE: usize = 1 << 20;

/// Lane of the registered path; the ring uses lanes 1 and 2. Kernels run on lane 0 after all
/// copies are done.
pub(crate) const LANE_REG: usize = 0;
pub(crate) const LANES: usize = 3;

/// The device side of a load.
pub(crate) trait Link: Sync {
    /// A point in a lane's queue that can be waited for.
    type Fence: Send;

    /// The device, e.g. `cuda:0`.
    fn device(&self) -> String;

    /// Device memory of `bytes` for `what` (a variable or a scratch buffer).
    fn alloc(&self, bytes: usize, what: &str) -> Result<Arc<dyn DeviceMemory>>;

    /// Page-locks `len` bytes at `ptr` (page-aligned) read-only for DMA; `Err(reason)` when that
    /// is not possible (the caller stages those bytes instead).
    ///
    /// # Safety
    /// The range must be mapped and stay mapped until [`unregister`](Self::unregister).
    unsafe fn register(&self, ptr: *const u8, len: usize) -> std::result::Result<(), String>;

    /// Undoes [`register`](Self::register).
    ///
    /// # Safety
    /// Every copy from the range must be complete (its fence waited for).
    unsafe fn unregister(&self, ptr: *const u8) -> Result<()>;

    /// Queues a copy of `src` to device address `dst` on `lane`.
    ///
    /// # Safety
    /// `src` must be registered or staging memory, stay valid and unchanged until a fence recorded
    /// after this call on the same lane has been waited for, and `dst .. dst + src.len()` must lie
    /// in one live device allocation.
    unsafe fn copy(&self, lane: usize, src: &[u8], dst: u64) -> Result<()>;

    /// Records a fence after everything queued on `lane` so far.
    fn fence(&self, lane: usize) -> Result<Self::Fence>;

    /// Blocks until `fence` has passed.
    fn wait(&self, fence: Self::Fence) -> Result<()>;

    /// Runs `f` with up to `count` pinned staging buffers of `bytes` each (kept by the link
    /// between loads, since pinning memory is slow), at least one usable when `f` starts; the
    /// others may join while it runs ([`Staged`]).
    fn with_staging<R>(
        &self,
        count: usize,
        bytes: usize,
        f: impl FnOnce(&mut Staged<'_>) -> R,
    ) -> Result<R>;

    /// Queues (on lane 0) filling `len` bytes at `dst` with a repeated pattern.
    fn fill(&self, dst: u64, len: usize, fill: Fill) -> Result<()>;

    /// Makes the kernels `names` ready (compiled and loaded), so that a failure shows before the
    /// upload.
    fn prepare_kernels(&self, names: &[&'static str]) -> Result<()>;

    /// Queues one kernel on lane 0.
    fn kernel(&self, k: &Kernel) -> Result<()>;

    /// Waits for every lane.
    fn synchronize(&self) -> Result<()>;
}

/// A repeated pattern a device memset can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    D8(u8),
    D16(u16),
    D32(u32),
}

impl Fill {
    /// The memset that repeats `elem` (one element's bytes), if there is one.
    pub(crate) fn of(elem: &[u8]) -> Option<Fill> {
        let first = *elem.first()?;
        if elem.iter().all(|&b| b == first) {
            return Some(Fill::D8(first));
        }
        match elem.len() {
            2 => Some(Fill::D16(u16::from_le_bytes([elem[0], elem[1]]))),
            4 => Some(Fill::D32(u32::from_le_bytes([
                elem[0], elem[1], elem[2], elem[3],
            ]))),
            _ => None,
        }
    }

    /// The pattern's bytes.
    #[cfg(test)]
    pub(crate) fn bytes(self) -> Vec<u8> {
        match self {
            Fill::D8(b) => vec![b],
            Fill::D16(h) => h.to_le_bytes().to_vec(),
            Fill::D32(w) => w.to_le_bytes().to_vec(),
        }
    }
}

/// Where an upload's bytes come from.
#[derive(Clone)]
pub(crate) enum UploadSource {
    /// A shard's mapping (registrable).
    Mapped(Arc<MappedFile>),
    /// Bytes prepared on the host (already verified).
    Owned(Arc<Vec<u8>>),
    /// A shard on object storage: the ring fetches a unit's range straight into its pinned
    /// buffer and checksums it there.
    #[cfg(feature = "remote")]
    Remote(Arc<crate::remote::RemoteShard>),
}

impl UploadSource {
    /// The bytes of a local source (a remote one has none here: the ring fetches them).
    fn bytes(&self) -> &[u8] {
        match self {
            UploadSource::Mapped(m) => m.bytes(),
            UploadSource::Owned(v) => v,
            #[cfg(feature = "remote")]
            UploadSource::Remote(_) => &[],
        }
    }

    fn same(&self, other: &UploadSource) -> bool {
        match (self, other) {
            (UploadSource::Mapped(a), UploadSource::Mapped(b)) => Arc::ptr_eq(a, b),
            (UploadSource::Owned(a), UploadSource::Owned(b)) => Arc::ptr_eq(a, b),
            #[cfg(feature = "remote")]
            (UploadSource::Remote(a), UploadSource::Remote(b)) => a.same(b),
            _ => false,
        }
    }
}

impl From<crate::reader::stored::SourceBytes> for UploadSource {
    fn from(s: crate::reader::stored::SourceBytes) -> UploadSource {
        use crate::reader::stored::SourceBytes;
        match s {
            SourceBytes::Mapped(m) => UploadSource::Mapped(m),
            #[cfg(feature = "remote")]
            SourceBytes::Remote(r) => UploadSource::Remote(r),
        }
    }
}

/// A checksum to verify: a stored entry's bytes.
pub(crate) struct Check {
    pub expected: u32,
    pub path: PathBuf,
    pub tensor: String,
    pub offset: u64,
    pub size: u64,
    /// The variables (or parts) the entry's bytes go to, on every device (named by a checksum
    /// error).
    pub variables: Vec<String>,
}

/// One copy: `len` bytes at offset `src` of the source to device address `dst`, inside the
/// allocation that starts at `mem`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub src: usize,
    pub len: usize,
    pub dst: u64,
    /// The destination allocation (its base address): copies into two allocations are never
    /// joined into one, even where a memory pool placed them back to back (a copy across an
    /// allocation's end is CUDA_ERROR_INVALID_VALUE).
    pub mem: u64,
}

/// One stored entry (or host buffer): its byte range in `src`, the copies it feeds, and the
/// checksum (index into the checks) its bytes must match.
pub(crate) struct Job {
    pub src: UploadSource,
    pub range: Range<usize>,
    pub copies: Vec<Transfer>,
    pub check: Option<usize>,
}

/// A kernel launch: `rows` rows of `row` elements from `src` (row stride `src_stride` elements)
/// to `dst` (row stride `dst_stride`); `name` is a kernel of `kernels/`. A transpose
/// ([`Kernel::transposes`]; `dst_col` is then the value's row count, at least 2) writes element
/// (r, c) at `dst + r * dst_stride + c * dst_col` (elements); the others write rows of contiguous
/// elements (`dst_col` 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kernel {
    pub name: &'static str,
    pub src: u64,
    pub dst: u64,
    pub rows: u64,
    pub row: u64,
    pub src_stride: u64,
    pub dst_stride: u64,
    pub dst_col: u64,
}

impl Kernel {
    /// Whether the kernel is a transpose (which takes `dst_col` as its seventh parameter).
    pub(crate) fn transposes(&self) -> bool {
        super::plan::KERNELS.iter().any(|e| e.3 == self.name)
    }

    /// The launch configuration, `(grid, block)` in (x, y): a transpose (kernels/transpose.cu)
    /// goes by 32×32 tiles in blocks of 32×8 threads, the others by rows, 256 threads along a
    /// row. Both grids are clamped; the kernels' grid-stride loops cover the rest.
    pub(crate) fn launch_dims(&self) -> ((u32, u32), (u32, u32)) {
        if self.transposes() {
            (
                (
                    self.row.div_ceil(32).clamp(1, 1024) as u32,
                    self.rows.div_ceil(32).clamp(1, 65535) as u32,
                ),
                (32, 8),
            )
        } else {
            (
                (
                    self.row.div_ceil(256).clamp(1, 1024) as u32,
                    self.rows.clamp(1, 65535) as u32,
                ),
                (256, 1),
            )
        }
    }
}

/// A checksum piece: `len` bytes at offset `off` of check `check`'s entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CrcPiece {
    check: usize,
    off: u64,
    len: u64,
    crc: u32,
}

/// The shared state of both workers.
struct Shared<'a> {
    sizes: Sizes,
    mapped: &'a [Unit],
    owned: &'a [Unit],
    /// Next mapped unit to hand out, and the first unit not yet hinted for readahead.
    cursor: Mutex<(usize, usize)>,
    /// Next host-owned unit to hand out.
    owned_cursor: Mutex<usize>,
    /// Mapped units registration gave up on.
    fallback: Mutex<Vec<usize>>,
    /// Set once registration failed (the ring takes everything from then on).
    no_registration: AtomicBool,
    /// Whether the shard pages read leave this process's mapping once no worker needs them (on a
    /// load of one device; several devices' workers read the same pages, each for its own
    /// share): the ring's once it has read a unit (with registration it reads mapped units only
    /// in its second pass, after every window is undone), the registrar's once a window is
    /// unregistered and every checksum reading it is done.
    releases: bool,
    /// Set once a worker failed, here or on another device of the same load: every worker stops.
    failed: &'a AtomicBool,
    /// The load's cancel token: a worker that finds it cancelled fails with `Cancelled`.
    cancel: Option<&'a crate::load::CancelToken>,
    parts: Mutex<Vec<CrcPiece>>,
}

impl<'a> Shared<'a> {
    /// The state of a load of `mapped` and `owned` units: registration taken up only with
    /// `register`, pages given back only with `release`, every worker stopped once `failed` is
    /// set.
    #[allow(clippy::too_many_arguments)]
    fn new(
        sizes: Sizes,
        mapped: &'a [Unit],
        owned: &'a [Unit],
        register: bool,
        release: bool,
        failed: &'a AtomicBool,
        cancel: Option<&'a crate::load::CancelToken>,
    ) -> Shared<'a> {
        Shared {
            sizes,
            mapped,
            owned,
            cursor: Mutex::new((0, 0)),
            owned_cursor: Mutex::new(0),
            fallback: Mutex::new(Vec::new()),
            no_registration: AtomicBool::new(!register),
            releases: release,
            failed,
            cancel,
            parts: Mutex::new(Vec::new()),
        }
    }

    /// The next `n` bytes' worth of mapped units of one source (one unit when `bytes` is 0).
    fn take(&self, bytes: usize) -> Range<usize> {
        let mut c = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let start = c.0;
        let mut end = start;
        while end < self.mapped.len() {
            let u = &self.mapped[end];
            if end > start
                && (bytes == 0
                    || !u.src.same(&self.mapped[start].src)
                    || u.range.end > self.mapped[start].range.start.saturating_add(bytes))
            {
                break;
            }
            end += 1;
        }
        // Readahead of this batch and what follows, up to `read_ahead`: a cold file is then read in
        // large requests while this batch is pinned or staged (a hint: a residency check when
        // warm).
        let (mut h, mut ahead) = (c.1.max(start), 0);
        while h < self.mapped.len() && ahead < self.sizes.read_ahead {
            let u = &self.mapped[h];
            if let UploadSource::Mapped(m) = &u.src {
                m.will_need(u.range.clone());
            }
            ahead += u.range.len();
            h += 1;
        }
        *c = (end, h);
        start..end
    }

    /// Hands mapped units `batch` back to the ring (registration gave up on them).
    fn give_back(&self, batch: Range<usize>) {
        self.fallback
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(batch);
    }

    fn add_parts(&self, p: Vec<CrcPiece>) {
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(p);
    }

    /// `Cancelled` once the load's token is cancelled: the worker then fails as on any error
    /// (its fences waited for, its registrations undone) and the others stop.
    fn check_cancelled(&self) -> Result<()> {
        self.cancel.map_or(Ok(()), |c| c.check())
    }

    fn fail<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }
}

/// Uploads every job, verifies every checksum, then runs the kernels. On error nothing queued is
/// left running and nothing stays registered.
///
/// `stop` is shared by the executors of every device of one load: a failure sets it, and the
/// others then stop early and answer `Ok(false)` (their uploads incomplete), so that the error
/// returned is the one that happened. `Ok(true)`: everything uploaded, verified and converted.
/// With `release` (a load of one device), the shard pages read leave this process's mapping once
/// no worker needs them (they stay in the page cache): the ring's after it read them, the
/// registrar's after each window is unregistered and checksummed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn execute<L: Link>(
    link: &L,
    jobs: Vec<Job>,
    kernels: &[Kernel],
    checks: &[Check],
    register: bool,
    release: bool,
    sizes: Sizes,
    stats: &mut DeviceStats,
    stop: &AtomicBool,
    cancel: Option<&crate::load::CancelToken>,
) -> Result<bool> {
    let r = (|| -> Result<bool> {
        let t = Instant::now();
        if !kernels.is_empty() {
            // A missing compiler or a module that does not load fails before any byte moves.
            let names: Vec<&'static str> = kernels.iter().map(|k| k.name).collect();
            link.prepare_kernels(&names)?;
        }
        stats.times.kernel_setup += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (mapped, owned) = units(jobs, sizes.unit);
        let shared = Shared::new(sizes, &mapped, &owned, register, release, stop, cancel);
        // The registrar runs first in `join`: the ring never waits for it (a rayon thread may run the
        // ring while the registrar waits on its own parallel checksums), so what registration gives
        // back after the ring ran dry is carried by a second ring pass.
        let (reg, first) = crate::base::par::run(|| {
            rayon::join(
                || registrar(link, &shared),
                || ring(link, &shared, !register),
            )
        });
        let second = match (&reg, &first) {
            (Ok(_), Ok(_)) => ring(link, &shared, true),
            _ => Ok((0, 0, 0.0)),
        };
        let synced = link.synchronize();
        let (reg_bytes, reason, registering) = reg?;
        let (staged, staging, pinning) = first?;
        let (staged2, staging2, pinning2) = second?;
        synced?;
        stats.times.transfer += t.elapsed().as_secs_f64();
        stats.times.pinning += pinning + pinning2;
        stats.times.registering += registering;
        let t = Instant::now();
        if stop.load(Ordering::Relaxed) {
            return Ok(false); // another device failed: its error is the load's
        }
        let (staged, staging) = (staged + staged2, staging.max(staging2));
        stats.registered_bytes += reg_bytes;
        stats.staged_bytes += staged;
        stats.staging_bytes = stats.staging_bytes.max(staging);
        if reason.is_some() {
            stats.registration_fallback = reason;
        }
        // A file truncated under its mapping reads as zeros past its end: that is an error before
        // any checksum is judged.
        for u in &mapped {
            if let UploadSource::Mapped(m) = &u.src {
                m.intact()?;
            }
        }
        verify(
            checks,
            shared.parts.into_inner().unwrap_or_else(|e| e.into_inner()),
        )?;
        stats.times.verify += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for k in kernels {
            if let Err(e) = link.kernel(k) {
                let _ = link.synchronize(); // nothing queued may outlive the load
                return Err(e);
            }
        }
        stats.kernels += kernels.len();
        link.synchronize()?;
        stats.times.kernels += t.elapsed().as_secs_f64();
        Ok(true)
    })();
    if r.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    r
}

/// Combines the pieces of every entry's checksum and compares.
fn verify(checks: &[Check], mut parts: Vec<CrcPiece>) -> Result<()> {
    parts.sort_unstable_by_key(|p| (p.check, p.off));
    let mut parts = parts.into_iter().peekable();
    for (i, c) in checks.iter().enumerate() {
        let (mut crc, mut done) = (0u32, 0u64);
        while let Some(p) = parts.next_if(|p| p.check == i) {
            if p.off != done {
                break; // a gap: caught below as a short checksum
            }
            crc = crate::base::crc::combine(crc, p.crc, p.len);
            done += p.len;
        }
        if done != c.size || crc != c.expected {
            let e: crate::Error = ErrorKind::TensorChecksum {
                path: c.path.clone(),
                tensor: c.tensor.clone(),
                offset: c.offset,
                size: c.size,
                what: "checksum",
                expected: c.expected,
                found: crc,
            }
            .into();
            return Err(e.while_loading(c.variables.iter().map(String::as_str)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_are_the_narrowest_memset_that_repeats_the_element() {
        assert_eq!(Fill::of(&[]), None);
        assert_eq!(Fill::of(&[7]), Some(Fill::D8(7)));
        // A float64 zero and a bfloat16 0x4040 repeat one byte.
        assert_eq!(Fill::of(&[0; 8]), Some(Fill::D8(0)));
        assert_eq!(Fill::of(&[0x40, 0x40]), Some(Fill::D8(0x40)));
        assert_eq!(Fill::of(&[1, 2]), Some(Fill::D16(0x0201)));
        assert_eq!(Fill::of(&[1, 2, 3, 4]), Some(Fill::D32(0x0403_0201)));
        // No memset repeats 8 or 16 bytes that differ: those are uploaded.
        assert_eq!(Fill::of(&[1, 2, 3, 4, 5, 6, 7, 8]), None);
        assert_eq!(Fill::of(&[0, 0, 0, 0, 0, 0, 0xf0, 0x3f]), None);
    }

    /// The documented launch configurations: transposes by 32×32 tiles in blocks of 32×8 (the
    /// kernels' shared tile assumes them), the others by rows of 256 threads.
    #[test]
    fn transposes_launch_by_tiles_and_the_others_by_rows() {
        let k = |name| Kernel {
            name,
            src: 0,
            dst: 0,
            rows: 100,
            row: 1000,
            src_stride: 1000,
            dst_stride: 1000,
            dst_col: 0,
        };
        for &(_, _, copy, transpose) in super::super::plan::KERNELS {
            assert!(!k(copy).transposes(), "{copy}");
            assert_eq!(k(copy).launch_dims(), ((4, 100), (256, 1)), "{copy}");
            let t = Kernel {
                dst_col: 100,
                ..k(transpose)
            };
            assert!(t.transposes(), "{transpose}");
            assert_eq!(t.launch_dims(), ((32, 4), (32, 8)), "{transpose}");
        }
        // Clamped grids (the kernels loop over the rest).
        let big = Kernel {
            rows: 1 << 20,
            row: 1 << 20,
            ..k("copy2d_4")
        };
        assert_eq!(big.launch_dims(), ((1024, 65535), (256, 1)));
        let empty = Kernel {
            rows: 0,
            row: 0,
            ..k("copy2d_4")
        };
        assert_eq!(empty.launch_dims(), ((1, 1), (256, 1)));
    }

    /// `take` hands out batches of up to `bytes` of one mapping (one unit for 0), and hints each
    /// unit for readahead once, in file order, keeping `read_ahead` bytes past the last hinted.
    #[test]
    fn batches_stay_in_one_mapping_and_readahead_runs_ahead_of_them() {
        let tmp = tempfile::tempdir().unwrap();
        const K: usize = 64 << 10;
        let maps: Vec<Arc<MappedFile>> = [8, 2]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let path = tmp.path().join(format!("shard{i}"));
                std::fs::write(&path, vec![0u8; n * K]).unwrap();
                Arc::new(MappedFile::open(&path).unwrap())
            })
            .collect();
        let jobs = || -> Vec<Job> {
            maps.iter()
                .flat_map(|m| {
                    (0..m.bytes().len() / K).map(move |k| Job {
                        src: UploadSource::Mapped(m.clone()),
                        range: k * K..(k + 1) * K,
                        copies: Vec::new(),
                        check: None,
                    })
                })
                .collect()
        };
        let failed = AtomicBool::new(false);
        // The batches `take(bytes)` hands out until none is left, each with the units hinted
        // (counted over both mappings) once it was taken.
        let batches = |bytes: usize, read_ahead: usize| {
            let sizes = Sizes {
                unit: K,
                read_ahead,
                ..Sizes::default()
            };
            for m in &maps {
                m.hints.lock().unwrap().clear();
            }
            let (mapped, owned) = units(jobs(), K);
            assert_eq!((mapped.len(), owned.len()), (10, 0));
            let s = Shared::new(sizes, &mapped, &owned, true, false, &failed, None);
            let mut out = Vec::new();
            loop {
                let b = s.take(bytes);
                if b.is_empty() {
                    break;
                }
                let one_source = mapped[b.clone()]
                    .iter()
                    .all(|u| u.src.same(&mapped[b.start].src));
                assert!(one_source, "{b:?}");
                let hinted: usize = maps.iter().map(|m| m.hints.lock().unwrap().len()).sum();
                out.push((b, hinted));
            }
            // Each unit hinted once, in file order.
            for m in &maps {
                let hints = m.hints.lock().unwrap().clone();
                let want: Vec<_> = (0..m.bytes().len() / K)
                    .map(|k| k * K..(k + 1) * K)
                    .collect();
                assert_eq!(hints, want);
            }
            out
        };
        // Which mapping comes first is the units' order (by address); its 8 units or its 2.
        let eight_first = {
            let (mapped, _) = units(jobs(), K);
            matches!(&mapped[0].src, UploadSource::Mapped(m) if Arc::ptr_eq(m, &maps[0]))
        };
        let (a, b) = if eight_first { (0, 8) } else { (2, 0) };
        let pairs = |hinted: [usize; 5]| {
            let mut want: Vec<_> = (0..4).map(|i| a + 2 * i..a + 2 * i + 2).collect();
            want.insert(if eight_first { 4 } else { 0 }, b..b + 2);
            want.into_iter().zip(hinted).collect::<Vec<_>>()
        };
        // Three units (192 KiB) ahead: each batch hints the three that follow the last hinted.
        assert_eq!(batches(2 * K, 3 * K), pairs([3, 6, 9, 10, 10]));
        // One unit per batch when `bytes` is 0 (the ring's take).
        let singles = batches(0, 3 * K);
        assert_eq!(singles.len(), 10);
        assert!(singles.iter().all(|(b, _)| b.len() == 1));
        // The default reads 512 MiB ahead: everything is hinted with the first batch.
        let all = batches(2 * K, Sizes::default().read_ahead);
        assert!(all.iter().all(|&(_, hinted)| hinted == 10), "{all:?}");
    }
}
