//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both sides, without the password.
//!
//! The auto port authenticates its clients itself, from the stored secret of each user
//! (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, PostgreSQL's `pg_authid.rolpassword`
//! format) found in `auth_file` or by `auth_query` ([`ScramSecret`]). As the server of that exchange
//! ([`ScramServer`]) it checks the client's proof and recovers the client's `ClientKey`
//! (`ClientProof XOR HMAC(StoredKey, AuthMessage)`, whose SHA-256 must be `StoredKey`). With that key
//! and the secret's `ServerKey` ([`ScramKeys`]) it then logs in to each server as a SCRAM client
//! ([`ScramKeyClient`]): a client proof needs only `ClientKey`, and checking the server's signature
//! only `ServerKey`, so no password is ever needed, as long as the server stores the same secret
//! (same salt and iteration count). This is PgBouncer's "SCRAM pass-through".
//!
//! Like PostgreSQL, the user name in the client's first message is ignored (the StartupMessage's
//! user is the one authenticated) and channel binding is not offered (`SCRAM-SHA-256-PLUS` would
//! bind the exchange to the proxy's TLS connection, which the server does not see).
//!
//! Errors are [`ScramError`]; a wrong password is [`ScramError::WrongProof`].

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Bytes of a SHA-256 digest, and so of `StoredKey`, `ServerKey` and `ClientKey`.
pub const KEY_LEN: usize = 32;

/// Length of the nonces the proxy makes, in random bytes before base64 (PostgreSQL uses 18).
const NONCE_BYTES: usize = 18;

/// Why a SCRAM step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A stored secret is not `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    #[error("not a SCRAM-SHA-256 secret: {0}")]
    BadSecret(&'static str),
    /// A message of the exchange is malformed or out of order.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding, which the proxy does not offer.
    #[error("channel binding is not supported by the proxy")]
    ChannelBinding,
    /// The client's proof does not match the stored secret: wrong password.
    #[error("the client's proof does not match")]
    WrongProof,
    /// The server's signature does not match the secret's ServerKey (it stores another secret).
    #[error("the server's signature does not match the stored secret")]
    WrongServerSignature,
    /// The server sent `e=<error>` in its final message.
    #[error("the server refused the SCRAM exchange: {0}")]
    Server(String),
    /// A relayed exchange used another salt or iteration count than the stored secret: the
    /// server stores another secret for the user ([`keys_from_relayed`]).
    #[error("the server's salt or iteration count differ from the stored secret's")]
    OtherSecret,
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

fn key_from_b64(s: &str, what: &'static str) -> Result<[u8; KEY_LEN], ScramError> {
    B64.decode(s)
        .ok()
        .and_then(|v| <[u8; KEY_LEN]>::try_from(v).ok())
        .ok_or(ScramError::BadSecret(what))
}

/// A fresh nonce: printable base64 of random bytes (never contains `,`).
pub fn new_nonce() -> String {
    B64.encode(rand::random::<[u8; NONCE_BYTES]>())
}

/// A user's stored SCRAM-SHA-256 secret, as PostgreSQL keeps it in `pg_authid.rolpassword`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iteration count (PostgreSQL's `scram_iterations`, 4096 by default).
    pub iterations: u32,
    /// The salt, decoded.
    pub salt: Vec<u8>,
    /// `SHA-256(ClientKey)`.
    pub stored_key: [u8; KEY_LEN],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; KEY_LEN],
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramSecret {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (salt and keys in base64).
    pub fn parse(s: &str) -> Result<ScramSecret, ScramError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::BadSecret("does not start with SCRAM-SHA-256$"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(ScramError::BadSecret("no $ before the keys"))?;
        let (iter, salt) = params
            .split_once(':')
            .ok_or(ScramError::BadSecret("no : between iterations and salt"))?;
        let iterations: u32 = iter
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or(ScramError::BadSecret(
                "iteration count is not a positive number",
            ))?;
        let salt = B64
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(ScramError::BadSecret("salt is not base64"))?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadSecret(
            "no : between StoredKey and ServerKey",
        ))?;
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key: key_from_b64(stored, "StoredKey is not 32 bytes of base64")?,
            server_key: key_from_b64(server, "ServerKey is not 32 bytes of base64")?,
        })
    }

    /// A secret for `password` with a random salt and 4096 iterations (PostgreSQL's defaults;
    /// `postgres_protocol::password::scram_sha_256`, which also applies SASLprep).
    pub fn from_password(password: &[u8]) -> ScramSecret {
        ScramSecret::parse(&postgres_protocol::password::scram_sha_256(password))
            .expect("postgres-protocol makes well-formed secrets")
    }

    /// A secret that no proof matches, for users the proxy has no secret for: the exchange runs to
    /// its end and fails like a wrong password, as PostgreSQL's mock authentication does, so a
    /// client cannot tell unknown users from wrong passwords.
    pub fn mock() -> ScramSecret {
        ScramSecret {
            iterations: 4096,
            salt: rand::random::<[u8; 16]>().to_vec(),
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }
}

