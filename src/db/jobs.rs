//! `jobs`: reconstruction jobs, `queued -> running -> done | failed`.
//!
//! A job's result UIDs are fixed when it is queued, so that a job re-run after a crash re-makes
//! the same instance; its deliveries are written in the transaction that marks it done.

use super::sql::{Conn, Row, Stmt, stmt};
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
    /// Runs started: the current run's fencing token ([`Db::finish_job`], [`Db::fail_job`]).
    pub attempts: i64,
    /// The process that holds (or last held) the job's lease.
    pub lease_owner: Option<String>,
}

/// What a running job needs from its source series' row.
#[derive(Debug, Clone)]
pub struct JobSource {
    /// The result series (fixed when the series was first processed).
    pub result_series_uid: String,
    /// Calling AE title the source series came from (for `reply_to_sender`).
    pub calling_ae: String,
}

/// A job failed because the node (or the process holding it) stopped every time it ran.
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
macro_rules! job_columns {
    () => {
        "id, series_instance_uid, rule, state, version, result_sop_instance_uid, created_at, started_at, finished_at, error, summary, attempts, lease_owner"
    };
}

/// The database clock on PostgreSQL, in Unix seconds: leases are timed by one clock, whatever
/// the hosts' skew.
macro_rules! pg_now {
    () => {
        "extract(epoch from clock_timestamp())::double precision"
    };
}
pub(super) use pg_now;

fn job_row(r: &Row<'_>) -> Result<JobRow, DbError> {
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
        attempts: r.get(11)?,
        lease_owner: r.get(12)?,
    })
}

