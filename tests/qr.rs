//! Query/Retrieve served by the node (issue 13), against real peers: DCMTK findscu, movescu
//! and getscu, pynetdicom (statuses, counts, character sets, C-CANCEL), Orthanc (REST query
//! and retrieve), and raw associations for hostile requests (dicom-ul client).
//!
//! The pynetdicom client is one script (`QR_CLIENT`) driven by a JSON argument; it prints one
//! JSON line per response, so that the tests assert exact statuses and sub-operation counts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const CT: &str = "ct_head_axial_small";
const MR: &str = "mr_t1_axial_2mm";
const CT_STUDY_DATE: &str = "20120914";
const STUDY_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";

fn series(name: &str) -> PathBuf {
    testdata().join("series").join(name)
}

fn first_file(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v.remove(0)
}

/// A node whose [[peers]] list the query AEs used below (and `extra`).
fn qr_node(extra: &str) -> Node {
    Node::start(&format!(
        "{extra}\n[[peers]]\nae_title = \"FINDSCU\"\naddress = \"127.0.0.1:1\"\n[[peers]]\nae_title = \"QR\"\naddress = \"127.0.0.1:1\"\n"
    ))
}

/// The node with the CT and MR test series stored.
fn loaded_node(extra: &str) -> Node {
    let node = qr_node(extra);
    let out = storescu(&node, &[series(CT), series(MR)]);
    assert!(out.status.success(), "{}", text(&out));
    node
}

struct Found {
    text: String,
    matches: Vec<dicom_object::DefaultDicomObject>,
}

impl Found {
    fn values(&self, tag: dicom_core::Tag) -> Vec<String> {
        let mut v: Vec<String> = self
            .matches
            .iter()
            .map(|m| {
                m.element(tag)
                    .ok()
                    .and_then(|e| e.to_str().ok())
                    .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
                    .unwrap_or_default()
            })
            .collect();
        v.sort();
        v
    }

    fn final_status(&self) -> String {
        self.text
            .lines()
            .find_map(|l| l.split_once("Received Final Find Response ("))
            .map(|(_, s)| s.trim_end_matches(')').to_string())
            .unwrap_or_else(|| panic!("no final response:\n{}", self.text))
    }
}

/// findscu with `-X`: each response identifier lands in its own file.
fn findscu(node: &Node, aet: &str, model: &str, keys: &[&str], extra: &[&str]) -> Found {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(tool("findscu"));
    cmd.args(["-v", "-aet", aet, "-aec", "M3DNODE", model, "-X", "-od"])
        .arg(dir.path())
        .args(extra);
    for k in keys {
        cmd.args(["-k", k]);
    }
    cmd.args(["127.0.0.1", &node.port()]);
    let out = run(&mut cmd);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    Found {
        text: text(&out),
        matches: files
            .iter()
            .map(|f| dicom_object::open_file(f).unwrap())
            .collect(),
    }
}

/// A pynetdicom Q/R SCU. Argument: JSON with op (find|move|get), model (S|P), aet,
/// identifier (keyword -> value or list), dest (C-MOVE), cancel_after (send C-CANCEL after
/// this many pending responses), roles (C-GET: propose the SCP role for the storage classes,
/// default true), classes (storage classes offered for C-GET), out (directory for C-GET's
/// received data sets, written as raw bytes). Prints one JSON line per response.
const QR_CLIENT: &str = r#"
import json, os, sys
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt, build_role
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet)

a = json.loads(sys.argv[1])
port = int(sys.argv[2])
models = {
    ("find", "P"): PatientRootQueryRetrieveInformationModelFind,
    ("move", "P"): PatientRootQueryRetrieveInformationModelMove,
    ("get", "P"): PatientRootQueryRetrieveInformationModelGet,
    ("find", "S"): StudyRootQueryRetrieveInformationModelFind,
    ("move", "S"): StudyRootQueryRetrieveInformationModelMove,
    ("get", "S"): StudyRootQueryRetrieveInformationModelGet,
}
cls = models[(a["op"], a.get("model", "S"))]
ae = AE(ae_title=a.get("aet", "QR"))
ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
ae.add_requested_context(cls, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
roles, handlers = [], []
if a["op"] == "get":
    for uid in a.get("classes", ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4",
                                 "1.2.840.10008.5.1.4.1.1.104.3"]):
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        if a.get("roles", True):
            roles.append(build_role(uid, scp_role=True))
    out = a.get("out")
    def on_store(event):
        if out:
            uid = event.request.AffectedSOPInstanceUID
            with open(os.path.join(out, uid + ".raw"), "wb") as f:
                f.write(event.request.DataSet.getvalue())
            if a.get("part10"):
                ds = event.dataset
                ds.file_meta = event.file_meta
                ds.save_as(os.path.join(out, uid + ".dcm"), enforce_file_format=True)
        return 0x0000
    handlers = [(evt.EVT_C_STORE, on_store)]
