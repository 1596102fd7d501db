//! The audit trail (IHE ATNA; DICOM PS3.15 A.5 message format, A.6 transport).
//!
//! Each [`Event`] becomes a DICOM audit message ([`to_xml`]) on one line of a local file (mode
//! 0600: it holds patient IDs and names, the only place the node writes them outside the stored
//! objects) and, when `[audit] syslog` names a repository, an RFC 5424 message over TLS
//! (RFC 5425). [`Auditor::record`] never waits for either: it formats, queues and returns; a full
//! queue drops the message with a warning and a count rather than slowing an association down.

mod file;
mod syslog;
mod xml;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

pub use xml::to_xml;

/// `[audit]`: where the audit trail goes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Record audit messages (default true).
    pub enabled: bool,
    /// The audit file; empty (default) means `<node.storage>/audit/audit.log`. A relative path
    /// is relative to the working directory.
    pub file: PathBuf,
    /// `host:port` of a syslog-over-TLS receiver (RFC 5425, usually port 6514); empty (default)
    /// sends nothing. Needs the node's TLS client configuration (trusted CAs, node certificate).
    pub syslog: String,
    /// AuditEnterpriseSiteID of every message; empty (default) leaves it out.
    pub enterprise_site_id: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            file: PathBuf::new(),
            syslog: String::new(),
            enterprise_site_id: String::new(),
        }
    }
}

impl AuditConfig {
    /// Checks what serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !self.syslog.is_empty() {
            crate::net::settings::parse_host_port(&self.syslog).map_err(|m| {
                (
                    "audit.syslog".to_string(),
                    format!("{m} (e.g. audit.example.org:6514)"),
                )
            })?;
        }
        if self.enterprise_site_id.chars().any(char::is_control) {
            return Err((
                "audit.enterprise_site_id".into(),
                "must not contain control characters".into(),
            ));
        }
        if !self.file.as_os_str().is_empty() && self.file.file_name().is_none() {
            return Err((
                "audit.file".into(),
                format!("`{}` does not name a file", self.file.display()),
            ));
        }
        Ok(())
    }
}

/// Which way instances went, seen from the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The peer sent them to the node (C-STORE SCP): EventActionCode C.
    Received,
    /// The node sent them (delivery, C-MOVE/C-GET sub-operations): EventActionCode R.
    Sent,
}

/// A remote application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its AE title (empty when not known, e.g. a TLS handshake that failed).
    pub ae_title: String,
    /// IP address or host name, no port: the NetworkAccessPointID.
    pub host: String,
}

/// What of one study an event involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyInstances {
    /// Study Instance UID.
    pub study_uid: String,
    /// Patient ID; with it the message names the patient (PHI).
    pub patient_id: Option<String>,
    /// Patient's Name as stored.
    pub patient_name: Option<String>,
    /// (SOP Class UID, number of instances).
    pub sop_classes: Vec<(String, usize)>,
}

/// Instances counted per study as they are transferred, for one
/// [`Event::InstancesTransferred`] at the end of an association or a retrieve. Bounded by
/// what it counts: one entry per study and SOP class, not per instance.
#[derive(Debug, Default)]
pub struct StudyTally(std::collections::BTreeMap<String, StudyInstances>);

