//! A real client library's own test suite through the proxy: psycopg2's unittest suite (~750
//! tests; `scripts/setup` fetches its source distribution into `.client-suite/` and runs it with
//! the `.venv-patroni` interpreter's psycopg2-binary of the same version), run against the leader
//! directly, then through the read-write port, then through the auto port, each in a database of
//! its own. Run one at a time like the other cluster tests (`--test-threads=1`).
//!
//! - Through the read-write port the suite must fail exactly the tests it fails directly: after
//!   login that port relays bytes unchanged.
//! - Through the auto port it may fail, besides those, only the tests listed in [`AUTO_PORT_DIFFS`],
//!   each with the reason README's "What the auto port changes" gives. A test that fails there
//!   and is not listed is a difference nobody documented: this test fails, naming it.
//! - A run that does not finish within [`RUN_TIMEOUT`] fails the test (a session the proxy leaves
//!   hanging shows up here, as the Flush-at-an-idle-point hang once did).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// The longest one run of the suite may take (it takes ~35 s directly on an idle machine).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Tests the auto port fails by design and a direct connection passes, with the reason
/// (unittest ids: `module.Class.test`).
const AUTO_PORT_DIFFS: &[(&str, &str)] = &[];

/// What one run of the suite reported.
#[derive(Debug, serde::Deserialize)]
struct SuiteResult {
    /// Tests run (skipped ones included).
    run: usize,
    /// Tests skipped by the suite itself (no replication DSN, a server feature missing, ...).
    skipped: usize,
    /// Failed or errored tests: unittest id → the last line of the traceback.
    failed: BTreeMap<String, String>,
}

/// The psycopg2 source tree `scripts/setup` unpacked: `<workspace>/.client-suite/psycopg2-<v>`,
/// `<v>` being the virtualenv's psycopg2 version. Panics, saying to run `scripts/setup`, when absent
/// (never skipped silently).
fn suite_dir(python: &std::path::Path) -> PathBuf {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import psycopg2; print(psycopg2.__version__.split()[0])",
        ])
        .output()
        .expect("run the virtualenv's python");
    assert!(
        out.status.success(),
        "psycopg2 is not importable in {}: run scripts/setup ({})",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".client-suite")
        .join(format!("psycopg2-{version}"));
    assert!(
        dir.join("tests").join("__init__.py").exists(),
        "psycopg2 {version}'s test suite is not in {}: run scripts/setup",
        dir.display()
    );
    dir
}

/// Runs the whole suite against `host:port`, database `db`, and returns what it reported.
async fn run_suite(
    python: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    db: &str,
) -> SuiteResult {
    // A TestResult of our own instead of unittest's text output: ids and outcomes as JSON, on one
    // line that the tests' own prints cannot be mistaken for.
    const RUNNER: &str = r#"
import json, sys, unittest
sys.path.insert(0, sys.argv[1])
import tests
result = unittest.TestResult()
tests.test_suite().run(result)
failed = {t.id(): (tb.strip().splitlines() or [''])[-1] for t, tb in result.failures + result.errors}
for t in result.unexpectedSuccesses:
    failed[t.id()] = 'unexpected success'
print('SUITE-RESULT ' + json.dumps({'run': result.testsRun, 'skipped': len(result.skipped), 'failed': failed}))
"#;
    let child = tokio::process::Command::new(python)
        .args(["-c", RUNNER])
        .arg(dir)
        .current_dir(dir)
        .env("PSYCOPG2_TESTDB", db)
        .env("PSYCOPG2_TESTDB_HOST", "127.0.0.1")
        .env("PSYCOPG2_TESTDB_PORT", port.to_string())
        .env("PSYCOPG2_TESTDB_USER", SUPERUSER)
        .env("PSYCOPG2_TESTDB_PASSWORD", SUPERUSER_PASSWORD)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_TIMEOUT, child)
        .await
        .unwrap_or_else(|_| {
            panic!("psycopg2's suite against port {port} did not finish within {RUN_TIMEOUT:?}")
        })
        .expect("run psycopg2's suite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SUITE-RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "psycopg2's suite against port {port} printed no result (exit {}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).expect("the runner's JSON")
}

