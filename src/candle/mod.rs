//! TensorFlow checkpoints straight into [candle](https://github.com/huggingface/candle) models
//! (feature `candle`).
//!
//! The trainer builds its model exactly as usual from a `VarMap`. [`CandleInit::from_varmap`]
//! derives the variable store from it under a naming [`Convention`] (TF names and TF shapes: a
//! `Linear` weight, or a convolution's, is known as its transposed TF kernel, a depthwise
//! convolution's too),
//! [`CandleInit::init_from_checkpoint`] maps
//! checkpoint tensors onto it with every form of assignment map, checking names, shapes and dtypes
//! at call time, and [`CandleInit::initialize`] loads the values into the `Var`s. Each value is
//! read once from the file mapping, CRC-checked and copied (transposed on the way where the
//! convention says so) into memory that then becomes the `Var`'s storage: no intermediate buffer,
//! no second copy, and every clone of the `Var` (the model's layers hold them) sees the values. (A
//! value converted by the [`DtypePolicy`] is read in its stored dtype first, then converted into
//! that storage: one buffer of the stored value on the way, two where it is also transposed.)
//! (Until that swap a mapped `Var` holds its old storage beside the new one: up to twice the
//! mapped model in memory for a model candle initialized, and little more than once for one built
//! through [`DeferredInit`], whose untouched zeroed storage is mostly not resident.)
//! `Var`s no mapping touches keep candle's initialization. All or nothing: unless every value
//! loaded, no `Var` changes. After fine-tuning, [`CandleInit::save_checkpoint`] writes the `Var`s
//! back as a TensorFlow checkpoint, under the same names and in TensorFlow's layout.
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use tfckpt::candle::{CandleInit, Convention};
//! # let dir = tempfile::tempdir()?;
//! # let ckpt = dir.path().join("bert_model.ckpt");
//! # let mut w = tfckpt::CheckpointWriter::create(&ckpt, Default::default())?;
//! # let kernel: Vec<f32> = (0..64).map(|i| i as f32).collect(); // TensorFlow's [in, out]
//! # let kernel = tfckpt::Tensor::from_f32(&[8, 8], &kernel).unwrap();
//! # w.add("bert/pooler/dense/kernel", (&kernel).into())?;
//! # let bias = tfckpt::Tensor::from_f32(&[8], &[0.0; 8]).unwrap();
//! # w.add("bert/pooler/dense/bias", (&bias).into())?;
//! # w.finish()?;
//! # let fine_tuned = dir.path().join("fine_tuned.ckpt");
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let pooler = candle_nn::linear(8, 8, vb.pp("bert.pooler.dense"))?; // ... the pre-trained body
//! let head = candle_nn::linear(8, 2, vb.pp("classifier"))?;          // a fresh head
//! let mut init = CandleInit::from_varmap(&varmap, &Convention::tf1())?; // or from_deferred
//! let found = init.map_existing(&ckpt)?; // every Var the checkpoint holds
//! println!("{found}");                   // what pairs, what stays fresh, near misses
//! init.init_from_checkpoint(&ckpt, &found.map)?;
//! init.initialize(&Default::default())?;
//! // The kernel arrived transposed into candle's [out, in]: x W, as in TensorFlow.
//! let x = Tensor::from_vec(vec![0f32, 1., 0., 0., 0., 0., 0., 0.], (1, 8), &Device::Cpu)?;
//! let row: Vec<f32> = (8..16).map(|i| i as f32).collect(); // the kernel's second row
//! assert_eq!(pooler.forward(&x)?.to_vec2::<f32>()?[0], row);
//! // ... fine-tune, then back to TensorFlow's names and layout:
//! init.save_checkpoint(&fine_tuned)?;
//! # let _ = head;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `Var`s on CUDA devices need the `candle-cuda` feature (candle-core's `cuda`, and tfckpt's): their
//! values go through the GPU path straight into fresh `CudaStorage` on the `Var`'s device (pinned
//! ring or registered file mappings; kernels transpose and convert on the device), with no host
//! bounce and no second device copy. Without it, `from_varmap` refuses them.

// Checkpoint bytes (little-endian) are written straight into candle's native-endian storage.
#[cfg(target_endian = "big")]
compile_error!("the `candle` feature supports little-endian targets only");

