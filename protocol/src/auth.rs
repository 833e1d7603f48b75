//! Authenticating to a server with a password the proxy holds: the client side of PostgreSQL's
//! cleartext, MD5 and SCRAM-SHA-256 exchanges, as a sans-I/O machine.
//!
//! The read-write and read-only ports never need this: they relay the client's own exchange. The
//! auto port opens more than one server connection per client (leader and replica, and again after a
//! switchover), which a relayed exchange cannot do. By default it authenticates the client itself
//! with SCRAM-SHA-256 ([`crate::scram`]) and logs in to servers with the client's recovered SCRAM
//! keys ([`Credential::Scram`]); with `auth_type: cleartext` (TLS clients only) it asks the client
//! for its password once and authenticates every connection with it ([`Credential::Password`]).
//! SCRAM runs without channel binding (the proxy's TLS connection to the server is not the
//! client's).
//!
//! Feed [`PasswordAuth::step`] each Authentication message body the server sends; it appends the
//! answer (if any) to a buffer and says whether the exchange is over.

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;

use crate::scram::{ScramKeyClient, ScramKeys};

/// What the proxy authenticates to servers with, for one client.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The client's password (`auth_type: cleartext`, or a cleartext `auth_file` entry): answers
    /// cleartext, MD5 and SCRAM requests.
    Password(Vec<u8>),
    /// The client's SCRAM keys recovered from its proof: answers SCRAM-SHA-256 only, and only
    /// servers that store the same secret. Boxed: 64 bytes a session keeps for its lifetime.
    Scram(Box<ScramKeys>),
    /// The user's MD5 hash as PostgreSQL stores it (`md5` + 32 lowercase hex digits of
    /// md5(password + user), an `auth_file` entry): answers MD5 requests only, with
    /// `md5` + md5(hex digits + salt), which is what a client computes from the password (PgBouncer
    /// answers with such an entry the same way).
    Md5Hash(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Password(_) => f.write_str("Password(********)"),
            Credential::Scram(_) => f.write_str("Scram(********)"),
            Credential::Md5Hash(_) => f.write_str("Md5Hash(********)"),
        }
    }
}

/// An Authentication message from the server (`R`), decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    /// `0`: authentication succeeded.
    Ok,
    /// `3`: send the password in clear text.
    Cleartext,
    /// `5`: send `md5(md5(password + user) + salt)`.
    Md5 {
        /// The 4-byte salt.
        salt: [u8; 4],
    },
    /// `10`: SASL, with the mechanisms the server offers.
    Sasl {
        /// Mechanism names (`SCRAM-SHA-256`, `SCRAM-SHA-256-PLUS`).
        mechanisms: Vec<&'a str>,
    },
    /// `11`: SASL challenge data.
    SaslContinue(&'a [u8]),
    /// `12`: SASL outcome data (the server's signature).
    SaslFinal(&'a [u8]),
    /// Any other method (Kerberos, GSSAPI, SSPI): the proxy cannot answer it.
    Other(u32),
}

/// Why authenticating with a password failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The Authentication message is not well formed.
    #[error("malformed authentication request: {0}")]
    Malformed(&'static str),
    /// The server asked for a method the proxy does not implement.
    #[error("the server asked for authentication method {0}, which the proxy cannot perform")]
    Unsupported(u32),
    /// The server asked for a password and the client gave none.
    #[error("the server asked for a password and the client gave none")]
    NoPassword,
    /// The server offered only SASL mechanisms other than SCRAM-SHA-256.
    #[error("the server offered no SASL mechanism the proxy supports")]
    NoMechanism,
    /// The SCRAM exchange failed (a message out of order, or the server's signature is wrong).
    #[error("SCRAM exchange failed: {0}")]
    Scram(String),
    /// The server asked for a password (`cleartext` or `md5` in its pg_hba.conf) and the proxy
    /// holds only the client's SCRAM keys, which cannot answer that.
    #[error(
        "the server asks for {0} authentication and the proxy holds only the client's SCRAM keys: \
         use scram-sha-256 in the server's pg_hba.conf (and password_encryption), or give the \
         user's password in auth_file"
    )]
    ScramOnly(&'static str),
    /// The server asked for something other than md5 and the proxy holds only the user's MD5
    /// hash, which answers md5 alone.
    #[error(
        "the server asks for {0} authentication and the proxy holds only the user's MD5 hash: \
         give the user's password or SCRAM secret in auth_file, or use md5 in the server's \
         pg_hba.conf"
    )]
    Md5HashOnly(&'static str),
}

