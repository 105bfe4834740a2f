//! init_from_checkpoint behaviours beyond the TensorFlow-recorded cases: our deliberate differences
//! and the variable store's partition rules.

use tfckpt::{
    init_from_checkpoint, AssignmentMap, DType, Device, ErrorKind, Init, Target, VariableStore,
};

use std::sync::atomic::{AtomicU64, Ordering};

mod common;
use common::builder::CkptBuilder;

/// A float32 tensor per (name, shape), tensor i holding i * 1000 + its flat index.
fn ckpt(tensors: &[(&str, &[u64])]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = CkptBuilder::new(dir.path().join("ck"));
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let n: u64 = shape.iter().product();
        b.f32(
            name,
            shape,
            &(0..n)
                .map(|x| (i * 1000) as f32 + x as f32)
                .collect::<Vec<_>>(),
        );
    }
    let prefix = b.finish();
    (dir, prefix)
}

/// A checkpoint of `n` float32 tensors `t000`, `t001`... of `len` elements, and a store of as
/// many variables under `new/`, each mapped to its tensor (`{"/": "new/"}`).
fn mapped_store(n: usize, len: u64) -> (tempfile::TempDir, VariableStore) {
    let names: Vec<String> = (0..n).map(|i| format!("t{i:03}")).collect();
    let shape = [len];
    let shapes: Vec<(&str, &[u64])> = names.iter().map(|n| (n.as_str(), &shape[..])).collect();
    let (dir, ck) = ckpt(&shapes);
    let mut store = VariableStore::new();
    for n in &names {
        store
            .get_variable(&format!("new/{n}"), &shape, DType::F32, Init::Zeros)
            .unwrap();
    }
    init_from_checkpoint(&mut store, &ck, &AssignmentMap::from([("/", "new/")])).unwrap();
    (dir, store)
}

/// A shape with a dimension of 0 cannot be partitioned, as in TensorFlow 2.21 (`get_variable`
/// with a partitioner: "Expected 0 <= offset < shape but found offset=0, shape=0"); parts such as
/// `[0, 2]`, or `[1, 0]` twice, were made.
#[test]
fn a_shape_with_a_zero_dimension_is_not_partitioned() {
    let mut store = VariableStore::new();
    for (shape, parts) in [
        (&[0u64, 2][..], &[1u64, 1][..]),
        (&[2, 0], &[2, 1]),
        (&[0], &[1]),
    ] {
        let e = store
            .get_partitioned_variable("z", shape, DType::F32, parts, Init::Zeros)
            .unwrap_err();
        assert!(e.to_string().contains("dimension of 0"), "{shape:?}: {e}");
    }
    assert!(store.variables().next().is_none());
}

#[test]
fn partition_splits_follow_tensorflow() {
    let mut store = VariableStore::new();
    let pv = store
        .get_partitioned_variable("e", &[100, 4], DType::F32, &[3, 1], Init::Zeros)
        .unwrap()
        .clone();
    let lens: Vec<u64> = pv
        .parts
        .iter()
        .map(|p| store.variable(p).unwrap().shape[0])
        .collect();
    assert_eq!(lens, [34, 33, 33]);
    let pv = store
        .get_partitioned_variable("f", &[100, 4], DType::F32, &[7, 1], Init::Zeros)
        .unwrap()
        .clone();
    let lens: Vec<u64> = pv
        .parts
        .iter()
        .map(|p| store.variable(p).unwrap().shape[0])
        .collect();
    assert_eq!(lens, [15, 15, 14, 14, 14, 14, 14]);
    let p = store.variable("f/part_2").unwrap().part.clone().unwrap();
    assert_eq!(
        (p.full_name.as_str(), p.offset.as_slice(), p.index),
        ("f", &[30u64, 0][..], 2)
    );
    let pv = store
        .get_partitioned_variable("g", &[4, 10], DType::F32, &[1, 3], Init::Zeros)
        .unwrap();
    assert_eq!((pv.axis, pv.parts.len()), (1, 3));
    for bad in [&[2u64, 2][..], &[0, 1], &[1][..], &[5, 1]] {
        assert!(
            store
                .get_partitioned_variable("h", &[4, 10], DType::F32, bad, Init::Zeros)
                .is_err(),
            "{bad:?}"
        );
    }
    assert!(store
        .get_variable("e", &[1], DType::F32, Init::Zeros)
        .is_err()); // exists

    // Names: non-empty, no ':' (TensorFlow's tensor suffix), no empty scope component.
    let why = [
        ("", "it is empty"),
        ("a/", "it ends with '/', as a scope does"),
        ("/a", "it starts with '/' (an empty scope)"),
        ("a//b", "it holds '//' (an empty scope)"),
        (
            "x:0",
            "it holds a ':' (TensorFlow's ':0' names a tensor of the variable, not the variable)",
        ),
    ];
    for (bad, wrong) in why {
        for partitioned in [false, true] {
            let e = if partitioned {
                store
                    .get_partitioned_variable(bad, &[2], DType::F32, &[2], Init::Zeros)
                    .map(|_| ())
            } else {
                store
                    .get_variable(bad, &[1], DType::F32, Init::Zeros)
                    .map(|_| ())
            }
            .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "variable {bad:?}: not a variable name: {wrong}; a name is scopes and a last \
                     part joined by '/', each non-empty, without ':'"
                ),
            );
        }
    }
    for good in ["a", "a/b", "a_b.c-1/d e"] {
        store
            .get_variable(good, &[1], DType::F32, Init::Zeros)
            .unwrap();
    }
    assert!(store
        .get_variable("i", &[1], DType::I32, Init::Constant(0.5))
        .is_err());
}

