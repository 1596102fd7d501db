//! Storage Commitment Push Model SCP (PS3.4 Annex J): a scanner asks, by N-ACTION, whether the
//! node keeps the instances it sent, and deletes its own copy only on a positive
//! N-EVENT-REPORT. The node answers honestly: each listed instance must have its index row,
//! under the same SOP class, and its file must be there, of the indexed size, with a DICM
//! preamble.
//!
//! The association handler ([`super::scp`]) parses the Action Information
//! ([`parse_action_information`]), stores the transaction ([`Committer::admit`], before the
//! N-ACTION-RSP) and hands it to the [`Committer`] task ([`Committer::submit`]). That task
//! waits for listed instances still missing (the store tells it of each new instance through
//! [`super::scp::StoreObserver`]) up to `[commitment] wait_seconds`, decides, stores the
//! decision, and reports: on the requester's association while it is open (through its
//! [`Link`]), else on a new association to its `[[peers]]` address, proposing the SCP role,
//! with `report_attempts` tries and an exponential back-off. Open transactions are resumed at
//! start-up from the index, their association gone, so their reports go on a new one.
//!
//! Retention may later delete a committed instance: a commitment is a statement about the
//! moment of the report, which the README says.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Printable;
use super::dimse::{self, status};
use super::scu::{self, AeAddress, ScuOptions};
use super::settings::ScpSettings;
use crate::db::{Admission, Commitment, CommitmentItem, CommitmentState, DbError, now};
use crate::store::{Store, Stored};

/// Action Type ID of "Request Storage Commitment" (PS3.4 J.3.2).
pub const REQUEST_STORAGE_COMMITMENT: u16 = 1;
/// Event Type ID: every listed instance is committed.
pub const EVENT_SUCCESSFUL: u16 = 1;
/// Event Type ID: failures exist.
pub const EVENT_FAILURES_EXIST: u16 = 2;
/// Largest Action Information the node reads (a list of some 40 000 instances); a larger one
/// is answered 0x0213 (resource limitation) and dropped as it arrives.
pub const MAX_ACTION_INFORMATION: usize = 4 * 1024 * 1024;

/// `[commitment]`: Storage Commitment.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CommitmentConfig {
    /// How long after a request listed instances not yet stored are waited for (a scanner may
    /// ask before its last C-STORE ends); what is still missing then fails with 0x0112.
    pub wait_seconds: f64,
    /// Attempts to deliver a report on a new association before the transaction is
    /// `undeliverable` (the scanner then keeps its copy: the safe failure).
    pub report_attempts: u32,
    /// First delay between those attempts, in seconds; doubled after each.
    pub retry_initial_seconds: f64,
    /// Connect and response timeout of a report, in seconds.
    pub timeout_seconds: u64,
}

impl Default for CommitmentConfig {
    fn default() -> Self {
        CommitmentConfig {
            wait_seconds: 60.0,
            report_attempts: 5,
            retry_initial_seconds: 10.0,
            timeout_seconds: 30,
        }
    }
}

impl CommitmentConfig {
    /// Checks the values; `Err((key, message))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.wait_seconds.is_finite() && self.wait_seconds >= 0.0) {
            return Err((
                "commitment.wait_seconds",
                "must be a number of seconds, 0 or more".into(),
            ));
        }
        if self.report_attempts == 0 {
            return Err(("commitment.report_attempts", "must be at least 1".into()));
        }
        if !(self.retry_initial_seconds.is_finite() && self.retry_initial_seconds > 0.0) {
            return Err((
                "commitment.retry_initial_seconds",
                "must be a positive number of seconds".into(),
            ));
        }
        if self.timeout_seconds == 0 {
            return Err(("commitment.timeout_seconds", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// A parsed N-ACTION Action Information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Transaction UID (0008,1195).
    pub transaction_uid: String,
    /// (Referenced SOP Class UID, Referenced SOP Instance UID), in request order.
    pub items: Vec<(String, String)>,
}

/// Why an N-ACTION is refused: its N-ACTION-RSP status, an Error Comment, and the attributes
/// concerned (Attribute Identifier List, for 0x0120/0x0106).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// DIMSE status.
    pub status: u16,
    /// Error Comment (at most 64 characters go on the wire).
    pub comment: String,
    /// Tags as `(group << 16) | element`.
    pub attributes: Vec<u32>,
}

impl Refusal {
    fn new(status: u16, comment: impl Into<String>, attributes: &[u32]) -> Refusal {
        Refusal {
            status,
            comment: comment.into(),
            attributes: attributes.to_vec(),
        }
    }
}

const TRANSACTION_UID: u32 = 0x0008_1195;
const REFERENCED_SOP_SEQUENCE: u32 = 0x0008_1199;
const REFERENCED_SOP_CLASS_UID: u32 = 0x0008_1150;
const REFERENCED_SOP_INSTANCE_UID: u32 = 0x0008_1155;

/// A UID as PS3.5 9.1 has it: at most 64 characters, digits and dots, no empty component.
fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim_start().to_string())
}

