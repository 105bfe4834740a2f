//! The variable store: the "current graph" of `init_from_checkpoint`. Variables have full names
//! (scopes joined by `/`), a shape, a dtype and an initializer; partitioned variables are made exactly
//! as TF1's `get_variable(..., partitioner=...)` makes them
//! (docs/format.md#66-partition-naming-and-split-rules): parts `NAME/part_i` split along one axis,
//! the first `D % k` parts one longer, each knowing its offset in the whole.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::initializer::check_init;
use crate::base::device::{Device, DeviceBuffer, DeviceTensor};
use crate::base::dtype::DType;
use crate::base::error::{Error, ErrorKind, Result};
use crate::base::slice::{for_each_run, num_elements, Region, Slice, MAX_RANK};
use crate::base::tensor::{Strings, StringsByRuns, Tensor, TensorData};

/// The value a variable gets when no checkpoint tensor is mapped to it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros (empty strings for string variables).
    Zeros,
    /// All ones.
    Ones,
    /// Every element this number.
    Constant(f64),
    /// Every element this integer (exact for 64-bit integer variables, where an `f64` is not).
    IntConstant(i128),
}

/// Where a part sits in its partitioned variable (TensorFlow's `SaveSliceInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartInfo {
    /// Name of the partitioned variable.
    pub full_name: String,
    /// Shape of the whole.
    pub full_shape: Vec<u64>,
    /// Offset of this part in the whole, per dimension.
    pub offset: Vec<u64>,
    /// Part number (`NAME/part_{index}`).
    pub index: usize,
}

impl PartInfo {
    /// The box this part covers in the whole variable.
    pub fn slice(&self, shape: &[u64]) -> Slice {
        Slice::from_ranges(
            &self
                .offset
                .iter()
                .zip(shape)
                .map(|(&o, &l)| (o, l))
                .collect::<Vec<_>>(),
        )
    }
}

/// A variable (or one part of a partitioned variable).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Variable {
    /// Full name, no `:0`.
    pub name: String,
    /// Shape (of this part, for a part).
    pub shape: Vec<u64>,
    /// Element type.
    pub dtype: DType,
    /// Initializer used when nothing is mapped to it.
    pub init: Init,
    /// Set for the parts of a partitioned variable.
    pub part: Option<PartInfo>,
    /// Whether TF1's variable store holds it (made by [`get_variable`](VariableStore::get_variable)
    /// or as a part), so that an assignment's string target or scope reaches it; `false` for a
    /// [`variable_object`](VariableStore::variable_object), which only `Target::Variable` reaches.
    pub in_store: bool,
}

/// A partitioned variable: its full shape and its parts.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionedVariable {
    /// Full name.
    pub name: String,
    /// Full shape.
    pub shape: Vec<u64>,
    /// Element type.
    pub dtype: DType,
    /// The axis it is split along.
    pub axis: usize,
    /// Part names, `NAME/part_0` first.
    pub parts: Vec<String>,
}

/// What a variable loads when initialization runs (recorded by `init_from_checkpoint`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pending {
    /// The resolved checkpoint prefix captured at call time.
    pub checkpoint: Arc<Path>,
    /// The checkpoint tensor.
    pub tensor: String,
    /// The box of that tensor this variable takes (the whole tensor for an ordinary variable).
    pub slice: Slice,
}

/// The variables of a model, with their pending checkpoint initializers and, after
/// [`initialize`](VariableStore::initialize), their values.
#[derive(Default)]
pub struct VariableStore {
    pub(crate) vars: BTreeMap<String, Variable>,
    pub(crate) partitioned: BTreeMap<String, PartitionedVariable>,
    pub(crate) pending: BTreeMap<String, Pending>,
    pub(crate) values: BTreeMap<String, Tensor>,
    /// Values loaded to a GPU (string variables stay on the host, in `values`).
    pub(crate) device_values: BTreeMap<String, DeviceTensor>,
    /// Buffers the trainer handed in for some variables (used by the next GPU initialization).
    pub(crate) device_buffers: BTreeMap<String, DeviceBuffer>,
    /// Variables held on the device in another dtype or transposed (the candle integration's).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) device_forms: BTreeMap<String, crate::base::device::DeviceForm>,
    /// Where variables (and parts) live when it is not the device `initialize` is given.
    pub(crate) placement: BTreeMap<String, Device>,
    /// Variables (and parts) replicated on several GPUs: every device, the first one being the
    /// variable's placement.
    pub(crate) replicas: BTreeMap<String, Vec<Device>>,
    /// Their values after a GPU initialization: one per device, in the same order (the first is
    /// also in `device_values`).
    pub(crate) replica_values: BTreeMap<String, Vec<DeviceTensor>>,
    pub(crate) warnings: Vec<String>,
    /// Variables (and parts) the last initialization left to other ranks (`LoadOptions::rank`).
    pub(crate) elsewhere: std::collections::BTreeSet<String>,
    /// How many variables (and parts) the store held at its last successful initialization
    /// (0: none yet). Variables are never removed, so it equals `vars.len()` until one is added.
    pub(crate) initialized: usize,
    /// Checkpoints whose index `init_from_checkpoint` already read; `initialize` reuses one when
    /// its files are unchanged on disk (and reopens it otherwise), then lets it go.
    pub(crate) opened: Vec<std::sync::Arc<crate::reader::checkpoint::Checkpoint>>,
}

