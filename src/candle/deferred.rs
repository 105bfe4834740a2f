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
/// ```no_run
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
/// [`keep`](Self::keep). With `candle-cuda`, a GPU `Var` of it that takes a checkpoint value and
/// is not kept loads that value in place (no second copy of the model on the device) and, if the
/// load fails, holds zeros again, whatever the trainer put there meanwhile (name such a `Var` to
/// `keep` first).
#[derive(Clone)]
pub struct DeferredInit {
    varmap: VarMap,
    recorded: Arc<Mutex<Vec<(String, Init)>>>,
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
        };
        let mut made = made().lock().unwrap_or_else(PoisonError::into_inner);
        forget_done(&mut made);
        made.push((key(varmap), deferred.recorded.clone()));
        deferred
    }

    /// The `DeferredInit` over `varmap` whose initializers have not all run, if there is one
    /// (and only one), even if the trainer dropped it with its `VarBuilder` once the model was
    /// built: [`CandleInit::from_varmap`](super::CandleInit::from_varmap) on a `VarMap` it
    /// filled with zeroed `Var`s runs them as `from_deferred` would, rather than leave those no
    /// checkpoint value replaces at zero (a LayerNorm's gamma of zeros zeroes its output).
    pub(super) fn of(varmap: &VarMap) -> Option<DeferredInit> {
        let mut made = made().lock().unwrap_or_else(PoisonError::into_inner);
        forget_done(&mut made);
        let held = varmap.data().lock().unwrap_or_else(PoisonError::into_inner);
        // The same address and every name it made there: the same `VarMap` (an address alone
        // may be a new one's, where a dropped one was).
        let mut pending = made
            .iter()
            .filter(|(k, _)| *k == key(varmap))
            .filter(|(_, r)| {
                let r = r.lock().unwrap_or_else(PoisonError::into_inner);
                !r.is_empty() && r.iter().all(|(name, _)| held.contains_key(name))
            });
        match (pending.next(), pending.next()) {
            (Some((_, recorded)), None) => Some(DeferredInit {
                varmap: varmap.clone(),
                recorded: recorded.clone(),
            }),
            _ => None,
        }
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

    /// Forgets the recorded initializers (they have run).
    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

/// Every `DeferredInit` made, by the address of its `VarMap`'s data, with its recorded
/// initializers (kept after the `DeferredInit` is dropped: its `VarMap` may still hold the
/// zeroed `Var`s, and `from_varmap` then runs them).
type Made = Mutex<Vec<(usize, Recorded)>>;

/// The initializers a `DeferredInit` recorded, by candle name.
type Recorded = Arc<Mutex<Vec<(String, Init)>>>;

/// Forgets the `DeferredInit`s that are gone and have nothing left to run.
fn forget_done(made: &mut Vec<(usize, Recorded)>) {
    made.retain(|(_, r)| {
        Arc::strong_count(r) > 1 || !r.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    });
}

fn made() -> &'static Made {
    static MADE: std::sync::OnceLock<Made> = std::sync::OnceLock::new();
    MADE.get_or_init(Made::default)
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
