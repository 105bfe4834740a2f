//! All-or-nothing output: on failure `--out` is as it was (on a network file system and on
//! Windows, but for the lock file writers take turns on, `.tfckpt-lock`: see [`lock`]).
//!
//! * Parent folders a command creates for `--out` are removed again if it fails, or if a signal
//!   ends it (as far as they are empty then).
//! * `init --out DIR` writes every file into a fresh temporary directory beside DIR first. A new
//!   DIR is then that directory, renamed into place in one step. An existing DIR takes the files
//!   by a merge under an exclusive lock on DIR (so concurrent writers take turns, each merge
//!   whole; on a network file system and on Windows, a lock file in it, `.tfckpt-lock`, is
//!   locked instead and left there: see [`lock`]):
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

/// The file whose lock stands in for DIR's where DIR itself cannot be locked across machines.
const LOCK_FILE: &str = ".tfckpt-lock";

/// An exclusive lock for the writers merging into the directory `dir` (or replacing a file in
/// it), held until the returned file is dropped. On a local file system, `flock` on `dir` itself.
/// On a network or cluster file system (NFS, SMB, Ceph, Lustre, GPFS, FUSE, ... by
/// [`on_network_fs`]), where Linux takes a directory's `flock` on this machine only (only a
/// file's goes to the server), and on Windows, where a directory does not open as a file, and
/// wherever the directory's lock fails: a lock on the file [`LOCK_FILE`] in `dir`, opened for
/// writing (an exclusive lock on NFS needs it; see [`open_lock_file`]), made for it and left there
/// (removing it would let a writer that opened it before lock a file no longer there while the
/// next one locks a new one). `None` where neither can be had (Lustre without `-o flock`, on NFS
/// a lock file this user may not write): writers then do not take turns (see the README). In a
/// debug build, `TFCKPT_TEST_LOCK_FILE` (any value) takes the lock file on any file system, for
/// its tests.
fn lock(dir: &Path) -> Option<std::fs::File> {
    #[cfg(unix)]
    let file_only = on_network_fs(dir)
        || (cfg!(debug_assertions) && std::env::var_os("TFCKPT_TEST_LOCK_FILE").is_some());
    #[cfg(unix)]
    if !file_only {
        use std::os::unix::io::AsRawFd;
        if let Ok(f) = std::fs::File::open(dir) {
            loop {
                // SAFETY: flock on a descriptor this function owns; it blocks until no other
                // writer holds the lock, and the lock goes with the descriptor.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                    return Some(f);
                }
                if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    break;
                }
            }
        }
    }
    let f = open_lock_file(&dir.join(LOCK_FILE), dir)?;
    loop {
        match f.lock() {
            Ok(()) => return Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Opens (or makes) the lock file `path` in `dir`. A new one takes `dir`'s read and write
/// permissions (a folder `rwxrwxr-x` gives `rw-rw-r--`), whatever the umask: every user who may
/// merge into `dir` (write into it) may then open it for writing, which an exclusive lock on NFS
/// needs. One this user may not write (its permissions narrowed since) is opened for reading,
/// which a local lock and Windows' take (NFS's then fails: writers do not take turns).
fn open_lock_file(path: &Path, dir: &Path) -> Option<std::fs::File> {
    let mut rw = std::fs::OpenOptions::new();
    rw.read(true).write(true);
    match rw.clone().create_new(true).open(path) {
        Ok(f) => {
            #[cfg(unix)]
            if let Ok(d) = std::fs::metadata(dir) {
                use std::os::unix::fs::PermissionsExt;
                let mode = d.permissions().mode() & 0o666;
                let _ = f.set_permissions(std::fs::Permissions::from_mode(mode));
            }
            #[cfg(not(unix))]
            let _ = dir;
            Some(f)
        }
        Err(_) => rw.open(path).or_else(|_| std::fs::File::open(path)).ok(),
    }
}

/// Whether `dir` is on a file system that other machines share (Linux: `statfs`'s type), where
/// a directory's `flock` locks only this machine's writers out.
#[cfg(unix)]
fn on_network_fs(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: `struct statfs` is plain integers, for which all zeros is a value.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `statfs` writes one `struct statfs` into `st`, for the NUL-terminated `c`.
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return false;
        }
        is_network_fs_type(st.f_type as u64 & 0xffff_ffff)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

/// The `statfs` types (Linux's `f_type`, `linux/magic.h` and the file systems' own sources) of
/// file systems that several machines mount at once.
#[cfg(any(target_os = "linux", test))]
fn is_network_fs_type(t: u64) -> bool {
    const NETWORK: [u64; 14] = [
        0x6969,     // NFS
        0x517b,     // SMB
        0xfe534d42, // SMB2
        0xff534d42, // CIFS
        0x00c36400, // Ceph
        0x0bd00bd0, // Lustre
        0x47504653, // GPFS (IBM Storage Scale)
        0x19830326, // BeeGFS
        0x65735546, // FUSE (sshfs, gcsfuse, s3fs, JuiceFS, ...)
        0x01021997, // 9P
        0x5346414f, // AFS
        0x6b414653, // kAFS
        0x01161970, // GFS2
        0x7461636f, // OCFS2
    ];
    NETWORK.contains(&t)
}

/// Before merging `from` into the existing `to`: every file must land on a file or nothing, every
/// directory on a directory or nothing.
fn check_merge(from: &Path, to: &Path) -> CliResult {
    for e in std::fs::read_dir(from).map_err(|e| io_err(from, e))? {
        let e = e.map_err(|e| io_err(from, e))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        // `symlink_metadata`: a dangling link is something, not nothing.
        match (src.is_dir(), dst.symlink_metadata().is_ok(), dst.is_dir()) {
            (true, true, true) => check_merge(&src, &dst)?,
            (true, true, false) => {
                return Err(format!("{} exists and is not a directory", dst.display()).into())
            }
            (false, true, true) => {
                return Err(format!("{} exists and is a directory", dst.display()).into())
            }
            _ => {}
        }
    }
    Ok(())
}

/// One step of a merge, to undo if a later one fails.
enum Step {
    /// `dst` was moved aside to `aside`.
    Aside { dst: PathBuf, aside: PathBuf },
    /// `src` was moved to `dst`.
    Moved { src: PathBuf, dst: PathBuf },
}

/// Held by a merge from its first move to the end of its undo. A signal ending the process waits
/// for it ([`wait_for_merges`]) before removing the temporary folders, one of which a merge moves
/// files out of: the merge sees the signal at its next move and undoes what it did.
static MERGING: Mutex<()> = Mutex::new(());

/// For a signal ending the process (`crate::ENDING` set first): waits until no merge is moving
/// files, and keeps later merges from starting while the guard lives.
#[cfg(any(unix, windows))]
pub(crate) fn wait_for_merges() -> MutexGuard<'static, ()> {
    MERGING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Moves the tree `from` into the existing directory `to`. Existing files are moved aside (into a
/// temporary folder of their own in `to`) before being replaced; on any failure, or a signal
/// ending the process, every step is undone in reverse order. If the undo fails too, the folder
/// of files moved aside is kept and named in the error: nothing of the user's is deleted.
fn merge(from: &Path, to: &Path) -> CliResult {
    let _merging = MERGING.lock().unwrap_or_else(PoisonError::into_inner);
    let aside = tempfile::Builder::new()
        .prefix(".tfckpt-aside-")
        .tempdir_in(to)
        .map_err(|e| io_err(to, e))?;
    let mut steps = Vec::new();
    let result = merge_steps(from, to, aside.path(), &mut steps);
    let Err(e) = result else {
        // The moves on disk: every folder a file was moved into.
        let mut folders: Vec<&Path> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Moved { dst, .. } => dst.parent(),
                Step::Aside { .. } => None,
            })
            .collect();
        folders.sort();
        folders.dedup();
        folders.into_iter().for_each(sync_dir);
        return Ok(());
    };
    let mut undo = Ok(());
    for s in steps.into_iter().rev() {
        undo = undo.and(match s {
            Step::Moved { src, dst } => std::fs::rename(&dst, &src),
            Step::Aside { dst, aside } => std::fs::rename(&aside, &dst),
        });
    }
    Err(match undo {
        Ok(()) => e,
        Err(u) => {
            let kept = aside.keep();
            let e = format!(
                "{e}; undoing the merge also failed ({u}): {} may be incomplete, and the files it replaced are in {}",
                to.display(),
                kept.display()
            );
            // A signal is ending the process: `main` prints no error then, so this one is
            // printed here (the user must know where the files went).
            if crate::ENDING.load(Ordering::SeqCst) {
                note!("error: {}", tfckpt::escape_controls(&e));
            }
            e.into()
        }
    })
}

fn merge_steps(from: &Path, to: &Path, aside: &Path, steps: &mut Vec<Step>) -> CliResult {
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .map_err(|e| io_err(from, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io_err(from, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if dst == aside {
            continue;
        }
        if src.is_dir() && dst.is_dir() {
            merge_steps(&src, &dst, aside, steps)?;
            continue;
        }
        if dst.symlink_metadata().is_ok() {
            let to_aside = aside.join(format!("{}", steps.len()));
            before_move()?;
            std::fs::rename(&dst, &to_aside).map_err(|e| io_err(&dst, e))?;
            steps.push(Step::Aside {
                dst: dst.clone(),
                aside: to_aside,
            });
        }
        before_move()?;
        std::fs::rename(&src, &dst).map_err(|e| io_err(&dst, e))?;
        steps.push(Step::Moved { src, dst });
    }
    Ok(())
}

/// Before each move of a merge: a signal ending the process stops the merge (which then undoes
/// its moves). Tests of the undo path: in a debug build, `TFCKPT_TEST_FAIL_MOVE_AT=N` makes the
/// N-th move of a merge fail (a failing move cannot be arranged portably: as root, a read-only
/// folder takes renames), and `TFCKPT_TEST_PAUSE_MOVE_AT=N` holds the merge before its N-th move
/// until a signal comes (at most 60 s), for a test to send one there. Release builds have no such
/// hooks.
fn before_move() -> CliResult {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::AtomicUsize;
        static MOVES: AtomicUsize = AtomicUsize::new(0);
        let n = MOVES.fetch_add(1, Ordering::Relaxed) + 1;
        let at = |var: &str| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                == Some(n)
        };
        if at("TFCKPT_TEST_FAIL_MOVE_AT") {
            return Err(format!("move {n} failed (TFCKPT_TEST_FAIL_MOVE_AT)").into());
        }
        if at("TFCKPT_TEST_PAUSE_MOVE_AT") {
            wait_for_signal();
        }
    }
    if crate::ENDING.load(Ordering::SeqCst) {
        return Err("a signal is ending the process".into());
    }
    Ok(())
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

    #[test]
    fn network_file_systems_are_told_from_local_ones() {
        for nfs_smb_fuse in [0x6969, 0xfe534d42, 0x65735546] {
            assert!(is_network_fs_type(nfs_smb_fuse), "{nfs_smb_fuse:#x}");
        }
        // ext4, XFS, btrfs, tmpfs, overlayfs
        for local in [0xef53, 0x58465342, 0x9123683e, 0x01021994, 0x794c7630] {
            assert!(!is_network_fs_type(local), "{local:#x}");
        }
    }
}
