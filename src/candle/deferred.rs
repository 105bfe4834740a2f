//! Candle's own initializers, run only for the `Var`s no checkpoint value replaces.

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

/// Defers candle's initialization of a model's `Var`s until
/// [`CandleInit::initialize`](super::CandleInit::initialize), which runs it only for the `Var`s
/// that take no checkpoint value: a model about to be loaded does not pay for random weights it
/// throws away (candle's `randn` fills about 0.2 GB/s per core).
///
/// ```
/// # use candle_core::{DType, Device};
/// # use candle_nn::VarMap;
/// use tfckpt::candle::{CandleInit, Convention, DeferredInit};
///
/// let varmap = VarMap::new();
/// let deferred = DeferredInit::new(&varmap);
/// let vb = deferred.var_builder(DType::F32, &Device::Cpu);
/// let head = candle_nn::linear(768, 2, vb.pp("classifier"))?; // ... the model, as usual
/// let mut init = CandleInit::from_deferred(&deferred, &Convention::tf1())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Until `initialize` has run, the `Var`s it made hold zeros. `initialize` then runs the
/// initializer of every such `Var` that takes no checkpoint value, whatever it holds meanwhile
/// (as TensorFlow's `global_variables_initializer()` does): a `Var` the trainer fills by hand
/// (a head loaded from another file, say) keeps that value only when named to
/// [`keep`](Self::keep). A `Var` the trainer puts in the `VarMap` in place of one it made (a
/// pre-trained head, or tied weights: another `Var` of the model under a second name) is the
/// trainer's: no initializer runs over it, and it is never loaded in place.
/// Candle's values become the `Var`s' by exchanging storages, not by copies, so on a GPU too
/// nothing is half done. With `candle-cuda`, a GPU `Var` of it that takes a checkpoint value and
/// is not kept loads that value in place (no second copy of the model on the device) and, if the
/// load fails, holds zeros again, whatever the trainer put there meanwhile (name such a `Var` to
/// `keep` first).
#[derive(Clone)]
pub struct DeferredInit {
    varmap: VarMap,
    recorded: Recorded,
    /// Every `Var` it made, by name and tensor id (unique in the process): what tells its
    /// `VarMap` from a later one at the same address.
    made: Made,
}

impl std::fmt::Debug for DeferredInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let recorded = self.recorded.lock().map_or(0, |r| r.len());
        f.debug_struct("DeferredInit")
            .field("recorded", &recorded)
            .finish_non_exhaustive()
    }
}

impl DeferredInit {
    /// Defers the initializers of the `Var`s made in `varmap` through
    /// [`var_builder`](Self::var_builder).
    pub fn new(varmap: &VarMap) -> DeferredInit {
        let deferred = DeferredInit {
            varmap: varmap.clone(),
            recorded: Arc::default(),
            made: Arc::default(),
        };
        let mut registry = registry().lock().unwrap_or_else(PoisonError::into_inner);
        forget_done(&mut registry, varmap);
        registry.push(Entry {
            key: key(varmap),
            recorded: deferred.recorded.clone(),
            made: deferred.made.clone(),
        });
        deferred
    }

    /// Every `DeferredInit` over `varmap` whose initializers have not all run (the model's body
    /// and its head may come from two), even if the trainer dropped it with its `VarBuilder` once
    /// the model was built: [`CandleInit::from_varmap`](super::CandleInit::from_varmap) on a
    /// `VarMap` they filled with zeroed `Var`s runs them as `from_deferred` would, rather than
    /// leave those no checkpoint value replaces at zero (a LayerNorm's gamma of zeros zeroes its
    /// output).
    pub(super) fn pending_over(varmap: &VarMap) -> Vec<DeferredInit> {
        let mut registry = registry().lock().unwrap_or_else(PoisonError::into_inner);
        forget_done(&mut registry, varmap);
        registry
            .iter()
            .filter(|e| {
                e.key == key(varmap)
                    && !e
                        .recorded
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .is_empty()
            })
            .map(|e| DeferredInit {
                varmap: varmap.clone(),
                recorded: e.recorded.clone(),
                made: e.made.clone(),
            })
            .collect()
    }

    /// Whether `other` is this `DeferredInit` (or a clone of it).
    pub(super) fn is(&self, other: &DeferredInit) -> bool {
        Arc::ptr_eq(&self.recorded, &other.recorded)
    }

    /// A `VarBuilder` over the `VarMap` (as `VarBuilder::from_varmap`) that makes each new `Var`
    /// zeroed and records its initializer here.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// `Var` `name` (a candle name) keeps what it holds: `initialize` runs no initializer for it
    /// (a checkpoint value mapped to it still loads). For a `Var` the trainer fills itself before
    /// `initialize`. Returns whether its initializer was recorded here (and so is now dropped).
    pub fn keep(&self, name: &str) -> bool {
        let mut recorded = self.lock();
        let before = recorded.len();
        recorded.retain(|(n, _)| n != name);
        recorded.len() != before
    }

    /// The `VarMap`.
    pub(super) fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Init)>> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The recorded initializers, by candle name.
    pub(super) fn recorded(&self) -> Vec<(String, Init)> {
        self.lock().clone()
    }

    /// The `Var`s it made: tensor id (unique in the process) and the name each was made under.
    pub(super) fn made(&self) -> Vec<(candle_core::TensorId, String)> {
        self.made
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, id)| (*id, name.clone()))
            .collect()
    }

    /// Forgets the recorded initializers (they have run).
    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

/// The initializers a `DeferredInit` recorded, by candle name.
type Recorded = Arc<Mutex<Vec<(String, Init)>>>;

/// The `Var`s a `DeferredInit` made, by candle name and tensor id.
type Made = Arc<Mutex<Vec<(String, candle_core::TensorId)>>>;

/// A `DeferredInit` of the registry: kept after the `DeferredInit` is dropped, since its
/// `VarMap` may still hold the zeroed `Var`s, and `from_varmap` then runs their initializers.
struct Entry {
    /// The address of its `VarMap`'s data.
    key: usize,
    recorded: Recorded,
    made: Made,
}

type Registry = Mutex<Vec<Entry>>;

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// Forgets the `DeferredInit`s that are gone and have nothing left to run, and those of a dropped
/// `VarMap` at `varmap`'s address (a `Var` they made is not `varmap`'s: the allocator gave the
/// address to a new one). A live `DeferredInit` holds its `VarMap`, so its address is its own.
fn forget_done(registry: &mut Vec<Entry>, varmap: &VarMap) {
    let held = varmap.data().lock().unwrap_or_else(PoisonError::into_inner);
    let here = key(varmap);
    registry.retain(|e| {
        let live = Arc::strong_count(&e.recorded) > 1;
        let pending = !e
            .recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        // One `Var` it made still there proves the same `VarMap` (tensor ids are unique in
        // the process), even if the trainer replaced others since.
        let stale = e.key == here
            && !e
                .made
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|(name, id)| held.get(name).is_some_and(|v| v.id() == *id));
        live || (pending && !stale)
    });
}

fn key(varmap: &VarMap) -> usize {
    varmap.data() as *const _ as usize
}

impl SimpleBackend for DeferredInit {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        // A new `Var` is made zeroed, which costs no pass over its memory.
        let known = self.contains_tensor(name);
        let t = self
            .varmap
            .get(s, name, candle_nn::init::ZERO, dtype, dev)?;
        if !known {
            self.lock().push((name.to_string(), h));
            self.made
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((name.to_string(), t.id()));
        }
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("`get_unchecked` of {name}: a VarMap makes Vars only with a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(name)
    }
}
