//! The GPU destination of the load skeleton: device memory for every fixed-size variable (the
//! trainer's own buffer where one was handed in, else allocated here), the uploads planned from
//! every stored piece (`plan`), unmapped variables set by device memsets where their element is a
//! repeated pattern, and one run of the executor (`exec`) per device at the end, every device at
//! once. String variables stay on the host, as TensorFlow places them, and so do the variables
//! placed on the CPU (`VariableStore::set_device`), read by the host loader.
//!
//! Several devices: each variable (or part) lives on its own device, a stored piece that feeds
//! several devices is read and checksummed once (by the first device's upload; the others take
//! only the bytes they need from the same mapping), and each device has its own pinned ring and
//! registration windows, fed in parallel from one checksum pool (rayon's). All or nothing across
//! devices: an error on one stops the others, and every allocation on every device is freed.
//!
//! Replicas (`VariableStore::set_replicas`): a variable on N GPUs has a slot on each. With a
//! [`Gather`] (NCCL) and a value of at least `Sizes::share_min` bytes, replica i uploads only
//! elements `[i * n/N, (i + 1) * n/N)` (and the last `n % N`, which every replica takes), and the
//! shares are all-gathered in place between the GPUs once every upload is verified; so the value
//! crosses PCIe once in total. Otherwise every replica uploads the whole value.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use super::exec::{Link, Sizes};
use super::plan::{Target, Uploads};
use crate::base::device::{device_list, Device, DeviceBuffer, DeviceForm, DeviceMemory};
use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::base::slice::{Region, Slice};
use crate::base::tensor::{Tensor, TensorData};
use crate::init::store::{Variable, VariableStore};
use crate::load::host::{cast_tensor, check_dest, load_group, Given};
use crate::load::plan::PlanItem;
use crate::load::skeleton::{self, Reads};
use crate::load::{DeviceStats, LoadOptions, LoadReport};
use crate::reader::stored::Stored;

mod steps;

/// A variable's memory on a device: which device (index into the links), its dtype there, its
/// shape, the memory, and the elements the device uploads (empty: all; a replica's share
/// otherwise).
struct Slot {
    dev: usize,
    dtype: DType,
    shape: Vec<u64>,
    mem: Arc<dyn DeviceMemory>,
    keep: Vec<Range<u64>>,
    /// How the value is held (a dense kernel `[in, out]` as `[out, in]`, a convolution's
    /// `[spatial..., in, out]` as `[out, in, spatial...]`, a depthwise one's `[spatial..., in,
    /// mult]` as `[in * mult, 1, spatial...]`: [`Held`](crate::base::copy::Held)), and, held
    /// otherwise than as stored, its `(rows, mid, cols)` of
    /// [`Held::dims`](crate::base::copy::Held::dims).
    held: crate::base::copy::Held,
    transposed: Option<(u64, u64, u64)>,
}

/// All-gathers in place between GPUs: the collective behind replicas (NCCL on real GPUs).
pub(crate) trait Gather: Sync {
    /// Member `i` (its device, and the address of its copy of the value) holds bytes
    /// `[i * share, (i + 1) * share)`; afterwards every member holds all `members.len() * share`
    /// bytes. Returns when the gather is done.
    fn all_gather(&self, members: &[(Device, u64)], share: usize) -> Result<()>;

    /// Makes ready whatever gathering between `devices` needs (a communicator), so that a
    /// failure shows before any upload.
    fn prepare(&self, _devices: &[Device]) -> Result<()> {
        Ok(())
    }
}

/// A replicated variable whose replicas upload shares: the all-gather that completes it.
struct Gathering {
    /// (link index, address) of each replica, in rank order (their devices' ordinal order).
    members: Vec<(usize, u64)>,
    share: usize,
}

