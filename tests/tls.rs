//! DICOM TLS against DCMTK's TLS tools and OpenSSL's `s_client`, with certificates made by
//! the test: who gets in, who is refused and why, delivery to a TLS `storescp`, and the
//! SIGHUP reload that keeps open associations.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Destination, Node, free_port, run, text, tool, unsafe_kill, wait_for};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.issuer.pem()).unwrap();
        path.to_path_buf()
    }

    /// A leaf certificate for `name` (also its subject alternative name: 127.0.0.1 becomes an
    /// IP address SAN), valid from `not_before` to `not_after` (years), written as
    /// `<dir>/<stem>.crt` and `.key`. Returns (key, certificate).
    fn leaf(&self, dir: &Path, stem: &str, name: &str, years: (i32, i32)) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (key_path, cert_path) = (
            dir.join(format!("{stem}.key")),
            dir.join(format!("{stem}.crt")),
        );
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(&cert_path, cert.pem()).unwrap();
        (key_path, cert_path)
    }
}

const VALID: (i32, i32) = (2020, 2090);
const EXPIRED: (i32, i32) = (2019, 2021);

/// Certificates for one test: the node's and a good client's from `ca`.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
    node: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

impl Pki {
    /// `ca_name`: CAs with one name would be told apart only by their signatures.
    fn new(ca_name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(ca_name);
        let ca_file = ca.write(&dir.path().join("ca.crt"));
        let node = ca.leaf(dir.path(), "node", "127.0.0.1", VALID);
        let client = ca.leaf(dir.path(), "client", "MODALITY", VALID);
        Pki {
            dir,
            ca,
            ca_file,
            node,
            client,
        }
    }

    fn tls_toml(&self, extra: &str) -> String {
        format!(
            "[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\ncertificate = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n{extra}",
            self.node.1.display(),
            self.node.0.display(),
            self.ca_file.display()
        )
    }
}

fn tls_port(node: &Node) -> String {
    node.tls
        .expect("the node opened no TLS listener")
        .port()
        .to_string()
}

/// `echoscu +tls` with a client key and certificate, trusting `ca`.
fn echo_tls(node: &Node, calling: &str, identity: &(PathBuf, PathBuf), ca: &Path) -> bool {
    let out = run(Command::new(tool("echoscu"))
        .args(["-aet", calling, "-aec", "M3DNODE", "+tls"])
        .arg(&identity.0)
        .arg(&identity.1)
        .arg("+cf")
        .arg(ca)
        .args(["127.0.0.1", &tls_port(node)]));
    out.status.success()
}

fn handshake_failures(node: &Node) -> Vec<String> {
    node.log()
        .lines()
        .filter(|l| l.contains("TLS connection refused: handshake failed"))
        .map(str::to_string)
        .collect()
}

/// Waits for the `n`th handshake failure line and returns it.
fn nth_failure(node: &Node, n: usize) -> String {
    assert!(
        wait_for(Duration::from_secs(10), || handshake_failures(node).len()
            >= n),
        "expected {n} handshake failure lines; log:\n{}",
        node.log()
    );
    handshake_failures(node)[n - 1].clone()
}

#[test]
fn a_client_with_a_certificate_from_the_trusted_ca_stores_over_tls() {
    let pki = Pki::new("m3dnode test CA");
    let node = Node::start(&pki.tls_toml(""));
    let series = tempfile::tempdir().unwrap();
    let files = common::write_mr_series(series.path(), 5, 64, 64);
    let out = run(Command::new(tool("storescu"))
        .args(["-aet", "MODALITY", "-aec", "M3DNODE", "+tls"])
        .arg(&pki.client.0)
        .arg(&pki.client.1)
        .arg("+cf")
        .arg(&pki.ca_file)
        .args(["127.0.0.1", &tls_port(&node)])
        .args(&files));
    assert!(out.status.success(), "{}\nlog:\n{}", text(&out), node.log());
    assert_eq!(node.stored_files().len(), 5, "{}", node.log());
    let log = node.log();
    assert!(
        log.lines()
            .any(|l| l.contains("association closed") && l.contains("tls=true")),
        "the association's span says it was TLS:\n{log}"
    );
    // The plain listener serves beside it.
    assert!(node.echo_ok());
    assert!(handshake_failures(&node).is_empty(), "{log}");
}

