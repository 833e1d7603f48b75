//! Praetor's small state files in the data directory (`praetor.former_leader.json`,
//! `praetor.failsafe.json`): written so that a crash leaves the old file or the new one, never a
//! torn one, and never into a directory without a cluster.
//!
//! Why the data directory: only a member with one can promote, and the files live and die with
//! it. Why not without `PG_VERSION`: a file in an empty directory would stop initdb and
//! pg_basebackup, which refuse a non-empty target.

use std::io::Write;
use std::path::Path;

/// Writes `text` to `name` in `data_dir` durably: to a temporary file, synced, renamed over the
/// old one, the directory synced. Only when the data directory holds a cluster (`PG_VERSION`);
/// returns whether it wrote. Errors: the file system's (the old file, if any, is left as it was).
pub fn write_durably(data_dir: &Path, name: &str, text: &str) -> std::io::Result<bool> {
    if !data_dir.join("PG_VERSION").is_file() {
        return Ok(false);
    }
    let p = data_dir.join(name);
    let tmp = p.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(true)
}

/// The text of `path`; `None` when it does not exist, or, logged with `lacking` (what the agent
/// then does without it), when it cannot be read.
pub fn read_optional(path: &Path, lacking: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}; {lacking}", path.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_into_a_cluster_and_reads_back_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!write_durably(dir.path(), "x.json", "{}").unwrap());
        assert!(read_optional(&dir.path().join("x.json"), "nothing").is_none());
        std::fs::write(dir.path().join("PG_VERSION"), "18\n").unwrap();
        assert!(write_durably(dir.path(), "x.json", "{\"a\":1}").unwrap());
        assert!(write_durably(dir.path(), "x.json", "{\"a\":2}").unwrap());
        assert_eq!(
            read_optional(&dir.path().join("x.json"), "nothing").as_deref(),
            Some("{\"a\":2}")
        );
        assert!(!dir.path().join("x.json.tmp").exists());
    }
}
