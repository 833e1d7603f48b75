//! DCS servers besides the single etcd of [`crate::Etcd`]: a standalone [`ZooKeeper`], a
//! [`ZooKeeperEnsemble`] of three and an [`EtcdCluster`] of three, each able to stop and start
//! single members; and [`LocalDcs`], whichever of them a [`crate::cluster::LocalCluster`] runs on.
//!
//! ZooKeeper is the Debian package's server class started directly (reference/local-services.md):
//! `java ... QuorumPeerMain zoo.cfg` with `tickTime=500`, so sessions as short as 1 s are granted
//! (2 × tickTime) and up to `maxSessionTimeout=60000`. Its log4j output goes to `zookeeper.log` in the
//! server's directory. The four-letter words `srvr` (to tell when a server serves), `ruok` and `cons`
//! (client sessions and their timeouts) are enabled.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::{etcd_binary, free_port, http_get, wait_for, Etcd, Process};

/// How long a server may take to come up (a JVM on a busy 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// ZooKeeper's `tickTime` in milliseconds: sessions may be as short as 2 ticks.
pub const ZOOKEEPER_TICK_MS: u32 = 500;
/// The longest session timeout the test servers grant, milliseconds.
pub const ZOOKEEPER_MAX_SESSION_MS: u32 = 60_000;

