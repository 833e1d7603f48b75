//! Reloading the agent's configuration file while it runs, as Patroni does on SIGHUP, `POST
//! /reload` and `patronictl reload`: the YAML is read again and what changed is applied.
//!
//! [`plan`] is the pure part: from the running and the new configuration it lists the
//! [`ReloadAction`]s, in the order the runner applies them, and [`effective`] builds the
//! configuration the agent runs with afterwards. What applies how (Patroni's `reload_config`):
//! - `postgresql.parameters` and `postgresql.pg_hba`: the files Praetor owns are rewritten and
//!   PostgreSQL reloaded; a parameter of context `postmaster` then waits for a restart, published
//!   as `pending_restart` with `pending_restart_reason` (Patroni 4) in `/patroni`, the member key
//!   and `ctl list`;
//! - `tags`: published in the member key at once;
//! - `restapi` and `ctl` (how the API calls other members): the API is served again with the new
//!   settings, on the new `listen` address when it moved;
//! - `log.level`, `watchdog`, `postgresql.callbacks` and `praetor.callback_role_names` (new scripts
//!   run from the next event);
//! - keys that cannot change while the agent runs (`scope`, `name`, `postgresql.data_dir`, the DCS
//!   endpoints...) keep their running value, with a warning naming the key.
//!
//! A new file that does not parse or validate changes nothing: the caller keeps the running
//! configuration and reports the error, which names the key path.

use std::collections::BTreeMap;

use praetor_config::{CallbackRoleNames, Config, ConfigError, Parameters, Tags, Watchdog};

/// One thing a reload changes. The runner executes them in the order [`plan`] returns them.
#[derive(Debug, Clone, PartialEq)]
pub enum ReloadAction {
    /// `key` changed but cannot change while the agent runs: the running value is kept (the
    /// runner logs a warning naming the key; restart the agent to apply it).
    KeepRunning {
        /// The key path, e.g. `postgresql.data_dir`.
        key: &'static str,
    },
    /// `log.level` changed: the new `tracing` filter directive (`debug`, `info`, `warn`...).
    SetLogLevel(String),
    /// `tags` changed: published in `members/<name>` and `/patroni` from now on.
    SetTags(Tags),
    /// `postgresql.parameters` or `postgresql.pg_hba` changed: the new local values, to write into
    /// the files Praetor owns before PostgreSQL is reloaded (`pg_ctl reload`).
    SetLocalPostgres {
        /// The new `postgresql.parameters`.
        parameters: Parameters,
        /// The new `postgresql.pg_hba`.
        pg_hba: Option<Vec<String>>,
    },
    /// `restapi` (or `ctl`, the client settings the API uses to call other members) changed: serve
    /// the REST API again with the new settings.
    RestartApi,
    /// `watchdog` changed: the new settings (an armed watchdog is disarmed first; a leader arms
    /// the new one at its next cycle).
    SetWatchdog(Watchdog),
    /// `postgresql.callbacks` or `praetor.callback_role_names` changed: used from the next event.
    SetCallbacks {
        /// Event name → command.
        scripts: BTreeMap<String, String>,
        /// How the role argument names the primary.
        role_names: CallbackRoleNames,
    },
}

