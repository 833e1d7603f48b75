//! The fence against a real PostgreSQL 15 on 127.0.0.1: a primary of this cluster is stopped, a
//! primary of another cluster at the fenced address is left running.

use std::time::Duration;

use praetor_agent::postgres::fence::{fence_primary, FenceOutcome};
use praetor_config::Credentials;
use praetor_harness::postgres::Postgres;
use praetor_harness::WorkDir;

const ANSWER: Duration = Duration::from_secs(5);
const SHUTDOWN: Duration = Duration::from_secs(30);

fn superuser() -> Credentials {
    Credentials {
        username: "postgres".into(),
        password: None,
    }
}

/// The server's database system identifier, read as the fence reads it.
async fn sysid_of(pg: &Postgres) -> String {
    let (client, conn) = tokio_postgres::connect(&pg.conn_str("postgres"), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .expect("pg_control_system()")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_of_another_cluster_at_the_fenced_address_is_left_running() {
    let dir = WorkDir::new("fence-other-cluster").unwrap();
    let mut pg = Postgres::start(&dir, "pg").await.expect("start PostgreSQL");
    let theirs = sysid_of(&pg).await;
    let ours = if theirs == "1" { "2" } else { "1" };

    let outcome = fence_primary(
        pg.host(),
        pg.port(),
        &superuser(),
        Some(ours),
        ANSWER,
        SHUTDOWN,
    )
    .await;
    assert_eq!(
        outcome,
        FenceOutcome::OtherCluster {
            found: theirs.clone()
        }
    );
    assert!(
        outcome.is_safe(),
        "another cluster cannot acknowledge our writes"
    );
    assert!(
        pg.process().is_running(),
        "the other cluster's server was stopped"
    );
    // Still serving, not shutting down.
    assert_eq!(sysid_of(&pg).await, theirs);

    // The same server fenced as a server of this cluster is stopped.
    let outcome = fence_primary(
        pg.host(),
        pg.port(),
        &superuser(),
        Some(&theirs),
        ANSWER,
        SHUTDOWN,
    )
    .await;
    assert_eq!(outcome, FenceOutcome::Stopped);
    pg.process()
        .wait_exit(SHUTDOWN)
        .await
        .expect("the postmaster exits after the fence");
}
