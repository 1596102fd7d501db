//! `commitments` and `commitment_items`: Storage Commitment transactions (PS3.4 Annex J).
//!
//! A request is written here before its N-ACTION-RSP goes out, so that one arriving just
//! before a restart is still answered after it; the decision (Event Type, failure reasons) is
//! written before the report is sent, so that a restart re-sends the same report.

use super::sql::{Conn, Stmt, stmt};
use super::{Db, DbError, now, state::CommitmentState};

/// One listed instance and, once decided, why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitmentItem {
    /// Referenced SOP Class UID as the requester listed it.
    pub sop_class_uid: String,
    /// Referenced SOP Instance UID.
    pub sop_instance_uid: String,
    /// Failure Reason (0008,1197); `None`: committed, or still pending while waiting.
    pub failure_reason: Option<u16>,
}

/// A transaction with its items (the worker's view).
#[derive(Debug, Clone, PartialEq)]
pub struct Commitment {
    /// Transaction UID (0008,1195).
    pub transaction_uid: String,
    /// The requester.
    pub calling_ae: String,
    /// The AE title it called (the node's).
    pub called_ae: String,
    /// Where it stands.
    pub state: CommitmentState,
    /// 1 or 2 once decided.
    pub event_type: Option<u16>,
    /// When the N-ACTION arrived (Unix seconds).
    pub requested_at: f64,
    /// When still-missing instances fail (Unix seconds).
    pub deadline_at: f64,
    /// Report attempts on a new association so far.
    pub attempts: i64,
    /// The listed instances, in request order.
    pub items: Vec<CommitmentItem>,
}

/// One transaction for listings (`m3dnode jobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct CommitmentSummary {
    /// Transaction UID.
    pub transaction_uid: String,
    /// The requester.
    pub calling_ae: String,
    /// Where it stands.
    pub state: CommitmentState,
    /// 1 or 2 once decided.
    pub event_type: Option<u16>,
    /// Listed instances.
    pub items: i64,
    /// Of which failed (decided transactions only).
    pub failed: i64,
    /// When requested (Unix seconds).
    pub requested_at: f64,
    /// When reported (Unix seconds).
    pub reported_at: Option<f64>,
    /// Report attempts on a new association.
    pub attempts: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// What a new N-ACTION's Transaction UID means (decision D1 of docs/issue-19-design.md).
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// A new transaction, now stored as `waiting`.
    New(Commitment),
    /// The same requester with the same list: a retry; the stored transaction, whose report
    /// is to be sent (again).
    Retry(Commitment),
    /// The UID is taken by another requester or another list: every item fails with 0x0131
    /// (duplicate transaction UID); nothing is stored.
    Conflict,
}

static HEAD: Stmt = stmt!(
    "SELECT calling_ae, called_ae, state, event_type, requested_at, deadline_at, attempts
     FROM commitments WHERE transaction_uid = ?1"
);
/// Request order: SQLite's rowid, PostgreSQL's `seq` (migration 6).
static ITEMS: Stmt = stmt!(
    lite: "SELECT sop_class_uid, sop_instance_uid, failure_reason FROM commitment_items
     WHERE transaction_uid = ?1 ORDER BY rowid",
    pg: "SELECT sop_class_uid, sop_instance_uid, failure_reason FROM commitment_items
     WHERE transaction_uid = ?1 ORDER BY seq",
);
static INSERT: Stmt = stmt!(
    "INSERT INTO commitments (transaction_uid, calling_ae, called_ae, state,
     requested_at, deadline_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
);
static INSERT_ITEM: Stmt = stmt!(
    "INSERT INTO commitment_items (transaction_uid, sop_class_uid, sop_instance_uid)
     VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING"
);
static CLEAR_REASONS: Stmt =
    stmt!("UPDATE commitment_items SET failure_reason = NULL WHERE transaction_uid = ?1");
static SET_REASON: Stmt = stmt!(
    "UPDATE commitment_items SET failure_reason = ?3
     WHERE transaction_uid = ?1 AND sop_instance_uid = ?2"
);
static DECIDE: Stmt =
    stmt!("UPDATE commitments SET state = ?2, event_type = ?3 WHERE transaction_uid = ?1");
