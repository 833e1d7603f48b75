//! Guards on operator commands from the REST API: pure rules over the cluster as freshly read from
//! the DCS and PostgreSQL as observed just before acting. The runner calls them at the last moment
//! and only then executes; a refusal is returned to the caller with its reason (HTTP 412).

use super::{Cluster, Postgres};

/// May this member remove its data directory and clone it again (`POST /reinitialize`)?
///
/// Inputs, all observed just before acting (a view one loop old is not enough):
/// - `view`: the cluster as read from the DCS now; `None` when it could not be read;
/// - `me`: this member's name;
/// - `holds_lock`: the runner believes it holds the leader lock (it renewed or has just taken it,
///   or its last view showed it), whatever `view` says;
/// - `postgres`: the local PostgreSQL;
/// - `standby_signal`: `standby.signal` exists in the data directory (PostgreSQL runs, or is
///   starting, as a standby: a primary has none, promotion removes it);
/// - `force`: the request's `force` (stop a running PostgreSQL first).
///
/// Refused, in this order: the DCS cannot be read; the cluster has no leader (nobody to clone from;
/// Patroni's `Ha.reinitialize`: "Cluster has no leader, can not reinitialize"); this member holds
/// the lock ("I am the leader, can not reinitialize"); the local PostgreSQL runs as primary whatever
/// the DCS says, or is starting without `standby.signal` so that it may be one (never delete a
/// primary's data); PostgreSQL runs and `force` is not set.
pub fn reinitialize(
    view: Option<&Cluster>,
    me: &str,
    holds_lock: bool,
    postgres: &Postgres,
    standby_signal: bool,
    force: bool,
) -> Result<(), String> {
    let Some(view) = view else {
        return Err("DCS is not accessible, can not reinitialize".into());
    };
    let Some(leader) = &view.leader else {
        return Err("Cluster has no leader, can not reinitialize".into());
    };
    if holds_lock || leader.name == me {
        return Err("I am the leader, can not reinitialize".into());
    }
    match postgres {
        Postgres::Running(r) if r.is_primary => {
            return Err("PostgreSQL is running as primary, can not reinitialize".into())
        }
        Postgres::Starting if !standby_signal => {
            return Err(
                "PostgreSQL is starting without standby.signal and may be a primary, can not reinitialize"
                    .into(),
            )
        }
        Postgres::Stopped { .. } => return Ok(()),
        Postgres::Running(_) | Postgres::Starting => {}
    }
    if !force {
        return Err("postgres is running; use force to stop it first".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use praetor_dcs::Leader;

    use super::super::Running;
    use super::*;

    type Row<'a> = (
        &'a str,
        Option<Option<&'a str>>,
        bool,
        &'a Postgres,
        bool,
        bool,
        Result<(), &'a str>,
    );

    fn view(leader: Option<&str>) -> Cluster {
        Cluster {
            leader: leader.map(|l| Leader {
                name: l.into(),
                version: 7,
            }),
            ..Default::default()
        }
    }

    fn running(is_primary: bool) -> Postgres {
        Postgres::Running(Running {
            is_primary,
            timeline: 1,
            wal_position: 0,
            upstream: None,
            standbys: vec![],
            sync_standby_names: String::new(),
            slots: vec![],
        })
    }

    #[test]
    fn reinitialize_never_removes_a_leaders_or_a_primarys_data() {
        let stopped = Postgres::Stopped { control: None };
        let replica = running(false);
        let primary = running(true);
        let no_leader = "Cluster has no leader, can not reinitialize";
        let i_lead = "I am the leader, can not reinitialize";
        let primary_runs = "PostgreSQL is running as primary, can not reinitialize";
        let starting = "PostgreSQL is starting without standby.signal and may be a primary, can not reinitialize";
        let not_forced = "postgres is running; use force to stop it first";
        // (case, leader in the fresh view (None: DCS unreadable), holds_lock, postgres,
        //  standby.signal, force, expected)
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("healthy replica, forced", Some(Some("pg2")), false, &replica, true, true, Ok(())),
            ("stopped replica", Some(Some("pg2")), false, &stopped, false, false, Ok(())),
            ("stopped former primary, another leader", Some(Some("pg2")), false, &stopped, false, false, Ok(())),
            ("replica starting with standby.signal", Some(Some("pg2")), false, &Postgres::Starting, true, true, Ok(())),
            ("running replica without force", Some(Some("pg2")), false, &replica, true, false, Err(not_forced)),
            ("DCS unreadable", None, false, &replica, true, true, Err("DCS is not accessible, can not reinitialize")),
            ("no leader: nothing to clone from", Some(None), false, &replica, true, true, Err(no_leader)),
            ("no leader, stopped", Some(None), false, &stopped, false, true, Err(no_leader)),
            ("I hold the lock", Some(Some("pg1")), true, &primary, false, true, Err(i_lead)),
            ("the key names me, PostgreSQL stopped", Some(Some("pg1")), false, &stopped, false, true, Err(i_lead)),
            ("just took the lock, view not yet showing it", Some(Some("pg2")), true, &replica, true, true, Err(i_lead)),
            ("local primary whatever the DCS says", Some(Some("pg2")), false, &primary, false, true, Err(primary_runs)),
            ("local primary with a stray standby.signal", Some(Some("pg2")), false, &primary, true, true, Err(primary_runs)),
            ("starting, maybe a primary", Some(Some("pg2")), false, &Postgres::Starting, false, true, Err(starting)),
        ];
        for (case, leader, holds, pg, signal, force, want) in rows {
            let v = leader.map(view);
            let got = reinitialize(v.as_ref(), "pg1", holds, pg, signal, force);
            assert_eq!(got, want.map_err(String::from), "{case}");
        }
    }
}
