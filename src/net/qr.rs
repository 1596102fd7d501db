//! The Query/Retrieve SCP: C-FIND, C-MOVE and C-GET operations, each run as a task beside
//! the association's reader ([`super::scp`]).
//!
//! Why a task: a C-FIND streams pending responses and a C-MOVE/C-GET runs sub-operations for
//! minutes, while the peer may send a C-CANCEL-RQ at any time and a C-GET's C-STORE-RSPs
//! arrive on the same socket. The reader keeps reading; it hands the operation its
//! identifier once, then forwards C-CANCEL (as a flag) and C-STORE-RSPs (through a channel).
//! The operation writes through the association's [`Writer`], which keeps each message whole.
//! One operation at a time per association: asynchronous operations are not negotiated, so a
//! second request while one runs is refused (0xA700).
//!
//! What it must not do: read the socket, or hold patient data in an info-level log line.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dicom_ul::Pdu;
use dicom_ul::pdu::{PDataValueType, PresentationContextNegotiated};
use tokio::io::AsyncWriteExt;
use tokio::io::WriteHalf;

use super::tls::NetStream;
use crate::audit::{self, Direction, Event as AuditEvent, Outcome};
use tokio::sync::{Mutex, MutexGuard, mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use super::Printable;
use super::dimse::{self, Command, SubOperations, field, status};
use super::scp::ScpContext;
use super::scu::{self, AeAddress, OutgoingFile, ScuOptions, SendOutcome, StoreFailure};
use crate::query::{self, InstanceRef, Model, Query, Service};

/// A Q/R identifier larger than this is not buffered: the rest of the data set is read and
/// dropped, and the request is answered 0xA700. A 10,000-UID list is about 650 KB.
pub const MAX_IDENTIFIER: usize = 4 * 1024 * 1024;

/// The association's sending side, shared by the reader (responses to C-ECHO/C-STORE) and
/// the running operation. A message (command and data set) is written under one lock, so
/// messages never interleave on the wire.
pub struct Writer {
    half: Mutex<WriteHalf<NetStream>>,
    /// The peer's maximum PDU length (variable field).
    pub peer_max_pdu: u32,
}

impl Writer {
    /// Wraps the write half of the association's socket.
    pub fn new(half: WriteHalf<NetStream>, peer_max_pdu: u32) -> Writer {
        Writer {
            half: Mutex::new(half),
            peer_max_pdu,
        }
    }

    /// Writes already encoded PDUs as one piece.
    pub async fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.half.lock().await.write_all(bytes).await
    }

    /// Sends one message: its command set and, when given, its data set.
    pub async fn send_message(
        &self,
        pc_id: u8,
        command: &[u8],
        data: Option<&[u8]>,
    ) -> std::io::Result<()> {
        let mut out = Vec::new();
        encode_message(&mut out, pc_id, command, data, self.peer_max_pdu)?;
        self.write(&out).await
    }

    /// Sends an operation's final response, setting `done` under the writer's lock first:
    /// a requester may send its next request as soon as it reads this response, and the
    /// reader must by then see the operation as over (not refuse the request as a second
    /// concurrent one).
    pub async fn send_final(
        &self,
        pc_id: u8,
        command: &[u8],
        data: Option<&[u8]>,
        done: &AtomicBool,
    ) -> std::io::Result<()> {
        let mut out = Vec::new();
        encode_message(&mut out, pc_id, command, data, self.peer_max_pdu)?;
        let mut half = self.half.lock().await;
        done.store(true, Ordering::SeqCst);
        half.write_all(&out).await
    }

    async fn lock(&self) -> MutexGuard<'_, WriteHalf<NetStream>> {
        self.half.lock().await
    }
}

