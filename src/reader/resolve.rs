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
    V2 { prefix: PathBuf },
    /// A V1 checkpoint: the files matching the prefix (a glob for sharded V1 saves).
    V1 {
        prefix: PathBuf,
        files: Vec<PathBuf>,
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
    let prefix = if arg.is_dir() {
        latest_checkpoint(arg)?
    } else {
        strip_file_suffix(arg)
    };
    if index_path(&prefix).is_file() {
        return Ok(Resolved::V2 { prefix });
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
        return Err(ErrorKind::NotFound { path: prefix }.into());
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
    Ok(Resolved::V1 { prefix, files })
}

/// `PREFIX.index` or `PREFIX.data-NNNNN-of-NNNNN` → `PREFIX`, when that prefix has an index.
fn strip_file_suffix(arg: &Path) -> PathBuf {
    let s = arg.to_string_lossy();
    let stripped = if let Some(p) = s.strip_suffix(".index") {
        Some(p)
    } else {
        s.rfind(".data-").and_then(|i| {
            let tail = &s[i + 6..];
            let ok = tail.len() == 14
                && tail.as_bytes()[5..9] == *b"-of-"
                && tail[..5]
                    .bytes()
                    .chain(tail[9..].bytes())
                    .all(|b| b.is_ascii_digit());
            ok.then_some(&s[..i])
        })
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
            return Err(no_ckpt("it has no 'checkpoint' state file".into()))
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
        return Err(ErrorKind::BadStateFile {
            path: state,
            reason: "model_checkpoint_path is empty".into(),
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
    } else {
        Err(no_ckpt(format!(
            "its state file names {} but no files match it",
            prefix.display()
        )))
    }
}

/// Parses the text-format `CheckpointState` and returns `model_checkpoint_path` (last one wins).
pub(crate) fn parse_state(text: &str) -> Result<String, String> {
    let mut path = String::new();
    let mut t = Tokens {
        s: text.as_bytes(),
        pos: 0,
    };
    while let Some(field) = t.ident()? {
        t.skip_ws();
        // Every field is a scalar (or a repeated scalar), whose ':' the text format requires.
        if t.peek() != Some(b':') {
            return Err(format!("expected ':' after {field} at byte {}", t.pos));
        }
        t.pos += 1;
        t.skip_ws();
        match field.as_str() {
            "model_checkpoint_path" => path = t.string()?,
            "all_model_checkpoint_paths" => drop(t.string()?),
            "all_model_checkpoint_timestamps" | "last_preserved_timestamp" => t.number()?,
            other => return Err(format!("unknown field {other:?}")),
        }
        t.skip_ws();
        if matches!(t.peek(), Some(b';') | Some(b',')) {
            t.pos += 1;
        }
    }
    Ok(path)
}

struct Tokens<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Tokens<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'#' {
                while self.peek().is_some_and(|c| c != b'\n') {
                    self.pos += 1;
                }
            } else if c.is_ascii_whitespace() || c == 0x0b || (0x1c..=0x1f).contains(&c) {
                // Python's `\s` (the text format's tokenizer) in ASCII: also \v and \x1c-\x1f.
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn ident(&mut self) -> Result<Option<String>, String> {
        self.skip_ws();
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.pos += 1;
        }
        if self.pos == start {
            return match self.peek() {
                None => Ok(None),
                Some(c) => Err(format!("unexpected {:?} at byte {}", c as char, self.pos)),
            };
        }
        Ok(Some(
            String::from_utf8_lossy(&self.s[start..self.pos]).into_owned(),
        ))
    }

    /// A `double` as the text format's `ParseFloat` takes it: Python's `float()` of the token,
    /// else `inf`/`infinity`/`nan` (any case), else the token without trailing `f`s.
    fn number(&mut self) -> Result<(), String> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'_'))
        {
            self.pos += 1;
        }
        let token = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or_default();
        let lower = token.to_ascii_lowercase();
        let ok = python_float(token)
            || lower.strip_prefix('-').unwrap_or(&lower).starts_with("inf")
            || lower.starts_with("nan")
            || python_float(token.trim_end_matches('f'));
        if !ok {
            return Err(format!(
                "expected a number at byte {start}, found {token:?}"
            ));
        }
        Ok(())
    }

    /// One or more adjacent quoted strings (text format concatenates them), C escapes decoded.
    fn string(&mut self) -> Result<String, String> {
        let mut out = Vec::new();
        let mut any = false;
        while let Some(q @ (b'"' | b'\'')) = self.peek() {
            any = true;
            self.pos += 1;
            loop {
                let c = self.peek().ok_or("unterminated string")?;
                self.pos += 1;
                if c == q {
                    break;
                }
                if c == b'\n' {
                    return Err("newline in string".into());
                }
                if c != b'\\' {
                    out.push(c);
                    continue;
                }
                let e = self.peek().ok_or("unterminated escape")?;
                self.pos += 1;
                match e {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'a' => out.push(7),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'v' => out.push(11),
                    b'\\' | b'\'' | b'"' => out.push(e),
                    b'0'..=b'7' => {
                        let mut v = u32::from(e - b'0');
                        for _ in 0..2 {
                            match self.peek() {
                                Some(d @ b'0'..=b'7') => {
                                    v = v * 8 + u32::from(d - b'0');
                                    self.pos += 1;
                                }
                                _ => break,
                            }
                        }
                        // Past \377 Python's `unicode_escape` makes a character no byte holds,
                        // which `raw_unicode_escape` writes as the text `\u0100` to `\u01ff`.
                        match u8::try_from(v) {
                            Ok(b) => out.push(b),
                            Err(_) => out.extend(format!("\\u{v:04x}").bytes()),
                        }
                    }
                    b'x' => {
                        let mut v = 0u32;
                        let mut n = 0;
                        while n < 2 {
                            match self.peek().and_then(|d| (d as char).to_digit(16)) {
                                Some(d) => {
                                    v = v * 16 + d;
                                    self.pos += 1;
                                    n += 1;
                                }
                                None => break,
                            }
                        }
                        if n == 0 {
                            return Err("\\x without hex digits".into());
                        }
                        out.push(v as u8);
                    }
                    // `\uXXXX`, `\UXXXXXXXX`: Python's `unicode_escape` makes the code point,
                    // and `raw_unicode_escape` turns it back into bytes: one byte below 256
                    // (so `\u00c3\u00a9` is the UTF-8 of `é`, and a lone `\u00e9` is no UTF-8
                    // and refused, as Python refuses it), the escape's text above.
                    b'u' | b'U' => {
                        let digits = if e == b'u' { 4 } else { 8 };
                        let hex = self
                            .s
                            .get(self.pos..self.pos + digits)
                            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                            .ok_or_else(|| {
                                format!("truncated \\{} escape ({digits} hex digits)", e as char)
                            })?;
                        // Eight ASCII hex digits: at most 0xffffffff.
                        let cp = u32::from_str_radix(std::str::from_utf8(hex).unwrap_or("0"), 16)
                            .unwrap_or(u32::MAX);
                        self.pos += digits;
                        match cp {
                            0..=0xff => out.push(cp as u8),
                            0x100..=0xffff => out.extend(format!("\\u{cp:04x}").bytes()),
                            0x1_0000..=0x10_ffff => out.extend(format!("\\U{cp:08x}").bytes()),
                            _ => return Err(format!("illegal Unicode character \\U{cp:08x}")),
                        }
                    }
                    b'N' => return Err("unsupported escape \\N{...}".into()),
                    // Python's `unicode_escape` keeps any other escape as it is (`\?` included).
                    other => out.extend_from_slice(&[b'\\', other]),
                }
            }
            self.skip_ws();
        }
        if !any {
            return Err(format!("expected a quoted string at byte {}", self.pos));
        }
        String::from_utf8(out).map_err(|_| "path is not UTF-8".to_string())
    }
}

