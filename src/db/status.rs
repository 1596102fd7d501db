//! The status page's reads (see [`crate::http`]): recent series, results, the delivery backlog
//! per destination, and the readiness probe's trivial query.
//!
//! Every list is newest first and bounded by the caller's limit, and each is answered from an
//! index (`series_received`, the primary keys, `outbox_state`), so that the page's refresh
//! every few seconds costs the same with a million instances as with ten.

use std::collections::BTreeMap;

use super::sql::{Param, Stmt, stmt};
use super::{Db, DbError, DeliveryState, JobState, SeriesState};

/// One series of the query index with where it came from and where it stands.
#[derive(Debug, Clone)]
pub struct SeriesStatus {
    /// Series Instance UID.
    pub series_uid: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Modality.
    pub modality: Option<String>,
    /// Series Description.
    pub description: Option<String>,
    /// Calling AE title of its first instance (the node's own for its results).
    pub calling_ae: Option<String>,
    /// When its first instance arrived (Unix seconds).
    pub received_at: Option<f64>,
    /// Instances stored.
    pub instances: i64,
    /// The tracker's state; `None` for series the tracker never saw (the node's results).
    pub state: Option<SeriesState>,
    /// The rule that routed it.
    pub rule: Option<String>,
    /// Patient's Name (for authenticated viewers only).
    pub patient_name: Option<String>,
    /// Patient ID (for authenticated viewers only).
    pub patient_id: Option<String>,
}

/// A done job's result.
#[derive(Debug, Clone)]
pub struct ResultStatus {
    /// The job that made it.
    pub job_id: i64,
    /// Source series.
    pub series_uid: String,
    /// The rule that routed the source.
    pub rule: String,
    /// Result version (Instance Number).
    pub version: i64,
    /// The Encapsulated STL instance.
    pub sop_instance_uid: String,
    /// The job's mesh summary (description, triangles, volume, watertightness).
    pub summary: Option<String>,
    /// When the job finished (Unix seconds).
    pub finished_at: Option<f64>,
    /// Whether the result instance is in the index (it is unless deleted by hand).
    pub stored: bool,
    /// Modality of the source series.
    pub modality: Option<String>,
    /// Patient's Name (for authenticated viewers only).
    pub patient_name: Option<String>,
    /// Patient ID (for authenticated viewers only).
    pub patient_id: Option<String>,
    /// Its Encapsulated STL objects, one per structure, in structure order; for a job done
    /// before the node recorded its objects (schema 3), the one result instance.
    pub meshes: Vec<ResultMesh>,
}

/// One structure's surface of a result, as the status page previews it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultMesh {
    /// The Encapsulated STL instance.
    pub sop_instance_uid: String,
    /// The structure's label (`None` for results made before labels).
    pub label: Option<String>,
    /// Recommended display colour, sRGB `#rrggbb`.
    pub colour: Option<String>,
    /// Recommended opacity, 0 to 1.
    pub opacity: Option<f64>,
    /// Whether the instance is in the index (it is unless deleted by hand).
    pub stored: bool,
}

/// The outstanding deliveries of one destination.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DestinationStatus {
    /// Destination AE title.
    pub destination: String,
    /// Rows still to be sent.
    pub pending: i64,
    /// Rows given up (until retried).
    pub failed: i64,
    /// When the oldest pending row was queued (Unix seconds).
    pub oldest_pending_at: Option<f64>,
    /// The error of its most recent unsent row that has one.
    pub last_error: Option<String>,
}

