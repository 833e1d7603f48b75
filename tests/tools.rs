//! The tools Patroni users run around their cluster keep working with Praetor, each tested with the
//! real tool against real clusters (etcd, PostgreSQL 15):
//!
//! - HAProxy with Patroni's health checks (`deploy/haproxy/haproxy.cfg`: `option httpchk OPTIONS
//!   /master`, `GET /replica`, `http-check expect status 200`, `check port 8008`): the servers'
//!   states read from HAProxy's stats socket follow the leader across a switchover;
//! - keepalived's check (`deploy/keepalived/keepalived.conf`): its `curl` command exits 0 on the
//!   leader only, and `keepalived -t` loads the file;
//! - a virtual IP kept by keepalived with that check, on hosts in network namespaces: the address
//!   is on the leader's interface and moves with a switchover; Debian 12's vip-manager (1.0.2,
//!   etcd v2 API only) cannot see Praetor's leader key in etcd v3 and takes no address;
//! - the Grafana dashboard (`deploy/grafana/praetor.json`): every metric its queries name is in a
//!   live agent's or proxy's `/metrics`.
//!
//! Needs haproxy, keepalived, vip-manager, curl and iproute2 (scripts/setup installs them); without
//! them the tests fail with the reason, never skip.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use praetor_harness::proxy::FullProxy;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_deploy(path: &str) -> String {
    std::fs::read_to_string(repo().join("deploy").join(path))
        .unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Grafana

/// PromQL words that are not metric names: operators, aggregation modifiers, literals.
const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    // Aggregation operators, which may be followed by `by (...)` rather than by their `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// The metric names one PromQL expression selects. Grafana's `$variables` and quoted strings are
/// dropped, then label matchers (`{...}`), range and subquery selectors (`[...]`) and the label
/// lists of `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` (`(...)` after them); what
/// is left are function names (an identifier followed by `(`), keywords, numbers and metric
/// names. Good enough for dashboards (no `__name__` matchers); not a full PromQL parser.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    // 1. Strings and Grafana variables.
    let mut s = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let quote = c;
                let mut escaped = false;
                for d in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == quote {
                        break;
                    }
                }
                s.push_str("\"\"");
            }
            '$' => {
                while chars
                    .peek()
                    .is_some_and(|d| d.is_alphanumeric() || *d == '_' || *d == '{' || *d == '}')
                {
                    chars.next();
                }
            }
            _ => s.push(c),
        }
    }
    // 2. Brackets: matchers and ranges go entirely.
    let mut t = String::new();
    let mut depth = 0usize;
    for c in s.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => t.push(c),
            _ => {}
        }
    }
    // 3. Tokens: identifiers (with ':'), everything else a separator.
    let mut tokens: Vec<(String, char)> = vec![];
    let bytes: Vec<char> = t.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_' || bytes[i] == ':')
            {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let mut j = i;
            while j < bytes.len() && bytes[j].is_whitespace() {
                j += 1;
            }
            tokens.push((word, bytes.get(j).copied().unwrap_or(' ')));
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers, including 1e3 and durations such as 5m.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    let mut names = BTreeSet::new();
    let mut skip_label_list = false;
    for (word, next) in tokens {
        let lower = word.to_ascii_lowercase();
        if skip_label_list {
            // Inside `by (a, b)`: labels until the list closes; a list has no nested '('.
            if next == ')' {
                skip_label_list = false;
            }
            continue;
        }
        if [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&lower.as_str())
            && next == '('
        {
            skip_label_list = true;
            continue;
        }
        if next == '(' || PROMQL_KEYWORDS.contains(&lower.as_str()) {
            continue; // a function or an aggregation, or a keyword
        }
        names.insert(word);
    }
    names
}

/// Every PromQL expression of a Grafana dashboard: panels' (and rows' nested panels') targets'
/// `expr`, and query variables' `query`/`definition`.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = vec![];
    walk(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        for q in [&var["query"]["query"], &var["query"], &var["definition"]] {
            if let Some(q) = q.as_str() {
                out.push(q.to_string());
            }
        }
    }
    out
}

