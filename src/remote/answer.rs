//! `object_store`'s errors as the crate's: naming the URL, the byte range and the credential
//! source, and never a secret (user information in URLs masked, credentials a server echoes
//! removed).

use super::client::Client;
use super::location::Scheme;
use crate::base::error::{Error, ErrorKind};

impl Client {
    /// The crate's error for `e`, met reading `url` (bytes `range`). `object_store`'s texts are
    /// passed on with any user information of a URL in them masked, and with what a server's
    /// answer may echo of the credentials removed ([`redact_answer`]).
    pub(crate) fn error(
        &self,
        e: object_store::Error,
        url: &str,
        range: Option<(u64, u64)>,
    ) -> Error {
        let error = self.error_unmasked(e, url, range);
        match error.into_kind() {
            ErrorKind::RemoteAccess {
                url,
                not_found,
                credentials,
                reason,
            } => ErrorKind::RemoteAccess {
                url,
                not_found,
                credentials,
                reason: redact_answer(&mask_user_info(&reason), &secrets_in_environment()),
            },
            ErrorKind::Remote { url, range, reason } => ErrorKind::Remote {
                url,
                range,
                reason: redact_answer(&mask_user_info(&reason), &secrets_in_environment()),
            },
            kind => kind,
        }
        .into()
    }

    fn error_unmasked(
        &self,
        e: object_store::Error,
        url: &str,
        range: Option<(u64, u64)>,
    ) -> Error {
        use object_store::Error as E;
        match e {
            E::NotFound { source, .. } => ErrorKind::RemoteAccess {
                url: url.to_string(),
                not_found: true,
                credentials: self.credentials.clone(),
                reason: source.to_string(),
            }
            .into(),
            E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
                ErrorKind::RemoteAccess {
                    url: url.to_string(),
                    not_found: false,
                    credentials: self.credentials.clone(),
                    reason: source.to_string(),
                }
                .into()
            }
            E::Precondition { .. } => ErrorKind::RemoteChanged {
                url: url.to_string(),
                range,
                what: "its ETag no longer matches (HTTP 412)".into(),
            }
            .into(),
            // The same refusal of a request that `object_store` made to resume a body it had
            // broken off, which it passes on wrapped.
            E::Generic { source, .. }
                if matches!(source.downcast_ref::<E>(), Some(E::Precondition { .. })) =>
            {
                ErrorKind::RemoteChanged {
                    url: url.to_string(),
                    range,
                    what: "its ETag no longer matches (HTTP 412, resuming a body broken off)"
                        .into(),
                }
                .into()
            }
            other => {
                let text = with_causes(&other);
                // A refusal: reported by some stores as a plain HTTP status, or as another
                // status whose answer names refused credentials (S3 answers an expired or
                // malformed session token, an empty AWS_SESSION_TOKEN say, with 400). The codes
                // are looked for in the answer's XML (`<Code>…</Code>`), never in a URL or key.
                const REFUSED: [&str; 5] = [
                    "ExpiredToken",
                    "InvalidToken",
                    "InvalidAccessKeyId",
                    "InvalidClientTokenId",
                    "TokenRefreshRequired",
                ];
                if text.contains("403 Forbidden")
                    || text.contains("401 Unauthorized")
                    || REFUSED
                        .iter()
                        .any(|code| text.contains(&format!("<Code>{code}</Code>")))
                {
                    return ErrorKind::RemoteAccess {
                        url: url.to_string(),
                        not_found: false,
                        credentials: self.credentials.clone(),
                        reason: text,
                    }
                    .into();
                }
                // Credentials that could not be had (a token file, STS, the metadata server):
                // say which source was tried.
                let words = without_urls(&text).to_ascii_lowercase();
                let text = if ["credential", "token request", "token file"]
                    .iter()
                    .any(|w| words.contains(w))
                {
                    format!("{text} (credentials: {})", self.credentials)
                } else {
                    text
                };
                // A request that never got an answer may have gone to a proxy (reqwest takes
                // them from the environment): say which, since nothing else would.
                let reason = match proxy_settings(self.loc.scheme, std::env::vars_os()) {
                    Some(proxies) if text.contains("error sending request") => {
                        format!("{text} (requests go through the proxy settings {proxies})")
                    }
                    // A server that answers a ranged GET with the whole object (`object_store`
                    // refuses the answer): nothing can be read through it.
                    _ if text.contains("Range request not supported") => format!(
                        "{text} (the server answered a request for a byte range with the whole \
                         file; checkpoints are read in byte ranges, so it must answer `Range` \
                         requests, which Python's `http.server`, for one, does not)"
                    ),
                    _ => text,
                };
                ErrorKind::Remote {
                    url: url.to_string(),
                    range,
                    reason,
                }
                .into()
            }
        }
    }
}