#[test]
fn untrusted_expired_anonymous_plain_and_old_tls_clients_are_refused_with_a_reason() {
    let pki = Pki::new("m3dnode test CA");
    let node = Node::start(&pki.tls_toml(""));
    let other = Ca::new("another CA");
    let other_ca = other.write(&pki.dir.path().join("other-ca.crt"));
    let stranger = other.leaf(pki.dir.path(), "stranger", "STRANGER", VALID);
    let expired = pki.ca.leaf(pki.dir.path(), "expired", "OLDCERT", EXPIRED);

    // A certificate from another CA.
    assert!(!echo_tls(&node, "STRANGER", &stranger, &pki.ca_file));
    let line = nth_failure(&node, 1);
    assert!(line.contains("UnknownIssuer"), "{line}");

    // An expired certificate from the trusted CA.
    assert!(!echo_tls(&node, "OLDCERT", &expired, &pki.ca_file));
    let line = nth_failure(&node, 2);
    assert!(line.to_lowercase().contains("expired"), "{line}");

    // TLS without a client certificate (`require_client_certificate` defaults to true).
    let out = run(Command::new(tool("echoscu"))
        .args(["-aec", "M3DNODE", "+tla", "+cf"])
        .arg(&pki.ca_file)
        .args(["127.0.0.1", &tls_port(&node)]));
    assert!(!out.status.success(), "{}", text(&out));
    let line = nth_failure(&node, 3);
    assert!(line.contains("no certificates"), "{line}");

    // Plain DICOM on the TLS port: an A-ASSOCIATE-RQ is no ClientHello.
    let out =
        run(Command::new(tool("echoscu")).args(["-aec", "M3DNODE", "127.0.0.1", &tls_port(&node)]));
    assert!(!out.status.success(), "{}", text(&out));
    let line = nth_failure(&node, 4);
    assert!(line.contains("corrupt message"), "{line}");

    // TLS 1.1 and TLS 1.0 (OpenSSL must be told to offer them at all).
    for version in ["-tls1_1", "-tls1"] {
        let before = handshake_failures(&node).len();
        let out = run(Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", tls_port(&node)),
            ])
            .args([version, "-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile"])
            .arg(&pki.ca_file)
            .stdin(std::process::Stdio::null()));
        assert!(!out.status.success(), "{version}: {}", text(&out));
        let line = nth_failure(&node, before + 1);
        assert!(
            line.contains("incompatible") || line.contains("version"),
            "{version}: {line}"
        );
    }

    // The retired DICOM "AES" profile (TLS_RSA_WITH_AES_128_CBC_SHA: no forward secrecy).
    let before = handshake_failures(&node).len();
    let out = run(Command::new(tool("echoscu"))
        .args(["-aet", "MODALITY", "-aec", "M3DNODE", "+tls"])
        .arg(&pki.client.0)
        .arg(&pki.client.1)
        .args(["+pa", "+cf"])
        .arg(&pki.ca_file)
        .args(["127.0.0.1", &tls_port(&node)]));
    assert!(!out.status.success(), "{}", text(&out));
    nth_failure(&node, before + 1);

    // The other CA's clients never saw our certificate as trusted either way; a good client
    // still gets in, and the refusals left nothing open.
    let _ = other_ca;
    assert!(
        echo_tls(&node, "MODALITY", &pki.client, &pki.ca_file),
        "{}",
        node.log()
    );
    for line in handshake_failures(&node) {
        assert!(
            !line.contains("BEGIN"),
            "no certificate bytes in the log: {line}"
        );
    }
}

