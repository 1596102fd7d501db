//! The Storage SCP: accept loop, association policy, and the C-ECHO / C-STORE service.
//!
//! One tokio task per association. A permit from a semaphore sized `node.max_associations` is
//! taken for each connection; a connection that finds none still gets a proper answer, an
//! A-ASSOCIATE-RJ "local limit exceeded", instead of hanging in the backlog. Data sets are
//! streamed into the store as their P-DATA arrives and committed (fsync, rename, index); the
//! C-STORE-RSP is sent only after the commit returns.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_ul::Pdu;
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::association::{Association, AsyncServerAssociation, Error as UlError};
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValueType, PresentationContextResultReason, UserIdentity,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use super::dimse::{self, Command, field, status};
use super::wire::{Frame, PduReader, WireError};
use crate::config::Config;
use crate::store::{Announced, Incoming, Store, StoreError, Stored, TempFile};

/// Failures of the listener itself (single associations never end the server).
#[derive(Debug, thiserror::Error)]
pub enum ScpError {
    /// Accepting a connection failed in a way that is not per-connection.
    #[error("accepting connections on the listener: {0}")]
    Accept(#[source] std::io::Error),
}

/// Receives every instance the SCP has stored, after its success status was sent. Calls
/// come from the association tasks: implementations must return at once (queue the work).
pub trait StoreObserver: Send + Sync {
    /// Called once per successfully stored (or identically re-sent) instance.
    fn stored(&self, stored: &Stored, calling_ae: &str, called_ae: &str);

    /// Called when an association ends, with the (series, SOP instance) UIDs it newly stored.
    fn association_ended(&self, _aborted: bool, _stored: &[(String, String)]) {}
}

/// What every association handler shares.
pub struct ScpContext {
    config: Arc<Config>,
    store: Arc<Store>,
    /// Resolved addresses of peers with `check_host = true`.
    peer_hosts: HashMap<String, Vec<IpAddr>>,
    observer: Option<Arc<dyn StoreObserver>>,
}

impl ScpContext {
    /// Resolves the host of every peer that must be checked, once, at start-up.
    pub fn new(config: Arc<Config>, store: Arc<Store>) -> Result<ScpContext, String> {
        let mut peer_hosts = HashMap::new();
        for (i, peer) in config.peers.iter().enumerate() {
            if peer.check_host {
                let addrs: Vec<IpAddr> = peer
                    .address
                    .to_socket_addrs()
                    .map_err(|e| {
                        format!(
                            "configuration key `peers[{i}].address`: cannot resolve `{}`: {e}",
                            peer.address
                        )
                    })?
                    .map(|a| a.ip())
                    .collect();
                peer_hosts.insert(peer.ae_title.clone(), addrs);
            }
        }
        Ok(ScpContext {
            config,
            store,
            peer_hosts,
            observer: None,
        })
    }

    /// Adds the observer that learns of stored instances (the series tracker).
    pub fn with_observer(mut self, observer: Arc<dyn StoreObserver>) -> Self {
        self.observer = Some(observer);
        self
    }
}

/// Serves associations until `shutdown` completes, then stops accepting and gives open
/// associations `node.shutdown_grace_seconds` to finish before aborting them.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ScpContext>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ScpError> {
    size_receive_buffer(&listener, ctx.config.node.receive_buffer_kb);
    let limit = ctx.config.node.max_associations;
    let permits = Arc::new(Semaphore::new(limit));
    // Connections answered with "local limit exceeded" are bounded too, so a flood cannot
    // make the node spawn without end.
    let reject_permits = Arc::new(Semaphore::new(limit.max(8)));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) if is_per_connection(&e) => {
                        debug!(error = %e, "connection failed during accept");
                        continue;
                    }
                    Err(e) => {
                        // e.g. EMFILE: back off instead of spinning.
                        warn!(error = %e, "accept failed; retrying in 100 ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let ctx = ctx.clone();
                        let span = info_span!("association", peer = %peer, calling_ae = tracing::field::Empty, called_ae = tracing::field::Empty);
                        tasks.spawn(async move {
                            handle_connection(socket, peer, ctx).await;
                            drop(permit);
                        }.instrument(span));
                    }
                    Err(_) => match reject_permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            warn!(%peer, limit, "association rejected: local limit of concurrent associations exceeded");
                            tasks.spawn(async move {
                                reject_local_limit(socket).await;
                                drop(permit);
                            });
                        }
                        Err(_) => debug!(%peer, "dropping connection: too many pending rejections"),
                    },
                }
            }
        }
    }
    drop(listener);
    let grace = Duration::from_secs(ctx.config.node.shutdown_grace_seconds);
    if !tasks.is_empty() {
        info!(
            open = tasks.len(),
            grace_seconds = grace.as_secs(),
            "shutting down: waiting for open associations"
        );
    }
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            open = tasks.len(),
            "grace period over: aborting open associations"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// Sets the kernel receive buffer on the listener, which every accepted socket inherits
