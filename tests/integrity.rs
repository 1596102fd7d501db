//! Storage integrity with the real binary: one node per storage root, no stored file
//! without an index row when the index cannot be written, and character sets carried
//! through to the result byte for byte.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Index rows (SOP Instance UID, relative path) of every instance.
fn rows(node: &Node) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = node
        .index()
        .with(|c| {
            c.prepare("SELECT sop_instance_uid, path FROM instances")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .unwrap();
    rows.sort();
    rows
}

/// Every stored file has an index row and every row a file.
fn assert_index_matches_files(node: &Node) {
    let root = node.storage();
    let mut indexed: Vec<PathBuf> = rows(node).iter().map(|(_, p)| root.join(p)).collect();
    indexed.sort();
    assert_eq!(node.stored_files(), indexed, "files vs index rows");
}

#[test]
fn a_second_node_on_the_same_storage_is_refused_and_leaves_the_first_alone() {
    let node = Node::start("");
    let storage = node.storage();
    // As an instance being received by the first node leaves it.
    let in_flight = storage.join("tmp").join("rx-in-flight.part");
    std::fs::write(&in_flight, b"half an instance").unwrap();

    let log = node.dir.path().join("second.log");
    let mut second = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["serve", "--config"])
        .arg(&node.config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut second, Duration::from_secs(30));
    if status.is_none() {
        let _ = second.kill();
        let _ = second.wait();
    }
    let message = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "the second node must refuse to start; stderr: {message}"
    );
    assert!(
        message.contains(&storage.display().to_string())
            && message.contains(&format!("PID {}", node.child.id()))
            && message.contains("in use by another m3dnode"),
        "{message}"
    );
    assert!(
        in_flight.exists(),
        "the second node removed the first one's temp file"
    );

    // The first node goes on storing.
    let series = write_mr_series(&node.dir.path().join("in"), 2, 8, 8);
    storescu(&node, &series);
    assert_eq!(node.stored_files().len(), 2);
    assert_index_matches_files(&node);
}

/// The index holds no row and the tree no file for `sop`.
fn assert_not_stored(node: &Node, sop: &str) {
    assert!(
        rows(node).iter().all(|(s, _)| s != sop),
        "refused instance indexed"
    );
    assert!(
        node.stored_files()
            .iter()
            .all(|f| !f.ends_with(format!("{sop}.dcm"))),
        "refused instance left in the storage tree: {:?}",
        node.stored_files()
    );
}

fn sop_of(path: &Path) -> String {
    let obj = dicom_object::open_file(path).unwrap();
    obj.meta()
        .media_storage_sop_instance_uid()
        .trim_end_matches('\0')
        .to_string()
}

