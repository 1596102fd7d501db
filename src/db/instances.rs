//! `instances` and the query index (`patients`, `studies`, `series`): what the store writes
//! for every instance, received or made by the node.
//!
//! Every instance writes its patient, study and series rows in the transaction of its own row.
//! Ingest must not pay three upserts per instance for rows that the first instance of its
//! series already wrote, so [`Written`] remembers, per study and per series, a fingerprint of
//! the values last written; an instance whose values match skips the upserts. The memory is
//! updated only after the transaction commits, and forgotten when it grows past a bound (the
//! cost of forgetting is one upsert more).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use tracing::debug;

use super::sql::{Conn, Row, Stmt, stmt};
use super::{Db, DbError};
use crate::store::header::{Header, QueryAttrs};

/// One indexed instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    /// SOP Instance UID (primary key).
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Modality, when present.
    pub modality: Option<String>,
    /// Instance Number, when present.
    pub instance_number: Option<i64>,
    /// Transfer syntax the instance is stored in (as received).
    pub transfer_syntax: String,
    /// Path relative to the storage root.
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// Calling AE title of the association that brought it (empty for local results).
    pub calling_ae: String,
}

/// An instance's row as the store writes it.
#[derive(Debug, Clone)]
pub struct NewRow {
    /// The data set's header.
    pub header: Header,
    /// Transfer syntax it is stored in.
    pub transfer_syntax: String,
    /// Path relative to the storage root.
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// Calling AE title it came from.
    pub calling_ae: String,
}

/// Seconds since the Unix epoch, the time unit of every table.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Studies and series this many apart are forgotten at once (see the module documentation).
const REMEMBERED: usize = 20_000;

/// Fingerprints of the query rows written last, by study and by series UID.
#[derive(Default)]
pub(super) struct Written {
    studies: HashMap<String, u64>,
    series: HashMap<String, u64>,
}

impl Written {
    fn forget(&mut self, study: &str, series: &str) {
        self.studies.remove(study);
        self.series.remove(series);
    }
}

fn fingerprint(v: impl Hash) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// The values of a study row (with its patient's), as written.
fn study_values(h: &Header) -> impl Hash + '_ {
    let q = &h.query;
    (
        &q.charset,
        (
            &q.patient_id,
            &q.issuer,
            &q.patient_name,
            &q.birth_date,
            &q.sex,
        ),
        (
            &q.study_date,
            &q.study_time,
            &q.accession,
            &q.study_id,
            &q.study_description,
            &q.referring,
        ),
    )
}

fn series_values(h: &Header) -> impl Hash + '_ {
    let q = &h.query;
    (
        &h.study_instance_uid,
        &q.charset,
        &h.modality,
        q.series_number,
        &h.series_description,
        &h.body_part_examined,
        &h.frame_of_reference_uid,
        &q.series_date,
        &q.series_time,
    )
}

static INSERT_INSTANCE: Stmt = stmt!(
    lite: "INSERT OR REPLACE INTO instances (sop_instance_uid, sop_class_uid,
    study_instance_uid, series_instance_uid, modality, instance_number, transfer_syntax, path,
    size, calling_ae, received_at, document_title, mime_type)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    pg: "INSERT INTO instances (sop_instance_uid, sop_class_uid,
    study_instance_uid, series_instance_uid, modality, instance_number, transfer_syntax, path,
    size, calling_ae, received_at, document_title, mime_type)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
    ON CONFLICT (sop_instance_uid) DO UPDATE SET sop_class_uid = EXCLUDED.sop_class_uid,
        study_instance_uid = EXCLUDED.study_instance_uid,
        series_instance_uid = EXCLUDED.series_instance_uid, modality = EXCLUDED.modality,
        instance_number = EXCLUDED.instance_number, transfer_syntax = EXCLUDED.transfer_syntax,
        path = EXCLUDED.path, size = EXCLUDED.size, calling_ae = EXCLUDED.calling_ae,
        received_at = EXCLUDED.received_at, document_title = EXCLUDED.document_title,
        mime_type = EXCLUDED.mime_type",
);

