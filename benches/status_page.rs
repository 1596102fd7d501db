//! The status page's data with 1,000 series and 1,000 jobs (issue 14's goal: under 200 ms of
//! server time). Run with `cargo bench --bench status_page` (plain `harness = false`).
//!
//! The index is made by `db::Db::open` (the node's schema) and filled by
//! `query::synthetic::fill` (series of 10 instances each, no files behind the rows), then each
//! series gets the tracker's row and a job through the job table's own transitions (queued,
//! running, then done with two deliveries, one of which is sent; every tenth job fails). The
//! HTTP side runs in-process on 127.0.0.1 and each endpoint is timed from request to the last
//! byte of the answer, so the numbers include JSON encoding and the loopback transfer: an
//! upper bound of the server time.
//!
//! `STATUS_SERIES`, `STATUS_JOBS` and `STATUS_RUNS` change the size and repetitions.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use m3dnode::config::{Config, Secret};
use m3dnode::db::{NewDeliveries, NewSeriesWork, ResultObject};
use m3dnode::http::HttpState;
use m3dnode::store::Store;

/// The server time the page's data may take.
const GOAL: Duration = Duration::from_millis(200);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fill(store: &Store, series: u64, jobs: u64) {
    let index = store.index();
    // Four series per study, ten instances per series.
    let studies = series.div_ceil(4);
    index
        .with(|c| m3dnode::query::synthetic::fill(c, studies, 40, 1))
        .expect("filling the query index");
    let uids: Vec<(String, String)> = index
        .with(|c| {
            c.prepare("SELECT series_uid, study_uid FROM series ORDER BY rowid")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .unwrap();
    let destinations = [
        ("PACS".to_string(), "pacs:104".to_string()),
        ("NAV".to_string(), "nav:104".to_string()),
    ];
    for (i, (series_uid, study_uid)) in uids.iter().take(jobs as usize).enumerate() {
        index
            .add_series_work(&NewSeriesWork {
                series_instance_uid: series_uid,
                study_instance_uid: study_uid,
                calling_ae: "CT_SCANNER",
                rule: Some("bone"),
                expected: None,
            })
            .unwrap();
        index.queue_job(series_uid, "bone").unwrap();
        let job = index.claim_job().unwrap().expect("the job just queued");
        if i % 10 == 9 {
            index
                .fail_job(
                    job.id,
                    job.attempts,
                    "no usable image stack: 2 slices are missing",
                )
                .unwrap();
            continue;
        }
        index
            .finish_job(
                job.id,
                job.attempts,
                "Bone surface, iso 300 HU: 251234 triangles, 412345 mm3, watertight yes",
                // Two structures, as a CT head rule with bone and skin makes.
                &[
                    ResultObject {
                        sop_instance_uid: &job.result_sop_instance_uid,
                        kind: "stl",
                        structure: Some(0),
                        label: Some("Bone"),
                        colour: Some("#f1d691"),
                        opacity: Some(1.0),
                    },
                    ResultObject {
                        sop_instance_uid: &format!("{}.2", job.result_sop_instance_uid),
                        kind: "stl",
                        structure: Some(1),
                        label: Some("Skin"),
                        colour: Some("#b17a65"),
                        opacity: Some(0.4),
                    },
                ],
                &[NewDeliveries {
                    sop_instance_uid: &job.result_sop_instance_uid,
                    path: "result.dcm",
                    destinations: &destinations,
                    deadline_seconds: 86_400.0,
                }],
            )
            .unwrap();
    }
    // Marks are fenced on the delivery lease: take it as the delivery loop would.
    index.claim_deliveries(100_000).unwrap();
    let rows = index.list_deliveries(100_000).unwrap();
    for r in rows {
        if r.destination == "PACS" {
            index.mark_sent(r.id).unwrap();
        } else if r.id % 3 == 0 {
            index.mark_failed(r.id, 5, "connection refused").unwrap();
        }
    }
}

fn main() {
    let series = env("STATUS_SERIES", 1000);
    let jobs = env("STATUS_JOBS", 1000);
    let runs = env("STATUS_RUNS", 30).max(1) as usize;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.node.storage = dir.path().join("var");
    cfg.node.min_free_mb = 1;
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.http.token = Secret::new("bench-token-0123456789");
    let cfg = Arc::new(cfg);
    let store = Arc::new(Store::open(&cfg.node.store_settings()).unwrap());
    let started = Instant::now();
    fill(&store, series, jobs);
    println!(
        "index: {series} series, {jobs} jobs, {} instances, filled in {:.1} s",
        store.index().count().unwrap(),
        started.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(m3dnode::http::bind(&cfg.http))
        .unwrap()
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = HttpState {
        store: store.clone(),
        settings: Arc::new(cfg.http_settings()),
        delivery_wake: Arc::default(),
        scp_listening: Arc::new(AtomicBool::new(true)),
        metrics: Arc::new(String::new),
        onnx: None,
        audit: m3dnode::audit::Auditor::disabled(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(m3dnode::http::serve(listener, state, async move {
        let _ = stopped.await;
    }));

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .build()
        .into();
    let time = |path: &str| -> (Duration, usize) {
        let t = Instant::now();
        let mut r = agent
            .get(&format!("{base}{path}"))
            .header("Authorization", "Bearer bench-token-0123456789")
            .call()
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let body = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap();
        (t.elapsed(), body.len())
    };
    let page = [
        "/api/series",
        "/api/jobs",
        "/api/deliveries",
        "/api/results",
        "/health/ready",
    ];
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "endpoint", "bytes", "min ms", "median ms", "max ms"
    );
    let mut worst_median = Duration::ZERO;
    for limit in ["", "?limit=1000"] {
        for p in page {
            let path = if p.starts_with("/api/") {
                format!("{p}{limit}")
            } else if limit.is_empty() {
                p.to_string()
            } else {
                continue;
            };
            time(&path); // warm the statement cache
            let mut times: Vec<Duration> = Vec::with_capacity(runs);
            let mut bytes = 0;
            for _ in 0..runs {
                let (d, n) = time(&path);
                times.push(d);
                bytes = n;
            }
            times.sort();
            let median = times[times.len() / 2];
            worst_median = worst_median.max(median);
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "{path:<28} {bytes:>9} {:>9.2} {:>9.2} {:>9.2}",
                ms(times[0]),
                ms(median),
                ms(times[times.len() - 1])
            );
        }
    }
    // One refresh of the page as the browser makes it: everything at the page's limits.
    let mut refresh: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for p in [
                "/health/ready",
                "/api/session",
                "/api/series?limit=50",
                "/api/jobs?limit=50",
                "/api/deliveries?limit=50",
                "/api/results?limit=12",
            ] {
                time(p);
            }
            t.elapsed()
        })
        .collect();
    refresh.sort();
    let refresh_median = refresh[refresh.len() / 2];
    println!(
        "one page refresh (6 requests, sequential): median {:.2} ms",
        refresh_median.as_secs_f64() * 1e3
    );
    println!(
        "goal: each endpoint under {} ms (worst median {:.2} ms): {}",
        GOAL.as_millis(),
        worst_median.as_secs_f64() * 1e3,
        if worst_median < GOAL {
            "met"
        } else {
            "NOT met"
        }
    );
    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
}
