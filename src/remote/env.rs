//! The environment as `object_store`'s builders read it (`from_env`, `object_store` 0.14): where a
//! client takes its credentials from (named in messages: the variables, never their values), and
//! the checks of the values `object_store` puts into a URL or a header, which it would panic on
//! (its requests `expect` a valid URL and header) where we can say which variable is wrong.

use super::location::Scheme;
use crate::base::error::{Error, ErrorKind, Result};

/// A snapshot of the environment's variables that are Unicode (`from_env` skips the others).
pub(crate) struct Env(Vec<(String, String)>);

/// One variable of an [`Env`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Var<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

impl Var<'_> {
    /// The name, marked when the value is empty (`object_store` takes an empty value as set:
    /// `export AWS_ACCESS_KEY_ID=$UNSET` gives an empty key, not none).
    fn named(&self) -> String {
        if self.value.is_empty() {
            format!("{} (empty)", self.name)
        } else {
            self.name.to_string()
        }
    }
}

impl Env {
    pub(crate) fn of_process() -> Env {
        Env::new(std::env::vars_os())
    }

    pub(crate) fn new(
        vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> Env {
        Env(vars
            .into_iter()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect())
    }

    /// The variable that sets the `object_store` option of `aliases` (lower case), read as
    /// `from_env` reads them: a name that starts with `prefix` as written, compared with the
    /// aliases in lower case; where several do, the last one (each overrides those before).
    fn get(&self, prefix: &str, aliases: &[&str]) -> Option<Var<'_>> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.starts_with(prefix) && aliases.contains(&&*k.to_ascii_lowercase()))
            .map(|(name, value)| Var { name, value })
    }

    fn aws(&self, aliases: &[&str]) -> Option<Var<'_>> {
        self.get("AWS_", aliases)
    }

    fn google(&self, aliases: &[&str]) -> Option<Var<'_>> {
        self.get("GOOGLE_", aliases)
    }

    /// The effective S3 endpoint: `AWS_ENDPOINT_URL_S3` over `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`.
    fn s3_endpoint(&self) -> Option<Var<'_>> {
        self.aws(&["aws_endpoint_url_s3"])
            .or_else(|| self.aws(&["aws_endpoint_url", "aws_endpoint"]))
    }

    /// The effective region: `AWS_REGION`, else the first `AWS_DEFAULT_REGION` (which never
    /// overrides a region already read).
    fn s3_region(&self) -> Option<Var<'_>> {
        self.aws(&["aws_region"]).or_else(|| {
            self.0
                .iter()
                .find(|(k, _)| {
                    k.starts_with("AWS_") && k.eq_ignore_ascii_case("aws_default_region")
                })
                .map(|(name, value)| Var { name, value })
        })
    }

    /// The GCS service account file: `GOOGLE_SERVICE_ACCOUNT(_PATH)`, else `SERVICE_ACCOUNT`.
    fn gcs_service_account(&self) -> Option<Var<'_>> {
        self.google(&["google_service_account", "google_service_account_path"])
            .or_else(|| {
                self.0
                    .iter()
                    .find(|(k, _)| k == "SERVICE_ACCOUNT")
                    .map(|(name, value)| Var { name, value })
            })
    }
}

/// A boolean option's value as `object_store` parses it: `None` where it refuses it.
pub(crate) fn config_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" | "y" => Some(true),
        "0" | "false" | "off" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// Whether `var` is set to a value `object_store` takes as true.
