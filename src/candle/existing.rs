//! [`CandleInit::map_existing`]: BERT's recipe (every `Var` whose name the checkpoint holds), what
//! it leaves out on each side, and the mistakes it can name: a scope added on one side, a typo in a
//! module's name, a layer built with in and out swapped.

use std::collections::BTreeMap;
use std::path::Path;

use super::CandleInit;
use crate::base::error::{ErrorKind, Result};
use crate::init::assign::{AssignmentMap, Target};
use crate::reader::checkpoint::Checkpoint;
use crate::reader::object_names::{Found, PATHS};

/// What [`CandleInit::map_existing`] found: BERT's `get_assignment_map_from_checkpoint`.
/// (`non_exhaustive`: what it reports may grow.)
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ExistingMap {
    /// Every `Var` whose TensorFlow name the checkpoint holds, mapped to that tensor, whatever its
    /// shape, as BERT's recipe maps by name alone: a name held with another shape makes
    /// `init_from_checkpoint` fail, naming the `Var` and both shapes, rather than leave the `Var`
    /// silently untrained. [`fitting`](Self::fitting) leaves those out.
    pub map: AssignmentMap,
    /// The pairs of `map`: (candle name, TensorFlow name).
    pub pairs: Vec<(String, String)>,
    /// Candle names of the `Var`s the checkpoint does not hold (they keep candle's
    /// initialization: a fresh head, say).
    pub not_in_checkpoint: Vec<String>,
    /// The pairs of `map` whose tensor has another shape than the `Var`: (candle name, TensorFlow
    /// name, the `Var`'s shape as TensorFlow's, the tensor's shape).
    pub shape_mismatches: Vec<(String, String, Vec<u64>, Vec<u64>)>,
    /// Checkpoint tensors no `Var` takes (optimizer slots, a pre-training head, the step).
    pub not_in_model: Vec<String>,
    /// Candle names of the `Var`s the convention gives no TensorFlow name (a convolution's
    /// weight under [`Convention::tf1`](super::Convention::tf1), a `Var` the trainer's function
    /// names `None`): no checkpoint value reaches them, and they keep candle's initialization.
    pub unnamed: Vec<String>,
    /// The `Var`s of `not_in_checkpoint` whose TensorFlow name is close to tensors no `Var` takes
    /// (a typo in a module's name, say, which leaves that layer untrained): (candle name,
    /// TensorFlow name, the close tensors' names; under
    /// [`Convention::keras`](super::Convention::keras), their names or attribute paths in the
    /// object graph). Map them by hand, or fix the model's names.
    pub near_misses: Vec<(String, String, Vec<String>)>,
    /// Under [`Convention::keras`](super::Convention::keras), the `Var`s of `not_in_checkpoint`
    /// whose name the object graph gives several variables (two layers of one name in two
    /// models, or `net/kernel`, the TensorFlow name of every kernel of a Keras 3 subclassed
    /// model `net`), or a key the checkpoint lacks: (candle name, the name, the keys). Build such
    /// layers under the attribute paths that tell them apart
    /// ([`ObjectNames::paths`](crate::ObjectNames::paths) lists them), or map them by hand.
    pub ambiguous: Vec<(String, String, Vec<String>)>,
    /// The layers of `shape_mismatches` (of its first 256) that look built with in and out
    /// swapped (`candle_nn::linear(out, in)`): (candle name of the weight, the checkpoint
    /// kernel's shape `[in, out]`, which the weight has as it stands instead of its transpose).
    pub swapped: Vec<(String, Vec<u64>)>,
}

