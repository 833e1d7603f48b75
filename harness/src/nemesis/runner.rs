//! One nemesis run: start a 3-member cluster on a 3-server DCS with a proxy, start the workload,
//! apply the seed's faults one after another (each held, healed, then awaited until the cluster
//! converged again), stop the workload, read the final state from the leader and check the history.

use std::path::Path;
use std::time::{Duration, Instant};

use super::checker::check;
use super::fault::{plan, FaultKind, Host, NetworkFaults, PlanOptions, PlannedFault, Target};
use super::history::{Convergence, FaultRecord, History, Mode};
use super::table::RunResult;
use super::workload::{create_tables, read_final_state, Endpoints, Workload};
use crate::cluster::{ClusterOptions, DcsKind, LocalCluster};
use crate::proxy::FullProxy;
use crate::wait_for;

/// What every run of a series shares.
#[derive(Clone)]
pub struct NemesisOptions {
    /// The DCS: a 3-server etcd cluster or ZooKeeper ensemble (so one server can stop without
    /// losing the quorum).
    pub dcs: DcsKind,
    /// Replication mode.
    pub mode: Mode,
    /// Faults per run.
    pub faults: usize,
    /// The kinds to draw from; those needing a network are dropped without [`Self::network`].
    pub kinds: Vec<FaultKind>,
    /// Leader lock TTL, seconds.
    pub ttl_secs: u32,
    /// Loop period, seconds.
    pub loop_wait_secs: u32,
    /// DCS retry timeout, seconds.
    pub retry_timeout_secs: u32,
    /// How long the cluster may take to converge after a heal before the run counts a violation.
    pub convergence_timeout: Duration,
    /// Run every host in a network namespace of its own, so the network faults can be drawn
    /// (needs a cluster whose network implements [`NetworkFaults`]; see [`network`]).
    pub netns: bool,
    /// Keep the cluster's directory when a run finds a violation (its path is printed).
    pub keep_on_violation: bool,
    /// Draw overlapping faults ([`PlanOptions::overlap`]): a second fault applied while the
    /// first still holds.
    pub overlap: bool,
    /// The logical slot workload ([`super::slot_workload`]) on this PostgreSQL major: a
    /// permanent logical slot in the dynamic configuration, `wal_level: logical`, a consumer
    /// checked by [`super::slot_feed`]; the first fault waits until every replica holds a usable
    /// copy. `None` (the default): PostgreSQL 15, no slot.
    pub slots: Option<crate::PgMajor>,
}

impl NemesisOptions {
    /// Defaults for `dcs` and `mode`: 3 faults per run drawn from every kind the loopback harness
    /// can apply, ttl 6 s, loop_wait 1 s, retry_timeout 2 s, convergence within 90 s.
    pub fn new(dcs: DcsKind, mode: Mode) -> NemesisOptions {
        NemesisOptions {
            dcs,
            mode,
            faults: 3,
            kinds: FaultKind::ALL.to_vec(),
            ttl_secs: 6,
            loop_wait_secs: 1,
            retry_timeout_secs: 2,
            convergence_timeout: Duration::from_secs(90),
            netns: false,
            keep_on_violation: true,
            overlap: false,
            slots: None,
        }
    }

    /// The kinds this harness can apply.
    pub fn applicable_kinds(&self) -> Vec<FaultKind> {
        self.kinds
            .iter()
            .copied()
            // Network faults need hosts of their own; a slow or lossy link is a member's links
            // to the DCS servers (relays inside its host, ClusterOptions::dcs_links); a
            // replication link's relay needs the leader's host to redirect the replica's stream.
            .filter(|k| self.netns || !k.needs_network())
            .collect()
    }

    /// The faults of run `seed`.
    pub fn plan(&self, seed: u64) -> Vec<PlannedFault> {
        plan(
            seed,
            &PlanOptions {
                faults: self.faults,
                kinds: self.applicable_kinds(),
                ttl_secs: self.ttl_secs,
                retry_timeout_secs: self.retry_timeout_secs,
                overlap: self.overlap,
            },
        )
    }
}

/// What an applied fault needs to be healed.
enum Applied {
    Nothing,
    Frozen(String, Vec<i32>),
    Killed(String),
    /// These DCS servers stopped; `led`: one of them led the DCS (etcd's raft leader,
    /// ZooKeeper's leader) when it was stopped.
    DcsStopped {
        /// The servers' indexes.
        members: Vec<usize>,
        /// One of them led the DCS.
        led: bool,
    },
    /// Every DCS server frozen ([`FaultKind::DcsBlip`]).
    DcsFrozen,
    ProxyKilled,
    /// Network rules in force (silence, slow links, a partition). `dcs_majority`: a partition
    /// cut the DCS's own leader off from these servers, which then elect another (the leader
    /// was among the DCS members on the Praetor leader's side, always the minority).
    Network {
        /// The servers' indexes on the other side, when the DCS's leader was cut off from them.
        dcs_majority: Option<Vec<usize>>,
    },
    /// A replica's replication link degraded or cut: `(leader, replica)`, the key of its relay in
    /// [`LocalCluster::replication_links`].
    ReplicationLink(String, String),
    /// A switchover asked for: the task waiting for the REST API's answer, which yields the
    /// fault's description with that answer and when it came. It heals when the answer comes.
    Switchover(tokio::task::JoinHandle<(String, Instant)>),
}

