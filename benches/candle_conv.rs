//! Convolution kernels into candle: a ResNet-50's tensors (53 convolutions, their batch
//! normalizations and the classifier, 25.6 million float32, 102 MB) from a TensorFlow checkpoint
//! written by the crate, three ways, in one process, alternated after one warm-up each, page
//! cache warm, medians:
//!
//! * tfckpt under `Convention::tf1()`: every kernel `[kh, kw, in, out]` held as candle's `[out,
//!   in, kh, kw]` inside the checked copy (the permutation this measures);
//! * tfckpt with the kernels taken as stored, into `Var`s of TensorFlow's shape (the same bytes,
//!   CRC-checked, no permutation): what the permutation costs is the difference;
//! * candle's `VarBuilder::from_mmaped_safetensors` on the same values in candle's layout (which
//!   checks nothing).
//!
//! ```sh
//! cargo bench --features candle --bench candle_conv              # 7 rounds
//! cargo bench --features candle --bench candle_conv -- --rounds 3
//! ```

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use tfckpt::candle::{CandleInit, Convention, DeferredInit, TfName};

/// ResNet-50's variables, TF1 names and TensorFlow shapes: the stem, 16 bottleneck blocks
/// (1x1, 3x3, 1x1 convolutions, a 1x1 projection first in each stage), a batch normalization
/// after each convolution, and the classifier.
fn resnet50() -> Vec<(String, Vec<u64>)> {
    let mut vars = Vec::new();
    let mut conv = |scope: String, k: u64, cin: u64, cout: u64| {
        vars.push((format!("{scope}/conv/kernel"), vec![k, k, cin, cout]));
        for leaf in ["gamma", "beta", "moving_mean", "moving_variance"] {
            vars.push((format!("{scope}/bn/{leaf}"), vec![cout]));
        }
    };
    conv("resnet/stem".into(), 7, 3, 64);
    let mut cin = 64;
    for (s, (blocks, width)) in [(3, 64), (4, 128), (6, 256), (3, 512)]
        .into_iter()
        .enumerate()
    {
        for b in 0..blocks {
            let scope = format!("resnet/stage_{s}/block_{b}");
            if b == 0 {
                conv(format!("{scope}/shortcut"), 1, cin, width * 4);
            }
            conv(format!("{scope}/a"), 1, cin, width);
            conv(format!("{scope}/b"), 3, width, width);
            conv(format!("{scope}/c"), 1, width, width * 4);
            cin = width * 4;
        }
    }
    vars.push(("resnet/fc/kernel".into(), vec![2048, 1000]));
    vars.push(("resnet/fc/bias".into(), vec![1000]));
    vars
}

