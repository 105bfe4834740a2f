//! Resolving what the user passed (a directory, a prefix, or an `.index` file) to checkpoint files
//! (docs/format.md#12-the-checkpoint-state-file, #13-resolving-a-path-argument, #14-v1-or-v2).
//! Paths only: no tensor data is read here.

use std::path::{Path, PathBuf};

use crate::base::error::{Error, ErrorKind, Result};
use crate::format::bundle::index_path;

/// Which format a resolved checkpoint is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// A V2 bundle: `PREFIX.index` exists.
    V2 {
        prefix: PathBuf,
        /// The `checkpoint` state file that named it, when a directory was given.
        state: Option<PathBuf>,
    },
    /// A V1 checkpoint: the files matching the prefix (a glob for sharded V1 saves).
    V1 {
        prefix: PathBuf,
        files: Vec<PathBuf>,
        state: Option<PathBuf>,
    },
}

/// The URL in `arg` when it names a checkpoint on object storage (`s3://`, `s3a://`, `gs://`,
/// `http://`, `https://`; any `SCHEME://` is taken as a URL, and an unknown scheme is an error
/// there, not a local path).
pub(crate) fn as_url(arg: &Path) -> Option<&str> {
    let s = arg.to_str()?;
    let (scheme, _) = s.split_once("://")?;
    (!scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+'))
    .then_some(s)
}

/// The local path of a `file://[HOST]/PATH` URL (`/PATH`; the host is ignored), as TensorFlow's
/// local file system takes it: no percent-decoding.
pub(crate) fn file_url(arg: &Path) -> Option<PathBuf> {
    let rest = arg.to_str()?.strip_prefix("file://")?;
    rest.find('/').map(|i| PathBuf::from(&rest[i..]))
}

/// Why a pattern that matched the V2 index `index` (a path or URL ending in `.index`) is refused.
pub(crate) fn v2_pattern(index: &str) -> String {
    format!(
        "a pattern names the files of a sharded V1 save, and this one matches a V2 checkpoint's \
         files ({index}): give that checkpoint's prefix, {}",
        index.strip_suffix(".index").unwrap_or(index)
    )
}

/// Resolves `ckpt_dir_or_file` like TensorFlow's `load_checkpoint`, plus one convenience: a path to
/// `PREFIX.index` (or a data file `PREFIX.data-NNNNN-of-NNNNN`) means `PREFIX`.
pub(crate) fn resolve(arg: &Path) -> Result<Resolved> {
    let state = arg.is_dir().then(|| arg.join("checkpoint"));
    let prefix = match &state {
        Some(_) => latest_checkpoint(arg)?,
        None => strip_file_suffix(arg),
    };
    if index_path(&prefix).is_file() {
        return Ok(Resolved::V2 { prefix, state });
    }
    // A V2 data file given without its index would be read as a V1 file ("not an SSTable").
    if state.is_none() {
        if let Some(p) = data_file_prefix(arg) {
            if let Some(e) = unusable_index(Path::new(p)) {
                return Err(e);
            }
        }
    }
    let files = glob_files(&prefix)?;
    if files.is_empty() {
        // TensorFlow globs `P.index` too, then fails to open the pattern's own index: say why.
        if is_glob(&prefix) {
            if let Some(index) = glob_files(&index_path(&prefix))?.first() {
                return Err(ErrorKind::InvalidArgument(format!(
                    "{}: {}",
                    prefix.display(),
                    v2_pattern(&index.display().to_string())
                ))
                .into());
            }
        }
        return Err(
            unusable_index(&prefix).unwrap_or_else(|| ErrorKind::NotFound { path: prefix }.into())
        );
    }
    // A pattern names the files of a sharded V1 save; one that matches a V2 checkpoint's files
    // (`model-*`) would open its index and data files as V1 files, each "not an SSTable".
    if let Some(index) = files
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "index"))
    {
        return Err(ErrorKind::InvalidArgument(format!(
            "{}: {}",
            prefix.display(),
            v2_pattern(&index.display().to_string())
        ))
        .into());
    }
    Ok(Resolved::V1 {
        prefix,
        files,
        state,
    })
}

