//! The `checkpoint` state file, read as TensorFlow reads it (docs/format.md#12-the-checkpoint-state-file).
//!
//! TensorFlow 2.21's `get_checkpoint_state` reads the file as UTF-8 text and merges it into a
//! `CheckpointState` with Python protobuf's `text_format.Merge` (protobuf 6.31 to 7.x, the versions
//! TensorFlow 2.21 takes; their parser is the same). This is that parser for that one message,
//! step by step:
//! * the text is split into lines at `\n` only; between tokens, Python's `\s` (Unicode white space,
//!   `\x1c`-`\x1f` included) and `#` comments to the end of the line are skipped;
//! * a token is an identifier (`[a-zA-Z_][0-9a-zA-Z_+-]*`), a number
//!   (`([0-9+-]|\.[0-9])[0-9a-zA-Z_.+-]*`), a quoted string that ends at its quote or at the end of
//!   the line, or else one character;
//! * a field is its exact name, `:`, then a value, or for the two repeated fields a list
//!   `[v, v]`; then an optional `,` or else `;`; a field given twice is merged (the last
//!   `model_checkpoint_path` wins);
//! * a string value is one or more adjacent quoted strings, each unescaped by protobuf's
//!   `CUnescape` (a lone hex digit after `\x` gets a `0`; Python's `raw_unicode_escape` decodes
//!   `\u`/`\U`; the result's UTF-8 goes through Python's `unicode_escape` and must then fit in
//!   Latin-1), joined, and decoded as UTF-8;
//! * a `double` is protobuf's `ParseFloat`: no octal-looking `0[0-9]+`, then Python's `float()`
//!   (digits with single `_` between them, any Unicode decimal digit), `inf`/`infinity`/`nan`
//!   spellings, or the token without trailing `f`/`F`.
//!
//! Unicode's own data comes in as Python 3.11 has it (Unicode 14): white space, decimal digits,
//! and the names a `\N{NAME}` escape takes (`char_names.rs`). `tests/fixtures/tf/state_files.jsonl`
//! holds random state files with what TensorFlow read from each; the tests read them all back the
//! same way.

use super::char_names::NAMES;

/// The `model_checkpoint_path` of a state file (`""` when it names none), or why TensorFlow
/// finds no checkpoint state in it.
pub(crate) fn parse_state(text: &str) -> Result<String, String> {
    let mut t = Tokenizer::new(text);
    let mut path = String::new();
    while !t.at_end() {
        // Each field, and whether it is repeated (which lets it take a list).
        let (field, repeated) = match t.token() {
            "model_checkpoint_path" => (Field::Path, false),
            "all_model_checkpoint_paths" => (Field::Paths, true),
            "all_model_checkpoint_timestamps" => (Field::Number, true),
            "last_preserved_timestamp" => (Field::Number, false),
            _ => return Err(t.error("expected a field of CheckpointState")),
        };
        t.next();
        if t.token() != ":" {
            return Err(t.error("expected ':'"));
        }
        t.next();
        if repeated && t.token() == "[" {
            // The short repeated form: `[]`, or values separated by ',' up to ']'.
            t.next();
            if t.token() == "]" {
                t.next();
            } else {
                loop {
                    t.value(field)?;
                    if t.token() == "]" {
                        t.next();
                        break;
                    }
                    if t.token() != "," {
                        return Err(t.error("expected ',' or ']'"));
                    }
                    t.next();
                }
            }
        } else if let Some(value) = t.value(field)? {
            path = value;
        }
        if t.token() == "," || t.token() == ";" {
            t.next();
        }
    }
    Ok(path)
}

#[derive(Clone, Copy)]
enum Field {
    Path,
    Paths,
    Number,
}

/// Protobuf's text-format `Tokenizer` over the lines of the text.
struct Tokenizer<'a> {
    lines: std::str::Split<'a, char>,
    line: &'a str,
    line_no: usize,
    /// Byte offset of the token in `line`.
    col: usize,
    /// The current token ("" at the end of the text).
    len: usize,
    more: bool,
}

