//! The GPU load: uploads planned byte ranges to device memory.
//!
//! * **Pinned staging ring** (always). A worker fills a few pinned buffers of 64 MiB (checksum,
//!   then a streaming copy that skips the read for ownership, 1 MiB at a time in parallel), queues
//!   their copies on two lanes, and reuses a buffer only after its fence. It also carries
//!   host-owned sources (V1 files, big-endian bundles, unmapped initializers).
//! * **Registered DMA** (opt-in, `LoadOptions::register_mappings`). A second worker takes batches
//!   of up to 256 MiB ([`Sizes`]) of a shard mapping, page-locks them in place (read-only
//!   registration), queues copies straight from the page cache into the destinations, and
//!   checksums the same bytes on the CPU while the DMA runs. A batch is unregistered once its
//!   copies are done (two batches in flight); the ring takes what registration refuses. On an
//!   H200 this path made the load slower, not faster: page-locking holds a driver lock that the
//!   ring's copies wait on (README, GPU).
//!
//! With both, the workers pull the next unit of the same file-ordered list and the report says
//! what each carried. The checksums of every entry are combined from the pieces computed on the
//! way and compared before the kernels (strided slice copies and casts from scratch buffers) run.
//! Any error stops every worker; every queued copy is waited for and every registration undone
//! before this returns.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::{DeviceStats, Memory};
use crate::base::error::{ErrorKind, Result};
use crate::base::mmap::MappedFile;

/// The sizes the executor works in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    /// Bytes per unit of work (and per staging buffer).
    pub unit: usize,
    /// Staging buffers in the ring (at most `staging * unit` bytes of pinned memory).
    pub staging: usize,
    /// Bytes registered at once by the DMA path.
    pub reg_batch: usize,
}

impl Default for Sizes {
    fn default() -> Sizes {
        // 4 x 64 MiB = 256 MiB of pinned staging, whatever the checkpoint size.
        Sizes {
            unit: 64 << 20,
            staging: 4,
            reg_batch: 256 << 20,
        }
    }
}
/// Entries closer than this in a file share a unit (the gap is uploaded, not copied anywhere).
const GAP: usize = 64 << 10;
/// How far past the units in work the files are hinted for readahead.
const READ_AHEAD: usize = 512 << 20;
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
    fn alloc(&self, bytes: usize, what: &str) -> Result<Arc<dyn Memory>>;

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

    /// Runs `f` with `count` pinned staging buffers of `bytes` each (kept by the link between
    /// loads, since pinning memory is slow).
    fn with_staging<R>(
        &self,
        count: usize,
        bytes: usize,
        f: impl FnOnce(&mut [&mut [u8]]) -> R,
    ) -> Result<R>;

    /// Queues (on lane 0) filling `len` bytes at `dst` with a repeated pattern.
    fn fill(&self, dst: u64, len: usize, fill: Fill) -> Result<()>;

    /// Makes the kernels ready (compiled and loaded), so that a failure shows before the upload.
    fn prepare_kernels(&self) -> Result<()>;

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
pub(crate) enum Src {
    /// A shard's mapping (registrable).
    Mapped(Arc<MappedFile>),
    /// Bytes prepared on the host (already verified).
    Owned(Arc<Vec<u8>>),
}

impl Src {
    fn bytes(&self) -> &[u8] {
        match self {
            Src::Mapped(m) => m.bytes(),
            Src::Owned(v) => v,
        }
    }

