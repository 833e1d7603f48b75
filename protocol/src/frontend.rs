//! Messages from the client after the startup phase: framing with a size limit, decoding of the few
//! the auto port routes on, and encoders for the messages the proxy itself writes (to a server it
//! authenticates to, or to a client it answers: the admin console, the auto port's startup).
//!
//! Every frontend message after the StartupMessage is framed like a backend message:
//!
//! ```text
//! tag: u8 | length: u32 BE (body + 4; at least 4) | body: length - 4 bytes
//! ```
//!
//! [`FrontendHeader::peek`] reads a header in place and refuses a length above the configured limit
//! (PostgreSQL's is 1 GiB - 1 for most messages) as soon as the 5 header bytes are in, so an oversized
//! message is never buffered. The decoders ([`Parse::decode`], [`Bind::decode`], [`query_text`], ...)
//! borrow from the body and never panic on malformed input.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::startup::CancelKey;

/// Tag of Query (`Q`, simple query protocol).
pub const QUERY: u8 = b'Q';
/// Tag of Parse (`P`).
pub const PARSE: u8 = b'P';
/// Tag of Bind (`B`).
pub const BIND: u8 = b'B';
/// Tag of Describe (`D`).
pub const DESCRIBE: u8 = b'D';
/// Tag of Execute (`E`).
pub const EXECUTE: u8 = b'E';
/// Tag of Close (`C`).
pub const CLOSE: u8 = b'C';
/// Tag of Sync (`S`).
pub const SYNC: u8 = b'S';
/// Tag of Flush (`H`).
pub const FLUSH: u8 = b'H';
/// Tag of FunctionCall (`F`).
pub const FUNCTION_CALL: u8 = b'F';
/// Tag of Terminate (`X`).
pub const TERMINATE: u8 = b'X';
/// Tag of PasswordMessage / SASLInitialResponse / SASLResponse (`p`).
pub const PASSWORD: u8 = b'p';
/// Tag of CopyData (`d`), both directions.
pub const COPY_DATA: u8 = b'd';
/// Tag of CopyDone (`c`), both directions.
pub const COPY_DONE: u8 = b'c';
/// Tag of CopyFail (`f`).
pub const COPY_FAIL: u8 = b'f';

/// PostgreSQL's limit on one message from a client, in bytes (`PQ_LARGE_MESSAGE_LIMIT`, 1 GiB - 1);
/// the default of `praetor.proxy.max_message_size`.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 0x3fff_ffff;

/// The header of one frontend message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendHeader {
    /// The message type byte.
    pub tag: u8,
    /// The whole frame's size: tag (1) + length field (4) + body.
    pub frame_len: usize,
}

impl FrontendHeader {
    /// Reads the header at the front of `buf` without consuming anything. `Ok(None)` below 5 bytes;
    /// [`ProtocolError::MessageTooLarge`] when the length field exceeds `max_len` (bytes, length field
    /// included), [`ProtocolError::InvalidMessageLength`] when it is below 4.
    pub fn peek(buf: &[u8], max_len: usize) -> Result<Option<FrontendHeader>, ProtocolError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len < 4 {
            return Err(ProtocolError::InvalidMessageLength {
                tag: buf[0] as char,
                len,
            });
        }
        if len as usize > max_len {
            return Err(ProtocolError::MessageTooLarge {
                tag: buf[0] as char,
                len,
                max: max_len,
            });
        }
        Ok(Some(FrontendHeader {
            tag: buf[0],
            frame_len: 1 + len as usize,
        }))
    }

    /// The body of this frame within `buf` (which starts with the frame), when it is complete.
    pub fn body<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        buf.get(5..self.frame_len)
    }
}

fn malformed(message: &'static str, reason: &'static str) -> ProtocolError {
    ProtocolError::MalformedMessage { message, reason }
}

/// Splits a NUL-terminated string off the front of `body`.
fn cstr<'a>(body: &'a [u8], message: &'static str) -> Result<(&'a str, &'a [u8]), ProtocolError> {
    // `memchr`: every Query and Parse the auto port routes is searched here.
    let end = memchr::memchr(0, body).ok_or_else(|| malformed(message, "string not terminated"))?;
    let s = std::str::from_utf8(&body[..end]).map_err(|_| malformed(message, "invalid UTF-8"))?;
    Ok((s, &body[end + 1..]))
}

