//! The Storage SCP: accept loop, association policy, and the C-ECHO / C-STORE service.
//!
//! One tokio task per connection. A new connection first has
//! `node.association_request_timeout_seconds` (the ARTIM timer) to deliver its A-ASSOCIATE-RQ
//! ([`super::accept`]); only then does it take one of the `node.max_associations` slots, so
//! sockets that connect and say nothing cannot lock real senders out. Connections per source
//! address are capped (`node.max_connections_per_host`), and so is the number of connections
//! still sending their request. A connection that finds no slot still gets a proper answer,
//! an A-ASSOCIATE-RJ "local limit exceeded", instead of hanging in the backlog. Data sets are
//! streamed into the store as their P-DATA arrives and committed (fsync, rename, index); the
//! C-STORE-RSP is sent only after the commit returns.
//!
//! Shutdown: the listener closes, open associations get `node.shutdown_grace_seconds`, then
//! every handler is told to abort; each sends an A-ABORT and reports its end to the observer
//! like any other end.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dicom_ul::Pdu;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AssociationRJServiceUserReason, PDataValueType,
    PresentationContextResultReason,
};
use tokio::io::AsyncWriteExt;
use tokio::io::ReadHalf;
use tokio::net::{TcpListener, TcpStream};

use super::tls::{ClientCertificate, NetStream, Tls};
use crate::audit::{self, AlertKind, Auditor, Direction, Event as AuditEvent, Outcome, StudyTally};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Printable;
use super::accept::{self, Agreed, Context, Decision, Terms};
use super::commit::{self, Committer, Link, OutgoingReport};
use super::dimse::{self, Command, field, status};
use super::qr::{self, Writer};
use super::settings::{ScpSettings, Service};
use super::wire::{Frame, PduReader, WireError};
use crate::metrics::Rejection;
use crate::store::{Announced, Incoming, Store, StoreError, Stored, TempFile};

/// Failures of the listener itself (single associations never end the server).
#[derive(Debug, thiserror::Error)]
pub enum ScpError {
    /// Accepting a connection failed in a way that is not per-connection.
    #[error("accepting connections on the listener: {0}")]
    Accept(#[source] std::io::Error),
    /// A TLS listener was given without the identity it needs.
    #[error("a TLS listener needs the node's TLS identity ([tls] certificate, key, ca)")]
    NoTlsIdentity,
}

/// How an association ended: the log line says it, and the series tracker applies
/// `series.aborted_associations` to every end but a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssociationEnd {
    /// A-RELEASE-RQ answered with A-RELEASE-RP.
    Released,
    /// The peer sent an A-ABORT.
    AbortedByPeer,
    /// The connection closed without a release.
    ConnectionClosed,
    /// Nothing arrived for `node.idle_timeout_seconds`; we aborted.
    IdleTimeout,
    /// The peer broke the protocol; we aborted.
    ProtocolError,
    /// A response could not be sent.
    SendFailed,
    /// The node shut down and aborted the association after the grace period.
    Shutdown,
    /// The handler was dropped before it could say (a cancelled task).
    Cancelled,
}

impl AssociationEnd {
    /// Only a release is an orderly end.
    pub fn is_released(self) -> bool {
        self == AssociationEnd::Released
    }
}

impl std::fmt::Display for AssociationEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AssociationEnd::Released => "released",
            AssociationEnd::AbortedByPeer => "aborted by peer",
            AssociationEnd::ConnectionClosed => "connection closed",
            AssociationEnd::IdleTimeout => "idle timeout",
            AssociationEnd::ProtocolError => "protocol error",
            AssociationEnd::SendFailed => "send error",
            AssociationEnd::Shutdown => "aborted at shutdown",
            AssociationEnd::Cancelled => "cancelled",
        })
    }
}

/// Receives every instance the SCP has stored, after its success status was sent. Calls
/// come from the association tasks: implementations must return at once (queue the work).
pub trait StoreObserver: Send + Sync {
    /// Called once per successfully stored (or identically re-sent) instance.
    fn stored(&self, stored: &Stored, calling_ae: &str, called_ae: &str);

    /// Called exactly once when an association ends, however it ends, with the
    /// (series, SOP instance) UIDs it newly stored.
    fn association_ended(&self, _end: AssociationEnd, _stored: &[(String, String)]) {}

    /// Called when an MPPS step reaches COMPLETED or DISCONTINUED, after it is in the index
    /// and its N-SET-RSP was sent.
    fn mpps(&self, _event: &super::mpps::MppsEvent) {}
}

/// Several observers as one: the series tracker and the commitment task both learn of each
/// stored instance, in this order.
pub struct Fanout(pub Vec<Arc<dyn StoreObserver>>);

impl StoreObserver for Fanout {
    fn stored(&self, stored: &Stored, calling_ae: &str, called_ae: &str) {
        for o in &self.0 {
            o.stored(stored, calling_ae, called_ae);
        }
    }

    fn association_ended(&self, end: AssociationEnd, stored: &[(String, String)]) {
        for o in &self.0 {
            o.association_ended(end, stored);
        }
    }

    fn mpps(&self, event: &super::mpps::MppsEvent) {
        for o in &self.0 {
            o.mpps(event);
        }
    }
}

/// What every association handler shares.
pub struct ScpContext {
    pub(super) config: Arc<ScpSettings>,
    pub(super) store: Arc<Store>,
    /// Resolved addresses of peers with `check_host = true`.
    peer_hosts: HashMap<String, Vec<IpAddr>>,
    observer: Option<Arc<dyn StoreObserver>>,
    /// The node's TLS identity: the TLS listener's handshakes, and the C-MOVE
    /// sub-associations to `tls = true` peers.
    pub(super) tls: Option<Arc<Tls>>,
    /// The audit trail: associations accepted and rejected, TLS failures, instances
    /// received, and the Q/R operations.
    pub(super) audit: Auditor,
    /// The MPPS forwarder (`[mpps] forward_to`), started by the first message to forward.
    mpps_forward: std::sync::OnceLock<Option<super::mpps::forward::Forwarder>>,
    /// The Storage Commitment task; without it N-ACTION is answered 0x0110.
    commit: Option<Committer>,
}