fn insert_instance(c: &mut Conn<'_>, r: &NewRow, now: f64) -> Result<(), DbError> {
    let h = &r.header;
    c.exec(
        &INSERT_INSTANCE,
        &[
            &h.sop_instance_uid,
            &h.sop_class_uid,
            &h.study_instance_uid,
            &h.series_instance_uid,
            &h.modality,
            &h.instance_number,
            &r.transfer_syntax,
            &r.path,
            &(r.size as i64),
            &r.calling_ae,
            &now,
            &h.query.document_title,
            &h.query.mime_type,
        ],
    )?;
    Ok(())
}

static UPSERT_PATIENT: Stmt = stmt!(
    lite: "INSERT INTO patients (patient_id, issuer, name, birth_date, sex, charset)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (patient_id, issuer) DO UPDATE SET name = excluded.name,
             birth_date = excluded.birth_date, sex = excluded.sex, charset = excluded.charset
         WHERE name IS NOT excluded.name OR birth_date IS NOT excluded.birth_date
             OR sex IS NOT excluded.sex OR charset IS NOT excluded.charset",
    pg: "INSERT INTO patients (patient_id, issuer, name, birth_date, sex, charset)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (patient_id, issuer) DO UPDATE SET name = EXCLUDED.name,
             birth_date = EXCLUDED.birth_date, sex = EXCLUDED.sex, charset = EXCLUDED.charset
         WHERE patients.name IS DISTINCT FROM EXCLUDED.name
             OR patients.birth_date IS DISTINCT FROM EXCLUDED.birth_date
             OR patients.sex IS DISTINCT FROM EXCLUDED.sex
             OR patients.charset IS DISTINCT FROM EXCLUDED.charset",
);
static PATIENT_PK: Stmt = stmt!("SELECT pk FROM patients WHERE patient_id = ?1 AND issuer = ?2");
static STUDY_PATIENT: Stmt = stmt!("SELECT patient_pk FROM studies WHERE study_uid = ?1");
static UPSERT_STUDY: Stmt = stmt!(
    lite: "INSERT INTO studies (study_uid, patient_pk, study_date, study_time, accession, study_id,
             description, referring, charset)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (study_uid) DO UPDATE SET patient_pk = excluded.patient_pk,
             study_date = excluded.study_date, study_time = excluded.study_time,
             accession = excluded.accession, study_id = excluded.study_id,
             description = excluded.description, referring = excluded.referring,
             charset = excluded.charset
         WHERE patient_pk IS NOT excluded.patient_pk OR study_date IS NOT excluded.study_date
             OR study_time IS NOT excluded.study_time OR accession IS NOT excluded.accession
             OR study_id IS NOT excluded.study_id OR description IS NOT excluded.description
             OR referring IS NOT excluded.referring OR charset IS NOT excluded.charset",
    pg: "INSERT INTO studies (study_uid, patient_pk, study_date, study_time, accession, study_id,
             description, referring, charset)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (study_uid) DO UPDATE SET patient_pk = EXCLUDED.patient_pk,
             study_date = EXCLUDED.study_date, study_time = EXCLUDED.study_time,
             accession = EXCLUDED.accession, study_id = EXCLUDED.study_id,
             description = EXCLUDED.description, referring = EXCLUDED.referring,
             charset = EXCLUDED.charset
         WHERE studies.patient_pk IS DISTINCT FROM EXCLUDED.patient_pk
             OR studies.study_date IS DISTINCT FROM EXCLUDED.study_date
             OR studies.study_time IS DISTINCT FROM EXCLUDED.study_time
             OR studies.accession IS DISTINCT FROM EXCLUDED.accession
             OR studies.study_id IS DISTINCT FROM EXCLUDED.study_id
             OR studies.description IS DISTINCT FROM EXCLUDED.description
             OR studies.referring IS DISTINCT FROM EXCLUDED.referring
             OR studies.charset IS DISTINCT FROM EXCLUDED.charset",
);
static UPSERT_SERIES: Stmt = stmt!(
    lite: "INSERT INTO series (series_uid, study_uid, modality, series_number, description,
             body_part, frame_of_reference_uid, series_date, series_time, charset)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (series_uid) DO UPDATE SET study_uid = excluded.study_uid,
             modality = excluded.modality, series_number = excluded.series_number,
             description = excluded.description, body_part = excluded.body_part,
             frame_of_reference_uid = excluded.frame_of_reference_uid,
             series_date = excluded.series_date, series_time = excluded.series_time,
             charset = excluded.charset
         WHERE study_uid IS NOT excluded.study_uid OR modality IS NOT excluded.modality
             OR series_number IS NOT excluded.series_number
             OR description IS NOT excluded.description OR body_part IS NOT excluded.body_part
             OR frame_of_reference_uid IS NOT excluded.frame_of_reference_uid
             OR series_date IS NOT excluded.series_date OR series_time IS NOT excluded.series_time
             OR charset IS NOT excluded.charset",
    pg: "INSERT INTO series (series_uid, study_uid, modality, series_number, description,
             body_part, frame_of_reference_uid, series_date, series_time, charset)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (series_uid) DO UPDATE SET study_uid = EXCLUDED.study_uid,
             modality = EXCLUDED.modality, series_number = EXCLUDED.series_number,
             description = EXCLUDED.description, body_part = EXCLUDED.body_part,
             frame_of_reference_uid = EXCLUDED.frame_of_reference_uid,
             series_date = EXCLUDED.series_date, series_time = EXCLUDED.series_time,
             charset = EXCLUDED.charset
         WHERE series.study_uid IS DISTINCT FROM EXCLUDED.study_uid
             OR series.modality IS DISTINCT FROM EXCLUDED.modality
             OR series.series_number IS DISTINCT FROM EXCLUDED.series_number
             OR series.description IS DISTINCT FROM EXCLUDED.description
             OR series.body_part IS DISTINCT FROM EXCLUDED.body_part
             OR series.frame_of_reference_uid IS DISTINCT FROM EXCLUDED.frame_of_reference_uid
             OR series.series_date IS DISTINCT FROM EXCLUDED.series_date
             OR series.series_time IS DISTINCT FROM EXCLUDED.series_time
             OR series.charset IS DISTINCT FROM EXCLUDED.charset",
);
static STAMP_ORIGIN: Stmt = stmt!(
    "UPDATE series SET calling_ae = ?2, received_at = ?3
     WHERE series_uid = ?1 AND received_at IS NULL"
);

