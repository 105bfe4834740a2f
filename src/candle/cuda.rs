//! candle `Var`s on CUDA devices (feature `candle-cuda`). Each mapped `Var` gets a fresh
//! `CudaStorage` of its dtype, allocated by candle on the `Var`'s own device (or, for a `Var`
//! still holding `DeferredInit`'s placeholder zeros, keeps its own); the GPU path loads straight
//! into it (pinned ring or registered mappings; transposes and conversions by
//! `kernels/transpose.cu` and `kernels/cast.cu`, on the device); only once every value on every
//! device and host has loaded does each storage become its `Var`'s. No host bounce, no second
//! device copy.

use candle_core::backend::BackendStorage;
use candle_core::cuda::CudaStorageSlice;
use candle_core::{CudaDevice, CudaStorage, DType as CDType, DeviceLocation, Storage, Var};
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, ValidAsZeroBits};

use super::CandleInit;
use crate::base::device::{DeviceBuffer, DeviceForm};
use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::init::store::VariableStore;
use crate::load::{LoadOptions, LoadReport};
use crate::Device;

/// One mapped GPU `Var`'s destination: a new storage, or the `Var`'s own.
pub(super) struct GpuJob {
    /// TensorFlow name.
    pub name: String,
    /// The new storage; `None`: the value loads into the `Var`'s own storage (a `DeferredInit`
    /// placeholder, zeros until the load), at `own`.
    pub storage: Option<CudaStorage>,
    own: u64,
    pub var: Var,
    dev: CudaDevice,
    ordinal: u32,
    held: crate::base::copy::Held,
    /// `(stored dtype, the Var's)` when they differ.
    convert: Option<(DType, DType)>,
    /// Bytes of the storage.
    bytes: usize,
}

impl Drop for GpuJob {
    /// A storage not handed to its `Var` (a failed load) is freed on its own GPU (see
    /// [`GpuJob::make_current`]).
    fn drop(&mut self) {
        if self.storage.is_some() {
            self.make_current();
        }
    }
}

/// Makes `dev`'s context current on the calling thread (see [`GpuJob::make_current`]).
pub(super) fn make_current(dev: &CudaDevice) {
    // Not cudarc's `bind_to_thread`, which binds nothing if the context holds an error a `Drop`
    // stored (that error stays for the trainer's next call). A failure (a context destroyed)
    // leaves the thread as it was.
    let _ = crate::gpu::cuda::set_current_anyway(dev.cuda_stream().context());
}

impl GpuJob {
    /// Makes this job's GPU current on the calling thread before a storage of it is freed:
    /// cudarc frees on the storage's stream, candle's per-thread default stream, which names the
    /// stream of whichever context is current, and a load over several GPUs leaves another one
    /// current. (Bound without cudarc's check: an error the context holds stays for its next
    /// call.)
    pub fn make_current(&self) {
        make_current(&self.dev);
    }

    /// The destination of `n` elements of `dtype` (the `Var`'s) on `var`'s device: a zeroed new
    /// storage, or the `Var`'s own, `own`, whose read guard the caller holds until the load (and
    /// any [`zero_again`](Self::zero_again)) is over.
    pub fn new(
        name: &str,
        var: &Var,
        dtype: DType,
        n: usize,
        held: crate::base::copy::Held,
        convert: Option<(DType, DType)>,
        own: Option<&Storage>,
    ) -> Result<GpuJob> {
        let (candle_core::Device::Cuda(dev), DeviceLocation::Cuda { gpu_id }) =
            (var.device(), var.device().location())
        else {
            return Err(ErrorKind::BadVariable {
                name: name.into(),
                reason: format!(
                    "it is on {:?}: tfckpt fills host and CUDA Vars",
                    var.device().location()
                ),
            }
            .into());
        };
        let (storage, own) = if let Some(storage) = own {
            let Storage::Cuda(s) = storage else {
                return Err(ErrorKind::BadVariable {
                    name: name.into(),
                    reason: "its storage is not on its CUDA device".into(),
                }
                .into());
            };
            (None, slice_ptr(s))
        } else {
            let fresh = zeroed(dev, dtype, n).map_err(|e| {
                device_error(
                    gpu_id,
                    format!("allocating {n} elements of {dtype} for {name}"),
                    &e,
                )
            })?;
            (Some(fresh), 0)
        };
        Ok(GpuJob {
            name: name.into(),
            storage,
            own,
            var: var.clone(),
            dev: dev.clone(),
            ordinal: gpu_id as u32,
            held,
            convert,
            bytes: n * dtype.size().unwrap_or(0),
        })
    }