/// (`node.receive_buffer_kb`). Left to itself, Linux starts a socket at 128 KB, less than
/// one of DCMTK's 128 KB PDUs with its headers, and autotuning takes the first ~10 ms of the
/// association to grow it: a fair part of a short association, during which the sender
/// can stall in the middle of each PDU. The fixed buffer is there from the first byte.
///
/// A fixed buffer also switches autotuning off for the socket, so one that the kernel would
/// cap (net.core.rmem_max, 208 KB on a stock Debian) is not set at all: on a long-distance
/// link the capped buffer would limit throughput below what autotuning reaches.
fn size_receive_buffer(listener: &TcpListener, kb: u32) {
    if kb == 0 {
        return;
    }
    let wanted = kb as usize * 1024;
    // Try it on a scratch socket first, since the listener cannot go back to autotuning.
    let set = match listener
        .local_addr()
        .and_then(|a| granted_receive_buffer(a, wanted))
    {
        Ok(got) if got < wanted => {
            info!(
                receive_buffer_kb = kb,
                kernel_cap_kb = got / 2 / 1024,
                "net.core.rmem_max is below node.receive_buffer_kb; leaving socket buffers to kernel autotuning (raise net.core.rmem_max for the fixed buffer)"
            );
            return;
        }
        Ok(_) => socket2::SockRef::from(listener).set_recv_buffer_size(wanted),
        Err(e) => Err(e),
    };
    match set {
        Ok(()) => debug!(receive_buffer_kb = kb, "socket receive buffer set"),
        Err(e) => {
            warn!(receive_buffer_kb = kb, error = %e, "cannot size socket receive buffers; leaving them to the kernel")
        }
    }
}

/// What the kernel reports after a socket of `addr`'s family asks for `bytes` of receive
/// buffer: Linux reports twice what it grants (the other half is its bookkeeping) and grants
/// at most net.core.rmem_max.
fn granted_receive_buffer(addr: SocketAddr, bytes: usize) -> std::io::Result<usize> {
    let probe = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    probe.set_recv_buffer_size(bytes)?;
    probe.recv_buffer_size()
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

/// Reads the A-ASSOCIATE-RQ (briefly) and answers A-ASSOCIATE-RJ: transient,
/// service-provider (presentation), "local limit exceeded" (PS3.8 9.3.4).
async fn reject_local_limit(mut socket: TcpStream) {
    let mut head = [0u8; 6];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        socket.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as u64;
        tokio::io::copy(
            &mut (&mut socket).take(len.min(1 << 20)),
            &mut tokio::io::sink(),
        )
        .await
    })
    .await;
    if matches!(read, Ok(Ok(_))) && head[0] == 0x01 {
        let rj = [0x03, 0x00, 0, 0, 0, 4, 0x00, 0x02, 0x03, 0x02];
        let _ = socket.write_all(&rj).await;
        let _ = socket.flush().await;
    }
    let _ = socket.shutdown().await;
}

/// The node's AE policy, built per connection because it needs the peer's address.
struct Policy {
    ctx: Arc<ScpContext>,
    peer_ip: IpAddr,
}