mod convention;
#[cfg(feature = "candle-cuda")]
mod cuda;
mod deferred;
mod destination;
mod existing;
mod save;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType as CDType, Var};
use candle_nn::VarMap;

pub use convention::{Convention, TfName};
pub use deferred::DeferredInit;
pub use existing::ExistingMap;

/// The `candle-core` and `candle-nn` this module is built against, so that a trainer names the
/// same crates' `VarMap`, `Var` and `Device` as the library's.
pub use {candle_core, candle_nn};

use crate::base::copy::Held;
use crate::base::dtype::DType;
use crate::base::error::{Error, ErrorKind, Result};
use crate::init::assign::{bound_tensor, init_opened, Accepts, AssignmentMap, InitReport};
use crate::init::store::{Init, VariableStore};
use crate::load::{LoadOptions, LoadReport};
use crate::reader::checkpoint::Checkpoint;

/// Which checkpoint dtypes a `Var` takes; fixed at call time, so that the dtype check stays there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DtypePolicy {
    /// The tensor's dtype must be the `Var`'s, as in TensorFlow.
    #[default]
    Exact,
    /// A float tensor of another width is converted to the `Var`'s dtype as it loads: float32 to
    /// or from bfloat16 or float16 (round to nearest even). Any other difference is still an
    /// error at call time.
    CastToVariable,
}

impl DtypePolicy {
    fn accepts(self, var: DType, tensor: DType) -> bool {
        var == tensor
            || (self == DtypePolicy::CastToVariable && crate::load::cast::supported(tensor, var))
    }
}

/// A candle `Var` and the TensorFlow variable it is.
struct Bound {
    candle: String,
    var: Var,
    /// The convention's word: the `Var` holds its value transposed.
    transposed: bool,
    /// How it holds it: as stored, transposed, or (a transposed `Var` `[out, 1, spatial...]`
    /// mapped to a tensor `[spatial..., in, multiplier]`, see [`Bound::depthwise`]) as a
    /// depthwise kernel.
    held: Held,
    /// The `Var`'s dtype.
    dtype: DType,
}

impl Bound {
    /// Whether the `Var`, held transposed as `[out, 1, spatial...]` (a convolution grouped by
    /// input channel, or one of a single input channel), takes a TensorFlow tensor of shape
    /// `tensor` `[spatial..., in, multiplier]` with `in * multiplier = out`: a depthwise kernel
    /// (TensorFlow's `depthwise_conv2d`, Keras's `DepthwiseConv2D`), whose output channel
    /// `i * multiplier + k` is candle's channel of the same number in a convolution of `in`
    /// groups. Those bytes are the same whatever `in` and `multiplier` are; but for a
    /// convolution of one input channel, which the `Var` may also be, a tensor of `in` above 1
    /// is the wrong one (TensorFlow refuses it): `init_from_checkpoint` accepts the shape, gives
    /// the variable the tensor's, and says so in a warning.
    fn depthwise(&self, tensor: &[u64]) -> bool {
        let dims = self.var.dims();
        let n = dims.len();
        self.transposed
            && n >= 3
            && dims[1] == 1
            && tensor.len() == n
            && tensor[..n - 2]
                .iter()
                .zip(&dims[2..])
                .all(|(&t, &d)| t == d as u64)
            && tensor[n - 2].checked_mul(tensor[n - 1]) == Some(dims[0] as u64)
    }
}

/// The variable store of a candle model, and the loads into its `Var`s. See the
/// [module documentation](self).
pub struct CandleInit {
    /// TensorFlow names and shapes, the `Var`s' dtypes.
    store: VariableStore,
    /// By TensorFlow name.
    vars: BTreeMap<String, Bound>,
    policy: DtypePolicy,
    /// Mapped variables whose tensor has another dtype than their `Var`: the tensor's dtype.
    casts: BTreeMap<String, DType>,
    /// Those over the `VarMap` whose initializers have not all run.
    deferred: Vec<DeferredInit>,
    /// Candle names of the `Var`s the convention gave no TensorFlow name.
    unnamed: Vec<String>,
    /// The object graph of a [`Convention::keras`], whose names `map_existing` looks for a
    /// scope in.
    graph: Option<std::sync::Arc<crate::ObjectNames>>,
    /// The checkpoint `map_existing` last opened, with the path it was given: an
    /// `init_from_checkpoint` of the same path right after reuses its index while it is unchanged.
    last_opened: std::sync::Mutex<Option<(std::path::PathBuf, std::sync::Arc<Checkpoint>)>>,
}

