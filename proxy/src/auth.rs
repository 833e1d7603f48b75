//! Where the proxy finds the secrets it authenticates clients with: `auth_file` (PgBouncer's
//! userlist.txt, one file for the auto port's clients and the admin console, as PgBouncer's one
//! file serves both) and `auth_query` (run as `auth_user`), and the `auth_type` that says how the
//! auto port uses them. The admin console ([`crate::admin_auth`]) reads the same file with
//! [`read_auth_file`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use praetor_protocol::frontend::PASSWORD;
use praetor_protocol::{FrontendHeader, ScramSecret, SqlState, MAX_STARTUP_PACKET_LEN};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::ProxyError;

/// PgBouncer's default `auth_query`.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1";

/// `praetor.proxy.auth_type`: how the auto port authenticates its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthType {
    /// SCRAM-SHA-256 against the user's stored secret (from `auth_file` or `auth_query`); server
    /// connections log in with the client's SCRAM keys.
    #[default]
    ScramSha256,
    /// The client sends its password (AuthenticationCleartextPassword); refused unless the client
    /// connection is TLS.
    Cleartext,
    /// PgBouncer's `auth_type = md5`: a user whose secret is an `md5` hash or a plain-text
    /// password gets an md5 challenge (AuthenticationMD5Password, PostgreSQL's `md5` method); one
    /// with a SCRAM secret gets SCRAM-SHA-256 as with [`AuthType::ScramSha256`] ("if a user has a
    /// SCRAM secret, SCRAM authentication is used automatically instead", PgBouncer's
    /// documentation). Server connections log in with what the entry gives: an md5 hash answers
    /// only servers that ask for md5 (a SCRAM server refuses the login with a message saying so),
    /// a plain-text password any. With `scram-sha-256`, an md5 hash cannot check the client: the
    /// login fails as with a wrong password, and the proxy logs why (PgBouncer: "SCRAM
    /// authentication failed: user has MD5 secret").
    Md5,
}

impl AuthType {
    /// `scram-sha-256`, `md5` or `cleartext` (`plain`, `password` accepted too).
    pub fn parse(s: &str) -> Option<AuthType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scram-sha-256" | "scram" => Some(AuthType::ScramSha256),
            "cleartext" | "plain" | "password" => Some(AuthType::Cleartext),
            "md5" => Some(AuthType::Md5),
            _ => None,
        }
    }
}

/// The auto port's authentication settings (`praetor.proxy.auth_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// `auth_type` (default `scram-sha-256`).
    pub auth_type: AuthType,
    /// `auth_file`: read when the proxy starts and at `RELOAD`.
    pub auth_file: Option<PathBuf>,
    /// `auth_query`, with `$1` the user name.
    pub auth_query: String,
    /// `auth_user`: who runs `auth_query`; `None`: no query.
    pub auth_user: Option<String>,
    /// `auth_password`: `auth_user`'s password, when `auth_file` does not give it.
    pub auth_password: Option<String>,
}

impl Default for AuthSettings {
    fn default() -> AuthSettings {
        AuthSettings {
            auth_type: AuthType::default(),
            auth_file: None,
            auth_query: DEFAULT_AUTH_QUERY.to_string(),
            auth_user: None,
            auth_password: None,
        }
    }
}

/// One user's secret, as `auth_file` or `auth_query` gives it.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A SCRAM-SHA-256 secret: clients authenticate against it and servers get their SCRAM keys.
    Scram(ScramSecret),
    /// An MD5 hash (`md5` + 32 hex digits, PostgreSQL's `md5(password + user)`), kept whole: a
    /// SCRAM client cannot be checked against it; the admin console's md5 method can.
    Md5(String),
    /// A password in clear text (auth_file only): clients authenticate with SCRAM against a secret
    /// made from it, and servers get the password.
    Password(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Scram(_) => "Scram(********)",
            Secret::Md5(_) => "Md5(********)",
            Secret::Password(_) => "Password(********)",
        })
    }
}

