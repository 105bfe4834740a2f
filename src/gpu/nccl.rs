//! Replicas over NCCL (the `nccl` feature): the all-gather that completes a variable replicated
//! on several local GPUs, each of which uploaded a 1/N share over its own PCIe link. One
//! communicator per set of GPUs (`ncclCommInitAll`, slow to make: kept for the process), on each
//! GPU's kernel lane, so the gather is ordered after that GPU's kernels; the shares move over
//! NVLink where the GPUs have it.
//!
//! Across hosts: [`VariableStore::initialize_broadcast`] over the trainer's own communicator
//! (`gpu::broadcast` has the steps).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    result as driver, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop,
};
use cudarc::nccl::result::NcclError;
use cudarc::nccl::{group_end, group_start, Comm, ReduceOp};

use super::broadcast::Collective;
use super::cuda::CudaLink;
use super::destination::Gather;
use super::exec::Link;
use crate::base::device::Device;
use crate::base::error::{ErrorKind, Result};
use crate::init::store::VariableStore;
use crate::load::{LoadOptions, LoadReport};

/// The communicators of one set of GPUs, rank i on the i-th.
struct Comms(Vec<Comm>);

/// The communicators made so far, by the ordinals of their GPUs (rank order).
type CommsBySet = HashMap<Vec<u32>, Arc<Mutex<Comms>>>;

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; every use goes
// through the mutex that holds it.
unsafe impl Send for Comms {}

/// The gather of one load: the load's links, by device.
pub(crate) struct NcclGather<'a> {
    pub links: &'a [(Device, &'a CudaLink)],
}

fn nccl_err(devices: &[u32], op: &str, reason: impl std::fmt::Display) -> crate::Error {
    ErrorKind::Device {
        device: devices
            .iter()
            .map(|d| format!("cuda:{d}"))
            .collect::<Vec<_>>()
            .join(", "),
        op: op.into(),
        reason: reason.to_string(),
    }
    .into()
}

/// NCCL's error code and its own words for it (cudarc's `Debug` of an error says only
/// "NcclError").
fn nccl_text(e: &NcclError) -> String {
    // SAFETY: NCCL returns a static C string for any result code.
    let words = super::cuda::guarded(|| unsafe {
        let p = cudarc::nccl::sys::ncclGetErrorString(e.0);
        (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
    });
    match words {
        Ok(Some(w)) => format!("{:?} ({w})", e.0),
        _ => format!("{:?}", e.0),
    }
}

/// Device memory something else owns (a value of the load, the trainer's buffer), as cudarc's
/// NCCL calls take it: `len` elements at `ptr`, on `stream`'s GPU. Never frees anything and
/// orders nothing (cudarc's own slices record events; the callers synchronise instead), so
/// making one cannot fail.
struct Span<T> {
    stream: Arc<CudaStream>,
    ptr: u64,
    len: usize,
    elem: std::marker::PhantomData<T>,
}

impl<T> Span<T> {
    /// # Safety
    /// `len` elements at `ptr` are live device memory of `stream`'s GPU while the span is used.
    unsafe fn new(stream: &Arc<CudaStream>, ptr: u64, len: usize) -> Span<T> {
        Span {
            stream: stream.clone(),
            ptr,
            len,
            elem: std::marker::PhantomData,
        }
    }
}

impl<T> DeviceSlice<T> for Span<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl<T> DevicePtr<T> for Span<T> {
    fn device_ptr<'a>(&'a self, _: &'a CudaStream) -> (u64, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Record(None))
    }
}

impl<T> DevicePtrMut<T> for Span<T> {
    fn device_ptr_mut<'a>(&'a mut self, _: &'a CudaStream) -> (u64, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Record(None))
    }
}

impl NcclGather<'_> {
    fn link(&self, d: Device) -> Result<&CudaLink> {
        self.links
            .iter()
            .find(|(x, _)| *x == d)
            .map(|(_, l)| *l)
            .ok_or_else(|| {
                ErrorKind::DeviceUnavailable {
                    device: d.to_string(),
                    reason: "not a device of this load".into(),
                }
                .into()
            })
    }
}

/// The communicators made so far, kept for the process.
fn comms_by_set() -> &'static Mutex<CommsBySet> {
    static COMMS: OnceLock<Mutex<CommsBySet>> = OnceLock::new();
    COMMS.get_or_init(Default::default)
}