impl<'a> AuthRequest<'a> {
    /// Decodes an Authentication message body (`code: u32 | data`).
    pub fn decode(body: &'a [u8]) -> Result<AuthRequest<'a>, AuthError> {
        let (code, data) = body
            .split_first_chunk::<4>()
            .ok_or(AuthError::Malformed("shorter than its code"))?;
        Ok(match u32::from_be_bytes(*code) {
            0 => AuthRequest::Ok,
            3 => AuthRequest::Cleartext,
            5 => {
                let salt: [u8; 4] = data
                    .try_into()
                    .map_err(|_| AuthError::Malformed("MD5 salt is not 4 bytes"))?;
                AuthRequest::Md5 { salt }
            }
            10 => {
                let mut mechanisms = Vec::new();
                let mut rest = data;
                loop {
                    let end = rest
                        .iter()
                        .position(|&b| b == 0)
                        .ok_or(AuthError::Malformed("SASL mechanism list not terminated"))?;
                    if end == 0 {
                        break;
                    }
                    let m = std::str::from_utf8(&rest[..end])
                        .map_err(|_| AuthError::Malformed("SASL mechanism is not UTF-8"))?;
                    mechanisms.push(m);
                    rest = &rest[end + 1..];
                }
                AuthRequest::Sasl { mechanisms }
            }
            11 => AuthRequest::SaslContinue(data),
            12 => AuthRequest::SaslFinal(data),
            other => AuthRequest::Other(other),
        })
    }
}

/// The answer to an md5 challenge with `salt` from a stored MD5 hash (`md5` + 32 hex digits):
/// `md5` + md5(hex digits + salt), PostgreSQL's second round (`pg_md5_encrypt` with the salt).
fn md5_salted(stored: &str, salt: [u8; 4]) -> Result<String, AuthError> {
    use md5::Digest as _;
    let hex = stored
        .strip_prefix("md5")
        .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or(AuthError::Malformed(
            "the stored MD5 hash is not md5 + 32 hex digits",
        ))?;
    let mut data = hex.to_ascii_lowercase().into_bytes();
    data.extend_from_slice(&salt);
    let digest = md5::Md5::digest(&data);
    let mut out = String::with_capacity(35);
    out.push_str("md5");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

/// Where a [`PasswordAuth`] exchange stands after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthProgress {
    /// An answer was appended; wait for the server's next Authentication message.
    Continue,
    /// The server said AuthenticationOk: the exchange is over.
    Done,
}

/// The client side of password authentication with a known user name and password.
pub struct PasswordAuth {
    user: String,
    credential: Option<Credential>,
    scram: Option<ScramSha256>,
    key_client: Option<ScramKeyClient>,
}

impl std::fmt::Debug for PasswordAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordAuth")
            .field("user", &self.user)
            .field("credential", &self.credential)
            .finish()
    }
}

impl PasswordAuth {
    /// An exchange for `user`, with the client's `password` if it gave one (a server that trusts the
    /// proxy's address never asks).
    pub fn new(user: &str, password: Option<&[u8]>) -> PasswordAuth {
        PasswordAuth::with_credential(user, password.map(|p| Credential::Password(p.to_vec())))
    }

    /// An exchange for `user` with `credential` (`None`: only a server that asks for nothing).
    pub fn with_credential(user: &str, credential: Option<Credential>) -> PasswordAuth {
        PasswordAuth {
            user: user.to_string(),
            credential,
            scram: None,
            key_client: None,
        }
    }

