//! The binary's behaviour on bad input: a configuration error names the key path and exits with code 2
//! before anything starts (no PostgreSQL, no DCS connection); unknown keys are warnings.

use std::process::Command;

const GOOD: &str = r#"scope: demo
name: pg1
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
etcd3:
  host: 127.0.0.1:2379
bootstrap:
  dcs:
    ttl: 6
    loop_wait: 1
    retry_timeout: 2
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /nonexistent/praetor-cli-test/data
  authentication:
    superuser: {username: postgres, password: x}
    replication: {username: repl, password: y}
"#;

fn praetor(args: &[&str], config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("praetor.yml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(praetor_harness::praetor_beside_current_exe())
        .args(args)
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_good_configuration_validates() {
    let (code, stdout, stderr) = praetor(&["agent", "--validate-config"], GOOD);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("configuration is valid"), "{stdout}");
}

#[test]
fn an_unknown_key_is_a_warning_naming_its_path() {
    let config = GOOD.replace("    loop_wait: 1\n", "    loop_wait: 1\n    loop_wiat: 1\n");
    let (code, stdout, stderr) = praetor(&["agent", "--validate-config"], &config);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("bootstrap.dcs.loop_wiat: unknown key, it has no effect"),
        "{stderr}"
    );
}

#[test]
fn a_wrong_type_exits_2_naming_the_key_path() {
    let config = GOOD.replace("  listen: 127.0.0.1:5432\n", "  listen: [1, 2]\n");
    let (code, _, stderr) = praetor(&["agent"], &config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("postgresql.listen: invalid type: sequence"),
        "{stderr}"
    );
}

#[test]
fn a_missing_data_dir_exits_2_naming_the_key_path() {
    let config = GOOD.replace("  data_dir: /nonexistent/praetor-cli-test/data\n", "");
    let (code, _, stderr) = praetor(&["agent"], &config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("postgresql.data_dir: missing required key"),
        "{stderr}"
    );
}

#[test]
fn a_ttl_that_is_not_a_number_exits_2_naming_the_key_path() {
    let config = GOOD.replace("ttl: 6", "ttl: six");
    let (code, _, stderr) = praetor(&["agent"], &config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("bootstrap.dcs.ttl: invalid value: string \"six\", expected an integer"),
        "{stderr}"
    );
}

#[test]
fn two_dcs_sections_exit_2_naming_both() {
    let config = format!("{GOOD}zookeeper:\n  hosts: 127.0.0.1:2181\n");
    let (code, _, stderr) = praetor(&["agent"], &config);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("etcd3 and zookeeper"), "{stderr}");
}

#[test]
fn the_proxy_needs_its_listeners() {
    let (code, _, stderr) = praetor(&["proxy"], "scope: demo\netcd3:\n  host: 127.0.0.1:2379\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("praetor.proxy: missing required key"),
        "{stderr}"
    );
}

#[test]
fn ctl_without_a_dcs_explains_how_to_name_one() {
    let out = Command::new(praetor_harness::praetor_beside_current_exe())
        .args(["ctl", "list"])
        .env_remove("PRAETOR_CTL_CONFIG_FILE")
        .env_remove("PATRONICTL_CONFIG_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--dcs-url"), "{stderr}");
}

/// Each bad configuration (a replacement in GOOD), the key path its error must name, and the start of
/// the message after it. Recovery settings, bad parameter names and values, timings that overflow or
/// cannot satisfy `loop_wait + 2*retry_timeout <= ttl`, the etcd v2 section, bad scopes.
const BAD: &[(&str, &str, &str, &str)] = &[
    (
        "  data_dir: ",
        "  parameters:\n    promote_trigger_file: /tmp/promote\n  data_dir: ",
        "postgresql.parameters.promote_trigger_file",
        "promote_trigger_file is managed by the agent",
    ),
    (
        "    retry_timeout: 2\n",
        "    retry_timeout: 2\n    postgresql:\n      parameters:\n        recovery_target: immediate\n",
        "bootstrap.dcs.postgresql.parameters.recovery_target",
        "recovery_target is a recovery setting",
    ),
    (
        "    retry_timeout: 2\n",
        "    retry_timeout: 2\n    postgresql:\n      parameters:\n        primary_slot_name: other\n",
        "bootstrap.dcs.postgresql.parameters.primary_slot_name",
        "primary_slot_name is managed by the agent",
    ),
    (
        "  data_dir: ",
        "  parameters:\n    hot_standby: off\n  data_dir: ",
        "postgresql.parameters.hot_standby",
        "hot_standby is managed by the agent",
    ),
    (
        "  data_dir: ",
        "  parameters:\n    \"fsync=off\\nwork_mem\": 1\n  data_dir: ",
        "postgresql.parameters",
        "\"fsync=off\\nwork_mem\" is not a valid parameter name",
    ),
    (
        "  data_dir: ",
        "  parameters:\n    log_line_prefix: \"%m\\nfsync = off\"\n  data_dir: ",
        "postgresql.parameters.log_line_prefix",
        "the value contains a line break",
    ),
    (
        "    retry_timeout: 2\n",
        "    retry_timeout: 2147483648\n",
        "bootstrap.dcs.retry_timeout",
        "2147483648 is out of range: give 0 to 86400 seconds",
    ),
    (
        "    ttl: 6\n",
        "    ttl: 2\n",
        "bootstrap.dcs.ttl",
        "2 is out of range: give 3 to 86400 seconds (below 3, no loop_wait and retry_timeout",
    ),
    (
        "    loop_wait: 1\n",
        "    loop_wait: -1\n",
        "bootstrap.dcs.loop_wait",
        "-1 is out of range: give 0 to 86400 seconds",
    ),
    (
        "etcd3:\n",
        "etcd:\n",
        "etcd",
        "Patroni's etcd section speaks etcd's v2 API, which Praetor does not: write etcd3: instead",
    ),
    ("scope: demo\n", "scope: ''\n", "scope", "must not be empty"),
    (
        "scope: demo\n",
        "scope: a/b\n",
        "scope",
        "\"a/b\" contains '/'",
    ),
];

