//! Syslog over TLS (RFC 5425) to an audit record repository, as IHE ITI-20 and PS3.15 A.6 ask:
//! RFC 5424 messages with PRI 85 (facility 10 authpriv, severity 5 notice), APP-NAME `m3dnode`,
//! MSGID `IHE+RFC-3881`, the XML as MSG, each framed as `LEN SP MESSAGE` (octet counting).
//!
//! One task on the node's runtime owns the connection. Messages wait in a bounded channel while
//! it is down (reconnects back off from 1 s to 60 s); when the channel is full, new messages are
//! dropped with a warning: the local file stays the complete record.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

/// Messages kept while the repository is unreachable.
pub(super) const QUEUE: usize = 10_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What the sender task is asked to do, in order.
pub(super) enum SyslogMsg {
    /// One framed message.
    Frame(Vec<u8>),
    /// Answer once everything queued before it is written and flushed.
    Flush(std::sync::mpsc::Sender<()>),
}

/// One RFC 5425 frame of an RFC 5424 message carrying `xml`.
pub(super) fn frame(xml: &str, at: SystemTime, hostname: &str, pid: u32) -> Vec<u8> {
    let msg = format!(
        "<85>1 {} {hostname} m3dnode {pid} IHE+RFC-3881 - {xml}",
        super::xml::timestamp(at)
    );
    format!("{} {msg}", msg.len()).into_bytes()
}

/// The HOSTNAME field: this machine's name as printable ASCII (RFC 5424 6.2.4), or `-`.
pub(super) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "-".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String = buf[..end]
        .iter()
        .filter(|b| (33..=126).contains(*b))
        .map(|&b| b as char)
        .take(255)
        .collect();
    if name.is_empty() { "-".into() } else { name }
}

/// The sender task: connects, writes frames in order, reconnects with backoff. Ends when the
/// last [`super::Auditor`] is gone and the queue is drained (or the connection is down then).
pub(super) async fn run(
    mut rx: mpsc::Receiver<SyslogMsg>,
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) {
    let server_name = match ServerName::try_from(host.clone()) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(host, error = %e, "audit syslog: not a DNS name or IP address; nothing will be sent");
            return;
        }
    };
    let connector = TlsConnector::from(tls);
    let mut backoff = BACKOFF_FIRST;
    // A frame whose write failed: sent again first on the next connection.
    let mut pending: Option<Vec<u8>> = None;
    loop {
        let connect = async {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            connector.connect(server_name.clone(), tcp).await
        };
        let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(s)) => {
                tracing::info!(host, port, "audit syslog: connected over TLS");
                backoff = BACKOFF_FIRST;
                s
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                tracing::warn!(host, port, error, retry_in = ?backoff, "audit syslog: cannot connect; messages wait in the queue");
                if rx.is_closed() && rx.is_empty() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        loop {
            let msg = match pending.take() {
                Some(f) => SyslogMsg::Frame(f),
                None => match rx.recv().await {
                    Some(m) => m,
                    None => {
                        let _ = stream.shutdown().await;
                        return;
                    }
                },
            };
            match msg {
                SyslogMsg::Frame(f) => {
                    let sent = async {
                        stream.write_all(&f).await?;
                        // rustls buffers; push the record out unless more is already queued.
                        if rx.is_empty() {
                            stream.flush().await?;
                        }
                        Ok::<(), std::io::Error>(())
                    };
                    if let Err(e) = sent.await {
                        tracing::warn!(host, port, error = %e, "audit syslog: connection lost; reconnecting");
                        pending = Some(f);
                        break;
                    }
                }
                SyslogMsg::Flush(reply) => {
                    if stream.flush().await.is_ok() {
                        let _ = reply.send(());
                    }
                }
            }
        }
    }
}
