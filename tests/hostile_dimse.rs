//! Hostile input on the node's DIMSE-N paths (issue 19 follow-up): MPPS N-CREATE and Storage
//! Commitment N-ACTION with oversized, deeply nested, trickling and never-finished data sets,
//! as raw PDUs over a TcpStream against the real binary. Each must get a status (or an abort
//! with a log line), keep the node's memory bounded, log what and why without the payload, and
//! leave the node serving.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::wire::{pdata, pdu_bytes, read_pdu};
use common::*;
use dicom_ul::Pdu;
use dicom_ul::pdu::{AssociationRQ, PDataValueType, PresentationContextProposed, UserVariableItem};
use m3dnode::net::dimse;
use m3dnode::store::header::raw::{element as el, item};

const VERIFICATION: &str = "1.2.840.10008.1.1";
const MPPS: &str = "1.2.840.10008.3.1.2.3.3";
const COMMIT: &str = "1.2.840.10008.1.20.1";
const COMMIT_INSTANCE: &str = "1.2.840.10008.1.20.1.1";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// Presentation context IDs of [`associate`]'s request.
const PC_ECHO: u8 = 1;
const PC_MPPS: u8 = 3;
const PC_COMMIT: u8 = 5;
/// Planted in every hostile data set; must never reach the log.
const PATIENT: &str = "HOSTILE^PAYLOAD";
const CONTENT_SEQUENCE: u32 = 0x0040_A730;
/// The node's caps (src/net/scp.rs MAX_MPPS_DATA_SET, src/net/commit.rs
/// MAX_ACTION_INFORMATION).
const MAX_MPPS: usize = 16 << 20;
const MAX_ACTION: usize = 4 << 20;

/// An association proposing Verification, MPPS and Storage Commitment in Explicit VR Little
/// Endian only (so every data set here is in that syntax).
fn associate(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let rq = AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "SCANNER".into(),
        called_ae_title: "M3DNODE".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: [
            (PC_ECHO, VERIFICATION),
            (PC_MPPS, MPPS),
            (PC_COMMIT, COMMIT),
        ]
        .iter()
        .map(|(id, a)| PresentationContextProposed {
            id: *id,
            abstract_syntax: a.to_string(),
            transfer_syntaxes: vec![EXPLICIT_LE.into()],
        })
        .collect(),
        user_variables: vec![UserVariableItem::MaxLength(65536)],
    };
    s.write_all(&pdu_bytes(&Pdu::AssociationRQ(rq))).unwrap();
    let Some(Pdu::AssociationAC(ac)) = read_pdu(&mut s) else {
        panic!("association not accepted")
    };
    assert_eq!(ac.presentation_contexts.len(), 3);
    s
}

/// Reads the next DIMSE response command on `s`; `None` when the node aborted or closed.
fn response(s: &mut TcpStream) -> Option<dimse::Command> {
    let mut bytes = Vec::new();
    loop {
        match read_pdu(s)? {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type == PDataValueType::Command {
                        bytes.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            return dimse::Command::parse(&bytes).ok();
                        }
                    }
                }
            }
            _ => return None,
        }
    }
}

/// A C-ECHO on the association: answered with success.
fn echo_on(s: &mut TcpStream, message_id: u16) -> bool {
    if s.write_all(&pdata(
        PC_ECHO,
        true,
        true,
        &dimse::c_echo_rq(message_id).encode(),
    ))
    .is_err()
    {
        return false;
    }
    response(s)
        .is_some_and(|r| r.message_id_responded_to() == Ok(message_id) && r.status() == Ok(0))
}

fn release(mut s: TcpStream) {
    s.write_all(&pdu_bytes(&Pdu::ReleaseRQ)).unwrap();
    assert!(matches!(read_pdu(&mut s), Some(Pdu::ReleaseRP)));
}

/// Sends `data` as data set fragments of `chunk` bytes, the last one flagged.
fn send_data_set(s: &mut TcpStream, pc_id: u8, data: &[u8], chunk: usize) {
    let n = data.len().div_ceil(chunk).max(1);
    for (i, part) in data.chunks(chunk).enumerate() {
        s.write_all(&pdata(pc_id, false, i + 1 == n, part)).unwrap();
    }
}

