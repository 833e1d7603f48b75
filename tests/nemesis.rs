//! The nemesis in CI: three seeded runs (each a 3-member cluster on a 3-server etcd with a proxy,
//! three faults drawn from freeze, kill, PostgreSQL crash, DCS member stop, DCS quorum loss, proxy
//! restart and switchover, under synchronous_mode_strict) whose histories must break no promise: no
//! acknowledged write lost, no split brain, no deposed primary acknowledging, no read missing its
//! session's own write, convergence after each heal, writes through the proxy again after each
//! fault; seeds that draw each kind added with the replication-link faults and the switchover (in
//! network namespaces for the replication links, under strict; a switchover under asynchronous
//! replication too, where it must lose no commit either); and the seeds that once found
//! violations; a seed drawing DCS blips and a DCS member stop, through which the leader must stay
//! undisturbed; a seed drawing the leader's DCS links slowed but alive (`slow-dcs`, ZooKeeper, in
//! namespaces); and the runner's probe of a DCS accepting requests again after a quorum loss, on
//! a real etcd and ZooKeeper. The long series is `cargo bench --bench nemesis`.
//!
//! `PRAETOR_NEMESIS_SEEDS=N` runs seeds 1..=N instead, `PRAETOR_NEMESIS_SEED=N` seed N alone (and `PRAETOR_NEMESIS_DCS`, `_MODE`,
//! `_FAULTS`, `_FAULTS_PER_RUN`, `_NETNS` as in the benchmark), to run a series on a debug build;
//! `PRAETOR_NEMESIS_BIN=/path/to/praetor` runs the clusters with another build of the binary (an
//! older commit's, to show that a seed detects what was fixed since).

use praetor_harness::cluster::DcsKind;
use praetor_harness::dcs::LocalDcs;
use praetor_harness::nemesis::checker::handed_over_during;
use praetor_harness::nemesis::dcs_probe::first_acceptance;
use praetor_harness::nemesis::fault::FaultKind;
use praetor_harness::nemesis::history::Mode;
use praetor_harness::nemesis::runner::{options_from_env, series, NemesisOptions};
use praetor_harness::nemesis::table::{render, RunResult};

/// The `praetor` executable the clusters run: `$PRAETOR_NEMESIS_BIN` when set (a build of
/// another commit, to show what a seed detects there), else the one cargo built with this test.
fn binary() -> std::path::PathBuf {
    match std::env::var_os("PRAETOR_NEMESIS_BIN") {
        Some(bin) => {
            let bin = std::path::PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "PRAETOR_NEMESIS_BIN: {} is not a file",
                bin.display()
            );
            bin
        }
        None => praetor_harness::praetor_beside_current_exe(),
    }
}

async fn no_violation(defaults: NemesisOptions, seeds: Vec<u64>) -> Vec<RunResult> {
    let options = options_from_env(defaults).expect("PRAETOR_NEMESIS_* settings");
    let number = |name: &str| {
        std::env::var(name).ok().map(|n| {
            n.parse::<u64>()
                .unwrap_or_else(|_| panic!("{name} is a number"))
        })
    };
    let seeds = match (
        number("PRAETOR_NEMESIS_SEED"),
        number("PRAETOR_NEMESIS_SEEDS"),
    ) {
        (Some(seed), _) => vec![seed],
        (None, Some(n)) => (1..=n).collect(),
        (None, None) => seeds,
    };
    let (runs, failed) = series(&binary(), &options, seeds).await;
    let table = render(&runs, &failed);
    println!("{table}");
    assert!(failed.is_empty(), "runs failed:\n{table}");
    assert!(
        runs.iter().all(|r| r.report.violations.is_empty()),
        "violations:\n{table}"
    );
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_seeded_runs_under_strict_synchronous_mode_break_no_promise() {
    // Drawn from the kinds before the DCS blip ([`FaultKind::FIRST_FOURTEEN`]): the plans these
    // seeds were chosen with (the blip has a seed of its own below).
    let defaults = NemesisOptions {
        kinds: FaultKind::FIRST_FOURTEEN.to_vec(),
        ..NemesisOptions::new(DcsKind::EtcdCluster3, Mode::Strict)
    };
    no_violation(defaults, vec![1, 2, 3]).await;
}

/// Seeds that once broke a promise, replayed with the options they ran with (the seed fixes the
/// faults; the cluster's timing may differ, so a pass is evidence, not proof), drawn from the kinds
/// that existed then ([`FaultKind::FIRST_TEN`]), so each replays the faults it was found with:
/// - 12 (and 1) under strict on etcd: the leader froze while the `sync` key listed no standby
///   yet (right after it took the lock back), so no member was allowed to promote, not even the
///   thawed former primary, and the cluster stayed without a leader. Fixed: the key's leader (the
///   last known primary) may promote, as in Patroni.
/// - 1 under strict on ZooKeeper (and 1 in namespaces): a member took the lock and its
///   PostgreSQL was stopped (its own demotion deadline, the loop slowed by fencing and waiting
///   for proxies) before the promotion; restarted "as primary after failure" it ended crash
///   recovery on the former leader's timeline 1 and both acknowledged writes on timeline 1.
///   Fixed: a lock holder whose data directory was a replica's restarts read-only and promotes
///   onto a new timeline (Patroni's recover()); the deterministic regression is a row of the HA
///   table (agent/src/ha/tests.rs), this replay is the end-to-end one.
/// - 21 under strict on etcd with overlapping faults: the leader's agent and PostgreSQL were
///   killed and, while the etcd quorum was lost, the agent was started again; it exited at once
///   ("cannot open the DCS") and its member never came back. Fixed: the agent waits for the DCS
///   at its start, as Patroni does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_that_found_violations_break_no_promise() {
    let then = |dcs| NemesisOptions {
        kinds: FaultKind::FIRST_TEN.to_vec(),
        ..NemesisOptions::new(dcs, Mode::Strict)
    };
    no_violation(then(DcsKind::EtcdCluster3), vec![12]).await;
    let mut overlapping = then(DcsKind::EtcdCluster3);
    overlapping.overlap = true;
    no_violation(overlapping, vec![21]).await;
    no_violation(then(DcsKind::ZooKeeperEnsemble3), vec![1]).await;
}

