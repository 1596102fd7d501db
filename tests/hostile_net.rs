//! What hostile and faulty peers do on the wire, against the real binary: silent sockets,
//! endless command fragments, PDUs out of place, forged log lines, pipelined requests, odd but
//! legal requests, and a shutdown in the middle of an association.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::wire::{pdata, pdu_bytes, read_pdu};
use common::*;
use dicom_ul::Pdu;
use dicom_ul::pdu::{AssociationRQ, PresentationContextProposed, UserVariableItem};
use m3dnode::net::dimse;

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const VERIFICATION: &str = "1.2.840.10008.1.1";

fn request(protocol_version: u16, context: &str, abstract_syntaxes: &[&str]) -> Vec<u8> {
    let rq = AssociationRQ {
        protocol_version,
        calling_ae_title: "PEER".into(),
        called_ae_title: "M3DNODE".into(),
        application_context_name: context.into(),
        presentation_contexts: abstract_syntaxes
            .iter()
            .enumerate()
            .map(|(i, a)| PresentationContextProposed {
                id: 2 * i as u8 + 1,
                abstract_syntax: a.to_string(),
                transfer_syntaxes: vec!["1.2.840.10008.1.2.1".into(), "1.2.840.10008.1.2".into()],
            })
            .collect(),
        user_variables: vec![UserVariableItem::MaxLength(65536)],
    };
    let mut out = Vec::new();
    dicom_ul::write_pdu(&mut out, &Pdu::AssociationRQ(rq)).unwrap();
    out
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// A connection from another loopback address, as a second host would make.
fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

fn vm_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn silent_sockets_do_not_lock_real_senders_out() {
    let node = Node::start(
        "max_associations = 32\nassociation_request_timeout_seconds = 3\nmax_connections_per_host = 16\n",
    );
    // 40 sockets from another address that send 5 bytes of a request and then nothing.
    let mut idle: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = connect_from([127, 0, 0, 2], node.addr);
            let _ = s.write_all(&[0x01, 0x00, 0x00, 0x00, 0x01]);
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A real sender from its own address is served at once.
    assert!(node.echo_ok(), "log:\n{}", node.log());
    let out = storescu(&node, &[testdata().join("files/pydicom/MR_small.dcm")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(node.stored_files().len(), 1);
    // The same host, over its cap, gets "local limit exceeded" for a complete request.
    let mut extra = connect_from([127, 0, 0, 2], node.addr);
    extra
        .write_all(&request(1, "1.2.840.10008.3.1.1.1", &[VERIFICATION]))
        .unwrap();
    let answer = pdu_bytes(&read_pdu(&mut extra).expect("an answer to the request"));
    assert_eq!(&answer[..], &[0x03, 0, 0, 0, 0, 4, 0, 0x02, 0x03, 0x02]);
    // The silent ones are closed by the ARTIM timer, without an association ever.
    let started = Instant::now();
    for s in &mut idle {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "expected a close, got {:?}", &buf[..n]);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        node.log().contains("no complete A-ASSOCIATE-RQ within 3 s"),
        "{}",
        node.log()
    );
    assert!(node.echo_ok());
}

#[test]
fn endless_command_fragments_are_cut_off() {
    let node = Node::start("");
    let mut s = connect(node.addr);
    s.write_all(&request(1, "1.2.840.10008.3.1.1.1", &[VERIFICATION]))
        .unwrap();
    assert!(matches!(read_pdu(&mut s), Some(Pdu::AssociationAC(_))));
    // Command fragments without the last-fragment bit, 60 KB each, up to 200 MB.
    let fragment = pdata(1, true, false, &vec![0x55u8; 60_000]);
    let mut sent = 0usize;
    while sent < 200 << 20 {
        if s.write_all(&fragment).is_err() {
            break;
        }
        sent += fragment.len();
    }
    assert!(
        sent < 8 << 20,
        "the node kept reading {sent} bytes of one command set"
    );
    let hwm = vm_hwm_kb(node.child.id());
    assert!(hwm < 200_000, "node peak RSS {hwm} kB");
    assert!(
        node.log()
            .contains("command set longer than any command set")
    );
    assert!(node.echo_ok());
}

#[test]
fn pdus_before_an_association_are_aborted_without_logging_their_bytes() {
    let node = Node::start("");
    // A P-DATA-TF carrying a data set with a patient name, before any association.
    let mut s = connect(node.addr);
    s.write_all(&pdata(
        1,
        false,
        true,
        b"\x10\x00\x10\x00\x08\x00\x00\x00DOE^JOHN",
    ))
    .unwrap();
    assert!(matches!(read_pdu(&mut s), Some(Pdu::AbortRQ { .. })));
    // An A-RELEASE-RQ before any association: abort, not A-RELEASE-RP.
    let mut s = connect(node.addr);
    s.write_all(&pdu_bytes(&Pdu::ReleaseRQ)).unwrap();
    assert!(matches!(read_pdu(&mut s), Some(Pdu::AbortRQ { .. })));
    assert!(node.echo_ok());
    let log = node.log();
    assert!(log.contains("first PDU is P-DATA-TF"), "{log}");
    assert!(log.contains("first PDU is A-RELEASE-RQ"), "{log}");
    assert!(
        !log.contains("DOE^JOHN") && !log.contains("68, 79, 69"),
        "{log}"
    );
}

#[test]
fn peer_values_cannot_forge_log_lines() {
    let node = Node::start("");
    let mut s = connect(node.addr);
    s.write_all(&request(1, "1.2.840.10008.3.1.1.1", &[MR]))
        .unwrap();
    assert!(matches!(read_pdu(&mut s), Some(Pdu::AssociationAC(_))));
    let forged = "1.2.3\n2026-12-04T00:00:00.000000Z  INFO FORGED: all instances deleted";
    let command = dimse::c_store_rq(1, MR, forged).encode();
    s.write_all(&pdata(1, true, true, &command)).unwrap();
    let data_set = common::data_set(&testdata().join("files/pydicom/MR_small.dcm"));
    s.write_all(&pdata(1, false, true, &data_set)).unwrap();
    let Some(Pdu::PData { data }) = read_pdu(&mut s) else {
        panic!("no response; log:\n{}", node.log())
    };
    let rsp = dimse::Command::parse(&data[0].data).unwrap();
    assert_ne!(rsp.status().unwrap(), 0, "a mismatching UID must fail");
    s.write_all(&pdu_bytes(&Pdu::ReleaseRQ)).unwrap();
    let _ = read_pdu(&mut s);
    let log = node.log();
    assert!(log.contains("C-STORE failed"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("FORGED") && !l.contains("C-STORE failed")),
        "a peer value started a log line of its own:\n{log}"
    );
}

#[test]
fn bytes_sent_right_behind_the_request_are_not_lost() {
    let node = Node::start("");
    let mut s = connect(node.addr);
    // Request and a C-ECHO-RQ in one write, before the A-ASSOCIATE-AC was seen.
    let mut wire = request(1, "1.2.840.10008.3.1.1.1", &[VERIFICATION]);
    wire.extend(pdata(1, true, true, &dimse::c_echo_rq(7).encode()));
    s.write_all(&wire).unwrap();
    assert!(matches!(read_pdu(&mut s), Some(Pdu::AssociationAC(_))));
    let Some(Pdu::PData { data }) = read_pdu(&mut s) else {
        panic!("no C-ECHO-RSP; log:\n{}", node.log())
    };
    let rsp = dimse::Command::parse(&data[0].data).unwrap();
    assert_eq!(rsp.message_id_responded_to(), Ok(7));
    assert_eq!(rsp.status(), Ok(0));
}

#[test]
fn legal_requests_dcmtk_accepts_are_accepted() {
    let node = Node::start("");
    // Protocol version with more bits than bit 0, application context name NUL-padded, and
    // the retired print storage classes (Stored Print, Hardcopy Grayscale/Color).
    let mut s = connect(node.addr);
    s.write_all(&request(
        3,
        "1.2.840.10008.3.1.1.1\0",
        &[
            "1.2.840.10008.5.1.1.27",
            "1.2.840.10008.5.1.1.29",
            "1.2.840.10008.5.1.1.30",
        ],
    ))
    .unwrap();
    let Some(Pdu::AssociationAC(ac)) = read_pdu(&mut s) else {
        panic!("request refused; log:\n{}", node.log())
    };
    assert!(
        ac.user_variables
            .contains(&UserVariableItem::ImplementationClassUID(
                m3dnode::store::IMPLEMENTATION_CLASS_UID.into()
            ))
    );
    assert_eq!(ac.presentation_contexts.len(), 3);
    for pc in &ac.presentation_contexts {
        assert_eq!(
            pc.reason,
            dicom_ul::pdu::PresentationContextResultReason::Acceptance
        );
    }
    // A version without bit 0 is refused: permanent, ACSE, protocol version not supported.
    let mut s = connect(node.addr);
    s.write_all(&request(2, "1.2.840.10008.3.1.1.1", &[VERIFICATION]))
        .unwrap();
    let answer = pdu_bytes(&read_pdu(&mut s).unwrap());
    assert_eq!(&answer[..], &[0x03, 0, 0, 0, 0, 4, 0, 0x01, 0x02, 0x02]);
}

#[test]
fn a_request_the_node_does_not_perform_gets_a_failure_not_an_abort() {
    let node = Node::start("");
    let mut s = connect(node.addr);
    s.write_all(&request(1, "1.2.840.10008.3.1.1.1", &[VERIFICATION]))
        .unwrap();
    assert!(matches!(read_pdu(&mut s), Some(Pdu::AssociationAC(_))));
    // A C-FIND-RQ (with its identifier) on the Verification context, as a confused peer sends.
    let mut find = dimse::c_echo_rq(5).encode();
    // Command Field C-FIND-RQ and "a data set follows".
    let pos = find
        .windows(4)
        .position(|w| w == [0x00, 0x00, 0x00, 0x01])
        .unwrap();
    find[pos + 8..pos + 10].copy_from_slice(&0x0020u16.to_le_bytes());
    let pos = find
        .windows(4)
        .position(|w| w == [0x00, 0x00, 0x00, 0x08])
        .unwrap();
    find[pos + 8..pos + 10].copy_from_slice(&0x0000u16.to_le_bytes());
    s.write_all(&pdata(1, true, true, &find)).unwrap();
    s.write_all(&pdata(
        1,
        false,
        true,
        b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ",
    ))
    .unwrap();
    let Some(Pdu::PData { data }) = read_pdu(&mut s) else {
        panic!("no response; log:\n{}", node.log())
    };
    let rsp = dimse::Command::parse(&data[0].data).unwrap();
    assert_eq!(rsp.command_field(), Ok(0x8020));
    assert_ne!(rsp.status(), Ok(0));
    // The association goes on: an echo on it is answered.
    s.write_all(&pdata(1, true, true, &dimse::c_echo_rq(6).encode()))
        .unwrap();
    let Some(Pdu::PData { data }) = read_pdu(&mut s) else {
        panic!("association ended after the refused request")
    };
    assert_eq!(
        dimse::Command::parse(&data[0].data)
            .unwrap()
            .message_id_responded_to(),
        Ok(6)
    );
    s.write_all(&pdu_bytes(&Pdu::ReleaseRQ)).unwrap();
    assert!(matches!(read_pdu(&mut s), Some(Pdu::ReleaseRP)));
}

#[test]
fn associations_aborted_at_shutdown_are_reported_to_the_policy() {
    let mut node =
        Node::start("shutdown_grace_seconds = 1\n[series]\naborted_associations = \"drop\"\n");
    let mut s = connect(node.addr);
    s.write_all(&request(1, "1.2.840.10008.3.1.1.1", &[MR]))
        .unwrap();
    assert!(matches!(read_pdu(&mut s), Some(Pdu::AssociationAC(_))));
    let file = testdata().join("files/pydicom/MR_small.dcm");
    let sop = m3dnode::net::scu::OutgoingFile::open(&file)
        .unwrap()
        .sop_instance_uid;
    s.write_all(&pdata(
        1,
        true,
        true,
        &dimse::c_store_rq(1, MR, &sop).encode(),
    ))
    .unwrap();
    s.write_all(&pdata(1, false, true, &common::data_set(&file)))
        .unwrap();
    let Some(Pdu::PData { data }) = read_pdu(&mut s) else {
        panic!("no C-STORE-RSP")
    };
    assert_eq!(
        dimse::Command::parse(&data[0].data).unwrap().status(),
        Ok(0)
    );
    assert_eq!(node.stored_files().len(), 1);
    // The peer keeps the association open; the node is stopped.
    let status = node.terminate();
    assert!(status.success());
    assert!(
        matches!(read_pdu(&mut s), Some(Pdu::AbortRQ { .. })),
        "the node must abort the association it cuts"
    );
    let log = node.log();
    assert!(log.contains("aborted at shutdown"), "{log}");
    assert!(
        node.stored_files().is_empty(),
        "aborted_associations = drop must apply to an association cut at shutdown; log:\n{log}"
    );
}

#[test]
fn outgoing_associations_carry_the_nodes_implementation_class_uid() {
    // A peer that reads the request and rejects it: what the node's SCU proposes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let rq = read_pdu(&mut s);
        s.write_all(&[0x03, 0, 0, 0, 0, 4, 0, 0x01, 0x01, 0x01])
            .unwrap();
        rq
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["echo", &format!("PEER@{addr}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let Some(Pdu::AssociationRQ(rq)) = peer.join().unwrap() else {
        panic!("no A-ASSOCIATE-RQ")
    };
    assert!(
        rq.user_variables
            .contains(&UserVariableItem::ImplementationClassUID(
                m3dnode::store::IMPLEMENTATION_CLASS_UID.into()
            )),
        "{:?}",
        rq.user_variables
    );
    assert!(
        rq.user_variables
            .contains(&UserVariableItem::ImplementationVersionName(
                m3dnode::net::accept::IMPLEMENTATION_VERSION_NAME.into()
            ))
    );
}
