//! Prometheus metrics after real transfers: the node runs in this process (`node::start`),
//! DCMTK's `storescu` and `echoscu` talk to it over loopback, and the text that `Metrics::render` produces must count exactly what
//! was sent and pass `promtool check metrics`.
//!
//! The recorder is process-wide, so the whole scenario runs once ([`scenario`]) and each test
//! checks its part of the result.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{metric_sample, metric_samples, run, testdata, text, tool, wait_for};
use m3dnode::config::{Config, Overrides};
use m3dnode::metrics::Metrics;
use m3dnode::store::Store;

/// A node started in this process (`node::start`) on a loopback port.
struct InProcess {
    addr: SocketAddr,
    store: Arc<Store>,
    node: Option<m3dnode::node::Node>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    fn start(rt: &tokio::runtime::Runtime, toml: &str) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m3dnode.toml");
        std::fs::write(&file, format!("{toml}\n[http]\nlisten = \"\"\n")).unwrap();
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            storage: Some(dir.path().join("var")),
            ae_title: None,
            http_listen: None,
        };
        let cfg = Config::load(Some(&file), Some(Default::default()), &overrides).unwrap();
        let node = rt.block_on(m3dnode::node::start(cfg)).unwrap();
        InProcess {
            addr: node.local_addr(),
            store: node.store.clone(),
            node: Some(node),
            _dir: dir,
        }
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }

    fn stop(&mut self, rt: &tokio::runtime::Runtime) {
        if let Some(node) = self.node.take() {
            rt.block_on(node.shutdown()).unwrap();
        }
    }

    /// Data set bytes of every stored file (file size minus the Part 10 preamble and meta),
    /// which is what arrived in P-DATA.
    fn stored_data_set_bytes(&self) -> (usize, u64) {
        let mut files = Vec::new();
        let mut dirs = vec![self.store.root().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() && e.file_name() != "tmp" {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "dcm") {
                    files.push(p);
                }
            }
        }
        let bytes = files
            .iter()
            .map(|p| {
                let mut f = std::fs::File::open(p).unwrap();
                let offset = m3dnode::store::part10_data_offset(&mut f).unwrap();
                std::fs::metadata(p).unwrap().len() - offset
            })
            .sum();
        (files.len(), bytes)
    }
}

/// What the scenario rendered at each step.
struct Rendered {
    /// After one storescu association.
    after_store: String,
    after_store_expected: (usize, u64),
    /// After two refused association requests.
    after_rejects: String,
    /// After a failed store on a second node (in the same process, same recorder), rendered
    /// with that node's storage.
    after_failure: String,
    /// The calling AE title of the refused unknown peer.
    unknown_ae: &'static str,
}

const SERIES: &str = "series/ct_head_axial_small";

fn files() -> Vec<PathBuf> {
    let mut f: Vec<PathBuf> = std::fs::read_dir(testdata().join(SERIES))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    f.sort();
    f
}

fn active_is_zero(metrics: &Metrics, store: &Store) -> bool {
    metric_samples(&metrics.render(store)).get("m3dnode_associations_active") == Some(&0.0)
}

fn scenario() -> &'static Rendered {
    static DONE: OnceLock<Rendered> = OnceLock::new();
    DONE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let metrics = Metrics::install().unwrap();
        let mut node = InProcess::start(
            &rt,
            "[node]\nmin_free_mb = 1\nrequire_known_peers = true\n\
             [[peers]]\nae_title = \"STORESCU\"\naddress = \"127.0.0.1:2\"\n",
        );

        let out = run(Command::new(tool("storescu"))
            .args(["-aec", "M3DNODE", "+sd", "+r", "127.0.0.1", &node.port()])
            .arg(testdata().join(SERIES)));
        assert!(out.status.success(), "{}", text(&out));
        // storescu exits on the A-RELEASE-RP; the handler ends a moment later.
        assert!(wait_for(Duration::from_secs(10), || active_is_zero(
            &metrics,
            &node.store
        )));
        let after_store = metrics.render(&node.store);
        let after_store_expected = node.stored_data_set_bytes();

        let unknown_ae = "NOTAPEER7";
        let wrong_called =
            run(Command::new(tool("echoscu")).args(["-aec", "NOTUS", "127.0.0.1", &node.port()]));
        assert!(!wrong_called.status.success(), "{}", text(&wrong_called));
        let unknown_calling = run(Command::new(tool("echoscu")).args([
            "-aet",
            unknown_ae,
            "-aec",
            "M3DNODE",
            "127.0.0.1",
            &node.port(),
        ]));
        assert!(
            !unknown_calling.status.success(),
            "{}",
            text(&unknown_calling)
        );
        let after_rejects = metrics.render(&node.store);
        node.stop(&rt);

        // A second node in the same process, whose volume is "full": 0xA700.
        let metrics_b = Metrics::install().unwrap();
        let mut full = InProcess::start(&rt, "[node]\nmin_free_mb = 1000000000\n");
        let _ = run(Command::new(tool("storescu"))
            .args(["-aec", "M3DNODE", "127.0.0.1", &full.port()])
            .arg(&files()[0]));
        assert!(wait_for(Duration::from_secs(10), || active_is_zero(
            &metrics_b,
            &full.store
        )));
        let after_failure = metrics_b.render(&full.store);
        full.stop(&rt);
        Rendered {
            after_store,
            after_store_expected,
            after_rejects,
            after_failure,
            unknown_ae,
        }
    })
}