/// Deterministic values of variable `k`.
fn values(k: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 2_654_435_761 + k * 97) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// The candle name of a TF1 name (`resnet/stage_0/block_0/a/conv/kernel` is
/// `resnet.stage_0.block_0.a.conv.weight`) and candle's shape (a kernel `[kh, kw, in, out]` as
/// `[out, in, kh, kw]`, the dense kernel `[in, out]` as `[out, in]`).
fn candle_var(tf: &str, shape: &[u64]) -> (String, Vec<usize>) {
    let (scope, leaf) = tf.rsplit_once('/').unwrap();
    let leaf = match leaf {
        "kernel" => "weight",
        "gamma" => "weight",
        "beta" => "bias",
        "moving_mean" => "running_mean",
        "moving_variance" => "running_var",
        other => other,
    };
    let s: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let dims = match s.as_slice() {
        [kh, kw, i, o] => vec![*o, *i, *kh, *kw],
        [i, o] => vec![*o, *i],
        _ => s,
    };
    (format!("{}.{leaf}", scope.replace('/', ".")), dims)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let vars = resnet50();
    let dir = tempfile::tempdir()?;
    let prefix = dir.path().join("resnet.ckpt");
    let st = dir.path().join("resnet.safetensors");
    let mut w = tfckpt::CheckpointWriter::create(&prefix, Default::default())?;
    let mut held = HashMap::new();
    let mut bytes = 0u64;
    for (k, (name, shape)) in vars.iter().enumerate() {
        let n = shape.iter().product::<u64>() as usize;
        let v = values(k, n);
        bytes += n as u64 * 4;
        let t = tfckpt::Tensor::from_f32(shape, &v).ok_or("a bad shape")?;
        w.add(name, (&t).into())?;
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let t = Tensor::from_vec(v, dims, &Device::Cpu)?;
        let t = match shape.len() {
            4 => t.permute((3, 2, 0, 1))?.contiguous()?,
            2 => t.t()?.contiguous()?,
            _ => t,
        };
        held.insert(candle_var(name, shape).0, t);
    }
    w.finish()?;
    candle_core::safetensors::save(&held, &st)?;
    drop(held);
    for f in std::fs::read_dir(dir.path())? {
        std::fs::File::open(f?.path())?.sync_all()?;
    }

    // The model as a trainer builds it: `Var`s of candle's shapes (or, `as_stored`, of
    // TensorFlow's), under candle's names.
    let build = |vb: &VarBuilder, as_stored: bool| -> candle_core::Result<()> {
        for (name, shape) in &vars {
            let (candle, dims) = candle_var(name, shape);
            let dims = match as_stored {
                true => shape.iter().map(|&d| d as usize).collect(),
                false => dims,
            };
            vb.get_with_hints(dims, &candle, Init::Const(0.0))?;
        }
        Ok(())
    };
    let check = |varmap: &VarMap| -> Result<(), Box<dyn std::error::Error>> {
        // One kernel against the file (so that a wrong layout cannot pass as fast).
        let data = varmap.data().lock().unwrap();
        let got = data["resnet.stage_1.block_0.b.conv.weight"]
            .as_tensor()
            .clone();
        let (k, (name, shape)) = vars
            .iter()
            .enumerate()
            .find(|(_, (n, _))| n == "resnet/stage_1/block_0/b/conv/kernel")
            .ok_or("no such kernel")?;
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let n = dims.iter().product();
        let want = Tensor::from_vec(values(k, n), dims, &Device::Cpu)?;
        let want = match got.dims().len() == 4 && got.dims()[0] == shape[3] as usize {
            true => want.permute((3, 2, 0, 1))?,
            false => want,
        };
        let diff = (got - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        if diff != 0.0 {
            return Err(format!("{name}: loaded values differ").into());
        }
        Ok(())
    };
    let tfckpt = |as_stored: bool| -> Result<f64, Box<dyn std::error::Error>> {
        let start = Instant::now();
        // Built through `DeferredInit`, as the README shows: no initial values are computed for
        // `Var`s the checkpoint then fills.
        let varmap = VarMap::new();
        let deferred = DeferredInit::new(&varmap);
        build(&deferred.var_builder(DType::F32, &Device::Cpu), as_stored)?;
        let convention = match as_stored {
            false => Convention::tf1(),
            true => Convention::tf1_with(|_, _, tf1| {
                tf1.map(|t| TfName {
                    transposed: false,
                    ..t
                })
            }),
        };
        let mut init = CandleInit::from_deferred(&deferred, &convention)?;
        let found = init.map_existing(&prefix)?;
        if found.pairs.len() != vars.len() {
            return Err(format!("{found}").into());
        }
        init.init_from_checkpoint(&prefix, &found.map)?;
        init.initialize(&Default::default())?;
        let s = start.elapsed().as_secs_f64();
        check(&varmap)?;
        Ok(s)
    };
    let candle = || -> Result<f64, Box<dyn std::error::Error>> {
        let start = Instant::now();
        // SAFETY: the file is this benchmark's own and is not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&st], DType::F32, &Device::Cpu)? };
        let mut got = Vec::with_capacity(vars.len());
        for (name, shape) in &vars {
            let (candle, dims) = candle_var(name, shape);
            got.push(vb.get(dims, &candle)?);
        }
        let s = start.elapsed().as_secs_f64();
        std::hint::black_box(got);
        Ok(s)
    };
    println!(
        "ResNet-50 tensors, {} variables, {:.0} MB of float32, {} threads, page cache warm; seconds to a ready model",
        vars.len(),
        bytes as f64 / 1e6,
        rayon::current_num_threads()
    );
    let names = [
        "tfckpt, kernels held as candle's [out, in, kh, kw]",
        "tfckpt, kernels as stored (no permutation)",
        "candle from_mmaped_safetensors (no checks)",
    ];
    let run = |i: usize| match i {
        0 => tfckpt(false),
        1 => tfckpt(true),
        _ => candle(),
    };
    let mut times = vec![Vec::new(); names.len()];
    for i in 0..names.len() {
        run(i)?;
    }
    for _ in 0..rounds {
        for (i, t) in times.iter_mut().enumerate() {
            t.push(run(i)?);
        }
    }
    for (name, t) in names.iter().zip(&mut times) {
        t.sort_by(f64::total_cmp);
        let m = t[t.len() / 2];
        println!("{name}: {m:.4} s ({:.2} GB/s)", bytes as f64 / m / 1e9);
    }
    Ok(())
}
