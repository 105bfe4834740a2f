//! `Checkpoint::object_names`: the variables of a TF2 object-based save by the names they had when
//! it was written, from its object graph, against what TensorFlow 2.21 recorded for every fixture
//! that has one (`expected/object_names.json`: `saver.object_graph_key_mapping`, and every
//! attribute of the graph read by TensorFlow's own proto class), and its errors.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use common::builder::CkptBuilder;
use common::fixtures::{cases, ckpt_path, fixture};
use serde_json::Value;
use tfckpt::{
    init_from_opened_checkpoint, AssignmentMap, Checkpoint, DType, Device, ErrorKind, Init, Target,
    Tensor, VariableStore,
};

/// The fixtures with an object graph: the checkpoint cases', the SavedModel's and the variant
/// fixture's (an iterator's state, an attribute without a full name); each with its checkpoint
/// and what TensorFlow recorded of the graph.
fn recorded() -> Vec<(String, PathBuf, Value)> {
    let json = |path: PathBuf| -> Option<Value> {
        Some(serde_json::from_str(&std::fs::read_to_string(path).ok()?).unwrap())
    };
    let mut out: Vec<(String, PathBuf, Value)> = cases()
        .into_iter()
        .filter_map(|case| {
            let recorded = json(fixture(&case).join("expected/object_names.json"))?;
            Some((case.clone(), ckpt_path(&case), recorded))
        })
        .collect();
    for (dir, ckpt) in [("saved_model", "variables/variables"), ("variant", "ckpt")] {
        let recorded = json(fixture(dir).join("object_names.json")).unwrap();
        out.push((dir.to_string(), fixture(dir).join(ckpt), recorded));
    }
    let names: Vec<&str> = out.iter().map(|(c, _, _)| c.as_str()).collect();
    for case in [
        "tf2_object",
        "tf2_keras",
        "tf2_keras_layers",
        "tf2_keras2",
        "tf2_keras_subclassed",
        "tf2_max_shard_size",
        "tf2_dtensor",
    ] {
        assert!(names.contains(&case), "{case} not among {names:?}");
    }
    out
}

fn reason(e: &tfckpt::Error) -> String {
    match e.kind() {
        ErrorKind::ObjectGraph { reason, .. } => reason.clone(),
        other => panic!("not an object graph error: {other:?}"),
    }
}

/// Every name TensorFlow's mapping gives resolves to the same key, unless the graph gives that
/// name several keys: then the name is reported as ambiguous, listing each key (TensorFlow's
/// among them, the last it met). The names given once are exactly those `iter` lists.
#[test]
fn every_name_resolves_to_the_key_tensorflow_gives_it() {
    let mut unnamed = 0;
    for (case, path, json) in recorded() {
        let (resolved, ambiguous, without) = compare(&case, path, &json);
        assert!(resolved + ambiguous > 0, "{case}");
        unnamed += without;
    }
    // The variant fixture's iterator.
    assert_eq!(unnamed, 1);
}

/// By hand: the saves `tests/fixtures/object_graphs.py` made in `$TFCKPT_OBJECT_GRAPHS`, random
/// trees of `tf.Module`s, each compared as the fixtures are.
#[test]
#[ignore = "needs TFCKPT_OBJECT_GRAPHS: saves made by tests/fixtures/object_graphs.py"]
fn more_object_graphs_agree_with_tensorflow() {
    let dir =
        std::env::var_os("TFCKPT_OBJECT_GRAPHS").expect("TFCKPT_OBJECT_GRAPHS names a folder");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let mut all = (0, 0, 0);
    for d in &dirs {
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("object_names.json")).unwrap())
                .unwrap();
        let prefix = std::fs::read_to_string(d.join("ckpt.txt")).unwrap();
        let counts = compare(&d.display().to_string(), d.join(prefix.trim()), &json);
        all = (all.0 + counts.0, all.1 + counts.1, all.2 + counts.2);
    }
    eprintln!(
        "{} saves: {} names resolved to TensorFlow's key, {} ambiguous names refused (TensorFlow \
         keeps the last key), {} attributes without a name left out",
        dirs.len(),
        all.0,
        all.1,
        all.2
    );
}

