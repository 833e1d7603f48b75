//! Hosts in Linux network namespaces, for tests whose failures must look like production's: a
//! silent host (connects and reads hang, nothing is refused), a partition that only some members
//! see, one-way loss. Needs root (CI runs as root), `ip` (iproute2) and `nft` (nftables).
//!
//! Layout of one [`Network`] (every name unique per test process and network):
//!
//! ```text
//!   test process (root namespace)       bridge namespace praetor-<pid>-<n>-br
//!   prn<k>: 198.18.X.1/24 <-- veth --> gw --+
//!                                           br0 -- h1 <-- veth --> eth0 of praetor-<pid>-<n>-e1: 198.18.X.10
//!                                               -- h2 <-- veth --> eth0 of praetor-<pid>-<n>-e2: 198.18.X.11 ...
//! ```
//!
//! Addresses come from 198.18.0.0/15 (RFC 2544, reserved for benchmark networks); slot `k` (0..512)
//! is claimed per network with a file under `/run/praetor-netns/` so parallel test processes never
//! share a /24. The bridge lives in a namespace of its own and is never attached to a host
//! interface: nothing leaves the machine. The test process reaches every host through one veth
//! (`prn<k>`, 198.18.X.1) whose only route is the network's /24, so clients in the test (writers,
//! `/cluster` polls, the proxy's ports) connect to hosts' addresses directly.
//!
//! Processes run inside a host by `setns(2)` before `exec` ([`Host::command`]), so everything they
//! spawn (PostgreSQL under the agent) stays in the host. Faults are nftables rules in a table
//! `inet praetor` of each host's namespace ([`Network::silence`], [`Network::partition`],
//! [`Network::one_way`], [`Network::heal`]) or the host's bridge port going down
//! ([`Network::unplug`]). This kernel has no `tc netem`; slow and lossy links are
//! [`crate::relay::TcpRelay`]s with a delay and a loss rate, listening on [`Network::gateway`].
//!
//! [`Network::new`] fails with the reason (not root, no `ip`/`nft`, namespaces refused) and never
//! falls back to loopback: a test that needs namespaces must fail loudly where they are missing.
//! Dropping a [`Network`] deletes its namespaces (which deletes every veth and the bridge) and its
//! slot claim, also when a test panics. Stale namespaces and claims of dead test processes are
//! removed by the next [`Network::new`].

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::unistd::Uid;

/// Where slot claims live (one file per claimed /24, holding the claimant's PID).
const CLAIMS: &str = "/run/praetor-netns";
/// Prefix of every namespace this module creates: `praetor-<pid>-<n>-<host>`.
const PREFIX: &str = "praetor-";
/// Number of /24 networks in 198.18.0.0/15.
const SLOTS: u32 = 512;

/// A host of a [`Network`]: a network namespace with one interface `eth0` on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Short name given to [`Network::add_host`] (`pg1`, `e1`, `proxy`...).
    pub name: String,
    /// The namespace's name (`ip netns` name, file under `/run/netns/`).
    pub netns: String,
    /// Its IPv4 address on the network, e.g. `198.18.7.10`.
    pub ip: String,
    /// The host's port on the bridge (an interface of the bridge namespace), e.g. `h1`.
    port: String,
}

impl Host {
    /// A command that runs inside this host's namespace, as root.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        enter(&mut cmd, &self.netns, false);
        cmd
    }

    /// Runs `f` on a new thread that has joined this host's namespace, and returns its result:
    /// sockets `f` opens belong to the host (a listener on [`Host::ip`], a client whose packets
    /// the host's faults drop). Errors when the namespace cannot be joined.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let path = Path::new("/run/netns").join(&self.netns);
        let file = fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only; the fd stays open for the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| "the thread panicked".to_string())?
    }

    /// A command that runs inside this host's namespace as the `postgres` user when this process
    /// is root (PostgreSQL refuses root), like [`crate::as_postgres`].
    pub fn command_as_postgres(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        enter(&mut cmd, &self.netns, true);
        cmd
    }
}