/// Counts, not contents: a model's store holds gigabytes of values.
impl std::fmt::Debug for VariableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VariableStore")
            .field("variables", &self.vars.len())
            .field("partitioned_variables", &self.partitioned.len())
            .field("pending", &self.pending.len())
            .field("values", &self.values.len())
            .field("device_values", &self.device_values.len())
            .field("initialized", &self.is_initialized())
            .finish_non_exhaustive()
    }
}

/// More parts than this is certainly a mistake (TensorFlow creates one variable per part).
const MAX_PARTS: u64 = 1 << 20;

fn check_name(name: &str) -> Result<()> {
    let wrong = if name.is_empty() {
        "it is empty"
    } else if name.contains(':') {
        "it holds a ':' (TensorFlow's ':0' names a tensor of the variable, not the variable)"
    } else if name.starts_with('/') {
        "it starts with '/' (an empty scope)"
    } else if name.ends_with('/') {
        "it ends with '/', as a scope does"
    } else if name.contains("//") {
        "it holds '//' (an empty scope)"
    } else {
        return Ok(());
    };
    Err(ErrorKind::BadVariable {
        name: name.into(),
        reason: format!(
            "not a variable name: {wrong}; a name is scopes and a last part joined by '/', each \
             non-empty, without ':'"
        ),
    }
    .into())
}

impl VariableStore {
    /// An empty store.
    pub fn new() -> VariableStore {
        VariableStore::default()
    }

    fn check_new(&self, name: &str) -> Result<()> {
        check_name(name)?;
        if self.vars.contains_key(name) || self.partitioned.contains_key(name) {
            return Err(ErrorKind::BadVariable {
                name: name.into(),
                reason: "a variable of that name already exists".into(),
            }
            .into());
        }
        Ok(())
    }

    /// Creates a variable (TF1 `get_variable` without a partitioner).
    pub fn get_variable(
        &mut self,
        name: &str,
        shape: &[u64],
        dtype: DType,
        init: Init,
    ) -> Result<&Variable> {
        self.declare(name, shape, dtype, init, true)
    }

    fn declare(
        &mut self,
        name: &str,
        shape: &[u64],
        dtype: DType,
        init: Init,
        in_store: bool,
    ) -> Result<&Variable> {
        self.check_new(name)?;
        check_init(name, dtype, init)?;
        check_shape(name, shape, dtype)?;
        let v = Variable {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            init,
            part: None,
            in_store,
        };
        Ok(self.vars.entry(name.into()).or_insert(v))
    }

    /// Creates a variable outside TF1's variable store, as `tf.Variable(...)` (or a Keras layer's
    /// `add_weight`) makes one in a TF1 graph. `init_from_checkpoint` reaches it only as an object
    /// (`Target::Variable(name)`): a string target naming it is taken as a scope (an error, saying
    /// so, where the key lacks its trailing `/`), and scope mappings (`"old/": "new/"`, `"/": "/"`)
    /// pass it by, exactly as TensorFlow's `init_from_checkpoint` only sees the variables
    /// `get_variable` made. Everything else (initializers, values, devices, loading) is as for
    /// [`get_variable`](Self::get_variable).
    pub fn variable_object(
        &mut self,
        name: &str,
        shape: &[u64],
        dtype: DType,
        init: Init,
    ) -> Result<&Variable> {
        self.declare(name, shape, dtype, init, false)
    }