#[test]
fn a_failed_call_changes_nothing() {
    let (_d, ck) = ckpt(&[("a", &[2]), ("b", &[3])]);
    let mut store = VariableStore::new();
    store
        .get_variable("x", &[2], DType::F32, Init::Zeros)
        .unwrap();
    store
        .get_variable("y", &[2], DType::F32, Init::Zeros)
        .unwrap();
    // "a" -> x is fine, "b" -> y has the wrong shape: the whole call fails, x stays unmapped.
    let e = init_from_checkpoint(
        &mut store,
        &ck,
        &AssignmentMap::from([("a", "x"), ("b", "y")]),
    )
    .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ShapeMismatch { .. }), "{e}");
    assert!(store.pending("x").is_none());
    store.initialize(Device::Cpu).unwrap();
    assert_eq!(store.value("x").unwrap().to_f32().unwrap(), [0.0, 0.0]);
}

#[test]
fn names_containing_part_are_not_cut() {
    // TF cuts "model/part_emb/w" at "/part_" and then finds nothing; here it maps like any variable.
    let (_d, ck) = ckpt(&[("old/part_emb/w", &[2])]);
    let mut store = VariableStore::new();
    store
        .get_variable("model/part_emb/w", &[2], DType::F32, Init::Zeros)
        .unwrap();
    init_from_checkpoint(&mut store, &ck, &AssignmentMap::from([("old/", "model/")])).unwrap();
    store.initialize(Device::Cpu).unwrap();
    assert_eq!(
        store.value("model/part_emb/w").unwrap().to_f32().unwrap(),
        [0.0, 1.0]
    );
}

#[test]
fn part_lists_and_unknown_objects() {
    let (_d, ck) = ckpt(&[("t", &[10, 2])]);
    let mut store = VariableStore::new();
    store
        .get_partitioned_variable("p", &[10, 2], DType::F32, &[2, 1], Init::Zeros)
        .unwrap();
    store
        .get_partitioned_variable("q", &[10, 2], DType::F32, &[2, 1], Init::Zeros)
        .unwrap();
    store
        .get_variable("plain", &[10, 2], DType::F32, Init::Zeros)
        .unwrap();
    let e = init_from_checkpoint(
        &mut store,
        &ck,
        &AssignmentMap::from([("t", Target::parts(["p/part_0", "q/part_1"]))]),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("the list holds parts of two variables, p and q: a list target is the parts of one partitioned variable"),
        "{e}"
    );
    let e = init_from_checkpoint(
        &mut store,
        &ck,
        &AssignmentMap::from([("t", Target::parts(["plain"]))]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a part"), "{e}");
    let e = init_from_checkpoint(
        &mut store,
        &ck,
        &AssignmentMap::from([("t", Target::variable("plian"))]),
    )
    .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::MappedVariableNotFound { key, .. } if key == "t")
            && e.to_string().contains("did you mean \"plain\"")
            && e.is_not_found(),
        "{e}"
    );
    // A part that does not exist: parts (and variables) are suggested, never the partitioned
    // variable itself, which a list cannot hold.
    let e = init_from_checkpoint(
        &mut store,
        &ck,
        &AssignmentMap::from([("t", Target::parts(["p/part_9"]))]),
    )
    .unwrap_err();
    let ErrorKind::MappedVariableNotFound { suggestions, .. } = e.kind() else {
        panic!("{e}")
    };
    assert!(
        !suggestions.is_empty() && suggestions.iter().all(|s| s != "p" && s != "q"),
        "{e}"
    );
    // A partitioned variable is no variable object (TensorFlow's _is_variable): said so.
    let e = init_from_checkpoint(
        &mut store,
        &ck,
        &AssignmentMap::from([("t", Target::variable("p"))]),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("a partitioned variable (2 parts) is not one: map it by its name"),
        "{e}"
    );
    // The pair is named in the error on a partitioned variable given as an object.
    assert!(e.to_string().contains("assignment \"t\" maps it"), "{e}");
    // An empty list of parts: TensorFlow checks the key and initializes nothing (a rank's share
    // of the parts may be none); a warning says so. A key not in the checkpoint is still an error.
    let report = init_from_checkpoint(
        &mut store,
        &ck,
        &AssignmentMap::from([("t", Target::parts(Vec::<String>::new()))]),
    )
    .unwrap();
    assert!(report.assignments.is_empty());
    assert!(
        report.warnings.len() == 1 && report.warnings[0].contains("list of parts is empty"),
        "{:?}",
        report.warnings
    );
    let e = init_from_checkpoint(
        &mut store,
        &ck,
        &AssignmentMap::from([("tt", Target::parts(Vec::<String>::new()))]),
    )
    .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::MappedTensorNotFound { .. }),
        "{e}"
    );
    // A long list is named by its first 8 parts and its length (the error was as long as it).
    let parts: Vec<String> = (0..20).map(|i| format!("v/part_{i}")).collect();
    let e = init_from_checkpoint(
        &mut store,
        &ck,
        &AssignmentMap::from([("tt", Target::parts(parts))]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("-> \"[v/part_0, v/part_1, v/part_2, v/part_3, v/part_4, v/part_5, v/part_6, v/part_7, ... 20 in all]\")")
            && !e.contains("v/part_8"),
        "{e}"
    );
    // An empty string target is refused, under its own kind.
    let e = init_from_checkpoint(&mut store, &ck, &AssignmentMap::from([("t/", "")])).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::EmptyTarget { key } if key == "t/"),
        "{e}"
    );
    // A subset of the parts is fine (each part takes its own box), as in TF.
    init_from_checkpoint(
        &mut store,
        &ck,
        &AssignmentMap::from([("t", Target::parts(["p/part_1"]))]),
    )
    .unwrap();
    store.initialize(Device::Cpu).unwrap();
    assert_eq!(
        store.value("p/part_1").unwrap().to_f32().unwrap(),
        (10..20).map(|x| x as f32).collect::<Vec<_>>()
    );
    assert_eq!(
        store.value("p/part_0").unwrap().to_f32().unwrap(),
        vec![0.0; 10]
    );
}

