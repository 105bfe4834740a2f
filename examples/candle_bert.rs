//! A BERT fine-tuning start in candle from a TensorFlow checkpoint: the pre-trained body loaded
//! (dense kernels transposed into candle's `Linear` layout), a fresh classification head, one
//! forward pass and one AdamW step that moves the loaded weights (they are live, trainable Vars),
//! then the fine-tuned model saved back as a TensorFlow checkpoint.
//!
//! ```sh
//! cargo run --release --features candle --example candle_bert            # BERT-base sizes
//! cargo run --release --features candle --example candle_bert -- --small
//! cargo run --release --features candle-cuda --example candle_bert -- --cuda   # on GPU 0
//! ```
//!
//! The checkpoint is written by tfckpt's own writer with Google BERT's variable names and shapes
//! (`bert/encoder/layer_0/attention/self/query/kernel` `[768, 768]`, ...), plus what a
//! pre-training checkpoint also holds (`cls/...`, `global_step`). `tests/candle.rs` runs this
//! example at small sizes.
#![allow(dead_code)]

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{
    embedding, layer_norm, linear, AdamW, Embedding, LayerNorm, Linear, Optimizer, ParamsAdamW,
    VarBuilder, VarMap,
};
use tfckpt::candle::{CandleInit, Convention, DeferredInit};
use tfckpt::{CheckpointWriter, DType as TfDType, TensorRef};

/// Model sizes.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub classes: usize,
}

impl Config {
    pub const BASE: Config = Config {
        vocab: 30522,
        hidden: 768,
        layers: 12,
        heads: 12,
        intermediate: 3072,
        max_positions: 512,
        classes: 2,
    };
    /// BERT-large: 24 layers of width 1024 (335 M parameters).
    pub const LARGE: Config = Config {
        vocab: 30522,
        hidden: 1024,
        layers: 24,
        heads: 16,
        intermediate: 4096,
        max_positions: 512,
        classes: 2,
    };
    pub const SMALL: Config = Config {
        vocab: 120,
        hidden: 16,
        layers: 2,
        heads: 2,
        intermediate: 32,
        max_positions: 24,
        classes: 3,
    };
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// BERT with a classification head, named as candle-transformers' BERT names it when built under
/// `vb.pp("bert")`.
pub struct Bert {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    pooler: Linear,
    pub classifier: Linear,
    heads: usize,
}

impl Bert {
    pub fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Bert> {
        let (h, eps) = (cfg.hidden, 1e-12);
        let b = vb.pp("bert");
        let e = b.pp("embeddings");
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let l = b.pp(format!("encoder.layer.{i}"));
            layers.push(Layer {
                query: linear(h, h, l.pp("attention.self.query"))?,
                key: linear(h, h, l.pp("attention.self.key"))?,
                value: linear(h, h, l.pp("attention.self.value"))?,
                attention_out: linear(h, h, l.pp("attention.output.dense"))?,
                attention_norm: layer_norm(h, eps, l.pp("attention.output.LayerNorm"))?,
                intermediate: linear(h, cfg.intermediate, l.pp("intermediate.dense"))?,
                output: linear(cfg.intermediate, h, l.pp("output.dense"))?,
                output_norm: layer_norm(h, eps, l.pp("output.LayerNorm"))?,
            });
        }
        Ok(Bert {
            words: embedding(cfg.vocab, h, e.pp("word_embeddings"))?,
            positions: embedding(cfg.max_positions, h, e.pp("position_embeddings"))?,
            token_types: embedding(2, h, e.pp("token_type_embeddings"))?,
            embedding_norm: layer_norm(h, eps, e.pp("LayerNorm"))?,
            layers,
            pooler: linear(h, h, b.pp("pooler.dense"))?,
            classifier: linear(h, cfg.classes, vb.pp("classifier"))?,
            heads: cfg.heads,
        })
    }

