//! Reader benchmarks (bytes per second, page cache warm): index open, CRC32C, whole-checkpoint reads
//! into a reused buffer, `verify`, and many small tensors. Checkpoints are written by the crate's own
//! writer into a temporary directory before measuring. And the writer itself over many shards
//! (more than it holds open at once).
//!
//! `cargo bench --bench reader`

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tfckpt::Checkpoint;

mod common;

/// `count` float32 tensors of `elems` elements under `model/layer_NNNNNN/w`.
fn write(prefix: &Path, count: usize, elems: usize) -> u64 {
    common::write_f32s(prefix, count, elems, |i| format!("model/layer_{i:06}/w"))
}

fn crc(c: &mut Criterion) {
    let data = vec![0x5au8; 64 << 20];
    let mut g = c.benchmark_group("crc32c");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(20);
    g.bench_function("parallel 64 MiB", |b| {
        b.iter(|| black_box(tfckpt::crc::crc32c(&data)))
    });
    g.bench_function("crc32c crate (sse4.2 crc32), one core 64 MiB", |b| {
        b.iter(|| black_box(crc32c::crc32c(&data)))
    });
    let small = vec![0x5au8; 4 << 20];
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("tfckpt, one core 4 MiB (in cache)", |b| {
        b.iter(|| black_box(tfckpt::crc::crc32c(&small)))
    });
    g.finish();
}

fn open_index(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("open_index");
    for n in [1_000usize, 100_000] {
        let prefix = dir.path().join(format!("idx{n}"));
        write(&prefix, n, 1);
        g.throughput(Throughput::Elements(n as u64));
        g.sample_size(10);
        g.bench_with_input(BenchmarkId::from_parameter(n), &prefix, |b, p| {
            b.iter(|| black_box(Checkpoint::open(p).unwrap()))
        });
    }
    // Data files are mapped when the checkpoint is opened: what 64 of them cost.
    let prefix = dir.path().join("shards64");
    let mut w = tfckpt::CheckpointWriter::create(
        &prefix,
        tfckpt::WriterOptions {
            num_shards: 64,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..1_000 {
        let t = tfckpt::Tensor::from_f32(&[4], &[i as f32; 4]).unwrap();
        w.add(&format!("model/layer_{i:06}/w"), (&t).into())
            .unwrap();
    }
    w.finish().unwrap();
    g.throughput(Throughput::Elements(1_000));
    g.bench_with_input(BenchmarkId::new("64 shards", 1_000), &prefix, |b, p| {
        b.iter(|| black_box(Checkpoint::open(p).unwrap()))
    });
    g.finish();
}

fn read_large(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("large");
    // 64 tensors of 8 MiB: 512 MiB.
    let bytes = write(&prefix, 64, 2 << 20);
    let ckpt = Checkpoint::open(&prefix).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    let mut g = c.benchmark_group("large_tensors_512MiB");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    g.bench_function("read_into reused buffer", |b| {
        b.iter(|| {
            for t in ckpt.tensors() {
                ckpt.read_into(&t.name, &mut buf).unwrap();
            }
        })
    });
    g.bench_function("read (allocating)", |b| {
        b.iter(|| {
            for t in ckpt.tensors() {
                black_box(ckpt.read(&t.name).unwrap());
            }
        })
    });
    g.bench_function("verify", |b| b.iter(|| ckpt.verify().unwrap()));
    g.bench_function("view (zero-copy, checksummed)", |b| {
        b.iter(|| {
            for t in ckpt.tensors() {
                black_box(ckpt.view(&t.name).unwrap());
            }
        })
    });
    g.finish();
}

fn read_small(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("small");
    // 10k tensors of 256 B.
    let bytes = write(&prefix, 10_000, 64);
    let ckpt = Checkpoint::open(&prefix).unwrap();
    let mut buf = vec![0u8; 256];
    let mut g = c.benchmark_group("small_tensors_10k_x_256B");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    g.bench_function("read_into", |b| {
        b.iter(|| {
            for t in ckpt.tensors() {
                ckpt.read_into(&t.name, &mut buf).unwrap();
            }
        })
    });
    g.finish();
}

/// The writer over 1, 64 and 200 shards: 20,000 tensors of 1 KiB, index and fsyncs included.
/// Past 64 shards it closes one file to open another (at most 64 open at once): what that costs.
fn write_shards(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let t = tfckpt::Tensor::from_f32(&[256], &[0.5; 256]).unwrap();
    let names: Vec<String> = (0..20_000)
        .map(|i| format!("model/layer_{i:06}/w"))
        .collect();
    let mut g = c.benchmark_group("writer_20k_x_1KiB");
    g.throughput(Throughput::Elements(names.len() as u64));
    g.sample_size(10);
    for shards in [1u32, 64, 200] {
        g.bench_function(BenchmarkId::new("shards", shards), |b| {
            b.iter(|| {
                let prefix = dir.path().join(format!("w{shards}"));
                let options = tfckpt::WriterOptions {
                    num_shards: shards,
                    ..Default::default()
                };
                let mut w = tfckpt::CheckpointWriter::create(&prefix, options).unwrap();
                for name in &names {
                    w.add(name, (&t).into()).unwrap();
                }
                w.finish().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    crc,
    open_index,
    read_large,
    read_small,
    write_shards
);
criterion_main!(benches);
