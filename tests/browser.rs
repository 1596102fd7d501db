//! The status page in a real browser: Debian's headless Chromium (WebGL through SwiftShader)
//! driven by `chromedriver` over the W3C WebDriver protocol (plain HTTP and JSON), against
//! the HTTP side served in-process over a real store (tests/common/status.rs).
//!
//! It checks the DOM rows the page draws from the JSON API, that the 3D preview of the result
//! is drawn (the pixel variance of the canvas's screenshot), that patient names appear only
//! after logging in, and that the Retry button re-queues a failed delivery.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::status::{StatusNode, TOKEN, agent, make_work};
use common::{free_port, tool};
use serde_json::{Value, json};

/// The WebDriver element reference key (W3C).
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session, both ended on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(tool("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = agent()
                .get(&format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-dev-shm-usage".into(),
            // WebGL without a GPU: ANGLE on SwiftShader (software Vulkan/GL).
            "--use-angle=swiftshader".into(),
            "--enable-unsafe-swiftshader".into(),
            "--ignore-gpu-blocklist".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1400,1600".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            _profile: profile,
        };
        let v = b.call(
            "POST",
            "/session",
            json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": tool("chromium"), "args": args },
            }}}),
        );
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    /// One WebDriver command; returns its `value`, panicking on a WebDriver error.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let a = agent();
        let r = match method {
            "GET" => a.get(&url).call(),
            "DELETE" => a.delete(&url).call(),
            _ => a
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        };
        let mut r = r.expect("chromedriver answers");
        let text = r
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(
            r.status().is_success(),
            "WebDriver {method} {path}: {}",
            &text[..text.len().min(2000)]
        );
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    fn js(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
    }

    /// Waits until `script` returns true.
    fn wait(&self, what: &str, script: &str, args: Value) {
        let started = Instant::now();
        while self.js(script, args.clone()) != Value::Bool(true) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}; page message: {}",
                self.js(
                    "return document.getElementById('message').textContent",
                    json!([])
                )
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }

    /// Logs in with the form in the page's header and waits for the page to show it.
    fn log_in(&self, token: &str) {
        self.type_into("#login input[name=token]", token);
        self.click("#login button[type=submit]");
        self.wait(
            "the logout button",
            "return document.getElementById('logout').hidden === false",
            json!([]),
        );
    }

    /// Presses Retry on delivery `id`. The table is redrawn every refresh, so the button is
    /// found and pressed in one step in the page.
    fn press_retry(&self, id: i64) {
        self.wait(
            "the Retry button, pressed",
            "const b = document.querySelector(`#deliveries button.retry[data-id=\"${arguments[0]}\"]`); \
             if (b === null) return false; b.click(); return true",
            json!([id]),
        );
    }

    /// Waits for the preview `canvas` to load its mesh and show a frame, saves its
    /// screenshot as `name` in the test's temp dir and fails if the canvas looks blank.
    fn drawn_preview(&self, canvas: &str, name: &str) {
        self.wait(
            "the mesh preview",
            "const c = document.querySelector(arguments[0]); return c !== null && c.dataset.loaded === 'true'",
            json!([canvas]),
        );
        // Let the compositor show the first frame.
        std::thread::sleep(Duration::from_millis(500));
        let shot = self.screenshot(Some(canvas));
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, &shot).unwrap();
        let (mean, sd, drawn) = luminance_stats(&shot);
        // The axes and their letters alone cover about 2 % of the canvas; a mesh far more.
        assert!(
            sd > 15.0 && drawn > 0.08,
            "the preview canvas looks blank: mean {mean:.1}, sd {sd:.1}, drawn share {drawn:.3} \
             (screenshot {})",
            path.display()
        );
    }

    /// A PNG screenshot of the viewport, or of one element.
    fn screenshot(&self, css: Option<&str>) -> Vec<u8> {
        let path = match css {
            Some(css) => format!("/element/{}/screenshot", self.element(css)),
            None => "/screenshot".into(),
        };
        {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(self.call("GET", &path, Value::Null).as_str().unwrap())
                .expect("WebDriver screenshots are base64")
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = agent()
                .delete(&format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Mean and standard deviation of the luminance of a PNG, and the share of pixels drawn over
/// the preview's dark background (the meshes, the axes and their letters).
fn luminance_stats(png_bytes: &[u8]) -> (f64, f64, f64) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let lum: Vec<f64> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
        .collect();
    let n = lum.len() as f64;
    let mean = lum.iter().sum::<f64>() / n;
    let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
    // Pixels clearly unlike the scene's background (#1b1f24): what was drawn.
    let drawn = buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|p| {
            let d = |c: u8, bg: u8| (i32::from(c) - i32::from(bg)).abs();
            d(p[0], 0x1b).max(d(p[1], 0x1f)).max(d(p[2], 0x24)) > 40
        })
        .count() as f64
        / n;
    (mean, var.sqrt(), drawn)
}

#[test]
fn the_status_page_shows_the_work_draws_the_mesh_and_retries_a_delivery() {
    let node = StatusNode::start(|_| {});
    let scratch = tempfile::tempdir().unwrap();
    let work = make_work(&node.store, scratch.path(), "CT_SCANNER");
    let (commitment, step) = commitment_and_step(&node, &work.series_uid);
    let browser = Browser::start();
    browser.goto(&format!("{}/", node.base));

    // The rows, drawn from the API by the page's script.
    browser.wait(
        "the series row",
        "return document.querySelector(`#series tr[data-uid=\"${arguments[0]}\"][data-state=\"processed\"]`) !== null",
        json!([work.series_uid]),
    );
    let row = browser.js(
        "return document.querySelector(`#series tr[data-uid=\"${arguments[0]}\"]`).textContent",
        json!([work.series_uid]),
    );
    let row = row.as_str().unwrap();
    assert!(row.contains("CT_SCANNER") && row.contains("MR"), "{row}");
    assert!(row.contains(&work.instances.to_string()), "{row}");
    assert!(
        !row.contains("PHANTOM"),
        "no patient name before logging in: {row}"
    );
    for (id, state) in [(work.done_job, "done"), (work.failed_job, "failed")] {
        let ok = browser.js(
            "const r = document.querySelector(`#jobs tr[data-id=\"${arguments[0]}\"]`); \
             return r !== null && r.dataset.state === arguments[1] && r.dataset.uid === arguments[2]",
            json!([id, state, work.series_uid]),
        );
        assert_eq!(ok, Value::Bool(true), "job {id} {state}");
    }
    let failed_text = browser.js(
        "return document.querySelector(`#jobs tr[data-id=\"${arguments[0]}\"]`).textContent",
        json!([work.failed_job]),
    );
    assert!(
        failed_text
            .as_str()
            .unwrap()
            .contains(common::status::JOB_ERROR)
    );
    for (id, state) in [
        (work.sent_delivery, "sent"),
        (work.failed_delivery, "failed"),
    ] {
        let ok = browser.js(
            "const r = document.querySelector(`#deliveries tr[data-id=\"${arguments[0]}\"]`); \
             return r !== null && r.dataset.state === arguments[1] && r.dataset.uid === arguments[2]",
            json!([id, state, work.result_uid]),
        );
        assert_eq!(ok, Value::Bool(true), "delivery {id} {state}");
    }

    // The Storage Commitment and MPPS tables: one row each, with their state and progress;
    // no PPS ID before logging in.
    browser.wait(
        "the commitment row",
        "const r = document.querySelector(`#commitments tr[data-uid=\"${arguments[0]}\"]`); \
         return r !== null && r.dataset.commitment === 'reporting'",
        json!([commitment]),
    );
    let row = browser.js(
        "return document.querySelector(`#commitments tr[data-uid=\"${arguments[0]}\"]`).textContent",
        json!([commitment]),
    );
    assert!(row.as_str().unwrap().contains("CT_SCANNER"), "{row}");
    let row = browser.js(
        "const r = document.querySelector(`#mpps tr[data-uid=\"${arguments[0]}\"]`); \
         return r === null ? null : [r.dataset.status, r.textContent]",
        json!([step]),
    );
    assert_eq!(row[0], "IN PROGRESS", "{row}");
    let text = row[1].as_str().unwrap();
    assert!(
        text.contains("1/1") && text.contains("(log in to see)"),
        "{text}"
    );
    assert!(!text.contains(STEP_PPS_ID), "{text}");

    // The preview: WebGL draws the mesh into the result's canvas.
    let canvas = format!("canvas[data-result=\"{}\"]", work.result_uid);
    browser.drawn_preview(&canvas, "status-page-preview.png");
    let metrics = browser.js(
        "return document.querySelector(arguments[0]).closest('.result').textContent",
        json!([canvas]),
    );
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("triangles") && metrics.contains("L-R x A-P x S-I"),
        "{metrics}"
    );
    // Both structures are drawn, and the legend names each with its colour.
    let legend = browser.js(
        "return [...document.querySelector(arguments[0]).closest('.result').querySelectorAll('.legend li')] \
         .map(li => [li.textContent, li.dataset.colour, getComputedStyle(li.querySelector('.swatch')).backgroundColor])",
        json!([canvas]),
    );
    assert_eq!(
        legend,
        json!([
            [
                common::status::OUTER.0,
                common::status::OUTER.1,
                "rgb(233, 196, 106)"
            ],
            [
                common::status::INNER.0,
                common::status::INNER.1,
                "rgb(208, 64, 58)"
            ]
        ])
    );
    let page = browser.screenshot(None);
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(out.join("status-page.png"), &page).unwrap();

    // Logging in shows the patient and lets Retry through.
    browser.log_in(TOKEN);
    browser.wait(
        "the patient name after logging in",
        "const r = document.querySelector(`#series tr[data-uid=\"${arguments[0]}\"]`); \
         return r !== null && r.textContent.includes('PHANTOM^ANALYTIC')",
        json!([work.series_uid]),
    );
    browser.wait(
        "the PPS ID after logging in",
        "const r = document.querySelector(`#mpps tr[data-uid=\"${arguments[0]}\"]`); \
         return r !== null && r.textContent.includes(arguments[1])",
        json!([step, STEP_PPS_ID]),
    );
    browser.press_retry(work.failed_delivery);
    browser.wait(
        "the retried delivery to be pending",
        "const r = document.querySelector(`#deliveries tr[data-id=\"${arguments[0]}\"]`); \
         return r !== null && r.dataset.state === 'pending' && r.querySelector('button.retry') === null",
        json!([work.failed_delivery]),
    );
    let state = node
        .store
        .index()
        .list_deliveries(10)
        .unwrap()
        .into_iter()
        .find(|r| r.id == work.failed_delivery)
        .unwrap()
        .state;
    assert_eq!(state.as_str(), "pending");
    assert!(node.woken(Duration::from_secs(1)), "delivery was woken");
}

