//! The Query/Retrieve SCU: C-FIND, C-MOVE and C-GET (PS3.4 C) over one association that
//! stays open for many requests.
//!
//! One association for many requests because that is how navigation systems and PACS use a
//! node (and what the latency benchmarks measure): connecting per query would measure TCP and
//! negotiation instead of matching. The `find`, `move` and `get` commands use the same API.
//!
//! Everything a peer sends is bounded: command sets by [`dimse::MAX_COMMAND_SET`], response
//! identifiers by [`QrAssociation::set_max_identifier`], C-GET instances by
//! [`QrAssociation::set_max_instance`] (written to disk as they arrive, never held in
//! memory), each wait by the association's timeout. A peer that breaks the protocol gets a
//! typed error ([`QrError`]) and an abort, never a panic.
//!
//! Cancelling ([`Cancel`]) sends a C-CANCEL-RQ and then waits at most [`CANCEL_GRACE`] for
//! the final response (PS3.7 9.3.2.3 lets the peer finish the sub-operation in progress);
//! a peer that does not answer by then is aborted.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, UidType};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::Pdu;
use dicom_ul::pdu::{
    PDataValue, PDataValueType, PresentationContextNegotiated, PresentationContextResultReason,
    RequestorRoles,
};
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};

use super::Printable;
use super::dimse::{self, Command, field, status};
use super::request::{Association, Proposal, RequestError};
use super::scu::{AeAddress, ScuError, ScuOptions};
use super::{ACCEPTED_TRANSFER_SYNTAXES, EXPLICIT_VR_LE, IMPLICIT_VR_LE};

/// How long a cancelled operation may take to send its final response.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Default cap on one response identifier: a C-FIND match is a few hundred bytes; a C-MOVE
/// final response's Failed SOP Instance UID List of 10,000 UIDs is 650 KB.
pub const DEFAULT_MAX_IDENTIFIER: usize = 4 * 1024 * 1024;

/// Default cap on one instance received by C-GET (a large enhanced multi-frame is a few
/// hundred MB).
pub const DEFAULT_MAX_INSTANCE: u64 = 4 * 1024 * 1024 * 1024;

/// Presentation context IDs are odd numbers 1-255 (PS3.8 9.3.2.2).
const MAX_CONTEXTS: usize = 128;

pub use crate::query::{Level, Model, Service};

/// Why a Q/R operation failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum QrError {
    /// The association could not be established, or the peer accepts none of what was
    /// proposed (as for `send` and `echo`).
    #[error(transparent)]
    Associate(#[from] ScuError),
    /// The association lacks an accepted context for the SOP class.
    #[error("{peer} did not accept {what}")]
    NotAccepted {
        /// The peer.
        peer: String,
        /// The SOP class.
        what: String,
    },
    /// A `-k` key that names no attribute or whose value does not fit its VR.
    #[error("bad key `{key}`: {message}")]
    Key {
        /// The key as given.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The identifier could not be encoded.
    #[error("cannot encode the identifier: {0}")]
    Encode(String),
    /// No response within the timeout.
    #[error("no answer from {peer} within {seconds} s")]
    Timeout {
        /// The peer.
        peer: String,
        /// The timeout.
        seconds: u64,
    },
    /// The association broke, or the peer sent something malformed or out of place (the
    /// association is aborted).
    #[error("association with {peer}: {message}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What went wrong.
        message: String,
    },
    /// The peer answered a C-FIND with a failure or refusal status.
    #[error("C-FIND answered with status {status:#06X}{}", comment.as_deref().map(|c| format!(": {}", Printable(c))).unwrap_or_default())]
    Status {
        /// The status.
        status: u16,
        /// Its Error Comment.
        comment: Option<String>,
    },
    /// Cancelled, and the peer did not send a final response within [`CANCEL_GRACE`].
    #[error("cancelled; {peer} did not confirm within {} s", CANCEL_GRACE.as_secs())]
    Cancelled {
        /// The peer.
        peer: String,
    },
    /// The C-GET output folder cannot be used.
    #[error("{path}: {source}")]
    Output {
        /// The folder or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl QrError {
    /// True when the failure is a peer that did not answer in time (at connection or later).
    pub fn is_timeout(&self) -> bool {
        match self {
            QrError::Timeout { .. } => true,
            QrError::Associate(ScuError::Associate { source, .. }) => {
                matches!(**source, RequestError::Timeout(_))
            }
            _ => false,
        }
    }
}

/// A key of the identifier: `Tag=Value` (a matching key) or `Tag` (a return key, empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The attribute.
    pub tag: Tag,
    /// Its VR, from the standard dictionary.
    pub vr: VR,
    /// The value as given (`None`: empty, i.e. universal matching or a return key).
    pub value: Option<String>,
}

impl FromStr for Key {
    type Err = QrError;

    /// `PatientName=SMITH*`, `0010,0010=SMITH*`, `(0010,0010)`, `StudyDate=20240101-20241231`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |message: &str| QrError::Key {
            key: s.to_string(),
            message: message.to_string(),
        };
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.to_string())),
            None => (s.trim(), None),
        };
        let entry = StandardDataDictionary
            .by_expr(name)
            .ok_or_else(|| bad("not a keyword or gggg,eeee tag of the standard dictionary"))?;
        let tag = if name.contains(',') {
            // by_expr found the entry of a range (e.g. repeating groups): keep the tag given.
            name.parse::<Tag>().map_err(|_| bad("not a tag"))?
        } else {
            entry.tag()
        };
        let vr = entry.vr().relaxed();
        if tag.group() == 0x0002 || tag.group() == 0x0000 || tag == tags::PIXEL_DATA {
            return Err(bad(
                "command, file meta and pixel data elements are no keys",
            ));
        }
        if vr == VR::SQ && value.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(bad(
                "a sequence key can only be asked for empty (a return key)",
            ));
        }
        if let Some(v) = &value {
            if v.len() > 64 * 1024 {
                return Err(bad("value longer than 64 KiB"));
            }
            // Parse now so that a bad number is a usage error, not a failure mid-association.
            primitive(vr, v).map_err(|m| bad(&m))?;
        }
        Ok(Key {
            tag,
            vr,
            value: value.filter(|v| !v.is_empty()),
        })
    }
}

