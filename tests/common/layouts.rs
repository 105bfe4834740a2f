//! The variable layouts the GPU tests load every fixture into, shared by the emulated-device unit
//! tests (`src/gpu/tests.rs`, through `#[path]`) and the CUDA tests (`tests/gpu.rs`), so that both
//! check the same thing.
#![allow(dead_code)]

use std::path::Path;

use tfckpt::{
    init_from_checkpoint, AssignmentMap, Checkpoint, DType, Init, Target, Tensor, VariableStore,
};

/// The TensorFlow fixtures (under `tests/fixtures/tf/`) the GPU tests load.
pub const CASES: &[&str] = &[
    "dtypes/dtypes",
    "dtypes_extra/extra",
    "partitioned_axes",
    "sharded",
    "sharded_partitioned",
    "repartition_v2",
    "repartition_v1",
    "v1",
    "v1_sharded",
    "tf2_object",
    "h1_partitioned",
];

/// Every readable tensor of `dir` mapped whole, in 3 parts along axis 0 and in 2 parts along
/// axis 1 (where the shape allows), plus one variable left to its initializer.
pub fn store_for(dir: &Path) -> VariableStore {
    let ckpt = Checkpoint::open(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut store = VariableStore::new();
    let mut map = AssignmentMap::new();
    for info in ckpt.tensors() {
        if ckpt.read(&info.name).is_err() {
            continue; // variant tensors: listed, not read
        }
        let base = info.name.replace(':', "_");
        let whole = format!("whole/{base}");
        if store
            .get_variable(&whole, &info.shape, info.dtype, Init::Zeros)
            .is_err()
        {
            continue;
        }
        map.push(info.name.clone(), Target::name(whole));
        let mut layouts = Vec::new();
        if info.shape.first().is_some_and(|&d| d >= 3) {
            let mut p = vec![1; info.shape.len()];
            p[0] = 3;
            layouts.push(("axis0", p));
        }
        if info.shape.get(1).is_some_and(|&d| d >= 2) {
            let mut p = vec![1; info.shape.len()];
            p[1] = 2;
            layouts.push(("axis1", p));
        }
        for (tag, parts) in layouts {
            let name = format!("{tag}/{base}");
            store
                .get_partitioned_variable(&name, &info.shape, info.dtype, &parts, Init::Zeros)
                .unwrap();
            map.push(info.name.clone(), Target::name(name));
        }
    }
    store
        .get_variable("unmapped/ones", &[5, 3], DType::F32, Init::Ones)
        .unwrap();
    init_from_checkpoint(&mut store, dir, &map).unwrap();
    store
}

/// A variable's value: read back from the device, or the host value (strings stay on the host).
pub fn device_or_host(store: &VariableStore, name: &str) -> Tensor {
    match store.device_value(name) {
        Some(d) => d.to_host().unwrap(),
        None => store.value(name).unwrap().clone(),
    }
}

/// Every variable of `gpu` equals the same variable of `cpu` (initialized on the host); returns
/// how many were compared.
pub fn assert_same(cpu: &VariableStore, gpu: &VariableStore, what: &str) -> usize {
    assert!(gpu.is_initialized(), "{what}");
    let mut n = 0;
    for v in cpu.variables() {
        let want = cpu.value(&v.name).unwrap();
        let got = device_or_host(gpu, &v.name);
        assert_eq!(&got, want, "{what}: {}", v.name);
        n += 1;
    }
    assert!(n > 0, "{what}: no variables");
    n
}
