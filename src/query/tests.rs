//! Matching, refusals, character sets, return keys and retrieve resolution on a small
//! hand-made index in the contract's schema; plans on a synthetic one.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use rusqlite::{Connection, params};

use super::parse::{Raw, read_elements};
use super::*;

const ELE: &str = "1.2.840.10008.1.2.1";
const ILE: &str = "1.2.840.10008.1.2";
const STL: &str = "1.2.840.10008.5.1.4.1.1.104.3";
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

/// An index file made by the database module (its schema at the latest version), open on a
/// plain connection, in a directory that lives as long as it.
struct Index {
    conn: Connection,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Index {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

fn empty_index() -> Index {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.sqlite");
    drop(crate::db::Db::open(&path).unwrap());
    Index {
        conn: Connection::open(&path).unwrap(),
        _dir: dir,
    }
}

/// The index of the tests: six studies of five patients, one with an M3D result.
fn db() -> Index {
    let c = empty_index();
    let patients: &[(i64, &str, &str, Option<&str>)] = &[
        (1, "P1", "SMITH^JOHN", Some("19700101")),
        (2, "P2", "SMITHERS^ANNA", Some("19800202")),
        (3, "P3", "Müller^Jörg", None),
        (4, "P4", "Yamada^Tarou=山田^太郎=やまだ^たろう", None),
        (5, "P[5]", "BRACKET[1]^X", None),
    ];
    for (pk, id, name, birth) in patients {
        c.execute(
            "INSERT INTO patients VALUES (?1, ?2, '', ?3, ?4, 'M', NULL)",
            params![pk, id, name, birth],
        )
        .unwrap();
    }
    let studies: &[(&str, i64, Option<&str>, &str)] = &[
        ("1.1", 1, Some("20200115"), "101500"),
        ("1.2", 1, Some("20200220"), "080000"),
        ("1.3", 2, Some("20200131"), "235000"),
        ("1.4", 3, Some("20210301"), "120000"),
        ("1.5", 4, Some("20210302"), "093000"),
        ("1.6", 5, None, "093000"),
    ];
    for (uid, pk, date, time) in studies {
        c.execute(
            "INSERT INTO studies VALUES (?1, ?2, ?3, ?4, 'ACC' || ?1, 'ID', 'DESC', NULL, NULL)",
            params![uid, pk, date, time],
        )
        .unwrap();
    }
    // (series, study, modality, instances)
    let series: &[(&str, &str, &str, i64)] = &[
        ("1.1.1", "1.1", "CT", 3),
        ("1.1.2", "1.1", "M3D", 1),
        ("1.2.1", "1.2", "MR", 2),
        ("1.3.1", "1.3", "CT", 1),
        ("1.4.1", "1.4", "MR", 1),
        ("1.5.1", "1.5", "CT", 1),
        ("1.6.1", "1.6", "CT", 1),
    ];
    for (n, (uid, study, modality, count)) in series.iter().enumerate() {
        c.execute(
            "INSERT INTO series (series_uid, study_uid, modality, series_number) VALUES (?1, ?2, ?3, ?4)",
            params![uid, study, modality, n as i64 + 1],
        )
        .unwrap();
        for k in (1..=*count).rev() {
            let m3d = *modality == "M3D";
            c.execute(
                "INSERT INTO instances VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 10, 'AE', 0, ?9, ?10)",
                params![
                    format!("{uid}.{k}"),
                    if m3d { STL } else { CT },
                    study,
                    uid,
                    modality,
                    k,
                    ELE,
                    format!("{uid}/{k}.dcm"),
                    m3d.then_some("Bone surface"),
                    m3d.then_some("model/stl"),
                ],
            )
            .unwrap();
        }
    }
    c
}

fn q(model: Model, service: Service, keys: &[(&str, &str)]) -> Result<Query, QueryError> {
    Query::parse(model, service, &synthetic::identifier(keys), ELE)
}

/// A Study Root C-FIND identifier.
fn sr(keys: &[(&str, &str)]) -> Result<Query, QueryError> {
    q(Model::StudyRoot, Service::Find, keys)
}

fn find_all(conn: &Connection, query: &Query) -> Vec<InMemDicomObject> {
    let found = query.find(conn, 0, ELE).unwrap();
    assert!(!found.truncated);
    found.matches.iter().map(|m| read(m)).collect()
}

fn read(bytes: &[u8]) -> InMemDicomObject {
    let ts = TransferSyntaxRegistry.get(ELE).unwrap();
    InMemDicomObject::read_dataset_with_ts(bytes, ts).unwrap()
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.element(tag)
        .unwrap_or_else(|_| panic!("{tag} missing"))
        .to_str()
        .unwrap()
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// The values of `tag` over the matches, sorted.
fn values(conn: &Connection, query: &Query, tag: Tag) -> Vec<String> {
    let mut v: Vec<String> = find_all(conn, query).iter().map(|o| text(o, tag)).collect();
    v.sort();
    v
}

fn studies(keys: &[(&str, &str)]) -> Vec<String> {
    let mut all = vec![("00080052", "STUDY")];
    all.extend_from_slice(keys);
    let query = q(Model::StudyRoot, Service::Find, &all).unwrap();
    values(&db(), &query, tags::STUDY_INSTANCE_UID)
}

/// An identifier from raw values (for character-set bytes).
fn raw_identifier(elements: &[(Tag, VR, &[u8])]) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    for (tag, vr, bytes) in elements {
        let mut b = bytes.to_vec();
        if b.len() % 2 == 1 {
            b.push(b' ');
        }
        obj.put(DataElement::new(*tag, *vr, PrimitiveValue::U8(b.into())));
    }
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, TransferSyntaxRegistry.get(ELE).unwrap())
        .unwrap();
    out
}

/// The bytes of a top-level element of an encoded response.
fn raw_value(response: &[u8], tag: Tag) -> Option<Vec<u8>> {
    read_elements(response, ELE)
        .unwrap()
        .into_iter()
        .find_map(|e| match e {
            Raw::Value { tag: t, bytes, .. } if t == tag => Some(bytes),
            _ => None,
        })
}

#[test]
fn sop_classes_map_to_model_and_service() {
    assert_eq!(SOP_CLASSES.len(), 6);
    assert_eq!(
        sop_class("1.2.840.10008.5.1.4.1.2.1.1"),
        Some((Model::PatientRoot, Service::Find))
    );
    assert_eq!(
        sop_class("1.2.840.10008.5.1.4.1.2.2.3\0"),
        Some((Model::StudyRoot, Service::Get))
    );
    assert_eq!(sop_class("1.2.840.10008.1.1"), None);
    for uid in SOP_CLASSES {
        assert!(sop_class(uid).is_some());
    }
}

#[test]
fn single_value_and_universal_matching() {
    assert_eq!(studies(&[("00100020", "P1")]), ["1.1", "1.2"]);
    assert_eq!(studies(&[("00100020", "")]).len(), 6);
    assert_eq!(studies(&[]).len(), 6);
    // `*` alone is universal: it matches the study with no date too.
    assert_eq!(studies(&[("00080020", "")]).len(), 6);
    assert_eq!(studies(&[("00100010", "*")]).len(), 6);
    assert_eq!(studies(&[("00080050", "ACC1.3")]), ["1.3"]);
    // Absent values match only universal keys.
    assert_eq!(studies(&[("00080090", "X")]), Vec::<String>::new());
}

#[test]
fn wildcard_matching_is_case_sensitive_glob() {
    assert_eq!(studies(&[("00100010", "SMI*")]), ["1.1", "1.2", "1.3"]);
    assert_eq!(studies(&[("00100010", "SMITH^J?HN")]), ["1.1", "1.2"]);
    assert_eq!(studies(&[("00100010", "smi*")]), Vec::<String>::new());
    assert_eq!(studies(&[("00100010", "*ANNA")]), ["1.3"]);
    // `[` and `]` are literal, not a GLOB class.
    assert_eq!(studies(&[("00100010", "BRACKET[1]*")]), ["1.6"]);
    assert_eq!(
        studies(&[("00100010", "BRACKET[0-9]*")]),
        Vec::<String>::new()
    );
    assert_eq!(studies(&[("00100020", "P[5]")]), ["1.6"]);
    assert_eq!(find::glob("a[b]*?"), "a[[]b[]]*?");
}

#[test]
fn uid_lists_short_and_ten_thousand() {
    assert_eq!(studies(&[("0020000D", "1.1\\1.3")]), ["1.1", "1.3"]);
    let mut many: Vec<String> = (0..10_000)
        .map(|i| format!("1.2.826.0.1.3680043.9.7433.1.{i}"))
        .collect();
    many[5_000] = "1.4".into();
    many.push("1.5".into());
    let list = many.join("\\");
    assert!(list.len() > 300_000);
    // Only Implicit VR carries it: an Explicit VR UI length has 16 bits.
    let ident = synthetic::identifier_in(&[("00080052", "STUDY"), ("0020000D", &list)], ILE);
    let query = Query::parse(Model::StudyRoot, Service::Find, &ident, ILE).unwrap();
    assert_eq!(
        values(&db(), &query, tags::STUDY_INSTANCE_UID),
        ["1.4", "1.5"]
    );
    // Lists of other attributes mean any of them.
    assert_eq!(studies(&[("00100020", "P2\\P3")]), ["1.3", "1.4"]);
    assert_eq!(studies(&[("00100010", "SMITHERS*\\Yam*")]), ["1.3", "1.5"]);
}

#[test]
fn date_ranges() {
    assert_eq!(
        studies(&[("00080020", "20200101-20200131")]),
        ["1.1", "1.3"]
    );
    assert_eq!(studies(&[("00080020", "-20200131")]), ["1.1", "1.3"]);
    assert_eq!(studies(&[("00080020", "20210301-")]), ["1.4", "1.5"]);
    assert_eq!(studies(&[("00080020", "20200220")]), ["1.2"]);
    assert_eq!(
        studies(&[("00080020", "20200220\\20210302")]),
        ["1.2", "1.5"]
    );
}

#[test]
fn time_ranges_cover_the_precision_of_their_ends() {
    // "1015" stands for 10:15:00-10:15:59.999999, so 10:15:00 is inside.
    assert_eq!(
        studies(&[("00080030", "0800-1015")]),
        ["1.1", "1.2", "1.5", "1.6"]
    );
    assert_eq!(studies(&[("00080030", "1000-1014")]), Vec::<String>::new());
    assert_eq!(studies(&[("00080030", "2300-")]), ["1.3"]);
    assert_eq!(studies(&[("00080030", "-0800")]), ["1.2"]);
    assert_eq!(studies(&[("00080030", "10")]), ["1.1"]);
    assert_eq!(studies(&[("00080030", "08:00-08:30")]), ["1.2"]);
}

#[test]
fn date_and_time_ranges_combine() {
    // From 2020-01-15 10:00 to 2020-01-31 09:00 (C.2.2.2.5): 1.1 is at 10:15 on the first
    // day, 1.3 at 23:50 on the last; matched separately, the time range would match nothing.
    assert_eq!(
        studies(&[("00080020", "20200115-20200131"), ("00080030", "1000-0900")]),
        ["1.1"]
    );
    assert_eq!(
        studies(&[("00080020", "20200131-"), ("00080030", "2300-")]),
        ["1.2", "1.3", "1.4", "1.5"]
    );
    // A single date and a time range are matched separately.
    assert_eq!(
        studies(&[("00080020", "20200115"), ("00080030", "1000-0900")]),
        Vec::<String>::new()
    );
}

#[test]
fn modalities_in_study_matches_and_returns_all_modalities() {
    assert_eq!(studies(&[("00080061", "MR")]), ["1.2", "1.4"]);
    assert_eq!(studies(&[("00080061", "M3D")]), ["1.1"]);
    let query = sr(&[("00080052", "STUDY"), ("0020000D", "1.1"), ("00080061", "")]).unwrap();
    assert_eq!(
        values(&db(), &query, tags::MODALITIES_IN_STUDY),
        ["CT\\M3D"]
    );
}

#[test]
fn return_keys_unique_keys_and_derived_counts() {
    let query = sr(&[
        ("00080052", "STUDY"),
        ("00100020", "P1"),
        ("00100010", ""),
        ("00080020", ""),
        ("00081090", ""), // Manufacturer's Model Name: not in the index
        ("00201206", ""),
        ("00201208", ""),
    ])
    .unwrap();
    let found = find_all(&db(), &query);
    assert_eq!(found.len(), 2);
    let s1 = found
        .iter()
        .find(|o| text(o, tags::STUDY_INSTANCE_UID) == "1.1")
        .unwrap();
    assert_eq!(text(s1, tags::QUERY_RETRIEVE_LEVEL), "STUDY");
    assert_eq!(text(s1, tags::PATIENT_NAME), "SMITH^JOHN");
    assert_eq!(text(s1, tags::STUDY_DATE), "20200115");
    assert_eq!(text(s1, tags::MANUFACTURER_MODEL_NAME), "");
    assert_eq!(text(s1, tags::NUMBER_OF_STUDY_RELATED_SERIES), "2");
    assert_eq!(text(s1, tags::NUMBER_OF_STUDY_RELATED_INSTANCES), "4");
    // No key that was not asked for, other than the unique key and the level.
    assert!(s1.element(tags::ACCESSION_NUMBER).is_err());
    assert!(s1.element(tags::SPECIFIC_CHARACTER_SET).is_err());

    let query = q(
        Model::PatientRoot,
        Service::Find,
        &[
            ("00080052", "PATIENT"),
            ("00100020", "P1"),
            ("00201200", ""),
            ("00201202", ""),
            ("00201204", ""),
        ],
    )
    .unwrap();
    let p = &find_all(&db(), &query)[0];
    assert_eq!(text(p, tags::NUMBER_OF_PATIENT_RELATED_STUDIES), "2");
    assert_eq!(text(p, tags::NUMBER_OF_PATIENT_RELATED_SERIES), "3");
    assert_eq!(text(p, tags::NUMBER_OF_PATIENT_RELATED_INSTANCES), "6");
}

#[test]
fn series_and_image_levels_with_results() {
    let conn = db();
    let query = sr(&[
        ("00080052", "SERIES"),
        ("0020000D", "1.1"),
        ("00080060", ""),
        ("00201209", ""),
    ])
    .unwrap();
    let mut rows: Vec<(String, String, String)> = find_all(&conn, &query)
        .iter()
        .map(|o| {
            (
                text(o, tags::SERIES_INSTANCE_UID),
                text(o, tags::MODALITY),
                text(o, tags::NUMBER_OF_SERIES_RELATED_INSTANCES),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("1.1.1".into(), "CT".into(), "3".into()),
            ("1.1.2".into(), "M3D".into(), "1".into())
        ]
    );
    let query = sr(&[
        ("00080052", "SERIES"),
        ("0020000D", "1.1"),
        ("00080060", "M3D"),
    ])
    .unwrap();
    assert_eq!(values(&conn, &query, tags::SERIES_INSTANCE_UID), ["1.1.2"]);

    let query = q(
        Model::PatientRoot,
        Service::Find,
        &[
            ("00080052", "IMAGE"),
            ("00100020", "P1"),
            ("0020000D", "1.1"),
            ("0020000E", "1.1.2"),
            ("00080016", ""),
            ("00420010", ""),
            ("00420012", ""),
        ],
    )
    .unwrap();
    let image = &find_all(&conn, &query)[0];
    assert_eq!(text(image, tags::SOP_CLASS_UID), STL);
    assert_eq!(text(image, tags::DOCUMENT_TITLE), "Bone surface");
    assert_eq!(
        text(image, tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT),
        "model/stl"
    );
    assert_eq!(text(image, tags::SOP_INSTANCE_UID), "1.1.2.1");
    // Patient Root: the Patient ID must be the study's.
    let query = q(
        Model::PatientRoot,
        Service::Find,
        &[
            ("00080052", "SERIES"),
            ("00100020", "P2"),
            ("0020000D", "1.1"),
        ],
    )
    .unwrap();
    assert!(find_all(&conn, &query).is_empty());
}

#[test]
fn limit_and_truncation() {
    let conn = db();
    let query = sr(&[("00080052", "STUDY")]).unwrap();
    let found = query.find(&conn, 2, ELE).unwrap();
    assert_eq!((found.matches.len(), found.truncated), (2, true));
    let found = query.find(&conn, 6, ELE).unwrap();
    assert_eq!((found.matches.len(), found.truncated), (6, false));
    let found = query.find(&conn, 0, ELE).unwrap();
    assert_eq!((found.matches.len(), found.truncated), (6, false));
}

#[test]
fn responses_in_implicit_vr() {
    let conn = db();
    let ident =
        synthetic::identifier(&[("00080052", "STUDY"), ("00100020", "P2"), ("00100010", "")]);
    let query = Query::parse(Model::StudyRoot, Service::Find, &ident, ELE).unwrap();
    let found = query.find(&conn, 0, ILE).unwrap();
    let ts = TransferSyntaxRegistry.get(ILE).unwrap();
    let obj = InMemDicomObject::read_dataset_with_ts(&found.matches[0][..], ts).unwrap();
    assert_eq!(text(&obj, tags::PATIENT_NAME), "SMITHERS^ANNA");
    assert!(matches!(
        query.find(&conn, 0, "1.2.3"),
        Err(QueryError::TransferSyntax(_))
    ));
}

#[test]
fn retrieve_resolution_in_stable_order() {
    let conn = db();
    let uids = |query: Query| -> Vec<String> {
        query
            .instances(&conn)
            .unwrap()
            .into_iter()
            .map(|r| r.sop_instance_uid)
            .collect()
    };
    let query = q(
        Model::StudyRoot,
        Service::Move,
        &[
            ("00080052", "STUDY"),
            ("0020000D", "1.1"),
            ("00100010", "IGNORED*"),
        ],
    )
    .unwrap();
    assert_eq!(uids(query), ["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.2.1"]);
    let query = q(
        Model::PatientRoot,
        Service::Get,
        &[("00080052", "PATIENT"), ("00100020", "P1")],
    )
    .unwrap();
    assert_eq!(uids(query).len(), 6);
    let query = q(
        Model::StudyRoot,
        Service::Get,
        &[
            ("00080052", "SERIES"),
            ("0020000D", "1.1"),
            ("0020000E", "1.1.2\\1.1.9"),
        ],
    )
    .unwrap();
    let refs = query.instances(&conn).unwrap();
    assert_eq!(
        refs,
        [InstanceRef {
            sop_class_uid: STL.into(),
            sop_instance_uid: "1.1.2.1".into(),
            transfer_syntax: ELE.into(),
            path: "1.1.2/1.dcm".into(),
        }]
    );
    let query = q(
        Model::PatientRoot,
        Service::Move,
        &[
            ("00080052", "IMAGE"),
            ("00100020", "P1"),
            ("0020000D", "1.2"),
            ("0020000E", "1.2.1"),
            ("00080018", "1.2.1.2\\1.2.1.1"),
        ],
    )
    .unwrap();
    assert_eq!(uids(query), ["1.2.1.1", "1.2.1.2"]);
    // A retrieve must name what it retrieves.
    let err = q(Model::StudyRoot, Service::Move, &[("00080052", "STUDY")]).unwrap_err();
    assert_eq!(err.status(), 0xA900);
    let err = q(
        Model::StudyRoot,
        Service::Move,
        &[("00080052", "STUDY"), ("0020000D", "1.*")],
    )
    .unwrap_err();
    assert_eq!(err.status(), 0xA900);
    let err = q(
        Model::PatientRoot,
        Service::Get,
        &[("00080052", "STUDY"), ("0020000D", "1.1")],
    )
    .unwrap_err();
    assert!(matches!(err, QueryError::MissingUniqueKey { .. }), "{err}");
}

/// Keys of a Study Root C-FIND, the status and a part of the message they must get.
type RefusalCase<'a> = (&'a [(&'a str, &'a str)], u16, &'a str);

/// Every refusal, with its status and a comment that fits an LO.
#[test]
fn refusals_have_status_and_short_comment() {
    let study_root: &[RefusalCase] = &[
        (&[("00100020", "P1")], 0xA900, "Level (0008,0052) missing"),
        (&[("00080052", "")], 0xA900, "missing"),
        (
            &[("00080052", "FOO")],
            0xA900,
            "invalid Query/Retrieve Level",
        ),
        (
            &[("00080052", "PATIENT")],
            0xA900,
            "not in the StudyRoot model",
        ),
        (
            &[("00080052", "SERIES")],
            0xA900,
            "(0020,000D) must be a single value",
        ),
        (
            &[("00080052", "SERIES"), ("0020000D", "1.*")],
            0xA900,
            "(0020,000D)",
        ),
        (
            &[("00080052", "SERIES"), ("0020000D", "1.1\\1.2")],
            0xA900,
            "(0020,000D)",
        ),
        (
            &[("00080052", "STUDY"), ("0020000E", "")],
            0xA900,
            "key (0020,000E) is below the STUDY level",
        ),
        (
            &[("00080052", "STUDY"), ("00080020", "2020-01-01")],
            0xC000,
            "invalid value in key (0008,0020)",
        ),
        (
            &[("00080052", "STUDY"), ("00080030", "noon")],
            0xC000,
            "(0008,0030)",
        ),
        (
            &[
                ("00080052", "SERIES"),
                ("0020000D", "1.1"),
                ("00200011", "x"),
            ],
            0xC000,
            "(0020,0011)",
        ),
    ];
    let mut cases: Vec<(Result<Query, QueryError>, u16, &str)> = study_root
        .iter()
        .map(|&(keys, status, needle)| (sr(keys), status, needle))
        .collect();
    cases.extend([
        (
            q(Model::PatientRoot, Service::Find, &[("00080052", "STUDY")]),
            0xA900,
            "(0010,0020) must be a single value",
        ),
        (
            Query::parse(
                Model::StudyRoot,
                Service::Find,
                &synthetic::identifier(&[("00080052", "STUDY")]),
                "1.2.3",
            ),
            0xC000,
            "unsupported transfer syntax",
        ),
        (
            Query::parse(
                Model::StudyRoot,
                Service::Find,
                &raw_identifier(&[
                    (tags::SPECIFIC_CHARACTER_SET, VR::CS, b"KLINGON"),
                    (tags::QUERY_RETRIEVE_LEVEL, VR::CS, b"STUDY"),
                ]),
                ELE,
            ),
            0xC000,
            "unsupported Specific Character Set",
        ),
        (
            Query::parse(
                Model::StudyRoot,
                Service::Find,
                &vec![0u8; MAX_IDENTIFIER_BYTES + 2],
                ELE,
            ),
            0xC000,
            "identifier larger than",
        ),
        (
            Query::parse(
                Model::StudyRoot,
                Service::Find,
                &[0x08, 0x00, 0x52, 0x00, b'C', b'S', 0x10],
                ELE,
            ),
            0xC000,
            "malformed identifier",
        ),
    ]);
    for (i, (result, status, needle)) in cases.into_iter().enumerate() {
        let err = result.expect_err(&format!("case {i} was accepted"));
        assert_eq!(err.status(), status, "case {i}: {err}");
        assert!(err.to_string().contains(needle), "case {i}: {err}");
        assert!(err.comment().len() <= 64, "case {i}: {}", err.comment());
    }
}

/// A sequence header and item start in Explicit VR LE, undefined lengths.
fn open_sequence(out: &mut Vec<u8>, tag: Tag) {
    out.extend_from_slice(&tag.0.to_le_bytes());
    out.extend_from_slice(&tag.1.to_le_bytes());
    out.extend_from_slice(b"SQ\0\0");
    out.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
}

fn item_start(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
}

fn item_and_sequence_end(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
}

#[test]
fn sequences_empty_are_returned_with_items_refused() {
    let level = synthetic::identifier(&[("00080052", "STUDY"), ("00100020", "P2")]);
    // (0008,1110) Referenced Study Sequence, empty.
    let mut empty = level.clone();
    empty.extend_from_slice(&[0x08, 0x00, 0x10, 0x11, b'S', b'Q', 0, 0, 0, 0, 0, 0]);
    let query = Query::parse(Model::StudyRoot, Service::Find, &empty, ELE).unwrap();
    let found = query.find(&db(), 0, ELE).unwrap();
    let obj = read(&found.matches[0]);
    let seq = obj.element(Tag(0x0008, 0x1110)).unwrap();
    assert_eq!(seq.vr(), VR::SQ);
    assert_eq!(seq.items().map(|i| i.len()), Some(0));

    // One item with a zero-length key: universal, returned empty too.
    let mut universal = level.clone();
    open_sequence(&mut universal, Tag(0x0008, 0x1110));
    item_start(&mut universal);
    universal.extend_from_slice(&[0x08, 0x00, 0x55, 0x11, b'U', b'I', 0, 0]);
    item_and_sequence_end(&mut universal);
    assert!(Query::parse(Model::StudyRoot, Service::Find, &universal, ELE).is_ok());

    let mut with_value = level;
    open_sequence(&mut with_value, Tag(0x0008, 0x1110));
    item_start(&mut with_value);
    with_value.extend_from_slice(&[
        0x08, 0x00, 0x55, 0x11, b'U', b'I', 4, 0, b'1', b'.', b'2', 0,
    ]);
    item_and_sequence_end(&mut with_value);
    let err = Query::parse(Model::StudyRoot, Service::Find, &with_value, ELE).unwrap_err();
    assert_eq!(err.status(), 0xC000);
    assert_eq!(
        err.comment(),
        "sequence matching not supported: (0008,1110)"
    );
}

#[test]
fn deep_nesting_and_huge_lengths_are_refused() {
    let mut deep = synthetic::identifier(&[("00080052", "STUDY")]);
    for _ in 0..1000 {
        open_sequence(&mut deep, Tag(0x0008, 0x1110));
        item_start(&mut deep);
    }
    for _ in 0..1000 {
        item_and_sequence_end(&mut deep);
    }
    let err = Query::parse(Model::StudyRoot, Service::Find, &deep, ELE).unwrap_err();
    assert!(matches!(err, QueryError::TooDeep { .. }), "{err}");

    // A 4 GB length in a 30-byte identifier: refused before anything is allocated for it.
    let mut huge = synthetic::identifier(&[("00080052", "STUDY")]);
    huge.extend_from_slice(&[
        0x10, 0x00, 0x10, 0x00, b'U', b'N', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
    ]);
    let err = Query::parse(Model::StudyRoot, Service::Find, &huge, ELE).unwrap_err();
    assert_eq!(err.status(), 0xC000, "{err}");
    // Implicit VR: a 4-byte length with no VR.
    let mut huge = vec![0x08, 0x00, 0x52, 0x00, 6, 0, 0, 0];
    huge.extend_from_slice(b"STUDY ");
    huge.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, 0xF0, 0xFF, 0xFF, 0x7F]);
    let err = Query::parse(Model::StudyRoot, Service::Find, &huge, ILE).unwrap_err();
    assert_eq!(err.status(), 0xC000, "{err}");
}