/// Reads an N-ACTION's Action Information (PS3.4 J.3.2): Transaction UID and a non-empty
/// Referenced SOP Sequence whose items have a class and an instance UID.
pub fn parse_action_information(bytes: &[u8], ts_uid: &str) -> Result<Request, Refusal> {
    let obj = dimse::read_data_set(bytes, ts_uid).map_err(|e| {
        Refusal::new(
            status::PROCESSING_FAILURE,
            format!("unreadable Action Information: {e}"),
            &[],
        )
    })?;
    let transaction_uid = match text(&obj, tags::TRANSACTION_UID) {
        None => {
            return Err(Refusal::new(
                status::MISSING_ATTRIBUTE,
                "Transaction UID (0008,1195) missing",
                &[TRANSACTION_UID],
            ));
        }
        Some(u) if u.is_empty() => {
            return Err(Refusal::new(
                status::MISSING_ATTRIBUTE_VALUE,
                "Transaction UID (0008,1195) empty",
                &[TRANSACTION_UID],
            ));
        }
        Some(u) if !valid_uid(&u) => {
            return Err(Refusal::new(
                status::INVALID_ATTRIBUTE_VALUE,
                "Transaction UID (0008,1195) is not a UID",
                &[TRANSACTION_UID],
            ));
        }
        Some(u) => u,
    };
    let missing_list = || {
        Refusal::new(
            status::MISSING_ATTRIBUTE,
            "Referenced SOP Sequence (0008,1199) missing or empty",
            &[REFERENCED_SOP_SEQUENCE],
        )
    };
    let seq = obj
        .element(tags::REFERENCED_SOP_SEQUENCE)
        .map_err(|_| missing_list())?;
    let items = seq.items().ok_or_else(missing_list)?;
    if items.is_empty() {
        return Err(missing_list());
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let class = text(item, tags::REFERENCED_SOP_CLASS_UID).unwrap_or_default();
        let instance = text(item, tags::REFERENCED_SOP_INSTANCE_UID).unwrap_or_default();
        if class.is_empty() || instance.is_empty() {
            return Err(Refusal::new(
                status::MISSING_ATTRIBUTE,
                format!(
                    "Referenced SOP Sequence item {} lacks a class or instance UID",
                    i + 1
                ),
                &[REFERENCED_SOP_CLASS_UID, REFERENCED_SOP_INSTANCE_UID],
            ));
        }
        if !valid_uid(&class) || !valid_uid(&instance) {
            return Err(Refusal::new(
                status::INVALID_ATTRIBUTE_VALUE,
                format!("Referenced SOP Sequence item {} has an invalid UID", i + 1),
                &[REFERENCED_SOP_CLASS_UID, REFERENCED_SOP_INSTANCE_UID],
            ));
        }
        out.push((class, instance));
    }
    Ok(Request {
        transaction_uid,
        items: out,
    })
}

fn ui(tag: dicom_core::Tag, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::UI, PrimitiveValue::from(v))
}

fn reference(class: &str, instance: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    item.put(ui(tags::REFERENCED_SOP_CLASS_UID, class));
    item.put(ui(tags::REFERENCED_SOP_INSTANCE_UID, instance));
    item
}

