//! `VariableStore::initialize`: runs every initializer at once (TF's
//! `global_variables_initializer()`). Mapped variables are grouped by checkpoint tensor so that each
//! stored tensor (or stored slice) is read and verified once however many variables or parts use it;
//! unmapped variables get their own initializer. All or nothing: on any error no variable counts as
//! initialized.

pub(crate) mod cast;
pub(crate) mod exec;
pub(crate) mod plan;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::base::slice::{num_elements, Slice};
use crate::base::tensor::{Tensor, TensorData};
use crate::init::store::{init_tensor, Device, Variable, VariableStore};
use crate::reader::checkpoint::{Checkpoint, Out, TensorInfo};

/// What [`VariableStore::initialize`] did.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Variables (and parts) initialized.
    pub variables: usize,
    /// Of those, loaded from a checkpoint.
    pub from_checkpoint: usize,
    /// Of those, set by their own initializer (not mapped).
    pub from_initializer: usize,
    /// Distinct checkpoint tensors read.
    pub tensors: usize,
    /// Stored entries read (a partitioned tensor has one per stored slice); each is read and
    /// verified once, however many variables or parts take a piece of it.
    pub stored_reads: usize,
    /// Bytes loaded from checkpoints into variables (string bytes included).
    pub bytes: u64,
    /// Of those, bytes of values that are copy-on-write mappings of the checkpoint files (see
    /// [`LoadOptions::map_values`]).
    pub mapped_bytes: u64,
    /// Wall time of the whole initialization.
    pub seconds: f64,
    /// Of that: reopening (or re-validating) the checkpoints and planning the reads.
    pub plan_seconds: f64,
    /// Of that: reading, verifying and copying tensor bytes (the fused stage).
    pub load_seconds: f64,
    /// Of that: running the initializers of unmapped variables and recording the values.
    pub finish_seconds: f64,
    /// Worker threads used.
    pub threads: usize,
    /// Warnings recorded by `init_from_checkpoint` calls (e.g. scopes that matched nothing).
    pub warnings: Vec<String>,
    /// For a GPU load: the device and what each transfer path carried.
    pub device: Option<crate::gpu::DeviceStats>,
}

impl LoadReport {
    /// Load throughput in GB/s (10^9 bytes per second).
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9) / 1e9
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} variables ({} from checkpoint, {} from initializers), {} tensors, {} bytes ({} mapped copy-on-write) in {:.3} s ({:.2} GB/s; plan {:.3} s, verify+copy {:.3} s, finish {:.3} s; {} threads)",
            self.variables,
            self.from_checkpoint,
            self.from_initializer,
            self.tensors,
            self.bytes,
            self.mapped_bytes,
            self.seconds,
            self.gbps(),
            self.plan_seconds,
            self.load_seconds,
            self.finish_seconds,
            self.threads
        )?;
        if let Some(d) = &self.device {
            write!(
                f,
                " on {}: {} bytes by registered DMA, {} through {} MiB of pinned staging, {} kernels",
                d.device,
                d.registered_bytes,
                d.staged_bytes,
                d.staging_bytes >> 20,
                d.kernels
            )?;
        }
        Ok(())
    }
}

/// Progress of a load, passed to [`LoadOptions::progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes loaded into variables so far.
    pub bytes_done: u64,
    /// Bytes all mapped variables will hold.
    pub bytes_total: u64,
    /// Checkpoint tensors done so far.
    pub tensors_done: u64,
    /// Checkpoint tensors to read.
    pub tensors_total: u64,
}

