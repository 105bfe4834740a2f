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

use cudarc::driver::{CudaSlice, CudaStream};
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

fn nccl_err(devices: &[u32], op: &str, e: impl std::fmt::Debug) -> crate::Error {
    ErrorKind::Device {
        device: devices
            .iter()
            .map(|d| format!("cuda:{d}"))
            .collect::<Vec<_>>()
            .join(", "),
        op: op.into(),
        reason: format!("{e:?}"),
    }
    .into()
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

/// Views of device memory that something else owns, one per `(stream, address, bytes)`: handles
/// that must never free it (each is leaked after use). cudarc's `upgrade_device_ptr` panics (an
/// `unwrap` of its event creation) where the context holds an error of an earlier call, so that
/// error is taken first and reported, and a panic is caught; on an error the views made so far
/// are leaked.
///
/// # Safety
/// Each range is a live allocation of its stream's GPU for as long as its view is used.
unsafe fn views(
    ranges: &[(&Arc<CudaStream>, u64, usize)],
) -> std::result::Result<Vec<CudaSlice<u8>>, String> {
    let mut out = Vec::with_capacity(ranges.len());
    for &(stream, ptr, len) in ranges {
        let made = stream
            .context()
            .bind_to_thread()
            .map_err(|e| format!("{e:?}"))
            // SAFETY: the caller's.
            .and_then(|()| super::cuda::guarded(|| unsafe { stream.upgrade_device_ptr(ptr, len) }));
        match made {
            Ok(v) => out.push(v),
            Err(e) => {
                for v in out {
                    v.leak();
                }
                return Err(e);
            }
        }
    }
    Ok(out)
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
            .map_err(|e| nccl_err(&ordinals, "ncclCommInitAll", e))?;
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
        let devices: Vec<Device> = members.iter().map(|&(d, _)| d).collect();
        let links = devices
            .iter()
            .map(|&d| self.link(d))
            .collect::<Result<Vec<_>>>()?;
        let (ordinals, comms) = self.comms(&devices)?;
        let comms = comms.lock().unwrap_or_else(|e| e.into_inner());
        let n = members.len();
        let streams: Vec<_> = links.iter().map(|l| l.kernel_stream()).collect();
        // Per rank, its share (sent) and the whole replica (received into), in place.
        let ranges: Vec<_> = members
            .iter()
            .zip(&streams)
            .enumerate()
            .flat_map(|(rank, (&(_, ptr), stream))| {
                [
                    (stream, ptr + (rank * share) as u64, share),
                    (stream, ptr, n * share),
                ]
            })
            .collect();
        // SAFETY: `ptr .. ptr + n * share` is this replica's allocation on this GPU (the
        // destination made it), alive until the load ends; the views are leaked below.
        let mut views = unsafe { views(&ranges) }
            .map_err(|e| nccl_err(&ordinals, "viewing the replicas", e))?;
        let mut run = || -> Result<()> {
            group_start().map_err(|e| nccl_err(&ordinals, "ncclGroupStart", e))?;
            let mut issued = Ok(());
            for (comm, pair) in comms.0.iter().zip(views.chunks_mut(2)) {
                let (send, recv) = pair.split_at_mut(1);
                // In place: each rank's send buffer is its own share of the receive buffer.
                if let Err(e) = comm.all_gather(&send[0], &mut recv[0]) {
                    issued = Err(nccl_err(&ordinals, "ncclAllGather", e));
                    break;
                }
            }
            let ended = group_end().map_err(|e| nccl_err(&ordinals, "ncclGroupEnd", e));
            issued.and(ended)?;
            for l in &links {
                l.synchronize_kernel_lane()?;
            }
            Ok(())
        };
        let r = run();
        for v in views {
            v.leak();
        }
        if r.is_err() {
            drop(comms);
            Self::discard(&ordinals);
        }
        r
    }
}

/// The trainer's communicator, on this rank's GPU (`link`: `None` when that GPU cannot be used,
/// so this rank only takes part in the agreement that refuses the load).
struct TrainerComm<'a> {
    comm: &'a Comm,
    link: Option<&'a CudaLink>,
}

impl TrainerComm<'_> {
    fn err(&self, op: &str, e: impl std::fmt::Debug) -> crate::Error {
        nccl_err(&[self.comm.ordinal() as u32], op, e)
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
        let stream = self.comm.stream();
        let mut buf = stream
            .clone_htod(&[value])
            .map_err(|e| self.err("copying to the device", e))?;
        self.comm
            .all_reduce_in_place(&mut buf, &ReduceOp::Max)
            .map_err(|e| self.err("ncclAllReduce", e))?;
        let out = stream
            .clone_dtoh(&buf)
            .map_err(|e| self.err("copying from the device", e))?;
        Ok(out.first().copied().unwrap_or(value))
    }

    fn broadcast(&self, bufs: &[(u64, usize)], root: usize) -> Result<()> {
        let stream = self.comm.stream();
        let link = self
            .link
            .ok_or_else(|| self.err("broadcasting", "the GPU is not usable"))?;
        // NCCL's stream must see the load's copies and kernels finished.
        link.synchronize()?;
        for chunk in bufs.chunks(256) {
            let ranges: Vec<_> = chunk
                .iter()
                .map(|&(ptr, len)| (&stream, ptr, len))
                .collect();
            // SAFETY: each buffer is a live device allocation of this GPU held by the store's
            // values for the whole call; the views are leaked below, never freed here.
            let mut views =
                unsafe { views(&ranges) }.map_err(|e| self.err("viewing the values", e))?;
            let mut run = || -> Result<()> {
                group_start().map_err(|e| self.err("ncclGroupStart", e))?;
                let mut issued = Ok(());
                for v in views.iter_mut() {
                    if let Err(e) = self.comm.broadcast_in_place(v, root as i32) {
                        issued = Err(self.err("ncclBroadcast", e));
                        break;
                    }
                }
                let ended = group_end().map_err(|e| self.err("ncclGroupEnd", e));
                issued.and(ended)?;
                stream
                    .synchronize()
                    .map_err(|e| self.err("synchronising", e))
            };
            let r = run();
            for v in views {
                v.leak();
            }
            r?;
        }
        Ok(())
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
    pub fn initialize_broadcast(
        &mut self,
        comm: &Comm,
        root: usize,
        options: &LoadOptions,
    ) -> Result<LoadReport> {
        let ordinal = comm.ordinal() as u32;
        match super::cuda::link(ordinal) {
            Ok(link) => {
                let c = TrainerComm {
                    comm,
                    link: Some(&*link),
                };
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
                let c = TrainerComm { comm, link: None };
                Err(self.refuse_broadcast(&c, Device::Cuda(ordinal), root, options, e))
            }
        }
    }
}