/// Writes (insert, or update when a value differs) the patient and study rows of `h`.
pub(super) fn upsert_study(c: &mut Conn<'_>, h: &Header) -> Result<(), DbError> {
    let q: &QueryAttrs = &h.query;
    let patient_id = q.patient_id.as_deref().unwrap_or("");
    let issuer = q.issuer.as_deref().unwrap_or("");
    c.exec(
        &UPSERT_PATIENT,
        &[
            &patient_id,
            &issuer,
            &q.patient_name,
            &q.birth_date,
            &q.sex,
            &q.charset,
        ],
    )?;
    let patient_pk: i64 = c.one(&PATIENT_PK, &[&patient_id, &issuer], |r| r.get(0))?;
    let before: Option<i64> = c.opt(&STUDY_PATIENT, &[&h.study_instance_uid], |r| r.get(0))?;
    if before.is_some_and(|b| b != patient_pk) {
        // Two patients' values for one study: the last writer wins (contract).
        debug!(study_instance_uid = %h.study_instance_uid, "an instance gives its study other patient values; the study now refers to them");
    }
    c.exec(
        &UPSERT_STUDY,
        &[
            &h.study_instance_uid,
            &patient_pk,
            &q.study_date,
            &q.study_time,
            &q.accession,
            &q.study_id,
            &q.study_description,
            &q.referring,
            &q.charset,
        ],
    )?;
    Ok(())
}

/// Writes (insert, or update when a value differs) the series row of `h`.
pub(super) fn upsert_series(c: &mut Conn<'_>, h: &Header) -> Result<(), DbError> {
    let q = &h.query;
    c.exec(
        &UPSERT_SERIES,
        &[
            &h.series_instance_uid,
            &h.study_instance_uid,
            &h.modality,
            &q.series_number,
            &h.series_description,
            &h.body_part_examined,
            &h.frame_of_reference_uid,
            &q.series_date,
            &q.series_time,
            &q.charset,
        ],
    )?;
    Ok(())
}

