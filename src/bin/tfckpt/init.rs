//! `tfckpt init`: MODEL.json's variables, `init_from_checkpoint(CKPT, MAP)`, every initializer
//! run, and the values written out (a folder of .npy files, or one .safetensors file).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use tfckpt::{init_from_checkpoint, Checkpoint, Device, LoadOptions, Progress, VariableStore};

use crate::{inputs, is_safetensors_file, model_json, npy, out, write_npy, CliResult};

/// The most a MODEL.json or MAP.json file may hold (a model of 200,000 variables takes about
/// 20 MB): `/dev/zero` as `--model` is an error, not memory exhausted.
const JSON_LIMIT: u64 = 256 << 20;

/// Whether a `--model` or `--map` argument is inline JSON rather than a file path.
fn is_inline(arg: &str) -> bool {
    arg.trim_start().starts_with(['{', '['])
}

/// A file's text, or the argument itself when it is inline JSON.
fn json_arg(what: &str, arg: &str) -> Result<String, Box<dyn std::error::Error>> {
    use std::io::Read;
    if is_inline(arg) {
        return Ok(arg.to_string());
    }
    if arg.is_empty() {
        return Err(format!(
            "{what} is empty: give a file's path, or inline JSON starting with {{ or ["
        )
        .into());
    }
    let mut text = String::new();
    std::fs::File::open(arg)
        .and_then(|f| f.take(JSON_LIMIT + 1).read_to_string(&mut text))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => format!("{what} {arg}: is not UTF-8 text"),
            _ => format!("{what} {arg}: cannot be read: {e}"),
        })?;
    if text.len() as u64 > JSON_LIMIT {
        return Err(format!("{what} {arg}: larger than {} MiB", JSON_LIMIT >> 20).into());
    }
    Ok(text)
}

/// How `init` loads.
pub(crate) struct Load {
    pub(crate) device: Device,
    pub(crate) threads: Option<usize>,
    pub(crate) copy: bool,
    /// (rank, ranks)
    pub(crate) rank: Option<(usize, usize)>,
}

/// Runs `tfckpt init CKPT --model MODEL --map MAP [--out OUT]` as `load` says.
pub(crate) fn run(
    ckpt: &Path,
    model: &str,
    map: &str,
    out: Option<&Path>,
    load: &Load,
) -> CliResult {
    let Load {
        device,
        threads,
        copy,
        rank,
    } = *load;
    if let Device::Cuda(n) = device {
        check_gpu(n)?;
    }
    // Errors name the argument, and the file it names (MODEL.json's own are invalid arguments:
    // the words add nothing after the argument's name).
    let named = |flag: &str, arg: &str, e: tfckpt::Error| -> Box<dyn std::error::Error> {
        let said = match e.kind() {
            tfckpt::ErrorKind::InvalidArgument(text) => text.clone(),
            _ => e.to_string(),
        };
        if is_inline(arg) {
            format!("{flag}: {said}").into()
        } else {
            format!("{flag} {arg}: {said}").into()
        }
    };
    let mut store = model_json::parse_model(&json_arg("--model", model)?)
        .map_err(|e| named("--model", model, e))?;
    let map =
        model_json::parse_map(&json_arg("--map", map)?).map_err(|e| named("--map", map, e))?;
    let to_safetensors = out.is_some_and(is_safetensors_file);
    if let Some(file) = out.filter(|_| to_safetensors) {
        // A variable safetensors cannot hold fails before anything is loaded.
        store.check_safetensors()?;
        out::check_file_out(file, "--out", || {
            Checkpoint::open(ckpt).map_or_else(|_| Vec::new(), |c| inputs(&c))
        })?;
    } else if let Some(dir) = out {
        if dir.exists() && !dir.is_dir() {
            return Err(format!("--out {}: exists and is not a directory", dir.display()).into());
        }
        check_out_names(dir, &store)?;
    }
    // `get`'s habit (--out FILE.npy) makes a folder of that name here: said (after success),
    // not refused.
    let npy_folder = out
        .filter(|d| !to_safetensors && !d.exists())
        .filter(|d| d.extension().is_some_and(|e| e == "npy"));
    // A ranked safetensors output: what is at the path now, to refuse at the end to replace
    // what another rank wrote there meanwhile.
    let before = out
        .filter(|_| to_safetensors && rank.is_some())
        .map(out::seen);
    let call = init_from_checkpoint(&mut store, ckpt, &map).map_err(without_api_hint)?;
    let mut options = LoadOptions {
        // init only reads the values (to write them out): large ones are mapped, not copied.
        map_values: !copy,
        ..LoadOptions::new()
    };
    if let Some(n) = threads {
        options = options.threads(n);
    }
    if let Some((r, n)) = rank {
        options = options.rank(r, n);
    }
    let bar = ProgressLine::new();
    if bar.enabled {
        let bar = bar.clone();
        options = options.progress(move |p| bar.show(p));
    }
    let report = store.initialize_with(device, &options);
    bar.finish();
    let report = report?;
    if let Some(out) = out {
        // Device values are copied back to be written.
        store.fetch_to_host()?;
        if let Some(before) = &before {
            out::with_parents(out, || {
                out::replace_unless_changed(out, before, |tmp| {
                    Ok(store.write_safetensors(tmp).map(drop)?)
                })
            })?;
        } else if to_safetensors {
            out::with_parents(out, || Ok(store.write_safetensors(out).map(drop)?))?;
        } else {
            write_outputs(out, &store)?;
        }
    }
    // Only after success: a failure prints its one `error:` line and nothing else.
    for w in &call.warnings {
        note!("warning: {}", tfckpt::escape_controls(w));
    }
    if let Some(dir) = npy_folder {
        note!(
            "warning: --out {}: made as a folder, holding one .npy file per variable (init \
             writes a folder, or one .safetensors file)",
            tfckpt::escape_controls(&dir.display().to_string())
        );
    }
    say!("tfckpt init: {report}")?;
    Ok(())
}

