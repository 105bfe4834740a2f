//! How a load runs: [`LoadOptions`].

use super::report::Progress;
use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::init::store::Variable;

/// The most worker threads a load starts.
pub(crate) const MAX_THREADS: usize = 4096;

/// How [`VariableStore::initialize_with`](crate::VariableStore::initialize_with) runs.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Worker threads, 1 to 4096 (default: the global rayon pool, one per core; a host load of a
    /// checkpoint on object storage starts at least [`RemoteOptions::concurrency`] threads, up to
    /// 64, since its tensors wait on the network rather than on a core). `Some(0)` is refused.
    pub threads: Option<usize>,
    /// Called from worker threads as tensors complete (about every 0.5% of the bytes, and at the
    /// end); within a load one call at a time, each reporting no less than the one before.
    /// Keep it cheap. A GPU load reports once, when it completes. A candle model with `Var`s
    /// on the host and on GPUs is loaded by a host load, then a GPU load, reported as one: the
    /// totals are both loads' from the first report (one with nothing for the host reports 0%).
    pub progress: Option<std::sync::Arc<dyn Fn(Progress) + Send + Sync>>,
    /// Map large values instead of copying them (default `false`: every value is copied). With
    /// `true`, a value of at least [`map_min_bytes`](Self::map_min_bytes) that a V2 checkpoint
    /// stores exactly as the variable needs it (a whole tensor, or a part equal to a stored slice,
    /// at an offset aligned for its elements) is a copy-on-write mapping of the file, CRC-checked
    /// like any other (see [`Bytes`](crate::Bytes)): no copy and no fresh memory at load. Right
    /// for values that are mostly read (inference, export, uploading elsewhere; `tfckpt init`
    /// does it). Not for values a trainer rewrites: the first write to each 4 KiB page then pays a
    /// fault and a copy, which on this project's VM cost more than copying at load (see the
    /// README), and the value stays tied to the file (its safety contract).
    pub map_values: bool,
    /// The smallest value mapped rather than copied (default 1 MiB; smaller values are cheaper to
    /// copy than to map).
    pub map_min_bytes: Option<u64>,
    /// Convert values of one dtype to another on load (`None`: never, as TensorFlow).
    pub cast: Option<(DType, DType)>,
    /// GPU loads: page-lock the file mappings in place and copy them to the device by DMA from
    /// there; the pinned staging ring then carries only host-owned values and what the driver
    /// refuses to register, and is pinned only if it carries anything, which spares a process
    /// that loads once the pinning of its staging buffers (default `false`: the ring carries
    /// every byte). Off by default because a mix measured slower on an H200: page-locking holds
    /// a driver lock that the ring's copies waited on, so the two paths together moved 20–26 GB/s
    /// where the ring alone moved 33–46 GB/s (README, GPU).
    pub register_mappings: bool,
    /// This process's share of a load spread over processes: `(rank, world)`. The store still
    /// describes the whole model (the call-time checks are the whole model's), but a rank loads
    /// and reads only the variables and parts it owns (see [`ownership`](Self::ownership)); the
    /// others get no value here ([`VariableStore::is_other_rank`](crate::VariableStore::is_other_rank)).
    pub rank: Option<(usize, usize)>,
    /// Which rank owns a variable or part: `f(variable, rank, world)`. Default: part `i` of a
    /// partitioned variable belongs to rank `i % world`, every other variable to every rank.
    /// Every rank must get the same answers, and a load may ask more than once for a variable
    /// (to choose its GPUs, then to load): a function of its arguments, not of a running tally.
    pub ownership: Option<std::sync::Arc<Ownership>>,
    /// Checkpoints on object storage (`s3://`, `gs://`, `http(s)://`; feature `remote`): range
    /// size, requests in flight and retries.
    pub remote: RemoteOptions,
    /// Stops the load once [`CancelToken::cancel`] is called (from another thread, a signal
    /// handler's flag, the progress callback): see [`cancel_on`](Self::cancel_on).
    pub cancel: Option<CancelToken>,
}

