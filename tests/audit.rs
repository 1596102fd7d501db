//! The audit trail against real peers: every message validates against the DICOM audit message
//! schema (PS3.15 A.5.1, vendored in testdata/audit) with xmllint, the file is 0600 and appended
//! one message a line, syslog over TLS reaches `openssl s_server` as RFC 5425 frames, and a
//! repository that cannot be reached never blocks `record`.

mod common;

use common::free_port;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use m3dnode::audit::{
    AlertKind, AuditConfig, Auditor, Direction, Event, Outcome, Peer, StudyInstances, to_xml,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// AE title and patient name that try to break the XML and the one-line rule.
const HOSTILE: &str = "EVIL\"'<x>&amp;\nnext line\r\tJosé 山田";

fn schema() -> PathBuf {
    common::testdata().join("audit/audit-message.rng")
}

fn peer(ae: &str, host: &str) -> Peer {
    Peer {
        ae_title: ae.into(),
        host: host.into(),
    }
}

fn study(uid: &str, patient_id: &str, name: &str) -> StudyInstances {
    StudyInstances {
        study_uid: uid.into(),
        patient_id: Some(patient_id.into()),
        patient_name: Some(name.into()),
        sop_classes: vec![("1.2.840.10008.5.1.4.1.1.4".into(), 24)],
    }
}

/// One of every variant (both directions, all outcomes, both alert kinds), plus hostile values.
fn events() -> Vec<Event> {
    vec![
        Event::ApplicationStart,
        Event::AssociationAccepted {
            peer: peer("MODALITY", "192.0.2.10"),
            calling_ae: "MODALITY".into(),
            called_ae: "M3D".into(),
            tls: true,
        },
        Event::AssociationRejected {
            peer: peer("STRANGER", "host.example"),
            calling_ae: "STRANGER".into(),
            called_ae: "M3D".into(),
            reason: "calling AE title not recognized".into(),
        },
        Event::SecurityAlert {
            peer: peer("", "2001:db8::1"),
            kind: AlertKind::NodeAuthentication,
            detail: "TLS handshake failed: certificate from an unknown CA".into(),
        },
        Event::SecurityAlert {
            peer: peer("WS", "192.0.2.11"),
            kind: AlertKind::UnauthorizedUse,
            detail: "C-MOVE is not allowed for WS".into(),
        },
        Event::BeginTransferring {
            remote: peer("PACS", "192.0.2.12"),
            local_ae: "M3D".into(),
            studies: vec![study("1.2.3.4", "P1", "Doe^Jane")],
        },
        Event::InstancesTransferred {
            direction: Direction::Received,
            remote: peer("MODALITY", "192.0.2.10"),
            local_ae: "M3D".into(),
            studies: vec![
                study("1.2.3.4", "P1", "Doe^Jane"),
                study("1.2.3.5", "P2", "Roe^Richard"),
            ],
            outcome: Outcome::Success,
        },
        Event::InstancesTransferred {
            direction: Direction::Sent,
            remote: peer("PACS", "192.0.2.12"),
            local_ae: "M3D".into(),
            studies: vec![StudyInstances {
                study_uid: "1.2.3.4".into(),
                patient_id: None,
                patient_name: None,
                sop_classes: vec![],
            }],
            outcome: Outcome::MinorFailure("1 of 3 refused (0xA700)".into()),
        },
        Event::Query {
            remote: peer("NAV", "nav.example"),
            local_ae: "M3D".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.2.2.1".into(),
            query: vec![0, 1, 2, 0xff, b'<', b'&'],
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            outcome: Outcome::Success,
        },
        Event::Export {
            destination: "file:///tmp/out/mesh.stl".into(),
            studies: vec![study("1.2.3.4", "P1", "Doe^Jane")],
            outcome: Outcome::SeriousFailure("disk full".into()),
        },
        Event::Export {
            destination: "http://192.0.2.13/api/mesh/1.2.3.4".into(),
            studies: vec![study("1.2.3.4", "P1", "Doe^Jane")],
            outcome: Outcome::Success,
        },
        hostile_event(),
        Event::ApplicationStop,
    ]
}

fn hostile_event() -> Event {
    Event::InstancesTransferred {
        direction: Direction::Received,
        remote: peer(HOSTILE, HOSTILE),
        local_ae: HOSTILE.into(),
        studies: vec![study(HOSTILE, HOSTILE, HOSTILE)],
        outcome: Outcome::SeriousFailure(HOSTILE.into()),
    }
}

/// Runs xmllint on each message against the vendored schema: Err(what xmllint said).
fn validate(messages: &[String]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(common::tool("xmllint"));
    cmd.arg("--noout").arg("--relaxng").arg(schema());
    for (i, m) in messages.iter().enumerate() {
        let p = dir.path().join(format!("m{i}.xml"));
        std::fs::write(&p, m).unwrap();
        cmd.arg(p);
    }
    let out = common::run(&mut cmd);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `xmllint --xpath` on one message.
fn xpath(message: &str, expr: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.xml");
    std::fs::write(&p, message).unwrap();
    let out = common::run(
        Command::new(common::tool("xmllint"))
            .arg("--xpath")
            .arg(expr)
            .arg(&p),
    );
    assert!(out.status.success(), "{}", common::text(&out));
    // xmllint ends its answer with a newline of its own.
    let mut text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.pop(), Some('\n'));
    text
}

#[test]
fn every_event_validates_against_the_dicom_audit_schema() {
    let messages: Vec<String> = events()
        .iter()
        .map(|e| to_xml(e, "M3D", "Hospital^Site", SystemTime::now()))
        .collect();
    validate(&messages).unwrap_or_else(|e| panic!("schema validation failed:\n{e}"));
    // The validator does reject: the same message without the mandatory UserIsRequestor.
    let broken = messages[0].replace(" UserIsRequestor=\"false\"", "");
    assert_ne!(broken, messages[0]);
    assert!(validate(&[broken]).is_err());
    // ...and with an EventActionCode the schema does not know.
    let broken = messages[0].replace("EventActionCode=\"E\"", "EventActionCode=\"X\"");
    assert!(validate(&[broken]).is_err());
}

#[test]
fn hostile_values_round_trip_through_the_xml() {
    let xml = to_xml(&hostile_event(), HOSTILE, HOSTILE, SystemTime::now());
    assert!(!xml.contains('\n') && !xml.contains('\r'));
    validate(std::slice::from_ref(&xml)).unwrap();
    // What a reader of the audit trail gets back is exactly what was recorded.
    assert_eq!(
        xpath(
            &xml,
            "string(//ParticipantObjectIdentification[@ParticipantObjectTypeCode='1']/ParticipantObjectName)"
        ),
        HOSTILE
    );
    assert_eq!(
        xpath(&xml, "string(//ActiveParticipant[1]/@AlternativeUserID)"),
        format!("AETITLES={HOSTILE}")
    );
    assert_eq!(xpath(&xml, "string(//EventOutcomeDescription)"), HOSTILE);
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_file_is_0600_one_message_a_line_and_appended_across_starts() {
    let storage = tempfile::tempdir().unwrap();
    let config = AuditConfig {
        enterprise_site_id: "SITE".into(),
        ..AuditConfig::default()
    };
    let all = events();
    let a = Auditor::start(&config, "M3D", storage.path(), None).unwrap();
    let path = storage.path().join("audit/audit.log");
    assert_eq!(a.file(), Some(path.as_path()));
    for e in &all {
        a.record(e.clone());
    }
    a.close();
    drop(a);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&storage.path().join("audit")), 0o700);
    let first = lines(&path);
    assert_eq!(first.len(), all.len());

    let b = Auditor::start(&config, "M3D", storage.path(), None).unwrap();
    b.record(Event::ApplicationStart);
    b.record(hostile_event());
    b.close();
    let second = lines(&path);
    assert_eq!(second.len(), all.len() + 2);
    assert_eq!(second[..first.len()], first[..]);
    assert_eq!(mode(&path), 0o600);
    for line in &second {
        assert!(line.starts_with("<AuditMessage>") && line.ends_with("</AuditMessage>"));
    }
    validate(&second).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        xpath(
            &second[second.len() - 1],
            "string(//ParticipantObjectIdentification[@ParticipantObjectTypeCode='1']/ParticipantObjectName)"
        ),
        HOSTILE
    );
}

