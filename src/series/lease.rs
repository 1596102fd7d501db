//! The lease keeper: renews this process's hold on its running jobs and pending deliveries.
//!
//! A claimed job or delivery row carries its holder and a lease deadline; any process may take
//! over a row whose deadline has passed (its holder died, or lost the database). Renewing every
//! third of `[index] lease_seconds` keeps a live holder's rows its own through two missed
//! renewals. A holder that could not renew in time does not stop its work: the index refuses
//! its result (the finish is fenced on holder and attempt), and the log says why.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::store::Store;

/// Why the keeper could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The thread could not be spawned.
    #[error("{0}")]
    Thread(#[from] std::io::Error),
    /// The stop signal cannot be watched.
    #[error("{0}")]
    Shutdown(#[from] crate::shutdown::NoRuntime),
}

/// Starts the keeper thread; it ends when `stop` is cancelled.
pub fn start(
    store: Arc<Store>,
    lease_seconds: f64,
    stop: &CancellationToken,
) -> Result<std::thread::JoinHandle<()>, LeaseError> {
    let (tx, rx) = mpsc::channel::<()>();
    crate::shutdown::wake_on_cancel(stop, move || {
        let _ = tx.send(());
    })?;
    let period = Duration::from_secs_f64(lease_seconds / 3.0);
    let lease = Duration::from_secs_f64(lease_seconds);
    Ok(std::thread::Builder::new()
        .name("lease-keeper".into())
        .spawn(move || run(&store, period, lease, &rx))?)
}

fn run(store: &Store, period: Duration, lease: Duration, stop: &mpsc::Receiver<()>) {
    let mut renewed = Instant::now();
    let mut warned = false;
    loop {
        match stop.recv_timeout(period) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        match store.index().renew_leases() {
            Ok((jobs, deliveries)) => {
                if warned {
                    warn!("lease renewal works again");
                    warned = false;
                }
                debug!(jobs, deliveries, "leases renewed");
                renewed = Instant::now();
            }
            Err(e) => {
                let since = renewed.elapsed();
                if since >= lease {
                    error!(error = %e, seconds = since.as_secs(), "leases not renewed for longer than [index] lease_seconds: other processes may take over this process's jobs and deliveries; their results here will be refused");
                } else if !warned {
                    warn!(error = %e, "renewing leases failed; retrying");
                }
                warned = true;
            }
        }
    }
}
