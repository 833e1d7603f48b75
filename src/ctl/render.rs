//! What `praetor ctl` prints: patronictl's tables (prettytable layout: a `+ Cluster: name (sysid)`
//! title in the top border, numbers right-aligned, a rule between rows when a cell spans lines),
//! and the same data as tsv, json or yaml. Pure functions over the DCS view.

use clap::ValueEnum;
use praetor_dcs::summary::{summarize, MemberSummary};
use praetor_dcs::Cluster;
use serde_json::{json, Map, Value};

/// Output formats (patronictl's `-f`).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// A table.
    Pretty,
    /// Tab-separated values, with a header line.
    Tsv,
    /// JSON: a list of objects keyed by column.
    Json,
    /// YAML: the same as JSON.
    Yaml,
}

/// Column alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Left.
    Left,
    /// Right (numbers).
    Right,
}

/// A boxed table like prettytable's. `title` goes into the top border; a rule separates rows when
/// any cell has several lines.
pub fn table(
    title: Option<&str>,
    headers: &[&str],
    rows: &[Vec<String>],
    align: &[Align],
) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            for line in c.lines() {
                widths[i] = widths[i].max(line.chars().count());
            }
        }
    }
    let multiline = rows.iter().any(|r| r.iter().any(|c| c.contains('\n')));
    let rule = |title: Option<&str>| {
        let mut line = String::from("+");
        for w in &widths {
            line.push_str(&"-".repeat(w + 2));
            line.push('+');
        }
        if let Some(t) = title {
            let t = format!(" {t} ");
            let len = line.chars().count();
            if t.chars().count() + 2 < len {
                let rest: String = line.chars().skip(1 + t.chars().count()).collect();
                line = format!("+{t}{rest}");
            } else {
                line = format!("+{t}+");
            }
        }
        line + "\n"
    };
    let row = |cells: &[String]| {
        let lines: Vec<Vec<&str>> = cells.iter().map(|c| c.lines().collect()).collect();
        let height = lines.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut out = String::new();
        for l in 0..height {
            out.push('|');
            for (i, cell) in lines.iter().enumerate() {
                let text = cell.get(l).copied().unwrap_or("");
                let pad = " ".repeat(widths[i] - text.chars().count());
                match align.get(i).copied().unwrap_or(Align::Left) {
                    Align::Left => out.push_str(&format!(" {text}{pad} |")),
                    Align::Right => out.push_str(&format!(" {pad}{text} |")),
                }
            }
            out.push('\n');
        }
        out
    };
    let mut out = rule(title);
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let header_align: Vec<Align> = vec![Align::Left; headers.len()];
    out.push_str(&{
        // Headers are left-aligned whatever the column.
        let mut line = String::from("|");
        for (i, h) in header.iter().enumerate() {
            let pad = " ".repeat(widths[i] - h.chars().count());
            let _ = header_align[i];
            line.push_str(&format!(" {h}{pad} |"));
        }
        line + "\n"
    });
    out.push_str(&rule(None));
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&row(r));
        if multiline && i + 1 < rows.len() {
            out.push_str(&rule(None));
        }
    }
    out.push_str(&rule(None));
    out
}

/// Prints `rows` in `fmt`: a table, tsv, or a list of objects (cells as JSON values).
pub fn output(
    fmt: Format,
    title: Option<&str>,
    headers: &[&str],
    rows: &[Vec<Value>],
    align: &[Align],
) -> String {
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}: {}", scalar(v)))
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    };
    match fmt {
        Format::Pretty => {
            let cells: Vec<Vec<String>> =
                rows.iter().map(|r| r.iter().map(text).collect()).collect();
            table(title, headers, &cells, align)
        }
        Format::Tsv => {
            let mut out = headers.join("\t") + "\n";
            for r in rows {
                let cells: Vec<String> = r.iter().map(|c| text(c).replace('\n', ", ")).collect();
                out.push_str(&cells.join("\t"));
                out.push('\n');
            }
            out
        }
        Format::Json | Format::Yaml => {
            let list: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let mut m = Map::new();
                    for (h, v) in headers.iter().zip(r) {
                        if !v.is_null() {
                            m.insert(h.to_string(), v.clone());
                        }
                    }
                    Value::Object(m)
                })
                .collect();
            if fmt == Format::Json {
                serde_json::to_string(&list).unwrap_or_default() + "\n"
            } else {
                serde_yaml::to_string(&list).unwrap_or_default()
            }
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn host_column(m: &MemberSummary) -> String {
    match (&m.host, m.port) {
        (Some(h), Some(5432)) | (Some(h), None) => h.clone(),
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (None, _) => String::new(),
    }
}

