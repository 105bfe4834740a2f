//! Remote load throughput against its ceiling, in one run: a checkpoint written by the crate
//! (`MIB` MiB of float32 tensors of 64 MiB, default 2048), served from a temporary directory by a
//! real S3 server (`s3s-fs`) on 127.0.0.1, then
//!
//! 1. the raw ceiling: the data file fetched by `object_store` as parallel ranged GETs of the same
//!    size and concurrency as the load's, the bytes dropped on arrival;
//! 2. `init_from_checkpoint` + `initialize(Device::Cpu)` from `s3://`, every byte checksummed and
//!    copied into host values;
//!
//! and prints both rates and the peak resident memory the load added (the values themselves, plus
//! the ranges in flight and the server's buffers).
//!
//! ```sh
//! cargo run --release --example remote_bench -- [MIB]
//! ```

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use tfckpt::{
    init_from_checkpoint, AssignmentMap, CheckpointWriter, DType, Device, Init, LoadOptions,
    Target, TensorRef, VariableStore,
};

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2048);
    let dir = tempfile::tempdir().unwrap();
    // Written locally, then uploaded through the S3 API: s3s-fs keeps the ETag of an uploaded
    // object, while for a file put there behind its back it hashes the whole file on every GET.
    let local = dir.path().join("local");
    let served = dir.path().join("served");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(served.join("bench")).unwrap();
    let tensor_mib = 64.min(mib);
    let count = mib / tensor_mib;
    let rows = tensor_mib * (1 << 20) / 4 / 1024;
    let data: Vec<u8> = (0..rows * 1024 * 4).map(|i| (i % 251) as u8).collect();
    let mut w = CheckpointWriter::create(local.join("model.ckpt"), Default::default()).unwrap();
    for i in 0..count {
        let shape = [rows, 1024];
        w.add(
            &format!("layer_{i:04}/kernel"),
            TensorRef::Bytes {
                dtype: DType::F32,
                shape: &shape,
                data: &data,
            },
        )
        .unwrap();
    }
    w.finish().unwrap();
    drop(data);
    let bytes = count * rows * 1024 * 4;

    let addr = serve(served);
    // The environment a user sets for a local S3 server (before any client is built).
    std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench-secret");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://{addr}"));
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    let options = LoadOptions::default();
    let (range, concurrency) = (options.remote.range_bytes, options.remote.concurrency);

    // 1. The ceiling: the same bytes, the same ranges and concurrency, dropped on arrival.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name("bench")
            .build()
            .unwrap(),
    );
    for e in std::fs::read_dir(&local).unwrap() {
        let e = e.unwrap();
        let key = object_store::path::Path::from(e.file_name().to_string_lossy().as_ref());
        let body = std::fs::read(e.path()).unwrap();
        rt.block_on(store.put(&key, body.into())).unwrap();
    }
    std::fs::remove_dir_all(&local).unwrap();
    let path = object_store::path::Path::from("model.ckpt.data-00000-of-00001");
    let size = rt.block_on(store.head(&path)).unwrap().size;
    let start = Instant::now();
    let got: u64 = rt.block_on(
        futures_util::stream::iter((0..size).step_by(range as usize).map(|a| {
            let (store, path) = (store.clone(), path.clone());
            async move {
                let b = store
                    .get_range(&path, a..(a + range).min(size))
                    .await
                    .unwrap();
                b.len() as u64
            }
        }))
        .buffer_unordered(concurrency)
        .fold(0u64, |acc, n| async move { acc + n }),
    );
    let raw = start.elapsed().as_secs_f64();
    assert_eq!(got, size);
    drop(rt);

    // 2. The load.
    let url = "s3://bench/model.ckpt";
    let mut vars = VariableStore::new();
    let mut map = Vec::new();
    for i in 0..count {
        let name = format!("layer_{i:04}/kernel");
        vars.get_variable(&name, &[rows, 1024], DType::F32, Init::Zeros)
            .unwrap();
        map.push((name.clone(), Target::name(name)));
    }
    init_from_checkpoint(&mut vars, url, &AssignmentMap::from_iter(map)).unwrap();
    let before = reset_peak_rss();
    let start = Instant::now();
    let report = vars.initialize_with(Device::Cpu, &options).unwrap();
    let load = start.elapsed().as_secs_f64();
    assert_eq!(report.bytes, bytes);

    let gb = bytes as f64 / 1e9;
    println!(
        "{mib} MiB checkpoint, {count} tensors, ranges of {} MiB x {concurrency} in flight",
        range >> 20
    );
    println!("raw parallel GETs: {:.2} GB/s ({raw:.2} s)", gb / raw);
    println!(
        "tfckpt load:       {:.2} GB/s ({load:.2} s), {:.0}% of the raw rate",
        gb / load,
        100.0 * raw / load
    );
    println!(
        "peak resident memory during the load: {} MiB above the {before} MiB before it, of which \
         {} MiB are the loaded values",
        peak_rss_mib().saturating_sub(before),
        bytes >> 20
    );
}

/// Resets the peak resident set to the current one (Linux: `clear_refs` 5); returns it in MiB.
fn reset_peak_rss() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// The process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// An S3 server over `root` (each directory a bucket) on 127.0.0.1, on its own threads.
fn serve(root: std::path::PathBuf) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let mut b =
                s3s::service::S3ServiceBuilder::new(s3s_fs::FileSystem::new(&root).unwrap());
            b.set_auth(s3s::auth::SimpleAuth::from_single("bench", "bench-secret"));
            let svc = b.build();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let svc = svc.clone();
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), svc)
                    .await;
                });
            }
        });
    });
    rx.recv().unwrap()
}
