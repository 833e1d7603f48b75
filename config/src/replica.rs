//! Replica creation methods: Patroni's `postgresql.create_replica_methods` and the method sections
//! (`postgresql.<method>`) they name.
//!
//! Patroni's rules (patroni/postgresql/bootstrap.py, `create_replica`), which Praetor follows:
//! - The methods are tried in the order listed until one succeeds; none listed means `[basebackup]`.
//!   A method that fails is followed by the next one; when all failed, the clone failed and is tried
//!   again later (so `basebackup` listed last is the fallback of the methods before it).
//! - `basebackup` is the built-in pg_basebackup, with the options of `postgresql.basebackup`.
//! - Any other name is a command: `postgresql.<method>.command`, or the name itself when the section
//!   has none. Before it runs, the data directory is emptied unless `keep_data: true`. It gets every
//!   other key of its section as `--key=value`, then `--scope=<scope> --role=replica
//!   --datadir=<data_dir> --connstring=<libpq URL of the source>`, unless `no_params: true` (then it
//!   gets the section's other keys only, without `no_params`, `no_leader`, `no_master`, `keep_data`).
//! - With no member to clone from (no leader), only the methods with `no_leader` (or the old
//!   `no_master`) set are tried, with an empty `--connstring=`.

use serde_yaml::Value;

use crate::model::Postgresql;
use crate::ConfigError;

/// One replica creation method, resolved from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaMethod {
    /// The name listed in `create_replica_methods` (`basebackup`, `pgbackrest`, `wal_g`, ...).
    pub name: String,
    /// The command line (split like a shell would, without running a shell); the name itself when
    /// the section gives no `command`. Unused for `basebackup`.
    pub command: String,
    /// `keep_data`: leave the data directory as it is before running the command.
    pub keep_data: bool,
    /// `no_leader` / `no_master`: the method needs no member to clone from (a restore from backup).
    pub no_leader: bool,
    /// `no_params`: pass only the section's own keys.
    pub no_params: bool,
    /// The section's keys other than `command`, in file order, with their values as Patroni prints
    /// them (`True`/`False` for booleans).
    pub options: Vec<(String, String)>,
}

impl ReplicaMethod {
    /// The built-in method.
    pub fn basebackup() -> ReplicaMethod {
        ReplicaMethod {
            name: "basebackup".into(),
            command: String::new(),
            keep_data: false,
            no_leader: false,
            no_params: false,
            options: Vec::new(),
        }
    }

    /// True for the built-in pg_basebackup.
    pub fn is_basebackup(&self) -> bool {
        self.name == "basebackup"
    }

    /// True when the method can run with no member to clone from (Patroni's
    /// `replica_method_can_work_without_replication_connection`).
    pub fn works_without_leader(&self) -> bool {
        !self.is_basebackup() && self.no_leader
    }

    /// The program and arguments of a command method, for cluster `scope`, data directory `datadir`
    /// and the source's `connstring` (empty without a source). Errors: a command that does not split
    /// (an unclosed quote) or is empty.
    pub fn argv(
        &self,
        scope: &str,
        datadir: &str,
        connstring: &str,
    ) -> Result<Vec<String>, String> {
        let mut argv = shlex::split(&self.command)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| format!("cannot split the command {:?}", self.command))?;
        let mut options = self.options.clone();
        if self.no_params {
            options.retain(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "no_params" | "no_master" | "no_leader" | "keep_data"
                )
            });
        } else {
            for (k, v) in [
                ("scope", scope),
                ("role", "replica"),
                ("datadir", datadir),
                ("connstring", connstring),
            ] {
                // Patroni updates a dict: a key the section gave keeps its place, with the new value.
                match options.iter_mut().find(|(name, _)| name == k) {
                    Some(slot) => slot.1 = v.to_string(),
                    None => options.push((k.to_string(), v.to_string())),
                }
            }
        }
        argv.extend(options.into_iter().map(|(k, v)| format!("--{k}={v}")));
        Ok(argv)
    }
}

/// The methods of `create_replica_methods` to try, in order, when cloning with (`has_source`) or
/// without a member to clone from.
pub fn methods_to_try(methods: &[ReplicaMethod], has_source: bool) -> Vec<&ReplicaMethod> {
    methods
        .iter()
        .filter(|m| has_source || m.works_without_leader())
        .collect()
}

/// The method to try after `failed` methods of [`methods_to_try`] failed, or `None` when none is
/// left (the clone failed; it is tried again from the first method at the next attempt).
pub fn next_method(
    methods: &[ReplicaMethod],
    has_source: bool,
    failed: usize,
) -> Option<&ReplicaMethod> {
    methods_to_try(methods, has_source).get(failed).copied()
}

/// How Patroni (Python's `str()`) prints a YAML scalar as an argument value.
fn python_text(v: &Value) -> String {
    match v {
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "true" | "on" | "yes" | "1"
        ),
        Some(Value::Number(n)) => n.as_i64().is_some_and(|n| n != 0),
        _ => false,
    }
}

