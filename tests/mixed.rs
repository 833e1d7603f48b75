//! Mixed Patroni/Praetor clusters (issue 16, item 1), against real Patroni 4.1.5 from PyPI (the
//! virtualenv `scripts/setup` makes in `.venv-patroni`), on one etcd v3, same scope and namespace.
//!
//! - `praetor_joins_a_patroni_cluster_and_both_switch_over`: a Praetor agent joins a running
//!   Patroni cluster as a replica (cloned from the Patroni leader, streaming); `patronictl list` and
//!   `praetor ctl list` show the same members, roles, states and timelines; `patronictl switchover`
//!   moves the leader to the Praetor member and the Patroni replicas follow it; synchronous mode
//!   switched on by patronictl and off by praetor ctl; scheduled switchovers written by each tool
//!   and read by the other; `praetor ctl switchover` back to a Patroni member. After each step every
//!   DCS value is read by both sides: by Praetor's types, strictly, and by Patroni's own DCS code
//!   (`get_cluster()`), whose parse must equal the raw value with nothing logged.
//! - `patroni_joins_a_praetor_bootstrapped_cluster`: the reverse, for the values only a bootstrap
//!   writes (`initialize`, the first `config`): Praetor bootstraps, a Patroni replica clones from it.
//! - `rolling_migration_from_patroni_under_writes`: three Patroni nodes, `praetor proxy`, a client
//!   writing through it; each node in turn (replicas first, the leader after a switchover away) has
//!   Patroni stopped and a Praetor agent started on the same data directory with the same YAML.
//!   No acknowledged write is lost; the longest write gap is printed, never asserted.
//!
//! Run one at a time (`--test-threads=1`): each starts etcd and three PostgreSQL servers.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::writer::Writer;
use common::*;
use praetor_harness::patroni::{patroni_view, patronictl};
use serde_json::Value;

fn mixed_options(scope: &str, proxy: bool) -> ClusterOptions {
    ClusterOptions {
        scope: scope.into(),
        nodes: 3,
        start_agents: false,
        proxy,
        ..Default::default()
    }
}

/// Starts Patroni on node `i` and waits until the cluster has a running leader and `replicas`
/// streaming members.
async fn start_patroni(c: &mut LocalCluster, i: usize, replicas: usize) {
    c.nodes[i].start_patroni().expect("start patroni");
    if let Err(e) = c.wait_healthy(replicas, Duration::from_secs(180)).await {
        fail(
            c,
            &format!("after starting Patroni on {}: {e}", c.nodes[i].name),
        );
    }
}

/// Prints the logs, keeps the directory and panics.
fn fail(c: &mut LocalCluster, what: &str) -> ! {
    dump_logs(c);
    let kept = c.work.keep();
    panic!("{what}\nlogs kept in {}", kept.display());
}

/// Every key under the cluster's prefix, raw: key (after the prefix) → value.
async fn raw_keys(c: &LocalCluster) -> BTreeMap<String, String> {
    let (_, hosts) = c.etcd.section_and_hosts();
    let mut client = etcd_client::Client::connect(hosts, None)
        .await
        .expect("etcd client");
    let prefix = format!("/service/{}/", c.options.scope);
    let resp = client
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("etcd range read");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str()
                    .unwrap()
                    .trim_start_matches(&prefix)
                    .to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn json(key: &str, raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|e| panic!("{key}: not JSON ({e}): {raw}"))
}

/// Reads every DCS value with Praetor's types (strictly: an error fails the test) and with
/// Patroni's code, and checks that what Patroni parsed equals the raw value, with nothing logged.
/// The two reads are not atomic, so the comparison is repeated until one pair agrees (an idle
/// cluster's values settle; a value one side cannot read never agrees). Returns the raw keys.
/// `step` names the moment in failure messages.
async fn both_read_every_value(c: &LocalCluster, step: &str) -> BTreeMap<String, String> {
    wait_for(
        &format!("{step}: Patroni's reading of every DCS value to equal the raw values"),
        Duration::from_secs(60),
        || async {
            let raw = raw_keys(c).await;
            praetor_reads(&raw, step);
            let view = patroni_view(c)?;
            patroni_read_the_same(&raw, &view)
                .map_err(|e| format!("{e}\nPatroni: {view}\nraw: {raw:?}"))?;
            Ok(raw)
        },
    )
    .await
    .unwrap()
}

