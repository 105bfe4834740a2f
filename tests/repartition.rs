//! Re-partitioning matrix on TensorFlow-written V2 and V1 checkpoints: tensors stored {5 parts along
//! axis 0, 3 parts along axis 1, whole} are loaded into variables {3 and 7 parts along axis 0, 4 parts
//! along axis 1, whole} for float32, float16, int64, bool and string. Every part equals its box of the
//! value TensorFlow's reader returned, and each stored slice is read once for all its users.

use std::path::{Path, PathBuf};

use serde_json::Value;
#[allow(dead_code)] // shared with the binary: only part of it is used here
#[path = "../src/bin/tfckpt/npy.rs"]
mod npy;

use tfckpt::{
    init_from_checkpoint, AssignmentMap, Checkpoint, DType, Device, Init, Target, Tensor,
    VariableStore,
};

mod common;
use common::fixtures::fixture;

const TARGETS: &[(&str, &[u64])] = &[
    ("to_p3_axis0", &[3, 1]),
    ("to_p7_axis0", &[7, 1]),
    ("to_p4_axis1", &[1, 4]),
    ("to_whole", &[]),
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// TF's value of `tensor` as (shape, one entry per element: hex of its bytes).
fn tf_value(case: &Path, tensor: &str) -> (Vec<u64>, Vec<String>) {
    let base = case.join("expected/values").join(tensor);
    let strings = PathBuf::from(format!("{}.strings.json", base.display()));
    if strings.is_file() {
        let v: Value = serde_json::from_slice(&std::fs::read(strings).unwrap()).unwrap();
        let shape = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        return (
            shape,
            v["hex"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap().to_string())
                .collect(),
        );
    }
    let a = npy::read(std::fs::File::open(format!("{}.npy", base.display())).unwrap()).unwrap();
    let size = a.data.len() / a.shape.iter().product::<u64>() as usize;
    (a.shape, a.data.chunks(size).map(hex).collect())
}

fn elements(t: &Tensor) -> Vec<String> {
    match t.strings() {
        Some(s) => s.iter().map(hex).collect(),
        None => {
            let mut buf = Vec::new();
            npy::write_tensor(&mut buf, t).unwrap(); // same .npy conventions as TF's expected files
            let a = npy::read(&buf[..]).unwrap();
            a.data.chunks(t.dtype.size().unwrap()).map(hex).collect()
        }
    }
}

fn run(case_name: &str) {
    let case = fixture(case_name);
    let ckpt = Checkpoint::open(&case).unwrap();
    let mut store = VariableStore::new();
    let mut map = AssignmentMap::new();
    let mut want_reads = 0;
    let mut checked = 0;
    for info in ckpt.tensors() {
        want_reads += info.slices.len().max(1);
        for (target, partitions) in TARGETS {
            let var = format!("new/{}/{target}", info.name);
            if partitions.is_empty() {
                store
                    .get_variable(&var, &info.shape, info.dtype, Init::Zeros)
                    .unwrap();
            } else {
                store
                    .get_partitioned_variable(
                        &var,
                        &info.shape,
                        info.dtype,
                        partitions,
                        Init::Zeros,
                    )
                    .unwrap();
            }
            map.push(info.name.clone(), Target::name(var));
        }
    }
    assert!(
        ckpt.tensors().len() >= 14,
        "{case_name}: {} tensors",
        ckpt.tensors().len()
    );
    init_from_checkpoint(&mut store, &case, &map).unwrap();
    let report = store.initialize(Device::Cpu).unwrap();
    assert_eq!(
        report.stored_reads, want_reads,
        "{case_name}: every stored slice read exactly once"
    );
    for info in ckpt.tensors() {
        let (shape, tf) = tf_value(&case, &info.name);
        assert_eq!(shape, info.shape);
        for (target, _) in TARGETS {
            let var = format!("new/{}/{target}", info.name);
            let (vars, boxes): (Vec<String>, Vec<Vec<(u64, u64)>>) =
                match store.partitioned_variable(&var) {
                    Some(pv) => pv
                        .parts
                        .iter()
                        .map(|p| {
                            let v = store.variable(p).unwrap();
                            (
                                p.clone(),
                                v.part.as_ref().unwrap().slice(&v.shape).ranges(&info.shape),
                            )
                        })
                        .unzip(),
                    None => (
                        vec![var.clone()],
                        vec![info.shape.iter().map(|&d| (0, d)).collect()],
                    ),
                };
            for (v, b) in vars.iter().zip(boxes) {
                let got = elements(store.value(v).unwrap());
                let cols = shape[1];
                let mut want = Vec::new();
                for r in 0..b[0].1 {
                    for c in 0..b[1].1 {
                        want.push(tf[((b[0].0 + r) * cols + b[1].0 + c) as usize].clone());
                    }
                }
                assert_eq!(got, want, "{case_name}: {v}");
                checked += 1;
            }
        }
        if info.dtype != DType::String {
            // The whole target also equals a plain read.
            assert_eq!(
                store.value(&format!("new/{}/to_whole", info.name)).unwrap(),
                &ckpt.read(&info.name).unwrap()
            );
        }
    }
    assert!(checked >= 14 * 15, "{checked}");
}

#[test]
fn v2_matrix() {
    run("repartition_v2");
}

#[test]
fn v1_matrix() {
    run("repartition_v1");
}
