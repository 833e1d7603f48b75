//! Which PgBouncer the benchmarks run and what it supports: shared by benches/proxy.rs (its TPS
//! half and its callgrind mode) and benches/pool.rs.

use std::process::Command;

/// The PgBouncer binary: the one `PRAETOR_PGBOUNCER` names (`scripts/build-pgbouncer 1.25.2`
/// builds one into /opt/pgbouncer-1.25.2/bin), else `pgbouncer` from `PATH` (Debian 12's is 1.18).
pub(crate) fn program() -> String {
    std::env::var("PRAETOR_PGBOUNCER").unwrap_or_else(|_| "pgbouncer".into())
}

/// `program --version`'s first line (`PgBouncer 1.25.2`), or empty when it cannot run.
pub(crate) fn version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// Whether the PgBouncer whose `--version` line is `version` tracks prepared statements in
/// transaction mode (`max_prepared_statements`, from 1.21 on; older ones refuse to start with a
/// key they do not know).
pub(crate) fn tracks_prepared(version: &str) -> bool {
    version
        .split_whitespace()
        .nth(1)
        .and_then(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .is_some_and(|v| v >= (1, 21))
}