/// Compares `object_names` of the checkpoint at `path` with what TensorFlow recorded (`json`):
/// returns the names resolved, the ambiguous names, and the attributes without a name.
fn compare(case: &str, path: PathBuf, json: &Value) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    let ckpt = Checkpoint::open(path).unwrap();
    let names = ckpt.object_names().unwrap();
    // The graph's attributes, as TensorFlow read them: each name's keys, each once, in order.
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in json["attributes"].as_array().unwrap() {
        let (name, key) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        if name.is_empty() || key.is_empty() {
            // Left out: "" names nothing (TensorFlow's mapping has it).
            let why = reason(&names.key(name).unwrap_err());
            assert!(
                why.starts_with("no variable was saved under the name"),
                "{case}: {why}"
            );
            counts.2 += 1;
            continue;
        }
        let ks = keys.entry(name.to_string()).or_default();
        if !ks.iter().any(|k| k == key) {
            ks.push(key.to_string());
        }
    }
    let mapping = json["names_to_keys"].as_object().unwrap();
    for (name, tf_key) in mapping {
        let tf_key = tf_key.as_str().unwrap();
        if name.is_empty() {
            continue;
        }
        match keys[name].as_slice() {
            [key] => {
                assert_eq!(key, tf_key, "{case}: {name}");
                assert_eq!(names.key(name).unwrap(), tf_key, "{case}: {name}");
                assert!(ckpt.contains(tf_key), "{case}: {tf_key}");
            }
            several => {
                assert_eq!(several.last().map(String::as_str), Some(tf_key));
                // The error shows the first 8 keys and the count (`ambiguous` gives them all).
                let why = reason(&names.key(name).unwrap_err());
                let count = format!("the name {name:?} {} keys", several.len());
                assert!(why.contains(&count), "{case}: {why}");
                for k in several.iter().take(8) {
                    assert!(why.contains(&format!("{k:?}")), "{case}: {why}");
                }
            }
        }
    }
    let once: Vec<(String, String)> = keys
        .iter()
        .filter(|(_, ks)| ks.len() == 1)
        .map(|(n, ks)| (n.clone(), ks[0].clone()))
        .collect();
    let listed: Vec<(String, String)> = names
        .iter()
        .map(|(n, k)| (n.to_string(), k.to_string()))
        .collect();
    assert_eq!(listed, once, "{case}");
    assert_eq!(names.len(), once.len(), "{case}");
    let ambiguous: Vec<(String, Vec<String>)> =
        keys.into_iter().filter(|(_, ks)| ks.len() > 1).collect();
    let reported: Vec<(String, Vec<String>)> = names
        .ambiguous()
        .map(|(n, ks)| (n.to_string(), ks.iter().map(|k| k.to_string()).collect()))
        .collect();
    assert_eq!(reported, ambiguous, "{case}");
    counts.0 = names.len();
    counts.1 = reported.len();
    counts
}