/// The `java` executable: `$PRAETOR_JAVA` or `java` on PATH.
pub fn java_binary() -> PathBuf {
    std::env::var_os("PRAETOR_JAVA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// ZooKeeper's class path after `conf_dir` (which holds log4j.properties): `$PRAETOR_ZOOKEEPER_CLASSPATH`,
/// else the Debian package's jar (whose manifest names its dependencies) with the log4j binding, else
/// an upstream installation's `lib/` under `/usr/share/zookeeper` or `/opt/zookeeper`.
fn zookeeper_classpath(conf_dir: &Path) -> String {
    let mut parts = vec![conf_dir.display().to_string()];
    if let Ok(cp) = std::env::var("PRAETOR_ZOOKEEPER_CLASSPATH") {
        parts.push(cp);
    } else if Path::new("/usr/share/java/zookeeper.jar").is_file() {
        parts.push("/usr/share/java/zookeeper.jar".into());
        for jar in ["slf4j-log4j12.jar", "log4j-1.2.jar"] {
            let p = Path::new("/usr/share/java").join(jar);
            if p.is_file() {
                parts.push(p.display().to_string());
            }
        }
    } else {
        for root in ["/usr/share/zookeeper", "/opt/zookeeper"] {
            parts.push(format!("{root}/*"));
            parts.push(format!("{root}/lib/*"));
        }
    }
    parts.join(":")
}

const LOG4J_PROPERTIES: &str = "log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} [myid:%X{myid}] %-5p [%t:%C{1}@%L] %m%n
";

/// One ZooKeeper server's address and ports.
#[derive(Debug, Clone)]
struct ZkPorts {
    /// The address it listens on (clients and peers): `127.0.0.1`, or its host's in a
    /// [`crate::netns::Network`].
    ip: String,
    client: u16,
    /// Quorum and election ports (ensemble members only).
    peer: u16,
    election: u16,
}

/// A ZooKeeper server on 127.0.0.1 (or on a host of a [`crate::netns::Network`]): standalone
/// ([`ZooKeeper::start`]) or a member of a [`ZooKeeperEnsemble`]. Killed (with its process group)
/// on drop.
pub struct ZooKeeper {
    /// `IP:PORT` (`127.0.0.1:PORT` on loopback): the `zookeeper.hosts` entry.
    pub endpoint: String,
    /// Client port.
    pub port: u16,
    /// The network namespace it runs in (`None`: the test's own).
    netns: Option<String>,
    /// `None` while stopped.
    process: Option<Process>,
    /// The server's directory: zoo.cfg, log4j.properties, data/, zookeeper.log.
    dir: PathBuf,
}

impl ZooKeeper {
    /// Starts a standalone ZooKeeper in `dir/zookeeper` and waits (up to 60 s) until it serves.
    pub async fn start(dir: &Path) -> Result<ZooKeeper, String> {
        let ports = ZkPorts {
            ip: "127.0.0.1".into(),
            client: free_port(),
            peer: 0,
            election: 0,
        };
        let mut zk = ZooKeeper::configure(&dir.join("zookeeper"), 0, &ports, &[], None)?;
        zk.spawn()?;
        zk.wait_serving(START_TIMEOUT).await?;
        Ok(zk)
    }

    /// Writes the configuration of server `id` (0: standalone) of `ensemble` under `dir`; the
    /// server will run in namespace `netns` (`None`: the test's own).
    fn configure(
        dir: &Path,
        id: usize,
        ports: &ZkPorts,
        ensemble: &[ZkPorts],
        netns: Option<String>,
    ) -> Result<ZooKeeper, String> {
        let data = dir.join("data");
        fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let mut cfg = format!(
            "tickTime={ZOOKEEPER_TICK_MS}\ninitLimit=10\nsyncLimit=5\ndataDir={data}\n\
             clientPort={port}\nclientPortAddress={ip}\nadmin.enableServer=false\n\
             maxSessionTimeout={ZOOKEEPER_MAX_SESSION_MS}\n4lw.commands.whitelist=srvr,ruok,cons\n",
            data = data.display(),
            port = ports.client,
            ip = ports.ip,
        );
        for (i, p) in ensemble.iter().enumerate() {
            cfg.push_str(&format!(
                "server.{}={}:{}:{}\n",
                i + 1,
                p.ip,
                p.peer,
                p.election
            ));
        }
        if id > 0 {
            fs::write(data.join("myid"), format!("{id}\n")).map_err(|e| e.to_string())?;
        }
        fs::write(dir.join("zoo.cfg"), cfg).map_err(|e| e.to_string())?;
        fs::write(dir.join("log4j.properties"), LOG4J_PROPERTIES).map_err(|e| e.to_string())?;
        Ok(ZooKeeper {
            endpoint: format!("{}:{}", ports.ip, ports.client),
            port: ports.client,
            netns,
            process: None,
            dir: dir.to_path_buf(),
        })
    }

    /// Starts the JVM (small heap, serial GC, C1 only: a test server starts faster and competes less
    /// for CPU).
    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(java_binary());
        if let Some(ns) = &self.netns {
            crate::netns::enter(&mut cmd, ns, false);
        }
        cmd.args([
            "-Xms16m",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            "-Djava.net.preferIPv4Stack=true",
        ])
        .arg(format!("-Dzookeeper.log.dir={}", self.dir.display()))
        .arg("-cp")
        .arg(zookeeper_classpath(&self.dir))
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(self.dir.join("zoo.cfg"));
        let process = Process::spawn("zookeeper", cmd, &self.dir.join("zookeeper.log"))
            .map_err(|e| format!("cannot start ZooKeeper ({}): {e}", java_binary().display()))?;
        self.process = Some(process);
        Ok(())
    }

    /// The server process while it runs (to signal it in tests).
    pub fn process(&mut self) -> Option<&mut Process> {
        self.process.as_mut()
    }

    /// The server's log (log4j output and JVM messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("zookeeper.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL to its process group); its data stays, so [`ZooKeeper::restart`]
    /// brings it back with its znodes and sessions.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill_group();
        }
    }

    /// Stops the server if it runs, starts it again on the same port and data, and waits (up to 60 s)
    /// until it serves. For an ensemble member that needs a quorum: use
    /// [`ZooKeeperEnsemble::start_member`] to start members without waiting.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()?;
        self.wait_serving(START_TIMEOUT).await
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, as behind a network
    /// partition. [`ZooKeeper::thaw`] resumes it.
    pub fn freeze(&self) {
        if let Some(p) = &self.process {
            p.signal(Signal::SIGSTOP);
        }
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        if let Some(p) = &self.process {
            p.signal(Signal::SIGCONT);
        }
    }

    /// The server's mode from `srvr` (`standalone`, `leader`, `follower`), or why there is none.
    pub async fn mode(&self) -> Result<String, String> {
        server_mode(&self.endpoint).await
    }

    /// The answer to a four-letter word (`srvr`, `ruok`, `cons` are enabled): `cons` lists the
    /// client connections with their session id (`sid=0x...`) and negotiated timeout (`to=...`, ms).
    pub async fn four_letter_word(&self, word: &str) -> Result<String, String> {
        four_letter_word(&self.endpoint, word).await
    }

    /// Waits until the server answers `srvr` with a mode, failing early if it exited.
    async fn wait_serving(&mut self, timeout: Duration) -> Result<(), String> {
        let endpoint = self.endpoint.clone();
        let process = &mut self.process;
        let r = wait_for("ZooKeeper to serve", timeout, || {
            let exited = process.as_mut().is_some_and(|p| !p.is_running());
            let endpoint = endpoint.clone();
            async move {
                if exited {
                    return Err("the ZooKeeper process exited".to_string());
                }
                server_mode(&endpoint).await.map(|_| ())
            }
        })
        .await;
        r.map_err(|e| format!("{e}\nZooKeeper log:\n{}", tail(&self.log(), 40)))
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The mode `srvr` reports for the server at `addr`.
async fn server_mode(addr: &str) -> Result<String, String> {
    let answer = four_letter_word(addr, "srvr").await?;
    answer
        .lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .map(|m| m.trim().to_string())
        .ok_or_else(|| format!("not serving: {}", answer.trim()))
}

/// Sends a ZooKeeper four-letter word to `addr` and returns the answer.
async fn four_letter_word(addr: &str, word: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.write_all(word.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), io)
        .await
        .map_err(|_| format!("{word} on {addr}: no answer within 3 s"))?
}

