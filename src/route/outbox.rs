//! The persistent outbox: one row per (result instance, destination), written before any
//! send, and a delivery task that works through it.
//!
//! Once per destination, as far as the destination lets us know: a row is marked `sent` when
//! the destination's success status is read, and only `pending` rows are ever sent.
//!
//! The window in between is not short: it lasts from the moment the last fragment of the data
//! set leaves until the status arrives, that is as long as the destination takes to store
//! (seconds for a slow archive). A `kill -9` in that window, or a status that does not arrive
//! within `delivery.timeout_seconds`, leaves a delivery whose outcome is unknown. Such a
//! delivery is *unconfirmed*: just before the last fragment is sent, the row is marked so in
//! the index (table `outbox_unconfirmed`, committed before the fragment leaves, so it survives
//! a process crash). An unconfirmed row is not sent again blindly:
//!
//! - when the destination accepts Study Root C-FIND, it is asked first (IMAGE level, by
//!   Study, Series and SOP Instance UID), and not before the unconfirmed attempt started plus
//!   the next (doubled) timeout, so that a destination that was merely slow has finished. If
//!   it holds the instance the row is `sent` without sending anything;
//! - otherwise (or when it answers that it does not hold the instance) the row is sent again,
//!   with a timeout doubled for each unconfirmed attempt (at most [`MAX_TIMEOUT_FACTOR`] times
//!   `delivery.timeout_seconds`), so that a slow destination ends up answering.
//!
//! What can still reach a destination twice: a destination without Study Root C-FIND gets a
//! second copy after a crash (or a timeout) in the window above, and one more for each doubling
//! of the timeout that is still shorter than its storage time; a destination with C-FIND gets
//! a second copy only if it takes longer to store than the next timeout (twice the one of the
//! attempt it is storing, at most the cap) or answers C-FIND without the instance it holds. A PACS receiving an identical SOP
//! Instance UID again treats it as a duplicate. A power cut (not a process crash) can also lose
//! the mark: the index is written with `synchronous = NORMAL`.
//!
//! Failures are retried with exponential backoff and jitter until the row's deadline, then the
//! row is `failed` until someone runs `m3dnode retry`. A permanent refusal (the destination
//! rejects the association permanently, accepts no presentation context for the result's SOP
//! class, or answers 0x0122 or 0xA9xx) fails the row at once: retrying unchanged cannot help.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use tokio::sync::Notify;
use tracing::{info, warn};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, Auditor, Direction, Event as AuditEvent, Outcome};
use crate::db::{DueDelivery, now};
use crate::net::scu::{self, AeAddress, InstanceKeys, OutgoingFile, ScuOptions, Verification};
use crate::net::settings::PeerConfig;
use crate::net::tls::Tls;
use crate::store::{Index, IndexError, Store};

/// The timeout of an attempt grows to at most this many times `delivery.timeout_seconds`
/// (doubling per unconfirmed attempt): 30 s grows to 8 minutes, enough for any archive that
/// works at all, while a dead one is still detected within minutes.
pub const MAX_TIMEOUT_FACTOR: u32 = 16;

/// Rows one pass leases at most: several processes sharing a PostgreSQL index each take a
/// share of a long backlog.
pub const CLAIM_LIMIT: usize = 200;

/// The timeout of an attempt after `unconfirmed` unconfirmed ones.
fn timeout_after(base_seconds: u64, unconfirmed: i64) -> f64 {
    let factor = 2f64
        .powi(unconfirmed.clamp(0, 30) as i32)
        .min(f64::from(MAX_TIMEOUT_FACTOR));
    base_seconds.max(1) as f64 * factor
}

