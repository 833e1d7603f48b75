//! `praetor ctl`: the operator CLI, like patronictl.
//!
//! It reads the cluster from the DCS named by `-c config.yml` (the agent's or the proxy's file),
//! `--dcs-url etcd3://host:port`, or `$PRAETOR_CTL_CONFIG_FILE` / `$PATRONICTL_CONFIG_FILE`, and
//! writes only the `failover` key (switchover), as patronictl does; the agents carry the request out.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use praetor_config::DcsEndpoints;
use praetor_dcs::summary::{summarize, MemberSummary};
use praetor_dcs::{Cluster, Dcs, DcsIdentity, Expect, Failover};
use serde_json::json;

use crate::{config_err, Failure};

/// Arguments of `praetor ctl`.
#[derive(Args)]
pub struct CtlArgs {
    /// Configuration file naming the DCS and the cluster (the agent's or the proxy's YAML).
    #[arg(
        short = 'c',
        long = "config-file",
        alias = "config",
        value_name = "FILE",
        global = true
    )]
    config: Option<PathBuf>,
    /// The DCS, when no configuration file is given: etcd3://host:port (or etcd://host:port).
    #[arg(long = "dcs-url", alias = "dcs", value_name = "URL", global = true)]
    dcs_url: Option<String>,
    #[command(subcommand)]
    command: CtlCommand,
}

/// Output formats of `list` (patronictl's `-f`).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// A table.
    Pretty,
    /// Tab-separated values.
    Tsv,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// List the members of the cluster: Member, Host, Role, State, TL, Lag in MB, Tags.
    List {
        /// Cluster name (default: the configuration's scope).
        cluster_name: Option<String>,
        /// Output format.
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
        /// Show every column (Pending restart) even when empty.
        #[arg(short = 'e', long = "extended")]
        extended: bool,
    },
    /// Switch the leader role over to another member (planned, nothing lost).
    ///
    /// Writes the DCS `failover` key; the leader stops cleanly once the candidate has received all
    /// WAL, the candidate promotes. Refused, with the reason, when the leader or candidate given is
    /// wrong or the candidate cannot be promoted.
    Switchover {
        /// Cluster name (default: the configuration's scope).
        cluster_name: Option<String>,
        /// The current leader (checked; patronictl's --leader / --primary).
        #[arg(long, alias = "primary", alias = "master")]
        leader: Option<String>,
        /// The member to promote (default: the healthiest replica).
        #[arg(long)]
        candidate: Option<String>,
        /// When to switch over, ISO 8601 (`2026-11-24T10:00:00+00:00`); default now.
        #[arg(long)]
        scheduled: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the new leader before giving up.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Print Praetor's version.
    Version,
}