/// Resolves `postgresql.create_replica_methods` with the method sections of the raw document `doc`.
/// Absent or empty: `[basebackup]`.
///
/// Errors name the key path: a method section that is not a map, a `command` that is not a string or
/// does not split into words.
pub fn methods_from(doc: &Value, pg: &Postgresql) -> Result<Vec<ReplicaMethod>, ConfigError> {
    let names = pg.create_replica_methods.clone().unwrap_or_default();
    if names.is_empty() {
        return Ok(vec![ReplicaMethod::basebackup()]);
    }
    let mut out = Vec::new();
    for name in names {
        if name == "basebackup" {
            out.push(ReplicaMethod::basebackup());
            continue;
        }
        let key = format!("postgresql.{name}");
        let section = doc.get("postgresql").and_then(|p| p.get(name.as_str()));
        let mut method = ReplicaMethod {
            name: name.clone(),
            command: name.clone(),
            keep_data: false,
            no_leader: false,
            no_params: false,
            options: Vec::new(),
        };
        match section {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(m)) => {
                for (k, v) in m {
                    let Some(k) = k.as_str() else {
                        return Err(ConfigError::Invalid {
                            key,
                            message: "keys of a replica method section must be strings".into(),
                        });
                    };
                    if k == "command" {
                        method.command =
                            v.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| ConfigError::Invalid {
                                    key: format!("{key}.command"),
                                    message: "must be a command line (a string)".into(),
                                })?;
                    } else {
                        method.options.push((k.to_string(), python_text(v)));
                    }
                }
                method.keep_data = truthy(m.get("keep_data"));
                method.no_params = truthy(m.get("no_params"));
                method.no_leader = truthy(m.get("no_leader")) || truthy(m.get("no_master"));
            }
            Some(_) => {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!(
                        "the section of replica method {name} must be a map (command, keep_data, \
                         no_leader, and options passed to the command)"
                    ),
                })
            }
        }
        if shlex::split(&method.command).is_none_or(|w| w.is_empty()) {
            return Err(ConfigError::Invalid {
                key: format!("{key}.command"),
                message: format!("cannot split {:?} into a command line", method.command),
            });
        }
        out.push(method);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn methods(yaml: &str) -> Vec<ReplicaMethod> {
        crate::parse_str(yaml)
            .unwrap()
            .config
            .postgresql
            .replica_methods
    }

    #[test]
    fn none_listed_means_basebackup() {
        assert_eq!(methods("scope: s\n"), vec![ReplicaMethod::basebackup()]);
        assert_eq!(
            methods("postgresql:\n  create_replica_methods: []\n"),
            vec![ReplicaMethod::basebackup()]
        );
    }

    #[test]
    fn method_sections_are_read_and_not_reported_as_unknown() {
        let l = crate::parse_str(
            "postgresql:\n  create_replica_methods: [pgbackrest, wal_g, basebackup]\n  pgbackrest:\n    command: /usr/bin/pgbackrest --stanza=main --delta restore\n    keep_data: True\n    no_master: 1\n  wal_g:\n    command: wal-g-restore\n    no_params: true\n    env: prod\n",
        )
        .unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let m = &l.config.postgresql.replica_methods;
        assert_eq!(
            m.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["pgbackrest", "wal_g", "basebackup"]
        );
        assert!(m[0].keep_data && m[0].no_leader && !m[0].no_params);
        assert_eq!(
            m[0].argv("pg", "/data", "postgresql://h:5/postgres")
                .unwrap(),
            [
                "/usr/bin/pgbackrest",
                "--stanza=main",
                "--delta",
                "restore",
                "--keep_data=True",
                "--no_master=1",
                "--scope=pg",
                "--role=replica",
                "--datadir=/data",
                "--connstring=postgresql://h:5/postgres"
            ]
        );
        assert_eq!(
            m[1].argv("pg", "/data", "x").unwrap(),
            ["wal-g-restore", "--env=prod"]
        );
    }

    #[test]
    fn a_method_without_a_section_runs_its_name() {
        let m = methods("postgresql:\n  create_replica_methods: [my_clone]\n");
        assert_eq!(
            m[0].argv("s", "/d", "").unwrap(),
            [
                "my_clone",
                "--scope=s",
                "--role=replica",
                "--datadir=/d",
                "--connstring="
            ]
        );
    }

    #[test]
    fn bad_sections_are_refused_naming_the_key() {
        for (yaml, key) in [
            (
                "postgresql:\n  create_replica_methods: [x]\n  x: 3\n",
                "postgresql.x",
            ),
            (
                "postgresql:\n  create_replica_methods: [x]\n  x: {command: [a]}\n",
                "postgresql.x.command",
            ),
            (
                "postgresql:\n  create_replica_methods: [x]\n  x: {command: \"'unclosed\"}\n",
                "postgresql.x.command",
            ),
        ] {
            let e = crate::parse_str(yaml).unwrap_err();
            assert_eq!(e.key(), Some(key), "{yaml}: {e}");
        }
    }

    #[test]
    fn the_next_method_follows_the_list_and_without_a_leader_only_no_leader_methods() {
        let mut restore = ReplicaMethod::basebackup();
        restore.name = "restore".into();
        restore.no_leader = true;
        let mut script = restore.clone();
        script.name = "script".into();
        script.no_leader = false;
        let list = vec![restore, script, ReplicaMethod::basebackup()];
        let names = |has_source: bool| -> Vec<Option<&str>> {
            (0..4)
                .map(|failed| next_method(&list, has_source, failed).map(|m| m.name.as_str()))
                .collect()
        };
        // With a leader: each in turn, basebackup last as the fallback, then none.
        assert_eq!(
            names(true),
            [Some("restore"), Some("script"), Some("basebackup"), None]
        );
        // Without: only the method that needs no leader (basebackup always needs one).
        assert_eq!(names(false), [Some("restore"), None, None, None]);
    }
}