/// The metric names of a Prometheus text exposition: every sample's name (so a histogram's
/// `_bucket`, `_sum` and `_count`) and every `# TYPE` line's family name.
fn exposition_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                names.insert(name.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[test]
fn promql_metric_names_keeps_metrics_and_drops_functions_labels_and_variables() {
    let cases: &[(&str, &[&str])] = &[
        (r#"patroni_primary{scope=~"$scope"}"#, &["patroni_primary"]),
        (
            r#"max by (scope) (patroni_xlog_location{scope=~"$scope"}) - on (scope) group_right patroni_xlog_replayed_location{scope=~"$scope"} and on (scope, name) patroni_replica == 1"#,
            &[
                "patroni_replica",
                "patroni_xlog_location",
                "patroni_xlog_replayed_location",
            ],
        ),
        (
            "histogram_quantile(0.99, sum by (le, target) (rate(praetor_proxy_transaction_duration_seconds_bucket{instance=~\"$proxy\"}[$__rate_interval])))",
            &["praetor_proxy_transaction_duration_seconds_bucket"],
        ),
        (
            "time() - patroni_dcs_last_seen offset 5m",
            &["patroni_dcs_last_seen"],
        ),
        (
            "sum without(instance)(rate(a_total[5m])) / ignoring(x) group_left(y) b",
            &["a_total", "b"],
        ),
        (
            "label_values(patroni_version, scope)",
            &["patroni_version", "scope"],
        ),
        ("1e3 * up", &["up"]),
    ];
    for (expr, want) in cases {
        let got = promql_metric_names(expr);
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "{expr}");
    }
}

#[test]
fn grafana_dashboard_is_importable_panels_have_ids_places_a_data_source_and_queries() {
    let d: serde_json::Value = serde_json::from_str(&read_deploy("grafana/praetor.json"))
        .expect("deploy/grafana/praetor.json is JSON");
    assert_eq!(d["uid"], "praetor");
    assert!(
        d["title"].is_string() && d["schemaVersion"].is_u64(),
        "{}",
        d["title"]
    );
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "scope", "proxy"]);
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("a numeric id")),
            "id of {title} is unique"
        );
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        assert!(
            matches!((x, w, h), (Some(x), Some(w), Some(h)) if x + w <= 24 && h > 0),
            "{title}: gridPos {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has a query");
        let refs: BTreeSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
        assert_eq!(
            refs.len(),
            targets.len(),
            "{title}: one distinct refId per query"
        );
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
        }
    }
}

