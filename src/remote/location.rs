//! Checkpoint URLs: their schemes, their parsing into a store and a key, and keys normalized as
//! a state file's relative paths are.

use crate::base::error::{Error, ErrorKind, Result};

/// The object storage schemes a checkpoint URL may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    S3,
    Gcs,
    Http,
    Https,
}

impl Scheme {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Scheme::S3 => "s3",
            Scheme::Gcs => "gs",
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A parsed checkpoint URL: `SCHEME://AUTHORITY/KEY` (the bucket, or the host and port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub scheme: Scheme,
    pub authority: String,
    /// The object key or key prefix, without a leading `/` (may be empty or end with `/`).
    pub key: String,
}

impl Location {
    pub(crate) fn parse(url: &str) -> Result<Location> {
        // Never echo credentials embedded in a URL (user information before the host; an `@`
        // in the key is only a character).
        let shown = match url.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                match authority.rsplit_once('@') {
                    Some((_, host)) => format!("{scheme}://***@{host}{path}"),
                    None => url.to_string(),
                }
            }
            None => url.to_string(),
        };
        // Nor a query string's values (a presigned URL's signature): in an http(s):// URL all
        // from a `?` or `#` on (a token need not look like `key=value`); in s3:// and gs://
        // keys, where `?` and `#` are characters (a V1 glob's), a `?` followed by an `=`.
        let web = url.split_once("://").is_some_and(|(scheme, _)| {
            matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
        });
        let shown = match (web, shown.find(['?', '#'])) {
            (true, Some(i)) => format!("{}***", &shown[..=i]),
            _ => match shown.split_once('?') {
                Some((head, q)) if q.contains('=') => format!("{head}?***"),
                _ => shown,
            },
        };
        let bad = |reason: &str| -> Error {
            ErrorKind::Remote {
                url: shown.clone(),
                range: None,
                reason: reason.to_string(),
            }
            .into()
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("not a URL"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "s3" | "s3a" => Scheme::S3,
            "gs" => Scheme::Gcs,
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad("unknown scheme (s3://, gs://, http:// or https://)")),
        };
        let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(bad("no bucket or host in the URL"));
        }
        if authority.contains('@') {
            return Err(bad(
                "credentials in the URL are not accepted (use the environment variables)",
            ));
        }
        // A bucket name is letters, digits, `.`, `-` and `_`. Anything else is no bucket, and may
        // be credentials whose secret holds a `/` (as AWS secret keys often do), which puts the
        // `@` after the first `/`: then everything up to the last `@` is masked.
        let bucket_ok = |b: &str| {
            b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        };
        if matches!(scheme, Scheme::S3 | Scheme::Gcs) && !bucket_ok(authority) {
            let shown = match url.rsplit_once('@') {
                Some((_, tail)) => format!("{}://***@{tail}", scheme.as_str()),
                None => shown.clone(),
            };
            return Err(ErrorKind::Remote {
                url: shown,
                range: None,
                reason: "not a bucket name (letters, digits, '.', '-' and '_'); credentials in \
                         the URL are not accepted (use the environment variables)"
                    .into(),
            }
            .into());
        }
        // An http(s):// host is a name or address with an optional port, nothing else: user
        // information whose password holds a `/` (`https://user:pa/ss@host/x`) or a query right
        // after the host (`http://host?token=…`) would otherwise pass as a host and be echoed in
        // every later message. Then everything up to the last `@`, and from a `?` or `#` on, is
        // masked.
        // An `@` in the path is refused too (written `%40` it is taken): in
        // `http://user:1234/5678@host/x` the host would be `user`, the port 1234.
        if !matches!(scheme, Scheme::S3 | Scheme::Gcs)
            && (!host_and_port(authority) || key.contains('@'))
        {
            let mut shown = match url.rsplit_once('@') {
                Some((_, tail)) => format!("{}://***@{tail}", scheme.as_str()),
                None => url.to_string(),
            };
            if let Some(i) = shown.find(['?', '#']) {
                shown.truncate(i + 1);
                shown.push_str("***");
            }
            return Err(ErrorKind::Remote {
                url: shown,
                range: None,
                reason: "not a host name or address with an optional port, or an `@` in the \
                         path (write it %40); credentials and query strings in the URL are not \
                         accepted (use the environment variables)"
                    .into(),
            }
            .into());
        }
        // In s3:// and gs:// keys `?` is a character (a glob's in a sharded V1 save); in an
        // http(s):// URL it starts a query string, which could carry a secret.
        // A `?` followed later by `=` is a query string (a presigned URL's signature, say) there
        // too, refused rather than taken as part of a key.
        let web = matches!(scheme, Scheme::Http | Scheme::Https);
        if let Some(i) = key.find('?') {
            // (A `?` right after a `/` or at the start of the path is a query, not a glob.)
            let globbed = !key[..i].is_empty() && !key[..i].ends_with('/');
            if web && globbed && !key[i..].contains('=') {
                // TensorFlow names a sharded V1 save by a glob: NAME-?????-of-N.
                return Err(bad(
                    "in an http(s):// URL a `?` starts a query string; a glob such as a sharded \
                     V1 checkpoint's (NAME-?????-of-N) cannot be listed on a plain HTTP server: \
                     read it through s3:// or gs://, or from a local copy",
                ));
            }
            if web || key[i..].contains('=') {
                return Err(bad("query strings and fragments are not accepted"));
            }
        }
        // (In s3:// and gs:// keys `#` is a character too, as their own tools take it.)
        if web && key.contains('#') {
            return Err(bad("query strings and fragments are not accepted"));
        }
        // An http(s):// URL's path is percent-encoded (RFC 3986); object keys are not. S3 and
        // GCS URLs name keys literally, as their own tools do.
        let key = if web {
            percent_encoding::percent_decode_str(key)
                .decode_utf8()
                .map_err(|_| bad("its path does not decode to UTF-8 text"))?
                .into_owned()
        } else {
            key.to_string()
        };
        let key = normalize_key(&key)
            .ok_or_else(|| bad("its path climbs above the top of the bucket or host (`..`)"))?;
        Ok(Location {
            scheme,
            authority: authority.to_string(),
            key,
        })
    }

    /// The URL of `key` in the same bucket or host: for http(s), with the characters that
    /// [`parse`](Self::parse) would take otherwise (`%`, `?`, `#`) percent-encoded, so that the URL
    /// opens the same key again.
    pub(crate) fn url(&self, key: &str) -> String {
        // The WHATWG URL path set (a URL one can paste: `sp%20ace`, not `sp ace`), with `%`
        // (keys are not decoded twice) and `@` (see `Location::parse`).
        const SPECIAL: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
            .add(b' ')
            .add(b'"')
            .add(b'<')
            .add(b'>')
            .add(b'`')
            .add(b'{')
            .add(b'}')
            .add(b'%')
            .add(b'?')
            .add(b'#')
            .add(b'@');
        match self.scheme {
            Scheme::Http | Scheme::Https => format!(
                "{}://{}/{}",
                self.scheme.as_str(),
                self.authority,
                percent_encoding::utf8_percent_encode(key, SPECIAL)
            ),
            Scheme::S3 | Scheme::Gcs => {
                format!("{}://{}/{}", self.scheme.as_str(), self.authority, key)
            }
        }
    }

    /// Whether `other` is in the same bucket, or on the same host: an http(s) host compared
    /// without regard to case and with its scheme's default port made explicit (`HOST`,
    /// `host:443` and `host` are one https server).
    pub(crate) fn same_store(&self, other: &Location) -> bool {
        let host = |l: &Location| {
            let a = l.authority.to_ascii_lowercase();
            let port = match l.scheme {
                Scheme::Http => ":80",
                Scheme::Https => ":443",
                Scheme::S3 | Scheme::Gcs => return l.authority.clone(),
            };
            // `[::1]` and `[::1]:8080`: a port follows the last `]` or the only `:`.
            let has_port = match a.rfind(']') {
                Some(end) => a[end..].contains(':'),
                None => a.contains(':'),
            };
            if has_port {
                a
            } else {
                format!("{a}{port}")
            }
        };
        self.scheme == other.scheme && host(self) == host(other)
    }
}

