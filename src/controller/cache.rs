//! The operator's view of the cluster: one watch per kind, kept in memory, compact.
//!
//! Reconcilers read everything from here and never LIST: a reconcile costs no API read,
//! so thousands of targets, their Jobs and pods cost the API server one watch per kind.
//! BackupTargets and BackupSchedules are kept whole (without `managedFields`) in the
//! controllers' reflector stores; Jobs, pods and claims are kept as the few fields the
//! controller decides from ([`RunJob`], [`PodSummary`], a claim's access mode), so memory
//! grows by a few hundred bytes per Job, not by its pod template.
//!
//! The cache also holds what this replica has started but not seen yet: a Job created a
//! moment ago is not in the watch yet, so [`Cache::plan_starts`] records each run it lets
//! start (a reservation) until the Job shows up. Start decisions are taken under one lock
//! over the index and the reservations, so two reconcilers (two schedules, a schedule and
//! `backup-now`) never both see an idle target and both start it, and no API request is
//! made while the lock is held.
//!
//! Probe Jobs are limited to `--max-concurrent-probes` at a time ([`Cache::try_start_probe`]);
//! targets that wait for a slot are woken in order as probes finish.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::channel::mpsc::UnboundedSender;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};

use crate::api::{BackupRestore, BackupSchedule, BackupTarget};
use crate::jobs::{RunKind, job_kind};

use super::runs::{self, ActiveRun, StartDecision, StartRequest};
use super::status::{self, JobState, StartFailure};
use super::watched::{ReadTargetError, WatchedTarget};

/// What the controller keeps of one stowage Job: its identity, its run, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunJob {
    /// The Job's name.
    pub name: String,
    /// The Job's uid.
    pub uid: Option<String>,
    /// Backup, probe or restore (label `stowage.dev/kind`); `None` for a Job without it.
    pub kind: Option<RunKind>,
    /// The BackupTarget's full name (annotation, else the possibly shortened label).
    pub target: String,
    /// The BackupSchedule's full name, for a scheduled run.
    pub schedule: Option<String>,
    /// The claim its pod mounts.
    pub claim: Option<String>,
    /// Running, or how it ended.
    pub state: JobState,
    /// When the Job was created.
    pub created: Option<Timestamp>,
    /// When the Job controller started it.
    pub start_time: Option<Timestamp>,
    /// When it finished (its `Complete` or `Failed` condition).
    pub finish_time: Option<Timestamp>,
    /// The `Failed` condition's reason, for a failed Job.
    pub failed_reason: Option<String>,
    /// The `Failed` condition's message, for a failed Job.
    pub failed_message: Option<String>,
    /// Whether it is being deleted.
    pub deleting: bool,
    /// The BackupRestore it runs, for a restore (annotation `stowage.dev/restore`).
    pub restore: Option<String>,
    /// The target generation it was built from (annotation `stowage.dev/generation`);
    /// `None` for Jobs of versions that did not write it.
    pub generation: Option<i64>,
}

impl RunJob {
    /// The compact form of `job`.
    pub fn from_job(job: &Job) -> RunJob {
        let annotation = |key: &str| job.annotations().get(key).cloned();
        let state = status::job_state(job);
        let condition = |type_: &str| {
            job.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == type_ && c.status == "True")
                .cloned()
        };
        let complete = condition("Complete");
        let failed = condition("Failed");
        let finish_time = match state {
            JobState::Active => None,
            JobState::Succeeded => complete
                .as_ref()
                .and_then(|c| c.last_transition_time.as_ref())
                .or(job.status.as_ref().and_then(|s| s.completion_time.as_ref()))
                .map(|t| t.0),
            JobState::Failed => failed
                .as_ref()
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0),
        };
        RunJob {
            name: job.name_any(),
            uid: job.metadata.uid.clone(),
            kind: job_kind(job),
            target: annotation(crate::jobs::annotations::TARGET)
                .or_else(|| job.labels().get(super::LABEL_TARGET).cloned())
                .unwrap_or_default(),
            schedule: annotation(crate::jobs::annotations::SCHEDULE)
                .or_else(|| job.labels().get(super::LABEL_SCHEDULE).cloned()),
            claim: job
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|p| p.volumes.as_ref())
                .and_then(|vols| {
                    vols.iter()
                        .find_map(|v| v.persistent_volume_claim.as_ref())
                        .map(|c| c.claim_name.clone())
                }),
            state,
            created: job.metadata.creation_timestamp.as_ref().map(|t| t.0),
            start_time: job
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0),
            finish_time,
            failed_reason: failed.as_ref().and_then(|c| c.reason.clone()),
            failed_message: failed.and_then(|c| c.message),
            deleting: job.metadata.deletion_timestamp.is_some(),
            restore: annotation(crate::jobs::annotations::RESTORE),
            generation: job
                .annotations()
                .get(crate::jobs::annotations::GENERATION)
                .and_then(|g| g.parse().ok()),
        }
    }

    /// Whether it is a run that writes (a backup or a restore) and still active.
    fn active_writer(&self) -> bool {
        self.kind.is_some_and(RunKind::writes) && self.state == JobState::Active && !self.deleting
    }

    fn active_probe(&self) -> bool {
        self.kind == Some(RunKind::Probe) && self.state == JobState::Active && !self.deleting
    }

    fn as_active_run(&self) -> ActiveRun {
        ActiveRun {
            job: self.name.clone(),
            target: self.target.clone(),
            schedule: self.schedule.clone(),
            claim: self.claim.clone(),
        }
    }
}

/// What the controller keeps of one pod of a stowage Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSummary {
    /// The pod's name.
    pub name: String,
    /// When it was created.
    pub created: Option<Timestamp>,
    /// Why it cannot start, if it cannot ([`status::start_failure`]).
    pub start_failure: Option<StartFailure>,
}

impl PodSummary {
    /// The summary of `pod`.
    pub fn from_pod(pod: &Pod) -> PodSummary {
        PodSummary {
            name: pod.name_any(),
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            start_failure: status::start_failure(std::slice::from_ref(pod)),
        }
    }
}

/// Why the newest of a Job's pods cannot start, if it cannot (`job` filled in).
pub fn newest_start_failure(job: &str, pods: &[PodSummary]) -> Option<StartFailure> {
    let pod = pods.iter().max_by_key(|p| p.created)?;
    let mut failure = pod.start_failure.clone()?;
    failure.job = job.to_owned();
    Some(failure)
}

/// The BackupTarget of a cached one; `None`, logged, when this operator cannot read it.
fn parsed(target: &WatchedTarget) -> Option<Arc<BackupTarget>> {
    match target.target() {
        Ok(target) => Some(Arc::new(target)),
        Err(error) => {
            let namespace = target.metadata.namespace.as_deref().unwrap_or_default();
            let name = target.metadata.name.as_deref().unwrap_or_default();
            match error {
                ReadTargetError::Types(error) => tracing::warn!(
                    namespace,
                    name,
                    %error,
                    "cannot read the BackupTarget with this operator's types; schedules skip it (do the CRDs and the operator come from the same release?)"
                ),
                unpack @ ReadTargetError::Unpack(_) => tracing::error!(
                    namespace,
                    name,
                    error = %unpack,
                    "cannot read the BackupTarget from the operator's cache; schedules skip it"
                ),
            }
            None
        }
    }
}

/// `(namespace, name)`.
type Key = (String, String);

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_owned(), name.to_owned())
}

/// What [`Cache::try_start_probe`] allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeSlot {
    /// Create the probe Job: a slot is reserved for it.
    Start,
    /// The probe Job exists already (created by an earlier reconcile).
    Exists,
    /// No slot is free: the target is woken when one frees.
    Wait,
}

