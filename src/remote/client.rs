//! The `object_store` client of one bucket or host, built from the environment: heads, bounded
//! listings, and ranged GETs checked against the object first seen. The URLs it serves are
//! [`location`](super::location)'s, the runtime its requests run on [`runtime`](super::runtime)'s,
//! and its errors are translated into the crate's by [`answer`](super::answer).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::list::PaginatedListStore;
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::answer::{mask_user_info, redact_answer, secrets_in_environment};
use super::env::{self, credential_source, Env};
use super::location::{Location, Scheme};
use super::runtime::{block, block_until};
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

/// Bytes of a body a request gathers (as the chunks the connection gives, never copied) before
/// handing them to the reading thread: enough that a hand-off costs nothing next to checksumming
/// and copying them, few enough that they are still in cache when that thread copies them.
pub(crate) const BATCH: u64 = 1 << 20;

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
    /// The same, as a time (to order objects by it).
    pub modified: Option<std::time::SystemTime>,
}

/// The `Last-Modified` of `meta`, where the server gave one (`object_store` puts the epoch where
/// it gave none).
fn last_modified(meta: &object_store::ObjectMeta) -> Option<String> {
    (meta.last_modified.timestamp_nanos_opt() != Some(0)).then(|| meta.last_modified.to_rfc2822())
}

/// The same, as a time.
fn modified(meta: &object_store::ObjectMeta) -> Option<std::time::SystemTime> {
    (meta.last_modified.timestamp_nanos_opt() != Some(0)).then(|| meta.last_modified.into())
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
    pub(super) credentials: String,
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
            modified: modified(&meta),
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
        self.list_bounded(dir, recursive, MAX_LISTED, REQUEST_TIMEOUT)
    }

    /// [`list`](Self::list), bounded by `max` objects and `within` in all.
    pub(crate) fn list_bounded(
        &self,
        dir: &str,
        recursive: bool,
        max: usize,
        within: Duration,
    ) -> Result<Vec<Object>> {
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
            tokio::time::timeout(within, listing).await
        })?
        .map_err(|_| {
            unbounded(format!(
                "the listing did not end within {} s (a store that pages forever?)",
                within.as_secs()
            ))
        })?
        .map_err(|e| self.error(e, &url, None))?
        .map_err(unbounded)?;
        Ok(listed
            .into_iter()
            .map(|m| Object {
                url: self.loc.url(m.location.as_ref()),
                last_modified: last_modified(&m),
                modified: modified(&m),
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

    #[test]
    fn gcs_client_builds_from_the_environment_without_network() {
        // Building reads GOOGLE_* only; no request is made until something is read.
        let loc = Location::parse("gs://some-bucket/ckpt/model.ckpt-100").unwrap();
        let c = Client::new(&loc, &RemoteOptions::default()).unwrap();
        assert!(c.credentials.contains("GOOGLE") || c.credentials.contains("metadata"));
        assert_eq!(c.loc.url("x.index"), "gs://some-bucket/x.index");
    }
}