/// `PREFIX` of a path `PREFIX.data-NNNNN-of-NNNNN`.
fn data_file_prefix(arg: &Path) -> Option<&str> {
    let s = arg.to_str()?;
    let i = s.rfind(".data-")?;
    let tail = &s[i + 6..];
    let ok = tail.len() == 14
        && tail.as_bytes()[5..9] == *b"-of-"
        && tail[..5]
            .bytes()
            .chain(tail[9..].bytes())
            .all(|b| b.is_ascii_digit());
    ok.then_some(&s[..i])
}

/// Why nothing can be opened at `prefix`, whose `PREFIX.index` is no regular file and which no V1
/// file matches: `PREFIX.index` is there but no file (a directory, a link to nothing: its
/// open's error), or it is missing beside the checkpoint's data files. `None` where nothing of a
/// V2 checkpoint is there.
fn unusable_index(prefix: &Path) -> Option<Error> {
    let index = index_path(prefix);
    if std::fs::symlink_metadata(&index).is_ok() {
        let e = crate::base::mmap::open_regular(&index).err()?;
        // A link to nothing is as good as missing: on to the data files (and `NotFound`).
        if e.kind() != std::io::ErrorKind::NotFound {
            return Some(Error::io(&index, e));
        }
    }
    let name = prefix.file_name()?.to_str()?;
    let dir = match prefix.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let data = format!("{name}.data-");
    let first = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&data))
        .min()?;
    Some(
        ErrorKind::MissingIndex {
            index,
            data: dir.join(first),
        }
        .into(),
    )
}

/// `PREFIX.index` or `PREFIX.data-NNNNN-of-NNNNN` → `PREFIX`, when that prefix has an index.
fn strip_file_suffix(arg: &Path) -> PathBuf {
    let s = arg.to_string_lossy();
    let stripped = match s.strip_suffix(".index") {
        Some(p) => Some(p),
        None => data_file_prefix(arg),
    };
    match stripped {
        Some(p) if !index_path(arg).is_file() && index_path(Path::new(p)).is_file() => {
            PathBuf::from(p)
        }
        _ => arg.to_path_buf(),
    }
}

/// The newest checkpoint prefix named by `dir/checkpoint` (TF's `latest_checkpoint`).
pub(crate) fn latest_checkpoint(dir: &Path) -> Result<PathBuf> {
    let state = dir.join("checkpoint");
    let no_ckpt = |reason: String| -> Error {
        ErrorKind::NoCheckpointInDir {
            dir: dir.to_path_buf(),
            reason,
        }
        .into()
    };
    let read = |path: &Path| -> std::io::Result<Vec<u8>> {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut crate::base::mmap::open_regular(path)?, &mut text)?;
        Ok(text)
    };
    let text = match read(&state) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(no_ckpt(format!(
                "it has no 'checkpoint' state file{}",
                what_the_folder_holds(dir)
            )))
        }
        Err(e) => return Err(Error::io(&state, e)),
    };
    let text = String::from_utf8(text)
        .map_err(|_| no_ckpt(format!("{} is not UTF-8 text", state.display())))?;
    let path = parse_state(&text).map_err(|reason| {
        no_ckpt(format!(
            "{} is not a valid CheckpointState: {reason}",
            state.display()
        ))
    })?;
    if path.is_empty() {
        let reason = if text.trim().is_empty() {
            "the file is empty (it names no checkpoint: model_checkpoint_path is empty)"
        } else {
            "model_checkpoint_path is empty"
        };
        return Err(ErrorKind::BadStateFile {
            path: state,
            reason: reason.into(),
        }
        .into());
    }
    let p = Path::new(&path);
    let prefix = if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    };
    if index_path(&prefix).is_file() || !glob_files(&prefix)?.is_empty() {
        Ok(prefix)
    } else if let Some(e) = unusable_index(&prefix) {
        Err(e)
    } else {
        Err(no_ckpt(format!(
            "its state file names {} but no files match it",
            prefix.display()
        )))
    }
}

/// Where a folder without a state file holds a checkpoint all the same, where to find it (TF's
/// `latest_checkpoint` looks no further, and neither does the resolution): a SavedModel's
/// variables, or the V2 checkpoints whose index files the folder holds (their prefixes, newest
/// first, at most three named). Empty where it holds none.
fn what_the_folder_holds(dir: &Path) -> String {
    let variables = dir.join("variables").join("variables");
    let saved_model = ["saved_model.pb", "saved_model.pbtxt"]
        .iter()
        .any(|f| dir.join(f).is_file());
    if saved_model && index_path(&variables).is_file() {
        return saved_model_hint(variables.display());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return String::new();
    };
    let found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let prefix = dir.join(name.strip_suffix(".index")?);
            let meta = std::fs::metadata(e.path()).ok()?;
            let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            meta.is_file().then_some((modified, prefix))
        })
        .collect();
    checkpoints_hint(found.into_iter().map(|(t, p)| (t, p.display().to_string())))
}

