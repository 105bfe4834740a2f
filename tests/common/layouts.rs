//! The variable layouts the tests load every fixture into: re-partitioned for the GPU tests, shared
//! by the emulated-device unit tests (`src/gpu/tests.rs`, which includes this file through `#[path]`,
//! so it uses nothing else of `tests/common`) and the CUDA tests (`tests/gpu.rs`), so that both check
//! the same thing; and as stored, for the copy-on-write tests (`tests/zero_copy.rs`).
#![allow(dead_code)]

use std::path::Path;

use tfckpt::{
    init_from_checkpoint, AssignmentMap, Checkpoint, DType, Init, Target, Tensor, VariableStore,
};

/// The TensorFlow fixtures (under `tests/fixtures/tf/`) the GPU and copy-on-write tests load.
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

/// How [`store_for_layout`] lays out the variables it makes for a checkpoint's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Re-partitioned, for the GPU tests: every readable tensor mapped whole (`whole/NAME`), in 3
    /// parts along axis 0 (`axis0/NAME`, where the first dimension is at least 3) and in 2 parts
    /// along axis 1 (`axis1/NAME`, where the second is at least 2), plus one variable
    /// (`unmapped/ones`, float32 [5, 3]) left to its initializer.
    Repartitioned,
    /// As stored, for the copy-on-write tests: every readable tensor as one variable (`v/NAME`) of
    /// the same layout, whole, or partitioned exactly as its slices are stored (as many parts as
    /// slices, along the axis they split).
    AsStored,
}

/// A store with a variable (or several) for every readable tensor of the checkpoint `dir`, laid out
/// as `layout` says, every one mapped to its tensor by one `init_from_checkpoint` call (not yet
/// initialized). `NAME` is the tensor's name with `:` replaced by `_`; tensors that cannot be read
/// (variant) or that make no variable are left out.
pub fn store_for_layout(dir: &Path, layout: Layout) -> VariableStore {
    store_for_layout_from(dir, dir, layout)
}

/// [`store_for_layout`] with the variables made from the local checkpoint `dir`, mapped to the
/// same checkpoint at `from` (a copy of it, e.g. its URL on a server).
pub fn store_for_layout_from(dir: &Path, from: &Path, layout: Layout) -> VariableStore {
    try_store_for_layout_from(dir, from, layout)
        .unwrap_or_else(|e| panic!("{}: {e}", from.display()))
}

/// [`store_for_layout_from`], with the error of `init_from_checkpoint` (the checkpoint at `from`
/// may be damaged; `dir` must be intact).
pub fn try_store_for_layout_from(
    dir: &Path,
    from: &Path,
    layout: Layout,
) -> tfckpt::Result<VariableStore> {
    let ckpt = Checkpoint::open(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut store = VariableStore::new();
    let mut map = AssignmentMap::new();
    for info in ckpt.tensors() {
        if ckpt.read(&info.name).is_err() {
            continue; // variant tensors: listed, not read
        }
        let base = info.name.replace(':', "_");
        match layout {
            Layout::Repartitioned => {
                let whole = format!("whole/{base}");
                if store
                    .get_variable(&whole, &info.shape, info.dtype, Init::Zeros)
                    .is_err()
                {
                    continue;
                }
                map.push(info.name.clone(), Target::name(whole));
                let mut layouts = Vec::new();
                // A shape with a dimension of 0 is not partitioned, as TensorFlow refuses it.
                let partitionable = !info.shape.contains(&0);
                if partitionable && info.shape.first().is_some_and(|&d| d >= 3) {
                    let mut p = vec![1; info.shape.len()];
                    p[0] = 3;
                    layouts.push(("axis0", p));
                }
                if partitionable && info.shape.get(1).is_some_and(|&d| d >= 2) {
                    let mut p = vec![1; info.shape.len()];
                    p[1] = 2;
                    layouts.push(("axis1", p));
                }
                for (tag, parts) in layouts {
                    let name = format!("{tag}/{base}");
                    store
                        .get_partitioned_variable(
                            &name,
                            &info.shape,
                            info.dtype,
                            &parts,
                            Init::Zeros,
                        )
                        .unwrap();
                    map.push(info.name.clone(), Target::name(name));
                }
            }
            Layout::AsStored => {
                let name = format!("v/{base}");
                let made = if info.slices.is_empty() {
                    store
                        .get_variable(&name, &info.shape, info.dtype, Init::Zeros)
                        .map(drop)
                } else {
                    // The axis the stored slices split, and how many there are.
                    let r0 = info.slices[0].ranges(&info.shape);
                    let r1 = info.slices[1].ranges(&info.shape);
                    let axis = (0..info.shape.len()).find(|&d| r0[d] != r1[d]).unwrap();
                    let mut parts = vec![1; info.shape.len()];
                    parts[axis] = info.slices.len() as u64;
                    store
                        .get_partitioned_variable(
                            &name,
                            &info.shape,
                            info.dtype,
                            &parts,
                            Init::Zeros,
                        )
                        .map(drop)
                };
                if made.is_ok() {
                    map.push(info.name.clone(), Target::name(name));
                }
            }
        }
    }
    if layout == Layout::Repartitioned {
        store
            .get_variable("unmapped/ones", &[5, 3], DType::F32, Init::Ones)
            .unwrap();
    }
    init_from_checkpoint(&mut store, from, &map)?;
    Ok(store)
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