/// Encodes a message (command set, then the data set if any) as P-DATA PDUs into `out`.
fn encode_message(
    out: &mut Vec<u8>,
    pc_id: u8,
    command: &[u8],
    data: Option<&[u8]>,
    max_pdu: u32,
) -> std::io::Result<()> {
    out.reserve(command.len() + data.map_or(0, <[u8]>::len) + 64);
    let mut pdus = dimse::pdata_pdus(pc_id, PDataValueType::Command, command, max_pdu, true);
    if let Some(d) = data {
        pdus.extend(dimse::pdata_pdus(
            pc_id,
            PDataValueType::Data,
            d,
            max_pdu,
            true,
        ));
    }
    for pdu in &pdus {
        dicom_ul::write_pdu(out, pdu).map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// A Q/R request whose identifier has been read, ready to run.
pub struct Request {
    /// The presentation context it came on (a Q/R class).
    pub pc_id: u8,
    /// Its SOP class.
    pub sop_class_uid: String,
    /// Its transfer syntax (the identifier's, and the responses').
    pub transfer_syntax: String,
    /// Message ID of the request.
    pub message_id: u16,
    /// Move Destination of a C-MOVE.
    pub move_destination: Option<String>,
    /// The identifier.
    pub identifier: Vec<u8>,
}

/// What an operation shares with the association.
pub struct Env {
    /// The node.
    pub ctx: Arc<ScpContext>,
    /// Where responses and C-GET sub-operations go.
    pub writer: Arc<Writer>,
    /// The peer's AE title.
    pub calling_ae: String,
    /// The peer's address, for the audit trail.
    pub peer_ip: std::net::IpAddr,
    /// Our AE title as the peer called it.
    pub called_ae: String,
    /// Contexts the peer accepted the SCP role on (C-GET sub-operations), as negotiated.
    pub get_contexts: Vec<PresentationContextNegotiated>,
    /// Set by the reader when a C-CANCEL-RQ for this operation arrives.
    pub cancel: watch::Receiver<bool>,
    /// C-STORE-RSPs the reader received (C-GET sub-operations).
    pub store_rsp: mpsc::Receiver<Command>,
    /// Set when the final response is about to be written: from then on the operation is
    /// over as far as the requester can tell.
    pub done: Arc<AtomicBool>,
}

/// The response command field of a Q/R request field.
fn response_field(service: Service) -> u16 {
    match service {
        Service::Find => field::C_FIND_RSP,
        Service::Move => field::C_MOVE_RSP,
        Service::Get => field::C_GET_RSP,
    }
}

fn service_name(service: Service) -> &'static str {
    match service {
        Service::Find => "C-FIND",
        Service::Move => "C-MOVE",
        Service::Get => "C-GET",
    }
}

/// Runs one operation to its final response.
pub async fn run(request: Request, env: Env) {
    let Some((model, service)) = query::sop_class(&request.sop_class_uid) else {
        return;
    };
    let span = info_span!(
        "qr",
        op = service_name(service),
        sop_class = %super::uid_name(&request.sop_class_uid),
        message_id = request.message_id,
        level = tracing::field::Empty,
    );
    let mut op = Operation {
        request,
        env,
        model,
        service,
        started: Instant::now(),
        aborted: false,
    };
    async move {
        match service {
            Service::Find => op.find().await,
            Service::Move | Service::Get => op.retrieve().await,
        }
    }
    .instrument(span)
    .await
}

struct Operation {
    request: Request,
    env: Env,
    model: Model,
    service: Service,
    started: Instant,
    /// The association was aborted (a C-GET sub-operation broke it): no final response.
    aborted: bool,
}

/// How sub-operations went.
#[derive(Default)]
struct Tally {
    counts: SubOperations,
    failed_uids: Vec<String>,
}

impl Tally {
    fn record(&mut self, uid: &str, code: Option<u16>) {
        self.counts.remaining = self.counts.remaining.saturating_sub(1);
        match code {
            Some(status::SUCCESS) => self.counts.completed += 1,
            Some(c) if is_warning(c) => self.counts.warning += 1,
            _ => {
                self.counts.failed += 1;
                self.failed_uids.push(uid.to_string());
            }
        }
    }
}

/// C-STORE warning statuses (PS3.4 B.2.3): coercion, elements discarded, data set mismatch.
fn is_warning(code: u16) -> bool {
    matches!(code, 0x0001 | 0x0107 | 0x0116) || (0xB000..=0xBFFF).contains(&code)
}

fn count(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl Operation {
    fn cancelled(&self) -> bool {
        *self.env.cancel.borrow()
    }

    async fn respond(
        &self,
        code: u16,
        identifier: Option<&[u8]>,
        counts: Option<SubOperations>,
        comment: Option<&str>,
    ) -> bool {
        let cmd = dimse::qr_rsp(
            response_field(self.service),
            self.request.message_id,
            &self.request.sop_class_uid,
            code,
            identifier.is_some(),
            counts,
            comment,
        )
        .encode();
        let writer = &self.env.writer;
        let sent = if code == status::PENDING {
            writer
                .send_message(self.request.pc_id, &cmd, identifier)
                .await
        } else {
            writer
                .send_final(self.request.pc_id, &cmd, identifier, &self.env.done)
                .await
        };
        match sent {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "sending a response failed; operation ended");
                false
            }
        }
    }

    /// Answers with a failure and logs why.
    async fn fail(&self, code: u16, comment: &str) {
        warn!(
            status = format_args!("{code:#06X}"),
            reason = %Printable(comment),
            calling_ae = %Printable(&self.env.calling_ae),
            "{} refused",
            service_name(self.service)
        );
        self.respond(code, None, None, Some(comment)).await;
    }

    fn parse(&self) -> Result<Query, query::QueryError> {
        Query::parse(
            self.model,
            self.service,
            &self.request.identifier,
            &self.request.transfer_syntax,
        )
    }

    /// The requester, as the audit trail names it.
    fn requester(&self) -> audit::Peer {
        audit::Peer {
            ae_title: self.env.calling_ae.clone(),
            host: self.env.peer_ip.to_string(),
        }
    }

    async fn find(&mut self) {
        let parsed = self.parse();
        self.env.ctx.audit.record(AuditEvent::Query {
            remote: self.requester(),
            local_ae: self.env.called_ae.clone(),
            sop_class_uid: self.request.sop_class_uid.clone(),
            query: self.request.identifier.clone(),
            transfer_syntax: self.request.transfer_syntax.clone(),
            outcome: match &parsed {
                Ok(_) => Outcome::Success,
                Err(e) => Outcome::MinorFailure(e.to_string()),
            },
        });
        let q = match parsed {
            Ok(q) => q,
            Err(e) => return self.fail(e.status(), &e.to_string()).await,
        };
        tracing::Span::current().record("level", tracing::field::debug(q.level()));
        let limit = self.env.ctx.config.query.max_results;
        let store = self.env.ctx.store.clone();
        let ts = self.request.transfer_syntax.clone();
        let job = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::IndexError>(store.index().find(&q, limit, &ts))
        });
        let mut cancel = self.env.cancel.clone();
        let found = tokio::select! {
            r = job => r,
            _ = async { cancel.wait_for(|c| *c).await.is_ok() } => {
                // The query still runs to its end on its thread; nobody waits for it.
                info!(matches = 0, ms = self.ms(), "C-FIND cancelled before the first match");
                self.respond(status::CANCEL, None, None, None).await;
                return;
            }
        };
        let found = match flatten(found) {
            Ok(found) => found,
            Err((code, comment)) => return self.fail(code, &comment).await,
        };
        let mut sent = 0usize;
        for m in &found.matches {
            if self.cancelled() {
                info!(matches = sent, ms = self.ms(), "C-FIND cancelled");
                self.respond(status::CANCEL, None, None, None).await;
                return;
            }
            if !self.respond(status::PENDING, Some(m), None, None).await {
                return;
            }
            sent += 1;
        }
        if self.cancelled() {
            info!(matches = sent, ms = self.ms(), "C-FIND cancelled");
            self.respond(status::CANCEL, None, None, None).await;
        } else if found.truncated {
            let comment = format!("more than {limit} matches; narrow the query");
            info!(
                matches = sent,
                limit,
                ms = self.ms(),
                "C-FIND stopped at [query] max_results"
            );
            self.respond(status::OUT_OF_RESOURCES, None, None, Some(&comment))
                .await;
        } else {
            info!(matches = sent, ms = self.ms(), "C-FIND done");
            self.respond(status::SUCCESS, None, None, None).await;
        }
    }

    fn ms(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    /// C-MOVE and C-GET: what to send, then the sub-operations.
    async fn retrieve(&mut self) {
        let config = self.env.ctx.config.clone();
        let destination = if self.service == Service::Move {
            let dest = self.request.move_destination.clone().unwrap_or_default();
            if dest.is_empty() {
                return self
                    .fail(
                        status::MOVE_DESTINATION_UNKNOWN,
                        "C-MOVE-RQ without a Move Destination",
                    )
                    .await;
            }
            if dest == config.node.ae_title.trim() {
                return self
                    .fail(
                        status::MOVE_DESTINATION_UNKNOWN,
                        &format!(
                            "Move Destination {dest} is this node itself: it already holds the instances"
                        ),
                    )
                    .await;
            }
            match config.peer(&dest) {
                Some(peer) => Some(AeAddress {
                    ae_title: peer.ae_title.clone(),
                    address: peer.address.clone(),
                    tls: peer.tls,
                }),
                None => {
                    return self
                        .fail(
                            status::MOVE_DESTINATION_UNKNOWN,
                            &format!("Move Destination {dest} is not in this node's [[peers]]"),
                        )
                        .await;
                }
            }
        } else {
            None
        };
        let q = match self.parse() {
            Ok(q) => q,
            Err(e) => return self.fail(e.status(), &e.to_string()).await,
        };
        tracing::Span::current().record("level", tracing::field::debug(q.level()));
        let store = self.env.ctx.store.clone();
        let job = tokio::task::spawn_blocking(move || {
            let refs = store.index().retrieve_refs(&q);
            Ok::<_, crate::store::IndexError>(refs.map(|refs| open_files(store.root(), refs)))
        });
        let files = match flatten(job.await) {
            Ok(files) => files,
            Err((code, comment)) => return self.fail(code, &comment).await,
        };
        let mut tally = Tally::default();
        tally.counts.remaining = count(files.len());
        let mut sendable = Vec::with_capacity(files.len());
        for (uid, file) in files {
            match file {
                Ok(f) => sendable.push(f),
                Err(reason) => {
                    warn!(sop_instance_uid = %Printable(&uid), reason = %Printable(&reason), "sub-operation failed: stored file unreadable");
                    tally.record(&uid, None);
                }
            }
        }
        // The receiving side: the Move Destination, or the requester itself for C-GET.
        let receiver = match &destination {
            Some(to) => audit::Peer {
                ae_title: to.ae_title.clone(),
                host: audit::host_of(&to.address),
            },
            None => self.requester(),
        };
        let audit = self.env.ctx.audit.clone();
        // The headers are read off the runtime's threads (a retrieve may hold thousands).
        let studies_of = |paths: Vec<std::path::PathBuf>| async move {
            tokio::task::spawn_blocking(move || {
                audit::tally_files(paths.iter().map(|p| p.as_path())).into_studies()
            })
            .await
            .unwrap_or_default()
        };
        if audit.is_enabled() {
            audit.record(AuditEvent::BeginTransferring {
                remote: receiver.clone(),
                local_ae: self.env.called_ae.clone(),
                studies: studies_of(sendable.iter().map(|f| f.path.clone()).collect()).await,
            });
        }
        let outcome = match destination {
            Some(to) => self.move_to(&to, &sendable, &mut tally).await,
            None => self.get(&sendable, &mut tally).await,
        };
        // What was attempted when the association broke; otherwise what was not refused.
        let failed: std::collections::HashSet<&str> =
            tally.failed_uids.iter().map(String::as_str).collect();
        let sent: Vec<std::path::PathBuf> = sendable
            .iter()
            .filter(|f| outcome.is_err() || !failed.contains(f.sop_instance_uid.as_str()))
            .map(|f| f.path.clone())
            .collect();
        let c = &tally.counts;
        let studies = match audit.is_enabled() {
            true => studies_of(sent).await,
            false => Vec::new(),
        };
        audit.record(AuditEvent::InstancesTransferred {
            direction: Direction::Sent,
            remote: receiver,
            local_ae: self.env.called_ae.clone(),
            studies,
            outcome: match &outcome {
                Err(why) => Outcome::SeriousFailure(why.clone()),
                Ok(()) if c.failed > 0 || c.remaining > 0 => Outcome::MinorFailure(format!(
                    "{} failed, {} not attempted",
                    c.failed, c.remaining
                )),
                Ok(()) => Outcome::Success,
            },
        });
        self.finish(outcome, tally, sendable.len()).await;
    }

    /// The sub-operations of a C-MOVE: one association to the destination with the node's
    /// SCU. Err: no association could be made (the message says why).
    async fn move_to(
        &self,
        to: &AeAddress,
        files: &[OutgoingFile],
        tally: &mut Tally,
    ) -> Result<(), String> {
        if files.is_empty() {
            return Ok(());
        }
        let config = &self.env.ctx.config;
        let opts = ScuOptions {
            calling_ae: config.node.ae_title.clone(),
            timeout: Duration::from_secs(config.sub_operation_timeout_seconds),
            max_pdu_length: config.node.max_pdu_length,
            tls: self.env.ctx.tls.as_ref().map(|t| t.client_config()),
        };
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<(usize, Option<u16>)>();
        let cancel = self.env.cancel.clone();
        let originator = self.env.calling_ae.clone();
        let message_id = self.request.message_id;
        let send = async move {
            let mut after_each = |i: usize, o: &SendOutcome| {
                let code = o.result.as_ref().ok().copied();
                if code.is_none()
                    && let Err(reason) = &o.result
                {
                    // A file that could not be sent (unreadable, undecodable) is worth a
                    // warning: the requester only sees it in the Failed SOP Instance UID List.
                    warn!(
                        sop_instance_uid = files.get(i).map_or("", |f| f.sop_instance_uid.as_str()),
                        reason = %Printable(reason),
                        "C-MOVE sub-operation failed"
                    );
                }
                let _ = progress_tx.send((i, code));
                !*cancel.borrow()
            };
            let mut moved = scu::MoveSubOperations {
                originator_ae: &originator,
                originator_message_id: message_id,
                after_each: &mut after_each,
            };
            scu::send_files_moved(files, to, &opts, &mut moved).await
        };
        // Pending responses go out as the sub-operations finish, beside the sending.
        let report = async {
            let mut reported = 0usize;
            while let Some((i, code)) = progress_rx.recv().await {
                if let Some(f) = files.get(i) {
                    tally.record(&f.sop_instance_uid, code);
                }
                reported = i + 1;
                if reported < files.len() && !self.cancelled() {
                    self.respond(status::PENDING, None, Some(tally.counts), None)
                        .await;
                }
            }
            reported
        };
        let (result, reported) = tokio::join!(send, report);
        match result {
            Ok(outcomes) => {
                // Outcomes the callback did not see (the association broke mid-way).
                for (f, o) in files.iter().zip(&outcomes).skip(reported) {
                    tally.record(&f.sop_instance_uid, o.result.as_ref().ok().copied());
                }
                Ok(())
            }
            Err(e) => {
                let message = e.full_message();
                for f in &files[reported.min(files.len())..] {
                    tally.record(&f.sop_instance_uid, None);
                }
                Err(message)
            }
        }
    }

    /// The sub-operations of a C-GET: C-STORE-RQs on this association, on the contexts the
    /// requester proposed with the SCP role. Err: the association broke.
    async fn get(&mut self, files: &[OutgoingFile], tally: &mut Tally) -> Result<(), String> {
        let timeout = Duration::from_secs(self.env.ctx.config.node.idle_timeout_seconds);
        let mut reasons: HashSet<String> = HashSet::new();
        let mut message_id: u16 = 0;
        for (i, f) in files.iter().enumerate() {
            if self.cancelled() {
                break;
            }
            let Some(pc) = scu::choose_syntax(f, &self.env.get_contexts).cloned() else {
                let reason = format!(
                    "the requester offered no context with the SCP role for {} in {} or a native syntax it can be re-encoded to",
                    super::uid_name(&f.sop_class_uid),
                    super::uid_name(&f.transfer_syntax)
                );
                if reasons.insert(reason.clone()) {
                    warn!(sop_instance_uid = %f.sop_instance_uid, reason = %reason, "C-GET sub-operation failed");
                }
                tally.record(&f.sop_instance_uid, None);
                if i + 1 < files.len() {
                    self.respond(status::PENDING, None, Some(tally.counts), None)
                        .await;
                }
                continue;
            };
            message_id = message_id.wrapping_add(1).max(1);
            let mut link = GetLink {
                writer: &self.env.writer,
                guard: None,
                store_rsp: &mut self.env.store_rsp,
                timeout,
                message_id,
            };
            let result = scu::store_on(&mut link, f, &pc, message_id).await;
            drop(link);
            match result {
                Ok((code, comment)) => {
                    if code != status::SUCCESS {
                        debug!(sop_instance_uid = %f.sop_instance_uid, status = format_args!("{code:#06X}"), comment = ?comment, "C-GET sub-operation answered");
                    }
                    tally.record(&f.sop_instance_uid, Some(code));
                }
                Err(StoreFailure::File(reason)) => {
                    warn!(sop_instance_uid = %f.sop_instance_uid, reason = %Printable(&reason), "C-GET sub-operation failed");
                    tally.record(&f.sop_instance_uid, None);
                }
                Err(StoreFailure::Link(reason)) => {
                    // A C-STORE-RQ may be half on the wire (a stored file that cannot be read
                    // to its end, a requester that stopped answering): nothing more can be
                    // said on this association in order, so it is aborted.
                    warn!(
                        sop_instance_uid = %f.sop_instance_uid,
                        reason = %Printable(&reason),
                        completed = tally.counts.completed,
                        "C-GET sub-operation broke the association; aborting it"
                    );
                    let mut abort = Vec::new();
                    let pdu = super::accept::abort(
                        dicom_ul::pdu::AbortRQServiceProviderReason::ReasonNotSpecified,
                    );
                    if dicom_ul::write_pdu(&mut abort, &pdu).is_ok() {
                        let _ = self.env.writer.write(&abort).await;
                    }
                    self.aborted = true;
                    for rest in &files[i..] {
                        tally.record(&rest.sop_instance_uid, None);
                    }
                    return Err(reason);
                }
            }
            if i + 1 < files.len() && !self.cancelled() {
                self.respond(status::PENDING, None, Some(tally.counts), None)
                    .await;
            }
        }
        Ok(())
    }

    /// The final response of a C-MOVE/C-GET.
    async fn finish(&self, outcome: Result<(), String>, tally: Tally, total: usize) {
        if self.aborted {
            return;
        }
        let c = tally.counts;
        let attempted = c.completed + c.failed + c.warning;
        let (code, comment) = match &outcome {
            Err(message) if c.completed + c.warning == 0 => (
                status::SUB_OPERATIONS_IMPOSSIBLE,
                Some(format!("no sub-operation could be performed: {message}")),
            ),
            Err(message) => (
                status::SUB_OPERATIONS_FAILED,
                Some(format!("sub-operations stopped: {message}")),
            ),
            Ok(()) if self.cancelled() && c.remaining > 0 => (status::CANCEL, None),
            Ok(()) if c.failed > 0 && c.completed + c.warning == 0 => (
                status::SUB_OPERATIONS_IMPOSSIBLE,
                Some(format!("all {} sub-operations failed", c.failed)),
            ),
            Ok(()) if c.failed > 0 || c.warning > 0 => (
                status::SUB_OPERATIONS_FAILED,
                Some(format!(
                    "{} of {attempted} sub-operations failed, {} with warnings",
                    c.failed, c.warning
                )),
            ),
            Ok(()) => (status::SUCCESS, None),
        };
        // The Failed SOP Instance UID List goes with a warning or a cancel, where some
        // instances did arrive. With 0xA702 every one failed (the counts say so), and DCMTK's
        // getscu stops reading at a refusal's command, so an identifier would reach it as an
        // unexpected P-DATA during its release.
        let identifier = if tally.failed_uids.is_empty()
            || !(code == status::SUB_OPERATIONS_FAILED || code == status::CANCEL)
        {
            None
        } else {
            failed_list(&tally.failed_uids, &self.request.transfer_syntax)
        };
        let counts = SubOperations {
            remaining: if code == status::CANCEL {
                c.remaining
            } else {
                0
            },
            ..c
        };
        let what = service_name(self.service);
        let destination = self.request.move_destination.as_deref().unwrap_or("");
        if code == status::SUCCESS || code == status::CANCEL {
            info!(
                instances = total,
                completed = c.completed,
                failed = c.failed,
                warning = c.warning,
                remaining = counts.remaining,
                destination = %Printable(destination),
                ms = self.ms(),
                status = format_args!("{code:#06X}"),
                "{what} done"
            );
        } else {
            warn!(
                instances = total,
                completed = c.completed,
                failed = c.failed,
                warning = c.warning,
                destination = %Printable(destination),
                ms = self.ms(),
                status = format_args!("{code:#06X}"),
                reason = %Printable(comment.as_deref().unwrap_or("")),
                "{what} done with failures"
            );
        }
        self.respond(
            code,
            identifier.as_deref(),
            Some(counts),
            comment.as_deref(),
        )
        .await;
    }
}