    /// Logits `[batch, classes]` for token ids `[batch, seq]` (token type 0).
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        let positions = Tensor::arange(0u32, seq as u32, ids.device())?.unsqueeze(0)?;
        let types = ids.zeros_like()?;
        let x = self
            .words
            .forward(ids)?
            .broadcast_add(&self.positions.forward(&positions)?)?
            .add(&self.token_types.forward(&types)?)?;
        let mut x = norm(&self.embedding_norm, &x)?;
        for l in &self.layers {
            let h = x.dim(D::Minus1)?;
            let d = h / self.heads;
            let split = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((batch, seq, self.heads, d))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = split(l.query.forward(&x)?)?;
            let k = split(l.key.forward(&x)?)?;
            let v = split(l.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? / (d as f64).sqrt())?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((batch, seq, h))?;
            let a = norm(&l.attention_norm, &(l.attention_out.forward(&ctx)? + &x)?)?;
            let i = l.intermediate.forward(&a)?.gelu_erf()?;
            x = norm(&l.output_norm, &(l.output.forward(&i)? + &a)?)?;
        }
        // Contiguous: candle's CUDA matmul refuses the strided [CLS] rows (its CPU one takes
        // them), which stopped this example on an H200.
        let first = x.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?;
        let pooled = self.pooler.forward(&first)?.tanh()?;
        self.classifier.forward(&pooled)
    }
}

/// Layer normalization over the last dimension with a backward pass: candle-nn 0.11's fused
/// `LayerNorm::forward` has none (its gradients are silently `None`, and nothing before it
/// trains), so training uses candle's tensor-op version.
fn norm(ln: &LayerNorm, x: &Tensor) -> candle_core::Result<Tensor> {
    let bias = ln
        .bias()
        .ok_or_else(|| candle_core::Error::Msg("LayerNorm without beta".into()))?;
    candle_nn::ops::layer_norm_slow(x, ln.weight(), bias, 1e-12)
}

/// Deterministic pseudo-random values in [-0.05, 0.05).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

/// Every TensorFlow variable of the BERT body, as Google's BERT names and shapes them (dense
/// kernels `[in, out]`); with `head`, the classifier too.
pub fn tf_variables(cfg: &Config, head: bool) -> Vec<(String, Vec<u64>)> {
    let (h, i) = (cfg.hidden as u64, cfg.intermediate as u64);
    let mut v: Vec<(String, Vec<u64>)> = vec![
        (
            "bert/embeddings/word_embeddings".into(),
            vec![cfg.vocab as u64, h],
        ),
        (
            "bert/embeddings/position_embeddings".into(),
            vec![cfg.max_positions as u64, h],
        ),
        ("bert/embeddings/token_type_embeddings".into(), vec![2, h]),
        ("bert/embeddings/LayerNorm/gamma".into(), vec![h]),
        ("bert/embeddings/LayerNorm/beta".into(), vec![h]),
        ("bert/pooler/dense/kernel".into(), vec![h, h]),
        ("bert/pooler/dense/bias".into(), vec![h]),
    ];
    for l in 0..cfg.layers {
        let p = format!("bert/encoder/layer_{l}");
        for (name, shape) in [
            ("attention/self/query/kernel", vec![h, h]),
            ("attention/self/query/bias", vec![h]),
            ("attention/self/key/kernel", vec![h, h]),
            ("attention/self/key/bias", vec![h]),
            ("attention/self/value/kernel", vec![h, h]),
            ("attention/self/value/bias", vec![h]),
            ("attention/output/dense/kernel", vec![h, h]),
            ("attention/output/dense/bias", vec![h]),
            ("attention/output/LayerNorm/gamma", vec![h]),
            ("attention/output/LayerNorm/beta", vec![h]),
            ("intermediate/dense/kernel", vec![h, i]),
            ("intermediate/dense/bias", vec![i]),
            ("output/dense/kernel", vec![i, h]),
            ("output/dense/bias", vec![h]),
            ("output/LayerNorm/gamma", vec![h]),
            ("output/LayerNorm/beta", vec![h]),
        ] {
            v.push((format!("{p}/{name}"), shape));
        }
    }
    if head {
        v.push(("classifier/kernel".into(), vec![h, cfg.classes as u64]));
        v.push(("classifier/bias".into(), vec![cfg.classes as u64]));
    }
    v
}