impl Secret {
    /// Classifies a stored secret (`pg_authid.rolpassword` or an `auth_file` value).
    pub fn parse(s: &str) -> Result<Secret, String> {
        if s.starts_with("SCRAM-SHA-256$") {
            return ScramSecret::parse(s)
                .map(Secret::Scram)
                .map_err(|e| e.to_string());
        }
        if s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Secret::Md5(s.to_string()));
        }
        Ok(Secret::Password(s.to_string()))
    }
}

/// The auth settings in the form sessions use them: `auth_file` read and parsed.
#[derive(Debug, Default)]
pub(crate) struct AuthRuntime {
    pub auth_type: AuthType,
    pub file: HashMap<String, Secret>,
    pub query: String,
    pub user: Option<String>,
    pub user_password: Option<Vec<u8>>,
}

impl AuthRuntime {
    /// Reads `auth_file`. Errors name `praetor.proxy.auth_file` (unreadable, a malformed line or
    /// secret).
    pub fn from_settings(s: &AuthSettings) -> Result<AuthRuntime, ProxyError> {
        let file = match &s.auth_file {
            None => HashMap::new(),
            Some(path) => read_auth_file(path)?,
        };
        let user_password = s
            .auth_user
            .as_ref()
            .and_then(|u| match file.get(u) {
                Some(Secret::Password(p)) => Some(p.clone().into_bytes()),
                _ => None,
            })
            .or_else(|| s.auth_password.clone().map(String::into_bytes));
        Ok(AuthRuntime {
            auth_type: s.auth_type,
            file,
            query: s.auth_query.clone(),
            user: s.auth_user.clone(),
            user_password,
        })
    }

    /// Whether the proxy has any source of secrets (`auth_file` or `auth_user`). Without one, the
    /// SCRAM auto port serves only servers that ask for no password.
    pub fn has_source(&self) -> bool {
        !self.file.is_empty() || self.user.is_some()
    }
}

/// Reads and parses `auth_file` ([`parse_userlist`]). Errors are [`ProxyError::Config`] naming
/// `praetor.proxy.auth_file`, with the path and the reason (unreadable, a malformed line or
/// secret).
pub(crate) fn read_auth_file(path: &Path) -> Result<HashMap<String, Secret>, ProxyError> {
    let text = std::fs::read_to_string(path).map_err(|e| ProxyError::Config {
        key: "praetor.proxy.auth_file",
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    parse_userlist(&text).map_err(|reason| ProxyError::Config {
        key: "praetor.proxy.auth_file",
        reason: format!("{}: {reason}", path.display()),
    })
}

/// Parses PgBouncer's userlist.txt: per line `"user" "secret"` (a `""` inside quotes is one `"`),
/// anything after the second field ignored; blank lines and lines starting with `;` or `#` are
/// comments. As PgBouncer's loader (`loader.c`), any other line not starting with `"` is an error.
/// Each secret is classified by [`Secret::parse`]. Errors name the line (1-based).
pub fn parse_userlist(text: &str) -> Result<HashMap<String, Secret>, String> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: expected \"user\" \"secret\"", n + 1);
        let (user, rest) = quoted(line).ok_or_else(bad)?;
        let (secret, _) = quoted(rest).ok_or_else(bad)?;
        let secret = Secret::parse(&secret).map_err(|e| format!("line {}: {e}", n + 1))?;
        users.insert(user, secret);
    }
    Ok(users)
}

/// The quoted string at the start of `s` (after blanks), with `""` read as `"`, and what follows
/// it; `None` without a closing quote.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut rest = s.trim_start().strip_prefix('"')?;
    let mut out = String::new();
    loop {
        let end = rest.find('"')?;
        out.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        match rest.strip_prefix('"') {
            Some(r) => {
                out.push('"');
                rest = r;
            }
            None => return Some((out, rest)),
        }
    }
}

/// Why [`lookup_secret`] has no secret to give.
#[derive(Debug)]
pub(crate) enum SecretError {
    /// No server to run `auth_query` on appeared within the wait.
    NoServer(crate::router::NoRoute),
    /// `auth_query` could not run: why, naming `auth_user` and the server.
    Failed(String),
    /// `auth_query` returned a secret that does not parse ([`Secret::parse`]).
    Malformed(String),
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretError::NoServer(e) => write!(f, "no server to run auth_query on: {e:?}"),
            SecretError::Failed(m) => f.write_str(m),
            SecretError::Malformed(e) => write!(f, "auth_query returned a malformed secret: {e}"),
        }
    }
}

