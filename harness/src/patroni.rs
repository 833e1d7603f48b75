//! Real Patroni 4.1.5 beside Praetor: the virtualenv `scripts/setup` makes (`.venv-patroni`, with
//! `patroni[etcd3]==4.1.5` and `psycopg2-binary` from PyPI), `patronictl`, and the cluster as
//! Patroni's own DCS code reads it ([`patroni_view`]).
//!
//! A node runs Patroni with [`crate::cluster::Node::start_patroni`], on the same configuration file
//! a Praetor agent reads (Patroni's YAML), in a [`crate::cluster::LocalCluster`] started with
//! `start_agents: false`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::LocalCluster;
use crate::write_file;

/// The Patroni release the mixed-cluster tests run: what `scripts/setup` installs.
pub const PATRONI_VERSION: &str = "4.1.5";

/// The virtualenv holding Patroni: `$PRAETOR_PATRONI_VENV`, else `<workspace>/.venv-patroni`.
pub fn venv() -> PathBuf {
    if let Some(d) = std::env::var_os("PRAETOR_PATRONI_VENV") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness crate sits in the workspace")
        .join(".venv-patroni")
}

/// `<venv>/bin/<name>` (`patroni`, `patronictl`, `python`). Errors, saying to run `scripts/setup`,
/// when the virtualenv is missing.
pub fn binary(name: &str) -> Result<PathBuf, String> {
    let bin = venv().join("bin").join(name);
    if bin.exists() {
        // Patroni runs as `postgres` when the tests run as root: every directory above the
        // virtualenv must let others through (a clone under a 0700 home does not).
        if crate::postgres_ids().is_some() {
            use std::os::unix::fs::PermissionsExt;
            for dir in venv().ancestors() {
                let mode = std::fs::metadata(dir).map(|m| m.permissions().mode()).ok();
                if mode.is_some_and(|m| m & 0o001 == 0) {
                    return Err(format!(
                        "the postgres user cannot reach {} ({} has mode {:o}): clone where others \
                         can traverse, or point PRAETOR_PATRONI_VENV at a virtualenv they can",
                        bin.display(),
                        dir.display(),
                        mode.unwrap_or_default() & 0o777
                    ));
                }
            }
        }
        Ok(bin)
    } else {
        Err(format!(
            "{} missing: run scripts/setup, which installs Patroni {PATRONI_VERSION} into {}",
            bin.display(),
            venv().display()
        ))
    }
}

/// Writes (once) and returns a patronictl/praetor ctl configuration for `cluster`: scope,
/// namespace and its `etcd3` section.
pub fn ctl_config(cluster: &LocalCluster) -> Result<PathBuf, String> {
    let path = cluster.work.path().join("ctl.yml");
    if !path.exists() {
        let yaml = format!(
            "scope: {}\nnamespace: /service/\n{}",
            cluster.options.scope,
            cluster.etcd.yaml_section()
        );
        write_file(&path, &yaml).map_err(|e| e.to_string())?;
    }
    Ok(path)
}

/// Runs `patronictl -c <ctl.yml> <args>` and returns its standard output; an error with both
/// outputs when it exits non-zero.
pub fn patronictl(cluster: &LocalCluster, args: &[&str]) -> Result<String, String> {
    let config = ctl_config(cluster)?;
    let out = Command::new(binary("patronictl")?)
        .arg("-c")
        .arg(&config)
        .args(args)
        .env("HOME", std::env::temp_dir())
        .output()
        .map_err(|e| format!("cannot run patronictl: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "patronictl {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

/// The cluster as Patroni 4.1.5 reads it from the DCS (its `get_dcs(...).get_cluster()`), as JSON:
/// `initialize`, `config`, `leader`, `members` (name → role, state, conn_url, conn_kwargs,
/// api_url, lsn, receive_lsn, replay_lsn, timeline, patroni_version, nofailover, tags),
/// `failover`, `sync` (leader, voters: the standbys listed, members: the leader and the voters,
/// quorum), `history`, `status` (optime, slots,
/// retain_slots), `timeline`, `min_version`, and `log`: every warning or error Patroni's code
/// logged while reading (its parsers log and fall back to empty values instead of failing).
pub fn patroni_view(cluster: &LocalCluster) -> Result<serde_json::Value, String> {
    let (section, hosts) = cluster.etcd.section_and_hosts();
    if section != "etcd3" {
        return Err(format!("patroni_view reads etcd v3 only, not {section}"));
    }
    let out = Command::new(binary("python")?)
        .arg("-c")
        .arg(include_str!("patroni_view.py"))
        .args([&cluster.options.scope, "/service/", &hosts.join(",")])
        .output()
        .map_err(|e| format!("cannot run Patroni's python: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "reading the cluster with Patroni's code failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "Patroni's view is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
