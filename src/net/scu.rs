//! The SCU side: C-ECHO and C-STORE to a remote AE.
//!
//! Used by the `echo` and `send` commands and by the delivery outbox. Files are sent in the
//! transfer syntax they are stored in when the peer accepts it, streamed from disk in PDU-sized
//! pieces; an uncompressed file is re-encoded only when the peer accepts just the other
//! little-endian syntax.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use dicom_ul::Pdu;
use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::pdu::{
    PDataValueType, PresentationContextNegotiated, PresentationContextResultReason,
};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::dimse::{self, Command, status};
use super::{EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION};

/// SCU failures that end the whole operation.
#[derive(Debug, thiserror::Error)]
pub enum ScuError {
    /// `AE@host:port` did not parse.
    #[error("`{0}` is not AE@host:port")]
    Address(String),
    /// The association could not be established (refused, rejected, unreachable).
    #[error("association with {peer} failed: {source}")]
    Associate {
        /// The peer.
        peer: String,
        /// dicom-ul's reason.
        #[source]
        source: Box<dicom_ul::association::Error>,
    },
    /// The peer accepted none of the proposed presentation contexts.
    #[error("{peer} accepted no presentation context for {what}")]
    NoContext {
        /// The peer.
        peer: String,
        /// What was proposed.
        what: String,
    },
    /// Sending or receiving on an established association failed.
    #[error("association with {peer}: {message}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What failed.
        message: String,
    },
    /// The peer answered a C-ECHO with a non-success status.
    #[error("C-ECHO answered with status {0:#06X}")]
    EchoStatus(u16),
    /// A local file could not be read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// A remote application entity: `AE@host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AeAddress {
    /// Called AE title.
    pub ae_title: String,
    /// `host:port`.
    pub address: String,
}

impl FromStr for AeAddress {
    type Err = ScuError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ae, addr) = s
            .split_once('@')
            .ok_or_else(|| ScuError::Address(s.into()))?;
        crate::config::check_ae_title(ae).map_err(|_| ScuError::Address(s.into()))?;
        crate::config::parse_host_port(addr).map_err(|_| ScuError::Address(s.into()))?;
        Ok(AeAddress {
            ae_title: ae.to_string(),
            address: addr.to_string(),
        })
    }
}

impl fmt::Display for AeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.ae_title, self.address)
    }
}

/// Settings of an outgoing association.
#[derive(Debug, Clone)]
pub struct ScuOptions {
    /// Our (calling) AE title.
    pub calling_ae: String,
    /// Connect and per-response timeout.
    pub timeout: Duration,
    /// Largest PDU we accept from the peer.
    pub max_pdu_length: u32,
}

impl Default for ScuOptions {
    fn default() -> Self {
        ScuOptions {
            calling_ae: "M3DNODE".into(),
            timeout: Duration::from_secs(30),
            max_pdu_length: 262_144,
        }
    }
}

/// A Part 10 file to send: what its meta says and where its data set starts.
#[derive(Debug, Clone)]
pub struct OutgoingFile {
    /// The file.
    pub path: PathBuf,
    /// Media Storage SOP Class UID.
    pub sop_class_uid: String,
    /// Media Storage SOP Instance UID.
    pub sop_instance_uid: String,
    /// Transfer Syntax UID of the stored data set.
    pub transfer_syntax: String,
    /// Byte offset of the data set.
    pub data_offset: u64,
}

impl OutgoingFile {
    /// Reads the file meta of a Part 10 file.
    pub fn open(path: &Path) -> Result<OutgoingFile, ScuError> {
        let err = |message: String| ScuError::File {
            path: path.to_path_buf(),
            message,
        };
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::SPECIFIC_CHARACTER_SET)
            .open_file(path)
            .map_err(|e| err(format!("not a readable DICOM Part 10 file: {e}")))?;
        let meta = obj.meta();
        let trim = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
        let mut file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let data_offset =
            crate::store::part10_data_offset(&mut file).map_err(|e| err(e.to_string()))?;
        Ok(OutgoingFile {
            path: path.to_path_buf(),
            sop_class_uid: trim(meta.media_storage_sop_class_uid()),
            sop_instance_uid: trim(meta.media_storage_sop_instance_uid()),
            transfer_syntax: trim(meta.transfer_syntax()),
            data_offset,
        })
    }
}

/// The outcome for one file.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// The file.
    pub path: PathBuf,
    /// The peer's status, or why nothing was sent.
    pub result: Result<u16, String>,
    /// Error Comment of a failure status.
    pub comment: Option<String>,
}

impl SendOutcome {
    /// Success or warning (0xB000-0xBFFF) statuses count as stored.
    pub fn is_success(&self) -> bool {
        matches!(self.result, Ok(s) if s == status::SUCCESS || (0xB000..=0xBFFF).contains(&s))
    }
}

