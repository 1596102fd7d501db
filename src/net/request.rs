//! Association establishment on the SCU side (PS3.8 7.1, 9.3.2-9.3.4) and the PDU exchange
//! on the established association, for delivery, `send` and `echo`.
//!
//! Why not dicom-ul's `ClientAssociationOptions`: it announces dicom-rs's Implementation Class
//! UID and version name in every request, with no way to set the node's own; and every PDU it
//! reads or writes is bounded here in the same way as on the SCP side ([`super::accept`]).
//! PDU encoding and decoding stay dicom-ul's.

use std::sync::Arc;
use std::time::Duration;

use dicom_ul::Pdu;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRQ, PresentationContextNegotiated, PresentationContextProposed,
    PresentationContextResultReason, RequestorRoles, UserVariableItem,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tls::NetStream;

use super::accept::{APPLICATION_CONTEXT, IMPLEMENTATION_VERSION_NAME};

/// Non-P-DATA PDUs are small; anything larger than this is not one.
const MAX_OTHER_PDU: u32 = 256 * 1024;

/// Why an association could not be requested or used.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// TCP connection failed.
    #[error("could not connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake failed (the peer's certificate does not verify against `tls.ca` or
    /// does not name its host, it refused ours, no common version or suite).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// Reading or writing the socket failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// No answer within the timeout.
    #[error("no answer within {0} s")]
    Timeout(u64),
    /// A-ASSOCIATE-RJ.
    #[error("association rejected ({}: {})", if .0.result == dicom_ul::pdu::AssociationRJResult::Permanent { "permanent" } else { "transient" }, .0.source)]
    Rejected(AssociationRJ),
    /// The peer accepted the association but none of the presentation contexts.
    #[error("no presentation contexts accepted by the server")]
    NoAcceptedPresentationContexts,
    /// The peer aborted.
    #[error("aborted by the peer")]
    Aborted,
    /// The peer sent something that has no place here.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// An association this node requested.
pub struct Association {
    socket: NetStream,
    /// Largest PDU the acceptor takes (its variable field length).
    acceptor_max_pdu: u32,
    /// Largest P-DATA PDU we accept (announced in our request).
    max_pdu: u32,
    contexts: Vec<PresentationContextNegotiated>,
    /// The SCP/SCU Role Selection items of the A-ASSOCIATE-AC (SOP class, roles).
    roles: Vec<(String, RequestorRoles)>,
    timeout: Duration,
    out: Vec<u8>,
}

/// What to propose.
pub struct Proposal<'a> {
    /// Our AE title.
    pub calling_ae: &'a str,
    /// The peer's.
    pub called_ae: &'a str,
    /// Largest PDU we accept.
    pub max_pdu: u32,
    /// (abstract syntax, transfer syntaxes) per presentation context, in order.
    pub contexts: &'a [(String, Vec<String>)],
    /// Connect, read and write timeout.
    pub timeout: Duration,
    /// TLS (the node's client configuration) for a `tls = true` peer; `None` for plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

async fn timed<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, RequestError>>,
) -> Result<T, RequestError> {
    tokio::time::timeout(timeout, f)
        .await
        .unwrap_or(Err(RequestError::Timeout(timeout.as_secs())))
}

impl Association {
    /// Connects to `address` and negotiates the association.
    pub async fn request(address: &str, p: &Proposal<'_>) -> Result<Association, RequestError> {
        Self::request_with_roles(address, p, &[]).await
    }

    /// [`Association::request`] with SCP/SCU Role Selection items (PS3.7 D.3.3.4): a C-GET
    /// requester must offer to be the SCP of each storage class it wants sub-operations for,
    /// or a conforming peer cannot send it a single instance. Each entry is (SOP class, roles).
    pub async fn request_with_roles(
        address: &str,
        p: &Proposal<'_>,
        roles: &[(String, RequestorRoles)],
    ) -> Result<Association, RequestError> {
        let socket = timed(p.timeout, async {
            let tcp = TcpStream::connect(address)
                .await
                .map_err(RequestError::Connect)?;
            let _ = tcp.set_nodelay(true);
            match &p.tls {
                None => Ok(NetStream::Plain(tcp)),
                Some(client) => {
                    let host = super::settings::parse_host_port(address)
                        .map(|(host, _)| host)
                        .map_err(|m| {
                            RequestError::Connect(std::io::Error::new(
                                std::io::ErrorKind::InvalidInput,
                                m,
                            ))
                        })?;
                    super::tls::connect(client.clone(), &host, tcp)
                        .await
                        .map_err(RequestError::Tls)
                }
            }
        })
        .await?;
        let proposed: Vec<PresentationContextProposed> = p
            .contexts
            .iter()
            .enumerate()
            .map(|(i, (abstract_syntax, tss))| PresentationContextProposed {
                id: (2 * i + 1) as u8,
                abstract_syntax: abstract_syntax.clone(),
                transfer_syntaxes: tss.clone(),
            })
            .collect();
        let mut user_variables = vec![
            UserVariableItem::MaxLength(p.max_pdu),
            UserVariableItem::ImplementationClassUID(
                crate::store::IMPLEMENTATION_CLASS_UID.to_string(),
            ),
            UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION_NAME.to_string()),
        ];
        user_variables.extend(
            roles
                .iter()
                .map(|(uid, r)| UserVariableItem::ScuScpRoleSelectionSubItem(uid.clone(), *r)),
        );
        let rq = Pdu::AssociationRQ(AssociationRQ {
            protocol_version: 1,
            calling_ae_title: p.calling_ae.to_string(),
            called_ae_title: p.called_ae.to_string(),
            application_context_name: APPLICATION_CONTEXT.to_string(),
            presentation_contexts: proposed.clone(),
            user_variables,
        });
        let mut assoc = Association {
            socket,
            acceptor_max_pdu: 16_384,
            max_pdu: p.max_pdu,
            contexts: Vec::new(),
            roles: Vec::new(),
            timeout: p.timeout,
            out: Vec::new(),
        };
        assoc.send(&rq).await?;
        let ac = match assoc.receive().await? {
            Pdu::AssociationAC(ac) => ac,
            Pdu::AssociationRJ(rj) => return Err(RequestError::Rejected(rj)),
            Pdu::AbortRQ { .. } => return Err(RequestError::Aborted),
            other => {
                return Err(RequestError::Protocol(format!(
                    "{} instead of an A-ASSOCIATE-AC",
                    other.short_description()
                )));
            }
        };
        for item in &ac.user_variables {
            match item {
                // 0 means "no limit" (PS3.8 D.1).
                UserVariableItem::MaxLength(len) => {
                    assoc.acceptor_max_pdu = if *len == 0 { u32::MAX } else { *len };
                }
                UserVariableItem::ScuScpRoleSelectionSubItem(uid, roles) => assoc
                    .roles
                    .push((uid.trim_end_matches(['\0', ' ']).to_string(), *roles)),
                _ => {}
            }
        }
        assoc.contexts = ac
            .presentation_contexts
            .into_iter()
            .filter_map(|pc| {
                let proposed = proposed.iter().find(|p| p.id == pc.id)?;
                Some(PresentationContextNegotiated {
                    id: pc.id,
                    reason: pc.reason,
                    transfer_syntax: pc.transfer_syntax.trim_end_matches(['\0', ' ']).to_string(),
                    abstract_syntax: proposed.abstract_syntax.clone(),
                })
            })
            .collect();
        if !assoc
            .contexts
            .iter()
            .any(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        {
            let _ = assoc.abort().await;
            return Err(RequestError::NoAcceptedPresentationContexts);
        }
        Ok(assoc)
    }