    fn same(&self, other: &Src) -> bool {
        match (self, other) {
            (Src::Mapped(a), Src::Mapped(b)) => Arc::ptr_eq(a, b),
            (Src::Owned(a), Src::Owned(b)) => Arc::ptr_eq(a, b),
            _ => false,
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
}

/// One copy: `len` bytes at offset `src` of the source to device address `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Copy {
    pub src: usize,
    pub len: usize,
    pub dst: u64,
}

/// One stored entry (or host buffer): its byte range in `src`, the copies it feeds, and the
/// checksum (index into the checks) its bytes must match.
pub(crate) struct Job {
    pub src: Src,
    pub range: Range<usize>,
    pub copies: Vec<Copy>,
    pub check: Option<usize>,
}

/// A kernel launch: `rows` rows of `row` elements from `src` (row stride `src_stride` elements)
/// to `dst` (row stride `dst_stride`); `name` is a kernel of `kernels/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kernel {
    pub name: &'static str,
    pub src: u64,
    pub dst: u64,
    pub rows: u64,
    pub row: u64,
    pub src_stride: u64,
    pub dst_stride: u64,
}

/// A checksum piece: `len` bytes at offset `off` of check `check`'s entry.
#[derive(Clone, Copy, Debug)]
struct Part {
    check: usize,
    off: u64,
    len: u64,
    crc: u32,
}

/// A unit of work: a byte range of one source, the copies from it, and the checksum pieces in it
/// (check, offset of the piece in its entry, range in the source).
pub(crate) struct Unit {
    src: Src,
    pub(crate) range: Range<usize>,
    pub(crate) copies: Vec<Copy>,
    pub(crate) crcs: Vec<(usize, u64, Range<usize>)>,
}