/// A flag that stops the loads it is given to ([`LoadOptions::cancel_on`]), from any thread: a
/// trainer shutting down (a preemption notice, `SIGTERM`) need not wait for a long load to end.
/// Clones share the flag. Once cancelled it stays cancelled: a later load with it stops at once.
///
/// ```
/// let cancel = tfckpt::CancelToken::new();
/// let options = tfckpt::LoadOptions::new().cancel_on(&cancel);
/// // From another thread, while `store.initialize_with(&options)` runs:
/// cancel.cancel();
/// # assert!(cancel.is_cancelled() && options.cancel.is_some());
/// ```
#[derive(Clone, Debug, Default)]
pub struct CancelToken(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl CancelToken {
    /// A token not cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Stops every load given this token (or a clone): each ends with
    /// [`ErrorKind::Cancelled`] as soon as its current tensors are done, and leaves the store's
    /// variables as they were before the load (nothing of it counts as initialized; the
    /// trainer's own buffers, given to [`initialize_into`](crate::VariableStore::initialize_into)
    /// or [`set_device_buffer`](crate::VariableStore::set_device_buffer), may be partly
    /// written, as on any failed load).
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`ErrorKind::Cancelled`] once cancelled.
    pub(crate) fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            return Err(ErrorKind::Cancelled.into());
        }
        Ok(())
    }
}

/// An ownership rule: whether `rank` of `world` owns `variable` (see [`LoadOptions::ownership`]).
pub type Ownership = dyn Fn(&Variable, usize, usize) -> bool + Send + Sync;

/// The default ownership rule: part `i` to rank `i % world`, every other variable to every rank.
fn default_owner(v: &Variable, rank: usize, world: usize) -> bool {
    v.part.as_ref().is_none_or(|p| p.index % world == rank)
}

/// How checkpoints on object storage are read (feature `remote`; without it the options exist and
/// are ignored). Tensor bytes are fetched as ranged GETs of at most [`range_bytes`] each, at most
/// [`concurrency`] at a time for a whole load (or read), so host memory in flight stays within
/// `range_bytes × concurrency` (default 16 MiB × 16 = 256 MiB) however large the checkpoint is.
/// Each body is checksummed and copied into its destination piece by piece as it arrives (it is
/// gathered whole only where a range of rows must be re-boxed), so in practice far less is held.
///
/// [`range_bytes`]: Self::range_bytes
/// [`concurrency`]: Self::concurrency
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteOptions {
    /// Bytes per ranged GET (default 16 MiB; at least 64 KiB). A range copied into a box of
    /// another shape (re-partitioning) is a box itself: whole rows of the tensor, or, where a
    /// row is larger than this, runs of the largest sub-rows that fit; never larger than this.
    pub range_bytes: u64,
    /// Ranged GETs in flight at once, all threads together (default 16). Each tensor is read by
    /// its own task, so small tensors (one range each) fill this too.
    pub concurrency: usize,
    /// Retries of a request that failed with a timeout, a connection error or a 5xx status, or
    /// whose body was cut short (default 10). A failure is retried by `object_store` or by
    /// tfckpt, never by both (which would multiply the retries). A body that keeps arriving
    /// renews the count: each request that brought at least 1 MiB (or the rest of its range)
    /// starts it again, so a slow link whose connections drop now and then is read to the end.
    pub max_retries: usize,
    /// The first backoff between retries, doubled each time up to 15 s (default 100 ms; at
    /// least 1 ms and at most 15 s).
    pub initial_backoff: std::time::Duration,
    /// Retries stop once this long has passed since the first try, or since the last request
    /// that brought at least 1 MiB of its range (default 180 s).
    pub retry_timeout: std::time::Duration,
    /// What is fetched whole into host memory when a checkpoint is opened: a V1 checkpoint
    /// (legacy: SSTable files without byte offsets per tensor, all its files together), a V2
    /// index, a `checkpoint` state file. At most this many bytes each (default 1 GiB), beyond
    /// which opening it is an error (for a V1 checkpoint, asking for a local copy) before any of
    /// it is fetched.
    pub whole_max_bytes: u64,
}

impl Default for RemoteOptions {
    fn default() -> RemoteOptions {
        RemoteOptions {
            range_bytes: 16 << 20,
            concurrency: 16,
            max_retries: 10,
            initial_backoff: std::time::Duration::from_millis(100),
            retry_timeout: std::time::Duration::from_secs(180),
            whole_max_bytes: 1 << 30,
        }
    }
}