impl AccessControl for Policy {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let calling = calling_ae_title.trim();
        if called_ae_title.trim() != this_ae_title.trim() {
            warn!(
                calling_ae = calling,
                called_ae = called_ae_title.trim(),
                "association rejected: called AE title not recognised"
            );
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if self.ctx.config.node.require_known_peers && self.ctx.config.peer(calling).is_none() {
            warn!(
                calling_ae = calling,
                "association rejected: calling AE title not in [[peers]]"
            );
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        if let Some(hosts) = self.ctx.peer_hosts.get(calling)
            && !hosts.contains(&self.peer_ip)
        {
            warn!(calling_ae = calling, peer_ip = %self.peer_ip, "association rejected: calling AE title used from a host other than its [[peers]] address");
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// The abstract syntaxes an A-ASSOCIATE-RQ proposes, read without consuming it (dicom-ul
/// then reads it for real), so that the SCP can accept exactly the storage SOP classes of the
/// standard dictionary that the peer asks for. `None` when the request is not readable yet.
async fn peek_proposed(socket: &TcpStream) -> Option<Vec<String>> {
    const MAX_RQ: usize = 256 * 1024;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline.into(), socket.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if n >= 6 {
            if buf[0] != 0x01 {
                return None; // not an A-ASSOCIATE-RQ: let dicom-ul answer it
            }
            let need = 6 + u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
            if need > MAX_RQ {
                return None;
            }
            if n >= need {
                return match dicom_ul::read_pdu(&buf[..need], MAX_RQ as u32, false) {
                    Ok(Some(Pdu::AssociationRQ(rq))) => Some(
                        rq.presentation_contexts
                            .into_iter()
                            .map(|pc| pc.abstract_syntax.trim_end_matches(['\0', ' ']).to_string())
                            .collect(),
                    ),
                    _ => None,
                };
            }
            if buf.len() < need {
                buf.resize(need, 0);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        // The rest of the request is in flight; peek would return at once with the same bytes.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn handle_connection(socket: TcpStream, peer: SocketAddr, ctx: Arc<ScpContext>) {
    let node = &ctx.config.node;
    let proposed = peek_proposed(&socket).await.unwrap_or_default();
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(Policy {
            ctx: ctx.clone(),
            peer_ip: peer.ip(),
        })
        .ae_title(node.ae_title.as_str())
        .max_pdu_length(node.max_pdu_length)
        .strict(true)
        .read_timeout(Duration::from_secs(node.idle_timeout_seconds))
        .with_abstract_syntax(super::VERIFICATION);
    let mut refused = Vec::new();
    for uid in &proposed {
        if super::is_storage_sop_class(uid) {
            options = options.with_abstract_syntax(uid.clone());
        } else if uid != super::VERIFICATION {
            refused.push(uid.clone());
        }
    }
    for ts in super::ACCEPTED_TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(*ts);
    }
    let assoc = match options.establish_async(socket).await {
        Ok(a) => a,
        Err(UlError::Rejected { association_rj, .. }) => {
            info!(reason = ?association_rj.source, "association rejected");
            return;
        }
        Err(e) => {
            warn!(error = %e, "association could not be established");
            return;
        }
    };
    let span = tracing::Span::current();
    span.record("calling_ae", assoc.peer_ae_title().trim());
    span.record("called_ae", assoc.called_ae_title().trim());
    for uid in &refused {
        info!(sop_class = %super::uid_name(uid), "presentation context refused: not a storage SOP class");
    }
    for pc in assoc.presentation_contexts() {
        if pc.reason == PresentationContextResultReason::TransferSyntaxesNotSupported {
            info!(sop_class = %super::uid_name(&pc.abstract_syntax), "presentation context refused: none of the proposed transfer syntaxes can be decoded by this node");
        }
    }
    let mut handler = Handler {
        calling_ae: assoc.peer_ae_title().trim().to_string(),
        assoc,
        ctx,
        stats: Stats::default(),
        new_instances: Vec::new(),
        spare: None,
    };
    let started = Instant::now();
    let end = handler.run().await;
    if let Some(observer) = &handler.ctx.observer {
        observer.association_ended(end != "released", &handler.new_instances);
    }
    let s = &handler.stats;
    info!(
        instances = s.stored,
        failed = s.failed,
        bytes = s.bytes,
        seconds = format_args!("{:.2}", started.elapsed().as_secs_f64()),
        end = end,
        "association closed"
    );
}

#[derive(Default)]
struct Stats {
    stored: u64,
    failed: u64,
    bytes: u64,
}

/// Where a C-STORE-RSP goes and what it names.
struct Reply {
    message_id: u16,
    pc_id: u8,
    sop_class_uid: String,
    sop_instance_uid: String,
}

/// A C-STORE whose data set is being received.
struct PendingStore {
    reply: Reply,
    /// `Err` once the store has failed; the rest of the data set is then discarded and the
    /// failure is reported when it ends.
    target: Result<Incoming, StoreError>,
}

struct Handler {
    assoc: AsyncServerAssociation<TcpStream>,
    ctx: Arc<ScpContext>,
    calling_ae: String,
    stats: Stats,
    /// (series, SOP instance) UIDs this association stored, for the aborted-association policy.
    new_instances: Vec<(String, String)>,
    /// A temp file made ahead for the next C-STORE.
    spare: Option<TempFile>,
}

fn multi_thread_runtime() -> bool {
    tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
}

impl Handler {
    /// Runs the association to its end; returns how it ended, for the log.
    async fn run(&mut self) -> &'static str {
        let idle = Duration::from_secs(self.ctx.config.node.idle_timeout_seconds);
        let mut reader = PduReader::new(self.assoc.acceptor_max_pdu_length());
        let mut command_bytes: Vec<u8> = Vec::new();
        let mut pending: Option<PendingStore> = None;
        loop {
            let frame =
                match tokio::time::timeout(idle, reader.next(self.assoc.inner_stream())).await {
                    Err(_) => {
                        warn!(
                            idle_seconds = idle.as_secs(),
                            "association idle too long; aborting"
                        );
                        let _ = self.assoc.send(&abort_pdu()).await;
                        return "idle timeout";
                    }
                    Ok(Err(WireError::Io(e)))
                        if e.kind() == std::io::ErrorKind::UnexpectedEof && pending.is_none() =>
                    {
                        info!("peer closed the connection without releasing the association");
                        return "connection closed";
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "association ended by a receive error; aborting");
                        return self.abort().await;
                    }
                    Ok(Ok(frame)) => frame,
                };
            match frame {
                Frame::PData(pdvs) => {
                    for pdv in pdvs {
                        let pdv = match pdv {
                            Ok(pdv) => pdv,
                            Err(e) => {
                                warn!(error = %e, "unreadable P-DATA-TF; aborting");
                                return self.abort().await;
                            }
                        };
                        if pdv.is_command {
                            if pending.is_some() {
                                warn!("command received while a data set was incomplete; aborting");
                                return self.abort().await;
                            }
                            command_bytes.extend_from_slice(pdv.data);
                            if pdv.is_last {
                                let bytes = std::mem::take(&mut command_bytes);
                                match self.command(&bytes, pdv.pc_id).await {
                                    Ok(p) => pending = p,
                                    Err(end) => return end,
                                }
                            }
                            continue;
                        }
                        let Some(p) = pending.as_mut() else {
                            warn!("data set received without a command; aborting");
                            return self.abort().await;
                        };
                        if pdv.pc_id != p.reply.pc_id {
                            warn!(
                                pc_id = pdv.pc_id,
                                expected = p.reply.pc_id,
                                "data set fragment on another presentation context than its command; aborting"
                            );
                            return self.abort().await;
                        }
                        if let Ok(incoming) = &mut p.target
                            && let Err(e) = incoming.append(pdv.data)
                        {
                            p.target = Err(StoreError::Io(e));
                        }
                        self.stats.bytes += pdv.data.len() as u64;
                        if pdv.is_last
                            && let Some(p) = pending.take()
                            && let Err(end) = self.finish_store(p).await
                        {
                            return end;
                        }
                    }
                }
                Frame::ReleaseRq => {
                    if pending.is_some() {
                        info!(
                            "release requested during a transfer; the partial instance was discarded"
                        );
                    }
                    let _ = self.assoc.send(&Pdu::ReleaseRP).await;
                    return "released";
                }
                Frame::Abort { source, reason } => {
                    if pending.is_some() {
                        info!(
                            source,
                            reason,
                            "association aborted by peer during a transfer; the partial instance was discarded"
                        );
                    } else {
                        info!(source, reason, "association aborted by peer");
                    }
                    return "aborted by peer";
                }
                Frame::Unexpected(kind) => {
                    warn!(
                        pdu_type = format_args!("{kind:#04x}"),
                        "unexpected PDU in an established association; aborting"
                    );
                    return self.abort().await;
                }
            }
        }
    }

    /// Handles a complete command set. Returns the pending store when a data set follows.
    async fn command(
        &mut self,
        bytes: &[u8],
        pc_id: u8,
    ) -> Result<Option<PendingStore>, &'static str> {
        let cmd = match Command::parse(bytes) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "unreadable command set; aborting");
                return Err(self.abort().await);
            }
        };
        let (Ok(field), Ok(message_id)) = (cmd.command_field(), cmd.message_id()) else {
            warn!("command set without Command Field or Message ID; aborting");
            return Err(self.abort().await);
        };
        let pc = self
            .assoc
            .presentation_contexts()
            .iter()
            .find(|pc| pc.id == pc_id && pc.reason == PresentationContextResultReason::Acceptance)
            .cloned();
        let Some(pc) = pc else {
            warn!(
                pc_id,
                "message on a presentation context that was not accepted; aborting"
            );
            return Err(self.abort().await);
        };
        match field {
            field::C_ECHO_RQ => {
                debug!(message_id, "C-ECHO");
                let rsp = dimse::c_echo_rsp(message_id, status::SUCCESS).encode();
                self.send_command(pc_id, &rsp).await?;
                Ok(None)
            }
            field::C_STORE_RQ => {
                let sop_class_uid = cmd.affected_sop_class_uid().unwrap_or_default();
                let sop_instance_uid = cmd.affected_sop_instance_uid().unwrap_or_default();
                let target = if sop_class_uid != pc.abstract_syntax.trim_end_matches('\0') {
                    Err(StoreError::Mismatch(format!(
                        "Affected SOP Class UID {sop_class_uid} differs from the presentation context's {}",
                        pc.abstract_syntax
                    )))
                } else {
                    self.ctx.store.begin(
                        &Announced {
                            sop_class_uid: sop_class_uid.clone(),
                            sop_instance_uid: sop_instance_uid.clone(),
                            transfer_syntax: pc.transfer_syntax.trim_end_matches('\0').to_string(),
                            calling_ae: self.calling_ae.clone(),
                        },
                        self.spare.take(),
                    )
                };
                let reply = Reply {
                    message_id,
                    pc_id,
                    sop_class_uid,
                    sop_instance_uid,
                };
                if cmd.has_data_set().unwrap_or(true) {
                    Ok(Some(PendingStore { reply, target }))
                } else {
                    self.respond_store(
                        &reply,
                        status::CANNOT_UNDERSTAND,
                        Some("C-STORE-RQ announces no data set"),
                    )
                    .await?;
                    Ok(None)
                }
            }
            other => {
                warn!(
                    command_field = format_args!("{other:#06x}"),
                    "unsupported DIMSE command"
                );
                let rsp = dimse::failure_rsp(
                    other,
                    message_id,
                    cmd.affected_sop_class_uid().as_deref(),
                    status::UNRECOGNIZED_OPERATION,
                )
                .encode();
                self.send_command(pc_id, &rsp).await?;
                Ok(None)
            }
        }
    }

    async fn finish_store(&mut self, pending: PendingStore) -> Result<(), &'static str> {
        let PendingStore { reply: p, target } = pending;
        let started = std::time::Instant::now();
        let result = match target {
            Err(e) => Err(e),
            Ok(incoming) => {
                let store = self.ctx.store.clone();
                if !store.syncs() {
                    // Without fsync a commit is a rename and one index row, about 0.1 ms:
                    // less than handing this worker's other tasks to another thread
                    // (block_in_place) costs, so it runs on the worker itself.
                    store.commit(incoming)
                } else if multi_thread_runtime() {
                    // The commit blocks (fsync) but this task has nothing else to do until it
                    // returns: run it here and let tokio move other tasks off this worker,
                    // rather than pay two thread hand-offs per instance.
                    tokio::task::block_in_place(|| store.commit(incoming))
                } else {
                    match tokio::task::spawn_blocking(move || store.commit(incoming)).await {
                        Ok(r) => r,
                        Err(e) => Err(StoreError::Io(std::io::Error::other(format!(
                            "store task failed: {e}"
                        )))),
                    }
                }
            }
        };
        match result {
            Ok(stored) => {
                debug!(
                    sop_instance_uid = %stored.header.sop_instance_uid,
                    series_instance_uid = %stored.header.series_instance_uid,
                    bytes = stored.size,
                    duplicate = stored.duplicate,
                    commit_ms = started.elapsed().as_secs_f64() * 1e3,
                    "stored"
                );
                self.stats.stored += 1;
                self.respond_store(&p, status::SUCCESS, None).await?;
                // While the sender reads its next file, make the temp file for it.
                self.spare = self.ctx.store.temp_file().ok();
                if let Some(observer) = &self.ctx.observer {
                    observer.stored(&stored, &self.calling_ae, &self.ctx.config.node.ae_title);
                }
                if !stored.duplicate {
                    self.new_instances.push((
                        stored.header.series_instance_uid.clone(),
                        stored.header.sop_instance_uid.clone(),
                    ));
                }
            }
            Err(e) => {
                let code = match &e {
                    StoreError::LowDiskSpace { .. } | StoreError::Io(_) | StoreError::Index(_) => {
                        status::OUT_OF_RESOURCES
                    }
                    StoreError::Mismatch(_) | StoreError::Conflict(_) => status::DATA_SET_MISMATCH,
                    StoreError::Unreadable(_) => status::CANNOT_UNDERSTAND,
                };
                warn!(
                    sop_instance_uid = %p.sop_instance_uid,
                    status = format_args!("{code:#06X}"),
                    error = %e,
                    "C-STORE failed"
                );
                self.stats.failed += 1;
                self.respond_store(&p, code, Some(&e.to_string())).await?;
            }
        }
        Ok(())
    }

    async fn respond_store(
        &mut self,
        p: &Reply,
        code: u16,
        comment: Option<&str>,
    ) -> Result<(), &'static str> {
        let rsp = dimse::c_store_rsp(
            p.message_id,
            &p.sop_class_uid,
            &p.sop_instance_uid,
            code,
            comment,
        )
        .encode();
        self.send_command(p.pc_id, &rsp).await
    }

    /// Sends an A-ABORT (the reason was logged by the caller); returns how the association
    /// ended, for the summary line.
    async fn abort(&mut self) -> &'static str {
        let _ = self.assoc.send(&abort_pdu()).await;
        "protocol error"
    }

    async fn send_command(&mut self, pc_id: u8, bytes: &[u8]) -> Result<(), &'static str> {
        let max = self.assoc.requestor_max_pdu_length();
        for pdu in dimse::pdata_pdus(pc_id, PDataValueType::Command, bytes, max, true) {
            if let Err(e) = self.assoc.send(&pdu).await {
                warn!(error = %e, "sending a response failed");
                return Err("send error");
            }
        }
        Ok(())
    }
}

fn abort_pdu() -> Pdu {
    Pdu::AbortRQ {
        source: dicom_ul::pdu::AbortRQSource::ServiceProvider(
            dicom_ul::pdu::AbortRQServiceProviderReason::ReasonNotSpecified,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn accepted_sockets_inherit_the_receive_buffer() {
        // Below Linux's default net.core.rmem_max, so the kernel grants it whole, and unlike
        // the 128 KB an untouched socket starts with.
        let got = accepted_buffer(96).await;
        if cfg!(target_os = "linux") {
            assert_eq!(got, 2 * 96 * 1024);
        } else {
            assert!(got >= 96 * 1024, "{got}");
        }
    }

    async fn accepted_buffer(kb: u32) -> usize {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        size_receive_buffer(&listener, kb);
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&accepted)
            .recv_buffer_size()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_buffer_the_kernel_would_cap_is_left_to_autotuning() {
        let kb = 65_536;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        if granted_receive_buffer(loopback, kb as usize * 1024).unwrap() >= kb as usize * 1024 {
            eprintln!("net.core.rmem_max allows {kb} KB here: nothing to check");
            return;
        }
        assert_eq!(accepted_buffer(kb).await, accepted_buffer(0).await);
    }
}
