//! `outbox` and `outbox_unconfirmed`: one delivery per (result instance, destination),
//! `pending -> sent | failed`, and the attempts whose outcome the destination never confirmed
//! (see [`crate::route::outbox`] for why they exist).

use std::collections::HashMap;

use super::jobs::pg_now;
use super::sql::{Conn, Stmt, stmt};
use super::{Db, DbError, DeliveryState, NewDeliveries, now};

/// One outbox row, for listings.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Row id (for `m3dnode retry ID`).
    pub id: i64,
    /// The job that made the result.
    pub job_id: Option<i64>,
    /// The result instance.
    pub sop_instance_uid: String,
    /// Destination AE title.
    pub destination: String,
    /// Destination address.
    pub address: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: i64,
    /// Last failure.
    pub last_error: Option<String>,
    /// When the destination confirmed it (Unix seconds).
    pub sent_at: Option<f64>,
    /// Attempts whose outcome the destination never confirmed, still open.
    pub unconfirmed: i64,
}

/// A pending row whose time has come, leased to this handle ([`Db::claim_deliveries`]).
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// Destination AE title.
    pub destination: String,
    /// Destination address.
    pub address: String,
    /// Row id.
    pub id: i64,
    /// The result file, relative to the storage root.
    pub path: String,
    /// Attempts so far.
    pub attempts: i64,
    /// When it fails for good (Unix seconds).
    pub deadline_at: f64,
    /// When it was queued (Unix seconds): the start of its delivery latency.
    pub created_at: f64,
}

