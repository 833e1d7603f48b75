//! What `deploy/` ships: the systemd units pass `systemd-analyze verify` and say what the agent
//! needs (Type=notify, User=postgres, KillMode=process, ExecReload=SIGHUP); the example
//! configurations load for their roles; and a real agent tells systemd READY=1 after its first
//! loop, logs JSON lines with `log.format: json`, and changes its level on SIGHUP.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (unit, must) in [
        (
            "praetor-agent.service",
            &[
                "Type=notify",
                "User=postgres",
                "KillMode=process",
                "ExecReload=/bin/kill -HUP $MAINPID",
                "ExecStart=/usr/local/bin/praetor agent -c /etc/praetor/agent.yml",
            ][..],
        ),
        (
            "praetor-proxy.service",
            &[
                "ExecReload=/bin/kill -HUP $MAINPID",
                "ExecStart=/usr/local/bin/praetor proxy -c /etc/praetor/proxy.yml",
            ][..],
        ),
    ] {
        let text = std::fs::read_to_string(repo().join("deploy/systemd").join(unit)).unwrap();
        for line in must {
            assert!(text.lines().any(|l| l == *line), "{unit} lacks {line}");
        }
        // systemd-analyze checks that ExecStart's program exists: point it at the binary built
        // for these tests (the shipped path is /usr/local/bin/praetor).
        let path = dir.path().join(unit);
        std::fs::write(
            &path,
            text.replace(
                "/usr/local/bin/praetor",
                &praetor_harness::praetor_beside_current_exe().to_string_lossy(),
            ),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze (the systemd package; scripts/setup installs it)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // It reports bad lines as warnings with exit code 0: any line about our unit fails.
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(unit)).collect();
        assert!(out.status.success(), "{unit}: {stderr}");
        assert!(ours.is_empty(), "{unit}: {}", ours.join("\n"));
    }
}

#[test]
fn example_configurations_load_for_their_roles() {
    let agent = Command::new(praetor_harness::praetor_beside_current_exe())
        .args(["agent", "--validate-config", "-c"])
        .arg(repo().join("deploy/agent.yml"))
        .output()
        .unwrap();
    assert!(
        agent.status.success() && agent.stderr.is_empty(),
        "deploy/agent.yml: {}{}",
        String::from_utf8_lossy(&agent.stdout),
        String::from_utf8_lossy(&agent.stderr)
    );
    let proxy = praetor_config::load_file(&repo().join("deploy/proxy.yml")).unwrap();
    assert!(proxy.warnings.is_empty(), "{:?}", proxy.warnings);
    let p = proxy.config.validate_proxy().expect("proxy role");
    praetor_proxy::ProxySettings::from_config(&p).expect("proxy settings");
    let ctl = praetor_config::load_file(&repo().join("deploy/ctl.yml")).unwrap();
    assert!(ctl.warnings.is_empty(), "{:?}", ctl.warnings);
    ctl.config.validate_dcs_client().expect("ctl finds the DCS");
    assert!(ctl.config.ctl.authentication.is_some());
}

/// A unix datagram socket standing in for systemd's NOTIFY_SOCKET.
fn notify_socket(dir: &Path) -> (std::os::unix::net::UnixDatagram, PathBuf) {
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    sock.set_nonblocking(true).unwrap();
    (sock, path)
}

