//! Who may use the admin console, and how they prove it: PgBouncer's `admin_users` checked against
//! an `auth_file` in PgBouncer's `userlist.txt` format, with SCRAM-SHA-256 (RFC 5802 and RFC 7677,
//! as PostgreSQL's `auth-scram.c` runs it) or md5 (PostgreSQL's `md5` method), or `trust` when the
//! configuration says so explicitly.
//!
//! Kept apart from the console so that it can be folded into the client authentication of the
//! auto port later. The crypto comes from `ring` (HMAC, SHA-256, PBKDF2, randomness), `md-5`,
//! `stringprep` (SASLprep of plain-text passwords) and `subtle` (constant-time comparison); this
//! module only parses and assembles the messages.
//!
//! The exchange is sans-I/O ([`ScramServer`], [`md5_expected`]); [`authenticate`] runs it on a
//! socket. A user that is not in `admin_users` or not in the file goes through the same exchange
//! with a random secret and fails at its end with the same message, as PostgreSQL does, so the
//! console does not tell which user names exist.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::{Buf, BufMut, BytesMut};
use praetor_protocol::frontend::{encode_message, PASSWORD};
use praetor_protocol::{encode_error_response, FrontendHeader, Severity, SqlState};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The mechanism name PostgreSQL announces.
const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// PBKDF2 iterations for a plain-text password of the file (PostgreSQL's
/// `scram_iterations` default).
const PLAIN_ITERATIONS: u32 = 4096;

/// The longest authentication message read from a client (bytes).
const MAX_AUTH_MESSAGE: usize = 8 * 1024;

/// `praetor.proxy.admin_auth`: how admin users authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminAuthMethod {
    /// SCRAM-SHA-256 for every user (an `md5` entry of the file cannot log in, as with
    /// PgBouncer's `auth_type = scram-sha-256`). The default of the configuration file.
    #[default]
    ScramSha256,
    /// md5 for plain-text and `md5` entries, SCRAM-SHA-256 for SCRAM entries (PgBouncer's
    /// `auth_type = md5`).
    Md5,
    /// No password: `admin_users` (or, without it, anyone connecting to a loopback listener).
    Trust,
}

impl AdminAuthMethod {
    /// `scram-sha-256`, `md5` or `trust`.
    pub fn parse(s: &str) -> Option<AdminAuthMethod> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scram-sha-256" | "scram" => Some(AdminAuthMethod::ScramSha256),
            "md5" => Some(AdminAuthMethod::Md5),
            "trust" => Some(AdminAuthMethod::Trust),
            _ => None,
        }
    }

    /// The configuration file's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            AdminAuthMethod::ScramSha256 => "scram-sha-256",
            AdminAuthMethod::Md5 => "md5",
            AdminAuthMethod::Trust => "trust",
        }
    }
}

/// The admin console's access rules (`admin_users`, `auth_file`, `admin_auth`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminAccess {
    /// Users allowed; empty: anyone (only with [`AdminAuthMethod::Trust`] on loopback listeners).
    pub users: Vec<String>,
    /// PgBouncer's `userlist.txt`, read at each login (an edit takes effect at once).
    pub auth_file: Option<PathBuf>,
    /// How they authenticate.
    pub method: AdminAuthMethod,
}

impl AdminAccess {
    /// Whether `user` may use the console at all.
    pub fn allows(&self, user: &str) -> bool {
        self.users.is_empty() || self.users.iter().any(|u| u == user)
    }
}

/// Errors of the auth file: the reason, for the configuration error or the log.
pub fn read_auth_file(path: &Path) -> Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_userlist(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses PgBouncer's `userlist.txt`: per line `"user" "password"`, a `""` inside quotes is one
/// `"`, lines starting with `;` or `#` and blank lines are skipped, anything after the second
/// field is ignored. Errors name the line.
pub fn parse_userlist(text: &str) -> Result<HashMap<String, String>, String> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: expected \"user\" \"password\"", n + 1);
        let (user, rest) = quoted(line).ok_or_else(bad)?;
        let (password, _) = quoted(rest.trim_start()).ok_or_else(bad)?;
        users.insert(user, password);
    }
    Ok(users)
}

