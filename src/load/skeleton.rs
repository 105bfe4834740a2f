//! The one load skeleton, for every device: `initialize` (TF's `global_variables_initializer()`)
//! runs every initializer at once. [`run`] reopens the checkpoints, plans the reads (each stored
//! tensor once, in file order, with every variable or part it feeds), runs the initializers of
//! unmapped variables, keeps the all-or-nothing promise and writes the report; a [`Destination`]
//! only says how bytes land (host memory, a GPU, later a trainer's own tensors). On any error the
//! store is left as it was: nothing of this load counts as initialized (an earlier successful
//! load's values stay).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::options::LoadOptions;
use super::plan::{plan, LoadPlan, PlanItem};
use super::report::{LoadReport, Tracker};
use crate::base::device::DeviceTensor;
use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::base::slice::{num_elements, Slice};
use crate::base::tensor::Tensor;
use crate::init::initializer::init_element;
use crate::init::store::{Variable, VariableStore};
use crate::reader::checkpoint::Checkpoint;
use crate::reader::stored::Stored;

/// Where a load puts the values.
pub(crate) trait Destination {
    /// Prepares memory for every variable the load sets, before anything is read.
    fn prepare(&mut self, vars: &[&Variable], options: &LoadOptions) -> Result<()>;

    /// The variables the trainer gave this destination buffers for (none by default).
    fn buffer_names(&self) -> Vec<&str> {
        Vec::new()
    }

    /// Loads every planned read. Adds what it read to `report` (`stored_reads`, `bytes`,
    /// `mapped_bytes`).
    fn load(&mut self, reads: &Reads<'_>, report: &mut LoadReport) -> Result<()>;

    /// Sets an unmapped variable from its own initializer: `elem` is one element of it in `dtype`,
    /// the dtype the variable has at this destination.
    fn initialize(&mut self, v: &Variable, dtype: DType, elem: &[u8]) -> Result<()>;

    /// Completes the load (waits for the device, checks what is still unchecked) and hands over
    /// every value.
    fn finish(self, report: &mut LoadReport) -> Result<Values>;
}

/// The planned reads of one load, as a destination gets them.
pub(crate) struct Reads<'a> {
    /// The checkpoints, by the index the plan uses.
    pub ckpts: &'a [Arc<Checkpoint>],
    pub plan: &'a LoadPlan<'a>,
    pub options: &'a LoadOptions,
    pub tracker: &'a Tracker<'a>,
}

impl Reads<'_> {
    /// The stored tensor `it` reads. A tensor missing now was there at the call (the checkpoint
    /// was written again since): the error names the variable it was for.
    pub fn stored(&self, it: &PlanItem<'_>) -> Result<Stored<'_>> {
        self.ckpts[it.ckpt]
            .stored(it.tensor)
            .map_err(|e| match e.kind() {
                ErrorKind::TensorNotFound { ckpt, tensor, .. } => ErrorKind::TensorGone {
                    ckpt: ckpt.clone(),
                    tensor: tensor.clone(),
                    variable: it
                        .dests
                        .first()
                        .map_or_else(String::new, |d| d.0.name.clone()),
                }
                .into(),
                _ => e,
            })
    }
}

/// The values a destination hands over: in host memory (every value of a host load; string
/// variables of a device load) and in device memory.
#[derive(Default)]
pub(crate) struct Values {
    pub host: Vec<(String, Tensor)>,
    pub device: Vec<(String, DeviceTensor)>,
    /// Every replica of each replicated variable (the first is also in `device`).
    pub replicas: Vec<(String, Vec<DeviceTensor>)>,
    /// Whether the trainer's device buffers were loaded into (they are then the values' memory,
    /// and the store forgets them as buffers to load into).
    pub used_device_buffers: bool,
}