assoc = ae.associate("127.0.0.1", port, ae_title="M3DNODE", ext_neg=roles, evt_handlers=handlers)
if not assoc.is_established:
    print(json.dumps({"association": "failed"}))
    sys.exit(0)
ds = Dataset()
for k, v in a["identifier"].items():
    setattr(ds, k, v)
if a["op"] == "find":
    responses = assoc.send_c_find(ds, cls, msg_id=7)
elif a["op"] == "move":
    responses = assoc.send_c_move(ds, a["dest"], cls, msg_id=7)
else:
    responses = assoc.send_c_get(ds, cls, msg_id=7)
pending = 0
for status, identifier in responses:
    if status is None:
        print(json.dumps({"status": None}))
        break
    r = {"status": int(status.Status), "comment": str(status.get("ErrorComment", "")) or None}
    for k in ["NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
              "NumberOfFailedSuboperations", "NumberOfWarningSuboperations"]:
        if k in status:
            r[k] = int(status[k].value)
    if identifier is not None:
        r["identifier"] = {e.keyword: (str(e.value) if e.VM <= 1 else [str(x) for x in e.value])
                           for e in identifier if e.keyword}
    print(json.dumps(r), flush=True)
    if r["status"] in (0xFF00, 0xFF01):
        pending += 1
        if a.get("cancel_after") == pending:
            assoc.send_c_cancel(7, query_model=cls)
assoc.release()
"#;

fn qr_client(node: &Node, args: Value) -> Vec<Value> {
    let out = run(Command::new(python())
        .args(["-c", QR_CLIENT])
        .arg(args.to_string())
        .arg(node.port()));
    let t = text(&out);
    assert!(out.status.success(), "pynetdicom client failed:\n{t}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!lines.is_empty(), "no responses:\n{t}");
    lines
}

fn final_of(responses: &[Value]) -> &Value {
    responses.last().unwrap()
}

fn status_of(v: &Value) -> u64 {
    v["status"]
        .as_u64()
        .unwrap_or_else(|| panic!("no status: {v}"))
}

fn ct_study() -> String {
    attr(
        &first_file(&series(CT)),
        dicom_dictionary_std::tags::STUDY_INSTANCE_UID,
    )
}

fn mr_study() -> String {
    attr(
        &first_file(&series(MR)),
        dicom_dictionary_std::tags::STUDY_INSTANCE_UID,
    )
}

#[test]
fn findscu_at_every_level_with_wildcards_ranges_and_uid_lists() {
    use dicom_dictionary_std::tags;
    let node = loaded_node("");
    let (ct, mr) = (ct_study(), mr_study());
    // Patient Root, PATIENT level, by Patient ID; return keys come back.
    let f = findscu(
        &node,
        "FINDSCU",
        "-P",
        &[
            "QueryRetrieveLevel=PATIENT",
            "PatientID=PROMED0051",
            "PatientName",
            "PatientBirthDate",
        ],
        &[],
    );
    assert_eq!(f.final_status(), "Success", "{}", f.text);
    assert_eq!(
        f.values(tags::PATIENT_NAME),
        ["Cranium^InVesalius"],
        "{}",
        f.text
    );
    assert!(f.matches[0].element(tags::PATIENT_BIRTH_DATE).is_ok());
    // Which studies match: Patient Root below a patient, then Study Root with a wildcard on
    // the name, date ranges (closed and open), a UID list with an unknown UID.
    let mut both = vec![ct.as_str(), mr.as_str()];
    both.sort();
    let list = format!("StudyInstanceUID={ct}\\{mr}\\1.2.3.4");
    let cases: [(&str, &[&str], Vec<&str>); 5] = [
        ("-P", &["PatientID=COLIN27"], vec![mr.as_str()]),
        ("-S", &["PatientName=Cran*"], vec![ct.as_str()]),
        ("-S", &["StudyDate=20120901-20120930"], vec![ct.as_str()]),
        ("-S", &["StudyDate=-20001231"], vec![mr.as_str()]),
        ("-S", &[list.as_str()], both),
    ];
    for (model, keys, expected) in cases {
        let mut all = vec!["QueryRetrieveLevel=STUDY", "StudyInstanceUID"];
        all.extend_from_slice(keys);
        let f = findscu(&node, "FINDSCU", model, &all, &[]);
        assert_eq!(
            f.values(tags::STUDY_INSTANCE_UID),
            expected,
            "{keys:?}: {}",
            f.text
        );
    }
    let f = findscu(
        &node,
        "FINDSCU",
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedInstances",
            "StudyDate",
            "PatientName=Cran*",
        ],
        &[],
    );
    assert_eq!(f.values(tags::NUMBER_OF_STUDY_RELATED_INSTANCES), ["54"]);
    assert_eq!(f.values(tags::MODALITIES_IN_STUDY), ["CT"]);
    assert_eq!(f.values(tags::STUDY_DATE), [CT_STUDY_DATE]);
    // SERIES and IMAGE levels.
    let f = findscu(
        &node,
        "FINDSCU",
        "-S",
        &[
            "QueryRetrieveLevel=SERIES",
            &format!("StudyInstanceUID={ct}"),
            "SeriesInstanceUID",
            "Modality",
            "NumberOfSeriesRelatedInstances",
        ],
        &[],
    );
    assert_eq!(f.values(tags::MODALITY), ["CT"], "{}", f.text);
    assert_eq!(f.values(tags::NUMBER_OF_SERIES_RELATED_INSTANCES), ["54"]);
    let ct_series = f.values(tags::SERIES_INSTANCE_UID).remove(0);
    let f = findscu(
        &node,
        "FINDSCU",
        "-S",
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={ct}"),
            &format!("SeriesInstanceUID={ct_series}"),
            "SOPInstanceUID",
            "InstanceNumber",
        ],
        &[],
    );
    assert_eq!(f.matches.len(), 54, "{}", f.text);
    let f = findscu(
        &node,
        "FINDSCU",
        "-S",
        &[
            "QueryRetrieveLevel=SERIES",
            &format!("StudyInstanceUID={ct}"),
            "Modality=C?",
            "SeriesInstanceUID",
        ],
        &[],
    );
    assert_eq!(
        f.values(tags::SERIES_INSTANCE_UID),
        [ct_series],
        "{}",
        f.text
    );
}

