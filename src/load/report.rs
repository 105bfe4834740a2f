//! What a load did ([`LoadReport`], [`DeviceStats`]) and its progress ([`Progress`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// What [`VariableStore::initialize`](crate::VariableStore::initialize) did.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct LoadReport {
    /// Variables (and parts) initialized.
    pub variables: usize,
    /// Of those, parts of partitioned variables.
    pub parts: usize,
    /// Of those, loaded from a checkpoint.
    pub from_checkpoint: usize,
    /// Of those, set by their own initializer (not mapped).
    pub from_initializer: usize,
    /// Of those, not mapped and left as they were: the `Var`s of a candle model that already
    /// held candle's initialization (feature `candle`; those a `DeferredInit` defers count as
    /// `from_initializer`).
    pub kept: usize,
    /// Distinct checkpoint tensors read.
    pub tensors: usize,
    /// Stored entries read (a partitioned tensor has one per stored slice); each is read and
    /// verified once, however many variables or parts take a piece of it.
    pub stored_reads: usize,
    /// Bytes loaded from checkpoints into variables (string bytes included).
    pub bytes: u64,
    /// Bytes of the stored entries read and verified (fixed-size dtypes): the checkpoint bytes
    /// this load read. A stored slice is read whole when any part of it is needed.
    pub stored_bytes: u64,
    /// Variables (and parts) left to other ranks ([`LoadOptions::rank`](crate::LoadOptions::rank)): not loaded here.
    pub skipped_variables: usize,
    /// Their bytes.
    pub skipped_bytes: u64,
    /// Of those, bytes of values that are copy-on-write mappings of the checkpoint files (see
    /// [`LoadOptions::map_values`](crate::LoadOptions::map_values)).
    pub mapped_bytes: u64,
    /// Wall time of the whole initialization.
    pub seconds: f64,
    /// Of that: reopening (or re-validating) the checkpoints, planning the reads and preparing
    /// the destinations' memory.
    pub plan_seconds: f64,
    /// Of that: reading, verifying and copying tensor bytes (the fused stage), with the casts;
    /// on a GPU, every upload.
    pub load_seconds: f64,
    /// Of that: the initializers of unmapped variables and recording the values.
    pub finish_seconds: f64,
    /// Worker threads used.
    pub threads: usize,
    /// Warnings recorded by `init_from_checkpoint` calls (e.g. scopes that matched nothing).
    pub warnings: Vec<String>,
    /// For a GPU load: the device and what each transfer path carried; with several GPUs
    /// ([`VariableStore::set_device`](crate::VariableStore::set_device)), their totals (the
    /// pinned staging of all of them, the devices' names joined by `, `, and the times summed
    /// over devices that ran at once: device-seconds, not the load's wall time).
    pub device: Option<DeviceStats>,
    /// For a GPU load, each GPU's own (one entry per device loaded, in ordinal order).
    pub devices: Vec<DeviceStats>,
}

impl LoadReport {
    /// Load throughput in GB/s (10^9 bytes per second).
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9) / 1e9
    }
}

/// `count` and its noun, singular for one: "1 tensor", "2 tensors".
fn counted(count: u64, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let initialized = |n| match n {
            1 => "1 from its initializer".to_string(),
            n => format!("{n} from initializers"),
        };
        let kept = |n| match n {
            1 => "1 kept as it was".to_string(),
            n => format!("{n} kept as they were"),
        };
        let unmapped = match (self.from_initializer, self.kept) {
            (n, 0) => initialized(n),
            (0, k) => kept(k),
            (n, k) => format!("{}, {}", initialized(n), kept(k)),
        };
        write!(
            f,
            "{} ({} from checkpoint, {}), {}, {} ({} mapped copy-on-write) in {:.3} s ({:.2} GB/s; plan {:.3} s, verify+copy {:.3} s, finish {:.3} s; {})",
            match self.parts {
                0 => counted(self.variables as u64, "variable"),
                parts => format!(
                    "{} and {}",
                    counted(self.variables.saturating_sub(parts) as u64, "variable"),
                    counted(parts as u64, "part")
                ),
            },
            self.from_checkpoint,
            unmapped,
            counted(self.tensors as u64, "tensor"),
            counted(self.bytes, "byte"),
            self.mapped_bytes,
            self.seconds,
            self.gbps(),
            self.plan_seconds,
            self.load_seconds,
            self.finish_seconds,
            counted(self.threads as u64, "thread")
        )?;
        write!(
            f,
            "; {} read",
            counted(self.stored_bytes, "checkpoint byte")
        )?;
        if self.skipped_variables > 0 {
            write!(
                f,
                "; {} ({}) left to other ranks",
                counted(self.skipped_variables as u64, "variable"),
                counted(self.skipped_bytes, "byte")
            )?;
        }
        if let Some(d) = &self.device {
            write!(
                f,
                " on {}: {} by registered DMA, {} through {} MiB of pinned staging, {} ({} MiB of scratch); {}",
                d.device,
                counted(d.registered_bytes, "byte"),
                d.staged_bytes,
                d.staging_bytes >> 20,
                counted(d.kernels as u64, "kernel"),
                d.scratch_bytes.div_ceil(1 << 20),
                d.times
            )?;
        }
        Ok(())
    }
}