/// Runs every initializer of `store` with `dest`.
pub(crate) fn run<D: Destination>(
    store: &mut VariableStore,
    mut dest: D,
    options: &LoadOptions,
) -> Result<LoadReport> {
    options.check()?;
    options.check_cancelled()?;
    let _reading = crate::base::sigbus::reading();
    let start = Instant::now();
    let (ckpts, ids) = store.open_pending(&options.remote, options.cancel.as_ref())?;
    // Checkpoints on object storage: this load's range size, concurrency and retries, and one
    // bound on the bytes in flight for all of them together.
    // The budget (and with it the load's cancel token) is taken off the checkpoints when the
    // load ends, however it ends: a trainer's own checkpoint reads on after it.
    #[cfg(feature = "remote")]
    let _configured = {
        let budget = crate::remote::fetch::Budget::cancellable(
            options.remote.concurrency,
            options.remote.max_in_flight_bytes(),
            options.cancel.clone(),
        );
        let configured = Configured {
            ckpts: &ckpts,
            budget,
        };
        for c in &ckpts {
            c.configure_remote(&options.remote, &configured.budget)?;
        }
        configured
    };
    // A ranked load materializes and reads only what this rank owns (the ownership rule may be
    // the trainer's code: not marked as reading for the library).
    let owned = crate::base::sigbus::paused();
    // The rule is asked once per variable: each is then either this rank's (loaded or
    // initialized here) or another's, whatever a rule with state would answer a second time.
    let (vars, elsewhere): (Vec<&Variable>, Vec<&Variable>) =
        store.vars.values().partition(|v| options.owns(v));
    drop(owned);
    // The trainer's buffers (its device buffers, whichever destination runs: a rank that owns
    // nothing on a GPU loads on the host; and the destination's own) for another rank's
    // variables would be left as they were.
    let given = dest.buffer_names();
    let buffers = store.device_buffers.keys().map(String::as_str);
    options.check_buffers_owned(buffers.chain(given), &vars)?;
    let mine: std::collections::HashSet<&str> = vars.iter().map(|v| v.name.as_str()).collect();
    let pending: Vec<PendingRead<'_>> = store
        .planned_pending(&ids)
        .into_iter()
        .filter(|p| mine.contains(p.0.name.as_str()))
        .collect();
    let plan = plan(
        pending,
        |c, t| ckpts[c].stored(t).ok().and_then(|s| s.position()),
        |d| options.dtype_at_destination(d),
    );
    let mut report = LoadReport {
        threads: crate::base::par::current_num_threads(),
        warnings: store.warnings.clone(),
        tensors: plan.items.len(),
        skipped_variables: elsewhere.len(),
        // In the dtype the values would be held in, as `bytes` counts them.
        skipped_bytes: elsewhere.iter().fold(0u64, |sum, v| {
            sum.saturating_add(value_bytes(v, options.dtype_at_destination(v.dtype)))
        }),
        ..Default::default()
    };
    let elsewhere: Vec<String> = elsewhere.into_iter().map(|v| v.name.clone()).collect();
    debug_assert!(
        options.rank.is_some()
            || progress_totals(store, options) == (plan.bytes, plan.items.len() as u64),
        "progress_totals must count what the plan does"
    );
    dest.prepare(&vars, options)?;
    let planned = Instant::now();
    let tracker = Tracker::new(
        options.progress.as_deref(),
        plan.bytes,
        plan.items.len() as u64,
    );
    let reads = Reads {
        ckpts: &ckpts,
        plan: &plan,
        options,
        tracker: &tracker,
    };
    dest.load(&reads, &mut report)?;
    options.check_cancelled()?;
    let loaded = Instant::now();
    // The variables no pending initializer maps (both maps are sorted by name: one merge walk).
    let mut pending = store.pending.keys().peekable();
    for v in &vars {
        while pending.next_if(|k| k.as_str() < v.name.as_str()).is_some() {}
        if pending.next_if(|k| **k == v.name).is_some() {
            continue;
        }
        let dtype = options.dtype_at_destination(v.dtype);
        // `init_element` accepted this (dtype, initializer) when the variable was made.
        let elem = init_element(v.dtype, v.init).unwrap_or_default();
        let mut at_destination = vec![0u8; dtype.size().unwrap_or(0)];
        super::cast::convert(v.dtype, dtype, &elem, &mut at_destination);
        dest.initialize(v, dtype, &at_destination)?;
        report.from_initializer += 1;
    }
    let initialized = Instant::now();
    let values = dest.finish(&mut report)?;
    // Each byte was checked as it was read; a file written in place meanwhile may have given a
    // value bytes other than those checked (a value mapped copy-on-write shows the file's own).
    for c in ckpts.iter() {
        c.unchanged()?;
    }
    tracker.complete();
    let finished = Instant::now();
    report.from_checkpoint = plan.items.iter().map(|it| it.dests.len()).sum();
    report.variables = vars.len();
    report.parts = vars.iter().filter(|v| v.part.is_some()).count();
    drop(vars);
    store.commit(values, elsewhere);
    report.plan_seconds = (planned - start).as_secs_f64();
    report.load_seconds = ((loaded - planned) + (finished - initialized)).as_secs_f64();
    report.finish_seconds = ((initialized - loaded) + finished.elapsed()).as_secs_f64();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// What a load of `store` without a rank reports its progress against, as [`run`] plans it:
/// the bytes the mapped variables will hold and the checkpoint tensors to read. Opens nothing.
pub(crate) fn progress_totals(store: &VariableStore, options: &LoadOptions) -> (u64, u64) {
    let mut tensors = std::collections::HashSet::new();
    let mut bytes = 0u64;
    for (name, p) in &store.pending {
        let Some(v) = store.vars.get(name) else {
            continue;
        };
        tensors.insert((&p.checkpoint, p.tensor.as_str()));
        bytes = bytes.saturating_add(value_bytes(v, options.dtype_at_destination(v.dtype)));
    }
    (bytes, tensors.len() as u64)
}

/// The checkpoints of a load configured with its budget, until it is dropped.
#[cfg(feature = "remote")]
struct Configured<'a> {
    ckpts: &'a [Arc<Checkpoint>],
    budget: Arc<crate::remote::fetch::Budget>,
}

