//! The status page's reads (see [`crate::http`]): recent series, results, the delivery backlog
//! per destination, and the readiness probe's trivial query.
//!
//! Every list is newest first and bounded by the caller's limit, and each is answered from an
//! index (`series_received`, the primary keys, `outbox_state`), so that the page's refresh
//! every few seconds costs the same with a million instances as with ten.

use std::collections::BTreeMap;

use rusqlite::params;

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

impl Db {
    /// The `limit` most recently received series, newest first.
    pub fn recent_series(&self, limit: usize) -> Result<Vec<SeriesStatus>, DbError> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT s.series_uid, s.study_uid, s.modality, s.description, s.calling_ae,
                        s.received_at,
                        (SELECT COUNT(*) FROM instances i WHERE i.series_instance_uid = s.series_uid),
                        w.state, w.rule, p.name, p.patient_id
                 FROM series s
                 LEFT JOIN series_work w ON w.series_instance_uid = s.series_uid
                 LEFT JOIN studies t ON t.study_uid = s.study_uid
                 LEFT JOIN patients p ON p.pk = t.patient_pk
                 ORDER BY s.received_at DESC LIMIT ?1",
            )?
            .query_map([limit as i64], |r| {
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
            })?
            .collect()
        })
    }

    /// The results of the `limit` most recent done jobs, newest first.
    pub fn recent_results(&self, limit: usize) -> Result<Vec<ResultStatus>, DbError> {
        self.with(|c| {
            let mut results = c
                .prepare_cached(
                    "SELECT j.id, j.series_instance_uid, j.rule, j.version, j.result_sop_instance_uid,
                        j.summary, j.finished_at, i.sop_instance_uid IS NOT NULL, s.modality,
                        p.name, p.patient_id
                 FROM jobs j
                 LEFT JOIN instances i ON i.sop_instance_uid = j.result_sop_instance_uid
                 LEFT JOIN series s ON s.series_uid = j.series_instance_uid
                 LEFT JOIN studies t ON t.study_uid = s.study_uid
                 LEFT JOIN patients p ON p.pk = t.patient_pk
                 WHERE j.state = ?1 ORDER BY j.id DESC LIMIT ?2",
                )?
                .query_map(params![JobState::Done, limit as i64], |r| {
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
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // One indexed lookup per result (primary key prefix): `limit` is small.
            let mut meshes = c.prepare_cached(
                "SELECT o.sop_instance_uid, o.label, o.colour, o.opacity, i.sop_instance_uid IS NOT NULL
                 FROM result_objects o
                 LEFT JOIN instances i ON i.sop_instance_uid = o.sop_instance_uid
                 WHERE o.job_id = ?1 AND o.kind = 'stl' ORDER BY o.structure",
            )?;
            for r in &mut results {
                r.meshes = meshes
                    .query_map([r.job_id], |row| {
                        Ok(ResultMesh {
                            sop_instance_uid: row.get(0)?,
                            label: row.get(1)?,
                            colour: row.get(2)?,
                            opacity: row.get(3)?,
                            stored: row.get(4)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
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
        self.with(|c| {
            let mut by_dest: BTreeMap<String, DestinationStatus> = BTreeMap::new();
            let states = params![DeliveryState::Pending, DeliveryState::Failed];
            let mut counts = c.prepare_cached(
                "SELECT destination, state, COUNT(*), MIN(created_at) FROM outbox
                 WHERE state IN (?1, ?2) GROUP BY destination, state",
            )?;
            let mut rows = counts.query(states)?;
            while let Some(r) = rows.next()? {
                let dest: String = r.get(0)?;
                let d = by_dest
                    .entry(dest.clone())
                    .or_insert_with(|| DestinationStatus {
                        destination: dest,
                        ..Default::default()
                    });
                match r.get::<_, DeliveryState>(1)? {
                    DeliveryState::Pending => {
                        d.pending = r.get(2)?;
                        d.oldest_pending_at = r.get(3)?;
                    }
                    DeliveryState::Failed => d.failed = r.get(2)?,
                    DeliveryState::Sent => {}
                }
            }
            // SQLite takes the bare column `last_error` from the row of MAX(id).
            let mut errors = c.prepare_cached(
                "SELECT destination, last_error, MAX(id) FROM outbox
                 WHERE state IN (?1, ?2) AND last_error IS NOT NULL GROUP BY destination",
            )?;
            let mut rows = errors.query(states)?;
            while let Some(r) = rows.next()? {
                let dest: String = r.get(0)?;
                if let Some(d) = by_dest.get_mut(&dest) {
                    d.last_error = r.get(1)?;
                }
            }
            Ok(by_dest.into_values().collect())
        })
    }

    /// A trivial read of the instances table, for the readiness probe: proves the connection
    /// is not held by a stuck writer and the file is readable.
    pub fn ping(&self) -> Result<(), DbError> {
        self.with(|c| {
            c.prepare_cached("SELECT 1 FROM instances LIMIT 1")?
                .exists([])
                .map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{NewDeliveries, NewSeriesWork};

    #[test]
    fn the_backlog_counts_unsent_rows_per_destination_with_the_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("index.sqlite")).unwrap();
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
        assert_eq!(backlog.len(), 2, "{backlog:?}");
        assert_eq!(backlog[0].destination, "NAV");
        assert_eq!((backlog[0].pending, backlog[0].failed), (3, 0));
        assert_eq!(backlog[0].last_error.as_deref(), Some("timed out"));
        assert!(backlog[0].oldest_pending_at.is_some());
        assert_eq!(backlog[1].destination, "PACS");
        assert_eq!((backlog[1].pending, backlog[1].failed), (1, 1));
        assert_eq!(backlog[1].last_error.as_deref(), Some("refused: 0xA700"));
    }

    #[test]
    fn results_are_done_jobs_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("index.sqlite")).unwrap();
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
        db.finish_job(first.id, "bone: 12 triangles", &[], &[none])
            .unwrap();
        db.fail_job(second.id, "no usable image stack").unwrap();
        let results = db.recent_results(10).unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].job_id, first.id);
        assert_eq!(results[0].sop_instance_uid, first.result_sop_instance_uid);
        assert_eq!(results[0].summary.as_deref(), Some("bone: 12 triangles"));
        assert!(!results[0].stored, "no instance row was written");
        db.ping().unwrap();
    }
}
