//! Keras 2 and 3 saves into candle models built under the Keras layers' names or their Python
//! attribute paths, [`Convention::keras`]: the names through the object graph TensorFlow saved,
//! the kernels transposed, embeddings and `Dense(use_bias=False)` told apart by what the graph
//! holds, and what cannot be named said so.

use super::{same, snapshot, tf_value, var, CPU};
use crate::common::fixtures::{ckpt_path, fixture};
use candle_core::DType;
use candle_nn::{VarBuilder, VarMap};
use tfckpt::candle::{CandleInit, Convention, ExistingMap};
use tfckpt::Checkpoint;

/// TensorFlow's own name-to-key mapping of fixture `case`'s object graph
/// (`saver.object_graph_key_mapping`, recorded by the fixture script): the keys expected here do
/// not come from the code under test.
fn tf_key(case: &str, name: &str) -> String {
    let path = fixture(case).join("expected/object_names.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["names_to_keys"][name]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: TensorFlow maps no {name:?}"))
        .to_string()
}

/// (candle name, Keras name, whether the `Var` holds the value transposed).
type Loaded<'a> = [(&'a str, &'a str, bool)];

/// `found` pairs exactly the `Var`s of `loaded`, each with the key `key` gives its Keras name.
fn assert_pairs(found: &ExistingMap, loaded: &Loaded, key: impl Fn(&str) -> String) {
    let mut pairs = found.pairs.clone();
    pairs.sort();
    let mut want: Vec<(String, String)> = loaded
        .iter()
        .map(|(c, k, _)| (c.to_string(), key(k)))
        .collect();
    want.sort();
    assert_eq!(pairs, want, "{found}");
}

/// Each `Var` of `loaded` holds `value` of its Keras name, transposed where said (a kernel of
/// more axes, TensorFlow's `[spatial..., in, out]`, as candle's `[out, in, spatial...]`).
fn assert_values(varmap: &VarMap, loaded: &Loaded, value: impl Fn(&str) -> candle_core::Tensor) {
    for &(candle, keras, transposed) in loaded {
        let want = value(keras);
        let rank = want.rank();
        let want = match transposed {
            true => want
                .permute(
                    [rank - 1, rank - 2]
                        .into_iter()
                        .chain(0..rank - 2)
                        .collect::<Vec<_>>(),
                )
                .unwrap(),
            false => want,
        };
        assert!(same(&var(varmap, candle), &want), "{candle}");
    }
}

/// The layers of the `tf2_keras_layers` (Keras 3) and `tf2_keras2` (Keras 2, no
/// `RMSNormalization` and no last `Dense`) fixtures, as `candle_nn` builds them under the Keras
/// names, and a fresh `head` the checkpoints do not hold.
fn keras_model(keras3: bool) -> VarMap {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    candle_nn::embedding(12, 4, vb.pp("tokens")).unwrap();
    candle_nn::linear_no_bias(4, 5, vb.pp("proj")).unwrap();
    candle_nn::layer_norm(5, 1e-3, vb.pp("norm")).unwrap();
    if keras3 {
        candle_nn::rms_norm(5, 1e-6, vb.pp("rms")).unwrap();
    }
    candle_nn::conv1d(5, 3, 2, Default::default(), vb.pp("conv")).unwrap();
    candle_nn::batch_norm(3, 1e-3, vb.pp("bn")).unwrap();
    candle_nn::linear(3, 3, vb.pp("square")).unwrap();
    if keras3 {
        candle_nn::linear(3, 2, vb.pp("dense")).unwrap();
    }
    candle_nn::linear(2, 2, vb.pp("head")).unwrap();
    varmap
}