/// Mutated and random identifiers give a query or an error, never a panic.
#[test]
fn hostile_identifiers_never_panic() {
    let mut base = synthetic::identifier(&[
        ("00080005", "ISO 2022 IR 6\\ISO 2022 IR 87"),
        ("00080052", "IMAGE"),
        ("00100020", "P1"),
        ("00100010", "SMI*"),
        ("0020000D", "1.1"),
        ("0020000E", "1.1.1"),
        ("00080020", "20200101-"),
        ("00080030", "1000-1200"),
    ]);
    open_sequence(&mut base, Tag(0x0008, 0x1110));
    item_start(&mut base);
    item_and_sequence_end(&mut base);
    let conn = db();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut ok, mut refused) = (0, 0);
    for round in 0..20_000 {
        let mut bytes = base.clone();
        match round % 4 {
            0 => {
                let i = rnd() as usize % bytes.len();
                bytes[i] = rnd() as u8;
            }
            1 => bytes.truncate(rnd() as usize % bytes.len()),
            2 => {
                for _ in 0..4 {
                    let i = rnd() as usize % bytes.len();
                    bytes[i] = [0xFF, 0x00, 0x1B, b'\\', b'*'][rnd() as usize % 5];
                }
            }
            _ => bytes = (0..rnd() % 200).map(|_| rnd() as u8).collect(),
        }
        for ts in [ELE, ILE] {
            for service in [Service::Find, Service::Move] {
                match Query::parse(Model::PatientRoot, service, &bytes, ts) {
                    Ok(query) => {
                        ok += 1;
                        if service == Service::Find {
                            let _ = query.find(&conn, 10, ELE);
                        } else {
                            let _ = query.instances(&conn);
                        }
                    }
                    Err(e) => {
                        refused += 1;
                        assert!(e.comment().len() <= 64);
                    }
                }
            }
        }
    }
    assert!(ok > 100 && refused > 100, "ok {ok}, refused {refused}");
}

