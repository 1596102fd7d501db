//! The node started in-process with `m3dnode::node::start`: a real series from DCMTK storescu
//! goes through to a delivered result, `shutdown` stops every thread and marks the storage
//! clean, and a stop in the middle of a transfer keeps every acknowledged instance. Also what
//! the binary tells its supervisors: the `[log] format = "json"` output, systemd's notify
//! protocol (READY, WATCHDOG, STOPPING) and `m3dnode health` for Docker's HEALTHCHECK.

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

/// systemd `Type=notify` with `WatchdogSec=`: READY=1 once the node listens, WATCHDOG=1 at
/// half the interval while it is alive, STOPPING=1 at SIGTERM. The socket is the one systemd
/// would pass (a Unix datagram socket named by NOTIFY_SOCKET).
#[test]
fn the_binary_tells_systemd_ready_watchdog_and_stopping() {
    use std::io::BufRead;
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let cfg = dir.path().join("m3dnode.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nlisten = \"127.0.0.1:0\"\nstorage = \"{}\"\nmin_free_mb = 1\n[http]\nlisten = \"\"\n",
            dir.path().join("var").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("m3dnode listening on "), "{line}");
    let recv = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notify message");
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    };
    assert_eq!(recv(), "READY=1");
    // Two pings within a few half-second periods: the node keeps pinging while alive.
    let started = Instant::now();
    assert_eq!(recv(), "WATCHDOG=1");
    assert_eq!(recv(), "WATCHDOG=1");
    assert!(started.elapsed() < Duration::from_secs(5));
    common::unsafe_kill(child.id() as i32, "TERM");
    // Pings sent before the signal may still be queued.
    let stopping = (0..5).map(|_| recv()).find(|m| m != "WATCHDOG=1");
    assert_eq!(stopping.as_deref(), Some("STOPPING=1"));
    assert!(child.wait().unwrap().success());
}

/// `m3dnode health` (the Docker image's HEALTHCHECK): exit 0 and the node's JSON when ready,
/// 1 with the failing check when not ready (free space below the watermark), 1 when nothing
/// answers.
#[test]
fn m3dnode_health_says_ready_not_ready_and_unreachable() {
    let health = |url: &str, live: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_m3dnode"));
        cmd.args(["health", "--url", url, "--timeout", "10"]);
        if live {
            cmd.arg("--live");
        }
        common::run(&mut cmd)
    };
    let node = common::Node::start("");
    let url = format!("http://{}", node.http.expect("the HTTP side is on"));
    let out = health(&url, false);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).starts_with("200 ") && text(&out).contains("\"ready\":true"));

    let full = common::Node::start("min_free_mb = 100000000\n");
    let url = format!("http://{}", full.http.expect("the HTTP side is on"));
    let out = health(&url, false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).starts_with("503 ") && text(&out).contains("node.min_free_mb"),
        "{}",
        text(&out)
    );
    // Alive all the same: a full disk is no reason to restart.
    assert!(health(&url, true).status.success());

    let nobody = format!("http://127.0.0.1:{}", common::free_port());
    let out = health(&nobody, false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}