impl NcclGather<'_> {
    /// The communicator of `devices` (in rank order), made on first use.
    fn comms(&self, devices: &[Device]) -> Result<(Vec<u32>, Arc<Mutex<Comms>>)> {
        let ordinals: Vec<u32> = devices
            .iter()
            .map(|d| match d {
                Device::Cuda(n) => *n,
                Device::Cpu => u32::MAX,
            })
            .collect();
        let mut all = comms_by_set().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = all.get(&ordinals) {
            return Ok((ordinals, c.clone()));
        }
        let links = devices
            .iter()
            .map(|&d| self.link(d))
            .collect::<Result<Vec<_>>>()?;
        // Once per set, before its communicator exists (and so before any gather): each GPU's
        // pool memory open to the others, which NCCL's direct copies need.
        for l in &links {
            l.share_pool_with(&links)?;
        }
        let streams = links.iter().map(|l| l.kernel_stream()).collect();
        // Guarded: cudarc's loader panics where it cannot find NCCL (checked before the load,
        // so only a library that vanished since gets here).
        let c = super::cuda::guarded(|| Comm::from_devices(streams))
            .map_err(|e| nccl_err(&ordinals, "ncclCommInitAll", e))?
            .map_err(|e| nccl_err(&ordinals, "ncclCommInitAll", nccl_text(&e)))?;
        let c = Arc::new(Mutex::new(Comms(c)));
        all.insert(ordinals.clone(), c.clone());
        Ok((ordinals, c))
    }

    /// Forgets a communicator that failed (NCCL says it must not be used again). Its resources
    /// are leaked, not aborted: cudarc's abort panics when NCCL's abort fails, and this is an
    /// error path.
    fn discard(ordinals: &[u32]) {
        let mut all = comms_by_set().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = all.remove(ordinals) {
            std::mem::forget(c);
        }
    }
}

impl Gather for NcclGather<'_> {
    fn prepare(&self, devices: &[Device]) -> Result<()> {
        self.comms(devices).map(drop)
    }

    fn all_gather(&self, members: &[(Device, u64)], share: usize) -> Result<()> {
        // One gather at a time in the process: every communicator of a GPU runs on its kernel
        // lane, and two loads gathering over overlapping sets of GPUs from two threads could
        // queue their collectives in opposite orders on two GPUs, each then waiting for the other.
        static GATHERING: Mutex<()> = Mutex::new(());
        let _one = GATHERING.lock().unwrap_or_else(|e| e.into_inner());
        let devices: Vec<Device> = members.iter().map(|&(d, _)| d).collect();
        let links = devices
            .iter()
            .map(|&d| self.link(d))
            .collect::<Result<Vec<_>>>()?;
        let (ordinals, comms) = self.comms(&devices)?;
        let comms = comms.lock().unwrap_or_else(|e| e.into_inner());
        let n = members.len();
        let run = || -> Result<()> {
            group_start().map_err(|e| nccl_err(&ordinals, "ncclGroupStart", nccl_text(&e)))?;
            let mut issued = Ok(());
            for (rank, (comm, &(_, ptr))) in comms.0.iter().zip(members).enumerate() {
                // In place: each rank's send buffer is its own share of the receive buffer (the
                // replica's allocation on this GPU, alive until the load ends).
                let stream = comm.stream();
                // SAFETY: the replica's allocation holds `n * share` bytes.
                let send = unsafe { Span::<u8>::new(&stream, ptr + (rank * share) as u64, share) };
                // SAFETY: as above.
                let mut recv = unsafe { Span::<u8>::new(&stream, ptr, n * share) };
                if let Err(e) = comm.all_gather(&send, &mut recv) {
                    issued = Err(nccl_err(&ordinals, "ncclAllGather", nccl_text(&e)));
                    break;
                }
            }
            let ended = group_end().map_err(|e| nccl_err(&ordinals, "ncclGroupEnd", nccl_text(&e)));
            // Every GPU's gather is waited for, whatever the others answer: the replicas are
            // released next if one failed.
            let mut waited = Ok(());
            for l in &links {
                if let Err(e) = l.synchronize_kernel_lane() {
                    waited = waited.and(Err(e));
                }
            }
            issued.and(ended).and(waited)
        };
        let r = run();
        if r.is_err() {
            drop(comms);
            Self::discard(&ordinals);
        }
        r
    }
}

