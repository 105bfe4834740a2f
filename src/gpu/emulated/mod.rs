//! An emulated device in host memory, for tests: the executor, the planner and the kernels'
//! addressing run exactly as on a GPU, and this link checks what a GPU would not forgive (copies
//! out of bounds, DMA from memory that is not registered, registrations left behind, misaligned
//! kernel addresses). Its kernel launches run the sources of `kernels/` compiled for the CPU
//! ([`cpu_kernels`]) where a C++ compiler is at hand.
//!
//! **Asynchronous, as a GPU is.** Copies, fills, kernels and allocations are queued on their lane
//! and run only when a fence of that lane is waited for or the device is synchronised, as late as
//! a GPU may run them: a copy reads its source then, not when it was queued. Synchronising runs
//! lane 0 (kernels, fills, allocations) before the copy lanes, the order that exposes a kernel
//! queued without waiting for the copies it reads, and after them the next time, the order that
//! exposes a copy queued without waiting for the allocation or memset it lands in. A trainer's
//! buffer is allocated on a stream of its own, which only the load's wait for that buffer
//! ([`DeviceMemory::ready`]) reaches. So a staging buffer refilled before its fence, a
//! registration undone under a queued copy, memory used on another lane before its allocation
//! completed or after it was freed, or a value read back while work is queued, shows as an error
//! or a wrong byte in the tests instead of first on a GPU. Frees take effect at once (a GPU frees
//! in stream order), so work still queued into memory being freed is an error here even where
//! lane 0's order would have made it safe: stricter, never looser.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

mod collective;
pub(crate) mod cpu_kernels;
pub(crate) use collective::{HostComm, HostGather, Hub};

use super::exec::{Fill, Kernel, Link, Staged, LANES, LANE_REG};
use crate::base::device::DeviceMemory;
use crate::base::error::{ErrorKind, Result};

struct HostMem {
    base: u64,
    device: String,
    data: Mutex<Vec<u8>>,
    /// Set when its stream ([`lane`](Self::lane)) reaches the allocation (allocations are
    /// stream-ordered, as `cuMemAllocAsync` makes them): before that, no other lane may use it.
    allocated: AtomicBool,
    /// The device, for [`DeviceMemory::ready`] and the checks of reads.
    dev: Weak<Device>,
    /// The stream its allocation was queued on: lane 0, or [`TRAINER`] for a trainer's buffer.
    lane: usize,
}

impl HostMem {
    fn check_idle(&self, what: &str) -> Result<()> {
        if let Some(d) = self.dev.upgrade() {
            d.idle(what, self.lane == TRAINER)?;
        }
        if !self.allocated.load(Ordering::Acquire) {
            return Err(bad(format!(
                "{what} {:#x} before its allocation completed",
                self.base
            )));
        }
        Ok(())
    }
}