#[test]
fn latin1_query_and_response() {
    let conn = db();
    let ident = raw_identifier(&[
        (tags::SPECIFIC_CHARACTER_SET, VR::CS, b"ISO_IR 100"),
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, b"STUDY"),
        (tags::PATIENT_NAME, VR::PN, b"M\xfcller*"),
    ]);
    let query = Query::parse(Model::StudyRoot, Service::Find, &ident, ELE).unwrap();
    let found = query.find(&conn, 0, ELE).unwrap();
    assert_eq!(found.matches.len(), 1);
    let m = &found.matches[0];
    assert_eq!(
        raw_value(m, tags::SPECIFIC_CHARACTER_SET).unwrap(),
        b"ISO_IR 100"
    );
    assert_eq!(
        raw_value(m, tags::PATIENT_NAME).unwrap(),
        b"M\xfcller^J\xf6rg "
    );

    // A value Latin-1 cannot hold turns the whole response into UTF-8.
    let ident = raw_identifier(&[
        (tags::SPECIFIC_CHARACTER_SET, VR::CS, b"ISO_IR 100"),
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, b"STUDY"),
        (tags::PATIENT_ID, VR::LO, b"P4"),
        (tags::PATIENT_NAME, VR::PN, b""),
    ]);
    let query = Query::parse(Model::StudyRoot, Service::Find, &ident, ELE).unwrap();
    let m = &query.find(&conn, 0, ELE).unwrap().matches[0];
    assert_eq!(
        raw_value(m, tags::SPECIFIC_CHARACTER_SET).unwrap(),
        b"ISO_IR 192"
    );
    assert_eq!(
        String::from_utf8(raw_value(m, tags::PATIENT_NAME).unwrap())
            .unwrap()
            .trim_end(),
        "Yamada^Tarou=山田^太郎=やまだ^たろう"
    );
    // A query without character set gets UTF-8 too, and says so.
    let query = q(
        Model::StudyRoot,
        Service::Find,
        &[("00080052", "STUDY"), ("00100020", "P3"), ("00100010", "")],
    )
    .unwrap();
    let m = &query.find(&conn, 0, ELE).unwrap().matches[0];
    assert_eq!(
        raw_value(m, tags::SPECIFIC_CHARACTER_SET).unwrap(),
        b"ISO_IR 192"
    );
}