/// Runs seed `seed` with the praetor executable `binary`. Errors are runs that could not be
/// carried out (a cluster that never formed, a fault that could not be applied); broken promises
/// are in the result's report.
pub async fn run(binary: &Path, options: &NemesisOptions, seed: u64) -> Result<RunResult, String> {
    let wall = Instant::now();
    let cluster_options = ClusterOptions {
        scope: format!("nemesis{seed}"),
        nodes: 3,
        ttl: options.ttl_secs,
        loop_wait: options.loop_wait_secs,
        retry_timeout: options.retry_timeout_secs,
        dcs: options.dcs,
        dcs_extra: options.mode.dcs_lines(),
        // A pg_rewind whose source goes away mid-way (the leader stopped by its deadline guard
        // or a fault) leaves the target's files half-copied: no later pg_rewind can succeed
        // (seed 79, etcd strict: "could not read file .../pg_wal/...: read 0 of 8192" every 9 s,
        // both replicas, no synchronous standby left). PostgreSQL's docs call for a new base
        // backup then; Patroni's setting, which a cluster meant to heal by itself sets, makes
        // the agent remove that replica's data directory and clone again.
        postgresql_extra: vec!["remove_data_directory_on_rewind_failure: true".into()],
        // On hosts of their own: the 3-server DCS `dcs` names (etcd or ZooKeeper, in hosts
        // `e1`..`e3`), and the cluster's proxy (read-write port) in a
        // host too, so partitions can cut it off.
        netns: options.netns,
        proxy: options.netns,
        // Every agent's links to the DCS servers through relays inside its host, so a link can
        // be made slow or lossy (the kernel has no `tc netem`); only when that fault may be
        // drawn: the relays run in this process, and on a loaded machine their own latency
        // costs leaders their lease (two namespace runs of seed 20 drawing only replication-link
        // faults and switchovers, at load 25-35: the leader demoted itself at its deadline
        // again and again, "etcd did not answer within 2s").
        dcs_links: options.netns
            && options
                .applicable_kinds()
                .iter()
                .any(|k| matches!(k, FaultKind::SlowLink | FaultKind::SlowDcs)),
        ..ClusterOptions::default()
    };
    let cluster_options = match options.slots {
        None => cluster_options,
        Some(pg) => ClusterOptions {
            dcs_extra: [
                cluster_options.dcs_extra,
                crate::logical::permanent_slot_lines(super::slot_workload::SLOT),
            ]
            .concat(),
            dcs_parameters: vec!["wal_level: logical".into()],
            bin_dir: Some(pg.bin_dir()),
            ..cluster_options
        },
    };
    let mut cluster = LocalCluster::start(binary, cluster_options).await?;
    let result = run_on(&mut cluster, options, seed, wall).await;
    let keep = match &result {
        // A final read that failed at first is kept too, to see why the leader refused; with
        // `PRAETOR_NEMESIS_KEEP_SLOW=1` a run with a recovery or a write gap over its bound too
        // (to read why).
        Ok(r) => {
            !r.report.violations.is_empty()
                || !r.history.final_read_failures.is_empty()
                || (keep_slow()
                    && r.report
                        .recoveries
                        .iter()
                        .any(|rec| rec.over_bound || rec.gap_over_bound))
        }
        Err(_) => true,
    };
    if keep && options.keep_on_violation {
        eprintln!(
            "nemesis seed {seed}: cluster kept in {}",
            cluster.work.keep().display()
        );
    }
    result
}

/// `PRAETOR_NEMESIS_KEEP_SLOW=1`: keep the directory (logs) of a run whose recovery from some
/// fault took longer than its bound.
fn keep_slow() -> bool {
    std::env::var("PRAETOR_NEMESIS_KEEP_SLOW").is_ok_and(|v| v == "1")
}

/// How long after a quorum loss's heal, or the stop of the DCS's leader, the runner probes the
/// DCS for a server accepting requests ([`super::dcs_probe`]); longer than any election seen
/// (ZooKeeper: up to ~11 s at load ~30).
const DCS_PROBE_LIMIT: Duration = Duration::from_secs(60);

