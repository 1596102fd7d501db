//! The MPPS SCP against pynetdicom as the scanner (design cases 5, 6 and the MPPS cases of 7):
//! COMPLETED completes a series without quiet time (asserted by the order of log events, not
//! by timings), DISCONTINUED per the rule's `on_discontinued`, the standard's statuses for bad
//! requests (each followed by a C-ECHO on the same association that succeeds), and forwarding
//! to a RIS (a pynetdicom MPPS SCP that records what it receives).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// The scanner: one MPPS request per run (on its own association, followed by a C-ECHO on the
/// same association), its answer printed as one JSON line. `serve` runs an MPPS SCP instead
/// (the RIS of the forwarding test) that logs each request it receives.
const SCANNER: &str = r#"
import json, os, sys, argparse, time
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep, Verification

p = argparse.ArgumentParser()
p.add_argument("action", choices=["create", "set", "serve"])
p.add_argument("--port", type=int, required=True)
p.add_argument("--uid", default="")
p.add_argument("--status", default="IN PROGRESS")
p.add_argument("--omit", action="append", default=[])
p.add_argument("--files", default="")
p.add_argument("--no-series", action="store_true")
p.add_argument("--change-modality", action="store_true")
p.add_argument("--log", default="")
a = p.parse_args()

if a.action == "serve":
    log = open(a.log, "a", buffering=1)
    def on_create(event):
        ds = event.attribute_list
        log.write("CREATE %s %s\n" % (event.request.AffectedSOPInstanceUID, ds.PerformedProcedureStepStatus))
        return 0x0000, ds
    def on_set(event):
        ds = event.modification_list
        log.write("SET %s %s %d\n" % (event.request.RequestedSOPInstanceUID,
            ds.get("PerformedProcedureStepStatus", ""), len(ds.get("PerformedSeriesSequence", []))))
        return 0x0000, ds
    ae = AE(ae_title="RIS")
    ae.add_supported_context(ModalityPerformedProcedureStep)
    ae.start_server(("127.0.0.1", a.port), block=False,
        evt_handlers=[(evt.EVT_N_CREATE, on_create), (evt.EVT_N_SET, on_set)])
    print("READY", flush=True)
    sys.stdin.read()
    sys.exit(0)

ds = Dataset()
if a.action == "create":
    ds.PerformedProcedureStepStatus = a.status
    ds.PerformedStationAETitle = "SCANNER"
    ds.PerformedStationName = "MR1"
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20261204"
    ds.PerformedProcedureStepStartTime = "120000"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.PerformedProcedureStepID = "PPS-1"
    ds.PerformedProcedureStepDescription = "head"
    ds.PerformedProcedureTypeDescription = ""
    ds.Modality = "MR"
    ds.StudyID = "1"
    ds.PatientName = "TEST^PHANTOM"
    ds.PatientID = "PHANTOM01"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ReferencedPatientSequence = []
    ds.ProcedureCodeSequence = []
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    item = Dataset()
    item.StudyInstanceUID = generate_uid()
    item.ReferencedStudySequence = []
    item.AccessionNumber = "ACC1"
    item.RequestedProcedureID = ""
    item.RequestedProcedureDescription = ""
    item.ScheduledProcedureStepID = ""
    item.ScheduledProcedureStepDescription = ""
    item.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [item]
else:
    ds.PerformedProcedureStepStatus = a.status
    ds.PerformedProcedureStepEndDate = "20261204"
    ds.PerformedProcedureStepEndTime = "121500"
    if a.change_modality:
        ds.Modality = "CT"
    series = {}
    if a.files:
        for name in sorted(os.listdir(a.files)):
            f = dcmread(os.path.join(a.files, name), stop_before_pixels=True)
            ref = Dataset()
            ref.ReferencedSOPClassUID = f.SOPClassUID
            ref.ReferencedSOPInstanceUID = f.SOPInstanceUID
            series.setdefault(f.SeriesInstanceUID, []).append(ref)
    if not a.no_series:
        items = []
        for uid, refs in series.items():
            s = Dataset()
            s.SeriesInstanceUID = uid
            s.ProtocolName = "t1"
            s.PerformingPhysicianName = ""
            s.OperatorsName = ""
            s.SeriesDescription = ""
            s.RetrieveAETitle = ""
            s.ReferencedImageSequence = refs
            s.ReferencedNonImageCompositeSOPInstanceSequence = []
            items.append(s)
        ds.PerformedSeriesSequence = items