/// A ZooKeeper ensemble on 127.0.0.1 (or one server per host of a [`crate::netns::Network`])
/// whose members can be stopped and started one by one.
pub struct ZooKeeperEnsemble {
    /// The members (index 0 is server id 1).
    pub members: Vec<ZooKeeper>,
}

impl ZooKeeperEnsemble {
    /// Starts `size` servers under `dir/zookeeper-<id>` and waits (up to 60 s) until each is a leader
    /// or follower.
    pub async fn start(dir: &Path, size: usize) -> Result<ZooKeeperEnsemble, String> {
        let places = (0..size)
            .map(|_| {
                let ports = ZkPorts {
                    ip: "127.0.0.1".into(),
                    client: free_port(),
                    peer: free_port(),
                    election: free_port(),
                };
                (ports, None)
            })
            .collect();
        ZooKeeperEnsemble::start_at(dir, places).await
    }

    /// Starts one server in each of `hosts` (server ids 1, 2... in order), listening on the
    /// host's address with ZooKeeper's standard ports (client 2181, quorum 2888, election 3888),
    /// and waits (up to 60 s) until each is a leader or follower.
    pub async fn start_in(
        dir: &Path,
        hosts: &[crate::netns::Host],
    ) -> Result<ZooKeeperEnsemble, String> {
        let places = hosts
            .iter()
            .map(|h| {
                let ports = ZkPorts {
                    ip: h.ip.clone(),
                    client: 2181,
                    peer: 2888,
                    election: 3888,
                };
                (ports, Some(h.netns.clone()))
            })
            .collect();
        ZooKeeperEnsemble::start_at(dir, places).await
    }

    /// Starts one server per `(address and ports, namespace)`.
    async fn start_at(
        dir: &Path,
        places: Vec<(ZkPorts, Option<String>)>,
    ) -> Result<ZooKeeperEnsemble, String> {
        let ports: Vec<ZkPorts> = places.iter().map(|(p, _)| p.clone()).collect();
        let mut members = Vec::new();
        for (i, (p, netns)) in places.into_iter().enumerate() {
            let member_dir = dir.join(format!("zookeeper-{}", i + 1));
            members.push(ZooKeeper::configure(&member_dir, i + 1, &p, &ports, netns)?);
        }
        for m in &mut members {
            m.spawn()?;
        }
        let mut ensemble = ZooKeeperEnsemble { members };
        ensemble.wait_serving(START_TIMEOUT).await?;
        Ok(ensemble)
    }

