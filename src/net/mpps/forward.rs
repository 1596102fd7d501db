//! Forwarding MPPS messages to a RIS or PACS (`[mpps] forward_to`), as routers do.
//!
//! Every N-CREATE and N-SET the SCP accepted is sent on, after the scanner has its answer, on
//! a new association that proposes the MPPS SOP Class. One task sends them one at a time in
//! the order they were accepted, so a step's N-SET never overtakes its N-CREATE. A message
//! that fails is retried a few times with a growing pause, then given up with an error line;
//! nothing of it ever reaches the scanner's answer. The queue is in memory: messages not yet
//! sent when the node stops are lost (logged), which a RIS tolerates better than a scanner
//! held up by it.

use std::sync::Arc;
use std::time::Duration;

use dicom_ul::pdu::PresentationContextResultReason;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::super::dimse::{self, field, status};
use super::super::request::{Association, Proposal};
use super::super::scu;
use super::super::{EXPLICIT_VR_LE, IMPLICIT_VR_LE, MPPS};
use super::MppsConfig;

/// One accepted message to send on.
#[derive(Debug, Clone)]
pub struct Forward {
    /// `N_CREATE_RQ` or `N_SET_RQ`.
    pub field: u16,
    /// The step's SOP Instance UID (assigned by the node when an N-CREATE had none).
    pub sop_instance_uid: String,
    /// The request's data set, Explicit VR Little Endian.
    pub data: Vec<u8>,
}

/// Where and how to forward: the peer, our AE title, timeouts, TLS.
#[derive(Clone)]
pub struct Target {
    /// The peer's AE title.
    pub ae_title: String,
    /// Its `host:port`.
    pub address: String,
    /// Our AE title (calling).
    pub calling_ae: String,
    /// Connect and response timeout.
    pub timeout: Duration,
    /// Largest PDU we accept.
    pub max_pdu: u32,
    /// The node's TLS client configuration, for a `tls = true` peer.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// The sending side handed to the SCP.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::UnboundedSender<Forward>,
}

impl Forwarder {
    /// Starts the forwarding task (on the current runtime). It ends when every `Forwarder`
    /// clone is dropped, after the messages queued so far.
    pub fn start(target: Target, config: &MppsConfig) -> Forwarder {
        let (tx, rx) = mpsc::unbounded_channel();
        let attempts = config.forward_attempts.max(1);
        let retry = Duration::from_secs_f64(config.forward_retry_seconds.max(0.0));
        tokio::spawn(run(target, attempts, retry, rx));
        Forwarder { tx }
    }

    /// Queues a message; never waits.
    pub fn send(&self, f: Forward) {
        if self.tx.send(f).is_err() {
            warn!("MPPS forwarding has stopped; message not forwarded");
        }
    }
}

async fn run(
    target: Target,
    attempts: u32,
    retry: Duration,
    mut rx: mpsc::UnboundedReceiver<Forward>,
) {
    while let Some(f) = rx.recv().await {
        let what = if f.field == field::N_CREATE_RQ {
            "N-CREATE"
        } else {
            "N-SET"
        };
        let mut pause = retry;
        for attempt in 1..=attempts {
            match send_one(&target, &f).await {
                // Success, or a warning (PS3.7 C: attribute list error, value out of range).
                Ok(code) if matches!(code, status::SUCCESS | 0x0001 | 0x0107 | 0x0116) => {
                    info!(peer = %target.ae_title, mpps_uid = %f.sop_instance_uid, message = what, status = format_args!("{code:#06x}"), "mpps forwarded");
                    break;
                }
                Ok(code) => {
                    // A refusal is the peer's answer to this very message: sending it again
                    // gets the same one.
                    error!(peer = %target.ae_title, mpps_uid = %f.sop_instance_uid, message = what, status = format_args!("{code:#06x}"), "mpps forwarding refused by the peer; not retried");
                    break;
                }
                Err(e) if attempt < attempts => {
                    warn!(peer = %target.ae_title, mpps_uid = %f.sop_instance_uid, message = what, attempt, error = %e, retry_in_seconds = pause.as_secs_f64(), "mpps forwarding failed; will retry");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    error!(peer = %target.ae_title, mpps_uid = %f.sop_instance_uid, message = what, attempts, error = %e, "mpps forwarding failed; given up");
                }
            }
        }
    }
}

/// Sends one message on a new association and returns the peer's status.
async fn send_one(t: &Target, f: &Forward) -> Result<u16, String> {
    let contexts = [(
        MPPS.to_string(),
        vec![EXPLICIT_VR_LE.to_string(), IMPLICIT_VR_LE.to_string()],
    )];
    let proposal = Proposal {
        calling_ae: &t.calling_ae,
        called_ae: &t.ae_title,
        max_pdu: t.max_pdu,
        contexts: &contexts,
        timeout: t.timeout,
        tls: t.tls.clone(),
    };
    let mut assoc = Association::request(&t.address, &proposal)
        .await
        .map_err(|e| format!("association: {e}"))?;
    let result = exchange(&mut assoc, f).await;
    match result {
        Ok(_) => {
            let _ = assoc.release().await;
        }
        Err(_) => {
            let _ = assoc.abort().await;
        }
    }
    result
}

async fn exchange(assoc: &mut Association, f: &Forward) -> Result<u16, String> {
    let pc = assoc
        .presentation_contexts()
        .iter()
        .find(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .cloned()
        .ok_or("the peer accepted no MPPS presentation context")?;
    let data = if pc.transfer_syntax.trim_end_matches('\0') == EXPLICIT_VR_LE {
        f.data.clone()
    } else {
        let obj = dimse::read_data_set(&f.data, EXPLICIT_VR_LE).map_err(|e| e.to_string())?;
        dimse::write_data_set(&obj, IMPLICIT_VR_LE).map_err(|e| e.to_string())?
    };
    let command = if f.field == field::N_CREATE_RQ {
        dimse::n_create_rq(1, MPPS, Some(&f.sop_instance_uid), true)
    } else {
        dimse::n_set_rq(1, MPPS, &f.sop_instance_uid)
    }
    .encode();
    scu::send_message(assoc, pc.id, &command, Some(&data)).await?;
    let rsp = scu::receive_command(assoc).await?;
    let expected = f.field | 0x8000;
    if rsp.command_field() != Ok(expected) {
        return Err(format!(
            "expected the response {expected:#06x}, got {:?}",
            rsp.command_field()
        ));
    }
    // A data set may follow (an N-CREATE-RSP's attribute list): the association is released
    // right after, so it is not read.
    rsp.status().map_err(|e| e.to_string())
}