#[test]
fn utf8_query() {
    let conn = db();
    let ident = raw_identifier(&[
        (tags::SPECIFIC_CHARACTER_SET, VR::CS, b"ISO_IR 192"),
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, b"STUDY"),
        (tags::PATIENT_NAME, VR::PN, "*=山田^*".as_bytes()),
    ]);
    let query = Query::parse(Model::StudyRoot, Service::Find, &ident, ELE).unwrap();
    let found = query.find(&conn, 0, ELE).unwrap();
    assert_eq!(found.matches.len(), 1);
    assert_eq!(
        raw_value(&found.matches[0], tags::SPECIFIC_CHARACTER_SET).unwrap(),
        b"ISO_IR 192"
    );
}

/// PS3.5 H.3.1: the Japanese example, JIS X 0208 with escape sequences.
const YAMADA_2022: &[u8] =
    b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";

#[test]
fn iso2022_japanese_query_and_response() {
    let conn = db();
    let ident = raw_identifier(&[
        (tags::SPECIFIC_CHARACTER_SET, VR::CS, b"\\ISO 2022 IR 87"),
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, b"STUDY"),
        (tags::PATIENT_NAME, VR::PN, YAMADA_2022),
    ]);
    let query = Query::parse(Model::StudyRoot, Service::Find, &ident, ELE).unwrap();
    let found = query.find(&conn, 0, ELE).unwrap();
    assert_eq!(found.matches.len(), 1);
    let m = &found.matches[0];
    assert_eq!(
        raw_value(m, tags::SPECIFIC_CHARACTER_SET).unwrap(),
        b"\\ISO 2022 IR 87 "
    );
    // Encoded back byte for byte as the standard's example (one pad space).
    let name = raw_value(m, tags::PATIENT_NAME).unwrap();
    assert_eq!(&name[..YAMADA_2022.len()], YAMADA_2022);

    // "ISO 2022 IR 6\ISO 2022 IR 87" and a wildcard on the ideographic group.
    let ident = raw_identifier(&[
        (
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            b"ISO 2022 IR 6\\ISO 2022 IR 87",
        ),
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, b"STUDY"),
        (tags::PATIENT_NAME, VR::PN, b"*=\x1b$B;3ED\x1b(B^*"),
    ]);
    let query = Query::parse(Model::StudyRoot, Service::Find, &ident, ELE).unwrap();
    assert_eq!(query.find(&conn, 0, ELE).unwrap().matches.len(), 1);
}

