//! The query module on PostgreSQL (issue 17, design §1.3): the same index filled into SQLite
//! and into a fresh PostgreSQL database answers every C-FIND, C-MOVE and C-GET identifier the
//! same way, byte for byte; and the PostgreSQL wildcard translation keeps `%`, `_` and `\`
//! of a value literal.

mod common;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use m3dnode::query::{Found, InstanceRef, Model, Query, Service, synthetic};
use rusqlite::Connection;

const ELE: &str = "1.2.840.10008.1.2.1";
const ILE: &str = "1.2.840.10008.1.2";

/// Studies and instances per study of the synthetic part (7 instances: series of 2, 2, 2, 1).
const STUDIES: u64 = 150;
const PER_STUDY: u64 = 7;
const SEED: u64 = 1;

/// Rows the synthetic data set lacks, written by the same SQL on both engines: `%`, `_` and
/// `\` in values, NULL dates, times, modalities and instance numbers, a fractional time, a
/// study of several modalities, non-ASCII names.
const EXTRA: &str = r#"
INSERT INTO patients (pk, patient_id, issuer, name, birth_date, sex, charset) VALUES
 (10001, 'X%1', '', '100%^PURE', '19700101', 'F', NULL),
 (10002, 'X_2', '', '100ABC^PURE', NULL, 'M', NULL),
 (10003, 'X\3', '', 'UNDER_SCORE^Y', NULL, NULL, NULL),
 (10004, 'X4', '', 'UNDERXSCORE^Y', '19800101', 'O', NULL),
 (10005, 'X5', '', 'Müller^Jörg', NULL, 'M', 'ISO_IR 192');
INSERT INTO studies (study_uid, patient_pk, study_date, study_time, accession, study_id,
                     description, referring, charset) VALUES
 ('9.1', 10001, '20200115', '101500.123', 'ACC%1', 'S_1', 'MULTI', NULL, NULL),
 ('9.2', 10002, NULL, NULL, 'ACCX1', 'SX1', NULL, 'DOC^A', NULL),
 ('9.3', 10003, '20231231', '235959', 'A\B', NULL, NULL, NULL, NULL),
 ('9.4', 10004, '20231231', '000000', NULL, NULL, NULL, NULL, NULL),
 ('9.5', 10005, '20200115', '0930', NULL, NULL, 'Kopf', NULL, 'ISO_IR 192');
INSERT INTO series (series_uid, study_uid, modality, series_number, description) VALUES
 ('9.1.1', '9.1', 'CT', 1, 'A%'),
 ('9.1.2', '9.1', 'SEG', 2, 'A_'),
 ('9.1.3', '9.1', 'MR', NULL, NULL),
 ('9.1.4', '9.1', NULL, 4, NULL),
 ('9.2.1', '9.2', 'OT', 1, NULL),
 ('9.3.1', '9.3', 'CT', 1, NULL),
 ('9.4.1', '9.4', 'SR', 1, NULL),
 ('9.5.1', '9.5', 'MR', 1, NULL);
INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid,
                       series_instance_uid, modality, instance_number, transfer_syntax, path,
                       size, calling_ae, received_at, document_title, mime_type) VALUES
 ('9.1.1.1', '1.2.840.10008.5.1.4.1.1.2', '9.1', '9.1.1', 'CT', NULL, '1.2.840.10008.1.2.1', 'a/1', 1, 'AE', 0, NULL, NULL),
 ('9.1.1.2', '1.2.840.10008.5.1.4.1.1.2', '9.1', '9.1.1', 'CT', 2, '1.2.840.10008.1.2.1', 'a/2', 1, 'AE', 0, NULL, NULL),
 ('9.1.1.3', '1.2.840.10008.5.1.4.1.1.2', '9.1', '9.1.1', 'CT', NULL, '1.2.840.10008.1.2.1', 'a/3', 1, 'AE', 0, NULL, NULL),
 ('9.1.1.10', '1.2.840.10008.5.1.4.1.1.2', '9.1', '9.1.1', 'CT', 1, '1.2.840.10008.1.2.1', 'a/10', 1, 'AE', 0, NULL, NULL),
 ('9.1.2.1', '1.2.840.10008.5.1.4.1.1.66.4', '9.1', '9.1.2', 'SEG', 1, '1.2.840.10008.1.2.1', 'b/1', 1, 'AE', 0, NULL, NULL),
 ('9.1.4.1', '1.2.840.10008.5.1.4.1.1.7', '9.1', '9.1.4', NULL, NULL, '1.2.840.10008.1.2.1', 'c/1', 1, 'AE', 0, NULL, NULL),
 ('9.2.1.1', '1.2.840.10008.5.1.4.1.1.104.1', '9.2', '9.2.1', 'OT', 1, '1.2.840.10008.1.2.1', 'd/1', 1, 'AE', 0, 'A\B%C_D', 'application/pdf'),
 ('9.2.1.2', '1.2.840.10008.5.1.4.1.1.104.1', '9.2', '9.2.1', 'OT', 2, '1.2.840.10008.1.2.1', 'd/2', 1, 'AE', 0, 'A\BxxC_D', 'application/pdf'),
 ('9.2.1.3', '1.2.840.10008.5.1.4.1.1.104.1', '9.2', '9.2.1', 'OT', 3, '1.2.840.10008.1.2.1', 'd/3', 1, 'AE', 0, 'AxB%C_D', 'application/pdf'),
 ('9.2.1.4', '1.2.840.10008.5.1.4.1.1.104.1', '9.2', '9.2.1', 'OT', 4, '1.2.840.10008.1.2.1', 'd/4', 1, 'AE', 0, 'A\B%CxD', 'application/pdf'),
 ('9.3.1.1', '1.2.840.10008.5.1.4.1.1.2', '9.3', '9.3.1', 'CT', 1, '1.2.840.10008.1.2', 'e/1', 1, 'AE', 0, NULL, NULL),
 ('9.4.1.1', '1.2.840.10008.5.1.4.1.1.88.22', '9.4', '9.4.1', 'SR', 1, '1.2.840.10008.1.2.1', 'f/1', 1, 'AE', 0, NULL, NULL),
 ('9.5.1.1', '1.2.840.10008.5.1.4.1.1.4', '9.5', '9.5.1', 'MR', 1, '1.2.840.10008.1.2.1', 'g/1', 1, 'AE', 0, NULL, NULL);
"#;

/// The same index on both engines.
struct Both {
    lite: Connection,
    pg: postgres::Client,
    _dir: tempfile::TempDir,
}

fn pg_client(url: &str) -> postgres::Client {
    let cfg = m3dnode::db::pg::config(url, "m3dnode/query-test").unwrap();
    let mut client = m3dnode::db::pg::connect(&cfg).unwrap();
    m3dnode::db::pg::migrate::run(&mut client, "test").unwrap();
    client
}

/// The synthetic index plus [`EXTRA`] in a new SQLite file and a fresh PostgreSQL database,
/// with the same row counts checked.
fn both() -> Both {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.sqlite");
    drop(m3dnode::db::Db::open(&path).unwrap());
    let lite = Connection::open(&path).unwrap();
    let filled_lite = synthetic::fill(&lite, STUDIES, PER_STUDY, SEED).unwrap();
    lite.execute_batch(EXTRA).unwrap();

    let mut pg = pg_client(&common::pg::fresh_db());
    let filled_pg = synthetic::fill_pg(&mut pg, STUDIES, PER_STUDY, SEED).unwrap();
    pg.batch_execute(EXTRA).unwrap();
    assert_eq!(filled_lite, filled_pg);
    assert_eq!(filled_pg.studies, STUDIES);
    assert_eq!(filled_pg.instances, STUDIES * PER_STUDY);

    for table in ["patients", "studies", "series", "instances"] {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let n_lite: i64 = lite.query_row(&sql, [], |r| r.get(0)).unwrap();
        let n_pg: i64 = pg.query_one(sql.as_str(), &[]).unwrap().get(0);
        assert_eq!(n_lite, n_pg, "{table}");
    }
    Both {
        lite,
        pg,
        _dir: dir,
    }
}