async fn run_on(
    cluster: &mut LocalCluster,
    options: &NemesisOptions,
    seed: u64,
    wall: Instant,
) -> Result<RunResult, String> {
    cluster.wait_healthy(2, Duration::from_secs(180)).await?;
    let mut proxy = if options.netns {
        None
    } else {
        Some(FullProxy::start(cluster, "nemesis", "").await?)
    };
    let (rw, auto) = match (&proxy, &cluster.proxy) {
        (Some(p), _) => (
            format!("127.0.0.1:{}", p.rw_port),
            Some(format!("127.0.0.1:{}", p.auto_port)),
        ),
        (None, Some(p)) => (p.rw_addr(), Some(p.auto_addr())),
        (None, None) => return Err("no proxy".into()),
    };
    wait_for(
        "the proxy's read-write port",
        Duration::from_secs(60),
        || create_tables(&rw),
    )
    .await?;
    if options.mode.is_synchronous() {
        wait_for("a synchronous standby", Duration::from_secs(60), || async {
            let v = cluster.cluster_json().await?;
            let found = v["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["role"] == "sync_standby"));
            found.then_some(()).ok_or_else(|| format!("none in {v}"))
        })
        .await?;
    }
    // The first fault comes once every replica streams (the convergence a heal is judged by):
    // a fault drawn while a replica still clones met a cluster smaller than the bounds assume
    // (seed 49, etcd strict: the synchronous standby's link cut 0.7 s in, while the other replica
    // still cloned, held writes for the whole cut).
    converged(cluster, options)
        .await
        .map_err(|e| format!("the cluster before the first fault: {e}"))?;
    let endpoints = Endpoints {
        rw,
        auto,
        members: cluster
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.pg_addr()))
            .collect(),
    };
    if options.slots.is_some() {
        wait_for("the slot workload's table", Duration::from_secs(60), || {
            super::slot_workload::create_table(&endpoints.rw)
        })
        .await?;
    }
    let t0 = Instant::now();
    let workload = Workload::start(&endpoints, t0, seed);
    let mut slot_workload = match options.slots {
        None => None,
        Some(pg) => Some(super::slot_workload::SlotWorkload::start(
            &endpoints.members,
            &cluster
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.api_addr()))
                .collect::<Vec<_>>(),
            pg.bin_dir(),
            pg.number(),
            cluster.work.path().join("slot-consumer"),
            t0,
        )?),
    };
    wait_for(
        "the workload's first writes",
        Duration::from_secs(30),
        || {
            let ok = workload.acked_through_proxy_since(Duration::ZERO);
            async move { ok.then_some(()).ok_or("none yet".to_string()) }
        },
    )
    .await?;
    if let Some(s) = &mut slot_workload {
        // The claim's precondition: before every replica holds a usable copy, a failover loses
        // the slot by design (PostgreSQL 17+: synchronized, not temporary; before: copied at a
        // restart, then advanced, `ha::slots::pace_copies`). Held here rather than judged per
        // failover: the simplest rule that keeps every fault inside the claim's terms.
        let at = s
            .wait_for_copies(cluster.nodes.len() - 1, Duration::from_secs(300))
            .await?;
        eprintln!(
            "nemesis seed {seed}: {:>6.1}s every replica holds a usable copy of the slot",
            at.as_secs_f64()
        );
    }

    let mut faults: Vec<FaultRecord> = Vec::new();
    let mut convergence = Vec::new();
    let plan = options.plan(seed);
    let mut last_leader = cluster.leader().await;
    let mut i = 0;
    while i < plan.len() {
        // One fault, or two when the next one is drawn to overlap it.
        let group: Vec<&PlannedFault> = match plan.get(i + 1) {
            Some(next) if next.overlap.is_some() => vec![&plan[i], next],
            _ => vec![&plan[i]],
        };
        i += group.len();
        // A replication link goes through a relay from the moment it is first faulted: routed
        // before the group starts (it restarts the replica's stream), so that an overlapping fault
        // that takes the leader away cannot keep the route from being set.
        let mut links = Vec::new();
        for planned in &group {
            links.push(if planned.kind.is_replication_link() {
                Some(route_replication(cluster, &planned.target, &mut last_leader).await?)
            } else {
                None
            });
        }
        let mut held: Vec<(Instant, Applied, usize)> = Vec::new();
        // The DCS's own recoveries being probed ([`super::dcs_probe`]): the task, the fault's
        // index, and the moment the probe counts from (the stop of the DCS's leader, or the heal
        // of a quorum loss).
        let mut probes = Vec::new();
        for (planned, link) in group.iter().zip(links) {
            if let Some(after) = planned.overlap {
                tokio::time::sleep(after).await;
            }
            let (applied, target, start) = apply(
                cluster,
                &mut proxy,
                planned,
                &mut last_leader,
                link,
                &workload,
                options.mode.is_synchronous(),
            )
            .await?;
            eprintln!(
                "nemesis seed {seed}: {:>6.1}s {}{} on {target}, held {:.1}s",
                start.as_secs_f64(),
                planned.kind,
                if planned.overlap.is_some() {
                    " (overlapping)"
                } else {
                    ""
                },
                planned.hold.as_secs_f64()
            );
            // For a DCS member stop, "on the leader" is the DCS's own leader (its election is
            // what a member stop costs; see checker::leader_disturbed).
            let dcs_election = matches!(applied, Applied::DcsStopped { led: true, .. });
            let on_leader =
                matches!(planned.target, Target::Leader | Target::Split { .. }) || dcs_election;
            // The DCS without its leader accepts no request until the others elect one: probed
            // from the stop, or from the partition's cut on the majority's servers only (the
            // cut-off leader may answer until it notices), in a task (checker::recovery_bound
            // counts from the first answer).
            let (section, hosts) = cluster.dcs().section_and_hosts();
            let probed = match &applied {
                Applied::DcsStopped { led: true, .. } => Some(hosts),
                Applied::Network {
                    dcs_majority: Some(majority),
                } => Some(
                    hosts
                        .into_iter()
                        .enumerate()
                        .filter(|(i, _)| majority.contains(i))
                        .map(|(_, h)| h)
                        .collect(),
                ),
                _ => None,
            };
            if let Some(hosts) = probed {
                let probe = super::dcs_probe::first_acceptance(section, hosts, DCS_PROBE_LIMIT);
                probes.push((tokio::spawn(probe), faults.len(), workload.now()));
            }
            held.push((Instant::now() + planned.hold, applied, faults.len()));
            faults.push(FaultRecord {
                kind: planned.kind,
                target,
                start,
                heal: start,
                on_leader,
                replica_with_leader: matches!(
                    planned.target,
                    Target::Split { with_leader, .. } if with_leader > 0
                ),
                dcs_available_at: None,
            });
        }
        // Heal each when its hold ends, the earliest first.
        held.sort_by_key(|(until, _, _)| *until);
        // A switchover heals when its answer comes, after the group's other faults have healed
        // on their own schedule.
        let mut asked = Vec::new();
        for (until, applied, index) in held {
            if let Applied::Switchover(ask) = applied {
                asked.push((ask, index));
                continue;
            }
            tokio::time::sleep_until(until.into()).await;
            let healing = Instant::now();
            heal(cluster, &mut proxy, applied).await?;
            faults[index].heal = workload.now();
            // A heal runs commands (`nft`, `ip`) in this process, whose relays carry every
            // agent's DCS traffic: a slow one on a loaded machine shows here.
            if healing.elapsed() > Duration::from_millis(500) {
                eprintln!(
                    "nemesis seed {seed}: healing {} took {:.1}s",
                    faults[index].kind,
                    healing.elapsed().as_secs_f64()
                );
            }
            // The DCS's own recovery after a quorum loss (an election, sessions accepted again)
            // is not the agents': probed from the heal, in a task so the group's other fault
            // heals on time (checker::recovery_bound counts from the later of the two).
            if faults[index].kind == FaultKind::DcsQuorumLoss {
                let (section, hosts) = cluster.dcs().section_and_hosts();
                let probe = super::dcs_probe::first_acceptance(section, hosts, DCS_PROBE_LIMIT);
                probes.push((tokio::spawn(probe), index, faults[index].heal));
            }
        }
        for (ask, index) in asked {
            let (target, answered) = ask
                .await
                .map_err(|e| format!("the switchover request's task: {e}"))?;
            eprintln!("nemesis seed {seed}: switchover {target}");
            faults[index].heal = workload.now().saturating_sub(answered.elapsed());
            faults[index].target = target;
        }
        let heal_at = workload.now();
        let converged_or_not = converged(cluster, options).await;
        for (probe, index, from) in probes {
            let f = &mut faults[index];
            match probe.await {
                Ok(Ok(after)) => {
                    let what = if f.kind == FaultKind::DcsQuorumLoss {
                        "heal"
                    } else {
                        "start"
                    };
                    eprintln!(
                        "nemesis seed {seed}: the DCS accepted requests {:.1}s after the {what} of {} ({})",
                        after.as_secs_f64(),
                        f.kind,
                        f.target
                    );
                    f.dcs_available_at = Some(from + after);
                }
                Ok(Err(e)) => eprintln!("nemesis seed {seed}: {e}"),
                Err(e) => eprintln!("nemesis seed {seed}: the DCS probe's task: {e}"),
            }
        }
        match converged_or_not {
            Ok(leader) => {
                last_leader = Some(leader);
                convergence.push(Convergence::Converged {
                    after: workload.now() - heal_at,
                })
            }
            Err(last) => {
                convergence.push(Convergence::NotConverged {
                    at: workload.now(),
                    last,
                });
                break;
            }
        }
        // Let writes resume through both ports before the next fault, so each fault's recovery
        // is its own (bounded: a run whose proxy never recovers shows as "no recovery").
        let since = heal_at;
        let _ = wait_for(
            "writes through the proxy again",
            Duration::from_secs(30),
            || {
                let ok = workload.acked_through_proxy_since(since);
                async move { ok.then_some(()).ok_or("none yet".to_string()) }
            },
        )
        .await;
        tokio::time::sleep(group.last().map_or(Duration::ZERO, |f| f.quiet)).await;
    }
    let end = workload.now();
    let ops = workload.stop().await?;
    let slot_acknowledged = match &mut slot_workload {
        Some(s) => s.stop_writer().await,
        None => 0,
    };
    // The leader may be changing hands right after the last heal (a DCS session expiring late):
    // read from whoever leads, retried for up to a minute.
    let read_from = Instant::now();
    let failures = std::sync::Mutex::new(Vec::new());
    let final_state = wait_for(
        "the final state from the leader",
        Duration::from_secs(60),
        || async {
            let result = match cluster.leader().await {
                None => Err("no leader".to_string()),
                Some(leader) => read_final_state(&cluster.node(&leader).pg_addr())
                    .await
                    .map_err(|e| format!("{leader}: {e}")),
            };
            if let Err(e) = &result {
                // A leader changing hands after the cluster had converged is worth seeing.
                let line = format!(
                    "at {:.1}s (+{:.1}s after the workload stopped): {e}",
                    (end + read_from.elapsed()).as_secs_f64(),
                    read_from.elapsed().as_secs_f64()
                );
                eprintln!("nemesis seed {seed}: final read failed {line}");
                failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line);
            }
            result
        },
    )
    .await
    .ok();
    let slot = match slot_workload {
        None => None,
        Some(s) => {
            let leader = cluster.leader().await.map(|l| cluster.node(&l).pg_addr());
            Some(
                s.finish(leader, slot_acknowledged, Duration::from_secs(120))
                    .await,
            )
        }
    };
    let history = History {
        mode: options.mode,
        ttl_secs: options.ttl_secs,
        loop_wait_secs: options.loop_wait_secs,
        retry_timeout_secs: options.retry_timeout_secs,
        final_read_failures: failures.into_inner().unwrap_or_else(|p| p.into_inner()),
        ops,
        faults,
        convergence,
        final_state,
        end,
        // The proxy runs with its defaults, read_your_writes on among them.
        read_your_writes: true,
        slot,
    };
    let report = check(&history);
    Ok(RunResult {
        seed,
        history,
        report,
        wall: wall.elapsed(),
    })
}

