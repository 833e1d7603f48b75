//! Patroni's key layout: `/<namespace>/<scope>/{initialize,config,leader,members/<name>,history,sync,
//! failover,status,failsafe}` (reference/patroni.md section 1).

/// The keys of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    base: String,
}

/// What a key under the cluster prefix is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `initialize`: the database system identifier.
    Initialize,
    /// `config`: dynamic configuration.
    Config,
    /// `leader`: the lock.
    Leader,
    /// `members/<name>`.
    Member(String),
    /// `history`: timeline history.
    History,
    /// `sync`: synchronous standbys.
    Sync,
    /// `failover`: a requested switchover or failover.
    Failover,
    /// `status`: leader optime and slots.
    Status,
    /// `failsafe`: members confirming failsafe mode.
    Failsafe,
    /// `praetor/proxies/<id>`: which leader a proxy routes writes to (Praetor's fencing handshake).
    Proxy(String),
    /// Anything else under the prefix (other tools' keys).
    Other(String),
    /// Not a key: the watch reconnected and anything may have changed.
    Resync,
}

impl Keys {
    /// Keys for cluster `scope` under `namespace` (`/service/`, normalized to slashes on both ends).
    pub fn new(namespace: &str, scope: &str) -> Keys {
        let ns = praetor_config::model::normalize_namespace(namespace);
        Keys {
            base: format!("{ns}{scope}/"),
        }
    }

    /// The cluster prefix, `/<namespace>/<scope>/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `…/initialize`.
    pub fn initialize(&self) -> String {
        format!("{}initialize", self.base)
    }
    /// `…/config`.
    pub fn config(&self) -> String {
        format!("{}config", self.base)
    }
    /// `…/leader`.
    pub fn leader(&self) -> String {
        format!("{}leader", self.base)
    }
    /// `…/members/` (prefix of every member key).
    pub fn members(&self) -> String {
        format!("{}members/", self.base)
    }
    /// `…/members/<name>`.
    pub fn member(&self, name: &str) -> String {
        format!("{}members/{name}", self.base)
    }
    /// `…/history`.
    pub fn history(&self) -> String {
        format!("{}history", self.base)
    }
    /// `…/sync`.
    pub fn sync(&self) -> String {
        format!("{}sync", self.base)
    }
    /// `…/failover`.
    pub fn failover(&self) -> String {
        format!("{}failover", self.base)
    }
    /// `…/status`.
    pub fn status(&self) -> String {
        format!("{}status", self.base)
    }
    /// `…/failsafe`.
    pub fn failsafe(&self) -> String {
        format!("{}failsafe", self.base)
    }
    /// `…/praetor/proxies/` (prefix of every proxy key).
    pub fn proxies(&self) -> String {
        format!("{}praetor/proxies/", self.base)
    }
    /// `…/praetor/proxies/<id>`.
    pub fn proxy(&self, id: &str) -> String {
        format!("{}praetor/proxies/{id}", self.base)
    }

    /// Classifies a full key path; `None` when it is not under this cluster's prefix.
    pub fn classify(&self, key: &str) -> Option<KeyKind> {
        let rest = key.strip_prefix(&self.base)?;
        Some(match rest {
            "initialize" => KeyKind::Initialize,
            "config" => KeyKind::Config,
            "leader" => KeyKind::Leader,
            "history" => KeyKind::History,
            "sync" => KeyKind::Sync,
            "failover" => KeyKind::Failover,
            "status" => KeyKind::Status,
            "failsafe" => KeyKind::Failsafe,
            other => {
                if let Some(name) = other.strip_prefix("members/") {
                    if !name.is_empty() && !name.contains('/') {
                        return Some(KeyKind::Member(name.to_string()));
                    }
                }
                if let Some(id) = other.strip_prefix("praetor/proxies/") {
                    if !id.is_empty() && !id.contains('/') {
                        return Some(KeyKind::Proxy(id.to_string()));
                    }
                }
                KeyKind::Other(other.to_string())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_patronis() {
        let k = Keys::new("/service/", "pgsql");
        assert_eq!(k.leader(), "/service/pgsql/leader");
        assert_eq!(k.member("pg01"), "/service/pgsql/members/pg01");
        assert_eq!(Keys::new("service", "x").config(), "/service/x/config");
    }

    #[test]
    fn classify_recognizes_every_key() {
        let k = Keys::new("/service/", "pgsql");
        assert_eq!(k.classify("/service/pgsql/leader"), Some(KeyKind::Leader));
        assert_eq!(
            k.classify("/service/pgsql/members/pg02"),
            Some(KeyKind::Member("pg02".into()))
        );
        assert_eq!(k.classify("/service/other/leader"), None);
        assert_eq!(
            k.classify("/service/pgsql/praetor/proxies/a"),
            Some(KeyKind::Proxy("a".into()))
        );
        assert_eq!(
            k.classify("/service/pgsql/praetor/other"),
            Some(KeyKind::Other("praetor/other".into()))
        );
    }
}
