//! Series completion decided in the index, for a storage shared by several processes.
//!
//! With one process, the series tracker counts the instances it receives. With several, the
//! instances of one series may arrive at different receivers, and a receiver may die with
//! its timers: the facts are the `instances` rows, committed before each acknowledgement
//! whichever process wrote them. Every process reads them ([`Db::receiving_facts`]) and
//! queues a complete series' job by a compare-and-set on its `series_work` row
//! ([`Db::queue_job_if_receiving`]): under concurrent completers exactly one wins.

use super::sql::{Stmt, stmt};
use super::{Db, DbError, JobState, SeriesState, now};
use crate::store::uid::new_uid;

/// What decides whether a receiving series is complete.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivingFacts {
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// The rule that routed it.
    pub rule: String,
    /// Instances expected (rule or Images in Acquisition).
    pub expected: Option<i64>,
    /// Instances stored, by every process.
    pub count: i64,
    /// Arrival of the last of them (Unix seconds; the routing time when none is left).
    pub last_received_at: f64,
}

static FACTS: Stmt = stmt!(
    "SELECT w.series_instance_uid, w.rule, w.expected,
        (SELECT COUNT(*) FROM instances i WHERE i.series_instance_uid = w.series_instance_uid),
        COALESCE((SELECT MAX(i.received_at) FROM instances i
                  WHERE i.series_instance_uid = w.series_instance_uid), w.last_at)
     FROM series_work w WHERE w.state = ?1 AND w.rule IS NOT NULL"
);
/// The compare-and-set: only a row still receiving is taken; a second completer's UPDATE
/// waits for the first's row lock, then finds it processed and changes nothing.
static TAKE: Stmt = stmt!(
    "UPDATE series_work SET state = ?2, result_series_uid = COALESCE(result_series_uid, ?3),
        result_version = result_version + 1,
        counted = (SELECT COUNT(*) FROM instances WHERE series_instance_uid = ?1)
     WHERE series_instance_uid = ?1 AND state = ?4
     RETURNING result_series_uid, result_version"
);
static INSERT_JOB: Stmt = stmt!(
    "INSERT INTO jobs (series_instance_uid, rule, state, version, result_series_uid, result_sop_instance_uid, created_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id"
);
/// A late instance reopens a processed series only when the index holds more instances
/// than its last job was queued for.
static REOPEN_IF_GROWN: Stmt = stmt!(
    "UPDATE series_work SET state = ?2, last_at = ?3
     WHERE series_instance_uid = ?1 AND state = ?4
       AND (SELECT COUNT(*) FROM instances WHERE series_instance_uid = ?1) > COALESCE(counted, 0)"
);

impl Db {
    /// Every series a rule routed that is still receiving, with its stored count and last
    /// arrival.
    pub fn receiving_facts(&self) -> Result<Vec<ReceivingFacts>, DbError> {
        self.run(|c| {
            c.all(&FACTS, &[&SeriesState::Receiving], |r| {
                Ok(ReceivingFacts {
                    series_instance_uid: r.get(0)?,
                    rule: r.get(1)?,
                    expected: r.get(2)?,
                    count: r.get(3)?,
                    last_received_at: r.get(4)?,
                })
            })
        })
    }