/// `e`'s text, followed by the causes it does not already say (object_store's text stops at
/// "error sending request", where the cause, "Connection refused" say, is a source below it).
fn with_causes(e: &object_store::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    let mut added = Vec::new();
    while let Some(c) = cause {
        let said = c.to_string();
        if !said.is_empty() && !text.contains(&said) && !added.contains(&said) {
            added.push(said);
        }
        cause = c.source();
    }
    // The innermost is the most telling ("Connection refused (os error 111)").
    if let Some(last) = added.last() {
        text.push_str(&format!(" (cause: {last})"));
    }
    text
}

/// `text` without the URLs in it (`http://…` or `https://…` up to whitespace, a quote or a
/// bracket): what is said about a request, not the object's key, which may hold any word.
fn without_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = ["http://", "https://"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The proxy settings of `vars` (the environment) that `object_store`'s HTTP client (reqwest)
/// follows for `scheme`, as `NAME=VALUE` with user information masked; `None` if none is. An
/// S3 or GCS client given `AWS_PROXY_URL` or `GOOGLE_PROXY_URL` (any case after the prefix, as
/// `object_store` reads it) uses that proxy alone, and the general variables not at all.
fn proxy_settings(
    scheme: Scheme,
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Option<String> {
    let vars: Vec<(String, String)> = vars
        .into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let prefix = match scheme {
        Scheme::S3 => Some("AWS_"),
        Scheme::Gcs => Some("GOOGLE_"),
        Scheme::Http | Scheme::Https => None,
    };
    if let Some(prefix) = prefix {
        let named = |what: &str| {
            vars.iter()
                .rfind(|(k, _)| k.eq_ignore_ascii_case(&format!("{prefix}{what}")))
        };
        if let Some((k, v)) = named("PROXY_URL") {
            let mut shown = format!("{k}={}", masked_proxy(v));
            if let Some((k, v)) = named("PROXY_EXCLUDES") {
                shown.push_str(&format!(", {k}={v}"));
            }
            return Some(format!("{shown}, not HTTPS_PROXY and the others"));
        }
    }
    let set: Vec<String> = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ]
    .iter()
    .filter_map(|k| {
        let (_, v) = vars.iter().find(|(name, _)| name == k)?;
        Some(format!("{k}={}", masked_proxy(v)))
    })
    .collect();
    (!set.is_empty()).then(|| set.join(", "))
}

/// A proxy setting with its user information masked, with or without a scheme
/// (`user:secret@host:3128` is a valid proxy for the HTTP client too).
fn masked_proxy(value: &str) -> String {
    let (scheme, rest) = match value.find("://") {
        Some(i) => value.split_at(i + 3),
        None => ("", value),
    };
    // Up to the last `@` anywhere: a password may hold a `/` (`user:pa/ss@proxy:3128`).
    match rest.rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => value.to_string(),
    }
}

