//! `initialize` on a GPU: plans every upload (which stored bytes go where, which slices need the
//! strided kernel, which values need a cast) and hands the plan to the executor.
//!
//! * A whole tensor, or a part whose box is one or a few contiguous runs of a stored slice (a
//!   split along axis 0), is copied straight from the file mapping into the variable.
//! * A part that is many strided runs (a split along another axis), or any value to cast, is
//!   uploaded once into a device scratch buffer and scattered (or converted) by one kernel launch
//!   per 2-D block; the scratch is freed when the load ends.
//! * V1 files, big-endian bundles and the initializers of unmapped variables are prepared on the
//!   host (verified there) and uploaded through the staging ring. String variables stay on the
//!   host, as TensorFlow places them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::exec::{self, Check, Copy, Fill, Job, Kernel, Link, Src};
use super::{DeviceStats, DeviceTensor, Memory};
use crate::base::error::{ErrorKind, Result};
use crate::base::slice::{for_each_run, intersect, num_elements, Run, Slice};
use crate::base::tensor::{Tensor, TensorData};
use crate::init::store::{init_element, init_tensor, VariableStore};
use crate::load::{cast_tensor, check_dest, LoadOptions, LoadReport, Progress};
use crate::reader::checkpoint::coverage;
use crate::DType;

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
fn blocks(runs: &[Run]) -> Vec<Block> {
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

/// The kernel of `kernels/` that moves `from` elements into `to` elements.
fn kernel_name(from: DType, to: DType) -> Option<&'static str> {
    Some(match (from, to) {
        (DType::F32, DType::BF16) => "cast2d_f32_bf16",
        (DType::F32, DType::F16) => "cast2d_f32_f16",
        (DType::BF16, DType::F32) => "cast2d_bf16_f32",
        (DType::F16, DType::F32) => "cast2d_f16_f32",
        _ if from == to => match from.size()? {
            1 => "copy2d_1",
            2 => "copy2d_2",
            4 => "copy2d_4",
            8 => "copy2d_8",
            16 => "copy2d_16",
            _ => return None,
        },
        _ => return None,
    })
}

/// Uploads bytes prepared on the host into `mem`.
fn owned_job(bytes: Vec<u8>, mem: &Arc<dyn Memory>) -> Job {
    let len = bytes.len();
    Job {
        src: Src::Owned(Arc::new(bytes)),
        range: 0..len,
        copies: vec![Copy {
            src: 0,
            len,
            dst: mem.ptr(),
        }],
        check: None,
    }
}