impl DeviceMemory for HostMem {
    fn ptr(&self) -> u64 {
        self.base
    }
    fn len(&self) -> usize {
        self.data.lock().unwrap().len()
    }
    fn read(&self, dst: &mut [u8]) -> Result<()> {
        self.check_idle("reading back")?;
        dst.copy_from_slice(&self.data.lock().unwrap());
        Ok(())
    }
    /// A trainer's buffer: what is queued on its stream is done first, as `cuStreamSynchronize`
    /// of the trainer's stream makes it.
    fn ready(&self) -> Result<()> {
        match self.dev.upgrade() {
            Some(d) => d.run(Some(self.lane), u64::MAX),
            None => Ok(()),
        }
    }
    fn device(&self) -> String {
        self.device.clone()
    }
    #[cfg(feature = "cuda")]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Host ranges registered for DMA, with the link (device) that registered each: shared by the
/// emulated devices of one test, since the driver refuses a page registered twice in the process.
type Registry = Arc<Mutex<Vec<(usize, usize, usize)>>>;

/// Work queued on a lane, run when the lane is waited for.
enum Op {
    /// An allocation (lane 0): the memory becomes usable on every lane.
    Alloc(Weak<HostMem>),
    /// `len` bytes from host address `src` to device address `dst` (on [`LANE_REG`], DMA from
    /// registered memory, which must still be registered when it runs).
    Copy {
        src: usize,
        len: usize,
        dst: u64,
    },
    Fill {
        dst: u64,
        len: usize,
        fill: Fill,
    },
    Kernel(Kernel),
}

/// The trainer's own stream, where its buffers ([`HostLink::alloc_trainer`]) are allocated: the
/// load's synchronisations do not reach it, only [`DeviceMemory::ready`] does.
const TRAINER: usize = LANES;

#[derive(Default)]
struct Queue {
    /// Sequence number of the next operation queued (on any lane).
    next: u64,
    /// The load's lanes, then the trainer's stream.
    lanes: [VecDeque<(u64, Op)>; LANES + 1],
}

/// One emulated device: its memory, its lanes and the registrations it shares with the others.
#[derive(Default)]
struct Device {
    /// Which emulated device: 0 for `default()`, `i` for the `i`-th of [`HostLink::devices`].
    id: usize,
    /// Allocations by address; an entry that no longer upgrades has been freed. Allocations of
    /// this device live at `(id + 1) << 56 | n << 40`: a copy to another device's memory lands
    /// in no allocation of this one.
    mems: Mutex<BTreeMap<u64, Weak<HostMem>>>,
    queue: Mutex<Queue>,
    /// Held while queued work runs, so that queued work runs in order on each lane and the checks
    /// of what is still queued see no operation half taken.
    running: Mutex<()>,
    /// Synchronisations so far: they run the lanes in turn in one order and the other.
    syncs: AtomicUsize,
    registered: Registry,
    /// The staging buffers page-locked so far (start, end): the ring's lanes copy only from them.
    staging_locked: Mutex<Vec<(usize, usize)>>,
    /// Copies dropped because their source was unregistered or given back while they were
    /// queued: on a GPU they would have read memory no longer pinned (or freed). The load reports
    /// an error, but a correct one never gets there, even when it fails.
    dropped_copies: AtomicUsize,
}

/// A fence: a lane, and the sequence number of the first operation queued after it.
pub(crate) struct HostFence {
    lane: usize,
    before: u64,
}

fn bad(msg: String) -> crate::Error {
    ErrorKind::InvalidArgument(format!("emulated device: {msg}")).into()
}

impl Device {
    fn find(&self, addr: u64, len: usize) -> Result<(Arc<HostMem>, usize)> {
        let mems = self.mems.lock().unwrap();
        let (_, m) = mems
            .range(..=addr)
            .next_back()
            .ok_or_else(|| bad(format!("address {addr:#x} is not allocated")))?;
        let m = m
            .upgrade()
            .ok_or_else(|| bad(format!("address {addr:#x} lies in freed memory")))?;
        let off = (addr - m.base) as usize;
        if off + len > m.len() {
            return Err(bad(format!(
                "{len} bytes at {addr:#x} overrun an allocation of {} bytes",
                m.len()
            )));
        }
        Ok((m, off))
    }

    /// The allocation at `addr` for work running on `lane`, which must see it allocated.
    fn find_on(&self, lane: usize, addr: u64, len: usize) -> Result<(Arc<HostMem>, usize)> {
        let (m, off) = self.find(addr, len)?;
        if !m.allocated.load(Ordering::Acquire) {
            let on = match m.lane {
                TRAINER => "the trainer's stream".to_string(),
                l => format!("lane {l}"),
            };
            return Err(bad(format!(
                "lane {lane} used {addr:#x} before its allocation on {on} completed"
            )));
        }
        Ok((m, off))
    }

    fn push(&self, lane: usize, op: Op) {
        let mut q = self.queue.lock().unwrap();
        let seq = q.next;
        q.next += 1;
        q.lanes[lane].push_back((seq, op));
    }

