//! The load skeleton's steps on the GPU destination: `prepare` (each variable's memory on each of
//! its devices, with its dtype, layout and replicas' shares), `load` (uploads planned from the
//! stored pieces), `initialize` (unmapped variables) and `finish` (the executor run on every
//! device at once, the replicas' all-gathers, the values handed back).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rayon::prelude::*;

use super::{Gathering, GpuDestination, Slot};
use crate::base::device::{device_list, Device, DeviceTensor};
use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::base::slice::num_elements;
use crate::base::tensor::TensorData;
use crate::gpu::exec::{self, Fill, Link};
use crate::gpu::plan::Uploads;
use crate::init::store::Variable;
use crate::load::host::filled_tensor;
use crate::load::skeleton::{Destination, Reads, Values};
use crate::load::{DeviceStats, LoadOptions, LoadReport};

impl<L: Link> Destination for GpuDestination<'_, L> {
    fn prepare(&mut self, vars: &[&Variable], options: &LoadOptions) -> Result<()> {
        for v in vars {
            let devs = self.device_indices(v)?;
            if devs.is_empty() {
                continue;
            }
            let form = self.forms.get(&v.name).copied().unwrap_or_default();
            if form.dtype.is_some() && options.cast.is_some() {
                return Err(ErrorKind::InvalidArgument(format!(
                    "variable {:?} has its own device dtype: LoadOptions::cast does not apply",
                    v.name
                ))
                .into());
            }
            let dtype = form
                .dtype
                .unwrap_or_else(|| options.dtype_at_destination(v.dtype));
            let transposed = match form.held.dims(&v.shape) {
                _ if form.held == crate::base::copy::Held::AsStored => None,
                Some((rows, mid, cols)) => Some((rows as u64, mid as u64, cols as u64)),
                None => {
                    return Err(ErrorKind::BadVariable {
                        name: v.name.clone(),
                        reason: format!(
                            "a transposed device value must have 2 or more axes, not shape {:?}",
                            v.shape
                        ),
                    }
                    .into())
                }
            };
            if dtype != v.dtype && !crate::load::cast::supported(v.dtype, dtype) {
                return Err(ErrorKind::BadVariable {
                    name: v.name.clone(),
                    reason: format!("no conversion of {} into {dtype} on a device", v.dtype),
                }
                .into());
            }
            let size = dtype.size().unwrap_or(0);
            let elems = num_elements(&v.shape).unwrap_or(0);
            let bytes = elems as usize * size;
            // Replicas load shares when a gather completes them and the value is worth it (the
            // shares are ranges of the device layout: a transposed value loads whole).
            let n = devs.len() as u64;
            let shared = form.held == crate::base::copy::Held::AsStored
                && self.replicas.contains_key(&v.name)
                && self.gather.is_some()
                && bytes >= self.sizes.share_min
                && elems >= n;
            // A replica's rank in its gather is its device's place among the replicas' devices
            // in ordinal order (one communicator per set of GPUs, ranks in ordinal order).
            let mut by_device: Vec<usize> = (0..devs.len()).collect();
            by_device.sort_by_key(|&i| match self.links[devs[i]].0 {
                Device::Cpu => 0,
                Device::Cuda(n) => u64::from(n) + 1,
            });
            let mut slots = Vec::with_capacity(devs.len());
            for (i, &dev) in devs.iter().enumerate() {
                let mem = self.memory(v, dev, i, dtype, bytes)?;
                let keep = if shared {
                    let per = elems / n;
                    let r = by_device.iter().position(|&j| j == i).unwrap_or(i) as u64;
                    vec![r * per..(r + 1) * per, n * per..elems]
                } else {
                    Vec::new()
                };
                slots.push(Slot {
                    dev,
                    dtype,
                    shape: v.shape.clone(),
                    mem,
                    keep,
                    held: form.held,
                    transposed,
                });
            }
            if shared {
                let g = Gathering {
                    members: by_device
                        .iter()
                        .map(|&i| (slots[i].dev, slots[i].mem.ptr()))
                        .collect(),
                    share: (elems / n) as usize * size,
                };
                self.gatherings.insert(v.name.clone(), g);
            }
            self.slots.insert(v.name.clone(), slots);
        }
        // The gathers' communicators, made now: the replicas on a set of GPUs that cannot gather
        // (no NCCL path between them, say) load whole instead, with a warning, before any upload.
        if let Some(gather) = self.gather {
            let mut sets: Vec<Vec<Device>> = self
                .gatherings
                .values()
                .map(|g| g.members.iter().map(|&(d, _)| self.links[d].0).collect())
                .collect();
            sets.sort_by_key(|s| format!("{s:?}"));
            sets.dedup();
            for set in sets {
                let Err(e) = gather.prepare(&set) else {
                    continue;
                };
                let shown = device_list(&set);
                self.warning = Some(format!(
                    "replicas: the GPUs {shown} cannot all-gather ({e}), so their replicas are loaded whole, each over its own PCIe link"
                ));
                let names: Vec<String> = self
                    .gatherings
                    .iter()
                    .filter(|(_, g)| {
                        g.members.len() == set.len()
                            && g.members
                                .iter()
                                .zip(&set)
                                .all(|(m, d)| self.links[m.0].0 == *d)
                    })
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in names {
                    self.whole(&name);
                }
            }
        }
        Ok(())
    }

    fn load(&mut self, reads: &Reads<'_>, report: &mut LoadReport) -> Result<()> {
        for it in &reads.plan.items {
            self.load_item(it, reads, report)
                .map_err(|e| e.while_loading(it.dests.iter().map(|d| &*d.0.name)))?;
        }
        Ok(())
    }

    fn initialize(&mut self, v: &Variable, dtype: DType, elem: &[u8]) -> Result<()> {
        if !self.slots.contains_key(&v.name) {
            // A string variable, or one placed on the CPU.
            self.host
                .push((v.name.clone(), filled_tensor(v, dtype, elem)?));
            return Ok(());
        }
        if self.receive {
            return Ok(()); // the broadcast brings it
        }
        self.whole(&v.name);
        let slots = &self.slots[&v.name];
        // The element in the slots' dtype (a device form may ask for another than `dtype`); a
        // single repeated element is the same transposed or not.
        let at = slots[0].dtype;
        let mut converted = vec![0u8; at.size().unwrap_or(0)];
        let (dtype, elem) = if at != dtype {
            crate::load::cast::convert(dtype, at, elem, &mut converted);
            (at, converted.as_slice())
        } else {
            (dtype, elem)
        };
        // A device memset when the element is a repeated 1-, 2- or 4-byte pattern (zeros, ones,
        // most constants), else an upload from the host.
        if let Some(fill) = Fill::of(elem) {
            for slot in slots {
                if slot.mem.len() > 0 {
                    self.links[slot.dev]
                        .1
                        .fill(slot.mem.ptr(), slot.mem.len(), fill)?;
                }
                self.stats[slot.dev].filled_bytes += slot.mem.len() as u64;
            }
            return Ok(());
        }
        let t = filled_tensor(v, dtype, elem)?;
        if let TensorData::Bytes(b) = t.data {
            let bytes = Arc::new(b.into_vec());
            for slot in slots {
                self.uploads[slot.dev].host(bytes.clone(), &*slot.mem);
            }
        }
        Ok(())
    }

    fn finish(mut self, report: &mut LoadReport) -> Result<Values> {
        // Allocations and memsets are queued on one lane; the copies run on all of them.
        for (_, link) in &self.links {
            link.synchronize()?;
        }
        // Every device at once, each over its own link, all from the one checksum pool.
        let stop = AtomicBool::new(false);
        let (register, sizes, cancel) = (self.register, self.sizes, self.cancel.as_ref());
        // One device's ring alone reads each page: it may give them back once read.
        let release = self.links.len() == 1;
        let mut waves = std::mem::take(&mut self.waves);
        for (w, last) in waves.iter_mut().zip(std::mem::take(&mut self.uploads)) {
            w.push(last);
        }
        let work: Vec<(&L, Vec<Uploads>, DeviceStats)> = self
            .links
            .iter()
            .map(|(_, l)| *l)
            .zip(waves)
            .zip(std::mem::take(&mut self.stats))
            .map(|((l, w), s)| (l, w, s))
            .collect();
        let done: Vec<(Result<bool>, DeviceStats)> = crate::base::par::run(|| {
            work.into_par_iter()
                .map(|(link, waves, mut stats)| {
                    // Each device's waves in order, each with its own scratch, freed after it.
                    let mut r = Ok(true);
                    for mut wave in waves {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            r = Ok(false); // another device failed: its error is the load's
                            break;
                        }
                        // The allocation is queued on one lane (stream-ordered where the device has
                        // memory pools) and the copies into it run on the others: it completes first.
                        let t = std::time::Instant::now();
                        let placed = wave.place_scratch(link).and_then(|s| {
                            if s.is_some() {
                                link.synchronize()?;
                            }
                            Ok(s)
                        });
                        stats.times.scratch += t.elapsed().as_secs_f64();
                        let scratch = match placed {
                            Ok(s) => s,
                            Err(e) => {
                                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                                r = Err(e);
                                break;
                            }
                        };
                        stats.scratch_bytes = stats.scratch_bytes.max(wave.scratch_len as u64);
                        r = exec::execute(
                            link,
                            wave.jobs,
                            &wave.kernels,
                            &wave.checks,
                            register,
                            release,
                            sizes,
                            &mut stats,
                            &stop,
                            cancel,
                        );
                        drop(scratch); // after every copy into and kernel on it
                        if !matches!(r, Ok(true)) {
                            break;
                        }
                    }
                    (r, stats)
                })
                .collect()
        });
        let mut stats = Vec::with_capacity(done.len());
        let mut stopped = false;
        for (r, s) in done {
            stopped |= !r?; // the error of the device that failed
            stats.push(s);
        }
        if stopped {
            return Err(ErrorKind::InvalidArgument(
                "a device stopped its load but none reported an error".into(),
            )
            .into());
        }
        // Replicas loaded by shares: every share is verified; gather them.
        if let Some(gather) = self.gather {
            for g in self.gatherings.values() {
                let members: Vec<(Device, u64)> = g
                    .members
                    .iter()
                    .map(|&(dev, ptr)| (self.links[dev].0, ptr))
                    .collect();
                gather.all_gather(&members, g.share)?;
                for &(dev, _) in &g.members {
                    stats[dev].gathered_bytes += (g.share * (g.members.len() - 1)) as u64;
                }
            }
        }
        report.device = DeviceStats::total(&stats);
        report.devices = stats;
        report.warnings.extend(self.warning.take());
        let mut device = Vec::with_capacity(self.slots.len());
        let mut replicas = Vec::new();
        for (name, slots) in self.slots {
            let tensors: Vec<DeviceTensor> = slots
                .into_iter()
                .map(|s| DeviceTensor {
                    dtype: s.dtype,
                    // A transposed value's shape as it lies in memory.
                    shape: s.held.shape(&s.shape),
                    mem: s.mem,
                })
                .collect();
            device.push((name.clone(), tensors[0].clone()));
            if self.replicas.contains_key(&name) {
                replicas.push((name, tensors));
            }
        }
        Ok(Values {
            host: self.host,
            device,
            replicas,
            used_device_buffers: true,
        })
    }
}
