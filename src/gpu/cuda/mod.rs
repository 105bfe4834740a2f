//! The executor's [`Link`] on a real GPU, with cudarc: the driver API and NVRTC, both loaded at
//! run time, so the crate builds and runs without CUDA installed. Every first touch of the driver
//! is guarded by `is_culib_present()` (cudarc panics when the library is missing); every driver
//! failure becomes [`ErrorKind::Device`] naming the operation.
//!
//! One link per GPU is kept for the life of the process: the context, three streams (the DMA lane
//! and two ring lanes), the pinned staging buffers (fresh memory page-locked in place: 12–19 ms
//! for 256 MiB on the H200, where the driver's own pinned allocation took 78–111 ms; paid once,
//! and all but the first buffer's share while the ring already runs)
//! and the kernels. Each kernel is compiled by NVRTC alone, when a load first
//! needs it, and its PTX is kept on disk ([`kernel_cache_dir`]) for the next process: a fresh
//! process that loads a BERT transposes with one kernel, read from the cache, instead of compiling
//! every kernel source (~0.4 s of NVRTC on the development VM).
//!
//! Here: the link (context, lanes, copies, fences, kernel launches). Beside it: `staging` (the
//! ring's pinned buffers), `memory` (device memory the loads write into), `kernels` (sources,
//! NVRTC and the PTX cache) and `libs` (which CUDA libraries the machine has).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    result, sys, CudaContext, CudaFunction, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::exec::{Kernel, Link, Staged, LANES};
use crate::base::device::DeviceMemory;
use crate::base::error::{Error, ErrorKind, Result};

mod kernels;
mod libs;
mod memory;
mod staging;

use kernels::{kernel_cache_dir, kernel_ptx_or_default, ptx_hint};
#[cfg(feature = "nccl")]
pub(crate) use libs::nccl_usable;
pub(crate) use libs::{device_count, driver_present, guarded};
pub(crate) use memory::{Owned, Raw};
use staging::Staging;

fn device_err(device: u32, op: impl Into<String>, e: impl std::fmt::Debug) -> Error {
    ErrorKind::Device {
        device: format!("cuda:{device}"),
        op: op.into(),
        reason: format!("{e:?}"),
    }
    .into()
}

fn unavailable(device: u32, reason: impl Into<String>) -> Error {
    ErrorKind::DeviceUnavailable {
        device: format!("cuda:{device}"),
        reason: reason.into(),
    }
    .into()
}

/// The CUDA context current on the calling thread when made, current again when dropped. A load
/// binds its GPUs' contexts to the threads working for it, the caller's among them, and with
/// several GPUs the last one bound stays current; the trainer's next CUDA call on that thread
/// expects the one it had (cudarc frees a buffer on the per-thread default stream candle uses
/// without binding, and that stream is the current context's).
pub(crate) struct KeepCurrent(Option<sys::CUcontext>);

impl KeepCurrent {
    pub(crate) fn new() -> KeepCurrent {
        if !driver_present() {
            return KeepCurrent(None);
        }
        // None current, or the driver not yet initialised (nothing of CUDA used yet): none
        // current again afterwards. Guarded: cudarc's loader panics where it cannot load.
        let current = guarded(result::ctx::get_current)
            .ok()
            .and_then(|r| r.ok())
            .flatten()
            .unwrap_or(std::ptr::null_mut());
        KeepCurrent(Some(current))
    }

    /// The same where the driver is known to be loaded (a link exists): no checks first. The
    /// link's methods bind their GPU's context with one of these around them, so that the threads
    /// of the pool a load runs on, which also run the trainer's jobs, keep their own context.
    pub(crate) fn loaded() -> KeepCurrent {
        match result::ctx::get_current() {
            Ok(current) => KeepCurrent(Some(current.unwrap_or(std::ptr::null_mut()))),
            Err(_) => KeepCurrent(None),
        }
    }
}

