//! What the read-write port keeps of the login it relays, so that a session that logged in with a
//! password can move to a new leader in a switchover ([`crate::rw`]). The read-only port keeps the
//! same, for the admin console's `RECONNECT` ([`crate::rw::should_reconnect`]).
//!
//! The read-write port passes authentication through: the server checks the client (its
//! `pg_hba.conf`, password expiry, any method), and the proxy only watches the messages go by
//! ([`LoginWatch`]). When the proxy has the user's secret, from `auth_file` or from `auth_query` run
//! as `auth_user` (the settings the auto port uses, [`crate::auth`]), [`relogin`] turns what went by
//! into what the auto port logs in to servers with ([`Credential`]):
//! - SCRAM-SHA-256: the client's `ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)`, checked
//!   against `StoredKey`, with the secret's `ServerKey`, checked against the server's signature
//!   ([`praetor_protocol::keys_from_relayed`]). They log in to any server storing the same secret,
//!   as a promoted replica does (`pg_authid` is replicated). A cleartext `auth_file` entry gives the
//!   password instead.
//! - md5: a cleartext `auth_file` entry, or an `md5...` hash as PostgreSQL stores it (answered
//!   as PgBouncer does: `md5` + md5(hash + salt), [`Credential::Md5Hash`]), used once the
//!   client's md5 answer shows it is the password the client logged in with. A SCRAM secret
//!   cannot answer md5.
//! - `password` (cleartext) method: a cleartext `auth_file` entry. The client's own password goes by
//!   unread and is never kept.
//!
//! Without a secret (plain passthrough), nothing is kept, and at a switchover the session ends with
//! `57P01` and a message saying that the proxy holds no credentials for the user and how to give
//! it some. The proxy keeps only the credential (for SCRAM the client's keys, never a password the
//! client sent); the exchange's messages are dropped once [`relogin`] ran, right after the login.
//!
//! Why recover the keys from the relayed exchange rather than authenticate read-write clients in
//! the proxy as the auto port does: the login stays the server's (its `pg_hba.conf` rules,
//! `VALID UNTIL`, md5 and cleartext methods, users the proxy has no secret for: all log in exactly
//! as before), a missing or stale secret costs a session its move at a switchover and never its
//! login, and the proxy runs no PBKDF2 per login. The price: the proxy needs the same secret the
//! server stores (the same salt and iteration count), which is what `auth_query` returns.

use bytes::BytesMut;
use praetor_protocol::frontend::{cleartext_password, sasl_initial_response, PASSWORD};
use praetor_protocol::{keys_from_relayed, AuthRequest, Credential, MAX_STARTUP_PACKET_LEN};

use crate::admin_auth::md5_expected;
use crate::auth::Secret;

/// The only SASL mechanism the proxy follows (the server's `-PLUS` offer is removed on the way).
const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Where the relayed login stands.
#[derive(Default)]
enum Step {
    /// No password asked for (yet).
    #[default]
    Start,
    /// The server offered SASL; the client's SASLInitialResponse comes next.
    SaslOffered,
    /// A SCRAM-SHA-256 exchange: the four payloads, as they arrive.
    Scram {
        client_first: Vec<u8>,
        server_first: Option<Vec<u8>>,
        client_final: Option<Vec<u8>>,
        server_final: Option<Vec<u8>>,
    },
    /// An md5 challenge and, once sent, the client's answer (`md5` + 32 hex digits: a salted hash,
    /// not the password).
    Md5 {
        salt: [u8; 4],
        answer: Option<String>,
    },
    /// The `password` method: the client's password goes by unread.
    Cleartext,
    /// Something the proxy cannot log in with again; why.
    Unsupported(String),
}

/// Watches a relayed login: feed it the client's bytes ([`LoginWatch::on_client`]) and the
/// server's Authentication message bodies ([`LoginWatch::on_server_auth`]) until the server's
/// ReadyForQuery, then [`LoginWatch::finish`].
#[derive(Default)]
pub(crate) struct LoginWatch {
    /// Client bytes not yet framed (startup-phase messages are small: at most
    /// [`MAX_STARTUP_PACKET_LEN`]).
    client: BytesMut,
    step: Step,
}

