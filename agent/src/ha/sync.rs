//! Synchronous replication: which standbys the leader makes synchronous, and the order of the two
//! writes that keep "no acknowledged write is lost" true (Patroni's `synchronous_mode`).
//!
//! The leader keeps two things in step: the `synchronous_standby_names` GUC (which standbys a commit
//! waits for) and the DCS `sync` key (which standbys may be promoted). Adding a standby: the GUC first,
//! then the key once the standby has confirmed every WAL byte written before the GUC took effect (so a
//! promoted member never lacks an acknowledged commit). Removing: the key first, then the GUC.
//! With no eligible standby, `synchronous_mode_strict` sets the GUC to `*` (commits wait for any
//! standby); otherwise replication falls back to asynchronous and, the key listing nobody, no automatic
//! failover happens until a synchronous standby is back (reference/patroni.md section 7, last row).

use praetor_config::SyncMode;
use praetor_dcs::{Cluster, SyncState};

use super::{Action, HaConfig, Running};

/// A standby as the primary's `pg_stat_replication` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    /// Its `application_name` (the member name).
    pub name: String,
    /// `streaming`, `catchup`, ...
    pub state: String,
    /// `async`, `sync`, `quorum`, `potential`.
    pub sync_state: String,
    /// WAL position it confirmed flushed (bytes).
    pub flush_lsn: u64,
}