impl<'a> Tokenizer<'a> {
    fn new(text: &'a str) -> Self {
        let mut t = Tokenizer {
            lines: text.split('\n'),
            line: "",
            line_no: 0,
            col: 0,
            len: 0,
            more: true,
        };
        t.skip_whitespace();
        t.read_token();
        t
    }

    fn token(&self) -> &'a str {
        &self.line[self.col..self.col + self.len]
    }

    fn at_end(&self) -> bool {
        self.len == 0
    }

    fn error(&self, what: &str) -> String {
        let shown: String = self.token().chars().take(40).collect();
        format!("{what} at line {}, found {shown:?}", self.line_no)
    }

    /// `_PopLine`: moves to the next line while the current one is used up.
    fn pop_line(&mut self) {
        while self.line.len() <= self.col {
            match self.lines.next() {
                Some(l) => {
                    self.line = l;
                    self.line_no += 1;
                    self.col = 0;
                }
                None => {
                    self.line = "";
                    self.col = 0;
                    self.more = false;
                    return;
                }
            }
        }
    }

    /// `_SkipWhitespace` with comments: `(\s|(#.*$))+`, line after line.
    fn skip_whitespace(&mut self) {
        loop {
            self.pop_line();
            let rest = &self.line[self.col..];
            let mut skipped = 0;
            for c in rest.chars() {
                if c == '#' {
                    skipped = rest.len();
                    break;
                }
                if !python_space(c) {
                    break;
                }
                skipped += c.len_utf8();
            }
            if skipped == 0 {
                return;
            }
            self.col += skipped;
        }
    }

    /// `NextToken`.
    fn next(&mut self) {
        self.col += self.len;
        self.skip_whitespace();
        self.read_token();
    }

    fn read_token(&mut self) {
        if !self.more {
            self.len = 0;
            return;
        }
        let rest = &self.line.as_bytes()[self.col..];
        let class = |b: &u8, extra: &[u8]| b.is_ascii_alphanumeric() || extra.contains(b);
        self.len = match rest[0] {
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                1 + rest[1..].iter().take_while(|b| class(b, b"_+-")).count()
            }
            b'0'..=b'9' | b'+' | b'-' => {
                1 + rest[1..].iter().take_while(|b| class(b, b"_.+-")).count()
            }
            b'.' if rest.get(1).is_some_and(u8::is_ascii_digit) => {
                2 + rest[2..].iter().take_while(|b| class(b, b"_.+-")).count()
            }
            q @ (b'"' | b'\'') => {
                // q[^q\n\\]*((\\.)+[^q\n\\]*)*(q|\\?$): to the closing quote, or to the end
                // of the line (a trailing backslash included).
                let mut i = 1;
                loop {
                    match rest.get(i) {
                        None => break,
                        Some(&c) if c == q => {
                            i += 1;
                            break;
                        }
                        // A backslash and the byte after it (the rest of a character after it
                        // is neither a quote nor a backslash, so it goes on byte by byte).
                        Some(b'\\') if i + 1 < rest.len() => i += 2,
                        Some(_) => i += 1,
                    }
                }
                i
            }
            _ => self.line[self.col..]
                .chars()
                .next()
                .map_or(1, char::len_utf8),
        };
    }

    /// One value of `field`: a string (`Some` for `model_checkpoint_path`) or a number.
    fn value(&mut self, field: Field) -> Result<Option<String>, String> {
        if let Field::Number = field {
            if !parse_float(self.token()) {
                return Err(self.error("expected a number"));
            }
            self.next();
            return Ok(None);
        }
        // `ConsumeString`: adjacent quoted strings, each unescaped, joined, then UTF-8.
        let (mut bytes, mut any) = (Vec::new(), false);
        loop {
            let text = self.token();
            let q = text.chars().next();
            if !matches!(q, Some('"' | '\'')) {
                if !any {
                    return Err(self.error("expected a quoted string"));
                }
                break;
            }
            any = true;
            if text.len() < 2 || text.chars().next_back() != q {
                return Err(self.error("a string without its closing quote"));
            }
            let unescaped = c_unescape(&text[1..text.len() - 1]).map_err(|e| self.error(e))?;
            bytes.extend(unescaped);
            self.next();
        }
        let value =
            String::from_utf8(bytes).map_err(|_| self.error("a string that is not UTF-8"))?;
        Ok(matches!(field, Field::Path).then_some(value))
    }
}

