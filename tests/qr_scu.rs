//! `m3dnode find`, `move` and `get` (and the `net::qr_scu` library API) against real peers:
//! DCMTK `dcmqrscp` as the archive (filled with `storescu`), DCMTK `storescp` as the C-MOVE
//! destination, and a scripted pynetdicom C-FIND SCP for what an archive will not do on
//! request (answer slowly, never answer, honour a C-CANCEL mid-stream).
//!
//! dcmqrscp runs in its default fork mode: in single-process mode (`-s`) DCMTK 3.6.7 crashes
//! after the first released association.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

const CT: &str = "ct_head_axial_small";
const MR: &str = "mr_t1_axial_2mm";

/// What the tests know about a stored series, read from the original files.
struct Original {
    study: String,
    series: String,
    patient_id: String,
    /// SOP Instance UID -> file.
    instances: std::collections::BTreeMap<String, PathBuf>,
}

fn original(name: &str) -> Original {
    use dicom_dictionary_std::tags;
    let dir = testdata().join("series").join(name);
    let mut out = Original {
        study: String::new(),
        series: String::new(),
        patient_id: String::new(),
        instances: Default::default(),
    };
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let Ok(obj) = dicom_object::OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(&path)
        else {
            continue;
        };
        let get = |tag| {
            obj.element(tag)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        out.study = get(tags::STUDY_INSTANCE_UID);
        out.series = get(tags::SERIES_INSTANCE_UID);
        out.patient_id = get(tags::PATIENT_ID);
        out.instances.insert(get(tags::SOP_INSTANCE_UID), path);
    }
    assert!(!out.instances.is_empty(), "{}", dir.display());
    out
}

/// A peer process on a free port with its files (and its log, `log_name`) in a temp dir;
/// killed on drop.
struct Peer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    log_name: &'static str,
}

impl Peer {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(self.log_name)).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// DCMTK dcmqrscp with AE title QRSCP, its database in a temp dir, and `DEST` (when given)
/// as the only known move destination.
type QrScp = Peer;

impl QrScp {
    fn start(dest_port: Option<u16>) -> QrScp {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        let port = free_port();
        let hosts = dest_port
            .map(|p| format!("dest = (DEST, 127.0.0.1, {p})\n"))
            .unwrap_or_default();
        let cfg = format!(
            "NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\
             HostTable BEGIN\n{hosts}HostTable END\nVendorTable BEGIN\nVendorTable END\n\
             AETable BEGIN\nQRSCP {} RW (1000, 1024mb) ANY\nAETable END\n",
            db.display()
        );
        let cfg_path = dir.path().join("dcmqrscp.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("dcmqrscp.log")).unwrap();
        let child = Command::new(tool("dcmqrscp"))
            .arg("-c")
            .arg(&cfg_path)
            .arg("-v")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "dcmqrscp did not listen"
        );
        QrScp {
            child,
            port,
            dir,
            log_name: "dcmqrscp.log",
        }
    }

    fn peer(&self) -> String {
        format!("QRSCP@127.0.0.1:{}", self.port)
    }

    fn load(&self, series: &[&str]) {
        let out = run(Command::new(tool("storescu"))
            .args([
                "-aec",
                "QRSCP",
                "+sd",
                "+r",
                "127.0.0.1",
                &self.port.to_string(),
            ])
            .args(series.iter().map(|s| testdata().join("series").join(s))));
        assert!(out.status.success(), "{}", text(&out));
    }
}

