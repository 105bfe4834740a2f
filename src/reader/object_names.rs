//! The variables of a TF2 object-based save by the names they had when it was written.
//!
//! `tf.train.Checkpoint` (and Keras 3, which saves through it) stores each variable under the first
//! path of attributes that leads to it from the saved object, such as
//! `model/_functional/_operations/2/_kernel/.ATTRIBUTES/VARIABLE_VALUE` (or, saved with its
//! optimizer, `optimizer/_trainable_variables/1/.ATTRIBUTES/VARIABLE_VALUE`), and records the
//! variable's own name (`sequential/enc/kernel`, a Keras 3 variable's path) only in the object
//! graph it saves beside, `_CHECKPOINTABLE_OBJECT_GRAPH`. TensorFlow reads that graph where a
//! name-based `tf.compat.v1.train.Saver` restores an object-based save
//! (`saver.object_graph_key_mapping`: each attribute's `full_name` to its `checkpoint_key`);
//! [`Checkpoint::object_names`] is the same mapping, with a name saved twice reported rather
//! than the last one kept.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost::Message;

use super::checkpoint::Checkpoint;
use crate::base::dtype::DType;
use crate::base::error::{listed, suggest, ErrorKind, Result};
use crate::format::proto::TrackableObjectGraph;

/// The name under which an object-based save stores its object graph.
pub(crate) const OBJECT_GRAPH: &str = "_CHECKPOINTABLE_OBJECT_GRAPH";

/// The variables of a TF2 object-based save by the names they had when it was written, from its
/// object graph: [`Checkpoint::object_names`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectNames {
    ckpt: PathBuf,
    /// Each name's checkpoint keys, in the graph's order, each once, and whether the checkpoint
    /// holds each.
    names: BTreeMap<String, Vec<(String, bool)>>,
}

impl ObjectNames {
    /// The checkpoint key of the variable saved under `name` (TensorFlow's `full_name`), the name
    /// to give [`init_from_checkpoint`](crate::init_from_checkpoint)'s assignment map or
    /// [`Checkpoint::read`]. An [`ErrorKind::ObjectGraph`] where the graph gives `name` no key
    /// (with close names), several (several objects held variables of that name, as the
    /// `kernel`s of two `tf.Module`s, or a partitioned variable's parts: the first 8 keys are
    /// listed with the count, [`ambiguous`](Self::ambiguous) gives them all, and each can be
    /// named by its key), or a key the checkpoint does not hold.
    pub fn key(&self, name: &str) -> Result<&str> {
        let err = |reason: String| {
            Err(ErrorKind::ObjectGraph {
                ckpt: self.ckpt.clone(),
                name: Some(name.to_string()),
                reason,
            }
            .into())
        };
        if let Some(key) = self.resolve(name) {
            return Ok(key);
        }
        match self.names.get(name).map(Vec::as_slice) {
            Some([(key, false)]) => err(format!(
                "it gives variable {name:?} the key {key:?}, which the checkpoint does not hold"
            )),
            Some(keys) => err(format!(
                "the object graph gives the name {name:?} {} keys (variables of that name, or the \
                 parts of one partitioned variable): {}; name the one wanted by its key",
                keys.len(),
                listed(keys.iter().map(|(k, _)| format!("{k:?}")), keys.len())
            )),
            None if self.is_key(name) => err(format!(
                "no variable was saved under the name {name:?}, which is a checkpoint key itself: \
                 use it as it is"
            )),
            None => {
                let close =
                    crate::base::suggest::close_names(name, self.names.keys().map(String::as_str));
                err(format!(
                    "no variable was saved under the name {name:?}{}",
                    suggest(&close)
                ))
            }
        }
    }

    /// `name`'s key where [`key`](Self::key) gives one, without building its error (a
    /// convention tries several names).
    pub(crate) fn resolve(&self, name: &str) -> Option<&str> {
        match self.names.get(name).map(Vec::as_slice) {
            Some([(key, true)]) => Some(key),
            _ => None,
        }
    }

    /// Whether the graph gives `name` any key (one, several, or one the checkpoint lacks).
    #[cfg(feature = "candle")]
    pub(crate) fn knows(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// The names of `pairs` (name, key), each key held by the checkpoint: a name given twice is
    /// ambiguous.
    #[cfg(all(test, feature = "candle"))]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> ObjectNames {
        let mut names: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        for (name, key) in pairs {
            names
                .entry(name.to_string())
                .or_default()
                .push((key.to_string(), true));
        }
        ObjectNames {
            ckpt: PathBuf::from("test"),
            names,
        }
    }

    /// Whether the graph gives some name the key `key`.
    fn is_key(&self, key: &str) -> bool {
        self.names.values().flatten().any(|(k, _)| k == key)
    }