    /// Queues the job of a complete series if it is still receiving, and marks it processed
    /// with the instances counted; `None` when another process queued it first.
    pub fn queue_job_if_receiving(
        &self,
        series_uid: &str,
        rule: &str,
    ) -> Result<Option<i64>, DbError> {
        let fresh = new_uid();
        let result_uid = new_uid();
        self.tx(|c| {
            let taken = c.opt(
                &TAKE,
                &[
                    &series_uid,
                    &SeriesState::Processed,
                    &fresh,
                    &SeriesState::Receiving,
                ],
                |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)),
            )?;
            let Some((result_series, version)) = taken else {
                return Ok(None);
            };
            let id = c.one(
                &INSERT_JOB,
                &[
                    &series_uid,
                    &rule,
                    &JobState::Queued,
                    &version,
                    &result_series,
                    &result_uid,
                    &now(),
                ],
                |r| r.get::<i64>(0),
            )?;
            Ok(Some(id))
        })
    }

    /// A processed series receives again if the index holds instances its last job did not
    /// count (`late_instances = rebuild` on a shared index). True when it was reopened.
    pub fn reopen_if_grown(&self, series_instance_uid: &str) -> Result<bool, DbError> {
        self.run(|c| {
            c.exec(
                &REOPEN_IF_GROWN,
                &[
                    &series_instance_uid,
                    &SeriesState::Receiving,
                    &now(),
                    &SeriesState::Processed,
                ],
            )
            .map(|n| n > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::db::{Db, JobState, NewRow, NewSeriesWork, SeriesState, test_backend_pairs};
    use crate::store::header::Header;

    const SERIES: &str = "1.7.1.1";

    fn store(db: &Db, n: usize) {
        let mut header = Header {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
            sop_instance_uid: format!("{SERIES}.{n}"),
            study_instance_uid: "1.7.1".into(),
            series_instance_uid: SERIES.into(),
            modality: Some("MR".into()),
            instance_number: Some(n as i64),
            ..Default::default()
        };
        header.query.patient_id = Some("P".into());
        db.upsert_all([&NewRow {
            header,
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            path: format!("{n}.dcm"),
            size: 10,
            calling_ae: "MR".into(),
        }])
        .unwrap();
    }

    fn route(db: &Db) -> bool {
        db.add_series_work(&NewSeriesWork {
            series_instance_uid: SERIES,
            study_instance_uid: "1.7.1",
            calling_ae: "MR",
            rule: Some("head"),
            expected: Some(4),
        })
        .unwrap()
    }

    /// Two processes share a series: instances written through either count, the first
    /// router wins, and of two completers exactly one queues the job, even when both race.
    #[test]
    fn two_processes_see_one_count_and_queue_one_job() {
        for (name, a, b, _dir) in test_backend_pairs() {
            store(&a, 1);
            assert!(route(&a), "{name}");
            assert!(!route(&b), "{name}: the second router must lose");
            store(&b, 2);
            store(&a, 3);
            let facts = b.receiving_facts().unwrap();
            assert_eq!(facts.len(), 1, "{name}");
            assert_eq!(facts[0].count, 3, "{name}");
            assert_eq!(facts[0].expected, Some(4));
            assert_eq!(facts[0].rule, "head");
            assert!(facts[0].last_received_at > 0.0);
            store(&b, 4);
            let (ra, rb) = std::thread::scope(|s| {
                let ta = s.spawn(|| a.queue_job_if_receiving(SERIES, "head").unwrap());
                let tb = s.spawn(|| b.queue_job_if_receiving(SERIES, "head").unwrap());
                (ta.join().unwrap(), tb.join().unwrap())
            });
            assert_eq!(
                usize::from(ra.is_some()) + usize::from(rb.is_some()),
                1,
                "{name}: exactly one completer queues ({ra:?}, {rb:?})"
            );
            let jobs = a.list_jobs(10).unwrap();
            assert_eq!(jobs.len(), 1, "{name}");
            assert_eq!((jobs[0].state, jobs[0].version), (JobState::Queued, 1));
            assert!(a.receiving_facts().unwrap().is_empty(), "{name}");
            assert_eq!(
                b.series_work(SERIES).unwrap().unwrap().state,
                SeriesState::Processed
            );
            // The event of an instance the job counted reopens nothing; a new one does.
            assert!(!a.reopen_if_grown(SERIES).unwrap(), "{name}");
            store(&a, 5);
            assert!(b.reopen_if_grown(SERIES).unwrap(), "{name}");
            assert!(!a.reopen_if_grown(SERIES).unwrap(), "{name}: reopened once");
            let id = b.queue_job_if_receiving(SERIES, "head").unwrap();
            assert!(id.is_some(), "{name}");
            let jobs = a.list_jobs(10).unwrap();
            assert_eq!(jobs.len(), 2, "{name}");
            assert_eq!(jobs[0].version, 2, "{name}: the rebuild is version 2");
            assert!(a.queue_job_if_receiving(SERIES, "head").unwrap().is_none());
        }
    }
}
