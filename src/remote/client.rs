//! URLs, `object_store` clients built from the environment, the internal tokio runtime, and the
//! translation of `object_store`'s errors into the crate's (naming the URL and the credential
//! source, never a secret).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::list::PaginatedListStore;
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::env::{self, credential_source, Env};
use crate::base::error::{Error, ErrorKind, Result};
use crate::base::par::PerProcess;
use crate::load::RemoteOptions;

/// The longest one request may take, its body included (`object_store`'s default is 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest a body may go without a byte before the request fails (and is retried).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// This crate's request and read timeouts, where they replace `object_store`'s defaults.
fn timeouts() -> [(object_store::ClientConfigKey, String); 2] {
    use object_store::ClientConfigKey::{ReadTimeout, Timeout};
    [
        (Timeout, format!("{}s", REQUEST_TIMEOUT.as_secs())),
        (ReadTimeout, format!("{}s", READ_TIMEOUT.as_secs())),
    ]
}

/// Whether the environment sets `object_store`'s client option `key` for a store whose
/// variables start with `prefix` (`AWS_`, `GOOGLE_`), as `from_env` reads them.
fn set_in_environment(prefix: &str, key: object_store::ClientConfigKey) -> bool {
    set_in(std::env::vars_os(), prefix, key)
}

/// [`set_in_environment`] for the variables `vars`: a name starting with `prefix` exactly, the
/// rest in any case, with a UTF-8 value (`from_env` skips the others).
fn set_in(
    mut vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    prefix: &str,
    key: object_store::ClientConfigKey,
) -> bool {
    let name = format!("{prefix}{}", key.as_ref()).to_ascii_lowercase();
    vars.any(|(k, v)| {
        v.to_str().is_some()
            && k.to_str()
                .is_some_and(|k| k.starts_with(prefix) && k.to_ascii_lowercase() == name)
    })
}

/// The S3 client's configuration from the environment, with this crate's timeouts where the
/// environment (`AWS_TIMEOUT`, `AWS_READ_TIMEOUT`) sets none.
fn s3_builder() -> object_store::aws::AmazonS3Builder {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey::Client};
    let mut b = AmazonS3Builder::from_env();
    for (key, value) in timeouts() {
        if !set_in_environment("AWS_", key) {
            b = b.with_config(Client(key), value);
        }
    }
    b
}

/// [`s3_builder`] for GCS (`GOOGLE_TIMEOUT`, `GOOGLE_READ_TIMEOUT`).
fn gcs_builder() -> object_store::gcp::GoogleCloudStorageBuilder {
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey::Client};
    let mut b = GoogleCloudStorageBuilder::from_env();
    for (key, value) in timeouts() {
        if !set_in_environment("GOOGLE_", key) {
            b = b.with_config(Client(key), value);
        }
    }
    b
}

/// The bytes a request must bring for a range's retry budget to start again.
const PROGRESS: u64 = 1 << 20;
/// The most objects a recursive listing takes (a V1 glob's folder and what lies below it).
const MAX_LISTED: usize = 1_000_000;

/// The items of `stream`, or `Ok(Err(max))` once it holds more than `max`: a stream that never
/// ends is given up, not gathered until memory runs out.
async fn collect_at_most<T, E>(
    mut stream: impl futures_util::Stream<Item = std::result::Result<T, E>> + Unpin,
    max: usize,
) -> std::result::Result<std::result::Result<Vec<T>, usize>, E> {
    let mut found = Vec::new();
    while let Some(item) = stream.next().await {
        if found.len() == max {
            return Ok(Err(max));
        }
        found.push(item?);
    }
    Ok(Ok(found))
}