/// Python's `\s` in a `str` pattern: Unicode white space and the four separators
/// `\x1c`-`\x1f`.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Protobuf's `text_encoding.CUnescape` of a string's text between its quotes: the bytes it
/// stands for, or Python's error.
fn c_unescape(text: &str) -> Result<Vec<u8>, &'static str> {
    // 1. `(\\+)x([0-9a-fA-F])(?![0-9a-fA-F])`: after an odd run of backslashes, a lone hex digit
    //    gets a leading 0 (`\xf` is `\x0f`).
    let chars: Vec<char> = text.chars().collect();
    let mut fixed = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '\\' {
            fixed.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '\\').count();
        fixed.extend(&chars[i..i + run]);
        i += run;
        let hex = |k: usize| chars.get(k).is_some_and(char::is_ascii_hexdigit);
        if chars.get(i) == Some(&'x') && hex(i + 1) && !hex(i + 2) && run % 2 == 1 {
            fixed.push('x');
            fixed.push('0');
            i += 1;
        }
    }
    // 2. `.encode('raw_unicode_escape').decode('raw_unicode_escape')`: characters past U+00FF
    //    become `\uXXXX` and come back; a `\u` or `\U` escape of the text is decoded.
    let mut raw = Vec::with_capacity(fixed.len());
    for c in fixed.chars() {
        match u32::from(c) {
            b @ 0..=0xff => raw.push(b as u8),
            cp @ 0x100..=0xffff => raw.extend(format!("\\u{cp:04x}").bytes()),
            cp => raw.extend(format!("\\U{cp:08x}").bytes()),
        }
    }
    let mut points: Vec<u32> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        i += 1;
        if c != b'\\' || i >= raw.len() {
            points.push(c.into());
            continue;
        }
        let e = raw[i];
        i += 1;
        let digits = match e {
            b'u' => 4,
            b'U' => 8,
            _ => {
                points.extend([u32::from(b'\\'), e.into()]);
                continue;
            }
        };
        let cp = hex_digits(&raw, &mut i, digits).ok_or("truncated \\u or \\U escape")?;
        if cp > 0x10_ffff {
            return Err("\\U escape out of range");
        }
        points.push(cp);
    }
    // 3. `.encode('utf-8')`: a surrogate (`\ud800`) cannot be encoded.
    let mut utf8 = Vec::with_capacity(points.len());
    for cp in points {
        let c = char::from_u32(cp).ok_or("a surrogate (\\ud800-\\udfff) is not UTF-8")?;
        utf8.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    }
    // 4. `.decode('unicode_escape')`, then 5. `.encode('latin-1')`.
    let latin1 = |cp: u32| u8::try_from(cp).map_err(|_| "an escape past \\xff (Latin-1)");
    let mut out = Vec::with_capacity(utf8.len());
    let mut i = 0;
    while i < utf8.len() {
        let c = utf8[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let e = *utf8.get(i).ok_or("\\ at the end of a string")?;
        i += 1;
        match e {
            b'\n' => {}
            b'\\' | b'\'' | b'"' => out.push(e),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b't' => out.push(9),
            b'n' => out.push(10),
            b'v' => out.push(11),
            b'f' => out.push(12),
            b'r' => out.push(13),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match utf8.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(latin1(v)?);
            }
            b'x' | b'u' | b'U' => {
                let digits = match e {
                    b'x' => 2,
                    b'u' => 4,
                    _ => 8,
                };
                // Past U+10FFFF Python says "illegal Unicode character"; past U+00FF it is no
                // Latin-1 either way.
                let cp =
                    hex_digits(&utf8, &mut i, digits).ok_or("truncated \\x, \\u or \\U escape")?;
                out.push(latin1(cp)?);
            }
            b'N' => {
                // `\N{NAME}`: a character by its Unicode name (any ASCII case); only those
                // below U+0100 can pass Latin-1.
                let rest = utf8.get(i..).unwrap_or_default();
                let close = rest.iter().position(|&b| b == b'}');
                let (Some(b'{'), Some(close)) = (rest.first(), close) else {
                    return Err("malformed \\N character escape");
                };
                let name = rest[1..close].to_ascii_uppercase();
                if name.is_empty() {
                    return Err("malformed \\N character escape");
                }
                i += close + 1;
                let at = NAMES
                    .binary_search_by(|(n, _)| n.as_bytes().cmp(&name))
                    .map_err(|_| {
                        "an unknown Unicode character name, or one past \\xff (Latin-1)"
                    })?;
                out.push(NAMES[at].1);
            }
            // Any other escape stays as it is (`\?`, `\q`, `\8`).
            _ => out.extend([b'\\', e]),
        }
    }
    Ok(out)
}

