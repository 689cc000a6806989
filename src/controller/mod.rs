//! The operator: `stowage controller`.
//!
//! - [`target`]: the BackupTarget reconciler (config validation, probes, on-demand
//!   backups, status from finished Jobs).
//! - [`schedule`]: the BackupSchedule reconciler (ticks, concurrency, claim queueing,
//!   history limits).
//! - [`runs`]: whether a run may start now (one writer per target, concurrency policy,
//!   ReadWriteOnce claims), pure.
//! - [`status`]: pure status derivation; [`events`], [`metrics`]: what users observe.
//! - [`cache`]: the watch caches every reconcile reads from (no LIST per reconcile).
//! - [`server`]: `/metrics`, `/healthz`, `/readyz`; [`leader`]: Lease-based election.
//! - [`config`]: flags and the clock.
//!
//! Every reconcile reads "now" from [`Context::clock`], so tests drive time.

pub mod cache;
pub mod config;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod placement;
pub mod plugins;
pub mod restore;
pub mod runs;
pub mod schedule;
pub mod server;
pub mod status;
pub mod target;
pub mod watched;
pub mod webhook;

#[cfg(test)]
mod fixtures;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::api::{BackupRestore, BackupSchedule, BackupTarget};
use crate::jobs::JobDefaults;

pub use config::{Clock, ControllerArgs, LogFormat, SystemClock, TestClock};
pub use metrics::Metrics;

/// Label on every stowage Job: the BackupTarget's name (through [`crate::jobs::label_value`]).
pub const LABEL_TARGET: &str = crate::jobs::labels::TARGET;
/// Label on scheduled Jobs: the BackupSchedule's name (through [`crate::jobs::label_value`]).
pub const LABEL_SCHEDULE: &str = crate::jobs::labels::SCHEDULE;
/// Label on every stowage Job: `backup` or `probe`.
pub const LABEL_KIND: &str = crate::jobs::labels::KIND;
/// Label the Job controller puts on a Job's pods.
pub const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// Field manager of the controller's status writes.
pub const FIELD_MANAGER: &str = "stowage-controller";

/// Why a reconcile failed. Each variant has a stable [`Error::metric_label`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API request failed.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The Job for a run cannot be built from the target's spec.
    #[error("cannot build the Job of BackupTarget {target}: {message}")]
    BuildJob {
        /// The target.
        target: String,
        /// What is wrong.
        message: String,
    },
    /// The object has no namespace (both kinds are namespaced; the API server guarantees one).
    #[error("{kind} {name} has no namespace")]
    MissingNamespace {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A status could not be serialized.
    #[error("cannot serialize the status: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A cached object does not match this operator's types (the API server validated it
    /// against the installed CRD, so the CRD is of another release).
    #[error(
        "cannot read {kind} {name} with this operator's types: {source}; install the CRDs of the operator's release"
    )]
    Decode {
        /// The kind.
        kind: &'static str,
        /// `namespace/name`.
        name: String,
        /// What did not match.
        source: serde_json::Error,
    },
    /// A cached object's packed copy does not unpack: a fault of the operator, not of the
    /// object.
    #[error("cannot read {kind} {name} from the operator's cache: {message}")]
    Cache {
        /// The kind.
        kind: &'static str,
        /// `namespace/name`.
        name: String,
        /// What failed, and what to do.
        message: String,
    },
}

impl Error {
    /// A short, stable label for `stowage_reconcile_errors_total{error=...}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "kube",
            Error::BuildJob { .. } => "build_job",
            Error::MissingNamespace { .. } => "missing_namespace",
            Error::Serialize(_) => "serialize",
            Error::Decode { .. } => "decode",
            Error::Cache { .. } => "cache",
        }
    }
}

/// Settings the reconcilers use, from the flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Allowed plugin keys; `None` allows all.
    pub allowed_plugins: Option<Vec<String>>,
    /// Defaults of the Jobs built for runs.
    pub job_defaults: JobDefaults,
    /// Most probe Jobs running at once (`--max-concurrent-probes`).
    pub max_concurrent_probes: usize,
}

/// Most reconciles running at once per controller: thousands of objects that all need a
/// reconcile (a start, a relist) queue instead of sending thousands of requests at once.
pub const RECONCILE_CONCURRENCY: u16 = 32;

/// Most Job creations in flight at once, over all reconcilers: a tick of hundreds of
/// schedules creates its Jobs in parallel without flooding the API server.
pub const JOB_CREATE_CONCURRENCY: usize = 64;

/// State shared by the reconcilers and the HTTP server.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Settings from the flags.
    pub settings: Settings,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Who publishes the Kubernetes Events; see [`Context::recorder`].
    reporter: Reporter,
    /// Consecutive failures per object, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The leader fence, when leader election is on; see [`Context::may_write`].
    pub fence: Option<leader::LeaderFence>,
    /// What the watches show, and the runs started but not seen yet.
    pub cache: Arc<cache::Cache>,
    /// Target statuses written that the cache may not show yet ([`cache::WrittenStatuses`]).
    pub target_statuses: cache::WrittenStatuses<crate::api::BackupTargetStatus>,
    /// The same for schedules.
    pub schedule_statuses: cache::WrittenStatuses<crate::api::BackupScheduleStatus>,
    /// The same for restores.
    pub restore_statuses: cache::WrittenStatuses<crate::api::BackupRestoreStatus>,
    /// The Job creations: bounded ([`JOB_CREATE_CONCURRENCY`]) and counted.
    pub job_creates: Arc<JobCreates>,
    /// Bounds the event batches published in the background ([`events::publish_later`]).
    pub event_slots: Arc<tokio::sync::Semaphore>,
    /// Publish background events inline (unit tests, which need a fixed order).
    pub events_inline: bool,
}