    /// `host:port` of every member (the `zookeeper.hosts` list).
    pub fn hosts(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// Kills member `i` (0-based).
    pub fn stop_member(&mut self, i: usize) {
        self.members[i].stop();
    }

    /// Starts member `i` again (without waiting: it serves only once it has a quorum; see
    /// [`ZooKeeperEnsemble::wait_serving`]).
    pub fn start_member(&mut self, i: usize) -> Result<(), String> {
        self.members[i].stop();
        self.members[i].spawn()
    }

    /// Waits until every running member is a leader or follower.
    pub async fn wait_serving(&mut self, timeout: Duration) -> Result<(), String> {
        let members = &self.members;
        wait_for("every ZooKeeper member to serve", timeout, || async {
            let mut modes = Vec::new();
            for m in members.iter().filter(|m| m.process.is_some()) {
                match m.mode().await {
                    Ok(mode) if mode == "leader" || mode == "follower" => modes.push(mode),
                    Ok(mode) => return Err(format!("{}: mode {mode}", m.endpoint)),
                    Err(e) => return Err(format!("{}: {e}", m.endpoint)),
                }
            }
            Ok(modes)
        })
        .await
        .map(|_| ())
        .map_err(|e| {
            let logs: Vec<String> = members
                .iter()
                .map(|m| format!("--- {} ---\n{}", m.endpoint, tail(&m.log(), 20)))
                .collect();
            format!("{e}\n{}", logs.join("\n"))
        })
    }

    /// The index of the member that currently leads the ensemble.
    pub async fn leader_index(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.process.is_some() && m.mode().await.ok().as_deref() == Some("leader") {
                return Some(i);
            }
        }
        None
    }
}

/// One member of an [`EtcdCluster`].
pub struct EtcdMember {
    /// Member name (`e1`, `e2`, ...).
    pub name: String,
    /// Client URL, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Client port.
    pub port: u16,
    /// Peer port.
    pub peer_port: u16,
    /// Its address: `127.0.0.1`, or its host's address in a [`crate::netns::Network`].
    pub ip: String,
    /// The network namespace it runs in (`None`: the test's own).
    netns: Option<String>,
    dir: PathBuf,
    process: Option<Process>,
}

impl EtcdMember {
    /// The member's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// The process while it runs.
    pub fn process(&mut self) -> Option<&mut Process> {
        self.process.as_mut()
    }

    /// True while the member was started and not stopped.
    pub fn is_started(&self) -> bool {
        self.process.is_some()
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill_group();
        }
    }
}

/// An etcd cluster on 127.0.0.1 whose members can be stopped and started one by one.
pub struct EtcdCluster {
    /// The members.
    pub members: Vec<EtcdMember>,
    initial_cluster: String,
}

impl EtcdCluster {
    /// Starts `size` members under `dir/etcd-<name>` and waits (up to 60 s) until every member
    /// reports itself healthy (a leader exists).
    pub async fn start(dir: &Path, size: usize) -> Result<EtcdCluster, String> {
        let places = (0..size)
            .map(|_| ("127.0.0.1".to_string(), None, free_port(), free_port()))
            .collect();
        EtcdCluster::start_at(dir, places).await
    }

    /// Starts one member in each of `hosts` (named `e1`, `e2`... in order), listening on the
    /// host's address, client port 2379 and peer port 2380, and waits (up to 60 s) until every
    /// member is healthy.
    pub async fn start_in(dir: &Path, hosts: &[crate::netns::Host]) -> Result<EtcdCluster, String> {
        let places = hosts
            .iter()
            .map(|h| (h.ip.clone(), Some(h.netns.clone()), 2379, 2380))
            .collect();
        EtcdCluster::start_at(dir, places).await
    }