/// The kinds added with the replication-link faults, one seed each way: in network namespaces
/// under strict synchronous mode, a seed whose plan draws a slow, a lossy and a cut replication
/// link (a replica's stream from the leader through a relay; commits must go on, nothing
/// acknowledged may be lost); on the loopback harness under asynchronous replication, a seed
/// whose plan draws a switchover, which must lose no acknowledged write even there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_drawing_replication_link_faults_and_switchovers_break_no_promise() {
    let mut links = NemesisOptions::new(DcsKind::EtcdCluster3, Mode::Strict);
    links.netns = true;
    links.kinds = vec![
        FaultKind::ReplicationSlow,
        FaultKind::ReplicationLossy,
        FaultKind::ReplicationCut,
        FaultKind::Switchover,
    ];
    no_violation(links, vec![LINKS_SEED]).await;
    let switchover = NemesisOptions {
        kinds: FaultKind::FIRST_FOURTEEN.to_vec(),
        ..NemesisOptions::new(DcsKind::EtcdCluster3, Mode::Async)
    };
    no_violation(switchover, vec![ASYNC_SWITCHOVER_SEED]).await;
}

/// Draws a 1.2 s slow link (+355 ms), a 5.4 s cut and an 8.4 s lossy link (33 %) from the
/// replication-link kinds and the switchover.
const LINKS_SEED: u64 = 20;

/// Draws a switchover first, then a freeze and a kill, from the loopback kinds of
/// [`FaultKind::FIRST_FOURTEEN`].
const ASYNC_SWITCHOVER_SEED: u64 = 10;

/// README's "a DCS outage shorter than `retry_timeout` disturbs no leader; losing one DCS member
/// disturbs nothing": a seed whose plan draws DCS blips (every etcd server frozen for less than
/// `retry_timeout`) and one etcd member stopped, under strict synchronous mode. Beyond the other
/// promises, the leader must keep acknowledging through each (the checker's `LeaderDisturbed`:
/// no promotion, no new timeline, no pause of its direct probe or of the proxy's writes longer
/// than `loop_wait + 1 s`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_drawing_dcs_blips_and_a_member_stop_leaves_the_leader_undisturbed() {
    let mut blips = NemesisOptions::new(DcsKind::EtcdCluster3, Mode::Strict);
    blips.kinds = vec![FaultKind::DcsBlip, FaultKind::DcsMemberStop];
    no_violation(blips, vec![BLIP_SEED]).await;
}

/// Draws a 1.2 s and a 0.2 s DCS blip, then one etcd member stopped for 1.6 s.
const BLIP_SEED: u64 = 2;

