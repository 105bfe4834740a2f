//! One read per host, the values broadcast to the others: `initialize` for data parallelism
//! across hosts (or processes), over a communicator the trainer made (NCCL's, in `gpu::nccl`).
//!
//! Every rank calls it with the same model and arguments. The steps are collective, so that no
//! rank is left waiting for one that gave up:
//! 1. agreement: every rank's model fingerprint (names, shapes, dtypes, placement) and whether its
//!    own checks passed, reduced with `max`; a mismatch or a failed check anywhere fails every
//!    rank before anything is read;
//! 2. the root rank loads its GPU (the ordinary GPU load: every byte read once and verified),
//!    while the others allocate the same memory and read only what stays in host memory (string
//!    and CPU-placed variables; every rank opens the checkpoint's index, as its
//!    `init_from_checkpoint` did);
//! 3. agreement on the outcome (`max` of the failures): if any rank failed, every rank fails and
//!    keeps nothing;
//! 4. every device value is broadcast from the root, in name order, and the ranks agree a last
//!    time on whether that worked everywhere.
//!
//! All or nothing across ranks: a rank whose step failed, or that learned of another's failure,
//! drops what it loaded (the store is left uninitialized, the trainer's buffers handed back).
//! What no agreement can cover is a fault of the communicator itself (a device or network
//! failure inside a collective): NCCL reports or hangs on that as it does for the trainer.

use std::hash::{Hash, Hasher};

use super::exec::{Link, Sizes};
use crate::base::device::Device;
use crate::base::error::{ErrorKind, Result};
use crate::init::store::VariableStore;
use crate::load::{LoadOptions, LoadReport};

/// A communicator across ranks, each on its own GPU (used from the calling thread only).
pub(crate) trait Collective {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// How many ranks there are.
    fn world(&self) -> usize;
    /// The largest of every rank's `value` (every rank calls it).
    fn max(&self, value: u64) -> Result<u64>;
    /// Broadcasts each buffer (device address and bytes, on this rank's GPU) from rank `root`
    /// into the same buffer of every other rank; returns when done.
    fn broadcast(&self, bufs: &[(u64, usize)], root: usize) -> Result<()>;
}

fn collective_err(what: String) -> crate::Error {
    ErrorKind::InvalidArgument(format!("broadcast initialization: {what}")).into()
}

/// The first agreement: every rank's fingerprint (`max` of it and of its complement: equal
/// everywhere only if all are equal) and whether its own checks passed. Every rank makes the
/// same three calls whatever its own outcome.
fn agree<C: Collective>(comm: &C, fp: u64, checked: Result<()>) -> Result<()> {
    let (rank, world) = (comm.rank(), comm.world());
    let hi = comm.max(fp);
    let lo = comm.max(!fp);
    let failed = comm.max(u64::from(checked.is_err()));
    let (hi, lo, failed) = (hi?, lo?, failed?);
    checked?;
    if hi != fp || lo != !fp {
        return Err(collective_err(format!(
            "the ranks' models or arguments differ (this is rank {rank} of {world}): every rank must build the same variables, shapes, dtypes and placement, and name the same root"
        )));
    }
    if failed != 0 {
        return Err(collective_err(format!(
            "another rank's arguments were refused (this is rank {rank}); see its error"
        )));
    }
    Ok(())
}

impl VariableStore {
    /// What every rank must agree on: the root, the world, and each variable's name, shape,
    /// dtype (at the destination) and whether it goes to the GPU.
    fn fingerprint(&self, device: Device, root: usize, world: usize, options: &LoadOptions) -> u64 {
        let mut h = rustc_hash::FxHasher::default();
        (root, world).hash(&mut h);
        for v in self.vars.values() {
            v.name.hash(&mut h);
            v.shape.hash(&mut h);
            (options.dtype_at_destination(v.dtype) as u32).hash(&mut h);
            (self.device_of(&v.name, device) == device).hash(&mut h);
        }
        h.finish()
    }