static QUEUE_READ: Stmt = stmt!(
    "SELECT result_series_uid, result_version FROM series_work WHERE series_instance_uid = ?1"
);
static QUEUE_MARK: Stmt = stmt!(
    "UPDATE series_work SET state = ?4, result_series_uid = ?2, result_version = ?3 WHERE series_instance_uid = ?1"
);
static QUEUE_INSERT: Stmt = stmt!(
    "INSERT INTO jobs (series_instance_uid, rule, state, version, result_series_uid, result_sop_instance_uid, created_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id"
);
static REQUEUE_FAIL: Stmt = stmt!(
    lite: "UPDATE jobs SET state = ?3, finished_at = ?1, lease_until = NULL,
     error = 'the node stopped ' || attempts || ' times while running this job (crash or kill); not retried'
     WHERE state = ?4 AND attempts >= ?2
     RETURNING id, series_instance_uid, attempts",
    pg: "UPDATE jobs SET state = ?3, finished_at = ?1, lease_until = NULL,
     error = 'the node stopped ' || attempts::text || ' times while running this job (crash or kill); not retried'
     WHERE state = ?4 AND attempts >= ?2
     RETURNING id, series_instance_uid, attempts",
);
static REQUEUE: Stmt = stmt!(
    lite: "UPDATE jobs SET state = ?2, lease_owner = NULL, lease_until = NULL,
     error = 'interrupted by a restart (start ' || attempts || ' of ' || ?1 || '); re-queued'
     WHERE state = ?3",
    pg: "UPDATE jobs SET state = ?2, lease_owner = NULL, lease_until = NULL,
     error = 'interrupted by a restart (start ' || attempts::text || ' of ' || ?1::bigint::text || '); re-queued'
     WHERE state = ?3",
);
static EXPIRE_DEAD: Stmt = stmt!(
    lite: "UPDATE jobs SET state = ?3, finished_at = ?1, lease_owner = NULL, lease_until = NULL,
     error = 'the node stopped ' || attempts || ' times while running this job (crash or kill); not retried'
     WHERE state = ?4 AND ?5 AND lease_until < ?1 AND attempts >= ?2
     RETURNING id, series_instance_uid, attempts",
    pg: concat!("UPDATE jobs SET state = ?3, finished_at = ?1, lease_owner = NULL, lease_until = NULL,
     error = 'the node stopped ' || attempts::text || ' times while running this job (crash or kill); not retried'
     WHERE state = ?4 AND ?5 AND lease_until < ", pg_now!(), " AND attempts >= ?2
     RETURNING id, series_instance_uid, attempts"),
);
static LIST: Stmt = stmt!(concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs ORDER BY id DESC LIMIT ?1"
));
/// The oldest claimable job: queued, or running under a lease that expired (its holder
/// stopped renewing: crashed, killed, cut off). The takeover is noted in `error`.
static CLAIM: Stmt = stmt!(
    lite: concat!(
        "UPDATE jobs SET state = ?2, started_at = ?1, attempts = attempts + 1,
         lease_owner = ?4, lease_until = ?1 + ?5,
         error = CASE WHEN state = ?2
                      THEN 'interrupted (' || COALESCE(lease_owner, '?') || ' stopped renewing its lease); re-run'
                      ELSE error END
         WHERE id = (SELECT id FROM jobs WHERE state = ?3 OR (state = ?2 AND ?6 AND lease_until < ?1)
                     ORDER BY id LIMIT 1)
         RETURNING ", job_columns!()),
    pg: concat!(
        "UPDATE jobs SET state = ?2, started_at = ?1, attempts = attempts + 1,
         lease_owner = ?4, lease_until = ", pg_now!(), " + ?5,
         error = CASE WHEN state = ?2
                      THEN 'interrupted (' || COALESCE(lease_owner, '?') || ' stopped renewing its lease); re-run'
                      ELSE error END
         WHERE id = (SELECT id FROM jobs WHERE state = ?3 OR (state = ?2 AND ?6 AND lease_until < ", pg_now!(), ")
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING ", job_columns!()),
);
static SOURCE: Stmt = stmt!(
    "SELECT j.result_series_uid, s.calling_ae FROM jobs j JOIN series_work s USING (series_instance_uid) WHERE j.id = ?1"
);
static FAIL: Stmt = stmt!(
    "UPDATE jobs SET state = ?4, finished_at = ?2, error = ?3, lease_until = NULL
     WHERE id = ?1 AND lease_owner = ?5 AND attempts = ?6 AND state = ?7"
);
static FINISH: Stmt = stmt!(
    "UPDATE jobs SET state = ?4, finished_at = ?2, error = NULL, summary = ?3, lease_until = NULL
     WHERE id = ?1 AND lease_owner = ?5 AND attempts = ?6 AND state = ?7"
);
static RESULT_OBJECT: Stmt = stmt!(
    "INSERT INTO result_objects (job_id, sop_instance_uid, kind, structure, label, colour, opacity)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (job_id, sop_instance_uid) DO UPDATE SET kind = ?3, structure = ?4,
         label = ?5, colour = ?6, opacity = ?7"
);
static RENEW_JOBS: Stmt = stmt!(
    lite: "UPDATE jobs SET lease_until = ?1 + ?2 WHERE lease_owner = ?3 AND state = ?4",
    pg: concat!("UPDATE jobs SET lease_until = ", pg_now!(), " + ?2 WHERE lease_owner = ?3 AND state = ?4 AND ?1::double precision IS NOT NULL"),
);
static RENEW_OUTBOX: Stmt = stmt!(
    lite: "UPDATE outbox SET lease_until = ?1 + ?2 WHERE lease_owner = ?3 AND state = ?4",
    pg: concat!("UPDATE outbox SET lease_until = ", pg_now!(), " + ?2 WHERE lease_owner = ?3 AND state = ?4 AND ?1::double precision IS NOT NULL"),
);
static RENEW_PROCESS: Stmt = stmt!("UPDATE processes SET seen_at = ?1 WHERE owner = ?2");
static REGISTER: Stmt = stmt!(
    "INSERT INTO processes (owner, instance, role, host, pid, started_at, seen_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
     ON CONFLICT (owner) DO UPDATE SET instance = excluded.instance, role = excluded.role,
         host = excluded.host, pid = excluded.pid, seen_at = excluded.seen_at"
);
static PROCESSES: Stmt = stmt!(
    "SELECT owner, instance, role, host, pid, started_at, seen_at FROM processes ORDER BY owner"
);

/// One process that uses the index (table `processes`), for `m3dnode jobs`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRow {
    /// Its lease owner id.
    pub owner: String,
    /// Its `[index] instance` name.
    pub instance: String,
    /// What it runs (`serve`, `worker`, ...).
    pub role: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id on that host.
    pub pid: i64,
    /// When it registered (Unix seconds).
    pub started_at: f64,
    /// When it last renewed its leases (Unix seconds).
    pub seen_at: f64,
}

fn failed_row(r: &Row<'_>) -> Result<FailedAtStart, DbError> {
    Ok(FailedAtStart {
        id: r.get(0)?,
        series_instance_uid: r.get(1)?,
        attempts: r.get(2)?,
    })
}

/// This host's name, for `processes`.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl Db {
    /// Queues a job for a complete series (a new result version in the series' result
    /// series) and marks the series processed.
    pub fn queue_job(&self, series_uid: &str, rule: &str) -> Result<i64, DbError> {
        self.tx(|c| {
            let (result_series, version): (Option<String>, i64) =
                c.one(&QUEUE_READ, &[&series_uid], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let result_series = result_series.unwrap_or_else(new_uid);
            let version = version + 1;
            c.exec(
                &QUEUE_MARK,
                &[
                    &series_uid,
                    &result_series,
                    &version,
                    &SeriesState::Processed,
                ],
            )?;
            c.one(
                &QUEUE_INSERT,
                &[
                    &series_uid,
                    &rule,
                    &JobState::Queued,
                    &version,
                    &result_series,
                    &new_uid(),
                    &now(),
                ],
                |r| r.get(0),
            )
        })
    }

    /// Jobs a crash or kill left running go back to the queue, unless they have been started
    /// `max_attempts` times already: those are failed with the reason (a job that crashes the
    /// node would otherwise crash it at every start). Returns (failed, how many re-queued).
    /// The delivery leases of the previous run are freed too.
    ///
    /// SQLite only, at start-up (the storage lock proves the previous holder dead). On
    /// PostgreSQL other processes' jobs may be running, so nothing is touched: their leases
    /// expire instead ([`Db::claim_job`], [`Db::expire_dead_jobs`]).
    pub fn requeue_interrupted_jobs(
        &self,
        max_attempts: i64,
    ) -> Result<(Vec<FailedAtStart>, usize), DbError> {
        if self.is_postgres() {
            return Ok((Vec::new(), 0));
        }
        self.tx(|c| {
            let failed = c.all(
                &REQUEUE_FAIL,
                &[&now(), &max_attempts, &JobState::Failed, &JobState::Running],
                failed_row,
            )?;
            let requeued = c.exec(
                &REQUEUE,
                &[&max_attempts, &JobState::Queued, &JobState::Running],
            )?;
            super::outbox::release_all(c)?;
            Ok((failed, requeued as usize))
        })
    }

    /// Running jobs whose lease expired after they had been started `max_attempts` times
    /// fail with the reason (their holders died every time: a job that kills the process
    /// must not kill the next one too). Returns them. On SQLite only once leases are kept
    /// ([`Db::set_owner`]); start-up does it there ([`Db::requeue_interrupted_jobs`]).
    pub fn expire_dead_jobs(&self, max_attempts: i64) -> Result<Vec<FailedAtStart>, DbError> {
        self.run(|c| {
            c.all(
                &EXPIRE_DEAD,
                &[
                    &now(),
                    &max_attempts,
                    &JobState::Failed,
                    &JobState::Running,
                    &self.leases_kept(),
                ],
                failed_row,
            )
        })
    }

    /// Whether expired leases may be taken over: always on PostgreSQL; on SQLite once a lease
    /// keeper runs ([`Db::set_owner`]): the one process's worker threads share one owner, and
    /// without renewal a job longer than the lease would be taken from a live worker.
    fn leases_kept(&self) -> bool {
        self.is_postgres() || self.lease.get().is_some()
    }

    /// The most recent jobs, newest first.
    pub fn list_jobs(&self, limit: usize) -> Result<Vec<JobRow>, DbError> {
        self.run(|c| c.all(&LIST, &[&(limit as i64)], job_row))
    }

    /// Takes the oldest queued job (or a running one whose lease expired: its holder
    /// stopped; on SQLite only once [`Db::set_owner`] was called), marks it running under this handle's lease and counts the start (committed
    /// before the job runs, so that a crash during it is counted too). The returned
    /// `attempts` is the run's fencing token. On PostgreSQL concurrent claimers skip each
    /// other's rows (`FOR UPDATE SKIP LOCKED`).
    pub fn claim_job(&self) -> Result<Option<JobRow>, DbError> {
        let owner = self.owner();
        let lease = self.lease_seconds();
        self.run(|c| {
            c.opt(
                &CLAIM,
                &[
                    &now(),
                    &JobState::Running,
                    &JobState::Queued,
                    &owner,
                    &lease,
                    &self.leases_kept(),
                ],
                job_row,
            )
        })
    }

    /// The result series and source AE of a job.
    pub fn job_source(&self, job_id: i64) -> Result<JobSource, DbError> {
        self.run(|c| {
            c.one(&SOURCE, &[&job_id], |r| {
                Ok(JobSource {
                    result_series_uid: r.get(0)?,
                    calling_ae: r.get(1)?,
                })
            })
        })
    }

    /// Records a job's failure and why, if this handle still holds its run `attempts`
    /// (else [`DbError::LeaseLost`], and nothing is written).
    pub fn fail_job(&self, job_id: i64, attempts: i64, message: &str) -> Result<(), DbError> {
        let owner = self.owner();
        self.run(|c| {
            let n = c.exec(
                &FAIL,
                &[
                    &job_id,
                    &now(),
                    &message,
                    &JobState::Failed,
                    &owner,
                    &attempts,
                    &JobState::Running,
                ],
            )?;
            if n == 0 {
                return Err(DbError::LeaseLost);
            }
            Ok(())
        })
    }

    /// Marks a job done, records the objects it made and queues their deliveries, in one
    /// transaction: a crash between them would lose the deliveries of a done job. Fenced:
    /// when this handle no longer holds the run `attempts` (another process took the job
    /// over), nothing is written and the answer is [`DbError::LeaseLost`].
    pub fn finish_job(
        &self,
        job_id: i64,
        attempts: i64,
        summary: &str,
        objects: &[super::ResultObject<'_>],
        deliveries: &[super::NewDeliveries<'_>],
    ) -> Result<(), DbError> {
        let owner = self.owner();
        self.tx(|c| {
            let n = c.exec(
                &FINISH,
                &[
                    &job_id,
                    &now(),
                    &summary,
                    &JobState::Done,
                    &owner,
                    &attempts,
                    &JobState::Running,
                ],
            )?;
            if n == 0 {
                return Err(DbError::LeaseLost);
            }
            for d in deliveries {
                super::outbox::enqueue(c, Some(job_id), d)?;
            }
            for o in objects {
                write_result_object(c, job_id, o)?;
            }
            Ok(())
        })
    }

    /// Extends the leases this handle holds (running jobs, claimed deliveries) by the lease
    /// length from now, and marks its process seen. Returns (jobs, deliveries) renewed. A
    /// lease keeper calls it every third of the lease.
    pub fn renew_leases(&self) -> Result<(u64, u64), DbError> {
        let owner = self.owner();
        let lease = self.lease_seconds();
        self.tx(|c| {
            let t = now();
            let jobs = c.exec(&RENEW_JOBS, &[&t, &lease, &owner, &JobState::Running])?;
            let outbox = c.exec(
                &RENEW_OUTBOX,
                &[&t, &lease, &owner, &super::DeliveryState::Pending],
            )?;
            c.exec(&RENEW_PROCESS, &[&t, &owner])?;
            Ok((jobs, outbox))
        })
    }

    /// Registers this handle's process (its owner id, `[index] instance`, role, host and
    /// pid) in `processes`, or refreshes its row.
    pub fn register_process(&self, role: &str, instance: &str) -> Result<(), DbError> {
        let owner = self.owner();
        let host = hostname();
        let pid = i64::from(std::process::id());
        self.run(|c| {
            c.exec(&REGISTER, &[&owner, &instance, &role, &host, &pid, &now()])
                .map(drop)
        })
    }

    /// Every registered process, by owner.
    pub fn list_processes(&self) -> Result<Vec<ProcessRow>, DbError> {
        self.run(|c| {
            c.all(&PROCESSES, &[], |r| {
                Ok(ProcessRow {
                    owner: r.get(0)?,
                    instance: r.get(1)?,
                    role: r.get(2)?,
                    host: r.get(3)?,
                    pid: r.get(4)?,
                    started_at: r.get(5)?,
                    seen_at: r.get(6)?,
                })
            })
        })
    }
}

fn write_result_object(
    c: &mut Conn<'_>,
    job_id: i64,
    o: &super::ResultObject<'_>,
) -> Result<(), DbError> {
    c.exec(
        &RESULT_OBJECT,
        &[
            &job_id,
            &o.sop_instance_uid,
            &o.kind,
            &o.structure.map(|s| s as i64),
            &o.label,
            &o.colour,
            &o.opacity.map(f64::from),
        ],
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::db::{
        Db, DbError, JobState, NewDeliveries, NewSeriesWork, ResultObject, test_backend_pairs,
        test_backends,
    };

    fn queue(db: &Db, series: &str) -> i64 {
        db.add_series_work(&NewSeriesWork {
            series_instance_uid: series,
            study_instance_uid: "1.2",
            calling_ae: "CT",
            rule: Some("bone"),
            expected: None,
        })
        .unwrap();
        db.queue_job(series, "bone").unwrap()
    }

    #[test]
    fn jobs_queue_claim_finish_and_fail_in_order() {
        for (name, db, _dir) in test_backends() {
            let first = queue(&db, "1.2.1");
            let second = queue(&db, "1.2.2");
            assert!(second > first, "{name}");
            let a = db.claim_job().unwrap().unwrap();
            assert_eq!((a.id, a.state, a.attempts), (first, JobState::Running, 1));
            assert_eq!(a.lease_owner.as_deref(), Some("local"), "{name}");
            let b = db.claim_job().unwrap().unwrap();
            assert_eq!(b.id, second, "{name}");
            assert!(db.claim_job().unwrap().is_none(), "{name}");
            let objects = [ResultObject {
                sop_instance_uid: &a.result_sop_instance_uid,
                kind: "stl",
                structure: Some(0),
                label: Some("Bone"),
                colour: Some("#f1d691"),
                opacity: Some(0.5),
            }];
            let dests = [("PACS".to_string(), "pacs:104".to_string())];
            let deliveries = [NewDeliveries {
                sop_instance_uid: &a.result_sop_instance_uid,
                path: "r.dcm",
                destinations: &dests,
                deadline_seconds: 60.0,
            }];
            db.finish_job(a.id, a.attempts, "ok", &objects, &deliveries)
                .unwrap();
            db.fail_job(b.id, b.attempts, "no usable image stack")
                .unwrap();
            let jobs = db.list_jobs(10).unwrap();
            assert_eq!(jobs[0].state, JobState::Failed, "{name}");
            assert_eq!(jobs[0].error.as_deref(), Some("no usable image stack"));
            assert_eq!(jobs[1].state, JobState::Done, "{name}");
            assert_eq!(jobs[1].summary.as_deref(), Some("ok"));
            assert_eq!(db.list_deliveries(10).unwrap().len(), 1, "{name}");
            let source = db.job_source(a.id).unwrap();
            assert_eq!(source.calling_ae, "CT");
            let results = db.recent_results(5).unwrap();
            assert_eq!(results[0].meshes[0].opacity, Some(0.5), "{name}");
            assert_eq!(results[0].meshes[0].label.as_deref(), Some("Bone"));
        }
    }

    /// A stop during a job: SQLite re-queues at the next start; PostgreSQL leaves the jobs of
    /// other processes alone.
    #[test]
    fn interrupted_jobs_are_requeued_at_a_sqlite_start_only() {
        for (name, db, _dir) in test_backends() {
            queue(&db, "1.2.1");
            let job = db.claim_job().unwrap().unwrap();
            let (failed, requeued) = db.requeue_interrupted_jobs(3).unwrap();
            assert!(failed.is_empty());
            if db.is_postgres() {
                assert_eq!(requeued, 0, "{name}");
                assert!(db.claim_job().unwrap().is_none());
            } else {
                assert_eq!(requeued, 1, "{name}");
                let again = db.claim_job().unwrap().unwrap();
                assert_eq!((again.id, again.attempts), (job.id, 2));
                assert!(again.lease_owner.is_some());
            }
        }
    }

    /// Two processes: a lease that is not renewed expires and the other takes the job over;
    /// the first one's finish is then refused and writes nothing.
    #[test]
    fn an_expired_lease_is_taken_over_and_the_old_holder_is_fenced_out() {
        for (name, a, b, _dir) in test_backend_pairs() {
            a.set_owner("A", 0.5);
            b.set_owner("B", 30.0);
            assert!(!a.set_owner("C", 1.0), "the owner is set once");
            assert_eq!(a.owner(), "A");
            queue(&a, "1.2.1");
            let held = a.claim_job().unwrap().unwrap();
            assert_eq!(held.lease_owner.as_deref(), Some("A"));
            assert!(b.claim_job().unwrap().is_none(), "{name}: leased");
            std::thread::sleep(Duration::from_millis(800));
            let taken = b.claim_job().unwrap().unwrap();
            assert_eq!((taken.id, taken.attempts), (held.id, 2), "{name}");
            assert_eq!(taken.lease_owner.as_deref(), Some("B"));
            let note = taken.error.clone().unwrap_or_default();
            assert!(
                note.contains("interrupted (A stopped renewing"),
                "{name}: {note}"
            );
            let dests = [("PACS".to_string(), "pacs:104".to_string())];
            let deliveries = [NewDeliveries {
                sop_instance_uid: &held.result_sop_instance_uid,
                path: "r.dcm",
                destinations: &dests,
                deadline_seconds: 60.0,
            }];
            assert!(matches!(
                a.finish_job(held.id, held.attempts, "late", &[], &deliveries),
                Err(DbError::LeaseLost)
            ));
            assert!(
                a.list_deliveries(10).unwrap().is_empty(),
                "{name}: rolled back"
            );
            assert!(matches!(
                a.fail_job(held.id, held.attempts, "late"),
                Err(DbError::LeaseLost)
            ));
            // The same owner with a stale token is fenced out as well.
            assert!(matches!(
                b.fail_job(held.id, held.attempts, "stale token"),
                Err(DbError::LeaseLost)
            ));
            b.finish_job(taken.id, taken.attempts, "ok", &[], &deliveries)
                .unwrap();
            let done = &b.list_jobs(1).unwrap()[0];
            assert_eq!(done.state, JobState::Done, "{name}");
            assert_eq!(
                done.lease_owner.as_deref(),
                Some("B"),
                "the finisher is named"
            );
            assert_eq!(a.list_deliveries(10).unwrap().len(), 1, "{name}");
        }
    }

    /// Renewal keeps a lease alive past its first term; a job whose holders kept dying
    /// fails once its lease expires at the attempt limit.
    #[test]
    fn renewed_leases_hold_and_dead_jobs_expire_at_the_attempt_limit() {
        for (name, a, b, _dir) in test_backend_pairs() {
            a.set_owner("A", 1.5);
            b.set_owner("B", 0.3);
            a.register_process("worker", "w1").unwrap();
            b.register_process("serve", "rx1").unwrap();
            queue(&a, "1.2.1");
            let held = a.claim_job().unwrap().unwrap();
            std::thread::sleep(Duration::from_millis(900));
            assert_eq!(a.renew_leases().unwrap(), (1, 0), "{name}");
            std::thread::sleep(Duration::from_millis(900));
            assert!(b.claim_job().unwrap().is_none(), "{name}: renewed");
            let procs = a.list_processes().unwrap();
            let owners: Vec<&str> = procs.iter().map(|p| p.owner.as_str()).collect();
            assert_eq!(owners, ["A", "B"], "{name}");
            assert_eq!(procs[0].role, "worker");
            assert_eq!(procs[0].pid, i64::from(std::process::id()));
            assert!(
                procs[0].seen_at > procs[0].started_at,
                "{name}: renewal marks it seen"
            );
            // B takes it over when A stops renewing, then B stops too.
            std::thread::sleep(Duration::from_millis(1700));
            let taken = b.claim_job().unwrap().unwrap();
            assert_eq!(taken.attempts, 2);
            assert!(
                b.expire_dead_jobs(2).unwrap().is_empty(),
                "{name}: lease live"
            );
            std::thread::sleep(Duration::from_millis(500));
            let dead = a.expire_dead_jobs(2).unwrap();
            assert_eq!(dead.len(), 1, "{name}");
            assert_eq!((dead[0].id, dead[0].attempts), (held.id, 2));
            let job = &a.list_jobs(1).unwrap()[0];
            assert_eq!(job.state, JobState::Failed, "{name}");
            assert_eq!(
                job.error.as_deref(),
                Some(
                    "the node stopped 2 times while running this job (crash or kill); not retried"
                )
            );
            assert!(a.claim_job().unwrap().is_none(), "{name}");
        }
    }

    /// A SQLite node whose owner nobody set (no lease keeper) never takes a running job from
    /// its own other worker, however long it runs.
    #[test]
    fn sqlite_without_a_lease_keeper_takes_nothing_over() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("index.sqlite")).unwrap();
        queue(&db, "1.2.1");
        let held = db.claim_job().unwrap().unwrap();
        db.run(|c| {
            static EXPIRE: crate::db::sql::Stmt =
                crate::db::sql::stmt!("UPDATE jobs SET lease_until = 0, attempts = 9");
            c.exec(&EXPIRE, &[])
        })
        .unwrap();
        assert!(db.claim_job().unwrap().is_none());
        assert!(db.expire_dead_jobs(3).unwrap().is_empty());
        db.finish_job(held.id, 9, "ok", &[], &[]).unwrap();
    }

    /// Concurrent claimers never get the same job (PostgreSQL: SKIP LOCKED).
    #[test]
    fn concurrent_claimers_get_different_jobs() {
        for (name, a, b, _dir) in test_backend_pairs() {
            a.set_owner("A", 30.0);
            b.set_owner("B", 30.0);
            for i in 0..20 {
                queue(&a, &format!("1.2.{i}"));
            }
            let barrier = std::sync::Barrier::new(2);
            let claimed: Vec<Vec<i64>> = std::thread::scope(|s| {
                let runs: Vec<_> = [&a, &b]
                    .into_iter()
                    .map(|db| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            let mut ids = Vec::new();
                            while let Some(job) = db.claim_job().unwrap() {
                                ids.push(job.id);
                            }
                            ids
                        })
                    })
                    .collect();
                runs.into_iter().map(|r| r.join().unwrap()).collect()
            });
            let mut all: Vec<i64> = claimed.concat();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), 20, "{name}: {claimed:?}");
            assert_eq!(
                claimed[0].len() + claimed[1].len(),
                20,
                "{name}: no job twice"
            );
        }
    }
}
