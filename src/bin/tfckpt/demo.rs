//! `tfckpt demo`: write a sample checkpoint with the crate's writer, then list, verify and read it
//! back, with timings. Needs no input files.

use std::path::Path;
use std::time::Instant;

use tfckpt::{
    init_from_checkpoint, AssignmentMap, Checkpoint, CheckpointWriter, DType, Device, Init, Slice,
    Target, Tensor, TensorRef, VariableStore, WriterOptions,
};

/// Deterministic pseudo-random f32 values in [-0.5, 0.5).
fn values(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n * 4);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

struct Plan {
    layers: u64,
    vocab: u64,
    width: u64,
}

fn gbps(bytes: u64, secs: f64) -> String {
    format!("{:.2} GB/s", bytes as f64 / secs.max(1e-9) / 1e9)
}

pub(crate) fn run(mib: u64, keep: Option<&Path>) -> Result<(), Box<dyn std::error::Error>> {
    // Sizes: each layer kernel is 1024 x 4096 f32 (16 MiB); the embedding takes about a third.
    let mib = mib.max(24);
    let plan = Plan {
        layers: (mib * 2 / 3 / 16).max(1),
        vocab: (mib / 3) * (1 << 20) / (256 * 4),
        width: 256,
    };
    // Listed until after the folder's removal (declared first, dropped last).
    let _listed;
    let tmp;
    let dir = match keep {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            d.to_path_buf()
        }
        None => {
            let making = tfckpt::PartialOutput::making();
            tmp = tempfile::tempdir()?;
            #[cfg(debug_assertions)]
            let paused = crate::out::pause_before_listing("demo");
            _listed = making.list(tmp.path());
            #[cfg(debug_assertions)]
            crate::out::hold_after_listing(paused);
            tmp.path().to_path_buf()
        }
    };
    let emb = write_sample(&dir, &plan)?;
    let t0 = Instant::now();
    let ckpt = Checkpoint::open(&dir)?;
    list_and_verify(&dir, &ckpt, t0.elapsed().as_secs_f64())?;
    read_everything(&ckpt)?;
    spot_check(&ckpt, &plan, &emb)?;
    drop(ckpt);
    init_demo(&dir, &plan, &emb)?;
    match keep {
        None => say!("\n(the temporary checkpoint is removed; pass --keep DIR to keep it)")?,
        Some(d) => say!("\n(the checkpoint is kept in {})", d.display())?,
    }
    Ok(())
}

/// Writes the sample checkpoint (two shards) and its state file; returns the embedding's bytes.
fn write_sample(dir: &Path, plan: &Plan) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let prefix = dir.join("model.ckpt-1000");
    say!(
        "tfckpt demo: writing a sample checkpoint to {}",
        prefix.display()
    )?;
    let t0 = Instant::now();
    let mut w = CheckpointWriter::create(
        &prefix,
        WriterOptions {
            num_shards: 2,
            ..Default::default()
        },
    )?;
    let mut written = write_layers(&mut w, plan)?;
    // A partitioned embedding: 8 parts along axis 0, the first `vocab % 8` one row longer (TF's rule).
    let emb = values(7, (plan.vocab * plan.width) as usize);
    let parts = 8u64;
    let mut start = 0;
    for i in 0..parts {
        let rows = plan.vocab / parts + u64::from(i < plan.vocab % parts);
        let bytes =
            &emb[(start * plan.width * 4) as usize..((start + rows) * plan.width * 4) as usize];
        w.add_slice(
            "embedding/table",
            &[plan.vocab, plan.width],
            &Slice::from_ranges(&[(start, rows), (0, plan.width)]),
            TensorRef::Bytes {
                dtype: DType::F32,
                shape: &[rows, plan.width],
                data: bytes,
            },
        )?;
        start += rows;
    }
    written += emb.len() as u64;
    written += write_head(&mut w)?;
    w.finish()?;
    tfckpt::write_checkpoint_state(dir, "model.ckpt-1000")?;
    let secs = t0.elapsed().as_secs_f64();
    say!(
        "  wrote {:.1} MB in {:.3} s ({}) as 2 data shards",
        written as f64 / 1e6,
        secs,
        gbps(written, secs)
    )?;
    Ok(emb)
}