#[test]
fn keras_layers_load_into_candle_by_the_object_graph() {
    for (case, keras3) in [("tf2_keras_layers", true), ("tf2_keras2", false)] {
        let path = ckpt_path(case);
        let names = Checkpoint::open(&path).unwrap().object_names().unwrap();
        let varmap = keras_model(keras3);
        let before = snapshot(&varmap);
        let mut init = CandleInit::from_varmap(&varmap, &Convention::keras(names.clone())).unwrap();
        let found = init.map_existing(&path).unwrap();
        // (candle, Keras, transposed)
        let mut loaded = vec![
            ("tokens.weight", "tokens/embeddings", false),
            ("proj.weight", "proj/kernel", true),
            ("norm.weight", "norm/gamma", false),
            ("norm.bias", "norm/beta", false),
            ("bn.weight", "bn/gamma", false),
            ("bn.bias", "bn/beta", false),
            ("bn.running_mean", "bn/moving_mean", false),
            ("bn.running_var", "bn/moving_variance", false),
            ("square.weight", "square/kernel", true),
            ("square.bias", "square/bias", false),
            // Keras's `[k, in, out]` held as candle's `[out, in, k]`.
            ("conv.weight", "conv/kernel", true),
            ("conv.bias", "conv/bias", false),
        ];
        if keras3 {
            loaded.extend([
                ("rms.weight", "rms/scale", false),
                ("dense.weight", "dense/kernel", true),
                ("dense.bias", "dense/bias", false),
            ]);
        }
        assert_pairs(&found, &loaded, |k| tf_key(case, k));
        assert_eq!(
            found.not_in_checkpoint,
            ["head.bias", "head.weight"],
            "{case}"
        );
        assert!(found.unnamed.is_empty(), "{case}: {found}");
        assert!(found.shape_mismatches.is_empty(), "{case}: {found}");
        init.init_from_checkpoint(&path, &found.map).unwrap();
        init.initialize(&Default::default()).unwrap();
        assert_values(&varmap, &loaded, |k| tf_value(case, &tf_key(case, k)));
        // The square kernel's transpose is not the kernel (the test would not see a kernel
        // taken as it is otherwise).
        let square = tf_value(case, &tf_key(case, "square/kernel"));
        assert!(!same(&square, &square.t().unwrap()), "{case}");
        // What the checkpoint does not hold keeps candle's values.
        let after = snapshot(&varmap);
        for (name, value) in &before {
            if name.starts_with("head.") {
                let now = &after.iter().find(|(n, _)| n == name).unwrap().1;
                assert_eq!(now, value, "{case}: {name}");
            }
        }
    }
}

#[test]
fn a_keras_sequential_is_named_with_the_models_name() {
    // `Sequential` builds its layers under its own name: `sequential/enc/kernel`.
    let path = ckpt_path("tf2_keras");
    let names = Checkpoint::open(&path).unwrap().object_names().unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    candle_nn::embedding(10, 3, vb.pp("sequential.emb")).unwrap();
    candle_nn::linear(3, 4, vb.pp("sequential.enc")).unwrap();
    candle_nn::layer_norm(4, 1e-3, vb.pp("sequential.ln")).unwrap();
    candle_nn::linear(4, 2, vb.pp("sequential.head")).unwrap();
    let mut init = CandleInit::from_varmap(&varmap, &Convention::keras(names)).unwrap();
    let found = init.map_existing(&path).unwrap();
    assert!(found.not_in_checkpoint.is_empty(), "{found}");
    assert!(found.unnamed.is_empty(), "{found}");
    let loaded = [
        ("sequential.emb.weight", "sequential/emb/embeddings", false),
        ("sequential.enc.weight", "sequential/enc/kernel", true),
        ("sequential.enc.bias", "sequential/enc/bias", false),
        ("sequential.ln.weight", "sequential/ln/gamma", false),
        ("sequential.ln.bias", "sequential/ln/beta", false),
        ("sequential.head.weight", "sequential/head/kernel", true),
        ("sequential.head.bias", "sequential/head/bias", false),
    ];
    assert_pairs(&found, &loaded, |k| tf_key("tf2_keras", k));
    init.init_from_checkpoint(&path, &found.map).unwrap();
    init.initialize(&Default::default()).unwrap();
    assert_values(&varmap, &loaded, |k| {
        tf_value("tf2_keras", &tf_key("tf2_keras", k))
    });
}