/// The quoted string at the start of `s` and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices().peekable();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if chars.peek().map(|&(_, c)| c) == Some('"') {
                chars.next();
                out.push('"');
            } else {
                return Some((out, &s[i + 2..]));
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// A SCRAM-SHA-256 secret: PostgreSQL's `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// The salt (raw bytes).
    pub salt: Vec<u8>,
    /// SHA-256 of the ClientKey (32 bytes).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key") (32 bytes).
    pub server_key: Vec<u8>,
}

impl ScramSecret {
    /// Parses a verifier as PostgreSQL stores it in `pg_authid.rolpassword`.
    pub fn parse(s: &str) -> Option<ScramSecret> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let secret = ScramSecret {
            iterations: iterations.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?,
            server_key: B64.decode(server).ok()?,
        };
        (secret.stored_key.len() == 32 && secret.server_key.len() == 32).then_some(secret)
    }

    /// The secret of a plain-text `password` with `salt` (SASLprep first, as PostgreSQL does; a
    /// password SASLprep refuses is used as it is).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let prepared = stringprep::saslprep(password)
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| password.to_string());
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN),
            salt,
            prepared.as_bytes(),
            &mut salted,
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: digest::digest(&digest::SHA256, client_key.as_ref())
                .as_ref()
                .to_vec(),
            server_key: hmac::sign(&key, b"Server Key").as_ref().to_vec(),
        }
    }
}

/// `n` random bytes from the OS.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SystemRandom reads getrandom(2); it fails only when the kernel cannot give randomness,
    // which leaves the bytes zero: a nonce that is merely predictable, never a wrong login.
    let _ = SystemRandom::new().fill(&mut b);
    b
}

/// Where a SCRAM exchange stands (server side).
#[derive(Debug)]
pub struct ScramServer {
    secret: ScramSecret,
    nonce: String,
    /// The client's first message without its GS2 header, and the GS2 header.
    client_first_bare: String,
    gs2_header: String,
    server_first: String,
}

/// Why a SCRAM exchange failed: a malformed message (the client's bug) or a wrong proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    /// The message does not follow RFC 5802; the text says what is wrong.
    Malformed(&'static str),
    /// The proof does not match the secret.
    WrongPassword,
}

impl ScramServer {
    /// Reads the client-first-message and answers the server-first-message. `server_nonce`: the
    /// printable random part the server adds to the client's nonce.
    pub fn start(
        secret: ScramSecret,
        client_first: &[u8],
        server_nonce: &str,
    ) -> Result<(ScramServer, String), ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // GS2 header: `n,,` (no channel binding) or `y,,` (client supports it, server did not
        // offer it); `p=` asks for channel binding, which is not offered.
        let (cbind, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        if !matches!(cbind, "n" | "y") {
            return Err(ScramError::Malformed(
                "channel binding is not supported by the admin console",
            ));
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identities are not supported",
            ));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("no client nonce"))?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        let state = ScramServer {
            secret,
            nonce,
            client_first_bare: bare.to_string(),
            gs2_header: format!("{cbind},{authzid},"),
            server_first: server_first.clone(),
        };
        Ok((state, server_first))
    }

    /// Checks the client-final-message; returns the server-final-message (`v=<signature>`).
    pub fn finish(&self, client_final: &[u8]) -> Result<String, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding does not match"));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::Malformed("the nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("the proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::WrongPassword);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let stored = hmac::Key::new(hmac::HMAC_SHA256, &self.secret.stored_key);
        let signature = hmac::sign(&stored, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(signature.as_ref())
            .map(|(p, s)| p ^ s)
            .collect();
        let computed = digest::digest(&digest::SHA256, &client_key);
        if !bool::from(computed.as_ref().ct_eq(&self.secret.stored_key)) {
            return Err(ScramError::WrongPassword);
        }
        let server = hmac::Key::new(hmac::HMAC_SHA256, &self.secret.server_key);
        let server_signature = hmac::sign(&server, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature.as_ref())))
    }
}

