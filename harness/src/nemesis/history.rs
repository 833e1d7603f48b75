//! What a nemesis run recorded: every client operation (start, end, outcome, the server that
//! acknowledged it and on which timeline), every fault (when applied, when healed), whether the
//! cluster converged afterwards, and the final state read from the leader. Plain data: the
//! [`super::checker`] judges it, unit tests write histories by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use super::fault::FaultKind;

/// Replication mode of the cluster under test, which decides whether a lost acknowledged write is
/// a violation (Patroni's `synchronous_mode` promises none is lost; asynchronous replication
/// bounds the loss by `maximum_lag_on_failover` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Asynchronous replication.
    Async,
    /// `synchronous_mode: true`.
    Sync,
    /// `synchronous_mode: true` and `synchronous_mode_strict: true`.
    Strict,
}

impl Mode {
    /// `async`, `sync` or `strict`: how `PRAETOR_NEMESIS_MODE` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Async => "async",
            Mode::Sync => "sync",
            Mode::Strict => "strict",
        }
    }

    /// Parses [`Mode::name`].
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "async" => Some(Mode::Async),
            "sync" | "synchronous_mode" => Some(Mode::Sync),
            "strict" | "synchronous_mode_strict" => Some(Mode::Strict),
            _ => None,
        }
    }

    /// The `bootstrap.dcs` lines that select this mode.
    pub fn dcs_lines(self) -> Vec<String> {
        match self {
            Mode::Async => vec![],
            Mode::Sync => vec!["synchronous_mode: true".into()],
            Mode::Strict => vec![
                "synchronous_mode: true".into(),
                "synchronous_mode_strict: true".into(),
            ],
        }
    }

    /// True when every acknowledged write must survive any failover.
    pub fn is_synchronous(self) -> bool {
        !matches!(self, Mode::Async)
    }
}

/// How a client reached PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Channel {
    /// The proxy's read-write port.
    ProxyRw,
    /// The proxy's auto port (routed transaction by transaction).
    ProxyAuto,
    /// Straight to one member's PostgreSQL, bypassing the proxy (as applications that keep a
    /// member's address do): what a deposed primary acknowledges shows here first.
    Direct(String),
}

impl Channel {
    /// True for the proxy's ports (what recovery is measured on).
    pub fn is_proxy(&self) -> bool {
        matches!(self, Channel::ProxyRw | Channel::ProxyAuto)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::ProxyRw => f.write_str("proxy rw"),
            Channel::ProxyAuto => f.write_str("proxy auto"),
            Channel::Direct(m) => write!(f, "direct {m}"),
        }
    }
}

/// What an operation asked for. Ids come from one counter per run, so each is written once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `INSERT INTO nemesis_log (id)`: a unique insert.
    Insert {
        /// The row's id.
        id: i64,
    },
    /// `UPDATE nemesis_kv SET v = v || id WHERE k = key RETURNING v`: a read-modify-write that
    /// appends `id` to the list under `key` and reads the list back.
    Append {
        /// The key (one of a few).
        key: i32,
        /// The id appended.
        id: i64,
    },
    /// `SELECT count(*) FROM nemesis_log WHERE id = id` in autocommit on the auto port (which may
    /// send it to a replica), right after the same session's acknowledged `Insert { id }`: a
    /// read-your-writes probe. Its [`Outcome::Ok::value`] is `[id]` when the row was seen, `[]`
    /// when not.
    Read {
        /// The id the session inserted just before.
        id: i64,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (the statement's commit completed and the client got its answer).
    Ok {
        /// The member whose PostgreSQL ran it (from `inet_server_addr()` and
        /// `inet_server_port()`), or that `ip:port` when no member has it.
        server: String,
        /// Its WAL insert timeline when it ran (from `pg_walfile_name(pg_current_wal_insert_lsn())`);
        /// 0 for an [`OpKind::Read`], which may run on a replica (no insert position there).
        timeline: u32,
        /// For [`OpKind::Append`]: the list it read back, ending with its own id; for
        /// [`OpKind::Read`]: the ids it saw.
        value: Option<Vec<i64>>,
    },
    /// Certainly not committed: PostgreSQL answered with an error that aborts the statement
    /// (e.g. 25006 on a replica), or the client could not connect.
    Failed {
        /// The SQLSTATE, when PostgreSQL sent one.
        sqlstate: Option<String>,
        /// The error's text.
        message: String,
    },
    /// Indeterminate: the connection broke, timed out, or the server was shut down (SQLSTATE
    /// classes 08, 57, 58, XX) while the statement ran, so it may or may not have committed.
    Unknown {
        /// What happened.
        message: String,
    },
}

/// One recorded client operation; times are from the run's start (a monotonic clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The client's name (`rw-insert`, `auto-rmw`, `direct-pg2`...).
    pub client: String,
    /// How it reached PostgreSQL.
    pub channel: Channel,
    /// What it asked.
    pub kind: OpKind,
    /// When it was sent.
    pub start: Duration,
    /// When its answer (or error) arrived.
    pub end: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

impl Op {
    /// The member and timeline that acknowledged it, if it is a write and was acknowledged (a
    /// read acknowledges no write: it counts in none of the write checks).
    pub fn acked_on(&self) -> Option<(&str, u32)> {
        if matches!(self.kind, OpKind::Read { .. }) {
            return None;
        }
        match &self.outcome {
            Outcome::Ok {
                server, timeline, ..
            } => Some((server.as_str(), *timeline)),
            _ => None,
        }
    }
}

/// One fault the nemesis applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRecord {
    /// What it was.
    pub kind: FaultKind,
    /// Whom it hit (`pg2`, `etcd e1,e3`, `proxy`...).
    pub target: String,
    /// When it was applied.
    pub start: Duration,
    /// When it was healed (equal to `start` for instantaneous faults such as a PostgreSQL crash).
    pub heal: Duration,
    /// It hit the member that led when it was applied (or cut that member off, for a
    /// partition); for a DCS member stop, the stopped server led the DCS (its raft or ZooKeeper
    /// leader); false for a replica and for the other faults aimed at no member (DCS, proxy).
    pub on_leader: bool,
    /// A partition that left a replica on the leader's side (it may be the synchronous
    /// standby, which under `synchronous_mode` is the only member that may be promoted).
    pub replica_with_leader: bool,
    /// For a DCS quorum loss: when (from the run's start) the DCS accepted a client request
    /// again after the heal; for a stop of the DCS's own leader (a [`FaultKind::DcsMemberStop`]
    /// `on_leader`): when it did so after the stop, once the other servers had elected a leader
    /// (the runner's probe of every server: a linearizable read on etcd, a new session and an
    /// `exists` on ZooKeeper; [`super::dcs_probe`]); `None` for the other faults, or when no
    /// server answered within the probe's limit.
    pub dcs_available_at: Option<Duration>,
}

