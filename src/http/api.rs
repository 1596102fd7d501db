//! The page's JSON API, the mesh download, the retry action and `/metrics`.
//!
//! Every index read runs off the runtime (the index is a mutex around one SQLite
//! connection); lists are newest first and bounded (`?limit=`, [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]). Patient names and IDs are included only for an authenticated viewer.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::App;
use super::auth::Viewer;

/// Rows of a list when the request names no limit.
pub const DEFAULT_LIMIT: usize = 200;
/// The most rows a list returns, whatever the request asks.
pub const MAX_LIMIT: usize = 1000;

/// `?limit=N`.
#[derive(Deserialize)]
pub(super) struct Limit {
    limit: Option<usize>,
}

impl Limit {
    fn get(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT)
    }
}

/// An error answer: status and a sentence as JSON.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Runs an index read off the runtime; a failure is a 500 with its reason.
async fn read<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::db::DbError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            warn!(error = %e, "status page: index read failed");
            Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// Adds the patient's name and ID to `row` for an authenticated viewer.
fn with_patient(mut row: Value, viewer: Viewer, name: Option<String>, id: Option<String>) -> Value {
    if viewer.authenticated {
        row["patient_name"] = json!(name);
        row["patient_id"] = json!(id);
    }
    row
}

/// `GET /api/session`: what the page may show and do.
pub(super) async fn session(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
) -> Json<Value> {
    Json(json!({
        "authenticated": viewer.authenticated,
        "token_configured": app.auth.has_token(),
        "ae_title": app.state.settings.ae_title,
    }))
}

/// A list endpoint: `query` with the request's limit off the runtime, each row as JSON
/// (given whether the viewer may see patients), under `key`.
async fn list<T: Send + 'static>(
    app: &App,
    limit: Limit,
    query: fn(&crate::db::Db, usize) -> Result<Vec<T>, crate::db::DbError>,
    key: &str,
    to_json: impl Fn(T) -> Value,
) -> Response {
    let store = app.state.store.clone();
    let limit = limit.get();
    match read(move || query(store.index(), limit)).await {
        Ok(rows) => {
            let rows: Vec<Value> = rows.into_iter().map(to_json).collect();
            Json(json!({ key: rows })).into_response()
        }
        Err(r) => r,
    }
}

/// `GET /api/series`: recently received series.
pub(super) async fn series(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    Query(limit): Query<Limit>,
) -> Response {
    list(&app, limit, crate::db::Db::recent_series, "series", |s| {
        let row = json!({
            "series_uid": s.series_uid,
            "study_uid": s.study_uid,
            "modality": s.modality,
            "description": s.description,
            "calling_ae": s.calling_ae,
            "received_at": s.received_at,
            "instances": s.instances,
            "state": s.state.map_or("stored", |st| st.as_str()),
            "rule": s.rule,
        });
        with_patient(row, viewer, s.patient_name, s.patient_id)
    })
    .await
}

/// `GET /api/jobs`: recent reconstruction jobs.
pub(super) async fn jobs(State(app): State<Arc<App>>, Query(limit): Query<Limit>) -> Response {
    let now = crate::db::now();
    list(&app, limit, crate::db::Db::list_jobs, "jobs", |j| {
        let duration = j.started_at.map(|s| j.finished_at.unwrap_or(now) - s);
        let failed = j.state == crate::db::JobState::Failed;
        json!({
            "id": j.id,
            "series_uid": j.series_instance_uid,
            "rule": j.rule,
            "state": j.state.as_str(),
            "version": j.version,
            "result_sop_instance_uid": j.result_sop_instance_uid,
            "created_at": j.created_at,
            "started_at": j.started_at,
            "finished_at": j.finished_at,
            "duration_seconds": duration,
            "error": if failed { j.error } else { None },
            "summary": j.summary,
        })
    })
    .await
}

