//! The agent's loop: read state, call [`decide`], execute the actions, publish.
//!
//! This is the only place with `select!` (style.md: the loop is raft's `node.run`). One cycle:
//! 1. read the cluster from the DCS (failure → `view = None`);
//! 2. observe PostgreSQL (postmaster.pid, one status query, or pg_controldata when stopped);
//! 3. ask the other members' REST APIs when a leader race or a switchover needs them;
//! 4. [`decide`], log the reason when it changes;
//! 5. execute the actions in order, stopping at the first that fails or loses a race; background
//!    actions (bootstrap, clone, rewind, start) run as a task the next cycles wait for;
//! 6. publish `members/<name>` and the REST API snapshot.
//!
//! Cycles run every `loop_wait` seconds, and at once when the leader or failover key changes or a
//! task finishes. SIGTERM (the `shutdown` token) stops PostgreSQL, releases the lock if held and
//! revokes the DCS lease, so a replica takes over at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use praetor_config::{AgentSettings, Config, DynamicConfig};
use praetor_dcs::{
    Cluster, Dcs, DcsIdentity, Expect, HistoryEntry, KeyKind, MemberData, MemberState, Role, Status,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, NodeStatus};

mod hooks;
mod reload;
use crate::ha::{
    self, decide, needs_peers, Action, DataDir, HaConfig, LocalState, Now, Postgres, Running,
    StartAs, Task,
};
use crate::peers::fetch_peers;
use crate::postgres::instance::{SlotAdvance, SlotRow};

use crate::postgres::{Instance, InstanceSettings, ServerStatus};
pub use reload::ReloadSource;

/// Runs the agent for `config` until `shutdown` is cancelled (SIGTERM/SIGINT), then stops PostgreSQL,
/// releases the lock and leaves the DCS. Errors: the configuration is unusable, the REST port cannot
/// be bound, or a fatal condition (system identifier mismatch, failed bootstrap). Without a
/// configuration file to re-read, `POST /reload` only reloads PostgreSQL (see [`run_with`]).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, shutdown, None).await
}

/// [`run`], re-reading the configuration file of `reload` on SIGHUP, `POST /reload` and `ctl
/// reload` and applying what changed (see [`crate::reload`]).
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    reload: Option<ReloadSource>,
) -> anyhow::Result<()> {
    let settings = config.validate_agent()?;
    let version = check_server_version(&config, &settings).map_err(|e| anyhow!(e))?;
    if let Some(w) = &version.warning {
        tracing::warn!("{w}");
    }
    tracing::info!("PostgreSQL {} ({})", version.version, version.version.num());
    let mut dynamic = config.bootstrap.dcs.clone();
    for w in dynamic.adjust_timings() {
        tracing::warn!("bootstrap.dcs: {w}");
    }
    let pg = Arc::new(Instance::new(instance_settings(
        &config,
        &settings,
        version.version.major(),
    )));
    let identity = DcsIdentity {
        namespace: settings.namespace.clone(),
        scope: settings.scope.clone(),
        member: Some(settings.name.clone()),
        ttl_secs: dynamic.ttl,
        request_timeout_secs: dynamic.retry_timeout.max(1),
    };
    let Some(dcs) = open_dcs(
        &config,
        &settings.dcs,
        identity,
        dynamic.loop_wait,
        &shutdown,
    )
    .await
    .context("cannot open the DCS")?
    else {
        return Ok(());
    };
    let (dcs, metrics) = hooks::metered(dcs, &settings.scope, &settings.name);
    let listener = tokio::net::TcpListener::bind((
        settings.api_listen.local_bind_host().as_str(),
        settings.api_listen.port,
    ))
    .await
    .with_context(|| format!("cannot listen on restapi.listen {}", settings.api_listen))?;
    let (status_tx, status_rx) = watch::channel(Arc::new(NodeStatus {
        scope: settings.scope.clone(),
        name: settings.name.clone(),
        tags: config.tags.clone(),
        ttl: dynamic.ttl,
        ..Default::default()
    }));
    let api_shutdown = CancellationToken::new();
    let (commands_tx, commands) = tokio::sync::mpsc::channel(8);
    let (api_task, ops) = hooks::start_api(
        &config,
        listener,
        status_rx,
        commands_tx.clone(),
        dcs.clone(),
        metrics,
        None,
        pg.clone(),
        (settings.data_dir.clone(), settings.name.clone()),
        api_shutdown.clone(),
    )
    .await?;
    let callbacks =
        crate::callbacks::Callbacks::new(config.postgresql.callbacks.clone(), &settings.scope)
            .with_role_names(config.praetor.callback_role_names);
    let watchdog = crate::watchdog::Watchdog::new(&config.watchdog);
    let fence_timeout_ms = u64::from(
        config
            .praetor
            .fence_timeout_ms
            .unwrap_or(praetor_config::DEFAULT_FENCE_TIMEOUT_MS),
    );
    // The fence target of a replica whose agent restarted while the leader key was gone.
    let former_leader = crate::former_leader::load(&settings.data_dir, &settings.name);
    if let Some(f) = &former_leader {
        let l = &f.leader;
        tracing::info!(
            "former leader from the data directory: {} at {}:{} (timeline {:?})",
            l.member,
            l.host,
            l.port,
            f.timeline
        );
    }
    let (deadline_tx, deadline_rx) = watch::channel(None);
    let guard_failsafe = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let may_write = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let guard_stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let guard = tokio::spawn(deadline_guard(
        deadline_rx,
        pg.clone(),
        started,
        guard_failsafe.clone(),
        may_write.clone(),
        guard_stopped.clone(),
    ));
    let mut runner = Runner {
        settings,
        config,
        dcs,
        pg,
        dynamic,
        refused_config: None,
        won_initialize: false,
        lock_renewed_ms: None,
        task: None,
        failed_task: None,
        task_done: Arc::new(tokio::sync::Notify::new()),
        checkpoint_after_promote: Arc::new(std::sync::Mutex::new(None)),
        primary_start_began_ms: None,
        former_leader,
        unfenced: Default::default(),
        fencer: None,
        fence_timeout_ms,
        watchdog_refused: false,
        deadline_tx,
        guard_failsafe,
        may_write,
        guard_stopped,
        renewals_lapsed_ms: None,
        lapsed_at_ms: None,
        lapsed_lock_failures: 0,
        cycle_started_ms: 0,
        pre_renewal_ms: 0,
        overrunning: false,
        lapsed_lock_given_up: false,
        proxies_wait_since: None,
        switchover_wait_since: None,
        remote: None,
        remote_probed: None,
        last_role: None,
        pending_restart: Default::default(),
        slot_copy_at_ms: None,
        sync_catchup_lsn: 0,
        failsafe_active: false,
        dcs_call_failed: std::sync::atomic::AtomicBool::new(false),
        failsafe_asked_ms: None,
        member_seen: Default::default(),
        callbacks,
        restarting: false,
        reload_source: reload,
        api: reload::ApiServer {
            task: api_task,
            shutdown: api_shutdown,
            commands: commands_tx,
            restart_pending: false,
        },
        watchdog,
        status_tx,
        started,
        last_reason: String::new(),
        last_view: None,
        dcs_last_seen: None,
        ops,
    };
    let result = runner.run_loop(&shutdown, commands).await;
    guard.abort();
    runner.shut_down().await;
    runner.api.shutdown.cancel();
    let _ = runner.api.task.await;
    result
}

/// Reads the PostgreSQL version the agent would run (`postgres -V` of `postgresql.bin_dir`, and
/// `PG_VERSION` of the data directory when it holds a cluster) and refuses what Praetor does not
/// support (before 13, or a data directory of another major than the programs), before anything
/// touches the data directory. See [`crate::postgres::version`].
pub fn check_server_version(
    config: &Config,
    s: &AgentSettings,
) -> Result<crate::postgres::version::VersionCheck, String> {
    let bin_dir = config
        .postgresql
        .bin_dir
        .clone()
        .unwrap_or_else(default_bin_dir);
    crate::postgres::version::detect(&bin_dir, &s.data_dir)
}

fn instance_settings(config: &Config, s: &AgentSettings, pg_major: u32) -> InstanceSettings {
    let pg = &config.postgresql;
    InstanceSettings {
        pg_major,
        name: s.name.clone(),
        scope: s.scope.clone(),
        bin_dir: pg.bin_dir.clone().unwrap_or_else(default_bin_dir),
        data_dir: s.data_dir.clone(),
        listen: s.pg_listen.clone(),
        connect_address: s.pg_connect.clone(),
        superuser: s.superuser.clone(),
        replication: s.replication.clone(),
        rewind: pg.authentication.rewind.clone(),
        pgpass: pg
            .pgpass
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("pgpass.{}.{}", s.scope, s.name))),
        parameters: pg.parameters.clone(),
        pg_hba: pg.pg_hba.clone(),
        basebackup_args: basebackup_args(pg.basebackup.as_ref()),
        recovery_conf: pg.recovery_conf.clone(),
        use_unix_socket: pg.use_unix_socket,
        replica_methods: pg.replica_methods.clone(),
        ctl_timeout: Duration::from_secs(u64::from(pg.pg_ctl_timeout.unwrap_or(60))),
    }
}

/// PostgreSQL's programs: the directory of `postgres` on PATH, else the newest
/// /usr/lib/postgresql/<major>/bin (Debian's layout).
fn default_bin_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("postgres").is_file() && dir.join("pg_basebackup").is_file() {
                return dir;
            }
        }
    }
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort_unstable();
    PathBuf::from(format!(
        "/usr/lib/postgresql/{}/bin",
        majors.last().copied().unwrap_or(15)
    ))
}

/// `postgresql.basebackup` as pg_basebackup arguments: a list like initdb's (`- verbose`,
/// `- max-rate: 100M`) or a map (`max-rate: 100M`).
fn basebackup_args(v: Option<&serde_yaml::Value>) -> Vec<String> {
    let arg = |k: &str, v: &serde_yaml::Value| match v {
        serde_yaml::Value::String(s) => format!("--{k}={s}"),
        serde_yaml::Value::Number(n) => format!("--{k}={n}"),
        _ => format!("--{k}"),
    };
    match v {
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .flat_map(|i| match i {
                serde_yaml::Value::String(s) => vec![format!("--{s}")],
                serde_yaml::Value::Mapping(m) => m
                    .iter()
                    .filter_map(|(k, v)| Some(arg(k.as_str()?, v)))
                    .collect(),
                _ => vec![],
            })
            .collect(),
        Some(serde_yaml::Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| Some(arg(k.as_str()?, v)))
            .collect(),
        _ => vec![],
    }
}

trait BindHost {
    fn local_bind_host(&self) -> String;
}

impl BindHost for praetor_config::Address {
    /// The address to bind: `*` means all IPv4 interfaces.
    fn local_bind_host(&self) -> String {
        match self.host.as_str() {
            "*" | "" => "0.0.0.0".to_string(),
            h => h.to_string(),
        }
    }
}

struct RunningTask {
    kind: Task,
    /// The task starts PostgreSQL read-only ([`Action::starts_read_only`]).
    read_only: bool,
    /// On failure: the step that failed (a rewind's start fails as [`Task::Start`]) and why.
    handle: JoinHandle<Result<(), (Task, String)>>,
}