    /// Creates a partitioned variable from what a partitioner returns (`partitions`: one entry per
    /// dimension, at most one above 1), exactly as TF1's `get_variable(..., partitioner=...)` does.
    pub fn get_partitioned_variable(
        &mut self,
        name: &str,
        shape: &[u64],
        dtype: DType,
        partitions: &[u64],
        init: Init,
    ) -> Result<&PartitionedVariable> {
        self.check_new(name)?;
        check_init(name, dtype, init)?;
        check_shape(name, shape, dtype)?;
        let bad = |reason: String| ErrorKind::BadVariable {
            name: name.into(),
            reason,
        };
        if partitions.len() != shape.len() || shape.is_empty() {
            return Err(bad(format!(
                "partitions {partitions:?} must have one entry per dimension of shape {shape:?} (and a scalar cannot be partitioned)"
            ))
            .into());
        }
        if let Some(axis) = partitions.iter().position(|&p| p == 0) {
            return Err(bad(format!(
                "partitions {partitions:?}: 0 parts along axis {axis} (every entry >= 1)"
            ))
            .into());
        }
        let split: Vec<usize> = (0..partitions.len())
            .filter(|&i| partitions[i] > 1)
            .collect();
        if split.len() > 1 {
            return Err(bad(format!(
                "partitions {partitions:?}: split along axes {split:?}, but a partitioned \
                 variable is split along one axis at most (one entry above 1)"
            ))
            .into());
        }
        // TensorFlow's `get_variable` with a partitioner refuses these too ("Expected 0 <= offset
        // < shape but found offset=0, shape=0"): a part would start at offset 0 of a dimension of
        // length 0.
        if shape.contains(&0) {
            return Err(bad(format!(
                "shape {shape:?} has a dimension of 0, which TensorFlow cannot partition"
            ))
            .into());
        }
        let axis = partitions.iter().position(|&p| p > 1).unwrap_or(0);
        let k = partitions[axis];
        let d = shape[axis];
        if k > d.max(1) || k > MAX_PARTS {
            return Err(bad(format!(
                "{k} parts along axis {axis} of length {d} (at most one part per row, and at most {MAX_PARTS})"
            ))
            .into());
        }
        // Every part's name is checked before any part is declared (all or nothing). A
        // partitioned variable of a part's name is a clash too: both would be written under one
        // name (two `.npy` files of one path, two safetensors entries).
        for i in 0..k {
            let part_name = format!("{name}/part_{i}");
            check_name(&part_name)?;
            if self.vars.contains_key(&part_name) || self.partitioned.contains_key(&part_name) {
                return Err(bad(format!("{part_name} already exists")).into());
            }
        }
        let mut parts = Vec::with_capacity(k as usize);
        let mut offset = 0;
        for i in 0..k {
            let len = d / k + u64::from(i < d % k);
            let part_name = format!("{name}/part_{i}");
            let mut part_shape = shape.to_vec();
            part_shape[axis] = len;
            let mut off = vec![0; shape.len()];
            off[axis] = offset;
            self.vars.insert(
                part_name.clone(),
                Variable {
                    name: part_name.clone(),
                    shape: part_shape,
                    dtype,
                    init,
                    part: Some(PartInfo {
                        full_name: name.into(),
                        full_shape: shape.to_vec(),
                        offset: off,
                        index: i as usize,
                    }),
                    in_store: true,
                },
            );
            parts.push(part_name);
            offset += len;
        }
        let pv = PartitionedVariable {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            axis,
            parts,
        };
        Ok(self.partitioned.entry(name.into()).or_insert(pv))
    }

    /// A variable or a part, by name.
    pub fn variable(&self, name: &str) -> Option<&Variable> {
        self.vars.get(name)
    }

    /// A partitioned variable, by its full name.
    pub fn partitioned_variable(&self, name: &str) -> Option<&PartitionedVariable> {
        self.partitioned.get(name)
    }

    /// Every variable and part, sorted by name.
    pub fn variables(&self) -> impl Iterator<Item = &Variable> {
        self.vars.values()
    }

    /// Every partitioned variable, sorted by name.
    pub fn partitioned_variables(&self) -> impl Iterator<Item = &PartitionedVariable> {
        self.partitioned.values()
    }

    /// What `name` will load from a checkpoint when initialization runs, if anything.
    pub fn pending(&self, name: &str) -> Option<&Pending> {
        self.pending.get(name)
    }

    /// Warnings from `init_from_checkpoint` calls (e.g. a scope that matched no variable).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The value of a variable or part after [`initialize`](Self::initialize); `None` before, and
    /// for a partitioned variable's own name (its whole is [`partitioned_value`](Self::partitioned_value),
    /// each part's value is here under `NAME/part_i`).
    pub fn value(&self, name: &str) -> Option<&Tensor> {
        self.values.get(name)
    }

