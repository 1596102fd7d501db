//! Prometheus metrics: what an on-call engineer needs to see the node's traffic, its latency
//! distributions and its backlog, in the Prometheus text format.
//!
//! Events are recorded where they happen (the SCP, the store, the tracker, the job workers,
//! the outbox) through the [`metrics`](::metrics) facade into one process-wide recorder of
//! `metrics-exporter-prometheus`, installed by [`Metrics::install`] (a second node in the same
//! process shares it). Until it is installed, every recording function here is a no-op, so
//! the library's other users (`m3dnode recon`, tests) pay nothing. Counts that the index
//! already holds (jobs by state, the outbox, index rows) and the free disk space are not
//! tracked as events but read when scraped ([`Metrics::render`]), so they are right after a
//! restart and after `m3dnode retry` wrote from another process.
//!
//! The per-instance path (bytes, stored, receive-to-acknowledge, fsync) uses handles
//! registered once at install time: an update is an atomic add or a push into a lock-free
//! bucket, with no key built, hashed or allocated. Label values are bounded: fixed sets
//! (status codes, end and rejection reasons, pipelines, states, tables) or the destinations
//! of `[[peers]]`; never UIDs, and never an AE title a peer chose.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use dicom_ul::Pdu;
use dicom_ul::pdu::{
    AssociationRJServiceProviderASCEReason, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::warn;

use crate::db::{IndexStats, StatsReader};
use crate::net::dimse::status;
use crate::net::scp::AssociationEnd;
use crate::store::Store;

/// Metric names, with the `m3dnode_` prefix and Prometheus' suffixes.
pub mod names {
    /// Gauge: associations open now.
    pub const ASSOCIATIONS_ACTIVE: &str = "m3dnode_associations_active";
    /// Counter: associations accepted.
    pub const ASSOCIATIONS: &str = "m3dnode_associations_total";
    /// Counter, `end`: associations ended, by how.
    pub const ASSOCIATIONS_ENDED: &str = "m3dnode_associations_ended_total";
    /// Counter, `reason`: association requests (and connections) turned away.
    pub const ASSOCIATIONS_REJECTED: &str = "m3dnode_associations_rejected_total";
    /// Counter: C-STORE answered with success.
    pub const INSTANCES_STORED: &str = "m3dnode_instances_stored_total";
    /// Counter, `status`: C-STORE answered with a failure status.
    pub const INSTANCES_FAILED: &str = "m3dnode_instances_failed_total";
    /// Counter: data set bytes received in P-DATA.
    pub const RECEIVED_BYTES: &str = "m3dnode_received_bytes_total";
    /// Histogram: C-STORE command to success response.
    pub const RECEIVE_TO_ACK: &str = "m3dnode_store_receive_to_ack_seconds";
    /// Histogram, `step`: fsyncs of the durability protocol.
    pub const FSYNC: &str = "m3dnode_store_fsync_seconds";
    /// Counter: series complete (job queued).
    pub const SERIES_COMPLETED: &str = "m3dnode_series_completed_total";
    /// Gauge, `state`: jobs in the index.
    pub const JOBS: &str = "m3dnode_jobs";
    /// Histogram, `pipeline`, `outcome`: job run times.
    pub const JOB_DURATION: &str = "m3dnode_job_duration_seconds";
    /// Gauge, `destination`, `state`: outbox rows in the index.
    pub const OUTBOX: &str = "m3dnode_outbox_deliveries";
    /// Histogram, `destination`: queued to sent.
    pub const DELIVERY_LATENCY: &str = "m3dnode_delivery_latency_seconds";
    /// Counter, `destination`: failed attempts rescheduled.
    pub const DELIVERY_RETRIES: &str = "m3dnode_delivery_retries_total";
    /// Gauge: free bytes of the storage volume.
    pub const STORAGE_FREE: &str = "m3dnode_storage_free_bytes";
    /// Gauge, `table`: rows of the index tables.
    pub const INDEX_ROWS: &str = "m3dnode_index_rows";
}

use names::*;

/// Receive-to-acknowledge: a lone sender on a local disk answers in about a millisecond; a
/// queue behind a slow disk takes seconds.
const RECEIVE_TO_ACK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// fsync: tens of microseconds on a power-loss-protected cache, milliseconds on a virtual
/// disk, a second or more on a failing one.
const FSYNC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];
/// Jobs: an `iso` reconstruction takes seconds, an `mvdiffusion` one minutes on a GPU and up
/// to an hour on a CPU.
const JOB_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];
/// Delivery: sub-second to a PACS that is up, then the retry backoff up to the one-day
/// deadline.
const DELIVERY_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes, so that
/// an unscraped node does not keep every sample.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why the recorder could not be installed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetricsError {
    /// The bucket configuration was refused.
    #[error("configuring the Prometheus recorder: {0}")]
    Build(String),
    /// Something else in this process installed a `metrics` recorder first.
    #[error("another metrics recorder is already installed in this process")]
    Taken,
}

