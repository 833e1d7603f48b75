//! Values stored in the DCS, with Patroni's JSON field names, and the cluster view built from them.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

pub use praetor_config::Tags;

/// The Patroni release whose DCS values and rules Praetor follows, written as `version` in member
/// keys (see [`MemberData::version`]) so Patroni members sharing the cluster treat Praetor members as
/// current ones. Mixed clusters are tested against this release (tests/mixed.rs).
pub const PATRONI_COMPAT_VERSION: &str = "4.1.5";

/// A key's modification stamp, used for compare-and-set: etcd's `mod_revision`, ZooKeeper's znode
/// version. Only meaningful for the key it was read from.
pub type Version = i64;

/// A value with the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The decoded value.
    pub value: T,
    /// Its version, for a later compare-and-set.
    pub version: Version,
}

/// A member's role as published in `members/<name>` (`role` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read-write primary. Patroni before 4.0 wrote `master`, accepted as an alias.
    #[serde(alias = "master")]
    Primary,
    /// Streaming (or archive-recovering) replica.
    Replica,
    /// Leader of a standby cluster.
    StandbyLeader,
    /// A former primary that gave up the lock and is not yet following.
    Demoted,
    /// No PostgreSQL data yet.
    #[default]
    Uninitialized,
    /// A role string this version does not know.
    #[serde(other)]
    Unknown,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Demoted => "demoted",
            Role::Uninitialized => "uninitialized",
            Role::Unknown => "unknown",
        })
    }
}

/// PostgreSQL's state as published in `members/<name>` (`state` field); Patroni's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum MemberState {
    /// Accepting connections.
    #[serde(rename = "running")]
    Running,
    /// Starting up (or in crash recovery).
    #[serde(rename = "starting")]
    Starting,
    /// Not running.
    #[default]
    #[serde(rename = "stopped")]
    Stopped,
    /// Shutting down.
    #[serde(rename = "stopping")]
    Stopping,
    /// Was running and died without being asked to stop.
    #[serde(rename = "crashed")]
    Crashed,
    /// pg_basebackup in progress.
    #[serde(rename = "creating replica")]
    CreatingReplica,
    /// initdb in progress.
    #[serde(rename = "initializing new cluster")]
    InitializingNewCluster,
    /// Failed to start.
    #[serde(rename = "start failed")]
    StartFailed,
    /// Failed to restart.
    #[serde(rename = "restart failed")]
    RestartFailed,
    /// pg_rewind in progress.
    #[serde(rename = "rewinding")]
    Rewinding,
    /// pg_rewind failed after it began changing the data directory: PostgreSQL is not started on
    /// it until a new base backup replaces it (Praetor's; Patroni has no such state and shows
    /// `stopped`).
    #[serde(rename = "rewind failed")]
    RewindFailed,
    /// A state string this version does not know.
    #[serde(other, rename = "unknown")]
    Unknown,
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "unknown".into());
        f.write_str(&s)
    }
}

