//! Asking other members' REST APIs how they are (Patroni's `fetch_nodes_statuses`).
//!
//! During a leader race every candidate asks every other member for its WAL position over
//! `GET <api_url>` (Patroni's `/patroni`), all at once with a short timeout: a member that does not
//! answer cannot be promoted and does not block the race.

use praetor_dcs::Cluster;
use serde_json::Value;

use crate::api::client::ApiClient;
use crate::ha::PeerStatus;

/// Reads a peer's `/patroni` answer into what the leader race needs.
pub fn peer_status_from_json(name: &str, v: &Value) -> PeerStatus {
    let xlog = &v["xlog"];
    let position = ["location", "received_location", "replayed_location"]
        .iter()
        .filter_map(|k| xlog[*k].as_u64())
        .max()
        .unwrap_or(0);
    let tags = &v["tags"];
    let running = v["state"].as_str() == Some("running");
    let role = v["role"].as_str().unwrap_or("");
    // A stopped member that diverged answers its switch point (see `ha::diverged_vote`).
    let diverged_at = xlog["diverged_at"].as_u64().filter(|_| !running);
    PeerStatus {
        name: name.to_string(),
        is_running_primary: running && (role == "primary" || role == "master"),
        is_running: running,
        wal_position: diverged_at.unwrap_or(position),
        timeline: v["timeline"].as_u64().unwrap_or(0) as u32,
        nofailover: tags["nofailover"].as_bool().unwrap_or(false),
        failover_priority: tags["failover_priority"].as_i64().unwrap_or(1),
        diverged: diverged_at.is_some(),
        // Praetor's field (see `crate::api::NodeStatus::holding_off_ms`); absent from Patroni's
        // answers, which never hold off.
        holding_off: v["holding_off_ms"].as_u64().is_some_and(|ms| ms > 0),
        // Praetor's field (see `crate::api::NodeStatus::logical_slot_copies`); a Patroni member
        // does not publish it and is neither preferred nor passed over on it.
        slot_copies: v["logical_slot_copies"].as_bool(),
        cluster_unlocked: v["cluster_unlocked"].as_bool().unwrap_or(false),
    }
}

