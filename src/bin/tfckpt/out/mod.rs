//! All-or-nothing output: on failure `--out` is as it was (on a network file system and on
//! Windows, but for the lock file writers take turns on, `.tfckpt-lock`: see [`lock()`]).
//!
//! * Parent folders a command creates for `--out` are removed again if it fails, or if a signal
//!   ends it (as far as they are empty then).
//! * `init --out DIR` writes every file into a fresh temporary directory beside DIR first. A new
//!   DIR is then that directory, renamed into place in one step. An existing DIR takes the files
//!   by a merge under an exclusive lock on DIR (so concurrent writers take turns, each merge
//!   whole; on a network file system and on Windows, a lock file in it, `.tfckpt-lock`, is
//!   locked instead and left there: see [`lock()`]):
//!   a file already there is first moved aside, and if any move fails every move is undone and
//!   the files moved aside are put back. If another process makes a new DIR first (ranks writing
//!   into one folder, say), the files are merged into it the same way. A signal that ends the
//!   process during a merge stops it at its next move and waits for the undo: DIR is left as it
//!   was. A process killed in the middle (SIGKILL) can leave a `.tfckpt-out-*` or
//!   `.tfckpt-aside-*` folder behind.
//! * `get`, `convert` and `init --out FILE.safetensors` write one file under a temporary name beside
//!   it and rename it into place only when everything succeeded (for safetensors the library does
//!   this: `Checkpoint::write_safetensors`, `VariableStore::write_safetensors`). With `--rank`,
//!   `init --out FILE.safetensors` does not replace a file another process wrote after it started
//!   (another rank's): it fails and writes nothing ([`replace_unless_changed`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

mod lock;
mod merge;

use lock::lock;
#[cfg(any(unix, windows))]
pub(crate) use merge::wait_for_merges;
use merge::{check_merge, merge};

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn io_err(path: &Path, e: std::io::Error) -> Box<dyn std::error::Error> {
    format!("{}: {e}", path.display()).into()
}

/// `out` cannot be written because a temporary `what` cannot be made in `folder` (`e`, tempfile's
/// error, whose text ends in the temporary name: the output and its folder are named instead).
fn no_temporary(out: &Path, what: &str, folder: &Path, e: std::io::Error) -> String {
    let said = e.to_string();
    let reason = said.rsplit_once(" at path ").map_or(&*said, |(r, _)| r);
    let folder = folder.display();
    format!(
        "{}: cannot create a temporary {what} in {folder} to write it: {reason}",
        out.display()
    )
}

/// Refuses a file `--out` that ends in a path separator, or whose rename into place would replace
/// what it must not: anything but a regular file (a device such as `/dev/full`, a FIFO, a
/// symbolic link, a directory), or one of `inputs`, the files of the checkpoint being read (the
/// same file by device and inode, hard links included; asked for only when `out` exists). `arg`
/// names the argument in errors (`--out`, or `OUT` for `convert`'s positional one).
pub(crate) fn check_file_out(
    out: &Path,
    arg: &str,
    inputs: impl FnOnce() -> Vec<PathBuf>,
) -> CliResult {
    // `name.safetensors/`: the file would be opened as a folder ("Not a directory").
    if out
        .to_string_lossy()
        .chars()
        .last()
        .is_some_and(std::path::is_separator)
    {
        return Err(format!(
            "{arg} {}: ends in a path separator, as a folder does, but names one file: drop the \
             trailing separator",
            out.display()
        )
        .into());
    }
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        // A file where a folder of the path should be ("Not a directory"), no permission.
        Err(e) => return Err(format!("{arg} {}: cannot be written: {e}", out.display()).into()),
    };
    let t = meta.file_type();
    if !t.is_file() {
        let what = if t.is_dir() {
            "a directory"
        } else if t.is_symlink() {
            "a symbolic link"
        } else {
            "not a regular file (a device, FIFO or socket)"
        };
        return Err(format!(
            "{arg} {}: exists and is {what}, which writing the output would replace; name a \
             regular file or a new path",
            out.display()
        )
        .into());
    }
    // The same file: by device and inode on Unix (hard links too); elsewhere by canonical path.
    #[cfg(unix)]
    let same = |input: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(input).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
    };
    #[cfg(not(unix))]
    let same = {
        let out = std::fs::canonicalize(out).ok();
        move |input: &Path| out.is_some() && std::fs::canonicalize(input).ok() == out
    };
    if let Some(input) = inputs().into_iter().find(|input| same(input)) {
        return Err(format!(
            "{arg} {}: is {}, a file of the checkpoint being read",
            out.display(),
            input.display()
        )
        .into());
    }
    Ok(())
}