/// A variable object (outside TF1's variable store, as `tf.Variable` makes one) named by a string
/// is an error that says to map it as an object, which loads it; a scope passes it by (the
/// values against TensorFlow's are in `tests/fixtures/tf/init/o*`).
#[test]
fn a_variable_object_is_reached_only_as_an_object() {
    let (_d, ck) = ckpt(&[("t", &[2]), ("u", &[2])]);
    let mut store = VariableStore::new();
    store
        .variable_object("t", &[2], DType::F32, Init::Constant(7.0))
        .unwrap();
    store
        .get_variable("u", &[2], DType::F32, Init::Zeros)
        .unwrap();
    assert!(!store.variable("t").unwrap().in_store && store.variable("u").unwrap().in_store);
    let e = init_from_checkpoint(&mut store, &ck, &AssignmentMap::from([("t", "t")])).unwrap_err();
    assert!(
        e.to_string()
            .contains("map it as an object (Target::Variable)"),
        "{e}"
    );
    let report = init_from_checkpoint(&mut store, &ck, &AssignmentMap::from([("/", "/")])).unwrap();
    let mapped: Vec<&str> = report
        .assignments
        .iter()
        .map(|a| a.variable.as_str())
        .collect();
    assert_eq!(mapped, ["u"]);
    init_from_checkpoint(
        &mut store,
        &ck,
        &AssignmentMap::from([("t", Target::variable("t"))]),
    )
    .unwrap();
    store.initialize(Device::Cpu).unwrap();
    assert_eq!(store.value("t").unwrap().to_f32().unwrap(), [0.0, 1.0]);
    assert_eq!(
        store.value("u").unwrap().to_f32().unwrap(),
        [1000.0, 1001.0]
    );
}

/// A dtype mismatch on a part mapped alone names that part (as a shape mismatch does), and on a
/// list of parts the partitioned variable.
#[test]
fn a_dtype_mismatch_names_the_variable_as_mapped() {
    let (_d, ck) = ckpt(&[("half", &[5, 2]), ("t", &[10, 2])]);
    let mut store = VariableStore::new();
    store
        .get_partitioned_variable("r", &[10, 2], DType::I32, &[2, 1], Init::Zeros)
        .unwrap();
    for (key, target, named) in [
        ("half", Target::variable("r/part_0"), "\"r/part_0\""),
        ("t", Target::parts(["r/part_0", "r/part_1"]), "\"r\""),
    ] {
        let e = init_from_checkpoint(&mut store, &ck, &AssignmentMap::from([(key, target)]))
            .unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::DtypeMismatch { variable, .. } if format!("{variable:?}") == named),
            "{e}"
        );
    }
}

#[test]
fn empty_scope_warns_and_last_pair_wins() {
    let (_d, ck) = ckpt(&[("u", &[1]), ("v", &[1])]);
    let mut store = VariableStore::new();
    store
        .get_variable("x", &[1], DType::F32, Init::Zeros)
        .unwrap();
    let mut map = AssignmentMap::new();
    map.push("v", "x").push("u", "x").push("old/", "nothing/");
    let call = init_from_checkpoint(&mut store, &ck, &map).unwrap();
    assert_eq!(call.warnings.len(), 1);
    assert!(call.warnings[0].contains("\"old/\""), "{:?}", call.warnings);
    assert_eq!(store.warnings(), call.warnings); // the store keeps every call's warnings
    assert_eq!(store.pending("x").unwrap().tensor, "v"); // ascending key order: "v" comes last
    let report = store.initialize(Device::Cpu).unwrap();
    assert_eq!(report.warnings, call.warnings);
    assert_eq!(store.value("x").unwrap().to_f32().unwrap(), [1000.0]);
    assert!(store.initialize(Device::Cuda(0)).is_err());
}