/// Why an association request or a connection was turned away (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The called AE title is not ours.
    CalledAe,
    /// The calling AE title is not in `[[peers]]` (`require_known_peers`), or came from
    /// another host than its `[[peers]]` address (`check_host`).
    CallingAe,
    /// Not the DICOM application context.
    ApplicationContext,
    /// A protocol version without version 1.
    ProtocolVersion,
    /// All `node.max_associations` slots were taken.
    AssociationLimit,
    /// `node.max_connections_per_host` open connections from that address.
    HostLimit,
    /// Too many connections still sending their request; dropped unanswered.
    RequestBacklog,
    /// The node is shutting down.
    ShuttingDown,
    /// No A-ASSOCIATE-RQ within `node.association_request_timeout_seconds`.
    RequestTimeout,
    /// Something other than a well-formed A-ASSOCIATE-RQ arrived.
    BadRequest,
    /// The TLS handshake failed (no or an untrusted client certificate, a protocol version
    /// or suite outside BCP 195, plain TCP on the TLS port) or did not end in time.
    TlsHandshake,
    /// A rejection this list does not name.
    Other,
}

impl Rejection {
    /// Every reason, in label order.
    pub const ALL: [Rejection; 12] = [
        Rejection::CalledAe,
        Rejection::CallingAe,
        Rejection::ApplicationContext,
        Rejection::ProtocolVersion,
        Rejection::AssociationLimit,
        Rejection::HostLimit,
        Rejection::RequestBacklog,
        Rejection::ShuttingDown,
        Rejection::RequestTimeout,
        Rejection::BadRequest,
        Rejection::TlsHandshake,
        Rejection::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::CalledAe => "called_ae",
            Rejection::CallingAe => "calling_ae",
            Rejection::ApplicationContext => "application_context",
            Rejection::ProtocolVersion => "protocol_version",
            Rejection::AssociationLimit => "association_limit",
            Rejection::HostLimit => "host_limit",
            Rejection::RequestBacklog => "request_backlog",
            Rejection::ShuttingDown => "shutting_down",
            Rejection::RequestTimeout => "request_timeout",
            Rejection::BadRequest => "bad_request",
            Rejection::TlsHandshake => "tls_handshake",
            Rejection::Other => "other",
        }
    }

    /// The reason an A-ASSOCIATE-RJ from the negotiation gives.
    pub fn of(rj: &Pdu) -> Rejection {
        let Pdu::AssociationRJ(rj) = rj else {
            return Rejection::Other;
        };
        match &rj.source {
            AssociationRJSource::ServiceUser(r) => match r {
                AssociationRJServiceUserReason::CalledAETitleNotRecognized => Rejection::CalledAe,
                AssociationRJServiceUserReason::CallingAETitleNotRecognized => Rejection::CallingAe,
                AssociationRJServiceUserReason::ApplicationContextNameNotSupported => {
                    Rejection::ApplicationContext
                }
                _ => Rejection::Other,
            },
            AssociationRJSource::ServiceProviderASCE(
                AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
            ) => Rejection::ProtocolVersion,
            AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            ) => Rejection::AssociationLimit,
            AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
            ) => Rejection::ShuttingDown,
            _ => Rejection::Other,
        }
    }
}

