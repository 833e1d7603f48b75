//! A whole Praetor cluster on 127.0.0.1: a DCS (one etcd by default; see [`DcsKind`]), N agents each
//! with its PostgreSQL, and a proxy.
//!
//! Used by the acceptance tests, the benchmarks and `praetor demo`. Each node lives in its own
//! directory (config, data, agent log); agents run as `postgres` when this process is root, from a
//! copy of the binary the `postgres` user can execute. Dropping a [`LocalCluster`] kills every agent,
//! postmaster, proxy and DCS server it started.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

pub use crate::dcs::DcsKind;
use crate::dcs::LocalDcs;
pub use crate::netns::{Host, Network};
use crate::{
    as_postgres, free_port, http_get, install_binary, pg_bin_dir, wait_for, write_file, Process,
    WorkDir,
};

/// The superuser every node is bootstrapped with.
pub const SUPERUSER: &str = "postgres";
/// Its password.
pub const SUPERUSER_PASSWORD: &str = "praetor";

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Cluster name (`scope`).
    pub scope: String,
    /// Number of agents (members).
    pub nodes: usize,
    /// Leader lock TTL, seconds.
    pub ttl: u32,
    /// Loop period, seconds.
    pub loop_wait: u32,
    /// DCS retry timeout, seconds.
    pub retry_timeout: u32,
    /// `bootstrap.dcs.postgresql.use_pg_rewind`.
    pub use_pg_rewind: bool,
    /// Start a proxy too.
    pub proxy: bool,
    /// Extra YAML lines appended under `tags:` for node `i` (0-based), e.g. `nofailover: true`.
    pub tags: Vec<(usize, String)>,
    /// Extra lines under `bootstrap.dcs:` (e.g. `synchronous_mode: true`), for every node.
    pub dcs_extra: Vec<String>,
    /// Extra lines of each node's own `postgresql:` section (e.g.
    /// `remove_data_directory_on_rewind_failure: true`), for every node.
    pub postgresql_extra: Vec<String>,
    /// Extra lines under `bootstrap.dcs.postgresql.parameters:` (e.g. `wal_level: logical`), for
    /// every node.
    pub dcs_parameters: Vec<String>,
    /// Put each agent's DCS connection behind its own [`crate::relay::TcpRelay`], so a test can cut one
    /// node off the DCS ([`LocalCluster::relay`]).
    pub dcs_relay: bool,
    /// The DCS to start (one etcd by default); the agents and the proxy get its `etcd3:` or
    /// `zookeeper:` section.
    pub dcs: DcsKind,
    /// initdb with `--data-checksums` (true by default). Without it the cluster runs with
    /// `wal_log_hints: on` instead, as seeds 001 and 002 do, which is what pg_rewind then needs.
    pub data_checksums: bool,
    /// Name a dedicated pg_rewind role in `postgresql.authentication.rewind` (`rewind_user` /
    /// `rewind-pass`), as Patroni's example YAML and seed 002 do.
    pub rewind_user: bool,
    /// Run every member in a host of its own on a [`Network`] (network namespaces, root only):
    /// three DCS servers in hosts `e1`..`e3` (a 3-member etcd, or a 3-server ZooKeeper ensemble
    /// when [`ClusterOptions::dcs`] is a ZooKeeper kind: three whatever size it names, so losing
    /// quorum is a fault), each agent with its PostgreSQL in host `pg<i>`, the proxy in host
    /// `proxy`. Every address in every configuration is the host's (198.18.X.N) with the standard
    /// ports (PostgreSQL 5432, REST API 8008, etcd 2379/2380, ZooKeeper 2181/2888/3888, proxy
    /// read-write 5000, read-only 5001, auto 5002, metrics 9000). With
    /// [`ClusterOptions::dcs_relay`], each agent reaches the DCS server in `e1` through a relay on
    /// [`Network::gateway`]. Faults: [`LocalCluster::net`]; a replica's replication link through
    /// a relay: [`LocalCluster::relay_replication`].
    pub netns: bool,
    /// PostgreSQL's programs (`postgresql.bin_dir`); `None`: [`crate::pg_bin_dir`] (Debian's 15).
    /// [`crate::PgMajor::bin_dir`] gives 18's.
    pub bin_dir: Option<PathBuf>,
    /// Start every node's Praetor agent (true by default). `false`: each node's configuration is
    /// written and nothing runs; the test starts each node with [`Node::start_agent`] or
    /// [`Node::start_patroni`] (the configuration is Patroni's YAML, which both read).
    pub start_agents: bool,
    /// With [`ClusterOptions::netns`]: each agent reaches every etcd member through a relay of its
    /// own inside its host (listening on the host's 127.0.0.1, connecting from the host's
    /// address, so the host's network faults still apply), so a test can make one member's link
    /// to the DCS slow or lossy ([`LocalCluster::dcs_links`], [`crate::relay::TcpRelay::set_delay`],
    /// [`crate::relay::TcpRelay::set_loss`]). This kernel has no `tc netem` to do it in the network.
    pub dcs_links: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            scope: "demo".into(),
            nodes: 3,
            ttl: 6,
            loop_wait: 1,
            retry_timeout: 2,
            use_pg_rewind: true,
            proxy: true,
            tags: vec![],
            dcs_extra: vec![],
            postgresql_extra: vec![],
            dcs_parameters: vec![],
            dcs_relay: false,
            dcs: DcsKind::Etcd,
            data_checksums: true,
            rewind_user: false,
            netns: false,
            bin_dir: None,
            start_agents: true,
            dcs_links: false,
        }
    }
}

