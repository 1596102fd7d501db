//! Association establishment on the SCP side (PS3.8 7.1, 9.3.2-9.3.4): reading the
//! A-ASSOCIATE-RQ under the ARTIM timer, the node's acceptance policy, and the answer.
//!
//! Why not dicom-ul's `ServerAssociationOptions`, which the node used before:
//! - it reads the socket through a buffer of its own, so bytes a peer sends right behind its
//!   request would be lost to the handler, which reads P-DATA straight off the socket
//!   ([`super::wire`]). Here the request is read with its exact length and nothing more;
//! - it rejects protocol versions other than exactly 1 and application context names with a
//!   trailing NUL, where PS3.8 9.3.2 asks a receiver to test only bit 0 of the version, and
//!   DCMTK accepts both;
//! - it answers an A-RELEASE-RQ on a connection that has no association with A-RELEASE-RP,
//!   and its errors carry whole PDUs (payload bytes, patient data) into the log;
//! - it announces dicom-rs's Implementation Class UID instead of this node's.
//!
//! PDU encoding and decoding stay dicom-ul's ([`dicom_ul::read_pdu`], [`dicom_ul::write_pdu`]).

use std::time::Duration;

use dicom_ul::Pdu;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AssociationAC, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderASCEReason, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, PresentationContextResult,
    PresentationContextResultReason, UserVariableItem,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The DICOM application context (PS3.7 A.2.1), the only one there is.
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// Our Implementation Version Name (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("M3DNODE_", env!("CARGO_PKG_VERSION"));

/// An A-ASSOCIATE-RQ is a few kilobytes even with a hundred presentation contexts; a larger
/// one is hostile or broken, and is refused before it is buffered.
const MAX_REQUEST: u32 = 256 * 1024;

/// Why no A-ASSOCIATE-RQ could be read. Messages never carry the peer's bytes.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The ARTIM timer ran out (PS3.8 9.1.5).
    #[error("no complete A-ASSOCIATE-RQ within {0} s (ARTIM timer)")]
    Timeout(u64),
    /// The peer closed the connection first.
    #[error("connection closed before a complete A-ASSOCIATE-RQ")]
    Closed,
    /// Reading the socket failed.
    #[error("reading the A-ASSOCIATE-RQ: {0}")]
    Io(#[source] std::io::Error),
    /// Another PDU type came first.
    #[error("first PDU is {} (type {:#04x}), not an A-ASSOCIATE-RQ", pdu_name(*.0), .0)]
    NotARequest(u8),
    /// The request announced more bytes than any sane request holds.
    #[error("A-ASSOCIATE-RQ of {0} bytes exceeds the {MAX_REQUEST}-byte limit")]
    TooLong(u32),
    /// The request's structure contradicts itself.
    #[error("malformed A-ASSOCIATE-RQ ({0} bytes)")]
    Malformed(u32),
}

impl RequestError {
    /// Whether PS3.8's state machine answers with an A-ABORT (AA-1) before closing: every
    /// case but a silent peer, a closed connection and an A-ABORT of the peer's own.
    pub fn answer_with_abort(&self) -> bool {
        match self {
            RequestError::NotARequest(kind) => *kind != 0x07,
            RequestError::TooLong(_) | RequestError::Malformed(_) => true,
            RequestError::Timeout(_) | RequestError::Closed | RequestError::Io(_) => false,
        }
    }
}

fn pdu_name(kind: u8) -> &'static str {
    match kind {
        0x01 => "A-ASSOCIATE-RQ",
        0x02 => "A-ASSOCIATE-AC",
        0x03 => "A-ASSOCIATE-RJ",
        0x04 => "P-DATA-TF",
        0x05 => "A-RELEASE-RQ",
        0x06 => "A-RELEASE-RP",
        0x07 => "A-ABORT",
        _ => "an unknown PDU",
    }
}