/// Every way an association ends, with its `end` label.
const ENDS: [(AssociationEnd, &str); 8] = [
    (AssociationEnd::Released, "released"),
    (AssociationEnd::AbortedByPeer, "aborted_by_peer"),
    (AssociationEnd::ConnectionClosed, "connection_closed"),
    (AssociationEnd::IdleTimeout, "idle_timeout"),
    (AssociationEnd::ProtocolError, "protocol_error"),
    (AssociationEnd::SendFailed, "send_failed"),
    (AssociationEnd::Shutdown, "shutdown"),
    (AssociationEnd::Cancelled, "cancelled"),
];

/// The failure statuses the SCP answers a C-STORE with, and their labels; anything else is
/// counted as `other`.
const FAILURE_STATUSES: [(u16, &str); 4] = [
    (status::OUT_OF_RESOURCES, "0xA700"),
    (status::DATA_SET_MISMATCH, "0xA900"),
    (status::CANNOT_UNDERSTAND, "0xC000"),
    (status::NOT_AUTHORIZED, "0x0124"),
];

/// Handles of the metrics updated per instance or per association, registered once.
struct Instruments {
    associations_active: Gauge,
    associations: Counter,
    ended: [Counter; ENDS.len()],
    rejected: [Counter; Rejection::ALL.len()],
    stored: Counter,
    failed: [Counter; FAILURE_STATUSES.len()],
    failed_other: Counter,
    received_bytes: Counter,
    receive_to_ack: Histogram,
    fsync_file: Histogram,
    fsync_directory: Histogram,
    series_completed: Counter,
}

impl Instruments {
    fn register() -> Instruments {
        Instruments {
            associations_active: gauge!(ASSOCIATIONS_ACTIVE),
            associations: counter!(ASSOCIATIONS),
            ended: ENDS.map(|(_, label)| counter!(ASSOCIATIONS_ENDED, "end" => label)),
            rejected: Rejection::ALL
                .map(|r| counter!(ASSOCIATIONS_REJECTED, "reason" => r.as_str())),
            stored: counter!(INSTANCES_STORED),
            failed: FAILURE_STATUSES
                .map(|(_, label)| counter!(INSTANCES_FAILED, "status" => label)),
            failed_other: counter!(INSTANCES_FAILED, "status" => "other"),
            received_bytes: counter!(RECEIVED_BYTES),
            receive_to_ack: histogram!(RECEIVE_TO_ACK),
            fsync_file: histogram!(FSYNC, "step" => "file"),
            fsync_directory: histogram!(FSYNC, "step" => "directory"),
            series_completed: counter!(SERIES_COMPLETED),
        }
    }
}

/// The process's recorder: its handle, or why it could not be installed.
static RECORDER: OnceLock<Result<PrometheusHandle, MetricsError>> = OnceLock::new();
/// Set once the recorder is installed; the recording functions do nothing before.
static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

fn instruments() -> Option<&'static Instruments> {
    INSTRUMENTS.get()
}

/// A node's view of the process's metrics: renders them with the gauges of its own storage.
pub struct Metrics {
    handle: PrometheusHandle,
    /// The read-only connection for the scrape-time counts, opened at the first scrape (the
    /// index must have been created and migrated by then), with the path it was opened for.
    reader: Mutex<Option<(PathBuf, StatsReader)>>,
}

impl Metrics {
    /// Installs the process-wide recorder on the first call (buckets, descriptions, the
    /// per-instance handles and an upkeep thread); later calls reuse it.
    pub fn install() -> Result<Metrics, MetricsError> {
        let handle = RECORDER.get_or_init(install_recorder).clone()?;
        Ok(Metrics {
            handle,
            reader: Mutex::new(None),
        })
    }