#[test]
fn partitioned_variable_named_like_the_scope() {
    // TF: {"old/": "new/"} with a partitioned variable "new" (parts new/part_i) loads tensor "old".
    let (_d, ck) = ckpt(&[("old", &[4, 2])]);
    let mut store = VariableStore::new();
    store
        .get_partitioned_variable("new", &[4, 2], DType::F32, &[2, 1], Init::Zeros)
        .unwrap();
    init_from_checkpoint(&mut store, &ck, &AssignmentMap::from([("old/", "new/")])).unwrap();
    assert_eq!(store.pending("new/part_1").unwrap().tensor, "old");
    store.initialize(Device::Cpu).unwrap();
    assert_eq!(
        store.value("new/part_1").unwrap().to_f32().unwrap(),
        [4.0, 5.0, 6.0, 7.0]
    );
}

#[test]
fn hostile_variable_definitions_are_errors() {
    let mut store = VariableStore::new();
    assert!(store
        .get_variable("a", &[1 << 61], DType::F32, Init::Zeros)
        .is_err());
    assert!(store
        .get_partitioned_variable("b", &[1 << 40, 1], DType::F32, &[1 << 40, 1], Init::Zeros)
        .is_err());
    // Exact 64-bit integer constants.
    store
        .get_variable(
            "c",
            &[2],
            DType::I64,
            Init::IntConstant(9_007_199_254_740_993),
        )
        .unwrap();
    store
        .get_variable("d", &[1], DType::U64, Init::IntConstant(u64::MAX.into()))
        .unwrap();
    assert!(store
        .get_variable("e", &[1], DType::I64, Init::IntConstant(1 << 63))
        .is_err());
    store.initialize(Device::Cpu).unwrap();
    assert_eq!(
        store.value("c").unwrap().bytes().unwrap()[..8],
        9_007_199_254_740_993i64.to_le_bytes()
    );
    assert_eq!(
        store.value("d").unwrap().bytes().unwrap(),
        u64::MAX.to_le_bytes()
    );
}

#[test]
fn initialize_rereads_a_checkpoint_rewritten_since_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("ck");
    let write = |v: f32| {
        let mut b = CkptBuilder::new(&prefix);
        // A different layout each time: the old index would point at the wrong bytes.
        if v > 1.0 {
            b.f32("pad", &[3], &[0.0; 3]);
        }
        b.f32("t", &[2], &[v, v]);
        b.finish();
    };
    write(1.0);
    let mut store = VariableStore::new();
    store
        .get_variable("x", &[2], DType::F32, Init::Zeros)
        .unwrap();
    init_from_checkpoint(&mut store, &prefix, &AssignmentMap::from([("t", "x")])).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(2.0);
    store.initialize(Device::Cpu).unwrap();
    assert_eq!(store.value("x").unwrap().to_f32().unwrap(), [2.0, 2.0]);
    // And again from the same store (TensorFlow re-runs the restore each time).
    write(1.0);
    store.initialize(Device::Cpu).unwrap();
    assert_eq!(store.value("x").unwrap().to_f32().unwrap(), [1.0, 1.0]);
}

/// A tensor rewritten between the call and `initialize` with another shape or dtype: the
/// call's checks are made again, and the load fails naming both sides, with nothing loaded.
/// For a partitioned variable, a tensor grown along the partitioned axis still holds every
/// part's box, and is refused all the same (TensorFlow checks the full shape).
#[test]
fn initialize_refuses_a_tensor_rewritten_with_another_shape_or_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("ck");
    // Tensor "t" of shape `t` and dtype `dtype` (4-byte elements), "p" of shape `p`.
    let write = |t: &[u64], dtype: DType, p: &[u64]| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (nt, np) = (t.iter().product::<u64>(), p.iter().product::<u64>());
        let mut b = CkptBuilder::new(&prefix);
        b.bytes("t", dtype, t, &vec![0; 4 * nt as usize])
            .f32("p", p, &vec![1.0; np as usize]);
        b.finish();
    };
    let mut store = VariableStore::new();
    store
        .get_variable("x", &[2], DType::F32, Init::Zeros)
        .unwrap();
    store
        .get_partitioned_variable("p", &[4, 2], DType::F32, &[2, 1], Init::Zeros)
        .unwrap();
    write(&[2], DType::F32, &[4, 2]);
    let map = AssignmentMap::from([("t", "x"), ("p", "p")]);
    init_from_checkpoint(&mut store, &prefix, &map).unwrap();
    let rewrites: [(&[u64], DType, &[u64], &str); 3] = [
        (
            &[3],
            DType::F32,
            &[4, 2],
            "shape of variable \"x\" [2] does not match shape of tensor \"t\" [3] in checkpoint",
        ),
        (
            &[2],
            DType::I32,
            &[4, 2],
            "dtype of variable \"x\" (float32) does not match dtype of tensor \"t\" (int32) in checkpoint",
        ),
        (
            &[2],
            DType::F32,
            &[6, 2],
            "shape of variable \"p\" [4, 2] does not match shape of tensor \"p\" [6, 2] in checkpoint",
        ),
    ];
    for (t, dtype, p, message) in rewrites {
        write(t, dtype, p);
        let e = store.initialize(Device::Cpu).unwrap_err();
        assert!(e.to_string().contains(message), "{e}");
        assert!(!store.is_initialized());
        assert!(store.variables().all(|v| store.value(&v.name).is_none()));
    }
    // Written back as it was: the same store loads.
    write(&[2], DType::F32, &[4, 2]);
    store.initialize(Device::Cpu).unwrap();
}