/// The encoder layers: a float32 kernel and bias and a float16 LayerNorm gamma each.
fn write_layers(w: &mut CheckpointWriter, plan: &Plan) -> Result<u64, Box<dyn std::error::Error>> {
    let mut written = 0u64;
    for l in 0..plan.layers {
        let kernel = values(l, 1024 * 4096);
        w.add(
            &format!("encoder/layer_{l}/dense/kernel"),
            TensorRef::Bytes {
                dtype: DType::F32,
                shape: &[1024, 4096],
                data: &kernel,
            },
        )?;
        let bias = values(1000 + l, 4096);
        w.add(
            &format!("encoder/layer_{l}/dense/bias"),
            TensorRef::Bytes {
                dtype: DType::F32,
                shape: &[4096],
                data: &bias,
            },
        )?;
        let gamma: Vec<u8> = (0..1024u32)
            .flat_map(|i| half::f16::from_f32(1.0 + i as f32 / 1024.0).to_le_bytes())
            .collect();
        w.add(
            &format!("encoder/layer_{l}/layer_norm/gamma"),
            TensorRef::Bytes {
                dtype: DType::F16,
                shape: &[1024],
                data: &gamma,
            },
        )?;
        written += (kernel.len() + bias.len() + gamma.len()) as u64;
    }
    Ok(written)
}

/// A bfloat16 head, a step counter, a bool mask and a vocabulary of strings.
fn write_head(w: &mut CheckpointWriter) -> Result<u64, Box<dyn std::error::Error>> {
    let head: Vec<u8> = values(9, 1024 * 1000)
        .chunks(4)
        .flat_map(|c| [c[2], c[3]])
        .collect();
    w.add(
        "head/kernel",
        TensorRef::Bytes {
            dtype: DType::BF16,
            shape: &[1024, 1000],
            data: &head,
        },
    )?;
    w.add(
        "global_step",
        TensorRef::Bytes {
            dtype: DType::I64,
            shape: &[],
            data: &1000i64.to_le_bytes(),
        },
    )?;
    let mask: Vec<u8> = (0..4096).map(|i| u8::from(i % 3 == 0)).collect();
    w.add(
        "head/mask",
        TensorRef::Bytes {
            dtype: DType::Bool,
            shape: &[4096],
            data: &mask,
        },
    )?;
    let vocab = Tensor::from_strings(
        &[1000],
        (0..1000)
            .map(|i| format!("token_{i}"))
            .collect::<tfckpt::Strings>(),
    )
    .unwrap();
    w.add("vocab", (&vocab).into())?;
    Ok((head.len() + 8 + mask.len()) as u64)
}

/// `tfckpt list` (the checkpoint took `secs` to open) and `tfckpt verify`, with timings.
fn list_and_verify(
    dir: &Path,
    ckpt: &Checkpoint,
    secs: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    say!(
        "\nlisting {} (what `tfckpt list` gives; opened the directory through its 'checkpoint' \
         file in {:.1} ms)",
        dir.display(),
        secs * 1e3
    )?;
    let infos = ckpt.tensors();
    for (i, t) in infos.iter().enumerate() {
        if i < 4 || i + 4 >= infos.len() {
            let note = if t.is_partitioned() {
                format!("  ({})", crate::counted(t.slices.len() as u64, "slice"))
            } else {
                String::new()
            };
            say!("  {:<36} {:<9} {:?}{note}", t.name, t.dtype.name(), t.shape)?;
        } else if i == 4 {
            say!("  ... {} more", infos.len() - 8)?;
        }
    }
    let t0 = Instant::now();
    let report = ckpt.verify()?;
    let secs = t0.elapsed().as_secs_f64();
    say!(
        "\nverifying {} (as `tfckpt verify` does)\n  ok: {}, {}, {:.1} MB checked in {:.3} s ({})",
        dir.display(),
        crate::stored_count(report.tensors as u64),
        crate::counted(report.blocks as u64, "table block"),
        report.bytes as f64 / 1e6,
        secs,
        gbps(report.bytes, secs)
    )?;
    Ok(())
}