/// Values on the GPUs behind `links` (and on the host, for what is placed there).
pub(super) struct GpuDestination<'l, L: Link> {
    /// Waits for every device when the destination is dropped, first of its fields: a load that
    /// fails before `finish` (an error, a cancel) leaves nothing queued when its memory is freed.
    _idle: IdleOnDrop<'l, L>,
    /// The devices of this load and their links.
    links: Vec<(Device, &'l L)>,
    /// Where variables go: their placement, else `default`.
    placement: BTreeMap<String, Device>,
    default: Device,
    sizes: Sizes,
    register: bool,
    /// Stops the transfer when cancelled (checked before each unit the workers take).
    cancel: Option<crate::load::CancelToken>,
    /// The trainer's buffers, by variable.
    buffers: BTreeMap<String, DeviceBuffer>,
    /// How variables are held on the device where not as TensorFlow holds them.
    forms: BTreeMap<String, DeviceForm>,
    /// Replicated variables, by name: their devices.
    replicas: BTreeMap<String, Vec<Device>>,
    gather: Option<&'l dyn Gather>,
    /// Device values arrive from another rank (a broadcast after this load): only the
    /// variables in host memory are read here, and the device memory is only allocated.
    receive: bool,
    /// Every variable's memory on each of its devices (one slot, or one per replica).
    slots: HashMap<String, Vec<Slot>>,
    /// The all-gathers that complete replicas loaded by shares, by variable.
    gatherings: BTreeMap<String, Gathering>,
    /// Why replicas were loaded whole after all (for the report).
    warning: Option<String>,
    /// Stored pieces planned so far: the device that checks a piece takes turns.
    turn: usize,
    /// The uploads of each device (by link index): the wave being planned.
    uploads: Vec<Uploads>,
    /// The waves planned before it, by device (each runs with its own scratch, in order).
    waves: Vec<Vec<Uploads>>,
    /// Values in host memory: string variables and variables placed on the CPU.
    host: Vec<(String, Tensor)>,
    stats: Vec<DeviceStats>,
}

/// Synchronizes its links when dropped (errors ignored: the load's own error is reported).
struct IdleOnDrop<'l, L: Link>(Vec<&'l L>);

impl<L: Link> Drop for IdleOnDrop<'_, L> {
    fn drop(&mut self) {
        for link in &self.0 {
            let _ = link.synchronize();
        }
    }
}

impl VariableStore {
    /// `initialize` on the device behind `link`, in units of `sizes`.
    #[cfg(test)]
    pub(crate) fn initialize_on<L: Link>(
        &mut self,
        link: &L,
        options: &LoadOptions,
        sizes: Sizes,
    ) -> Result<LoadReport> {
        self.initialize_on_links(
            &[(Device::Cuda(0), link)],
            Device::Cuda(0),
            None,
            options,
            sizes,
        )
    }

    /// `initialize(default)` on the devices behind `links` (one per GPU that a variable is placed
    /// on; variables placed on the CPU load into host memory), in units of `sizes`; replicas are
    /// completed by `gather` where there is one.
    pub(crate) fn initialize_on_links<L: Link>(
        &mut self,
        links: &[(Device, &L)],
        default: Device,
        gather: Option<&'_ dyn Gather>,
        options: &LoadOptions,
        sizes: Sizes,
    ) -> Result<LoadReport> {
        self.initialize_dest(links, default, gather, false, options, sizes)
    }

    /// `initialize(default)` on `link` for a rank that receives its device values from another
    /// (`gpu::broadcast`): device memory is allocated and left for the broadcast to fill; only
    /// the variables in host memory (strings, CPU-placed) are read here.
    #[cfg(any(test, feature = "nccl"))]
    pub(crate) fn initialize_to_receive<L: Link>(
        &mut self,
        link: (Device, &L),
        options: &LoadOptions,
    ) -> Result<LoadReport> {
        self.initialize_dest(&[link], link.0, None, true, options, Sizes::default())
    }

