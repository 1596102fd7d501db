//! Reading PDUs off an established association without copying their payload.
//!
//! dicom-ul decodes every P-DATA-TF into freshly allocated `Vec`s, which costs an allocation
//! and a copy of each fragment on top of the one from the socket. On the receive path that is
//! the product (hundreds of MB/s of pixel data going to disk) the association handler instead
//! reads each PDU into one reused buffer and hands out the presentation data values as slices
//! of it, which the store writes straight to the temp file. Association establishment and
//! everything we send stay dicom-ul's.
//!
//! Only what may arrive after A-ASSOCIATE-AC is understood here: P-DATA-TF, A-RELEASE-RQ and
//! A-ABORT. Anything else is reported as [`Frame::Unexpected`] for the handler to abort on.

use tokio::io::{AsyncRead, AsyncReadExt};

/// PDU types of PS3.8 9.3.1.
const P_DATA_TF: u8 = 0x04;
const A_RELEASE_RQ: u8 = 0x05;
const A_ABORT: u8 = 0x07;

/// Why the stream of PDUs could not be read; the association is aborted.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed in the middle of a PDU.
    #[error("reading from the peer: {0}")]
    Io(#[from] std::io::Error),
    /// A PDU longer than the maximum this node announced (PS3.8 9.3.1 lets us abort).
    #[error("PDU of {len} bytes exceeds the maximum length {max} this node announced")]
    TooLong {
        /// Announced length of the PDU.
        len: u32,
        /// Our maximum PDU length.
        max: u32,
    },
    /// A PDU whose inner structure contradicts its lengths.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// One PDU as received.
pub enum Frame<'a> {
    /// P-DATA-TF: its presentation data values, in order.
    PData(Pdvs<'a>),
    /// A-RELEASE-RQ.
    ReleaseRq,
    /// A-ABORT with its source and reason fields (PS3.8 9.3.8).
    Abort {
        /// 0 = service user, 2 = service provider.
        source: u8,
        /// Reason/diagnostic.
        reason: u8,
    },
    /// Any other PDU type, which has no place in an established association.
    Unexpected(u8),
}

/// Reads PDUs into one buffer that lives as long as the association.
///
/// Cancel-safe: [`PduReader::next`] keeps what it has read of a PDU in the reader, so a
/// caller may drop the future (a timer fired, a Q/R operation ended) and call it again
/// without losing bytes. The handler relies on it to wait for the socket and for its running
/// operation at once.
pub struct PduReader {
    buf: Vec<u8>,
    max_len: u32,
    head: [u8; 6],
    /// Bytes of `head` read so far.
    head_filled: usize,
    /// Bytes of the current PDU's body read so far.
    body_filled: usize,
}

impl PduReader {
    /// `max_len` is the maximum PDU length this node announced in its A-ASSOCIATE-AC.
    pub fn new(max_len: u32) -> PduReader {
        PduReader {
            buf: Vec::new(),
            max_len,
            head: [0; 6],
            head_filled: 0,
            body_filled: 0,
        }
    }

    /// Reads the next whole PDU.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
    ) -> Result<Frame<'_>, WireError> {
        while self.head_filled < 6 {
            let n = stream.read(&mut self.head[self.head_filled..]).await?;
            if n == 0 {
                return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.head_filled += n;
        }
        let head = self.head;
        let kind = head[0];
        let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]);
        // Release and abort PDUs are 4 bytes long; a P-DATA-TF is bounded by what we announced.
        let max = if kind == P_DATA_TF {
            self.max_len
        } else {
            1024
        };
        if len > max {
            self.head_filled = 0;
            return Err(WireError::TooLong { len, max });
        }
        let len = len as usize;
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        while self.body_filled < len {
            let n = stream.read(&mut self.buf[self.body_filled..len]).await?;
            if n == 0 {
                return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.body_filled += n;
        }
        self.head_filled = 0;
        self.body_filled = 0;
        Ok(match kind {
            P_DATA_TF => Frame::PData(Pdvs {
                rest: &self.buf[..len],
            }),
            A_RELEASE_RQ => Frame::ReleaseRq,
            A_ABORT => match self.buf[..len] {
                [_, _, source, reason, ..] => Frame::Abort { source, reason },
                _ => return Err(WireError::Malformed("A-ABORT")),
            },
            other => Frame::Unexpected(other),
        })
    }
}

/// A presentation data value (PS3.8 9.3.5.1), borrowed from the PDU buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Pdv<'a> {
    /// Presentation context ID.
    pub pc_id: u8,
    /// Command (true) or data set (false) fragment.
    pub is_command: bool,
    /// Last fragment of the command or data set.
    pub is_last: bool,
    /// The fragment.
    pub data: &'a [u8],
}