/// The objects directly under `prefix` (ending in `/`), or with `recursive` every object below
/// it, page by page: at most `max` of them in at most 100,000 pages, and no page token twice (a
/// gateway that ignores the token answers page 1 forever); each limit is `Ok(Err(reason))`.
async fn list_pages_at_most(
    pages: &dyn PaginatedListStore,
    prefix: Option<&str>,
    recursive: bool,
    max: usize,
) -> object_store::Result<std::result::Result<Vec<object_store::ObjectMeta>, String>> {
    // Empty pages under new tokens: as many as a million objects take in pages of ten.
    const MAX_PAGES: usize = 100_000;
    let mut found = Vec::new();
    let mut tokens = std::collections::HashSet::new();
    let mut page_token = None;
    loop {
        if tokens.len() == MAX_PAGES {
            return Ok(Err(format!(
                "more than {MAX_PAGES} pages, with {} objects: a listing that would never end",
                found.len()
            )));
        }
        let options = object_store::list::PaginatedListOptions {
            delimiter: (!recursive).then_some("/".into()),
            page_token,
            ..Default::default()
        };
        let page = pages.list_paginated(prefix, options).await?;
        if found.len() + page.result.objects.len() > max {
            return Ok(Err(too_many_objects(max)));
        }
        found.extend(page.result.objects);
        match page.page_token {
            None => return Ok(Ok(found)),
            Some(t) if !tokens.insert(t.clone()) => {
                return Ok(Err(format!(
                    "the store answered the same page token twice, after {} objects: a \
                     listing that would never end",
                    found.len()
                )))
            }
            Some(t) => page_token = Some(t),
        }
    }
}

fn too_many_objects(max: usize) -> String {
    format!("more than {max} objects under it: name the checkpoint's folder, not one above it")
}

/// The object storage schemes a checkpoint URL may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    S3,
    Gcs,
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
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

/// Bytes of a body a request gathers (as the chunks the connection gives, never copied) before
/// handing them to the reading thread: enough that a hand-off costs nothing next to checksumming
/// and copying them, few enough that they are still in cache when that thread copies them.
pub(crate) const BATCH: u64 = 1 << 20;

/// The runtime every request runs on: a few worker threads of our own, so that callers need no
/// runtime and a caller inside someone else's runtime is not blocked by ours. One per process
/// (`PerProcess`): a child forked after the parent used it builds its own.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    /// Dropped without waiting (only a runtime built by a thread that lost the race to store
    /// one is): the caller may be inside an async context, where a plain drop would panic.
    struct Rt(Option<tokio::runtime::Runtime>);
    impl Drop for Rt {
        fn drop(&mut self) {
            if let Some(rt) = self.0.take() {
                rt.shutdown_background();
            }
        }
    }
    static RT: PerProcess<Rt> = PerProcess::new();
    let rt = RT.get_or_try_init(|| {
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("tfckpt-remote")
            .enable_all()
            .build()
            .map(|rt| Rt(Some(rt)))
            .map_err(|e| -> crate::Error {
                ErrorKind::Remote {
                    url: String::new(),
                    range: None,
                    reason: format!("cannot start the I/O runtime: {e}"),
                }
                .into()
            })
    })?;
    Ok(rt.0.as_ref().expect("a stored runtime is never taken"))
}

/// Runs `fut` on the runtime and returns a receiver of its output: the caller waits on a plain
/// channel, never inside the runtime (so this works from any thread, async or not).
pub(crate) fn spawn<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
    done: crossbeam_channel::Sender<T>,
) -> Result<tokio::task::JoinHandle<()>> {
    let rt = runtime()?;
    Ok(rt.spawn(async move {
        let _ = done.send(fut.await);
    }))
}

thread_local! {
    /// The cancel token of the load for which this thread opens checkpoints ([`cancel_scope`]).
    static SCOPE: std::cell::RefCell<Option<crate::load::CancelToken>> =
        const { std::cell::RefCell::new(None) };
}

/// Until the guard drops, the waits of this thread for object storage ([`block`], `fetch::stream`)
/// that were given no cancel token of their own give up once `token` is cancelled: for opening a
/// checkpoint within a load, whose many requests (resolving, listing, the index) are made far
/// from the load's options. The previous scope is back when the guard drops.
pub(crate) fn cancel_scope(token: Option<&crate::load::CancelToken>) -> CancelScope {
    CancelScope(SCOPE.with(|s| s.replace(token.cloned())))
}

/// See [`cancel_scope`].
pub(crate) struct CancelScope(Option<crate::load::CancelToken>);

impl Drop for CancelScope {
    fn drop(&mut self) {
        let previous = self.0.take();
        SCOPE.with(|s| *s.borrow_mut() = previous);
    }
}

/// The token of this thread's [`cancel_scope`], if any.
pub(crate) fn scoped_cancel() -> Option<crate::load::CancelToken> {
    SCOPE.with(|s| s.borrow().clone())
}

/// Runs `fut` on the runtime and waits for it on this thread.
pub(crate) fn block<T: Send + 'static>(
    url: &str,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    block_until(url, fut, None)
}