impl FaultRecord {
    /// True when `other` was applied while this fault held or this one while `other` held.
    pub fn overlaps(&self, other: &FaultRecord) -> bool {
        self != other && self.start <= other.heal && other.start <= self.heal
    }
}

/// Whether the cluster converged after the faults were healed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Convergence {
    /// One running leader and every replica streaming on its timeline, `after` the last heal.
    Converged {
        /// Time from the heal to convergence.
        after: Duration,
    },
    /// Not within the bound.
    NotConverged {
        /// When (from the run's start) the runner gave up.
        at: Duration,
        /// What the cluster looked like last.
        last: String,
    },
}

/// The data read from the leader once the run converged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalState {
    /// Every id in `nemesis_log`.
    pub ids: BTreeSet<i64>,
    /// Every key's list in `nemesis_kv`.
    pub lists: BTreeMap<i32, Vec<i64>>,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// Replication mode.
    pub mode: Mode,
    /// Leader lock TTL, seconds.
    pub ttl_secs: u32,
    /// Loop period, seconds.
    pub loop_wait_secs: u32,
    /// DCS retry timeout, seconds (the agents' timeout on a peer's REST API is this, clamped
    /// to 1..=2 s).
    pub retry_timeout_secs: u32,
    /// Every operation, in no particular order.
    pub ops: Vec<Op>,
    /// Every fault, in the order applied.
    pub faults: Vec<FaultRecord>,
    /// One entry per heal: whether the cluster converged afterwards (the run stops at the first
    /// that did not).
    pub convergence: Vec<Convergence>,
    /// What the leader held at the end; `None` when it could not be read (then no write can be
    /// checked, which is itself a violation).
    pub final_state: Option<FinalState>,
    /// Why each failed attempt to read the final state failed (the runner retries for a
    /// minute): a leader that stops answering after the cluster had converged shows here.
    pub final_read_failures: Vec<String>,
    /// When the run ended (the workload stopped).
    pub end: Duration,
    /// The proxy promised read-your-writes on its auto port (`read_your_writes`, on by default):
    /// a read that misses its session's own acknowledged insert is then a violation.
    pub read_your_writes: bool,
    /// The logical slot workload's record, when the run had one (`PRAETOR_NEMESIS_SLOTS=1`).
    pub slot: Option<SlotHistory>,
}