/// Records where and when a series row's first instance came from (schema 3; kept apart from
/// [`upsert_series`], which migration 2's back-fill runs before these columns exist). Runs
/// only when the series row was written, so it costs ingest nothing per instance.
fn stamp_series_origin(
    c: &mut Conn<'_>,
    series_uid: &str,
    calling_ae: &str,
    now: f64,
) -> Result<(), DbError> {
    c.exec(&STAMP_ORIGIN, &[&series_uid, &calling_ae, &now])?;
    Ok(())
}

/// Query-row fingerprints an instance would make current: (study, series), each `None` when
/// already current.
type Stale = (Option<(String, u64)>, Option<(String, u64)>);

impl Written {
    fn stale(&self, h: &Header) -> Stale {
        let study = fingerprint(study_values(h));
        let series = fingerprint(series_values(h));
        (
            (self.studies.get(&h.study_instance_uid) != Some(&study))
                .then(|| (h.study_instance_uid.clone(), study)),
            (self.series.get(&h.series_instance_uid) != Some(&series))
                .then(|| (h.series_instance_uid.clone(), series)),
        )
    }

    fn remember(&mut self, stale: Vec<Stale>) {
        if self.studies.len() + self.series.len() > REMEMBERED {
            self.studies.clear();
            self.series.clear();
        }
        for (study, series) in stale {
            if let Some((k, v)) = study {
                self.studies.insert(k, v);
            }
            if let Some((k, v)) = series {
                self.series.insert(k, v);
            }
        }
    }
}

static GET: Stmt = stmt!(
    "SELECT sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,
     modality, instance_number, transfer_syntax, path, size, calling_ae
     FROM instances WHERE sop_instance_uid = ?1"
);
static HAS: Stmt = stmt!("SELECT 1 FROM instances WHERE sop_instance_uid = ?1");
/// Instance Number order; instances without one first, on both backends.
static SERIES: Stmt = stmt!(
    lite: "SELECT sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,
     modality, instance_number, transfer_syntax, path, size, calling_ae
     FROM instances WHERE series_instance_uid = ?1 ORDER BY instance_number, path",
    pg: "SELECT sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,
     modality, instance_number, transfer_syntax, path, size, calling_ae
     FROM instances WHERE series_instance_uid = ?1 ORDER BY instance_number NULLS FIRST, path",
);
static COUNT: Stmt = stmt!("SELECT COUNT(*) FROM instances");
static FIND_SERIES: Stmt = stmt!(
    "SELECT study_instance_uid, series_instance_uid FROM instances WHERE sop_instance_uid = ?1"
);
static DELETE_INSTANCE: Stmt = stmt!("DELETE FROM instances WHERE sop_instance_uid = ?1");
static DELETE_SERIES: Stmt = stmt!(
    "DELETE FROM series WHERE series_uid = ?1
     AND NOT EXISTS (SELECT 1 FROM instances WHERE series_instance_uid = ?1)"
);
static DELETE_STUDY: Stmt = stmt!(
    "DELETE FROM studies WHERE study_uid = ?1
     AND NOT EXISTS (SELECT 1 FROM series WHERE study_uid = ?1)"
);
static DELETE_PATIENT: Stmt = stmt!(
    "DELETE FROM patients WHERE pk = ?1
     AND NOT EXISTS (SELECT 1 FROM studies WHERE patient_pk = ?1)"
);