static REOPEN: Stmt = stmt!(
    "UPDATE commitments SET state = ?2, attempts = 0, last_error = NULL
     WHERE transaction_uid = ?1 AND event_type IS NOT NULL"
);
static REPORTED: Stmt = stmt!(
    "UPDATE commitments SET state = ?2, reported_at = ?3, last_error = NULL
     WHERE transaction_uid = ?1"
);
static ATTEMPT_FAILED: Stmt = stmt!(
    "UPDATE commitments SET attempts = attempts + ?2, last_error = ?3,
     state = CASE WHEN ?4 THEN ?5 ELSE state END
     WHERE transaction_uid = ?1"
);
static OPEN: Stmt = stmt!(
    "SELECT transaction_uid FROM commitments
     WHERE state IN ('waiting', 'reporting') ORDER BY requested_at"
);
static LIST: Stmt = stmt!(
    "SELECT m.transaction_uid, calling_ae, state, event_type, requested_at,
            reported_at, attempts, last_error,
            (SELECT COUNT(*) FROM commitment_items i
             WHERE i.transaction_uid = m.transaction_uid),
            (SELECT COUNT(*) FROM commitment_items i
             WHERE i.transaction_uid = m.transaction_uid
               AND failure_reason IS NOT NULL)
     FROM commitments m
     ORDER BY state IN ('waiting', 'reporting') DESC, requested_at DESC LIMIT ?1"
);

/// A stored code (Event Type, Failure Reason) as the u16 it was written from.
fn code(v: Option<i64>) -> Option<u16> {
    v.and_then(|v| u16::try_from(v).ok())
}

fn load(c: &mut Conn<'_>, transaction_uid: &str) -> Result<Option<Commitment>, DbError> {
    let head = c.opt(&HEAD, &[&transaction_uid], |r| {
        Ok(Commitment {
            transaction_uid: transaction_uid.to_string(),
            calling_ae: r.get(0)?,
            called_ae: r.get(1)?,
            state: r.get(2)?,
            event_type: code(r.get(3)?),
            requested_at: r.get(4)?,
            deadline_at: r.get(5)?,
            attempts: r.get(6)?,
            items: Vec::new(),
        })
    })?;
    let Some(mut t) = head else {
        return Ok(None);
    };
    t.items = c.all(&ITEMS, &[&transaction_uid], |r| {
        Ok(CommitmentItem {
            sop_class_uid: r.get(0)?,
            sop_instance_uid: r.get(1)?,
            failure_reason: code(r.get(2)?),
        })
    })?;
    Ok(Some(t))
}

/// The same (class, instance) pairs, in any order.
fn same_list(stored: &[CommitmentItem], asked: &[(String, String)]) -> bool {
    let mut a: Vec<(&str, &str)> = stored
        .iter()
        .map(|i| (i.sop_class_uid.as_str(), i.sop_instance_uid.as_str()))
        .collect();
    let mut b: Vec<(&str, &str)> = asked
        .iter()
        .map(|(c, i)| (c.as_str(), i.as_str()))
        .collect();
    a.sort_unstable();
    b.sort_unstable();
    a.dedup();
    b.dedup();
    a == b
}

impl Db {
    /// Stores a new commitment request as `waiting` with its deadline `wait_seconds` from now,
    /// or says what an existing Transaction UID makes of it ([`Admission`]). A list naming an
    /// instance twice keeps it once.
    pub fn admit_commitment(
        &self,
        transaction_uid: &str,
        calling_ae: &str,
        called_ae: &str,
        items: &[(String, String)],
        wait_seconds: f64,
    ) -> Result<Admission, DbError> {
        self.tx(|c| {
            if let Some(existing) = load(c, transaction_uid)? {
                return Ok(
                    if existing.calling_ae == calling_ae && same_list(&existing.items, items) {
                        Admission::Retry(existing)
                    } else {
                        Admission::Conflict
                    },
                );
            }
            let t = now();
            c.exec(
                &INSERT,
                &[
                    &transaction_uid,
                    &calling_ae,
                    &called_ae,
                    &CommitmentState::Waiting,
                    &t,
                    &(t + wait_seconds),
                ],
            )?;
            for (class, instance) in items {
                c.exec(&INSERT_ITEM, &[&transaction_uid, class, instance])?;
            }
            load(c, transaction_uid)?
                .map(Admission::New)
                .ok_or(DbError::NoRow)
        })
    }