/// A tensor removed from a checkpoint written again between the call and `initialize`: the
/// load fails naming the variable it was for (TensorFlow's restore names only the key), with
/// nothing loaded.
#[test]
fn initialize_names_the_variable_of_a_tensor_gone_since_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("ck");
    let write = |with_t: bool| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut b = CkptBuilder::new(&prefix);
        b.f32("p", &[4], &[1.0; 4]);
        if with_t {
            b.f32("t", &[2], &[2.0; 2]);
        }
        b.finish();
    };
    write(true);
    let mut store = VariableStore::new();
    store
        .get_partitioned_variable("x", &[2], DType::F32, &[2], Init::Zeros)
        .unwrap();
    store
        .get_variable("y", &[4], DType::F32, Init::Zeros)
        .unwrap();
    let map = AssignmentMap::from([("t", "x"), ("p", "y")]);
    init_from_checkpoint(&mut store, &prefix, &map).unwrap();
    write(false);
    let e = store.initialize(Device::Cpu).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::TensorGone { tensor, variable, .. }
            if tensor == "t" && variable == "x/part_0"),
        "{e:?}"
    );
    assert!(e.is_not_found());
    // The kind names its variable: not named again as the one being loaded.
    assert!(e.loading().is_empty(), "{:?}", e.loading());
    assert!(
        e.to_string().starts_with(&format!(
            "tensor \"t\" (for variable \"x/part_0\") not found in checkpoint {}: it was there when \
             init_from_checkpoint was called, and the checkpoint has been written again since \
             without it",
            prefix.display()
        )),
        "{e}"
    );
    assert!(!store.is_initialized());
    assert!(store.variables().all(|v| store.value(&v.name).is_none()));
    write(true);
    store.initialize(Device::Cpu).unwrap();
    assert_eq!(store.value("x/part_1").unwrap().to_f32().unwrap(), [2.0]);
}

#[test]
fn progress_and_threads() {
    let (_d, mut store) = mapped_store(50, 1000);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let options = tfckpt::LoadOptions::new()
        .threads(1)
        .progress(move |p| s.lock().unwrap().push(p));
    let report = store.initialize_with(Device::Cpu, &options).unwrap();
    assert_eq!(report.threads, 1);
    assert_eq!(report.tensors, 50);
    let seen = seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert_eq!(
        (
            last.bytes_done,
            last.bytes_total,
            last.tensors_done,
            last.tensors_total
        ),
        (200_000, 200_000, 50, 50)
    );
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
    assert!(report.load_seconds <= report.seconds);
    // Without a count, a local load runs where the caller's parallel work runs: rayon's global
    // pool, or the caller's own pool from inside it (more threads serve only remote loads).
    let report = store.initialize(Device::Cpu).unwrap();
    assert_eq!(report.threads, rayon::current_num_threads());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let report = pool.install(|| store.initialize(Device::Cpu)).unwrap();
    assert_eq!(report.threads, 3);
}

/// Progress reports from many workers come one at a time and never go back (workers that
/// counted their tensors in one order used to call in another: 258 of 400 tensors, then 36),
/// and the last one is the whole load's.
#[test]
fn progress_from_many_threads_never_goes_back() {
    let (_d, mut store) = mapped_store(400, 256);
    for round in 0..100 {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, i) = (seen.clone(), inside.clone());
        let options = tfckpt::LoadOptions::new().threads(8).progress(move |p| {
            use std::sync::atomic::Ordering::SeqCst;
            assert_eq!(i.fetch_add(1, SeqCst), 0, "two progress calls at once");
            s.lock().unwrap().push(p);
            std::thread::yield_now();
            i.fetch_sub(1, SeqCst);
        });
        store.initialize_with(Device::Cpu, &options).unwrap();
        let seen = seen.lock().unwrap();
        assert!(
            seen.windows(2)
                .all(|w| w[0].bytes_done <= w[1].bytes_done
                    && w[0].tensors_done <= w[1].tensors_done),
            "round {round}: {seen:?}"
        );
        let last = seen.last().unwrap();
        assert_eq!(
            (last.bytes_done, last.tensors_done),
            (400 * 1024, 400),
            "round {round}"
        );
    }
}

