//! `tfckpt`: the command line of the tfckpt crate (its contract: README, Command line).

/// `println!` that answers a failed write (a full disk, a closed pipe) with an error to return,
/// where `println!` would panic: the binary never panics.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(crate::stdout_error)
    }};
}

/// `eprintln!` that never panics: a line stderr cannot take is dropped (there is nowhere left to
/// report it).
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod demo;
mod model_json;
mod npy;
mod out;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::{Parser, Subcommand};
use tfckpt::{
    init_from_checkpoint, Checkpoint, Device, LoadOptions, Progress, Slice, VariableStore,
};

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

/// A path, the empty one too: an empty CKPT is a checkpoint not found (exit 1, as TensorFlow
/// raises), not a missing argument (clap's own path parser refuses it as a usage error).
fn any_path() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

#[derive(Subcommand)]
enum Cmd {
    /// List every tensor: name, dtype, shape, sorted by name (tf.train.list_variables).
    List {
        /// Checkpoint directory (with a `checkpoint` file), prefix, or V1 file.
        #[arg(value_parser = any_path())]
        ckpt: PathBuf,
        /// Print a JSON array of {"name", "dtype", "shape"}.
        #[arg(long)]
        json: bool,
    },
    /// Write one tensor (assembled from its slices if partitioned) to a .npy file
    /// (tf.train.load_variable).
    Get {
        /// Checkpoint directory, prefix, or V1 file.
        #[arg(value_parser = any_path())]
        ckpt: PathBuf,
        /// Tensor name (a trailing ":0" is ignored, as TensorFlow does).
        name: String,
        /// Output .npy file.
        #[arg(long)]
        out: PathBuf,
        /// Only this slice: `start,length` or `-` per dimension, joined by `:` (e.g. `0,10:-`,
        /// `-:0,10`).
        #[arg(long, allow_hyphen_values = true)]
        slice: Option<String>,
    },
    /// Check every block and tensor checksum; say what is wrong and where.
    Verify {
        /// Checkpoint directory, prefix, or V1 file.
        #[arg(value_parser = any_path())]
        ckpt: PathBuf,
    },
    /// Build MODEL.json's variables, call init_from_checkpoint(CKPT, MAP), run every initializer and
    /// write each variable to DIR/NAME.npy, or all of them to one FILE.safetensors
    /// (init_from_checkpoint + global_variables_initializer()).
    Init {
        /// Checkpoint directory, prefix, or V1 file.
        #[arg(value_parser = any_path())]
        ckpt: PathBuf,
        /// MODEL.json: a file, or inline JSON starting with `{` or `[`.
        #[arg(long)]
        model: String,
        /// MAP.json: a file, or inline JSON starting with `{` or `[`.
        #[arg(long)]
        map: String,
        /// Output directory: one .npy per variable, part and partitioned variable; or a file ending
        /// in .safetensors: the same values in that one file, each under its .npy name without
        /// .npy (an existing directory, or a name ending in a path separator, keeps the directory
        /// meaning). Nothing is written unless
        /// every initializer succeeded. Required unless --no-out.
        #[arg(long, required_unless_present = "no_out", conflicts_with = "no_out")]
        out: Option<PathBuf>,
        /// Load and check every value, and write nothing (to time a load, or to check that a
        /// map and a checkpoint fit a model).
        #[arg(long)]
        no_out: bool,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu", value_parser = parse_device)]
        device: Device,
        /// Worker threads (default: one per core; at most 4096).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4096))]
        threads: Option<u16>,
        /// Copy every value into fresh memory (by default values of 1 MiB and more that the
        /// checkpoint stores as the variable needs them are copy-on-write mappings of its files).
        #[arg(long)]
        copy: bool,
        /// This process's rank R (below --ranks): load and write only what it owns. Part i of a
        /// partitioned variable belongs to rank i mod N, every other variable to every rank.
        #[arg(long, requires = "ranks")]
        rank: Option<u32>,
        /// The number of ranks N the load is spread over.
        #[arg(long, requires = "rank", value_parser = clap::value_parser!(u32).range(1..))]
        ranks: Option<u32>,
    },
    /// Write every tensor as stored, under its checkpoint name, into one safetensors file
    /// (partitioned tensors assembled, every byte checksummed).
    ///
    /// Each tensor keeps its dtype (bfloat16, float16 and float8 e4m3fn/e5m2/e4m3fnuz/e5m2fnuz
    /// too); int4 and int2 become I8 and uint4 and uint2 U8, holding their values as `get` writes
    /// them. Tensors safetensors cannot hold (strings, variants, complex numbers, quantized types,
    /// float8_e4m3b11fnuz) are skipped, with one `warning:` line each on stderr. On any error
    /// nothing is written.
    Convert {
        /// Checkpoint directory, prefix, or V1 file.
        #[arg(value_parser = any_path())]
        ckpt: PathBuf,
        /// Output file (OUT.safetensors): written whole or not at all.
        out: PathBuf,
    },
    /// Write a sample checkpoint (a few hundred MB) to a temporary directory, then list, verify and
    /// read it back, printing what was done and how fast.
    Demo {
        /// Approximate size of the sample checkpoint in MiB (24 to 65536).
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(24..=65536))]
        mib: u64,
        /// Keep the checkpoint in this directory instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