/// The value of `members/<name>`: what a member publishes about itself every loop.
///
/// Field names are Patroni's. LSNs are byte positions (PostgreSQL's `pg_lsn` as an integer).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberData {
    /// `postgres://host:port/postgres`: where clients reach this member's PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_url: Option<String>,
    /// `http://host:port/patroni`: this member's REST API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// PostgreSQL state.
    #[serde(default)]
    pub state: MemberState,
    /// PostgreSQL role.
    #[serde(default)]
    pub role: Role,
    /// The Patroni version whose rules the writer follows (`4.1.5`). Patroni reads this field as
    /// the member's Patroni version and changes what it does for older ones (patroni/dcs/__init__.py
    /// `Member.patroni_version`: below 2.1.0 in `Cluster.min_version` it writes the legacy
    /// `optime/leader` key, below 4.0.0 for the leader it computes replicas' slot positions from
    /// their member keys, at most 1.5.6 it ignores `checkpoint_after_promote`), so Praetor writes
    /// [`crate::PATRONI_COMPAT_VERSION`] here and its own version in
    /// [`MemberData::praetor_version`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The Praetor version of the agent that wrote this (Praetor's addition; Patroni ignores it).
    /// `None`: a Patroni member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub praetor_version: Option<String>,
    /// The primary's current WAL write position, or a replica's last received/replayed position (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    /// Replica: last WAL position received (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<u64>,
    /// Replica: last WAL position replayed (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<u64>,
    /// Current timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Replica: `streaming` when the WAL receiver is connected, otherwise `in archive recovery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    /// Tags from the member's configuration.
    #[serde(default, skip_serializing_if = "tags_are_default")]
    pub tags: Tags,
    /// A parameter change waits for a restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
    /// Why a restart is pending: parameter name → `{old_value, new_value}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart_reason: Option<serde_json::Value>,
    /// The member is in maintenance mode.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
    /// A leader after promotion: `false` until the CHECKPOINT it requested completed, absent after
    /// (Patroni's field and meaning: Patroni takes a present field, whatever its value, as not
    /// done yet, so `true` is never written; it is read as done). pg_rewind against a
    /// just-promoted source would read its old timeline from pg_control and wrongly find nothing
    /// to rewind, so members wait while it is `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_after_promote: Option<bool>,
    /// The running PostgreSQL's `server_version_num` (150018). Praetor's addition, for `ctl list
    /// -e`: Patroni does not write it and ignores it when reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<u32>,
    /// The ms left of this member's hold-off from the leader race after its lock renewals lapsed
    /// (`praetor::ha::lapsed`), as of its last member-key write; absent when it does not hold off.
    /// Praetor's addition (Patroni has no hold-off, does not write it and ignores it when reading):
    /// the same value as `holding_off_ms` in its `/patroni` answer, which the other members' leader
    /// race reads (they do not defer to a member that holds off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding_off_ms: Option<u64>,
    /// Whether this member holds a usable copy of every permanent logical slot (synchronised,
    /// not invalidated; on PostgreSQL 17+ not kept temporary by slot synchronization), as of its
    /// last member-key write; absent when no permanent logical slot is configured or PostgreSQL
    /// is not running. Praetor's addition (Patroni does not write it and ignores it when
    /// reading): the same value as `logical_slot_copies` in its `/patroni` answer, which the other
    /// members' leader race reads as a tie-breaker after WAL position and `failover_priority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_slot_copies: Option<bool>,
    /// Fields written by other tools or newer versions, kept as they are.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn tags_are_default(t: &Tags) -> bool {
    *t == Tags::default()
}

impl MemberData {
    /// The best known WAL position of this member: the larger of received and replayed positions for a
    /// replica, `xlog_location` otherwise.
    pub fn wal_position(&self) -> Option<u64> {
        [self.receive_lsn, self.replay_lsn, self.xlog_location]
            .into_iter()
            .flatten()
            .max()
    }

    /// Host and port of `conn_url` (`postgres://host:port/db` → `("host", port)`), if it parses.
    pub fn conn_host_port(&self) -> Option<(String, u16)> {
        parse_url_host_port(self.conn_url.as_deref()?, 5432)
    }
}

/// Host and port of a `scheme://[user@]host[:port][/path]` URL; IPv6 hosts in brackets.
pub fn parse_url_host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None if !hostport.is_empty() => Some((hostport.to_string(), default_port)),
        None => None,
    }
}

/// A member as read from the DCS.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The member's name (last path element of its key).
    pub name: String,
    /// What it published.
    pub data: MemberData,
    /// Version of its key.
    pub version: Version,
}

/// The `leader` key: who holds the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Name of the member holding the lock (the plain value of the key).
    pub name: String,
    /// Version of the key.
    pub version: Version,
}

/// The `failover` key: a switchover (`leader` set) or failover (`leader` unset) request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The leader that must step down (switchover); `None` for a failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The candidate to promote; `None` lets the healthiest member win.
    #[serde(default, alias = "candidate", skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// ISO 8601 time at which to act; `None`: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
}

