//! Remote load throughput against its ceiling, in one run: a checkpoint written by the crate
//! (`MIB` MiB of float32 tensors of `TENSOR_MIB` MiB; defaults 2048 and 64), served from a temporary directory by a
//! real S3 server (`s3s-fs`) on 127.0.0.1, then
//!
//! 1. the raw ceilings: the data file fetched by `object_store` as parallel ranged GETs of the same
//!    size and concurrency as the load's, each body either gathered by `get_range` or streamed
//!    chunk by chunk, and dropped (each measured twice, alternately; the faster run counts);
//! 2. `init_from_checkpoint` + `initialize(Device::Cpu)` from `s3://`, every byte checksummed and
//!    copied into host values;
//!
//! and prints the rates, the CPU seconds of each (server and client share the process and the
//! machine's cores), and the peak resident memory the load added (the values themselves, plus
//! the ranges in flight and the server's buffers).
//!
//! ```sh
//! cargo run --release --example remote_bench -- [MIB [TENSOR_MIB]]
//! ```
//!
//! Fresh values take the pages the library chooses for this machine; `TFCKPT_HUGE_PAGES=always`
//! or `never` measures the others (README: Fresh memory).

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
    let tensor_mib: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64)
        .clamp(1, mib);
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
    // Each ceiling is measured twice, alternately; the faster run of each counts.
    let (mut raw, mut raw_cpu) = (f64::MAX, 0.0);
    let (mut drop_, mut drop_cpu) = (f64::MAX, 0.0);
    for _ in 0..2 {
        let (got, t, c) =
            timed(|| rt.block_on(raw_gets(&store, &path, (size, range, concurrency), true)));
        assert_eq!(got, size);
        if t < raw {
            (raw, raw_cpu) = (t, c);
        }
        let (got, t, c) =
            timed(|| rt.block_on(raw_gets(&store, &path, (size, range, concurrency), false)));
        assert_eq!(got, size);
        if t < drop_ {
            (drop_, drop_cpu) = (t, c);
        }
    }
    drop(rt);

    // 2. The load.
    let url = "s3://bench/model.ckpt";
    let names: Vec<String> = (0..count).map(|i| format!("layer_{i:04}/kernel")).collect();
    let model = || {
        let mut vars = VariableStore::new();
        for name in &names {
            vars.get_variable(name, &[rows, 1024], DType::F32, Init::Zeros)
                .unwrap();
        }
        let map = names.iter().map(|n| (n.clone(), Target::name(n.clone())));
        init_from_checkpoint(&mut vars, url, &AssignmentMap::from_iter(map)).unwrap();
        vars
    };
    let mut vars = model();
    let before = reset_peak_rss();
    let (report, load, load_cpu) = timed(|| vars.initialize_with(Device::Cpu, &options).unwrap());
    assert_eq!(report.bytes, bytes);
    let peak = peak_rss_mib().saturating_sub(before);

    // 3. The same load into tensors the trainer already holds (`initialize_into`), as a model's
    //    parameters are after its own initialization: their pages are resident, so the kernel
    //    zeroes no fresh memory during the load.
    let first = vars
        .value("layer_0000/kernel")
        .unwrap()
        .bytes()
        .unwrap()
        .to_vec();
    drop(vars);
    let mut vars = model();
    let mut held: Vec<Vec<u8>> = (0..count)
        .map(|_| vec![1u8; (bytes / count) as usize])
        .collect();
    let (report, into, into_cpu) = timed(|| {
        let buffers = names
            .iter()
            .map(String::as_str)
            .zip(held.iter_mut().map(Vec::as_mut_slice))
            .collect();
        vars.initialize_into(buffers, &options).unwrap()
    });
    assert_eq!(report.bytes, bytes);
    assert_eq!(held[0], first);

    let gb = bytes as f64 / 1e9;
    println!(
        "{mib} MiB checkpoint, {count} tensors, ranges of {} MiB x {concurrency} in flight",
        range >> 20
    );
    // CPU seconds of the whole process (server and client share it): with both cores busy, the
    // wall time follows the CPU time.
    println!(
        "raw ranged GETs (object_store get_range, body gathered): {:.2} GB/s ({raw:.2} s, \
         {raw_cpu:.2} CPU s)",
        gb / raw
    );
    println!(
        "raw ranged GETs (body streamed, chunks dropped):         {:.2} GB/s ({drop_:.2} s, \
         {drop_cpu:.2} CPU s)",
        gb / drop_
    );
    println!(
        "tfckpt load (checksummed, copied into the values):       {:.2} GB/s ({load:.2} s, \
         {load_cpu:.2} CPU s): {:.0}% of the faster raw rate",
        gb / load,
        100.0 * raw.min(drop_) / load
    );
    println!(
        "tfckpt load into the trainer's resident tensors:         {:.2} GB/s ({into:.2} s, \
         {into_cpu:.2} CPU s): {:.0}% of the faster raw rate",
        gb / into,
        100.0 * raw.min(drop_) / into
    );
    println!(
        "peak resident memory during the load: {} MiB above the {before} MiB before it, of which \
         {} MiB are the loaded values",
        peak,
        bytes >> 20
    );
}

/// `f`'s result, wall seconds and CPU seconds (the whole process's).
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0)
}

/// Fetches `[0, size)` of `path` as ranged GETs of `range` bytes, `concurrency` at once, and drops
/// the bytes: each body gathered into one buffer (`object_store`'s `get_range`) when `gather`,
/// else streamed and its chunks dropped as they arrive (no buffer at all: the strictest ceiling).
/// Returns the bytes received.
async fn raw_gets(
    store: &Arc<dyn ObjectStore>,
    path: &object_store::path::Path,
    (size, range, concurrency): (u64, u64, usize),
    gather: bool,
) -> u64 {
    futures_util::stream::iter((0..size).step_by(range as usize).map(|a| async move {
        let r = a..(a + range).min(size);
        if gather {
            return store.get_range(path, r).await.unwrap().len() as u64;
        }
        let opts = object_store::GetOptions {
            range: Some(r.into()),
            ..Default::default()
        };
        let mut body = store.get_opts(path, opts).await.unwrap().into_stream();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            n += chunk.unwrap().len() as u64;
        }
        n
    }))
    .buffer_unordered(concurrency)
    .fold(0u64, |acc, n| async move { acc + n })
    .await
}

/// User + system CPU seconds of this process so far (every thread, the server's included).
#[cfg(unix)]
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Not measured off Unix (printed as 0).
#[cfg(not(unix))]
fn cpu_seconds() -> f64 {
    0.0
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
