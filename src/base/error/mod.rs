//! Errors: one boxed, `#[non_exhaustive]` kind per failure, each naming the file and, where there is
//! one, the tensor, shard, offset and the expected vs found values.

use std::fmt;
use std::path::Path;

mod kind;
mod text;
pub use kind::ErrorKind;
pub use text::escape_controls;
use text::reading;
pub(crate) use text::{listed, named, suggest};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error type of every fallible function in this crate.
///
/// It is one pointer wide (the kind is boxed) so that `Result<T>` stays cheap; match on
/// [`Error::kind`] to tell failures apart.
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    /// The variables a load was reading the tensor for (see [`Error::loading`]).
    loading: Vec<String>,
}

impl Error {
    /// What went wrong, with its context.
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    /// Consumes the error and returns its kind.
    pub fn into_kind(self) -> ErrorKind {
        self.0.kind
    }

    /// The variables (or parts of partitioned variables) that `initialize` was loading when it
    /// met this error in the checkpoint's data (a checksum mismatch, a data file missing or cut
    /// short...): the variables of the tensor it was reading (for a candle model, the `Var`s'
    /// candle names). The message names them too (`; loading variable "dense/kernel"`). Empty
    /// for errors from elsewhere, and for those whose kind names its variable itself
    /// ([`ErrorKind::ShapeMismatch`], ...).
    pub fn loading(&self) -> &[String] {
        &self.0.loading
    }

    /// The same error with each of [`loading`](Self::loading)'s names passed through `f`.
    #[cfg(feature = "candle")]
    pub(crate) fn rename_loading(mut self, f: impl Fn(&str) -> Option<String>) -> Error {
        for name in &mut self.0.loading {
            if let Some(new) = f(name) {
                *name = new;
            }
        }
        self
    }

    /// The error of a load reading a tensor for `variables`: they are named unless the kind
    /// names its variable itself or is no fault of the data (a cancelled load).
    pub(crate) fn while_loading<'v>(
        mut self,
        variables: impl IntoIterator<Item = &'v str>,
    ) -> Error {
        let named = matches!(
            self.0.kind,
            ErrorKind::Cancelled
                | ErrorKind::ShapeMismatch { .. }
                | ErrorKind::DtypeMismatch { .. }
                | ErrorKind::TensorGone { .. }
                | ErrorKind::MappedTensorNotFound { .. }
                | ErrorKind::BadVariable { .. }
                | ErrorKind::CandleVariable { .. }
                | ErrorKind::VariableNotFound { .. }
                | ErrorKind::MappedVariableNotFound { .. }
        );
        if !named && self.0.loading.is_empty() {
            self.0.loading = variables.into_iter().map(str::to_string).collect();
        }
        self
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        ErrorKind::Io {
            path: path.to_path_buf(),
            source,
        }
        .into()
    }

    /// Names `tensor` in an error raised while reading it that does not name it already (a
    /// damaged table block, a failed or changed object-store read); other errors are returned
    /// as they are.
    pub(crate) fn reading_tensor(mut self, name: &str) -> Error {
        match &mut self.0.kind {
            ErrorKind::BlockChecksum { tensor, .. } | ErrorKind::CorruptTable { tensor, .. } => {
                tensor.get_or_insert_with(|| name.to_string());
            }
            ErrorKind::Remote { reason: text, .. }
            | ErrorKind::RemoteChanged { what: text, .. } => {
                let suffix = reading(&Some(name.to_string()));
                if !text.ends_with(&suffix) {
                    text.push_str(&suffix);
                }
            }
            _ => {}
        }
        self
    }

    /// A [`ErrorKind::CandleVariable`] gets `hint` where there is one; any other error is
    /// returned as it is.
    #[cfg(feature = "candle")]
    pub(crate) fn with_candle_hint(mut self, hint: Option<String>) -> Error {
        if let (ErrorKind::CandleVariable { hint: h, .. }, Some(_)) = (&mut self.0.kind, &hint) {
            *h = hint;
        }
        self
    }

    /// A [`ErrorKind::DtypeMismatch`] gets the hint `hint(variable dtype, tensor dtype)` gives (none
    /// removes it); any other error is returned as it is.
    pub(crate) fn with_dtype_hint(
        self,
        hint: impl FnOnce(crate::DType, crate::DType) -> Option<String>,
    ) -> Error {
        match self.into_kind() {
            ErrorKind::DtypeMismatch {
                ckpt,
                variable,
                variable_dtype,
                tensor,
                tensor_dtype,
                hint: _,
            } => ErrorKind::DtypeMismatch {
                hint: hint(variable_dtype, tensor_dtype),
                ckpt,
                variable,
                variable_dtype,
                tensor,
                tensor_dtype,
            },
            kind => kind,
        }
        .into()
    }

    /// Whether the error means that a file, tensor or variable was not found (as opposed to a damaged
    /// file or a mismatch). An object on object storage that was found when the checkpoint was
    /// opened or first read, and is gone since, is [`ErrorKind::RemoteChanged`] and not found. A
    /// data shard that exists but cannot be opened ([`ErrorKind::MissingShard`] with a directory
    /// in its place, or without read permission) is found.
    pub fn is_not_found(&self) -> bool {
        match &self.0.kind {
            ErrorKind::RemoteChanged { what, .. } => return what.starts_with(GONE),
            // A shard that is there but cannot be opened (a directory in its place, no permission)
            // was found.
            ErrorKind::MissingShard { source, .. } => {
                return source.kind() == std::io::ErrorKind::NotFound
            }
            _ => {}
        }
        matches!(
            self.0.kind,
            ErrorKind::NotFound { .. }
                | ErrorKind::MissingIndex { .. }
                | ErrorKind::NoCheckpointInDir { .. }
                | ErrorKind::TensorNotFound { .. }
                | ErrorKind::MissingV1Shard { .. }
                | ErrorKind::VariableNotFound { .. }
                | ErrorKind::MappedVariableNotFound { .. }
                | ErrorKind::MappedTensorNotFound { .. }
                | ErrorKind::TensorGone { .. }
                | ErrorKind::RemoteAccess {
                    not_found: true,
                    ..
                }
        )
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Error {
        Error(Box::new(Inner {
            kind,
            loading: Vec::new(),
        }))
    }
}