    /// What only this rank can check: a broadcast load fills one GPU per rank.
    fn broadcast_checks(
        &self,
        device: Device,
        root: usize,
        world: usize,
        options: &LoadOptions,
    ) -> Result<()> {
        if root >= world {
            return Err(collective_err(format!(
                "root rank {root} does not exist: the communicator has {world} rank(s)"
            )));
        }
        if options.rank.is_some() {
            return Err(collective_err(
                "LoadOptions::rank shares a load out; a broadcast load gives every rank everything"
                    .into(),
            ));
        }
        if let Some(name) = self.replicas.keys().next() {
            return Err(collective_err(format!(
                "variable {name:?} has replicas; a broadcast load fills one GPU per rank"
            )));
        }
        for v in self.vars.values() {
            let d = self.device_of(&v.name, device);
            if d != device && d != Device::Cpu {
                return Err(collective_err(format!(
                    "variable {:?} is placed on {d}, but this rank's GPU is {device}",
                    v.name
                )));
            }
        }
        Ok(())
    }

    /// `initialize(device)` on rank `comm.rank()`: the root loads, the others receive.
    pub(crate) fn initialize_broadcast_on<L: Link, C: Collective>(
        &mut self,
        device: Device,
        link: &L,
        comm: &C,
        root: usize,
        options: &LoadOptions,
        sizes: Sizes,
    ) -> Result<LoadReport> {
        let (rank, world) = (comm.rank(), comm.world());
        // 1. Agreement on the model and on each rank's own checks.
        let checked = options
            .check()
            .and_then(|()| self.broadcast_checks(device, root, world, options));
        let fp = self.fingerprint(device, root, world, options);
        agree(comm, fp, checked)?;
        // 2. The root loads; the others allocate and read what stays on the host. The trainer's
        // buffers are kept, to hand back if a later step fails.
        use crate::devices::in_pool;
        let buffers = self.device_buffers.clone();
        let loaded = if rank == root {
            in_pool(options, || {
                self.initialize_on_links(&[(device, link)], device, None, options, sizes)
            })
        } else {
            in_pool(options, || {
                self.initialize_to_receive((device, link), options)
            })
        };
        // 3. Agreement on the outcome.
        let failed = comm.max(u64::from(loaded.is_err()));
        let mut report = match (loaded, failed) {
            (Err(e), _) => return Err(e),
            (Ok(_), Err(e)) => {
                self.forget_values(buffers);
                return Err(e);
            }
            (Ok(_), Ok(f)) if f != 0 => {
                self.forget_values(buffers);
                return Err(collective_err(format!(
                    "another rank failed to {} (this is rank {rank}); see its error",
                    if rank == root {
                        "allocate its memory"
                    } else {
                        "load"
                    }
                )));
            }
            (Ok(r), Ok(_)) => r,
        };
        // 4. Every device value from the root, in name order (the same on every rank), and a
        // last agreement: a broadcast that failed on one rank fails every rank.
        let bufs: Vec<(u64, usize)> = self
            .device_values
            .values()
            .filter(|t| t.byte_len() > 0)
            .map(|t| (t.device_ptr(), t.byte_len()))
            .collect();
        let sent = bufs.iter().map(|b| b.1 as u64).sum::<u64>();
        let moved = comm.broadcast(&bufs, root);
        let failed = comm.max(u64::from(moved.is_err()));
        let outcome = moved.and(failed).and_then(|f| match f {
            0 => Ok(()),
            _ => Err(collective_err(format!(
                "another rank's broadcast failed (this is rank {rank}); see its error"
            ))),
        });
        if let Err(e) = outcome {
            self.forget_values(buffers);
            return Err(e);
        }
        if let Some(d) = report.device.as_mut() {
            d.broadcast_bytes = sent;
        }
        for d in &mut report.devices {
            d.broadcast_bytes = sent;
        }
        Ok(report)
    }

    /// Refuses a broadcast load on this rank (`why`) while taking part in the first agreement, so
    /// that the other ranks fail too instead of waiting.
    pub(crate) fn refuse_broadcast<C: Collective>(
        &self,
        comm: &C,
        device: Device,
        root: usize,
        options: &LoadOptions,
        why: crate::Error,
    ) -> crate::Error {
        let fp = self.fingerprint(device, root, comm.world(), options);
        match agree(comm, fp, Err(why)) {
            Err(e) => e,
            Ok(()) => collective_err("refused".into()),
        }
    }

    /// Drops every value (the store counts as not initialized) and takes back the trainer's
    /// device buffers as they were before the load.
    fn forget_values(&mut self, buffers: std::collections::BTreeMap<String, crate::DeviceBuffer>) {
        self.device_buffers = buffers;
        self.initialized = 0;
        self.elsewhere.clear();
        self.values.clear();
        self.device_values.clear();
        self.replica_values.clear();
    }
}