async fn associate(
    to: &AeAddress,
    opts: &ScuOptions,
    contexts: &[(String, Vec<String>)],
) -> Result<AsyncClientAssociation<TcpStream>, ScuError> {
    let mut o = ClientAssociationOptions::new()
        .calling_ae_title(opts.calling_ae.as_str())
        .called_ae_title(to.ae_title.as_str())
        .max_pdu_length(opts.max_pdu_length)
        .connection_timeout(opts.timeout)
        .read_timeout(opts.timeout)
        .write_timeout(opts.timeout);
    for (abstract_syntax, tss) in contexts {
        o = o.with_presentation_context(
            abstract_syntax.as_str(),
            tss.iter().map(String::as_str).collect(),
        );
    }
    let mut assoc = o
        .establish_async(to.address.as_str())
        .await
        .map_err(|source| ScuError::Associate {
            peer: to.to_string(),
            source: Box::new(source),
        })?;
    let _ = assoc.inner_stream().set_nodelay(true);
    Ok(assoc)
}

/// Sends a C-ECHO and checks the answer.
pub async fn echo(to: &AeAddress, opts: &ScuOptions) -> Result<(), ScuError> {
    let mut assoc = associate(
        to,
        opts,
        &[(VERIFICATION.into(), vec![IMPLICIT_VR_LE.into()])],
    )
    .await?;
    let pc = accepted(&assoc)
        .next()
        .cloned()
        .ok_or_else(|| ScuError::NoContext {
            peer: to.to_string(),
            what: "Verification".into(),
        })?;
    let proto = |message: String| ScuError::Protocol {
        peer: to.to_string(),
        message,
    };
    send_command(&mut assoc, pc.id, &dimse::c_echo_rq(1).encode())
        .await
        .map_err(proto)?;
    let rsp = receive_command(&mut assoc).await.map_err(proto)?;
    let _ = assoc.release().await;
    match rsp.status() {
        Ok(status::SUCCESS) => Ok(()),
        Ok(s) => Err(ScuError::EchoStatus(s)),
        Err(e) => Err(proto(e.to_string())),
    }
}

fn accepted<S>(
    assoc: &AsyncClientAssociation<S>,
) -> impl Iterator<Item = &PresentationContextNegotiated>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
}

const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

fn is_native(ts: &str) -> bool {
    matches!(ts, IMPLICIT_VR_LE | EXPLICIT_VR_LE)
}

/// Sends files over one association, reporting each file's status. Fails as a whole only
/// when no association could be made.
pub async fn send_files(
    files: &[OutgoingFile],
    to: &AeAddress,
    opts: &ScuOptions,
) -> Result<Vec<SendOutcome>, ScuError> {
    // One context per (class, own syntax), plus one per class with the two little-endian
    // syntaxes as the fallback every SCP supports.
    let mut contexts: Vec<(String, Vec<String>)> = Vec::new();
    for f in files {
        let own = (f.sop_class_uid.clone(), vec![f.transfer_syntax.clone()]);
        if !contexts.contains(&own) {
            contexts.push(own);
        }
        let fallback = (
            f.sop_class_uid.clone(),
            vec![EXPLICIT_VR_LE.to_string(), IMPLICIT_VR_LE.to_string()],
        );
        if !contexts.contains(&fallback) {
            contexts.push(fallback);
        }
    }
    if contexts.len() > 128 {
        return Err(ScuError::Protocol {
            peer: to.to_string(),
            message: format!(
                "{} SOP class/transfer syntax combinations exceed the 128 presentation contexts of one association; send fewer kinds of files at once",
                contexts.len()
            ),
        });
    }
    let mut assoc = associate(to, opts, &contexts).await?;
    let negotiated: Vec<PresentationContextNegotiated> = accepted(&assoc).cloned().collect();
    let mut outcomes = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let exact = negotiated.iter().find(|pc| {
            pc.abstract_syntax == f.sop_class_uid && pc.transfer_syntax == f.transfer_syntax
        });
        let fallback = || {
            negotiated
                .iter()
                .find(|pc| pc.abstract_syntax == f.sop_class_uid && is_native(&pc.transfer_syntax))
                .filter(|_| {
                    is_native(&f.transfer_syntax) || f.transfer_syntax == "1.2.840.10008.1.2.2"
                })
        };
        let Some(pc) = exact.or_else(fallback).cloned() else {
            outcomes.push(SendOutcome {
                path: f.path.clone(),
                result: Err(format!(
                    "the peer accepted no presentation context for {} in {}",
                    super::uid_name(&f.sop_class_uid),
                    super::uid_name(&f.transfer_syntax)
                )),
                comment: None,
            });
            continue;
        };
        let message_id = (i % 65535 + 1) as u16;
        match store_one(&mut assoc, f, &pc, message_id).await {
            Ok((code, comment)) => {
                debug!(path = %f.path.display(), status = format_args!("{code:#06X}"), "C-STORE");
                outcomes.push(SendOutcome {
                    path: f.path.clone(),
                    result: Ok(code),
                    comment,
                })
            }
            Err(StoreOneError::File(message)) => outcomes.push(SendOutcome {
                path: f.path.clone(),
                result: Err(message),
                comment: None,
            }),
            Err(StoreOneError::Association(message)) => {
                warn!(peer = %to, error = %message, "association failed during C-STORE");
                outcomes.push(SendOutcome {
                    path: f.path.clone(),
                    result: Err(message.clone()),
                    comment: None,
                });
                for rest in &files[i + 1..] {
                    outcomes.push(SendOutcome {
                        path: rest.path.clone(),
                        result: Err(format!("not sent: {message}")),
                        comment: None,
                    });
                }
                return Ok(outcomes);
            }
        }
    }
    let _ = assoc.release().await;
    Ok(outcomes)
}