/// A value as the VR wants it (text for the string VRs, numbers for the binary ones).
fn primitive(vr: VR, v: &str) -> Result<PrimitiveValue, String> {
    fn parse<T: FromStr>(v: &str) -> Result<Vec<T>, String> {
        v.split('\\')
            .map(|x| {
                x.trim()
                    .parse::<T>()
                    .map_err(|_| format!("`{x}` is not a number"))
            })
            .collect()
    }
    if v.is_empty() {
        return Ok(PrimitiveValue::Empty);
    }
    Ok(match vr {
        VR::US => PrimitiveValue::U16(parse(v)?.into()),
        VR::SS => PrimitiveValue::I16(parse(v)?.into()),
        VR::UL => PrimitiveValue::U32(parse(v)?.into()),
        VR::SL => PrimitiveValue::I32(parse(v)?.into()),
        VR::UV => PrimitiveValue::U64(parse(v)?.into()),
        VR::SV => PrimitiveValue::I64(parse(v)?.into()),
        VR::FL => PrimitiveValue::F32(parse(v)?.into()),
        VR::FD => PrimitiveValue::F64(parse(v)?.into()),
        VR::AT | VR::OB | VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::UN => {
            return Err(format!("{vr:?} values cannot be given as text"));
        }
        // Text VRs: multiple values stay separated by backslashes, as on the wire.
        _ => PrimitiveValue::from(v),
    })
}

/// Builds an identifier: Query/Retrieve Level and the keys (a later key for the same tag
/// replaces an earlier one; an explicit `QueryRetrieveLevel` key wins over `level`).
/// `charset`, when given, becomes Specific Character Set (0008,0005); without it, values that
/// are not all ASCII are sent as UTF-8 (`ISO_IR 192`), the one set every value fits.
pub fn identifier(level: Level, keys: &[Key], charset: Option<&str>) -> InMemDicomObject {
    let non_ascii = keys
        .iter()
        .any(|k| k.value.as_deref().is_some_and(|v| !v.is_ascii()));
    let charset = charset.or(non_ascii.then_some("ISO_IR 192"));
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::QUERY_RETRIEVE_LEVEL,
        VR::CS,
        PrimitiveValue::from(level.code()),
    ));
    if let Some(cs) = charset {
        obj.put(DataElement::new(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            PrimitiveValue::from(cs),
        ));
    }
    for k in keys {
        let value = match (&k.value, k.vr) {
            (None, VR::SQ) => {
                obj.put(DataElement::new(
                    k.tag,
                    VR::SQ,
                    dicom_core::value::DataSetSequence::<InMemDicomObject>::empty(),
                ));
                continue;
            }
            (None, _) => PrimitiveValue::Empty,
            // Checked by `Key::from_str`; a key built by hand with a bad value goes empty.
            (Some(v), vr) => primitive(vr, v).unwrap_or(PrimitiveValue::Empty),
        };
        obj.put(DataElement::new(k.tag, k.vr, value));
    }
    obj
}

/// Ctrl-C (or any caller's reason) to stop an operation: a C-CANCEL-RQ is sent.
#[derive(Debug, Clone)]
pub struct Cancel(Option<watch::Receiver<bool>>);

impl Cancel {
    /// An operation nobody cancels.
    pub fn never() -> Cancel {
        Cancel(None)
    }

    /// A cancel signal and its trigger (`send(true)` cancels).
    pub fn channel() -> (watch::Sender<bool>, Cancel) {
        let (tx, rx) = watch::channel(false);
        (tx, Cancel(Some(rx)))
    }

    /// Completes once cancelled; never when the trigger is gone without cancelling.
    async fn requested(&mut self) {
        if let Some(rx) = &mut self.0
            && rx.wait_for(|v| *v).await.is_ok()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

/// What a C-FIND ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindOutcome {
    /// Matches received.
    pub matches: usize,
    /// The operation ended by a C-CANCEL (Ctrl-C, or the callback asked to stop).
    pub cancelled: bool,
}

/// What a C-MOVE or C-GET ended with: the final response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetrieveOutcome {
    /// Status of the final response.
    pub status: u16,
    /// Its Error Comment.
    pub comment: Option<String>,
    /// Sub-operations (the final response's counts, else the last pending response's).
    pub remaining: Option<u16>,
    /// Completed sub-operations.
    pub completed: u16,
    /// Failed sub-operations.
    pub failed: u16,
    /// Sub-operations completed with a warning.
    pub warning: u16,
    /// Failed SOP Instance UID List (0008,0058) of the final response.
    pub failed_uids: Vec<String>,
    /// A C-CANCEL was sent.
    pub cancelled: bool,
    /// C-GET: the instances written into the folder.
    pub stored: Vec<PathBuf>,
    /// C-GET: instances received but not kept (SOP Instance UID, why).
    pub refused: Vec<(String, String)>,
}

impl RetrieveOutcome {
    /// Success (0x0000) with no failed sub-operation and nothing refused here.
    pub fn is_success(&self) -> bool {
        self.status == status::SUCCESS && self.failed == 0 && self.refused.is_empty()
    }
}

/// Where the bytes of the current data set go.
enum Sink<'a> {
    Memory(&'a mut Vec<u8>, usize),
    File(
        &'a mut std::io::BufWriter<tempfile::NamedTempFile>,
        u64,
        u64,
    ),
    Discard,
}