/// Praetor's side: each value decodes into the type the agent, the proxy and ctl use; panics
/// naming the key otherwise.
fn praetor_reads(raw: &BTreeMap<String, String>, step: &str) {
    for (key, value) in raw {
        let what = format!("{step}: Praetor reading {key} = {value}");
        match key.as_str() {
            "initialize" => {
                value.parse::<u64>().expect(&what);
            }
            "leader" => assert!(!value.is_empty(), "{what}"),
            "config" => {
                praetor_config::DynamicConfig::from_json(&json(key, value)).expect(&what);
            }
            "status" => {
                serde_json::from_str::<praetor_dcs::Status>(value).expect(&what);
            }
            "sync" => {
                serde_json::from_str::<praetor_dcs::SyncState>(value).expect(&what);
            }
            "failover" => {
                serde_json::from_str::<praetor_dcs::Failover>(value).expect(&what);
            }
            "history" => {
                serde_json::from_str::<Vec<praetor_dcs::HistoryEntry>>(value).expect(&what);
            }
            k if k.starts_with("members/") => {
                let m: praetor_dcs::MemberData = serde_json::from_str(value).expect(&what);
                assert_ne!(m.role, praetor_dcs::Role::Unknown, "{what}");
                assert_ne!(m.state, praetor_dcs::MemberState::Unknown, "{what}");
                m.conn_host_port().expect(&what);
            }
            // Praetor's own proxy keys. Patroni's legacy `optime/leader`, written only while a
            // member older than Patroni 2.1 is listed, must not appear.
            k if k.starts_with("praetor/proxies/") => {}
            other => panic!("{step}: a key neither side should write: {other} = {value}"),
        }
    }
}

/// Patroni's side: its `get_cluster()` over the same keys parsed each one as written.
fn patroni_read_the_same(raw: &BTreeMap<String, String>, view: &Value) -> Result<(), String> {
    fn same(what: &str, patroni: &Value, raw: &Value) -> Result<(), String> {
        if patroni == raw {
            Ok(())
        } else {
            Err(format!(
                "{what}: Patroni read {patroni}, the DCS holds {raw}"
            ))
        }
    }
    let text = |k: &str| raw.get(k).map_or(Value::Null, |v| Value::from(v.as_str()));
    same("log", &view["log"], &serde_json::json!([]))?;
    same("initialize", &view["initialize"], &text("initialize"))?;
    same("leader", &view["leader"], &text("leader"))?;
    if let Some(cfg) = raw.get("config") {
        same("config", &view["config"], &json("config", cfg))?;
    }
    let members = view["members"].as_object().ok_or("no members")?;
    let raw_members: Vec<(&str, Value)> = raw
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("members/")?, json(k, v))))
        .collect();
    if members.len() != raw_members.len() {
        return Err(format!(
            "{} members read of {}",
            members.len(),
            raw_members.len()
        ));
    }
    for (name, data) in &raw_members {
        let m = &members[*name];
        let w = |f: &str| format!("members/{name} {f}");
        same(&w("role"), &m["role"], &data["role"])?;
        same(&w("state"), &m["state"], &data["state"])?;
        same(&w("conn_url"), &m["conn_url"], &data["conn_url"])?;
        same(&w("api_url"), &m["api_url"], &data["api_url"])?;
        same(&w("xlog_location"), &m["lsn"], &data["xlog_location"])?;
        same(&w("receive_lsn"), &m["receive_lsn"], &data["receive_lsn"])?;
        same(&w("replay_lsn"), &m["replay_lsn"], &data["replay_lsn"])?;
        same(&w("timeline"), &m["timeline"], &data["timeline"])?;
        let (host, port) =
            praetor_dcs::parse_url_host_port(data["conn_url"].as_str().unwrap(), 5432)
                .ok_or("conn_url")?;
        same(
            &w("conn_kwargs.host"),
            &m["conn_kwargs"]["host"],
            &host.into(),
        )?;
        same(
            &w("conn_kwargs.port"),
            &m["conn_kwargs"]["port"],
            &port.into(),
        )?;
        // Patroni takes `version` as the member's Patroni version: a Praetor member must look
        // like the release it follows, or Patroni applies its rules for old versions.
        same(
            &w("version"),
            &m["patroni_version"],
            &serde_json::json!([4, 1, 5]),
        )?;
    }
    if let Some(f) = raw.get("failover") {
        let f = json("failover", f);
        if f.get("leader").is_some() || f.get("member").is_some() {
            same("failover.leader", &view["failover"]["leader"], &f["leader"])?;
            same(
                "failover.member",
                &view["failover"]["candidate"],
                &f["member"],
            )?;
            same(
                "failover.scheduled_at",
                &view["failover"]["scheduled_at"].is_null().into(),
                &f["scheduled_at"].is_null().into(),
            )?;
        } else {
            same("failover", &view["failover"], &Value::Null)?;
        }
    }
    if let Some(s) = raw.get("sync") {
        let s = json("sync", s);
        same("sync.leader", &view["sync"]["leader"], &s["leader"])?;
        let listed: Vec<Value> = s["sync_standby"]
            .as_str()
            .unwrap_or("")
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| Value::from(n.trim()))
            .collect();
        same(
            "sync.sync_standby",
            &view["sync"]["voters"],
            &Value::from(listed),
        )?;
    }
    if let Some(h) = raw.get("history") {
        same("history", &view["history"], &json("history", h))?;
    }
    if let Some(s) = raw.get("status") {
        let s = json("status", s);
        same("status.optime", &view["status"]["optime"], &s["optime"])?;
        if !s["slots"].is_null() {
            same("status.slots", &view["status"]["slots"], &s["slots"])?;
        }
        if !s["retain_slots"].is_null() {
            same(
                "status.retain_slots",
                &view["status"]["retain_slots"],
                &s["retain_slots"],
            )?;
        }
    }
    same(
        "min_version",
        &view["min_version"],
        &serde_json::json!([4, 1, 5]),
    )
}

