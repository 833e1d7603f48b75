//! Callbacks: operator scripts run on PostgreSQL events (Patroni's `postgresql.callbacks`).
//!
//! Each configured script is run as `<cmd> <action> <role> <scope>` (for example
//! `/usr/local/bin/loadvip.sh on_role_change primary pgsql`), in the background: the HA loop never
//! waits for it, a failing or hanging script never stops the loop, and its output goes to the log.
//!
//! The role argument names the primary `primary` as Patroni 4 does, or `master` as Patroni 3 and
//! older did when `praetor.callback_role_names: patroni3` (scripts such as a VIP script that tests
//! `[ "$2" = master ]`). A restart on request runs `on_restart`, not `on_start` (as Patroni does).

use std::collections::BTreeMap;
use std::process::Stdio;

use praetor_config::CallbackRoleNames;
use praetor_dcs::Role;
use tokio::io::AsyncReadExt;

/// The events callbacks exist for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// PostgreSQL was started.
    OnStart,
    /// PostgreSQL was stopped.
    OnStop,
    /// PostgreSQL was restarted on request.
    OnRestart,
    /// PostgreSQL's configuration was reloaded on request.
    OnReload,
    /// The role changed (promotion, demotion).
    OnRoleChange,
}

impl Event {
    /// The callback key and the action argument: `on_start`, ...
    pub fn name(self) -> &'static str {
        match self {
            Event::OnStart => "on_start",
            Event::OnStop => "on_stop",
            Event::OnRestart => "on_restart",
            Event::OnReload => "on_reload",
            Event::OnRoleChange => "on_role_change",
        }
    }
}

/// The configured callbacks of one member.
#[derive(Debug, Clone, Default)]
pub struct Callbacks {
    scripts: BTreeMap<String, String>,
    scope: String,
    role_names: CallbackRoleNames,
}

impl Callbacks {
    /// Callbacks from `postgresql.callbacks` (event name → command) for cluster `scope`.
    pub fn new(scripts: BTreeMap<String, String>, scope: &str) -> Callbacks {
        Callbacks {
            scripts,
            scope: scope.to_string(),
            role_names: CallbackRoleNames::default(),
        }
    }

    /// The same callbacks passing roles as `names` says (`praetor.callback_role_names`).
    pub fn with_role_names(mut self, names: CallbackRoleNames) -> Callbacks {
        self.role_names = names;
        self
    }

    /// The role argument for `role`: `master` for the primary under
    /// [`CallbackRoleNames::Patroni3`] (Patroni before 4.0 used that word), else the role's name
    /// as published in the member key.
    pub fn role_argument(&self, role: Role) -> String {
        match (role, self.role_names) {
            (Role::Primary, CallbackRoleNames::Patroni3) => "master".to_string(),
            (r, _) => r.to_string(),
        }
    }

    /// The argument vector for `event` in `role`, if a script is configured: the command (which may
    /// carry its own arguments, split on whitespace as Patroni does) then action, role, scope.
    pub fn command(&self, event: Event, role: Role) -> Option<Vec<String>> {
        let cmd = self.scripts.get(event.name())?;
        let mut argv: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
        if argv.is_empty() {
            return None;
        }
        argv.extend([
            event.name().to_string(),
            self.role_argument(role),
            self.scope.clone(),
        ]);
        Some(argv)
    }

    /// Runs the script for `event` in the background, if one is configured.
    pub fn fire(&self, event: Event, role: Role) {
        let Some(argv) = self.command(event, role) else {
            return;
        };
        tokio::spawn(async move {
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(false);
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(callback = %argv.join(" "), "cannot run callback: {e}");
                    return;
                }
            };
            let mut out = String::new();
            if let Some(mut s) = child.stdout.take() {
                let _ = s.read_to_string(&mut out).await;
            }
            let mut err = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut err).await;
            }
            match child.wait().await {
                Ok(status) if status.success() => {
                    tracing::info!(callback = %argv.join(" "), output = %out.trim(), "callback finished")
                }
                Ok(status) => tracing::warn!(
                    callback = %argv.join(" "),
                    %status,
                    stderr = %err.trim(),
                    "callback failed"
                ),
                Err(e) => tracing::warn!(callback = %argv.join(" "), "callback: {e}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_command_action_role_scope() {
        let mut m = BTreeMap::new();
        m.insert(
            "on_role_change".to_string(),
            "/bin/vip.sh --dev eth0".to_string(),
        );
        let c = Callbacks::new(m, "pgsql");
        assert_eq!(
            c.command(Event::OnRoleChange, Role::Primary).unwrap(),
            vec![
                "/bin/vip.sh",
                "--dev",
                "eth0",
                "on_role_change",
                "primary",
                "pgsql"
            ]
        );
        assert!(c.command(Event::OnStart, Role::Replica).is_none());
    }

    #[test]
    fn patroni3_role_names_call_the_primary_master_and_leave_other_roles_alone() {
        let mut m = BTreeMap::new();
        m.insert("on_start".to_string(), "/data/pgsql/loadvip.sh".to_string());
        let v3 = Callbacks::new(m.clone(), "pgsql").with_role_names(CallbackRoleNames::Patroni3);
        let v4 = Callbacks::new(m, "pgsql");
        let arg = |c: &Callbacks, r| c.command(Event::OnStart, r).unwrap()[2].clone();
        assert_eq!(arg(&v3, Role::Primary), "master");
        assert_eq!(arg(&v4, Role::Primary), "primary");
        assert_eq!(arg(&v3, Role::Replica), "replica");
        assert_eq!(arg(&v3, Role::StandbyLeader), "standby_leader");
    }
}
