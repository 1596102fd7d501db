//! `outbox` and `outbox_unconfirmed`: one delivery per (result instance, destination),
//! `pending -> sent | failed`, and the attempts whose outcome the destination never confirmed
//! (see [`crate::route::outbox`] for why they exist).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

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

/// A pending row whose time has come.
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

/// Adds a delivery per destination; an existing row for the same (instance, destination) is
/// kept, so this is safe to repeat.
pub(super) fn enqueue(
    c: &Connection,
    job_id: Option<i64>,
    d: &NewDeliveries<'_>,
) -> rusqlite::Result<()> {
    let t = now();
    for (ae, address) in d.destinations {
        c.execute(
            "INSERT INTO outbox (job_id, sop_instance_uid, path, destination, address, state,
             next_attempt_at, deadline_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?8, ?6, ?7, ?6)
             ON CONFLICT (sop_instance_uid, destination) DO NOTHING",
            params![
                job_id,
                d.sop_instance_uid,
                d.path,
                ae,
                address,
                t,
                t + d.deadline_seconds,
                DeliveryState::Pending
            ],
        )?;
    }
    Ok(())
}

impl Db {
    /// Queues deliveries of a stored instance outside a job (see [`Db::finish_job`] for a
    /// job's result).
    pub fn enqueue_deliveries(&self, d: &NewDeliveries<'_>) -> Result<(), DbError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            enqueue(&tx, None, d)?;
            tx.commit()
        })
    }

    /// The most recent rows, newest first.
    pub fn list_deliveries(&self, limit: usize) -> Result<Vec<OutboxRow>, DbError> {
        self.with(|c| {
            c.prepare(
                "SELECT id, job_id, sop_instance_uid, destination, address, state, o.attempts, last_error, sent_at,
                        COALESCE(u.attempts, 0)
                 FROM outbox o LEFT JOIN outbox_unconfirmed u ON u.outbox_id = o.id
                 ORDER BY id DESC LIMIT ?1",
            )?
            .query_map([limit as i64], |r| {
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
            })?
            .collect()
        })
    }

    /// Puts failed rows (one, or all with `None`) back to pending with a fresh deadline;
    /// returns how many.
    pub fn retry_deliveries(
        &self,
        id: Option<i64>,
        deadline_seconds: f64,
    ) -> Result<usize, DbError> {
        let t = now();
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET state = ?4, next_attempt_at = ?1, deadline_at = ?2
                 WHERE state = ?5 AND (?3 IS NULL OR id = ?3)",
                params![
                    t,
                    t + deadline_seconds,
                    id,
                    DeliveryState::Pending,
                    DeliveryState::Failed
                ],
            )
        })
    }

    /// Pending rows due at `t`, oldest first.
    pub fn due_deliveries(&self, t: f64) -> Result<Vec<DueDelivery>, DbError> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT destination, address, id, path, attempts, deadline_at, created_at FROM outbox
                 WHERE state = ?2 AND next_attempt_at <= ?1 ORDER BY id",
            )?
            .query_map(params![t, DeliveryState::Pending], |r| {
                Ok(DueDelivery {
                    destination: r.get(0)?,
                    address: r.get(1)?,
                    id: r.get(2)?,
                    path: r.get(3)?,
                    attempts: r.get(4)?,
                    deadline_at: r.get(5)?,
                    created_at: r.get(6)?,
                })
            })?
            .collect()
        })
    }

    /// When the next pending row is due (Unix seconds), if any.
    pub fn next_delivery_at(&self) -> Result<Option<f64>, DbError> {
        self.with(|c| {
            c.prepare_cached("SELECT MIN(next_attempt_at) FROM outbox WHERE state = ?1")?
                .query_row([DeliveryState::Pending], |r| r.get(0))
        })
    }

    /// Open unconfirmed attempts of these rows, by row id.
    pub fn unconfirmed_attempts(&self, ids: &[i64]) -> Result<HashMap<i64, i64>, DbError> {
        self.with(|c| {
            let mut stmt =
                c.prepare_cached("SELECT attempts FROM outbox_unconfirmed WHERE outbox_id = ?1")?;
            let mut out = HashMap::new();
            for id in ids {
                if let Some(n) = stmt.query_row([id], |r| r.get::<_, i64>(0)).optional()? {
                    out.insert(*id, n);
                }
            }
            Ok(out)
        })
    }

    /// The open unconfirmed attempts of a row and when the last started.
    pub fn unconfirmed_since(&self, id: i64) -> Result<Option<(i64, f64)>, DbError> {
        self.with(|c| {
            c.query_row(
                "SELECT attempts, started_at FROM outbox_unconfirmed WHERE outbox_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
    }

    /// An answer settled whether the destination holds the row's instance.
    pub fn clear_unconfirmed(&self, id: i64) -> Result<(), DbError> {
        self.with(|c| {
            c.execute("DELETE FROM outbox_unconfirmed WHERE outbox_id = ?1", [id])
                .map(drop)
        })
    }

    /// Records, durably, that the destination may now hold the row's instance, and holds the
    /// row back until `hold(k)` seconds after now, `k` being its open unconfirmed attempts
    /// counting this one.
    pub fn mark_unconfirmed(&self, id: i64, hold: impl FnOnce(i64) -> f64) -> Result<(), DbError> {
        let t = now();
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "INSERT INTO outbox_unconfirmed (outbox_id, attempts, started_at) VALUES (?1, 1, ?2)
                 ON CONFLICT (outbox_id) DO UPDATE SET attempts = attempts + 1, started_at = ?2",
                params![id, t],
            )?;
            let k: i64 = tx.query_row(
                "SELECT attempts FROM outbox_unconfirmed WHERE outbox_id = ?1",
                [id],
                |r| r.get(0),
            )?;
            tx.execute(
                "UPDATE outbox SET next_attempt_at = ?1 WHERE id = ?2",
                params![t + hold(k), id],
            )?;
            tx.commit()
        })
    }

    /// The destination holds the instance: the row is `sent`, its unconfirmed attempts closed.
    pub fn mark_sent(&self, id: i64) -> Result<(), DbError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "UPDATE outbox SET state = ?3, sent_at = ?1, attempts = attempts + 1, last_error = NULL WHERE id = ?2",
                params![now(), id, DeliveryState::Sent],
            )?;
            tx.execute("DELETE FROM outbox_unconfirmed WHERE outbox_id = ?1", [id])?;
            tx.commit()
        })
    }

    /// The row is `failed` for good (until `m3dnode retry`) after `attempts` attempts.
    pub fn mark_failed(&self, id: i64, attempts: i64, why: &str) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET state = ?4, attempts = ?1, last_error = ?2 WHERE id = ?3",
                params![attempts, why, id, DeliveryState::Failed],
            )
            .map(drop)
        })
    }

    /// A failed attempt: the row stays pending and is tried again at `next_attempt_at`.
    pub fn reschedule_delivery(
        &self,
        id: i64,
        attempts: i64,
        why: &str,
        next_attempt_at: f64,
    ) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET attempts = ?1, last_error = ?2, next_attempt_at = ?3 WHERE id = ?4",
                params![attempts, why, next_attempt_at, id],
            )
            .map(drop)
        })
    }
}