impl VariableStore {
    /// `initialize` with the device behind `link`. All or nothing: on error every allocation is
    /// freed (the trainer's buffers are left as they are, unspecified) and nothing counts as
    /// initialized.
    pub(crate) fn initialize_on<L: Link>(
        &mut self,
        link: &L,
        options: &LoadOptions,
        sizes: exec::Sizes,
    ) -> Result<LoadReport> {
        let start = Instant::now();
        let (ckpts, ids) = self.open_pending()?;
        let pending = self.planned_pending(&ids);
        let plan = crate::load::plan::plan(pending, |c, t| ckpts[c].data_position(t));
        let dev_dtype = |d: DType| match options.cast {
            Some((from, to)) if from == d => to,
            _ => d,
        };
        // Destinations: device memory for every fixed-size variable (the trainer's, or ours).
        let mut mems: HashMap<&str, (DType, Arc<dyn Memory>)> = HashMap::new();
        for v in self.vars.values() {
            if v.dtype.size().is_none() {
                continue;
            }
            let dt = dev_dtype(v.dtype);
            let bytes = num_elements(&v.shape).unwrap_or(0) as usize * dt.size().unwrap_or(0);
            let mem = match self.device_buffers.get(&v.name) {
                Some(b) if b.len() != bytes => {
                    return Err(ErrorKind::BufferSize {
                        tensor: v.name.clone(),
                        expected: bytes as u64,
                        found: b.len() as u64,
                    }
                    .into())
                }
                Some(b) => {
                    // The trainer's memory: on this GPU, aligned for the elements, and idle.
                    let align = dt.size().unwrap_or(1) as u64;
                    if b.mem.device() != link.device() || b.mem.ptr() % align != 0 {
                        return Err(ErrorKind::BadVariable {
                            name: v.name.clone(),
                            reason: format!(
                                "its device buffer at {:#x} on {} must be on {} and aligned to {align} bytes",
                                b.mem.ptr(),
                                b.mem.device(),
                                link.device()
                            ),
                        }
                        .into());
                    }
                    b.mem.ready()?;
                    b.mem.clone()
                }
                None => link.alloc(bytes, &v.name)?,
            };
            mems.insert(&v.name, (dt, mem));
        }
        let mut report = LoadReport {
            warnings: self.warnings.clone(),
            threads: rayon::current_num_threads(),
            ..Default::default()
        };
        let (mut jobs, mut checks, mut kernels) = (Vec::new(), Vec::new(), Vec::new());
        let mut scratch: Vec<Arc<dyn Memory>> = Vec::new();
        let mut host_values: Vec<(String, Tensor)> = Vec::new();
        let mut loaded: HashSet<&str> = HashSet::new();
        for it in &plan.items {
            let ckpt = &ckpts[it.ckpt];
            let info = ckpt.tensor(it.tensor)?;
            loaded.extend(it.dests.iter().map(|d| d.0.name.as_str()));
            report.tensors += 1;
            let Some(sources) = ckpt.device_sources(info)? else {
                // Prepared (and verified, destinations checked) on the host, then uploaded.
                let (reads, values) = self.load_group(ckpt, it.tensor, &it.dests, None)?;
                report.stored_reads += reads;
                for (name, mut t) in values {
                    if let Some((from, to)) = options.cast {
                        cast_tensor(&mut t, from, to)?;
                    }
                    match t.data {
                        TensorData::Bytes(b) => {
                            report.bytes += b.len() as u64;
                            jobs.push(owned_job(b.into_vec(), &mems[name.as_str()].1));
                        }
                        TensorData::Strings(ref s) => {
                            report.bytes += s.iter().map(|x| x.len() as u64).sum::<u64>();
                            host_values.push((name, t));
                        }
                    }
                }
                continue;
            };
            for &(v, slice) in &it.dests {
                check_dest(ckpt, info, v, slice)?;
            }
            let requests: Vec<&Slice> = it.dests.iter().map(|d| d.1).collect();
            let (_, _, wants) = coverage(info, &requests)?;
            let size = info.dtype.size().unwrap_or(1);
            report.bytes += it.bytes;
            for src in sources {
                let users: Vec<(usize, Vec<(u64, u64)>)> = wants
                    .iter()
                    .enumerate()
                    .filter_map(|(i, w)| intersect(&src.have, w).map(|x| (i, x)))
                    .collect();
                if users.is_empty() {
                    continue;
                }
                report.stored_reads += 1;
                let mut copies = Vec::new();
                let mut scratch_ptr = None;
                for (i, inter) in users {
                    let v = it.dests[i].0;
                    let (dt, mem) = &mems[v.name.as_str()];
                    let dsize = dt.size().unwrap_or(1) as u64;
                    let mut runs = Vec::new();
                    for_each_run(&src.have, &wants[i], &inter, |r| runs.push(r));
                    if *dt == info.dtype && runs.len() <= DIRECT_RUNS {
                        copies.extend(runs.iter().map(|r| Copy {
                            src: src.range.start + r.src as usize * size,
                            len: r.len as usize * size,
                            dst: mem.ptr() + r.dst * dsize,
                        }));
                        continue;
                    }
                    let s = match scratch_ptr {
                        Some(p) => p,
                        None => {
                            let m =
                                link.alloc(src.range.len(), &format!("{} (scratch)", v.name))?;
                            let p = m.ptr();
                            scratch.push(m);
                            copies.push(Copy {
                                src: src.range.start,
                                len: src.range.len(),
                                dst: p,
                            });
                            scratch_ptr = Some(p);
                            p
                        }
                    };
                    let name =
                        kernel_name(info.dtype, *dt).ok_or_else(|| ErrorKind::Unsupported {
                            tensor: v.name.clone(),
                            what: format!("no device kernel moves {} into {dt}", info.dtype),
                        })?;
                    kernels.extend(blocks(&runs).into_iter().map(|b| Kernel {
                        name,
                        src: s + b.src * size as u64,
                        dst: mem.ptr() + b.dst * dsize,
                        rows: b.rows,
                        row: b.row,
                        src_stride: b.src_stride,
                        dst_stride: b.dst_stride,
                    }));
                }
                checks.push(Check {
                    expected: src.crc,
                    path: src.path,
                    tensor: src.entry,
                    offset: src.offset,
                    size: src.range.len() as u64,
                });
                jobs.push(Job {
                    src: Src::Mapped(src.map),
                    range: src.range,
                    copies,
                    check: Some(checks.len() - 1),
                });
            }
        }
        report.from_checkpoint = loaded.len();
        // Unmapped variables take their own initializer: a device memset when the element is a
        // repeated 1-, 2- or 4-byte pattern (zeros, ones, most constants), else from the host.
        let mut filled = 0u64;
        for v in self.vars.values() {
            if loaded.contains(v.name.as_str()) {
                continue;
            }
            if let Some((dt, mem)) = mems.get(v.name.as_str()) {
                // `init_element` accepted this (dtype, initializer) when the variable was made.
                let elem = init_element(v.dtype, v.init).unwrap_or_default();
                let mut on_device = vec![0u8; dt.size().unwrap_or(0)];
                crate::load::cast::convert(v.dtype, *dt, &elem, &mut on_device);
                if let Some(fill) = Fill::of(&on_device) {
                    if mem.len() > 0 {
                        link.fill(mem.ptr(), mem.len(), fill)?;
                    }
                    filled += mem.len() as u64;
                    report.from_initializer += 1;
                    continue;
                }
            }
            let mut t = init_tensor(v)?;
            if let Some((from, to)) = options.cast {
                cast_tensor(&mut t, from, to)?;
            }
            match t.data {
                TensorData::Bytes(b) => {
                    jobs.push(owned_job(b.into_vec(), &mems[v.name.as_str()].1))
                }
                TensorData::Strings(_) => host_values.push((v.name.clone(), t)),
            }
            report.from_initializer += 1;
        }
        // Allocations are queued on one lane; the copies run on all of them.
        link.synchronize()?;
        let planned = Instant::now();
        let mut stats = DeviceStats {
            device: link.device(),
            filled_bytes: filled,
            ..Default::default()
        };
        exec::execute(
            link,
            jobs,
            &kernels,
            &checks,
            options.register_mappings,
            sizes,
            &mut stats,
        )?;
        drop(scratch);
        let copied = Instant::now();
        if let Some(f) = &options.progress {
            f(Progress {
                bytes_done: plan.bytes,
                bytes_total: plan.bytes,
                tensors_done: plan.items.len() as u64,
                tensors_total: plan.items.len() as u64,
            });
        }
        self.values = BTreeMap::from_iter(host_values);
        self.device_values = mems
            .into_iter()
            .map(|(name, (dtype, mem))| {
                let shape = self.vars[name].shape.clone();
                (name.to_string(), DeviceTensor { dtype, shape, mem })
            })
            .collect();
        self.device_buffers.clear();
        report.variables = self.vars.len();
        report.plan_seconds = (planned - start).as_secs_f64();
        report.load_seconds = (copied - planned).as_secs_f64();
        report.finish_seconds = copied.elapsed().as_secs_f64();
        report.seconds = start.elapsed().as_secs_f64();
        report.device = Some(stats);
        Ok(report)
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
            blocks(&runs),
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
        assert_eq!(blocks(&runs2).len(), 2);
        assert_eq!(blocks(&[]), vec![]);
    }
}