/// Cuts the jobs (in file order) into units of at most `max` bytes: neighbouring entries of one
/// source share a unit; a larger entry is cut. Returns the registrable units and the host-owned
/// ones.
pub(crate) fn units(mut jobs: Vec<Job>, max: usize) -> (Vec<Unit>, Vec<Unit>) {
    // Each mapping's units in increasing file order (a partitioned tensor's slices can lie on both
    // sides of another tensor): the registrar's windows rely on it, and reads stay sequential.
    jobs.sort_by_key(|j| match &j.src {
        Src::Mapped(m) => (0, Arc::as_ptr(m) as usize, j.range.start),
        Src::Owned(_) => (1, 0, 0),
    });
    let (mut mapped, mut owned): (Vec<Unit>, Vec<Unit>) = (Vec::new(), Vec::new());
    for job in jobs {
        let out = match job.src {
            Src::Mapped(_) => &mut mapped,
            Src::Owned(_) => &mut owned,
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
                    u.copies.push(Copy {
                        src: a,
                        len: b - a,
                        dst: c.dst + (a - c.src) as u64,
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

/// Merges copies that continue each other in both source and destination.
fn coalesce(copies: &mut Vec<Copy>) {
    copies.sort_unstable_by_key(|c| (c.src, c.dst));
    let mut out: Vec<Copy> = Vec::with_capacity(copies.len());
    for c in copies.drain(..) {
        match out.last_mut() {
            Some(p) if p.src + p.len == c.src && p.dst + p.len as u64 == c.dst => p.len += c.len,
            _ => out.push(c),
        }
    }
    *copies = out;
}

/// Checksums the pieces of `u` that fall in `sub` (a range of the source), and copies `sub` into
/// `dst` when given.
fn crc_and_copy(u: &Unit, sub: Range<usize>, dst: Option<&mut [u8]>) -> Vec<Part> {
    let src = u.src.bytes();
    let mut parts = Vec::new();
    for (check, off, r) in &u.crcs {
        let (a, b) = (r.start.max(sub.start), r.end.min(sub.end));
        if a < b {
            parts.push(Part {
                check: *check,
                off: off + (a - r.start) as u64,
                len: (b - a) as u64,
                crc: crate::base::crc::serial(&src[a..b]),
            });
        }
    }
    if let Some(d) = dst {
        // A staging buffer is read by the GPU, not by this CPU: no read for ownership.
        crate::base::stream_copy::stream_copy(d, &src[sub]);
    }
    parts
}

fn pieces(r: &Range<usize>) -> impl IndexedParallelIterator<Item = Range<usize>> + '_ {
    (0..(r.end - r.start).div_ceil(PIECE))
        .into_par_iter()
        .map(move |i| r.start + i * PIECE..(r.start + (i + 1) * PIECE).min(r.end))
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
    failed: AtomicBool,
    parts: Mutex<Vec<Part>>,
}

impl Shared<'_> {
    /// The next `n` bytes' worth of mapped units of one source (at least one unit).
    fn take(&self, bytes: usize) -> Range<usize> {
        let mut c = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let start = c.0;
        let mut end = start;
        while end < self.mapped.len() {
            let u = &self.mapped[end];
            if end > start
                && (!u.src.same(&self.mapped[start].src)
                    || u.range.end > self.mapped[start].range.start.saturating_add(bytes))
            {
                break;
            }
            end += 1;
        }
        // Readahead of this batch and what follows, up to READ_AHEAD: a cold file is then read in large requests
        // while this batch is pinned or staged (a hint: it costs a residency check when warm).
        let (mut h, mut ahead) = (c.1.max(start), 0);
        while h < self.mapped.len() && ahead < READ_AHEAD {
            let u = &self.mapped[h];
            if let Src::Mapped(m) = &u.src {
                m.will_need(u.range.clone());
            }
            ahead += u.range.len();
            h += 1;
        }
        *c = (end, h);
        start..end
    }

    fn add_parts(&self, p: Vec<Part>) {
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(p);
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
pub(crate) fn execute<L: Link>(
    link: &L,
    jobs: Vec<Job>,
    kernels: &[Kernel],
    checks: &[Check],
    register: bool,
    sizes: Sizes,
    stats: &mut DeviceStats,
) -> Result<()> {
    if !kernels.is_empty() {
        // A missing compiler or a module that does not load fails before any byte moves.
        link.prepare_kernels()?;
    }
    let (mapped, owned) = units(jobs, sizes.unit);
    let shared = Shared {
        sizes,
        mapped: &mapped,
        owned: &owned,
        cursor: Mutex::new((0, 0)),
        owned_cursor: Mutex::new(0),
        fallback: Mutex::new(Vec::new()),
        no_registration: AtomicBool::new(!register),
        failed: AtomicBool::new(false),
        parts: Mutex::new(Vec::new()),
    };
    // The registrar runs first in `join`: the ring never waits for it (a rayon thread may run the
    // ring while the registrar waits on its own parallel checksums), so what registration gives
    // back after the ring ran dry is carried by a second ring pass.
    let (reg, first) = rayon::join(|| registrar(link, &shared), || ring(link, &shared));
    let second = match (&reg, &first) {
        (Ok(_), Ok(_)) => ring(link, &shared),
        _ => Ok((0, 0)),
    };
    let synced = link.synchronize();
    let (reg_bytes, reason) = reg?;
    let (staged, staging) = first?;
    let (staged2, staging2) = second?;
    synced?;
    let (staged, staging) = (staged + staged2, staging.max(staging2));
    stats.registered_bytes += reg_bytes;
    stats.staged_bytes += staged;
    stats.staging_bytes = stats.staging_bytes.max(staging);
    if reason.is_some() {
        stats.registration_fallback = reason;
    }
    verify(
        checks,
        shared.parts.into_inner().unwrap_or_else(|e| e.into_inner()),
    )?;
    for k in kernels {
        if let Err(e) = link.kernel(k) {
            let _ = link.synchronize(); // nothing queued may outlive the load
            return Err(e);
        }
    }
    stats.kernels += kernels.len();
    link.synchronize()
}

/// Combines the pieces of every entry's checksum and compares.
fn verify(checks: &[Check], mut parts: Vec<Part>) -> Result<()> {
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
            return Err(ErrorKind::TensorChecksum {
                path: c.path.clone(),
                tensor: c.tensor.clone(),
                offset: c.offset,
                size: c.size,
                what: "checksum",
                expected: c.expected,
                found: crc,
            }
            .into());
        }
    }
    Ok(())
}

/// A registered range of a mapping: pages `[start, end)` (offsets in the file) at `ptr`, last used
/// by batch `last_use`.
struct Reg {
    /// The mapping (its address, as an identity).
    map: usize,
    /// The registered address.
    ptr: usize,
    end: usize,
    last_use: u64,
}

/// The registered-DMA worker. Returns the bytes it carried and why it stopped registering (if it
/// did).
///
/// Registrations never overlap (the driver refuses a page registered twice): each batch registers
/// only the pages past what is registered already, and a registration is undone once every batch
/// that copied from its pages is done. Batches complete in order on their lane; two stay in flight.
fn registrar<L: Link>(link: &L, s: &Shared<'_>) -> Result<(u64, Option<String>)> {
    let mut regs: VecDeque<Reg> = VecDeque::new();
    let mut fences: VecDeque<(u64, L::Fence)> = VecDeque::new();
    let mut done = 0u64; // batches below this number are complete
    let mut carried = 0u64;
    let mut reason = None;
    // The scope ends when every checksum task has.
    let ran = rayon::scope(|scope| -> Result<()> {
        let mut seq = 0u64;
        while !s.failed.load(Ordering::Relaxed) && !s.no_registration.load(Ordering::Relaxed) {
            let batch = s.take(s.sizes.reg_batch);
            if batch.is_empty() {
                return Ok(());
            }
            let units = &s.mapped[batch.clone()];
            let Src::Mapped(map) = &units[0].src else {
                unreachable!("mapped units only")
            };
            let bytes = map.bytes();
            let page = crate::base::mmap::page_size();
            let start = units[0].range.start / page * page;
            // Whole pages: the mapping covers the last page of the file entirely. Units of one
            // mapping are in increasing file order (see `units`), so the batch ends with its last.
            let end = units[units.len() - 1].range.end.div_ceil(page) * page;
            let id = Arc::as_ptr(map) as usize;
            let from = match regs.back() {
                Some(r) if r.map == id && r.end > start => r.end,
                _ => start,
            };
            if from < end {
                let ptr = bytes.as_ptr().wrapping_add(from);
                // SAFETY: `from` is page-aligned inside the mapping and `end` ends within its last
                // page; the mapping (held by the unit) outlives the registration, which is undone
                // before this function returns.
                if let Err(why) = unsafe { link.register(ptr, end - from) } {
                    reason = Some(why);
                    s.no_registration.store(true, Ordering::Relaxed);
                    s.fallback
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(batch);
                    return Ok(());
                }
                regs.push_back(Reg {
                    map: id,
                    ptr: ptr as usize,
                    end,
                    last_use: seq,
                });
            }
            for r in regs.iter_mut().rev() {
                if r.map != id || r.end <= start {
                    break;
                }
                r.last_use = seq;
            }
            for u in units {
                for c in &u.copies {
                    // A copy reads from one registration: split at the boundary with the earlier
                    // one (`from`), the only boundary inside this batch.
                    let cut = from.clamp(c.src, c.src + c.len);
                    for (a, b) in [(c.src, cut), (cut, c.src + c.len)] {
                        if a < b {
                            let dst = c.dst + (a - c.src) as u64;
                            // SAFETY: registered (above or by an earlier batch); unregistered only
                            // after this batch's fence has passed.
                            unsafe { link.copy(LANE_REG, &bytes[a..b], dst)? };
                        }
                    }
                }
            }
            fences.push_back((seq, link.fence(LANE_REG)?));
            seq += 1;
            // Checksum the same bytes while the DMA runs, in the pool, while this thread goes on
            // registering the next batch (pinning is what bounds this path).
            scope.spawn(move |_| {
                let parts: Vec<Part> = units
                    .iter()
                    .flat_map(|u| {
                        pieces(&u.range)
                            .flat_map_iter(|sub| crc_and_copy(u, sub, None))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                s.add_parts(parts);
            });
            carried += units
                .iter()
                .map(|u| u.copies.iter().map(|c| c.len as u64).sum::<u64>())
                .sum::<u64>();
            while fences.len() > 2 {
                let (n, f) = fences.pop_front().expect("more than two in flight");
                link.wait(f)?;
                done = n + 1;
                while regs.front().is_some_and(|r| r.last_use < done) {
                    let r = regs.pop_front().expect("checked");
                    // SAFETY: every batch that copied from it is done.
                    unsafe { link.unregister(r.ptr as *const u8)? };
                }
            }
        }
        Ok(())
    });
    // Drain: wait for every batch still in flight (or the whole device, if a wait fails), then
    // undo every registration left.
    let mut drained = Ok(());
    for (_, f) in fences {
        drained = drained.and(link.wait(f));
    }
    if drained.is_err() || ran.is_err() {
        drained = drained.and(link.synchronize());
    }
    for r in regs {
        // SAFETY: nothing is in flight any more.
        drained = drained.and(unsafe { link.unregister(r.ptr as *const u8) });
    }
    s.fail(ran.and(drained)).map(|()| (carried, reason))
}

/// The staging-ring worker. Returns the bytes it carried and the pinned bytes it used.
fn ring<L: Link>(link: &L, s: &Shared<'_>) -> Result<(u64, u64)> {
    // Host-owned units first, then whatever registration leaves.
    let next = || -> Option<&Unit> {
        {
            let mut o = s.owned_cursor.lock().unwrap_or_else(|e| e.into_inner());
            if *o < s.owned.len() {
                *o += 1;
                return Some(&s.owned[*o - 1]);
            }
        }
        if let Some(i) = s.fallback.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Some(&s.mapped[i]);
        }
        let r = s.take(0);
        (!r.is_empty()).then(|| &s.mapped[r.start])
    };
    let mut first = next();
    if first.is_none() {
        return Ok((0, 0));
    }
    let biggest = s
        .mapped
        .iter()
        .chain(s.owned)
        .map(|u| u.range.len())
        .max()
        .unwrap_or(0);
    let size = biggest.clamp(1, s.sizes.unit);
    let count = if s.mapped.len() + s.owned.len() > 1 {
        s.sizes.staging
    } else {
        1
    };
    let result = link.with_staging(count, size, |bufs| -> Result<u64> {
        let mut fences: Vec<Option<L::Fence>> = (0..bufs.len()).map(|_| None).collect();
        let mut carried = 0u64;
        let mut k = 0usize;
        let run = (|| -> Result<()> {
            while let Some(u) = first.take().or_else(next) {
                if s.failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let b = k % bufs.len();
                let lane = 1 + b % 2;
                k += 1;
                if let Some(f) = fences[b].take() {
                    link.wait(f)?;
                }
                let len = u.range.len();
                let buf = &mut bufs[b][..len];
                let start = u.range.start;
                let parts: Vec<Part> = buf
                    .par_chunks_mut(PIECE)
                    .zip(pieces(&u.range))
                    .flat_map_iter(|(d, sub)| crc_and_copy(u, sub, Some(d)))
                    .collect();
                s.add_parts(parts);
                for c in &u.copies {
                    let off = c.src - start;
                    // SAFETY: staging memory, not written again before this lane's fence.
                    unsafe { link.copy(lane, &buf[off..off + c.len], c.dst)? };
                    carried += c.len as u64;
                }
                fences[b] = Some(link.fence(lane)?);
            }
            Ok(())
        })();
        // The buffers go back to the link only when nothing reads them any more.
        let mut drained = Ok(());
        for f in fences.into_iter().flatten() {
            drained = drained.and(link.wait(f));
        }
        // A failed copy or fence leaves copies queued with no fence: wait for the whole device.
        if drained.is_err() || run.is_err() {
            drained = drained.and(link.synchronize());
        }
        run.and(drained).map(|()| carried)
    });
    let carried = s.fail(result.and_then(|r| r))?;
    Ok((carried, (count * size) as u64))
}