impl StudyTally {
    /// Counts one instance of `sop_class` in `study_uid`; the patient of the first instance
    /// of a study stands for the study.
    pub fn add(
        &mut self,
        study_uid: &str,
        patient_id: Option<&str>,
        patient_name: Option<&str>,
        sop_class: &str,
    ) {
        let study = self
            .0
            .entry(study_uid.to_string())
            .or_insert_with(|| StudyInstances {
                study_uid: study_uid.to_string(),
                patient_id: patient_id.map(str::to_string),
                patient_name: patient_name.map(str::to_string),
                sop_classes: Vec::new(),
            });
        match study.sop_classes.iter_mut().find(|(c, _)| c == sop_class) {
            Some((_, n)) => *n += 1,
            None => study.sop_classes.push((sop_class.to_string(), 1)),
        }
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The studies, in UID order.
    pub fn into_studies(self) -> Vec<StudyInstances> {
        self.0.into_values().collect()
    }
}

/// The studies of stored Part 10 files, read from their headers (a few KB each): what the
/// node sends is described in its audit messages by what the files hold. A file whose
/// header cannot be read is left out (its failure is reported by the sending itself).
pub fn tally_files<'a>(paths: impl IntoIterator<Item = &'a Path>) -> StudyTally {
    let mut tally = StudyTally::default();
    for path in paths {
        if let Ok((h, _)) = crate::store::header::scan_part10(path) {
            tally.add(
                &h.study_instance_uid,
                h.query.patient_id.as_deref(),
                h.query.patient_name.as_deref(),
                &h.sop_class_uid,
            );
        }
    }
    tally
}

/// The host part of a `host:port` address, for [`Peer::host`].
pub fn host_of(address: &str) -> String {
    crate::net::settings::parse_host_port(address)
        .map(|(host, _)| host)
        .unwrap_or_else(|_| address.to_string())
}

/// EventOutcomeIndicator 0, 4 or 8 with the EventOutcomeDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 0.
    Success,
    /// 4, with what went wrong.
    MinorFailure(String),
    /// 8, with what went wrong.
    SeriousFailure(String),
}

/// What kind of security alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// Node Authentication (110126): TLS handshake failures, AE titles refused.
    NodeAuthentication,
    /// Use of Restricted Function (110132): a service a peer may not use.
    UnauthorizedUse,
}

/// An auditable event (PS3.15 A.5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Application Activity (110100), Application Start (110120).
    ApplicationStart,
    /// Application Activity (110100), Application Stop (110121).
    ApplicationStop,
    /// User Authentication (110114), Login (110122): the calling AE authenticated.
    AssociationAccepted {
        /// Where it came from.
        peer: Peer,
        /// Calling AE title.
        calling_ae: String,
        /// Called AE title.
        called_ae: String,
        /// Whether the association ran over TLS.
        tls: bool,
    },
    /// Security Alert (110113), Node Authentication (110126), outcome 4.
    AssociationRejected {
        /// Where it came from.
        peer: Peer,
        /// Calling AE title.
        calling_ae: String,
        /// Called AE title.
        called_ae: String,
        /// Why it was rejected.
        reason: String,
    },
    /// TLS handshake failures, AE titles refused, use of a service a peer may not use.
    SecurityAlert {
        /// Who.
        peer: Peer,
        /// Node Authentication or Use of Restricted Function.
        kind: AlertKind,
        /// What happened (the Alert Description).
        detail: String,
    },
    /// DICOM Instances Transferred (110104), once per association and direction.
    InstancesTransferred {
        /// Received (C) or sent (R).
        direction: Direction,
        /// The other side.
        remote: Peer,
        /// The AE title the node acted as.
        local_ae: String,
        /// What was transferred, per study.
        studies: Vec<StudyInstances>,
        /// How it went.
        outcome: Outcome,
    },
    /// Begin Transferring DICOM Instances (110102).
    BeginTransferring {
        /// Where they go.
        remote: Peer,
        /// The AE title the node acts as.
        local_ae: String,
        /// What is to be sent, per study.
        studies: Vec<StudyInstances>,
    },
    /// Query (110112).
    Query {
        /// Who queried.
        remote: Peer,
        /// The AE title the node answered as.
        local_ae: String,
        /// The Affected SOP Class UID of the C-FIND.
        sop_class_uid: String,
        /// The identifier data set as received.
        query: Vec<u8>,
        /// The transfer syntax `query` is encoded in (the presentation context's).
        transfer_syntax: String,
        /// How it went.
        outcome: Outcome,
    },
    /// A result leaving DICOM: a mesh downloaded over HTTP, or written by `m3dnode recon`.
    Export {
        /// Where it went: a URI (`file:///...`, `http://client/...`) or a description.
        destination: String,
        /// What left, per study.
        studies: Vec<StudyInstances>,
        /// How it went.
        outcome: Outcome,
    },
}

