//! The GPU benchmark of `scripts/gpu-check.sh` (needs `--features cuda` and a GPU).
//!
//! Writes an ~8 GB checkpoint with the crate's writer (a few hundred float32 tensors of 32 MiB and
//! a thousand [64] ones), measures the pinned host-to-device bandwidth in the same run (the
//! ceiling), then loads the checkpoint into GPU memory with `init_from_checkpoint` + `initialize`:
//! page cache warm (the staging ring, which is the default, and registered DMA,
//! `LoadOptions::register_mappings`, which leaves the ring only the rest), and cold when the page cache can be
//! dropped (against a plain sequential read of the same files). Prints a table: GB/s, percent of
//! the ceiling, what each path carried, host memory peak (anonymous, and the shard pages mapped).
//!
//! `gpu_bench [--gb 8] [--dir /tmp/tfckpt-gpu-bench] [--runs 3] [--no-cold]`, or
//! `gpu_bench --preflight`: the driver's and NVRTC's versions, why no GPU is usable if none is, and
//! one small load through a kernel against the host's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tfckpt::{
    init_from_checkpoint, AssignmentMap, Checkpoint, CheckpointWriter, DType, Device, Init,
    LoadOptions, LoadReport, Target, TensorRef, VariableStore,
};

const BIG: [u64; 2] = [2048, 4096]; // 32 MiB of float32
const SMALL: usize = 1000;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn big_count(gb: f64) -> usize {
    ((gb * 1e9) / (BIG[0] * BIG[1] * 4) as f64).round().max(1.0) as usize
}

/// Writes the checkpoint unless an identical one is there; returns its data bytes.
fn write(dir: &Path, big: usize) -> u64 {
    let prefix = dir.join("model");
    let stamp = dir.join(format!("done-{big}"));
    let bytes = (big as u64) * BIG[0] * BIG[1] * 4 + (SMALL as u64) * 64 * 4;
    if stamp.exists() {
        return bytes;
    }
    std::fs::create_dir_all(dir).unwrap();
    let t = Instant::now();
    let options = tfckpt::WriterOptions {
        num_shards: 4,
        ..Default::default()
    };
    let mut w = CheckpointWriter::create(&prefix, options).unwrap();
    let mut data: Vec<u8> = (0..BIG[0] * BIG[1] * 4)
        .map(|i| ((i * 2_654_435_761) >> 13) as u8)
        .collect();
    for i in 0..big {
        data[..8].copy_from_slice(&(i as u64).to_le_bytes()); // distinct tensors
        w.add(
            &format!("model/w_{i:04}"),
            TensorRef::Bytes {
                dtype: DType::F32,
                shape: &BIG,
                data: &data,
            },
        )
        .unwrap();
    }
    let small: Vec<u8> = (0..256).map(|i| i as u8).collect();
    for i in 0..SMALL {
        w.add(
            &format!("model/s_{i:04}"),
            TensorRef::Bytes {
                dtype: DType::F32,
                shape: &[64],
                data: &small,
            },
        )
        .unwrap();
    }
    w.finish().unwrap();
    std::fs::write(&stamp, b"").unwrap();
    eprintln!(
        "wrote {:.2} GB in {:.1} s",
        bytes as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
    bytes
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("model."))
        .collect();
    v.sort();
    v
}

/// Reads every file once, sequentially, in 64 MiB requests; returns GB/s.
fn sequential_read(dir: &Path) -> f64 {
    use std::io::Read;
    let mut buf = vec![0u8; 64 << 20];
    let (t, mut n) = (Instant::now(), 0u64);
    for f in files(dir) {
        let mut f = std::fs::File::open(f).unwrap();
        loop {
            let k = f.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            n += k as u64;
        }
    }
    n as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// A line of `/proc/self/status` in KiB (`RssAnon:`, `RssFile:`), 0 where there is none.
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn anon_kib() -> u64 {
    status_kib("RssAnon:")
}

/// What a load kept of the host's memory, in bytes above the start: the peak of anonymous
/// memory, and the file pages mapped (the checkpoint's shard pages) at their peak and at the end
/// (the ring gives them back as it goes on a load of one GPU without registration).
#[derive(Clone, Copy, Default)]
struct HostMemory {
    anon_peak: u64,
    file_peak: u64,
    file_end: u64,
}

impl std::fmt::Display for HostMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} MiB anon peak, file pages {} MiB peak / {} MiB at the end",
            self.anon_peak >> 20,
            self.file_peak >> 20,
            self.file_end >> 20
        )
    }
}