/// One member: its directory, ports and agent process.
pub struct Node {
    /// Member name (`pg1`, `pg2`, ...).
    pub name: String,
    /// The node's directory (config, data, logs, socket).
    pub dir: PathBuf,
    /// PostgreSQL port.
    pub pg_port: u16,
    /// REST API port.
    pub api_port: u16,
    /// The agent's configuration file.
    pub config: PathBuf,
    /// The address its PostgreSQL and REST API listen on: `127.0.0.1`, or its host's address with
    /// [`ClusterOptions::netns`].
    pub ip: String,
    /// Its host, with [`ClusterOptions::netns`].
    pub host: Option<Host>,
    agent: Option<Process>,
}

impl Node {
    /// `<ip>:<api_port>`.
    pub fn api_addr(&self) -> String {
        format!("{}:{}", self.ip, self.api_port)
    }

    /// `<ip>:<pg_port>`.
    pub fn pg_addr(&self) -> String {
        format!("{}:{}", self.ip, self.pg_port)
    }

    /// A libpq key=value string to this node's PostgreSQL as the superuser.
    pub fn dsn(&self) -> String {
        format!(
            "host={} port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=3",
            self.ip, self.pg_port
        )
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The agent's log (which also holds its PostgreSQL's output).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// The agent's log contents.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The postmaster's PID from `postmaster.pid`, if the file exists and the process is alive.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        nix::sys::signal::kill(Pid::from_raw(pid), None)
            .ok()
            .map(|_| pid)
    }

    /// Starts (or restarts) the agent with `binary`.
    pub fn start_agent(&mut self, binary: &Path) -> Result<(), String> {
        let mut cmd = match &self.host {
            Some(h) => h.command_as_postgres(binary),
            None => {
                let mut cmd = Command::new(binary);
                as_postgres(&mut cmd);
                cmd
            }
        };
        cmd.arg("agent").arg("-c").arg(&self.config);
        cmd.env(
            "RUST_LOG",
            std::env::var("PRAETOR_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let p = Process::spawn(&self.name, cmd, &self.log_path())
            .map_err(|e| format!("{}: cannot start the agent: {e}", self.name))?;
        self.agent = Some(p);
        Ok(())
    }

    /// Starts (or restarts) Patroni on this node instead of a Praetor agent, with the same
    /// configuration file (Patroni's YAML), as the `postgres` user; its log goes to the node's log
    /// (`agent.log`, after a `patroni` line). [`Node::stop_agent`], [`Node::kill_agent`] and the
    /// cluster's shutdown treat it as the node's agent. Needs the virtualenv `scripts/setup` makes
    /// ([`crate::patroni::venv`]).
    pub fn start_patroni(&mut self) -> Result<(), String> {
        if self.host.is_some() {
            return Err(format!(
                "{}: Patroni nodes run on 127.0.0.1 only, not in network namespaces",
                self.name
            ));
        }
        let patroni = crate::patroni::binary("patroni")?;
        let mut cmd = Command::new(patroni);
        as_postgres(&mut cmd);
        cmd.arg(&self.config);
        let _ = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"--- patroni\n"));
        let p = Process::spawn(&self.name, cmd, &self.log_path())
            .map_err(|e| format!("{}: cannot start patroni: {e}", self.name))?;
        self.agent = Some(p);
        Ok(())
    }

    /// The agent's PID, while it runs.
    pub fn agent_pid(&mut self) -> Option<u32> {
        let p = self.agent.as_mut()?;
        p.is_running().then(|| p.pid())
    }

    /// Sends `signal` to the agent process only (SIGKILL leaves its PostgreSQL running, as in
    /// production).
    pub fn signal_agent(&self, signal: Signal) {
        if let Some(p) = &self.agent {
            p.signal(signal);
        }
    }

    /// Freezes the whole node as a hung VM would look: SIGSTOP to the agent, the postmaster and every
    /// child of the postmaster (backends, WAL senders, checkpointer...: PostgreSQL puts each child in
    /// a session of its own, so a signal to the postmaster's process group reaches none of them).
    /// Connections to it then hang instead of being refused, and open ones get no answer. Returns
    /// what was stopped, for [`Node::thaw`].
    pub fn freeze(&self) -> Vec<i32> {
        self.signal_agent(Signal::SIGSTOP);
        let pids = self.postgres_pids();
        for pid in &pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGSTOP);
        }
        pids
    }

    /// Thaws a node frozen by [`Node::freeze`]: PostgreSQL first, then the agent (the order in which
    /// a thawed primary is most likely to acknowledge something before its agent can act: the
    /// benchmark's worst case, where the CPU scheduler decides how many).
    pub fn thaw(&self, postgres: Vec<i32>) {
        for pid in postgres {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        self.signal_agent(Signal::SIGCONT);
    }

    /// Thaws a node frozen by [`Node::freeze`]: the agent first, then PostgreSQL, so that what
    /// PostgreSQL does after the thaw depends on the agent's reaction, not on which process the
    /// scheduler runs first.
    pub fn thaw_agent_first(&self, postgres: Vec<i32>) {
        self.signal_agent(Signal::SIGCONT);
        for pid in postgres {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }

    /// The postmaster and its children (from /proc), postmaster first; empty when not running.
    pub fn postgres_pids(&self) -> Vec<i32> {
        let Some(pm) = self.postmaster_pid() else {
            return vec![];
        };
        let mut pids = vec![pm];
        pids.extend(crate::children_of(pm));
        pids
    }

    /// SIGKILLs the agent and forgets it (its PostgreSQL keeps running).
    pub fn kill_agent(&mut self) {
        if let Some(mut p) = self.agent.take() {
            p.signal(Signal::SIGKILL);
            let _ = p.wait_exit_blocking();
        }
    }

    /// SIGTERMs the agent and waits (up to `timeout`) for it to exit; returns its exit code.
    pub async fn stop_agent(&mut self, timeout: Duration) -> Result<Option<i32>, String> {
        let Some(p) = self.agent.as_mut() else {
            return Ok(Some(0));
        };
        p.signal(Signal::SIGTERM);
        let code = p.wait_exit(timeout).await;
        if code.is_ok() {
            self.agent = None;
        }
        code
    }

    /// Kills the whole node as a power loss would: SIGKILL to the agent and to PostgreSQL (the
    /// postmaster and every child). Its data stays; [`Node::start_agent`] brings it back.
    pub fn kill(&mut self) {
        self.kill_agent();
        self.kill_postmaster();
    }

    /// SIGKILLs the postmaster and every child of it (a node that dies takes its backends with
    /// it; a frozen child would otherwise keep the shared memory and block the next start).
    pub fn kill_postmaster(&self) {
        for pid in self.postgres_pids() {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Process {
    /// Reaps the child after it was killed (blocking, bounded by the kill).
    fn wait_exit_blocking(&mut self) -> std::io::Result<()> {
        self.child.wait().map(|_| ())
    }
}

/// The proxy process and its ports.
pub struct Proxy {
    /// The address it listens on: `127.0.0.1`, or its host's with [`ClusterOptions::netns`].
    pub ip: String,
    /// Read-write port.
    pub rw_port: u16,
    /// Read-only port.
    pub ro_port: u16,
    /// Auto port (transactions routed one by one: writes to the leader, read-only ones to a
    /// replica).
    pub auto_port: u16,
    /// Metrics port.
    pub metrics_port: u16,
    /// Its configuration file.
    pub config: PathBuf,
    process: Process,
}

impl Proxy {
    /// The proxy's log.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The process (to signal it).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// `<ip>:<rw_port>`.
    pub fn rw_addr(&self) -> String {
        format!("{}:{}", self.ip, self.rw_port)
    }

    /// `<ip>:<ro_port>`.
    pub fn ro_addr(&self) -> String {
        format!("{}:{}", self.ip, self.ro_port)
    }

    /// `<ip>:<auto_port>`.
    pub fn auto_addr(&self) -> String {
        format!("{}:{}", self.ip, self.auto_port)
    }
}

/// The DCS, the agents and (optionally) the proxy.
pub struct LocalCluster {
    /// Options it was started with.
    pub options: ClusterOptions,
    /// The members.
    pub nodes: Vec<Node>,
    /// The proxy, when started.
    pub proxy: Option<Proxy>,
    /// The DCS servers, whichever [`ClusterOptions::dcs`] chose (the field keeps the name it had when
    /// etcd was the only DCS; [`LocalCluster::dcs`] is the same). `etcd.endpoint` is how clients
    /// reach it.
    pub etcd: LocalDcs,
    /// The praetor binary the agents run (a copy the `postgres` user can execute).
    pub binary: PathBuf,
    /// Per-node DCS relays, by member name (with [`ClusterOptions::dcs_relay`]).
    pub relays: Vec<(String, crate::relay::TcpRelay)>,
    /// The cluster's directory (kept on drop with PRAETOR_KEEP_TMP).
    pub work: WorkDir,
    /// Replicas' replication links routed through relays ([`LocalCluster::relay_replication`]):
    /// `(leader, replica, relay)`.
    pub replication_links: Vec<(String, String, crate::relay::TcpRelay)>,
    /// The hosts, with [`ClusterOptions::netns`]; dropped last, after every process is gone.
    pub network: Option<Network>,
}

impl LocalCluster {
    /// Starts the DCS and every agent (and the proxy), without waiting for the cluster to form.
    /// `binary` is the praetor executable (copied so the `postgres` user can run it).
    pub async fn start(binary: &Path, options: ClusterOptions) -> Result<LocalCluster, String> {
        let work = WorkDir::new(&options.scope).map_err(|e| e.to_string())?;
        let mut network = if options.netns {
            Some(Network::new().map_err(|e| format!("cannot create network namespaces: {e}"))?)
        } else {
            None
        };
        let etcd = match &mut network {
            Some(net) => {
                let mut hosts = vec![];
                for i in 1..=3 {
                    hosts.push(net.add_host(&format!("e{i}"))?);
                }
                if options.dcs.family() == "zookeeper" {
                    let z = crate::dcs::ZooKeeperEnsemble::start_in(work.path(), &hosts).await?;
                    LocalDcs {
                        endpoint: z.hosts().join(","),
                        servers: crate::dcs::DcsServers::ZooKeeperEnsemble(z),
                    }
                } else {
                    let c = crate::dcs::EtcdCluster::start_in(work.path(), &hosts).await?;
                    LocalDcs {
                        endpoint: c.endpoints().join(","),
                        servers: crate::dcs::DcsServers::EtcdCluster(c),
                    }
                }
            }
            None => LocalDcs::start(options.dcs, work.path()).await?,
        };
        let binary = install_binary(binary, work.path()).map_err(|e| e.to_string())?;
        let mut nodes = Vec::new();
        let mut relays = Vec::new();
        for i in 0..options.nodes {
            let name = format!("pg{}", i + 1);
            let dir = work.subdir(&name, 0o755).map_err(|e| e.to_string())?;
            let host = match &mut network {
                Some(net) => Some(net.add_host(&name)?),
                None => None,
            };
            let node = Node {
                pg_port: if host.is_some() { 5432 } else { free_port() },
                api_port: if host.is_some() { 8008 } else { free_port() },
                config: dir.join("praetor.yml"),
                ip: host
                    .as_ref()
                    .map_or_else(|| "127.0.0.1".to_string(), |h| h.ip.clone()),
                host,
                name,
                dir,
                agent: None,
            };
            let tags: Vec<&str> = options
                .tags
                .iter()
                .filter(|(n, _)| *n == i)
                .map(|(_, t)| t.as_str())
                .collect();
            let dcs_section = if let (true, Some(h)) = (options.dcs_links, &node.host) {
                let (section, hosts) = etcd.section_and_hosts();
                let mut addrs = vec![];
                for target in &hosts {
                    let relay = crate::relay::TcpRelay::start_in(h, "127.0.0.1", target)
                        .await
                        .map_err(|e| format!("relay in {}: {e}", h.name))?;
                    addrs.push(relay.addr());
                    relays.push((node.name.clone(), relay));
                }
                format!("{section}:\n  hosts: {}\n", addrs.join(","))
            } else if options.dcs_relay {
                let (section, hosts) = etcd.section_and_hosts();
                let bind = network
                    .as_ref()
                    .map_or_else(|| "127.0.0.1".to_string(), |n| n.gateway());
                let relay = crate::relay::TcpRelay::start_on(&bind, &hosts[0])
                    .await
                    .map_err(|e| format!("relay: {e}"))?;
                let section = format!("{section}:\n  hosts: {}\n", relay.addr());
                relays.push((node.name.clone(), relay));
                section
            } else {
                etcd.yaml_section()
            };
            write_file(
                &node.config,
                &agent_yaml(&options, &node, &dcs_section, &tags),
            )
            .map_err(|e| e.to_string())?;
            nodes.push(node);
        }
        let mut cluster = LocalCluster {
            options,
            nodes,
            proxy: None,
            etcd,
            binary,
            relays,
            work,
            replication_links: vec![],
            network,
        };
        for i in 0..cluster.nodes.len() {
            if !cluster.options.start_agents {
                break;
            }
            let bin = cluster.binary.clone();
            cluster.nodes[i].start_agent(&bin)?;
        }
        if cluster.options.proxy {
            cluster.start_proxy()?;
        }
        Ok(cluster)
    }

    /// Starts the proxy on free ports.
    pub fn start_proxy(&mut self) -> Result<(), String> {
        let host = match &mut self.network {
            Some(net) => Some(match net.hosts().iter().find(|h| h.name == "proxy") {
                Some(h) => h.clone(),
                None => net.add_host("proxy")?,
            }),
            None => None,
        };
        let (ip, rw_port, ro_port, auto_port, metrics_port) = match &host {
            Some(h) => (h.ip.clone(), 5000, 5001, 5002, 9000),
            None => (
                "127.0.0.1".to_string(),
                free_port(),
                free_port(),
                free_port(),
                free_port(),
            ),
        };
        let config = self.work.path().join("proxy.yml");
        let yaml = format!(
            "scope: {scope}\nnamespace: /service/\n{dcs}praetor:\n  proxy:\n    read_write:\n      listen: {ip}:{rw_port}\n    read_only:\n      listen: {ip}:{ro_port}\n    auto:\n      listen: {ip}:{auto_port}\n    metrics:\n      listen: {ip}:{metrics_port}\n    connect_timeout: 5\n    auth_user: {SUPERUSER}\n    auth_password: {SUPERUSER_PASSWORD}\n",
            scope = self.options.scope,
            dcs = self.etcd.yaml_section(),
        );
        write_file(&config, &yaml).map_err(|e| e.to_string())?;
        let mut cmd = match &host {
            Some(h) => h.command(&self.binary),
            None => Command::new(&self.binary),
        };
        cmd.arg("proxy").arg("-c").arg(&config);
        cmd.env(
            "RUST_LOG",
            std::env::var("PRAETOR_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let process = Process::spawn("proxy", cmd, &self.work.path().join("proxy.log"))
            .map_err(|e| format!("cannot start the proxy: {e}"))?;
        self.proxy = Some(Proxy {
            ip,
            rw_port,
            ro_port,
            auto_port,
            metrics_port,
            config,
            process,
        });
        Ok(())
    }

    /// The DCS relay of member `name` (needs [`ClusterOptions::dcs_relay`]).
    pub fn relay(&self, name: &str) -> &crate::relay::TcpRelay {
        &self
            .relays
            .iter()
            .find(|(n, _)| n == name)
            .expect("started with dcs_relay")
            .1
    }

    /// Member `name`'s relays to the DCS servers, with [`ClusterOptions::dcs_links`] (one per
    /// server; empty without).
    pub fn dcs_links(&self, name: &str) -> Vec<&crate::relay::TcpRelay> {
        if !self.options.dcs_links {
            return vec![];
        }
        self.relays
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, r)| r)
            .collect()
    }

    /// Routes member `replica`'s connections to member `leader`'s PostgreSQL (its replication
    /// connection, whose address the agent takes from the leader's member data in the DCS)
    /// through a [`crate::relay::TcpRelay`], so a test can make that one link slow or lossy
    /// ([`crate::relay::TcpRelay::set_delay`], [`crate::relay::TcpRelay::set_loss`]) or cut it
    /// ([`crate::relay::TcpRelay::cut`]); returns the relay. Needs [`ClusterOptions::netns`].
    ///
    /// Why this way: `primary_conninfo` is built by the replica's agent from the leader's
    /// `conn_url`, the same for every replica, so no address can be changed for one replica
    /// without teaching the agent a test-only override. Instead the relay sits in the leader's
    /// host, in front of its PostgreSQL, and only connections from the replica's address are
    /// redirected to it (nftables, [`Network::redirect`]); every configuration stays as in
    /// production, and the hosts' faults (silence, partitions) still apply to the link, whose
    /// packets still cross the network (the relay's own hop to PostgreSQL is the leader host's
    /// loopback). The replica's WAL sender is terminated so that it reconnects through the relay,
    /// and the call returns once the leader's `pg_stat_replication` shows the replica streaming
    /// from the relay's address (up to 60 s). The route holds for `leader` only: after a failover
    /// the replica streams from the new leader directly.
    ///
    /// Errors: no such members, the relay cannot start, the rule cannot be set, the replica does
    /// not stream through the relay within 60 s.
    pub async fn relay_replication(
        &mut self,
        leader: &str,
        replica: &str,
    ) -> Result<&crate::relay::TcpRelay, String> {
        let (l, r) = (self.node(leader), self.node(replica));
        let host = l
            .host
            .clone()
            .ok_or("relay_replication needs ClusterOptions::netns")?;
        let (leader_pg, port, dsn) = (l.pg_addr(), l.pg_port, l.dsn());
        let replica_ip = r.ip.clone();
        let relay = crate::relay::TcpRelay::start_in(&host, &host.ip, &leader_pg)
            .await
            .map_err(|e| format!("relay in {}: {e}", host.name))?;
        self.net().redirect(leader, replica, port, relay.port)?;
        // The open replication connection keeps its path: end it so the next one is redirected.
        wait_for(
            &format!("{replica} streaming from {leader} through the relay"),
            Duration::from_secs(60),
            || async {
                let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let rows = client
                    .query(
                        "SELECT host(client_addr), state FROM pg_stat_replication \
                         WHERE application_name = $1",
                        &[&replica],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let through_relay = rows.iter().any(|row| {
                    row.get::<_, Option<String>>(0).as_deref() == Some(host.ip.as_str())
                        && row.get::<_, Option<String>>(1).as_deref() == Some("streaming")
                });
                if through_relay {
                    return Ok(());
                }
                client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_replication \
                         WHERE host(client_addr) = $1",
                        &[&replica_ip],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Err(format!(
                    "pg_stat_replication: {} rows for {replica}",
                    rows.len()
                ))
            },
        )
        .await?;
        self.replication_links
            .push((leader.to_string(), replica.to_string(), relay));
        Ok(&self.replication_links.last().expect("just pushed").2)
    }

    /// The network of hosts, with [`ClusterOptions::netns`]: silence, partition, heal
    /// ([`Network::silence`], [`Network::partition`], [`Network::one_way`], [`Network::heal`]...).
    /// Panics without it (a test's mistake).
    pub fn net(&mut self) -> &mut Network {
        self.network
            .as_mut()
            .expect("a cluster started with ClusterOptions::netns")
    }

    /// Stops etcd member `i` (0-based: `e1` is 0) with SIGKILL; its data stays. Needs a
    /// multi-member etcd ([`ClusterOptions::netns`] or [`DcsKind::EtcdCluster3`]). Stopping two of
    /// three loses the quorum: the DCS then refuses every write and the leader lock expires.
    pub fn stop_dcs_member(&mut self, i: usize) {
        match &mut self.etcd.servers {
            crate::dcs::DcsServers::EtcdCluster(c) => c.stop_member(i),
            crate::dcs::DcsServers::ZooKeeperEnsemble(z) => z.stop_member(i),
            _ => panic!("stop_dcs_member needs a DCS of several members"),
        }
    }

    /// Starts etcd member `i` again (same name, address and data), without waiting for it.
    pub fn start_dcs_member(&mut self, i: usize) -> Result<(), String> {
        match &mut self.etcd.servers {
            crate::dcs::DcsServers::EtcdCluster(c) => c.start_member(i),
            crate::dcs::DcsServers::ZooKeeperEnsemble(z) => z.start_member(i),
            _ => Err("start_dcs_member needs a DCS of several members".into()),
        }
    }

    /// Restarts the proxy (SIGKILL, then a new process on the same addresses and configuration).
    pub fn restart_proxy(&mut self) -> Result<(), String> {
        if let Some(mut p) = self.proxy.take() {
            p.process.kill_group();
        }
        self.start_proxy()
    }

    /// The DCS servers (to stop, restart or freeze them).
    pub fn dcs(&mut self) -> &mut LocalDcs {
        &mut self.etcd
    }

    /// The member named `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("a member of this cluster")
    }

    /// The member named `name`, mutably.
    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("a member of this cluster")
    }

    /// `/cluster` as most members see it: every member is asked, and the answer of the largest group
    /// agreeing on the running leader wins, so a member cut off from the DCS (whose view is stale)
    /// cannot outvote the others.
    pub async fn cluster_json(&self) -> Result<serde_json::Value, String> {
        let mut last = String::from("no member answered");
        let mut views: Vec<(Option<String>, serde_json::Value)> = Vec::new();
        // All at once, each bounded: a frozen agent accepts the connection but never answers.
        let mut asks = tokio::task::JoinSet::new();
        for n in &self.nodes {
            let addr = n.api_addr();
            asks.spawn(async move {
                tokio::time::timeout(Duration::from_secs(2), http_get(&addr, "/cluster"))
                    .await
                    .unwrap_or_else(|_| Err(format!("GET {addr}/cluster: timed out")))
            });
        }
        while let Some(answer) = asks.join_next().await {
            match answer.map_err(|e| e.to_string()).and_then(|a| a) {
                Ok((_, body)) => match serde_json::from_str::<serde_json::Value>(&body) {
                    Ok(v) => views.push((running_leader(&v), v)),
                    Err(e) => last = format!("/cluster: {e}"),
                },
                Err(e) => last = e,
            }
        }
        let votes = |leader: &Option<String>| views.iter().filter(|(l, _)| l == leader).count();
        views
            .iter()
            .max_by_key(|(l, _)| votes(l))
            .map(|(_, v)| v.clone())
            .ok_or(last)
    }

    /// The current leader's name according to `/cluster`, if there is one.
    pub async fn leader(&self) -> Option<String> {
        running_leader(&self.cluster_json().await.ok()?)
    }

    /// Waits until one member leads and `replicas` members stream from it, all on one timeline;
    /// returns the leader's name.
    pub async fn wait_healthy(&self, replicas: usize, timeout: Duration) -> Result<String, String> {
        wait_for("a leader and streaming replicas", timeout, || async {
            let c = self.cluster_json().await?;
            let members = c["members"].as_array().cloned().unwrap_or_default();
            let leader = members
                .iter()
                .find(|m| m["role"] == "leader" && m["state"] == "running")
                .ok_or_else(|| format!("no running leader in {c}"))?;
            let tl = &leader["timeline"];
            let streaming = members
                .iter()
                .filter(|m| {
                    m["role"] != "leader" && m["state"] == "streaming" && &m["timeline"] == tl
                })
                .count();
            if streaming < replicas {
                return Err(format!("{streaming} of {replicas} replicas streaming: {c}"));
            }
            let name = leader["name"].as_str().unwrap_or_default().to_string();
            // The leader key and `/cluster` move before a new leader's pg_promote() returns: healthy
            // means its PostgreSQL accepts writes, so a test's first write does not race the promotion.
            let node = self
                .nodes
                .iter()
                .find(|n| n.name == name)
                .ok_or_else(|| format!("leader {name} is not a member of this cluster"))?;
            let writable = tokio::time::timeout(Duration::from_secs(5), async {
                let (client, conn) = tokio_postgres::connect(&node.dsn(), tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let row = client
                    .query_one("SELECT NOT pg_is_in_recovery()", &[])
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<bool, String>(row.get(0))
            })
            .await
            .map_err(|_| format!("leader {name}: no answer within 5 s"))??;
            if !writable {
                return Err(format!("leader {name} is still in recovery"));
            }
            Ok(name)
        })
        .await
    }

    /// SIGTERMs every agent (replicas first, so the leader does not hand over on the way out) and the
    /// proxy, waiting for each; then kills what is left.
    pub async fn shutdown(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            p.process.signal(Signal::SIGTERM);
            let _ = p.process.wait_exit(Duration::from_secs(10)).await;
        }
        let leader = self.leader().await;
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by_key(|i| Some(&self.nodes[*i].name) == leader.as_ref());
        for i in order {
            let _ = self.nodes[i].stop_agent(Duration::from_secs(60)).await;
        }
        self.kill_all();
    }

    fn kill_all(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut p) = n.agent.take() {
                p.kill_group();
            }
            n.kill_postmaster();
            crate::sysv::remove_segment_of(&n.data_dir());
        }
        if let Some(mut p) = self.proxy.take() {
            p.process.kill_group();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The member a `/cluster` document shows as the running leader.
fn running_leader(cluster: &serde_json::Value) -> Option<String> {
    cluster["members"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == "leader" && m["state"] == "running")
        .and_then(|m| m["name"].as_str().map(str::to_string))
}

/// The agent configuration of `node`: Patroni's layout, short timings, rewind and slots on,
/// scram-sha-256 for everything over TCP. Dynamic shared memory lives in files of the data
/// directory (`dynamic_shared_memory_type: mmap`) rather than PostgreSQL's default POSIX segments
/// in `/dev/shm`: a killed postmaster whose data directory is then deleted leaks those segments
/// (nobody starts in that directory again to clean them up), and a day of nemesis kills leaked
/// ~8,000 of them (4.4 GB of memory) until `shmget` failed with ENOSPC and every later run failed
/// at initdb. No HA rule depends on the kind of dynamic shared memory.
fn agent_yaml(o: &ClusterOptions, node: &Node, dcs_section: &str, tags: &[&str]) -> String {
    let dir = node.dir.display();
    let ip = &node.ip;
    // Clients reach members from loopback, or from any address of the network (other members,
    // the proxy's host, the test process at the gateway).
    let clients = match ip.rsplit_once('.') {
        Some((subnet, _)) if node.host.is_some() => format!("{subnet}.0/24"),
        _ => "127.0.0.1/32".to_string(),
    };
    let bin = o.bin_dir.clone().unwrap_or_else(pg_bin_dir);
    let dcs_extra: String = o.dcs_extra.iter().map(|l| format!("    {l}\n")).collect();
    let postgresql_extra: String = o
        .postgresql_extra
        .iter()
        .map(|l| format!("  {l}\n"))
        .collect();
    let dcs_parameters: String = o
        .dcs_parameters
        .iter()
        .map(|l| format!("        {l}\n"))
        .collect();
    let mut tag_lines = String::new();
    for t in tags {
        tag_lines.push_str(&format!("  {t}\n"));
    }
    if tag_lines.is_empty() {
        tag_lines.push_str("  nofailover: false\n");
    }
    format!(
        r#"scope: {scope}
namespace: /service/
name: {name}
restapi:
  listen: {ip}:{api}
  connect_address: {ip}:{api}
{dcs_section}bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry}
    maximum_lag_on_failover: 1048576
{dcs_extra}    postgresql:
      use_pg_rewind: {rewind}
      use_slots: true
      parameters:
        wal_keep_size: 256MB
        max_connections: 100
        dynamic_shared_memory_type: mmap
{dcs_parameters}{hints}  initdb:
  - encoding: UTF8
  - locale: C
{checksums}  pg_hba:
  - local all all trust
  - host replication replicator {clients} scram-sha-256
  - host all all {clients} scram-sha-256
postgresql:
  listen: {ip}:{pg}
  connect_address: {ip}:{pg}
  data_dir: {dir}/data
  bin_dir: {bin}
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: {SUPERUSER}
      password: {SUPERUSER_PASSWORD}
    replication:
      username: replicator
      password: rep-pass
{rewind_role}  parameters:
    unix_socket_directories: '{dir}'
    shared_buffers: 32MB
    logging_collector: 'off'
{postgresql_extra}watchdog:
  mode: 'off'
tags:
{tag_lines}"#,
        scope = o.scope,
        name = node.name,
        api = node.api_port,
        pg = node.pg_port,
        ttl = o.ttl,
        loop_wait = o.loop_wait,
        retry = o.retry_timeout,
        rewind = o.use_pg_rewind,
        bin = bin.display(),
        hints = if o.data_checksums {
            ""
        } else {
            "        wal_log_hints: 'on'\n"
        },
        checksums = if o.data_checksums {
            "  - data-checksums\n"
        } else {
            ""
        },
        rewind_role = if o.rewind_user {
            "    rewind:\n      username: rewind_user\n      password: rewind-pass\n"
        } else {
            ""
        },
    )
}
