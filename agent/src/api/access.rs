//! Who may call the unsafe methods (POST, PUT, PATCH, DELETE): Patroni's `check_access`.
//!
//! In Patroni's order: the caller's address must be in `restapi.allowlist` (or, with
//! `allowlist_include_members`, be a member's host) → else 403; with TLS and `verify_client`
//! `optional`/`required` a verified client certificate is needed → else 403; with
//! `restapi.authentication` the basic-auth header must match → else 401. The check itself is pure
//! ([`AccessPolicy::check`]); resolving names happens before.

use std::net::IpAddr;

use axum::http::StatusCode;
use base64::Engine;
use praetor_config::{RestApi, VerifyClient};
use praetor_dcs::Cluster;

/// An allowlist entry: an address with a prefix length (`10.0.0.0/8`, or a host as /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl Network {
    /// Parses `1.2.3.4`, `1.2.3.0/24`, `::1` or `fe80::/10`; `None` for a host name.
    pub fn parse(s: &str) -> Option<Network> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().trim_matches(['[', ']']).parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Network { addr, prefix })
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

/// Why a request was refused; `Display` is the body Patroni sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Not in the allowlist (403).
    #[error("Access is denied")]
    NotAllowed,
    /// TLS with client verification, and no client certificate (403).
    #[error("client certificate required")]
    NoClientCertificate,
    /// No `Authorization` header while authentication is configured (401).
    #[error("no auth header received")]
    NoAuthHeader,
    /// Wrong credentials (401).
    #[error("not authenticated")]
    NotAuthenticated,
}

impl Denied {
    /// The status code: 403 or 401.
    pub fn code(&self) -> StatusCode {
        match self {
            Denied::NotAllowed | Denied::NoClientCertificate => StatusCode::FORBIDDEN,
            Denied::NoAuthHeader | Denied::NotAuthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// The access rules of `restapi`. The default allows everything.
#[derive(Clone, Default)]
pub struct AccessPolicy {
    allowlist: Vec<Network>,
    include_members: bool,
    require_client_cert: bool,
    /// `base64(username:password)`, compared with the header's.
    basic_key: Option<String>,
}

impl std::fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessPolicy")
            .field("allowlist", &self.allowlist)
            .field("include_members", &self.include_members)
            .field("require_client_cert", &self.require_client_cert)
            .field("basic_auth", &self.basic_key.as_ref().map(|_| "********"))
            .finish()
    }
}

impl AccessPolicy {
    /// The policy of a `restapi` section; allowlist host names are resolved now (Patroni does so
    /// at start too). Errors: an allowlist entry that is neither an address, a network nor a name
    /// that resolves.
    pub async fn from_config(r: &RestApi) -> Result<AccessPolicy, String> {
        let mut allowlist = Vec::new();
        for entry in r.allowlist.iter().flatten() {
            match Network::parse(entry) {
                Some(n) => allowlist.push(n),
                None => {
                    let addrs = resolve(entry).await;
                    if addrs.is_empty() {
                        return Err(format!(
                            "restapi.allowlist: {entry:?} is not an address, a network or a resolvable name"
                        ));
                    }
                    allowlist.extend(addrs.into_iter().map(|a| Network {
                        addr: a,
                        prefix: if a.is_ipv4() { 32 } else { 128 },
                    }));
                }
            }
        }
        let verify = r.verify_client().map_err(|e| e.to_string())?;
        Ok(AccessPolicy {
            allowlist,
            include_members: r.allowlist_include_members,
            require_client_cert: r.is_tls() && verify != VerifyClient::None,
            basic_key: r
                .authentication
                .as_ref()
                .map(|c| basic_key(&c.username, c.password.as_deref().unwrap_or(""))),
        })
    }

    /// A policy from parts (tests).
    pub fn new(
        allowlist: Vec<Network>,
        include_members: bool,
        require_client_cert: bool,
        credentials: Option<(&str, &str)>,
    ) -> AccessPolicy {
        AccessPolicy {
            allowlist,
            include_members,
            require_client_cert,
            basic_key: credentials.map(|(u, p)| basic_key(u, p)),
        }
    }

    /// Whether members' addresses must be resolved for [`AccessPolicy::check`].
    pub fn includes_members(&self) -> bool {
        self.include_members
    }