#[test]
fn iso2022_decoding_of_other_sets() {
    let korean = charset::Charset::from_value(b"\\ISO 2022 IR 149").unwrap();
    // PS3.5 I.2
    let hong = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
    assert_eq!(korean.decode(hong).unwrap(), "Hong^Gildong=洪^吉洞=홍^길동");
    assert_eq!(korean.encode("Hong^Gildong=洪^吉洞=홍^길동").unwrap(), hong);
    let latin = charset::Charset::from_value(b"ISO 2022 IR 100").unwrap();
    assert_eq!(latin.decode(b"M\xfcller").unwrap(), "Müller");
    assert_eq!(latin.encode("Müller").unwrap(), b"M\xfcller");
    assert!(latin.encode("山田").is_none());
    // An escape to a set the query did not name is refused.
    assert!(latin.decode(b"\x1b$B;3").is_err());
    let katakana = charset::Charset::from_value(b"ISO 2022 IR 13\\ISO 2022 IR 87").unwrap();
    assert_eq!(katakana.decode(b"\xd4\xcf\xc0\xde").unwrap(), "ﾔﾏﾀﾞ");
    assert!(charset::Charset::from_value(b"ISO 2022 IR 159").is_err());
}

/// The four benchmark queries (bench/README.md, keys drawn as `qr_data.py` draws them) use the
/// indexes (EXPLAIN QUERY PLAN), no table scan, on the benchmark's data set (seed 1: 7 of the
/// 300 studies are of SMI* patients; seed 7 has none).
#[test]
fn benchmark_queries_use_indexes() {
    let conn = empty_index();
    let filled = synthetic::fill(&conn, 300, 20, 1).unwrap();
    conn.execute_batch("ANALYZE").unwrap();
    let (n_studies, n_instances, smi): (i64, i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM studies), (SELECT COUNT(*) FROM instances), \
             (SELECT COUNT(*) FROM patients WHERE name GLOB 'SMI*')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((n_studies, n_instances), (300, 6000));
    assert_eq!(
        (filled.studies, filled.series, filled.instances),
        (300, 1200, 6000)
    );
    assert!(smi >= 1, "no SMI* patient in 300 studies");
    let scheme = synthetic::Scheme::new(1, 20).unwrap();
    let studies: Vec<synthetic::Study> = scheme.studies().take(300).collect();
    let keys = scheme.query_keys(&studies, 0);
    // A month that holds a study (at 300 studies, about 4 a month), from the drawn one on.
    let first = (0..72)
        .find(|m| keys.month == synthetic::month_range(*m))
        .unwrap();
    let month = (first..first + 72)
        .map(|m| synthetic::month_range(m % 72))
        .find(|range| {
            studies
                .iter()
                .any(|s| s.date[..] >= range[..8] && s.date[..] <= range[9..])
        })
        .unwrap();
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("00080052", "STUDY"),
                ("00100020", &keys.patient_id),
                ("00100010", ""),
                ("00201208", ""),
            ],
            "sqlite_autoindex_patients_1",
        ),
        (
            &[
                ("00080052", "STUDY"),
                ("00100010", "SMI*"),
                ("00080061", ""),
            ],
            "patients_name",
        ),
        (
            &[
                ("00080052", "STUDY"),
                ("00080020", &month),
                ("00100010", ""),
            ],
            "studies_date",
        ),
        (
            &[
                ("00080052", "SERIES"),
                ("0020000D", &keys.study_uid),
                ("00080060", ""),
                ("00201209", ""),
            ],
            "series_study",
        ),
    ];
    for (keys, index) in cases {
        let query = q_find(keys);
        let plan = query.explain(&conn).unwrap();
        assert!(
            plan.iter().any(|l| l.contains(index)),
            "{index} not used: {plan:#?}"
        );
        // A scan of a subquery's co-routine (Modalities in Study's DISTINCT) reads rows the
        // subquery found by an index, not a table.
        let coroutines: Vec<String> = plan
            .iter()
            .filter_map(|l| l.strip_prefix("CO-ROUTINE "))
            .map(|name| format!("SCAN {name}"))
            .collect();
        assert!(
            !plan.iter().any(|l| l.starts_with("SCAN")
                && !l.contains("json_each")
                && !l.contains("subquery")
                && !coroutines.contains(l)),
            "table scan: {plan:#?}"
        );
        assert!(
            !query.find(&conn, 0, ELE).unwrap().matches.is_empty(),
            "{keys:?}"
        );
    }
    // A long UID list is one JSON parameter, looked up in the primary key per UID.
    let list: Vec<String> = (0..40).map(|s| scheme.study_uid(s)).collect();
    let query = sr(&[("00080052", "STUDY"), ("0020000D", &list.join("\\"))]).unwrap();
    let plan = query.explain(&conn).unwrap();
    assert!(
        plan.iter()
            .any(|l| l.contains("sqlite_autoindex_studies_1 (study_uid=?)")),
        "{plan:#?}"
    );
    assert_eq!(query.find(&conn, 0, ELE).unwrap().matches.len(), 40);
}

