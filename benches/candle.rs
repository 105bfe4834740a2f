//! Time to a ready candle model: tfckpt from a TensorFlow checkpoint (every byte CRC-checked,
//! dense kernels transposed into candle's layout) against candle's own
//! `VarBuilder::from_mmaped_safetensors` on the same tensors written as safetensors in candle's
//! layout (which checks nothing). Same BERT model; each load in a fresh process (as a trainer
//! starts), files written and synced first, warm in the page cache; the two paths alternated
//! after one warm-up each; medians.
//!
//! ```sh
//! cargo bench --features candle --bench candle                  # BERT-base, 5 rounds
//! cargo bench --features candle --bench candle -- --large --rounds 3   # BERT-large
//! cargo bench --features candle-cuda --bench candle -- --cuda   # the models on GPU 0
//! cargo bench --features candle --bench candle -- --pause 5     # 5 s idle before each load
//! cargo bench --features candle --bench candle -- --before OLD   # and OLD's tfckpt, alternated
//! cargo bench --features candle --bench candle -- --bf16          # stored as bfloat16
//! ```
//!
//! `--pause S` leaves the machine idle for S seconds before each timed load, as before a trainer's
//! start: on a VM that hands freed memory back to its host, memory freed by the previous load is
//! gone by then (see the README's Fresh memory), while back to back it is still there.
//!
//! With `--cuda` both models are built on GPU 0 (the device made before the timer starts, as a
//! trainer has it, and synchronized before it stops): candle copies each mapped tensor from
//! pageable memory; tfckpt goes through its GPU path, twice: with its pinned staging ring (the
//! default, which a fresh process must pin first) and with registered mappings (the page cache
//! page-locked in place, `LoadOptions::register_mappings`); the transposes by a kernel on the
//! device.
//!
//! `--bf16` stores both files in bfloat16 and builds the float32 model from them: candle converts
//! as its `VarBuilder` hands out each tensor, tfckpt under `DtypePolicy::CastToVariable` (the
//! cast inside its checked copy, transposed kernels included). With `--before`, OLD must know
//! `--bf16` too (an older build reads the bfloat16 checkpoint exactly and fails on its dtype).
//!
//! `--before OLD` times the tfckpt load of OLD too (this benchmark's binary as an earlier tree built
//! it), in the same rounds, on the same files: a change measured before and after on one machine
//! in one run, as `scripts/gpu-check.sh` does on a lent GPU.

#[path = "../examples/candle_bert.rs"]
mod bert;

use std::collections::HashMap;
use std::time::Instant;