/// How [`VariableStore::initialize_with`] runs.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Worker threads (default: the global rayon pool, one per core).
    pub threads: Option<usize>,
    /// Called from worker threads as tensors complete (about every 0.5% of the bytes, and at the
    /// end); keep it cheap.
    pub progress: Option<std::sync::Arc<dyn Fn(Progress) + Send + Sync>>,
    /// Map large values instead of copying them (default `false`: every value is copied). With
    /// `true`, a value of at least [`map_min_bytes`](Self::map_min_bytes) that a V2 checkpoint
    /// stores exactly as the variable needs it (a whole tensor, or a part equal to a stored slice,
    /// at an offset aligned for its elements) is a copy-on-write mapping of the file, CRC-checked
    /// like any other (see [`Bytes`](crate::Bytes)): no copy and no fresh memory at load. Right
    /// for values that are mostly read (inference, export, uploading elsewhere; `tfckpt init`
    /// does it). Not for values a trainer rewrites: the first write to each 4 KiB page then pays a
    /// fault and a copy, which on this project's VM cost more than copying at load (see the
    /// README), and the value stays tied to the file (its safety contract).
    pub map_values: bool,
    /// The smallest value mapped rather than copied (default 1 MiB; smaller values are cheaper to
    /// copy than to map).
    pub map_min_bytes: Option<u64>,
    /// Convert values of one dtype to another on load (`None`: never, as TensorFlow).
    pub cast: Option<(DType, DType)>,
    /// GPU loads: besides the pinned staging ring, page-lock parts of the file mapping in place
    /// and copy them to the device by DMA from there (default `false`: the ring carries every
    /// byte). Off by default because it measured slower on an H200: page-locking holds a driver
    /// lock that the ring's copies then wait on, so the two paths together moved 20–26 GB/s where
    /// the ring alone moved 33–46 GB/s (README, GPU).
    pub register_mappings: bool,
}

impl LoadOptions {
    /// Default options.
    pub fn new() -> LoadOptions {
        LoadOptions::default()
    }

    /// Use `n` worker threads.
    pub fn threads(mut self, n: usize) -> LoadOptions {
        self.threads = Some(n.max(1));
        self
    }

    /// Converts every value of dtype `from` to `to` as it loads: float32 to bfloat16 or float16
    /// (round to nearest even), or back. On a GPU the conversion runs on the device; the values
    /// are the same bit for bit on either device. TensorFlow never casts: this is opt-in.
    pub fn cast(mut self, from: DType, to: DType) -> LoadOptions {
        self.cast = Some((from, to));
        self
    }

    /// Report progress to `f`.
    pub fn progress(mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> LoadOptions {
        self.progress = Some(std::sync::Arc::new(f));
        self
    }
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("map_values", &self.map_values)
            .field("map_min_bytes", &self.map_min_bytes)
            .field("cast", &self.cast)
            .field("register_mappings", &self.register_mappings)
            .finish()
    }
}

/// Progress counters shared by the workers.
struct Tracker<'a> {
    f: Option<&'a (dyn Fn(Progress) + Send + Sync)>,
    bytes_total: u64,
    tensors_total: u64,
    bytes: AtomicU64,
    tensors: AtomicU64,
    reported: AtomicU64,
}

impl Tracker<'_> {
    fn add(&self, bytes: u64) {
        let Some(f) = self.f else { return };
        let done = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let tensors = self.tensors.fetch_add(1, Ordering::Relaxed) + 1;
        let step = (self.bytes_total / 200).max(1);
        let last = self.reported.load(Ordering::Relaxed);
        let finished = tensors == self.tensors_total;
        let due = done >= last + step
            && self
                .reported
                .compare_exchange(last, done, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if due || finished {
            f(Progress {
                bytes_done: done,
                bytes_total: self.bytes_total,
                tensors_done: tensors,
                tensors_total: self.tensors_total,
            });
        }
    }
}

/// With `LoadOptions::map_values`, values at least this large are mapped copy-on-write.
const MAP_MIN: u64 = 1 << 20;

/// How far (in destination bytes) the reader stage may run ahead of the workers.
const READ_AHEAD: u64 = 256 << 20;

enum Buf {
    Bytes(Vec<u8>),
    Mapped(crate::base::tensor::Bytes),
    Strings(Vec<Vec<u8>>),
}

