//! End-to-end `init_from_checkpoint` + `initialize` benchmarks (bytes per second, page cache warm),
//! on checkpoints written by the crate's own writer before measuring:
//! large tensors at 1, 2 and 4 GB (cost must grow linearly), both copied into fresh memory (the
//! default), into buffers the trainer already holds (`initialize_into`, as a model's parameters are
//! after its own initialization: no fresh memory to fault in), and as copy-on-write mappings
//! (`LoadOptions::map_values`); 100k small tensors (per-tensor overhead); a re-split of a
//! partitioned tensor across axes; and bfloat16 and float16 checkpoints cast to float32 on load.
//!
//! `cargo bench --bench load`   (TFCKPT_BENCH_MAX_GB=2 to skip the 4 GB case)

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tfckpt::{
    init_from_checkpoint, AssignmentMap, CheckpointWriter, DType, Device, Init, LoadOptions, Slice,
    Target, TensorRef, VariableStore,
};

mod common;

/// `count` float32 tensors of `elems` elements under `model/`.
fn write_many(prefix: &Path, count: usize, elems: usize) -> u64 {
    common::write_f32s(prefix, count, elems, |i| format!("model/t_{i:06}"))
}

fn store_for(count: usize, elems: usize, dtype: DType) -> VariableStore {
    let mut store = VariableStore::new();
    for i in 0..count {
        store
            .get_variable(
                &format!("new/t_{i:06}"),
                &[elems as u64],
                dtype,
                Init::Zeros,
            )
            .unwrap();
    }
    store
}

fn load(prefix: &Path, count: usize, elems: usize) {
    load_with(prefix, count, elems, &LoadOptions::default())
}

/// The store for `count` tensors of `dtype`, with `init_from_checkpoint` called (not yet
/// initialized).
fn mapped_store(prefix: &Path, count: usize, elems: usize, dtype: DType) -> VariableStore {
    let mut store = store_for(count, elems, dtype);
    init_from_checkpoint(
        &mut store,
        prefix,
        &AssignmentMap::from([("model/", Target::scope("new/"))]),
    )
    .unwrap();
    store
}

fn load_with(prefix: &Path, count: usize, elems: usize, options: &LoadOptions) {
    let mut store = mapped_store(prefix, count, elems, DType::F32);
    black_box(store.initialize_with(Device::Cpu, options).unwrap());
}

/// The same load into `held`, one resident buffer per variable (`initialize_into`), of `dtype`
/// variables under `options` (which may cast them).
fn load_into(
    prefix: &Path,
    (count, elems, dtype): (usize, usize, DType),
    held: &mut [Vec<u8>],
    options: &LoadOptions,
) {
    let mut store = mapped_store(prefix, count, elems, dtype);
    let names: Vec<String> = (0..count).map(|i| format!("new/t_{i:06}")).collect();
    let buffers = names
        .iter()
        .map(String::as_str)
        .zip(held.iter_mut().map(Vec::as_mut_slice))
        .collect();
    black_box(store.initialize_into(buffers, options).unwrap());
}

