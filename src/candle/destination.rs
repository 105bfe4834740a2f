//! The candle destination: each mapped `Var` gets a fresh storage of its own dtype, the load reads
//! into it (the host pipeline's fused CRC check and copy, transposed where the convention says;
//! a value of another dtype converted by the same worker), and only once every value has loaded
//! does each storage become its `Var`'s. A GPU `Var` that still holds `DeferredInit`'s
//! placeholder zeros loads in place instead (no second copy of the model on the device), and is
//! zeroed again if the load fails.

use std::sync::{Mutex, PoisonError};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType as CDType, InplaceOp1, Layout, Var};

use super::CandleInit;
use crate::base::copy::Held;
use crate::base::dtype::DType;
use crate::base::error::{Error, ErrorKind, Result};
use crate::base::slice::num_elements;
use crate::base::tensor::ElementsMut;
use crate::init::store::Variable;
use crate::load::host::{load_values, Given, GivenBuf};
#[cfg(feature = "candle-cuda")]
use crate::load::report::in_sequence;
use crate::load::skeleton::{self, Destination, Reads, Values};
use crate::load::{LoadOptions, LoadReport};

/// One mapped `Var`'s new storage.
struct Job {
    /// TensorFlow name.
    name: String,
    storage: CpuStorage,
    held: Held,
    /// `(stored dtype, the Var's)` when they differ.
    convert: Option<(DType, DType)>,
    elems: usize,
}

struct CandleDestination<'a> {
    jobs: Vec<Job>,
    /// Where the filled jobs go when the load has succeeded.
    done: &'a mut Vec<Job>,
}