/// The Jobs, indexed, and the runs started but not seen yet.
#[derive(Default)]
struct Jobs {
    /// Boxed: the table has room for up to twice the Jobs, and a `RunJob` is a few
    /// hundred bytes (5.3 MB of table for 10,000 Jobs unboxed, measured).
    all: HashMap<Key, Box<RunJob>>,
    /// `(namespace, target)` → Job names.
    by_target: HashMap<Key, BTreeSet<String>>,
    /// `(namespace, schedule)` → Job names.
    by_schedule: HashMap<Key, BTreeSet<String>>,
    /// Active writing runs per namespace, by Job name.
    writers: HashMap<String, BTreeMap<String, ActiveRun>>,
    /// Active probe Jobs.
    probes: HashSet<Key>,
    /// Runs this replica started and the watch has not shown yet, by `(namespace, Job)`.
    pending: HashMap<Key, Pending>,
    /// The objects of a re-list in progress (swapped in when it completes).
    relist: Option<HashMap<Key, RunJob>>,
    /// Targets waiting for a probe slot, oldest first.
    probe_waiters: VecDeque<ObjectRef<WatchedTarget>>,
}

/// A run started by this replica, not yet seen in the watch.
struct Pending {
    run: ActiveRun,
    probe: bool,
    since: std::time::Instant,
    /// Its create failed in a way that does not say whether the Job exists.
    uncertain: bool,
    /// The Job's uid, once the API server answered the create.
    uid: Option<String>,
}

/// How long a reservation may wait for its Job to show up in the watch before it is
/// dropped (the create must have failed without us knowing).
const PENDING_EXPIRY: std::time::Duration = std::time::Duration::from_secs(600);

impl Jobs {
    fn insert(&mut self, namespace: &str, job: RunJob) -> Option<RunJob> {
        let k = key(namespace, &job.name);
        let old = self.remove(namespace, &job.name);
        self.pending.remove(&k);
        self.by_target
            .entry(key(namespace, &job.target))
            .or_default()
            .insert(job.name.clone());
        if let Some(schedule) = &job.schedule {
            self.by_schedule
                .entry(key(namespace, schedule))
                .or_default()
                .insert(job.name.clone());
        }
        if job.active_writer() {
            self.writers
                .entry(namespace.to_owned())
                .or_default()
                .insert(job.name.clone(), job.as_active_run());
        }
        if job.active_probe() {
            self.probes.insert(k.clone());
        }
        self.all.insert(k, Box::new(job));
        old
    }

    fn remove(&mut self, namespace: &str, name: &str) -> Option<RunJob> {
        let k = key(namespace, name);
        let job = *self.all.remove(&k)?;
        let drop_from = |index: &mut HashMap<Key, BTreeSet<String>>, owner: &str| {
            let owner_key = key(namespace, owner);
            if let Some(names) = index.get_mut(&owner_key) {
                names.remove(name);
                if names.is_empty() {
                    index.remove(&owner_key);
                }
            }
        };
        drop_from(&mut self.by_target, &job.target);
        if let Some(schedule) = &job.schedule {
            drop_from(&mut self.by_schedule, schedule);
        }
        if let Some(writers) = self.writers.get_mut(namespace) {
            writers.remove(name);
            if writers.is_empty() {
                self.writers.remove(namespace);
            }
        }
        self.probes.remove(&k);
        Some(job)
    }

    /// The namespace's active writing runs, seen or reserved, that concern one of
    /// `targets` or `claims` (the only runs [`runs::plan_start`] looks at).
    fn active_runs(
        &self,
        namespace: &str,
        targets: &HashSet<&str>,
        claims: &HashSet<&str>,
    ) -> Vec<ActiveRun> {
        let relevant = |run: &ActiveRun| {
            targets.contains(run.target.as_str())
                || run.claim.as_deref().is_some_and(|c| claims.contains(c))
        };
        let seen = self
            .writers
            .get(namespace)
            .into_iter()
            .flat_map(|w| w.values())
            .filter(|run| relevant(run));
        let reserved = self
            .pending
            .iter()
            .filter(|((ns, _), p)| ns == namespace && !p.probe && relevant(&p.run))
            .map(|(_, p)| &p.run);
        seen.chain(reserved).cloned().collect()
    }

    /// Whether the Job exists, or was created by this replica and is not shown yet.
    fn exists(&self, namespace: &str, name: &str) -> bool {
        let k = key(namespace, name);
        self.all.contains_key(&k) || self.pending.get(&k).is_some_and(|p| !p.uncertain)
    }

    fn probes_in_flight(&self) -> usize {
        self.probes.len() + self.pending.values().filter(|p| p.probe).count()
    }

    fn expire_pending(&mut self) {
        self.pending
            .retain(|_, p| p.since.elapsed() < PENDING_EXPIRY);
    }
}

/// Where the BackupRestore triggers of one watched scope (`None`: all) go.
type RestoreRoute = (Option<String>, UnboundedSender<ObjectRef<BackupRestore>>);

/// Where the triggers of one watched scope go.
struct Route {
    /// The namespace, or `None` for all.
    scope: Option<String>,
    targets: UnboundedSender<ObjectRef<WatchedTarget>>,
    schedules: UnboundedSender<ObjectRef<BackupSchedule>>,
}

/// The operator's caches. See the module documentation.
pub struct Cache {
    jobs: Mutex<Jobs>,
    /// `(namespace, Job)` → its pods.
    pods: Mutex<Pods>,
    /// `(namespace, claim)` → whether it is single-node.
    claims: Mutex<Claims>,
    targets: Mutex<Vec<Store<WatchedTarget>>>,
    schedules: Mutex<Vec<Store<BackupSchedule>>>,
    /// Label selections, memoized ([`Selections`]).
    selections: Mutex<Selections>,
    routes: Mutex<Vec<Route>>,
    /// Watches that have not finished their first list yet.
    syncing: tokio::sync::watch::Sender<usize>,
    /// Most probe Jobs active at once.
    max_probes: usize,
    /// Objects whose reconcile waits for the Job creations in flight, with when they
    /// first waited.
    deferred: Mutex<HashMap<Deferred, std::time::Instant>>,
    /// Where the BackupRestore triggers of each watched scope go.
    restore_routes: Mutex<Vec<RestoreRoute>>,
}

/// The longest an object's reconcile waits for Job creations
/// ([`super::Context::defer_while_creating`]): after that it goes ahead even while Jobs
/// are being created, so a stream of creations never starves a status.
pub const DEFER_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// An object whose status write waits until no Job creation is pending
/// ([`super::Context::defer_while_creating`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Deferred {
    /// BackupTarget `(namespace, name)`.
    Target(String, String),
    /// BackupSchedule `(namespace, name)`.
    Schedule(String, String),
}

/// Label selections, kept until what they depend on changes. Matching every schedule's
/// selector against every target on each reconcile and each target event was most of
/// the operator's CPU in a tick of 500 schedules over 5,000 targets; target labels and
/// schedule selectors rarely change, so the answers are kept:
/// - the targets a schedule selects, until a target of its namespace appears, disappears
///   or changes its labels (`label_generation`), or the schedule's spec changes;
/// - each schedule's parsed selector, until its spec changes.
#[derive(Default)]
struct Selections {
    /// Namespace → bumped whenever a target appears, disappears or changes labels.
    label_generation: HashMap<String, u64>,
    /// Schedule → the names of the targets it selects, sorted, with the label generation
    /// and the schedule generation they were computed at.
    selected: HashMap<Key, (u64, Option<i64>, Vec<String>)>,
    /// Schedule → its parsed selector (`None`: not a valid selector), with the schedule
    /// generation it was parsed at.
    selectors: HashMap<Key, (Option<i64>, Option<Selector>)>,
}

#[derive(Default)]
struct Pods {
    /// `(namespace, Job)` → pods.
    by_job: HashMap<Key, Vec<PodSummary>>,
    /// `(namespace, pod)` → its Job.
    job_of: HashMap<Key, String>,
    relist: Option<Vec<(String, String, PodSummary)>>,
}

#[derive(Default)]
struct Claims {
    single_node: HashMap<Key, ClaimAccess>,
    relist: Option<HashMap<Key, ClaimAccess>>,
}

pub use super::placement::ClaimAccess;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A watch's progress through its first list, for [`Cache::wait_synced`].
pub struct SyncToken {
    syncing: tokio::sync::watch::Sender<usize>,
    done: bool,
}