/// The N-EVENT-REPORT Event Information (PS3.4 J.3.3) of decided items, and its Event Type
/// ID: Transaction UID, Retrieve AE Title (the node), the Referenced SOP Sequence of
/// committed instances (left out of Event Type 2 when none is), and the Failed SOP Sequence
/// with each Failure Reason.
pub fn event_information(
    transaction_uid: &str,
    retrieve_ae: &str,
    items: &[CommitmentItem],
) -> (u16, InMemDicomObject) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for i in items {
        match i.failure_reason {
            None => ok.push(reference(&i.sop_class_uid, &i.sop_instance_uid)),
            Some(reason) => {
                let mut item = reference(&i.sop_class_uid, &i.sop_instance_uid);
                item.put(DataElement::new(
                    tags::FAILURE_REASON,
                    VR::US,
                    PrimitiveValue::from(reason),
                ));
                failed.push(item);
            }
        }
    }
    let event = if failed.is_empty() {
        EVENT_SUCCESSFUL
    } else {
        EVENT_FAILURES_EXIST
    };
    let mut obj = InMemDicomObject::new_empty();
    obj.put(ui(tags::TRANSACTION_UID, transaction_uid));
    obj.put(DataElement::new(
        tags::RETRIEVE_AE_TITLE,
        VR::AE,
        PrimitiveValue::from(retrieve_ae),
    ));
    if !ok.is_empty() || failed.is_empty() {
        obj.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(ok),
        ));
    }
    if !failed.is_empty() {
        obj.put(DataElement::new(
            tags::FAILED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(failed),
        ));
    }
    (event, obj)
}

/// Where one listed instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Indexed under the listed class, its file whole.
    Committed,
    /// Not stored (yet).
    Pending,
    /// A Failure Reason: 0x0119 (stored under another class) or 0x0110 (the file is missing,
    /// of another size than indexed, not DICOM, or the index unreadable).
    Failed(u16),
}

/// Checks one listed instance against the index and its file: the index row, the SOP class,
/// the file's size, and the 128-byte preamble followed by `DICM` (cheap, and it catches a
/// file replaced or truncated behind the node's back).
pub fn check_item(store: &Store, sop_class_uid: &str, sop_instance_uid: &str) -> Check {
    let row = match store.index().get(sop_instance_uid) {
        Ok(Some(row)) => row,
        Ok(None) => return Check::Pending,
        Err(e) => {
            warn!(error = %e, "commitment: index lookup failed");
            return Check::Failed(status::PROCESSING_FAILURE);
        }
    };
    if row.sop_class_uid != sop_class_uid {
        return Check::Failed(status::CLASS_INSTANCE_CONFLICT);
    }
    let path = store.root().join(&row.path);
    let whole = std::fs::File::open(&path).and_then(|mut f| {
        let len = f.metadata()?.len();
        let mut head = [0u8; 132];
        f.read_exact(&mut head)?;
        Ok(len == row.size && &head[128..] == b"DICM")
    });
    match whole {
        Ok(true) => Check::Committed,
        Ok(false) => {
            warn!(path = %path.display(), sop_instance_uid = %Printable(sop_instance_uid), "commitment: stored file differs from its index row (size or preamble)");
            Check::Failed(status::PROCESSING_FAILURE)
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "commitment: stored file unreadable");
            Check::Failed(status::PROCESSING_FAILURE)
        }
    }
}

/// A report to send on the requester's own association: the handler sends it and passes the
/// N-EVENT-REPORT-RSP status back through `answered`. Dropping it (the association ended)
/// tells the committer to use a new association.
pub struct OutgoingReport {
    /// The Storage Commitment presentation context the request came on.
    pub pc_id: u8,
    /// 1 or 2.
    pub event_type_id: u16,
    /// Event Information.
    pub event_information: InMemDicomObject,
    /// The requester's N-EVENT-REPORT-RSP status.
    pub answered: oneshot::Sender<u16>,
}

/// The association a request came on, for as long as its handler runs.
#[derive(Clone, Debug)]
pub struct Link {
    /// The handler's queue of reports to send.
    pub reports: mpsc::Sender<OutgoingReport>,
    /// The presentation context of the request.
    pub pc_id: u8,
    /// Held while the committer may still report here: the handler does not time the
    /// association out as idle while a requester waits for its report.
    pub pending: Arc<()>,
}

enum Msg {
    /// Boxed: a [`Commitment`] is large beside `Stored`.
    Submit {
        admission: Box<Admission>,
        request: Request,
        calling_ae: String,
        link: Option<Link>,
    },
    Stored(String),
}

/// The handle of the commitment task: cheap to clone, shared by every association.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Msg>,
    /// Transactions waiting for instances: `stored` sends nothing while it is 0.
    waiting: Arc<AtomicUsize>,
    store: Arc<Store>,
    config: CommitmentConfig,
}

/// What a report task needs.
struct Shared {
    store: Arc<Store>,
    settings: Arc<ScpSettings>,
    config: CommitmentConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    stop: CancellationToken,
}

struct Open {
    commitment: Commitment,
    pending: HashSet<String>,
    failures: HashMap<String, u16>,
    deadline: Instant,
    link: Option<Link>,
}