/// What the proxy keeps of an authenticated client to log in to servers for it: the client's
/// `ClientKey` (recovered from its proof) and the secret's `ServerKey`. Equivalent to the password
/// for SCRAM servers holding the same secret; kept in memory only, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// `HMAC(SaltedPassword, "Client Key")`.
    pub client_key: [u8; KEY_LEN],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; KEY_LEN],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(********)")
    }
}

/// Splits `a=value` attributes separated by commas.
fn attribute(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    let part = part.ok_or(ScramError::Malformed("missing attribute"))?;
    let mut chars = part.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(ScramError::Malformed("unexpected attribute"));
    }
    Ok(&part[2..])
}

/// The server side of one SCRAM-SHA-256 exchange with a client, against a stored secret (the
/// auto port's client login and the proxy's admin console, which ignores the returned keys).
///
/// Call [`ScramServer::client_first`] with the SASLInitialResponse data, send its result as
/// AuthenticationSASLContinue, then [`ScramServer::client_final`] with the SASLResponse data: it
/// returns the client's keys and the AuthenticationSASLFinal data.
#[derive(Debug)]
pub struct ScramServer {
    secret: ScramSecret,
    nonce: String,
    /// `(gs2 header, client-first-bare, server-first)` once the first message is in.
    first: Option<(String, String, String)>,
}

impl ScramServer {
    /// An exchange against `secret`, with a fresh server nonce.
    pub fn new(secret: ScramSecret) -> ScramServer {
        ScramServer::with_nonce(secret, new_nonce())
    }

    /// An exchange with a given server `nonce` (tests).
    pub fn with_nonce(secret: ScramSecret, nonce: String) -> ScramServer {
        ScramServer {
            secret,
            nonce,
            first: None,
        }
    }