    /// Every name that gives one key the checkpoint holds, with that key, in name order: the
    /// names [`key`](Self::key) answers. Not listed: the [`ambiguous`](Self::ambiguous) names,
    /// and a name whose key the checkpoint does not hold (a damaged or partial save; `key` says
    /// so). A whole scope into an assignment map, `sequential/` as `model/`:
    ///
    /// ```no_run
    /// # use tfckpt::{AssignmentMap, Checkpoint, Target};
    /// # let names = Checkpoint::open("/data/keras/ckpt-1")?.object_names()?;
    /// let map: AssignmentMap = names
    ///     .iter()
    ///     .filter_map(|(name, key)| {
    ///         let rest = name.strip_prefix("sequential/")?;
    ///         Some((key, Target::name(format!("model/{rest}"))))
    ///     })
    ///     .collect();
    /// # Ok::<(), tfckpt::Error>(())
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.names
            .iter()
            .filter_map(|(name, keys)| match keys.as_slice() {
                [(key, true)] => Some((name.as_str(), key.as_str())),
                _ => None,
            })
    }

    /// The names given to more than one key, with their keys.
    pub fn ambiguous(&self) -> impl Iterator<Item = (&str, Vec<&str>)> + '_ {
        self.names
            .iter()
            .filter(|(_, keys)| keys.len() > 1)
            .map(|(name, keys)| {
                (
                    name.as_str(),
                    keys.iter().map(|(k, _)| k.as_str()).collect(),
                )
            })
    }

    /// How many names [`iter`](Self::iter) gives.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether [`iter`](Self::iter) gives none (also where every name is ambiguous).
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl Checkpoint {
    /// The variables of a TF2 object-based save (`tf.train.Checkpoint`, Keras 3) by the names they
    /// had when it was written, read from its object graph: what TensorFlow's name-based `Saver`
    /// restores such a save by (`saver.object_graph_key_mapping`). A Keras 3 model's
    /// `sequential/enc/kernel`, saved with its optimizer, is stored as
    /// `optimizer/_trainable_variables/1/.ATTRIBUTES/VARIABLE_VALUE`; with the mapping, an
    /// assignment map (or a candle convention) names it as the model does:
    ///
    /// ```no_run
    /// # use tfckpt::{init_from_opened_checkpoint, AssignmentMap, Checkpoint, Target, VariableStore};
    /// let ckpt = std::sync::Arc::new(Checkpoint::open("/data/keras/ckpt-1")?);
    /// let names = ckpt.object_names()?;
    /// let mut store = VariableStore::new();
    /// // ... the model's variables, declared as usual ...
    /// let map = AssignmentMap::from([
    ///     (names.key("sequential/enc/kernel")?, Target::name("enc/kernel")),
    ///     (names.key("sequential/enc/bias")?, Target::name("enc/bias")),
    /// ]);
    /// init_from_opened_checkpoint(&mut store, &ckpt, &map)?;
    /// # Ok::<(), tfckpt::Error>(())
    /// ```
    ///
    /// Attributes without a `full_name` are left out: what is not a variable (an iterator's
    /// state), which TensorFlow's mapping puts under the name `""`. Where TensorFlow's mapping
    /// keeps the last of several keys saved under one name, this one reports the name as
    /// ambiguous ([`ObjectNames::key`]). [`ErrorKind::ObjectGraph`] where the checkpoint has no
    /// object graph (a TF1 save, whose tensors are named by their variables already) or one that
    /// does not decode; a graph tensor that cannot be read fails as any tensor does (a checksum
    /// error, say).
    pub fn object_names(&self) -> Result<ObjectNames> {
        let err = |reason: String| -> crate::Error {
            ErrorKind::ObjectGraph {
                ckpt: self.prefix().to_path_buf(),
                name: None,
                reason,
            }
            .into()
        };
        if !self.contains(OBJECT_GRAPH) {
            return Err(err(format!(
                "it has none ({OBJECT_GRAPH}): it is not a TF2 object-based save \
                 (tf.train.Checkpoint), and its tensors are named by their variables already"
            )));
        }
        let t = self.read(OBJECT_GRAPH)?;
        let bytes = match (t.dtype, t.shape.as_slice(), t.strings()) {
            (DType::String, [], Some(s)) => s.get(0).unwrap_or_default(),
            _ => {
                return Err(err(format!(
                    "{OBJECT_GRAPH} is {} {:?}, expected a string scalar",
                    t.dtype, t.shape
                )))
            }
        };
        let graph = TrackableObjectGraph::decode(bytes)
            .map_err(|e| err(format!("{OBJECT_GRAPH} is damaged: {e}")))?;
        let mut names: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        for a in graph.nodes.iter().flat_map(|n| &n.attributes) {
            if a.full_name.is_empty() || a.checkpoint_key.is_empty() {
                continue;
            }
            let keys = names.entry(a.full_name.clone()).or_default();
            if !keys.iter().any(|(k, _)| *k == a.checkpoint_key) {
                keys.push((a.checkpoint_key.clone(), self.contains(&a.checkpoint_key)));
            }
        }
        Ok(ObjectNames {
            ckpt: self.prefix().to_path_buf(),
            names,
        })
    }
}