/// The folders [`create_dirs`] made, to remove again (deepest first) when the command fails.
/// Listed for [`remove_made_folders`] while the value lives: a signal ending the process runs
/// no destructor.
#[must_use]
pub(crate) struct CreatedDirs {
    id: u64,
    dirs: Vec<PathBuf>,
}

/// The folders of every [`CreatedDirs`] alive, by its id.
static MADE: Mutex<Vec<(u64, Vec<PathBuf>)>> = Mutex::new(Vec::new());

fn made() -> MutexGuard<'static, Vec<(u64, Vec<PathBuf>)>> {
    MADE.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CreatedDirs {
    fn new() -> CreatedDirs {
        CreatedDirs::listed_in(&mut made())
    }

    /// A new value, listed in `made` (the locked [`MADE`]).
    fn listed_in(made: &mut Vec<(u64, Vec<PathBuf>)>) -> CreatedDirs {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        made.push((id, Vec::new()));
        CreatedDirs {
            id,
            dirs: Vec::new(),
        }
    }

    /// Adds `dir`, just made, here and to this value's entry in `made` (the locked [`MADE`]).
    fn push(&mut self, made: &mut [(u64, Vec<PathBuf>)], dir: PathBuf) {
        if let Some((_, dirs)) = made.iter_mut().find(|(id, _)| *id == self.id) {
            dirs.push(dir.clone());
        }
        self.dirs.push(dir);
    }

    /// Removes the folders made, deepest first, as long as they are empty (another process may
    /// have put something there meanwhile: that is left alone).
    pub(crate) fn undo(self) {
        remove_empty(&self.dirs);
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        made().retain(|(id, _)| *id != self.id);
    }
}

/// Removes `dirs` (each the parent of the next) deepest first, as long as they are empty.
fn remove_empty(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
    }
}

/// Removes the folders made for the outputs still being written, as far as they are empty: for a
/// signal ending the process, after `tfckpt::remove_partial_outputs_for_exit` removed what was in
/// them. From then on, until the process ends, no folder is made ([`create_dirs`] waits).
#[cfg(any(unix, windows))]
pub(crate) fn remove_made_folders() {
    let mut made = made();
    for (_, dirs) in made.drain(..) {
        remove_empty(&dirs);
    }
    std::mem::forget(made);
}

/// Creates the missing folders of `dir` (like `create_dir_all`) and says which it made.
pub(crate) fn create_dirs(dir: &Path) -> Result<CreatedDirs, Box<dyn std::error::Error>> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.as_os_str().is_empty() && !d.exists() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    // Each folder made and listed as one step: a signal's `remove_made_folders` waits meanwhile
    // (made first and listed after, a signal between the two left the folder).
    let mut list = made();
    let mut made = CreatedDirs::listed_in(&mut list);
    #[cfg(debug_assertions)]
    let mut paused = false;
    for m in missing.into_iter().rev() {
        match std::fs::create_dir(&m) {
            Ok(()) => {
                #[cfg(debug_assertions)]
                {
                    paused |= pause_before_listing("parent");
                }
                made.push(&mut list, m)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && m.is_dir() => {}
            Err(e) => {
                drop(list); // `made`'s drop takes it
                made.undo();
                return Err(io_err(&m, e));
            }
        }
    }
    drop(list);
    #[cfg(debug_assertions)]
    hold_after_listing(paused);
    Ok(made)
}