/// A load whose `CancelToken` is cancelled (here by its own progress callback, after 10 of 50
/// tensors) stops before the next tensor and changes nothing: the store keeps the values of the
/// load before it. A token cancelled before the call stops the load before anything is read; a
/// load without it then runs as usual.
#[test]
fn a_cancelled_load_stops_and_changes_nothing() {
    let (_d, mut store) = mapped_store(50, 1000);
    store
        .get_variable("other", &[2], DType::F32, Init::Ones)
        .unwrap();
    let cancelled_after = |token: &tfckpt::CancelToken, at: u64| {
        let (token, seen) = (token.clone(), std::sync::Arc::new(AtomicU64::new(0)));
        let s = seen.clone();
        let options = tfckpt::LoadOptions::new()
            .threads(1)
            .cancel_on(&token)
            .progress(move |p| {
                s.fetch_max(p.tensors_done, Ordering::Relaxed);
                if p.tensors_done >= at {
                    token.cancel();
                }
            });
        (options, seen)
    };
    let is_cancelled = |e: &tfckpt::Error| matches!(e.kind(), ErrorKind::Cancelled);
    // A first load, cancelled part way: nothing is initialized.
    let token = tfckpt::CancelToken::new();
    let (options, seen) = cancelled_after(&token, 10);
    let e = store.initialize_with(Device::Cpu, &options).unwrap_err();
    assert!(is_cancelled(&e), "{e:?}");
    assert!(e.to_string().contains("cancelled"), "{e}");
    assert_eq!(seen.load(Ordering::Relaxed), 10);
    assert!(!store.is_initialized());
    assert!(store.variables().all(|v| store.value(&v.name).is_none()));
    // Cancelled before the call: nothing is read (no progress at all).
    let (options, seen) = cancelled_after(&token, 0);
    let e = store.initialize_with(Device::Cpu, &options).unwrap_err();
    assert!(is_cancelled(&e), "{e:?}");
    assert_eq!(seen.load(Ordering::Relaxed), 0);
    // Without the token the load runs; cancelling the next one keeps these values.
    let report = store.initialize(Device::Cpu).unwrap();
    assert_eq!(report.variables, 51);
    assert_eq!((report.from_checkpoint, report.from_initializer), (50, 1));
    let value = |store: &VariableStore, n: &str| store.value(n).unwrap().to_f32().unwrap();
    assert_eq!(value(&store, "new/t007")[..2], [7000.0, 7001.0]);
    let (options, _) = cancelled_after(&tfckpt::CancelToken::new(), 3);
    let e = store.initialize_with(Device::Cpu, &options).unwrap_err();
    assert!(is_cancelled(&e), "{e:?}");
    assert!(store.is_initialized());
    assert_eq!(value(&store, "new/t007")[..2], [7000.0, 7001.0]);
    assert_eq!(value(&store, "other"), [1.0, 1.0]);
}

/// A dtype mismatch stays an error at call time (TensorFlow never casts). Where the load can
/// convert on request, the message says how, and doing what it says loads the values.
#[test]
fn a_dtype_mismatch_says_how_to_convert_where_the_load_can() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = CkptBuilder::new(dir.path().join("ck"));
    // float16 1.5 and -2.0.
    b.bytes("h", DType::F16, &[2], &[0x00, 0x3e, 0x00, 0xc0])
        .bytes("i", DType::I32, &[2], &[0; 8]);
    let ck = b.finish();
    let mut store = VariableStore::new();
    store
        .get_variable("x", &[2], DType::F32, Init::Zeros)
        .unwrap();
    let e = init_from_checkpoint(&mut store, &ck, &AssignmentMap::from([("h", "x")])).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::DtypeMismatch { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("declare the variable as float16 and initialize with LoadOptions::cast(DType::F16, DType::F32)"),
        "{e}"
    );
    // No conversion from int32: no hint.
    let e = init_from_checkpoint(&mut store, &ck, &AssignmentMap::from([("i", "x")])).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::DtypeMismatch { .. }), "{e}");
    assert!(!e.to_string().contains("LoadOptions"), "{e}");
    // As the hint says.
    let mut store = VariableStore::new();
    store
        .get_variable("x", &[2], DType::F16, Init::Zeros)
        .unwrap();
    init_from_checkpoint(&mut store, &ck, &AssignmentMap::from([("h", "x")])).unwrap();
    let options = tfckpt::LoadOptions::new().cast(DType::F16, DType::F32);
    store.initialize_with(Device::Cpu, &options).unwrap();
    let x = store.value("x").unwrap();
    assert_eq!(x.dtype, DType::F32);
    assert_eq!(x.to_f32().unwrap(), [1.5, -2.0]);
}

/// The report of a call names the checkpoint prefix it resolved (a directory, through its
/// `checkpoint` state file) and lists the assignments in the order they were recorded: pairs in
/// ascending key order, a variable mapped twice at the place of its last pair. A defect here
/// reports an empty prefix, or the variables in name order.
#[test]
fn the_report_names_the_resolved_prefix_in_the_recorded_order() {
    let (dir, ck) = ckpt(&[("a", &[1]), ("b", &[1]), ("c", &[1])]);
    std::fs::write(
        dir.path().join("checkpoint"),
        "model_checkpoint_path: \"ck\"\n",
    )
    .unwrap();
    let mut store = VariableStore::new();
    for v in ["x", "y"] {
        store
            .get_variable(v, &[1], DType::F32, Init::Zeros)
            .unwrap();
    }
    // Keys a, b, c: x <- a, then y <- b, then x <- c (the last pair for x, recorded after y's).
    let map = AssignmentMap::from([("c", "x"), ("b", "y"), ("a", "x")]);
    let report = init_from_checkpoint(&mut store, dir.path(), &map).unwrap();
    assert_eq!(report.checkpoint, ck);
    let recorded: Vec<(&str, &str)> = report
        .assignments
        .iter()
        .map(|a| (a.variable.as_str(), a.tensor.as_str()))
        .collect();
    assert_eq!(recorded, [("y", "b"), ("x", "c")]);
    // The same without an overriding pair: recorded order, not name order.
    let mut store = VariableStore::new();
    for v in ["x", "y"] {
        store
            .get_variable(v, &[1], DType::F32, Init::Zeros)
            .unwrap();
    }
    let map = AssignmentMap::from([("b", "x"), ("a", "y")]);
    let report = init_from_checkpoint(&mut store, &ck, &map).unwrap();
    let recorded: Vec<&str> = report
        .assignments
        .iter()
        .map(|a| a.variable.as_str())
        .collect();
    assert_eq!(recorded, ["y", "x"]);
}