#[test]
fn find_stops_at_max_results_with_a_refusal_that_says_so() {
    let node = loaded_node("[query]\nmax_results = 5\n");
    let ct_series = attr(
        &first_file(&series(CT)),
        dicom_dictionary_std::tags::SERIES_INSTANCE_UID,
    );
    let r = qr_client(
        &node,
        json!({"op": "find", "identifier": {"QueryRetrieveLevel": "IMAGE",
            "StudyInstanceUID": ct_study(), "SeriesInstanceUID": ct_series, "SOPInstanceUID": ""}}),
    );
    assert_eq!(r.len(), 6, "{r:?}");
    assert_eq!(status_of(final_of(&r)), 0xA700);
    assert!(
        final_of(&r)["comment"]
            .as_str()
            .unwrap()
            .contains("more than 5 matches; narrow the query")
    );
}

/// findscu reads responses one at a time and cancels after the first. The index holds 40,000
/// studies (synthetic rows, `query::synthetic`), whose ~14 MB of responses are more than the
/// loopback socket buffers hold, so the node is still writing matches when the C-CANCEL-RQ
/// arrives and must stop there.
#[test]
fn c_cancel_stops_a_find_mid_stream() {
    const STUDIES: u64 = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("var");
    std::fs::create_dir_all(&storage).unwrap();
    {
        let db = m3dnode::db::Db::open(&storage.join("index.sqlite")).unwrap();
        db.with(|c| m3dnode::query::synthetic::fill(c, STUDIES, 1, 1))
            .unwrap();
    }
    let node = Node::start_in(
        dir,
        "[query]\nmax_results = 0\n[[peers]]\nae_title = \"FINDSCU\"\naddress = \"127.0.0.1:1\"\n[[peers]]\nae_title = \"QR\"\naddress = \"127.0.0.1:1\"\n",
    );
    let keys = [
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
    ];
    let f = findscu(&node, "FINDSCU", "-S", &keys, &["--cancel", "1"]);
    assert!(
        f.text.contains("Received Final Find Response (Cancel"),
        "{}",
        f.text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    let received = f.matches.len();
    eprintln!("{received} of {STUDIES} matches arrived before the final 0xFE00");
    assert!(
        (received as u64) < STUDIES,
        "{received} matches arrived after the cancel"
    );
    assert!(node.log().contains("C-FIND cancelled"), "{}", node.log());
    // pynetdicom's C-CANCEL too.
    let r = qr_client(
        &node,
        json!({"op": "find", "cancel_after": 1, "identifier": {"QueryRetrieveLevel": "STUDY",
            "StudyInstanceUID": "", "PatientName": "", "StudyDate": "", "StudyDescription": ""}}),
    );
    assert_eq!(status_of(final_of(&r)), 0xFE00, "{:?}", final_of(&r));
    assert!((r.len() as u64) < STUDIES);
    assert!(node.echo_ok());
}

/// Each received file's data set is byte for byte the one the node stored.
fn assert_same_as_stored(node: &Node, got: &[PathBuf]) {
    use dicom_dictionary_std::tags;
    for f in got {
        let sop = attr(f, tags::SOP_INSTANCE_UID);
        let stored = node
            .storage()
            .join(attr(f, tags::STUDY_INSTANCE_UID))
            .join(attr(f, tags::SERIES_INSTANCE_UID))
            .join(format!("{sop}.dcm"));
        assert!(data_set(f) == data_set(&stored), "{sop} differs");
    }
}

/// A pynetdicom Storage SCP that logs each C-STORE-RQ's Move Originator AE Title and
/// Message ID (`ORIG <ae> <id>`) into `<dir>/orig.log`.
const ORIGINATOR_SCP: &str = r#"
import os, sys
from pynetdicom import AE, evt, AllStoragePresentationContexts
port, out = int(sys.argv[1]), sys.argv[2]
log = open(os.path.join(out, "orig.log"), "a", buffering=1)
def on_store(event):
    rq = event.request
    log.write("ORIG %s %s\n" % (str(rq.MoveOriginatorApplicationEntityTitle).strip(),
                                rq.MoveOriginatorMessageID))
    return 0x0000
ae = AE(ae_title="PYDEST")
ae.supported_contexts = AllStoragePresentationContexts
open(os.path.join(out, "ready"), "w").close()
ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)])
"#;

