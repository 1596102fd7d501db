//! Series: grouping received instances, deciding when a series is complete, and the jobs
//! that reconstruct it ([`jobs`]).
//!
//! The receiver must never wait on any of this, so the SCP only drops an event into a
//! channel ([`Tracker`] is its [`StoreObserver`]); a dedicated thread owns the per-series
//! timers and writes the `series` and `jobs` tables. A series is complete `quiet_seconds`
//! after its last instance, or at once when its expected instance count has arrived (a rule's
//! `expected_instances`, else the series' own Images in Acquisition). Everything needed to
//! resume is in the index: after a restart, series still receiving get a fresh quiet period
//! and interrupted jobs are queued again.

pub mod jobs;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn};

use crate::db::{NewSeriesWork, SeriesState, SeriesWork};
use crate::net::scp::{AssociationEnd, StoreObserver};
use crate::route::{self, Rule, SeriesFacts};
use crate::store::header::Header;
use crate::store::{IndexError, Store, Stored};
use jobs::JobQueue;

/// `[series]`: series completion.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SeriesConfig {
    /// A series is complete after this many seconds without a new instance (or at once when
    /// the expected number of instances has arrived).
    pub quiet_seconds: f64,
    /// Instances arriving after a series was processed: rebuild the result or ignore them.
    pub late_instances: LateInstances,
    /// Instances stored by an association that was later aborted: keep or drop them.
    pub aborted_associations: AbortedAssociations,
}

impl Default for SeriesConfig {
    fn default() -> Self {
        SeriesConfig {
            quiet_seconds: 20.0,
            late_instances: LateInstances::Rebuild,
            aborted_associations: AbortedAssociations::Keep,
        }
    }
}

/// See [`SeriesConfig::late_instances`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LateInstances {
    /// Build a new result that supersedes the old one (same result series, Instance Number + 1).
    Rebuild,
    /// Keep the instance stored but do not reprocess; log it.
    Ignore,
}

/// See [`SeriesConfig::aborted_associations`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AbortedAssociations {
    /// Keep what an aborted association stored (it was acknowledged).
    Keep,
    /// Delete what an aborted association stored, as MONAI's gateway does, so a half-sent
    /// series is not processed.
    Drop,
}

/// What the SCP reports.
enum Event {
    Stored {
        header: Box<Header>,
        calling_ae: String,
        called_ae: String,
    },
    AssociationEnded {
        aborted: bool,
        stored: Vec<(String, String)>,
    },
    Stop,
}

/// The SCP's observer: forwards events to the tracker thread.
pub struct Tracker {
    tx: Sender<Event>,
}

impl StoreObserver for Tracker {
    fn stored(&self, stored: &Stored, calling_ae: &str, called_ae: &str) {
        if stored.duplicate {
            return;
        }
        self.send(Event::Stored {
            header: Box::new(stored.header.clone()),
            calling_ae: calling_ae.to_string(),
            called_ae: called_ae.to_string(),
        });
    }

    fn association_ended(&self, end: AssociationEnd, stored: &[(String, String)]) {
        self.send(Event::AssociationEnded {
            aborted: !end.is_released(),
            stored: stored.to_vec(),
        });
    }
}

impl Tracker {
    fn send(&self, e: Event) {
        // Fails only once the tracker has stopped (shutdown), when nothing is pending anyway.
        let _ = self.tx.send(e);
    }
}

/// A series being tracked.
struct Live {
    rule: String,
    last: Instant,
    count: u64,
    expected: Option<u64>,
    quiet: Duration,
    /// A job was queued for what has arrived so far.
    processed: bool,
    /// The "ignored late instance" line was logged.
    late_logged: bool,
}

