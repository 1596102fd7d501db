//! JPEG Extended (Process 2 & 4, 1.2.840.10008.1.2.4.51), 8- and 12-bit, end to end: series
//! compressed by DCMTK (`dcmcjpeg +ee`) are sent by storescu on a JPEG Extended presentation
//! context, stored byte for byte as received, decoded (libjpeg-turbo) to the voxels DCMTK's
//! own decoder (`dcmdjpeg`) gives, and turned into meshes by a rule of the running node.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use dicom_dictionary_std::tags;
use m3dnode::volume::{Volume, Voxels};

const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";
const CT: &str = "ct_head_axial_small";

/// One test series in three forms: the uncompressed source (a copy of the CT series with new
/// UIDs), its JPEG Extended encoding, and DCMTK's decoding of that encoding.
struct Series {
    source: Vec<PathBuf>,
    jpeg: Vec<PathBuf>,
    dcmtk_decoded: Vec<PathBuf>,
}

/// Makes a JPEG Extended series with `dcmcjpeg +ee` and `bits` (its bits-per-sample option).
fn make(dir: &Path, name: &str, bits: &str) -> Series {
    let source = copy_as_new_series(&testdata().join("series").join(CT), &dir.join(name));
    let mut jpeg = Vec::new();
    let mut dcmtk_decoded = Vec::new();
    for (sub, list) in [("jpeg", &mut jpeg), ("dcmdjpeg", &mut dcmtk_decoded)] {
        std::fs::create_dir_all(dir.join(format!("{name}-{sub}"))).unwrap();
        for s in &source {
            list.push(
                dir.join(format!("{name}-{sub}"))
                    .join(s.file_name().unwrap()),
            );
        }
    }
    for ((s, j), d) in source.iter().zip(&jpeg).zip(&dcmtk_decoded) {
        let out = run(Command::new(tool("dcmcjpeg"))
            .args(["+ee", bits])
            .arg(s)
            .arg(j));
        assert!(out.status.success(), "dcmcjpeg: {}", text(&out));
        let out = run(Command::new(tool("dcmdjpeg")).arg(j).arg(d));
        assert!(out.status.success(), "dcmdjpeg: {}", text(&out));
    }
    Series {
        source,
        jpeg,
        dcmtk_decoded,
    }
}

fn header(path: &Path) -> dicom_object::DefaultDicomObject {
    dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .unwrap()
}

fn attr(path: &Path, tag: dicom_core::Tag) -> String {
    header(path)
        .element(tag)
        .map(|e| {
            e.to_str()
                .unwrap()
                .trim_end_matches(['\0', ' '])
                .to_string()
        })
        .unwrap_or_default()
}

