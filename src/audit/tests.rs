use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::*;

fn peer(ae: &str, host: &str) -> Peer {
    Peer {
        ae_title: ae.into(),
        host: host.into(),
    }
}

fn study(uid: &str, patient: Option<(&str, &str)>) -> StudyInstances {
    StudyInstances {
        study_uid: uid.into(),
        patient_id: patient.map(|p| p.0.into()),
        patient_name: patient.map(|p| p.1.into()),
        sop_classes: vec![
            ("1.2.840.10008.5.1.4.1.1.2".into(), 120),
            ("1.2.840.10008.5.1.4.1.1.104.3".into(), 1),
        ],
    }
}

/// One of every variant, and the codes each must carry.
fn samples() -> Vec<(Event, Vec<&'static str>)> {
    vec![
        (
            Event::ApplicationStart,
            vec![
                "csd-code=\"110100\"",
                "csd-code=\"110120\"",
                "csd-code=\"110150\"",
            ],
        ),
        (
            Event::ApplicationStop,
            vec!["csd-code=\"110100\"", "csd-code=\"110121\""],
        ),
        (
            Event::AssociationAccepted {
                peer: peer("MODALITY", "10.1.2.3"),
                calling_ae: "MODALITY".into(),
                called_ae: "M3D".into(),
                tls: true,
            },
            vec![
                "csd-code=\"110114\"",
                "csd-code=\"110122\"",
                "UserID=\"MODALITY\" AlternativeUserID=\"AETITLES=MODALITY\" UserIsRequestor=\"true\" NetworkAccessPointID=\"10.1.2.3\" NetworkAccessPointTypeCode=\"2\"",
                "over TLS",
            ],
        ),
        (
            Event::AssociationRejected {
                peer: peer("STRANGER", "pacs.example.org"),
                calling_ae: "STRANGER".into(),
                called_ae: "M3D".into(),
                reason: "calling AE title not recognized".into(),
            },
            vec![
                "csd-code=\"110113\"",
                "csd-code=\"110126\"",
                "EventOutcomeIndicator=\"4\"",
                "NetworkAccessPointTypeCode=\"1\"",
                "calling AE title not recognized</EventOutcomeDescription>",
                "csd-code=\"110182\"",
                "type=\"Alert Description\"",
            ],
        ),
        (
            Event::SecurityAlert {
                peer: peer("", "10.9.9.9"),
                kind: AlertKind::NodeAuthentication,
                detail: "TLS handshake failed: unknown CA".into(),
            },
            vec![
                "csd-code=\"110113\"",
                "csd-code=\"110126\"",
                "UserID=\"10.9.9.9\"",
            ],
        ),
        (
            Event::SecurityAlert {
                peer: peer("WS", "10.9.9.8"),
                kind: AlertKind::UnauthorizedUse,
                detail: "C-MOVE not allowed for WS".into(),
            },
            vec!["csd-code=\"110132\""],
        ),
        (
            Event::InstancesTransferred {
                direction: Direction::Received,
                remote: peer("MODALITY", "10.1.2.3"),
                local_ae: "M3D".into(),
                studies: vec![
                    study("1.2.3.1", Some(("P1", "Doe^Jane"))),
                    study("1.2.3.2", Some(("P1", "Doe^Jane"))),
                ],
                outcome: Outcome::Success,
            },
            vec![
                "csd-code=\"110104\"",
                "EventActionCode=\"C\"",
                "csd-code=\"110180\"",
                "<SOPClass UID=\"1.2.840.10008.5.1.4.1.1.2\" NumberOfInstances=\"120\"/>",
                "ParticipantObjectID=\"P1\" ParticipantObjectTypeCode=\"1\" ParticipantObjectTypeCodeRole=\"1\"",
                "<ParticipantObjectName>Doe^Jane</ParticipantObjectName>",
            ],
        ),
        (
            Event::InstancesTransferred {
                direction: Direction::Sent,
                remote: peer("PACS", "10.1.2.4"),
                local_ae: "M3D".into(),
                studies: vec![study("1.2.3.1", None)],
                outcome: Outcome::MinorFailure("1 of 2 refused".into()),
            },
            vec![
                "EventActionCode=\"R\"",
                "EventOutcomeIndicator=\"4\"",
                "1 of 2 refused",
            ],
        ),
        (
            Event::BeginTransferring {
                remote: peer("PACS", "10.1.2.4"),
                local_ae: "M3D".into(),
                studies: vec![study("1.2.3.1", Some(("P1", "Doe^Jane")))],
            },
            vec!["csd-code=\"110102\"", "EventActionCode=\"E\""],
        ),
        (
            Event::Query {
                remote: peer("NAV", "10.1.2.5"),
                local_ae: "M3D".into(),
                sop_class_uid: "1.2.840.10008.5.1.4.1.2.2.1".into(),
                query: b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ".to_vec(),
                transfer_syntax: "1.2.840.10008.1.2.1".into(),
                outcome: Outcome::Success,
            },
            vec![
                "csd-code=\"110112\"",
                "csd-code=\"110181\"",
                "<ParticipantObjectQuery>CABSAAYAAABTVFVEWSA=</ParticipantObjectQuery>",
                // base64 of 1.2.840.10008.1.2.1
                "type=\"TransferSyntax\" value=\"MS4yLjg0MC4xMDAwOC4xLjIuMQ==\"",
            ],
        ),
        (
            Event::Export {
                destination: "http://10.1.2.6/".into(),
                studies: vec![study("1.2.3.1", Some(("P1", "Doe^Jane")))],
                outcome: Outcome::SeriousFailure("disk full".into()),
            },
            vec![
                "csd-code=\"110106\"",
                "EventActionCode=\"R\"",
                "EventOutcomeIndicator=\"8\"",
                "csd-code=\"110154\"",
                "<MediaType csd-code=\"110037\"",
                "UserID=\"http://10.1.2.6/\" UserIsRequestor=\"false\" NetworkAccessPointID=\"10.1.2.6\" NetworkAccessPointTypeCode=\"2\"",
            ],
        ),
    ]
}