/// One paragraph of what was found, to print: how many `Var`s pair, those that do not and the
/// near misses among them, the pairs of another shape and the layers among them that look built
/// with in and out swapped, the tensors no `Var` takes, and the unnamed `Var`s (each list's first
/// 8).
impl std::fmt::Display for ExistingMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::base::error::listed;
        // `; LABEL: a, b, ...` for a list that is not empty.
        fn list<T: std::fmt::Display>(
            f: &mut std::fmt::Formatter<'_>,
            label: &str,
            items: impl ExactSizeIterator<Item = T>,
        ) -> std::fmt::Result {
            match items.len() {
                0 => Ok(()),
                n => write!(f, "; {label}: {}", listed(items, n)),
            }
        }
        let all = self.pairs.len() + self.not_in_checkpoint.len() + self.unnamed.len();
        let paired = self.pairs.len();
        write!(f, "{paired} of {all} Vars pair with a checkpoint tensor")?;
        list(f, "not in the checkpoint", self.not_in_checkpoint.iter())?;
        for (candle, tf, close) in self.near_misses.iter().take(8) {
            let close = close.iter().map(|c| format!("{c:?}"));
            let n = close.len();
            write!(f, "; {candle} ({tf:?}) is close to {}", listed(close, n))?;
        }
        if self.near_misses.len() > 8 {
            write!(f, "; ... {} near misses in all", self.near_misses.len())?;
        }
        for (candle, name, keys) in self.ambiguous.iter().take(8) {
            let keys = keys.iter().map(|k| format!("{k:?}"));
            let n = keys.len();
            write!(
                f,
                "; {candle} ({name:?}) is not one variable of the object graph: {}",
                listed(keys, n)
            )?;
        }
        if self.ambiguous.len() > 8 {
            write!(f, "; ... {} such Vars in all", self.ambiguous.len())?;
        }
        let shapes = self.shape_mismatches.iter();
        let shapes = shapes.map(|(candle, _, var, t)| format!("{candle} {var:?} vs {t:?}"));
        list(
            f,
            "held with another shape (the Var's, in TensorFlow's layout, vs the tensor's)",
            shapes,
        )?;
        let swapped = self.swapped.iter().map(|(weight, k)| {
            let layer = weight.rsplit_once('.').map_or(weight.as_str(), |(m, _)| m);
            match k[..] {
                [i, o] => format!("{layer} (the kernel {k:?} is linear({i}, {o}))"),
                _ => format!("{layer} (the kernel {k:?})"),
            }
        });
        list(f, "in and out look swapped", swapped)?;
        list(f, "tensors no Var takes", self.not_in_model.iter())?;
        list(f, "no TensorFlow name", self.unnamed.iter())
    }
}

impl ExistingMap {
    /// `map` without the names the checkpoint holds with another shape: those `Var`s keep
    /// candle's initialization (a fresh head under a pre-trained head's name, say). Shapes are
    /// all it checks: a tensor of another dtype than its `Var` is still an error of
    /// `init_from_checkpoint` under [`DtypePolicy::Exact`](super::DtypePolicy::Exact) (see
    /// [`dtype_policy`](CandleInit::dtype_policy)).
    pub fn fitting(&self) -> AssignmentMap {
        let mut map = AssignmentMap::new();
        for (_, tf) in &self.pairs {
            if !self.shape_mismatches.iter().any(|m| &m.1 == tf) {
                map.push(tf.clone(), Target::Variable(tf.clone()));
            }
        }
        map
    }
}