pub(super) fn initialize(init: &mut CandleInit, options: &LoadOptions) -> Result<LoadReport> {
    if options.cast.is_some() || options.rank.is_some() {
        return Err(ErrorKind::InvalidArgument(
            "LoadOptions::cast and LoadOptions::rank do not apply to candle Vars: choose a \
             DtypePolicy before init_from_checkpoint; every process fills its own model"
                .into(),
        )
        .into());
    }
    // Host `Var`s (all of them: the unmapped ones keep candle's initialization) are loaded by the
    // host pipeline, mapped GPU `Var`s by the GPU path; each into fresh storage, except the GPU
    // `Var`s still holding `DeferredInit`'s placeholder zeros, which load in place.
    // Whether `DeferredInit` made the `Var` now under `name` (not one the trainer put there in
    // its place since): one lookup by tensor id.
    let made: std::collections::HashMap<_, _> =
        init.deferred.iter().flat_map(|d| d.made()).collect();
    let own = |name: &str, v: &Var| made.get(&v.id()).is_some_and(|n| n == name);
    // The deferred `Var`s that take candle's initialization, chosen before any storage is locked
    // below (their values are made after the checks).
    let deferred = deferred_vars(init, own);
    // The unmapped `Var`s left as they are, for the report (the others' initializers run now).
    // By tensor id: `from_varmap` refuses one `Var` under two names, so no unmapped name holds a
    // mapped one's value.
    let run_now: std::collections::HashSet<_> = deferred.iter().map(|(_, v, _)| v.id()).collect();
    let unmapped = init.vars.iter();
    let unmapped = unmapped.filter(|(tf, _)| !init.store.pending.contains_key(*tf));
    let kept = unmapped
        .filter(|(_, b)| !run_now.contains(&b.var.id()))
        .count();
    // The caller's CUDA context is current again at the end (allocations, the load, the swaps
    // and the frees make candle's GPUs current in turn).
    #[cfg(feature = "candle-cuda")]
    let _current = (init.vars.values().any(|b| !b.var.device().is_cpu())
        || deferred.iter().any(|(_, v, _)| !v.device().is_cpu()))
    .then(crate::gpu::cuda::KeepCurrent::new);
    #[cfg(feature = "candle-cuda")]
    let placeholders: std::collections::HashSet<String> = init
        .deferred
        .iter()
        .flat_map(|d| d.recorded())
        .map(|(name, _)| name)
        .collect();
    // Those `Var`s, read-locked from before their device addresses are read until the load, and
    // any zeroing again after a failure, are over: a `set` or an in-place op cannot replace (and
    // free) the storage written meanwhile.
    #[cfg(feature = "candle-cuda")]
    let held: Vec<(String, Var)> = init
        .store
        .vars
        .iter()
        .filter_map(|(name, v)| {
            let b = init.vars.get(name)?;
            let n = num_elements(&v.shape).unwrap_or(0);
            let in_place = !b.var.device().is_cpu()
                && n > 0
                && init.store.pending.contains_key(name)
                && placeholders.contains(&b.candle)
                && own(&b.candle, &b.var);
            in_place.then(|| (name.clone(), b.var.clone()))
        })
        .collect();
    #[cfg(feature = "candle-cuda")]
    let guards: Vec<(&str, _)> = held
        .iter()
        .map(|(name, var)| (name.as_str(), var.storage_and_layout().0))
        .collect();
    let mut host_names = Vec::new();
    let mut unmapped_gpu = 0;
    let mut jobs = Vec::new();
    #[cfg(feature = "candle-cuda")]
    let mut gpu_jobs = Vec::new();
    for (name, v) in &init.store.vars {
        let Some(b) = init.vars.get(name) else {
            continue;
        };
        let mapped = init.store.pending.contains_key(name);
        let n = num_elements(&v.shape).unwrap_or(0) as usize;
        let convert = init.casts.get(name).map(|&from| (from, b.dtype));
        if !b.var.device().is_cpu() {
            #[cfg(feature = "candle-cuda")]
            if mapped && n > 0 {
                let own = guards.iter().find(|(n, _)| n == name).map(|(_, g)| &**g);
                let job = super::cuda::GpuJob::new(name, &b.var, b.dtype, n, b.held, convert, own)
                    .map_err(|e| init.wrap(name, e))?;
                gpu_jobs.push(job);
            }
            // Not mapped: keeps candle's initialization, counted as the host's are.
            unmapped_gpu += usize::from(!mapped);
            continue;
        }
        host_names.push(name.as_str());
        if !mapped {
            continue; // not mapped: keeps candle's initialization
        }
        let storage = zeroed(b.dtype, n, name).map_err(|e| init.wrap(name, e))?;
        jobs.push(Job {
            name: name.clone(),
            storage,
            held: b.held,
            convert,
            elems: n,
        });
    }
    // Everything that could fail is checked before the first value loads (a GPU `Var` loaded in
    // place is written by the load).
    for job in &jobs {
        let var = &init.vars[&job.name].var;
        check_swappable(init, &job.name, var, job.storage.dtype())?;
    }
    #[cfg(feature = "candle-cuda")]
    for job in &gpu_jobs {
        check_swappable(init, &job.name, &init.vars[&job.name].var, job.dtype())?;
    }
    let fresh = deferred_values(deferred)?;
    for (candle, var, t) in &fresh {
        // The swap in `swap_in` exchanges whole storages: both contiguous from offset 0.
        let whole = |v: &Var| v.is_contiguous() && v.layout().start_offset() == 0;
        if !whole(t) {
            return Err(candle_refused(
                candle,
                "candle's initializer made a value that is not contiguous from offset 0",
            ));
        }
        let ok = whole(var) && var.dtype() == t.dtype() && var.shape() == t.shape();
        if !ok {
            return Err(candle_refused(
                candle,
                &format!(
                    "its layout changed after it was made: expected {:?} {:?}, contiguous from \
                     offset 0; found {:?} {:?}, {}",
                    t.dtype(),
                    t.dims(),
                    var.dtype(),
                    var.dims(),
                    if whole(var) {
                        "contiguous from offset 0"
                    } else {
                        "not contiguous from offset 0"
                    }
                ),
            ));
        }
    }
    // Each store variable takes the stored dtype of a converted value for the load (whose checks
    // are TensorFlow's); the stores are this load's own.
    let mut host = init.store.substore(host_names);
    for (name, &from) in &init.casts {
        if let Some(v) = host.vars.get_mut(name) {
            v.dtype = from;
        }
    }
    #[cfg(feature = "candle-cuda")]
    let gpu = match gpu_jobs.is_empty() {
        true => None,
        false => Some(super::cuda::substore(init, &gpu_jobs)?),
    };
    // The host load and then the GPU load report their progress as one load's (each alone
    // would go from 0 to 100%, then again).
    #[cfg(feature = "candle-cuda")]
    let host_options;
    #[cfg(feature = "candle-cuda")]
    let (options, gpu_options) = match (&gpu, &options.progress) {
        (Some(sub), Some(f)) => {
            let totals = |store| skeleton::progress_totals(store, options);
            let (host_totals, gpu_totals) = (totals(&host), totals(sub));
            let with = |f| LoadOptions {
                progress: Some(f),
                ..options.clone()
            };
            host_options = with(in_sequence(f.clone(), (0, 0), gpu_totals));
            let gpu_options = with(in_sequence(f.clone(), host_totals, (0, 0)));
            (&host_options, gpu_options)
        }
        _ => (options, options.clone()),
    };
    let mut done = Vec::with_capacity(jobs.len());
    let dest = CandleDestination {
        jobs,
        done: &mut done,
    };
    let mut report = skeleton::run(&mut host, dest, options)?;
    report.variables += unmapped_gpu;
    report.from_initializer += unmapped_gpu;
    #[cfg(feature = "candle-cuda")]
    if let Some(sub) = gpu {
        // The load's last progress report comes after its copies: a trainer's callback that
        // panics there leaves no `Var` loaded in place either (zeroed again, then re-raised).
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            super::cuda::load(&gpu_jobs, sub, &gpu_options)
        }))
        .unwrap_or_else(|panic| {
            let _ = zero_again(&gpu_jobs);
            std::panic::resume_unwind(panic)
        });
        match loaded {
            Ok(gpu_report) => report = super::cuda::merged(report, gpu_report),
            Err(e) => return Err(restore(&gpu_jobs, e)),
        }
    }
    let swapped = swap_in(init, done, fresh);
    #[cfg(feature = "candle-cuda")]
    let swapped = match swapped {
        Ok(()) => swap_in_gpu(init, gpu_jobs),
        Err(e) => Err(restore(&gpu_jobs, e)),
    };
    swapped?;
    #[cfg(feature = "candle-cuda")]
    drop(guards); // held through `restore` on every error path above
    for deferred in &init.deferred {
        deferred.clear();
    }
    // Each unmapped `Var` was counted as set by its initializer: some were kept as they were.
    report.kept = kept;
    report.from_initializer = report.from_initializer.saturating_sub(kept);
    Ok(report)
}