/// Reads exactly one A-ASSOCIATE-RQ: its 6-byte header, then the length it announces, and
/// not one byte more, so whatever the peer sends next stays in the socket for the handler.
pub async fn read_request<S: AsyncRead + Unpin>(
    socket: &mut S,
    artim: Duration,
) -> Result<AssociationRQ, RequestError> {
    let read = async {
        let mut head = [0u8; 6];
        read_all(socket, &mut head).await?;
        if head[0] != 0x01 {
            return Err(RequestError::NotARequest(head[0]));
        }
        let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]);
        if len > MAX_REQUEST {
            return Err(RequestError::TooLong(len));
        }
        let mut pdu = vec![0u8; 6 + len as usize];
        pdu[..6].copy_from_slice(&head);
        read_all(socket, &mut pdu[6..]).await?;
        match dicom_ul::read_pdu(pdu.as_slice(), MAX_REQUEST + 6, false) {
            Ok(Some(Pdu::AssociationRQ(rq))) => Ok(rq),
            _ => Err(RequestError::Malformed(len)),
        }
    };
    match tokio::time::timeout(artim, read).await {
        Ok(r) => r,
        Err(_) => Err(RequestError::Timeout(artim.as_secs())),
    }
}

async fn read_all<S: AsyncRead + Unpin>(
    socket: &mut S,
    buf: &mut [u8],
) -> Result<(), RequestError> {
    match socket.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(RequestError::Closed),
        Err(e) => Err(RequestError::Io(e)),
    }
}

/// An accepted presentation context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Presentation context ID.
    pub id: u8,
    /// SOP class, without padding.
    pub abstract_syntax: String,
    /// The transfer syntax chosen, without padding.
    pub transfer_syntax: String,
}

/// A presentation context the node did not accept, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// SOP class as proposed (unpadded).
    pub abstract_syntax: String,
    /// Why.
    pub reason: PresentationContextResultReason,
}

/// The association as agreed, and the A-ASSOCIATE-AC that says so.
#[derive(Debug)]
pub struct Agreed {
    /// The peer's AE title, trimmed.
    pub calling_ae: String,
    /// Our AE title as the peer called it, trimmed.
    pub called_ae: String,
    /// Largest PDU the peer accepts (its variable field); `u32::MAX` when it set no limit.
    pub peer_max_pdu: u32,
    /// Accepted presentation contexts.
    pub contexts: Vec<Context>,
    /// Refused ones.
    pub refused: Vec<Refused>,
    /// SOP classes (of accepted contexts) on which the peer proposed, and we accepted, the
    /// SCP role (PS3.7 D.3.3.4): the node may send C-STORE-RQ on them (C-GET).
    pub scp_role: Vec<String>,
    /// The answer to send.
    pub ac: Pdu,
}

/// What the node makes of a request.
#[derive(Debug)]
pub enum Decision {
    /// Send `Agreed::ac` and serve the association.
    Accept(Agreed),
    /// Send the A-ASSOCIATE-RJ; `why` is for the log.
    Reject {
        /// The PDU.
        rj: Pdu,
        /// What was wrong, in words.
        why: String,
    },
}

/// The node's side of a negotiation.
pub struct Terms<'a> {
    /// Largest PDU we accept.
    pub max_pdu: u32,
    /// Whether an abstract syntax (unpadded) is one we serve.
    pub abstract_syntax: &'a (dyn Fn(&str) -> bool + Sync),
    /// Transfer syntaxes we accept (unpadded). The first one the peer proposes, in its own
    /// order, is chosen.
    pub transfer_syntaxes: &'a [&'a str],
    /// Abstract syntaxes negotiated with Implicit or Explicit VR Little Endian only (of
    /// `transfer_syntaxes`): the DIMSE-N services, whose small data sets the node reads with
    /// dicom-object and which gain nothing from compression or deflating.
    pub native_le_only: &'a (dyn Fn(&str) -> bool + Sync),
    /// AE title policy: `Err` with the reason to reject, after the called/calling titles
    /// (trimmed).
    pub access: &'a (dyn Fn(&str, &str) -> Result<(), AssociationRJServiceUserReason> + Sync),
    /// SOP classes on which a requestor's proposal of the SCP role is accepted (storage
    /// classes, for C-GET). Other role proposals get no reply item: the default roles stand.
    pub scp_role: &'a (dyn Fn(&str) -> bool + Sync),
    /// SOP classes whose extended negotiation (PS3.7 D.3.3.5) is answered with every
    /// option declined: the Q/R classes, for which the node offers neither relational
    /// queries or retrieval nor combined date-time, fuzzy or time zone matching.
    /// PS3.7 D.3.3.5 lets the acceptor omit the reply with the same meaning; the node
    /// answers with zeros instead, so that the refusal is visible in a peer's negotiation
    /// log rather than left to inference.
    pub decline_extended: &'a (dyn Fn(&str) -> bool + Sync),
}

