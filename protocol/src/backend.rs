//! Messages from the server: framing, and the three the proxy decodes.
//!
//! Every backend message is framed the same way:
//!
//! ```text
//! tag: u8 | length: u32 BE (body + 4; at least 4) | body: length - 4 bytes
//! ```
//!
//! [`FrameHeader::peek`] reads a frame's header in place (for code that forwards a whole read buffer
//! and only needs to know where messages start), [`split_frame`] cuts a complete frame off a buffer
//! without copying. Of the bodies, the proxy decodes only BackendKeyData (to route cancel requests,
//! [`CancelKey::from_backend_key_data`]), ReadyForQuery (end of the startup phase,
//! [`TxStatus::from_ready_for_query`]) and ErrorResponse ([`ErrorFields::parse`]).

use bytes::{Bytes, BytesMut};
use pgwire::messages::response::TransactionStatus;

use crate::error::ProtocolError;
use crate::startup::CancelKey;

/// Tag of Authentication* messages (`R`).
pub const AUTHENTICATION: u8 = b'R';
/// Tag of BackendKeyData (`K`).
pub const BACKEND_KEY_DATA: u8 = b'K';
/// Tag of ReadyForQuery (`Z`).
pub const READY_FOR_QUERY: u8 = b'Z';
/// Tag of ErrorResponse (`E`).
pub const ERROR_RESPONSE: u8 = b'E';
/// Tag of NoticeResponse (`N`).
pub const NOTICE_RESPONSE: u8 = b'N';
/// Tag of ParameterStatus (`S`).
pub const PARAMETER_STATUS: u8 = b'S';
/// Tag of NegotiateProtocolVersion (`v`).
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';

/// The largest length field a backend message can carry: PostgreSQL never allocates more than
/// `MaxAllocSize` (1 GB - 1) for one message.
pub const MAX_BACKEND_MESSAGE_LEN: usize = 0x3fff_ffff;

/// The header of one backend message: its tag and where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message type byte.
    pub tag: u8,
    /// The whole frame's size in bytes: tag (1) + length field (4) + body.
    pub frame_len: usize,
}

impl FrameHeader {
    /// Reads the header at the front of `buf` without consuming anything.
    ///
    /// `Ok(None)` when fewer than 5 bytes are there; an error when the length field is below 4 or
    /// above [`MAX_BACKEND_MESSAGE_LEN`]. The frame itself may still be incomplete: compare
    /// [`FrameHeader::frame_len`] with `buf.len()`.
    pub fn peek(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len < 4 || len as usize > MAX_BACKEND_MESSAGE_LEN {
            return Err(ProtocolError::InvalidMessageLength {
                tag: buf[0] as char,
                len,
            });
        }
        Ok(Some(FrameHeader {
            tag: buf[0],
            frame_len: 1 + len as usize,
        }))
    }

    /// The body of this frame within `buf` (which starts with the frame), when it is complete.
    pub fn body<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        buf.get(5..self.frame_len)
    }
}

/// One complete backend message, sharing memory with the buffer it was cut from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendFrame {
    /// The message type byte.
    pub tag: u8,
    /// The whole frame: tag, length field, body.
    pub bytes: Bytes,
}

impl BackendFrame {
    /// The body (after the 5-byte header).
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

/// Cuts the first complete message off `buf` without copying it.
///
/// `Ok(None)`: incomplete, `buf` unchanged. `Err`: an impossible length field, `buf` unchanged.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<BackendFrame>, ProtocolError> {
    match FrameHeader::peek(buf)? {
        Some(h) if buf.len() >= h.frame_len => Ok(Some(BackendFrame {
            tag: h.tag,
            bytes: buf.split_to(h.frame_len).freeze(),
        })),
        _ => Ok(None),
    }
}

/// The transaction status a ReadyForQuery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (queries are rejected until it ends).
    Failed,
}

impl TxStatus {
    /// Decodes a ReadyForQuery body (exactly one status byte).
    pub fn from_ready_for_query(body: &[u8]) -> Result<TxStatus, ProtocolError> {
        let [status] = body else {
            return Err(ProtocolError::MalformedMessage {
                message: "ReadyForQuery",
                reason: "body is not exactly one byte",
            });
        };
        match TransactionStatus::try_from(*status) {
            Ok(TransactionStatus::Idle) => Ok(TxStatus::Idle),
            Ok(TransactionStatus::Transaction) => Ok(TxStatus::InTransaction),
            Ok(TransactionStatus::Error) => Ok(TxStatus::Failed),
            Err(_) => Err(ProtocolError::MalformedMessage {
                message: "ReadyForQuery",
                reason: "status is not I, T or E",
            }),
        }
    }
}

