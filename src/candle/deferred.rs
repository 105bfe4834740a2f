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
/// let deferred = DeferredInit::new();
/// let vb = deferred.var_builder(&varmap, DType::F32, &Device::Cpu);
/// let head = candle_nn::linear(768, 2, vb.pp("classifier"))?; // ... the model, as usual
/// let mut init = CandleInit::from_varmap(&varmap, &Convention::tf1())?.with_deferred(&deferred);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Until `initialize` has run, the `Var`s it made hold zeros.
#[derive(Clone, Default)]
pub struct DeferredInit(Arc<Mutex<Vec<(String, Init)>>>);

impl DeferredInit {
    /// An empty set of deferred initializers.
    pub fn new() -> DeferredInit {
        DeferredInit::default()
    }

    /// A `VarBuilder` over `varmap` (as `VarBuilder::from_varmap`) that makes each new `Var`
    /// zeroed and records its initializer here.
    pub fn var_builder(
        &self,
        varmap: &VarMap,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let backend = Backend {
            varmap: varmap.clone(),
            deferred: self.clone(),
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// The recorded initializers, by candle name.
    pub(super) fn recorded(&self) -> Vec<(String, Init)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the recorded initializers (they have run).
    pub(super) fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn record(&self, name: &str, init: Init) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.to_string(), init));
    }
}

struct Backend {
    varmap: VarMap,
    deferred: DeferredInit,
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        // A new `Var` is made zeroed, which costs no pass over its memory.
        let known = self
            .varmap
            .data()
            .lock()
            .map_or(true, |d| d.contains_key(name));
        let t = self
            .varmap
            .get(s, name, candle_nn::init::ZERO, dtype, dev)?;
        if !known {
            self.deferred.record(name, h);
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