impl SyncToken {
    /// Mark this watch's first list as complete.
    pub fn done(&mut self) {
        if !self.done {
            self.done = true;
            self.syncing.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

impl Cache {
    /// An empty cache allowing `max_probes` probe Jobs at a time.
    pub fn new(max_probes: usize) -> Cache {
        Cache {
            jobs: Mutex::default(),
            pods: Mutex::default(),
            claims: Mutex::default(),
            targets: Mutex::default(),
            schedules: Mutex::default(),
            selections: Mutex::default(),
            routes: Mutex::default(),
            syncing: tokio::sync::watch::channel(0).0,
            max_probes: max_probes.max(1),
            deferred: Mutex::default(),
            restore_routes: Mutex::default(),
        }
    }

    /// Register a watch that must complete its first list before reconcilers read.
    pub fn syncing(&self) -> SyncToken {
        self.syncing.send_modify(|n| *n += 1);
        SyncToken {
            syncing: self.syncing.clone(),
            done: false,
        }
    }

    /// Whether every registered watch has completed its first list.
    pub fn is_synced(&self) -> bool {
        *self.syncing.borrow() == 0
    }

    /// Wait until every registered watch has completed its first list.
    pub async fn wait_synced(&self) {
        let mut rx = self.syncing.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Add a scope's stores and the senders of its controllers' triggers.
    pub fn add_scope(
        &self,
        scope: Option<String>,
        targets: Store<WatchedTarget>,
        schedules: Store<BackupSchedule>,
        target_triggers: UnboundedSender<ObjectRef<WatchedTarget>>,
        schedule_triggers: UnboundedSender<ObjectRef<BackupSchedule>>,
    ) {
        lock(&self.targets).push(targets);
        lock(&self.schedules).push(schedules);
        lock(&self.routes).push(Route {
            scope,
            targets: target_triggers,
            schedules: schedule_triggers,
        });
    }

    /// Add where a scope's BackupRestore triggers go: a restore's Job changing wakes it.
    pub fn add_restore_route(
        &self,
        scope: Option<String>,
        triggers: UnboundedSender<ObjectRef<BackupRestore>>,
    ) {
        lock(&self.restore_routes).push((scope, triggers));
    }

    fn trigger_restore(&self, namespace: &str, name: &str) {
        for (scope, triggers) in lock(&self.restore_routes).iter() {
            if scope.as_deref().is_none_or(|s| s == namespace) {
                let _ = triggers.unbounded_send(ObjectRef::new(name).within(namespace));
            }
        }
    }

    /// The BackupTarget `namespace/name` as the watch shows it; `None` when there is none
    /// (or it cannot be read with this operator's types).
    pub fn target(&self, namespace: &str, name: &str) -> Option<Arc<BackupTarget>> {
        self.cached_target(namespace, name)
            .flatten()
            .and_then(|t| parsed(&t))
    }

    /// Whether BackupTarget `namespace/name` is in the watch's store; `None` when there
    /// are no stores (unit tests): callers then do nothing.
    pub fn target_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        self.cached_target(namespace, name).map(|t| t.is_some())
    }

    /// The cached BackupTarget `namespace/name`, unparsed; `None` when there are no
    /// stores.
    fn cached_target(&self, namespace: &str, name: &str) -> Option<Option<Arc<WatchedTarget>>> {
        let stores = lock(&self.targets).clone();
        if stores.is_empty() {
            return None;
        }
        let object = ObjectRef::new(name).within(namespace);
        Some(stores.iter().find_map(|store| store.get(&object)))
    }

    /// The Job `namespace/name` as the watch last showed it.
    pub fn job(&self, namespace: &str, name: &str) -> Option<RunJob> {
        lock(&self.jobs)
            .all
            .get(&key(namespace, name))
            .map(|job| RunJob::clone(job))
    }

    /// Whether the Job `namespace/name` exists, or this replica created it and the watch
    /// does not show it yet.
    pub fn job_exists(&self, namespace: &str, name: &str) -> bool {
        lock(&self.jobs).exists(namespace, name)
    }

    fn trigger_target(&self, namespace: &str, name: &str) {
        for route in lock(&self.routes).iter() {
            if route.scope.as_deref().is_none_or(|s| s == namespace) {
                let _ = route
                    .targets
                    .unbounded_send(ObjectRef::new(name).within(namespace));
            }
        }
    }

    /// Wake every target whose `spec.external.plugin` is `plugin` (its BackupPlugin was
    /// installed, changed, refused or deleted).
    pub fn wake_targets_of_plugin(&self, plugin: &str) {
        let stores = lock(&self.targets).clone();
        for store in stores {
            for target in store.state() {
                if target.external_plugin().as_deref() == Some(plugin) {
                    self.trigger_target(
                        target.metadata.namespace.as_deref().unwrap_or_default(),
                        target.metadata.name.as_deref().unwrap_or_default(),
                    );
                }
            }
        }
    }

    /// Have `object`'s reconcile wait, to run again at the next [`Cache::wake_deferred`];
    /// `false` (it goes ahead now) once it has waited [`DEFER_LIMIT`] since it first
    /// waited (`now` is the current instant).
    pub fn defer(&self, object: Deferred, now: std::time::Instant) -> bool {
        let mut deferred = lock(&self.deferred);
        let since = *deferred.entry(object.clone()).or_insert(now);
        if now.duration_since(since) >= DEFER_LIMIT {
            deferred.remove(&object);
            return false;
        }
        true
    }

    /// `object`'s reconcile goes ahead: it no longer waits.
    pub fn undefer(&self, object: &Deferred) {
        let mut deferred = lock(&self.deferred);
        if !deferred.is_empty() {
            deferred.remove(object);
        }
    }

    /// Reconcile every waiting object now (each one that goes ahead stops waiting).
    pub fn wake_deferred(&self) {
        let waiting: Vec<Deferred> = lock(&self.deferred).keys().cloned().collect();
        for object in waiting {
            match object {
                Deferred::Target(namespace, name) => self.trigger_target(&namespace, &name),
                Deferred::Schedule(namespace, name) => self.trigger_schedule(&namespace, &name),
            }
        }
    }

    fn trigger_schedule(&self, namespace: &str, name: &str) {
        for route in lock(&self.routes).iter() {
            if route.scope.as_deref().is_none_or(|s| s == namespace) {
                let _ = route
                    .schedules
                    .unbounded_send(ObjectRef::new(name).within(namespace));
            }
        }
    }

    // ---- Jobs -------------------------------------------------------------------------

    /// Apply one event of the Job watch; wakes the targets and schedules whose Jobs
    /// changed in a way they read.
    pub fn apply_job_event(&self, event: Event<Job>, sync: &mut SyncToken) {
        let mut wake_targets: Vec<Key> = Vec::new();
        let mut wake_schedules: Vec<Key> = Vec::new();
        let mut wake_restores: Vec<Key> = Vec::new();
        let mut note = |ns: &str, old: Option<&RunJob>, new: Option<&RunJob>| {
            if old == new {
                return;
            }
            for job in [old, new].into_iter().flatten() {
                wake_targets.push(key(ns, &job.target));
                if let Some(s) = &job.schedule {
                    wake_schedules.push(key(ns, s));
                }
                if let Some(r) = &job.restore {
                    wake_restores.push(key(ns, r));
                }
            }
        };
        let freed_probe_slot;
        {
            let mut jobs = lock(&self.jobs);
            let before = jobs.probes_in_flight();
            match event {
                Event::Apply(job) => {
                    let ns = job.namespace().unwrap_or_default();
                    let new = RunJob::from_job(&job);
                    let old = jobs.insert(&ns, new.clone());
                    note(&ns, old.as_ref(), Some(&new));
                }
                Event::Delete(job) => {
                    let ns = job.namespace().unwrap_or_default();
                    let old = jobs.remove(&ns, &job.name_any());
                    note(&ns, old.as_ref(), None);
                }
                Event::Init => jobs.relist = Some(HashMap::new()),
                Event::InitApply(job) => {
                    let ns = job.namespace().unwrap_or_default();
                    let new = RunJob::from_job(&job);
                    jobs.relist
                        .get_or_insert_with(HashMap::new)
                        .insert(key(&ns, &new.name), new);
                }
                Event::InitDone => {
                    let fresh = jobs.relist.take().unwrap_or_default();
                    let gone: Vec<Key> = jobs
                        .all
                        .keys()
                        .filter(|k| !fresh.contains_key(*k))
                        .cloned()
                        .collect();
                    for (ns, name) in gone {
                        let old = jobs.remove(&ns, &name);
                        note(&ns, old.as_ref(), None);
                    }
                    for ((ns, _), job) in fresh {
                        let old = jobs.insert(&ns, job.clone());
                        note(&ns, old.as_ref(), Some(&job));
                    }
                    jobs.expire_pending();
                    sync.done();
                }
            }
            freed_probe_slot = jobs.probes_in_flight() < before;
        }
        if freed_probe_slot {
            self.wake_probe_waiters();
        }
        wake_targets.sort();
        wake_targets.dedup();
        for (ns, name) in wake_targets {
            self.trigger_target(&ns, &name);
        }
        wake_schedules.sort();
        wake_schedules.dedup();
        for (ns, name) in wake_schedules {
            self.trigger_schedule(&ns, &name);
        }
        wake_restores.sort();
        wake_restores.dedup();
        for (ns, name) in wake_restores {
            self.trigger_restore(&ns, &name);
        }
    }

    /// The Jobs of a target, as the watch last showed them.
    pub fn jobs_of_target(&self, namespace: &str, target: &str) -> Vec<RunJob> {
        self.jobs_by(namespace, target, |jobs| &jobs.by_target)
    }

    /// The Jobs a schedule started: as the watch last showed them, and those this
    /// replica created that the watch does not show yet (active, as they are), so a
    /// schedule's status does not change back and forth while its Jobs appear.
    pub fn jobs_of_schedule(&self, namespace: &str, schedule: &str) -> Vec<RunJob> {
        let mut out = self.jobs_by(namespace, schedule, |jobs| &jobs.by_schedule);
        let jobs = lock(&self.jobs);
        out.extend(
            jobs.pending
                .iter()
                .filter(|((ns, _), p)| {
                    ns == namespace && !p.uncertain && p.run.schedule.as_deref() == Some(schedule)
                })
                .filter(|((_, name), _)| !jobs.all.contains_key(&key(namespace, name)))
                .map(|((_, name), p)| RunJob {
                    name: name.clone(),
                    uid: p.uid.clone(),
                    kind: Some(RunKind::Backup),
                    target: p.run.target.clone(),
                    schedule: p.run.schedule.clone(),
                    claim: p.run.claim.clone(),
                    state: JobState::Active,
                    created: None,
                    start_time: None,
                    finish_time: None,
                    failed_reason: None,
                    failed_message: None,
                    deleting: false,
                    restore: None,
                    generation: None,
                }),
        );
        out
    }

    fn jobs_by(
        &self,
        namespace: &str,
        owner: &str,
        index: impl Fn(&Jobs) -> &HashMap<Key, BTreeSet<String>>,
    ) -> Vec<RunJob> {
        let jobs = lock(&self.jobs);
        index(&jobs)
            .get(&key(namespace, owner))
            .into_iter()
            .flatten()
            .filter_map(|name| {
                jobs.all
                    .get(&key(namespace, name))
                    .map(|j| RunJob::clone(j))
            })
            .collect()
    }

    /// Decide `requests` in order with [`runs::plan_starts`] against the namespace's active
    /// writing runs, including those this replica started and the watch does not show
    /// yet, and reserve each run that may start. The caller creates the Jobs and calls
    /// [`Cache::release`] for each one that could not be created.
    pub fn plan_starts(
        &self,
        namespace: &str,
        mut requests: Vec<StartRequest>,
    ) -> Vec<StartDecision> {
        let mut jobs = lock(&self.jobs);
        for request in &mut requests {
            request.job_exists = request.job_exists || jobs.exists(namespace, &request.job);
        }
        let targets: HashSet<&str> = requests.iter().map(|r| r.target.as_str()).collect();
        let claims: HashSet<&str> = requests.iter().map(|r| r.claim.as_str()).collect();
        let mut active = jobs.active_runs(namespace, &targets, &claims);
        let decisions = runs::plan_starts(&requests, &mut active);
        for (request, decision) in requests.iter().zip(&decisions) {
            if matches!(decision, StartDecision::Create { .. }) {
                jobs.pending.insert(
                    key(namespace, &request.job),
                    Pending {
                        run: runs::ActiveRun::from_request(request),
                        probe: false,
                        since: std::time::Instant::now(),
                        uncertain: false,
                        uid: None,
                    },
                );
            }
        }
        decisions
    }

    /// Record how creating a reserved run's Job went: created (or already there: 409),
    /// the reservation stays until the watch shows the Job; refused (any other 4xx), it is
    /// dropped; unknown (a 5xx or a lost connection: the Job may exist), it keeps the
    /// target busy for other triggers but lets the same run try again.
    pub fn created(
        &self,
        namespace: &str,
        job: &str,
        result: &Result<Option<String>, kube::Error>,
    ) {
        match result {
            Ok(uid) => {
                if let Some(pending) = lock(&self.jobs).pending.get_mut(&key(namespace, job)) {
                    pending.uid = uid.clone();
                }
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(kube::Error::Api(s)) if (400..500).contains(&s.code) => {
                self.release(namespace, job)
            }
            Err(_) => {
                if let Some(pending) = lock(&self.jobs).pending.get_mut(&key(namespace, job)) {
                    pending.uncertain = true;
                }
            }
        }
    }

    /// Drop the reservation of a run whose Job could not be created.
    pub fn release(&self, namespace: &str, job: &str) {
        let was_probe = lock(&self.jobs)
            .pending
            .remove(&key(namespace, job))
            .is_some_and(|p| p.probe);
        if was_probe {
            self.wake_probe_waiters();
        }
    }

    /// Whether a probe Job may start now for `target`: fewer than `--max-concurrent-probes`
    /// probes are active, and the slot is reserved for `job`; or `job` exists already.
    /// Otherwise the target waits in line and is woken when a slot frees.
    pub fn try_start_probe(&self, namespace: &str, target: &str, job: &str) -> ProbeSlot {
        let mut jobs = lock(&self.jobs);
        if jobs.exists(namespace, job) {
            return ProbeSlot::Exists;
        }
        let waiter = ObjectRef::new(target).within(namespace);
        if jobs.probes_in_flight() >= self.max_probes {
            if !jobs.probe_waiters.contains(&waiter) {
                jobs.probe_waiters.push_back(waiter);
            }
            return ProbeSlot::Wait;
        }
        jobs.probe_waiters.retain(|w| w != &waiter);
        jobs.pending.insert(
            key(namespace, job),
            Pending {
                run: ActiveRun {
                    job: job.to_owned(),
                    target: target.to_owned(),
                    schedule: None,
                    claim: None,
                },
                probe: true,
                since: std::time::Instant::now(),
                uncertain: false,
                uid: None,
            },
        );
        ProbeSlot::Start
    }

    /// Targets waiting for a probe slot.
    pub fn probes_waiting(&self) -> usize {
        lock(&self.jobs).probe_waiters.len()
    }

    fn wake_probe_waiters(&self) {
        let woken: Vec<ObjectRef<WatchedTarget>> = {
            let mut jobs = lock(&self.jobs);
            let free = self.max_probes.saturating_sub(jobs.probes_in_flight());
            let n = free.min(jobs.probe_waiters.len());
            jobs.probe_waiters.drain(..n).collect()
        };
        for target in woken {
            self.trigger_target(
                target.namespace.as_deref().unwrap_or_default(),
                &target.name,
            );
        }
    }

    // ---- Pods -------------------------------------------------------------------------

    /// Apply one event of the pod watch; wakes the target whose run's pod changed in a
    /// way it reads.
    pub fn apply_pod_event(&self, event: Event<Pod>, sync: &mut SyncToken) {
        let mut wake: Vec<Key> = Vec::new();
        let target_of = |pod: &Pod| {
            pod.annotations()
                .get(crate::jobs::annotations::TARGET)
                .cloned()
        };
        {
            let mut pods = lock(&self.pods);
            match event {
                Event::Apply(pod) => {
                    let ns = pod.namespace().unwrap_or_default();
                    let Some(job) = pod.labels().get(super::LABEL_JOB_NAME).cloned() else {
                        return;
                    };
                    let summary = PodSummary::from_pod(&pod);
                    if pods.put(&ns, &job, summary) {
                        wake.extend(target_of(&pod).map(|t| key(&ns, &t)));
                    }
                }
                Event::Delete(pod) => {
                    let ns = pod.namespace().unwrap_or_default();
                    pods.drop_pod(&ns, &pod.name_any());
                }
                Event::Init => pods.relist = Some(Vec::new()),
                Event::InitApply(pod) => {
                    let ns = pod.namespace().unwrap_or_default();
                    if let Some(job) = pod.labels().get(super::LABEL_JOB_NAME).cloned() {
                        let summary = PodSummary::from_pod(&pod);
                        pods.relist
                            .get_or_insert_with(Vec::new)
                            .push((ns.clone(), job, summary));
                        wake.extend(target_of(&pod).map(|t| key(&ns, &t)));
                    }
                }
                Event::InitDone => {
                    let fresh = pods.relist.take().unwrap_or_default();
                    pods.by_job.clear();
                    pods.job_of.clear();
                    for (ns, job, summary) in fresh {
                        pods.put(&ns, &job, summary);
                    }
                    sync.done();
                }
            }
        }
        for (ns, name) in wake {
            self.trigger_target(&ns, &name);
        }
    }

    /// The pods of a Job, as the watch last showed them.
    pub fn pods_of_job(&self, namespace: &str, job: &str) -> Vec<PodSummary> {
        lock(&self.pods)
            .by_job
            .get(&key(namespace, job))
            .cloned()
            .unwrap_or_default()
    }

    // ---- Claims -----------------------------------------------------------------------

    /// Apply one event of the claim watch.
    pub fn apply_claim_event(&self, event: Event<PersistentVolumeClaim>, sync: &mut SyncToken) {
        let mut claims = lock(&self.claims);
        let k = |pvc: &PersistentVolumeClaim| {
            key(&pvc.namespace().unwrap_or_default(), &pvc.name_any())
        };
        match event {
            Event::Apply(pvc) => {
                claims.single_node.insert(k(&pvc), ClaimAccess::of(&pvc));
            }
            Event::Delete(pvc) => {
                claims.single_node.remove(&k(&pvc));
            }
            Event::Init => claims.relist = Some(HashMap::new()),
            Event::InitApply(pvc) => {
                let single = ClaimAccess::of(&pvc);
                claims
                    .relist
                    .get_or_insert_with(HashMap::new)
                    .insert(k(&pvc), single);
            }
            Event::InitDone => {
                claims.single_node = claims.relist.take().unwrap_or_default();
                sync.done();
            }
        }
    }

    /// Whether `claim` can be mounted by one node only; a claim that does not exist (yet)
    /// counts as single-node, the safe side.
    pub fn claim_single_node(&self, namespace: &str, claim: &str) -> bool {
        self.claim_access(namespace, claim)
            .is_none_or(|access| access != ClaimAccess::ManyNodes)
    }

    /// How `claim` can be mounted, as the claim watch last showed it; `None` when the
    /// claim does not exist (or the watch has not seen it yet).
    pub fn claim_access(&self, namespace: &str, claim: &str) -> Option<ClaimAccess> {
        lock(&self.claims)
            .single_node
            .get(&key(namespace, claim))
            .copied()
    }

    // ---- Targets and schedules --------------------------------------------------------

    /// The BackupTargets of `schedule`'s namespace that its `selector` selects, by name.
    pub fn targets_selected(
        &self,
        schedule: &BackupSchedule,
        selector: &Selector,
    ) -> Vec<Arc<BackupTarget>> {
        let namespace = schedule.metadata.namespace.as_deref().unwrap_or_default();
        let name = schedule.metadata.name.as_deref().unwrap_or_default();
        let generation = schedule.metadata.generation;
        let stores = lock(&self.targets).clone();
        let mut selections = lock(&self.selections);
        let labels_at = selections
            .label_generation
            .get(namespace)
            .copied()
            .unwrap_or(0);
        let schedule_key = key(namespace, name);
        if let Some((at, of, names)) = selections.selected.get(&schedule_key)
            && (*at, *of) == (labels_at, generation)
        {
            return names
                .iter()
                .filter_map(|target| {
                    let object = ObjectRef::new(target).within(namespace);
                    stores.iter().find_map(|store| store.get(&object))
                })
                .filter_map(|t| parsed(&t))
                .collect();
        }
        let mut selected: Vec<Arc<WatchedTarget>> = stores
            .iter()
            .flat_map(|s| s.state())
            .filter(|t| t.metadata.namespace.as_deref() == Some(namespace))
            .filter(|t| selector.matches(t.labels()))
            .collect();
        selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let names = selected
            .iter()
            .map(|t| t.metadata.name.clone().unwrap_or_default())
            .collect();
        selections
            .selected
            .insert(schedule_key, (labels_at, generation, names));
        selected.iter().filter_map(|t| parsed(t)).collect()
    }

    /// The namespace's BackupSchedules whose selector selects `labels`.
    pub fn schedules_selecting(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<ObjectRef<BackupSchedule>> {
        let stores = lock(&self.schedules).clone();
        let schedules: Vec<Arc<BackupSchedule>> = stores.iter().flat_map(|s| s.state()).collect();
        let mut selections = lock(&self.selections);
        let mut out = Vec::new();
        for schedule in &schedules {
            if schedule.metadata.namespace.as_deref() != Some(namespace) {
                continue;
            }
            let name = schedule.metadata.name.as_deref().unwrap_or_default();
            let generation = schedule.metadata.generation;
            let parsed = selections
                .selectors
                .entry(key(namespace, name))
                .and_modify(|entry| {
                    if entry.0 != generation {
                        *entry = (
                            generation,
                            Selector::try_from(schedule.spec.targets.clone()).ok(),
                        );
                    }
                })
                .or_insert_with(|| {
                    (
                        generation,
                        Selector::try_from(schedule.spec.targets.clone()).ok(),
                    )
                });
            if parsed.1.as_ref().is_some_and(|s| s.matches(labels)) {
                out.push(ObjectRef::from_obj(schedule.as_ref()));
            }
        }
        // Forget the schedules that are gone (kept at most twice the live ones).
        if selections.selectors.len() > 2 * schedules.len() + 16 {
            let live: HashSet<Key> = schedules
                .iter()
                .map(|s| {
                    key(
                        s.metadata.namespace.as_deref().unwrap_or_default(),
                        s.metadata.name.as_deref().unwrap_or_default(),
                    )
                })
                .collect();
            selections.selectors.retain(|k, _| live.contains(k));
            selections.selected.retain(|k, _| live.contains(k));
        }
        out
    }

    /// Whether BackupSchedule `namespace/name` exists; `None` until the caches are synced
    /// (or when there are none, as in unit tests): callers then do nothing.
    pub fn schedule_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        if !self.is_synced() {
            return None;
        }
        let stores = lock(&self.schedules);
        if stores.is_empty() {
            return None;
        }
        let key = ObjectRef::new(name).within(namespace);
        Some(stores.iter().any(|store| store.get(&key).is_some()))
    }

    /// Wake the schedules that read a target that changed: those whose selector selects
    /// its old or its new labels, and only when what schedules read of it changed (its
    /// labels, its existence, the backups it has recorded).
    pub fn target_changed(
        &self,
        old: Option<&TargetDigest>,
        new: Option<&TargetDigest>,
        namespace: &str,
    ) {
        if old == new {
            return;
        }
        if old.map(|d| &d.labels) != new.map(|d| &d.labels) {
            *lock(&self.selections)
                .label_generation
                .entry(namespace.to_owned())
                .or_default() += 1;
        }
        let mut wake: BTreeSet<String> = BTreeSet::new();
        for digest in [old, new].into_iter().flatten() {
            wake.extend(
                self.schedules_selecting(namespace, &digest.label_map())
                    .into_iter()
                    .map(|s| s.name),
            );
        }
        for name in wake {
            self.trigger_schedule(namespace, &name);
        }
    }
}

/// What schedules read of a target outside their ticks: its labels (selection) and the
/// backups it has recorded (history limits wait for them). One is kept per target, so
/// it is small: the labels as a sorted list (a `BTreeMap` of one label allocates room
/// for eleven) and the recorded Jobs as a hash, since only a change matters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetDigest {
    /// The target's labels, sorted by key.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// A hash of the Jobs of the backups its status records.
    recorded: u64,
}

impl TargetDigest {
    /// The digest of `target`.
    pub fn of(target: &WatchedTarget) -> TargetDigest {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        target.recorded_jobs().hash(&mut hasher);
        TargetDigest {
            labels: target
                .labels()
                .iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
            recorded: hasher.finish(),
        }
    }

    /// The labels as a selector reads them.
    fn label_map(&self) -> BTreeMap<String, String> {
        self.labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Pods {
    /// Store a pod's summary; whether it changed.
    fn put(&mut self, namespace: &str, job: &str, summary: PodSummary) -> bool {
        self.job_of
            .insert(key(namespace, &summary.name), job.to_owned());
        let pods = self.by_job.entry(key(namespace, job)).or_default();
        match pods.iter_mut().find(|p| p.name == summary.name) {
            Some(existing) if *existing == summary => false,
            Some(existing) => {
                *existing = summary;
                true
            }
            None => {
                pods.push(summary);
                true
            }
        }
    }

    fn drop_pod(&mut self, namespace: &str, pod: &str) {
        let Some(job) = self.job_of.remove(&key(namespace, pod)) else {
            return;
        };
        let job_key = key(namespace, &job);
        if let Some(pods) = self.by_job.get_mut(&job_key) {
            pods.retain(|p| p.name != pod);
            if pods.is_empty() {
                self.by_job.remove(&job_key);
            }
        }
    }
}

/// Statuses this operator wrote that its cache may not show yet, per object key.
///
/// A write's own watch event arrives later than the reconciles it wakes (a Job event, a
/// freed probe slot, the next tick), all the more when the API server is busy. A
/// reconcile that started from the cache's older status would derive the same new
/// status, see it differ, and write it again: at 5,000 targets that was 4.7 status
/// writes per target where 2 were needed, on an API server already saturated. So the
/// status written on top of a version is the starting point while the cache still shows
/// that version; any other version (the write arrived, or someone else wrote) replaces
/// it, and the entry is dropped.
///
/// A status can also be held back ([`WrittenStatuses::hold`]): decided, not written yet,
/// because a tick's Job creations go first. It is the starting point whatever version
/// the cache shows (the operator's own decision is newer than any of them) until it is
/// written.
pub struct WrittenStatuses<S>(Mutex<HashMap<String, WrittenStatus<S>>>);

/// A status written on top of the cached version `based_on`, or held back.
struct WrittenStatus<S> {
    based_on: Option<String>,
    status: S,
    /// Decided but not written yet.
    held: bool,
}

impl<S> Default for WrittenStatuses<S> {
    fn default() -> Self {
        WrittenStatuses(Mutex::new(HashMap::new()))
    }
}

impl<S: Clone + Default> WrittenStatuses<S> {
    /// The status a reconcile of the cached `obj` starts from, given its `cached` status.
    pub fn current<K>(&self, obj: &K, cached: Option<&S>) -> S
    where
        K: Resource,
        K::DynamicType: Default,
    {
        let key = super::object_key(obj);
        let mut written = lock(&self.0);
        match written.get(&key) {
            Some(w) if w.held || w.based_on == obj.meta().resource_version => {
                return w.status.clone();
            }
            Some(_) => {
                written.remove(&key);
            }
            None => {}
        }
        cached.cloned().unwrap_or_default()
    }

    /// `status` was written on top of the cached `obj`.
    pub fn wrote<K>(&self, obj: &K, status: &S)
    where
        K: Resource,
        K::DynamicType: Default,
    {
        self.keep(obj, status, false);
    }

    /// `status` is `obj`'s new status but is not written yet: reconciles start from it
    /// until one writes it ([`WrittenStatuses::is_held`] tells that one to).
    pub fn hold<K>(&self, obj: &K, status: &S)
    where
        K: Resource,
        K::DynamicType: Default,
    {
        self.keep(obj, status, true);
    }

    /// Whether `obj` has a status held back, which the next write must send even when
    /// the reconcile derived no change from it.
    pub fn is_held<K>(&self, obj: &K) -> bool
    where
        K: Resource,
        K::DynamicType: Default,
    {
        lock(&self.0)
            .get(&super::object_key(obj))
            .is_some_and(|w| w.held)
    }

    fn keep<K>(&self, obj: &K, status: &S, held: bool)
    where
        K: Resource,
        K::DynamicType: Default,
    {
        lock(&self.0).insert(
            super::object_key(obj),
            WrittenStatus {
                based_on: obj.meta().resource_version.clone(),
                status: status.clone(),
                held,
            },
        );
    }

    /// Drop what is kept of the `K` named `namespace/name` (it is gone).
    pub fn forget<K>(&self, namespace: &str, name: &str)
    where
        K: Resource,
        K::DynamicType: Default,
    {
        lock(&self.0).remove(&super::key_of::<K>(namespace, name));
    }

    /// How many writes the cache does not show yet.
    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// Whether the cache shows every write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
impl Cache {
    /// Tests: the BackupTargets the target watch would show (call once per cache).
    pub fn seed_targets(&self, targets: &[BackupTarget]) {
        let (reader, mut writer) = kube::runtime::reflector::store::<WatchedTarget>();
        for target in targets {
            writer.apply_watcher_event(&Event::Apply(WatchedTarget::of(target)));
        }
        let (schedules, _) = kube::runtime::reflector::store::<BackupSchedule>();
        let (targets_tx, _) = futures::channel::mpsc::unbounded();
        let (schedules_tx, _) = futures::channel::mpsc::unbounded();
        self.add_scope(None, reader, schedules, targets_tx, schedules_tx);
        *lock(&self.selections) = Selections::default();
    }

    /// Tests: Jobs the Job watch would show.
    pub fn seed_jobs(&self, jobs: &[serde_json::Value]) {
        let mut sync = self.syncing();
        for job in jobs {
            let job: Job = serde_json::from_value(job.clone()).expect("a Job");
            self.apply_job_event(Event::Apply(job), &mut sync);
        }
        sync.done();
    }

    /// Tests: pods the pod watch would show.
    pub fn seed_pods(&self, pods: &[serde_json::Value]) {
        let mut sync = self.syncing();
        for pod in pods {
            let pod: Pod = serde_json::from_value(pod.clone()).expect("a Pod");
            self.apply_pod_event(Event::Apply(pod), &mut sync);
        }
        sync.done();
    }

    /// Tests: claims the claim watch would show.
    pub fn seed_claims(&self, claims: &[serde_json::Value]) {
        let mut sync = self.syncing();
        for claim in claims {
            let claim: PersistentVolumeClaim =
                serde_json::from_value(claim.clone()).expect("a PersistentVolumeClaim");
            self.apply_claim_event(Event::Apply(claim), &mut sync);
        }
        sync.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConcurrencyPolicy;
    use crate::controller::runs::{StartTrigger, WaitReason};
    use serde_json::json;

    fn job(name: &str, target: &str, state: &str) -> Job {
        let status = match state {
            "active" => json!({"active": 1}),
            _ => json!({"conditions": [{"type": state, "status": "True",
                                        "lastTransitionTime": "2030-01-01T00:00:00Z"}]}),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {"stowage.dev/kind": "backup", "stowage.dev/target": target},
                         "annotations": {"stowage.dev/target": target}},
            "status": status
        }))
        .unwrap()
    }

    fn request(job: &str, target: &str) -> StartRequest {
        StartRequest {
            target: target.into(),
            job: job.into(),
            trigger: StartTrigger::Schedule {
                name: "nightly".into(),
                policy: ConcurrencyPolicy::Allow,
            },
            claim: "backups".into(),
            claim_single_node: false,
            suspended: false,
            config_invalid: None,
            job_exists: false,
        }
    }

    fn decide(cache: &Cache, job: &str, target: &str) -> StartDecision {
        cache
            .plan_starts("shop", vec![request(job, target)])
            .pop()
            .unwrap()
    }

    fn busy(job: &str) -> StartDecision {
        StartDecision::Wait(WaitReason::TargetBusy { job: job.into() })
    }

    const CREATE: StartDecision = StartDecision::Create { replace: vec![] };

    #[test]
    fn a_started_run_keeps_its_target_busy_from_its_start_decision_to_its_end() {
        let cache = Cache::new(10);
        let mut sync = cache.syncing();
        assert_eq!(decide(&cache, "a-1", "a"), CREATE);
        // Created a moment ago, not in the watch yet: another trigger must wait, and the
        // same run is not started twice.
        assert_eq!(decide(&cache, "a-2", "a"), busy("a-1"));
        assert_eq!(decide(&cache, "a-1", "a"), StartDecision::Exists);
        // Its schedule already counts it as active.
        let of_schedule = cache.jobs_of_schedule("shop", "nightly");
        assert_eq!(of_schedule.len(), 1);
        assert_eq!(
            (of_schedule[0].name.as_str(), of_schedule[0].state),
            ("a-1", JobState::Active)
        );
        // Other targets are free.
        assert_eq!(decide(&cache, "b-1", "b"), CREATE);
        cache.apply_job_event(Event::Apply(job("a-1", "a", "active")), &mut sync);
        assert_eq!(decide(&cache, "a-2", "a"), busy("a-1"));
        cache.apply_job_event(Event::Apply(job("a-1", "a", "Complete")), &mut sync);
        assert_eq!(decide(&cache, "a-2", "a"), CREATE);
    }

    #[test]
    fn a_refused_create_frees_the_target_and_an_unknown_outcome_keeps_it_busy() {
        let cache = Cache::new(10);
        let refused = Err(kube::Error::Api(Box::new(
            kube::core::Status::failure("quota", "Forbidden").with_code(403),
        )));
        let lost = Err(kube::Error::Api(Box::new(
            kube::core::Status::failure("timeout", "Timeout").with_code(504),
        )));
        assert_eq!(decide(&cache, "a-1", "a"), CREATE);
        cache.created("shop", "a-1", &refused);
        assert_eq!(decide(&cache, "a-2", "a"), CREATE);
        cache.created("shop", "a-2", &lost);
        // The Job may exist: other runs wait, the same run may try again (409 if it exists).
        assert_eq!(decide(&cache, "a-3", "a"), busy("a-2"));
        assert_eq!(decide(&cache, "a-2", "a"), CREATE);
    }

    #[test]
    fn a_waiting_object_is_woken_until_it_goes_ahead_and_waits_at_most_the_limit() {
        let cache = Cache::new(10);
        let (targets, _) = kube::runtime::reflector::store::<WatchedTarget>();
        let (schedules, _) = kube::runtime::reflector::store::<BackupSchedule>();
        let (target_tx, mut targets_woken) = futures::channel::mpsc::unbounded();
        let (schedule_tx, mut schedules_woken) = futures::channel::mpsc::unbounded();
        cache.add_scope(None, targets, schedules, target_tx, schedule_tx);
        let t0 = std::time::Instant::now();
        let app_db = || Deferred::Target("shop".into(), "app-db".into());
        let nightly = || Deferred::Schedule("shop".into(), "nightly".into());

        assert!(cache.defer(app_db(), t0));
        assert!(cache.defer(nightly(), t0));
        cache.wake_deferred();
        assert_eq!(
            targets_woken.try_recv().unwrap(),
            ObjectRef::new("app-db").within("shop")
        );
        assert_eq!(
            schedules_woken.try_recv().unwrap(),
            ObjectRef::new("nightly").within("shop")
        );
        // Woken while Jobs are still created: it waits again, counted from the first time.
        let second = std::time::Duration::from_secs(1);
        assert!(cache.defer(app_db(), t0 + DEFER_LIMIT - second));
        assert!(!cache.defer(app_db(), t0 + DEFER_LIMIT), "waited the limit");
        // The schedule went ahead: neither is woken again.
        cache.undefer(&nightly());
        cache.wake_deferred();
        assert!(targets_woken.try_recv().is_err());
        assert!(schedules_woken.try_recv().is_err());
    }

    #[test]
    fn a_relist_drops_jobs_deleted_while_the_watch_was_away() {
        let cache = Cache::new(10);
        let mut sync = cache.syncing();
        for name in ["a-1", "a-2"] {
            cache.apply_job_event(Event::Apply(job(name, "a", "active")), &mut sync);
        }
        assert_eq!(cache.jobs_of_target("shop", "a").len(), 2);
        cache.apply_job_event(Event::Init, &mut sync);
        cache.apply_job_event(Event::InitApply(job("a-2", "a", "Complete")), &mut sync);
        // Until the list completes, readers see the previous state.
        assert_eq!(cache.jobs_of_target("shop", "a").len(), 2);
        cache.apply_job_event(Event::InitDone, &mut sync);
        let jobs = cache.jobs_of_target("shop", "a");
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].state, JobState::Succeeded);
        assert!(cache.is_synced());
        assert_eq!(decide(&cache, "a-3", "a"), CREATE);
    }

    #[test]
    fn caches_are_synced_only_once_every_watch_has_listed() {
        let cache = Cache::new(10);
        let mut jobs = cache.syncing();
        let mut pods = cache.syncing();
        assert!(!cache.is_synced());
        cache.apply_job_event(Event::InitDone, &mut jobs);
        assert!(!cache.is_synced());
        cache.apply_pod_event(Event::InitDone, &mut pods);
        assert!(cache.is_synced());
        // A later relist does not count twice.
        cache.apply_pod_event(Event::InitDone, &mut pods);
        assert!(cache.is_synced());
    }

    fn target(labels: serde_json::Value, recorded: &[&str]) -> BackupTarget {
        let backups: Vec<serde_json::Value> = recorded
            .iter()
            .map(|j| json!({"outcome": "Succeeded", "job": j}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
            "metadata": {"name": "app-db", "namespace": "shop", "labels": labels},
            "spec": {"http": {"url": "http://x.shop/"}, "storage": {"claimName": "backups"}},
            "status": {"recentBackups": backups, "observedGeneration": 3}
        }))
        .unwrap()
    }

    #[test]
    fn a_schedule_selects_the_current_targets_as_labels_and_its_selector_change() {
        let cache = Cache::new(10);
        let (targets, mut writer) = kube::runtime::reflector::store::<WatchedTarget>();
        let (schedules, _) = kube::runtime::reflector::store::<BackupSchedule>();
        let (target_tx, _target_rx) = futures::channel::mpsc::unbounded();
        let (schedule_tx, _schedule_rx) = futures::channel::mpsc::unbounded();
        cache.add_scope(None, targets, schedules, target_tx, schedule_tx);
        let named = |name: &str, tier: &str, recorded: &[&str]| {
            let mut t = target(json!({ "tier": tier }), recorded);
            t.metadata.name = Some(name.to_owned());
            t
        };
        // What the target watch does: apply to the store, then report the change.
        let mut put = |old: Option<&BackupTarget>, new: Option<&BackupTarget>| {
            match new {
                Some(t) => writer.apply_watcher_event(&Event::Apply(WatchedTarget::of(t))),
                None => writer.apply_watcher_event(&Event::Delete(WatchedTarget::of(old.unwrap()))),
            }
            let digest =
                |t: Option<&BackupTarget>| t.map(|t| TargetDigest::of(&WatchedTarget::of(t)));
            cache.target_changed(digest(old).as_ref(), digest(new).as_ref(), "shop");
        };
        let schedule = |generation: i64, tier: &str| -> BackupSchedule {
            serde_json::from_value(json!({
                "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupSchedule",
                "metadata": {"name": "nightly", "namespace": "shop", "generation": generation},
                "spec": {"schedule": "0 3 * * *", "targets": {"matchLabels": {"tier": tier}}}
            }))
            .unwrap()
        };
        let selected = |schedule: &BackupSchedule| -> Vec<(String, usize)> {
            let selector = Selector::try_from(schedule.spec.targets.clone()).unwrap();
            cache
                .targets_selected(schedule, &selector)
                .iter()
                .map(|t| {
                    let recorded = t.status.as_ref().map_or(0, |s| s.recent_backups.len());
                    (t.name_any(), recorded)
                })
                .collect()
        };
        let (a, b) = (named("a", "db", &[]), named("b", "web", &[]));
        put(None, Some(&a));
        put(None, Some(&b));
        let nightly = schedule(1, "db");
        assert_eq!(selected(&nightly), [("a".to_owned(), 0)]);

        // Relabelled into the selection.
        let b_db = named("b", "db", &[]);
        put(Some(&b), Some(&b_db));
        assert_eq!(selected(&nightly), [("a".into(), 0), ("b".into(), 0)]);
        // A status change keeps the selection and shows the current object.
        let a_recorded = named("a", "db", &["j1"]);
        put(Some(&a), Some(&a_recorded));
        assert_eq!(selected(&nightly), [("a".into(), 1), ("b".into(), 0)]);
        // Created and deleted.
        let c = named("c", "db", &[]);
        put(None, Some(&c));
        put(Some(&a_recorded), None);
        assert_eq!(selected(&nightly), [("b".into(), 0), ("c".into(), 0)]);
        // The schedule's selector changed (a new generation).
        assert_eq!(selected(&schedule(2, "web")), []);
        assert_eq!(selected(&schedule(3, "db")).len(), 2);
    }

    #[test]
    fn a_target_change_wakes_only_the_schedules_that_select_it_and_only_when_it_matters() {
        let cache = Cache::new(10);
        let (schedules, mut writer) = kube::runtime::reflector::store::<BackupSchedule>();
        for (name, tier) in [
            ("db-nightly", "db"),
            ("web-hourly", "web"),
            ("db-weekly", "db"),
        ] {
            let schedule: BackupSchedule = serde_json::from_value(json!({
                "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupSchedule",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"schedule": "0 3 * * *", "targets": {"matchLabels": {"tier": tier}}}
            }))
            .unwrap();
            writer.apply_watcher_event(&Event::Apply(schedule));
        }
        let (targets, _) = kube::runtime::reflector::store::<WatchedTarget>();
        let (target_tx, _target_rx) = futures::channel::mpsc::unbounded();
        let (schedule_tx, mut woken) = futures::channel::mpsc::unbounded();
        cache.add_scope(None, targets, schedules, target_tx, schedule_tx);
        let mut wakes = |old: Option<&TargetDigest>, new: Option<&TargetDigest>| {
            cache.target_changed(old, new, "shop");
            let mut names = Vec::new();
            while let Ok(s) = woken.try_recv() {
                names.push(s.name);
            }
            names.sort();
            names
        };
        let db = TargetDigest::of(&WatchedTarget::of(&target(json!({"tier": "db"}), &[])));
        let db_recorded =
            TargetDigest::of(&WatchedTarget::of(&target(json!({"tier": "db"}), &["j1"])));
        let web = TargetDigest::of(&WatchedTarget::of(&target(json!({"tier": "web"}), &["j1"])));
        type Case<'a> = (
            &'a str,
            Option<&'a TargetDigest>,
            Option<&'a TargetDigest>,
            Vec<&'a str>,
        );
        let cases: Vec<Case> = vec![
            ("created", None, Some(&db), vec!["db-nightly", "db-weekly"]),
            (
                "unchanged (a status write schedules do not read)",
                Some(&db),
                Some(&db),
                vec![],
            ),
            (
                "a backup recorded",
                Some(&db),
                Some(&db_recorded),
                vec!["db-nightly", "db-weekly"],
            ),
            (
                "relabelled: old and new selectors",
                Some(&db_recorded),
                Some(&web),
                vec!["db-nightly", "db-weekly", "web-hourly"],
            ),
            ("deleted", Some(&web), None, vec!["web-hourly"]),
        ];
        for (case, old, new, expected) in cases {
            assert_eq!(wakes(old, new), expected, "{case}");
        }
        // Only what schedules read is in the digest.
        let mut other_status = target(json!({"tier": "db"}), &[]);
        other_status.status.as_mut().unwrap().observed_generation = Some(9);
        assert_eq!(TargetDigest::of(&WatchedTarget::of(&other_status)), db);
    }

    #[test]
    fn a_written_status_stands_in_for_the_cached_one_until_the_version_moves() {
        let written: WrittenStatuses<String> = WrittenStatuses::default();
        let at = |name: &str, version: &str| {
            let mut t = target(json!({}), &[]);
            t.metadata.name = Some(name.to_owned());
            t.metadata.resource_version = Some(version.to_owned());
            t
        };
        let cached = "old".to_owned();
        // Nothing written: the cache's status (or the default without one).
        assert_eq!(written.current(&at("t", "10"), Some(&cached)), "old");
        assert_eq!(written.current(&at("t", "10"), None), "");
        written.wrote(&at("t", "10"), &"new".to_owned());
        // The cache still shows version 10: what was written on top of it.
        assert_eq!(written.current(&at("t", "10"), Some(&cached)), "new");
        assert_eq!(written.current(&at("other", "10"), Some(&cached)), "old");
        assert_eq!(written.len(), 1);
        // Any other version (the write arrived, or another writer's): the cache's, and
        // the entry is gone.
        let theirs = "theirs".to_owned();
        assert_eq!(written.current(&at("t", "12"), Some(&theirs)), "theirs");
        assert!(written.is_empty());
        written.wrote(&at("t", "12"), &"again".to_owned());
        written.forget::<BackupTarget>("shop", "t");
        assert_eq!(written.current(&at("t", "12"), Some(&cached)), "old");
    }

    #[test]
    fn a_held_status_stands_in_for_the_cached_one_until_it_is_written() {
        let written: WrittenStatuses<String> = WrittenStatuses::default();
        let at = |version: &str| {
            let mut t = target(json!({}), &[]);
            t.metadata.name = Some("t".to_owned());
            t.metadata.resource_version = Some(version.to_owned());
            t
        };
        let cached = "old".to_owned();
        written.wrote(&at("10"), &"written".to_owned());
        assert!(!written.is_held(&at("10")), "a write is not held");
        written.hold(&at("10"), &"held".to_owned());
        assert!(written.is_held(&at("10")));
        assert_eq!(written.current(&at("10"), Some(&cached)), "held");
        // The earlier write arriving (or a spec change) moves the version: still held,
        // the operator's decision is newer than it.
        assert_eq!(written.current(&at("11"), Some(&cached)), "held");
        assert!(written.is_held(&at("11")));
        // Written: an ordinary write again, dropped once the version moves.
        written.wrote(&at("11"), &"held".to_owned());
        assert!(!written.is_held(&at("11")));
        assert_eq!(written.current(&at("12"), Some(&cached)), "old");
        assert!(written.is_empty());
        written.hold(&at("12"), &"held".to_owned());
        written.forget::<BackupTarget>("shop", "t");
        assert!(!written.is_held(&at("12")), "forgotten with its object");
    }
}
