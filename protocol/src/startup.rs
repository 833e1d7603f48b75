//! The first packets a client sends: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage.
//!
//! Every startup-phase packet has the same shape, with no type byte:
//!
//! ```text
//! length: u32 BE (whole packet, itself included; 8..=10000) | code: u32 BE | payload
//! ```
//!
//! `code` is 80877103 (SSLRequest, no payload), 80877104 (GSSENCRequest, no payload), 80877102
//! (CancelRequest, payload `pid: i32 BE | secret: 4..=256 bytes`), or a protocol version
//! `major << 16 | minor` (StartupMessage, payload `name\0value\0 ... \0`).
//!
//! [`decode_startup_packet`] decodes one packet from the front of a buffer; [`StartupPhase`] adds the
//! rule that each encryption request may come once. Both return `Ok(None)` while the packet is
//! incomplete and reject a length outside 8..=10000 as soon as its 4 bytes have arrived, so an
//! oversized or nonsensical packet is refused without buffering it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgwire::messages::cancel::CancelRequest as PgWireCancelRequest;
use pgwire::messages::startup::{GssEncRequest, SecretKey, SslRequest};
use pgwire::messages::Message;

use crate::error::ProtocolError;

/// PostgreSQL's limit on a startup-phase packet (`MAX_STARTUP_PACKET_LENGTH` in `pqcomm.h`), in bytes,
/// length field included.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// The shortest startup-phase packet: the length field and the request code, 8 bytes.
pub const MIN_STARTUP_PACKET_LEN: usize = 8;

/// The request code of an SSLRequest (1234.5679).
pub const SSL_REQUEST_CODE: u32 = SslRequest::BODY_MAGIC_NUMBER as u32;

/// The request code of a GSSENCRequest (1234.5680).
pub const GSSENC_REQUEST_CODE: u32 = GssEncRequest::BODY_MAGIC_NUMBER as u32;

/// The request code of a CancelRequest (1234.5678).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// The one-byte answer to an SSLRequest or GSSENCRequest that refuses encryption: `N`. The client then
/// sends its next packet in clear text on the same connection.
pub const ENCRYPTION_REFUSED: u8 = b'N';

/// Shortest and longest cancel secret in bytes: 4 (protocol 3.0) to 256 (protocol 3.2).
const SECRET_LEN: std::ops::RangeInclusive<usize> = 4..=256;

/// A frontend/backend protocol version as requested in a StartupMessage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtocolVersion {
    /// Major version; PostgreSQL 14 and later speak only 3.
    pub major: u16,
    /// Minor version: 0 (all servers), 2 (PostgreSQL 18); the server negotiates higher ones down.
    pub minor: u16,
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The identity of a backend session for query cancellation: the `(pid, secret)` pair a server sends
/// in BackendKeyData and a client echoes in a CancelRequest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// The backend's process id.
    pub pid: i32,
    /// The secret key: 4 bytes for protocol 3.0, up to 256 for 3.2.
    pub secret: Bytes,
}

impl CancelKey {
    /// Appends the CancelRequest packet for this key to `buf`:
    /// `length: u32 = 12 + secret | 80877102: u32 | pid: i32 | secret` (16 bytes for a 4-byte secret).
    pub fn encode_cancel_request(&self, buf: &mut BytesMut) {
        let request = PgWireCancelRequest::new(self.pid, SecretKey::Bytes(self.secret.clone()));
        if request.encode(buf).is_err() {
            // Unreachable for keys this crate decoded (secrets are checked to be 4..=256 bytes, which
            // is what pgwire accepts); written by hand so no input can make this panic.
            buf.put_u32((12 + self.secret.len()) as u32);
            buf.put_u32(CANCEL_REQUEST_CODE);
            buf.put_i32(self.pid);
            buf.put_slice(&self.secret);
        }
    }

    /// Builds a key from a `pid` and a `secret` of 4 to 256 bytes; `None` otherwise.
    pub fn new(pid: i32, secret: Bytes) -> Option<CancelKey> {
        SECRET_LEN
            .contains(&secret.len())
            .then_some(CancelKey { pid, secret })
    }
}

