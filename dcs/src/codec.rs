//! Patroni's value formats, shared by every backend: compact JSON out, and the cluster view built
//! from `(key, value, version)` triples in.
//!
//! A backend reads the keys under `/<namespace>/<scope>/` however it can (one etcd range read, one
//! ZooKeeper multi-read) and hands the raw bytes here, so both backends decode alike: plain text for
//! `leader` and `initialize`, JSON elsewhere, and a malformed value is logged and skipped, never fatal.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

use crate::{Cluster, DcsError, KeyKind, Keys, Leader, Member, Version, Versioned};

/// Compact JSON (no spaces, as Patroni writes it) of the value for `key`.
pub(crate) fn to_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<String, DcsError> {
    serde_json::to_string(value).map_err(|e| DcsError::Malformed {
        key: key.to_string(),
        message: format!("cannot encode: {e}"),
    })
}

fn utf8(value: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(value).map_err(|e| format!("not UTF-8: {e}"))
}

fn json<T: DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    serde_json::from_slice(value).map_err(|e| format!("invalid JSON: {e}"))
}

/// Decodes one key of the cluster into `cluster`. Errors describe what is wrong with the value.
fn apply_entry(
    cluster: &mut Cluster,
    kind: KeyKind,
    value: &[u8],
    version: Version,
) -> Result<(), String> {
    match kind {
        // Patroni writes the system identifier as plain text, not JSON.
        KeyKind::Initialize => cluster.initialize = Some(utf8(value)?.to_string()),
        KeyKind::Config => {
            cluster.config = Some(Versioned {
                value: json(value)?,
                version,
            })
        }
        KeyKind::Leader => {
            let name = utf8(value)?;
            if name.is_empty() {
                return Err("empty leader name".into());
            }
            cluster.leader = Some(Leader {
                name: name.to_string(),
                version,
            });
        }
        KeyKind::Member(name) => cluster.members.push(Member {
            name,
            data: json(value)?,
            version,
        }),
        KeyKind::History => {
            cluster.history = Some(Versioned {
                value: json(value)?,
                version,
            })
        }
        KeyKind::Sync => {
            cluster.sync = Some(Versioned {
                value: json(value)?,
                version,
            })
        }
        KeyKind::Failover => {
            cluster.failover = Some(Versioned {
                value: json(value)?,
                version,
            })
        }
        KeyKind::Status => cluster.status = Some(json(value)?),
        KeyKind::Failsafe => cluster.failsafe = Some(json::<BTreeMap<String, String>>(value)?),
        KeyKind::Proxy(id) => {
            cluster.proxies.insert(id, json(value)?);
        }
        KeyKind::Other(_) | KeyKind::Resync => {}
    }
    Ok(())
}

