//! The one error type of the crate.
//!
//! Decoders separate *incomplete* from *invalid* input: "need more bytes" is `Ok(None)`, never an
//! error; every [`ProtocolError`] except [`ProtocolError::Truncated`] means the bytes can never become a
//! valid message, so the peer must be dropped. `Truncated` is what a stream that ended in the middle of
//! a message gets ([`crate::startup::check_truncated`]).

use crate::response::SqlState;
use crate::startup::MAX_STARTUP_PACKET_LEN;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The stream ended `have` bytes into a packet of `need` bytes (the peer went away mid-message).
    #[error("connection closed after {have} of {need} bytes of a {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes received.
        have: usize,
        /// Bytes the packet announced (or the 4 of a length field when even that was cut).
        need: usize,
    },
    /// A startup-phase packet announced fewer than 8 bytes (length field plus request code).
    #[error("invalid length of startup packet: {len} bytes")]
    InvalidStartupLength {
        /// The announced length in bytes, length field included.
        len: u32,
    },
    /// A startup-phase packet announced more than PostgreSQL's limit of
    /// [`MAX_STARTUP_PACKET_LEN`] bytes. (A TLS ClientHello sent without an SSLRequest lands here too:
    /// its first bytes read as a length of about 369 MB.)
    #[error("startup packet of {len} bytes exceeds the limit of {MAX_STARTUP_PACKET_LEN} bytes")]
    StartupPacketTooLarge {
        /// The announced length in bytes.
        len: u32,
    },
    /// A StartupMessage asked for a protocol major version other than 3.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.x")]
    UnsupportedProtocol {
        /// Requested major version.
        major: u16,
        /// Requested minor version.
        minor: u16,
    },
    /// An SSLRequest, GSSENCRequest or CancelRequest whose length does not fit its fixed layout.
    #[error("invalid length {len} of {request}")]
    InvalidRequestLength {
        /// `SSLRequest`, `GSSENCRequest` or `CancelRequest`.
        request: &'static str,
        /// The announced length in bytes.
        len: u32,
    },
    /// A StartupMessage whose parameter list is not `name\0value\0 ... \0`.
    #[error("invalid startup packet layout: {0}")]
    InvalidStartupLayout(&'static str),
    /// A client sent the same encryption request twice (PostgreSQL answers each kind once).
    #[error("duplicate {0} in startup phase")]
    DuplicateRequest(&'static str),
    /// A backend message announced a length below 4 or above PostgreSQL's 1 GB limit.
    #[error("invalid length {len} of backend message {tag:?}")]
    InvalidMessageLength {
        /// The message type byte, as a character.
        tag: char,
        /// The announced length in bytes (the length field itself included, the tag not).
        len: u32,
    },
    /// A message announced a length above the configured limit
    /// (`praetor.proxy.max_message_size`).
    #[error("invalid message length: message {tag:?} of {len} bytes exceeds the limit of {max} bytes (max_message_size)")]
    MessageTooLarge {
        /// The message type byte, as a character.
        tag: char,
        /// The announced length in bytes.
        len: u32,
        /// The limit in bytes.
        max: usize,
    },
    /// A message whose body does not match its type's layout.
    #[error("malformed {message}: {reason}")]
    MalformedMessage {
        /// The message type (`BackendKeyData`, `ReadyForQuery`, `ErrorResponse`).
        message: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl ProtocolError {
    /// True for input that can never decode (as opposed to [`ProtocolError::Truncated`] input).
    pub fn is_invalid(&self) -> bool {
        !matches!(self, ProtocolError::Truncated { .. })
    }

    /// The SQLSTATE PostgreSQL reports for this error when it can still answer the client:
    /// `0A000` (feature_not_supported) for an unsupported protocol version, `54000`
    /// (program_limit_exceeded) for an oversized message, `08P01` (protocol_violation) for
    /// everything else.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            ProtocolError::UnsupportedProtocol { .. } => SqlState::FEATURE_NOT_SUPPORTED,
            ProtocolError::MessageTooLarge { .. } => SqlState::PROGRAM_LIMIT_EXCEEDED,
            _ => SqlState::PROTOCOL_VIOLATION,
        }
    }
}