/// Waits until the cluster converged after a heal (one running leader, both replicas streaming
/// on its timeline) and still is `retry_timeout + loop_wait` later; returns the leader. Right
/// after a DCS outage the members' `/cluster` may still show the view from before it, and a
/// leader that was without the DCS for longer than `retry_timeout` demotes itself at its next
/// loop (Patroni's rule): the second look sees that (ZooKeeper seed 4 under strict, whose final
/// read found the leader restarting as a replica).
async fn converged(cluster: &LocalCluster, options: &NemesisOptions) -> Result<String, String> {
    let deadline = Instant::now() + options.convergence_timeout;
    let settle = Duration::from_secs(u64::from(
        options.retry_timeout_secs + options.loop_wait_secs,
    ));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let first = cluster.wait_healthy(2, left).await?;
        tokio::time::sleep(settle).await;
        let left = deadline.saturating_duration_since(Instant::now());
        let second = cluster
            .wait_healthy(2, left.max(Duration::from_secs(1)))
            .await?;
        if first == second {
            return Ok(second);
        }
        if Instant::now() >= deadline {
            return Err(format!("the leader changed from {first} to {second}"));
        }
    }
}

/// The member `target` names now. While no member leads (a fault applied during another's
/// failover), the leader is the last one seen, `last_leader`.
async fn member(
    cluster: &LocalCluster,
    target: &Target,
    last_leader: &mut Option<String>,
) -> Result<String, String> {
    if let Some(l) = cluster.leader().await {
        *last_leader = Some(l);
    }
    let leader = last_leader.clone().ok_or("no leader to aim at")?;
    Ok(match target {
        Target::Replica(n) => {
            let replicas: Vec<&String> = cluster
                .nodes
                .iter()
                .map(|n| &n.name)
                .filter(|n| **n != leader)
                .collect();
            replicas[n % replicas.len()].clone()
        }
        _ => leader,
    })
}