fn n_create_command(message_id: u16, uid: &str) -> Vec<u8> {
    dimse::n_create_rq(message_id, MPPS, Some(uid), true).encode()
}

fn n_action_command(message_id: u16) -> Vec<u8> {
    dimse::n_action_rq(message_id, COMMIT, COMMIT_INSTANCE, 1, true).encode()
}

/// A valid MPPS N-CREATE attribute list (IN PROGRESS) carrying the planted patient name.
fn creation() -> Vec<u8> {
    [
        el(0x0008_0060, b"CS", b"CT"),
        el(0x0010_0010, b"PN", PATIENT.as_bytes()),
        el(0x0010_0020, b"LO", b"PID1"),
        el(
            0x0040_0270,
            b"SQ",
            &item(
                &[
                    el(0x0008_0050, b"SH", b"ACC1"),
                    el(0x0020_000D, b"UI", b"1.2.826.0.1.3680043.10.1"),
                ]
                .concat(),
            ),
        ),
        el(0x0040_0241, b"AE", b"SCANNER "),
        el(0x0040_0244, b"DA", b"20261205"),
        el(0x0040_0245, b"TM", b"120000"),
        el(0x0040_0252, b"CS", b"IN PROGRESS "),
        el(0x0040_0253, b"SH", b"PPS1"),
    ]
    .concat()
}

/// A data set with the planted patient name and then a private OB value of `len` zero bytes,
/// so that the whole is `len` + a few dozen bytes: too large, not malformed.
fn oversized(len: usize) -> Vec<u8> {
    let mut out = el(0x0010_0010, b"PN", PATIENT.as_bytes());
    out.extend_from_slice(&[0x09, 0x00, 0x10, 0x10]);
    out.extend_from_slice(b"OB\0\0");
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.resize(out.len() + len, 0);
    out
}