impl CancelKey {
    /// Decodes a BackendKeyData body: `pid: i32 BE | secret: 4..=256 bytes` (4 with protocol 3.0).
    pub fn from_backend_key_data(body: &[u8]) -> Result<CancelKey, ProtocolError> {
        if body.len() < 8 {
            return Err(ProtocolError::MalformedMessage {
                message: "BackendKeyData",
                reason: "shorter than pid and a 4-byte secret",
            });
        }
        let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        CancelKey::new(pid, Bytes::copy_from_slice(&body[4..])).ok_or(
            ProtocolError::MalformedMessage {
                message: "BackendKeyData",
                reason: "secret longer than 256 bytes",
            },
        )
    }
}

/// The fields of an ErrorResponse or NoticeResponse: `(code, value)` pairs such as `(b'S', "FATAL")`,
/// `(b'C', "3D000")`, `(b'M', "database \"x\" does not exist")`, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    fields: Vec<(u8, String)>,
}

impl ErrorFields {
    /// Decodes an ErrorResponse/NoticeResponse body: `(code: u8, value\0)*` then a `\0`. Values are
    /// decoded as UTF-8 with invalid sequences replaced.
    pub fn parse(mut body: &[u8]) -> Result<ErrorFields, ProtocolError> {
        let mut fields = Vec::new();
        loop {
            match body {
                [] => {
                    return Err(ProtocolError::MalformedMessage {
                        message: "ErrorResponse",
                        reason: "missing terminator",
                    })
                }
                [0] => return Ok(ErrorFields { fields }),
                [0, ..] => {
                    return Err(ProtocolError::MalformedMessage {
                        message: "ErrorResponse",
                        reason: "bytes after the terminator",
                    })
                }
                [code, rest @ ..] => {
                    let end = rest.iter().position(|&b| b == 0).ok_or(
                        ProtocolError::MalformedMessage {
                            message: "ErrorResponse",
                            reason: "field value not terminated",
                        },
                    )?;
                    fields.push((*code, String::from_utf8_lossy(&rest[..end]).into_owned()));
                    body = &rest[end + 1..];
                }
            }
        }
    }

