//! The composition root: [`start`] wires storage, the series tracker, the job workers, the
//! delivery task and the DICOM listener into a running [`Node`]; [`Node::shutdown`] stops
//! them in order. The binary (`m3dnode serve`) is this plus signal handling, and tests start
//! nodes in-process with it.
//!
//! One stop signal, a [`CancellationToken`], reaches every task and thread. Its child
//! `receive` is cancelled first, so that the stop keeps its order: the listener closes and
//! open associations get `node.shutdown_grace_seconds`; only then is the root cancelled,
//! which ends the tracker (after the events the associations sent, so every acknowledged
//! instance is tracked), the workers (after their current job; queued jobs wait in the index
//! for the next start) and delivery (rows not yet sent stay pending). Threads that block are
//! woken by [`crate::shutdown::wake_on_cancel`]; nothing polls for the stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::audit::{Auditor, Event as AuditEvent};
use crate::config::{Config, ConfigError};
use crate::http::{HttpError, HttpState};
use crate::metrics::Metrics;
use crate::net::scp::{self, ScpContext, ScpError};
use crate::net::tls::{Tls, TlsError};
use crate::series::jobs::{JobQueue, SpawnError, Workers};
use crate::store::{IndexError, OpenError, SharedIndex, Store, StoreError};

/// Why a node could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration changed after loading and no longer validates.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The storage could not be opened (locked by another node, not writable, ...).
    #[error("opening storage `{path}` (node.storage): {source}")]
    Storage {
        /// `node.storage`.
        path: std::path::PathBuf,
        /// What went wrong.
        source: OpenError,
    },
    /// Re-queuing the jobs of the last run, or joining a shared index, failed.
    #[error("index at start-up: {0}")]
    Requeue(#[from] IndexError),
    /// The lease keeper thread could not start.
    #[error("starting the lease keeper: {0}")]
    Lease(#[from] crate::series::lease::LeaseError),
    /// A `check_host` peer's address does not resolve.
    #[error("{0}")]
    Peers(String),
    /// The audit trail could not be opened (`[audit]`).
    #[error("audit trail: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// The node's TLS identity could not be loaded (`[tls]`).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A DICOM listener could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// `node.listen` or `tls.listen`.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The job workers could not start.
    #[error(transparent)]
    Workers(#[from] SpawnError),
    /// The series tracker could not start.
    #[error(transparent)]
    Tracker(#[from] crate::series::StartError),
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The HTTP side could not start (`[http]`).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The stop signal could not be watched (no tokio runtime).
    #[error(transparent)]
    Shutdown(#[from] crate::shutdown::NoRuntime),
    /// The listener failed; the node stopped on its own.
    #[error(transparent)]
    Scp(#[from] ScpError),
    /// A part of the node panicked.
    #[error("the {0} panicked")]
    Panicked(&'static str),
    /// The clean-shutdown mark could not be written (the next start re-indexes).
    #[error("marking the clean shutdown: {0}")]
    MarkClean(#[from] StoreError),
}

/// A running node. Dropping it without [`Node::shutdown`] cancels everything at once (no
/// grace, no clean-shutdown mark), as a crash would, and does not wait for the threads.
pub struct Node {
    /// The configuration the node runs with (rules compiled).
    pub config: Arc<Config>,
    /// The Prometheus metrics (the recorder is the process's; see [`Metrics::install`]).
    pub metrics: Arc<Metrics>,
    /// Storage and index.
    pub store: Arc<Store>,
    /// Wakes the delivery task: a result was stored or a failed delivery was queued again.
    pub delivery_notify: Arc<Notify>,
    /// True while the DICOM listener accepts associations (false from the start of the
    /// shutdown on, or when it failed).
    pub scp_listening: Arc<AtomicBool>,
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    /// The TLS identity, reloaded by [`Node::reload_tls`].
    tls: Option<Arc<Tls>>,
    /// The audit trail: Application Start is recorded when the node is up, Stop at the end of
    /// [`Node::shutdown`].
    pub audit: Auditor,
    http_addr: Option<SocketAddr>,
    /// The one stop signal: tracker, workers, delivery and added tasks end on it.
    stop: CancellationToken,
    /// Child of `stop`, cancelled first: the listener stops accepting.
    receive: CancellationToken,
    scp: Option<JoinHandle<Result<(), ScpError>>>,
    /// Delivery and the tasks of [`Node::spawn_task`], awaited after the root is cancelled.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// The tracker and the job workers.
    threads: Vec<(&'static str, std::thread::JoinHandle<()>)>,
}

/// What a process does with the storage and index it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `m3dnode serve`: the DICOM listeners (store, commitment, MPPS, Q/R); with `workers`
    /// also the reconstruction jobs and deliveries (`serve --no-workers` leaves those to the
    /// `worker`s of a shared index).
    Serve {
        /// Run jobs and deliveries in this process.
        workers: bool,
    },
    /// `m3dnode worker`: jobs, deliveries and series completion on a shared index; no DICOM
    /// listener.
    Worker,
}

impl Role {
    /// Whether this process claims jobs and deliveries.
    pub fn works(self) -> bool {
        matches!(self, Role::Serve { workers: true } | Role::Worker)
    }

    /// The name in the index's `processes` table and the log.
    pub fn name(self) -> &'static str {
        match self {
            Role::Serve { workers: true } => "serve",
            Role::Serve { workers: false } => "receiver",
            Role::Worker => "worker",
        }
    }
}

/// [`start_as`] a complete single node (`m3dnode serve`).
pub async fn start(config: Config) -> Result<Node, NodeError> {
    start_as(config, Role::Serve { workers: true }).await
}

/// Starts a node: opens the storage, re-queues the jobs a stop interrupted, starts the
/// workers, the series tracker and delivery, and binds the DICOM listener (`node.listen`;
/// port 0 picks a free port, see [`Node::local_addr`]).
///
/// `config` is normally from [`Config::load`], whose compiled rules are used as they are;
/// a configuration whose rules changed since is validated again.
///
/// On a shared PostgreSQL index (`[index] url`) the process joins the others: it holds its
/// jobs and deliveries under leases that a [`crate::series::lease`] thread renews, takes over
/// those of a process that stopped renewing, and re-queues nothing at start (the jobs that
/// look interrupted may be running elsewhere).
pub async fn start_as(mut config: Config, role: Role) -> Result<Node, NodeError> {
    if !config.rules_are_compiled() {
        config.validate()?;
    }
    let config = Arc::new(config);
    let node = &config.node;
    // Before anything that counts, so that the first association is counted.
    let metrics = Arc::new(Metrics::install()?);
    let shared = config.index.is_shared();
    let instance = config.index.instance_name();
    let store = tokio::task::spawn_blocking({
        let mut settings = node.store_settings();
        settings.shared = shared.then(|| SharedIndex {
            url: config.index.url.clone(),
            pool: config.index.pool,
            instance: instance.clone(),
        });
        move || Store::open(&settings)
    })
    .await
    .map_err(|_| NodeError::Panicked("storage opening"))?
    .map_err(|source| NodeError::Storage {
        path: node.storage.clone(),
        source,
    })?;
    let store = Arc::new(store);
    let owner = config.index.owner();
    store.index().set_owner(&owner, config.index.lease_seconds);
    if shared {
        store.index().register_process(role.name(), &instance)?;
        info!(owner = %owner, role = role.name(), "joined the shared index");
    } else {
        // The storage lock proves that no other process runs these jobs.
        let requeued = crate::series::jobs::requeue_interrupted(&store)?;
        if requeued > 0 {
            info!(
                jobs = requeued,
                "re-queued jobs interrupted by the last stop"
            );
        }
    }
    // Resolved and bound before any thread starts, so that these common failures leave
    // nothing behind.
    let tls = match config.needs_tls_identity() {
        true => Some(Arc::new(Tls::load(&config.tls)?)),
        false => None,
    };
    let audit = Auditor::start(
        &config.audit,
        &node.ae_title,
        &node.storage,
        tls.as_ref().map(|t| t.client_config()),
    )?;
    let scp_settings = Arc::new(config.scp_settings());
    let ctx = ScpContext::new(scp_settings.clone(), store.clone())
        .map_err(NodeError::Peers)?
        .with_tls(tls.clone())
        .with_audit(audit.clone());
    let mut listeners = scp::Listeners::default();
    let serves = matches!(role, Role::Serve { .. });
    if serves && config.tls.plain_listener {
        listeners.plain = Some(bind("node.listen", node.listen).await?);
    }
    if serves && config.tls.enabled {
        listeners.tls = Some(bind("tls.listen", config.tls.listen).await?);
    }
    let addr_of = |l: &Option<tokio::net::TcpListener>, key| match l {
        Some(l) => l.local_addr().map(Some).map_err(|source| NodeError::Bind {
            key,
            addr: node.listen,
            source,
        }),
        None => Ok(None),
    };
    let plain_addr = addr_of(&listeners.plain, "node.listen")?;
    let tls_addr = addr_of(&listeners.tls, "tls.listen")?;
    // Validation keeps at least one listener.
    let local_addr = plain_addr.or(tls_addr).unwrap_or(node.listen);
    let http_listener = crate::http::bind(&config.http).await?;
    let http_addr = match &http_listener {
        Some(l) => Some(
            l.local_addr()
                .map_err(|e| NodeError::Http(HttpError::Serve(e)))?,
        ),
        None => None,
    };

    let stop = CancellationToken::new();
    let receive = stop.child_token();
    // Should a later step fail, the threads started so far see the stop and end.
    let started = stop.clone().drop_guard();
    let rules = config.compiled_rules().clone();
    if rules.is_empty() {
        info!("no [[rules]] configured: series are stored, not processed");
    }
    let queue = JobQueue::new(stop.clone())?;
    let delivery_notify = Arc::new(Notify::new());
    let mut threads: Vec<(&'static str, std::thread::JoinHandle<()>)> = Vec::new();
    if role.works() {
        let workers = Arc::new(Workers {
            config: config.worker_settings(),
            store: store.clone(),
            rules: rules.clone(),
            queue: queue.clone(),
            delivery: delivery_notify.clone(),
            models: Default::default(),
        });
        threads.extend(workers.spawn()?.into_iter().map(|h| ("job worker", h)));
    }
    threads.push((
        "lease keeper",
        crate::series::lease::start(store.clone(), config.index.lease_seconds, &stop)?,
    ));
    let (tracker, tracker_thread) =
        crate::series::start(config.series.clone(), store.clone(), rules, queue, &stop)?;
    threads.push(("series tracker", tracker_thread));
    let delivery = crate::route::outbox::Delivery::new(
        config.delivery.clone(),
        node.ae_title.clone(),
        store.clone(),
        delivery_notify.clone(),
    );
    let delivery = delivery
        .with_tls(&config.peers, tls.clone())
        .with_audit(audit.clone());
    let mut tasks = Vec::new();
    if role.works() {
        tasks.push(("delivery task", tokio::spawn(delivery.run(stop.clone()))));
    }

    // A worker has no listener; "listening" (readiness, the watchdog) then means running.
    let scp_listening = Arc::new(AtomicBool::new(true));
    // The DICOM side, `serve` only. Storage Commitment: reports on new associations use the
    // node's TLS identity for `tls = true` peers, as delivery does.
    let scp = if serves {
        let (committer, commit_task) = crate::net::commit::Committer::start(
            config.commitment.clone(),
            scp_settings,
            store.clone(),
            tls.as_ref().map(|t| t.client_config()),
            stop.clone(),
        );
        tasks.push(("commitment task", commit_task));
        let observers: Vec<Arc<dyn scp::StoreObserver>> =
            vec![tracker, Arc::new(committer.clone())];
        let ctx = Arc::new(
            ctx.with_committer(committer)
                .with_observer(Arc::new(scp::Fanout(observers))),
        );
        let (receive, stop, listening) = (receive.clone(), stop.clone(), scp_listening.clone());
        Some(tokio::spawn(async move {
            let result = scp::serve(listeners, ctx, receive).await;
            listening.store(false, Ordering::SeqCst);
            if result.is_err() {
                // The listener failed: the node stops on its own ([`Node::wait`] returns).
                stop.cancel();
            }
            result
        }))
    } else {
        None
    };
    // Not ready as soon as the stop begins, while open associations finish.
    tokio::spawn({
        let (receive, listening) = (receive.clone(), scp_listening.clone());
        async move {
            receive.cancelled().await;
            listening.store(false, Ordering::SeqCst);
        }
    });
    if let Some(listener) = http_listener {
        let state = HttpState {
            store: store.clone(),
            settings: Arc::new(config.http_settings()),
            delivery_wake: delivery_notify.clone(),
            scp_listening: scp_listening.clone(),
            metrics: {
                let (metrics, store) = (metrics.clone(), store.clone());
                Arc::new(move || metrics.render(&store))
            },
            // Readiness includes "ONNX Runtime loads" only where a rule needs it.
            onnx: config
                .compiled_rules()
                .iter()
                .any(|r| r.mvdiffusion.is_some())
                .then(|| config.onnxruntime.settings()),
            audit: audit.clone(),
        };
        let stop = stop.clone();
        tasks.push((
            "HTTP server",
            tokio::spawn(async move {
                if let Err(e) = crate::http::serve(listener, state, stop.cancelled_owned()).await {
                    warn!("HTTP side stopped: {e}");
                }
            }),
        ));
    }
    info!(
        ae_title = %node.ae_title,
        role = role.name(),
        listen = %plain_addr.map_or("off".to_string(), |a| a.to_string()),
        tls_listen = %tls_addr.map_or("off".to_string(), |a| a.to_string()),
        storage = %node.storage.display(),
        sync = node.sync,
        "m3dnode listening"
    );
    started.disarm();
    audit.record(AuditEvent::ApplicationStart);
    Ok(Node {
        config: config.clone(),
        metrics,
        store,
        delivery_notify,
        scp_listening,
        local_addr,
        tls_addr,
        tls,
        audit,
        http_addr,
        stop,
        receive,
        scp,
        tasks,
        threads,
    })
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { key, addr, source })
}

impl Node {
    /// The address the plain DICOM listener is bound to (the TLS listener's when
    /// `tls.plain_listener` is false).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the DICOM TLS listener, when `tls.enabled`.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Reads the certificate, key and CA files again (SIGHUP): new handshakes and new
    /// outgoing associations use them; open associations keep their sessions. On error the
    /// files in use stay in use. Without TLS there is nothing to do.
    pub fn reload_tls(&self) -> Result<bool, TlsError> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// The address of the HTTP side (status page, health, metrics); `None` when
    /// `[http] listen` is empty.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The node's stop signal, for a task that must end with the node. Cancelling it stops
    /// everything at once; to stop in order, call [`Node::shutdown`].
    pub fn stop_signal(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs a task beside the node's own (an HTTP server, say): `task` gets the stop signal
    /// and must end soon after it is cancelled; [`Node::shutdown`] waits for it after the
    /// listener has stopped and before the clean-shutdown mark.
    pub fn spawn_task<F>(&mut self, name: &'static str, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task(self.stop.clone()));
        self.tasks.push((name, handle));
    }

    /// Completes when the node stops on its own (the listener failed) or its stop signal
    /// is cancelled; call [`Node::shutdown`] then to finish the stop and learn why.
    pub async fn wait(&self) {
        self.stop.cancelled().await
    }

    /// Stops the node in order: the listener closes and open associations get
    /// `node.shutdown_grace_seconds` (then are aborted); the tracker stops after their last
    /// events, the workers after their current job, delivery with unsent rows pending; then
    /// every thread and task is joined and the storage is marked cleanly shut down (so the
    /// next start skips re-indexing). The error of a listener that failed is returned here.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        let began = Instant::now();
        self.receive.cancel();
        let scp = match self.scp.take() {
            Some(handle) => handle
                .await
                .map_err(|_| NodeError::Panicked("DICOM listener")),
            None => Ok(Ok(())),
        };
        self.stop.cancel();
        let mut panicked = None;
        for (name, task) in std::mem::take(&mut self.tasks) {
            if task.await.is_err() {
                warn!(task = name, "a task panicked before the stop");
                panicked = Some(name);
            }
        }
        let threads = std::mem::take(&mut self.threads);
        let joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .filter_map(|(name, t)| t.join().is_err().then_some(name))
                .last()
        })
        .await
        .map_err(|_| NodeError::Panicked("thread joiner"))?;
        if let Some(name) = joined {
            warn!(thread = name, "a thread panicked before the stop");
            panicked = Some(name);
        }
        scp??;
        if let Some(name) = panicked {
            return Err(NodeError::Panicked(name));
        }
        self.store.mark_clean_shutdown()?;
        self.audit.record(AuditEvent::ApplicationStop);
        let audit = self.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.close()).await;
        info!(
            seconds = format_args!("{:.2}", began.elapsed().as_secs_f64()),
            "m3dnode stopped"
        );
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