/// The operation in progress: its request's message ID and context, and whether it was
/// cancelled.
struct Op {
    message_id: u16,
    pc_id: u8,
    cancel_deadline: Option<Instant>,
}

/// An association for Query/Retrieve requests, open until [`QrAssociation::release`].
pub struct QrAssociation {
    assoc: Association,
    peer: AeAddress,
    next_message_id: u16,
    pending: VecDeque<PDataValue>,
    max_identifier: usize,
    max_instance: u64,
    broken: bool,
}

/// Storage SOP classes proposed for C-GET, first in the order of this list, then every other
/// non-retired storage class of the dictionary until the 128 presentation contexts are used.
/// First the ones this node makes and reads, then common images and documents.
const PREFERRED_STORAGE: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.104.3", // Encapsulated STL
    "1.2.840.10008.5.1.4.1.1.4",     // MR
    "1.2.840.10008.5.1.4.1.1.2",     // CT
    "1.2.840.10008.5.1.4.1.1.4.1",   // Enhanced MR
    "1.2.840.10008.5.1.4.1.1.2.1",   // Enhanced CT
    "1.2.840.10008.5.1.4.1.1.7",     // Secondary Capture
    "1.2.840.10008.5.1.4.1.1.104.1", // Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.88.22", // Enhanced SR
    "1.2.840.10008.5.1.4.1.1.481.3", // RT Structure Set
    "1.2.840.10008.5.1.4.1.1.128",   // PET
    "1.2.840.10008.5.1.4.1.1.1",     // CR
    "1.2.840.10008.5.1.4.1.1.1.1",   // Digital X-Ray (presentation)
    "1.2.840.10008.5.1.4.1.1.12.1",  // XA
    "1.2.840.10008.5.1.4.1.1.6.1",   // US
    "1.2.840.10008.5.1.4.1.1.66.4",  // Segmentation
    "1.2.840.10008.5.1.4.1.1.11.1",  // Grayscale Softcopy Presentation State
];

/// The storage classes proposed for C-GET, at most `room` of them: [`PREFERRED_STORAGE`],
/// then the dictionary's non-retired classes of the `1.2.840.10008.5.1.4.1.1` arc (where
/// every image and document class lives) in numeric order. The dictionary has about 190 of
/// them and an association carries at most 128 contexts, so the rarest are left out.
/// (dicom-dictionary-std offers lookups only, no listing: the arc is probed.)
pub fn get_storage_classes(room: usize) -> Vec<String> {
    use dicom_core::dictionary::UidDictionary;
    let dict = dicom_dictionary_std::StandardSopClassDictionary;
    let mut out: Vec<String> = PREFERRED_STORAGE.iter().map(|s| s.to_string()).collect();
    let consider = |uid: String, out: &mut Vec<String>| {
        let known = dict
            .by_uid(&uid)
            .is_some_and(|e| e.r#type == UidType::SopClass && !e.retired);
        if known && super::is_storage_sop_class(&uid) && !out.contains(&uid) {
            out.push(uid);
        }
    };
    'probe: for a in 1..=1000u32 {
        let base = format!("1.2.840.10008.5.1.4.1.1.{a}");
        consider(base.clone(), &mut out);
        for b in 1..=9u32 {
            consider(format!("{base}.{b}"), &mut out);
            for c in 1..=9u32 {
                consider(format!("{base}.{b}.{c}"), &mut out);
            }
            if out.len() >= room {
                break 'probe;
            }
        }
    }
    out.truncate(room);
    out
}

impl QrAssociation {
    /// Requests an association for `services` in the given models (Explicit and Implicit VR
    /// Little Endian). When C-GET is among them, also one context per storage class of
    /// [`get_storage_classes`], with every syntax the node accepts and the SCP role.
    pub async fn connect(
        to: &AeAddress,
        opts: &ScuOptions,
        models: &[Model],
        services: &[Service],
    ) -> Result<QrAssociation, QrError> {
        let mut contexts: Vec<(String, Vec<String>)> = Vec::new();
        for m in models {
            for s in services {
                contexts.push((
                    m.sop_class(*s).to_string(),
                    vec![EXPLICIT_VR_LE.into(), IMPLICIT_VR_LE.into()],
                ));
            }
        }
        let mut roles = Vec::new();
        if services.contains(&Service::Get) {
            let syntaxes: Vec<String> = ACCEPTED_TRANSFER_SYNTAXES
                .iter()
                .map(|s| s.to_string())
                .collect();
            for class in get_storage_classes(MAX_CONTEXTS - contexts.len()) {
                roles.push((
                    class.clone(),
                    RequestorRoles {
                        scu: false,
                        scp: true,
                    },
                ));
                contexts.push((class, syntaxes.clone()));
            }
        }
        let proposal = Proposal {
            calling_ae: &opts.calling_ae,
            called_ae: &to.ae_title,
            max_pdu: opts.max_pdu_length,
            contexts: &contexts,
            timeout: opts.timeout,
            tls: super::scu::tls_for(to, opts)?,
        };
        let assoc = Association::request_with_roles(&to.address, &proposal, &roles)
            .await
            .map_err(
                |source| match super::scu::associate_error(to, &contexts, source) {
                    // `associate_error` leaves out the C-FIND class `send` proposes on the side.
                    ScuError::NoContext { peer, what } if what.is_empty() => ScuError::NoContext {
                        peer,
                        what: contexts
                            .iter()
                            .map(|(c, _)| format!("{} ({c})", super::uid_name(c)))
                            .collect::<Vec<_>>()
                            .join(", "),
                    },
                    other => other,
                },
            )?;
        Ok(QrAssociation {
            assoc,
            peer: to.clone(),
            next_message_id: 1,
            pending: VecDeque::new(),
            max_identifier: DEFAULT_MAX_IDENTIFIER,
            max_instance: DEFAULT_MAX_INSTANCE,
            broken: false,
        })
    }