struct Runner {
    settings: AgentSettings,
    config: Config,
    dcs: Arc<dyn Dcs>,
    pg: Arc<Instance>,
    dynamic: DynamicConfig,
    /// The DCS `config` value last refused (its reason was logged once; `dynamic` stayed as it was).
    refused_config: Option<serde_json::Value>,
    won_initialize: bool,
    lock_renewed_ms: Option<u64>,
    /// Set by the deadline guard when it stopped PostgreSQL (taken, and cleared, at a cycle's
    /// start): a lapse of this member's renewals (see `renewals_lapsed_ms`).
    guard_stopped: Arc<std::sync::atomic::AtomicBool>,
    /// When this member's lock renewals last lapsed ([`ha::LocalState::renewals_lapsed_ms`]).
    renewals_lapsed_ms: Option<u64>,
    /// When the lapse itself happened ([`ha::LocalState::lapsed_at_ms`]); meaningful only while
    /// `renewals_lapsed_ms` is set.
    lapsed_at_ms: Option<u64>,
    /// Releases of the lock that failed in a row while lapsed
    /// ([`ha::LocalState::lapsed_lock_failures`]).
    lapsed_lock_failures: u32,
    /// When the current (or last) cycle of the HA loop started (monotonic ms, [`Runner::now`]).
    cycle_started_ms: u64,
    /// How long the last cycle that renewed or took the lock took from its start to that call
    /// (ms): the room a leader's last attempt leaves before its demotion deadline
    /// ([`ha::cadence::next_cycle`]).
    pre_renewal_ms: u64,
    /// The last cycle took longer than `loop_wait` ([`ha::cadence::NextCycle::overran`]): the
    /// warning is logged once per streak.
    overrunning: bool,
    /// Set once this member gave the lapsed lock up (a confirmed release or a dropped session) or
    /// read it not its own, cleared at a lapse and when a view shows the lock its own: while it is
    /// clear the lock may still live on this member's session, and a failed DCS read counts in
    /// [`Runner::lapsed_lock_failures`].
    lapsed_lock_given_up: bool,
    task: Option<RunningTask>,
    /// The last background task that failed, and when: the same task is not retried for a while.
    failed_task: Option<(Task, u64)>,
    task_done: Arc<tokio::sync::Notify>,
    /// After this member promoted: `false` while its CHECKPOINT runs, `true` once done (published as
    /// `checkpoint_after_promote`); `None` when it did not promote in this run.
    checkpoint_after_promote: Arc<std::sync::Mutex<Option<bool>>>,
    /// When the lock holder began restarting its stopped PostgreSQL as primary (monotonic ms).
    primary_start_began_ms: Option<u64>,
    /// The last leader seen other than this member, or a newer one the DCS `history` names (the
    /// primary to fence before promoting, see [`ha::former`]).
    former_leader: Option<ha::former::FormerLeader>,
    /// A former primary promoted over without being fenced (it did not answer): host and port, until
    /// the background fence proves it down (shared with that task).
    unfenced: Arc<std::sync::Mutex<Option<(String, u16)>>>,
    /// The background fence of `unfenced`, while it runs.
    fencer: Option<tokio::task::JoinHandle<()>>,
    /// `praetor.fence_timeout_ms`.
    fence_timeout_ms: u64,
    /// The last [`Action::ArmWatchdog`] failed (`required` mode).
    watchdog_refused: bool,
    /// The demotion deadline (monotonic ms) for the [`deadline_guard`] task; `None`: not leading.
    deadline_tx: watch::Sender<Option<u64>>,
    /// Whether `failsafe_mode` is on, for the deadline guard (which then leaves the deadline to the
    /// loop: a failsafe round that confirms the leader moves it, possibly only after a DCS request
    /// that hung until the deadline).
    guard_failsafe: Arc<std::sync::atomic::AtomicBool>,
    /// Whether PostgreSQL may accept writes ([`ha::may_accept_writes`]): set from each
    /// observation, and before a promotion or a start as primary is issued. The demotion deadline
    /// stops (the guard, the cycle's first check) and hurries (`bounded`) only such a PostgreSQL.
    may_write: Arc<std::sync::atomic::AtomicBool>,
    /// Since when (monotonic ms) this member waits for the proxies to leave this former leader.
    proxies_wait_since: Option<(String, u64)>,
    /// When the current switchover wait began (monotonic ms), for
    /// [`LocalState::switchover_wait_began_ms`].
    switchover_wait_since: Option<u64>,
    /// Standby cluster: the remote primary's timeline and history as last probed
    /// ([`LocalState::remote`]).
    remote: Option<ha::standby::RemoteTimeline>,
    /// When the remote was last probed.
    remote_probed: Option<Instant>,
    /// The role observed last cycle, to run `on_role_change` callbacks on transitions.
    last_role: Option<Role>,
    /// When each member was last seen in the DCS (monotonic ms), for `member_slots_ttl`.
    member_seen: std::collections::HashMap<String, u64>,
    /// The WAL position when `synchronous_standby_names` last changed (bytes).
    sync_catchup_lsn: u64,
    /// The last loop ran without the DCS and every failsafe member confirmed this leader.
    failsafe_active: bool,
    /// A DCS call failed (error or bound reached) since the start of this cycle: with failsafe
    /// mode on, the next cycle asks the members before the start-of-cycle deadline stop (see
    /// [`ha::past_demote_deadline`]).
    dcs_call_failed: std::sync::atomic::AtomicBool,
    /// Monotonic ms when the last failsafe confirmation round began (see `failsafe_check`).
    failsafe_asked_ms: Option<u64>,
    /// Monotonic ms when this replica last began copying permanent logical slots from the leader
    /// (before 17), for `decide`'s pacing ([`LocalState::slot_copy_at_ms`]).
    slot_copy_at_ms: Option<u64>,
    /// Parameters waiting for a restart: name → (running value, configured value).
    pending_restart: std::collections::BTreeMap<String, (String, String)>,
    callbacks: crate::callbacks::Callbacks,
    /// A restart on request is under way: its start runs `on_restart`, not `on_start`.
    restarting: bool,
    /// The configuration file to re-read on SIGHUP and `POST /reload`, if any.
    reload_source: Option<ReloadSource>,
    /// The REST API server (served again when a reload changes `restapi`).
    api: reload::ApiServer,
    /// The watchdog, armed while this member leads.
    watchdog: crate::watchdog::Watchdog,
    status_tx: watch::Sender<Arc<NodeStatus>>,
    started: Instant,
    last_reason: String,
    last_view: Option<Arc<Cluster>>,
    dcs_last_seen: Option<i64>,
    /// The operator surface's state (metrics, scheduled restart, systemd notification).
    ops: hooks::Ops,
}

/// What the cycle saw of the local node.
struct Observation {
    data: Option<DataDir>,
    postgres: Postgres,
    server: Option<ServerStatus>,
    /// The data directory's promotion record ([`ha::Promotion`]), read by [`Runner::observe`].
    promoted: Option<ha::Promotion>,
}

/// How long a leader keeps making the standbys it just named synchronous reply, so that the
/// commits waiting for synchronous replication are released at once
/// ([`Instance::release_synchronous_waiters`]).
const SYNC_RELEASE_WITHIN: Duration = Duration::from_secs(2);

/// The least time a leader's DCS call gets once its demotion deadline is (nearly) reached
/// ([`ha::cadence::LAST_ATTEMPT_MS`]).
const LAST_ATTEMPT: Duration = Duration::from_millis(ha::cadence::LAST_ATTEMPT_MS);

impl Runner {
    fn now(&self) -> Now {
        Now {
            mono_ms: self.started.elapsed().as_millis() as u64,
            unix_secs: time::OffsetDateTime::now_utc().unix_timestamp(),
        }
    }

