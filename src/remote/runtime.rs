//! The internal tokio runtime every request runs on, and the ways the synchronous API waits for
//! its tasks (with a load's cancellation in scope).

use super::answer::{mask_user_info, redact_answer, secrets_in_environment};
use crate::base::error::{Error, ErrorKind, Result};
use crate::base::par::PerProcess;

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
/// are: [`Client::error`](super::client::Client::error)): the task still answers, and the
/// caller says what went wrong.
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