impl Failover {
    /// An empty object (`{}`), which Patroni writes after a switchover completes: no request.
    pub fn is_empty(&self) -> bool {
        self.leader.is_none() && self.member.is_none()
    }
}

/// One line of the `history` key: `[timeline, lsn, reason, timestamp, new_leader]`.
///
/// `timeline` ended at `lsn` (bytes) and its successor started there. Older Patroni versions wrote
/// only the first three elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The timeline that ended.
    pub timeline: u32,
    /// Where it ended: the switch point to `timeline + 1` (bytes).
    pub lsn: u64,
    /// PostgreSQL's reason text from the timeline history file.
    pub reason: String,
    /// When the promotion happened (ISO 8601).
    pub timestamp: Option<String>,
    /// The member promoted on the new timeline.
    pub new_leader: Option<String>,
}

impl Serialize for HistoryEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        seq.serialize_element(&self.timeline)?;
        seq.serialize_element(&self.lsn)?;
        seq.serialize_element(&self.reason)?;
        if let Some(ts) = &self.timestamp {
            seq.serialize_element(ts)?;
            if let Some(l) = &self.new_leader {
                seq.serialize_element(l)?;
            }
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for HistoryEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Vec<serde_json::Value> = Vec::deserialize(d)?;
        let timeline = v
            .first()
            .and_then(|t| t.as_u64())
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| de::Error::custom("history entry: timeline must be an integer"))?;
        let lsn = v
            .get(1)
            .and_then(|l| l.as_u64())
            .ok_or_else(|| de::Error::custom("history entry: lsn must be an integer"))?;
        let text = |i: usize| v.get(i).and_then(|x| x.as_str()).map(str::to_string);
        Ok(HistoryEntry {
            timeline,
            lsn,
            reason: text(2).unwrap_or_default(),
            timestamp: text(3),
            new_leader: text(4),
        })
    }
}

/// The `status` key, written by the leader every loop.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The leader's WAL position (bytes).
    #[serde(default)]
    pub optime: u64,
    /// Replication slots and their confirmed positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<BTreeMap<String, u64>>,
    /// Members whose slots are kept although they are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_slots: Option<Vec<String>>,
}

/// The `sync` key: which standbys are synchronous.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The leader that wrote it.
    #[serde(default)]
    pub leader: Option<String>,
    /// Comma-separated member names, or null.
    #[serde(default)]
    pub sync_standby: Option<String>,
    /// Quorum size (quorum mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
}

impl SyncState {
    /// The synchronous standbys named in `sync_standby`.
    pub fn members(&self) -> Vec<String> {
        self.sync_standby
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// `praetor/proxies/<id>`: a live proxy's routing, on the proxy's lease (Praetor's fencing handshake,
/// not a Patroni key). A proxy rewrites it each time its leader route changes, after it has closed
/// every connection to the former leader; agents read it to know no proxy still routes to a leader
/// that stepped down.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyState {
    /// The member this proxy routes writes to; `None`: none (waiting for a leader).
    #[serde(default)]
    pub leader: Option<String>,
    /// When the route last changed (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
}

impl ProxyState {
    /// How long a proxy keeps serving without a successful write of its key: `ttl` less a margin of
    /// ttl/5 (at least 1 s, at most ttl/2). A proxy cut off from the DCS stops serving by then, so an
    /// agent waiting this long for a proxy's acknowledgement knows that proxy routes nowhere.
    pub fn contact_deadline(ttl_secs: u32) -> std::time::Duration {
        Self::contact_deadline_of(std::time::Duration::from_secs(ttl_secs.into()))
    }

    /// [`ProxyState::contact_deadline`] for a session of this length (ms precision).
    pub fn contact_deadline_of(session: std::time::Duration) -> std::time::Duration {
        let margin = (session / 5)
            .max(std::time::Duration::from_secs(1))
            .min(session / 2);
        session - margin
    }