impl VariableStore {
    /// Runs every initializer: variables mapped by `init_from_checkpoint` load their tensors now;
    /// the others take their own initializer. On error nothing counts as initialized.
    pub fn initialize(&mut self, device: Device) -> Result<LoadReport> {
        self.initialize_with(device, &LoadOptions::default())
    }

    /// [`initialize`](Self::initialize) with a thread count and a progress callback.
    pub fn initialize_with(&mut self, device: Device, options: &LoadOptions) -> Result<LoadReport> {
        match options.threads {
            None => self.initialize_in_pool(device, options),
            Some(n) => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| {
                        ErrorKind::InvalidArgument(format!("cannot start {n} threads: {e}"))
                    })?;
                pool.install(|| self.initialize_in_pool(device, options))
            }
        }
    }

    fn initialize_in_pool(&mut self, device: Device, options: &LoadOptions) -> Result<LoadReport> {
        if let Some((from, to)) = options.cast {
            if !crate::load::cast::supported(from, to) {
                return Err(ErrorKind::InvalidArgument(format!(
                    "cannot cast {from} to {to} on load (float32 <-> bfloat16 or float16 only)"
                ))
                .into());
            }
        }
        if let Device::Cuda(n) = device {
            #[cfg(feature = "cuda")]
            {
                let link = crate::gpu::cuda::link(n)?;
                return self.initialize_on(&*link, options, Default::default());
            }
            #[cfg(not(feature = "cuda"))]
            return Err(ErrorKind::DeviceUnavailable {
                device: format!("cuda:{n}"),
                reason: "this build of tfckpt has no GPU support (build with the `cuda` feature); use the cpu device"
                    .into(),
            }
            .into());
        }
        let start = Instant::now();
        let (ckpts, ids) = self.open_pending()?;
        let pending = self.planned_pending(&ids);
        let plan = crate::load::plan::plan(pending, |c, t| ckpts[c].data_position(t));
        let tracker = Tracker {
            f: options.progress.as_deref(),
            bytes_total: plan.bytes,
            tensors_total: plan.items.len() as u64,
            bytes: AtomicU64::new(0),
            tensors: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        };
        let planned = Instant::now();
        let map_min = options
            .map_values
            .then_some(options.map_min_bytes.unwrap_or(MAP_MIN));
        let loaded = crate::load::exec::pipeline(
            &plan.items,
            READ_AHEAD,
            |it| it.bytes,
            |it| ckpts[it.ckpt].prefetch(it.tensor),
            |it| {
                let r = self.load_group(&ckpts[it.ckpt], it.tensor, &it.dests, map_min)?;
                tracker.add(it.bytes);
                Ok(r)
            },
        )?;
        let copied = Instant::now();
        let mut report = LoadReport {
            threads: rayon::current_num_threads(),
            plan_seconds: (planned - start).as_secs_f64(),
            load_seconds: (copied - planned).as_secs_f64(),
            tensors: loaded.len(),
            stored_reads: loaded.iter().map(|l| l.0).sum(),
            warnings: self.warnings.clone(),
            ..Default::default()
        };
        let mut loaded: Vec<(String, Tensor)> = loaded.into_iter().flat_map(|l| l.1).collect();
        if let Some((from, to)) = options.cast {
            use rayon::prelude::*;
            loaded
                .par_iter_mut()
                .try_for_each(|(_, t)| cast_tensor(t, from, to))?;
        }
        loaded.sort_unstable_by(|a, b| a.0.cmp(&b.0)); // nearly sorted already (file order)
        for (_, t) in &loaded {
            match &t.data {
                TensorData::Bytes(b) => {
                    report.bytes += b.len() as u64;
                    if b.is_mapped() {
                        report.mapped_bytes += b.len() as u64;
                    }
                }
                TensorData::Strings(s) => {
                    report.bytes += s.iter().map(|x| x.len() as u64).sum::<u64>()
                }
            }
        }
        report.from_checkpoint = loaded.len();
        // Merge with the (sorted) variables: the unmapped ones take their initializer.
        let mut values: Vec<(String, Tensor)> = Vec::with_capacity(self.vars.len());
        let mut loaded = loaded.into_iter().peekable();
        for v in self.vars.values() {
            match loaded.next_if(|(name, _)| *name == v.name) {
                Some(pair) => values.push(pair),
                None => {
                    let mut t = init_tensor(v)?;
                    if let Some((from, to)) = options.cast {
                        cast_tensor(&mut t, from, to)?;
                    }
                    values.push((v.name.clone(), t));
                    report.from_initializer += 1;
                }
            }
        }
        report.variables = values.len();
        // Sorted input: the map is built in one pass, not by a search per insert.
        self.values = BTreeMap::from_iter(values);
        self.device_values.clear();
        report.finish_seconds = copied.elapsed().as_secs_f64();
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Opens each checkpoint of the pending initializers once, reusing the index read by
    /// `init_from_checkpoint` when its files are unchanged. Returns the checkpoints and, for each
    /// pending entry in order, the index of its checkpoint (`usize::MAX` for a variable no longer
    /// in the store).
    pub(crate) fn open_pending(&mut self) -> Result<(Vec<Arc<Checkpoint>>, Vec<usize>)> {
        let mut opened = std::mem::take(&mut self.opened);
        let mut ckpts: Vec<Arc<Checkpoint>> = Vec::new();
        let mut ckpt_ids: HashMap<&Path, usize> = HashMap::new();
        let mut ids = Vec::with_capacity(self.pending.len());
        for (var, p) in &self.pending {
            if !self.vars.contains_key(var) {
                ids.push(usize::MAX);
                continue;
            }
            let c = match ckpt_ids.get(&*p.checkpoint) {
                Some(&c) => c,
                None => {
                    let reuse = opened
                        .iter()
                        .position(|c| c.prefix() == &*p.checkpoint && c.is_current());
                    ckpts.push(match reuse {
                        Some(i) => opened.swap_remove(i),
                        None => Arc::new(Checkpoint::open(&p.checkpoint)?),
                    });
                    ckpt_ids.insert(&p.checkpoint, ckpts.len() - 1);
                    ckpts.len() - 1
                }
            };
            ids.push(c);
        }
        Ok((ckpts, ids))
    }

    /// The pending initializers as the planner takes them.
    pub(crate) fn planned_pending<'s>(
        &'s self,
        ids: &[usize],
    ) -> Vec<(&'s Variable, usize, &'s str, &'s Slice)> {
        self.pending
            .iter()
            .zip(ids)
            .filter_map(|((var, p), &c)| {
                let v = self.vars.get(var)?;
                Some((v, c, p.tensor.as_str(), &p.slice))
            })
            .collect()
    }

    /// Loads every destination of one checkpoint tensor, re-checking what the call checked (the
    /// checkpoint may have changed since).
    pub(crate) fn load_group(
        &self,
        ckpt: &Checkpoint,
        tensor: &str,
        dests: &[(&Variable, &Slice)],
        map_min: Option<u64>,
    ) -> Result<(usize, Vec<(String, Tensor)>)> {
        let info = ckpt.tensor(tensor)?;
        let mut bufs = Vec::with_capacity(dests.len());
        let mut mapped = 0;
        let mut verified = Vec::new();
        if map_min.is_some() && !info.slices.is_empty() {
            // The overlap and coverage checks of a copied read, once for the whole group, before
            // any value is mapped (TF's errors on odd files).
            let requests: Vec<&Slice> = dests.iter().map(|d| d.1).collect();
            crate::reader::checkpoint::coverage(info, &requests)?;
        }
        for &(v, slice) in dests {
            check_dest(ckpt, info, v, slice)?;
            // A large value stored exactly as this variable needs it: a copy-on-write mapping.
            let m = match map_min {
                Some(min) => ckpt.map_value(info, slice, min, &mut verified)?,
                None => None,
            };
            if let Some((b, read)) = m {
                bufs.push(Buf::Mapped(b));
                mapped += usize::from(read);
                continue;
            }
            let n = num_elements(&v.shape).unwrap_or(0) as usize;
            bufs.push(match info.dtype.size() {
                Some(size) => Buf::Bytes(crate::base::mmap::alloc_zeroed(n * size, &v.name)?),
                None => {
                    let mut strings = Vec::new();
                    strings
                        .try_reserve_exact(n)
                        .map_err(|_| ErrorKind::Allocation {
                            bytes: (n as u64).saturating_mul(std::mem::size_of::<Vec<u8>>() as u64),
                            tensor: v.name.clone(),
                        })?;
                    strings.resize(n, Vec::new());
                    Buf::Strings(strings)
                }
            });
        }
        let mut reqs: Vec<(&Slice, Out<'_>)> = dests
            .iter()
            .zip(bufs.iter_mut())
            .filter_map(|(&(_, slice), b)| {
                let out = match b {
                    Buf::Bytes(v) => Out::Bytes(v),
                    Buf::Strings(v) => Out::Strings(v),
                    Buf::Mapped(_) => return None,
                };
                Some((slice, out))
            })
            .collect();
        let reads = mapped
            + if reqs.is_empty() {
                0
            } else {
                ckpt.assemble_many(info, &mut reqs)?
            };
        drop(reqs);
        let values = dests
            .iter()
            .zip(bufs)
            .map(|(&(v, _), b)| {
                let data = match b {
                    Buf::Bytes(b) => TensorData::Bytes(b.into()),
                    Buf::Mapped(b) => TensorData::Bytes(b),
                    Buf::Strings(s) => TensorData::Strings(s),
                };
                (
                    v.name.clone(),
                    Tensor {
                        dtype: v.dtype,
                        shape: v.shape.clone(),
                        data,
                    },
                )
            })
            .collect();
        Ok((reads, values))
    }
}