/// The PPS ID of [`commitment_and_step`]'s step, shown only to a logged-in viewer.
const STEP_PPS_ID: &str = "PPS-7731";

/// A Storage Commitment transaction for the series' first instance (decided, its report not
/// yet confirmed) and an MPPS step IN PROGRESS listing it, written through the `Db` API:
/// the DICOM side that writes them has its own tests (tests/commitment.rs, tests/mpps.rs).
/// Returns the Transaction UID and the step's UID.
fn commitment_and_step(node: &StatusNode, series_uid: &str) -> (String, String) {
    use m3dnode::db::{MppsInstance, MppsStatus, MppsWrite};
    let index = node.store.index();
    let first = index.series(series_uid).unwrap().remove(0);
    let transaction = "1.2.826.0.1.3680043.10.543.81.1".to_string();
    index
        .admit_commitment(
            &transaction,
            "CT_SCANNER",
            "M3DNODE",
            &[(first.sop_class_uid.clone(), first.sop_instance_uid.clone())],
            60.0,
        )
        .unwrap();
    index.decide_commitment(&transaction, &[]).unwrap().unwrap();
    let step = "1.2.826.0.1.3680043.10.543.82.1".to_string();
    let listed = [MppsInstance {
        series_instance_uid: series_uid.to_string(),
        sop_class_uid: first.sop_class_uid.clone(),
        sop_instance_uid: first.sop_instance_uid.clone(),
    }];
    let created = index
        .create_mpps(&MppsWrite {
            sop_instance_uid: &step,
            calling_ae: "CT_SCANNER",
            status: MppsStatus::InProgress,
            study_instance_uid: Some(&first.study_instance_uid),
            patient_id: Some("PAT-7731"),
            accession_number: None,
            modality: Some("MR"),
            pps_id: Some(STEP_PPS_ID),
            attributes: &[],
            instances: &listed,
        })
        .unwrap();
    assert!(created);
    (transaction, step)
}

