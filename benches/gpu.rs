//! The GPU load in `cargo bench` (`cargo bench --features cuda --bench gpu`): a 1 GB checkpoint
//! written by the crate's writer (32 MiB float32 tensors plus small ones) loaded into GPU memory,
//! page cache warm, bytes per second. Without a GPU it says so and measures nothing.
//! `scripts/gpu-check.sh` runs the full ~8 GB benchmark with the ceiling and the cold case.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tfckpt::{
    init_from_checkpoint, AssignmentMap, CheckpointWriter, DType, Device, Init, Target, TensorRef,
    VariableStore,
};

fn gpu_load(c: &mut Criterion) {
    if Device::gpu_count() == 0 {
        eprintln!("gpu bench: no usable GPU, nothing measured");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("model");
    let (big, small) = (30usize, 1000usize);
    let data: Vec<u8> = (0..32usize << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = CheckpointWriter::create(&prefix, Default::default()).unwrap();
    for i in 0..big {
        let t = TensorRef::Bytes {
            dtype: DType::F32,
            shape: &[2048, 4096],
            data: &data,
        };
        w.add(&format!("model/w_{i}"), t).unwrap();
    }
    for i in 0..small {
        let t = TensorRef::Bytes {
            dtype: DType::F32,
            shape: &[64],
            data: &data[..256],
        };
        w.add(&format!("model/s_{i}"), t).unwrap();
    }
    w.finish().unwrap();
    let bytes = (big * (32 << 20) + small * 256) as u64;
    let mut g = c.benchmark_group("gpu");
    g.sample_size(10).throughput(Throughput::Bytes(bytes));
    g.bench_function("load_1GB_warm", |b| {
        b.iter(|| {
            let mut store = VariableStore::new();
            for i in 0..big {
                let name = format!("new/w_{i}");
                store
                    .get_variable(&name, &[2048, 4096], DType::F32, Init::Zeros)
                    .unwrap();
            }
            for i in 0..small {
                let name = format!("new/s_{i}");
                store
                    .get_variable(&name, &[64], DType::F32, Init::Zeros)
                    .unwrap();
            }
            let map = AssignmentMap::from([("model/", Target::scope("new/"))]);
            init_from_checkpoint(&mut store, &prefix, &map).unwrap();
            black_box(store.initialize(Device::Cuda(0)).unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, gpu_load);
criterion_main!(benches);