fn large(c: &mut Criterion) {
    let max_gb: u64 = std::env::var("TFCKPT_BENCH_MAX_GB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut g = c.benchmark_group("init_large_tensors");
    g.sample_size(10);
    for gb in [1u64, 2, 4].into_iter().filter(|&gb| gb <= max_gb) {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("large");
        let count = (gb * 64) as usize; // 16 MiB tensors
        let bytes = write_many(&prefix, count, 4 << 20);
        g.throughput(Throughput::Bytes(bytes));
        // Default: every value copied into fresh memory.
        g.bench_with_input(BenchmarkId::new("GB", gb), &prefix, |b, p| {
            b.iter(|| load(p, count, 4 << 20))
        });
        // Into the trainer's resident tensors.
        let mut held: Vec<Vec<u8>> = (0..count).map(|_| vec![1u8; 16 << 20]).collect();
        g.bench_with_input(BenchmarkId::new("GB_into", gb), &prefix, |b, p| {
            b.iter(|| {
                let f32s = (count, 4 << 20, DType::F32);
                load_into(p, f32s, &mut held, &LoadOptions::default())
            })
        });
        drop(held);
        // `LoadOptions::map_values`: the 16 MiB values are copy-on-write mappings of the file.
        let map = LoadOptions {
            map_values: true,
            ..Default::default()
        };
        g.bench_with_input(BenchmarkId::new("GB_mapped", gb), &prefix, |b, p| {
            b.iter(|| load_with(p, count, 4 << 20, &map))
        });
    }
    g.finish();
}

fn small(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("small");
    let count = 100_000;
    let bytes = write_many(&prefix, count, 64);
    let mut g = c.benchmark_group("init_small_tensors_100k_x_256B");
    g.sample_size(10);
    g.throughput(Throughput::Elements(count as u64));
    g.bench_function("call+initialize", |b| b.iter(|| load(&prefix, count, 64)));
    g.throughput(Throughput::Bytes(bytes));
    g.finish();
}

fn resplit(c: &mut Criterion) {
    // [500000, 256] float32 (512 MB) stored in 8 parts along axis 0, loaded as 4 parts along axis 1.
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("resplit");
    let (rows, cols) = (500_000u64, 256u64);
    let mut w = CheckpointWriter::create(&prefix, Default::default()).unwrap();
    let part: Vec<u8> = (0..(rows / 8 * cols * 4) as usize)
        .map(|i| (i % 253) as u8)
        .collect();
    for i in 0..8 {
        let s = Slice::from_ranges(&[(i * rows / 8, rows / 8), (0, cols)]);
        w.add_slice(
            "model/emb",
            &[rows, cols],
            &s,
            TensorRef::Bytes {
                dtype: DType::F32,
                shape: &[rows / 8, cols],
                data: &part,
            },
        )
        .unwrap();
    }
    w.finish().unwrap();
    let mut g = c.benchmark_group("resplit_512MB_8x_axis0_to_4x_axis1");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(rows * cols * 4));
    g.bench_function("initialize", |b| {
        b.iter(|| {
            let mut store = VariableStore::new();
            store
                .get_partitioned_variable(
                    "new/emb",
                    &[rows, cols],
                    DType::F32,
                    &[1, 4],
                    Init::Zeros,
                )
                .unwrap();
            init_from_checkpoint(
                &mut store,
                &prefix,
                &AssignmentMap::from([("model/emb", "new/emb")]),
            )
            .unwrap();
            black_box(store.initialize(Device::Cpu).unwrap());
        })
    });
    g.finish();
}

/// A half-precision checkpoint into float32 variables (`LoadOptions::cast`), as a trainer starts
/// in full precision from half-precision weights: 32 tensors of 8 M elements (512 MB stored, 1 GB
/// loaded), bfloat16 and float16, into the trainer's resident buffers so that the conversion, not
/// fresh memory, is measured (throughput: bytes loaded).
fn cast(c: &mut Criterion) {
    for (dtype, group) in [
        (DType::BF16, "cast_bf16_to_f32_512MB"),
        (DType::F16, "cast_f16_to_f32_512MB"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("half");
        let (count, elems) = (32usize, 8usize << 20);
        let mut w = CheckpointWriter::create(&prefix, Default::default()).unwrap();
        // Values of every sign and magnitude, subnormals included (no NaNs or infinities: not
        // what a trainer stores; 0x7b00 keeps below both types' top exponent).
        let data: Vec<u8> = (0..elems)
            .flat_map(|i| (((i * 7919) % 0x7b00) as u16 | ((i as u16 & 1) << 15)).to_le_bytes())
            .collect();
        for i in 0..count {
            w.add(
                &format!("model/t_{i:06}"),
                TensorRef::Bytes {
                    dtype,
                    shape: &[elems as u64],
                    data: &data,
                },
            )
            .unwrap();
        }
        w.finish().unwrap();
        let mut held: Vec<Vec<u8>> = (0..count).map(|_| vec![1u8; elems * 4]).collect();
        let options = LoadOptions::default().cast(dtype, DType::F32);
        let mut g = c.benchmark_group(group);
        g.sample_size(10);
        g.throughput(Throughput::Bytes((count * elems * 4) as u64));
        g.bench_function("initialize_into", |b| {
            // The model's variables in the checkpoint's dtype; they land as float32.
            b.iter(|| load_into(&prefix, (count, elems, dtype), &mut held, &options))
        });
        g.finish();
    }
}

criterion_group!(benches, large, small, resplit, cast);
criterion_main!(benches);