#[test]
fn an_instance_whose_index_row_cannot_be_written_is_refused_and_not_left_behind() {
    let mut node = Node::start("");
    let series = write_mr_series(&node.dir.path().join("in"), 2, 8, 8);
    storescu(&node, &series[..1]);
    assert_index_matches_files(&node);

    // Another connection holds the index's write lock longer than the node's busy timeout
    // (10 s), as a full disk or a stuck writer would make every index write fail.
    let blocker = rusqlite::Connection::open(node.storage().join("index.sqlite")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let out = run(Command::new(tool("storescu"))
        .args(["-aec", "M3DNODE", "-v", "127.0.0.1", &node.port()])
        .arg(&series[1]));
    let t = text(&out);
    assert!(
        t.contains("Refused: OutOfResources"),
        "expected 0xA700: {t}"
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let refused = sop_of(&series[1]);
    assert_not_stored(&node, &refused);
    assert_index_matches_files(&node);

    // A re-send is stored and indexed.
    storescu(&node, &series[1..]);
    assert!(rows(&node).iter().any(|(s, _)| *s == refused));
    assert_eq!(node.stored_files().len(), 2);
    assert_index_matches_files(&node);

    // After a clean stop the next start finds the index matching the files.
    assert!(node.terminate().success());
    let node = node.restart();
    assert_index_matches_files(&node);
    assert_eq!(rows(&node).len(), 2);
}

/// A character set and a Patient's Name in it, as PS3.5 Annex H, I and J encode them, with
/// the name as DCMTK shows it converted to UTF-8.
struct Charset {
    specific_character_set: &'static str,
    name: &'static [u8],
    utf8: &'static str,
}

const CHARSETS: &[Charset] = &[
    // H.3.1: Korean, ISO 2022 IR 149 (escape sequences in every component).
    Charset {
        specific_character_set: "\\ISO 2022 IR 149",
        name: b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf",
        utf8: "Hong^Gildong=洪^吉洞=홍^길동",
    },
    // I.2: Japanese, ISO 2022 IR 87.
    Charset {
        specific_character_set: "\\ISO 2022 IR 87",
        name: b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B",
        utf8: "Yamada^Tarou=山田^太郎=やまだ^たろう",
    },
    // I.1: Japanese, JIS X 0201 katakana in G1 with ISO 2022 IR 87.
    Charset {
        specific_character_set: "ISO 2022 IR 13\\ISO 2022 IR 87",
        name: b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J",
        utf8: "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
    },
    // J.3.1: Simplified Chinese, GB18030.
    Charset {
        specific_character_set: "GB18030",
        name: b"Wang^XiaoDong=\xcd\xf5^\xd0\xa1\xb6\xab=",
        utf8: "Wang^XiaoDong=王^小东=",
    },
    // J.1 in UTF-8: ISO_IR 192.
    Charset {
        specific_character_set: "ISO_IR 192",
        name: "Wang^XiaoDong=王^小東=".as_bytes(),
        utf8: "Wang^XiaoDong=王^小東=",
    },
];

/// Patient and study text attributes the test writes in the source's character set.
const TEXT_TAGS: &[dicom_core::Tag] = &[
    dicom_dictionary_std::tags::SPECIFIC_CHARACTER_SET,
    dicom_dictionary_std::tags::PATIENT_NAME,
    dicom_dictionary_std::tags::PATIENT_ID,
    dicom_dictionary_std::tags::REFERRING_PHYSICIAN_NAME,
    dicom_dictionary_std::tags::STUDY_DESCRIPTION,
    dicom_dictionary_std::tags::STUDY_ID,
];

/// Even-length value bytes, padded with a space as DICOM pads text.
fn padded(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    if v.len() % 2 == 1 {
        v.push(b' ');
    }
    v
}

/// Copies the CT test series into `dir` with its patient and study text in `cs`, written as
/// raw bytes (no encoder in between).
fn write_series_in(cs: &Charset, dir: &Path) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    std::fs::create_dir_all(dir).unwrap();
    let src = testdata().join("series").join("ct_head_axial_small");
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let mut obj = dicom_object::open_file(entry.path()).unwrap();
        let mut raw = |tag, vr, bytes: &[u8]| {
            obj.put(DataElement::new(
                tag,
                vr,
                PrimitiveValue::U8(padded(bytes).into()),
            ))
        };
        raw(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            cs.specific_character_set.as_bytes(),
        );
        raw(tags::PATIENT_NAME, VR::PN, cs.name);
        raw(tags::REFERRING_PHYSICIAN_NAME, VR::PN, cs.name);
        raw(
            tags::PATIENT_ID,
            VR::LO,
            cs.name.split(|b| *b == b'^').next().unwrap(),
        );
        raw(tags::STUDY_DESCRIPTION, VR::LO, cs.name);
        raw(tags::STUDY_ID, VR::SH, b"S1");
        obj.write_to_file(dir.join(entry.file_name())).unwrap();
    }
}

/// The stored bytes of the patient and study text attributes of a file.
fn stored_text(path: &Path) -> Vec<(dicom_core::Tag, Vec<u8>)> {
    let stored = m3dnode::encap::stored_values(path).unwrap();
    TEXT_TAGS
        .iter()
        .map(|&tag| {
            let e = stored
                .get(tag)
                .unwrap_or_else(|| panic!("{tag} missing in {}", path.display()));
            (tag, e.value().to_bytes().unwrap().into_owned())
        })
        .collect()
}

#[test]
fn results_carry_the_source_text_byte_for_byte_in_its_character_set() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, cs) in CHARSETS.iter().enumerate() {
        let dir = tmp.path().join(format!("series{i}"));
        write_series_in(cs, &dir);
        let dcm = tmp.path().join(format!("result{i}.dcm"));
        let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
            .args(["recon", "--preset", "ct-bone", "-o"])
            .arg(tmp.path().join(format!("result{i}.stl")))
            .arg("--dicom")
            .arg(&dcm)
            .arg(&dir));
        assert!(out.status.success(), "{}", text(&out));

        let source = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let expected = stored_text(&source);
        assert_eq!(
            expected[1].1,
            padded(cs.name),
            "the test wrote the source's name as stored"
        );
        assert_eq!(
            stored_text(&dcm),
            expected,
            "{}: result text differs from the source's",
            cs.specific_character_set
        );
        assert_dciodvfy_clean(&dcm);
        let dump = run(Command::new(tool("dcmdump"))
            .args(["+U8", "+P", "0010,0010"])
            .arg(&dcm));
        let dump = text(&dump);
        if cs.specific_character_set.contains("ISO 2022 IR 87")
            && dump.contains("is not supported by the utilized character set conversion library")
        {
            // DCMTK built on glibc iconv cannot convert JIS X 0208 (ISO 2022 IR 87); the
            // bytes were compared above.
            continue;
        }
        assert!(
            dump.contains(&format!("[{}]", cs.utf8)),
            "{}: DCMTK reads {dump}",
            cs.specific_character_set
        );
    }
}