/// The message, as [`Display`](fmt::Display) gives it: what `main` returning `Result<(), Error>`
/// (or a `Box<dyn Error>` holding one) and `unwrap` print. `{:#?}` gives the kind's fields, and
/// the variables a load was reading ([`Error::loading`]) where there are some.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            if self.0.loading.is_empty() {
                fmt::Debug::fmt(&self.0.kind, f)
            } else {
                f.debug_struct("Error")
                    .field("kind", &self.0.kind)
                    .field("loading", &self.0.loading)
                    .finish()
            }
        } else {
            fmt::Display::fmt(self, f)
        }
    }
}

impl fmt::Display for Error {
    /// The kind's message on one line: control characters that came from file contents (a tensor
    /// name holding a NUL or a newline, say) are escaped (`\u{0}`, `\n`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.kind.to_string();
        if let [one] = &self.0.loading[..] {
            text.push_str(&format!("; loading variable {one:?}"));
        } else if !self.0.loading.is_empty() {
            let names = self.0.loading.iter().map(|v| format!("{v:?}"));
            text.push_str(&format!(
                "; loading variables {}",
                listed(names, self.0.loading.len())
            ));
        }
        f.write_str(&escape_controls(&text))
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0.kind)
    }
}

/// What [`ErrorKind::RemoteChanged`] says of an object that no longer exists.
pub(crate) const GONE: &str = "it no longer exists: HTTP 404 Not Found";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_slice_is_named_with_its_name_quoted_alone() {
        assert_eq!(named("emb"), "\"emb\"");
        assert_eq!(named("emb (slice 0,2:-)"), "\"emb\" (slice 0,2:-)");
        // Any other name that reads so is quoted whole.
        assert_eq!(named("x (slice a)"), "\"x (slice a)\"");
        assert_eq!(named("x (slice )"), "\"x (slice )\"");
        assert_eq!(named("x (slice 1"), "\"x (slice 1\"");
        let e: Error = ErrorKind::TensorChecksum {
            path: "d".into(),
            tensor: "emb (slice 0,2:-)".into(),
            offset: 0,
            size: 4,
            what: "checksum",
            expected: 1,
            found: 2,
        }
        .into();
        assert_eq!(
            e.to_string(),
            "d: tensor \"emb\" (slice 0,2:-) at offset 0 (4 bytes): checksum mismatch: stored \
             0x00000001, computed 0x00000002"
        );
    }

    /// `main` returning an error through `?` prints its `Debug`: the message, not the fields.
    #[test]
    fn debug_is_the_message() {
        let e: Error = ErrorKind::NotFound {
            path: "/no/such/ckpt".into(),
        }
        .into();
        assert_eq!(format!("{e:?}"), e.to_string());
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert_eq!(format!("{boxed:?}"), boxed.to_string());
        assert!(boxed.to_string().contains("/no/such/ckpt"), "{boxed}");
        let e: Error = ErrorKind::NotFound {
            path: "/no/such/ckpt".into(),
        }
        .into();
        assert!(format!("{e:#?}").starts_with("NotFound {"), "{e:#?}");
    }

    /// An error's one line never carries a raw control character, wherever it comes from (a
    /// path here, which no quoting escapes): each is escaped as Rust writes it, and the rest of
    /// the text is kept as it was.
    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let e: Error = ErrorKind::NotFound {
            path: "/ckpts/a\nb\tc\u{0}d/é".into(),
        }
        .into();
        let p = r"/ckpts/a\nb\tc\u{0}d/é";
        assert_eq!(
            e.to_string(),
            format!(
                "checkpoint not found: no directory, V2 index ({p}.index) or V1 file matches {p}"
            )
        );
        assert!(matches!(
            escape_controls("plain é"),
            std::borrow::Cow::Borrowed("plain é")
        ));
    }
}
