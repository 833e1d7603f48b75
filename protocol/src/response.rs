//! Messages the proxy itself sends to a client: an ErrorResponse (`FATAL` during the startup phase,
//! when the proxy cannot give the client a backend).
//!
//! The fields are those PostgreSQL sends, so libpq prints `FATAL:  <message>` and tokio-postgres
//! exposes the SQLSTATE through `Error::code()`:
//!
//! ```text
//! 'E' | length: u32 BE | 'S' severity\0 | 'V' severity\0 | 'C' sqlstate\0 | 'M' message\0 | \0
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::Message;

/// A five-character SQLSTATE error code (PostgreSQL's `errcodes.txt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState(&'static str);

impl SqlState {
    /// `08006` connection_failure: the backend could not be reached.
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    /// `08P01` protocol_violation: the client sent bytes that are not the protocol.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    /// `0A000` feature_not_supported: e.g. an unsupported protocol version.
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    /// `57014` query_canceled: also PostgreSQL's answer to a client that does not authenticate
    /// within `authentication_timeout` ("canceling authentication due to timeout").
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    /// `53300` too_many_connections: `max_client_conn` reached (PgBouncer's "no more connections
    /// allowed (max_client_conn)").
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    /// `57P01` admin_shutdown: the proxy is shutting down.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    /// `57P03` cannot_connect_now (also what a server that is shutting down answers).
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    /// `54000` program_limit_exceeded: a message above the size limit.
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    /// `28000` invalid_authorization_specification: e.g. TLS required.
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    /// `28P01` invalid_password.
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    /// `42601` syntax_error (the admin console's unknown commands).
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    /// `22023` invalid_parameter_value (a bad `praetor.target`).
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    /// `25006` read_only_sql_transaction.
    pub const READ_ONLY_SQL_TRANSACTION: SqlState = SqlState("25006");

    /// The code, e.g. `"08006"`.
    pub fn code(&self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The severity of an ErrorResponse the proxy sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// The session ends (every error during the startup phase).
    Fatal,
    /// The current command failed; the session goes on.
    Error,
}

impl Severity {
    /// `FATAL` or `ERROR`, as in the `S` and `V` fields.
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
        }
    }
}

/// The longest message text put in an ErrorResponse, in bytes; longer texts are cut at a character
/// boundary. Keeps the frame far below any client's limit.
const MAX_MESSAGE_LEN: usize = 4_000;

/// Appends an ErrorResponse (`S`, `V`, `C`, `M` fields) to `buf`.
///
/// NUL bytes in `message` (which would end the field early) are replaced by spaces, and the text is
/// cut to 4000 bytes.
pub fn encode_error_response(
    buf: &mut BytesMut,
    severity: Severity,
    sqlstate: SqlState,
    message: &str,
) {
    let mut text: String = message.replace('\0', " ");
    if text.len() > MAX_MESSAGE_LEN {
        let mut cut = MAX_MESSAGE_LEN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let fields = vec![
        (b'S', severity.as_str().to_string()),
        (b'V', severity.as_str().to_string()),
        (b'C', sqlstate.code().to_string()),
        (b'M', text),
    ];
    let start = buf.len();
    if ErrorResponse::new(fields.clone()).encode(buf).is_err() {
        // pgwire only fails above 2 GiB; the text is capped far below. Kept panic-free anyway.
        buf.truncate(start);
        let len = 4 + fields.iter().map(|(_, v)| v.len() + 2).sum::<usize>() + 1;
        buf.put_u8(b'E');
        buf.put_u32(len as u32);
        for (code, value) in &fields {
            buf.put_u8(*code);
            buf.put_slice(value.as_bytes());
            buf.put_u8(0);
        }
        buf.put_u8(0);
    }
}

/// An ErrorResponse as its own buffer; see [`encode_error_response`].
pub fn error_response(severity: Severity, sqlstate: SqlState, message: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + message.len().min(MAX_MESSAGE_LEN));
    encode_error_response(&mut buf, severity, sqlstate, message);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{split_frame, ErrorFields, ERROR_RESPONSE};

    #[test]
    fn error_response_has_the_fields_clients_display() {
        let bytes = error_response(
            Severity::Fatal,
            SqlState::CONNECTION_FAILURE,
            "cannot connect to leader pg1 at 127.0.0.1:5432",
        );
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = split_frame(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(frame.tag, ERROR_RESPONSE);
        let fields = ErrorFields::parse(frame.body()).unwrap();
        assert_eq!(fields.severity(), Some("FATAL"));
        assert_eq!(fields.get(b'V'), Some("FATAL"));
        assert_eq!(fields.code(), Some("08006"));
        assert_eq!(
            fields.message(),
            Some("cannot connect to leader pg1 at 127.0.0.1:5432")
        );
    }

    #[test]
    fn error_response_decodes_with_pgwire_too() {
        let bytes = error_response(Severity::Error, SqlState::PROTOCOL_VIOLATION, "bad\0packet");
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = ErrorResponse::decode(&mut buf, &Default::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            decoded.fields,
            vec![
                (b'S', "ERROR".to_string()),
                (b'V', "ERROR".to_string()),
                (b'C', "08P01".to_string()),
                (b'M', "bad packet".to_string()),
            ]
        );
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(5_000);
        let bytes = error_response(Severity::Fatal, SqlState::CANNOT_CONNECT_NOW, &long);
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = split_frame(&mut buf).unwrap().unwrap();
        let fields = ErrorFields::parse(frame.body()).unwrap();
        let m = fields.message().unwrap();
        assert!(m.len() <= MAX_MESSAGE_LEN && m.len() >= MAX_MESSAGE_LEN - 1);
        assert!(m.chars().all(|c| c == 'é'));
    }
}