/// Issue 14's gray failure: the leader's links to every ZooKeeper server slowed (a DCS call then
/// takes ~1 s or more) but alive, so its session, and its ephemeral leader znode, live on while its
/// renewals miss their deadline; in network namespaces under strict synchronous mode, one fault per
/// run. Asserted: every promise holds (no acknowledged write lost, no second writable primary,
/// convergence after the heal), and the leader hands over while the fault holds: another member
/// acknowledges writes through the proxy's read-write port before the heal
/// ([`handed_over_during`]). Before the fix (agent/src/ha/lapsed.rs) the leader kept the lock, and
/// its deadline guard stopped each restart, without writes until the heal: this assertion fails
/// on that build (`PRAETOR_NEMESIS_BIN`; docs/nemesis-tables.md). The write gap (the table's `gap`
/// columns: 30.3 s before the fix, 5.2 s after, bound 12 s) is printed, not asserted: on this
/// loaded machine a member with a healthy link lapsed too once (ZooKeeper answering it in more
/// than `retry_timeout` at load ~13-40), which made a second outage right after the heal, so a
/// bound of about `2 × ttl` would fail for the machine's sake; the hold (20-30 s) against a
/// handover in 3-8 s leaves the handover's assertion a wide margin. The recovery column
/// (`slow-dcs@leader`) measures the first write after the fault, which comes before the lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_drawing_a_slow_dcs_link_of_the_leader_breaks_no_promise() {
    let mut slow = NemesisOptions::new(DcsKind::ZooKeeperEnsemble3, Mode::Strict);
    slow.netns = true;
    slow.faults = 1;
    slow.kinds = vec![FaultKind::SlowDcs];
    for run in no_violation(slow, vec![SLOW_DCS_SEED]).await {
        for f in &run.history.faults {
            let handover = handed_over_during(&run.history, f);
            println!(
                "seed {}: {} ({}) {:?}-{:?}: handed over {handover:?}",
                run.seed, f.kind, f.target, f.start, f.heal
            );
            assert!(
                handover.is_some(),
                "seed {}: no other member acknowledged a write through the proxy while {} ({}) held, {:?}-{:?}: the leader kept its lock",
                run.seed,
                f.kind,
                f.target,
                f.start,
                f.heal
            );
        }
    }
}

/// Draws the leader's ZooKeeper links slowed for 20-30 s (see [`FaultKind::SlowDcs`]).
const SLOW_DCS_SEED: u64 = 1;

/// Seed 54 (issue 14), found in all four series (etcd and ZooKeeper, asynchronous and strict): a
/// replica's replication link from the leader is cut, and the leader's host falls silent while
/// the cut is held. The replica's walreceiver had connected during the cut (the relay holds such
/// a connection unanswered); at the restore the relay closed it, unread, with a reset that the
/// silence dropped, so the leader's side forgot the connection while the replica's side stayed
/// established and idle (`ss` in both hosts while it hung), and
/// PostgreSQL's walreceiver, which waits for the server's answer with no timeout while it
/// connects, never streamed again. Fixed: `primary_conninfo` carries TCP keepalives (and
/// `tcp_user_timeout`), whose probe draws an RST from the leader's host, so the walreceiver fails
/// and PostgreSQL reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_stream_was_cut_while_the_leader_was_silent_streams_again() {
    let mut options = NemesisOptions::new(DcsKind::EtcdCluster3, Mode::Async);
    options.netns = true;
    options.overlap = true;
    // The fifteen kinds the series drew from (`slow-dcs`, added since, would shift the draw).
    options.kinds = FaultKind::FIRST_FIFTEEN.to_vec();
    no_violation(options, vec![HALF_OPEN_SEED]).await;
}

/// Draws a 5.0 s cut of a replica's replication link and, overlapping it, a 3.4 s silence of
/// the leader's host, then a 12 s freeze of the leader, from every kind (the benchmark's default
/// series with network namespaces).
const HALF_OPEN_SEED: u64 = 54;

/// The runner's probe of when a DCS accepts requests again after a quorum loss
/// (`nemesis::dcs_probe`, what a quorum loss's bound counts from), on a real 3-server etcd and
/// ZooKeeper: it answers while the DCS has its quorum, gets no answer from the one server left
/// while two are stopped, and answers again once they are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dcs_probe_answers_only_while_the_dcs_has_a_quorum() {
    use std::time::Duration;
    for kind in [DcsKind::EtcdCluster3, DcsKind::ZooKeeperEnsemble3] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut dcs = LocalDcs::start(kind, dir.path())
            .await
            .expect("the DCS starts");
        let (section, hosts) = dcs.section_and_hosts();
        let probe = |give_up| first_acceptance(section, hosts.clone(), give_up);
        probe(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{kind:?} with its quorum: {e}"));
        dcs.stop_member(0);
        dcs.stop_member(1);
        let lost = probe(Duration::from_secs(3)).await;
        assert!(
            lost.is_err(),
            "{kind:?} without a quorum answered: {lost:?}"
        );
        dcs.start_member(0).await.expect("start server 1 again");
        dcs.start_member(1).await.expect("start server 2 again");
        let back = probe(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{kind:?} after the quorum came back: {e}"));
        println!("{kind:?}: accepted requests {back:?} after its servers were started again");
        dcs.stop();
    }
}