enum StoreOneError {
    /// This file could not be sent; the association is still usable.
    File(String),
    /// The association is broken.
    Association(String),
}

async fn store_one(
    assoc: &mut AsyncClientAssociation<TcpStream>,
    f: &OutgoingFile,
    pc: &PresentationContextNegotiated,
    message_id: u16,
) -> Result<(u16, Option<String>), StoreOneError> {
    let max = assoc.acceptor_max_pdu_length();
    // Fragments of even length: DCMTK rejects odd ones.
    let chunk = ((max.clamp(1024, 4 * 1024 * 1024) - 6) & !1) as usize;
    // Prepare the data set before the command, so that a local read error does not leave a
    // half-sent message on the association.
    let reencoded = if pc.transfer_syntax != f.transfer_syntax {
        Some(reencode(&f.path, &pc.transfer_syntax).map_err(StoreOneError::File)?)
    } else {
        None
    };
    let mut file = std::fs::File::open(&f.path).map_err(|e| StoreOneError::File(e.to_string()))?;
    file.seek(SeekFrom::Start(f.data_offset))
        .map_err(|e| StoreOneError::File(e.to_string()))?;
    let cmd = dimse::c_store_rq(message_id, &f.sop_class_uid, &f.sop_instance_uid).encode();
    send_command(assoc, pc.id, &cmd)
        .await
        .map_err(StoreOneError::Association)?;
    match reencoded {
        Some(bytes) => {
            for pdu in dimse::pdata_pdus(pc.id, PDataValueType::Data, &bytes, max, true) {
                assoc
                    .send(&pdu)
                    .await
                    .map_err(|e| StoreOneError::Association(e.to_string()))?;
            }
        }
        None => {
            // Stream the stored data set; one read ahead tells which piece is the last.
            let mut current = read_chunk(&mut file, chunk).map_err(StoreOneError::Association)?;
            loop {
                let next = if current.len() == chunk {
                    read_chunk(&mut file, chunk).map_err(StoreOneError::Association)?
                } else {
                    Vec::new()
                };
                let is_last = next.is_empty();
                if is_last && current.len() % 2 == 1 && f.transfer_syntax == DEFLATED {
                    // PS3.5 A.5: an odd-length deflated stream is padded with one zero byte.
                    current.push(0);
                }
                let pdu = Pdu::PData {
                    data: vec![dicom_ul::pdu::PDataValue {
                        presentation_context_id: pc.id,
                        value_type: PDataValueType::Data,
                        is_last,
                        data: current,
                    }],
                };
                assoc
                    .send(&pdu)
                    .await
                    .map_err(|e| StoreOneError::Association(e.to_string()))?;
                if is_last {
                    break;
                }
                current = next;
            }
        }
    }
    let rsp = receive_command(assoc)
        .await
        .map_err(StoreOneError::Association)?;
    let code = rsp
        .status()
        .map_err(|e| StoreOneError::Association(e.to_string()))?;
    Ok((code, rsp.error_comment()))
}

fn read_chunk(file: &mut std::fs::File, size: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(size);
    file.take(size as u64)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading the file: {e}"))?;
    Ok(buf)
}

/// Re-encodes an uncompressed data set into another uncompressed transfer syntax.
fn reencode(path: &Path, ts_uid: &str) -> Result<Vec<u8>, String> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| format!("unknown transfer syntax {ts_uid}"))?;
    let obj =
        dicom_object::open_file(path).map_err(|e| format!("cannot read for re-encoding: {e}"))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| format!("cannot re-encode to {ts_uid}: {e}"))?;
    Ok(out)
}

async fn send_command(
    assoc: &mut AsyncClientAssociation<TcpStream>,
    pc_id: u8,
    bytes: &[u8],
) -> Result<(), String> {
    let max = assoc.acceptor_max_pdu_length();
    for pdu in dimse::pdata_pdus(pc_id, PDataValueType::Command, bytes, max, true) {
        assoc.send(&pdu).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Receives PDUs until a complete command set has arrived.
async fn receive_command(assoc: &mut AsyncClientAssociation<TcpStream>) -> Result<Command, String> {
    let mut bytes = Vec::new();
    loop {
        match assoc.receive().await.map_err(|e| e.to_string())? {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type == PDataValueType::Command {
                        bytes.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            return Command::parse(&bytes).map_err(|e| e.to_string());
                        }
                    }
                }
            }
            Pdu::AbortRQ { source } => return Err(format!("aborted by the peer ({source:?})")),
            Pdu::ReleaseRQ => return Err("the peer released the association".into()),
            other => return Err(format!("unexpected PDU: {}", other.short_description())),
        }
    }
}
