//! The node started in-process with `m3dnode::node::start`: a real series from DCMTK storescu
//! goes through to a delivered result, `shutdown` stops every thread and marks the storage
//! clean, and a stop in the middle of a transfer keeps every acknowledged instance. Also the
//! `[log] format = "json"` output of the binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Destination, data_set, testdata, text, tool, wait_for, write_mr_series};
use m3dnode::config::{Config, Overrides};

/// The in-process tests run one at a time: each keeps the two cores busy, and the second
/// must stop a transfer that is still going.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(dir: &Path, toml: &str) -> Config {
    let path = dir.join("m3dnode.toml");
    std::fs::write(
        &path,
        format!(
            "[node]\nlisten = \"127.0.0.1:0\"\nstorage = \"{}\"\nmin_free_mb = 1\n{toml}\n[http]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("var").display()
        ),
    )
    .unwrap();
    Config::load(Some(&path), Some(Default::default()), &Overrides::default()).unwrap()
}

/// (state, count) of the rows of `table`, by state.
fn states(store: &m3dnode::store::Store, table: &str) -> Vec<(String, i64)> {
    store
        .index()
        .with(|c| {
            c.prepare(&format!(
                "SELECT state, COUNT(*) FROM {table} GROUP BY state ORDER BY state"
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })
        .unwrap()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_goes_through_an_in_process_node_which_then_stops_cleanly() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = Destination::up("DEST");
    let cfg = config(
        dir.path(),
        &format!(
            "shutdown_grace_seconds = 5\n[jobs]\nworkers = 2\n[series]\nquiet_seconds = 0.5\n\
             [delivery]\nretry_initial_seconds = 0.2\nretry_max_seconds = 0.5\ntimeout_seconds = 5\n\
             {}[[rules]]\nname = \"ct bone\"\nmodality = \"CT\"\npreset = \"ct-bone\"\nsend_to = [\"DEST\"]\n",
            dest.peer_toml()
        ),
    );
    let node = m3dnode::node::start(cfg.clone()).await.unwrap();
    assert!(node.scp_listening.load(std::sync::atomic::Ordering::SeqCst));
    let port = node.local_addr().port().to_string();
    let series = testdata().join("series/ct_head_axial_small");
    let sent = std::fs::read_dir(&series).unwrap().count() as u64;
    let out = blocking(move || {
        common::run(
            Command::new(tool("storescu"))
                .args(["-aec", "M3DNODE", "+sd", "+r", "127.0.0.1", &port])
                .arg(series),
        )
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));

    let deadline = Instant::now() + Duration::from_secs(90);
    while states(&node.store, "outbox") != [("sent".to_string(), 1)] {
        assert!(
            Instant::now() < deadline,
            "no delivery: jobs {:?}, outbox {:?}",
            states(&node.store, "jobs"),
            states(&node.store, "outbox")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(states(&node.store, "jobs"), [("done".to_string(), 1)]);
    // The sent series and the result are indexed; the destination got the result.
    assert_eq!(node.store.index().count().unwrap(), sent + 1);
    assert!(wait_for(Duration::from_secs(10), || dest.stores() == 1));

    let storage = node.store.root().to_path_buf();
    let store = node.store.clone();
    let began = Instant::now();
    tokio::time::timeout(Duration::from_secs(5 + 10), node.shutdown())
        .await
        .expect("shutdown within the grace budget")
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "idle node took {:?}",
        began.elapsed()
    );
    assert!(storage.join("clean-shutdown").exists());
    // The workers, the tracker, delivery and the listener each held the store: all ended.
    assert_eq!(
        std::sync::Arc::strong_count(&store),
        1,
        "a part is still running"
    );
    drop(store);

    // The storage lock went with the last holder of the store: a second node starts on it,
    // takes the clean-shutdown path (the mark is consumed) and finds nothing to resume.
    let again = m3dnode::node::start(cfg).await.unwrap();
    assert!(!storage.join("clean-shutdown").exists());
    assert_eq!(again.store.index().count().unwrap(), sent + 1);
    assert_eq!(states(&again.store, "jobs"), [("done".to_string(), 1)]);
    again.shutdown().await.unwrap();
    assert!(storage.join("clean-shutdown").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_transfer_keeps_every_acknowledged_instance() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let files = write_mr_series(src.path(), 200, 256, 256);
    let cfg = config(dir.path(), "shutdown_grace_seconds = 0\n");
    let node = m3dnode::node::start(cfg.clone()).await.unwrap();
    let sender = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["send", "--to", &format!("M3DNODE@{}", node.local_addr())])
        .args(&files)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.store.index().count().unwrap() < 30 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let storage = node.store.root().to_path_buf();
    let store = node.store.clone();
    tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .expect("shutdown within the grace budget (0 s, then 5 s for the aborts)")
        .unwrap();
    // The workers, the tracker, delivery and the listener each held the store: all ended.
    assert_eq!(
        std::sync::Arc::strong_count(&store),
        1,
        "a part is still running"
    );
    drop(store);
    let out = blocking(move || sender.wait_with_output().unwrap()).await;
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let acknowledged: Vec<PathBuf> = report
        .lines()
        .filter_map(|l| l.strip_prefix("OK "))
        .map(|l| PathBuf::from(l.split(" (status").next().unwrap()))
        .collect();
    assert!(
        acknowledged.len() >= 30 && acknowledged.len() < 200,
        "{} acknowledged",
        acknowledged.len()
    );

    let node = m3dnode::node::start(cfg).await.unwrap();
    assert_eq!(
        std::fs::read_dir(storage.join("tmp")).unwrap().count(),
        0,
        "temp files left"
    );
    for path in &acknowledged {
        let sop = m3dnode::net::scu::OutgoingFile::open(path)
            .unwrap()
            .sop_instance_uid;
        let row = node
            .store
            .index()
            .get(&sop)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged {sop} is not indexed"));
        assert!(
            data_set(&storage.join(&row.path)) == data_set(path),
            "acknowledged {sop} is not intact on disk"
        );
    }
    node.shutdown().await.unwrap();
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut node = common::Node::start("[log]\nformat = \"json\"\n");
    assert!(node.echo_ok());
    assert!(node.terminate().success(), "{}", node.log());
    let log = node.log();
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}\nwhole log:\n{log}"));
        assert!(v.is_object(), "{line}");
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        messages.push(v["fields"]["message"].as_str().unwrap_or("").to_string());
    }
    for expected in ["m3dnode listening", "m3dnode stopped"] {
        assert!(
            messages.iter().any(|m| m == expected),
            "no `{expected}` in {messages:?}"
        );
    }
}
