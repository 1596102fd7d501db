//! The SCU side: C-ECHO and C-STORE to a remote AE.
//!
//! Used by the `echo` and `send` commands and by the delivery outbox. Files are sent in the
//! transfer syntax they are stored in when the peer accepts it, streamed from disk in PDU-sized
//! pieces; an uncompressed, Deflated or compressed file is re-encoded (inflated, decompressed)
//! only when the peer accepts just a native little-endian syntax for it.
//!
//! The outbox needs two more things from an association, given by [`send_files_with`]: a
//! durable mark written just before the last fragment of a data set leaves (from then on the
//! peer may hold the instance even if its answer never arrives), and a Study Root C-FIND for
//! instances whose earlier delivery was never confirmed, so that they are not sent twice.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::Pdu;

use super::request::{Association, Proposal, RequestError};
use dicom_ul::pdu::{
    PDataValueType, PresentationContextNegotiated, PresentationContextResultReason, RequestorRoles,
};
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
        /// Why.
        #[source]
        source: Box<RequestError>,
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
    /// The association was rejected (A-ASSOCIATE-RJ) as permanent: PS3.8 7.1.1.8 says the
    /// same request will be rejected again, so it is not retried.
    #[error("{peer} rejected the association permanently ({reason})")]
    RejectedPermanent {
        /// The peer.
        peer: String,
        /// The source and reason it gave.
        reason: String,
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

impl ScuError {
    /// True when trying again unchanged cannot succeed: the peer refused the association
    /// permanently or accepts none of the SOP classes (in any proposed transfer syntax).
    /// Someone must change a configuration first, so the outbox fails such a delivery at once.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ScuError::RejectedPermanent { .. } | ScuError::NoContext { .. }
        )
    }

    /// The message with every underlying cause once. (`anyhow`'s `{:#}` repeats the source,
    /// which [`ScuError::Associate`] already shows.)
    pub fn full_message(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            let text = e.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = e.source();
        }
        out
    }
}

/// A remote application entity: `AE@host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AeAddress {
    /// Called AE title.
    pub ae_title: String,
    /// `host:port`.
    pub address: String,
    /// Call it over TLS ([`ScuOptions::tls`] must then be set).
    pub tls: bool,
}