/// The secret of `user`, for every port that needs one: the auto port's own SCRAM login
/// (`session`) and the read-write port's relogin after a switchover ([`crate::rw_auth`]).
///
/// `auth_file` first; then `auth_query` (with `$1` = `user`,
/// [`crate::pool::ServerConn::query_secret`]) run as `auth_user` in `database` on the leader,
/// waiting up to `wait` for one (`Duration::ZERO`: only one try), else on a replica routable now,
/// over a pooled connection that returns to the pool (a new one is counted under `listener`).
/// `Ok(None)`: no `auth_user` set, or no such user (or no password). Errors: no server
/// ([`SecretError::NoServer`]), the query could not run, or returned a malformed secret.
pub(crate) async fn lookup_secret(
    shared: &crate::conn::Shared,
    rt: &crate::conn::Runtime,
    listener: crate::metrics::ListenerKind,
    user: &str,
    database: &str,
    wait: std::time::Duration,
) -> Result<Option<Secret>, SecretError> {
    use crate::pool::OpenError;
    use crate::router::Want;
    if let Some(s) = rt.auth.file.get(user) {
        return Ok(Some(s.clone()));
    }
    let Some(auth_user) = rt.auth.user.as_deref() else {
        return Ok(None);
    };
    let route = match shared.router.route_want(Want::Leader, wait).await {
        Ok(r) => r,
        Err(_) => shared
            .router
            .try_route_want(Want::Read)
            .map_err(SecretError::NoServer)?,
    };
    let startup = praetor_protocol::startup::encode_startup(&[
        ("user", auth_user),
        ("database", database),
        ("application_name", "praetor auth_query"),
    ]);
    let described = format!("{} {}", route.role.as_str(), route.backend);
    let failed = |e: OpenError| {
        let why = match e {
            OpenError::Refused(_, f) => f.message().unwrap_or("refused").to_string(),
            OpenError::NeedPassword => "the server asks auth_user for a password: give \
                                       praetor.proxy.auth_password or auth_user's password in \
                                       auth_file"
                .into(),
            OpenError::Connect(m) | OpenError::NotReady(m) | OpenError::Failed(m) => m,
        };
        SecretError::Failed(format!("auth_query as {auth_user:?} on {described}: {why}"))
    };
    let mut conn = match shared.pool.take(&route.backend, &startup) {
        Some(c) => c,
        None => {
            let labels = [
                listener.as_str(),
                route.backend.member(),
                route.role.as_str(),
            ];
            shared
                .metrics
                .connections_total
                .with_label_values(&labels)
                .inc();
            // `open` counts the connection in this gauge once connected.
            let gauge = shared.metrics.connections.with_label_values(&labels);
            let mut auth =
                praetor_protocol::PasswordAuth::new(auth_user, rt.auth.user_password.as_deref());
            let opened = crate::pool::open(
                route,
                gauge,
                &rt.backend_tls,
                rt.connect_timeout,
                &startup,
                &mut auth,
            )
            .await;
            opened.map_err(failed)?.0
        }
    };
    let answer = conn
        .query_secret(&rt.auth.query, user)
        .await
        .map_err(failed)?;
    shared.pool.put(conn, &startup, rt.pool_size);
    match answer.map(|s| Secret::parse(&s)) {
        None => Ok(None),
        Some(Ok(secret)) => Ok(Some(secret)),
        Some(Err(e)) => Err(SecretError::Malformed(e)),
    }
}

/// PostgreSQL's message (SQLSTATE 28P01) for every failed password login, whatever the cause
/// (wrong password, unknown user, unusable secret), so that it tells no user names.
pub(crate) fn password_failed(user: &str) -> String {
    format!("password authentication failed for user \"{user}\"")
}

/// Why [`read_password_message`] returned no message.
#[derive(Debug)]
pub(crate) enum PasswordReadError {
    /// Another message than a password message, or a malformed frame: the client gets a FATAL
    /// with this SQLSTATE and message.
    Protocol(SqlState, String),
    /// The client closed the connection.
    Closed,
    /// Reading from the client failed.
    Io(std::io::Error),
}