/// Asks every member of `view` except `me` for its status, concurrently, with `client` (its TLS
/// settings, credentials and timeout): the members whose keys [`crate::ha::failsafe::race_contacts`]
/// names, the `failsafe` key's too with `failsafe_mode` on. Members that do not answer are left out.
pub async fn fetch_peers(
    view: &Cluster,
    me: &str,
    failsafe_mode: bool,
    client: &ApiClient,
) -> Vec<PeerStatus> {
    let asks = crate::ha::failsafe::race_contacts(view, me, failsafe_mode)
        .into_iter()
        .map(|(name, url)| async move {
            // Whatever the status code: health endpoints answer 503 with a useful body.
            match client
                .request("GET", &url, None)
                .await
                .and_then(|r| r.json())
            {
                Ok(v) => Some(peer_status_from_json(&name, &v)),
                Err(e) => {
                    tracing::debug!(member = %name, "peer did not answer: {e}");
                    None
                }
            }
        });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_and_primary_answers_parse() {
        let replica = serde_json::json!({
            "state": "running", "role": "replica", "timeline": 3,
            "xlog": {"received_location": 500, "replayed_location": 400, "paused": false},
            "tags": {"failover_priority": 5}
        });
        let p = peer_status_from_json("pg2", &replica);
        assert_eq!(p.wal_position, 500);
        assert_eq!(p.failover_priority, 5);
        assert!(p.is_running && !p.is_running_primary && !p.nofailover);
        let primary =
            serde_json::json!({"state": "running", "role": "master", "xlog": {"location": 9}});
        assert!(peer_status_from_json("pg1", &primary).is_running_primary);
        let stopped = serde_json::json!({"state": "stopped", "role": "replica", "tags": {"nofailover": true}});
        let s = peer_status_from_json("pg3", &stopped);
        assert!(!s.is_eligible());
        assert!(!s.diverged);
    }

    /// A stopped member that diverged publishes its timeline and switch point in `/patroni`, and
    /// the race reads them back as a vote-capable, never eligible, peer.
    #[test]
    fn a_stopped_diverged_member_answers_its_switch_point() {
        let st = crate::api::NodeStatus {
            name: "pg3".into(),
            state: praetor_dcs::MemberState::Stopped,
            diverged: Some((1, 5000)),
            ..Default::default()
        };
        let p = peer_status_from_json("pg3", &st.patroni_json());
        assert!(p.diverged && !p.is_running && !p.is_eligible());
        assert_eq!((p.timeline, p.wal_position), (1, 5000));
        let not_diverged = crate::api::NodeStatus {
            state: praetor_dcs::MemberState::Stopped,
            ..st
        };
        let p = peer_status_from_json(
            "pg3",
            &crate::api::NodeStatus {
                diverged: None,
                ..not_diverged
            }
            .patroni_json(),
        );
        assert!(!p.diverged);
        assert_eq!(p.wal_position, 0);
    }

    /// A member holding off the race after its renewals lapsed says so in `/patroni`
    /// (`holding_off_ms`), and the race reads it back; without it (Patroni's answers) it does not.
    #[test]
    fn a_member_holding_off_answers_holding_off_ms() {
        let st = crate::api::NodeStatus {
            name: "pg1".into(),
            holding_off_ms: Some(4_000),
            ..Default::default()
        };
        let json = st.patroni_json();
        assert_eq!(json["holding_off_ms"], 4_000);
        assert!(peer_status_from_json("pg1", &json).holding_off);
        let st = crate::api::NodeStatus {
            holding_off_ms: None,
            ..st
        };
        let json = st.patroni_json();
        assert!(json.get("holding_off_ms").is_none());
        assert!(!peer_status_from_json("pg1", &json).holding_off);
    }

    /// A member says in `/patroni` whether it holds usable copies of the permanent logical slots
    /// (`logical_slot_copies`), and the race reads it back; a Patroni member's answer has no such
    /// field: unknown, neither preferred nor passed over.
    #[test]
    fn a_member_answers_whether_it_holds_slot_copies() {
        for copies in [Some(true), Some(false), None] {
            let st = crate::api::NodeStatus {
                name: "pg2".into(),
                logical_slot_copies: copies,
                ..Default::default()
            };
            let json = st.patroni_json();
            assert_eq!(
                json.get("logical_slot_copies").and_then(|v| v.as_bool()),
                copies
            );
            assert_eq!(peer_status_from_json("pg2", &json).slot_copies, copies);
        }
        let patroni = serde_json::json!({
            "state": "running", "role": "replica", "timeline": 1,
            "xlog": {"received_location": 500, "replayed_location": 500}
        });
        assert_eq!(peer_status_from_json("pg3", &patroni).slot_copies, None);
    }

    /// A member says in `/patroni` whether the last DCS view it read had a leader key
    /// (`cluster_unlocked`, as Patroni does), and the race reads it back: a switchover candidate
    /// lacking the last LSN that saw no leader is not waited for. Without the field: `false`.
    #[test]
    fn a_member_answers_whether_it_saw_the_cluster_unlocked() {
        use praetor_dcs::{Cluster, Leader};
        let locked = Cluster {
            leader: Some(Leader {
                name: "pg1".into(),
                version: 1,
            }),
            ..Default::default()
        };
        for (cluster, unlocked) in [
            (None, true),
            (Some(Cluster::default()), true),
            (Some(locked), false),
        ] {
            let st = crate::api::NodeStatus {
                name: "pg2".into(),
                cluster: cluster.map(std::sync::Arc::new),
                ..Default::default()
            };
            let json = st.patroni_json();
            assert_eq!(json["cluster_unlocked"], unlocked);
            assert_eq!(
                peer_status_from_json("pg2", &json).cluster_unlocked,
                unlocked
            );
        }
        let without = serde_json::json!({"state": "running", "role": "replica"});
        assert!(!peer_status_from_json("pg3", &without).cluster_unlocked);
    }
}
