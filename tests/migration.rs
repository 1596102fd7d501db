//! The versioned index schema: a storage written by the release before versioning
//! (`testdata/storage-v0`, made by that release's binary) opens in the current node, is
//! migrated in place with its query index back-filled from the files, finishes after an
//! interruption, and a storage newer than the binary is refused.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use m3dnode::db::{Db, DbError, LATEST_VERSION, MigrateOptions};

/// A copy of the old storage as `<dir>/var` (the storage root `Node::start_in` uses).
fn old_storage() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let var = dir.path().join("var");
    let out = run(Command::new("cp")
        .arg("-a")
        .arg(testdata().join("storage-v0").join("var"))
        .arg(&var));
    assert!(out.status.success(), "{}", text(&out));
    (dir, var)
}

/// Every stored file with its size.
fn files_under(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "dcm") {
                out.push((p.clone(), e.metadata().unwrap().len()));
            }
        }
    }
    out.sort();
    out
}

fn version(index: &Path) -> i64 {
    let c = rusqlite::Connection::open(index).unwrap();
    c.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

fn strings(db: &Db, sql: &str) -> Vec<String> {
    db.with(|c| c.prepare(sql)?.query_map([], |r| r.get(0))?.collect())
        .unwrap()
}

fn count(db: &Db, sql: &str) -> i64 {
    db.with(|c| c.query_row(sql, [], |r| r.get(0))).unwrap()
}

/// What the old release wrote and must survive: (table, state) -> rows.
fn states(db: &Db) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (table, sql) in [
        ("jobs", "SELECT state, COUNT(*) FROM jobs GROUP BY state"),
        (
            "outbox",
            "SELECT destination || ' ' || state, COUNT(*) FROM outbox GROUP BY 1",
        ),
        (
            "series_work",
            "SELECT state, COUNT(*) FROM series_work GROUP BY state",
        ),
    ] {
        let rows: Vec<(String, i64)> = db
            .with(|c| {
                c.prepare(sql)?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .unwrap();
        for (k, n) in rows {
            out.insert(format!("{table} {k}"), n);
        }
    }
    out
}

/// The query index is complete and holds no duplicates: one series row per stored series, one
/// study row per stored study, one patient per (ID, issuer).
fn assert_back_filled(db: &Db) {
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM series"),
        count(
            db,
            "SELECT COUNT(DISTINCT series_instance_uid) FROM instances"
        )
    );
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM studies"),
        count(
            db,
            "SELECT COUNT(DISTINCT study_instance_uid) FROM instances"
        )
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM series s JOIN studies t ON t.study_uid = s.study_uid JOIN patients p ON p.pk = t.patient_pk"
        ),
        count(db, "SELECT COUNT(*) FROM series")
    );
    // Six source patients (five relabelled slices, the sphere series); results share theirs.
    assert_eq!(count(db, "SELECT COUNT(*) FROM patients"), 6);
    let mut names = strings(
        db,
        "SELECT patient_id || ' ' || name FROM patients ORDER BY 1",
    );
    names.sort();
    assert_eq!(
        names,
        [
            "PID-CN Wang^XiaoDong=王^小东",
            "PID-DE Müller^Jürgen",
            "PID-JP Yamada^Tarou=山田^太郎=やまだ^たろう",
            "PID-KR Hong^Gildong=洪^吉洞=홍^길동",
            "PID-SPHERE Sphère^Test",
            "PID-UT Wang^XiaoDong=王^小東",
        ]
    );
    assert_eq!(
        strings(
            db,
            "SELECT DISTINCT issuer FROM patients WHERE patient_id LIKE 'PID-__' ORDER BY 1"
        ),
        ["M3D-FIXTURE"]
    );
    // Study and series attributes, decoded; dates as DA text.
    assert_eq!(
        strings(
            db,
            "SELECT t.study_date || ' ' || t.accession || ' ' || t.description || ' ' || t.referring FROM studies t JOIN patients p ON p.pk = t.patient_pk WHERE p.patient_id = 'PID-KR'"
        ),
        ["20240101 ACC0 洪^吉洞 Hong^Gildong=洪^吉洞=홍^길동"]
    );
    assert_eq!(
        strings(
            db,
            "SELECT t.charset FROM studies t JOIN patients p ON p.pk = t.patient_pk WHERE p.patient_id = 'PID-JP'"
        ),
        ["\\ISO 2022 IR 87"]
    );
    assert_eq!(
        strings(
            db,
            "SELECT modality || ' ' || series_number || ' ' || description || ' ' || body_part || ' ' || series_date FROM series WHERE description = 'sphere phantom'"
        ),
        ["MR 3 sphere phantom HEAD 20240301"]
    );
    // Schema 3: every series has its first instance's calling AE title and arrival time.
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM series s WHERE s.calling_ae IS NULL OR s.received_at IS NULL
             OR s.received_at != (SELECT MIN(received_at) FROM instances WHERE series_instance_uid = s.series_uid)"
        ),
        0
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM series s WHERE s.calling_ae NOT IN
             (SELECT calling_ae FROM instances WHERE series_instance_uid = s.series_uid)"
        ),
        0
    );
    // The results: M3D series in the source study, with Document Title and MIME type.
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM series WHERE modality = 'M3D' AND frame_of_reference_uid IS NOT NULL"
        ),
        4
    );
    assert_eq!(
        strings(
            db,
            "SELECT DISTINCT mime_type FROM instances WHERE modality = 'M3D'"
        ),
        ["model/stl"]
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM instances WHERE modality = 'M3D' AND document_title LIKE '%surface%'"
        ),
        4
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM instances WHERE modality != 'M3D' AND document_title IS NOT NULL"
        ),
        0
    );
}