/// `key` with empty and `.` segments dropped and `..` resolved (as a local path would be), keeping
/// a trailing `/` (and adding one when the key ended in `.` or `..`: it names a "directory");
/// `None` where a `..` climbs above the bucket's (or host's) top, which has nothing above it.
pub(crate) fn normalize_key(key: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for seg in key.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    let last = key.rsplit('/').next().unwrap_or("");
    let dir = key.ends_with('/') || last == "." || last == "..";
    let mut out = parts.join("/");
    if dir && !out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Whether an http(s):// URL's authority is `HOST` or `HOST:PORT`: a name or IPv4 address
/// (letters, digits, `.`, `-`, `_`, `~`) or a bracketed IPv6 address, and a port of 1 to 5 digits.
fn host_and_port(authority: &str) -> bool {
    let port_ok = |p: &str| p.is_empty() || (p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip6, after)) => (
                !ip6.is_empty()
                    && ip6
                        .bytes()
                        .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.'),
                after,
            ),
            None => return false,
        },
        None => {
            let host = authority.split(':').next().unwrap_or("");
            (
                !host.is_empty()
                    && host.bytes().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'~')
                    }),
                &authority[host.len()..],
            )
        }
    };
    host_ok
        && match port.strip_prefix(':') {
            Some(p) => !p.is_empty() && port_ok(p),
            None => port.is_empty(),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state file may name its checkpoint by URL: the same server however its host is
    /// spelt (case, the default port), the same bucket exactly.
    #[test]
    fn the_same_store_however_its_host_is_spelt() {
        let loc = |u: &str| Location::parse(u).unwrap();
        let same = [
            ("https://Example.com/a", "https://example.com/b"),
            ("https://example.com/a", "https://example.com:443/b"),
            ("http://h/a", "http://H:80/b"),
            ("http://[::1]/a", "http://[::1]:80/b"),
            ("s3://bucket/a", "s3://bucket/b"),
        ];
        for (a, b) in same {
            assert!(loc(a).same_store(&loc(b)), "{a} {b}");
            assert!(loc(b).same_store(&loc(a)), "{b} {a}");
        }
        let other = [
            ("https://example.com/a", "http://example.com/b"),
            ("https://example.com/a", "https://example.com:8443/b"),
            ("http://h:8080/a", "http://h/b"),
            ("http://[::1]:8080/a", "http://[::1]/b"),
            ("s3://bucket/a", "s3://other/b"),
            ("s3://bucket/a", "gs://bucket/b"),
        ];
        for (a, b) in other {
            assert!(!loc(a).same_store(&loc(b)), "{a} {b}");
        }
    }

    /// Credentials or a query in an http(s):// host part are refused and never shown (a password
    /// holding a `/` made `user:pa` the host, and the URL was echoed whole in later errors).
    #[test]
    fn http_hosts_are_names_or_addresses_with_a_port() {
        for ok in [
            "http://127.0.0.1:9000/b/x",
            "http://[::1]:8080/x",
            "https://[2001:db8::1]/x",
            "https://storage.googleapis.com/x",
            "http://my_host/x",
            "http://h",
        ] {
            assert!(Location::parse(ok).is_ok(), "{ok}");
        }
        for (bad, secrets) in [
            ("https://user:pa/ss@host/ckpt", &["pa/", "ss@", "user"][..]),
            ("http://user:1234/5678@host/x", &["1234", "5678"]),
            ("http://host?token=SECRET", &["SECRET"]),
            ("http://host#SECRET", &["SECRET"]),
            ("http://host:80?token=SECRET/x", &["SECRET"]),
            ("http://u:p@ss@host/x", &["u:p", "p@ss"]),
            ("http://host:/x", &[]),
            ("http://host:123456/x", &[]),
            ("http://[::1/x", &[]),
            ("http://ho%73t/x", &[]),
            ("http://h/a@b", &[]),
            // A query or fragment in the path, with or without `key=value`.
            ("http://host/ckpt?SECRET", &["SECRET"]),
            ("http://host/dir/ckpt-?SECRET", &["SECRET"]),
            ("https://host/ckpt#SECRET", &["SECRET"]),
            ("https://host/ckpt?a=1#SECRET", &["SECRET"]),
        ] {
            let e = Location::parse(bad).unwrap_err().to_string();
            for s in secrets {
                assert!(!e.contains(s), "{bad}: {e}");
            }
        }
        let e = Location::parse("https://user:pa/ss@host/ckpt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("https://***@host/ckpt"), "{e}");
        let e = Location::parse("http://host?token=SECRET")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http://host?***") && e.contains("not a host name"),
            "{e}"
        );
        assert_eq!(Location::parse("http://h/a%40b").unwrap().key, "a@b");
        let e = Location::parse("http://host/ckpt#SECRET")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://host/ckpt#***"), "{e}");
        // In s3:// keys `?` and `#` are characters (a V1 glob's): shown as they are.
        let e = Location::parse("s3://b/../model#1-?????-of-00002")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s3://b/../model#1-?????-of-00002: "), "{e}");
    }

    #[test]
    fn urls_parse_and_keys_normalize() {
        let l = Location::parse("s3://b/a/./c/../model.ckpt").unwrap();
        assert_eq!(
            (l.scheme, &*l.authority, &*l.key),
            (Scheme::S3, "b", "a/model.ckpt")
        );
        assert_eq!(Location::parse("gs://b/dir/.").unwrap().key, "dir/");
        assert!(Location::parse("s3://b/a/../../x").is_err());
        assert_eq!(Location::parse("s3://b/a/../x").unwrap().key, "x");
        assert_eq!(Location::parse("https://h:8080/x//y/").unwrap().key, "x/y/");
        assert_eq!(Location::parse("s3a://b").unwrap().key, "");
        let err = Location::parse("s3://u:secret@b/x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        assert!(Location::parse("ftp://h/x").is_err());
        assert!(Location::parse("s3:///x").is_err());
    }

    #[test]
    fn http_paths_are_percent_decoded_and_s3_keys_taken_literally() {
        let l = Location::parse("http://h:1/dirs/sp%20ace/%C3%BCn%C3%AF/pct%2541").unwrap();
        assert_eq!(l.key, "dirs/sp ace/ünï/pct%41");
        assert_eq!(Location::parse("s3://b/a%20b").unwrap().key, "a%20b");
        assert!(Location::parse("https://h/%FF").is_err());
        // A `?` in an http(s) URL is a query; a V1 glob there gets its own explanation.
        let e = Location::parse("http://h/v1/model.ckpt-0-?????-of-00002")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be listed on a plain HTTP server"), "{e}");
        let e = Location::parse("http://h/v1/?").unwrap_err().to_string();
        assert!(e.contains("query strings"), "{e}");
        // A key's URL opens the same key again.
        let l = Location::parse("http://h/b/a%2541/m%3F%23").unwrap();
        assert_eq!(l.key, "b/a%41/m?#");
        assert_eq!(l.url(&l.key), "http://h/b/a%2541/m%3F%23");
        assert_eq!(Location::parse(&l.url(&l.key)).unwrap(), l);
        // Credentials whose secret holds a `/` put the `@` in the "key": no bucket, all masked.
        let e = Location::parse("s3://AKID:wJal/rXY@bucket/k")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("wJal") && !e.contains("rXY") && e.contains("not a bucket name"),
            "{e}"
        );
        // In s3:// and gs:// keys `?` is a character, and `@` too.
        assert_eq!(
            Location::parse("s3://b/m-?????-of-00002").unwrap().key,
            "m-?????-of-00002"
        );
        assert_eq!(
            Location::parse("s3://b/user@example.com/model")
                .unwrap()
                .key,
            "user@example.com/model"
        );
        // Only user information before the host is masked in a message.
        let e = Location::parse("s3://b/user@example.com/model?x=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("s3://b/user@example.com/model?***"), "{e}");
    }
}