fn lag_mb(m: &MemberSummary) -> Value {
    if m.role == "leader" || m.role == "standby_leader" {
        return Value::Null;
    }
    match m.lag {
        Some(l) => json!(((l as f64) / 1_048_576.0).round() as u64),
        None => json!("unknown"),
    }
}

/// The member's `scheduled_restart.schedule`, if any.
fn scheduled_restart(cluster: &Cluster, name: &str) -> Option<String> {
    cluster
        .member(name)?
        .data
        .extra
        .get("scheduled_restart")?
        .get("schedule")?
        .as_str()
        .map(str::to_string)
}

/// The title of the list and topology tables: `Cluster: name (sysid)`.
pub fn cluster_title(scope: &str, cluster: &Cluster) -> String {
    match cluster.initialize.as_deref() {
        Some(id) if !id.is_empty() => format!("Cluster: {scope} ({id})"),
        _ => format!("Cluster: {scope}"),
    }
}

/// `ctl list` (and `topology` with `tree`): patronictl's columns Member, Host, Role, State, TL,
/// Lag in MB, then Pending restart, Scheduled restart and Tags when any member has one (or
/// `extended`); tsv/json/yaml also carry the Cluster column. Maintenance mode and a scheduled
/// switchover are reported under the table.
pub fn render_list(
    scope: &str,
    cluster: &Cluster,
    fmt: Format,
    extended: bool,
    tree: bool,
) -> String {
    let mut members = summarize(cluster);
    let mut names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    if tree {
        let order = topology_order(cluster, &members);
        members = order.iter().map(|(i, _)| members[*i].clone()).collect();
        names = order
            .iter()
            .map(|(i, depth)| match depth {
                0 => members_name(&summarize(cluster), *i),
                d => format!(
                    "{}+ {}",
                    "  ".repeat(d - 1),
                    members_name(&summarize(cluster), *i)
                ),
            })
            .collect();
    }
    let any_pending = members.iter().any(|m| m.pending_restart);
    let any_scheduled = members
        .iter()
        .any(|m| scheduled_restart(cluster, &m.name).is_some());
    let any_tags = members.iter().any(|m| tags_json(m) != json!({}));
    let mut headers = vec![
        "Cluster",
        "Member",
        "Host",
        "Role",
        "State",
        "TL",
        "Lag in MB",
    ];
    let mut align = vec![
        Align::Left,
        Align::Left,
        Align::Left,
        Align::Left,
        Align::Left,
        Align::Right,
        Align::Right,
    ];
    let show_pending = extended || any_pending;
    let reasons: Vec<String> = members
        .iter()
        .map(|m| pending_restart_reason(cluster, &m.name, fmt == Format::Pretty))
        .collect();
    let show_reason = extended || reasons.iter().any(|r| !r.is_empty());
    let show_scheduled = extended || any_scheduled;
    let show_tags = extended || any_tags;
    for (show, h) in [
        (show_pending, "Pending restart"),
        (show_reason, "Pending restart reason"),
        (show_scheduled, "Scheduled restart"),
        (show_tags, "Tags"),
        (extended, "PG version"),
    ] {
        if show {
            headers.push(h);
            align.push(Align::Left);
        }
    }
    let rows: Vec<Vec<Value>> = members
        .iter()
        .zip(&names)
        .zip(&reasons)
        .map(|((m, name), reason)| {
            let mut r = vec![
                json!(scope),
                json!(name),
                json!(host_column(m)),
                json!(m.display_role()),
                json!(m.state),
                m.timeline.map(|t| json!(t)).unwrap_or(Value::Null),
                lag_mb(m),
            ];
            if show_pending {
                r.push(if m.pending_restart {
                    json!("*")
                } else {
                    Value::Null
                });
            }
            if show_reason {
                r.push(if reason.is_empty() {
                    Value::Null
                } else {
                    json!(reason)
                });
            }
            if show_scheduled {
                r.push(
                    scheduled_restart(cluster, &m.name)
                        .map(Value::String)
                        .unwrap_or(Value::Null),
                );
            }
            if show_tags {
                let t = tags_json(m);
                r.push(if t == json!({}) { Value::Null } else { t });
            }
            if extended {
                r.push(pg_version(cluster, &m.name));
            }
            r
        })
        .collect();
    let mut out = if fmt == Format::Pretty {
        let rows: Vec<Vec<Value>> = rows.into_iter().map(|r| r[1..].to_vec()).collect();
        output(
            fmt,
            Some(&cluster_title(scope, cluster)),
            &headers[1..],
            &rows,
            &align[1..],
        )
    } else {
        output(fmt, None, &headers, &rows, &align)
    };
    if fmt == Format::Pretty {
        out.push_str(&service_info(cluster));
    }
    out
}

