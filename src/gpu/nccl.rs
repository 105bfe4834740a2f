//! Replicas over NCCL (the `nccl` feature): the all-gather that completes a variable replicated
//! on several local GPUs, each of which uploaded a 1/N share over its own PCIe link. One
//! communicator per set of GPUs (`ncclCommInitAll`, slow to make: kept for the process), on each
//! GPU's kernel lane, so the gather is ordered after that GPU's kernels; the shares move over
//! NVLink where the GPUs have it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nccl::{group_end, group_start, Comm};

use super::cuda::CudaLink;
use super::destination::Gather;
use crate::base::device::Device;
use crate::base::error::{ErrorKind, Result};

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

impl Gather for NcclGather<'_> {
    fn all_gather(&self, members: &[(Device, u64)], share: usize) -> Result<()> {
        static COMMS: OnceLock<Mutex<CommsBySet>> = OnceLock::new();
        let ordinals: Vec<u32> = members
            .iter()
            .map(|(d, _)| match d {
                Device::Cuda(n) => *n,
                Device::Cpu => u32::MAX,
            })
            .collect();
        let links = members
            .iter()
            .map(|&(d, _)| self.link(d))
            .collect::<Result<Vec<_>>>()?;
        let comms = {
            let mut all = COMMS
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match all.get(&ordinals) {
                Some(c) => c.clone(),
                None => {
                    let streams = links.iter().map(|l| l.kernel_stream()).collect();
                    let c = Comm::from_devices(streams)
                        .map_err(|e| nccl_err(&ordinals, "ncclCommInitAll", e))?;
                    let c = Arc::new(Mutex::new(Comms(c)));
                    all.insert(ordinals.clone(), c.clone());
                    c
                }
            }
        };
        let comms = comms.lock().unwrap_or_else(|e| e.into_inner());
        let n = members.len();
        // Views of the destination memory (owned by the load, not by these handles: leaked
        // after the call, never freed here).
        let mut views = Vec::with_capacity(n);
        for (rank, (&(_, ptr), link)) in members.iter().zip(&links).enumerate() {
            let stream = link.kernel_stream();
            // SAFETY: `ptr .. ptr + n * share` is this replica's allocation on this GPU (the
            // destination made it), alive until the load ends; the handles are leaked below.
            let (send, recv) = unsafe {
                (
                    stream.upgrade_device_ptr::<u8>(ptr + (rank * share) as u64, share),
                    stream.upgrade_device_ptr::<u8>(ptr, n * share),
                )
            };
            views.push((send, recv));
        }
        let mut run = || -> Result<()> {
            group_start().map_err(|e| nccl_err(&ordinals, "ncclGroupStart", e))?;
            let mut issued = Ok(());
            for (comm, (send, recv)) in comms.0.iter().zip(views.iter_mut()) {
                // In place: each rank's send buffer is its own share of the receive buffer.
                if let Err(e) = comm.all_gather(send, recv) {
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
        for (send, recv) in views {
            send.leak();
            recv.leak();
        }
        r
    }
}
