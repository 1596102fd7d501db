//! Storage Commitment Push Model SCP (issue 19), with pynetdicom as the scanner: the report on
//! the requester's association and on a new one to its `[[peers]]` address (with the SCP role
//! proposed), instances arriving after the request, a restart between request and report,
//! reused Transaction UIDs (decision D1), and refused N-ACTIONs, each followed by a C-ECHO.
//!
//! The scanner script (`SCANNER`) has two modes: `server` runs the scanner's own SCP, which
//! receives reports on new associations and logs each as a JSON line (with the roles the node
//! proposed); `client` stores files, sends N-ACTIONs and C-ECHOs and prints one JSON line per
//! answer, reports on its own association included.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

const SCANNER: &str = r#"
import argparse, json, os, sys, threading, time
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification, MRImageStorage

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["server", "client"])
p.add_argument("--port", type=int, required=True)
p.add_argument("--aet", default="SCANNER")
p.add_argument("--log")
p.add_argument("--tls", nargs=3, metavar=("CERT", "KEY", "CA"), help="TLS with a client certificate")
# client
p.add_argument("--store", nargs="*", default=[])
p.add_argument("--list", nargs="*", default=[], help="CLASS:INSTANCE items of an N-ACTION")
p.add_argument("--list-files", nargs="*", default=[], help="files whose UIDs are listed")
p.add_argument("--tx", action="append", default=[], help="one N-ACTION per Transaction UID")
p.add_argument("--action-type", type=int, default=1)
p.add_argument("--instance", default="1.2.840.10008.1.20.1.1")
p.add_argument("--bad", choices=["", "empty", "huge", "garbled"], default="")
p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for each report here")
a = p.parse_args()

def out(d):
    print(json.dumps(d), flush=True)

def report_json(event, on):
    info = event.event_information
    ok = [str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])]
    failed = {str(i.ReferencedSOPInstanceUID): int(i.FailureReason)
              for i in info.get("FailedSOPSequence", [])}
    return {"event": "report", "on": on, "event_type": event.event_type,
            "transaction_uid": str(info.TransactionUID), "ok": ok, "failed": failed,
            "retrieve_ae": str(info.get("RetrieveAETitle", ""))}

if a.mode == "server":
    log = open(a.log, "a", buffering=1)
    roles = {}
    def on_requested(event):
        rs = event.assoc.requestor.role_selection
        item = rs.get(StorageCommitmentPushModel)
        roles[id(event.assoc)] = None if item is None else [bool(item.scu_role), bool(item.scp_role)]
    def on_report(event):
        d = report_json(event, "new")
        d["roles"] = roles.get(id(event.assoc))
        log.write(json.dumps(d) + "\n")
        return 0x0000, None
    ae = AE(ae_title=a.aet)
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    ae.add_supported_context(Verification)
    ssl_context = None
    if a.tls:
        import ssl
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=a.tls[2])
        ssl_context.load_cert_chain(a.tls[0], a.tls[1])
        ssl_context.verify_mode = ssl.CERT_REQUIRED
    ae.start_server(("127.0.0.1", a.port), block=False, ssl_context=ssl_context,
                    evt_handlers=[(evt.EVT_REQUESTED, on_requested), (evt.EVT_N_EVENT_REPORT, on_report)])
    print("READY", flush=True)
    sys.stdin.read()
    sys.exit(0)

reports = []
got = threading.Condition()
def on_report(event):
    with got:
        reports.append(report_json(event, "same"))
        got.notify_all()
    return 0x0000, None

ae = AE(ae_title=a.aet)
ae.acse_timeout = 30
ae.dimse_timeout = 30
ae.network_timeout = 30
ae.add_requested_context(StorageCommitmentPushModel)
ae.add_requested_context(Verification)
ae.add_requested_context(MRImageStorage)
tls_args = None
if a.tls:
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=a.tls[2])
    ctx.load_cert_chain(a.tls[0], a.tls[1])
    tls_args = (ctx, "127.0.0.1")
def settle(assoc):
    # pynetdicom 3.0 races between two send_*() calls on one association: the first
    # unpauses its reactor thread, the second pauses it again and proceeds as soon as it
    # reads `_is_paused`, which may still be True from before the reactor woke; the woken
    # reactor then takes the second call's response off the queue as if it were a request
    # and the call waits out its DIMSE timeout (seen under load: a C-ECHO with no answer
    # after 30 s, the node's log showing it answered at once). Parking the reactor first,
    # and giving a thread in that window time to pass it, closes the race.
    assoc._reactor_checkpoint.clear()
    time.sleep(0.05)
    while not assoc._is_paused:
        time.sleep(0.001)

