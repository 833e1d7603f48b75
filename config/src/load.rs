//! Reading a configuration file: unknown keys become warnings, bad values errors, both naming the key
//! path.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::model::Config;

/// A configuration that parsed, with a warning for every key Praetor does not know.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The parsed configuration.
    pub config: Config,
    /// Human-readable warnings, each naming a key path: a key with no effect
    /// (`bootstrap.dcs.tll: unknown key, it has no effect`), a repeated key whose earlier values are
    /// overridden, a timing adjusted ([`crate::keys`]).
    pub warnings: Vec<String>,
}

/// Why a configuration cannot be used. `Display` starts with the key path where there is one, so the
/// operator sees at once which line to fix. The binary exits with code 2 on any of these, before it
/// starts anything.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A value has the wrong type or shape, or the YAML is malformed.
    #[error("{key}: {message}")]
    Parse {
        /// Dotted key path (`bootstrap.dcs.ttl`), or `.` for the document itself.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// A key the current role needs is absent.
    #[error("{key}: missing required key{}", if hint.is_empty() { String::new() } else { format!(" ({hint})") })]
    Missing {
        /// Dotted key path.
        key: String,
        /// How to fix it, possibly empty.
        hint: String,
    },
    /// A value is well-typed but not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What was wrong.
        message: String,
    },
}

impl ConfigError {
    /// The key path the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Parse { key, .. }
            | ConfigError::Missing { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

/// Reads and parses a configuration file, with `PATRONI_*` / `PRAETOR_*` environment variables
/// overriding its keys (see [`crate::env`]). See [`parse_str`].
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("PATRONI_") || k.starts_with("PRAETOR_"))
        .collect();
    parse_str_with_env(&text, &env)
}

/// Like [`parse_str`], with environment overrides `env` (name, value) applied first.
pub fn parse_str_with_env(text: &str, env: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let (mut doc, repeated) =
        crate::keys::parse_last_wins(text).map_err(|e| ConfigError::Parse {
            key: ".".into(),
            message: e.to_string(),
        })?;
    let applied = crate::env::apply_overrides(&mut doc, env);
    if applied.is_empty() && repeated.is_empty() {
        // Deserialize from the text, so that errors say at which line.
        return parse_with(serde_yaml::Deserializer::from_str(text), &doc, &repeated);
    }
    parse_with(doc.clone(), &doc, &repeated)
}

/// Parses YAML text into a [`Config`].
///
/// Unknown keys are collected as warnings naming their path; a wrong type is a
/// [`ConfigError::Parse`] naming the path (`bootstrap.dcs.ttl: invalid value: string "abc", expected an
/// integer`). Dangerous values are errors naming the path too: recovery settings, invalid names and
/// values with line breaks in either `parameters` ([`crate::guc`]), timings out of range
/// ([`crate::dynamic::TTL_MIN`], [`crate::dynamic::TIMING_MAX`]), an `etcd` (v2) section. Timings in
/// `bootstrap.dcs` that break Patroni's rule `loop_wait + 2*retry_timeout <= ttl` are adjusted with a
/// warning, as Patroni does.
pub fn parse_str(text: &str) -> Result<Loaded, ConfigError> {
    parse_str_with_env(text, &[])
}

/// Parses with any YAML deserializer (text keeps line numbers in messages, a `Value` does not).
/// `doc` is the same document as a value (repeated keys resolved, environment applied), for the checks
/// that look at raw keys; `repeated` the paths of the repeated keys.
fn parse_with<'de, D>(
    de: D,
    doc: &serde_yaml::Value,
    repeated: &[String],
) -> Result<Loaded, ConfigError>
where
    D: serde::Deserializer<'de, Error = serde_yaml::Error>,
{
    let mut warnings: Vec<String> = repeated
        .iter()
        .map(|p| crate::keys::repeated_key_warning(p))
        .collect();
    let mut unused = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result: Result<Config, serde_yaml::Error> = {
        let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
        serde_ignored::deserialize(tracked, |path| unused.push(dotted(&path.to_string())))
    };
    let mut config = result.map_err(|e| {
        let key = dotted(&track.path().to_string());
        ConfigError::Parse {
            message: strip_path_prefix(&e.to_string(), &key),
            key,
        }
    })?;
    crate::keys::check_raw(doc)?;
    config.postgresql.replica_methods = crate::replica::methods_from(doc, &config.postgresql)?;
    let method_sections: Vec<String> = config
        .postgresql
        .replica_methods
        .iter()
        .map(|m| format!("postgresql.{}", m.name))
        .collect();
    warnings.extend(
        unused
            .iter()
            .filter(|p| {
                !method_sections
                    .iter()
                    .any(|m| *p == m || p.starts_with(&format!("{m}.")))
            })
            .map(|p| crate::keys::unused_key_warning(p)),
    );
    for w in config.bootstrap.dcs.adjust_timings() {
        warnings.push(format!("bootstrap.dcs: {w}"));
    }
    Ok(Loaded { config, warnings })
}