    /// The roles the acceptor answered for `sop_class`, if it answered a Role Selection item
    /// for it (without one, the default roles stand: PS3.7 D.3.3.4).
    pub fn acceptor_roles(&self, sop_class: &str) -> Option<RequestorRoles> {
        self.roles
            .iter()
            .find(|(uid, _)| uid == sop_class)
            .map(|(_, r)| *r)
    }

    /// The presentation contexts as the acceptor answered them.
    pub fn presentation_contexts(&self) -> &[PresentationContextNegotiated] {
        &self.contexts
    }

    /// The acceptor's maximum PDU length.
    pub fn acceptor_max_pdu_length(&self) -> u32 {
        self.acceptor_max_pdu
    }

    /// Completes when the peer has sent something (or closed). Unlike [`Association::receive`]
    /// it is cancel-safe, so that a caller can wait for either the peer or its own signal
    /// (a C-CANCEL on Ctrl-C) without losing half a PDU.
    pub async fn readable(&self) -> Result<(), RequestError> {
        self.socket.readable().await.map_err(RequestError::Io)
    }

    /// The per-PDU timeout this association was requested with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one PDU.
    pub async fn send(&mut self, pdu: &Pdu) -> Result<(), RequestError> {
        self.out.clear();
        dicom_ul::write_pdu(&mut self.out, pdu)
            .map_err(|e| RequestError::Protocol(format!("encoding a PDU: {e}")))?;
        let (socket, out) = (&mut self.socket, &self.out);
        timed(self.timeout, async {
            socket.write_all(out).await.map_err(RequestError::Io)
        })
        .await
    }

    /// Receives one PDU, bounded by what we announced.
    pub async fn receive(&mut self) -> Result<Pdu, RequestError> {
        let max = self.max_pdu;
        let socket = &mut self.socket;
        timed(self.timeout, async {
            let mut head = [0u8; 6];
            socket
                .read_exact(&mut head)
                .await
                .map_err(RequestError::Io)?;
            let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]);
            let limit = if head[0] == 0x04 { max } else { MAX_OTHER_PDU };
            if len > limit {
                return Err(RequestError::Protocol(format!(
                    "PDU of {len} bytes exceeds the {limit}-byte maximum"
                )));
            }
            let mut pdu = vec![0u8; 6 + len as usize];
            pdu[..6].copy_from_slice(&head);
            socket
                .read_exact(&mut pdu[6..])
                .await
                .map_err(RequestError::Io)?;
            match dicom_ul::read_pdu(pdu.as_slice(), limit + 6, false) {
                Ok(Some(pdu)) => Ok(pdu),
                _ => Err(RequestError::Protocol(format!(
                    "malformed PDU of type {:#04x}",
                    head[0]
                ))),
            }
        })
        .await
    }

    /// A-RELEASE-RQ, then waits for the A-RELEASE-RP (or whatever ends the association).
    pub async fn release(&mut self) -> Result<(), RequestError> {
        self.send(&Pdu::ReleaseRQ).await?;
        loop {
            match self.receive().await? {
                Pdu::ReleaseRP => break,
                Pdu::AbortRQ { .. } => return Err(RequestError::Aborted),
                // Late P-DATA of an operation we gave up on: keep reading to the RP.
                Pdu::PData { .. } => continue,
                other => {
                    return Err(RequestError::Protocol(format!(
                        "{} instead of an A-RELEASE-RP",
                        other.short_description()
                    )));
                }
            }
        }
        let _ = self.socket.shutdown().await;
        Ok(())
    }

    /// A-ABORT from the service user.
    pub async fn abort(&mut self) -> Result<(), RequestError> {
        let pdu = Pdu::AbortRQ {
            source: dicom_ul::pdu::AbortRQSource::ServiceUser,
        };
        let r = self.send(&pdu).await;
        let _ = self.socket.shutdown().await;
        r
    }
}