assoc = ae.associate("127.0.0.1", a.port, ae_title="M3DNODE", tls_args=tls_args,
                     evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
if not assoc.is_established:
    out({"event": "refused"})
    sys.exit(1)
for f in a.store:
    settle(assoc)
    st = assoc.send_c_store(dcmread(f))
    out({"event": "store", "status": int(st.Status)})

items = [tuple(x.split(":", 1)) for x in a.list]
for f in a.list_files:
    ds = dcmread(f, stop_before_pixels=True)
    items.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))

for n, tx in enumerate(a.tx):
    ds = Dataset()
    ds.TransactionUID = tx
    ds.ReferencedSOPSequence = Sequence()
    for cls, inst in items:
        i = Dataset()
        i.ReferencedSOPClassUID = cls
        i.ReferencedSOPInstanceUID = inst
        ds.ReferencedSOPSequence.append(i)
    if a.bad == "empty":
        ds.ReferencedSOPSequence = Sequence()
    elif a.bad == "huge":
        ds.add_new(0x00091010, "OB", b"\0" * (5 * 1024 * 1024))
    elif a.bad == "garbled":
        # Bytes no writer would make: a Referenced SOP Sequence whose item claims 16 bytes and
        # holds 8 (Implicit VR Little Endian, the first proposed syntax).
        import pynetdicom.association as pa
        garbage = (b"\x08\x00\x99\x11\xff\xff\xff\xff"
                   b"\xfe\xff\x00\xe0\x10\x00\x00\x00" + b"\x13" * 8)
        pa.encode = lambda *args, **kw: garbage
    settle(assoc)
    st, _ = assoc.send_n_action(ds, a.action_type, StorageCommitmentPushModel, a.instance, msg_id=n + 1)
    out({"event": "action", "status": int(st.Status) if "Status" in st else None,
         "error_comment": str(st.get("ErrorComment", ""))})
    if a.wait > 0:
        deadline = time.time() + a.wait
        with got:
            while len(reports) <= n and time.time() < deadline:
                got.wait(0.05)
            if len(reports) > n:
                out(reports[n])

settle(assoc)
st = assoc.send_c_echo()
out({"event": "echo", "status": int(st.Status) if "Status" in st else None})
assoc.release()
"#;

fn script(dir: &Path) -> PathBuf {
    let path = dir.join("scanner.py");
    std::fs::write(&path, SCANNER).unwrap();
    path
}

/// Runs the scanner as a client; returns its JSON lines.
fn client(node: &Node, aet: &str, args: &[String]) -> Vec<serde_json::Value> {
    client_on(node, &node.port(), aet, args)
}

/// [`client`] to another port of the node (its TLS listener).
fn client_on(node: &Node, port: &str, aet: &str, args: &[String]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(python())
        .arg(script(dir.path()))
        .args(["client", "--port", port, "--aet", aet])
        .args(args));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        out.status.success(),
        "scanner failed: {}\n{lines:?}\nnode log:\n{}",
        text(&out),
        node.log()
    );
    lines
}

fn events<'a>(lines: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["event"] == kind).collect()
}

/// The scanner's own SCP, receiving reports on new associations; stopped on drop.
struct ScannerServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl ScannerServer {
    fn start() -> ScannerServer {
        ScannerServer::start_with(&[])
    }

