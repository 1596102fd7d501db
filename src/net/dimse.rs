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
}

/// Command sets hold a dozen short elements (a C-FIND's identifier is a data set, not part
/// of the command); anything near this size is not a command set, from either side.
pub const MAX_COMMAND_SET: usize = 64 * 1024;

/// Command Data Set Type value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;

const AFFECTED_SOP_CLASS_UID: u32 = 0x0000_0002;
const COMMAND_FIELD: u32 = 0x0000_0100;
const MESSAGE_ID: u32 = 0x0000_0110;
const MESSAGE_ID_BEING_RESPONDED_TO: u32 = 0x0000_0120;
const PRIORITY: u32 = 0x0000_0700;
const COMMAND_DATA_SET_TYPE: u32 = 0x0000_0800;
const STATUS: u32 = 0x0000_0900;
const ERROR_COMMENT: u32 = 0x0000_0902;
const AFFECTED_SOP_INSTANCE_UID: u32 = 0x0000_1000;
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