/// `GET /api/deliveries`: the backlog per destination and the recent outbox rows.
pub(super) async fn deliveries(
    State(app): State<Arc<App>>,
    Query(limit): Query<Limit>,
) -> Response {
    let store = app.state.store.clone();
    let limit = limit.get();
    let (mut backlog, rows) = match read(move || {
        let index = store.index();
        Ok((index.delivery_backlog()?, index.list_deliveries(limit)?))
    })
    .await
    {
        Ok(v) => v,
        Err(r) => return r,
    };
    // Destinations that are up to date still get a line (with their latest row's state).
    for r in &rows {
        if !backlog.iter().any(|d| d.destination == r.destination) {
            backlog.push(crate::db::DestinationStatus {
                destination: r.destination.clone(),
                ..Default::default()
            });
        }
    }
    backlog.sort_by(|a, b| a.destination.cmp(&b.destination));
    let destinations: Vec<Value> = backlog
        .into_iter()
        .map(|d| {
            json!({
                "destination": d.destination,
                "pending": d.pending,
                "failed": d.failed,
                "oldest_pending_at": d.oldest_pending_at,
                "last_error": d.last_error,
            })
        })
        .collect();
    let deliveries: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "job_id": r.job_id,
                "sop_instance_uid": r.sop_instance_uid,
                "destination": r.destination,
                "address": r.address,
                "state": r.state.as_str(),
                "attempts": r.attempts,
                "last_error": r.last_error,
                "sent_at": r.sent_at,
                "unconfirmed": r.unconfirmed,
            })
        })
        .collect();
    Json(json!({ "destinations": destinations, "deliveries": deliveries })).into_response()
}

/// `GET /api/commitments`: Storage Commitment transactions, the open ones first, then the
/// newest (what `m3dnode jobs` lists). No patient data: a transaction is a list of UIDs.
pub(super) async fn commitments(
    State(app): State<Arc<App>>,
    Query(limit): Query<Limit>,
) -> Response {
    list(
        &app,
        limit,
        crate::db::Db::list_commitments,
        "commitments",
        |c| {
            json!({
                "transaction_uid": c.transaction_uid,
                "calling_ae": c.calling_ae,
                "state": c.state.as_str(),
                "event_type": c.event_type,
                "items": c.items,
                "failed": c.failed,
                "attempts": c.attempts,
                "requested_at": c.requested_at,
                "reported_at": c.reported_at,
                "last_error": c.last_error,
            })
        },
    )
    .await
}

/// `GET /api/mpps`: Modality Performed Procedure Steps, newest first, each with how many of
/// the series and instances it lists are stored (what `m3dnode jobs` lists). The PPS ID is
/// only for an authenticated viewer: scanners often fill it with the accession number or the
/// patient's ID, which a corridor screen must not show.
pub(super) async fn mpps(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    Query(limit): Query<Limit>,
) -> Response {
    list(&app, limit, crate::db::Db::list_mpps, "mpps", |m| {
        let mut row = json!({
            "sop_instance_uid": m.step.sop_instance_uid,
            "calling_ae": m.step.calling_ae,
            "status": m.step.status.as_str(),
            "study_uid": m.step.study_instance_uid,
            "modality": m.step.modality,
            "created_at": m.step.created_at,
            "updated_at": m.step.updated_at,
            "series_listed": m.series_listed,
            "series_complete": m.series_complete,
            "instances_listed": m.instances_listed,
            "instances_stored": m.instances_stored,
        });
        if viewer.authenticated {
            row["pps_id"] = json!(m.step.pps_id);
        }
        row
    })
    .await
}