    /// Records the decision: each failed instance's reason, the Event Type (1 when none
    /// failed, else 2) and state `reporting`. Returns the transaction as decided.
    pub fn decide_commitment(
        &self,
        transaction_uid: &str,
        failures: &[(String, u16)],
    ) -> Result<Option<Commitment>, DbError> {
        self.tx(|c| {
            c.exec(&CLEAR_REASONS, &[&transaction_uid])?;
            for (instance, reason) in failures {
                c.exec(
                    &SET_REASON,
                    &[&transaction_uid, instance, &i64::from(*reason)],
                )?;
            }
            let event_type: i64 = if failures.is_empty() { 1 } else { 2 };
            c.exec(
                &DECIDE,
                &[&transaction_uid, &CommitmentState::Reporting, &event_type],
            )?;
            load(c, transaction_uid)
        })
    }

    /// Sets a decided transaction back to `reporting` with no attempts (a D1 retry of a
    /// reported or undeliverable one).
    pub fn reopen_commitment(&self, transaction_uid: &str) -> Result<(), DbError> {
        self.run(|c| {
            c.exec(&REOPEN, &[&transaction_uid, &CommitmentState::Reporting])
                .map(drop)
        })
    }

    /// The requester confirmed the report.
    pub fn commitment_reported(&self, transaction_uid: &str) -> Result<(), DbError> {
        self.run(|c| {
            c.exec(
                &REPORTED,
                &[&transaction_uid, &CommitmentState::Reported, &now()],
            )
            .map(drop)
        })
    }

    /// A report attempt failed: counts it and keeps why; `give_up` makes the transaction
    /// `undeliverable`.
    pub fn commitment_attempt_failed(
        &self,
        transaction_uid: &str,
        error: &str,
        counted: bool,
        give_up: bool,
    ) -> Result<(), DbError> {
        self.run(|c| {
            c.exec(
                &ATTEMPT_FAILED,
                &[
                    &transaction_uid,
                    &i64::from(counted),
                    &error,
                    &give_up,
                    &CommitmentState::Undeliverable,
                ],
            )
            .map(drop)
        })
    }

    /// Every `waiting` or `reporting` transaction, oldest first: what a start resumes.
    pub fn open_commitments(&self) -> Result<Vec<Commitment>, DbError> {
        self.run(|c| {
            let uids: Vec<String> = c.all(&OPEN, &[], |r| r.get(0))?;
            let mut out = Vec::with_capacity(uids.len());
            for uid in uids {
                if let Some(t) = load(c, &uid)? {
                    out.push(t);
                }
            }
            Ok(out)
        })
    }

    /// One transaction with its items.
    pub fn commitment(&self, transaction_uid: &str) -> Result<Option<Commitment>, DbError> {
        self.run(|c| load(c, transaction_uid))
    }