/// Exactly `n` hex digits at `s[*i..]`, as a number (None if fewer).
fn hex_digits(s: &[u8], i: &mut usize, n: usize) -> Option<u32> {
    let digits = s.get(*i..*i + n)?;
    let mut v = 0u32;
    for &d in digits {
        v = v * 16 + (d as char).to_digit(16)?;
    }
    *i += n;
    Some(v)
}

/// Protobuf's `ParseFloat`: whether the token is a `double` to it.
fn parse_float(token: &str) -> bool {
    // `-?0[0-9]+` at the start: "Invalid octal float".
    let unsigned = token.strip_prefix('-').unwrap_or(token).as_bytes();
    if unsigned.len() >= 2 && unsigned[0] == b'0' && unsigned[1].is_ascii_digit() {
        return false;
    }
    if python_float(token) {
        return true;
    }
    // `-?inf(?:inity)?f?$` and `nanf?$`, any case.
    let lower = token.to_ascii_lowercase();
    let unsigned = lower.strip_prefix('-').unwrap_or(&lower);
    if ["inf", "inff", "infinity", "infinityf"].contains(&unsigned)
        || ["nan", "nanf"].contains(&lower.as_str())
    {
        return true;
    }
    python_float(token.trim_end_matches(['f', 'F']))
}