/// The planted patient name, then a Content Sequence nested `depth` deep around a last
/// patient name. Defined lengths are computed from the inside out in one pass (no quadratic
/// copying); undefined lengths use item and sequence delimiters.
fn deep(depth: usize, defined: bool) -> Vec<u8> {
    let inner = el(0x0010_0010, b"PN", PATIENT.as_bytes());
    let mut out = inner.clone();
    let tag = m3dnode::store::header::raw::tag(CONTENT_SEQUENCE);
    if defined {
        // Per level: SQ header 12 bytes, item header 8 bytes.
        let mut head = Vec::with_capacity(depth * 20 + inner.len());
        for level in (1..=depth).rev() {
            let item_len = (level - 1) * 20 + inner.len();
            head.extend_from_slice(&tag);
            head.extend_from_slice(b"SQ\0\0");
            head.extend_from_slice(&((item_len + 8) as u32).to_le_bytes());
            head.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
            head.extend_from_slice(&(item_len as u32).to_le_bytes());
        }
        head.extend_from_slice(&inner);
        out.extend_from_slice(&head);
    } else {
        for _ in 0..depth {
            out.extend_from_slice(&tag);
            out.extend_from_slice(b"SQ\0\0");
            out.extend_from_slice(&[0xFF; 4]);
            out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        out.extend_from_slice(&inner);
        for _ in 0..depth {
            out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
            out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        }
    }
    out
}

fn vm_hwm_kb(node: &Node) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", node.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The node process has not exited (a stack overflow or abort would end it).
fn alive(node: &mut Node) -> bool {
    matches!(node.child.try_wait(), Ok(None))
}

/// The log never carries the planted patient name nor a run of its bytes.
fn assert_no_payload(log: &str) {
    assert!(!log.contains(PATIENT), "patient name in the log:\n{log}");
    assert!(!log.contains("HOSTILE"), "payload in the log:\n{log}");
    assert!(
        !log.contains("72, 79, 83, 84"),
        "payload bytes in the log:\n{log}"
    );
}

/// 1. An MPPS attribute list over 16 MiB: 0x0213 with a reason, memory bounded (the node
///    stops keeping it at the cap), the association and the node go on.
#[test]
fn mpps_attribute_list_over_the_cap_is_refused_with_bounded_memory() {
    let node = Node::start("");
    let mut s = associate(node.addr);
    assert!(echo_on(&mut s, 1));
    let baseline = vm_hwm_kb(&node);
    s.write_all(&pdata(
        PC_MPPS,
        true,
        true,
        &n_create_command(2, "1.2.826.0.1.3680043.10.2"),
    ))
    .unwrap();
    // 20 MiB of it, so the node has to drop what it had kept and read on.
    send_data_set(&mut s, PC_MPPS, &oversized(20 << 20), 60_000);
    let rsp = response(&mut s).unwrap_or_else(|| panic!("no N-CREATE-RSP; log:\n{}", node.log()));
    assert_eq!(rsp.command_field(), Ok(dimse::field::N_CREATE_RSP));
    assert_eq!(rsp.status(), Ok(dimse::status::RESOURCE_LIMITATION));
    let peak = vm_hwm_kb(&node);
    eprintln!("VmHWM idle {baseline} kB, after the oversized N-CREATE {peak} kB");
    assert!(
        peak < baseline + 3 * (MAX_MPPS as u64 / 1024),
        "peak {peak} kB against idle {baseline} kB"
    );
    assert!(echo_on(&mut s, 3), "log:\n{}", node.log());
    release(s);
    assert!(node.echo_ok());
    let log = node.log();
    assert!(
        log.lines().any(|l| l.contains("mpps request refused")
            && l.contains("0x0213")
            && l.contains(&format!("attribute list longer than {MAX_MPPS} bytes"))),
        "{log}"
    );
    assert_no_payload(&log);
}

/// 2. Action Information over 4 MiB (its 0x0213 is in tests/commitment.rs): here, the memory
///    bound and that the association and the node go on.
#[test]
fn action_information_over_the_cap_keeps_memory_bounded() {
    let node = Node::start("");
    let mut s = associate(node.addr);
    assert!(echo_on(&mut s, 1));
    let baseline = vm_hwm_kb(&node);
    s.write_all(&pdata(PC_COMMIT, true, true, &n_action_command(2)))
        .unwrap();
    send_data_set(&mut s, PC_COMMIT, &oversized(12 << 20), 60_000);
    let rsp = response(&mut s).unwrap_or_else(|| panic!("no N-ACTION-RSP; log:\n{}", node.log()));
    assert_eq!(rsp.command_field(), Ok(dimse::field::N_ACTION_RSP));
    assert_eq!(rsp.status(), Ok(dimse::status::RESOURCE_LIMITATION));
    let peak = vm_hwm_kb(&node);
    eprintln!("VmHWM idle {baseline} kB, after the oversized N-ACTION {peak} kB");
    assert!(
        peak < baseline + 3 * (MAX_ACTION as u64 / 1024),
        "peak {peak} kB against idle {baseline} kB"
    );
    assert!(echo_on(&mut s, 3), "log:\n{}", node.log());
    release(s);
    assert!(node.echo_ok());
    let log = node.log();
    assert!(
        log.lines().any(|l| l.contains("N-ACTION refused")
            && l.contains("0x0213")
            && l.contains("Action Information larger than")),
        "{log}"
    );
    assert_no_payload(&log);
}

/// 3. 10,000-deep sequences (defined and undefined length) in an N-CREATE and an N-ACTION:
///    each gets 0x0110 with the reason, the node does not overflow its stack and answers
///    after. (Before dimse::read_data_set checked the depth, the first one killed the node
///    with a stack overflow in dicom-object's recursive parser.) The legitimate one-level
///    sequence of an N-CREATE is accepted in `a_trickling_n_create_is_answered`.
#[test]
fn deeply_nested_n_data_sets_get_a_failure_status() {
    let mut node = Node::start("");
    let mut s = associate(node.addr);
    let mut id = 1u16;
    for defined in [true, false] {
        let data = deep(10_000, defined);
        let what = if defined { "defined" } else { "undefined" };
        s.write_all(&pdata(
            PC_MPPS,
            true,
            true,
            &n_create_command(id, &format!("1.2.826.0.1.3680043.10.3.{id}")),
        ))
        .unwrap();
        send_data_set(&mut s, PC_MPPS, &data, 60_000);
        let rsp = response(&mut s);
        assert!(
            alive(&mut node),
            "node died on {what}-length nesting in N-CREATE; log:\n{}",
            node.log()
        );
        let rsp = rsp.unwrap_or_else(|| panic!("no N-CREATE-RSP ({what}); log:\n{}", node.log()));
        assert_eq!(
            rsp.status(),
            Ok(dimse::status::PROCESSING_FAILURE),
            "{what}: N-CREATE"
        );
        id += 1;
        s.write_all(&pdata(PC_COMMIT, true, true, &n_action_command(id)))
            .unwrap();
        send_data_set(&mut s, PC_COMMIT, &data, 60_000);
        let rsp = response(&mut s);
        assert!(
            alive(&mut node),
            "node died on {what}-length nesting in N-ACTION; log:\n{}",
            node.log()
        );
        let rsp = rsp.unwrap_or_else(|| panic!("no N-ACTION-RSP ({what}); log:\n{}", node.log()));
        assert_eq!(
            rsp.status(),
            Ok(dimse::status::PROCESSING_FAILURE),
            "{what}: N-ACTION"
        );
        id += 1;
    }
    assert!(echo_on(&mut s, id), "log:\n{}", node.log());
    release(s);
    assert!(node.echo_ok());
    assert!(alive(&mut node));
    let log = node.log();
    // What was refused and why, once per request.
    let why = "sequences nested deeper than 64 levels";
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("mpps request refused") && l.contains(why))
            .count(),
        2,
        "{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("N-ACTION refused") && l.contains(why))
            .count(),
        2,
        "{log}"
    );
    assert_no_payload(&log);
}