/// After a failed load or swap: the GPU `Var`s loaded in place hold zeros again, as
/// `DeferredInit` made them. Returns the error to report (`e`, or, if a `Var` could not be
/// zeroed, that failure with `e` in it).
#[cfg(feature = "candle-cuda")]
fn restore(jobs: &[super::cuda::GpuJob], e: Error) -> Error {
    match zero_again(jobs) {
        Ok(()) => e,
        Err(reason) => ErrorKind::Device {
            device: "cuda".into(),
            op: format!("zeroing Vars loaded in place again after: {e}"),
            reason,
        }
        .into(),
    }
}

/// Zeroes every GPU `Var` loaded in place again; says which could not be, and why.
#[cfg(feature = "candle-cuda")]
fn zero_again(jobs: &[super::cuda::GpuJob]) -> std::result::Result<(), String> {
    let failed: Vec<String> = jobs
        .iter()
        .filter_map(|job| job.zero_again().err().map(|z| format!("{}: {z}", job.name)))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// The GPU storages become their `Var`s' (those loaded in place already are).
#[cfg(feature = "candle-cuda")]
fn swap_in_gpu(init: &CandleInit, jobs: Vec<super::cuda::GpuJob>) -> Result<()> {
    for mut job in jobs {
        let b = &init.vars[&job.name];
        let Some(storage) = job.storage.take() else {
            continue; // loaded in place
        };
        // The storage it replaces is freed on the current context's stream.
        job.make_current();
        let put = Put(Mutex::new(Some(Fresh::Cuda(storage))));
        b.var
            .inplace_op1(&put)
            .map_err(|e| candle_refused(&b.candle, &first_line(&e)))?;
    }
    Ok(())
}

/// The deferred `Var`s the checkpoint does not replace take candle's initialization, then each
/// loaded host storage becomes its `Var`'s. On the host and on CUDA these are moves, not copies
/// (a copy on a GPU could fail half way, leaving some `Var`s changed), which the checks made
/// before the load leave nothing to fail. A `Var` on another device (Metal, or CUDA in a build
/// without `candle-cuda`) is not mapped (`bind` refuses it), but may be deferred: it is copied,
/// first, so that a failure there changes no other `Var`.
fn swap_in(init: &CandleInit, done: Vec<Job>, fresh: Vec<(String, Var, Initial)>) -> Result<()> {
    let movable =
        |v: &Var| v.device().is_cpu() || (cfg!(feature = "candle-cuda") && v.device().is_cuda());
    let (moved, copied): (Vec<_>, Vec<_>) = fresh.into_iter().partition(|(_, v, _)| movable(v));
    for (candle, var, t) in copied {
        var.set(t.as_tensor())
            .map_err(|e| candle_refused(&candle, &first_line(&e)))?;
    }
    for (candle, var, t) in moved {
        if var.elem_count() == 0 {
            continue; // nothing to hold (candle refuses in-place ops on empty layouts)
        }
        // The storage it replaces goes to `t`, freed with it on its GPU.
        var.inplace_op1(&Swap(t.0.clone()))
            .map_err(|e| candle_refused(&candle, &first_line(&e)))?;
    }
    for job in done {
        let b = &init.vars[&job.name];
        if job.elems == 0 {
            continue; // nothing to hold (candle refuses in-place ops on empty layouts)
        }
        let put = Put(Mutex::new(Some(Fresh::Cpu(job.storage))));
        b.var
            .inplace_op1(&put)
            .map_err(|e| candle_refused(&b.candle, &first_line(&e)))?;
    }
    Ok(())
}

/// The deferred `Var`s no checkpoint value replaces, each storage once: those `DeferredInit`
/// made and the `VarMap` still holds under their names, but for any whose storage the checkpoint
/// writes (a mapped `Var`'s). Each storage's address is read under its lock, so this runs before
/// the load holds any (a `Var` loaded in place is read-locked through the load, and a swap
/// write-locks).
fn deferred_vars(
    init: &CandleInit,
    own: impl Fn(&str, &Var) -> bool,
) -> Vec<(String, Var, candle_nn::Init)> {
    let Some(first) = init.deferred.first() else {
        return Vec::new();
    };
    let key = |v: &Var| &*v.storage_and_layout().0 as *const candle_core::Storage as usize;
    // The storages the load writes: every mapped `Var`'s.
    let mut taken: std::collections::HashSet<usize> = init
        .vars
        .iter()
        .filter(|(tf, _)| init.store.pending.contains_key(*tf))
        .map(|(_, b)| key(&b.var))
        .collect();
    // One `VarMap`, under every `DeferredInit` of it.
    let vars = first
        .varmap()
        .data()
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut chosen = Vec::new();
    for (name, how) in init.deferred.iter().flat_map(super::DeferredInit::recorded) {
        // Only a `Var` it made (not one the trainer put in its place), once.
        let Some(var) = vars.get(&name).filter(|v| own(&name, v)) else {
            continue;
        };
        if taken.insert(key(var)) {
            chosen.push((name, var.clone(), how));
        }
    }
    chosen
}

/// Candle's own initial values of the `Var`s [`deferred_vars`] chose, made (they could fail)
/// before any `Var` changes: (candle name, `Var`, value).
fn deferred_values(
    chosen: Vec<(String, Var, candle_nn::Init)>,
) -> Result<Vec<(String, Var, Initial)>> {
    chosen
        .into_iter()
        .map(|(name, var, how)| {
            let t = how
                .var(var.shape(), var.dtype(), var.device())
                .map_err(|e| candle_refused(&name, &first_line(&e)))?;
            Ok((name, var, Initial(t)))
        })
        .collect()
}

/// Candle's initial value of a deferred `Var` (after the swap, the storage it replaced), freed
/// on its own GPU however `initialize` ends: cudarc frees on the current context's stream, and a
/// load over several GPUs leaves another one current.
struct Initial(Var);

impl std::ops::Deref for Initial {
    type Target = Var;
    fn deref(&self) -> &Var {
        &self.0
    }
}

impl Drop for Initial {
    fn drop(&mut self) {
        #[cfg(feature = "candle-cuda")]
        if let candle_core::Device::Cuda(dev) = self.0.device() {
            super::cuda::make_current(dev);
        }
    }
}

/// What candle's in-place op would refuse, refused before anything is swapped.
fn check_swappable(init: &CandleInit, name: &str, var: &Var, dtype: CDType) -> Result<()> {
    let layout = var.layout();
    let ok = var.dtype() == dtype
        && var.is_contiguous()
        && layout.start_offset() == 0
        && (var.elem_count() == 0 || !layout.has_internal_overlap());
    if ok {
        return Ok(());
    }
    Err(init.wrap(
        name,
        ErrorKind::BadVariable {
            name: init.vars[name].candle.clone(),
            reason: format!(
                "its dtype or layout changed after it was bound: expected {dtype:?}, contiguous \
                 from offset 0; found {:?}, {}contiguous, from offset {}",
                var.dtype(),
                if var.is_contiguous() { "" } else { "not " },
                layout.start_offset()
            ),
        }
        .into(),
    ))
}

fn candle_refused(name: &str, why: &str) -> Error {
    ErrorKind::InvalidArgument(format!("candle refused Var {name:?}: {why}")).into()
}

/// The first line of a candle error (with `RUST_BACKTRACE` set, the rest is a backtrace).
pub(super) fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

impl Destination for CandleDestination<'_> {
    fn prepare(&mut self, _vars: &[&Variable], _options: &LoadOptions) -> Result<()> {
        Ok(()) // the storages were allocated with the jobs
    }

    fn load(&mut self, reads: &Reads<'_>, report: &mut LoadReport) -> Result<()> {
        let mut given = Given::default();
        for job in &mut self.jobs {
            let bytes = bytes_mut(&mut job.storage);
            let buf = match job.held {
                Held::AsStored => ElementsMut::Bytes(bytes),
                held => ElementsMut::Held(bytes, held),
            };
            let convert = job.convert;
            given.insert(&job.name, GivenBuf { buf, convert });
        }
        let values = load_values(reads, report, &given)?;
        if let Some((name, _)) = values.first() {
            // Every mapped variable has a buffer: a value coming back is a bug, not a load.
            return Err(ErrorKind::InvalidArgument(format!(
                "internal: variable {name:?} was loaded outside its Var"
            ))
            .into());
        }
        Ok(())
    }

    fn initialize(&mut self, _v: &Variable, _dtype: DType, _elem: &[u8]) -> Result<()> {
        Ok(()) // an unmapped `Var` keeps candle's own initialization
    }

    fn finish(self, _report: &mut LoadReport) -> Result<Values> {
        *self.done = self.jobs;
        Ok(Values::default())
    }
}