/// The status and Error Comment of a query that ran on a blocking thread and failed: in
/// the query (its own status), at the index, or in the task.
fn flatten<T>(
    r: Result<
        Result<Result<T, query::QueryError>, crate::store::IndexError>,
        tokio::task::JoinError,
    >,
) -> Result<T, (u16, String)> {
    match r {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err((e.status(), e.to_string())),
        Ok(Err(e)) => Err((status::OUT_OF_RESOURCES, format!("index unavailable: {e}"))),
        Err(e) => Err((status::OUT_OF_RESOURCES, format!("query task failed: {e}"))),
    }
}

/// Opens each stored file's meta (off the runtime): the sender needs its data set offset.
#[allow(clippy::type_complexity)]
fn open_files(
    root: &std::path::Path,
    refs: Vec<InstanceRef>,
) -> Vec<(String, Result<OutgoingFile, String>)> {
    refs.into_iter()
        .map(|r| {
            let path: PathBuf = root.join(&r.path);
            let file = OutgoingFile::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    if f.sop_instance_uid == r.sop_instance_uid {
                        Ok(f)
                    } else {
                        Err(
                            "the stored file holds another SOP Instance UID than its index row"
                                .to_string(),
                        )
                    }
                });
            (r.sop_instance_uid, file)
        })
        .collect()
}