/// Name → (role, state, timeline) from a `list -f json` of either tool (Patroni's column names).
fn list_rows(out: &str) -> BTreeMap<String, (String, String, String)> {
    let rows: Vec<Value> = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    rows.iter()
        .map(|r| {
            (
                r["Member"].as_str().unwrap().to_string(),
                (
                    r["Role"].as_str().unwrap_or_default().to_string(),
                    r["State"].as_str().unwrap_or_default().to_string(),
                    r["TL"].to_string(),
                ),
            )
        })
        .collect()
}

/// Waits until `patronictl list` and `praetor ctl list` show the same members with the same
/// roles, states and timelines, every member running or streaming.
async fn lists_agree(c: &LocalCluster) {
    let config = praetor_harness::patroni::ctl_config(c).unwrap();
    let scope = c.options.scope.clone();
    wait_for(
        "patronictl list and praetor ctl list to agree",
        Duration::from_secs(60),
        || async {
            let patroni = list_rows(&patronictl(c, &["list", &scope, "-f", "json"])?);
            let out = ctl_with(&config, &["list", &scope, "-f", "json"], "", &[]).await;
            if out.code != 0 {
                return Err(format!("praetor ctl list: {out}"));
            }
            let praetor = list_rows(&out.stdout);
            let settled = patroni
                .values()
                .all(|(_, state, _)| state == "running" || state == "streaming");
            if patroni == praetor && settled && patroni.len() == c.nodes.len() {
                Ok(())
            } else {
                Err(format!("patronictl: {patroni:?}\npraetor ctl: {praetor:?}"))
            }
        },
    )
    .await
    .unwrap();
}

/// Writes a row on the leader and waits until every other member has replayed it (they stream
/// from that leader).
async fn all_follow(c: &LocalCluster, leader: &str, id: i32) {
    // The leader key moves before pg_promote() ends (Patroni's order too): wait for writes.
    let port = c.node(leader).pg_port;
    wait_for(
        &format!("{leader} to accept writes"),
        Duration::from_secs(60),
        || async move {
            match is_primary(port).await {
                Some(true) => Ok(()),
                other => Err(format!("primary: {other:?}")),
            }
        },
    )
    .await
    .unwrap();
    let client = connect_retry(port, Duration::from_secs(30)).await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS f (id int PRIMARY KEY)")
        .await
        .unwrap();
    client
        .execute("INSERT INTO f VALUES ($1)", &[&id])
        .await
        .unwrap();
    for n in c.nodes.iter().filter(|n| n.name != leader) {
        let port = n.pg_port;
        wait_for(
            &format!("{} to replay row {id} from {leader}", n.name),
            Duration::from_secs(60),
            || async move {
                let cl = connect(port).await.map_err(|e| e.to_string())?;
                let rows = cl
                    .query("SELECT 1 FROM f WHERE id = $1", &[&id])
                    .await
                    .map_err(|e| e.to_string())?;
                if rows.is_empty() {
                    Err("not yet".into())
                } else {
                    Ok(())
                }
            },
        )
        .await
        .unwrap();
    }
}