/// Binds `ctx` to the calling thread until the guard drops (then the thread's own context is
/// current again), without cudarc's check, which first returns (and clears) an error a `Drop`
/// stored in the context, without binding: for the waits and releases that must happen after an
/// error too (a stored error stays for the next call that starts work to report).
pub(crate) fn bind_anyway(
    ctx: &CudaContext,
) -> (KeepCurrent, std::result::Result<(), DriverError>) {
    let keep = KeepCurrent::loaded();
    (keep, set_current_anyway(ctx))
}

/// Makes `ctx` current on the calling thread without cudarc's check (see [`bind_anyway`]); it
/// stays current.
pub(crate) fn set_current_anyway(ctx: &CudaContext) -> std::result::Result<(), DriverError> {
    // SAFETY: a live context (the caller holds it).
    unsafe { result::ctx::set_current(ctx.cu_ctx()) }
}

impl Drop for KeepCurrent {
    fn drop(&mut self) {
        if let Some(ctx) = self.0 {
            // SAFETY: the context that was current (or none); an error (a context the trainer
            // destroyed meanwhile) leaves the thread as the load left it.
            let _ = unsafe { result::ctx::set_current(ctx) };
        }
    }
}

/// A GPU, ready for loads.
pub(crate) struct CudaLink {
    ordinal: u32,
    ctx: Arc<CudaContext>,
    lanes: Vec<Arc<CudaStream>>,
    /// NVRTC's target for this GPU (`None`: NVRTC's default, JIT-compiled by the driver).
    arch: OnceLock<std::result::Result<Option<&'static str>, String>>,
    /// The kernels loaded so far, by name.
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// The staging ring's buffers, kept for the next load (`None` until a load needs them).
    staging: Mutex<Option<Staging>>,
    /// The host NUMA node this GPU's PCIe root is on, where the machine has several.
    numa_node: Option<u32>,
}

/// The link of GPU `ordinal`, made on first use and kept for the process.
pub(crate) fn link(ordinal: u32) -> Result<Arc<CudaLink>> {
    static LINKS: OnceLock<Mutex<HashMap<u32, Arc<CudaLink>>>> = OnceLock::new();
    let mut links = LINKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(l) = links.get(&ordinal) {
        return Ok(l.clone());
    }
    if !driver_present() {
        return Err(unavailable(
            ordinal,
            "the CUDA driver library (libcuda.so) cannot be loaded: no NVIDIA driver on this machine, or it is not on the loader path",
        ));
    }
    let count = device_count().map_err(|e| unavailable(ordinal, e))?;
    if ordinal as i64 >= count as i64 {
        return Err(unavailable(
            ordinal,
            format!("this machine has {count} GPU(s)"),
        ));
    }
    // Event tracking stays on: the slices handed out (`DeviceTensor::cuda_slice`) then order
    // their use and their free against the trainer's streams as any cudarc slice does. Making the
    // context and its streams binds it; the thread's own is current again after.
    let _current = KeepCurrent::loaded();
    let ctx = CudaContext::new(ordinal as usize)
        .map_err(|e| device_err(ordinal, "creating a context", e))?;
    let lanes = (0..LANES)
        .map(|_| ctx.new_stream())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| device_err(ordinal, "creating streams", e))?;
    let pci = |a| ctx.attribute(a).ok().and_then(|v| u32::try_from(v).ok());
    use sys::CUdevice_attribute::*;
    let numa_node = match (
        pci(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID),
        pci(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID),
        pci(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID),
    ) {
        (Some(domain), Some(bus), Some(device)) => {
            crate::base::mmap::pci_numa_node(Path::new("/sys"), domain, bus, device)
        }
        _ => None,
    };
    let l = Arc::new(CudaLink {
        ordinal,
        ctx,
        lanes,
        arch: OnceLock::new(),
        functions: Mutex::new(HashMap::new()),
        staging: Mutex::new(None),
        numa_node,
    });
    links.insert(ordinal, l.clone());
    Ok(l)
}

impl CudaLink {
    /// The stream kernels (and the replicas' all-gathers) run on.
    #[cfg(feature = "nccl")]
    pub(crate) fn kernel_stream(&self) -> Arc<CudaStream> {
        self.lanes[0].clone()
    }