    /// Runs what was queued before sequence number `before`, on `lane` (or on every lane of the
    /// load, not the trainer's stream: lane 0 first, or last, in turn, so that work on one lane
    /// that another's depends on without a wait shows in one order or the other). Every operation
    /// taken runs; the first error is returned.
    fn run(&self, lane: Option<usize>, before: u64) -> Result<()> {
        let _running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut ops = Vec::new();
        {
            let mut q = self.queue.lock().unwrap();
            let lanes: Vec<usize> = match lane {
                Some(l) => vec![l],
                None if self.syncs.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) => {
                    (0..LANES).collect()
                }
                None => (0..LANES).rev().collect(),
            };
            for l in lanes {
                while q.lanes[l].front().is_some_and(|(seq, _)| *seq < before) {
                    ops.extend(q.lanes[l].pop_front().map(|(_, op)| (l, op)));
                }
            }
        }
        let mut first = Ok(());
        for (l, op) in ops {
            let r = self.execute(l, op);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    fn execute(&self, lane: usize, op: Op) -> Result<()> {
        match op {
            Op::Alloc(m) => {
                if let Some(m) = m.upgrade() {
                    m.allocated.store(true, Ordering::Release);
                }
                Ok(())
            }
            Op::Copy { src, len, dst } => {
                if lane == LANE_REG {
                    let ok = self
                        .registered
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|&(p, l, id)| src >= p && src + len <= p + l && id == self.id);
                    if !ok {
                        return Err(bad(format!(
                            "DMA of {len} bytes from {src:#x}, no longer registered when it ran"
                        )));
                    }
                }
                let (m, off) = self.find_on(lane, dst, len)?;
                // SAFETY: `Link::copy`'s contract keeps the source valid and unchanged until a fence
                // after it is waited for; staging buffers given back and registrations undone with
                // copies still queued are refused (and the copies dropped) before they could dangle.
                let src = unsafe { std::slice::from_raw_parts(src as *const u8, len) };
                m.data.lock().unwrap()[off..off + len].copy_from_slice(src);
                Ok(())
            }
            Op::Fill { dst, len, fill } => {
                let pattern = fill.bytes();
                let (m, off) = self.find_on(lane, dst, len)?;
                let mut d = m.data.lock().unwrap();
                for c in d[off..off + len].chunks_exact_mut(pattern.len()) {
                    c.copy_from_slice(&pattern);
                }
                Ok(())
            }
            Op::Kernel(k) => self.launch(lane, &k),
        }
    }

    /// Drops the queued copies whose source lies in `[start, end)`; returns how many there were.
    fn drop_copies_from(&self, start: usize, end: usize) -> usize {
        let mut q = self.queue.lock().unwrap();
        let mut dropped = 0;
        for lane in q.lanes.iter_mut() {
            lane.retain(|(_, op)| {
                let from =
                    matches!(op, Op::Copy { src, len, .. } if *src < end && start < src + len);
                dropped += from as usize;
                !from
            });
        }
        self.dropped_copies.fetch_add(dropped, Ordering::Relaxed);
        dropped
    }

    /// An error when anything is still queued on the load's lanes, or with `trainer` on the
    /// trainer's stream too (what `what` does must come after it).
    fn idle(&self, what: &str, trainer: bool) -> Result<()> {
        let _running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let q = self.queue.lock().unwrap();
        let lanes = if trainer { LANES + 1 } else { LANES };
        let queued: usize = q.lanes[..lanes].iter().map(|l| l.len()).sum();
        if queued > 0 {
            return Err(bad(format!(
                "{what} emulated:{} with {queued} operation(s) still queued",
                self.id
            )));
        }
        Ok(())
    }