/// [`block`], given up (the request abandoned) with [`ErrorKind::Cancelled`] once `cancel` (or,
/// without one, this thread's [`cancel_scope`]) is.
pub(crate) fn block_until<T: Send + 'static>(
    url: &str,
    fut: impl std::future::Future<Output = T> + Send + 'static,
    cancel: Option<&crate::load::CancelToken>,
) -> Result<T> {
    let scoped = if cancel.is_none() {
        scoped_cancel()
    } else {
        None
    };
    let cancel = cancel.or(scoped.as_ref());
    if let Some(c) = cancel {
        c.check()?;
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    let task = spawn(unpanicked(fut), tx)?;
    let failed = |reason: String| -> Error {
        ErrorKind::Remote {
            url: url.to_string(),
            range: None,
            reason,
        }
        .into()
    };
    let answer = loop {
        let Some(c) = cancel else {
            break rx.recv().map_err(|_| ());
        };
        match rx.recv_timeout(super::fetch::CANCEL_POLL) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if let Err(e) = c.check() {
                    task.abort();
                    return Err(e);
                }
            }
            r => break r.map_err(|_| ()),
        }
    };
    match answer {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(panic)) => Err(failed(panic)),
        Err(()) => Err(failed("the request task ended without an answer".into())),
    }
}

/// `fut`, with a panic in it (in `object_store` or below, which `expect` a valid request) as
/// an error text that says so, with the panic's message (masked as `object_store`'s errors
/// are: [`Client::error`]): the task still answers, and the caller says what went wrong.
pub(crate) async fn unpanicked<T>(
    fut: impl std::future::Future<Output = T>,
) -> std::result::Result<T, String> {
    futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(fut))
        .await
        .map_err(|p| {
            let message = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!(
                "the request failed with a panic in the HTTP client: {}",
                redact_answer(&mask_user_info(&message), &secrets_in_environment())
            )
        })
}

/// One object as first seen: its size and ETag (and, for servers that give no ETag, the time of
/// its last change), against which every later read is checked.
#[derive(Clone, Debug)]
pub(crate) struct Object {
    pub url: String,
    pub path: ObjPath,
    pub size: u64,
    pub etag: Option<String>,
    /// `Last-Modified`, where the server gave one.
    pub last_modified: Option<String>,
}

/// The `Last-Modified` of `meta`, where the server gave one (`object_store` puts the epoch where
/// it gave none).
fn last_modified(meta: &object_store::ObjectMeta) -> Option<String> {
    (meta.last_modified.timestamp_nanos_opt() != Some(0)).then(|| meta.last_modified.to_rfc2822())
}

impl Object {
    /// Whether `self` (seen later) is `first` unchanged: same size and ETag. Without an ETag on
    /// both sides nothing tells an object rewritten at the same size, so the answer is no.
    pub(crate) fn same_as(&self, first: &Object) -> bool {
        self.size == first.size && self.etag.is_some() && self.etag == first.etag
    }
}

/// One bucket's or host's store, and its page-by-page listing where it has one (S3, GCS).
#[derive(Clone)]
struct Stores {
    objects: Arc<dyn ObjectStore>,
    pages: Option<Arc<dyn PaginatedListStore>>,
}

impl Stores {
    fn paged<S: ObjectStore + PaginatedListStore>(store: S) -> Stores {
        let store = Arc::new(store);
        Stores {
            objects: store.clone(),
            pages: Some(store),
        }
    }
}

/// A client for one bucket or host.
pub(crate) struct Client {
    pub loc: Location,
    /// Built again in a child forked after it was built: its connections belong to the
    /// parent's runtime.
    store: PerProcess<Stores>,
    credentials: String,
    pub options: RemoteOptions,
}

impl Client {
    /// Builds the client of `loc`'s bucket or host from the environment only (`AWS_*` for S3,
    /// `GOOGLE_*` for GCS) and the retry policy of `options`.
    pub(crate) fn new(loc: &Location, options: &RemoteOptions) -> Result<Client> {
        let client = Client {
            loc: loc.clone(),
            store: PerProcess::new(),
            credentials: credential_source(loc.scheme, &Env::of_process()),
            options: options.clone(),
        };
        client.store()?;
        Ok(client)
    }

    /// This process's client of the bucket or host.
    fn store(&self) -> Result<Arc<dyn ObjectStore>> {
        self.stores().map(|s| s.objects)
    }