/// md5 of `data` as 32 lowercase hex digits.
fn md5_hex(data: &[u8]) -> String {
    use md5::Digest as _;
    let d = md5::Md5::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a client answers to an md5 challenge with `salt` when its password is stored as
/// `stored` (`md5` + md5(password + user), PostgreSQL's format; a plain-text `stored` is hashed
/// with `user` first): `md5` + md5(md5hex + salt).
pub fn md5_expected(stored: &str, user: &str, salt: [u8; 4]) -> String {
    let inner = match stored.strip_prefix("md5").filter(|h| h.len() == 32) {
        Some(hex) => hex.to_string(),
        None => md5_hex(format!("{stored}{user}").as_bytes()),
    };
    let mut data = inner.into_bytes();
    data.extend_from_slice(&salt);
    format!("md5{}", md5_hex(&data))
}

/// How a user's password is checked, from the method and the file's entry.
enum Exchange {
    Scram(ScramSecret),
    Md5(String),
    /// No usable entry: a SCRAM exchange with a random secret, which fails at its end.
    Mock,
}

fn exchange_for(access: &AdminAccess, entry: Option<&str>) -> Exchange {
    let Some(stored) = entry else {
        return Exchange::Mock;
    };
    let is_md5 = stored.starts_with("md5") && stored.len() == 35;
    if let Some(secret) = ScramSecret::parse(stored) {
        return Exchange::Scram(secret);
    }
    match access.method {
        AdminAuthMethod::Md5 => Exchange::Md5(stored.to_string()),
        // An md5 hash cannot answer SCRAM.
        _ if is_md5 => Exchange::Mock,
        _ => Exchange::Scram(ScramSecret::from_password(
            stored,
            &random_bytes::<16>(),
            PLAIN_ITERATIONS,
        )),
    }
}

/// Authenticates `user` on `socket` (after the StartupMessage, before AuthenticationOk).
/// `buf` holds bytes already read. `Ok(())`: the caller sends AuthenticationOk; `Err(reason)`:
/// the client got `FATAL 28P01` (or 08P01 for a protocol error) and the reason is for the log.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut S,
    buf: &mut BytesMut,
    access: &AdminAccess,
    user: &str,
) -> Result<(), String> {
    if access.method == AdminAuthMethod::Trust {
        if access.allows(user) {
            return Ok(());
        }
        let reason = format!("user {user:?} is not in praetor.proxy.admin_users");
        fatal(socket, SqlState::INVALID_PASSWORD, &not_allowed(user)).await;
        return Err(reason);
    }
    let entries = match &access.auth_file {
        Some(path) => read_auth_file(path),
        None => Err("no praetor.proxy.auth_file".to_string()),
    };
    let (exchange, why) = match &entries {
        Err(e) => (Exchange::Mock, format!("cannot read the auth file: {e}")),
        Ok(_) if !access.allows(user) => (
            Exchange::Mock,
            format!("user {user:?} is not in praetor.proxy.admin_users"),
        ),
        Ok(map) => match map.get(user) {
            None => (
                Exchange::Mock,
                format!("user {user:?} is not in the auth file"),
            ),
            Some(stored) => (exchange_for(access, Some(stored)), "wrong password".into()),
        },
    };
    let result = match exchange {
        Exchange::Md5(stored) => run_md5(socket, buf, user, &stored).await,
        Exchange::Scram(secret) => run_scram(socket, buf, secret).await.map(|_| true),
        Exchange::Mock => {
            let secret = ScramSecret {
                iterations: PLAIN_ITERATIONS,
                salt: random_bytes::<16>().to_vec(),
                stored_key: random_bytes::<32>().to_vec(),
                server_key: random_bytes::<32>().to_vec(),
            };
            run_scram(socket, buf, secret).await.map(|_| false)
        }
    };
    match result {
        Ok(true) => Ok(()),
        Ok(false) => {
            fatal(socket, SqlState::INVALID_PASSWORD, &not_allowed(user)).await;
            Err(why)
        }
        Err(Failure::Wrong) => {
            fatal(socket, SqlState::INVALID_PASSWORD, &not_allowed(user)).await;
            Err(why)
        }
        Err(Failure::Protocol(m)) => {
            fatal(socket, SqlState::PROTOCOL_VIOLATION, &m).await;
            Err(m)
        }
        Err(Failure::Gone) => Err("the client left during authentication".into()),
    }
}

