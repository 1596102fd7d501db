//! Counts for the scrape-time gauges of [`crate::metrics`]: jobs by state, outbox rows by
//! destination and state, and the rows of the index tables.
//!
//! They are read on a connection of their own ([`StatsReader`]), opened read-only beside the
//! node's: counting a million `instances` rows takes tens of milliseconds, and on the node's
//! connection that would hold its mutex, and with it every C-STORE's index write, for as long
//! at every scrape. In WAL mode a reader neither waits for the writer nor holds it up.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

use super::{DbError, DeliveryState, JobState};

/// What the index holds right now, for the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Jobs per state, every state present (0 when none).
    pub jobs: Vec<(JobState, u64)>,
    /// Outbox rows per (destination AE title, state); every state of a destination that has
    /// any row is present (0 when none). Destinations are those of `[[peers]]` a rule sent
    /// to, so the set is bounded by the configuration's history.
    pub outbox: Vec<(String, DeliveryState, u64)>,
    /// Rows of `instances`.
    pub instances: u64,
    /// Rows of the query index's `series`.
    pub series: u64,
    /// Rows of the query index's `studies`.
    pub studies: u64,
    /// Rows of the query index's `patients`.
    pub patients: u64,
}

/// A read-only connection to an index for [`IndexStats`].
pub struct StatsReader {
    conn: Connection,
}

impl StatsReader {
    /// Opens `path` (an index the node has created and migrated) read-only.
    pub fn open(path: &Path) -> Result<StatsReader, DbError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(2))?;
        Ok(StatsReader { conn })
    }

    /// Reads every count in one read transaction, so that they are of one moment.
    pub fn read(&self) -> Result<IndexStats, DbError> {
        let c = &self.conn;
        c.prepare_cached("BEGIN")?.execute([])?;
        let stats = read_counts(c);
        // A read transaction has nothing to keep; ending it lets the WAL be checkpointed.
        c.prepare_cached("COMMIT")?.execute([])?;
        Ok(stats?)
    }
}

fn read_counts(c: &Connection) -> rusqlite::Result<IndexStats> {
    let count = |table: &str| -> rusqlite::Result<u64> {
        c.prepare_cached(&format!("SELECT COUNT(*) FROM {table}"))?
            .query_row([], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
    };
    let mut jobs: Vec<(JobState, u64)> = JobState::ALL.iter().map(|&s| (s, 0)).collect();
    {
        let mut stmt = c.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, JobState>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (state, n) = row?;
            if let Some(slot) = jobs.iter_mut().find(|(s, _)| *s == state) {
                slot.1 = n.max(0) as u64;
            }
        }
    }
    let mut outbox: Vec<(String, DeliveryState, u64)> = Vec::new();
    {
        let mut stmt = c.prepare_cached(
            "SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state ORDER BY destination",
        )?;
        let rows = stmt.query_map(params![], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, DeliveryState>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (destination, state, n) = row?;
            if !outbox.iter().any(|(d, _, _)| *d == destination) {
                outbox.extend(
                    DeliveryState::ALL
                        .iter()
                        .map(|&s| (destination.clone(), s, 0)),
                );
            }
            if let Some(slot) = outbox
                .iter_mut()
                .find(|(d, s, _)| *d == destination && *s == state)
            {
                slot.2 = n.max(0) as u64;
            }
        }
    }
    Ok(IndexStats {
        jobs,
        outbox,
        instances: count("instances")?,
        series: count("series")?,
        studies: count("studies")?,
        patients: count("patients")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, NewDeliveries, NewSeriesWork};

    /// Counts that the index's own writers produce, read on the separate connection while
    /// the node's connection stays open.
    #[test]
    fn counts_jobs_by_state_and_deliveries_by_destination() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let db = Db::open(&path).unwrap();
        let reader = StatsReader::open(&path).unwrap();
        let jobs = |queued, running, done, failed| {
            vec![
                (JobState::Queued, queued),
                (JobState::Running, running),
                (JobState::Done, done),
                (JobState::Failed, failed),
            ]
        };
        let empty = reader.read().unwrap();
        assert_eq!(empty.jobs, jobs(0, 0, 0, 0));
        assert!(empty.outbox.is_empty());
        assert_eq!(empty.instances, 0);

        for uid in ["1.2.3.1", "1.2.3.2", "1.2.3.3"] {
            db.add_series_work(&NewSeriesWork {
                series_instance_uid: uid,
                study_instance_uid: "1.2.3",
                calling_ae: "CT1",
                rule: Some("r"),
                expected: None,
            })
            .unwrap();
            db.queue_job(uid, "r").unwrap();
        }
        let running = db.claim_job().unwrap().unwrap();
        let failed = db.claim_job().unwrap().unwrap();
        db.fail_job(failed.id, "no usable image stack").unwrap();
        let destinations = [
            ("PACS".to_string(), "127.0.0.1:1".to_string()),
            ("NAV".to_string(), "127.0.0.1:2".to_string()),
        ];
        db.finish_job(
            running.id,
            "ok",
            &[],
            &[NewDeliveries {
                sop_instance_uid: "1.2.9.1",
                path: "a/b/c.dcm",
                destinations: &destinations,
                deadline_seconds: 60.0,
            }],
        )
        .unwrap();
        db.enqueue_deliveries(&NewDeliveries {
            sop_instance_uid: "1.2.9.2",
            path: "a/b/d.dcm",
            destinations: &destinations[..1],
            deadline_seconds: 60.0,
        })
        .unwrap();
        let ids: Vec<(i64, String)> = db
            .list_deliveries(10)
            .unwrap()
            .into_iter()
            .map(|r| (r.id, format!("{}/{}", r.destination, r.sop_instance_uid)))
            .collect();
        let id = |name: &str| ids.iter().find(|(_, n)| n == name).unwrap().0;
        db.mark_sent(id("PACS/1.2.9.1")).unwrap();
        db.mark_failed(id("NAV/1.2.9.1"), 3, "refused").unwrap();

        let s = reader.read().unwrap();
        assert_eq!(s.jobs, jobs(1, 0, 1, 1));
        let d = |ae: &str, st: DeliveryState, n: u64| (ae.to_string(), st, n);
        assert_eq!(
            s.outbox,
            vec![
                d("NAV", DeliveryState::Pending, 0),
                d("NAV", DeliveryState::Sent, 0),
                d("NAV", DeliveryState::Failed, 1),
                d("PACS", DeliveryState::Pending, 1),
                d("PACS", DeliveryState::Sent, 1),
                d("PACS", DeliveryState::Failed, 0),
            ]
        );
    }
}
