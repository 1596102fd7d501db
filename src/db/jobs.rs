//! `jobs`: reconstruction jobs, `queued -> running -> done | failed`.
//!
//! A job's result UIDs are fixed when it is queued, so that a job re-run after a crash re-makes
//! the same instance; its deliveries are written in the transaction that marks it done.

use rusqlite::{OptionalExtension, params};

use super::{Db, DbError, JobState, SeriesState, now};
use crate::store::uid::new_uid;

/// One row of the job list.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Job id.
    pub id: i64,
    /// Source series.
    pub series_instance_uid: String,
    /// Rule that routed it.
    pub rule: String,
    /// Where it stands.
    pub state: JobState,
    /// Result version (Instance Number).
    pub version: i64,
    /// Result SOP Instance UID.
    pub result_sop_instance_uid: String,
    /// Times (Unix seconds).
    pub created_at: f64,
    /// Start of the last run.
    pub started_at: Option<f64>,
    /// End of the last run.
    pub finished_at: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Mesh summary of a done job.
    pub summary: Option<String>,
}

/// What a running job needs from its source series' row.
#[derive(Debug, Clone)]
pub struct JobSource {
    /// The result series (fixed when the series was first processed).
    pub result_series_uid: String,
    /// Calling AE title the source series came from (for `reply_to_sender`).
    pub calling_ae: String,
}

/// A job failed at start-up because the node stopped every time it ran.
#[derive(Debug, Clone)]
pub struct FailedAtStart {
    /// Job id.
    pub id: i64,
    /// Source series.
    pub series_instance_uid: String,
    /// Starts counted.
    pub attempts: i64,
}

/// Columns of [`JobRow`], in [`job_row`]'s order.
const JOB_COLUMNS: &str = "id, series_instance_uid, rule, state, version, result_sop_instance_uid, created_at, started_at, finished_at, error, summary";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        series_instance_uid: r.get(1)?,
        rule: r.get(2)?,
        state: r.get(3)?,
        version: r.get(4)?,
        result_sop_instance_uid: r.get(5)?,
        created_at: r.get(6)?,
        started_at: r.get(7)?,
        finished_at: r.get(8)?,
        error: r.get(9)?,
        summary: r.get(10)?,
    })
}

impl Db {
    /// Queues a job for a complete series (a new result version in the series' result
    /// series) and marks the series processed.
    pub fn queue_job(&self, series_uid: &str, rule: &str) -> Result<i64, DbError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let (result_series, version): (Option<String>, i64) = tx.query_row(
                "SELECT result_series_uid, result_version FROM series_work WHERE series_instance_uid = ?1",
                [series_uid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let result_series = result_series.unwrap_or_else(new_uid);
            let version = version + 1;
            tx.execute(
                "UPDATE series_work SET state = ?4, result_series_uid = ?2, result_version = ?3 WHERE series_instance_uid = ?1",
                params![series_uid, result_series, version, SeriesState::Processed],
            )?;
            tx.execute(
                "INSERT INTO jobs (series_instance_uid, rule, state, version, result_series_uid, result_sop_instance_uid, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![series_uid, rule, JobState::Queued, version, result_series, new_uid(), now()],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(id)
        })
    }

    /// Jobs a crash or kill left running go back to the queue, unless they have been started
    /// `max_attempts` times already: those are failed with the reason (a job that crashes the
    /// node would otherwise crash it at every start). Returns (failed, how many re-queued).
    pub fn requeue_interrupted_jobs(
        &self,
        max_attempts: i64,
    ) -> Result<(Vec<FailedAtStart>, usize), DbError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let failed: Vec<FailedAtStart> = tx
                .prepare(
                    "UPDATE jobs SET state = ?3, finished_at = ?1,
                     error = 'the node stopped ' || attempts || ' times while running this job (crash or kill); not retried'
                     WHERE state = ?4 AND attempts >= ?2
                     RETURNING id, series_instance_uid, attempts",
                )?
                .query_map(params![now(), max_attempts, JobState::Failed, JobState::Running], |r| {
                    Ok(FailedAtStart {
                        id: r.get(0)?,
                        series_instance_uid: r.get(1)?,
                        attempts: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let requeued = tx.execute(
                "UPDATE jobs SET state = ?2,
                 error = 'interrupted by a restart (start ' || attempts || ' of ' || ?1 || '); re-queued'
                 WHERE state = ?3",
                params![max_attempts, JobState::Queued, JobState::Running],
            )?;
            tx.commit()?;
            Ok((failed, requeued))
        })
    }

    /// The most recent jobs, newest first.
    pub fn list_jobs(&self, limit: usize) -> Result<Vec<JobRow>, DbError> {
        self.with(|c| {
            c.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?1"
            ))?
            .query_map([limit as i64], job_row)?
            .collect()
        })
    }

    /// Takes the oldest queued job, marks it running and counts the start (committed before
    /// the job runs, so that a crash during it is counted too).
    pub fn claim_job(&self) -> Result<Option<JobRow>, DbError> {
        self.with(|c| {
            c.prepare_cached(&format!(
                "UPDATE jobs SET state = ?2, started_at = ?1, attempts = attempts + 1
                 WHERE id = (SELECT id FROM jobs WHERE state = ?3 ORDER BY id LIMIT 1)
                 RETURNING {JOB_COLUMNS}"
            ))?
            .query_row(params![now(), JobState::Running, JobState::Queued], job_row)
            .optional()
        })
    }

    /// The result series and source AE of a job.
    pub fn job_source(&self, job_id: i64) -> Result<JobSource, DbError> {
        self.with(|c| {
            c.query_row(
                "SELECT j.result_series_uid, s.calling_ae FROM jobs j JOIN series_work s USING (series_instance_uid) WHERE j.id = ?1",
                [job_id],
                |r| {
                    Ok(JobSource {
                        result_series_uid: r.get(0)?,
                        calling_ae: r.get(1)?,
                    })
                },
            )
        })
    }

    /// Records a job's failure and why.
    pub fn fail_job(&self, job_id: i64, message: &str) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET state = ?4, finished_at = ?2, error = ?3 WHERE id = ?1",
                params![job_id, now(), message, JobState::Failed],
            )
            .map(drop)
        })
    }

    /// Marks a job done, records the objects it made and queues their deliveries, in one
    /// transaction: a crash between them would lose the deliveries of a done job.
    pub fn finish_job(
        &self,
        job_id: i64,
        summary: &str,
        objects: &[super::ResultObject<'_>],
        deliveries: &[super::NewDeliveries<'_>],
    ) -> Result<(), DbError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            for d in deliveries {
                super::outbox::enqueue(&tx, Some(job_id), d)?;
            }
            for o in objects {
                tx.execute(
                    "INSERT INTO result_objects (job_id, sop_instance_uid, kind, structure, label, colour, opacity)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (job_id, sop_instance_uid) DO UPDATE SET kind = ?3, structure = ?4,
                         label = ?5, colour = ?6, opacity = ?7",
                    params![
                        job_id,
                        o.sop_instance_uid,
                        o.kind,
                        o.structure.map(|s| s as i64),
                        o.label,
                        o.colour,
                        o.opacity.map(f64::from)
                    ],
                )?;
            }
            tx.execute(
                "UPDATE jobs SET state = ?4, finished_at = ?2, error = NULL, summary = ?3 WHERE id = ?1",
                params![job_id, now(), summary, JobState::Done],
            )?;
            tx.commit()
        })
    }
}