    /// The open transactions and the most recent others, newest first, at most `limit`.
    pub fn list_commitments(&self, limit: usize) -> Result<Vec<CommitmentSummary>, DbError> {
        self.run(|c| {
            c.all(&LIST, &[&(limit as i64)], |r| {
                Ok(CommitmentSummary {
                    transaction_uid: r.get(0)?,
                    calling_ae: r.get(1)?,
                    state: r.get(2)?,
                    event_type: code(r.get(3)?),
                    requested_at: r.get(4)?,
                    reported_at: r.get(5)?,
                    attempts: r.get(6)?,
                    last_error: r.get(7)?,
                    items: r.get(8)?,
                    failed: r.get(9)?,
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| {
                (
                    "1.2.840.10008.5.1.4.1.1.2".to_string(),
                    format!("1.2.3.{i}"),
                )
            })
            .collect()
    }

    #[test]
    fn a_transaction_goes_from_waiting_to_reported_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        walk_and_reopen(&|| Db::open(&path).unwrap());
        if let Some(url) = crate::db::test_pg_url() {
            walk_and_reopen(&|| Db::open_postgres(&url, "m3dnode/test", 2).unwrap());
        }
    }

    fn walk_and_reopen(open: &dyn Fn() -> Db) {
        let db = open();
        let Admission::New(t) = db
            .admit_commitment("9.9", "SCANNER", "M3DNODE", &items(3), 60.0)
            .unwrap()
        else {
            panic!("not new")
        };
        assert_eq!(t.state, CommitmentState::Waiting);
        assert_eq!(t.items.len(), 3);
        assert!((t.deadline_at - t.requested_at - 60.0).abs() < 1e-6);
        drop(db);
        // A restart finds it open.
        let db = open();
        let open = db.open_commitments().unwrap();
        assert_eq!(open, vec![t.clone()]);
        let decided = db
            .decide_commitment("9.9", &[("1.2.3.1".into(), 0x0112)])
            .unwrap()
            .unwrap();
        assert_eq!(decided.state, CommitmentState::Reporting);
        assert_eq!(decided.event_type, Some(2));
        assert_eq!(decided.items[1].failure_reason, Some(0x0112));
        assert_eq!(decided.items[0].failure_reason, None);
        db.commitment_attempt_failed("9.9", "refused", true, false)
            .unwrap();
        db.commitment_reported("9.9").unwrap();
        assert!(db.open_commitments().unwrap().is_empty());
        let listed = db.list_commitments(10).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, CommitmentState::Reported);
        assert_eq!((listed[0].items, listed[0].failed), (3, 1));
        assert_eq!(listed[0].attempts, 1);
        assert!(listed[0].reported_at.is_some());
        db.reopen_commitment("9.9").unwrap();
        assert_eq!(
            db.commitment("9.9").unwrap().unwrap().state,
            CommitmentState::Reporting
        );
    }

    #[test]
    fn a_reused_transaction_uid_is_a_retry_only_from_the_same_ae_with_the_same_list() {
        for (_, db, _dir) in crate::db::test_backends() {
            reused_uid(&db);
        }
    }

    fn reused_uid(db: &Db) {
        let list = items(2);
        assert!(matches!(
            db.admit_commitment("9.9", "SCANNER", "M3DNODE", &list, 60.0)
                .unwrap(),
            Admission::New(_)
        ));
        let mut reversed = list.clone();
        reversed.reverse();
        assert!(matches!(
            db.admit_commitment("9.9", "SCANNER", "M3DNODE", &reversed, 60.0)
                .unwrap(),
            Admission::Retry(_)
        ));
        assert_eq!(
            db.admit_commitment("9.9", "OTHER", "M3DNODE", &list, 60.0)
                .unwrap(),
            Admission::Conflict
        );
        assert_eq!(
            db.admit_commitment("9.9", "SCANNER", "M3DNODE", &items(3), 60.0)
                .unwrap(),
            Admission::Conflict
        );
        // The conflicts stored nothing.
        assert_eq!(db.commitment("9.9").unwrap().unwrap().items.len(), 2);
    }

    #[test]
    fn an_undeliverable_transaction_is_closed() {
        for (_, db, _dir) in crate::db::test_backends() {
            undeliverable(&db);
        }
    }

    fn undeliverable(db: &Db) {
        db.admit_commitment("9.9", "SCANNER", "M3DNODE", &items(1), 0.0)
            .unwrap();
        db.decide_commitment("9.9", &[]).unwrap();
        db.commitment_attempt_failed("9.9", "connection refused", true, true)
            .unwrap();
        let t = db.list_commitments(5).unwrap().remove(0);
        assert_eq!(t.state, CommitmentState::Undeliverable);
        assert_eq!(t.event_type, Some(1));
        assert_eq!(t.last_error.as_deref(), Some("connection refused"));
        assert!(db.open_commitments().unwrap().is_empty());
    }
}
