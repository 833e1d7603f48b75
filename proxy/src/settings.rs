//! The proxy's settings, resolved from `praetor.proxy` in the configuration file.

use std::time::Duration;

use praetor_config::{Address, ProxyConfig};

use crate::error::ProxyError;

/// Default of `praetor.proxy.connect_timeout`, in seconds.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u32 = 5;

/// How long a client may take to send its startup packet (PostgreSQL's `authentication_timeout`
/// default): a client that stalls longer is dropped.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`crate::Proxy::bind`] needs. Listener addresses are `host:port` as in the YAML file; `host` may
/// be an IP address, a name, `*` (all IPv4 interfaces) or a comma-separated list of those; port 0 picks a
/// free port (see [`crate::Proxy::rw_addr`]).
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// `praetor.proxy.read_write.listen`: connections go to the leader.
    pub read_write: Option<Address>,
    /// `praetor.proxy.read_only.listen`: connections round-robin over running replicas, falling back
    /// to the leader when there is none.
    pub read_only: Option<Address>,
    /// `praetor.proxy.metrics.listen`: Prometheus metrics at `GET /metrics`.
    pub metrics: Option<Address>,
    /// `praetor.proxy.connect_timeout`: how long a client waits for a routable backend, and then how
    /// long the TCP connection to it may take.
    pub connect_timeout: Duration,
    /// How long a client may take to send its startup packet (not in the YAML file; 60 s).
    pub startup_timeout: Duration,
}

impl Default for ProxySettings {
    /// No listeners, 5 s connect timeout, 60 s startup timeout.
    fn default() -> ProxySettings {
        ProxySettings {
            read_write: None,
            read_only: None,
            metrics: None,
            connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS.into()),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }
}

impl ProxySettings {
    /// Resolves `praetor.proxy`. Errors: no `read_write` and no `read_only` listener, or a
    /// `connect_timeout` of 0.
    pub fn from_config(c: &ProxyConfig) -> Result<ProxySettings, ProxyError> {
        if c.read_write.is_none() && c.read_only.is_none() {
            return Err(ProxyError::Config {
                key: "praetor.proxy.read_write",
                reason:
                    "give praetor.proxy.read_write.listen and/or praetor.proxy.read_only.listen"
                        .into(),
            });
        }
        let secs = c.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS);
        if secs == 0 {
            return Err(ProxyError::Config {
                key: "praetor.proxy.connect_timeout",
                reason: "must be at least 1 (seconds)".into(),
            });
        }
        Ok(ProxySettings {
            read_write: c.read_write.as_ref().map(|l| l.listen.clone()),
            read_only: c.read_only.as_ref().map(|l| l.listen.clone()),
            metrics: c.metrics.as_ref().map(|l| l.listen.clone()),
            connect_timeout: Duration::from_secs(secs.into()),
            ..ProxySettings::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> ProxyConfig {
        let c = praetor_config::parse_str(yaml).expect("valid yaml");
        c.config.praetor.proxy.expect("praetor.proxy present")
    }

    #[test]
    fn settings_come_from_praetor_proxy() {
        let c = config(
            "praetor:\n  proxy:\n    read_write: {listen: '0.0.0.0:5000'}\n    read_only: {listen: '*:5001'}\n    metrics: {listen: '127.0.0.1:9187'}\n    connect_timeout: 3\n",
        );
        let s = ProxySettings::from_config(&c).unwrap();
        assert_eq!(s.read_write.unwrap().to_string(), "0.0.0.0:5000");
        assert_eq!(s.read_only.unwrap().host, "*");
        assert_eq!(s.metrics.unwrap().port, 9187);
        assert_eq!(s.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn connect_timeout_defaults_to_five_seconds_and_zero_is_refused() {
        let c = config("praetor:\n  proxy:\n    read_only: {listen: '127.0.0.1:5001'}\n");
        let s = ProxySettings::from_config(&c).unwrap();
        assert_eq!(s.connect_timeout, Duration::from_secs(5));
        assert!(s.read_write.is_none() && s.metrics.is_none());

        let c = config(
            "praetor:\n  proxy:\n    read_only: {listen: '127.0.0.1:5001'}\n    connect_timeout: 0\n",
        );
        let err = ProxySettings::from_config(&c).unwrap_err();
        assert!(
            err.to_string().starts_with("praetor.proxy.connect_timeout"),
            "{err}"
        );
    }

    #[test]
    fn a_proxy_without_client_listeners_is_refused() {
        let c = config("praetor:\n  proxy:\n    metrics: {listen: '127.0.0.1:9187'}\n");
        assert!(ProxySettings::from_config(&c).is_err());
    }
}
