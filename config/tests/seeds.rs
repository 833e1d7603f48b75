//! Every YAML block of the seed documents (../shared/seeds, operator guides for Patroni), re-indented
//! where the extraction flattened it (fixtures/), either runs (parses, and the agent's checks pass) or
//! is refused with a message naming the key; the warnings name their keys too.

use praetor_config::{parse_str, DynamicConfig};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Parses a fixture and runs the agent's checks; the error's key and text when refused.
fn refused(name: &str) -> (String, String) {
    let e = match parse_str(&fixture(name)) {
        Ok(l) => l.config.validate_agent().map(|_| ()).unwrap_err(),
        Err(e) => e,
    };
    (e.key().unwrap_or_default().to_string(), e.to_string())
}

#[test]
fn seed_000_template_is_refused_at_its_etcd_v2_section() {
    let (key, message) = refused("seed-000-template.yml");
    assert_eq!(key, "etcd", "{message}");
    assert!(message.contains("write etcd3: instead"), "{message}");
}

#[test]
fn seed_000_edited_for_zookeeper_runs_without_warnings() {
    let l = parse_str(&fixture("seed-000-postgres0-zookeeper.yml")).unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let s = l.config.validate_agent().unwrap();
    assert_eq!(
        (s.scope.as_str(), s.name.as_str()),
        ("batman", "postgresql0")
    );
    assert_eq!(
        s.dcs,
        praetor_config::DcsEndpoints::ZooKeeper(vec![
            "192.168.1.140:2181".into(),
            "192.168.1.142:2181".into(),
            "192.168.1.143:2181".into()
        ])
    );
    assert_eq!(s.replication.username, "ruser");
    // Typed with typographic quotes in the guide: kept as written, quotes included.
    assert_eq!(s.superuser.password.as_deref(), Some("‘123456’"));
    assert_eq!(l.config.tags.replicatefrom.as_deref(), Some("postgres0"));
    assert_eq!(
        l.config.bootstrap.users["admin"].options,
        ["createrole", "createdb"]
    );
}

#[test]
fn seed_002_repeated_blocks_keep_the_last_with_warnings_and_etcd_v2_is_refused() {
    let text = fixture("seed-002-patroni.yml");
    let (key, message) = refused("seed-002-patroni.yml");
    assert_eq!(key, "etcd", "{message}");
    // Written as its refusal says (etcd3:), it runs, with one warning per repeated key.
    let text = text.replace("\netcd:\n", "\netcd3:\n");
    let l = parse_str(&text).unwrap();
    let keys: Vec<&str> = l
        .warnings
        .iter()
        .map(|w| w.split(':').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "restapi",
            "etcd3",
            "bootstrap.dcs.postgresql.parameters.hot_standby",
            "bootstrap"
        ],
        "{:?}",
        l.warnings
    );
    assert!(l
        .warnings
        .iter()
        .all(|w| w.contains("the last one is used")));
    let d = &l.config.bootstrap.dcs;
    // The second bootstrap block, the complete one, is in force.
    assert_eq!(d.maximum_lag_on_failover, 1_038_571);
    assert_eq!(d.primary_start_timeout, 300);
    assert!(d.postgresql.use_pg_rewind);
    assert_eq!(d.postgresql.parameters["hot_standby"].as_pg_text(), "on");
    // config_dir names the data directory (with a trailing slash): honoured as such.
    assert!(l.config.validate_agent().is_ok());
}

#[test]
fn seed_003_is_refused_at_its_first_recovery_setting_in_parameters() {
    let (key, message) = refused("seed-003-patroni.yml");
    assert_eq!(
        key, "bootstrap.dcs.postgresql.parameters.recovery_target_time",
        "{message}"
    );
    assert!(
        message.contains("move it to postgresql.recovery_conf"),
        "{message}"
    );
}

#[test]
fn seed_003_with_recovery_settings_moved_runs_and_names_its_repeated_parameters() {
    let text = fixture("seed-003-patroni.yml");
    let mut kept = Vec::new();
    let mut recovery = Vec::new();
    for line in text.lines() {
        let name = line.trim_start().split(':').next().unwrap_or("");
        match name {
            "recovery_target_time" | "recovery_target_timeline" => {}
            "restore_command" => recovery.push(line.trim_start().to_string()),
            _ => kept.push(line.to_string()),
        }
    }
    let mut text = kept.join("\n") + "\n";
    text = text.replace(
        "\npostgresql:\n",
        &format!(
            "\npostgresql:\n  recovery_conf:\n    {}\n",
            recovery.join("\n    ")
        ),
    );
    let l = parse_str(&text).unwrap();
    let keys: Vec<&str> = l
        .warnings
        .iter()
        .map(|w| w.split(':').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "bootstrap.dcs.postgresql.parameters.listen_addresses",
            "bootstrap.dcs.postgresql.parameters.port"
        ],
        "{:?}",
        l.warnings
    );
    let c = &l.config;
    assert!(c.postgresql.recovery_conf["restore_command"]
        .as_pg_text()
        .contains("cp $DIR/%f %p"));
    assert_eq!(c.postgresql.callbacks.len(), 3);
    assert_eq!(c.bootstrap.initdb.len(), 4);
    c.validate_agent().unwrap();
}

#[test]
fn seed_003_edit_config_is_a_valid_dynamic_configuration() {
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&fixture("seed-003-edit-config.yml")).unwrap();
    let json = serde_json::to_value(yaml).unwrap();
    let d = DynamicConfig::from_json(&json).unwrap();
    assert_eq!(
        d.postgresql.parameters["max_connections"].as_i64(),
        Some(500)
    );
}