fn q_find(keys: &[(&str, &str)]) -> Query {
    q(Model::StudyRoot, Service::Find, keys).unwrap()
}

// ---------------------------------------------------------------- the benchmark's data set

/// The check values of bench/README.md ("The data set"), as printed by
/// `python3 bench/qr_data.py describe --studies 10000` (and `--studies 500`) at seed 1.
#[test]
fn synthetic_data_set_gives_the_reference_check_values() {
    use synthetic::{Scheme, Study, mix};
    assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
    let scheme = Scheme::new(1, 100).unwrap();
    assert_eq!(scheme.h(1, 0), 8_900_858_891_303_283_264);
    assert_eq!(scheme.h(6, 0), 17_572_984_642_465_921_467);
    let studies: Vec<Study> = scheme.studies().take(10_000).collect();
    let line = |s: &Study| {
        format!(
            "{} {} {} {} {} {} {} {} {}",
            s.patient.index,
            s.patient.id,
            s.patient.name,
            s.patient.sex,
            s.patient.birth_date,
            s.date,
            s.time,
            s.modality.code(),
            s.referring
        )
    };
    assert_eq!(
        line(&studies[0]),
        "0 P000001 MUELLER^JULIA F 19931125 20240428 113704 CT GREY^MEREDITH"
    );
    assert_eq!(
        studies[0].uid,
        "2.25.13974899806710873671008007745640960696.1.1.1"
    );
    assert!(
        line(&studies[9999]).starts_with("3977 P003978 HALL^MARCO M 19470718 20210630 161722 CT ")
    );
    let counts = |k: usize| {
        let patients = studies[k - 1].patient.index + 1;
        let smi = studies[..k]
            .iter()
            .filter(|s| s.patient.name.starts_with("SMI"))
            .count();
        (patients, smi)
    };
    assert_eq!(counts(10_000), (3978, 255));
    assert_eq!(counts(500), (198, 18));
    let mut per_month = std::collections::BTreeMap::new();
    for s in &studies {
        *per_month.entry(&s.date[..6]).or_insert(0) += 1;
    }
    let mut months: Vec<i32> = per_month.into_values().collect();
    months.sort();
    assert_eq!(
        (months.len(), months[0], months[36], months[71]),
        (72, 108, 138, 164)
    );
    // The longest UID of the scheme fits the 64 characters of UI.
    let longest = Scheme::new(999, 10_000)
        .unwrap()
        .instance_uid(999_999, 9_999);
    assert_eq!(longest.len(), 63, "{longest}");
    assert!(Scheme::new(1000, 1).is_err() && Scheme::new(1, 0).is_err());
    assert_eq!(synthetic::month_range(0), "20200101-20200131");
    assert_eq!(synthetic::month_range(49), "20240201-20240229");
    assert_eq!(synthetic::month_range(71), "20251201-20251231");
}

