//! The GPU benchmark of `scripts/gpu-check.sh` (needs `--features cuda` and a GPU).
//!
//! Writes an ~8 GB checkpoint with the crate's writer (a few hundred float32 tensors of 32 MiB and
//! a thousand [64] ones), measures the pinned host-to-device bandwidth in the same run (the
//! ceiling), then loads the checkpoint into GPU memory with `init_from_checkpoint` + `initialize`:
//! page cache warm (the staging ring, which is the default, and registered DMA,
//! `LoadOptions::register_mappings`, which leaves the ring only the rest), and cold when the page cache can be
//! dropped (against a plain sequential read of the same files). Prints a table: GB/s, percent of
//! the ceiling, what each path carried, host memory peak.
//!
//! `gpu_bench [--gb 8] [--dir /tmp/tfckpt-gpu-bench] [--runs 3] [--no-cold]`

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

fn anon_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One load into GPU memory; returns the report and the peak anonymous memory above the start.
fn load(dir: &Path, big: usize, options: &LoadOptions) -> (LoadReport, u64) {
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
    let base = anon_kib();
    let (stop, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(anon_kib(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let report = store.initialize_with(Device::Cuda(0), options).unwrap();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed).saturating_sub(base) * 1024;
    (report, peak)
}

/// Pinned host-to-device bandwidth, 1 GiB per copy, best of 5 (the link's ceiling).
fn ceiling() -> f64 {
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let n = 1 << 30;
    // SAFETY: written below before any copy reads it.
    let mut host = unsafe { ctx.alloc_pinned_with_flags::<u8>(n, 0) }.unwrap();
    host.as_mut_slice().unwrap().fill(1);
    let mut dev = stream.alloc_zeros::<u8>(n).unwrap();
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        stream.memcpy_htod(&host, &mut dev).unwrap();
        stream.synchronize().unwrap();
        best = best.max(n as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if Device::gpu_count() == 0 {
        eprintln!("gpu_bench: no usable GPU (needs an NVIDIA driver and the cuda feature)");
        std::process::exit(2);
    }
    let gb: f64 = arg("--gb", "8").parse().unwrap();
    let runs: usize = arg("--runs", "3").parse().unwrap();
    let dir = PathBuf::from(arg("--dir", "/tmp/tfckpt-gpu-bench"));
    let big = big_count(gb);
    let bytes = write(&dir, big);
    let ceiling = ceiling();
    let gbps = |r: &LoadReport| bytes as f64 / r.seconds / 1e9;
    let mut rows: Vec<(String, f64, String, String)> = Vec::new();
    // Warm: the files are in the page cache (read once), the link (staging, kernels) is set up by
    // a first load that is reported separately.
    sequential_read(&dir);
    let (first, _) = load(&dir, big, &LoadOptions::default());
    let mut warm = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let (r, peak) = load(&dir, big, &LoadOptions::default());
        warm.push(gbps(&r));
        last = Some((r, peak));
    }
    let (r, peak) = last.unwrap();
    let d = r.device.clone().unwrap();
    rows.push((
        format!("warm, staging ring (the default; median of {runs})"),
        median(warm.clone()),
        format!("staged {:.2} GB", d.staged_bytes as f64 / 1e9),
        format!(
            "{} MiB anon peak, {} MiB pinned",
            peak >> 20,
            d.staging_bytes >> 20
        ),
    ));
    rows.push((
        "warm, first load (context, pinning, kernels)".into(),
        gbps(&first),
        String::new(),
        String::new(),
    ));
    // The opt-in registered path, running beside the ring.
    let both = LoadOptions {
        register_mappings: true,
        ..Default::default()
    };
    let mut mixed = Vec::new();
    let mut last_mixed = None;
    for _ in 0..runs {
        let (m, m_peak) = load(&dir, big, &both);
        mixed.push(gbps(&m));
        last_mixed = Some((m, m_peak));
    }
    let (m, m_peak) = last_mixed.unwrap();
    let md = m.device.clone().unwrap();
    rows.push((
        format!("warm, registered DMA (register_mappings; median of {runs})"),
        median(mixed),
        format!(
            "registered {:.2} GB + staged {:.2} GB",
            md.registered_bytes as f64 / 1e9,
            md.staged_bytes as f64 / 1e9
        ),
        format!("{} MiB anon peak", m_peak >> 20),
    ));
    // Checksums alone on the CPU (every core), for the cost of verification.
    let t = Instant::now();
    let v = Checkpoint::open(dir.join("model")).unwrap().verify_all();
    assert!(v.problems.is_empty());
    let crc_s = t.elapsed().as_secs_f64();
    let warm_s = bytes as f64 / median(warm) / 1e9;
    rows.push((
        "CRC32C of every byte alone (CPU, all cores)".into(),
        bytes as f64 / crc_s / 1e9,
        format!(
            "{:.0}% of the warm load time, overlapped with the DMA",
            100.0 * crc_s / warm_s
        ),
        String::new(),
    ));
    // Cold.
    let mut cold_note = String::from("page cache cannot be dropped here: cold not measured");
    if !std::env::args().any(|a| a == "--no-cold") && drop_caches() {
        let seq = sequential_read(&dir);
        drop_caches();
        let (c, _) = load(&dir, big, &LoadOptions::default());
        let cg = gbps(&c);
        rows.push((
            "cold, plain sequential read of the files".into(),
            seq,
            String::new(),
            String::new(),
        ));
        rows.push((
            "cold, load to GPU".into(),
            cg,
            format!("{:.0}% of the sequential read", 100.0 * cg / seq),
            String::new(),
        ));
        cold_note.clear();
    }
    println!();
    println!(
        "tfckpt GPU load, {:.2} GB ({big} x 32 MiB + {SMALL} x 256 B float32, 4 shards), {}",
        bytes as f64 / 1e9,
        d.device
    );
    println!("pinned H2D ceiling (1 GiB copies, best of 5): {ceiling:.1} GB/s");
    println!("| what | GB/s | % of ceiling | notes | host memory |");
    println!("|---|---|---|---|---|");
    for (what, g, note, mem) in &rows {
        println!(
            "| {what} | {g:.1} | {:.0}% | {note} | {mem} |",
            100.0 * g / ceiling
        );
    }
    if !cold_note.is_empty() {
        println!("{cold_note}");
    }
    println!("last warm report: {r}");
}