impl ScpContext {
    /// Resolves the host of every peer that must be checked, once, at start-up.
    pub fn new(config: Arc<ScpSettings>, store: Arc<Store>) -> Result<ScpContext, String> {
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
            tls: None,
            audit: Auditor::disabled(),
            mpps_forward: std::sync::OnceLock::new(),
            commit: None,
        })
    }

    /// Adds the Storage Commitment task (it must also be an observer, see [`Fanout`]).
    pub fn with_committer(mut self, committer: Committer) -> Self {
        self.commit = Some(committer);
        self
    }

    /// Adds the node's TLS identity (needed by [`Listeners::tls`] and by C-MOVE to
    /// `tls = true` peers).
    pub fn with_tls(mut self, tls: Option<Arc<Tls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Adds the audit trail.
    pub fn with_audit(mut self, audit: Auditor) -> Self {
        self.audit = audit;
        self
    }

    /// Adds the observer that learns of stored instances (the series tracker).
    pub fn with_observer(mut self, observer: Arc<dyn StoreObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The MPPS forwarder when `[mpps] forward_to` is set, started on first use (on the
    /// runtime of the association that needs it).
    fn mpps_forwarder(&self) -> Option<&super::mpps::forward::Forwarder> {
        self.mpps_forward
            .get_or_init(|| {
                let mpps = &self.config.mpps;
                let peer = self.config.peer(mpps.forward_to.as_deref()?)?;
                let target = super::mpps::forward::Target {
                    ae_title: peer.ae_title.clone(),
                    address: peer.address.clone(),
                    calling_ae: self.config.node.ae_title.clone(),
                    timeout: Duration::from_secs(self.config.sub_operation_timeout_seconds),
                    max_pdu: self.config.node.max_pdu_length,
                    tls: if peer.tls {
                        self.tls.as_ref().map(|t| t.client_config())
                    } else {
                        None
                    },
                };
                Some(super::mpps::forward::Forwarder::start(target, mpps))
            })
            .as_ref()
    }

    /// The node's AE policy (called AE title, `require_known_peers`, `check_host`).
    /// `certified`: the connection is TLS and its client certificate verified against
    /// `tls.ca`, which a `tls = true` peer needs.
    fn check_access(
        &self,
        peer_ip: IpAddr,
        called: &str,
        calling: &str,
        certified: bool,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called != self.config.node.ae_title.trim() {
            warn!(
                calling_ae = %Printable(calling),
                called_ae = %Printable(called),
                "association rejected: called AE title not recognised"
            );
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if self.config.node.require_known_peers && self.config.peer(calling).is_none() {
            warn!(
                calling_ae = %Printable(calling),
                "association rejected: calling AE title not in [[peers]]"
            );
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        if let Some(hosts) = self.peer_hosts.get(calling)
            && !hosts.contains(&peer_ip)
        {
            warn!(calling_ae = %Printable(calling), %peer_ip, "association rejected: calling AE title used from a host other than its [[peers]] address");
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        if !certified && self.config.peer(calling).is_some_and(|p| p.tls) {
            warn!(calling_ae = %Printable(calling), %peer_ip, "association rejected: this calling AE title has tls = true in [[peers]] and may only associate over TLS with a client certificate from tls.ca");
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// Where the server is in its life, as every connection task sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// The listener is closed: requests still arriving are turned away.
    Draining,
    /// The grace period is over: open associations abort.
    Aborting,
}

/// Open connections per source address, each held by a [`HostSlot`].
#[derive(Default)]
struct HostCounts(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`HostCounts`], given back when dropped.
struct HostSlot {
    counts: Arc<HostCounts>,
    ip: IpAddr,
}

impl HostCounts {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<HostSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(HostSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Refusals of connections can come by the thousand from one misbehaving host: the first in
/// each 10 s is a warning, the rest are debug lines.
fn refusal_is_news() -> bool {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let last = LAST.load(Ordering::Relaxed);
    now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// The sockets the SCP accepts on: plain TCP (`node.listen`), TLS (`tls.listen`) or both.
/// Both share one set of limits (`node.max_associations`, per-host connections).
#[derive(Default)]
pub struct Listeners {
    /// Plain DICOM.
    pub plain: Option<TcpListener>,
    /// DICOM TLS: every connection starts with a handshake with the context's [`Tls`].
    pub tls: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(plain: TcpListener) -> Listeners {
        Listeners {
            plain: Some(plain),
            tls: None,
        }
    }
}

async fn accept_on(listener: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves associations until `shutdown` is cancelled, then stops accepting and gives open
/// associations `node.shutdown_grace_seconds` to finish before aborting them.
pub async fn serve(
    listeners: Listeners,
    ctx: Arc<ScpContext>,
    shutdown: CancellationToken,
) -> Result<(), ScpError> {
    let tls = match (&listeners.tls, &ctx.tls) {
        (Some(_), Some(tls)) => Some(tls.clone()),
        (Some(_), None) => return Err(ScpError::NoTlsIdentity),
        (None, _) => None,
    };
    for listener in listeners.plain.iter().chain(&listeners.tls) {
        size_receive_buffer(listener, ctx.config.node.receive_buffer_kb);
    }
    let node = &ctx.config.node;
    let limit = node.max_associations;
    let slots = Arc::new(Semaphore::new(limit));
    // Connections still sending their request are bounded separately: each lasts at most
    // the ARTIM timer, and a flood of them cannot make the node spawn without end.
    let requests = Arc::new(Semaphore::new(4 * limit + 16));
    // Connections answered with "local limit exceeded" are bounded too.
    let reject_permits = Arc::new(Semaphore::new(limit.max(8)));
    let hosts = Arc::new(HostCounts::default());
    let (phase_tx, phase) = watch::channel(Phase::Serving);
    let mut tasks = JoinSet::new();
    loop {
        let (accepted, tls) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = accept_on(&listeners.plain) => (accepted, None),
            accepted = accept_on(&listeners.tls) => (accepted, tls.clone()),
        };
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
        let Some(host) = hosts.take(peer.ip(), node.max_connections_per_host) else {
            crate::metrics::association_rejected(Rejection::HostLimit);
            if refusal_is_news() {
                warn!(%peer, max = node.max_connections_per_host, "connection refused: too many open connections from this address (node.max_connections_per_host)");
            } else {
                debug!(%peer, "connection refused: too many open connections from this address");
            }
            // On the TLS port the answer would need a handshake first: the connection is
            // just closed.
            if tls.is_none()
                && let Ok(permit) = reject_permits.clone().try_acquire_owned()
            {
                tasks.spawn(async move {
                    refuse_request(socket).await;
                    drop(permit);
                });
            }
            continue;
        };
        let Ok(request) = requests.clone().try_acquire_owned() else {
            crate::metrics::association_rejected(Rejection::RequestBacklog);
            if refusal_is_news() {
                warn!(%peer, "connection dropped: too many connections are still sending their association request");
            }
            continue;
        };
        let (ctx, slots, phase) = (ctx.clone(), slots.clone(), phase.clone());
        let span = info_span!("association", peer = %peer, tls = tls.is_some(), calling_ae = tracing::field::Empty, called_ae = tracing::field::Empty);
        tasks.spawn(
            async move {
                let artim =
                    Duration::from_secs(ctx.config.node.association_request_timeout_seconds);
                let Some((socket, certificate)) =
                    secure(socket, tls.as_deref(), artim, &ctx.audit, peer).await
                else {
                    return;
                };
                let conn = Connection {
                    socket,
                    certified: certificate.is_some(),
                    peer,
                    ctx,
                    slots,
                    _host: host,
                    phase,
                };
                conn.run(request).await
            }
            .instrument(span),
        );
    }
    drop(listeners);
    let _ = phase_tx.send(Phase::Draining);
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
        let _ = phase_tx.send(Phase::Aborting);
        // Each handler sends its A-ABORT and reports its end; one stuck beyond this is
        // cancelled (and still reports, from its drop).
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if ended.is_err() {
            tasks.shutdown().await;
        }
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
async fn refuse_request(mut socket: TcpStream) {
    if accept::read_request(&mut socket, Duration::from_secs(5))
        .await
        .is_ok()
    {
        let _ = accept::send(&mut socket, &accept::reject_local_limit()).await;
    }
    let _ = socket.shutdown().await;
}

/// The connection as the association reads it: plain, or after a TLS handshake that ended
/// within `artim` (the handshake counts against the request timer). `None` when the
/// handshake failed, which is logged with rustls's reason (an unknown CA, an expired
/// certificate, no certificate, a TLS version or suite BCP 195 excludes, plain DICOM on the
/// TLS port) and counted as a `tls_handshake` rejection.
async fn secure(
    socket: TcpStream,
    tls: Option<&Tls>,
    artim: Duration,
    audit: &Auditor,
    peer: SocketAddr,
) -> Option<(NetStream, Option<ClientCertificate>)> {
    let Some(tls) = tls else {
        return Some((NetStream::Plain(socket), None));
    };
    let why = match tokio::time::timeout(artim, tls.accept(socket)).await {
        Ok(Ok((stream, certificate))) => {
            match &certificate {
                Some(c) => debug!(client_certificate_sha256 = %c.sha256, "TLS established"),
                None => debug!("TLS established without a client certificate"),
            }
            return Some((stream, certificate));
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!(
            "no handshake within {} s (node.association_request_timeout_seconds)",
            artim.as_secs()
        ),
    };
    crate::metrics::association_rejected(Rejection::TlsHandshake);
    audit.record(AuditEvent::SecurityAlert {
        peer: audit::Peer {
            ae_title: String::new(),
            host: peer.ip().to_string(),
        },
        kind: AlertKind::NodeAuthentication,
        detail: format!("TLS handshake failed: {why}"),
    });
    if refusal_is_news() {
        warn!(reason = %Printable(&why), "TLS connection refused: handshake failed");
    } else {
        debug!(reason = %Printable(&why), "TLS connection refused: handshake failed");
    }
    None
}

/// A connection from its accept to its end.
struct Connection {
    socket: NetStream,
    /// TLS with a client certificate that verified against `tls.ca`.
    certified: bool,
    peer: SocketAddr,
    ctx: Arc<ScpContext>,
    /// The `node.max_associations` slots, one taken once the request is complete.
    slots: Arc<Semaphore>,
    _host: HostSlot,
    phase: watch::Receiver<Phase>,
}

impl Connection {
    /// `request` is this connection's place among those still sending their request.
    async fn run(mut self, request: OwnedSemaphorePermit) {
        let node = &self.ctx.config.node;
        let artim = Duration::from_secs(node.association_request_timeout_seconds);
        let rq = match accept::read_request(&mut self.socket, artim).await {
            Ok(rq) => rq,
            Err(e) => {
                match &e {
                    accept::RequestError::Closed => debug!("{e}"),
                    accept::RequestError::Timeout(_) => info!("connection closed: {e}"),
                    _ => warn!("connection closed: {e}"),
                }
                match &e {
                    accept::RequestError::Timeout(_) => {
                        crate::metrics::association_rejected(Rejection::RequestTimeout)
                    }
                    accept::RequestError::NotARequest(_)
                    | accept::RequestError::TooLong(_)
                    | accept::RequestError::Malformed(_) => {
                        crate::metrics::association_rejected(Rejection::BadRequest)
                    }
                    // A connection closed before it said anything is no request.
                    accept::RequestError::Closed | accept::RequestError::Io(_) => {}
                }
                if e.answer_with_abort() {
                    let reason = match e {
                        accept::RequestError::NotARequest(_) => {
                            AbortRQServiceProviderReason::UnexpectedPdu
                        }
                        _ => AbortRQServiceProviderReason::InvalidPduParameter,
                    };
                    let _ = accept::send(&mut self.socket, &accept::abort(reason)).await;
                }
                let _ = self.socket.shutdown().await;
                return;
            }
        };
        drop(request);
        let (calling, called) = (
            rq.calling_ae_title.trim().to_string(),
            rq.called_ae_title.trim().to_string(),
        );
        let rejected = |reason: &str| {
            self.ctx.audit.record(AuditEvent::AssociationRejected {
                peer: audit::Peer {
                    ae_title: calling.clone(),
                    host: self.peer.ip().to_string(),
                },
                calling_ae: calling.clone(),
                called_ae: called.clone(),
                reason: reason.to_string(),
            })
        };
        if *self.phase.borrow() != Phase::Serving {
            info!("association rejected: the node is shutting down");
            rejected("the node is shutting down");
            crate::metrics::association_rejected(Rejection::ShuttingDown);
            let _ = accept::send(&mut self.socket, &accept::reject_congestion()).await;
            return;
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            warn!(
                limit = node.max_associations,
                "association rejected: local limit of concurrent associations exceeded"
            );
            crate::metrics::association_rejected(Rejection::AssociationLimit);
            rejected("local limit of concurrent associations exceeded");
            let _ = accept::send(&mut self.socket, &accept::reject_local_limit()).await;
            let _ = self.socket.shutdown().await;
            return;
        };
        let ctx = self.ctx.clone();
        let peer_ip = self.peer.ip();
        let certified = self.certified;
        let access =
            |called: &str, calling: &str| ctx.check_access(peer_ip, called, calling, certified);
        let terms = Terms {
            max_pdu: node.max_pdu_length,
            abstract_syntax: &super::served_by_scp,
            transfer_syntaxes: super::ACCEPTED_TRANSFER_SYNTAXES,
            native_le_only: &super::is_normalized_service,
            access: &access,
            scp_role: &super::is_storage_sop_class,
            decline_extended: &|uid| crate::query::sop_class(uid).is_some(),
        };
        let agreed = match accept::negotiate(rq, &terms) {
            Decision::Accept(agreed) => agreed,
            Decision::Reject { rj, why } => {
                info!(reason = %why, "association rejected");
                rejected(&why);
                crate::metrics::association_rejected(Rejection::of(&rj));
                let _ = accept::send(&mut self.socket, &rj).await;
                let _ = self.socket.shutdown().await;
                return;
            }
        };
        if let Err(e) = accept::send(&mut self.socket, &agreed.ac).await {
            warn!(error = %e, "sending A-ASSOCIATE-AC failed");
            return;
        }
        let span = tracing::Span::current();
        span.record(
            "calling_ae",
            tracing::field::display(Printable(&agreed.calling_ae)),
        );
        span.record(
            "called_ae",
            tracing::field::display(Printable(&agreed.called_ae)),
        );
        for refused in &agreed.refused {
            let sop_class = super::uid_name(&refused.abstract_syntax);
            match refused.reason {
                PresentationContextResultReason::TransferSyntaxesNotSupported => {
                    info!(sop_class = %Printable(&sop_class), "presentation context refused: none of the proposed transfer syntaxes can be decoded by this node")
                }
                _ => {
                    info!(sop_class = %Printable(&sop_class), "presentation context refused: not a SOP class this node serves")
                }
            }
        }
        let remote = audit::Peer {
            ae_title: agreed.calling_ae.clone(),
            host: peer_ip.to_string(),
        };
        self.ctx.audit.record(AuditEvent::AssociationAccepted {
            peer: remote.clone(),
            calling_ae: agreed.calling_ae.clone(),
            called_ae: agreed.called_ae.clone(),
            tls: self.socket.is_tls(),
        });
        let (read_half, write_half) = tokio::io::split(self.socket);
        let (reports_tx, reports_rx) = mpsc::channel(4);
        let mut handler = Handler {
            calling_ae: agreed.calling_ae.clone(),
            report: EndReport {
                observer: self.ctx.observer.clone(),
                end: AssociationEnd::Cancelled,
                new_instances: Vec::new(),
                _active: crate::metrics::association_accepted(),
                audit: self.ctx.audit.clone(),
                remote: remote.clone(),
                local_ae: agreed.called_ae.clone(),
                received: StudyTally::default(),
            },
            socket: read_half,
            writer: Arc::new(Writer::new(write_half, agreed.peer_max_pdu)),
            peer_ip,
            op: None,
            agreed,
            ctx: self.ctx,
            stats: Stats::default(),
            spare: None,
            out: Vec::new(),
            reports_tx,
            reports_rx,
            awaiting_reports: HashMap::new(),
            last_message_id: 0,
            reports_pending: Arc::new(()),
        };
        let started = Instant::now();
        let end = handler.run(self.phase).await;
        handler.report.end = end;
        drop(slot);
        let s = &handler.stats;
        info!(
            instances = s.stored,
            failed = s.failed,
            bytes = s.bytes,
            seconds = format_args!("{:.2}", started.elapsed().as_secs_f64()),
            end = %end,
            "association closed"
        );
    }
}

/// Tells the observer (and the metrics) how the association ended when the handler goes
/// away, so that every path reports, a cancelled task included.
struct EndReport {
    observer: Option<Arc<dyn StoreObserver>>,
    end: AssociationEnd,
    /// (series, SOP instance) UIDs this association stored, for the aborted-association policy.
    new_instances: Vec<(String, String)>,
    /// The association's place in `m3dnode_associations_active`.
    _active: crate::metrics::ActiveAssociation,
    audit: Auditor,
    remote: audit::Peer,
    local_ae: String,
    /// What it stored (acknowledged), per study: one Instances Transferred message at the end.
    received: StudyTally,
}

impl Drop for EndReport {
    fn drop(&mut self) {
        crate::metrics::association_ended(self.end);
        if !self.received.is_empty() {
            self.audit.record(AuditEvent::InstancesTransferred {
                direction: Direction::Received,
                remote: self.remote.clone(),
                local_ae: self.local_ae.clone(),
                studies: std::mem::take(&mut self.received).into_studies(),
                outcome: if self.end.is_released() {
                    Outcome::Success
                } else {
                    Outcome::MinorFailure(format!("association ended: {}", self.end))
                },
            });
        }
        if let Some(observer) = &self.observer {
            observer.association_ended(self.end, &self.new_instances);
        }
    }
}

#[derive(Default)]
struct Stats {
    stored: u64,
    failed: u64,
    bytes: u64,
}

/// Where a response goes and what it names.
struct Reply {
    message_id: u16,
    pc_id: u8,
    sop_class_uid: String,
    sop_instance_uid: String,
    /// When the C-STORE-RQ command set was complete: the start of the receive-to-acknowledge
    /// latency (its data set follows it on the wire).
    command_at: Instant,
}

/// A message whose data set is being received.
enum Pending {
    /// A C-STORE: the data set goes to the store.
    Store {
        reply: Reply,
        /// `Err` once the store has failed; the rest of the data set is then discarded and
        /// the failure is reported when it ends. Boxed: an `Incoming` is large beside the
        /// other variant.
        target: Box<Result<Incoming, StoreError>>,
    },
    /// A request the node does not perform on this context (e.g. a C-FIND on Verification):
    /// its data set is read and dropped, then the failure response is sent.
    Refuse { pc_id: u8, response: Vec<u8> },
    /// A C-FIND/C-MOVE/C-GET whose identifier is being read (at most
    /// [`qr::MAX_IDENTIFIER`] bytes; beyond that it is dropped and `overflow` set).
    Query {
        request: qr::Request,
        overflow: bool,
    },
    /// An MPPS N-CREATE/N-SET whose attribute list is being read (at most
    /// [`MAX_MPPS_DATA_SET`] bytes; beyond that it is dropped and `overflow` set).
    Mpps {
        request: MppsRequest,
        data: Vec<u8>,
        overflow: bool,
    },
    /// An N-ACTION (Storage Commitment) whose Action Information is being read (at most
    /// [`commit::MAX_ACTION_INFORMATION`] bytes; beyond that it is dropped and `overflow` set).
    Action {
        pc_id: u8,
        message_id: u16,
        data: Vec<u8>,
        overflow: bool,
    },
    /// A data set nobody needs (an Event Reply): read and dropped, nothing answered.
    Discard { pc_id: u8 },
}

/// An MPPS request waiting for its data set.
struct MppsRequest {
    field: u16,
    message_id: u16,
    pc_id: u8,
    transfer_syntax: String,
    /// N-CREATE: the Affected SOP Instance UID (optional); N-SET: the Requested one.
    sop_instance_uid: Option<String>,
}

/// Cap on an MPPS attribute list: a step listing thousands of instances is some 100 bytes
/// per instance.
const MAX_MPPS_DATA_SET: usize = 16 * 1024 * 1024;

impl Pending {
    fn pc_id(&self) -> u8 {
        match self {
            Pending::Store { reply, .. } => reply.pc_id,
            Pending::Refuse { pc_id, .. } => *pc_id,
            Pending::Query { request, .. } => request.pc_id,
            Pending::Mpps { request, .. } => request.pc_id,
            Pending::Action { pc_id, .. } | Pending::Discard { pc_id } => *pc_id,
        }
    }
}

/// The Q/R operation running beside the reader.
struct Running {
    message_id: u16,
    cancel: watch::Sender<bool>,
    store_rsp: mpsc::Sender<Command>,
    /// Set by the operation just before its final response goes out.
    done: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Still running as far as the requester can know: its final response has not been
    /// sent. (The task itself ends a moment later.)
    fn active(&self) -> bool {
        !self.done.load(std::sync::atomic::Ordering::SeqCst) && !self.task.is_finished()
    }
}

impl Drop for Running {
    /// However the association ends, its operation ends with it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for the running operation to end (forever when there is none).
async fn operation_ended(op: &mut Option<Running>) {
    match op {
        Some(r) if !r.task.is_finished() => {
            let _ = (&mut r.task).await;
        }
        Some(_) => {}
        None => std::future::pending().await,
    }
}

struct Handler {
    socket: ReadHalf<NetStream>,
    /// The sending side, shared with the running Q/R operation.
    writer: Arc<Writer>,
    peer_ip: IpAddr,
    /// The Q/R operation in progress, if any.
    op: Option<Running>,
    agreed: Agreed,
    ctx: Arc<ScpContext>,
    calling_ae: String,
    stats: Stats,
    report: EndReport,
    /// A temp file made ahead for the next C-STORE.
    spare: Option<TempFile>,
    /// Encoding buffer for outgoing PDUs.
    out: Vec<u8>,
    /// Storage Commitment reports to send here (the sending side goes to the committer in
    /// each [`Link`]); dropped with the handler, which tells the committer to use a new
    /// association.
    reports_tx: mpsc::Sender<OutgoingReport>,
    reports_rx: mpsc::Receiver<OutgoingReport>,
    /// Reports sent here and not yet answered, by their Message ID.
    awaiting_reports: HashMap<u16, tokio::sync::oneshot::Sender<u16>>,
    /// The Message ID of the node's last request on this association.
    last_message_id: u16,
    /// Cloned into each [`Link`]: more than one holder means a report may still come here.
    reports_pending: Arc<()>,
}

fn multi_thread_runtime() -> bool {
    tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
}

impl Handler {
    /// Runs the association to its end.
    async fn run(&mut self, mut phase: watch::Receiver<Phase>) -> AssociationEnd {
        let idle = Duration::from_secs(self.ctx.config.node.idle_timeout_seconds);
        let mut reader = PduReader::new(self.ctx.config.node.max_pdu_length);
        let mut command_bytes: Vec<u8> = Vec::new();
        let mut pending: Option<Pending> = None;
        loop {
            // The reader is cancel-safe: when the operation ends first, the PDU being read
            // is resumed on the next turn.
            let next = tokio::select! {
                biased;
                _ = phase.wait_for(|p| *p == Phase::Aborting) => None,
                _ = operation_ended(&mut self.op) => {
                    self.op = None;
                    continue;
                }
                Some(report) = self.reports_rx.recv() => Some(Err(report)),
                frame = tokio::time::timeout(idle, reader.next(&mut self.socket)) => Some(Ok(frame)),
            };
            let next = match next {
                Some(Err(report)) => {
                    // Sent outside the select: its guards are not held across the send.
                    if let Err(end) = self.send_report(report).await {
                        return end;
                    }
                    continue;
                }
                Some(Ok(frame)) => Some(frame),
                None => None,
            };
            let Some(next) = next else {
                info!("node shutting down: aborting the association");
                self.send_abort().await;
                return AssociationEnd::Shutdown;
            };
            let frame = match next {
                // A peer waiting for its C-MOVE/C-GET to finish, or for a commitment report,
                // is not idle.
                Err(_) if self.op.as_ref().is_some_and(Running::active) => continue,
                Err(_) if Arc::strong_count(&self.reports_pending) > 1 => continue,
                Err(_) => {
                    warn!(
                        idle_seconds = idle.as_secs(),
                        "association idle too long; aborting"
                    );
                    self.send_abort().await;
                    return AssociationEnd::IdleTimeout;
                }
                Ok(Err(WireError::Io(e)))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof && pending.is_none() =>
                {
                    info!("peer closed the connection without releasing the association");
                    return AssociationEnd::ConnectionClosed;
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
                            if command_bytes.len() + pdv.data.len() > dimse::MAX_COMMAND_SET {
                                warn!(
                                    limit = dimse::MAX_COMMAND_SET,
                                    "command set longer than any command set; aborting"
                                );
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
                        if pdv.pc_id != p.pc_id() {
                            warn!(
                                pc_id = pdv.pc_id,
                                expected = p.pc_id(),
                                "data set fragment on another presentation context than its command; aborting"
                            );
                            return self.abort().await;
                        }
                        if let Pending::Store { target, .. } = p
                            && let Ok(incoming) = target.as_mut()
                            && let Err(e) = incoming.append(pdv.data)
                        {
                            **target = Err(StoreError::Io(e));
                        }
                        if let Pending::Query { request, overflow } = p
                            && !*overflow
                        {
                            if request.identifier.len() + pdv.data.len() > qr::MAX_IDENTIFIER {
                                *overflow = true;
                                request.identifier = Vec::new();
                            } else {
                                request.identifier.extend_from_slice(pdv.data);
                            }
                        }
                        if let Pending::Mpps { data, overflow, .. } = p
                            && !*overflow
                        {
                            if data.len() + pdv.data.len() > MAX_MPPS_DATA_SET {
                                *overflow = true;
                                *data = Vec::new();
                            } else {
                                data.extend_from_slice(pdv.data);
                            }
                        }
                        if let Pending::Action { data, overflow, .. } = p
                            && !*overflow
                        {
                            if data.len() + pdv.data.len() > commit::MAX_ACTION_INFORMATION {
                                *overflow = true;
                                *data = Vec::new();
                            } else {
                                data.extend_from_slice(pdv.data);
                            }
                        }
                        self.stats.bytes += pdv.data.len() as u64;
                        crate::metrics::received_bytes(pdv.data.len());
                        if pdv.is_last
                            && let Some(p) = pending.take()
                        {
                            let done = match p {
                                Pending::Store { reply, target } => {
                                    self.finish_store(reply, *target).await
                                }
                                Pending::Refuse { pc_id, response } => {
                                    self.send_command(pc_id, &response).await
                                }
                                Pending::Query { request, overflow } => {
                                    self.start_operation(request, overflow).await
                                }
                                Pending::Mpps {
                                    request,
                                    data,
                                    overflow,
                                } => self.finish_mpps(request, data, overflow).await,
                                Pending::Action {
                                    pc_id,
                                    message_id,
                                    data,
                                    overflow,
                                } => self.finish_action(pc_id, message_id, data, overflow).await,
                                Pending::Discard { .. } => Ok(()),
                            };
                            if let Err(end) = done {
                                return end;
                            }
                        }
                    }
                }
                Frame::ReleaseRq => {
                    if let Some(op) = self.op.take()
                        && op.active()
                    {
                        // PS3.7 asks the requester to wait for the final response; one that
                        // does not gets its operation cancelled, briefly waited for.
                        info!(
                            message_id = op.message_id,
                            "release requested while an operation runs; cancelling it"
                        );
                        let _ = op.cancel.send(true);
                        let mut op = op;
                        let _ = tokio::time::timeout(Duration::from_secs(5), &mut op.task).await;
                    }
                    if pending.take().is_some() {
                        info!(
                            "release requested during a transfer; the partial instance was discarded"
                        );
                    }
                    // Temp files go before the peer learns the association is over, so that
                    // what it sees next (tmp/ included) is the final state.
                    self.spare = None;
                    let _ = self.send_pdu(&Pdu::ReleaseRP).await;
                    return AssociationEnd::Released;
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
                    return AssociationEnd::AbortedByPeer;
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

    /// Handles a complete command set. Returns what to do with the data set that follows.
    async fn command(
        &mut self,
        bytes: &[u8],
        pc_id: u8,
    ) -> Result<Option<Pending>, AssociationEnd> {
        let cmd = match Command::parse(bytes) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "unreadable command set; aborting");
                return Err(self.abort().await);
            }
        };
        if cmd.command_field() == Ok(field::C_STORE_RSP) {
            // A C-GET sub-operation's answer (it carries no Message ID of its own).
            match &self.op {
                Some(op) if op.active() => {
                    if op.store_rsp.try_send(cmd).is_err() {
                        warn!("C-STORE-RSP the running operation does not wait for; ignored");
                    }
                }
                _ => warn!("C-STORE-RSP without a C-GET in progress; ignored"),
            }
            return Ok(None);
        }
        if cmd.command_field() == Ok(field::N_EVENT_REPORT_RSP) {
            // The requester's answer to a Storage Commitment report sent here (it has no
            // Message ID of its own).
            let answered = cmd
                .message_id_responded_to()
                .ok()
                .and_then(|id| self.awaiting_reports.remove(&id));
            match answered {
                Some(tx) => {
                    let _ = tx.send(cmd.status().unwrap_or(status::CANNOT_UNDERSTAND));
                }
                None => warn!("N-EVENT-REPORT-RSP for no report sent here; ignored"),
            }
            return Ok(match (cmd.has_data_set(), pc_id) {
                (Ok(true), pc_id) => Some(Pending::Discard { pc_id }),
                _ => None,
            });
        }
        if cmd.command_field() == Ok(field::C_CANCEL_RQ) {
            // It has no Message ID of its own, only the one of the request it cancels.
            // PS3.7 9.3.2.3 asks for no response; the cancelled operation answers 0xFE00.
            let target = cmd.message_id_responded_to().ok();
            match &self.op {
                Some(op) if Some(op.message_id) == target && op.active() => {
                    debug!(message_id = op.message_id, "C-CANCEL-RQ");
                    let _ = op.cancel.send(true);
                }
                _ => debug!(
                    message_id = ?target,
                    "C-CANCEL-RQ for no running operation ignored"
                ),
            }
            return Ok(None);
        }
        let (Ok(field), Ok(message_id)) = (cmd.command_field(), cmd.message_id()) else {
            warn!("command set without Command Field or Message ID; aborting");
            return Err(self.abort().await);
        };
        let Some(pc) = self.context(pc_id).cloned() else {
            warn!(
                pc_id,
                "message on a presentation context that was not accepted; aborting"
            );
            return Err(self.abort().await);
        };
        let has_data_set = cmd.has_data_set().unwrap_or(true);
        match field {
            field::C_ECHO_RQ if pc.abstract_syntax == super::VERIFICATION => {
                debug!(message_id, "C-ECHO");
                let code = if self.authorized(Service::Echo) {
                    status::SUCCESS
                } else {
                    status::NOT_AUTHORIZED
                };
                let rsp = dimse::c_echo_rsp(message_id, code).encode();
                self.send_command(pc_id, &rsp).await?;
                Ok(None)
            }
            field::C_FIND_RQ | field::C_MOVE_RQ | field::C_GET_RQ
                if crate::query::sop_class(&pc.abstract_syntax).is_some_and(|(_, s)| {
                    matches!(
                        (s, field),
                        (crate::query::Service::Find, field::C_FIND_RQ)
                            | (crate::query::Service::Move, field::C_MOVE_RQ)
                            | (crate::query::Service::Get, field::C_GET_RQ)
                    )
                }) =>
            {
                self.query_request(&cmd, field, message_id, &pc, has_data_set)
                    .await
            }
            field::C_STORE_RQ if !self.authorized(Service::Store) => {
                crate::metrics::instance_failed(status::NOT_AUTHORIZED);
                let sop_class_uid = cmd.affected_sop_class_uid().unwrap_or_default();
                let sop_instance_uid = cmd.affected_sop_instance_uid().unwrap_or_default();
                let response = dimse::c_store_rsp(
                    message_id,
                    &sop_class_uid,
                    &sop_instance_uid,
                    status::NOT_AUTHORIZED,
                    Some("this AE title may not store here ([[peers]] may)"),
                )
                .encode();
                self.refuse(pc_id, response, has_data_set).await
            }
            field::C_STORE_RQ if super::is_storage_sop_class(&pc.abstract_syntax) => {
                let command_at = Instant::now();
                let sop_class_uid = cmd.affected_sop_class_uid().unwrap_or_default();
                let sop_instance_uid = cmd.affected_sop_instance_uid().unwrap_or_default();
                let target = if sop_class_uid != pc.abstract_syntax {
                    Err(StoreError::Mismatch(format!(
                        "Affected SOP Class UID {sop_class_uid} differs from the presentation context's {}",
                        pc.abstract_syntax
                    )))
                } else {
                    self.ctx.store.begin(
                        &Announced {
                            sop_class_uid: sop_class_uid.clone(),
                            sop_instance_uid: sop_instance_uid.clone(),
                            transfer_syntax: pc.transfer_syntax.clone(),
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
                    command_at,
                };
                if has_data_set {
                    Ok(Some(Pending::Store {
                        reply,
                        target: Box::new(target),
                    }))
                } else {
                    self.respond_store(
                        &reply,
                        status::CANNOT_UNDERSTAND,
                        Some("C-STORE-RQ announces no data set"),
                    )
                    .await?;
                    crate::metrics::instance_failed(status::CANNOT_UNDERSTAND);
                    Ok(None)
                }
            }
            field::N_CREATE_RQ | field::N_SET_RQ if pc.abstract_syntax == super::MPPS => {
                self.mpps_request(&cmd, field, message_id, &pc, has_data_set)
                    .await
            }
            field::N_ACTION_RQ if pc.abstract_syntax == super::STORAGE_COMMITMENT_PUSH => {
                self.action_request(&cmd, message_id, pc_id, has_data_set)
                    .await
            }
            other if other & 0x8000 != 0 => {
                warn!(
                    command_field = format_args!("{other:#06x}"),
                    "response received where only requests are expected; ignored"
                );
                Ok(None)
            }
            other => {
                warn!(
                    command_field = format_args!("{other:#06x}"),
                    sop_class = %Printable(&super::uid_name(&pc.abstract_syntax)),
                    "unsupported DIMSE request on this presentation context; refused"
                );
                let response = dimse::failure_rsp(
                    other,
                    message_id,
                    Some(pc.abstract_syntax.as_str()),
                    status::UNRECOGNIZED_OPERATION,
                )
                .encode();
                self.refuse(pc_id, response, has_data_set).await
            }
        }
    }

    /// An MPPS N-CREATE/N-SET: refused at once where it must be (not authorized, no data
    /// set, N-SET without a Requested SOP Instance UID), else its attribute list is read.
    async fn mpps_request(
        &mut self,
        cmd: &Command,
        field: u16,
        message_id: u16,
        pc: &Context,
        has_data_set: bool,
    ) -> Result<Option<Pending>, AssociationEnd> {
        let sop_instance_uid = if field == field::N_CREATE_RQ {
            cmd.affected_sop_instance_uid()
        } else {
            cmd.requested_sop_instance_uid()
        }
        .map(|u| u.trim_end_matches(['\0', ' ']).to_string())
        .filter(|u| !u.is_empty());
        let refusal = if !self.authorized(Service::Mpps) {
            Some((
                status::NOT_AUTHORIZED,
                "MPPS is not permitted for this AE title",
            ))
        } else if !has_data_set {
            Some((
                status::MISSING_ATTRIBUTE,
                "the request has no attribute list",
            ))
        } else if field == field::N_SET_RQ && sop_instance_uid.is_none() {
            Some((
                status::MISSING_ATTRIBUTE,
                "N-SET without a Requested SOP Instance UID",
            ))
        } else {
            None
        };
        if let Some((code, comment)) = refusal {
            warn!(
                message_id,
                status = format_args!("{code:#06x}"),
                comment,
                "MPPS request refused"
            );
            let response = dimse::n_rsp(
                field,
                message_id,
                Some(super::MPPS),
                sop_instance_uid.as_deref(),
                code,
                false,
            )
            .error_comment(comment)
            .encode();
            return self.refuse(pc.id, response, has_data_set).await;
        }
        Ok(Some(Pending::Mpps {
            request: MppsRequest {
                field,
                message_id,
                pc_id: pc.id,
                transfer_syntax: pc.transfer_syntax.clone(),
                sop_instance_uid,
            },
            data: Vec::new(),
            overflow: false,
        }))
    }

    /// Checks and records an MPPS request whose attribute list has arrived, answers it, then
    /// tells the series tracker of a final step and forwards the request when configured.
    async fn finish_mpps(
        &mut self,
        r: MppsRequest,
        data: Vec<u8>,
        overflow: bool,
    ) -> Result<(), AssociationEnd> {
        use super::mpps;
        let outcome = if overflow {
            Err(mpps::Refusal {
                status: status::RESOURCE_LIMITATION,
                comment: format!("attribute list longer than {MAX_MPPS_DATA_SET} bytes"),
                error_id: None,
                attributes: Vec::new(),
            })
        } else {
            // A few index rows, but SQLite may wait on a busy lock: off the async worker.
            let store = self.ctx.store.clone();
            let (calling_ae, uid, ts, field) = (
                self.calling_ae.clone(),
                r.sop_instance_uid.clone(),
                r.transfer_syntax.clone(),
                r.field,
            );
            let data = data.clone();
            let work = move || {
                if field == field::N_CREATE_RQ {
                    mpps::create(store.index(), &calling_ae, uid.as_deref(), &data, &ts)
                } else {
                    mpps::set(
                        store.index(),
                        &calling_ae,
                        uid.as_deref().unwrap_or_default(),
                        &data,
                        &ts,
                    )
                }
            };
            if multi_thread_runtime() {
                tokio::task::block_in_place(work)
            } else {
                tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
                    Err(mpps::Refusal {
                        status: status::PROCESSING_FAILURE,
                        comment: format!("MPPS task failed: {e}"),
                        error_id: None,
                        attributes: Vec::new(),
                    })
                })
            }
        };
        let what = if r.field == field::N_CREATE_RQ {
            "N-CREATE"
        } else {
            "N-SET"
        };
        match outcome {
            Err(refusal) => {
                warn!(
                    message = what,
                    mpps_uid = r.sop_instance_uid.as_deref().unwrap_or(""),
                    status = format_args!("{:#06x}", refusal.status),
                    error_id = refusal.error_id.map(|e| format!("{e:#06x}")),
                    attributes = %refusal
                        .attributes
                        .iter()
                        .map(|t| format!("({:04X},{:04X})", t >> 16, t & 0xFFFF))
                        .collect::<Vec<_>>()
                        .join(" "),
                    reason = %refusal.comment,
                    "mpps request refused"
                );
                let rsp = refusal.response(r.field, r.message_id, r.sop_instance_uid.as_deref());
                self.send_command(r.pc_id, &rsp).await
            }
            Ok(accepted) => {
                let series = accepted.event.as_ref().map_or(0, |e| e.series.len());
                let instances = accepted.event.as_ref().map_or(0, |e| {
                    e.series.iter().map(|s| s.sop_instance_uids.len()).sum()
                });
                info!(
                    message = what,
                    mpps_uid = %accepted.sop_instance_uid,
                    series,
                    instances,
                    "mpps {}",
                    accepted.status
                );
                let rsp = dimse::n_rsp(
                    r.field,
                    r.message_id,
                    Some(super::MPPS),
                    Some(&accepted.sop_instance_uid),
                    status::SUCCESS,
                    false,
                )
                .encode();
                self.send_command(r.pc_id, &rsp).await?;
                if let (Some(event), Some(observer)) = (&accepted.event, &self.ctx.observer) {
                    observer.mpps(event);
                }
                if let Some(forwarder) = self.ctx.mpps_forwarder() {
                    match dimse::read_data_set(&data, &r.transfer_syntax)
                        .and_then(|obj| dimse::write_data_set(&obj, super::EXPLICIT_VR_LE))
                    {
                        Ok(data) => forwarder.send(mpps::forward::Forward {
                            field: r.field,
                            sop_instance_uid: accepted.sop_instance_uid.clone(),
                            data,
                        }),
                        Err(e) => warn!(error = %e, "mpps message not forwarded"),
                    }
                }
                Ok(())
            }
        }
    }

    /// Answers a refused request: after its data set, if one follows (read and dropped),
    /// else at once.
    async fn refuse(
        &mut self,
        pc_id: u8,
        response: Vec<u8>,
        has_data_set: bool,
    ) -> Result<Option<Pending>, AssociationEnd> {
        if has_data_set {
            Ok(Some(Pending::Refuse { pc_id, response }))
        } else {
            self.send_command(pc_id, &response).await?;
            Ok(None)
        }
    }

    /// Whether the peer may use `service` (`[[peers]] may`); a refusal is logged with who,
    /// from where and what.
    fn authorized(&self, service: Service) -> bool {
        let ok = self.ctx.config.may(&self.calling_ae, service);
        if !ok {
            let listed = self.ctx.config.peer(&self.calling_ae).is_some();
            warn!(
                calling_ae = %Printable(&self.calling_ae),
                peer_ip = %self.peer_ip,
                service = %service,
                reason = if listed { "its [[peers]] may leaves it out" } else { "the AE title is not in [[peers]]" },
                "request refused: not authorized (0x0124)"
            );
            self.ctx.audit.record(AuditEvent::SecurityAlert {
                peer: audit::Peer {
                    ae_title: self.calling_ae.clone(),
                    host: self.peer_ip.to_string(),
                },
                kind: AlertKind::UnauthorizedUse,
                detail: format!(
                    "{service} refused (0x0124): {}",
                    if listed {
                        "its [[peers]] may leaves it out"
                    } else {
                        "the AE title is not in [[peers]]"
                    }
                ),
            });
        }
        ok
    }

    /// A C-FIND/C-MOVE/C-GET-RQ: refuses it at once where it must (not authorized, another
    /// operation runs, no identifier), else reads its identifier.
    async fn query_request(
        &mut self,
        cmd: &Command,
        field: u16,
        message_id: u16,
        pc: &Context,
        has_data_set: bool,
    ) -> Result<Option<Pending>, AssociationEnd> {
        let service = match field {
            field::C_FIND_RQ => Service::Find,
            field::C_MOVE_RQ => Service::Move,
            _ => Service::Get,
        };
        let refusal = if !self.authorized(service) {
            Some((
                status::NOT_AUTHORIZED,
                format!("{service} is not permitted for this AE title"),
            ))
        } else if self.op.as_ref().is_some_and(Running::active) {
            warn!(
                message_id,
                "Q/R request while another operation runs on the association; refused"
            );
            Some((
                status::OUT_OF_RESOURCES,
                "another operation is in progress on this association (asynchronous operations are not negotiated)".to_string(),
            ))
        } else if !has_data_set {
            Some((
                status::CANNOT_UNDERSTAND,
                "the request has no identifier".to_string(),
            ))
        } else {
            None
        };
        if let Some((code, comment)) = refusal {
            let response = dimse::qr_rsp(
                field | 0x8000,
                message_id,
                &pc.abstract_syntax,
                code,
                false,
                None,
                Some(&comment),
            )
            .encode();
            return self.refuse(pc.id, response, has_data_set).await;
        }
        Ok(Some(Pending::Query {
            request: qr::Request {
                pc_id: pc.id,
                sop_class_uid: pc.abstract_syntax.clone(),
                transfer_syntax: pc.transfer_syntax.clone(),
                message_id,
                move_destination: cmd.move_destination(),
                identifier: Vec::new(),
            },
            overflow: false,
        }))
    }

    /// Starts the operation whose identifier has arrived.
    async fn start_operation(
        &mut self,
        request: qr::Request,
        overflow: bool,
    ) -> Result<(), AssociationEnd> {
        if overflow {
            warn!(
                message_id = request.message_id,
                limit = qr::MAX_IDENTIFIER,
                "Q/R identifier larger than the limit; refused with 0xA700"
            );
            let field = match crate::query::sop_class(&request.sop_class_uid) {
                Some((_, crate::query::Service::Find)) => field::C_FIND_RSP,
                Some((_, crate::query::Service::Move)) => field::C_MOVE_RSP,
                _ => field::C_GET_RSP,
            };
            let response = dimse::qr_rsp(
                field,
                request.message_id,
                &request.sop_class_uid,
                status::OUT_OF_RESOURCES,
                false,
                None,
                Some(&format!(
                    "identifier larger than {} bytes",
                    qr::MAX_IDENTIFIER
                )),
            )
            .encode();
            return self.send_command(request.pc_id, &response).await;
        }
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (rsp_tx, rsp_rx) = mpsc::channel(4);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let get_contexts = self
            .agreed
            .contexts
            .iter()
            .filter(|c| self.agreed.scp_role.contains(&c.abstract_syntax))
            .map(|c| dicom_ul::pdu::PresentationContextNegotiated {
                id: c.id,
                reason: PresentationContextResultReason::Acceptance,
                transfer_syntax: c.transfer_syntax.clone(),
                abstract_syntax: c.abstract_syntax.clone(),
            })
            .collect();
        let env = qr::Env {
            ctx: self.ctx.clone(),
            writer: self.writer.clone(),
            calling_ae: self.calling_ae.clone(),
            peer_ip: self.peer_ip,
            called_ae: self.agreed.called_ae.clone(),
            get_contexts,
            cancel: cancel_rx,
            store_rsp: rsp_rx,
            done: done.clone(),
        };
        let message_id = request.message_id;
        let task = tokio::spawn(qr::run(request, env).in_current_span());
        self.op = Some(Running {
            message_id,
            cancel: cancel_tx,
            store_rsp: rsp_tx,
            done,
            task,
        });
        Ok(())
    }

    /// Checks an N-ACTION-RQ's command (PS3.4 J.3.2): authorization, the well-known SOP
    /// Instance, Action Type 1, Action Information to follow. A refused one is answered after
    /// its data set, which is read and dropped.
    async fn action_request(
        &mut self,
        cmd: &Command,
        message_id: u16,
        pc_id: u8,
        has_data_set: bool,
    ) -> Result<Option<Pending>, AssociationEnd> {
        use super::{STORAGE_COMMITMENT_PUSH as SC, STORAGE_COMMITMENT_PUSH_INSTANCE as SCI};
        let action = cmd.action_type_id().unwrap_or(0);
        let instance = cmd.requested_sop_instance_uid().unwrap_or_default();
        let refusal = if !self.authorized(Service::Commit) {
            Some((
                status::NOT_AUTHORIZED,
                "this AE title may not request commitment ([[peers]] may)",
            ))
        } else if cmd.requested_sop_class_uid().is_some_and(|c| c != SC) {
            Some((
                status::CLASS_INSTANCE_CONFLICT,
                "Requested SOP Class UID is not Storage Commitment Push Model",
            ))
        } else if instance != SCI {
            Some((
                status::NO_SUCH_SOP_INSTANCE,
                "Requested SOP Instance UID must be 1.2.840.10008.1.20.1.1",
            ))
        } else if action != commit::REQUEST_STORAGE_COMMITMENT {
            Some((status::NO_SUCH_ACTION, "Action Type ID must be 1"))
        } else if !has_data_set {
            Some((
                status::MISSING_ATTRIBUTE,
                "N-ACTION-RQ without Action Information",
            ))
        } else {
            None
        };
        if let Some((code, comment)) = refusal {
            warn!(
                calling_ae = %Printable(&self.calling_ae),
                status = format_args!("{code:#06x}"),
                action_type = action,
                requested_sop_instance = %Printable(&instance),
                reason = comment,
                "N-ACTION refused"
            );
            let rsp = dimse::n_action_rsp(message_id, SC, SCI, action, code)
                .error_comment(comment)
                .encode();
            return self.refuse(pc_id, rsp, has_data_set).await;
        }
        Ok(Some(Pending::Action {
            pc_id,
            message_id,
            data: Vec::new(),
            overflow: false,
        }))
    }

    /// Answers an N-ACTION whose Action Information has arrived: parsed and stored before
    /// the N-ACTION-RSP (so a success is never lost to a restart), then handed to the
    /// committer with this association to report on.
    async fn finish_action(
        &mut self,
        pc_id: u8,
        message_id: u16,
        data: Vec<u8>,
        overflow: bool,
    ) -> Result<(), AssociationEnd> {
        use super::{STORAGE_COMMITMENT_PUSH as SC, STORAGE_COMMITMENT_PUSH_INSTANCE as SCI};
        // The start of the node's part of the commitment latency (bench/commit.sh).
        debug!(message_id, bytes = data.len(), "N-ACTION received");
        let ts = self
            .context(pc_id)
            .map(|c| c.transfer_syntax.clone())
            .unwrap_or_default();
        let parsed = if overflow {
            Err(commit::Refusal {
                status: status::RESOURCE_LIMITATION,
                comment: format!(
                    "Action Information larger than {} bytes",
                    commit::MAX_ACTION_INFORMATION
                ),
                attributes: Vec::new(),
            })
        } else {
            commit::parse_action_information(&data, &ts)
        };
        let admitted = match (parsed, self.ctx.commit.clone()) {
            (Err(r), _) => Err(r),
            (Ok(_), None) => Err(commit::Refusal {
                status: status::PROCESSING_FAILURE,
                comment: "Storage Commitment is not running".into(),
                attributes: Vec::new(),
            }),
            (Ok(request), Some(committer)) => {
                let called = self.ctx.config.node.ae_title.clone();
                match committer.admit(&request, &self.calling_ae, &called).await {
                    Ok(a) => Ok((committer, request, a)),
                    Err(e) => {
                        warn!(error = %e, "commitment: storing the transaction failed");
                        Err(commit::Refusal {
                            status: status::PROCESSING_FAILURE,
                            comment: "the index could not store the transaction".into(),
                            attributes: Vec::new(),
                        })
                    }
                }
            }
        };
        match admitted {
            Err(r) => {
                warn!(
                    calling_ae = %Printable(&self.calling_ae),
                    status = format_args!("{:#06x}", r.status),
                    reason = %Printable(&r.comment),
                    "N-ACTION refused"
                );
                let mut rsp = dimse::n_action_rsp(
                    message_id,
                    SC,
                    SCI,
                    commit::REQUEST_STORAGE_COMMITMENT,
                    r.status,
                )
                .error_comment(&r.comment);
                if !r.attributes.is_empty() {
                    rsp = rsp.attribute_identifier_list(&r.attributes);
                }
                self.send_command(pc_id, &rsp.encode()).await
            }
            Ok((committer, request, admission)) => {
                let rsp = dimse::n_action_rsp(
                    message_id,
                    SC,
                    SCI,
                    commit::REQUEST_STORAGE_COMMITMENT,
                    status::SUCCESS,
                )
                .encode();
                self.send_command(pc_id, &rsp).await?;
                let link = Link {
                    reports: self.reports_tx.clone(),
                    pc_id,
                    pending: self.reports_pending.clone(),
                };
                committer.submit(admission, request, &self.calling_ae, Some(link));
                Ok(())
            }
        }
    }

    /// Sends a Storage Commitment report on this association and remembers whom to tell of
    /// its answer. One that cannot be sent is dropped, which sends the committer to a new
    /// association.
    async fn send_report(&mut self, r: OutgoingReport) -> Result<(), AssociationEnd> {
        use super::{STORAGE_COMMITMENT_PUSH as SC, STORAGE_COMMITMENT_PUSH_INSTANCE as SCI};
        let Some(ts) = self.context(r.pc_id).map(|c| c.transfer_syntax.clone()) else {
            return Ok(());
        };
        let data = match dimse::write_data_set(&r.event_information, &ts) {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "commitment: encoding the report failed");
                return Ok(());
            }
        };
        self.last_message_id = self.last_message_id.wrapping_add(1).max(1);
        let id = self.last_message_id;
        let command = dimse::n_event_report_rq(id, SC, SCI, r.event_type_id, true).encode();
        if let Err(e) = self
            .writer
            .send_message(r.pc_id, &command, Some(&data))
            .await
        {
            warn!(error = %e, "sending a commitment report failed");
            return Err(AssociationEnd::SendFailed);
        }
        debug!(
            message_id = id,
            event_type = r.event_type_id,
            "N-EVENT-REPORT-RQ sent"
        );
        self.awaiting_reports.insert(id, r.answered);
        Ok(())
    }

    fn context(&self, pc_id: u8) -> Option<&Context> {
        self.agreed.contexts.iter().find(|pc| pc.id == pc_id)
    }

    async fn finish_store(
        &mut self,
        p: Reply,
        target: Result<Incoming, StoreError>,
    ) -> Result<(), AssociationEnd> {
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
                crate::metrics::instance_stored(p.command_at);
                // While the sender reads its next file, make the temp file for it.
                self.spare = self.ctx.store.temp_file().ok();
                if let Some(observer) = &self.ctx.observer {
                    observer.stored(&stored, &self.calling_ae, &self.ctx.config.node.ae_title);
                }
                let h = &stored.header;
                self.report.received.add(
                    &h.study_instance_uid,
                    h.query.patient_id.as_deref(),
                    h.query.patient_name.as_deref(),
                    &h.sop_class_uid,
                );
                if !stored.duplicate {
                    self.report.new_instances.push((
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
                let message = e.to_string();
                warn!(
                    sop_instance_uid = %Printable(&p.sop_instance_uid),
                    status = format_args!("{code:#06X}"),
                    error = %Printable(&message),
                    "C-STORE failed"
                );
                self.stats.failed += 1;
                self.respond_store(&p, code, Some(&message)).await?;
                crate::metrics::instance_failed(code);
            }
        }
        Ok(())
    }

    async fn respond_store(
        &mut self,
        p: &Reply,
        code: u16,
        comment: Option<&str>,
    ) -> Result<(), AssociationEnd> {
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

    /// Sends an A-ABORT (the reason was logged by the caller).
    async fn abort(&mut self) -> AssociationEnd {
        self.send_abort().await;
        AssociationEnd::ProtocolError
    }

    async fn send_abort(&mut self) {
        let _ = self
            .send_pdu(&accept::abort(
                AbortRQServiceProviderReason::ReasonNotSpecified,
            ))
            .await;
    }

    async fn send_pdu(&mut self, pdu: &Pdu) -> std::io::Result<()> {
        self.out.clear();
        dicom_ul::write_pdu(&mut self.out, pdu).map_err(std::io::Error::other)?;
        self.writer.write(&self.out).await
    }

    /// Sends a command set (all its PDUs under one lock of the writer).
    async fn send_command(&mut self, pc_id: u8, bytes: &[u8]) -> Result<(), AssociationEnd> {
        let max = self.agreed.peer_max_pdu;
        self.out.clear();
        for pdu in dimse::pdata_pdus(pc_id, PDataValueType::Command, bytes, max, true) {
            if let Err(e) = dicom_ul::write_pdu(&mut self.out, &pdu) {
                warn!(error = %e, "encoding a response failed");
                return Err(AssociationEnd::SendFailed);
            }
        }
        if let Err(e) = self.writer.write(&self.out).await {
            warn!(error = %e, "sending a response failed");
            return Err(AssociationEnd::SendFailed);
        }
        Ok(())
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