/// Runs a ctl command.
pub async fn run(args: CtlArgs) -> Result<(), Failure> {
    if matches!(args.command, CtlCommand::Version) {
        println!("praetor ctl version {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let (config_scope, namespace, endpoints) = dcs_target(&args)?;
    let cluster_arg = match &args.command {
        CtlCommand::List { cluster_name, .. } | CtlCommand::Switchover { cluster_name, .. } => {
            cluster_name.clone()
        }
        CtlCommand::Version => None,
    };
    let scope = cluster_arg.or(config_scope).ok_or_else(|| {
        config_err(
            "name the cluster: praetor ctl --dcs-url URL <command> CLUSTER_NAME, or use -c FILE",
        )
    })?;
    let identity = DcsIdentity {
        namespace,
        scope: scope.clone(),
        member: None,
        ttl_secs: 30,
        request_timeout_secs: 5,
    };
    let dcs = praetor_dcs::connect(&endpoints, identity)
        .await
        .context("cannot open the DCS")?;
    match args.command {
        CtlCommand::List {
            format, extended, ..
        } => {
            let cluster = dcs.load().await.context("cannot read the cluster")?;
            print!("{}", render_list(&scope, &cluster, format, extended));
            Ok(())
        }
        CtlCommand::Switchover {
            leader,
            candidate,
            scheduled,
            force,
            timeout,
            ..
        } => switchover(
            dcs,
            &scope,
            leader,
            candidate,
            scheduled,
            force,
            Duration::from_secs(timeout),
        )
        .await
        .map_err(Failure::Other),
        CtlCommand::Version => unreachable!("handled above"),
    }
}

/// Finds the DCS: `-c`, `--dcs-url`, then `$PRAETOR_CTL_CONFIG_FILE` / `$PATRONICTL_CONFIG_FILE`.
fn dcs_target(args: &CtlArgs) -> Result<(Option<String>, String, DcsEndpoints), Failure> {
    if let Some(url) = &args.dcs_url {
        return Ok((None, "/service/".into(), parse_dcs_url(url)?));
    }
    let path = args
        .config
        .clone()
        .or_else(|| std::env::var_os("PRAETOR_CTL_CONFIG_FILE").map(PathBuf::from))
        .or_else(|| std::env::var_os("PATRONICTL_CONFIG_FILE").map(PathBuf::from))
        .ok_or_else(|| {
            config_err(
                "give the DCS: -c FILE, --dcs-url etcd3://host:port, or PRAETOR_CTL_CONFIG_FILE",
            )
        })?;
    let loaded = crate::load_config(&path)?;
    let endpoints = loaded
        .config
        .dcs_endpoints()
        .map_err(|e| config_err(format!("{}: {e}", path.display())))?;
    Ok((
        loaded.config.scope.clone(),
        loaded.config.namespace(),
        endpoints,
    ))
}

/// Parses `etcd3://host:port[,host:port]`, `etcd://...` or `zk://host:port`.
fn parse_dcs_url(url: &str) -> Result<DcsEndpoints, Failure> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| config_err(format!("--dcs-url {url}: expected etcd3://host:port")))?;
    let hosts: Vec<String> = rest
        .split(',')
        .map(|h| h.trim().trim_end_matches('/').to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(config_err(format!("--dcs-url {url}: no host")));
    }
    match scheme {
        "etcd3" | "etcd" | "http" => Ok(DcsEndpoints::Etcd(
            hosts.into_iter().map(|h| format!("http://{h}")).collect(),
        )),
        "https" => Ok(DcsEndpoints::Etcd(
            hosts.into_iter().map(|h| format!("https://{h}")).collect(),
        )),
        "zk" | "zookeeper" => Ok(DcsEndpoints::ZooKeeper(hosts)),
        other => Err(config_err(format!(
            "--dcs-url {url}: unknown scheme {other:?} (etcd3, etcd, zk)"
        ))),
    }
}

fn host_column(m: &MemberSummary) -> String {
    match (&m.host, m.port) {
        (Some(h), Some(5432)) | (Some(h), None) => h.clone(),
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (None, _) => String::new(),
    }
}

fn lag_mb(m: &MemberSummary) -> String {
    if m.role == "leader" || m.role == "standby_leader" {
        return String::new();
    }
    match m.lag {
        Some(l) => ((l as f64) / 1_048_576.0).round().to_string(),
        None => "unknown".to_string(),
    }
}

fn tags_text(m: &MemberSummary) -> String {
    match serde_json::to_value(&m.tags) {
        Ok(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

/// Renders `ctl list` in `format`. The pretty table is patronictl's: a `+ Cluster: name (sysid)`
/// header, then Member | Host | Role | State | TL | Lag in MB [| Pending restart] [| Tags].
pub fn render_list(scope: &str, cluster: &Cluster, format: Format, extended: bool) -> String {
    let members = summarize(cluster);
    let any_pending = members.iter().any(|m| m.pending_restart);
    let any_tags = members.iter().any(|m| !tags_text(m).is_empty());
    let mut headers = vec!["Member", "Host", "Role", "State", "TL", "Lag in MB"];
    if any_pending || extended {
        headers.push("Pending restart");
    }
    if any_tags || extended {
        headers.push("Tags");
    }
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let mut r = vec![
                m.name.clone(),
                host_column(m),
                m.display_role().to_string(),
                m.state.clone(),
                m.timeline.map(|t| t.to_string()).unwrap_or_default(),
                lag_mb(m),
            ];
            if any_pending || extended {
                r.push(if m.pending_restart {
                    "*".into()
                } else {
                    String::new()
                });
            }
            if any_tags || extended {
                r.push(tags_text(m));
            }
            r
        })
        .collect();
    match format {
        Format::Pretty => {
            let title = match cluster.initialize.as_deref() {
                Some(id) if !id.is_empty() => format!("Cluster: {scope} ({id})"),
                _ => format!("Cluster: {scope}"),
            };
            render_table(&title, &headers, &rows)
        }
        Format::Tsv => {
            let mut out = String::new();
            let mut h = vec!["Cluster"];
            h.extend(&headers);
            out.push_str(&h.join("\t"));
            out.push('\n');
            for r in &rows {
                out.push_str(scope);
                out.push('\t');
                out.push_str(&r.join("\t"));
                out.push('\n');
            }
            out
        }
        Format::Json | Format::Yaml => {
            let list: Vec<serde_json::Value> = members
                .iter()
                .map(|m| {
                    let mut v = json!({
                        "Cluster": scope,
                        "Member": m.name,
                        "Host": host_column(m),
                        "Role": m.display_role(),
                        "State": m.state,
                        "TL": m.timeline,
                    });
                    if m.role != "leader" {
                        v["Lag in MB"] = match m.lag {
                            Some(l) => json!(((l as f64) / 1_048_576.0).round() as u64),
                            None => json!("unknown"),
                        };
                    }
                    if m.pending_restart {
                        v["Pending restart"] = json!("*");
                    }
                    if !tags_text(m).is_empty() {
                        v["Tags"] = json!(m.tags);
                    }
                    v
                })
                .collect();
            if format == Format::Json {
                serde_json::to_string(&list).unwrap_or_default() + "\n"
            } else {
                serde_yaml::to_string(&list).unwrap_or_default()
            }
        }
    }
}

/// A boxed table like prettytable's (what patronictl prints).
fn render_table(title: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let sep = |title: Option<&str>| {
        let mut line = String::from("+");
        for w in &widths {
            line.push_str(&"-".repeat(w + 2));
            line.push('+');
        }
        if let Some(t) = title {
            let t = format!(" {t} ");
            if t.chars().count() + 2 < line.chars().count() {
                line.replace_range(1..1 + t.len(), &t);
            } else {
                line = format!("+{t}+");
            }
        }
        line + "\n"
    };
    let row = |cells: Vec<&str>| {
        let mut line = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            line.push_str(&format!(" {c}{} |", " ".repeat(pad)));
        }
        line + "\n"
    };
    let mut out = sep(Some(title));
    out.push_str(&row(headers.to_vec()));
    out.push_str(&sep(None));
    for r in rows {
        out.push_str(&row(r.iter().map(String::as_str).collect()));
    }
    out.push_str(&sep(None));
    out
}

