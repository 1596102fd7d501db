//! DICOM TLS (PS3.15 Annex B, "BCP 195" profile: RFC 9325): the `[tls]` section, the node's
//! certificate and trusted CAs as rustls configurations, and [`NetStream`], the one stream
//! type the SCP and SCU code read and write whether the association is plain or secure.
//!
//! rustls rather than OpenSSL: no C library to build or to patch on the host, and what
//! BCP 195 forbids cannot be switched on by mistake (rustls has no TLS 1.0/1.1, no
//! compression, no renegotiation, no CBC or RC4 suites). What remains to choose is done in
//! [`provider`]: TLS 1.2 keeps only the ECDHE AES-GCM suites RFC 9325 4.2 recommends;
//! TLS 1.3 keeps its three.
//!
//! The certificate files are read at start-up and again on SIGHUP ([`Tls::reload`]): a new
//! handshake uses the new files, an established association keeps the session it has.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::settings::PeerConfig;

/// `[tls]`: the DICOM TLS listener and the node's TLS identity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Open the TLS listener on `listen`.
    pub enabled: bool,
    /// Where the TLS listener accepts (2762 is the port IANA registered for DICOM over TLS).
    pub listen: SocketAddr,
    /// Keep serving plain TCP on `node.listen` beside TLS. `false` leaves only the TLS
    /// listener, for sites where no image may cross the network in clear.
    pub plain_listener: bool,
    /// The node's certificate chain (PEM, leaf first): shown to every TLS client, and to
    /// TLS peers the node calls that ask for a client certificate (DCMTK asks by default).
    pub certificate: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Trusted CA certificates (PEM): client certificates must chain to one, and so must the
    /// server certificates of the `tls = true` peers the node calls.
    pub ca: PathBuf,
    /// Refuse TLS clients that present no certificate from `ca`. With `false`, a client
    /// without one is served like a plain TCP client (peers marked `tls = true` still need it).
    pub require_client_certificate: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 2762)),
            plain_listener: true,
            certificate: PathBuf::new(),
            key: PathBuf::new(),
            ca: PathBuf::new(),
            require_client_certificate: true,
        }
    }
}

impl TlsConfig {
    /// Whether the node needs its TLS identity at all: for the listener, or to call a peer
    /// marked `tls = true`.
    pub fn needed(&self, peers: &[PeerConfig]) -> bool {
        self.enabled || peers.iter().any(|p| p.tls)
    }

    /// What serde cannot check: the files are named when they are needed, and the node keeps
    /// a listener. Errors are (key, message). Whether the files can be read is checked when
    /// the node starts ([`Tls::load`]).
    pub fn validate(&self, peers: &[PeerConfig]) -> Result<(), (String, String)> {
        if !self.enabled && !self.plain_listener {
            return Err((
                "tls.plain_listener".into(),
                "cannot be false while tls.enabled is false: the node would have no listener"
                    .into(),
            ));
        }
        if !self.needed(peers) {
            return Ok(());
        }
        let why = if self.enabled {
            "tls.enabled is true".to_string()
        } else {
            let peer = peers.iter().find(|p| p.tls).map_or("", |p| &p.ae_title);
            format!("peer `{peer}` has tls = true")
        };
        self.require_files(&why)
    }

    /// Each of the three files must be named, because `why` needs the identity.
    pub fn require_files(&self, why: &str) -> Result<(), (String, String)> {
        for (key, path) in [
            ("tls.certificate", &self.certificate),
            ("tls.key", &self.key),
            ("tls.ca", &self.ca),
        ] {
            if path.as_os_str().is_empty() {
                return Err((key.into(), format!("must name a PEM file ({why})")));
            }
        }
        Ok(())
    }
}

