//! Inputs that used to take quadratic time (the hostile-input issue, defect 3), measured at the
//! issue's sizes so that a regression shows: the target is near-linear, at most 1 s at 40,000.
//!
//! * `scope_pairs_matching_nothing/N`: `init_from_checkpoint` with N scope pairs that match nothing,
//!   against N variables (was 59 s at 40k).
//! * `tensor_of_n_slices/{get,verify,init}/N`: one float32 [N, 4] tensor stored as N one-row slices,
//!   read whole, verified, and loaded into a variable (was 8.5 s `get` and 16 s `init` at 40k);
//!   `init_parts/N` loads it into a variable of N/2 - 1 parts (each part meets two or three stored
//!   slices; was 23 s at 16,000 slices, matching every part against every slice).
//!
//! `cargo bench --bench hostile`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tfckpt::{
    init_from_checkpoint, AssignmentMap, Checkpoint, CheckpointWriter, DType, Device, Init, Slice,
    Target, TensorRef, VariableStore,
};

const SIZES: [u64; 2] = [10_000, 40_000];

fn scope_pairs(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("m");
    let mut w = CheckpointWriter::create(&prefix, Default::default()).unwrap();
    let one = 1f32.to_le_bytes();
    let t = TensorRef::Bytes {
        dtype: DType::F32,
        shape: &[1],
        data: &one,
    };
    w.add("t", t).unwrap();
    w.finish().unwrap();
    let mut g = c.benchmark_group("scope_pairs_matching_nothing");
    g.sample_size(10);
    for n in SIZES {
        let mut store = VariableStore::new();
        for i in 0..n {
            store
                .get_variable(&format!("v{i}/x"), &[1], DType::F32, Init::Zeros)
                .unwrap();
        }
        let map: AssignmentMap = (0..n)
            .map(|i| (format!("k{i}/"), Target::scope(format!("s{i}/"))))
            .collect();
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let r = init_from_checkpoint(&mut store, &prefix, &map).unwrap();
                assert_eq!(r.warnings.len(), n as usize);
                black_box(r)
            })
        });
    }
}

/// One float32 [n, 4] tensor `p` stored as n one-row slices.
fn write_sliced(prefix: &std::path::Path, n: u64) {
    let mut w = CheckpointWriter::create(prefix, Default::default()).unwrap();
    let row = [1f32, 2., 3., 4.].map(f32::to_le_bytes).concat();
    for i in 0..n {
        let t = TensorRef::Bytes {
            dtype: DType::F32,
            shape: &[1, 4],
            data: &row,
        };
        w.add_slice("p", &[n, 4], &Slice::from_ranges(&[(i, 1), (0, 4)]), t)
            .unwrap();
    }
    w.finish().unwrap();
}

fn many_slices(c: &mut Criterion) {
    let mut g = c.benchmark_group("tensor_of_n_slices");
    g.sample_size(10);
    for n in SIZES {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("m");
        write_sliced(&prefix, n);
        g.bench_function(BenchmarkId::new("get", n), |b| {
            b.iter(|| black_box(Checkpoint::open(&prefix).unwrap().read("p").unwrap()))
        });
        g.bench_function(BenchmarkId::new("verify", n), |b| {
            b.iter(|| black_box(Checkpoint::open(&prefix).unwrap().verify().unwrap()))
        });
        g.bench_function(BenchmarkId::new("init", n), |b| {
            b.iter(|| {
                let mut store = VariableStore::new();
                store
                    .get_variable("q", &[n, 4], DType::F32, Init::Zeros)
                    .unwrap();
                let map = AssignmentMap::from([("p", Target::name("q"))]);
                init_from_checkpoint(&mut store, &prefix, &map).unwrap();
                black_box(store.initialize(Device::Cpu).unwrap())
            })
        });
        g.bench_function(BenchmarkId::new("init_parts", n), |b| {
            b.iter(|| {
                let mut store = VariableStore::new();
                store
                    .get_partitioned_variable(
                        "q",
                        &[n, 4],
                        DType::F32,
                        &[n / 2 - 1, 1],
                        Init::Zeros,
                    )
                    .unwrap();
                let map = AssignmentMap::from([("p", Target::name("q"))]);
                init_from_checkpoint(&mut store, &prefix, &map).unwrap();
                black_box(store.initialize(Device::Cpu).unwrap())
            })
        });
    }
}

criterion_group!(benches, scope_pairs, many_slices);
criterion_main!(benches);
