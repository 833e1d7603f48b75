//! How each YAML key Praetor does not act on is treated: duplicate keys resolved the way Patroni's
//! loader does, and a warning for every key that has no effect, naming its path.
//!
//! Patroni reads its file with PyYAML, whose mappings keep the *last* value of a repeated key without a
//! word. Operator guides copied from PDFs often repeat whole blocks (seed 002 repeats `restapi`, `etcd`
//! and `bootstrap`), so refusing them would refuse files Patroni runs; keeping the first would run a
//! different configuration. Praetor keeps the last, as Patroni, and warns naming the key.
//!
//! A key that serde does not map onto the model is reported by [`unused_key_warning`]: a key of
//! Patroni's documented YAML that Praetor does not implement says so and that it has no effect; any
//! other key is called unknown (usually a typo). The table of every Patroni key and its treatment is
//! in `docs/patroni-keys.md`.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_yaml::Value;

use crate::ConfigError;

/// Parses YAML text into a [`Value`], keeping the last value of a repeated mapping key (PyYAML's rule,
/// hence Patroni's). Returns the value and the dotted path of every repeated key, in document order
/// (`bootstrap`, `bootstrap.dcs.postgresql.parameters.hot_standby`).
///
/// Errors: YAML syntax errors, with their line and column.
pub fn parse_last_wins(text: &str) -> Result<(Value, Vec<String>), serde_yaml::Error> {
    let mut repeated = Vec::new();
    let seed = LastWins {
        path: String::new(),
        repeated: &mut repeated,
    };
    let value = seed.deserialize(serde_yaml::Deserializer::from_str(text))?;
    Ok((value, repeated))
}