    /// Caps each response identifier (bytes).
    pub fn set_max_identifier(&mut self, bytes: usize) {
        self.max_identifier = bytes;
    }

    /// Caps each instance received by C-GET (bytes).
    pub fn set_max_instance(&mut self, bytes: u64) {
        self.max_instance = bytes;
    }

    /// The presentation contexts as the peer answered them.
    pub fn presentation_contexts(&self) -> &[PresentationContextNegotiated] {
        self.assoc.presentation_contexts()
    }

    /// A-RELEASE (or A-ABORT when an earlier error left the association unusable).
    pub async fn release(mut self) {
        if self.broken {
            let _ = self.assoc.abort().await;
        } else if let Err(e) = self.assoc.release().await {
            debug!(peer = %self.peer, error = %e, "release failed");
        }
    }

    fn protocol(&self, message: impl Into<String>) -> QrError {
        QrError::Protocol {
            peer: self.peer.to_string(),
            message: message.into(),
        }
    }

    fn request_error(&self, e: RequestError) -> QrError {
        match e {
            RequestError::Timeout(seconds) => QrError::Timeout {
                peer: self.peer.to_string(),
                seconds,
            },
            other => self.protocol(other.to_string()),
        }
    }

    fn context(&self, sop_class: &str) -> Result<(u8, String), QrError> {
        self.assoc
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.abstract_syntax == sop_class
                    && pc.reason == PresentationContextResultReason::Acceptance
            })
            .map(|pc| (pc.id, pc.transfer_syntax.clone()))
            .ok_or_else(|| QrError::NotAccepted {
                peer: self.peer.to_string(),
                what: format!("{} ({sop_class})", super::uid_name(sop_class)),
            })
    }

    fn next_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }

    /// Sends a request's command set and identifier.
    async fn send_request(
        &mut self,
        pc_id: u8,
        ts_uid: &str,
        command: &[u8],
        ident: &InMemDicomObject,
    ) -> Result<(), QrError> {
        let ts = TransferSyntaxRegistry
            .get(ts_uid)
            .ok_or_else(|| self.protocol(format!("unknown transfer syntax {ts_uid}")))?;
        let mut bytes = Vec::new();
        ident
            .write_dataset_with_ts(&mut bytes, ts)
            .map_err(|e| QrError::Encode(e.to_string()))?;
        self.send_part(pc_id, PDataValueType::Command, command)
            .await?;
        self.send_part(pc_id, PDataValueType::Data, &bytes).await
    }

    async fn send_part(
        &mut self,
        pc_id: u8,
        kind: PDataValueType,
        bytes: &[u8],
    ) -> Result<(), QrError> {
        let max = self.assoc.acceptor_max_pdu_length();
        for pdu in dimse::pdata_pdus(pc_id, kind, bytes, max, true) {
            if let Err(e) = self.assoc.send(&pdu).await {
                self.broken = true;
                return Err(self.request_error(e));
            }
        }
        Ok(())
    }

    /// Sends the C-CANCEL-RQ for `op` (once) and starts its grace period.
    async fn cancel(&mut self, op: &mut Op) -> Result<(), QrError> {
        if op.cancel_deadline.is_some() {
            return Ok(());
        }
        debug!(peer = %self.peer, message_id = op.message_id, "sending C-CANCEL-RQ");
        op.cancel_deadline = Some(Instant::now() + CANCEL_GRACE);
        let rq = dimse::c_cancel_rq(op.message_id).encode();
        self.send_part(op.pc_id, PDataValueType::Command, &rq).await
    }

    /// The next PDV from the peer; sends the C-CANCEL when `cancel` fires while waiting.
    async fn next_pdv(&mut self, op: &mut Op, cancel: &mut Cancel) -> Result<PDataValue, QrError> {
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Ok(p);
            }
            let wait = match op.cancel_deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => self.assoc.timeout(),
            };
            enum Woke {
                Readable(Result<(), RequestError>),
                Expired,
                Cancel,
            }
            let woke = tokio::select! {
                r = tokio::time::timeout(wait, self.assoc.readable()) => match r {
                    Ok(r) => Woke::Readable(r),
                    Err(_) => Woke::Expired,
                },
                _ = cancel.requested(), if op.cancel_deadline.is_none() => Woke::Cancel,
            };
            match woke {
                Woke::Cancel => {
                    self.cancel(op).await?;
                    continue;
                }
                Woke::Expired => {
                    self.broken = true;
                    return Err(if op.cancel_deadline.is_some() {
                        QrError::Cancelled {
                            peer: self.peer.to_string(),
                        }
                    } else {
                        QrError::Timeout {
                            peer: self.peer.to_string(),
                            seconds: wait.as_secs(),
                        }
                    });
                }
                Woke::Readable(Err(e)) => {
                    self.broken = true;
                    return Err(self.request_error(e));
                }
                Woke::Readable(Ok(())) => {}
            }
            let pdu = match self.assoc.receive().await {
                Ok(p) => p,
                Err(e) => {
                    self.broken = true;
                    return Err(self.request_error(e));
                }
            };
            match pdu {
                Pdu::PData { data } => self.pending.extend(data),
                Pdu::AbortRQ { source } => {
                    self.broken = true;
                    return Err(self.protocol(format!("aborted by the peer ({source:?})")));
                }
                other => {
                    self.broken = true;
                    return Err(self.protocol(format!(
                        "unexpected {} during an operation",
                        other.short_description()
                    )));
                }
            }
        }
    }

    /// The next command set and the context it came on.
    async fn read_command(
        &mut self,
        op: &mut Op,
        cancel: &mut Cancel,
    ) -> Result<(u8, Command), QrError> {
        let mut bytes = Vec::new();
        loop {
            let pdv = self.next_pdv(op, cancel).await?;
            if pdv.value_type != PDataValueType::Command {
                self.broken = true;
                return Err(self.protocol("a data fragment where a command set was due"));
            }
            bytes.extend_from_slice(&pdv.data);
            if bytes.len() > dimse::MAX_COMMAND_SET {
                self.broken = true;
                return Err(self.protocol(format!(
                    "command set longer than {} bytes",
                    dimse::MAX_COMMAND_SET
                )));
            }
            if pdv.is_last {
                return match Command::parse(&bytes) {
                    Ok(c) => Ok((pdv.presentation_context_id, c)),
                    Err(e) => {
                        self.broken = true;
                        Err(self.protocol(e.to_string()))
                    }
                };
            }
        }
    }

    /// Reads the data set that follows a command into `sink`.
    async fn read_data(
        &mut self,
        op: &mut Op,
        cancel: &mut Cancel,
        pc_id: u8,
        mut sink: Sink<'_>,
    ) -> Result<Result<(), String>, QrError> {
        // The first local failure (too large, disk full) is kept; the rest of the data set is
        // still read so that the association stays usable.
        let mut failed: Option<String> = None;
        loop {
            let pdv = self.next_pdv(op, cancel).await?;
            if pdv.value_type != PDataValueType::Data || pdv.presentation_context_id != pc_id {
                self.broken = true;
                return Err(self.protocol("a data set fragment was due"));
            }
            if failed.is_none() {
                match &mut sink {
                    Sink::Memory(buf, cap) => {
                        if buf.len() + pdv.data.len() > *cap {
                            self.broken = true;
                            return Err(self
                                .protocol(format!("response identifier longer than {cap} bytes")));
                        }
                        buf.extend_from_slice(&pdv.data);
                    }
                    Sink::File(w, written, cap) => {
                        *written += pdv.data.len() as u64;
                        if *written > *cap {
                            failed = Some(format!("instance larger than {cap} bytes"));
                        } else if let Err(e) = w.write_all(&pdv.data) {
                            failed = Some(format!("writing: {e}"));
                        }
                    }
                    Sink::Discard => {}
                }
            }
            if pdv.is_last {
                return Ok(failed.map_or(Ok(()), Err));
            }
        }
    }

    fn decode(&self, bytes: &[u8], ts_uid: &str) -> Result<InMemDicomObject, QrError> {
        let ts = TransferSyntaxRegistry
            .get(ts_uid)
            .ok_or_else(|| self.protocol(format!("unknown transfer syntax {ts_uid}")))?;
        InMemDicomObject::read_dataset_with_ts(bytes, ts)
            .map_err(|e| self.protocol(format!("malformed response identifier: {e}")))
    }

    /// Checks that a response answers `op` with the expected command field.
    fn check_response(&mut self, cmd: &Command, op: &Op, field: u16) -> Result<u16, QrError> {
        let ok = cmd.command_field().ok() == Some(field)
            && cmd.message_id_responded_to().ok() == Some(op.message_id);
        match (ok, cmd.status()) {
            (true, Ok(s)) => Ok(s),
            _ => {
                self.broken = true;
                Err(self.protocol(format!(
                    "unexpected command (field {:#06X}) where a response to message {} was due",
                    cmd.command_field().unwrap_or(0),
                    op.message_id
                )))
            }
        }
    }

    /// C-FIND: every match goes to `on_match` as it arrives; when it returns false, the
    /// operation is cancelled (the rest of the matches are not passed on).
    pub async fn find_with(
        &mut self,
        model: Model,
        ident: &InMemDicomObject,
        cancel: &mut Cancel,
        on_match: &mut (dyn FnMut(InMemDicomObject) -> bool + Send),
    ) -> Result<FindOutcome, QrError> {
        let span = info_span!("c_find", peer = %self.peer, message_id = self.next_message_id);
        self.find_inner(model, ident, cancel, on_match)
            .instrument(span)
            .await
    }

    async fn find_inner(
        &mut self,
        model: Model,
        ident: &InMemDicomObject,
        cancel: &mut Cancel,
        on_match: &mut (dyn FnMut(InMemDicomObject) -> bool + Send),
    ) -> Result<FindOutcome, QrError> {
        let sop_class = model.sop_class(Service::Find);
        let (pc_id, ts) = self.context(sop_class)?;
        let mut op = Op {
            message_id: self.next_id(),
            pc_id,
            cancel_deadline: None,
        };
        let rq = dimse::c_find_rq(op.message_id, sop_class).encode();
        self.send_request(pc_id, &ts, &rq, ident).await?;
        let mut matches = 0usize;
        let mut stopped = false;
        loop {
            let (rpc, cmd) = self.read_command(&mut op, cancel).await?;
            let code = self.check_response(&cmd, &op, field::C_FIND_RSP)?;
            let has_data = cmd.has_data_set().unwrap_or(false);
            let mut data = Vec::new();
            if has_data {
                let cap = self.max_identifier;
                self.read_data(&mut op, cancel, rpc, Sink::Memory(&mut data, cap))
                    .await?
                    .map_err(|m| self.protocol(m))?;
            }
            match code {
                0xFF00 | 0xFF01 => {
                    if !has_data {
                        self.broken = true;
                        return Err(self.protocol("a pending C-FIND response without identifier"));
                    }
                    let obj = self.decode(&data, &ts)?;
                    matches += 1;
                    if !stopped && op.cancel_deadline.is_none() && !on_match(obj) {
                        stopped = true;
                        self.cancel(&mut op).await?;
                    }
                }
                status::SUCCESS | 0xFE00 => {
                    return Ok(FindOutcome {
                        matches,
                        cancelled: code == 0xFE00 || op.cancel_deadline.is_some(),
                    });
                }
                other => {
                    return Err(QrError::Status {
                        status: other,
                        comment: cmd.error_comment(),
                    });
                }
            }
        }
    }

    /// C-FIND, collecting at most `limit` matches (then the operation is cancelled).
    pub async fn find(
        &mut self,
        model: Model,
        ident: &InMemDicomObject,
        limit: usize,
    ) -> Result<Vec<InMemDicomObject>, QrError> {
        let mut out = Vec::new();
        self.find_with(model, ident, &mut Cancel::never(), &mut |m| {
            out.push(m);
            out.len() < limit
        })
        .await?;
        Ok(out)
    }

    /// C-MOVE of what `ident` names to the AE title `destination` (which the peer must know).
    pub async fn move_to(
        &mut self,
        model: Model,
        ident: &InMemDicomObject,
        destination: &str,
        cancel: &mut Cancel,
    ) -> Result<RetrieveOutcome, QrError> {
        let sop_class = model.sop_class(Service::Move);
        let (pc_id, ts) = self.context(sop_class)?;
        let message_id = self.next_id();
        let rq = dimse::c_move_rq(message_id, sop_class, destination).encode();
        let span = info_span!("c_move", peer = %self.peer, message_id, destination = %Printable(destination));
        self.retrieve(pc_id, &ts, message_id, &rq, ident, None, cancel)
            .instrument(span)
            .await
    }

    /// C-GET of what `ident` names: the instances arrive as C-STORE sub-operations on this
    /// association and are written durably into `dir` as `<SOP Instance UID>.dcm`.
    pub async fn get(
        &mut self,
        model: Model,
        ident: &InMemDicomObject,
        dir: &Path,
        cancel: &mut Cancel,
    ) -> Result<RetrieveOutcome, QrError> {
        std::fs::create_dir_all(dir).map_err(|source| QrError::Output {
            path: dir.to_path_buf(),
            source,
        })?;
        let sop_class = model.sop_class(Service::Get);
        let (pc_id, ts) = self.context(sop_class)?;
        let message_id = self.next_id();
        let rq = dimse::c_get_rq(message_id, sop_class).encode();
        let span = info_span!("c_get", peer = %self.peer, message_id);
        self.retrieve(pc_id, &ts, message_id, &rq, ident, Some(dir), cancel)
            .instrument(span)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn retrieve(
        &mut self,
        pc_id: u8,
        ts: &str,
        message_id: u16,
        rq: &[u8],
        ident: &InMemDicomObject,
        get_into: Option<&Path>,
        cancel: &mut Cancel,
    ) -> Result<RetrieveOutcome, QrError> {
        let rsp_field = if get_into.is_some() {
            field::C_GET_RSP
        } else {
            field::C_MOVE_RSP
        };
        let mut op = Op {
            message_id,
            pc_id,
            cancel_deadline: None,
        };
        self.send_request(pc_id, ts, rq, ident).await?;
        let mut out = RetrieveOutcome::default();
        loop {
            let (rpc, cmd) = self.read_command(&mut op, cancel).await?;
            if let (Some(dir), Ok(field::C_STORE_RQ)) = (get_into, cmd.command_field()) {
                self.store_sub_operation(&mut op, cancel, rpc, &cmd, dir, &mut out)
                    .await?;
                continue;
            }
            let code = self.check_response(&cmd, &op, rsp_field)?;
            let mut data = Vec::new();
            if cmd.has_data_set().unwrap_or(false) {
                let cap = self.max_identifier;
                self.read_data(&mut op, cancel, rpc, Sink::Memory(&mut data, cap))
                    .await?
                    .map_err(|m| self.protocol(m))?;
            }
            let [remaining, completed, failed, warning] = cmd.sub_operations();
            out.remaining = remaining;
            out.completed = completed.unwrap_or(out.completed);
            out.failed = failed.unwrap_or(out.failed);
            out.warning = warning.unwrap_or(out.warning);
            if matches!(code, 0xFF00 | 0xFF01) {
                continue;
            }
            out.status = code;
            out.comment = cmd.error_comment();
            out.cancelled = op.cancel_deadline.is_some();
            if !data.is_empty() {
                // A final identifier holds at most the Failed SOP Instance UID List; one that
                // does not decode loses the list, not the counts.
                match self.decode(&data, ts) {
                    Ok(obj) => {
                        if let Some(list) = obj
                            .element(tags::FAILED_SOP_INSTANCE_UID_LIST)
                            .ok()
                            .and_then(|e| e.to_str().ok())
                        {
                            out.failed_uids = list
                                .split('\\')
                                .map(|u| u.trim_end_matches(['\0', ' ']).to_string())
                                .filter(|u| !u.is_empty())
                                .collect();
                        }
                    }
                    Err(e) => {
                        warn!(peer = %self.peer, error = %e, "final response identifier unreadable")
                    }
                }
            }
            return Ok(out);
        }
    }

    /// Receives one C-STORE sub-operation of a C-GET into `dir` and answers it.
    async fn store_sub_operation(
        &mut self,
        op: &mut Op,
        cancel: &mut Cancel,
        pc_id: u8,
        cmd: &Command,
        dir: &Path,
        out: &mut RetrieveOutcome,
    ) -> Result<(), QrError> {
        let class = cmd.affected_sop_class_uid().unwrap_or_default();
        let instance = cmd.affected_sop_instance_uid().unwrap_or_default();
        let (Ok(store_id), Ok(true)) = (cmd.message_id(), cmd.has_data_set()) else {
            self.broken = true;
            return Err(self.protocol("a C-STORE-RQ without message ID or data set"));
        };
        let context = self
            .assoc
            .presentation_contexts()
            .iter()
            .find(|pc| pc.id == pc_id && pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| (pc.abstract_syntax.clone(), pc.transfer_syntax.clone()));
        let mut refuse: Option<(u16, String)> = None;
        if context.is_none() {
            refuse = Some((
                status::CANNOT_UNDERSTAND,
                format!("presentation context {pc_id} was not accepted"),
            ));
        } else if context.as_ref().is_some_and(|(abs, _)| *abs != class) {
            // PS3.7 9.1.1.1: a C-STORE travels on a context of its own SOP class.
            refuse = Some((
                status::SOP_CLASS_NOT_SUPPORTED,
                "the SOP class is not the presentation context's".into(),
            ));
        } else if !crate::store::uid::is_valid_uid(&instance)
            || !crate::store::uid::is_valid_uid(&class)
        {
            // The UID becomes the file name: nothing else may.
            refuse = Some((
                status::DATA_SET_MISMATCH,
                "the C-STORE-RQ's SOP Instance or Class UID is not a UID".into(),
            ));
        }
        let ts = context.map(|(_, ts)| ts).unwrap_or_default();
        let (code, why) = match refuse {
            Some((code, why)) => {
                let _ = self.read_data(op, cancel, pc_id, Sink::Discard).await?;
                (code, Some(why))
            }
            None => match self
                .receive_instance(op, cancel, pc_id, &class, &instance, &ts, dir)
                .await?
            {
                Ok(path) => {
                    out.stored.push(path);
                    (status::SUCCESS, None)
                }
                Err((code, why)) => (code, Some(why)),
            },
        };
        if let Some(why) = &why {
            warn!(peer = %self.peer, sop_instance_uid = %Printable(&instance), reason = %why, "C-GET sub-operation refused");
            out.refused.push((instance.clone(), why.clone()));
        }
        let rsp = dimse::c_store_rsp(store_id, &class, &instance, code, why.as_deref()).encode();
        self.send_part(pc_id, PDataValueType::Command, &rsp).await
    }

    /// Writes one instance durably: temp file in `dir`, data set checked, fsync, rename,
    /// directory fsync. The inner error is a C-STORE status and its reason.
    #[allow(clippy::too_many_arguments)]
    async fn receive_instance(
        &mut self,
        op: &mut Op,
        cancel: &mut Cancel,
        pc_id: u8,
        class: &str,
        instance: &str,
        ts: &str,
        dir: &Path,
    ) -> Result<Result<PathBuf, (u16, String)>, QrError> {
        let opened = open_part10(dir, class, instance, ts, &self.peer.ae_title);
        let (mut w, offset) = match opened {
            Ok(x) => x,
            Err(refusal) => {
                let _ = self.read_data(op, cancel, pc_id, Sink::Discard).await?;
                return Ok(Err(refusal));
            }
        };
        let cap = self.max_instance;
        let received = self
            .read_data(op, cancel, pc_id, Sink::File(&mut w, 0, cap))
            .await?;
        if let Err(e) = received {
            return Ok(Err((status::OUT_OF_RESOURCES, e)));
        }
        let target = dir.join(format!("{instance}.dcm"));
        let instance = instance.to_string();
        let ts = ts.to_string();
        // Checking and fsyncing block: off the runtime's worker.
        let done = tokio::task::spawn_blocking(move || {
            finish_instance(w, offset, &instance, &ts, &target)
        })
        .await
        .unwrap_or_else(|e| Err((status::OUT_OF_RESOURCES, format!("writer task: {e}"))));
        Ok(done)
    }
}

