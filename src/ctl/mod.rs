//! `praetor ctl`: the operator CLI, command for command and flag for flag patronictl's
//! (reference/patroni.md section 3), so runbooks work with `patronictl` replaced by `praetor ctl`.
//!
//! It finds the DCS from `-c config.yml` (the agent's or the proxy's file), `--dcs-url
//! etcd3://host:port` / `zk://host:port`, or `$PRAETOR_CTL_CONFIG_FILE` / `$PATRONICTL_CONFIG_FILE`.
//! Like patronictl it reads the cluster from the DCS, writes only the `config` and `failover` keys
//! (compare-and-set), and asks the agents' REST APIs for everything PostgreSQL-related (restart,
//! reload, reinit, switchover, pause). Without `--force` it asks before acting.
//!
//! - [`render`]: the tables and formats.
//! - [`edit`]: `edit-config` helpers (`-s`/`-p` pairs, YAML, the diff).
//! - [`members`]: the commands that call agents (restart, reload, reinit, flush, version, pause).
//! - [`failover`]: switchover and failover.

mod edit;
mod failover;
mod members;
mod render;
mod standby;

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use praetor_agent::api::client::{api_base, ApiClient};
use praetor_config::{Config, DcsEndpoints};
use praetor_dcs::{Cluster, Dcs, DcsIdentity, Expect, Member};

use crate::{config_err, Failure};
pub use render::{render_list, Format};

/// Arguments of `praetor ctl`.
#[derive(Args)]
pub struct CtlArgs {
    /// Configuration file naming the DCS and the cluster (the agent's or the proxy's YAML); given
    /// before the command, as with patronictl (`praetor ctl -c FILE list`).
    #[arg(
        short = 'c',
        long = "config-file",
        alias = "config",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// The DCS, when no configuration file is given: etcd3://host:port or zk://host:port.
    #[arg(long = "dcs-url", alias = "dcs", value_name = "URL")]
    dcs_url: Option<String>,
    /// Accept any TLS certificate from the agents' REST APIs.
    #[arg(short = 'k', long = "insecure")]
    insecure: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

/// Role filters of `restart`, `reload`, `query`, `dsn` (patronictl's `-r`).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum RoleFilter {
    /// The leader (primary or standby leader).
    Leader,
    /// The primary.
    #[value(alias = "master")]
    Primary,
    /// Every member but the leader.
    Replica,
    /// The leader of a standby cluster.
    #[value(name = "standby-leader")]
    StandbyLeader,
    /// Every member.
    Any,
}