/// The value of variable `k` of [`tf_variables`]: small pseudo-random numbers (LayerNorm scales
/// near 1, as trained ones are).
pub fn value(k: usize, name: &str, shape: &[u64]) -> Vec<f32> {
    let mut v = values(k as u64, shape.iter().product::<u64>() as usize);
    if name.ends_with("/gamma") {
        v.iter_mut().for_each(|x| *x += 1.0);
    }
    v
}

/// Writes a BERT pre-training checkpoint at `prefix`: the body (and, with `head`, a classifier),
/// plus `cls/predictions/output_bias` and `global_step`, which a fine-tuning model does not take.
/// Variable `k` (in `tf_variables` order) holds `value(k, ..)`.
pub fn write_checkpoint(prefix: &Path, cfg: &Config, head: bool) -> tfckpt::Result<()> {
    let mut w = CheckpointWriter::create(prefix, Default::default())?;
    for (k, (name, shape)) in tf_variables(cfg, head).iter().enumerate() {
        let data: Vec<u8> = value(k, name, shape)
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        w.add(
            name,
            TensorRef::Bytes {
                dtype: TfDType::F32,
                shape,
                data: &data,
            },
        )?;
    }
    let bias: Vec<u8> = values(999, cfg.vocab)
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    w.add(
        "cls/predictions/output_bias",
        TensorRef::Bytes {
            dtype: TfDType::F32,
            shape: &[cfg.vocab as u64],
            data: &bias,
        },
    )?;
    w.add(
        "global_step",
        TensorRef::Bytes {
            dtype: TfDType::I64,
            shape: &[],
            data: &1_000_000i64.to_le_bytes(),
        },
    )?;
    w.finish()
}

/// What a run showed.
#[derive(Debug)]
pub struct Summary {
    /// Vars loaded from the checkpoint.
    pub loaded: usize,
    /// Candle names of the Vars left with candle's initialization.
    pub not_in_checkpoint: Vec<String>,
    /// Checkpoint tensors the model does not take.
    pub not_in_model: Vec<String>,
    /// Largest |candle value - checkpoint value| over every loaded Var (0 when exact).
    pub max_error: f32,
    pub loss_before: f32,
    pub loss_after: f32,
    /// Largest change of a loaded weight made by the AdamW step.
    pub step_change: f32,
    pub load_seconds: f64,
    /// Tensors in the fine-tuned model saved back as a TensorFlow checkpoint.
    pub saved: usize,
    /// Largest |saved query kernel of layer 0 - the Var after the step, transposed|.
    pub saved_error: f32,
}

/// Writes the checkpoint in `dir`, builds the model, loads it and takes one AdamW step.
pub fn run(cfg: &Config, dir: &Path, print: bool) -> Result<Summary, Box<dyn std::error::Error>> {
    run_on(cfg, dir, print, &Device::Cpu)
}