impl FromStr for AeAddress {
    type Err = ScuError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ae, addr) = s
            .split_once('@')
            .ok_or_else(|| ScuError::Address(s.into()))?;
        super::settings::check_ae_title(ae).map_err(|_| ScuError::Address(s.into()))?;
        super::settings::parse_host_port(addr).map_err(|_| ScuError::Address(s.into()))?;
        Ok(AeAddress {
            ae_title: ae.to_string(),
            address: addr.to_string(),
            tls: false,
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
    /// The node's TLS client configuration, for peers with [`AeAddress::tls`].
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ScuOptions {
    fn default() -> Self {
        ScuOptions {
            calling_ae: "M3DNODE".into(),
            timeout: Duration::from_secs(30),
            max_pdu_length: 262_144,
            tls: None,
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
    /// The whole data set was handed to the peer but no status came back (timeout, broken
    /// association): the peer may or may not have stored it.
    pub unconfirmed: bool,
    /// What a C-FIND asked before sending said (only for files given keys to verify).
    pub verified: Verification,
    /// Trying again unchanged cannot succeed (the peer refuses the SOP class or transfer
    /// syntax, or answered a status that says so).
    pub permanent: bool,
}

/// The result of asking the peer, before sending, whether it already holds an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Not asked (no keys given).
    NotAsked,
    /// The peer holds the instance: nothing was sent and `result` is `Ok(0x0000)`.
    Found,
    /// The peer answered that it does not hold the instance; it was sent.
    NotFound,
    /// The peer could not be asked (no Study Root C-FIND, or the C-FIND failed); it was sent.
    Unavailable(String),
}

/// Study Root Query/Retrieve Information Model - FIND.
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";

/// The higher-level unique keys a Study Root C-FIND at IMAGE level needs for an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceKeys {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
}

impl InstanceKeys {
    /// Reads the keys from a Part 10 file (the header only).
    pub fn read(path: &Path) -> Result<InstanceKeys, ScuError> {
        use dicom_dictionary_std::tags;
        let err = |message: String| ScuError::File {
            path: path.to_path_buf(),
            message,
        };
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(tags::STUDY_ID)
            .open_file(path)
            .map_err(|e| err(format!("not a readable DICOM Part 10 file: {e}")))?;
        let get = |tag, name: &str| {
            obj.element(tag)
                .ok()
                .and_then(|e| e.to_str().ok())
                .map(|v| v.trim_end_matches(['\0', ' ']).to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| err(format!("no {name}")))
        };
        Ok(InstanceKeys {
            study_instance_uid: get(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series_instance_uid: get(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
        })
    }
}

/// Statuses after which sending the same data set again cannot succeed: the SOP class is
/// refused (0x0122) or the data set does not match it (0xA900-0xA9FF). Out of resources
/// (0xA7xx) and "cannot understand" (0xCxxx, which some archives also answer for passing
/// internal errors) stay retryable.
pub fn is_permanent_status(code: u16) -> bool {
    code == dimse::status::SOP_CLASS_NOT_SUPPORTED || (0xA900..=0xA9FF).contains(&code)
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
) -> Result<Association, ScuError> {
    let proposal = Proposal {
        calling_ae: &opts.calling_ae,
        called_ae: &to.ae_title,
        max_pdu: opts.max_pdu_length,
        contexts,
        timeout: opts.timeout,
        tls: tls_for(to, opts)?,
    };
    Association::request(&to.address, &proposal)
        .await
        .map_err(|source| associate_error(to, contexts, source))
}

/// The TLS configuration to call `to` with: `None` for a plain peer; an error when the peer
/// wants TLS and the node has no identity (a configuration the node refuses at start-up).
pub(crate) fn tls_for(
    to: &AeAddress,
    opts: &ScuOptions,
) -> Result<Option<Arc<rustls::ClientConfig>>, ScuError> {
    if !to.tls {
        return Ok(None);
    }
    match &opts.tls {
        Some(client) => Ok(Some(client.clone())),
        None => Err(ScuError::Associate {
            peer: to.to_string(),
            source: Box::new(RequestError::Tls(std::io::Error::other(
                "the peer has tls = true but the node has no TLS identity ([tls])",
            ))),
        }),
    }
}

/// Classifies a failed association request: permanent refusals get their own variants.
pub(crate) fn associate_error(
    to: &AeAddress,
    contexts: &[(String, Vec<String>)],
    source: RequestError,
) -> ScuError {
    use dicom_ul::pdu::AssociationRJResult;
    match &source {
        RequestError::Rejected(rj) if rj.result == AssociationRJResult::Permanent => {
            ScuError::RejectedPermanent {
                peer: to.to_string(),
                reason: rj.source.to_string(),
            }
        }
        RequestError::NoAcceptedPresentationContexts => {
            let mut classes: Vec<String> = Vec::new();
            for (abstract_syntax, _) in contexts {
                if abstract_syntax == STUDY_ROOT_FIND {
                    continue;
                }
                let named = format!("{} ({abstract_syntax})", super::uid_name(abstract_syntax));
                if !classes.contains(&named) {
                    classes.push(named);
                }
            }
            ScuError::NoContext {
                peer: to.to_string(),
                what: classes.join(", "),
            }
        }
        _ => ScuError::Associate {
            peer: to.to_string(),
            source: Box::new(source),
        },
    }
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

/// Sends a Storage Commitment report (N-EVENT-REPORT-RQ with its Event Information) on a new
/// association to `to`, proposing the SCP role of Storage Commitment Push Model for the node
/// (PS3.4 J.3.3): here the node, the SCP, opens the association. An acceptor that answers no
/// Role Selection item leaves the default roles (many SCUs ignore roles for N-EVENT-REPORT);
/// the report is sent anyway with a warning. Returns the N-EVENT-REPORT-RSP status.
pub async fn event_report(
    to: &AeAddress,
    opts: &ScuOptions,
    event_type_id: u16,
    event_information: &dicom_object::InMemDicomObject,
) -> Result<u16, ScuError> {
    use super::{STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_PUSH_INSTANCE};
    let contexts = [(
        STORAGE_COMMITMENT_PUSH.to_string(),
        vec![EXPLICIT_VR_LE.to_string(), IMPLICIT_VR_LE.to_string()],
    )];
    let proposal = Proposal {
        calling_ae: &opts.calling_ae,
        called_ae: &to.ae_title,
        max_pdu: opts.max_pdu_length,
        contexts: &contexts,
        timeout: opts.timeout,
        tls: tls_for(to, opts)?,
    };
    let roles = [(
        STORAGE_COMMITMENT_PUSH.to_string(),
        RequestorRoles {
            scu: false,
            scp: true,
        },
    )];
    let mut assoc = Association::request_with_roles(&to.address, &proposal, &roles)
        .await
        .map_err(|source| associate_error(to, &contexts, source))?;
    let pc = accepted(&assoc)
        .next()
        .cloned()
        .ok_or_else(|| ScuError::NoContext {
            peer: to.to_string(),
            what: "Storage Commitment Push Model".into(),
        })?;
    match assoc.acceptor_roles(STORAGE_COMMITMENT_PUSH) {
        Some(r) if r.scp => {}
        Some(_) => {
            warn!(peer = %to, "the requester refused the SCP role for Storage Commitment; sending the report anyway")
        }
        None => {
            warn!(peer = %to, "the requester answered no role selection for Storage Commitment; sending the report under the default roles")
        }
    }
    let proto = |message: String| ScuError::Protocol {
        peer: to.to_string(),
        message,
    };
    let data = dimse::write_data_set(event_information, &pc.transfer_syntax)
        .map_err(|e| proto(e.to_string()))?;
    let command = dimse::n_event_report_rq(
        1,
        STORAGE_COMMITMENT_PUSH,
        STORAGE_COMMITMENT_PUSH_INSTANCE,
        event_type_id,
        true,
    )
    .encode();
    send_message(&mut assoc, pc.id, &command, Some(&data))
        .await
        .map_err(proto)?;
    debug!(peer = %to, event_type_id, "N-EVENT-REPORT-RQ sent on a new association");
    let rsp = receive_command(&mut assoc).await.map_err(proto)?;
    let _ = assoc.release().await;
    if rsp.command_field() != Ok(dimse::field::N_EVENT_REPORT_RSP) {
        return Err(proto(format!(
            "answered with command field {:?} instead of an N-EVENT-REPORT-RSP",
            rsp.command_field()
        )));
    }
    rsp.status().map_err(|e| proto(e.to_string()))
}

fn accepted(assoc: &Association) -> impl Iterator<Item = &PresentationContextNegotiated> {
    assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
}

const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

fn is_native(ts: &str) -> bool {
    matches!(ts, IMPLICIT_VR_LE | EXPLICIT_VR_LE)
}

/// Stored syntaxes that can be sent in a native little-endian syntax instead: the native ones
/// (re-encoded), Explicit VR Big Endian (re-encoded), Deflated (inflated; its inflated
/// form is Explicit VR Little Endian) and the compressed ones the node decodes (JPEG, JPEG-LS,
/// JPEG 2000, RLE: decompressed, see [`crate::volume::transcode`]).
fn has_native_fallback(ts: &str) -> bool {
    is_native(ts)
        || ts == "1.2.840.10008.1.2.2"
        || ts == DEFLATED
        || crate::volume::transcode::can_decompress(ts)
}

/// Sends files over one association, reporting each file's status. Fails as a whole only
/// when no association could be made.
pub async fn send_files(
    files: &[OutgoingFile],
    to: &AeAddress,
    opts: &ScuOptions,
) -> Result<Vec<SendOutcome>, ScuError> {
    send_files_with(files, &[], to, opts, &mut |_| Ok(())).await
}

/// [`send_files`] for the outbox. `verify[i]`, when given, makes the SCU ask the peer with a
/// Study Root C-FIND (IMAGE level, by SOP Instance UID) whether it already holds file `i`
/// before sending it; a file it holds is not sent ([`Verification::Found`]).
/// `before_last_fragment(i)` runs just before the last fragment of file `i`'s data set is
/// sent; it must make durable that the peer may now hold the instance. If it fails, the
/// file is not completed and the association is given up.
pub async fn send_files_with(
    files: &[OutgoingFile],
    verify: &[Option<InstanceKeys>],
    to: &AeAddress,
    opts: &ScuOptions,
    before_last_fragment: &mut (dyn FnMut(usize) -> Result<(), String> + Send),
) -> Result<Vec<SendOutcome>, ScuError> {
    send_files_inner(files, verify, to, opts, before_last_fragment, None).await
}

/// What a C-MOVE SCP adds to sending files: the originator each C-STORE-RQ names, and a
/// report after each file so that it can send its pending responses and stop on C-CANCEL.
pub struct MoveSubOperations<'a> {
    /// The AE title that asked for the move (0000,1030).
    pub originator_ae: &'a str,
    /// The Message ID of its C-MOVE-RQ (0000,1031).
    pub originator_message_id: u16,
    /// Called with each file's index and outcome as soon as it is known; `false` stops the
    /// sending before the next file (the remaining files get no outcome).
    pub after_each: &'a mut (dyn FnMut(usize, &SendOutcome) -> bool + Send),
}

/// [`send_files`] for the C-MOVE SCP: the sub-operations of one C-MOVE over one association.
/// Returns one outcome per file attempted, in order, fewer than `files` when `after_each`
/// stopped it.
pub async fn send_files_moved(
    files: &[OutgoingFile],
    to: &AeAddress,
    opts: &ScuOptions,
    moved: &mut MoveSubOperations<'_>,
) -> Result<Vec<SendOutcome>, ScuError> {
    send_files_inner(files, &[], to, opts, &mut |_| Ok(()), Some(moved)).await
}

async fn send_files_inner(
    files: &[OutgoingFile],
    verify: &[Option<InstanceKeys>],
    to: &AeAddress,
    opts: &ScuOptions,
    before_last_fragment: &mut (dyn FnMut(usize) -> Result<(), String> + Send),
    mut moved: Option<&mut MoveSubOperations<'_>>,
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
    let wants_find = verify.iter().any(Option::is_some);
    if wants_find {
        contexts.push((
            STUDY_ROOT_FIND.to_string(),
            vec![EXPLICIT_VR_LE.to_string(), IMPLICIT_VR_LE.to_string()],
        ));
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
    let find_pc = negotiated
        .iter()
        .find(|pc| pc.abstract_syntax == STUDY_ROOT_FIND)
        .cloned();
    let mut outcomes = Vec::with_capacity(files.len());
    let mut message_id: u16 = 0;
    let mut next_id = || {
        message_id = message_id.wrapping_add(1).max(1);
        message_id
    };
    for (i, f) in files.iter().enumerate() {
        if i > 0
            && let Some(m) = moved.as_deref_mut()
            && let Some(last) = outcomes.last()
            && !(m.after_each)(i - 1, last)
        {
            break;
        }
        let outcome = |result: Result<u16, String>| SendOutcome {
            path: f.path.clone(),
            result,
            comment: None,
            unconfirmed: false,
            verified: Verification::NotAsked,
            permanent: false,
        };
        let mut verified = Verification::NotAsked;
        if let Some(keys) = verify.get(i).and_then(Option::as_ref) {
            verified = match &find_pc {
                None => {
                    Verification::Unavailable("the peer does not accept Study Root C-FIND".into())
                }
                Some(pc) => match find_instance(&mut assoc, pc, keys, f, next_id()).await {
                    Ok(true) => Verification::Found,
                    Ok(false) => Verification::NotFound,
                    Err(FindError::Status(message)) => Verification::Unavailable(message),
                    Err(FindError::Association(message)) => {
                        warn!(peer = %to, error = %message, "association failed during C-FIND");
                        for rest in &files[i..] {
                            outcomes.push(SendOutcome {
                                path: rest.path.clone(),
                                result: Err(format!("not sent: {message}")),
                                ..outcome(Ok(0))
                            });
                        }
                        return Ok(outcomes);
                    }
                },
            };
            if verified == Verification::Found {
                debug!(path = %f.path.display(), sop_instance_uid = %f.sop_instance_uid, "C-FIND: already at the peer");
                outcomes.push(SendOutcome {
                    verified,
                    ..outcome(Ok(status::SUCCESS))
                });
                continue;
            }
        }
        let Some(pc) = choose_syntax(f, &negotiated).cloned() else {
            outcomes.push(SendOutcome {
                verified,
                permanent: true,
                ..outcome(Err(format!(
                    "{to} accepted no presentation context for {} ({}) in {} ({})",
                    super::uid_name(&f.sop_class_uid),
                    f.sop_class_uid,
                    super::uid_name(&f.transfer_syntax),
                    f.transfer_syntax
                )))
            });
            continue;
        };
        let mut hook = || before_last_fragment(i);
        let originator = moved
            .as_deref()
            .map(|m| (m.originator_ae, m.originator_message_id));
        match store_one(&mut assoc, f, &pc, next_id(), originator, &mut hook).await {
            Ok((code, comment)) => {
                debug!(path = %f.path.display(), status = format_args!("{code:#06X}"), "C-STORE");
                outcomes.push(SendOutcome {
                    comment,
                    verified,
                    permanent: is_permanent_status(code),
                    ..outcome(Ok(code))
                })
            }
            Err(StoreOneError::File(message)) => outcomes.push(SendOutcome {
                verified,
                ..outcome(Err(message))
            }),
            Err(StoreOneError::Association {
                message,
                unconfirmed,
            }) => {
                warn!(peer = %to, error = %message, unconfirmed, "association failed during C-STORE");
                outcomes.push(SendOutcome {
                    unconfirmed,
                    verified,
                    ..outcome(Err(message.clone()))
                });
                for rest in &files[i + 1..] {
                    outcomes.push(SendOutcome {
                        path: rest.path.clone(),
                        ..outcome(Err(format!("not sent: {message}")))
                    });
                }
                return Ok(outcomes);
            }
        }
    }
    if let Some(m) = moved
        && outcomes.len() == files.len()
        && let Some(last) = outcomes.last()
    {
        (m.after_each)(files.len() - 1, last);
    }
    let _ = assoc.release().await;
    Ok(outcomes)
}

/// One side of an established association as [`store_one`] needs it, so that the same
/// sender serves the node's own associations (send, delivery, C-MOVE) and the C-GET SCP,
/// which sends its C-STORE sub-operations on the requester's association.
pub trait StoreLink {
    /// Largest PDU the receiving side accepts (its variable field length).
    fn max_pdu(&self) -> u32;
    /// Sends one PDU.
    fn send(&mut self, pdu: &Pdu) -> impl Future<Output = Result<(), String>> + Send;
    /// Receives the next command set addressed to this sender (the C-STORE-RSP).
    fn receive_command(&mut self) -> impl Future<Output = Result<Command, String>> + Send;
}

impl StoreLink for Association {
    fn max_pdu(&self) -> u32 {
        self.acceptor_max_pdu_length()
    }

    async fn send(&mut self, pdu: &Pdu) -> Result<(), String> {
        Association::send(self, pdu)
            .await
            .map_err(|e| e.to_string())
    }

    async fn receive_command(&mut self) -> Result<Command, String> {
        receive_command(self).await
    }
}

/// Why one C-STORE sub-operation on a [`StoreLink`] failed.
#[derive(Debug)]
pub enum StoreFailure {
    /// This file could not be sent (unreadable, cannot be re-encoded); the link is usable.
    File(String),
    /// The link is broken.
    Link(String),
}

/// Sends one stored file as a C-STORE-RQ on `pc` (its transfer syntax the stored one, or a
/// native one the file can be re-encoded to, see [`choose_syntax`]) and returns the status
/// and Error Comment of the response.
pub async fn store_on<L: StoreLink>(
    link: &mut L,
    f: &OutgoingFile,
    pc: &PresentationContextNegotiated,
    message_id: u16,
) -> Result<(u16, Option<String>), StoreFailure> {
    store_one(link, f, pc, message_id, None, &mut || Ok(()))
        .await
        .map_err(|e| match e {
            StoreOneError::File(m) => StoreFailure::File(m),
            StoreOneError::Association { message, .. } => StoreFailure::Link(message),
        })
}

/// Of the accepted presentation contexts `offered`, the one to send `f` on: its class in its
/// stored transfer syntax, else in a native little-endian syntax the file can be re-encoded
/// or decompressed to, Explicit VR before Implicit (Implicit VR loses the VRs of private
/// elements). `None`: the file cannot be sent on these contexts.
pub fn choose_syntax<'a>(
    f: &OutgoingFile,
    offered: &'a [PresentationContextNegotiated],
) -> Option<&'a PresentationContextNegotiated> {
    let with = |ts: &str| {
        offered
            .iter()
            .find(|pc| pc.abstract_syntax == f.sop_class_uid && pc.transfer_syntax == ts)
    };
    with(&f.transfer_syntax).or_else(|| {
        if has_native_fallback(&f.transfer_syntax) {
            with(EXPLICIT_VR_LE).or_else(|| with(IMPLICIT_VR_LE))
        } else {
            None
        }
    })
}

enum StoreOneError {
    /// This file could not be sent; the association is still usable.
    File(String),
    /// The association is broken.
    Association {
        /// What failed.
        message: String,
        /// The last fragment had been handed over (or was being handed over): the peer may
        /// hold the instance.
        unconfirmed: bool,
    },
}

fn broken(message: impl fmt::Display) -> StoreOneError {
    StoreOneError::Association {
        message: message.to_string(),
        unconfirmed: false,
    }
}

async fn store_one<L: StoreLink>(
    assoc: &mut L,
    f: &OutgoingFile,
    pc: &PresentationContextNegotiated,
    message_id: u16,
    originator: Option<(&str, u16)>,
    before_last_fragment: &mut (dyn FnMut() -> Result<(), String> + Send),
) -> Result<(u16, Option<String>), StoreOneError> {
    let max = assoc.max_pdu();
    let chunk = dimse::max_fragment(max);
    // Prepare the data set before the command, so that a local read error does not leave a
    // half-sent message on the association.
    let reencoded = if pc.transfer_syntax != f.transfer_syntax {
        // Decoding a compressed instance takes CPU time: off the runtime's worker threads.
        let (owned, ts) = (f.clone(), pc.transfer_syntax.clone());
        let bytes = tokio::task::spawn_blocking(move || reencode(&owned, &ts))
            .await
            .map_err(|e| StoreOneError::File(format!("re-encoding stopped: {e}")))?;
        Some(bytes.map_err(StoreOneError::File)?)
    } else {
        None
    };
    let mut file = std::fs::File::open(&f.path).map_err(|e| StoreOneError::File(e.to_string()))?;
    file.seek(SeekFrom::Start(f.data_offset))
        .map_err(|e| StoreOneError::File(e.to_string()))?;
    let mut cmd = dimse::c_store_rq(message_id, &f.sop_class_uid, &f.sop_instance_uid);
    if let Some((ae, id)) = originator {
        cmd = cmd.move_originator(ae, id);
    }
    send_command_on(assoc, pc.id, &cmd.encode())
        .await
        .map_err(broken)?;
    let mut handed_over = false;
    let mut send_piece =
        async |assoc: &mut L, data: Vec<u8>, is_last: bool| -> Result<(), StoreOneError> {
            if is_last {
                before_last_fragment()
                    .map_err(|e| broken(format!("before the last fragment: {e}")))?;
                handed_over = true;
            }
            let pdu = Pdu::PData {
                data: vec![dicom_ul::pdu::PDataValue {
                    presentation_context_id: pc.id,
                    value_type: PDataValueType::Data,
                    is_last,
                    data,
                }],
            };
            assoc
                .send(&pdu)
                .await
                .map_err(|message| StoreOneError::Association {
                    message,
                    unconfirmed: is_last,
                })
        };
    match reencoded {
        Some(bytes) => {
            let n = bytes.len().div_ceil(chunk).max(1);
            for (k, piece) in bytes.chunks(chunk).enumerate() {
                send_piece(assoc, piece.to_vec(), k + 1 == n).await?;
            }
            if bytes.is_empty() {
                send_piece(assoc, Vec::new(), true).await?;
            }
        }
        None => {
            // Stream the stored data set; one read ahead tells which piece is the last.
            let mut current = read_chunk(&mut file, chunk).map_err(broken)?;
            loop {
                let next = if current.len() == chunk {
                    read_chunk(&mut file, chunk).map_err(broken)?
                } else {
                    Vec::new()
                };
                let is_last = next.is_empty();
                if is_last && current.len() % 2 == 1 && f.transfer_syntax == DEFLATED {
                    // PS3.5 A.5: an odd-length deflated stream is padded with one zero byte.
                    current.push(0);
                }
                send_piece(assoc, current, is_last).await?;
                if is_last {
                    break;
                }
                current = next;
            }
        }
    }
    let unconfirmed = |message: String| StoreOneError::Association {
        message,
        unconfirmed: handed_over,
    };
    let rsp = assoc.receive_command().await.map_err(unconfirmed)?;
    let code = rsp.status().map_err(|e| unconfirmed(e.to_string()))?;
    Ok((code, rsp.error_comment()))
}

/// Why a C-FIND gave no answer.
enum FindError {
    /// The peer answered with a failure status (or an unusable identifier).
    Status(String),
    /// The association is broken.
    Association(String),
}

/// Asks the peer whether it holds `f` (Study Root, IMAGE level, by SOP Instance UID).
async fn find_instance(
    assoc: &mut Association,
    pc: &PresentationContextNegotiated,
    keys: &InstanceKeys,
    f: &OutgoingFile,
    message_id: u16,
) -> Result<bool, FindError> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(&pc.transfer_syntax)
        .ok_or_else(|| {
            FindError::Status(format!("unknown transfer syntax {}", pc.transfer_syntax))
        })?;
    let mut query = dicom_object::InMemDicomObject::new_empty();
    for (tag, vr, value) in [
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "IMAGE"),
        (
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            keys.study_instance_uid.as_str(),
        ),
        (
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            keys.series_instance_uid.as_str(),
        ),
        (tags::SOP_INSTANCE_UID, VR::UI, f.sop_instance_uid.as_str()),
    ] {
        query.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    }
    let mut identifier = Vec::new();
    query
        .write_dataset_with_ts(&mut identifier, ts)
        .map_err(|e| FindError::Status(format!("cannot encode the C-FIND identifier: {e}")))?;
    let broken = FindError::Association;
    send_command(
        assoc,
        pc.id,
        &dimse::c_find_rq(message_id, STUDY_ROOT_FIND).encode(),
    )
    .await
    .map_err(broken)?;
    let max = assoc.acceptor_max_pdu_length();
    for pdu in dimse::pdata_pdus(pc.id, PDataValueType::Data, &identifier, max, true) {
        assoc.send(&pdu).await.map_err(|e| broken(e.to_string()))?;
    }
    let mut found = false;
    loop {
        let (rsp, data) = receive_message(assoc).await.map_err(broken)?;
        let code = rsp.status().map_err(|e| broken(e.to_string()))?;
        match code {
            0xFF00 | 0xFF01 => {
                // A match. Count it only if it is this instance (a conforming SCP returns the
                // unique key it was asked for).
                let same = data
                    .and_then(|d| {
                        dicom_object::InMemDicomObject::read_dataset_with_ts(d.as_slice(), ts).ok()
                    })
                    .and_then(|o| {
                        o.element(tags::SOP_INSTANCE_UID)
                            .ok()
                            .and_then(|e| e.to_str().ok())
                            .map(|v| v.trim_end_matches(['\0', ' ']) == f.sop_instance_uid)
                    });
                found |= same.unwrap_or(true);
            }
            status::SUCCESS => return Ok(found),
            other => {
                return Err(FindError::Status(format!(
                    "C-FIND answered with status {other:#06X}{}",
                    rsp.error_comment()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                )));
            }
        }
    }
}

fn read_chunk(file: &mut std::fs::File, size: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(size);
    file.take(size as u64)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading the file: {e}"))?;
    Ok(buf)
}

/// Re-encodes a data set into a native little-endian transfer syntax: a compressed one by
/// decompressing it, an uncompressed one through dicom-object, a Deflated one by inflating it
/// (its inflated form is Explicit VR Little Endian, sent as it is or re-encoded to Implicit VR).
fn reencode(f: &OutgoingFile, ts_uid: &str) -> Result<Vec<u8>, String> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| format!("unknown transfer syntax {ts_uid}"))?;
    if crate::volume::transcode::can_decompress(&f.transfer_syntax) {
        return crate::volume::transcode::decompressed_data_set(
            &f.path,
            &f.transfer_syntax,
            ts_uid,
        )
        .map_err(|e| format!("cannot decompress: {}", e.reason()));
    }
    if f.transfer_syntax == DEFLATED {
        let inflated = inflate_data_set(f)?;
        if ts_uid == EXPLICIT_VR_LE {
            return Ok(inflated);
        }
        let explicit = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
        let obj =
            dicom_object::InMemDicomObject::read_dataset_with_ts(inflated.as_slice(), &explicit)
                .map_err(|e| format!("cannot read the inflated data set: {e}"))?;
        let mut out = Vec::new();
        obj.write_dataset_with_ts(&mut out, ts)
            .map_err(|e| format!("cannot re-encode to {ts_uid}: {e}"))?;
        return Ok(out);
    }
    let obj = dicom_object::open_file(&f.path)
        .map_err(|e| format!("cannot read for re-encoding: {e}"))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| format!("cannot re-encode to {ts_uid}: {e}"))?;
    Ok(out)
}