/// A CA and a server certificate for 127.0.0.1 made with the openssl CLI.
fn make_certificates(dir: &Path) {
    let openssl = common::tool("openssl");
    let run = |args: &[&str]| {
        let out = common::run(Command::new(&openssl).args(args).current_dir(dir));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            common::text(&out)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=m3dnode test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// `openssl s_server` printing what it receives; killed on drop.
struct Receiver {
    child: Child,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_receiver(dir: &Path, port: u16) -> Receiver {
    let mut child = Command::new(common::tool("openssl"))
        .args(["s_server", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", "server.pem", "-key", "server.key"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting openssl s_server");
    let mut stdout = child.stdout.take().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    // Ready once it accepts (the probe is a plain connection it drops after a failed handshake).
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Receiver { child, received }
}

/// Splits RFC 5425 frames (`LEN SP MSG`) from the start of the first one.
fn frames(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let Some(at) = text.find(" <85>1 ") else {
        return Vec::new();
    };
    let start = text[..at]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let mut rest = &bytes[start..];
    let mut out = Vec::new();
    while let Some(sp) = rest.iter().position(|&b| b == b' ') {
        let Ok(len) = std::str::from_utf8(&rest[..sp]).unwrap().parse::<usize>() else {
            break;
        };
        if rest.len() < sp + 1 + len {
            break;
        }
        out.push(String::from_utf8(rest[sp + 1..sp + 1 + len].to_vec()).unwrap());
        rest = &rest[sp + 1 + len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tls_reaches_openssl_s_server_as_rfc5425_frames() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let port = free_port();
    let receiver = start_receiver(dir.path(), port);
    let config = AuditConfig {
        file: dir.path().join("audit.log"),
        syslog: format!("127.0.0.1:{port}"),
        ..AuditConfig::default()
    };
    let auditor = Auditor::start(
        &config,
        "M3D",
        dir.path(),
        Some(client_config(&dir.path().join("ca.pem"))),
    )
    .unwrap();
    let sent = [
        Event::ApplicationStart,
        hostile_event(),
        Event::ApplicationStop,
    ];
    for e in &sent {
        auditor.record(e.clone());
    }
    let closing = auditor.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let got = frames(&receiver.received.lock().unwrap());
        if got.len() >= sent.len() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got.len(), sent.len(), "frames received: {got:?}");
    let file_lines = lines(&dir.path().join("audit.log"));
    let mut xmls = Vec::new();
    for (frame, line) in got.iter().zip(&file_lines) {
        // <85>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG
        let fields: Vec<&str> = frame.splitn(8, ' ').collect();
        assert_eq!(fields.len(), 8, "{frame}");
        assert_eq!(fields[0], "<85>1");
        let ts = humantime::parse_rfc3339(fields[1]).unwrap();
        assert!(fields[1].ends_with('Z') && fields[1].len() == "2026-01-01T00:00:00.000Z".len());
        let age = SystemTime::now().duration_since(ts).unwrap();
        assert!(age < Duration::from_secs(120), "{age:?}");
        assert!(!fields[2].is_empty());
        assert_eq!(fields[3], "m3dnode");
        assert_eq!(fields[4], std::process::id().to_string());
        assert_eq!(fields[5], "IHE+RFC-3881");
        assert_eq!(fields[6], "-");
        assert!(fields[7].starts_with("<AuditMessage>"), "{frame}");
        // The same message as the file's, and the timestamp is its EventDateTime.
        assert_eq!(fields[7], line);
        assert!(line.contains(&format!("EventDateTime=\"{}\"", fields[1])));
        xmls.push(fields[7].to_string());
    }
    validate(&xmls).unwrap_or_else(|e| panic!("{e}"));
    assert!(xmls[1].contains("&#10;next line"));
    assert_eq!(auditor.dropped_syslog(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_repository_never_blocks_record_and_the_queue_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    // Nothing listens there: every connection is refused, the sender keeps backing off.
    let config = AuditConfig {
        syslog: format!("127.0.0.1:{}", free_port()),
        ..AuditConfig::default()
    };
    let auditor = Auditor::start(
        &config,
        "M3D",
        dir.path(),
        Some(client_config(&dir.path().join("ca.pem"))),
    )
    .unwrap();
    let n = 30_000u64;
    let started = Instant::now();
    for _ in 0..n {
        auditor.record(Event::ApplicationStart);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "record blocked: {took:?}");
    // The syslog queue holds 10,000 messages; the rest were dropped and counted.
    assert_eq!(auditor.dropped_syslog(), n - 10_000);
    let closing = auditor.clone();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close waited {:?}",
        started.elapsed()
    );
    // The file is the record of reference: every message is either in it or counted as dropped.
    let written = lines(auditor.file().unwrap()).len() as u64;
    assert_eq!(written + auditor.dropped_file(), n);
    assert!(written >= 10_000, "only {written} written");
}

/// Messages recorded while the repository is down wait in the queue and arrive, in order, once
/// it comes up (the sender retries with backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_while_disconnected_arrive_after_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let port = free_port();
    let config = AuditConfig {
        file: dir.path().join("audit.log"),
        syslog: format!("127.0.0.1:{port}"),
        ..AuditConfig::default()
    };
    let auditor = Auditor::start(
        &config,
        "M3D",
        dir.path(),
        Some(client_config(&dir.path().join("ca.pem"))),
    )
    .unwrap();
    auditor.record(Event::ApplicationStart);
    auditor.record(hostile_event());
    // Let the first connection attempt fail, then bring the receiver up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let receiver = start_receiver(dir.path(), port);
    auditor.record(Event::ApplicationStop);
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let got = frames(&receiver.received.lock().unwrap());
        if got.len() >= 3 || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got.len(), 3, "frames received: {got:?}");
    assert!(got[0].contains("csd-code=\"110120\""));
    assert!(got[1].contains("csd-code=\"110104\""));
    assert!(got[2].contains("csd-code=\"110121\""));
    assert_eq!(auditor.dropped_syslog(), 0);
}

/// The audit file's messages, once `n` of them satisfy `done`.
fn wait_lines(path: &Path, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let mut got = Vec::new();
    common::wait_for(Duration::from_secs(60), || {
        got = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        done(&got)
    });
    got
}

/// The messages whose EventID has `code`.
fn of_event<'a>(lines: &'a [String], code: &str) -> Vec<&'a String> {
    let id = format!("<EventID csd-code=\"{code}\"");
    lines.iter().filter(|l| l.contains(&id)).collect()
}

#[test]
fn a_store_delivery_and_query_run_is_audited_with_the_right_participants() {
    let dest = common::Destination::up("DEST");
    let mut node = common::Node::start(&format!(
        "[series]\nquiet_seconds = 0.5\n[delivery]\nretry_initial_seconds = 0.2\nretry_max_seconds = 0.5\n\
         {}[[peers]]\nae_title = \"FINDER\"\naddress = \"127.0.0.1:{}\"\n\
         [[rules]]\nname = \"phantom\"\nmodality = \"MR\"\npreset = \"1000\"\nsend_to = [\"DEST\"]\n",
        dest.peer_toml(),
        common::free_port()
    ));
    let audit = node.storage().join("audit").join("audit.log");
    let mode = std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the audit trail holds PHI");

    let series = tempfile::tempdir().unwrap();
    let grid = common::Grid::axial(32, 24, 2.0);
    let files = common::write_phantom(series.path(), &grid, &[], |p| {
        (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt() - 12.0
    });
    let study = common::attr(&files[0], dicom_dictionary_std::tags::STUDY_INSTANCE_UID);
    common::storescu(&node, &[series.path().to_path_buf()]);
    assert!(
        common::wait_for(Duration::from_secs(120), || dest.stores() >= 1),
        "{}",
        node.log()
    );
    // A query, a refused association (wrong called AE title) and a refused C-FIND.
    let find = |aet: &str| {
        common::run(Command::new(common::tool("findscu")).args([
            "-aet",
            aet,
            "-aec",
            "M3DNODE",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "PatientID=PHANTOM02",
            "-k",
            "StudyInstanceUID",
            "127.0.0.1",
            &node.port(),
        ]))
    };
    assert!(find("FINDER").status.success());
    // Refused with 0x0124 (findscu exits 0 all the same); the audit trail is checked below.
    find("STRANGER");
    let refused = common::run(Command::new(common::tool("echoscu")).args([
        "-aet",
        "MODALITY",
        "-aec",
        "NOT-THE-NODE",
        "127.0.0.1",
        &node.port(),
    ]));
    assert!(!refused.status.success());
    assert!(node.terminate().success());

    let lines = wait_lines(&audit, |l| of_event(l, "110100").len() >= 2);
    validate(&lines).unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));

    // Start and stop.
    let activity = of_event(&lines, "110100");
    assert_eq!(activity.len(), 2, "{lines:#?}");
    assert!(activity[0].contains("csd-code=\"110120\""));
    assert!(activity[1].contains("csd-code=\"110121\""));

    // The storescu association accepted, then the 24 instances received from it.
    let logins = of_event(&lines, "110114");
    assert!(
        logins
            .iter()
            .any(|m| m.contains("STORESCU") && m.contains("127.0.0.1")),
        "{logins:#?}"
    );
    let transferred = of_event(&lines, "110104");
    let received: Vec<_> = transferred
        .iter()
        .filter(|m| m.contains("EventActionCode=\"C\""))
        .collect();
    assert_eq!(received.len(), 1, "{transferred:#?}");
    let m = received[0];
    let source = xpath(
        m,
        "string(//ActiveParticipant[RoleIDCode/@csd-code='110153']/@UserID)",
    );
    assert_eq!(source, "STORESCU");
    let destination = xpath(
        m,
        "string(//ActiveParticipant[RoleIDCode/@csd-code='110152']/@UserID)",
    );
    assert_eq!(destination, "M3DNODE");
    assert_eq!(
        xpath(
            m,
            "string(//ParticipantObjectIdentification[ParticipantObjectIDTypeCode/@csd-code='110180']/@ParticipantObjectID)"
        ),
        study
    );
    assert_eq!(
        xpath(
            m,
            "string(//ParticipantObjectDescription/SOPClass/@NumberOfInstances)"
        ),
        "24"
    );
    assert_eq!(
        xpath(
            m,
            "string(//ParticipantObjectIdentification[@ParticipantObjectTypeCodeRole='1']/@ParticipantObjectID)"
        ),
        "PHANTOM02"
    );

    // The mesh sent to DEST: Begin Transferring, then Instances Transferred (R) naming DEST
    // as the destination and the source study.
    let begun = of_event(&lines, "110102");
    assert!(!begun.is_empty(), "{lines:#?}");
    let sent: Vec<_> = transferred
        .iter()
        .filter(|m| m.contains("EventActionCode=\"R\""))
        .collect();
    assert_eq!(sent.len(), 1, "{transferred:#?}");
    let m = sent[0];
    assert_eq!(
        xpath(
            m,
            "string(//ActiveParticipant[RoleIDCode/@csd-code='110152']/@UserID)"
        ),
        "DEST"
    );
    assert_eq!(
        xpath(m, "string(//ParticipantObjectDescription/SOPClass/@UID)"),
        "1.2.840.10008.5.1.4.1.1.104.3"
    );
    assert!(m.contains(&study), "{m}");

    // The query, the unauthorized C-FIND and the refused association.
    let queries = of_event(&lines, "110112");
    assert!(queries.iter().any(|m| m.contains("FINDER")), "{queries:#?}");
    let alerts = of_event(&lines, "110113");
    assert!(
        alerts
            .iter()
            .any(|m| m.contains("STRANGER") && m.contains("110132")),
        "{alerts:#?}"
    );
    assert!(
        alerts
            .iter()
            .any(|m| m.contains("MODALITY") && m.contains("110126") && m.contains("NOT-THE-NODE")),
        "{alerts:#?}"
    );
    // Patient identifiers stay out of the node's own log (at info level and above).
    let log = node.log();
    assert!(
        !log.lines()
            .any(|l| !l.contains("DEBUG") && l.contains("PHANTOM02")),
        "{log}"
    );
}