/// Why the TLS identity could not be loaded. Each message names the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{key} `{path}`: {message}")]
    File {
        /// `tls.certificate`, `tls.key` or `tls.ca`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, ...).
    #[error("tls.certificate/tls.key: {0}")]
    Rustls(#[from] rustls::Error),
    /// The trusted CAs cannot verify client certificates.
    #[error("tls.ca: {0}")]
    Verifier(String),
}

/// The crypto provider with the RFC 9325 suites only (see the module docs).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |message: String| TlsError::File {
        key,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The files of one generation of the identity, as rustls configurations.
struct Identity {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl Identity {
    fn load(config: &TlsConfig) -> Result<Identity, TlsError> {
        let chain = read_certificates("tls.certificate", &config.certificate)?;
        let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| TlsError::File {
            key: "tls.key",
            path: config.key.clone(),
            message: e.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        for ca in read_certificates("tls.ca", &config.ca)? {
            roots.add(ca).map_err(|e| TlsError::File {
                key: "tls.ca",
                path: config.ca.clone(),
                message: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        let verifier = if config.require_client_certificate {
            verifier
        } else {
            verifier.allow_unauthenticated()
        }
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Identity {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// The node's TLS identity, reloadable.
pub struct Tls {
    config: TlsConfig,
    current: RwLock<Arc<Identity>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("certificate", &self.config.certificate)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the certificate, key and CA files of `config`.
    pub fn load(config: &TlsConfig) -> Result<Tls, TlsError> {
        Ok(Tls {
            current: RwLock::new(Arc::new(Identity::load(config)?)),
            config: config.clone(),
        })
    }

    /// Reads the files again. On error the identity in use stays, so that a half-copied
    /// certificate does not take the listener down.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(Identity::load(&self.config)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    fn identity(&self) -> Arc<Identity> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The client side, for the associations the node opens to `tls = true` peers (and the
    /// audit trail's syslog connection).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.identity().client.clone()
    }

    /// Runs the server handshake on an accepted connection. The caller bounds its time.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<(NetStream, Option<ClientCertificate>)> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.identity().server.clone());
        let stream = acceptor.accept(tcp).await?;
        let (_, conn) = stream.get_ref();
        let certificate = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| ClientCertificate::of(leaf));
        Ok((NetStream::Server(Box::new(stream)), certificate))
    }
}

/// A client certificate that verified against `tls.ca`, named in the log by its SHA-256
/// fingerprint (what `openssl x509 -fingerprint -sha256` prints), which identifies it
/// without parsing the subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// Hex SHA-256 of the DER certificate.
    pub sha256: String,
}

impl ClientCertificate {
    fn of(der: &CertificateDer<'_>) -> ClientCertificate {
        let digest = Sha256::digest(der.as_ref());
        ClientCertificate {
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// Opens TLS on a connected socket to `host`, verifying the server certificate against the
/// trusted CAs and the host name (or IP address) the peer is configured with.
pub async fn connect(
    client: Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> io::Result<NetStream> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("`{host}`: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await?;
    Ok(NetStream::Client(Box::new(stream)))
}

/// An association's byte stream: plain TCP or TLS over it.
pub enum NetStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, accepted by the node's listener.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS, opened by the node to a peer.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl NetStream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            NetStream::Plain(s) => s,
            NetStream::Server(s) => s.get_ref().0,
            NetStream::Client(s) => s.get_ref().0,
        }
    }

    /// Completes when something can be read: a TLS record already decrypted counts, which
    /// the socket's own readiness would not show. Cancel-safe.
    pub async fn readable(&self) -> io::Result<()> {
        let buffered = match self {
            NetStream::Plain(_) => false,
            NetStream::Server(s) => !s.get_ref().1.wants_read(),
            NetStream::Client(s) => !s.get_ref().1.wants_read(),
        };
        if buffered {
            return Ok(());
        }
        self.tcp().readable().await
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self, NetStream::Plain(_))
    }
}

impl AsyncRead for NetStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NetStream::Server(s) => Pin::new(s).poll_read(cx, buf),
            NetStream::Client(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NetStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NetStream::Server(s) => Pin::new(s).poll_write(cx, buf),
            NetStream::Client(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            NetStream::Server(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            NetStream::Client(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            NetStream::Plain(s) => s.is_write_vectored(),
            NetStream::Server(s) => s.is_write_vectored(),
            NetStream::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_flush(cx),
            NetStream::Server(s) => Pin::new(s).poll_flush(cx),
            NetStream::Client(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NetStream::Server(s) => Pin::new(s).poll_shutdown(cx),
            NetStream::Client(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