/// The SQL text of a Query body (`query\0`).
pub fn query_text(body: &[u8]) -> Result<&str, ProtocolError> {
    let (text, rest) = cstr(body, "Query")?;
    if !rest.is_empty() {
        return Err(malformed("Query", "bytes after the query string"));
    }
    Ok(text)
}

/// A Parse message: `name\0 query\0 n: i16 | n * oid: u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    /// The prepared statement's name; empty for the unnamed statement.
    pub name: &'a str,
    /// The SQL text.
    pub query: &'a str,
}

impl<'a> Parse<'a> {
    /// Decodes a Parse body.
    pub fn decode(body: &'a [u8]) -> Result<Parse<'a>, ProtocolError> {
        let (name, rest) = cstr(body, "Parse")?;
        let (query, rest) = cstr(rest, "Parse")?;
        let [a, b, types @ ..] = rest else {
            return Err(malformed("Parse", "missing parameter type count"));
        };
        let n = i16::from_be_bytes([*a, *b]);
        if n < 0 || types.len() != n as usize * 4 {
            return Err(malformed("Parse", "parameter type count does not match"));
        }
        Ok(Parse { name, query })
    }
}

/// The names a Bind message refers to: `portal\0 statement\0 ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    /// The destination portal; empty for the unnamed portal.
    pub portal: &'a str,
    /// The source prepared statement; empty for the unnamed statement.
    pub statement: &'a str,
}

impl<'a> Bind<'a> {
    /// Decodes the names at the front of a Bind body (the parameters are not looked at).
    pub fn decode(body: &'a [u8]) -> Result<Bind<'a>, ProtocolError> {
        let (portal, rest) = cstr(body, "Bind")?;
        let (statement, _) = cstr(rest, "Bind")?;
        Ok(Bind { portal, statement })
    }
}

/// What a Describe or Close message names: a prepared statement (`S`) or a portal (`P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `S name`.
    Statement(&'a str),
    /// `P name`.
    Portal(&'a str),
}

impl<'a> Target<'a> {
    /// Decodes a Describe or Close body: `kind: u8 ('S' | 'P') | name\0`.
    pub fn decode(body: &'a [u8]) -> Result<Target<'a>, ProtocolError> {
        let [kind, rest @ ..] = body else {
            return Err(malformed("Describe/Close", "empty body"));
        };
        let (name, rest) = cstr(rest, "Describe/Close")?;
        if !rest.is_empty() {
            return Err(malformed("Describe/Close", "bytes after the name"));
        }
        match kind {
            b'S' => Ok(Target::Statement(name)),
            b'P' => Ok(Target::Portal(name)),
            _ => Err(malformed("Describe/Close", "kind is not S or P")),
        }
    }
}

/// The password of a PasswordMessage answering AuthenticationCleartextPassword (`password\0`).
pub fn cleartext_password(body: &[u8]) -> Result<&str, ProtocolError> {
    let (password, rest) = cstr(body, "PasswordMessage")?;
    if !rest.is_empty() {
        return Err(malformed("PasswordMessage", "bytes after the password"));
    }
    Ok(password)
}

/// Appends a message `tag | length | body` built by `body` (which appends the body to the buffer).
pub fn encode_message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a Query message with `sql`.
pub fn encode_query(buf: &mut BytesMut, sql: &str) {
    encode_message(buf, QUERY, |b| {
        b.put_slice(sql.as_bytes());
        b.put_u8(0);
    });
}

/// Appends a Terminate message.
pub fn encode_terminate(buf: &mut BytesMut) {
    encode_message(buf, TERMINATE, |_| {});
}

/// Appends a PasswordMessage/SASL response (`p`) with `data` as its body.
pub fn encode_password_message(buf: &mut BytesMut, data: &[u8]) {
    encode_message(buf, PASSWORD, |b| b.put_slice(data));
}

/// Appends AuthenticationOk (`R`, code 0).
pub fn encode_auth_ok(buf: &mut BytesMut) {
    encode_message(buf, b'R', |b| b.put_u32(0));
}

/// Appends AuthenticationCleartextPassword (`R`, code 3): the client answers with its password.
pub fn encode_auth_cleartext(buf: &mut BytesMut) {
    encode_message(buf, b'R', |b| b.put_u32(3));
}

/// Appends AuthenticationSASL (`R`, code 10) offering only `SCRAM-SHA-256` (no channel binding:
/// the proxy does not offer `SCRAM-SHA-256-PLUS`).
pub fn encode_auth_sasl_scram(buf: &mut BytesMut) {
    encode_message(buf, b'R', |b| {
        b.put_u32(10);
        b.put_slice(b"SCRAM-SHA-256\0\0");
    });
}

/// Appends AuthenticationSASLContinue (`R`, code 11) with `data`.
pub fn encode_auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    encode_message(buf, b'R', |b| {
        b.put_u32(11);
        b.put_slice(data);
    });
}

/// Appends AuthenticationSASLFinal (`R`, code 12) with `data`.
pub fn encode_auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    encode_message(buf, b'R', |b| {
        b.put_u32(12);
        b.put_slice(data);
    });
}

/// Decodes a SASLInitialResponse body (`mechanism\0 | int32 length | data`, length -1 for no
/// data): the mechanism and the data.
pub fn sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let (mechanism, rest) = cstr(body, "SASLInitialResponse")?;
    let (len, data) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| malformed("SASLInitialResponse", "no data length"))?;
    let len = i32::from_be_bytes(*len);
    let data = match len {
        -1 => &[][..],
        n if usize::try_from(n).ok() == Some(data.len()) => data,
        _ => {
            return Err(malformed(
                "SASLInitialResponse",
                "data length does not match",
            ))
        }
    };
    Ok((mechanism, data))
}