/// `text` with the user information of every `SCHEME://USER:PASSWORD@HOST` in it masked.
pub(super) fn mask_user_info(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first `/`, whitespace, or the end.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// The elements of an S3-style XML error answer whose text is kept in a message: what went
/// wrong and on what. Any other element's text (`<Token-0>` of `ExpiredToken` and
/// `InvalidToken`, which is the session token; `<CanonicalRequest>` and `<StringToSign>` of
/// `SignatureDoesNotMatch`, which hold the `x-amz-security-token` header; whatever a store adds)
/// reads `…`.
const ANSWER_KEEPS: [&str; 14] = [
    "Code",
    "Message",
    "Details",
    "Key",
    "BucketName",
    "Resource",
    "RequestId",
    "HostId",
    "Region",
    "Endpoint",
    "Condition",
    "ArgumentName",
    "RangeRequested",
    "ActualObjectSize",
];

/// `text` (an `object_store` error, which carries the body of the server's answer) without what
/// the answer may echo of the credentials: an XML error answer (`<Error>`, as S3, GCS and Azure
/// give) through [`redact_elements`], and each of `secrets` (at least 8 bytes) found anywhere
/// replaced by `***`.
pub(super) fn redact_answer(text: &str, secrets: &[String]) -> String {
    let mut out = if text.contains("<Error>") {
        redact_elements(text)
    } else {
        text.to_string()
    };
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        out = out.replace(secret.as_str(), "***");
    }
    // An answer's body (a proxy's HTML error page, say) is quoted whole by `object_store`:
    // kept to its first MAX_ANSWER bytes, masked first so that no secret is cut in two.
    if out.len() > MAX_ANSWER {
        let mut end = MAX_ANSWER;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        let more = out.len() - end;
        out.truncate(end);
        out.push_str(&format!("… ({more} bytes more)"));
    }
    out
}

/// The most of an error text (with the server's answer in it) an error message quotes.
const MAX_ANSWER: usize = 2000;

