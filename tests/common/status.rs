//! The HTTP side in-process, for tests/http.rs and tests/browser.rs: a real [`Store`] in a
//! temp dir, `m3dnode::http::serve` on 127.0.0.1:0 on its own runtime, and real data made
//! with the library's own write paths (the store's commit for received instances, the job
//! table's transitions and `Store::store_object` for the result, as a worker does).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use m3dnode::config::{Config, Secret};
use m3dnode::db::{NewDeliveries, NewSeriesWork, ResultObject};
use m3dnode::http::{HttpError, HttpState};
use m3dnode::store::{Announced, Store};
use serde_json::Value;
use tempfile::TempDir;

use super::{Grid, attr, data_set, write_phantom};

/// The token of the test nodes (long enough for the configuration's check).
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// What `/metrics` renders in these tests (the real renderer is wired by the node).
pub const METRICS_TEXT: &str = "# TYPE m3dnode_test_total counter\nm3dnode_test_total 7\n";

/// A node's HTTP side with its store, serving until dropped.
pub struct StatusNode {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub store: Arc<Store>,
    pub config: Arc<Config>,
    pub wake: Arc<tokio::sync::Notify>,
    pub scp: Arc<AtomicBool>,
    pub dir: TempDir,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), HttpError>>>,
}

/// The configuration of a test node: storage in `dir`, HTTP on a free loopback port, the
/// token set, a 1 MB watermark; `edit` changes the rest.
pub fn config(dir: &Path, edit: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = Config::default();
    cfg.node.storage = dir.join("var");
    cfg.node.min_free_mb = 1;
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.http.token = Secret::new(TOKEN);
    edit(&mut cfg);
    cfg.validate().expect("test configuration");
    cfg
}

impl StatusNode {
    pub fn start(edit: impl FnOnce(&mut Config)) -> StatusNode {
        StatusNode::start_with_onnx(edit, None)
    }

    /// [`StatusNode::start`] as for a node with a model rule (`onnx`: its ONNX Runtime).
    pub fn start_with_onnx(
        edit: impl FnOnce(&mut Config),
        onnx: Option<m3dnode::onnx::OrtSettings>,
    ) -> StatusNode {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Arc::new(config(dir.path(), edit));
        let store = Arc::new(Store::open(&cfg.node.store_settings()).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(m3dnode::http::bind(&cfg.http))
            .unwrap()
            .expect("[http] listen is set");
        let port = listener.local_addr().unwrap().port();
        let wake = Arc::new(tokio::sync::Notify::new());
        let scp = Arc::new(AtomicBool::new(true));
        let state = HttpState {
            store: store.clone(),
            settings: Arc::new(cfg.http_settings()),
            delivery_wake: wake.clone(),
            scp_listening: scp.clone(),
            metrics: Arc::new(|| METRICS_TEXT.to_string()),
            onnx,
            audit: m3dnode::audit::Auditor::disabled(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(m3dnode::http::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        StatusNode {
            base: format!("http://127.0.0.1:{port}"),
            store,
            config: cfg,
            wake,
            scp,
            dir,
            rt,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Whether the delivery task was woken since the last call (within `limit`).
    pub fn woken(&self, limit: Duration) -> bool {
        self.rt
            .block_on(async { tokio::time::timeout(limit, self.wake.notified()).await })
            .is_ok()
    }
}

impl Drop for StatusNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let done = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await });
            if !std::thread::panicking() {
                let outcome = done.expect("the HTTP server stops within 10 s");
                outcome
                    .unwrap()
                    .expect("the HTTP server ends without error");
            }
        }
    }
}

/// A plain-HTTP client that reports 4xx/5xx as responses, not errors, and follows no
/// redirects (the login's 303 is what the tests look at).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A response: status, headers of interest, body.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub set_cookie: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.expect("the HTTP side answers");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let content_type = header("content-type").unwrap_or_default();
    let set_cookie = header("set-cookie");
    let body = r
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_vec()
        .unwrap();
    Answer {
        status: r.status().as_u16(),
        content_type,
        set_cookie,
        body,
    }
}