/// The whole way through the binary: a real CT series sent by DCMTK `storescu` to
/// `m3dnode serve` is reconstructed, its delivery to a destination that is down fails, the
/// page shows the series, the job and the failed delivery and draws the result; after the
/// destination comes up, Retry on the page delivers it (DCMTK `storescp` receives it). Then
/// the node's own `/metrics` counts exactly that work and `promtool` accepts the text.
#[test]
fn a_real_series_through_the_node_is_shown_retried_from_the_page_and_counted() {
    let mut dest = common::Destination::down("NAV");
    let node = common::Node::start(&format!(
        // A quiet time that a loaded machine's storescu cannot exceed between two instances:
        // the series must complete once, for the counts below.
        "[series]\nquiet_seconds = 3\n\
         [delivery]\nretry_initial_seconds = 0.2\nretry_max_seconds = 0.3\ndeadline_seconds = 1\n\
         {}[[rules]]\nname = \"ct\"\nmodality = \"CT\"\npreset = \"ct-bone\"\nsend_to = [\"NAV\"]\n\
         [http]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        dest.peer_toml()
    ));
    let base = format!("http://{}", node.http.expect("the HTTP side is on"));
    let series = common::testdata().join("series/ct_head_axial_small");
    let sent = std::fs::read_dir(&series).unwrap().count();
    common::storescu(&node, &[series]);
    assert!(
        common::wait_for(Duration::from_secs(180), || {
            common::outbox(&node)
                .first()
                .is_some_and(|(s, _)| s == "failed")
        }),
        "the delivery to the closed port fails after its deadline: jobs {:?} outbox {:?}\n{}",
        common::jobs(&node),
        common::outbox(&node),
        node.log()
    );
    let series_uid = node
        .index()
        .with(|c| {
            c.query_row("SELECT series_instance_uid FROM jobs", [], |r| {
                r.get::<_, String>(0)
            })
        })
        .unwrap();
    let (delivery, result_uid) = node
        .index()
        .with(|c| {
            c.query_row("SELECT id, sop_instance_uid FROM outbox", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
        })
        .unwrap();

    let browser = Browser::start();
    browser.goto(&format!("{base}/"));
    browser.wait(
        "the series row, processed",
        "const r = document.querySelector(`#series tr[data-uid=\"${arguments[0]}\"]`); \
         return r !== null && r.dataset.state === 'processed'",
        json!([series_uid]),
    );
    let row = browser.js(
        "return document.querySelector(`#series tr[data-uid=\"${arguments[0]}\"]`).textContent",
        json!([series_uid]),
    );
    let row = row.as_str().unwrap();
    assert!(
        row.contains("STORESCU") && row.contains("CT") && row.contains(&sent.to_string()),
        "{row}"
    );
    browser.wait(
        "the job, done",
        "return [...document.querySelectorAll('#jobs tr[data-uid]')].some(r => \
         r.dataset.uid === arguments[0] && r.dataset.state === 'done')",
        json!([series_uid]),
    );
    browser.wait(
        "the failed delivery",
        "const r = document.querySelector(`#deliveries tr[data-id=\"${arguments[0]}\"]`); \
         return r !== null && r.dataset.state === 'failed'",
        json!([delivery]),
    );
    browser.drawn_preview(
        &format!("canvas[data-result=\"{result_uid}\"]"),
        "status-page-e2e-preview.png",
    );

    // The destination comes up; Retry (after logging in) delivers.
    dest.start();
    browser.log_in(TOKEN);
    browser.press_retry(delivery);
    browser.wait(
        "the retried delivery, sent",
        "const r = document.querySelector(`#deliveries tr[data-id=\"${arguments[0]}\"]`); \
         return r !== null && r.dataset.state === 'sent'",
        json!([delivery]),
    );
    assert_eq!(dest.stores(), 1, "storescp received the result once");

    // The node's metrics say what happened, and promtool accepts them.
    let metrics = common::status::get(&format!("{base}/metrics"), None, None);
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    let samples = common::metric_samples(&text);
    let value = |key: &str| common::metric_sample(&samples, key);
    assert_eq!(value("m3dnode_instances_stored_total"), sent as f64);
    assert_eq!(value("m3dnode_series_completed_total"), 1.0);
    assert_eq!(value("m3dnode_jobs{state=\"done\"}"), 1.0);
    assert_eq!(
        value("m3dnode_job_duration_seconds_count{pipeline=\"iso\",outcome=\"done\"}"),
        1.0
    );
    assert_eq!(
        value("m3dnode_outbox_deliveries{destination=\"NAV\",state=\"sent\"}"),
        1.0
    );
    assert_eq!(
        value("m3dnode_delivery_latency_seconds_count{destination=\"NAV\"}"),
        1.0
    );
    assert!(value("m3dnode_delivery_retries_total{destination=\"NAV\"}") >= 1.0);
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-metrics.prom");
    std::fs::write(&file, &text).unwrap();
    let check = common::run(
        Command::new(tool("promtool"))
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file).unwrap()),
    );
    assert!(
        check.status.success() && common::text(&check).trim().is_empty(),
        "promtool: {}",
        common::text(&check)
    );
}