/// Set when a signal is ending the process (see `remove_partial_outputs_on_signals`).
static ENDING: AtomicBool = AtomicBool::new(false);

/// On `SIGINT` (Ctrl-C), `SIGTERM` and `SIGHUP`: removes what the writes in progress leave (a
/// `convert` of gigabytes writes a hidden temporary file as large as its output), then ends the
/// process by the same signal, as it would have ended without this.
#[cfg(unix)]
fn remove_partial_outputs_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // A signal ignored when the process started stays ignored (`nohup` ignores SIGHUP, a shell
    // SIGINT for a job in the background), as GNU tools do.
    let ignored = |signal: libc::c_int| {
        // SAFETY: all-zero bytes are a valid `sigaction` (integers, a null handler, empty set).
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: with no new action, sigaction only writes the current one into `old`.
        let asked = unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) } == 0;
        asked && old.sa_sigaction == libc::SIG_IGN
    };
    let handled: Vec<_> = [SIGINT, SIGTERM, SIGHUP]
        .into_iter()
        .filter(|&s| !ignored(s))
        .collect();
    // Without the handlers (they cannot be set): the signals' default, temporary files left.
    let Ok(mut signals) = signal_hook::iterator::Signals::new(&handled) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            // A second signal during the cleanup ends the process at once.
            for &s in &handled {
                // SAFETY: sets a signal's default action (the process ends by it).
                unsafe { libc::signal(s, libc::SIG_DFL) };
            }
            ENDING.store(true, Ordering::SeqCst);
            // A merge into an existing `--out DIR` stops at its next move and undoes its moves
            // first: DIR is left as it was, not half merged.
            let _merges = out::wait_for_merges();
            tfckpt::remove_partial_outputs_for_exit();
            out::remove_made_folders();
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            std::process::exit(128 + signal);
        }
    });
}