#[test]
fn move_sub_operations_name_their_originator() {
    let port = free_port();
    let out = tempfile::tempdir().unwrap();
    let mut scp = Command::new(python())
        .args(["-c", ORIGINATOR_SCP])
        .arg(port.to_string())
        .arg(out.path())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(20), || out
        .path()
        .join("ready")
        .exists()
        && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
    let node = loaded_node(&format!(
        "[[peers]]\nae_title = \"PYDEST\"\naddress = \"127.0.0.1:{port}\"\n"
    ));
    let r = qr_client(
        &node,
        json!({"op": "move", "dest": "PYDEST", "identifier":
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": mr_study()}}),
    );
    let _ = scp.kill();
    let _ = scp.wait();
    assert_eq!(status_of(final_of(&r)), 0, "{r:?}");
    let log = std::fs::read_to_string(out.path().join("orig.log")).unwrap();
    let n = std::fs::read_dir(series(MR)).unwrap().count();
    assert_eq!(
        log.lines().filter(|l| *l == "ORIG QR 7").count(),
        n,
        "{log}"
    );
    // One pending response per instance but the last, counting down.
    let pending: Vec<u64> = r
        .iter()
        .filter(|v| status_of(v) == 0xFF00)
        .map(|v| v["NumberOfRemainingSuboperations"].as_u64().unwrap())
        .collect();
    assert_eq!(pending.len(), n - 1, "{r:?}");
    assert!(pending.windows(2).all(|w| w[0] > w[1]), "{pending:?}");
}

#[test]
fn movescu_into_a_listed_storescp_delivers_identical_data_sets() {
    let dest = Destination::up("DEST");
    let node = loaded_node(&dest.peer_toml());
    let ct = ct_study();
    let out = retrieve_study("movescu", &node, "FINDSCU", &["-aem", "DEST"], &ct);
    let t = text(&out);
    assert!(t.contains("Received Final Move Response (Success)"), "{t}");
    let got = dest.files();
    assert_eq!(got.len(), 54, "{t}");
    assert_same_as_stored(&node, &got);
    let log = std::fs::read_to_string(dest.dir.path().join("storescp.log")).unwrap();
    assert!(!log.contains("E: "), "{log}");
    assert!(node.log().contains("C-MOVE done"), "{}", node.log());
}

#[test]
fn move_to_unknown_down_and_own_destinations_is_refused_with_counts() {
    let down = Destination::down("DOWN");
    let node = loaded_node(&down.peer_toml());
    let ct = ct_study();
    let ident = json!({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ct});
    let r = qr_client(
        &node,
        json!({"op": "move", "dest": "NOBODY", "identifier": ident}),
    );
    assert_eq!(status_of(final_of(&r)), 0xA801, "{r:?}");
    assert!(
        final_of(&r)["comment"]
            .as_str()
            .unwrap()
            .contains("[[peers]]")
    );
    let r = qr_client(
        &node,
        json!({"op": "move", "dest": "M3DNODE", "identifier": ident}),
    );
    assert_eq!(status_of(final_of(&r)), 0xA801, "{r:?}");
    assert!(final_of(&r)["comment"].as_str().unwrap().contains("itself"));
    let r = qr_client(
        &node,
        json!({"op": "move", "dest": "DOWN", "identifier": ident}),
    );
    let last = final_of(&r);
    assert_eq!(status_of(last), 0xA702, "{r:?}");
    assert_eq!(last["NumberOfFailedSuboperations"], 54, "{last}");
    assert_eq!(last["NumberOfCompletedSuboperations"], 0, "{last}");
    // No identifier with 0xA702: every instance failed, and DCMTK's getscu does not read one.
    assert!(
        last.get("identifier")
            .is_none_or(|i| i.as_object().is_some_and(|o| o.is_empty())),
        "{last}"
    );
    let log = node.log();
    assert!(log.contains("no sub-operation could be performed"), "{log}");
    assert!(node.echo_ok());
}

#[test]
fn getscu_receives_identical_data_sets() {
    let node = loaded_node("");
    let ct = ct_study();
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(tool("getscu"))
        .args(["-v", "-aet", "FINDSCU", "-aec", "M3DNODE", "-S", "-od"])
        .arg(dir.path())
        .args([
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &format!("StudyInstanceUID={ct}"),
            "127.0.0.1",
            &node.port(),
        ]));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let got: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(got.len(), 54, "{t}\n{}", node.log());
    assert_same_as_stored(&node, &got);
    assert!(node.log().contains("C-GET done"), "{}", node.log());
}

#[test]
fn get_without_storage_roles_fails_each_sub_operation_without_a_hang() {
    let node = loaded_node("");
    let started = Instant::now();
    let r = qr_client(
        &node,
        json!({"op": "get", "roles": false, "identifier":
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ct_study()}}),
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let last = final_of(&r);
    assert_eq!(status_of(last), 0xA702, "{r:?}");
    assert_eq!(last["NumberOfFailedSuboperations"], 54, "{last}");
    assert!(node.log().contains("offered no context with the SCP role"));
    // A requester that offers the role but not the class (MR only, for a CT study).
    let r = qr_client(
        &node,
        json!({"op": "get", "classes": ["1.2.840.10008.5.1.4.1.1.4"], "identifier":
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ct_study()}}),
    );
    assert_eq!(status_of(final_of(&r)), 0xA702, "{r:?}");
    assert!(node.echo_ok());
}