/// `--device cuda:N` needs GPU N, whatever MODEL.json places on it (cli.md: a build without the
/// `cuda` feature, or a machine without a GPU, answers it with an error).
fn check_gpu(n: u32) -> CliResult {
    if !cfg!(feature = "cuda") {
        return Err(format!(
            "--device cuda:{n}: this build of tfckpt has no GPU support (build with the `cuda` \
             feature); use --device cpu"
        )
        .into());
    }
    match Device::gpu_count() {
        0 => Err(format!(
            "--device cuda:{n}: no GPU can be used here (no NVIDIA driver, or no GPU); use --device cpu"
        )
        .into()),
        count if n as usize >= count => Err(format!(
            "--device cuda:{n}: there is no GPU {n}; this machine has {count} (cuda:0 to cuda:{})",
            count - 1
        )
        .into()),
        _ => Ok(()),
    }
}

/// A dtype mismatch without the library's hint: it names `LoadOptions::cast`, which the command
/// line does not offer (MODEL.json's dtype is the variable's, as in TensorFlow, which never casts).
fn without_api_hint(e: tfckpt::Error) -> tfckpt::Error {
    match e.into_kind() {
        tfckpt::ErrorKind::DtypeMismatch {
            ckpt,
            variable,
            variable_dtype,
            tensor,
            tensor_dtype,
            hint: _,
        } => tfckpt::ErrorKind::DtypeMismatch {
            ckpt,
            variable,
            variable_dtype,
            tensor,
            tensor_dtype,
            hint: None,
        },
        kind => kind,
    }
    .into()
}

/// Variable names become paths under DIR: refuse components that would leave it, and names whose
/// file would collide with another's directory (`a.npy` vs `a.npy/b.npy`), before any work.
fn check_out_names(dir: &Path, store: &VariableStore) -> CliResult {
    // A variable NumPy cannot hold fails before anything is loaded.
    if let Some(v) = store
        .variables()
        .find(|v| v.shape.len() > npy::NUMPY_MAX_DIMS)
    {
        return Err(format!(
            "variable {:?} has rank {}, more dimensions than NumPy 2 reads ({}): write it to a \
             .safetensors file instead (--out FILE.safetensors)",
            v.name,
            v.shape.len(),
            npy::NUMPY_MAX_DIMS
        )
        .into());
    }
    let names: Vec<&str> = store
        .variables()
        .map(|v| v.name.as_str())
        .chain(store.partitioned_variables().map(|p| p.name.as_str()))
        .collect();
    let mut dirs = std::collections::HashSet::new();
    for n in &names {
        // On Windows `\` separates folders too, and `:` names a drive or a stream.
        #[cfg(windows)]
        if n.contains(['\\', ':']) {
            return Err(format!(
                "variable {n:?} cannot be written under {}: '\\' and ':' are not valid in file \
                 names here",
                dir.display()
            )
            .into());
        }
        if n.split('/').any(|c| c == "." || c == "..") {
            return Err(format!(
                "variable {n:?} cannot be written under {}: '.' and '..' are not valid name components",
                dir.display()
            )
            .into());
        }
        // Each folder the name makes, as a slice of it (a copy of each prefix took memory
        // quadratic in the name: gigabytes for a name of 100,000 components).
        dirs.extend(n.match_indices('/').map(|(i, _)| &n[..i]));
    }
    for n in &names {
        let file = format!("{n}.npy");
        if dirs.contains(file.as_str()) {
            return Err(format!("variable {n:?} would be written to {file}, which another variable needs as a directory").into());
        }
    }
    Ok(())
}

