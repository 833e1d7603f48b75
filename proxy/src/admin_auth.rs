//! Who may use the admin console, and how they prove it: PgBouncer's `admin_users` checked against
//! an `auth_file` in PgBouncer's `userlist.txt` format, with SCRAM-SHA-256 (RFC 5802 and RFC 7677,
//! as PostgreSQL's `auth-scram.c` runs it) or md5 (PostgreSQL's `md5` method), or `trust` when the
//! configuration says so explicitly.
//!
//! The file is the auto port's (`praetor.proxy.auth_file`, read by [`crate::auth::read_auth_file`]
//! into [`Secret`]s), and the SCRAM exchange is the auto port's ([`praetor_protocol::ScramServer`],
//! whose recovered client keys the console ignores). This module adds md5 (admin-only), the
//! `admin_users` check and the messages on the socket; `md-5` and `subtle` (constant-time
//! comparison) do the md5 part.
//!
//! [`md5_expected`] is sans-I/O; [`authenticate`] runs the exchange on a socket. A user that is
//! not in `admin_users` or not in the file goes through the same exchange with a mock secret
//! ([`ScramSecret::mock`]) and fails at its end with the same message, as PostgreSQL does, so the
//! console does not tell which user names exist.

use std::path::PathBuf;

use bytes::{Buf, BufMut, BytesMut};
use praetor_protocol::frontend::{
    encode_auth_sasl_continue, encode_auth_sasl_final, encode_auth_sasl_scram, encode_message,
    sasl_initial_response,
};
use praetor_protocol::{
    encode_error_response, ScramError, ScramSecret, ScramServer, Severity, SqlState,
};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::auth::{password_failed, read_password_message, PasswordReadError, Secret};

/// The mechanism name PostgreSQL announces.
const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

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
    /// md5 against a plain-text password or an `md5` hash of the file.
    Md5(String),
    /// No usable entry: a SCRAM exchange with a mock secret, which fails at its end.
    Mock,
}

fn exchange_for(access: &AdminAccess, entry: Option<&Secret>) -> Exchange {
    match (entry, access.method) {
        (None, _) => Exchange::Mock,
        (Some(Secret::Scram(secret)), _) => Exchange::Scram(secret.clone()),
        (Some(Secret::Md5(stored) | Secret::Password(stored)), AdminAuthMethod::Md5) => {
            Exchange::Md5(stored.clone())
        }
        // An md5 hash cannot answer SCRAM.
        (Some(Secret::Md5(_)), _) => Exchange::Mock,
        (Some(Secret::Password(p)), _) => Exchange::Scram(ScramSecret::from_password(p.as_bytes())),
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
        fatal(socket, SqlState::INVALID_PASSWORD, &password_failed(user)).await;
        return Err(reason);
    }
    let entries = match &access.auth_file {
        Some(path) => crate::auth::read_auth_file(path).map_err(|e| e.to_string()),
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
            Some(secret) => (exchange_for(access, Some(secret)), "wrong password".into()),
        },
    };
    let result = match exchange {
        Exchange::Md5(stored) => run_md5(socket, buf, user, &stored).await,
        Exchange::Scram(secret) => run_scram(socket, buf, secret).await.map(|_| true),
        Exchange::Mock => run_scram(socket, buf, ScramSecret::mock())
            .await
            .map(|_| false),
    };
    match result {
        Ok(true) => Ok(()),
        Ok(false) => {
            fatal(socket, SqlState::INVALID_PASSWORD, &password_failed(user)).await;
            Err(why)
        }
        Err(Failure::Wrong) => {
            fatal(socket, SqlState::INVALID_PASSWORD, &password_failed(user)).await;
            Err(why)
        }
        Err(Failure::Protocol(m)) => {
            fatal(socket, SqlState::PROTOCOL_VIOLATION, &m).await;
            Err(m)
        }
        Err(Failure::Gone) => Err("the client left during authentication".into()),
    }
}

/// How an exchange failed ([`run_md5`]).
pub(crate) enum Failure {
    /// Wrong password.
    Wrong,
    /// The client broke the protocol (the message for its FATAL 08P01).
    Protocol(String),
    /// The client left.
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
    let mut frame = read_password_message(socket, buf)
        .await
        .map_err(|e| match e {
            PasswordReadError::Protocol(_, message) => Failure::Protocol(message),
            PasswordReadError::Closed | PasswordReadError::Io(_) => Failure::Gone,
        })?;
    frame.advance(5);
    Ok(frame)
}

/// PostgreSQL's md5 exchange with `user` on `socket` against `stored` (an `md5` hash or a
/// plain-text password, [`md5_expected`]): a random 4-byte salt in AuthenticationMD5Password, the
/// client's PasswordMessage compared in constant time. `Ok(true)`: the right answer; also used by
/// the auto port's `auth_type: md5` ([`crate::auth::AuthType::Md5`]).
pub(crate) async fn run_md5<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut S,
    buf: &mut BytesMut,
    user: &str,
    stored: &str,
) -> Result<bool, Failure> {
    let salt: [u8; 4] = rand::random();
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

/// The SCRAM-SHA-256 exchange of the auto port ([`ScramServer`]) on the console's socket; the
/// client keys it recovers are not needed here.
async fn run_scram<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut S,
    buf: &mut BytesMut,
    secret: ScramSecret,
) -> Result<(), Failure> {
    let scram = |e: ScramError| match e {
        ScramError::WrongProof => Failure::Wrong,
        e => Failure::Protocol(format!("SCRAM: {e}")),
    };
    let mut out = BytesMut::new();
    encode_auth_sasl_scram(&mut out);
    send(socket, &out).await?;
    let body = read_password(socket, buf).await?;
    let (mechanism, data) =
        sasl_initial_response(&body).map_err(|e| Failure::Protocol(e.to_string()))?;
    if mechanism != SCRAM_SHA_256 {
        return Err(Failure::Protocol(
            "the admin console offers only SCRAM-SHA-256".into(),
        ));
    }
    let mut server = ScramServer::new(secret);
    let server_first = server.client_first(data).map_err(scram)?;
    out.clear();
    encode_auth_sasl_continue(&mut out, &server_first);
    send(socket, &out).await?;
    let body = read_password(socket, buf).await?;
    let (_keys, server_final) = server.client_final(&body).map_err(scram)?;
    out.clear();
    encode_auth_sasl_final(&mut out, &server_final);
    send(socket, &out).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let plain = Secret::Password("pw".into());
        assert!(matches!(
            exchange_for(&scram, Some(&plain)),
            Exchange::Scram(_)
        ));
        let md5 = Secret::parse("md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        assert!(matches!(exchange_for(&scram, Some(&md5)), Exchange::Mock));
        assert!(matches!(exchange_for(&scram, None), Exchange::Mock));
        let m = AdminAccess {
            method: AdminAuthMethod::Md5,
            ..AdminAccess::default()
        };
        assert!(matches!(exchange_for(&m, Some(&md5)), Exchange::Md5(_)));
        assert!(matches!(exchange_for(&m, Some(&plain)), Exchange::Md5(_)));
        let verifier = Secret::parse(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
        assert!(matches!(
            exchange_for(&m, Some(&verifier)),
            Exchange::Scram(_)
        ));
    }
}