/// Appends ParameterStatus (`S name\0 value\0`).
pub fn encode_parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    encode_message(buf, b'S', |b| {
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_slice(value.as_bytes());
        b.put_u8(0);
    });
}

/// Appends BackendKeyData (`K pid secret`).
pub fn encode_backend_key_data(buf: &mut BytesMut, key: &CancelKey) {
    encode_message(buf, b'K', |b| {
        b.put_i32(key.pid);
        b.put_slice(&key.secret);
    });
}

/// Appends ReadyForQuery with `status` (`I`, `T` or `E`).
pub fn encode_ready_for_query(buf: &mut BytesMut, status: crate::TxStatus) {
    let byte = match status {
        crate::TxStatus::Idle => b'I',
        crate::TxStatus::InTransaction => b'T',
        crate::TxStatus::Failed => b'E',
    };
    encode_message(buf, b'Z', |b| b.put_u8(byte));
}

/// Appends a RowDescription of text columns named `columns` (type `text`, oid 25).
pub fn encode_row_description(buf: &mut BytesMut, columns: &[&str]) {
    encode_message(buf, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for c in columns {
            b.put_slice(c.as_bytes());
            b.put_u8(0);
            b.put_u32(0); // table oid
            b.put_i16(0); // column number
            b.put_u32(25); // text
            b.put_i16(-1); // variable length
            b.put_i32(-1); // no type modifier
            b.put_i16(0); // text format
        }
    });
}

