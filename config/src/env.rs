//! Environment variables that override the YAML file, as Patroni's do (`PATRONI_NAME`,
//! `PATRONI_POSTGRESQL_DATA_DIR`, ...). Praetor accepts the same names with the `PRAETOR_` prefix too;
//! when both are set, `PRAETOR_` wins. Containers and systemd units set per-node values this way and
//! share one file.

use serde_yaml::{Mapping, Value};

/// Each variable suffix (after `PATRONI_` / `PRAETOR_`) and the key path it sets.
const OVERRIDES: &[(&str, &[&str])] = &[
    ("NAME", &["name"]),
    ("NAMESPACE", &["namespace"]),
    ("SCOPE", &["scope"]),
    ("LOG_LEVEL", &["log", "level"]),
    ("LOG_FORMAT", &["log", "format"]),
    ("LOG_DIR", &["log", "dir"]),
    ("RESTAPI_LISTEN", &["restapi", "listen"]),
    ("RESTAPI_CONNECT_ADDRESS", &["restapi", "connect_address"]),
    (
        "RESTAPI_USERNAME",
        &["restapi", "authentication", "username"],
    ),
    (
        "RESTAPI_PASSWORD",
        &["restapi", "authentication", "password"],
    ),
    ("RESTAPI_CERTFILE", &["restapi", "certfile"]),
    ("RESTAPI_KEYFILE", &["restapi", "keyfile"]),
    ("RESTAPI_CAFILE", &["restapi", "cafile"]),
    ("RESTAPI_VERIFY_CLIENT", &["restapi", "verify_client"]),
    ("ETCD3_HOST", &["etcd3", "host"]),
    ("ETCD3_HOSTS", &["etcd3", "hosts"]),
    ("ETCD3_PROTOCOL", &["etcd3", "protocol"]),
    ("ETCD3_USERNAME", &["etcd3", "username"]),
    ("ETCD3_PASSWORD", &["etcd3", "password"]),
    // Patroni's etcd v2 section: mapped so that setting them is refused like the YAML section, with
    // the error naming `etcd` and saying to use PATRONI_ETCD3_HOSTS, rather than silently ignored.
    ("ETCD_HOST", &["etcd", "host"]),
    ("ETCD_HOSTS", &["etcd", "hosts"]),
    ("ZOOKEEPER_HOSTS", &["zookeeper", "hosts"]),
    ("POSTGRESQL_LISTEN", &["postgresql", "listen"]),
    (
        "POSTGRESQL_CONNECT_ADDRESS",
        &["postgresql", "connect_address"],
    ),
    ("POSTGRESQL_DATA_DIR", &["postgresql", "data_dir"]),
    ("POSTGRESQL_BIN_DIR", &["postgresql", "bin_dir"]),
    ("POSTGRESQL_CONFIG_DIR", &["postgresql", "config_dir"]),
    ("POSTGRESQL_PGPASS", &["postgresql", "pgpass"]),
    (
        "SUPERUSER_USERNAME",
        &["postgresql", "authentication", "superuser", "username"],
    ),
    (
        "SUPERUSER_PASSWORD",
        &["postgresql", "authentication", "superuser", "password"],
    ),
    (
        "REPLICATION_USERNAME",
        &["postgresql", "authentication", "replication", "username"],
    ),
    (
        "REPLICATION_PASSWORD",
        &["postgresql", "authentication", "replication", "password"],
    ),
    (
        "REWIND_USERNAME",
        &["postgresql", "authentication", "rewind", "username"],
    ),
    (
        "REWIND_PASSWORD",
        &["postgresql", "authentication", "rewind", "password"],
    ),
];

/// Applies the overrides found in `env` (name, value) to the YAML `doc`. Returns the names of the
/// variables applied (never their values: some are passwords).
pub fn apply_overrides(doc: &mut Value, env: &[(String, String)]) -> Vec<String> {
    let mut applied = Vec::new();
    for prefix in ["PATRONI_", "PRAETOR_"] {
        for (suffix, path) in OVERRIDES {
            let name = format!("{prefix}{suffix}");
            if let Some((_, value)) = env.iter().find(|(k, _)| *k == name) {
                set_path(doc, path, Value::String(value.clone()));
                applied.push(name);
            }
        }
    }
    applied
}

fn set_path(doc: &mut Value, path: &[&str], value: Value) {
    if !doc.is_mapping() {
        *doc = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(map) = doc else {
        unreachable!("made a mapping just above")
    };
    let key = Value::String(path[0].to_string());
    if path.len() == 1 {
        map.insert(key, value);
        return;
    }
    let child = map
        .entry(key)
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    set_path(child, &path[1..], value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patroni_and_praetor_names_override_nested_keys() {
        let mut doc: Value =
            serde_yaml::from_str("name: a\npostgresql:\n  listen: 1.2.3.4:5432\n").unwrap();
        let env = vec![
            ("PATRONI_NAME".to_string(), "from-patroni".to_string()),
            ("PRAETOR_NAME".to_string(), "from-praetor".to_string()),
            (
                "PATRONI_SUPERUSER_PASSWORD".to_string(),
                "secret".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let applied = apply_overrides(&mut doc, &env);
        assert_eq!(doc["name"], Value::String("from-praetor".into()));
        assert_eq!(
            doc["postgresql"]["authentication"]["superuser"]["password"],
            Value::String("secret".into())
        );
        assert_eq!(
            doc["postgresql"]["listen"],
            Value::String("1.2.3.4:5432".into())
        );
        assert_eq!(
            applied,
            vec!["PATRONI_NAME", "PATRONI_SUPERUSER_PASSWORD", "PRAETOR_NAME"]
        );
    }
}