impl CandleInit {
    /// Pairs every `Var` with the checkpoint tensor of its TensorFlow name, as BERT's
    /// `get_assignment_map_from_checkpoint` does, and says what was left out on each side. Reads
    /// only the checkpoint's index. Where half of the `Var`s or more would pair with a scope added
    /// on one side, more than pair by name (a model built on `vb` where Google's checkpoint has
    /// `bert/`, perhaps with a head built under `bert.` by hand that pairs), it fails naming the
    /// scope and how to add or drop it (under [`Convention::keras`](super::Convention::keras),
    /// a scope of the object graph's names: a `Sequential`'s model name, say). An
    /// [`init_from_checkpoint`](Self::init_from_checkpoint)
    /// of the same path right after reuses the index read here while its files are unchanged
    /// (on object storage: one HEAD instead of reading it again).
    pub fn map_existing(&self, ckpt_dir_or_file: impl AsRef<Path>) -> Result<ExistingMap> {
        let path = ckpt_dir_or_file.as_ref();
        let ckpt = std::sync::Arc::new(Checkpoint::open(path)?);
        *self.last_opened.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((path.to_path_buf(), ckpt.clone()));
        let mut found = ExistingMap::default();
        for (tf, b) in &self.vars {
            let Ok(t) = ckpt.tensor(tf) else {
                found.not_in_checkpoint.push(b.candle.clone());
                continue;
            };
            let shape = self
                .store
                .vars
                .get(tf)
                .map(|v| v.shape.clone())
                .unwrap_or_default();
            // A depthwise kernel is taken in its own shape (`init_from_checkpoint` adapts).
            if shape != t.shape && !b.depthwise(&t.shape) {
                // The first 256 mismatches are looked at for a swapped layer (each a walk over
                // the `Var`s: a model of another size under the same names mismatches everywhere).
                let shape_of = |var: &str| ckpt.tensor(var).ok().map(|k| k.shape.clone());
                let swapped = match found.shape_mismatches.len() < 256 {
                    true => self.swapped(tf, &t.shape, shape_of),
                    false => None,
                };
                if let Some((weight, kernel)) = swapped {
                    if !found.swapped.iter().any(|(w, _)| *w == weight) {
                        found.swapped.push((weight, kernel));
                    }
                }
                let mismatch = (b.candle.clone(), tf.clone(), shape, t.shape.clone());
                found.shape_mismatches.push(mismatch);
            }
            found.map.push(tf.clone(), Target::Variable(tf.clone()));
            found.pairs.push((b.candle.clone(), tf.clone()));
        }
        found.not_in_model = ckpt
            .tensors()
            .iter()
            .filter(|t| !self.vars.contains_key(&t.name))
            .map(|t| t.name.clone())
            .collect();
        found.unnamed = self.unnamed.clone();
        let paths = self
            .graph
            .as_ref()
            .map(|g| g.paths_up_to(PATHS))
            .unwrap_or_default();
        if let Some(why) = self.scope_mismatch(&ckpt, &paths, found.pairs.len()) {
            return Err(ErrorKind::InvalidArgument(why).into());
        }
        // Each compared with every tensor left over: the first 256 (a model and a checkpoint
        // that share nothing are the scope check's above, not a list of near misses).
        let missing: std::collections::HashSet<&str> =
            found.not_in_checkpoint.iter().map(String::as_str).collect();
        let missing = self
            .vars
            .iter()
            .filter(|(_, b)| missing.contains(b.candle.as_str()));
        // Under a Keras convention, the object graph's names and attribute paths of the tensors
        // left over.
        let left: Vec<&str> = match &self.graph {
            Some(graph) => {
                let left: std::collections::HashSet<&str> =
                    found.not_in_model.iter().map(String::as_str).collect();
                let named = graph.iter().filter(|(_, key)| left.contains(key));
                let walked = paths.iter().filter(|(_, key)| left.contains(key));
                let mut names: Vec<&str> = named.map(|(name, _)| name).collect();
                names.extend(walked.map(|(path, _)| path.as_str()));
                names.sort_unstable();
                names.dedup();
                names
            }
            None => found.not_in_model.iter().map(String::as_str).collect(),
        };
        if let Some(graph) = &self.graph {
            for (tf, b) in missing.clone() {
                let path = super::convention::attribute_path(&b.candle, tf);
                if let Found::Unusable(keys) = graph.find(tf, path.as_deref()) {
                    let keys = keys.into_iter().map(str::to_string).collect();
                    found.ambiguous.push((b.candle.clone(), tf.clone(), keys));
                }
            }
        }
        // Not those reported as several variables: their own name is among those left over.
        let missing = missing.filter(|(_, b)| !found.ambiguous.iter().any(|a| a.0 == b.candle));
        for (tf, b) in missing.take(256) {
            let close = crate::base::suggest::typos(tf, left.iter().copied());
            if !close.is_empty() {
                found
                    .near_misses
                    .push((b.candle.clone(), tf.clone(), close));
            }
        }
        Ok(found)
    }