/// What an error about a folder without a state file adds where the folder holds checkpoints:
/// how many, and the prefixes (paths or URLs) of the newest three, given with the times of their
/// index files. Those of one time (saved within a second, as object storage's times go) are in
/// the order of their numbers: `m-10` after `m-9`.
pub(crate) fn checkpoints_hint<T: Ord>(found: impl IntoIterator<Item = (T, String)>) -> String {
    let mut found: Vec<(T, String)> = found.into_iter().collect();
    found.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| natural(&b.1).cmp(&natural(&a.1)))
    });
    let named: Vec<&str> = found.iter().take(3).map(|(_, p)| p.as_str()).collect();
    let named = named.join(", ");
    match found.len() {
        0 => String::new(),
        1 => format!("; it holds the checkpoint {named}"),
        n @ 2..=3 => format!("; it holds {n} checkpoints: {named} (newest first)"),
        n => format!("; it holds {n} checkpoints, the newest {named}"),
    }
}

/// `name` in pieces that order as people number things: runs of digits by their value (`9` before
/// `10`), the rest as text.
fn natural(name: &str) -> Vec<(bool, u128, &str)> {
    let mut pieces = Vec::new();
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        let digits = c.is_ascii_digit();
        let end = rest
            .find(|c: char| c.is_ascii_digit() != digits)
            .unwrap_or(rest.len());
        let (piece, tail) = rest.split_at(end);
        // A run too long for a number orders as text, after every number.
        let value = digits.then(|| piece.parse::<u128>().ok()).flatten();
        pieces.push((value.is_none(), value.unwrap_or(0), piece));
        rest = tail;
    }
    pieces
}

/// What an error about a SavedModel's folder adds: the checkpoint of its variables (a path or a
/// URL).
pub(crate) fn saved_model_hint(variables: impl std::fmt::Display) -> String {
    format!("; it is a SavedModel, whose variables are the checkpoint {variables}")
}

pub(crate) use super::glob::{glob_files, is_glob};
use super::state::parse_state;

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints of one time are named in the order of their numbers, the newest first.
    #[test]
    fn checkpoints_of_one_time_are_ordered_by_their_numbers() {
        let found = ["d/m-9", "d/m-10", "d/m-2", "d/m-100"].map(|p| (0u8, p.to_string()));
        assert_eq!(
            checkpoints_hint(found),
            "; it holds 4 checkpoints, the newest d/m-100, d/m-10, d/m-9"
        );
        let found = [(1u8, "d/m-2".to_string()), (0, "d/m-10".to_string())];
        assert_eq!(
            checkpoints_hint(found),
            "; it holds 2 checkpoints: d/m-2, d/m-10 (newest first)"
        );
        assert!(natural("a9") < natural("a10") && natural("a10b") < natural("a10c"));
        assert!(natural("a99999999999999999999999999999999999999999") > natural("a10"));
    }

    #[test]
    fn data_file_names_give_their_prefix() {
        fn prefix(s: &str) -> Option<&str> {
            data_file_prefix(Path::new(s))
        }
        assert_eq!(prefix("/d/m.data-00000-of-00002"), Some("/d/m"));
        assert_eq!(prefix("m.ckpt.data-00001-of-00002"), Some("m.ckpt"));
        for not in [
            "m.data-0000-of-00002",
            "m.data-00000-of-0002",
            "m.data-00000-xx-00002",
            "m.data-0000a-of-00002",
            "m.data-00000-of-0000b",
            "m.data-",
            "m.index",
        ] {
            assert_eq!(prefix(not), None, "{not}");
        }
    }

    #[test]
    fn file_urls_are_local_paths() {
        let local = |s: &str| file_url(Path::new(s));
        assert_eq!(
            local("file:///data/ck/model-0"),
            Some("/data/ck/model-0".into())
        );
        assert_eq!(
            local("file://localhost/data/a%20b"),
            Some("/data/a%20b".into())
        );
        assert_eq!(local("file://host"), None);
        assert_eq!(local("/data/file:///x"), None);
        assert_eq!(local("s3://b/k"), None);
    }
}