    /// Every host value, by variable (or part) name, in name order.
    pub fn values(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Moves the value of a variable or part out of the store, to keep in the trainer's own
    /// structures without a copy (a value mapped copy-on-write from the checkpoint stays mapped).
    /// The store no longer holds it: [`value`](Self::value) is `None` for it, and the whole of a
    /// partitioned variable needs every part's value.
    pub fn take_value(&mut self, name: &str) -> Option<Tensor> {
        self.values.remove(name)
    }

    /// The value of a variable or part, to change in place (a trainer's update). A value mapped
    /// copy-on-write from the checkpoint gets its own copy of each page written; the file is never
    /// written.
    pub fn value_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.values.get_mut(name)
    }

    /// Whether an initialization of every variable now in the store has succeeded (a load is all
    /// or nothing): each then has its value in the store, on a device, in the trainer's buffer it
    /// was read into ([`initialize_into`](Self::initialize_into)), or, with
    /// [`LoadOptions::rank`](crate::LoadOptions::rank), on the rank that owns it
    /// ([`is_other_rank`](Self::is_other_rank)). A variable added since makes it `false` again.
    pub fn is_initialized(&self) -> bool {
        !self.vars.is_empty() && self.initialized == self.vars.len()
    }

    /// The device value of a variable or part after `initialize(Device::Cuda(_))`; `None` before,
    /// after a host initialization, and for string variables (kept on the host: see
    /// [`value`](Self::value)).
    pub fn device_value(&self, name: &str) -> Option<&DeviceTensor> {
        self.device_values.get(name)
    }