impl Context {
    /// A context.
    pub fn new(
        client: Client,
        settings: Settings,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        reporter: Reporter,
    ) -> Self {
        let cache = Arc::new(cache::Cache::new(settings.max_concurrent_probes));
        Context {
            client,
            settings,
            clock,
            metrics,
            reporter,
            failures: Mutex::new(HashMap::new()),
            fence: None,
            cache,
            target_statuses: Default::default(),
            schedule_statuses: Default::default(),
            restore_statuses: Default::default(),
            job_creates: Default::default(),
            event_slots: Arc::new(tokio::sync::Semaphore::new(events::EVENT_CONCURRENCY)),
            events_inline: false,
        }
    }

    /// A recorder for one batch of Kubernetes Events. kube's `Recorder` keeps every
    /// event it published for six minutes (to count repeats as a series) and prunes them
    /// only when it publishes again, so one shared recorder held the ~2 KiB of each of a
    /// tick's thousands of events until the next event, however long that was. A recorder
    /// per batch is dropped with it; stowage publishes each event once per status
    /// transition, so there are no repeats to count.
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }

    /// The installed BackupPlugins, as the plugin watch checked them.
    pub fn plugins(&self) -> &crate::installed::InstalledPlugins {
        &self.settings.job_defaults.installed_plugins
    }

    /// Whether this replica may write now: always without leader election, otherwise only
    /// while it holds the leader fence. The client refuses writes without it anyway;
    /// reconcilers check it first to stop early instead of failing.
    pub fn may_write(&self) -> bool {
        self.fence.as_ref().is_none_or(leader::LeaderFence::is_held)
    }

    /// Whether a reconcile that can wait should wait for a tick's Job creations in flight:
    /// when a tick creates thousands of Jobs, the API server's time goes to them first,
    /// and the work that records progress (a finished run, a schedule's active Jobs, a
    /// probe) follows as soon as they are done, or after [`cache::DEFER_LIMIT`] at most.
    /// `true`: the caller does nothing now; `object` is reconciled again when the
    /// creations are done.
    pub fn defer_while_creating(&self, object: cache::Deferred) -> bool {
        let now = std::time::Instant::now();
        if !self.job_creates.ticking() || !self.cache.defer(object.clone(), now) {
            self.cache.undefer(&object);
            return false;
        }
        if !self.job_creates.ticking() {
            // The burst ended between the check and the registration: wake it now.
            self.cache.wake_deferred();
        }
        true
    }

    /// Whether BackupSchedule `namespace/name` exists; `None` until the caches are synced.
    pub fn schedule_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        self.cache.schedule_exists(namespace, name)
    }

    /// Cap a requeue delay by the clock's limit (a test clock that jumps needs short ones).
    pub fn requeue(&self, after: Duration) -> Action {
        let after = match self.clock.max_requeue() {
            Some(cap) => after.min(cap),
            None => after,
        };
        Action::requeue(after.max(Duration::from_secs(1)))
    }

    /// How often every target is reconciled again in one sweep: [`target::RESYNC`],
    /// capped like a requeue by a test clock.
    fn sweep_period(&self) -> Duration {
        let cap = self.clock.max_requeue().unwrap_or(target::RESYNC);
        target::RESYNC.min(cap).max(Duration::from_secs(1))
    }

    fn backoff(&self, key: String) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        error_backoff(*n)
    }

    /// Drop the error backoff of a deleted `K` named `namespace/name`.
    fn forget_failures<K: Resource>(&self, namespace: &str, name: &str)
    where
        K::DynamicType: Default,
    {
        self.succeeded(&key_of::<K>(namespace, name));
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Delay before retrying after `failures` consecutive failed reconciles: 5 s doubling up
/// to 5 minutes.
pub fn error_backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    Duration::from_secs(5u64.saturating_mul(1u64 << exp)).min(Duration::from_secs(300))
}

/// `Kind/namespace/name`: the key of the per-object state the operator keeps (error
/// backoff, statuses written but not seen yet).
fn object_key<K: Resource>(obj: &K) -> String
where
    K::DynamicType: Default,
{
    key_of::<K>(&obj.namespace().unwrap_or_default(), &obj.name_any())
}

/// [`object_key`] of the `K` named `namespace/name`.
fn key_of<K: Resource>(namespace: &str, name: &str) -> String
where
    K::DynamicType: Default,
{
    format!("{}/{namespace}/{name}", K::kind(&K::DynamicType::default()))
}