    fn stores(&self) -> Result<Stores> {
        let (loc, options) = (&self.loc, &self.options);
        self.store
            .get_or_try_init(|| Self::build(loc, options))
            .cloned()
    }

    fn build(loc: &Location, options: &RemoteOptions) -> Result<Stores> {
        let retry = object_store::RetryConfig {
            max_retries: options.max_retries,
            retry_timeout: options.retry_timeout,
            backoff: object_store::BackoffConfig {
                init_backoff: options.initial_backoff,
                max_backoff: crate::load::MAX_BACKOFF,
                base: 2.0,
            },
        };
        let url = loc.url(&loc.key);
        let env = Env::of_process();
        env::check(loc.scheme, &env, &url)?;
        // `object_store`'s default request timeout (30 s, body included) cut every range of a
        // slow link short (16 ranges of 16 MiB at once need about 72 Mbit/s to finish in 30 s):
        // a request may take REQUEST_TIMEOUT, and a body that stalls READ_TIMEOUT fails, unless
        // the environment (`AWS_TIMEOUT`, `GOOGLE_READ_TIMEOUT`, ...) says otherwise.
        let built: object_store::Result<Stores> = match loc.scheme {
            Scheme::S3 => s3_builder()
                .with_bucket_name(&loc.authority)
                .with_retry(retry)
                .build()
                .map(Stores::paged),
            Scheme::Gcs => gcs_builder()
                .with_bucket_name(&loc.authority)
                .with_retry(retry)
                .build()
                .map(Stores::paged),
            Scheme::Http | Scheme::Https => object_store::http::HttpBuilder::new()
                .with_url(format!("{}://{}", loc.scheme.as_str(), loc.authority))
                .with_client_options(
                    object_store::ClientOptions::new()
                        .with_allow_http(loc.scheme == Scheme::Http)
                        .with_timeout(REQUEST_TIMEOUT)
                        .with_read_timeout(READ_TIMEOUT),
                )
                .with_retry(retry)
                .build()
                .map(|s| Stores {
                    objects: Arc::new(s),
                    pages: None,
                }),
        };
        // Masked as every request's error is: `object_store` may quote what it could not use
        // (a key it failed to parse, say).
        let store = built.map_err(|e| ErrorKind::Remote {
            url: url.clone(),
            range: None,
            reason: redact_answer(
                &mask_user_info(&format!(
                    "cannot configure the client from the environment ({}): {e}",
                    credential_source(loc.scheme, &env)
                )),
                &secrets_in_environment(),
            ),
        })?;
        Ok(store)
    }

    fn path(&self, key: &str) -> Result<ObjPath> {
        ObjPath::parse(key).map_err(|e| {
            ErrorKind::Remote {
                url: self.loc.url(key),
                range: None,
                reason: format!("not a valid object key: {e}"),
            }
            .into()
        })
    }

    /// The object's size and ETag (a HEAD request).
    pub(crate) fn head(&self, key: &str) -> Result<Object> {
        self.head_until(key, None)
    }

    /// [`head`](Self::head), given up with [`ErrorKind::Cancelled`] once `cancel` is (looked at
    /// every [`CANCEL_POLL`](super::fetch::CANCEL_POLL) while the answer is awaited).
    pub(crate) fn head_until(
        &self,
        key: &str,
        cancel: Option<&crate::load::CancelToken>,
    ) -> Result<Object> {
        let url = self.loc.url(key);
        let path = self.path(key)?;
        let (store, p) = (self.store()?, path.clone());
        let meta = block_until(&url, async move { store.head(&p).await }, cancel)?
            .map_err(|e| self.error(e, &url, None))?;
        Ok(Object {
            url,
            path,
            size: meta.size,
            last_modified: last_modified(&meta),
            etag: meta.e_tag,
        })
    }

