//! The HTTP side in-process (tests/common/status.rs): health and its disk watermark, the
//! token policy, the page and its JSON API over data written by the store, the mesh download.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::status::{
    DELIVERY_ERROR, JOB_ERROR, METRICS_TEXT, StatusNode, TOKEN, get, login, make_work, post,
};
use m3dnode::config::{Config, ConfigError, Overrides};

fn ready(node: &StatusNode) -> (u16, serde_json::Value) {
    let a = get(&format!("{}/health/ready", node.base), None, None);
    (a.status, a.json())
}

#[test]
fn readiness_follows_the_free_space_watermark_and_the_scp() {
    // The watermark 1 GB below the free space now: a 2 GB file crosses it, removing it goes
    // back. (Margins against other processes writing to the same disk meanwhile.)
    let probe = tempfile::tempdir().unwrap();
    let free_mb = fs4::available_space(probe.path()).unwrap() / (1024 * 1024);
    assert!(
        free_mb > 4096,
        "this test needs 4 GB free, {free_mb} MB are"
    );
    let node = StatusNode::start(|c| c.node.min_free_mb = free_mb - 1024);
    let live = get(&format!("{}/health/live", node.base), None, None);
    assert_eq!(live.status, 200);
    let (status, body) = ready(&node);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    for check in ["storage", "free_space", "index", "scp"] {
        assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
    }
    assert!(body["checks"].get("onnxruntime").is_none(), "no model rule");

    let filler = node.store.root().join("filler");
    let f = std::fs::File::create(&filler).unwrap();
    fs4::fs_std::FileExt::allocate(&f, 2048 * 1024 * 1024).unwrap();
    drop(f);
    let (status, body) = ready(&node);
    let _ = std::fs::remove_file(&filler);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["free_space"]["ok"], false, "{body}");
    let detail = body["checks"]["free_space"]["detail"].as_str().unwrap();
    assert!(detail.contains("node.min_free_mb"), "{detail}");
    assert_eq!(body["checks"]["storage"]["ok"], true, "{body}");

    let (status, body) = ready(&node);
    assert_eq!(status, 200, "back above the watermark: {body}");

    // The DICOM listener stops accepting: not ready, and says why.
    node.scp.store(false, Ordering::SeqCst);
    let (status, body) = ready(&node);
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["scp"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["free_space"]["ok"], true, "{body}");
}

#[test]
fn with_a_model_rule_readiness_needs_onnx_runtime_to_load() {
    let missing = std::path::PathBuf::from("/nonexistent/libonnxruntime.so.1.31.1");
    let node = StatusNode::start_with_onnx(
        |_| {},
        Some(m3dnode::onnx::OrtSettings {
            library: Some(missing),
            device: Default::default(),
        }),
    );
    for _ in 0..2 {
        let (status, body) = ready(&node);
        assert_eq!(status, 503, "{body}");
        let check = &body["checks"]["onnxruntime"];
        assert_eq!(check["ok"], false, "{body}");
        assert!(
            check["detail"].as_str().unwrap().contains("does not exist"),
            "{body}"
        );
        assert_eq!(body["checks"]["storage"]["ok"], true);
    }
}

#[test]
fn a_storage_that_cannot_be_written_is_not_ready() {
    let node = StatusNode::start(|_| {});
    let tmp = node.store.root().join("tmp");
    // A file where the temp directory should be: no temp file can be made in it (root
    // ignores permission bits, so a read-only directory would not do).
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let (status, body) = ready(&node);
    std::fs::remove_file(&tmp).unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["storage"]["ok"], false, "{body}");
    let (status, body) = ready(&node);
    assert_eq!(status, 200, "tmp/ is made again: {body}");
}