/// One part of a partitioned variable passed alone as a variable object takes a whole tensor of
/// the part's own shape (TensorFlow restores it with the spec ""), and `initialize` loads it: a
/// defect here checks the part against the partitioned variable's full shape at load time and
/// refuses the mapping the call accepted (the TensorFlow fixture has a single part, whose shape is
/// the full shape, and cannot tell).
#[test]
fn one_part_alone_takes_a_tensor_of_its_own_shape() {
    let (_d, ck) = ckpt(&[("t", &[5, 2])]);
    let mut store = VariableStore::new();
    store
        .get_partitioned_variable("p", &[10, 2], DType::F32, &[2, 1], Init::Zeros)
        .unwrap();
    let report = init_from_checkpoint(
        &mut store,
        &ck,
        &AssignmentMap::from([("t", Target::variable("p/part_1"))]),
    )
    .unwrap();
    assert_eq!(report.assignments[0].slice, tfckpt::Slice::full(2));
    store.initialize(Device::Cpu).unwrap();
    assert_eq!(
        store.value("p/part_1").unwrap().to_f32().unwrap(),
        (0..10).map(|x| x as f32).collect::<Vec<_>>()
    );
    assert_eq!(
        store.value("p/part_0").unwrap().to_f32().unwrap(),
        vec![0.0; 10]
    );
}

/// A cast on load converts each float32 as the `half` crate does (round to nearest even; NaNs
/// quiet, sign and top payload bits kept), to bfloat16 and to float16: checked against that
/// independent conversion, not against another load through the same code (before, swapping
/// the two targets went unnoticed by every host test).
#[test]
fn a_cast_on_load_converts_as_half_does() {
    let values: Vec<f32> = vec![
        1.0,
        -2.5,
        std::f32::consts::PI,
        1.0 + 1.0 / 1024.0 + 1.0 / 4096.0, // a tie in float16's last place
        1e-8,                              // below float16's smallest subnormal
        6.1e-5,                            // a float16 subnormal
        65504.0,
        70000.0, // past float16's largest: infinity
        3.0e38,
        f32::MIN_POSITIVE,
        -0.0,
        f32::INFINITY,
        f32::from_bits(0x7fa0_0001), // a signalling NaN with payload
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut b = CkptBuilder::new(dir.path().join("m"));
    b.f32("w", &[values.len() as u64], &values);
    let ck = b.finish();
    for to in [DType::BF16, DType::F16] {
        let convert = |v: f32| match to {
            DType::BF16 => half::bf16::from_f32(v).to_bits(),
            _ => half::f16::from_f32(v).to_bits(),
        };
        let mut store = VariableStore::new();
        store
            .get_variable("x", &[values.len() as u64], DType::F32, Init::Zeros)
            .unwrap();
        init_from_checkpoint(&mut store, &ck, &AssignmentMap::from([("w", "x")])).unwrap();
        let options = tfckpt::LoadOptions::new().cast(DType::F32, to);
        store.initialize_with(Device::Cpu, &options).unwrap();
        let x = store.value("x").unwrap();
        assert_eq!(x.dtype, to);
        let want: Vec<u8> = values
            .iter()
            .flat_map(|&v| convert(v).to_le_bytes())
            .collect();
        assert_eq!(x.bytes().unwrap(), &want[..], "{to}");
    }
}

/// A pair that a later pair replaces never loads, so, as in TensorFlow (which finds dtype
/// problems, and the shape problems of scope and part-list mappings, only when the initializer
/// runs, and runs only the last one), its problems do not fail the call; they did. A single
/// variable mapped directly is shape-checked at call time, replaced or not, as TensorFlow does.
#[test]
fn a_replaced_pair_is_not_checked_but_a_direct_shape_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = CkptBuilder::new(dir.path().join("ck"));
    b.bytes("a", DType::I64, &[2], &[0; 16]);
    b.f32("b", &[2], &[1.5, 2.5]);
    b.f32("old/w", &[3, 3], &[0.0; 9]);
    b.f32("x/w", &[1, 3], &[7.0, 8.0, 9.0]);
    b.f32("c", &[3], &[0.0; 3]);
    let prefix = b.finish();
    let load = |pairs: &[(&str, Target)]| {
        let mut store = VariableStore::new();
        store
            .get_variable("w", &[2], DType::F32, Init::Zeros)
            .unwrap();
        store
            .get_variable("new/w", &[1, 3], DType::F32, Init::Zeros)
            .unwrap();
        let map: AssignmentMap = pairs.iter().cloned().collect();
        init_from_checkpoint(&mut store, &prefix, &map)?;
        store.initialize(Device::Cpu)?;
        Ok::<_, tfckpt::Error>(store)
    };
    // int64 `a` into float32 `w`, replaced by `b` (keys apply in ascending order).
    let s = load(&[("a", Target::variable("w")), ("b", Target::variable("w"))]).unwrap();
    assert_eq!(s.value("w").unwrap().to_f32().unwrap(), [1.5, 2.5]);
    let e = load(&[("a", Target::variable("w"))]).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::DtypeMismatch { .. }), "{e}");
    // `old/w` [3, 3] by scope into `new/w` [1, 3], replaced by `x/w`.
    let s = load(&[
        ("old/", Target::name("new/")),
        ("x/w", Target::name("new/w")),
    ])
    .unwrap();
    assert_eq!(s.value("new/w").unwrap().to_f32().unwrap(), [7.0, 8.0, 9.0]);
    let e = load(&[("old/", Target::name("new/"))]).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ShapeMismatch { .. }), "{e}");
    // Mapped directly, `c` [3] into `w` [2] fails when called, replaced or not.
    let e = load(&[("b", Target::variable("w")), ("c", Target::variable("w"))]).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ShapeMismatch { .. }), "{e}");
    let e = load(&[("c", Target::variable("w")), ("d", Target::variable("w"))]).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ShapeMismatch { .. }), "{e}");
}

