//! The HTTP side (`[http]`): health probes, Prometheus metrics and the status page, on the
//! node's tokio runtime (axum).
//!
//! | route | what | who |
//! |---|---|---|
//! | `GET /health/live` | 200 while the process serves | anyone |
//! | `GET /health/ready` | the readiness checks as JSON, 200 or 503 | anyone |
//! | `GET /metrics` | Prometheus text format | loopback, else the token |
//! | `GET /` and `/assets/...` | the status page (HTML, JS, CSS, three.js), all from the binary | anyone |
//! | `GET /api/session`, `/api/series`, `/api/jobs`, `/api/deliveries`, `/api/results`, `/api/commitments`, `/api/mpps` | the page's data (`?limit=`, default 200, at most 1000) | loopback, else the token |
//! | `GET /api/results/{sop_instance_uid}/mesh.stl` | a result's mesh as binary STL | loopback, else the token |
//! | `POST /api/deliveries/{id}/retry` | re-queues a failed delivery | the token, always |
//! | `POST /login`, `POST /logout` | a session cookie for the browser | the token |
//!
//! Why the token is needed for every POST even on loopback: any local process (or a page in a
//! local browser, were it not for the SameSite cookie) could otherwise change the node's
//! state. Patient names and IDs are in the JSON only for an authenticated viewer: a status
//! screen on a corridor monitor shows the node's work without showing who it is about. See
//! [`auth`] for the token and the session cookie.

mod api;
mod assets;
pub mod auth;
mod health;
mod settings;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::onnx::OrtSettings;
use crate::store::Store;
pub use settings::{HttpConfig, HttpSettings, InvalidSetting, MIN_TOKEN_LEN, Secret};

/// Why the HTTP side could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// `[http]` is not acceptable (the message names the key).
    #[error(transparent)]
    Config(#[from] InvalidSetting),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (http.listen): {source}")]
    Bind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Accepting connections failed.
    #[error("HTTP server: {0}")]
    Serve(#[source] std::io::Error),
}

/// What the HTTP side reads from the rest of the node. Cheap to clone (all shared).
#[derive(Clone)]
pub struct HttpState {
    /// The storage and its index.
    pub store: Arc<Store>,
    /// `[http]` and the few other settings the page and the checks read.
    pub settings: Arc<HttpSettings>,
    /// Wakes the delivery task after a retry, so that the row goes out now rather than at
    /// the task's next timer.
    pub delivery_wake: Arc<tokio::sync::Notify>,
    /// Whether the DICOM listener is accepting (set by whoever runs it).
    pub scp_listening: Arc<AtomicBool>,
    /// Renders the Prometheus text exposition (blocking; run off the runtime).
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// ONNX Runtime settings when some rule runs a model pipeline: readiness then includes
    /// whether the library loads. `None`: no model rule, no such check.
    pub onnx: Option<OrtSettings>,
    /// The audit trail: a mesh downloaded is an Export of patient data.
    pub audit: crate::audit::Auditor,
}

/// Binds `[http] listen`; `None` when it is empty (the HTTP side disabled). Refuses an
/// address beyond loopback without a token even if the configuration skipped validation.
pub async fn bind(cfg: &HttpConfig) -> Result<Option<TcpListener>, HttpError> {
    cfg.validate()?;
    let Some(addr) = cfg.listen_addr()? else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves until `shutdown` completes, then lets requests in flight finish (for at most
/// [`SHUTDOWN_GRACE`]). Connections are capped and time out when slow or idle.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let local = listener.local_addr().map_err(HttpError::Serve)?;
    let app = Arc::new(App::new(state, local.ip().is_loopback())?);
    info!(listen = %local, token = app.auth.has_token(), "HTTP status page, health and metrics listening");
    let router = router(app);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: pause rather than spin.
                Err(e) => {
                    warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closing at once costs the node nothing; the DICOM side shares its descriptors.
            debug!(%peer, limit = MAX_CONNECTIONS, "HTTP connection refused: too many open");
            drop(stream);
            continue;
        };
        // The client's address reaches the handlers that audit what leaves (ConnectInfo).
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, "HTTP connection ended: {e}");
            }
            drop(slot);
        });
    }
    // Requests in flight finish; idle keep-alive connections close now.
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        debug!("HTTP connections still open after the grace; dropped");
    }
    Ok(())
}

/// Open HTTP connections at most: a browser uses a handful, Prometheus one. Beyond this a
/// connection is closed at once, so a flood cannot take the file descriptors the DICOM
/// listener needs.
const MAX_CONNECTIONS: usize = 64;

/// A request's headers must arrive within this time, and an idle keep-alive connection is
/// closed after it (hyper applies the timer to the wait for the next request's headers).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head buffered: 64 KiB is far above any browser's, and bounds what a
/// client can make the node hold.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long requests in flight get at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The shared state of the handlers.
struct App {
    state: HttpState,
    auth: auth::Auth,
    /// Reads without the token: only when listening on loopback.
    open_reads: bool,
    health: health::Health,
}

impl App {
    fn new(state: HttpState, open_reads: bool) -> Result<App, HttpError> {
        let token = state.settings.http.token()?;
        Ok(App {
            auth: auth::Auth::new(token),
            open_reads,
            health: health::Health::default(),
            state,
        })
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{*file}", get(assets::asset))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(api::metrics))
        .route("/api/session", get(api::session))
        .route("/api/series", get(api::series))
        .route("/api/jobs", get(api::jobs))
        .route("/api/deliveries", get(api::deliveries))
        .route("/api/results", get(api::results))
        .route("/api/commitments", get(api::commitments))
        .route("/api/mpps", get(api::mpps))
        .route("/api/results/{uid}/mesh.stl", get(api::mesh))
        .route("/api/deliveries/{id}/retry", post(api::retry))
        .route("/login", post(auth::login))
        .route("/logout", post(auth::logout))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::guard,
        ))
        .with_state(app)
}