/// The trainer's communicator, on this rank's GPU (`link`: `None` when that GPU cannot be used,
/// so this rank only takes part in the agreement that refuses the load).
///
/// Every rank must issue the same collectives in the same order, or the others wait forever: so
/// once the agreements start, an error on this rank is reported after its collectives are issued,
/// never instead of them, and the calls are made with the driver's own functions, bound without
/// cudarc's check that first returns (and clears) an error the trainer's context stored. What
/// still stops a rank short is its GPU failing (the agreement's word cannot be allocated or
/// copied), a fault of the kind no agreement covers (`gpu::broadcast`).
struct TrainerComm<'a> {
    comm: &'a Comm,
    link: Option<&'a CudaLink>,
    /// One u64 on the communicator's GPU that the agreements reduce, allocated once.
    word: std::result::Result<u64, String>,
}

impl<'a> TrainerComm<'a> {
    fn new(comm: &'a Comm, link: Option<&'a CudaLink>) -> TrainerComm<'a> {
        let (_current, bound) = super::cuda::bind_anyway(comm.context());
        // Zeroed on the communicator's stream (a non-blocking stream: a plain memset, on the
        // legacy stream, could land after the first agreement's upload), so that no agreement
        // reads what the allocation held before.
        let stream = comm.stream().cu_stream();
        // SAFETY: the communicator's live stream; 8 bytes freed once, in `drop`.
        let word = unsafe {
            bound.and_then(|()| driver::malloc_sync(8)).and_then(|w| {
                let zeroed = driver::memset_d8_async(w, 0, 8, stream)
                    .and_then(|()| driver::stream::synchronize(stream));
                match zeroed {
                    Ok(()) => Ok(w),
                    Err(e) => {
                        let _ = driver::free_sync(w);
                        Err(e)
                    }
                }
            })
        };
        TrainerComm {
            comm,
            link,
            word: word.map_err(|e| format!("allocating 8 bytes for the agreements: {e:?}")),
        }
    }

    fn err(&self, op: &str, e: impl std::fmt::Display) -> crate::Error {
        nccl_err(&[self.comm.ordinal() as u32], op, e)
    }

    /// Binds the communicator's context (the caller's is current again when the guard drops).
    fn bind(&self) -> (super::cuda::KeepCurrent, Option<crate::Error>) {
        let (current, bound) = super::cuda::bind_anyway(self.comm.context());
        (
            current,
            bound
                .err()
                .map(|e| self.err("binding the context", format!("{e:?}"))),
        )
    }

    /// Waits for the communicator's stream.
    fn synchronize(&self, stream: &CudaStream) -> std::result::Result<(), crate::Error> {
        // SAFETY: the communicator's live stream.
        unsafe { driver::stream::synchronize(stream.cu_stream()) }
            .map_err(|e| self.err("synchronising", format!("{e:?}")))
    }
}

impl Drop for TrainerComm<'_> {
    fn drop(&mut self) {
        if let Ok(word) = self.word {
            let (_current, _) = self.bind();
            // SAFETY: allocated in `new`; the stream was waited for after its last use.
            let _ = unsafe { driver::free_sync(word) };
        }
    }
}

