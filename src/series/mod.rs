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
//!
//! A scanner's MPPS step is a better signal than either ([`crate::net::mpps`]): when a step
//! goes COMPLETED, each series its Performed Series Sequence lists is complete as soon as every
//! listed instance is stored, with no quiet time, and its list replaces the expected count. A
//! DISCONTINUED step processes what arrived at once, or skips the series, as its rule's
//! `on_discontinued` says. The quiet time stays the fallback: a series whose listed instances
//! never all arrive is still processed after it, with a warning. The lists are in the index
//! (`mpps_instances`), so a restart resumes waiting for them.

pub mod jobs;
pub mod lease;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use crate::db::{MppsStatus, NewSeriesWork, SeriesState, SeriesWork};
use crate::net::mpps::{MppsEvent, PerformedSeries};
use crate::net::scp::{AssociationEnd, StoreObserver};
use crate::route::{self, OnDiscontinued, Rule, SeriesFacts};
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
    /// An MPPS step reached a final status.
    Mpps(MppsEvent),
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

    fn mpps(&self, event: &MppsEvent) {
        self.send(Event::Mpps(event.clone()));
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

/// A series an MPPS step lists, waited for by its instances rather than by quiet time.
#[derive(Debug)]
struct Awaited {
    /// The step (for the log).
    mpps_uid: String,
    /// Listed SOP Instance UIDs not stored yet.
    missing: HashSet<String>,
    /// How many instances the step lists for the series.
    listed: usize,
    /// The step was DISCONTINUED before any instance of the series arrived: the series' rule
    /// decides when its first instance does.
    discontinued: bool,
}

/// Why a job is queued (the log line says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Completion {
    /// Quiet time over, or the expected count reached.
    Quiet,
    /// Every instance a COMPLETED MPPS step lists is stored.
    Mpps,
    /// The MPPS step was DISCONTINUED and the rule says process.
    Discontinued,
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
    let shared = store.is_shared();
    let sweep = sweep_period(&config, &rules);
    let mut state = State {
        config,
        shared,
        sweep,
        store,
        rules,
        queue,
        live: HashMap::new(),
        unrouted: HashSet::new(),
        awaiting: HashMap::new(),
    };
    state.resume()?;
    let handle = std::thread::Builder::new()
        .name("series-tracker".into())
        .spawn(move || state.run(rx))?;
    Ok((Arc::new(Tracker { tx }), handle))
}

struct State {
    config: SeriesConfig,
    /// The index is shared with other processes: completion is decided from its rows (every
    /// receiver's instances), not from this process's events, and queueing is a
    /// compare-and-set that one process wins.
    shared: bool,
    /// How often a shared index is swept for complete series.
    sweep: Duration,
    store: Arc<Store>,
    rules: Arc<Vec<Rule>>,
    queue: Arc<JobQueue>,
    live: HashMap<String, Live>,
    /// Series known to match no rule (or skipped), so that their further instances cost no
    /// query.
    unrouted: HashSet<String>,
    /// Series listed by a final MPPS step and not queued yet.
    awaiting: HashMap<String, Awaited>,
}

/// How long the tracker lets events gather after handling a batch.
const SETTLE: Duration = Duration::from_millis(20);

/// Bound on [`State::unrouted`]; forgetting a series only costs one query per instance later.
const UNROUTED_REMEMBERED: usize = 10_000;

/// A quarter of the shortest quiet time, between 0.1 and 1 s: a shared index's series are
/// queued at most that late.
fn sweep_period(config: &SeriesConfig, rules: &[Rule]) -> Duration {
    let shortest = rules
        .iter()
        .map(|r| r.quiet_seconds(config.quiet_seconds))
        .fold(config.quiet_seconds, f64::min);
    Duration::from_secs_f64((shortest / 4.0).clamp(0.1, 1.0))
}

/// Series that are not images: never routed (our own results coming back, documents).
fn is_reconstructable(h: &Header) -> bool {
    h.modality.as_deref() != Some("M3D")
        && !h.sop_class_uid.starts_with("1.2.840.10008.5.1.4.1.1.104.")
}