    /// The metrics in the Prometheus text format (version 0.0.4), after refreshing the gauges
    /// read from `store`'s index and volume. A count that cannot be read is logged and keeps
    /// its last value; the rest is rendered all the same.
    pub fn render(&self, store: &Store) -> String {
        match fs4::available_space(store.root()) {
            Ok(free) => gauge!(STORAGE_FREE).set(free as f64),
            Err(e) => {
                warn!(error = %e, "metrics: cannot read the free space of the storage volume")
            }
        }
        match self.read_index(store) {
            Ok(stats) => set_index_gauges(&stats),
            Err(e) => warn!(error = %e, "metrics: cannot read the counts of the index"),
        }
        self.handle.render()
    }

    fn read_index(&self, store: &Store) -> Result<IndexStats, crate::db::DbError> {
        if store.index().is_postgres() {
            // The server's readers hold up no writer: the pool serves the counts.
            return store.index().stats();
        }
        let path = store.index_path();
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if reader.as_ref().is_none_or(|(p, _)| *p != path) {
            *reader = Some((path.clone(), StatsReader::open(&path)?));
        }
        match reader.as_ref() {
            Some((_, r)) => r.read(),
            None => Ok(IndexStats::default()),
        }
    }
}

fn set_index_gauges(stats: &IndexStats) {
    for &(state, n) in &stats.jobs {
        gauge!(JOBS, "state" => state.as_str()).set(n as f64);
    }
    for (destination, state, n) in &stats.outbox {
        gauge!(OUTBOX, "destination" => destination.clone(), "state" => state.as_str())
            .set(*n as f64);
    }
    for (table, n) in [
        ("instances", stats.instances),
        ("series", stats.series),
        ("studies", stats.studies),
        ("patients", stats.patients),
    ] {
        gauge!(INDEX_ROWS, "table" => table).set(n as f64);
    }
}

fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
    let build = |e: metrics_exporter_prometheus::BuildError| MetricsError::Build(e.to_string());
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(RECEIVE_TO_ACK.into()), RECEIVE_TO_ACK_BUCKETS)
        .map_err(build)?
        .set_buckets_for_metric(Matcher::Full(FSYNC.into()), FSYNC_BUCKETS)
        .map_err(build)?
        .set_buckets_for_metric(Matcher::Full(JOB_DURATION.into()), JOB_BUCKETS)
        .map_err(build)?
        .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), DELIVERY_BUCKETS)
        .map_err(build)?
        .build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).map_err(|_| MetricsError::Taken)?;
    describe();
    let _ = INSTRUMENTS.set(Instruments::register());
    let upkeep = handle.clone();
    // One thread for the process, like the recorder it serves; it only folds samples.
    if let Err(e) = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        })
    {
        warn!(error = %e, "metrics: no upkeep thread; histogram samples are folded at each scrape only");
    }
    Ok(handle)
}