struct Worker {
    shared: Arc<Shared>,
    waiting: Arc<AtomicUsize>,
    open: HashMap<String, Open>,
    /// SOP Instance UID -> the waiting transactions that list it.
    by_instance: HashMap<String, Vec<String>>,
}

impl Committer {
    /// Starts the commitment task; it resumes the index's open transactions first, and ends
    /// when `stop` is cancelled (open transactions are resumed at the next start).
    pub fn start(
        config: CommitmentConfig,
        settings: Arc<ScpSettings>,
        store: Arc<Store>,
        tls: Option<Arc<rustls::ClientConfig>>,
        stop: CancellationToken,
    ) -> (Committer, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            shared: Arc::new(Shared {
                store: store.clone(),
                settings,
                config: config.clone(),
                tls,
                stop,
            }),
            waiting: waiting.clone(),
            open: HashMap::new(),
            by_instance: HashMap::new(),
        };
        let task = tokio::spawn(worker.run(rx));
        (
            Committer {
                tx,
                waiting,
                store,
                config,
            },
            task,
        )
    }

    /// Stores a request (a new transaction as `waiting`), or says what its reused
    /// Transaction UID makes of it. Called before the N-ACTION-RSP: a request answered with
    /// success is in the index.
    pub async fn admit(
        &self,
        request: &Request,
        calling_ae: &str,
        called_ae: &str,
    ) -> Result<Admission, DbError> {
        let store = self.store.clone();
        let (uid, calling, called, items) = (
            request.transaction_uid.clone(),
            calling_ae.to_string(),
            called_ae.to_string(),
            request.items.clone(),
        );
        let wait = self.config.wait_seconds;
        tokio::task::spawn_blocking(move || {
            store
                .index()
                .admit_commitment(&uid, &calling, &called, &items, wait)
        })
        .await
        .map_err(|_| DbError::Poisoned)?
    }

    /// Hands an admitted request to the task, with the association to report on while it
    /// is open.
    pub fn submit(
        &self,
        admission: Admission,
        request: Request,
        calling_ae: &str,
        link: Option<Link>,
    ) {
        if matches!(admission, Admission::New(_)) {
            // Before the task's first check, so that no instance stored after it is missed.
            self.waiting.fetch_add(1, Ordering::SeqCst);
        }
        let _ = self.tx.send(Msg::Submit {
            admission: Box::new(admission),
            request,
            calling_ae: calling_ae.to_string(),
            link,
        });
    }
}

impl super::scp::StoreObserver for Committer {
    fn stored(&self, stored: &Stored, _calling_ae: &str, _called_ae: &str) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _ = self
                .tx
                .send(Msg::Stored(stored.header.sop_instance_uid.clone()));
        }
    }
}

/// Runs `f` on the blocking pool (index and file reads).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