fn transfer_syntax(path: &Path) -> String {
    header(path)
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

/// Modality values (rescale applied) of a volume assembled by the node's own reader.
fn modality_values(files: &[PathBuf]) -> (Volume, Vec<f64>) {
    let v = m3dnode::volume::assemble(files, &Default::default())
        .unwrap_or_else(|e| panic!("assemble: {e}"));
    let r = v.rescale;
    let values = match &v.voxels {
        Voxels::U8(x) => x.iter().map(|&s| r.apply(f64::from(s))).collect(),
        Voxels::I16(x) => x.iter().map(|&s| r.apply(f64::from(s))).collect(),
        Voxels::U16(x) => x.iter().map(|&s| r.apply(f64::from(s))).collect(),
        Voxels::F32(x) => x.iter().map(|&s| r.apply(f64::from(s))).collect(),
    };
    (v, values)
}

/// (largest, mean) absolute difference.
fn diff(a: &[f64], b: &[f64]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (max, sum) = a.iter().zip(b).fold((0f64, 0f64), |(m, s), (x, y)| {
        ((x - y).abs().max(m), s + (x - y).abs())
    });
    (max, sum / a.len() as f64)
}

/// Largest Rescale Slope of a series: one stored unit in modality units.
fn max_slope(files: &[PathBuf]) -> f64 {
    files
        .iter()
        .map(|f| attr(f, tags::RESCALE_SLOPE).parse::<f64>().unwrap_or(1.0))
        .fold(1.0, f64::max)
}

#[test]
fn jpeg_extended_8_and_12_bit_are_accepted_stored_as_received_and_decoded() {
    let dir = tempfile::tempdir().unwrap();
    // +ba: bits from the data (12 for this 12-bit CT), +be: forced down to 8 bits.
    let s12 = make(dir.path(), "e12", "+ba");
    let s8 = make(dir.path(), "e8", "+be");
    for (s, bits) in [(&s12, "12"), (&s8, "8")] {
        assert_eq!(
            transfer_syntax(&s.jpeg[0]),
            JPEG_EXTENDED,
            "dcmcjpeg output"
        );
        assert_eq!(attr(&s.jpeg[0], tags::BITS_STORED), bits);
    }

    let dest = Destination::up("DEST");
    let node = Node::start(&format!(
        "[series]\nquiet_seconds = 0.5\n[delivery]\nretry_initial_seconds = 0.2\n{}[[rules]]\nname = \"ct bone\"\nmodality = \"CT\"\npreset = \"ct-bone\"\nsend_to = [\"{}\"]\n",
        dest.peer_toml(),
        dest.aet
    ));
    // `-xx -R`: storescu proposes JPEG Extended only, so the node must accept it to get them.
    for s in [&s12, &s8] {
        let out = run(Command::new(tool("storescu"))
            .env("TCP_NODELAY", "1")
            .args(["-aec", "M3DNODE", "-xx", "-R", "127.0.0.1", &node.port()])
            .args(&s.jpeg));
        assert!(out.status.success(), "{}\n{}", text(&out), node.log());
    }

    // Stored as received: the syntax and the data set bytes of what was sent.
    let sent: HashMap<String, &PathBuf> = s12
        .jpeg
        .iter()
        .chain(&s8.jpeg)
        .map(|p| (attr(p, tags::SOP_INSTANCE_UID), p))
        .collect();
    let stored = |s: &Series| -> Vec<PathBuf> {
        s.jpeg
            .iter()
            .map(|p| {
                let sop = attr(p, tags::SOP_INSTANCE_UID);
                let row = node
                    .index()
                    .get(&sop)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{sop} not stored\n{}", node.log()));
                assert_eq!(row.transfer_syntax, JPEG_EXTENDED);
                node.storage().join(row.path)
            })
            .collect()
    };
    let (st12, st8) = (stored(&s12), stored(&s8));
    assert_eq!(node.stored_files().len(), sent.len());
    for f in st12.iter().chain(&st8) {
        assert_eq!(transfer_syntax(f), JPEG_EXTENDED);
        let original = sent[&attr(f, tags::SOP_INSTANCE_UID)];
        assert!(
            data_set(f) == data_set(original),
            "{} differs from what was sent",
            f.display()
        );
    }

    // Decoded like DCMTK decodes them (same IJG arithmetic: within 1 stored unit), and close
    // to the uncompressed source (lossy).
    for (name, s, st, lossy_mean) in [("12-bit", &s12, &st12, 4.0), ("8-bit", &s8, &st8, 25.0)] {
        let (vol, ours) = modality_values(st);
        let (_, dcmtk) = modality_values(&s.dcmtk_decoded);
        let (_, source) = modality_values(&s.source);
        let unit = max_slope(&s.dcmtk_decoded);
        let (max, mean) = diff(&ours, &dcmtk);
        eprintln!("{name}: vs dcmdjpeg max {max} mean {mean} (unit {unit})");
        assert!(max <= unit + 1e-3, "{name}: {max} from dcmdjpeg's values");
        let (smax, smean) = diff(&ours, &source);
        eprintln!("{name}: vs source max {smax} mean {smean} HU");
        assert!(smean <= lossy_mean, "{name}: mean error {smean} HU");
        assert_eq!(vol.dims, [128, 128, 54]);
    }

    // The offline command reads them too, to the same mesh as DCMTK's decoding.
    let recon = |files: &[PathBuf], out: &Path| {
        let folder = files[0].parent().unwrap();
        let o = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .args(["recon", "--preset", "ct-bone", "-o"])
            .arg(out)
            .arg(folder));
        assert!(o.status.success(), "recon: {}", text(&o));
        std::fs::read(out).unwrap()
    };
    assert!(
        recon(&s12.jpeg, &dir.path().join("jpeg.stl"))
            == recon(&s12.dcmtk_decoded, &dir.path().join("dcmtk.stl")),
        "12-bit: the mesh differs from the one of DCMTK's decoding"
    );

    // The running node's rule makes a mesh of each series and delivers it.
    assert!(
        wait_for(Duration::from_secs(60), || dest.stores() >= 2),
        "results: {}; jobs {:?}\n{}",
        dest.stores(),
        jobs(&node),
        node.log()
    );
    let j = jobs(&node);
    assert_eq!(j.len(), 2, "{j:?}");
    assert!(j.iter().all(|(state, _)| state == "done"), "{j:?}");
    for f in dest.files() {
        // Encapsulated STL Storage.
        assert_eq!(
            attr(&f, tags::SOP_CLASS_UID),
            "1.2.840.10008.5.1.4.1.1.104.3"
        );
    }
}