    fn start_with(extra: &[String]) -> ScannerServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = Command::new(python())
            .arg(script(dir.path()))
            .args(["server", "--port", &port.to_string(), "--log"])
            .arg(dir.path().join("reports.log"))
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("server.err")).unwrap())
            .spawn()
            .expect("start the pynetdicom scanner server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "READY",
            "scanner server did not start: {}",
            std::fs::read_to_string(dir.path().join("server.err")).unwrap_or_default()
        );
        ScannerServer { child, port, dir }
    }

    fn peer_toml(&self) -> String {
        format!(
            "[[peers]]\nae_title = \"SCANNER\"\naddress = \"127.0.0.1:{}\"\n",
            self.port
        )
    }

    fn reports(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("reports.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for ScannerServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn uid_of(path: &Path) -> String {
    attr(path, dicom_dictionary_std::tags::SOP_INSTANCE_UID)
}

fn strings(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

/// Byte offset of the first log line containing every one of `parts`.
fn position(log: &str, parts: &[&str]) -> Option<usize> {
    let mut at = 0;
    for line in log.split_inclusive('\n') {
        if parts.iter().all(|p| line.contains(p)) {
            return Some(at);
        }
        at += line.len();
    }
    None
}

fn state_of(node: &Node, tx: &str) -> String {
    node.index()
        .with(|c| {
            c.query_row(
                "SELECT state FROM commitments WHERE transaction_uid = ?1",
                [tx],
                |r| r.get(0),
            )
        })
        .unwrap_or_default()
}

/// Case 1: ten instances, one never sent and one listed under another class; the report
/// comes on the scanner's own association.
#[test]
fn report_on_the_same_association_lists_the_failures() {
    let node = Node::start("[commitment]\nwait_seconds = 1\n");
    let data = tempfile::tempdir().unwrap();
    let files = write_mr_series(data.path(), 11, 8, 8);
    let never_sent = "1.2.826.0.1.3680043.8.498.999.1";
    let wrong_class = uid_of(&files[10]);
    let mut args = vec!["--store".to_string()];
    args.extend(strings(&files));
    args.push("--list-files".into());
    args.extend(strings(&files[..10]));
    args.extend([
        "--list".into(),
        format!("{MR}:{never_sent}"),
        format!("{CT}:{wrong_class}"),
        "--tx".into(),
        "1.2.826.0.1.3680043.8.498.1".into(),
        "--wait".into(),
        "20".into(),
    ]);
    let lines = client(&node, "SCANNER", &args);
    assert!(events(&lines, "store").iter().all(|s| s["status"] == 0));
    assert_eq!(events(&lines, "action")[0]["status"], 0, "{lines:?}");
    let reports = events(&lines, "report");
    assert_eq!(reports.len(), 1, "no report: {lines:?}\n{}", node.log());
    let r = reports[0];
    assert_eq!(r["on"], "same");
    assert_eq!(r["event_type"], 2);
    assert_eq!(r["transaction_uid"], "1.2.826.0.1.3680043.8.498.1");
    assert_eq!(r["retrieve_ae"], "M3DNODE");
    let ok: Vec<String> = serde_json::from_value(r["ok"].clone()).unwrap();
    let mut expected: Vec<String> = files[..10].iter().map(|f| uid_of(f)).collect();
    let mut ok_sorted = ok.clone();
    ok_sorted.sort();
    expected.sort();
    assert_eq!(ok_sorted, expected);
    assert_eq!(r["failed"][never_sent], 0x0112);
    assert_eq!(r["failed"][wrong_class.as_str()], 0x0119);
    assert_eq!(r["failed"].as_object().unwrap().len(), 2);
    assert_eq!(events(&lines, "echo")[0]["status"], 0);
    let log = node.log();
    let requested = position(&log, &["commitment requested"]).unwrap();
    let decided = position(&log, &["commitment decided"]).unwrap();
    let reported = position(&log, &["commitment reported", "same association"]).unwrap();
    assert!(requested < decided && decided < reported, "{log}");
    assert!(wait_for(Duration::from_secs(5), || state_of(
        &node,
        "1.2.826.0.1.3680043.8.498.1"
    ) == "reported"));
    // `m3dnode jobs` shows it: state, requester, event type, items, failures.
    let jobs = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["jobs", "--config"])
        .arg(&node.config));
    assert!(jobs.status.success(), "{}", text(&jobs));
    let listing = text(&jobs);
    let line = listing
        .lines()
        .find(|l| l.contains("1.2.826.0.1.3680043.8.498.1"))
        .unwrap_or_else(|| panic!("{listing}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[..5], ["reported", "SCANNER", "2", "12", "2"], "{line}");
}

/// Case 2: the scanner releases right after the N-ACTION-RSP while one listed instance is
/// still to come; it arrives on another association, and the report goes to the scanner's
/// `[[peers]]` address on a new association proposing the SCP role (scu=0, scp=1).
#[test]
fn report_on_a_new_association_after_a_late_instance() {
    let server = ScannerServer::start();
    let node = Node::start(&format!(
        "[commitment]\nwait_seconds = 60\n{}",
        server.peer_toml()
    ));
    let data = tempfile::tempdir().unwrap();
    let files = write_mr_series(data.path(), 4, 8, 8);
    let tx = "1.2.826.0.1.3680043.8.498.2";
    let mut args = vec!["--store".to_string()];
    args.extend(strings(&files[..3]));
    args.push("--list-files".into());
    args.extend(strings(&files));
    args.extend(["--tx".into(), tx.into()]);
    let lines = client(&node, "SCANNER", &args);
    assert_eq!(events(&lines, "action")[0]["status"], 0);
    assert!(events(&lines, "report").is_empty());
    assert!(wait_for(Duration::from_secs(5), || state_of(&node, tx) == "waiting"));
    // The last instance, on an association of its own.
    storescu(&node, &files[3..]);
    assert!(
        wait_for(Duration::from_secs(20), || !server.reports().is_empty()),
        "no report on a new association; node log:\n{}",
        node.log()
    );
    let r = &server.reports()[0];
    assert_eq!(r["event_type"], 1);
    assert_eq!(r["transaction_uid"], tx);
    assert_eq!(r["ok"].as_array().unwrap().len(), 4);
    assert_eq!(r["roles"], serde_json::json!([false, true]));
    assert!(wait_for(Duration::from_secs(5), || state_of(&node, tx) == "reported"));
    let log = node.log();
    let stored_last = position(&log, &["stored", &uid_of(&files[3])]).unwrap();
    let reported = position(&log, &["commitment reported", "new association"]).unwrap();
    assert!(stored_last < reported, "{log}");
}

/// Case 3: the node restarts between the request and the report; the waiting transaction
/// is resumed from the index and reported on a new association once the instance arrives.
#[test]
fn a_restart_between_request_and_report_still_reports() {
    restart_between_request_and_report(false);
}

/// Case 3, variant: the node is killed (SIGKILL) right after the N-ACTION-RSP; the
/// transaction was stored before the response, so it is resumed all the same.
#[test]
fn a_kill_right_after_the_response_still_reports() {
    restart_between_request_and_report(true);
}

fn restart_between_request_and_report(kill: bool) {
    let server = ScannerServer::start();
    let mut node = Node::start(&format!(
        "[commitment]\nwait_seconds = 60\n{}",
        server.peer_toml()
    ));
    let data = tempfile::tempdir().unwrap();
    let files = write_mr_series(data.path(), 2, 8, 8);
    let tx = if kill {
        "1.2.826.0.1.3680043.8.498.31"
    } else {
        "1.2.826.0.1.3680043.8.498.3"
    };
    let mut args = vec!["--store".to_string()];
    args.extend(strings(&files[..1]));
    args.push("--list-files".into());
    args.extend(strings(&files));
    args.extend(["--tx".into(), tx.into()]);
    let lines = client(&node, "SCANNER", &args);
    assert_eq!(events(&lines, "action")[0]["status"], 0);
    if !kill {
        assert!(node.terminate().success());
    }
    // `restart` kills what still runs with SIGKILL.
    let node = node.restart();
    assert!(
        wait_for(Duration::from_secs(10), || node
            .log()
            .contains("commitment: resuming open transactions")),
        "{}",
        node.log()
    );
    assert_eq!(state_of(&node, tx), "waiting");
    storescu(&node, &files[1..]);
    assert!(
        wait_for(Duration::from_secs(20), || !server.reports().is_empty()),
        "no report after the restart; node log:\n{}",
        node.log()
    );
    let r = &server.reports()[0];
    assert_eq!(r["event_type"], 1);
    assert_eq!(r["ok"].as_array().unwrap().len(), 2);
    assert!(wait_for(Duration::from_secs(5), || state_of(&node, tx) == "reported"));
}

/// Case 4 (D1): the same Transaction UID with the same list is a retry and gets the report
/// again; with another list every item fails with 0x0131 and the stored transaction stays.
#[test]
fn a_reused_transaction_uid_is_a_retry_or_a_duplicate() {
    let node = Node::start("[commitment]\nwait_seconds = 5\n");
    let data = tempfile::tempdir().unwrap();
    let files = write_mr_series(data.path(), 3, 8, 8);
    let tx = "1.2.826.0.1.3680043.8.498.4";
    let mut args = vec!["--store".to_string()];
    args.extend(strings(&files));
    args.push("--list-files".into());
    args.extend(strings(&files[..2]));
    args.extend([
        "--tx".into(),
        tx.into(),
        "--tx".into(),
        tx.into(),
        "--wait".into(),
        "20".into(),
    ]);
    let lines = client(&node, "SCANNER", &args);
    let reports = events(&lines, "report");
    assert_eq!(reports.len(), 2, "{lines:?}\n{}", node.log());
    for r in &reports {
        assert_eq!(r["event_type"], 1);
        assert_eq!(r["ok"].as_array().unwrap().len(), 2);
    }
    // Same UID, another list (all three files).
    let mut args = vec!["--list-files".to_string()];
    args.extend(strings(&files));
    args.extend(["--tx".into(), tx.into(), "--wait".into(), "20".into()]);
    let lines = client(&node, "SCANNER", &args);
    assert_eq!(events(&lines, "action")[0]["status"], 0);
    let r = events(&lines, "report")[0];
    assert_eq!(r["event_type"], 2);
    assert!(r["ok"].as_array().unwrap().is_empty());
    let failed = r["failed"].as_object().unwrap();
    assert_eq!(failed.len(), 3);
    assert!(failed.values().all(|v| v == 0x0131));
    let stored = node.index().commitment(tx).unwrap().unwrap();
    assert_eq!(stored.items.len(), 2);
    assert_eq!(stored.event_type, Some(1));
}

/// Case 7 (N-ACTION part): each refused with its status on the association, which goes on
/// (a C-ECHO on it succeeds), as does the node.
#[test]
fn bad_n_actions_get_their_status_and_the_node_goes_on() {
    let node = Node::start(
        "[[peers]]\nae_title = \"NOCOMMIT\"\naddress = \"127.0.0.1:9\"\nmay = [\"echo\", \"store\"]\n",
    );
    let item = format!("{MR}:1.2.826.0.1.3680043.8.498.77");
    let tx = "1.2.826.0.1.3680043.8.498.7";
    let cases: [(&str, Vec<&str>, u64); 6] = [
        ("SCANNER", vec!["--action-type", "2"], 0x0123),
        ("SCANNER", vec!["--instance", "1.2.3.4"], 0x0112),
        ("SCANNER", vec!["--bad", "empty"], 0x0120),
        ("NOCOMMIT", vec![], 0x0124),
        ("SCANNER", vec!["--bad", "huge"], 0x0213),
        ("SCANNER", vec!["--bad", "garbled"], 0x0110),
    ];
    for (aet, extra, expected) in cases {
        let mut args: Vec<String> = vec!["--list".into(), item.clone(), "--tx".into(), tx.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let lines = client(&node, aet, &args);
        let action = events(&lines, "action");
        assert_eq!(
            action[0]["status"],
            expected,
            "{aet} {extra:?}: {lines:?}\n{}",
            node.log()
        );
        assert_eq!(events(&lines, "echo")[0]["status"], 0, "{extra:?}");
        assert!(node.echo_ok(), "{extra:?}");
    }
    // None of them stored a transaction.
    assert!(node.index().commitment(tx).unwrap().is_none());
    let log = node.log();
    assert_eq!(log.matches("N-ACTION refused").count(), 6, "{log}");
}

/// The requester's association is gone and its `[[peers]]` address refuses: the report is
/// tried `report_attempts` times, then the transaction is `undeliverable` (the scanner keeps
/// its copy), and the node goes on.
#[test]
fn an_unreachable_requester_makes_the_report_undeliverable() {
    let closed = free_port();
    let node = Node::start(&format!(
        "[commitment]\nwait_seconds = 0.5\nreport_attempts = 2\nretry_initial_seconds = 0.2\n\
         [[peers]]\nae_title = \"SCANNER\"\naddress = \"127.0.0.1:{closed}\"\n"
    ));
    let tx = "1.2.826.0.1.3680043.8.498.8";
    let args: Vec<String> = vec![
        "--list".into(),
        format!("{MR}:1.2.826.0.1.3680043.8.498.88"),
        "--tx".into(),
        tx.into(),
    ];
    let lines = client(&node, "SCANNER", &args);
    assert_eq!(events(&lines, "action")[0]["status"], 0);
    // The state is stored before the give-up line is written: wait for both.
    assert!(
        wait_for(Duration::from_secs(20), || state_of(&node, tx)
            == "undeliverable"
            && node.log().contains("commitment report undeliverable")),
        "{}",
        node.log()
    );
    let c = &node.index().list_commitments(10).unwrap()[0];
    assert_eq!(c.attempts, 2);
    assert_eq!(c.event_type, Some(2));
    assert!(c.last_error.is_some());
    let log = node.log();
    let retried = position(&log, &["commitment report failed; retrying"])
        .unwrap_or_else(|| panic!("no retry logged:\n{log}"));
    let given_up = position(&log, &["commitment report undeliverable"])
        .unwrap_or_else(|| panic!("no give-up logged:\n{log}"));
    assert!(retried < given_up, "{log}");
    assert!(node.echo_ok());
}

/// A requester waiting on its association for a report longer than the idle timeout is not
/// aborted as idle: the report comes on it when the wait is over.
#[test]
fn a_requester_waiting_for_its_report_is_not_idle() {
    let node = Node::start("idle_timeout_seconds = 1\n[commitment]\nwait_seconds = 2.5\n");
    let missing = "1.2.826.0.1.3680043.8.498.99";
    let args: Vec<String> = vec![
        "--list".into(),
        format!("{MR}:{missing}"),
        "--tx".into(),
        "1.2.826.0.1.3680043.8.498.9".into(),
        "--wait".into(),
        "20".into(),
    ];
    let lines = client(&node, "SCANNER", &args);
    let r = events(&lines, "report");
    assert_eq!(r.len(), 1, "{lines:?}\n{}", node.log());
    assert_eq!(r[0]["on"], "same");
    assert_eq!(r[0]["failed"][missing], 0x0112);
    assert!(!node.log().contains("association idle too long"));
}

/// A test CA and leaf certificates (as tests/tls.rs makes them), written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "commitment test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// (certificate, key) for `name` (127.0.0.1 becomes an IP address SAN).
    fn leaf(&self, stem: &str, name: &str) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{stem}.crt")),
            self.dir.path().join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn args(&self, (cert, key): &(PathBuf, PathBuf)) -> Vec<String> {
        vec![
            "--tls".into(),
            cert.display().to_string(),
            key.display().to_string(),
            self.ca_file().display().to_string(),
        ]
    }
}

/// A `tls = true` scanner: it requests commitment over TLS, and the report on a new
/// association goes to its SCP over TLS too, with the node's certificate, as delivery does.
#[test]
fn a_tls_peer_gets_its_report_over_tls() {
    let pki = Pki::new();
    let node_id = pki.leaf("node", "127.0.0.1");
    let server = ScannerServer::start_with(&pki.args(&pki.leaf("server", "127.0.0.1")));
    let node = Node::start(&format!(
        "[commitment]\nwait_seconds = 60\n\
         [tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\ncertificate = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\
         [[peers]]\nae_title = \"SCANNER\"\naddress = \"127.0.0.1:{}\"\ntls = true\n",
        node_id.0.display(),
        node_id.1.display(),
        pki.ca_file().display(),
        server.port
    ));
    let tls_port = node.tls.expect("no TLS listener").port().to_string();
    let data = tempfile::tempdir().unwrap();
    let files = write_mr_series(data.path(), 2, 8, 8);
    let tx = "1.2.826.0.1.3680043.8.498.10";
    let mut args = pki.args(&pki.leaf("client", "SCANNER"));
    args.push("--store".into());
    args.extend(strings(&files[..1]));
    args.push("--list-files".into());
    args.extend(strings(&files));
    args.extend(["--tx".into(), tx.into()]);
    let lines = client_on(&node, &tls_port, "SCANNER", &args);
    assert_eq!(events(&lines, "action")[0]["status"], 0, "{lines:?}");
    // The late instance from another AE, plain.
    storescu(&node, &files[1..]);
    assert!(
        wait_for(Duration::from_secs(20), || !server.reports().is_empty()),
        "no report over TLS; node log:\n{}\nserver: {}",
        node.log(),
        std::fs::read_to_string(server.dir.path().join("server.err")).unwrap_or_default()
    );
    let r = &server.reports()[0];
    assert_eq!(r["event_type"], 1);
    assert_eq!(r["roles"], serde_json::json!([false, true]));
    assert!(wait_for(Duration::from_secs(5), || state_of(&node, tx) == "reported"));
}