/// The member key of `name`, parsed.
async fn member(c: &LocalCluster, name: &str) -> praetor_dcs::MemberData {
    let raw = raw_keys(c).await;
    serde_json::from_str(&raw[&format!("members/{name}")]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn praetor_joins_a_patroni_cluster_and_both_switch_over() {
    let mut c = LocalCluster::start(&binary(), mixed_options("mixed", false))
        .await
        .expect("etcd starts");
    start_patroni(&mut c, 0, 0).await;
    start_patroni(&mut c, 1, 1).await;
    let bin = c.binary.clone();
    c.nodes[2].start_agent(&bin).unwrap();
    if let Err(e) = c.wait_healthy(2, Duration::from_secs(180)).await {
        fail(&mut c, &format!("the Praetor member did not join: {e}"));
    }
    // pg3 is Praetor's, cloned from the Patroni leader and streaming.
    assert!(member(&c, "pg3").await.praetor_version.is_some());
    assert!(member(&c, "pg1").await.praetor_version.is_none());
    lists_agree(&c).await;
    all_follow(&c, "pg1", 1).await;
    both_read_every_value(&c, "Praetor replica joined").await;

    // patronictl moves the leader to the Praetor member; the Patroni members follow it.
    patronictl(
        &c,
        &[
            "switchover",
            "mixed",
            "--leader",
            "pg1",
            "--candidate",
            "pg3",
            "--force",
        ],
    )
    .unwrap();
    wait_leader(&c, "pg3").await;
    all_follow(&c, "pg3", 2).await;
    lists_agree(&c).await;
    let raw = both_read_every_value(&c, "after patronictl switchover to Praetor").await;
    assert!(raw.contains_key("history"), "{raw:?}");

    // Synchronous mode: switched on by patronictl (Patroni writes config), the Praetor leader
    // writes the sync key; switched off by praetor ctl (Praetor writes config).
    patronictl(
        &c,
        &[
            "edit-config",
            "mixed",
            "-s",
            "synchronous_mode=true",
            "--force",
        ],
    )
    .unwrap();
    wait_for(
        "the Praetor leader to name a synchronous standby",
        Duration::from_secs(60),
        || async {
            let raw = raw_keys(&c).await;
            let s: praetor_dcs::SyncState =
                serde_json::from_str(raw.get("sync").ok_or("no sync key")?)
                    .map_err(|e| e.to_string())?;
            if s.leader.as_deref() == Some("pg3") && !s.members().is_empty() {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await
    .unwrap();
    both_read_every_value(&c, "synchronous mode on, Praetor leading").await;
    let out = ctl(
        &c,
        &[
            "edit-config",
            "mixed",
            "-s",
            "synchronous_mode=false",
            "--force",
        ],
        "",
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    both_read_every_value(&c, "config edited by praetor ctl").await;

    // Scheduled switchovers: each tool writes the failover key, both read it, the other flushes.
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let at = later
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = ctl(
        &c,
        &[
            "switchover",
            "mixed",
            "--leader",
            "pg3",
            "--candidate",
            "pg1",
            "--scheduled",
            &at,
            "--force",
        ],
        "",
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    let raw = both_read_every_value(&c, "switchover scheduled by praetor ctl").await;
    assert!(raw["failover"].contains("scheduled_at"), "{raw:?}");
    patronictl(&c, &["flush", "mixed", "switchover", "--force"]).unwrap();
    patronictl(
        &c,
        &[
            "switchover",
            "mixed",
            "--leader",
            "pg3",
            "--candidate",
            "pg2",
            "--scheduled",
            &at,
            "--force",
        ],
    )
    .unwrap();
    let raw = both_read_every_value(&c, "switchover scheduled by patronictl").await;
    let f: praetor_dcs::Failover = serde_json::from_str(&raw["failover"]).unwrap();
    assert_eq!(f.member.as_deref(), Some("pg2"), "{raw:?}");
    assert!(f.scheduled_at.is_some(), "{raw:?}");
    let out = ctl(&c, &["flush", "mixed", "switchover", "--force"], "").await;
    assert_eq!(out.code, 0, "{out}");

    // praetor ctl moves the leader back to a Patroni member; everyone follows it.
    ctl_switchover(&c, "pg3", "pg2").await;
    wait_leader(&c, "pg2").await;
    all_follow(&c, "pg2", 3).await;
    lists_agree(&c).await;
    both_read_every_value(&c, "after praetor ctl switchover to Patroni").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patroni_joins_a_praetor_bootstrapped_cluster() {
    // The values only a bootstrap writes (`initialize`, the first `config`) come from Praetor
    // here; a Patroni replica clones from the Praetor leader and follows it.
    let mut c = LocalCluster::start(&binary(), mixed_options("mixed-boot", false))
        .await
        .expect("etcd starts");
    let bin = c.binary.clone();
    c.nodes[0].start_agent(&bin).unwrap();
    if let Err(e) = c.wait_healthy(0, Duration::from_secs(180)).await {
        fail(&mut c, &format!("Praetor did not bootstrap: {e}"));
    }
    start_patroni(&mut c, 1, 1).await;
    c.nodes[2].start_agent(&bin).unwrap();
    if let Err(e) = c.wait_healthy(2, Duration::from_secs(180)).await {
        fail(&mut c, &format!("the third member did not join: {e}"));
    }
    assert!(member(&c, "pg1").await.praetor_version.is_some());
    assert!(member(&c, "pg2").await.praetor_version.is_none());
    lists_agree(&c).await;
    all_follow(&c, "pg1", 1).await;
    both_read_every_value(&c, "Patroni replica of a Praetor leader").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_migration_from_patroni_under_writes() {
    let mut c = LocalCluster::start(&binary(), mixed_options("migrate", false))
        .await
        .expect("etcd starts");
    start_patroni(&mut c, 0, 0).await;
    start_patroni(&mut c, 1, 1).await;
    start_patroni(&mut c, 2, 2).await;
    c.start_proxy().unwrap();
    let rw = c.proxy.as_ref().unwrap().rw_port;
    let writer = Writer::start(rw).await;
    writer.more(50).await;
    let started = Instant::now();
    let bin = c.binary.clone();
    let leader = c.leader().await.expect("a leader");
    // Replicas first, the leader last (after a switchover to a member Praetor already runs).
    let mut order: Vec<String> = others(&c, &leader);
    order.push(leader.clone());
    let mut replaced: Vec<String> = Vec::new();
    for name in &order {
        if c.leader().await.as_deref() == Some(name.as_str()) {
            let candidate = replaced.last().expect("a Praetor member").clone();
            patronictl(
                &c,
                &[
                    "switchover",
                    "migrate",
                    "--leader",
                    name,
                    "--candidate",
                    &candidate,
                    "--force",
                ],
            )
            .unwrap();
            wait_leader(&c, &candidate).await;
            writer.more(20).await;
        }
        let i = c.nodes.iter().position(|n| &n.name == name).unwrap();
        // Patroni stops its PostgreSQL on SIGTERM; the agent starts it again on the same data
        // directory, with the same YAML.
        let code = c.nodes[i].stop_agent(Duration::from_secs(120)).await;
        assert!(code.is_ok(), "patroni on {name} stops: {code:?}");
        c.nodes[i].start_agent(&bin).unwrap();
        // Patroni's member key outlives it (until its lease ends): wait for the agent's own,
        // saying its PostgreSQL runs and streams.
        let streaming = wait_for(
            &format!("{name}'s member key written by Praetor, streaming"),
            Duration::from_secs(180),
            || async {
                let m = member(&c, name).await;
                let ok = m.praetor_version.is_some()
                    && m.state == praetor_dcs::MemberState::Running
                    && m.replication_state.as_deref() == Some("streaming");
                if ok {
                    Ok(())
                } else {
                    Err(format!("{m:?}"))
                }
            },
        )
        .await;
        if let Err(e) = streaming {
            fail(&mut c, &e);
        }
        if let Err(e) = c.wait_healthy(2, Duration::from_secs(180)).await {
            fail(&mut c, &format!("after replacing Patroni on {name}: {e}"));
        }
        replaced.push(name.clone());
        writer.more(20).await;
        println!(
            "replaced Patroni on {name} after {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let gap = writer.longest_gap();
    let acked = writer.stop().await;
    // With the writer stopped the values settle, so both reads can be compared.
    lists_agree(&c).await;
    both_read_every_value(&c, "every node runs Praetor").await;
    let leader = c.leader().await.expect("a leader");
    let lost = writer::lost_writes(c.node(&leader).pg_port, &acked).await;
    println!(
        "rolling migration of 3 Patroni nodes: {} writes acknowledged, {} lost, longest write gap {:.2} s, {:.1} s in all",
        acked.len(),
        lost.len(),
        gap.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    c.shutdown().await;
}