/// A loaded storage.
enum Fresh {
    Cpu(CpuStorage),
    #[cfg(feature = "candle-cuda")]
    Cuda(candle_core::CudaStorage),
}

/// Replaces a `Var`'s storage with a loaded one of the same dtype and size.
struct Put(Mutex<Option<Fresh>>);

impl InplaceOp1 for Put {
    fn name(&self) -> &'static str {
        "tfckpt-initialize"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, _layout: &Layout) -> candle_core::Result<()> {
        let new = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        match new {
            Some(Fresh::Cpu(new)) if new.dtype() == storage.dtype() => {
                *storage = new;
                Ok(())
            }
            _ => candle_core::bail!("tfckpt: no loaded host value of this dtype"),
        }
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        _layout: &Layout,
    ) -> candle_core::Result<()> {
        let new = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        match new {
            Some(Fresh::Cuda(new)) if new.dtype() == storage.dtype() => {
                *storage = new;
                Ok(())
            }
            _ => candle_core::bail!("tfckpt: no loaded GPU value of this dtype"),
        }
    }
}

/// Exchanges a `Var`'s storage with that of a fresh `Var` of the same dtype and shape, both
/// contiguous from offset 0 (checked before): the fresh one's values become the `Var`'s, and its
/// old storage is freed with the fresh `Var`.
struct Swap(Var);

