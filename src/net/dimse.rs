//! DIMSE command sets (PS3.7 chapter 9): encoding, parsing, and moving messages over P-DATA.
//!
//! Command sets are always Implicit VR Little Endian and hold a handful of simple elements, so
//! they are encoded and parsed here directly: a pure `bytes -> Result<Command>` parser that is
//! easy to test, instead of a general data set reader.

use std::collections::BTreeMap;

use dicom_ul::Pdu;
use dicom_ul::pdu::{PDataValue, PDataValueType};

/// Command Field values used by the node.
pub mod field {
    /// C-STORE-RQ
    pub const C_STORE_RQ: u16 = 0x0001;
    /// C-STORE-RSP
    pub const C_STORE_RSP: u16 = 0x8001;
    /// C-ECHO-RQ
    pub const C_ECHO_RQ: u16 = 0x0030;
    /// C-ECHO-RSP
    pub const C_ECHO_RSP: u16 = 0x8030;
    /// C-FIND-RQ
    pub const C_FIND_RQ: u16 = 0x0020;
    /// C-FIND-RSP
    pub const C_FIND_RSP: u16 = 0x8020;
    /// C-CANCEL-RQ
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
    /// C-GET-RQ
    pub const C_GET_RQ: u16 = 0x0010;
    /// C-GET-RSP
    pub const C_GET_RSP: u16 = 0x8010;
    /// C-MOVE-RQ
    pub const C_MOVE_RQ: u16 = 0x0021;
    /// C-MOVE-RSP
    pub const C_MOVE_RSP: u16 = 0x8021;
    /// N-EVENT-REPORT-RQ (PS3.7 10.3.1): the node's Storage Commitment report.
    pub const N_EVENT_REPORT_RQ: u16 = 0x0100;
    /// N-EVENT-REPORT-RSP
    pub const N_EVENT_REPORT_RSP: u16 = 0x8100;
    /// N-GET-RQ (not served; named so that a refusal can say what it refused).
    pub const N_GET_RQ: u16 = 0x0110;
    /// N-GET-RSP
    pub const N_GET_RSP: u16 = 0x8110;
    /// N-SET-RQ (PS3.7 10.3.3): an MPPS update.
    pub const N_SET_RQ: u16 = 0x0120;
    /// N-SET-RSP
    pub const N_SET_RSP: u16 = 0x8120;
    /// N-ACTION-RQ (PS3.7 10.3.4): a Storage Commitment request.
    pub const N_ACTION_RQ: u16 = 0x0130;
    /// N-ACTION-RSP
    pub const N_ACTION_RSP: u16 = 0x8130;
    /// N-CREATE-RQ (PS3.7 10.3.5): a new MPPS.
    pub const N_CREATE_RQ: u16 = 0x0140;
    /// N-CREATE-RSP
    pub const N_CREATE_RSP: u16 = 0x8140;
    /// N-DELETE-RQ (not served).
    pub const N_DELETE_RQ: u16 = 0x0150;
    /// N-DELETE-RSP
    pub const N_DELETE_RSP: u16 = 0x8150;
}

/// DIMSE status codes (PS3.4 B.2.3 and PS3.7 C).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources (disk space, I/O failure).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP class (or contradicts the command).
    pub const DATA_SET_MISMATCH: u16 = 0xA900;
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Refused: not authorized (PS3.7 C.4.1; the peer may not use this service).
    pub const NOT_AUTHORIZED: u16 = 0x0124;
    /// Pending: a match or a sub-operation report follows.
    pub const PENDING: u16 = 0xFF00;
    /// Cancel: the operation stopped after a C-CANCEL-RQ.
    pub const CANCEL: u16 = 0xFE00;
    /// Refused: out of resources, unable to perform sub-operations (C-MOVE/C-GET).
    pub const SUB_OPERATIONS_IMPOSSIBLE: u16 = 0xA702;
    /// Refused: Move Destination unknown.
    pub const MOVE_DESTINATION_UNKNOWN: u16 = 0xA801;
    /// Warning: sub-operations complete, one or more failures or warnings.
    pub const SUB_OPERATIONS_FAILED: u16 = 0xB000;

    // DIMSE-N statuses (PS3.7 Annex C). Several double as Storage Commitment Failure Reasons
    // (0008,1197) (PS3.4 J.3.2.1.1): 0x0110, 0x0112, 0x0119, 0x0122, 0x0131, 0x0213.

    /// Failure: no such attribute (an N-SET/N-GET names an attribute the object lacks).
    pub const NO_SUCH_ATTRIBUTE: u16 = 0x0105;
    /// Failure: invalid attribute value; an Attribute Identifier List may name them.
    pub const INVALID_ATTRIBUTE_VALUE: u16 = 0x0106;
    /// Warning: attribute list error (some attributes were not read or set).
    pub const ATTRIBUTE_LIST_ERROR: u16 = 0x0107;
    /// Failure: processing failure (also a commitment Failure Reason: the file is unreadable).
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// Failure: duplicate SOP instance (N-CREATE of an existing instance).
    pub const DUPLICATE_SOP_INSTANCE: u16 = 0x0111;
    /// Failure: no such SOP instance (also the commitment Failure Reason for a missing
    /// instance).
    pub const NO_SUCH_SOP_INSTANCE: u16 = 0x0112;
    /// Failure: no such event type.
    pub const NO_SUCH_EVENT_TYPE: u16 = 0x0113;
    /// Failure: no such argument.
    pub const NO_SUCH_ARGUMENT: u16 = 0x0114;
    /// Failure: invalid argument value.
    pub const INVALID_ARGUMENT_VALUE: u16 = 0x0115;
    /// Warning: attribute value out of range.
    pub const ATTRIBUTE_VALUE_OUT_OF_RANGE: u16 = 0x0116;
    /// Failure: invalid object instance.
    pub const INVALID_OBJECT_INSTANCE: u16 = 0x0117;
    /// Failure: no such SOP class.
    pub const NO_SUCH_SOP_CLASS: u16 = 0x0118;
    /// Failure: class-instance conflict (also the commitment Failure Reason for an instance
    /// stored under another SOP class).
    pub const CLASS_INSTANCE_CONFLICT: u16 = 0x0119;
    /// Failure: missing attribute (a type 1 attribute is absent).
    pub const MISSING_ATTRIBUTE: u16 = 0x0120;
    /// Failure: missing attribute value (a type 1 attribute is empty).
    pub const MISSING_ATTRIBUTE_VALUE: u16 = 0x0121;
    /// Failure: no such action (an Action Type ID the SOP class does not define).
    pub const NO_SUCH_ACTION: u16 = 0x0123;
    /// Failure reason (not a DIMSE status): duplicate transaction UID (PS3.4 J.3.2.1.1).
    pub const DUPLICATE_TRANSACTION_UID: u16 = 0x0131;
    /// Failure: duplicate invocation (a Message ID already in use).
    pub const DUPLICATE_INVOCATION: u16 = 0x0210;
    /// Failure: mistyped argument.
    pub const MISTYPED_ARGUMENT: u16 = 0x0212;
    /// Failure: resource limitation.
    pub const RESOURCE_LIMITATION: u16 = 0x0213;
    /// MPPS Error ID (0000,0903) with 0x0110: "Performed Procedure Step Object may no longer
    /// be updated" (PS3.4 Table F.7.2-2).
    pub const MPPS_NO_LONGER_UPDATABLE: u16 = 0xA710;
}

