//! Issue 15 items 4 and 5 on a real cluster (etcd, two PostgreSQL members): the agent re-reads its
//! YAML on SIGHUP, `POST /reload` and `praetor ctl reload` and applies what changed (a sighup
//! parameter, a postmaster parameter as `pending_restart` with its reason, a tag, the log level,
//! callbacks); an invalid file keeps the running configuration and the reload answers why. Callbacks
//! follow Patroni: `on_restart` on a restart, the primary named `master` under
//! `praetor.callback_role_names: patroni3`, with seed 003's `loadvip.sh` pattern (one script for
//! on_start, on_restart and on_role_change that brings a VIP up when the role is `master`).

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use praetor_harness::cluster::Node;
use serde_json::Value;

/// Seed 003's VIP script, reduced to what a test can see: it records its arguments and whether it
/// would bring the VIP up (`[ "$2" = master ]`, as scripts written for Patroni 3 test it).
fn install_loadvip(node: &Node) -> std::path::PathBuf {
    let script = node.dir.join("loadvip.sh");
    let log = node.dir.join("loadvip.log");
    praetor_harness::write_file(
        &script,
        &format!(
            "#!/bin/sh\nif [ \"$2\" = master ]; then vip=up; else vip=down; fi\necho \"$1 $2 $3 vip=$vip\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

/// The lines the VIP script recorded on `node`.
fn loadvip_calls(node: &Node) -> Vec<String> {
    std::fs::read_to_string(node.dir.join("loadvip.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `node`'s VIP script recorded `line`.
async fn wait_call(c: &LocalCluster, node: &str, line: &str) {
    wait_calls(c, node, line, 1).await
}

/// How many times `node`'s VIP script recorded `line`.
fn count_calls(c: &LocalCluster, node: &str, line: &str) -> usize {
    loadvip_calls(c.node(node))
        .iter()
        .filter(|l| *l == line)
        .count()
}

/// Waits until `node`'s VIP script recorded `line` at least `times` times.
async fn wait_calls(c: &LocalCluster, node: &str, line: &str, times: usize) {
    let n = c.node(node);
    let got = wait_for(
        &format!("{node}: callback `{line}` {times} time(s)"),
        Duration::from_secs(120),
        || async {
            let calls = loadvip_calls(n);
            if calls.iter().filter(|l| *l == line).count() >= times {
                Ok(())
            } else {
                Err(format!("recorded so far: {calls:?}"))
            }
        },
    )
    .await;
    if let Err(e) = got {
        dump_logs(c);
        panic!("{e}");
    }
}

/// Rewrites `node`'s configuration file, replacing each `from` (which must occur once) by `to`.
fn edit(node: &Node, edits: &[(&str, &str)]) {
    let mut text = std::fs::read_to_string(&node.config).unwrap();
    for (from, to) in edits {
        assert_eq!(text.matches(from).count(), 1, "{from:?} in {text}");
        text = text.replace(from, to);
    }
    praetor_harness::write_file(&node.config, &text).unwrap();
}

/// The callbacks of seed 003 and Patroni 3's role names, added to a node's YAML.
fn seed_003_callbacks(script: &std::path::Path) -> [(String, String); 2] {
    let s = script.display();
    [
        (
            "  parameters:\n    unix_socket_directories".to_string(),
            format!(
                "  callbacks:\n    on_start: {s}\n    on_restart: {s}\n    on_role_change: {s}\n  parameters:\n    unix_socket_directories"
            ),
        ),
        (
            "watchdog:".to_string(),
            "praetor:\n  callback_role_names: patroni3\nwatchdog:".to_string(),
        ),
    ]
}

async fn show(port: u16, name: &str) -> Result<String, String> {
    let client = connect(port).await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

async fn patroni(node: &Node) -> Value {
    let (code, body) = call(node, "GET", "/patroni", None).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn reload_applies_the_edited_yaml_and_seed_003s_vip_script_sees_master_on_start_restart_and_role_change(
) {
    let mut c = healthy_cluster(ClusterOptions {
        scope: "reloadvip".into(),
        nodes: 2,
        proxy: false,
        ..Default::default()
    })
    .await;
    let leader = c.leader().await.expect("leader");
    let replica = others(&c, &leader)[0].clone();
    let (ln, rn) = (c.node(&leader), c.node(&replica));

    // The leader's file: a sighup parameter, a postmaster one, a tag, the log level, callbacks.
    let script = install_loadvip(ln);
    let mut edits: Vec<(String, String)> = seed_003_callbacks(&script).into();
    edits.extend([
        (
            "    shared_buffers: 32MB\n".to_string(),
            "    shared_buffers: 48MB\n    checkpoint_timeout: 7min\n".to_string(),
        ),
        (
            "tags:\n  nofailover: false\n".to_string(),
            "tags:\n  nofailover: false\n  noloadbalance: true\n".to_string(),
        ),
        (
            "watchdog:".to_string(),
            "log:\n  level: DEBUG\nwatchdog:".to_string(),
        ),
    ]);
    let edits: Vec<(&str, &str)> = edits
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    edit(ln, &edits);
    ln.signal_agent(Signal::SIGHUP);

    // checkpoint_timeout (context sighup) is in force at once ...
    wait_for(
        "checkpoint_timeout = 7min",
        Duration::from_secs(60),
        || async {
            match show(ln.pg_port, "checkpoint_timeout").await? {
                v if v == "7min" => Ok(()),
                v => Err(v),
            }
        },
    )
    .await
    .expect("sighup parameter applied");
    // ... shared_buffers (context postmaster) waits for a restart, with the reason, in /patroni,
    // the member key and ctl list; the tag is published at once.
    let status = wait_for(
        "pending_restart with its reason in /patroni",
        Duration::from_secs(60),
        || async {
            let p = patroni(ln).await;
            if p["pending_restart"] == true
                && p["pending_restart_reason"]["shared_buffers"].is_object()
            {
                Ok(p)
            } else {
                Err(p.to_string())
            }
        },
    )
    .await
    .expect("pending restart");
    assert_eq!(status["tags"]["noloadbalance"], true, "{status}");
    assert_eq!(
        status["pending_restart_reason"]["shared_buffers"],
        serde_json::json!({"old_value": "32MB", "new_value": "48MB"}),
        "{status}"
    );
    assert_eq!(show(ln.pg_port, "shared_buffers").await.unwrap(), "32MB");
    let member = wait_for(
        "the tag in the member key",
        Duration::from_secs(60),
        || async {
            let cl = dcs_cluster(&c).await;
            let m = cl.member(&leader).cloned().ok_or("no member key")?;
            if m.data.tags.noloadbalance && m.data.pending_restart {
                Ok(m)
            } else {
                Err(format!("{:?}", m.data))
            }
        },
    )
    .await
    .expect("member key updated");
    assert!(member.data.pending_restart_reason.is_some());
    let list = ctl(&c, &["list"], "").await;
    assert_eq!(list.code, 0, "{list}");
    assert!(list.stdout.contains("Pending restart reason"), "{list}");
    assert!(list.stdout.contains("shared_buffers: 32MB->48MB"), "{list}");
    assert!(list.stdout.contains("noloadbalance"), "{list}");
    assert!(ln.log().contains("log level is now debug"), "{}", ln.log());

    // The replica's file gets the callbacks too, applied by `ctl reload`.
    let script = install_loadvip(rn);
    let edits: Vec<(String, String)> = seed_003_callbacks(&script).into();
    let edits: Vec<(&str, &str)> = edits
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    edit(rn, &edits);
    let out = ctl(&c, &["reload", "reloadvip", &replica, "--force"], "").await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("Reload request received"), "{out}");

    // A restart on request runs on_restart (not on_start); the leader's is the pending restart,
    // which applies shared_buffers. Patroni 3's names: the primary is `master`.
    let (code, body) = call(rn, "POST", "/restart", None).await;
    assert_eq!((code, body.as_str()), (200, "restarted successfully"));
    wait_call(&c, &replica, "on_restart replica reloadvip vip=down").await;
    let (code, body) = call(ln, "POST", "/restart", Some(r#"{"restart_pending":true}"#)).await;
    assert_eq!((code, body.as_str()), (200, "restarted successfully"));
    wait_call(&c, &leader, "on_restart master reloadvip vip=up").await;
    assert_eq!(show(ln.pg_port, "shared_buffers").await.unwrap(), "48MB");
    wait_for(
        "pending_restart cleared",
        Duration::from_secs(60),
        || async {
            let p = patroni(ln).await;
            if p.get("pending_restart").is_none() {
                Ok(())
            } else {
                Err(p.to_string())
            }
        },
    )
    .await
    .expect("restart applied the parameter");
    for n in [&leader, &replica] {
        let calls = loadvip_calls(c.node(n));
        assert!(
            !calls.iter().any(|l| l.starts_with("on_start")),
            "{n}: a restart is not a start: {calls:?}"
        );
    }

    // A switchover: on_role_change, the new leader brings the VIP up, the old one takes it down.
    c.wait_healthy(1, Duration::from_secs(120))
        .await
        .expect("healthy after the restarts");
    // Right after the restarts, the replica may not stream yet: the switchover itself waits for
    // it (a candidate must receive the old primary's last WAL; see decide's switchover rules), so
    // the old primary needs no rewind, whose PostgreSQL restart would be an on_start counted below.
    ctl_switchover(&c, &leader, &replica).await;
    wait_call(&c, &replica, "on_role_change master reloadvip vip=up").await;
    wait_call(&c, &leader, "on_role_change replica reloadvip vip=down").await;
    wait_leader(&c, &replica).await;

    // The demotion ran on_role_change, not on_start (as Patroni); an agent start runs on_start.
    let on_start = "on_start replica reloadvip vip=down";
    let before = count_calls(&c, &leader, on_start);
    assert_eq!(before, 0, "{:?}", loadvip_calls(c.node(&leader)));
    c.node_mut(&leader)
        .stop_agent(Duration::from_secs(60))
        .await
        .expect("agent stops");
    c.node_mut(&leader).start_agent(&binary()).unwrap();
    wait_calls(&c, &leader, on_start, before + 1).await;

    // restapi.listen moved: the API answers on the new address, and the member key says so.
    let ln = c.node(&leader);
    let old_api = ln.api_addr();
    let new_port = praetor_harness::free_port();
    let api_lines = format!(
        "  listen: 127.0.0.1:{}\n  connect_address: 127.0.0.1:{}\n",
        ln.api_port, ln.api_port
    );
    let moved =
        format!("  listen: 127.0.0.1:{new_port}\n  connect_address: 127.0.0.1:{new_port}\n");
    edit(ln, &[(api_lines.as_str(), moved.as_str())]);
    let (code, body) = raw_call(&old_api, "POST", "/reload", None, None).await;
    assert_eq!((code, body.as_str()), (202, "reload scheduled"));
    let new_api = format!("127.0.0.1:{new_port}");
    wait_for(
        "the REST API on its new address",
        Duration::from_secs(60),
        || async {
            match tokio::net::TcpStream::connect(&new_api).await {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
    .expect("API rebound");
    let (code, body) = raw_call(&new_api, "GET", "/patroni", None, None).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        tokio::net::TcpStream::connect(&old_api).await.is_err(),
        "the old address is closed"
    );
    let api_url = format!("http://127.0.0.1:{new_port}/patroni");
    wait_for(
        "api_url in the member key",
        Duration::from_secs(60),
        || async {
            let cl = dcs_cluster(&c).await;
            let url = cl.member(&leader).and_then(|m| m.data.api_url.clone());
            if url.as_deref() == Some(api_url.as_str()) {
                Ok(())
            } else {
                Err(format!("{url:?}"))
            }
        },
    )
    .await
    .expect("member key names the new API address");

    // An invalid file: POST /reload answers why, naming the key; SIGHUP logs it; nothing changes.
    let rn = c.node(&replica);
    edit(
        rn,
        &[("watchdog:\n  mode: 'off'", "watchdog:\n  mode: sometimes")],
    );
    let (code, body) = call(rn, "POST", "/reload", None).await;
    assert_eq!(code, 412, "{body}");
    assert!(body.contains("watchdog.mode"), "{body}");
    assert!(body.contains("running configuration is kept"), "{body}");
    rn.signal_agent(Signal::SIGHUP);
    wait_for(
        "the SIGHUP error in the log",
        Duration::from_secs(60),
        || async {
            let log = rn.log();
            if log.contains("SIGHUP: configuration not reloaded") && log.contains("watchdog.mode") {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await
    .expect("SIGHUP logs the invalid file");
    // REST API settings that cannot be served (a missing certificate) are refused the same way,
    // and the API keeps answering as it did.
    edit(
        rn,
        &[
            ("watchdog:\n  mode: sometimes", "watchdog:\n  mode: 'off'"),
            (
                "restapi:\n",
                "restapi:\n  certfile: /nonexistent/server.pem\n  keyfile: /nonexistent/server.key\n",
            ),
        ],
    );
    let (code, body) = call(rn, "POST", "/reload", None).await;
    assert_eq!(code, 412, "{body}");
    assert!(
        body.contains("restapi: ") && body.contains("/nonexistent/server.pem"),
        "{body}"
    );
    let p = patroni(rn).await;
    assert_eq!(p["role"], "primary", "{p}");
    assert_eq!(p["state"], "running", "{p}");
    // The running callbacks are still in force: a restart still reaches the VIP script.
    let (code, body) = call(rn, "POST", "/restart", None).await;
    assert_eq!((code, body.as_str()), (200, "restarted successfully"));
    wait_calls(&c, &replica, "on_restart master reloadvip vip=up", 1).await;
}
