//! The simulation in CI: many seeds, the seeds that once found a violation, and proof that the
//! invariants have teeth (a world weakened on purpose is caught).
//!
//! A seed's run depends on the simulation's code as well as on `decide`: a regression seed below
//! replays the schedule that found the bug when it was kept; after changes to the simulation it
//! still runs (and must pass) but may no longer drive the same path. The rows named in
//! `agent/src/ha/tests.rs` pin the rules themselves.

use praetor_sim::{explain, run_seed, run_seed_with, Options, Violation};

/// Seeds run by `ci_seeds`: `PRAETOR_SIM_SEEDS`, default 1000.
fn ci_count() -> u64 {
    std::env::var("PRAETOR_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Asserts that one of seeds 0..2000 of the weakened world `opts` ends in a violation `hit`
/// accepts (the invariant can fail); `missing` says what was not found.
fn found_in_2000_seeds(opts: Options, missing: &str, hit: impl Fn(&Violation) -> bool) {
    let found = (0..2000).find(|&seed| {
        run_seed_with(seed, false, opts)
            .violation
            .as_ref()
            .is_some_and(&hit)
    });
    assert!(found.is_some(), "{missing}");
}

fn assert_clean(seed: u64) {
    let r = run_seed(seed, false);
    assert!(r.violation.is_none(), "{}", explain(&r));
}

/// Runs the `part`-th quarter of the CI seeds: four tests, so that the test harness spreads them
/// over the CPUs.
fn ci_part(part: u64) {
    let n = ci_count();
    for seed in (part * n / 4)..((part + 1) * n / 4) {
        assert_clean(seed);
    }
}

#[test]
fn ci_seeds_first_quarter() {
    ci_part(0);
}

#[test]
fn ci_seeds_second_quarter() {
    ci_part(1);
}

#[test]
fn ci_seeds_third_quarter() {
    ci_part(2);
}

#[test]
fn ci_seeds_fourth_quarter() {
    ci_part(3);
}

/// Synchronous mode: the leader lost its lock while the `sync` key listed nobody; no member was
/// allowed to promote, not even the former leader that held every commit: no leader ever again.
/// Fixed in `sync::may_promote` (the key's leader races when the key lists nobody).
#[test]
fn regression_seed_9_sync_key_listing_nobody_left_the_cluster_leaderless() {
    assert_clean(9);
}

/// Like seed 9, after a promotion (the former primary diverged and could not lead either).
#[test]
fn regression_seed_150_sync_key_listing_nobody_after_a_failover() {
    assert_clean(150);
}

/// Synchronous mode: the leader lost its lock before it ever wrote the `sync` key; with no key,
/// nobody was allowed to promote, not even that leader. Fixed in `sync::may_promote` (no key:
/// synchronous replication never activated, asynchronous rules).
#[test]
fn regression_seed_29328_no_sync_key_yet_left_the_cluster_leaderless() {
    assert_clean(29328);
}

/// Synchronous mode: a switchover request outlived the leader's lock; its former leader stayed out
/// of the race because other members were running, though none of them was allowed to promote.
/// Fixed in `decide::election` (only members the sync key allows count).
#[test]
fn regression_seed_162_switchover_left_behind_kept_the_former_leader_out() {
    assert_clean(162);
}

/// Synchronous mode: the members waited for a switchover candidate that was not a synchronous
/// standby and so could never promote. Fixed in `decide::election`.
#[test]
fn regression_seed_211_waiting_for_a_candidate_that_may_not_promote() {
    assert_clean(211);
}

/// A switchover while the candidate's WAL receiver restarted (asynchronous mode): the leader
/// stopped and released the lock, the candidate promoted without the leader's last commits. Fixed
/// in `decide`: the leader waits for its candidate to stream, publishes its shutdown checkpoint as
/// `status.optime`, and a member lacking it does not promote (found with those rules disabled).
#[test]
fn regression_seed_45_switchover_candidate_without_the_last_wal() {
    assert_clean(45);
}

/// Quorum mode (drawn by the seeds since): the leader lost its lock while the `sync` key listed no
/// voter; nobody was allowed to promote, not even that former leader holding every commit, and the
/// cluster stayed without a leader (23 of the first 1,000 seeds). Fixed in `sync::may_promote`
/// (the key's leader races in quorum mode too, as seed 9 in `on` mode).
#[test]
fn regression_seed_14_quorum_key_listing_no_voter_left_the_cluster_leaderless() {
    assert_clean(14);
}

/// Quorum mode: a switchover request outlived its leader, whose `sync` key listed no voter; that
/// former leader left the race to the others, none of whom the key allowed. Fixed in
/// `decide::election` (in quorum mode a key listing no voter allows its leader alone).
#[test]
fn regression_seed_85_quorum_switchover_left_behind_kept_the_former_leader_out() {
    assert_clean(85);
}

/// Quorum mode, a safety bug: a voter was promoted with votes and acknowledged commits while the
/// DCS was down, so the `sync` key still named the former leader; that former leader, back as a
/// replica, promoted without any vote (the key's leader needed none) and without those commits:
/// `LostCommit`, two members on timeline 2. Fixed in `sync::may_promote` (the key's leader needs
/// `quorum` votes like a voter).
#[test]
fn regression_seed_4957_quorum_key_leader_promoted_without_votes_and_lost_commits() {
    assert_clean(4957);
}

/// Quorum mode: two members diverged (each held WAL past a timeline switch) and stayed stopped,
/// as no leader could rewind them; a stopped member gave no vote, so the third, which needed one,
/// never promoted: no leader after the heal. Fixed with `ha::diverged_vote`: a stopped member
/// that diverged votes at its switch point (its WAL past it holds no acknowledged commit), and
/// a vote compares (timeline, LSN).
#[test]
fn regression_seed_9506_quorum_diverged_stopped_members_gave_no_vote() {
    assert_clean(9506);
}

/// Quorum mode: as seed 9,506.
#[test]
fn regression_seed_13377_quorum_diverged_stopped_members_gave_no_vote() {
    assert_clean(13377);
}

/// `nofailover` (drawn by the seeds since): the `sync` key listed only the member tagged
/// `nofailover`; once the leader lost its lock nobody could promote. Fixed in `sync` (the key's
/// leader races when the key lists only `nofailover` members; a promotable standby is preferred
/// as synchronous, as Patroni does).
#[test]
fn regression_seed_93_sync_key_listing_only_a_nofailover_member_left_the_cluster_leaderless() {
    assert_clean(93);
}

/// The simulated proxy's acknowledgement, once a DCS write with latency, failed while the leader
/// it had acknowledged before came back: the proxy stayed unrouted for good. The proxy's loop
/// routes its acknowledged leader again when the DCS shows it (as `proxy/src/server.rs` does).
#[test]
fn regression_seed_3725_a_failed_proxy_acknowledgement_left_the_proxy_unrouted() {
    assert_clean(3725);
}

/// The fencing handshake: a member promoted while a proxy routed writes to the former leader it
/// replaced (both with failsafe mode drawn and with `--no-failsafe`).
///
/// Seed 30815: the proxy read pg0 as leader (its primary restarted after a failure) and wrote its
/// acknowledgement; pg0 stepped down for a switchover and pg2 took the lock, having read the
/// proxy's key still naming no leader; the write landed and the proxy routed writes to pg0 before
/// pg2 promoted. Fixed on both sides: the proxy routes an acknowledged leader only if a read after
/// the write shows the lock still held by it (`praetor_proxy::route_confirmed`), and a member that
/// takes the lock reads the proxies' keys again once it holds it (`decide`, `await_proxies`; row
/// "no leader, every proxy had left the former leader when read, before taking the lock").
///
/// Seed 8889: the simulation's mirror of the proxy routed its former acknowledgement (pg0) again
/// while its acknowledgement of "no leader" was still being written, then that write landed: the
/// key said no leader while the proxy routed pg0. The real proxy waits for its write in its loop;
/// the mirror now does too, and forgets its acknowledgement after a failed write or a lost reply.
#[test]
fn regression_seeds_8889_and_30815_a_proxy_routed_to_the_former_leader_after_a_promotion() {
    for seed in [8889, 30815] {
        for failsafe in [true, false] {
            let r = run_seed_with(
                seed,
                false,
                Options {
                    failsafe,
                    ..Options::default()
                },
            );
            assert!(
                r.violation.is_none(),
                "failsafe {failsafe}: {}",
                explain(&r)
            );
        }
    }
}

/// Without a watchdog a frozen leader's primary outlives its lease (nothing in the frozen process
/// can stop it) and, cut off from the new leader's fence, accepts writes next to the new primary:
/// the invariant must see it.
#[test]
fn without_a_watchdog_two_writable_primaries_are_found() {
    let opts = Options {
        watchdog: false,
        ..Options::default()
    };
    found_in_2000_seeds(
        opts,
        "no seed found two writable primaries without a watchdog",
        |v| matches!(v, Violation::TwoWritable { .. }),
    );
}

/// Asynchronous replication may lose acknowledged commits at a failover (up to
/// `maximum_lag_on_failover`): with the check turned on there too, the simulation must find one.
#[test]
fn asynchronous_replication_loses_commits_and_the_check_sees_it() {
    let opts = Options {
        check_async_commits: true,
        ..Options::default()
    };
    found_in_2000_seeds(opts, "no seed lost an asynchronous commit", |v| {
        matches!(v, Violation::LostCommit { .. })
    });
}

/// Without the proxies' handshake (a promotion that does not wait for them to leave the former
/// leader), a member promotes while a proxy still routes writes to the leader it replaced: the
/// invariant must see it.
#[test]
fn without_the_proxy_handshake_a_promotion_is_found_while_a_proxy_routes_to_the_former_leader() {
    let opts = Options {
        await_proxies: false,
        ..Options::default()
    };
    found_in_2000_seeds(
        opts,
        "no seed promoted while a proxy routed to the former leader without the handshake",
        |v| matches!(v, Violation::PromotedBeforeProxyLeft { .. }),
    );
}

/// Without the failsafe promise (`ha::failsafe::promised` turned off in the simulation only), a
/// member that confirmed a leader cut off from the DCS over `POST /failsafe` races at once: it
/// takes the lock and promotes while that leader still runs on the confirmation, which extended
/// its deadline past its lease. The invariant must see two writable primaries (seed 978 does, as
/// it did before the promise existed).
#[test]
fn without_the_failsafe_promise_two_writable_primaries_are_found() {
    let opts = Options {
        failsafe_promise: false,
        ..Options::default()
    };
    found_in_2000_seeds(
        opts,
        "no seed found two writable primaries without the failsafe promise",
        |v| matches!(v, Violation::TwoWritable { .. }),
    );
}

/// Failsafe mode drawn, a replica's agent restarted within its failsafe promise: two writable
/// primaries. pg1 confirmed pg0 over `POST /failsafe` at 41.4 s with the DCS down, which extended
/// pg0's deadline to 61.4 s, past its lease (51.5 s). pg1's agent was killed at 45.7 s and
/// restarted at 51.6 s, forgetting its promise (it lived in the REST API's memory); pg0's agent
/// was killed at 57.9 s before its deadline, leaving its PostgreSQL a primary; the link between
/// them was cut. Once the DCS was back, pg1 took the expired lock at 63.7 s, could not fence pg0,
/// and promoted. Fixed: the confirmation is recorded in the data directory before the answer and
/// taken back at the agent's start (`praetor_agent::failsafe_record`); pg1 then stays out until
/// 71.4 s, after pg0's watchdog reset its node at 66.5 s. Without the record (`failsafe_record:
/// false`) the seed still fails, so it exercises the rule.
#[test]
fn regression_seed_47684_a_replica_restarted_within_its_failsafe_promise_kept_it() {
    assert_clean(47684);
    let forgetting = run_seed_with(
        47684,
        false,
        Options {
            failsafe_record: false,
            ..Options::default()
        },
    );
    assert!(
        matches!(forgetting.violation, Some(Violation::TwoWritable { .. })),
        "{}",
        explain(&forgetting)
    );
}

fn assert_clean_with_failsafe(seed: u64) {
    let r = run_seed_with(
        seed,
        false,
        Options {
            failsafe: true,
            ..Options::default()
        },
    );
    assert!(r.violation.is_none(), "{}", explain(&r));
}

/// Failsafe mode (`--failsafe`): two writable primaries. A member that still read the DCS
/// confirmed the cut-off leader over `POST /failsafe`, which extended the leader's deadline past
/// its lease, then took the lock and promoted while that leader ran. Fixed: a confirmation keeps
/// the member out of the race for `ttl` (`ha::failsafe::promised`, Patroni's `Failsafe.is_active`).
#[test]
fn regression_failsafe_seeds_978_and_2140_a_confirming_member_took_over_from_the_leader_it_confirmed(
) {
    assert_clean_with_failsafe(978);
    assert_clean_with_failsafe(2140);
}

/// Failsafe mode: nobody led after the heal. The leader that stepped down for a switchover left
/// the race to a member outside the `failsafe` key, which may not race. Fixed: such a member does
/// not count as one that can take over (`decide`, `SteppedDownForSwitchover`).
#[test]
fn regression_failsafe_seed_1283_stepped_down_leader_waited_for_a_member_outside_the_failsafe_key()
{
    assert_clean_with_failsafe(1283);
}

/// Failsafe mode drawn: nobody led after the heal. A switchover was requested while the leader,
/// cut off from the DCS, lost its lock without stepping down; it alone held the timeline it had
/// promoted to. It left the race to the others (the published last LSN, an older leader's, was
/// theirs too), and they, behind it, found it healthier and waited for it. Fixed in `decide`: a
/// member behind the former leader that would wait for it does not count as one that can take
/// over, so the healthiest member takes the lock back.
#[test]
fn regression_seed_21850_former_leader_and_members_behind_it_waited_for_each_other() {
    assert_clean(21850);
}

/// The same wait (failsafe mode drawn), found by the handshake work's 30,000-seed run before the
/// seed 21850 fix was merged: a leader that stepped down for a switchover left the race to a
/// member that deferred to it as the healthiest (no leader after the heal).
#[test]
fn regression_seeds_50100_and_54521_a_stepped_down_leader_and_a_member_deferring_to_it() {
    assert_clean(50100);
    assert_clean(54521);
}

/// Failsafe mode: two writable primaries. The leader wrote a `failsafe` key adding a member and
/// was cut off before its next read; its round asked the key of its last read (itself alone),
/// kept leading on "0 of 0 accepted", and the added member took the lock. Fixed: the runner (and
/// the simulation) put a written key into the last view.
#[test]
fn regression_failsafe_seed_6204_a_key_written_after_the_last_read_was_not_asked() {
    assert_clean_with_failsafe(6204);
}

/// Maintenance mode (drawn by the seeds since): a switchover request outlived the leader it named;
/// that member, reset by its watchdog and back as a replica, ran the whole unpaused decision
/// (a request involving it exempted it from the pause) and took the lock and promoted while
/// paused. Fixed in `decide` (`paused`): of a request, only its candidate may promote.
#[test]
fn regression_pause_seeds_379_and_3426_the_leader_a_request_named_promoted_while_paused() {
    assert_clean(379);
    assert_clean(3426);
}

/// Maintenance mode, a safety bug: the leader's host froze while paused, with the watchdog
/// disarmed (as Patroni does while paused); after the resume its lease, renewed without the
/// watchdog, expired, a member promoted, and the thawed primary accepted writes next to it
/// (`TwoWritable`). Fixed: the watchdog stays armed while paused (`decide`'s `with_watchdog`, the
/// runner's `publish`).
#[test]
fn regression_pause_seed_1656_a_leader_frozen_while_paused_had_no_watchdog_at_resume() {
    assert_clean(1656);
}

/// Maintenance mode stops automatic failover only because the members read `pause` from the DCS
/// `config` key: members that ignore it fail over while paused, and the invariant must see it.
#[test]
fn without_members_reading_pause_a_promotion_while_paused_is_found() {
    let opts = Options {
        members_read_pause: false,
        ..Options::default()
    };
    found_in_2000_seeds(
        opts,
        "no seed promoted while paused with members ignoring pause",
        |v| matches!(v, Violation::PromotedWhilePaused { .. }),
    );
}

/// A leader rides out a DCS outage shorter than its demotion window allows only because its DCS
/// calls wait up to their bound (`retry_timeout`, or the demotion deadline) for an answer: a
/// leader that stops its PostgreSQL at the first DCS call that finds the DCS unavailable is
/// disturbed by the short outages drawn after the heal, and the invariant must see it.
#[test]
fn without_a_leader_waiting_out_the_dcs_a_short_outage_disturbs_it() {
    let opts = Options {
        leader_waits_out_blips: false,
        ..Options::default()
    };
    found_in_2000_seeds(
        opts,
        "no seed disturbed a leader that demotes at its first failed DCS call",
        |v| matches!(v, Violation::LeaderDisturbedByShortOutage { .. }),
    );
}

/// A standby cluster's lock holder stays a replica of the remote only because `decide` reads the
/// `standby_cluster` section: members that do not see it promote the lock holder (a replica
/// holding the lock), and the invariant must see a writable member.
#[test]
fn without_members_reading_standby_cluster_a_standby_leader_is_promoted() {
    let opts = Options {
        members_read_standby: false,
        ..Options::default()
    };
    found_in_2000_seeds(
        opts,
        "no standby cluster promoted a member with members ignoring standby_cluster",
        |v| matches!(v, Violation::WritableInStandbyCluster { .. }),
    );
}

/// Two branches of one timeline number (`SwitchoverLostCommit`; found on a build before pause was
/// modelled, so replayed here without it). pg2, the candidate of a switchover, promoted to
/// timeline 3 at 28859; the DCS went down before its next loop and its deadline guard stopped it,
/// holding WAL on its timeline 3 up to 36344 and no `history` line. After the outage pg1, on
/// timeline 2 at the same point, took the lock and promoted to its own timeline 3 (PostgreSQL
/// names the new timeline after the history files it knows, and pg2's never left pg2). pg2 came
/// back as a replica of pg1 (same timeline number, less WAL) that never streamed; at a switchover
/// requested before pg1's first loop after its promotion, pg1 stepped down without writing its
/// line, and pg2 looked the healthiest by (timeline, LSN) and was promoted without pg1's
/// acknowledged commits. Fixed (`ha::promotion`, rows in `agent/src/ha/tests.rs`): each member
/// records its own promotion in its data directory; a leader writes its timeline's line before a
/// step-down and rewrites one naming another member; a member whose record says its timeline is
/// another promotion's branch of the number the line gives another leader is stopped and kept
/// stopped, and one whose line is not written yet waits for it. Writing the line before the
/// step-down also shifts this seed's schedule (pg1's first step-down wrote one), so the seed
/// passes on another path; the rows pin the rules.
#[test]
fn regression_seed_213686_another_promotions_timeline_3_was_promoted_at_a_switchover() {
    let r = run_seed_with(
        213686,
        false,
        Options {
            pause: false,
            ..Options::default()
        },
    );
    assert!(r.violation.is_none(), "{}", explain(&r));
}

/// Failsafe mode drawn: two writable primaries after the heal. pg1's agent was down while pg2 was
/// elected; pg2 wrote the `failsafe` key without pg1, and kept its primary through a whole-DCS
/// outage on pg0's confirmations, past its lease. A switchover to pg1 was requested before pg2
/// read the DCS again. After the heal pg1, the request's candidate, raced although the key does
/// not list it (a candidate may, sim seed 1283), skipped the health comparison that would have
/// seen pg2 answer "running as primary", took the expired lock and promoted while pg2 still ran
/// (fencing pg0, the last leader its agent had seen). Fixed in `decide` (rows `failsafe: a
/// switchover's candidate missing from the failsafe key ...` in `agent/src/ha/tests.rs`): a
/// candidate does not promote next to a member running as primary, and one missing from the
/// `failsafe` key waits until every member of the key answers (`ha::failsafe::unheard_member`).
#[test]
fn regression_seed_223394_switchover_candidate_outside_the_failsafe_key_promoted_next_to_the_failsafe_leader(
) {
    assert_clean(223394);
}

/// A lock holder still in recovery hands the lock over without promoting (`ha::handover`). Seed
/// 91625 (quorum mode): pg3 took the lock at 138.9 s but the reply to the renewal right before its
/// promotion was lost, so it held the lock in recovery when a switchover without a candidate was
/// requested; it released the lock without a promotion of its own and pg1 promoted (the
/// switchover's lost-commit check covers the hand-over, with its WAL end as the last LSN). It was
/// seed 7176 (a paused cluster, where the old rule could only promote first, which the pause cuts)
/// until the HA loop's cadence from each cycle's start (`ha::cadence`) moved every schedule; that
/// seed no longer reaches a hand-over. Run with leases that run out during a DCS outage
/// (`lease_refresh: false`, the simulation before the twelfth session): with the real servers'
/// refresh at the quorum's return no seed of the first 100,000 reaches a hand-over, and the seed
/// is kept for the rule, not for the lease model.
#[test]
fn regression_seed_91625_a_lock_holder_in_recovery_hands_the_lock_over_without_promoting() {
    let opts = Options {
        lease_refresh: false,
        ..Options::default()
    };
    let r = run_seed_with(91625, false, opts);
    assert!(r.violation.is_none(), "{}", explain(&r));
    assert!(r.recovery_handovers >= 1, "{}", explain(&r));
}

/// A switchover requested while its leader was cut off: no leader for 48 s after the faults
/// healed. pg0 led (quorum mode) and waited for its candidate pg1 to stream from it; pg1 and pg2
/// were cut off from the DCS, then the DCS went down and pg0 demoted on losing it, its last status
/// holding WAL (0/D1ED) only it had. After the heal the candidate waited for a member holding that
/// LSN (`MissingLastLsn`: pg0) and pg0 waited for the candidate (`WaitingForCandidate`) until the
/// bound, `ttl`, ran out two milliseconds after its third look, so the next cycle fell past the
/// deadline. Fixed in `decide`: a candidate that answers `cluster_unlocked` has looked at its WAL
/// after the old leader stopped and will not receive what it lacks, so nobody waits for it; pg0
/// takes the lock once its hold-off ends (24 s after the heal). With the wait put back the seed
/// fails again (checked by hand when the rule was written; the rule has no switch).
#[test]
fn regression_seed_16050_nobody_waits_for_a_switchover_candidate_that_cannot_catch_up() {
    assert_clean(16050);
}

/// Leases refreshed when the DCS gets its quorum back (`Options::lease_refresh`, as etcd's lessor
/// and ZooKeeper's session tracker do): no leader for 48 s after the heal. pg1 led (strict mode,
/// failsafe mode; pg2 tagged `nofailover`, pg0 stopped with a diverged timeline and no
/// `use_pg_rewind`); its failsafe round failed during the outage and it demoted (the lapse). With
/// the quorum back its lock lived on, it released it at its first read and held off for `ttl` from
/// that release, though no other member could take the lock. Fixed in `ha::lapsed::holding_off`:
/// without such a member the hold-off counts from the lapse itself (`LocalState::lapsed_at_ms`),
/// so pg1 led again 28.5 s after the heal. With `--no-lease-refresh` the lock had run out during
/// the outage and the hold-off counted from the lapse anyway.
#[test]
fn regression_seed_22134_a_lapsed_leader_nobody_else_can_replace_holds_off_from_its_lapse() {
    assert_clean(22134);
}