    /// Starts one member per `(ip, netns, client port, peer port)`.
    async fn start_at(
        dir: &Path,
        places: Vec<(String, Option<String>, u16, u16)>,
    ) -> Result<EtcdCluster, String> {
        let size = places.len();
        let mut members = Vec::new();
        for (i, (ip, netns, port, peer_port)) in places.into_iter().enumerate() {
            let name = format!("e{}", i + 1);
            let mdir = dir.join(format!("etcd-{name}"));
            fs::create_dir_all(mdir.join("data")).map_err(|e| e.to_string())?;
            members.push(EtcdMember {
                endpoint: format!("http://{ip}:{port}"),
                name,
                port,
                peer_port,
                ip,
                netns,
                dir: mdir,
                process: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, m.ip, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
        };
        for i in 0..size {
            cluster.start_member(i)?;
        }
        cluster.wait_healthy(START_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Client URLs of every member (the `etcd3.hosts` list).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// `IP:PORT` of every member.
    pub fn hosts(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}:{}", m.ip, m.port))
            .collect()
    }

    /// The index of the member leading the raft group now (the one whose `/metrics` report
    /// `etcd_server_is_leader 1`); `None` when no running member answers so.
    pub async fn leader_index(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.process.is_none() {
                continue;
            }
            let addr = format!("{}:{}", m.ip, m.port);
            if let Ok((200, body)) = crate::http_get(&addr, "/metrics").await {
                if body.lines().any(|l| l.trim() == "etcd_server_is_leader 1") {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Kills member `i` (0-based); its data stays.
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            p.kill_group();
        }
    }

    /// Starts member `i` (again), without waiting (it is healthy only with a quorum; see
    /// [`EtcdCluster::wait_healthy`]).
    pub fn start_member(&mut self, i: usize) -> Result<(), String> {
        self.stop_member(i);
        let m = &mut self.members[i];
        let peer_url = format!("http://{}:{}", m.ip, m.peer_port);
        let mut cmd = Command::new(etcd_binary());
        if let Some(ns) = &m.netns {
            crate::netns::enter(&mut cmd, ns, false);
        }
        cmd.args(["--name", &m.name, "--data-dir"])
            .arg(m.dir.join("data"))
            .args(["--listen-client-urls", &m.endpoint])
            .args(["--advertise-client-urls", &m.endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "praetor-test"])
            // Production's etcd (3.5 and later, etcd-io/etcd#12770) runs Raft's pre-vote by
            // default; Debian's 3.4 does not. Without it a member cut off by a partition raises
            // its term while away and, when the link heals, deposes the quorum's leader: the
            // nemesis saw seconds without an etcd leader after such heals (every agent and proxy
            // without a DCS), which production clusters do not have.
            .arg("--pre-vote=true")
            .args(["--log-level", "warn"]);
        let p = Process::spawn(&format!("etcd {}", m.name), cmd, &m.dir.join("etcd.log"))
            .map_err(|e| format!("cannot start etcd ({}): {e}", etcd_binary().display()))?;
        m.process = Some(p);
        Ok(())
    }

    /// Waits until every running member answers `/health` with `"health":"true"`.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let members = &mut self.members;
        let r = wait_for("every etcd member to be healthy", timeout, || {
            let checks: Vec<(String, String)> = members
                .iter_mut()
                .filter_map(|m| {
                    let alive = m.process.as_mut().map(|p| p.is_running())?;
                    Some((
                        format!("{}:{}", m.ip, m.port),
                        if alive { String::new() } else { m.name.clone() },
                    ))
                })
                .collect();
            async move {
                for (addr, exited) in checks {
                    if !exited.is_empty() {
                        return Err(format!("etcd {exited} exited"));
                    }
                    let (_, body) = http_get(&addr, "/health").await?;
                    if !body.contains("\"health\":\"true\"") {
                        return Err(format!("{addr}: {body}"));
                    }
                }
                Ok(())
            }
        })
        .await;
        r.map_err(|e| {
            let logs: Vec<String> = members
                .iter()
                .map(|m| format!("--- {} ---\n{}", m.name, tail(&m.log(), 20)))
                .collect();
            format!("{e}\n{}", logs.join("\n"))
        })
    }
}

/// Which DCS a [`crate::cluster::LocalCluster`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DcsKind {
    /// One etcd (the default).
    #[default]
    Etcd,
    /// One standalone ZooKeeper.
    ZooKeeper,
    /// A 3-member etcd cluster.
    EtcdCluster3,
    /// A 3-node ZooKeeper ensemble.
    ZooKeeperEnsemble3,
}

impl DcsKind {
    /// `etcd` or `zookeeper`: the family, as `PRAETOR_BENCH_DCS` and test names spell it.
    pub fn family(self) -> &'static str {
        match self {
            DcsKind::Etcd | DcsKind::EtcdCluster3 => "etcd",
            DcsKind::ZooKeeper | DcsKind::ZooKeeperEnsemble3 => "zookeeper",
        }
    }
}

/// The running servers of a [`LocalDcs`].
pub enum DcsServers {
    /// One etcd.
    Etcd(Etcd),
    /// One standalone ZooKeeper.
    ZooKeeper(ZooKeeper),
    /// An etcd cluster.
    EtcdCluster(EtcdCluster),
    /// A ZooKeeper ensemble.
    ZooKeeperEnsemble(ZooKeeperEnsemble),
}

/// The DCS of a local cluster: its servers and how clients reach them.
pub struct LocalDcs {
    /// The client endpoints as written into the configuration: one etcd URL, or
    /// `host:port,host:port` for several servers.
    pub endpoint: String,
    /// The servers.
    pub servers: DcsServers,
}

impl LocalDcs {
    /// Starts the DCS `kind` with its data under `dir`.
    pub async fn start(kind: DcsKind, dir: &Path) -> Result<LocalDcs, String> {
        let servers = match kind {
            DcsKind::Etcd => DcsServers::Etcd(Etcd::start(dir).await?),
            DcsKind::ZooKeeper => DcsServers::ZooKeeper(ZooKeeper::start(dir).await?),
            DcsKind::EtcdCluster3 => DcsServers::EtcdCluster(EtcdCluster::start(dir, 3).await?),
            DcsKind::ZooKeeperEnsemble3 => {
                DcsServers::ZooKeeperEnsemble(ZooKeeperEnsemble::start(dir, 3).await?)
            }
        };
        let endpoint = match &servers {
            DcsServers::Etcd(e) => e.endpoint.clone(),
            DcsServers::ZooKeeper(z) => z.endpoint.clone(),
            DcsServers::EtcdCluster(c) => c.endpoints().join(","),
            DcsServers::ZooKeeperEnsemble(z) => z.hosts().join(","),
        };
        Ok(LocalDcs { endpoint, servers })
    }

