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
mod init;
mod model_json;
mod npy;
mod out;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::{Parser, Subcommand};
use tfckpt::{Checkpoint, Device, Slice};

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
            let load = init::Load {
                device,
                threads: threads.map(usize::from),
                copy,
                rank,
            };
            init::run(&ckpt, &model, &map, out.as_deref(), &load)
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
        "ok: {}, {}, {} verified {}",
        stored_count(report.tensors as u64),
        counted(report.bytes, "byte"),
        counted(report.blocks as u64, "table block"),
        took(secs, Some(report.bytes))
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
        "tfckpt convert: {}, {} written to {} {} ({} skipped)",
        counted(report.tensors as u64, "tensor"),
        counted(report.bytes, "byte"),
        out.display(),
        took(start.elapsed().as_secs_f64(), None),
        report.skipped.len()
    )?;
    Ok(())
}

/// "in 1.234 s (0.85 GB/s)" for `bytes` in `secs`; under 10 ms "in 0.4 ms", with no rate (a
/// rate over so short a time says more about the clock than the disk).
pub(crate) fn took(secs: f64, bytes: Option<u64>) -> String {
    match bytes {
        // (9.95 ms and up would print as "10.0 ms")
        _ if secs < 0.00995 => format!("in {:.1} ms", secs * 1e3),
        Some(b) => format!("in {secs:.3} s ({:.2} GB/s)", b as f64 / secs / 1e9),
        None => format!("in {secs:.3} s"),
    }
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

#[cfg(test)]
mod tests {
    use super::took;

    /// Milliseconds and no rate under 10 ms ("0.000 s (0.04 GB/s)" said nothing); seconds and a
    /// rate from there.
    #[test]
    fn short_times_are_milliseconds_without_a_rate() {
        assert_eq!(took(0.0004, Some(1050)), "in 0.4 ms");
        assert_eq!(took(0.00994, None), "in 9.9 ms");
        assert_eq!(took(0.00996, Some(0)), "in 0.010 s (0.00 GB/s)");
        assert_eq!(took(2.0, Some(3_000_000_000)), "in 2.000 s (1.50 GB/s)");
        assert_eq!(took(0.5, None), "in 0.500 s");
    }
}