/// Shared `error_policy`: count, log, back off exponentially per object.
fn error_policy<K: Resource>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
    controller: &str,
) -> Action
where
    K::DynamicType: Default,
{
    ctx.metrics
        .reconcile_failed(controller, error.metric_label());
    let delay = ctx.backoff(object_key(obj.as_ref()));
    tracing::warn!(
        controller,
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any(),
        error = %error,
        retry_in_seconds = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Why a Job is created: a schedule's tick (thousands at once), or one target's run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateFor {
    /// A BackupSchedule's tick: reconciles that can wait wait for these
    /// ([`Context::defer_while_creating`]).
    Tick,
    /// One target's probe or on-demand backup.
    Target,
}

/// Create the Job of a run reserved in the cache, waiting for one of the
/// [`JOB_CREATE_CONCURRENCY`] slots, and tell the cache how it went.
pub async fn create_job(
    ctx: &Context,
    api: &Api<Job>,
    job: &Job,
    purpose: CreateFor,
) -> Result<Option<String>, kube::Error> {
    let created = async {
        // A Job on an application's claim may have to follow the pod that uses it.
        let placed = match placement::app_claim_of(job) {
            None => None,
            Some(claim) => {
                let mut placed = job.clone();
                placement::place(&ctx.client, &ctx.cache, &mut placed, &claim).await?;
                Some(placed)
            }
        };
        let job = placed.as_ref().unwrap_or(job);
        let _pending = ctx.job_creates.pending(purpose);
        let _slot = ctx.job_creates.slots.acquire().await;
        post_job(api, job)
            .await
            .map(|created| created.0.metadata.uid)
    }
    .await;
    let namespace = job.namespace().unwrap_or_default();
    ctx.cache.created(&namespace, &job.name_any(), &created);
    created
}

/// `POST` `job` as `Api::create` does, but read the answer (the whole Job, as created) as
/// a [`watched::WatchedJob`]: a tick creates thousands of Jobs, and only the uid of each
/// answer is used.
async fn post_job(api: &Api<Job>, job: &Job) -> Result<watched::WatchedJob, kube::Error> {
    let body = serde_json::to_vec(job).map_err(kube::Error::SerdeError)?;
    let mut request = kube::core::Request::new(api.resource_url())
        .create(&kube::api::PostParams::default(), body)
        .map_err(kube::Error::BuildRequest)?;
    request.extensions_mut().insert("create");
    api.clone().into_client().request(request).await
}

/// The operator's Job creations: at most [`JOB_CREATE_CONCURRENCY`] in flight, first come
/// first served, and a count of those waiting or in flight, so that writes nobody waits
/// for (events) stay behind them: when every schedule fires on the same minute, the
/// API server's time goes to starting the backups first.
pub struct JobCreates {
    /// The slots.
    slots: tokio::sync::Semaphore,
    /// Creations waiting for a slot or in flight.
    pending: tokio::sync::watch::Sender<usize>,
    /// Those of them for a tick ([`CreateFor::Tick`]).
    ticks: tokio::sync::watch::Sender<usize>,
    /// How many times `ticks` fell back to zero, and when it last did.
    bursts_ended: tokio::sync::watch::Sender<(u64, Option<std::time::Instant>)>,
}

/// How long after a tick's last creation the tick still counts as creating its Jobs: a
/// tick of hundreds of schedules creates their Jobs in waves (a wave per batch of
/// schedule reconciles), with moments between them when none is in flight.
pub const TICK_QUIET: Duration = Duration::from_secs(3);

impl Default for JobCreates {
    fn default() -> Self {
        JobCreates {
            slots: tokio::sync::Semaphore::new(JOB_CREATE_CONCURRENCY),
            pending: tokio::sync::watch::Sender::new(0),
            ticks: tokio::sync::watch::Sender::new(0),
            bursts_ended: tokio::sync::watch::Sender::new((0, None)),
        }
    }
}

impl JobCreates {
    /// Count one creation as pending until the guard is dropped.
    fn pending(&self, purpose: CreateFor) -> PendingCreate<'_> {
        self.pending.send_modify(|n| *n += 1);
        let tick = purpose == CreateFor::Tick;
        if tick {
            self.ticks.send_modify(|n| *n += 1);
        }
        PendingCreate {
            creates: self,
            tick,
        }
    }

    /// Wait until no creation is pending and no tick has created a Job for
    /// [`TICK_QUIET`].
    pub async fn idle(&self) {
        let mut pending = self.pending.subscribe();
        loop {
            // The sender lives in the context, as long as any caller: never closed.
            let _ = pending.wait_for(|n| *n == 0).await;
            match self.tick_quiet_in() {
                None => return,
                Some(left) => tokio::time::sleep(left).await,
            }
        }
    }

    /// Whether some tick's Job creations are waiting for a slot or in flight right now.
    pub fn tick_creations_pending(&self) -> bool {
        *self.ticks.borrow() > 0
    }

    /// Whether a tick is creating its Jobs: one of its creations is pending, or the last
    /// one ended less than [`TICK_QUIET`] ago.
    pub fn ticking(&self) -> bool {
        *self.ticks.borrow() > 0 || self.tick_quiet_in().is_some()
    }

    /// How long until [`TICK_QUIET`] has passed since the last tick creation ended;
    /// `None` when it has (or none ever ran).
    fn tick_quiet_in(&self) -> Option<Duration> {
        let (_, ended) = *self.bursts_ended.borrow();
        TICK_QUIET
            .checked_sub(ended?.elapsed())
            .filter(|d| !d.is_zero())
    }

    /// Wait for the end of a tick's creations: none pending, for [`TICK_QUIET`].
    async fn tick_ended(
        &self,
        ended: &mut tokio::sync::watch::Receiver<(u64, Option<std::time::Instant>)>,
    ) {
        // The sender lives in the context, as long as any caller: never closed.
        let _ = ended.changed().await;
        loop {
            let _ = self.ticks.subscribe().wait_for(|n| *n == 0).await;
            match self.tick_quiet_in() {
                None => return,
                Some(left) => tokio::time::sleep(left).await,
            }
        }
    }
}

/// One pending creation of [`JobCreates`].
struct PendingCreate<'a> {
    creates: &'a JobCreates,
    tick: bool,
}

