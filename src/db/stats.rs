//! Counts for the scrape-time gauges of [`crate::metrics`]: jobs by state, outbox rows by
//! destination and state, and the rows of the index tables.
//!
//! They are read on a connection of their own ([`StatsReader`]), opened read-only beside the
//! node's: counting a million `instances` rows takes tens of milliseconds, and on the node's
//! connection that would hold its mutex, and with it every C-STORE's index write, for as long
//! at every scrape. In WAL mode a reader neither waits for the writer nor holds it up.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::sql::{Conn, Stmt, stmt};
use super::{Db, DbError, DeliveryState, JobState};

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

/// A read-only connection to a SQLite index for [`IndexStats`] (on PostgreSQL, [`Db::stats`]
/// reads through the pool: the server's readers never hold up its writers).
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
        let stats = read_counts(&mut Conn::Lite(c));
        // A read transaction has nothing to keep; ending it lets the WAL be checkpointed.
        c.prepare_cached("COMMIT")?.execute([])?;
        stats
    }
}

impl Db {
    /// Every count of [`IndexStats`], of one moment (one transaction). On SQLite this holds
    /// the node's connection while it counts: the metrics use a [`StatsReader`] there.
    pub fn stats(&self) -> Result<IndexStats, DbError> {
        self.tx(read_counts)
    }
}

static COUNT_INSTANCES: Stmt = stmt!("SELECT COUNT(*) FROM instances");
static COUNT_SERIES: Stmt = stmt!("SELECT COUNT(*) FROM series");
static COUNT_STUDIES: Stmt = stmt!("SELECT COUNT(*) FROM studies");
static COUNT_PATIENTS: Stmt = stmt!("SELECT COUNT(*) FROM patients");
static JOBS_BY_STATE: Stmt = stmt!("SELECT state, COUNT(*) FROM jobs GROUP BY state");
static OUTBOX_BY_STATE: Stmt = stmt!(
    "SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state ORDER BY destination"
);

fn read_counts(c: &mut Conn<'_>) -> Result<IndexStats, DbError> {
    let mut count = |s: &'static Stmt| -> Result<u64, DbError> {
        c.one(s, &[], |r| r.get::<i64>(0)).map(|n| n.max(0) as u64)
    };
    let instances = count(&COUNT_INSTANCES)?;
    let series = count(&COUNT_SERIES)?;
    let studies = count(&COUNT_STUDIES)?;
    let patients = count(&COUNT_PATIENTS)?;
    let mut jobs: Vec<(JobState, u64)> = JobState::ALL.iter().map(|&s| (s, 0)).collect();
    let rows = c.all(&JOBS_BY_STATE, &[], |r| {
        Ok((r.get::<JobState>(0)?, r.get::<i64>(1)?))
    })?;
    for (state, n) in rows {
        if let Some(slot) = jobs.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = n.max(0) as u64;
        }
    }
    let mut outbox: Vec<(String, DeliveryState, u64)> = Vec::new();
    let rows = c.all(&OUTBOX_BY_STATE, &[], |r| {
        Ok((
            r.get::<String>(0)?,
            r.get::<DeliveryState>(1)?,
            r.get::<i64>(2)?,
        ))
    })?;
    for (destination, state, n) in rows {
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
    Ok(IndexStats {
        jobs,
        outbox,
        instances,
        series,
        studies,
        patients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{NewDeliveries, NewSeriesWork, test_backends};

    /// Counts that the index's own writers produce, read on the separate connection while
    /// the node's connection stays open.
    #[test]
    fn counts_jobs_by_state_and_deliveries_by_destination() {
        for (name, db, dir) in test_backends() {
            counts_on(
                name,
                &db,
                dir.as_ref().map(|d| d.path().join("index.sqlite")),
            );
        }
    }

    fn counts_on(name: &str, db: &Db, path: Option<std::path::PathBuf>) {
        // SQLite: the metrics' separate read-only connection; PostgreSQL: the pool.
        let reader = path.map(|p| StatsReader::open(&p).unwrap());
        let read = || match &reader {
            Some(r) => r.read().unwrap(),
            None => db.stats().unwrap(),
        };
        let jobs = |queued, running, done, failed| {
            vec![
                (JobState::Queued, queued),
                (JobState::Running, running),
                (JobState::Done, done),
                (JobState::Failed, failed),
            ]
        };
        let empty = read();
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
        db.fail_job(failed.id, failed.attempts, "no usable image stack")
            .unwrap();
        let destinations = [
            ("PACS".to_string(), "127.0.0.1:1".to_string()),
            ("NAV".to_string(), "127.0.0.1:2".to_string()),
        ];
        db.finish_job(
            running.id,
            running.attempts,
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
        assert_eq!(db.claim_deliveries(10).unwrap().len(), 3, "{name}");
        let ids: Vec<(i64, String)> = db
            .list_deliveries(10)
            .unwrap()
            .into_iter()
            .map(|r| (r.id, format!("{}/{}", r.destination, r.sop_instance_uid)))
            .collect();
        let id = |name: &str| ids.iter().find(|(_, n)| n == name).unwrap().0;
        db.mark_sent(id("PACS/1.2.9.1")).unwrap();
        db.mark_failed(id("NAV/1.2.9.1"), 3, "refused").unwrap();

        let s = read();
        assert_eq!(s.jobs, jobs(1, 0, 1, 1), "{name}");
        assert_eq!(s.instances, 0, "{name}");
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