#[test]
fn a_tls_peer_is_refused_on_plain_tcp_and_without_a_certificate() {
    let pki = Pki::new("m3dnode test CA");
    let node = Node::start(&format!(
        "[[peers]]\nae_title = \"MODALITY\"\naddress = \"127.0.0.1:{}\"\ntls = true\n{}",
        free_port(),
        pki.tls_toml("require_client_certificate = false\n")
    ));
    // Over plain TCP: rejected at association, with the reason in the log.
    let out = run(Command::new(tool("echoscu")).args([
        "-aet",
        "MODALITY",
        "-aec",
        "M3DNODE",
        "127.0.0.1",
        &node.port(),
    ]));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&out)
    );
    assert!(
        node.log().contains("may only associate over TLS"),
        "{}",
        node.log()
    );
    // Over TLS without a certificate (allowed for others here): still rejected.
    let anonymous = |calling: &str| {
        run(Command::new(tool("echoscu"))
            .args(["-aet", calling, "-aec", "M3DNODE", "+tla", "+cf"])
            .arg(&pki.ca_file)
            .args(["127.0.0.1", &tls_port(&node)]))
        .status
        .success()
    };
    assert!(!anonymous("MODALITY"));
    assert!(anonymous("WORKSTATION"), "{}", node.log());
    // With its certificate: accepted.
    assert!(
        echo_tls(&node, "MODALITY", &pki.client, &pki.ca_file),
        "{}",
        node.log()
    );
}

/// DCMTK `storescp +tls` as `DEST`, requiring the node's client certificate.
fn tls_storescp(pki: &Pki) -> Destination {
    tls_storescp_with(&pki.ca, &pki.ca_file)
}

/// DCMTK `storescp +tls` as `DEST` with a certificate from `signer`, trusting the CAs of
/// `trusted` for the node's client certificate.
fn tls_storescp_with(signer: &Ca, trusted: &Path) -> Destination {
    let mut dest = Destination::down("DEST");
    let (key, cert) = signer.leaf(dest.dir.path(), "dest", "127.0.0.1", VALID);
    let log = std::fs::File::create(dest.dir.path().join("storescp.log")).unwrap();
    let out = dest.dir.path().join("in");
    std::fs::create_dir_all(&out).unwrap();
    dest.child = Some(
        Command::new(tool("storescp"))
            .args(["-v", "-aet", "DEST", "+tls"])
            .arg(&key)
            .arg(&cert)
            .arg("+cf")
            .arg(trusted)
            .arg("-od")
            .arg(&out)
            .arg(dest.port.to_string())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    assert!(wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", dest.port)).is_ok()
    }));
    dest
}