/// Builds the cluster view from `(key, value, version)` triples read under `keys.base()` (etcd:
/// `mod_revision`; ZooKeeper: znode version).
///
/// A key or value that cannot be decoded is logged (`warn`) and skipped; members come out sorted by
/// name.
pub(crate) fn decode_cluster<'a>(
    keys: &Keys,
    entries: impl IntoIterator<Item = (&'a [u8], &'a [u8], Version)>,
) -> Cluster {
    let mut cluster = Cluster::default();
    for (key, value, version) in entries {
        let Ok(key) = std::str::from_utf8(key) else {
            warn!(key = %String::from_utf8_lossy(key), "skipping a DCS key that is not UTF-8");
            continue;
        };
        let Some(kind) = keys.classify(key) else {
            continue;
        };
        if let Err(message) = apply_entry(&mut cluster, kind, value, version) {
            warn!(key, %message, "skipping a malformed DCS value");
        }
    }
    cluster.members.sort_by(|a, b| a.name.cmp(&b.name));
    cluster
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SyncState;

    fn keys() -> Keys {
        Keys::new("/service/", "pg")
    }

    fn entry<'a>(k: &'a str, v: &'a str, rev: i64) -> (&'a [u8], &'a [u8], Version) {
        (k.as_bytes(), v.as_bytes(), rev)
    }

    #[test]
    fn decode_reads_every_key_of_a_patroni_cluster() {
        let c = decode_cluster(
            &keys(),
            [
                entry("/service/pg/config", r#"{"ttl":30,"loop_wait":10}"#, 3),
                entry("/service/pg/failover", "{}", 4),
                entry(
                    "/service/pg/history",
                    r#"[[1,50332624,"no recovery target specified","2023-07-27T14:24:04.400493+08:00","pg01"]]"#,
                    5,
                ),
                entry("/service/pg/initialize", "7260332825476436099", 6),
                entry("/service/pg/leader", "pg01", 7),
                entry(
                    "/service/pg/members/pg02",
                    r#"{"state":"running","role":"replica"}"#,
                    9,
                ),
                entry(
                    "/service/pg/members/pg01",
                    r#"{"state":"running","role":"master"}"#,
                    8,
                ),
                entry("/service/pg/status", r#"{"optime":207469224}"#, 10),
                entry(
                    "/service/pg/sync",
                    r#"{"leader":"pg01","sync_standby":"pg03"}"#,
                    11,
                ),
                entry(
                    "/service/pg/failsafe",
                    r#"{"pg01":"http://h:8008/patroni"}"#,
                    12,
                ),
                entry("/service/pg/praetor/x", "anything", 13),
            ],
        );
        assert_eq!(c.initialize.as_deref(), Some("7260332825476436099"));
        assert_eq!(c.config.as_ref().unwrap().value["ttl"], 30);
        assert_eq!(c.config.as_ref().unwrap().version, 3);
        assert_eq!(
            c.leader,
            Some(Leader {
                name: "pg01".into(),
                version: 7
            })
        );
        let names: Vec<_> = c.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["pg01", "pg02"], "members sorted by name");
        assert_eq!(c.members[0].version, 8);
        assert_eq!(c.members[0].data.role, crate::Role::Primary);
        assert!(c.failover.as_ref().unwrap().value.is_empty());
        assert_eq!(c.history.as_ref().unwrap().value[0].timeline, 1);
        assert_eq!(c.status.as_ref().unwrap().optime, 207469224);
        assert_eq!(c.sync.as_ref().unwrap().value.members(), ["pg03"]);
        assert_eq!(c.sync.as_ref().unwrap().version, 11);
        assert_eq!(
            c.failsafe.as_ref().unwrap()["pg01"],
            "http://h:8008/patroni"
        );
    }

    #[test]
    fn decode_skips_malformed_values_and_keeps_the_rest() {
        let c = decode_cluster(
            &keys(),
            [
                entry("/service/pg/members/bad", "not json", 2),
                entry("/service/pg/members/good", r#"{"state":"running"}"#, 3),
                entry("/service/pg/config", "{", 4),
                entry("/service/pg/history", r#"[["x"]]"#, 5),
                entry("/service/pg/leader", "", 6),
                entry("/service/pg/sync", "null", 7),
                (
                    b"/service/pg/initialize".as_slice(),
                    b"\xff\xfe".as_slice(),
                    8,
                ),
                (b"/service/pg/\xff".as_slice(), b"x".as_slice(), 9),
            ],
        );
        assert_eq!(c.members.len(), 1);
        assert_eq!(c.members[0].name, "good");
        assert!(c.config.is_none());
        assert!(c.history.is_none());
        assert!(c.leader.is_none());
        assert!(c.sync.is_none());
        assert!(c.initialize.is_none());
    }

    #[test]
    fn decode_ignores_other_clusters() {
        let c = decode_cluster(&keys(), [entry("/service/pg2/leader", "x", 1)]);
        assert_eq!(c, Cluster::default());
    }

    #[test]
    fn empty_initialize_means_bootstrap_in_progress() {
        let c = decode_cluster(&keys(), [entry("/service/pg/initialize", "", 1)]);
        assert_eq!(c.initialize.as_deref(), Some(""));
    }

    #[test]
    fn json_is_compact() {
        let s = to_json(
            "k",
            &SyncState {
                leader: Some("a".into()),
                sync_standby: None,
                quorum: None,
            },
        )
        .unwrap();
        assert_eq!(s, r#"{"leader":"a","sync_standby":null}"#);
    }
}