    fn password(&self, method: &'static str) -> Result<&[u8], AuthError> {
        match &self.credential {
            None => Err(AuthError::NoPassword),
            Some(Credential::Password(p)) => Ok(p),
            Some(Credential::Scram(_)) => Err(AuthError::ScramOnly(method)),
            Some(Credential::Md5Hash(_)) => Err(AuthError::Md5HashOnly(method)),
        }
    }

    /// Answers the server's Authentication message `body`, appending the response message to `out`.
    pub fn step(&mut self, body: &[u8], out: &mut BytesMut) -> Result<AuthProgress, AuthError> {
        match AuthRequest::decode(body)? {
            AuthRequest::Ok => return Ok(AuthProgress::Done),
            AuthRequest::Cleartext => {
                let pw = self.password("cleartext password")?;
                frontend::password_message(pw, out).map_err(|e| AuthError::Scram(e.to_string()))?;
            }
            AuthRequest::Md5 { salt } => {
                let hash = match &self.credential {
                    Some(Credential::Md5Hash(stored)) => md5_salted(stored, salt)?,
                    _ => md5_hash(self.user.as_bytes(), self.password("md5")?, salt),
                };
                frontend::password_message(hash.as_bytes(), out)
                    .map_err(|e| AuthError::Scram(e.to_string()))?;
            }
            AuthRequest::Sasl { mechanisms } => {
                if !mechanisms.contains(&SCRAM_SHA_256) {
                    return Err(AuthError::NoMechanism);
                }
                if let Some(Credential::Scram(keys)) = &self.credential {
                    let client = ScramKeyClient::new((**keys).clone());
                    frontend::sasl_initial_response(SCRAM_SHA_256, &client.client_first(), out)
                        .map_err(|e| AuthError::Scram(e.to_string()))?;
                    self.key_client = Some(client);
                    return Ok(AuthProgress::Continue);
                }
                let scram =
                    ScramSha256::new(self.password("SCRAM")?, ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), out)
                    .map_err(|e| AuthError::Scram(e.to_string()))?;
                self.scram = Some(scram);
            }
            AuthRequest::SaslContinue(data) if self.key_client.is_some() => {
                let client = self.key_client.as_mut().expect("checked");
                let answer = client
                    .server_first(data)
                    .map_err(|e| AuthError::Scram(e.to_string()))?;
                frontend::sasl_response(&answer, out)
                    .map_err(|e| AuthError::Scram(e.to_string()))?;
            }
            AuthRequest::SaslFinal(data) if self.key_client.is_some() => {
                let client = self.key_client.as_mut().expect("checked");
                client
                    .server_final(data)
                    .map_err(|e| AuthError::Scram(e.to_string()))?;
            }
            AuthRequest::SaslContinue(data) => {
                let scram = self.scram.as_mut().ok_or(AuthError::Scram(
                    "challenge before the initial response".into(),
                ))?;
                scram
                    .update(data)
                    .map_err(|e| AuthError::Scram(e.to_string()))?;
                frontend::sasl_response(scram.message(), out)
                    .map_err(|e| AuthError::Scram(e.to_string()))?;
            }
            AuthRequest::SaslFinal(data) => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or(AuthError::Scram("outcome before the exchange".into()))?;
                scram
                    .finish(data)
                    .map_err(|e| AuthError::Scram(e.to_string()))?;
            }
            AuthRequest::Other(code) => return Err(AuthError::Unsupported(code)),
        }
        Ok(AuthProgress::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::split_frame;
    use crate::traces;

    fn body_of(hex: &str) -> Vec<u8> {
        let mut buf = BytesMut::from(&traces::bytes(hex)[..]);
        split_frame(&mut buf).unwrap().unwrap().body().to_vec()
    }

    #[test]
    fn requests_decode_from_recorded_messages() {
        assert_eq!(
            AuthRequest::decode(&body_of(traces::MD5_CHALLENGE)),
            Ok(AuthRequest::Md5 {
                salt: [0xb2, 0x8d, 0xae, 0xda]
            })
        );
        assert_eq!(
            AuthRequest::decode(&body_of(traces::SCRAM_SASL)),
            Ok(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256"]
            })
        );
        assert_eq!(AuthRequest::decode(&[0, 0, 0, 0]), Ok(AuthRequest::Ok));
        assert_eq!(
            AuthRequest::decode(&[0, 0, 0, 7]),
            Ok(AuthRequest::Other(7))
        );
        assert!(AuthRequest::decode(&[0, 0]).is_err());
        assert!(AuthRequest::decode(&[0, 0, 0, 5, 1]).is_err());
        assert!(AuthRequest::decode(&[0, 0, 0, 10, b'x']).is_err());
    }

    #[test]
    fn md5_answer_is_postgres_hash_of_user_password_and_salt() {
        let mut auth = PasswordAuth::new("md5user", Some(b"md5secret"));
        let mut out = BytesMut::new();
        let step = auth
            .step(&body_of(traces::MD5_CHALLENGE), &mut out)
            .unwrap();
        assert_eq!(step, AuthProgress::Continue);
        let f = split_frame(&mut out).unwrap().unwrap();
        assert_eq!(f.tag, b'p');
        let expected = md5_hash(b"md5user", b"md5secret", [0xb2, 0x8d, 0xae, 0xda]);
        assert_eq!(f.body(), [expected.as_bytes(), b"\0"].concat());
        assert_eq!(auth.step(&[0, 0, 0, 0], &mut out), Ok(AuthProgress::Done));
    }

    #[test]
    fn a_stored_md5_hash_answers_md5_as_the_password_would_and_nothing_else() {
        use md5::Digest as _;
        let salt = [0xb2, 0x8d, 0xae, 0xda];
        // PostgreSQL's stored form: md5 + md5(password + user).
        let inner: String = md5::Md5::digest(b"md5secretmd5user")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut auth = PasswordAuth::with_credential(
            "md5user",
            Some(Credential::Md5Hash(format!("md5{inner}"))),
        );
        let mut out = BytesMut::new();
        let step = auth
            .step(&body_of(traces::MD5_CHALLENGE), &mut out)
            .unwrap();
        assert_eq!(step, AuthProgress::Continue);
        let f = split_frame(&mut out).unwrap().unwrap();
        let expected = md5_hash(b"md5user", b"md5secret", salt);
        assert_eq!(f.body(), [expected.as_bytes(), b"\0"].concat());
        // SCRAM and cleartext need more than the hash.
        let mut scram = PasswordAuth::with_credential(
            "md5user",
            Some(Credential::Md5Hash(format!("md5{inner}"))),
        );
        assert_eq!(
            scram.step(&body_of(traces::SCRAM_SASL), &mut out),
            Err(AuthError::Md5HashOnly("SCRAM"))
        );
        assert_eq!(
            scram.step(&[0, 0, 0, 3], &mut out),
            Err(AuthError::Md5HashOnly("cleartext password"))
        );
        let mut malformed =
            PasswordAuth::with_credential("u", Some(Credential::Md5Hash("md5zz".into())));
        assert!(malformed
            .step(&body_of(traces::MD5_CHALLENGE), &mut out)
            .is_err());
    }

    #[test]
    fn scram_starts_without_channel_binding_and_needs_a_password() {
        let mut auth = PasswordAuth::new("scramuser", Some(b"x"));
        let mut out = BytesMut::new();
        let offered = b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        auth.step(offered, &mut out).unwrap();
        let f = split_frame(&mut out).unwrap().unwrap();
        assert!(f.body().starts_with(b"SCRAM-SHA-256\0"));
        // gs2 header "n,," = client does not support channel binding.
        assert!(f.body()[14 + 4..].starts_with(b"n,,n="), "{:?}", f.body());

        let mut none = PasswordAuth::new("u", None);
        assert_eq!(
            none.step(&body_of(traces::SCRAM_SASL), &mut out),
            Err(AuthError::NoPassword)
        );
        assert_eq!(
            none.step(&[0, 0, 0, 0], &mut out),
            Ok(AuthProgress::Done),
            "trust needs nothing"
        );
        let mut only_plus = PasswordAuth::new("u", Some(b"x"));
        assert_eq!(
            only_plus.step(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0\0", &mut out),
            Err(AuthError::NoMechanism)
        );
        assert!(format!("{only_plus:?}").contains("********"));
    }
}