/// Runs `write` with the parent folders of `path` created, removing those it made if it fails.
pub(crate) fn with_parents<T>(
    path: &Path,
    write: impl FnOnce() -> Result<T, Box<dyn std::error::Error>>,
) -> Result<T, Box<dyn std::error::Error>> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let made = match parent {
        Some(p) => create_dirs(p)?,
        None => CreatedDirs::new(),
    };
    let result = write();
    match &result {
        Err(_) => made.undo(),
        // The folders made on disk too: each one's entry in the folder above it.
        Ok(_) => made
            .dirs
            .iter()
            .filter_map(|d| d.parent())
            .for_each(sync_dir),
    }
    result
}

/// What was at a file path when a command started: the file's identity (device, inode, size and
/// modification time), or nothing. [`replace_unless_changed`] compares it with what is there at
/// the end, to tell whether another process wrote the path meanwhile.
#[derive(PartialEq, Debug)]
pub(crate) struct Seen(Option<(u64, u64, u64, Option<std::time::SystemTime>)>);

pub(crate) fn seen(path: &Path) -> Seen {
    Seen(std::fs::symlink_metadata(path).ok().map(|m| {
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        (dev, ino, m.len(), m.modified().ok())
    }))
}

/// Writes one file: `write` fills a temporary file beside `path`, which is then renamed to `path`
/// under a lock on its folder, unless `path` is no longer what it was when the command started
/// (`before`): another process wrote it meanwhile, and nothing is written. For ranks (`init
/// --rank`): ranks that share one output file would otherwise replace each other's values, the
/// last one's alone left, with no error.
pub(crate) fn replace_unless_changed(
    path: &Path,
    before: &Seen,
    write: impl FnOnce(&Path) -> CliResult,
) -> CliResult {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A name no other process takes (ranks in containers on one shared disk may share a PID).
    let making = tfckpt::PartialOutput::making();
    let tmp = tempfile::Builder::new()
        .prefix(".tfckpt-")
        .suffix(".safetensors.tmp")
        .tempfile_in(folder)
        .map_err(|e| no_temporary(path, "file", folder, e))?
        .into_temp_path();
    #[cfg(debug_assertions)]
    let paused = pause_before_listing("file");
    let _listed = making.list(&tmp);
    #[cfg(debug_assertions)]
    hold_after_listing(paused);
    // Errors name the output, not the temporary name.
    let named = |e: Box<dyn std::error::Error>| -> Box<dyn std::error::Error> {
        let (t, p) = (tmp.display().to_string(), path.display().to_string());
        e.to_string().replace(&t, &p).into()
    };
    let result = write(&tmp).map_err(named).and_then(|()| {
        // Tests: in a debug build, `TFCKPT_TEST_WAIT_FOR_OTHER_WRITER` holds this process here
        // until another one has written `path` (at most 60 s).
        #[cfg(debug_assertions)]
        if std::env::var_os("TFCKPT_TEST_WAIT_FOR_OTHER_WRITER").is_some() {
            let t = std::time::Instant::now();
            while seen(path) == *before && t.elapsed().as_secs() < 60 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let _lock = lock(folder);
        if seen(path) != *before {
            return Err(format!(
                "{}: written by another process while this one was loading (ranks that share \
                 one output file would replace each other's values: give each rank a file of \
                 its own); nothing written",
                path.display()
            )
            .into());
        }
        std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
        // The rename on disk too, as the library's own safetensors writes are.
        sync_dir(folder);
        Ok(())
    });
    match result {
        Ok(()) => {
            let _ = tmp.keep(); // renamed: nothing to remove
        }
        Err(_) => {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    result
}

/// Puts a directory's entries (files created or renamed in it) on disk, as a file's `sync_all`
/// does its data: a crash after the command ends then leaves every output whole, never an empty or
/// missing file under its final name. Best effort: where a directory cannot be opened (Windows)
/// or synced, the outputs are still written.
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// `sync_dir` for `dir` and every directory below it.
fn sync_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                sync_tree(&e.path());
            }
        }
    }
    sync_dir(dir);
}