/// [`run`] with the model on `dev` (a GPU needs tfckpt's `candle-cuda` feature).
pub fn run_on(
    cfg: &Config,
    dir: &Path,
    print: bool,
    dev: &Device,
) -> Result<Summary, Box<dyn std::error::Error>> {
    let prefix = dir.join("bert_model.ckpt");
    write_checkpoint(&prefix, cfg, false)?;
    let dev = dev.clone();

    // The fine-tuning start: the model as usual, then four lines of tfckpt.
    let start = Instant::now();
    let varmap = VarMap::new();
    let deferred = DeferredInit::new(&varmap);
    let model = Bert::new(cfg, deferred.var_builder(DType::F32, &dev))?;
    let mut init = CandleInit::from_deferred(&deferred, &Convention::tf1())?;
    let found = init.map_existing(&prefix)?;
    init.init_from_checkpoint(&prefix, &found.map)?;
    let report = init.initialize(&Default::default())?;
    let load_seconds = start.elapsed().as_secs_f64();

    // Every loaded Var equals its checkpoint value (transposed for the dense kernels).
    let vars = varmap.data().lock().unwrap().clone();
    let mut max_error = 0f32;
    for (k, (tf, shape)) in tf_variables(cfg, false).iter().enumerate() {
        let (candle, _) = found.pairs.iter().find(|p| &p.1 == tf).ok_or("unpaired")?;
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let want = Tensor::from_vec(value(k, tf, shape), dims, &dev)?;
        let want = if tf.ends_with("/kernel") {
            want.t()?
        } else {
            want
        };
        let got = vars[candle].as_tensor();
        let err = (got - &want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        max_error = max_error.max(err);
    }

    // One training step: the loaded weights are live Vars.
    let ids = Tensor::new(&[[1u32, 5, 7, 2, 9, 3], [4, 4, 8, 1, 0, 6]], &dev)?;
    let labels = Tensor::new(&[1u32, 0], &dev)?;
    let query = vars["bert.encoder.layer.0.attention.self.query.weight"]
        .as_tensor()
        .copy()?;
    let loss = candle_nn::loss::cross_entropy(&model.forward(&ids)?, &labels)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 2e-5,
            ..Default::default()
        },
    )?;
    opt.backward_step(&loss)?;
    let loss_after = candle_nn::loss::cross_entropy(&model.forward(&ids)?, &labels)?;
    let step_change = (vars["bert.encoder.layer.0.attention.self.query.weight"].as_tensor()
        - &query)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;

    // The fine-tuned model back as a TensorFlow checkpoint (kernels transposed back), which
    // TensorFlow and tfckpt read.
    let tuned = dir.join("fine_tuned.ckpt");
    let saved = init.save_checkpoint(&tuned)?;
    let kernel = tfckpt::Checkpoint::open(&tuned)?
        .read("bert/encoder/layer_0/attention/self/query/kernel")?
        .to_f32()
        .ok_or("not float32")?;
    let query = vars["bert.encoder.layer.0.attention.self.query.weight"].as_tensor();
    let saved_error = (Tensor::from_vec(kernel, (cfg.hidden, cfg.hidden), &dev)? - query.t()?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;

    let summary = Summary {
        loaded: found.pairs.len(),
        not_in_checkpoint: found.not_in_checkpoint,
        not_in_model: found.not_in_model,
        max_error,
        loss_before: loss.to_scalar::<f32>()?,
        loss_after: loss_after.to_scalar::<f32>()?,
        step_change,
        load_seconds,
        saved,
        saved_error,
    };
    if print {
        println!(
            "loaded {} Vars ({:.1} MB, every byte CRC-checked) in {:.3} s ({:.3} s of it tfckpt's load)",
            summary.loaded,
            report.bytes as f64 / 1e6,
            summary.load_seconds,
            report.seconds
        );
        println!(
            "kept candle's initialization: {:?}",
            summary.not_in_checkpoint
        );
        println!("left in the checkpoint: {:?}", summary.not_in_model);
        println!(
            "largest difference from the checkpoint: {}",
            summary.max_error
        );
        println!(
            "one AdamW step: loss {:.5} -> {:.5} (up or down: one step from a random head); \
             query kernel of layer 0 moved by up to {:.2e}",
            summary.loss_before, summary.loss_after, summary.step_change
        );
        println!(
            "saved the fine-tuned model as a TensorFlow checkpoint: {} tensors; the query kernel of layer 0 reads back within {}",
            summary.saved, summary.saved_error
        );
    }
    Ok(summary)
}

#[allow(unused)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let small = std::env::args().any(|a| a == "--small");
    let cfg = if small { Config::SMALL } else { Config::BASE };
    // `--cuda`: the model on GPU 0 (build with `--features candle-cuda`).
    let dev = if std::env::args().any(|a| a == "--cuda") {
        Device::new_cuda(0)?
    } else {
        Device::Cpu
    };
    let dir = tempfile::tempdir()?;
    println!("BERT {cfg:?} on {:?}", dev.location());
    run_on(&cfg, dir.path(), true, &dev)?;
    Ok(())
}