/// Builds a [`Value`] at `path`, recording repeated keys in `repeated`.
struct LastWins<'a> {
    path: String,
    repeated: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for LastWins<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "~".to_string(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

impl<'de> Visitor<'de> for LastWins<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, items.len());
            let seed = LastWins {
                path,
                repeated: &mut *self.repeated,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => items.push(v),
                None => return Ok(Value::Sequence(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_yaml::Mapping::new();
        while let Some(key) = map.next_key::<Value>()? {
            let k = key_text(&key);
            let path = if self.path.is_empty() {
                k
            } else {
                format!("{}.{k}", self.path)
            };
            let seed = LastWins {
                path: path.clone(),
                repeated: &mut *self.repeated,
            };
            let value = map.next_value_seed(seed)?;
            if out.insert(key, value).is_some() {
                self.repeated.push(path);
            }
        }
        Ok(Value::Mapping(out))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        // serde_yaml hands a value with a YAML tag (`!something value`) over as an enum.
        use de::VariantAccess;
        let (tag, contents) = data.variant::<String>()?;
        let value = contents.newtype_variant_seed(self)?;
        Ok(Value::Tagged(Box::new(serde_yaml::value::TaggedValue {
            tag: serde_yaml::value::Tag::new(tag),
            value,
        })))
    }
}

/// The warning for a repeated key: the last value is used, as Patroni does.
pub fn repeated_key_warning(path: &str) -> String {
    format!(
        "{path}: the key is given more than once; the last one is used (as Patroni does) and the \
         earlier ones have no effect"
    )
}

/// Keys of Patroni's documented YAML that Praetor does not implement and that are safe to run
/// without: a pattern (`*` matches one path segment) and why it has no effect. Keys whose absence
/// would change what the cluster does (TLS, authentication, another bootstrap method, a standby
/// cluster) are refused instead, while parsing ([`check_raw`]).
pub const NOT_IMPLEMENTED: &[(&str, &str)] = &[
    (
        "log.type",
        "Praetor's log format is log.format: text or json",
    ),
    ("log.traceback_level", "Praetor writes no Python tracebacks"),
    ("log.dateformat", "timestamps are RFC 3339"),
    ("log.static_fields", "not implemented"),
    ("log.max_queue_size", "logging is not queued"),
    (
        "log.file_num",
        "Praetor appends to <log.dir>/praetor.log; rotate it with logrotate",
    ),
    (
        "log.file_size",
        "Praetor appends to <log.dir>/praetor.log; rotate it with logrotate",
    ),
    ("log.loggers", "not implemented"),
    ("log.deduplicate_heartbeat_logs", "not implemented"),
    ("log.mode", "not implemented"),
    (
        "restapi.keyfile_password",
        "encrypted private keys are not supported",
    ),
    ("restapi.ciphers", "the TLS library's defaults are used"),
    ("restapi.http_extra_headers", "not implemented"),
    ("restapi.https_extra_headers", "not implemented"),
    ("restapi.request_queue_size", "not implemented"),
    ("restapi.server_tokens", "not implemented"),
    (
        "ctl.keyfile_password",
        "encrypted private keys are not supported",
    ),
    ("etcd3.use_proxies", "Praetor connects to the listed hosts"),
    (
        "etcd3.srv",
        "DNS SRV discovery is not implemented: list etcd3.hosts",
    ),
    (
        "etcd3.srv_suffix",
        "DNS SRV discovery is not implemented: list etcd3.hosts",
    ),
    ("etcd3.url", "list etcd3.hosts"),
    ("etcd3.proxy", "list etcd3.hosts"),
    (
        "zookeeper.set_acls",
        "ACLs are not set on the keys Praetor creates",
    ),
    ("consul", "Praetor speaks etcd v3 and ZooKeeper"),
    ("kubernetes", "Praetor speaks etcd v3 and ZooKeeper"),
    ("exhibitor", "Praetor speaks etcd v3 and ZooKeeper"),
    ("raft", "Praetor speaks etcd v3 and ZooKeeper"),
    ("citus", "Citus clusters are not supported"),
    ("postgresql.proxy_address", "not published"),
    (
        "postgresql.bin_name",
        "the programs' standard names are used in postgresql.bin_dir",
    ),
    (
        "postgresql.use_unix_socket_repl",
        "replication connections use TCP",
    ),
    (
        "postgresql.custom_conf",
        "Praetor's postgresql.conf includes postgresql.base.conf",
    ),
    ("postgresql.pg_ident", "pg_ident.conf is left as it is"),
    ("postgresql.before_stop", "not implemented"),
    (
        "postgresql.use_pg_rewind",
        "set it in bootstrap.dcs.postgresql (the dynamic configuration)",
    ),
    (
        "postgresql.authentication.*.sslmode",
        "the agent's connections use sslmode=prefer",
    ),
    (
        "postgresql.authentication.*.sslkey",
        "client certificates are not implemented",
    ),
    (
        "postgresql.authentication.*.sslcert",
        "client certificates are not implemented",
    ),
    (
        "postgresql.authentication.*.sslpassword",
        "client certificates are not implemented",
    ),
    (
        "postgresql.authentication.*.sslrootcert",
        "server verification is not implemented",
    ),
    (
        "postgresql.authentication.*.sslcrl",
        "server verification is not implemented",
    ),
    (
        "postgresql.authentication.*.sslcrldir",
        "server verification is not implemented",
    ),
    (
        "postgresql.authentication.*.gssencmode",
        "the agent's connections use gssencmode=disable",
    ),
    (
        "postgresql.authentication.*.channel_binding",
        "the agent's connections use channel_binding=prefer",
    ),
    (
        "tags.sync_priority",
        "synchronous standbys are chosen by name order",
    ),
    (
        "bootstrap.dcs.max_timelines_history",
        "the history key is not trimmed",
    ),
    (
        "bootstrap.dcs.postgresql.pg_ident",
        "pg_ident.conf is left as it is",
    ),
    ("bootstrap.dcs.permanent_slots", "write bootstrap.dcs.slots"),
    (
        "bootstrap.dcs.synchronous_mode_count",
        "write bootstrap.dcs.synchronous_node_count",
    ),
];

/// The events of `postgresql.callbacks` (Patroni's `CallbackAction`). Any other key there is refused:
/// a misspelled `on_role_chnage` would otherwise never run the script that moves a virtual IP.
pub const CALLBACK_EVENTS: &[&str] = &[
    "on_reload",
    "on_restart",
    "on_role_change",
    "on_start",
    "on_stop",
];

fn at<'a>(doc: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(doc, |v, k| v.get(*k))
        .filter(|v| !v.is_null())
}