#[tokio::test]
async fn grafana_dashboard_queries_name_only_metrics_a_live_agent_and_proxy_export() {
    let dashboard: serde_json::Value = serde_json::from_str(&read_deploy("grafana/praetor.json"))
        .expect("deploy/grafana/praetor.json is JSON");
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() > 20, "the dashboard has its queries: {exprs:?}");
    // Metric name -> the expressions naming it. `label_values(metric, label)` names a label as
    // its second argument: only its first counts.
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &exprs {
        let names = match e.trim().strip_prefix("label_values(") {
            Some(args) => args
                .split(',')
                .next()
                .map(|m| promql_metric_names(m.trim()))
                .unwrap_or_default(),
            None => promql_metric_names(e),
        };
        assert!(!names.is_empty(), "no metric named in {e}");
        for n in names {
            wanted.entry(n).or_default().push(e.clone());
        }
    }

    // A leader and a replica (a replica's read the proxy retries on the leader needs both), and a
    // proxy with every listener.
    let mut c = healthy_cluster(ClusterOptions {
        scope: "tools-grafana".into(),
        nodes: 2,
        proxy: false,
        ..Default::default()
    })
    .await;
    let proxy = FullProxy::start(&c, "grafana", "")
        .await
        .expect("proxy starts");
    // Traffic for the series that exist only once something happened: server connections on the
    // read-write and read-only ports, auto-port transactions to both targets, a session pinned by
    // a named prepared statement, a read the replica refuses (0A000) retried on the leader, and a
    // client refused for a wrong password.
    let rw = connect_retry(proxy.rw_port, Duration::from_secs(60)).await;
    rw.batch_execute(
        "CREATE TABLE IF NOT EXISTS g (id int); CREATE UNLOGGED TABLE IF NOT EXISTS gu (id int)",
    )
    .await
    .expect("create through the read-write port");
    replicas_caught_up(&c, &c.leader().await.expect("leader")).await;
    let ro = connect_retry(proxy.ro_port, Duration::from_secs(60)).await;
    ro.simple_query("SELECT 1")
        .await
        .expect("read on read-only");
    let auto = connect_retry(proxy.auto_port, Duration::from_secs(60)).await;
    auto.simple_query("SELECT count(*) FROM g")
        .await
        .expect("read on auto");
    auto.simple_query("INSERT INTO g VALUES (1)")
        .await
        .expect("write on auto");
    // A hot standby refuses to read an unlogged table (0A000): the proxy runs it on the leader.
    // Repeated until the proxy routed one to the replica (it routes reads to the leader until it
    // has seen the replica streaming in the DCS).
    wait_for(
        "a read the replica refused, retried on the leader",
        Duration::from_secs(60),
        || async {
            auto.simple_query("SELECT count(*) FROM gu")
                .await
                .map_err(|e| format!("the read failed: {e}"))?;
            let m = proxy.metrics().await?;
            if m.contains("praetor_proxy_leader_retries_total{") {
                Ok(())
            } else {
                Err("no retry yet".to_string())
            }
        },
    )
    .await
    .unwrap();
    let pinned = connect_retry(proxy.auto_port, Duration::from_secs(60)).await;
    let st = pinned
        .prepare("SELECT count(*) FROM g")
        .await
        .expect("prepare");
    pinned.query(&st, &[]).await.expect("prepared read");
    let bad = format!(
        "host=127.0.0.1 port={} user={SUPERUSER} password=wrong dbname=postgres connect_timeout=5",
        proxy.auto_port
    );
    assert!(
        tokio_postgres::connect(&bad, tokio_postgres::NoTls)
            .await
            .is_err(),
        "a wrong password is refused"
    );

    // Failed DCS requests: the agents' next requests fail once etcd is gone (the last step: the
    // agents keep serving /metrics without the DCS).
    c.dcs().stop();

    let scrape = || async {
        let mut all = BTreeSet::new();
        let mut addrs: Vec<String> = c.nodes.iter().map(|n| n.api_addr()).collect();
        addrs.push(format!("127.0.0.1:{}", proxy.metrics_port));
        for addr in addrs {
            let (code, body) = raw_call(&addr, "GET", "/metrics", None, None).await;
            if code != 200 {
                return Err(format!("GET {addr}/metrics: {code} {body}"));
            }
            all.extend(exposition_names(&body));
        }
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(n, _)| !all.contains(*n))
            .map(|(n, e)| format!("{n} (in {})", e[0]))
            .collect();
        if missing.is_empty() {
            Ok(all)
        } else {
            Err(format!("not exported: {missing:?}"))
        }
    };
    let exported = wait_for(
        "every metric the dashboard names in the agents' and the proxy's /metrics",
        Duration::from_secs(60),
        scrape,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nproxy log:\n{}", proxy.log()));
    // And the dashboard shows what matters: each family of Praetor's is on it.
    let families: BTreeSet<String> = exported
        .iter()
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    n.strip_suffix(s)
                        .filter(|b| exported.contains(&format!("{b}_bucket")))
                })
                .unwrap_or(n)
                .to_string()
        })
        .filter(|n| n.starts_with("patroni_") || n.starts_with("praetor_"))
        .collect();
    let shown: BTreeSet<String> = wanted
        .keys()
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect();
    let unshown: Vec<&String> = families.difference(&shown).collect();
    assert!(
        unshown.is_empty(),
        "exported but on no panel of the dashboard: {unshown:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// HAProxy and keepalived

/// The `haproxy` program (Debian installs it in /usr/sbin, not always on root's PATH).
fn haproxy_program() -> &'static str {
    if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

/// `deploy/haproxy/haproxy.cfg` for `c`: the stats socket at `socket`, each `listen` bound to a
/// free port on 127.0.0.1, its servers `pg1..pg3` at the members' PostgreSQL and REST API ports,
/// and checks every 500 ms instead of 3 s (the check lines, `fall` and `rise` stay as written). A
/// third listener checks with `GET /primary`, the other way Patroni's users write it.
fn haproxy_config(c: &LocalCluster, socket: &Path) -> String {
    let mut out = String::new();
    for line in read_deploy("haproxy/haproxy.cfg").lines() {
        let trimmed = line.trim_start();
        let line = if trimmed.starts_with("stats socket ") {
            format!("    stats socket {} mode 600 level admin", socket.display())
        } else if trimmed.starts_with("bind ") {
            format!("    bind 127.0.0.1:{}", praetor_harness::free_port())
        } else if trimmed.starts_with("default-server inter 3s ") {
            line.replace("inter 3s", "inter 500ms")
        } else if let Some(rest) = trimmed.strip_prefix("server ") {
            let name = rest.split_whitespace().next().expect("a server name");
            let n = c.node(name);
            format!(
                "    server {name} 127.0.0.1:{} maxconn 100 check port {}",
                n.pg_port, n.api_port
            )
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!(
        "\nlisten primary_get\n    bind 127.0.0.1:{}\n    option httpchk GET /primary\n    http-check expect status 200\n    default-server inter 500ms fall 3 rise 2 on-marked-down shutdown-sessions\n",
        praetor_harness::free_port()
    ));
    for n in &c.nodes {
        out.push_str(&format!(
            "    server {} 127.0.0.1:{} maxconn 100 check port {}\n",
            n.name, n.pg_port, n.api_port
        ));
    }
    out
}

/// `show stat` on HAProxy's stats socket: (proxy, server) -> status (`UP`, `DOWN`, `UP 1/3`...),
/// servers only (no FRONTEND/BACKEND rows).
fn haproxy_server_states(socket: &Path) -> Result<BTreeMap<(String, String), String>, String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(b"show stat\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| format!("no CSV header in: {text}"))?
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (px, sv, st) = match (col("pxname"), col("svname"), col("status")) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => return Err(format!("unexpected header: {header:?}")),
    };
    let mut out = BTreeMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = l.split(',').collect();
        if f.len() > st && f[sv] != "FRONTEND" && f[sv] != "BACKEND" {
            out.insert((f[px].to_string(), f[sv].to_string()), f[st].to_string());
        }
    }
    Ok(out)
}