#[test]
fn c_cancel_stops_move_and_get_after_the_current_sub_operation() {
    // Each store takes a second at the destination: the cancel always arrives mid-move
    // (with a fast destination the move could end before it).
    let dest = Destination::up_slow("DEST", 1);
    let node = loaded_node(&dest.peer_toml());
    let ident = json!({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ct_study()});
    let r = qr_client(
        &node,
        json!({"op": "move", "dest": "DEST", "cancel_after": 1, "identifier": ident}),
    );
    let last = final_of(&r);
    assert_eq!(status_of(last), 0xFE00, "{r:?}");
    let done = last["NumberOfCompletedSuboperations"].as_u64().unwrap();
    assert!(
        done < 54 && last["NumberOfRemainingSuboperations"].as_u64().unwrap() > 0,
        "{last}"
    );
    let out = tempfile::tempdir().unwrap();
    let r = qr_client(
        &node,
        json!({"op": "get", "cancel_after": 1, "identifier": ident,
            "out": out.path().to_str().unwrap()}),
    );
    let last = final_of(&r);
    assert_eq!(status_of(last), 0xFE00, "{r:?}");
    assert!(
        last["NumberOfRemainingSuboperations"].as_u64().unwrap() > 0,
        "{last}"
    );
    assert!(std::fs::read_dir(out.path()).unwrap().count() < 54);
    assert!(node.echo_ok());
}

/// Stores one instance with pydicom/pynetdicom in a character set, then finds it by Patient
/// ID in the same character set: the name comes back as it was written.
const CHARSET_STORE: &str = r#"
import sys
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
port, charset, name, pid = int(sys.argv[1]), sys.argv[2].split("|"), sys.argv[3], sys.argv[4]
ds = Dataset()
ds.file_meta = FileMetaDataset()
ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
ds.SOPInstanceUID = generate_uid()
ds.StudyInstanceUID = generate_uid()
ds.SeriesInstanceUID = generate_uid()
ds.PatientName = name
ds.PatientID = pid
ds.Modality = "OT"
ae = AE(ae_title="QR")
ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
assoc = ae.associate("127.0.0.1", port, ae_title="M3DNODE")
status = assoc.send_c_store(ds)
assoc.release()
print(hex(status.Status))
"#;

#[test]
fn names_in_iso_ir_192_and_iso_2022_come_back_as_written() {
    let node = qr_node("");
    for (charset, name, pid) in [
        ("ISO_IR 192", "Müller^Jürgen=ミュラー^ユルゲン", "CS192"),
        (
            "|ISO 2022 IR 87",
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            "CS2022",
        ),
    ] {
        let out = run(Command::new(python()).args(["-c", CHARSET_STORE]).args([
            &node.port(),
            charset,
            name,
            pid,
        ]));
        assert_eq!(text(&out).trim(), "0x0", "{}", text(&out));
        let charset_json: Value = if charset.contains('|') {
            json!(charset.split('|').collect::<Vec<_>>())
        } else {
            json!(charset)
        };
        let r = qr_client(
            &node,
            json!({"op": "find", "model": "P", "identifier": {"QueryRetrieveLevel": "PATIENT",
                "SpecificCharacterSet": charset_json, "PatientID": pid, "PatientName": ""}}),
        );
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0]["identifier"]["PatientName"], name, "{r:?}");
        assert_eq!(status_of(&r[1]), 0);
    }
}