    /// Checks one unsafe request: the caller's address, whether it presented a verified client
    /// certificate, its `Authorization` header, and the members' addresses (when
    /// `allowlist_include_members`).
    pub fn check(
        &self,
        ip: IpAddr,
        client_cert: bool,
        authorization: Option<&str>,
        member_ips: &[IpAddr],
    ) -> Result<(), Denied> {
        if !self.allowlist.is_empty() || self.include_members {
            let allowed = self.allowlist.iter().any(|n| n.contains(ip))
                || (self.include_members
                    && member_ips.iter().any(|m| {
                        Network {
                            addr: *m,
                            prefix: if m.is_ipv4() { 32 } else { 128 },
                        }
                        .contains(ip)
                    }));
            if !allowed {
                return Err(Denied::NotAllowed);
            }
        }
        if self.require_client_cert && !client_cert {
            return Err(Denied::NoClientCertificate);
        }
        if let Some(key) = &self.basic_key {
            let header = authorization.ok_or(Denied::NoAuthHeader)?;
            let given = header
                .strip_prefix("Basic ")
                .or_else(|| header.strip_prefix("basic "))
                .map(str::trim)
                .ok_or(Denied::NotAuthenticated)?;
            if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
                return Err(Denied::NotAuthenticated);
            }
        }
        Ok(())
    }
}

/// `base64(username:password)`.
pub fn basic_key(username: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn resolve(host: &str) -> Vec<IpAddr> {
    let lookup = tokio::net::lookup_host((host, 0));
    match tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        _ => vec![],
    }
}

/// The addresses of the members' REST API and PostgreSQL hosts (names resolved).
pub async fn member_ips(cluster: &Cluster) -> Vec<IpAddr> {
    let mut hosts: Vec<String> = Vec::new();
    for m in &cluster.members {
        for url in [m.data.api_url.as_deref(), m.data.conn_url.as_deref()]
            .into_iter()
            .flatten()
        {
            if let Some((h, _)) = praetor_dcs::parse_url_host_port(url, 0) {
                hosts.push(h);
            }
        }
    }
    hosts.sort();
    hosts.dedup();
    let mut ips = Vec::new();
    for h in hosts {
        match h.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => ips.extend(resolve(&h).await),
        }
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let n = Network::parse("10.0.0.0/8").unwrap();
        assert!(n.contains(ip("10.1.2.3")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(n.contains(ip("::ffff:10.0.0.1")), "IPv4-mapped counts");
        let h = Network::parse("127.0.0.1").unwrap();
        assert_eq!(h.prefix, 32);
        assert!(h.contains(ip("127.0.0.1")));
        assert!(!h.contains(ip("127.0.0.2")));
        assert!(Network::parse("::1").unwrap().contains(ip("::1")));
        assert!(Network::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert_eq!(Network::parse("db1.example"), None);
        assert_eq!(Network::parse("10.0.0.0/33"), None);
    }

    #[test]
    fn open_policy_allows_everything() {
        let p = AccessPolicy::default();
        assert_eq!(p.check(ip("192.0.2.1"), false, None, &[]), Ok(()));
    }

    #[test]
    fn basic_auth_table() {
        let p = AccessPolicy::new(vec![], false, false, Some(("admin", "s3cret")));
        let good = format!("Basic {}", basic_key("admin", "s3cret"));
        let bad = format!("Basic {}", basic_key("admin", "wrong"));
        let rows: Vec<(Option<&str>, Result<(), Denied>)> = vec![
            (Some(good.as_str()), Ok(())),
            (None, Err(Denied::NoAuthHeader)),
            (Some(bad.as_str()), Err(Denied::NotAuthenticated)),
            (Some("Bearer abc"), Err(Denied::NotAuthenticated)),
        ];
        for (header, want) in rows {
            assert_eq!(
                p.check(ip("127.0.0.1"), false, header, &[]),
                want,
                "{header:?}"
            );
        }
        assert_eq!(Denied::NoAuthHeader.code(), StatusCode::UNAUTHORIZED);
        assert!(
            !format!("{p:?}").contains("s3cret"),
            "Debug masks the password"
        );
    }

    #[test]
    fn allowlist_comes_before_authentication() {
        let p = AccessPolicy::new(
            vec![Network::parse("10.0.0.0/24").unwrap()],
            false,
            false,
            Some(("a", "b")),
        );
        assert_eq!(
            p.check(ip("10.0.1.1"), false, None, &[]),
            Err(Denied::NotAllowed)
        );
        assert_eq!(Denied::NotAllowed.code(), StatusCode::FORBIDDEN);
        assert_eq!(
            p.check(ip("10.0.0.7"), false, None, &[]),
            Err(Denied::NoAuthHeader)
        );
    }

    #[test]
    fn members_are_allowed_with_allowlist_include_members() {
        let p = AccessPolicy::new(vec![], true, false, None);
        let members = [ip("10.0.0.2"), ip("10.0.0.3")];
        assert_eq!(p.check(ip("10.0.0.3"), false, None, &members), Ok(()));
        assert_eq!(
            p.check(ip("10.0.0.4"), false, None, &members),
            Err(Denied::NotAllowed)
        );
    }

    #[test]
    fn client_certificate_required_when_verifying_clients() {
        let p = AccessPolicy::new(vec![], false, true, None);
        assert_eq!(
            p.check(ip("127.0.0.1"), false, None, &[]),
            Err(Denied::NoClientCertificate)
        );
        assert_eq!(p.check(ip("127.0.0.1"), true, None, &[]), Ok(()));
    }
}