/// 4a. An N-CREATE whose attribute list trickles in, a fragment every 0.5 s for 4 s, under an
///     idle timeout of 2 s: answered with success.
#[test]
fn a_trickling_n_create_is_answered() {
    let node = Node::start("idle_timeout_seconds = 2\n");
    let mut s = associate(node.addr);
    let uid = "1.2.826.0.1.3680043.10.4";
    s.write_all(&pdata(PC_MPPS, true, true, &n_create_command(1, uid)))
        .unwrap();
    let data = creation();
    let chunk = data.len().div_ceil(8);
    let parts: Vec<&[u8]> = data.chunks(chunk).collect();
    let started = Instant::now();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
        s.write_all(&pdata(PC_MPPS, false, i + 1 == parts.len(), part))
            .unwrap();
    }
    assert!(started.elapsed() > Duration::from_secs(3));
    let rsp = response(&mut s).unwrap_or_else(|| panic!("no N-CREATE-RSP; log:\n{}", node.log()));
    assert_eq!(rsp.status(), Ok(0), "log:\n{}", node.log());
    assert_eq!(rsp.affected_sop_instance_uid().as_deref(), Some(uid));
    release(s);
    let log = node.log();
    assert!(log.contains("mpps IN PROGRESS"), "{log}");
    assert!(!log.contains("idle too long"), "{log}");
    assert_no_payload(&log);
}

/// 4b. An N-CREATE whose attribute list never finishes: the idle timeout aborts it with a log
///     line, and another association is served during the stall.
#[test]
fn a_never_finished_n_create_is_aborted_by_the_idle_timeout() {
    let node = Node::start("idle_timeout_seconds = 2\n");
    let mut s = associate(node.addr);
    s.write_all(&pdata(
        PC_MPPS,
        true,
        true,
        &n_create_command(1, "1.2.826.0.1.3680043.10.5"),
    ))
    .unwrap();
    let data = creation();
    s.write_all(&pdata(PC_MPPS, false, false, &data[..data.len() / 2]))
        .unwrap();
    let started = Instant::now();
    // During the stall another association is served.
    assert!(node.echo_ok(), "log:\n{}", node.log());
    let end = read_pdu(&mut s);
    assert!(
        matches!(end, Some(Pdu::AbortRQ { .. })),
        "expected an A-ABORT, got {end:?}; log:\n{}",
        node.log()
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "aborted after {waited:?}"
    );
    assert!(node.echo_ok());
    let log = node.log();
    assert!(
        log.lines()
            .any(|l| l.contains("association idle too long; aborting")
                && l.contains("idle_seconds=2")),
        "{log}"
    );
    assert_no_payload(&log);
}