/// Multi-frame JPEG Extended with each frame split over several fragments, with and without
/// a Basic Offset Table (dcmcjpeg `+fs 1 +ot` / `-ot`): every frame is found and decodes to
/// DCMTK's values.
#[test]
fn multi_frame_jpeg_extended_split_over_fragments_decodes_like_dcmtk() {
    let dir = tempfile::tempdir().unwrap();
    let src = testdata().join("files/pydicom/eCT_Supplemental.dcm");
    for table in ["+ot", "-ot"] {
        let jpeg = dir.path().join(format!("ct{table}.dcm"));
        let reference = dir.path().join(format!("ref{table}.dcm"));
        let out = run(Command::new(tool("dcmcjpeg"))
            .args(["+ee", "+fs", "1", table])
            .arg(&src)
            .arg(&jpeg));
        assert!(out.status.success(), "dcmcjpeg: {}", text(&out));
        let out = run(Command::new(tool("dcmdjpeg")).arg(&jpeg).arg(&reference));
        assert!(out.status.success(), "dcmdjpeg: {}", text(&out));
        assert_eq!(transfer_syntax(&jpeg), JPEG_EXTENDED);
        let (vol, ours) = modality_values(std::slice::from_ref(&jpeg));
        let (_, dcmtk) = modality_values(&[reference]);
        assert_eq!(vol.dims[2], 2, "{table}: both frames");
        let (max, _) = diff(&ours, &dcmtk);
        assert!(max == 0.0, "{table}: {max} from dcmdjpeg's values");
    }
}

/// A JPEG Extended instance whose stream is cut short is stored (the receive side does not
/// decode), and the job of its series fails with libjpeg-turbo's reason, naming the file's
/// syntax, instead of making a mesh of grey-filled slices; the node keeps serving.
#[test]
fn corrupt_jpeg_extended_fails_its_job_with_the_reason() {
    use dicom_core::DicomValue;
    use dicom_core::value::PixelFragmentSequence;
    let dir = tempfile::tempdir().unwrap();
    let s = make(dir.path(), "cut", "+ba");
    let victim = &s.jpeg[s.jpeg.len() / 2];
    let mut obj = dicom_object::open_file(victim).unwrap();
    let DicomValue::PixelSequence(seq) = obj.element(tags::PIXEL_DATA).unwrap().value().clone()
    else {
        panic!("not encapsulated")
    };
    let mut frag = seq.fragments()[0].clone();
    frag.truncate(frag.len() / 2);
    obj.put(dicom_core::DataElement::new(
        tags::PIXEL_DATA,
        dicom_core::VR::OB,
        DicomValue::PixelSequence(PixelFragmentSequence::new(vec![], vec![frag])),
    ));
    obj.write_to_file(victim).unwrap();

    // The job fails before any delivery: the destination may be down.
    let dest = Destination::down("DEST");
    let node = Node::start(&format!(
        "[series]\nquiet_seconds = 0.5\n{}[[rules]]\nname = \"ct bone\"\nmodality = \"CT\"\npreset = \"ct-bone\"\nsend_to = [\"DEST\"]\n",
        dest.peer_toml()
    ));
    let out = run(Command::new(tool("storescu"))
        .env("TCP_NODELAY", "1")
        .args(["-aec", "M3DNODE", "-xx", "-R", "127.0.0.1", &node.port()])
        .args(&s.jpeg));
    assert!(out.status.success(), "{}\n{}", text(&out), node.log());
    assert!(
        wait_for(Duration::from_secs(60), || jobs(&node)
            .iter()
            .any(|(state, _)| state == "failed")),
        "jobs {:?}\n{}",
        jobs(&node),
        node.log()
    );
    let (_, error) = jobs(&node).remove(0);
    assert!(
        error.contains(JPEG_EXTENDED) && error.contains("libjpeg-turbo"),
        "{error}"
    );
    assert!(node.echo_ok());
}