    /// The value of field `code` (`b'C'`, `b'M'`, ...), if present.
    pub fn get(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    /// `S`: the (possibly localized) severity, e.g. `FATAL`.
    pub fn severity(&self) -> Option<&str> {
        self.get(b'S')
    }

    /// `C`: the SQLSTATE, e.g. `57014`.
    pub fn code(&self) -> Option<&str> {
        self.get(b'C')
    }

    /// `M`: the primary message.
    pub fn message(&self) -> Option<&str> {
        self.get(b'M')
    }

    /// All fields in the order sent.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &str)> {
        self.fields.iter().map(|(c, v)| (*c, v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces;

    /// Frames `stream` fed in two chunks split at every offset, and one byte at a time; checks every
    /// way gives the same frames, and returns them.
    fn frames_split_everywhere(stream: &[u8]) -> Vec<BackendFrame> {
        let collect = |chunks: &[&[u8]]| {
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in chunks {
                buf.extend_from_slice(chunk);
                while let Some(f) = split_frame(&mut buf).expect("valid stream") {
                    out.push(f);
                }
            }
            assert!(buf.is_empty(), "no bytes left over");
            out
        };
        let whole = collect(&[stream]);
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(collect(&[a, b]), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(collect(&bytes), whole, "one byte at a time");
        // Peeking in place finds the same boundaries.
        let mut at = 0;
        for f in &whole {
            let h = FrameHeader::peek(&stream[at..]).unwrap().unwrap();
            assert_eq!((h.tag, h.frame_len), (f.tag, f.bytes.len()));
            assert_eq!(h.body(&stream[at..]), Some(f.body()));
            at += h.frame_len;
        }
        whole
    }

    #[test]
    fn trust_startup_response_frames_into_auth_ok_parameters_key_data_and_ready() {
        let stream = traces::bytes(traces::TRUST_STARTUP_RESPONSE);
        let frames = frames_split_everywhere(&stream);
        let tags: Vec<u8> = frames.iter().map(|f| f.tag).collect();
        assert_eq!(tags[0], AUTHENTICATION);
        assert!(tags[1..tags.len() - 2]
            .iter()
            .all(|t| *t == PARAMETER_STATUS));
        assert_eq!(
            &tags[tags.len() - 2..],
            &[BACKEND_KEY_DATA, READY_FOR_QUERY]
        );
        let key = CancelKey::from_backend_key_data(frames[frames.len() - 2].body()).unwrap();
        assert_eq!(key.secret.len(), 4);
        assert_eq!(
            TxStatus::from_ready_for_query(frames[frames.len() - 1].body()),
            Ok(TxStatus::Idle)
        );
    }

    #[test]
    fn recorded_backend_key_data_matches_the_recorded_cancel_request() {
        let stream = traces::bytes(traces::CANCELLED_SESSION_STARTUP_RESPONSE);
        let frames = frames_split_everywhere(&stream);
        let kd = frames.iter().find(|f| f.tag == BACKEND_KEY_DATA).unwrap();
        let key = CancelKey::from_backend_key_data(kd.body()).unwrap();
        let mut cancel = BytesMut::from(&traces::bytes(traces::PSQL_CANCEL_REQUEST)[..]);
        let Some(crate::StartupPacket::CancelRequest(requested)) =
            crate::decode_startup_packet(&mut cancel).unwrap()
        else {
            panic!("not a cancel request")
        };
        assert_eq!(key, requested);
    }

    #[test]
    fn missing_database_error_parses_with_severity_code_and_message() {
        let stream = traces::bytes(traces::NO_SUCH_DB_RESPONSE);
        let frames = frames_split_everywhere(&stream);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].tag, ERROR_RESPONSE);
        let e = ErrorFields::parse(frames[1].body()).unwrap();
        assert_eq!(e.severity(), Some("FATAL"));
        assert_eq!(e.code(), Some("3D000"));
        assert_eq!(e.message(), Some("database \"nosuchdb\" does not exist"));
        assert!(e.iter().any(|(c, v)| c == b'R' && v == "InitPostgres"));
    }

    #[test]
    fn query_canceled_error_and_ready_for_query_parse() {
        let stream = traces::bytes(traces::QUERY_CANCELED_RESPONSE);
        let frames = frames_split_everywhere(&stream);
        let e = frames.iter().find(|f| f.tag == ERROR_RESPONSE).unwrap();
        let e = ErrorFields::parse(e.body()).unwrap();
        assert_eq!(e.code(), Some("57014"));
        assert_eq!(e.message(), Some("canceling statement due to user request"));
    }

    #[test]
    fn md5_and_scram_exchanges_frame() {
        for hex in [
            traces::MD5_CHALLENGE,
            traces::MD5_STARTUP_RESPONSE,
            traces::SCRAM_SASL,
            traces::SCRAM_FINAL_RESPONSE,
        ] {
            let frames = frames_split_everywhere(&traces::bytes(hex));
            assert_eq!(frames[0].tag, AUTHENTICATION);
        }
        let last = frames_split_everywhere(&traces::bytes(traces::SCRAM_FINAL_RESPONSE));
        assert_eq!(last.last().map(|f| f.tag), Some(READY_FOR_QUERY));
    }

    #[test]
    fn impossible_lengths_are_invalid() {
        for len in [0u32, 3, 0x4000_0000, u32::MAX] {
            let mut buf = BytesMut::from(&[b'Z'][..]);
            buf.extend_from_slice(&len.to_be_bytes());
            assert_eq!(
                split_frame(&mut buf),
                Err(ProtocolError::InvalidMessageLength { tag: 'Z', len })
            );
            assert_eq!(buf.len(), 5);
        }
        let mut empty_body = BytesMut::from(&[b'I', 0, 0, 0, 4][..]);
        let f = split_frame(&mut empty_body).unwrap().unwrap();
        assert!(f.body().is_empty());
    }

    #[test]
    fn malformed_bodies_are_invalid() {
        assert!(TxStatus::from_ready_for_query(b"").is_err());
        assert!(TxStatus::from_ready_for_query(b"II").is_err());
        assert!(TxStatus::from_ready_for_query(b"X").is_err());
        assert_eq!(
            TxStatus::from_ready_for_query(b"T"),
            Ok(TxStatus::InTransaction)
        );
        assert_eq!(TxStatus::from_ready_for_query(b"E"), Ok(TxStatus::Failed));
        assert!(CancelKey::from_backend_key_data(&[0; 7]).is_err());
        assert!(CancelKey::from_backend_key_data(&[0; 4 + 257]).is_err());
        assert!(CancelKey::from_backend_key_data(&[0; 4 + 256]).is_ok());
        assert!(ErrorFields::parse(b"").is_err());
        assert!(ErrorFields::parse(b"SFATAL").is_err());
        assert!(ErrorFields::parse(b"SFATAL\0").is_err());
        assert!(ErrorFields::parse(b"SFATAL\0\0x").is_err());
        assert_eq!(ErrorFields::parse(b"\0").unwrap().iter().count(), 0);
    }

    #[test]
    fn random_streams_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5_000 {
            let len = (next() % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| if (1..4).contains(&i) { 0 } else { next() as u8 })
                .collect();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(f)) = split_frame(&mut buf) {
                let _ = TxStatus::from_ready_for_query(f.body());
                let _ = CancelKey::from_backend_key_data(f.body());
                let _ = ErrorFields::parse(f.body());
            }
        }
    }
}