for keyword in a.omit:
    delattr(ds, keyword)

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

ae = AE(ae_title="SCANNER")
ae.add_requested_context(ModalityPerformedProcedureStep)
ae.add_requested_context(Verification)
assoc = ae.associate("127.0.0.1", a.port, ae_title="M3DNODE")
if not assoc.is_established:
    print(json.dumps({"error": "association failed"}), flush=True)
    sys.exit(1)
if a.action == "create":
    st, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, a.uid)
else:
    st, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, a.uid)
out = {"status": None}
if st:
    out["status"] = int(st.Status)
    out["error_id"] = int(st.ErrorID) if "ErrorID" in st else None
    out["comment"] = str(st.get("ErrorComment", ""))
    attrs = st.get("AttributeIdentifierList", None)
    if attrs is not None:
        attrs = attrs if isinstance(attrs, list) or hasattr(attrs, "__iter__") and not isinstance(attrs, int) else [attrs]
        out["attributes"] = ["%08X" % int(t) for t in attrs]
settle(assoc)
echo = assoc.send_c_echo()
out["echo"] = int(echo.Status) if echo else None
assoc.release()
print(json.dumps(out), flush=True)
"#;

struct Scanner {
    dir: tempfile::TempDir,
    script: PathBuf,
}

/// One request's answer: status, Error ID, Attribute Identifier List (as hex tags), and the
/// status of the C-ECHO that followed on the same association.
#[derive(Debug)]
struct Answer {
    status: u16,
    error_id: Option<u16>,
    attributes: Vec<String>,
    echo: Option<u16>,
    raw: String,
}

impl Scanner {
    fn new() -> Scanner {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("scanner.py");
        std::fs::write(&script, SCANNER).unwrap();
        Scanner { dir, script }
    }

    fn run(&self, node: &Node, args: &[&str]) -> Answer {
        let out = run(Command::new(python())
            .arg(&self.script)
            .args(args)
            .args(["--port", &node.port()]));
        let raw = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(out.status.success(), "{}\n{}", text(&out), node.log());
        let v: serde_json::Value = serde_json::from_str(&raw).unwrap_or_else(|e| {
            panic!("scanner output {raw:?}: {e}; {}", text(&out));
        });
        let num = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as u16);
        Answer {
            status: num("status").unwrap_or_else(|| panic!("no status: {raw}")),
            error_id: num("error_id"),
            attributes: v
                .get("attributes")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            echo: num("echo"),
            raw,
        }
    }

    fn create(&self, node: &Node, uid: &str, extra: &[&str]) -> Answer {
        let mut args = vec!["create", "--uid", uid];
        args.extend_from_slice(extra);
        self.run(node, &args)
    }

    fn set(&self, node: &Node, uid: &str, status: &str, files: &Path, extra: &[&str]) -> Answer {
        let files = files.to_str().unwrap();
        let mut args = vec!["set", "--uid", uid, "--status", status, "--files", files];
        args.extend_from_slice(extra);
        self.run(node, &args)
    }
}

/// A node whose MR rule has a 600 s quiet time: only MPPS completes its series in a test.
fn node(on_discontinued: &str, extra: &str) -> (Node, Destination) {
    let dest = Destination::down("DEST");
    let node = Node::start(&format!(
        "{}[[rules]]\nname = \"mr\"\nmodality = \"MR\"\nquiet_seconds = 600\non_discontinued = \"{on_discontinued}\"\nsend_to = [\"DEST\"]\n{extra}",
        dest.peer_toml()
    ));
    (node, dest)
}

fn series(dir: &Path, n: usize) -> Vec<PathBuf> {
    write_mr_series(dir, n, 16, 16)
}

/// A job is in the index and its "job queued" line is written: the tracker logs after the
/// index transaction, so a test that waited for the row alone could read the log between.
fn queued(node: &Node) -> bool {
    !jobs(node).is_empty() && node.log().contains("job queued")
}

/// Position of the first log line containing all of `parts`.
fn line_of(log: &str, parts: &[&str]) -> Option<usize> {
    log.lines()
        .position(|l| parts.iter().all(|p| l.contains(p)))
}