/// Newest first; series without an arrival time (written before schema 3) last, on both
/// backends.
static RECENT_SERIES: Stmt = stmt!(
    lite: "SELECT s.series_uid, s.study_uid, s.modality, s.description, s.calling_ae,
            s.received_at,
            (SELECT COUNT(*) FROM instances i WHERE i.series_instance_uid = s.series_uid),
            w.state, w.rule, p.name, p.patient_id
     FROM series s
     LEFT JOIN series_work w ON w.series_instance_uid = s.series_uid
     LEFT JOIN studies t ON t.study_uid = s.study_uid
     LEFT JOIN patients p ON p.pk = t.patient_pk
     ORDER BY s.received_at DESC LIMIT ?1",
    pg: "SELECT s.series_uid, s.study_uid, s.modality, s.description, s.calling_ae,
            s.received_at,
            (SELECT COUNT(*) FROM instances i WHERE i.series_instance_uid = s.series_uid),
            w.state, w.rule, p.name, p.patient_id
     FROM series s
     LEFT JOIN series_work w ON w.series_instance_uid = s.series_uid
     LEFT JOIN studies t ON t.study_uid = s.study_uid
     LEFT JOIN patients p ON p.pk = t.patient_pk
     ORDER BY s.received_at DESC NULLS LAST LIMIT ?1",
);
static RECENT_RESULTS: Stmt = stmt!(
    "SELECT j.id, j.series_instance_uid, j.rule, j.version, j.result_sop_instance_uid,
        j.summary, j.finished_at, i.sop_instance_uid IS NOT NULL, s.modality,
        p.name, p.patient_id
     FROM jobs j
     LEFT JOIN instances i ON i.sop_instance_uid = j.result_sop_instance_uid
     LEFT JOIN series s ON s.series_uid = j.series_instance_uid
     LEFT JOIN studies t ON t.study_uid = s.study_uid
     LEFT JOIN patients p ON p.pk = t.patient_pk
     WHERE j.state = ?1 ORDER BY j.id DESC LIMIT ?2"
);
static MESHES: Stmt = stmt!(
    lite: "SELECT o.sop_instance_uid, o.label, o.colour, o.opacity, i.sop_instance_uid IS NOT NULL
     FROM result_objects o
     LEFT JOIN instances i ON i.sop_instance_uid = o.sop_instance_uid
     WHERE o.job_id = ?1 AND o.kind = 'stl' ORDER BY o.structure",
    pg: "SELECT o.sop_instance_uid, o.label, o.colour, o.opacity, i.sop_instance_uid IS NOT NULL
     FROM result_objects o
     LEFT JOIN instances i ON i.sop_instance_uid = o.sop_instance_uid
     WHERE o.job_id = ?1 AND o.kind = 'stl' ORDER BY o.structure NULLS FIRST",
);
static BACKLOG_COUNTS: Stmt = stmt!(
    "SELECT destination, state, COUNT(*), MIN(created_at) FROM outbox
     WHERE state IN (?1, ?2) GROUP BY destination, state"
);
/// The error of each destination's most recent unsent row that has one.
static BACKLOG_ERRORS: Stmt = stmt!(
    // SQLite takes the bare column `last_error` from the row of MAX(id).
    lite: "SELECT destination, last_error, MAX(id) FROM outbox
     WHERE state IN (?1, ?2) AND last_error IS NOT NULL GROUP BY destination",
    pg: "SELECT DISTINCT ON (destination) destination, last_error FROM outbox
     WHERE state IN (?1, ?2) AND last_error IS NOT NULL ORDER BY destination, id DESC",
);
static PING: Stmt = stmt!("SELECT 1 FROM instances LIMIT 1");

impl Db {
    /// The `limit` most recently received series, newest first.
    pub fn recent_series(&self, limit: usize) -> Result<Vec<SeriesStatus>, DbError> {
        self.run(|c| {
            c.all(&RECENT_SERIES, &[&(limit as i64)], |r| {
                Ok(SeriesStatus {
                    series_uid: r.get(0)?,
                    study_uid: r.get(1)?,
                    modality: r.get(2)?,
                    description: r.get(3)?,
                    calling_ae: r.get(4)?,
                    received_at: r.get(5)?,
                    instances: r.get(6)?,
                    state: r.get(7)?,
                    rule: r.get(8)?,
                    patient_name: r.get(9)?,
                    patient_id: r.get(10)?,
                })
            })
        })
    }

