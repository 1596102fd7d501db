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
