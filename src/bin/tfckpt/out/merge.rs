//! Merging a finished tree of files into an existing `--out DIR`, every move undone on failure
//! or on a signal ending the process.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};

#[cfg(debug_assertions)]
use super::wait_for_signal;
use super::{io_err, sync_dir, CliResult};

/// Before merging `from` into the existing `to`: every file must land on a file or nothing, every
/// directory on a directory or nothing.
pub(super) fn check_merge(from: &Path, to: &Path) -> CliResult {
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
pub(super) fn merge(from: &Path, to: &Path) -> CliResult {
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
