//! `init_from_checkpoint` (docs/format.md#8-init_from_checkpoint-semantics): an assignment map of
//! (checkpoint key, target) pairs is checked against the checkpoint's index and the variable store,
//! and each target variable records which tensor (and which box of it) it will load. No tensor
//! bytes are read here: values arrive when [`VariableStore::initialize`] runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::base::dtype::DType;
use crate::base::error::{listed, Error, ErrorKind, Result};
use crate::base::slice::Slice;
use crate::base::suggest::close_names;
use crate::init::store::{Pending, Variable, VariableStore};
use crate::reader::checkpoint::{Checkpoint, TensorInfo};

/// The right-hand side of an assignment-map pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A string, as in Python: a variable or part name, a partitioned variable's name, or else a
    /// scope (`"new_scope/"`, `"/"`; `"new_scope"` without the slash means the same scope).
    Name(String),
    /// A variable object (`{"variable": NAME}` in MAP.json): one variable, or one part alone.
    Variable(String),
    /// A list of variable objects: parts of one partitioned variable (`var._get_variable_list()`).
    Parts(Vec<String>),
}

impl Target {
    /// A name target (variable, partitioned variable or scope).
    pub fn name(s: impl Into<String>) -> Target {
        Target::Name(s.into())
    }

    /// A scope target; the trailing `/` is added if missing.
    pub fn scope(s: impl Into<String>) -> Target {
        let mut s = s.into();
        if !s.ends_with('/') {
            s.push('/');
        }
        Target::Name(s)
    }

    /// A variable object target.
    pub fn variable(s: impl Into<String>) -> Target {
        Target::Variable(s.into())
    }

    /// A list-of-parts target.
    pub fn parts<S: Into<String>>(parts: impl IntoIterator<Item = S>) -> Target {
        Target::Parts(parts.into_iter().map(Into::into).collect())
    }

    fn describe(&self) -> String {
        match self {
            Target::Name(s) => s.clone(),
            Target::Variable(s) => format!("variable {s}"),
            Target::Parts(p) => format!("[{}]", listed(p.iter(), p.len())),
        }
    }
}

impl From<&str> for Target {
    fn from(s: &str) -> Target {
        Target::Name(s.into())
    }
}

/// Ordered (checkpoint key, target) pairs; a key may repeat. Pairs are applied in ascending key order
/// (stable), so for one variable the last pair in that order wins — as in TensorFlow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssignmentMap {
    pairs: Vec<(String, Target)>,
}

impl AssignmentMap {
    /// An empty map.
    pub fn new() -> AssignmentMap {
        AssignmentMap::default()
    }

    /// Appends a pair.
    pub fn push(&mut self, key: impl Into<String>, target: impl Into<Target>) -> &mut Self {
        self.pairs.push((key.into(), target.into()));
        self
    }

    /// The pairs, in insertion order.
    pub fn pairs(&self) -> &[(String, Target)] {
        &self.pairs
    }
}

impl<K: Into<String>, T: Into<Target>, const N: usize> From<[(K, T); N]> for AssignmentMap {
    fn from(pairs: [(K, T); N]) -> AssignmentMap {
        pairs.into_iter().collect()
    }
}

impl<K: Into<String>, T: Into<Target>> FromIterator<(K, T)> for AssignmentMap {
    fn from_iter<I: IntoIterator<Item = (K, T)>>(iter: I) -> AssignmentMap {
        AssignmentMap {
            pairs: iter
                .into_iter()
                .map(|(k, t)| (k.into(), t.into()))
                .collect(),
        }
    }
}

/// One recorded initializer: variable ← box of a checkpoint tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Assignment {
    /// The variable or part.
    pub variable: String,
    /// The checkpoint tensor.
    pub tensor: String,
    /// The box of the tensor the variable takes.
    pub slice: Slice,
}