/// Adds optional `Authorization: Bearer` and `Cookie` headers.
fn credentials<B>(
    mut req: ureq::RequestBuilder<B>,
    bearer: Option<&str>,
    cookie: Option<&str>,
) -> ureq::RequestBuilder<B> {
    if let Some(t) = bearer {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    req
}

/// GET with optional credentials.
pub fn get(url: &str, bearer: Option<&str>, cookie: Option<&str>) -> Answer {
    answer(credentials(agent().get(url), bearer, cookie).call())
}

/// POST without a body, with optional credentials.
pub fn post(url: &str, bearer: Option<&str>, cookie: Option<&str>) -> Answer {
    answer(credentials(agent().post(url), bearer, cookie).send_empty())
}

/// The login form's POST.
pub fn login(base: &str, token: &str) -> Answer {
    answer(
        agent()
            .post(&format!("{base}/login"))
            .send_form([("token", token)]),
    )
}

/// What [`make_work`] made.
pub struct Work {
    /// The received series.
    pub series_uid: String,
    /// Its stored files (in the storage).
    pub instances: usize,
    /// The done job and its result instance.
    pub done_job: i64,
    pub result_uid: String,
    /// The result's second structure ([`INNER`]), not delivered.
    pub inner_uid: String,
    /// The STL stored in the result.
    pub stl: Vec<u8>,
    /// A failed job of the same series.
    pub failed_job: i64,
    /// The result's outbox rows: sent to PACS, failed to NAV.
    pub sent_delivery: i64,
    pub failed_delivery: i64,
}

/// Label and colour of the result's two structures.
pub const OUTER: (&str, &str) = ("Outer", "#e9c46a");
pub const INNER: (&str, &str) = ("Inner", "#d0403a");

/// The error sentence of [`Work::failed_job`].
pub const JOB_ERROR: &str = "no usable image stack: 2 slices are missing";
/// The last error of [`Work::failed_delivery`].
pub const DELIVERY_ERROR: &str = "association rejected by NAV: called AE title not recognised";

/// A sphere of radius 14 mm (MR phantom, 40 slices of 48 x 48 at 1 mm) received from
/// `calling_ae` through the store's commit path, routed and reconstructed (iso 1000, the
/// phantom's true surface) into a stored Encapsulated STL result with two deliveries, one
/// sent and one failed; then a second job of the series that failed.
pub fn make_work(store: &Store, scratch: &Path, calling_ae: &str) -> Work {
    let grid = Grid::axial(48, 40, 1.0);
    let files = write_phantom(scratch, &grid, &[], |p| {
        // An ellipsoid, longer from head to foot, so that the axes of a preview matter.
        let q = [p[0] / 12.0, p[1] / 10.0, p[2] / 16.0];
        ((q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt() - 1.0) * 10.0
    });
    for f in &files {
        let announced = Announced {
            sop_class_uid: attr(f, dicom_dictionary_std::tags::SOP_CLASS_UID),
            sop_instance_uid: attr(f, dicom_dictionary_std::tags::SOP_INSTANCE_UID),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            calling_ae: calling_ae.into(),
        };
        let mut incoming = store.begin(&announced, None).unwrap();
        incoming.append(&data_set(f)).unwrap();
        store.commit(incoming).unwrap();
    }
    let series_uid = attr(&files[0], dicom_dictionary_std::tags::SERIES_INSTANCE_UID);
    let study_uid = attr(&files[0], dicom_dictionary_std::tags::STUDY_INSTANCE_UID);
    let index = store.index();
    // What the tracker and a worker do with a complete series.
    index
        .add_series_work(&NewSeriesWork {
            series_instance_uid: &series_uid,
            study_instance_uid: &study_uid,
            calling_ae,
            rule: Some("sphere"),
            expected: None,
        })
        .unwrap();
    index.queue_job(&series_uid, "sphere").unwrap();
    let job = index.claim_job().unwrap().unwrap();
    let paths: Vec<PathBuf> = index
        .series(&series_uid)
        .unwrap()
        .iter()
        .map(|r| store.root().join(&r.path))
        .collect();
    assert_eq!(paths.len(), files.len());
    let vol = m3dnode::volume::assemble(&paths, &Default::default()).unwrap();
    let r = m3dnode::recon::iso::reconstruct(
        &vol,
        &m3dnode::recon::iso::IsoOptions {
            preset: m3dnode::recon::iso::Preset::Iso(1000.0),
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    let stl = m3dnode::mesh::write_stl_binary(&r.mesh, &r.description);
    let source = index.job_source(job.id).unwrap();
    let obj = m3dnode::encap::from_reconstruction(
        &vol,
        &r.description,
        &r.metrics,
        &stl,
        &m3dnode::encap::ResultIds {
            series_instance_uid: Some(source.result_series_uid),
            sop_instance_uid: Some(job.result_sop_instance_uid.clone()),
            instance_number: 1,
        },
    )
    .unwrap();
    let stored = store.store_object(&obj, "M3DNODE").unwrap();
    let rel = stored
        .path
        .strip_prefix(store.root())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // A second structure: the inner ellipsoid at half the size (iso 1500 is 5 mm inside),
    // drawn under the see-through outer one.
    let inner = m3dnode::recon::iso::reconstruct(
        &vol,
        &m3dnode::recon::iso::IsoOptions {
            preset: m3dnode::recon::iso::Preset::Iso(1500.0),
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    let inner_stl = m3dnode::mesh::write_stl_binary(&inner.mesh, &inner.description);
    let inner_obj = m3dnode::encap::from_reconstruction(
        &vol,
        &inner.description,
        &inner.metrics,
        &inner_stl,
        &m3dnode::encap::ResultIds {
            series_instance_uid: Some(index.job_source(job.id).unwrap().result_series_uid),
            sop_instance_uid: None,
            instance_number: 2,
        },
    )
    .unwrap();
    let inner_uid = inner_obj
        .meta()
        .media_storage_sop_instance_uid()
        .trim_end_matches('\0')
        .to_string();
    store.store_object(&inner_obj, "M3DNODE").unwrap();
    let summary = format!(
        "{}: {} triangles, {:.0} mm3, watertight {}",
        r.description,
        r.metrics.triangles,
        r.metrics.volume_mm3,
        if r.metrics.watertight { "yes" } else { "no" }
    );
    let destinations = [
        ("PACS".to_string(), "127.0.0.1:1".to_string()),
        ("NAV".to_string(), "127.0.0.1:2".to_string()),
    ];
    index
        .finish_job(
            job.id,
            job.attempts,
            &summary,
            &[
                ResultObject {
                    sop_instance_uid: &job.result_sop_instance_uid,
                    kind: "stl",
                    structure: Some(0),
                    label: Some(OUTER.0),
                    colour: Some(OUTER.1),
                    opacity: Some(0.4),
                },
                ResultObject {
                    sop_instance_uid: &inner_uid,
                    kind: "stl",
                    structure: Some(1),
                    label: Some(INNER.0),
                    colour: Some(INNER.1),
                    opacity: Some(1.0),
                },
            ],
            &[NewDeliveries {
                sop_instance_uid: &job.result_sop_instance_uid,
                path: &rel,
                destinations: &destinations,
                deadline_seconds: 60.0,
            }],
        )
        .unwrap();
    // Marks are fenced on the delivery lease: take it as the delivery loop would.
    index.claim_deliveries(10).unwrap();
    let rows = index.list_deliveries(10).unwrap();
    let id = |dest: &str| rows.iter().find(|r| r.destination == dest).unwrap().id;
    let (sent, failed) = (id("PACS"), id("NAV"));
    index.mark_sent(sent).unwrap();
    index.mark_failed(failed, 5, DELIVERY_ERROR).unwrap();
    // A rebuild of the same series that failed.
    index.queue_job(&series_uid, "sphere").unwrap();
    let again = index.claim_job().unwrap().unwrap();
    index.fail_job(again.id, again.attempts, JOB_ERROR).unwrap();
    Work {
        series_uid,
        instances: files.len(),
        done_job: job.id,
        result_uid: job.result_sop_instance_uid,
        inner_uid,
        stl,
        failed_job: again.id,
        sent_delivery: sent,
        failed_delivery: failed,
    }
}
