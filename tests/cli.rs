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
    let out = Command::new(env!("CARGO_BIN_EXE_praetor"))
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
        stderr.contains("unknown key bootstrap.dcs.loop_wiat"),
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
    let out = Command::new(env!("CARGO_BIN_EXE_praetor"))
        .args(["ctl", "list"])
        .env_remove("PRAETOR_CTL_CONFIG_FILE")
        .env_remove("PATRONICTL_CONFIG_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--dcs-url"), "{stderr}");
}