/// The inner half of [`Swap`]: holds the outer `Var`'s storage while the fresh one's is locked.
struct SwapWith<'a, S>(Mutex<Option<&'a mut S>>);

impl<S> SwapWith<'_, S> {
    fn swap(&self, inner: &mut S) -> candle_core::Result<()> {
        match self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some(outer) => {
                std::mem::swap(outer, inner);
                Ok(())
            }
            None => candle_core::bail!("tfckpt: storage swapped twice"),
        }
    }
}

impl Swap {
    /// The exchange with the outer `Var`'s `storage`, under the fresh one's lock.
    fn with<S: BackendStorage>(&self, storage: &mut S) -> candle_core::Result<()>
    where
        for<'a> SwapWith<'a, S>: InplaceOp1,
    {
        if self.0.dtype() != storage.dtype() {
            candle_core::bail!("tfckpt: candle's initial value has another dtype");
        }
        self.0.inplace_op1(&SwapWith(Mutex::new(Some(storage))))
    }
}

impl InplaceOp1 for Swap {
    fn name(&self) -> &'static str {
        "tfckpt-initialize"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, _layout: &Layout) -> candle_core::Result<()> {
        self.with(storage)
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        _layout: &Layout,
    ) -> candle_core::Result<()> {
        self.with(storage)
    }
}

impl InplaceOp1 for SwapWith<'_, CpuStorage> {
    fn name(&self) -> &'static str {
        "tfckpt-initialize"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, _layout: &Layout) -> candle_core::Result<()> {
        self.swap(storage)
    }
}