    /// Waits for the kernel lane.
    #[cfg(feature = "nccl")]
    pub(crate) fn synchronize_kernel_lane(&self) -> Result<()> {
        let (_bound, bound) = bind_anyway(&self.ctx);
        // SAFETY: a stream of this link's context.
        bound
            .and_then(|()| unsafe { result::stream::synchronize(self.lanes[0].cu_stream()) })
            .map_err(|e| self.err("synchronising", e))
    }

    fn err(&self, op: impl Into<String>, e: impl std::fmt::Debug) -> Error {
        device_err(self.ordinal, op, e)
    }

    /// Lets each GPU of `peers` that can reach this one read and write what this GPU's memory
    /// pool hands out. cudarc allocates from the pool (`cuMemAllocAsync`) where the GPU has one,
    /// and NCCL's all-gather between GPUs of one process reads and writes the neighbours' buffers
    /// directly: the peer access NCCL enables covers `cuMemAlloc` memory, never pool memory,
    /// which only `cuMemPoolSetAccess` opens (without it, the gather faults with an illegal
    /// address, an error that ends every later CUDA call of the process). It applies to the
    /// pool's earlier allocations too, the trainer's buffers from the same pool included.
    #[cfg(feature = "nccl")]
    pub(crate) fn share_pool_with(&self, peers: &[&CudaLink]) -> Result<()> {
        use sys::CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED;
        let _bound = self.bind()?;
        let dev = self.ctx.cu_device();
        // SAFETY: a device handle of a live context.
        let pools = unsafe {
            result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)
        }
        .map_err(|e| self.err("asking whether it has memory pools", e))?;
        if pools == 0 {
            // cudarc allocates with `cuMemAlloc` here: NCCL's peer access covers it.
            return Ok(());
        }
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: writes the device's current pool handle into `pool`.
        unsafe { sys::cuDeviceGetMemPool(&mut pool, dev) }
            .result()
            .map_err(|e| self.err("cuDeviceGetMemPool", e))?;
        for peer in peers.iter().filter(|p| p.ordinal != self.ordinal) {
            let mut reach = 0;
            // SAFETY: two device handles of live contexts; writes an int.
            unsafe { sys::cuDeviceCanAccessPeer(&mut reach, peer.ctx.cu_device(), dev) }
                .result()
                .map_err(|e| self.err("cuDeviceCanAccessPeer", e))?;
            if reach == 0 {
                // No direct path: NCCL moves the shares through host memory.
                continue;
            }
            // SAFETY: all-zero bytes are a valid `CUmemAccessDesc` (plain integers).
            let mut desc: sys::CUmemAccessDesc = unsafe { std::mem::zeroed() };
            desc.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
            // The location's `id` is a plain field in CUDA 13.0's headers and a union's from
            // 13.2 on (the version is the build's): in both, the 4 bytes after the type.
            const _: () = assert!(std::mem::size_of::<sys::CUmemLocation>() == 8);
            // SAFETY: writes the `int` at offset 4 of the 8-byte location, its `id` in every
            // layout above.
            unsafe {
                std::ptr::addr_of_mut!(desc.location)
                    .cast::<i32>()
                    .add(1)
                    .write(peer.ordinal as i32)
            };
            desc.flags = sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
            // SAFETY: one descriptor, read during the call.
            unsafe { sys::cuMemPoolSetAccess(pool, &desc, 1) }
                .result()
                .map_err(|e| {
                    self.err(
                        format!("opening its memory pool to cuda:{}", peer.ordinal),
                        e,
                    )
                })?;
        }
        Ok(())
    }

    /// Binds this GPU's context to the calling thread until the guard drops; then the thread's
    /// own is current again. cudarc's binding first returns (and clears) an error a `Drop` of the
    /// context stored earlier, if any, without binding: for calls that start work.
    fn bind(&self) -> Result<KeepCurrent> {
        let keep = KeepCurrent::loaded();
        self.ctx
            .bind_to_thread()
            .map_err(|e| self.err("binding the context", e))?;
        Ok(keep)
    }

    /// NVRTC's target for this GPU: the architectures this crate targets by name, else NVRTC's
    /// default (PTX the driver JIT-compiles on load).
    fn arch(&self) -> Result<Option<&'static str>> {
        self.arch
            .get_or_init(|| {
                let cc = self
                    .ctx
                    .compute_capability()
                    .map_err(|e| format!("{e:?}"))?;
                Ok(match cc {
                    (9, 0) => Some("sm_90"),
                    (8, 0) => Some("sm_80"),
                    (8, 9) => Some("sm_89"),
                    (10, 0) => Some("sm_100"),
                    _ => None,
                })
            })
            .clone()
            .map_err(|e| unavailable(self.ordinal, format!("the kernels cannot be prepared: {e}")))
    }

    /// Loads the kernels in `names` not loaded yet: each compiled alone (in parallel) or read
    /// from the kernel cache, then loaded into this GPU's context.
    fn prepare(&self, names: &[&'static str]) -> Result<()> {
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<&'static str> = names
            .iter()
            .copied()
            .filter(|n| !functions.contains_key(n))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let arch = self.arch()?;
        // Bound first: cudarc's `load_module` binds too, and an error the context stored earlier
        // is this call's, not a sign of a bad cached PTX.
        let _bound = self.bind()?;
        let cache = kernel_cache_dir();
        let compiled: Vec<std::result::Result<(String, bool), String>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = missing
                    .iter()
                    .map(|&n| {
                        let cache = cache.as_deref();
                        scope.spawn(move || kernel_ptx_or_default(n, arch, cache, true))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("NVRTC panicked".into())))
                    .collect()
            });
        let fail =
            |e: String| unavailable(self.ordinal, format!("the kernels cannot be prepared: {e}"));
        for (name, ptx) in missing.into_iter().zip(compiled) {
            let (ptx, cached) = ptx.map_err(fail)?;
            let load = |ptx: String| self.ctx.load_module(Ptx::from_src(ptx));
            let loading = |e: DriverError| format!("loading kernel {name}: {e:?}{}", ptx_hint(&e));
            let module = match load(ptx) {
                // A cached PTX the driver refuses as PTX (a driver downgraded since, say):
                // compiled again, and the cache's file replaced.
                Err(e) if cached && refused_ptx(&e) => {
                    let (fresh, _) = kernel_ptx_or_default(name, arch, cache.as_deref(), false)
                        .map_err(|f| fail(format!("{}; compiling it again: {f}", loading(e))))?;
                    load(fresh).map_err(|f| {
                        fail(format!("{}; compiled again: {}", loading(e), loading(f)))
                    })?
                }
                loaded => loaded.map_err(|e| fail(loading(e)))?,
            };
            let function = module
                .load_function(name)
                .map_err(|e| fail(format!("kernel {name}: {e:?}")))?;
            functions.insert(name, function);
        }
        Ok(())
    }
}