/// Every row `fill` writes is what the store would index from the files the reference
/// (`bench/qr_data.py`, as bench/qr.sh loads Orthanc and dcmqrscp) writes, read by pydicom:
/// 30 studies of 6 instances (series of 2, 2, 1 and 1) at seed 7, all values compared.
#[test]
fn synthetic_rows_are_the_reference_files() {
    const STUDIES: u64 = 30;
    const PER_STUDY: u64 = 6;
    const SEED: u64 = 7;
    let conn = empty_index();
    let filled = synthetic::fill(&conn, STUDIES, PER_STUDY, SEED).unwrap();
    let script = r#"
import os, sys, tempfile
import pydicom
sys.path.insert(0, sys.argv[1])
import qr_data
seed, per_study, studies = (int(a) for a in sys.argv[2:5])
scheme = qr_data.Scheme(seed, per_study)
with tempfile.TemporaryDirectory() as d:
    for s in range(studies):
        for path in scheme.write_study(s, d):
            ds = pydicom.dcmread(path)
            print("|".join(str(v) for v in (
                ds.file_meta.TransferSyntaxUID, ds.SOPClassUID, ds.SOPInstanceUID,
                ds.Modality, ds.InstanceNumber, ds.SeriesInstanceUID, ds.SeriesNumber,
                ds.Modality, ds.SeriesDescription, ds.BodyPartExamined, ds.FrameOfReferenceUID,
                ds.SeriesDate, ds.SeriesTime, ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime,
                ds.AccessionNumber, ds.StudyID, ds.StudyDescription, ds.ReferringPhysicianName,
                ds.PatientID, ds.get("IssuerOfPatientID", ""), ds.PatientName,
                ds.PatientBirthDate, ds.PatientSex, ds.get("SpecificCharacterSet", ""))))
"#;
    let out = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/pyenv/bin/python"
    ))
    .args(["-c", script, concat!(env!("CARGO_MANIFEST_DIR"), "/bench")])
    .args([SEED, PER_STUDY, STUDIES].map(|n| n.to_string()))
    .output()
    .expect("pydicom in target/pyenv (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reference: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    reference.sort();
    let mut stmt = conn
        .prepare(
            "SELECT i.transfer_syntax, i.sop_class_uid, i.sop_instance_uid, i.modality, \
             i.instance_number, se.series_uid, se.series_number, se.modality, se.description, \
             se.body_part, se.frame_of_reference_uid, se.series_date, se.series_time, \
             st.study_uid, st.study_date, st.study_time, st.accession, st.study_id, \
             st.description, st.referring, p.patient_id, p.issuer, p.name, p.birth_date, \
             p.sex, coalesce(p.charset, '') || coalesce(st.charset, '') \
             || coalesce(se.charset, '') \
             FROM instances i JOIN series se ON se.series_uid = i.series_instance_uid \
             JOIN studies st ON st.study_uid = se.study_uid \
             AND st.study_uid = i.study_instance_uid \
             JOIN patients p ON p.pk = st.patient_pk",
        )
        .unwrap();
    let mut rows: Vec<String> = stmt
        .query_map([], |r| {
            (0..26)
                .map(|i| {
                    Ok(match r.get::<_, rusqlite::types::Value>(i)? {
                        rusqlite::types::Value::Integer(n) => n.to_string(),
                        rusqlite::types::Value::Text(t) => t,
                        other => format!("{other:?}"),
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(|v| v.join("|"))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    rows.sort();
    assert_eq!(reference.len() as u64, STUDIES * PER_STUDY);
    assert_eq!(rows, reference);
    // No row outside the joins.
    let counts: (i64, i64, i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM patients), (SELECT COUNT(*) FROM studies), \
             (SELECT COUNT(*) FROM series), (SELECT COUNT(*) FROM instances)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    let patients = reference
        .iter()
        .map(|l| l.split('|').nth(20).unwrap())
        .collect::<std::collections::HashSet<_>>()
        .len() as i64;
    assert_eq!(counts, (patients, 30, 120, 180));
    assert_eq!(
        (
            filled.patients as i64,
            filled.studies,
            filled.series,
            filled.instances
        ),
        (patients, 30, 120, 180)
    );
}

/// A response written as a Part 10 file (in a directory that lives as long as the result).
fn response_file(response: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let meta = dicom_object::meta::FileMetaTableBuilder::new()
        .transfer_syntax(ELE)
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.2.2.1")
        .media_storage_sop_instance_uid("1.2.3.4")
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("response.dcm");
    let mut file = vec![0u8; 128];
    file.extend_from_slice(b"DICM");
    meta.write(&mut file).unwrap();
    file.extend_from_slice(response);
    std::fs::write(&path, file).unwrap();
    (dir, path)
}

/// Patient's Name of a response as a real peer decodes it: DCMTK's `dcmdump +U8`, or pydicom
/// (as pynetdicom peers read it) for ISO 2022, which DCMTK's iconv build cannot decode (no JIS
/// X 0208, no single-valued `ISO 2022 IR 100`).
fn peer_decoded_name(response: &[u8], iso2022: bool) -> String {
    let (_dir, path) = response_file(response);
    let out = if iso2022 {
        std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/pyenv/bin/python"
        ))
        .args([
            "-c",
            "import sys, pydicom; print('[' + str(pydicom.dcmread(sys.argv[1]).PatientName) + ']')",
        ])
        .arg(&path)
        .output()
        .expect("pydicom in target/pyenv (scripts/test installs it)")
    } else {
        std::process::Command::new("dcmdump")
            .arg("+U8")
            .arg(&path)
            .output()
            .expect("dcmdump (DCMTK) is installed for the tests")
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Real peers read the responses in every character set as the names stored.
#[test]
fn peers_decode_responses() {
    let conn = db();
    let yamada = "Yamada^Tarou=山田^太郎=やまだ^たろう";
    for (charset, id, name, iso2022) in [
        (&b"ISO 2022 IR 6\\ISO 2022 IR 87"[..], "P4", yamada, true),
        (b"\\ISO 2022 IR 87", "P4", yamada, true),
        (b"ISO_IR 100", "P3", "Müller^Jörg", false),
        (b"ISO 2022 IR 100", "P3", "Müller^Jörg", true),
        (b"ISO_IR 192", "P4", yamada, false),
        // Falls back to ISO_IR 192.
        (b"ISO_IR 100", "P4", yamada, false),
    ] {
        let ident = raw_identifier(&[
            (tags::SPECIFIC_CHARACTER_SET, VR::CS, charset),
            (tags::QUERY_RETRIEVE_LEVEL, VR::CS, b"STUDY"),
            (tags::PATIENT_ID, VR::LO, id.as_bytes()),
            (tags::PATIENT_NAME, VR::PN, b""),
        ]);
        let query = Query::parse(Model::StudyRoot, Service::Find, &ident, ELE).unwrap();
        let found = query.find(&conn, 0, ELE).unwrap();
        let decoded = peer_decoded_name(&found.matches[0], iso2022);
        assert!(decoded.contains(&format!("[{name}]")), "{decoded}");
    }
}