    /// The results of the `limit` most recent done jobs, newest first.
    pub fn recent_results(&self, limit: usize) -> Result<Vec<ResultStatus>, DbError> {
        self.run(|c| {
            let mut results = c.all(&RECENT_RESULTS, &[&JobState::Done, &(limit as i64)], |r| {
                Ok(ResultStatus {
                    job_id: r.get(0)?,
                    series_uid: r.get(1)?,
                    rule: r.get(2)?,
                    version: r.get(3)?,
                    sop_instance_uid: r.get(4)?,
                    summary: r.get(5)?,
                    finished_at: r.get(6)?,
                    stored: r.get(7)?,
                    modality: r.get(8)?,
                    patient_name: r.get(9)?,
                    patient_id: r.get(10)?,
                    meshes: Vec::new(),
                })
            })?;
            // One indexed lookup per result (primary key prefix): `limit` is small.
            for r in &mut results {
                r.meshes = c.all(&MESHES, &[&r.job_id], |row| {
                    Ok(ResultMesh {
                        sop_instance_uid: row.get(0)?,
                        label: row.get(1)?,
                        colour: row.get(2)?,
                        opacity: row.get(3)?,
                        stored: row.get(4)?,
                    })
                })?;
                if r.meshes.is_empty() {
                    r.meshes.push(ResultMesh {
                        sop_instance_uid: r.sop_instance_uid.clone(),
                        label: None,
                        colour: None,
                        opacity: None,
                        stored: r.stored,
                    });
                }
            }
            Ok(results)
        })
    }

    /// Destinations with unsent rows: their backlog and last error, by AE title. Sent rows
    /// are not counted (they grow without bound and the outbox has no index for them).
    pub fn delivery_backlog(&self) -> Result<Vec<DestinationStatus>, DbError> {
        self.run(|c| {
            let mut by_dest: BTreeMap<String, DestinationStatus> = BTreeMap::new();
            let states: [&dyn Param; 2] = [&DeliveryState::Pending, &DeliveryState::Failed];
            let counts = c.all(&BACKLOG_COUNTS, &states, |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<DeliveryState>(1)?,
                    r.get::<i64>(2)?,
                    r.get::<Option<f64>>(3)?,
                ))
            })?;
            for (dest, state, n, oldest) in counts {
                let d = by_dest
                    .entry(dest.clone())
                    .or_insert_with(|| DestinationStatus {
                        destination: dest,
                        ..Default::default()
                    });
                match state {
                    DeliveryState::Pending => {
                        d.pending = n;
                        d.oldest_pending_at = oldest;
                    }
                    DeliveryState::Failed => d.failed = n,
                    DeliveryState::Sent => {}
                }
            }
            let errors = c.all(&BACKLOG_ERRORS, &states, |r| {
                Ok((r.get::<String>(0)?, r.get::<Option<String>>(1)?))
            })?;
            for (dest, error) in errors {
                if let Some(d) = by_dest.get_mut(&dest) {
                    d.last_error = error;
                }
            }
            Ok(by_dest.into_values().collect())
        })
    }

    /// A trivial read of the instances table, for the readiness probe: proves the connection
    /// is not held by a stuck writer and the file (or server) is readable.
    pub fn ping(&self) -> Result<(), DbError> {
        self.run(|c| c.opt(&PING, &[], |_| Ok(())).map(drop))
    }
}

#[cfg(test)]
mod tests {
    use crate::db::{NewDeliveries, NewRow, NewSeriesWork, test_backends};
    use crate::store::header::Header;

    #[test]
    fn the_backlog_counts_unsent_rows_per_destination_with_the_last_error() {
        for (name, db, _dir) in test_backends() {
            let dests = [
                ("PACS".to_string(), "pacs:104".to_string()),
                ("NAV".to_string(), "nav:104".to_string()),
            ];
            for uid in ["1.2.1", "1.2.2", "1.2.3"] {
                db.enqueue_deliveries(&NewDeliveries {
                    sop_instance_uid: uid,
                    path: "x.dcm",
                    destinations: &dests,
                    deadline_seconds: 60.0,
                })
                .unwrap();
            }
            assert_eq!(db.claim_deliveries(100).unwrap().len(), 6, "{name}");
            let rows = db.list_deliveries(10).unwrap();
            let id = |uid: &str, dest: &str| {
                rows.iter()
                    .find(|r| r.sop_instance_uid == uid && r.destination == dest)
                    .unwrap()
                    .id
            };
            db.mark_sent(id("1.2.1", "PACS")).unwrap();
            db.mark_failed(id("1.2.2", "PACS"), 3, "refused: 0xA700")
                .unwrap();
            db.reschedule_delivery(id("1.2.1", "NAV"), 1, "connection refused", 0.0)
                .unwrap();
            db.reschedule_delivery(id("1.2.3", "NAV"), 1, "timed out", 0.0)
                .unwrap();
            let backlog = db.delivery_backlog().unwrap();
            assert_eq!(backlog.len(), 2, "{name}: {backlog:?}");
            assert_eq!(backlog[0].destination, "NAV");
            assert_eq!((backlog[0].pending, backlog[0].failed), (3, 0), "{name}");
            assert_eq!(
                backlog[0].last_error.as_deref(),
                Some("timed out"),
                "{name}"
            );
            assert!(backlog[0].oldest_pending_at.is_some());
            assert_eq!(backlog[1].destination, "PACS");
            assert_eq!((backlog[1].pending, backlog[1].failed), (1, 1), "{name}");
            assert_eq!(
                backlog[1].last_error.as_deref(),
                Some("refused: 0xA700"),
                "{name}"
            );
        }
    }

