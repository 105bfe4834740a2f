//! The GPU destination of the load skeleton: device memory for every fixed-size variable (the
//! trainer's own buffer where one was handed in, else allocated here), the uploads planned from
//! every stored piece (`plan`), unmapped variables set by device memsets where their element is a
//! repeated pattern, and one run of the executor (`exec`) at the end. String variables stay on
//! the host, as TensorFlow places them. All or nothing: on error every allocation is freed (the
//! trainer's buffers are left as they are, unspecified) and nothing counts as initialized.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::exec::{self, Fill, Link, Sizes};
use super::plan::{Target, Uploads};
use crate::base::device::{DeviceBuffer, DeviceMemory, DeviceTensor};
use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::base::slice::{num_elements, Region};
use crate::base::tensor::{Tensor, TensorData};
use crate::init::store::{Variable, VariableStore};
use crate::load::host::{cast_tensor, check_dest, filled_tensor, load_group, Given};
use crate::load::skeleton::{self, Destination, Reads, Values};
use crate::load::{DeviceStats, LoadOptions, LoadReport};
use crate::reader::stored::Stored;

/// A variable's memory on the device: its dtype there, its shape, the memory.
struct Slot {
    dtype: DType,
    shape: Vec<u64>,
    mem: Arc<dyn DeviceMemory>,
}

/// Values on the GPU behind `link`.
pub(super) struct GpuDestination<'l, L: Link> {
    link: &'l L,
    sizes: Sizes,
    register: bool,
    /// The trainer's buffers, by variable.
    buffers: BTreeMap<String, DeviceBuffer>,
    slots: HashMap<String, Slot>,
    uploads: Uploads,
    /// String variables (kept on the host).
    host: Vec<(String, Tensor)>,
    stats: DeviceStats,
}

impl VariableStore {
    /// `initialize` on the device behind `link`, in units of `sizes`.
    pub(crate) fn initialize_on<L: Link>(
        &mut self,
        link: &L,
        options: &LoadOptions,
        sizes: Sizes,
    ) -> Result<LoadReport> {
        let dest = GpuDestination {
            link,
            sizes,
            register: options.register_mappings,
            buffers: self.device_buffers.clone(),
            slots: HashMap::new(),
            uploads: Uploads::default(),
            host: Vec::new(),
            stats: DeviceStats {
                device: link.device(),
                ..Default::default()
            },
        };
        skeleton::run(self, dest, options)
    }
}

impl<L: Link> GpuDestination<'_, L> {
    /// The device memory of `v` (`bytes` in its dtype on the device): the trainer's buffer,
    /// checked, or memory allocated here.
    fn memory(&self, v: &Variable, dtype: DType, bytes: usize) -> Result<Arc<dyn DeviceMemory>> {
        let Some(b) = self.buffers.get(&v.name) else {
            return self.link.alloc(bytes, &v.name);
        };
        if b.len() != bytes {
            return Err(ErrorKind::BufferSize {
                tensor: v.name.clone(),
                expected: bytes as u64,
                found: b.len() as u64,
            }
            .into());
        }
        // The trainer's memory: on this GPU, aligned for the elements, and idle.
        let align = dtype.size().unwrap_or(1) as u64;
        if b.mem.device() != self.link.device() || b.mem.ptr() % align != 0 {
            return Err(ErrorKind::BadVariable {
                name: v.name.clone(),
                reason: format!(
                    "its device buffer at {:#x} on {} must be on {} and aligned to {align} bytes",
                    b.mem.ptr(),
                    b.mem.device(),
                    self.link.device()
                ),
            }
            .into());
        }
        b.mem.ready()?;
        Ok(b.mem.clone())
    }

    /// One stored tensor whose bytes need conversion on the host (V1 files, big-endian bundles,
    /// strings): prepared and verified there, then uploaded.
    fn load_on_host(
        &mut self,
        stored: &Stored<'_>,
        dests: &[(&Variable, &crate::base::slice::Slice)],
        options: &LoadOptions,
        report: &mut LoadReport,
    ) -> Result<()> {
        let group = load_group(stored, dests, None, &Given::default())?;
        report.stored_reads += group.stored_reads;
        for (name, mut t) in group.values {
            if let Some((from, to)) = options.cast {
                cast_tensor(&mut t, from, to)?;
            }
            match t.data {
                TensorData::Bytes(b) => {
                    report.bytes += b.len() as u64;
                    self.uploads.host(b.into_vec(), &*self.slots[&name].mem);
                }
                TensorData::Strings(ref s) => {
                    report.bytes += s.total_bytes();
                    self.host.push((name, t));
                }
            }
        }
        Ok(())
    }

    /// One stored tensor read on the device: every stored piece straight from its mapping.
    fn load_on_device(
        &mut self,
        stored: &Stored<'_>,
        dests: &[(&Variable, &crate::base::slice::Slice)],
        sources: Vec<crate::reader::stored::DeviceSource>,
        report: &mut LoadReport,
    ) -> Result<()> {
        let info = stored.info;
        let regions: Vec<Region> = dests.iter().map(|d| d.1.region(&info.shape)).collect();
        for (&(v, slice), want) in dests.iter().zip(&regions) {
            check_dest(stored, v, slice, want)?;
        }
        stored.covering(&regions.iter().collect::<Vec<_>>())?;
        let targets: Vec<Target<'_>> = dests
            .iter()
            .zip(regions)
            .map(|(&(v, _), want)| {
                let slot = &self.slots[&v.name];
                Target {
                    name: &v.name,
                    mem: &slot.mem,
                    dtype: slot.dtype,
                    want,
                }
            })
            .collect();
        let mut uploads = std::mem::take(&mut self.uploads);
        let mut read = 0;
        for src in sources {
            read += usize::from(uploads.piece(self.link, src, info.dtype, &targets)?);
        }
        drop(targets);
        self.uploads = uploads;
        report.stored_reads += read;
        Ok(())
    }
}