#[test]
fn bad_configurations_exit_2_naming_the_key_path_before_starting_anything() {
    for (from, to, key, message) in BAD {
        assert!(GOOD.contains(from), "{from}");
        let config = GOOD.replacen(from, to, 1);
        for args in [&["agent", "--validate-config"][..], &["agent"]] {
            let (code, stdout, stderr) = praetor(args, &config);
            assert_eq!(code, 2, "{args:?} {to:?}: {stdout}{stderr}");
            assert!(
                stderr.contains(&format!("{key}: {message}")),
                "{args:?} {to:?}: wanted {key}: {message}\nin: {stderr}"
            );
        }
    }
}

#[test]
fn hot_standby_on_and_extension_parameters_validate() {
    let config = GOOD.replace(
        "  data_dir: ",
        "  parameters:\n    hot_standby: 'on'\n    auto_explain.log_min_duration: 1s\n  data_dir: ",
    );
    let (code, stdout, stderr) = praetor(&["agent", "--validate-config"], &config);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn the_proxy_refuses_an_empty_or_nested_scope() {
    for (scope, want) in [
        ("''", "scope: must not be empty"),
        ("a/b", "scope: \"a/b\" contains '/'"),
    ] {
        let (code, _, stderr) = praetor(
            &["proxy"],
            &format!("scope: {scope}\netcd3:\n  host: 127.0.0.1:2379\npraetor:\n  proxy:\n    auto: {{listen: '127.0.0.1:1'}}\n"),
        );
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
    }
}

/// `ctl remove ''` used to ask for confirmation and report "Removed cluster  from the DCS": the name
/// is refused before the DCS is opened (the URL below has no server), as is etcd's v2 scheme.
#[test]
fn ctl_refuses_an_empty_or_nested_cluster_name_and_etcd_v2_urls() {
    let run = |args: &[&str]| {
        let out = Command::new(praetor_harness::praetor_beside_current_exe())
            .arg("ctl")
            .args(args)
            .env_remove("PRAETOR_CTL_CONFIG_FILE")
            .env_remove("PATRONICTL_CONFIG_FILE")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (args, want) in [
        (
            &["--dcs-url", "etcd3://127.0.0.1:9", "remove", ""][..],
            "cluster name: must not be empty",
        ),
        (
            &["--dcs-url", "etcd3://127.0.0.1:9", "list", "a/b"],
            "cluster name: \"a/b\" contains '/'",
        ),
        (
            &["--dcs-url", "etcd://127.0.0.1:9", "list", "demo"],
            "etcd:// is etcd's v2 API, which Praetor does not speak: write etcd3://",
        ),
    ] {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stdout.contains("Removed cluster"), "{stdout}");
    }
}

/// A directory holding a `postgres` that prints `version_line` for `postgres -V`, as an old
/// installation's would.
fn fake_bin_dir(version_line: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let postgres = dir.path().join("postgres");
    std::fs::write(&postgres, format!("#!/bin/sh\necho '{version_line}'\n")).unwrap();
    std::fs::set_permissions(&postgres, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn postgresql_before_13_is_refused_naming_the_version_and_the_range_before_the_data_directory_is_touched(
) {
    let bin = fake_bin_dir("postgres (PostgreSQL) 12.22");
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let config = GOOD.replace(
        "  data_dir: /nonexistent/praetor-cli-test/data\n",
        &format!(
            "  data_dir: {}\n  bin_dir: {}\n",
            data_dir.display(),
            bin.path().display()
        ),
    );
    for args in [&["agent", "--validate-config"][..], &["agent"]] {
        let (code, _, stderr) = praetor(args, &config);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("PostgreSQL 12.22"), "{stderr}");
        assert!(stderr.contains("PostgreSQL 13 to 18"), "{stderr}");
        assert!(!data_dir.exists(), "{args:?} created the data directory");
    }

    // A data directory of an old cluster: refused by its PG_VERSION, left as it was.
    let real_bin = praetor_harness::pg_bin_dir();
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("PG_VERSION"), "10\n").unwrap();
    let config = GOOD.replace(
        "  data_dir: /nonexistent/praetor-cli-test/data\n",
        &format!(
            "  data_dir: {}\n  bin_dir: {}\n",
            data_dir.display(),
            real_bin.display()
        ),
    );
    let (code, _, stderr) = praetor(&["agent"], &config);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("PostgreSQL 10 cluster"), "{stderr}");
    assert!(stderr.contains("13 to 18"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("PG_VERSION")]);
}