/// Whether the driver refused a module's PTX itself (not the context's state).
fn refused_ptx(e: &DriverError) -> bool {
    use sys::cudaError_enum::*;
    matches!(
        e.0,
        CUDA_ERROR_INVALID_PTX
            | CUDA_ERROR_UNSUPPORTED_PTX_VERSION
            | CUDA_ERROR_INVALID_IMAGE
            | CUDA_ERROR_NO_BINARY_FOR_GPU
    )
}

/// A fence: an event that blocks the waiting thread instead of spinning (the CPU cores are
/// needed for checksums and staging) and records no timing.
pub(crate) struct Fence {
    ev: sys::CUevent,
    ctx: Arc<CudaContext>,
}

// SAFETY: a CUevent handle may be used from any thread (the context is bound before each use).
unsafe impl Send for Fence {}

impl Drop for Fence {
    fn drop(&mut self) {
        // Bound without cudarc's check, which would clear an error the context stored and leak
        // the event.
        let (_current, bound) = bind_anyway(&self.ctx);
        if bound.is_ok() {
            // SAFETY: created by cuEventCreate below and destroyed once, here.
            let _ = unsafe { sys::cuEventDestroy_v2(self.ev) };
        }
    }
}

impl Link for CudaLink {
    type Fence = Fence;

    fn device(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }

    fn alloc(&self, bytes: usize, what: &str) -> Result<Arc<dyn DeviceMemory>> {
        let stream = &self.lanes[0];
        // `alloc` binds the context.
        let _current = KeepCurrent::loaded();
        // SAFETY: uninitialised device memory; the load writes every byte before it is read.
        let slice = unsafe { stream.alloc::<u8>(bytes.max(1)) }
            .map_err(|e| self.err(format!("allocating {bytes} bytes for {what:?}"), e))?;
        Ok(Arc::new(Owned::with_len(slice, bytes)))
    }

    unsafe fn register(&self, ptr: *const u8, len: usize) -> std::result::Result<(), String> {
        let (_bound, bound) = bind_anyway(&self.ctx);
        bound.map_err(|e| format!("binding the context: {e:?}"))?;
        // SAFETY: the caller guarantees the range is mapped until `unregister`.
        unsafe {
            sys::cuMemHostRegister_v2(
                ptr as *mut std::ffi::c_void,
                len,
                sys::CU_MEMHOSTREGISTER_READ_ONLY,
            )
        }
        .result()
        .map_err(|e| format!("cuMemHostRegister of {len} bytes: {e:?}"))
    }

    unsafe fn unregister(&self, ptr: *const u8) -> Result<()> {
        let (_bound, bound) = bind_anyway(&self.ctx);
        bound.map_err(|e| self.err("binding the context", e))?;
        // SAFETY: registered by `register`; the caller waited for every copy from it.
        unsafe { sys::cuMemHostUnregister(ptr as *mut std::ffi::c_void) }
            .result()
            .map_err(|e| self.err("cuMemHostUnregister", e))
    }