    /// Where `paired` `Var`s pair with a tensor of `ckpt` by name but half or more, and more than
    /// `paired`, would with a scope added on one side (candle-transformers' `BertModel::load(vb,
    /// ..)` names its `Var`s without Google's `bert/`, which `vb.pp("bert")` adds), what to do: an
    /// error is better than a model left to its random initialization without a word. Under
    /// [`Convention::keras`](super::Convention::keras), the names are its object graph's and
    /// the attribute `paths` to its variables (a Keras `Sequential` names its variables under its
    /// own name, a functional model does not, nor does a subclassed model's attribute path).
    fn scope_mismatch(
        &self,
        ckpt: &Checkpoint,
        paths: &[(String, &str)],
        paired: usize,
    ) -> Option<String> {
        /// Per scope: how many names it pairs, and one pair (the model's TensorFlow name, the
        /// checkpoint's).
        type Scopes = BTreeMap<String, (usize, String, String)>;
        fn count(scopes: &mut Scopes, scope: &str, tf: &str, c: &str) {
            let e = scopes
                .entry(scope.to_string())
                .or_insert_with(|| (0, tf.to_string(), c.to_string()));
            e.0 += 1;
        }
        fn best(scopes: Scopes) -> Option<(String, (usize, String, String))> {
            scopes.into_iter().max_by_key(|(_, v)| v.0)
        }
        let (mut in_ckpt, mut in_model) = (Scopes::new(), Scopes::new());
        // In name order (the index's), so that each scope's example pair is always the same.
        let names: std::collections::BTreeSet<&str> = match &self.graph {
            Some(graph) => {
                let named = graph.iter().map(|(name, _)| name);
                named
                    .chain(paths.iter().map(|(path, _)| path.as_str()))
                    .collect()
            }
            None => ckpt.tensors().iter().map(|t| t.name.as_str()).collect(),
        };
        for &c in &names {
            for (i, _) in c.match_indices('/') {
                if self.vars.contains_key(&c[i + 1..]) {
                    count(&mut in_ckpt, &c[..=i], &c[i + 1..], c);
                }
            }
        }
        for tf in self.vars.keys() {
            for (i, _) in tf.match_indices('/') {
                if names.contains(&tf[i + 1..]) {
                    count(&mut in_model, &tf[..=i], tf, &tf[i + 1..]);
                }
            }
        }
        let candle = |tf: &str| {
            self.vars
                .get(tf)
                .map_or(tf.to_string(), |b| b.candle.clone())
        };
        let prefix = ckpt.prefix().display();
        // Under a Keras convention the names are the object graph's: no assignment map pairs them
        // (it takes keys), and no BERT is meant.
        let keras = self.graph.is_some();
        let (what, there) = match keras {
            true => ("variable", "in its object graph"),
            false => ("tensor", "there"),
        };
        // A chance match of a few names is no scope: at least half of the model's Vars, and more
        // than pair by name.
        let many = |found: Option<(String, (usize, String, String))>| {
            found.filter(|(_, (n, _, _))| 2 * n >= self.vars.len() && *n > paired)
        };
        let lead = match paired {
            0 => format!("no Var pairs with a {what} of {prefix} by its name"),
            _ => format!(
                "only {paired} of the model's {} Vars pair with a {what} of {prefix} by name",
                self.vars.len()
            ),
        };
        match (many(best(in_ckpt)), many(best(in_model))) {
            (Some((scope, (n, tf, c))), other) if other.as_ref().is_none_or(|o| o.1 .0 <= n) => {
                let pp = scope.trim_end_matches('/').replace('/', ".");
                let advice = match keras {
                    true => format!("build the model under vb.pp({pp:?})"),
                    false => format!(
                        "build the model under vb.pp({pp:?}) (candle-transformers' \
                         BertModel::load does not add it), or map with {{{scope:?}: \"/\"}}"
                    ),
                };
                Some(format!(
                    "{lead}, but {n} would under the scope {scope:?} ({:?}, TensorFlow name \
                     {tf:?}, is {c:?} {there}): {advice}",
                    candle(&tf)
                ))
            }
            (_, Some((scope, (n, tf, c)))) => {
                let advice = match keras {
                    true => "build the model without it".to_string(),
                    false => {
                        format!("build the model without it, or map with {{\"/\": {scope:?}}}")
                    }
                };
                Some(format!(
                    "{lead}, but {n} would without the scope {scope:?} of the model's names \
                     ({:?}, TensorFlow name {tf:?}, is {c:?} {there}): {advice}",
                    candle(&tf)
                ))
            }
            _ => None,
        }
    }

