//! `tfckpt`: the command line of the tfckpt crate (contract: the project's `spec/cli.md`).

mod demo;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use tfckpt::{init_from_checkpoint, model_json, Checkpoint, Device, Slice, VariableStore};

#[derive(Parser)]
#[command(
    name = "tfckpt",
    version,
    about = "Read, verify and load TensorFlow checkpoints"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List every tensor: name, dtype, shape, sorted by name (tf.train.list_variables).
    List {
        /// Checkpoint directory (with a `checkpoint` file), prefix, or V1 file.
        ckpt: PathBuf,
        /// Print a JSON array of {"name", "dtype", "shape"}.
        #[arg(long)]
        json: bool,
    },
    /// Write one tensor (assembled from its slices if partitioned) to a .npy file
    /// (tf.train.load_variable).
    Get {
        /// Checkpoint directory, prefix, or V1 file.
        ckpt: PathBuf,
        /// Tensor name (a trailing ":0" is ignored, as TensorFlow does).
        name: String,
        /// Output .npy file.
        #[arg(long)]
        out: PathBuf,
        /// Only this slice: `start,length` or `-` per dimension, joined by `:` (e.g. `0,10:-`).
        #[arg(long)]
        slice: Option<String>,
    },
    /// Check every block and tensor checksum; say what is wrong and where.
    Verify {
        /// Checkpoint directory, prefix, or V1 file.
        ckpt: PathBuf,
    },
    /// Build MODEL.json's variables, call init_from_checkpoint(CKPT, MAP), run every initializer and
    /// write each variable to DIR/NAME.npy (init_from_checkpoint + global_variables_initializer()).
    Init {
        /// Checkpoint directory, prefix, or V1 file.
        ckpt: PathBuf,
        /// MODEL.json: a file, or inline JSON starting with `{`.
        #[arg(long)]
        model: String,
        /// MAP.json: a file, or inline JSON starting with `{` or `[`.
        #[arg(long)]
        map: String,
        /// Output directory: one .npy per variable and per part (nothing is written unless every
        /// initializer succeeded).
        #[arg(long)]
        out: Option<PathBuf>,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu", value_parser = parse_device)]
        device: Device,
    },
    /// Write a sample checkpoint (a few hundred MB) to a temporary directory, then list, verify and
    /// read it back, printing what was done and how fast.
    Demo {
        /// Approximate size of the sample checkpoint in MiB.
        #[arg(long, default_value_t = 300)]
        mib: u64,
        /// Keep the checkpoint in this directory instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::List { ckpt, json } => list(&ckpt, json),
        Cmd::Get {
            ckpt,
            name,
            out,
            slice,
        } => get(&ckpt, &name, &out, slice.as_deref()),
        Cmd::Verify { ckpt } => verify(&ckpt),
        Cmd::Init {
            ckpt,
            model,
            map,
            out,
            device,
        } => init(&ckpt, &model, &map, out.as_deref(), device),
        Cmd::Demo { mib, keep } => demo::run(mib, keep.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn shape_text(shape: &[u64]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn list(ckpt: &Path, json: bool) -> CliResult {
    let ckpt = Checkpoint::open(ckpt)?;
    let mut out = std::io::stdout().lock();
    if json {
        let items: Vec<serde_json::Value> = ckpt
            .tensors()
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape}))
            .collect();
        serde_json::to_writer(&mut out, &items)?;
        writeln!(out)?;
    } else {
        for t in ckpt.tensors() {
            let parts = if t.is_partitioned() {
                format!("\t({} slices)", t.slices.len())
            } else {
                String::new()
            };
            writeln!(
                out,
                "{}\t{}\t{}{parts}",
                t.name,
                t.dtype,
                shape_text(&t.shape)
            )?;
        }
    }
    Ok(())
}

fn get(ckpt: &Path, name: &str, out: &Path, slice: Option<&str>) -> CliResult {
    let ckpt = Checkpoint::open(ckpt)?;
    let name = name.strip_suffix(":0").unwrap_or(name);
    let tensor = match slice {
        None => ckpt.read(name)?,
        Some(text) => {
            let slice = Slice::parse(text).map_err(|r| format!("--slice {text:?}: {r}"))?;
            ckpt.read_slice(name, &slice)?
        }
    };
    let mut buf = Vec::new();
    tfckpt::npy::write_tensor(&mut buf, &tensor)?;
    std::fs::write(out, buf).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(())
}

fn verify(ckpt: &Path) -> CliResult {
    let start = Instant::now();
    let ckpt = Checkpoint::open(ckpt)?;
    let report = ckpt.verify_all();
    let secs = start.elapsed().as_secs_f64();
    if let Some(first) = report.problems.first() {
        let more = match report.problems.len() {
            1 => String::new(),
            n => format!(" (and {} more problems)", n - 1),
        };
        return Err(format!("{first}{more}").into());
    }
    println!(
        "ok: {} tensors, {} bytes, {} table blocks verified in {:.3} s ({:.2} GB/s)",
        report.tensors,
        report.bytes,
        report.blocks,
        secs,
        report.bytes as f64 / secs / 1e9
    );
    Ok(())
}

fn parse_device(s: &str) -> Result<Device, String> {
    Device::parse(s).ok_or_else(|| format!("expected cpu, cuda or cuda:N, found {s:?}"))
}

/// A file's text, or the argument itself when it is inline JSON.
fn json_arg(what: &str, arg: &str) -> Result<String, Box<dyn std::error::Error>> {
    if arg.trim_start().starts_with(['{', '[']) {
        Ok(arg.to_string())
    } else {
        std::fs::read_to_string(arg).map_err(|e| format!("{what} {arg}: {e}").into())
    }
}

fn init(ckpt: &Path, model: &str, map: &str, out: Option<&Path>, device: Device) -> CliResult {
    let mut store = model_json::parse_model(&json_arg("--model", model)?)?;
    let map = model_json::parse_map(&json_arg("--map", map)?)?;
    if let Some(dir) = out {
        check_out_names(dir, &store)?;
    }
    let call = init_from_checkpoint(&mut store, ckpt, &map)?;
    for w in &call.warnings {
        eprintln!("warning: {w}");
    }
    let report = store.initialize(device)?;
    if let Some(dir) = out {
        write_outputs(dir, &store)?;
    }
    println!("tfckpt init: {report}");
    Ok(())
}

/// Variable names become paths under DIR: refuse components that would leave it.
fn check_out_names(dir: &Path, store: &VariableStore) -> CliResult {
    for v in store.variables() {
        if v.name.split('/').any(|c| c == "." || c == "..") {
            return Err(format!("variable {:?} cannot be written under {}: '.' and '..' are not valid name components", v.name, dir.display()).into());
        }
    }
    Ok(())
}

fn write_npy(path: &Path, t: &tfckpt::Tensor) -> CliResult {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut buf = Vec::new();
    tfckpt::npy::write_tensor(&mut buf, t)?;
    std::fs::write(path, buf).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// DIR/NAME.npy for every variable and part, and the whole of every partitioned variable.
fn write_outputs(dir: &Path, store: &VariableStore) -> CliResult {
    for v in store.variables() {
        let t = store
            .value(&v.name)
            .ok_or_else(|| format!("variable {:?} has no value", v.name))?;
        write_npy(&dir.join(format!("{}.npy", v.name)), t)?;
    }
    for pv in store.partitioned_variables() {
        let t = store
            .partitioned_value(&pv.name)
            .ok_or_else(|| format!("variable {:?} has no value", pv.name))?;
        write_npy(&dir.join(format!("{}.npy", pv.name)), &t)?;
    }
    Ok(())
}