#[test]
fn a_name_saved_twice_or_not_at_all_stays_unresolved_and_is_not_loaded() {
    // tf2_object: three `tf.Module`s saved a variable named `kernel` (an ambiguous name).
    let path = ckpt_path("tf2_object");
    let names = Checkpoint::open(&path).unwrap().object_names().unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    // The root's `weight` is `kernel` under tf1, which three variables were saved as.
    candle_nn::linear_no_bias(3, 4, vb.clone()).unwrap();
    candle_nn::linear(2, 2, vb.pp("fresh")).unwrap();
    let before = var(&varmap, "weight")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut init = CandleInit::from_varmap(&varmap, &Convention::keras(names.clone())).unwrap();
    // Unresolved, each keeps its name, which no key is.
    assert_eq!(init.tf_name("weight"), Some("kernel"));
    assert_eq!(init.tf_name("fresh.weight"), Some("fresh/kernel"));
    let found = init.map_existing(&path).unwrap();
    assert!(found.pairs.is_empty(), "{found}");
    assert_eq!(
        found.not_in_checkpoint,
        ["fresh.bias", "fresh.weight", "weight"]
    );
    // The report says why, and so does the graph.
    assert_eq!(found.ambiguous.len(), 1, "{found}");
    assert_eq!(
        (found.ambiguous[0].0.as_str(), found.ambiguous[0].1.as_str()),
        ("weight", "kernel")
    );
    assert_eq!(found.ambiguous[0].2.len(), 3, "{found}");
    let why = names.key("kernel").unwrap_err().to_string();
    assert!(why.contains("3 keys"), "{why}");
    init.init_from_checkpoint(&path, &found.map).unwrap();
    init.initialize(&Default::default()).unwrap();
    let after = var(&varmap, "weight")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(after, before);
}

#[test]
fn a_linear_with_a_bias_never_takes_an_embedding_table() {
    // `tokens` is an `Embedding(12, 4)` in Keras; a candle `Linear(4, 12)` built under that name
    // has a weight of the table's shape, but a layer with a bias is no embedding: the weight is
    // `tokens/kernel`, which the save lacks, and no half of the layer loads.
    let path = ckpt_path("tf2_keras_layers");
    let names = Checkpoint::open(&path).unwrap().object_names().unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    candle_nn::linear(4, 12, vb.pp("tokens")).unwrap();
    let init = CandleInit::from_varmap(&varmap, &Convention::keras(names)).unwrap();
    assert_eq!(init.tf_name("tokens.weight"), Some("tokens/kernel"));
    let found = init.map_existing(&path).unwrap();
    assert!(found.pairs.is_empty(), "{found}");
    assert_eq!(found.not_in_checkpoint, ["tokens.bias", "tokens.weight"]);
}

#[test]
fn a_keras_model_built_under_the_wrong_scope_is_an_error_that_says_which() {
    // A `Sequential`'s variables are under its name; built without it, nothing pairs.
    let path = ckpt_path("tf2_keras");
    let names = Checkpoint::open(&path).unwrap().object_names().unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    candle_nn::linear(3, 4, vb.pp("enc")).unwrap();
    candle_nn::layer_norm(4, 1e-3, vb.pp("ln")).unwrap();
    candle_nn::linear(4, 2, vb.pp("head")).unwrap();
    let init = CandleInit::from_varmap(&varmap, &Convention::keras(names)).unwrap();
    let e = init.map_existing(&path).unwrap_err().to_string();
    assert!(
        e.contains("no Var pairs with a variable of")
            && e.contains("but 6 would under the scope \"sequential/\"")
            && e.contains("is \"sequential/enc/bias\" in its object graph")
            && e.ends_with("build the model under vb.pp(\"sequential\")"),
        "{e}"
    );

    // A functional model's are not: built under its name, nothing pairs either.
    let path = ckpt_path("tf2_keras_layers");
    let names = Checkpoint::open(&path).unwrap().object_names().unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    candle_nn::layer_norm(5, 1e-3, vb.pp("functional.norm")).unwrap();
    candle_nn::linear(3, 3, vb.pp("functional.square")).unwrap();
    let init = CandleInit::from_varmap(&varmap, &Convention::keras(names)).unwrap();
    let e = init.map_existing(&path).unwrap_err().to_string();
    assert!(
        e.contains("but 4 would without the scope \"functional/\" of the model's names")
            && e.ends_with("in its object graph): build the model without it"),
        "{e}"
    );
}