fn describe() {
    describe_gauge!(
        ASSOCIATIONS_ACTIVE,
        Unit::Count,
        "DICOM associations open now (accepted, not yet ended)."
    );
    describe_counter!(
        ASSOCIATIONS,
        Unit::Count,
        "DICOM associations accepted (A-ASSOCIATE-AC sent)."
    );
    describe_counter!(
        ASSOCIATIONS_ENDED,
        Unit::Count,
        "Accepted associations that ended, by how: released, aborted_by_peer, connection_closed, idle_timeout, protocol_error, send_failed, shutdown, cancelled."
    );
    describe_counter!(
        ASSOCIATIONS_REJECTED,
        Unit::Count,
        "Association requests answered A-ASSOCIATE-RJ, and connections closed before a request, by reason: called_ae, calling_ae, application_context, protocol_version, association_limit, host_limit, request_backlog (dropped unanswered), shutting_down, request_timeout, bad_request, other."
    );
    describe_counter!(
        INSTANCES_STORED,
        Unit::Count,
        "C-STORE requests answered with success (stored durably, or an identical instance received again)."
    );
    describe_counter!(
        INSTANCES_FAILED,
        Unit::Count,
        "C-STORE requests answered with a failure, by status: 0xA700 (out of resources: disk, index), 0xA900 (data set does not match the command, or conflict), 0xC000 (cannot understand), 0x0124 (not authorized), other."
    );
    describe_counter!(
        RECEIVED_BYTES,
        Unit::Bytes,
        "Data set bytes received in P-DATA (C-STORE data sets and Q/R identifiers), without PDU headers or command sets."
    );
    describe_histogram!(
        RECEIVE_TO_ACK,
        Unit::Seconds,
        "Seconds from the complete C-STORE-RQ command set (read just before the first fragment of its data set) to the success C-STORE-RSP written to the socket: the data set transfer, the header walk, fsync, rename and index row."
    );
    describe_histogram!(
        FSYNC,
        Unit::Seconds,
        "Seconds of the fsyncs of the store's durability protocol: step=file is one instance's fdatasync, step=directory one group commit's directory fsyncs."
    );
    describe_counter!(
        SERIES_COMPLETED,
        Unit::Count,
        "Series found complete (quiet time over or expected count reached) and queued for reconstruction."
    );
    describe_gauge!(
        JOBS,
        Unit::Count,
        "Reconstruction jobs in the index, by state (queued, running, done, failed); read at scrape time."
    );
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "Seconds a reconstruction job ran (claim to done or failed), by pipeline (iso, mvdiffusion) and outcome (done, failed)."
    );
    describe_gauge!(
        OUTBOX,
        Unit::Count,
        "Outbox rows in the index by destination (a [[peers]] AE title) and state (pending, sent, failed); read at scrape time."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Seconds from a result's delivery being queued to the destination confirming it, retries included, by destination."
    );
    describe_counter!(
        DELIVERY_RETRIES,
        Unit::Count,
        "Failed delivery attempts that were rescheduled for another try, by destination."
    );
    describe_gauge!(
        STORAGE_FREE,
        Unit::Bytes,
        "Bytes available to the node on the storage volume; read at scrape time."
    );
    describe_gauge!(
        INDEX_ROWS,
        Unit::Count,
        "Rows of the index tables (instances, series, studies, patients); read at scrape time."
    );
}

/// Holds one place in `m3dnode_associations_active` until dropped.
pub struct ActiveAssociation(());

impl Drop for ActiveAssociation {
    fn drop(&mut self) {
        if let Some(m) = instruments() {
            m.associations_active.decrement(1.0);
        }
    }
}

/// An association was accepted: counted, and active while the guard lives.
pub fn association_accepted() -> ActiveAssociation {
    if let Some(m) = instruments() {
        m.associations.increment(1);
        m.associations_active.increment(1.0);
    }
    ActiveAssociation(())
}

/// An accepted association ended.
pub fn association_ended(end: AssociationEnd) {
    if let Some(m) = instruments()
        && let Some(i) = ENDS.iter().position(|(e, _)| *e == end)
    {
        m.ended[i].increment(1);
    }
}

/// An association request or a connection was turned away.
pub fn association_rejected(why: Rejection) {
    if let Some(m) = instruments()
        && let Some(i) = Rejection::ALL.iter().position(|r| *r == why)
    {
        m.rejected[i].increment(1);
    }
}

/// Data set bytes arrived.
#[inline]
pub fn received_bytes(n: usize) {
    if let Some(m) = instruments() {
        m.received_bytes.increment(n as u64);
    }
}

/// A C-STORE was answered with success; `command_at` is when its command set was complete.
#[inline]
pub fn instance_stored(command_at: Instant) {
    if let Some(m) = instruments() {
        m.stored.increment(1);
        m.receive_to_ack.record(command_at.elapsed());
    }
}