/// Writes a tree of files into `dir` all or nothing: `write` fills a temporary directory on
/// `dir`'s filesystem, which then becomes `dir` or is merged into it (see the module).
pub(crate) fn write_tree(dir: &Path, write: impl FnOnce(&Path) -> CliResult) -> CliResult {
    let exists = dir.is_dir();
    let parent = if exists {
        dir.to_path_buf()
    } else {
        dir.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    with_parents(&parent.join("x"), || {
        // Listed until after the folder's removal (declared first, dropped last).
        let _listed;
        let making = tfckpt::PartialOutput::making();
        let tmp = tempfile::Builder::new()
            .prefix(".tfckpt-out-")
            .tempdir_in(&parent)
            .map_err(|e| no_temporary(dir, "folder", &parent, e))?;
        #[cfg(debug_assertions)]
        let paused = pause_before_listing("temporary");
        _listed = making.list(tmp.path());
        #[cfg(debug_assertions)]
        hold_after_listing(paused);
        write(tmp.path())?;
        // The files' names on disk before they take their final ones (each file synced its data).
        sync_tree(tmp.path());
        // A new DIR: the whole tree in one rename, unless another process made DIR meanwhile
        // (a directory that is not empty cannot be renamed over): then a merge into it.
        if !exists {
            match std::fs::rename(tmp.path(), dir) {
                Ok(()) => {
                    let _ = tmp.keep(); // it is DIR now
                    sync_dir(&parent);
                    return Ok(());
                }
                Err(_) if dir.is_dir() => {}
                Err(e) => return Err(io_err(dir, e)),
            }
        }
        let _lock = lock(dir);
        check_merge(tmp.path(), dir)?;
        merge(tmp.path(), dir)
    })
}

/// Tests' pauses, in a debug build: waits until a signal is ending the process (at most 60 s).
#[cfg(debug_assertions)]
fn wait_for_signal() {
    let t = std::time::Instant::now();
    while !crate::ENDING.load(Ordering::SeqCst) && t.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Tests of the removal on a signal, in a debug build: with `TFCKPT_TEST_PAUSE_BEFORE_LISTING`
/// set to `what`, holds a write where it has just made a temporary path and not yet listed it for
/// removal (`parent`: each folder made for an output's path, `temporary`: an `--out DIR`'s
/// temporary folder, `file`: an output file's temporary name, `demo`: the demo's folder), until a
/// signal is ending the process (no wait once one has come). Says whether it was asked to.
#[cfg(debug_assertions)]
pub(crate) fn pause_before_listing(what: &str) -> bool {
    let asked = std::env::var("TFCKPT_TEST_PAUSE_BEFORE_LISTING").is_ok_and(|v| v == what);
    if asked {
        wait_for_signal();
    }
    asked
}

/// After a [`pause_before_listing`] that paused, the path now listed: 5 s more while the process
/// ends (the write must not finish first).
#[cfg(debug_assertions)]
pub(crate) fn hold_after_listing(paused: bool) {
    if paused {
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After `remove_made_folders` (a signal ending the process), a write that goes on makes no
    /// folder for its output: `create_dirs` waits. In a process of its own (the list stays locked).
    #[cfg(any(unix, windows))]
    #[test]
    fn no_folder_is_made_after_the_made_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "out::tests::made_folders_removed_in_this_process",
            ])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env("TFCKPT_TEST_MADE_DIR", dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert!(
            stdout.contains("before: missing; after: missing"),
            "{stdout}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[cfg(any(unix, windows))]
    #[test]
    #[ignore = "run by no_folder_is_made_after_the_made_ones_are_removed, in a process of its own"]
    fn made_folders_removed_in_this_process() {
        let Some(dir) = std::env::var_os("TFCKPT_TEST_MADE_DIR").map(PathBuf::from) else {
            return;
        };
        let _made = create_dirs(&dir.join("before/deeper")).unwrap();
        remove_made_folders();
        let after = dir.join("after");
        let a = after.clone();
        let (started, writer_runs) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            started.send(()).unwrap();
            std::mem::forget(create_dirs(&a));
        });
        // The writer runs: given a second, it would have made the folder by then.
        writer_runs.recv().unwrap();
        let t = std::time::Instant::now();
        while !after.exists() && t.elapsed().as_secs() < 1 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let state = |p: &Path| if p.exists() { "made" } else { "missing" };
        println!(
            "before: {}; after: {}",
            state(&dir.join("before")),
            state(&after)
        );
        // The process ends here, as the signal's thread ends it (`_made` is never dropped).
        std::process::exit(0);
    }
}