impl RemoteOptions {
    /// The bound on host memory held by fetched, not yet copied ranges.
    pub fn max_in_flight_bytes(&self) -> u64 {
        self.range_bytes.max(MIN_RANGE) * self.concurrency.max(1) as u64
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.range_bytes < MIN_RANGE || self.range_bytes > u32::MAX as u64 {
            return Err(ErrorKind::InvalidArgument(format!(
                "remote range of {} bytes: between {MIN_RANGE} and {} bytes",
                self.range_bytes,
                u32::MAX
            ))
            .into());
        }
        // `object_store` draws each backoff from `initial..2 × previous` (capped at 15 s): an
        // empty range (a zero start, or one past twice the cap) panics in its random draw.
        if self.initial_backoff < MIN_BACKOFF || self.initial_backoff > MAX_BACKOFF {
            return Err(ErrorKind::InvalidArgument(format!(
                "initial remote backoff of {:?}: between {MIN_BACKOFF:?} and {MAX_BACKOFF:?}",
                self.initial_backoff
            ))
            .into());
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err(ErrorKind::InvalidArgument(format!(
                "{} remote requests in flight: between 1 and 1024",
                self.concurrency
            ))
            .into());
        }
        Ok(())
    }
}

/// The smallest range a remote read fetches at once.
const MIN_RANGE: u64 = 64 << 10;

/// The bounds of [`RemoteOptions::initial_backoff`]; the upper one is also the longest backoff.
const MIN_BACKOFF: std::time::Duration = std::time::Duration::from_millis(1);
pub(crate) const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(15);

impl LoadOptions {
    /// Default options.
    pub fn new() -> LoadOptions {
        LoadOptions::default()
    }

    /// Use `n` worker threads (`0` is taken as 1; more than 4096 is refused when the load
    /// starts).
    pub fn threads(mut self, n: usize) -> LoadOptions {
        self.threads = Some(n.max(1));
        self
    }

    /// Converts every value of dtype `from` to `to` as it loads: float32 to bfloat16 or float16
    /// (round to nearest even), or back. On a GPU the conversion runs on the device; the values
    /// are the same bit for bit on either device. TensorFlow never casts: this is opt-in.
    pub fn cast(mut self, from: DType, to: DType) -> LoadOptions {
        self.cast = Some((from, to));
        self
    }

    /// The dtype a variable of `dtype` has where it lands (after [`cast`](Self::cast)).
    pub(crate) fn dtype_at_destination(&self, dtype: DType) -> DType {
        match self.cast {
            Some((from, to)) if from == dtype => to,
            _ => dtype,
        }
    }

