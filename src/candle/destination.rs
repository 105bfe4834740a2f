//! The candle destination: each mapped `Var` gets a fresh storage of its own dtype, the load reads
//! into it (the host pipeline's fused CRC check and copy, transposed where the convention says),
//! and only once every value has loaded does each storage become its `Var`'s.

use std::sync::{Mutex, PoisonError};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp1, Layout};

use super::{candle_error, CandleInit};
use crate::base::copy::copy_box;
use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::base::slice::{num_elements, Region};
use crate::base::tensor::{ElementsMut, TensorData};
use crate::init::store::Variable;
use crate::load::host::{load_values, Given};
use crate::load::skeleton::{self, Destination, Reads, Values};
use crate::load::{LoadOptions, LoadReport};

/// One mapped `Var`'s new storage.
struct Job {
    /// TensorFlow name.
    name: String,
    storage: CpuStorage,
    transposed: bool,
    /// The dtype the checkpoint stores, when the `Var`'s differs (converted after the read).
    cast_from: Option<DType>,
    dtype: DType,
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
    let mut jobs = Vec::new();
    for (name, v) in &init.store.vars {
        let Some(b) = init.vars.get(name) else {
            continue;
        };
        if !init.store.pending.contains_key(name) {
            continue; // keeps candle's initialization
        }
        let n = num_elements(&v.shape).unwrap_or(0) as usize;
        let storage = zeroed(b.dtype, n, name)
            .map_err(|e| crate::Error::from(candle_error(&b.candle, name, e)))?;
        jobs.push(Job {
            name: name.clone(),
            storage,
            transposed: b.transposed,
            cast_from: (v.dtype != b.dtype).then_some(v.dtype),
            dtype: b.dtype,
        });
    }
    let mut done = Vec::with_capacity(jobs.len());
    let dest = CandleDestination {
        jobs,
        done: &mut done,
    };
    let report = skeleton::run(&mut init.store, dest, options)?;
    // Candle's own initializers for the deferred `Var`s no value replaced, made before any `Var`
    // changes (they could fail).
    let loaded: std::collections::HashSet<&str> = done
        .iter()
        .map(|j| init.vars[&j.name].candle.as_str())
        .collect();
    let mut fresh = Vec::new();
    if let Some(deferred) = &init.deferred {
        let vars = init
            .varmap
            .data()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (name, how) in deferred.recorded() {
            let Some(var) = vars.get(&name).filter(|_| !loaded.contains(name.as_str())) else {
                continue;
            };
            let t = how
                .var(var.shape(), var.dtype(), var.device())
                .map_err(|e| candle_refused(&name, e))?;
            fresh.push((var.clone(), t));
        }
    }
    // Every value loaded: each storage becomes its `Var`'s (a move, not a copy). The `Var`s were
    // checked when they were bound (host, contiguous, this dtype and size), so this cannot fail
    // half-way; a `Var` changed behind our back since is refused before any is touched.
    for job in &done {
        let b = &init.vars[&job.name];
        if b.var.dtype() != job.storage.dtype() || !b.var.is_contiguous() {
            return Err(candle_error(
                &b.candle,
                &job.name,
                ErrorKind::BadVariable {
                    name: b.candle.clone(),
                    reason: "its dtype or layout changed after it was bound".into(),
                }
                .into(),
            )
            .into());
        }
    }
    for job in done {
        let b = &init.vars[&job.name];
        let put = Put(Mutex::new(Some(job.storage)));
        b.var
            .inplace_op1(&put)
            .map_err(|e| candle_refused(&b.candle, e))?;
    }
    for (var, t) in fresh {
        var.set(t.as_tensor())
            .map_err(|e| candle_refused("a deferred Var", e))?;
    }
    if let Some(deferred) = &init.deferred {
        deferred.clear();
    }
    Ok(report)
}