    /// When this member last accepted a leader's `POST /failsafe` (the API keeps the contact), in
    /// this runner's monotonic ms (see [`LocalState::failsafe_accepted_ms`]); `None`: never.
    fn failsafe_accepted_ms(&self) -> Option<u64> {
        let contact = self
            .ops
            .failsafe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.at)?;
        // A contact from before this runner started (taken back from the data directory,
        // `failsafe_record`) counts from its start: a longer promise, the safe side.
        Some(
            contact
                .checked_duration_since(self.started)
                .map_or(0, |d| d.as_millis() as u64),
        )
    }

    /// The monotonic ms by which this member, believing it leads, must have demoted if it cannot
    /// renew its lock (see [`ha::demote_deadline_ms`]); `None` when it does not lead.
    fn demote_deadline_ms(&self) -> Option<u64> {
        ha::demote_deadline_ms(
            self.lock_renewed_ms,
            &self.dynamic,
            self.watchdog.timeout_secs(),
        )
    }

    /// The watchdog for `decide`: off, armed, not armed, or refused by the last arming.
    fn watchdog_state(&self) -> ha::WatchdogState {
        if self.config.watchdog.mode == praetor_config::WatchdogMode::Off {
            ha::WatchdogState::Off
        } else if self.watchdog.is_active() {
            ha::WatchdogState::Armed
        } else if self.watchdog_refused {
            ha::WatchdogState::Refused
        } else {
            ha::WatchdogState::NotArmed
        }
    }

    /// This member's renewals lapsed now (`ha::LocalState::renewals_lapsed_ms`): it held the lock,
    /// which may still live on its session until it gives it up.
    fn lapse(&mut self) {
        self.renewals_lapsed_ms = Some(self.now().mono_ms);
        self.lapsed_at_ms = self.renewals_lapsed_ms;
        self.lapsed_lock_given_up = false;
    }

    /// Records the last lock renewal (`None`: not leading) and hands the resulting demotion deadline
    /// to the deadline guard at once (see [`deadline_guard`]).
    fn set_lock_renewed(&mut self, at: Option<u64>) {
        self.lock_renewed_ms = at;
        self.publish_deadline();
    }

    /// Hands the current demotion deadline to the deadline guard (it moves with a renewal, a change
    /// of `loop_wait`/`retry_timeout`, or the watchdog being armed).
    fn publish_deadline(&self) {
        let deadline = self.demote_deadline_ms();
        self.deadline_tx.send_if_modified(|d| {
            let changed = *d != deadline;
            *d = deadline;
            changed
        });
        self.guard_failsafe.store(
            self.dynamic.failsafe_mode,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The time left until the demotion deadline, at least [`LAST_ATTEMPT`]; `None` when not
    /// leading.
    fn until_demote_deadline(&self) -> Option<Duration> {
        let deadline = self.demote_deadline_ms()?;
        let left = Duration::from_millis(deadline.saturating_sub(self.now().mono_ms));
        Some(left.max(LAST_ATTEMPT))
    }

    /// Bounds a DCS call by `retry_timeout` (a backend call may make several requests), and a
    /// leader's call also by its demotion deadline: a request hanging on a DCS member that died
    /// must not carry the decision to demote past it.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, praetor_dcs::DcsError>>,
    ) -> Result<T, praetor_dcs::DcsError> {
        let mut limit = Duration::from_secs(u64::from(self.dynamic.retry_timeout.max(1)));
        // A lock holder still in recovery has no demotion to hurry to: its renewal gets the whole
        // retry_timeout (on a DCS slower than the time left, the renewal right before its
        // promotion would otherwise always time out).
        if let Some(left) = self.until_demote_deadline().filter(|_| self.may_write()) {
            limit = limit.min(left);
        }
        let result = tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
            Err(praetor_dcs::DcsError::Unavailable(format!(
                "no answer within {limit:?} (retry_timeout, or the leader's demotion deadline)"
            )))
        });
        if result.is_err() {
            self.dcs_call_failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// See [`Runner::may_write`].
    fn may_write(&self) -> bool {
        self.may_write.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn me(&self) -> &str {
        &self.settings.name
    }

    async fn run_loop(
        &mut self,
        shutdown: &CancellationToken,
        mut commands: tokio::sync::mpsc::Receiver<api::CommandRequest>,
    ) -> anyhow::Result<()> {
        let mut events = self.dcs.watch();
        let hup = self.reload_source.as_ref().map(|s| s.hup.clone());
        loop {
            let started = Instant::now();
            self.cycle_started_ms = self.now().mono_ms;
            self.cycle().await?;
            self.after_cycle(started);
            self.publish_deadline();
            // On a cadence from the cycle's start, and a leader's last attempt in time for its
            // demotion deadline (`ha::cadence`).
            let ended_ms = self.now().mono_ms;
            let next = ha::cadence::next_cycle(
                ha::cadence::Cycle {
                    started_ms: self.cycle_started_ms,
                    ended_ms,
                },
                self.dynamic.loop_wait,
                self.demote_deadline_ms(),
                self.pre_renewal_ms,
            );
            // Once per streak: through a DCS outage every cycle waits `retry_timeout` for its read.
            if next.overran && !self.overrunning {
                tracing::warn!(
                    took_ms = ended_ms - self.cycle_started_ms,
                    loop_wait = self.dynamic.loop_wait,
                    "loop time exceeded: starting the next cycle at once (logged again after a cycle within loop_wait)"
                );
            }
            self.overrunning = next.overran;
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(next.at_ms - ended_ms);
            let task_done = self.task_done.clone();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = task_done.notified() => break,
                    Some(req) = commands.recv() => {
                        let answer = self.command(req.command).await;
                        let _ = req.reply.send(answer);
                        self.restart_api_if_pending().await;
                        break;
                    }
                    _ = async {
                        match &hup {
                            Some(h) => h.notified().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        if self.task.is_some() {
                            tracing::warn!("SIGHUP: a background task is running; reloading the configuration file now, postgres at the next cycle");
                        }
                        // An invalid file was logged with its key path by reload_config.
                        if let Err(api::CommandError::Failed(e)) = self.reload_config("SIGHUP").await {
                            tracing::warn!("SIGHUP: {e}");
                        }
                        self.restart_api_if_pending().await;
                        break;
                    }
                    ev = events.recv() => match ev {
                        Ok(ev) if wakes_loop(&ev.key) => break,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            events = self.dcs.watch();
                        }
                    },
                }
            }
        }
    }

    async fn cycle(&mut self) -> anyhow::Result<()> {
        let dcs_failed = self
            .dcs_call_failed
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        if self
            .guard_stopped
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.lapse();
        }
        if ha::past_demote_deadline(
            self.lock_renewed_ms,
            &self.dynamic,
            self.watchdog.timeout_secs(),
            self.failsafe_active || (self.dynamic.failsafe_mode && dcs_failed),
            self.now().mono_ms,
        ) {
            if self.may_write() {
                self.lapse();
                self.stop_overdue_primary().await;
            } else {
                // Still in recovery: nothing to stop (see ha::may_accept_writes). It no longer
                // counts itself the lock holder; a promotion starts with a renewal.
                tracing::warn!("past the demotion deadline without a lock renewal; postgres is still in recovery (no promotion issued), so it keeps running");
                self.set_lock_renewed(None);
            }
        }
        self.collect_task().await?;
        let view = match self.bounded(self.dcs.load()).await {
            Ok(c) => {
                self.dcs_last_seen = Some(self.now().unix_secs);
                self.apply_dynamic_config(&c).await;
                Some(Arc::new(c))
            }
            Err(e) => {
                tracing::warn!("cannot read the DCS: {e}");
                if self.renewals_lapsed_ms.is_some() && !self.lapsed_lock_given_up {
                    // The lock may still live on this session: counted for `ha::lapsed`'s
                    // session drop (`drops_unseen_lock`).
                    self.lapsed_lock_failures += 1;
                }
                None
            }
        };
        if let Some(v) = &view {
            self.last_view = Some(v.clone());
            let holds = v.leader.as_ref().is_some_and(|l| l.name == self.me());
            // No lock of its own left to release, or the lock still there to give up.
            self.lapsed_lock_given_up = !holds;
            if !holds {
                self.set_lock_renewed(None);
                self.primary_start_began_ms = None;
                self.lapsed_lock_failures = 0;
            }
            if let Some(l) = v.leader.as_ref().filter(|l| l.name != self.me()) {
                // Another member leads: a hold-off after lapsed renewals has done its job.
                self.renewals_lapsed_ms = None;
                if let Some(up) = ha::upstream_of(v, &l.name) {
                    let timeline = v.member(&l.name).and_then(|m| m.data.timeline);
                    self.remember_former_leader(ha::former::FormerLeader {
                        leader: up,
                        timeline,
                    });
                }
            } else if let Some(newer) =
                ha::former::newer_in_dcs(v, self.me(), self.former_leader.as_ref())
            {
                tracing::info!(
                    "the DCS history names a newer former leader than the one remembered: {} (timeline {:?})",
                    newer.leader.member,
                    newer.timeline
                );
                self.remember_former_leader(newer);
            }
        }
        let mut obs = self.observe().await;
        self.apply_parameters(&obs).await;
        let Some(data) = obs.data.clone() else {
            self.publish(view.as_deref(), &obs).await;
            return Ok(());
        };
        self.probe_remote(&obs.postgres).await;
        let peers = if needs_peers(view.as_deref(), self.me()) {
            let timeout = Duration::from_secs(u64::from(self.dynamic.retry_timeout.clamp(1, 2)));
            Some(
                fetch_peers(
                    view.as_deref().expect("needs_peers implies a view"),
                    self.me(),
                    self.dynamic.failsafe_mode,
                    &self.ops.client.with_timeout(timeout),
                )
                .await,
            )
        } else {
            None
        };
        let failsafe_confirmed = self.failsafe_check(view.as_deref(), &obs).await;
        let unfenced = self
            .unfenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.failsafe_active = failsafe_confirmed == Some(true);
        let local = LocalState {
            data,
            postgres: obs.postgres.clone(),
            task: self.task.as_ref().map(|t| t.kind),
            won_initialize: self.won_initialize,
            lock_renewed_ms: self.lock_renewed_ms,
            watchdog_timeout_secs: self.watchdog.timeout_secs(),
            watchdog: self.watchdog_state(),
            peers,
            primary_start_began_ms: self.primary_start_began_ms,
            former_leader: self.former_leader.as_ref().map(|f| f.leader.clone()),
            sync_catchup_lsn: self.sync_catchup_lsn,
            failsafe_confirmed,
            failed_task: self.failed_task,
            unfenced,
            proxies_wait_began_ms: self
                .proxies_wait_since
                .as_ref()
                .filter(|(f, _)| {
                    self.former_leader
                        .as_ref()
                        .is_some_and(|l| l.leader.member == *f)
                })
                .map(|(_, t)| *t),
            granted_ttl: self.dcs.granted_ttl(),
            retained_members: self.retained_members(view.as_deref()),
            remote: self.remote.clone(),
            remote_recovery: self.pg.remote_recovery_written(),
            switchover_wait_began_ms: self.switchover_wait_since,
            slot_copy_at_ms: self.slot_copy_at_ms,
            failsafe_accepted_ms: self.failsafe_accepted_ms(),
            starting_read_only: self.starting_read_only(),
            promoted: obs.promoted.clone(),
            renewals_lapsed_ms: self.renewals_lapsed_ms,
            lapsed_at_ms: self.renewals_lapsed_ms.and(self.lapsed_at_ms),
            lapsed_lock_failures: self.lapsed_lock_failures,
            rewind_damage: self.rewind_damage(&obs),
        };
        let cfg = HaConfig {
            name: self.settings.name.clone(),
            tags: self.config.tags.clone(),
            dynamic: self.dynamic.clone(),
            remove_data_on_diverged: self
                .config
                .postgresql
                .remove_data_directory_on_diverged_timelines,
            fence_timeout_ms: self.fence_timeout_ms,
            remove_data_on_rewind_failure: self
                .config
                .postgresql
                .remove_data_directory_on_rewind_failure,
            clone_without_leader: self
                .config
                .postgresql
                .replica_methods
                .iter()
                .any(|m| m.works_without_leader()),
            pg_major: self.pg.settings().pg_major,
        };
        let d = decide(view.as_deref(), &local, &cfg, self.now());
        self.switchover_wait_since = if d.reason.is_switchover_wait() {
            self.switchover_wait_since.or(Some(self.now().mono_ms))
        } else {
            None
        };
        if !d.promotes() {
            // No longer the candidate: a later candidacy waits for the proxies afresh.
            self.proxies_wait_since = None;
        }
        if d.reason == ha::Reason::DemotingDcsInaccessible {
            // A leader past its deadline without a renewal demotes: its renewals lapsed.
            self.lapse();
        }
        let mut message = d.reason.to_string();
        if !d.actions.is_empty() {
            tracing::debug!(actions = ?d.actions, "executing");
            let lapsed_release = matches!(
                d.reason,
                ha::Reason::ReleasingLockRenewalsLapsed
                    | ha::Reason::DroppingDcsSessionReleasesFailed { .. }
                    | ha::Reason::DroppingDcsSessionDcsUnreadable { .. }
            );
            match self.execute(d.actions, view.as_deref(), &obs).await? {
                Outcome::Done if lapsed_release => {
                    // The DCS confirmed the release (or found the lock gone), or the session the
                    // lock lived on was given up: the hold-off counts from here, not from a lapse
                    // it may have outlived (`ha::lapsed`).
                    self.renewals_lapsed_ms = Some(self.now().mono_ms);
                    self.lapsed_lock_given_up = true;
                }
                Outcome::Done => {}
                Outcome::LostLockRace => {
                    message = "following new leader after trying and failing to obtain lock".into()
                }
                Outcome::Stopped(what) => message = format!("{message} (stopped at {what})"),
            }
            obs = self.observe().await;
        }
        // Once per loop, in Patroni's words: operators grep for "no action. I am (pg1), ...".
        // A state only an operator can end is an error, logged as such once per change.
        if d.reason.needs_operator() && message != self.last_reason {
            tracing::error!("{message}");
        } else {
            tracing::info!("{message}");
        }
        self.last_reason = message;
        self.publish(view.as_deref(), &obs).await;
        Ok(())
    }

    /// A planned switchover is about to stop this primary: give the transactions in flight a
    /// moment to end first. The proxies start no new transaction on a leader the `failover` key
    /// asks to step down (they hold their clients at the transaction boundary and move them to the
    /// new leader), so what runs now ends soon, and the fast stop that follows interrupts no
    /// transaction of theirs. Bounded by `max_ms` from `decide` ([`ha::drain_budget_ms`]: at most 5 s, and half the time left before the
    /// demotion deadline (the lease must outlast the stop); clients connected directly may keep it
    /// waiting that long. Errors (the server does not answer) end the wait: the stop goes ahead.
    async fn drain_transactions(&mut self, budget: u64) {
        /// How often the wait counts the transactions in progress.
        const DRAIN_POLL: Duration = Duration::from_millis(20);
        let until = Instant::now() + Duration::from_millis(budget);
        loop {
            match self.pg.transactions_in_progress().await {
                Ok(0) => {
                    tracing::info!("switchover: no transaction in progress; stopping postgres");
                    return;
                }
                Ok(n) if Instant::now() >= until => {
                    let detail = self
                        .pg
                        .transactions_in_progress_detail()
                        .await
                        .unwrap_or_default();
                    tracing::info!(
                        transactions = n,
                        %detail,
                        "switchover: transactions still in progress after {budget} ms; stopping postgres (they roll back)"
                    );
                    return;
                }
                Ok(_) => tokio::time::sleep(DRAIN_POLL).await,
                Err(e) => {
                    tracing::warn!(error = %e, "switchover: cannot count transactions in progress; stopping postgres");
                    return;
                }
            }
        }
    }

    /// This member thought it led but its demotion deadline passed before it could act (it was
    /// frozen, or the DCS stalled a call): stop PostgreSQL at once, before any DCS call (see
    /// [`ha::past_demote_deadline`]). It no longer counts itself the lock holder; should the DCS show
    /// that it still is, the next decision starts PostgreSQL again as primary.
    async fn stop_overdue_primary(&mut self) {
        self.set_lock_renewed(None);
        if self.pg.postmaster().is_none() {
            return;
        }
        tracing::error!(
            "past the demotion deadline (loop_wait + retry_timeout after the last lock renewal; was this process frozen?): stopping postgres before anything else"
        );
        self.set_api_state(MemberState::Stopping);
        match self.pg.stop(ha::StopMode::Immediate, None).await {
            Ok(()) => self.set_api_state(MemberState::Stopped),
            Err(e) => tracing::error!("cannot stop postgres: {e}"),
        }
        self.disable_watchdog();
    }

    /// Carries out a REST API command between cycles (the next cycle runs at once after it).
    async fn command(&mut self, command: api::AgentCommand) -> Result<String, api::CommandError> {
        if self.task.is_some() {
            return Err("a background task is running (bootstrap, clone, rewind or start)".into());
        }
        let holds = self
            .last_view
            .as_ref()
            .and_then(|v| v.leader.as_ref())
            .is_some_and(|l| l.name == self.me());
        match command {
            api::AgentCommand::Reload => self.reload_config("POST /reload").await,
            api::AgentCommand::Restart => self.restart_command().await.map_err(Into::into),
            api::AgentCommand::Reinitialize { force, .. } => {
                // The last view may be a loop old: decide on a fresh DCS read and on PostgreSQL as
                // it runs now, right before removing anything.
                let fresh = match self.bounded(self.dcs.load()).await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::warn!("reinitialize: cannot read the DCS: {e}");
                        None
                    }
                };
                let live = self.observe().await.postgres;
                let standby_signal = self.pg.settings().data_dir.join("standby.signal").exists();
                ha::guards::reinitialize(
                    fresh.as_ref(),
                    self.me(),
                    holds || self.lock_renewed_ms.is_some(),
                    &live,
                    standby_signal,
                    force,
                )
                .map_err(|why| {
                    tracing::warn!("reinitialize refused: {why}");
                    api::CommandError::Refused(why)
                })?;
                if self.pg.postmaster().is_some() {
                    self.pg
                        .stop(ha::StopMode::Immediate, None)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let dir = self.pg.settings().data_dir.clone();
                // The operator asked for it: the one case where the agent removes a data directory.
                tracing::warn!("reinitialize requested: removing {}", dir.display());
                std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                self.pg.clear_rewind_damage();
                Ok("reinitialize started".into())
            }
        }
    }

    /// Picks up a finished background task's result.
    async fn collect_task(&mut self) -> anyhow::Result<()> {
        let Some(t) = self.task.as_ref() else {
            return Ok(());
        };
        if !t.handle.is_finished() {
            return Ok(());
        }
        let t = self.task.take().expect("checked above");
        let result = t
            .handle
            .await
            .unwrap_or_else(|e| Err((t.kind, format!("task panicked: {e}"))));
        match result {
            Ok(()) => {
                tracing::info!(task = ?t.kind, "finished");
                self.failed_task = None;
                if t.kind != Task::CrashRecovery {
                    let role = if self.pg.status().await.is_ok_and(|s| !s.in_recovery) {
                        Role::Primary
                    } else {
                        Role::Replica
                    };
                    let event = if std::mem::take(&mut self.restarting) && t.kind == Task::Start {
                        crate::callbacks::Event::OnRestart
                    } else {
                        crate::callbacks::Event::OnStart
                    };
                    // A former primary started as a replica (demotion, rejoin) runs on_role_change
                    // (fired by `publish` on the role change), not on_start: Patroni's `follow`
                    // starts it with callbacks blocked and runs on_role_change.
                    let role_change = self.last_role.is_some_and(|r| r != role);
                    if event == crate::callbacks::Event::OnRestart || !role_change {
                        self.callbacks.fire(event, role);
                    }
                }
            }
            Err((_, e)) if t.kind == Task::Bootstrap => {
                // Give the race back so a fixed configuration (or another node) can bootstrap.
                if let Err(ce) = self.dcs.cancel_initialize("").await {
                    tracing::warn!("cannot remove the initialize key: {ce}");
                }
                self.won_initialize = false;
                bail!("bootstrap failed: {e}");
            }
            Err((step, e)) => {
                self.restarting = false;
                tracing::error!(task = ?t.kind, ?step, "failed: {e}");
                self.failed_task = Some((step, self.now().mono_ms));
            }
        }
        Ok(())
    }

    async fn apply_dynamic_config(&mut self, view: &Cluster) {
        let Some(raw) = &view.config else { return };
        // from_json refuses what must never be applied (recovery settings in parameters, timings
        // out of range...), whoever wrote the key: keep the last good configuration.
        let mut parsed = match DynamicConfig::from_json(&raw.value) {
            Ok(d) => d,
            Err(e) => {
                if self.refused_config.as_ref() != Some(&raw.value) {
                    tracing::error!(
                        "not applying the DCS config key, keeping the last good configuration: {e}"
                    );
                    self.refused_config = Some(raw.value.clone());
                }
                return;
            }
        };
        self.refused_config = None;
        let warnings = parsed.adjust_timings();
        if parsed != self.dynamic {
            for w in warnings {
                tracing::warn!("config: {w}");
            }
            if self.watchdog.is_active()
                && (parsed.ttl != self.dynamic.ttl || parsed.loop_wait != self.dynamic.loop_wait)
            {
                if let Err(e) = self.watchdog.activate(parsed.ttl, parsed.loop_wait) {
                    tracing::warn!("watchdog: {e}");
                }
            }
            if parsed.ttl != self.dynamic.ttl {
                if let Err(e) = self.dcs.set_ttl(parsed.ttl).await {
                    tracing::warn!("cannot change the DCS lease TTL: {e}");
                }
            }
            tracing::info!("dynamic configuration changed");
            self.dynamic = parsed;
        }
    }

    /// Whether the background task still running starts PostgreSQL read-only (see
    /// [`LocalState::starting_read_only`]).
    fn starting_read_only(&self) -> bool {
        self.task.as_ref().is_some_and(|t| t.read_only)
    }

    /// Observes PostgreSQL and records whether it may accept writes (see [`Runner::may_write`]).
    async fn observe(&self) -> Observation {
        let mut obs = self.observe_node().await;
        if matches!(obs.data, Some(DataDir::Initialized { .. })) {
            obs.promoted = self.pg.promotion_record();
        }
        self.may_write.store(
            ha::may_accept_writes(&obs.postgres, false, self.starting_read_only()),
            std::sync::atomic::Ordering::SeqCst,
        );
        obs
    }

    async fn observe_node(&self) -> Observation {
        if self.task.is_some() {
            return Observation {
                data: Some(DataDir::Empty),
                postgres: Postgres::Starting,
                server: None,
                promoted: None,
            };
        }
        if self.pg.postmaster().is_some() {
            return match self.pg.status().await {
                Ok(s) => Observation {
                    data: Some(DataDir::Initialized {
                        sysid: s.system_identifier.clone(),
                    }),
                    postgres: Postgres::Running(Running {
                        is_primary: !s.in_recovery,
                        timeline: s.timeline,
                        wal_position: s.wal_position(),
                        upstream: s.upstream.clone(),
                        standbys: s
                            .replication
                            .iter()
                            .map(|r| ha::sync::Standby {
                                name: r.application_name.clone(),
                                state: r.state.clone(),
                                sync_state: r.sync_state.clone(),
                                flush_lsn: r.flush_lsn,
                            })
                            .collect(),
                        sync_standby_names: s.sync_standby_names.clone(),
                        slots: s.slots.iter().map(SlotRow::to_slot).collect(),
                    }),
                    server: Some(s),
                    promoted: None,
                },
                Err(e) => {
                    tracing::debug!("postgres is not accepting queries: {e}");
                    let data = match self.pg.data_dir_state().await {
                        Ok(d) => Some(d),
                        Err(e) => {
                            tracing::warn!("{e}");
                            None
                        }
                    };
                    Observation {
                        data,
                        postgres: Postgres::Starting,
                        server: None,
                        promoted: None,
                    }
                }
            };
        }
        match self.pg.data_dir_state().await {
            Ok(DataDir::Empty) => {
                // Removed (to clone again, `ctl reinit`, or by hand): a damage pg_rewind left in
                // the former data directory no longer applies.
                self.pg.clear_rewind_damage();
                Observation {
                    data: Some(DataDir::Empty),
                    postgres: Postgres::Stopped { control: None },
                    server: None,
                    promoted: None,
                }
            }
            Ok(d) => {
                let control = self.pg.controldata().await.ok().map(|(_, c)| c);
                Observation {
                    data: Some(d),
                    postgres: Postgres::Stopped { control },
                    server: None,
                    promoted: None,
                }
            }
            Err(e) => {
                if self.last_reason != e.to_string() {
                    tracing::error!("cannot use the data directory: {e}");
                }
                Observation {
                    data: None,
                    postgres: Postgres::Stopped { control: None },
                    server: None,
                    promoted: None,
                }
            }
        }
    }

    /// Executes `actions` in order; stops at the first that fails or loses a race.
    async fn execute(
        &mut self,
        actions: Vec<Action>,
        view: Option<&Cluster>,
        obs: &Observation,
    ) -> anyhow::Result<Outcome> {
        for action in actions {
            let background = action.is_background();
            let lock_race = action == Action::AcquireLeader;
            let name = format!("{action:?}");
            match self.execute_one(action, view, obs).await {
                Ok(true) => {}
                Ok(false) if background => return Ok(Outcome::Done),
                Ok(false) if lock_race => return Ok(Outcome::LostLockRace),
                Ok(false) => return Ok(Outcome::Stopped(format!("{name}: not done"))),
                Err(e) if e.is::<Fatal>() => return Err(e),
                Err(e) => {
                    tracing::error!("{name} failed: {e:#}");
                    return Ok(Outcome::Stopped(format!("{name}: failed")));
                }
            }
        }
        Ok(Outcome::Done)
    }

    /// Executes one action. `Ok(false)`: not done (lost race, background task started, backoff).
    async fn execute_one(
        &mut self,
        action: Action,
        view: Option<&Cluster>,
        obs: &Observation,
    ) -> anyhow::Result<bool> {
        let now_ms = self.now().mono_ms;
        if let Some(kind) = action.task() {
            if matches!(action, Action::Start(StartAs::Primary) | Action::Bootstrap) {
                self.may_write
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if action == Action::Start(StartAs::Primary) && self.primary_start_began_ms.is_none() {
                self.primary_start_began_ms = Some(now_ms);
            }
            self.spawn_task(kind, action);
            return Ok(false);
        }
        match action {
            Action::RaceInitialize => {
                let won = self.dcs.create_initialize("").await?;
                if won {
                    self.won_initialize = true;
                    let seed = serde_json::to_value(&self.config.bootstrap.dcs)?;
                    match self.dcs.set_config(&seed, Expect::Absent).await {
                        Ok(()) => {}
                        Err(e) if e.is_cas_conflict() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(won)
            }
            Action::CreateInitialize { sysid } => Ok(self.dcs.create_initialize(&sysid).await?),
            Action::PublishInitialize { sysid } => {
                self.dcs.update_initialize("", &sysid).await?;
                self.won_initialize = false;
                Ok(true)
            }
            Action::ArmWatchdog => {
                let (ttl, loop_wait) = (self.dynamic.ttl, self.dynamic.loop_wait);
                let armed = self.watchdog.may_take_lock(ttl, loop_wait);
                if !armed {
                    tracing::warn!("not taking or keeping the leader lock: the watchdog could not be activated");
                }
                self.watchdog_refused = !armed;
                Ok(armed)
            }
            Action::AcquireLeader => {
                self.pre_renewal_ms = now_ms.saturating_sub(self.cycle_started_ms);
                let got = self.bounded(self.dcs.acquire_leader()).await?;
                if got {
                    // A lock taken anew: a lapse before it is over (`ha::lapsed`).
                    self.renewals_lapsed_ms = None;
                    self.lapsed_lock_failures = 0;
                    self.set_lock_renewed(Some(now_ms));
                    tracing::info!("acquired the leader lock");
                    if let Err(e) = self.watchdog.keepalive() {
                        tracing::warn!("watchdog keepalive failed: {e}");
                    }
                }
                Ok(got)
            }
            Action::RenewLeader => {
                self.pre_renewal_ms = now_ms.saturating_sub(self.cycle_started_ms);
                let kept = self.bounded(self.dcs.renew_leader()).await?;
                if kept {
                    if let Err(e) = self.watchdog.keepalive() {
                        tracing::warn!("watchdog keepalive failed: {e}");
                    }
                }
                self.set_lock_renewed(kept.then_some(now_ms));
                if !kept {
                    tracing::warn!("lost the leader lock");
                }
                Ok(kept)
            }
            Action::ReleaseLeader => {
                let released = self.bounded(self.dcs.release_leader()).await;
                self.set_lock_renewed(None);
                if released.is_err() && self.renewals_lapsed_ms.is_some() {
                    // Counted for `ha::lapsed`: too many in a row and the session goes instead.
                    self.lapsed_lock_failures += 1;
                } else {
                    self.lapsed_lock_failures = 0;
                }
                Ok(released?)
            }
            Action::DropDcsSession => {
                // Given up whatever the answer (`Dcs::drop_session`): the count starts again on
                // the next session.
                self.lapsed_lock_failures = 0;
                self.set_lock_renewed(None);
                if let Err(e) = self.bounded(self.dcs.drop_session()).await {
                    tracing::warn!(
                        "the DCS did not confirm the end of my session ({e}); it was given up and expires by itself"
                    );
                }
                Ok(true)
            }
            Action::Promote { within_ms } => {
                // Writable from here on for the deadline guard, before the check below: a guard
                // that fires after this store stops the promoted primary; one that fired before
                // it fired at or before the deadline, which the check then sees as passed.
                self.may_write
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                // The window is decide()'s (the renewal right before this action); no renewal
                // known means none.
                if self
                    .lock_renewed_ms
                    .is_none_or(|at| self.now().mono_ms >= at + within_ms)
                {
                    tracing::warn!("not promoting: more than {within_ms} ms since the lock renewal right before (the renewal was slow, or this process was frozen)");
                    return Ok(false);
                }
                // Recorded before the promotion: a member frozen right after it still knows, back
                // as a replica, that it created that timeline (`ha::promotion`).
                if let Postgres::Running(r) = &obs.postgres {
                    let record =
                        self.pg
                            .write_promotion_record(self.me(), r.timeline, r.wal_position)?;
                    tracing::info!(timeline = record.timeline, "recorded the promotion");
                }
                self.pg.promote().await?;
                tracing::info!("promoted postgres to primary");
                self.proxies_wait_since = None;
                self.checkpoint_after_promote();
                Ok(true)
            }
            Action::Stop(mode) => {
                let timeout = match self.dynamic.primary_stop_timeout {
                    0 => None,
                    s => Some(Duration::from_secs(u64::from(s))),
                };
                // Peers deciding a leader race ask our REST API: it must not report a running primary
                // once the stop has begun.
                self.set_api_state(MemberState::Stopping);
                self.pg.stop(mode, timeout).await?;
                self.set_api_state(MemberState::Stopped);
                // Every decision that stops PostgreSQL ends this member's leadership (it releases
                // the lock, or cannot renew it): no demotion deadline runs any more, so a read-only
                // restart is not taken for a primary past its deadline.
                self.set_lock_renewed(None);
                tracing::info!(?mode, "stopped postgres");
                self.disable_watchdog();
                self.callbacks.fire(
                    crate::callbacks::Event::OnStop,
                    self.last_role.unwrap_or(Role::Replica),
                );
                Ok(true)
            }
            Action::Follow(up) => {
                self.pg.follow(&self.dynamic, up.as_ref())?;
                Ok(true)
            }
            Action::FencePrimary {
                host,
                port,
                answer_ms,
                shutdown_ms,
            } => {
                let sysid = cluster_sysid(view, obs);
                Ok(self.fence(host, port, sysid, answer_ms, shutdown_ms).await)
            }
            Action::FenceInBackground { host, port } => {
                let sysid = cluster_sysid(view, obs);
                self.fence_in_background(host, port, sysid);
                Ok(true)
            }
            Action::AwaitProxies { former, wait_ms } => Ok(self
                .await_proxies(former, Duration::from_millis(wait_ms))
                .await),
            Action::SetSyncStandbyNames(names) => {
                let lsn = match self.pg.status().await {
                    Ok(s) => s.wal_position(),
                    Err(_) => obs
                        .server
                        .as_ref()
                        .map(ServerStatus::wal_position)
                        .unwrap_or(0),
                };
                tracing::info!(synchronous_standby_names = %names, "changing synchronous replication");
                let names_a_standby = !names.is_empty();
                self.pg.set_sync_standby_names(Some(names));
                let role = running_role(obs);
                self.pg.write_config(&self.dynamic, &role)?;
                self.pg.reload()?;
                self.sync_catchup_lsn = lsn;
                if names_a_standby {
                    // In the background: the loop goes on while the standby catches up.
                    let pg = Arc::clone(&self.pg);
                    tokio::spawn(async move {
                        match pg.release_synchronous_waiters(SYNC_RELEASE_WITHIN).await {
                            Ok(true) => tracing::debug!("no commit waits for synchronous replication"),
                            Ok(false) => tracing::info!(
                                "commits still wait for synchronous replication {} ms after the change (the standby catches up)",
                                SYNC_RELEASE_WITHIN.as_millis()
                            ),
                            Err(e) => tracing::debug!("could not nudge the synchronous standbys: {e}"),
                        }
                    });
                }
                Ok(true)
            }
            Action::KeepLeadingInFailsafe => {
                let renewed = keep_leading_in_failsafe(&mut self.watchdog, self.failsafe_asked_ms);
                self.set_lock_renewed(renewed);
                Ok(true)
            }
            Action::WriteFailsafe(members) => match self.dcs.set_failsafe(&members).await {
                Ok(()) => {
                    // The failsafe round asks the members of the last view's key: a key written
                    // after that read must count (sim seed 6204 with `--failsafe`: a leader cut
                    // off right after adding a member to the key asked nobody, kept leading on
                    // "0 of 0 accepted", and the new member took the lock).
                    if let Some(v) = self.last_view.as_mut() {
                        Arc::make_mut(v).failsafe = (!members.is_empty()).then(|| members.clone());
                    }
                    Ok(true)
                }
                Err(e) if e.is_cas_conflict() => Ok(false),
                Err(e) => Err(e.into()),
            },
            Action::WriteSync(state) => {
                let expect = match view.and_then(|v| v.sync.as_ref()) {
                    Some(s) => Expect::Version(s.version),
                    None => Expect::Absent,
                };
                match self.dcs.set_sync(&state, expect).await {
                    Ok(()) => Ok(true),
                    Err(e) if e.is_cas_conflict() => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            Action::AbortTask => {
                if let Some(t) = self.task.take() {
                    t.handle.abort();
                    tracing::warn!(task = ?t.kind, "aborted");
                }
                Ok(true)
            }
            Action::RemoveDataDirectory => {
                if self.pg.postmaster().is_some() {
                    return Err(anyhow!(
                        "postgres is running: not removing its data directory"
                    ));
                }
                let dir = self.pg.settings().data_dir.clone();
                tracing::warn!(
                    "removing the data directory {} to clone again (remove_data_directory_on_diverged_timelines or remove_data_directory_on_rewind_failure)",
                    dir.display()
                );
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("remove {}", dir.display()))?;
                self.pg.clear_rewind_damage();
                Ok(true)
            }
            Action::EnsureSlots(names) => {
                if let Err(e) = self.pg.ensure_slots(&names).await {
                    tracing::warn!("cannot create replication slots: {e}");
                }
                Ok(true)
            }
            Action::DropSlots(names) => {
                for name in names {
                    match self.pg.drop_slot(&name).await {
                        Ok(true) => tracing::info!(slot = %name, "dropped replication slot"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(slot = %name, "cannot drop replication slot: {e}"),
                    }
                }
                Ok(true)
            }
            Action::CreateLogicalSlots(slots) => {
                for slot in slots {
                    match self.pg.create_logical_slot(&slot).await {
                        Ok(()) => {
                            tracing::info!(
                                slot = %slot.name,
                                database = %slot.database,
                                plugin = %slot.plugin,
                                failover = slot.failover,
                                "created logical replication slot"
                            );
                            // Once: the slot exists from now on (see `LogicalSlot::lost_from`).
                            if let Some(lsn) = slot.lost_from {
                                tracing::warn!(
                                    slot = %slot.name,
                                    confirmed = %crate::postgres::format_lsn(lsn),
                                    "no usable copy of permanent logical slot {} on this member when it was promoted: created anew at the current position; its consumer misses the changes between its confirmed position {} and here",
                                    slot.name,
                                    crate::postgres::format_lsn(lsn)
                                );
                            }
                        }
                        Err(e) => tracing::warn!(
                            slot = %slot.name,
                            "cannot create logical replication slot: {e}"
                        ),
                    }
                }
                Ok(true)
            }
            Action::SetSynchronizedStandbySlots(names) => {
                if self.pg.set_synchronized_standby_slots(Some(names.clone())) {
                    tracing::info!(synchronized_standby_slots = %names, "changing the standbys logical consumers wait for");
                    let role = running_role(obs);
                    if self.pg.write_config(&self.dynamic, &role)?.changed {
                        self.pg.reload()?;
                    }
                }
                Ok(true)
            }
            Action::AdvanceLogicalSlots(copies) => {
                for a in copies {
                    match self.pg.advance_logical_slot(&a).await {
                        Ok(SlotAdvance::Done) => {}
                        Ok(SlotAdvance::Unusable(why)) => {
                            tracing::warn!(
                                slot = %a.name,
                                "this replica's copy of the logical slot can no longer be advanced ({why}): dropping it, to copy it again from the leader"
                            );
                            if let Err(e) = self.pg.drop_slot(&a.name).await {
                                tracing::warn!(slot = %a.name, "cannot drop replication slot: {e}");
                            }
                        }
                        Err(e) => tracing::warn!(
                            slot = %a.name,
                            target = %crate::postgres::format_lsn(a.lsn),
                            "cannot advance this replica's copy of the logical slot (retried next cycle): {e}"
                        ),
                    }
                }
                Ok(true)
            }
            Action::CopyLogicalSlots { from, slots } => {
                self.copy_logical_slots(&from, &slots).await;
                Ok(true)
            }
            Action::AdvanceSlots(positions) => {
                for (name, lsn) in positions {
                    if let Err(e) = self.pg.advance_slot(&name, lsn).await {
                        tracing::debug!(slot = %name, "cannot advance replication slot: {e}");
                    }
                }
                Ok(true)
            }
            Action::WriteStatus => {
                let optime = obs
                    .server
                    .as_ref()
                    .map(ServerStatus::wal_position)
                    .unwrap_or(0);
                let slots: Vec<ha::slots::Slot> = obs
                    .server
                    .as_ref()
                    .map(|s| s.slots.iter().map(SlotRow::to_slot).collect())
                    .unwrap_or_default();
                self.dcs
                    .set_status(&Status {
                        optime,
                        slots: ha::slots::status_slots(&self.dynamic, &slots),
                        ..Default::default()
                    })
                    .await?;
                Ok(true)
            }
            Action::DrainTransactions { max_ms } => {
                self.drain_transactions(max_ms).await;
                Ok(true)
            }
            Action::WriteLastLsn => {
                // Patroni's delete_leader(leader, last_lsn): the shutdown checkpoint of the clean
                // stop just done, before the lock is released.
                let control = match self.pg.controldata().await {
                    Ok((_, c)) => c,
                    Err(e) => {
                        tracing::warn!("not releasing the leader lock: cannot read pg_controldata after the stop: {e}");
                        return Ok(false);
                    }
                };
                if control.state != ha::ClusterState::ShutDown {
                    tracing::warn!(state = ?control.state, "not releasing the leader lock: postgres did not shut down cleanly, so its last LSN is unknown");
                    return Ok(false);
                }
                let kept = view.and_then(|v| v.status.clone()).unwrap_or_default();
                self.dcs
                    .set_status(&Status {
                        optime: control.checkpoint_lsn,
                        ..kept
                    })
                    .await?;
                tracing::info!(
                    last_lsn = %crate::postgres::format_lsn(control.checkpoint_lsn),
                    "published the shutdown checkpoint as the last LSN"
                );
                Ok(true)
            }
            Action::UpdateHistory => {
                self.update_history(view, obs).await?;
                Ok(true)
            }
            Action::ClearFailover(version) => {
                match self.dcs.delete_failover(version).await {
                    Ok(()) => {}
                    Err(e) if e.is_cas_conflict() => return Ok(false),
                    Err(e) => return Err(e.into()),
                }
                Ok(true)
            }
            Action::Fatal(msg) => Err(anyhow!(Fatal(msg))),
            Action::Bootstrap
            | Action::Start(_)
            | Action::Clone { .. }
            | Action::CloneWithoutLeader
            | Action::Rewind(_)
            | Action::CrashRecovery => unreachable!("background actions are spawned above"),
        }
    }

    /// Copies permanent logical slots from the leader `from` into this replica (before 17,
    /// Patroni's `copy_logical_slots`): reads their state files there, and when it got any, stops
    /// PostgreSQL (fast), writes them into `pg_replslot/`, and starts it again as a replica in the
    /// background, so PostgreSQL loads them. Records the attempt, whatever its outcome, for
    /// `decide`, which paces the copies ([`ha::slots::pace_copies`]): a copy costs a restart, and
    /// one that does not take must not restart the replica in a loop. Every failure is logged with
    /// its reason.
    async fn copy_logical_slots(&mut self, from: &ha::Upstream, slots: &[ha::slots::LogicalSlot]) {
        self.slot_copy_at_ms = Some(self.now().mono_ms);
        let names: Vec<String> = slots.iter().map(|s| s.name.clone()).collect();
        let retry = ha::slots::SLOT_COPY_PACE_MS / 1000;
        let states = match self.pg.read_leader_slot_states(from, &names).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(leader = %from.member, slots = ?names, "cannot read the logical slots' state files on the leader (trying again in {retry}s): {e}");
                return;
            }
        };
        let mut copy = vec![];
        for st in states {
            let Some(want) = slots.iter().find(|s| s.name == st.name) else {
                continue;
            };
            if st.database.as_deref() == Some(&want.database)
                && st.plugin.as_deref() == Some(&want.plugin)
            {
                copy.push(st);
            } else {
                tracing::warn!(slot = %st.name, database = ?st.database, plugin = ?st.plugin, "not copying the logical slot: on the leader its database or plugin differs from the configuration");
            }
        }
        if copy.is_empty() {
            tracing::warn!(leader = %from.member, slots = ?names, "no logical slot to copy: the leader does not have them as configured, or is not a primary (trying again in {retry}s)");
            return;
        }
        let copied: Vec<&str> = copy.iter().map(|s| s.name.as_str()).collect();
        tracing::info!(leader = %from.member, slots = ?copied, "copying logical slots from the leader: restarting postgres so that it loads them");
        let role = self.current_start_role();
        self.set_api_state(MemberState::Stopping);
        if let Err(e) = self.pg.stop(ha::StopMode::Fast, None).await {
            tracing::warn!(
                "cannot stop postgres to copy logical slots (trying again in {retry}s): {e}"
            );
            return;
        }
        self.set_api_state(MemberState::Stopped);
        for st in &copy {
            if let Err(e) = self.pg.install_slot_state(&st.name, &st.state) {
                tracing::warn!(slot = %st.name, "cannot write the copied logical slot (trying again in {retry}s): {e}");
            }
        }
        self.restarting = true;
        self.spawn_task(Task::Start, Action::Start(role));
    }

    /// Applies dynamic and local configuration changes to a running PostgreSQL: rewrites the files when
    /// their contents change and reloads; records which restart-only parameters wait for a restart
    /// (published as `pending_restart` with the reason).
    async fn apply_parameters(&mut self, obs: &Observation) {
        let Some(server) = &obs.server else {
            self.pending_restart.clear();
            return;
        };
        if server.in_recovery {
            // Synchronous replication is the leader's business; a replica keeps no override (a
            // strict-mode promotion sets '*' right before promoting, in the same cycle).
            self.pg.set_sync_standby_names(None);
            // Likewise the standbys a leader's logical consumers wait for.
            self.pg.set_synchronized_standby_slots(None);
        }
        let role = if server.in_recovery {
            StartAs::Replica {
                upstream: server.upstream.clone().map(|(host, port)| ha::Upstream {
                    member: String::new(),
                    host,
                    port,
                }),
            }
        } else {
            StartAs::Primary
        };
        match self.pg.write_config(&self.dynamic, &role) {
            Ok(w) if w.changed => match self.pg.reload() {
                Ok(()) => {
                    tracing::info!("configuration changed: reloaded postgres");
                    let r = if server.in_recovery {
                        Role::Replica
                    } else {
                        Role::Primary
                    };
                    self.callbacks.fire(crate::callbacks::Event::OnReload, r);
                }
                Err(e) => tracing::warn!("cannot reload postgres: {e}"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot write the postgres configuration: {e}"),
        }
        match self.pg.pending_restart(&self.dynamic).await {
            Ok(p) => {
                if p != self.pending_restart && !p.is_empty() {
                    tracing::info!(parameters = ?p.keys().collect::<Vec<_>>(), "restart pending");
                }
                self.pending_restart = p;
            }
            Err(e) => tracing::debug!("cannot read pending_restart: {e}"),
        }
    }

    /// Members absent from `view` that were seen less than `member_slots_ttl` ago (or are named in the
    /// leader's `status.retain_slots`, first seen when this agent started): their slots are kept.
    fn retained_members(&mut self, view: Option<&Cluster>) -> Vec<String> {
        let Some(view) = view else { return vec![] };
        let now = self.now().mono_ms;
        for m in &view.members {
            self.member_seen.insert(m.name.clone(), now);
        }
        if let Some(retain) = view.status.as_ref().and_then(|s| s.retain_slots.as_ref()) {
            for name in retain {
                self.member_seen.entry(name.clone()).or_insert(now);
            }
        }
        let ttl_ms = u64::from(self.dynamic.member_slots_ttl) * 1000;
        self.member_seen
            .retain(|_, seen| now.saturating_sub(*seen) < ttl_ms);
        let mut out: Vec<String> = self
            .member_seen
            .keys()
            .filter(|n| view.member(n).is_none())
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// With the DCS unreachable, `failsafe_mode` on and this member a running primary that held the
    /// lock: asks every other member of the last known `failsafe` key to confirm it (`POST
    /// /failsafe`, see [`ha::failsafe::members_to_ask`]). `Some(true)` only when all of them
    /// answered 200 `Accepted`; `Some(false)` also when the key does not list this member. `None`
    /// when not applicable. Notes in `failsafe_asked_ms` when it began asking: a confirmation
    /// renews from that instant ([`Action::KeepLeadingInFailsafe`]).
    async fn failsafe_check(&mut self, view: Option<&Cluster>, obs: &Observation) -> Option<bool> {
        if view.is_some() || !self.dynamic.failsafe_mode {
            return None;
        }
        if obs.server.as_ref().is_none_or(|s| s.in_recovery) {
            return None;
        }
        let last = self.last_view.as_ref()?;
        if last.leader.as_ref().map(|l| l.name.as_str()) != Some(self.me()) {
            return None;
        }
        self.failsafe_asked_ms = Some(self.now().mono_ms);
        let Some(members) = ha::failsafe::members_to_ask(last, self.me()) else {
            tracing::warn!("failsafe: this member is not in the failsafe key it last read");
            return Some(false);
        };
        let timeout = Duration::from_secs(u64::from(self.dynamic.retry_timeout.clamp(1, 2)));
        let body = serde_json::json!({
            "name": self.me(),
            "conn_url": self.conn_url(),
            "api_url": format!("http://{}/patroni", self.settings.api_connect),
        });
        let asks = members.into_iter().map(|(name, api)| {
            let url = format!("{}/failsafe", api::client::api_base(&api));
            let body = body.clone();
            let client = self.ops.client.with_timeout(timeout);
            async move {
                let answer = client.request("POST", &url, Some(&body)).await;
                let ok = answer.as_ref().is_ok_and(|r| r.status == 200);
                if !ok {
                    let why = match &answer {
                        Ok(r) => format!("{} {}", r.status, r.body),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(member = %name, "failsafe: member did not confirm: {why}");
                }
                ok
            }
        });
        let all = futures::future::join_all(asks)
            .await
            .into_iter()
            .all(|ok| ok);
        Some(all)
    }

    /// Records `leader` as the fence target, in memory and, when it changed, in the data directory
    /// ([`crate::former_leader`]) so that it survives an agent restart. Not while a background task
    /// (bootstrap, clone, rewind) may be writing the data directory.
    fn remember_former_leader(&mut self, leader: ha::former::FormerLeader) {
        if self.former_leader.as_ref() == Some(&leader) {
            return;
        }
        if self.task.is_none() {
            let dir = &self.pg.settings().data_dir;
            if let Err(e) = crate::former_leader::store(dir, self.me(), &leader) {
                tracing::warn!(
                    "cannot record the former leader {} in {}: {e} (it is kept in memory only)",
                    leader.leader.member,
                    dir.display()
                );
            }
        }
        self.former_leader = Some(leader);
    }

    /// Fences the former primary at `host:port` before this member promotes (see
    /// [`crate::postgres::fence`] and [`Action::FencePrimary`] for the bounds). Always true: once it
    /// is stopped, down or not a primary; or, when it gave no answer or did not finish shutting down
    /// in time, after recording it in `unfenced` for the leader's background fence. A server of
    /// another cluster at that address (system identifier other than `sysid`) is left running.
    async fn fence(
        &mut self,
        host: String,
        port: u16,
        sysid: Option<String>,
        answer_ms: u64,
        shutdown_ms: u64,
    ) -> bool {
        use crate::postgres::fence::{fence_primary, FenceOutcome};
        let answer = Duration::from_millis(answer_ms.max(1));
        let shutdown = Duration::from_millis(shutdown_ms.max(1));
        let su = &self.settings.superuser;
        match fence_primary(&host, port, su, sysid.as_deref(), answer, shutdown).await {
            FenceOutcome::Stopped => {
                tracing::warn!("the former primary at {host}:{port} was still running as a primary: stopped it before promoting");
            }
            FenceOutcome::OtherCluster { found } => {
                tracing::warn!("the server at {host}:{port} (the former primary's address) belongs to another cluster (system identifier {found}, ours {}): left running; no former primary of ours is there", sysid.as_deref().unwrap_or("?"));
            }
            FenceOutcome::NotPrimary | FenceOutcome::Down => {}
            FenceOutcome::ShuttingDown | FenceOutcome::Unknown(_) => {
                tracing::warn!("cannot fence the former primary at {host}:{port} within {answer:?}: promoting (a live agent there stopped it at its demotion deadline); fencing it in the background until it is provably down");
                *self.unfenced.lock().unwrap_or_else(|p| p.into_inner()) = Some((host, port));
            }
        }
        true
    }

    /// Keeps fencing `host:port` in a task of its own (one bounded attempt a second) until it is
    /// stopped, down or not a primary, then clears `unfenced`. One such task at a time; it ends with
    /// the agent, or when this member stops leading (the next leader fences for itself).
    fn fence_in_background(&mut self, host: String, port: u16, sysid: Option<String>) {
        use crate::postgres::fence::fence_primary;
        if self.fencer.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let su = self.settings.superuser.clone();
        let unfenced = self.unfenced.clone();
        let attempt = Duration::from_millis(self.fence_timeout_ms.max(1));
        self.fencer = Some(tokio::spawn(async move {
            loop {
                let outcome =
                    fence_primary(&host, port, &su, sysid.as_deref(), attempt, attempt * 5).await;
                if outcome.is_safe() {
                    tracing::info!(?outcome, "the former primary at {host}:{port} is fenced");
                    let mut u = unfenced.lock().unwrap_or_else(|p| p.into_inner());
                    if u.as_ref() == Some(&(host.clone(), port)) {
                        *u = None;
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }

    /// The agent side of the proxies' fencing handshake ([`Action::AwaitProxies`]): re-reads the DCS
    /// every 50 ms until no live proxy routes writes to `former` (true), or `wait` has passed (false:
    /// the next cycle renews the lock and `decide` says whether to wait on). Records when the wait
    /// for this former leader began, for `decide`'s contact deadline: at the first read that showed
    /// a proxy still routing to it (a re-read that shows none, as after taking the lock, is no wait
    /// and must not shorten a later one).
    async fn await_proxies(&mut self, former: String, wait: Duration) -> bool {
        let now = self.now().mono_ms;
        let started = tokio::time::Instant::now();
        loop {
            // Each read is bounded by what is left of the wait: on a DCS that answers slowly, an
            // unbounded read carried this wait (and the promotion after it) seconds past `wait`.
            let left = wait.saturating_sub(started.elapsed()).max(LAST_ATTEMPT);
            let read = tokio::time::timeout(left, self.dcs.load())
                .await
                .unwrap_or_else(|_| {
                    Err(praetor_dcs::DcsError::Unavailable(format!(
                        "no answer within {left:?}"
                    )))
                });
            let pending: Vec<String> = match read {
                Ok(c) => c
                    .proxies_routing_to(&former)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
                Err(e) => vec![format!("(DCS unreadable: {e})")],
            };
            if pending.is_empty() {
                tracing::info!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "every proxy stopped routing to {former}"
                );
                return true;
            }
            if !matches!(&self.proxies_wait_since, Some((f, _)) if *f == former) {
                self.proxies_wait_since = Some((former.clone(), now));
            }
            if started.elapsed() >= wait {
                tracing::info!(?pending, "waiting for proxies to stop routing to {former}");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Standby cluster: learns the remote primary's timeline and history for `decide` (whether a
    /// stopped or running member went past the remote's fork and needs pg_rewind). Asked every
    /// cycle while PostgreSQL is stopped (a start or rewind depends on it), at most every 10 s
    /// while it runs in recovery, never while it runs as a primary (a primary of a standby
    /// cluster is demoted first) or outside a standby cluster. A remote that does not answer is
    /// logged and forgotten (`None`: decide then starts as it is, as Patroni does).
    async fn probe_remote(&mut self, postgres: &Postgres) {
        let Some((host, port)) = self.dynamic.standby().and_then(|s| s.remote()) else {
            self.remote = None;
            return;
        };
        let due = match postgres {
            Postgres::Running(r) if r.is_primary => false,
            Postgres::Running(_) => self
                .remote_probed
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10)),
            _ => true,
        };
        if !due {
            return;
        }
        self.remote_probed = Some(Instant::now());
        self.remote = match self.pg.remote_timeline(&host, port).await {
            Ok(rt) => rt,
            Err(e) => {
                tracing::info!("standby cluster: cannot learn the remote's timeline: {e}");
                None
            }
        };
    }

    /// Requests a CHECKPOINT in the background after promotion and publishes
    /// `checkpoint_after_promote` (false until it completes), so that members about to pg_rewind
    /// from this node wait until its pg_control shows the new timeline.
    fn checkpoint_after_promote(&self) {
        let flag = self.checkpoint_after_promote.clone();
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = Some(false);
        let pg = self.pg.clone();
        tokio::spawn(async move {
            match pg.checkpoint().await {
                Ok(()) => *flag.lock().unwrap_or_else(|p| p.into_inner()) = Some(true),
                Err(e) => tracing::warn!("checkpoint after promote failed: {e}"),
            }
        });
    }

    fn spawn_task(&mut self, kind: Task, action: Action) {
        // pg_rewind reads the source's timeline from its pg_control, which shows a new timeline
        // only after a checkpoint (a restartpoint on a standby source): ask for one first unless
        // the source published that its checkpoint after promotion is done. Patroni's
        // `Rewind.execute` likewise runs CHECKPOINT on a remote member or on a leader that does
        // not publish `checkpoint_after_promote` (a standby cluster's standby leader, whose
        // pg_control still names the timeline it was rewound from until its first restartpoint).
        let checkpoint_source = match &action {
            Action::Rewind(up) => {
                up.is_remote()
                    || !self.last_view.as_ref().is_some_and(|v| {
                        v.member(&up.member)
                            .is_some_and(|m| m.data.checkpoint_after_promote == Some(true))
                    })
            }
            _ => false,
        };
        let read_only = action.starts_read_only();
        let pg = self.pg.clone();
        let dynamic = self.dynamic.clone();
        let bootstrap = self.config.bootstrap.clone();
        let local_hba = self.config.postgresql.pg_hba.clone();
        let conn_url = self.conn_url();
        let done = self.task_done.clone();
        let fut = async move {
            if let Action::Rewind(up) = action {
                // Which step failed matters: a failed pg_rewind may lead decide() to re-clone
                // (remove_data_directory_on_rewind_failure), a failed start after it must not.
                pg.rewind(&up, checkpoint_source)
                    .await
                    .map_err(|e| (Task::Rewind, format!("pg_rewind: {e}")))?;
                let role = StartAs::Replica { upstream: Some(up) };
                return pg
                    .start(&dynamic, &role)
                    .await
                    .map_err(|e| (Task::Start, e.to_string()));
            }
            let result = match action {
                Action::Bootstrap => {
                    bootstrap_task(&pg, &dynamic, &bootstrap, local_hba, &conn_url).await
                }
                Action::Start(role) => pg.start(&dynamic, &role).await.map_err(|e| e.to_string()),
                Action::Clone { source, leader } => match pg
                    .create_replica(Some(&source), standby_methods(&dynamic, source.is_remote()))
                    .await
                {
                    Ok(_) => {
                        let role = StartAs::Replica {
                            upstream: Some(leader),
                        };
                        pg.start(&dynamic, &role).await.map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                },
                Action::CloneWithoutLeader => match pg
                    .create_replica(None, standby_methods(&dynamic, true))
                    .await
                {
                    Ok(_) => {
                        let role = StartAs::Replica { upstream: None };
                        pg.start(&dynamic, &role).await.map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                },
                Action::CrashRecovery => {
                    pg.crash_recovery(&dynamic).await.map_err(|e| e.to_string())
                }
                other => Err(format!("{other:?} is not a background action")),
            };
            result.map_err(|e| (kind, e))
        };
        let fut = async move {
            let result = fut.await;
            done.notify_one();
            result
        };
        tracing::info!(task = ?kind, "starting");
        self.task = Some(RunningTask {
            kind,
            read_only,
            handle: tokio::spawn(fut),
        });
    }

    /// Appends the promotion that started the current timeline to `history`, from the timeline
    /// history file PostgreSQL wrote at promotion.
    async fn update_history(
        &self,
        view: Option<&Cluster>,
        obs: &Observation,
    ) -> anyhow::Result<()> {
        let Some(view) = view else { return Ok(()) };
        if obs.server.is_none() {
            return Ok(());
        }
        // Asked again: right after a promotion in the same list, the loop's observation still
        // shows the timeline before it, and the record as it was.
        let server = self.pg.status().await?;
        let promoted = self.pg.promotion_record();
        let lines = self.pg.timeline_history(server.timeline)?;
        let mut entries: Vec<HistoryEntry> = view
            .history
            .as_ref()
            .map(|h| h.value.clone())
            .unwrap_or_default();
        // Patroni's form (Python's `datetime.isoformat()`: microseconds and a `+00:00` offset,
        // `2023-07-27T06:24:04.400493+00:00`), which Python before 3.11 parses with
        // `fromisoformat` where RFC 3339's nanoseconds and `Z` would not.
        let now = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00"
            ))
            .unwrap_or_default();
        // A line naming another leader for the timeline this leader created: that member promoted
        // to the same number and wrote it before it froze; it is replaced (`ha::promotion`).
        let history_now = entries.clone();
        if ha::promotion::history_names_another(
            promoted.as_ref(),
            self.me(),
            server.timeline,
            &history_now,
        ) {
            entries.retain(|e| e.timeline + 1 != server.timeline);
        }
        for l in lines {
            if entries.iter().any(|e| e.timeline == l.timeline) {
                continue;
            }
            let is_latest = l.timeline + 1 == server.timeline;
            entries.push(HistoryEntry {
                timeline: l.timeline,
                lsn: l.lsn,
                reason: l.reason,
                timestamp: Some(now.clone()),
                new_leader: is_latest.then(|| self.me().to_string()),
            });
        }
        entries.sort_by_key(|e| e.timeline);
        let expect = match &view.history {
            Some(h) => Expect::Version(h.version),
            None => Expect::Absent,
        };
        self.dcs.set_history(&entries, expect).await?;
        Ok(())
    }

    /// The damage a failed pg_rewind left in the data directory ([`Instance::rewind_damage`]),
    /// looked at only while PostgreSQL is stopped on an initialized data directory and no task
    /// runs (a running rewind's marker is no verdict yet).
    fn rewind_damage(&self, obs: &Observation) -> Option<String> {
        let stopped = matches!(obs.postgres, Postgres::Stopped { .. });
        let initialized = matches!(obs.data, Some(DataDir::Initialized { .. }));
        if self.task.is_some() || !stopped || !initialized {
            return None;
        }
        self.pg.rewind_damage()
    }

    fn conn_url(&self) -> String {
        format!("postgres://{}/postgres", self.settings.pg_connect)
    }

    fn member_data(&self, obs: &Observation, view: Option<&Cluster>) -> MemberData {
        let holds = view
            .and_then(|v| v.leader.as_ref())
            .is_some_and(|l| l.name == self.me());
        let state = match (self.task.as_ref().map(|t| t.kind), &obs.postgres) {
            (Some(Task::Bootstrap), _) => MemberState::InitializingNewCluster,
            (Some(Task::Clone), _) => MemberState::CreatingReplica,
            (Some(Task::Rewind), _) => MemberState::Rewinding,
            (Some(_), _) | (None, Postgres::Starting) => MemberState::Starting,
            (None, Postgres::Running(_)) => MemberState::Running,
            // Not started on a data directory an interrupted pg_rewind left damaged (Patroni has
            // no state for it; "stopped" would hide why).
            (None, Postgres::Stopped { .. }) if self.rewind_damage(obs).is_some() => {
                MemberState::RewindFailed
            }
            (None, Postgres::Stopped { .. }) => MemberState::Stopped,
        };
        let role = match (&obs.server, &obs.data) {
            (Some(s), _) if !s.in_recovery => Role::Primary,
            // The lock holder in recovery in a standby cluster, and until it has promoted once the
            // section is gone (its key keeps saying so: see ha::standby::was_standby_leader).
            (Some(_), _)
                if holds
                    && (self.dynamic.standby().is_some()
                        || view.is_some_and(|v| ha::standby::was_standby_leader(v, self.me()))) =>
            {
                Role::StandbyLeader
            }
            (Some(_), _) => Role::Replica,
            (None, Some(DataDir::Empty)) if self.task.is_none() => Role::Uninitialized,
            // A standby leader whose PostgreSQL is down is no primary (the proxy must not send
            // writes to it once it is back).
            (None, _) if holds && self.dynamic.standby().is_some() => Role::StandbyLeader,
            (None, _) if holds => Role::Primary,
            (None, _) => Role::Replica,
        };
        let mut d = MemberData {
            conn_url: Some(self.conn_url()),
            api_url: Some(format!("http://{}/patroni", self.settings.api_connect)),
            state,
            role,
            version: Some(praetor_dcs::PATRONI_COMPAT_VERSION.to_string()),
            praetor_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            tags: self.config.tags.clone(),
            pause: self.dynamic.pause,
            server_version: obs
                .server
                .as_ref()
                .and_then(|s| u32::try_from(s.server_version).ok()),
            holding_off_ms: ha::lapsed::hold_off_left_ms(
                self.renewals_lapsed_ms,
                &self.dynamic,
                self.now().mono_ms,
            ),
            logical_slot_copies: match &obs.postgres {
                Postgres::Running(r) => ha::slots::holds_slot_copies(
                    &self.dynamic,
                    self.pg.settings().pg_major,
                    &r.slots,
                    r.is_primary,
                ),
                _ => None,
            },
            ..Default::default()
        };
        if !self.pending_restart.is_empty() {
            d.pending_restart = true;
            d.pending_restart_reason = Some(serde_json::Value::Object(
                self.pending_restart
                    .iter()
                    .map(|(k, (old, new))| {
                        (
                            k.clone(),
                            serde_json::json!({"old_value": old, "new_value": new}),
                        )
                    })
                    .collect(),
            ));
        }
        let is_primary = obs.server.as_ref().is_some_and(|s| !s.in_recovery);
        let mut checkpoint = self
            .checkpoint_after_promote
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if is_primary {
            // `false` while the checkpoint runs, then absent, as Patroni writes it: Patroni
            // (patroni/dcs/__init__.py `Leader.checkpoint_after_promote`) takes a present field
            // as "not done yet", whatever its value, and its replicas would wait forever to
            // pg_rewind from a leader that wrote `true`.
            d.checkpoint_after_promote = checkpoint.filter(|done| !done);
        } else if obs.server.is_some() {
            *checkpoint = None;
        }
        drop(checkpoint);
        if let Some(s) = &obs.server {
            d.timeline = Some(s.timeline);
            d.xlog_location = Some(s.wal_position());
            if s.in_recovery {
                d.receive_lsn = s.received_lsn;
                d.replay_lsn = s.replayed_lsn;
                d.replication_state = Some(
                    if s.streaming {
                        "streaming"
                    } else {
                        "in archive recovery"
                    }
                    .to_string(),
                );
            }
        }
        d
    }

    /// Changes the PostgreSQL state the REST API reports, at once (not at the end of the cycle).
    fn set_api_state(&self, state: MemberState) {
        self.status_tx.send_modify(|st| {
            let mut next = (**st).clone();
            next.state = state;
            if state != MemberState::Running {
                next.server = None;
            }
            *st = Arc::new(next);
        });
    }

    fn disable_watchdog(&mut self) {
        if let Err(e) = self.watchdog.disable() {
            tracing::warn!("cannot disarm the watchdog: {e}");
        }
    }

    async fn publish(&mut self, view: Option<&Cluster>, obs: &Observation) {
        let holds = view
            .and_then(|v| v.leader.as_ref())
            .is_some_and(|l| l.name == self.me());
        let primary = obs.server.as_ref().is_some_and(|s| !s.in_recovery);
        // Disarm when neither leading nor primary; never merely because a renewal failed (that is
        // exactly when the watchdog must fire if the agent freezes), nor because the cluster is
        // paused (see `ha::decide`'s `with_watchdog`: a lease renewed without it outlives a resume).
        if self.watchdog.is_active() && view.is_some() && !holds && !primary {
            self.disable_watchdog();
        }
        let mut data = self.member_data(obs, view);
        self.decorate_member(&mut data);
        if let Some(s) = &obs.server {
            let role = if s.in_recovery {
                Role::Replica
            } else {
                Role::Primary
            };
            if !s.in_recovery {
                self.primary_start_began_ms = None;
            }
            if self.last_role.is_some_and(|r| r != role) {
                self.callbacks
                    .fire(crate::callbacks::Event::OnRoleChange, role);
            }
            self.last_role = Some(role);
        }
        if view.is_some() {
            // Bounded like every DCS call: after a failed renewal it must not carry the cycle past
            // the demotion deadline.
            if let Err(e) = self.bounded(self.dcs.touch_member(&data)).await {
                tracing::warn!("cannot update the member key: {e}");
            }
        }
        let status = NodeStatus {
            scope: self.settings.scope.clone(),
            name: self.settings.name.clone(),
            cluster: self.last_view.clone(),
            dcs_last_seen: self.dcs_last_seen,
            state: data.state,
            role: data.role,
            server: obs.server.clone(),
            tags: self.config.tags.clone(),
            last_loop: Some(self.now().unix_secs),
            ttl: self.dynamic.ttl,
            last_decision: self.last_reason.clone(),
            pause: self.dynamic.pause,
            pending_restart: data.pending_restart,
            pending_restart_reason: data.pending_restart_reason.clone(),
            loop_wait: self.dynamic.loop_wait,
            failsafe_active: self.failsafe_active,
            failsafe_mode: self.dynamic.failsafe_mode,
            diverged: self.last_view.as_ref().and_then(|v| {
                let history = v.history.as_ref().map_or(&[][..], |h| &h.value[..]);
                ha::diverged_vote(&obs.postgres, history)
            }),
            holding_off_ms: data.holding_off_ms,
            logical_slot_copies: data.logical_slot_copies,
        };
        self.status_tx.send_replace(Arc::new(status));
    }

    /// Clean shutdown: stop a running task, stop PostgreSQL (fast: streaming replicas receive all WAL
    /// first), release the lock if held, revoke the lease.
    async fn shut_down(&mut self) {
        tracing::info!("shutting down");
        if let Some(t) = self.task.take() {
            t.handle.abort();
        }
        let timeout = match self.dynamic.primary_stop_timeout {
            0 => None,
            s => Some(Duration::from_secs(u64::from(s))),
        };
        match self.pg.stop(ha::StopMode::Fast, timeout).await {
            Ok(()) => self.disable_watchdog(),
            Err(e) => tracing::error!("cannot stop postgres: {e}"),
        }
        match self.dcs.release_leader().await {
            Ok(true) => tracing::info!("released the leader lock"),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot release the leader lock: {e}"),
        }
        if let Err(e) = self.dcs.close().await {
            tracing::warn!("cannot leave the DCS: {e}");
        }
    }
}

/// Opens the DCS, waiting for it while it is unavailable (every `loop_wait` seconds, at least 1,
/// each failure logged), as Patroni waits for etcd or ZooKeeper at its start: an agent started
/// while the DCS has no quorum (a node rebooted during a DCS outage) must join once the DCS is
/// back, not exit and leave its member out of the cluster (nemesis etcd seed 21: a killed agent
/// started again during a quorum loss exited, its replica never came back). Nothing touches
/// PostgreSQL before this returns. `Ok(None)`: `shutdown` was cancelled while waiting.
///
/// Errors: anything but an unavailable DCS (a certificate that cannot be read, another backend's
/// refusal): the settings need fixing, so the agent exits.
async fn open_dcs(
    config: &Config,
    endpoints: &praetor_config::DcsEndpoints,
    identity: DcsIdentity,
    loop_wait: u32,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<dyn praetor_dcs::Dcs>>, praetor_dcs::DcsError> {
    let pace = Duration::from_secs(u64::from(loop_wait.max(1)));
    praetor_dcs::connect_when_available(
        endpoints,
        identity,
        &config.etcd_security(),
        pace,
        shutdown,
    )
    .await
}

/// Stops PostgreSQL the moment the demotion deadline (`deadline`, monotonic ms since `started`)
/// passes without a renewal, whatever the HA loop is doing: a DCS request it waits on, or, in a
/// process thawed after a freeze, the middle of the request it was frozen in. The loop's own check
/// ([`ha::past_demote_deadline`] at a cycle's start, `decide` at the deadline) comes later in those
/// cases, and every millisecond a thawed primary runs past its lease it may acknowledge writes. Not
/// with `failsafe_mode` on (`failsafe`): the loop's failsafe round may keep the primary, and it can
/// only run after the DCS request that hung until the deadline; the loop's own checks apply then.
/// Nor when PostgreSQL cannot accept writes (`may_write`, see [`ha::may_accept_writes`]): a lock
/// holder still in recovery keeps running and promotes after its next renewal. When it stops
/// PostgreSQL it sets `stopped`: the loop counts that as a lapse of this member's renewals, which
/// makes it give the lock up and hold off the race ([`ha::lapsed`]).
async fn deadline_guard(
    mut deadline: watch::Receiver<Option<u64>>,
    pg: Arc<Instance>,
    started: Instant,
    failsafe: Arc<std::sync::atomic::AtomicBool>,
    may_write: Arc<std::sync::atomic::AtomicBool>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
) {
    loop {
        let current = *deadline.borrow_and_update();
        let Some(ms) = current else {
            if deadline.changed().await.is_err() {
                return;
            }
            continue;
        };
        let at = tokio::time::Instant::from_std(started + Duration::from_millis(ms));
        tokio::select! {
            changed = deadline.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(at) => {
                let kept = failsafe.load(std::sync::atomic::Ordering::Relaxed);
                let writable = may_write.load(std::sync::atomic::Ordering::SeqCst);
                if *deadline.borrow() == Some(ms) && !kept && writable && pg.postmaster().is_some() {
                    tracing::error!("the demotion deadline passed without a lock renewal while the HA loop was busy (or frozen): stopping postgres now");
                    // The loop learns of the lapse at its next cycle (ha::lapsed).
                    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
                    if let Err(e) = pg.stop(ha::StopMode::Immediate, None).await {
                        tracing::error!("cannot stop postgres: {e}");
                    }
                }
                // Act once per deadline: wait for the next one.
                if deadline.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// How far a cycle's actions went.
enum Outcome {
    /// All done (or a background task started).
    Done,
    /// Another member won the race for the leader lock.
    LostLockRace,
    /// Stopped at an action that failed or was not done.
    Stopped(String),
}

/// A condition the agent must not continue from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Fatal(String);

/// Which DCS changes wake the loop at once (member and status updates do not: every member writes
/// them every loop).
fn wakes_loop(key: &KeyKind) -> bool {
    matches!(
        key,
        KeyKind::Leader
            | KeyKind::Failover
            | KeyKind::Initialize
            | KeyKind::Config
            | KeyKind::Resync
    )
}

/// Bootstrap a new cluster: initdb, pg_hba, configuration, start as primary, roles, post_init.
/// On failure the data directory this task created is removed (it held nothing but the failed
/// initdb) and the `initialize` key given back, so the error can be fixed and the agent restarted.
async fn bootstrap_task(
    pg: &Instance,
    dynamic: &DynamicConfig,
    bootstrap: &praetor_config::Bootstrap,
    local_hba: Option<Vec<String>>,
    conn_url: &str,
) -> Result<(), String> {
    let result = async {
        pg.initdb(&bootstrap.initdb)
            .await
            .map_err(|e| e.to_string())?;
        let hba = local_hba
            .or_else(|| dynamic.postgresql.pg_hba.clone())
            .or_else(|| (!bootstrap.pg_hba.is_empty()).then(|| bootstrap.pg_hba.clone()));
        if let Some(lines) = hba {
            pg.write_pg_hba(&lines).map_err(|e| e.to_string())?;
        }
        pg.start(dynamic, &StartAs::Primary)
            .await
            .map_err(|e| e.to_string())?;
        pg.create_roles(bootstrap)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(script) = &bootstrap.post_init {
            let status = tokio::process::Command::new(script)
                .arg(conn_url)
                .status()
                .await
                .map_err(|e| format!("post_init {script}: {e}"))?;
            if !status.success() {
                return Err(format!("post_init {script} exited with {status}"));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        tracing::error!("bootstrap failed: {e}; removing the data directory it created");
        let _ = pg.stop(ha::StopMode::Immediate, None).await;
        let dir = &pg.settings().data_dir;
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
    }
    result
}

/// The cluster's database system identifier, for the fence: the DCS `initialize` key, or, while it
/// holds none (the bootstrap placeholder, an unreadable DCS), this member's own `pg_control`: a
/// replica of this cluster has the identifier of its primary.
/// `standby_cluster.create_replica_methods` when cloning from the remote of a standby cluster
/// (`remote`), else `None` (the member's own `postgresql.create_replica_methods`).
fn standby_methods(dynamic: &praetor_config::DynamicConfig, remote: bool) -> Option<&[String]> {
    dynamic
        .standby()
        .filter(|_| remote)
        .and_then(|s| s.create_replica_methods.as_deref())
}

fn cluster_sysid(view: Option<&Cluster>, obs: &Observation) -> Option<String> {
    view.and_then(|v| v.initialize.clone())
        .filter(|s| !s.trim().is_empty())
        .or_else(|| match &obs.data {
            Some(DataDir::Initialized { sysid }) => Some(sysid.clone()),
            _ => None,
        })
}

/// Carries out [`Action::KeepLeadingInFailsafe`]: every member confirmed this leader in the round
/// that began at `asked_ms`, which counts as a lock renewal at that instant (the new
/// `lock_renewed_ms`, returned), and the watchdog is fed as after a renewal: failsafe mode keeps the
/// primary running, and a frozen agent must still be reset before anyone could take over.
fn keep_leading_in_failsafe(
    watchdog: &mut crate::watchdog::Watchdog,
    asked_ms: Option<u64>,
) -> Option<u64> {
    if let Err(e) = watchdog.keepalive() {
        tracing::warn!("watchdog keepalive failed: {e}");
    }
    asked_ms
}

/// How the running PostgreSQL runs, for rewriting its configuration in place: a replica of the
/// upstream its WAL receiver reports (no member name: the settings need only host and port), or a
/// primary.
fn running_role(obs: &Observation) -> StartAs {
    match &obs.server {
        Some(s) if s.in_recovery => StartAs::Replica {
            upstream: s.upstream.clone().map(|(host, port)| ha::Upstream {
                member: String::new(),
                host,
                port,
            }),
        },
        _ => StartAs::Primary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basebackup_options_as_list_or_map() {
        let list: serde_yaml::Value =
            serde_yaml::from_str("- verbose\n- max-rate: 100M\n").unwrap();
        assert_eq!(
            basebackup_args(Some(&list)),
            vec!["--verbose", "--max-rate=100M"]
        );
        let map: serde_yaml::Value = serde_yaml::from_str("checkpoint: fast\n").unwrap();
        assert_eq!(basebackup_args(Some(&map)), vec!["--checkpoint=fast"]);
    }

    #[test]
    fn only_leader_and_failover_changes_wake_the_loop() {
        assert!(wakes_loop(&KeyKind::Leader));
        assert!(wakes_loop(&KeyKind::Failover));
        assert!(!wakes_loop(&KeyKind::Member("x".into())));
        assert!(!wakes_loop(&KeyKind::Status));
    }

    /// Failsafe mode keeping the primary without the DCS: what `decide` asks for, executed as the
    /// runner does, feeds the armed watchdog (a device double) and moves the demotion deadline on
    /// from the confirmation round, so the primary is neither stopped at the old deadline nor the
    /// node reset.
    #[test]
    fn failsafe_keeping_the_primary_feeds_the_watchdog_and_renews_from_the_confirmation() {
        use crate::watchdog::{DeviceDouble, Watchdog};
        let dynamic = praetor_config::DynamicConfig {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
            failsafe_mode: true,
            ..Default::default()
        };
        let dev = DeviceDouble::new();
        let mut wd = Watchdog::with_opener(
            &praetor_config::Watchdog {
                mode: praetor_config::WatchdogMode::Required,
                device: "/dev/watchdog-test".into(),
                safety_margin: 5,
            },
            dev.opener(),
        );
        assert!(wd.may_take_lock(dynamic.ttl, dynamic.loop_wait));
        let renewed = 100_000;
        let deadline = ha::demote_deadline_ms(Some(renewed), &dynamic, wd.timeout_secs()).unwrap();
        // The DCS went away; at the old deadline every member accepted the round begun then.
        let asked = deadline;
        let local = LocalState {
            data: DataDir::Initialized { sysid: "1".into() },
            postgres: Postgres::Running(ha::Running {
                is_primary: true,
                timeline: 1,
                wal_position: 1,
                upstream: None,
                standbys: vec![],
                sync_standby_names: String::new(),
                slots: vec![],
            }),
            task: None,
            won_initialize: false,
            lock_renewed_ms: Some(renewed),
            watchdog_timeout_secs: wd.timeout_secs(),
            watchdog: ha::WatchdogState::Armed,
            peers: None,
            primary_start_began_ms: None,
            former_leader: None,
            sync_catchup_lsn: 0,
            retained_members: vec![],
            remote: None,
            remote_recovery: None,
            unfenced: None,
            proxies_wait_began_ms: None,
            switchover_wait_began_ms: None,
            slot_copy_at_ms: None,
            failsafe_accepted_ms: None,
            granted_ttl: None,
            failed_task: None,
            failsafe_confirmed: Some(true),
            starting_read_only: false,
            promoted: None,
            renewals_lapsed_ms: None,
            lapsed_at_ms: None,
            lapsed_lock_failures: 0,
            rewind_damage: None,
        };
        let cfg = HaConfig {
            name: "pg1".into(),
            tags: Default::default(),
            dynamic: dynamic.clone(),
            remove_data_on_diverged: false,
            fence_timeout_ms: 1000,
            remove_data_on_rewind_failure: false,
            clone_without_leader: false,
            pg_major: 15,
        };
        let now = Now {
            mono_ms: asked + 50,
            unix_secs: 0,
        };
        let d = decide(None, &local, &cfg, now);
        assert_eq!(d.actions, vec![Action::KeepLeadingInFailsafe], "{d:?}");
        let fed_before = dev.keepalives();
        let renewed = keep_leading_in_failsafe(&mut wd, Some(asked));
        assert_eq!(dev.keepalives(), fed_before + 1, "the watchdog is fed");
        assert!(dev.is_armed(), "and stays armed");
        assert_eq!(renewed, Some(asked));
        assert!(
            !ha::past_demote_deadline(renewed, &dynamic, wd.timeout_secs(), false, now.mono_ms),
            "the confirmation moved the demotion deadline on"
        );
    }
}