/// Checks that `v` (with its box `slice`) can take its value from tensor `info` — what the call
/// checked, checked again since the checkpoint may have changed.
pub(crate) fn check_dest(
    ckpt: &Checkpoint,
    info: &TensorInfo,
    v: &Variable,
    slice: &Slice,
) -> Result<()> {
    // A whole variable takes the whole tensor; a part takes its box of a tensor whose shape
    // is the partitioned variable's full shape.
    let (name, shape) = match (&v.part, slice.is_full()) {
        (Some(p), false) => (&p.full_name, &p.full_shape),
        _ => (&v.name, &v.shape),
    };
    // The box was made by the store from the same full shape, so it lies inside the tensor once
    // the shapes agree (a part of an empty variable may have an empty extent: it takes nothing).
    if *shape != info.shape || slice.shape(&info.shape) != v.shape {
        return Err(ErrorKind::ShapeMismatch {
            ckpt: ckpt.prefix().to_path_buf(),
            variable: name.clone(),
            variable_shape: shape.clone(),
            tensor: info.name.clone(),
            tensor_shape: info.shape.clone(),
        }
        .into());
    }
    if v.dtype != info.dtype {
        return Err(ErrorKind::DtypeMismatch {
            ckpt: ckpt.prefix().to_path_buf(),
            variable: v.name.clone(),
            variable_dtype: v.dtype,
            tensor: info.name.clone(),
            tensor_dtype: info.dtype,
        }
        .into());
    }
    Ok(())
}

/// Converts a loaded value for [`LoadOptions::cast`] (other dtypes are left alone).
pub(crate) fn cast_tensor(t: &mut Tensor, from: DType, to: DType) -> Result<()> {
    if t.dtype != from {
        return Ok(());
    }
    if let TensorData::Bytes(b) = &t.data {
        let n = b.len() / from.size().unwrap_or(1);
        let mut out = crate::base::mmap::alloc_zeroed(n * to.size().unwrap_or(1), "cast value")?;
        crate::load::cast::convert(from, to, b, &mut out);
        t.data = TensorData::Bytes(out.into());
        t.dtype = to;
    }
    Ok(())
}