/// What `list` and `topology` take.
#[derive(Args)]
pub struct ListArgs {
    /// Cluster name (default: the configuration's scope).
    cluster_name: Option<String>,
    /// Output format.
    #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
    format: Format,
    /// Show every column, even when empty.
    #[arg(short = 'e', long = "extended")]
    extended: bool,
    /// Print a timestamp first.
    #[arg(short = 't', long = "timestamp")]
    timestamp: bool,
    /// Refresh every 2 seconds until interrupted.
    #[arg(short = 'W')]
    watch_default: bool,
    /// Refresh every N seconds until interrupted.
    #[arg(short = 'w', long = "watch", value_name = "SECONDS")]
    watch: Option<f64>,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// List the members: Member, Host, Role, State, TL, Lag in MB [, Pending restart, Scheduled
    /// restart, Tags].
    List(ListArgs),
    /// The members as a tree: who streams from whom (cascading replication).
    Topology(ListArgs),
    /// Switch the leader role over to another member (planned, nothing lost), now or at
    /// --scheduled. Asks for what is not given unless --force; refuses with the reason when not
    /// possible.
    Switchover {
        /// Cluster name.
        cluster_name: Option<String>,
        /// The current leader.
        #[arg(long, alias = "primary", alias = "master")]
        leader: Option<String>,
        /// The member to promote (default: the healthiest).
        #[arg(long)]
        candidate: Option<String>,
        /// When: ISO 8601 (`2026-11-24T10:00+00:00`; without an offset, UTC) or `now`.
        #[arg(long)]
        scheduled: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
        /// Citus group (accepted for compatibility; ignored).
        #[arg(long, hide = true)]
        group: Option<i64>,
    },
    /// Promote a specific member, with or without a healthy leader.
    Failover {
        /// Cluster name.
        cluster_name: Option<String>,
        /// The current leader (deprecated in patronictl: makes it a switchover).
        #[arg(long, alias = "primary", alias = "master", hide = true)]
        leader: Option<String>,
        /// The member to promote.
        #[arg(long)]
        candidate: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
        /// Citus group (ignored).
        #[arg(long, hide = true)]
        group: Option<i64>,
    },
    /// Change the dynamic configuration: $EDITOR, -s key.path=value, -p pgparam=value, --apply or
    /// --replace FILE (or - for stdin). Shows the diff and asks unless --force.
    EditConfig {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Do not show the diff.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Set key.path=value (YAML value; null deletes).
        #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Set postgresql.parameters.NAME=value.
        #[arg(short = 'p', long = "pg", value_name = "NAME=VALUE")]
        pg: Vec<String>,
        /// Merge this YAML file (- for stdin) into the configuration.
        #[arg(long, value_name = "FILE")]
        apply: Option<String>,
        /// Replace the configuration by this YAML file (- for stdin).
        #[arg(long, value_name = "FILE")]
        replace: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Print the dynamic configuration (YAML).
    ShowConfig {
        /// Cluster name.
        cluster_name: Option<String>,
    },
    /// Restart PostgreSQL on members (all, named, or by role), now or --scheduled.
    Restart {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Members (default: ask, or all with --force).
        member_names: Vec<String>,
        /// Only members of this role.
        #[arg(short = 'r', long = "role", value_enum, default_value = "any")]
        role: RoleFilter,
        /// Restart one member chosen at random among the selected.
        #[arg(long)]
        any: bool,
        /// Only members with a pending restart.
        #[arg(long)]
        pending: bool,
        /// When: ISO 8601 or `now`.
        #[arg(long)]
        scheduled: Option<String>,
        /// Only if the running PostgreSQL is older than this version (e.g. 15.4).
        #[arg(long = "pg-version")]
        pg_version: Option<String>,
        /// Give up waiting for each restart after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Reload the configuration of members.
    Reload {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Members (default: ask, or all with --force).
        member_names: Vec<String>,
        /// Only members of this role.
        #[arg(short = 'r', long = "role", value_enum, default_value = "any")]
        role: RoleFilter,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Rebuild replicas from scratch (remove the data directory, clone again).
    Reinit {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Members.
        member_names: Vec<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
        /// Wait until the members run again.
        #[arg(long)]
        wait: bool,
        /// Clone from the leader, not from a `clonefrom` member.
        #[arg(long = "from-leader")]
        from_leader: bool,
    },
    /// Remove the cluster's keys from the DCS (asks for the cluster name and the leader).
    Remove {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Output format of the member list shown first.
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
    },
    /// Maintenance mode: the agents stop starting, stopping and promoting PostgreSQL.
    Pause {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Wait until every member shows it.
        #[arg(long)]
        wait: bool,
    },
    /// Leave maintenance mode.
    Resume {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Wait until every member shows it.
        #[arg(long)]
        wait: bool,
    },
    /// Demote the cluster to a standby cluster of another one (Patroni 4): sets
    /// `standby_cluster` in the dynamic configuration and waits until the leader is a standby
    /// leader replicating from --host/--port.
    DemoteCluster {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
        /// Address of the remote node.
        #[arg(long)]
        host: Option<String>,
        /// Port of the remote node.
        #[arg(long)]
        port: Option<u16>,
        /// Command to restore WAL records from the remote primary.
        #[arg(long = "restore-command")]
        restore_command: Option<String>,
        /// Name of the slot on the remote node to use for replication.
        #[arg(long = "primary-slot-name")]
        primary_slot_name: Option<String>,
    },
    /// Promote a standby cluster, make it run standalone (Patroni 4): removes `standby_cluster`
    /// and waits until the standby leader is a primary.
    PromoteCluster {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// The timeline history: TL, LSN, Reason, Timestamp, New Leader.
    History {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Output format.
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
    },
    /// Run SQL on a member (through its conn_url).
    Query {
        /// Cluster name.
        cluster_name: Option<String>,
        /// The member's role (default: the leader).
        #[arg(short = 'r', long = "role", value_enum)]
        role: Option<RoleFilter>,
        /// The member.
        #[arg(short = 'm', long = "member", conflicts_with = "role")]
        member: Option<String>,
        /// The SQL.
        #[arg(short = 'c', long = "command", conflicts_with = "file")]
        command: Option<String>,
        /// A file of SQL (- for stdin).
        #[arg(long = "file")]
        file: Option<String>,
        /// User name (default: postgresql.authentication.superuser of the configuration).
        #[arg(short = 'U', long = "username")]
        username: Option<String>,
        /// Ask for the password.
        #[arg(long)]
        password: bool,
        /// Database.
        #[arg(short = 'd', long = "dbname", default_value = "postgres")]
        dbname: String,
        /// Output format.
        #[arg(long = "format", value_enum, default_value = "tsv")]
        format: Format,
        /// Column delimiter for tsv.
        #[arg(long, default_value = "\t")]
        delimiter: String,
        /// Run every 2 seconds until interrupted.
        #[arg(short = 'W')]
        watch_default: bool,
        /// Run every N seconds until interrupted.
        #[arg(short = 'w', long = "watch", value_name = "SECONDS")]
        watch: Option<f64>,
    },
    /// Print a member's connection string (host= port=).
    Dsn {
        /// Cluster name.
        cluster_name: Option<String>,
        /// The member's role (default: the leader).
        #[arg(short = 'r', long = "role", value_enum)]
        role: Option<RoleFilter>,
        /// The member.
        #[arg(short = 'm', long = "member", conflicts_with = "role")]
        member: Option<String>,
    },
    /// Discard scheduled events: `flush CLUSTER [MEMBER...] restart|switchover`.
    Flush {
        /// Cluster name, members, and what to flush (restart or switchover), in that order.
        #[arg(required = true, num_args = 1..)]
        args: Vec<String>,
        /// Only members of this role (restart).
        #[arg(short = 'r', long = "role", value_enum, default_value = "any")]
        role: RoleFilter,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Print the version of ctl and, given a cluster, of each member's agent and PostgreSQL.
    Version {
        /// Cluster name.
        cluster_name: Option<String>,
        /// Members.
        member_names: Vec<String>,
    },
}

/// What every command works with.
pub(crate) struct Ctx {
    /// Cluster name.
    pub scope: String,
    /// The DCS.
    pub dcs: Arc<dyn Dcs>,
    /// Calls agents' REST APIs.
    pub client: ApiClient,
    /// The configuration file, if one was given.
    pub config: Option<Config>,
}

impl Ctx {
    pub async fn cluster(&self) -> anyhow::Result<Cluster> {
        self.dcs
            .load()
            .await
            .context("cannot read the cluster from the DCS")
    }

    /// `POST`/`GET`/... on a member's API.
    pub async fn call(
        &self,
        member: &Member,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<praetor_agent::api::client::ApiResponse, String> {
        let url = member
            .data
            .api_url
            .as_deref()
            .ok_or_else(|| format!("member {} has no api_url", member.name))?;
        self.client
            .request(method, &format!("{}{path}", api_base(url)), body)
            .await
    }
}

/// Runs a ctl command.
pub async fn run(args: CtlArgs) -> Result<(), Failure> {
    if let CtlCommand::Version {
        cluster_name: None, ..
    } = &args.command
    {
        println!("praetor ctl version {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let (config, namespace, endpoints) = dcs_target(&args)?;
    let cluster_arg = match &args.command {
        CtlCommand::List(ListArgs { cluster_name, .. })
        | CtlCommand::Topology(ListArgs { cluster_name, .. })
        | CtlCommand::Switchover { cluster_name, .. }
        | CtlCommand::Failover { cluster_name, .. }
        | CtlCommand::EditConfig { cluster_name, .. }
        | CtlCommand::ShowConfig { cluster_name }
        | CtlCommand::Restart { cluster_name, .. }
        | CtlCommand::Reload { cluster_name, .. }
        | CtlCommand::Reinit { cluster_name, .. }
        | CtlCommand::Remove { cluster_name, .. }
        | CtlCommand::Pause { cluster_name, .. }
        | CtlCommand::Resume { cluster_name, .. }
        | CtlCommand::DemoteCluster { cluster_name, .. }
        | CtlCommand::PromoteCluster { cluster_name, .. }
        | CtlCommand::History { cluster_name, .. }
        | CtlCommand::Query { cluster_name, .. }
        | CtlCommand::Dsn { cluster_name, .. }
        | CtlCommand::Version { cluster_name, .. } => cluster_name.clone(),
        CtlCommand::Flush { args, .. } => (args.len() > 1).then(|| args[0].clone()),
    };
    let config_scope = config.as_ref().and_then(|c| c.scope.clone());
    let named_by = if cluster_arg.is_some() {
        "cluster name"
    } else {
        "scope"
    };
    let scope = cluster_arg.or(config_scope).ok_or_else(|| {
        config_err(
            "name the cluster: praetor ctl --dcs-url URL <command> CLUSTER_NAME, or use -c FILE",
        )
    })?;
    // Before the DCS is opened: an empty name would address `/<namespace>//`, and `remove ''`
    // would ask to remove it.
    praetor_config::check_scope(&scope).map_err(|e| config_err(format!("{named_by}: {e}")))?;
    let client = api_client(config.as_ref(), args.insecure)?;
    let identity = DcsIdentity {
        namespace,
        scope: scope.clone(),
        member: None,
        ttl_secs: 30,
        request_timeout_secs: 5,
    };
    let security = config
        .as_ref()
        .map(|c| c.etcd_security())
        .unwrap_or_default();
    let dcs = praetor_dcs::connect_secured(&endpoints, identity, &security)
        .await
        .context("cannot open the DCS")?;
    let ctx = Ctx {
        scope,
        dcs,
        client,
        config,
    };
    run_command(&ctx, args.command)
        .await
        .map_err(Failure::Other)
}

async fn run_command(ctx: &Ctx, command: CtlCommand) -> anyhow::Result<()> {
    match command {
        CtlCommand::List(l) => list(ctx, l, false).await,
        CtlCommand::Topology(l) => list(ctx, l, true).await,
        CtlCommand::Switchover {
            leader,
            candidate,
            scheduled,
            force,
            ..
        } => {
            failover::run(
                ctx,
                failover::Kind::Switchover,
                leader,
                candidate,
                scheduled,
                force,
            )
            .await
        }
        CtlCommand::Failover {
            leader,
            candidate,
            force,
            ..
        } => {
            failover::run(
                ctx,
                failover::Kind::Failover,
                leader,
                candidate,
                None,
                force,
            )
            .await
        }
        CtlCommand::EditConfig {
            quiet,
            set,
            pg,
            apply,
            replace,
            force,
            ..
        } => edit_config(ctx, quiet, &set, &pg, apply, replace, force).await,
        CtlCommand::ShowConfig { .. } => {
            let c = ctx.cluster().await?;
            let v = c.config.map(|c| c.value).unwrap_or(serde_json::json!({}));
            print!("{}", edit::format_config(&v));
            Ok(())
        }
        CtlCommand::Restart {
            member_names,
            role,
            any,
            pending,
            scheduled,
            pg_version,
            timeout,
            force,
            ..
        } => {
            members::restart(
                ctx,
                members::RestartArgs {
                    names: member_names,
                    role,
                    any,
                    pending,
                    scheduled,
                    pg_version,
                    timeout,
                    force,
                },
            )
            .await
        }
        CtlCommand::Reload {
            member_names,
            role,
            force,
            ..
        } => members::reload(ctx, member_names, role, force).await,
        CtlCommand::Reinit {
            member_names,
            force,
            wait,
            from_leader,
            ..
        } => members::reinit(ctx, member_names, force, wait, from_leader).await,
        CtlCommand::Remove { format, .. } => remove(ctx, format).await,
        CtlCommand::Pause { wait, .. } => members::toggle_pause(ctx, true, wait).await,
        CtlCommand::Resume { wait, .. } => members::toggle_pause(ctx, false, wait).await,
        CtlCommand::DemoteCluster {
            force,
            host,
            port,
            restore_command,
            primary_slot_name,
            ..
        } => {
            let section = standby::demote_section(host, port, restore_command, primary_slot_name)?;
            standby::change_cluster_role(ctx, force, Some(section)).await
        }
        CtlCommand::PromoteCluster { force, .. } => {
            standby::change_cluster_role(ctx, force, None).await
        }
        CtlCommand::History { format, .. } => {
            let c = ctx.cluster().await?;
            print!("{}", render::render_history(&c, format));
            Ok(())
        }
        CtlCommand::Query {
            role,
            member,
            command,
            file,
            username,
            password,
            dbname,
            format,
            delimiter,
            watch_default,
            watch,
            ..
        } => {
            let sql = match (command, file) {
                (Some(c), _) => c,
                (None, Some(f)) => read_file_or_stdin(&f)?,
                (None, None) => bail!("give the SQL: -c SQL or --file FILE"),
            };
            members::query(
                ctx,
                members::QueryArgs {
                    role,
                    member,
                    sql,
                    username,
                    ask_password: password,
                    dbname,
                    format,
                    delimiter,
                    watch: watch_of(watch_default, watch),
                },
            )
            .await
        }
        CtlCommand::Dsn { role, member, .. } => {
            let c = ctx.cluster().await?;
            let m = members::pick_member(&c, role, member.as_deref())?;
            let (host, port) = m
                .data
                .conn_host_port()
                .ok_or_else(|| anyhow!("member {} has no usable conn_url", m.name))?;
            println!("host={host} port={port}");
            Ok(())
        }
        CtlCommand::Flush { args, role, force } => {
            // `flush [CLUSTER_NAME] [MEMBER_NAMES]... restart|switchover`.
            let (target, names) = match args.split_last() {
                Some((t, [])) => (t.clone(), vec![]),
                Some((t, [_cluster, members @ ..])) => (t.clone(), members.to_vec()),
                None => bail!("usage: flush CLUSTER_NAME [MEMBER_NAMES]... restart|switchover"),
            };
            match target.as_str() {
                "restart" => members::flush_restart(ctx, names, role, force).await,
                "switchover" => members::flush_switchover(ctx).await,
                other => bail!("flush {other:?}: expected restart or switchover"),
            }
        }
        CtlCommand::Version { member_names, .. } => {
            println!("praetor ctl version {}", env!("CARGO_PKG_VERSION"));
            members::versions(ctx, &member_names).await
        }
    }
}

fn watch_of(default: bool, every: Option<f64>) -> Option<Duration> {
    match (default, every) {
        (_, Some(s)) if s > 0.0 => Some(Duration::from_secs_f64(s)),
        (true, _) => Some(Duration::from_secs(2)),
        _ => None,
    }
}

/// `YYYY-MM-DD HH:MM:SS` now (UTC), as patronictl's timestamps.
pub(crate) fn timestamp() -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::now_utc()
        .format(&f)
        .unwrap_or_default()
}

async fn list(ctx: &Ctx, args: ListArgs, tree: bool) -> anyhow::Result<()> {
    let ListArgs {
        format,
        extended,
        timestamp: with_timestamp,
        watch_default,
        watch,
        ..
    } = args;
    let watch = watch_of(watch_default, watch);
    loop {
        let c = ctx.cluster().await?;
        let mut out = String::new();
        if with_timestamp || watch.is_some() {
            out.push_str(&timestamp());
            out.push('\n');
        }
        out.push_str(&render_list(&ctx.scope, &c, format, extended, tree));
        print!("{out}");
        std::io::stdout().flush()?;
        match watch {
            Some(every) => {
                tokio::time::sleep(every).await;
                println!();
            }
            None => return Ok(()),
        }
    }
}

/// Asks `question`, returning the answer or `default` for an empty line. End of input is an error
/// (nothing is done without an answer).
pub(crate) fn prompt(question: &str, default: Option<&str>) -> anyhow::Result<String> {
    match default {
        Some(d) => print!("{question} [{d}]: "),
        None => print!("{question}: "),
    }
    std::io::stdout().flush()?;
    let mut line = String::new();
    let n = std::io::stdin().lock().read_line(&mut line)?;
    if n == 0 {
        println!();
        bail!("no answer on standard input (use --force to skip questions)");
    }
    let answer = line.trim().to_string();
    Ok(if answer.is_empty() {
        default.unwrap_or("").to_string()
    } else {
        answer
    })
}

/// Asks a yes/no question (default no).
pub(crate) fn confirm(question: &str) -> anyhow::Result<bool> {
    let a = prompt(&format!("{question} [y/N]"), None)?;
    Ok(matches!(a.to_ascii_lowercase().as_str(), "y" | "yes"))
}

fn read_file_or_stdin(path: &str) -> anyhow::Result<String> {
    if path == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))
    }
}

async fn edit_config(
    ctx: &Ctx,
    quiet: bool,
    set: &[String],
    pg: &[String],
    apply: Option<String>,
    replace: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let (current, expect) = match &cluster.config {
        Some(c) => (c.value.clone(), Expect::Version(c.version)),
        None => (serde_json::json!({}), Expect::Absent),
    };
    let before = edit::format_config(&current);
    let mut changed: Option<serde_json::Value> = None;
    if let Some(f) = &replace {
        changed =
            Some(edit::parse_yaml_doc(&read_file_or_stdin(f)?, f).map_err(anyhow::Error::msg)?);
    }
    if let Some(f) = &apply {
        let patch = edit::parse_yaml_doc(&read_file_or_stdin(f)?, f).map_err(anyhow::Error::msg)?;
        let mut data = changed.take().unwrap_or_else(|| current.clone());
        praetor_agent::api::merge_patch(&mut data, &patch);
        changed = Some(data);
    }
    if !set.is_empty() || !pg.is_empty() {
        let mut data = changed.take().unwrap_or_else(|| current.clone());
        edit::apply_pairs(&mut data, set, pg).map_err(anyhow::Error::msg)?;
        changed = Some(data);
    }
    let changed = match changed {
        Some(c) => c,
        None => invoke_editor(&before, &ctx.scope)?,
    };
    if changed == current {
        if !quiet {
            println!("Not changed");
        }
        return Ok(());
    }
    praetor_agent::api::actions::validate_config(&changed).map_err(anyhow::Error::msg)?;
    let after = edit::format_config(&changed);
    if !quiet {
        print!(
            "{}",
            edit::unified_diff(&before, &after, "", "")
                .lines()
                .skip(2)
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        );
        println!();
    }
    if (apply.as_deref() == Some("-") || replace.as_deref() == Some("-")) && !force {
        println!("Use --force option to apply changes");
        return Ok(());
    }
    if !force && !confirm("Apply these changes?")? {
        bail!("Aborted: configuration not changed");
    }
    match ctx.dcs.set_config(&changed, expect).await {
        Ok(()) => {
            println!("Configuration changed");
            Ok(())
        }
        Err(e) if e.is_cas_conflict() => {
            bail!("Config modification aborted due to concurrent changes")
        }
        Err(e) => Err(e).context("cannot write the configuration"),
    }
}

fn invoke_editor(before: &str, scope: &str) -> anyhow::Result<serde_json::Value> {
    let editor = std::env::var("EDITOR")
        .or_else(|_| std::env::var("VISUAL"))
        .unwrap_or_else(|_| "vi".into());
    let mut file = tempfile::Builder::new()
        .prefix(&format!("{scope}-config-"))
        .suffix(".yaml")
        .tempfile()?;
    file.write_all(before.as_bytes())?;
    file.flush()?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("editor")
        .arg(file.path())
        .status()
        .with_context(|| format!("cannot run the editor {editor}"))?;
    if !status.success() {
        bail!("editor {editor} exited with {status}; configuration not changed");
    }
    let text = std::fs::read_to_string(file.path())?;
    edit::parse_yaml_doc(&text, "edited configuration").map_err(anyhow::Error::msg)
}

async fn remove(ctx: &Ctx, format: Format) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    print!(
        "{}",
        render_list(&ctx.scope, &cluster, format, false, false)
    );
    let name = prompt("Please confirm the cluster name to remove", None)?;
    if name != ctx.scope {
        bail!("Cluster names specified do not match");
    }
    let message = "Yes I am aware";
    let answer = prompt(
        &format!(
            "You are about to remove all information in DCS for {}, please type: \"{message}\"",
            ctx.scope
        ),
        None,
    )?;
    if answer != message {
        bail!("You did not exactly type \"{message}\"");
    }
    if let Some(l) = &cluster.leader {
        let answer = prompt(
            "This cluster currently is healthy. Please specify the leader name to continue",
            None,
        )?;
        if answer != l.name {
            bail!("You did not specify the current leader of the cluster");
        }
    }
    ctx.dcs
        .delete_cluster()
        .await
        .context("cannot remove the cluster from the DCS")?;
    println!("Removed cluster {} from the DCS", ctx.scope);
    Ok(())
}

/// Finds the DCS: `--dcs-url`, `-c`, then `$PRAETOR_CTL_CONFIG_FILE` / `$PATRONICTL_CONFIG_FILE`.
fn dcs_target(args: &CtlArgs) -> Result<(Option<Config>, String, DcsEndpoints), Failure> {
    let path = args
        .config
        .clone()
        .or_else(|| std::env::var_os("PRAETOR_CTL_CONFIG_FILE").map(PathBuf::from))
        .or_else(|| std::env::var_os("PATRONICTL_CONFIG_FILE").map(PathBuf::from));
    let config = match &path {
        Some(p) => Some(crate::load_config(p)?.config),
        None => None,
    };
    if let Some(url) = &args.dcs_url {
        let ns = config
            .as_ref()
            .map(Config::namespace)
            .unwrap_or_else(|| "/service/".into());
        return Ok((config, ns, parse_dcs_url(url)?));
    }
    let (Some(config), Some(path)) = (config, path) else {
        return Err(config_err(
            "give the DCS: -c FILE, --dcs-url etcd3://host:port, or PRAETOR_CTL_CONFIG_FILE",
        ));
    };
    let endpoints = config
        .dcs_endpoints()
        .map_err(|e| config_err(format!("{}: {e}", path.display())))?;
    let ns = config.namespace();
    Ok((Some(config), ns, endpoints))
}

/// The REST client from `ctl.{cacert,certfile,keyfile,insecure}` (and `-k`) with the credentials
/// of `ctl.authentication`, else `restapi.authentication`.
fn api_client(config: Option<&Config>, insecure: bool) -> Result<ApiClient, Failure> {
    let ctl = config.map(|c| &c.ctl);
    let tls = praetor_agent::api::tls::client_config(&praetor_agent::api::tls::ClientTls {
        cacert: ctl
            .and_then(|c| c.cacert.as_deref())
            .or_else(|| config.and_then(|c| c.restapi.cafile.as_deref())),
        certfile: ctl.and_then(|c| c.certfile.as_deref()),
        keyfile: ctl.and_then(|c| c.keyfile.as_deref()),
        insecure: insecure || ctl.is_some_and(|c| c.insecure),
    })
    .map_err(config_err)?;
    let auth = config.and_then(|c| {
        c.ctl
            .authentication
            .as_ref()
            .or(c.restapi.authentication.as_ref())
    });
    Ok(ApiClient::new(
        Some(tls),
        auth.map(|c| (c.username.as_str(), c.password.as_deref().unwrap_or(""))),
        Duration::from_secs(120),
    ))
}

/// Parses `etcd3://host:port[,host:port]` or `zk://host:port`. `etcd://` is refused: for patronictl
/// it means etcd's v2 API, which Praetor does not speak (as the YAML's `etcd` section is refused).
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
        "etcd" => Err(config_err(format!(
            "--dcs-url {url}: etcd:// is etcd's v2 API, which Praetor does not speak: write etcd3://"
        ))),
        "etcd3" | "http" => Ok(DcsEndpoints::Etcd(
            hosts.into_iter().map(|h| format!("http://{h}")).collect(),
        )),
        "https" => Ok(DcsEndpoints::Etcd(
            hosts.into_iter().map(|h| format!("https://{h}")).collect(),
        )),
        "zk" | "zookeeper" => Ok(DcsEndpoints::ZooKeeper(hosts)),
        other => Err(config_err(format!(
            "--dcs-url {url}: unknown scheme {other:?} (etcd3, zk)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(parse_dcs_url("etcd://127.0.0.1:2379").is_err());
    }

    #[test]
    fn watch_intervals() {
        assert_eq!(watch_of(false, None), None);
        assert_eq!(watch_of(true, None), Some(Duration::from_secs(2)));
        assert_eq!(watch_of(false, Some(0.5)), Some(Duration::from_millis(500)));
    }
}