#[test]
fn orthanc_queries_the_node_and_retrieves_into_itself() {
    use common::orthanc::Orthanc;
    let node_port = free_port();
    let orthanc = Orthanc::start("M3DNODE", node_port);
    let node = Node::start(&format!(
        "listen = \"127.0.0.1:{node_port}\"\n[[peers]]\nae_title = \"{}\"\naddress = \"127.0.0.1:{}\"\n",
        Orthanc::AET,
        orthanc.dicom_port
    ));
    assert!(storescu(&node, &[series(CT)]).status.success());
    let q = orthanc.post_json(
        &format!("/modalities/{}/query", Orthanc::NODE),
        r#"{"Level":"Study","Query":{"PatientID":"PROMED0051","StudyInstanceUID":""}}"#,
        60,
    );
    let id = q["ID"].as_str().unwrap().to_string();
    let answers = orthanc.get_json(&format!("/queries/{id}/answers?expand"));
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 1, "{answers:?}\n{}", node.log());
    assert!(answers[0].to_string().contains(&ct_study()), "{answers:?}");
    orthanc.post_json(
        &format!("/queries/{id}/answers/0/retrieve"),
        &format!(r#"{{"TargetAet":"{}","Synchronous":true}}"#, Orthanc::AET),
        120,
    );
    assert_eq!(
        orthanc.lookup_study(&ct_study()).len(),
        1,
        "Orthanc holds the study; node log:\n{}",
        node.log()
    );
    let stats = orthanc.get_json("/statistics");
    assert_eq!(stats["CountInstances"], 54, "{stats}");
}

/// A raw association (dicom-ul client) proposing Study Root FIND and Verification.
fn raw_find_association(
    node: &Node,
    aet: &str,
) -> dicom_ul::ClientAssociation<std::net::TcpStream> {
    dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title(aet)
        .called_ae_title("M3DNODE")
        .with_presentation_context(STUDY_FIND, vec!["1.2.840.10008.1.2"])
        .with_presentation_context("1.2.840.10008.1.1", vec!["1.2.840.10008.1.2"])
        .establish(node.addr)
        .unwrap()
}

fn send_message(
    assoc: &mut dicom_ul::ClientAssociation<std::net::TcpStream>,
    pc: u8,
    cmd: &[u8],
    data: Option<&[u8]>,
) {
    use dicom_ul::pdu::PDataValueType;
    use m3dnode::net::dimse;
    let max = assoc.acceptor_max_pdu_length();
    for pdu in dimse::pdata_pdus(pc, PDataValueType::Command, cmd, max, true) {
        assoc.send(&pdu).unwrap();
    }
    if let Some(d) = data {
        for pdu in dimse::pdata_pdus(pc, PDataValueType::Data, d, max, true) {
            assoc.send(&pdu).unwrap();
        }
    }
}

/// Reads one whole response (its command set and any identifier); returns the command.
fn read_response(
    assoc: &mut dicom_ul::ClientAssociation<std::net::TcpStream>,
) -> m3dnode::net::dimse::Command {
    use dicom_ul::pdu::PDataValueType;
    let mut cmd = Vec::new();
    let mut command: Option<m3dnode::net::dimse::Command> = None;
    loop {
        let dicom_ul::Pdu::PData { data } = assoc.receive().unwrap() else {
            panic!("not P-DATA")
        };
        for pdv in data {
            if pdv.value_type == PDataValueType::Command {
                cmd.extend_from_slice(&pdv.data);
                if pdv.is_last {
                    let c = m3dnode::net::dimse::Command::parse(&cmd).unwrap();
                    if !c.has_data_set().unwrap() {
                        return c;
                    }
                    command = Some(c);
                }
            } else if pdv.is_last {
                return command.take().unwrap();
            }
        }
    }
}

fn identifier(pairs: &[(dicom_core::Tag, dicom_core::VR, &str)]) -> Vec<u8> {
    use dicom_core::{DataElement, PrimitiveValue};
    let mut obj = dicom_object::InMemDicomObject::new_empty();
    for (tag, vr, v) in pairs {
        obj.put(DataElement::new(*tag, *vr, PrimitiveValue::from(*v)));
    }
    let mut out = Vec::new();
    obj.write_dataset_with_ts(
        &mut out,
        &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
    )
    .unwrap();
    out
}