/// What the logical slot workload recorded ([`crate::logical`]): a permanent logical slot in
/// the cluster's dynamic configuration, a writer whose rows carry their own WAL position, and a
/// consumer started again from its confirmed position after each disconnection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotHistory {
    /// Every consumer run, in order.
    pub runs: Vec<SlotRun>,
    /// Each member's copy of the slot becoming usable or not (polled from
    /// `pg_replication_slots`), in time order: `(member, when, usable)`; a member shows once
    /// at its first answer, then at each change.
    pub copies: Vec<(String, Duration, bool)>,
    /// When every replica held a usable copy at once (the runner held the first fault until
    /// then); `None` when that never happened.
    pub copies_ready_at: Option<Duration>,
    /// Each member's `/patroni` answer as the poller read it about once a second, in no
    /// particular order across members: what the leader race compares
    /// ([`super::slot_feed::passed_over_holder`] reads the candidates at each promotion).
    pub candidates: Vec<CandidateSample>,
    /// Rows the writer saw acknowledged.
    pub acknowledged: usize,
    /// Every `(id, lsn)` of the final leader's table; `None` when it could not be read.
    pub final_rows: Option<BTreeMap<i64, u64>>,
    /// `Ok` when the consumer confirmed the final leader's WAL end (then every row of the final
    /// table should have been delivered) or delivered every row before it was stopped, else
    /// why not.
    pub drained: Result<(), String>,
}

/// One member's `/patroni` answer, the fields the leader race weighs (`is_healthiest`: timeline,
/// WAL position, `failover_priority`, the `sync` key under `synchronous_mode`, and Praetor's
/// `logical_slot_copies` tie-breaker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateSample {
    /// The member.
    pub member: String,
    /// When its answer arrived (from the run's start).
    pub at: Duration,
    /// It runs as primary (`role` `primary`/`master`): not a candidate.
    pub primary: bool,
    /// Its timeline (`timeline`; 0 when absent: PostgreSQL not running).
    pub timeline: u32,
    /// Its WAL position, bytes: a replica's max of `xlog.received_location` and
    /// `xlog.replayed_location` (the race's measure), a primary's `xlog.location`.
    pub wal: u64,
    /// `tags.failover_priority` (default 1; `nofailover: true` counts as 0: never promoted).
    pub failover_priority: i64,
    /// `sync_standby: true`: listed in the `sync` key.
    pub sync_standby: bool,
    /// `logical_slot_copies`: `None` when absent (a Patroni member, or PostgreSQL not running).
    pub slot_copies: Option<bool>,
}

impl CandidateSample {
    /// Reads `member`'s `/patroni` document `v` received at `at`; `None` when it names no
    /// timeline (PostgreSQL not running: no candidate).
    pub fn from_patroni(member: &str, at: Duration, v: &serde_json::Value) -> Option<Self> {
        let timeline = u32::try_from(v["timeline"].as_u64()?).ok()?;
        let x = &v["xlog"];
        let wal = [
            x["location"].as_u64(),
            x["received_location"].as_u64(),
            x["replayed_location"].as_u64(),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        let tags = &v["tags"];
        let failover_priority = if tags["nofailover"].as_bool() == Some(true) {
            0
        } else {
            tags["failover_priority"].as_i64().unwrap_or(1)
        };
        Some(CandidateSample {
            member: member.to_string(),
            at,
            primary: matches!(v["role"].as_str(), Some("primary" | "master")),
            timeline,
            wal,
            failover_priority,
            sync_standby: v["sync_standby"].as_bool() == Some(true),
            slot_copies: v["logical_slot_copies"].as_bool(),
        })
    }
}

/// One `pg_recvlogical` run of the slot workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotRun {
    /// When it started (from the run's start).
    pub start: Duration,
    /// The position it started from (`--startpos`, the last one confirmed), `None` for the first.
    pub startpos: Option<u64>,
    /// The rows it delivered, in order: `(id, lsn)`.
    pub rows: Vec<(i64, u64)>,
}

/// The 8 hex digits of a timeline at the start of a WAL file name, as a number.
pub fn parse_timeline(walfile_prefix: &str) -> Option<u32> {
    u32::from_str_radix(walfile_prefix.get(..8)?, 16).ok()
}

/// PostgreSQL's text form of a `bigint[]` (`{1,2,3}`, `{}`) as numbers.
pub fn parse_bigint_array(text: &str) -> Option<Vec<i64>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(vec![]);
    }
    inner.split(',').map(|x| x.trim().parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timelines_and_arrays_parse_as_postgresql_prints_them() {
        assert_eq!(parse_timeline("0000000A"), Some(10));
        assert_eq!(parse_timeline("00000001000000000000000F"), Some(1));
        assert_eq!(parse_timeline("zz"), None);
        assert_eq!(parse_bigint_array("{}"), Some(vec![]));
        assert_eq!(parse_bigint_array("{1,22,333}"), Some(vec![1, 22, 333]));
        assert_eq!(parse_bigint_array("1,2"), None);
    }

    #[test]
    fn modes_parse_from_their_names() {
        for m in [Mode::Async, Mode::Sync, Mode::Strict] {
            assert_eq!(Mode::parse(m.name()), Some(m));
        }
        assert_eq!(Mode::parse("quorum"), None);
        assert!(Mode::Strict.is_synchronous() && !Mode::Async.is_synchronous());
    }
}