fn series_state(node: &Node) -> Vec<String> {
    node.index()
        .with(|c| {
            c.prepare("SELECT state FROM series_work ORDER BY first_at")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .unwrap()
}

#[test]
fn completed_queues_the_job_without_quiet_time() {
    let (node, _dest) = node("process", "");
    let scanner = Scanner::new();
    let files = series(&scanner.dir.path().join("s1"), 5);
    let uid = "1.2.826.0.1.3680043.10.1.1";
    let a = scanner.create(&node, uid, &[]);
    assert_eq!((a.status, a.echo), (0x0000, Some(0)), "{a:?}");
    storescu(&node, &files);
    assert!(jobs(&node).is_empty(), "no job before the MPPS");
    let a = scanner.set(&node, uid, "COMPLETED", &scanner.dir.path().join("s1"), &[]);
    assert_eq!((a.status, a.echo), (0x0000, Some(0)), "{a:?}");
    assert!(
        wait_for(Duration::from_secs(30), || queued(&node)),
        "{}",
        node.log()
    );
    let log = node.log();
    let completed = line_of(&log, &["mpps COMPLETED", uid]).expect("mpps COMPLETED line");
    let queued = line_of(&log, &["series complete (MPPS): job queued"]).expect("queued line");
    assert!(completed < queued, "{log}");
    assert!(!log.contains("series complete: job queued"), "{log}");
    // The step is in the index with its list.
    let db = node.index();
    let step = db.mpps(uid).unwrap().unwrap();
    assert_eq!(step.status.as_str(), "COMPLETED");
    assert_eq!(step.calling_ae, "SCANNER");
    assert_eq!(step.modality.as_deref(), Some("MR"));
    assert_eq!(db.mpps_instances(uid).unwrap().len(), 5);
    // `m3dnode jobs` shows it, every series and instance stored.
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["jobs", "--config"])
        .arg(&node.config));
    let listing = text(&out);
    assert!(out.status.success(), "{listing}");
    let row = listing
        .lines()
        .find(|l| l.contains(uid))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(row.starts_with("COMPLETED"), "{row}");
    assert!(row.contains("1/1") && row.contains("5/5"), "{row}");
}

#[test]
fn completed_before_the_last_instance_waits_for_it() {
    let (node, _dest) = node("process", "");
    let scanner = Scanner::new();
    let all = scanner.dir.path().join("s1");
    let files = series(&all, 5);
    let uid = "1.2.826.0.1.3680043.10.1.2";
    assert_eq!(scanner.create(&node, uid, &[]).status, 0x0000);
    storescu(&node, &files[..4]);
    let a = scanner.set(&node, uid, "COMPLETED", &all, &[]);
    assert_eq!(a.status, 0x0000, "{a:?}");
    assert!(wait_for(Duration::from_secs(10), || node
        .log()
        .contains("MPPS COMPLETED lists this series")));
    assert!(jobs(&node).is_empty(), "one listed instance is missing");
    storescu(&node, &files[4..]);
    assert!(
        wait_for(Duration::from_secs(30), || queued(&node)),
        "{}",
        node.log()
    );
    let last = common::attr(&files[4], dicom_dictionary_std::tags::SOP_INSTANCE_UID);
    let log = node.log();
    let stored = line_of(&log, &["stored", &last]).expect("the last instance's stored line");
    let completed = line_of(&log, &["mpps COMPLETED"]).unwrap();
    let queued = line_of(&log, &["series complete (MPPS): job queued"]).unwrap();
    assert!(completed < stored && stored < queued, "{log}");
}

#[test]
fn a_restart_between_completed_and_the_last_instance_keeps_waiting_for_it() {
    let (node, _dest) = node("process", "");
    let scanner = Scanner::new();
    let all = scanner.dir.path().join("s1");
    let files = series(&all, 4);
    let uid = "1.2.826.0.1.3680043.10.1.7";
    assert_eq!(scanner.create(&node, uid, &[]).status, 0x0000);
    storescu(&node, &files[..3]);
    assert_eq!(
        scanner.set(&node, uid, "COMPLETED", &all, &[]).status,
        0x0000
    );
    assert!(wait_for(Duration::from_secs(10), || node
        .log()
        .contains("MPPS COMPLETED lists this series")));
    let mut node = node;
    assert!(node.terminate().success());
    let node = node.restart();
    assert!(
        wait_for(Duration::from_secs(10), || node
            .log()
            .contains("resuming the series of an MPPS step")),
        "{}",
        node.log()
    );
    assert!(
        jobs(&node).is_empty(),
        "one listed instance is still missing"
    );
    storescu(&node, &files[3..]);
    assert!(
        wait_for(Duration::from_secs(30), || queued(&node)),
        "{}",
        node.log()
    );
    let log = node.log();
    let resumed = line_of(&log, &["resuming the series of an MPPS step"]).unwrap();
    let queued = line_of(&log, &["series complete (MPPS): job queued"]).unwrap();
    assert!(resumed < queued, "{log}");
}

