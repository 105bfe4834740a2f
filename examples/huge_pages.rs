//! A trainer's first load into fresh memory, with and without transparent huge pages, in fresh
//! processes: writes a checkpoint of `MIB` MiB (default 2048, rounded down to whole tensors) of
//! float32 tensors of 64 MiB, then, `ROUNDS` times (default 5), runs `init_from_checkpoint` +
//! `initialize(Device::Cpu)` in a child process with `TFCKPT_HUGE_PAGES` unset (the library's own
//! choice for this machine), `always` and `never`, in turn (always in that order), each after
//! `PAUSE` seconds (default 5) in which memory freed by the previous child goes back to wherever
//! this machine sends it. Page cache warm; every byte checksummed and copied. Prints each
//! setting's median (the upper middle one for an even `ROUNDS`), fastest and slowest load, and
//! the kernel's CPU seconds (faulting in and zeroing the fresh pages is the kernel's work).
//!
//! ```sh
//! cargo run --release --example huge_pages -- [MIB [ROUNDS [PAUSE]]]
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use tfckpt::{init_from_checkpoint, AssignmentMap, DType, Device, Init, VariableStore};

// The benches' checkpoint writer.
#[path = "../benches/common/mod.rs"]
mod common;

const TENSOR_MIB: u64 = 64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let (prefix, count) = (args.get(2), args.get(3).and_then(|c| c.parse().ok()));
        let (Some(prefix), Some(count)) = (prefix, count) else {
            panic!("usage: huge_pages --child PREFIX COUNT (run by the benchmark itself)");
        };
        return child(prefix, count);
    }
    let arg = |i: usize, default: u64| match args.get(i) {
        None => default,
        Some(a) => a
            .parse()
            .unwrap_or_else(|_| panic!("not a whole number: {a}")),
    };
    let (rounds, pause) = (arg(2, 5).max(1), arg(3, 5));
    // Whole tensors of 64 MiB: at least one.
    let count = (arg(1, 2048) / TENSOR_MIB).max(1);
    let mib = count * TENSOR_MIB;
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("model.ckpt");
    let elems = ((TENSOR_MIB << 20) / 4) as usize;
    common::write_f32s(&prefix, count as usize, elems, |i| {
        format!("layer_{i:04}/kernel")
    });

    let settings = [None, Some("always"), Some("never")];
    let mut times: Vec<Vec<(f64, f64)>> = vec![Vec::new(); settings.len()];
    let me = std::env::current_exe().unwrap();
    for _ in 0..rounds {
        for (setting, times) in settings.iter().zip(&mut times) {
            std::thread::sleep(Duration::from_secs(pause));
            let mut cmd = Command::new(&me);
            cmd.args(["--child", prefix.to_str().unwrap(), &count.to_string()]);
            match setting {
                Some(s) => cmd.env("TFCKPT_HUGE_PAGES", s),
                None => cmd.env_remove("TFCKPT_HUGE_PAGES"),
            };
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8(out.stdout).unwrap();
            let mut it = line.split_whitespace().map(|v| v.parse::<f64>().unwrap());
            times.push((it.next().unwrap(), it.next().unwrap()));
        }
    }
    let gb = (count * (TENSOR_MIB << 20)) as f64 / 1e9;
    println!(
        "{mib} MiB in {count} tensors, fresh values, one load per process, {rounds} rounds, \
         {pause} s pause before each"
    );
    println!("| TFCKPT_HUGE_PAGES | median s (GB/s) | fastest-slowest s | median kernel CPU s |");
    println!("|---|---|---|---|");
    for (setting, times) in settings.iter().zip(&mut times) {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let wall: Vec<f64> = times.iter().map(|t| t.0).collect();
        let (lo, hi) = wall
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &t| (l.min(t), h.max(t)));
        let m = median(wall);
        let sys = median(times.iter().map(|t| t.1).collect());
        println!(
            "| {} | {m:.3} ({:.2}) | {lo:.3}-{hi:.3} | {sys:.2} |",
            setting.unwrap_or("unset (this machine's choice)"),
            gb / m
        );
    }
}

/// One load in this process: prints its wall seconds and the kernel CPU seconds it took.
fn child(prefix: &str, count: u64) {
    let elems = (TENSOR_MIB << 20) / 4;
    let names: Vec<String> = (0..count).map(|i| format!("layer_{i:04}/kernel")).collect();
    let mut vars = VariableStore::new();
    for name in &names {
        vars.get_variable(name, &[elems], DType::F32, Init::Zeros)
            .unwrap();
    }
    let map = AssignmentMap::from_iter([("/", "/")]);
    init_from_checkpoint(&mut vars, prefix, &map).unwrap();
    let sys0 = system_seconds();
    let start = Instant::now();
    let report = vars.initialize(Device::Cpu).unwrap();
    let wall = start.elapsed().as_secs_f64();
    assert_eq!(report.bytes, count * (TENSOR_MIB << 20));
    println!("{wall} {}", system_seconds() - sys0);
}

/// Kernel CPU seconds of this process so far (0 off Unix).
fn system_seconds() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes one `rusage` into the zeroed value it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        u.ru_stime.tv_sec as f64 + u.ru_stime.tv_usec as f64 * 1e-6
    }
    #[cfg(not(unix))]
    0.0
}
