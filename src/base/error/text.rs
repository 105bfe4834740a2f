//! The pieces of error messages: how paths, tensors, lists and hints read in them.

use std::fmt;
use std::path::{Path, PathBuf};

/// `s` with every control character escaped as Rust writes it (`\n`, `\t`, `\u{0}`).
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .flat_map(|c| {
            let escaped = c.is_control().then(|| c.escape_default());
            escaped
                .into_iter()
                .flatten()
                .chain((!c.is_control()).then_some(c))
        })
        .collect::<String>()
        .into()
}

/// A path as errors show it; the empty path as `""`, which would show as nothing.
pub(super) fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "\"\"".into()
    } else {
        path.display().to_string()
    }
}

/// What a file that is no table was likely meant to be: the directory's state file, or the
/// MetaGraph TensorFlow writes beside a checkpoint, each passed in place of the checkpoint; or,
/// since a table's footer is its last 48 bytes, a checkpoint cut short (an index by its name).
pub(super) fn not_a_table_hint(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy());
    match name.as_deref() {
        Some("checkpoint") => format!(
            "this is a directory's checkpoint state file: pass the directory, {}",
            path.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .display()
        ),
        Some(n) if n.ends_with(".meta") => format!(
            "a .meta file holds the graph, not the values: pass the checkpoint's prefix, {}",
            path.with_extension("").display()
        ),
        Some(n) if n.ends_with(".index") => {
            "was it cut short (an interrupted copy or save)?".into()
        }
        _ => "is this a TensorFlow checkpoint, and all of it?".into(),
    }
}

/// The tensor a damaged table block was read for, as errors add it.
pub(super) fn reading(tensor: &Option<String>) -> String {
    tensor
        .as_ref()
        .map(|t| format!(" (read for tensor {})", named(t)))
        .unwrap_or_default()
}

/// A tensor as errors name it: quoted, and a stored slice of a partitioned tensor (the `NAME
/// (slice SPEC)` the index's key of it reads as) with its name quoted and the slice after it:
/// `"emb" (slice 0,2:-)`, not `"emb (slice 0,2:-)"`.
pub(crate) fn named(tensor: &str) -> String {
    if let Some((name, spec)) = tensor.rsplit_once(" (slice ") {
        if let Some(spec) = spec.strip_suffix(')') {
            if !spec.is_empty()
                && spec
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b",:-".contains(&b))
            {
                return format!("{name:?} (slice {spec})");
            }
        }
    }
    format!("{tensor:?}")
}

pub(crate) fn suggest(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        format!("; did you mean {}?", quoted.join(", "))
    }
}

/// The first 8 of `n` items, joined by `, `, then how many in all if there are more (an error
/// names a few of what may be thousands): `a, b`, `a, ..., h, ... 9000 in all`.
pub(crate) fn listed<T: fmt::Display>(items: impl Iterator<Item = T>, n: usize) -> String {
    let mut shown: Vec<String> = items.take(8).map(|i| i.to_string()).collect();
    if n > 8 {
        shown.push(format!("... {n} in all"));
    }
    shown.join(", ")
}

pub(super) fn absent(files: &[PathBuf]) -> String {
    match files {
        [] => String::new(),
        [one] => format!(
            "; file {} of this sharded V1 save is missing, and may hold it",
            one.display()
        ),
        _ => format!(
            "; files of this sharded V1 save are missing, and may hold it: {}{}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if files.len() >= 8 {
                " (the first 8 listed)"
            } else {
                ""
            }
        ),
    }
}

/// What [`ErrorKind::BufferSize`](super::ErrorKind::BufferSize) says: of a tensor's output
/// buffer, or of the buffer a trainer gave for a variable's value (in elements where it gave typed
/// ones).
pub(super) fn buffer_size(
    name: &str,
    variable: bool,
    elements: Option<crate::DType>,
    expected: u64,
    found: u64,
) -> String {
    let named = named(name);
    if !variable {
        return format!(
            "tensor {named}: output buffer holds {found} bytes, the tensor needs {expected}"
        );
    }
    match elements.and_then(|d| Some((d, d.size()? as u64))) {
        Some((d, size)) => format!(
            "variable {named}: the buffer given for it holds {} {d} elements, its value needs {} \
             ({expected} bytes)",
            found / size,
            expected / size
        ),
        None => format!(
            "variable {named}: the buffer given for it holds {found} bytes, its value needs \
             {expected}"
        ),
    }
}

/// ` bytes A..B` for an error message, or nothing.
pub(super) fn range_text(range: &Option<(u64, u64)>) -> String {
    match range {
        Some((a, b)) => format!(" bytes {a}..{b}"),
        None => String::new(),
    }
}