fn candle_refused(name: &str, e: candle_core::Error) -> crate::Error {
    ErrorKind::InvalidArgument(format!("candle refused {name:?}: {e}")).into()
}

impl Destination for CandleDestination<'_> {
    fn prepare(&mut self, _vars: &[&Variable], _options: &LoadOptions) -> Result<()> {
        Ok(()) // the storages were allocated with the jobs
    }

    fn load(&mut self, reads: &Reads<'_>, report: &mut LoadReport) -> Result<()> {
        let mut given = Given::default();
        for job in self.jobs.iter_mut().filter(|j| j.cast_from.is_none()) {
            let bytes = bytes_mut(&mut job.storage);
            given.insert(
                &job.name,
                if job.transposed {
                    ElementsMut::Transposed(bytes)
                } else {
                    ElementsMut::Bytes(bytes)
                },
            );
        }
        // What comes back are the values to convert (read in the checkpoint's dtype).
        let values = load_values(reads, report, &given)?;
        drop(given);
        for (name, t) in values {
            let Ok(i) = self.jobs.binary_search_by(|j| j.name.as_str().cmp(&name)) else {
                continue;
            };
            let job = &mut self.jobs[i];
            let (Some(from), TensorData::Bytes(src)) = (job.cast_from, &t.data) else {
                continue;
            };
            let size = job.dtype.size().unwrap_or(1);
            let dst = bytes_mut(&mut job.storage);
            if !job.transposed {
                crate::load::cast::convert(from, job.dtype, src, dst);
                continue;
            }
            let mut converted = crate::base::mmap::alloc_zeroed(dst.len(), &name)?;
            crate::load::cast::convert(from, job.dtype, src, &mut converted);
            let whole = Region::whole(&t.shape);
            copy_box(&converted, &whole, &whole, size, dst, &whole, true);
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

/// Replaces a `Var`'s storage with a loaded one of the same dtype and size.
struct Put(Mutex<Option<CpuStorage>>);

impl InplaceOp1 for Put {
    fn name(&self) -> &'static str {
        "tfckpt-initialize"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, _layout: &Layout) -> candle_core::Result<()> {
        let new = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        match new {
            Some(new) if new.dtype() == storage.dtype() => {
                *storage = new;
                Ok(())
            }
            _ => candle_core::bail!("tfckpt: no loaded value of this dtype"),
        }
    }
}

/// A zeroed storage of `n` elements of `dtype` (which came from a candle dtype).
fn zeroed(dtype: DType, n: usize, name: &str) -> Result<CpuStorage> {
    use crate::base::mmap::alloc_zeroed_as as z;
    // SAFETY (each call): all-zero bytes are a valid integer or float of every type below.
    Ok(unsafe {
        match dtype {
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
        }
    })
}

/// The bytes of a storage (little-endian elements, as a checkpoint holds them).
fn bytes_mut(s: &mut CpuStorage) -> &mut [u8] {
    fn bytes<T>(v: &mut [T]) -> &mut [u8] {
        // SAFETY: the storages' element types (integers, floats) have no padding and every bit
        // pattern is a valid value; the byte slice covers exactly `v`'s memory and borrows it
        // mutably for its lifetime.
        unsafe {
            std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v))
        }
    }
    match s {
        CpuStorage::U8(v)
        | CpuStorage::F6E2M3(v)
        | CpuStorage::F6E3M2(v)
        | CpuStorage::F4(v)
        | CpuStorage::F8E8M0(v) => v,
        CpuStorage::U32(v) => bytes(v),
        CpuStorage::I16(v) => bytes(v),
        CpuStorage::I32(v) => bytes(v),
        CpuStorage::I64(v) => bytes(v),
        CpuStorage::BF16(v) => bytes(v),
        CpuStorage::F16(v) => bytes(v),
        CpuStorage::F32(v) => bytes(v),
        CpuStorage::F64(v) => bytes(v),
        CpuStorage::F8E4M3(v) => bytes(v),
    }
}