    /// Checks the options before anything is read.
    pub(crate) fn check(&self) -> Result<()> {
        self.remote.check()?;
        if let Some(n) = self.threads.filter(|&n| n == 0 || n > MAX_THREADS) {
            return Err(ErrorKind::InvalidArgument(format!(
                "{n} worker threads: between 1 and {MAX_THREADS} (or None: one per core)"
            ))
            .into());
        }
        if let Some((rank, world)) = self.rank {
            if rank >= world {
                return Err(ErrorKind::InvalidArgument(format!(
                    "rank {rank} of {world}: a rank is below the number of ranks"
                ))
                .into());
            }
        }
        if let Some((from, to)) = self.cast {
            if !super::cast::supported(from, to) {
                return Err(ErrorKind::InvalidArgument(format!(
                    "cannot cast {from} to {to} on load (float32 <-> bfloat16 or float16 only)"
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Loads only what rank `rank` of `world` owns (see [`LoadOptions::rank`]).
    pub fn rank(mut self, rank: usize, world: usize) -> LoadOptions {
        self.rank = Some((rank, world));
        self
    }

    /// Sets the ownership rule of a ranked load (see [`LoadOptions::ownership`]).
    pub fn ownership(
        mut self,
        f: impl Fn(&Variable, usize, usize) -> bool + Send + Sync + 'static,
    ) -> LoadOptions {
        self.ownership = Some(std::sync::Arc::new(f));
        self
    }

    /// [`ErrorKind::Cancelled`] once the load's [`CancelToken`] is cancelled.
    pub(crate) fn check_cancelled(&self) -> Result<()> {
        self.cancel.as_ref().map_or(Ok(()), CancelToken::check)
    }

    /// Whether this load owns `v` (always, without [`rank`](Self::rank)).
    pub(crate) fn owns(&self, v: &Variable) -> bool {
        match (self.rank, &self.ownership) {
            (None, _) => true,
            (Some((rank, world)), Some(f)) => f(v, rank, world),
            (Some((rank, world)), None) => default_owner(v, rank, world),
        }
    }

    /// Refuses a trainer's buffer (`names`, host or device) for a variable this rank does not
    /// own: the load would leave it as it was, silently. `vars` are the variables it owns; the
    /// error names the first such variable by name.
    pub(crate) fn check_buffers_owned<'n>(
        &self,
        names: impl Iterator<Item = &'n str>,
        vars: &[&Variable],
    ) -> Result<()> {
        let Some((rank, world)) = self.rank else {
            return Ok(());
        };
        let owned: std::collections::HashSet<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        match names.filter(|n| !owned.contains(n)).min() {
            None => Ok(()),
            Some(name) => Err(ErrorKind::BadVariable {
                name: name.into(),
                reason: format!(
                    "a buffer is given for it, but rank {rank} of {world} does not own it \
                     (LoadOptions::rank): a rank loads only its own variables and parts, and \
                     would leave the buffer as it was"
                ),
            }
            .into()),
        }
    }

    /// Stops the load when `token` is cancelled: it is checked before each stored tensor is read
    /// (a tensor being read completes first; on a GPU, before each unit of up to 64 MiB the
    /// staging ring takes, or each batch the registered path takes; on object storage, also as
    /// the pieces of a tensor's answers arrive and every 0.1 s while it waits for them, and
    /// during the requests that open a checkpoint or check that it is unchanged) and before the
    /// load completes, and a cancelled load
    /// is an error, [`ErrorKind::Cancelled`], that leaves the store as it was (nothing of this
    /// load counts as initialized; a GPU load frees what it allocated). A load that has completed
    /// is not undone.
    pub fn cancel_on(mut self, token: &CancelToken) -> LoadOptions {
        self.cancel = Some(token.clone());
        self
    }

    /// Report progress to `f`.
    pub fn progress(mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> LoadOptions {
        self.progress = Some(std::sync::Arc::new(f));
        self
    }
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("map_values", &self.map_values)
            .field("map_min_bytes", &self.map_min_bytes)
            .field("cast", &self.cast)
            .field("register_mappings", &self.register_mappings)
            .field("rank", &self.rank)
            .field("ownership", &self.ownership.is_some())
            .field("remote", &self.remote)
            .field("cancel", &self.cancel)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::store::{Init, VariableStore};
    use std::time::Duration;

    fn refused(r: &RemoteOptions) -> String {
        match r.check() {
            Ok(()) => panic!("{r:?} accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// Each bound of the remote options is taken, and one past it refused, naming the value.
    #[test]
    fn remote_options_are_checked_at_each_bound() {
        let ok = |f: fn(&mut RemoteOptions)| {
            let mut r = RemoteOptions::default();
            f(&mut r);
            r.check().unwrap_or_else(|e| panic!("{r:?}: {e}"));
        };
        let bad = |f: fn(&mut RemoteOptions), says: &str| {
            let mut r = RemoteOptions::default();
            f(&mut r);
            let e = refused(&r);
            assert!(e.contains(says), "{e}");
        };
        ok(|_| ());
        ok(|r| r.range_bytes = 64 << 10);
        ok(|r| r.range_bytes = u32::MAX as u64);
        bad(
            |r| r.range_bytes = (64 << 10) - 1,
            "remote range of 65535 bytes: between 65536 and 4294967295 bytes",
        );
        bad(
            |r| r.range_bytes = u32::MAX as u64 + 1,
            "remote range of 4294967296 bytes",
        );
        bad(|r| r.range_bytes = 0, "remote range of 0 bytes");
        ok(|r| r.initial_backoff = Duration::from_millis(1));
        ok(|r| r.initial_backoff = Duration::from_secs(15));
        bad(
            |r| r.initial_backoff = Duration::from_micros(999),
            "initial remote backoff of 999",
        );
        bad(
            |r| r.initial_backoff = Duration::from_millis(15_001),
            "initial remote backoff of 15.001s: between 1ms and 15s",
        );
        ok(|r| r.concurrency = 1);
        ok(|r| r.concurrency = 1024);
        bad(
            |r| r.concurrency = 0,
            "0 remote requests in flight: between 1 and 1024",
        );
        bad(|r| r.concurrency = 1025, "1025 remote requests in flight");
        // Whatever else is wrong, each check stands alone.
        bad(
            |r| (r.range_bytes, r.concurrency) = (1 << 20, 0),
            "0 remote requests in flight",
        );
    }

    #[test]
    fn memory_in_flight_is_ranges_times_requests() {
        let r = RemoteOptions::default();
        assert_eq!(r.max_in_flight_bytes(), 256 << 20);
        let r = RemoteOptions {
            range_bytes: 3 << 20,
            concurrency: 5,
            ..Default::default()
        };
        assert_eq!(r.max_in_flight_bytes(), 15 << 20);
        // Counted as the checks would make them (a range of at least 64 KiB, one request).
        let r = RemoteOptions {
            range_bytes: 1,
            concurrency: 0,
            ..Default::default()
        };
        assert_eq!(r.max_in_flight_bytes(), 64 << 10);
    }

    #[test]
    fn load_options_are_checked_before_anything_is_read() {
        let says = |o: LoadOptions, what: &str| {
            let e = o.check().unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        };
        LoadOptions::new().check().unwrap();
        for n in [1, MAX_THREADS] {
            LoadOptions {
                threads: Some(n),
                ..Default::default()
            }
            .check()
            .unwrap();
        }
        for n in [0, MAX_THREADS + 1] {
            let o = LoadOptions {
                threads: Some(n),
                ..Default::default()
            };
            says(o, &format!("{n} worker threads: between 1 and 4096"));
        }
        assert_eq!(LoadOptions::new().threads(0).threads, Some(1));
        LoadOptions::new().rank(1, 2).check().unwrap();
        says(
            LoadOptions::new().rank(2, 2),
            "rank 2 of 2: a rank is below the number of ranks",
        );
        LoadOptions::new()
            .cast(DType::F32, DType::BF16)
            .check()
            .unwrap();
        says(
            LoadOptions::new().cast(DType::F32, DType::F64),
            "cannot cast float32 to float64",
        );
        let mut o = LoadOptions::new();
        o.remote.concurrency = 0;
        says(o, "remote requests in flight");
    }

    #[test]
    fn a_cast_applies_to_its_dtype_only() {
        let o = LoadOptions::new().cast(DType::F32, DType::BF16);
        assert_eq!(o.dtype_at_destination(DType::F32), DType::BF16);
        assert_eq!(o.dtype_at_destination(DType::F16), DType::F16);
        assert_eq!(
            LoadOptions::new().dtype_at_destination(DType::F32),
            DType::F32
        );
    }

    /// Part `i` belongs to rank `i % world`; a whole variable to every rank; without a rank,
    /// everything to this load; an ownership rule replaces the default.
    #[test]
    fn who_owns_what() {
        let mut store = VariableStore::new();
        store
            .get_partitioned_variable("emb", &[7, 2], DType::F32, &[7, 1], Init::Zeros)
            .unwrap();
        store
            .get_variable("bias", &[2], DType::F32, Init::Zeros)
            .unwrap();
        let part = |i: usize| store.variable(&format!("emb/part_{i}")).unwrap();
        let bias = store.variable("bias").unwrap();
        for world in 1..=3 {
            for rank in 0..world {
                let o = LoadOptions::new().rank(rank, world);
                let owned: Vec<usize> = (0..7).filter(|&i| o.owns(part(i))).collect();
                let want: Vec<usize> = (0..7).filter(|i| i % world == rank).collect();
                assert_eq!(owned, want, "rank {rank} of {world}");
                assert!(o.owns(bias));
            }
        }
        assert!((0..7).all(|i| LoadOptions::new().owns(part(i))));
        let o = LoadOptions::new()
            .rank(1, 2)
            .ownership(|v, rank, world| v.part.is_none() && (rank, world) == (1, 2));
        assert!(o.owns(bias) && !o.owns(part(1)));
    }

    /// What a progress callback or an ownership rule is cannot be printed; whether one is set is.
    #[test]
    fn load_options_print_what_is_set() {
        let o = LoadOptions::new().threads(3).progress(|_| ()).rank(0, 2);
        let d = format!("{o:?}");
        for part in [
            "LoadOptions { threads: Some(3), progress: true, map_values: false, ",
            "rank: Some((0, 2)), ownership: false, remote: RemoteOptions { range_bytes: 16777216, ",
            "cancel: None }",
        ] {
            assert!(d.contains(part), "{d}");
        }
    }

    #[test]
    fn a_cancel_token_stays_cancelled_and_its_clones_share_it() {
        let t = CancelToken::new();
        let o = LoadOptions::new().cancel_on(&t);
        o.check_cancelled().unwrap();
        LoadOptions::new().check_cancelled().unwrap();
        t.clone().cancel();
        assert!(t.is_cancelled());
        assert!(matches!(
            o.check_cancelled().unwrap_err().kind(),
            ErrorKind::Cancelled
        ));
        t.cancel();
        assert!(o.cancel.as_ref().unwrap().is_cancelled());
    }
}