/// What a GPU load did, per transfer path (part of [`LoadReport`]).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct DeviceStats {
    /// The device, e.g. `cuda:0`.
    pub device: String,
    /// Bytes copied by DMA straight from the registered (page-locked in place) file mapping (see
    /// [`LoadOptions::register_mappings`](crate::LoadOptions::register_mappings)).
    pub registered_bytes: u64,
    /// Bytes copied through the pinned staging ring.
    pub staged_bytes: u64,
    /// Pinned host memory held by the staging ring.
    pub staging_bytes: u64,
    /// Kernel launches (strided slice copies, casts and transposes).
    pub kernels: usize,
    /// Device scratch held at once for them: the largest wave's (see `Sizes::scratch`).
    pub scratch_bytes: u64,
    /// Bytes of unmapped variables set by device memsets (no upload).
    pub filled_bytes: u64,
    /// Bytes of replicas received from the other GPUs by all-gather (NCCL), not over PCIe.
    pub gathered_bytes: u64,
    /// Bytes of device values broadcast from the root rank to the others (sent by the root,
    /// received by the others) by a broadcast initialization.
    pub broadcast_bytes: u64,
    /// Why registration was not used for some ranges (`None` when it always worked or was off).
    pub registration_fallback: Option<String>,
    /// Where this device's part of the load's time went.
    pub times: DeviceTimes,
}

/// Where a device's load time went, in seconds, each summed over the device's waves (part of
/// [`DeviceStats`]). The phases run in turn for each wave, except `pinning` and `registering`,
/// which happen within `transfer` (and may overlap each other: the registrar and the ring run at
/// once).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct DeviceTimes {
    /// Kernels made ready before any byte moves: loaded from the kernel cache, or compiled.
    pub kernel_setup: f64,
    /// Scratch for the kernels' sources allocated, until the device had it.
    pub scratch: f64,
    /// From the first byte read to the last copy done: checksums, copies, registration.
    pub transfer: f64,
    /// Part of `transfer`: until the staging ring's first buffer was pinned and handed to it
    /// (near 0 when an earlier load of the process left them; the others are pinned while the
    /// ring runs, and the thread pinning may also run other work of the load meanwhile).
    pub pinning: f64,
    /// Part of `transfer`: pages locked and unlocked by registered DMA
    /// ([`LoadOptions::register_mappings`](crate::LoadOptions::register_mappings)).
    pub registering: f64,
    /// Checksums combined and compared, after the copies.
    pub verify: f64,
    /// Kernels launched and run to their end.
    pub kernels: f64,
}

#[cfg(any(test, feature = "cuda"))]
impl DeviceTimes {
    fn add(&mut self, o: &DeviceTimes) {
        self.kernel_setup += o.kernel_setup;
        self.scratch += o.scratch;
        self.transfer += o.transfer;
        self.pinning += o.pinning;
        self.registering += o.registering;
        self.verify += o.verify;
        self.kernels += o.kernels;
    }
}

impl std::fmt::Display for DeviceTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kernel setup {:.3} s, scratch {:.3} s, transfer {:.3} s (pinning {:.3} s, registering {:.3} s), verify {:.3} s, kernels {:.3} s",
            self.kernel_setup,
            self.scratch,
            self.transfer,
            self.pinning,
            self.registering,
            self.verify,
            self.kernels
        )
    }
}