/// What one `init_from_checkpoint` call recorded.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct InitReport {
    /// The resolved checkpoint prefix whose tensors will be loaded.
    pub checkpoint: PathBuf,
    /// Every variable (or part) that will load from the checkpoint, in the order recorded.
    pub assignments: Vec<Assignment>,
    /// Scope mappings that matched no variable (not an error, as in TensorFlow).
    pub warnings: Vec<String>,
}

/// TensorFlow's `tf.compat.v1.train.init_from_checkpoint(ckpt_dir_or_file, assignment_map)`.
///
/// Opens the checkpoint's index (never its tensor data), checks every pair — missing checkpoint,
/// missing tensor, missing variable, shape and dtype mismatch, all at call time (TensorFlow checks
/// some of these only when the initializer runs, and never dtypes before that) — and records for each
/// target variable which tensor box it will load. A call that fails changes nothing (TensorFlow keeps
/// the pairs it processed before the error). Values are loaded by [`VariableStore::initialize`].
///
/// Like TensorFlow's, `ckpt_dir_or_file` may be a URL on object storage (`s3://`, `gs://`,
/// `http(s)://`; feature `remote`, see [`Checkpoint::open`](crate::Checkpoint::open)): the index is
/// fetched now, the tensor bytes by `initialize` in parallel ranges
/// ([`LoadOptions::remote`](crate::LoadOptions::remote)).
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let prefix = dir.path().join("model.ckpt");
/// # let mut w = tfckpt::CheckpointWriter::create(&prefix, Default::default())?;
/// # w.add("old_scope_1/var1", (&tfckpt::Tensor::from_f32(&[2], &[1.0, 2.0]).unwrap()).into())?;
/// # w.finish()?;
/// use tfckpt::{init_from_checkpoint, AssignmentMap, DType, Device, Init, Target, VariableStore};
///
/// let mut store = VariableStore::new();
/// store.get_variable("new_scope_1/var1", &[2], DType::F32, Init::Zeros)?;
/// init_from_checkpoint(&mut store, &prefix, &AssignmentMap::from([("old_scope_1/", Target::scope("new_scope_1"))]))?;
/// store.initialize(Device::Cpu)?;
/// assert_eq!(store.value("new_scope_1/var1").unwrap().to_f32().unwrap(), [1.0, 2.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn init_from_checkpoint(
    store: &mut VariableStore,
    ckpt_dir_or_file: impl AsRef<Path>,
    map: &AssignmentMap,
) -> Result<InitReport> {
    let ckpt = std::sync::Arc::new(Checkpoint::open(ckpt_dir_or_file.as_ref())?);
    init_opened(store, ckpt, map, &Accepts::TENSORFLOW).map_err(with_cast_hint)
}

/// [`init_from_checkpoint`] on a checkpoint already opened: one opened with
/// [`Checkpoint::open_with`] (object storage: a larger [`RemoteOptions::whole_max_bytes`] for a big
/// index or V1 file), or shared by several calls, which then read its index once.
///
/// [`RemoteOptions::whole_max_bytes`]: crate::RemoteOptions::whole_max_bytes
pub fn init_from_opened_checkpoint(
    store: &mut VariableStore,
    ckpt: &std::sync::Arc<Checkpoint>,
    map: &AssignmentMap,
) -> Result<InitReport> {
    init_opened(store, ckpt.clone(), map, &Accepts::TENSORFLOW).map_err(with_cast_hint)
}

/// A dtype mismatch's hint where the load can convert.
fn with_cast_hint(e: Error) -> Error {
    e.with_dtype_hint(|var, tensor| {
        crate::load::cast::supported(tensor, var).then(|| {
            format!(
                "TensorFlow never casts; to convert, declare the variable as {tensor} and \
                 initialize with LoadOptions::cast(DType::{tensor:?}, DType::{var:?})"
            )
        })
    })
}

