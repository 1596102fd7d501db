//! A throw-away PostgreSQL cluster for the tests of one test binary (issue 17; design §4.1).
//!
//! [`fresh_db`] gives each test its own new database on one cluster per test binary:
//! the cluster of `M3DNODE_TEST_PG_URL` when that is set (scripts/test may start one for the
//! whole run), else one this binary starts with `scripts/pg-cluster` on first use. A cluster
//! started here is stopped and removed when the binary exits, whichever way:
//! - at a normal exit, an `atexit` handler stops it and waits for the stop;
//! - a binary that is killed cannot run handlers, so a watchdog process (`bash`, which also
//!   starts the cluster) holds the read end of a pipe whose write end only this binary has;
//!   when the binary dies the kernel closes it, the watchdog's `read` returns, and it runs
//!   `scripts/pg-cluster stop`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The cluster of this test binary.
struct Cluster {
    /// URL of its `m3d` database, the one fresh databases are made from.
    url: String,
}

/// The watchdog of a cluster this binary started (none when the cluster came from the
/// environment): its stdin is the pipe whose closing stops the cluster.
static WATCHDOG: Mutex<Option<(Child, ChildStdin)>> = Mutex::new(None);
static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster")
}

/// Stops the cluster at a normal exit: closes the watchdog's pipe and waits for its stop, so
/// that nothing is left running when the test binary has returned.
extern "C" fn stop_at_exit() {
    let taken = match WATCHDOG.lock() {
        Ok(mut w) => w.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    if let Some((mut child, stdin)) = taken {
        drop(stdin);
        let _ = child.wait();
    }
}

fn start() -> Cluster {
    if let Ok(url) = std::env::var("M3DNODE_TEST_PG_URL")
        && !url.is_empty()
    {
        return Cluster { url };
    }
    // Kept (not removed on drop): the script removes it when it stops the cluster, and as root
    // it hands the directory to the `postgres` user.
    let dir = tempfile::Builder::new()
        .prefix("m3d-pg-")
        .tempdir()
        .expect("temporary directory for the PostgreSQL cluster")
        .keep();
    // The watchdog starts the cluster and, once its stdin closes, stops it: one process runs
    // both, so a binary killed while the cluster starts cannot have the stop overtake the start.
    // SIGPIPE is ignored: when this binary is gone, printing the URL must fail, not kill the
    // watchdog before its stop.
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(r#"trap '' PIPE; "$0" start "$1" || echo "start failed"; read -r _; exec "$0" stop "$1""#)
        .arg(script())
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("bash for the PostgreSQL watchdog");
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    *WATCHDOG.lock().unwrap() = Some((child, stdin));
    // SAFETY: registers a plain `extern "C" fn()` with libc, as atexit expects.
    let registered = unsafe { libc::atexit(stop_at_exit) };
    assert_eq!(registered, 0, "atexit failed");

    // The script prints the URL line last, or the watchdog "start failed" (the script's
    // errors went to this binary's stderr).
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read scripts/pg-cluster's output");
    let url = line
        .trim()
        .strip_prefix("M3DNODE_TEST_PG_URL=")
        .unwrap_or_else(|| {
            panic!("scripts/pg-cluster start failed (is postgresql-15 installed?): {line}")
        })
        .to_string();
    Cluster { url }
}

/// The URL of the `m3d` database of this binary's cluster (started on first use).
pub fn cluster_url() -> &'static str {
    &CLUSTER.get_or_init(start).url
}

/// A new, empty database on this binary's cluster, for one test; returns its URL. Names are
/// unique per process and cluster start (`t_<pid>_<n>`), so tests of several binaries can
/// share one `M3DNODE_TEST_PG_URL` cluster.
pub fn fresh_db() -> String {
    let base = cluster_url();
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let out = Command::new(script())
        .arg("createdb")
        .arg(base)
        .arg(&name)
        .output()
        .expect("run scripts/pg-cluster createdb");
    assert!(
        out.status.success(),
        "createdb {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