#[test]
fn every_variant_serializes_with_its_codes_on_one_line() {
    let at = UNIX_EPOCH + Duration::from_millis(1_796_000_000_123);
    for (event, needles) in samples() {
        let xml = to_xml(&event, "M3D", "SITE", at);
        assert!(
            xml.starts_with("<AuditMessage><EventIdentification"),
            "{xml}"
        );
        assert!(xml.ends_with("</AuditMessage>"), "{xml}");
        assert!(!xml.contains('\n') && !xml.contains('\r'), "{xml}");
        assert!(
            xml.contains("EventDateTime=\"2026-11-30T00:53:20.123Z\""),
            "{xml}"
        );
        assert!(
            xml.contains("<AuditSourceIdentification AuditEnterpriseSiteID=\"SITE\" AuditSourceID=\"M3D\"><AuditSourceTypeCode csd-code=\"4\"/>"),
            "{xml}"
        );
        for n in needles {
            assert!(xml.contains(n), "{event:?}: `{n}` missing from {xml}");
        }
    }
}

#[test]
fn one_patient_object_per_distinct_patient() {
    let event = Event::InstancesTransferred {
        direction: Direction::Received,
        remote: peer("A", "h"),
        local_ae: "M3D".into(),
        studies: vec![
            study("1.1", Some(("P1", "One"))),
            study("1.2", Some(("P2", "Two"))),
            study("1.3", Some(("P1", "One"))),
            study("1.4", None),
        ],
        outcome: Outcome::Success,
    };
    let xml = to_xml(&event, "M3D", "", UNIX_EPOCH);
    assert_eq!(
        xml.matches("ParticipantObjectTypeCodeRole=\"3\"").count(),
        4
    );
    assert_eq!(
        xml.matches("ParticipantObjectTypeCodeRole=\"1\"").count(),
        2
    );
    assert!(!xml.contains("AuditEnterpriseSiteID"), "{xml}");
}

#[test]
fn hostile_values_are_escaped() {
    let bad = "A\"<&>'\n\r\t\u{1}é中";
    assert_eq!(
        xml::escape(bad),
        "A&quot;&lt;&amp;&gt;&apos;&#10;&#13;&#9;\u{fffd}é中"
    );
    let xml = to_xml(
        &Event::AssociationAccepted {
            peer: peer(bad, bad),
            calling_ae: bad.into(),
            called_ae: bad.into(),
            tls: false,
        },
        bad,
        bad,
        UNIX_EPOCH,
    );
    assert!(!xml.contains('\n') && !xml.contains("<&") && !xml.contains("\"<"));
}