    /// The configuration section naming this DCS (`etcd3:` or `zookeeper:` with its `hosts`), as
    /// YAML lines ending in a newline.
    pub fn yaml_section(&self) -> String {
        let (section, hosts) = self.section_and_hosts();
        format!("{section}:\n  hosts: {}\n", hosts.join(","))
    }

    /// The YAML section name (`etcd3` or `zookeeper`) and the `host:port` of every server.
    pub fn section_and_hosts(&self) -> (&'static str, Vec<String>) {
        match &self.servers {
            DcsServers::Etcd(e) => ("etcd3", vec![format!("127.0.0.1:{}", e.port)]),
            DcsServers::EtcdCluster(c) => ("etcd3", c.hosts()),
            DcsServers::ZooKeeper(z) => ("zookeeper", vec![z.endpoint.clone()]),
            DcsServers::ZooKeeperEnsemble(z) => ("zookeeper", z.hosts()),
        }
    }

    /// The single etcd, when that is the DCS.
    pub fn etcd(&mut self) -> Option<&mut Etcd> {
        match &mut self.servers {
            DcsServers::Etcd(e) => Some(e),
            _ => None,
        }
    }

    /// Kills every DCS server (the whole DCS becomes unreachable); data stays.
    pub fn stop(&mut self) {
        match &mut self.servers {
            DcsServers::Etcd(e) => e.stop(),
            DcsServers::ZooKeeper(z) => z.stop(),
            DcsServers::EtcdCluster(c) => (0..c.members.len()).for_each(|i| c.stop_member(i)),
            DcsServers::ZooKeeperEnsemble(z) => (0..z.members.len()).for_each(|i| z.stop_member(i)),
        }
    }