/// On Ctrl-C, Ctrl-Break and the console closing: the same cleanup, then the process ends with
/// the status Ctrl-C gives it (`STATUS_CONTROL_C_EXIT`), as it would have without this. Windows
/// runs the handler on a new thread for each event, so a second one during the cleanup ends the
/// process at once. A process started with Ctrl-C ignored is not called for it (as a signal
/// ignored at start stays ignored on Unix).
#[cfg(windows)]
fn remove_partial_outputs_on_signals() {
    use windows_sys::Win32::System::Console::{
        SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_C_EVENT,
    };
    use windows_sys::Win32::System::Threading::ExitProcess;
    const CONTROL_C_EXIT: u32 = 0xC000_013A;
    unsafe extern "system" fn on_event(event: u32) -> windows_sys::core::BOOL {
        if !matches!(event, CTRL_C_EVENT | CTRL_BREAK_EVENT | CTRL_CLOSE_EVENT) {
            return 0; // not handled: the next handler (the default) decides
        }
        if !ENDING.swap(true, Ordering::SeqCst) {
            let _merges = out::wait_for_merges();
            tfckpt::remove_partial_outputs_for_exit();
            out::remove_made_folders();
        }
        // SAFETY: ends the process; nothing runs after it.
        unsafe { ExitProcess(CONTROL_C_EXIT) }
    }
    // Without the handler (it cannot be set): the events' default, temporary files left.
    // SAFETY: registers a function that lives as long as the process.
    unsafe { SetConsoleCtrlHandler(Some(on_event), 1) };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(any(unix, windows))]
    remove_partial_outputs_on_signals();
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
            no_out: _,
            device,
            threads,
            copy,
            rank,
            ranks,
        } => {
            let rank = rank.zip(ranks).map(|(r, n)| (r as usize, n as usize));
            if let Some((r, n)) = rank.filter(|(r, n)| r >= n) {
                use clap::CommandFactory;
                // The error of `init` (its usage line), not of the top-level command.
                let mut cli = Cli::command();
                cli.build();
                let init = cli
                    .find_subcommand_mut("init")
                    .expect("init is a subcommand");
                init.error(
                    clap::error::ErrorKind::ValueValidation,
                    format!("--rank {r} --ranks {n}: the rank must be below the number of ranks"),
                )
                .exit();
            }
            let load = Load {
                device,
                threads: threads.map(usize::from),
                copy,
                rank,
            };
            init(&ckpt, &model, &map, out.as_deref(), &load)
        }
        Cmd::Convert { ckpt, out } => convert(&ckpt, &out),
        Cmd::Demo { mib, keep } => demo::run(mib, keep.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if ENDING.load(Ordering::SeqCst) => {
            // A write failed because the signal's thread removed its files: that thread ends
            // the process, by the signal, without an error line for it.
            loop {
                std::thread::park();
            }
        }
        Err(_) if STDOUT_CLOSED.load(Ordering::SeqCst) => {
            // The reader of stdout took what it wanted and went (`| head`): no error line, and
            // on Unix the end GNU tools have there, by SIGPIPE (a shell's `pipefail` sees 141).
            #[cfg(unix)]
            // SAFETY: sets SIGPIPE's default action and raises it: the process ends by it.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
            ExitCode::from(1)
        }
        Err(e) => {
            // One line whatever the names in it hold: control characters are escaped.
            note!("error: {}", tfckpt::escape_controls(&e.to_string()));
            ExitCode::from(1)
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// Set when stdout's reader has gone (a broken pipe: `tfckpt list CKPT | head -1`).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// A failed write to stdout, as the one `error:` line says it.
fn stdout_error(e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        STDOUT_CLOSED.store(true, Ordering::SeqCst);
    }
    format!("writing to stdout: {e}")
}

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
    // What TensorFlow's glob passes over without a word: a missing file (its tensors are not
    // listed) and a stray one (its tensors are).
    for problem in ckpt.file_problems() {
        note!("warning: {}", tfckpt::escape_controls(&problem.to_string()));
    }
    let mut out = std::io::stdout().lock();
    if json {
        // cli.md's form to the byte: keys in its order, `", "` and `": "` between items.
        let items: Vec<String> = ckpt
            .tensors()
            .iter()
            .map(|t| {
                format!(
                    "{{\"name\": {}, \"dtype\": \"{}\", \"shape\": {}}}",
                    serde_json::Value::from(t.name.as_str()),
                    t.dtype.name(),
                    shape_text(&t.shape)
                )
            })
            .collect();
        writeln!(out, "[{}]", items.join(", ")).map_err(stdout_error)?;
    } else {
        for t in ckpt.tensors() {
            let parts = if t.is_partitioned() {
                format!("\t({})", counted(t.slices.len() as u64, "slice"))
            } else {
                String::new()
            };
            writeln!(
                out,
                "{}\t{}\t{}{parts}",
                tfckpt::escape_controls(&t.name),
                t.dtype,
                shape_text(&t.shape)
            )
            .map_err(stdout_error)?;
        }
    }
    Ok(())
}