/// A decoded StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// The requested protocol version (major is always 3 here).
    pub version: ProtocolVersion,
    /// `(name, value)` pairs in the order sent (`user`, `database`, `application_name`, `options`,
    /// any GUC); names and values decoded as UTF-8 with invalid sequences replaced.
    pub parameters: Vec<(String, String)>,
    /// The whole packet as received, length field included, to forward unchanged.
    pub raw: Bytes,
}

impl StartupMessage {
    /// The value of parameter `name`, if sent.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `user` parameter (`""` when missing; the server will refuse such a startup).
    pub fn user(&self) -> &str {
        self.parameter("user").unwrap_or("")
    }

    /// The `database` parameter, which defaults to the user name as in PostgreSQL.
    pub fn database(&self) -> &str {
        match self.parameter("database") {
            Some(d) if !d.is_empty() => d,
            _ => self.user(),
        }
    }

    /// The settings under `prefix` (`praetor.`) given in the `options` parameter
    /// (`-c praetor.target=replica` or `--praetor.target=replica`), as `(name without prefix, value)`,
    /// and the `options` text without them.
    pub fn take_options(&self, prefix: &str) -> (Vec<(String, String)>, String) {
        let Some(options) = self.parameter("options") else {
            return (Vec::new(), String::new());
        };
        let words = split_options(options);
        let mut taken = Vec::new();
        let mut kept: Vec<String> = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let w = &words[i];
            let (setting, consumed) = if w == "-c" {
                (words.get(i + 1).map(String::as_str), 2)
            } else if let Some(rest) = w.strip_prefix("-c") {
                (Some(rest), 1)
            } else if let Some(rest) = w.strip_prefix("--") {
                (Some(rest), 1)
            } else {
                (None, 1)
            };
            match setting.and_then(|s| s.split_once('=')) {
                Some((name, value)) if name.starts_with(prefix) => {
                    taken.push((name[prefix.len()..].to_string(), value.to_string()));
                }
                _ => kept.extend(words[i..(i + consumed).min(words.len())].iter().cloned()),
            }
            i += consumed;
        }
        let kept = kept
            .iter()
            .map(|w| w.replace('\\', "\\\\").replace(' ', "\\ "))
            .collect::<Vec<_>>()
            .join(" ");
        (taken, kept)
    }

    /// This StartupMessage re-encoded with `options` replaced (dropped when empty).
    pub fn encode_with_options(&self, options: &str) -> Bytes {
        let version = u32::from(self.version.major) << 16 | u32::from(self.version.minor);
        let parameters = self.parameters.iter().filter_map(|(k, v)| {
            if k != "options" {
                Some((k.as_str(), v.as_str()))
            } else if options.is_empty() {
                None
            } else {
                Some((k.as_str(), options))
            }
        });
        encode_startup_message(version, parameters)
    }
}

/// A protocol 3.0 StartupMessage with `parameters` (`user`, `database`...), for a connection the
/// proxy opens on its own behalf (`auth_query`).
pub fn encode_startup(parameters: &[(&str, &str)]) -> Bytes {
    encode_startup_message(3 << 16, parameters.iter().copied())
}

/// `length | version | (key \0 value \0)* | \0`: a StartupMessage with protocol `version`
/// (major << 16 | minor).
fn encode_startup_message<'a>(
    version: u32,
    parameters: impl Iterator<Item = (&'a str, &'a str)>,
) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u32(version);
    for (k, v) in parameters {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_u32((body.len() + 4) as u32);
    out.put_slice(&body);
    out.freeze()
}