/// Routes the replication link of the replica `target` names to the leader through a relay
/// ([`LocalCluster::relay_replication`], once per leader and replica; the route stays for the
/// run); returns `(leader, replica)`.
async fn route_replication(
    cluster: &mut LocalCluster,
    target: &Target,
    last_leader: &mut Option<String>,
) -> Result<(String, String), String> {
    let leader = member(cluster, &Target::Leader, last_leader).await?;
    let replica = member(cluster, target, last_leader).await?;
    let routed = cluster
        .replication_links
        .iter()
        .any(|(l, r, _)| *l == leader && *r == replica);
    if !routed {
        cluster.relay_replication(&leader, &replica).await?;
    }
    Ok((leader, replica))
}

/// The relay of `replica`'s replication link from `leader`.
fn replication_relay<'a>(
    cluster: &'a LocalCluster,
    leader: &str,
    replica: &str,
) -> Result<&'a crate::relay::TcpRelay, String> {
    cluster
        .replication_links
        .iter()
        .find(|(l, r, _)| l == leader && r == replica)
        .map(|(_, _, relay)| relay)
        .ok_or_else(|| format!("{replica}'s replication link from {leader} has no relay"))
}

/// Applies `f`; returns what its heal needs, whom it hit, and when it was applied (from the run's
/// start: right after the fault is in place, or, for a switchover, when it was asked for).
/// `link` is the `(leader, replica)` a replication-link fault was routed for
/// ([`route_replication`]). Under `synchronous_mode` (`sync`) a switchover's candidate is the
/// synchronous standby when `/cluster` names one: the leader refuses any other (Patroni's rule,
/// 412), so a drawn replica would see half the switchovers refused.
async fn apply(
    cluster: &mut LocalCluster,
    proxy: &mut Option<FullProxy>,
    f: &PlannedFault,
    last_leader: &mut Option<String>,
    link: Option<(String, String)>,
    workload: &Workload,
    sync: bool,
) -> Result<(Applied, String, Duration), String> {
    if f.kind.needs_network() && cluster.network.is_none() {
        return Err(format!("{} needs hosts with networks of their own", f.kind));
    }
    if f.kind == FaultKind::Switchover {
        let leader = member(cluster, &Target::Leader, last_leader).await?;
        let mut candidate = member(cluster, &f.target, last_leader).await?;
        if sync {
            let standby = cluster.cluster_json().await.ok().and_then(|v| {
                v["members"].as_array().and_then(|m| {
                    m.iter()
                        .find(|m| m["role"] == "sync_standby")
                        .and_then(|m| m["name"].as_str().map(String::from))
                })
            });
            candidate = standby.unwrap_or(candidate);
        }
        let api = cluster.node(&leader).api_addr();
        let start = workload.now();
        let asked = format!("{leader} -> {candidate}");
        // The answer comes once the switchover is done or failed, up to a minute later: asked in
        // a task of its own, so that a fault overlapping it heals on time (seed 9: a slow DCS link
        // drawn for 4.8 s stayed for the switchover's 33 s while the runner waited here).
        let ask = tokio::spawn(async move {
            let sent = Instant::now();
            let answer = switchover(&api, &leader, &candidate).await;
            let took = sent.elapsed().as_secs_f64();
            // A refusal is the cluster's answer, not a failed run: recorded, and checked like
            // any other (writes must go on). The fault's record spans the switchover.
            let target = match answer {
                Ok((code, body)) => {
                    format!(
                        "{leader} -> {candidate} ({code} {} after {took:.1}s)",
                        body.trim()
                    )
                }
                Err(e) => format!("{leader} -> {candidate} (no answer: {e})"),
            };
            (target, Instant::now())
        });
        return Ok((Applied::Switchover(ask), asked, start));
    }
    let (applied, target) = apply_now(cluster, proxy, f, last_leader, link).await?;
    Ok((applied, target, workload.now()))
}

/// `POST /switchover {"leader": leader, "candidate": candidate}` to the leader's REST API at
/// `api` (`ip:port`), as `praetor ctl switchover` asks it; returns the status and body (the API
/// answers once the switchover is done or failed). HTTP/1.0 by hand, as
/// [`crate::http_get`]. Errors: no connection, no answer within 60 s.
async fn switchover(api: &str, leader: &str, candidate: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::json!({ "leader": leader, "candidate": candidate }).to_string();
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(api)
            .await
            .map_err(|e| format!("connect {api}: {e}"))?;
        let req = format!(
            "POST /switchover HTTP/1.0\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad response {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok::<_, String>((code, body))
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| "no answer within 60 s".to_string())?
}