fn get(ckpt_path: &Path, name: &str, out: &Path, slice: Option<&str>) -> CliResult {
    let ckpt = Checkpoint::open(ckpt_path)?;
    out::check_file_out(out, "--out", || inputs(&ckpt))?;
    let name = name.strip_suffix(":0").unwrap_or(name);
    // A tensor NumPy cannot hold fails before it is read (a slice keeps the tensor's rank).
    let rank = ckpt.tensor(name)?.shape.len();
    if rank > npy::NUMPY_MAX_DIMS {
        return Err(format!(
            "tensor {name:?} has rank {rank}, more dimensions than NumPy 2 reads ({}): `tfckpt \
             convert` writes it to a .safetensors file",
            npy::NUMPY_MAX_DIMS
        )
        .into());
    }
    let tensor = match slice {
        None => ckpt.read(name)?,
        Some(text) => {
            let slice = Slice::parse(text).map_err(|r| format!("--slice {text:?}: {r}"))?;
            ckpt.read_slice(name, &slice)?
        }
    };
    write_atomically(out, &tensor)
}

fn verify(ckpt: &Path) -> CliResult {
    let start = Instant::now();
    let ckpt = Checkpoint::open(ckpt)?;
    let report = ckpt.verify_all();
    let secs = start.elapsed().as_secs_f64();
    if let Some(first) = report.problems.first() {
        let more = match report.problems.len() {
            1 => String::new(),
            n => format!(" (and {})", counted(n as u64 - 1, "more problem")),
        };
        return Err(format!("{first}{more}").into());
    }
    for note in &report.incomplete {
        note!("warning: {}", tfckpt::escape_controls(note));
    }
    say!(
        "ok: {}, {}, {} verified in {:.3} s ({:.2} GB/s)",
        stored_count(report.tensors as u64),
        counted(report.bytes, "byte"),
        counted(report.blocks as u64, "table block"),
        secs,
        report.bytes as f64 / secs / 1e9
    )?;
    Ok(())
}

fn convert(ckpt_path: &Path, out: &Path) -> CliResult {
    let start = Instant::now();
    let ckpt = Checkpoint::open(ckpt_path)?;
    out::check_file_out(out, "OUT", || inputs(&ckpt))?;
    // The folders made for OUT are removed again if it fails; the file is renamed into place
    // only when every tensor was read and checked.
    let report = out::with_parents(out, || Ok(ckpt.write_safetensors(out)?))?;
    // Only after success: a failure prints its one `error:` line and nothing else.
    for s in &report.skipped {
        note!("warning: {}", tfckpt::escape_controls(&s.to_string()));
    }
    say!(
        "tfckpt convert: {}, {} written to {} in {:.3} s ({} skipped)",
        counted(report.tensors as u64, "tensor"),
        counted(report.bytes, "byte"),
        out.display(),
        start.elapsed().as_secs_f64(),
        report.skipped.len()
    )?;
    Ok(())
}