/// What reloading `new` over the running `old` does, in execution order (immutable keys first, so
/// their warnings come before anything changes). Empty when nothing the agent uses changed.
///
/// Errors: `new` lacks what the agent needs ([`Config::validate_agent`]) or has an unknown
/// `log.level`; the error names the key path and nothing must be applied.
pub fn plan(old: &Config, new: &Config) -> Result<Vec<ReloadAction>, ConfigError> {
    let was = old.validate_agent()?;
    let now = new.validate_agent()?;
    let level = new.log.filter_directive()?;
    let mut out = Vec::new();
    let mut keep = |changed: bool, key: &'static str| {
        if changed {
            out.push(ReloadAction::KeepRunning { key });
        }
    };
    let (po, pn) = (&old.postgresql, &new.postgresql);
    keep(was.scope != now.scope, "scope");
    keep(was.namespace != now.namespace, "namespace");
    keep(was.name != now.name, "name");
    keep(debug_differs(&old.etcd3, &new.etcd3), "etcd3");
    keep(debug_differs(&old.zookeeper, &new.zookeeper), "zookeeper");
    keep(was.data_dir != now.data_dir, "postgresql.data_dir");
    keep(was.pg_listen != now.pg_listen, "postgresql.listen");
    keep(
        was.pg_connect != now.pg_connect,
        "postgresql.connect_address",
    );
    keep(
        was.superuser != now.superuser,
        "postgresql.authentication.superuser",
    );
    keep(
        was.replication != now.replication,
        "postgresql.authentication.replication",
    );
    keep(
        po.authentication.rewind != pn.authentication.rewind,
        "postgresql.authentication.rewind",
    );
    keep(po.bin_dir != pn.bin_dir, "postgresql.bin_dir");
    keep(po.pgpass != pn.pgpass, "postgresql.pgpass");
    keep(po.basebackup != pn.basebackup, "postgresql.basebackup");
    keep(
        po.pg_ctl_timeout != pn.pg_ctl_timeout,
        "postgresql.pg_ctl_timeout",
    );
    keep(old.log.format != new.log.format, "log.format");
    keep(old.log.dir != new.log.dir, "log.dir");
    keep(
        old.praetor.fence_timeout_ms != new.praetor.fence_timeout_ms,
        "praetor.fence_timeout_ms",
    );
    if old.log.filter_directive().ok().as_deref() != Some(level.as_str()) {
        out.push(ReloadAction::SetLogLevel(level));
    }
    if old.tags != new.tags {
        out.push(ReloadAction::SetTags(new.tags.clone()));
    }
    if po.parameters != pn.parameters || po.pg_hba != pn.pg_hba {
        out.push(ReloadAction::SetLocalPostgres {
            parameters: pn.parameters.clone(),
            pg_hba: pn.pg_hba.clone(),
        });
    }
    let api_differs = debug_differs(&old.restapi, &new.restapi)
        || old.restapi.authentication != new.restapi.authentication
        || debug_differs(&old.ctl, &new.ctl)
        || old.ctl.authentication != new.ctl.authentication
        || was.api_connect != now.api_connect;
    if api_differs {
        out.push(ReloadAction::RestartApi);
    }
    if old.watchdog != new.watchdog {
        out.push(ReloadAction::SetWatchdog(new.watchdog.clone()));
    }
    if po.callbacks != pn.callbacks
        || old.praetor.callback_role_names != new.praetor.callback_role_names
    {
        out.push(ReloadAction::SetCallbacks {
            scripts: pn.callbacks.clone(),
            role_names: new.praetor.callback_role_names,
        });
    }
    Ok(out)
}

/// The configuration the agent runs with after reloading `new` over `old`: `new`, except the keys
/// [`ReloadAction::KeepRunning`] names, which keep their running value from `old`.
pub fn effective(old: &Config, new: &Config) -> Config {
    let mut c = new.clone();
    c.scope = old.scope.clone();
    c.namespace = old.namespace.clone();
    c.name = old.name.clone();
    c.etcd3 = old.etcd3.clone();
    c.zookeeper = old.zookeeper.clone();
    c.bootstrap = old.bootstrap.clone();
    let (p, o) = (&mut c.postgresql, &old.postgresql);
    p.data_dir = o.data_dir.clone();
    p.listen = o.listen.clone();
    p.connect_address = o.connect_address.clone();
    p.authentication = o.authentication.clone();
    p.bin_dir = o.bin_dir.clone();
    p.pgpass = o.pgpass.clone();
    p.basebackup = o.basebackup.clone();
    p.pg_ctl_timeout = o.pg_ctl_timeout;
    c.log.format = old.log.format.clone();
    c.log.dir = old.log.dir.clone();
    c.praetor.fence_timeout_ms = old.praetor.fence_timeout_ms;
    c
}

/// Whether two sections differ, compared by their `Debug` form (the config sections have no
/// `PartialEq`; passwords, which `Credentials`' `Debug` masks, are compared apart by the caller).
fn debug_differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReloadAction::*;

    const BASE: &str = r#"
scope: pgsql
name: pg1
restapi: {listen: '127.0.0.1:8008', connect_address: '127.0.0.1:8008'}
etcd3: {hosts: '127.0.0.1:2379'}
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /data/pg1
  authentication:
    superuser: {username: postgres, password: a}
    replication: {username: replicator, password: b}
  parameters: {work_mem: 4MB}