/// Command sets hold a dozen short elements (a C-FIND's identifier is a data set, not part
/// of the command); anything near this size is not a command set, from either side.
pub const MAX_COMMAND_SET: usize = 64 * 1024;

/// Command Data Set Type value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;

const AFFECTED_SOP_CLASS_UID: u32 = 0x0000_0002;
const REQUESTED_SOP_CLASS_UID: u32 = 0x0000_0003;
const COMMAND_FIELD: u32 = 0x0000_0100;
const MESSAGE_ID: u32 = 0x0000_0110;
const MESSAGE_ID_BEING_RESPONDED_TO: u32 = 0x0000_0120;
const PRIORITY: u32 = 0x0000_0700;
const COMMAND_DATA_SET_TYPE: u32 = 0x0000_0800;
const STATUS: u32 = 0x0000_0900;
const OFFENDING_ELEMENT: u32 = 0x0000_0901;
const ERROR_COMMENT: u32 = 0x0000_0902;
const ERROR_ID: u32 = 0x0000_0903;
const AFFECTED_SOP_INSTANCE_UID: u32 = 0x0000_1000;
const REQUESTED_SOP_INSTANCE_UID: u32 = 0x0000_1001;
const EVENT_TYPE_ID: u32 = 0x0000_1002;
const ATTRIBUTE_IDENTIFIER_LIST: u32 = 0x0000_1005;
const ACTION_TYPE_ID: u32 = 0x0000_1008;
const MOVE_DESTINATION: u32 = 0x0000_0600;
const REMAINING_SUB_OPERATIONS: u32 = 0x0000_1020;
const COMPLETED_SUB_OPERATIONS: u32 = 0x0000_1021;
const FAILED_SUB_OPERATIONS: u32 = 0x0000_1022;
const WARNING_SUB_OPERATIONS: u32 = 0x0000_1023;
const MOVE_ORIGINATOR_AE_TITLE: u32 = 0x0000_1030;
const MOVE_ORIGINATOR_MESSAGE_ID: u32 = 0x0000_1031;

/// A malformed command set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// The bytes end inside an element.
    #[error("command set truncated at byte {0}")]
    Truncated(usize),
    /// A required element is absent or has the wrong size.
    #[error("command set lacks a valid {0}")]
    Missing(&'static str),
}

/// A parsed command set: the elements of group 0000 by tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    elements: BTreeMap<u32, Vec<u8>>,
}

