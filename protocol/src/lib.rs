//! Sans-I/O PostgreSQL wire protocol handling for the Praetor proxy.
//!
//! Bytes in, events out, and the few messages the proxy writes itself; no sockets, no runtime, no clock,
//! so everything here is tested on recorded byte traces fed split at every offset. The proxy's async
//! tasks read into a `BytesMut`, call these decoders, and act.
//!
//! - [`startup`]: a client's first packets (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage)
//!   with PostgreSQL's 10000-byte limit, and [`StartupPhase`], which allows each encryption request once.
//! - [`backend`]: framing of server messages ([`FrameHeader::peek`] in place, [`split_frame`] without
//!   copying) and decoding of BackendKeyData ([`CancelKey`]), ReadyForQuery ([`TxStatus`]) and
//!   ErrorResponse ([`ErrorFields`]).
//! - [`frontend`]: framing of client messages with a size limit ([`FrontendHeader::peek`]), decoding of
//!   Query/Parse/Bind/Describe/Close, and encoders for what the proxy writes itself (to a client it
//!   answers, to a server it authenticates to), including the removal of channel binding from a
//!   server's SASL offer.
//! - [`classify`]: where a statement may run ([`Classifier`]): a lexer for the common cases,
//!   PostgreSQL's own parser (`pg_query`) for the rest.
//! - [`auth`]: the client side of cleartext, MD5 and SCRAM-SHA-256 authentication ([`PasswordAuth`]).
//! - [`scram`]: SCRAM-SHA-256 from stored secrets: the server side towards clients ([`ScramServer`])
//!   and the client side towards servers with the keys recovered from the client's proof.
//! - [`response`]: the ErrorResponse the proxy sends when it cannot serve a client ([`error_response`]).
//! - [`unit`]: the auto port's decisions at a unit's edges: messages between units
//!   ([`unit::between_units`]) and replica replies to run again on the leader ([`unit::replica_reply`]).
//! - [`lsn`]: WAL positions in PostgreSQL's `pg_lsn` text form, shared by the agent, the proxy and the
//!   tests' harness.
//! - [`ProtocolError`]: what is wrong with bytes that can never decode. "Need more bytes" is `Ok(None)`.
//!
//! Message codecs come from `pgwire` where its types fit (and `postgres-protocol` for the client side of
//! authentication) (request codes, the ErrorResponse and
//! CancelRequest encoders, transaction status bytes); decoding of untrusted input is written here, with
//! explicit bounds, so no byte sequence makes it panic or read past a message.
#![warn(missing_docs)]

pub mod auth;
pub mod backend;
pub mod classify;
mod error;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod lsn;
pub mod response;
pub mod scram;
pub mod startup;
#[cfg(test)]
mod traces;
pub mod unit;

pub use auth::{AuthError, AuthProgress, AuthRequest, Credential, PasswordAuth};
pub use backend::{split_frame, BackendFrame, ErrorFields, FrameHeader, TxStatus};
pub use classify::{
    Class, Classifier, PinReason, DEFAULT_CACHE_BYTES as DEFAULT_CLASSIFIER_CACHE_BYTES,
};
pub use error::ProtocolError;
pub use frontend::{FrontendHeader, DEFAULT_MAX_MESSAGE_LEN};
pub use response::{encode_error_response, error_response, Severity, SqlState};
pub use scram::{keys_from_relayed, ScramError, ScramKeys, ScramSecret, ScramServer};
pub use startup::{
    decode_startup_packet, CancelKey, ProtocolVersion, StartupMessage, StartupPacket, StartupPhase,
    ENCRYPTION_REFUSED, MAX_STARTUP_PACKET_LEN,
};