    /// The contact deadline when the DCS granted `granted` (see [`crate::Dcs::granted_ttl`]) for a
    /// requested `ttl_secs`: computed from the shorter of the two. A proxy's key lives on its session
    /// for the granted time only, so a proxy must stop serving before *that* expires (ZooKeeper grants
    /// at most `maxSessionTimeout`, which can be less than the ttl); and since every client of the
    /// same DCS is granted the same for the same ttl, an agent waiting this long for a proxy that does
    /// not answer waits as long as that proxy keeps serving, not longer. `granted` `None`: `ttl_secs`.
    pub fn contact_deadline_within(
        ttl_secs: u32,
        granted: Option<std::time::Duration>,
    ) -> std::time::Duration {
        let ttl = std::time::Duration::from_secs(ttl_secs.into());
        Self::contact_deadline_of(granted.map_or(ttl, |g| g.min(ttl)))
    }
}

/// Everything stored for one cluster, read at one point in time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cluster {
    /// `initialize`: the database system identifier; `Some("")` while bootstrap runs; `None` when the
    /// cluster was never initialized.
    pub initialize: Option<String>,
    /// `config`: the dynamic configuration as raw JSON (unknown keys kept).
    pub config: Option<Versioned<serde_json::Value>>,
    /// `leader`: the lock holder.
    pub leader: Option<Leader>,
    /// `members/*`, sorted by name.
    pub members: Vec<Member>,
    /// `failover`: a pending switchover/failover (an empty `{}` is reported as `None` value-wise by
    /// [`Cluster::failover_request`]).
    pub failover: Option<Versioned<Failover>>,
    /// `history`.
    pub history: Option<Versioned<Vec<HistoryEntry>>>,
    /// `sync`.
    pub sync: Option<Versioned<SyncState>>,
    /// `status`.
    pub status: Option<Status>,
    /// `failsafe`: member name → api_url.
    pub failsafe: Option<BTreeMap<String, String>>,
    /// `praetor/proxies/*`: live proxies by id.
    pub proxies: BTreeMap<String, ProxyState>,
}

impl Cluster {
    /// The member named `name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The member holding the lock, if it also published a member key.
    pub fn leader_member(&self) -> Option<&Member> {
        self.leader.as_ref().and_then(|l| self.member(&l.name))
    }

    /// A real switchover/failover request (not the empty `{}` Patroni leaves behind).
    pub fn failover_request(&self) -> Option<&Versioned<Failover>> {
        self.failover.as_ref().filter(|f| !f.value.is_empty())
    }

    /// The proxy fencing handshake, agent side: true when no live proxy still routes writes to
    /// `old_leader`, so the candidate of a switchover may promote.
    ///
    /// Every live proxy holds `praetor/proxies/<id>` on its own lease (TTL = the cluster's `ttl`)
    /// and rewrites it with the leader it routes to *before* it routes any connection there, and
    /// after every connection to the previous leader is closed. So once no key names `old_leader`,
    /// no statement from a proxy can reach it any more. A proxy that cannot reach the DCS stops
    /// serving before its lease can expire (after `ttl` minus a margin without a successful write),
    /// so its key vanishing (lease expiry) also means it no longer routes anywhere.
    ///
    /// Use it with a bound: wait at most `ttl` (by then a partitioned proxy's key has expired and
    /// the function turns true by itself). A cluster without proxies is trivially fenced.
    pub fn proxies_fenced_from(&self, old_leader: &str) -> bool {
        self.proxies_routing_to(old_leader).is_empty()
    }