impl std::fmt::Debug for CandleInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleInit")
            .field("vars", &self.vars.len())
            .field("policy", &self.policy)
            .field("casts", &self.casts)
            .field("deferred", &self.deferred.len())
            .finish_non_exhaustive()
    }
}

impl CandleInit {
    /// The store of every `Var` in `varmap`, named by `convention`. Errors name the `Var`: a dtype
    /// TensorFlow has no counterpart for, a `Var` on a GPU, a transposed `Var` of fewer than 2
    /// dimensions, a name TensorFlow would refuse, and two `Var`s the convention gives one
    /// TensorFlow name.
    /// A `VarMap` whose `Var`s the `VarBuilder`s of one or more [`DeferredInit`]s made (zeroed,
    /// their initializers not yet run) is taken as [`from_deferred`](Self::from_deferred) takes
    /// it: `initialize` runs the initializers of those no checkpoint value replaces.
    pub fn from_varmap(varmap: &VarMap, convention: &Convention) -> Result<CandleInit> {
        let mut entries: Vec<(String, Var)> = {
            let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let shapes: Vec<(&str, &[usize])> = entries
            .iter()
            .map(|(n, v)| (n.as_str(), v.dims()))
            .collect();
        let names = convention.tf_names(&shapes);
        let mut init = CandleInit {
            store: VariableStore::new(),
            vars: BTreeMap::new(),
            policy: DtypePolicy::Exact,
            casts: BTreeMap::new(),
            deferred: Vec::new(),
            unnamed: Vec::new(),
            graph: convention.object_names().cloned(),
            last_opened: std::sync::Mutex::new(None),
        };
        // One `Var` under two names (tied weights put in twice) would take two values, the last
        // one winning: refused, naming both.
        let mut storages: std::collections::HashMap<usize, String> = Default::default();
        for ((candle, var), tf) in entries.into_iter().zip(names) {
            let Some(TfName { name, transposed }) = tf else {
                init.unnamed.push(candle);
                continue;
            };
            let storage = {
                let (s, _) = var.storage_and_layout();
                &*s as *const candle_core::Storage as usize
            };
            if let Some(other) = storages.get(&storage) {
                return Err(candle_error(
                    &candle,
                    &layout(&var, transposed, None),
                    &name,
                    ErrorKind::BadVariable {
                        name: candle.clone(),
                        reason: format!(
                            "it is the same Var as `{other}` (one storage under two names), which \
                             would take two values; keep one of the names in the VarMap"
                        ),
                    }
                    .into(),
                )
                .into());
            }
            storages.insert(storage, candle.clone());
            init.bind(candle, var, name, transposed)?;
        }
        init.deferred = DeferredInit::pending_over(varmap);
        Ok(init)
    }

    /// [`from_varmap`](Self::from_varmap) for a model built through `deferred`'s `VarBuilder`:
    /// [`initialize`](Self::initialize) also runs candle's initializers for the `Var`s that take
    /// no checkpoint value (those of any other `DeferredInit` over the same `VarMap` too).
    pub fn from_deferred(deferred: &DeferredInit, convention: &Convention) -> Result<CandleInit> {
        let mut init = CandleInit::from_varmap(deferred.varmap(), convention)?;
        if !init.deferred.iter().any(|d| d.is(deferred)) {
            init.deferred.push(deferred.clone());
        }
        Ok(init)
    }

    fn bind(&mut self, candle: String, var: Var, tf: String, transposed: bool) -> Result<()> {
        let wrap = |e: Error| {
            Error::from(candle_error(
                &candle,
                &layout(&var, transposed, None),
                &tf,
                e,
            ))
        };
        let bad = |reason: String| {
            wrap(
                ErrorKind::BadVariable {
                    name: candle.clone(),
                    reason,
                }
                .into(),
            )
        };
        if let Some(other) = self.vars.get(&tf) {
            return Err(bad(format!(
                "the convention gives `{}` the same TensorFlow name",
                other.candle
            )));
        }
        let on_gpu = var.device().is_cuda() && cfg!(feature = "candle-cuda");
        if !var.device().is_cpu() && !on_gpu {
            return Err(bad(format!(
                "it is on {:?}: tfckpt fills host (CPU) Vars, and CUDA Vars with its \
                 `candle-cuda` feature",
                var.device().location()
            )));
        }
        if !var.is_contiguous() || var.layout().start_offset() != 0 {
            return Err(bad("its storage is not one contiguous block".into()));
        }
        let dtype = DType::try_from(var.dtype()).map_err(wrap)?;
        let mut shape: Vec<u64> = var.dims().iter().map(|&d| d as u64).collect();
        if transposed {
            if shape.len() < 2 {
                return Err(bad(format!(
                    "the convention transposes it, but it has {} dimensions, not 2 or more",
                    shape.len()
                )));
            }
            shape = tf_shape(&shape);
        }
        self.store
            .get_variable(&tf, &shape, dtype, Init::Zeros)
            .map_err(wrap)?;
        self.vars.insert(
            tf,
            Bound {
                candle,
                var,
                transposed,
                held: match transposed {
                    true => Held::Transposed,
                    false => Held::AsStored,
                },
                dtype,
            },
        );
        Ok(())
    }

    /// Sets the dtype policy for the next [`init_from_checkpoint`](Self::init_from_checkpoint)
    /// calls (default [`DtypePolicy::Exact`]).
    pub fn dtype_policy(mut self, policy: DtypePolicy) -> CandleInit {
        self.policy = policy;
        self
    }

    /// The variable store: TensorFlow names, TensorFlow shapes, the `Var`s' dtypes.
    pub fn store(&self) -> &VariableStore {
        &self.store
    }

    /// The TensorFlow name of candle `Var` `candle`, if the convention gave it one.
    pub fn tf_name(&self, candle: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(_, b)| b.candle == candle)
            .map(|(tf, _)| tf.as_str())
    }