impl Drop for PendingCreate<'_> {
    fn drop(&mut self) {
        self.creates
            .pending
            .send_modify(|n| *n = n.saturating_sub(1));
        if !self.tick {
            return;
        }
        let mut last = false;
        self.creates.ticks.send_modify(|n| {
            *n = n.saturating_sub(1);
            last = *n == 0;
        });
        if last {
            self.creates.bursts_ended.send_modify(|(n, at)| {
                *n = n.wrapping_add(1);
                *at = Some(std::time::Instant::now());
            });
        }
    }
}

/// Wake the targets and schedules whose reconciles waited for a tick's Job creations
/// ([`Context::defer_while_creating`]) each time they end ([`TICK_QUIET`] after the
/// last). Every end is seen, however short the tick (a counter is watched, not the
/// pending count).
async fn wake_deferred_after_creations(ctx: Arc<Context>) {
    let mut ended = ctx.job_creates.bursts_ended.subscribe();
    loop {
        ctx.job_creates.tick_ended(&mut ended).await;
        ctx.cache.wake_deferred();
    }
}

/// Delete a Job and its pods (background propagation); a Job already gone is fine.
pub async fn delete_job(api: &Api<Job>, name: &str) -> Result<(), Error> {
    let params = kube::api::DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..kube::api::DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether an API error status means retrying the same request cannot help (the request is
/// invalid, forbidden or refused by admission); conflicts, throttling and server errors
/// are retried.
pub fn is_rejection(code: u16) -> bool {
    (400..500).contains(&code) && code != 409 && code != 429
}

/// Why a Job creation was refused, as `(reason, message)` for the run's status and
/// events: the application's claim cannot be mounted ([`placement::REASON`], the
/// message says what to do), or the API server rejected the Job (`JobRejected`).
pub fn refusal(job: &str, status: &kube::core::Status) -> (&'static str, String) {
    if status.reason == placement::REASON {
        (
            placement::REASON,
            format!("Job {job} not started: {}", status.message),
        )
    } else {
        (
            events::reasons::JOB_REJECTED,
            format!(
                "the API server rejected Job {job}: {}; fix spec.job of the target",
                status.message
            ),
        )
    }
}

/// Whether a claim can be mounted by one node only.
pub fn is_single_node_claim(pvc: &PersistentVolumeClaim) -> bool {
    placement::ClaimAccess::of(pvc) != placement::ClaimAccess::ManyNodes
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: a log read by `kubectl logs` or a collector is plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

type ShutdownSignal = Shared<BoxFuture<'static, ()>>;

fn shutdown_signal() -> ShutdownSignal {
    async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
                        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
    }
    .boxed()
    .shared()
}

/// `stowage controller`: run until SIGTERM/SIGINT.
pub async fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    init_tracing(args.log_format);
    args.check()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot build a Kubernetes client (in-cluster config or KUBECONFIG): {e}")
    })?;
    let namespaces = args.watched_namespaces();
    check_crds(&client, &namespaces).await?;

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::default().register(&mut registry);
    let identity = args.identity();
    let settings = Settings {
        allowed_plugins: args.allowed_plugin_keys()?,
        job_defaults: job_defaults(&args),
        max_concurrent_probes: usize::try_from(args.max_concurrent_probes).unwrap_or(usize::MAX),
    };
    // With leader election, the reconcilers' client refuses writes while this replica does
    // not hold the leader fence; the election itself writes the Lease with `client`.
    let fence = args.leader_election.then(|| {
        leader::LeaderFence::new(
            &args.lease_name,
            &args.lease_namespace(),
            leader::LeaseTiming::from_seconds(args.lease_duration_seconds),
        )
    });
    let writer = match &fence {
        Some(fence) => leader::fenced_client(client.clone(), fence.clone()),
        None => client.clone(),
    };
    let mut context = Context::new(
        writer,
        settings,
        args.clock(),
        metrics,
        Reporter {
            controller: "stowage-controller".into(),
            instance: Some(identity.clone()),
        },
    );
    context.fence = fence.clone();
    let ctx = Arc::new(context);
    let health = server::Health::default();
    let shutdown = shutdown_signal();

    let server_task = tokio::spawn(server::serve(
        args.bind_address,
        Arc::new(registry),
        health.clone(),
        shutdown.clone(),
    ));
    tracing::info!(
        bind_address = %args.bind_address,
        namespaces = if namespaces.is_empty() { "*".to_owned() } else { namespaces.join(",") },
        identity,
        leader_election = args.leader_election,
        "stowage controller starting"
    );

    let lease = if let Some(fence) = fence {
        let elector = leader::Elector::start(client.clone(), &identity, fence).await?;
        health.set_standby();
        tokio::select! {
            leading = elector.wait_until_leader() => {
                if !leading {
                    anyhow::bail!("leader election stopped before this replica became the leader");
                }
            }
            _ = shutdown.clone() => {
                elector.release().await;
                server_task.abort();
                return Ok(ExitCode::SUCCESS);
            }
        }
        tracing::info!(lease = %args.lease_name, "became the leader; starting the controllers");
        health.set_leader_syncing();
        Some(elector)
    } else {
        health.set_leader_syncing();
        None
    };

    let lost_leadership = match &lease {
        Some(elector) => elector.lost().boxed(),
        None => futures::future::pending().boxed(),
    };
    let stop: ShutdownSignal = {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                // Elector::lost logged why.
                _ = lost_leadership => {}
            }
        }
        .boxed()
        .shared()
    };

    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    if let (Some(address), Some(endpoint)) = (args.webhook_bind_address, args.webhook_endpoint()?) {
        let client = ctx.client.clone();
        let plugins = ctx.plugins().clone();
        let name = args.webhook_configuration_name.clone();
        tokio::spawn(async move {
            if let Err(e) = webhook::run(client, plugins, address, endpoint, name).await {
                tracing::error!(
                    error = %e,
                    "the admission webhook is not running; configs are still checked before every run"
                );
            }
        });
    }
    let mut runs = vec![plugins::watch(&ctx, stop.clone())];
    for scope in scopes {
        runs.extend(scope_controllers(&ctx, scope, stop.clone()));
    }
    tokio::spawn(wake_deferred_after_creations(ctx.clone()));
    {
        let health = health.clone();
        let ctx_ready = ctx.clone();
        tokio::spawn(async move {
            ctx_ready.cache.wait_synced().await;
            tracing::info!("caches synced; ready");
            health.set_leader_ready();
        });
    }
    run_on_own_tasks(runs).await;

    let lost = shutdown.peek().is_none();
    if let Some(elector) = lease {
        elector.release().await;
    }
    server_task.abort();
    if lost {
        return Ok(ExitCode::FAILURE);
    }
    tracing::info!("stowage controller stopped");
    Ok(ExitCode::SUCCESS)
}