fn unpad(s: &str) -> &str {
    s.trim_matches(['\0', ' '])
}

/// An A-ASSOCIATE-RJ PDU.
pub fn reject(result: AssociationRJResult, source: AssociationRJSource) -> Pdu {
    Pdu::AssociationRJ(AssociationRJ { result, source })
}

/// A-ASSOCIATE-RJ transient, service-provider (presentation), "local limit exceeded".
pub fn reject_local_limit() -> Pdu {
    reject(
        AssociationRJResult::Transient,
        AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    )
}

/// A-ASSOCIATE-RJ transient, service-provider (presentation), "temporary congestion".
pub fn reject_congestion() -> Pdu {
    reject(
        AssociationRJResult::Transient,
        AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
        ),
    )
}

/// A-ABORT from the service provider.
pub fn abort(reason: AbortRQServiceProviderReason) -> Pdu {
    Pdu::AbortRQ {
        source: dicom_ul::pdu::AbortRQSource::ServiceProvider(reason),
    }
}

/// Decides on a request (PS3.8 7.1.1, 9.3.2).
pub fn negotiate(rq: AssociationRQ, terms: &Terms<'_>) -> Decision {
    // PS3.8 9.3.2: "A receiver of this PDU implementing only this version of the DICOM UL
    // protocol shall only test that bit 0 is set."
    if rq.protocol_version & 1 == 0 {
        return Decision::Reject {
            rj: reject(
                AssociationRJResult::Permanent,
                AssociationRJSource::ServiceProviderASCE(
                    AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
                ),
            ),
            why: format!(
                "protocol version {:#06x} does not include version 1",
                rq.protocol_version
            ),
        };
    }
    if unpad(&rq.application_context_name) != APPLICATION_CONTEXT {
        return Decision::Reject {
            rj: reject(
                AssociationRJResult::Permanent,
                AssociationRJSource::ServiceUser(
                    AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
                ),
            ),
            why: format!(
                "application context name {} is not the DICOM one",
                super::Printable(&rq.application_context_name)
            ),
        };
    }
    let calling_ae = rq.calling_ae_title.trim().to_string();
    let called_ae = rq.called_ae_title.trim().to_string();
    if let Err(reason) = (terms.access)(&called_ae, &calling_ae) {
        let why = format!("{reason}");
        return Decision::Reject {
            rj: reject(
                AssociationRJResult::Permanent,
                AssociationRJSource::ServiceUser(reason),
            ),
            why,
        };
    }
    let mut peer_max_pdu = u32::MAX;
    for item in &rq.user_variables {
        if let UserVariableItem::MaxLength(len) = item {
            // 0 means "no limit" (PS3.8 D.1).
            peer_max_pdu = if *len == 0 { u32::MAX } else { *len };
        }
    }
    let mut contexts = Vec::new();
    let mut refused = Vec::new();
    let mut results = Vec::with_capacity(rq.presentation_contexts.len());
    for pc in rq.presentation_contexts {
        let abstract_syntax = unpad(&pc.abstract_syntax).to_string();
        let chosen = if (terms.abstract_syntax)(&abstract_syntax) {
            let native_only = (terms.native_le_only)(&abstract_syntax);
            pc.transfer_syntaxes
                .iter()
                .map(|ts| unpad(ts))
                .find(|ts| {
                    terms.transfer_syntaxes.contains(ts)
                        && (!native_only || super::NATIVE_LE_SYNTAXES.contains(ts))
                })
                .map(str::to_string)
                .ok_or(PresentationContextResultReason::TransferSyntaxesNotSupported)
        } else {
            Err(PresentationContextResultReason::AbstractSyntaxNotSupported)
        };
        match chosen {
            Ok(ts) => {
                results.push(PresentationContextResult {
                    id: pc.id,
                    reason: PresentationContextResultReason::Acceptance,
                    transfer_syntax: ts.clone(),
                });
                contexts.push(Context {
                    id: pc.id,
                    abstract_syntax,
                    transfer_syntax: ts,
                });
            }
            Err(reason) => {
                // PS3.8 9.3.3.2: the transfer syntax sub-item is not significant here.
                results.push(PresentationContextResult {
                    id: pc.id,
                    reason: reason.clone(),
                    transfer_syntax: super::IMPLICIT_VR_LE.to_string(),
                });
                refused.push(Refused {
                    abstract_syntax,
                    reason,
                });
            }
        }
    }
    let accepted = |uid: &str| contexts.iter().any(|c: &Context| c.abstract_syntax == uid);
    let mut scp_role = Vec::new();
    let mut replies = Vec::new();
    for item in &rq.user_variables {
        match item {
            UserVariableItem::ScuScpRoleSelectionSubItem(uid, roles) => {
                let uid = unpad(uid);
                if roles.scp
                    && accepted(uid)
                    && (terms.scp_role)(uid)
                    && !scp_role.iter().any(|u| u == uid)
                {
                    scp_role.push(uid.to_string());
                    replies.push(UserVariableItem::ScuScpRoleSelectionSubItem(
                        uid.to_string(),
                        dicom_ul::pdu::RequestorRoles {
                            scu: roles.scu,
                            scp: true,
                        },
                    ));
                }
            }
            UserVariableItem::SopClassExtendedNegotiationSubItem(uid, info) => {
                let uid = unpad(uid);
                if accepted(uid) && (terms.decline_extended)(uid) {
                    replies.push(UserVariableItem::SopClassExtendedNegotiationSubItem(
                        uid.to_string(),
                        vec![0; info.len().min(16)],
                    ));
                }
            }
            _ => {}
        }
    }
    let mut user_variables = vec![
        UserVariableItem::MaxLength(terms.max_pdu),
        UserVariableItem::ImplementationClassUID(
            crate::store::IMPLEMENTATION_CLASS_UID.to_string(),
        ),
        UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION_NAME.to_string()),
    ];
    user_variables.extend(replies);
    let ac = Pdu::AssociationAC(AssociationAC {
        protocol_version: 1,
        calling_ae_title: rq.calling_ae_title,
        called_ae_title: rq.called_ae_title,
        application_context_name: APPLICATION_CONTEXT.to_string(),
        presentation_contexts: results,
        user_variables,
    });
    Decision::Accept(Agreed {
        calling_ae,
        called_ae,
        peer_max_pdu,
        contexts,
        refused,
        scp_role,
        ac,
    })
}