impl<L: Link> Destination for GpuDestination<'_, L> {
    fn prepare(&mut self, vars: &[&Variable], options: &LoadOptions) -> Result<()> {
        for v in vars.iter().filter(|v| v.dtype.size().is_some()) {
            let dtype = options.dtype_at_destination(v.dtype);
            let bytes = num_elements(&v.shape).unwrap_or(0) as usize * dtype.size().unwrap_or(0);
            let mem = self.memory(v, dtype, bytes)?;
            let slot = Slot {
                dtype,
                shape: v.shape.clone(),
                mem,
            };
            self.slots.insert(v.name.clone(), slot);
        }
        Ok(())
    }

    fn load(&mut self, reads: &Reads<'_>, report: &mut LoadReport) -> Result<()> {
        for it in &reads.plan.items {
            let stored = reads.ckpts[it.ckpt].stored(it.tensor)?;
            report.stored_bytes += skeleton::stored_bytes(&stored, &it.dests);
            match stored.device_sources()? {
                None => self.load_on_host(&stored, &it.dests, reads.options, report)?,
                Some(sources) => {
                    report.bytes += it.bytes;
                    self.load_on_device(&stored, &it.dests, sources, report)?;
                }
            }
        }
        Ok(())
    }

    fn initialize(&mut self, v: &Variable, dtype: DType, elem: &[u8]) -> Result<()> {
        let Some(slot) = self.slots.get(&v.name) else {
            // A string variable: on the host.
            self.host
                .push((v.name.clone(), filled_tensor(v, dtype, elem)?));
            return Ok(());
        };
        // A device memset when the element is a repeated 1-, 2- or 4-byte pattern (zeros, ones,
        // most constants), else an upload from the host.
        if let Some(fill) = Fill::of(elem) {
            if slot.mem.len() > 0 {
                self.link.fill(slot.mem.ptr(), slot.mem.len(), fill)?;
            }
            self.stats.filled_bytes += slot.mem.len() as u64;
            return Ok(());
        }
        let t = filled_tensor(v, dtype, elem)?;
        if let TensorData::Bytes(b) = t.data {
            self.uploads.host(b.into_vec(), &*slot.mem);
        }
        Ok(())
    }

    fn finish(mut self, report: &mut LoadReport) -> Result<Values> {
        // Allocations and memsets are queued on one lane; the copies run on all of them.
        self.link.synchronize()?;
        let uploads = std::mem::take(&mut self.uploads);
        exec::execute(
            self.link,
            uploads.jobs,
            &uploads.kernels,
            &uploads.checks,
            self.register,
            self.sizes,
            &mut self.stats,
        )?;
        drop(uploads.scratch);
        report.device = Some(self.stats);
        let device = self
            .slots
            .into_iter()
            .map(|(name, s)| {
                let t = DeviceTensor {
                    dtype: s.dtype,
                    shape: s.shape,
                    mem: s.mem,
                };
                (name, t)
            })
            .collect();
        Ok(Values {
            host: self.host,
            device,
            used_device_buffers: true,
        })
    }
}