#[test]
fn posts_need_the_token_always_and_patient_data_needs_it_to_be_seen() {
    let node = StatusNode::start(|_| {});
    let scratch = tempfile::tempdir().unwrap();
    let work = make_work(&node.store, scratch.path(), "CT_SCANNER");
    let retry = format!(
        "{}/api/deliveries/{}/retry",
        node.base, work.failed_delivery
    );

    // On loopback too: no token, a wrong one -> 401 with the reason, and nothing changes.
    let a = post(&retry, None, None);
    assert_eq!(a.status, 401, "{}", a.text());
    assert!(
        a.json()["error"].as_str().unwrap().contains("Bearer"),
        "{}",
        a.text()
    );
    let a = post(&retry, Some("wrong-token-0123456789"), None);
    assert_eq!(a.status, 401);
    assert!(a.json()["error"].as_str().unwrap().contains("not valid"));
    let state = |id: i64| {
        node.store
            .index()
            .list_deliveries(10)
            .unwrap()
            .into_iter()
            .find(|r| r.id == id)
            .unwrap()
            .state
            .as_str()
    };
    assert_eq!(state(work.failed_delivery), "failed");
    assert!(!node.woken(Duration::from_millis(100)));

    // With the token: re-queued, and the delivery task is woken.
    let a = post(&retry, Some(TOKEN), None);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["state"], "pending");
    assert_eq!(state(work.failed_delivery), "pending");
    assert!(node.woken(Duration::from_secs(1)));
    // Again: it is no longer failed.
    let a = post(&retry, Some(TOKEN), None);
    assert_eq!(a.status, 409, "{}", a.text());
    // A sent one is not re-sent.
    let a = post(
        &format!("{}/api/deliveries/{}/retry", node.base, work.sent_delivery),
        Some(TOKEN),
        None,
    );
    assert_eq!(a.status, 409);
    assert_eq!(state(work.sent_delivery), "sent");

    // Reads on loopback work without the token, without the patient.
    let series = format!("{}/api/series", node.base);
    let source_row = |v: &serde_json::Value| {
        v["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["series_uid"] == work.series_uid.as_str())
            .unwrap()
            .clone()
    };
    let row = source_row(&get(&series, None, None).json());
    assert_eq!(row["calling_ae"], "CT_SCANNER");
    assert!(row.get("patient_name").is_none(), "{row}");
    assert!(!get(&series, None, None).text().contains("PHANTOM"));
    let results = get(&format!("{}/api/results", node.base), None, None).text();
    assert!(!results.contains("PHANTOM"), "{results}");
    let authed = source_row(&get(&series, Some(TOKEN), None).json());
    assert_eq!(authed["patient_name"], "PHANTOM^ANALYTIC");
    assert_eq!(authed["patient_id"], "PHANTOM02");

    // The login form: a wrong token gets 401; the token gets a session cookie that is
    // HttpOnly and SameSite=Strict, holds no token, and works for reads and POSTs.
    let a = login(&node.base, "wrong-token-0123456789");
    assert_eq!(a.status, 401);
    assert!(a.set_cookie.is_none());
    let a = login(&node.base, TOKEN);
    assert_eq!(a.status, 303);
    let set = a.set_cookie.expect("a session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(TOKEN));
    let cookie = set.split(';').next().unwrap().to_string();
    let session = get(&format!("{}/api/session", node.base), None, Some(&cookie)).json();
    assert_eq!(session["authenticated"], true);
    let with_cookie = source_row(&get(&series, None, Some(&cookie)).json());
    assert_eq!(with_cookie["patient_name"], "PHANTOM^ANALYTIC");
    // Marks are fenced on the delivery lease: take it as the delivery loop would.
    node.store.index().claim_deliveries(100).unwrap();
    node.store
        .index()
        .mark_failed(work.failed_delivery, 6, "again")
        .unwrap();
    let a = post(&retry, None, Some(&cookie));
    assert_eq!(a.status, 200, "{}", a.text());
    // After logging out the cookie is worthless.
    let a = post(&format!("{}/logout", node.base), None, Some(&cookie));
    assert_eq!(a.status, 303);
    let a = post(&retry, None, Some(&cookie));
    assert_eq!(a.status, 401);
}

#[test]
fn a_node_without_a_token_refuses_every_post() {
    let node = StatusNode::start(|c| c.http.token = Default::default());
    let a = post(&format!("{}/api/deliveries/1/retry", node.base), None, None);
    assert_eq!(a.status, 401);
    assert!(a.json()["error"].as_str().unwrap().contains("http.token"));
    let a = post(
        &format!("{}/api/deliveries/1/retry", node.base),
        Some("anything-at-all-0123"),
        None,
    );
    assert_eq!(a.status, 401);
    assert_eq!(login(&node.base, "anything-at-all-0123").status, 401);
    let session = get(&format!("{}/api/session", node.base), None, None).json();
    assert_eq!(session["token_configured"], false);
}

#[test]
fn beyond_loopback_the_token_is_required_to_bind_and_to_read() {
    let env = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    let err = Config::load(
        None,
        env(&[("M3DNODE__HTTP__LISTEN", "0.0.0.0:8080")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { key, .. } if key == "http.token"),
        "{err}"
    );
    // `bind` refuses it too, for a configuration that was never validated.
    let mut unchecked = Config::default().http;
    unchecked.listen = "0.0.0.0:0".into();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(m3dnode::http::bind(&unchecked)).unwrap_err();
    assert!(err.to_string().contains("http.token"), "{err}");
    // An empty address disables the HTTP side.
    unchecked.listen = String::new();
    assert!(
        rt.block_on(m3dnode::http::bind(&unchecked))
            .unwrap()
            .is_none()
    );

    // With a token it binds; then reads of data need it as well, the probes and the page's
    // files do not.
    let node = StatusNode::start(|c| c.http.listen = "0.0.0.0:0".into());
    for path in [
        "/api/series",
        "/api/jobs",
        "/api/deliveries",
        "/api/results",
        "/api/commitments",
        "/api/mpps",
        "/metrics",
    ] {
        let a = get(&format!("{}{path}", node.base), None, None);
        assert_eq!(a.status, 401, "{path}");
        let a = get(&format!("{}{path}", node.base), Some(TOKEN), None);
        assert_eq!(a.status, 200, "{path}");
    }
    for path in ["/", "/assets/app.js", "/health/live", "/health/ready"] {
        let a = get(&format!("{}{path}", node.base), None, None);
        assert_eq!(a.status, 200, "{path}: {}", a.text());
    }
}

#[test]
fn the_page_and_api_show_a_series_stored_by_the_store_and_its_result() {
    let node = StatusNode::start(|_| {});
    let scratch = tempfile::tempdir().unwrap();
    let work = make_work(&node.store, scratch.path(), "CT_SCANNER");

    let page = get(&format!("{}/", node.base), None, None);
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    let html = page.text();
    for hook in [
        "id=\"series\"",
        "id=\"jobs\"",
        "id=\"deliveries\"",
        "type=\"importmap\"",
        "/assets/vendor/three/three.module.js",
    ] {
        assert!(html.contains(hook), "{hook}");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external loads"
    );
    for asset in [
        "app.js",
        "style.css",
        "vendor/three/three.module.js",
        "vendor/three/three.core.js",
        "vendor/three/STLLoader.js",
        "vendor/three/OrbitControls.js",
        "vendor/three/LICENSE",
    ] {
        let a = get(&format!("{}/assets/{asset}", node.base), None, None);
        assert_eq!(a.status, 200, "{asset}");
        assert!(a.body.len() > 500, "{asset}");
    }
    assert_eq!(
        get(&format!("{}/assets/../Cargo.toml", node.base), None, None).status,
        404
    );

    let series = get(&format!("{}/api/series", node.base), None, None).json();
    let rows = series["series"].as_array().unwrap();
    // The received series and the result series the node stored.
    assert_eq!(rows.len(), 2, "{series}");
    let received = rows
        .iter()
        .find(|r| r["series_uid"] == work.series_uid.as_str())
        .unwrap();
    assert_eq!(received["calling_ae"], "CT_SCANNER");
    assert_eq!(received["modality"], "MR");
    assert_eq!(received["instances"], work.instances);
    assert_eq!(received["state"], "processed");
    let result_series = rows
        .iter()
        .find(|r| r["modality"] == "M3D")
        .expect("the result series");
    assert_eq!(result_series["calling_ae"], "M3DNODE");
    assert_eq!(result_series["instances"], 2, "an STL per structure");
    // Newest first: the result came after the source.
    assert_eq!(rows[0]["modality"], "M3D");
    let one = get(&format!("{}/api/series?limit=1", node.base), None, None).json();
    assert_eq!(one["series"].as_array().unwrap().len(), 1);
    let many = get(
        &format!("{}/api/series?limit=100000", node.base),
        None,
        None,
    );
    assert_eq!(many.status, 200, "a large limit is capped, not refused");

    let jobs = get(&format!("{}/api/jobs", node.base), None, None).json();
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    let failed = jobs.iter().find(|j| j["id"] == work.failed_job).unwrap();
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["error"], JOB_ERROR);
    let done = jobs.iter().find(|j| j["id"] == work.done_job).unwrap();
    assert_eq!(done["state"], "done");
    assert!(done["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert!(done["summary"].as_str().unwrap().contains("triangles"));
    assert!(done["error"].is_null());

    let d = get(&format!("{}/api/deliveries", node.base), None, None).json();
    let dests = d["destinations"].as_array().unwrap();
    assert_eq!(dests.len(), 2, "{d}");
    let nav = dests.iter().find(|x| x["destination"] == "NAV").unwrap();
    assert_eq!(
        (nav["pending"].as_i64(), nav["failed"].as_i64()),
        (Some(0), Some(1))
    );
    assert_eq!(nav["last_error"], DELIVERY_ERROR);
    let pacs = dests.iter().find(|x| x["destination"] == "PACS").unwrap();
    assert_eq!(pacs["failed"], 0);
    let rows = d["deliveries"].as_array().unwrap();
    let f = rows
        .iter()
        .find(|r| r["id"] == work.failed_delivery)
        .unwrap();
    assert_eq!(f["state"], "failed");
    assert_eq!(f["sop_instance_uid"], work.result_uid.as_str());

    let results = get(&format!("{}/api/results", node.base), None, None).json();
    let results = results["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["sop_instance_uid"], work.result_uid.as_str());
    assert_eq!(results[0]["series_uid"], work.series_uid.as_str());
    assert_eq!(results[0]["modality"], "MR");
    let layers: Vec<(&str, &str)> = results[0]["meshes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["label"].as_str().unwrap(), m["colour"].as_str().unwrap()))
        .collect();
    assert_eq!(layers, [common::status::OUTER, common::status::INNER]);
    assert_eq!(
        results[0]["meshes"][1]["url"],
        format!("/api/results/{}/mesh.stl", work.inner_uid)
    );
    let mesh_url = results[0]["mesh"].as_str().unwrap();

    // The mesh: the very STL the result holds.
    let mesh = get(&format!("{}{mesh_url}", node.base), None, None);
    assert_eq!(mesh.status, 200);
    assert_eq!(mesh.content_type, "model/stl");
    assert_eq!(mesh.body.len(), work.stl.len());
    assert!(
        mesh.body == work.stl,
        "the served STL differs from the stored one"
    );
    let triangles = u32::from_le_bytes(mesh.body[80..84].try_into().unwrap()) as usize;
    assert_eq!(mesh.body.len(), 84 + 50 * triangles);
    // A source image is not a mesh; unknown and malformed UIDs are not found.
    let source = node.store.index().series(&work.series_uid).unwrap();
    for uid in [source[0].sop_instance_uid.as_str(), "1.2.3.4", "x'--"] {
        let a = get(
            &format!("{}/api/results/{uid}/mesh.stl", node.base),
            None,
            None,
        );
        assert_eq!(a.status, 404, "{uid}: {}", a.text());
    }

    // /metrics renders through the closure it was given.
    let m = get(&format!("{}/metrics", node.base), None, None);
    assert_eq!(m.status, 200);
    assert_eq!(m.content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(m.text(), METRICS_TEXT);
}

/// Hostile clients of the HTTP side: more silent connections than it keeps, a request head
/// that never ends, an oversized head and bytes that are no HTTP. Each gets closed or an
/// error status, within the header timeout, and the node answers a health check after them.
#[test]
fn silent_endless_oversized_and_garbage_requests_are_cut_off_and_the_node_keeps_serving() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let node = StatusNode::start(|_| {});
    let addr = node.base.trim_start_matches("http://").to_string();
    let live = || common::status::get(&format!("{}/health/live", node.base), None, None).status;
    let started = std::time::Instant::now();

    // More silent connections than the cap (64).
    let silent: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // A head that trickles in and never ends.
    let mut endless = TcpStream::connect(&addr).unwrap();
    endless.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    // A head of 1 MB.
    let mut big = TcpStream::connect(&addr).unwrap();
    let _ = big.write_all(b"GET / HTTP/1.1\r\nX-Big: ");
    let _ = big.write_all(&vec![b'a'; 1 << 20]);
    // Not HTTP.
    let mut garbage = TcpStream::connect(&addr).unwrap();
    let _ = garbage.write_all(&[
        0x01, 0x00, 0x00, 0x00, 0x00, 0xcc, 0xff, 0xfe, b'\r', b'\n', b'\r', b'\n',
    ]);

    // Every one of them is closed by the node, silent ones after the header timeout.
    let closed = |mut s: &TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut sink = Vec::new();
        // EOF or reset both mean closed; a timeout means the node still holds it.
        match s.read_to_end(&mut sink) {
            Ok(_) => true,
            Err(e) => {
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
        }
    };
    for s in &silent {
        assert!(closed(s), "a silent connection was kept");
    }
    for _ in 0..5 {
        let _ = endless.write_all(b"X-Slow: 1\r\n");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(closed(&endless), "a never-ending head was kept");
    assert!(closed(&big), "an oversized head was kept");
    let mut answer = Vec::new();
    garbage
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = garbage.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // The header timeout (10 s) bounds it all; and the node serves.
    assert!(started.elapsed() < Duration::from_secs(40));
    assert!(common::wait_for(Duration::from_secs(15), || live() == 200));
    drop(silent);
}

/// Storage Commitment and MPPS rows on the page: written through the `Db` API (this test is
/// about the HTTP view of them; tests/commitment.rs and tests/mpps.rs drive the DICOM side
/// that writes them). The PPS ID, which scanners often fill with the accession number, is
/// only for an authenticated viewer; the patient's ID never leaves in this list.
#[test]
fn commitments_and_mpps_steps_are_listed_with_their_progress() {
    use m3dnode::db::{Admission, MppsInstance, MppsStatus, MppsWrite};

    let node = StatusNode::start(|_| {});
    let scratch = tempfile::tempdir().unwrap();
    let work = make_work(&node.store, scratch.path(), "CT_SCANNER");
    let index = node.store.index();
    let stored = index.series(&work.series_uid).unwrap();
    assert!(stored.len() >= 3, "{} instances", stored.len());
    let item = |i: usize| {
        (
            stored[i].sop_class_uid.clone(),
            stored[i].sop_instance_uid.clone(),
        )
    };

    // A: every instance stored, reported. B: one never sent, decided, its report refused.
    let a = "1.2.826.0.1.3680043.10.543.71.1";
    let b = "1.2.826.0.1.3680043.10.543.71.2";
    let missing = "1.2.826.0.1.3680043.10.543.71.99";
    let admitted = index
        .admit_commitment(a, "CT_SCANNER", "M3DNODE", &[item(0), item(1)], 60.0)
        .unwrap();
    assert!(matches!(admitted, Admission::New(_)));
    index.decide_commitment(a, &[]).unwrap().unwrap();
    index.commitment_reported(a).unwrap();
    let items = [
        item(2),
        (stored[2].sop_class_uid.clone(), missing.to_string()),
    ];
    let admitted = index
        .admit_commitment(b, "MR_SCANNER", "M3DNODE", &items, 60.0)
        .unwrap();
    assert!(matches!(admitted, Admission::New(_)));
    index
        .decide_commitment(b, &[(missing.to_string(), 0x0112)])
        .unwrap()
        .unwrap();
    index
        .commitment_attempt_failed(b, "connection refused by MR_SCANNER", true, false)
        .unwrap();

    // One COMPLETED step listing the stored series and a second series never received.
    let step = "1.2.826.0.1.3680043.10.543.72.1";
    let mut listed: Vec<MppsInstance> = stored
        .iter()
        .map(|r| MppsInstance {
            series_instance_uid: r.series_instance_uid.clone(),
            sop_class_uid: r.sop_class_uid.clone(),
            sop_instance_uid: r.sop_instance_uid.clone(),
        })
        .collect();
    listed.push(MppsInstance {
        series_instance_uid: "1.2.826.0.1.3680043.10.543.72.2".into(),
        sop_class_uid: stored[0].sop_class_uid.clone(),
        sop_instance_uid: "1.2.826.0.1.3680043.10.543.72.3".into(),
    });
    assert!(
        index
            .create_mpps(&MppsWrite {
                sop_instance_uid: step,
                calling_ae: "CT_SCANNER",
                status: MppsStatus::Completed,
                study_instance_uid: Some(&stored[0].study_instance_uid),
                patient_id: Some("PAT-MPPS-77"),
                accession_number: Some("ACC-MPPS-4711"),
                modality: Some("MR"),
                pps_id: Some("PPS-ACC-4711"),
                attributes: &[],
                instances: &listed,
            })
            .unwrap()
    );

    // Commitments: open first, then the newest; the counts and the error as stored.
    let answer = get(&format!("{}/api/commitments", node.base), None, None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    let rows = body["commitments"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{body}");
    assert_eq!(rows[0]["transaction_uid"], b);
    assert_eq!(rows[0]["calling_ae"], "MR_SCANNER");
    assert_eq!(rows[0]["state"], "reporting");
    assert_eq!(rows[0]["event_type"], 2);
    assert_eq!(rows[0]["items"], 2);
    assert_eq!(rows[0]["failed"], 1);
    assert_eq!(rows[0]["attempts"], 1);
    assert_eq!(rows[0]["last_error"], "connection refused by MR_SCANNER");
    assert!(rows[0]["reported_at"].is_null(), "{body}");
    assert!(rows[0]["requested_at"].as_f64().unwrap() > 0.0);
    assert_eq!(rows[1]["transaction_uid"], a);
    assert_eq!(rows[1]["state"], "reported");
    assert_eq!(rows[1]["event_type"], 1);
    assert_eq!(rows[1]["items"], 2);
    assert_eq!(rows[1]["failed"], 0);
    assert!(rows[1]["reported_at"].as_f64().unwrap() > 0.0, "{body}");
    assert!(rows[1]["last_error"].is_null(), "{body}");
    let one = get(
        &format!("{}/api/commitments?limit=1", node.base),
        None,
        None,
    )
    .json();
    assert_eq!(one["commitments"].as_array().unwrap().len(), 1, "{one}");

    // MPPS: without the token (loopback reads are open) no PPS ID, no patient data at all.
    let anonymous = get(&format!("{}/api/mpps", node.base), None, None);
    assert_eq!(anonymous.status, 200, "{}", anonymous.text());
    let text = anonymous.text();
    for secret in ["PPS-ACC-4711", "PAT-MPPS-77", "ACC-MPPS-4711"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let body = anonymous.json();
    let rows = body["mpps"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{body}");
    let m = &rows[0];
    assert_eq!(m["sop_instance_uid"], step);
    assert_eq!(m["calling_ae"], "CT_SCANNER");
    assert_eq!(m["status"], "COMPLETED");
    assert_eq!(m["modality"], "MR");
    assert_eq!(m["study_uid"], stored[0].study_instance_uid.as_str());
    assert_eq!(m["series_listed"], 2);
    assert_eq!(m["series_complete"], 1);
    assert_eq!(m["instances_listed"], stored.len() as i64 + 1);
    assert_eq!(m["instances_stored"], stored.len() as i64);
    assert!(m.get("pps_id").is_none(), "{body}");
    // With the token, the PPS ID; the patient's ID and the accession still not.
    let authed = get(&format!("{}/api/mpps", node.base), Some(TOKEN), None);
    assert_eq!(authed.status, 200);
    assert_eq!(authed.json()["mpps"][0]["pps_id"], "PPS-ACC-4711");
    assert!(!authed.text().contains("PAT-MPPS-77"), "{}", authed.text());

    // The page has the two tables, and its script fetches and draws them.
    let html = get(&format!("{}/", node.base), None, None).text();
    for hook in [
        "id=\"commitments\"",
        "id=\"mpps\"",
        "Storage Commitment",
        "MPPS",
    ] {
        assert!(html.contains(hook), "{hook}");
    }
    let js = get(&format!("{}/assets/app.js", node.base), None, None).text();
    for hook in [
        "/api/commitments?limit=",
        "/api/mpps?limit=",
        "renderRows('commitments'",
        "renderRows('mpps'",
    ] {
        assert!(js.contains(hook), "{hook}");
    }
}