/// Reads the client's next PasswordMessage, SASLInitialResponse or SASLResponse (tag `p`, at most
/// [`MAX_STARTUP_PACKET_LEN`] bytes, PostgreSQL's startup-phase limit) from `client`, `buf` holding
/// the bytes already read; returns the whole frame, header included.
pub(crate) async fn read_password_message<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
) -> Result<BytesMut, PasswordReadError> {
    loop {
        match FrontendHeader::peek(buf, MAX_STARTUP_PACKET_LEN) {
            Ok(Some(h)) if buf.len() >= h.frame_len => {
                let frame = buf.split_to(h.frame_len);
                if h.tag != PASSWORD {
                    return Err(PasswordReadError::Protocol(
                        SqlState::PROTOCOL_VIOLATION,
                        format!("expected a password message, got {:?}", h.tag as char),
                    ));
                }
                return Ok(frame);
            }
            Ok(_) => {}
            Err(e) => return Err(PasswordReadError::Protocol(e.sqlstate(), e.to_string())),
        }
        match client.read_buf(buf).await {
            Ok(0) => return Err(PasswordReadError::Closed),
            Ok(_) => {}
            Err(e) => return Err(PasswordReadError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userlist_lines_parse_like_pgbouncer() {
        let users = parse_userlist(
            ";; comment\n# another\n\"alice\" \"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=\"\n\"bo\"\"b\" \"md5c4ca4238a0b923820dcc509a6f75849b\"\n\"carol\" \"plain pass\" \"\"\n\n  \"admin\"   \"se\"\"cret\" extra\n",
        )
        .unwrap();
        assert!(matches!(users["alice"], Secret::Scram(_)));
        assert_eq!(
            users["bo\"b"],
            Secret::Md5("md5c4ca4238a0b923820dcc509a6f75849b".into())
        );
        assert_eq!(users["carol"], Secret::Password("plain pass".into()));
        assert_eq!(users["admin"], Secret::Password("se\"cret".into()));
        assert_eq!(users.len(), 4);
        assert!(!format!("{users:?}").contains("plain"));
        let err = parse_userlist("\"dave\" \"SCRAM-SHA-256$4096:x$y:z\"\n").unwrap_err();
        assert!(err.starts_with("line 1: "), "{err}");
        assert!(parse_userlist("\"eve\n").is_err());
        assert!(parse_userlist("\"eve\"\n").is_err());
        let err = parse_userlist("\"ok\" \"pw\"\nadmin secret\n").unwrap_err();
        assert!(err.starts_with("line 2: "), "{err}");
    }

    #[test]
    fn auth_types_parse() {
        assert_eq!(
            AuthType::parse("SCRAM-SHA-256"),
            Some(AuthType::ScramSha256)
        );
        assert_eq!(AuthType::parse("cleartext"), Some(AuthType::Cleartext));
        assert_eq!(AuthType::parse("md5"), Some(AuthType::Md5));
    }

    #[test]
    fn auth_user_password_comes_from_the_file_or_the_config() {
        let dir = std::env::temp_dir().join(format!("praetor-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("userlist.txt");
        std::fs::write(&path, "\"pgbouncer\" \"secret\"\n").unwrap();
        let mut s = AuthSettings {
            auth_file: Some(path.clone()),
            auth_user: Some("pgbouncer".into()),
            auth_password: Some("other".into()),
            ..AuthSettings::default()
        };
        let rt = AuthRuntime::from_settings(&s).unwrap();
        assert_eq!(rt.user_password.as_deref(), Some(&b"secret"[..]));
        assert!(rt.has_source());
        s.auth_file = None;
        let rt = AuthRuntime::from_settings(&s).unwrap();
        assert_eq!(rt.user_password.as_deref(), Some(&b"other"[..]));
        s.auth_file = Some(dir.join("missing"));
        let err = AuthRuntime::from_settings(&s).unwrap_err().to_string();
        assert!(err.starts_with("praetor.proxy.auth_file"), "{err}");
        assert!(!AuthRuntime::default().has_source());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