static ENQUEUE: Stmt = stmt!(
    "INSERT INTO outbox (job_id, sop_instance_uid, path, destination, address, state,
     next_attempt_at, deadline_at, created_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?8, ?6, ?7, ?6)
     ON CONFLICT (sop_instance_uid, destination) DO NOTHING"
);
static LIST: Stmt = stmt!(
    "SELECT id, job_id, sop_instance_uid, destination, address, state, o.attempts, last_error, sent_at,
            COALESCE(u.attempts, 0)
     FROM outbox o LEFT JOIN outbox_unconfirmed u ON u.outbox_id = o.id
     ORDER BY id DESC LIMIT ?1"
);
static RETRY: Stmt = stmt!(
    lite: "UPDATE outbox SET state = ?4, next_attempt_at = ?1, deadline_at = ?2,
         lease_owner = NULL, lease_until = NULL
     WHERE state = ?5 AND (?3 IS NULL OR id = ?3)",
    pg: "UPDATE outbox SET state = ?4, next_attempt_at = ?1, deadline_at = ?2,
         lease_owner = NULL, lease_until = NULL
     WHERE state = ?5 AND (?3::bigint IS NULL OR id = ?3::bigint)",
);
/// Due rows nobody holds (or whose holder's lease expired), oldest first, leased to the
/// caller.
static CLAIM: Stmt = stmt!(
    lite: "UPDATE outbox SET lease_owner = ?3, lease_until = ?1 + ?4
     WHERE id IN (SELECT id FROM outbox
                  WHERE state = ?2 AND next_attempt_at <= ?1
                    AND (lease_until IS NULL OR lease_until < ?1)
                  ORDER BY id LIMIT ?5)
     RETURNING destination, address, id, path, attempts, deadline_at, created_at",
    pg: concat!("UPDATE outbox SET lease_owner = ?3, lease_until = ", pg_now!(), " + ?4
     WHERE id IN (SELECT id FROM outbox
                  WHERE state = ?2 AND next_attempt_at <= ?1
                    AND (lease_until IS NULL OR lease_until < ", pg_now!(), ")
                  ORDER BY id LIMIT ?5 FOR UPDATE SKIP LOCKED)
     RETURNING destination, address, id, path, attempts, deadline_at, created_at"),
);
static NEXT: Stmt = stmt!(
    lite: "SELECT MIN(next_attempt_at) FROM outbox
     WHERE state = ?1 AND (lease_until IS NULL OR lease_until < ?2)",
    pg: concat!("SELECT MIN(next_attempt_at) FROM outbox
     WHERE state = ?1 AND (lease_until IS NULL OR lease_until < ", pg_now!(), ")
       AND ?2::double precision IS NOT NULL"),
);
static UNCONFIRMED: Stmt = stmt!("SELECT attempts FROM outbox_unconfirmed WHERE outbox_id = ?1");
static UNCONFIRMED_SINCE: Stmt =
    stmt!("SELECT attempts, started_at FROM outbox_unconfirmed WHERE outbox_id = ?1");
static CLEAR_UNCONFIRMED: Stmt = stmt!("DELETE FROM outbox_unconfirmed WHERE outbox_id = ?1");
static MARK_UNCONFIRMED: Stmt = stmt!(
    lite: "INSERT INTO outbox_unconfirmed (outbox_id, attempts, started_at) VALUES (?1, 1, ?2)
     ON CONFLICT (outbox_id) DO UPDATE SET attempts = attempts + 1, started_at = ?2
     RETURNING attempts",
    pg: "INSERT INTO outbox_unconfirmed (outbox_id, attempts, started_at) VALUES (?1, 1, ?2)
     ON CONFLICT (outbox_id) DO UPDATE SET attempts = outbox_unconfirmed.attempts + 1, started_at = ?2
     RETURNING attempts",
);
static HOLD: Stmt =
    stmt!("UPDATE outbox SET next_attempt_at = ?1 WHERE id = ?2 AND lease_owner = ?3");
static SENT: Stmt = stmt!(
    "UPDATE outbox SET state = ?3, sent_at = ?1, attempts = attempts + 1, last_error = NULL,
         lease_owner = NULL, lease_until = NULL
     WHERE id = ?2 AND lease_owner = ?4"
);
static FAILED: Stmt = stmt!(
    "UPDATE outbox SET state = ?4, attempts = ?1, last_error = ?2,
         lease_owner = NULL, lease_until = NULL
     WHERE id = ?3 AND lease_owner = ?5"
);
static RESCHEDULE: Stmt = stmt!(
    "UPDATE outbox SET attempts = ?1, last_error = ?2, next_attempt_at = ?3,
         lease_owner = NULL, lease_until = NULL
     WHERE id = ?4 AND lease_owner = ?5"
);
static RELEASE_ALL: Stmt =
    stmt!("UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL");

/// Adds a delivery per destination; an existing row for the same (instance, destination) is
/// kept, so this is safe to repeat.
pub(super) fn enqueue(
    c: &mut Conn<'_>,
    job_id: Option<i64>,
    d: &NewDeliveries<'_>,
) -> Result<(), DbError> {
    let t = now();
    for (ae, address) in d.destinations {
        c.exec(
            &ENQUEUE,
            &[
                &job_id,
                &d.sop_instance_uid,
                &d.path,
                ae,
                address,
                &t,
                &(t + d.deadline_seconds),
                &DeliveryState::Pending,
            ],
        )?;
    }
    Ok(())
}

/// Frees every delivery lease: SQLite at start-up, where the storage lock proves that the
/// process that held them is gone.
pub(super) fn release_all(c: &mut Conn<'_>) -> Result<u64, DbError> {
    c.exec(&RELEASE_ALL, &[])
}

/// 0 rows changed by a fenced statement: the row's lease is another's now.
fn fenced(n: u64) -> Result<(), DbError> {
    if n == 0 {
        Err(DbError::LeaseLost)
    } else {
        Ok(())
    }
}

impl Db {
    /// Queues deliveries of a stored instance outside a job (see [`Db::finish_job`] for a
    /// job's result).
    pub fn enqueue_deliveries(&self, d: &NewDeliveries<'_>) -> Result<(), DbError> {
        self.tx(|c| enqueue(c, None, d))
    }

    /// The most recent rows, newest first.
    pub fn list_deliveries(&self, limit: usize) -> Result<Vec<OutboxRow>, DbError> {
        self.run(|c| {
            c.all(&LIST, &[&(limit as i64)], |r| {
                Ok(OutboxRow {
                    id: r.get(0)?,
                    job_id: r.get(1)?,
                    sop_instance_uid: r.get(2)?,
                    destination: r.get(3)?,
                    address: r.get(4)?,
                    state: r.get(5)?,
                    attempts: r.get(6)?,
                    last_error: r.get(7)?,
                    sent_at: r.get(8)?,
                    unconfirmed: r.get(9)?,
                })
            })
        })
    }

    /// Puts failed rows (one, or all with `None`) back to pending with a fresh deadline and
    /// no lease; returns how many.
    pub fn retry_deliveries(
        &self,
        id: Option<i64>,
        deadline_seconds: f64,
    ) -> Result<usize, DbError> {
        let t = now();
        self.run(|c| {
            c.exec(
                &RETRY,
                &[
                    &t,
                    &(t + deadline_seconds),
                    &id,
                    &DeliveryState::Pending,
                    &DeliveryState::Failed,
                ],
            )
            .map(|n| n as usize)
        })
    }

    /// Leases up to `limit` pending rows that are due now and that nobody else holds, oldest
    /// first, to this handle ([`Db::set_owner`]). Each ends with [`Db::mark_sent`],
    /// [`Db::mark_failed`] or [`Db::reschedule_delivery`], which release the lease; a lease
    /// not released expires, and another claim takes the row.
    pub fn claim_deliveries(&self, limit: usize) -> Result<Vec<DueDelivery>, DbError> {
        let owner = self.owner();
        let lease = self.lease_seconds();
        let mut rows = self.run(|c| {
            c.all(
                &CLAIM,
                &[
                    &now(),
                    &DeliveryState::Pending,
                    &owner,
                    &lease,
                    &(limit as i64),
                ],
                |r| {
                    Ok(DueDelivery {
                        destination: r.get(0)?,
                        address: r.get(1)?,
                        id: r.get(2)?,
                        path: r.get(3)?,
                        attempts: r.get(4)?,
                        deadline_at: r.get(5)?,
                        created_at: r.get(6)?,
                    })
                },
            )
        })?;
        // RETURNING promises no order.
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// When the next pending row that nobody holds is due (Unix seconds), if any.
    pub fn next_delivery_at(&self) -> Result<Option<f64>, DbError> {
        self.run(|c| c.one(&NEXT, &[&DeliveryState::Pending, &now()], |r| r.get(0)))
    }

    /// Open unconfirmed attempts of these rows, by row id.
    pub fn unconfirmed_attempts(&self, ids: &[i64]) -> Result<HashMap<i64, i64>, DbError> {
        self.run(|c| {
            let mut out = HashMap::new();
            for id in ids {
                if let Some(n) = c.opt(&UNCONFIRMED, &[id], |r| r.get::<i64>(0))? {
                    out.insert(*id, n);
                }
            }
            Ok(out)
        })
    }

    /// The open unconfirmed attempts of a row and when the last started.
    pub fn unconfirmed_since(&self, id: i64) -> Result<Option<(i64, f64)>, DbError> {
        self.run(|c| c.opt(&UNCONFIRMED_SINCE, &[&id], |r| Ok((r.get(0)?, r.get(1)?))))
    }

    /// An answer settled whether the destination holds the row's instance.
    pub fn clear_unconfirmed(&self, id: i64) -> Result<(), DbError> {
        self.run(|c| c.exec(&CLEAR_UNCONFIRMED, &[&id]).map(drop))
    }

    /// Records, durably, that the destination may now hold the row's instance, and holds the
    /// row back until `hold(k)` seconds after now, `k` being its open unconfirmed attempts
    /// counting this one. Fenced: [`DbError::LeaseLost`] (nothing written) when the row's
    /// lease is no longer this handle's.
    pub fn mark_unconfirmed(
        &self,
        id: i64,
        hold: impl Fn(i64) -> f64 + Send + Sync,
    ) -> Result<(), DbError> {
        let t = now();
        let owner = self.owner();
        self.tx(|c| {
            let k: i64 = c.one(&MARK_UNCONFIRMED, &[&id, &t], |r| r.get(0))?;
            fenced(c.exec(&HOLD, &[&(t + hold(k)), &id, &owner])?)
        })
    }

    /// The destination holds the instance: the row is `sent`, its unconfirmed attempts
    /// closed, its lease released. Fenced like [`Db::mark_unconfirmed`].
    pub fn mark_sent(&self, id: i64) -> Result<(), DbError> {
        let owner = self.owner();
        self.tx(|c| {
            fenced(c.exec(&SENT, &[&now(), &id, &DeliveryState::Sent, &owner])?)?;
            c.exec(&CLEAR_UNCONFIRMED, &[&id]).map(drop)
        })
    }

    /// The row is `failed` for good (until `m3dnode retry`) after `attempts` attempts; its
    /// lease is released. Fenced like [`Db::mark_unconfirmed`].
    pub fn mark_failed(&self, id: i64, attempts: i64, why: &str) -> Result<(), DbError> {
        let owner = self.owner();
        self.run(|c| {
            fenced(c.exec(
                &FAILED,
                &[&attempts, &why, &id, &DeliveryState::Failed, &owner],
            )?)
        })
    }

    /// A failed attempt: the row stays pending, is released and is tried again at
    /// `next_attempt_at`. Fenced like [`Db::mark_unconfirmed`].
    pub fn reschedule_delivery(
        &self,
        id: i64,
        attempts: i64,
        why: &str,
        next_attempt_at: f64,
    ) -> Result<(), DbError> {
        let owner = self.owner();
        self.run(|c| {
            fenced(c.exec(
                &RESCHEDULE,
                &[&attempts, &why, &next_attempt_at, &id, &owner],
            )?)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::db::{DbError, DeliveryState, NewDeliveries, test_backends};

    fn enqueue(db: &crate::db::Db, uid: &str) {
        db.enqueue_deliveries(&NewDeliveries {
            sop_instance_uid: uid,
            path: "r.dcm",
            destinations: &[("PACS".to_string(), "pacs:104".to_string())],
            deadline_seconds: 60.0,
        })
        .unwrap();
    }

    #[test]
    fn a_claimed_delivery_is_marked_and_released() {
        for (name, db, _dir) in test_backends() {
            enqueue(&db, "1.3.1");
            enqueue(&db, "1.3.2");
            enqueue(&db, "1.3.3");
            let due = db.claim_deliveries(200).unwrap();
            assert_eq!(due.len(), 3, "{name}");
            assert!(
                due.windows(2).all(|w| w[0].id < w[1].id),
                "{name}: oldest first"
            );
            // Held rows are neither claimed again nor due.
            assert!(db.claim_deliveries(200).unwrap().is_empty(), "{name}");
            assert_eq!(db.next_delivery_at().unwrap(), None, "{name}");
            db.mark_failed(due[0].id, 1, "refused").unwrap();
            db.mark_unconfirmed(due[1].id, |k| 100.0 * k as f64)
                .unwrap();
            assert_eq!(db.unconfirmed_since(due[1].id).unwrap().unwrap().0, 1);
            db.mark_sent(due[1].id).unwrap();
            db.reschedule_delivery(due[2].id, 1, "timed out", 0.0)
                .unwrap();
            // Released: the rescheduled row is due again at once.
            let again = db.claim_deliveries(200).unwrap();
            assert_eq!(again.len(), 1, "{name}");
            assert_eq!(again[0].id, due[2].id);
            assert_eq!(again[0].attempts, 1);
            let states: Vec<(DeliveryState, i64)> = db
                .list_deliveries(10)
                .unwrap()
                .iter()
                .rev()
                .map(|r| (r.state, r.unconfirmed))
                .collect();
            assert_eq!(
                states,
                [
                    (DeliveryState::Failed, 0),
                    (DeliveryState::Sent, 0),
                    (DeliveryState::Pending, 0)
                ],
                "{name}"
            );
            // A failed row retried comes back without a lease.
            assert_eq!(db.retry_deliveries(None, 60.0).unwrap(), 1, "{name}");
            assert_eq!(db.retry_deliveries(Some(due[0].id), 60.0).unwrap(), 0);
            assert_eq!(db.claim_deliveries(200).unwrap().len(), 1, "{name}");
            // A mark on a row this handle does not hold writes nothing.
            assert!(matches!(db.mark_sent(due[1].id), Err(DbError::LeaseLost)));
        }
    }
}

#[cfg(test)]
mod lease_tests {
    use std::time::Duration;

    use crate::db::{DbError, NewDeliveries, test_backend_pairs};

    fn enqueue(db: &crate::db::Db, n: usize) {
        for i in 0..n {
            db.enqueue_deliveries(&NewDeliveries {
                sop_instance_uid: &format!("1.4.{i}"),
                path: "r.dcm",
                destinations: &[("PACS".to_string(), "pacs:104".to_string())],
                deadline_seconds: 60.0,
            })
            .unwrap();
        }
    }

    #[test]
    fn an_expired_delivery_lease_is_taken_over_and_the_old_holder_is_fenced_out() {
        for (name, a, b, _dir) in test_backend_pairs() {
            a.set_owner("A", 0.5);
            b.set_owner("B", 30.0);
            enqueue(&a, 2);
            let held = a.claim_deliveries(1).unwrap();
            assert_eq!(held.len(), 1, "{name}: the limit holds");
            let other = b.claim_deliveries(10).unwrap();
            assert_eq!(other.len(), 1, "{name}: only the free row");
            assert_ne!(other[0].id, held[0].id);
            std::thread::sleep(Duration::from_millis(800));
            let taken = b.claim_deliveries(10).unwrap();
            assert_eq!(taken.len(), 1, "{name}: the expired lease only");
            assert_eq!(taken[0].id, held[0].id);
            assert!(matches!(a.mark_sent(held[0].id), Err(DbError::LeaseLost)));
            assert!(matches!(
                a.mark_unconfirmed(held[0].id, |_| 60.0),
                Err(DbError::LeaseLost)
            ));
            assert_eq!(
                a.unconfirmed_since(held[0].id).unwrap(),
                None,
                "{name}: the fenced mark wrote nothing"
            );
            assert!(matches!(
                a.reschedule_delivery(held[0].id, 1, "late", 0.0),
                Err(DbError::LeaseLost)
            ));
            b.mark_sent(held[0].id).unwrap();
            b.mark_sent(other[0].id).unwrap();
            assert!(
                a.list_deliveries(10)
                    .unwrap()
                    .iter()
                    .all(|r| r.state == crate::db::DeliveryState::Sent && r.attempts == 1),
                "{name}"
            );
        }
    }

    #[test]
    fn concurrent_delivery_claims_take_different_rows() {
        for (name, a, b, _dir) in test_backend_pairs() {
            a.set_owner("A", 30.0);
            b.set_owner("B", 30.0);
            enqueue(&a, 40);
            let barrier = std::sync::Barrier::new(2);
            let claimed: Vec<Vec<i64>> = std::thread::scope(|s| {
                let runs: Vec<_> = [&a, &b]
                    .into_iter()
                    .map(|db| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            let mut ids = Vec::new();
                            loop {
                                let rows = db.claim_deliveries(3).unwrap();
                                if rows.is_empty() {
                                    break;
                                }
                                ids.extend(rows.iter().map(|r| r.id));
                            }
                            ids
                        })
                    })
                    .collect();
                runs.into_iter().map(|r| r.join().unwrap()).collect()
            });
            let mut all = claimed.concat();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), 40, "{name}: {claimed:?}");
            assert_eq!(
                claimed[0].len() + claimed[1].len(),
                40,
                "{name}: no row twice"
            );
        }
    }
}