impl Db {
    /// Writes the rows of several instances (instance row, and the patient/study/series rows
    /// that are not known to be current) in one transaction: one WAL append for a whole group
    /// commit. A lone instance whose query rows are current is one autocommitted insert.
    ///
    /// On PostgreSQL two processes may upsert the same study and series rows at once: the
    /// batch is written in (study, series) order, so that two batches lock shared rows in the
    /// same order, and a transaction that a deadlock still aborted runs once more.
    pub fn upsert_all<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a NewRow>,
    ) -> Result<(), DbError> {
        let mut rows: Vec<&NewRow> = rows.into_iter().collect();
        if rows.is_empty() {
            return Ok(());
        }
        if self.is_postgres() {
            // Stable: within a study, the batch's own order (the first instance writes).
            rows.sort_by(|a, b| {
                (&a.header.study_instance_uid, &a.header.series_instance_uid)
                    .cmp(&(&b.header.study_instance_uid, &b.header.series_instance_uid))
            });
        }
        let now = now();
        let stale: Vec<Stale> = {
            let written = self.written.lock().map_err(|_| DbError::Poisoned)?;
            // Within one batch, the first instance of a study or series writes its rows.
            let mut seen = Written::default();
            rows.iter()
                .map(|r| {
                    let (study, series) = written.stale(&r.header);
                    let study =
                        study.filter(|(k, v)| seen.studies.insert(k.clone(), *v) != Some(*v));
                    let series =
                        series.filter(|(k, v)| seen.series.insert(k.clone(), *v) != Some(*v));
                    (study, series)
                })
                .collect()
        };
        let write = |c: &mut Conn<'_>| -> Result<(), DbError> {
            for (r, (study, series)) in rows.iter().zip(&stale) {
                if study.is_some() {
                    upsert_study(c, &r.header)?;
                }
                if series.is_some() {
                    upsert_series(c, &r.header)?;
                    stamp_series_origin(c, &r.header.series_instance_uid, &r.calling_ae, now)?;
                }
                insert_instance(c, r, now)?;
            }
            Ok(())
        };
        let lone_insert = rows.len() == 1 && stale[0].0.is_none() && stale[0].1.is_none();
        if lone_insert {
            self.run(write)?;
        } else {
            self.tx(write)?;
        }
        self.written
            .lock()
            .map_err(|_| DbError::Poisoned)?
            .remember(stale);
        Ok(())
    }

    /// Inserts or replaces the row of one instance (and its query rows).
    pub fn upsert(
        &self,
        header: &Header,
        ts: &str,
        rel_path: &str,
        size: u64,
        calling_ae: &str,
    ) -> Result<(), DbError> {
        self.upsert_all([&NewRow {
            header: header.clone(),
            transfer_syntax: ts.to_string(),
            path: rel_path.to_string(),
            size,
            calling_ae: calling_ae.to_string(),
        }])
    }

    /// The row of one instance.
    pub fn get(&self, sop_instance_uid: &str) -> Result<Option<InstanceRow>, DbError> {
        self.run(|c| c.opt(&GET, &[&sop_instance_uid], row_to_instance))
    }

    /// Whether an instance has a row (cheaper than [`Db::get`] for the start-up repair).
    pub fn has_instance(&self, sop_instance_uid: &str) -> Result<bool, DbError> {
        self.run(|c| Ok(c.opt(&HAS, &[&sop_instance_uid], |_| Ok(()))?.is_some()))
    }

    /// Every instance of a series, in Instance Number order (those without one first).
    pub fn series(&self, series_instance_uid: &str) -> Result<Vec<InstanceRow>, DbError> {
        self.run(|c| c.all(&SERIES, &[&series_instance_uid], row_to_instance))
    }

    /// Number of indexed instances.
    pub fn count(&self) -> Result<u64, DbError> {
        self.run(|c| c.one(&COUNT, &[], |r| r.get::<i64>(0)))
            .map(|n| n as u64)
    }

    /// Removes an instance's row, and the series, study and patient rows it leaves empty (a
    /// query must not find a series whose instances were dropped). Unknown UIDs are ignored.
    pub fn delete_instance(&self, sop_instance_uid: &str) -> Result<(), DbError> {
        let found: Option<(String, String)> = self.run(|c| {
            c.opt(&FIND_SERIES, &[&sop_instance_uid], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
        })?;
        let Some((study, series)) = found else {
            return Ok(());
        };
        self.written
            .lock()
            .map_err(|_| DbError::Poisoned)?
            .forget(&study, &series);
        self.tx(|c| {
            c.exec(&DELETE_INSTANCE, &[&sop_instance_uid])?;
            c.exec(&DELETE_SERIES, &[&series])?;
            let patient: Option<i64> = c.opt(&STUDY_PATIENT, &[&study], |r| r.get(0))?;
            c.exec(&DELETE_STUDY, &[&study])?;
            if let Some(pk) = patient {
                c.exec(&DELETE_PATIENT, &[&pk])?;
            }
            Ok(())
        })
    }
}

