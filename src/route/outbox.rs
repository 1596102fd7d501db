//! The persistent outbox: one row per (result instance, destination), written before any
//! send, and a delivery task that works through it.
//!
//! Exactly once per destination: a row is marked `sent` in the same moment the destination's
//! success status is read, and only `pending` rows are ever sent, so a restart re-sends only
//! what was not confirmed. (The one window left is a crash between the peer's status arriving
//! and that update committing — microseconds; the peer then receives an identical instance
//! again, which a PACS treats as a duplicate.) Failures are retried with exponential backoff
//! and jitter until the row's deadline, then the row is `failed` until someone runs
//! `m3dnode outbox retry`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use rusqlite::params;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::Config;
use crate::net::scu::{self, AeAddress, OutgoingFile, ScuOptions};
use crate::store::index::now;
use crate::store::{Index, IndexError, Store};

/// One outbox row, for listings.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Row id (for `m3dnode outbox retry ID`).
    pub id: i64,
    /// The job that made the result.
    pub job_id: Option<i64>,
    /// The result instance.
    pub sop_instance_uid: String,
    /// Destination AE title.
    pub destination: String,
    /// Destination address.
    pub address: String,
    /// `pending`, `sent` or `failed`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Last failure.
    pub last_error: Option<String>,
    /// When the destination confirmed it (Unix seconds).
    pub sent_at: Option<f64>,
}

/// Adds a delivery per destination for a stored result; an existing row for the same
/// (instance, destination) is kept, so this is safe to repeat.
pub fn enqueue(
    conn: &rusqlite::Connection,
    job_id: i64,
    sop_instance_uid: &str,
    rel_path: &str,
    destinations: &[(String, String)],
    deadline_seconds: f64,
) -> rusqlite::Result<()> {
    let t = now();
    for (ae, address) in destinations {
        conn.execute(
            "INSERT INTO outbox (job_id, sop_instance_uid, path, destination, address, state,
             next_attempt_at, deadline_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?6)
             ON CONFLICT (sop_instance_uid, destination) DO NOTHING",
            params![
                job_id,
                sop_instance_uid,
                rel_path,
                ae,
                address,
                t,
                t + deadline_seconds
            ],
        )?;
    }
    Ok(())
}

/// The most recent rows, newest first.
pub fn list(index: &Index, limit: usize) -> Result<Vec<OutboxRow>, IndexError> {
    index.with(|c| {
        c.prepare(
            "SELECT id, job_id, sop_instance_uid, destination, address, state, attempts, last_error, sent_at
             FROM outbox ORDER BY id DESC LIMIT ?1",
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
            })
        })?
        .collect()
    })
}

/// Puts failed rows (one, or all with `None`) back to pending with a fresh deadline; returns
/// how many. The running node picks them up within a second.
pub fn retry(index: &Index, id: Option<i64>, deadline_seconds: f64) -> Result<usize, IndexError> {
    let t = now();
    index.with(|c| {
        c.execute(
            "UPDATE outbox SET state = 'pending', next_attempt_at = ?1, deadline_at = ?2
             WHERE state = 'failed' AND (?3 IS NULL OR id = ?3)",
            params![t, t + deadline_seconds, id],
        )
    })
}

/// The delivery task.
pub struct Delivery {
    config: Arc<Config>,
    store: Arc<Store>,
    notify: Arc<Notify>,
}

struct Due {
    id: i64,
    path: String,
    attempts: i64,
    deadline_at: f64,
}

impl Delivery {
    /// A delivery task for the node; `notify` wakes it when new rows are written.
    pub fn new(config: Arc<Config>, store: Arc<Store>, notify: Arc<Notify>) -> Delivery {
        Delivery {
            config,
            store,
            notify,
        }
    }

