//! The REST API against real 3-node clusters (etcd, PostgreSQL 15): every endpoint's status codes
//! (200/202/400/401/403/404/409/412/422/503), bad input that must change nothing in the DCS,
//! access control with basic auth, allowlist and TLS client certificates, metrics, and HAProxy's
//! `option httpchk OPTIONS /primary` following the leader across a switchover.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn opts(scope: &str) -> ClusterOptions {
    ClusterOptions {
        scope: scope.into(),
        proxy: false,
        ..Default::default()
    }
}

async fn json_of(node: &praetor_harness::cluster::Node, path: &str) -> Value {
    let (code, body) = call(node, "GET", path, None).await;
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

#[tokio::test]
async fn health_checks_information_endpoints_and_metrics_answer_with_patronis_codes() {
    let c = healthy_cluster(opts("api-read")).await;
    let leader_name = c.leader().await.expect("leader");
    let leader = c.node(&leader_name);
    let replica = c.node(&others(&c, &leader_name)[0]);
    let rows: Vec<(&str, &str, u16, u16)> = vec![
        // (method, path, leader's code, replica's code)
        ("GET", "/", 200, 503),
        ("GET", "/primary", 200, 503),
        ("GET", "/master", 200, 503),
        ("GET", "/read-write", 200, 503),
        ("OPTIONS", "/primary", 200, 503),
        ("HEAD", "/primary", 200, 503),
        ("GET", "/leader", 200, 503),
        ("GET", "/standby-leader", 503, 503),
        ("GET", "/replica", 503, 200),
        ("OPTIONS", "/replica", 503, 200),
        ("GET", "/replica?lag=1GB", 503, 200),
        ("GET", "/replica?replication_state=streaming", 503, 200),
        ("GET", "/replica?tag_nofailover=false", 503, 200),
        ("GET", "/replica?tag_nofailover=true", 503, 503),
        ("GET", "/read-only", 200, 200),
        ("GET", "/health", 200, 200),
        ("GET", "/liveness", 200, 200),
        ("GET", "/readiness", 200, 200),
        ("GET", "/sync", 503, 503),
        ("GET", "/async", 503, 200),
        ("GET", "/patroni", 200, 200),
        ("GET", "/cluster", 200, 200),
        ("GET", "/history", 200, 200),
        ("GET", "/config", 200, 200),
        ("GET", "/metrics", 200, 200),
        ("GET", "/failsafe", 502, 502),
        ("GET", "/no-such-path", 404, 404),
        ("POST", "/patroni", 405, 405),
    ];
    for (method, path, want_leader, want_replica) in rows {
        for (node, want) in [(leader, want_leader), (replica, want_replica)] {
            let (code, body) = call(node, method, path, None).await;
            assert_eq!(code, want, "{method} {path} on {}: {body}", node.name);
            if method == "OPTIONS" || method == "HEAD" {
                assert!(body.is_empty(), "{method} {path} has no body: {body}");
            }
        }
    }
    let p = json_of(replica, "/patroni").await;
    assert_eq!(p["state"], "running");
    assert_eq!(p["role"], "replica");
    assert_eq!(p["replication_state"], "streaming");
    assert_eq!(p["patroni"]["scope"], "api-read");
    assert_eq!(p["patroni"]["name"], replica.name.as_str());
    assert!(p["xlog"]["received_location"].as_u64().is_some(), "{p}");
    assert!(p["database_system_identifier"].as_str().is_some(), "{p}");
    let l = json_of(leader, "/patroni").await;
    assert_eq!(l["role"], "primary");
    assert!(l["xlog"]["location"].as_u64().is_some(), "{l}");
    assert_eq!(l["cluster_unlocked"], false);
    // The REST API answers from the HA loop's last snapshot, taken once per loop_wait: the second
    // standby may connect after it.
    wait_for(
        "both standbys in the leader's /patroni",
        Duration::from_secs(10),
        || async {
            let l = json_of(leader, "/patroni").await;
            match l["replication"].as_array().map(Vec::len) {
                Some(2) => Ok(()),
                other => Err(format!("{other:?} standbys: {l}")),
            }
        },
    )
    .await
    .unwrap();
    let cl = json_of(replica, "/cluster").await;
    assert_eq!(cl["scope"], "api-read");
    let members = cl["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    for m in members {
        for field in [
            "name", "role", "state", "api_url", "host", "port", "timeline",
        ] {
            assert!(!m[field].is_null(), "member without {field}: {m}");
        }
    }
    let config = json_of(leader, "/config").await;
    assert_eq!(config["ttl"], 6, "{config}");
    let metrics = call(leader, "GET", "/metrics", None).await.1;
    let labels = format!("{{name=\"{}\",scope=\"api-read\"}}", leader.name);
    for line in [
        format!("patroni_primary{labels} 1"),
        format!("patroni_replica{labels} 0"),
        format!("patroni_postgres_running{labels} 1"),
        format!("patroni_cluster_unlocked{labels} 0"),
        format!("patroni_postgres_timeline{labels} 1"),
        format!("patroni_is_paused{labels} 0"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line} in\n{metrics}"
        );
    }
    for name in [
        "praetor_ha_loop_duration_seconds_count",
        "praetor_dcs_requests_total",
        "praetor_leader_lock_renewals_total",
        "patroni_xlog_location",
        "patroni_dcs_last_seen",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    let rm = call(replica, "GET", "/metrics", None).await.1;
    assert!(rm.contains(&format!(
        "patroni_postgres_streaming{{name=\"{}\",scope=\"api-read\"}} 1",
        replica.name
    )));
    // Secrets: the pgpass file is private, no password is published or logged.
    for n in &c.nodes {
        let mode = std::fs::metadata(n.dir.join("pgpass"))
            .expect("pgpass written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}/pgpass", n.dir.display());
        assert!(
            !n.log().contains("rep-pass"),
            "{} logged a password",
            n.name
        );
    }
    let everything = format!("{cl}{config}{p}{l}");
    assert!(!everything.contains("rep-pass") && !everything.contains(SUPERUSER_PASSWORD));
    let dcs = dcs_cluster(&c).await;
    // The superuser password is "praetor": the member key's field name `praetor_version` is not it.
    let keys = format!("{:?}", dcs).replace("praetor_version", "");
    assert!(
        !keys.contains("rep-pass") && !keys.contains(SUPERUSER_PASSWORD),
        "{keys}"
    );
}

#[tokio::test]
async fn config_patch_merges_null_deletes_and_bad_input_changes_nothing() {
    let c = healthy_cluster(opts("api-config")).await;
    let n = &c.nodes[0];
    let (code, body) = call(
        n,
        "PATCH",
        "/config",
        Some(r#"{"postgresql":{"parameters":{"work_mem":"8MB"}},"praetor_note":"x"}"#),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["postgresql"]["parameters"]["work_mem"], "8MB");
    assert_eq!(v["ttl"], 6, "merged, not replaced: {v}");
    let dcs = dcs_cluster(&c).await;
    let stored = dcs.config.as_ref().expect("config").value.clone();
    assert_eq!(stored, v, "the DCS holds what PATCH answered");
    let (code, body) = call(n, "PATCH", "/config", Some(r#"{"praetor_note":null}"#)).await;
    assert_eq!(code, 200, "{body}");
    assert!(dcs_cluster(&c)
        .await
        .config
        .unwrap()
        .value
        .get("praetor_note")
        .is_none());
    let before = dcs_cluster(&c).await.config.unwrap();
    for (method, body, want) in [
        ("PATCH", "{\"ttl\": ", 400),
        ("PATCH", "[1, 2]", 400),
        ("PATCH", "", 400),
        ("PATCH", "{}", 400),
        ("PATCH", r#"{"ttl":"soon"}"#, 400),
        (
            "PATCH",
            r#"{"postgresql":{"authentication":{"superuser":{"password":"x"}}}}"#,
            400,
        ),
        ("PUT", "not json", 400),
        ("PUT", r#"{"loop_wait":"x"}"#, 400),
    ] {
        let (code, answer) = call(n, method, "/config", Some(body)).await;
        assert_eq!(code, want, "{method} /config {body:?}: {answer}");
    }
    // Settings that must never be applied: 400 with the reason, naming the key path.
    for (method, body, reason) in [
        (
            "PATCH",
            r#"{"postgresql":{"parameters":{"promote_trigger_file":"/tmp/go"}}}"#,
            "invalid configuration: postgresql.parameters.promote_trigger_file: promote_trigger_file is managed by the agent",
        ),
        (
            "PATCH",
            r#"{"postgresql":{"parameters":{"recovery_target_time":"2026-01-01"}}}"#,
            "invalid configuration: postgresql.parameters.recovery_target_time: recovery_target_time is a recovery setting",
        ),
        (
            "PATCH",
            r#"{"postgresql":{"parameters":{"a=b":"1"}}}"#,
            "invalid configuration: postgresql.parameters: \"a=b\" is not a valid parameter name",
        ),
        (
            "PATCH",
            r#"{"retry_timeout":2147483648}"#,
            "invalid configuration: retry_timeout: 2147483648 is out of range: give 0 to 86400 seconds",
        ),
        (
            "PUT",
            r#"{"ttl":2}"#,
            "invalid configuration: ttl: 2 is out of range: give 3 to 86400 seconds",
        ),
    ] {
        let (code, answer) = call(n, method, "/config", Some(body)).await;
        assert_eq!(code, 400, "{method} /config {body:?}: {answer}");
        assert!(answer.starts_with(reason), "{method} {body}: {answer}\nwanted: {reason}");
    }
    let after = dcs_cluster(&c).await.config.unwrap();
    assert_eq!(after, before, "refused requests changed nothing");
    // PUT replaces the whole document.
    let mut whole = after.value.clone();
    whole["praetor_put"] = json!(true);
    let (code, body) = call(n, "PUT", "/config", Some(&whole.to_string())).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(dcs_cluster(&c).await.config.unwrap().value, whole);
    let (code, body) = call(n, "GET", "/config", None).await;
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), whole);

    // A bad configuration written to the DCS by another tool changes nothing either: every agent
    // keeps its last good one, says why once, and applies the next good one.
    for node in &c.nodes {
        wait_for(
            &format!("{} to apply work_mem 8MB", node.name),
            Duration::from_secs(30),
            || async {
                let v = show(node, "work_mem").await;
                (v == "8MB").then_some(()).ok_or(v)
            },
        )
        .await
        .unwrap();
    }
    let mut bad = whole.clone();
    bad["postgresql"]["parameters"]["work_mem"] = json!("16MB");
    bad["postgresql"]["parameters"]["promote_trigger_file"] = json!("/tmp/praetor-go");
    write_config_behind_the_agents_back(&c, &bad).await;
    let refusal = "not applying the DCS config key, keeping the last good configuration: \
                   postgresql.parameters.promote_trigger_file: promote_trigger_file is managed by the agent";
    for node in &c.nodes {
        wait_for(
            &format!("{} to refuse the DCS config key", node.name),
            Duration::from_secs(30),
            || async {
                node.log()
                    .contains(refusal)
                    .then_some(())
                    .ok_or_else(|| "not logged yet".to_string())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
        assert_eq!(show(node, "work_mem").await, "8MB", "{}", node.name);
        assert_eq!(
            show(node, "promote_trigger_file").await,
            "",
            "{}",
            node.name
        );
    }
    let mut good = bad.clone();
    good["postgresql"]["parameters"]
        .as_object_mut()
        .unwrap()
        .remove("promote_trigger_file");
    write_config_behind_the_agents_back(&c, &good).await;
    for node in &c.nodes {
        wait_for(
            &format!("{} to apply work_mem 16MB", node.name),
            Duration::from_secs(30),
            || async {
                let v = show(node, "work_mem").await;
                (v == "16MB").then_some(()).ok_or(v)
            },
        )
        .await
        .unwrap();
        // Loops ran between the two writes: the refusal was logged once, not once per loop.
        assert_eq!(node.log().matches(refusal).count(), 1, "{}", node.name);
    }
}

/// `SHOW name` on `node`'s PostgreSQL.
async fn show(node: &praetor_harness::cluster::Node, name: &str) -> String {
    let client = connect(node.pg_port).await.expect("connect");
    let row = client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .expect("SHOW");
    row.get(0)
}

/// Writes `value` as the DCS `config` key directly, as another tool could, past the REST API's
/// checks.
async fn write_config_behind_the_agents_back(c: &LocalCluster, value: &Value) {
    let current = dcs_cluster(c).await.config.expect("config");
    let loaded = praetor_config::load_file(&c.nodes[0].config).expect("node config");
    let identity = praetor_dcs::DcsIdentity {
        namespace: "/service/".into(),
        scope: c.options.scope.clone(),
        member: None,
        ttl_secs: 30,
        request_timeout_secs: 5,
    };
    let dcs = praetor_dcs::connect(&loaded.config.dcs_endpoints().unwrap(), identity)
        .await
        .expect("open the DCS");
    dcs.set_config(value, praetor_dcs::Expect::Version(current.version))
        .await
        .expect("write the config key");
}

/// Sends SIGSTOP/SIGCONT to the walreceiver of the PostgreSQL at `port`.
async fn signal_walreceiver(port: u16, sig: nix::sys::signal::Signal) {
    let client = connect(port).await.expect("replica");
    let pid: i32 = client
        .query_one("SELECT pid FROM pg_stat_wal_receiver", &[])
        .await
        .expect("a walreceiver")
        .get(0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("signal walreceiver");
}

#[tokio::test]
async fn switchover_failover_restart_reload_and_refusals_over_rest() {
    let mut o = opts("api-actions");
    o.tags = vec![(2, "nofailover: true".into())];
    let c = healthy_cluster(o).await;
    let leader = c.leader().await.expect("leader");
    // pg3 is nofailover, so it never leads: the candidate is the other one.
    let candidate = others(&c, &leader)
        .into_iter()
        .find(|n| n != "pg3")
        .expect("a candidate");
    let ln = c.node(&leader);
    let before = dcs_cluster(&c).await;
    let future = (time::OffsetDateTime::now_utc() + time::Duration::hours(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let bad: Vec<(&str, String, u16, &str)> = vec![
        ("/switchover", "{\"leader\": ".into(), 400, "malformed JSON"),
        ("/switchover", "[]".into(), 400, "expected a JSON object"),
        ("/switchover", "{}".into(), 400, "must not be empty"),
        (
            "/switchover",
            format!(r#"{{"candidate":"{candidate}"}}"#),
            400,
            "only from a specific leader",
        ),
        (
            "/switchover",
            format!(r#"{{"leader":"{leader}","candidate":"nope"}}"#),
            412,
            "candidate nope does not exist",
        ),
        (
            "/switchover",
            format!(r#"{{"leader":"{candidate}","candidate":"{leader}"}}"#),
            412,
            "leader name does not match",
        ),
        (
            "/switchover",
            format!(r#"{{"leader":"{leader}","candidate":"pg3"}}"#),
            412,
            "nofailover",
        ),
        (
            "/switchover",
            format!(r#"{{"leader":"{leader}","candidate":"{leader}"}}"#),
            400,
            "target and source are the same",
        ),
        (
            "/switchover",
            format!(r#"{{"leader":"{leader}","scheduled_at":"2020-01-01T00:00:00+00:00"}}"#),
            422,
            "Cannot schedule switchover in the past",
        ),
        (
            "/switchover",
            format!(r#"{{"leader":"{leader}","scheduled_at":"2099-01-01T00:00:00"}}"#),
            400,
            "Timezone information is mandatory",
        ),
        (
            "/switchover",
            format!(r#"{{"leader":"{leader}","scheduled_at":"someday"}}"#),
            400,
            "Unable to parse",
        ),
        (
            "/failover",
            "{\"x\":1}".into(),
            400,
            "only to a specific candidate",
        ),
        (
            "/failover",
            format!(r#"{{"candidate":"{candidate}","scheduled_at":"{future}"}}"#),
            400,
            "Failover can't be scheduled",
        ),
        ("/restart", "{\"bogus\":1}".into(), 400, "Unknown filter"),
        (
            "/restart",
            "{\"role\":\"boss\"}".into(),
            400,
            "role should be",
        ),
        (
            "/restart",
            "{\"timeout\":-1}".into(),
            400,
            "positive number",
        ),
        (
            "/restart",
            "{\"schedule\":\"2020-01-01T00:00:00Z\"}".into(),
            422,
            "in the past",
        ),
        ("/failsafe", "{}".into(), 400, "must not be empty"),
    ];
    for (path, body, want, text) in &bad {
        let (code, answer) = call(ln, "POST", path, Some(body)).await;
        assert_eq!(code, *want, "POST {path} {body}: {answer}");
        assert!(
            answer.contains(text),
            "POST {path} {body}: {answer:?} should say {text:?}"
        );
    }
    let after = dcs_cluster(&c).await;
    assert_eq!(
        after.failover, before.failover,
        "no failover key was written"
    );
    assert_eq!(after.config, before.config);
    assert_eq!(after.leader.as_ref().map(|l| &l.name), Some(&leader));

    // A lagging candidate is refused: its walreceiver is frozen while the leader writes 4 MB.
    let cn = c.node(&candidate);
    signal_walreceiver(cn.pg_port, nix::sys::signal::Signal::SIGSTOP).await;
    let lc = connect(ln.pg_port).await.expect("leader");
    lc.batch_execute(
        "CREATE TABLE lagging AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    )
    .await
    .expect("write on the leader");
    // The API answers from the state of its last loop: wait until it shows the write.
    let written: i64 = lc
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
        .await
        .expect("leader position")
        .get(0);
    praetor_harness::wait_for(
        "the leader's API to show the write",
        Duration::from_secs(15),
        || async {
            let (_, body) = call(ln, "GET", "/patroni", None).await;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            match v["xlog"]["location"].as_i64() {
                Some(at) if at >= written => Ok(()),
                other => Err(format!("location {other:?}")),
            }
        },
    )
    .await
    .unwrap();
    let (code, answer) = call(
        ln,
        "POST",
        "/switchover",
        Some(&format!(
            r#"{{"leader":"{leader}","candidate":"{candidate}"}}"#
        )),
    )
    .await;
    signal_walreceiver(cn.pg_port, nix::sys::signal::Signal::SIGCONT).await;
    assert_eq!(code, 412, "{answer}");
    assert!(answer.contains("is lagging"), "{answer}");
    assert_eq!(dcs_cluster(&c).await.failover, before.failover);

    // Scheduled switchover: 202, shown in /cluster, deleted with DELETE /switchover.
    let (code, answer) = call(
        ln,
        "POST",
        "/switchover",
        Some(&format!(
            r#"{{"leader":"{leader}","candidate":"{candidate}","scheduled_at":"{future}"}}"#
        )),
    )
    .await;
    assert_eq!((code, answer.as_str()), (202, "Switchover scheduled"));
    let cl = json_of(ln, "/cluster").await;
    assert_eq!(cl["scheduled_switchover"]["to"], candidate.as_str(), "{cl}");
    assert_eq!(
        call(ln, "DELETE", "/switchover", None).await,
        (200, "scheduled switchover deleted".into())
    );
    assert_eq!(
        call(ln, "DELETE", "/switchover", None).await,
        (404, "no switchover is scheduled".into())
    );

    // Restart: conditions, schedule, conflict, flush.
    let rn = c.node(&candidate);
    let started_before = json_of(rn, "/patroni").await["postmaster_start_time"].clone();
    assert_eq!(
        call(rn, "POST", "/restart", Some(r#"{"role":"primary"}"#)).await,
        (503, "restart conditions are not satisfied".into())
    );
    assert_eq!(
        call(rn, "POST", "/restart", Some(r#"{"restart_pending":true}"#)).await,
        (503, "restart conditions are not satisfied".into())
    );
    let (code, answer) = call(rn, "POST", "/restart", Some(r#"{"role":"replica"}"#)).await;
    assert_eq!((code, answer.as_str()), (200, "restarted successfully"));
    let started_after = json_of(rn, "/patroni").await["postmaster_start_time"].clone();
    assert_ne!(started_before, started_after, "PostgreSQL really restarted");
    let sched = format!(r#"{{"schedule":"{future}"}}"#);
    assert_eq!(
        call(rn, "POST", "/restart", Some(&sched)).await,
        (202, "Restart scheduled".into())
    );
    assert_eq!(
        call(rn, "POST", "/restart", Some(&sched)).await,
        (409, "Another restart is already scheduled".into())
    );
    wait_for(
        "scheduled_restart in the member key",
        Duration::from_secs(30),
        || async {
            let d = dcs_cluster(&c).await;
            let m = d.member(&candidate).ok_or("no member")?;
            m.data
                .extra
                .get("scheduled_restart")
                .map(|_| ())
                .ok_or_else(|| format!("{:?}", m.data))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        call(rn, "DELETE", "/restart", None).await,
        (200, "scheduled restart deleted".into())
    );
    assert_eq!(
        call(rn, "DELETE", "/restart", None).await,
        (404, "no restarts are scheduled".into())
    );

    assert_eq!(
        call(rn, "POST", "/reload", None).await,
        (202, "reload scheduled".into())
    );
    assert_eq!(
        call(ln, "POST", "/reinitialize", None).await,
        (412, "I am the leader, can not reinitialize".into())
    );
    // failsafe_mode is off in this cluster: nobody confirms (Patroni answers 502).
    for n in [rn, ln] {
        assert_eq!(
            call(n, "POST", "/failsafe", Some(r#"{"name":"x"}"#)).await,
            (
                502,
                "failsafe_mode is not enabled in the dynamic configuration".into()
            )
        );
    }

    // The switchover itself, then a failover back to the first leader.
    c.wait_healthy(2, Duration::from_secs(60))
        .await
        .expect("healthy after restart");
    let (code, answer) = call(
        ln,
        "POST",
        "/switchover",
        Some(&format!(
            r#"{{"leader":"{leader}","candidate":"{candidate}"}}"#
        )),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer,
        format!("Successfully switched over to \"{candidate}\"")
    );
    wait_leader(&c, &candidate).await;
    let (code, answer) = call(
        c.node(&candidate),
        "POST",
        "/failover",
        Some(&format!(r#"{{"candidate":"{leader}"}}"#)),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer, format!("Successfully failed over to \"{leader}\""));
    wait_leader(&c, &leader).await;
    let history = json_of(ln, "/history").await;
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");
}

/// Writes a CA, a server certificate for 127.0.0.1 and a client certificate under `dir` with
/// openssl; returns (ca, server cert, server key, client cert, client key).
fn make_certs(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=praetor test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    for who in ["server", "client"] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
            "-subj",
            &format!("/CN={who}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{who}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{who}.ext"),
        ]);
    }
    let files = [
        "ca.crt",
        "server.crt",
        "server.key",
        "client.crt",
        "client.key",
    ]
    .map(|f| dir.join(f));
    for f in &files {
        praetor_harness::chown_to_postgres(f).unwrap();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    files
}

/// A file the test drops into a member's data directory: still there afterwards means the directory
/// was not removed. Named after the member, since pg_basebackup copies the leader's.
fn canary(node: &praetor_harness::cluster::Node) -> std::path::PathBuf {
    node.data_dir()
        .join(format!("praetor-test-canary-{}", node.name))
}

fn drop_canary(node: &praetor_harness::cluster::Node) {
    std::fs::write(canary(node), "kept").expect("write the canary");
}

/// Asserts that `node`'s data directory and postmaster are as they were: same postmaster PID (the
/// agent stops PostgreSQL before removing anything), PG_VERSION and the canary in place.
fn untouched(node: &praetor_harness::cluster::Node, postmaster: Option<i32>, what: &str) {
    assert_eq!(node.postmaster_pid(), postmaster, "{what}: postmaster");
    assert!(
        node.data_dir().join("PG_VERSION").exists(),
        "{what}: PG_VERSION"
    );
    assert!(canary(node).exists(), "{what}: canary");
}

/// Issue 13 items 6 and 7 on a real cluster. pg2 and pg3 are tagged nofailover, so pg1 bootstraps
/// and leads, and nobody takes over once its agent is gone: the "no leader" case.
#[tokio::test]
async fn reinitialize_is_refused_on_the_leader_and_without_a_leader_and_reclones_a_healthy_replica()
{
    let mut c = healthy_cluster(ClusterOptions {
        tags: vec![
            (1, "nofailover: true".into()),
            (2, "nofailover: true".into()),
        ],
        ..opts("api-reinit")
    })
    .await;
    assert_eq!(c.leader().await.as_deref(), Some("pg1"));
    // Item 7: the agent's postmaster.pid check recognises a real postmaster (started by an agent
    // running as `postgres`, judged here as root).
    for n in &c.nodes {
        let pid = n.postmaster_pid().expect("postmaster running");
        match praetor_agent::postgres::postmaster::inspect(&n.data_dir()) {
            praetor_agent::postgres::postmaster::PidFile::Ours(pm) => assert_eq!(pm.pid, pid),
            other => panic!("{}: {other:?}", n.name),
        }
    }
    let body = Some(r#"{"force": true}"#);

    // The leader: refused, nothing removed, still the leader.
    let leader = c.node("pg1");
    drop_canary(leader);
    let before = leader.postmaster_pid();
    assert_eq!(
        call(leader, "POST", "/reinitialize", body).await,
        (412, "I am the leader, can not reinitialize".into())
    );
    untouched(leader, before, "leader after a refused reinitialize");
    assert_eq!(c.leader().await.as_deref(), Some("pg1"));

    // A healthy replica: its data directory is removed and cloned again.
    let replica = c.node("pg3");
    drop_canary(replica);
    let before = replica.postmaster_pid();
    assert_eq!(
        call(replica, "POST", "/reinitialize", body).await,
        (200, "reinitialize started".into())
    );
    c.wait_healthy(2, Duration::from_secs(120))
        .await
        .expect("healthy after reinitialize");
    assert_ne!(c.node("pg3").postmaster_pid(), before, "a new postmaster");
    assert!(
        !canary(c.node("pg3")).exists(),
        "the data directory was cloned again"
    );

    // No leader: pg1's agent dies and its lock expires; pg2 and pg3 may not take over.
    c.node_mut("pg1").kill_agent();
    wait_for(
        "the leader lock to expire",
        Duration::from_secs(60),
        || async {
            match dcs_cluster(&c).await.leader {
                None => Ok(()),
                Some(l) => Err(l.name),
            }
        },
    )
    .await
    .unwrap();
    let replica = c.node("pg2");
    drop_canary(replica);
    let before = replica.postmaster_pid();
    assert!(before.is_some(), "pg2 still runs");
    assert_eq!(
        call(replica, "POST", "/reinitialize", body).await,
        (412, "Cluster has no leader, can not reinitialize".into())
    );
    untouched(
        replica,
        before,
        "replica after a reinitialize refused for want of a leader",
    );
}

#[tokio::test]
async fn unsafe_methods_need_allowlist_client_certificate_and_basic_auth_over_tls() {
    let mut c = healthy_cluster(opts("api-access")).await;
    let leader = c.leader().await.expect("leader");
    let name = others(&c, &leader)[0].clone();
    let [ca, cert, key, client_cert, client_key] = make_certs(c.work.path());
    let node = c.node_mut(&name);
    node.stop_agent(Duration::from_secs(60))
        .await
        .expect("agent stops");
    let config = std::fs::read_to_string(&node.config).unwrap().replacen(
        "restapi:\n",
        &format!(
            "restapi:\n  certfile: {}\n  keyfile: {}\n  cafile: {}\n  verify_client: optional\n  allowlist: [127.0.0.1]\n  authentication:\n    username: admin\n    password: api-secret\n",
            cert.display(),
            key.display(),
            ca.display()
        ),
        1,
    );
    praetor_harness::write_file(&node.config, &config).unwrap();
    let bin = c.binary.clone();
    c.node_mut(&name).start_agent(&bin).expect("agent starts");
    let node = c.node(&name);
    let base = format!("https://127.0.0.1:{}", node.api_port);
    let tls = |with_cert: bool| {
        praetor_agent::api::tls::client_config(&praetor_agent::api::tls::ClientTls {
            cacert: Some(&ca),
            certfile: with_cert.then_some(client_cert.as_path()),
            keyfile: with_cert.then_some(client_key.as_path()),
            insecure: false,
        })
        .expect("client TLS")
    };
    let client = |with_cert: bool, auth: Option<(&str, &str)>| {
        praetor_agent::api::client::ApiClient::new(
            Some(tls(with_cert)),
            auth,
            Duration::from_secs(30),
        )
    };
    let anonymous = client(false, None);
    wait_for(
        "the agent to answer over TLS",
        Duration::from_secs(60),
        || async {
            let r = anonymous
                .request("GET", &format!("{base}/patroni"), None)
                .await?;
            let v = r.json()?;
            (r.status == 200 && v["state"] == "running")
                .then_some(())
                .ok_or(r.body)
        },
    )
    .await
    .unwrap();
    assert!(
        praetor_harness::http_get(&node.api_addr(), "/patroni")
            .await
            .is_err(),
        "plain HTTP is not served any more"
    );
    let post = |cl: praetor_agent::api::client::ApiClient| {
        let url = format!("{base}/reload");
        async move {
            let r = cl.request("POST", &url, None).await.expect("answer");
            (r.status, r.body)
        }
    };
    assert_eq!(
        post(client(false, Some(("admin", "api-secret")))).await,
        (403, "client certificate required".into())
    );
    assert_eq!(
        post(client(true, None)).await,
        (401, "no auth header received".into())
    );
    assert_eq!(
        post(client(true, Some(("admin", "wrong")))).await,
        (401, "not authenticated".into())
    );
    assert_eq!(
        post(client(true, Some(("admin", "api-secret")))).await,
        (202, "reload scheduled".into())
    );
    let other_source =
        client(true, Some(("admin", "api-secret"))).with_source_ip("127.0.0.2".parse().unwrap());
    let r = other_source
        .request("POST", &format!("{base}/reload"), None)
        .await
        .expect("answer");
    assert_eq!((r.status, r.body.as_str()), (403, "Access is denied"));
    // The member key advertises https, and ctl reaches the agent with ctl.* settings.
    wait_for("api_url with https", Duration::from_secs(30), || async {
        let d = dcs_cluster(&c).await;
        let url = d
            .member(&name)
            .and_then(|m| m.data.api_url.clone())
            .unwrap_or_default();
        url.starts_with("https://").then_some(()).ok_or(url)
    })
    .await
    .unwrap();
    let ctl_config = c.work.path().join("ctl.yml");
    let base_config = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let dcs_section: String = base_config
        .split("\netcd3:\n")
        .nth(1)
        .map(|rest| {
            let lines: Vec<&str> = rest.lines().take_while(|l| l.starts_with("  ")).collect();
            format!("etcd3:\n{}\n", lines.join("\n"))
        })
        .expect("an etcd3 section");
    std::fs::write(
        &ctl_config,
        format!(
            "scope: api-access\n{dcs_section}ctl:\n  cacert: {}\n  certfile: {}\n  keyfile: {}\n  authentication:\n    username: admin\n    password: api-secret\n",
            ca.display(),
            client_cert.display(),
            client_key.display()
        ),
    )
    .unwrap();
    let out = ctl_with(
        &ctl_config,
        &["reload", "api-access", &name, "--force"],
        "",
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains(&format!("Reload request received for member {name}")),
        "{out}"
    );
    assert!(
        !node.log().contains("api-secret"),
        "the password is not logged"
    );
}

#[tokio::test]
async fn haproxy_with_options_primary_checks_sends_psql_to_the_leader_before_and_after_a_switchover(
) {
    let c = healthy_cluster(opts("api-haproxy")).await;
    let leader = c.leader().await.expect("leader");
    let port = praetor_harness::free_port();
    let mut servers = String::new();
    for n in &c.nodes {
        servers.push_str(&format!(
            "  server {} 127.0.0.1:{} maxconn 100 check port {}\n",
            n.name, n.pg_port, n.api_port
        ));
    }
    let cfg = format!(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\nlisten primary\n  bind 127.0.0.1:{port}\n  option httpchk OPTIONS /primary\n  http-check expect status 200\n  default-server inter 300ms fall 2 rise 1 on-marked-down shutdown-sessions\n{servers}"
    );
    let path = c.work.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let haproxy = ["/usr/sbin/haproxy", "haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists() || *p == "haproxy")
        .unwrap();
    let mut cmd = std::process::Command::new(haproxy);
    cmd.arg("-f").arg(&path).arg("-db");
    let _haproxy =
        praetor_harness::Process::spawn("haproxy", cmd, &c.work.path().join("haproxy.log"))
            .expect("start haproxy");
    let psql_port = |want: u16| {
        let dsn = format!(
            "host=127.0.0.1 port={port} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=3"
        );
        async move {
            let out = tokio::process::Command::new("psql")
                .arg(&dsn)
                .args([
                    "-Atc",
                    "SELECT pg_is_in_recovery(), current_setting('port')",
                ])
                .output()
                .await
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if text == format!("f|{want}") {
                Ok(())
            } else {
                Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)))
            }
        }
    };
    wait_for(
        "psql through HAProxy to reach the leader",
        Duration::from_secs(30),
        || psql_port(c.node(&leader).pg_port),
    )
    .await
    .unwrap();
    let candidate = others(&c, &leader)[0].clone();
    ctl_switchover(&c, &leader, &candidate).await;
    wait_for(
        "psql through HAProxy to reach the new leader",
        Duration::from_secs(60),
        || psql_port(c.node(&candidate).pg_port),
    )
    .await
    .unwrap();
}