    /// Every device value, by variable name.
    pub fn device_values(&self) -> impl Iterator<Item = (&str, &DeviceTensor)> {
        self.device_values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The error for variable `name`, which has no value in host memory, saying why: another
    /// rank's, on a device, put into the trainer's buffer or taken out, or not initialized yet.
    /// `doing` says what it was wanted for (`" to write"`).
    pub(crate) fn no_host_value(&self, name: &str, doing: &str) -> Error {
        let reason = if self.is_other_rank(name) {
            format!(
                "has no value here{doing}: another rank of the last load (LoadOptions::rank) \
                 owns it"
            )
        } else if self.device_values.contains_key(name) {
            format!("is in device memory{doing}: fetch_to_host first")
        } else if self.is_initialized() {
            format!(
                "has no value in the store{doing}: the last load put it into the trainer's \
                 buffer (initialize_into), or take_value took it out"
            )
        } else {
            format!("has no value on the host{doing}: initialize it first (or fetch_to_host)")
        };
        ErrorKind::BadVariable {
            name: name.into(),
            reason,
        }
        .into()
    }

    /// The variable `name` a trainer gives a buffer for: an error naming the parts for a
    /// partitioned variable's own name (its value is its parts'), as for a name that is none.
    pub(crate) fn var_for_buffer(&self, name: &str) -> Result<&Variable> {
        match self.partitioned.get(name) {
            Some(pv) => Err(ErrorKind::BadVariable {
                name: name.into(),
                reason: format!(
                    "is a partitioned variable: give a buffer for each of its {} parts ({:?}, \
                     ...)",
                    pv.parts.len(),
                    pv.parts[0]
                ),
            }
            .into()),
            None => self.var_or_err(name),
        }
    }

    /// Partitioned variable `name`, or an error naming it: a plain variable or a part (whose
    /// value is its own) said to be one, or a name that is none, with the close names that
    /// exist.
    pub(crate) fn partitioned_or_err(&self, name: &str) -> Result<&PartitionedVariable> {
        if let Some(v) = self.vars.get(name) {
            let reason = match &v.part {
                Some(p) => format!(
                    "is part {} of partitioned variable {:?}, not a partitioned variable",
                    p.index, p.full_name
                ),
                None if v.in_store => {
                    "is a variable get_variable declared, not a partitioned variable".to_string()
                }
                None => "is a variable object, not a partitioned variable".to_string(),
            };
            return Err(ErrorKind::BadVariable {
                name: name.into(),
                reason,
            }
            .into());
        }
        self.partitioned.get(name).ok_or_else(|| {
            ErrorKind::VariableNotFound {
                name: name.into(),
                suggestions: crate::base::suggest::close_names(
                    name,
                    self.partitioned.keys().map(String::as_str),
                ),
            }
            .into()
        })
    }

    /// A store of the plain variables `names` of this one, with their pending initializers and
    /// the checkpoints already opened: one load of some of the variables (the candle
    /// integration's host and GPU `Var`s are loaded by two).
    #[cfg_attr(not(feature = "candle"), allow(dead_code))]
    pub(crate) fn substore<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> VariableStore {
        let mut sub = VariableStore {
            warnings: self.warnings.clone(),
            opened: self.opened.clone(),
            ..VariableStore::default()
        };
        for name in names {
            if let Some(v) = self.vars.get(name) {
                sub.vars.insert(name.into(), v.clone());
            }
            if let Some(p) = self.pending.get(name) {
                sub.pending.insert(name.into(), p.clone());
            }
        }
        sub
    }

    /// Variable (or part) `name`, or an error naming it with the close names that exist.
    pub(crate) fn var_or_err(&self, name: &str) -> Result<&Variable> {
        self.vars.get(name).ok_or_else(|| {
            ErrorKind::VariableNotFound {
                name: name.into(),
                suggestions: crate::base::suggest::close_names(
                    name,
                    self.vars.keys().map(|k| k.as_str()),
                ),
            }
            .into()
        })
    }

    /// Whether the last [`initialize`](Self::initialize) left variable or part `name` to another
    /// rank ([`LoadOptions::rank`](crate::LoadOptions::rank)): it then has no value here.
    pub fn is_other_rank(&self, name: &str) -> bool {
        self.elsewhere.contains(name)
    }

    /// Copies every device value back into host memory, so that [`value`](Self::value) and
    /// [`partitioned_value`](Self::partitioned_value) see it (the device values stay).
    pub fn fetch_to_host(&mut self) -> Result<()> {
        for (name, d) in &self.device_values {
            let t = d.to_host()?;
            self.values.insert(name.clone(), t);
        }
        Ok(())
    }

    /// The whole value of a partitioned variable (its parts joined along the split axis), after
    /// a host initialization (or [`fetch_to_host`](Self::fetch_to_host)); in the dtype the
    /// parts have (see [`LoadOptions::cast`](crate::LoadOptions::cast)). Every allocation is
    /// fallible: a value too large to hold is an error, never an abort.
    pub fn partitioned_value(&self, name: &str) -> Result<Tensor> {
        let _reading = crate::base::sigbus::reading();
        let pv = self.partitioned_or_err(name)?;
        let parts = pv
            .parts
            .iter()
            .map(|p| {
                let v = &self.vars[p];
                let t = self
                    .values
                    .get(p)
                    .ok_or_else(|| self.no_host_value(p, ""))?;
                let region = v.part.as_ref().map(|i| i.slice(&v.shape).region(&pv.shape));
                Ok((region.unwrap_or_default(), t))
            })
            .collect::<Result<Vec<_>>>()?;
        let dtype = parts.first().map_or(pv.dtype, |(_, t)| t.dtype);
        // A part's value may have been replaced (`value_mut`): it must still fit its box.
        for ((have, t), p) in parts.iter().zip(&pv.parts) {
            let fits = match &t.data {
                TensorData::Bytes(b) => dtype
                    .size()
                    .is_some_and(|s| b.len() as u64 == have.num_elements().unwrap_or(0) * s as u64),
                TensorData::Strings(s) => {
                    dtype.size().is_none() && s.len() as u64 == have.num_elements().unwrap_or(0)
                }
            };
            if t.dtype != dtype {
                // The first part's dtype is the one expected (after a cast, not the declared one).
                return Err(ErrorKind::BadVariable {
                    name: p.clone(),
                    reason: format!(
                        "its value is {} {:?}, and {:?}'s is {dtype}: the parts of a partitioned \
                         variable share one dtype",
                        t.dtype, t.shape, pv.parts[0]
                    ),
                }
                .into());
            }
            if t.shape != have.shape() || !fits {
                return Err(ErrorKind::BadVariable {
                    name: p.clone(),
                    reason: format!(
                        "its value is {} {:?}, the partitioned variable needs {dtype} {:?}",
                        t.dtype,
                        t.shape,
                        have.shape()
                    ),
                }
                .into());
            }
        }
        // `check_shape` bounded the element count when the variable was made.
        let n = num_elements(&pv.shape).unwrap_or(0) as usize;
        let full = Region::whole(&pv.shape);
        let data = match dtype.size() {
            Some(size) => {
                let mut bytes = crate::base::mmap::alloc_zeroed(n * size, name)?;
                for (have, t) in &parts {
                    let src = t.bytes().unwrap_or_default();
                    for_each_run(have, &full, have, |r| {
                        let (a, d, l) = (
                            r.src as usize * size,
                            r.dst as usize * size,
                            r.len as usize * size,
                        );
                        bytes[d..d + l].copy_from_slice(&src[a..a + l]);
                    });
                }
                TensorData::Bytes(bytes.into())
            }
            None => {
                let mut out = StringsByRuns::new(n, name)?;
                let none = Strings::new();
                for (have, t) in &parts {
                    let src = t.strings().unwrap_or(&none);
                    for_each_run(have, &full, have, |r| out.lengths(src, r.src, r.dst, r.len));
                }
                out.offsets(name)?;
                for (have, t) in &parts {
                    let src = t.strings().unwrap_or(&none);
                    for_each_run(have, &full, have, |r| out.bytes(src, r.src, r.dst, r.len));
                }
                TensorData::Strings(out.finish().ok_or_else(|| ErrorKind::BadVariable {
                    name: name.into(),
                    reason: "its parts' strings do not add up".into(),
                })?)
            }
        };
        for (_, t) in &parts {
            if let TensorData::Bytes(b) = &t.data {
                b.intact()?;
                b.unchanged()?;
            }
        }
        Ok(Tensor {
            dtype,
            shape: pv.shape.clone(),
            data,
        })
    }

    /// Runs `f` over the store on the calling thread, catching a checkpoint file truncated under
    /// a value mapped copy-on-write ([`LoadOptions::map_values`](crate::LoadOptions::map_values))
    /// while `f` reads it: the result is then [`ErrorKind::Truncated`] naming the file, where a
    /// plain read would end the process with `SIGBUS`. A file written in place since the load
    /// checked such a value (its pages then show the new bytes) makes the result
    /// [`ErrorKind::ChangedInPlace`]: what `f` read may not be what was checked, so `f` should
    /// not commit it (rename a file into place) itself. `tfckpt init` writes its values out this
    /// way, and moves them into place after. The same holds for any other mapping of the library
    /// that `f` reads on this thread (a [`TensorView`](crate::TensorView), another store's value).
    /// Reads on other threads are not covered. Nor should `f` wait on a thread pool from a worker
    /// of that pool (a rayon `join` or parallel iterator called on a pool's worker thread): while
    /// it waits, the thread runs other jobs of that pool, and would read their mappings as `f`'s
    /// (a truncated file there read as zeros, and reported here).
    pub fn read_values<R>(&self, f: impl FnOnce(&Self) -> R) -> Result<R> {
        let reading = crate::base::sigbus::reading();
        let out = f(self);
        let repaired = reading.repaired();
        drop(reading);
        for t in self.values.values() {
            if let TensorData::Bytes(b) = &t.data {
                b.intact()?;
            }
        }
        if let Some(path) = repaired {
            return Err(ErrorKind::Truncated { path }.into());
        }
        self.check_values()?;
        Ok(out)
    }

    /// `Ok` unless a value mapped copy-on-write can no longer be trusted: a library read found
    /// its file truncated, or its file was written in place since the load checked it (such a
    /// value shows the file's bytes in the pages the trainer has not written).
    fn check_values(&self) -> Result<()> {
        // Each file once (many values may map one shard).
        let mut asked: Vec<&std::path::Path> = Vec::new();
        for t in self.values.values() {
            if let TensorData::Bytes(b) = &t.data {
                b.intact()?;
                // Written in place since: and a truncation that a system call met (EFAULT rather
                // than SIGBUS, so no read marked it) shows here as the file's new length.
                b.unchanged_once(&mut asked)?;
            }
        }
        Ok(())
    }
}

/// The variable's rank must be TensorFlow's and its bytes in memory addressable.
fn check_shape(name: &str, shape: &[u64], dtype: DType) -> Result<()> {
    if shape.len() > MAX_RANK {
        return Err(ErrorKind::BadVariable {
            name: name.into(),
            reason: format!(
                "{} dimensions: at most {MAX_RANK}, as in TensorFlow",
                shape.len()
            ),
        }
        .into());
    }
    // A string element takes at least its 8-byte offset (`Strings`).
    let elem = dtype.size().unwrap_or(8) as u64;
    match num_elements(shape).and_then(|n| n.checked_mul(elem)) {
        Some(bytes) if bytes <= isize::MAX as u64 => Ok(()),
        _ => Err(ErrorKind::BadVariable {
            name: name.into(),
            reason: format!("shape {shape:?} of {dtype} is too large to hold in memory"),
        }
        .into()),
    }
}