    /// TensorFlow's `init_from_checkpoint(ckpt_dir_or_file, map)` on this model (see
    /// [`init_from_checkpoint`](crate::init_from_checkpoint)): every check at call time, with
    /// dtypes checked under the [`DtypePolicy`]. Errors about a `Var` name it by its candle name
    /// too. A call that fails changes nothing.
    pub fn init_from_checkpoint(
        &mut self,
        ckpt_dir_or_file: impl AsRef<Path>,
        map: &AssignmentMap,
    ) -> Result<InitReport> {
        let policy = self.policy;
        let vars = &self.vars;
        let accepts = Accepts {
            dtype: &|v, t| policy.accepts(v.dtype, t),
            // A depthwise kernel into a grouped convolution's `Var`: the variable takes the
            // tensor's shape below.
            shape: &|v, s| vars.get(&v.name).is_some_and(|b| b.depthwise(s)),
        };
        let path = ckpt_dir_or_file.as_ref();
        // The index `map_existing` just read, if it was opened from this very path, named the
        // checkpoint itself (a directory's `checkpoint` file may name another one by now) and is
        // unchanged; otherwise read as TensorFlow does, at this call.
        let reuse = self
            .last_opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|(p, c)| p == path && c.state_file().is_none() && c.is_current())
            .map(|(_, c)| c);
        let ckpt = match reuse {
            Some(ckpt) => ckpt,
            None => std::sync::Arc::new(Checkpoint::open(path)?),
        };
        let result = init_opened(&mut self.store, ckpt.clone(), map, &accepts);
        let mut report = result.map_err(|e| {
            let swapped = match e.kind() {
                ErrorKind::ShapeMismatch {
                    variable,
                    tensor_shape,
                    ..
                } => self.swapped_layer(variable, tensor_shape, |var| {
                    let bound = bound_tensor(&self.store, &ckpt, map, &accepts, var)?;
                    Some(ckpt.tensor(&bound).ok()?.shape.clone())
                }),
                _ => None,
            };
            let e = e.with_dtype_hint(|var, tensor| match policy {
                DtypePolicy::Exact => crate::load::cast::supported(tensor, var).then(|| {
                    "TensorFlow never casts; CandleInit::dtype_policy(\
                             DtypePolicy::CastToVariable) converts it as it loads"
                        .to_string()
                }),
                // Said, or the error reads as if the policy were not on.
                DtypePolicy::CastToVariable => Some(
                    "DtypePolicy::CastToVariable is on, but converts only float32 to or from \
                     bfloat16 and float16"
                        .to_string(),
                ),
            });
            self.name_var(e).with_candle_hint(swapped)
        })?;
        for a in &report.assignments {
            let (Ok(t), Some(b)) = (ckpt.tensor(&a.tensor), self.vars.get_mut(&a.variable)) else {
                continue;
            };
            // A variable is read in its tensor's dtype, then converted to its `Var`'s.
            if t.dtype == b.dtype {
                self.casts.remove(&a.variable);
            } else {
                self.casts.insert(a.variable.clone(), t.dtype);
            }
            // A depthwise kernel: the variable takes its shape (from a convolution's kernel of
            // one input channel, or back to one).
            let Some(v) = self.store.vars.get_mut(&a.variable) else {
                continue;
            };
            if v.shape == t.shape || !b.depthwise(&t.shape) {
                continue;
            }
            v.shape = t.shape.clone();
            let n = v.shape.len();
            let (groups, mult) = (v.shape[n - 2], v.shape[n - 1]);
            b.held = match groups {
                1 => Held::Transposed,
                _ => Held::Depthwise,
            };
            if b.held == Held::Depthwise {
                // Said, since TensorFlow would refuse the tensor for a convolution of one input
                // channel, which a `Var` `[out, 1, spatial...]` may also be.
                let warning = format!(
                    "candle Var `{}` {:?} takes {:?} {:?} as a depthwise kernel: a convolution \
                     of {groups} groups (candle's `groups = {groups}`), output channel \
                     i * {mult} + k TensorFlow's (i, k); for a convolution of one input channel \
                     it is the wrong tensor, which TensorFlow would refuse",
                    b.candle,
                    b.var.dims(),
                    a.tensor,
                    v.shape
                );
                self.store.warnings.push(warning.clone());
                report.warnings.push(warning);
            }
        }
        Ok(report)
    }

    /// Loads every mapped value into its `Var` (TensorFlow's `global_variables_initializer()`
    /// for the mapped variables; the others keep candle's initialization). All or nothing: on
    /// an error no `Var` has changed. Dtype conversion is the [`DtypePolicy`]'s:
    /// `LoadOptions::cast` is refused here. Called again (after training, say), it loads the
    /// checkpoint's values again over what the mapped `Var`s hold, as running TensorFlow's
    /// initializer again would; the initializers of a [`DeferredInit`] run only once.
    ///
    /// With `Var`s on a GPU (feature `candle-cuda`), the load first waits for all the work queued
    /// on that GPU's context: candle queues on the per-thread default stream of whichever thread
    /// built the model, which no single stream's wait reaches. Do not call it while another
    /// thread keeps that GPU busy (a training step, a collective waiting on its peers).
    pub fn initialize(&mut self, options: &LoadOptions) -> Result<LoadReport> {
        destination::initialize(self, options).map_err(|e| self.name_var(e))
    }

    /// `e`, about the variable of TensorFlow name `tf`, with its candle name and layout.
    fn wrap(&self, tf: &str, e: Error) -> Error {
        match self.vars.get(tf) {
            Some(b) => {
                let depthwise = self.store.vars.get(tf).map(|v| v.shape.as_slice());
                let depthwise = depthwise.filter(|_| b.held == Held::Depthwise);
                candle_error(&b.candle, &layout(&b.var, b.transposed, depthwise), tf, e).into()
            }
            None => e,
        }
    }

    /// Adds the candle name to an error about a variable of the store.
    fn name_var(&self, e: Error) -> Error {
        let tf = match e.kind() {
            ErrorKind::ShapeMismatch { variable, .. }
            | ErrorKind::DtypeMismatch { variable, .. }
            | ErrorKind::BadVariable { name: variable, .. } => variable.clone(),
            // A damaged value: the `Var`s it was for, by their candle names.
            _ if !e.loading().is_empty() => {
                return e.rename_loading(|tf| self.vars.get(tf).map(|b| b.candle.clone()))
            }
            _ => return self.suggest_tf_name(e),
        };
        self.wrap(&tf, e)
    }

    /// `e`, where a map names a `Var` by its candle name, suggesting its TensorFlow name instead.
    fn suggest_tf_name(&self, e: Error) -> Error {
        let tf = |name: &str, others| self.tf_name(name).map_or(others, |t| vec![t.to_string()]);
        match e.into_kind() {
            ErrorKind::NotAVariableOrScope {
                key,
                target,
                suggestions,
            } => ErrorKind::NotAVariableOrScope {
                suggestions: tf(&target, suggestions),
                key,
                target,
            },
            ErrorKind::VariableNotFound { name, suggestions } => ErrorKind::VariableNotFound {
                suggestions: tf(&name, suggestions),
                name,
            },
            ErrorKind::MappedVariableNotFound {
                key,
                name,
                suggestions,
            } => ErrorKind::MappedVariableNotFound {
                suggestions: tf(&name, suggestions),
                key,
                name,
            },
            kind => kind,
        }
        .into()
    }
}