/// Appends a DataRow of text values (`None` is SQL NULL).
pub fn encode_data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    encode_message(buf, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// Appends CommandComplete with `tag` (`SHOW`, `RELOAD`, `SELECT 3`).
pub fn encode_command_complete(buf: &mut BytesMut, tag: &str) {
    encode_message(buf, b'C', |b| {
        b.put_slice(tag.as_bytes());
        b.put_u8(0);
    });
}

/// Appends EmptyQueryResponse (`I`).
pub fn encode_empty_query(buf: &mut BytesMut) {
    encode_message(buf, b'I', |_| {});
}

/// Removes `SCRAM-SHA-256-PLUS` from an AuthenticationSASL body (`10: u32 | (mechanism\0)* \0`).
///
/// A server offers the `-PLUS` variant only over TLS, and a client that picks it binds the exchange
/// to the certificate of the TLS connection *it* sees, which through a proxy is not the server's:
/// the server would reject the proof. Without the variant on offer, clients fall back to plain
/// SCRAM-SHA-256 (channel binding off), which passes through unchanged. `None` when `body` is not
/// an AuthenticationSASL body or offers no `-PLUS` mechanism (forward it as it is).
pub fn strip_channel_binding(body: &[u8]) -> Option<Bytes> {
    let (code, mut rest) = body.split_first_chunk::<4>()?;
    if u32::from_be_bytes(*code) != 10 {
        return None;
    }
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut stripped = false;
    loop {
        let end = rest.iter().position(|&b| b == 0)?;
        if end == 0 {
            if !rest[1..].is_empty() {
                return None;
            }
            break;
        }
        let mechanism = &rest[..end];
        if mechanism.ends_with(b"-PLUS") {
            stripped = true;
        } else {
            kept.push(mechanism);
        }
        rest = &rest[end + 1..];
    }
    if !stripped {
        return None;
    }
    let mut out = BytesMut::new();
    encode_message(&mut out, b'R', |b| {
        b.put_u32(10);
        for m in &kept {
            b.put_slice(m);
            b.put_u8(0);
        }
        b.put_u8(0);
    });
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::split_frame;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode_message(&mut buf, tag, |b| b.put_slice(body));
        buf.to_vec()
    }

    #[test]
    fn headers_respect_the_size_limit_before_the_body_arrives() {
        let q = frame(QUERY, b"SELECT 1\0");
        let h = FrontendHeader::peek(&q, 1024).unwrap().unwrap();
        assert_eq!((h.tag, h.frame_len), (QUERY, q.len()));
        assert_eq!(h.body(&q), Some(&b"SELECT 1\0"[..]));
        assert_eq!(FrontendHeader::peek(&q[..4], 1024), Ok(None));
        assert!(h.body(&q[..7]).is_none(), "incomplete body");
        // A 2 GB message is refused from its header alone.
        let huge = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert_eq!(
            FrontendHeader::peek(&huge, DEFAULT_MAX_MESSAGE_LEN),
            Err(ProtocolError::MessageTooLarge {
                tag: 'Q',
                len: 0x7fff_ffff,
                max: DEFAULT_MAX_MESSAGE_LEN
            })
        );
        assert!(FrontendHeader::peek(&q, 8).is_err(), "a 13-byte limit of 8");
        assert!(FrontendHeader::peek(&[b'Q', 0, 0, 0, 3], 100).is_err());
    }

    #[test]
    fn parse_bind_describe_close_and_query_decode() {
        let mut parse = b"s1\0SELECT $1\0".to_vec();
        parse.extend_from_slice(&[0, 1, 0, 0, 0, 23]);
        assert_eq!(
            Parse::decode(&parse),
            Ok(Parse {
                name: "s1",
                query: "SELECT $1"
            })
        );
        assert!(
            Parse::decode(b"s1\0SELECT 1\0\0\x01").is_err(),
            "count without oid"
        );
        assert!(Parse::decode(b"s1\0SELECT 1").is_err());
        assert_eq!(
            Bind::decode(b"\0s1\0\0\0\0\0\0\0"),
            Ok(Bind {
                portal: "",
                statement: "s1"
            })
        );
        assert_eq!(Target::decode(b"Ss1\0"), Ok(Target::Statement("s1")));
        assert_eq!(Target::decode(b"P\0"), Ok(Target::Portal("")));
        assert!(Target::decode(b"Xs\0").is_err());
        assert!(Target::decode(b"").is_err());
        assert_eq!(query_text(b"SELECT 1\0"), Ok("SELECT 1"));
        assert!(query_text(b"SELECT 1").is_err());
        assert!(query_text(b"SELECT 1\0x").is_err());
        assert_eq!(cleartext_password(b"secret\0"), Ok("secret"));
    }

    #[test]
    fn encoded_messages_frame_as_backend_messages() {
        let mut buf = BytesMut::new();
        encode_auth_ok(&mut buf);
        encode_parameter_status(&mut buf, "server_version", "15");
        encode_row_description(&mut buf, &["a", "b"]);
        encode_data_row(&mut buf, &[Some("x"), None]);
        encode_command_complete(&mut buf, "SHOW");
        encode_ready_for_query(&mut buf, crate::TxStatus::Idle);
        let mut tags = Vec::new();
        while let Some(f) = split_frame(&mut buf).unwrap() {
            tags.push(f.tag);
        }
        assert_eq!(tags, b"RSTDCZ");
    }

    #[test]
    fn channel_binding_is_stripped_from_the_sasl_mechanism_list_only() {
        let offered = b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        let out = strip_channel_binding(offered).expect("PLUS offered");
        assert_eq!(&out[5..], b"\0\0\0\x0aSCRAM-SHA-256\0\0");
        assert_eq!(&out[..5], &[b'R', 0, 0, 0, 23]);
        assert_eq!(strip_channel_binding(b"\0\0\0\x0aSCRAM-SHA-256\0\0"), None);
        assert_eq!(strip_channel_binding(b"\0\0\0\x05salt"), None, "md5");
        assert_eq!(
            strip_channel_binding(b"\0\0\0\x0aX-PLUS"),
            None,
            "malformed"
        );
    }
}
