//! Raw PDUs for tests that play a misbehaving peer on a plain socket.

use std::io::Read;
use std::net::TcpStream;

use dicom_ul::Pdu;
use dicom_ul::pdu::{PDataValue, PDataValueType};

pub fn pdu_bytes(pdu: &Pdu) -> Vec<u8> {
    let mut out = Vec::new();
    dicom_ul::write_pdu(&mut out, pdu).unwrap();
    out
}

/// A P-DATA-TF with one PDV.
pub fn pdata(pc_id: u8, command: bool, last: bool, data: &[u8]) -> Vec<u8> {
    pdu_bytes(&Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type: if command {
                PDataValueType::Command
            } else {
                PDataValueType::Data
            },
            is_last: last,
            data: data.to_vec(),
        }],
    })
}

/// Reads one whole PDU (blocking, with the socket's timeout).
pub fn read_pdu(s: &mut TcpStream) -> Option<Pdu> {
    let mut head = [0u8; 6];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    let mut all = head.to_vec();
    all.extend(body);
    dicom_ul::read_pdu(all.as_slice(), 1 << 24, false).ok()?
}