#[cfg(any(test, feature = "cuda"))]
impl DeviceStats {
    /// The totals of several devices' stats (`None` for none).
    pub(crate) fn total(all: &[DeviceStats]) -> Option<DeviceStats> {
        let first = all.first()?;
        let mut t = DeviceStats {
            device: all
                .iter()
                .map(|d| d.device.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            registration_fallback: all.iter().find_map(|d| d.registration_fallback.clone()),
            ..first.clone()
        };
        for d in &all[1..] {
            t.registered_bytes += d.registered_bytes;
            t.staged_bytes += d.staged_bytes;
            t.staging_bytes += d.staging_bytes;
            t.kernels += d.kernels;
            t.scratch_bytes += d.scratch_bytes;
            t.filled_bytes += d.filled_bytes;
            t.gathered_bytes += d.gathered_bytes;
            t.broadcast_bytes += d.broadcast_bytes;
            t.times.add(&d.times);
        }
        Some(t)
    }
}

/// Progress of a load, passed to [`LoadOptions::progress`](crate::LoadOptions::progress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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

/// A progress callback for one of several loads run one after another and reported as one: a
/// report of this load counts `before` (bytes, tensors) as done by the loads before it, and adds
/// `after` (the totals of the loads after it) to its totals, so that the reports go from 0 to
/// the whole of all of them once, where each load alone would start from 0 again.
#[cfg_attr(not(feature = "candle-cuda"), allow(dead_code))] // a candle model on host and GPUs
pub(crate) fn in_sequence(
    f: std::sync::Arc<dyn Fn(Progress) + Send + Sync>,
    before: (u64, u64),
    after: (u64, u64),
) -> std::sync::Arc<dyn Fn(Progress) + Send + Sync> {
    std::sync::Arc::new(move |p: Progress| {
        f(Progress {
            bytes_done: before.0.saturating_add(p.bytes_done),
            bytes_total: before
                .0
                .saturating_add(p.bytes_total)
                .saturating_add(after.0),
            tensors_done: before.1.saturating_add(p.tensors_done),
            tensors_total: before
                .1
                .saturating_add(p.tensors_total)
                .saturating_add(after.1),
        })
    })
}

/// Progress counters shared by the workers.
pub(crate) struct Tracker<'a> {
    f: Option<&'a (dyn Fn(Progress) + Send + Sync)>,
    bytes_total: u64,
    tensors_total: u64,
    bytes: AtomicU64,
    tensors: AtomicU64,
    reported: AtomicU64,
    /// The bytes and tensors of the last report given to `f`, whose calls it also serializes:
    /// a report that would go back (workers that counted in one order calling in another) is
    /// not given.
    given: std::sync::Mutex<(u64, u64)>,
}