async fn apply_now(
    cluster: &mut LocalCluster,
    proxy: &mut Option<FullProxy>,
    f: &PlannedFault,
    last_leader: &mut Option<String>,
    link: Option<(String, String)>,
) -> Result<(Applied, String), String> {
    Ok(match f.kind {
        FaultKind::Switchover => unreachable!("applied by apply()"),
        FaultKind::ReplicationSlow | FaultKind::ReplicationLossy | FaultKind::ReplicationCut => {
            let (leader, replica) =
                link.ok_or_else(|| format!("{} without a routed link", f.kind))?;
            let relay = replication_relay(cluster, &leader, &replica)?;
            let (delay, loss) = f.degrade.unwrap_or((0, 0));
            let what = match f.kind {
                FaultKind::ReplicationCut => {
                    relay.cut();
                    "cut".to_string()
                }
                _ => {
                    relay.set_delay(Duration::from_millis(u64::from(delay)));
                    relay.set_loss(f64::from(loss) / 100.0);
                    format!("+{delay}ms {loss}% loss")
                }
            };
            (
                Applied::ReplicationLink(leader.clone(), replica.clone()),
                format!("{replica}'s replication link from {leader} {what}"),
            )
        }
        FaultKind::Freeze => {
            let m = member(cluster, &f.target, last_leader).await?;
            let pids = cluster.node(&m).freeze();
            (Applied::Frozen(m.clone(), pids), m)
        }
        FaultKind::Kill => {
            let m = member(cluster, &f.target, last_leader).await?;
            let node = cluster.node_mut(&m);
            node.kill_agent();
            node.kill_postmaster();
            (Applied::Killed(m.clone()), m)
        }
        FaultKind::PostgresCrash => {
            let m = member(cluster, &f.target, last_leader).await?;
            cluster.node(&m).kill_postmaster();
            (Applied::Nothing, m)
        }
        FaultKind::DcsMemberStop | FaultKind::DcsQuorumLoss => {
            let Target::DcsMembers(members) = &f.target else {
                return Err(format!("{} without DCS members: {:?}", f.kind, f.target));
            };
            let dcs = cluster.dcs();
            let members: Vec<usize> = members.iter().map(|i| i % dcs.member_count()).collect();
            let names: Vec<String> = members.iter().map(|i| dcs.member_name(*i)).collect();
            let led = dcs
                .leader_index()
                .await
                .is_some_and(|l| members.contains(&l));
            for i in &members {
                dcs.stop_member(*i);
            }
            let led_note = if led { " (the DCS's leader)" } else { "" };
            (
                Applied::DcsStopped { members, led },
                format!("{}{led_note}", names.join(", ")),
            )
        }
        FaultKind::DcsBlip => {
            let dcs = cluster.dcs();
            let names: Vec<String> = (0..dcs.member_count())
                .map(|i| dcs.member_name(i))
                .collect();
            dcs.set_frozen(true);
            (Applied::DcsFrozen, format!("{} frozen", names.join(", ")))
        }
        FaultKind::ProxyRestart => {
            match proxy {
                Some(p) => p.kill(),
                // Dropping the cluster's proxy kills its process group.
                None => drop(cluster.proxy.take()),
            }
            (Applied::ProxyKilled, "proxy".into())
        }
        FaultKind::Silence => {
            let m = member(cluster, &f.target, last_leader).await?;
            network_of(cluster).silence(&Host::Member(m.clone()))?;
            (Applied::Network { dcs_majority: None }, m)
        }
        FaultKind::SlowLink | FaultKind::SlowDcs => {
            let m = member(cluster, &f.target, last_leader).await?;
            let (delay, loss) = f.degrade.unwrap_or((100, 0));
            network_of(cluster).degrade(&Host::Member(m.clone()), delay, loss)?;
            (
                Applied::Network { dcs_majority: None },
                format!("{m}'s DCS links +{delay}ms {loss}% loss"),
            )
        }
        FaultKind::Partition | FaultKind::OneWayPartition => {
            let Target::Split {
                with_leader,
                dcs_with_leader,
            } = &f.target
            else {
                return Err(format!("{} without sides: {:?}", f.kind, f.target));
            };
            let leader = member(cluster, &Target::Leader, last_leader).await?;
            let mut a = vec![Host::Member(leader.clone())];
            let mut b = vec![Host::Proxy];
            let others: Vec<String> = cluster
                .nodes
                .iter()
                .map(|n| n.name.clone())
                .filter(|n| *n != leader)
                .collect();
            for (i, o) in others.iter().enumerate() {
                if i < *with_leader {
                    a.push(Host::Member(o.clone()))
                } else {
                    b.push(Host::Member(o.clone()))
                }
            }
            for i in 0..cluster.dcs().member_count() {
                if dcs_with_leader.contains(&i) {
                    a.push(Host::Dcs(i))
                } else {
                    b.push(Host::Dcs(i))
                }
            }
            // Asked before the cut: whether the DCS's own leader goes with the minority (the
            // other servers then stop hearing it, in either direction of a one-way cut, and
            // elect another).
            let dcs_leader = cluster.dcs().leader_index().await;
            let dcs_majority = dcs_leader.filter(|l| dcs_with_leader.contains(l)).map(|_| {
                (0..cluster.dcs().member_count())
                    .filter(|i| !dcs_with_leader.contains(i))
                    .collect::<Vec<_>>()
            });
            let one_way = f.kind == FaultKind::OneWayPartition;
            network_of(cluster).partition(&a, &b, one_way)?;
            let names = |hs: &[Host]| hs.iter().map(Host::name).collect::<Vec<_>>().join(",");
            let arrow = if one_way { "-/->" } else { "|" };
            let led_note = if dcs_majority.is_some() {
                " (the DCS's leader cut off)"
            } else {
                ""
            };
            (
                Applied::Network { dcs_majority },
                format!("{} {arrow} {}{led_note}", names(&a), names(&b)),
            )
        }
    })
}