/// Waits until HAProxy shows `leader` UP and the other members DOWN in `primary` and
/// `primary_get`, and the reverse in `replicas`.
async fn haproxy_follows(c: &LocalCluster, socket: &Path, leader: &str) {
    let mut want = BTreeMap::new();
    for n in &c.nodes {
        let is_leader = n.name == leader;
        let (up, down) = ("UP".to_string(), "DOWN".to_string());
        for px in ["primary", "primary_get"] {
            let s = if is_leader { &up } else { &down };
            want.insert((px.to_string(), n.name.clone()), s.clone());
        }
        let s = if is_leader { down } else { up };
        want.insert(("replicas".to_string(), n.name.clone()), s);
    }
    wait_for(
        &format!("HAProxy's servers to follow leader {leader}"),
        Duration::from_secs(90),
        || async {
            let got = haproxy_server_states(socket)?;
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nwanted: {want:?}"));
}

/// keepalived's check command from `deploy/keepalived/keepalived.conf` (its `script "..."`), with
/// the REST API port 8008 replaced by `api_port`.
fn keepalived_check(api_port: u16) -> String {
    let conf = read_deploy("keepalived/keepalived.conf");
    let script = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("script \""))
        .and_then(|s| s.strip_suffix('"'))
        .expect("a vrrp_script's script \"...\" line");
    assert!(script.contains(":8008/"), "{script}");
    script.replace(":8008/", &format!(":{api_port}/"))
}

/// The exit status of `sh -c CMD`.
fn sh_status(cmd: &str) -> i32 {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .unwrap_or_else(|e| panic!("sh -c {cmd}: {e}"))
        .code()
        .unwrap_or(-1)
}

/// Waits until keepalived's check passes on `leader` only.
async fn keepalived_check_follows(c: &LocalCluster, leader: &str) {
    wait_for(
        &format!("keepalived's check to pass on {leader} only"),
        Duration::from_secs(60),
        || async {
            let got: Vec<(String, i32)> = c
                .nodes
                .iter()
                .map(|n| (n.name.clone(), sh_status(&keepalived_check(n.api_port))))
                .collect();
            if got.iter().all(|(n, s)| (*s == 0) == (n == leader)) {
                Ok(())
            } else {
                Err(format!("exit statuses {got:?}"))
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn haproxy_and_keepalived_checks_written_for_patroni_follow_the_leader_across_a_switchover() {
    let conf = repo().join("deploy/keepalived/keepalived.conf");
    let out = std::process::Command::new("keepalived")
        .args(["-t", "-l", "-f"])
        .arg(&conf)
        .output()
        .expect("run keepalived -t (scripts/setup installs keepalived)");
    assert!(
        out.status.success(),
        "keepalived -t -f {}: {}{}",
        conf.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let c = healthy_cluster(ClusterOptions {
        scope: "tools-haproxy".into(),
        proxy: false,
        ..Default::default()
    })
    .await;
    let socket = c.work.path().join("haproxy.sock");
    let cfg = c.work.path().join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(&c, &socket)).unwrap();
    let check = std::process::Command::new(haproxy_program())
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("run haproxy -c (scripts/setup installs haproxy)");
    assert!(
        check.status.success(),
        "haproxy -c: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut cmd = std::process::Command::new(haproxy_program());
    cmd.arg("-db").arg("-f").arg(&cfg);
    let _haproxy =
        praetor_harness::Process::spawn("haproxy", cmd, &c.work.path().join("haproxy.log"))
            .expect("start haproxy");

    let leader = c.leader().await.expect("a leader");
    haproxy_follows(&c, &socket, &leader).await;
    keepalived_check_follows(&c, &leader).await;
    // Why the check needs `curl -f`: a replica answers 503, and plain `curl -s` exits 0 on it.
    let replica = c.node(&others(&c, &leader)[0]);
    assert_eq!(
        sh_status(&format!(
            "curl -s -o /dev/null http://127.0.0.1:{}/master",
            replica.api_port
        )),
        0,
        "curl without -f succeeds on a replica's 503"
    );

    let candidate = others(&c, &leader)[0].clone();
    ctl_switchover(&c, &leader, &candidate).await;
    haproxy_follows(&c, &socket, &candidate).await;
    keepalived_check_follows(&c, &candidate).await;
}

// ---------------------------------------------------------------------------------------------
// A virtual IP on the leader's host: keepalived in network namespaces

/// `ip ARGS` in the root namespace, or in `netns` with `-n`; its stdout.
fn ip_out(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The hosts (member names) whose `eth0` holds `vip`.
fn vip_holders(c: &LocalCluster, vip: &str) -> Result<Vec<String>, String> {
    let mut holders = vec![];
    for n in &c.nodes {
        let host = n.host.as_ref().expect("a netns cluster");
        let addrs = ip_out(&["-n", &host.netns, "-o", "-4", "addr", "show", "dev", "eth0"])?;
        if addrs.contains(&format!("inet {vip}/")) {
            holders.push(n.name.clone());
        }
    }
    Ok(holders)
}

/// The MAC address of `name`'s `eth0`.
fn eth0_mac(c: &LocalCluster, name: &str) -> String {
    let host = c.node(name).host.as_ref().expect("a netns cluster");
    let link = ip_out(&["-n", &host.netns, "-o", "link", "show", "dev", "eth0"]).unwrap();
    link.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {link}"))
        .to_string()
}

/// Waits until `vip` is on `leader`'s eth0 only, and a client at the gateway reaches it there: a
/// TCP connection to the VIP is answered (refused: nothing listens on it) and the gateway's
/// neighbour entry for the VIP is `leader`'s MAC (keepalived's gratuitous ARP updated it).
async fn vip_follows(c: &LocalCluster, vip: &str, leader: &str) {
    let mac = eth0_mac(c, leader);
    wait_for(
        &format!("VIP {vip} on {leader} ({mac}) only, reached there from the gateway"),
        Duration::from_secs(90),
        || async {
            let holders = vip_holders(c, vip)?;
            if holders != [leader.to_string()] {
                return Err(format!("held by {holders:?}"));
            }
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(format!("{vip}:9")),
            )
            .await;
            let neigh = ip_out(&["neigh", "show", "to", vip])?;
            if neigh.contains(&mac) {
                Ok(())
            } else {
                Err(format!("gateway's neighbour entry: {neigh}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        let logs: Vec<String> = c
            .nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(n.dir.join("keepalived.log")).unwrap_or_default();
                format!("--- keepalived on {}:\n{log}", n.name)
            })
            .collect();
        panic!("{e}\n{}", logs.join("\n"))
    });
}

#[tokio::test]
async fn a_vip_follows_the_leader_with_keepalived_and_not_with_debians_vip_manager_1_0_2() {
    let c = healthy_cluster(ClusterOptions {
        scope: "tools-vip".into(),
        netns: true,
        proxy: false,
        ..Default::default()
    })
    .await;
    let subnet = c.nodes[0].ip.rsplit_once('.').expect("an IPv4 address").0;
    let vip = format!("{subnet}.250");
    // deploy/keepalived/keepalived.conf on every host, as written but for the addresses: the check
    // asks the host's own agent (which listens on the host's address, not 127.0.0.1), and the VIP
    // is in the hosts' /24.
    let conf = read_deploy("keepalived/keepalived.conf");
    assert!(conf.contains("192.0.2.100/24") && conf.contains("http://127.0.0.1:8008/"));
    let mut keepalived = vec![];
    for n in &c.nodes {
        let host = n.host.as_ref().expect("a netns cluster");
        let path = n.dir.join("keepalived.conf");
        std::fs::write(
            &path,
            conf.replace("192.0.2.100/24", &format!("{vip}/24"))
                .replace("http://127.0.0.1:8008/", &format!("http://{}:8008/", n.ip)),
        )
        .unwrap();
        let mut cmd = host.command("keepalived");
        cmd.args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
            .arg("--use-file")
            .arg(&path)
            .arg("--pid")
            .arg(n.dir.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(n.dir.join("keepalived-vrrp.pid"));
        keepalived.push(
            praetor_harness::Process::spawn(
                &format!("keepalived-{}", n.name),
                cmd,
                &n.dir.join("keepalived.log"),
            )
            .expect("start keepalived (scripts/setup installs it)"),
        );
    }

    let leader = c.leader().await.expect("a leader");
    vip_follows(&c, &vip, &leader).await;

    // Debian 12's vip-manager (1.0.2) reads its trigger key through etcd's v2 API, whose keys are
    // apart from v3's, where Praetor (like Patroni's `etcd3:`) keeps the leader key: it never
    // sees the key, so it never takes the address. When Debian ships vip-manager 2 (etcd v3),
    // this fails and the VIP test should move to it.
    let vm_vip = format!("{subnet}.251");
    let leader_host = c.node(&leader).host.as_ref().unwrap();
    let vm_log = c.node(&leader).dir.join("vip-manager.log");
    let mut cmd = leader_host.command("vip-manager");
    cmd.args(["--ip", &vm_vip, "--netmask", "24", "--interface", "eth0"])
        .args([
            "--trigger-key",
            &format!("/service/{}/leader", c.options.scope),
        ])
        .args(["--trigger-value", &leader, "--dcs-type", "etcd"])
        .args(["--dcs-endpoints", &c.etcd.endpoint, "--interval", "200"]);
    let vip_manager = praetor_harness::Process::spawn("vip-manager", cmd, &vm_log)
        .expect("start vip-manager (scripts/setup installs it)");
    // etcd 3.4 serves no v2 API by default: vip-manager's v2 client gets etcd's 404 page. (With
    // `--enable-v2` it gets "Key not found": v2 keys are a keyspace of their own.)
    wait_for(
        "vip-manager to fail reading the leader key",
        Duration::from_secs(30),
        || async {
            let log = vip_manager.log();
            if log.contains("etcd error: client: response is invalid json") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        vip_holders(&c, &vm_vip).unwrap(),
        Vec::<String>::new(),
        "vip-manager 1.0.2 takes no address"
    );
    drop(vip_manager);

    let candidate = others(&c, &leader)[0].clone();
    ctl_switchover(&c, &leader, &candidate).await;
    vip_follows(&c, &vip, &candidate).await;
    drop(keepalived);
}