#[tokio::test]
async fn the_agent_notifies_systemd_logs_json_and_changes_its_level_on_sighup() {
    let mut c = healthy_cluster(ClusterOptions {
        scope: "deploy".into(),
        nodes: 2,
        proxy: false,
        ..Default::default()
    })
    .await;
    let leader = c.leader().await.expect("leader");
    let name = others(&c, &leader)[0].clone();
    let bin = c.binary.clone();
    let work = c.work.path().to_path_buf();
    let node = c.node_mut(&name);
    node.stop_agent(Duration::from_secs(60))
        .await
        .expect("agent stops");
    let config =
        std::fs::read_to_string(&node.config).unwrap() + "log:\n  level: INFO\n  format: json\n";
    praetor_harness::write_file(&node.config, &config).unwrap();
    let (sock, sock_path) = notify_socket(&work);
    let log = node.dir.join("agent-json.log");
    let mut cmd = Command::new(&bin);
    cmd.arg("agent")
        .arg("-c")
        .arg(&node.config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("RUST_LOG");
    praetor_harness::as_postgres(&mut cmd);
    let agent = praetor_harness::Process::spawn(&name, cmd, &log).expect("agent");
    let ready = wait_for("READY=1 on NOTIFY_SOCKET", Duration::from_secs(60), || {
        let mut buf = [0u8; 512];
        let r = match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                if msg.lines().any(|l| l == "READY=1") {
                    Ok(msg)
                } else {
                    Err(format!("got {msg:?}"))
                }
            }
            Err(e) => Err(e.to_string()),
        };
        async move { r }
    })
    .await
    .unwrap();
    assert!(ready.contains("READY=1"));
    let lines = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let first = std::fs::read_to_string(&log).unwrap();
    let entries = lines(&first);
    assert!(!entries.is_empty(), "JSON log lines: {first}");
    assert!(entries
        .iter()
        .all(|e| e["level"].is_string() && e["fields"]["message"].is_string()));
    assert!(
        !entries.iter().any(|e| e["level"] == "DEBUG"),
        "INFO hides debug lines"
    );
    // SIGHUP applies a new log.level from the file.
    let config = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("  level: INFO\n", "  level: DEBUG\n");
    praetor_harness::write_file(&node.config, &config).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("debug lines after SIGHUP", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let entries = lines(&text);
        let switched = entries
            .iter()
            .any(|e| e["fields"]["message"] == "SIGHUP: log level is now debug");
        let debug = entries.iter().any(|e| e["level"] == "DEBUG");
        let r = if switched && debug {
            Ok(())
        } else {
            Err(format!("switched={switched} debug={debug}"))
        };
        async move { r }
    })
    .await
    .unwrap();
    drop(agent);
}

/// Receives datagrams on `sock` until one has the line `line` (the proxy may send others first).
async fn notified(sock: &std::os::unix::net::UnixDatagram, line: &'static str) -> String {
    wait_for(
        &format!("{line} on NOTIFY_SOCKET"),
        Duration::from_secs(60),
        || {
            let mut buf = [0u8; 512];
            let r = match sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    if msg.lines().any(|l| l == line) {
                        Ok(msg)
                    } else {
                        Err(format!("got {msg:?}"))
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            async move { r }
        },
    )
    .await
    .unwrap()
}

/// The proxy unit is `Type=notify`: READY=1 once the listeners are bound and the DCS was read,
/// RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM.
#[tokio::test]
async fn the_proxy_notifies_systemd_when_ready_reloading_and_stopping() {
    let work = praetor_harness::WorkDir::new("proxy-notify").unwrap();
    let dcs =
        praetor_harness::dcs::LocalDcs::start(praetor_harness::dcs::DcsKind::Etcd, work.path())
            .await
            .expect("etcd");
    let port = praetor_harness::free_port;
    let config = work.path().join("proxy.yml");
    praetor_harness::write_file(
        &config,
        &format!(
            "scope: notify\nnamespace: /service/\n{}praetor:\n  proxy:\n    read_write: {{listen: '127.0.0.1:{}'}}\n    admin: {{listen: '127.0.0.1:{}'}}\n    admin_auth: trust\n",
            dcs.yaml_section(),
            port(),
            port()
        ),
    )
    .unwrap();
    let (sock, sock_path) = notify_socket(work.path());
    let mut cmd = Command::new(binary());
    cmd.arg("proxy")
        .arg("-c")
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path);
    let log = work.path().join("proxy.log");
    let mut proxy = praetor_harness::Process::spawn("proxy", cmd, &log).expect("proxy");
    notified(&sock, "READY=1").await;
    assert!(
        proxy.log().contains("the DCS was read: ready"),
        "READY=1 only after the DCS was read:\n{}",
        proxy.log()
    );
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    notified(&sock, "RELOADING=1").await;
    notified(&sock, "READY=1").await;
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    notified(&sock, "STOPPING=1").await;
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(60)).await.unwrap(),
        Some(0),
        "{}",
        proxy.log()
    );
}