/// Reads every tensor, with a timing.
fn read_everything(ckpt: &Checkpoint) -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let mut read = 0u64;
    let mut buf = Vec::new();
    for t in ckpt.tensors() {
        match t.dtype.size() {
            Some(_) => {
                buf.resize(ckpt.byte_len(&t.name, None)?, 0);
                ckpt.read_into(&t.name, &mut buf)?;
                read += buf.len() as u64;
            }
            None => read += ckpt.read(&t.name)?.strings().map_or(0, |s| s.total_bytes()),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    say!(
        "\nread every tensor (the embedding assembled from its 8 slices): {:.1} MB in {:.3} s ({})",
        read as f64 / 1e6,
        secs,
        gbps(read, secs)
    )?;
    Ok(())
}

/// Spot checks against the values that were written.
fn spot_check(
    ckpt: &Checkpoint,
    plan: &Plan,
    emb: &[u8],
) -> Result<(), Box<dyn std::error::Error>> {
    let k = ckpt.read("encoder/layer_0/dense/kernel")?;
    let rows = ckpt.read_slice(
        "embedding/table",
        &Slice::from_ranges(&[(plan.vocab / 8 - 2, 4), (10, 3)]),
    )?;
    let mut want = Vec::new();
    for r in plan.vocab / 8 - 2..plan.vocab / 8 + 2 {
        let o = ((r * plan.width + 10) * 4) as usize;
        want.extend_from_slice(&emb[o..o + 12]);
    }
    let ok = k.bytes() == Some(&values(0, 1024 * 4096)[..]) && rows.bytes() == Some(&want[..]);
    say!(
        "spot check (a kernel, and a 4x3 block of the embedding across a slice boundary): {}",
        if ok { "values match" } else { "MISMATCH" }
    )?;
    if !ok {
        return Err("demo spot check failed".into());
    }
    Ok(())
}

/// init_from_checkpoint into a model with other scope names and another partitioning.
fn init_demo(dir: &Path, plan: &Plan, emb: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    say!("\ninit_from_checkpoint into a model with other scope names (bert/...) and the embedding in 5 parts instead of 8:")?;
    let mut store = VariableStore::new();
    for l in 0..plan.layers {
        let scope = format!("bert/encoder/layer_{l}");
        store.get_variable(
            &format!("{scope}/dense/kernel"),
            &[1024, 4096],
            DType::F32,
            Init::Zeros,
        )?;
        store.get_variable(
            &format!("{scope}/dense/bias"),
            &[4096],
            DType::F32,
            Init::Zeros,
        )?;
        store.get_variable(
            &format!("{scope}/layer_norm/gamma"),
            &[1024],
            DType::F16,
            Init::Ones,
        )?;
    }
    store.get_partitioned_variable(
        "bert/embedding/table",
        &[plan.vocab, plan.width],
        DType::F32,
        &[5, 1],
        Init::Zeros,
    )?;
    store.get_variable("bert/head/kernel", &[1024, 1000], DType::BF16, Init::Zeros)?;
    store.get_variable("bert/head/mask", &[4096], DType::Bool, Init::Zeros)?;
    store.get_variable("bert/vocab", &[1000], DType::String, Init::Zeros)?;
    store.get_variable("bert/pooler/bias", &[256], DType::F32, Init::Constant(0.1))?; // not in the checkpoint
    store.get_variable("global_step", &[], DType::I64, Init::Zeros)?;
    let map = AssignmentMap::from([
        ("encoder/", Target::scope("bert/encoder")),
        ("embedding/", Target::scope("bert/embedding")),
        ("head/", Target::scope("bert/head")),
        ("vocab", Target::name("bert/vocab")),
        ("global_step", Target::variable("global_step")),
    ]);
    say!("  map: {{\"encoder/\": \"bert/encoder\", \"embedding/\": \"bert/embedding\", \"head/\": \"bert/head\", \"vocab\": \"bert/vocab\", \"global_step\": <variable>}}")?;
    let t0 = Instant::now();
    let call = init_from_checkpoint(&mut store, dir, &map)?;
    say!(
        "  init_from_checkpoint: {} initializers recorded in {:.1} ms (index only, no tensor bytes read)",
        call.assignments.len(),
        t0.elapsed().as_secs_f64() * 1e3
    )?;
    // On the GPU when there is one (a build with the `cuda` feature on a machine with a GPU).
    let device = if Device::gpu_count() > 0 {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    let report = store.initialize(device)?;
    say!("  initialize on {device}: {report}")?;
    if device != Device::Cpu {
        store.fetch_to_host()?; // for the spot checks below
    }
    // Spot checks: part 1 of the re-partitioned embedding, the unmapped bias, the step.
    let rows = plan.vocab / 5 + u64::from(1 < plan.vocab % 5);
    let start = (plan.vocab / 5 + u64::from(!plan.vocab.is_multiple_of(5))) * plan.width * 4;
    let part1 = store
        .value("bert/embedding/table/part_1")
        .and_then(Tensor::bytes);
    let want = &emb[start as usize..(start + rows * plan.width * 4) as usize];
    let bias = store.value("bert/pooler/bias").and_then(Tensor::to_f32);
    let step = store.value("global_step").and_then(Tensor::bytes);
    let ok = part1 == Some(want)
        && bias == Some(vec![0.1; 256])
        && step == Some(&1000i64.to_le_bytes()[..]);
    say!(
        "  spot check (embedding part 1 of 5 assembled across stored slices, unmapped bias = 0.1, global_step = 1000): {}",
        if ok { "values match" } else { "MISMATCH" }
    )?;
    if !ok {
        return Err("demo init spot check failed".into());
    }
    Ok(())
}