#[test]
fn a_storescu_transfer_is_counted_exactly() {
    let r = scenario();
    let n = files().len();
    let (stored_files, data_set_bytes) = r.after_store_expected;
    assert_eq!(stored_files, n, "every file of the series is stored");
    let s = metric_samples(&r.after_store);
    assert_eq!(
        metric_sample(&s, "m3dnode_instances_stored_total"),
        n as f64
    );
    assert_eq!(
        metric_sample(&s, "m3dnode_received_bytes_total"),
        data_set_bytes as f64
    );
    assert_eq!(
        metric_sample(&s, "m3dnode_store_receive_to_ack_seconds_count"),
        n as f64
    );
    let sum = metric_sample(&s, "m3dnode_store_receive_to_ack_seconds_sum");
    assert!(sum > 0.0 && sum < 60.0, "{sum}");
    assert_eq!(
        metric_sample(&s, "m3dnode_store_fsync_seconds_count{step=\"file\"}"),
        n as f64
    );
    let dirs = metric_sample(&s, "m3dnode_store_fsync_seconds_count{step=\"directory\"}");
    assert!(dirs >= 1.0 && dirs <= n as f64, "{dirs}");
    assert_eq!(metric_sample(&s, "m3dnode_associations_total"), 1.0);
    assert_eq!(metric_sample(&s, "m3dnode_associations_active"), 0.0);
    assert_eq!(
        metric_sample(&s, "m3dnode_associations_ended_total{end=\"released\"}"),
        1.0
    );
    assert_eq!(
        metric_sample(&s, "m3dnode_index_rows{table=\"instances\"}"),
        n as f64
    );
    assert_eq!(
        metric_sample(&s, "m3dnode_index_rows{table=\"series\"}"),
        1.0
    );
    assert_eq!(
        metric_sample(&s, "m3dnode_index_rows{table=\"studies\"}"),
        1.0
    );
    assert_eq!(
        metric_sample(&s, "m3dnode_index_rows{table=\"patients\"}"),
        1.0
    );
    for state in ["queued", "running", "done", "failed"] {
        assert_eq!(
            metric_sample(&s, &format!("m3dnode_jobs{{state=\"{state}\"}}")),
            0.0
        );
    }
    assert!(metric_sample(&s, "m3dnode_storage_free_bytes") > 0.0);
    // Nothing failed, nothing was refused yet.
    for (key, v) in &s {
        if key.starts_with("m3dnode_instances_failed_total")
            || key.starts_with("m3dnode_associations_rejected_total")
        {
            assert_eq!(*v, 0.0, "{key}");
        }
    }
}

#[test]
fn refusals_are_counted_by_reason_without_the_peers_ae_title() {
    let r = scenario();
    let s = metric_samples(&r.after_rejects);
    assert_eq!(
        metric_sample(
            &s,
            "m3dnode_associations_rejected_total{reason=\"called_ae\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_sample(
            &s,
            "m3dnode_associations_rejected_total{reason=\"calling_ae\"}"
        ),
        1.0
    );
    // Refused requests are not associations.
    assert_eq!(metric_sample(&s, "m3dnode_associations_total"), 1.0);
    assert!(
        !r.after_rejects.contains(r.unknown_ae) && !r.after_rejects.contains("NOTUS"),
        "a peer's AE title became a label value:\n{}",
        r.after_rejects
    );
}

#[test]
fn a_second_node_shares_the_recorder_and_counts_a_refused_store_by_status() {
    let r = scenario();
    let s = metric_samples(&r.after_failure);
    assert_eq!(
        metric_sample(&s, "m3dnode_instances_failed_total{status=\"0xA700\"}"),
        1.0
    );
    // The counters are the process's: the first node's instances are still there.
    assert_eq!(
        metric_sample(&s, "m3dnode_instances_stored_total"),
        files().len() as f64
    );
    assert_eq!(metric_sample(&s, "m3dnode_associations_total"), 2.0);
    // The gauges are the storage's that was rendered: the second node stored nothing.
    assert_eq!(
        metric_sample(&s, "m3dnode_index_rows{table=\"instances\"}"),
        0.0
    );
}

/// promtool (Debian `prometheus`) parses the text and lints names, types and help texts.
#[test]
fn promtool_accepts_the_metrics() {
    let r = scenario();
    for rendered in [&r.after_store, &r.after_failure] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.prom");
        std::fs::write(&path, rendered).unwrap();
        let out = run(Command::new("sh").arg("-c").arg(format!(
            "{} check metrics < {}",
            tool("promtool").display(),
            path.display()
        )));
        assert!(
            out.status.success() && text(&out).trim().is_empty(),
            "promtool check metrics: {}\n{rendered}",
            text(&out)
        );
    }
    // Every metric the node describes has a HELP and a TYPE line.
    for name in metric_names() {
        for rendered in [&r.after_store] {
            if name.starts_with("m3dnode_job_duration") || name.starts_with("m3dnode_delivery") {
                continue; // no job or delivery in this scenario
            }
            if name == "m3dnode_outbox_deliveries" {
                continue; // no outbox rows
            }
            assert!(
                rendered.contains(&format!("# HELP {name} ")),
                "{name} has no HELP in:\n{rendered}"
            );
        }
    }
}

/// The names declared in src/metrics.rs.
fn metric_names() -> Vec<String> {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"))
        .unwrap();
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|n| n.starts_with("m3dnode_"))
        .map(String::from)
        .collect()
}