#[test]
fn a_misspelt_keras_layer_is_a_near_miss_named_as_keras_named_it() {
    let path = ckpt_path("tf2_keras_layers");
    let names = Checkpoint::open(&path).unwrap().object_names().unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    candle_nn::embedding(12, 4, vb.pp("tokens")).unwrap();
    // `proj` misspelt.
    candle_nn::linear_no_bias(4, 5, vb.pp("prj")).unwrap();
    candle_nn::layer_norm(5, 1e-3, vb.pp("norm")).unwrap();
    let init = CandleInit::from_varmap(&varmap, &Convention::keras(names)).unwrap();
    let found = init.map_existing(&path).unwrap();
    assert!(
        found.near_misses.contains(&(
            "prj.weight".to_string(),
            "prj/kernel".to_string(),
            vec!["proj/kernel".to_string()]
        )),
        "{found}"
    );
}

#[test]
fn a_keras_model_saved_back_reads_back_through_the_graph_it_was_loaded_by() {
    // `save_checkpoint` writes each `Var` under its key, without an object graph: the names of
    // the checkpoint it was loaded from name them again.
    let path = ckpt_path("tf2_keras_layers");
    let names = Checkpoint::open(&path).unwrap().object_names().unwrap();
    let varmap = keras_model(true);
    let mut init = CandleInit::from_varmap(&varmap, &Convention::keras(names.clone())).unwrap();
    let found = init.map_existing(&path).unwrap();
    init.init_from_checkpoint(&path, &found.map).unwrap();
    init.initialize(&Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("fine-tuned");
    init.save_checkpoint(&saved).unwrap();
    let e = Checkpoint::open(&saved)
        .unwrap()
        .object_names()
        .unwrap_err();
    assert!(e.to_string().contains("fine-tuned"), "{e}");

    let again = keras_model(true);
    let mut init = CandleInit::from_varmap(&again, &Convention::keras(names)).unwrap();
    let found = init.map_existing(&saved).unwrap();
    // Every Var, the fresh head too (under tf1's name), the convolution's kernel (saved in
    // TensorFlow's layout, held in candle's again).
    assert_eq!(found.pairs.len(), 17, "{found}");
    init.init_from_checkpoint(&saved, &found.map).unwrap();
    init.initialize(&Default::default()).unwrap();
    let (before, after) = (snapshot(&varmap), snapshot(&again));
    assert_eq!(before.len(), after.len());
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{name}");
    }
    // The kernel was saved as Keras stores it (`[k, in, out]`), the bytes of the fixture's.
    let key = tf_key("tf2_keras_layers", "conv/kernel");
    let stored = Checkpoint::open(&path).unwrap().read(&key).unwrap();
    let back = Checkpoint::open(&saved).unwrap().read(&key).unwrap();
    assert_eq!(back.shape, [2, 5, 3]);
    assert_eq!(back, stored);
}