#[test]
fn discontinued_skips_or_processes_as_the_rule_says() {
    for policy in ["skip", "process"] {
        let (node, _dest) = node(policy, "");
        let scanner = Scanner::new();
        let dir = scanner.dir.path().join("s1");
        let files = series(&dir, 3);
        let uid = "1.2.826.0.1.3680043.10.1.3";
        assert_eq!(scanner.create(&node, uid, &[]).status, 0x0000);
        storescu(&node, &files);
        let a = scanner.set(&node, uid, "DISCONTINUED", &dir, &[]);
        assert_eq!(a.status, 0x0000, "{a:?}");
        if policy == "skip" {
            assert!(
                wait_for(Duration::from_secs(10), || series_state(&node)
                    == ["skipped"]
                    && node.log().contains("series skipped")),
                "{:?} {}",
                series_state(&node),
                node.log()
            );
            assert!(jobs(&node).is_empty());
            assert!(node.log().contains("series skipped"), "{}", node.log());
        } else {
            assert!(
                wait_for(Duration::from_secs(30), || queued(&node)),
                "{}",
                node.log()
            );
            assert_eq!(series_state(&node), ["processed"]);
        }
    }
}

#[test]
fn bad_requests_get_the_standard_statuses_and_the_node_goes_on() {
    let (node, _dest) = node("process", "");
    let scanner = Scanner::new();
    let dir = scanner.dir.path().join("s1");
    series(&dir, 2);
    let uid = "1.2.826.0.1.3680043.10.1.4";

    // N-SET of an unknown step: 0x0112.
    let a = scanner.set(
        &node,
        "1.2.826.0.1.3680043.10.1.999",
        "COMPLETED",
        &dir,
        &[],
    );
    assert_eq!((a.status, a.echo), (0x0112, Some(0)), "{a:?}");
    // N-CREATE with a status other than IN PROGRESS: 0x0106 naming the status.
    let a = scanner.create(&node, uid, &["--status", "COMPLETED"]);
    assert_eq!((a.status, a.echo), (0x0106, Some(0)), "{a:?}");
    // pynetdicom's N-CREATE confirmation drops the Attribute Identifier List: the log says it.
    assert!(
        line_of(
            &node.log(),
            &["mpps request refused", "0x0106", "(0040,0252)"]
        )
        .is_some(),
        "{}",
        node.log()
    );
    // N-CREATE without Modality (type 1): 0x0120 naming it.
    let a = scanner.create(&node, uid, &["--omit", "Modality"]);
    assert_eq!((a.status, a.echo), (0x0120, Some(0)), "{a:?}");
    assert!(
        line_of(
            &node.log(),
            &["mpps request refused", "0x0120", "(0008,0060)"]
        )
        .is_some(),
        "{}",
        node.log()
    );
    // Nothing was created by the refusals.
    assert!(node.index().mpps(uid).unwrap().is_none());
    // A good N-CREATE, then a duplicate: 0x0111.
    assert_eq!(scanner.create(&node, uid, &[]).status, 0x0000);
    let a = scanner.create(&node, uid, &[]);
    assert_eq!((a.status, a.echo), (0x0111, Some(0)), "{a:?}");
    // N-SET changing what it may not (Modality): 0x0106.
    let a = scanner.set(&node, uid, "IN PROGRESS", &dir, &["--change-modality"]);
    assert_eq!((a.status, a.echo), (0x0106, Some(0)), "{a:?}");
    assert_eq!(a.attributes, ["00080060"], "{}", a.raw);
    // COMPLETED without a Performed Series Sequence: 0x0120.
    let a = scanner.set(&node, uid, "COMPLETED", &dir, &["--no-series"]);
    assert_eq!((a.status, a.echo), (0x0120, Some(0)), "{a:?}");
    assert_eq!(a.attributes, ["00400340"], "{}", a.raw);
    // The step is still IN PROGRESS: COMPLETED now succeeds.
    let a = scanner.set(&node, uid, "COMPLETED", &dir, &[]);
    assert_eq!(a.status, 0x0000, "{a:?}");
    // N-SET after COMPLETED: 0x0110 with Error ID 0xA710.
    let a = scanner.set(&node, uid, "DISCONTINUED", &dir, &[]);
    assert_eq!(
        (a.status, a.error_id, a.echo),
        (0x0110, Some(0xA710), Some(0)),
        "{a:?}"
    );
    assert_eq!(
        node.index().mpps(uid).unwrap().unwrap().status.as_str(),
        "COMPLETED"
    );
    let log = node.log();
    assert_eq!(log.matches("mpps request refused").count(), 7, "{log}");
    assert!(node.echo_ok());
}