async fn heal(
    cluster: &mut LocalCluster,
    proxy: &mut Option<FullProxy>,
    applied: Applied,
) -> Result<(), String> {
    match applied {
        Applied::Nothing => Ok(()),
        // Healed by the runner's loop once the answer came (never passed here).
        Applied::Switchover(_) => Ok(()),
        Applied::Frozen(m, pids) => {
            cluster.node(&m).thaw(pids);
            Ok(())
        }
        Applied::Killed(m) => {
            // The cluster's own copy of the binary is what the agents run.
            let bin = cluster.binary.clone();
            cluster.node_mut(&m).start_agent(&bin)
        }
        Applied::DcsStopped { members, .. } => {
            for i in members {
                cluster.dcs().start_member(i).await?;
            }
            Ok(())
        }
        Applied::DcsFrozen => {
            cluster.dcs().set_frozen(false);
            Ok(())
        }
        Applied::ProxyKilled => match proxy {
            Some(p) => p.start_again().await,
            None => cluster.start_proxy(),
        },
        Applied::Network { .. } => network(cluster)
            .ok_or("network fault without a network")?
            .heal(),
        Applied::ReplicationLink(leader, replica) => {
            let relay = replication_relay(cluster, &leader, &replica)?;
            relay.set_delay(Duration::ZERO);
            relay.set_loss(0.0);
            relay.restore();
            Ok(())
        }
    }
}

/// Runs every seed of `seeds` one after another, printing a line per run; returns the finished
/// runs and the seeds whose run could not be carried out, with why.
pub async fn series(
    binary: &Path,
    options: &NemesisOptions,
    seeds: impl IntoIterator<Item = u64>,
) -> (Vec<RunResult>, Vec<(u64, String)>) {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for seed in seeds {
        match run(binary, options, seed).await {
            Ok(r) => {
                eprintln!(
                    "nemesis seed {seed}: {} faults, {} acknowledged writes, {} reads ({} on another server), {} violations, {:.0}s",
                    r.history.faults.len(),
                    r.report.acknowledged,
                    r.report.reads.0,
                    r.report.reads.1,
                    r.report.violations.len(),
                    r.wall.as_secs_f64()
                );
                if let Some(t) = &r.report.slot {
                    eprintln!(
                        "nemesis seed {seed}: slot: {} rows in the final table, {} delivered over {} consumer runs, {} sent again from a start before their commit (allowed), {} delivered then lost in a failover (allowed), {} lost with the slot: the new leader held no usable copy when promoted (allowed), {} skipped: the consumer restarted past them from a position confirmed on a discarded timeline (allowed); every replica's copy usable at {}",
                        t.final_rows,
                        t.delivered,
                        t.runs,
                        t.repeated,
                        t.delivered_lost_allowed,
                        t.lost_with_slot,
                        t.skipped_past_lost,
                        t.copies_usable_at
                            .map_or("never".into(), |d| format!("{:.1}s", d.as_secs_f64()))
                    );
                }
                if let Some(s) = &r.history.slot {
                    // Each replica's copy turning usable or not: a failover to a member without
                    // one is outside the claim.
                    let copies: Vec<String> = s
                        .copies
                        .iter()
                        .map(|(m, at, usable)| {
                            let what = if *usable { "usable" } else { "none" };
                            format!("{m} {what} at {:.1}s", at.as_secs_f64())
                        })
                        .collect();
                    eprintln!("nemesis seed {seed}: slot copies: {}", copies.join(", "));
                    // The `/patroni` answers the checker weighs each promotion against
                    // (`slot_feed::passed_over_holder`): per member, how many and how many said
                    // `logical_slot_copies: true`.
                    let mut answers: std::collections::BTreeMap<&str, (usize, usize)> =
                        std::collections::BTreeMap::new();
                    for c in &s.candidates {
                        let e = answers.entry(c.member.as_str()).or_default();
                        e.0 += 1;
                        e.1 += usize::from(c.slot_copies == Some(true));
                    }
                    let answers: Vec<String> = answers
                        .iter()
                        .map(|(m, (n, held))| format!("{m} {n} ({held} holding copies)"))
                        .collect();
                    eprintln!(
                        "nemesis seed {seed}: /patroni answers: {}",
                        answers.join(", ")
                    );
                }
                for v in &r.report.violations {
                    eprintln!(
                        "nemesis seed {seed}: {} at {:.1}s: {}",
                        v.kind,
                        v.at.as_secs_f64(),
                        v.detail
                    );
                }
                // Measured, not a violation: named with its seed so it can be replayed.
                for rec in r.report.recoveries.iter().filter(|rec| rec.over_bound) {
                    eprintln!(
                        "nemesis seed {seed}: over bound: {}{} at {:.1}s recovered in {:.2}s > {:.2}s",
                        rec.kind.name(),
                        if rec.on_leader { "@leader" } else { "" },
                        rec.at.as_secs_f64(),
                        rec.after.unwrap_or_default().as_secs_f64(),
                        rec.bound.as_secs_f64()
                    );
                }
                for rec in r.report.recoveries.iter().filter(|rec| rec.gap_over_bound) {
                    eprintln!(
                        "nemesis seed {seed}: gap over bound: {}{} at {:.1}s no read-write proxy write for {:.2}s > {:.2}s",
                        rec.kind.name(),
                        if rec.on_leader { "@leader" } else { "" },
                        rec.at.as_secs_f64(),
                        rec.gap.as_secs_f64(),
                        rec.gap_bound.as_secs_f64()
                    );
                }
                done.push(r);
            }
            Err(e) => {
                eprintln!("nemesis seed {seed}: run failed: {e}");
                failed.push((seed, e));
            }
        }
    }
    (done, failed)
}