/// Whether Python's `float()` takes the token (it holds no spaces): any Unicode decimal digit
/// counts as its ASCII digit (any other non-ASCII character fails it), then decimal digits with
/// single `_` between them, an optional point and exponent, or `inf`, `infinity`, `nan`, with a
/// sign.
fn python_float(token: &str) -> bool {
    let mut ascii = String::with_capacity(token.len());
    for c in token.chars() {
        // Any other character is kept, and fails the grammar below unless it is ASCII.
        ascii.push(decimal_digit(c).map_or(c, |d| char::from(b'0' + d)));
    }
    let s = ascii
        .strip_prefix(['+', '-'])
        .unwrap_or(&ascii)
        .to_ascii_lowercase();
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

/// The value of a Unicode decimal digit (category Nd), as Python 3.11 (Unicode 14) knows them:
/// each script's digits are ten code points from its zero.
fn decimal_digit(c: char) -> Option<u8> {
    const ZEROS: [u32; 66] = [
        0x30, 0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xa66, 0xae6, 0xb66, 0xbe6, 0xc66, 0xce6, 0xd66,
        0xde6, 0xe50, 0xed0, 0xf20, 0x1040, 0x1090, 0x17e0, 0x1810, 0x1946, 0x19d0, 0x1a80, 0x1a90,
        0x1b50, 0x1bb0, 0x1c40, 0x1c50, 0xa620, 0xa8d0, 0xa900, 0xa9d0, 0xa9f0, 0xaa50, 0xabf0,
        0xff10, 0x104a0, 0x10d30, 0x11066, 0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0,
        0x11650, 0x116c0, 0x11730, 0x118e0, 0x11950, 0x11c50, 0x11d50, 0x11da0, 0x16a60, 0x16ac0,
        0x16b50, 0x1d7ce, 0x1d7d8, 0x1d7e2, 0x1d7ec, 0x1d7f6, 0x1e140, 0x1e2f0, 0x1e950, 0x1fbf0,
    ];
    let cp = u32::from(c);
    let at = ZEROS.partition_point(|&z| z <= cp).checked_sub(1)?;
    u8::try_from(cp - ZEROS[at]).ok().filter(|&d| d < 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each text with what protobuf's `text_format.Merge` (Python 3.11, protobuf 7.36.2, as
    /// TensorFlow 2.21 installs it) made of it: its `model_checkpoint_path`, or `None` where it
    /// raised.
    #[test]
    fn as_protobuf_text_format_reads_them() {
        #[rustfmt::skip]
        let table: &[(&str, Option<&str>)] = &[
            ("model_checkpoint_path: \"/data/exp/ck1/model-0\"\nall_model_checkpoint_paths: \"/data/exp/ck1/model-0\"\n", Some("/data/exp/ck1/model-0")),
            ("# comment\nall_model_checkpoint_timestamps: 1.7e9\nmodel_checkpoint_path: 'a\\x41' \"b\\101\"\nlast_preserved_timestamp: 12.5\nmodel_checkpoint_path: \"ckpt-2\"", Some("ckpt-2")),
            ("model_checkpoint_path: \"\\n\\t\\r\\a\\b\\f\\v\\\\\\'\\\"\\0\\x7\"", Some("\n\t\r\u{7}\u{8}\u{c}\u{b}\\'\"\u{0}\u{7}")),
            ("model_checkpoint_path: \"\\x414b\"", Some("A4b")),
            ("model_checkpoint_path: \"ck\\u0041\"", Some("ckA")),
            ("model_checkpoint_path: \"\\u00c3\\u00a9\"", Some("Ã©")),
            ("model_checkpoint_path: \"\\u00e9\"", Some("é")),
            ("model_checkpoint_path: \"\\u20AC\"", Some("€")),
            ("model_checkpoint_path: \"\\U0001F600\"", Some("😀")),
            ("model_checkpoint_path: \"\\303\\251\"", Some("é")),
            ("model_checkpoint_path: \"\\\\u0041\"", Some("\\u0041")),
            ("model_checkpoint_path: \"\\€\"", Some("\\u20ac")),
            ("model_checkpoint_path: \"\\777\"", None),
            ("model_checkpoint_path: \"\\u12\"", None),
            ("model_checkpoint_path: \"\\U00110000\"", None),
            ("model_checkpoint_path: \"a\\U0010ffffb\"", Some("a\u{10ffff}b")),
            // `\u005c` is a backslash that `unicode_escape` then reads as an escape.
            ("model_checkpoint_path: \"a\\u005c\\u000ab\"", Some("ab")),
            ("model_checkpoint_path: \"a\\u005cnb\"", Some("a\nb")),
            ("model_checkpoint_path: \"a\\u005c\"", None),
            ("model_checkpoint_path: \"a\\u005cu0041b\"", Some("aAb")),
            ("model_checkpoint_path: \"a\\u005cU00000041b\"", Some("aAb")),
            ("model_checkpoint_path: \"a\\u005cx41\"", Some("aA")),
            ("model_checkpoint_path: \"a\\u005cu00e9\"", None),
            ("model_checkpoint_path: \"a\\u005cu20ac\"", None),
            ("model_checkpoint_path: \"\\ud800\"", None),
            ("model_checkpoint_path: \"\\N{DIGIT ONE}\\N{latin small letter a}\\N{LF}\"", Some("1a\n")),
            ("model_checkpoint_path: \"\\N{LATIN CAPITAL LETTER A WITH TILDE}\\N{COPYRIGHT SIGN}\"", Some("é")),
            ("model_checkpoint_path: \"\\N{EURO SIGN}\"", None),
            ("model_checkpoint_path: \"\\N{}\"", None),
            ("model_checkpoint_path: \"a\\?b\\qc\\8\"", Some("a\\?b\\qc\\8")),
            ("model_checkpoint_path: \"\\xg\"", None),
            ("model_checkpoint_path: \"\\\\\\x4\"", Some("\\\u{4}")),
            ("model_checkpoint_path: \"a\\\"", None),
            ("bogus_field: 1", None),
            ("model_checkpoint_path: \"a\"; all_model_checkpoint_paths: \"a\",\nlast_preserved_timestamp: 1;", Some("a")),
            ("model_checkpoint_path: \"a\";, last_preserved_timestamp: 1", None),
            ("model_checkpoint_path \"m\"", None),
            ("\u{b}model_checkpoint_path:\u{1f}\"m\"\u{c}", Some("m")),
            ("\u{a0}model_checkpoint_path:\u{2028}\"m\"\u{3000}", Some("m")),
            ("\u{feff}model_checkpoint_path: \"m\"", None),
            ("all_model_checkpoint_paths: ['a', \"b\"] model_checkpoint_path: 'm'", Some("m")),
            ("all_model_checkpoint_paths: [] all_model_checkpoint_timestamps: [1, 2.5] model_checkpoint_path: 'm'", Some("m")),
            ("all_model_checkpoint_paths: ['a',] model_checkpoint_path: 'm'", None),
            ("model_checkpoint_path: ['m']", None),
            ("model_checkpoint_path: \"m\" \"n\"\n'o'", Some("mno")),
            ("model_checkpoint_path: \"\"", Some("")),
            ("model_checkpoint_path: \"m\" model_checkpoint_path: \"n\" # \"o\"", Some("n")),
            ("model_checkpoint_path: \"unterminated", None),
            ("model_checkpoint_path: 'a\"b'", Some("a\"b")),
            ("model_checkpoint_path: \"a\\\nb\"", None),
            ("", Some("")),
            ("last_preserved_timestamp: 12\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: -1.5e+09\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: 1_000.5\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: .5\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: 5.\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: 1e5\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: inf\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: -Infinity\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: NaN\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: 1.5f\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: 1.5F\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: -inff\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: INFINITYF\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: nanf\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: +2\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: +01\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: 0.5\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: ٣\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: １\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: infxyz\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: -nanf\nmodel_checkpoint_path: \"m\"", Some("m")),
            ("last_preserved_timestamp: abc\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: 0x10\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: 12abc\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: 1__0\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: _1\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: 1_\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: .\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: e5\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: 1e\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: --1\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: 00\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: -01\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: 00.5\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: 0777\nmodel_checkpoint_path: \"m\"", None),
            ("last_preserved_timestamp: ²\nmodel_checkpoint_path: \"m\"", None),
        ];
        for &(text, want) in table {
            let got = parse_state(text);
            assert_eq!(got.as_deref().ok(), want, "{text:?}: {got:?}");
        }
        // Errors say what and where.
        let e = parse_state("model_checkpoint_path: 'a'\nmodel_checkpoint_path 'b'").unwrap_err();
        assert_eq!(e, "expected ':' at line 2, found \"'b'\"");
        let e = parse_state("model_checkpoint_path: \"\\N{EURO SIGN}\"").unwrap_err();
        assert!(
            e.contains("Unicode character name") && e.contains("line 1"),
            "{e}"
        );
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
        crate::format::writer::write_checkpoint_state(dir.path(), "m é\n'\t\r").unwrap();
        let text = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
        assert!(
            text.starts_with("model_checkpoint_path: \"m \\303\\251\\n\\'\\t\\r\"\n"),
            "{text}"
        );
        // An empty prefix names no checkpoint: refused, and the file as it was.
        let e = crate::format::writer::write_checkpoint_state(dir.path(), "").unwrap_err();
        assert!(
            e.to_string()
                .contains("an empty prefix names no checkpoint"),
            "{e}"
        );
        let after = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
        assert_eq!(after, text);
        // A folder that is not there is named, not a temporary file in it.
        let nope = dir.path().join("nope");
        let e = crate::format::writer::write_checkpoint_state(&nope, "m").unwrap_err();
        assert!(
            matches!(e.kind(), crate::ErrorKind::Io { path, .. } if *path == nope),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("nope: no such folder (to write \"checkpoint\" in)"),
            "{e}"
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

    /// The state files of `tests/fixtures/tf/state_files.jsonl` (written by
    /// `tests/fixtures/generate.py`), each with the path TensorFlow's `get_checkpoint_state` read
    /// from it, or none where it found no checkpoint or raised: ours is the same path, or an error
    /// where TF has none.
    #[test]
    fn random_state_files_as_tensorflow_read_them() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tf/state_files.jsonl"
        );
        let (n, paths) = agree_with_tensorflow(&std::fs::read_to_string(path).unwrap());
        assert!(n >= 1000 && paths >= 300, "{n} {paths}");
    }

    /// The same for the state files of `tests/fixtures/differential.py OUT --state-files N`
    /// (`TFCKPT_RANDOM_CASES=OUT`), as many as wanted.
    #[test]
    #[ignore = "needs differential.py's state files (TensorFlow): TFCKPT_RANDOM_CASES=DIR"]
    fn more_random_state_files_as_tensorflow_read_them() {
        let dir = std::env::var_os("TFCKPT_RANDOM_CASES").expect("TFCKPT_RANDOM_CASES");
        let file = std::path::Path::new(&dir).join("state.jsonl");
        let (n, paths) = agree_with_tensorflow(&std::fs::read_to_string(file).unwrap());
        eprintln!("{n} state files, {paths} with a path to TensorFlow: all read the same here");
    }

    /// Checks every case of a JSON-lines file (`{"text" or "hex": .., "tf": path or null}`);
    /// returns how many there were and how many had a path.
    fn agree_with_tensorflow(lines: &str) -> (usize, usize) {
        let (mut n, mut paths, mut wrong) = (0, 0, Vec::new());
        for line in lines.lines() {
            let case: serde_json::Value = serde_json::from_str(line).unwrap();
            let bytes = match (case["text"].as_str(), case["hex"].as_str()) {
                (Some(t), _) => t.as_bytes().to_vec(),
                (_, Some(h)) => (0..h.len() / 2)
                    .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                    .collect(),
                _ => panic!("{line}"),
            };
            // `latest_checkpoint` reads the file as UTF-8, and an empty path names nothing.
            let ours = std::str::from_utf8(&bytes)
                .map_err(|_| "not UTF-8".to_string())
                .and_then(parse_state);
            let tf = case["tf"].as_str();
            if ours.as_deref().ok().filter(|p| !p.is_empty()) != tf {
                wrong.push(format!(
                    "{:?}: TF {tf:?}, ours {ours:?}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
            n += 1;
            paths += tf.is_some() as usize;
        }
        assert!(
            wrong.is_empty(),
            "{} of {n}:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
        (n, paths)
    }

    #[test]
    fn the_unicode_tables_are_ordered() {
        assert!(NAMES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(NAMES
            .iter()
            .all(|(n, _)| n.bytes().all(|b| !b.is_ascii_lowercase())));
        assert_eq!(decimal_digit('7'), Some(7));
        assert_eq!(decimal_digit('\u{663}'), Some(3));
        assert_eq!(decimal_digit('\u{1fbf9}'), Some(9));
        assert_eq!(decimal_digit('\u{1fbfa}'), None);
        assert_eq!(decimal_digit('/'), None);
        assert_eq!(decimal_digit('\u{b2}'), None);
    }
}