fn m3dnode(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_m3dnode")).args(args))
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `keyword=value` fields of a tab-separated match line.
fn field(line: &str, keyword: &str) -> Option<String> {
    line.split('\t')
        .find_map(|kv| kv.strip_prefix(&format!("{keyword}=")).map(str::to_string))
}

/// Exit 0 and a last line saying that all `n` sub-operations completed.
fn assert_all_completed(out: &Output, n: usize, scp: &QrScp) {
    assert_eq!(code(out), 0, "{}\n{}", text(out), scp.log());
    let last = stdout_lines(out).pop().unwrap_or_default();
    assert!(
        last.starts_with(&format!("{n} completed, 0 failed")),
        "{}",
        text(out)
    );
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn find_at_each_level_returns_what_was_stored() {
    let scp = QrScp::start(None);
    scp.load(&[CT, MR]);
    let (ct, mr) = (original(CT), original(MR));
    let peer = scp.peer();

    // PATIENT (Patient Root), wildcard on the name, Patient ID as return key.
    let out = m3dnode(&[
        "find",
        &peer,
        "-P",
        "-L",
        "PATIENT",
        "-k",
        "PatientName=Colin*",
        "-k",
        "PatientID",
    ]);
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), scp.log());
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(field(&lines[0], "PatientID"), Some(mr.patient_id.clone()));
    assert_eq!(
        field(&lines[0], "QueryRetrieveLevel").as_deref(),
        Some("PATIENT")
    );

    // STUDY (Study Root), universal matching: both studies.
    let out = m3dnode(&[
        "find",
        &peer,
        "-S",
        "-L",
        "STUDY",
        "-k",
        "PatientName",
        "-k",
        "StudyInstanceUID",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let studies: BTreeSet<String> = stdout_lines(&out)
        .iter()
        .filter_map(|l| field(l, "StudyInstanceUID"))
        .collect();
    assert_eq!(
        studies,
        BTreeSet::from([ct.study.clone(), mr.study.clone()])
    );

    // `?` wildcard: one study.
    let out = m3dnode(&[
        "find",
        &peer,
        "-L",
        "STUDY",
        "-k",
        "PatientName=Cr?nium*",
        "-k",
        "StudyInstanceUID",
    ]);
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1, "{}", text(&out));
    assert_eq!(field(&lines[0], "StudyInstanceUID"), Some(ct.study.clone()));

    // SERIES in one study, with a matching key on Modality.
    let out = m3dnode(&[
        "find",
        &peer,
        "-L",
        "SERIES",
        "-k",
        &format!("StudyInstanceUID={}", mr.study),
        "-k",
        "Modality=MR",
        "-k",
        "0020,000E",
    ]);
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1, "{}", text(&out));
    assert_eq!(
        field(&lines[0], "SeriesInstanceUID"),
        Some(mr.series.clone())
    );
    assert_eq!(field(&lines[0], "Modality").as_deref(), Some("MR"));
    // A modality no series has: no match, still success.
    let out = m3dnode(&[
        "find",
        &peer,
        "-L",
        "SERIES",
        "-k",
        &format!("StudyInstanceUID={}", mr.study),
        "-k",
        "Modality=CT",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(stdout_lines(&out).is_empty(), "{}", text(&out));

    // IMAGE, as JSON lines: every instance of the CT series.
    let out = m3dnode(&[
        "find",
        &peer,
        "-L",
        "IMAGE",
        "--json",
        "-k",
        &format!("StudyInstanceUID={}", ct.study),
        "-k",
        &format!("SeriesInstanceUID={}", ct.series),
        "-k",
        "SOPInstanceUID",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let found: BTreeSet<String> = stdout_lines(&out)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["SOPInstanceUID"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(found, ct.instances.keys().cloned().collect());
}

#[test]
fn library_keeps_one_association_for_many_queries() {
    use m3dnode::net::qr_scu::{self, Level, Model, QrAssociation, Service};
    let scp = QrScp::start(None);
    scp.load(&[CT]);
    let ct = original(CT);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let to: m3dnode::net::scu::AeAddress = scp.peer().parse().unwrap();
        let mut assoc = QrAssociation::connect(
            &to,
            &Default::default(),
            &[Model::StudyRoot, Model::PatientRoot],
            &[Service::Find],
        )
        .await
        .unwrap();
        let keys: Vec<qr_scu::Key> = [
            format!("StudyInstanceUID={}", ct.study),
            format!("SeriesInstanceUID={}", ct.series),
            "SOPInstanceUID".to_string(),
        ]
        .iter()
        .map(|k| k.parse().unwrap())
        .collect();
        let ident = qr_scu::identifier(Level::Image, &keys, None);
        for _ in 0..20 {
            let matches = assoc
                .find(Model::StudyRoot, &ident, usize::MAX)
                .await
                .unwrap();
            assert_eq!(matches.len(), ct.instances.len());
        }
        // A limit cancels the rest (C-CANCEL) and leaves the association usable.
        let three = assoc.find(Model::StudyRoot, &ident, 3).await.unwrap();
        assert_eq!(three.len(), 3);
        let all = assoc
            .find(Model::StudyRoot, &ident, usize::MAX)
            .await
            .unwrap();
        assert_eq!(all.len(), ct.instances.len());
        assoc.release().await;
    });
    // One association for all 22 queries (storescu's for loading aside).
    assert_eq!(
        scp.log().matches(":M3DNODE -> QRSCP").count(),
        1,
        "{}",
        scp.log()
    );
}

#[test]
fn move_sends_into_storescp_and_unknown_destinations_are_refused() {
    let dest = Destination::up("DEST");
    let scp = QrScp::start(Some(dest.port));
    scp.load(&[CT]);
    let ct = original(CT);
    let out = m3dnode(&[
        "move",
        &scp.peer(),
        "--dest",
        "DEST",
        "-L",
        "SERIES",
        "-k",
        &format!("StudyInstanceUID={}", ct.study),
        "-k",
        &format!("SeriesInstanceUID={}", ct.series),
    ]);
    let n = ct.instances.len();
    assert_all_completed(&out, n, &scp);
    assert_eq!(dest.files().len(), n);
    // The data sets that arrived are the originals'.
    let arrived: BTreeSet<Vec<u8>> = dest.files().iter().map(|f| data_set(f)).collect();
    let sent: BTreeSet<Vec<u8>> = ct.instances.values().map(|f| data_set(f)).collect();
    assert!(arrived == sent, "moved data sets differ from the originals");

    // A destination the archive does not know: refused (0xA801), exit 1, nothing sent.
    let out = m3dnode(&[
        "move",
        &scp.peer(),
        "--dest",
        "NOWHERE",
        "-L",
        "STUDY",
        "-k",
        &format!("StudyInstanceUID={}", ct.study),
    ]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("0xA801"), "{}", text(&out));
    assert_eq!(dest.files().len(), n);
}

#[test]
fn get_writes_the_originals_into_a_folder() {
    let scp = QrScp::start(None);
    scp.load(&[CT, MR]);
    let mr = original(MR);
    let out_dir = tempfile::tempdir().unwrap();
    let target = out_dir.path().join("got");
    let out = m3dnode(&[
        "get",
        &scp.peer(),
        "-o",
        target.to_str().unwrap(),
        "-L",
        "STUDY",
        "-k",
        &format!("StudyInstanceUID={}", mr.study),
    ]);
    let n = mr.instances.len();
    assert_all_completed(&out, n, &scp);
    let mut names: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let expected: Vec<String> = mr.instances.keys().map(|u| format!("{u}.dcm")).collect();
    assert_eq!(names, expected, "one file per instance, no temp files left");
    for (uid, original) in &mr.instances {
        let got = target.join(format!("{uid}.dcm"));
        assert!(
            data_set(&got) == data_set(original),
            "{uid}: data set differs from the original"
        );
        // A Part 10 file the node itself can send on.
        let meta = m3dnode::net::scu::OutgoingFile::open(&got).unwrap();
        assert_eq!(&meta.sop_instance_uid, uid);
    }
}

#[test]
fn failures_have_distinct_exit_codes() {
    let scp = QrScp::start(None);
    // Usage: a bad peer address, a key that is no attribute.
    let out = m3dnode(&["find", "QRSCP-127.0.0.1", "-k", "PatientName"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = m3dnode(&["find", &scp.peer(), "-k", "NoSuchKeyword=1"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("NoSuchKeyword"), "{}", text(&out));
    // Nobody listening: association failure.
    let port = free_port().to_string();
    let out = m3dnode(&[
        "find",
        &format!("QRSCP@127.0.0.1:{port}"),
        "-k",
        "PatientName",
    ]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("could not connect"), "{}", text(&out));
    // An AE title the archive does not serve: the association is rejected.
    let out = m3dnode(&[
        "get",
        &format!("NOSUCHAE@127.0.0.1:{}", scp.port),
        "-o",
        scp.dir.path().join("x").to_str().unwrap(),
        "-k",
        "StudyInstanceUID=1.2.3",
    ]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("rejected"), "{}", text(&out));
}

/// A pynetdicom Study Root C-FIND SCP: `slow` yields a match every 0.2 s until cancelled
/// (logging `CANCELLED`), `silent` never answers, `charsets` answers a UTF-8 and a Latin-1
/// match.
const FIND_SCP: &str = r#"
import sys, time
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

port, mode, logpath = int(sys.argv[1]), sys.argv[2], sys.argv[3]
log = open(logpath, "a", buffering=1)

def on_find(event):
    log.write("FIND\n")
    if mode == "silent":
        time.sleep(120)
        return
    if mode == "charsets":
        for cs, name in (("ISO_IR 192", "Müller^Jürgen"), ("ISO_IR 100", "Gonçalves^Inês")):
            r = Dataset()
            r.SpecificCharacterSet = cs
            r.QueryRetrieveLevel = "STUDY"
            r.PatientName = name
            yield (0xFF00, r)
        return
    for i in range(600):
        if event.is_cancelled:
            log.write("CANCELLED after %d\n" % i)
            yield (0xFE00, None)
            return
        r = Dataset()
        r.QueryRetrieveLevel = "STUDY"
        r.StudyInstanceUID = "1.2.3.%d" % (i + 1)
        yield (0xFF00, r)
        time.sleep(0.2)

ae = AE(ae_title="SLOW")
ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
print("ready", flush=True)
ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_FIND, on_find)])
"#;

/// The pynetdicom C-FIND SCP of [`FIND_SCP`].
struct PyFind;

impl PyFind {
    fn start(mode: &str) -> Peer {
        let python = std::env::var_os("M3DNODE_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python")
            });
        assert!(
            python.is_file(),
            "no test venv: run scripts/test (it installs pynetdicom into target/pyenv)"
        );
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("find_scp.py");
        std::fs::write(&script, FIND_SCP).unwrap();
        let port = free_port();
        let child = Command::new(python)
            .arg(&script)
            .arg(port.to_string())
            .arg(mode)
            .arg(dir.path().join("find.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }));
        Peer {
            child,
            port,
            dir,
            log_name: "find.log",
        }
    }
}

#[test]
fn ctrl_c_sends_a_c_cancel_and_the_peer_stops() {
    let py = PyFind::start("slow");
    let mut child = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args([
            "find",
            &format!("SLOW@127.0.0.1:{}", py.port),
            "-k",
            "StudyInstanceUID",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(
        field(&first, "StudyInstanceUID").as_deref(),
        Some("1.2.3.1")
    );
    unsafe_kill(child.id() as i32, "INT");
    let status = wait_timeout(&mut child, Duration::from_secs(20)).expect("find did not end");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        wait_for(Duration::from_secs(5), || py.log().contains("CANCELLED")),
        "the peer saw no C-CANCEL: {}",
        py.log()
    );
    // Stopped long before the 600 matches the peer would have sent.
    assert!(rest.len() < 100, "{}", rest.len());
}

#[test]
fn a_peer_that_never_answers_times_out() {
    // Accepts the TCP connection, never answers the association request.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args([
            "find",
            &format!("MUTE@127.0.0.1:{port}"),
            "--timeout",
            "2",
            "-k",
            "PatientName",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("find hung");
    assert_eq!(status.code(), Some(4));
    drop(listener);

    // Accepts the association, never answers the C-FIND.
    let py = PyFind::start("silent");
    let out = m3dnode(&[
        "find",
        &format!("SLOW@127.0.0.1:{}", py.port),
        "--timeout",
        "2",
        "-k",
        "StudyInstanceUID",
    ]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("no answer"), "{}", text(&out));
    assert!(py.log().contains("FIND"), "{}", py.log());
}

/// One PDU from a raw socket (the scripted peer below).
fn read_pdu(s: &mut std::net::TcpStream) -> Option<dicom_ul::Pdu> {
    use std::io::Read;
    let mut head = [0u8; 6];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
    let mut pdu = head.to_vec();
    pdu.resize(6 + len, 0);
    s.read_exact(&mut pdu[6..]).ok()?;
    dicom_ul::read_pdu(pdu.as_slice(), 1 << 24, false).ok()?
}

/// A peer that accepts the association (every context, Explicit VR Little Endian), reads one
/// request (command and identifier), then writes `reply` as it is and holds the socket.
fn scripted_peer(reply: Vec<u8>) -> u16 {
    use dicom_ul::pdu::{
        AssociationAC, PDataValueType, PresentationContextResult, PresentationContextResultReason,
        UserVariableItem,
    };
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let Some(dicom_ul::Pdu::AssociationRQ(rq)) = read_pdu(&mut s) else {
            return;
        };
        let ac = dicom_ul::Pdu::AssociationAC(AssociationAC {
            protocol_version: 1,
            calling_ae_title: rq.calling_ae_title.clone(),
            called_ae_title: rq.called_ae_title.clone(),
            application_context_name: rq.application_context_name.clone(),
            presentation_contexts: rq
                .presentation_contexts
                .iter()
                .map(|pc| PresentationContextResult {
                    id: pc.id,
                    reason: PresentationContextResultReason::Acceptance,
                    transfer_syntax: "1.2.840.10008.1.2.1".into(),
                })
                .collect(),
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        });
        let mut out = Vec::new();
        dicom_ul::write_pdu(&mut out, &ac).unwrap();
        s.write_all(&out).unwrap();
        // The request: until the identifier's last fragment.
        while let Some(dicom_ul::Pdu::PData { data }) = read_pdu(&mut s) {
            if data
                .iter()
                .any(|v| v.value_type == PDataValueType::Data && v.is_last)
            {
                break;
            }
        }
        let _ = s.write_all(&reply);
        std::thread::sleep(Duration::from_secs(10));
    });
    port
}

fn pdata(value_type: dicom_ul::pdu::PDataValueType, is_last: bool, data: Vec<u8>) -> Vec<u8> {
    pdata_on(1, value_type, is_last, data)
}

fn pdata_on(
    pc_id: u8,
    value_type: dicom_ul::pdu::PDataValueType,
    is_last: bool,
    data: Vec<u8>,
) -> Vec<u8> {
    let pdu = dicom_ul::Pdu::PData {
        data: vec![dicom_ul::pdu::PDataValue {
            presentation_context_id: pc_id,
            value_type,
            is_last,
            data,
        }],
    };
    let mut out = Vec::new();
    dicom_ul::write_pdu(&mut out, &pdu).unwrap();
    out
}

/// An Implicit VR Little Endian command set with the group length first.
fn command_set(elements: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (elem, value) in elements {
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&elem.to_le_bytes());
        body.extend_from_slice(&(value.len() as u32).to_le_bytes());
        body.extend_from_slice(value);
    }
    let mut out = vec![0, 0, 0, 0, 4, 0, 0, 0];
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn malformed_responses_end_in_a_protocol_error_not_a_panic() {
    use dicom_ul::pdu::PDataValueType::{Command as C, Data as D};
    let pending_find = |responding_to: u16| {
        command_set(&[
            (0x0100, 0x8020u16.to_le_bytes().to_vec()),
            (0x0120, responding_to.to_le_bytes().to_vec()),
            (0x0800, 0u16.to_le_bytes().to_vec()),
            (0x0900, 0xFF00u16.to_le_bytes().to_vec()),
        ])
    };
    // A pending response followed by 5 MB of identifier (over the 4 MiB cap), in PDUs that
    // each fit our maximum.
    let mut huge = pdata(C, true, pending_find(1));
    for i in 0..20 {
        huge.extend(pdata(D, i == 19, vec![0x41; 250_000]));
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated command set",
            pdata(C, true, vec![0, 0, 0, 0, 4, 0, 0, 0, 200]),
            "truncated",
        ),
        (
            "not a PDU at all",
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            "association",
        ),
        (
            "response to another request",
            pdata(C, true, pending_find(77)),
            "response to message 1",
        ),
        (
            "identifier that is no data set",
            [
                pdata(C, true, pending_find(1)),
                pdata(D, true, vec![0x08, 0x00, 0x52, 0x00, 0xFF]),
            ]
            .concat(),
            "malformed response identifier",
        ),
        ("identifier over the cap", huge, "longer than"),
        (
            "a PDU larger than we accept",
            {
                let mut p = vec![0x04, 0, 0x7F, 0xFF, 0xFF, 0xFF];
                p.extend(vec![0; 64]);
                p
            },
            "exceeds",
        ),
    ];
    for (what, reply, says) in cases {
        let port = scripted_peer(reply);
        let out = m3dnode(&[
            "find",
            &format!("FAKE@127.0.0.1:{port}"),
            "--timeout",
            "5",
            "-k",
            "PatientName",
        ]);
        assert_eq!(code(&out), 5, "{what}: {}", text(&out));
        assert!(text(&out).contains(says), "{what}: {}", text(&out));
        assert!(!text(&out).contains("panicked"), "{what}: {}", text(&out));
    }
}

#[test]
fn move_to_a_destination_that_is_down_lists_the_failed_instances() {
    let dest = Destination::down("DEST");
    let scp = QrScp::start(Some(dest.port));
    scp.load(&[CT]);
    let ct = original(CT);
    let out = m3dnode(&[
        "move",
        &scp.peer(),
        "--dest",
        "DEST",
        "-L",
        "SERIES",
        "-k",
        &format!("StudyInstanceUID={}", ct.study),
        "-k",
        &format!("SeriesInstanceUID={}", ct.series),
    ]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let failed: BTreeSet<String> = stdout_lines(&out)
        .iter()
        .filter_map(|l| l.strip_prefix("FAILED ").map(str::to_string))
        .collect();
    assert_eq!(
        failed,
        ct.instances.keys().cloned().collect(),
        "{}",
        text(&out)
    );
    let last = stdout_lines(&out).pop().unwrap_or_default();
    assert!(last.starts_with("0 completed"), "{last}");
}

#[test]
fn matches_are_printed_in_utf8_whatever_their_character_set() {
    let py = PyFind::start("charsets");
    let out = m3dnode(&[
        "find",
        &format!("SLOW@127.0.0.1:{}", py.port),
        "-k",
        "PatientName",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let names: Vec<String> = stdout_lines(&out)
        .iter()
        .filter_map(|l| field(l, "PatientName"))
        .collect();
    assert_eq!(names, ["Müller^Jürgen", "Gonçalves^Inês"], "{}", text(&out));
}

/// A UI value padded to even length.
fn ui(v: &str) -> Vec<u8> {
    let mut b = v.as_bytes().to_vec();
    if b.len() % 2 == 1 {
        b.push(0);
    }
    b
}

#[test]
fn get_refuses_sub_operations_it_cannot_keep_safely() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_ul::pdu::PDataValueType::{Command as C, Data as D};
    const MR_CLASS: &str = "1.2.840.10008.5.1.4.1.1.4";
    // Context 1 is Study Root GET, 3 Encapsulated STL, 5 MR (qr_scu's proposal order).
    let store_rq = |id: u16, instance: &str| {
        command_set(&[
            (0x0002, ui(MR_CLASS)),
            (0x0100, 0x0001u16.to_le_bytes().to_vec()),
            (0x0110, id.to_le_bytes().to_vec()),
            (0x0700, 0u16.to_le_bytes().to_vec()),
            (0x0800, 0u16.to_le_bytes().to_vec()),
            (0x1000, ui(instance)),
        ])
    };
    let data_set = |instance: &str| {
        let mut obj = dicom_object::InMemDicomObject::new_empty();
        for (tag, v) in [
            (tags::SOP_CLASS_UID, MR_CLASS),
            (tags::SOP_INSTANCE_UID, instance),
            (tags::STUDY_INSTANCE_UID, "1.2.3"),
            (tags::SERIES_INSTANCE_UID, "1.2.3.4"),
        ] {
            obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(v)));
        }
        let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut out = Vec::new();
        obj.write_dataset_with_ts(&mut out, &ts).unwrap();
        out
    };
    let mut reply = Vec::new();
    // A UID that would be a path outside the folder.
    reply.extend(pdata_on(5, C, true, store_rq(11, "../../escaped")));
    reply.extend(pdata_on(5, D, true, data_set("1.2.3.4.5")));
    // A data set that is not the instance announced.
    reply.extend(pdata_on(5, C, true, store_rq(12, "1.2.3.4.6")));
    reply.extend(pdata_on(5, D, true, data_set("1.2.3.4.7")));
    // An MR instance on the Q/R context.
    reply.extend(pdata_on(1, C, true, store_rq(13, "1.2.3.4.8")));
    reply.extend(pdata_on(1, D, true, data_set("1.2.3.4.8")));
    // One that is fine.
    reply.extend(pdata_on(5, C, true, store_rq(14, "1.2.3.4.9")));
    reply.extend(pdata_on(5, D, true, data_set("1.2.3.4.9")));
    reply.extend(pdata(
        C,
        true,
        command_set(&[
            (0x0100, 0x8010u16.to_le_bytes().to_vec()),
            (0x0120, 1u16.to_le_bytes().to_vec()),
            (0x0800, 0x0101u16.to_le_bytes().to_vec()),
            (0x0900, 0xB000u16.to_le_bytes().to_vec()),
            (0x1021, 1u16.to_le_bytes().to_vec()),
            (0x1022, 3u16.to_le_bytes().to_vec()),
        ]),
    ));
    let port = scripted_peer(reply);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a").join("b");
    let out = m3dnode(&[
        "get",
        &format!("FAKE@127.0.0.1:{port}"),
        "--timeout",
        "5",
        "-o",
        dir.to_str().unwrap(),
        "-k",
        "StudyInstanceUID=1.2.3",
    ]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("REFUSED ../../escaped: "), "{t}");
    assert!(
        t.contains("REFUSED 1.2.3.4.6: the data set's SOP Instance UID differs"),
        "{t}"
    );
    assert!(t.contains("REFUSED 1.2.3.4.8: the SOP class is not"), "{t}");
    assert!(t.contains("1 completed, 3 failed"), "{t}");
    let mut files: Vec<String> = walk(root.path());
    files.sort();
    assert_eq!(files, ["a/b/1.2.3.4.9.dcm"], "{t}");
}

/// Every file below `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            out.extend(walk(&p).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            out.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

/// Orthanc as the archive: its C-FIND, C-MOVE and C-GET SCPs, with this SCU registered as a
/// modality (`M3DSCU`, through the REST API) that may query and retrieve.
#[test]
fn orthanc_answers_find_move_and_get() {
    use common::orthanc::Orthanc;
    let dest = Destination::up("DEST");
    let orthanc = Orthanc::start("NODE", free_port());
    for (name, body) in [
        (
            "scu",
            serde_json::json!({"AET": "M3DSCU", "Host": "127.0.0.1", "Port": 1,
                "AllowFind": true, "AllowMove": true, "AllowGet": true}),
        ),
        (
            "dest",
            serde_json::json!({"AET": "DEST", "Host": "127.0.0.1", "Port": dest.port}),
        ),
    ] {
        let out = run(Command::new("curl")
            .args(["-sS", "--fail", "-X", "PUT", "--data-binary"])
            .arg(body.to_string())
            .arg(orthanc.url(&format!("/modalities/{name}"))));
        assert!(out.status.success(), "{}", text(&out));
    }
    let (_, n) = orthanc.upload_dir(&testdata().join("series").join(CT));
    let ct = original(CT);
    assert_eq!(n, ct.instances.len());
    let peer = format!("ORTHANC@127.0.0.1:{}", orthanc.dicom_port);
    let series_keys = [
        "-k".to_string(),
        format!("StudyInstanceUID={}", ct.study),
        "-k".to_string(),
        format!("SeriesInstanceUID={}", ct.series),
    ];
    let with_keys = |args: &[&str]| -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--calling-ae", "M3DSCU", "-L", "SERIES"]);
        all.extend(series_keys.iter().map(String::as_str));
        m3dnode(&all)
    };

    let out = with_keys(&[
        "find",
        &peer,
        "-k",
        "Modality",
        "-k",
        "NumberOfSeriesRelatedInstances",
    ]);
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), orthanc.log_tail(30));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1, "{}", text(&out));
    assert_eq!(field(&lines[0], "Modality").as_deref(), Some("CT"));
    assert_eq!(
        field(&lines[0], "NumberOfSeriesRelatedInstances"),
        Some(n.to_string())
    );

    let out_dir = tempfile::tempdir().unwrap();
    let out = with_keys(&["get", &peer, "-o", out_dir.path().to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), orthanc.log_tail(30));
    for (uid, original) in &ct.instances {
        let got = out_dir.path().join(format!("{uid}.dcm"));
        assert!(data_set(&got) == data_set(original), "{uid} differs");
    }

    let out = with_keys(&["move", &peer, "--dest", "DEST"]);
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), orthanc.log_tail(30));
    assert_eq!(dest.files().len(), n);
}