/// `failed` minus `expected`, with each test's last traceback line.
fn beyond(
    failed: &BTreeMap<String, String>,
    expected: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    failed
        .iter()
        .filter(|(id, _)| !expected.contains(*id))
        .map(|(id, why)| (id.clone(), why.clone()))
        .collect()
}

#[tokio::test]
async fn psycopg2_suite_through_the_read_write_and_auto_ports_fails_only_where_documented() {
    let python = praetor_harness::patroni::binary("python").expect("the virtualenv's python");
    let dir = suite_dir(&python);
    let mut c = healthy_cluster(ClusterOptions {
        nodes: 2,
        ..Default::default()
    })
    .await;
    let leader = c.leader().await.expect("a leader");
    let leader_port = c.node(&leader).pg_port;
    let proxy = c.proxy.as_ref().expect("the cluster's proxy");
    let admin = connect(leader_port).await.expect("connect to the leader");
    for db in ["suite_direct", "suite_rw", "suite_auto"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .expect("create the suite's database");
    }
    // Both proxy ports route to the leader before the suite starts (the proxy follows the DCS).
    for port in [proxy.rw_port, proxy.auto_port] {
        wait_for(
            &format!("a write through proxy port {port}"),
            Duration::from_secs(60),
            || async move {
                let client = connect(port).await.map_err(|e| e.to_string())?;
                client
                    .batch_execute("CREATE TEMP TABLE ready (x int)")
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await
        .unwrap();
    }

    if let Err(e) = compare_runs(&python, &dir, leader_port, proxy).await {
        let kept = c.work.keep();
        panic!("{e}\nlogs kept in {}", kept.display());
    }
}

/// Runs the suite directly, through the read-write port and through the auto port, and checks
/// what each failed against the direct run (see the module's documentation).
async fn compare_runs(
    python: &std::path::Path,
    dir: &std::path::Path,
    leader_port: u16,
    proxy: &praetor_harness::cluster::Proxy,
) -> Result<(), String> {
    let direct = run_suite(python, dir, leader_port, "suite_direct").await;
    if direct.run < 700 {
        return Err(format!(
            "the suite ran only {} tests directly: {direct:?}",
            direct.run
        ));
    }
    let direct_failed: BTreeSet<String> = direct.failed.keys().cloned().collect();
    eprintln!(
        "direct: {} run, {} skipped, {} failed {:?}",
        direct.run,
        direct.skipped,
        direct_failed.len(),
        direct.failed
    );

    let rw = run_suite(python, dir, proxy.rw_port, "suite_rw").await;
    eprintln!(
        "read-write port: {} run, {} skipped, {} failed",
        rw.run,
        rw.skipped,
        rw.failed.len()
    );
    let rw_failed: BTreeSet<String> = rw.failed.keys().cloned().collect();
    if rw.run != direct.run || rw_failed != direct_failed {
        return Err(format!(
            "the read-write port must behave as the server does ({} tests run, {} directly).\nfailed only through it: {:#?}\npassed only through it: {:?}",
            rw.run,
            direct.run,
            beyond(&rw.failed, &direct_failed),
            direct_failed.difference(&rw_failed).collect::<Vec<_>>()
        ));
    }

    let auto = run_suite(python, dir, proxy.auto_port, "suite_auto").await;
    eprintln!(
        "auto port: {} run, {} skipped, {} failed",
        auto.run,
        auto.skipped,
        auto.failed.len()
    );
    let mut allowed = direct_failed.clone();
    allowed.extend(AUTO_PORT_DIFFS.iter().map(|(id, _)| id.to_string()));
    let undocumented = beyond(&auto.failed, &allowed);
    if !undocumented.is_empty() {
        return Err(format!(
            "the auto port failed {} test(s) that pass directly and are not in AUTO_PORT_DIFFS: {undocumented:#?}",
            undocumented.len()
        ));
    }
    // A listed difference that passes now is stale: the list says what README says.
    let stale: Vec<&str> = AUTO_PORT_DIFFS
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !auto.failed.contains_key(*id))
        .collect();
    if !stale.is_empty() {
        return Err(format!(
            "listed in AUTO_PORT_DIFFS but passing through the auto port: {stale:?}"
        ));
    }
    Ok(())
}