tags: {nofailover: false}
log: {level: INFO}
"#;

    fn parse(text: &str) -> Config {
        praetor_config::parse_str(text).unwrap().config
    }

    /// The base file with `from` replaced by `to` (which must occur once).
    fn edited(from: &str, to: &str) -> Config {
        assert_eq!(BASE.matches(from).count(), 1, "{from}");
        parse(&BASE.replace(from, to))
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert_eq!(plan(&parse(BASE), &parse(BASE)).unwrap(), vec![]);
    }

    #[test]
    fn local_parameters_are_rewritten_and_reloaded() {
        let new = edited("{work_mem: 4MB}", "{work_mem: 8MB, max_connections: 200}");
        let actions = plan(&parse(BASE), &new).unwrap();
        assert_eq!(actions.len(), 1);
        let SetLocalPostgres { parameters, pg_hba } = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(parameters.len(), 2);
        assert_eq!(*pg_hba, None);
    }

    #[test]
    fn tags_log_level_watchdog_callbacks_and_role_names_apply_at_once() {
        let old = parse(BASE);
        let new = parse(&format!(
            "{}\nwatchdog: {{mode: 'off'}}\npraetor: {{callback_role_names: patroni3}}\n",
            BASE.replace("{nofailover: false}", "{nofailover: true}")
                .replace("{level: INFO}", "{level: DEBUG}")
                .replace(
                    "  parameters:",
                    "  callbacks: {on_start: /bin/vip.sh}\n  parameters:"
                )
        ));
        let actions = plan(&old, &new).unwrap();
        assert_eq!(actions[0], SetLogLevel("debug".into()));
        assert!(matches!(&actions[1], SetTags(t) if t.nofailover));
        assert!(
            matches!(&actions[2], SetWatchdog(w) if w.mode == praetor_config::WatchdogMode::Off)
        );
        assert!(matches!(&actions[3],
            SetCallbacks { scripts, role_names: CallbackRoleNames::Patroni3 }
                if scripts["on_start"] == "/bin/vip.sh"));
        assert_eq!(actions.len(), 4);
    }

    #[test]
    fn a_moved_rest_api_or_new_api_credentials_serve_the_api_again() {
        let moved = edited("listen: '127.0.0.1:8008'", "listen: '127.0.0.1:8009'");
        assert_eq!(plan(&parse(BASE), &moved).unwrap(), vec![RestartApi]);
        let auth = edited(
            "restapi: {",
            "restapi: {authentication: {username: u, password: p}, ",
        );
        assert_eq!(plan(&parse(BASE), &auth).unwrap(), vec![RestartApi]);
    }

    #[test]
    fn keys_fixed_at_start_keep_their_running_value_and_are_named() {
        let old = parse(BASE);
        let new = parse(
            &BASE
                .replace("scope: pgsql", "scope: other")
                .replace("data_dir: /data/pg1", "data_dir: /data/elsewhere")
                .replace("'127.0.0.1:2379'", "'10.0.0.1:2379'")
                .replace("password: a}", "password: changed}"),
        );
        let actions = plan(&old, &new).unwrap();
        let keys: Vec<&str> = actions
            .iter()
            .map(|a| match a {
                KeepRunning { key } => *key,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "scope",
                "etcd3",
                "postgresql.data_dir",
                "postgresql.authentication.superuser"
            ]
        );
        let running = effective(&old, &new);
        assert_eq!(running.scope.as_deref(), Some("pgsql"));
        assert_eq!(
            running.postgresql.data_dir,
            Some(std::path::PathBuf::from("/data/pg1"))
        );
        assert_eq!(
            running.dcs_endpoints().unwrap(),
            old.dcs_endpoints().unwrap()
        );
    }

    #[test]
    fn effective_takes_the_new_values_of_keys_that_change_at_run_time() {
        let new = edited("{nofailover: false}", "{nofailover: true}");
        assert!(effective(&parse(BASE), &new).tags.nofailover);
    }

    #[test]
    fn a_file_missing_what_the_agent_needs_is_refused_naming_the_key() {
        let new = edited("  data_dir: /data/pg1\n", "");
        let err = plan(&parse(BASE), &new).unwrap_err().to_string();
        assert!(err.contains("postgresql.data_dir"), "{err}");
        let new = edited("{level: INFO}", "{level: LOUD}");
        let err = plan(&parse(BASE), &new).unwrap_err().to_string();
        assert!(err.contains("log.level"), "{err}");
    }
}