fn deadline_of(c: &Commitment) -> Instant {
    Instant::now() + Duration::from_secs_f64((c.deadline_at - now()).clamp(0.0, 1e9))
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        self.resume().await;
        loop {
            let next = self.open.values().map(|o| o.deadline).min();
            tokio::select! {
                _ = self.shared.stop.cancelled() => return,
                msg = rx.recv() => match msg {
                    None => return,
                    Some(Msg::Submit { admission, request, calling_ae, link }) => {
                        self.submitted(*admission, request, calling_ae, link).await
                    }
                    Some(Msg::Stored(uid)) => self.stored(uid).await,
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    self.expire().await
                }
            }
        }
    }

    /// Picks up the index's open transactions: `waiting` ones wait on to their original
    /// deadline, `reporting` ones are reported again on a new association.
    async fn resume(&mut self) {
        let store = self.shared.store.clone();
        let open = match blocking(move || store.index().open_commitments()).await {
            Some(Ok(open)) => open,
            Some(Err(e)) => {
                error!(error = %e, "commitment: reading open transactions failed; they resume at the next start");
                return;
            }
            None => return,
        };
        if !open.is_empty() {
            info!(
                transactions = open.len(),
                "commitment: resuming open transactions"
            );
        }
        for c in open {
            match c.state {
                CommitmentState::Waiting => {
                    self.waiting.fetch_add(1, Ordering::SeqCst);
                    self.begin(c, None).await;
                }
                _ => self.report(c, None, true),
            }
        }
    }

    async fn submitted(
        &mut self,
        admission: Admission,
        request: Request,
        calling_ae: String,
        link: Option<Link>,
    ) {
        match admission {
            Admission::New(c) => self.begin(c, link).await,
            Admission::Retry(c) => {
                info!(transaction_uid = %Printable(&c.transaction_uid), state = %c.state, "commitment request repeated (same requester, same list): reporting again");
                if let Some(open) = self.open.get_mut(&c.transaction_uid) {
                    // Still waiting: report on the newest association.
                    open.link = link;
                    return;
                }
                match c.state {
                    CommitmentState::Waiting => {
                        self.waiting.fetch_add(1, Ordering::SeqCst);
                        self.begin(c, link).await
                    }
                    _ => {
                        let store = self.shared.store.clone();
                        let uid = c.transaction_uid.clone();
                        if let Some(Err(e)) =
                            blocking(move || store.index().reopen_commitment(&uid)).await
                        {
                            warn!(error = %e, "commitment: reopening a transaction failed");
                        }
                        self.report(c, link, true)
                    }
                }
            }
            Admission::Conflict => {
                warn!(transaction_uid = %Printable(&request.transaction_uid), calling_ae = %Printable(&calling_ae), "commitment request reuses a Transaction UID of another requester or list: every item fails with 0x0131");
                let items = request
                    .items
                    .iter()
                    .map(|(class, instance)| CommitmentItem {
                        sop_class_uid: class.clone(),
                        sop_instance_uid: instance.clone(),
                        failure_reason: Some(status::DUPLICATE_TRANSACTION_UID),
                    })
                    .collect();
                let t = now();
                let c = Commitment {
                    transaction_uid: request.transaction_uid,
                    calling_ae,
                    called_ae: String::new(),
                    state: CommitmentState::Reporting,
                    event_type: Some(EVENT_FAILURES_EXIST),
                    requested_at: t,
                    deadline_at: t,
                    attempts: 0,
                    items,
                };
                self.report(c, link, false)
            }
        }
    }

    /// Checks a new (or resumed) transaction's items; decides at once when none is pending.
    async fn begin(&mut self, c: Commitment, link: Option<Link>) {
        let store = self.shared.store.clone();
        let items: Vec<(String, String)> = c
            .items
            .iter()
            .map(|i| (i.sop_class_uid.clone(), i.sop_instance_uid.clone()))
            .collect();
        let checks = blocking(move || {
            items
                .iter()
                .map(|(class, instance)| check_item(&store, class, instance))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut open = Open {
            deadline: deadline_of(&c),
            commitment: c,
            pending: HashSet::new(),
            failures: HashMap::new(),
            link,
        };
        for (item, check) in open.commitment.items.iter().zip(checks) {
            match check {
                Check::Committed => {}
                Check::Pending => {
                    open.pending.insert(item.sop_instance_uid.clone());
                }
                Check::Failed(reason) => {
                    open.failures.insert(item.sop_instance_uid.clone(), reason);
                }
            }
        }
        info!(
            transaction_uid = %Printable(&open.commitment.transaction_uid),
            calling_ae = %Printable(&open.commitment.calling_ae),
            instances = open.commitment.items.len(),
            pending = open.pending.len(),
            "commitment requested"
        );
        if open.pending.is_empty() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.decide(open).await;
            return;
        }
        let uid = open.commitment.transaction_uid.clone();
        for instance in &open.pending {
            self.by_instance
                .entry(instance.clone())
                .or_default()
                .push(uid.clone());
        }
        self.open.insert(uid, open);
    }

    /// A newly stored instance: re-checks it for each transaction waiting for it.
    async fn stored(&mut self, sop_instance_uid: String) {
        let Some(uids) = self.by_instance.remove(&sop_instance_uid) else {
            return;
        };
        for uid in uids {
            let Some(open) = self.open.get_mut(&uid) else {
                continue;
            };
            let Some(item) = open
                .commitment
                .items
                .iter()
                .find(|i| i.sop_instance_uid == sop_instance_uid)
                .cloned()
            else {
                continue;
            };
            let store = self.shared.store.clone();
            let check =
                blocking(move || check_item(&store, &item.sop_class_uid, &item.sop_instance_uid))
                    .await
                    .unwrap_or(Check::Failed(status::PROCESSING_FAILURE));
            match check {
                Check::Pending => {
                    // Not visible yet (should not happen: rows commit before the event).
                    self.by_instance
                        .entry(sop_instance_uid.clone())
                        .or_default()
                        .push(uid.clone());
                    continue;
                }
                Check::Committed => {}
                Check::Failed(reason) => {
                    open.failures.insert(sop_instance_uid.clone(), reason);
                }
            }
            open.pending.remove(&sop_instance_uid);
            debug!(transaction_uid = %Printable(&uid), pending = open.pending.len(), "commitment: a listed instance arrived");
            if open.pending.is_empty()
                && let Some(open) = self.open.remove(&uid)
            {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                self.decide(open).await;
            }
        }
    }

    /// Decides the transactions whose wait is over: what is still missing fails with 0x0112.
    async fn expire(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in due {
            let Some(mut open) = self.open.remove(&uid) else {
                continue;
            };
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            for instance in std::mem::take(&mut open.pending) {
                if let Some(list) = self.by_instance.get_mut(&instance) {
                    list.retain(|u| u != &uid);
                    if list.is_empty() {
                        self.by_instance.remove(&instance);
                    }
                }
                open.failures.insert(instance, status::NO_SUCH_SOP_INSTANCE);
            }
            info!(transaction_uid = %Printable(&uid), "commitment: wait over; instances still missing fail with 0x0112");
            self.decide(open).await;
        }
    }

    /// Stores the decision, then reports.
    async fn decide(&mut self, open: Open) {
        let store = self.shared.store.clone();
        let uid = open.commitment.transaction_uid.clone();
        let failures: Vec<(String, u16)> = open.failures.into_iter().collect();
        let failed = failures.len();
        let decided = blocking(move || store.index().decide_commitment(&uid, &failures)).await;
        let c = match decided {
            Some(Ok(Some(c))) => c,
            Some(Ok(None)) => {
                warn!(transaction_uid = %Printable(&open.commitment.transaction_uid), "commitment: transaction vanished from the index");
                return;
            }
            Some(Err(e)) => {
                error!(transaction_uid = %Printable(&open.commitment.transaction_uid), error = %e, "commitment: storing the decision failed; the transaction resumes at the next start");
                return;
            }
            None => return,
        };
        info!(
            transaction_uid = %Printable(&c.transaction_uid),
            event_type = c.event_type.unwrap_or(0),
            committed = c.items.len() - failed,
            failed,
            "commitment decided"
        );
        self.report(c, open.link, true);
    }

    /// Sends the report of a decided transaction in a task of its own.
    fn report(&self, c: Commitment, link: Option<Link>, persisted: bool) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let stop = shared.stop.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = deliver(&shared, c, link, persisted) => {}
            }
        });
    }
}