    /// The candle dtype of the destination.
    pub fn dtype(&self) -> CDType {
        match &self.storage {
            Some(s) => s.dtype(),
            None => self.var.dtype(),
        }
    }

    /// The destination's device address (the `Var`s were checked contiguous from offset 0).
    fn device_ptr(&self) -> u64 {
        match &self.storage {
            Some(s) => slice_ptr(s),
            None => self.own,
        }
    }

    /// Whether the value loads into the `Var`'s own storage.
    pub fn in_place(&self) -> bool {
        self.storage.is_none()
    }

    /// A `Var` loaded in place holds zeros again (after a failed load), as `DeferredInit` made
    /// it; nothing for a new storage (dropped unused).
    pub fn zero_again(&self) -> Result<()> {
        if !self.in_place() {
            return Ok(());
        }
        let stream = self.dev.cuda_stream();
        let fail = |e| device_error(self.ordinal as usize, "zeroing a Var again", &e);
        // Bound and waited for without cudarc's checks, which would fail on an error a `Drop`
        // stored in the context (and clear it) before the zeroing: the `Var` must not keep part
        // of the checkpoint.
        crate::gpu::cuda::set_current_anyway(stream.context()).map_err(fail)?;
        // SAFETY: `own .. own + bytes` is the `Var`'s own device memory (contiguous from offset
        // 0; its storage is held by the caller's read guard), on the stream of the device that
        // owns it, whose context is current; the load that wrote it has ended. The stream is
        // live (the device holds it).
        unsafe {
            cudarc::driver::result::memset_d8_async(self.own, 0, self.bytes, stream.cu_stream())
                .and_then(|()| cudarc::driver::result::stream::synchronize(stream.cu_stream()))
        }
        .map_err(fail)
    }
}

fn device_error(gpu: usize, op: impl Into<String>, e: &dyn std::fmt::Display) -> crate::Error {
    ErrorKind::Device {
        device: format!("cuda:{gpu}"),
        op: op.into(),
        reason: e.to_string().lines().next().unwrap_or_default().into(),
    }
    .into()
}

/// The device address of a storage. (cudarc records nothing for it on candle's default devices,
/// which leave stream synchronisation to candle; on a device made with its own stream it records
/// a read there.) The GPU path writes the storage from its own streams and has synchronised them
/// before candle uses it.
fn slice_ptr(s: &CudaStorage) -> u64 {
    fn ptr<T>(s: &CudaSlice<T>) -> u64 {
        let (p, _sync) = s.device_ptr(s.stream());
        p
    }
    match &s.slice {
        CudaStorageSlice::U8(s)
        | CudaStorageSlice::F6E2M3(s)
        | CudaStorageSlice::F6E3M2(s)
        | CudaStorageSlice::F4(s)
        | CudaStorageSlice::F8E8M0(s) => ptr(s),
        CudaStorageSlice::U32(s) => ptr(s),
        CudaStorageSlice::I16(s) => ptr(s),
        CudaStorageSlice::I32(s) => ptr(s),
        CudaStorageSlice::I64(s) => ptr(s),
        CudaStorageSlice::BF16(s) => ptr(s),
        CudaStorageSlice::F16(s) => ptr(s),
        CudaStorageSlice::F32(s) => ptr(s),
        CudaStorageSlice::F64(s) => ptr(s),
        CudaStorageSlice::F8E4M3(s) => ptr(s),
    }
}

/// A zeroed storage of `n` elements of `dtype` (which came from a candle dtype) on `dev`.
fn zeroed(dev: &CudaDevice, dtype: DType, n: usize) -> candle_core::Result<CudaStorage> {
    fn z<T: DeviceRepr + ValidAsZeroBits + candle_core::cuda::CudaDType>(
        dev: &CudaDevice,
        n: usize,
    ) -> candle_core::Result<CudaStorage> {
        Ok(CudaStorage::wrap_cuda_slice(
            dev.alloc_zeros::<T>(n)?,
            dev.clone(),
        ))
    }
    match dtype {
        DType::U8 => z::<u8>(dev, n),
        DType::U32 => z::<u32>(dev, n),
        DType::I16 => z::<i16>(dev, n),
        DType::I32 => z::<i32>(dev, n),
        DType::I64 => z::<i64>(dev, n),
        DType::BF16 => z::<half::bf16>(dev, n),
        DType::F16 => z::<half::f16>(dev, n),
        DType::F32 => z::<f32>(dev, n),
        DType::F64 => z::<f64>(dev, n),
        DType::F8E4M3FN => z::<float8::F8E4M3>(dev, n),
        other => candle_core::bail!("TensorFlow dtype {other} has no candle counterpart"),
    }
}