/// A temp file in `dir` with the preamble and File Meta Information written; the data set
/// follows at the returned offset. The error is a C-STORE status and its reason.
fn open_part10(
    dir: &Path,
    class: &str,
    instance: &str,
    ts: &str,
    source_ae: &str,
) -> Result<(std::io::BufWriter<tempfile::NamedTempFile>, u64), (u16, String)> {
    let meta =
        part10_meta(class, instance, ts, source_ae).map_err(|e| (status::CANNOT_UNDERSTAND, e))?;
    let local = |e: std::io::Error| {
        (
            status::OUT_OF_RESOURCES,
            format!("writing into {}: {e}", dir.display()),
        )
    };
    let file = tempfile::Builder::new()
        .prefix(".get-")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(local)?;
    let mut w = std::io::BufWriter::with_capacity(256 * 1024, file);
    w.write_all(&[0u8; 128]).map_err(local)?;
    w.write_all(b"DICM").map_err(local)?;
    w.write_all(&meta).map_err(local)?;
    Ok((w, 132 + meta.len() as u64))
}

/// The File Meta Information group (without preamble and `DICM`).
fn part10_meta(class: &str, instance: &str, ts: &str, source_ae: &str) -> Result<Vec<u8>, String> {
    let meta = dicom_object::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(instance)
        .transfer_syntax(ts)
        .implementation_class_uid(crate::store::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::store::IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(source_ae)
        .build()
        .map_err(|e| format!("cannot build file meta information: {e}"))?;
    let mut out = Vec::with_capacity(256);
    meta.write(&mut out)
        .map_err(|e| format!("cannot encode file meta information: {e}"))?;
    Ok(out)
}

/// Checks the received data set (structure, and that it is the instance the C-STORE-RQ
/// announced), then makes it durable under its final name.
fn finish_instance(
    w: std::io::BufWriter<tempfile::NamedTempFile>,
    offset: u64,
    instance: &str,
    ts: &str,
    target: &Path,
) -> Result<PathBuf, (u16, String)> {
    use std::io::{Seek, SeekFrom};
    let local = |e: std::io::Error| (status::OUT_OF_RESOURCES, format!("writing: {e}"));
    let mut file = w.into_inner().map_err(|e| local(e.into_error()))?;
    let len = file.as_file().metadata().map_err(local)?.len();
    file.as_file_mut()
        .seek(SeekFrom::Start(offset))
        .map_err(local)?;
    let header = crate::store::header::scan_file(
        std::io::BufReader::new(file.as_file_mut()),
        len - offset,
        crate::store::header::Encoding::of_transfer_syntax(ts),
    )
    .map_err(|e| {
        (
            status::CANNOT_UNDERSTAND,
            format!("data set unreadable: {e}"),
        )
    })?;
    if header.sop_instance_uid != instance {
        return Err((
            status::DATA_SET_MISMATCH,
            "the data set's SOP Instance UID differs from the C-STORE-RQ".into(),
        ));
    }
    file.as_file().sync_all().map_err(local)?;
    file.persist(target).map_err(|e| local(e.error))?;
    if let Some(parent) = target.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(local)?;
    }
    Ok(target.to_path_buf())
}