fn prompt(question: &str, default: Option<&str>) -> anyhow::Result<String> {
    match default {
        Some(d) => print!("{question} [{d}]: "),
        None => print!("{question}: "),
    }
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let answer = line.trim().to_string();
    Ok(if answer.is_empty() {
        default.unwrap_or("").to_string()
    } else {
        answer
    })
}

async fn switchover(
    dcs: Arc<dyn Dcs>,
    scope: &str,
    leader_arg: Option<String>,
    candidate_arg: Option<String>,
    scheduled: Option<String>,
    force: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let cluster = dcs.load().await.context("cannot read the cluster")?;
    let leader = cluster
        .leader
        .as_ref()
        .map(|l| l.name.clone())
        .ok_or_else(|| {
            anyhow!("cluster {scope} has no leader: a switchover needs one (use failover)")
        })?;
    let leader_given = match leader_arg {
        Some(l) => l,
        None if force => leader.clone(),
        None => prompt("Primary", Some(&leader))?,
    };
    if leader_given != leader {
        bail!(
            "Member {leader_given} is not the leader of cluster {scope} (the leader is {leader})"
        );
    }
    let others: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| m.name != leader)
        .map(|m| m.name.clone())
        .collect();
    let candidate = match candidate_arg {
        Some(c) => Some(c),
        None if force => None,
        None => {
            let c = prompt(&format!("Candidate {others:?}"), Some(""))?;
            (!c.is_empty()).then_some(c)
        }
    };
    if let Some(c) = &candidate {
        if *c == leader {
            bail!("Member {c} is already the leader of cluster {scope}");
        }
        let m = cluster.member(c).ok_or_else(|| {
            anyhow!(
                "Member {c} does not exist in cluster {scope} (members: {})",
                others.join(", ")
            )
        })?;
        if m.data.tags.nofailover || m.data.tags.failover_priority == Some(0) {
            bail!(
                "Member {c} is tagged nofailover (or failover_priority 0) and cannot be promoted"
            );
        }
        if m.data.state != praetor_dcs::MemberState::Running {
            bail!(
                "Member {c} is not running (state: {}): it cannot be promoted",
                m.data.state
            );
        }
    } else if !cluster.members.iter().any(|m| {
        m.name != leader
            && !m.data.tags.nofailover
            && m.data.state == praetor_dcs::MemberState::Running
    }) {
        bail!("no running member of cluster {scope} can be promoted");
    }
    let scheduled_at = match scheduled.as_deref() {
        None | Some("now") => None,
        Some(s) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    anyhow!("--scheduled {s:?} is not an ISO 8601 time with offset: {e}")
                })?;
            if t <= time::OffsetDateTime::now_utc() {
                bail!("Can't schedule switchover in the past ({s})");
            }
            Some(s.to_string())
        }
    };
    if !force {
        let target = candidate.as_deref().unwrap_or("the healthiest replica");
        let answer = prompt(
            &format!("Are you sure you want to switchover cluster {scope}, demoting current leader {leader} in favour of {target}? [y/N]"),
            Some("N"),
        )?;
        if !answer.eq_ignore_ascii_case("y") {
            bail!("Aborting switchover");
        }
    }
    let request = Failover {
        leader: Some(leader.clone()),
        member: candidate.clone(),
        scheduled_at: scheduled_at.clone(),
    };
    let expect = match &cluster.failover {
        Some(f) if f.value.is_empty() => Expect::Version(f.version),
        Some(f) => bail!(
            "a switchover is already pending ({}): remove it first",
            serde_json::to_string(&f.value).unwrap_or_default()
        ),
        None => Expect::Absent,
    };
    dcs.set_failover(&request, expect)
        .await
        .context("cannot write the failover key")?;
    if let Some(at) = scheduled_at {
        println!("Switchover scheduled at {at}");
        return Ok(());
    }
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = match dcs.load().await {
            Ok(c) => c,
            Err(_) if started.elapsed() < timeout => continue,
            Err(e) => return Err(e.into()),
        };
        let new_leader = c.leader.as_ref().map(|l| l.name.clone());
        let promoted = match (&new_leader, &candidate) {
            (Some(n), Some(cand)) => n == cand,
            (Some(n), None) => *n != leader,
            (None, _) => false,
        };
        let running = new_leader
            .as_deref()
            .and_then(|n| c.member(n))
            .is_some_and(|m| m.data.role == praetor_dcs::Role::Primary);
        if promoted && running {
            println!(
                "Successfully switched over to \"{}\"",
                new_leader.unwrap_or_default()
            );
            print!("{}", render_list(scope, &c, Format::Pretty, false));
            return Ok(());
        }
        if c.failover_request().is_none() && new_leader.as_deref() == Some(leader.as_str()) {
            bail!("Switchover failed: the leader {leader} refused it (see its log for the reason)");
        }
        if started.elapsed() > timeout {
            bail!("Switchover did not complete within {timeout:?} (leader now: {new_leader:?})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use praetor_dcs::{Leader, Member, MemberData, MemberState, Role, Status};

    #[test]
    fn dcs_urls() {
        assert!(matches!(
            parse_dcs_url("etcd3://127.0.0.1:2379"),
            Ok(DcsEndpoints::Etcd(v)) if v == vec!["http://127.0.0.1:2379".to_string()]
        ));
        assert!(
            matches!(parse_dcs_url("zk://a:2181,b:2181"), Ok(DcsEndpoints::ZooKeeper(v)) if v.len() == 2)
        );
        assert!(parse_dcs_url("127.0.0.1:2379").is_err());
        assert!(parse_dcs_url("ftp://x").is_err());
    }

    #[test]
    fn list_table_is_patronictls() {
        let m = |name: &str, role: Role, port: u16, xlog: u64| Member {
            name: name.into(),
            data: MemberData {
                conn_url: Some(format!("postgres://127.0.0.1:{port}/postgres")),
                state: MemberState::Running,
                role,
                xlog_location: Some(xlog),
                timeline: Some(1),
                replication_state: (role == Role::Replica).then(|| "streaming".to_string()),
                ..Default::default()
            },
            version: 1,
        };
        let c = Cluster {
            initialize: Some("7711591983046744147".into()),
            leader: Some(Leader {
                name: "pg1".into(),
                version: 1,
            }),
            members: vec![
                m("pg1", Role::Primary, 5432, 5 << 20),
                m("pg2", Role::Replica, 5433, 3 << 20),
            ],
            status: Some(Status {
                optime: 5 << 20,
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = render_list("demo", &c, Format::Pretty, false);
        let expected = "\
+ Cluster: demo (7711591983046744147) ----------+----+-----------+
| Member | Host           | Role    | State     | TL | Lag in MB |
+--------+----------------+---------+-----------+----+-----------+
| pg1    | 127.0.0.1      | Leader  | running   | 1  |           |
| pg2    | 127.0.0.1:5433 | Replica | streaming | 1  | 2         |
+--------+----------------+---------+-----------+----+-----------+
";
        assert_eq!(out, expected, "\n{out}");
        let json: serde_json::Value =
            serde_json::from_str(&render_list("demo", &c, Format::Json, false)).unwrap();
        assert_eq!(json[1]["Role"], "Replica");
        assert_eq!(json[1]["Lag in MB"], 2);
        assert_eq!(json[0]["Member"], "pg1");
    }
}