/// The TensorFlow shape of a `Var` of (candle) shape `dims` that holds its value transposed:
/// `[out, in]` holds `[in, out]`, a convolution's `[out, in, spatial...]` holds `[spatial..., in,
/// out]` (the inverse of `base::copy::held_shape`).
fn tf_shape<T: Copy>(dims: &[T]) -> Vec<T> {
    match dims {
        [out, mid, spatial @ ..] => [spatial, &[*mid, *out][..]].concat(),
        _ => dims.to_vec(),
    }
}

/// A `Var`'s shape and dtype, and how it holds its TensorFlow value (`depthwise`: the shape of
/// the depthwise kernel it holds, [`Bound::depthwise`]).
fn layout(var: &Var, transposed: bool, depthwise: Option<&[u64]>) -> String {
    let dims = var.dims();
    if let Some(tf) = depthwise {
        format!(
            "{:?} shape {dims:?}, holding TensorFlow's depthwise kernel {tf:?}",
            var.dtype()
        )
    } else if transposed && dims.len() >= 2 {
        let tf = tf_shape(dims);
        format!(
            "{:?} shape {dims:?}, holding TensorFlow's {tf:?} transposed",
            var.dtype()
        )
    } else {
        format!("{:?} shape {dims:?}", var.dtype())
    }
}