/// One load into GPU memory; returns the report and what it kept of host memory.
fn load(dir: &Path, big: usize, options: &LoadOptions) -> tfckpt::Result<(LoadReport, HostMemory)> {
    let mut store = VariableStore::new();
    for i in 0..big {
        store
            .get_variable(&format!("new/w_{i:04}"), &BIG, DType::F32, Init::Zeros)
            .unwrap();
    }
    for i in 0..SMALL {
        store
            .get_variable(&format!("new/s_{i:04}"), &[64], DType::F32, Init::Zeros)
            .unwrap();
    }
    init_from_checkpoint(
        &mut store,
        dir.join("model"),
        &AssignmentMap::from([("model/", Target::scope("new/"))]),
    )
    .unwrap();
    let (base, file_base) = (anon_kib(), status_kib("RssFile:"));
    let (stop, peak, file_peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = {
        let (stop, peak, file_peak) = (stop.clone(), peak.clone(), file_peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(anon_kib(), Ordering::Relaxed);
                file_peak.fetch_max(status_kib("RssFile:"), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let report = store.initialize_with(Device::Cuda(0), options);
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    // The store (and its checkpoint's mappings) is still alive here.
    let memory = HostMemory {
        anon_peak: peak.load(Ordering::Relaxed).saturating_sub(base) * 1024,
        file_peak: file_peak.load(Ordering::Relaxed).saturating_sub(file_base) * 1024,
        file_end: status_kib("RssFile:").saturating_sub(file_base) * 1024,
    };
    Ok((report?, memory))
}

/// Pinned host-to-device bandwidth, 1 GiB per copy, best of 5 (the link's ceiling).
fn ceiling() -> Result<f64, cudarc::driver::DriverError> {
    let ctx = cudarc::driver::CudaContext::new(0)?;
    let stream = ctx.new_stream()?;
    let n = 1 << 30;
    // SAFETY: written below before any copy reads it.
    let mut host = unsafe { ctx.alloc_pinned_with_flags::<u8>(n, 0) }?;
    host.as_mut_slice()?.fill(1);
    let mut dev = stream.alloc_zeros::<u8>(n)?;
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        stream.memcpy_htod(&host, &mut dev)?;
        stream.synchronize()?;
        best = best.max(n as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    Ok(best)
}

/// The table, printed row by row as each is measured (a later failure or the time limit loses
/// none of them); a failed measurement is a row saying so, and the run goes on.
struct Table {
    ceiling: f64,
    failed: usize,
}

impl Table {
    fn row(&self, what: &str, gbps: f64, note: &str, mem: &str) {
        use std::io::Write;
        let share = if self.ceiling > 0.0 {
            format!("{:.0}%", 100.0 * gbps / self.ceiling)
        } else {
            "?".into()
        };
        println!("| {what} | {gbps:.1} | {share} | {note} | {mem} |");
        let _ = std::io::stdout().flush();
    }

    fn failed(&mut self, what: &str, e: impl std::fmt::Display) {
        use std::io::Write;
        self.failed += 1;
        let e = e.to_string().replace('\n', " ");
        println!("| {what} | FAILED | | {e} | |");
        let _ = std::io::stdout().flush();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What the first minute on a new GPU machine should tell: the driver's and NVRTC's versions
/// (an NVRTC newer than the driver makes PTX the driver refuses), why no GPU is usable if none is,
/// and one small load whose cast runs a kernel compiled here, checked against the host's cast.
/// Returns whether all of it worked.
fn preflight() -> bool {
    use std::panic::catch_unwind;
    // cudarc's panic for a library it cannot load: its first line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        println!(
            "preflight: panic: {}{at}",
            text.split(" - ").next().unwrap_or(text)
        );
    }));
    let mut ok = true;
    // cudarc loads the libraries at first use and panics where one is missing.
    let driver = catch_unwind(|| {
        let mut v = 0;
        // SAFETY: writes one int.
        let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        (r, v)
    });
    match driver {
        Ok((r, v)) => println!(
            "preflight: CUDA driver API {}.{} ({r:?})",
            v / 1000,
            v % 1000 / 10
        ),
        Err(_) => {
            ok = false;
            println!("preflight: FAILED: the CUDA driver library (libcuda.so) cannot be loaded")
        }
    }
    let nvrtc = catch_unwind(|| {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: writes two ints.
        let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        (r, major, minor)
    });
    match nvrtc {
        Ok((r, major, minor)) => println!("preflight: NVRTC {major}.{minor} ({r:?})"),
        Err(_) => {
            ok = false;
            println!("preflight: FAILED: NVRTC (libnvrtc.so) cannot be loaded: no kernel can run")
        }
    }
    match catch_unwind(cudarc::driver::CudaContext::device_count) {
        Ok(Ok(n)) => println!("preflight: {n} GPU(s); tfckpt sees {}", Device::gpu_count()),
        Ok(Err(e)) => {
            ok = false;
            println!("preflight: FAILED: no GPU usable: {e:?}")
        }
        Err(_) => {
            ok = false;
            println!("preflight: FAILED: no GPU usable: the driver library cannot be loaded")
        }
    }
    if Device::gpu_count() == 0 {
        println!("preflight: no GPU usable: nothing more checked");
        return false;
    }
    // A [3, 5] and a [5] float32 tensor loaded as bfloat16 (on the GPU by the cast kernel),
    // against the host's cast: whether the kernels compile, load and run.
    let check = || -> tfckpt::Result<(bool, u64)> {
        let dir = tempfile_dir();
        let prefix = dir.join("model");
        let values: Vec<f32> = (0..15).map(|i| i as f32 * 0.37 - 2.0).collect();
        let mut w = CheckpointWriter::create(&prefix, Default::default())?;
        let a = tfckpt::Tensor::from_f32(&[3, 5], &values).expect("15 values");
        let b = tfckpt::Tensor::from_f32(&[5], &values[..5]).expect("5 values");
        w.add("a", (&a).into())?;
        w.add("b", (&b).into())?;
        w.finish()?;
        let loaded = |device: Device| -> tfckpt::Result<(Vec<Vec<u8>>, u64)> {
            let mut store = VariableStore::new();
            store.get_variable("a", &[3, 5], DType::F32, Init::Zeros)?;
            store.get_variable("b", &[5], DType::F32, Init::Zeros)?;
            let map = AssignmentMap::from([("/", Target::scope("/"))]);
            init_from_checkpoint(&mut store, &prefix, &map)?;
            let options = LoadOptions::new().cast(DType::F32, DType::BF16);
            let report = store.initialize_with(device, &options)?;
            let kernels = report.device.map_or(0, |d| d.kernels as u64);
            let values = ["a", "b"]
                .iter()
                .map(|n| match store.device_value(n) {
                    Some(t) => Ok(t.to_host()?.bytes().unwrap_or_default().to_vec()),
                    None => Ok(store
                        .value(n)
                        .and_then(|t| t.bytes())
                        .unwrap_or_default()
                        .to_vec()),
                })
                .collect::<tfckpt::Result<_>>()?;
            Ok((values, kernels))
        };
        let (gpu, kernels) = loaded(Device::Cuda(0))?;
        let same = gpu == loaded(Device::Cpu)?.0;
        let _ = std::fs::remove_dir_all(&dir);
        Ok((same, kernels))
    };
    match catch_unwind(check) {
        Ok(Ok((true, kernels))) if kernels > 0 => println!(
            "preflight: a load through {kernels} cast kernel launch(es) on cuda:0 equals the host's"
        ),
        Ok(Ok((true, _))) => {
            ok = false;
            println!(
                "preflight: FAILED: the load on cuda:0 ran no kernel (the cast was not on the GPU)"
            )
        }
        Ok(Ok((false, _))) => {
            ok = false;
            println!(
                "preflight: FAILED: a load with a cast kernel on cuda:0 differs from the host's"
            )
        }
        Ok(Err(e)) => {
            ok = false;
            println!("preflight: FAILED: a load with a cast kernel on cuda:0: {e}")
        }
        Err(_) => {
            ok = false;
            println!("preflight: FAILED: a load with a cast kernel on cuda:0 panicked (above)")
        }
    }
    ok
}

/// A new folder under the system's temporary directory.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tfckpt-preflight-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn main() {
    if std::env::args().any(|a| a == "--preflight") {
        std::process::exit(if preflight() { 0 } else { 1 });
    }
    if Device::gpu_count() == 0 {
        eprintln!("gpu_bench: no usable GPU (needs an NVIDIA driver and the cuda feature)");
        std::process::exit(2);
    }
    let gb: f64 = arg("--gb", "8").parse().unwrap();
    let runs: usize = arg("--runs", "3").parse().unwrap();
    let dir = PathBuf::from(arg("--dir", "/tmp/tfckpt-gpu-bench"));
    let big = big_count(gb);
    let bytes = write(&dir, big);
    let mut table = Table {
        ceiling: 0.0,
        failed: 0,
    };
    println!();
    println!(
        "tfckpt GPU load onto cuda:0, {:.2} GB ({big} x 32 MiB + {SMALL} x 256 B float32, 4 shards)",
        bytes as f64 / 1e9
    );
    match ceiling() {
        Ok(c) => {
            table.ceiling = c;
            println!("pinned H2D ceiling (1 GiB copies, best of 5): {c:.1} GB/s");
        }
        Err(e) => println!("pinned H2D ceiling: FAILED: {e}"),
    }
    println!("| what | GB/s | % of ceiling | notes | host memory |");
    println!("|---|---|---|---|---|");
    let gbps = |r: &LoadReport| bytes as f64 / r.seconds / 1e9;
    // Loads `runs` times with `options`: every rate, and the last report with its memory peak.
    let measure = |options: &LoadOptions| -> tfckpt::Result<(Vec<f64>, LoadReport, HostMemory)> {
        let mut rates = Vec::new();
        let mut last = None;
        for _ in 0..runs {
            let (r, peak) = load(&dir, big, options)?;
            rates.push(gbps(&r));
            last = Some((r, peak));
        }
        let (r, peak) = last.expect("at least one run");
        Ok((rates, r, peak))
    };
    // Warm: the files are in the page cache (read once), the link (staging, kernels) is set up by
    // a first load that is reported separately.
    sequential_read(&dir);
    let first_what = "warm, first load (context, pinning, kernels)";
    // Where each kind of load spent its time on the device (pinning, transfer, ...), printed
    // after the table.
    let mut times = Vec::new();
    match load(&dir, big, &LoadOptions::default()) {
        Ok((first, _)) => {
            table.row(first_what, gbps(&first), "", "");
            times.push(("first load", first.device.unwrap_or_default().times));
        }
        Err(e) => table.failed(first_what, e),
    }
    let warm_what = format!("warm, staging ring (the default; median of {runs})");
    let mut warm_s = None;
    let mut last_report = None;
    match measure(&LoadOptions::default()) {
        Ok((rates, r, peak)) => {
            let d = r.device.clone().unwrap_or_default();
            let m = median(rates);
            warm_s = Some(bytes as f64 / m / 1e9);
            table.row(
                &warm_what,
                m,
                &format!("staged {:.2} GB", d.staged_bytes as f64 / 1e9),
                &format!("{peak}, {} MiB pinned", d.staging_bytes >> 20),
            );
            last_report = Some(r);
        }
        Err(e) => table.failed(&warm_what, e),
    }
    // The opt-in registered path, running beside the ring.
    let both = LoadOptions {
        register_mappings: true,
        ..Default::default()
    };
    let mixed_what = format!("warm, registered DMA (register_mappings; median of {runs})");
    match measure(&both) {
        Ok((rates, m, m_peak)) => {
            let md = m.device.clone().unwrap_or_default();
            times.push(("last registered load", md.times));
            table.row(
                &mixed_what,
                median(rates),
                &format!(
                    "registered {:.2} GB + staged {:.2} GB",
                    md.registered_bytes as f64 / 1e9,
                    md.staged_bytes as f64 / 1e9
                ),
                &m_peak.to_string(),
            );
        }
        Err(e) => table.failed(&mixed_what, e),
    }
    // Checksums alone on the CPU (every core), for the cost of verification.
    let crc_what = "CRC32C of every byte alone (CPU, all cores)";
    let t = Instant::now();
    match Checkpoint::open(dir.join("model")).map(|c| c.verify_all()) {
        Ok(v) if v.problems.is_empty() => {
            let crc_s = t.elapsed().as_secs_f64();
            let note = warm_s.map_or(String::new(), |w| {
                format!(
                    "{:.0}% of the warm load time, overlapped with the DMA",
                    100.0 * crc_s / w
                )
            });
            table.row(crc_what, bytes as f64 / crc_s / 1e9, &note, "");
        }
        Ok(v) => table.failed(crc_what, &v.problems[0]),
        Err(e) => table.failed(crc_what, e),
    }
    // Cold.
    if !std::env::args().any(|a| a == "--no-cold") && drop_caches() {
        let seq = sequential_read(&dir);
        table.row("cold, plain sequential read of the files", seq, "", "");
        drop_caches();
        match load(&dir, big, &LoadOptions::default()) {
            Ok((c, _)) => {
                let cg = gbps(&c);
                let note = format!("{:.0}% of the sequential read", 100.0 * cg / seq);
                table.row("cold, load to GPU", cg, &note, "");
            }
            Err(e) => table.failed("cold, load to GPU", e),
        }
    } else {
        println!("page cache cannot be dropped here: cold not measured");
    }
    if let Some(r) = last_report {
        println!("last warm report: {r}");
    }
    for (what, t) in times {
        println!("{what}: {t}");
    }
    if table.failed > 0 {
        eprintln!("gpu_bench: {} measurement(s) failed", table.failed);
        std::process::exit(1);
    }
}