impl State {
    /// After a restart: series still receiving get a fresh quiet period, and the series final
    /// MPPS steps list are waited for again.
    fn resume(&mut self) -> Result<(), IndexError> {
        // A shared index's receiving series are found by the sweep, quiet from their last
        // instance's arrival.
        let rows = match self.shared {
            false => self.store.index().receiving_series()?,
            true => Vec::new(),
        };
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
        // One event per step, as the SCP would have sent it.
        let mut steps: Vec<MppsEvent> = Vec::new();
        for open in self.store.index().open_mpps_series()? {
            let series = PerformedSeries {
                series_instance_uid: open.series_instance_uid,
                sop_instance_uids: open.sop_instance_uids,
            };
            match steps.last_mut() {
                Some(e) if e.sop_instance_uid == open.mpps_uid => e.series.push(series),
                _ => steps.push(MppsEvent {
                    sop_instance_uid: open.mpps_uid,
                    status: open.status,
                    series: vec![series],
                }),
            }
        }
        for step in steps {
            info!(mpps_uid = %step.sop_instance_uid, status = %step.status, series = step.series.len(), "resuming the series of an MPPS step");
            self.on_mpps(&step)?;
        }
        Ok(())
    }

    fn run(mut self, rx: Receiver<Event>) {
        loop {
            let idle = match self.shared {
                true => self.sweep,
                false => Duration::from_secs(3600),
            };
            let wait = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(idle)
                .min(idle);
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
            Event::Mpps(step) => {
                if let Err(e) = self.on_mpps(&step) {
                    warn!(mpps_uid = %step.sop_instance_uid, error = %e, "series tracking failed for an MPPS step");
                }
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
        self.track_stored(h, calling_ae, called_ae)?;
        let uid = &h.series_instance_uid;
        let Some(a) = self.awaiting.get_mut(uid) else {
            return Ok(());
        };
        a.missing.remove(&h.sop_instance_uid);
        if a.discontinued {
            // The step was discontinued before this series' first instance: now its rule
            // is known.
            let policy = self
                .live
                .get(uid)
                .filter(|l| !l.processed)
                .and_then(|l| self.rules.iter().find(|r| r.name == l.rule))
                .map(|r| r.on_discontinued());
            let mpps_uid = a.mpps_uid.clone();
            self.awaiting.remove(uid);
            if policy == Some(OnDiscontinued::Skip) {
                self.skip(uid, &mpps_uid)?;
            }
            return Ok(());
        }
        self.check_awaited(uid)
    }

    /// A final MPPS step: COMPLETED makes its series wait for their listed instances (and
    /// queues those already complete); DISCONTINUED applies each series' rule policy.
    fn on_mpps(&mut self, step: &MppsEvent) -> Result<(), IndexError> {
        for s in &step.series {
            let uid = &s.series_instance_uid;
            match step.status {
                MppsStatus::InProgress => {}
                MppsStatus::Completed => {
                    if s.sop_instance_uids.is_empty() {
                        debug!(series_instance_uid = %uid, mpps_uid = %step.sop_instance_uid, "MPPS lists no instance of this series: its quiet time decides");
                        continue;
                    }
                    let stored: HashSet<String> = self
                        .store
                        .index()
                        .series(uid)?
                        .into_iter()
                        .map(|r| r.sop_instance_uid)
                        .collect();
                    let listed: HashSet<&String> = s.sop_instance_uids.iter().collect();
                    let missing: HashSet<String> = listed
                        .iter()
                        .filter(|u| !stored.contains(u.as_str()))
                        .map(|u| u.to_string())
                        .collect();
                    info!(series_instance_uid = %uid, mpps_uid = %step.sop_instance_uid, listed = listed.len(), missing = missing.len(), "MPPS COMPLETED lists this series");
                    self.awaiting.insert(
                        uid.clone(),
                        Awaited {
                            mpps_uid: step.sop_instance_uid.clone(),
                            missing,
                            listed: listed.len(),
                            discontinued: false,
                        },
                    );
                    self.check_awaited(uid)?;
                }
                MppsStatus::Discontinued => {
                    let live_rule = self.live.get(uid).map(|l| (l.processed, l.rule.clone()));
                    match live_rule {
                        Some((false, rule)) => {
                            let policy = self
                                .rules
                                .iter()
                                .find(|r| r.name == rule)
                                .map(|r| r.on_discontinued())
                                .unwrap_or_default();
                            match policy {
                                OnDiscontinued::Process => {
                                    self.queue(uid, Completion::Discontinued);
                                }
                                OnDiscontinued::Skip => self.skip(uid, &step.sop_instance_uid)?,
                            }
                        }
                        Some((true, _)) => {
                            info!(series_instance_uid = %uid, mpps_uid = %step.sop_instance_uid, "MPPS DISCONTINUED lists a series already processed")
                        }
                        None => {
                            if self.unrouted.contains(uid)
                                || self.store.index().series_work(uid)?.is_some()
                            {
                                continue;
                            }
                            self.awaiting.insert(
                                uid.clone(),
                                Awaited {
                                    mpps_uid: step.sop_instance_uid.clone(),
                                    missing: HashSet::new(),
                                    listed: s.sop_instance_uids.len(),
                                    discontinued: true,
                                },
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Queues a COMPLETED step's series once nothing it lists is missing.
    fn check_awaited(&mut self, uid: &str) -> Result<(), IndexError> {
        let Some(a) = self.awaiting.get(uid) else {
            return Ok(());
        };
        if !a.missing.is_empty() {
            return Ok(());
        }
        match self.live.get(uid) {
            Some(l) if !l.processed => {
                self.queue(uid, Completion::Mpps);
            }
            Some(_) => {
                info!(series_instance_uid = %uid, mpps_uid = %a.mpps_uid, "every instance the MPPS step lists is stored; the series was processed already");
                self.awaiting.remove(uid);
            }
            None => {
                // Stored in an earlier run and processed, skipped or unrouted since: nothing
                // to wait for.
                if self.store.index().series_work(uid)?.is_some() || self.unrouted.contains(uid) {
                    self.awaiting.remove(uid);
                }
            }
        }
        Ok(())
    }

    /// A DISCONTINUED step's series whose rule says skip: never processed.
    fn skip(&mut self, uid: &str, mpps_uid: &str) -> Result<(), IndexError> {
        self.store.index().skip_series(uid)?;
        let instances = self.live.remove(uid).map(|l| l.count).unwrap_or(0);
        self.awaiting.remove(uid);
        self.remember_unrouted(uid);
        info!(series_instance_uid = %uid, mpps_uid, instances, "series skipped: its MPPS step was DISCONTINUED (on_discontinued = skip)");
        Ok(())
    }

    fn track_stored(
        &mut self,
        h: &Header,
        calling_ae: &str,
        called_ae: &str,
    ) -> Result<(), IndexError> {
        let uid = &h.series_instance_uid;
        if let Some(live) = self.live.get_mut(uid) {
            live.count += 1;
            live.last = Instant::now();
            if self.shared {
                shared_late_instance(&self.config, &self.store, uid, live)?;
            } else if live.processed {
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
            Some(SeriesWork { rule: None, .. })
            | Some(SeriesWork {
                state: SeriesState::Skipped,
                ..
            }) => {
                // Unrouted or skipped, and already logged as such.
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
                let added = self.store.index().add_series_work(&NewSeriesWork {
                    series_instance_uid: uid,
                    study_instance_uid: &h.study_instance_uid,
                    calling_ae,
                    rule: rule.map(|r| r.name.as_str()),
                    expected: rule
                        .and_then(|r| r.expected_instances())
                        .map(i64::from)
                        .or(h.images_in_acquisition),
                })?;
                if !added {
                    // Another receiver of a shared index routed it first: follow its row.
                    return self.track_stored(h, calling_ae, called_ae);
                }
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
        if self.shared {
            shared_late_instance(&self.config, &self.store, uid, &mut live)?;
        } else if processed {
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

    /// Queues a job for every series whose quiet period is over or whose count is reached
    /// (an MPPS list replaces the count of the series it names).
    fn complete_due(&mut self) {
        if self.shared {
            return self.complete_due_shared();
        }
        let now_i = Instant::now();
        let due: Vec<String> = self
            .live
            .iter()
            .filter(|(k, l)| {
                !l.processed
                    && ((l.expected.is_some_and(|e| l.count >= e)
                        && !self.awaiting.contains_key(*k))
                        || now_i >= l.last + l.quiet)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for uid in due {
            if let Some(a) = self.awaiting.get(&uid)
                && !a.missing.is_empty()
            {
                warn!(series_instance_uid = %uid, mpps_uid = %a.mpps_uid, missing = a.missing.len(), listed = a.listed,
                    "series incomplete per MPPS: {} of {} listed instances missing; processing after the quiet time anyway",
                    a.missing.len(), a.listed);
            }
            self.queue(&uid, Completion::Quiet);
        }
    }

    /// [`State::complete_due`] on a shared index: every receiving series, whichever process
    /// received its instances, by the count and last arrival of its rows.
    fn complete_due_shared(&mut self) {
        let facts = match self.store.index().receiving_facts() {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "reading the receiving series failed; retrying");
                return;
            }
        };
        let now = crate::db::now();
        for f in facts {
            let Some(r) = self.rules.iter().find(|r| r.name == f.rule) else {
                continue;
            };
            let quiet = r.quiet_seconds(self.config.quiet_seconds);
            let counted = f.expected.is_some_and(|e| f.count >= e)
                && !self.awaiting.contains_key(&f.series_instance_uid);
            if counted || f.last_received_at + quiet <= now {
                self.queue_counted(
                    &f.series_instance_uid,
                    &f.rule,
                    f.count as u64,
                    Completion::Quiet,
                );
            }
        }
    }

    /// Queues the job of a live series and marks it processed. False when it could not (the
    /// next pass retries a quiet-time series).
    fn queue(&mut self, uid: &str, why: Completion) -> bool {
        let Some(live) = self.live.get(uid) else {
            return false;
        };
        let (rule, count) = (live.rule.clone(), live.count);
        self.queue_counted(uid, &rule, count, why)
    }

    /// [`State::queue`] for `count` instances of a series routed by `rule`. On a shared index
    /// another process may have queued it first: then there is nothing to do here.
    fn queue_counted(&mut self, uid: &str, rule: &str, count: u64, why: Completion) -> bool {
        let span = info_span!("series", series_instance_uid = %uid);
        let _g = span.enter();
        let queued = match self.shared {
            true => self.store.index().queue_job_if_receiving(uid, rule),
            false => self.store.index().queue_job(uid, rule).map(Some),
        };
        match queued {
            Ok(None) => {
                debug!("another process queued this series' job");
                if let Some(live) = self.live.get_mut(uid) {
                    live.processed = true;
                }
                self.awaiting.remove(uid);
                true
            }
            Ok(Some(id)) => {
                match why {
                    Completion::Quiet => {
                        info!(
                            job_id = id,
                            instances = count,
                            rule,
                            "series complete: job queued"
                        )
                    }
                    Completion::Mpps => {
                        info!(
                            job_id = id,
                            instances = count,
                            rule,
                            "series complete (MPPS): job queued"
                        )
                    }
                    Completion::Discontinued => {
                        info!(
                            job_id = id,
                            instances = count,
                            rule,
                            "series processed as it stands, its MPPS step was DISCONTINUED (on_discontinued = process): job queued"
                        )
                    }
                }
                crate::metrics::series_completed();
                if let Some(live) = self.live.get_mut(uid) {
                    live.processed = true;
                }
                self.queue.notify();
                // A quiet-time job of a series still missing MPPS-listed instances keeps
                // waiting for them: their arrival rebuilds it at once.
                if why != Completion::Quiet
                    || self.awaiting.get(uid).is_some_and(|a| a.missing.is_empty())
                {
                    self.awaiting.remove(uid);
                }
                true
            }
            Err(e) => {
                warn!(error = %e, "could not queue a job; will retry");
                false
            }
        }
    }
}

/// [`late_instance`] on a shared index, for every instance of a routed series: this
/// process's `processed` may be stale (another process queued the job), so the index decides.
/// It reopens the series only when it holds more instances than the last job was queued for,
/// so the event of an instance that job already counted rebuilds nothing.
fn shared_late_instance(
    config: &SeriesConfig,
    store: &Store,
    uid: &str,
    live: &mut Live,
) -> Result<(), IndexError> {
    if config.late_instances == LateInstances::Ignore {
        return Ok(());
    }
    if store.index().reopen_if_grown(uid)? {
        info!(series_instance_uid = %uid, "instance arrived after the series was processed: the result will be rebuilt (series.late_instances = rebuild)");
        live.processed = false;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{MppsInstance, MppsWrite};
    use crate::route::RuleConfig;
    use crate::store::StoreSettings;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    struct Fixture {
        _dir: tempfile::TempDir,
        state: State,
    }

    /// A tracker state with one CT rule (quiet time `quiet`, `on_discontinued` as given),
    /// without its thread: the tests drive `handle` and `complete_due` themselves.
    fn fixture(quiet: f64, on_discontinued: OnDiscontinued) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&StoreSettings::at(dir.path().join("var"))).unwrap());
        fixture_on(dir, store, quiet, on_discontinued)
    }

    fn fixture_on(
        dir: tempfile::TempDir,
        store: Arc<Store>,
        quiet: f64,
        on_discontinued: OnDiscontinued,
    ) -> Fixture {
        let rule = Rule::compile(
            0,
            &RuleConfig {
                name: Some("ct".into()),
                modality: Some("CT".into()),
                quiet_seconds: Some(quiet),
                on_discontinued,
                reply_to_sender: true,
                ..Default::default()
            },
            &[],
        )
        .unwrap();
        let queue = JobQueue::new(CancellationToken::new()).unwrap();
        let mut state = State {
            config: SeriesConfig::default(),
            shared: false,
            sweep: Duration::from_secs(1),
            store,
            rules: Arc::new(vec![rule]),
            queue,
            live: HashMap::new(),
            unrouted: HashSet::new(),
            awaiting: HashMap::new(),
        };
        state.resume().unwrap();
        Fixture { _dir: dir, state }
    }

    fn header(series: &str, sop: &str, images_in_acquisition: Option<i64>) -> Header {
        Header {
            sop_class_uid: CT.into(),
            sop_instance_uid: sop.into(),
            study_instance_uid: "1.2.3".into(),
            series_instance_uid: series.into(),
            modality: Some("CT".into()),
            images_in_acquisition,
            ..Default::default()
        }
    }

    impl Fixture {
        /// Indexes an instance as the store would, then tells the tracker.
        fn store(&mut self, series: &str, sop: &str) {
            self.store_counted(series, sop, None)
        }

        fn store_counted(&mut self, series: &str, sop: &str, iia: Option<i64>) {
            let h = header(series, sop, iia);
            self.state
                .store
                .index()
                .upsert(&h, crate::net::EXPLICIT_VR_LE, sop, 10, "SCANNER")
                .unwrap();
            assert!(self.state.handle(Event::Stored {
                header: Box::new(h),
                calling_ae: "SCANNER".into(),
                called_ae: "M3DNODE".into(),
            }));
            self.state.complete_due();
        }

        fn mpps(&mut self, status: MppsStatus, series: &str, sops: &[&str]) {
            assert!(self.state.handle(Event::Mpps(MppsEvent {
                sop_instance_uid: "9.9".into(),
                status,
                series: vec![PerformedSeries {
                    series_instance_uid: series.into(),
                    sop_instance_uids: sops.iter().map(|s| s.to_string()).collect(),
                }],
            })));
            self.state.complete_due();
        }

        fn jobs(&self) -> usize {
            self.state.store.index().list_jobs(100).unwrap().len()
        }

        fn series_state(&self, series: &str) -> SeriesState {
            self.state
                .store
                .index()
                .series_work(series)
                .unwrap()
                .unwrap()
                .state
        }
    }

    #[tokio::test]
    async fn completed_with_every_instance_stored_queues_at_once() {
        let mut f = fixture(600.0, OnDiscontinued::Process);
        for sop in ["a", "b", "c"] {
            f.store("S", sop);
        }
        assert_eq!(f.jobs(), 0, "the quiet time is 600 s");
        // IN PROGRESS does nothing.
        f.mpps(MppsStatus::InProgress, "S", &["a", "b", "c"]);
        assert_eq!(f.jobs(), 0);
        f.mpps(MppsStatus::Completed, "S", &["a", "b", "c"]);
        assert_eq!(f.jobs(), 1);
        assert_eq!(f.series_state("S"), SeriesState::Processed);
        assert!(f.state.awaiting.is_empty());
    }

    #[tokio::test]
    async fn completed_before_the_last_instance_waits_for_it() {
        let mut f = fixture(600.0, OnDiscontinued::Process);
        f.store("S", "a");
        f.mpps(MppsStatus::Completed, "S", &["a", "b", "c"]);
        assert_eq!(f.jobs(), 0);
        f.store("S", "b");
        assert_eq!(f.jobs(), 0);
        // An instance the step does not list changes nothing.
        f.store("S", "x");
        assert_eq!(f.jobs(), 0);
        f.store("S", "c");
        assert_eq!(f.jobs(), 1);
    }

    #[tokio::test]
    async fn an_mpps_list_replaces_the_expected_count_and_covers_series_not_seen_yet() {
        let mut f = fixture(600.0, OnDiscontinued::Process);
        // COMPLETED before any instance of the series arrived.
        f.mpps(MppsStatus::Completed, "S", &["a", "b", "c"]);
        assert_eq!(f.jobs(), 0);
        // Images in Acquisition says 2, the step lists 3: the step wins.
        f.store_counted("S", "a", Some(2));
        f.store_counted("S", "b", Some(2));
        assert_eq!(f.jobs(), 0);
        f.store_counted("S", "c", Some(2));
        assert_eq!(f.jobs(), 1);
        // Without a step, the count still completes a series.
        f.store_counted("T", "t1", Some(2));
        f.store_counted("T", "t2", Some(2));
        assert_eq!(f.jobs(), 2);
    }

    #[tokio::test]
    async fn discontinued_skips_or_processes_as_the_rule_says() {
        let mut f = fixture(600.0, OnDiscontinued::Skip);
        f.store("S", "a");
        f.mpps(MppsStatus::Discontinued, "S", &["a"]);
        assert_eq!(f.jobs(), 0);
        assert_eq!(f.series_state("S"), SeriesState::Skipped);
        // Later instances are stored, not tracked.
        f.store("S", "b");
        assert_eq!(f.jobs(), 0);
        assert_eq!(f.series_state("S"), SeriesState::Skipped);
        // A step discontinued before the series' first instance: skipped when it arrives.
        f.mpps(MppsStatus::Discontinued, "U", &["u1"]);
        f.store("U", "u1");
        assert_eq!(f.series_state("U"), SeriesState::Skipped);
        assert_eq!(f.jobs(), 0);

        let mut f = fixture(600.0, OnDiscontinued::Process);
        f.store("S", "a");
        f.mpps(MppsStatus::Discontinued, "S", &["a", "b"]);
        assert_eq!(f.jobs(), 1, "processed at once with what arrived");
        assert_eq!(f.series_state("S"), SeriesState::Processed);
    }

    #[tokio::test]
    async fn the_quiet_time_still_completes_a_series_missing_listed_instances() {
        let mut f = fixture(0.0, OnDiscontinued::Process);
        f.mpps(MppsStatus::Completed, "S", &["a", "b"]);
        f.store("S", "a");
        assert_eq!(f.jobs(), 1, "quiet time 0: processed with a warning");
        // Still waited for: the missing instance's arrival rebuilds at once.
        assert_eq!(f.state.awaiting["S"].missing.len(), 1);
        f.store("S", "b");
        assert_eq!(f.jobs(), 2);
        assert!(f.state.awaiting.is_empty());
    }

    #[tokio::test]
    async fn a_restart_resumes_waiting_for_the_listed_instances() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&StoreSettings::at(dir.path().join("var"))).unwrap());
        let mut f = fixture_on(dir, store.clone(), 600.0, OnDiscontinued::Process);
        f.store("S", "a");
        let list: Vec<MppsInstance> = ["a", "b"]
            .iter()
            .map(|s| MppsInstance {
                series_instance_uid: "S".into(),
                sop_class_uid: CT.into(),
                sop_instance_uid: s.to_string(),
            })
            .collect();
        let step = |status, instances| MppsWrite {
            sop_instance_uid: "9.9",
            calling_ae: "SCANNER",
            status,
            study_instance_uid: None,
            patient_id: None,
            accession_number: None,
            modality: Some("CT"),
            pps_id: None,
            attributes: b"",
            instances,
        };
        assert!(
            store
                .index()
                .create_mpps(&step(MppsStatus::InProgress, &[]))
                .unwrap()
        );
        assert!(
            store
                .index()
                .update_mpps(&step(MppsStatus::Completed, &list))
                .unwrap()
        );
        // The node stops before the event was handled (or before "b" arrived).
        let Fixture { _dir: dir, state } = f;
        drop(state);
        let mut f = fixture_on(dir, store, 600.0, OnDiscontinued::Process);
        assert_eq!(f.state.awaiting["S"].missing.len(), 1);
        assert_eq!(f.jobs(), 0);
        f.store("S", "b");
        assert_eq!(f.jobs(), 1);
    }
}