    fn launch(&self, lane: usize, k: &Kernel) -> Result<()> {
        let Some((from, to, transpose)) = super::plan::kernel_types(k.name) else {
            return Err(bad(format!("no kernel {}", k.name)));
        };
        if transpose != (k.dst_col != 0) {
            return Err(bad(format!(
                "{} launched with dst_col {}",
                k.name, k.dst_col
            )));
        }
        let (es, ed) = (from.size().unwrap(), to.size().unwrap());
        // A GPU faults on a misaligned element access.
        if !k.src.is_multiple_of(es as u64) || !k.dst.is_multiple_of(ed as u64) {
            return Err(bad(format!(
                "{} launched with misaligned addresses {:#x} -> {:#x}",
                k.name, k.src, k.dst
            )));
        }
        if k.rows == 0 || k.row == 0 {
            return Ok(());
        }
        // Everything the launch may touch lies in one allocation on each side.
        let (src_len, dst_len) = cpu_kernels::extents(k, es, ed);
        let (sm, so) = self.find_on(lane, k.src, src_len)?;
        let (dm, doff) = self.find_on(lane, k.dst, dst_len)?;
        if Arc::ptr_eq(&sm, &dm) {
            return Err(bad(format!("{} reads and writes one allocation", k.name)));
        }
        let src = sm.data.lock().unwrap();
        let mut dst = dm.data.lock().unwrap();
        let (src, dst) = (&src[so..so + src_len], &mut dst[doff..doff + dst_len]);
        if cpu_kernels::available() {
            // The real kernel source, compiled for the CPU, with the GPU's launch configuration.
            return cpu_kernels::run(k, src, dst).map_err(|e| bad(format!("{}: {e}", k.name)));
        }
        // Without a C++ compiler: what the kernel does, row by row (element by element when it
        // writes transposed).
        let (row, col) = (k.row as usize, k.dst_col.max(1) as usize);
        for r in 0..k.rows as usize {
            let s = &src[r * k.src_stride as usize * es..][..row * es];
            let d = r * k.dst_stride as usize * ed;
            if !transpose {
                crate::load::cast::convert(from, to, s, &mut dst[d..d + row * ed]);
                continue;
            }
            for (c, elem) in s.chunks_exact(es).enumerate() {
                let at = d + c * col * ed;
                crate::load::cast::convert(from, to, elem, &mut dst[at..at + ed]);
            }
        }
        Ok(())
    }
}

#[derive(Default)]
pub(crate) struct HostLink {
    dev: Arc<Device>,
    next: AtomicU64,
    /// Makes every registration fail (to exercise the staging-only path).
    pub fail_register: AtomicBool,
    /// Places allocations back to back, 256-byte aligned, as a CUDA memory pool does (candle's
    /// `Var`s, the load's own): a copy across an allocation's end then starts in one allocation
    /// and overruns it, which `find` refuses as the driver does. Otherwise allocations lie
    /// 1 TiB apart, so that a stray address lands in no allocation.
    pub pooled: AtomicBool,
    /// The next free offset of the pooled allocations.
    pool_cursor: AtomicU64,
    /// Makes every registration take this many milliseconds (page-locking is slow on a GPU).
    pub register_delay_ms: AtomicU64,
    /// Makes preparing kernels fail, as a missing compiler or a module that does not load does.
    pub refuse_kernels: AtomicBool,
    /// Makes each unregistration take this many milliseconds.
    pub unregister_delay_ms: AtomicU64,
    /// Makes page-locking each staging buffer after the first take this many milliseconds: the
    /// ring then starts on fewer buffers and takes in the others as they come.
    pub staging_delay_ms: AtomicU64,
    /// Refuses page-locking the n-th staging buffer (1-based; 0 = never): from the first, the
    /// ring gets buffers that need none (the driver's pinned allocation); from a later one, the
    /// ring goes on with those locked before it.
    pub refuse_staging_at: AtomicUsize,
    /// The most staging buffers one ring had usable at once.
    pub staging_used: AtomicUsize,
    /// Each copy from a staging buffer, in the order queued: its lane, and the buffer (its
    /// place among the buffers page-locked so far).
    pub ring_copies: Mutex<Vec<(usize, usize)>>,
    /// Makes queueing each copy take this many microseconds (a slow link).
    pub copy_delay_us: AtomicU64,
    /// Makes the n-th copy fail (1-based; 0 = never).
    pub fail_copy_at: AtomicUsize,
    /// Cancels this token at the n-th copy (1-based), as a trainer's other thread would while
    /// the transfer runs.
    pub cancel_at_copy: Mutex<Option<(usize, crate::load::CancelToken)>>,
    /// Makes the n-th unregistration fail, leaving that registration (1-based; 0 = never).
    pub fail_unregister_at: AtomicUsize,
    pub unregistrations: AtomicUsize,
    pub copies: AtomicUsize,
    pub registrations: AtomicUsize,
    /// The most registrations of this device in place at once.
    pub peak_registrations: AtomicUsize,
    /// The most bytes allocated and alive at once.
    pub peak_bytes: AtomicUsize,
}

impl HostLink {
    /// `n` emulated devices (`emulated:0` ...) sharing one process's registrations.
    pub(crate) fn devices(n: usize) -> Vec<HostLink> {
        let registry = Registry::default();
        (0..n)
            .map(|id| HostLink {
                dev: Arc::new(Device {
                    id,
                    registered: registry.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect()
    }

    fn find(&self, addr: u64, len: usize) -> Result<(Arc<HostMem>, usize)> {
        self.dev.find(addr, len)
    }

    /// `len` bytes at device address `addr`, read by the host (or by a collective after the
    /// loads): nothing may still be queued on the device.
    pub(crate) fn read_at(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        self.dev.idle("reading from", false)?;
        let (m, off) = self.dev.find_on(0, addr, len)?;
        let d = m.data.lock().unwrap();
        Ok(d[off..off + len].to_vec())
    }

    /// Writes `bytes` at device address `addr` (from the host, or by a collective after the
    /// loads): nothing may still be queued on the device.
    pub(crate) fn write_at(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        self.dev.idle("writing to", false)?;
        let (m, off) = self.dev.find_on(0, addr, bytes.len())?;
        m.data.lock().unwrap()[off..off + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    /// Registrations of this device still in place (must be none after a load).
    pub(crate) fn still_registered(&self) -> usize {
        let r = self.dev.registered.lock().unwrap();
        r.iter().filter(|e| e.2 == self.dev.id).count()
    }

    /// Allocations still alive (held by values, buffers or leaks).
    pub(crate) fn live_allocations(&self) -> usize {
        self.dev
            .mems
            .lock()
            .unwrap()
            .values()
            .filter(|m| m.strong_count() > 0)
            .count()
    }

    /// Device memory allocated on stream `lane` (stream-ordered: other lanes may use it once
    /// that lane has run past the allocation).
    fn alloc_on(&self, bytes: usize, lane: usize) -> Arc<HostMem> {
        let base = if self.pooled.load(Ordering::Relaxed) {
            let step = bytes.max(1).next_multiple_of(256) as u64;
            ((self.dev.id as u64 + 1) << 56)
                | (1 << 40)
                | self.pool_cursor.fetch_add(step, Ordering::Relaxed)
        } else {
            // Allocations 1 TiB apart, so an overrun lands in no allocation.
            let n = self.next.fetch_add(1, Ordering::Relaxed) + 2;
            ((self.dev.id as u64 + 1) << 56) | (n << 40)
        };
        let m = Arc::new(HostMem {
            base,
            device: self.device(),
            data: Mutex::new(vec![0xA5; bytes]),
            allocated: AtomicBool::new(false),
            dev: Arc::downgrade(&self.dev),
            lane,
        });
        let mut mems = self.dev.mems.lock().unwrap();
        mems.retain(|_, m| m.strong_count() > 0);
        mems.insert(base, Arc::downgrade(&m));
        let live: usize = mems
            .values()
            .filter_map(|m| m.upgrade())
            .map(|m| m.len())
            .sum();
        self.peak_bytes.fetch_max(live, Ordering::Relaxed);
        drop(mems);
        // Stream-ordered, as the CUDA link (on lane 0) and candle allocate.
        self.dev.push(lane, Op::Alloc(Arc::downgrade(&m)));
        m
    }

    /// A trainer's buffer, allocated on the trainer's own stream, which the load reaches only
    /// through [`DeviceMemory::ready`].
    pub(crate) fn alloc_trainer(&self, bytes: usize) -> Arc<dyn DeviceMemory> {
        self.alloc_on(bytes, TRAINER)
    }

    /// Operations queued and not yet run (must be none after a load).
    pub(crate) fn queued(&self) -> usize {
        let q = self.dev.queue.lock().unwrap();
        q.lanes.iter().map(|l| l.len()).sum()
    }

    /// Copies dropped so far because the memory they read was unregistered or given back while
    /// they were still queued (must be none, also after a failed load).
    pub(crate) fn dropped_copies(&self) -> usize {
        self.dev.dropped_copies.load(Ordering::Relaxed)
    }
}

impl Link for HostLink {
    type Fence = HostFence;

    fn device(&self) -> String {
        format!("emulated:{}", self.dev.id)
    }

    fn alloc(&self, bytes: usize, _what: &str) -> Result<Arc<dyn DeviceMemory>> {
        Ok(self.alloc_on(bytes, 0))
    }

    unsafe fn register(&self, ptr: *const u8, len: usize) -> std::result::Result<(), String> {
        if self.fail_register.load(Ordering::Relaxed) {
            return Err("registration refused (emulated)".into());
        }
        let delay = self.register_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        if !(ptr as usize).is_multiple_of(4096) {
            return Err(format!("{ptr:p} is not page-aligned"));
        }
        let mut r = self.dev.registered.lock().unwrap();
        let a = ptr as usize;
        // Like the driver: a page registered twice is refused.
        if r.iter().any(|&(p, l, _)| a < p + l && p < a + len) {
            return Err(format!("{ptr:p}: already registered (overlap)"));
        }
        self.registrations.fetch_add(1, Ordering::Relaxed);
        r.push((a, len, self.dev.id));
        let live = r.iter().filter(|e| e.2 == self.dev.id).count();
        self.peak_registrations.fetch_max(live, Ordering::Relaxed);
        Ok(())
    }

    unsafe fn unregister(&self, ptr: *const u8) -> Result<()> {
        let n = self.unregistrations.fetch_add(1, Ordering::Relaxed) + 1;
        let delay = self.unregister_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        if n == self.fail_unregister_at.load(Ordering::Relaxed) {
            return Err(bad(format!("unregistering {ptr:p} failed (emulated)")));
        }
        let _running = self.dev.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = self.dev.registered.lock().unwrap();
        let i = r
            .iter()
            .position(|&(p, _, id)| p == ptr as usize && id == self.dev.id)
            .ok_or_else(|| bad(format!("{ptr:p} is not registered")))?;
        let (p, l, _) = r.swap_remove(i);
        drop(r);
        // A copy still queued from these pages would read memory the driver no longer pins.
        let pending = self.dev.drop_copies_from(p, p + l);
        if pending > 0 {
            return Err(bad(format!(
                "{ptr:p} unregistered with {pending} copies from it still queued"
            )));
        }
        Ok(())
    }

    unsafe fn copy(&self, lane: usize, src: &[u8], dst: u64) -> Result<()> {
        assert!(lane < LANES);
        let n = self.copies.fetch_add(1, Ordering::Relaxed) + 1;
        let us = self.copy_delay_us.load(Ordering::Relaxed);
        if us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(us));
        }
        if n == self.fail_copy_at.load(Ordering::Relaxed) {
            return Err(bad(format!("copy {n} failed (emulated)")));
        }
        if let Some((at, token)) = &*self.cancel_at_copy.lock().unwrap() {
            if n == *at {
                token.cancel();
            }
        }
        let a = src.as_ptr() as usize;
        if lane != LANE_REG {
            let locked = self.dev.staging_locked.lock().unwrap();
            let Some(buffer) = locked
                .iter()
                .position(|&(p, e)| a >= p && a + src.len() <= e)
            else {
                return Err(bad(
                    "DMA on a ring lane from memory that is no page-locked staging buffer".into(),
                ));
            };
            self.ring_copies.lock().unwrap().push((lane, buffer));
        }
        if lane == LANE_REG {
            let ok = self
                .dev
                .registered
                .lock()
                .unwrap()
                .iter()
                .any(|&(p, l, id)| a >= p && a + src.len() <= p + l && id == self.dev.id);
            if !ok {
                return Err(bad("DMA from memory that is not registered".into()));
            }
        }
        // Bounds are known when the copy is queued (the driver checks them then).
        self.find(dst, src.len())?;
        self.dev.push(
            lane,
            Op::Copy {
                src: a,
                len: src.len(),
                dst,
            },
        );
        Ok(())
    }

    fn fence(&self, lane: usize) -> Result<HostFence> {
        let q = self.dev.queue.lock().unwrap();
        Ok(HostFence {
            lane,
            before: q.next,
        })
    }

    fn wait(&self, fence: HostFence) -> Result<()> {
        self.dev.run(Some(fence.lane), fence.before)
    }

    fn with_staging<R>(
        &self,
        count: usize,
        bytes: usize,
        f: impl FnOnce(&mut Staged<'_>) -> R,
    ) -> Result<R> {
        /// Drops the copies still queued from the buffers before they are freed, also when `f`
        /// panics, and forgets that they were page-locked; says how many copies there were.
        struct Release<'a> {
            dev: &'a Device,
            spans: Vec<(usize, usize)>,
        }
        impl Release<'_> {
            fn release(&mut self) -> usize {
                let _running = self.dev.running.lock().unwrap_or_else(|e| e.into_inner());
                let spans = &self.spans;
                self.dev
                    .staging_locked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|&(p, _)| !spans.iter().any(|&(a, _)| a == p));
                std::mem::take(&mut self.spans)
                    .into_iter()
                    .map(|(a, b)| self.dev.drop_copies_from(a, b))
                    .sum()
            }
        }
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.release();
            }
        }
        // The GPU link's memory (fresh, each buffer faulted in on every core and page-locked
        // there, the first before the ring starts and the others as it runs), so that every
        // emulated load runs it too.
        let mut mem = crate::base::mmap::FreshMemory::for_buffers(count, bytes)
            .map_err(|e| bad(format!("staging memory: {e}")))?;
        let span = |b: &[u8]| (b.as_ptr() as usize, b.as_ptr() as usize + b.len());
        let refs = mem.buffers(count, bytes);
        let mut release = Release {
            dev: &self.dev,
            spans: refs.iter().map(|b| span(b)).collect(),
        };
        let locks = AtomicUsize::new(0);
        let lock = |b: &mut [u8]| -> std::result::Result<(), String> {
            let n = locks.fetch_add(1, Ordering::Relaxed) + 1;
            if n > 1 {
                let ms = self.staging_delay_ms.load(Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            if n == self.refuse_staging_at.load(Ordering::Relaxed) {
                return Err(format!(
                    "page-locking staging buffer {n} refused (emulated)"
                ));
            }
            crate::base::mmap::fault_in(b);
            self.dev.staging_locked.lock().unwrap().push(span(b));
            Ok(())
        };
        let mut f = Some(f);
        let used = &self.staging_used;
        let mut ring = |staged: &mut Staged<'_>| {
            let r = (f.take().expect("run once"))(staged);
            used.fetch_max(staged.poll(), Ordering::Relaxed);
            r
        };
        let r = match super::exec::staggered(refs, &lock, &mut ring) {
            Ok((r, _locked)) => r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => {
                // As the driver's pinned allocations: all usable at once.
                crate::base::mmap::fault_in(mem.as_mut_slice());
                let refs = mem.buffers(count, bytes);
                let spans = refs.iter().map(|b| span(b));
                self.dev.staging_locked.lock().unwrap().extend(spans);
                ring(&mut Staged::new(refs))
            }
        };
        // The buffers are freed here: a copy still queued from one would read freed memory.
        let pending = release.release();
        if pending > 0 {
            return Err(bad(format!(
                "staging buffers given back with {pending} copies from them still queued"
            )));
        }
        Ok(r)
    }

    fn fill(&self, dst: u64, len: usize, fill: Fill) -> Result<()> {
        let pattern = fill.bytes();
        if !len.is_multiple_of(pattern.len()) {
            return Err(bad(format!("{len} bytes is no whole number of {fill:?}")));
        }
        self.find(dst, len)?;
        self.dev.push(0, Op::Fill { dst, len, fill });
        Ok(())
    }

    fn prepare_kernels(&self, names: &[&'static str]) -> Result<()> {
        if self.refuse_kernels.load(Ordering::Relaxed) {
            return Err(bad(format!(
                "kernels {names:?} could not be made ready (emulated)"
            )));
        }
        match names
            .iter()
            .find(|n| super::plan::kernel_types(n).is_none())
        {
            Some(n) => Err(bad(format!("no kernel {n}"))),
            None => Ok(()),
        }
    }

    fn kernel(&self, k: &Kernel) -> Result<()> {
        if super::plan::kernel_types(k.name).is_none() {
            return Err(bad(format!("no kernel {}", k.name)));
        }
        self.dev.push(0, Op::Kernel(k.clone()));
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.dev.run(None, u64::MAX)
    }
}