#[cfg(feature = "candle-cuda")]
impl InplaceOp1 for SwapWith<'_, candle_core::CudaStorage> {
    fn name(&self) -> &'static str {
        "tfckpt-initialize"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("tfckpt: candle's initial value is on another device")
    }

    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        _layout: &Layout,
    ) -> candle_core::Result<()> {
        self.swap(storage)
    }
}

/// Element types of candle's host storages: plain bits, every pattern valid, no padding.
///
/// # Safety
/// Implement only for such types.
unsafe trait Plain: Copy {}
// SAFETY: integers and IEEE floats (and their 16- and 8-bit wrappers, `repr(transparent)` over
// an integer) have no padding and no invalid bit patterns.
unsafe impl Plain for u8 {}
unsafe impl Plain for u32 {}
unsafe impl Plain for i16 {}
unsafe impl Plain for i32 {}
unsafe impl Plain for i64 {}
unsafe impl Plain for half::bf16 {}
unsafe impl Plain for half::f16 {}
unsafe impl Plain for f32 {}
unsafe impl Plain for f64 {}
unsafe impl Plain for float8::F8E4M3 {}

/// A zeroed storage of `n` elements of `dtype` (which came from a candle dtype).
fn zeroed(dtype: DType, n: usize, name: &str) -> Result<CpuStorage> {
    fn z<T: Plain>(n: usize, name: &str) -> Result<Vec<T>> {
        // SAFETY: all-zero bytes are a valid `Plain` value.
        unsafe { crate::base::mmap::alloc_zeroed_as::<T>(n, name) }
    }
    Ok(match dtype {
        DType::U8 => CpuStorage::U8(z(n, name)?),
        DType::U32 => CpuStorage::U32(z(n, name)?),
        DType::I16 => CpuStorage::I16(z(n, name)?),
        DType::I32 => CpuStorage::I32(z(n, name)?),
        DType::I64 => CpuStorage::I64(z(n, name)?),
        DType::BF16 => CpuStorage::BF16(z(n, name)?),
        DType::F16 => CpuStorage::F16(z(n, name)?),
        DType::F32 => CpuStorage::F32(z(n, name)?),
        DType::F64 => CpuStorage::F64(z(n, name)?),
        DType::F8E4M3FN => CpuStorage::F8E4M3(z(n, name)?),
        other => {
            return Err(ErrorKind::InvalidArgument(format!(
                "TensorFlow dtype {other} has no candle counterpart"
            ))
            .into())
        }
    })
}

/// Every storage as its bytes, `$as_bytes` viewing a typed slice (shared or mutable) as bytes.
macro_rules! storage_bytes {
    ($s:expr, $as_bytes:ident) => {
        match $s {
            CpuStorage::U8(v)
            | CpuStorage::F6E2M3(v)
            | CpuStorage::F6E3M2(v)
            | CpuStorage::F4(v)
            | CpuStorage::F8E8M0(v) => v,
            CpuStorage::U32(v) => $as_bytes(v),
            CpuStorage::I16(v) => $as_bytes(v),
            CpuStorage::I32(v) => $as_bytes(v),
            CpuStorage::I64(v) => $as_bytes(v),
            CpuStorage::BF16(v) => $as_bytes(v),
            CpuStorage::F16(v) => $as_bytes(v),
            CpuStorage::F32(v) => $as_bytes(v),
            CpuStorage::F64(v) => $as_bytes(v),
            CpuStorage::F8E4M3(v) => $as_bytes(v),
        }
    };
}

/// The bytes of a storage (little-endian elements, as a checkpoint holds them).
pub(super) fn bytes(s: &CpuStorage) -> &[u8] {
    fn as_bytes<T: Plain>(v: &[T]) -> &[u8] {
        // SAFETY: `T` is `Plain` (no padding); the byte slice covers exactly `v`'s memory and
        // borrows it for its lifetime.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
    }
    storage_bytes!(s, as_bytes)
}

/// The bytes of a storage, writable (little-endian elements, as a checkpoint holds them).
fn bytes_mut(s: &mut CpuStorage) -> &mut [u8] {
    fn as_bytes<T: Plain>(v: &mut [T]) -> &mut [u8] {
        // SAFETY: `T` is `Plain` (no padding, every bit pattern valid); the byte slice covers
        // exactly `v`'s memory and borrows it mutably for its lifetime.
        unsafe {
            std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v))
        }
    }
    storage_bytes!(s, as_bytes)
}
