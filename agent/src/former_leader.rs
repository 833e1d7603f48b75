//! The fence target across agent restarts: the last leader this member saw (other than itself),
//! kept in a small file in the data directory.
//!
//! Why a file and not the DCS: the former leader's member key goes when its session or lease
//! expires, which is exactly when its leader key goes; `history` names leaders but not their
//! addresses; and the proxies' fencing handshake needs the member name, which a replica's
//! `primary_conninfo` does not carry. A replica whose agent restarts while the leader key is gone
//! would otherwise neither fence the former primary nor wait for the proxies to stop routing to it.
//!
//! Why the data directory: the fence target only matters to a member that can promote, which needs
//! its data directory, and the file lives and dies with it (Patroni keeps `patroni.dynamic.json`
//! there the same way). pg_basebackup and pg_rewind copy it from their source, so the file names the
//! member that wrote it and a file written by another member is ignored.
//!
//! The file also keeps the timeline that leader led when seen, so that a newer leader the DCS
//! `history` names (one this member's agent never saw, being down through its leadership) replaces
//! it as the fence target ([`crate::ha::former::newer_in_dcs`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ha::former::FormerLeader;
use crate::ha::Upstream;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "praetor.former_leader.json";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Stored {
    /// The member that wrote the file (a copy from another member's data directory is ignored).
    owner: String,
    member: String,
    host: String,
    port: u16,
    /// The timeline it led when seen ([`FormerLeader::timeline`]); absent in files written before
    /// it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeline: Option<u32>,
}

/// Where the file is for `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The file's contents for `former`, as written by member `me` (JSON).
pub fn render(me: &str, former: &FormerLeader) -> String {
    let leader = &former.leader;
    serde_json::to_string(&Stored {
        owner: me.to_string(),
        member: leader.member.clone(),
        host: leader.host.clone(),
        port: leader.port,
        timeline: former.timeline,
    })
    .expect("a struct of strings serializes")
}

/// The former leader recorded in `text` for member `me`: `Ok(None)` when the file was written by
/// another member (copied by pg_basebackup or pg_rewind); an error naming what is wrong otherwise.
pub fn parse(me: &str, text: &str) -> Result<Option<FormerLeader>, String> {
    let s: Stored = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if s.owner != me {
        return Ok(None);
    }
    if s.member.is_empty() || s.host.is_empty() {
        return Err("empty member or host".into());
    }
    Ok(Some(FormerLeader {
        leader: Upstream {
            member: s.member,
            host: s.host,
            port: s.port,
        },
        timeline: s.timeline,
    }))
}

/// Reads the former leader recorded for `me` in `data_dir`; `None` (logged when the file is
/// unreadable or malformed) when there is none.
pub fn load(data_dir: &Path, me: &str) -> Option<FormerLeader> {
    let p = path(data_dir);
    let text = crate::data_dir_file::read_optional(&p, "no former leader known")?;
    match parse(me, &text) {
        Ok(up) => up,
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", p.display());
            None
        }
    }
}

/// Records `former` for `me` in `data_dir` ([`crate::data_dir_file::write_durably`]: only when
/// the data directory holds a cluster). Errors: the file system's.
pub fn store(data_dir: &Path, me: &str, former: &FormerLeader) -> std::io::Result<()> {
    crate::data_dir_file::write_durably(data_dir, FILE_NAME, &render(me, former)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(member: &str, port: u16) -> FormerLeader {
        FormerLeader {
            leader: Upstream {
                member: member.into(),
                host: "10.0.0.1".into(),
                port,
            },
            timeline: Some(3),
        }
    }

    #[test]
    fn the_former_leader_reads_back_only_for_the_member_that_wrote_it() {
        let text = render("pg2", &up("pg1", 5432));
        // (reader, text, what it reads: None when it is not its own; Err when malformed)
        type Row<'a> = (&'a str, &'a str, Result<Option<FormerLeader>, ()>);
        let old_format = r#"{"owner":"pg2","member":"pg1","host":"10.0.0.1","port":5432}"#;
        let rows: [Row; 6] = [
            ("pg2", &text, Ok(Some(up("pg1", 5432)))),
            // Written before the timeline was kept: read, timeline unknown.
            (
                "pg2",
                old_format,
                Ok(Some(FormerLeader {
                    timeline: None,
                    ..up("pg1", 5432)
                })),
            ),
            // Copied from pg2's data directory by pg_basebackup / pg_rewind.
            ("pg3", &text, Ok(None)),
            ("pg2", "not json", Err(())),
            (
                "pg2",
                r#"{"owner":"pg2","member":"","host":"h","port":1}"#,
                Err(()),
            ),
            ("pg2", r#"{"owner":"pg2","member":"pg1"}"#, Err(())),
        ];
        for (me, text, want) in rows {
            assert_eq!(parse(me, text).map_err(|_| ()), want, "{me} reads {text}");
        }
    }

    #[test]
    fn it_survives_a_restart_and_is_never_written_into_an_empty_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), "pg2", &up("pg1", 5432)).unwrap();
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "wrote into a data directory without a cluster"
        );
        std::fs::write(dir.path().join("PG_VERSION"), "15\n").unwrap();
        store(dir.path(), "pg2", &up("pg1", 5432)).unwrap();
        assert_eq!(load(dir.path(), "pg2"), Some(up("pg1", 5432)));
        store(dir.path(), "pg2", &up("pg3", 5433)).unwrap();
        assert_eq!(load(dir.path(), "pg2"), Some(up("pg3", 5433)));
        assert_eq!(load(dir.path(), "pg3"), None);
    }
}