fn row_to_instance(r: &Row<'_>) -> Result<InstanceRow, DbError> {
    Ok(InstanceRow {
        sop_instance_uid: r.get(0)?,
        sop_class_uid: r.get(1)?,
        study_instance_uid: r.get(2)?,
        series_instance_uid: r.get(3)?,
        modality: r.get(4)?,
        instance_number: r.get(5)?,
        transfer_syntax: r.get(6)?,
        path: r.get(7)?,
        size: r.get::<i64>(8)? as u64,
        calling_ae: r.get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{test_backend_pairs, test_backends};

    fn row(study: usize, name: &str) -> NewRow {
        let mut header = Header {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: format!("1.5.{study}.1.1"),
            study_instance_uid: format!("1.5.{study}"),
            series_instance_uid: format!("1.5.{study}.1"),
            modality: Some("CT".into()),
            instance_number: Some(1),
            ..Default::default()
        };
        header.query.patient_id = Some(format!("P{}", study % 3));
        header.query.patient_name = Some(name.to_string());
        header.query.study_description = Some(name.to_string());
        NewRow {
            header,
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            path: format!("{study}.dcm"),
            size: 10,
            calling_ae: "CT".into(),
        }
    }

    /// Two receivers upsert the same studies in opposite orders, with values that change
    /// every batch: PostgreSQL must not fail either with a deadlock (sorted batches, one
    /// retry); every row is written once.
    #[test]
    fn concurrent_upserts_of_the_same_studies_in_opposite_orders_succeed() {
        for (name, a, b, _dir) in test_backend_pairs() {
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                for (db, reverse) in [(&a, false), (&b, true)] {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        for round in 0..25 {
                            let mut rows: Vec<NewRow> = (0..8)
                                .map(|i| row(i, &format!("N{round}{reverse}")))
                                .collect();
                            if reverse {
                                rows.reverse();
                            }
                            db.upsert_all(&rows).unwrap();
                        }
                    });
                }
            });
            assert_eq!(a.count().unwrap(), 8, "{name}");
            assert_eq!(a.stats().unwrap().studies, 8, "{name}");
            assert_eq!(a.stats().unwrap().patients, 3, "{name}");
        }
    }

    #[test]
    fn instances_are_replaced_found_and_deleted_with_their_empty_query_rows() {
        for (name, db, _dir) in test_backends() {
            db.upsert_all(&[row(1, "A"), row(2, "B")]).unwrap();
            let mut again = row(1, "A");
            again.path = "moved.dcm".into();
            again.size = 99;
            db.upsert_all(&[again]).unwrap();
            let got = db.get("1.5.1.1.1").unwrap().unwrap();
            assert_eq!((got.path.as_str(), got.size), ("moved.dcm", 99), "{name}");
            assert!(db.has_instance("1.5.2.1.1").unwrap());
            assert!(!db.has_instance("1.5.9").unwrap());
            assert_eq!(db.count().unwrap(), 2);
            db.delete_instance("1.5.1.1.1").unwrap();
            db.delete_instance("1.5.404").unwrap();
            let stats = db.stats().unwrap();
            assert_eq!(
                (stats.instances, stats.series, stats.studies, stats.patients),
                (1, 1, 1, 1),
                "{name}"
            );
        }
    }

    /// The synchronous PostgreSQL client inside async code: on a multi-thread runtime's
    /// worker and on a current-thread runtime (pg::off_runtime).
    #[test]
    fn index_calls_work_inside_tokio_runtimes() {
        for (name, db, _dir) in test_backends() {
            let multi = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .build()
                .unwrap();
            multi.block_on(async { db.upsert_all(&[row(1, "A")]).unwrap() });
            let current = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            assert_eq!(current.block_on(async { db.count().unwrap() }), 1, "{name}");
            match db.with(|_| Ok(())) {
                Ok(()) => assert!(!db.is_postgres()),
                Err(DbError::NotSqlite) => assert!(db.is_postgres(), "{name}"),
                Err(e) => panic!("{e}"),
            }
        }
    }
}