    #[test]
    fn results_are_done_jobs_newest_first() {
        for (name, db, _dir) in test_backends() {
            for uid in ["1.2.7", "1.2.8"] {
                db.add_series_work(&NewSeriesWork {
                    series_instance_uid: uid,
                    study_instance_uid: "1.2",
                    calling_ae: "CT",
                    rule: Some("bone"),
                    expected: None,
                })
                .unwrap();
                db.queue_job(uid, "bone").unwrap();
            }
            let first = db.claim_job().unwrap().unwrap();
            let second = db.claim_job().unwrap().unwrap();
            let none = NewDeliveries {
                sop_instance_uid: &first.result_sop_instance_uid,
                path: "r.dcm",
                destinations: &[],
                deadline_seconds: 60.0,
            };
            db.finish_job(first.id, first.attempts, "bone: 12 triangles", &[], &[none])
                .unwrap();
            db.fail_job(second.id, second.attempts, "no usable image stack")
                .unwrap();
            let results = db.recent_results(10).unwrap();
            assert_eq!(results.len(), 1, "{name}");
            assert_eq!(results[0].job_id, first.id);
            assert_eq!(results[0].sop_instance_uid, first.result_sop_instance_uid);
            assert_eq!(results[0].summary.as_deref(), Some("bone: 12 triangles"));
            assert!(!results[0].stored, "{name}: no instance row was written");
            assert_eq!(results[0].meshes.len(), 1, "{name}");
            db.ping().unwrap();
        }
    }

    fn row(series: &str, sop: &str, number: Option<i64>) -> NewRow {
        let mut header = Header {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: sop.into(),
            study_instance_uid: format!("{series}.0"),
            series_instance_uid: series.into(),
            modality: Some("CT".into()),
            instance_number: number,
            ..Default::default()
        };
        header.query.patient_id = Some("PID".into());
        NewRow {
            header,
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            path: format!("{series}/{sop}.dcm"),
            size: 10,
            calling_ae: "CT".into(),
        }
    }

    /// NULLs sort as SQLite sorts them on both backends: an instance without an Instance
    /// Number first in a series, a series without an arrival time last among recent series.
    #[test]
    fn null_ordering_is_the_same_on_both_backends() {
        for (name, db, _dir) in test_backends() {
            db.upsert_all(&[
                row("1.9.1", "1.9.1.2", Some(2)),
                row("1.9.1", "1.9.1.1", Some(1)),
                row("1.9.1", "1.9.1.0", None),
            ])
            .unwrap();
            let order: Vec<Option<i64>> = db
                .series("1.9.1")
                .unwrap()
                .iter()
                .map(|r| r.instance_number)
                .collect();
            assert_eq!(order, [None, Some(1), Some(2)], "{name}");
            db.upsert_all(&[row("1.9.2", "1.9.2.1", Some(1))]).unwrap();
            // A series row written before schema 3 has no arrival time.
            db.run(|c| {
                static CLEAR: crate::db::sql::Stmt = crate::db::sql::stmt!(
                    "UPDATE series SET received_at = NULL WHERE series_uid = ?1"
                );
                c.exec(&CLEAR, &[&"1.9.1"])
            })
            .unwrap();
            let recent: Vec<String> = db
                .recent_series(10)
                .unwrap()
                .into_iter()
                .map(|s| s.series_uid)
                .collect();
            assert_eq!(recent, ["1.9.2", "1.9.1"], "{name}");
            let first = &db.recent_series(10).unwrap()[1];
            assert_eq!(first.instances, 3, "{name}");
            assert_eq!(first.received_at, None, "{name}");
        }
    }
}
