//! The temporary files and folders of the writes in progress in this process, so that a process
//! being stopped can remove them: [`remove_partial_outputs`].
//!
//! Every write of the crate (a checkpoint, a safetensors file) goes to temporary names first and
//! removes them itself when it fails or is dropped. The one case where no destructor runs is a
//! signal that ends the process (Ctrl-C on a long `convert`): what it was writing stays behind,
//! as large as the output, under a hidden name. A signal handler's thread calls
//! [`remove_partial_outputs_for_exit`] before the process ends (the `tfckpt` binary does so on
//! `SIGINT`, `SIGTERM` and `SIGHUP`).
//!
//! A write makes its temporary path and lists it as one step ([`PartialOutput::making`]): a
//! removal running meanwhile waits for the listing and removes the path too. Made first and listed
//! after, a signal between the two left the path behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::base::par::PerProcess;

/// This process's listed paths. Per process: a child forked while another thread of the parent
/// held the lock (a write making its temporary path) would wait for it forever at its first
/// write, and the parent's writes in progress are not the child's to remove.
static LISTED: PerProcess<Mutex<Vec<(u64, PathBuf)>>> = PerProcess::new();
static NEXT: AtomicU64 = AtomicU64::new(0);

fn listed() -> MutexGuard<'static, Vec<(u64, PathBuf)>> {
    let list = LISTED.get_or_try_init(|| Ok::<_, ()>(Mutex::default()));
    let list = list.unwrap_or_else(|()| unreachable!("making an empty list cannot fail"));
    list.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A temporary file or folder of a write in progress, listed for [`remove_partial_outputs`]
/// while this value lives. It removes nothing itself: the write that made the path removes it
/// when it fails, or renames it into place when it succeeds, and then drops this.
///
/// The crate's own writes list their temporary paths; this is for a program's own writes (the
/// `tfckpt` binary lists its `.npy` files and folders with it):
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// # let folder = tempfile::tempdir()?;
/// # let folder = folder.path();
/// // Declared first, dropped last: listed until after the folder's own removal.
/// let _listed;
/// // Removals wait from here until the folder is listed (or `making` is dropped).
/// let making = tfckpt::PartialOutput::making();
/// let tmp = tempfile::Builder::new().prefix(".out-").tempdir_in(folder)?;
/// _listed = making.list(tmp.path());
/// // ... write into `tmp`, then rename it into place ...
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "the path is listed only while the value lives"]
pub struct PartialOutput(u64);

impl PartialOutput {
    /// Lists `path` (a file, or a folder removed with everything in it) until the value is
    /// dropped. For a path made before: a removal between its making and this call misses it.
    /// [`PartialOutput::making`] leaves no such moment.
    pub fn new(path: impl AsRef<Path>) -> PartialOutput {
        PartialOutput::making().list(path)
    }

    /// For a write about to make a temporary file or folder: removals ([`remove_partial_outputs`]
    /// and [`remove_partial_outputs_for_exit`]) wait until the path made is listed
    /// ([`MakingPartialOutput::list`]) or the returned value is dropped (nothing made). So no
    /// path is ever made and not yet listed while a removal runs.
    ///
    /// Make the path and nothing more meanwhile: other listings, in this thread or in threads it
    /// waits for, would wait for this one.
    pub fn making() -> MakingPartialOutput {
        let listed = listed();
        #[cfg(test)]
        tests::seen_at_making();
        MakingPartialOutput(listed)
    }
}