/// The Keras 3 save: its model's variables are stored under the optimizer's paths to them
/// (`optimizer/_trainable_variables/1/...`); by their Keras paths, as the model names them, an
/// assignment map loads each into a variable of the store: the checkpoint's values under those
/// keys (which `tests/tf_fixtures.rs` compares with TensorFlow's reading, and the candle test with
/// TensorFlow's `.npy` files).
#[test]
fn a_keras_model_loads_by_the_names_keras_gave_its_variables() {
    let case = "tf2_keras";
    let ckpt = Arc::new(Checkpoint::open(ckpt_path(case)).unwrap());
    let names = ckpt.object_names().unwrap();
    let notes: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(case).join("expected/notes.json")).unwrap(),
    )
    .unwrap();
    let paths: Vec<&str> = notes["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), 7);
    assert!(!names.is_empty());
    assert_eq!(
        names.key("sequential/enc/kernel").unwrap(),
        "optimizer/_trainable_variables/1/.ATTRIBUTES/VARIABLE_VALUE"
    );
    let mut store = VariableStore::new();
    let mut map = AssignmentMap::new();
    for path in &paths {
        let key = names.key(path).unwrap();
        let info = ckpt.tensor(key).unwrap();
        let var = path.replacen("sequential/", "model/", 1);
        store
            .get_variable(&var, &info.shape, DType::F32, Init::Zeros)
            .unwrap();
        map.push(key, Target::name(&var));
    }
    init_from_opened_checkpoint(&mut store, &ckpt, &map).unwrap();
    store.initialize(Device::Cpu).unwrap();
    for path in &paths {
        let key = names.key(path).unwrap();
        let var = path.replacen("sequential/", "model/", 1);
        let got = store.value(&var).unwrap();
        let want: Tensor = ckpt.read(key).unwrap();
        assert_eq!(got.shape, want.shape, "{path}");
        assert_eq!(got.bytes(), want.bytes(), "{path}");
        assert!(
            got.to_vec::<f32>().unwrap().iter().any(|&x| x != 0.0),
            "{path}"
        );
    }
}

/// A name saved by several objects (`kernel`, the name three `tf.Module`s gave their variables)
/// lists every key; a name not saved offers close ones; a checkpoint without an object graph (a
/// TF1 save) says what it is.
#[test]
fn ambiguous_unknown_and_missing_names_say_what_is_wrong() {
    let names = Checkpoint::open(ckpt_path("tf2_object"))
        .unwrap()
        .object_names()
        .unwrap();
    let e = names.key("kernel").unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ObjectGraph { name: Some(n), .. } if n == "kernel"));
    let why = reason(&e);
    assert!(
        why.starts_with("the object graph gives the name \"kernel\" 3 keys"),
        "{why}"
    );
    for k in [
        "model/dense/kernel",
        "model/layers/0/kernel",
        "model/layers/1/kernel",
    ] {
        assert!(
            why.contains(&format!("\"{k}/.ATTRIBUTES/VARIABLE_VALUE\"")),
            "{why}"
        );
    }
    assert!(names
        .ambiguous()
        .any(|(n, keys)| n == "kernel" && keys.len() == 3));
    assert!(names.iter().all(|(n, _)| n != "kernel"));

    let keras = Checkpoint::open(ckpt_path("tf2_keras"))
        .unwrap()
        .object_names()
        .unwrap();
    let e = keras.key("sequential/enc/kernal").unwrap_err();
    let why = reason(&e);
    assert!(
        why.contains("no variable was saved under the name \"sequential/enc/kernal\""),
        "{why}"
    );
    assert!(
        why.contains("did you mean \"sequential/enc/kernel\""),
        "{why}"
    );
    assert!(e.to_string().contains("tf2_keras"), "{e}");

    // A checkpoint key is not a name, and the error says to use it as it is.
    let key = "optimizer/_trainable_variables/1/.ATTRIBUTES/VARIABLE_VALUE";
    let why = reason(&keras.key(key).unwrap_err());
    assert!(why.contains("is a checkpoint key itself"), "{why}");

    let v1 = Checkpoint::open(ckpt_path("h1_basic")).unwrap();
    let e = v1.object_names().unwrap_err();
    let why = reason(&e);
    assert!(why.contains("not a TF2 object-based save"), "{why}");
    assert!(why.contains("_CHECKPOINTABLE_OBJECT_GRAPH"), "{why}");
}

/// A `TrackableObjectGraph` of one node with one attribute, encoded by hand (field 1: nodes;
/// in a node, field 2: attributes; in an attribute, 1: name, 2: full_name, 3: checkpoint_key).
fn graph(full_name: &str, key: &str) -> Vec<u8> {
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        assert!(bytes.len() < 128);
        let mut out = vec![tag << 3 | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }
    let attribute = [
        field(1, b"VARIABLE_VALUE"),
        field(2, full_name.as_bytes()),
        field(3, key.as_bytes()),
    ]
    .concat();
    field(1, &field(2, &attribute))
}

