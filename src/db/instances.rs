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

use rusqlite::{Connection, OptionalExtension, params};
use tracing::debug;

use super::{Db, DbError, in_transaction};
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

const INSERT_INSTANCE: &str = "INSERT OR REPLACE INTO instances (sop_instance_uid, sop_class_uid,
    study_instance_uid, series_instance_uid, modality, instance_number, transfer_syntax, path,
    size, calling_ae, received_at, document_title, mime_type)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

fn insert_instance(c: &Connection, r: &NewRow, now: f64) -> rusqlite::Result<()> {
    let h = &r.header;
    c.prepare_cached(INSERT_INSTANCE)?.execute(params![
        h.sop_instance_uid,
        h.sop_class_uid,
        h.study_instance_uid,
        h.series_instance_uid,
        h.modality,
        h.instance_number,
        r.transfer_syntax,
        r.path,
        r.size as i64,
        r.calling_ae,
        now,
        h.query.document_title,
        h.query.mime_type,
    ])?;
    Ok(())
}

/// Writes (insert, or update when a value differs) the patient and study rows of `h`.
pub(super) fn upsert_study(c: &Connection, h: &Header) -> rusqlite::Result<()> {
    let q: &QueryAttrs = &h.query;
    let patient_id = q.patient_id.as_deref().unwrap_or("");
    let issuer = q.issuer.as_deref().unwrap_or("");
    c.prepare_cached(
        "INSERT INTO patients (patient_id, issuer, name, birth_date, sex, charset)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (patient_id, issuer) DO UPDATE SET name = excluded.name,
             birth_date = excluded.birth_date, sex = excluded.sex, charset = excluded.charset
         WHERE name IS NOT excluded.name OR birth_date IS NOT excluded.birth_date
             OR sex IS NOT excluded.sex OR charset IS NOT excluded.charset",
    )?
    .execute(params![
        patient_id,
        issuer,
        q.patient_name,
        q.birth_date,
        q.sex,
        q.charset
    ])?;
    let patient_pk: i64 = c
        .prepare_cached("SELECT pk FROM patients WHERE patient_id = ?1 AND issuer = ?2")?
        .query_row(params![patient_id, issuer], |r| r.get(0))?;
    let before: Option<i64> = c
        .prepare_cached("SELECT patient_pk FROM studies WHERE study_uid = ?1")?
        .query_row([&h.study_instance_uid], |r| r.get(0))
        .optional()?;
    if before.is_some_and(|b| b != patient_pk) {
        // Two patients' values for one study: the last writer wins (contract).
        debug!(study_instance_uid = %h.study_instance_uid, "an instance gives its study other patient values; the study now refers to them");
    }
    c.prepare_cached(
        "INSERT INTO studies (study_uid, patient_pk, study_date, study_time, accession, study_id,
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
    )?
    .execute(params![
        h.study_instance_uid,
        patient_pk,
        q.study_date,
        q.study_time,
        q.accession,
        q.study_id,
        q.study_description,
        q.referring,
        q.charset
    ])?;
    Ok(())
}

/// Writes (insert, or update when a value differs) the series row of `h`.
pub(super) fn upsert_series(c: &Connection, h: &Header) -> rusqlite::Result<()> {
    let q = &h.query;
    c.prepare_cached(
        "INSERT INTO series (series_uid, study_uid, modality, series_number, description,
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
    )?
    .execute(params![
        h.series_instance_uid,
        h.study_instance_uid,
        h.modality,
        q.series_number,
        h.series_description,
        h.body_part_examined,
        h.frame_of_reference_uid,
        q.series_date,
        q.series_time,
        q.charset
    ])?;
    Ok(())
}

/// Records where and when a series row's first instance came from (schema 3; kept apart from
/// [`upsert_series`], which migration 2's back-fill runs before these columns exist). Runs
/// only when the series row was written, so it costs ingest nothing per instance.
fn stamp_series_origin(
    c: &Connection,
    series_uid: &str,
    calling_ae: &str,
    now: f64,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE series SET calling_ae = ?2, received_at = ?3
         WHERE series_uid = ?1 AND received_at IS NULL",
    )?
    .execute(params![series_uid, calling_ae, now])?;
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

