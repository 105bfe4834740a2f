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

/// At most this many attribute paths of an object graph are listed ([`ObjectNames::paths`]).
pub(crate) const PATHS: usize = 1 << 16;

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
    /// The graph's objects (the saved object first), for the attribute paths to its variables.
    nodes: Vec<Node>,
}

/// An object of the graph: its children by the attribute names it holds them under, and, for a
/// variable, its key and whether the checkpoint holds it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct Node {
    children: BTreeMap<String, usize>,
    variable: Option<(String, bool)>,
}

/// What [`ObjectNames::find`] found of a variable.
#[cfg(feature = "candle")]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found<'a> {
    /// Nothing: no variable of that name or path.
    Nothing,
    /// One variable, whose key the checkpoint holds.
    Key(&'a str),
    /// Several variables, or one whose key the checkpoint lacks: the keys.
    Unusable(Vec<&'a str>),
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

    /// The variables named `name` (their `full_name`) or reached by the attribute path `path`
    /// from the saved object or one of its children (`["block", "up", "kernel"]` reaches
    /// `model/block/up/_kernel` of a `tf.train.Checkpoint(model=net)`: the last attribute may
    /// carry Keras 3's leading `_`), taken together: a convention asks for a `Var` both ways.
    #[cfg(feature = "candle")]
    pub(crate) fn find(&self, name: &str, path: Option<&[&str]>) -> Found<'_> {
        let mut keys: Vec<(&str, bool)> = Vec::new();
        let named = self.names.get(name).into_iter().flatten();
        let walked = path.map(|p| self.walk(p)).unwrap_or_default();
        for (key, held) in named.map(|(k, h)| (k.as_str(), *h)).chain(walked) {
            if !keys.iter().any(|(k, _)| *k == key) {
                keys.push((key, held));
            }
        }
        match keys.as_slice() {
            [] => Found::Nothing,
            [(key, true)] => Found::Key(key),
            _ => Found::Unusable(keys.iter().map(|(k, _)| *k).collect()),
        }
    }

    /// The variables at the attribute path `path` from the saved object or from one of its
    /// children, the last attribute as it is or with a leading `_`.
    #[cfg(feature = "candle")]
    fn walk(&self, path: &[&str]) -> Vec<(&str, bool)> {
        let (Some((last, inner)), Some(root)) = (path.split_last(), self.nodes.first()) else {
            return Vec::new();
        };
        let mut found: Vec<(&str, bool)> = Vec::new();
        for start in std::iter::once(0).chain(root.children.values().copied()) {
            let reached = inner.iter().try_fold(start, |at, attribute| {
                self.nodes[at].children.get(*attribute).copied()
            });
            let Some(at) = reached else { continue };
            for leaf in [last.to_string(), format!("_{last}")] {
                let variable = self.nodes[at].children.get(&leaf);
                if let Some((key, held)) = variable.and_then(|&v| self.nodes[v].variable.as_ref()) {
                    if !found.iter().any(|(k, _)| k == key) {
                        found.push((key, *held));
                    }
                }
            }
        }
        found
    }

    /// The attribute paths to the variables, each with its key, in path order: from each
    /// object the save holds (`model` of `tf.train.Checkpoint(model=net, optimizer=opt)`, whose
    /// name is left out) down the Python attributes (`self.block.up`: `block/up/kernel`, the
    /// last attribute without Keras 3's leading `_`, as candle's `Convention::keras` takes
    /// them). A variable may be reached by several paths: a Keras 3 layer through its attribute and through its
    /// model's lists (`_layers/1/...`, or `_operations/2/up/kernel` for a custom layer's
    /// sub-layer in a functional model), a model's variable through its optimizer
    /// (`_trainable_variables/1`). At most 65,536 paths, up to 16 attributes deep (a graph may
    /// reach an object by many more).
    pub fn paths(&self) -> Vec<(String, &str)> {
        let mut paths = self.paths_up_to(PATHS);
        paths.sort_unstable();
        paths.dedup();
        paths
    }

    /// [`paths`](Self::paths), the first `limit` met going down from each object in turn,
    /// unsorted.
    pub(crate) fn paths_up_to(&self, limit: usize) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        let Some(root) = self.nodes.first() else {
            return out;
        };
        // (node, path to it); depth-first, at most 16 attributes deep.
        let mut stack: Vec<(usize, Vec<&str>)> =
            root.children.values().map(|&c| (c, Vec::new())).collect();
        let mut visits = 0usize;
        while let Some((at, path)) = stack.pop() {
            visits += 1;
            if visits > limit.saturating_mul(8) {
                break;
            }
            for (attribute, &child) in &self.nodes[at].children {
                let mut path = path.clone();
                path.push(attribute);
                if let Some((key, _)) = &self.nodes[child].variable {
                    if out.len() == limit {
                        return out;
                    }
                    let mut name = path.join("/");
                    let leaf = name.rfind('/').map_or(0, |i| i + 1);
                    if name[leaf..].starts_with('_') {
                        name.remove(leaf);
                    }
                    out.push((name, key.as_str()));
                } else if path.len() < 16 {
                    stack.push((child, path));
                }
            }
        }
        out
    }

    /// The names and objects of `graph`, the graph of checkpoint `ckpt`, which holds the keys
    /// `held` accepts.
    fn from_graph(
        ckpt: PathBuf,
        graph: &TrackableObjectGraph,
        held: impl Fn(&str) -> bool,
    ) -> Self {
        let mut names: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        for a in graph.nodes.iter().flat_map(|n| &n.attributes) {
            if a.full_name.is_empty() || a.checkpoint_key.is_empty() {
                continue;
            }
            let keys = names.entry(a.full_name.clone()).or_default();
            if !keys.iter().any(|(k, _)| *k == a.checkpoint_key) {
                keys.push((a.checkpoint_key.clone(), held(&a.checkpoint_key)));
            }
        }
        // Children pointing outside the graph are left out (a damaged graph).
        let nodes = graph
            .nodes
            .iter()
            .map(|n| Node {
                children: n
                    .children
                    .iter()
                    .filter_map(|c| {
                        let id = usize::try_from(c.node_id).ok()?;
                        (id < graph.nodes.len()).then(|| (c.local_name.clone(), id))
                    })
                    .collect(),
                variable: n
                    .attributes
                    .iter()
                    .find(|a| a.name == "VARIABLE_VALUE" && !a.checkpoint_key.is_empty())
                    .map(|a| (a.checkpoint_key.clone(), held(&a.checkpoint_key))),
            })
            .collect();
        ObjectNames { ckpt, names, nodes }
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
            nodes: Vec::new(),
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
        Ok(ObjectNames::from_graph(
            self.prefix().to_path_buf(),
            &graph,
            |key| self.contains(key),
        ))
    }
}