/// Reads the series settings from the environment, for the benchmark and the CI test:
/// `PRAETOR_NEMESIS_DCS` (`etcd` or `zookeeper`: a 3-server etcd cluster or ZooKeeper ensemble),
/// `PRAETOR_NEMESIS_MODE` (`async`, `sync`, `strict`), `PRAETOR_NEMESIS_FAULTS` (comma-separated
/// fault names to draw from, default all the harness can apply) and
/// `PRAETOR_NEMESIS_FAULTS_PER_RUN`, `PRAETOR_NEMESIS_NETNS` and `PRAETOR_NEMESIS_OVERLAP` (`1` or
/// `0`), `PRAETOR_NEMESIS_SLOTS` (`1` or `18`: the logical slot workload on PostgreSQL 18; `15`:
/// on PostgreSQL 15; `0`: none, [`NemesisOptions::slots`]); `defaults` gives what an unset
/// variable means.
///
/// Errors: a value that is not one of those names, naming the variable.
pub fn options_from_env(defaults: NemesisOptions) -> Result<NemesisOptions, String> {
    let mut o = defaults;
    if let Ok(v) = std::env::var("PRAETOR_NEMESIS_DCS") {
        o.dcs = match v.as_str() {
            "etcd" => DcsKind::EtcdCluster3,
            "zookeeper" => DcsKind::ZooKeeperEnsemble3,
            other => {
                return Err(format!(
                    "PRAETOR_NEMESIS_DCS: {other:?} is not etcd or zookeeper"
                ))
            }
        };
    }
    if let Ok(v) = std::env::var("PRAETOR_NEMESIS_MODE") {
        o.mode = Mode::parse(&v)
            .ok_or_else(|| format!("PRAETOR_NEMESIS_MODE: {v:?} is not async, sync or strict"))?;
    }
    if let Ok(v) = std::env::var("PRAETOR_NEMESIS_FAULTS") {
        o.kinds = v
            .split(',')
            .map(|s| {
                FaultKind::parse(s.trim()).ok_or_else(|| {
                    let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                    format!(
                        "PRAETOR_NEMESIS_FAULTS: {s:?} is none of {}",
                        names.join(", ")
                    )
                })
            })
            .collect::<Result<_, _>>()?;
    }
    if let Ok(v) = std::env::var("PRAETOR_NEMESIS_NETNS") {
        o.netns = v == "1" || v == "true";
    }
    if let Ok(v) = std::env::var("PRAETOR_NEMESIS_OVERLAP") {
        o.overlap = match v.as_str() {
            "1" | "true" => true,
            "0" | "false" => false,
            other => return Err(format!("PRAETOR_NEMESIS_OVERLAP: {other:?} is not 1 or 0")),
        };
    }
    if let Ok(v) = std::env::var("PRAETOR_NEMESIS_SLOTS") {
        o.slots = match v.as_str() {
            "1" | "true" | "18" => Some(crate::PgMajor::Pg18),
            "15" => Some(crate::PgMajor::Pg15),
            "0" | "false" => None,
            other => {
                return Err(format!(
                    "PRAETOR_NEMESIS_SLOTS: {other:?} is not 1, 18, 15 or 0"
                ))
            }
        };
    }
    if let Ok(v) = std::env::var("PRAETOR_NEMESIS_FAULTS_PER_RUN") {
        o.faults = v
            .parse()
            .map_err(|_| format!("PRAETOR_NEMESIS_FAULTS_PER_RUN: {v:?} is not a number"))?;
    }
    Ok(o)
}

/// The network faults of `cluster`'s hosts: those of its network namespaces (and its members'
/// relays to the DCS servers, for slow links), none on the loopback harness.
pub fn network(cluster: &mut LocalCluster) -> Option<Box<dyn NetworkFaults + '_>> {
    let LocalCluster {
        ref mut network,
        ref relays,
        ref options,
        ..
    } = *cluster;
    let links = if options.dcs_links { &relays[..] } else { &[] };
    network
        .as_mut()
        .map(|net| Box::new(HostFaults { net, links }) as Box<dyn NetworkFaults + '_>)
}

/// The network faults of hosts in network namespaces: nftables rules for silences and
/// partitions, the members' relays to the DCS servers for slow or lossy links.
struct HostFaults<'a> {
    net: &'a mut crate::netns::Network,
    /// Each member's relays to the DCS servers, by member name.
    links: &'a [(String, crate::relay::TcpRelay)],
}

impl NetworkFaults for HostFaults<'_> {
    fn silence(&mut self, host: &Host) -> Result<(), String> {
        self.net.silence(&host.name())
    }

    fn partition(&mut self, a: &[Host], b: &[Host], one_way: bool) -> Result<(), String> {
        let a: Vec<String> = a.iter().map(Host::name).collect();
        let b: Vec<String> = b.iter().map(Host::name).collect();
        if one_way {
            for x in &a {
                for y in &b {
                    self.net.one_way(x, y)?;
                }
            }
            Ok(())
        } else {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let b: Vec<&str> = b.iter().map(String::as_str).collect();
            self.net.partition(&a, &b)
        }
    }

    /// Slows member `host`'s links to every DCS server. (A replica's replication link is the
    /// replication-link faults' business, [`FaultKind::ReplicationSlow`] and its siblings.)
    fn degrade(&mut self, host: &Host, delay_ms: u32, loss_percent: u32) -> Result<(), String> {
        let name = host.name();
        let mut found = false;
        for (_, relay) in self.links.iter().filter(|(n, _)| *n == name) {
            relay.set_delay(Duration::from_millis(u64::from(delay_ms)));
            relay.set_loss(f64::from(loss_percent) / 100.0);
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(format!(
                "{name} has no relayed DCS links (ClusterOptions::dcs_links)"
            ))
        }
    }

    fn heal(&mut self) -> Result<(), String> {
        for (_, relay) in self.links {
            relay.set_delay(Duration::ZERO);
            relay.set_loss(0.0);
        }
        self.net.heal()
    }
}

/// [`network`], after the caller checked there is one.
fn network_of(cluster: &mut LocalCluster) -> Box<dyn NetworkFaults + '_> {
    network(cluster).expect("checked by the caller")
}
