//! One event as a DICOM audit message (PS3.15 A.5.1 schema, A.5.3 messages), on one line.
//!
//! The element order follows the schema (EventIdentification, ActiveParticipant+,
//! AuditSourceIdentification, ParticipantObjectIdentification*; inside them the children in
//! schema order, attributes in any order). Every value passes through [`escape`], which also
//! turns line breaks into character references, so that no value can end a message early or
//! break the XML.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use base64::Engine as _;

use super::{AlertKind, Direction, Event, Outcome, Peer, StudyInstances};

/// A coded value (PS3.15 A.5.1 `CodedValueType`): code, coding scheme, meaning.
#[derive(Clone, Copy)]
struct Code(&'static str, &'static str, &'static str);

// CID 400-405 and the RFC 3881 values that A.5.3 names.
const APPLICATION_ACTIVITY: Code = Code("110100", "DCM", "Application Activity");
const BEGIN_TRANSFERRING: Code = Code("110102", "DCM", "Begin Transferring DICOM Instances");
const INSTANCES_TRANSFERRED: Code = Code("110104", "DCM", "DICOM Instances Transferred");
const EXPORT: Code = Code("110106", "DCM", "Export");
const QUERY: Code = Code("110112", "DCM", "Query");
const SECURITY_ALERT: Code = Code("110113", "DCM", "Security Alert");
const USER_AUTHENTICATION: Code = Code("110114", "DCM", "User Authentication");
const APPLICATION_START: Code = Code("110120", "DCM", "Application Start");
const APPLICATION_STOP: Code = Code("110121", "DCM", "Application Stop");
const LOGIN: Code = Code("110122", "DCM", "Login");
const NODE_AUTHENTICATION: Code = Code("110126", "DCM", "Node Authentication");
const RESTRICTED_FUNCTION: Code = Code("110132", "DCM", "Use of Restricted Function");
const ROLE_APPLICATION: Code = Code("110150", "DCM", "Application");
const ROLE_DESTINATION: Code = Code("110152", "DCM", "Destination Role ID");
const ROLE_SOURCE: Code = Code("110153", "DCM", "Source Role ID");
const ROLE_DESTINATION_MEDIA: Code = Code("110154", "DCM", "Destination Media");
const MEDIA_URI: Code = Code("110037", "DCM", "URI");
const STUDY_INSTANCE_UID: Code = Code("110180", "DCM", "Study Instance UID");
const SOP_CLASS_UID: Code = Code("110181", "DCM", "SOP Class UID");
const NODE_ID: Code = Code("110182", "DCM", "Node ID");
const PATIENT_NUMBER: Code = Code("2", "RFC-3881", "Patient Number");

/// One ActiveParticipant.
struct Participant {
    user_id: String,
    /// `AETITLES=...` for DICOM applications (PS3.15 A.5.2.2).
    alternative_user_id: Option<String>,
    user_name: Option<String>,
    requestor: bool,
    /// Host name or IP address; the type code (1 name, 2 IP) is derived from it.
    access_point: Option<String>,
    role: Option<Code>,
    media: Option<Code>,
}

impl Participant {
    /// The node itself: UserID the node's AE title, the AE title(s) it acted as.
    fn node(node_ae: &str, acting_ae: &str, requestor: bool, role: Option<Code>) -> Participant {
        Participant {
            user_id: node_ae.to_string(),
            alternative_user_id: Some(format!("AETITLES={acting_ae}")),
            user_name: Some("m3dnode".to_string()),
            requestor,
            access_point: None,
            role,
            media: None,
        }
    }

    /// A remote DICOM application: its AE title (its host when it gave none, e.g. a TLS
    /// handshake that failed before any AE title was sent) and where it connected from.
    fn peer(peer: &Peer, requestor: bool, role: Option<Code>) -> Participant {
        let user_id = if peer.ae_title.is_empty() {
            peer.host.clone()
        } else {
            peer.ae_title.clone()
        };
        Participant {
            user_id,
            alternative_user_id: (!peer.ae_title.is_empty())
                .then(|| format!("AETITLES={}", peer.ae_title)),
            user_name: None,
            requestor,
            access_point: (!peer.host.is_empty()).then(|| peer.host.clone()),
            role,
            media: None,
        }
    }
}

/// The name-or-query choice that the schema makes mandatory in every participant object.
enum NameOrQuery {
    Name(String),
    Query(Vec<u8>),
}

/// One ParticipantObjectIdentification.
struct Object {
    id: String,
    type_code: &'static str,
    role: &'static str,
    id_type: Code,
    name_or_query: NameOrQuery,
    /// `ParticipantObjectDetail` type and (unencoded) value.
    details: Vec<(&'static str, Vec<u8>)>,
    /// SOP classes and their instance counts, for the ParticipantObjectDescription.
    sop_classes: Vec<(String, usize)>,
}

/// What the message says, before it is written out.
struct Message {
    event_id: Code,
    action: &'static str,
    outcome: &'static str,
    outcome_description: Option<String>,
    type_codes: Vec<Code>,
    participants: Vec<Participant>,
    objects: Vec<Object>,
}

/// The XML of one event: a DICOM audit message (PS3.15 A.5.1) on one line, without an XML
/// declaration (the file and the syslog MSG carry UTF-8). `node_ae` is the AuditSourceID and the
/// node's participant UserID, `site` the AuditEnterpriseSiteID (left out when empty), `at` the
/// EventDateTime (UTC, milliseconds).
pub fn to_xml(event: &Event, node_ae: &str, site: &str, at: SystemTime) -> String {
    let m = message(event, node_ae);
    let mut out = String::with_capacity(1024);
    out.push_str("<AuditMessage><EventIdentification");
    attr(&mut out, "EventActionCode", m.action);
    attr(&mut out, "EventDateTime", &timestamp(at));
    attr(&mut out, "EventOutcomeIndicator", m.outcome);
    out.push('>');
    code(&mut out, "EventID", m.event_id);
    for c in &m.type_codes {
        code(&mut out, "EventTypeCode", *c);
    }
    if let Some(d) = &m.outcome_description {
        out.push_str("<EventOutcomeDescription>");
        out.push_str(&escape(d));
        out.push_str("</EventOutcomeDescription>");
    }
    out.push_str("</EventIdentification>");
    for p in &m.participants {
        participant(&mut out, p);
    }
    out.push_str("<AuditSourceIdentification");
    if !site.is_empty() {
        attr(&mut out, "AuditEnterpriseSiteID", site);
    }
    attr(&mut out, "AuditSourceID", node_ae);
    // The schema's enumerated value 4, "Application Server process or thread": a bare
    // csd-code (a coding scheme is only needed for values outside 1-9).
    out.push_str("><AuditSourceTypeCode csd-code=\"4\"/></AuditSourceIdentification>");
    for o in &m.objects {
        object(&mut out, o);
    }
    out.push_str("</AuditMessage>");
    out
}

/// EventDateTime and the syslog TIMESTAMP: RFC 3339 in UTC with milliseconds and `Z`.
pub(crate) fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn outcome(o: &Outcome) -> (&'static str, Option<String>) {
    match o {
        Outcome::Success => ("0", None),
        Outcome::MinorFailure(why) => ("4", Some(why.clone())),
        Outcome::SeriousFailure(why) => ("8", Some(why.clone())),
    }
}

fn message(event: &Event, node_ae: &str) -> Message {
    match event {
        Event::ApplicationStart | Event::ApplicationStop => Message {
            event_id: APPLICATION_ACTIVITY,
            action: "E",
            outcome: "0",
            outcome_description: None,
            type_codes: vec![if matches!(event, Event::ApplicationStart) {
                APPLICATION_START
            } else {
                APPLICATION_STOP
            }],
            participants: vec![Participant::node(
                node_ae,
                node_ae,
                false,
                Some(ROLE_APPLICATION),
            )],
            objects: Vec::new(),
        },
        Event::AssociationAccepted {
            peer,
            calling_ae,
            called_ae,
            tls,
        } => {
            // The calling AE is the user being authenticated (A.5.3.12), from the peer's host.
            let caller = Peer {
                ae_title: calling_ae.clone(),
                host: peer.host.clone(),
            };
            Message {
                event_id: USER_AUTHENTICATION,
                action: "E",
                outcome: "0",
                // The schema has no place for the transport; the outcome text records it.
                outcome_description: Some(format!(
                    "association accepted over {}",
                    if *tls { "TLS" } else { "plain TCP" }
                )),
                type_codes: vec![LOGIN],
                participants: vec![
                    Participant::peer(&caller, true, None),
                    Participant::node(node_ae, called_ae, false, None),
                ],
                objects: Vec::new(),
            }
        }
        Event::AssociationRejected {
            peer,
            calling_ae,
            called_ae,
            reason,
        } => {
            let caller = Peer {
                ae_title: calling_ae.clone(),
                host: peer.host.clone(),
            };
            security_alert(
                node_ae,
                called_ae,
                &caller,
                NODE_AUTHENTICATION,
                format!("association from `{calling_ae}` to `{called_ae}` rejected: {reason}"),
            )
        }
        Event::SecurityAlert { peer, kind, detail } => {
            let kind = match kind {
                AlertKind::NodeAuthentication => NODE_AUTHENTICATION,
                AlertKind::UnauthorizedUse => RESTRICTED_FUNCTION,
            };
            security_alert(node_ae, node_ae, peer, kind, detail.clone())
        }
        Event::InstancesTransferred {
            direction,
            remote,
            local_ae,
            studies,
            outcome: o,
        } => {
            let (outcome, outcome_description) = outcome(o);
            // The requestor is the side that pushed: the remote SCU for a received C-STORE,
            // the node for what it sends.
            let (action, participants) = match direction {
                Direction::Received => (
                    "C",
                    vec![
                        Participant::peer(remote, true, Some(ROLE_SOURCE)),
                        Participant::node(node_ae, local_ae, false, Some(ROLE_DESTINATION)),
                    ],
                ),
                Direction::Sent => (
                    "R",
                    vec![
                        Participant::node(node_ae, local_ae, true, Some(ROLE_SOURCE)),
                        Participant::peer(remote, false, Some(ROLE_DESTINATION)),
                    ],
                ),
            };
            Message {
                event_id: INSTANCES_TRANSFERRED,
                action,
                outcome,
                outcome_description,
                type_codes: Vec::new(),
                participants,
                objects: study_objects(studies),
            }
        }
        Event::BeginTransferring {
            remote,
            local_ae,
            studies,
        } => Message {
            event_id: BEGIN_TRANSFERRING,
            action: "E",
            outcome: "0",
            outcome_description: None,
            type_codes: Vec::new(),
            participants: vec![
                Participant::node(node_ae, local_ae, true, Some(ROLE_SOURCE)),
                Participant::peer(remote, false, Some(ROLE_DESTINATION)),
            ],
            objects: study_objects(studies),
        },
        Event::Query {
            remote,
            local_ae,
            sop_class_uid,
            query,
            transfer_syntax,
            outcome: o,
        } => {
            let (outcome, outcome_description) = outcome(o);
            Message {
                event_id: QUERY,
                action: "E",
                outcome,
                outcome_description,
                type_codes: Vec::new(),
                participants: vec![
                    Participant::peer(remote, true, Some(ROLE_SOURCE)),
                    Participant::node(node_ae, local_ae, false, Some(ROLE_DESTINATION)),
                ],
                objects: vec![Object {
                    id: sop_class_uid.clone(),
                    type_code: "2",
                    role: "3",
                    id_type: SOP_CLASS_UID,
                    name_or_query: NameOrQuery::Query(query.clone()),
                    details: vec![("TransferSyntax", transfer_syntax.as_bytes().to_vec())],
                    sop_classes: Vec::new(),
                }],
            }
        }
        Event::Export {
            destination,
            studies,
            outcome: o,
        } => {
            let (outcome, outcome_description) = outcome(o);
            Message {
                event_id: EXPORT,
                action: "R",
                outcome,
                outcome_description,
                type_codes: Vec::new(),
                participants: vec![
                    Participant::node(node_ae, node_ae, true, Some(ROLE_SOURCE)),
                    // The destination as a media participant (A.5.3.4): UserID a URI or
                    // description, media type URI, and the network access point when the
                    // URI names a host (required for a network destination).
                    Participant {
                        user_id: destination.clone(),
                        alternative_user_id: None,
                        user_name: None,
                        requestor: false,
                        access_point: uri_host(destination),
                        role: Some(ROLE_DESTINATION_MEDIA),
                        media: Some(MEDIA_URI),
                    },
                ],
                objects: study_objects(studies),
            }
        }
    }
}

/// The host of a `scheme://[user@]host[:port]/...` URI, if it names one (`file:///x` does not).
pub(super) fn uri_host(uri: &str) -> Option<String> {
    let (_, rest) = uri.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split_once(']').map(|(h, _)| h)?
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// A Security Alert (A.5.3.11): the node reports, the peer performed (never the requestor),
/// and the peer's node is the alert subject with the description as "Alert Description".
fn security_alert(
    node_ae: &str,
    acting_ae: &str,
    peer: &Peer,
    kind: Code,
    description: String,
) -> Message {
    Message {
        event_id: SECURITY_ALERT,
        action: "E",
        outcome: "4",
        outcome_description: Some(description.clone()),
        type_codes: vec![kind],
        participants: vec![
            Participant::node(node_ae, acting_ae, false, None),
            Participant::peer(peer, false, None),
        ],
        objects: vec![Object {
            id: peer.host.clone(),
            type_code: "2",
            role: "13",
            id_type: NODE_ID,
            name_or_query: NameOrQuery::Name(peer.ae_title.clone()),
            details: vec![("Alert Description", description.into_bytes())],
            sop_classes: Vec::new(),
        }],
    }
}

/// One Study object per study (type 2 system, role 3 report) with its SOP classes and counts,
/// then one Patient object per distinct patient ID (type 1 person, role 1 patient).
fn study_objects(studies: &[StudyInstances]) -> Vec<Object> {
    let mut objects = Vec::with_capacity(studies.len() * 2);
    let mut patients: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for s in studies {
        objects.push(Object {
            id: s.study_uid.clone(),
            type_code: "2",
            role: "3",
            id_type: STUDY_INSTANCE_UID,
            // The schema requires a name or a query; a study has no name of its own (the
            // patient's name belongs to the Patient object only).
            name_or_query: NameOrQuery::Name(String::new()),
            details: Vec::new(),
            sop_classes: s.sop_classes.clone(),
        });
        if let Some(id) = s.patient_id.as_deref() {
            let name = patients.entry(id).or_insert(None);
            if name.is_none() {
                *name = s.patient_name.as_deref();
            }
        }
    }
    for (id, name) in patients {
        objects.push(Object {
            id: id.to_string(),
            type_code: "1",
            role: "1",
            id_type: PATIENT_NUMBER,
            name_or_query: NameOrQuery::Name(name.unwrap_or_default().to_string()),
            details: Vec::new(),
            sop_classes: Vec::new(),
        });
    }
    objects
}

fn participant(out: &mut String, p: &Participant) {
    out.push_str("<ActiveParticipant");
    attr(out, "UserID", &p.user_id);
    if let Some(alt) = &p.alternative_user_id {
        attr(out, "AlternativeUserID", alt);
    }
    if let Some(name) = &p.user_name {
        attr(out, "UserName", name);
    }
    attr(
        out,
        "UserIsRequestor",
        if p.requestor { "true" } else { "false" },
    );
    if let Some(ap) = &p.access_point {
        attr(out, "NetworkAccessPointID", ap);
        let type_code = if ap.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            "2"
        } else {
            "1"
        };
        attr(out, "NetworkAccessPointTypeCode", type_code);
    }
    if p.role.is_none() && p.media.is_none() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    if let Some(role) = p.role {
        code(out, "RoleIDCode", role);
    }
    if let Some(media) = p.media {
        out.push_str("<MediaIdentifier>");
        code(out, "MediaType", media);
        out.push_str("</MediaIdentifier>");
    }
    out.push_str("</ActiveParticipant>");
}

fn object(out: &mut String, o: &Object) {
    let b64 = base64::engine::general_purpose::STANDARD;
    out.push_str("<ParticipantObjectIdentification");
    attr(out, "ParticipantObjectID", &o.id);
    attr(out, "ParticipantObjectTypeCode", o.type_code);
    attr(out, "ParticipantObjectTypeCodeRole", o.role);
    out.push('>');
    code(out, "ParticipantObjectIDTypeCode", o.id_type);
    match &o.name_or_query {
        NameOrQuery::Name(name) => {
            out.push_str("<ParticipantObjectName>");
            out.push_str(&escape(name));
            out.push_str("</ParticipantObjectName>");
        }
        NameOrQuery::Query(query) => {
            out.push_str("<ParticipantObjectQuery>");
            out.push_str(&b64.encode(query));
            out.push_str("</ParticipantObjectQuery>");
        }
    }
    for (kind, value) in &o.details {
        out.push_str("<ParticipantObjectDetail");
        attr(out, "type", kind);
        attr(out, "value", &b64.encode(value));
        out.push_str("/>");
    }
    if !o.sop_classes.is_empty() {
        out.push_str("<ParticipantObjectDescription>");
        for (uid, n) in &o.sop_classes {
            out.push_str("<SOPClass");
            attr(out, "UID", uid);
            attr(out, "NumberOfInstances", &n.to_string());
            out.push_str("/>");
        }
        out.push_str("</ParticipantObjectDescription>");
    }
    out.push_str("</ParticipantObjectIdentification>");
}

fn code(out: &mut String, element: &str, c: Code) {
    let _ = write!(out, "<{element}");
    attr(out, "csd-code", c.0);
    attr(out, "codeSystemName", c.1);
    attr(out, "originalText", c.2);
    out.push_str("/>");
}

fn attr(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, " {name}=\"{}\"", escape(value));
}

/// Escapes a value for XML text or a double- or single-quoted attribute. Line breaks and tabs
/// become character references (one message stays one line, and attribute values keep them);
/// the other C0 controls, which XML 1.0 cannot carry even as references, become U+FFFD.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push('\u{fffd}'),
            // Not characters in XML 1.0 either; Rust strings cannot hold surrogates.
            '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}
