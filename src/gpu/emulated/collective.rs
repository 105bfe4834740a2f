//! The collectives between emulated devices: the all-gather of replicas (what NCCL does between
//! GPUs) and the ranks of an emulated multi-process job (threads here).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{bad, HostLink};
use crate::base::error::Result;

/// The all-gather between emulated devices (what NCCL does between GPUs), checking that every
/// member's memory is on its own device.
pub(crate) struct HostGather<'a> {
    pub links: &'a [(crate::Device, &'a HostLink)],
    /// Makes every gather fail.
    pub fail: AtomicBool,
    /// Makes every communicator fail to be made.
    pub fail_prepare: AtomicBool,
    /// Makes the communicators of sets of GPUs with this one fail to be made.
    pub fail_prepare_with: Mutex<Option<crate::Device>>,
    /// Bytes moved between devices.
    pub moved: AtomicUsize,
}

impl<'a> HostGather<'a> {
    pub(crate) fn new(links: &'a [(crate::Device, &'a HostLink)]) -> HostGather<'a> {
        HostGather {
            links,
            fail: AtomicBool::new(false),
            fail_prepare: AtomicBool::new(false),
            fail_prepare_with: Mutex::new(None),
            moved: AtomicUsize::new(0),
        }
    }
}

impl crate::gpu::destination::Gather for HostGather<'_> {
    fn prepare(&self, devices: &[crate::Device]) -> Result<()> {
        let with = *self.fail_prepare_with.lock().unwrap();
        if self.fail_prepare.load(Ordering::Relaxed) || with.is_some_and(|d| devices.contains(&d)) {
            return Err(bad(format!("no communicator for {devices:?} (emulated)")));
        }
        Ok(())
    }

    fn all_gather(&self, members: &[(crate::Device, u64)], share: usize) -> Result<()> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(bad("all-gather failed (emulated)".into()));
        }
        let link = |d: crate::Device| {
            self.links
                .iter()
                .find(|(x, _)| *x == d)
                .map(|(_, l)| *l)
                .ok_or_else(|| bad(format!("{d} is not a device of this load")))
        };
        let n = members.len();
        for (i, &(d, ptr)) in members.iter().enumerate() {
            let off = (i * share) as u64;
            let bytes = link(d)?.read_at(ptr + off, share)?;
            for (j, &(e, q)) in members.iter().enumerate() {
                if j != i {
                    let (a, _) = link(e)?.find(q, n * share)?;
                    drop(a);
                    link(e)?.write_at(q + off, &bytes)?;
                    self.moved.fetch_add(share, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }
}

/// The ranks of an emulated multi-process job (threads here), each on its own emulated device:
/// the collectives a trainer's communicator has, through shared memory and a barrier. Every
/// rank passes the same barriers whatever happens, as NCCL ranks must. A rank that leaves (its
/// [`HostComm`] dropped: it returned or panicked) while the others still wait at a barrier (a
/// bug under test) breaks it: their collectives fail instead of waiting forever, so that the
/// test fails rather than hangs. Once every rank has left, the hub serves a new job.
pub(crate) struct Hub {
    world: usize,
    /// Ranks arrived at the barrier, its generation, and ranks that have left.
    barrier: (Mutex<(usize, u64, usize)>, std::sync::Condvar),
    values: Mutex<Vec<u64>>,
    data: Mutex<Vec<Vec<u8>>>,
    /// Makes every broadcast fail (on every rank, after the data moved).
    pub fail_broadcast: AtomicBool,
    /// Makes the broadcast of this rank alone fail (after the data moved).
    pub fail_broadcast_rank: AtomicUsize,
}

impl Hub {
    pub(crate) fn new(world: usize) -> Hub {
        Hub {
            world,
            barrier: Default::default(),
            values: Mutex::new(vec![0; world]),
            data: Mutex::new(Vec::new()),
            fail_broadcast: AtomicBool::new(false),
            fail_broadcast_rank: AtomicUsize::new(usize::MAX),
        }
    }

    /// Waits until every rank arrived; fails where a rank left instead.
    fn wait(&self) -> Result<()> {
        let (lock, arrived) = &self.barrier;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        let generation = st.1;
        st.0 += 1;
        if st.0 == self.world {
            *st = (0, generation + 1, st.2);
            arrived.notify_all();
        }
        loop {
            if st.1 != generation {
                return Ok(());
            }
            if st.2 > 0 {
                return Err(bad(
                    "another rank left without this collective (emulated)".into()
                ));
            }
            st = arrived.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// One rank's end of a [`Hub`].
pub(crate) struct HostComm<'a> {
    pub hub: &'a Hub,
    pub rank: usize,
    pub link: &'a HostLink,
}

impl Drop for HostComm<'_> {
    fn drop(&mut self) {
        let (lock, arrived) = &self.hub.barrier;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        st.2 = (st.2 + 1) % self.hub.world;
        if st.2 == 0 {
            st.0 = 0; // every rank left: no one waits, whatever a failed job left counted
        }
        arrived.notify_all();
    }
}

impl crate::gpu::broadcast::Collective for HostComm<'_> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.hub.world
    }

    fn max(&self, value: u64) -> Result<u64> {
        self.hub.values.lock().unwrap()[self.rank] = value;
        self.hub.wait()?;
        let m = self.hub.values.lock().unwrap().iter().copied().max();
        self.hub.wait()?;
        Ok(m.unwrap_or(value))
    }

    fn broadcast(&self, bufs: &[(u64, usize)], root: usize) -> Result<()> {
        let mut sent = Ok(());
        if self.rank == root {
            let read: Result<Vec<Vec<u8>>> =
                bufs.iter().map(|&(p, l)| self.link.read_at(p, l)).collect();
            match read {
                Ok(d) => *self.hub.data.lock().unwrap() = d,
                Err(e) => sent = Err(e),
            }
        }
        self.hub.wait()?;
        let mut got = Ok(());
        if self.rank != root {
            let data = self.hub.data.lock().unwrap();
            if data.len() != bufs.len() {
                got = Err(bad(format!(
                    "rank {} expects {} buffers, the root sent {}",
                    self.rank,
                    bufs.len(),
                    data.len()
                )));
            } else {
                for (&(p, l), d) in bufs.iter().zip(data.iter()) {
                    if d.len() != l {
                        got = Err(bad(format!("{l} bytes expected, {} sent", d.len())));
                        break;
                    }
                    if let Err(e) = self.link.write_at(p, d) {
                        got = Err(e);
                        break;
                    }
                }
            }
        }
        self.hub.wait()?;
        if self.hub.fail_broadcast.load(Ordering::Relaxed)
            || self.hub.fail_broadcast_rank.load(Ordering::Relaxed) == self.rank
        {
            return Err(bad("broadcast failed (emulated)".into()));
        }
        sent.and(got)
    }
}