/// Why the audit trail cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The audit file's directory.
    #[error("audit: cannot create the directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The audit file itself.
    #[error("audit: cannot open {} for appending: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Tightening an existing file to 0600.
    #[error("audit: {} has permissions looser than 0600 and cannot be changed: {source}", path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `audit.syslog` is not `host:port`.
    #[error("configuration key `audit.syslog`: {0}")]
    Syslog(String),
    /// `audit.syslog` is set but there is no TLS client configuration to send with.
    #[error(
        "configuration key `audit.syslog` is set but the node has no TLS client configuration (syslog is sent over TLS only, RFC 5425): configure [tls] or leave audit.syslog empty"
    )]
    NoTls,
    /// `audit.syslog` is set but start was not called on a tokio runtime.
    #[error("configuration key `audit.syslog`: the syslog sender needs a tokio runtime ({0})")]
    NoRuntime(String),
    /// The writer thread.
    #[error("audit: cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

/// Messages waiting for the file writer; past this they are dropped (and counted).
const FILE_QUEUE: usize = 10_000;
/// How long [`Auditor::close`] waits for the file's fsync.
const FILE_FLUSH_WAIT: Duration = Duration::from_secs(10);
/// How long [`Auditor::close`] gives the syslog sender.
const SYSLOG_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Records audit events. Cheap to clone; [`Auditor::disabled`] records nothing.
#[derive(Clone)]
pub struct Auditor {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    node_ae: String,
    site: String,
    path: PathBuf,
    file_tx: SyncSender<file::FileMsg>,
    file_dropped: AtomicU64,
    syslog: Option<SyslogSender>,
}

struct SyslogSender {
    tx: tokio::sync::mpsc::Sender<syslog::SyslogMsg>,
    dropped: AtomicU64,
    hostname: String,
    pid: u32,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("file", &self.file())
            .field(
                "syslog",
                &self.inner.as_ref().is_some_and(|i| i.syslog.is_some()),
            )
            .finish()
    }
}

impl Auditor {
    /// Opens the file (created 0600, directories 0700, appended with O_APPEND; an existing file
    /// with looser permissions is tightened to 0600 and that is logged) and starts the writer
    /// thread and, with `syslog`, a syslog sender on the current tokio runtime.
    /// `node_ae`: AuditSourceID and the node's participant UserID; `storage`: node.storage;
    /// `tls`: the node's TLS client configuration (trusted CAs + node certificate), required when
    /// `syslog` is set (error otherwise). With `enabled = false` it is [`Auditor::disabled`].
    pub fn start(
        config: &AuditConfig,
        node_ae: &str,
        storage: &Path,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Auditor, AuditError> {
        if !config.enabled {
            return Ok(Auditor::disabled());
        }
        // Check the syslog side before creating anything.
        let syslog_target = if config.syslog.is_empty() {
            None
        } else {
            let (host, port) = crate::net::settings::parse_host_port(&config.syslog)
                .map_err(AuditError::Syslog)?;
            let tls = tls.ok_or(AuditError::NoTls)?;
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|e| AuditError::NoRuntime(e.to_string()))?;
            Some((host, port, tls, runtime))
        };
        let path = if config.file.as_os_str().is_empty() {
            storage.join("audit").join("audit.log")
        } else {
            config.file.clone()
        };
        let f = file::open(&path)?;
        let (file_tx, file_rx) = std_mpsc::sync_channel(FILE_QUEUE);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("m3dnode-audit".into())
            .spawn(move || file::run(f, file_rx, shown))
            .map_err(AuditError::Thread)?;
        let syslog = syslog_target.map(|(host, port, tls, runtime)| {
            let (tx, rx) = tokio::sync::mpsc::channel(syslog::QUEUE);
            runtime.spawn(syslog::run(rx, host, port, tls));
            SyslogSender {
                tx,
                dropped: AtomicU64::new(0),
                hostname: syslog::hostname(),
                pid: std::process::id(),
            }
        });
        tracing::info!(path = %path.display(), syslog = %config.syslog, "audit trail started");
        Ok(Auditor {
            inner: Some(Arc::new(Inner {
                node_ae: node_ae.to_string(),
                site: config.enterprise_site_id.clone(),
                path,
                file_tx,
                file_dropped: AtomicU64::new(0),
                syslog,
            })),
        })
    }