/// A value of a response identifier as text: strings trimmed of padding, numbers in decimal,
/// multiple values joined by `\`, a sequence as its item count.
pub fn value_text(e: &dicom_object::mem::InMemElement) -> String {
    if let Some(items) = e.items() {
        return format!("({} items)", items.len());
    }
    match e.vr() {
        VR::OB | VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::UN => {
            format!(
                "({} bytes)",
                e.value().primitive().map_or(0, |p| p.calculate_byte_len())
            )
        }
        _ => e
            .to_str()
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default(),
    }
}

/// The keyword of a tag, or `gggg,eeee` when the dictionary has none.
pub fn keyword(tag: Tag) -> String {
    StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.alias().to_string())
        .unwrap_or_else(|| format!("{:04X},{:04X}", tag.group(), tag.element()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_as_findscu_takes_them() {
        let k: Key = "PatientName=SMITH*".parse().unwrap();
        assert_eq!((k.tag, k.vr), (tags::PATIENT_NAME, VR::PN));
        assert_eq!(k.value.as_deref(), Some("SMITH*"));
        let k: Key = "0020,000D".parse().unwrap();
        assert_eq!((k.tag, k.value), (tags::STUDY_INSTANCE_UID, None));
        let k: Key = "(0008,0020)=20240101-20241231".parse().unwrap();
        assert_eq!(k.tag, tags::STUDY_DATE);
        let k: Key = "StudyDate=".parse().unwrap();
        assert_eq!(k.value, None);
        for bad in [
            "NoSuchKeyword=1",
            "PixelData",
            "TransferSyntaxUID=1.2",
            "ReferencedSeriesSequence=x",
            "Rows=seven",
        ] {
            assert!(bad.parse::<Key>().is_err(), "{bad}");
        }
    }

    #[test]
    fn identifier_round_trips_through_dicom_object() {
        let keys: Vec<Key> = [
            "PatientName=SM?TH*",
            "StudyInstanceUID",
            "Rows=512",
            "ReferencedSeriesSequence",
        ]
        .iter()
        .map(|k| k.parse().unwrap())
        .collect();
        let obj = identifier(Level::Series, &keys, Some("ISO_IR 192"));
        let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut bytes = Vec::new();
        obj.write_dataset_with_ts(&mut bytes, &ts).unwrap();
        let back = InMemDicomObject::read_dataset_with_ts(bytes.as_slice(), &ts).unwrap();
        assert_eq!(
            value_text(back.element(tags::QUERY_RETRIEVE_LEVEL).unwrap()),
            "SERIES"
        );
        assert_eq!(
            value_text(back.element(tags::PATIENT_NAME).unwrap()),
            "SM?TH*"
        );
        assert_eq!(
            value_text(back.element(tags::STUDY_INSTANCE_UID).unwrap()),
            ""
        );
        assert_eq!(value_text(back.element(tags::ROWS).unwrap()), "512");
        assert_eq!(
            value_text(back.element(tags::REFERENCED_SERIES_SEQUENCE).unwrap()),
            "(0 items)"
        );
        assert_eq!(keyword(tags::PATIENT_NAME), "PatientName");
        assert_eq!(keyword(Tag(0x0009, 0x1001)), "0009,1001");
        // Non-ASCII values without a declared set go as UTF-8, and say so.
        let keys = vec!["PatientName=Müller*".parse::<Key>().unwrap()];
        let obj = identifier(Level::Patient, &keys, None);
        assert_eq!(
            value_text(obj.element(tags::SPECIFIC_CHARACTER_SET).unwrap()),
            "ISO_IR 192"
        );
        let mut bytes = Vec::new();
        obj.write_dataset_with_ts(&mut bytes, &ts).unwrap();
        assert!(bytes.windows(7).any(|w| w == "Müller".as_bytes()));
    }

    #[test]
    fn get_proposes_storage_classes_within_the_context_limit() {
        let classes = get_storage_classes(MAX_CONTEXTS - 2);
        assert_eq!(classes.len(), MAX_CONTEXTS - 2);
        assert_eq!(classes[0], "1.2.840.10008.5.1.4.1.1.104.3");
        assert!(
            classes
                .iter()
                .all(|c| super::super::is_storage_sop_class(c))
        );
        let mut unique = classes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), classes.len());
    }

    #[test]
    fn timeouts_are_recognised_wherever_they_happen() {
        let peer = "X@127.0.0.1:1".to_string();
        assert!(
            QrError::Timeout {
                peer: peer.clone(),
                seconds: 1
            }
            .is_timeout()
        );
        assert!(
            QrError::Associate(ScuError::Associate {
                peer: peer.clone(),
                source: Box::new(RequestError::Timeout(1)),
            })
            .is_timeout()
        );
        assert!(!QrError::Cancelled { peer }.is_timeout());
    }
}