    unsafe fn copy(&self, lane: usize, src: &[u8], dst: u64) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the caller guarantees `src` stays valid until the lane's next fence and that
        // `dst` lies in a live allocation.
        unsafe { result::memcpy_htod_async(dst, src, self.lanes[lane].cu_stream()) }
            .map_err(|e| self.err(format!("copying {} bytes to {dst:#x}", src.len()), e))
    }

    fn fence(&self, lane: usize) -> Result<Fence> {
        let _bound = self.bind()?;
        let mut ev = std::mem::MaybeUninit::uninit();
        const FLAGS: u32 = sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC as u32
            | sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        // SAFETY: `ev` is written by the driver on success, and only read then.
        unsafe { sys::cuEventCreate(ev.as_mut_ptr(), FLAGS) }
            .result()
            .map_err(|e| self.err("creating an event", e))?;
        let fence = Fence {
            // SAFETY: initialised by the successful call above.
            ev: unsafe { ev.assume_init() },
            ctx: self.ctx.clone(),
        };
        // SAFETY: a live event and a live stream of this context.
        unsafe { sys::cuEventRecord(fence.ev, self.lanes[lane].cu_stream()) }
            .result()
            .map_err(|e| self.err("recording an event", e))?;
        Ok(fence)
    }

    fn wait(&self, fence: Fence) -> Result<()> {
        // The copies before the fence are waited for even after an error: their buffers are
        // reused or released next.
        let (_bound, bound) = bind_anyway(&self.ctx);
        // SAFETY: a live event (destroyed when `fence` drops, after this call).
        bound
            .and_then(|()| unsafe { sys::cuEventSynchronize(fence.ev) }.result())
            .map_err(|e| self.err("waiting for copies", e))
    }

    fn with_staging<R>(
        &self,
        count: usize,
        bytes: usize,
        f: impl FnOnce(&mut Staged<'_>) -> R,
    ) -> Result<R> {
        // Pinning and `as_mut_slice` bind the context.
        let _current = KeepCurrent::loaded();
        // Taken out of the link while in use, so that a second load on this GPU (from another
        // thread) never waits on this one's lock; it pins buffers of its own instead. Kept
        // buffers are all usable at once; new ones join the ring as they are page-locked.
        let kept = self
            .staging
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|s| s.holds(count, bytes));
        // `f` returns only when nothing reads the buffers any more (the ring waits for its fences,
        // or synchronises the device on error). A panic inside it (a trainer's progress callback)
        // would free them under copies in flight: every lane is waited for first.
        let (r, staging) = match kept {
            Some(mut st) => {
                let full = st.buffers(self)?;
                let slices: Vec<&mut [u8]> = full
                    .into_iter()
                    .take(count)
                    .map(|b| &mut b[..bytes])
                    .collect();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    f(&mut Staged::new(slices))
                }));
                (r, st)
            }
            None => self.with_new_staging(count, bytes, f)?,
        };
        let staging = Some(staging);
        let r = r.unwrap_or_else(|panic| {
            // Every lane, whatever the others answer (`synchronize`).
            let _ = Link::synchronize(self);
            std::panic::resume_unwind(panic)
        });
        let mut slot = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = staging;
        }
        Ok(r)
    }

    fn fill(&self, dst: u64, len: usize, fill: super::exec::Fill) -> Result<()> {
        use super::exec::Fill;
        let _bound = self.bind()?;
        let stream = self.lanes[0].cu_stream();
        // SAFETY: `dst .. dst + len` is a live allocation of this context (the caller's), aligned
        // for the pattern (library memory is 256-byte aligned; trainer memory is checked for the
        // element's alignment), and `len` is a whole number of patterns.
        let r = unsafe {
            match fill {
                Fill::D8(b) => sys::cuMemsetD8Async(dst, b, len, stream),
                Fill::D16(h) => sys::cuMemsetD16Async(dst, h, len / 2, stream),
                Fill::D32(w) => sys::cuMemsetD32Async(dst, w, len / 4, stream),
            }
        };
        r.result()
            .map_err(|e| self.err(format!("filling {len} bytes at {dst:#x}"), e))
    }

    fn prepare_kernels(&self, names: &[&'static str]) -> Result<()> {
        self.prepare(names)
    }

    fn kernel(&self, k: &Kernel) -> Result<()> {
        let loaded = || {
            let functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
            functions.get(k.name).cloned()
        };
        // Prepared before the upload (`prepare_kernels`); loaded here only if it was not.
        let f = match loaded() {
            Some(f) => f,
            None => {
                self.prepare(&[k.name])?;
                loaded()
                    .ok_or_else(|| unavailable(self.ordinal, format!("no kernel {}", k.name)))?
            }
        };
        let ((gx, gy), (bx, by)) = k.launch_dims();
        let cfg = LaunchConfig {
            grid_dim: (gx, gy, 1),
            block_dim: (bx, by, 1),
            shared_mem_bytes: 0,
        };
        let stream = &self.lanes[0];
        // `launch` binds the context.
        let _current = KeepCurrent::loaded();
        let mut launch = stream.launch_builder(&f);
        launch
            .arg(&k.src)
            .arg(&k.dst)
            .arg(&k.rows)
            .arg(&k.row)
            .arg(&k.src_stride)
            .arg(&k.dst_stride);
        // A transpose takes the destination's column stride too.
        if k.transposes() {
            launch.arg(&k.dst_col);
        }
        // SAFETY: the kernel's parameters are (const T*, T*, u64 x4), plus a fifth u64 for a
        // transpose, as passed; the planner keeps every addressed element inside the scratch and
        // destination allocations.
        unsafe { launch.launch(cfg) }
            .map(drop)
            .map_err(|e| self.err(format!("launching {}", k.name), e))
    }

    fn synchronize(&self) -> Result<()> {
        // Every lane, whatever the others answer: after an error the load's buffers are released
        // next, and a copy still running on a lane not waited for would read or write them.
        let (_bound, bound) = bind_anyway(&self.ctx);
        let mut first = bound.err();
        for l in &self.lanes {
            // SAFETY: a stream of this link's context.
            if let Err(e) = unsafe { result::stream::synchronize(l.cu_stream()) } {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(self.err("synchronising", e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver, asking for a GPU is a typed error, never a panic.
    #[test]
    fn no_driver_is_an_error() {
        if driver_present() {
            return;
        }
        let e = link(0).err().unwrap();
        assert!(
            matches!(e.kind(), ErrorKind::DeviceUnavailable { .. }),
            "{e}"
        );
    }
}
