//! Delivery against scripted and slow destinations: unconfirmed deliveries (kill -9 while the
//! destination stores, a destination slower than the timeout), permanent refusals, and the SCU
//! corner cases of `m3dnode send`/`echo` (small peer PDU, Deflated files, unreachable peers).
//!
//! The scripted destination is pynetdicom (from the test venv, `M3DNODE_PYTHON`, installed by
//! scripts/test): a Storage SCP whose C-STORE handler sleeps and that answers Study Root C-FIND
//! from what it stored. The destination without C-FIND is DCMTK storescp.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const CT: &str = "ct_head_axial_small";
const ENCAPSULATED_STL: &str = "1.2.840.10008.5.1.4.1.1.104.3";
const ENCAPSULATED_OBJ: &str = "1.2.840.10008.5.1.4.1.1.104.4";
const ENCAPSULATED_MTL: &str = "1.2.840.10008.5.1.4.1.1.104.5";
const SURFACE_SEGMENTATION: &str = "1.2.840.10008.5.1.4.1.1.66.5";

fn ct_series() -> PathBuf {
    testdata().join("series").join(CT)
}

/// A pynetdicom Storage SCP. Every C-STORE request is logged (`STORE uid`) when it arrives,
/// before the handler sleeps, so the log counts deliveries even of stores whose answer never
/// reached the node; the instance is written and becomes findable after the sleep.
const SCRIPTED_SCP: &str = r#"
import os, sys, threading, time, argparse
from pydicom.dataset import Dataset
from pynetdicom import AE, evt, AllStoragePresentationContexts, ALL_TRANSFER_SYNTAXES
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, CTImageStorage

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--aet", default="DEST")
p.add_argument("--dir", required=True)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--find", action="store_true")
p.add_argument("--only-ct", action="store_true")
p.add_argument("--max-pdu", type=int, default=16384)
p.add_argument("--require-called-aet", action="store_true")
p.add_argument("--refuse", action="append", default=[])
a = p.parse_args()

lock = threading.Lock()
stored = {}
log = open(os.path.join(a.dir, "stores.log"), "a", buffering=1)

def on_store(event):
    uid = event.request.AffectedSOPInstanceUID
    log.write("STORE %s\n" % uid)
    time.sleep(a.sleep)
    data = event.encoded_dataset()
    n = len([f for f in os.listdir(a.dir) if f.startswith(uid)])
    with open(os.path.join(a.dir, "%s.%d.dcm" % (uid, n)), "wb") as f:
        f.write(data)
    ds = event.dataset
    with lock:
        stored[uid] = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
    log.write("STORED %s\n" % uid)
    return 0x0000

def on_find(event):
    q = event.identifier
    uid = str(q.get("SOPInstanceUID", ""))
    log.write("FIND %s\n" % uid)
    with lock:
        hit = stored.get(uid)
    if hit is not None:
        r = Dataset()
        r.QueryRetrieveLevel = "IMAGE"
        r.StudyInstanceUID, r.SeriesInstanceUID = hit
        r.SOPInstanceUID = uid
        yield (0xFF00, r)

ae = AE(ae_title=a.aet)
ae.maximum_pdu_size = a.max_pdu
ae.require_called_aet = a.require_called_aet
if a.only_ct:
    ae.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES)
else:
    classes = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    # Encapsulated STL, OBJ, MTL, Surface Segmentation, MR
    classes += ["1.2.840.10008.5.1.4.1.1.104.%d" % n for n in (3, 4, 5)]
    classes += ["1.2.840.10008.5.1.4.1.1.66.5", "1.2.840.10008.5.1.4.1.1.4"]
    for uid in dict.fromkeys(classes):
        if uid not in a.refuse:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
if a.find:
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_C_FIND, on_find)]
ae.start_server(("127.0.0.1", a.port), block=False, evt_handlers=handlers)
print("READY", flush=True)
sys.stdin.read()
"#;

