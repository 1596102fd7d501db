//! The node's one stop signal is a [`CancellationToken`]: tasks await it, and threads that
//! block (on a channel, on a condition variable) are woken by [`wake_on_cancel`].

use tokio_util::sync::CancellationToken;

pub use tokio_util::sync::CancellationToken as Token;

/// Why a waker could not be registered.
#[derive(Debug, thiserror::Error)]
#[error("a stop signal needs a tokio runtime to watch it (start the node from inside one)")]
pub struct NoRuntime;

/// Runs `wake` once, when `token` is cancelled (at once if it already is), however the
/// cancellation comes: directly, or from a parent token.
pub fn wake_on_cancel(
    token: &CancellationToken,
    wake: impl FnOnce() + Send + 'static,
) -> Result<(), NoRuntime> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
    let token = token.clone();
    handle.spawn(async move {
        token.cancelled().await;
        wake();
    });
    Ok(())
}