/// `GET /api/results`: the results of recent done jobs.
pub(super) async fn results(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    Query(limit): Query<Limit>,
) -> Response {
    list(&app, limit, crate::db::Db::recent_results, "results", |r| {
        // One preview layer per structure, in its recommended colour and opacity.
        let meshes: Vec<Value> = r
            .meshes
            .iter()
            .filter(|m| m.stored)
            .map(|m| {
                json!({
                    "url": format!("/api/results/{}/mesh.stl", m.sop_instance_uid),
                    "sop_instance_uid": m.sop_instance_uid,
                    "label": m.label,
                    "colour": m.colour,
                    "opacity": m.opacity,
                })
            })
            .collect();
        let mesh = meshes
            .first()
            .and_then(|m| m["url"].as_str().map(String::from));
        let row = json!({
            "job_id": r.job_id,
            "series_uid": r.series_uid,
            "rule": r.rule,
            "version": r.version,
            "sop_instance_uid": r.sop_instance_uid,
            "summary": r.summary,
            "finished_at": r.finished_at,
            "modality": r.modality,
            "mesh": mesh,
            "meshes": meshes,
        });
        with_patient(row, viewer, r.patient_name, r.patient_id)
    })
    .await
}

/// Why a mesh could not be served.
enum MeshError {
    NotFound(String),
    Failed(String),
}

/// `GET /api/results/{uid}/mesh.stl`: the STL stored in an Encapsulated STL instance.
/// Recorded in the audit trail as an Export to the client's address.
pub(super) async fn mesh(
    State(app): State<Arc<App>>,
    Path(uid): Path<String>,
    client: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
) -> Response {
    if uid.is_empty() || uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return error(StatusCode::NOT_FOUND, "not a SOP Instance UID");
    }
    let store = app.state.store.clone();
    let audited = app.state.audit.is_enabled();
    let destination = format!(
        "http://{}/api/results/{uid}/mesh.stl",
        client.map_or("unknown".to_string(), |c| c.0.0.ip().to_string())
    );
    let outcome = tokio::task::spawn_blocking(move || {
        let row = store
            .index()
            .get(&uid)
            .map_err(|e| MeshError::Failed(e.to_string()))?
            .ok_or_else(|| MeshError::NotFound(format!("no stored instance {uid}")))?;
        if row.sop_class_uid != crate::encap::ENCAPSULATED_STL_STORAGE {
            return Err(MeshError::NotFound(format!(
                "instance {uid} is not an Encapsulated STL object"
            )));
        }
        let path = store.root().join(&row.path);
        let obj = dicom_object::open_file(&path)
            .map_err(|e| MeshError::Failed(format!("{}: {e}", path.display())))?;
        let stl = crate::encap::extract_stl(&obj).map_err(|e| MeshError::Failed(e.to_string()))?;
        let studies = match audited {
            true => crate::audit::tally_files([path.as_path()]).into_studies(),
            false => Vec::new(),
        };
        Ok((stl, studies))
    })
    .await;
    match outcome {
        Ok(Ok((stl, studies))) => {
            app.state.audit.record(crate::audit::Event::Export {
                destination,
                studies,
                outcome: crate::audit::Outcome::Success,
            });
            (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("model/stl")),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                ],
                stl,
            )
                .into_response()
        }
        Ok(Err(MeshError::NotFound(m))) => error(StatusCode::NOT_FOUND, m),
        Ok(Err(MeshError::Failed(m))) => {
            warn!(error = %m, "status page: a result's mesh could not be read");
            error(StatusCode::INTERNAL_SERVER_ERROR, m)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /api/deliveries/{id}/retry`: a failed delivery back to pending, and delivery woken.
pub(super) async fn retry(State(app): State<Arc<App>>, Path(id): Path<i64>) -> Response {
    let store = app.state.store.clone();
    let deadline = app.state.settings.delivery_deadline_seconds;
    let n = match read(move || store.index().retry_deliveries(Some(id), deadline)).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    if n == 0 {
        return error(
            StatusCode::CONFLICT,
            format!("delivery {id} is not a failed delivery (unknown, pending or sent)"),
        );
    }
    info!(outbox_id = id, "delivery re-queued from the status page");
    app.state.delivery_wake.notify_one();
    Json(json!({ "id": id, "state": crate::db::DeliveryState::Pending.as_str() })).into_response()
}

/// `GET /metrics`: the Prometheus text exposition format.
pub(super) async fn metrics(State(app): State<Arc<App>>) -> Response {
    let render = app.state.metrics.clone();
    match tokio::task::spawn_blocking(move || render()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