async fn check_crds(client: &Client, namespaces: &[String]) -> anyhow::Result<()> {
    let params = ListParams::default().limit(1);
    let (targets, schedules): (Api<BackupTarget>, Api<BackupSchedule>) = match namespaces.first() {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    if let Err(e) = targets.list(&params).await {
        anyhow::bail!(
            "cannot list BackupTargets ({e}); are the CRDs installed (`stowage crd | kubectl apply -f -`) and is the RBAC in deploy/rbac/ bound?"
        );
    }
    if let Err(e) = schedules.list(&params).await {
        anyhow::bail!(
            "cannot list BackupSchedules ({e}); are the CRDs installed (`stowage crd | kubectl apply -f -`)?"
        );
    }
    let restores: Api<BackupRestore> = match namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    if let Err(e) = restores.list(&params).await {
        anyhow::bail!(
            "cannot list BackupRestores ({e}); are this release's CRDs installed (`stowage crd | kubectl apply -f -`) and does the operator's RBAC allow backuprestores?"
        );
    }
    Ok(())
}

/// The Job defaults from the flags.
pub fn job_defaults(args: &ControllerArgs) -> JobDefaults {
    JobDefaults {
        runner_image: args.runner_image.clone(),
        service_account_name: Some(args.runner_service_account.clone()),
        active_deadline_seconds: args.job_active_deadline_seconds,
        backoff_limit: args.job_backoff_limit,
        ..JobDefaults::default()
    }
}

fn api_in<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

type Running = BoxFuture<'static, ()>;

/// Run each watch and controller on a task of its own until all have ended.
///
/// On one task (as `join_all` runs them), the Job watch was read only between the
/// polls of the controllers' reconciles: in a tick of thousands of runs it fell behind,
/// and the API server, which holds back its watch events for every client while one
/// is slow, delayed every watcher in the cluster before it closed ours. On their own
/// tasks the watches are read on whichever worker thread is free.
/// A panic in one task is raised here at once, as it would have been on one task.
async fn run_on_own_tasks(runs: Vec<Running>) {
    let mut tasks = tokio::task::JoinSet::new();
    for run in runs {
        tasks.spawn(run);
    }
    while let Some(ended) = tasks.join_next().await {
        if let Err(e) = ended
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// One item of a controller's `run` stream.
type ReconcileOutcome<K> =
    Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<Error, watcher::Error>>;

/// Handle what the controller stream yields for one reconcile request. kube-runtime does
/// not call the reconciler for an object that is no longer in its store (deleted, with no
/// finalizer); it yields `ObjectNotFound` instead, e.g. when a pending requeue or an owned
/// Job's deletion wakes a deleted object. Then `forget` removes the object's metric series.
fn handle_result<K: Resource>(
    controller: &'static str,
    ctx: Arc<Context>,
    forget: fn(&Context, &str, &str),
) -> impl Fn(ReconcileOutcome<K>) -> futures::future::Ready<()> {
    move |result| {
        if let Err(e) = result {
            if let kube::runtime::controller::Error::ObjectNotFound(obj) = &e {
                forget_deleted(&ctx, obj, forget);
            }
            tracing::debug!(controller, error = %e, "reconcile stream error");
        }
        futures::future::ready(())
    }
}

/// Remove what the operator keeps of a deleted object (its metric series, a status
/// written but not seen) with `forget(ctx, namespace, name)`.
fn forget_deleted(
    ctx: &Context,
    obj: &ObjectRef<kube::api::DynamicObject>,
    forget: fn(&Context, &str, &str),
) {
    let namespace = obj.namespace.as_deref().unwrap_or_default();
    forget(ctx, namespace, &obj.name);
    tracing::debug!(
        namespace,
        name = obj.name,
        "object is gone; its metrics are removed"
    );
}

/// What the caches keep of an object: everything but `managedFields` and kubectl's
/// last-applied copy of the object, which the controllers never read and which can be
/// larger than the rest.
fn strip_managed_fields<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Log a watch error; the watch retries with backoff.
fn log_watch_error(kind: &'static str, error: &watcher::Error) {
    tracing::warn!(kind, error = %error, "watch failed; retrying");
}

/// Run a watch whose events `apply` folds into the cache, until `stop`.
fn watch_into<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    stop: ShutdownSignal,
    mut sync: cache::SyncToken,
    apply: impl Fn(watcher::Event<K>, &mut cache::SyncToken) + Send + 'static,
) -> Running
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use kube::runtime::WatchStreamExt;
    watcher::watcher(api, config)
        .default_backoff()
        .take_until(stop)
        .for_each(move |event| {
            match event {
                Ok(event) => apply(event, &mut sync),
                Err(e) => log_watch_error(kind, &e),
            }
            futures::future::ready(())
        })
        .boxed()
}

/// Yields once every `period`, the first time one period from now.
fn every(period: Duration) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(period).await;
        Some(((), ()))
    })
}