/// What a variable may take: TensorFlow's rule is a tensor of its own dtype and shape; a
/// destination that converts, or lays values out its own way, may accept more.
pub(crate) struct Accepts<'a> {
    /// Variable `v` may take a tensor of dtype `t` (TensorFlow: `v.dtype == t`).
    pub dtype: &'a dyn Fn(&Variable, DType) -> bool,
    /// Variable `v`, mapped whole, may take a tensor of another shape `s` (TensorFlow: never); it
    /// must have that shape before it loads (the caller gives it the tensor's).
    pub shape: &'a dyn Fn(&Variable, &[u64]) -> bool,
}

impl Accepts<'static> {
    /// TensorFlow's rule: the variable's own dtype and shape.
    pub(crate) const TENSORFLOW: Accepts<'static> = Accepts {
        dtype: &|v, t| v.dtype == t,
        shape: &|_, _| false,
    };
}

pub(crate) fn init_opened(
    store: &mut VariableStore,
    ckpt: std::sync::Arc<Checkpoint>,
    map: &AssignmentMap,
    accepts: &Accepts<'_>,
) -> Result<InitReport> {
    let mut pairs: Vec<&(String, Target)> = map.pairs.iter().collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0)); // stable: equal keys keep their order
    let mut report = InitReport {
        checkpoint: ckpt.prefix().to_path_buf(),
        ..Default::default()
    };
    // Variable -> (sequence number of its last assignment, what it loads, why it cannot): the
    // last pair wins. A binding's dtype and shape problems are those TensorFlow finds only when
    // the initializer runs, so they count only for the binding that wins (TensorFlow never runs
    // a replaced initializer).
    let mut staged: BTreeMap<String, (usize, Pending, Option<Error>)> = BTreeMap::new();
    let mut seq = 0;
    let resolver = Resolver {
        ckpt: &ckpt,
        store: &*store,
        accepts,
    };
    let prefix: std::sync::Arc<Path> = ckpt.prefix().into();
    for (key, target) in pairs {
        for b in resolver.resolve(key, target, &mut report.warnings)? {
            let pending = Pending {
                checkpoint: prefix.clone(),
                tensor: b.tensor,
                slice: b.slice,
            };
            staged.insert(b.variable, (seq, pending, b.problem));
            seq += 1;
        }
    }
    // The first winning binding (in the order of the pairs) that cannot load.
    if let Some((_, e)) = staged
        .values_mut()
        .filter_map(|(seq, _, problem)| problem.take().map(|e| (*seq, e)))
        .min_by_key(|(seq, _)| *seq)
    {
        return Err(e);
    }
    let mut recorded: Vec<_> = staged.iter().collect();
    recorded.sort_by_key(|(_, (seq, _, _))| *seq);
    report.assignments = recorded
        .into_iter()
        .map(|(var, (_, p, _))| Assignment {
            variable: var.clone(),
            tensor: p.tensor.clone(),
            slice: p.slice.clone(),
        })
        .collect();
    let staged = staged.into_iter().map(|(var, (_, p, _))| (var, p));
    store.pending.extend(staged);
    store.warnings.extend(report.warnings.iter().cloned());
    store.opened.retain(|c| c.prefix() != ckpt.prefix());
    store.opened.push(ckpt);
    Ok(report)
}

/// The whole checkpoint tensor `map` gives `variable` (the last pair that binds it), each pair
/// resolved as [`init_opened`] resolves it but past any that fails: what an error about a
/// variable beside it may compare with. `None` where no pair binds it, or binds a slice.
#[cfg(feature = "candle")]
pub(crate) fn bound_tensor(
    store: &VariableStore,
    ckpt: &Checkpoint,
    map: &AssignmentMap,
    accepts: &Accepts<'_>,
    variable: &str,
) -> Option<String> {
    let mut pairs: Vec<&(String, Target)> = map.pairs.iter().collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let resolver = Resolver {
        ckpt,
        store,
        accepts,
    };
    let mut found = None;
    for (key, target) in pairs {
        match resolver.resolve(key, target, &mut Vec::new()) {
            Ok(bindings) => {
                for b in bindings.into_iter().filter(|b| b.variable == variable) {
                    found = b.slice.is_full().then_some(b.tensor);
                }
            }
            // A variable mapped alone fails here on its shape, naming its tensor.
            Err(e) => match e.into_kind() {
                ErrorKind::ShapeMismatch {
                    variable: v,
                    tensor,
                    ..
                } if v == variable => found = Some(tensor),
                _ => {}
            },
        }
    }
    found
}