/// Writes `t` as `root/file` (`file` a variable's name, its `/`s folders), naming `shown`. Only the
/// folders below `root` are made, never `root` itself: a temporary root removed meanwhile (by
/// the signal's cleanup) fails the write instead of being made again and left behind.
fn write_npy_below(root: &Path, file: &str, shown: &Path, t: &tfckpt::Tensor) -> CliResult {
    let path = root.join(file);
    let mut dir = root.to_path_buf();
    for part in Path::new(file)
        .parent()
        .into_iter()
        .flat_map(Path::components)
    {
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(format!("{}: {e}", shown.display()).into()),
        }
    }
    write_npy(&path, shown, t)
}

/// DIR/NAME.npy for every variable and part, and the whole of every partitioned variable, all or
/// nothing (see `out`).
fn write_outputs(dir: &Path, store: &VariableStore) -> CliResult {
    out::write_tree(dir, |tmp| {
        // Values may be copy-on-write mappings of the checkpoint: a file truncated meanwhile is
        // an error (ErrorKind::Truncated), not SIGBUS, and one written in place meanwhile
        // (ErrorKind::ChangedInPlace) too; either way before the files are moved into place.
        store.read_values(|store| write_files_of(tmp, dir, store))?
    })
}

/// The files of `write_outputs`, written into `tmp` (named as they will be in `dir`).
fn write_files_of(tmp: &Path, dir: &Path, store: &VariableStore) -> CliResult {
    // After a ranked load, only this rank's variables and parts, and the wholes of the
    // partitioned variables it holds every part of.
    for v in store.variables().filter(|v| !store.is_other_rank(&v.name)) {
        let t = store
            .value(&v.name)
            .ok_or_else(|| format!("variable {:?} has no value", v.name))?;
        let file = format!("{}.npy", v.name);
        write_npy_below(tmp, &file, &dir.join(&file), t)?;
    }
    for pv in store.partitioned_variables() {
        if pv.parts.iter().any(|p| store.is_other_rank(p)) {
            continue;
        }
        let t = store.partitioned_value(&pv.name)?;
        let file = format!("{}.npy", pv.name);
        write_npy_below(tmp, &file, &dir.join(&file), &t)?;
    }
    Ok(())
}

/// A one-line progress display on stderr for loads longer than a second (only on a terminal, so
/// scripts and tests see nothing but the summary).
#[derive(Clone)]
struct ProgressLine {
    enabled: bool,
    start: Instant,
    shown: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        use std::io::IsTerminal;
        ProgressLine {
            enabled: std::io::stderr().is_terminal(),
            start: Instant::now(),
            shown: Default::default(),
        }
    }

    fn show(&self, p: Progress) {
        let secs = self.start.elapsed().as_secs_f64();
        if secs < 1.0 {
            return;
        }
        self.shown.store(true, std::sync::atomic::Ordering::Relaxed);
        let pct = 100.0 * p.bytes_done as f64 / p.bytes_total.max(1) as f64;
        let _ = write!(
            std::io::stderr().lock(),
            "\r  loading {pct:5.1}%  {:.2} / {:.2} GB  {}/{} tensors  {:.2} GB/s ",
            p.bytes_done as f64 / 1e9,
            p.bytes_total as f64 / 1e9,
            p.tensors_done,
            p.tensors_total,
            p.bytes_done as f64 / secs / 1e9
        );
    }

    fn finish(&self) {
        if self.shown.load(std::sync::atomic::Ordering::Relaxed) {
            note!();
        }
    }
}