/// Encodes and sends one PDU.
pub async fn send<S: AsyncWrite + Unpin>(socket: &mut S, pdu: &Pdu) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(256);
    dicom_ul::write_pdu(&mut buf, pdu).map_err(std::io::Error::other)?;
    socket.write_all(&buf).await?;
    socket.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::PresentationContextProposed;

    fn rq(version: u16, context: &str) -> AssociationRQ {
        AssociationRQ {
            protocol_version: version,
            calling_ae_title: "SCANNER".into(),
            called_ae_title: "M3DNODE".into(),
            application_context_name: context.into(),
            presentation_contexts: vec![
                PresentationContextProposed {
                    id: 1,
                    abstract_syntax: "1.2.840.10008.5.1.4.1.1.4\0".into(),
                    transfer_syntaxes: vec![
                        "1.2.840.10008.1.2.4.100".into(),
                        "1.2.840.10008.1.2\0".into(),
                    ],
                },
                PresentationContextProposed {
                    id: 3,
                    abstract_syntax: "1.2.840.10008.5.1.4.1.2.2.1".into(),
                    transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
                },
            ],
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        }
    }

    fn terms<'a>(
        access: &'a (dyn Fn(&str, &str) -> Result<(), AssociationRJServiceUserReason> + Sync),
    ) -> Terms<'a> {
        Terms {
            max_pdu: 65536,
            abstract_syntax: &|uid| uid == "1.2.840.10008.5.1.4.1.1.4",
            transfer_syntaxes: &["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"],
            native_le_only: &|_| false,
            access,
            scp_role: &|uid| uid == "1.2.840.10008.5.1.4.1.1.4",
            decline_extended: &|uid| uid == "1.2.840.10008.5.1.4.1.2.2.1",
        }
    }

    #[test]
    fn tests_only_bit_0_of_the_version_and_tolerates_padding() {
        let ok = |_: &str, _: &str| Ok(());
        for (version, context) in [(1, APPLICATION_CONTEXT), (3, "1.2.840.10008.3.1.1.1\0")] {
            let Decision::Accept(a) = negotiate(rq(version, context), &terms(&ok)) else {
                panic!("version {version} refused")
            };
            assert_eq!(a.calling_ae, "SCANNER");
            assert_eq!(a.peer_max_pdu, 16384);
            assert_eq!(
                a.contexts,
                vec![Context {
                    id: 1,
                    abstract_syntax: "1.2.840.10008.5.1.4.1.1.4".into(),
                    transfer_syntax: "1.2.840.10008.1.2".into()
                }]
            );
            assert_eq!(a.refused.len(), 1);
            let Pdu::AssociationAC(ac) = a.ac else {
                panic!()
            };
            assert!(
                ac.user_variables
                    .contains(&UserVariableItem::ImplementationClassUID(
                        crate::store::IMPLEMENTATION_CLASS_UID.into()
                    ))
            );
        }
        assert!(matches!(
            negotiate(rq(2, APPLICATION_CONTEXT), &terms(&ok)),
            Decision::Reject { .. }
        ));
        assert!(matches!(
            negotiate(rq(1, "1.2.3"), &terms(&ok)),
            Decision::Reject { .. }
        ));
        let deny =
            |_: &str, _: &str| Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        assert!(matches!(
            negotiate(rq(1, APPLICATION_CONTEXT), &terms(&deny)),
            Decision::Reject { .. }
        ));
        assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16);
    }

    #[test]
    fn scp_role_is_accepted_for_storage_and_extended_negotiation_declined() {
        use dicom_ul::pdu::RequestorRoles;
        let ok = |_: &str, _: &str| Ok(());
        let mut t = terms(&ok);
        let accepts =
            |uid: &str| uid == "1.2.840.10008.5.1.4.1.1.4" || uid == "1.2.840.10008.5.1.4.1.2.2.1";
        t.abstract_syntax = &accepts;
        let mut request = rq(1, APPLICATION_CONTEXT);
        request.user_variables.extend([
            UserVariableItem::ScuScpRoleSelectionSubItem(
                "1.2.840.10008.5.1.4.1.1.4".into(),
                RequestorRoles {
                    scu: false,
                    scp: true,
                },
            ),
            // A role for a class it did not propose gets no reply.
            UserVariableItem::ScuScpRoleSelectionSubItem(
                "1.2.840.10008.5.1.4.1.1.2".into(),
                RequestorRoles {
                    scu: false,
                    scp: true,
                },
            ),
            UserVariableItem::SopClassExtendedNegotiationSubItem(
                "1.2.840.10008.5.1.4.1.2.2.1".into(),
                vec![1, 1, 1],
            ),
        ]);
        let Decision::Accept(a) = negotiate(request, &t) else {
            panic!("refused")
        };
        assert_eq!(a.scp_role, vec!["1.2.840.10008.5.1.4.1.1.4".to_string()]);
        let Pdu::AssociationAC(ac) = a.ac else {
            panic!()
        };
        assert!(
            ac.user_variables
                .contains(&UserVariableItem::ScuScpRoleSelectionSubItem(
                    "1.2.840.10008.5.1.4.1.1.4".into(),
                    RequestorRoles {
                        scu: false,
                        scp: true
                    }
                ))
        );
        assert!(!ac.user_variables.iter().any(|v| matches!(v,
            UserVariableItem::ScuScpRoleSelectionSubItem(uid, _) if uid == "1.2.840.10008.5.1.4.1.1.2")));
        assert!(
            ac.user_variables
                .contains(&UserVariableItem::SopClassExtendedNegotiationSubItem(
                    "1.2.840.10008.5.1.4.1.2.2.1".into(),
                    vec![0, 0, 0]
                ))
        );
        // The AC round-trips through dicom-ul's writer and reader.
        let mut wire = Vec::new();
        dicom_ul::write_pdu(&mut wire, &Pdu::AssociationAC(ac.clone())).unwrap();
        let back = dicom_ul::read_pdu(wire.as_slice(), 1 << 20, true).unwrap();
        assert_eq!(back, Some(Pdu::AssociationAC(ac)));
    }

    #[test]
    fn commitment_and_mpps_are_accepted_with_little_endian_only() {
        use super::super::{MPPS, STORAGE_COMMITMENT_PUSH};
        let ok = |_: &str, _: &str| Ok(());
        let t = Terms {
            max_pdu: 65536,
            abstract_syntax: &super::super::served_by_scp,
            transfer_syntaxes: super::super::ACCEPTED_TRANSFER_SYNTAXES,
            native_le_only: &super::super::is_normalized_service,
            access: &ok,
            scp_role: &super::super::is_storage_sop_class,
            decline_extended: &|uid| crate::query::sop_class(uid).is_some(),
        };
        let mut request = rq(1, APPLICATION_CONTEXT);
        request.presentation_contexts = vec![
            PresentationContextProposed {
                id: 1,
                abstract_syntax: format!("{STORAGE_COMMITMENT_PUSH}\0"),
                // Deflated first: accepted for storage, not for a DIMSE-N service.
                transfer_syntaxes: vec![
                    "1.2.840.10008.1.2.1.99".into(),
                    "1.2.840.10008.1.2.1\0".into(),
                ],
            },
            PresentationContextProposed {
                id: 3,
                abstract_syntax: MPPS.into(),
                transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
            },
            PresentationContextProposed {
                id: 5,
                abstract_syntax: MPPS.into(),
                transfer_syntaxes: vec!["1.2.840.10008.1.2.4.50".into()],
            },
            PresentationContextProposed {
                id: 7,
                // Storage Commitment Pull Model (retired): not served.
                abstract_syntax: "1.2.840.10008.1.20.2".into(),
                transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
            },
        ];
        let Decision::Accept(a) = negotiate(request, &t) else {
            panic!("refused")
        };
        assert_eq!(
            a.contexts,
            vec![
                Context {
                    id: 1,
                    abstract_syntax: STORAGE_COMMITMENT_PUSH.into(),
                    transfer_syntax: "1.2.840.10008.1.2.1".into()
                },
                Context {
                    id: 3,
                    abstract_syntax: MPPS.into(),
                    transfer_syntax: "1.2.840.10008.1.2".into()
                },
            ]
        );
        assert_eq!(a.refused.len(), 2);
        assert_eq!(
            a.refused[0].reason,
            PresentationContextResultReason::TransferSyntaxesNotSupported
        );
        assert_eq!(
            a.refused[1].reason,
            PresentationContextResultReason::AbstractSyntaxNotSupported
        );
    }

    #[tokio::test]
    async fn reads_exactly_the_request_and_leaves_the_rest() {
        let mut wire = Vec::new();
        dicom_ul::write_pdu(&mut wire, &Pdu::AssociationRQ(rq(1, APPLICATION_CONTEXT))).unwrap();
        wire.extend_from_slice(b"\x04\x00\x00\x00\x00\x02ab");
        let mut stream = wire.as_slice();
        let got = read_request(&mut stream, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(got.presentation_contexts.len(), 2);
        assert_eq!(stream, b"\x04\x00\x00\x00\x00\x02ab");

        let mut stream: &[u8] = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00";
        let e = read_request(&mut stream, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(e, RequestError::NotARequest(5)) && e.answer_with_abort(),
            "{e}"
        );
        let mut stream: &[u8] = b"\x01\x00\xff\xff\xff\xff";
        assert!(matches!(
            read_request(&mut stream, Duration::from_secs(1)).await,
            Err(RequestError::TooLong(_))
        ));
        let mut stream: &[u8] = b"\x01\x00\x00\x00\x00\x08\x00\x01\x00\x00junk";
        assert!(matches!(
            read_request(&mut stream, Duration::from_secs(1)).await,
            Err(RequestError::Malformed(8))
        ));
    }
}