/// The value the fixture script recorded for the Keras variable at `path` (its `values_by_path`).
fn recorded(case: &str, path: &str) -> candle_core::Tensor {
    let file = fixture(case).join("expected/notes.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let value = json["values_by_path"][path].clone();
    match value[0].is_array() {
        true => candle_core::Tensor::new(
            serde_json::from_value::<Vec<Vec<f32>>>(value).unwrap(),
            &CPU,
        ),
        false => candle_core::Tensor::new(serde_json::from_value::<Vec<f32>>(value).unwrap(), &CPU),
    }
    .unwrap()
}

/// A Keras 3 subclassed model (`tf2_keras_subclassed`): its sub-layers' variables have
/// TensorFlow names that drop the sub-layers' (`net/kernel` for three of them), so they are found
/// by the attribute paths the save keys them by, the candle model built under the Python
/// attribute names (`block.up`, as `self.block.up`).
fn subclassed(vb: &VarBuilder) {
    candle_nn::embedding(10, 4, vb.pp("emb")).unwrap();
    candle_nn::linear(4, 6, vb.pp("block.up")).unwrap();
    candle_nn::linear_no_bias(6, 4, vb.pp("block.down")).unwrap();
    candle_nn::layer_norm(4, 1e-3, vb.pp("block.norm")).unwrap();
    candle_nn::linear(4, 4, vb.pp("head")).unwrap();
}

#[test]
fn a_keras_subclassed_model_loads_by_its_attribute_paths() {
    let case = "tf2_keras_subclassed";
    let path = ckpt_path(case);
    let names = Checkpoint::open(&path).unwrap().object_names().unwrap();
    let varmap = VarMap::new();
    subclassed(&VarBuilder::from_varmap(&varmap, DType::F32, &CPU));
    let mut init = CandleInit::from_varmap(&varmap, &Convention::keras(names)).unwrap();
    assert_eq!(
        init.tf_name("block.up.weight"),
        Some("model/block/up/_kernel/.ATTRIBUTES/VARIABLE_VALUE")
    );
    let found = init.map_existing(&path).unwrap();
    assert_eq!(found.pairs.len(), 8, "{found}");
    assert!(found.not_in_checkpoint.is_empty(), "{found}");
    assert!(found.ambiguous.is_empty(), "{found}");
    init.init_from_checkpoint(&path, &found.map).unwrap();
    init.initialize(&Default::default()).unwrap();
    let loaded = [
        ("emb.weight", "net/emb/embeddings", false),
        ("block.up.weight", "net/block/up/kernel", true),
        ("block.up.bias", "net/block/up/bias", false),
        ("block.down.weight", "net/block/down/kernel", true),
        ("block.norm.weight", "net/block/norm/gamma", false),
        ("block.norm.bias", "net/block/norm/beta", false),
        ("head.weight", "net/head/kernel", true),
        ("head.bias", "net/head/bias", false),
    ];
    assert_values(&varmap, &loaded, |k| recorded(case, k));
    let head = recorded(case, "net/head/kernel");
    assert!(!same(&head, &head.t().unwrap()));
}

#[test]
fn a_keras_subclassed_model_under_its_keras_name_or_its_variables_names_says_why() {
    let case = "tf2_keras_subclassed";
    let path = ckpt_path(case);
    let names = Checkpoint::open(&path).unwrap().object_names().unwrap();
    // Under the Keras paths' `net.`, which the attribute paths lack: the scope is named.
    let varmap = VarMap::new();
    subclassed(&VarBuilder::from_varmap(&varmap, DType::F32, &CPU).pp("net"));
    let init = CandleInit::from_varmap(&varmap, &Convention::keras(names.clone())).unwrap();
    let e = init.map_existing(&path).unwrap_err().to_string();
    assert!(
        e.contains("would without the scope \"net/\"") && e.ends_with("build the model without it"),
        "{e}"
    );
    // Under the variables' TensorFlow names (`net/kernel`, three variables): each is reported
    // as several variables, with their keys, and nothing loads.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    candle_nn::linear(4, 4, vb.pp("net")).unwrap();
    let init = CandleInit::from_varmap(&varmap, &Convention::keras(names)).unwrap();
    let found = init.map_existing(&path).unwrap();
    assert!(found.pairs.is_empty(), "{found}");
    let key = |p: &str| format!("model/{p}/.ATTRIBUTES/VARIABLE_VALUE");
    let mut kernels = vec![
        key("head/_kernel"),
        key("block/up/_kernel"),
        key("block/down/_kernel"),
    ];
    kernels.sort();
    let mut ambiguous = found.ambiguous.clone();
    for (_, _, keys) in &mut ambiguous {
        keys.sort();
    }
    assert!(
        ambiguous.contains(&("net.weight".into(), "net/kernel".into(), kernels)),
        "{found}"
    );
    assert!(
        ambiguous
            .iter()
            .any(|(c, n, keys)| c == "net.bias" && n == "net/bias" && keys.len() == 2),
        "{found}"
    );
    assert!(
        found.to_string().contains(
            "net.weight (\"net/kernel\") is not one variable of the object graph: \"model/"
        ),
        "{found}"
    );
    // Not also a near miss of its own name.
    assert!(found.near_misses.is_empty(), "{found}");
}