/// Inflation stops here: a local file is trusted more than a peer's, but a deflate bomb
/// must still not take the process's memory.
const MAX_INFLATED: u64 = 2 * 1024 * 1024 * 1024;

fn inflate_data_set(f: &OutgoingFile) -> Result<Vec<u8>, String> {
    let mut file = std::fs::File::open(&f.path).map_err(|e| e.to_string())?;
    file.seek(SeekFrom::Start(f.data_offset))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(std::io::BufReader::new(file))
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot inflate the data set: {e}"))?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(format!(
            "the data set inflates to more than {MAX_INFLATED} bytes"
        ));
    }
    Ok(out)
}

async fn send_command_on<L: StoreLink>(
    link: &mut L,
    pc_id: u8,
    bytes: &[u8],
) -> Result<(), String> {
    let max = link.max_pdu();
    for pdu in dimse::pdata_pdus(pc_id, PDataValueType::Command, bytes, max, true) {
        link.send(&pdu).await?;
    }
    Ok(())
}

async fn send_command(assoc: &mut Association, pc_id: u8, bytes: &[u8]) -> Result<(), String> {
    let max = assoc.acceptor_max_pdu_length();
    for pdu in dimse::pdata_pdus(pc_id, PDataValueType::Command, bytes, max, true) {
        assoc.send(&pdu).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Sends a message: its command set, then its data set when it has one.
pub(crate) async fn send_message(
    assoc: &mut Association,
    pc_id: u8,
    command: &[u8],
    data: Option<&[u8]>,
) -> Result<(), String> {
    send_command(assoc, pc_id, command).await?;
    if let Some(data) = data {
        let max = assoc.acceptor_max_pdu_length();
        for pdu in dimse::pdata_pdus(pc_id, PDataValueType::Data, data, max, true) {
            assoc.send(&pdu).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Receives PDUs until a complete command set has arrived.
pub(crate) async fn receive_command(assoc: &mut Association) -> Result<Command, String> {
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

/// Receives one DIMSE message: its command set and, when the command says one follows, its
/// data set. Both are capped: a peer cannot make the SCU accumulate without bound.
async fn receive_message(assoc: &mut Association) -> Result<(Command, Option<Vec<u8>>), String> {
    const MAX_IDENTIFIER: usize = 4 * 1024 * 1024;
    let mut command_bytes = Vec::new();
    let mut command: Option<Command> = None;
    let mut data = Vec::new();
    loop {
        let pdvs = match assoc.receive().await.map_err(|e| e.to_string())? {
            Pdu::PData { data } => data,
            Pdu::AbortRQ { source } => return Err(format!("aborted by the peer ({source:?})")),
            Pdu::ReleaseRQ => return Err("the peer released the association".into()),
            other => return Err(format!("unexpected PDU: {}", other.short_description())),
        };
        for pdv in pdvs {
            match (command.take(), &pdv.value_type) {
                (None, PDataValueType::Command) => {
                    command_bytes.extend_from_slice(&pdv.data);
                    if command_bytes.len() > dimse::MAX_COMMAND_SET {
                        return Err(format!(
                            "command set longer than {} bytes",
                            dimse::MAX_COMMAND_SET
                        ));
                    }
                    if pdv.is_last {
                        let c = Command::parse(&command_bytes).map_err(|e| e.to_string())?;
                        if !c.has_data_set().map_err(|e| e.to_string())? {
                            return Ok((c, None));
                        }
                        command = Some(c);
                    }
                }
                (Some(c), PDataValueType::Data) => {
                    data.extend_from_slice(&pdv.data);
                    if data.len() > MAX_IDENTIFIER {
                        return Err(format!("data set longer than {MAX_IDENTIFIER} bytes"));
                    }
                    if pdv.is_last {
                        return Ok((c, Some(data)));
                    }
                    command = Some(c);
                }
                (_, kind) => return Err(format!("unexpected {kind:?} fragment")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_statuses_that_cannot_change_are_permanent() {
        for code in [0x0122, 0xA900, 0xA9FF] {
            assert!(is_permanent_status(code), "{code:#06X}");
        }
        // Out of resources, cannot understand, warnings and success are not.
        for code in [0xA700, 0xA7FF, 0xC000, 0xB000, 0x0000, 0x0211] {
            assert!(!is_permanent_status(code), "{code:#06X}");
        }
    }

    fn pc(id: u8, class: &str, ts: &str) -> PresentationContextNegotiated {
        PresentationContextNegotiated {
            id,
            reason: PresentationContextResultReason::Acceptance,
            transfer_syntax: ts.into(),
            abstract_syntax: class.into(),
        }
    }

    fn stored(class: &str, ts: &str) -> OutgoingFile {
        OutgoingFile {
            path: PathBuf::from("x.dcm"),
            sop_class_uid: class.into(),
            sop_instance_uid: "1.2.3".into(),
            transfer_syntax: ts.into(),
            data_offset: 0,
        }
    }

    #[test]
    fn choose_syntax_takes_the_stored_syntax_first_then_native_explicit_then_implicit() {
        const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
        const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
        const JPEG_LOSSLESS: &str = "1.2.840.10008.1.2.4.70";
        const JPEG_LS: &str = "1.2.840.10008.1.2.4.80";
        const J2K: &str = "1.2.840.10008.1.2.4.90";
        const RLE: &str = "1.2.840.10008.1.2.5";
        const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";
        let all = [
            pc(1, MR, IMPLICIT_VR_LE),
            pc(3, MR, EXPLICIT_VR_LE),
            pc(5, MR, JPEG_LS),
            pc(7, CT, IMPLICIT_VR_LE),
        ];
        let id = |f: &OutgoingFile, offered: &[PresentationContextNegotiated]| {
            choose_syntax(f, offered).map(|pc| pc.id)
        };
        // Stored syntax accepted: sent as stored.
        assert_eq!(id(&stored(MR, JPEG_LS), &all), Some(5));
        // Compressed syntaxes the node decodes fall back to Explicit VR, else Implicit VR.
        for ts in [
            JPEG_LOSSLESS,
            J2K,
            RLE,
            JPEG_EXTENDED,
            "1.2.840.10008.1.2.4.50",
        ] {
            assert_eq!(id(&stored(MR, ts), &all), Some(3), "{ts}");
            assert_eq!(id(&stored(CT, ts), &all), Some(7), "{ts}");
        }
        assert_eq!(id(&stored(MR, IMPLICIT_VR_LE), &all), Some(1));
        assert_eq!(id(&stored(MR, DEFLATED), &all), Some(3));
        // Another class's context never carries it; an undecodable syntax has no fallback.
        assert_eq!(id(&stored("1.2.840.10008.5.1.4.1.1.7", J2K), &all), None);
        assert_eq!(id(&stored(MR, "1.2.840.10008.1.2.4.100"), &all), None);
        assert_eq!(id(&stored(CT, JPEG_LS), &[pc(9, CT, J2K)]), None);
    }

    #[test]
    fn full_message_names_each_cause_once() {
        let e = ScuError::Associate {
            peer: "DEST@127.0.0.1:1".into(),
            source: Box::new(RequestError::NoAcceptedPresentationContexts),
        };
        let m = e.full_message();
        assert_eq!(
            m.matches("no presentation contexts accepted").count(),
            1,
            "{m}"
        );
    }
}