/// The login, as far as logging in again cares. Its `Debug` shows no payload (a SCRAM proof with
/// the user's StoredKey gives the ClientKey).
#[derive(PartialEq, Eq)]
pub(crate) enum Exchange {
    /// The server asked for no password: another server of the same cluster will not either.
    NoPassword,
    /// A SCRAM-SHA-256 exchange, its payloads as sent (see [`keys_from_relayed`]).
    Scram {
        client_first: Vec<u8>,
        server_first: Vec<u8>,
        client_final: Vec<u8>,
        server_final: Vec<u8>,
    },
    /// An md5 challenge's salt and the client's answer.
    Md5 { salt: [u8; 4], answer: String },
    /// The `password` method.
    Cleartext,
    /// Anything else (another method, or messages the proxy could not follow); why.
    Unsupported(String),
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exchange::NoPassword => f.write_str("NoPassword"),
            Exchange::Scram { .. } => f.write_str("Scram(********)"),
            Exchange::Md5 { .. } => f.write_str("Md5(********)"),
            Exchange::Cleartext => f.write_str("Cleartext"),
            Exchange::Unsupported(why) => write!(f, "Unsupported({why:?})"),
        }
    }
}

impl Exchange {
    /// True when logging in again needs the user's secret.
    pub fn needs_secret(&self) -> bool {
        matches!(
            self,
            Exchange::Scram { .. } | Exchange::Md5 { .. } | Exchange::Cleartext
        )
    }
}

impl LoginWatch {
    fn give_up(&mut self, why: impl Into<String>) {
        if !matches!(self.step, Step::Unsupported(_)) {
            self.step = Step::Unsupported(why.into());
        }
    }

    /// Follows an Authentication message (`R`) body the server sent.
    pub fn on_server_auth(&mut self, body: &[u8]) {
        let request = match AuthRequest::decode(body) {
            Ok(r) => r,
            Err(e) => return self.give_up(e.to_string()),
        };
        let step = std::mem::take(&mut self.step);
        self.step = match (step, request) {
            (step, AuthRequest::Ok) => step,
            (Step::Unsupported(why), _) => Step::Unsupported(why),
            (_, AuthRequest::Cleartext) => Step::Cleartext,
            (_, AuthRequest::Md5 { salt }) => Step::Md5 { salt, answer: None },
            (_, AuthRequest::Sasl { .. }) => Step::SaslOffered,
            (
                Step::Scram {
                    client_first,
                    server_first: None,
                    ..
                },
                AuthRequest::SaslContinue(data),
            ) => Step::Scram {
                client_first,
                server_first: Some(data.to_vec()),
                client_final: None,
                server_final: None,
            },
            (
                Step::Scram {
                    client_first,
                    server_first: Some(server_first),
                    client_final: Some(client_final),
                    server_final: None,
                },
                AuthRequest::SaslFinal(data),
            ) => Step::Scram {
                client_first,
                server_first: Some(server_first),
                client_final: Some(client_final),
                server_final: Some(data.to_vec()),
            },
            (_, AuthRequest::Other(code)) => {
                Step::Unsupported(format!("authentication method {code}"))
            }
            (_, AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_)) => {
                Step::Unsupported("a SASL exchange the proxy could not follow".into())
            }
        };
    }

    /// Follows bytes the client sent during the login (relayed unchanged).
    pub fn on_client(&mut self, data: &[u8]) {
        if matches!(self.step, Step::Unsupported(_)) {
            return;
        }
        self.client.extend_from_slice(data);
        while self.client.len() >= 5 {
            let len = u32::from_be_bytes([
                self.client[1],
                self.client[2],
                self.client[3],
                self.client[4],
            ]) as usize;
            if !(4..=MAX_STARTUP_PACKET_LEN).contains(&len) {
                self.client.clear();
                return self.give_up("login messages the proxy could not follow");
            }
            if self.client.len() < 1 + len {
                return;
            }
            let frame = self.client.split_to(1 + len);
            if frame[0] == PASSWORD {
                self.on_password_message(&frame[5..]);
            }
        }
    }

    /// A PasswordMessage, SASLInitialResponse or SASLResponse body, read as the step expects.
    fn on_password_message(&mut self, body: &[u8]) {
        match &mut self.step {
            Step::SaslOffered => match sasl_initial_response(body) {
                Ok((SCRAM_SHA_256, data)) => {
                    self.step = Step::Scram {
                        client_first: data.to_vec(),
                        server_first: None,
                        client_final: None,
                        server_final: None,
                    }
                }
                Ok((mechanism, _)) => self.give_up(format!("SASL mechanism {mechanism}")),
                Err(e) => self.give_up(e.to_string()),
            },
            Step::Scram {
                server_first: Some(_),
                client_final: client_final @ None,
                ..
            } => *client_final = Some(body.to_vec()),
            Step::Md5 {
                answer: answer @ None,
                ..
            } => match cleartext_password(body) {
                Ok(a) => *answer = Some(a.to_string()),
                Err(e) => self.give_up(e.to_string()),
            },
            // The client's own password: relayed, not read.
            Step::Cleartext => {}
            Step::Unsupported(_) => {}
            _ => self.give_up("a password message out of turn"),
        }
    }

    /// What the login was, once the server said AuthenticationOk.
    pub fn finish(self) -> Exchange {
        match self.step {
            Step::Start => Exchange::NoPassword,
            Step::Scram {
                client_first,
                server_first: Some(server_first),
                client_final: Some(client_final),
                server_final: Some(server_final),
            } => Exchange::Scram {
                client_first,
                server_first,
                client_final,
                server_final,
            },
            Step::Md5 {
                salt,
                answer: Some(answer),
            } => Exchange::Md5 { salt, answer },
            Step::Cleartext => Exchange::Cleartext,
            Step::Unsupported(why) => Exchange::Unsupported(why),
            Step::SaslOffered | Step::Scram { .. } | Step::Md5 { .. } => {
                Exchange::Unsupported("a login the proxy could not follow to its end".into())
            }
        }
    }
}

