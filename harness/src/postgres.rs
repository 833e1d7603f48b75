//! A standalone PostgreSQL server on 127.0.0.1 for tests and benchmarks.
//!
//! [`Postgres::start`] runs `initdb` (trust authentication, so any user connects from 127.0.0.1 without
//! a password) and starts `postgres` on a free port with `listen_addresses=127.0.0.1` and its Unix socket
//! in a directory the server owns, then waits until it accepts connections. Dropping the value stops
//! the server (immediate shutdown, then SIGKILL of its process group if it lingers), so a failed test
//! leaves nothing behind. When the tests run as root, both programs run as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::{as_postgres, free_port, pg_bin_dir, wait_for, Process, WorkDir};

/// How long [`Postgres::start`] waits for the server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long dropping a [`Postgres`] waits for an immediate shutdown before killing the process group.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings applied to every server on top of `initdb`'s defaults: speed over durability (test data is
/// thrown away), logs on stderr (captured in the log file).
const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("logging_collector", "off"),
    ("max_connections", "100"),
];

/// A running standalone PostgreSQL on 127.0.0.1; stopped on drop.
pub struct Postgres {
    name: String,
    port: u16,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    process: Process,
}

impl Postgres {
    /// Initializes a cluster in `<dir>/<name>/data` and starts it on a free port with the default
    /// settings. Waits (up to 60 s) until it accepts connections.
    pub async fn start(dir: &WorkDir, name: &str) -> Result<Postgres, String> {
        Postgres::start_with(dir, name, &[]).await
    }

    /// Like [`Postgres::start`], with extra `postgresql.conf` settings (`("max_connections", "200")`)
    /// given on the command line after the defaults (a later setting wins).
    pub async fn start_with(
        dir: &WorkDir,
        name: &str,
        settings: &[(&str, &str)],
    ) -> Result<Postgres, String> {
        let base = dir
            .subdir(name, 0o755)
            .map_err(|e| format!("{name}: cannot create its directory: {e}"))?;
        let data_dir = dir
            .subdir(&format!("{name}/data"), 0o700)
            .map_err(|e| format!("{name}: cannot create the data directory: {e}"))?;
        let socket_dir = dir
            .subdir(&format!("{name}/socket"), 0o755)
            .map_err(|e| format!("{name}: cannot create the socket directory: {e}"))?;
        let bin = pg_bin_dir();

        let initdb_log = base.join("initdb.log");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .args(["--locale=C"]);
        as_postgres(&mut initdb);
        let out = tokio::task::spawn_blocking(move || initdb.output())
            .await
            .map_err(|e| format!("{name}: initdb task failed: {e}"))?
            .map_err(|e| format!("{name}: cannot run initdb ({}): {e}", bin.display()))?;
        let _ = std::fs::write(&initdb_log, [&out.stdout[..], &out.stderr[..]].concat());
        if !out.status.success() {
            return Err(format!(
                "{name}: initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }

        let port = free_port();
        let mut cmd = Command::new(pg_bin_dir().join("postgres"));
        cmd.arg("-D")
            .arg(&data_dir)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()));
        for (k, v) in DEFAULT_SETTINGS.iter().chain(settings) {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        as_postgres(&mut cmd);
        let log = base.join("postgres.log");
        let process = Process::spawn(name, cmd, &log)
            .map_err(|e| format!("{name}: cannot start postgres: {e}"))?;
        let mut pg = Postgres {
            name: name.to_string(),
            port,
            data_dir,
            socket_dir,
            process,
        };
        let ready = pg.wait_ready().await;
        if let Err(e) = ready {
            return Err(format!("{e}\n{name} log:\n{}", pg.log()));
        }
        Ok(pg)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let isready = pg_bin_dir().join("pg_isready");
        let port = self.port.to_string();
        let what = format!("{} to accept connections on port {}", self.name, self.port);
        let process = &mut self.process;
        // `Ok(false)`: the server exited, stop waiting at once.
        let alive = wait_for(&what, START_TIMEOUT, || {
            // Checked here, outside the future, so the future borrows nothing.
            let exited = !process.is_running();
            let out = Command::new(&isready)
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-t", "1"])
                .output();
            async move {
                if exited {
                    return Ok(false);
                }
                match out {
                    Ok(o) if o.status.success() => Ok(true),
                    Ok(o) => Err(String::from_utf8_lossy(&o.stdout).trim().to_string()),
                    Err(e) => Err(format!("cannot run pg_isready: {e}")),
                }
            }
        })
        .await?;
        if alive {
            Ok(())
        } else {
            Err(format!("{} exited during startup", self.name))
        }
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// A libpq keyword/value connection string for `dbname` as the `postgres` superuser over TCP
    /// (`host=127.0.0.1 port=P user=postgres dbname=D`), for tokio-postgres, psql and pgbench.
    pub fn conn_str(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    /// `postgres://postgres@127.0.0.1:P/postgres`, the form a member's `conn_url` takes.
    pub fn conn_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server's log (stderr) so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The postmaster process (to signal or kill it in a test).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Stops the server with an immediate shutdown (SIGQUIT), waiting up to 10 s, then kills its process
    /// group. Called by drop; calling it twice is harmless.
    pub fn stop(&mut self) {
        if self.process.is_running() {
            self.process.signal(Signal::SIGQUIT);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while self.process.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.process.kill_group();
        crate::sysv::remove_segment_of(&self.data_dir);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
