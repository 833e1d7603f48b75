//! The cluster as operators see it: one row per member with its role, state and lag, as Patroni's
//! `GET /cluster` and `patronictl list` show it.

use serde::Serialize;

use crate::model::{Cluster, MemberState, Role, Tags};

/// One member as `GET /cluster` reports it (Patroni's `cluster_as_json` field names).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberSummary {
    /// Member name.
    pub name: String,
    /// `leader`, `standby_leader`, `sync_standby` or `replica`.
    pub role: String,
    /// PostgreSQL state; `streaming` for a replica whose WAL receiver streams.
    pub state: String,
    /// REST API URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// Host of `conn_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port of `conn_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Timeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Replica: bytes behind the leader's last known position (`None` when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Tags.
    #[serde(skip_serializing_if = "tags_empty")]
    pub tags: Tags,
    /// A restart is pending.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
}

fn tags_empty(t: &Tags) -> bool {
    *t == Tags::default()
}

impl MemberSummary {
    /// The role as `patronictl list` prints it: `Leader`, `Standby Leader`, `Sync Standby`, `Replica`.
    pub fn display_role(&self) -> &'static str {
        match self.role.as_str() {
            "leader" => "Leader",
            "standby_leader" => "Standby Leader",
            "sync_standby" => "Sync Standby",
            _ => "Replica",
        }
    }
}

/// Summarizes every member of `cluster`, sorted by name.
pub fn summarize(cluster: &Cluster) -> Vec<MemberSummary> {
    let leader = cluster.leader.as_ref().map(|l| l.name.as_str());
    let sync: Vec<String> = cluster
        .sync
        .as_ref()
        .map(|s| s.value.members())
        .unwrap_or_default();
    let mut out: Vec<MemberSummary> = cluster
        .members
        .iter()
        .map(|m| {
            let d = &m.data;
            let is_leader = Some(m.name.as_str()) == leader;
            let role = if is_leader {
                if d.role == Role::StandbyLeader {
                    "standby_leader"
                } else {
                    "leader"
                }
            } else if sync.contains(&m.name) {
                "sync_standby"
            } else {
                "replica"
            };
            // Patroni's cluster_as_json: every role but `leader` (so the standby leader too)
            // shows its replication state.
            let state = if role != "leader"
                && d.state == MemberState::Running
                && d.replication_state.as_deref() == Some("streaming")
            {
                "streaming".to_string()
            } else {
                d.state.to_string()
            };
            let (host, port) = match d.conn_host_port() {
                Some((h, p)) => (Some(h), Some(p)),
                None => (None, None),
            };
            let lag = if is_leader {
                None
            } else {
                cluster.lag_behind_leader(d.wal_position(), d.timeline)
            };
            MemberSummary {
                name: m.name.clone(),
                role: role.to_string(),
                state,
                api_url: d.api_url.clone(),
                host,
                port,
                timeline: d.timeline,
                lag,
                tags: d.tags.clone(),
                pending_restart: d.pending_restart,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Leader, Member, MemberData, Status};

    #[test]
    fn roles_states_and_lag() {
        let m = |name: &str, role: Role, xlog: u64, streaming: bool| Member {
            name: name.into(),
            data: MemberData {
                conn_url: Some("postgres://10.0.0.1:5432/postgres".into()),
                state: MemberState::Running,
                role,
                xlog_location: Some(xlog),
                replication_state: streaming.then(|| "streaming".to_string()),
                timeline: Some(2),
                ..Default::default()
            },
            version: 1,
        };
        let c = Cluster {
            leader: Some(Leader {
                name: "a".into(),
                version: 1,
            }),
            members: vec![
                m("b", Role::Replica, 1000, true),
                m("a", Role::Primary, 3000, false),
            ],
            status: Some(Status {
                optime: 3000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = summarize(&c);
        assert_eq!(s[0].name, "a");
        assert_eq!(s[0].display_role(), "Leader");
        assert_eq!(s[0].state, "running");
        assert_eq!(s[0].lag, None);
        assert_eq!(s[1].display_role(), "Replica");
        assert_eq!(s[1].state, "streaming");
        assert_eq!(s[1].lag, Some(2000));
        assert_eq!(s[1].host.as_deref(), Some("10.0.0.1"));
        // A replica left on a former timeline, past the leader's position: its lag is unknown, never 0.
        let mut stale = c.clone();
        stale.members[0].data.timeline = Some(1);
        stale.members[0].data.xlog_location = Some(4000);
        assert_eq!(summarize(&stale)[1].lag, None);
    }
}