/// Why the tracker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Reading the series to resume failed.
    #[error("resuming series from the index: {0}")]
    Index(#[from] IndexError),
    /// The thread could not be spawned.
    #[error("starting the series tracker thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The stop signal cannot be watched.
    #[error("starting the series tracker: {0}")]
    Shutdown(#[from] crate::shutdown::NoRuntime),
}

/// Starts the tracker thread. Returns the observer for the SCP and the thread handle.
///
/// The thread stops when `shutdown` is cancelled, after the events sent before that (pending
/// timers resume at the next start). The node cancels `shutdown` only once the SCP has
/// stopped, so every instance the SCP acknowledged has been tracked by then.
pub fn start(
    config: SeriesConfig,
    store: Arc<Store>,
    rules: Arc<Vec<Rule>>,
    queue: Arc<JobQueue>,
    shutdown: &CancellationToken,
) -> Result<(Arc<Tracker>, std::thread::JoinHandle<()>), StartError> {
    let (tx, rx) = mpsc::channel();
    let stop = tx.clone();
    crate::shutdown::wake_on_cancel(shutdown, move || {
        let _ = stop.send(Event::Stop);
    })?;
    let mut state = State {
        config,
        store,
        rules,
        queue,
        live: HashMap::new(),
        unrouted: HashSet::new(),
    };
    state.resume()?;
    let handle = std::thread::Builder::new()
        .name("series-tracker".into())
        .spawn(move || state.run(rx))?;
    Ok((Arc::new(Tracker { tx }), handle))
}

struct State {
    config: SeriesConfig,
    store: Arc<Store>,
    rules: Arc<Vec<Rule>>,
    queue: Arc<JobQueue>,
    live: HashMap<String, Live>,
    /// Series known to match no rule, so that their further instances cost no query.
    unrouted: HashSet<String>,
}

/// How long the tracker lets events gather after handling a batch.
const SETTLE: Duration = Duration::from_millis(20);

/// Bound on [`State::unrouted`]; forgetting a series only costs one query per instance later.
const UNROUTED_REMEMBERED: usize = 10_000;

/// Series that are not images: never routed (our own results coming back, documents).
fn is_reconstructable(h: &Header) -> bool {
    h.modality.as_deref() != Some("M3D")
        && !h.sop_class_uid.starts_with("1.2.840.10008.5.1.4.1.1.104.")
}

impl State {
    /// After a restart: series still receiving get a fresh quiet period.
    fn resume(&mut self) -> Result<(), IndexError> {
        let rows = self.store.index().receiving_series()?;
        for (uid, rule, expected) in rows {
            let Some(r) = self.rules.iter().find(|r| r.name == rule) else {
                warn!(series_instance_uid = %uid, rule, "series was routed by a rule that no longer exists; not processed");
                continue;
            };
            let count = self.store.index().series(&uid)?.len() as u64;
            info!(series_instance_uid = %uid, instances = count, "resuming a series that was still receiving at shutdown");
            self.live.insert(
                uid,
                Live {
                    quiet: Duration::from_secs_f64(r.quiet_seconds(self.config.quiet_seconds)),
                    rule,
                    last: Instant::now(),
                    count,
                    expected: expected.map(|e| e as u64),
                    processed: false,
                    late_logged: false,
                },
            );
        }
        Ok(())
    }

    fn run(mut self, rx: Receiver<Event>) {
        loop {
            let wait = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    for event in std::iter::once(first).chain(rx.try_iter()) {
                        if !self.handle(event) {
                            return;
                        }
                    }
                    self.complete_due();
                    // Let the next events gather instead of parking on the channel: while a
                    // series streams in, a sender then finds no waiting receiver to wake, and
                    // a C-STORE does not pay for two context switches. Series complete after
                    // seconds of quiet, so this delay is invisible.
                    std::thread::sleep(SETTLE);
                }
                Err(RecvTimeoutError::Timeout) => self.complete_due(),
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Handles one event; false on Stop.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Stop => return false,
            Event::Stored {
                header,
                calling_ae,
                called_ae,
            } => {
                if let Err(e) = self.on_stored(&header, &calling_ae, &called_ae) {
                    warn!(series_instance_uid = %header.series_instance_uid, error = %e, "series tracking failed for an instance");
                }
            }
            Event::AssociationEnded { aborted, stored } => {
                self.on_association_end(aborted, &stored)
            }
        }
        true
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.live
            .values()
            .filter(|l| !l.processed)
            .map(|l| l.last + l.quiet)
            .min()
    }

    fn remember_unrouted(&mut self, uid: &str) {
        if self.unrouted.len() >= UNROUTED_REMEMBERED {
            self.unrouted.clear();
        }
        self.unrouted.insert(uid.to_string());
    }

    fn on_stored(
        &mut self,
        h: &Header,
        calling_ae: &str,
        called_ae: &str,
    ) -> Result<(), IndexError> {
        let uid = &h.series_instance_uid;
        if let Some(live) = self.live.get_mut(uid) {
            live.count += 1;
            live.last = Instant::now();
            if live.processed {
                late_instance(&self.config, &self.store, uid, live)?;
            }
            return Ok(());
        }
        if self.unrouted.contains(uid) {
            return Ok(());
        }
        // Known from an earlier run or an earlier association?
        let known = self.store.index().series_work(uid)?;
        let (rule, processed, expected) = match known {
            Some(SeriesWork { rule: None, .. }) => {
                // Unrouted, and already logged as such.
                self.remember_unrouted(uid);
                return Ok(());
            }
            Some(SeriesWork {
                rule: Some(rule),
                state,
                expected,
            }) => (
                rule,
                state == SeriesState::Processed,
                expected.map(|e| e as u64),
            ),
            None => {
                let facts = SeriesFacts::from_header(h, calling_ae, called_ae);
                let rule = if is_reconstructable(h) {
                    route::first_match(&self.rules, &facts)
                } else {
                    None
                };
                self.store.index().add_series_work(&NewSeriesWork {
                    series_instance_uid: uid,
                    study_instance_uid: &h.study_instance_uid,
                    calling_ae,
                    rule: rule.map(|r| r.name.as_str()),
                    expected: rule
                        .and_then(|r| r.expected_instances())
                        .map(i64::from)
                        .or(h.images_in_acquisition),
                })?;
                let Some(rule) = rule else {
                    info!(series_instance_uid = %uid, modality = h.modality.as_deref().unwrap_or(""), calling_ae, "series matches no rule: stored, not processed");
                    self.remember_unrouted(uid);
                    return Ok(());
                };
                info!(series_instance_uid = %uid, rule = %rule.name, "new series");
                let expected = rule.expected_instances().map(u64::from).or(h
                    .images_in_acquisition
                    .and_then(|n| u64::try_from(n).ok())
                    .filter(|&n| n > 0));
                (rule.name.clone(), false, expected)
            }
        };
        let Some(r) = self.rules.iter().find(|r| r.name == rule) else {
            return Ok(());
        };
        let count = if processed {
            self.store.index().series(uid)?.len() as u64
        } else {
            1
        };
        let mut live = Live {
            quiet: Duration::from_secs_f64(r.quiet_seconds(self.config.quiet_seconds)),
            rule,
            last: Instant::now(),
            count,
            expected,
            processed,
            late_logged: false,
        };
        if processed {
            late_instance(&self.config, &self.store, uid, &mut live)?;
        }
        self.live.insert(uid.clone(), live);
        Ok(())
    }

    fn on_association_end(&mut self, aborted: bool, stored: &[(String, String)]) {
        if !aborted
            || stored.is_empty()
            || self.config.aborted_associations == AbortedAssociations::Keep
        {
            return;
        }
        warn!(
            instances = stored.len(),
            "dropping the instances of an aborted association (series.aborted_associations = drop)"
        );
        for (series_uid, sop_uid) in stored {
            if let Err(e) = self.store.delete_instance(sop_uid) {
                warn!(sop_instance_uid = %sop_uid, error = %e, "could not drop an instance");
            }
            if let Some(live) = self.live.get_mut(series_uid) {
                live.count = live.count.saturating_sub(1);
                if live.count == 0 && !live.processed {
                    self.live.remove(series_uid);
                    let _ = self.store.index().forget_series_work(series_uid);
                }
            }
        }
    }

    /// Queues a job for every series whose quiet period is over or whose count is reached.
    fn complete_due(&mut self) {
        let now_i = Instant::now();
        let due: Vec<String> = self
            .live
            .iter()
            .filter(|(_, l)| {
                !l.processed
                    && (l.expected.is_some_and(|e| l.count >= e) || now_i >= l.last + l.quiet)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for uid in due {
            let Some(live) = self.live.get_mut(&uid) else {
                continue;
            };
            let span = info_span!("series", series_instance_uid = %uid);
            let _g = span.enter();
            match self.store.index().queue_job(&uid, &live.rule) {
                Ok(id) => {
                    info!(job_id = id, instances = live.count, rule = %live.rule, "series complete: job queued");
                    crate::metrics::series_completed();
                    live.processed = true;
                    self.queue.notify();
                }
                Err(e) => warn!(error = %e, "could not queue a job; will retry"),
            }
        }
    }
}

fn late_instance(
    config: &SeriesConfig,
    store: &Store,
    uid: &str,
    live: &mut Live,
) -> Result<(), IndexError> {
    match config.late_instances {
        LateInstances::Rebuild => {
            info!(series_instance_uid = %uid, "instance arrived after the series was processed: the result will be rebuilt (series.late_instances = rebuild)");
            live.processed = false;
            store.index().reopen_series(uid)?;
        }
        LateInstances::Ignore => {
            if !live.late_logged {
                info!(series_instance_uid = %uid, "instances arrived after the series was processed: stored, not reprocessed (series.late_instances = ignore)");
                live.late_logged = true;
            }
        }
    }
    Ok(())
}