use bert::{tf_variables, value, Bert, Config};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tfckpt::candle::{CandleInit, Convention, DeferredInit, DtypePolicy};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The TensorFlow checkpoint, and the same values in candle's names and layout as safetensors
/// (with `bf16`, both in bfloat16).
fn write_files(
    cfg: &Config,
    prefix: &std::path::Path,
    st: &std::path::Path,
    bf16: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    if bf16 {
        let mut w = tfckpt::CheckpointWriter::create(prefix, Default::default())?;
        for (k, (name, shape)) in tf_variables(cfg, true).iter().enumerate() {
            let data: Vec<u8> = value(k, name, shape)
                .into_iter()
                .flat_map(|x| half::bf16::from_f32(x).to_le_bytes())
                .collect();
            w.add(
                name,
                tfckpt::TensorRef::Bytes {
                    dtype: tfckpt::DType::BF16,
                    shape,
                    data: &data,
                },
            )?;
        }
        w.finish()?;
    } else {
        bert::write_checkpoint(prefix, cfg, true)?;
    }
    // The same values in candle's names and layout, as safetensors.
    let varmap = VarMap::new();
    Bert::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let init = CandleInit::from_varmap(&varmap, &Convention::tf1())?;
    let tf: HashMap<String, (usize, Vec<u64>)> = tf_variables(cfg, true)
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| (name, (k, shape)))
        .collect();
    let mut tensors = HashMap::new();
    for name in varmap.data().lock().unwrap().keys() {
        let tf_name = init.tf_name(name).ok_or("unnamed")?;
        let (k, shape) = &tf[tf_name];
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let t = Tensor::from_vec(value(*k, tf_name, shape), dims, &Device::Cpu)?;
        let t = if tf_name.ends_with("/kernel") {
            t.t()?.contiguous()?
        } else {
            t
        };
        let t = if bf16 { t.to_dtype(DType::BF16)? } else { t };
        tensors.insert(name.clone(), t);
    }
    candle_core::safetensors::save(&tensors, st)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cuda = std::env::args().any(|a| a == "--cuda");
    let large = std::env::args().any(|a| a == "--large");
    let bf16 = std::env::args().any(|a| a == "--bf16");
    let size = if large { Config::LARGE } else { Config::BASE };
    let cfg = Config {
        layers: arg("--layers", size.layers),
        ..size
    };
    let rounds = arg("--rounds", 5);
    let pause = std::time::Duration::from_secs(arg("--pause", 0) as u64);
    // A child process reads the files its parent wrote.
    let child_dir = std::env::args().skip_while(|a| a != "--dir").nth(1);
    let dir = match child_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir()?),
    };
    let base = match (&dir, child_dir) {
        (Some(d), _) => d.path().to_path_buf(),
        (None, d) => std::path::PathBuf::from(d.unwrap_or_default()),
    };
    let prefix = base.join("bert.ckpt");
    let st = base.join("bert.safetensors");
    if !prefix.with_extension("ckpt.index").exists() {
        write_files(&cfg, &prefix, &st, bf16)?;
        // On disk before anything is timed: write-back would compete with the loads.
        for f in std::fs::read_dir(&base)? {
            std::fs::File::open(f?.path())?.sync_all()?;
        }
    }
    let bytes: u64 = tf_variables(&cfg, true)
        .iter()
        .map(|(_, s)| s.iter().product::<u64>() * 4)
        .sum();

    let device = || -> Result<Device, Box<dyn std::error::Error>> {
        Ok(if cuda {
            Device::new_cuda(0)?
        } else {
            Device::Cpu
        })
    };
    let candle = || -> Result<f64, Box<dyn std::error::Error>> {
        let dev = device()?;
        let start = Instant::now();
        // SAFETY: the file is this benchmark's own and is not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&st], DType::F32, &dev)? };
        let model = Bert::new(&cfg, vb)?;
        dev.synchronize()?;
        let s = start.elapsed().as_secs_f64();
        drop(model);
        Ok(s)
    };
    // `register`: the GPU path page-locks the file mapping in place and DMAs from it instead of
    // pinning its staging ring, which a fresh process pays for (LoadOptions::register_mappings).
    let tfckpt = |register: bool| -> Result<f64, Box<dyn std::error::Error>> {
        let dev = device()?;
        let start = Instant::now();
        // The time to each step, for the parent to show beside the total.
        let mut steps = Vec::new();
        let mut step = |what: &'static str| steps.push((what, start.elapsed().as_secs_f64()));
        let varmap = VarMap::new();
        let deferred = DeferredInit::new(&varmap);
        let model = Bert::new(&cfg, deferred.var_builder(DType::F32, &dev))?;
        step("model built");
        let policy = if bf16 {
            DtypePolicy::CastToVariable
        } else {
            DtypePolicy::Exact
        };
        let mut init =
            CandleInit::from_deferred(&deferred, &Convention::tf1())?.dtype_policy(policy);
        let found = init.map_existing(&prefix)?;
        step("mapped");
        init.init_from_checkpoint(&prefix, &found.map)?;
        step("init_from_checkpoint");
        let options = tfckpt::LoadOptions {
            register_mappings: register,
            ..Default::default()
        };
        let report = init.initialize(&options)?;
        step("initialize");
        dev.synchronize()?;
        let s = start.elapsed().as_secs_f64();
        drop(model);
        // Where tfckpt's time went (its phases; on a GPU, the context, pinning and kernels of a
        // fresh process are in them), for the parent to show.
        let steps: Vec<String> = steps
            .iter()
            .map(|(what, t)| format!("{what} at {t:.3} s"))
            .collect();
        eprintln!("{}; {report}", steps.join(", "));
        Ok(s)
    };
    // Each measurement in a fresh process, as a trainer starts: no allocator or page-table state
    // carried over from the previous load (within one process, freed buffers come back from the
    // heap and `calloc` must then clear them).
    if let Some(which) = std::env::args().skip_while(|a| a != "--child").nth(1) {
        let s = match which.as_str() {
            "candle" => candle()?,
            "tfckpt" => tfckpt(false)?,
            "tfckpt-register" => tfckpt(true)?,
            other => return Err(format!("unknown contender {other}").into()),
        };
        println!("{s}");
        return Ok(());
    }
    println!(
        "BERT, {} layers of width {}, {:.0} MB of float32{}, {} threads, on {}; seconds to a ready model, warm page cache, {} s idle before each load",
        cfg.layers,
        cfg.hidden,
        bytes as f64 / 1e6,
        if bf16 { " (stored as bfloat16)" } else { "" },
        rayon::current_num_threads(),
        if cuda { "GPU 0" } else { "the host" },
        pause.as_secs()
    );
    let exe = std::env::current_exe()?;
    // An earlier build of this benchmark, whose tfckpt load is timed beside this one's.
    let before = std::env::args()
        .skip_while(|a| a != "--before")
        .nth(1)
        .map(std::path::PathBuf::from);
    let last_report = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let child = |which: &str| -> Result<f64, Box<dyn std::error::Error>> {
        let (program, role) = match which.strip_prefix("before:") {
            Some(role) => (before.clone().ok_or("no --before binary")?, role),
            None => (exe.clone(), which),
        };
        let out = std::process::Command::new(&program)
            .args([
                "--dir",
                &base.display().to_string(),
                "--layers",
                &cfg.layers.to_string(),
                "--child",
                role,
            ])
            .args(cuda.then_some("--cuda"))
            .args(large.then_some("--large"))
            .args(bf16.then_some("--bf16"))
            .output()?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
        }
        if role.starts_with("tfckpt") {
            last_report.borrow_mut().insert(
                which.to_string(),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    // On a GPU also tfckpt with registered mappings, whose fresh process pins no staging ring;
    // with `--before`, the earlier build's tfckpt load (the default path) last.
    let mut contenders: Vec<&str> = if cuda {
        vec!["candle", "tfckpt", "tfckpt-register"]
    } else {
        vec!["candle", "tfckpt"]
    };
    if before.is_some() {
        contenders.push("before:tfckpt");
    }
    let mut times: Vec<Vec<f64>> = contenders.iter().map(|_| Vec::new()).collect();
    // One warm-up each (on a GPU it also leaves the kernels tfckpt compiles in its kernel cache,
    // as a trainer's earlier runs would: the timed rounds read them from there).
    for w in &contenders {
        child(w)?;
    }
    for _ in 0..rounds {
        for (w, v) in contenders.iter().zip(times.iter_mut()) {
            std::thread::sleep(pause);
            v.push(child(w)?);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = times.iter_mut().map(median).collect();
    let (c, t) = (medians[0], medians[1]);
    println!(
        "candle from_mmaped_safetensors (no checks): {c:.3} s ({:.2} GB/s)",
        bytes as f64 / c / 1e9
    );
    println!(
        "tfckpt, CRC-checked, kernels transposed:    {t:.3} s ({:.2} GB/s)",
        bytes as f64 / t / 1e9
    );
    println!(
        "tfckpt / candle: {:.2}x the time ({:.1}x as fast)",
        t / c,
        c / t
    );
    if let Some(i) = contenders.iter().position(|&w| w == "before:tfckpt") {
        let b = medians[i];
        println!(
            "tfckpt as built before (--before): {b:.3} s ({:.2} GB/s, {:.1}x as fast as candle); this build {:.2}x its time",
            bytes as f64 / b / 1e9,
            c / b,
            t / b
        );
    }
    if let (true, Some(&r)) = (cuda, medians.get(2)) {
        println!(
            "tfckpt, registered mappings (no staging ring): {r:.3} s ({:.2} GB/s, {:.1}x as fast as candle)",
            bytes as f64 / r / 1e9,
            c / r
        );
    }
    for (which, report) in last_report.borrow().iter() {
        println!("last {which} load: {report}");
    }
    Ok(())
}
