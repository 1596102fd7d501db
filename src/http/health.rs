//! `/health/live` and `/health/ready`.
//!
//! Liveness is only "the process answers HTTP": restarting a node because its disk is full
//! would not free the disk. Readiness says whether the node can take instances now, with a
//! check per reason so that an operator sees which one failed:
//!
//! - `storage`: a temp file can be created and removed in the storage's `tmp/` (what every
//!   received instance does first);
//! - `free_space`: free space above `node.min_free_mb` (below it stores are refused);
//! - `index`: the index database answers a trivial query;
//! - `scp`: the DICOM listener is accepting;
//! - `onnxruntime` (only when a rule runs a model): the ONNX Runtime library loads (probed
//!   once; loading is what the first model job would do, and its outcome does not change
//!   without a restart).
//!
//! The blocking checks run off the runtime with a time limit; a check still running from an
//! earlier probe (a stuck disk, an index held by a long writer) is reported as failing instead
//! of starting another thread that would block the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::json;

use super::App;

/// The longest a blocking check may take before it counts as failed.
const CHECK_LIMIT: Duration = Duration::from_secs(3);

/// Checks in flight, and the cached ONNX Runtime probe.
#[derive(Default)]
pub(super) struct Health {
    storage_busy: Arc<AtomicBool>,
    index_busy: Arc<AtomicBool>,
    onnx: tokio::sync::OnceCell<Result<String, String>>,
}

/// One check's outcome.
#[derive(Debug, Serialize)]
struct Check {
    ok: bool,
    detail: String,
}

impl Check {
    fn from(r: Result<String, String>) -> Check {
        match r {
            Ok(detail) => Check { ok: true, detail },
            Err(detail) => Check { ok: false, detail },
        }
    }
}

/// `GET /health/live`.
pub(super) async fn live() -> impl IntoResponse {
    Json(json!({ "live": true }))
}

/// `GET /health/ready`: 200 when every check passes, else 503, with the checks as JSON.
pub(super) async fn ready(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut checks = BTreeMap::new();
    let store = app.state.store.clone();
    let storage = guarded(&app.health.storage_busy, "storage", move || {
        let file = store.temp_file().map_err(|e| e.to_string())?;
        drop(file);
        Ok(format!(
            "created and removed a temp file in {}",
            store.root().join("tmp").display()
        ))
    });
    let store = app.state.store.clone();
    let index = guarded(&app.health.index_busy, "index", move || {
        store
            .index()
            .ping()
            .map(|()| "answered".to_string())
            .map_err(|e| e.to_string())
    });
    let store = app.state.store.clone();
    let min_mb = app.state.settings.min_free_mb;
    let free = blocking(move || {
        let free = fs4::available_space(store.root()).map_err(|e| e.to_string())?;
        let free_mb = free / (1024 * 1024);
        let detail = format!("{free_mb} MB free, watermark {min_mb} MB (node.min_free_mb)");
        if free_mb >= min_mb {
            Ok(detail)
        } else {
            Err(detail)
        }
    });
    let (storage, index, free) = tokio::join!(storage, index, free);
    checks.insert("storage", Check::from(storage));
    checks.insert("index", Check::from(index));
    checks.insert("free_space", Check::from(free));
    let listening = app.state.scp_listening.load(Ordering::SeqCst);
    checks.insert(
        "scp",
        Check {
            ok: listening,
            detail: if listening {
                "the DICOM listener is accepting"
            } else {
                "the DICOM listener is not accepting"
            }
            .into(),
        },
    );
    if let Some(settings) = app.state.onnx.clone() {
        let probe = app
            .health
            .onnx
            .get_or_init(|| async move {
                blocking(move || {
                    let path = settings.library_path().map_err(|e| e.to_string())?;
                    crate::onnx::environment(&settings).map_err(|e| e.to_string())?;
                    Ok(format!("loaded {}", path.display()))
                })
                .await
            })
            .await;
        checks.insert("onnxruntime", Check::from(probe.clone()));
    }
    let ready = checks.values().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready, "checks": checks })))
}

/// Runs a blocking check with the time limit.
async fn blocking(
    f: impl FnOnce() -> Result<String, String> + Send + 'static,
) -> Result<String, String> {
    match tokio::time::timeout(CHECK_LIMIT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("the check failed: {e}")),
        Err(_) => Err(format!("no answer within {} s", CHECK_LIMIT.as_secs_f64())),
    }
}

/// [`blocking`], unless the same check is still running from an earlier probe.
async fn guarded(
    busy: &Arc<AtomicBool>,
    what: &'static str,
    f: impl FnOnce() -> Result<String, String> + Send + 'static,
) -> Result<String, String> {
    if busy.swap(true, Ordering::SeqCst) {
        return Err(format!(
            "the previous {what} check has not finished (more than {} s)",
            CHECK_LIMIT.as_secs_f64()
        ));
    }
    let done = Done(busy.clone());
    blocking(move || {
        let _done = done;
        f()
    })
    .await
}

/// Clears a check's busy flag when the check ends, however it ends.
struct Done(Arc<AtomicBool>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}