    /// Where the `Var` of TensorFlow name `tf`, whose tensor is `tensor_shape`, belongs to a
    /// layer built with in and out swapped (`candle_nn::linear(out, in)`), what to say;
    /// `shape_of` gives the shape of the tensor another `Var` takes, by its TensorFlow name. A
    /// transposed weight whose tensor has its own shape, with no bias to tell, gets both readings.
    pub(super) fn swapped_layer(
        &self,
        tf: &str,
        tensor_shape: &[u64],
        shape_of: impl Fn(&str) -> Option<Vec<u64>>,
    ) -> Option<String> {
        if let Some((weight, k)) = self.swapped(tf, tensor_shape, shape_of) {
            let (i, o) = (k[0], k[1]);
            return Some(format!(
                "in and out look swapped: the checkpoint's kernel is [{i}, {o}] (TensorFlow's \
                 [in, out]), a candle_nn::linear({i}, {o}), but {weight:?} is [{i}, {o}] as \
                 candle's [out, in], a linear({o}, {i})"
            ));
        }
        let b = self.vars.get(tf)?;
        let dims: Vec<u64> = b.var.dims().iter().map(|&d| d as u64).collect();
        let own = b.transposed && dims.len() == 2 && dims[0] != dims[1] && tensor_shape == dims;
        own.then(|| {
            let (a, z) = (dims[0], dims[1]);
            format!(
                "the tensor has the Var's own shape, [{a}, {z}]: either the layer is built with in \
                 and out swapped (a TensorFlow [in, out] kernel [{a}, {z}] is a \
                 candle_nn::linear({a}, {z})), or the checkpoint holds this kernel [out, in], as \
                 a tied embedding table is (then name it untransposed, with Convention::tf1_with)"
            )
        })
    }

    /// The layer of the `Var` of TensorFlow name `tf` (whose tensor is `tensor_shape`), if it
    /// looks built with in and out swapped: (candle name of its weight, the kernel's shape).
    /// The layer is `tf`'s candle module: its one transposed 2-D `Var` (the weight, candle shape
    /// `[o, i]`, o ≠ i) and its one 1-D `Var` (the bias). Swapped when both tensors say so: the
    /// kernel is `[o, i]` (the weight as it stands, where it should be its transpose) and the
    /// bias `Var` is `[o]` where its tensor is `[i]`. A kernel alone that is the weight as it
    /// stands may be a correct layer's kernel stored `[out, in]` (a tied embedding table, say).
    fn swapped(
        &self,
        tf: &str,
        tensor_shape: &[u64],
        shape_of: impl Fn(&str) -> Option<Vec<u64>>,
    ) -> Option<(String, Vec<u64>)> {
        let module = |candle: &str| candle.rsplit_once('.').map(|(m, _)| m.to_string());
        let m = module(&self.vars.get(tf)?.candle)?;
        // The module's one `Var` of a kind.
        let one = |kind: &dyn Fn(&super::Bound) -> bool| {
            let mut found = self
                .vars
                .iter()
                .filter(|(_, b)| kind(b) && module(&b.candle).as_ref() == Some(&m));
            match (found.next(), found.next()) {
                (Some((t, b)), None) => Some((t.as_str(), b)),
                _ => None,
            }
        };
        let (weight_tf, weight) = one(&|b| b.transposed && b.var.dims().len() == 2)?;
        let (bias_tf, bias) = one(&|b| b.var.dims().len() == 1)?;
        let shape = |name: &str| match name == tf {
            true => Some(tensor_shape.to_vec()),
            false => shape_of(name),
        };
        let dims: Vec<u64> = weight.var.dims().iter().map(|&d| d as u64).collect();
        let (o, i) = (dims[0], dims[1]);
        let fits = o != i
            && bias.var.dims() == [o as usize]
            && shape(weight_tf)? == dims
            && shape(bias_tf)? == [i];
        fits.then(|| (weight.candle.clone(), dims))
    }
}