/// Objects per page when Jobs and pods are listed (kube's default is 500). A full Job
/// of a run is about 5 KiB of JSON and several times that parsed.
const JOB_LIST_PAGE: u32 = 100;

/// Everything that runs for one watched scope (a namespace, or all): one watch per kind
/// feeding [`cache::Cache`], and the two controllers, woken by the cache's triggers.
fn scope_controllers(
    ctx: &Arc<Context>,
    scope: Option<String>,
    stop: ShutdownSignal,
) -> Vec<Running> {
    use kube::runtime::reflector::{self, reflector};
    use kube::runtime::{WatchStreamExt, watcher::Event};

    let ns = scope.as_deref();
    let cache = ctx.cache.clone();
    let (target_tx, target_rx) = futures::channel::mpsc::unbounded();
    let (schedule_tx, schedule_rx) = futures::channel::mpsc::unbounded();
    let (target_reader, target_writer) = reflector::store::<watched::WatchedTarget>();
    let (schedule_reader, schedule_writer) = reflector::store::<BackupSchedule>();
    cache.add_scope(
        scope.clone(),
        target_reader.clone(),
        schedule_reader.clone(),
        target_tx,
        schedule_tx,
    );
    // Registered before anything runs, so readiness and reconcilers wait for all five.
    let mut target_sync = cache.syncing();
    let mut schedule_sync = cache.syncing();
    let job_sync = cache.syncing();
    let pod_sync = cache.syncing();
    let claim_sync = cache.syncing();

    // BackupTargets: the target controller's store; their changes wake the schedules that
    // select them, only when what schedules read changed.
    let targets = {
        let cache = cache.clone();
        let ctx_for_events = ctx.clone();
        // `(namespace, name)`: an `ObjectRef` would keep the version and uid too.
        let mut digests: HashMap<(String, String), cache::TargetDigest> = HashMap::new();
        let mut listed: Option<std::collections::HashSet<(String, String)>> = None;
        let key_of = |t: &watched::WatchedTarget| (t.namespace().unwrap_or_default(), t.name_any());
        let mut on_event = move |event: &Event<watched::WatchedTarget>| match event {
            Event::Apply(t) | Event::InitApply(t) => {
                let key = key_of(t);
                if let Some(seen) = listed.as_mut() {
                    seen.insert(key.clone());
                }
                let new = cache::TargetDigest::of(t);
                let old = digests.insert(key, new.clone());
                cache.target_changed(old.as_ref(), Some(&new), &t.namespace().unwrap_or_default());
            }
            Event::Delete(t) => {
                let key = key_of(t);
                let old = digests.remove(&key);
                cache.target_changed(old.as_ref(), None, &key.0);
                // No timer is left to report it gone: forget it now.
                target::forget(&ctx_for_events, &key.0, &key.1);
            }
            Event::Init => listed = Some(Default::default()),
            Event::InitDone => {
                let seen = listed.take().unwrap_or_default();
                let gone: Vec<(String, String)> = digests
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    let old = digests.remove(&key);
                    cache.target_changed(old.as_ref(), None, &key.0);
                    target::forget(&ctx_for_events, &key.0, &key.1);
                }
                target_sync.done();
            }
        };
        let stream = reflector(
            target_writer,
            watcher::watcher(
                api_in::<watched::WatchedTarget>(&ctx.client, ns),
                watcher::Config::default(),
            )
            .default_backoff()
            .modify(strip_managed_fields),
        )
        .inspect(move |event| match event {
            Ok(event) => on_event(event),
            Err(e) => log_watch_error("BackupTarget", e),
        })
        .applied_objects();
        let ctx_for_results = ctx.clone();
        Controller::for_stream(stream, target_reader)
            .with_config(Config::default().concurrency(RECONCILE_CONCURRENCY))
            .reconcile_on(target_rx)
            // A safety net instead of a timer per target: every target is reconciled
            // again from the cache once a period, in one sweep.
            .reconcile_all_on(every(ctx.sweep_period()))
            .graceful_shutdown_on(stop.clone())
            .run(
                target::reconcile_watched,
                |obj, err, ctx| error_policy(obj, err, ctx, target::CONTROLLER),
                ctx.clone(),
            )
            .for_each(handle_result::<watched::WatchedTarget>(
                target::CONTROLLER,
                ctx_for_results,
                target::forget,
            ))
            .boxed()
    };

    let schedules = {
        let stream = reflector(
            schedule_writer,
            watcher::watcher(
                api_in::<BackupSchedule>(&ctx.client, ns),
                watcher::Config::default(),
            )
            .default_backoff()
            .modify(strip_managed_fields),
        )
        .inspect(move |event| match event {
            Ok(Event::InitDone) => schedule_sync.done(),
            Ok(_) => {}
            Err(e) => log_watch_error("BackupSchedule", e),
        })
        .applied_objects();
        let ctx_for_results = ctx.clone();
        Controller::for_stream(stream, schedule_reader)
            .with_config(Config::default().concurrency(RECONCILE_CONCURRENCY))
            .reconcile_on(schedule_rx)
            .graceful_shutdown_on(stop.clone())
            .run(
                schedule::reconcile,
                |obj, err, ctx| error_policy(obj, err, ctx, schedule::CONTROLLER),
                ctx.clone(),
            )
            .for_each(handle_result::<BackupSchedule>(
                schedule::CONTROLLER,
                ctx_for_results,
                schedule::forget,
            ))
            .boxed()
    };

    // Jobs and their pods: compact, in the cache; a change wakes its target and schedule.
    // A run's pod that cannot start (missing Secret, image pull failure) shows in its
    // target's conditions as soon as the kubelet or scheduler says so.
    // Decoded as `watched` kinds: only what the cache keeps is parsed. Listed in pages
    // of JOB_LIST_PAGE, which bounds the transient memory of a relist with thousands of
    // Jobs (a page's JSON is read whole before it is decoded).
    let by_target = || {
        watcher::Config::default()
            .labels(LABEL_TARGET)
            .page_size(JOB_LIST_PAGE)
    };
    let jobs = {
        let cache = cache.clone();
        watch_into(
            api_in::<watched::WatchedJob>(&ctx.client, ns),
            by_target(),
            "Job",
            stop.clone(),
            job_sync,
            move |event, sync| cache.apply_job_event(watched::unwrap_event(event, |j| j.0), sync),
        )
    };
    let pods = {
        let cache = cache.clone();
        watch_into(
            api_in::<watched::WatchedPod>(&ctx.client, ns),
            by_target(),
            "Pod",
            stop.clone(),
            pod_sync,
            move |event, sync| cache.apply_pod_event(watched::unwrap_event(event, |p| p.0), sync),
        )
    };
    let stop_restores = stop.clone();
    let claims = watch_into(
        api_in::<PersistentVolumeClaim>(&ctx.client, ns),
        watcher::Config::default(),
        "PersistentVolumeClaim",
        stop,
        claim_sync,
        move |event, sync| cache.apply_claim_event(event, sync),
    );
    let restores = {
        let (restore_tx, restore_rx) = futures::channel::mpsc::unbounded();
        ctx.cache.add_restore_route(scope.clone(), restore_tx);
        let (reader, writer) = reflector::store::<BackupRestore>();
        let stream = reflector(
            writer,
            watcher::watcher(
                api_in::<BackupRestore>(&ctx.client, ns),
                watcher::Config::default(),
            )
            .default_backoff()
            .modify(strip_managed_fields),
        )
        .inspect(|event| {
            if let Err(e) = event {
                log_watch_error("BackupRestore", e);
            }
        })
        .applied_objects();
        let ctx_for_results = ctx.clone();
        Controller::for_stream(stream, reader)
            .with_config(Config::default().concurrency(RECONCILE_CONCURRENCY))
            .reconcile_on(restore_rx)
            .graceful_shutdown_on(stop_restores)
            .run(
                restore::reconcile,
                |obj, err, ctx| error_policy(obj, err, ctx, restore::CONTROLLER),
                ctx.clone(),
            )
            .for_each(handle_result::<BackupRestore>(
                restore::CONTROLLER,
                ctx_for_results,
                restore::forget,
            ))
            .boxed()
    };
    vec![targets, schedules, jobs, pods, claims, restores]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_for_a_deleted_object_removes_its_series() {
        let (ctx, _api, _clock, registry) = fixtures::context();
        let at = Some(fixtures::now());
        ctx.metrics
            .target_observed("shop", "app-db", at, Some(4096));
        ctx.metrics.target_observed("shop", "other-db", at, Some(1));
        ctx.metrics.schedule_observed("shop", "nightly", at);
        // What kube-runtime's Controller yields for a request whose object is gone.
        let gone = |name: &str| {
            Err(kube::runtime::controller::Error::ObjectNotFound(Box::new(
                ObjectRef::<BackupTarget>::new(name).within("shop").erase(),
            )))
        };
        let handle = handle_result::<BackupTarget>(target::CONTROLLER, ctx.clone(), target::forget);
        handle(gone("app-db")).await;
        let text = metrics::render(&registry).unwrap();
        assert!(!text.contains(r#"target="app-db""#), "{text}");
        assert!(text.contains(r#"target="other-db""#), "{text}");
        assert!(text.contains(r#"schedule="nightly""#), "{text}");

        let handle =
            handle_result::<BackupSchedule>(schedule::CONTROLLER, ctx.clone(), schedule::forget);
        handle(Err(kube::runtime::controller::Error::ObjectNotFound(
            Box::new(
                ObjectRef::<BackupSchedule>::new("nightly")
                    .within("shop")
                    .erase(),
            ),
        )))
        .await;
        let text = metrics::render(&registry).unwrap();
        assert!(!text.contains(r#"schedule="nightly""#), "{text}");
        assert!(text.contains(r#"target="other-db""#), "{text}");
    }

    #[tokio::test]
    async fn reconciles_that_can_wait_wait_for_a_burst_of_job_creations_to_end() {
        use futures::StreamExt;
        let (ctx, _api, _clock, _registry) = fixtures::context();
        let (targets, _) = kube::runtime::reflector::store::<watched::WatchedTarget>();
        let (schedules, _) = kube::runtime::reflector::store::<BackupSchedule>();
        let (target_tx, mut woken) = futures::channel::mpsc::unbounded();
        let (schedule_tx, _schedules_woken) = futures::channel::mpsc::unbounded();
        ctx.cache
            .add_scope(None, targets, schedules, target_tx, schedule_tx);
        tokio::spawn(wake_deferred_after_creations(ctx.clone()));
        let app_db = || cache::Deferred::Target("shop".into(), "app-db".into());

        // No creation pending: nothing waits.
        assert!(!ctx.defer_while_creating(app_db()));
        // A creation pending: the reconcile waits, and is not woken while it lasts.
        let probing = ctx.job_creates.pending(CreateFor::Target);
        assert!(
            !ctx.defer_while_creating(app_db()),
            "a probe's creation holds nothing up"
        );
        let creating = ctx.job_creates.pending(CreateFor::Tick);
        assert!(ctx.defer_while_creating(app_db()));
        tokio::task::yield_now().await;
        assert!(woken.try_recv().is_err(), "woken while Jobs are created");
        // The burst ends: the next wave of the tick may follow for TICK_QUIET, then the
        // target is reconciled again.
        drop(creating);
        drop(probing);
        assert!(ctx.defer_while_creating(app_db()), "right after a wave");
        let again = tokio::time::timeout(Duration::from_secs(5), woken.next())
            .await
            .expect("woken when the creations ended");
        assert_eq!(again, Some(ObjectRef::new("app-db").within("shop")));
        assert!(!ctx.defer_while_creating(app_db()));
    }

    #[test]
    fn the_error_backoff_grows_and_is_capped() {
        assert_eq!(error_backoff(1), Duration::from_secs(5));
        assert_eq!(error_backoff(2), Duration::from_secs(10));
        assert_eq!(error_backoff(4), Duration::from_secs(40));
        assert_eq!(error_backoff(7), Duration::from_secs(300));
        assert_eq!(error_backoff(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn only_single_node_claims_are_serialized() {
        let pvc = |modes: serde_json::Value| -> PersistentVolumeClaim {
            serde_json::from_value(serde_json::json!({"spec": {"accessModes": modes}})).unwrap()
        };
        assert!(is_single_node_claim(&pvc(serde_json::json!([
            "ReadWriteOnce"
        ]))));
        assert!(is_single_node_claim(&pvc(serde_json::json!([
            "ReadWriteOncePod"
        ]))));
        assert!(!is_single_node_claim(&pvc(serde_json::json!([
            "ReadWriteMany"
        ]))));
    }

    fn rbac_rules() -> Vec<(String, serde_json::Value)> {
        use serde::Deserialize;
        let mut rules = Vec::new();
        for text in [
            include_str!("../../deploy/rbac/operator.yaml"),
            include_str!("../../deploy/rbac/runner.yaml"),
        ] {
            for doc in serde_yaml_ng::Deserializer::from_str(text) {
                let value = serde_json::Value::deserialize(doc).unwrap();
                let kind = value["kind"].as_str().unwrap_or_default().to_owned();
                for rule in value["rules"].as_array().cloned().unwrap_or_default() {
                    rules.push((kind.clone(), rule));
                }
            }
        }
        rules
    }

    #[test]
    fn rbac_never_grants_secrets_or_wildcards() {
        let rules = rbac_rules();
        assert!(!rules.is_empty());
        for (kind, rule) in &rules {
            for field in ["resources", "verbs", "apiGroups"] {
                for item in rule[field].as_array().unwrap() {
                    let item = item.as_str().unwrap();
                    assert_ne!(item, "*", "{kind} grants {field} *: {rule}");
                    assert!(
                        !item.starts_with("secrets"),
                        "{kind} grants secrets: {rule}"
                    );
                }
            }
        }
    }

    #[test]
    fn rbac_grants_what_the_controller_uses() {
        let rules = rbac_rules();
        let grants = |group: &str, resource: &str, verb: &str| {
            rules.iter().any(|(_, r)| {
                let has = |f: &str, v: &str| r[f].as_array().unwrap().iter().any(|x| x == v);
                has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
            })
        };
        for verb in ["get", "list", "watch", "patch"] {
            assert!(grants("stowage.dev", "backuptargets", verb), "{verb}");
            assert!(grants("stowage.dev", "backupschedules", verb), "{verb}");
        }
        assert!(grants("stowage.dev", "backuptargets/status", "patch"));
        assert!(grants("stowage.dev", "backupschedules/status", "patch"));
        for verb in ["create", "get", "list", "watch", "delete"] {
            assert!(grants("batch", "jobs", verb), "{verb}");
        }
        assert!(grants("", "pods", "list"));
        assert!(grants("", "persistentvolumeclaims", "get"));
        assert!(grants("events.k8s.io", "events", "create"));
        // The election reads, creates and replaces its Lease (see `leader`).
        for verb in ["get", "create", "update"] {
            assert!(grants("coordination.k8s.io", "leases", verb), "{verb}");
        }
        assert!(!grants("batch", "jobs", "update"), "no more than used");
    }
}