/// Splits a libpq `options` value into words: whitespace separates, a backslash makes the next
/// character literal (PostgreSQL's `pg_split_opts`).
fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    current.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// One decoded startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// SSLRequest: answer `S` (and do TLS) or [`ENCRYPTION_REFUSED`], then read the next packet.
    SslRequest,
    /// GSSENCRequest: answer `G` (and do GSSAPI) or [`ENCRYPTION_REFUSED`], then read the next packet.
    GssEncRequest,
    /// CancelRequest: the connection carries nothing else and is closed after it.
    CancelRequest(CancelKey),
    /// StartupMessage: what follows is authentication and the session.
    Startup(StartupMessage),
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Decodes one startup-phase packet from the front of `buf`.
///
/// - `Ok(Some(packet))`: the packet's bytes were removed from `buf` (anything after them stays).
/// - `Ok(None)`: incomplete; read more bytes and call again. `buf` is unchanged.
/// - `Err(e)`: the bytes can never form a valid packet (bad length, unknown layout); `buf` is
///   unchanged and the connection should be closed, with an ErrorResponse carrying
///   [`ProtocolError::sqlstate`] if you like.
///
/// A length outside 8..=10000 is rejected as soon as the 4 length bytes are in.
pub fn decode_startup_packet(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len32 = read_u32(buf);
    if (len32 as usize) < MIN_STARTUP_PACKET_LEN {
        return Err(ProtocolError::InvalidStartupLength { len: len32 });
    }
    if len32 as usize > MAX_STARTUP_PACKET_LEN {
        return Err(ProtocolError::StartupPacketTooLarge { len: len32 });
    }
    let len = len32 as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let code = read_u32(&buf[4..8]);
    let packet = match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            let (request, packet) = if code == SSL_REQUEST_CODE {
                ("SSLRequest", StartupPacket::SslRequest)
            } else {
                ("GSSENCRequest", StartupPacket::GssEncRequest)
            };
            if len != MIN_STARTUP_PACKET_LEN {
                return Err(ProtocolError::InvalidRequestLength {
                    request,
                    len: len32,
                });
            }
            buf.advance(len);
            packet
        }
        CANCEL_REQUEST_CODE => {
            let secret_len = len.saturating_sub(12);
            if len < 12 || !SECRET_LEN.contains(&secret_len) {
                return Err(ProtocolError::InvalidRequestLength {
                    request: "CancelRequest",
                    len: len32,
                });
            }
            let mut packet = buf.split_to(len);
            packet.advance(8);
            let pid = packet.get_i32();
            StartupPacket::CancelRequest(CancelKey {
                pid,
                secret: packet.freeze(),
            })
        }
        _ => {
            let version = ProtocolVersion {
                major: (code >> 16) as u16,
                minor: (code & 0xffff) as u16,
            };
            if version.major != 3 {
                return Err(ProtocolError::UnsupportedProtocol {
                    major: version.major,
                    minor: version.minor,
                });
            }
            let parameters = parse_parameters(&buf[8..len])?;
            // A copy, not a split of `buf`: a session keeps its StartupMessage for its lifetime
            // and a split would keep the whole read buffer allocated with it.
            let raw = Bytes::copy_from_slice(&buf[..len]);
            buf.advance(len);
            StartupPacket::Startup(StartupMessage {
                version,
                parameters,
                raw,
            })
        }
    };
    Ok(Some(packet))
}

/// Parses `name\0value\0 ... \0` as PostgreSQL's `ProcessStartupPacket` does: the list ends at an
/// empty name, which must be the last byte of the packet.
fn parse_parameters(mut body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    const NOT_TERMINATED: &str = "expected terminator as last byte";
    if body.last() != Some(&0) {
        return Err(ProtocolError::InvalidStartupLayout(NOT_TERMINATED));
    }
    let mut parameters = Vec::new();
    loop {
        let name_end = body
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::InvalidStartupLayout(NOT_TERMINATED))?;
        if name_end == 0 {
            // The terminator; it must be the last byte.
            if body.len() != 1 {
                return Err(ProtocolError::InvalidStartupLayout(NOT_TERMINATED));
            }
            return Ok(parameters);
        }
        let name = String::from_utf8_lossy(&body[..name_end]).into_owned();
        body = &body[name_end + 1..];
        let value_end =
            body.iter()
                .position(|&b| b == 0)
                .ok_or(ProtocolError::InvalidStartupLayout(
                    "parameter without a value",
                ))?;
        let value = String::from_utf8_lossy(&body[..value_end]).into_owned();
        body = &body[value_end + 1..];
        if body.is_empty() {
            return Err(ProtocolError::InvalidStartupLayout(NOT_TERMINATED));
        }
        parameters.push((name, value));
    }
}