#[test]
fn hostile_q_r_requests_get_statuses_and_the_node_keeps_serving() {
    use dicom_core::VR;
    use dicom_dictionary_std::tags;
    use m3dnode::net::dimse;
    let node = loaded_node("");
    let mut assoc = raw_find_association(&node, "QR");
    let pc = assoc.presentation_contexts()[0].id;
    let echo_pc = assoc.presentation_contexts()[1].id;
    let mut id = 0u16;
    let mut find = |assoc: &mut dicom_ul::ClientAssociation<std::net::TcpStream>,
                    data: &[u8]|
     -> (u16, Option<String>) {
        id += 1;
        send_message(
            assoc,
            pc,
            &dimse::c_find_rq(id, STUDY_FIND).encode(),
            Some(data),
        );
        loop {
            let rsp = read_response(assoc);
            let s = rsp.status().unwrap();
            if s != 0xFF00 && s != 0xFF01 {
                return (s, rsp.error_comment());
            }
        }
    };
    // Not a data set at all: an element longer than the identifier.
    let (s, comment) = find(&mut assoc, b"\x08\x00\x52\x00\xff\xff\xff\x7fjunk");
    assert!(s == 0xC000 || s == 0xA900, "{s:#06x}");
    assert!(comment.is_some());
    // An unknown level.
    let (s, _) = find(
        &mut assoc,
        &identifier(&[(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "FOO")]),
    );
    assert!(s == 0xC000 || s == 0xA900, "{s:#06x}");
    // A sequence among the keys.
    let mut seq = identifier(&[(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY")]);
    // (0008,1110) of undefined length (a sequence, in Implicit VR) with one empty item.
    seq.extend_from_slice(b"\x08\x00\x10\x11\xff\xff\xff\xff");
    seq.extend_from_slice(b"\xfe\xff\x00\xe0\x00\x00\x00\x00");
    seq.extend_from_slice(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00");
    let (s, _) = find(&mut assoc, &seq);
    assert!(s != 0xFF00, "{s:#06x}");
    // 10,000 UIDs in the list: answered (no match), not an abort.
    let uids: Vec<String> = (0..10_000)
        .map(|i| format!("1.2.826.0.1.3680043.10.{i}"))
        .collect();
    let list = uids.join("\\");
    let (s, _) = find(
        &mut assoc,
        &identifier(&[
            (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
            (tags::STUDY_INSTANCE_UID, VR::UI, &list),
        ]),
    );
    assert_eq!(s, 0x0000, "{s:#06x}");
    // An identifier beyond the 4 MiB cap: 0xA700 after the rest was read.
    let huge = vec![0u8; 5 * 1024 * 1024];
    let (s, comment) = find(&mut assoc, &huge);
    assert_eq!(s, 0xA700, "{s:#06x}");
    assert!(comment.unwrap().contains("larger than"));
    // C-CANCEL for a message nobody runs: no answer; the next C-ECHO is answered.
    let mut cancel = Vec::new();
    for (g, e, v) in [
        (0u16, 0x0100u16, 0x0FFFu16),
        (0, 0x0120, 999),
        (0, 0x0800, 0x0101),
    ] {
        cancel.extend_from_slice(&g.to_le_bytes());
        cancel.extend_from_slice(&e.to_le_bytes());
        cancel.extend_from_slice(&2u32.to_le_bytes());
        cancel.extend_from_slice(&v.to_le_bytes());
    }
    send_message(&mut assoc, pc, &cancel, None);
    send_message(&mut assoc, echo_pc, &dimse::c_echo_rq(50).encode(), None);
    let rsp = read_response(&mut assoc);
    assert_eq!(rsp.command_field().unwrap(), 0x8030);
    assert_eq!(rsp.message_id_responded_to().unwrap(), 50);
    // Meanwhile another association is served.
    assert!(node.echo_ok());
    assoc.release().unwrap();
    // A peer that is not in [[peers]]: 0x0124, logged with who and from where.
    let mut stranger = raw_find_association(&node, "STRANGER");
    send_message(
        &mut stranger,
        pc,
        &dimse::c_find_rq(1, STUDY_FIND).encode(),
        Some(&identifier(&[(
            tags::QUERY_RETRIEVE_LEVEL,
            VR::CS,
            "STUDY",
        )])),
    );
    let rsp = read_response(&mut stranger);
    assert_eq!(rsp.status().unwrap(), 0x0124);
    stranger.release().unwrap();
    let log = node.log();
    assert!(
        log.lines().any(|l| l.contains("not authorized")
            && l.contains("STRANGER")
            && l.contains("127.0.0.1")
            && l.contains("C-FIND")),
        "{log}"
    );
    assert!(!log.contains("Cranium"), "patient data in the log");
}

#[test]
fn may_restricts_a_listed_peer() {
    let node = Node::start(
        "[[peers]]\nae_title = \"QR\"\naddress = \"127.0.0.1:1\"\nmay = [\"echo\", \"find\"]\n",
    );
    assert!(storescu(&node, &[series(CT)]).status.success());
    let r = qr_client(
        &node,
        json!({"op": "find", "identifier": {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}}),
    );
    assert_eq!(status_of(final_of(&r)), 0, "{r:?}");
    let r = qr_client(
        &node,
        json!({"op": "get", "identifier": {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ct_study()}}),
    );
    assert_eq!(status_of(final_of(&r)), 0x0124, "{r:?}");
    assert!(node.log().contains("its [[peers]] may leaves it out"));
}

/// What a navigation system does: send an MR series, wait for the mesh, find the M3D series
/// of the study, C-GET it, validate it, and extract the STL.
#[test]
fn navigation_finds_and_pulls_the_mesh() {
    use dicom_dictionary_std::tags;
    let nav = Destination::down("NAV");
    let node = qr_node(&format!(
        "[series]\nquiet_seconds = 0.5\n{}[[rules]]\nname = \"mr head\"\nmodality = \"MR\"\npreset = \"mr-head\"\nsend_to = [\"NAV\"]\n",
        nav.peer_toml()
    ));
    assert!(storescu(&node, &[series(MR)]).status.success());
    assert!(
        wait_for(Duration::from_secs(120), || jobs(&node)
            .iter()
            .any(|(s, _)| s == "done")),
        "no finished job: {:?}\n{}",
        jobs(&node),
        node.log()
    );
    let study = mr_study();
    let f = findscu(
        &node,
        "FINDSCU",
        "-S",
        &[
            "QueryRetrieveLevel=SERIES",
            &format!("StudyInstanceUID={study}"),
            "Modality=M3D",
            "SeriesInstanceUID",
            "FrameOfReferenceUID",
        ],
        &[],
    );
    assert_eq!(f.matches.len(), 1, "{}", f.text);
    let m3d_series = f.values(tags::SERIES_INSTANCE_UID).remove(0);
    // DCMTK's getscu offers no Encapsulated STL context; pynetdicom offers it with the role.
    let dir = tempfile::tempdir().unwrap();
    let r = qr_client(
        &node,
        json!({"op": "get", "part10": true, "out": dir.path().to_str().unwrap(), "identifier": {
            "QueryRetrieveLevel": "SERIES", "StudyInstanceUID": study,
            "SeriesInstanceUID": m3d_series}}),
    );
    assert_eq!(status_of(final_of(&r)), 0, "{r:?}\n{}", node.log());
    assert_eq!(final_of(&r)["NumberOfCompletedSuboperations"], 1);
    let dcm: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    assert_eq!(dcm.len(), 1);
    let got = dcm[0].clone();
    assert_dciodvfy_clean(&got);
    assert_eq!(attr(&got, tags::MODALITY), "M3D");
    assert_eq!(
        attr(&got, tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT),
        "model/stl"
    );
    // The STL equals the one the job stored.
    let sop = attr(&got, tags::SOP_INSTANCE_UID);
    let stored = node
        .storage()
        .join(&study)
        .join(&m3d_series)
        .join(format!("{sop}.dcm"));
    let stl = |p: &Path| {
        dicom_object::open_file(p)
            .unwrap()
            .element(tags::ENCAPSULATED_DOCUMENT)
            .unwrap()
            .to_bytes()
            .unwrap()
            .to_vec()
    };
    let bytes = stl(&got);
    assert_eq!(bytes, stl(&stored));
    // A binary STL: 80-byte header, triangle count, 50 bytes per triangle (plus padding).
    let n = u32::from_le_bytes([bytes[80], bytes[81], bytes[82], bytes[83]]) as usize;
    assert!(
        n > 100 && bytes.len() >= 84 + 50 * n,
        "{n} triangles, {} bytes",
        bytes.len()
    );
}

/// A requester may send its next C-FIND the moment it has read the final response: it must
/// never be refused as a second, concurrent operation (the benchmark's tight loop found this).
#[test]
fn back_to_back_finds_on_one_association_are_never_refused() {
    use dicom_core::VR;
    use dicom_dictionary_std::tags;
    use m3dnode::net::dimse;
    let node = loaded_node("");
    let mut assoc = raw_find_association(&node, "QR");
    assoc.inner_stream().set_nodelay(true).unwrap();
    let pc = assoc.presentation_contexts()[0].id;
    let ct = ct_study();
    let query = identifier(&[
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
        (tags::STUDY_INSTANCE_UID, VR::UI, &ct),
    ]);
    for id in 1..=300u16 {
        send_message(
            &mut assoc,
            pc,
            &dimse::c_find_rq(id, STUDY_FIND).encode(),
            Some(&query),
        );
        let mut matches = 0;
        let status = loop {
            let rsp = read_response(&mut assoc);
            match rsp.status().unwrap() {
                0xFF00 | 0xFF01 => matches += 1,
                s => break s,
            }
        };
        assert_eq!((status, matches), (0x0000, 1), "query {id}");
    }
    assoc.release().unwrap();
}