impl<'a> Tracker<'a> {
    pub(crate) fn new(
        f: Option<&'a (dyn Fn(Progress) + Send + Sync)>,
        bytes_total: u64,
        tensors_total: u64,
    ) -> Tracker<'a> {
        Tracker {
            f,
            bytes_total,
            tensors_total,
            bytes: AtomicU64::new(0),
            tensors: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            given: std::sync::Mutex::new((0, 0)),
        }
    }

    /// One tensor of `bytes` done.
    pub(crate) fn add(&self, bytes: u64) {
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
            // The last tensor's report is the whole load's, whichever worker's bytes this one's
            // count has seen yet.
            let bytes_done = if finished { self.bytes_total } else { done };
            let mut given = self.given.lock().unwrap_or_else(|e| e.into_inner());
            if bytes_done < given.0 || tensors < given.1 {
                return;
            }
            *given = (bytes_done, tensors);
            // The trainer's code: not marked as reading for the library (`sigbus`).
            let _paused = crate::base::sigbus::paused();
            f(Progress {
                bytes_done,
                bytes_total: self.bytes_total,
                tensors_done: tensors,
                tensors_total: self.tensors_total,
            });
        }
    }

    /// The load is complete: reports it, unless the last tensor's progress already did (a
    /// destination that reports no progress on the way reports it all here).
    pub(crate) fn complete(&self) {
        let done = self.tensors.load(Ordering::Relaxed);
        if done == self.tensors_total && done > 0 {
            return;
        }
        if let Some(f) = self.f {
            let _paused = crate::base::sigbus::paused();
            f(Progress {
                bytes_done: self.bytes_total,
                bytes_total: self.bytes_total,
                tensors_done: self.tensors_total,
                tensors_total: self.tensors_total,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Each number of a report lands in its own place of the line, device and ranks included.
    #[test]
    fn a_report_names_each_number() {
        let times = DeviceTimes {
            kernel_setup: 0.5,
            scratch: 0.25,
            transfer: 2.0,
            pinning: 0.125,
            registering: 0.0625,
            verify: 0.375,
            kernels: 0.75,
        };
        let r = LoadReport {
            variables: 7,
            from_checkpoint: 5,
            from_initializer: 2,
            tensors: 4,
            stored_reads: 6,
            bytes: 3_000_000_000,
            stored_bytes: 3_000_000_100,
            skipped_variables: 3,
            skipped_bytes: 900,
            mapped_bytes: 1_000,
            seconds: 1.5,
            plan_seconds: 0.25,
            load_seconds: 1.0,
            finish_seconds: 0.125,
            threads: 8,
            device: Some(DeviceStats {
                device: "cuda:0".into(),
                registered_bytes: 11,
                staged_bytes: 12,
                staging_bytes: 64 << 20,
                kernels: 13,
                scratch_bytes: (3 << 20) + 1,
                times,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(r.gbps(), 2.0);
        assert_eq!(
            r.to_string(),
            "7 variables (5 from checkpoint, 2 from initializers), 4 tensors, 3000000000 bytes \
             (1000 mapped copy-on-write) in 1.500 s (2.00 GB/s; plan 0.250 s, verify+copy 1.000 s, \
             finish 0.125 s; 8 threads); 3000000100 checkpoint bytes read; 3 variables (900 bytes) \
             left to other ranks on cuda:0: 11 bytes by registered DMA, 12 through 64 MiB of \
             pinned staging, 13 kernels (4 MiB of scratch); kernel setup 0.500 s, scratch 0.250 s, \
             transfer 2.000 s (pinning 0.125 s, registering 0.062 s), verify 0.375 s, kernels 0.750 s"
        );
        // Nothing left to other ranks, no device: neither part.
        let host = LoadReport {
            skipped_variables: 0,
            device: None,
            ..r
        };
        let line = host.to_string();
        assert!(
            line.ends_with("; 3000000100 checkpoint bytes read"),
            "{line}"
        );
        // Parts of partitioned variables are counted apart from the variables.
        let parted = LoadReport { parts: 5, ..host };
        let line = parted.to_string();
        assert!(
            line.starts_with("2 variables and 5 parts (5 from checkpoint, 2 from initializers), "),
            "{line}"
        );
        let parted = LoadReport {
            parts: 1,
            variables: 2,
            ..parted
        };
        let line = parted.to_string();
        assert!(line.starts_with("1 variable and 1 part ("), "{line}");
        // One of each: singular nouns.
        let one = LoadReport {
            variables: 1,
            from_checkpoint: 0,
            from_initializer: 1,
            tensors: 1,
            bytes: 1,
            stored_bytes: 1,
            threads: 1,
            skipped_variables: 1,
            skipped_bytes: 1,
            device: None,
            ..Default::default()
        };
        let line = one.to_string();
        assert!(
            line.starts_with(
                "1 variable (0 from checkpoint, 1 from its initializer), 1 tensor, 1 byte ("
            ) && line.contains("; 1 thread); 1 checkpoint byte read; 1 variable (1 byte) left"),
            "{line}"
        );
        // A candle model's Vars kept as they were, beside those whose initializers ran.
        let kept = |from_initializer, kept| {
            let r = LoadReport {
                variables: 4,
                from_checkpoint: 1,
                from_initializer,
                kept,
                ..Default::default()
            };
            r.to_string()
        };
        assert!(kept(0, 3).starts_with("4 variables (1 from checkpoint, 3 kept as they were), "));
        assert!(kept(2, 1).starts_with(
            "4 variables (1 from checkpoint, 2 from initializers, 1 kept as it was), "
        ));
    }

    /// Several GPUs' stats add up, their names joined; the first registration fallback is kept.
    #[test]
    fn device_stats_add_up_over_devices() {
        let one = |n: u64, fallback: Option<&str>| DeviceStats {
            device: format!("cuda:{n}"),
            registered_bytes: n,
            staged_bytes: 10 * n,
            staging_bytes: 100 * n,
            kernels: 1000 * n as usize,
            scratch_bytes: 10_000 * n,
            filled_bytes: 100_000 * n,
            gathered_bytes: 1_000_000 * n,
            broadcast_bytes: 10_000_000 * n,
            registration_fallback: fallback.map(String::from),
            times: DeviceTimes {
                kernel_setup: n as f64,
                scratch: 2.0 * n as f64,
                transfer: 4.0 * n as f64,
                pinning: 8.0 * n as f64,
                registering: 16.0 * n as f64,
                verify: 32.0 * n as f64,
                kernels: 64.0 * n as f64,
            },
        };
        assert!(DeviceStats::total(&[]).is_none());
        let t = DeviceStats::total(&[one(1, None), one(2, Some("b")), one(4, Some("c"))]).unwrap();
        let want = DeviceStats {
            device: "cuda:1, cuda:2, cuda:4".into(),
            ..one(7, Some("b"))
        };
        // Every field, the times included (sums of small powers of two: exact).
        assert_eq!(format!("{t:?}"), format!("{want:?}"));
    }

    /// Progress is reported every 0.5% of the bytes (not for every tiny tensor), and at the last
    /// tensor, which reports the whole load.
    #[test]
    fn progress_is_reported_every_half_percent_and_at_the_end() {
        let seen = Mutex::new(Vec::new());
        let f = |p: Progress| seen.lock().unwrap().push(p);
        let t = Tracker::new(Some(&f), 1000, 1001);
        for _ in 0..1000 {
            t.add(1);
        }
        t.add(0);
        t.complete();
        let seen = seen.into_inner().unwrap();
        let done: Vec<u64> = seen.iter().map(|p| p.bytes_done).collect();
        // The last tensor (0 bytes, past the last step) reports again: the load is done.
        let want = (1..=200).map(|i| 5 * i).chain([1000]).collect::<Vec<_>>();
        assert_eq!(done, want);
        assert_eq!(seen[0].tensors_done, 5);
        let last = seen.last().unwrap();
        assert_eq!((last.tensors_done, last.tensors_total), (1001, 1001));
        // A load that reported some of its tensors on the way (or none, or had none to read)
        // reports its whole at the end, once.
        for (added, total) in [(1, 3), (0, 3), (0, 0)] {
            let seen = Mutex::new(Vec::new());
            let f = |p: Progress| seen.lock().unwrap().push(p);
            let t = Tracker::new(Some(&f), 300, total);
            for _ in 0..added {
                t.add(100);
            }
            t.complete();
            let seen = seen.into_inner().unwrap();
            let whole = Progress {
                bytes_done: 300,
                bytes_total: 300,
                tensors_done: total,
                tensors_total: total,
            };
            assert_eq!(seen.len(), added + 1, "{added} of {total}: {seen:?}");
            assert_eq!(seen.last(), Some(&whole), "{added} of {total}");
        }
        // No callback: nothing counted, nothing reported.
        let t = Tracker::new(None, 1000, 1);
        t.add(1000);
        t.complete();
    }

    /// Two loads in sequence report as one: totals fixed from the first report, counts that
    /// never go back, 100% only at the very end; a first load with nothing to read reports 0%.
    #[test]
    fn loads_in_sequence_report_as_one() {
        for (first, second) in [((100, 2), (50, 1)), ((0, 0), (50, 1))] {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let s = seen.clone();
            let f: Arc<dyn Fn(Progress) + Send + Sync> =
                Arc::new(move |p| s.lock().unwrap().push(p));
            // The first load reports as each tensor completes, the second (a GPU load) only
            // when it completes.
            let a = in_sequence(f.clone(), (0, 0), second);
            let t = Tracker::new(Some(&*a), first.0, first.1);
            if first.1 > 0 {
                t.add(first.0 - 40);
                t.add(40);
            }
            t.complete();
            let b = in_sequence(f, first, (0, 0));
            let t = Tracker::new(Some(&*b), second.0, second.1);
            t.complete();
            let seen = seen.lock().unwrap();
            let total = (first.0 + second.0, first.1 + second.1);
            assert!(seen
                .iter()
                .all(|p| (p.bytes_total, p.tensors_total) == total));
            assert!(seen
                .windows(2)
                .all(|w| w[0].bytes_done <= w[1].bytes_done
                    && w[0].tensors_done <= w[1].tensors_done));
            let last = seen.last().unwrap();
            assert_eq!((last.bytes_done, last.tensors_done), total);
            let full = seen.iter().filter(|p| p.bytes_done == total.0).count();
            assert_eq!(full, 1, "{seen:?}");
        }
    }
}
