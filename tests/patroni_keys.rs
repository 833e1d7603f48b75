//! Patroni keys that change how a member is built and reached, on a real cluster (etcd, PostgreSQL):
//! `create_replica_methods` with operator scripts (Patroni's arguments, the next method after a
//! failure, `keep_data` off), `recovery_conf` and `use_unix_socket`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

/// Writes an executable shell script readable by the agent (which runs as postgres).
fn script(path: &std::path::Path, body: &str) {
    praetor_harness::write_file(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Connects to the server of `dir`'s socket as the superuser.
async fn connect_socket(
    dir: &std::path::Path,
    port: u16,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(dir)
        .port(port)
        .user(SUPERUSER)
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres");
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_created_by_an_operator_script_after_a_failing_method_and_reached_over_its_socket(
) {
    let mut c = healthy_cluster(ClusterOptions {
        scope: "keys".into(),
        nodes: 2,
        ..Default::default()
    })
    .await;
    let leader = c.leader().await.expect("leader");
    let name = others(&c, &leader)[0].clone();
    let bin = c.binary.clone();
    let node = c.node_mut(&name);
    node.stop_agent(Duration::from_secs(60))
        .await
        .expect("agent stops");
    assert!(
        node.postmaster_pid().is_none(),
        "the agent stopped its PostgreSQL"
    );
    // An empty data directory: the agent creates the replica again.
    std::fs::remove_dir_all(node.data_dir()).unwrap();

    let dir = node.dir.clone();
    let pg_bin = praetor_harness::pg_bin_dir();
    // A method that leaves a file behind and fails: the next method must start from an empty
    // directory.
    script(
        &dir.join("broken.sh"),
        "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in --datadir=*) D=\"${a#--datadir=}\";; esac; done\nmkdir -p \"$D\" && touch \"$D/left-by-broken\"\nexit 3\n",
    );
    // The operator's method: records its arguments, then clones with pg_basebackup itself.
    script(
        &dir.join("clone.sh"),
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {args}\nfor a in \"$@\"; do case \"$a\" in --datadir=*) D=\"${{a#--datadir=}}\";; --connstring=*) C=\"${{a#--connstring=}}\";; esac; done\nexec {bin}/pg_basebackup -D \"$D\" -X stream -c fast -d \"$C\"\n",
            args = dir.join("clone-args").display(),
            bin = pg_bin.display(),
        ),
    );
    let config = std::fs::read_to_string(&node.config).unwrap();
    let extra = format!(
        "postgresql:\n  use_unix_socket: true\n  create_replica_methods: [broken, script, basebackup]\n  broken:\n    command: {dir}/broken.sh\n  script:\n    command: {dir}/clone.sh\n    stanza: main\n  recovery_conf:\n    recovery_min_apply_delay: 1s\n  pg_hba:\n  - local all all trust\n  - host all {SUPERUSER} 127.0.0.1/32 reject\n  - host replication replicator 127.0.0.1/32 scram-sha-256\n  - host all all 127.0.0.1/32 scram-sha-256\n",
        dir = dir.display()
    );
    assert!(config.contains("\npostgresql:\n"));
    let config = config.replacen("\npostgresql:\n", &format!("\n{extra}"), 1);
    praetor_harness::write_file(&node.config, &config).unwrap();
    node.start_agent(&bin).unwrap();

    if let Err(e) = c.wait_healthy(1, Duration::from_secs(120)).await {
        dump_logs(&c);
        panic!("the replica did not come back: {e}");
    }
    let node = c.node(&name);
    let log = node.log();
    assert!(
        log.contains("error creating replica using method broken"),
        "{log}"
    );
    assert!(
        log.contains("replica has been created using script"),
        "{log}"
    );
    // Patroni's arguments: the section's own keys, then scope, role, datadir, connstring.
    let args = std::fs::read_to_string(dir.join("clone-args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    let leader_port = c.node(&leader).pg_port;
    assert_eq!(
        args,
        [
            "--stanza=main".to_string(),
            "--scope=keys".to_string(),
            "--role=replica".to_string(),
            format!("--datadir={}", node.data_dir().display()),
            format!(
                "--connstring=dbname=postgres user=replicator host=127.0.0.1 port={leader_port}"
            ),
        ]
    );
    assert!(
        !node.data_dir().join("left-by-broken").exists(),
        "what the failed method left was removed before the next one"
    );

    // The superuser cannot connect over TCP here: the agent, healthy, talks over the socket.
    assert!(connect(node.pg_port).await.is_err());
    let replica = connect_socket(&dir, node.pg_port).await.expect("socket");
    let row = replica
        .query_one("SHOW recovery_min_apply_delay", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "1s", "recovery_conf applied");
    let primary = connect_retry(c.node(&leader).pg_port, Duration::from_secs(30)).await;
    let acked = insert_rows(&primary, 1, 20).await;
    // recovery_min_apply_delay holds replay back a second.
    table_readable(&replica, "t").await;
    replica_has_rows(&replica, &acked).await;
    c.shutdown().await;
}