/// Makes `cmd` join the network namespace `netns` (by `setns(2)` on `/run/netns/<netns>` between
/// fork and exec) and, with `as_postgres`, then drop to the `postgres` user. Done in one `pre_exec`
/// because std applies `Command::uid` before `pre_exec` closures run, after which `setns` is refused.
pub fn enter(cmd: &mut Command, netns: &str, as_postgres: bool) {
    let path = Path::new("/run/netns").join(netns);
    let ids = if as_postgres {
        crate::postgres_ids()
    } else {
        None
    };
    if ids.is_some() {
        cmd.env("HOME", std::env::temp_dir());
    }
    // SAFETY: the closure only calls async-signal-safe syscalls (open was done before the fork;
    // setns, setgroups, setgid, setuid) and allocates nothing.
    let file = fs::File::open(&path);
    unsafe {
        cmd.pre_exec(move || {
            let f = file.as_ref().map_err(|e| std::io::Error::from(e.kind()))?;
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((uid, gid)) = ids {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A bridge in a namespace of its own, the hosts on it and the test process's veth into it.
pub struct Network {
    /// Namespace prefix of this network, `praetor-<pid>-<n>`.
    prefix: String,
    /// The /24's first three octets, e.g. `198.18.7`.
    subnet: String,
    slot: u32,
    hosts: Vec<Host>,
    /// Hosts whose bridge port is down ([`Network::unplug`]).
    unplugged: Vec<String>,
}

impl Network {
    /// Creates the bridge namespace and the test process's veth into it (198.18.X.1/24).
    ///
    /// Errors, each with the reason and what to do: not root; `ip` or `nft` missing (run
    /// `scripts/setup`); the kernel or the container refuses namespaces or veth pairs; every slot
    /// taken.
    pub fn new() -> Result<Network, String> {
        if !Uid::effective().is_root() {
            return Err("network namespaces need root (CI runs the tests as root)".into());
        }
        for tool in ["ip", "nft"] {
            if Command::new(tool)
                .arg("-V")
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
            {
                return Err(format!(
                    "`{tool}` is missing: run scripts/setup (packages iproute2 and nftables)"
                ));
            }
        }
        clean_stale();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("{PREFIX}{}-{n}", std::process::id());
        let slot = claim_slot()?;
        let subnet = format!("198.{}.{}", 18 + slot / 256, slot % 256);
        let net = Network {
            prefix,
            subnet,
            slot,
            hosts: vec![],
            unplugged: vec![],
        };
        let br = net.bridge_ns();
        let root_if = net.root_if();
        // A leftover of a dead claimant of this slot (its namespace gone, or never made).
        let _ = Command::new("ip")
            .args(["link", "del", &root_if])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &br])?;
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", "gw", "netns", &br,
        ])?;
        ip(&["-n", &br, "link", "set", "gw", "master", "br0"])?;
        ip(&["-n", &br, "link", "set", "gw", "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway()),
            "dev",
            &root_if,
        ])?;
        ip(&["link", "set", &root_if, "up"])?;
        Ok(net)
    }

    /// The test process's own address on this network (`198.18.X.1`): where a
    /// [`crate::relay::TcpRelay`] between hosts listens.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// Adds a host named `name` (unique in this network, at most 8 characters) with the next
    /// address (198.18.X.10, .11, ...), `lo` up and an empty nftables table for faults.
    pub fn add_host(&mut self, name: &str) -> Result<Host, String> {
        if self.hosts.iter().any(|h| h.name == name) {
            return Err(format!("host {name} exists already"));
        }
        let i = self.hosts.len();
        if i >= 200 {
            return Err("at most 200 hosts per network".into());
        }
        let host = Host {
            name: name.to_string(),
            netns: format!("{}-{name}", self.prefix),
            ip: format!("{}.{}", self.subnet, 10 + i),
            port: format!("h{}", i + 1),
        };
        let br = self.bridge_ns();
        ip(&["netns", "add", &host.netns])?;
        self.hosts.push(host.clone());
        ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &br,
            "link",
            "add",
            &host.port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &host.netns,
        ])?;
        ip(&["-n", &br, "link", "set", &host.port, "master", "br0"])?;
        ip(&["-n", &br, "link", "set", &host.port, "up"])?;
        ip(&[
            "-n",
            &host.netns,
            "addr",
            "add",
            &format!("{}/24", host.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
        nft(
            &host.netns,
            "add table inet praetor\n\
             add chain inet praetor input { type filter hook input priority 0; policy accept; }\n\
             add chain inet praetor output { type filter hook output priority 0; policy accept; }\n",
        )?;
        Ok(host)
    }

    /// Every host, in the order added.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host named `name`. Panics if there is none (a test's mistake).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in this network"))
    }

    /// Silences host `name` as a blackholed or powered-off-but-cabled host looks: every packet to
    /// and from it is dropped (nftables in its namespace, loopback excepted), so connects to it
    /// hang until the caller's timeout, open connections get no answer and no RST, and nothing it
    /// sends arrives. ARP still answers, so peers never see "no route to host". Undone by
    /// [`Network::heal`] or [`Network::heal_host`].
    pub fn silence(&self, name: &str) -> Result<(), String> {
        let h = self.host(name);
        nft(
            &h.netns,
            "add rule inet praetor input iifname != \"lo\" drop\n\
             add rule inet praetor output oifname != \"lo\" drop\n",
        )
    }

    /// Drops every packet from host `from` to host `to` (one way: `to` can still send to `from`,
    /// though TCP in either direction then stalls, since its handshake needs both ways). Rules
    /// add up; undone by [`Network::heal`].
    pub fn one_way(&self, from: &str, to: &str) -> Result<(), String> {
        let (f, t) = (self.host(from), self.host(to));
        nft(
            &f.netns,
            &format!("add rule inet praetor output ip daddr {} drop\n", t.ip),
        )
    }

    /// Partitions the hosts in `a` from those in `b`, both ways: each side still reaches its own
    /// side, the test process and hosts in neither list. Undone by [`Network::heal`].
    pub fn partition(&self, a: &[&str], b: &[&str]) -> Result<(), String> {
        for x in a {
            for y in b {
                self.one_way(x, y)?;
                self.one_way(y, x)?;
            }
        }
        Ok(())
    }

    /// Takes host `name`'s bridge port down, as a pulled cable or a dead host on the same L2 looks:
    /// nothing passes, and once ARP entries expire peers' connects fail with "no route to host"
    /// (EHOSTUNREACH) after about 3 s instead of hanging. Undone by [`Network::heal`].
    pub fn unplug(&mut self, name: &str) -> Result<(), String> {
        let port = self.host(name).port.clone();
        ip(&["-n", &self.bridge_ns(), "link", "set", &port, "down"])?;
        self.unplugged.push(name.to_string());
        Ok(())
    }

    /// Redirects, inside host `host`, every new TCP connection from host `from` to `host`'s
    /// `port` onto `host`'s port `to_port` (nftables `redirect` in a nat prerouting chain of a
    /// table `ip praetor_nat` of `host`'s namespace): how a relay listening on `to_port` in `host`
    /// gets in front of a server for one client host only, with neither side's configuration
    /// changed. Connections open before the call keep their path (NAT is decided at a
    /// connection's first packet). A redirect is routing, not a fault: [`Network::heal`] leaves it.
    pub fn redirect(&self, host: &str, from: &str, port: u16, to_port: u16) -> Result<(), String> {
        let (h, f) = (self.host(host), self.host(from));
        nft(
            &h.netns,
            &format!(
                "add table ip praetor_nat\n\
                 add chain ip praetor_nat prerouting {{ type nat hook prerouting priority -100; policy accept; }}\n\
                 add rule ip praetor_nat prerouting ip saddr {} tcp dport {port} redirect to :{to_port}\n",
                f.ip
            ),
        )
    }

    /// Removes every fault of host `name` (its nftables rules; its bridge port up).
    pub fn heal_host(&mut self, name: &str) -> Result<(), String> {
        let h = self.host(name).clone();
        nft(
            &h.netns,
            "flush chain inet praetor input\nflush chain inet praetor output\n",
        )?;
        if self.unplugged.contains(&h.name) {
            ip(&["-n", &self.bridge_ns(), "link", "set", &h.port, "up"])?;
            self.unplugged.retain(|n| n != &h.name);
        }
        Ok(())
    }

    /// Removes every fault on every host: all nftables rules flushed, every bridge port up.
    pub fn heal(&mut self) -> Result<(), String> {
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        for n in names {
            self.heal_host(&n)?;
        }
        Ok(())
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    fn root_if(&self) -> String {
        format!("prn{}", self.slot)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces, and a veth goes with either end: the hosts'
        // namespaces first, then the bridge's (which takes `prn<k>` in the root namespace along).
        for h in &self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &h.netns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.bridge_ns()])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_file(claim_path(self.slot));
    }
}