    /// Reads client-first-message (`n,,n=<user>,r=<nonce>`) and returns server-first-message
    /// (`r=<client nonce><server nonce>,s=<salt>,i=<iterations>`).
    pub fn client_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind flag, authzid, then client-first-message-bare.
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            // PostgreSQL refuses an authorization identity too.
            return Err(ScramError::Malformed(
                "authorization identity is not supported",
            ));
        }
        let mut parts = bare.split(',');
        let first = parts.next();
        if first.is_some_and(|p| p.starts_with("m=")) {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        attribute(first, 'n')?;
        let client_nonce = attribute(parts.next(), 'r')?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ScramError::Malformed("bad client nonce"));
        }
        let server_first = format!(
            "r={client_nonce}{},s={},i={}",
            self.nonce,
            B64.encode(&self.secret.salt),
            self.secret.iterations
        );
        self.first = Some((
            format!("{flag},{authzid},"),
            bare.to_string(),
            server_first.clone(),
        ));
        Ok(server_first.into_bytes())
    }

    /// Reads client-final-message (`c=<binding>,r=<nonce>,p=<proof>`), checks the proof and returns
    /// the client's keys and server-final-message (`v=<server signature>`).
    /// [`ScramError::WrongProof`]: wrong password (or no secret, see [`ScramSecret::mock`]).
    pub fn client_final(&mut self, data: &[u8]) -> Result<(ScramKeys, Vec<u8>), ScramError> {
        let (gs2, bare, server_first) = self
            .first
            .take()
            .ok_or(ScramError::Malformed("final message before the first"))?;
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut parts = without_proof.split(',');
        let binding = attribute(parts.next(), 'c')?;
        if B64.decode(binding).ok().as_deref() != Some(gs2.as_bytes()) {
            return Err(ScramError::Malformed("channel binding data does not match"));
        }
        let nonce = attribute(parts.next(), 'r')?;
        if server_first
            .strip_prefix("r=")
            .and_then(|s| s.split(',').next())
            != Some(nonce)
        {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = key_from_b64(proof, "proof").map_err(|_| ScramError::Malformed("bad proof"))?;
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let signature = hmac(&self.secret.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = [0u8; KEY_LEN];
        for (k, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(&signature)) {
            *k = p ^ s;
        }
        // Not a secret-dependent early exit worth hiding: the comparison is of a hash the client
        // cannot steer byte by byte.
        if sha256(&client_key) != self.secret.stored_key {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&self.secret.server_key, &[auth_message.as_bytes()]);
        Ok((
            ScramKeys {
                client_key,
                server_key: self.secret.server_key,
            },
            format!("v={}", B64.encode(server_signature)).into_bytes(),
        ))
    }
}

/// The client's keys from a SCRAM-SHA-256 exchange that went by between a client and a server
/// (the proxy's read-write port relays authentication unchanged), given the user's stored
/// `secret`: `ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)`, checked as
/// [`ScramServer::client_final`] checks it (its SHA-256 must be `StoredKey`), and the server's
/// signature checked against the secret's `ServerKey`, so that keys returned here log in to any
/// server storing that secret. The four arguments are the SASL payloads as sent:
/// client-first-message (with its GS2 header), server-first, client-final and server-final.
///
/// Errors: [`ScramError::Malformed`] for messages that do not parse; [`ScramError::OtherSecret`]
/// when the server's salt or iteration count are not the secret's; [`ScramError::WrongProof`]
/// when the proof does not match the secret; [`ScramError::WrongServerSignature`] when the
/// server's signature does not.
pub fn keys_from_relayed(
    secret: &ScramSecret,
    client_first: &[u8],
    server_first: &[u8],
    client_final: &[u8],
    server_final: &[u8],
) -> Result<ScramKeys, ScramError> {
    fn utf8(b: &[u8]) -> Result<&str, ScramError> {
        std::str::from_utf8(b).map_err(|_| ScramError::Malformed("not UTF-8"))
    }
    let (client_first, server_first) = (utf8(client_first)?, utf8(server_first)?);
    let (client_final, server_final) = (utf8(client_final)?, utf8(server_final)?);
    // client-first-message-bare: after the GS2 header's flag and authorization identity.
    let bare = client_first
        .splitn(3, ',')
        .nth(2)
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    let mut parts = server_first.split(',');
    attribute(parts.next(), 'r')?;
    let salt = B64
        .decode(attribute(parts.next(), 's')?)
        .map_err(|_| ScramError::Malformed("salt is not base64"))?;
    let iterations: u32 = attribute(parts.next(), 'i')?
        .parse()
        .map_err(|_| ScramError::Malformed("iteration count is not a number"))?;
    if salt != secret.salt || iterations != secret.iterations {
        return Err(ScramError::OtherSecret);
    }
    let (without_proof, proof) = client_final
        .rsplit_once(",p=")
        .ok_or(ScramError::Malformed("no proof"))?;
    let proof = key_from_b64(proof, "proof").map_err(|_| ScramError::Malformed("bad proof"))?;
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac(&secret.stored_key, &[auth_message.as_bytes()]);
    let mut client_key = [0u8; KEY_LEN];
    for (k, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(&signature)) {
        *k = p ^ s;
    }
    if sha256(&client_key) != secret.stored_key {
        return Err(ScramError::WrongProof);
    }
    let v = attribute(server_final.split(',').next(), 'v')?;
    let expected = hmac(&secret.server_key, &[auth_message.as_bytes()]);
    if key_from_b64(v, "signature").ok() != Some(expected) {
        return Err(ScramError::WrongServerSignature);
    }
    Ok(ScramKeys {
        client_key,
        server_key: secret.server_key,
    })
}

/// The client side of SCRAM-SHA-256 towards a server, with [`ScramKeys`] instead of a password.
#[derive(Debug)]
pub struct ScramKeyClient {
    keys: ScramKeys,
    nonce: String,
    /// The expected server signature once the final message is sent.
    expected: Option<[u8; KEY_LEN]>,
}

impl ScramKeyClient {
    /// An exchange with a fresh client nonce.
    pub fn new(keys: ScramKeys) -> ScramKeyClient {
        ScramKeyClient::with_nonce(keys, new_nonce())
    }

    /// An exchange with a given client `nonce` (tests).
    pub fn with_nonce(keys: ScramKeys, nonce: String) -> ScramKeyClient {
        ScramKeyClient {
            keys,
            nonce,
            expected: None,
        }
    }

    /// client-first-message: `n,,n=,r=<nonce>` (no channel binding; PostgreSQL ignores the name).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare()).into_bytes()
    }

    fn first_bare(&self) -> String {
        format!("n=,r={}", self.nonce)
    }

    /// Reads server-first-message and returns client-final-message with the proof.
    pub fn server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = msg.split(',');
        let nonce = attribute(parts.next(), 'r')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        attribute(parts.next(), 's')?;
        attribute(parts.next(), 'i')?;
        // biws = base64("n,,").
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{msg},{without_proof}", self.first_bare());
        let stored_key = sha256(&self.keys.client_key);
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let mut proof = [0u8; KEY_LEN];
        for (p, (k, s)) in proof
            .iter_mut()
            .zip(self.keys.client_key.iter().zip(&signature))
        {
            *p = k ^ s;
        }
        self.expected = Some(hmac(&self.keys.server_key, &[auth_message.as_bytes()]));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Reads server-final-message and checks the server's signature.
    pub fn server_final(&mut self, data: &[u8]) -> Result<(), ScramError> {
        let expected = self
            .expected
            .take()
            .ok_or(ScramError::Malformed("final message before the first"))?;
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(e) = msg.strip_prefix("e=") {
            return Err(ScramError::Server(e.to_string()));
        }
        let v = attribute(msg.split(',').next(), 'v')?;
        if key_from_b64(v, "signature").ok() != Some(expected) {
            return Err(ScramError::WrongServerSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user "user", password "pencil"; the secret computed independently
    /// (Python's hashlib.pbkdf2_hmac) from that salt and iteration count.
    const RFC_SECRET: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_server() -> ScramServer {
        ScramServer::with_nonce(ScramSecret::parse(RFC_SECRET).unwrap(), SERVER_NONCE.into())
    }

    #[test]
    fn server_side_follows_rfc7677_test_vector() {
        let mut s = rfc_server();
        let first = s.client_first(CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(std::str::from_utf8(&first).unwrap(), SERVER_FIRST);
        let (keys, last) = s.client_final(CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(std::str::from_utf8(&last).unwrap(), SERVER_FINAL);
        assert_eq!(
            sha256(&keys.client_key),
            ScramSecret::parse(RFC_SECRET).unwrap().stored_key
        );
        assert_eq!(format!("{keys:?}"), "ScramKeys(********)");
    }

    #[test]
    fn recovered_keys_produce_the_rfc7677_client_proof_without_the_password() {
        let mut s = rfc_server();
        s.client_first(CLIENT_FIRST.as_bytes()).unwrap();
        let (keys, _) = s.client_final(CLIENT_FINAL.as_bytes()).unwrap();
        // The proxy towards a server: same keys, the RFC's nonces. The RFC's client sends
        // "n=user"; the proxy sends "n=" (PostgreSQL ignores the name), so the proof differs from
        // the RFC's; check it against a server holding the same secret instead, and the RFC's
        // server signature is checked in the test above.
        let mut c = ScramKeyClient::with_nonce(keys.clone(), CLIENT_NONCE.into());
        let mut server = rfc_server();
        let sf = server.client_first(&c.client_first()).unwrap();
        assert_eq!(std::str::from_utf8(&sf).unwrap(), SERVER_FIRST);
        let cf = c.server_first(&sf).unwrap();
        let (again, last) = server.client_final(&cf).unwrap();
        assert_eq!(again, keys);
        c.server_final(&last).unwrap();
    }

    #[test]
    fn keys_come_from_a_relayed_exchange_with_the_stored_secret() {
        let secret = ScramSecret::parse(RFC_SECRET).unwrap();
        let (c1, s1, c2, s2) = (
            CLIENT_FIRST.as_bytes(),
            SERVER_FIRST.as_bytes(),
            CLIENT_FINAL.as_bytes(),
            SERVER_FINAL.as_bytes(),
        );
        let keys = keys_from_relayed(&secret, c1, s1, c2, s2).unwrap();
        let mut server = rfc_server();
        server.client_first(c1).unwrap();
        assert_eq!(
            server.client_final(c2).unwrap().0,
            keys,
            "as the server recovers them"
        );
        let wrong = CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        assert_eq!(
            keys_from_relayed(&secret, c1, s1, wrong.as_bytes(), s2),
            Err(ScramError::WrongProof)
        );
        let other_salt = SERVER_FIRST.replace("s=W22Z", "s=X22Z");
        assert_eq!(
            keys_from_relayed(&secret, c1, other_salt.as_bytes(), c2, s2),
            Err(ScramError::OtherSecret)
        );
        let other_signature = SERVER_FINAL.replace("v=6rri", "v=7rri");
        assert_eq!(
            keys_from_relayed(&secret, c1, s1, c2, other_signature.as_bytes()),
            Err(ScramError::WrongServerSignature)
        );
        assert!(matches!(
            keys_from_relayed(&secret, b"garbage", s1, c2, s2),
            Err(ScramError::Malformed(_))
        ));
    }

    #[test]
    fn a_wrong_proof_is_refused() {
        let mut s = rfc_server();
        s.client_first(CLIENT_FIRST.as_bytes()).unwrap();
        let wrong = CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        assert_eq!(
            s.client_final(wrong.as_bytes()).unwrap_err(),
            ScramError::WrongProof
        );
        let mut mock = ScramServer::with_nonce(ScramSecret::mock(), SERVER_NONCE.into());
        mock.client_first(CLIENT_FIRST.as_bytes()).unwrap();
        // The mock secret has its own salt, so its server-first differs, but the nonce matches.
        assert_eq!(
            mock.client_final(CLIENT_FINAL.as_bytes()).unwrap_err(),
            ScramError::WrongProof
        );
    }

    #[test]
    fn malformed_exchanges_are_refused() {
        let mut s = rfc_server();
        assert_eq!(
            s.client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::ChannelBinding)
        );
        assert!(s.client_first(b"n,a=admin,n=,r=abc").is_err());
        assert!(s.client_first(b"n,,r=abc").is_err());
        assert!(s.client_first(b"garbage").is_err());
        assert!(s.client_final(CLIENT_FINAL.as_bytes()).is_err(), "no first");
        s.client_first(CLIENT_FIRST.as_bytes()).unwrap();
        let other_nonce = CLIENT_FINAL.replace("r=rOpr", "r=xOpr");
        assert!(s.client_final(other_nonce.as_bytes()).is_err());
        let mut s = rfc_server();
        s.client_first(CLIENT_FIRST.as_bytes()).unwrap();
        let other_binding = CLIENT_FINAL.replace("c=biws", "c=eSws");
        assert!(s.client_final(other_binding.as_bytes()).is_err());
    }

    #[test]
    fn secrets_parse_and_bad_ones_are_refused() {
        let s = ScramSecret::parse(RFC_SECRET).unwrap();
        assert_eq!(s.iterations, 4096);
        assert_eq!(s.salt.len(), 16);
        assert!(!format!("{s:?}").contains("WG5d"));
        for bad in [
            "md5c4ca4238a0b923820dcc509a6f75849b",
            "SCRAM-SHA-256$x:W22ZaJ0SNY7soEsUEjb6gQ==$a:b",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d:wfPL",
            "SCRAM-SHA-256$4096$abc",
        ] {
            assert!(ScramSecret::parse(bad).is_err(), "{bad}");
        }
        let made = ScramSecret::from_password(b"pencil");
        assert_eq!(made.iterations, 4096);
    }

    /// A whole exchange against postgres-protocol's client (tokio-postgres's, so libpq's format).
    fn scram_login(secret: ScramSecret, password: &str) -> Result<(), ScramError> {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut server = ScramServer::new(secret);
        let first = server.client_first(client.message())?;
        client.update(&first).expect("server-first parses");
        let (_, last) = server.client_final(client.message())?;
        client
            .finish(&last)
            .expect("the client accepts the server's signature");
        Ok(())
    }

    #[test]
    fn a_real_client_logs_in_with_the_password_and_not_with_another() {
        let secret = ScramSecret::from_password(b"s3cret");
        assert_eq!(scram_login(secret.clone(), "s3cret"), Ok(()));
        assert_eq!(scram_login(secret, "wrong"), Err(ScramError::WrongProof));
        assert_eq!(
            scram_login(ScramSecret::mock(), "s3cret"),
            Err(ScramError::WrongProof)
        );
    }

    #[test]
    fn postgres_verifiers_parse_and_verify() {
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        let secret = ScramSecret::parse(&verifier).expect("PostgreSQL's format");
        assert_eq!(secret.iterations, 4096);
        assert_eq!(scram_login(secret, "pw"), Ok(()));
    }

    #[test]
    fn a_server_with_another_secret_is_detected() {
        let mut s = rfc_server();
        s.client_first(CLIENT_FIRST.as_bytes()).unwrap();
        let (mut keys, _) = s.client_final(CLIENT_FINAL.as_bytes()).unwrap();
        keys.server_key = [0; KEY_LEN];
        let mut c = ScramKeyClient::with_nonce(keys, CLIENT_NONCE.into());
        let mut server = rfc_server();
        let sf = server.client_first(&c.client_first()).unwrap();
        let cf = c.server_first(&sf).unwrap();
        let (_, last) = server.client_final(&cf).unwrap();
        assert_eq!(c.server_final(&last), Err(ScramError::WrongServerSignature));
        assert!(matches!(
            c.server_final(b"e=invalid-proof"),
            Err(ScramError::Malformed(_))
        ));
    }
}