/// Reports a stream that ended in the middle of a startup packet: `Ok(())` when `rest` (the bytes left
/// undecoded at end of stream) is empty, else [`ProtocolError::Truncated`] saying how far it got.
pub fn check_truncated(rest: &[u8]) -> Result<(), ProtocolError> {
    if rest.is_empty() {
        return Ok(());
    }
    let need = if rest.len() < 4 {
        4
    } else {
        read_u32(rest) as usize
    };
    Err(ProtocolError::Truncated {
        what: "startup packet",
        have: rest.len(),
        need,
    })
}

/// The client side of the startup phase as a state machine: [`decode_startup_packet`] plus PostgreSQL's
/// rule that a client may ask for each kind of encryption once (GSSENCRequest, then SSLRequest after a
/// refusal, then the StartupMessage or CancelRequest).
///
/// Feed it the connection's read buffer until it yields a [`StartupPacket::Startup`] or
/// [`StartupPacket::CancelRequest`]; answer each encryption request with [`ENCRYPTION_REFUSED`] (or
/// negotiate) in between.
#[derive(Debug, Default, Clone)]
pub struct StartupPhase {
    ssl_requested: bool,
    gss_requested: bool,
}

impl StartupPhase {
    /// A connection that has sent nothing yet.
    pub fn new() -> StartupPhase {
        StartupPhase::default()
    }

    /// Decodes the next packet from `buf`, as [`decode_startup_packet`], and rejects a repeated
    /// SSLRequest or GSSENCRequest with [`ProtocolError::DuplicateRequest`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
        // Checked on the request code before decoding, so a rejected packet stays in `buf`.
        if buf.len() >= MIN_STARTUP_PACKET_LEN {
            match read_u32(&buf[4..8]) {
                SSL_REQUEST_CODE if self.ssl_requested => {
                    return Err(ProtocolError::DuplicateRequest("SSLRequest"))
                }
                GSSENC_REQUEST_CODE if self.gss_requested => {
                    return Err(ProtocolError::DuplicateRequest("GSSENCRequest"))
                }
                _ => {}
            }
        }
        let packet = decode_startup_packet(buf)?;
        match packet {
            Some(StartupPacket::SslRequest) => self.ssl_requested = true,
            Some(StartupPacket::GssEncRequest) => self.gss_requested = true,
            _ => {}
        }
        Ok(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces;

    /// Feeds `bytes` split in two at every offset (and one byte at a time) and checks the decoder says
    /// "incomplete" until the packet is whole, then returns the same packet and leaves the rest.
    fn decode_split_everywhere(bytes: &[u8]) -> StartupPacket {
        let mut whole = BytesMut::from(bytes);
        let expected = decode_startup_packet(&mut whole)
            .expect("valid")
            .expect("complete");
        assert!(whole.is_empty(), "the whole input is one packet");
        for split in 0..=bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            let first = decode_startup_packet(&mut buf).expect("a prefix is never invalid");
            if split < bytes.len() {
                assert_eq!(first, None, "prefix of {split} bytes");
                assert_eq!(
                    &buf[..],
                    &bytes[..split],
                    "an incomplete decode consumes nothing"
                );
                buf.extend_from_slice(&bytes[split..]);
                let second = decode_startup_packet(&mut buf).expect("valid");
                assert_eq!(second.as_ref(), Some(&expected), "split at {split}");
            } else {
                assert_eq!(first.as_ref(), Some(&expected));
            }
            assert!(buf.is_empty());
        }
        // One byte at a time, with a trailing byte of the next packet that must stay in the buffer.
        let mut buf = BytesMut::new();
        let mut got = None;
        for &b in bytes {
            assert!(got.is_none(), "decoded before the last byte");
            buf.put_u8(b);
            got = decode_startup_packet(&mut buf).expect("valid");
        }
        buf.put_u8(b'Q');
        assert_eq!(got.as_ref(), Some(&expected));
        assert_eq!(&buf[..], b"Q");
        expected
    }