/// A temporary path being made, from [`PartialOutput::making`] until
/// [`MakingPartialOutput::list`]: removals of partial outputs wait for it.
#[must_use = "removals wait only while the value lives"]
pub struct MakingPartialOutput(MutexGuard<'static, Vec<(u64, PathBuf)>>);

impl MakingPartialOutput {
    /// Lists `path`, which the write has just made, until the returned value is dropped.
    pub fn list(mut self, path: impl AsRef<Path>) -> PartialOutput {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        tests::seen_at_listing(path.as_ref());
        self.0.push((id, path.as_ref().to_path_buf()));
        PartialOutput(id)
    }
}

impl std::fmt::Debug for MakingPartialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MakingPartialOutput")
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
/// a file in it is open), it is removed in place. A write making its temporary path meanwhile
/// ([`PartialOutput::making`]) is waited for, and what it made removed too.
///
/// For a process that goes on; writes that start after it returns are listed and removed as
/// usual. A process about to end calls [`remove_partial_outputs_for_exit`] instead.
///
/// Not for inside a signal handler itself: it takes a lock and allocates.
pub fn remove_partial_outputs() -> Vec<PathBuf> {
    remove(&mut listed(), |_| true)
}

/// [`remove_partial_outputs`], for a process that ends right after, as a signal handler's thread
/// does (`signal-hook`'s `Signals` iterator, the `ctrlc` crate): from then on, until the process
/// ends, every write that would make a temporary path waits, and so does any listing or
/// unlisting of one. Nothing made after the removal is left behind either, where the writes that
/// go on while the process ends would otherwise make new temporary files the removal never saw.
///
/// Call it once, just before the process ends: a second call never returns (from the same thread,
/// it may panic instead).
pub fn remove_partial_outputs_for_exit() -> Vec<PathBuf> {
    let mut listed = listed();
    let removed = remove(&mut listed, |_| true);
    // The lock stays taken until the process ends.
    std::mem::forget(listed);
    removed
}

/// Removes the listed paths `which` selects, unlists them, and returns those removed.
fn remove(listed: &mut Vec<(u64, PathBuf)>, which: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for (id, path) in listed.drain(..) {
        if !which(&path) {
            kept.push((id, path));
            continue;
        }
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
    *listed = kept;
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::ffi::OsString;

    /// Each making and listing of this thread, while [`watch`] watches a folder: the names in the
    /// folder at the making, then the path listed.
    type Seen = Vec<(Vec<OsString>, Option<PathBuf>)>;

    thread_local! {
        static WATCHED: RefCell<Option<(PathBuf, Seen)>> = const { RefCell::new(None) };
    }

    pub(super) fn seen_at_making() {
        WATCHED.with_borrow_mut(|w| {
            if let Some((dir, seen)) = w {
                let names = std::fs::read_dir(&*dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                seen.push((names, None));
            }
        })
    }

    pub(super) fn seen_at_listing(path: &Path) {
        WATCHED.with_borrow_mut(|w| {
            if let Some((_, seen)) = w {
                let last = seen.last_mut().expect("listed without a making");
                assert_eq!(last.1, None, "listed twice: {path:?}");
                last.1 = Some(path.to_path_buf());
            }
        })
    }

    /// Runs `write`, which makes its temporary paths in `dir` on this thread, and checks that
    /// each was made inside its `making` (it was not in `dir` yet when `making` began) and listed.
    /// Returns the names listed.
    fn watch(dir: &Path, write: impl FnOnce()) -> Vec<String> {
        WATCHED.set(Some((dir.to_path_buf(), Vec::new())));
        write();
        let (_, seen) = WATCHED.take().unwrap();
        seen.into_iter()
            .map(|(before, path)| {
                let path = path.expect("a making without a listing");
                assert_eq!(path.parent(), Some(dir), "{path:?}");
                let name = path.file_name().unwrap();
                assert!(
                    !before.iter().any(|b| b == name),
                    "{path:?} was made before its `making`: {before:?}"
                );
                name.to_string_lossy().into_owned()
            })
            .collect()
    }

    /// Every temporary path the crate's writes make (the checkpoint writer's shards, index and
    /// `checkpoint` file here; the safetensors exports' folders below) is made inside its
    /// `making`, so that a removal meanwhile waits for it. Made first and listed after
    /// (`PartialOutput::new` after the making), a removal between the two missed it.
    #[test]
    fn the_crates_writes_make_each_temporary_path_inside_its_making() {
        use crate::format::writer::{write_checkpoint_state, CheckpointWriter, WriterOptions};
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let prefix = dir.join("m");
        let listed = watch(dir, || {
            let options = WriterOptions {
                num_shards: 2,
                ..Default::default()
            };
            let mut writer = CheckpointWriter::create(&prefix, options).unwrap();
            let t = crate::Tensor::from_f32(&[2], &[1.0, 2.0]).unwrap();
            writer.add("t", (&t).into()).unwrap();
            writer.finish().unwrap();
            write_checkpoint_state(dir, "m").unwrap();
        });
        let pid = std::process::id();
        let names = [
            "m.data-00000-of-00002",
            "m.data-00001-of-00002",
            "m.index",
            "checkpoint",
        ];
        let expected: Vec<String> = names
            .iter()
            .map(|n| format!("{n}.tempstate{pid}"))
            .collect();
        assert_eq!(listed, expected);
    }

    /// The same for the folder each safetensors export writes in (a checkpoint's, a store's).
    #[cfg(feature = "safetensors")]
    #[test]
    fn the_safetensors_exports_make_their_temporary_folder_inside_its_making() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let prefix = dir.join("m");
        let mut writer = crate::CheckpointWriter::create(&prefix, Default::default()).unwrap();
        let t = crate::Tensor::from_f32(&[2], &[1.0, 2.0]).unwrap();
        writer.add("t", (&t).into()).unwrap();
        writer.finish().unwrap();
        let ckpt = crate::Checkpoint::open(&prefix).unwrap();
        let listed = watch(dir, || {
            ckpt.write_safetensors(dir.join("c.safetensors")).unwrap();
        });
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(listed[0].starts_with(".tfckpt-"), "{listed:?}");

        let mut store = crate::VariableStore::new();
        let (f32, zeros) = (crate::DType::F32, crate::Init::Zeros);
        store.get_variable("t", &[2], f32, zeros).unwrap();
        store.initialize(crate::Device::Cpu).unwrap();
        let listed = watch(dir, || {
            store.write_safetensors(dir.join("s.safetensors")).unwrap();
        });
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(listed[0].starts_with(".tfckpt-"), "{listed:?}");
    }

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

    /// A removal while a write is making its temporary path waits for the listing and removes
    /// the path. Made, then listed (as before `making`), the removal ran in between, found nothing
    /// listed, and the file stayed.
    #[test]
    fn a_removal_waits_for_a_path_being_made_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("made");
        let (started, making_runs) = std::sync::mpsc::channel();
        let p = path.clone();
        let writer = std::thread::spawn(move || {
            let making = PartialOutput::making();
            started.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            std::fs::write(&p, b"partial").unwrap();
            making.list(&p)
        });
        making_runs.recv().unwrap();
        let removed = remove(&mut listed(), |p| p.starts_with(dir.path()));
        assert_eq!(removed, std::slice::from_ref(&path));
        assert!(!path.exists());
        drop(writer.join().unwrap());
        // Dropped without a listing (the making failed): removals go on at once.
        let making = PartialOutput::making();
        assert_eq!(format!("{making:?}"), "MakingPartialOutput");
        drop(making);
        assert_eq!(
            remove(&mut listed(), |p| p.starts_with(dir.path())),
            Vec::<PathBuf>::new()
        );
    }

    /// After `remove_partial_outputs_for_exit`, a write that goes on makes no new temporary path
    /// while the process ends: it waits. In a process of its own (the registry stays locked).
    #[test]
    fn nothing_is_made_after_the_removal_for_exit() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "base::partial::tests::removal_for_exit_in_this_process",
            ])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env("TFCKPT_TEST_PARTIAL_DIR", dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("removed [\"before\"]; after: missing"),
            "{stdout}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    #[ignore = "run by nothing_is_made_after_the_removal_for_exit, in a process of its own"]
    fn removal_for_exit_in_this_process() {
        let Some(dir) = std::env::var_os("TFCKPT_TEST_PARTIAL_DIR").map(PathBuf::from) else {
            return;
        };
        let before = dir.join("before");
        let making = PartialOutput::making();
        std::fs::write(&before, b"partial").unwrap();
        let _listed = making.list(&before);
        let removed: Vec<_> = remove_partial_outputs_for_exit()
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().to_path_buf())
            .collect();
        let after = dir.join("after");
        let a = after.clone();
        let (started, writer_runs) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            started.send(()).unwrap();
            let making = PartialOutput::making();
            std::fs::write(&a, b"partial").unwrap();
            std::mem::forget(making.list(&a));
        });
        // The writer runs: given a second, it would have made the file by then.
        writer_runs.recv().unwrap();
        let t = std::time::Instant::now();
        while !after.exists() && t.elapsed().as_secs() < 1 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let state = if after.exists() { "made" } else { "missing" };
        println!("removed {removed:?}; after: {state}");
        // The process ends here, as a signal handler's thread ends it (`_listed` is never dropped).
        std::process::exit(0);
    }
}
