//! Callbacks: operator scripts run on PostgreSQL events (Patroni's `postgresql.callbacks`).
//!
//! Each configured script is run as `<cmd> <action> <role> <scope>` (for example
//! `/usr/local/bin/loadvip.sh on_role_change primary pgsql`), in the background: the HA loop never
//! waits for it, a failing or hanging script never stops the loop, and its output goes to the log.

use std::collections::BTreeMap;
use std::process::Stdio;

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
}

impl Callbacks {
    /// Callbacks from `postgresql.callbacks` (event name → command) for cluster `scope`.
    pub fn new(scripts: BTreeMap<String, String>, scope: &str) -> Callbacks {
        Callbacks {
            scripts,
            scope: scope.to_string(),
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
            role.to_string(),
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
}
