//! Read-your-writes on the auto port: the pure rule that decides where a session's read goes once
//! the session has written.
//!
//! The mechanism (README, "Read-your-writes"):
//! - When a unit that may have written ends on the leader, the session only notes that it wrote
//!   ([`Commit::Unknown`]): nothing is sent then, so sessions that only write pay nothing.
//! - At the session's next read that would go to a replica, the proxy asks the session's leader
//!   connection `SELECT pg_current_wal_insert_lsn()` ([`LEADER_LSN_QUERY`]). PostgreSQL inserts a
//!   commit record before the commit returns, so the insert position is at or past the end of the
//!   session's last commit ([`Commit::At`]); it may be further (other sessions' WAL since), which
//!   only sends reads to the leader sooner, never to a stale replica.
//! - The read goes to the replica when that replica is known to have replayed that position: the
//!   proxy keeps, per replica, the highest `pg_last_wal_replay_lsn()` any session saw on it
//!   ([`REPLICA_LSN_QUERY`]; a replica's replay position only grows while it follows one leader, and
//!   the router forgets them all when the leader changes). When the known position is behind, the
//!   session asks the replica itself once (one round trip on the connection the read would use);
//!   still behind: the read runs on the leader.
//! - Anything unknown (the leader did not answer, no position) sends the read to the leader.
//!
//! Why not the members' DCS keys: they move every `loop_wait` (10 s by default), so every read after
//! a write would go to the leader for that long. Why not a background poll of the replicas: the
//! proxy has no credentials of its own to log in with (sessions log in with their client's), and a
//! poll at a short interval costs every replica queries while nobody reads.
//!
//! A replica's `pg_last_wal_replay_lsn()` is the end of the last record it replayed
//! (`lastReplayedEndRecPtr` in PostgreSQL's `xlogrecovery.c`), set after the record's redo: a replay
//! of a commit record has already made the transaction visible to new snapshots there.

/// Asked on the session's leader connection after it wrote: the WAL insert position (PostgreSQL
/// `pg_current_wal_insert_lsn()`, in `X/Y` text), at or past the end of every commit it returned.
pub(crate) const LEADER_LSN_QUERY: &str = "SELECT pg_current_wal_insert_lsn()";

/// Asked on a replica connection: the end of the last WAL record the replica replayed (PostgreSQL
/// `pg_last_wal_replay_lsn()`; NULL on a server not in recovery).
pub(crate) const REPLICA_LSN_QUERY: &str = "SELECT pg_last_wal_replay_lsn()";

/// What a session knows about its own writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Commit {
    /// Nothing written since the session started (or read-your-writes is off).
    #[default]
    Clean,
    /// A unit that may have written ended on the leader; its WAL position is not asked yet.
    Unknown,
    /// Every commit of the session ends at or before this WAL position (bytes, PostgreSQL's
    /// `pg_lsn` as a 64-bit integer).
    At(u64),
}

/// Where a read of a session goes, or what the session must learn first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadRoute {
    /// The replica: it has replayed the session's last commit (or the session wrote nothing).
    Replica,
    /// Ask the leader for its WAL insert position ([`LEADER_LSN_QUERY`]), then decide again.
    AskLeader,
    /// Ask the replica for its replay position ([`REPLICA_LSN_QUERY`]), then decide again.
    AskReplica,
    /// The leader: the replica is behind the session's last commit, or nothing is known.
    Leader,
}

/// The rule. `commit`: what the session knows of its writes; `replayed`: the highest replay
/// position known for the replica the read would use (`None`: never seen); `asked_replica`: the
/// replica was already asked for this read (so `replayed` is fresh).
pub(crate) fn read_route(commit: Commit, replayed: Option<u64>, asked_replica: bool) -> ReadRoute {
    match commit {
        Commit::Clean => ReadRoute::Replica,
        Commit::Unknown => ReadRoute::AskLeader,
        Commit::At(lsn) if replayed.is_some_and(|r| r >= lsn) => ReadRoute::Replica,
        Commit::At(_) if asked_replica => ReadRoute::Leader,
        Commit::At(_) => ReadRoute::AskReplica,
    }
}

pub(crate) use praetor_protocol::lsn::parse_lsn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_table() {
        use Commit::*;
        use ReadRoute::*;
        let rows: &[(Commit, Option<u64>, bool, ReadRoute)] = &[
            // A session that wrote nothing reads any fresh replica.
            (Clean, None, false, Replica),
            (Clean, Some(5), true, Replica),
            // It wrote: learn where its commit ends first.
            (Unknown, Some(u64::MAX), false, AskLeader),
            (Unknown, None, true, AskLeader),
            // Known replay at or past the commit: the replica, without asking.
            (At(100), Some(100), false, Replica),
            (At(100), Some(101), false, Replica),
            // Behind or unknown: ask the replica once, then the leader.
            (At(100), Some(99), false, AskReplica),
            (At(100), None, false, AskReplica),
            (At(100), Some(99), true, Leader),
            (At(100), None, true, Leader),
            (At(100), Some(100), true, Replica),
        ];
        for &(commit, replayed, asked, want) in rows {
            assert_eq!(
                read_route(commit, replayed, asked),
                want,
                "{commit:?} {replayed:?} asked={asked}"
            );
        }
    }
}