fn expected_states() -> BTreeMap<String, i64> {
    [
        ("jobs done", 4),
        ("outbox DOWN pending", 4),
        ("outbox PACS sent", 4),
        ("series_work processed", 4),
        ("series_work unrouted", 2),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect()
}

#[test]
fn a_storage_of_the_release_before_versioning_is_migrated_in_place_by_serve() {
    let (dir, var) = old_storage();
    let index = var.join("index.sqlite");
    assert_eq!(version(&index), 0);
    let files_before = files_under(&var);
    let mut node = Node::start_in(dir, "");
    let log = node.log();
    assert!(log.contains("migrated to schema 1"), "{log}");
    assert!(log.contains("index migrated to schema 2"), "{log}");
    assert!(log.contains("instances=25"), "{log}");
    // No patient data in the migration's log lines.
    for secret in ["PID-", "Hong", "Yamada", "Müller", "Sphère"] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
    assert_eq!(version(&index), LATEST_VERSION);
    let db = node.index();
    assert_back_filled(&db);
    // Schema 5: the Storage Commitment and MPPS tables exist, empty.
    let mut tables = strings(
        &db,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN
         ('commitments', 'commitment_items', 'mpps', 'mpps_instances') ORDER BY name",
    );
    tables.sort();
    assert_eq!(
        tables,
        ["commitment_items", "commitments", "mpps", "mpps_instances"]
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM mpps"), 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM mpps_instances"), 0);
    assert_eq!(states(&db), expected_states());
    assert_eq!(db.count().unwrap(), 25);
    assert_eq!(files_under(&var), files_before, "the files are untouched");
    // The migrated node serves: a new instance gets its query rows at once.
    let out = storescu(&node, &[testdata().join("files/pydicom/CT_small.dcm")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_for(std::time::Duration::from_secs(10), || node
        .index()
        .count()
        .unwrap()
        == 26));
    assert_eq!(count(&node.index(), "SELECT COUNT(*) FROM patients"), 7);
    // `m3dnode jobs` reads the migrated index beside the running node.
    let jobs = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["jobs", "--config"])
        .arg(node.dir.path().join("m3dnode.toml")));
    assert!(jobs.status.success(), "{}", text(&jobs));
    assert_eq!(text(&jobs).matches(" done ").count(), 4, "{}", text(&jobs));
    assert!(node.terminate().success());
    // A second start has nothing to migrate.
    let node = node.restart();
    // The log file is appended to: the first start's lines only.
    let log = node.log();
    assert_eq!(
        log.matches("migrating the index to schema 2").count(),
        1,
        "{log}"
    );
}

#[test]
fn an_interrupted_back_fill_resumes_and_writes_no_duplicates() {
    let (dir, var) = old_storage();
    let index = var.join("index.sqlite");
    let opts = MigrateOptions {
        batch: 4,
        stop_after_batches: Some(2),
        ..MigrateOptions::default()
    };
    match Db::open_with(&index, &opts) {
        Err(DbError::MigrationStopped { batches: 2 }) => {}
        other => panic!("expected a stop after 2 batches, got {:?}", other.err()),
    }
    // Schema 1 with migration 2 under way: part of the query index is there.
    assert_eq!(version(&index), 1);
    {
        let c = rusqlite::Connection::open(&index).unwrap();
        let done: i64 = c
            .query_row("SELECT last_rowid FROM backfill", [], |r| r.get(0))
            .unwrap();
        assert_eq!(done, 8);
        let series: i64 = c
            .query_row("SELECT COUNT(*) FROM series", [], |r| r.get(0))
            .unwrap();
        assert!((1..10).contains(&series), "{series}");
    }
    // Stopped again one batch later; then the progress of the last two batches is lost (as
    // if their commits had not reached the disk), so they are done twice.
    let again = MigrateOptions {
        batch: 4,
        stop_after_batches: Some(1),
        ..MigrateOptions::default()
    };
    assert!(matches!(
        Db::open_with(&index, &again),
        Err(DbError::MigrationStopped { batches: 1 })
    ));
    {
        let c = rusqlite::Connection::open(&index).unwrap();
        let done: i64 = c
            .query_row("SELECT last_rowid FROM backfill", [], |r| r.get(0))
            .unwrap();
        assert_eq!(done, 12);
        c.execute("UPDATE backfill SET last_rowid = 4", []).unwrap();
    }
    // The node finishes the migration at its start, without duplicates.
    let node = Node::start_in(dir, "");
    let log = node.log();
    assert!(log.contains("already_done=4"), "{log}");
    assert_eq!(version(&index), LATEST_VERSION);
    let db = node.index();
    assert_back_filled(&db);
    assert_eq!(states(&db), expected_states());
}

#[test]
fn a_storage_newer_than_the_binary_is_refused_at_start_up() {
    let (dir, var) = old_storage();
    let index = var.join("index.sqlite");
    {
        let c = rusqlite::Connection::open(&index).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    let config = dir.path().join("m3dnode.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nlisten = \"127.0.0.1:0\"\nstorage = \"{}\"\nmin_free_mb = 1\n[http]\nlisten = \"\"\n",
            var.display()
        ),
    )
    .unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["serve", "--config"])
        .arg(&config));
    assert!(!out.status.success());
    let err = text(&out);
    assert!(
        err.contains(&format!(
            "schema version 99, newer than the {LATEST_VERSION} this m3dnode knows"
        )),
        "{err}"
    );
    assert_eq!(version(&index), 99, "the storage was not touched");
    // `m3dnode jobs` refuses it too.
    let jobs = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["jobs", "--config"])
        .arg(&config));
    assert!(!jobs.status.success());
    assert!(
        text(&jobs).contains(&format!("newer than the {LATEST_VERSION}")),
        "{}",
        text(&jobs)
    );
}