#[test]
fn config_defaults_and_validation() {
    let c: AuditConfig = toml::from_str("").unwrap();
    assert_eq!(c, AuditConfig::default());
    assert!(c.enabled && c.syslog.is_empty() && c.file.as_os_str().is_empty());
    assert!(c.validate().is_ok());
    let err = toml::from_str::<AuditConfig>("sislog = \"x:1\"").unwrap_err();
    assert!(err.to_string().contains("sislog"), "{err}");
    let c: AuditConfig = toml::from_str("syslog = \"audit.example.org\"").unwrap();
    assert_eq!(c.validate().unwrap_err().0, "audit.syslog");
    let c: AuditConfig = toml::from_str("syslog = \"[::1]:6514\"").unwrap();
    assert!(c.validate().is_ok());
    let c: AuditConfig = toml::from_str("enterprise_site_id = \"a\\nb\"").unwrap();
    assert_eq!(c.validate().unwrap_err().0, "audit.enterprise_site_id");
    let c: AuditConfig = toml::from_str("file = \"/var/log/..\"").unwrap();
    assert_eq!(c.validate().unwrap_err().0, "audit.file");
}

#[test]
fn syslog_without_tls_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = AuditConfig {
        syslog: "127.0.0.1:6514".into(),
        ..AuditConfig::default()
    };
    let err = Auditor::start(&config, "M3D", dir.path(), None).unwrap_err();
    assert!(matches!(err, AuditError::NoTls), "{err}");
    assert!(err.to_string().contains("audit.syslog"));
    // Nothing was created for a configuration that cannot run.
    assert!(!dir.path().join("audit").exists());
}

#[test]
fn disabled_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = AuditConfig {
        enabled: false,
        ..AuditConfig::default()
    };
    let a = Auditor::start(&config, "M3D", dir.path(), None).unwrap();
    assert!(a.file().is_none());
    a.record(Event::ApplicationStart);
    a.close();
    assert!(!dir.path().join("audit").exists());
}

#[test]
fn a_looser_existing_file_is_tightened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = AuditConfig {
        file: path.clone(),
        ..AuditConfig::default()
    };
    let a = Auditor::start(&config, "M3D", dir.path(), None).unwrap();
    assert_eq!(a.file(), Some(path.as_path()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// With the writer stuck, `record` still returns at once: the queue holds FILE_QUEUE messages,
/// the rest are counted as dropped, and the queued ones are written once the writer moves.
#[test]
fn a_stuck_writer_never_blocks_record() {
    let dir = tempfile::tempdir().unwrap();
    let a = Auditor::start(&AuditConfig::default(), "M3D", dir.path(), None).unwrap();
    let inner = a.inner.as_ref().unwrap();
    let (blocked_tx, blocked_rx) = std_mpsc::channel();
    let (gate_tx, gate_rx) = std_mpsc::channel::<()>();
    inner
        .file_tx
        .send(file::FileMsg::Block(blocked_tx, gate_rx))
        .unwrap();
    blocked_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let n = FILE_QUEUE + 5_000;
    let started = Instant::now();
    for _ in 0..n {
        a.record(Event::ApplicationStart);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "record blocked: {took:?}");
    assert_eq!(a.dropped_file(), 5_000);
    drop(gate_tx);
    a.close();
    let text = std::fs::read_to_string(a.file().unwrap()).unwrap();
    assert_eq!(text.lines().count(), FILE_QUEUE);
}

#[test]
fn uri_hosts() {
    assert_eq!(
        xml::uri_host("http://10.1.2.6/mesh/1"),
        Some("10.1.2.6".into())
    );
    assert_eq!(
        xml::uri_host("https://u@ws.example:8443/x"),
        Some("ws.example".into())
    );
    assert_eq!(
        xml::uri_host("http://[2001:db8::1]:80/"),
        Some("2001:db8::1".into())
    );
    assert_eq!(xml::uri_host("file:///tmp/mesh.stl"), None);
    assert_eq!(xml::uri_host("USB stick"), None);
}

#[test]
fn an_unusable_storage_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let err = Auditor::start(&AuditConfig::default(), "M3D", &not_a_dir, None).unwrap_err();
    assert!(matches!(err, AuditError::CreateDir { .. }), "{err}");
    assert!(
        err.to_string().contains(&not_a_dir.display().to_string()),
        "{err}"
    );
}