fn parse(model: Model, service: Service, keys: &[(&str, &str)]) -> Query {
    Query::parse(model, service, &synthetic::identifier(keys), ELE)
        .unwrap_or_else(|e| panic!("{keys:?}: {e}"))
}

/// A response identifier as readable lines (`tag=value`), for assertion messages.
fn describe(bytes: &[u8]) -> String {
    let ts = TransferSyntaxRegistry.get(ELE).unwrap();
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, ts).unwrap();
    obj.iter()
        .map(|e| {
            format!(
                "{}={}",
                e.header().tag,
                e.to_str().map(|s| s.into_owned()).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The value of `tag` in a response, padding removed.
fn value(bytes: &[u8], tag: Tag) -> String {
    let ts = TransferSyntaxRegistry.get(ELE).unwrap();
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, ts).unwrap();
    obj.element(tag)
        .map(|e| e.to_str().map(|s| s.into_owned()).unwrap_or_default())
        .unwrap_or_default()
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// Runs a C-FIND on both engines without limit and asserts the same responses (as sets: the
/// order of C-FIND matches is not defined). Returns them.
fn same_find(b: &mut Both, query: &Query, what: &str) -> Vec<Vec<u8>> {
    let lite = query.find(&b.lite, 0, ELE).unwrap();
    let pg = query
        .find_pg(&mut b.pg, 0, ELE)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(!lite.truncated && !pg.truncated, "{what}");
    let (mut lite, mut pg) = (lite.matches, pg.matches);
    lite.sort();
    pg.sort();
    if lite != pg {
        let l: Vec<String> = lite.iter().map(|m| describe(m)).collect();
        let p: Vec<String> = pg.iter().map(|m| describe(m)).collect();
        assert_eq!(l, p, "{what}: SQLite (left) and PostgreSQL (right) differ");
        panic!("{what}: same descriptions, different bytes");
    }
    pg
}

/// Runs a retrieve on both engines and asserts the same instances in the same order.
fn same_instances(b: &mut Both, query: &Query, what: &str) -> Vec<InstanceRef> {
    let lite = query.instances(&b.lite).unwrap();
    let pg = query
        .instances_pg(&mut b.pg)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(lite, pg, "{what}");
    pg
}

const STUDY_RETURNS: &[(&str, &str)] = &[
    ("00100010", ""),
    ("00100020", ""),
    ("00100021", ""),
    ("00100030", ""),
    ("00100040", ""),
    ("00080020", ""),
    ("00080030", ""),
    ("00080050", ""),
    ("00200010", ""),
    ("00081030", ""),
    ("00080090", ""),
    ("00080061", ""),
    ("00201206", ""),
    ("00201208", ""),
    ("00081090", ""), // Manufacturer's Model Name: not in the index, returned empty
    ("00081110", ""), // Referenced Study Sequence: an empty sequence, returned empty
];
const PATIENT_RETURNS: &[(&str, &str)] = &[
    ("00100010", ""),
    ("00100020", ""),
    ("00100030", ""),
    ("00100040", ""),
    ("00201200", ""),
    ("00201202", ""),
    ("00201204", ""),
];
const SERIES_RETURNS: &[(&str, &str)] = &[
    ("00080060", ""),
    ("00200011", ""),
    ("0008103E", ""),
    ("00180015", ""),
    ("00200052", ""),
    ("00080021", ""),
    ("00080031", ""),
    ("00201209", ""),
];
const IMAGE_RETURNS: &[(&str, &str)] = &[
    ("00080016", ""),
    ("00080018", ""),
    ("00200013", ""),
    ("00420010", ""),
    ("00420012", ""),
];

/// `level` plus `keys` plus the return keys of `returns` that `keys` does not name.
fn with(
    level: &'static str,
    keys: &[(&'static str, String)],
    returns: &[&[(&'static str, &'static str)]],
) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = vec![("00080052".into(), level.into())];
    all.extend(keys.iter().map(|(t, v)| (t.to_string(), v.clone())));
    for set in returns {
        for (t, v) in *set {
            if !all.iter().any(|(u, _)| u == t) {
                all.push((t.to_string(), v.to_string()));
            }
        }
    }
    all
}

fn refs(keys: &[(String, String)]) -> Vec<(&str, &str)> {
    keys.iter().map(|(t, v)| (t.as_str(), v.as_str())).collect()
}

/// Every kind of key the module matches, at every level, through `find` and `find_pg`: the
/// same responses (every return key, the derived counts and Modalities in Study included);
/// and limits give the same count and truncation, with PostgreSQL's matches a subset of its
/// full answer.
#[test]
fn find_answers_are_the_same_on_both_engines() {
    let mut b = both();
    let scheme = synthetic::Scheme::new(SEED, PER_STUDY).unwrap();
    let studies: Vec<synthetic::Study> = scheme.studies().take(STUDIES as usize).collect();
    let s = |i: usize| &studies[i];
    let uid_list = |n: usize| {
        let mut v: Vec<String> = (0..n)
            .map(|i| s(i * 3 % studies.len()).uid.clone())
            .collect();
        v.push("1.2.3.404".into());
        v.join("\\")
    };
    let series_uid = |i: usize, k: usize| scheme.series(s(i))[k].uid.clone();
    let st = |k: &'static str, v: &str| (k, v.to_string());

    let study: Vec<Vec<(&'static str, String)>> = vec![
        vec![],
        vec![st("00100010", "SMI*")],
        vec![st("00100010", "*^J?HN")],
        vec![st("00100010", "smi*")],
        vec![st("00100010", "SMITH*\\JONES*\\100%*")],
        vec![st("00100010", "M?ller*")],
        vec![st("00100020", &s(10).patient.id)],
        vec![st("00100020", "P00001*")],
        vec![st("00100020", "P000001\\P000003\\X%1")],
        vec![st("00100020", "X*")],
        vec![st("0020000D", &s(17).uid)],
        vec![st("0020000D", &uid_list(3))],
        vec![st("0020000D", &uid_list(16))],
        vec![st("0020000D", &uid_list(40))],
        vec![st("00080020", &synthetic::month_range(5))],
        vec![st("00080020", "-20201231")],
        vec![st("00080020", "20230101-")],
        vec![st("00080020", &s(4).date)],
        vec![st("00080020", &format!("{}\\{}", s(4).date, s(9).date))],
        vec![st("00080030", "0800-1015")],
        vec![st("00080030", "10")],
        vec![st("00080030", "2300-")],
        vec![st("00080030", "-0800")],
        vec![st("00080030", "08:00-08:30")],
        vec![
            st("00080020", "20200115-20220131"),
            st("00080030", "1000-0900"),
        ],
        vec![st("00080020", "20200115-"), st("00080030", "1015-")],
        vec![st("00080020", "20200115"), st("00080030", "1000-1100")],
        vec![st("00080061", "MR")],
        vec![st("00080061", "CT\\SEG")],
        vec![st("00080061", "S*")],
        vec![st("00080061", "M?")],
        vec![st("00080050", "A0000001*")],
        vec![st("00080050", "ACC%1")],
        vec![st("00080050", "ACC?1")],
        vec![st("00200010", "1?")],
        vec![st("00200010", "S_*")],
        vec![st("00080090", "HOUSE*")],
        vec![st("00081030", "MR*")],
        vec![st("00100030", "19500101-19700101")],
        vec![st("00100040", "F")],
        vec![st("00100040", "F\\O")],
        vec![st("00100020", &s(0).patient.id), st("00100010", "*")],
    ];
    let mut nonempty = 0;
    for keys in &study {
        let all = with("STUDY", keys, &[STUDY_RETURNS]);
        let query = parse(Model::StudyRoot, Service::Find, &refs(&all));
        let found = same_find(&mut b, &query, &format!("STUDY {keys:?}"));
        nonempty += usize::from(!found.is_empty());
    }
    assert!(nonempty >= study.len() - 3, "{nonempty} of {}", study.len());

    // Patient Root at STUDY level: one patient's studies.
    let patient_root: Vec<Vec<(&'static str, String)>> = vec![
        vec![st("00100020", &s(0).patient.id)],
        vec![
            st("00100020", &s(20).patient.id),
            st("00080020", "20200101-"),
        ],
        vec![st("00100020", "X%1")],
        vec![st("00100020", "X5"), st("00100010", "M?ller*")],
    ];
    for keys in &patient_root {
        let all = with("STUDY", keys, &[STUDY_RETURNS]);
        let query = parse(Model::PatientRoot, Service::Find, &refs(&all));
        let found = same_find(&mut b, &query, &format!("PatientRoot STUDY {keys:?}"));
        assert!(!found.is_empty(), "PatientRoot STUDY {keys:?}");
    }

    let patient: Vec<Vec<(&'static str, String)>> = vec![
        vec![],
        vec![st("00100010", "SMI*")],
        vec![st("00100010", "UNDER_SCORE^?")],
        vec![st("00100020", "P000001\\P000002")],
        vec![st("00100030", "19600101-")],
        vec![st("00100040", "M")],
    ];
    for keys in &patient {
        let all = with("PATIENT", keys, &[PATIENT_RETURNS]);
        let query = parse(Model::PatientRoot, Service::Find, &refs(&all));
        let found = same_find(&mut b, &query, &format!("PATIENT {keys:?}"));
        assert!(!found.is_empty(), "PATIENT {keys:?}");
    }

    let series: Vec<Vec<(&'static str, String)>> = vec![
        vec![st("0020000D", &s(3).uid)],
        vec![st("0020000D", &s(3).uid), st("00080060", "MR\\CT")],
        vec![st("0020000D", &s(3).uid), st("0008103E", "*0.6\\T1*")],
        vec![st("0020000D", &s(3).uid), st("00200011", "1\\3")],
        vec![st("0020000D", &s(3).uid), st("0020000E", &series_uid(3, 1))],
        vec![st("0020000D", &s(8).uid), st("00080021", &s(8).date)],
        vec![
            st("0020000D", &s(8).uid),
            st("00080021", "20200101-"),
            st("00080031", "0700-"),
        ],
        vec![st("0020000D", "9.1")],
        vec![st("0020000D", "9.1"), st("0008103E", "A%")],
        vec![st("0020000D", "9.1"), st("0008103E", "A?")],
        vec![st("0020000D", "9.1"), st("00080060", "S*")],
    ];
    for keys in &series {
        let all = with("SERIES", keys, &[SERIES_RETURNS, STUDY_RETURNS]);
        // The keys of the levels above are return keys of a SERIES query.
        let query = parse(Model::StudyRoot, Service::Find, &refs(&all));
        let found = same_find(&mut b, &query, &format!("SERIES {keys:?}"));
        assert!(!found.is_empty(), "SERIES {keys:?}");
    }

    let image: Vec<Vec<(&'static str, String)>> = vec![
        vec![st("0020000D", &s(5).uid), st("0020000E", &series_uid(5, 0))],
        vec![
            st("0020000D", &s(5).uid),
            st("0020000E", &series_uid(5, 0)),
            st("00200013", "2"),
        ],
        vec![
            st("0020000D", &s(5).uid),
            st("0020000E", &series_uid(5, 0)),
            st(
                "00080018",
                &format!(
                    "{}\\{}",
                    scheme.instance_uid(5, 4),
                    scheme.instance_uid(5, 0)
                ),
            ),
        ],
        vec![st("0020000D", "9.1"), st("0020000E", "9.1.1")],
        vec![st("0020000D", "9.2"), st("0020000E", "9.2.1")],
        vec![
            st("0020000D", "9.2"),
            st("0020000E", "9.2.1"),
            st("00420010", "A\\B%C*"),
        ],
        vec![
            st("0020000D", "9.2"),
            st("0020000E", "9.2.1"),
            st("00420010", "A?B%C?D"),
        ],
        vec![
            st("0020000D", "9.2"),
            st("0020000E", "9.2.1"),
            st("00420012", "application/*"),
        ],
    ];
    for keys in &image {
        let all = with("IMAGE", keys, &[IMAGE_RETURNS, SERIES_RETURNS]);
        let query = parse(Model::StudyRoot, Service::Find, &refs(&all));
        let found = same_find(&mut b, &query, &format!("IMAGE {keys:?}"));
        assert!(!found.is_empty(), "IMAGE {keys:?}");
    }

    // Limits: the same count and truncation; PostgreSQL's matches are its matches.
    let limited: Vec<(Model, Vec<(String, String)>)> = vec![
        (Model::StudyRoot, with("STUDY", &[], &[STUDY_RETURNS])),
        (Model::PatientRoot, with("PATIENT", &[], &[PATIENT_RETURNS])),
        (
            Model::StudyRoot,
            with("SERIES", &[st("0020000D", "9.1")], &[SERIES_RETURNS]),
        ),
    ];
    for (model, keys) in &limited {
        let query = parse(*model, Service::Find, &refs(keys));
        let all = same_find(&mut b, &query, &format!("{keys:?}"));
        for limit in [1, 3, all.len() - 1, all.len(), all.len() + 1] {
            let lite: Found = query.find(&b.lite, limit, ELE).unwrap();
            let pg: Found = query.find_pg(&mut b.pg, limit, ELE).unwrap();
            assert_eq!(
                (lite.matches.len(), lite.truncated),
                (pg.matches.len(), pg.truncated),
                "limit {limit} {keys:?}"
            );
            assert_eq!(pg.matches.len(), limit.min(all.len()));
            assert_eq!(pg.truncated, limit < all.len());
            assert!(pg.matches.iter().all(|m| all.contains(m)));
        }
    }

    // A 10,000-UID list (Implicit VR: an explicit UI length has 16 bits): one array parameter.
    let mut uids: Vec<String> = studies.iter().map(|s| s.uid.clone()).collect();
    uids.extend((uids.len()..10_000).map(|i| format!("1.2.3.{i}")));
    let list = uids.join("\\");
    let ident = synthetic::identifier_in(&[("00080052", "STUDY"), ("0020000D", &list)], ILE);
    let query = Query::parse(Model::StudyRoot, Service::Find, &ident, ILE).unwrap();
    let found = same_find(&mut b, &query, "10,000 UIDs");
    assert_eq!(found.len(), STUDIES as usize);

    // The response transfer syntax is the caller's on both.
    let query = parse(
        Model::StudyRoot,
        Service::Find,
        &refs(&with("STUDY", &[st("0020000D", "9.5")], &[STUDY_RETURNS])),
    );
    let lite = query.find(&b.lite, 0, ILE).unwrap();
    let pg = query.find_pg(&mut b.pg, 0, ILE).unwrap();
    assert_eq!(lite.matches, pg.matches);
    assert_eq!(pg.matches.len(), 1);
}

/// Counts and Modalities in Study come back as SQLite gives them, on the study of several
/// modalities (one series without one) and on a synthetic study.
#[test]
fn derived_values_are_the_same_and_right() {
    let mut b = both();
    let keys = with("STUDY", &[("0020000D", "9.1".into())], &[STUDY_RETURNS]);
    let query = parse(Model::StudyRoot, Service::Find, &refs(&keys));
    let found = same_find(&mut b, &query, "9.1");
    assert_eq!(found.len(), 1);
    assert_eq!(value(&found[0], tags::MODALITIES_IN_STUDY), "CT\\MR\\SEG");
    assert_eq!(value(&found[0], tags::NUMBER_OF_STUDY_RELATED_SERIES), "4");
    assert_eq!(
        value(&found[0], tags::NUMBER_OF_STUDY_RELATED_INSTANCES),
        "6"
    );
    assert_eq!(value(&found[0], tags::STUDY_TIME), "101500.123");

    let keys = with(
        "PATIENT",
        &[("00100020", "P000001".into())],
        &[PATIENT_RETURNS],
    );
    let query = parse(Model::PatientRoot, Service::Find, &refs(&keys));
    let found = same_find(&mut b, &query, "P000001");
    assert_eq!(found.len(), 1);
    let scheme = synthetic::Scheme::new(SEED, PER_STUDY).unwrap();
    let n = scheme
        .studies()
        .take_while(|s| s.patient.index == 0)
        .count();
    assert_eq!(
        value(&found[0], tags::NUMBER_OF_PATIENT_RELATED_STUDIES),
        n.to_string()
    );
    assert_eq!(
        value(&found[0], tags::NUMBER_OF_PATIENT_RELATED_INSTANCES),
        (n as u64 * PER_STUDY).to_string()
    );
}

/// A retrieve case: the model, the service and the identifier's keys.
type Retrieve = (Model, Service, Vec<(&'static str, String)>);

/// C-MOVE/C-GET resolution gives the same instances in the same order, NULL instance numbers
/// first on both; a C-FIND identifier's instances too.
#[test]
fn retrieve_answers_are_the_same_on_both_engines() {
    let mut b = both();
    let scheme = synthetic::Scheme::new(SEED, PER_STUDY).unwrap();
    let studies: Vec<synthetic::Study> = scheme.studies().take(STUDIES as usize).collect();
    let list = |n: usize| {
        let mut v: Vec<String> = (0..n)
            .map(|i| studies[i * 7 % studies.len()].uid.clone())
            .collect();
        v.push("9.1".into());
        v.join("\\")
    };
    let series0 = scheme.series(&studies[2]);
    let cases: Vec<Retrieve> = vec![
        (
            Model::StudyRoot,
            Service::Move,
            vec![("00080052", "STUDY".into()), ("0020000D", "9.1".into())],
        ),
        (
            Model::StudyRoot,
            Service::Get,
            vec![("00080052", "STUDY".into()), ("0020000D", list(4))],
        ),
        (
            Model::StudyRoot,
            Service::Move,
            vec![("00080052", "STUDY".into()), ("0020000D", list(60))],
        ),
        (
            Model::PatientRoot,
            Service::Move,
            vec![
                ("00080052", "PATIENT".into()),
                ("00100020", studies[0].patient.id.clone()),
            ],
        ),
        (
            Model::StudyRoot,
            Service::Move,
            vec![
                ("00080052", "SERIES".into()),
                ("0020000D", studies[2].uid.clone()),
                (
                    "0020000E",
                    format!("{}\\{}", series0[2].uid, series0[0].uid),
                ),
            ],
        ),
        (
            Model::StudyRoot,
            Service::Get,
            vec![
                ("00080052", "IMAGE".into()),
                ("0020000D", "9.1".into()),
                ("0020000E", "9.1.1".into()),
                ("00080018", "9.1.1.10\\9.1.1.3\\9.1.1.1".into()),
            ],
        ),
        (
            Model::StudyRoot,
            Service::Find,
            vec![("00080052", "STUDY".into()), ("00100010", "SMI*".into())],
        ),
        (
            Model::StudyRoot,
            Service::Find,
            vec![
                ("00080052", "IMAGE".into()),
                ("0020000D", "9.2".into()),
                ("0020000E", "9.2.1".into()),
                ("00420010", "A?B%C?D".into()),
            ],
        ),
    ];
    for (model, service, keys) in &cases {
        let r: Vec<(&str, &str)> = keys.iter().map(|(t, v)| (*t, v.as_str())).collect();
        let ident = synthetic::identifier_in(&r, ILE);
        let query = Query::parse(*model, *service, &ident, ILE).unwrap();
        let found = same_instances(&mut b, &query, &format!("{service:?} {keys:?}"));
        assert!(!found.is_empty(), "{keys:?}");
    }

    let query = parse(
        Model::StudyRoot,
        Service::Move,
        &[
            ("00080052", "SERIES"),
            ("0020000D", "9.1"),
            ("0020000E", "9.1.1"),
        ],
    );
    let uids: Vec<String> = same_instances(&mut b, &query, "9.1.1")
        .into_iter()
        .map(|i| i.sop_instance_uid)
        .collect();
    assert_eq!(uids, ["9.1.1.1", "9.1.1.3", "9.1.1.10", "9.1.1.2"]);
}

/// On PostgreSQL a `%` or `_` of a query value matches only itself, with or without wildcards
/// around it, and `\` (possible in an ST value) too; `?` is one character, also a non-ASCII
/// one.
#[test]
fn percent_and_underscore_match_literally_on_postgres() {
    let mut b = both();
    let mut names = |keys: &[(&str, &str)], tag: Tag| -> Vec<String> {
        let query = parse(Model::StudyRoot, Service::Find, keys);
        let found = query.find_pg(&mut b.pg, 0, ELE).unwrap();
        let mut v: Vec<String> = found.matches.iter().map(|m| value(m, tag)).collect();
        v.sort();
        v
    };
    let pn = tags::PATIENT_NAME;
    let study = |name: &'static str| [("00080052", "STUDY"), ("00100010", name)];
    assert_eq!(names(&study("100%*"), pn), ["100%^PURE"]);
    assert_eq!(names(&study("100%^PURE"), pn), ["100%^PURE"]);
    assert_eq!(names(&study("100?^PURE"), pn), ["100%^PURE"]);
    assert_eq!(names(&study("1*%*"), pn), ["100%^PURE"]);
    assert_eq!(names(&study("UNDER_SCORE^?"), pn), ["UNDER_SCORE^Y"]);
    assert_eq!(names(&study("*_*"), pn), ["UNDER_SCORE^Y"]);
    assert_eq!(
        names(&study("UNDER?SCORE^*"), pn),
        ["UNDERXSCORE^Y", "UNDER_SCORE^Y"]
    );
    assert_eq!(names(&study("M?ller^J?rg"), pn), ["Müller^Jörg"]);
    assert_eq!(names(&study("M?ler*"), pn), Vec::<String>::new());
    let pid = tags::PATIENT_ID;
    let by_id = |id: &'static str| [("00080052", "STUDY"), ("00100020", id)];
    assert_eq!(names(&by_id("X%*"), pid), ["X%1"]);
    assert_eq!(names(&by_id("X_*"), pid), ["X_2"]);
    assert_eq!(
        names(&by_id("X?*"), pid),
        ["X%1", "X4", "X5", "X\\3", "X_2"]
    );
    assert_eq!(
        names(&by_id("X\\X4"), pid),
        ["X4"],
        "`\\` splits a LO value"
    );

    let title = |t: &'static str| {
        [
            ("00080052", "IMAGE"),
            ("0020000D", "9.2"),
            ("0020000E", "9.2.1"),
            ("00420010", t),
        ]
    };
    let dt = tags::DOCUMENT_TITLE;
    assert_eq!(names(&title("A\\B%C*"), dt), ["A\\B%C_D", "A\\B%CxD"]);
    assert_eq!(names(&title("A\\B%C_D"), dt), ["A\\B%C_D"]);
    assert_eq!(
        names(&title("A?B%C?D"), dt),
        ["A\\B%C_D", "A\\B%CxD", "AxB%C_D"]
    );
    assert_eq!(names(&title("*\\B*"), dt).len(), 3);
    assert_eq!(names(&title("A%*"), dt), Vec::<String>::new());
}

/// `fill_pg` sets the patients' identity past the keys it wrote, so the store's own inserts
/// (no explicit key) do not collide; a bad seed is refused before anything is written.
#[test]
fn fill_pg_sets_the_patient_sequence() {
    let mut pg = pg_client(&common::pg::fresh_db());
    let err = synthetic::fill_pg(&mut pg, 5, 3, synthetic::MAX_SEED + 1).unwrap_err();
    assert!(matches!(err, synthetic::FillError::Scheme(_)), "{err}");
    let filled = synthetic::fill_pg(&mut pg, 40, 3, 2).unwrap();
    assert_eq!(
        (filled.studies, filled.series, filled.instances),
        (40, 120, 120)
    );
    let pk: i64 = pg
        .query_one(
            "INSERT INTO patients (patient_id, issuer) VALUES ('NEW', '') RETURNING pk",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pk, filled.patients as i64 + 1);
}