/// The members named in a `synchronous_standby_names` value we wrote (`FIRST 1 ("a","b")`,
/// `ANY 2 ("a","b","c")`, `*`, or empty). `None` for `*`.
pub fn guc_members(guc: &str) -> Option<Vec<String>> {
    let g = guc.trim();
    if g == "*" {
        return None;
    }
    let inner = match (g.find('('), g.rfind(')')) {
        (Some(a), Some(b)) if b > a => &g[a + 1..b],
        _ => g,
    };
    Some(
        inner
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// Renders the GUC for `members` in `mode` with `count` required confirmations.
pub fn render_guc(mode: SyncMode, count: u32, members: &[String], strict: bool) -> String {
    if members.is_empty() {
        return if strict { "*".into() } else { String::new() };
    }
    let list = members
        .iter()
        .map(|m| format!("\"{}\"", m.replace('"', "")))
        .collect::<Vec<_>>()
        .join(",");
    let n = (count.max(1) as usize).min(members.len());
    match mode {
        SyncMode::Quorum => format!("ANY {n} ({list})"),
        _ => format!("FIRST {n} ({list})"),
    }
}

/// The standbys eligible to be synchronous: streaming, known members, not tagged `nosync` or
/// `nostream`, within `maximum_lag_on_syncnode`; members already synchronous first (stability), then
/// by name.
fn candidates(view: &Cluster, r: &Running, cfg: &HaConfig, current: &[String]) -> Vec<String> {
    let max_lag = cfg.dynamic.maximum_lag_on_syncnode.filter(|l| *l > 0);
    let mut out: Vec<&Standby> = r
        .standbys
        .iter()
        .filter(|s| s.state == "streaming" && s.name != cfg.name)
        .filter(|s| {
            view.member(&s.name)
                .is_some_and(|m| !m.data.tags.nosync && !m.data.tags.nostream)
        })
        .filter(|s| max_lag.is_none_or(|l| r.wal_position.saturating_sub(s.flush_lsn) <= l as u64))
        .collect();
    out.sort_by_key(|s| (!current.contains(&s.name), s.name.clone()));
    out.into_iter().map(|s| s.name.clone()).collect()
}

/// What the leader must do this loop to move the GUC and the `sync` key towards the desired set.
/// `catchup_lsn` is the leader's WAL position when it last changed the GUC: a standby joins the key
/// only once it confirmed that far.
pub fn sync_actions(view: &Cluster, r: &Running, cfg: &HaConfig, catchup_lsn: u64) -> Vec<Action> {
    let me = cfg.name.as_str();
    let key: Vec<String> = view
        .sync
        .as_ref()
        .filter(|s| s.value.leader.as_deref() == Some(me))
        .map(|s| s.value.members())
        .unwrap_or_default();
    let key_exists_for_me = view
        .sync
        .as_ref()
        .is_some_and(|s| s.value.leader.as_deref() == Some(me));
    let write_key = |members: Vec<String>, quorum: Option<u32>| {
        Action::WriteSync(SyncState {
            leader: Some(me.to_string()),
            sync_standby: (!members.is_empty()).then(|| members.join(",")),
            quorum,
        })
    };
    let mode = cfg.dynamic.synchronous_mode;
    if mode == SyncMode::Off {
        let mut actions = vec![];
        if !key.is_empty() {
            actions.push(write_key(vec![], None));
        }
        if !r.sync_standby_names.trim().is_empty() {
            actions.push(Action::SetSyncStandbyNames(String::new()));
        }
        return actions;
    }
    let strict = cfg.dynamic.synchronous_mode_strict;
    let count = cfg.dynamic.synchronous_node_count.max(1);
    let mut desired = candidates(view, r, cfg, &key);
    if mode == SyncMode::On {
        desired.truncate(count as usize);
    }
    let quorum = (mode == SyncMode::Quorum).then_some(count.min(desired.len().max(1) as u32));
    // Removing: the key first.
    let kept: Vec<String> = key
        .iter()
        .filter(|k| desired.contains(k))
        .cloned()
        .collect();
    if kept.len() != key.len() || !key_exists_for_me {
        return vec![write_key(kept, quorum)];
    }
    let guc = render_guc(mode, count, &desired, strict);
    if r.sync_standby_names.trim() != guc {
        return vec![Action::SetSyncStandbyNames(guc)];
    }
    // Adding: once the GUC names them and they confirmed everything written before it took effect.
    let caught_up: Vec<String> = desired
        .iter()
        .filter(|d| !key.contains(d))
        .filter(|d| {
            r.standbys.iter().any(|s| {
                &s.name == *d
                    && matches!(s.sync_state.as_str(), "sync" | "quorum")
                    && s.flush_lsn >= catchup_lsn
            })
        })
        .cloned()
        .collect();
    if caught_up.is_empty() {
        return vec![];
    }
    let mut members = key;
    members.extend(caught_up);
    vec![write_key(members, quorum)]
}

/// Whether this member may be promoted automatically under synchronous replication: it is listed in
/// the `sync` key (the only members guaranteed to hold every acknowledged commit); in quorum mode
/// also enough listed members answered that the most advanced of them has every acknowledged commit
/// (with `ANY n` of `N`, at least `N - n + 1` listed members must be compared).
pub fn may_promote(view: &Cluster, cfg: &HaConfig, listed_peers_answering: usize) -> bool {
    if cfg.dynamic.synchronous_mode == SyncMode::Off {
        return true;
    }
    let Some(sync) = view.sync.as_ref() else {
        return false;
    };
    let listed = sync.value.members();
    if !listed.contains(&cfg.name) {
        return false;
    }
    match (cfg.dynamic.synchronous_mode, sync.value.quorum) {
        (SyncMode::Quorum, Some(n)) => {
            let needed = listed.len().saturating_sub(n as usize) + 1;
            listed_peers_answering + 1 >= needed
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guc_round_trip() {
        let m = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            render_guc(SyncMode::On, 1, &m, false),
            r#"FIRST 1 ("a","b")"#
        );
        assert_eq!(
            render_guc(SyncMode::Quorum, 2, &m, false),
            r#"ANY 2 ("a","b")"#
        );
        assert_eq!(render_guc(SyncMode::On, 1, &[], true), "*");
        assert_eq!(render_guc(SyncMode::On, 1, &[], false), "");
        assert_eq!(guc_members(r#"FIRST 1 ("a","b")"#), Some(m));
        assert_eq!(guc_members("*"), None);
        assert_eq!(guc_members(""), Some(vec![]));
    }
}