/// Runs `ip ARGS`; an error carries the command and its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Runs the nftables `script` inside namespace `netns`.
fn nft(netns: &str, script: &str) -> Result<(), String> {
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    enter(&mut cmd, netns, false);
    let mut child = cmd.spawn().map_err(|e| format!("nft in {netns}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft in {netns}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft in {netns}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft in {netns}: {} (script: {script:?})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn claim_path(slot: u32) -> PathBuf {
    Path::new(CLAIMS).join(slot.to_string())
}

/// Claims a free /24 slot: creates `/run/praetor-netns/<k>` exclusively with this process's PID.
/// A claim whose process is gone is taken over.
fn claim_slot() -> Result<u32, String> {
    fs::create_dir_all(CLAIMS).map_err(|e| format!("{CLAIMS}: {e}"))?;
    // Start at a slot derived from the PID so parallel processes rarely contend.
    let start = std::process::id() % SLOTS;
    for i in 0..SLOTS {
        let slot = (start + i) % SLOTS;
        let path = claim_path(slot);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                let _ = write!(f, "{}", std::process::id());
                return Ok(slot);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner: Option<u32> = fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                // An empty file is a claim being written right now: leave it alone.
                if owner.is_some_and(|pid| !alive(pid)) {
                    let _ = fs::remove_file(&path);
                }
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Err(format!(
        "every one of the {SLOTS} /24 networks in 198.18.0.0/15 is claimed (see {CLAIMS})"
    ))
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Deletes namespaces `praetor-<pid>-...` whose test process is gone (a test killed before its drop).
fn clean_stale() {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| !alive(p)) {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}