impl Collective for TrainerComm<'_> {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world(&self) -> usize {
        self.comm.world_size()
    }

    fn max(&self, value: u64) -> Result<u64> {
        let word = *self
            .word
            .as_ref()
            .map_err(|e| self.err("taking part in an agreement", e))?;
        let stream = self.comm.stream();
        let (_current, mut first) = self.bind();
        let src = [value];
        // SAFETY: `word` is 8 bytes of this GPU, alive while `self` is; a copy from pageable
        // memory returns once `src` is staged, and `src` outlives the stream's wait anyway.
        let upload = unsafe { driver::memcpy_htod_async(word, &src, stream.cu_stream()) };
        if let Err(e) = upload {
            first.get_or_insert(self.err("copying to the device", format!("{e:?}")));
            // What the word holds (an earlier agreement's result) must not pass for this rank's
            // answer: the largest value instead, which no agreement takes for success.
            // SAFETY: as above.
            let _ = unsafe { driver::memset_d8_async(word, 0xff, 8, stream.cu_stream()) };
        }
        // SAFETY: as above.
        let mut buf = unsafe { Span::<u64>::new(&stream, word, 1) };
        if let Err(e) = self.comm.all_reduce_in_place(&mut buf, &ReduceOp::Max) {
            first.get_or_insert(self.err("ncclAllReduce", nccl_text(&e)));
        }
        let mut out = [value];
        // SAFETY: as above.
        let download = unsafe { driver::memcpy_dtoh_async(&mut out, word, stream.cu_stream()) };
        if let Err(e) = download {
            first.get_or_insert(self.err("copying from the device", format!("{e:?}")));
        }
        if let Err(e) = self.synchronize(&stream) {
            first.get_or_insert(e);
        }
        match first {
            Some(e) => Err(e),
            None => Ok(out[0]),
        }
    }

    fn broadcast(&self, bufs: &[(u64, usize)], root: usize) -> Result<()> {
        let stream = self.comm.stream();
        let (_current, mut first) = self.bind();
        // NCCL's stream must see the load's copies and kernels finished.
        match self.link {
            Some(link) => {
                if let Err(e) = link.synchronize() {
                    first.get_or_insert(e);
                }
            }
            None => {
                first.get_or_insert(self.err("broadcasting", "the GPU is not usable"));
            }
        }
        // Every broadcast is issued whatever failed before it (see `TrainerComm`); the first
        // error is reported after the stream is waited for.
        for chunk in bufs.chunks(256) {
            if let Err(e) = group_start() {
                first.get_or_insert(self.err("ncclGroupStart", nccl_text(&e)));
            }
            for &(ptr, len) in chunk {
                // SAFETY: each buffer is a live device allocation of this GPU held by the store's
                // values for the whole call.
                let mut value = unsafe { Span::<u8>::new(&stream, ptr, len) };
                if let Err(e) = self.comm.broadcast_in_place(&mut value, root as i32) {
                    first.get_or_insert(self.err("ncclBroadcast", nccl_text(&e)));
                }
            }
            if let Err(e) = group_end() {
                first.get_or_insert(self.err("ncclGroupEnd", nccl_text(&e)));
            }
        }
        if let Err(e) = self.synchronize(&stream) {
            first.get_or_insert(e);
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl VariableStore {
    /// [`initialize`](Self::initialize) for data parallelism across hosts (feature `nccl`): one
    /// read per job, the values broadcast to the others over `comm`, the trainer's NCCL
    /// communicator (one rank per process, each on its own GPU; made with cudarc's
    /// `Comm::from_rank`). Every rank calls it with the same model and arguments. Rank `root`
    /// loads its GPU from the checkpoint (every byte verified); the others allocate the same
    /// memory on their GPU (`comm`'s), read only the variables kept in host memory (strings,
    /// CPU-placed ones), and receive every device value from the root. The ranks agree before
    /// anything is read (same model, arguments accepted everywhere) and after the load (it
    /// succeeded everywhere), so an error on one rank is an error on every rank, and no rank
    /// keeps a value (all or nothing). Variables may be placed on `comm`'s GPU or on the CPU;
    /// replicas and `LoadOptions::rank` are refused.
    ///
    /// NCCL makes a communicator on the GPU current on the calling thread, which cudarc's
    /// `Comm::from_rank` does not choose: bind that GPU's context first (`ctx.bind_to_thread()`
    /// of the `CudaContext` whose stream the communicator gets). What no agreement covers is a
    /// fault of a GPU or of the communicator inside the steps (NCCL then reports it or hangs, as
    /// it does for the trainer's own collectives). The first load on a GPU in a process waits
    /// for the work already queued on that GPU (cudarc synchronises a context when the first
    /// stream of its own is made).
    pub fn initialize_broadcast(
        &mut self,
        comm: &Comm,
        root: usize,
        options: &LoadOptions,
    ) -> Result<LoadReport> {
        let ordinal = comm.ordinal() as u32;
        match super::cuda::link(ordinal) {
            Ok(link) => {
                let c = TrainerComm::new(comm, Some(&*link));
                self.initialize_broadcast_on(
                    Device::Cuda(ordinal),
                    &*link,
                    &c,
                    root,
                    options,
                    Default::default(),
                )
            }
            Err(e) => {
                let c = TrainerComm::new(comm, None);
                Err(self.refuse_broadcast(&c, Device::Cuda(ordinal), root, options, e))
            }
        }
    }
}