/// `count` and its noun, singular for one: "1 tensor", "2 tensors".
pub(crate) fn counted(count: u64, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// What `verify` counts: "1 stored tensor or slice", "2 stored tensors and slices".
pub(crate) fn stored_count(count: u64) -> String {
    match count {
        1 => "1 stored tensor or slice".into(),
        n => format!("{n} stored tensors and slices"),
    }
}

/// The files a command reads for CKPT: the checkpoint's, and the state file of a directory
/// (given as a path or as a `file://` URL).
fn inputs(ckpt: &Checkpoint) -> Vec<PathBuf> {
    let mut files = ckpt.files();
    files.extend(ckpt.state_file().map(Path::to_path_buf));
    files
}

/// Whether `init --out` names one safetensors file rather than a directory of .npy files: a name
/// ending in `.safetensors` (`out/.safetensors` too, which has no extension for `Path`) that is
/// not a directory. A trailing separator (`new.safetensors/`) names a directory, as `--out out/`
/// does.
fn is_safetensors_file(out: &Path) -> bool {
    let name = out.as_os_str().to_string_lossy();
    let ends_in_separator = name.chars().last().is_some_and(std::path::is_separator);
    name.ends_with(".safetensors") && !ends_in_separator && !out.is_dir()
}

fn parse_device(s: &str) -> Result<Device, String> {
    Device::parse(s).ok_or_else(|| format!("expected cpu, cuda or cuda:N, found {s:?}"))
}

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
struct Load {
    device: Device,
    threads: Option<usize>,
    copy: bool,
    /// (rank, ranks)
    rank: Option<(usize, usize)>,
}

fn init(ckpt: &Path, model: &str, map: &str, out: Option<&Path>, load: &Load) -> CliResult {
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

/// Writes `t` to `path` (a temporary name, in a folder that exists), naming `shown` (where it
/// goes) in errors.
fn write_npy(path: &Path, shown: &Path, t: &tfckpt::Tensor) -> CliResult {
    write_npy_into(new_npy_file(path, shown)?, shown, t)
}

/// Creates the file `path` for the .npy `shown`; never an existing one.
fn new_npy_file(path: &Path, shown: &Path) -> Result<std::fs::File, Box<dyn std::error::Error>> {
    // Always a new file: two names that differ only in case are one file on a case-insensitive
    // file system (macOS, Windows), where the second silently replaced the first.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "{}: another variable's file has this name on this file system (names that \
                     differ only in case are one file where case is not told apart)",
                    shown.display()
                )
            } else {
                format!("{}: cannot create the file: {e}", shown.display())
            }
        })?;
    Ok(file)
}

/// Writes the .npy `shown` of `t` into `file` and puts it on disk.
fn write_npy_into(file: std::fs::File, shown: &Path, t: &tfckpt::Tensor) -> CliResult {
    let fail = |e: std::io::Error| format!("{}: {e}", shown.display());
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    npy::write_tensor(&mut w, t).map_err(fail)?;
    // The data on disk before the file is renamed to its final name (see `out::sync_dir`).
    w.into_inner()
        .map_err(std::io::IntoInnerError::into_error)
        .and_then(|f| f.sync_all())
        .map_err(fail)?;
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

/// A path next to `path` for writing before the final rename: a short name of its own, so that
/// an `--out` name near the file system's 255-byte limit still has one.
fn temp_sibling(path: &Path) -> PathBuf {
    // The process id alone repeats (a container's first process is always 1) and a crashed run
    // leaves its file: the time in nanoseconds too (the file is made new, never reused).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    path.with_file_name(format!(".tfckpt-{}-{nanos:x}.npy.tmp", std::process::id()))
}

/// Writes one .npy under a temporary name and renames it into place: never a partial file, and
/// the parent folders it made are removed again if it fails.
fn write_atomically(out: &Path, t: &tfckpt::Tensor) -> CliResult {
    out::with_parents(out, || {
        let tmp = temp_sibling(out);
        let making = tfckpt::PartialOutput::making();
        let file = new_npy_file(&tmp, out)?;
        #[cfg(debug_assertions)]
        let paused = out::pause_before_listing("file");
        let _listed = making.list(&tmp);
        #[cfg(debug_assertions)]
        out::hold_after_listing(paused);
        let result = write_npy_into(file, out, t).and_then(|()| {
            std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))?;
            out::sync_dir(
                out.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            );
            Ok(())
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    })
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
