//! The temporary files and folders of the writes in progress in this process, so that a process
//! being stopped can remove them: [`remove_partial_outputs`].
//!
//! Every write of the crate (a checkpoint, a safetensors file) goes to temporary names first and
//! removes them itself when it fails or is dropped. The one case where no destructor runs is a
//! signal that ends the process (Ctrl-C on a long `convert`): what it was writing stays behind,
//! as large as the output, under a hidden name. A signal handler's thread calls
//! [`remove_partial_outputs`] before the process ends (the `tfckpt` binary does so on `SIGINT`,
//! `SIGTERM` and `SIGHUP`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

static LISTED: Mutex<Vec<(u64, PathBuf)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

fn listed() -> MutexGuard<'static, Vec<(u64, PathBuf)>> {
    LISTED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A temporary file or folder of a write in progress, listed for [`remove_partial_outputs`]
/// while this value lives. It removes nothing itself: the write that made the path removes it
/// when it fails, or renames it into place when it succeeds, and then drops this.
///
/// The crate's own writes list their temporary paths; this is for a program's own writes (the
/// `tfckpt` binary lists its `.npy` files and folders with it).
#[derive(Debug)]
#[must_use = "the path is listed only while the value lives"]
pub struct PartialOutput(u64);

impl PartialOutput {
    /// Lists `path` (a file, or a folder removed with everything in it) until the value is
    /// dropped.
    pub fn new(path: impl AsRef<Path>) -> PartialOutput {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        listed().push((id, path.as_ref().to_path_buf()));
        PartialOutput(id)
    }
}

impl Drop for PartialOutput {
    fn drop(&mut self) {
        listed().retain(|(id, _)| *id != self.0);
    }
}

/// Removes the temporary files and folders of every write still in progress in this process
/// (listed by [`PartialOutput`]), and returns the paths it removed. Those writes then fail (a
/// missing file, named in their error) or, if the process goes on, leave nothing behind; nothing
/// written completely is touched, since a finished write's temporary names no longer exist. A
/// folder is first renamed aside and removed there: a write renaming it into place at the same
/// moment either finds it gone (and fails) or wins (and keeps it whole), and nothing a write adds
/// to it meanwhile lands outside what is removed. Where the folder cannot be renamed (Windows, while
/// a file in it is open), it is removed in place.
///
/// For a signal handler's thread (`signal-hook`'s `Signals` iterator, the `ctrlc` crate), just
/// before the process ends, and not for inside a signal handler itself: it takes a lock and
/// allocates. Writes that start after it returns are listed and removed as usual.
pub fn remove_partial_outputs() -> Vec<PathBuf> {
    let mut listed = listed();
    let mut removed = Vec::new();
    for (id, path) in listed.drain(..) {
        let gone = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                let mut aside = path.clone().into_os_string();
                aside.push(format!(".removing-{}-{id}", std::process::id()));
                // Windows refuses to rename a folder holding an open file (the write's): there it
                // is removed where it is (std deletes open files with POSIX semantics).
                match std::fs::rename(&path, &aside) {
                    Ok(()) => std::fs::remove_dir_all(&aside).is_ok(),
                    Err(_) => std::fs::remove_dir_all(&path).is_ok(),
                }
            }
            Ok(_) => std::fs::remove_file(&path).is_ok(),
            Err(_) => false,
        };
        if gone {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry is the process's: these tests list paths in folders of their own and remove
    /// only through a fresh registry state they can see (never calling `remove_partial_outputs`,
    /// which would remove other tests' temporary files; the integration tests call it in
    /// processes of their own).
    #[test]
    fn a_dropped_listing_leaves_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let a = PartialOutput::new(dir.path().join("a"));
        let b = PartialOutput::new(dir.path().join("b"));
        let mine = || -> Vec<PathBuf> {
            listed()
                .iter()
                .filter(|(_, p)| p.starts_with(dir.path()))
                .map(|(_, p)| p.clone())
                .collect()
        };
        assert_eq!(mine(), [dir.path().join("a"), dir.path().join("b")]);
        drop(a);
        assert_eq!(mine(), [dir.path().join("b")]);
        drop(b);
        assert_eq!(mine(), Vec::<PathBuf>::new());
    }
}