    /// Whether an object exists: `Ok(false)` for 404, errors for anything else.
    pub(crate) fn exists(&self, key: &str) -> Result<Option<Object>> {
        match self.head(key) {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The objects directly under `dir` (a key prefix ending in `/`, or empty for the bucket's
    /// top), or with `recursive` every object below it, by key. A listing is bounded: at most
    /// [`MAX_LISTED`] objects, no page token twice (S3, GCS) and [`REQUEST_TIMEOUT`] in all, so
    /// that a store whose pages never end (a gateway that ignores the continuation token answers
    /// page 1 forever) is an error naming the URL, not a hang that fills memory.
    pub(crate) fn list(&self, dir: &str, recursive: bool) -> Result<Vec<Object>> {
        self.list_bounded(dir, recursive, MAX_LISTED)
    }

    fn list_bounded(&self, dir: &str, recursive: bool, max: usize) -> Result<Vec<Object>> {
        let url = self.loc.url(dir);
        let prefix = if dir.is_empty() {
            None
        } else {
            Some(self.path(dir.trim_end_matches('/'))?)
        };
        let stores = self.stores()?;
        let unbounded = |reason: String| -> Error {
            ErrorKind::Remote {
                url: url.clone(),
                range: None,
                reason,
            }
            .into()
        };
        let listed = block(&url, async move {
            let listing = async {
                if let Some(pages) = &stores.pages {
                    // Page by page, counted, each token once: `list_with_delimiter` gathers every
                    // page first, and the stream of `list` follows a token whatever it is.
                    let under = prefix.as_ref().map(|p| format!("{p}/"));
                    list_pages_at_most(&**pages, under.as_deref(), recursive, max).await
                } else if recursive {
                    let all = collect_at_most(stores.objects.list(prefix.as_ref()), max).await?;
                    Ok(all.map_err(too_many_objects))
                } else {
                    // One request (a WebDAV PROPFIND of depth 1): no pages.
                    let listing = stores.objects.list_with_delimiter(prefix.as_ref()).await?;
                    Ok(Ok(listing.objects))
                }
            };
            tokio::time::timeout(REQUEST_TIMEOUT, listing).await
        })?
        .map_err(|_| {
            unbounded(format!(
                "the listing did not end within {} s (a store that pages forever?)",
                REQUEST_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| self.error(e, &url, None))?
        .map_err(unbounded)?;
        Ok(listed
            .into_iter()
            .map(|m| Object {
                url: self.loc.url(m.location.as_ref()),
                last_modified: last_modified(&m),
                path: m.location,
                size: m.size,
                etag: m.e_tag,
            })
            .collect())
    }

    /// Whether any key lies under `dir` (a key prefix ending in `/`): one listing request (the
    /// first page only). A bucket that does not exist is an error saying so.
    pub(crate) fn has_keys_under(&self, dir: &str) -> Result<bool> {
        let url = self.loc.url(dir);
        let prefix = self.path(dir.trim_end_matches('/'))?;
        let stores = self.stores()?;
        let any = block(&url, async move {
            match &stores.pages {
                // One page of one key: the stream of `list` asks for the next page while they
                // come back empty with a page token, forever where a gateway ignores the token.
                Some(pages) => {
                    let options = object_store::list::PaginatedListOptions {
                        max_keys: Some(1),
                        ..Default::default()
                    };
                    let under = format!("{prefix}/");
                    let page = pages.list_paginated(Some(&under), options).await?;
                    Ok(!page.result.objects.is_empty())
                }
                None => Ok(stores
                    .objects
                    .list(Some(&prefix))
                    .next()
                    .await
                    .transpose()?
                    .is_some()),
            }
        })?
        .map_err(|e| {
            // A listing's 404 is the bucket's (object_store reports it as a plain status).
            let missing = matches!(e, object_store::Error::NotFound { .. })
                || e.to_string().contains("404 Not Found");
            if missing {
                return ErrorKind::RemoteAccess {
                    url: self.loc.url(""),
                    not_found: true,
                    credentials: self.credentials.clone(),
                    reason: "no such bucket (or none these credentials can list)".into(),
                }
                .into();
            }
            self.error(e, &url, None)
        })?;
        Ok(any)
    }

    /// The future of one ranged GET of `obj`, checked: exactly the bytes asked for, from the same
    /// object (size and ETag, and `If-Match` where the store honours it). The body is not gathered:
    /// its chunks are handed to `emit(at, chunks)` as they arrive, in order, in batches of about
    /// [`BATCH`] bytes (`at` is the offset of the first within `range`), so that they can be
    /// checksummed and copied into their destination while they are in cache. A body that ends
    /// short, or is broken off in an answer without an ETag, is requested again (within
    /// [`RemoteOptions`]' retries and time), resuming after the bytes already handed on; the
    /// request itself, and a body broken off in an answer with an ETag, are retried by
    /// `object_store` alone (retrying its failures again would multiply the retries), unless
    /// that answer brought at least 1 MiB (or the rest) before `object_store` gave up: its retry
    /// count and time, which progress does not renew, do not end a body that keeps arriving.
    /// `emit` returns false when nobody reads any more, which ends the request.
    pub(crate) fn fetch(
        self: &Arc<Self>,
        obj: &Arc<Object>,
        range: std::ops::Range<u64>,
        mut emit: impl FnMut(u64, Vec<Bytes>) -> bool + Send + 'static,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let (client, obj) = (self.clone(), obj.clone());
        let store = self.store();
        async move {
            let store = store?;
            let mut start = Instant::now();
            let mut backoff = client.options.initial_backoff;
            let mut attempt = 0;
            let want = range.end - range.start;
            let span = Some((range.start, range.end));
            // Bytes handed on so far: a retry asks for the rest only.
            let mut got = 0u64;
            // The retry budget counts from the last request that brought at least 1 MiB (or
            // the rest): a body that keeps arriving over a slow link, broken off now and then,
            // is not given up; one broken off after a few bytes each time is.
            let progressed =
                |before: u64, got: u64| got > before && got - before >= PROGRESS.min(want - before);
            // The failure the next request retries (none for the first).
            let mut retrying: Option<Error> = None;
            loop {
                let got_before = got;
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(range.start + got..range.end)),
                    // `If-Match` compares strongly: a weak ETag never matches (412), so it is
                    // only compared here, with the ETag of each answer (`changed`).
                    if_match: obj.etag.clone().filter(|e| !e.starts_with("W/")),
                    ..Default::default()
                };
                let request = store.get_opts(&obj.path, opts);
                // A retry gets what is left of the retry time for its answer, `object_store`'s
                // own retries of that request included (they count from the request, not from
                // the first try), so that one started late does not wait out another whole
                // retry time.
                let answer = match retrying.take() {
                    None => request.await,
                    Some(previous) => {
                        let left = client.options.retry_timeout.saturating_sub(start.elapsed());
                        match tokio::time::timeout(left, request).await {
                            Ok(answer) => answer,
                            Err(_) => {
                                return Err(unanswered(previous, client.options.retry_timeout));
                            }
                        }
                    }
                };
                let failed = match answer {
                    Ok(r) => {
                        if let Some(what) = changed(&obj, &r.meta) {
                            return Err(ErrorKind::RemoteChanged {
                                url: obj.url.clone(),
                                range: span,
                                what,
                            }
                            .into());
                        }
                        // `object_store` resumes a body broken off itself (a ranged GET of the
                        // rest, within the same retry policy) when the answer has an ETag to
                        // check the resumed one against.
                        let resumed_by_store = r.meta.e_tag.is_some();
                        let mut body = r.into_stream();
                        let (mut batch, mut batched) = (Vec::new(), 0u64);
                        let ended = loop {
                            match body.next().await {
                                Some(Ok(chunk)) => {
                                    if got + batched + chunk.len() as u64 > want {
                                        return Err(ErrorKind::Remote {
                                            url: obj.url.clone(),
                                            range: span,
                                            reason: format!(
                                                "the server sent more than the {want} bytes asked for"
                                            ),
                                        }
                                        .into());
                                    }
                                    batched += chunk.len() as u64;
                                    batch.push(chunk);
                                    if batched >= BATCH {
                                        if !emit(got, std::mem::take(&mut batch)) {
                                            return Ok(());
                                        }
                                        (got, batched) = (got + batched, 0);
                                    }
                                }
                                Some(Err(e)) => break Some(e),
                                None => break None,
                            }
                        };
                        if batched > 0 {
                            if !emit(got, batch) {
                                return Ok(());
                            }
                            got += batched;
                        }
                        match ended {
                            // Every byte came (a body error after the last one changes nothing).
                            _ if got == want => return Ok(()),
                            None => client_error_short(&obj.url, span, got, want),
                            // Broken off in an answer without an ETag: resumed here.
                            Some(e @ object_store::Error::Generic { .. }) if !resumed_by_store => {
                                client.error(e, &obj.url, span)
                            }
                            // `object_store` resumed it until its retries were spent, which
                            // progress does not renew (its retry timeout counts from the first
                            // request, so a slow link's range outlasting it was never resumed
                            // again). Resumed here if it brought enough to renew this budget;
                            // otherwise resuming it again would multiply the retries.
                            Some(e @ object_store::Error::Generic { .. })
                                if progressed(got_before, got) =>
                            {
                                client.error(e, &obj.url, span)
                            }
                            Some(e) => {
                                let left =
                                    client.options.retry_timeout.saturating_sub(start.elapsed());
                                return Err(client.broken_off(&*store, &obj, e, span, left).await);
                            }
                        }
                    }
                    // The request itself failed after `object_store`'s own retries (of 5xx
                    // answers, timeouts, refused connections): retrying it again would multiply
                    // them.
                    Err(e) => return Err(client.read_error(e, &obj, span)),
                };
                if progressed(got_before, got) {
                    (start, attempt, backoff) = (Instant::now(), 0, client.options.initial_backoff);
                }
                attempt += 1;
                if attempt > client.options.max_retries
                    || start.elapsed().saturating_add(backoff) > client.options.retry_timeout
                {
                    return Err(failed);
                }
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(crate::load::MAX_BACKOFF);
                retrying = Some(failed);
            }
        }
    }

    /// The crate's error for `e`, met reading bytes `range` of `obj`, an object seen before: a
    /// 404 now says that it was removed since, a change of the checkpoint under the reader (not
    /// a question of credentials, which could see it).
    fn read_error(&self, e: object_store::Error, obj: &Object, range: Option<(u64, u64)>) -> Error {
        use object_store::Error as E;
        let missing = |e: &E| matches!(e, E::NotFound { .. });
        let gone = match &e {
            // Also when `object_store` met it resuming a body it broke off (passed on wrapped).
            E::Generic { source, .. } => source.downcast_ref::<E>().is_some_and(missing),
            e => missing(e),
        };
        if gone {
            return ErrorKind::RemoteChanged {
                url: obj.url.clone(),
                range,
                what: crate::base::error::GONE.into(),
            }
            .into();
        }
        self.error(e, &obj.url, range)
    }

    /// The error for a body broken off (`e`) that `object_store` could not resume. Where the
    /// object has a weak ETag, which is never sent as `If-Match`, a resumed request that found
    /// another ETag ends the same way (`object_store` passes the body's error on), so the object
    /// is asked for again, if `left` (what is left of the retry time) is not zero, for at most
    /// that long: if it changed, that is the error.
    async fn broken_off(
        &self,
        store: &dyn ObjectStore,
        obj: &Object,
        e: object_store::Error,
        range: Option<(u64, u64)>,
        left: Duration,
    ) -> Error {
        let weak = obj.etag.as_deref().is_some_and(|t| t.starts_with("W/"));
        if weak && !left.is_zero() && matches!(e, object_store::Error::Generic { .. }) {
            let head = tokio::time::timeout(left, store.head(&obj.path));
            match head.await {
                Ok(Ok(meta)) => {
                    if let Some(what) = changed(obj, &meta) {
                        return ErrorKind::RemoteChanged {
                            url: obj.url.clone(),
                            range,
                            what,
                        }
                        .into();
                    }
                }
                Ok(Err(other)) => {
                    let other = self.read_error(other, obj, range);
                    if matches!(other.kind(), ErrorKind::RemoteChanged { .. }) {
                        return other;
                    }
                }
                Err(_) => {} // no answer: the body's error is the one to report
            }
        }
        self.read_error(e, obj, range)
    }

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
fn mask_user_info(text: &str) -> String {
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
fn redact_answer(text: &str, secrets: &[String]) -> String {
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
fn secrets_in_environment() -> Vec<String> {
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

/// What changed in `obj` since it was first seen, as `meta` (from a later request) shows.
fn changed(obj: &Object, meta: &object_store::ObjectMeta) -> Option<String> {
    if meta.size != obj.size {
        return Some(format!("size was {} bytes, is {}", obj.size, meta.size));
    }
    match (&obj.etag, &meta.e_tag) {
        (Some(a), Some(b)) => (a != b).then(|| format!("ETag was {a}, is {b}")),
        // Where an ETag is missing (a plain HTTP server gives none), the time of the last change
        // tells an object rewritten at the same size (to the second).
        _ => match (&obj.last_modified, last_modified(meta)) {
            (Some(a), Some(b)) if *a != b => Some(format!("Last-Modified was {a}, is {b}")),
            _ => None,
        },
    }
}

/// `previous`, the failure a retry was made for, saying that the retry got no answer within the
/// retry time `within`.
fn unanswered(previous: Error, within: Duration) -> Error {
    match previous.into_kind() {
        ErrorKind::Remote { url, range, reason } => ErrorKind::Remote {
            url,
            range,
            reason: format!("{reason}; a retry got no answer within the retry time ({within:?})"),
        }
        .into(),
        kind => kind.into(),
    }
}

fn client_error_short(url: &str, range: Option<(u64, u64)>, got: u64, want: u64) -> Error {
    ErrorKind::Remote {
        url: url.to_string(),
        range,
        reason: format!("short read: {got} of {want} bytes"),
    }
    .into()
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

    /// The S3 and GCS clients take this crate's timeouts (10 minutes a request, 30 s without a
    /// byte) unless the environment sets them: `object_store`'s default request timeout, 30 s
    /// for the whole body, was kept (the check asked whether one was configured, and the default
    /// counts as configured).
    #[test]
    fn the_stores_take_this_crates_timeouts() {
        use object_store::ClientConfigKey::{ReadTimeout, Timeout};
        for (key, want) in [(Timeout, "600s"), (ReadTimeout, "30s")] {
            let set = ["AWS_", "GOOGLE_"].map(|p| set_in_environment(p, key));
            if set.iter().any(|&s| s) {
                continue; // this process's environment chose (`AWS_TIMEOUT`, say)
            }
            let key_s3 = object_store::aws::AmazonS3ConfigKey::Client(key);
            let key_gcs = object_store::gcp::GoogleConfigKey::Client(key);
            let (s3, gcs) = (
                s3_builder().get_config_value(&key_s3),
                gcs_builder().get_config_value(&key_gcs),
            );
            assert_eq!(s3.as_deref(), Some(want));
            assert_eq!(gcs.as_deref(), Some(want));
        }
    }

    /// A timeout the environment names is the environment's, whatever its value (one equal to
    /// `object_store`'s default was taken for unset and replaced): names as `from_env` reads them.
    #[test]
    fn a_timeout_the_environment_names_is_kept() {
        use object_store::ClientConfigKey::{ReadTimeout, Timeout};
        let vars = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect::<Vec<(std::ffi::OsString, std::ffi::OsString)>>()
                .into_iter()
        };
        assert!(set_in(vars(&[("AWS_TIMEOUT", "30s")]), "AWS_", Timeout));
        assert!(set_in(
            vars(&[("AWS_Read_Timeout", "5s")]),
            "AWS_",
            ReadTimeout
        ));
        assert!(!set_in(vars(&[("aws_timeout", "5s")]), "AWS_", Timeout));
        assert!(!set_in(vars(&[("GOOGLE_TIMEOUT", "5s")]), "AWS_", Timeout));
        assert!(!set_in(vars(&[("AWS_TIMEOUT", "5s")]), "AWS_", ReadTimeout));
        assert!(set_in(
            vars(&[("GOOGLE_TIMEOUT", "5s")]),
            "GOOGLE_",
            Timeout
        ));
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let bad = std::ffi::OsString::from_vec(vec![0xff]);
            let v = vec![("AWS_TIMEOUT".into(), bad)].into_iter();
            assert!(!set_in(v, "AWS_", Timeout));
        }
    }

    /// A listing whose pages never end is given up at the bound; one that ends is whole.
    #[test]
    fn an_endless_listing_is_given_up_at_its_bound() {
        use futures_util::stream;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let endless = stream::repeat_with(|| Ok::<u8, ()>(7));
        let r = rt.block_on(collect_at_most(endless, 1000));
        assert_eq!(r, Ok(Err(1000)));
        let ten = stream::iter((0..10).map(Ok::<u8, ()>));
        let r = rt.block_on(collect_at_most(ten, 10));
        assert_eq!(r, Ok(Ok((0..10).collect())));
        let failing = stream::iter([Ok(1u8), Err("503")]);
        let r = rt.block_on(collect_at_most(failing, 10));
        assert_eq!(r, Err("503"));
    }

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

    #[test]
    fn gcs_client_builds_from_the_environment_without_network() {
        // Building reads GOOGLE_* only; no request is made until something is read.
        let loc = Location::parse("gs://some-bucket/ckpt/model.ckpt-100").unwrap();
        let c = Client::new(&loc, &RemoteOptions::default()).unwrap();
        assert!(c.credentials.contains("GOOGLE") || c.credentials.contains("metadata"));
        assert_eq!(c.loc.url("x.index"), "gs://some-bucket/x.index");
    }
}