/// `[delivery]`: the outbox.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// First retry delay in seconds; doubled per failure (with +-20 % jitter).
    pub retry_initial_seconds: f64,
    /// Longest retry delay in seconds.
    pub retry_max_seconds: f64,
    /// Give up (state `failed`, retry by hand with `m3dnode retry`) after this many
    /// seconds.
    pub deadline_seconds: f64,
    /// Connect and response timeout per association, in seconds.
    pub timeout_seconds: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            retry_initial_seconds: 2.0,
            retry_max_seconds: 300.0,
            deadline_seconds: 86_400.0,
            timeout_seconds: 30,
        }
    }
}

/// The delivery task.
pub struct Delivery {
    settings: DeliveryConfig,
    /// Our calling AE title (`node.ae_title`).
    ae_title: String,
    store: Arc<Store>,
    notify: Arc<Notify>,
    /// AE titles of the `tls = true` peers, called over TLS with `tls`.
    tls_peers: HashSet<String>,
    tls: Option<Arc<Tls>>,
    audit: Auditor,
}

type Due = DueDelivery;

impl Delivery {
    /// A delivery task for the node, calling as `ae_title`; `notify` wakes it when new rows
    /// are written.
    pub fn new(
        settings: DeliveryConfig,
        ae_title: String,
        store: Arc<Store>,
        notify: Arc<Notify>,
    ) -> Delivery {
        Delivery {
            settings,
            ae_title,
            store,
            notify,
            tls_peers: HashSet::new(),
            tls: None,
            audit: Auditor::disabled(),
        }
    }

    /// Records each delivery in the audit trail (Begin Transferring, Instances Transferred).
    pub fn with_audit(mut self, audit: Auditor) -> Delivery {
        self.audit = audit;
        self
    }

    /// Calls the `tls = true` peers among `peers` over TLS with the node's identity.
    pub fn with_tls(mut self, peers: &[PeerConfig], tls: Option<Arc<Tls>>) -> Delivery {
        self.tls_peers = peers
            .iter()
            .filter(|p| p.tls)
            .map(|p| p.ae_title.clone())
            .collect();
        self.tls = tls;
        self
    }