impl Db {
    /// Writes the rows of several instances (instance row, and the patient/study/series rows
    /// that are not known to be current) in one transaction: one WAL append for a whole group
    /// commit. A lone instance whose query rows are current is one autocommitted insert.
    pub fn upsert_all<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a NewRow>,
    ) -> Result<(), DbError> {
        let rows: Vec<&NewRow> = rows.into_iter().collect();
        let now = now();
        self.with_inner(|inner| {
            let c = &inner.conn;
            // Within one batch, the first instance of a study or series writes its rows.
            let mut stale: Vec<Stale> = Vec::with_capacity(rows.len());
            let mut seen = Written::default();
            for r in &rows {
                let (study, series) = inner.written.stale(&r.header);
                let study = study.filter(|(k, v)| seen.studies.insert(k.clone(), *v) != Some(*v));
                let series = series.filter(|(k, v)| seen.series.insert(k.clone(), *v) != Some(*v));
                stale.push((study, series));
            }
            let write = |c: &Connection| -> rusqlite::Result<()> {
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
            if rows.is_empty() {
                return Ok(());
            } else if lone_insert {
                write(c)?;
            } else {
                in_transaction(c, write)?;
            }
            inner.written.remember(stale);
            Ok(())
        })
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
        self.with(|c| {
            c.prepare_cached(
                "SELECT sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,
                 modality, instance_number, transfer_syntax, path, size, calling_ae
                 FROM instances WHERE sop_instance_uid = ?1",
            )?
            .query_row([sop_instance_uid], row_to_instance)
            .optional()
        })
    }

    /// Whether an instance has a row (cheaper than [`Db::get`] for the start-up repair).
    pub fn has_instance(&self, sop_instance_uid: &str) -> Result<bool, DbError> {
        self.with(|c| {
            c.prepare_cached("SELECT 1 FROM instances WHERE sop_instance_uid = ?1")?
                .exists([sop_instance_uid])
        })
    }

    /// Every instance of a series, in Instance Number order.
    pub fn series(&self, series_instance_uid: &str) -> Result<Vec<InstanceRow>, DbError> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,
                 modality, instance_number, transfer_syntax, path, size, calling_ae
                 FROM instances WHERE series_instance_uid = ?1 ORDER BY instance_number, path",
            )?
            .query_map([series_instance_uid], row_to_instance)?
            .collect()
        })
    }

    /// Number of indexed instances.
    pub fn count(&self) -> Result<u64, DbError> {
        self.with(|c| c.query_row("SELECT COUNT(*) FROM instances", [], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
    }

    /// Removes an instance's row, and the series, study and patient rows it leaves empty (a
    /// query must not find a series whose instances were dropped). Unknown UIDs are ignored.
    pub fn delete_instance(&self, sop_instance_uid: &str) -> Result<(), DbError> {
        self.with_inner(|inner| {
            let found: Option<(String, String)> = inner
                .conn
                .query_row(
                    "SELECT study_instance_uid, series_instance_uid FROM instances WHERE sop_instance_uid = ?1",
                    [sop_instance_uid],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((study, series)) = found else {
                return Ok(());
            };
            inner.written.forget(&study, &series);
            in_transaction(&inner.conn, |c| {
                c.execute("DELETE FROM instances WHERE sop_instance_uid = ?1", [sop_instance_uid])?;
                c.execute(
                    "DELETE FROM series WHERE series_uid = ?1
                     AND NOT EXISTS (SELECT 1 FROM instances WHERE series_instance_uid = ?1)",
                    [&series],
                )?;
                let patient: Option<i64> = c
                    .query_row("SELECT patient_pk FROM studies WHERE study_uid = ?1", [&study], |r| r.get(0))
                    .optional()?;
                c.execute(
                    "DELETE FROM studies WHERE study_uid = ?1
                     AND NOT EXISTS (SELECT 1 FROM series WHERE study_uid = ?1)",
                    [&study],
                )?;
                if let Some(pk) = patient {
                    c.execute(
                        "DELETE FROM patients WHERE pk = ?1
                         AND NOT EXISTS (SELECT 1 FROM studies WHERE patient_pk = ?1)",
                        [pk],
                    )?;
                }
                Ok(())
            })
        })
    }
}

fn row_to_instance(r: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow {
        sop_instance_uid: r.get(0)?,
        sop_class_uid: r.get(1)?,
        study_instance_uid: r.get(2)?,
        series_instance_uid: r.get(3)?,
        modality: r.get(4)?,
        instance_number: r.get(5)?,
        transfer_syntax: r.get(6)?,
        path: r.get(7)?,
        size: r.get::<_, i64>(8)? as u64,
        calling_ae: r.get(9)?,
    })
}