/// An opened checkpoint serves several calls (its index read once), `values` lists the host
/// values, `take_value` moves one out, and `Debug` of a store or a large value prints counts,
/// not gigabytes.
#[test]
fn opened_checkpoints_values_and_debug() {
    let (_d, ck) = ckpt(&[("t", &[512, 512]), ("u", &[2])]);
    let opened = std::sync::Arc::new(tfckpt::Checkpoint::open(&ck).unwrap());
    let mut store = VariableStore::new();
    store
        .get_variable("a", &[512, 512], DType::F32, Init::Zeros)
        .unwrap();
    store
        .get_variable("b", &[2], DType::F32, Init::Zeros)
        .unwrap();
    tfckpt::init_from_opened_checkpoint(&mut store, &opened, &AssignmentMap::from([("t", "a")]))
        .unwrap();
    tfckpt::init_from_opened_checkpoint(&mut store, &opened, &AssignmentMap::from([("u", "b")]))
        .unwrap();
    store.initialize(Device::Cpu).unwrap();
    let names: Vec<&str> = store.values().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "b"]);
    let shown = format!("{store:?}");
    assert!(
        shown.contains("variables: 2") && shown.len() < 300,
        "{shown}"
    );
    let a = store.take_value("a").unwrap();
    let shown = format!("{a:?}");
    assert!(
        shown.contains("(1048576 bytes)") && shown.len() < 1000,
        "{shown}"
    );
    assert_eq!(a.to_f32().unwrap()[..3], [0.0, 1.0, 2.0]);
    assert!(store.value("a").is_none());
    assert_eq!(
        store.value("b").unwrap().to_f32().unwrap(),
        [1000.0, 1001.0]
    );
    // Zero worker threads is refused (it meant one thread or every core, depending on the path).
    let options = tfckpt::LoadOptions {
        threads: Some(0),
        ..Default::default()
    };
    let e = store.initialize_with(Device::Cpu, &options).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e}");
}

/// `initialize_into` takes the trainer's typed slices (no byte view, no `unsafe` in its code),
/// checks their element type against the variable's dtype, and takes buffers of several types in
/// one call as `HostBuffer`s.
#[test]
fn typed_buffers_load_and_are_checked() {
    let (_d, ck) = ckpt(&[("t", &[2])]);
    let mut store = VariableStore::new();
    store
        .get_variable("a", &[2], DType::F32, Init::Zeros)
        .unwrap();
    store
        .get_variable("n", &[3], DType::I64, Init::Ones)
        .unwrap();
    init_from_checkpoint(&mut store, &ck, &AssignmentMap::from([("t", "a")])).unwrap();
    let mut wrong = [0i32; 2];
    let e = store
        .initialize_into(vec![("a", &mut wrong[..])], &Default::default())
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::BadVariable { name, reason } if name == "a" && reason.contains("holds int32 elements")),
        "{e}"
    );
    let (mut a, mut n) = ([0f32; 2], [0i64; 3]);
    let buffers: Vec<(&str, tfckpt::HostBuffer)> =
        vec![("a", (&mut a[..]).into()), ("n", (&mut n[..]).into())];
    store.initialize_into(buffers, &Default::default()).unwrap();
    assert_eq!((a, n), ([0.0, 1.0], [1, 1, 1]));
}

/// Two checkpoints holding a tensor of the same name, each mapped onto its own variable by its
/// own call: each variable takes its own checkpoint's value (the load reuses the index each call
/// read, and must pair each with its own path: a mutant pairing them crosswise swapped the values).
#[test]
fn two_checkpoints_of_one_store_each_give_their_own_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut prefixes = Vec::new();
    for (name, value) in [("one", 1.0f32), ("two", 2.0)] {
        let mut b = CkptBuilder::new(dir.path().join(name));
        b.f32("w", &[2], &[value, value]);
        prefixes.push(b.finish());
    }
    let mut store = VariableStore::new();
    for var in ["a", "b"] {
        store
            .get_variable(var, &[2], DType::F32, Init::Zeros)
            .unwrap();
    }
    init_from_checkpoint(&mut store, &prefixes[0], &AssignmentMap::from([("w", "a")])).unwrap();
    init_from_checkpoint(&mut store, &prefixes[1], &AssignmentMap::from([("w", "b")])).unwrap();
    let report = store.initialize(Device::Cpu).unwrap();
    assert_eq!((report.from_checkpoint, report.tensors), (2, 2));
    assert_eq!(store.value("a").unwrap().to_f32().unwrap(), [1.0, 1.0]);
    assert_eq!(store.value("b").unwrap().to_f32().unwrap(), [2.0, 2.0]);
}