/// `text` with the text of each XML element that holds only text kept for the elements of
/// [`ANSWER_KEEPS`] and replaced by `…` for the others.
fn redact_elements(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        // `<Name attributes…>`: the tag (up to `>`) and the name (up to a space).
        let tag = after.find('>').map(|close| &after[..close]);
        let element = tag
            .map(|t| {
                (
                    t,
                    t.split(|c: char| c.is_ascii_whitespace())
                        .next()
                        .unwrap_or(""),
                )
            })
            .filter(|(_, n)| {
                !n.is_empty()
                    && n.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
                    })
            })
            .and_then(|(t, n)| {
                let inner = &after[t.len() + 1..];
                let end = format!("</{n}>");
                let len = inner.find(&end)?;
                (!inner[..len].contains('<')).then_some((t, n, len, end.len()))
            });
        match element {
            Some((t, n, len, end_len)) => {
                out.push_str(&rest[..open + t.len() + 2]);
                let inner = &after[t.len() + 1..];
                out.push_str(if ANSWER_KEEPS.contains(&n) {
                    &inner[..len]
                } else {
                    "…"
                });
                out.push_str(&inner[len..len + end_len]);
                rest = &inner[len + end_len..];
            }
            None => {
                out.push_str(&rest[..open + 1]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The values of the environment variables that hold secrets of the stores' credentials
/// (`object_store` reads them), for [`redact_answer`].
pub(super) fn secrets_in_environment() -> Vec<String> {
    // `vars_os`: `vars` panics on a variable that is not Unicode (a secret never is such).
    secrets_among(std::env::vars_os())
}

/// The values among `vars` (an environment) that [`secrets_in_environment`] takes.
fn secrets_among(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<String> {
    vars.into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| {
            let k = k.to_ascii_uppercase();
            ["AWS_", "GOOGLE_", "AZURE_"]
                .iter()
                .any(|p| k.starts_with(p))
                && ["SECRET", "TOKEN", "KEY", "PASSWORD"]
                    .iter()
                    .any(|w| k.contains(w))
                && !k.ends_with("_KEY_ID")
        })
        .map(|(_, v)| v)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::RemoteOptions;
    use crate::remote::location::Location;

    /// `AWS_PROXY_URL` (or `GOOGLE_PROXY_URL`) makes the S3 (GCS) client use that proxy alone:
    /// the message named `HTTPS_PROXY`, which the client then ignores.
    #[test]
    fn a_store_proxy_setting_is_named_instead_of_the_general_ones() {
        let vars = |v: &[(&str, &str)]| -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
            v.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
        };
        let env = vars(&[
            ("HTTPS_PROXY", "http://other:3128"),
            ("aws_Proxy_Url", "http://u:s@p:3128"),
            ("AWS_PROXY_EXCLUDES", "localhost"),
        ]);
        let shown = proxy_settings(Scheme::S3, env.clone()).unwrap();
        assert_eq!(
            shown,
            "aws_Proxy_Url=http://***@p:3128, AWS_PROXY_EXCLUDES=localhost, not HTTPS_PROXY and the others"
        );
        // Another store's setting does not apply; the general ones do.
        assert_eq!(
            proxy_settings(Scheme::Gcs, env.clone()).unwrap(),
            "HTTPS_PROXY=http://other:3128"
        );
        assert_eq!(
            proxy_settings(Scheme::Http, env).unwrap(),
            "HTTPS_PROXY=http://other:3128"
        );
        assert_eq!(proxy_settings(Scheme::S3, vars(&[])), None);
    }

    #[test]
    fn proxy_settings_are_masked_with_or_without_a_scheme() {
        assert_eq!(masked_proxy("http://u:secret@p:3128"), "http://***@p:3128");
        assert_eq!(masked_proxy("u:secret@p:3128"), "***@p:3128");
        assert_eq!(
            masked_proxy("http://user:pa/ss@p:3128"),
            "http://***@p:3128"
        );
        assert_eq!(masked_proxy("user:pa/ss@p:3128"), "***@p:3128");
        assert_eq!(masked_proxy("localhost,.internal"), "localhost,.internal");
    }

    #[test]
    fn user_information_in_messages_is_masked() {
        assert_eq!(
            mask_user_info(
                "Error performing HEAD http://KEY:SECRET@127.0.0.1:9/b/k in 1ms, see https://x/y"
            ),
            "Error performing HEAD http://***@127.0.0.1:9/b/k in 1ms, see https://x/y"
        );
        assert_eq!(mask_user_info("s3://b/user@x/k"), "s3://b/user@x/k");
        assert_eq!(mask_user_info("no url, a@b"), "no url, a@b");
        assert_eq!(mask_user_info("http://u@h"), "http://***@h");
    }

    /// S3's answers that echo credentials, as `object_store` puts them in its error text: the
    /// session token of `ExpiredToken`, the canonical request of `SignatureDoesNotMatch` (with
    /// its `x-amz-security-token` header). What went wrong stays; the secrets do not.
    /// Which variables' values are redacted from messages: the stores' secrets (any case), not
    /// their key ids, regions or other variables (mutation testing found this untested).
    #[test]
    fn the_secrets_of_the_environment_are_the_stores_credentials() {
        let vars = [
            ("AWS_SECRET_ACCESS_KEY", "s3-secret"),
            ("aws_session_token", "s3-token"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_REGION", "us-east-1"),
            ("GOOGLE_SERVICE_ACCOUNT_KEY", "{\"private_key\": \"k\"}"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "azure-key"),
            ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
            ("MY_SECRET_TOKEN", "not-a-store"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        assert_eq!(
            secrets_among(vars),
            [
                "s3-secret",
                "s3-token",
                "{\"private_key\": \"k\"}",
                "azure-key"
            ]
        );
    }

    #[test]
    fn credentials_a_server_echoes_are_removed_from_messages() {
        let token = "FQoGZXIvYXdzEJr//////////wEaDOH0aWRzZWNyZXQ";
        let expired = format!(
            "Error performing GET http://s3/b/k in 2ms - Server returned non-2xx status code: \
             400 Bad Request: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>ExpiredToken\
             </Code><Message>The provided token has expired.</Message><Token-0>{token}</Token-0>\
             <RequestId>4442587FB7D0A2F9</RequestId></Error>"
        );
        let text = redact_answer(&expired, &[]);
        assert!(!text.contains(token), "{text}");
        assert!(
            text.contains(
                "<Code>ExpiredToken</Code><Message>The provided token has expired.\
                           </Message><Token-0>…</Token-0><RequestId>4442587FB7D0A2F9</RequestId>"
            ),
            "{text}"
        );
        assert!(
            text.starts_with("Error performing GET http://s3/b/k in 2ms"),
            "{text}"
        );
        let signature = format!(
            "403 Forbidden: <Error><Code>SignatureDoesNotMatch</Code><Message>The request \
             signature we calculated does not match</Message><AWSAccessKeyId>AKIAEXAMPLE\
             </AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256\n20261202T000000Z</StringToSign>\
             <CanonicalRequest>GET\n/b/k\n\nhost:s3\nx-amz-security-token:{token}\n\
             </CanonicalRequest></Error>"
        );
        let text = redact_answer(&signature, &[]);
        assert!(
            !text.contains(token) && !text.contains("AWS4-HMAC"),
            "{text}"
        );
        assert!(
            text.contains("<Code>SignatureDoesNotMatch</Code>"),
            "{text}"
        );
        // A secret of the environment, wherever an answer echoes it; short values are left.
        // Other answers (an HTML page, say) are left whole.
        let text = redact_answer(
            &format!("500: token={token} short <b>x</b> a<b"),
            &[token.to_string(), "short".into()],
        );
        assert_eq!(text, "500: token=*** short <b>x</b> a<b");
        // A long answer is kept to its first 2000 bytes (a secret past them is masked first).
        let page = format!(
            "502: <html>{}é{}</html>",
            "x".repeat(1987),
            token.repeat(50)
        );
        let text = redact_answer(&page, &[token.to_string()]);
        assert!(
            text.starts_with("502: <html>xxx") && !text.contains(token),
            "{text}"
        );
        assert!(
            text.ends_with(" bytes more)") && text.len() < 2100,
            "{text}"
        );
        let odd = "<Error><A>x</A><B>y<Message>m</Message> <C>z</D> <E> <T k=\"v\">s</T>";
        assert_eq!(
            redact_answer(odd, &[]),
            "<Error><A>…</A><B>y<Message>m</Message> <C>z</D> <E> <T k=\"v\">…</T>"
        );
        // A namespaced element is an element (its text goes); `<>` and `< 2` are not tags.
        let ns = "<Error><ns:Token>s</ns:Token><>x</> a < 2 <Code>c</Code></Error>";
        assert_eq!(
            redact_answer(ns, &[]),
            "<Error><ns:Token>…</ns:Token><>x</> a < 2 <Code>c</Code></Error>"
        );
    }

    #[test]
    fn credentials_refused_with_a_400_or_not_had_name_their_source() {
        let loc = Location::parse("s3://b/ckpt/model.ckpt-1").unwrap();
        let c = Client::new(&loc, &RemoteOptions::default()).unwrap();
        let generic = |text: &str| object_store::Error::Generic {
            store: "S3",
            source: text.to_string().into(),
        };
        let e = c.error(
            generic("Client error with status 400 Bad Request: <Error><Code>ExpiredToken</Code></Error>"),
            "s3://b/x",
            None,
        );
        assert!(
            matches!(e.kind(), ErrorKind::RemoteAccess { not_found: false, credentials, .. } if *credentials == c.credentials),
            "{e}"
        );
        let e = c.error(
            generic("Error fetching credentials: timed out"),
            "s3://b/x",
            None,
        );
        assert!(
            e.to_string()
                .contains(&format!("(credentials: {})", c.credentials)),
            "{e}"
        );
        let e = c.error(
            generic("Error after 3 retries: connection reset"),
            "s3://b/x",
            None,
        );
        assert!(!e.to_string().contains("(credentials:"), "{e}");
        // A key holding those words is not an answer about credentials.
        let e = c.error(
            generic("Error performing GET https://b.s3.amazonaws.com/credentials/InvalidToken-run/m in 1s: connection reset"),
            "s3://b/credentials/InvalidToken-run/m",
            None,
        );
        assert!(
            matches!(e.kind(), ErrorKind::Remote { .. })
                && !e.to_string().contains("(credentials:"),
            "{e}"
        );
    }
}