/// The PDVs of one P-DATA-TF.
pub struct Pdvs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Pdvs<'a> {
    type Item = Result<Pdv<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = match *self.rest {
            [a, b, c, d, pc_id, header, ..] => {
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len < 2 || len > self.rest.len() - 4 {
                    Err(WireError::Malformed(
                        "P-DATA-TF: item length beyond the PDU",
                    ))
                } else {
                    let data = &self.rest[6..4 + len];
                    self.rest = &self.rest[4 + len..];
                    Ok(Pdv {
                        pc_id,
                        is_command: header & 1 != 0,
                        is_last: header & 2 != 0,
                        data,
                    })
                }
            }
            _ => Err(WireError::Malformed("P-DATA-TF: truncated item header")),
        };
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![kind, 0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn item(pc: u8, header: u8, data: &[u8]) -> Vec<u8> {
        let mut v = ((data.len() + 2) as u32).to_be_bytes().to_vec();
        v.push(pc);
        v.push(header);
        v.extend_from_slice(data);
        v
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn reads_pdvs_release_and_abort() {
        let mut body = item(1, 0b11, b"cmd!");
        body.extend(item(3, 0b00, b"data"));
        body.extend(item(3, 0b10, b"end"));
        let mut wire = pdu(P_DATA_TF, &body);
        wire.extend(pdu(A_RELEASE_RQ, &[0; 4]));
        wire.extend(pdu(A_ABORT, &[0, 0, 2, 6]));
        wire.extend(pdu(0x01, &[0; 10]));
        let mut stream = wire.as_slice();
        let mut r = PduReader::new(1000);
        let Frame::PData(pdvs) = r.next(&mut stream).await.unwrap() else {
            panic!("not P-DATA")
        };
        let got: Vec<Pdv> = pdvs.map(Result::unwrap).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            Pdv {
                pc_id: 1,
                is_command: true,
                is_last: true,
                data: b"cmd!"
            }
        );
        assert!(!got[1].is_command && !got[1].is_last && got[1].data == b"data");
        assert!(got[2].is_last && got[2].pc_id == 3 && got[2].data == b"end");
        assert!(matches!(r.next(&mut stream).await, Ok(Frame::ReleaseRq)));
        assert!(matches!(
            r.next(&mut stream).await,
            Ok(Frame::Abort {
                source: 2,
                reason: 6
            })
        ));
        assert!(matches!(
            r.next(&mut stream).await,
            Ok(Frame::Unexpected(1))
        ));
        assert!(matches!(r.next(&mut stream).await, Err(WireError::Io(_))));
    }

    /// A PDU arriving in pieces, with the read dropped between them (as the handler does when
    /// its operation ends first), is still read whole.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_dropped_read_resumes_where_it_stopped() {
        use tokio::io::AsyncWriteExt;
        let wire = pdu(P_DATA_TF, &item(1, 0b11, b"command!"));
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let mut r = PduReader::new(1000);
        for piece in [&wire[..3], &wire[3..9], &wire[9..]] {
            tx.write_all(piece).await.unwrap();
            let got =
                tokio::time::timeout(std::time::Duration::from_millis(50), r.next(&mut rx)).await;
            if let Ok(frame) = got {
                let Frame::PData(mut pdvs) = frame.unwrap() else {
                    panic!("not P-DATA")
                };
                assert_eq!(pdvs.next().unwrap().unwrap().data, b"command!");
                return;
            }
        }
        panic!("the PDU was never completed");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn refuses_oversized_and_malformed_pdus() {
        let wire = pdu(P_DATA_TF, &[0; 2000]);
        let mut r = PduReader::new(1000);
        assert!(matches!(
            r.next(&mut wire.as_slice()).await,
            Err(WireError::TooLong {
                len: 2000,
                max: 1000
            })
        ));
        // An item that claims more bytes than the PDU holds.
        let mut body = item(1, 0, b"abcd");
        body[3] = 50;
        let wire = pdu(P_DATA_TF, &body);
        let Frame::PData(mut pdvs) = r.next(&mut wire.as_slice()).await.unwrap() else {
            panic!("not P-DATA")
        };
        assert!(matches!(pdvs.next(), Some(Err(WireError::Malformed(_)))));
        assert!(pdvs.next().is_none());
        // A truncated body is an I/O error (unexpected end), not a hang.
        let mut wire = pdu(P_DATA_TF, &item(1, 0, b"abcd"));
        wire.truncate(wire.len() - 2);
        assert!(matches!(
            r.next(&mut wire.as_slice()).await,
            Err(WireError::Io(_))
        ));
    }
}