    /// Works through the outbox until `shutdown` is cancelled; rows not yet sent stay
    /// pending for the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let wait = match self.deliver_due().await {
                Ok(next) => next,
                Err(e) => {
                    warn!(error = %e, "outbox: reading the index failed; retrying in 5 s");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends the due rows (up to [`CLAIM_LIMIT`] at a time, leased to this process), one
    /// association per destination; returns how long to sleep.
    async fn deliver_due(&self) -> Result<Duration, IndexError> {
        let due = self.store.index().claim_deliveries(CLAIM_LIMIT)?;
        let mut by_destination: BTreeMap<(String, String), Vec<Due>> = BTreeMap::new();
        for d in due {
            by_destination
                .entry((d.destination.clone(), d.address.clone()))
                .or_default()
                .push(d);
        }
        for ((ae, address), rows) in by_destination {
            self.send_to(&ae, &address, rows).await?;
        }
        let next = self.store.index().next_delivery_at()?;
        // Poll at least every second: `m3dnode retry` writes from another process.
        let wait = next.map(|n| (n - now()).clamp(0.0, 1.0)).unwrap_or(1.0);
        Ok(Duration::from_secs_f64(wait))
    }

    async fn send_to(&self, ae: &str, address: &str, rows: Vec<Due>) -> Result<(), IndexError> {
        let to = AeAddress {
            ae_title: ae.to_string(),
            address: address.to_string(),
            tls: self.tls_peers.contains(ae),
        };
        let base = self.settings.timeout_seconds;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let unconfirmed = self.store.index().unconfirmed_attempts(&ids)?;
        let most = rows
            .iter()
            .filter_map(|r| unconfirmed.get(&r.id))
            .max()
            .copied()
            .unwrap_or(0);
        let opts = ScuOptions {
            calling_ae: self.ae_title.clone(),
            timeout: Duration::from_secs_f64(timeout_after(base, most)),
            tls: self.tls.as_ref().map(|t| t.client_config()),
            ..Default::default()
        };
        let mut files = Vec::new();
        let mut verify = Vec::new();
        let mut sendable = Vec::new();
        for row in rows {
            let path = self.store.root().join(&row.path);
            match OutgoingFile::open(&path) {
                Ok(f) => {
                    let keys = if unconfirmed.contains_key(&row.id) {
                        InstanceKeys::read(&path)
                            .inspect_err(|e| {
                                warn!(outbox_id = row.id, error = %e, "cannot read the keys to verify an unconfirmed delivery; sending it again");
                            })
                            .ok()
                    } else {
                        None
                    };
                    files.push(f);
                    verify.push(keys);
                    sendable.push(row);
                }
                Err(e) => self.failed(&row, ae, &format!("result file unreadable: {e}"), None)?,
            }
        }
        if files.is_empty() {
            return Ok(());
        }
        let index = self.store.clone();
        let row_ids: Vec<i64> = sendable.iter().map(|r| r.id).collect();
        let mut mark = |i: usize| -> Result<(), String> {
            let id = row_ids.get(i).copied().ok_or("no such row")?;
            mark_unconfirmed(index.index(), id, base).map_err(|e| e.to_string())
        };
        let remote = audit::Peer {
            ae_title: ae.to_string(),
            host: audit::host_of(address),
        };
        let studies = || audit::tally_files(files.iter().map(|f| f.path.as_path())).into_studies();
        self.audit.record(AuditEvent::BeginTransferring {
            remote: remote.clone(),
            local_ae: self.ae_title.clone(),
            studies: studies(),
        });
        let outcomes = match scu::send_files_with(&files, &verify, &to, &opts, &mut mark).await {
            Ok(o) => o,
            Err(e) => {
                let why = e.full_message();
                self.audit.record(AuditEvent::InstancesTransferred {
                    direction: Direction::Sent,
                    remote,
                    local_ae: self.ae_title.clone(),
                    studies: studies(),
                    outcome: Outcome::SeriousFailure(why.clone()),
                });
                for row in &sendable {
                    if e.is_permanent() {
                        self.refused(row, ae, address, &why)?;
                    } else {
                        self.failed(row, ae, &why, None)?;
                    }
                }
                return Ok(());
            }
        };
        let delivered: Vec<&Path> = files
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.is_success() || o.verified == Verification::Found)
            .map(|(f, _)| f.path.as_path())
            .collect();
        let not_delivered = files.len() - delivered.len();
        self.audit.record(AuditEvent::InstancesTransferred {
            direction: Direction::Sent,
            remote,
            local_ae: self.ae_title.clone(),
            studies: audit::tally_files(delivered).into_studies(),
            outcome: match not_delivered {
                0 => Outcome::Success,
                n => Outcome::MinorFailure(format!("{n} of {} instances not stored", files.len())),
            },
        });
        for ((row, f), outcome) in sendable.iter().zip(&files).zip(outcomes) {
            if outcome.verified == Verification::Found {
                self.confirmed(row)?;
                info!(
                    destination = ae,
                    outbox_id = row.id,
                    sop_instance_uid = %f.sop_instance_uid,
                    "the destination already holds the result (C-FIND after an unconfirmed delivery): marked sent, not sent again"
                );
                continue;
            }
            if let Verification::Unavailable(why) = &outcome.verified {
                info!(destination = ae, outbox_id = row.id, reason = %why, "unconfirmed delivery could not be verified; sent again with a longer timeout");
            }
            if outcome.is_success() {
                self.confirmed(row)?;
                info!(destination = ae, outbox_id = row.id, path = %row.path, "result delivered");
                continue;
            }
            let why = match (&outcome.result, &outcome.comment) {
                (Ok(code), Some(c)) => format!("status {code:#06X}: {c}"),
                (Ok(code), None) => format!("status {code:#06X}"),
                (Err(e), _) => e.clone(),
            };
            if outcome.result.is_ok() {
                // An answer, even a failure, settles whether the destination holds it.
                self.clear_unconfirmed(row.id)?;
            }
            if outcome.permanent {
                self.refused(row, ae, address, &why)?;
            } else if outcome.unconfirmed {
                let (k, started) = self.unconfirmed_since(row.id)?.unwrap_or((1, now()));
                let not_before = started + timeout_after(base, k);
                self.failed(
                    row,
                    ae,
                    &format!("unconfirmed: the data set was sent but no status came back ({why})"),
                    Some(not_before),
                )?;
            } else {
                self.failed(row, ae, &why, None)?;
            }
        }
        Ok(())
    }