/// PostgreSQL's message for every failed password login.
fn not_allowed(user: &str) -> String {
    format!("password authentication failed for user \"{user}\"")
}

enum Failure {
    Wrong,
    Protocol(String),
    Gone,
}

async fn fatal<S: AsyncWrite + Unpin>(socket: &mut S, code: SqlState, message: &str) {
    let mut out = BytesMut::new();
    encode_error_response(&mut out, Severity::Fatal, code, message);
    let _ = socket.write_all(&out).await;
}

async fn send<S: AsyncWrite + Unpin>(socket: &mut S, out: &BytesMut) -> Result<(), Failure> {
    socket.write_all(out).await.map_err(|_| Failure::Gone)
}

/// Reads the client's next PasswordMessage/SASL message (`p`) and returns its body.
async fn read_password<S: AsyncRead + Unpin>(
    socket: &mut S,
    buf: &mut BytesMut,
) -> Result<BytesMut, Failure> {
    loop {
        match FrontendHeader::peek(buf, MAX_AUTH_MESSAGE) {
            Ok(Some(h)) if buf.len() >= h.frame_len => {
                if h.tag != PASSWORD {
                    return Err(Failure::Protocol(format!(
                        "expected a password message, got {:?}",
                        h.tag as char
                    )));
                }
                let mut frame = buf.split_to(h.frame_len);
                frame.advance(5);
                return Ok(frame);
            }
            Ok(_) => {}
            Err(e) => return Err(Failure::Protocol(e.to_string())),
        }
        match socket.read_buf(buf).await {
            Ok(n) if n > 0 => {}
            _ => return Err(Failure::Gone),
        }
    }
}

async fn run_md5<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut S,
    buf: &mut BytesMut,
    user: &str,
    stored: &str,
) -> Result<bool, Failure> {
    let salt = random_bytes::<4>();
    let mut out = BytesMut::new();
    encode_message(&mut out, b'R', |b| {
        b.put_u32(5);
        b.put_slice(&salt);
    });
    send(socket, &out).await?;
    let body = read_password(socket, buf).await?;
    let answer = body.strip_suffix(&[0]).unwrap_or(&body);
    let expected = md5_expected(stored, user, salt);
    if bool::from(answer.ct_eq(expected.as_bytes())) {
        Ok(true)
    } else {
        Err(Failure::Wrong)
    }
}