/// How the proxy can log in to another server for a read-write client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Relogin {
    /// Without a password, as the client did.
    NoPassword,
    /// With this credential (what the auto port logs in with).
    With(Credential),
    /// It cannot: why, completing "this session cannot move to the new leader: ".
    Cannot(String),
}

impl Relogin {
    /// The credential to log in with (`None`: no password, or none to give).
    pub fn credential(&self) -> Option<Credential> {
        match self {
            Relogin::With(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// Why the proxy cannot log in again, if it cannot.
    pub fn cannot(&self) -> Option<&str> {
        match self {
            Relogin::Cannot(why) => Some(why),
            _ => None,
        }
    }
}

/// How to let sessions that log in with a password move.
const ENABLE: &str = "give the user's secret in praetor.proxy.auth_file, or set \
                      praetor.proxy.auth_user so the proxy reads it with auth_query";

/// The relogin rule: from the relayed `exchange` and the user's `secret` (as `auth_file` or
/// `auth_query` gives it; `None`: the proxy has none), what the proxy logs in to the next leader
/// with. Pure; see the module documentation for the rules per method.
pub(crate) fn relogin(exchange: Exchange, user: &str, secret: Option<&Secret>) -> Relogin {
    let cannot = |why: String| Relogin::Cannot(format!("it logged in with a password and {why}"));
    let (exchange, secret) = match (exchange, secret) {
        (Exchange::NoPassword, _) => return Relogin::NoPassword,
        (Exchange::Unsupported(why), _) => {
            return cannot(format!("the proxy cannot log in again for it ({why})"))
        }
        (_, None) => {
            return cannot(format!(
                "the proxy holds no credentials for user \"{user}\" ({ENABLE}, to let such \
                 sessions move)"
            ))
        }
        (e, Some(s)) => (e, s),
    };
    match (exchange, secret) {
        (Exchange::Scram { .. } | Exchange::Cleartext, Secret::Password(p)) => {
            Relogin::With(Credential::Password(p.clone().into_bytes()))
        }
        (
            Exchange::Scram {
                client_first,
                server_first,
                client_final,
                server_final,
            },
            Secret::Scram(s),
        ) => match keys_from_relayed(
            s,
            &client_first,
            &server_first,
            &client_final,
            &server_final,
        ) {
            Ok(keys) => Relogin::With(Credential::Scram(Box::new(keys))),
            Err(e) => cannot(format!(
                "the secret the proxy holds for user \"{user}\" does not match the server's ({e})"
            )),
        },
        (Exchange::Scram { .. }, Secret::Md5(_)) => cannot(format!(
            "the proxy holds only an MD5 hash for user \"{user}\", which cannot log in with \
             SCRAM: give its SCRAM secret or its password in praetor.proxy.auth_file"
        )),
        (Exchange::Md5 { salt, answer }, Secret::Password(p)) => {
            if md5_expected(p, user, salt) == answer {
                Relogin::With(Credential::Password(p.clone().into_bytes()))
            } else {
                cannot(format!(
                    "the password praetor.proxy.auth_file gives for user \"{user}\" is not the \
                     one the client logged in with"
                ))
            }
        }
        (Exchange::Md5 { salt, answer }, Secret::Md5(hash)) => {
            if md5_expected(hash, user, salt) == answer {
                Relogin::With(Credential::Md5Hash(hash.clone()))
            } else {
                cannot(format!(
                    "the MD5 hash praetor.proxy.auth_file gives for user \"{user}\" is not the \
                     one of the password the client logged in with"
                ))
            }
        }
        (Exchange::Md5 { .. }, _) => cannot(format!(
            "the server asks for md5, which the proxy answers only with a password or an MD5 \
             hash: give user \"{user}\"'s password or its md5 hash in praetor.proxy.auth_file, \
             or use scram-sha-256 in the server's pg_hba.conf"
        )),
        (Exchange::Cleartext, _) => cannot(format!(
            "the server asks for a cleartext password, which the proxy does not keep: give user \
             \"{user}\"'s password in praetor.proxy.auth_file"
        )),
        (Exchange::NoPassword | Exchange::Unsupported(_), _) => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use praetor_protocol::{ScramKeys, ScramSecret, ScramServer};

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn auth(code: u32, data: &[u8]) -> Vec<u8> {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(data);
        v
    }

    fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
        let mut body = mechanism.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(&(data.len() as i32).to_be_bytes());
        body.extend_from_slice(data);
        msg(b'p', &body)
    }

    /// A whole SCRAM login as a real client (postgres-protocol's, libpq's format) runs it against
    /// a server holding `server_secret`, relayed through a watch in 3-byte reads.
    fn relayed_scram(password: &str, server_secret: &ScramSecret) -> (Exchange, ScramKeys) {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let mut watch = LoginWatch::default();
        let feed = |w: &mut LoginWatch, bytes: &[u8]| bytes.chunks(3).for_each(|c| w.on_client(c));
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut server = ScramServer::new(server_secret.clone());
        watch.on_server_auth(&auth(10, b"SCRAM-SHA-256\0\0"));
        feed(&mut watch, &sasl_initial(SCRAM_SHA_256, client.message()));
        let first = server.client_first(client.message()).unwrap();
        watch.on_server_auth(&auth(11, &first));
        client.update(&first).unwrap();
        feed(&mut watch, &msg(b'p', client.message()));
        let (keys, last) = server.client_final(client.message()).unwrap();
        watch.on_server_auth(&auth(12, &last));
        client.finish(&last).unwrap();
        watch.on_server_auth(&auth(0, b""));
        (watch.finish(), keys)
    }

    #[test]
    fn a_relayed_scram_login_gives_the_clients_keys_with_the_servers_secret() {
        let secret = ScramSecret::from_password(b"pw");
        let (exchange, keys) = relayed_scram("pw", &secret);
        assert_eq!(
            relogin(exchange, "alice", Some(&Secret::Scram(secret))),
            Relogin::With(Credential::Scram(Box::new(keys)))
        );
    }

    #[test]
    fn relogin_table() {
        let secret = ScramSecret::from_password(b"pw");
        let scram = || relayed_scram("pw", &secret).0;
        let salt = [1, 2, 3, 4];
        let md5 = |password: &str| Exchange::Md5 {
            salt,
            answer: md5_expected(password, "alice", salt),
        };
        let password = |p: &str| Secret::Password(p.into());
        let other = Secret::Scram(ScramSecret::from_password(b"pw"));
        let md5_hash = Secret::Md5("md5c4ca4238a0b923820dcc509a6f75849b".into());
        // alice's with password pw, as PostgreSQL stores it: md5 + md5("pw" + "alice").
        let alices_hash = {
            use md5::Digest as _;
            let hex: String = md5::Md5::digest(b"pwalice")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("md5{hex}")
        };
        // (exchange, secret) -> credential kind or the reason's words
        let rows: Vec<(Exchange, Option<Secret>, &str)> = vec![
            (Exchange::NoPassword, None, "no password"),
            (Exchange::NoPassword, Some(password("x")), "no password"),
            (scram(), None, "holds no credentials for user \"alice\""),
            (scram(), None, "praetor.proxy.auth_file"),
            (scram(), Some(Secret::Scram(secret.clone())), "scram"),
            (scram(), Some(password("pw")), "password"),
            (scram(), Some(other), "does not match the server's"),
            (scram(), Some(md5_hash.clone()), "only an MD5 hash"),
            (md5("pw"), Some(password("pw")), "password"),
            (md5("pw"), Some(password("other")), "is not the one"),
            (
                md5("pw"),
                Some(Secret::Md5(alices_hash.clone())),
                "md5 hash",
            ),
            (md5("pw"), Some(md5_hash), "is not the one of the password"),
            (
                md5("pw"),
                Some(Secret::Scram(secret.clone())),
                "answers only with a password or an MD5 hash",
            ),
            (md5("pw"), None, "holds no credentials"),
            (Exchange::Cleartext, Some(password("pw")), "password"),
            (
                Exchange::Cleartext,
                Some(Secret::Scram(secret.clone())),
                "does not keep",
            ),
            (
                Exchange::Unsupported("authentication method 7".into()),
                Some(password("pw")),
                "authentication method 7",
            ),
        ];
        for (exchange, secret, want) in rows {
            let shown = format!("{exchange:?} with {secret:?}");
            let got = relogin(exchange, "alice", secret.as_ref());
            let ok = match (&got, want) {
                (Relogin::NoPassword, "no password") => true,
                (Relogin::With(Credential::Scram(_)), "scram") => true,
                (Relogin::With(Credential::Password(p)), "password") => p == b"pw",
                (Relogin::With(Credential::Md5Hash(h)), "md5 hash") => *h == alices_hash,
                (Relogin::Cannot(why), w) => {
                    why.starts_with("it logged in with a password and ") && why.contains(w)
                }
                _ => false,
            };
            assert!(ok, "{shown}: got {got:?}, want {want}");
        }
    }

    #[test]
    fn watch_follows_md5_cleartext_and_trust_and_gives_up_on_the_rest() {
        let mut w = LoginWatch::default();
        w.on_server_auth(&auth(5, &[9, 8, 7, 6]));
        w.on_client(&msg(b'p', b"md5abc\0"));
        w.on_server_auth(&auth(0, b""));
        assert_eq!(
            w.finish(),
            Exchange::Md5 {
                salt: [9, 8, 7, 6],
                answer: "md5abc".into()
            }
        );

        let mut w = LoginWatch::default();
        w.on_server_auth(&auth(3, b""));
        w.on_client(&msg(b'p', b"the password\0"));
        w.on_server_auth(&auth(0, b""));
        let e = w.finish();
        assert_eq!(e, Exchange::Cleartext);

        let mut w = LoginWatch::default();
        w.on_server_auth(&auth(5, &[9, 8, 7, 6]));
        w.on_client(&msg(b'p', b"md5abc\0"));
        w.on_server_auth(&auth(0, b""));
        assert_eq!(format!("{:?}", w.finish()), "Md5(********)");

        let mut w = LoginWatch::default();
        w.on_server_auth(&auth(0, b""));
        assert_eq!(w.finish(), Exchange::NoPassword);

        let mut w = LoginWatch::default();
        w.on_server_auth(&auth(7, b""));
        w.on_server_auth(&auth(0, b""));
        assert!(matches!(w.finish(), Exchange::Unsupported(m) if m.contains("method 7")));

        let mut w = LoginWatch::default();
        w.on_server_auth(&auth(10, b"SCRAM-SHA-256\0\0"));
        w.on_client(&sasl_initial("OTHER", b"x"));
        assert!(matches!(w.finish(), Exchange::Unsupported(m) if m.contains("OTHER")));

        let mut w = LoginWatch::default();
        w.on_server_auth(&auth(10, b"SCRAM-SHA-256\0\0"));
        w.on_client(&sasl_initial(SCRAM_SHA_256, b"n,,n=,r=abc"));
        w.on_server_auth(&auth(0, b""));
        assert!(matches!(w.finish(), Exchange::Unsupported(_)), "cut short");
    }
}
