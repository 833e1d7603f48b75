//! This member's last failsafe confirmation across agent restarts: when it answered a leader's
//! `POST /failsafe` with `Accepted`, kept in a small file in the data directory.
//!
//! Why: the confirmation is a promise ([`crate::ha::failsafe::promised`]). The leader counts it as
//! a lock renewal and keeps its primary past its lease, so the member that gave it stays out of
//! the leader race for `ttl`. The promise lived in the REST API's memory only: an agent restarted
//! in that window (or a REST API restarted by a reload) forgot it, took the expired lock once the
//! DCS was back and promoted while the leader it had confirmed still ran (the simulation's seed
//! 47,684: the confirmed leader's agent was killed before its deadline, the link between the two
//! was cut so the fence could not reach it, and the restarted replica promoted: two writable
//! primaries). The API now records the confirmation durably before it answers `Accepted`, and
//! the agent takes the record back when it starts. Patroni keeps it in memory too
//! (`Failsafe.update`).
//!
//! Why the data directory: only a member with a data directory can promote, and the file lives and
//! dies with it, as [`crate::former_leader`]'s does. pg_basebackup and pg_rewind copy it from their
//! source, so the file names the member that wrote it and another member's is ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "praetor.failsafe.json";

/// A confirmation as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Confirmation {
    /// The member that gave it (a copy from another member's data directory is ignored).
    pub owner: String,
    /// The leader it was given to.
    pub leader: String,
    /// When, in wall-clock milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
}

/// The wall clock now, in ms since the Unix epoch (what [`Confirmation::at_unix_ms`] holds).
pub fn now_unix_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Where the file is for `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// How long ago a confirmation recorded at `at_unix_ms` was given, at `now_unix_ms` (ms since the
/// epoch). A record from the future (the wall clock stepped back) counts as given now: the promise
/// then lasts its whole `ttl` again, the safe side.
pub fn age(at_unix_ms: i64, now_unix_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_unix_ms.saturating_sub(at_unix_ms)).unwrap_or(0))
}

/// Records that member `me` confirmed `leader` at `at_unix_ms` (written to a temporary file,
/// synced, renamed, the directory synced), only when the data directory holds a cluster
/// (`PG_VERSION`): a member without one cannot promote, and a file in an empty directory would
/// stop initdb and pg_basebackup. Returns whether it wrote. Errors: the file system's.
pub fn store(data_dir: &Path, me: &str, leader: &str, at_unix_ms: i64) -> std::io::Result<bool> {
    let text = serde_json::to_string(&Confirmation {
        owner: me.to_string(),
        leader: leader.to_string(),
        at_unix_ms,
    })
    .expect("a struct of strings and an integer serializes");
    crate::data_dir_file::write_durably(data_dir, FILE_NAME, &text)
}

/// The confirmation member `me` recorded in `data_dir`; `None` when there is none, when another
/// member wrote it, or (logged) when it is unreadable or malformed.
pub fn load(data_dir: &Path, me: &str) -> Option<Confirmation> {
    let p = path(data_dir);
    let text = crate::data_dir_file::read_optional(&p, "no failsafe confirmation known")?;
    match serde_json::from_str::<Confirmation>(&text) {
        Ok(c) if c.owner == me => Some(c),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", p.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmation_reads_back_for_its_member_only_and_never_lands_in_an_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!store(dir.path(), "pg2", "pg1", 1_000).unwrap());
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "wrote into a data directory without a cluster"
        );
        std::fs::write(dir.path().join("PG_VERSION"), "15\n").unwrap();
        assert!(store(dir.path(), "pg2", "pg1", 1_000).unwrap());
        assert!(store(dir.path(), "pg2", "pg3", 2_000).unwrap());
        let want = Confirmation {
            owner: "pg2".into(),
            leader: "pg3".into(),
            at_unix_ms: 2_000,
        };
        assert_eq!(load(dir.path(), "pg2"), Some(want));
        // Copied from pg2's data directory by pg_basebackup or pg_rewind.
        assert_eq!(load(dir.path(), "pg3"), None);
        std::fs::write(path(dir.path()), "not json").unwrap();
        assert_eq!(load(dir.path(), "pg2"), None);
    }

    #[test]
    fn age_counts_a_record_from_the_future_as_given_now() {
        assert_eq!(age(1_000, 4_500), Duration::from_millis(3_500));
        assert_eq!(age(5_000, 4_500), Duration::ZERO);
        assert_eq!(
            age(i64::MIN, i64::MAX),
            Duration::from_millis(i64::MAX as u64)
        );
    }
}