/// The identifier of a failed C-MOVE/C-GET: Failed SOP Instance UID List (0008,0058).
fn failed_list(uids: &[String], ts_uid: &str) -> Option<Vec<u8>> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry.get(ts_uid)?;
    let mut obj = dicom_object::InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        dicom_dictionary_std::tags::FAILED_SOP_INSTANCE_UID_LIST,
        VR::UI,
        PrimitiveValue::Strs(uids.iter().cloned().collect()),
    ));
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts).ok()?;
    Some(out)
}

/// The requester's association as a [`scu::StoreLink`] for C-GET sub-operations: the
/// writer's lock is held from the first PDU of a C-STORE-RQ to its last, and the response
/// comes from the reader.
struct GetLink<'a> {
    writer: &'a Writer,
    guard: Option<MutexGuard<'a, WriteHalf<NetStream>>>,
    store_rsp: &'a mut mpsc::Receiver<Command>,
    timeout: Duration,
    message_id: u16,
}

impl scu::StoreLink for GetLink<'_> {
    fn max_pdu(&self) -> u32 {
        self.writer.peer_max_pdu
    }

    async fn send(&mut self, pdu: &Pdu) -> Result<(), String> {
        if self.guard.is_none() {
            self.guard = Some(self.writer.lock().await);
        }
        let mut out = Vec::new();
        dicom_ul::write_pdu(&mut out, pdu).map_err(|e| e.to_string())?;
        match self.guard.as_mut() {
            Some(g) => g.write_all(&out).await.map_err(|e| e.to_string()),
            None => Err("no writer".into()),
        }
    }

    async fn receive_command(&mut self) -> Result<Command, String> {
        self.guard = None;
        loop {
            let rsp = tokio::time::timeout(self.timeout, self.store_rsp.recv())
                .await
                .map_err(|_| format!("no C-STORE-RSP within {} s", self.timeout.as_secs()))?
                .ok_or_else(|| "the association ended".to_string())?;
            match rsp.message_id_responded_to() {
                Ok(id) if id == self.message_id => return Ok(rsp),
                other => {
                    debug!(
                        ?other,
                        expected = self.message_id,
                        "C-STORE-RSP for another message ignored"
                    );
                }
            }
        }
    }
}