/// The RIS: a pynetdicom MPPS SCP logging `CREATE uid status` and `SET uid status series`.
struct Ris {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ris {
    fn start(scanner: &Scanner) -> Ris {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ris.log");
        let port = free_port();
        let mut child = Command::new(python())
            .arg(&scanner.script)
            .args(["serve", "--port", &port.to_string(), "--log"])
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY");
        Ris {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn received(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for Ris {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn accepted_messages_are_forwarded_in_order_and_refused_ones_are_not() {
    let scanner = Scanner::new();
    let ris = Ris::start(&scanner);
    let (node, _dest) = node(
        "process",
        &format!(
            "[[peers]]\nae_title = \"RIS\"\naddress = \"127.0.0.1:{}\"\n[mpps]\nforward_to = \"RIS\"\nforward_retry_seconds = 0.2\n",
            ris.port
        ),
    );
    let dir = scanner.dir.path().join("s1");
    series(&dir, 2);
    let uid = "1.2.826.0.1.3680043.10.1.5";
    assert_eq!(scanner.create(&node, uid, &[]).status, 0x0000);
    // Refused: not forwarded.
    assert_eq!(
        scanner
            .set(&node, uid, "COMPLETED", &dir, &["--no-series"])
            .status,
        0x0120
    );
    assert_eq!(
        scanner.set(&node, uid, "COMPLETED", &dir, &[]).status,
        0x0000
    );
    assert!(
        wait_for(Duration::from_secs(20), || ris.received().len() >= 2),
        "{:?} {}",
        ris.received(),
        node.log()
    );
    assert_eq!(
        ris.received(),
        [
            format!("CREATE {uid} IN PROGRESS"),
            format!("SET {uid} COMPLETED 1")
        ]
    );
    assert_eq!(node.log().matches("mpps forwarded").count(), 2);
}

#[test]
fn a_forwarding_target_that_is_down_never_affects_the_scanner() {
    let scanner = Scanner::new();
    let down = free_port();
    let (node, _dest) = node(
        "process",
        &format!(
            "[[peers]]\nae_title = \"RIS\"\naddress = \"127.0.0.1:{down}\"\n[mpps]\nforward_to = \"RIS\"\nforward_attempts = 2\nforward_retry_seconds = 0.1\n",
        ),
    );
    let uid = "1.2.826.0.1.3680043.10.1.6";
    let a = scanner.create(&node, uid, &[]);
    assert_eq!((a.status, a.echo), (0x0000, Some(0)), "{a:?}");
    assert!(
        wait_for(Duration::from_secs(20), || node
            .log()
            .contains("mpps forwarding failed; given up")),
        "{}",
        node.log()
    );
    assert_eq!(
        node.log()
            .matches("mpps forwarding failed; will retry")
            .count(),
        1
    );
}

#[test]
fn a_peer_whose_may_leaves_out_mpps_is_refused_0x0124() {
    let (node, _dest) = node(
        "process",
        "[[peers]]\nae_title = \"SCANNER\"\naddress = \"127.0.0.1:1\"\nmay = [\"echo\", \"store\"]\n",
    );
    let scanner = Scanner::new();
    let uid = "1.2.826.0.1.3680043.10.1.8";
    let a = scanner.create(&node, uid, &[]);
    assert_eq!((a.status, a.echo), (0x0124, Some(0)), "{a:?}");
    assert!(node.index().mpps(uid).unwrap().is_none());
    assert!(
        node.log()
            .contains("request refused: not authorized (0x0124)")
    );
}