#[cfg(feature = "remote")]
impl Drop for Configured<'_> {
    fn drop(&mut self) {
        for c in self.ckpts {
            c.unconfigure_remote(&self.budget);
        }
    }
}

/// The bytes of a variable's value held as `held` (its own dtype, or another under a cast;
/// fixed-size dtypes, 0 for strings). Saturating: a hostile checkpoint's shapes may overflow.
pub(crate) fn value_bytes(v: &Variable, held: DType) -> u64 {
    num_elements(&v.shape)
        .unwrap_or(0)
        .saturating_mul(held.size().unwrap_or(0) as u64)
}

/// The bytes of the stored entries of one stored tensor that `dests` overlap (each is read
/// whole); fixed-size dtypes only. A destination adds it to `LoadReport::stored_bytes`.
pub(crate) fn stored_bytes(stored: &Stored<'_>, dests: &[(&Variable, &Slice)]) -> u64 {
    let size = stored.info.dtype.size().unwrap_or(0) as u64;
    if stored.info.slices.is_empty() {
        return crate::base::slice::num_elements(&stored.info.shape).unwrap_or(0) * size;
    }
    let wants =
        crate::base::slice::RegionIndex::of(dests.iter().map(|d| d.1.region(&stored.info.shape)));
    stored
        .pieces()
        .all()
        .iter()
        .filter(|p| wants.overlapping(&p.region).is_some())
        .map(|p| p.region.num_elements().unwrap_or(0) * size)
        .sum()
}

/// A pending initializer as the planner takes it: variable, checkpoint (index into the opened
/// ones), tensor, box.
pub(crate) type PendingRead<'s> = (&'s Variable, usize, &'s str, &'s Slice);

impl VariableStore {
    /// Opens each checkpoint of the pending initializers once, reusing the index read by
    /// `init_from_checkpoint` when its files are unchanged (and reopening it otherwise). Returns
    /// the checkpoints and, for each pending checkpoint path, its index among them. A checkpoint
    /// on object storage is reopened with this load's `remote` options. A cancelled load stops
    /// before the next checkpoint's check or open (each of which asks object storage once or
    /// more), or while it waits for their answers; what it had opened stays the store's.
    #[allow(clippy::type_complexity)]
    fn open_pending(
        &mut self,
        remote: &crate::RemoteOptions,
        cancel: Option<&crate::load::CancelToken>,
    ) -> Result<(Vec<Arc<Checkpoint>>, HashMap<Arc<Path>, usize>)> {
        let mut opened = std::mem::take(&mut self.opened);
        let mut ckpts: Vec<Arc<Checkpoint>> = Vec::new();
        let mut ids: HashMap<Arc<Path>, usize> = HashMap::new();
        for (var, p) in &self.pending {
            if !self.vars.contains_key(var) || ids.contains_key(&p.checkpoint) {
                continue;
            }
            let next = cancel.map_or(Ok(()), |c| c.check()).and_then(|()| {
                // Its requests on object storage (the check that it is unchanged, an open) give up
                // once the load is cancelled: a check cut short says "changed", and the open
                // then fails as cancelled before it asks anything.
                #[cfg(feature = "remote")]
                let _scope = crate::remote::cancel_scope(cancel);
                let reuse = opened
                    .iter()
                    .position(|c| c.prefix() == &*p.checkpoint && c.is_current());
                Ok(match reuse {
                    Some(i) => opened.swap_remove(i),
                    None => Arc::new(Checkpoint::open_with(&p.checkpoint, remote)?),
                })
            });
            match next {
                Ok(c) => ckpts.push(c),
                Err(e) => {
                    self.opened = opened.into_iter().chain(ckpts).collect();
                    return Err(e);
                }
            }
            ids.insert(p.checkpoint.clone(), ckpts.len() - 1);
        }
        Ok((ckpts, ids))
    }

    /// The pending initializers of variables still in the store, with the index of their
    /// checkpoint (see [`open_pending`](Self::open_pending)).
    fn planned_pending<'s>(&'s self, ids: &HashMap<Arc<Path>, usize>) -> Vec<PendingRead<'s>> {
        self.pending
            .iter()
            .filter_map(|(var, p)| {
                let v = self.vars.get(var)?;
                let c = *ids.get(&p.checkpoint)?;
                Some((v, c, p.tensor.as_str(), &p.slice))
            })
            .collect()
    }

    /// Records the values of a successful load (the only change `initialize` makes to the store)
    /// and the variables it left to other ranks.
    fn commit(&mut self, values: Values, elsewhere: Vec<String>) {
        self.initialized = self.vars.len();
        self.elsewhere = elsewhere.into_iter().collect();
        let mut host = values.host;
        // Nearly sorted already (file order); sorted input builds the map in one pass.
        host.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.values = BTreeMap::from_iter(host);
        self.device_values = values.device.into_iter().collect();
        self.replica_values = values.replicas.into_iter().collect();
        if values.used_device_buffers {
            self.device_buffers.clear();
        }
    }
}