/// A C-STORE was answered with the failure `status`.
pub fn instance_failed(code: u16) {
    if let Some(m) = instruments() {
        match FAILURE_STATUSES.iter().position(|(s, _)| *s == code) {
            Some(i) => m.failed[i].increment(1),
            None => m.failed_other.increment(1),
        }
    }
}

/// One instance's file fdatasync took `took`.
#[inline]
pub fn fsync_file(took: Duration) {
    if let Some(m) = instruments() {
        m.fsync_file.record(took);
    }
}

/// One group commit's directory fsyncs took `took`.
#[inline]
pub fn fsync_directories(took: Duration) {
    if let Some(m) = instruments() {
        m.fsync_directory.record(took);
    }
}

/// A series was complete and its job queued.
pub fn series_completed() {
    if let Some(m) = instruments() {
        m.series_completed.increment(1);
    }
}

/// A job ran for `took` in `pipeline` (`iso`, `mvdiffusion`) and ended done (`ok`) or failed.
pub fn job_finished(pipeline: &'static str, ok: bool, took: Duration) {
    if instruments().is_some() {
        let outcome = if ok { "done" } else { "failed" };
        histogram!(JOB_DURATION, "pipeline" => pipeline, "outcome" => outcome).record(took);
    }
}

/// A delivery to `destination` (a `[[peers]]` AE title) was confirmed; it was queued at
/// `queued_at` (Unix seconds).
pub fn delivery_sent(destination: &str, queued_at: f64) {
    if instruments().is_some() {
        let seconds = (crate::db::now() - queued_at).max(0.0);
        histogram!(DELIVERY_LATENCY, "destination" => destination.to_string()).record(seconds);
    }
}

/// A failed delivery attempt to `destination` was rescheduled.
pub fn delivery_retried(destination: &str) {
    if instruments().is_some() {
        counter!(DELIVERY_RETRIES, "destination" => destination.to_string()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::{AssociationRJ, AssociationRJResult};

    fn rj(source: AssociationRJSource) -> Pdu {
        Pdu::AssociationRJ(AssociationRJ {
            result: AssociationRJResult::Permanent,
            source,
        })
    }

    /// The rejections the negotiation and the accept loop send map to their own labels,
    /// each label used once, so a dashboard can tell a misconfigured sender from a full node.
    #[test]
    fn each_rejection_has_its_own_label() {
        use crate::net::accept;
        assert_eq!(
            Rejection::of(&rj(AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized
            ))),
            Rejection::CalledAe
        );
        assert_eq!(
            Rejection::of(&rj(AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CallingAETitleNotRecognized
            ))),
            Rejection::CallingAe
        );
        assert_eq!(
            Rejection::of(&rj(AssociationRJSource::ServiceProviderASCE(
                AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported
            ))),
            Rejection::ProtocolVersion
        );
        assert_eq!(
            Rejection::of(&accept::reject_local_limit()),
            Rejection::AssociationLimit
        );
        assert_eq!(
            Rejection::of(&accept::reject_congestion()),
            Rejection::ShuttingDown
        );
        assert_eq!(Rejection::of(&Pdu::ReleaseRP), Rejection::Other);
        let mut labels: Vec<&str> = Rejection::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Rejection::ALL.len());
        let mut ends: Vec<&str> = ENDS.iter().map(|(_, l)| *l).collect();
        ends.sort();
        ends.dedup();
        assert_eq!(ends.len(), ENDS.len());
    }

    /// The HTTP side calls `render` from its handlers, on any thread.
    #[test]
    fn metrics_can_be_shared_across_threads() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<Metrics>();
    }

    /// Bucket bounds must rise strictly, or the exporter's cumulative counts are wrong.
    #[test]
    fn buckets_rise() {
        for b in [
            RECEIVE_TO_ACK_BUCKETS,
            FSYNC_BUCKETS,
            JOB_BUCKETS,
            DELIVERY_BUCKETS,
        ] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        }
    }
}