async fn run_scram<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut S,
    buf: &mut BytesMut,
    secret: ScramSecret,
) -> Result<(), Failure> {
    let mut out = BytesMut::new();
    encode_message(&mut out, b'R', |b| {
        b.put_u32(10);
        b.put_slice(SCRAM_SHA_256.as_bytes());
        b.put_u8(0);
        b.put_u8(0);
    });
    send(socket, &out).await?;
    // SASLInitialResponse: mechanism, int32 length (-1: none), data.
    let mut body = read_password(socket, buf).await?;
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| Failure::Protocol("malformed SASLInitialResponse".into()))?;
    let mechanism = body.split_to(nul);
    body.advance(1);
    if &mechanism[..] != SCRAM_SHA_256.as_bytes() {
        return Err(Failure::Protocol(
            "the admin console offers only SCRAM-SHA-256".into(),
        ));
    }
    if body.len() < 4 {
        return Err(Failure::Protocol("malformed SASLInitialResponse".into()));
    }
    let len = body.get_i32();
    if len < 0 || len as usize != body.len() {
        return Err(Failure::Protocol("malformed SASLInitialResponse".into()));
    }
    let server_nonce = B64.encode(random_bytes::<18>());
    let (state, server_first) = ScramServer::start(secret, &body, &server_nonce)
        .map_err(|e| Failure::Protocol(format!("SCRAM: {e:?}")))?;
    out.clear();
    encode_message(&mut out, b'R', |b| {
        b.put_u32(11);
        b.put_slice(server_first.as_bytes());
    });
    send(socket, &out).await?;
    let body = read_password(socket, buf).await?;
    let server_final = match state.finish(&body) {
        Ok(f) => f,
        Err(ScramError::WrongPassword) => return Err(Failure::Wrong),
        Err(ScramError::Malformed(m)) => return Err(Failure::Protocol(format!("SCRAM: {m}"))),
    };
    out.clear();
    encode_message(&mut out, b'R', |b| {
        b.put_u32(12);
        b.put_slice(server_final.as_bytes());
    });
    send(socket, &out).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    #[test]
    fn userlist_lines_parse_as_pgbouncer_writes_them() {
        let users = parse_userlist(
            "; comment\n\"admin\" \"se\"\"cret\"\n\n\"ops\"   \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" extra\n",
        )
        .unwrap();
        assert_eq!(users["admin"], "se\"cret");
        assert!(users["ops"].starts_with("md5"));
        assert!(parse_userlist("admin secret\n")
            .unwrap_err()
            .contains("line 1"));
    }

    /// A whole exchange against postgres-protocol's client (tokio-postgres's).
    fn scram_login(secret: ScramSecret, password: &str) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(secret, client.message(), "servernonce")?;
        client
            .update(first.as_bytes())
            .expect("server-first parses");
        let last = server.finish(client.message())?;
        client
            .finish(last.as_bytes())
            .expect("the client accepts the server's signature");
        Ok(())
    }

    #[test]
    fn scram_accepts_the_password_and_refuses_another() {
        let secret = ScramSecret::from_password("s3cret", b"0123456789abcdef", 4096);
        assert_eq!(scram_login(secret.clone(), "s3cret"), Ok(()));
        assert_eq!(scram_login(secret, "wrong"), Err(ScramError::WrongPassword));
    }

    #[test]
    fn postgres_verifiers_parse_and_verify() {
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        let secret = ScramSecret::parse(&verifier).expect("PostgreSQL's format");
        assert_eq!(secret.iterations, 4096);
        assert_eq!(scram_login(secret, "pw"), Ok(()));
        assert!(ScramSecret::parse("SCRAM-SHA-256$x:y$z").is_none());
    }

    #[test]
    fn md5_answers_match_libpq() {
        let salt = [1, 2, 3, 4];
        let libpq = postgres_protocol::authentication::md5_hash(b"admin", b"pw", salt);
        assert_eq!(md5_expected("pw", "admin", salt), libpq);
        let stored = postgres_protocol::password::md5(b"pw", "admin");
        assert_eq!(md5_expected(&stored, "admin", salt), libpq);
    }

    #[test]
    fn the_method_picks_the_exchange() {
        let scram = AdminAccess::default();
        assert!(matches!(
            exchange_for(&scram, Some("pw")),
            Exchange::Scram(_)
        ));
        let md5 = "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        assert!(matches!(exchange_for(&scram, Some(md5)), Exchange::Mock));
        assert!(matches!(exchange_for(&scram, None), Exchange::Mock));
        let m = AdminAccess {
            method: AdminAuthMethod::Md5,
            ..AdminAccess::default()
        };
        assert!(matches!(exchange_for(&m, Some(md5)), Exchange::Md5(_)));
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        assert!(matches!(
            exchange_for(&m, Some(&verifier)),
            Exchange::Scram(_)
        ));
    }
}