#[test]
fn results_are_delivered_to_a_tls_storescp() {
    let pki = Pki::new("m3dnode test CA");
    let dest = tls_storescp(&pki);
    let node = Node::start(&format!(
        "[series]\nquiet_seconds = 0.5\n[delivery]\nretry_initial_seconds = 0.2\nretry_max_seconds = 0.5\n\
         [[peers]]\nae_title = \"DEST\"\naddress = \"127.0.0.1:{}\"\ntls = true\n\
         [[peers]]\nae_title = \"VIEWER\"\naddress = \"127.0.0.1:{}\"\n\
         [[rules]]\nname = \"phantom\"\nmodality = \"MR\"\npreset = \"1000\"\nsend_to = [\"DEST\"]\n{}",
        dest.port,
        free_port(),
        // The node needs its identity to call DEST; its own listener stays plain.
        pki.tls_toml("")
            .replace("enabled = true", "enabled = false")
    ));
    assert!(node.tls.is_none());
    let series = tempfile::tempdir().unwrap();
    let grid = common::Grid::axial(32, 24, 2.0);
    common::write_phantom(series.path(), &grid, &[], |p| {
        (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt() - 12.0
    });
    common::storescu(&node, &[series.path().to_path_buf()]);
    assert!(
        wait_for(Duration::from_secs(120), || dest.stores() >= 1),
        "nothing reached the TLS storescp; outbox {:?}; node log:\n{}\nstorescp log:\n{}",
        common::outbox(&node),
        node.log(),
        std::fs::read_to_string(dest.dir.path().join("storescp.log")).unwrap_or_default()
    );
    let files = dest.files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        common::attr(&files[0], dicom_dictionary_std::tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.104.3"
    );

    // C-MOVE sub-operations to DEST go over TLS too: the study (24 images and the mesh).
    let study = common::attr(&files[0], dicom_dictionary_std::tags::STUDY_INSTANCE_UID);
    let out = common::retrieve_study("movescu", &node, "VIEWER", &["-aem", "DEST"], &study);
    assert!(out.status.success(), "{}\n{}", text(&out), node.log());
    assert!(
        wait_for(Duration::from_secs(30), || dest.stores() >= 26),
        "{} stores at DEST; {}",
        dest.stores(),
        text(&out)
    );
}

#[test]
fn a_storescp_with_a_certificate_from_another_ca_gets_nothing() {
    let pki = Pki::new("m3dnode test CA");
    // DEST's certificate comes from a CA the node does not trust, while DEST trusts the
    // node, so only the node's check can refuse.
    let stranger = Pki::new("stranger CA");
    let both = stranger.dir.path().join("both.crt");
    std::fs::write(
        &both,
        std::fs::read_to_string(&stranger.ca_file).unwrap()
            + &std::fs::read_to_string(&pki.ca_file).unwrap(),
    )
    .unwrap();
    let dest = tls_storescp_with(&stranger.ca, &both);
    let node = Node::start(&format!(
        "[[peers]]\nae_title = \"DEST\"\naddress = \"127.0.0.1:{}\"\ntls = true\n{}",
        dest.port,
        pki.tls_toml("")
    ));
    let out = run(Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["echo", "--config"])
        .arg(&node.config)
        .arg("DEST"));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("UnknownIssuer"), "{}", text(&out));
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_open_associations() {
    let pki = Pki::new("m3dnode test CA");
    // The node trusts clients of both CAs; its own certificate moves from the first to the
    // second.
    let second = Ca::new("second CA");
    let second_ca = second.write(&pki.dir.path().join("second-ca.crt"));
    let trusted = pki.dir.path().join("trusted.crt");
    std::fs::write(
        &trusted,
        std::fs::read_to_string(&pki.ca_file).unwrap()
            + &std::fs::read_to_string(&second_ca).unwrap(),
    )
    .unwrap();
    let node = Node::start(&pki.tls_toml("").replace(
        &pki.ca_file.display().to_string(),
        &trusted.display().to_string(),
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // An association over TLS, held open across the reload.
    let client = m3dnode::net::tls::Tls::load(&m3dnode::net::tls::TlsConfig {
        certificate: pki.client.1.clone(),
        key: pki.client.0.clone(),
        ca: pki.ca_file.clone(),
        ..Default::default()
    })
    .unwrap()
    .client_config();
    let contexts = [(
        "1.2.840.10008.1.1".to_string(),
        vec!["1.2.840.10008.1.2".to_string()],
    )];
    let address = format!("127.0.0.1:{}", tls_port(&node));
    let mut held = rt
        .block_on(m3dnode::net::request::Association::request(
            &address,
            &m3dnode::net::request::Proposal {
                calling_ae: "MODALITY",
                called_ae: "M3DNODE",
                max_pdu: 65_536,
                contexts: &contexts,
                timeout: Duration::from_secs(10),
                tls: Some(client),
            },
        ))
        .unwrap();

    assert!(echo_tls(&node, "MODALITY", &pki.client, &pki.ca_file));
    assert!(!echo_tls(&node, "MODALITY", &pki.client, &second_ca));
    second.leaf(pki.dir.path(), "node", "127.0.0.1", VALID);
    unsafe_kill(node.child.id() as i32, "HUP");
    assert!(
        wait_for(Duration::from_secs(10), || node
            .log()
            .contains("TLS certificate, key and CA files reloaded")),
        "{}",
        node.log()
    );
    assert!(
        echo_tls(&node, "MODALITY", &pki.client, &second_ca),
        "{}",
        node.log()
    );
    assert!(!echo_tls(&node, "MODALITY", &pki.client, &pki.ca_file));
    // The association opened before the reload is still served.
    rt.block_on(held.release()).unwrap();

    // A broken file on SIGHUP: logged, and the certificate in use stays.
    std::fs::write(&pki.node.1, "not a certificate").unwrap();
    unsafe_kill(node.child.id() as i32, "HUP");
    assert!(
        wait_for(Duration::from_secs(10), || node
            .log()
            .contains("TLS files not reloaded")),
        "{}",
        node.log()
    );
    assert!(
        echo_tls(&node, "MODALITY", &pki.client, &second_ca),
        "{}",
        node.log()
    );
}

#[test]
fn tls_configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("m3dnode.toml");
    // Each is refused while the configuration loads, before `serve` binds anything (the
    // `timeout` only guards against a configuration accepted by mistake).
    let check = |toml: &str| {
        std::fs::write(&config, toml).unwrap();
        let out = run(Command::new("timeout")
            .args(["20", env!("CARGO_BIN_EXE_m3dnode"), "serve", "--config"])
            .arg(&config));
        (out.status.code() == Some(2), text(&out))
    };
    let (refused, out) = check("[tls]\nenabled = true\n");
    assert!(refused && out.contains("tls.certificate"), "{out}");
    let (refused, out) = check("[tls]\nplain_listener = false\n");
    assert!(refused && out.contains("tls.plain_listener"), "{out}");
    let (refused, out) =
        check("[[peers]]\nae_title = \"PACS\"\naddress = \"127.0.0.1:104\"\ntls = true\n");
    assert!(
        refused && out.contains("tls.certificate") && out.contains("PACS"),
        "{out}"
    );
    // Files that do not load stop `serve` with the key and the file named.
    let missing = dir.path().join("missing.crt");
    std::fs::write(
        &config,
        format!(
            "[node]\nlisten = \"127.0.0.1:0\"\nstorage = \"{}\"\n[http]\nlisten = \"\"\n[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\ncertificate = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            dir.path().join("var").display(),
            missing.display(),
            missing.display(),
            missing.display()
        ),
    )
    .unwrap();
    let out = run(Command::new("timeout")
        .args(["20", env!("CARGO_BIN_EXE_m3dnode"), "serve", "--config"])
        .arg(&config));
    assert!(!out.status.success() && out.status.code() != Some(124));
    assert!(
        text(&out).contains("tls.certificate") && text(&out).contains("missing.crt"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_handshake_that_never_finishes_is_closed_at_the_request_timer() {
    use std::io::{Read, Write};
    let pki = Pki::new("m3dnode test CA");
    let node = Node::start(&format!(
        "association_request_timeout_seconds = 1\n{}",
        pki.tls_toml("")
    ));
    let tls = node.tls.unwrap();
    // One socket says nothing; another sends the first bytes of a ClientHello and stops.
    let mut silent = std::net::TcpStream::connect(tls).unwrap();
    let mut partial = std::net::TcpStream::connect(tls).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    for socket in [&mut silent, &mut partial] {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        // Closed by the node (0 bytes, or a reset), not left open until our timeout.
        let started = std::time::Instant::now();
        let _ = socket.read(&mut buf);
        assert!(started.elapsed() < Duration::from_secs(8));
    }
    nth_failure(&node, 2);
    for line in handshake_failures(&node) {
        assert!(line.contains("no handshake within 1 s"), "{line}");
    }
    // Meanwhile and after, a good client is served.
    assert!(echo_tls(&node, "MODALITY", &pki.client, &pki.ca_file));
}