    /// An auditor that records nothing (`enabled = false`, and tests/benches).
    pub fn disabled() -> Auditor {
        Auditor { inner: None }
    }

    /// Never blocks on I/O: queues the message (bounded queue; on overflow a warn! log line and
    /// the drop is counted, never a panic). Timestamps the event when called.
    pub fn record(&self, event: Event) {
        let Some(inner) = &self.inner else { return };
        let at = SystemTime::now();
        let xml = to_xml(&event, &inner.node_ae, &inner.site, at);
        if let Some(s) = &inner.syslog {
            let frame = syslog::frame(&xml, at, &s.hostname, s.pid);
            if s.tx.try_send(syslog::SyslogMsg::Frame(frame)).is_err() {
                let n = s.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(1000) {
                    tracing::warn!(
                        dropped = n,
                        "audit syslog: queue full or sender gone; message not sent (it is in the audit file)"
                    );
                }
            }
        }
        let mut line = xml;
        line.push('\n');
        match inner.file_tx.try_send(file::FileMsg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = inner.file_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(1000) {
                    tracing::warn!(
                        dropped = n,
                        path = %inner.path.display(),
                        "audit file: queue full; audit message dropped"
                    );
                }
            }
        }
    }

    /// Flushes and fsyncs the file, and gives the syslog sender a moment (<= 2 s) to send what is
    /// queued. Called once at node shutdown after ApplicationStop. It blocks: call it from
    /// synchronous code or `spawn_blocking` (on a current-thread runtime the syslog sender cannot
    /// run while it waits, and it gives up after 2 s).
    pub fn close(&self) {
        let Some(inner) = &self.inner else { return };
        let (reply, answer) = std_mpsc::channel();
        // A blocking send: the flush must follow what is queued, and the writer drains the queue.
        if inner.file_tx.send(file::FileMsg::Flush(reply)).is_ok() {
            match answer.recv_timeout(FILE_FLUSH_WAIT) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(path = %inner.path.display(), error = %e, "audit file: final flush failed")
                }
                Err(_) => {
                    tracing::error!(path = %inner.path.display(), "audit file: final flush did not finish in time")
                }
            }
        }
        if let Some(s) = &inner.syslog {
            let deadline = Instant::now() + SYSLOG_FLUSH_WAIT;
            let (reply, answer) = std_mpsc::channel();
            let mut msg = syslog::SyslogMsg::Flush(reply);
            loop {
                match s.tx.try_send(msg) {
                    Ok(()) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if answer.recv_timeout(left).is_err() {
                            tracing::warn!(
                                "audit syslog: queued messages not all sent at shutdown (they are in the audit file)"
                            );
                        }
                        break;
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Full(m)) => {
                        if Instant::now() >= deadline {
                            tracing::warn!(
                                "audit syslog: queued messages not all sent at shutdown (they are in the audit file)"
                            );
                            break;
                        }
                        msg = m;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        }
    }

    /// Whether events are recorded at all: callers skip the work of describing an event
    /// (reading headers) when they are not.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Path of the audit file, if enabled.
    pub fn file(&self) -> Option<&Path> {
        self.inner.as_ref().map(|i| i.path.as_path())
    }

    /// Messages dropped because the file writer's queue was full (a slow or stuck disk).
    pub fn dropped_file(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.file_dropped.load(Ordering::Relaxed))
    }

    /// Messages not sent to syslog because its queue was full (repository unreachable).
    pub fn dropped_syslog(&self) -> u64 {
        self.inner
            .as_ref()
            .and_then(|i| i.syslog.as_ref())
            .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests;