    #[test]
    fn psql_ssl_request_decodes_at_every_split() {
        let bytes = traces::bytes(traces::PSQL_SSL_REQUEST);
        assert_eq!(decode_split_everywhere(&bytes), StartupPacket::SslRequest);
    }

    #[test]
    fn psql_startup_message_decodes_at_every_split_and_keeps_raw_bytes() {
        let bytes = traces::bytes(traces::PSQL_STARTUP);
        let StartupPacket::Startup(m) = decode_split_everywhere(&bytes) else {
            panic!("not a StartupMessage")
        };
        assert_eq!(m.version, ProtocolVersion { major: 3, minor: 0 });
        assert_eq!(m.user(), "postgres");
        assert_eq!(m.database(), "postgres");
        assert_eq!(m.parameter("application_name"), Some("psql"));
        assert_eq!(&m.raw[..], &bytes[..], "raw is the packet as received");
    }

    #[test]
    fn md5_user_startup_message_decodes_at_every_split() {
        let bytes = traces::bytes(traces::MD5USER_STARTUP);
        let StartupPacket::Startup(m) = decode_split_everywhere(&bytes) else {
            panic!("not a StartupMessage")
        };
        assert_eq!((m.user(), m.database()), ("md5user", "postgres"));
    }

    #[test]
    fn psql_cancel_request_decodes_to_the_key_of_the_recorded_backend() {
        let bytes = traces::bytes(traces::PSQL_CANCEL_REQUEST);
        let StartupPacket::CancelRequest(key) = decode_split_everywhere(&bytes) else {
            panic!("not a CancelRequest")
        };
        assert_eq!(key.pid, 0x270c);
        assert_eq!(&key.secret[..], &[0x8b, 0x0c, 0xcd, 0x9c]);
        let mut again = BytesMut::new();
        key.encode_cancel_request(&mut again);
        assert_eq!(&again[..], &bytes[..], "re-encoding gives psql's 16 bytes");
    }

    #[test]
    fn gssenc_request_and_protocol_3_2_cancel_with_a_long_secret_decode() {
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        assert_eq!(decode_split_everywhere(&gss), StartupPacket::GssEncRequest);

        let key = CancelKey::new(42, Bytes::from(vec![7u8; 32])).expect("32 bytes is in range");
        let mut buf = BytesMut::new();
        key.encode_cancel_request(&mut buf);
        assert_eq!(buf.len(), 12 + 32);
        assert_eq!(
            decode_split_everywhere(&buf),
            StartupPacket::CancelRequest(key)
        );
    }

    #[test]
    fn startup_without_database_defaults_to_the_user() {
        let mut buf = BytesMut::new();
        let body = b"user\0alice\0\0";
        buf.put_u32((8 + body.len()) as u32);
        buf.put_u32(0x0003_0002);
        buf.put_slice(body);
        let StartupPacket::Startup(m) = decode_split_everywhere(&buf) else {
            panic!()
        };
        assert_eq!(m.version.to_string(), "3.2");
        assert_eq!(m.database(), "alice");
    }

    #[test]
    fn praetor_options_are_taken_out_and_the_rest_kept() {
        let mut buf = BytesMut::new();
        let body = b"user\0alice\0options\0-c praetor.target=replica --search_path=a\\ b -cpraetor.x=1\0application_name\0app\0\0";
        buf.put_u32((8 + body.len()) as u32);
        buf.put_u32(0x0003_0000);
        buf.put_slice(body);
        let Ok(Some(StartupPacket::Startup(m))) = decode_startup_packet(&mut buf) else {
            panic!()
        };
        let (taken, kept) = m.take_options("praetor.");
        assert_eq!(
            taken,
            vec![
                ("target".to_string(), "replica".to_string()),
                ("x".to_string(), "1".to_string())
            ]
        );
        assert_eq!(kept, "--search_path=a\\ b");
        let again = m.encode_with_options(&kept);
        let Ok(Some(StartupPacket::Startup(m2))) =
            decode_startup_packet(&mut BytesMut::from(&again[..]))
        else {
            panic!()
        };
        assert_eq!(m2.parameter("options"), Some("--search_path=a\\ b"));
        assert_eq!(m2.parameter("application_name"), Some("app"));
        let without = m.encode_with_options("");
        let Ok(Some(StartupPacket::Startup(m3))) =
            decode_startup_packet(&mut BytesMut::from(&without[..]))
        else {
            panic!()
        };
        assert_eq!(m3.parameter("options"), None);
        assert_eq!(m3.user(), "alice");
        let plain = StartupMessage {
            version: m.version,
            parameters: vec![("user".into(), "u".into())],
            raw: Bytes::new(),
        };
        assert_eq!(plain.take_options("praetor."), (vec![], String::new()));
    }