/// The pynetdicom destination; stopped on drop.
struct Scripted {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Scripted {
    fn start(args: &[&str]) -> Scripted {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("scp.py");
        std::fs::write(&script, SCRIPTED_SCP).unwrap();
        let data = dir.path().join("in");
        std::fs::create_dir_all(&data).unwrap();
        let port = free_port();
        let mut child = Command::new(python())
            .arg(&script)
            .args(["--port", &port.to_string(), "--dir"])
            .arg(&data)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("scp.log")).unwrap())
            .spawn()
            .expect("start the pynetdicom destination");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "READY",
            "pynetdicom destination did not start (is pynetdicom in the venv? run scripts/test): {}",
            std::fs::read_to_string(dir.path().join("scp.log")).unwrap_or_default()
        );
        Scripted { child, port, dir }
    }

    fn peer_toml(&self, aet: &str) -> String {
        format!(
            "[[peers]]\nae_title = \"{aet}\"\naddress = \"127.0.0.1:{}\"\n",
            self.port
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("in/stores.log")).unwrap_or_default()
    }

    /// C-STORE requests that reached the handler.
    fn stores(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.starts_with("STORE "))
            .count()
    }

    fn stored(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.starts_with("STORED "))
            .count()
    }

    fn finds(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.starts_with("FIND "))
            .count()
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("in"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .collect();
        v.sort();
        v
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// DCMTK storescp as `DEST` with extra options (it has no C-FIND).
fn storescp(extra: &[&str]) -> Destination {
    let mut dest = Destination::down("DEST");
    let log = std::fs::File::create(dest.dir.path().join("storescp.log")).unwrap();
    let out = dest.dir.path().join("in");
    std::fs::create_dir_all(&out).unwrap();
    dest.child = Some(
        Command::new(tool("storescp"))
            .args(["-v", "-aet", "DEST"])
            .args(extra)
            .arg("-od")
            .arg(&out)
            .arg(dest.port.to_string())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    assert!(wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", dest.port)).is_ok()
    }));
    dest
}

/// A node with a CT rule and an MR phantom rule delivering to `peer_toml`'s AE `aet`, with
/// short retries and the given delivery timeout.
fn node_to(peer_toml: &str, aet: &str, timeout_seconds: u64) -> Node {
    Node::start(&format!(
        "[series]\nquiet_seconds = 0.5\n[delivery]\nretry_initial_seconds = 0.2\nretry_max_seconds = 0.5\ntimeout_seconds = {timeout_seconds}\n{peer_toml}[[rules]]\nname = \"ct\"\nmodality = \"CT\"\npreset = \"ct-bone\"\nsend_to = [\"{aet}\"]\n[[rules]]\nname = \"phantom\"\nmodality = \"MR\"\npreset = \"1000\"\nsend_to = [\"{aet}\"]\n"
    ))
}