/// serde_path_to_error prints `?` for an unknown path and `.` for the root; keep the dotted form.
fn dotted(path: &str) -> String {
    if path.is_empty() || path == "?" {
        ".".to_string()
    } else {
        path.to_string()
    }
}

/// serde_yaml prefixes nested errors with part of the key path (`postgresql: expected ...`); the error
/// already names the full path, so drop that prefix. The " at line L column C" suffix stays: it helps.
fn strip_path_prefix(msg: &str, key: &str) -> String {
    match msg.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') && key.starts_with(prefix) => {
            rest.to_string()
        }
        _ => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
scope: demo
namespace: /service/
name: pg01
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
etcd3:
  hosts: 127.0.0.1:2379,127.0.0.1:2380
bootstrap:
  dcs:
    ttl: 6
    loop_wait: 1
    retry_timeout: 2
    maximum_lag_on_failover: 1048576
    master_start_timeout: 300
    synchronous_mode: false
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        wal_log_hints: "on"
  initdb:
  - encoding: UTF8
  - data-checksums
  pg_hba:
  - host replication repl 127.0.0.1/32 md5
  - host all all 0.0.0.0/0 md5
  users:
    admin:
      password: admin
      options: [createrole, createdb]
postgresql:
  listen: 0.0.0.0:5432
  connect_address: 127.0.0.1:5432
  data_dir: /var/lib/pgsql/data
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: /tmp/pgpass0
  authentication:
    replication:
      username: repl
      password: "123456"
    superuser:
      username: postgres
      password: "123456"
  parameters:
    unix_socket_directories: '.'
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
"#;

    #[test]
    fn full_example_parses_without_warnings() {
        let l = parse_str(GOOD).unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let s = l.config.validate_agent().unwrap();
        assert_eq!(s.name, "pg01");
        assert_eq!(s.pg_listen.port, 5432);
        assert_eq!(
            s.dcs,
            crate::DcsEndpoints::Etcd(vec![
                "http://127.0.0.1:2379".into(),
                "http://127.0.0.1:2380".into()
            ])
        );
        let c = &l.config;
        assert_eq!(c.bootstrap.dcs.ttl, 6);
        assert!(c.bootstrap.dcs.postgresql.use_pg_rewind);
        assert_eq!(
            c.bootstrap.initdb[0].to_args(),
            vec!["--encoding=UTF8".to_string()]
        );
        assert_eq!(
            c.bootstrap.initdb[1].to_args(),
            vec!["--data-checksums".to_string()]
        );
        assert_eq!(
            c.bootstrap.users["admin"].options,
            vec!["createrole", "createdb"]
        );
    }

    #[test]
    fn unknown_key_is_a_warning_naming_the_path() {
        let text = GOOD.replace("    loop_wait: 1\n", "    loop_wait: 1\n    loop_wiat: 3\n");
        let l = parse_str(&text).unwrap();
        assert_eq!(
            l.warnings,
            vec!["bootstrap.dcs.loop_wiat: unknown key, it has no effect".to_string()]
        );
    }

    #[test]
    fn wrong_type_is_an_error_naming_the_path() {
        let text = GOOD.replace("ttl: 6", "ttl: six");
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.key(), Some("bootstrap.dcs.ttl"), "{e}");
        assert!(e.to_string().starts_with("bootstrap.dcs.ttl: "), "{e}");

        let text = GOOD.replace("use_slots: true", "use_slots: [1]");
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.key(), Some("bootstrap.dcs.postgresql.use_slots"), "{e}");

        let text = GOOD.replace("listen: 0.0.0.0:5432", "listen: nowhere");
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.key(), Some("postgresql.listen"), "{e}");
    }

    #[test]
    fn missing_data_dir_is_an_error_naming_the_path() {
        let text = GOOD.replace("  data_dir: /var/lib/pgsql/data\n", "");
        let l = parse_str(&text).unwrap();
        let e = l.config.validate_agent().unwrap_err();
        assert_eq!(e.to_string(), "postgresql.data_dir: missing required key");
    }

    #[test]
    fn two_dcs_sections_are_refused_naming_both() {
        let text = format!("{GOOD}zookeeper:\n  hosts: [127.0.0.1:2181]\n");
        let l = parse_str(&text).unwrap();
        let e = l.config.validate_agent().unwrap_err();
        assert!(e.to_string().contains("etcd3 and zookeeper"), "{e}");
    }

    #[test]
    fn malformed_yaml_is_an_error() {
        let e = parse_str("scope: [unclosed\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    }

    #[test]
    fn etcd_v2_section_is_refused_saying_to_write_etcd3() {
        let text = GOOD.replace(
            "etcd3:\n  hosts: 127.0.0.1:2379,127.0.0.1:2380\n",
            "etcd:\n  host: 10.0.0.1:2379\n",
        );
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.key(), Some("etcd"), "{e}");
        assert!(e.to_string().contains("write etcd3: instead"), "{e}");
        // etcd3 with host (not hosts) is accepted.
        let text = GOOD.replace(
            "etcd3:\n  hosts: 127.0.0.1:2379,127.0.0.1:2380\n",
            "etcd3:\n  host: 10.0.0.1:2379\n",
        );
        assert_eq!(
            parse_str(&text).unwrap().config.dcs_endpoints().unwrap(),
            crate::DcsEndpoints::Etcd(vec!["http://10.0.0.1:2379".into()])
        );
    }

    #[test]
    fn patroni_etcd_environment_variables_are_refused_like_the_section() {
        for var in ["PATRONI_ETCD_HOSTS", "PATRONI_ETCD_HOST"] {
            let env = vec![(var.to_string(), "10.0.0.1:2379".to_string())];
            let e = parse_str_with_env(GOOD, &env).unwrap_err();
            assert_eq!(e.key(), Some("etcd"), "{var}: {e}");
            assert!(e.to_string().contains("PATRONI_ETCD3_HOSTS"), "{e}");
        }
    }

    /// Each bad setting, where it is refused (key path) and the start of the message.
    const BAD_SETTINGS: &[(&str, &str, &str, &str)] = &[
        (
            "  parameters:\n    unix_socket_directories: '.'\n",
            "  parameters:\n    unix_socket_directories: '.'\n    promote_trigger_file: /tmp/promote\n",
            "postgresql.parameters.promote_trigger_file",
            "promote_trigger_file is managed by the agent",
        ),
        (
            "        wal_log_hints: \"on\"\n",
            "        wal_log_hints: \"on\"\n        recovery_target_time: '2026-01-01 00:00:00'\n",
            "bootstrap.dcs.postgresql.parameters.recovery_target_time",
            "recovery_target_time is a recovery setting",
        ),
        (
            "        wal_log_hints: \"on\"\n",
            "        wal_log_hints: \"on\"\n        primary_conninfo: host=elsewhere\n",
            "bootstrap.dcs.postgresql.parameters.primary_conninfo",
            "primary_conninfo is managed by the agent",
        ),
        (
            "        hot_standby: \"on\"\n",
            "        hot_standby: \"off\"\n",
            "bootstrap.dcs.postgresql.parameters.hot_standby",
            "hot_standby is managed by the agent",
        ),
        (
            "    unix_socket_directories: '.'\n",
            "    unix_socket_directories: '.'\n    \"work_mem = 1\": 2\n",
            "postgresql.parameters",
            "\"work_mem = 1\" is not a valid parameter name",
        ),
        (
            "    unix_socket_directories: '.'\n",
            "    unix_socket_directories: \".\\nrestore_command = 'x'\"\n",
            "postgresql.parameters.unix_socket_directories",
            "the value contains a line break",
        ),
        (
            "    retry_timeout: 2\n",
            "    retry_timeout: 2147483648\n",
            "bootstrap.dcs.retry_timeout",
            "2147483648 is out of range: give 0 to 86400 seconds",
        ),
        (
            "    ttl: 6\n",
            "    ttl: 2\n",
            "bootstrap.dcs.ttl",
            "2 is out of range: give 3 to 86400 seconds (below 3, no loop_wait",
        ),
        (
            "    loop_wait: 1\n",
            "    loop_wait: -1\n",
            "bootstrap.dcs.loop_wait",
            "-1 is out of range: give 0 to 86400 seconds",
        ),
        (
            "    maximum_lag_on_failover: 1048576\n",
            "    maximum_lag_on_failover: -1\n",
            "bootstrap.dcs.maximum_lag_on_failover",
            "integer -1 out of range: give 0 to 18446744073709551615",
        ),
    ];

    #[test]
    fn bad_settings_are_refused_naming_the_key_path() {
        for (from, to, key, message) in BAD_SETTINGS {
            assert!(GOOD.contains(from), "{from}");
            let text = GOOD.replacen(from, to, 1);
            let e = parse_str(&text).unwrap_err();
            assert_eq!(e.key(), Some(*key), "{e}");
            assert!(
                e.to_string().starts_with(&format!("{key}: {message}")),
                "{e}\nwanted: {key}: {message}"
            );
        }
    }

    #[test]
    fn hot_standby_on_and_extension_parameters_are_accepted() {
        let text = GOOD.replace(
            "    unix_socket_directories: '.'\n",
            "    unix_socket_directories: '.'\n    hot_standby: on\n    auto_explain.log_min_duration: 1s\n",
        );
        let l = parse_str(&text).unwrap();
        assert_eq!(l.config.postgresql.parameters.len(), 3);
    }

    #[test]
    fn scope_must_be_a_non_empty_name_without_slash() {
        for (scope, want) in [
            ("''", "scope: must not be empty"),
            ("a/b", "scope: \"a/b\" contains '/'"),
        ] {
            let text = GOOD.replace("scope: demo", &format!("scope: {scope}"));
            let config = parse_str(&text).unwrap().config;
            let e = config.validate_agent().unwrap_err();
            assert!(e.to_string().starts_with(want), "{e}");
            let e = config.validate_dcs_client().unwrap_err();
            assert!(e.to_string().starts_with(want), "{e}");
        }
    }

    #[test]
    fn environment_overrides_keys_and_names_the_path_on_bad_values() {
        let env = vec![
            ("PATRONI_NAME".to_string(), "pg99".to_string()),
            (
                "PRAETOR_POSTGRESQL_DATA_DIR".to_string(),
                "/data/pg99".to_string(),
            ),
        ];
        let l = parse_str_with_env(GOOD, &env).unwrap();
        assert_eq!(l.config.name.as_deref(), Some("pg99"));
        assert_eq!(
            l.config.postgresql.data_dir.as_deref(),
            Some(std::path::Path::new("/data/pg99"))
        );
        let env = vec![("PATRONI_RESTAPI_LISTEN".to_string(), "nowhere".to_string())];
        let e = parse_str_with_env(GOOD, &env).unwrap_err();
        assert_eq!(e.key(), Some("restapi.listen"), "{e}");
    }

    #[test]
    fn custom_tags_are_kept() {
        let text = GOOD.replace("  nosync: false\n", "  nosync: false\n  zone: eu-1\n");
        let l = parse_str(&text).unwrap();
        assert!(l.warnings.is_empty());
        assert_eq!(l.config.tags.custom["zone"], serde_json::json!("eu-1"));
    }

    #[test]
    fn repeated_keys_keep_the_last_with_a_warning_naming_each() {
        let text = format!(
            "{GOOD}bootstrap:\n  dcs:\n    ttl: 29\n    ttl: 31\n    postgresql:\n      parameters:\n        work_mem: 1MB\n        work_mem: 2MB\n"
        );
        let l = parse_str(&text).unwrap();
        assert_eq!(l.config.bootstrap.dcs.ttl, 31);
        assert_eq!(
            l.config.bootstrap.dcs.postgresql.parameters["work_mem"].as_pg_text(),
            "2MB"
        );
        // The second bootstrap replaced the first whole, as in Patroni.
        assert!(l.config.bootstrap.initdb.is_empty());
        let named: Vec<&str> = l
            .warnings
            .iter()
            .map(|w| w.split(':').next().unwrap())
            .collect();
        assert_eq!(
            named,
            [
                "bootstrap.dcs.ttl",
                "bootstrap.dcs.postgresql.parameters.work_mem",
                "bootstrap"
            ],
            "{:?}",
            l.warnings
        );
        assert!(
            l.warnings[0].contains("the last one is used"),
            "{:?}",
            l.warnings
        );
        // With environment overrides too.
        let env = vec![("PATRONI_NAME".to_string(), "pg9".to_string())];
        let l = parse_str_with_env(&text, &env).unwrap();
        assert_eq!(
            (l.config.bootstrap.dcs.ttl, l.config.name.as_deref()),
            (31, Some("pg9"))
        );
    }

    #[test]
    fn patroni_keys_praetor_lacks_are_warnings_saying_they_have_no_effect() {
        let text = GOOD.replace(
            "  pgpass: /tmp/pgpass0\n",
            "  pgpass: /tmp/pgpass0\n  pg_ident: ['a b c']\n  custom_conf: /etc/pg.conf\n",
        );
        let l = parse_str(&text).unwrap();
        assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
        for (w, key) in l
            .warnings
            .iter()
            .zip(["postgresql.pg_ident", "postgresql.custom_conf"])
        {
            assert!(
                w.starts_with(&format!(
                    "{key}: Patroni key not implemented by Praetor, it has no effect"
                )),
                "{w}"
            );
        }
    }

    #[test]
    fn a_misspelled_callback_is_an_error_naming_it() {
        let ok = GOOD.replace(
            "  pgpass: /tmp/pgpass0\n",
            "  pgpass: /tmp/pgpass0\n  callbacks:\n    on_start: /bin/true\n    on_role_change: /bin/true\n",
        );
        assert_eq!(parse_str(&ok).unwrap().config.postgresql.callbacks.len(), 2);
        let bad = ok.replace("on_role_change", "on_role_chnage");
        let e = parse_str(&bad).unwrap_err();
        assert_eq!(e.key(), Some("postgresql.callbacks.on_role_chnage"), "{e}");
        assert!(e.to_string().contains("unknown callback event: the events are on_reload, on_restart, on_role_change, on_start, on_stop"), "{e}");
    }

    /// Keys whose being ignored would change what the cluster does: (added text, key path refused).
    const REFUSED_KEYS: &[(&str, &str)] = &[
        ("bootstrap:\n  method: pgbackrest\n", "bootstrap.method"),
        (
            "bootstrap:\n  dcs:\n    standby_cluster:\n      primary_slot_name: Bad-Slot\n",
            "bootstrap.dcs.standby_cluster",
        ),
        (
            "zookeeper:\n  hosts: [h:2181]\n  use_ssl: true\n",
            "zookeeper.use_ssl",
        ),
        (
            "etcd3:\n  hosts: h:2379\n  protocol: https\n",
            "etcd3.cacert",
        ),
        ("etcd3:\n  hosts: h:2379\n  cert: /c.pem\n", "etcd3.key"),
        ("etcd3:\n  hosts: h:2379\n  password: x\n", "etcd3.username"),
        (
            "zookeeper:\n  hosts: [h:2181]\n  auth_data: [x]\n",
            "zookeeper.auth_data",
        ),
        (
            "postgresql:\n  data_dir: /d\n  config_dir: /etc/pg\n",
            "postgresql.config_dir",
        ),
        (
            "postgresql:\n  recovery_conf:\n    primary_conninfo: host=x\n",
            "postgresql.recovery_conf.primary_conninfo",
        ),
    ];

    #[test]
    fn keys_that_cannot_be_ignored_safely_are_refused_naming_the_key() {
        for (text, key) in REFUSED_KEYS {
            let e = parse_str(text).unwrap_err();
            assert_eq!(e.key(), Some(*key), "{text}: {e}");
        }
        // The accepted spellings of the same keys.
        for text in [
            "bootstrap:\n  method: initdb\n",
            "zookeeper:\n  hosts: [h:2181]\n  use_ssl: false\n",
            "etcd3:\n  hosts: h:2379\n  protocol: https\n  cacert: /ca.pem\n  cert: /c.pem\n  key: /k.pem\n  username: u\n  password: p\n",
            "postgresql:\n  data_dir: /d/data\n  config_dir: /d/data/\n",
        ] {
            let l = parse_str(text).unwrap();
            assert!(l.warnings.is_empty(), "{text}: {:?}", l.warnings);
        }
    }

    #[test]
    fn recovery_conf_is_read_from_the_local_and_the_dynamic_sections() {
        let l = parse_str(
            "postgresql:\n  recovery_conf:\n    restore_command: cp /a/%f %p\n    recovery_min_apply_delay: 5min\nbootstrap:\n  dcs:\n    postgresql:\n      recovery_conf:\n        archive_cleanup_command: 'true'\n",
        )
        .unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert_eq!(l.config.postgresql.recovery_conf.len(), 2);
        assert_eq!(
            l.config.bootstrap.dcs.postgresql.recovery_conf["archive_cleanup_command"].as_pg_text(),
            "true"
        );
    }
}