    /// Starts every DCS server again and waits until the DCS serves.
    pub async fn restart(&mut self) -> Result<(), String> {
        match &mut self.servers {
            DcsServers::Etcd(e) => e.restart().await,
            DcsServers::ZooKeeper(z) => z.restart().await,
            DcsServers::EtcdCluster(c) => {
                for i in 0..c.members.len() {
                    c.start_member(i)?;
                }
                c.wait_healthy(START_TIMEOUT).await
            }
            DcsServers::ZooKeeperEnsemble(z) => {
                for i in 0..z.members.len() {
                    z.start_member(i)?;
                }
                z.wait_serving(START_TIMEOUT).await
            }
        }
    }

    /// The index of the server leading a DCS of several (etcd's raft leader, ZooKeeper's
    /// leader); `None` for a single server, or when none answers as the leader.
    pub async fn leader_index(&self) -> Option<usize> {
        match &self.servers {
            DcsServers::EtcdCluster(c) => c.leader_index().await,
            DcsServers::ZooKeeperEnsemble(z) => z.leader_index().await,
            DcsServers::Etcd(_) | DcsServers::ZooKeeper(_) => None,
        }
    }

    /// The number of DCS servers.
    pub fn member_count(&self) -> usize {
        match &self.servers {
            DcsServers::Etcd(_) | DcsServers::ZooKeeper(_) => 1,
            DcsServers::EtcdCluster(c) => c.members.len(),
            DcsServers::ZooKeeperEnsemble(z) => z.members.len(),
        }
    }

    /// A short name of server `i` for reports (`etcd e2`, `zookeeper 2`).
    pub fn member_name(&self, i: usize) -> String {
        match &self.servers {
            DcsServers::Etcd(_) => "etcd".into(),
            DcsServers::ZooKeeper(_) => "zookeeper".into(),
            DcsServers::EtcdCluster(c) => format!("etcd {}", c.members[i].name),
            DcsServers::ZooKeeperEnsemble(_) => format!("zookeeper {}", i + 1),
        }
    }

    /// Kills DCS server `i` (0-based; the only server of a single-server DCS); data stays.
    pub fn stop_member(&mut self, i: usize) {
        match &mut self.servers {
            DcsServers::Etcd(e) => e.stop(),
            DcsServers::ZooKeeper(z) => z.stop(),
            DcsServers::EtcdCluster(c) => c.stop_member(i),
            DcsServers::ZooKeeperEnsemble(z) => z.stop_member(i),
        }
    }

    /// Starts DCS server `i` again. A member of several returns at once (it serves only once it
    /// has a quorum); a single server is waited for, as [`LocalDcs::restart`] does.
    pub async fn start_member(&mut self, i: usize) -> Result<(), String> {
        match &mut self.servers {
            DcsServers::Etcd(e) => e.restart().await,
            DcsServers::ZooKeeper(z) => z.restart().await,
            DcsServers::EtcdCluster(c) => c.start_member(i),
            DcsServers::ZooKeeperEnsemble(z) => z.start_member(i),
        }
    }

    /// Freezes (SIGSTOP) or resumes (SIGCONT) every DCS server: unreachable but not restarted, as
    /// behind a network partition.
    pub fn set_frozen(&mut self, frozen: bool) {
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        let mut processes: Vec<&mut Process> = match &mut self.servers {
            DcsServers::Etcd(e) => vec![e.process()],
            DcsServers::ZooKeeper(z) => z.process().into_iter().collect(),
            DcsServers::EtcdCluster(c) => c
                .members
                .iter_mut()
                .filter_map(|m| m.process.as_mut())
                .collect(),
            DcsServers::ZooKeeperEnsemble(z) => z
                .members
                .iter_mut()
                .filter_map(|m| m.process.as_mut())
                .collect(),
        };
        for p in processes.iter_mut() {
            p.signal(signal);
        }
    }
}