/// Whether Python's `float()` takes `s` (a token: no spaces): decimal digits with single `_`
/// between them, an optional point and exponent, or `inf`, `infinity`, `nan`, with a sign.
fn python_float(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s).to_ascii_lowercase();
    if matches!(s.as_str(), "inf" | "infinity" | "nan") {
        return true;
    }
    let digits = |d: &str| {
        !d.is_empty()
            && d.split('_').all(|g| !g.is_empty())
            && d.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    };
    let (mantissa, exponent) = match s.split_once('e') {
        Some((m, e)) => (m, Some(e)),
        None => (s.as_str(), None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => {
            (a.is_empty() || digits(a))
                && (b.is_empty() || digits(b))
                && !(a.is_empty() && b.is_empty())
        }
        None => digits(mantissa),
    };
    mantissa_ok && exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)))
}

pub(crate) use super::glob::{glob_files, is_glob};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file() {
        let text = "model_checkpoint_path: \"/data/exp/ck1/model-0\"\nall_model_checkpoint_paths: \"/data/exp/ck1/model-0\"\n";
        assert_eq!(parse_state(text).unwrap(), "/data/exp/ck1/model-0");
        let text = "# comment\nall_model_checkpoint_timestamps: 1.7e9\nmodel_checkpoint_path: 'a\\x41' \"b\\101\"\nlast_preserved_timestamp: 12.5\nmodel_checkpoint_path: \"ckpt-2\"";
        assert_eq!(parse_state(text).unwrap(), "ckpt-2");
        assert_eq!(
            parse_state("model_checkpoint_path: 'a\\x41' \"b\\101\"").unwrap(),
            "aAbA"
        );
        // Every C escape of the text format (TensorFlow writes the state file with it).
        assert_eq!(
            parse_state(r#"model_checkpoint_path: "\n\t\r\a\b\f\v\\\'\"\0\x7""#).unwrap(),
            "\n\t\r\x07\x08\x0c\x0b\\'\"\0\x07"
        );
        // `\x` takes at most two hex digits, as Python's `unicode_escape` does.
        assert_eq!(
            parse_state(r#"model_checkpoint_path: "\x414b""#).unwrap(),
            "A4b"
        );
        // `\u`, `\U` and octal past `\377` as Python's `CUnescape` (`unicode_escape`, then
        // `raw_unicode_escape`) gives them, each checked against it: a byte below 256, the
        // escape's text above.
        for (text, want) in [
            (r"ck\u0041", Ok("ckA")),
            (r"\u00c3\u00a9", Ok("é")),
            (r"\U00000041", Ok("A")),
            (r"\u20AC", Ok(r"\u20ac")),
            (r"\U0001F600", Ok(r"\U0001f600")),
            (r"a\400b", Ok(r"a\u0100b")),
            (r"\777", Ok(r"\u01ff")),
            (r"\u00e9", Err("not UTF-8")),
            (r"\u12", Err("truncated \\u")),
            (r"\U00110000", Err("illegal Unicode")),
            (r"\N{DIGIT ONE}", Err("\\N")),
        ] {
            let got = parse_state(&format!("model_checkpoint_path: \"{text}\""));
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(w), "{text}"),
                Err(e) => assert!(
                    got.as_ref().is_err_and(|g| g.contains(e)),
                    "{text}: {got:?}"
                ),
            }
        }
        // Other escapes stay as written, as Python's `unicode_escape` (the text format's
        // `CUnescape`) keeps them: `\?` and `\q` are two characters each.
        assert_eq!(
            parse_state(r#"model_checkpoint_path: "a\?b\qc\8""#).unwrap(),
            "a\\?b\\qc\\8"
        );
        for bad in [r#""\u00e9""#, r#""\N{DIGIT ONE}""#] {
            assert!(
                parse_state(&format!("model_checkpoint_path: {bad}")).is_err(),
                "{bad}"
            );
        }
        assert!(parse_state(r#"model_checkpoint_path: "\xg""#)
            .unwrap_err()
            .contains("\\x without hex digits"));
        assert!(parse_state("bogus_field: 1").is_err());
        // A value may end with ';' or ',', as the text format allows (`TryConsume(',')`, else ';').
        assert_eq!(
            parse_state("model_checkpoint_path: \"a\"; all_model_checkpoint_paths: \"a\",\nlast_preserved_timestamp: 1;")
                .as_deref(),
            Ok("a")
        );
        // A scalar field's ':' is required; `\v` and `\x1c`-`\x1f` are spaces, as in Python.
        assert!(parse_state("model_checkpoint_path \"m\"")
            .unwrap_err()
            .contains("expected ':' after model_checkpoint_path"));
        assert_eq!(
            parse_state("\x0bmodel_checkpoint_path:\x1f\"m\"\x0c").unwrap(),
            "m"
        );
        // Numbers as the text format's ParseFloat takes them.
        for good in [
            "12",
            "-1.5e+09",
            "1_000.5",
            ".5",
            "5.",
            "1e5",
            "inf",
            "-Infinity",
            "NaN",
            "1.5f",
            "-inff",
            "infxyz",
            "+2",
        ] {
            let text = format!("last_preserved_timestamp: {good}\nmodel_checkpoint_path: \"m\"");
            assert_eq!(parse_state(&text).as_deref(), Ok("m"), "{good}");
        }
        for bad in [
            "abc", "0x10", "12abc", "1__0", "_1", "1_", ".", "e5", "1e", "--1", "",
        ] {
            let text = format!("last_preserved_timestamp: {bad}\nmodel_checkpoint_path: \"m\"");
            assert!(parse_state(&text).is_err(), "{bad}");
        }
        assert!(parse_state("model_checkpoint_path: \"unterminated").is_err());
        assert_eq!(parse_state("").unwrap(), "");
    }

    /// The writer's state file reads back whatever the prefix holds, quoted as TensorFlow's
    /// `text_format.MessageToString` quotes it (a newline made a file nothing could read).
    #[test]
    fn the_writers_state_file_reads_back_whatever_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        for prefix in [
            "model-0",
            "a\"b'c\\d",
            "new\nline\ttab\rcr",
            "é/ü-ß",
            "\u{1}\u{7f}~ ",
        ] {
            crate::format::writer::write_checkpoint_state(dir.path(), prefix).unwrap();
            let text = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
            assert_eq!(parse_state(&text).as_deref(), Ok(prefix), "{text}");
            assert_eq!(text.lines().count(), 2, "{text}");
            assert!(text.is_ascii(), "{text}");
        }
        crate::format::writer::write_checkpoint_state(dir.path(), "é\n'").unwrap();
        let text = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
        assert!(
            text.starts_with("model_checkpoint_path: \"\\303\\251\\n\\'\"\n"),
            "{text}"
        );
    }

    /// The parser never panics: 50,000 mutations of a state file (bytes replaced, inserted and
    /// removed, from an alphabet of the bytes its grammar turns on) each give a path or an error.
    #[test]
    fn the_state_parser_takes_any_bytes_without_panicking() {
        let base = b"model_checkpoint_path: \"a\\101\\x4g'\\?\" 'b'\nall_model_checkpoint_timestamps: 1.5e9\nlast_preserved_timestamp: -inff # c\n";
        let alphabet = b"\"'\\:#;,\n\t\x0b 0179xXeEfF.+-_nN[]{}u\xff\xc3\xa9";
        let mut rng = crate::base::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut next = move |n: usize| rng(n as u64) as usize;
        let mut parsed = 0;
        for _ in 0..50_000 {
            let mut t = base.to_vec();
            for _ in 0..1 + next(4) {
                let at = next(t.len() + 1);
                let b = alphabet[next(alphabet.len())];
                match next(3) {
                    0 if at < t.len() => t[at] = b,
                    1 if at < t.len() => drop(t.remove(at)),
                    _ => t.insert(at, b),
                }
            }
            parsed += parse_state(&String::from_utf8_lossy(&t)).is_ok() as usize;
        }
        // Most mutations break something, and some leave a file that parses.
        assert!((1..50_000).contains(&parsed), "{parsed}");
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
