//! Helpers shared by the integration tests, each of which includes them with `mod common;` (and
//! uses only part of them, hence `dead_code` allowed):
//!
//! - [`fixtures`]: where the TensorFlow fixtures are, the list of checkpoint cases, copies to damage;
//! - [`builder`]: small checkpoints written by the crate's own writer;
//! - [`layouts`]: the fixture cases the GPU and copy-on-write tests load, and the one store of
//!   variables for a checkpoint (`store_for_layout`);
//! - [`damage`]: a seeded generator and random damage of a fixture's files;
//! - [`resident`]: the resident bytes of a file's mappings in this process (Linux);
//! - here: the box oracle, and hand-made SSTables and protobuf bytes, so that tests can build
//!   exactly the damaged or unusual files they need.
//!
//! `examples/write_for_tf.rs` includes this file too (through `#[path]`), and `src/gpu/tests.rs`
//! includes `fixtures.rs`, `layouts.rs`, `damage.rs` and `resident.rs` alone.
#![allow(dead_code)]

pub mod builder;
pub mod damage;
pub mod fixtures;
pub mod fork;
pub mod layouts;
#[cfg(target_os = "linux")]
pub mod resident;

#[allow(unused_imports)] // each test uses part of it
pub use damage::{damage, Rng};

use std::path::Path;

/// Starts `command`'s process with SIGINT, SIGTERM and SIGHUP at their default action (a test run
/// from a background job inherits SIGINT ignored, which tfckpt would keep, as a signal ignored at
/// start stays ignored), then the signals `ignored` ignored (`nohup` ignores SIGHUP).
#[cfg(unix)]
pub fn start_with_default_signals(command: &mut std::process::Command, ignored: &[i32]) {
    use std::os::unix::process::CommandExt;
    let ignored = ignored.to_vec();
    // SAFETY: in the child between fork and exec, only `signal`, which is async-signal-safe (the
    // list was allocated before the fork).
    unsafe {
        command.pre_exec(move || {
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(s, libc::SIG_DFL);
            }
            for &s in &ignored {
                libc::signal(s, libc::SIG_IGN);
            }
            Ok(())
        })
    };
}

/// Sends `signal` to `child` (a process the test started and has not waited for), waits up to a
/// minute for it to end, and returns how it ended and what it wrote to its piped stderr.
#[cfg(unix)]
pub fn signal_and_wait(
    child: &mut std::process::Child,
    signal: i32,
) -> (std::process::ExitStatus, String) {
    use std::time::{Duration, Instant};
    // SAFETY: signals a child this test started and has not yet waited for (its pid is its own).
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("signal {signal} did not end it");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

use tfckpt::Tensor;

/// The box `ranges` (start, length per dimension) of a row-major tensor, element by element: the
/// naive oracle for every slicing test.
pub fn cut(t: &Tensor, ranges: &[(u64, u64)]) -> Tensor {
    let count: u64 = ranges.iter().map(|r| r.1).product();
    let mut idx = vec![0u64; ranges.len()];
    let mut flat = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut f = 0u64;
        for d in 0..ranges.len() {
            f = f * t.shape[d] + ranges[d].0 + idx[d];
        }
        flat.push(f as usize);
        for d in (0..ranges.len()).rev() {
            idx[d] += 1;
            if idx[d] < ranges[d].1 {
                break;
            }
            idx[d] = 0;
        }
    }
    let shape: Vec<u64> = ranges.iter().map(|r| r.1).collect();
    match (t.bytes(), t.strings()) {
        (Some(b), _) => {
            let s = t.dtype.size().unwrap();
            Tensor::from_bytes(
                t.dtype,
                &shape,
                flat.iter()
                    .flat_map(|&i| b[i * s..(i + 1) * s].to_vec())
                    .collect(),
            )
            .unwrap()
        }
        (_, Some(strings)) => {
            let picked: tfckpt::Strings = flat.iter().map(|&i| &strings[i]).collect();
            Tensor::from_strings(&shape, picked).unwrap()
        }
        _ => unreachable!(),
    }
}

pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Protobuf field helpers (tag = field << 3 | wire type).
pub fn pb_varint(out: &mut Vec<u8>, field: u32, v: u64) {
    varint(out, u64::from(field << 3));
    varint(out, v);
}
pub fn pb_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}
pub fn pb_fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    varint(out, u64::from(field << 3 | 5));
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn shape(dims: &[i64]) -> Vec<u8> {
    let mut s = Vec::new();
    for &d in dims {
        let mut dim = Vec::new();
        if d != 0 {
            pb_varint(&mut dim, 1, d as u64);
        }
        pb_bytes(&mut s, 2, &dim);
    }
    s
}

/// A `TensorSliceProto` from (start, length) pairs; length -1 means full.
pub fn slice(ext: &[(i64, i64)]) -> Vec<u8> {
    let mut s = Vec::new();
    for &(start, len) in ext {
        let mut e = Vec::new();
        if start != 0 {
            pb_varint(&mut e, 1, start as u64);
        }
        if len >= 0 {
            pb_varint(&mut e, 2, len as u64);
        }
        pb_bytes(&mut s, 1, &e);
    }
    s
}

pub fn header(num_shards: u64) -> Vec<u8> {
    let mut h = Vec::new();
    pb_varint(&mut h, 1, num_shards);
    let mut v = Vec::new();
    pb_varint(&mut v, 1, 1);
    pb_bytes(&mut h, 3, &v);
    h
}

/// A `BundleEntryProto`.
pub fn entry(dtype: u64, dims: &[i64], shard: u64, offset: u64, size: u64, crc: u32) -> Vec<u8> {
    let mut e = Vec::new();
    pb_varint(&mut e, 1, dtype);
    pb_bytes(&mut e, 2, &shape(dims));
    if shard != 0 {
        pb_varint(&mut e, 3, shard);
    }
    if offset != 0 {
        pb_varint(&mut e, 4, offset);
    }
    if size != 0 {
        pb_varint(&mut e, 5, size);
    }
    pb_fixed32(&mut e, 6, tfckpt::crc::mask(crc));
    e
}

/// One-block SSTable (restart interval 1) holding the sorted records.
pub fn table(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    fn block(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut b = Vec::new();
        let mut restarts = Vec::new();
        for (k, v) in records {
            restarts.push(b.len() as u32);
            varint(&mut b, 0);
            varint(&mut b, k.len() as u64);
            varint(&mut b, v.len() as u64);
            b.extend_from_slice(k);
            b.extend_from_slice(v);
        }
        if restarts.is_empty() {
            restarts.push(0);
        }
        for r in &restarts {
            b.extend_from_slice(&r.to_le_bytes());
        }
        b.extend_from_slice(&(restarts.len() as u32).to_le_bytes());
        b
    }
    fn put(out: &mut Vec<u8>, data: &[u8]) -> (u64, u64) {
        let off = out.len() as u64;
        out.extend_from_slice(data);
        out.push(0);
        let crc = tfckpt::crc::crc32c(&out[off as usize..]);
        out.extend_from_slice(&tfckpt::crc::mask(crc).to_le_bytes());
        (off, data.len() as u64)
    }
    let mut out = Vec::new();
    let data = put(&mut out, &block(records));
    let meta = put(&mut out, &block(&[]));
    let mut handle = Vec::new();
    varint(&mut handle, data.0);
    varint(&mut handle, data.1);
    let last = records.last().map(|r| r.0.clone()).unwrap_or_default();
    let mut sep = last.clone();
    sep.push(0xff);
    let index = put(&mut out, &block(&[(sep, handle)]));
    let mut footer = Vec::new();
    varint(&mut footer, meta.0);
    varint(&mut footer, meta.1);
    varint(&mut footer, index.0);
    varint(&mut footer, index.1);
    footer.resize(40, 0);
    footer.extend_from_slice(&0xDB47_7524_8B80_FB57u64.to_le_bytes());
    out.extend_from_slice(&footer);
    out
}

/// Writes `PREFIX.index` (from records) and the data shard bytes.
pub fn write_bundle(
    dir: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    shards: &[Vec<u8>],
) -> std::path::PathBuf {
    let prefix = dir.join("ckpt");
    std::fs::write(dir.join("ckpt.index"), table(records)).unwrap();
    for (i, s) in shards.iter().enumerate() {
        std::fs::write(
            dir.join(format!("ckpt.data-{i:05}-of-{:05}", shards.len())),
            s,
        )
        .unwrap();
    }
    prefix
}

/// f32 values as little-endian bytes.
pub fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