fn truthy(var: Option<Var<'_>>) -> Option<Var<'_>> {
    var.filter(|v| config_bool(v.value) == Some(true))
}

/// Where a client of `scheme` built from `env` takes its credentials from, in the order
/// `object_store` tries them: the names of the variables, never their values.
pub(crate) fn credential_source(scheme: Scheme, env: &Env) -> String {
    match scheme {
        Scheme::S3 => s3_credential_source(env),
        Scheme::Gcs => gcs_credential_source(env),
        Scheme::Http | Scheme::Https => "none (plain HTTP GET)".to_string(),
    }
}

/// Where an S3 client takes its credentials from: the first of `object_store`'s sources that
/// the environment sets.
enum S3Source<'a> {
    /// `AWS_SKIP_SIGNATURE`: none.
    Unsigned(Var<'a>),
    /// Static keys (both, or one: `object_store` refuses the client then).
    Keys {
        key: Option<Var<'a>>,
        secret: Option<Var<'a>>,
        token: Option<Var<'a>>,
    },
    WebIdentity {
        file: Var<'a>,
        role: Var<'a>,
    },
    Container(Var<'a>),
    PodIdentity {
        uri: Var<'a>,
        file: Var<'a>,
    },
    Instance,
}

/// The source an S3 client built from `env` uses, and what is set but ignored for want of a
/// partner (for the message: a token file without its role is an easy slip).
fn s3_source(env: &Env) -> (S3Source<'_>, Vec<String>) {
    let key = env.aws(&["aws_access_key_id"]);
    let secret = env.aws(&["aws_secret_access_key"]);
    let identity = (
        env.aws(&["aws_web_identity_token_file"]),
        env.aws(&["aws_role_arn"]),
    );
    let relative = env.aws(&["aws_container_credentials_relative_uri"]);
    let pod = (
        env.aws(&["aws_container_credentials_full_uri"]),
        env.aws(&["aws_container_authorization_token_file"]),
    );
    let token = env.aws(&["aws_session_token", "aws_token"]);
    // One key without the other fails the build, whether requests are signed or not.
    if key.is_some() != secret.is_some() {
        return (S3Source::Keys { key, secret, token }, Vec::new());
    }
    if let Some(skip) = truthy(env.aws(&["aws_skip_signature"])) {
        return (S3Source::Unsigned(skip), Vec::new());
    }
    if key.is_some() {
        return (S3Source::Keys { key, secret, token }, Vec::new());
    }
    if let (Some(file), Some(role)) = identity {
        return (S3Source::WebIdentity { file, role }, Vec::new());
    }
    let mut unused = Vec::new();
    if let (Some(file), None) = identity {
        unused.push(format!("{} without AWS_ROLE_ARN", file.name));
    }
    if let Some(uri) = relative {
        return (S3Source::Container(uri), unused);
    }
    match pod {
        (Some(uri), Some(file)) => (S3Source::PodIdentity { uri, file }, unused),
        (Some(uri), None) => {
            unused.push(format!(
                "{} without AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                uri.name
            ));
            (S3Source::Instance, unused)
        }
        (None, _) => (S3Source::Instance, unused),
    }
}

fn s3_credential_source(env: &Env) -> String {
    let (source, unused) = s3_source(env);
    let mut s = match source {
        S3Source::Unsigned(skip) => {
            format!("none, unsigned requests ({}={})", skip.name, skip.value)
        }
        S3Source::Keys {
            key: Some(k),
            secret: Some(s),
            token,
        } => {
            let token = token.map_or(String::new(), |t| format!(" + {}", t.named()));
            format!("{} + {}{token} from the environment", k.named(), s.named())
        }
        S3Source::Keys { key: Some(k), .. } => {
            format!(
                "{} from the environment, without AWS_SECRET_ACCESS_KEY",
                k.named()
            )
        }
        S3Source::Keys { secret, .. } => format!(
            "{} from the environment, without AWS_ACCESS_KEY_ID",
            secret.map_or("AWS_SECRET_ACCESS_KEY".into(), |s| s.named())
        ),
        S3Source::WebIdentity { file, role } => {
            format!("web identity token ({} for {})", file.name, role.name)
        }
        S3Source::Container(uri) => format!("container credentials ({})", uri.name),
        S3Source::PodIdentity { uri, file } => {
            format!("EKS Pod Identity ({} + {})", uri.name, file.name)
        }
        S3Source::Instance => {
            "instance metadata (no AWS_ACCESS_KEY_ID in the environment)".to_string()
        }
    };
    if !unused.is_empty() {
        s.push_str(&format!("; ignored: {}", unused.join(", ")));
    }
    if let Some(endpoint) = env.s3_endpoint() {
        if may_hold_credentials(endpoint.value) {
            s.push_str(&format!(
                "; endpoint {} (not shown: it holds '@')",
                endpoint.name
            ));
        } else {
            s.push_str(&format!("; endpoint {}={}", endpoint.name, endpoint.value));
        }
    }
    s
}

/// Where a GCS client takes its credentials from, in `object_store`'s order.
enum GcsSource<'a> {
    /// A service account file and key both: `object_store` refuses the client.
    Both(Var<'a>, Var<'a>),
    Unsigned(Var<'a>),
    Bearer(Var<'a>),
    File(Var<'a>),
    Key(Var<'a>),
    Adc(Var<'a>),
    /// gcloud's application default credentials file under HOME, else the metadata server.
    Default,
}

fn gcs_source(env: &Env) -> GcsSource<'_> {
    let file = env.gcs_service_account();
    let key = env.google(&["google_service_account_key"]);
    // The service account is read first, whatever comes after.
    if let (Some(f), Some(k)) = (file, key) {
        return GcsSource::Both(f, k);
    }
    if let Some(skip) = truthy(env.google(&["google_skip_signature"])) {
        return GcsSource::Unsigned(skip);
    }
    if let Some(t) = env.google(&["google_bearer_token"]) {
        return GcsSource::Bearer(t);
    }
    match (file, key) {
        (Some(f), _) => GcsSource::File(f),
        (_, Some(k)) => GcsSource::Key(k),
        _ => match env.google(&["google_application_credentials"]) {
            Some(f) => GcsSource::Adc(f),
            None => GcsSource::Default,
        },
    }
}

fn gcs_credential_source(env: &Env) -> String {
    match gcs_source(env) {
        GcsSource::Both(f, k) => format!("both {} and {}: give one", f.name, k.name),
        GcsSource::Unsigned(skip) => {
            format!("none, unsigned requests ({}={})", skip.name, skip.value)
        }
        GcsSource::Bearer(t) => format!("bearer token from {}", t.named()),
        GcsSource::File(f) => format!("service account file from {}", f.named()),
        GcsSource::Key(k) => format!("service account key from {}", k.named()),
        GcsSource::Adc(f) => format!("application default credentials from {}", f.named()),
        GcsSource::Default => "application default credentials or the metadata server (no \
                               GOOGLE_* credentials in the environment)"
            .to_string(),
    }
}

/// Whether `url` may hold credentials (`user:password@host`): any `@`, since a password with an
/// unencoded `/`, `?` or `#` moves the `@` out of what a parser takes for the authority. Such a
/// value is never shown.
fn may_hold_credentials(url: &str) -> bool {
    url.contains('@')
}

/// Checks what a client of `scheme` built from `env` puts into its URLs and headers, naming the
/// variable that is wrong (never a secret's value): `object_store` panics on a URL or header
/// that the HTTP layer refuses, and its own message for a plain-HTTP endpoint without
/// `AWS_ALLOW_HTTP` names no variable. `url` is the URL being opened, for the error.
pub(crate) fn check(scheme: Scheme, env: &Env, url: &str) -> Result<()> {
    let bad = |var: &str, reason: String| -> Error {
        ErrorKind::Remote {
            url: url.to_string(),
            range: None,
            reason: format!("{var} {reason}"),
        }
        .into()
    };
    match scheme {
        Scheme::S3 => {
            let allow_http = allowed_http(env.aws(&["aws_allow_http"]), false, &bad)?;
            let endpoint = env.s3_endpoint();
            if let Some(endpoint) = endpoint {
                check_endpoint(endpoint, Endpoint::Base, allow_http, "AWS_ALLOW_HTTP", &bad)?;
            }
            let source = s3_source(env).0;
            if let Some(r) = env.s3_region() {
                // In the signature's header always; in a URL where object_store makes one of it:
                // the bucket's without an endpoint, STS's for a web identity without its own
                // endpoint, S3 Express's.
                header_safe(r, &bad)?;
                let name_like = !r.value.is_empty()
                    && r.value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                let in_url = endpoint.is_none()
                    || (matches!(source, S3Source::WebIdentity { .. })
                        && env.aws(&["aws_endpoint_url_sts"]).is_none())
                    || truthy(env.aws(&["aws_s3_express"])).is_some();
                if in_url && !name_like {
                    return Err(bad(
                        r.name,
                        format!(
                            "is not a region name (letters, digits and '-', e.g. us-east-1): it \
                             is {:?}",
                            r.value
                        ),
                    ));
                }
            }
            // What the credential source puts into a header or requests itself.
            match source {
                S3Source::Keys { key, token, .. } => {
                    // The key ID goes into the signature's header, the token into its own.
                    for v in [key, token].into_iter().flatten() {
                        header_safe(v, &bad)?;
                    }
                }
                S3Source::WebIdentity { .. } => {
                    if let Some(sts) = env.aws(&["aws_endpoint_url_sts"]) {
                        check_endpoint(sts, Endpoint::Whole, true, "", &bad)?;
                        // `object_store` asks STS over HTTPS only, whatever AWS_ALLOW_HTTP says:
                        // a plain-HTTP one failed at the first read, naming no variable.
                        if sts
                            .value
                            .get(..7)
                            .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
                        {
                            return Err(bad(
                                sts.name,
                                format!(
                                    "is plain HTTP ({}): web identity credentials are asked of \
                                     STS over HTTPS only (AWS_ALLOW_HTTP does not apply to it)",
                                    sts.value
                                ),
                            ));
                        }
                    }
                }
                S3Source::Container(uri) => {
                    let full = format!("http://169.254.170.2{}", uri.value);
                    if !uri.value.starts_with('/')
                        || full.parse::<http::Uri>().is_err()
                        || url::Url::parse(&full).is_err()
                    {
                        return Err(bad(
                            uri.name,
                            "must be a URL path starting with '/' (it follows \
                             http://169.254.170.2)"
                                .into(),
                        ));
                    }
                }
                S3Source::PodIdentity { uri, .. } => {
                    check_endpoint(uri, Endpoint::Whole, true, "", &bad)?
                }
                S3Source::Instance => {
                    if let Some(metadata) = env.aws(&["aws_metadata_endpoint"]) {
                        check_endpoint(metadata, Endpoint::Base, true, "", &bad)?;
                    }
                }
                S3Source::Unsigned(_) => {}
            }
        }
        Scheme::Gcs => {
            // object_store's GCS client allows plain HTTP unless told otherwise.
            let allow_http = allowed_http(env.google(&["google_allow_http"]), true, &bad)?;
            if let Some(base) = env.google(&["google_base_url"]) {
                check_endpoint(base, Endpoint::Base, allow_http, "GOOGLE_ALLOW_HTTP", &bad)?;
            }
            // A key put where a file's path goes (`GOOGLE_APPLICATION_CREDENTIALS: ${{ secrets.KEY }}`
            // in CI): `object_store` would name it as the file it cannot open, key and all.
            let json_for_a_path = |f: Var<'_>| -> Result<()> {
                if f.value.trim_start().starts_with('{') || f.value.contains('\n') {
                    return Err(bad(
                        f.name,
                        "holds a document (a service account key?), not a file's path: put the \
                         key in a file and name the file here, or give the key itself in \
                         GOOGLE_SERVICE_ACCOUNT_KEY"
                            .into(),
                    ));
                }
                Ok(())
            };
            match gcs_source(env) {
                GcsSource::File(f) | GcsSource::Adc(f) | GcsSource::Both(f, _) => {
                    json_for_a_path(f)?
                }
                GcsSource::Bearer(t) => header_safe(t, &bad)?,
                GcsSource::Default if !gcloud_credentials_file(env) => {
                    // The metadata server, at a host these name (read as is, not by prefix).
                    for (name, value) in &env.0 {
                        if ["GCE_METADATA_HOST", "GCE_METADATA_ROOT", "GCE_METADATA_IP"]
                            .contains(&name.as_str())
                        {
                            let full = format!("http://{value}/computeMetadata/v1/");
                            let host_only = !value.contains(['/', '?', '#', '@']);
                            if !host_only
                                || full.parse::<http::Uri>().is_err()
                                || url::Url::parse(&full).is_err()
                            {
                                return Err(bad(
                                    name,
                                    "must be a host name or address, with an optional port \
                                     (e.g. metadata.google.internal or 169.254.169.254:80)"
                                        .into(),
                                ));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Scheme::Http | Scheme::Https => {}
    }
    Ok(())
}

/// Whether gcloud's application default credentials file exists under HOME (`APPDATA` on
/// Windows), which `object_store` takes before the metadata server.
fn gcloud_credentials_file(env: &Env) -> bool {
    let (home, path) = if cfg!(windows) {
        ("APPDATA", "gcloud/application_default_credentials.json")
    } else {
        (
            "HOME",
            ".config/gcloud/application_default_credentials.json",
        )
    };
    env.0
        .iter()
        .rfind(|(k, _)| k == home)
        .is_some_and(|(_, v)| std::path::Path::new(v).join(path).exists())
}

/// The value of an `*_ALLOW_HTTP` variable: `default` where it is not set.
fn allowed_http(
    var: Option<Var<'_>>,
    default: bool,
    bad: &impl Fn(&str, String) -> Error,
) -> Result<bool> {
    let Some(v) = var else { return Ok(default) };
    config_bool(v.value).ok_or_else(|| {
        bad(
            v.name,
            format!(
                "is {:?}: it takes true or false (also 1/0, yes/no, on/off, y/n)",
                v.value
            ),
        )
    })
}

/// How `object_store` uses a URL a variable gives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// The start of its requests' URLs (paths are appended): no query or fragment.
    Base,
    /// A whole request URL, used as it is.
    Whole,
}

/// Checks an endpoint or base URL: no credentials in it (checked first, so that no message
/// echoes them), a URL both parsers `object_store` uses take (the HTTP layer's, which refuses
/// spaces, and the URL crate's, which refuses a port past 65535), http or https with a host, no
/// query or fragment where paths are appended to it, and plain HTTP only where allowed
/// (`allow_var` says how).
fn check_endpoint(
    endpoint: Var<'_>,
    kind: Endpoint,
    allow_http: bool,
    allow_var: &str,
    bad: &impl Fn(&str, String) -> Error,
) -> Result<()> {
    let (var, value) = (endpoint.name, endpoint.value);
    if may_hold_credentials(value) {
        return Err(bad(
            var,
            "holds '@', credentials in the URL: give them in the credential variables".into(),
        ));
    }
    let uri: http::Uri = value
        .parse()
        .map_err(|e| bad(var, format!("is not a valid URL ({e})")))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if !matches!(scheme, "http" | "https") || uri.host().is_none_or(str::is_empty) {
        return Err(bad(
            var,
            format!(
                "must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:9000; it \
                 is {value}"
            ),
        ));
    }
    match url::Url::parse(value) {
        Err(e) => return Err(bad(var, format!("is not a valid URL ({e})"))),
        Ok(u) if kind == Endpoint::Base && (u.query().is_some() || u.fragment().is_some()) => {
            return Err(bad(
                var,
                "has a query string or fragment: an endpoint is a scheme, host and port (and \
                 path)"
                    .into(),
            ))
        }
        Ok(_) => {}
    }
    if scheme == "http" && !allow_http {
        return Err(bad(
            var,
            format!("is plain HTTP ({value}): set {allow_var}=true to allow it"),
        ));
    }
    Ok(())
}

/// Checks that `var`'s value may go into an HTTP header.
fn header_safe(var: Var<'_>, bad: &impl Fn(&str, String) -> Error) -> Result<()> {
    match control_char(var.value) {
        Some(at) => Err(bad(var.name, format!("holds a control character ({at})"))),
        None => Ok(()),
    }
}

/// Where `value` holds a byte that no HTTP header may hold (a control character other than a
/// tab), said without the value: "byte 0x0d at position 40 of 41".
fn control_char(value: &str) -> Option<String> {
    let at = value
        .bytes()
        .position(|b| (b < 0x20 && b != b'\t') || b == 0x7f)?;
    Some(format!(
        "byte {:#04x} at position {at} of {}{}",
        value.as_bytes()[at],
        value.len(),
        if matches!(value.as_bytes()[at], b'\r' | b'\n') {
            "; a line end copied with it?"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::new(vars.iter().map(|(k, v)| ((*k).into(), (*v).into())))
    }

    fn s3(vars: &[(&str, &str)]) -> String {
        credential_source(Scheme::S3, &env(vars))
    }

    fn gcs(vars: &[(&str, &str)]) -> String {
        credential_source(Scheme::Gcs, &env(vars))
    }

    #[test]
    fn the_s3_credential_source_follows_object_stores_order() {
        let keys = [
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
        ];
        assert_eq!(
            s3(&keys),
            "AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY from the environment"
        );
        let mut with = keys.to_vec();
        with.push(("AWS_SESSION_TOKEN", "tok"));
        assert_eq!(
            s3(&with),
            "AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY + AWS_SESSION_TOKEN from the environment"
        );
        // An empty value is set (object_store takes it); so is a name in another case.
        assert_eq!(
            s3(&[("AWS_ACCESS_KEY_ID", ""), ("AWS_Secret_Access_Key", "s")]),
            "AWS_ACCESS_KEY_ID (empty) + AWS_Secret_Access_Key from the environment"
        );
        assert_eq!(
            s3(&[("AWS_ACCESS_KEY_ID", "AKIA")]),
            "AWS_ACCESS_KEY_ID from the environment, without AWS_SECRET_ACCESS_KEY"
        );
        assert_eq!(
            s3(&[("AWS_SECRET_ACCESS_KEY", "s")]),
            "AWS_SECRET_ACCESS_KEY from the environment, without AWS_ACCESS_KEY_ID"
        );
        // Skipping the signature wins over keys, with any of object_store's true values.
        for t in ["true", "1", "YES", "on", "y"] {
            let mut with = keys.to_vec();
            with.push(("AWS_SKIP_SIGNATURE", t));
            assert_eq!(
                s3(&with),
                format!("none, unsigned requests (AWS_SKIP_SIGNATURE={t})")
            );
        }
        // One key without the other fails the build, signed or not.
        assert_eq!(
            s3(&[
                ("AWS_SKIP_SIGNATURE", "true"),
                ("AWS_SECRET_ACCESS_KEY", "s")
            ]),
            "AWS_SECRET_ACCESS_KEY from the environment, without AWS_ACCESS_KEY_ID"
        );
        for f in ["false", "0", "maybe"] {
            assert!(
                s3(&[("AWS_SKIP_SIGNATURE", f)]).starts_with("instance metadata"),
                "{f}"
            );
        }
        assert_eq!(
            s3(&[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
                ("AWS_ROLE_ARN", "arn"),
                ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/c"),
            ]),
            "web identity token (AWS_WEB_IDENTITY_TOKEN_FILE for AWS_ROLE_ARN)"
        );
        assert_eq!(
            s3(&[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
                ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/c"),
            ]),
            "container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI); ignored: \
             AWS_WEB_IDENTITY_TOKEN_FILE without AWS_ROLE_ARN"
        );
        assert_eq!(
            s3(&[
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "http://169.254.170.23/v1"
                ),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/f"),
            ]),
            "EKS Pod Identity (AWS_CONTAINER_CREDENTIALS_FULL_URI + \
             AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)"
        );
        assert_eq!(
            s3(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://x")]),
            "instance metadata (no AWS_ACCESS_KEY_ID in the environment); ignored: \
             AWS_CONTAINER_CREDENTIALS_FULL_URI without AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
        );
        assert_eq!(
            s3(&[
                ("aws_access_key_id", "lower case is not read"),
                ("HOME", "/root")
            ]),
            "instance metadata (no AWS_ACCESS_KEY_ID in the environment)"
        );
    }

    #[test]
    fn the_s3_endpoint_named_is_the_one_object_store_uses() {
        assert_eq!(
            s3(&[
                ("AWS_ENDPOINT_URL_S3", "http://s3:9000"),
                ("AWS_ENDPOINT_URL", "http://other:1")
            ]),
            "instance metadata (no AWS_ACCESS_KEY_ID in the environment); endpoint \
             AWS_ENDPOINT_URL_S3=http://s3:9000"
        );
        // The last of two aliases wins, as each overrides the one before.
        assert!(s3(&[
            ("AWS_ENDPOINT_URL", "http://a:1"),
            ("AWS_ENDPOINT", "http://b:2")
        ])
        .ends_with("; endpoint AWS_ENDPOINT=http://b:2"));
        assert!(s3(&[("AWS_ENDPOINT_URL", "http://k:pw@a:1")])
            .ends_with("; endpoint AWS_ENDPOINT_URL (not shown: it holds '@')"));
        // A password with a '/' moves the '@' out of the authority: not shown either.
        for e in ["http://k:pw@a:1", "http://k:p/w@a:1"] {
            assert!(!s3(&[("AWS_ENDPOINT_URL", e)]).contains("pw"), "{e}");
            assert!(!s3(&[("AWS_ENDPOINT_URL", e)]).contains("p/w"), "{e}");
        }
    }

    #[test]
    fn the_gcs_credential_source_follows_object_stores_order() {
        assert_eq!(
            gcs(&[
                ("GOOGLE_SKIP_SIGNATURE", "true"),
                ("GOOGLE_BEARER_TOKEN", "t")
            ]),
            "none, unsigned requests (GOOGLE_SKIP_SIGNATURE=true)"
        );
        assert_eq!(
            gcs(&[
                ("GOOGLE_BEARER_TOKEN", "t"),
                ("GOOGLE_SERVICE_ACCOUNT", "/f")
            ]),
            "bearer token from GOOGLE_BEARER_TOKEN"
        );
        assert_eq!(
            gcs(&[
                ("GOOGLE_SERVICE_ACCOUNT_PATH", "/f"),
                ("GOOGLE_SERVICE_ACCOUNT_KEY", "{}")
            ]),
            "both GOOGLE_SERVICE_ACCOUNT_PATH and GOOGLE_SERVICE_ACCOUNT_KEY: give one"
        );
        assert_eq!(
            gcs(&[("SERVICE_ACCOUNT", "/f")]),
            "service account file from SERVICE_ACCOUNT"
        );
        assert_eq!(
            gcs(&[("SERVICE_ACCOUNT", "/f"), ("GOOGLE_SERVICE_ACCOUNT", "/g")]),
            "service account file from GOOGLE_SERVICE_ACCOUNT"
        );
        assert_eq!(
            gcs(&[
                ("GOOGLE_SERVICE_ACCOUNT_KEY", "{}"),
                ("GOOGLE_APPLICATION_CREDENTIALS", "/a")
            ]),
            "service account key from GOOGLE_SERVICE_ACCOUNT_KEY"
        );
        assert_eq!(
            gcs(&[("GOOGLE_APPLICATION_CREDENTIALS", "")]),
            "application default credentials from GOOGLE_APPLICATION_CREDENTIALS (empty)"
        );
        assert!(gcs(&[("GOOGLE_SKIP_SIGNATURE", "no")]).starts_with("application default"));
        // A file and a key both fail the build, before anything else is looked at.
        assert_eq!(
            gcs(&[
                ("GOOGLE_SKIP_SIGNATURE", "true"),
                ("SERVICE_ACCOUNT", "/f"),
                ("GOOGLE_SERVICE_ACCOUNT_KEY", "{}")
            ]),
            "both SERVICE_ACCOUNT and GOOGLE_SERVICE_ACCOUNT_KEY: give one"
        );
        assert_eq!(
            credential_source(Scheme::Https, &env(&[("AWS_ACCESS_KEY_ID", "k")])),
            "none (plain HTTP GET)"
        );
    }

    /// An environment, as name-value pairs.
    type Vars<'a> = &'a [(&'a str, &'a str)];

    fn checked(scheme: Scheme, vars: Vars<'_>) -> std::result::Result<(), String> {
        check(scheme, &env(vars), "s3://b/k").map_err(|e| e.to_string())
    }

    /// A plain-HTTP STS endpoint for web identity credentials: `object_store` refuses it at the
    /// first read (HTTPS only), with an error naming no variable; refused here, naming it.
    #[test]
    fn a_plain_http_sts_endpoint_is_refused_naming_it() {
        let web = [
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
        ];
        let mut vars = web.to_vec();
        vars.push(("AWS_ENDPOINT_URL_STS", "http://localhost:4566"));
        vars.push(("AWS_ALLOW_HTTP", "true"));
        let e = checked(Scheme::S3, &vars).unwrap_err();
        assert!(
            e.contains("AWS_ENDPOINT_URL_STS") && e.contains("HTTPS only"),
            "{e}"
        );
        let mut vars = web.to_vec();
        vars.push(("AWS_ENDPOINT_URL_STS", "https://sts.example.com"));
        assert_eq!(checked(Scheme::S3, &vars), Ok(()));
    }

    /// A service account key put where a file's path goes: `object_store` named it as the file
    /// it could not open, and the build error printed the key whole. Refused, naming the
    /// variable and not the value.
    #[test]
    fn a_key_given_as_a_credentials_file_path_is_refused_without_echoing_it() {
        let key =
            r#"{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIE"}"#;
        for name in [
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_SERVICE_ACCOUNT",
            "GOOGLE_SERVICE_ACCOUNT_PATH",
            "SERVICE_ACCOUNT",
        ] {
            let e = checked(Scheme::Gcs, &[(name, key)]).unwrap_err();
            assert!(e.contains(name) && e.contains("not a file's path"), "{e}");
            assert!(
                !e.contains("PRIVATE") && !e.contains("service_account\""),
                "{e}"
            );
        }
        assert_eq!(
            checked(
                Scheme::Gcs,
                &[("GOOGLE_APPLICATION_CREDENTIALS", "/k/sa.json")]
            ),
            Ok(())
        );
    }

    #[test]
    fn values_object_store_would_panic_on_are_errors_naming_the_variable() {
        let ok = [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ALLOW_HTTP", "TRUE"),
            ("AWS_REGION", "any region, with an endpoint"),
            ("AWS_ACCESS_KEY_ID", "AKIA\tX"),
        ];
        assert_eq!(checked(Scheme::S3, &ok), Ok(()));
        assert_eq!(checked(Scheme::S3, &[("AWS_REGION", "eu-west-3")]), Ok(()));
        for region in ["eu_west", "eu.west", "eu/west", "us east-1"] {
            assert!(
                checked(Scheme::S3, &[("AWS_REGION", region)]).is_err(),
                "{region}"
            );
        }
        let cases: &[(Scheme, Vars<'_>, &str)] = &[
            // The S3 endpoint is checked over the generic one, whatever the other holds.
            (
                Scheme::S3,
                &[
                    ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
                    ("AWS_ALLOW_HTTP", "1"),
                    ("AWS_ENDPOINT_URL_S3", "http://a b"),
                ],
                "AWS_ENDPOINT_URL_S3 is not a valid URL",
            ),
            (
                Scheme::S3,
                &[("AWS_ENDPOINT_URL_S3", "https://k:secret@h")],
                "AWS_ENDPOINT_URL_S3 holds '@', credentials in the URL",
            ),
            (
                Scheme::S3,
                &[("AWS_ENDPOINT_URL_S3", "https://k:se/cret@h")],
                "AWS_ENDPOINT_URL_S3 holds '@', credentials in the URL",
            ),
            (
                Scheme::S3,
                &[("AWS_ENDPOINT", "http://h:1"), ("AWS_ALLOW_HTTP", "false")],
                "AWS_ENDPOINT is plain HTTP (http://h:1): set AWS_ALLOW_HTTP=true",
            ),
            (
                Scheme::S3,
                &[
                    ("AWS_ENDPOINT_URL", "https://h"),
                    ("AWS_ALLOW_HTTP", " true"),
                ],
                "AWS_ALLOW_HTTP is \" true\": it takes true or false",
            ),
            (
                Scheme::S3,
                &[("AWS_REGION", "us east-1")],
                "AWS_REGION is not a region name",
            ),
            (
                Scheme::S3,
                &[("AWS_DEFAULT_REGION", "")],
                "AWS_DEFAULT_REGION is not a region name",
            ),
            (
                Scheme::S3,
                &[("AWS_ENDPOINT_URL", "https://h"), ("AWS_REGION", "r\n")],
                "AWS_REGION holds a control character (byte 0x0a at position 1 of 2; a line end",
            ),
            (
                Scheme::S3,
                &[
                    ("AWS_ACCESS_KEY_ID", "k"),
                    ("AWS_SECRET_ACCESS_KEY", "s"),
                    ("AWS_SESSION_TOKEN", "tok-secret\r"),
                ],
                "AWS_SESSION_TOKEN holds a control character (byte 0x0d at position 10 of 11",
            ),
            (
                Scheme::S3,
                &[("AWS_ACCESS_KEY_ID", "AKIA\u{7f}")],
                "AWS_ACCESS_KEY_ID holds a control character (byte 0x7f at position 4 of 5)",
            ),
            (
                Scheme::Gcs,
                &[("GOOGLE_BASE_URL", "localhost:1")],
                "GOOGLE_BASE_URL must be an http:// or https:// URL",
            ),
            (
                Scheme::Gcs,
                &[
                    ("GOOGLE_BASE_URL", "http://localhost:1"),
                    ("GOOGLE_ALLOW_HTTP", "false"),
                ],
                "set GOOGLE_ALLOW_HTTP=true",
            ),
            (
                Scheme::Gcs,
                &[("GCE_METADATA_HOST", "metadata host")],
                "GCE_METADATA_HOST must be a host name or address",
            ),
            (
                Scheme::Gcs,
                &[("GCE_METADATA_IP", "169.254.169.254/x")],
                "GCE_METADATA_IP must be a host name or address",
            ),
            // A port the HTTP layer takes but the URL crate refuses.
            (
                Scheme::Gcs,
                &[("GCE_METADATA_ROOT", "169.254.169.254:99999")],
                "GCE_METADATA_ROOT must be a host name or address",
            ),
            // Paths are appended to a base URL: no query or fragment.
            (
                Scheme::S3,
                &[("AWS_ENDPOINT_URL", "https://s3.example.com/?x=1")],
                "AWS_ENDPOINT_URL has a query string or fragment",
            ),
            (
                Scheme::Gcs,
                &[("GOOGLE_BASE_URL", "https://gcs.example.com/#f")],
                "GOOGLE_BASE_URL has a query string or fragment",
            ),
            (
                Scheme::Gcs,
                &[("GOOGLE_BEARER_TOKEN", "tok-secret\n")],
                "GOOGLE_BEARER_TOKEN holds a control character",
            ),
        ];
        for (scheme, vars, want) in cases {
            let err = checked(*scheme, vars).unwrap_err();
            assert!(err.contains(want), "{vars:?}: {err}");
            assert!(err.starts_with("s3://b/k"), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
        assert_eq!(
            checked(
                Scheme::Gcs,
                &[
                    ("GOOGLE_BASE_URL", "http://localhost:1"),
                    ("GOOGLE_ALLOW_HTTP", "yes")
                ]
            ),
            Ok(())
        );
        // object_store's GCS client allows plain HTTP unless told otherwise (a local
        // fake-gcs-server); the metadata host is checked only where the metadata server is used.
        for vars in [
            &[("GOOGLE_BASE_URL", "http://localhost:4443")][..],
            &[("GCE_METADATA_HOST", "169.254.169.254:80")],
            &[("GCE_METADATA_HOST", "a b"), ("GOOGLE_BEARER_TOKEN", "t")],
            &[
                ("GOOGLE_BEARER_TOKEN", "t\n"),
                ("GOOGLE_SKIP_SIGNATURE", "1"),
            ],
        ] {
            assert_eq!(checked(Scheme::Gcs, vars), Ok(()), "{vars:?}");
        }
        assert_eq!(
            checked(Scheme::Https, &[("AWS_ENDPOINT_URL", "http://a b")]),
            Ok(())
        );
    }

    /// The metadata server's host is checked only where it is used: not when gcloud's
    /// application default credentials file is there to be taken first.
    #[test]
    fn the_metadata_host_is_not_checked_where_gclouds_file_is_used() {
        let home = tempfile::tempdir().unwrap();
        let home_str = home.path().to_str().unwrap();
        let vars = [
            ("HOME", home_str),
            ("APPDATA", home_str),
            ("GCE_METADATA_HOST", "a b"),
        ];
        assert!(checked(Scheme::Gcs, &vars).is_err());
        let file = if cfg!(windows) {
            home.path()
                .join("gcloud/application_default_credentials.json")
        } else {
            home.path()
                .join(".config/gcloud/application_default_credentials.json")
        };
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "{}").unwrap();
        assert_eq!(checked(Scheme::Gcs, &vars), Ok(()));
        // Another variable's folder holding the file is not HOME.
        let elsewhere = [("XDG", home_str), ("GCE_METADATA_HOST", "a b")];
        assert!(checked(Scheme::Gcs, &elsewhere).is_err());
    }

    #[test]
    fn the_credential_sources_own_urls_are_checked_where_that_source_is_used() {
        let cases: &[(Vars<'_>, &str)] = &[
            (
                &[("AWS_METADATA_ENDPOINT", "http://a b")],
                "AWS_METADATA_ENDPOINT is not a valid URL",
            ),
            (
                &[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/a b")],
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI must be a URL path starting with '/'",
            ),
            (
                &[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "v2/secret")],
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI must be a URL path starting with '/'",
            ),
            (
                &[
                    (
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                        "ftp://169.254.170.23/v1",
                    ),
                    ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/f"),
                ],
                "AWS_CONTAINER_CREDENTIALS_FULL_URI must be an http:// or https:// URL",
            ),
            (
                &[
                    ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
                    ("AWS_ROLE_ARN", "arn"),
                    ("AWS_ENDPOINT_URL_STS", "sts.example.com"),
                ],
                "AWS_ENDPOINT_URL_STS must be an http:// or https:// URL",
            ),
            // The region makes STS's URL for a web identity without its own endpoint.
            (
                &[
                    ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
                    ("AWS_ROLE_ARN", "arn"),
                    ("AWS_ENDPOINT_URL", "https://s3.example.com"),
                    ("AWS_REGION", "eu west"),
                ],
                "AWS_REGION is not a region name",
            ),
            // And S3 Express's.
            (
                &[
                    ("AWS_S3_EXPRESS", "true"),
                    ("AWS_ENDPOINT_URL", "https://s3.example.com"),
                    ("AWS_REGION", "eu west"),
                ],
                "AWS_REGION is not a region name",
            ),
        ];
        for (vars, want) in cases {
            let err = checked(Scheme::S3, vars).unwrap_err();
            assert!(err.contains(want), "{vars:?}: {err}");
        }
        // Plain HTTP is how these are reached: no *_ALLOW_HTTP needed.
        for var in [
            "AWS_METADATA_ENDPOINT",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ] {
            let vars = [
                (var, "http://169.254.170.23/v1"),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/f"),
            ];
            assert_eq!(checked(Scheme::S3, &vars), Ok(()), "{var}");
        }
        assert_eq!(
            checked(
                Scheme::S3,
                &[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/c?id=1")]
            ),
            Ok(())
        );
        // A URL used whole may have a query: object_store keeps it.
        let whole: &[Vars<'_>] = &[
            &[
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "http://169.254.170.23/v1?a=1",
                ),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/f"),
            ],
            &[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
                ("AWS_ROLE_ARN", "arn"),
                ("AWS_ENDPOINT_URL_STS", "https://sts.example.com/?a=1"),
                // With its own endpoint, STS takes no region into a URL.
                ("AWS_ENDPOINT_URL", "https://s3.example.com"),
                ("AWS_REGION", "any region, with endpoints"),
            ],
        ];
        for vars in whole {
            assert_eq!(checked(Scheme::S3, vars), Ok(()), "{vars:?}");
        }
        // A source that is not used is not checked: keys come before instance metadata.
        assert_eq!(
            checked(
                Scheme::S3,
                &[
                    ("AWS_METADATA_ENDPOINT", "http://a b"),
                    ("AWS_ACCESS_KEY_ID", "k"),
                    ("AWS_SECRET_ACCESS_KEY", "s")
                ]
            ),
            Ok(())
        );
        // Nor are the keys when requests are not signed.
        assert_eq!(
            checked(
                Scheme::S3,
                &[("AWS_SKIP_SIGNATURE", "true"), ("AWS_SESSION_TOKEN", "t\n")]
            ),
            Ok(())
        );
    }
}