/// The store of the GPU load of `jobs`: their variables, each read as stored, placed on its
/// GPU, with its `Var`'s device memory (or the job's fresh storage) as its destination.
pub(super) fn substore(init: &CandleInit, jobs: &[GpuJob]) -> Result<VariableStore> {
    let mut sub = init.store.substore(jobs.iter().map(|j| j.name.as_str()));
    for j in jobs {
        if let (Some((from, _)), Some(v)) = (j.convert, sub.vars.get_mut(&j.name)) {
            v.dtype = from; // read as stored, converted on the device
        }
        let form = DeviceForm {
            dtype: j.convert.map(|(_, to)| to),
            held: j.held,
        };
        sub.device_forms.insert(j.name.clone(), form);
        sub.set_device(&j.name, Device::Cuda(j.ordinal))?;
        // SAFETY: the destination is `bytes` of device memory of GPU `ordinal`: a new storage,
        // alive as long as the job (which outlives the store: the caller drops the store first,
        // as `load` does), or the `Var`'s own, whose storage the caller holds a read guard on for
        // the load (no `set` or in-place op can replace it meanwhile).
        let buffer = unsafe { DeviceBuffer::from_raw(j.ordinal, j.device_ptr(), j.bytes) };
        sub.set_device_buffer(&j.name, buffer)?;
    }
    Ok(sub)
}

/// Loads every job's value into its destination through the GPU path: one load over every GPU
/// the jobs are on, of their store (`sub`, from [`substore`]), which it drops.
pub(super) fn load(
    jobs: &[GpuJob],
    mut sub: VariableStore,
    options: &LoadOptions,
) -> Result<LoadReport> {
    use candle_core::backend::BackendDevice;
    // The allocations and their zeroing are queued on candle's streams (one per candle device,
    // and a GPU can have several): all done before the GPU path's own streams write. candle's
    // stream is by default the per-thread default stream of whichever thread queued the work
    // (a model built on another thread queued it on that thread's), so the whole context is
    // waited for, not this thread's stream.
    let mut devices: Vec<(u32, &CudaDevice)> = Vec::new();
    for j in jobs.iter() {
        if !devices.iter().any(|(_, d)| d.same_device(&j.dev)) {
            devices.push((j.ordinal, &j.dev));
        }
    }
    for (ordinal, d) in &devices {
        // Without cudarc's check, which would report (and clear) an error a `Drop` stored in
        // the trainer's context as the load's.
        crate::gpu::cuda::set_current_anyway(d.cuda_stream().context())
            .and_then(|()| cudarc::driver::result::ctx::synchronize())
            .map_err(|e| device_error(*ordinal as usize, "waiting for candle's allocations", &e))?;
    }
    let first = jobs.iter().map(|j| j.ordinal).min().unwrap_or(0);
    let report = sub.initialize_with(Device::Cuda(first), options)?;
    drop(sub);
    Ok(report)
}

/// The report of a load of host `Var`s and one of GPU `Var`s, as one.
pub(super) fn merged(host: LoadReport, gpu: LoadReport) -> LoadReport {
    LoadReport {
        variables: host.variables + gpu.variables,
        parts: host.parts + gpu.parts,
        from_checkpoint: host.from_checkpoint + gpu.from_checkpoint,
        from_initializer: host.from_initializer + gpu.from_initializer,
        kept: host.kept + gpu.kept,
        tensors: host.tensors + gpu.tensors,
        stored_reads: host.stored_reads + gpu.stored_reads,
        bytes: host.bytes + gpu.bytes,
        stored_bytes: host.stored_bytes + gpu.stored_bytes,
        skipped_variables: host.skipped_variables + gpu.skipped_variables,
        skipped_bytes: host.skipped_bytes + gpu.skipped_bytes,
        mapped_bytes: host.mapped_bytes + gpu.mapped_bytes,
        seconds: host.seconds + gpu.seconds,
        plan_seconds: host.plan_seconds + gpu.plan_seconds,
        load_seconds: host.load_seconds + gpu.load_seconds,
        finish_seconds: host.finish_seconds + gpu.finish_seconds,
        threads: host.threads.max(gpu.threads),
        warnings: {
            let mut w = host.warnings;
            for g in gpu.warnings {
                if !w.contains(&g) {
                    w.push(g);
                }
            }
            w
        },
        device: gpu.device,
        devices: gpu.devices,
    }
}