    fn unconfirmed_since(&self, id: i64) -> Result<Option<(i64, f64)>, IndexError> {
        self.store.index().unconfirmed_since(id)
    }

    fn clear_unconfirmed(&self, id: i64) -> Result<(), IndexError> {
        self.store.index().clear_unconfirmed(id)
    }

    /// The destination holds the instance: the row is `sent`.
    fn confirmed(&self, row: &Due) -> Result<(), IndexError> {
        self.store.index().mark_sent(row.id)?;
        crate::metrics::delivery_sent(&row.destination, row.created_at);
        Ok(())
    }

    /// A permanent refusal: the row is `failed` at once (until `m3dnode retry`).
    fn refused(&self, row: &Due, ae: &str, address: &str, why: &str) -> Result<(), IndexError> {
        warn!(
            destination = ae,
            address,
            outbox_id = row.id,
            error = why,
            "delivery refused for good by the destination; not retried (fix the destination's configuration, then `m3dnode retry`)"
        );
        self.store
            .index()
            .mark_failed(row.id, row.attempts + 1, why)
    }

    /// Records a failed attempt: schedules the next one, or gives up past the deadline.
    /// `not_before` (Unix seconds) holds an unconfirmed row back until the destination has had
    /// the next timeout to finish storing it.
    fn failed(
        &self,
        row: &Due,
        ae: &str,
        why: &str,
        not_before: Option<f64>,
    ) -> Result<(), IndexError> {
        let d = &self.settings;
        let attempts = row.attempts + 1;
        let base = (d.retry_initial_seconds * 2f64.powi((attempts - 1).min(30) as i32))
            .min(d.retry_max_seconds);
        let t = now();
        let delay =
            (base * rand::rng().random_range(0.8..1.2)).max(not_before.map_or(0.0, |n| n - t));
        if t + delay > row.deadline_at {
            warn!(
                destination = ae,
                outbox_id = row.id,
                attempts,
                error = why,
                "delivery failed for good: deadline passed (retry with `m3dnode retry`)"
            );
            self.store.index().mark_failed(row.id, attempts, why)?;
        } else {
            warn!(
                destination = ae,
                outbox_id = row.id,
                attempts,
                retry_in_seconds = format_args!("{delay:.1}"),
                error = why,
                "delivery failed; will retry"
            );
            self.store
                .index()
                .reschedule_delivery(row.id, attempts, why, t + delay)?;
            crate::metrics::delivery_retried(&row.destination);
        }
        Ok(())
    }
}

/// Records, durably, that the destination may now hold the row's instance: called just before
/// the last fragment of its data set is sent. Also holds the row back (should the process die
/// now) until the destination has had the next, doubled timeout to finish.
fn mark_unconfirmed(index: &Index, id: i64, base_timeout: u64) -> Result<(), IndexError> {
    index.mark_unconfirmed(id, |k| timeout_after(base_timeout, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_doubles_per_unconfirmed_attempt_up_to_the_cap() {
        assert_eq!(timeout_after(30, 0), 30.0);
        assert_eq!(timeout_after(30, 1), 60.0);
        assert_eq!(timeout_after(30, 3), 240.0);
        assert_eq!(timeout_after(30, 4), 480.0);
        assert_eq!(timeout_after(30, 50), 480.0);
    }
}