/// A small MR sphere phantom: its result is about 100 KB, so that DCMTK storescp's
/// `--sleep-during` (a sleep per received PDU) makes a store take a few seconds, not minutes.
fn small_phantom(dir: &Path) -> PathBuf {
    let grid = Grid {
        rows: 32,
        cols: 32,
        slices: 24,
        spacing: [2.0, 2.0],
        step: 2.0,
        row_dir: [1.0, 0.0, 0.0],
        col_dir: [0.0, 1.0, 0.0],
        origin: [-32.0, -32.0, -24.0],
    };
    write_phantom(dir, &grid, &[], |p| {
        (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt() - 12.0
    });
    dir.to_path_buf()
}

/// (state, attempts, last error) of every outbox row.
fn rows(node: &Node) -> Vec<(String, i64, String)> {
    node.index()
        .with(|c| {
            c.prepare("SELECT state, attempts, COALESCE(last_error, '') FROM outbox ORDER BY id")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .unwrap()
}

fn row_state(node: &Node) -> Option<String> {
    rows(node).first().map(|r| r.0.clone())
}

fn wait_sent(node: &Node, limit: Duration) {
    assert!(
        wait_for(limit, || row_state(node).as_deref() == Some("sent")),
        "row not sent: {:?}; log:\n{}",
        rows(node),
        node.log()
    );
}

#[test]
fn destination_slower_than_the_timeout_with_c_find_gets_one_copy() {
    // Stores take 3 s, the node waits 2 s for a status: the first attempt times out while the
    // destination is still storing.
    let dest = Scripted::start(&["--find", "--sleep", "3"]);
    let node = node_to(&dest.peer_toml("DEST"), "DEST", 2);
    storescu(&node, &[ct_series()]);
    wait_sent(&node, Duration::from_secs(90));
    // Nothing more arrives later either.
    std::thread::sleep(Duration::from_secs(3));
    eprintln!(
        "FIGURE slow destination (3 s/store, timeout 2 s) with C-FIND: {} deliveries per result, {} C-FIND",
        dest.stores(),
        dest.finds()
    );
    assert_eq!(dest.stores(), 1, "log:\n{}\n{}", dest.log(), node.log());
    assert!(dest.finds() >= 1);
    assert!(
        node.log().contains("already holds the result"),
        "{}",
        node.log()
    );
    assert_eq!(row_state(&node).as_deref(), Some("sent"));
}

#[test]
fn destination_slower_than_the_timeout_without_c_find_gets_a_bounded_number_of_copies() {
    // DCMTK storescp sleeping 3 s in each store: no C-FIND, so the node can only re-send with
    // a longer timeout (2 s, then 4 s: the second attempt is answered).
    let dest = storescp(&["+xa", "-pdu", "131072", "--sleep-during", "1"]);
    let node = node_to(&dest.peer_toml(), "DEST", 2);
    let src = tempfile::tempdir().unwrap();
    storescu(&node, &[small_phantom(src.path())]);
    wait_sent(&node, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(4));
    eprintln!(
        "FIGURE slow destination (storescp --sleep-during 1, a few s per store, timeout 2 s) without C-FIND: {} deliveries per result",
        dest.stores()
    );
    // Before the fix: a copy every retry, for as long as the deadline allowed.
    assert!(
        (1..=2).contains(&dest.stores()),
        "{} copies; log:\n{}",
        dest.stores(),
        node.log()
    );
    assert_eq!(row_state(&node).as_deref(), Some("sent"));
}

#[test]
fn kill_during_a_slow_store_then_restart_delivers_once_with_c_find() {
    // The store takes 4 s, within the 5 s timeout: only the kill leaves it unconfirmed.
    let dest = Scripted::start(&["--find", "--sleep", "4"]);
    let mut node = node_to(&dest.peer_toml("DEST"), "DEST", 5);
    storescu(&node, &[ct_series()]);
    assert!(
        wait_for(Duration::from_secs(90), || dest.stores() == 1),
        "no store; log:\n{}",
        node.log()
    );
    // The destination is storing; the node is killed before the status can arrive.
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    assert_eq!(dest.stored(), 0, "killed while the destination was storing");
    let node = node.restart();
    wait_sent(&node, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "FIGURE kill -9 during a 4 s store, restart, destination with C-FIND: {} deliveries per result",
        dest.stores()
    );
    assert_eq!(dest.stores(), 1, "log:\n{}\n{}", dest.log(), node.log());
    assert_eq!(dest.files().len(), 1);
}

#[test]
fn kill_during_a_slow_store_then_restart_without_c_find() {
    // The figure for a destination without C-FIND (DCMTK storescp): the node cannot know
    // whether the instance arrived, so it is sent again once; the row ends `sent`.
    let dest = storescp(&["+xa", "-pdu", "131072", "--sleep-during", "1"]);
    let mut node = node_to(&dest.peer_toml(), "DEST", 5);
    let src = tempfile::tempdir().unwrap();
    storescu(&node, &[small_phantom(src.path())]);
    assert!(wait_for(Duration::from_secs(90), || dest.stores() == 1));
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let node = node.restart();
    wait_sent(&node, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "FIGURE kill -9 during a store (storescp --sleep-during 1, a few s), restart, destination without C-FIND: {} deliveries per result",
        dest.stores()
    );
    assert_eq!(dest.stores(), 2, "log:\n{}", node.log());
}

/// Delivers a CT result to `dest` called `aet`, expects the row `failed` after one attempt,
/// and returns the node and the row's error.
fn failed_at_once(dest: &Scripted, aet: &str) -> (Node, String) {
    let node = node_to(&dest.peer_toml(aet), aet, 5);
    storescu(&node, &[ct_series()]);
    assert!(
        wait_for(Duration::from_secs(90), || row_state(&node).as_deref()
            == Some("failed")),
        "{:?}; log:\n{}",
        rows(&node),
        node.log()
    );
    let (_, attempts, error) = rows(&node).remove(0);
    assert_eq!(attempts, 1, "retried: {error}");
    (node, error)
}

#[test]
fn destination_refusing_the_sop_class_fails_the_row_at_once() {
    // Accepts CT Image Storage only.
    let dest = Scripted::start(&["--only-ct"]);
    let (node, error) = failed_at_once(&dest, "DEST");
    assert!(error.contains("Encapsulated STL Storage"), "{error}");
    assert!(error.contains(ENCAPSULATED_STL), "{error}");
    assert!(
        error.contains(&format!("DEST@127.0.0.1:{}", dest.port)),
        "{error}"
    );
    assert!(node.log().contains("refused for good"), "{}", node.log());
    // Not retried later either.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rows(&node)[0].1, 1);
    assert_eq!(dest.stores(), 0);
}

#[test]
fn permanent_association_rejection_fails_the_row_at_once() {
    // The destination knows itself as DEST; the node calls it OTHER: A-ASSOCIATE-RJ permanent,
    // called AE title not recognised.
    let dest = Scripted::start(&["--require-called-aet"]);
    let (_node, error) = failed_at_once(&dest, "OTHER");
    assert!(
        error.contains("rejected the association permanently"),
        "{error}"
    );
    assert!(error.to_lowercase().contains("called ae"), "{error}");
}

fn m3dnode(args: &[&str]) -> std::process::Output {
    run(Command::new(env!("CARGO_BIN_EXE_m3dnode")).args(args))
}

#[test]
fn send_and_echo_to_an_unreachable_peer_exit_3_with_one_message() {
    let port = free_port();
    let to = format!("DEST@127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let files = write_mr_series(dir.path(), 1, 8, 8);
    for out in [
        m3dnode(&["echo", &to, "--timeout", "5"]),
        m3dnode(&[
            "send",
            files[0].to_str().unwrap(),
            "--to",
            &to,
            "--timeout",
            "5",
        ]),
    ] {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        // 3: no association, as for find/move/get (1 is left for a peer that answered "no").
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&to), "{err}");
        // The cause once, not repeated by the error chain.
        assert_eq!(err.matches("could not connect").count(), 1, "{err}");
    }
    // Usage errors keep exit code 2.
    assert_eq!(m3dnode(&["echo", "not-an-address"]).status.code(), Some(2));
}

#[test]
fn send_to_a_peer_with_a_512_byte_max_pdu() {
    let dest = Scripted::start(&["--max-pdu", "512"]);
    let dir = tempfile::tempdir().unwrap();
    let files = write_mr_series(dir.path(), 1, 64, 64);
    let out = m3dnode(&[
        "send",
        files[0].to_str().unwrap(),
        "--to",
        &format!("DEST@127.0.0.1:{}", dest.port),
        "--timeout",
        "10",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dest.files().len(), 1);
    assert_eq!(data_set(&dest.files()[0]), data_set(&files[0]));
}

#[test]
fn deflated_file_is_inflated_for_a_peer_that_refuses_deflated() {
    // DCMTK storescp without +xa/+xd accepts the uncompressed syntaxes only.
    let dest = storescp(&[]);
    let dir = tempfile::tempdir().unwrap();
    let files = write_mr_series(&dir.path().join("src"), 1, 32, 32);
    let deflated = dir.path().join("deflated.dcm");
    let conv = run(Command::new(tool("dcmconv"))
        .arg("+td")
        .arg(&files[0])
        .arg(&deflated));
    assert!(conv.status.success(), "{}", text(&conv));
    assert_eq!(
        m3dnode::net::scu::OutgoingFile::open(&deflated)
            .unwrap()
            .transfer_syntax,
        "1.2.840.10008.1.2.1.99"
    );
    let out = m3dnode(&[
        "send",
        deflated.to_str().unwrap(),
        "--to",
        &format!("DEST@127.0.0.1:{}", dest.port),
        "--timeout",
        "10",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dest.stores(), 1);
    let received = dest.files();
    assert_eq!(received.len(), 1);
    assert_eq!(data_set(&received[0]), data_set(&deflated));
}

/// SOP Class UID of every file a destination holds.
fn classes_of(files: &[PathBuf]) -> Vec<String> {
    let mut v: Vec<String> = files
        .iter()
        .map(|f| attr(f, dicom_dictionary_std::tags::SOP_CLASS_UID))
        .collect();
    v.sort();
    v
}

#[test]
fn several_structures_reach_each_destination_in_its_formats() {
    // PACS takes the default (Encapsulated STL), PLAN OBJ + MTL, NAV everything but refuses
    // Encapsulated OBJ at association time: its OBJ rows fail at once, for good, while the
    // other objects go on to NAV and to the others.
    let pacs = Destination::up("PACS");
    let plan = Destination::up("PLAN");
    let nav = Scripted::start(&["--refuse", ENCAPSULATED_OBJ]);
    let node = Node::start(&format!(
        "[series]\nquiet_seconds = 0.5\n[delivery]\nretry_initial_seconds = 0.2\nretry_max_seconds = 0.5\n\
         {}{}formats = [\"obj\"]\n{}formats = [\"stl\", \"obj\", \"surface-seg\"]\n\
         [[rules]]\nname = \"ct head\"\nmodality = \"CT\"\nsend_to = [\"PACS\", \"PLAN\", \"NAV\"]\n\
         [[rules.structures]]\npreset = \"ct-bone\"\n\
         [[rules.structures]]\npreset = \"ct-skin\"\ncolor = \"#ffcc99\"\nopacity = 0.5\n",
        pacs.peer_toml(),
        plan.peer_toml(),
        nav.peer_toml("NAV"),
    ));
    storescu(&node, &[ct_series()]);
    // 2 STL to PACS, 2 OBJ + 2 MTL to PLAN, 2 STL + 2 MTL + 1 Surface Segmentation + 2
    // refused OBJ for NAV.
    let settled = || {
        let r = rows(&node);
        r.len() == 13 && r.iter().all(|(state, _, _)| state != "pending")
    };
    assert!(
        wait_for(Duration::from_secs(120), settled),
        "{:?}; log:\n{}",
        rows(&node),
        node.log()
    );
    let jobs = jobs(&node);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].0, "done", "{jobs:?}");
    assert!(
        jobs[0].1.contains("Bone surface") && jobs[0].1.contains("Skin surface"),
        "{jobs:?}"
    );

    assert_eq!(
        classes_of(&pacs.files()),
        vec![ENCAPSULATED_STL; 2],
        "PACS gets one Encapsulated STL per structure"
    );
    assert_eq!(
        classes_of(&plan.files()),
        vec![
            ENCAPSULATED_OBJ,
            ENCAPSULATED_OBJ,
            ENCAPSULATED_MTL,
            ENCAPSULATED_MTL
        ],
    );
    let nav_files: Vec<PathBuf> = std::fs::read_dir(nav.dir.path().join("in"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    let mut want = vec![
        ENCAPSULATED_STL,
        ENCAPSULATED_STL,
        ENCAPSULATED_MTL,
        ENCAPSULATED_MTL,
        SURFACE_SEGMENTATION,
    ];
    want.sort();
    assert_eq!(classes_of(&nav_files), want);

    // The refused format: failed after one attempt, with the reason, and not retried.
    let failed: Vec<_> = rows(&node)
        .into_iter()
        .filter(|(state, _, _)| state == "failed")
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    for (_, attempts, error) in &failed {
        assert_eq!(*attempts, 1, "{error}");
        assert!(error.contains(ENCAPSULATED_OBJ), "{error}");
        assert!(error.contains("Encapsulated OBJ"), "{error}");
    }
    assert!(node.log().contains("refused for good"), "{}", node.log());
    std::thread::sleep(Duration::from_secs(2));
    assert!(rows(&node).iter().all(|(_, attempts, _)| *attempts == 1));

    // The job recorded what it made, with each structure's label and colour.
    /// kind, structure, label, colour
    type ObjectRow = (String, Option<i64>, Option<String>, Option<String>);
    let objects: Vec<ObjectRow> = node
        .index()
        .with(|c| {
            c.prepare("SELECT kind, structure, label, colour FROM result_objects ORDER BY kind, structure")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect()
        })
        .unwrap();
    let kinds: Vec<&str> = objects.iter().map(|o| o.0.as_str()).collect();
    assert_eq!(
        kinds,
        ["mtl", "mtl", "obj", "obj", "stl", "stl", "surface-seg"],
        "{objects:?}"
    );
    let skin = objects
        .iter()
        .find(|o| o.0 == "stl" && o.1 == Some(1))
        .unwrap();
    assert_eq!(skin.2.as_deref(), Some("Skin"));
    assert_eq!(skin.3.as_deref(), Some("#ffcc99"));
}