/// Damaged graphs: bytes that are no proto, a graph that is no string scalar, and a graph whose
/// key the checkpoint does not hold each fail naming the checkpoint and what is wrong; a whole
/// one resolves.
#[test]
fn a_damaged_object_graph_is_an_error_naming_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, graph: Tensor| {
        let mut b = CkptBuilder::new(dir.path().join(name));
        b.f32("w/.ATTRIBUTES/VARIABLE_VALUE", &[2], &[1.0, 2.0]);
        b.tensor("_CHECKPOINTABLE_OBJECT_GRAPH", &graph);
        Checkpoint::open(b.finish()).unwrap()
    };
    let string = |bytes: Vec<u8>| Tensor::from_strings(&[], vec![bytes]).unwrap();

    let good = write(
        "good",
        string(graph("dense/w", "w/.ATTRIBUTES/VARIABLE_VALUE")),
    );
    let names = good.object_names().unwrap();
    assert_eq!(
        names.key("dense/w").unwrap(),
        "w/.ATTRIBUTES/VARIABLE_VALUE"
    );

    let absent = write(
        "absent",
        string(graph("dense/w", "v/.ATTRIBUTES/VARIABLE_VALUE")),
    );
    let names = absent.object_names().unwrap();
    let why = reason(&names.key("dense/w").unwrap_err());
    assert!(
        why.contains(
            "the key \"v/.ATTRIBUTES/VARIABLE_VALUE\", which the checkpoint does not hold"
        ),
        "{why}"
    );
    assert!(names.is_empty());

    let garbage = write("garbage", string(vec![0x0a, 0x7f, 1, 2]));
    let e = garbage.object_names().unwrap_err();
    assert!(
        reason(&e).contains("_CHECKPOINTABLE_OBJECT_GRAPH is damaged"),
        "{e}"
    );
    assert!(e.to_string().contains("garbage"), "{e}");

    let float = write("float", Tensor::from_f32(&[], &[1.0]).unwrap());
    let e = float.object_names().unwrap_err();
    assert!(
        reason(&e).contains("is float32 [], expected a string scalar"),
        "{e}"
    );
    let two = vec![graph("a", "w/.ATTRIBUTES/VARIABLE_VALUE"), Vec::new()];
    let two = write("two", Tensor::from_strings(&[2], two).unwrap());
    let e = two.object_names().unwrap_err();
    assert!(
        reason(&e).contains("is string [2], expected a string scalar"),
        "{e}"
    );
}

/// A Keras 3 subclassed model (`tf2_keras_subclassed`): its variables by their Python attribute
/// paths, which its keys start with (`model/block/up/_kernel/...`), while their TensorFlow names
/// are `net/kernel` three times.
#[test]
fn a_subclassed_keras_models_variables_are_listed_by_attribute_path() {
    let names = Checkpoint::open(ckpt_path("tf2_keras_subclassed"))
        .unwrap()
        .object_names()
        .unwrap();
    let paths = names.paths();
    let key = |p: &str| format!("model/{p}/.ATTRIBUTES/VARIABLE_VALUE");
    for (path, attribute) in [
        ("emb/embeddings", "emb/_embeddings"),
        ("block/up/kernel", "block/up/_kernel"),
        ("block/up/bias", "block/up/bias"),
        ("block/down/kernel", "block/down/_kernel"),
        ("block/norm/gamma", "block/norm/gamma"),
        ("head/kernel", "head/_kernel"),
    ] {
        assert!(
            paths.iter().any(|(p, k)| p == path && *k == key(attribute)),
            "{path}: {paths:?}"
        );
    }
    assert!(paths.windows(2).all(|w| w[0] < w[1]), "{paths:?}");
    // Every path's key is the checkpoint's, and one of the names' keys.
    let keys: Vec<&str> = names.ambiguous().flat_map(|(_, keys)| keys).collect();
    for (path, k) in &paths {
        assert!(
            keys.contains(k) || names.iter().any(|(_, key)| key == *k),
            "{path}: {k}"
        );
    }
}