    /// The ids of the live proxies whose route for writes is `member` (for logs while an agent waits
    /// on [`Cluster::proxies_fenced_from`]).
    pub fn proxies_routing_to(&self, member: &str) -> Vec<&str> {
        self.proxies
            .iter()
            .filter(|(_, p)| p.leader.as_deref() == Some(member))
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// The leader's last known WAL position: `status.optime`, else the leader member's `xlog_location`.
    pub fn leader_optime(&self) -> Option<u64> {
        self.status
            .as_ref()
            .map(|s| s.optime)
            .filter(|o| *o > 0)
            .or_else(|| self.leader_member().and_then(|m| m.data.xlog_location))
    }

    /// The leader member's timeline, when its member key says.
    pub fn leader_timeline(&self) -> Option<u32> {
        self.leader_member().and_then(|m| m.data.timeline)
    }

    /// True when a member on `timeline` is on another timeline than the leader (both known): its WAL
    /// position does not compare with the leader's, since a replica still on a former timeline may
    /// hold WAL past the fork that the leader never had.
    pub fn off_leader_timeline(&self, timeline: Option<u32>) -> bool {
        matches!((timeline, self.leader_timeline()), (Some(t), Some(l)) if t != l)
    }

    /// Bytes a member at WAL `position` on `timeline` is behind the leader's last known position
    /// ([`Cluster::leader_optime`]); `None` when unknown: a position is missing, or the member is
    /// on another timeline ([`Cluster::off_leader_timeline`]), where a difference of positions would
    /// read 0 for a replica ahead of the fork.
    pub fn lag_behind_leader(&self, position: Option<u64>, timeline: Option<u32>) -> Option<u64> {
        if self.off_leader_timeline(timeline) {
            return None;
        }
        Some(self.leader_optime()?.saturating_sub(position?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_contact_deadline_follows_the_granted_session_when_it_is_shorter() {
        let s = std::time::Duration::from_secs;
        let ms = std::time::Duration::from_millis;
        // (ttl requested, granted, deadline)
        let rows = [
            (30, None, s(24)),
            (30, Some(s(30)), s(24)),
            // ZooKeeper's maxSessionTimeout (20 tickTime = 40 s by default) below the ttl: the
            // proxy's key expires after 40 s, so it must stop serving before then.
            (60, Some(s(40)), s(32)),
            // Granted more than asked (ZooKeeper's minSessionTimeout, etcd's minimum TTL): the
            // proxy still stops at the ttl's deadline, and so does the agent's wait.
            (3, Some(s(4)), s(2)),
            (10, Some(ms(7_500)), ms(6_000)),
        ];
        for (ttl, granted, deadline) in rows {
            assert_eq!(
                ProxyState::contact_deadline_within(ttl, granted),
                deadline,
                "ttl {ttl}, granted {granted:?}"
            );
        }
    }

    #[test]
    fn member_json_from_a_real_patroni_cluster_decodes() {
        // From seed 003 ("etcd 中键值对讲解").
        let raw = r#"{"conn_url":"postgres://172.1.1.198:5432/postgres","api_url":"http://172.1.1.198:8008/patroni","state":"running","role":"replica","version":"3.0.4","tags":{"nofailover":true,"noloadbalance":true,"nosync":true},"xlog_location":207469224,"replication_state":"streaming","timeline":10}"#;
        let m: MemberData = serde_json::from_str(raw).unwrap();
        assert_eq!(m.role, Role::Replica);
        assert_eq!(m.state, MemberState::Running);
        assert!(m.tags.nofailover && m.tags.noloadbalance && m.tags.nosync);
        assert_eq!(m.timeline, Some(10));
        assert_eq!(m.conn_host_port(), Some(("172.1.1.198".to_string(), 5432)));
        let primary: MemberData =
            serde_json::from_str(r#"{"state":"running","role":"master"}"#).unwrap();
        assert_eq!(primary.role, Role::Primary);
    }

    #[test]
    fn member_json_round_trips_compactly() {
        let m = MemberData {
            conn_url: Some("postgres://127.0.0.1:5432/postgres".into()),
            api_url: Some("http://127.0.0.1:8008/patroni".into()),
            state: MemberState::CreatingReplica,
            role: Role::Replica,
            xlog_location: Some(5),
            timeline: Some(1),
            ..Default::default()
        };
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.contains(r#""state":"creating replica""#), "{s}");
        assert!(!s.contains("tags"), "{s}");
        assert_eq!(serde_json::from_str::<MemberData>(&s).unwrap(), m);
    }

    /// Issue 14: a member's key says whether it holds usable copies of the permanent logical
    /// slots (`logical_slot_copies`, Praetor's field), read back as written; absent when unknown,
    /// and a Patroni member's key (no such field) reads as unknown.
    #[test]
    fn member_json_carries_logical_slot_copies() {
        for copies in [Some(true), Some(false)] {
            let m = MemberData {
                state: MemberState::Running,
                role: Role::Replica,
                logical_slot_copies: copies,
                ..Default::default()
            };
            let s = serde_json::to_string(&m).unwrap();
            assert!(
                s.contains(&format!(r#""logical_slot_copies":{}"#, copies.unwrap())),
                "{s}"
            );
            let back = serde_json::from_str::<MemberData>(&s).unwrap();
            assert_eq!(back.logical_slot_copies, copies);
            assert!(back.extra.is_empty(), "{:?}", back.extra);
        }
        let none = serde_json::to_string(&MemberData::default()).unwrap();
        assert!(!none.contains("logical_slot_copies"), "{none}");
        let patroni: MemberData =
            serde_json::from_str(r#"{"state":"running","role":"replica","xlog_location":9}"#)
                .unwrap();
        assert_eq!(patroni.logical_slot_copies, None);
    }

    #[test]
    fn history_entries_accept_three_and_five_elements() {
        let h: Vec<HistoryEntry> = serde_json::from_str(
            r#"[[1,50332624,"no recovery target specified"],[2,50332960,"no recovery target specified","2023-07-27T14:52:40.300396+08:00","pg03"]]"#,
        )
        .unwrap();
        assert_eq!(h[0].timeline, 1);
        assert_eq!(h[0].timestamp, None);
        assert_eq!(h[1].new_leader.as_deref(), Some("pg03"));
        let back = serde_json::to_string(&h).unwrap();
        assert!(back.ends_with(r#""pg03"]]"#), "{back}");
    }

    #[test]
    fn failover_accepts_candidate_alias_and_empty_object() {
        let f: Failover = serde_json::from_str(r#"{"leader":"a","candidate":"b"}"#).unwrap();
        assert_eq!(f.member.as_deref(), Some("b"));
        assert!(serde_json::from_str::<Failover>("{}").unwrap().is_empty());
    }

    #[test]
    fn proxies_are_fenced_from_a_leader_once_no_live_proxy_routes_to_it() {
        let mut c = Cluster::default();
        assert!(
            c.proxies_fenced_from("a"),
            "no proxies: nothing to wait for"
        );
        let route = |leader: Option<&str>| ProxyState {
            leader: leader.map(str::to_string),
            since: Some(1),
        };
        c.proxies.insert("p1".into(), route(Some("a")));
        c.proxies.insert("p2".into(), route(None));
        assert!(!c.proxies_fenced_from("a"));
        assert_eq!(c.proxies_routing_to("a"), ["p1"]);
        assert!(c.proxies_fenced_from("b"));
        c.proxies.insert("p1".into(), route(Some("b")));
        assert!(c.proxies_fenced_from("a"));
        // A proxy whose lease expired has no key any more.
        c.proxies.remove("p1");
        assert!(c.proxies_fenced_from("b"));
        let json = serde_json::to_string(&route(Some("a"))).unwrap();
        assert_eq!(json, r#"{"leader":"a","since":1}"#);
    }

    #[test]
    fn url_host_port_parsing() {
        assert_eq!(
            parse_url_host_port("postgres://u@[::1]:6432/db", 5432),
            Some(("::1".into(), 6432))
        );
        assert_eq!(
            parse_url_host_port("postgres://h/db", 5432),
            Some(("h".into(), 5432))
        );
    }
}