fn candle_error(candle: &str, layout: &str, tf: &str, source: Error) -> ErrorKind {
    ErrorKind::CandleVariable {
        candle: candle.into(),
        layout: layout.into(),
        tensorflow: tf.into(),
        source: Box::new(source),
        hint: None,
    }
}

macro_rules! dtype_pairs {
    ($($candle:ident <=> $ours:ident),* $(,)?) => {
        impl TryFrom<CDType> for DType {
            type Error = Error;
            /// The TensorFlow dtype of a candle dtype (candle's 6- and 4-bit floats and
            /// `F8E8M0` have none).
            fn try_from(d: CDType) -> Result<DType> {
                match d {
                    $(CDType::$candle => Ok(DType::$ours),)*
                    other => Err(ErrorKind::InvalidArgument(format!(
                        "candle dtype {other:?} has no TensorFlow counterpart"
                    ))
                    .into()),
                }
            }
        }

        impl TryFrom<DType> for CDType {
            type Error = Error;
            /// The candle dtype of a TensorFlow dtype (strings, complex, bool, int8, the
            /// unsigned 16/64-bit and quantized types have none).
            fn try_from(d: DType) -> Result<CDType> {
                match d {
                    $(DType::$ours => Ok(CDType::$candle),)*
                    other => Err(ErrorKind::InvalidArgument(format!(
                        "TensorFlow dtype {other} has no candle counterpart"
                    ))
                    .into()),
                }
            }
        }
    };
}

dtype_pairs! {
    U8 <=> U8,
    U32 <=> U32,
    I16 <=> I16,
    I32 <=> I32,
    I64 <=> I64,
    BF16 <=> BF16,
    F16 <=> F16,
    F32 <=> F32,
    F64 <=> F64,
    F8E4M3 <=> F8E4M3FN,
}