fn refuse(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Refuses, naming the key path, the keys whose being ignored would change what the cluster does:
/// a misspelled callback ([`CALLBACK_EVENTS`]), a bootstrap method other than initdb (the cluster
/// would be created empty instead of restored), a standby cluster (it would become a primary
/// cluster), ZooKeeper's TLS and authentication settings (Praetor would connect without them), a
/// `config_dir` other than the data directory; and incomplete etcd3 TLS or authentication settings
/// (`https` without `cacert`, `cert` without `key`, `password` without `username`).
///
/// `doc` is the document with repeated keys resolved and environment overrides applied.
pub fn check_raw(doc: &Value) -> Result<(), ConfigError> {
    if let Some(Value::Mapping(callbacks)) = at(doc, &["postgresql", "callbacks"]) {
        for name in callbacks.keys() {
            let name = key_text(name);
            if !CALLBACK_EVENTS.contains(&name.as_str()) {
                return Err(refuse(
                    format!("postgresql.callbacks.{name}"),
                    format!(
                        "unknown callback event: the events are {}",
                        CALLBACK_EVENTS.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(method) = at(doc, &["bootstrap", "method"]) {
        if method.as_str() != Some("initdb") {
            return Err(refuse(
                "bootstrap.method".into(),
                "custom bootstrap methods are not implemented: Praetor would create the cluster \
                 with initdb instead of running the method; remove the key to bootstrap with initdb",
            ));
        }
    }
    for key in [
        "use_ssl",
        "cacert",
        "cert",
        "key",
        "key_password",
        "verify",
        "auth_data",
    ] {
        if let Some(v) = at(doc, &["zookeeper", key]) {
            if key == "use_ssl" && v.as_bool() == Some(false) {
                continue;
            }
            return Err(refuse(
                format!("zookeeper.{key}"),
                "ZooKeeper TLS and authentication are not implemented: Praetor would connect \
                 without them",
            ));
        }
    }
    if let Some(p) = at(doc, &["etcd3", "protocol"]) {
        match p.as_str() {
            Some("http") => {}
            Some("https") if at(doc, &["etcd3", "cacert"]).is_some() => {}
            Some("https") => {
                return Err(refuse(
                    "etcd3.cacert".into(),
                    "missing: with protocol https, give the CA certificate that signed etcd's \
                     certificates (PEM path)",
                ))
            }
            _ => return Err(refuse("etcd3.protocol".into(), "expected http or https")),
        }
    }
    for (given, missing) in [("cert", "key"), ("key", "cert"), ("password", "username")] {
        if at(doc, &["etcd3", given]).is_some() && at(doc, &["etcd3", missing]).is_none() {
            return Err(refuse(
                format!("etcd3.{missing}"),
                format!("missing: etcd3.{given} is given without it"),
            ));
        }
    }
    let data_dir = at(doc, &["postgresql", "data_dir"]).and_then(Value::as_str);
    if let Some(dir) = at(doc, &["postgresql", "config_dir"]) {
        let same = match (dir.as_str(), data_dir) {
            (Some(c), Some(d)) => same_dir(c, d),
            _ => false,
        };
        if !same {
            return Err(refuse(
                "postgresql.config_dir".into(),
                "a configuration directory other than postgresql.data_dir is not implemented: \
                 Praetor writes postgresql.conf and pg_hba.conf in the data directory; remove the \
                 key or set it to the data directory",
            ));
        }
    }
    Ok(())
}

/// Two spellings of one directory: equal once `.` components and trailing slashes are dropped.
fn same_dir(a: &str, b: &str) -> bool {
    let norm = |p: &str| -> Vec<String> {
        std::path::Path::new(p)
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect()
    };
    norm(a) == norm(b)
}

/// Matches a dotted `path` against a pattern of [`NOT_IMPLEMENTED`]: equal segment by segment (`*`
/// matching any one segment), or the pattern names a section that contains `path`.
fn matches(pattern: &str, path: &str) -> bool {
    let mut p = pattern.split('.');
    let mut k = path.split('.');
    loop {
        match (p.next(), k.next()) {
            (None, _) => return true,
            (Some(_), None) => return false,
            (Some(a), Some(b)) if a == "*" || a == b => {}
            _ => return false,
        }
    }
}

/// The warning for a key the model does not use, naming its dotted `path`.
pub fn unused_key_warning(path: &str) -> String {
    match NOT_IMPLEMENTED.iter().find(|(p, _)| matches(p, path)) {
        Some((_, why)) => {
            format!("{path}: Patroni key not implemented by Praetor, it has no effect ({why})")
        }
        None => format!("{path}: unknown key, it has no effect"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_of_repeated_keys_wins_and_each_is_named() {
        let (v, repeated) =
            parse_last_wins("a: 1\nb:\n  c: 1\n  c: 2\nl:\n- x: 1\n  x: 2\na:\n  d: 3\n").unwrap();
        assert_eq!(repeated, ["b.c", "l[0].x", "a"]);
        assert_eq!(v["a"]["d"], Value::from(3));
        assert_eq!(v["b"]["c"], Value::from(2));
        assert_eq!(v["l"][0]["x"], Value::from(2));
    }

    #[test]
    fn yaml_errors_keep_their_position() {
        let e = parse_last_wins("a: [1\n").unwrap_err();
        assert!(e.location().is_some(), "{e}");
    }

    #[test]
    fn patroni_keys_and_typos_are_told_apart() {
        assert_eq!(
            unused_key_warning("postgresql.authentication.superuser.sslmode"),
            "postgresql.authentication.superuser.sslmode: Patroni key not implemented by \
             Praetor, it has no effect (the agent's connections use sslmode=prefer)"
        );
        assert!(unused_key_warning("consul.host").starts_with("consul.host: Patroni key"));
        assert_eq!(
            unused_key_warning("bootstrap.dcs.loop_wiat"),
            "bootstrap.dcs.loop_wiat: unknown key, it has no effect"
        );
        assert!(unused_key_warning("log.typo").contains("unknown key"));
    }
}