/// Records a report outcome (nothing for a transient 0x0131 report).
async fn record(shared: &Shared, uid: &str, persisted: bool, outcome: Result<(), (String, bool)>) {
    if !persisted {
        return;
    }
    let store = shared.store.clone();
    let uid = uid.to_string();
    let done = blocking(move || match outcome {
        Ok(()) => store.index().commitment_reported(&uid),
        Err((error, give_up)) => store
            .index()
            .commitment_attempt_failed(&uid, &error, true, give_up),
    })
    .await;
    if let Some(Err(e)) = done {
        warn!(error = %e, "commitment: recording the report outcome failed");
    }
}

/// Delivers one report: on the requester's association while it is open, else on new
/// associations to its `[[peers]]` address.
async fn deliver(shared: &Shared, c: Commitment, link: Option<Link>, persisted: bool) {
    let uid = c.transaction_uid.clone();
    let node_ae = shared.settings.node.ae_title.clone();
    let (event_type, info) = event_information(&uid, &node_ae, &c.items);
    let timeout = Duration::from_secs(shared.config.timeout_seconds);
    if let Some(link) = link {
        let (answered, answer) = oneshot::channel();
        let sent = link
            .reports
            .send(OutgoingReport {
                pc_id: link.pc_id,
                event_type_id: event_type,
                event_information: info.clone(),
                answered,
            })
            .await;
        if sent.is_ok() {
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(status::SUCCESS)) => {
                    info!(transaction_uid = %Printable(&uid), event_type, on = "same association", "commitment reported");
                    record(shared, &uid, persisted, Ok(())).await;
                    return;
                }
                Ok(Ok(s)) => {
                    warn!(transaction_uid = %Printable(&uid), status = format_args!("{s:#06x}"), "commitment report answered with a failure on the requester's association; trying a new association")
                }
                Ok(Err(_)) => {
                    info!(transaction_uid = %Printable(&uid), "the requester's association ended before the report was confirmed; reporting on a new association")
                }
                Err(_) => {
                    warn!(transaction_uid = %Printable(&uid), "no N-EVENT-REPORT-RSP on the requester's association in time; reporting on a new association")
                }
            }
        }
    }
    let Some(peer) = shared.settings.peer(&c.calling_ae) else {
        error!(transaction_uid = %Printable(&uid), calling_ae = %Printable(&c.calling_ae), "commitment report undeliverable: the requester's association is gone and it has no [[peers]] address");
        record(
            shared,
            &uid,
            persisted,
            Err(("association gone; no [[peers]] address".into(), true)),
        )
        .await;
        return;
    };
    let to = AeAddress {
        ae_title: peer.ae_title.clone(),
        address: peer.address.clone(),
        tls: peer.tls,
    };
    let opts = ScuOptions {
        calling_ae: node_ae,
        timeout,
        max_pdu_length: shared.settings.node.max_pdu_length,
        tls: shared.tls.clone(),
    };
    let attempts = shared.config.report_attempts;
    let mut attempt = u32::try_from(c.attempts.max(0)).unwrap_or(u32::MAX);
    let mut delay = shared.config.retry_initial_seconds;
    loop {
        attempt = attempt.saturating_add(1);
        let result = scu::event_report(&to, &opts, event_type, &info).await;
        let (error, permanent) = match result {
            Ok(status::SUCCESS) => {
                info!(transaction_uid = %Printable(&uid), event_type, on = "new association", peer = %to, "commitment reported");
                record(shared, &uid, persisted, Ok(())).await;
                return;
            }
            Ok(s) => (format!("N-EVENT-REPORT-RSP status {s:#06x}"), false),
            Err(e) => {
                let permanent = e.is_permanent();
                (e.to_string(), permanent)
            }
        };
        let give_up = attempt >= attempts || permanent;
        record(shared, &uid, persisted, Err((error.clone(), give_up))).await;
        if give_up {
            error!(transaction_uid = %Printable(&uid), peer = %to, attempts = attempt, error = %error, "commitment report undeliverable; the requester keeps its copy");
            return;
        }
        warn!(transaction_uid = %Printable(&uid), peer = %to, attempt, retry_in_seconds = delay, error = %error, "commitment report failed; retrying");
        tokio::time::sleep(Duration::from_secs_f64(delay)).await;
        delay *= 2.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(obj: &InMemDicomObject) -> Vec<u8> {
        dimse::write_data_set(obj, super::super::IMPLICIT_VR_LE).unwrap()
    }

    fn request(items: &[(&str, &str)]) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(ui(tags::TRANSACTION_UID, "1.2.3.4"));
        obj.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(
                items
                    .iter()
                    .map(|(c, i)| reference(c, i))
                    .collect::<Vec<_>>(),
            ),
        ));
        obj
    }

    #[test]
    fn action_information_is_parsed_and_checked() {
        let ts = super::super::IMPLICIT_VR_LE;
        let ok = parse_action_information(
            &action(&request(&[("1.2.840.10008.5.1.4.1.1.2", "1.2.3.5")])),
            ts,
        )
        .unwrap();
        assert_eq!(ok.transaction_uid, "1.2.3.4");
        assert_eq!(
            ok.items,
            vec![("1.2.840.10008.5.1.4.1.1.2".into(), "1.2.3.5".into())]
        );
        let empty = parse_action_information(&action(&request(&[])), ts).unwrap_err();
        assert_eq!(empty.status, status::MISSING_ATTRIBUTE);
        assert_eq!(empty.attributes, vec![REFERENCED_SOP_SEQUENCE]);
        let mut no_uid = request(&[("1.2", "1.3")]);
        no_uid.remove_element(tags::TRANSACTION_UID);
        let e = parse_action_information(&action(&no_uid), ts).unwrap_err();
        assert_eq!(e.status, status::MISSING_ATTRIBUTE);
        let bad = parse_action_information(&action(&request(&[("1.2", "1.x")])), ts).unwrap_err();
        assert_eq!(bad.status, status::INVALID_ATTRIBUTE_VALUE);
        let half = parse_action_information(&action(&request(&[("1.2", "")])), ts).unwrap_err();
        assert_eq!(half.status, status::MISSING_ATTRIBUTE);
        // An element claiming more bytes than follow.
        let garbled = parse_action_information(b"\x08\x00\x95\x11\xff\xff\x00\x00", ts);
        assert!(garbled.is_err());
    }

    #[test]
    fn event_information_lists_successes_and_failures() {
        let item = |i: &str, r: Option<u16>| CommitmentItem {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: i.into(),
            failure_reason: r,
        };
        let (event, obj) = event_information("1.9", "M3DNODE", &[item("1.1", None)]);
        assert_eq!(event, EVENT_SUCCESSFUL);
        assert!(obj.element(tags::FAILED_SOP_SEQUENCE).is_err());
        assert_eq!(
            obj.element(tags::REFERENCED_SOP_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()
                .len(),
            1
        );
        let (event, obj) = event_information(
            "1.9",
            "M3DNODE",
            &[item("1.1", None), item("1.2", Some(0x0112))],
        );
        assert_eq!(event, EVENT_FAILURES_EXIST);
        let failed = obj
            .element(tags::FAILED_SOP_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(
            failed[0]
                .element(tags::FAILURE_REASON)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            0x0112
        );
        // All failed: no (empty) Referenced SOP Sequence.
        let (_, obj) = event_information("1.9", "M3DNODE", &[item("1.2", Some(0x0131))]);
        assert!(obj.element(tags::REFERENCED_SOP_SEQUENCE).is_err());
        // It encodes and reads back.
        let bytes = dimse::write_data_set(&obj, super::super::EXPLICIT_VR_LE).unwrap();
        let back = dimse::read_data_set(&bytes, super::super::EXPLICIT_VR_LE).unwrap();
        assert_eq!(text(&back, tags::TRANSACTION_UID).as_deref(), Some("1.9"));
    }

    /// Each Failure Reason from a fixture store: wrong class, missing file, truncated file,
    /// replaced preamble; and an instance never stored is pending.
    #[test]
    fn items_are_checked_against_the_index_and_the_file() {
        use crate::store::{Announced, StoreSettings};
        const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreSettings {
            min_free_mb: 0,
            sync: false,
            ..StoreSettings::at(dir.path())
        })
        .unwrap();
        let put = |sop: &str| {
            let mut obj = InMemDicomObject::new_empty();
            obj.put(ui(tags::SOP_CLASS_UID, MR));
            obj.put(ui(tags::SOP_INSTANCE_UID, sop));
            obj.put(ui(tags::STUDY_INSTANCE_UID, "1.2.3"));
            obj.put(ui(tags::SERIES_INSTANCE_UID, "1.2.3.4"));
            let bytes = dimse::write_data_set(&obj, super::super::EXPLICIT_VR_LE).unwrap();
            let announced = Announced {
                sop_class_uid: MR.into(),
                sop_instance_uid: sop.into(),
                transfer_syntax: super::super::EXPLICIT_VR_LE.into(),
                calling_ae: "TEST".into(),
            };
            let mut incoming = store
                .begin(&announced, Some(store.temp_file().unwrap()))
                .unwrap();
            incoming.append(&bytes).unwrap();
            store.commit(incoming).unwrap().path
        };
        let ok = put("1.2.3.4.1");
        let gone = put("1.2.3.4.2");
        let short = put("1.2.3.4.3");
        let replaced = put("1.2.3.4.4");
        assert_eq!(check_item(&store, MR, "1.2.3.4.1"), Check::Committed);
        assert_eq!(check_item(&store, MR, "1.2.3.4.9"), Check::Pending);
        assert_eq!(
            check_item(&store, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.1"),
            Check::Failed(status::CLASS_INSTANCE_CONFLICT)
        );
        std::fs::remove_file(&gone).unwrap();
        assert_eq!(
            check_item(&store, MR, "1.2.3.4.2"),
            Check::Failed(status::PROCESSING_FAILURE)
        );
        let len = std::fs::metadata(&short).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&short)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        assert_eq!(
            check_item(&store, MR, "1.2.3.4.3"),
            Check::Failed(status::PROCESSING_FAILURE)
        );
        // Same size, no DICM at 128.
        let mut bytes = std::fs::read(&replaced).unwrap();
        bytes[128..132].copy_from_slice(b"XXXX");
        std::fs::write(&replaced, bytes).unwrap();
        assert_eq!(
            check_item(&store, MR, "1.2.3.4.4"),
            Check::Failed(status::PROCESSING_FAILURE)
        );
        assert!(ok.exists());
    }

    #[test]
    fn uids_are_checked() {
        assert!(valid_uid("1.2.840.10008.1.20.1"));
        assert!(valid_uid("1.0.3"));
        assert!(!valid_uid("1..2"));
        assert!(!valid_uid("1.02"));
        assert!(!valid_uid(&"1.".repeat(40)));
        assert!(!valid_uid(""));
    }

    #[test]
    fn config_values_are_checked() {
        assert!(CommitmentConfig::default().validate().is_ok());
        let c = CommitmentConfig {
            report_attempts: 0,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "commitment.report_attempts");
        let c = CommitmentConfig {
            wait_seconds: -1.0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