    #[test]
    fn nonsense_lengths_are_rejected_as_soon_as_the_length_is_in() {
        for len in [0u32, 1, 4, 7] {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            assert_eq!(
                decode_startup_packet(&mut buf),
                Err(ProtocolError::InvalidStartupLength { len })
            );
            assert_eq!(buf.len(), 4, "an error consumes nothing");
        }
        for len in [10_001u32, 1 << 20, u32::MAX, 0x1603_0100] {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            let err = decode_startup_packet(&mut buf).unwrap_err();
            assert_eq!(err, ProtocolError::StartupPacketTooLarge { len });
            assert!(err.is_invalid());
            assert_eq!(err.sqlstate(), crate::SqlState::PROTOCOL_VIOLATION);
        }
        // Exactly at the limit is fine (and incomplete until all 10000 bytes are in).
        let mut buf = BytesMut::from(&10_000u32.to_be_bytes()[..]);
        assert_eq!(decode_startup_packet(&mut buf), Ok(None));
    }

    #[test]
    fn a_tls_client_hello_without_ssl_request_is_rejected() {
        // First bytes of a TLS 1.2 ClientHello record.
        let mut buf = BytesMut::from(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00][..]);
        assert!(matches!(
            decode_startup_packet(&mut buf),
            Err(ProtocolError::StartupPacketTooLarge { .. })
        ));
    }

    #[test]
    fn fixed_size_requests_with_wrong_lengths_are_invalid() {
        let cases: &[(&[u8], &str)] = &[
            (
                &[0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2f, 0, 0, 0, 0],
                "SSLRequest",
            ),
            (&[0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x30, 0], "GSSENCRequest"),
            (
                &[0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1],
                "CancelRequest",
            ),
            (
                &[0, 0, 0, 15, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 1, 2, 3],
                "CancelRequest",
            ),
        ];
        for (bytes, request) in cases {
            let mut buf = BytesMut::from(*bytes);
            assert_eq!(
                decode_startup_packet(&mut buf),
                Err(ProtocolError::InvalidRequestLength {
                    request,
                    len: bytes.len() as u32
                }),
                "{bytes:?}"
            );
        }
        let mut long = BytesMut::new();
        long.put_u32(12 + 257);
        long.put_u32(CANCEL_REQUEST_CODE);
        long.put_i32(1);
        long.put_slice(&[0u8; 257]);
        assert!(matches!(
            decode_startup_packet(&mut long),
            Err(ProtocolError::InvalidRequestLength { .. })
        ));
    }

    #[test]
    fn unsupported_protocol_versions_are_refused_with_feature_not_supported() {
        for (major, minor) in [(2u16, 0u16), (4, 0), (1234, 5681), (0, 0)] {
            let mut buf = BytesMut::new();
            buf.put_u32(9);
            buf.put_u16(major);
            buf.put_u16(minor);
            buf.put_u8(0);
            let err = decode_startup_packet(&mut buf).unwrap_err();
            assert_eq!(err, ProtocolError::UnsupportedProtocol { major, minor });
            assert_eq!(err.sqlstate(), crate::SqlState::FEATURE_NOT_SUPPORTED);
        }
    }

    #[test]
    fn malformed_parameter_lists_are_invalid() {
        let bodies: &[&[u8]] = &[
            b"",                     // no terminator at all
            b"user\0alice\0",        // missing final terminator
            b"user\0alice",          // value not terminated
            b"user\0\0x",            // garbage after the value, not terminated
            b"user\0alice\0\0\0",    // bytes after the terminator
            b"user\0",               // name without value
            b"\0user\0alice\0\0",    // terminator first, then more
            b"user\0alice\0db\0\0x", // garbage after terminator
        ];
        for body in bodies {
            let mut buf = BytesMut::new();
            buf.put_u32((8 + body.len()) as u32);
            buf.put_u32(0x0003_0000);
            buf.put_slice(body);
            let r = decode_startup_packet(&mut buf);
            assert!(
                matches!(r, Err(ProtocolError::InvalidStartupLayout(_))),
                "{body:?}: {r:?}"
            );
        }
        // A startup with no parameters has a valid layout (the server will ask for a user).
        let mut buf = BytesMut::from(&[0, 0, 0, 9, 0, 3, 0, 0, 0][..]);
        assert!(matches!(
            decode_startup_packet(&mut buf),
            Ok(Some(StartupPacket::Startup(m))) if m.parameters.is_empty()
        ));
    }

    #[test]
    fn startup_phase_allows_each_encryption_request_once() {
        let ssl = traces::bytes(traces::PSQL_SSL_REQUEST);
        let gss = [0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        let mut phase = StartupPhase::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&gss);
        buf.extend_from_slice(&ssl);
        buf.extend_from_slice(&traces::bytes(traces::PSQL_STARTUP));
        assert_eq!(
            phase.decode(&mut buf),
            Ok(Some(StartupPacket::GssEncRequest))
        );
        assert_eq!(phase.decode(&mut buf), Ok(Some(StartupPacket::SslRequest)));
        assert!(matches!(
            phase.decode(&mut buf),
            Ok(Some(StartupPacket::Startup(_)))
        ));
        assert!(buf.is_empty());

        let mut buf = BytesMut::new();
        buf.extend_from_slice(&ssl);
        buf.extend_from_slice(&ssl);
        let mut phase = StartupPhase::new();
        assert_eq!(phase.decode(&mut buf), Ok(Some(StartupPacket::SslRequest)));
        assert_eq!(
            phase.decode(&mut buf),
            Err(ProtocolError::DuplicateRequest("SSLRequest"))
        );
        assert_eq!(buf.len(), 8, "the rejected packet stays in the buffer");
    }

    #[test]
    fn truncated_streams_are_reported_as_incomplete_not_invalid() {
        assert_eq!(check_truncated(&[]), Ok(()));
        let err = check_truncated(&[0, 0]).unwrap_err();
        assert!(!err.is_invalid());
        let bytes = traces::bytes(traces::PSQL_STARTUP);
        assert_eq!(
            check_truncated(&bytes[..10]),
            Err(ProtocolError::Truncated {
                what: "startup packet",
                have: 10,
                need: 63
            })
        );
    }

    #[test]
    fn random_bytes_never_panic_and_split_feeding_agrees_with_whole_feeding() {
        // A small xorshift generator keeps this deterministic without an RNG dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let len = (next() % 40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Make plausible lengths and codes common.
            if len >= 8 && next() % 2 == 0 {
                bytes[..4].copy_from_slice(&(len as u32).to_be_bytes());
                let code =
                    [0x0003_0000u32, SSL_REQUEST_CODE, CANCEL_REQUEST_CODE][next() as usize % 3];
                bytes[4..8].copy_from_slice(&code.to_be_bytes());
            }
            let whole = decode_startup_packet(&mut BytesMut::from(&bytes[..]));
            for split in 0..=bytes.len() {
                let mut buf = BytesMut::from(&bytes[..split]);
                let first = decode_startup_packet(&mut buf);
                let result = match first {
                    Ok(None) => {
                        buf.extend_from_slice(&bytes[split..]);
                        decode_startup_packet(&mut buf)
                    }
                    other => other,
                };
                match (&whole, &result) {
                    (Ok(Some(a)), Ok(Some(b))) => assert_eq!(a, b),
                    (Err(_), Err(_)) | (Ok(None), Ok(None)) => {}
                    _ => panic!("{bytes:?} split at {split}: {whole:?} vs {result:?}"),
                }
            }
        }
    }
}