#[cfg(all(test, feature = "candle"))]
mod tests {
    use super::*;
    use crate::format::proto::{ObjectReference, SerializedTensor, TrackableObject};

    /// An object: its children (attribute, node), and the variable it is (full name, key).
    type Object<'a> = (&'a [(&'a str, i32)], Option<(&'a str, &'a str)>);

    /// A graph of `nodes`, of a checkpoint that holds the keys `held` accepts.
    fn graph_held(nodes: &[Object], held: impl Fn(&str) -> bool) -> ObjectNames {
        let graph = TrackableObjectGraph {
            nodes: nodes
                .iter()
                .map(|(children, variable)| TrackableObject {
                    children: children
                        .iter()
                        .map(|&(local_name, node_id)| ObjectReference {
                            node_id,
                            local_name: local_name.into(),
                        })
                        .collect(),
                    attributes: variable
                        .map(|(full_name, key)| SerializedTensor {
                            name: "VARIABLE_VALUE".into(),
                            full_name: full_name.into(),
                            checkpoint_key: key.into(),
                        })
                        .into_iter()
                        .collect(),
                })
                .collect(),
        };
        ObjectNames::from_graph("ckpt".into(), &graph, held)
    }

    /// A graph of `nodes`, of a checkpoint that holds every key.
    fn graph_of(nodes: &[Object]) -> ObjectNames {
        graph_held(nodes, |_| true)
    }

    /// A Keras 3 subclassed model's graph, as `tf.train.Checkpoint(model=net)` saves it: the
    /// sub-layers' variables all named `net/kernel` or `net/bias` (fixture
    /// `tf2_keras_subclassed`), a variable by two paths, a cycle, children that point nowhere,
    /// and a key the checkpoint lacks.
    fn graph() -> ObjectNames {
        graph_held(
            &[
                (&[("model", 1), ("save_counter", 9), ("lost", 99)], None),
                (&[("block", 2), ("head", 5), ("_layers", 10)], None),
                (&[("up", 3), ("down", 4), ("parent", 1), ("gone", -1)], None),
                (&[("_kernel", 6), ("bias", 7)], None),
                (&[("_kernel", 8)], None),
                (&[("kernel", 11)], None),
                (&[], Some(("net/kernel", "model/block/up/_kernel"))),
                (&[], Some(("net/bias", "model/block/up/bias"))),
                (&[], Some(("net/kernel", "model/block/down/_kernel"))),
                (&[], Some(("save_counter", "save_counter"))),
                // `_layers/0` reaches `up` again.
                (&[("0", 3)], None),
                (&[], Some(("head/kernel", "model/head/kernel"))),
            ],
            |key| key != "model/head/kernel",
        )
    }

    #[test]
    fn a_path_that_reaches_two_variables_is_unusable() {
        // `block/up/kernel` from the saved object and from its child `model`; `kernel` and
        // `_kernel` of one object.
        let names = graph_of(&[
            (&[("block", 1), ("model", 4)], None),
            (&[("up", 2)], None),
            (&[("kernel", 3), ("_bias", 8), ("bias", 9)], None),
            (&[], Some(("a", "block/up/kernel"))),
            (&[("block", 5)], None),
            (&[("up", 6)], None),
            (&[("_kernel", 7)], None),
            (&[], Some(("b", "model/block/up/_kernel"))),
            (&[], Some(("c", "block/up/_bias"))),
            (&[], Some(("d", "block/up/bias"))),
        ]);
        assert_eq!(
            names.find("x", Some(&["block", "up", "kernel"])),
            Found::Unusable(vec!["block/up/kernel", "model/block/up/_kernel"])
        );
        assert_eq!(
            names.find("x", Some(&["block", "up", "bias"])),
            Found::Unusable(vec!["block/up/bias", "block/up/_bias"])
        );
        assert_eq!(
            names.find("x", Some(&["up", "kernel"])),
            Found::Key("block/up/kernel")
        );
    }

    #[test]
    fn only_variables_are_found_and_a_child_past_the_graph_is_left_out() {
        // An iterator's state is an attribute of another name; node 3 is one past the last.
        let graph = TrackableObjectGraph {
            nodes: vec![
                TrackableObject {
                    children: vec![ObjectReference {
                        node_id: 1,
                        local_name: "model".into(),
                    }],
                    attributes: vec![],
                },
                TrackableObject {
                    children: ["it", "past"]
                        .iter()
                        .zip([2, 3])
                        .map(|(name, node_id)| ObjectReference {
                            node_id,
                            local_name: (*name).into(),
                        })
                        .collect(),
                    attributes: vec![],
                },
                TrackableObject {
                    children: vec![],
                    attributes: vec![SerializedTensor {
                        name: "ITERATOR_STATE".into(),
                        full_name: "it".into(),
                        checkpoint_key: "model/it/.ATTRIBUTES/ITERATOR_STATE".into(),
                    }],
                },
            ],
        };
        let names = ObjectNames::from_graph("ckpt".into(), &graph, |_| true);
        assert_eq!(names.find("x", Some(&["it"])), Found::Nothing);
        assert_eq!(names.find("x", Some(&["past"])), Found::Nothing);
        assert!(names.paths().is_empty());
    }

    /// Bounded work: a graph whose objects reach themselves by two attributes has 2^16 paths 16
    /// attributes deep, which are walked before the one to a variable (depth first, the last
    /// attribute first): at most 8 objects visited per path asked for, so none is found.
    #[test]
    fn a_graph_of_cycles_is_walked_a_bounded_number_of_times() {
        let names = graph_of(&[
            (&[("model", 1)], None),
            (&[("a", 2), ("x", 1), ("y", 1)], None),
            (&[("kernel", 3)], None),
            (&[], Some(("k", "model/a/kernel"))),
        ]);
        assert!(names.paths_up_to(1).is_empty());
        assert_eq!(
            names.find("x", Some(&["a", "kernel"])),
            Found::Key("model/a/kernel")
        );
    }

    #[test]
    fn variables_are_found_by_name_and_by_attribute_path() {
        let names = graph();
        let up = "model/block/up/_kernel";
        // The path, from the saved object's child or from the saved object; `_kernel` as `kernel`.
        assert_eq!(
            names.find("block/up/kernel", Some(&["block", "up", "kernel"])),
            Found::Key(up)
        );
        assert_eq!(
            names.find(
                "model/block/up/kernel",
                Some(&["model", "block", "up", "kernel"])
            ),
            Found::Key(up)
        );
        assert_eq!(
            names.find("x", Some(&["_layers", "0", "_kernel"])),
            Found::Key(up)
        );
        assert_eq!(names.find("x", Some(&["block", "up"])), Found::Nothing);
        assert_eq!(
            names.find("x", Some(&["block", "gone", "kernel"])),
            Found::Nothing
        );
        assert_eq!(names.find("x", Some(&[])), Found::Nothing);
        // The name several variables had.
        let down = "model/block/down/_kernel";
        assert_eq!(
            names.find("net/kernel", None),
            Found::Unusable(vec![up, down])
        );
        // Name and path agree on one variable, or disagree.
        assert_eq!(
            names.find("net/bias", Some(&["block", "up", "bias"])),
            Found::Key("model/block/up/bias")
        );
        assert_eq!(
            names.find("net/bias", Some(&["block", "down", "kernel"])),
            Found::Unusable(vec!["model/block/up/bias", down])
        );
        // A key the checkpoint lacks.
        assert_eq!(
            names.find("head/kernel", Some(&["head", "kernel"])),
            Found::Unusable(vec!["model/head/kernel"])
        );
    }

    #[test]
    fn attribute_paths_are_listed_bounded_through_cycles() {
        let names = graph();
        let paths = names.paths_up_to(1000);
        for (path, key) in [
            ("block/up/kernel", "model/block/up/_kernel"),
            ("block/up/bias", "model/block/up/bias"),
            ("block/down/kernel", "model/block/down/_kernel"),
            ("_layers/0/kernel", "model/block/up/_kernel"),
            ("head/kernel", "model/head/kernel"),
            // Round the cycle once.
            ("block/parent/block/up/kernel", "model/block/up/_kernel"),
        ] {
            assert!(
                paths.contains(&(path.to_string(), key)),
                "{path}: {paths:?}"
            );
        }
        // The cycle ends at 16 attributes, and the list at its limit.
        assert!(
            paths.iter().all(|(p, _)| p.split('/').count() <= 16),
            "{paths:?}"
        );
        for limit in 0..4 {
            assert_eq!(names.paths_up_to(limit).len(), limit);
        }
    }
}