impl Command {
    /// Parses an Implicit VR Little Endian command set.
    pub fn parse(bytes: &[u8]) -> Result<Command, CommandError> {
        let mut elements = BTreeMap::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let head = bytes.get(at..at + 8).ok_or(CommandError::Truncated(at))?;
            let group = u16::from_le_bytes([head[0], head[1]]) as u32;
            let elem = u16::from_le_bytes([head[2], head[3]]) as u32;
            let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let value = bytes
                .get(at + 8..at + 8 + len)
                .ok_or(CommandError::Truncated(at))?;
            elements.insert((group << 16) | elem, value.to_vec());
            at += 8 + len;
        }
        Ok(Command { elements })
    }

    fn u16(&self, tag: u32, name: &'static str) -> Result<u16, CommandError> {
        match self.elements.get(&tag).map(Vec::as_slice) {
            Some([a, b]) => Ok(u16::from_le_bytes([*a, *b])),
            _ => Err(CommandError::Missing(name)),
        }
    }

    fn text(&self, tag: u32) -> Option<String> {
        self.elements.get(&tag).map(|v| {
            String::from_utf8_lossy(v)
                .trim_end_matches(['\0', ' '])
                .to_string()
        })
    }

    /// Command Field (0000,0100).
    pub fn command_field(&self) -> Result<u16, CommandError> {
        self.u16(COMMAND_FIELD, "Command Field (0000,0100)")
    }

    /// Message ID (0000,0110).
    pub fn message_id(&self) -> Result<u16, CommandError> {
        self.u16(MESSAGE_ID, "Message ID (0000,0110)")
    }

    /// Message ID Being Responded To (0000,0120).
    pub fn message_id_responded_to(&self) -> Result<u16, CommandError> {
        self.u16(
            MESSAGE_ID_BEING_RESPONDED_TO,
            "Message ID Being Responded To (0000,0120)",
        )
    }

    /// Status (0000,0900) of a response.
    pub fn status(&self) -> Result<u16, CommandError> {
        self.u16(STATUS, "Status (0000,0900)")
    }

    /// True when a data set follows the command.
    pub fn has_data_set(&self) -> Result<bool, CommandError> {
        Ok(self.u16(COMMAND_DATA_SET_TYPE, "Command Data Set Type (0000,0800)")? != NO_DATA_SET)
    }

    /// Affected SOP Class UID (0000,0002).
    pub fn affected_sop_class_uid(&self) -> Option<String> {
        self.text(AFFECTED_SOP_CLASS_UID)
    }

    /// Affected SOP Instance UID (0000,1000).
    pub fn affected_sop_instance_uid(&self) -> Option<String> {
        self.text(AFFECTED_SOP_INSTANCE_UID)
    }

    /// Error Comment (0000,0902) of a response.
    pub fn error_comment(&self) -> Option<String> {
        self.text(ERROR_COMMENT)
    }

    /// Move Destination (0000,0600) of a C-MOVE-RQ, trimmed.
    pub fn move_destination(&self) -> Option<String> {
        self.text(MOVE_DESTINATION).map(|s| s.trim().to_string())
    }

    /// Move Originator AE Title (0000,1030) of a C-STORE-RQ made for a C-MOVE.
    pub fn move_originator_ae_title(&self) -> Option<String> {
        self.text(MOVE_ORIGINATOR_AE_TITLE)
            .map(|s| s.trim().to_string())
    }

    /// Move Originator Message ID (0000,1031) of a C-STORE-RQ made for a C-MOVE.
    pub fn move_originator_message_id(&self) -> Result<u16, CommandError> {
        self.u16(
            MOVE_ORIGINATOR_MESSAGE_ID,
            "Move Originator Message ID (0000,1031)",
        )
    }

    /// Requested SOP Class UID (0000,0003) of an N-SET/N-ACTION/N-GET/N-DELETE-RQ.
    pub fn requested_sop_class_uid(&self) -> Option<String> {
        self.text(REQUESTED_SOP_CLASS_UID)
    }

    /// Requested SOP Instance UID (0000,1001) of an N-SET/N-ACTION/N-GET/N-DELETE-RQ.
    pub fn requested_sop_instance_uid(&self) -> Option<String> {
        self.text(REQUESTED_SOP_INSTANCE_UID)
    }

    /// Action Type ID (0000,1008) of an N-ACTION-RQ/RSP.
    pub fn action_type_id(&self) -> Result<u16, CommandError> {
        self.u16(ACTION_TYPE_ID, "Action Type ID (0000,1008)")
    }

    /// Event Type ID (0000,1002) of an N-EVENT-REPORT-RQ/RSP.
    pub fn event_type_id(&self) -> Result<u16, CommandError> {
        self.u16(EVENT_TYPE_ID, "Event Type ID (0000,1002)")
    }

    /// Error ID (0000,0903) of a failure response (MPPS uses 0xA710).
    pub fn error_id(&self) -> Result<u16, CommandError> {
        self.u16(ERROR_ID, "Error ID (0000,0903)")
    }

    /// Offending Element (0000,0901) of a failure response, as `(group << 16) | element` tags;
    /// empty when absent or malformed.
    pub fn offending_elements(&self) -> Vec<u32> {
        self.tags(OFFENDING_ELEMENT)
    }

    /// Attribute Identifier List (0000,1005) of an N-* response (the attributes a 0x0106 or
    /// 0x0120 status is about); empty when absent or malformed.
    pub fn attribute_identifier_list(&self) -> Vec<u32> {
        self.tags(ATTRIBUTE_IDENTIFIER_LIST)
    }

    /// An AT value: 4 bytes per tag, group then element, each little endian.
    fn tags(&self, tag: u32) -> Vec<u32> {
        match self.elements.get(&tag) {
            Some(v) if v.len() % 4 == 0 => v
                .chunks_exact(4)
                .map(|c| {
                    (u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)
                        | u32::from(u16::from_le_bytes([c[2], c[3]]))
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The sub-operation counts of a C-MOVE-RSP or C-GET-RSP: remaining, completed, failed,
    /// warning (0000,1020-1023). Each is optional in a response (PS3.7 9.3.4.2, 9.3.3.2), so an
    /// absent or malformed one is `None`.
    pub fn sub_operations(&self) -> [Option<u16>; 4] {
        [
            REMAINING_SUB_OPERATIONS,
            COMPLETED_SUB_OPERATIONS,
            FAILED_SUB_OPERATIONS,
            WARNING_SUB_OPERATIONS,
        ]
        .map(|tag| match self.elements.get(&tag).map(Vec::as_slice) {
            Some([a, b]) => Some(u16::from_le_bytes([*a, *b])),
            _ => None,
        })
    }
}

/// Builds a command set; [`CommandBuilder::encode`] adds the group length.
#[derive(Debug, Default)]
pub struct CommandBuilder {
    elements: BTreeMap<u32, Vec<u8>>,
}

impl CommandBuilder {
    fn us(mut self, tag: u32, v: u16) -> Self {
        self.elements.insert(tag, v.to_le_bytes().to_vec());
        self
    }

    /// Adds a UI value, padded with NUL to even length.
    fn ui(mut self, tag: u32, v: &str) -> Self {
        let mut b = v.as_bytes().to_vec();
        if b.len() % 2 == 1 {
            b.push(0);
        }
        self.elements.insert(tag, b);
        self
    }

    /// Adds an AT value with one or more tags (`(group << 16) | element`), 4 bytes each.
    fn at(mut self, tag: u32, tags: &[u32]) -> Self {
        let mut b = Vec::with_capacity(4 * tags.len());
        for t in tags {
            b.extend_from_slice(&((t >> 16) as u16).to_le_bytes());
            b.extend_from_slice(&((t & 0xFFFF) as u16).to_le_bytes());
        }
        self.elements.insert(tag, b);
        self
    }

    /// Adds an LO value (at most 64 characters), padded with a space.
    fn lo(mut self, tag: u32, v: &str) -> Self {
        let mut b: Vec<u8> = v
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '\\')
            .take(64)
            .map(|c| c as u8)
            .collect();
        if b.len() % 2 == 1 {
            b.push(b' ');
        }
        self.elements.insert(tag, b);
        self
    }

    /// Encodes with the Command Group Length first.
    pub fn encode(&self) -> Vec<u8> {
        let body_len: usize = self.elements.values().map(|v| 8 + v.len()).sum();
        let mut out = Vec::with_capacity(12 + body_len);
        out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        for (tag, value) in &self.elements {
            out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
            out.extend_from_slice(&((tag & 0xFFFF) as u16).to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }
}

/// C-ECHO-RQ.
pub fn c_echo_rq(message_id: u16) -> CommandBuilder {
    CommandBuilder::default()
        .ui(AFFECTED_SOP_CLASS_UID, super::VERIFICATION)
        .us(COMMAND_FIELD, field::C_ECHO_RQ)
        .us(MESSAGE_ID, message_id)
        .us(COMMAND_DATA_SET_TYPE, NO_DATA_SET)
}

/// C-ECHO-RSP (PS3.7 9.3.5.2): Affected SOP Class UID and Message ID Being Responded To.
pub fn c_echo_rsp(responding_to: u16, status: u16) -> CommandBuilder {
    CommandBuilder::default()
        .ui(AFFECTED_SOP_CLASS_UID, super::VERIFICATION)
        .us(COMMAND_FIELD, field::C_ECHO_RSP)
        .us(MESSAGE_ID_BEING_RESPONDED_TO, responding_to)
        .us(COMMAND_DATA_SET_TYPE, NO_DATA_SET)
        .us(STATUS, status)
}

/// C-STORE-RQ with medium priority.
pub fn c_store_rq(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> CommandBuilder {
    CommandBuilder::default()
        .ui(AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .us(COMMAND_FIELD, field::C_STORE_RQ)
        .us(MESSAGE_ID, message_id)
        .us(PRIORITY, 0)
        .us(COMMAND_DATA_SET_TYPE, 0x0000)
        .ui(AFFECTED_SOP_INSTANCE_UID, sop_instance_uid)
}

/// Sub-operation counts of a C-MOVE/C-GET response (PS3.7 9.3.3.2, 9.3.4.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOperations {
    /// Not yet attempted.
    pub remaining: u16,
    /// Succeeded.
    pub completed: u16,
    /// Failed.
    pub failed: u16,
    /// Succeeded with a warning status.
    pub warning: u16,
}

/// A C-FIND/C-MOVE/C-GET response. `counts` are for C-MOVE/C-GET (remaining is left out of
/// a final response other than Cancel, as PS3.4 C.4.2.1.6 asks); `has_identifier` says an identifier data
/// set follows (a C-FIND match, or a Failed SOP Instance UID List).
pub fn qr_rsp(
    response_field: u16,
    responding_to: u16,
    sop_class_uid: &str,
    status: u16,
    has_identifier: bool,
    counts: Option<SubOperations>,
    error_comment: Option<&str>,
) -> CommandBuilder {
    let mut b = CommandBuilder::default()
        .ui(AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .us(COMMAND_FIELD, response_field)
        .us(MESSAGE_ID_BEING_RESPONDED_TO, responding_to)
        .us(
            COMMAND_DATA_SET_TYPE,
            if has_identifier { 0x0000 } else { NO_DATA_SET },
        )
        .us(STATUS, status);
    if let Some(c) = counts {
        if status == status::PENDING || status == status::CANCEL {
            b = b.us(REMAINING_SUB_OPERATIONS, c.remaining);
        }
        b = b
            .us(COMPLETED_SUB_OPERATIONS, c.completed)
            .us(FAILED_SUB_OPERATIONS, c.failed)
            .us(WARNING_SUB_OPERATIONS, c.warning);
    }
    match error_comment {
        Some(c) => b.lo(ERROR_COMMENT, c),
        None => b,
    }
}

impl CommandBuilder {
    /// Adds Move Originator AE Title and Message ID (a C-STORE-RQ made for a C-MOVE).
    pub fn move_originator(self, ae_title: &str, message_id: u16) -> Self {
        self.lo(MOVE_ORIGINATOR_AE_TITLE, ae_title)
            .us(MOVE_ORIGINATOR_MESSAGE_ID, message_id)
    }
}

/// C-FIND-RQ with medium priority; an identifier (the query) follows.
pub fn c_find_rq(message_id: u16, sop_class_uid: &str) -> CommandBuilder {
    CommandBuilder::default()
        .ui(AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .us(COMMAND_FIELD, field::C_FIND_RQ)
        .us(MESSAGE_ID, message_id)
        .us(PRIORITY, 0)
        .us(COMMAND_DATA_SET_TYPE, 0x0000)
}

/// C-MOVE-RQ with medium priority to the AE title `destination`; an identifier follows.
pub fn c_move_rq(message_id: u16, sop_class_uid: &str, destination: &str) -> CommandBuilder {
    CommandBuilder::default()
        .ui(AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .us(COMMAND_FIELD, field::C_MOVE_RQ)
        .us(MESSAGE_ID, message_id)
        .us(PRIORITY, 0)
        .us(COMMAND_DATA_SET_TYPE, 0x0000)
        .lo(MOVE_DESTINATION, destination)
}

/// C-GET-RQ with medium priority; an identifier follows.
pub fn c_get_rq(message_id: u16, sop_class_uid: &str) -> CommandBuilder {
    CommandBuilder::default()
        .ui(AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .us(COMMAND_FIELD, field::C_GET_RQ)
        .us(MESSAGE_ID, message_id)
        .us(PRIORITY, 0)
        .us(COMMAND_DATA_SET_TYPE, 0x0000)
}

/// C-CANCEL-RQ (PS3.7 9.3.2.3) for the operation with Message ID `responding_to`.
pub fn c_cancel_rq(responding_to: u16) -> CommandBuilder {
    CommandBuilder::default()
        .us(COMMAND_FIELD, field::C_CANCEL_RQ)
        .us(MESSAGE_ID_BEING_RESPONDED_TO, responding_to)
        .us(COMMAND_DATA_SET_TYPE, NO_DATA_SET)
}

/// The largest PDV value that fits a peer's maximum PDU length, even (DCMTK rejects odd
/// fragments). `max_pdu` is the PDU *variable field* length, of which the PDV item header
/// takes 6 bytes. PS3.8 allows any maximum (dicom-ul maps 0, "no limit", to its largest), so
/// a small one is honoured as it is rather than raised to a comfortable size the peer would
/// refuse; values too small to carry data are treated as 8 bytes.
pub fn max_fragment(max_pdu: u32) -> usize {
    ((max_pdu.clamp(8, 4 * 1024 * 1024) - 6) & !1) as usize
}

/// C-STORE-RSP; failures carry an Error Comment saying why.
pub fn c_store_rsp(
    responding_to: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    status: u16,
    error_comment: Option<&str>,
) -> CommandBuilder {
    let b = CommandBuilder::default()
        .ui(AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .us(COMMAND_FIELD, field::C_STORE_RSP)
        .us(MESSAGE_ID_BEING_RESPONDED_TO, responding_to)
        .us(COMMAND_DATA_SET_TYPE, NO_DATA_SET)
        .us(STATUS, status)
        .ui(AFFECTED_SOP_INSTANCE_UID, sop_instance_uid);
    match error_comment {
        Some(c) => b.lo(ERROR_COMMENT, c),
        None => b,
    }
}

/// The response to a request the node does not perform: the request's field with the
/// response bit set, and a failure status.
pub fn failure_rsp(
    request_field: u16,
    responding_to: u16,
    sop_class_uid: Option<&str>,
    status: u16,
) -> CommandBuilder {
    let b = CommandBuilder::default()
        .us(COMMAND_FIELD, request_field | 0x8000)
        .us(MESSAGE_ID_BEING_RESPONDED_TO, responding_to)
        .us(COMMAND_DATA_SET_TYPE, NO_DATA_SET)
        .us(STATUS, status);
    match sop_class_uid {
        Some(uid) => b.ui(AFFECTED_SOP_CLASS_UID, uid),
        None => b,
    }
}

/// Command Data Set Type (0000,0800) for a message that does or does not carry a data set.
fn data_set_type(has_data_set: bool) -> u16 {
    if has_data_set { 0x0000 } else { NO_DATA_SET }
}

/// N-EVENT-REPORT-RQ (PS3.7 10.3.1.1): Event Information follows when `has_data_set` (always,
/// for a Storage Commitment report).
pub fn n_event_report_rq(
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    event_type_id: u16,
    has_data_set: bool,
) -> CommandBuilder {
    CommandBuilder::default()
        .ui(AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .us(COMMAND_FIELD, field::N_EVENT_REPORT_RQ)
        .us(MESSAGE_ID, message_id)
        .us(COMMAND_DATA_SET_TYPE, data_set_type(has_data_set))
        .ui(AFFECTED_SOP_INSTANCE_UID, sop_instance_uid)
        .us(EVENT_TYPE_ID, event_type_id)
}

/// The generic DIMSE-N response (PS3.7 10.3): the request's field with the response bit,
/// Message ID Being Responded To, Status, and the Affected SOP Class/Instance UIDs when known
/// (a request too malformed to name them still gets an answer). Add the message-specific
/// elements with [`CommandBuilder::event_type_id`], [`CommandBuilder::action_type_id`],
/// [`CommandBuilder::error_comment`], [`CommandBuilder::error_id`],
/// [`CommandBuilder::offending_elements`] and [`CommandBuilder::attribute_identifier_list`].
pub fn n_rsp(
    response_field: u16,
    responding_to: u16,
    sop_class_uid: Option<&str>,
    sop_instance_uid: Option<&str>,
    status: u16,
    has_data_set: bool,
) -> CommandBuilder {
    let mut b = CommandBuilder::default()
        .us(COMMAND_FIELD, response_field | 0x8000)
        .us(MESSAGE_ID_BEING_RESPONDED_TO, responding_to)
        .us(COMMAND_DATA_SET_TYPE, data_set_type(has_data_set))
        .us(STATUS, status);
    if let Some(uid) = sop_class_uid {
        b = b.ui(AFFECTED_SOP_CLASS_UID, uid);
    }
    if let Some(uid) = sop_instance_uid {
        b = b.ui(AFFECTED_SOP_INSTANCE_UID, uid);
    }
    b
}

/// N-EVENT-REPORT-RSP (PS3.7 10.3.1.2), without Event Reply (no data set).
pub fn n_event_report_rsp(
    responding_to: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    event_type_id: u16,
    status: u16,
) -> CommandBuilder {
    n_rsp(
        field::N_EVENT_REPORT_RSP,
        responding_to,
        Some(sop_class_uid),
        Some(sop_instance_uid),
        status,
        false,
    )
    .event_type_id(event_type_id)
}

/// N-SET-RQ (PS3.7 10.3.3.1); the Modification List data set always follows.
pub fn n_set_rq(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> CommandBuilder {
    CommandBuilder::default()
        .ui(REQUESTED_SOP_CLASS_UID, sop_class_uid)
        .us(COMMAND_FIELD, field::N_SET_RQ)
        .us(MESSAGE_ID, message_id)
        .us(COMMAND_DATA_SET_TYPE, 0x0000)
        .ui(REQUESTED_SOP_INSTANCE_UID, sop_instance_uid)
}

/// N-SET-RSP (PS3.7 10.3.3.2); `has_data_set` when an Attribute List follows.
pub fn n_set_rsp(
    responding_to: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    status: u16,
    has_data_set: bool,
) -> CommandBuilder {
    n_rsp(
        field::N_SET_RSP,
        responding_to,
        Some(sop_class_uid),
        Some(sop_instance_uid),
        status,
        has_data_set,
    )
}

/// N-ACTION-RQ (PS3.7 10.3.4.1); Action Information follows when `has_data_set`.
pub fn n_action_rq(
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    action_type_id: u16,
    has_data_set: bool,
) -> CommandBuilder {
    CommandBuilder::default()
        .ui(REQUESTED_SOP_CLASS_UID, sop_class_uid)
        .us(COMMAND_FIELD, field::N_ACTION_RQ)
        .us(MESSAGE_ID, message_id)
        .us(COMMAND_DATA_SET_TYPE, data_set_type(has_data_set))
        .ui(REQUESTED_SOP_INSTANCE_UID, sop_instance_uid)
        .us(ACTION_TYPE_ID, action_type_id)
}

/// N-ACTION-RSP (PS3.7 10.3.4.2), the Action Type ID echoed, without Action Reply.
pub fn n_action_rsp(
    responding_to: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    action_type_id: u16,
    status: u16,
) -> CommandBuilder {
    n_rsp(
        field::N_ACTION_RSP,
        responding_to,
        Some(sop_class_uid),
        Some(sop_instance_uid),
        status,
        false,
    )
    .action_type_id(action_type_id)
}

/// N-CREATE-RQ (PS3.7 10.3.5.1); the Attribute List follows when `has_data_set`. The
/// Affected SOP Instance UID is optional: without it the SCP assigns one.
pub fn n_create_rq(
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: Option<&str>,
    has_data_set: bool,
) -> CommandBuilder {
    let b = CommandBuilder::default()
        .ui(AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .us(COMMAND_FIELD, field::N_CREATE_RQ)
        .us(MESSAGE_ID, message_id)
        .us(COMMAND_DATA_SET_TYPE, data_set_type(has_data_set));
    match sop_instance_uid {
        Some(uid) => b.ui(AFFECTED_SOP_INSTANCE_UID, uid),
        None => b,
    }
}

/// N-CREATE-RSP (PS3.7 10.3.5.2); the Affected SOP Instance UID is the one the SCU gave or the
/// SCP assigned (absent only on failures before it is known).
pub fn n_create_rsp(
    responding_to: u16,
    sop_class_uid: &str,
    sop_instance_uid: Option<&str>,
    status: u16,
    has_data_set: bool,
) -> CommandBuilder {
    n_rsp(
        field::N_CREATE_RSP,
        responding_to,
        Some(sop_class_uid),
        sop_instance_uid,
        status,
        has_data_set,
    )
}

impl CommandBuilder {
    /// Adds Event Type ID (0000,1002).
    pub fn event_type_id(self, id: u16) -> Self {
        self.us(EVENT_TYPE_ID, id)
    }

    /// Adds Action Type ID (0000,1008).
    pub fn action_type_id(self, id: u16) -> Self {
        self.us(ACTION_TYPE_ID, id)
    }

    /// Adds Error Comment (0000,0902), LO: at most 64 characters are kept.
    pub fn error_comment(self, comment: &str) -> Self {
        self.lo(ERROR_COMMENT, comment)
    }

    /// Adds Error ID (0000,0903), US (MPPS's 0xA710).
    pub fn error_id(self, id: u16) -> Self {
        self.us(ERROR_ID, id)
    }

    /// Adds Offending Element (0000,0901), AT, one or more tags as `(group << 16) | element`.
    pub fn offending_elements(self, tags: &[u32]) -> Self {
        self.at(OFFENDING_ELEMENT, tags)
    }

    /// Adds Attribute Identifier List (0000,1005), AT: the attributes a 0x0106/0x0120 status
    /// is about.
    pub fn attribute_identifier_list(self, tags: &[u32]) -> Self {
        self.at(ATTRIBUTE_IDENTIFIER_LIST, tags)
    }
}

/// A DIMSE-N data set (Action/Event Information, an MPPS Attribute List) that cannot be read
/// or written.
#[derive(Debug, thiserror::Error)]
pub enum DataSetError {
    /// The presentation context's transfer syntax is not in the registry.
    #[error("unknown transfer syntax {0}")]
    UnknownTransferSyntax(String),
    /// The bytes are not a data set in that transfer syntax.
    #[error("malformed data set: {0}")]
    Malformed(String),
    /// The object cannot be encoded in that transfer syntax.
    #[error("cannot encode the data set: {0}")]
    Encode(String),
    /// Sequences nest deeper than [`MAX_NESTING`]: refused before parsing, because the parser
    /// recurses on the stack and a 10,000-deep nesting overflows it (killing the node).
    #[error("sequences nested deeper than {MAX_NESTING} levels")]
    TooDeep,
}

/// Deepest sequence nesting a DIMSE-N data set may have. MPPS and Storage Commitment lists
/// nest three or four levels; this is the limit the store's walker sets for instances.
pub const MAX_NESTING: usize = 64;

/// Whether a Little Endian data set nests sequences deeper than `max`, found by walking tags
/// and lengths without recursion (values are skipped). A truncated or malformed data set
/// answers `false`: the parser reports it.
///
/// Descends into SQ values, undefined-length values (encapsulated data, UN sequences) and,
/// in Implicit VR where the dictionary would be needed, any value beginning with an Item tag:
/// descending too often only checks more, and the parser descends at least as often.
fn nests_deeper_than(bytes: &[u8], explicit: bool, max: usize) -> bool {
    const UNDEFINED: u32 = 0xFFFF_FFFF;
    let u16_at = |p: usize| {
        bytes
            .get(p..p + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |p: usize| {
        bytes
            .get(p..p + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // Open containers (sequences and items): their end offset, `None` when undefined.
    let mut open: Vec<Option<usize>> = Vec::new();
    let mut sequences = 0usize;
    let mut kinds: Vec<bool> = Vec::new(); // true: sequence, false: item
    let mut pos = 0usize;
    loop {
        // Close every defined-length container this position has reached.
        while let Some(Some(end)) = open.last() {
            if pos < *end {
                break;
            }
            open.pop();
            if kinds.pop() == Some(true) {
                sequences -= 1;
            }
        }
        let (Some(group), Some(element)) = (u16_at(pos), u16_at(pos + 2)) else {
            return false;
        };
        if group == 0xFFFE {
            let Some(len) = u32_at(pos + 4) else {
                return false;
            };
            pos += 8;
            match element {
                0xE000 => {
                    open.push((len != UNDEFINED).then(|| pos.saturating_add(len as usize)));
                    kinds.push(false);
                }
                // Item and sequence delimiters close the innermost undefined container.
                0xE00D | 0xE0DD => {
                    if open.pop().is_some() && kinds.pop() == Some(true) {
                        sequences -= 1;
                    }
                }
                _ => return false,
            }
            continue;
        }
        let (is_sq, len, head) = if explicit {
            let Some(vr) = bytes.get(pos + 4..pos + 6) else {
                return false;
            };
            let long = matches!(
                vr,
                b"OB"
                    | b"OD"
                    | b"OF"
                    | b"OL"
                    | b"OV"
                    | b"OW"
                    | b"SQ"
                    | b"SV"
                    | b"UC"
                    | b"UN"
                    | b"UR"
                    | b"UT"
                    | b"UV"
            );
            let len = if long {
                u32_at(pos + 8)
            } else {
                u16_at(pos + 6).map(u32::from)
            };
            let Some(len) = len else { return false };
            (vr == b"SQ", len, if long { 12 } else { 8 })
        } else {
            let Some(len) = u32_at(pos + 4) else {
                return false;
            };
            let item_follows = u32_at(pos + 8) == Some(0xE000_FFFE);
            (item_follows, len, 8)
        };
        pos += head;
        if is_sq || len == UNDEFINED {
            open.push((len != UNDEFINED).then(|| pos.saturating_add(len as usize)));
            kinds.push(true);
            sequences += 1;
            if sequences > max {
                return true;
            }
        } else {
            pos = pos.saturating_add(len as usize);
        }
    }
}

/// Reads a DIMSE-N data set in the presentation context's transfer syntax. The N-* contexts
/// are negotiated with Implicit or Explicit VR Little Endian only, so no inflating is needed.
pub fn read_data_set(
    bytes: &[u8],
    ts_uid: &str,
) -> Result<dicom_object::InMemDicomObject, DataSetError> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| DataSetError::UnknownTransferSyntax(ts_uid.to_string()))?;
    // Implicit VR Little Endian is the one syntax of the N-* contexts without explicit VRs.
    let explicit = ts.uid() != "1.2.840.10008.1.2";
    if nests_deeper_than(bytes, explicit, MAX_NESTING) {
        return Err(DataSetError::TooDeep);
    }
    dicom_object::InMemDicomObject::read_dataset_with_ts(bytes, ts)
        .map_err(|e| DataSetError::Malformed(e.to_string()))
}

/// Writes a DIMSE-N data set in the presentation context's transfer syntax.
pub fn write_data_set(
    obj: &dicom_object::InMemDicomObject,
    ts_uid: &str,
) -> Result<Vec<u8>, DataSetError> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| DataSetError::UnknownTransferSyntax(ts_uid.to_string()))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| DataSetError::Encode(e.to_string()))?;
    Ok(out)
}

/// Splits a message part into P-DATA PDUs that fit the peer's maximum PDU length.
///
/// `max_pdu` is the peer's maximum PDU *variable field* length; each PDU carries one PDV whose
/// item header takes 6 bytes of it.
pub fn pdata_pdus(
    pc_id: u8,
    value_type: PDataValueType,
    bytes: &[u8],
    max_pdu: u32,
    last_is_final: bool,
) -> Vec<Pdu> {
    let chunk = max_fragment(max_pdu);
    let n = bytes.len().div_ceil(chunk).max(1);
    (0..n)
        .map(|i| {
            let part = &bytes[(i * chunk).min(bytes.len())..((i + 1) * chunk).min(bytes.len())];
            Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc_id,
                    value_type: value_type.clone(),
                    is_last: last_is_final && i + 1 == n,
                    data: part.to_vec(),
                }],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_response_round_trips() {
        let bytes = c_store_rsp(
            7,
            "1.2.840.10008.5.1.4.1.1.4",
            "1.2.3",
            0xA900,
            Some("SOP Instance UID differs"),
        )
        .encode();
        let cmd = Command::parse(&bytes).unwrap();
        assert_eq!(cmd.command_field(), Ok(field::C_STORE_RSP));
        assert_eq!(cmd.message_id_responded_to(), Ok(7));
        assert_eq!(cmd.status(), Ok(0xA900));
        assert_eq!(cmd.has_data_set(), Ok(false));
        assert_eq!(
            cmd.affected_sop_class_uid().as_deref(),
            Some("1.2.840.10008.5.1.4.1.1.4")
        );
        assert_eq!(cmd.affected_sop_instance_uid().as_deref(), Some("1.2.3"));
        assert_eq!(
            cmd.error_comment().as_deref(),
            Some("SOP Instance UID differs")
        );
        // Group length covers exactly the rest.
        let group_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        assert_eq!(group_len, bytes.len() - 12);
    }

    #[test]
    fn q_r_responses_carry_counts_and_originators() {
        let c = SubOperations {
            remaining: 3,
            completed: 2,
            failed: 1,
            warning: 0,
        };
        let pending = qr_rsp(
            field::C_MOVE_RSP,
            9,
            "1.2.840.10008.5.1.4.1.2.2.2",
            status::PENDING,
            false,
            Some(c),
            None,
        )
        .encode();
        let cmd = Command::parse(&pending).unwrap();
        assert_eq!(cmd.status(), Ok(status::PENDING));
        assert_eq!(cmd.u16(REMAINING_SUB_OPERATIONS, "r"), Ok(3));
        assert_eq!(cmd.u16(FAILED_SUB_OPERATIONS, "f"), Ok(1));
        // A final success leaves Remaining out (PS3.4 C.4.2.1.6).
        let done = qr_rsp(
            field::C_MOVE_RSP,
            9,
            "1.2.840.10008.5.1.4.1.2.2.2",
            status::SUCCESS,
            false,
            Some(c),
            None,
        )
        .encode();
        assert!(
            Command::parse(&done)
                .unwrap()
                .u16(REMAINING_SUB_OPERATIONS, "r")
                .is_err()
        );
        let store = c_store_rq(4, "1.2.840.10008.5.1.4.1.1.4", "1.2.3")
            .move_originator("NAV", 9)
            .encode();
        let cmd = Command::parse(&store).unwrap();
        assert_eq!(cmd.move_originator_ae_title().as_deref(), Some("NAV"));
        assert_eq!(cmd.move_originator_message_id(), Ok(9));
    }

    /// A Content Sequence nested `depth` deep around one element, defined or undefined
    /// lengths, Explicit or Implicit VR Little Endian.
    fn nested(depth: usize, defined: bool, explicit: bool) -> Vec<u8> {
        let mut out = vec![0x10, 0x00, 0x20, 0x00];
        if explicit {
            out.extend_from_slice(b"LO\x04\x00PID1");
        } else {
            out.extend_from_slice(&[4, 0, 0, 0]);
            out.extend_from_slice(b"PID1");
        }
        for _ in 0..depth {
            let item_len = if defined { out.len() as u32 } else { u32::MAX };
            let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
            item.extend_from_slice(&item_len.to_le_bytes());
            item.extend_from_slice(&out);
            if !defined {
                item.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
                item.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            }
            let sq_len = if defined { item.len() as u32 } else { u32::MAX };
            let mut sq = vec![0x40, 0x00, 0x30, 0xA7];
            if explicit {
                sq.extend_from_slice(b"SQ\0\0");
            }
            sq.extend_from_slice(&sq_len.to_le_bytes());
            sq.extend_from_slice(&item);
            out = sq;
        }
        out
    }

    #[test]
    fn nesting_beyond_the_limit_is_refused_before_parsing() {
        for ts in ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"] {
            let explicit = ts != "1.2.840.10008.1.2";
            for defined in [true, false] {
                let ok = nested(MAX_NESTING, defined, explicit);
                assert!(
                    read_data_set(&ok, ts).is_ok(),
                    "{ts} defined={defined}: {MAX_NESTING} levels must parse"
                );
                let deep = nested(MAX_NESTING + 1, defined, explicit);
                assert!(
                    matches!(read_data_set(&deep, ts), Err(DataSetError::TooDeep)),
                    "{ts} defined={defined}"
                );
            }
        }
        // A truncated data set is left to the parser to report.
        let cut = nested(3, true, true);
        assert!(matches!(
            read_data_set(&cut[..cut.len() - 3], "1.2.840.10008.1.2.1"),
            Err(DataSetError::Malformed(_))
        ));
    }

    #[test]
    fn command_set_parses_with_dicom_object_too() {
        // An independent reader agrees with our encoding.
        let bytes = c_echo_rsp(3, 0).encode();
        let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let obj =
            dicom_object::InMemDicomObject::read_dataset_with_ts(bytes.as_slice(), &ts).unwrap();
        let v = obj
            .element(dicom_dictionary_std::tags::MESSAGE_ID_BEING_RESPONDED_TO)
            .unwrap();
        assert_eq!(v.to_int::<u16>().unwrap(), 3);
        let cls = obj
            .element(dicom_dictionary_std::tags::AFFECTED_SOP_CLASS_UID)
            .unwrap();
        assert_eq!(
            cls.to_str().unwrap().trim_end_matches('\0'),
            super::super::VERIFICATION
        );
    }

    #[test]
    fn truncated_and_incomplete_commands_are_errors() {
        let bytes = c_echo_rq(1).encode();
        assert!(matches!(
            Command::parse(&bytes[..bytes.len() - 1]),
            Err(CommandError::Truncated(_))
        ));
        let cmd = Command::parse(&bytes[..12]).unwrap();
        assert!(cmd.command_field().is_err());
    }

    #[test]
    fn retrieve_requests_parse_with_dicom_object() {
        use dicom_dictionary_std::tags;
        let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let bytes = c_move_rq(9, "1.2.840.10008.5.1.4.1.2.2.2", "STORESCP").encode();
        let obj =
            dicom_object::InMemDicomObject::read_dataset_with_ts(bytes.as_slice(), &ts).unwrap();
        // AE is padded with a space to even length, as PS3.5 6.2 wants.
        assert_eq!(
            obj.element(tags::MOVE_DESTINATION)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end(),
            "STORESCP"
        );
        assert_eq!(
            obj.element(tags::COMMAND_FIELD)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            field::C_MOVE_RQ
        );
        let cancel = Command::parse(&c_cancel_rq(9).encode()).unwrap();
        assert_eq!(cancel.command_field(), Ok(field::C_CANCEL_RQ));
        assert_eq!(cancel.message_id_responded_to(), Ok(9));
        assert_eq!(cancel.has_data_set(), Ok(false));
        let get = Command::parse(&c_get_rq(4, "1.2.840.10008.5.1.4.1.2.2.3").encode()).unwrap();
        assert_eq!(get.command_field(), Ok(field::C_GET_RQ));
        assert_eq!(get.sub_operations(), [None; 4]);
    }

    fn implicit_object(bytes: &[u8]) -> dicom_object::InMemDicomObject {
        let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
        dicom_object::InMemDicomObject::read_dataset_with_ts(bytes, &ts).unwrap()
    }

    fn int(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> u16 {
        obj.element(tag).unwrap().to_int::<u16>().unwrap()
    }

    fn uid(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> String {
        obj.element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string()
    }

    const SC: &str = "1.2.840.10008.1.20.1";
    const SCI: &str = "1.2.840.10008.1.20.1.1";
    const MPPS: &str = "1.2.840.10008.3.1.2.3.3";

    #[test]
    fn n_event_report_round_trips() {
        use dicom_dictionary_std::tags;
        let rq = n_event_report_rq(11, SC, SCI, 2, true).encode();
        let cmd = Command::parse(&rq).unwrap();
        assert_eq!(cmd.command_field(), Ok(field::N_EVENT_REPORT_RQ));
        assert_eq!(cmd.message_id(), Ok(11));
        assert_eq!(cmd.has_data_set(), Ok(true));
        assert_eq!(cmd.affected_sop_class_uid().as_deref(), Some(SC));
        assert_eq!(cmd.affected_sop_instance_uid().as_deref(), Some(SCI));
        assert_eq!(cmd.event_type_id(), Ok(2));
        let obj = implicit_object(&rq);
        assert_eq!(int(&obj, tags::EVENT_TYPE_ID), 2);
        assert_eq!(int(&obj, tags::COMMAND_DATA_SET_TYPE), 0);
        assert_eq!(uid(&obj, tags::AFFECTED_SOP_INSTANCE_UID), SCI);

        let rsp = n_event_report_rsp(11, SC, SCI, 2, status::SUCCESS).encode();
        let cmd = Command::parse(&rsp).unwrap();
        assert_eq!(cmd.command_field(), Ok(field::N_EVENT_REPORT_RSP));
        assert_eq!(cmd.message_id_responded_to(), Ok(11));
        assert_eq!(cmd.status(), Ok(0));
        assert_eq!(cmd.has_data_set(), Ok(false));
        assert_eq!(cmd.event_type_id(), Ok(2));
        let obj = implicit_object(&rsp);
        assert_eq!(int(&obj, tags::MESSAGE_ID_BEING_RESPONDED_TO), 11);
        assert_eq!(uid(&obj, tags::AFFECTED_SOP_CLASS_UID), SC);
    }

    #[test]
    fn n_action_round_trips() {
        use dicom_dictionary_std::tags;
        let rq = n_action_rq(5, SC, SCI, 1, true).encode();
        let cmd = Command::parse(&rq).unwrap();
        assert_eq!(cmd.command_field(), Ok(field::N_ACTION_RQ));
        assert_eq!(cmd.message_id(), Ok(5));
        assert_eq!(cmd.requested_sop_class_uid().as_deref(), Some(SC));
        assert_eq!(cmd.requested_sop_instance_uid().as_deref(), Some(SCI));
        assert_eq!(cmd.action_type_id(), Ok(1));
        assert_eq!(cmd.affected_sop_class_uid(), None);
        assert_eq!(cmd.has_data_set(), Ok(true));
        let obj = implicit_object(&rq);
        assert_eq!(uid(&obj, tags::REQUESTED_SOP_CLASS_UID), SC);
        assert_eq!(uid(&obj, tags::REQUESTED_SOP_INSTANCE_UID), SCI);
        assert_eq!(int(&obj, tags::ACTION_TYPE_ID), 1);

        let rsp = n_action_rsp(5, SC, SCI, 1, status::SUCCESS).encode();
        let cmd = Command::parse(&rsp).unwrap();
        assert_eq!(cmd.command_field(), Ok(field::N_ACTION_RSP));
        assert_eq!(cmd.message_id_responded_to(), Ok(5));
        assert_eq!(cmd.action_type_id(), Ok(1));
        assert_eq!(cmd.affected_sop_instance_uid().as_deref(), Some(SCI));
        assert_eq!(cmd.has_data_set(), Ok(false));
        let obj = implicit_object(&rsp);
        assert_eq!(int(&obj, tags::STATUS), 0);
        assert_eq!(int(&obj, tags::ACTION_TYPE_ID), 1);
    }

    #[test]
    fn n_create_and_n_set_round_trip() {
        use dicom_dictionary_std::tags;
        let rq = n_create_rq(2, MPPS, Some("1.2.3.4"), true).encode();
        let cmd = Command::parse(&rq).unwrap();
        assert_eq!(cmd.command_field(), Ok(field::N_CREATE_RQ));
        assert_eq!(cmd.affected_sop_class_uid().as_deref(), Some(MPPS));
        assert_eq!(cmd.affected_sop_instance_uid().as_deref(), Some("1.2.3.4"));
        let anonymous = Command::parse(&n_create_rq(3, MPPS, None, true).encode()).unwrap();
        assert_eq!(anonymous.affected_sop_instance_uid(), None);
        // "1.2.3.45" is odd-length: padded with NUL, read back without it.
        let rsp = n_create_rsp(2, MPPS, Some("1.2.3.45"), status::SUCCESS, false).encode();
        let cmd = Command::parse(&rsp).unwrap();
        assert_eq!(cmd.command_field(), Ok(field::N_CREATE_RSP));
        assert_eq!(cmd.affected_sop_instance_uid().as_deref(), Some("1.2.3.45"));
        assert_eq!(
            uid(&implicit_object(&rsp), tags::AFFECTED_SOP_INSTANCE_UID),
            "1.2.3.45"
        );

        let rq = n_set_rq(4, MPPS, "1.2.3.4").encode();
        let cmd = Command::parse(&rq).unwrap();
        assert_eq!(cmd.command_field(), Ok(field::N_SET_RQ));
        assert_eq!(cmd.requested_sop_class_uid().as_deref(), Some(MPPS));
        assert_eq!(cmd.requested_sop_instance_uid().as_deref(), Some("1.2.3.4"));
        assert_eq!(cmd.has_data_set(), Ok(true));
        let obj = implicit_object(&rq);
        assert_eq!(int(&obj, tags::COMMAND_FIELD), field::N_SET_RQ);
        assert_eq!(uid(&obj, tags::REQUESTED_SOP_INSTANCE_UID), "1.2.3.4");

        let rsp = n_set_rsp(4, MPPS, "1.2.3.4", status::SUCCESS, true).encode();
        let cmd = Command::parse(&rsp).unwrap();
        assert_eq!(cmd.command_field(), Ok(field::N_SET_RSP));
        assert_eq!(cmd.message_id_responded_to(), Ok(4));
        assert_eq!(cmd.has_data_set(), Ok(true));
    }

    #[test]
    fn n_failure_responses_carry_error_elements() {
        use dicom_dictionary_std::tags;
        let rsp = n_set_rsp(8, MPPS, "1.2.3.4", status::PROCESSING_FAILURE, false)
            .error_comment("Performed Procedure Step Object may no longer be updated")
            .error_id(status::MPPS_NO_LONGER_UPDATABLE)
            .encode();
        let cmd = Command::parse(&rsp).unwrap();
        assert_eq!(cmd.status(), Ok(0x0110));
        assert_eq!(cmd.error_id(), Ok(0xA710));
        assert_eq!(
            cmd.error_comment().as_deref(),
            Some("Performed Procedure Step Object may no longer be updated")
        );
        let obj = implicit_object(&rsp);
        assert_eq!(int(&obj, tags::ERROR_ID), 0xA710);

        // Modality (0008,0060) and PPS Status (0040,0252) as AT values.
        let listed = [0x0008_0060, 0x0040_0252];
        let rsp = n_create_rsp(9, MPPS, Some("1.2.3.4"), status::MISSING_ATTRIBUTE, false)
            .attribute_identifier_list(&listed)
            .offending_elements(&listed[..1])
            .encode();
        let cmd = Command::parse(&rsp).unwrap();
        assert_eq!(cmd.status(), Ok(status::MISSING_ATTRIBUTE));
        assert_eq!(cmd.attribute_identifier_list(), listed.to_vec());
        assert_eq!(cmd.offending_elements(), vec![0x0008_0060]);
        assert_eq!(
            cmd.error_id(),
            Err(CommandError::Missing("Error ID (0000,0903)"))
        );
        let obj = implicit_object(&rsp);
        // The dictionary types (0000,1005) as AT, so dicom-object reads both tags back.
        let at = obj.element(tags::ATTRIBUTE_IDENTIFIER_LIST).unwrap();
        let Some(dicom_core::PrimitiveValue::Tags(read)) = at.value().primitive() else {
            panic!("not read as AT: {:?}", at.value())
        };
        assert_eq!(
            read.as_slice(),
            &[
                dicom_core::Tag(0x0008, 0x0060),
                dicom_core::Tag(0x0040, 0x0252)
            ]
        );

        // A response to a request too broken to name its class: only the generic elements.
        let bare = n_rsp(
            field::N_ACTION_RQ,
            1,
            None,
            None,
            status::PROCESSING_FAILURE,
            false,
        )
        .encode();
        let cmd = Command::parse(&bare).unwrap();
        assert_eq!(cmd.command_field(), Ok(field::N_ACTION_RSP));
        assert_eq!(cmd.affected_sop_class_uid(), None);
        assert!(cmd.action_type_id().is_err());
    }

    #[test]
    fn malformed_at_values_read_as_empty() {
        let mut bytes = n_create_rsp(1, MPPS, None, status::MISSING_ATTRIBUTE, false).encode();
        // Attribute Identifier List with 3 bytes: not a tag list.
        bytes.extend_from_slice(&[0, 0, 5, 0x10, 3, 0, 0, 0, 8, 0, 0x60]);
        let cmd = Command::parse(&bytes).unwrap();
        assert!(cmd.attribute_identifier_list().is_empty());
    }

    #[test]
    fn n_data_sets_round_trip_in_both_little_endian_syntaxes() {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_dictionary_std::tags;
        use dicom_object::InMemDicomObject;
        let mut item = InMemDicomObject::new_empty();
        item.put(DataElement::new(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.2"),
        ));
        item.put(DataElement::new(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.3.4.5"),
        ));
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::TRANSACTION_UID,
            VR::UI,
            PrimitiveValue::from("1.2.3.99"),
        ));
        obj.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![item]),
        ));
        for ts in [crate::net::IMPLICIT_VR_LE, crate::net::EXPLICIT_VR_LE] {
            let bytes = write_data_set(&obj, ts).unwrap();
            let back = read_data_set(&bytes, ts).unwrap();
            assert_eq!(uid(&back, tags::TRANSACTION_UID), "1.2.3.99");
            let items = back
                .element(tags::REFERENCED_SOP_SEQUENCE)
                .unwrap()
                .items()
                .unwrap();
            assert_eq!(items.len(), 1);
            assert_eq!(
                uid(&items[0], tags::REFERENCED_SOP_INSTANCE_UID),
                "1.2.3.4.5"
            );
        }
        assert!(matches!(
            // Transaction UID claiming 100 bytes, holding 4.
            read_data_set(
                b"\x08\x00\x95\x11UI\x64\x001.2.",
                crate::net::EXPLICIT_VR_LE
            ),
            Err(DataSetError::Malformed(_))
        ));
        assert!(matches!(
            write_data_set(&obj, "1.2.3"),
            Err(DataSetError::UnknownTransferSyntax(_))
        ));
    }

    #[test]
    fn pdus_respect_the_peer_maximum() {
        let data = vec![7u8; 10_000];
        let pdus = pdata_pdus(1, PDataValueType::Data, &data, 4096, true);
        assert_eq!(pdus.len(), 3);
        let mut total = 0;
        for (i, p) in pdus.iter().enumerate() {
            let Pdu::PData { data: pdvs } = p else {
                panic!()
            };
            assert!(pdvs[0].data.len() + 6 <= 4096);
            assert_eq!(pdvs[0].is_last, i == 2);
            total += pdvs[0].data.len();
        }
        assert_eq!(total, data.len());
    }

    #[test]
    fn a_small_peer_maximum_is_honoured() {
        // A peer that receives at most 512-byte PDUs gets at most 512-byte PDUs.
        assert_eq!(max_fragment(512), 506);
        assert_eq!(max_fragment(513), 506);
        assert_eq!(max_fragment(0), 2);
        let data = vec![1u8; 2000];
        for p in pdata_pdus(1, PDataValueType::Data, &data, 512, true) {
            let Pdu::PData { data: pdvs } = p else {
                panic!()
            };
            assert!(pdvs[0].data.len() + 6 <= 512);
        }
    }
}