    /// Works through the outbox until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let wait = match self.deliver_due().await {
                Ok(next) => next,
                Err(e) => {
                    warn!(error = %e, "outbox: reading the index failed; retrying in 5 s");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends every due row, one association per destination; returns how long to sleep.
    async fn deliver_due(&self) -> Result<Duration, IndexError> {
        let t = now();
        let due: Vec<(String, String, Due)> = self.store.index().with(|c| {
            c.prepare(
                "SELECT destination, address, id, path, attempts, deadline_at FROM outbox
                 WHERE state = 'pending' AND next_attempt_at <= ?1 ORDER BY id",
            )?
            .query_map([t], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    Due {
                        id: r.get(2)?,
                        path: r.get(3)?,
                        attempts: r.get(4)?,
                        deadline_at: r.get(5)?,
                    },
                ))
            })?
            .collect()
        })?;
        let mut by_destination: BTreeMap<(String, String), Vec<Due>> = BTreeMap::new();
        for (ae, address, d) in due {
            by_destination.entry((ae, address)).or_default().push(d);
        }
        for ((ae, address), rows) in by_destination {
            self.send_to(&ae, &address, rows).await?;
        }
        let next: Option<f64> = self.store.index().with(|c| {
            c.query_row(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )
        })?;
        // Poll at least every second: `m3dnode outbox retry` writes from another process.
        let wait = next.map(|n| (n - now()).clamp(0.0, 1.0)).unwrap_or(1.0);
        Ok(Duration::from_secs_f64(wait))
    }

    async fn send_to(&self, ae: &str, address: &str, rows: Vec<Due>) -> Result<(), IndexError> {
        let to = AeAddress {
            ae_title: ae.to_string(),
            address: address.to_string(),
        };
        let opts = ScuOptions {
            calling_ae: self.config.node.ae_title.clone(),
            timeout: Duration::from_secs(self.config.delivery.timeout_seconds),
            ..Default::default()
        };
        let mut files = Vec::new();
        let mut sendable = Vec::new();
        for row in rows {
            match OutgoingFile::open(&self.store.root().join(&row.path)) {
                Ok(f) => {
                    files.push(f);
                    sendable.push(row);
                }
                Err(e) => self.failed(&row, ae, &format!("result file unreadable: {e}"))?,
            }
        }
        if files.is_empty() {
            return Ok(());
        }
        let outcomes = match scu::send_files(&files, &to, &opts).await {
            Ok(o) => o,
            Err(e) => {
                for row in &sendable {
                    self.failed(row, ae, &e.to_string())?;
                }
                return Ok(());
            }
        };
        for (row, outcome) in sendable.iter().zip(outcomes) {
            if outcome.is_success() {
                self.store.index().with(|c| {
                    c.execute(
                        "UPDATE outbox SET state = 'sent', sent_at = ?1, attempts = attempts + 1, last_error = NULL WHERE id = ?2",
                        params![now(), row.id],
                    )
                })?;
                info!(destination = ae, outbox_id = row.id, path = %row.path, "result delivered");
            } else {
                let why = match (&outcome.result, &outcome.comment) {
                    (Ok(code), Some(c)) => format!("status {code:#06X}: {c}"),
                    (Ok(code), None) => format!("status {code:#06X}"),
                    (Err(e), _) => e.clone(),
                };
                self.failed(row, ae, &why)?;
            }
        }
        Ok(())
    }

    /// Records a failed attempt: schedules the next one, or gives up past the deadline.
    fn failed(&self, row: &Due, ae: &str, why: &str) -> Result<(), IndexError> {
        let d = &self.config.delivery;
        let attempts = row.attempts + 1;
        let base = (d.retry_initial_seconds * 2f64.powi((attempts - 1).min(30) as i32))
            .min(d.retry_max_seconds);
        let delay = base * rand::rng().random_range(0.8..1.2);
        let t = now();
        if t + delay > row.deadline_at {
            warn!(
                destination = ae,
                outbox_id = row.id,
                attempts,
                error = why,
                "delivery failed for good: deadline passed (retry with `m3dnode outbox retry`)"
            );
            self.store.index().with(|c| {
                c.execute(
                    "UPDATE outbox SET state = 'failed', attempts = ?1, last_error = ?2 WHERE id = ?3",
                    params![attempts, why, row.id],
                )
            })?;
        } else {
            warn!(
                destination = ae,
                outbox_id = row.id,
                attempts,
                retry_in_seconds = format_args!("{delay:.1}"),
                error = why,
                "delivery failed; will retry"
            );
            self.store.index().with(|c| {
                c.execute(
                    "UPDATE outbox SET attempts = ?1, last_error = ?2, next_attempt_at = ?3 WHERE id = ?4",
                    params![attempts, why, t + delay, row.id],
                )
            })?;
        }
        Ok(())
    }
}
