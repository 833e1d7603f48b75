//! `praetor ctl` against real 3-node clusters (etcd, PostgreSQL 15): every command, patronictl's
//! output (golden `list` and `history` tables modulo ports, system identifier, LSNs and times),
//! interactive prompts, and refusals that change nothing in the DCS.

mod common;

use std::time::Duration;

use common::*;

fn opts(scope: &str) -> ClusterOptions {
    ClusterOptions {
        scope: scope.into(),
        proxy: false,
        ..Default::default()
    }
}

/// Replaces every digit of the ports after `127.0.0.1:` and of the system identifier in the title
/// with `N` (keeping the table's widths).
fn normalize(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut l = line.to_string();
        if let Some(start) = l.find("127.0.0.1:") {
            let from = start + "127.0.0.1:".len();
            let end = l[from..]
                .find(|c: char| !c.is_ascii_digit())
                .map(|e| from + e)
                .unwrap_or(l.len());
            l.replace_range(from..end, &"N".repeat(end - from));
        }
        if l.starts_with("+ Cluster: ") {
            if let (Some(a), Some(b)) = (l.find('('), l.find(')')) {
                l.replace_range(a + 1..b, &"N".repeat(b - a - 1));
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// `ctl list` once every replica's "Lag in MB" cell reads 0 (bounded by 30 s).
async fn caught_up_listing(c: &LocalCluster) -> Output {
    praetor_harness::wait_for(
        "every replica's lag at 0 MB",
        Duration::from_secs(30),
        || async {
            let out = ctl(c, &["list"], "").await;
            if out.code != 0 {
                return Err(out.to_string());
            }
            let behind = cells(&out.stdout).iter().any(|row| {
                row.get(2).is_some_and(|r| r == "Replica") && row.get(5).is_none_or(|l| l != "0")
            });
            if behind {
                Err(out.stdout.clone())
            } else {
                Ok(out)
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The cells of the table's rows (not borders, not the header).
fn cells(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn list_topology_configuration_dsn_query_and_version() {
    let c = healthy_cluster(opts("ctl-read")).await;
    let leader = c.leader().await.expect("leader");
    let role = |n: &str| if n == leader { "Leader " } else { "Replica" };
    let state = |n: &str| {
        if n == leader {
            "running  "
        } else {
            "streaming"
        }
    };
    let lag = |n: &str| if n == leader { " " } else { "0" };
    let mut expected = String::from(
        "+ Cluster: ctl-read (NNNNNNNNNNNNNNNNNNN) -------+----+-----------+\n\
         | Member | Host            | Role    | State     | TL | Lag in MB |\n\
         +--------+-----------------+---------+-----------+----+-----------+\n",
    );
    for n in ["pg1", "pg2", "pg3"] {
        expected.push_str(&format!(
            "| {n}    | 127.0.0.1:NNNNN | {} | {} |  1 |         {} |\n",
            role(n),
            state(n),
            lag(n)
        ));
    }
    expected.push_str("+--------+-----------------+---------+-----------+----+-----------+\n");
    // A replica's published lag can trail the leader's WAL by a segment for one loop_wait after
    // bootstrap (CI saw 16 MB once): the golden table is of a caught-up cluster, so wait for one.
    let out = caught_up_listing(&c).await;
    assert_eq!(normalize(&out.stdout), expected, "\n{}", out.stdout);
    // The same with the cluster named, and through $PATRONICTL_CONFIG_FILE.
    let config = c.nodes[1].config.to_str().unwrap().to_string();
    let env = ctl_with(
        std::path::Path::new("/dev/null/none"),
        &["list", "ctl-read"],
        "",
        &[],
    )
    .await;
    assert_ne!(
        env.code, 0,
        "a missing configuration file is an error: {env}"
    );
    let out2 = {
        let mut cmd = tokio::process::Command::new(binary());
        cmd.args(["ctl", "list", "ctl-read"])
            .env("PATRONICTL_CONFIG_FILE", &config);
        cmd.output().await.expect("ctl")
    };
    assert_eq!(normalize(&String::from_utf8_lossy(&out2.stdout)), expected);

    let json = ctl(&c, &["list", "-f", "json"], "").await;
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json list");
    assert_eq!(v.as_array().map(Vec::len), Some(3), "{json}");
    assert_eq!(v[0]["Cluster"], "ctl-read");
    let leader_row = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Member"] == leader.as_str())
        .unwrap();
    assert_eq!(leader_row["Role"], "Leader");
    let tsv = ctl(&c, &["list", "-f", "tsv"], "").await;
    assert_eq!(
        tsv.stdout.lines().next(),
        Some("Cluster\tMember\tHost\tRole\tState\tTL\tLag in MB")
    );
    let yaml = ctl(&c, &["list", "-f", "yaml"], "").await;
    assert!(yaml.stdout.contains("Member: pg1"), "{yaml}");
    let ext = ctl(&c, &["list", "-e"], "").await;
    assert!(
        ext.stdout
            .contains("| Pending restart | Pending restart reason | Scheduled restart | Tags |"),
        "{ext}"
    );
    let ts = ctl(&c, &["list", "-t"], "").await;
    assert!(
        ts.stdout.lines().next().unwrap_or("").starts_with("20"),
        "{ts}"
    );

    let topo = ctl(&c, &["topology"], "").await;
    assert_eq!(topo.code, 0, "{topo}");
    let names: Vec<String> = cells(&topo.stdout).iter().map(|r| r[0].clone()).collect();
    assert_eq!(names[0], leader, "{topo}");
    assert!(names[1..].iter().all(|n| n.starts_with("+ ")), "{topo}");

    let history = ctl(&c, &["history"], "").await;
    assert_eq!(
        history.stdout,
        "+----+-----+--------+-----------+------------+\n\
         | TL | LSN | Reason | Timestamp | New Leader |\n\
         +----+-----+--------+-----------+------------+\n\
         +----+-----+--------+-----------+------------+\n",
        "{history}"
    );

    // Configuration: show, -p / -s, --apply -, $EDITOR, refusals.
    let show = ctl(&c, &["show-config"], "").await;
    assert!(
        show.stdout.contains("loop_wait: 1\n") && show.stdout.contains("ttl: 6\n"),
        "{show}"
    );
    let set = ctl(
        &c,
        &[
            "edit-config",
            "-p",
            "work_mem=8MB",
            "-s",
            "praetor_note=hello",
            "--force",
        ],
        "",
    )
    .await;
    assert_eq!(set.code, 0, "{set}");
    assert!(set.stdout.contains("+praetor_note: hello"), "{set}");
    assert!(set.stdout.contains("Configuration changed"), "{set}");
    let cfg = dcs_cluster(&c).await.config.unwrap().value;
    assert_eq!(cfg["postgresql"]["parameters"]["work_mem"], "8MB");
    let same = ctl(
        &c,
        &["edit-config", "-s", "praetor_note=hello", "--force"],
        "",
    )
    .await;
    assert!(same.stdout.contains("Not changed"), "{same}");
    let apply = ctl(
        &c,
        &["edit-config", "--apply", "-", "--force"],
        "praetor_note: null\npostgresql:\n  parameters:\n    work_mem: null\n",
    )
    .await;
    assert_eq!(apply.code, 0, "{apply}");
    let cfg2 = dcs_cluster(&c).await.config.unwrap().value;
    assert!(cfg2.get("praetor_note").is_none(), "{cfg2}");
    let editor = ctl_with(
        &c.nodes[0].config,
        &["edit-config"],
        "y\n",
        &[("EDITOR", "sed -i -e 's/^ttl: 6$/ttl: 7/'")],
    )
    .await;
    assert_eq!(editor.code, 0, "{editor}");
    assert!(editor.stdout.contains("-ttl: 6\n+ttl: 7\n"), "{editor}");
    assert!(
        editor.stdout.contains("Apply these changes? [y/N]"),
        "{editor}"
    );
    assert_eq!(dcs_cluster(&c).await.config.unwrap().value["ttl"], 7);
    let before = dcs_cluster(&c).await.config.unwrap();
    let declined = ctl(&c, &["edit-config", "-s", "ttl=6"], "n\n").await;
    assert_ne!(declined.code, 0, "{declined}");
    let bad = ctl(
        &c,
        &[
            "edit-config",
            "-s",
            "postgresql.authentication.superuser.password=x",
            "--force",
        ],
        "",
    )
    .await;
    assert_ne!(bad.code, 0, "{bad}");
    assert!(bad.stderr.contains("passwords do not belong"), "{bad}");
    let bad_type = ctl(&c, &["edit-config", "-s", "loop_wait=soon", "--force"], "").await;
    assert_ne!(bad_type.code, 0, "{bad_type}");
    // Recovery settings and timings no loop can honour are refused naming the key path.
    for (args, reason) in [
        (
            &["edit-config", "-p", "promote_trigger_file=/tmp/go", "--force"][..],
            "postgresql.parameters.promote_trigger_file: promote_trigger_file is managed by the agent",
        ),
        (
            &["edit-config", "-p", "recovery_target=immediate", "--force"],
            "postgresql.parameters.recovery_target: recovery_target is a recovery setting",
        ),
        (
            &["edit-config", "-s", "ttl=2", "--force"],
            "ttl: 2 is out of range: give 3 to 86400 seconds",
        ),
    ] {
        let refused = ctl(&c, args, "").await;
        assert_ne!(refused.code, 0, "{args:?}: {refused}");
        assert!(refused.stderr.contains(reason), "{args:?}: {refused}");
    }
    assert_eq!(
        dcs_cluster(&c).await.config.unwrap(),
        before,
        "refusals changed nothing"
    );
    let back = ctl(&c, &["edit-config", "-s", "ttl=6", "--force"], "").await;
    assert_eq!(back.code, 0, "{back}");

    // dsn and query go to the member's conn_url.
    let dsn = ctl(&c, &["dsn"], "").await;
    assert_eq!(
        dsn.stdout,
        format!("host=127.0.0.1 port={}\n", c.node(&leader).pg_port)
    );
    let replica = others(&c, &leader)[0].clone();
    let dsn = ctl(&c, &["dsn", "-m", &replica], "").await;
    assert_eq!(
        dsn.stdout,
        format!("host=127.0.0.1 port={}\n", c.node(&replica).pg_port)
    );
    let q = ctl(
        &c,
        &["query", "-c", "SELECT pg_is_in_recovery() AS r, NULL AS n"],
        "",
    )
    .await;
    assert_eq!(q.stdout, "r\tn\nf\tNone\n", "{q}");
    let q = ctl(
        &c,
        &["query", "-m", &replica, "-c", "SELECT pg_is_in_recovery()"],
        "",
    )
    .await;
    assert_eq!(q.stdout, "pg_is_in_recovery\nt\n", "{q}");
    let q = ctl(
        &c,
        &[
            "query",
            "-r",
            "replica",
            "--format",
            "json",
            "-c",
            "SELECT 1 AS one",
        ],
        "",
    )
    .await;
    assert_eq!(q.stdout.trim(), "[{\"one\":\"1\"}]", "{q}");
    let q = ctl(&c, &["query", "-c", "SELECT * FROM no_such_table"], "").await;
    assert_ne!(q.code, 0, "{q}");
    assert!(q.stderr.contains("no_such_table"), "{q}");

    let v = ctl(&c, &["version"], "").await;
    assert_eq!(
        v.stdout,
        format!("praetor ctl version {}\n", env!("CARGO_PKG_VERSION"))
    );
    let v = ctl(&c, &["version", "ctl-read"], "").await;
    for n in ["pg1", "pg2", "pg3"] {
        assert!(
            v.stdout.contains(&format!(
                "{n}: Praetor {} PostgreSQL 15.",
                env!("CARGO_PKG_VERSION")
            )),
            "{v}"
        );
    }
}

#[tokio::test]
async fn switchover_failover_and_history_with_prompts_and_refusals() {
    let mut o = opts("ctl-switch");
    o.tags = vec![(2, "nofailover: true".into())];
    let c = healthy_cluster(o).await;
    let leader = c.leader().await.expect("leader");
    let candidate = others(&c, &leader)
        .into_iter()
        .find(|n| n != "pg3")
        .unwrap();
    let before = dcs_cluster(&c).await;
    let refusals: Vec<(Vec<&str>, &str, String)> = vec![
        (
            vec!["switchover", "--leader", &candidate, "--force"],
            "",
            format!("Member {candidate} is not the leader of cluster ctl-switch"),
        ),
        (
            vec![
                "switchover",
                "--leader",
                &leader,
                "--candidate",
                "nope",
                "--force",
            ],
            "",
            "Member nope does not exist in cluster ctl-switch or is tagged as nofailover".into(),
        ),
        (
            vec![
                "switchover",
                "--leader",
                &leader,
                "--candidate",
                "pg3",
                "--force",
            ],
            "",
            "Member pg3 does not exist in cluster ctl-switch or is tagged as nofailover".into(),
        ),
        (
            vec![
                "switchover",
                "--leader",
                &leader,
                "--candidate",
                &candidate,
                "--scheduled",
                "2020-01-01T00:00+00:00",
                "--force",
            ],
            "",
            "Can not schedule switchover in the past".into(),
        ),
        (
            vec![
                "switchover",
                "--leader",
                &leader,
                "--candidate",
                &candidate,
                "--scheduled",
                "whenever",
                "--force",
            ],
            "",
            "Unable to parse scheduled timestamp".into(),
        ),
        (
            vec!["switchover"],
            "\n\n\nn\n",
            "Aborting switchover".into(),
        ),
        (vec!["switchover"], "", "no answer on standard input".into()),
        (
            vec!["failover", "--force"],
            "",
            "Failover could be performed only to a specific candidate".into(),
        ),
        (
            vec!["failover", "--candidate", &leader, "--force"],
            "",
            "Failover target and source are the same".into(),
        ),
    ];
    for (args, stdin, text) in &refusals {
        let out = ctl(&c, args, stdin).await;
        assert_ne!(out.code, 0, "{args:?}: {out}");
        assert!(
            out.stderr.contains(text.as_str()),
            "{args:?} should say {text:?}: {out}"
        );
    }
    let after = dcs_cluster(&c).await;
    assert_eq!(
        after.failover, before.failover,
        "refusals wrote no failover key"
    );

    // Scheduled, shown in list, flushed.
    let at = (time::OffsetDateTime::now_utc() + time::Duration::hours(3))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = ctl(
        &c,
        &[
            "switchover",
            "--leader",
            &leader,
            "--candidate",
            &candidate,
            "--scheduled",
            &at,
            "--force",
        ],
        "",
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("Switchover scheduled"), "{out}");
    let list = ctl(&c, &["list"], "").await;
    assert!(list.stdout.contains(" Switchover scheduled at: "), "{list}");
    assert!(
        list.stdout
            .contains(&format!("                      to: {candidate}")),
        "{list}"
    );
    let flush = ctl(&c, &["flush", "ctl-switch", "switchover"], "").await;
    assert_eq!(
        flush.stdout.trim(),
        "scheduled switchover deleted",
        "{flush}"
    );
    let flush = ctl(&c, &["flush", "ctl-switch", "switchover"], "").await;
    assert_eq!(
        flush.stdout.trim(),
        "No pending scheduled switchover",
        "{flush}"
    );

    // Interactive switchover: every answer typed.
    let out = ctl(
        &c,
        &["switchover"],
        &format!("{leader}\n{candidate}\nnow\ny\n"),
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    for prompt in [
        "Primary [",
        "Candidate ['",
        "When should the switchover take place",
        "Are you sure you want to switchover cluster ctl-switch, demoting current leader",
    ] {
        assert!(
            out.stdout.contains(prompt),
            "missing prompt {prompt:?}: {out}"
        );
    }
    assert!(
        out.stdout
            .contains(&format!("Successfully switched over to \"{candidate}\"")),
        "{out}"
    );
    wait_leader(&c, &candidate).await;

    let history = ctl(&c, &["history"], "").await;
    let rows = cells(&history.stdout);
    assert_eq!(rows.len(), 1, "{history}");
    assert_eq!(rows[0][0], "1");
    assert!(rows[0][1].parse::<u64>().is_ok(), "{history}");
    assert_eq!(rows[0][2], "no recovery target specified");
    assert!(rows[0][3].starts_with("20"), "{history}");
    assert_eq!(rows[0][4], candidate);
    let header = history.stdout.lines().nth(1).unwrap_or("");
    assert!(
        header.starts_with("| TL | ") && header.ends_with(" | New Leader |"),
        "{history}"
    );

    // Failover to a named candidate (the first leader), with the question answered.
    let out = ctl(&c, &["failover", "--candidate", &leader], "y\n").await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains(&format!("Successfully failed over to \"{leader}\"")),
        "{out}"
    );
    wait_leader(&c, &leader).await;
    let json = ctl(&c, &["history", "-f", "json"], "").await;
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(v[1]["TL"], 2);
    assert_eq!(v[1]["New Leader"], leader.as_str());
}

#[tokio::test]
async fn restart_reload_reinit_pause_resume_flush_and_remove() {
    let mut c = healthy_cluster(opts("ctl-ops")).await;
    let leader = c.leader().await.expect("leader");
    let replica = others(&c, &leader)[0].clone();
    let out = ctl(&c, &["restart", "ctl-ops", &replica, "--force"], "").await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stdout.trim(),
        format!("Success: restart on member {replica}")
    );
    let out = ctl(
        &c,
        &[
            "restart",
            "ctl-ops",
            "--role",
            "replica",
            "--pending",
            "--force",
        ],
        "",
    )
    .await;
    assert_ne!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains("status code=503, (restart conditions are not satisfied)"),
        "{out}"
    );
    // Interactive restart: which member, when, version, confirmation.
    let at = (time::OffsetDateTime::now_utc() + time::Duration::hours(3))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = ctl(
        &c,
        &["restart", "ctl-ops"],
        &format!("{replica}\n{at}\n\ny\n"),
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("Which member do you want to restart ["),
        "{out}"
    );
    assert!(
        out.stdout
            .contains(&format!("Success: restart scheduled on member {replica}")),
        "{out}"
    );
    wait_for(
        "Scheduled restart in list",
        Duration::from_secs(30),
        || async {
            let l = ctl(&c, &["list"], "").await;
            l.stdout
                .contains("Scheduled restart")
                .then_some(())
                .ok_or(l.stdout)
        },
    )
    .await
    .unwrap();
    let out = ctl(
        &c,
        &["flush", "ctl-ops", &replica, "restart", "--force"],
        "",
    )
    .await;
    assert!(
        out.stdout.contains(&format!(
            "Success: flush scheduled restart for member {replica}"
        )),
        "{out}"
    );

    let out = ctl(&c, &["reload", "ctl-ops", "--force"], "").await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stdout
            .matches("Reload request received for member")
            .count(),
        3,
        "{out}"
    );

    let out = ctl(&c, &["reinit", "ctl-ops", &leader, "--force"], "").await;
    assert_ne!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains(&format!(
            "Failed: reinitialize for member {leader}, status code=412, (I am the leader, can not reinitialize)"
        )),
        "{out}"
    );
    // Without --force it asks; "n" changes nothing (the agent answers only after it stopped
    // PostgreSQL and removed the data directory, so a request sent would show at once).
    let before = c.node(&replica).postmaster_pid();
    assert!(before.is_some());
    let out = ctl(&c, &["reinit", "ctl-ops", &replica], "n\n").await;
    assert_ne!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains(&format!(
            "Are you sure you want to reinitialize members {replica}? [y/N]"
        )),
        "{out}"
    );
    assert!(out.stderr.contains("Aborted reinitialize"), "{out}");
    assert!(!out.stdout.contains("reinitialize for member"), "{out}");
    assert_eq!(c.node(&replica).postmaster_pid(), before, "{out}");
    assert!(c.node(&replica).data_dir().join("PG_VERSION").exists());
    assert!(!c.node(&replica).log().contains("reinitialize requested"));
    let out = ctl(
        &c,
        &["reinit", "ctl-ops", &replica, "--force", "--wait"],
        "",
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains(&format!("Success: reinitialize for member {replica}")),
        "{out}"
    );
    assert!(
        out.stdout
            .contains(&format!("Reinitialize is completed on: {replica}")),
        "{out}"
    );
    c.wait_healthy(2, Duration::from_secs(120))
        .await
        .expect("healthy after reinit");

    let out = ctl(&c, &["pause", "--wait"], "").await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("Success: cluster management is paused"),
        "{out}"
    );
    assert_eq!(dcs_cluster(&c).await.config.unwrap().value["pause"], true);
    assert!(ctl(&c, &["list"], "")
        .await
        .stdout
        .contains(" Maintenance mode: on"));
    let again = ctl(&c, &["pause"], "").await;
    assert!(
        again.stderr.contains("Cluster is already paused"),
        "{again}"
    );
    let out = ctl(&c, &["resume", "--wait"], "").await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains("Success: cluster management is resumed"),
        "{out}"
    );
    assert!(!ctl(&c, &["list"], "")
        .await
        .stdout
        .contains("Maintenance mode"));

    // remove: the answers must match; a healthy cluster also asks for the leader.
    let wrong = ctl(&c, &["remove", "ctl-ops"], "other\n").await;
    assert!(
        wrong
            .stderr
            .contains("Cluster names specified do not match"),
        "{wrong}"
    );
    let wrong = ctl(
        &c,
        &["remove", "ctl-ops"],
        "ctl-ops\nYes I am aware\nnobody\n",
    )
    .await;
    assert!(
        wrong
            .stderr
            .contains("You did not specify the current leader of the cluster"),
        "{wrong}"
    );
    assert!(
        dcs_cluster(&c).await.initialize.is_some(),
        "nothing removed"
    );
    c.shutdown().await;
    let out = ctl(&c, &["remove", "ctl-ops"], "ctl-ops\nYes I am aware\n").await;
    assert_eq!(out.code, 0, "{out}");
    let d = dcs_cluster(&c).await;
    assert!(
        d.initialize.is_none() && d.config.is_none() && d.members.is_empty(),
        "{d:?}"
    );
}

#[tokio::test]
async fn list_watch_refreshes_until_interrupted() {
    let c = healthy_cluster(ClusterOptions {
        nodes: 2,
        ..opts("ctl-watch")
    })
    .await;
    let mut child = tokio::process::Command::new(binary())
        .args(["ctl", "-c"])
        .arg(&c.nodes[0].config)
        .args(["list", "-w", "0.2"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ctl list -w");
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.matches("+ Cluster: ctl-watch").count() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "ctl list -w printed fewer than 3 tables in 30 s:\n{seen}"
        );
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::io::AsyncReadExt::read(&mut stdout, &mut buf),
        )
        .await;
        if let Ok(Ok(n)) = read {
            assert!(n > 0, "ctl list -w exited:\n{seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    child.kill().await.unwrap();
}