/// The `PG version` column of `list -e`: the running PostgreSQL's version from the member key
/// (`15.18`), empty when the member's PostgreSQL is not running.
fn pg_version(cluster: &Cluster, name: &str) -> Value {
    cluster
        .members
        .iter()
        .find(|m| m.name == name)
        .and_then(|m| m.data.server_version)
        .map(|v| json!(super::members::format_pg_version(i64::from(v))))
        .unwrap_or(Value::Null)
}

/// Patroni 4's "Pending restart reason" cell: `param: old->new` for each parameter waiting for a
/// restart (from the member key's `pending_restart_reason`), joined with `, ` (one line per row);
/// in the pretty table an entry longer than 50 characters is shown as `param: [hidden - too long]`
/// as patronictl does.
fn pending_restart_reason(cluster: &Cluster, member: &str, hide_long: bool) -> String {
    let Some(Value::Object(reasons)) = cluster
        .members
        .iter()
        .find(|m| m.name == member)
        .and_then(|m| m.data.pending_restart_reason.clone())
    else {
        return String::new();
    };
    let text = |v: &Value, k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    reasons
        .iter()
        .map(|(param, v)| {
            let full = format!(
                "{param}: {}->{}",
                text(v, "old_value"),
                text(v, "new_value")
            );
            if hide_long && full.chars().count() > 50 {
                format!("{param}: [hidden - too long]")
            } else {
                full
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn members_name(members: &[MemberSummary], i: usize) -> String {
    members[i].name.clone()
}

fn tags_json(m: &MemberSummary) -> Value {
    serde_json::to_value(&m.tags).unwrap_or_else(|_| json!({}))
}

/// Lines under the table: maintenance mode, a scheduled switchover.
pub fn service_info(cluster: &Cluster) -> String {
    let mut out = String::new();
    let paused = cluster
        .config
        .as_ref()
        .is_some_and(|c| c.value["pause"].as_bool() == Some(true));
    if paused {
        out.push_str(" Maintenance mode: on\n");
    }
    if let Some(f) = cluster.failover_request() {
        if let Some(at) = &f.value.scheduled_at {
            out.push_str(&format!(" Switchover scheduled at: {at}\n"));
            if let Some(l) = &f.value.leader {
                out.push_str(&format!("                    from: {l}\n"));
            }
            if let Some(m) = &f.value.member {
                out.push_str(&format!("                      to: {m}\n"));
            }
        }
    }
    out
}

/// Members in tree order with their depth: the leader, then who streams from it (the
/// `replicatefrom` tag names an upstream other than the leader), depth first, names sorted.
fn topology_order(cluster: &Cluster, members: &[MemberSummary]) -> Vec<(usize, usize)> {
    let leader = cluster.leader.as_ref().map(|l| l.name.clone());
    let upstream = |m: &MemberSummary| -> Option<String> {
        if Some(&m.name) == leader.as_ref() {
            return None;
        }
        match &m.tags.replicatefrom {
            Some(r) if members.iter().any(|o| &o.name == r) && *r != m.name => Some(r.clone()),
            _ => leader.clone(),
        }
    };
    let mut out = Vec::new();
    let mut seen = vec![false; members.len()];
    fn visit(
        name: Option<&str>,
        depth: usize,
        members: &[MemberSummary],
        upstream: &dyn Fn(&MemberSummary) -> Option<String>,
        seen: &mut [bool],
        out: &mut Vec<(usize, usize)>,
    ) {
        for (i, m) in members.iter().enumerate() {
            if seen[i] || upstream(m).as_deref() != name {
                continue;
            }
            seen[i] = true;
            out.push((i, depth));
            visit(Some(&m.name), depth + 1, members, upstream, seen, out);
        }
    }
    visit(None, 0, members, &upstream, &mut seen, &mut out);
    // Members in a replicatefrom cycle or under a missing upstream: at the top level.
    for (i, s) in seen.iter().enumerate() {
        if !s {
            out.push((i, 0));
        }
    }
    out
}

/// `ctl history`: TL | LSN | Reason | Timestamp | New Leader.
pub fn render_history(cluster: &Cluster, fmt: Format) -> String {
    let rows: Vec<Vec<Value>> = cluster
        .history
        .as_ref()
        .map(|h| h.value.clone())
        .unwrap_or_default()
        .iter()
        .map(|e| {
            vec![
                json!(e.timeline),
                json!(e.lsn),
                json!(e.reason),
                e.timestamp
                    .clone()
                    .map(Value::String)
                    .unwrap_or(Value::Null),
                e.new_leader
                    .clone()
                    .map(Value::String)
                    .unwrap_or(Value::Null),
            ]
        })
        .collect();
    output(
        fmt,
        None,
        &["TL", "LSN", "Reason", "Timestamp", "New Leader"],
        &rows,
        &[
            Align::Right,
            Align::Right,
            Align::Left,
            Align::Left,
            Align::Left,
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use praetor_dcs::{
        Failover, HistoryEntry, Leader, Member, MemberData, MemberState, Role, Status, SyncState,
        Tags, Versioned,
    };

    fn member(name: &str, role: Role, port: u16, xlog: u64, tags: Tags) -> Member {
        Member {
            name: name.into(),
            data: MemberData {
                conn_url: Some(format!("postgres://172.1.1.{port}:5432/postgres")),
                state: MemberState::Running,
                role,
                xlog_location: Some(xlog),
                timeline: Some(10),
                replication_state: (role == Role::Replica).then(|| "streaming".to_string()),
                tags,
                ..Default::default()
            },
            version: 1,
        }
    }

    fn seed_cluster() -> Cluster {
        Cluster {
            leader: Some(Leader {
                name: "pg01".into(),
                version: 1,
            }),
            members: vec![
                member("pg01", Role::Primary, 197, 207469224, Tags::default()),
                member(
                    "pg02",
                    Role::Replica,
                    198,
                    207469224,
                    Tags {
                        nofailover: true,
                        noloadbalance: true,
                        nosync: true,
                        ..Default::default()
                    },
                ),
                member("pg03", Role::Replica, 196, 207469224, Tags::default()),
            ],
            sync: Some(Versioned {
                value: SyncState {
                    leader: Some("pg01".into()),
                    sync_standby: Some("pg03".into()),
                    quorum: None,
                },
                version: 1,
            }),
            status: Some(Status {
                optime: 207469224,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Seed 003's `patronictl list` output, byte for byte (modulo its trailing spaces).
    #[test]
    fn list_matches_seed_003() {
        let out = render_list("pgsql", &seed_cluster(), Format::Pretty, false, false);
        let expected = "\
+ Cluster: pgsql ------+--------------+-----------+----+-----------+---------------------+
| Member | Host        | Role         | State     | TL | Lag in MB | Tags                |
+--------+-------------+--------------+-----------+----+-----------+---------------------+
| pg01   | 172.1.1.197 | Leader       | running   | 10 |           |                     |
+--------+-------------+--------------+-----------+----+-----------+---------------------+
| pg02   | 172.1.1.198 | Replica      | streaming | 10 |         0 | nofailover: true    |
|        |             |              |           |    |           | noloadbalance: true |
|        |             |              |           |    |           | nosync: true        |
+--------+-------------+--------------+-----------+----+-----------+---------------------+
| pg03   | 172.1.1.196 | Sync Standby | streaming | 10 |         0 |                     |
+--------+-------------+--------------+-----------+----+-----------+---------------------+
";
        assert_eq!(out, expected, "\n{out}");
    }

    #[test]
    fn list_extended_pending_and_formats() {
        let mut c = seed_cluster();
        c.members[0].data.pending_restart = true;
        c.members[1].data.tags = Tags::default();
        c.initialize = Some("7260332825476436099".into());
        c.config = Some(Versioned {
            value: json!({"pause": true}),
            version: 1,
        });
        c.failover = Some(Versioned {
            value: Failover {
                leader: Some("pg01".into()),
                member: Some("pg03".into()),
                scheduled_at: Some("2030-01-01T00:00:00+00:00".into()),
            },
            version: 1,
        });
        let out = render_list("pgsql", &c, Format::Pretty, false, false);
        assert!(
            out.starts_with("+ Cluster: pgsql (7260332825476436099) "),
            "{out}"
        );
        assert!(out.contains("| Pending restart |"), "{out}");
        assert!(out.contains("| *               |"), "{out}");
        assert!(!out.contains("Tags"), "{out}");
        assert!(out.contains(" Maintenance mode: on\n"), "{out}");
        assert!(
            out.contains(" Switchover scheduled at: 2030-01-01T00:00:00+00:00\n"),
            "{out}"
        );
        let ext = render_list("pgsql", &c, Format::Pretty, true, false);
        assert!(ext.contains("| Scheduled restart | Tags |"), "{ext}");
        c.members[0].data.server_version = Some(180006);
        let ext: Value =
            serde_json::from_str(&render_list("pgsql", &c, Format::Json, true, false)).unwrap();
        assert_eq!(ext[0]["PG version"], "18.6", "{ext}");
        assert_eq!(ext[1]["PG version"], Value::Null, "{ext}");
        let tsv = render_list("pgsql", &c, Format::Tsv, false, false);
        assert_eq!(
            tsv.lines().next(),
            Some("Cluster\tMember\tHost\tRole\tState\tTL\tLag in MB\tPending restart")
        );
        assert_eq!(
            tsv.lines().nth(2),
            Some("pgsql\tpg02\t172.1.1.198\tReplica\tstreaming\t10\t0\t")
        );
        c.members[0].data.pending_restart_reason = Some(json!({
            "shared_buffers": {"old_value": "32MB", "new_value": "48MB"},
            "shared_preload_libraries": {"old_value": "", "new_value": "pg_stat_statements,auto_explain,pg_cron"}
        }));
        let out = render_list("pgsql", &c, Format::Pretty, false, false);
        assert!(out.contains("| Pending restart reason "), "{out}");
        assert!(
            out.contains(
                "shared_buffers: 32MB->48MB, shared_preload_libraries: [hidden - too long]"
            ),
            "{out}"
        );
        c.members[0].data.pending_restart_reason = None;
        let json: Value =
            serde_json::from_str(&render_list("pgsql", &c, Format::Json, false, false)).unwrap();
        assert_eq!(json[0]["Role"], "Leader");
        assert_eq!(json[0]["Pending restart"], "*");
        assert!(json[0].get("Lag in MB").is_none());
        assert_eq!(json[2]["Role"], "Sync Standby");
        assert_eq!(json[2]["Lag in MB"], 0);
        let yaml: Value =
            serde_yaml::from_str(&render_list("pgsql", &c, Format::Yaml, false, false)).unwrap();
        assert_eq!(yaml, json);
    }

    #[test]
    fn topology_is_a_tree_of_replicatefrom() {
        let mut c = seed_cluster();
        c.members[1].data.tags = Tags {
            replicatefrom: Some("pg03".into()),
            ..Default::default()
        };
        let out = render_list("pgsql", &c, Format::Pretty, false, true);
        let names: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| Member"))
            .filter_map(|l| l.split('|').nth(1))
            .map(str::trim_end)
            .filter(|n| !n.trim().is_empty())
            .collect();
        assert_eq!(names, vec![" pg01", " + pg03", "   + pg02"], "\n{out}");
    }

    #[test]
    fn history_table() {
        let c = Cluster {
            history: Some(Versioned {
                value: vec![
                    HistoryEntry {
                        timeline: 1,
                        lsn: 50332624,
                        reason: "no recovery target specified".into(),
                        timestamp: Some("2023-07-27T14:24:04.400493+08:00".into()),
                        new_leader: Some("pg01".into()),
                    },
                    HistoryEntry {
                        timeline: 2,
                        lsn: 117441136,
                        reason: "no recovery target specified".into(),
                        timestamp: None,
                        new_leader: None,
                    },
                ],
                version: 1,
            }),
            ..Default::default()
        };
        let out = render_history(&c, Format::Pretty);
        let expected = "\
+----+-----------+------------------------------+----------------------------------+------------+
| TL | LSN       | Reason                       | Timestamp                        | New Leader |
+----+-----------+------------------------------+----------------------------------+------------+
|  1 |  50332624 | no recovery target specified | 2023-07-27T14:24:04.400493+08:00 | pg01       |
|  2 | 117441136 | no recovery target specified |                                  |            |
+----+-----------+------------------------------+----------------------------------+------------+
";
        assert_eq!(out, expected, "\n{out}");
        let j: Value = serde_json::from_str(&render_history(&c, Format::Json)).unwrap();
        assert_eq!(j[0]["LSN"], 50332624);
        assert!(j[1].get("New Leader").is_none());
    }
}