/// One pair resolved: a variable (or part) takes a box of a checkpoint tensor.
struct Binding {
    variable: String,
    tensor: String,
    slice: Slice,
    /// Why this binding cannot load, where TensorFlow would find it only when the initializer
    /// runs (an error only if no later pair replaces the binding).
    problem: Option<Error>,
}

/// Resolves the pairs of an assignment map against a checkpoint's listing and a store.
struct Resolver<'a> {
    ckpt: &'a Checkpoint,
    store: &'a VariableStore,
    accepts: &'a Accepts<'a>,
}

/// What a target resolves to in the store.
enum Resolved<'s> {
    Single(&'s Variable),
    Parts(Vec<&'s Variable>),
}

impl Resolver<'_> {
    fn resolve(
        &self,
        key: &str,
        target: &Target,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<Binding>> {
        let resolved = match target {
            Target::Variable(name) => Resolved::Single(self.var(key, name)?),
            Target::Parts(names) if names.is_empty() => {
                // TensorFlow checks the key, then initializes nothing (a rank's share of the
                // parts may be none).
                self.tensor(key, key, target, "(an empty list of parts)")?;
                warnings.push(format!(
                    "assignment {key:?}: the list of parts is empty, so nothing is initialized \
                     from it"
                ));
                return Ok(Vec::new());
            }
            Target::Parts(names) => match self.parts(key, names) {
                Ok(parts) => Resolved::Parts(parts),
                // TensorFlow looks the key up before it checks the list (at install).
                Err(e) => {
                    self.tensor(key, key, target, &listed(names.iter(), names.len()))?;
                    return Err(e);
                }
            },
            Target::Name(name) => match self.lookup(name) {
                Some(r) => r,
                None => return self.scope(key, target, name, warnings),
            },
        };
        let info = self.tensor(key, key, target, &describe_vars(&resolved))?;
        self.install(resolved, info, true)
    }

    /// The variable object (or part) `name` that the pair of checkpoint key `key` names.
    fn var(&self, key: &str, name: &str) -> Result<&Variable> {
        if let Some(pv) = self.store.partitioned.get(name) {
            return Err(ErrorKind::BadVariable {
                name: name.into(),
                reason: format!(
                    "assignment {key:?} maps it as one variable object, but a partitioned \
                     variable ({} parts) is not one: map it by its name (a string target) or as \
                     the list of its parts",
                    pv.parts.len()
                ),
            }
            .into());
        }
        self.store.vars.get(name).ok_or_else(|| {
            // Variables and parts only: a partitioned variable is no variable object (above).
            let vars = self.store.vars.keys().map(String::as_str);
            ErrorKind::MappedVariableNotFound {
                key: key.into(),
                name: name.into(),
                suggestions: close_names(name, vars),
            }
            .into()
        })
    }

    /// A variable name, or a partitioned variable's name (its parts): what TF1's variable store
    /// holds (never a `variable_object`).
    fn lookup(&self, name: &str) -> Option<Resolved<'_>> {
        if let Some(v) = self.store.vars.get(name).filter(|v| v.in_store) {
            return Some(Resolved::Single(v));
        }
        let pv = self.store.partitioned.get(name)?;
        Some(Resolved::Parts(
            pv.parts
                .iter()
                .filter_map(|p| self.store.vars.get(p))
                .collect(),
        ))
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.store
            .vars
            .keys()
            .chain(self.store.partitioned.keys())
            .map(String::as_str)
    }

    fn parts(&self, key: &str, names: &[String]) -> Result<Vec<&Variable>> {
        let bad = |reason: String| -> Error {
            ErrorKind::BadPartList {
                key: key.into(),
                reason,
            }
            .into()
        };
        let vars = names
            .iter()
            .map(|n| self.var(key, n))
            .collect::<Result<Vec<_>>>()?;
        let mut full: Option<&str> = None;
        for v in &vars {
            let Some(p) = &v.part else {
                return Err(bad(format!(
                    "{} is not a part of a partitioned variable; a list target is only for the parts of one partitioned variable (map one tensor to several variables with several pairs)",
                    v.name
                )));
            };
            match full {
                Some(f) if f != p.full_name => {
                    return Err(bad(format!(
                        "the list holds parts of two variables, {f} and {}: a list target is the \
                         parts of one partitioned variable",
                        p.full_name
                    )))
                }
                _ => full = Some(&p.full_name),
            }
        }
        Ok(vars)
    }

    /// The checkpoint tensor `name`, or an error naming the assignment and close tensor names.
    fn tensor(
        &self,
        name: &str,
        key: &str,
        target: &Target,
        variable: &str,
    ) -> Result<&TensorInfo> {
        self.ckpt.tensor(name).map_err(|e| {
            let absent_files = match e.into_kind() {
                ErrorKind::TensorNotFound { absent_files, .. } => absent_files,
                _ => Vec::new(),
            };
            ErrorKind::MappedTensorNotFound {
                ckpt: self.ckpt.prefix().to_path_buf(),
                tensor: name.into(),
                variable: variable.into(),
                key: key.into(),
                target: target.describe(),
                suggestions: close_names(name, self.ckpt.tensors().iter().map(|t| t.name.as_str())),
                absent_files,
            }
            .into()
        })
    }

    /// Checks dtype and shape and yields the destinations. Only a single variable mapped
    /// directly (`direct`) is shape-checked now, as TensorFlow checks it when called; the other
    /// problems go with their binding (TensorFlow meets them when the initializer runs).
    fn install(&self, r: Resolved<'_>, info: &TensorInfo, direct: bool) -> Result<Vec<Binding>> {
        let ckpt = self.ckpt.prefix().to_path_buf();
        // `name`: the variable as mapped (a part mapped alone, or the whole of a part list).
        let dtype_check = |v: &Variable, name: &str| -> Result<()> {
            if !(self.accepts.dtype)(v, info.dtype) {
                return Err(ErrorKind::DtypeMismatch {
                    ckpt: ckpt.clone(),
                    variable: name.into(),
                    variable_dtype: v.dtype,
                    tensor: info.name.clone(),
                    tensor_dtype: info.dtype,
                    hint: None,
                }
                .into());
            }
            Ok(())
        };
        let shape_err = |variable: &str, shape: &[u64]| -> Error {
            ErrorKind::ShapeMismatch {
                ckpt: ckpt.clone(),
                variable: variable.into(),
                variable_shape: shape.to_vec(),
                tensor: info.name.clone(),
                tensor_shape: info.shape.clone(),
            }
            .into()
        };
        match r {
            Resolved::Single(v) => {
                let problem = if v.shape != info.shape && !(self.accepts.shape)(v, &info.shape) {
                    if direct {
                        return Err(shape_err(&v.name, &v.shape));
                    }
                    Some(shape_err(&v.name, &v.shape))
                } else {
                    dtype_check(v, &v.name).err()
                };
                Ok(vec![Binding {
                    variable: v.name.clone(),
                    tensor: info.name.clone(),
                    slice: Slice::full(v.shape.len()),
                    problem,
                }])
            }
            Resolved::Parts(parts) => {
                let mut out = Vec::with_capacity(parts.len());
                for v in parts {
                    // `parts()` / `lookup()` only yield parts.
                    let Some(p) = &v.part else { continue };
                    let problem = if p.full_shape != info.shape {
                        Some(shape_err(&p.full_name, &p.full_shape))
                    } else {
                        dtype_check(v, &p.full_name).err()
                    };
                    out.push(Binding {
                        variable: v.name.clone(),
                        tensor: info.name.clone(),
                        slice: p.slice(&v.shape),
                        problem,
                    });
                }
                Ok(out)
            }
        }
    }

    /// A scope mapping (docs/format.md#85-scope-mapping), in the documented form: `target` names
    /// no variable, so it is a scope.
    fn scope(
        &self,
        key: &str,
        target: &Target,
        value: &str,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<Binding>> {
        if !key.ends_with('/') {
            // A variable object named by a string: TensorFlow's store does not hold it either.
            if self.store.vars.get(value).is_some_and(|v| !v.in_store) {
                return Err(ErrorKind::BadVariable {
                    name: value.into(),
                    reason: format!(
                        "assignment {key:?} names it by a string, which reaches only the \
                         variables of TF1's variable store (get_variable), and it is a variable \
                         object (variable_object, as tf.Variable makes one): map it as an \
                         object (Target::Variable)"
                    ),
                }
                .into());
            }
            return Err(ErrorKind::NotAVariableOrScope {
                key: key.into(),
                target: value.into(),
                suggestions: close_names(value, self.names()),
            }
            .into());
        }
        if value.is_empty() {
            return Err(ErrorKind::EmptyTarget { key: key.into() }.into());
        }
        // "new_scope" and "new_scope/" are the same scope (TF's documentation; its code would drop
        // the last path component); "/" is the root.
        let scope = if value == "/" {
            ""
        } else {
            value.strip_suffix('/').unwrap_or(value)
        };
        // Candidates: unpartitioned variables and partitioned variables (by full name) under the
        // scope. Parts are grouped by their partitioned variable, not by cutting names at "/part_".
        // A partitioned variable named exactly like the scope is a candidate too: its parts
        // `scope/part_i` are under the scope, and TF maps it from the checkpoint key without its '/'.
        let mut candidates = self.under_scope(scope);
        candidates.sort_unstable();
        if candidates.is_empty() {
            warnings.push(format!(
                "assignment {key:?} -> {value:?}: no variable in scope {value:?}; nothing mapped"
            ));
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        for n in candidates {
            // The name below the scope; empty for a partitioned variable named like the scope.
            let rel = if scope.is_empty() {
                n
            } else {
                n.get(scope.len() + 1..).unwrap_or("")
            };
            let mut t = if key == "/" {
                rel.to_string()
            } else {
                format!("{key}{rel}")
            };
            if t.ends_with('/') {
                t.pop();
            }
            let info = self.tensor(&t, key, target, n)?;
            let Some(resolved) = self.lookup(n) else {
                continue;
            };
            out.extend(self.install(resolved, info, false)?);
        }
        Ok(out)
    }
}

impl Resolver<'_> {
    /// The unpartitioned variables and the partitioned variables (by full name) under `scope`
    /// (`""`: the root), plus a partitioned variable named exactly like the scope. Both maps are
    /// sorted, so the names under `scope/` are one range, `[scope/, scope0)` ('0' follows '/'):
    /// a pair costs the variables it matches, not every variable of the store.
    fn under_scope(&self, scope: &str) -> Vec<&str> {
        let (vars, partitioned) = (&self.store.vars, &self.store.partitioned);
        let whole = |v: &&Variable| v.part.is_none() && v.in_store;
        if scope.is_empty() {
            return vars
                .values()
                .filter(whole)
                .map(|v| v.name.as_str())
                .chain(partitioned.keys().map(String::as_str))
                .collect();
        }
        let range = format!("{scope}/")..format!("{scope}0");
        vars.range(range.clone())
            .map(|(_, v)| v)
            .filter(whole)
            .map(|v| v.name.as_str())
            .chain(partitioned.range(range).map(|(k, _)| k.as_str()))
            .chain(partitioned.get_key_value(scope).map(|(k, _)| k.as_str()))
            .collect()
    }
}

fn describe_vars(r: &Resolved<'_>) -> String {
    match r {
        Resolved::Single(v) => v.name.clone(),
        Resolved::Parts(p) => p
            .first()
            .and_then(|v| v.part.as_ref())
            .map_or_else(String::new, |p| p.full_name.clone()),
    }
}