    fn initialize_dest<L: Link>(
        &mut self,
        links: &[(Device, &L)],
        default: Device,
        gather: Option<&'_ dyn Gather>,
        receive: bool,
        options: &LoadOptions,
        sizes: Sizes,
    ) -> Result<LoadReport> {
        let dest = GpuDestination {
            _idle: IdleOnDrop(links.iter().map(|&(_, l)| l).collect()),
            receive,
            links: links.to_vec(),
            placement: self.placement.clone(),
            default,
            sizes,
            register: options.register_mappings,
            cancel: options.cancel.clone(),
            buffers: self.device_buffers.clone(),
            forms: self.device_forms.clone(),
            replicas: self.replicas.clone(),
            gather,
            slots: HashMap::new(),
            gatherings: BTreeMap::new(),
            warning: None,
            turn: 0,
            uploads: links.iter().map(|_| Uploads::default()).collect(),
            waves: links.iter().map(|_| Vec::new()).collect(),
            host: Vec::new(),
            stats: links
                .iter()
                .map(|(_, l)| DeviceStats {
                    device: l.device(),
                    ..Default::default()
                })
                .collect(),
        };
        skeleton::run(self, dest, options)
    }
}

impl<L: Link> GpuDestination<'_, L> {
    /// The links (indices) `v` is loaded by: one, one per replica, or none for host memory.
    fn device_indices(&self, v: &Variable) -> Result<Vec<usize>> {
        if v.dtype.size().is_none() {
            return Ok(Vec::new()); // strings stay on the host
        }
        let device = self.placement.get(&v.name).copied().unwrap_or(self.default);
        if device == Device::Cpu {
            if self.buffers.contains_key(&v.name) {
                return Err(ErrorKind::BadVariable {
                    name: v.name.clone(),
                    reason: "it has a device buffer but is placed on the cpu".into(),
                }
                .into());
            }
            return Ok(Vec::new());
        }
        let devices = match self.replicas.get(&v.name) {
            Some(r) => r.as_slice(),
            None => std::slice::from_ref(&device),
        };
        devices
            .iter()
            .map(
                |device| match self.links.iter().position(|(d, _)| d == device) {
                    Some(i) => Ok(i),
                    None => Err(ErrorKind::DeviceUnavailable {
                        device: device.to_string(),
                        reason: format!(
                            "variable {:?} is placed there, but this load has only {}",
                            v.name,
                            device_list(self.links.iter().map(|(d, _)| d))
                        ),
                    }
                    .into()),
                },
            )
            .collect()
    }

    /// The device memory of `v` on device `dev` (`bytes` in its dtype there): the trainer's
    /// buffer, checked, or memory allocated here. The trainer's buffer of a replicated variable
    /// is its first replica.
    fn memory(
        &self,
        v: &Variable,
        dev: usize,
        replica: usize,
        dtype: DType,
        bytes: usize,
    ) -> Result<Arc<dyn DeviceMemory>> {
        let link = self.links[dev].1;
        let Some(b) = self.buffers.get(&v.name).filter(|_| replica == 0) else {
            return link.alloc(bytes, &v.name);
        };
        if b.len() != bytes {
            return Err(ErrorKind::BufferSize {
                tensor: v.name.clone(),
                variable: true,
                elements: None,
                expected: bytes as u64,
                found: b.len() as u64,
            }
            .into());
        }
        // The trainer's memory: on this GPU, aligned for the elements, and idle (and not where
        // no device address is: the top bit marks scratch offsets while planning).
        let align = dtype.size().unwrap_or(1) as u64;
        if b.mem.device() != link.device() || b.mem.ptr() % align != 0 || b.mem.ptr() >> 63 != 0 {
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
        Ok(b.mem.clone())
    }

    /// Variable `name` is set whole on every replica: no shares, no gather.
    fn whole(&mut self, name: &str) {
        if self.gatherings.remove(name).is_some() {
            for s in self.slots.get_mut(name).into_iter().flatten() {
                s.keep.clear();
            }
        }
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
            match self.slots.get(&name).map(|s| &s[0]) {
                // In the slot's dtype and layout (every replica has the same).
                Some(slot) => {
                    if t.dtype != slot.dtype {
                        let from = t.dtype;
                        cast_tensor(&mut t, from, slot.dtype)?;
                    }
                    if let (Some((rows, mid, _)), TensorData::Bytes(b)) = (slot.transposed, &t.data)
                    {
                        let mut out = crate::base::mmap::alloc_zeroed(b.len(), &name)?;
                        let size = slot.dtype.size().unwrap_or(1);
                        let (rows, mid) = (rows as usize, mid as usize);
                        crate::base::copy::transpose_whole(b, rows, mid, size, &mut out);
                        t.data = TensorData::Bytes(out.into());
                    }
                }
                None => {
                    if let Some((from, to)) = options.cast {
                        cast_tensor(&mut t, from, to)?;
                    }
                }
            }
            report.bytes += match &t.data {
                TensorData::Bytes(b) => b.len() as u64,
                TensorData::Strings(s) => s.total_bytes(),
            };
            match (t.data, self.slots.get(&name)) {
                // Every replica takes the whole value (prepared on the host: small or rare).
                (TensorData::Bytes(b), Some(slots)) => {
                    let bytes = Arc::new(b.into_vec());
                    for slot in slots {
                        self.uploads[slot.dev].host(bytes.clone(), &*slot.mem);
                    }
                    self.whole(&name);
                }
                (data, _) => self.host.push((name, Tensor { data, ..t })),
            }
        }
        Ok(())
    }

    /// One stored tensor read on the devices: every stored piece straight from its mapping, and
    /// checksummed once (not again where the host loader verified it: `verified_on_host`).
    fn load_on_device(
        &mut self,
        stored: &Stored<'_>,
        dests: &[(&Variable, &crate::base::slice::Slice)],
        sources: Vec<crate::reader::stored::DeviceSource>,
        verified_on_host: &[Region],
        report: &mut LoadReport,
    ) -> Result<()> {
        let info = stored.info;
        let regions: Vec<Region> = dests.iter().map(|d| d.1.region(&info.shape)).collect();
        for (&(v, slice), want) in dests.iter().zip(&regions) {
            check_dest(stored, v, slice, want)?;
        }
        stored.covering(&regions.iter().collect::<Vec<_>>())?;
        let targets: Vec<(usize, Target<'_>)> = dests
            .iter()
            .zip(regions)
            .flat_map(|(&(v, _), want)| {
                // One target per kept range (a replica's share and the tail apart), or one for all.
                self.slots[&v.name].iter().flat_map(move |slot| {
                    let keeps: Vec<&[Range<u64>]> = if slot.keep.is_empty() {
                        vec![&[]]
                    } else {
                        slot.keep.iter().map(std::slice::from_ref).collect()
                    };
                    let want = want.clone();
                    keeps.into_iter().map(move |keep| {
                        let t = Target {
                            name: &v.name,
                            mem: &slot.mem,
                            dtype: slot.dtype,
                            want: want.clone(),
                            keep,
                            transposed: slot.transposed,
                        };
                        (slot.dev, t)
                    })
                })
            })
            .collect();
        // The targets of each device; a piece is verified by the first device that takes it.
        let mut by_dev: Vec<(usize, Vec<Target<'_>>)> = Vec::new();
        for (dev, t) in targets {
            match by_dev.iter_mut().find(|(d, _)| *d == dev) {
                Some((_, ts)) => ts.push(t),
                None => by_dev.push((dev, vec![t])),
            }
        }
        let mut uploads = std::mem::take(&mut self.uploads);
        let mut read = 0;
        for src in &sources {
            let i = self.turn;
            self.turn += 1;
            // Bytes fetched from object storage are each device's own: each checks them. Local
            // bytes are one mapping: checked once, by the host loader or by one device, taken
            // in turn so that the checksums spread over the devices' rings.
            let remote = !matches!(src.map, crate::reader::stored::SourceBytes::Mapped(_));
            let on_host = !remote
                && verified_on_host
                    .iter()
                    .any(|r| src.region.intersect(r).is_some());
            let mut verified = on_host;
            // The variables the piece feeds (on any device): a checksum error names them.
            let feeds = || -> Vec<String> {
                dests
                    .iter()
                    .filter(|(_, s)| src.region.intersect(&s.region(&info.shape)).is_some())
                    .map(|(v, _)| v.name.clone())
                    .collect()
            };
            let n = by_dev.len().max(1);
            for k in 0..by_dev.len() {
                let (dev, ts) = &by_dev[(i + k) % n];
                let check = remote || !verified;
                let budget = self.sizes.scratch;
                let u = &mut uploads[*dev];
                let planned = match u.piece(src, info.dtype, ts, check, budget)? {
                    Some(p) => p,
                    // This wave's scratch is full: the piece opens the next wave.
                    None => {
                        self.waves[*dev].push(std::mem::take(u));
                        u.piece(src, info.dtype, ts, check, budget)?
                            .ok_or_else(|| {
                                ErrorKind::InvalidArgument(format!(
                                    "internal: {} does not fit an empty wave",
                                    src.entry
                                ))
                            })?
                    }
                };
                if check && planned {
                    u.name_last_check(feeds());
                }
                verified |= planned;
            }
            read += usize::from(verified && !on_host);
        }
        drop(by_dev);
        self.uploads = uploads;
        report.stored_reads += read;
        Ok(())
    }

    /// Loads the destinations of one planned read (`load`, which names them on an error).
    fn load_item(
        &mut self,
        it: &PlanItem<'_>,
        reads: &Reads<'_>,
        report: &mut LoadReport,
    ) -> Result<()> {
        reads.options.check_cancelled()?;
        let stored = reads.stored(it)?;
        if self.receive {
            // Device values come from the broadcast: read only what stays on the host.
            let host: Vec<(&Variable, &Slice)> = it
                .dests
                .iter()
                .filter(|(v, _)| !self.slots.contains_key(&v.name))
                .copied()
                .collect();
            if !host.is_empty() {
                report.stored_bytes += skeleton::stored_bytes(&stored, &host);
                self.load_on_host(&stored, &host, reads.options, report)?;
            }
            return Ok(());
        }
        report.stored_bytes += skeleton::stored_bytes(&stored, &it.dests);
        match stored.device_sources()? {
            None => self.load_on_host(&stored, &it.dests, reads.options, report)?,
            Some(sources) => {
                let (on_device, on_host): (Vec<(&Variable, &Slice)>, Vec<_>) = it
                    .dests
                    .iter()
                    .partition(|(v, _)| self.slots.contains_key(&v.name));
                // The host loader reads and verifies every stored piece its variables
                // overlap: the devices take those pieces' bytes without checking them again.
                let shape = &stored.info.shape;
                let on_host_regions: Vec<Region> =
                    on_host.iter().map(|(_, s)| s.region(shape)).collect();
                if !on_host.is_empty() {
                    self.load_on_host(&stored, &on_host, reads.options, report)?;
                }
                if !on_device.is_empty() {
                    // In the devices' dtype (after a cast), as the host counts a value.
                    report.bytes += on_device
                        .iter()
                        .map(|(v, _)| {
                            let dtype = self.slots.get(&v.name).map_or(v.dtype, |s| s[0].dtype);
                            crate::base::slice::num_elements(&v.shape).unwrap_or(0)
                                * dtype.size().unwrap_or(0) as u64
                        })
                        .sum::<u64>();
                    self.load_on_device(&stored, &on_device, sources, &on_host_regions, report)?;
                }
            }
        }
        Ok(())
    }
}
