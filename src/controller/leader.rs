//! Leader election on a `coordination.k8s.io/v1` Lease, and the fence that keeps a replica
//! from writing once it may have lost the Lease.
//!
//! Several replicas may run; one holds the Lease and reconciles, the others serve
//! `/healthz` and wait. The holder renews the Lease every [`LeaseTiming::retry_period`]
//! with an optimistic-concurrency update (the `resourceVersion` it last wrote), so a renewal
//! never overwrites a takeover. A standby takes the Lease over once it has seen the same
//! Lease record, unchanged, for the record's `leaseDurationSeconds` by its own monotonic
//! clock (not by comparing the holder's `renewTime` with its wall clock, so clock skew
//! between nodes does not matter).
//!
//! A replica learns that it lost the Lease only when it talks to the API server again,
//! which may be long after a standby took over: a leader paused (SIGSTOP, a stalled VM) or
//! partitioned from the API server resumes and would keep writing. The [`LeaderFence`]
//! closes that window: it records, on this replica's monotonic clock, when a renewal was
//! last *sent* and confirmed, and is held only while that is recent enough that no standby
//! can have taken over yet (see [`fence_state`]). The controllers' client refuses writes
//! while the fence is not held ([`fenced_client`]), and [`Elector::lost`] stops the
//! controllers when it expires.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::client::Body;
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Field manager of the Lease writes.
const FIELD_MANAGER: &str = "stowage-controller";

/// The shortest interval between Lease requests, whatever the duration.
const MIN_RETRY_PERIOD: Duration = Duration::from_millis(500);

/// Why leader election could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot start leader election on Lease {namespace}/{name}: {source}; is the Lease Role of deploy/rbac/operator.yaml bound in that namespace?"
)]
pub struct ElectionError {
    /// Lease namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// The underlying error.
    #[source]
    pub source: kube::Error,
}

/// The intervals of the election, all derived from the Lease duration
/// (`--lease-duration-seconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a Lease stays valid after its last renewal: a standby takes it over once it
    /// has seen it unchanged for this long.
    pub duration: Duration,
}

impl LeaseTiming {
    /// Timing for a Lease of `duration_seconds`.
    pub fn from_seconds(duration_seconds: u64) -> Self {
        LeaseTiming {
            duration: Duration::from_secs(duration_seconds),
        }
    }

    /// How often the leader renews and a standby looks: a sixth of the duration (at least
    /// 0.5 s), so the leader gets about four attempts before its fence expires.
    pub fn retry_period(&self) -> Duration {
        (self.duration / 6).max(MIN_RETRY_PERIOD)
    }

    /// How much earlier than a standby may take over the leader stops writing: a third of
    /// the duration. It must cover the time a write that passed the fence needs to reach
    /// the API server, and, against a standby that judges expiry by the `renewTime` and its
    /// wall clock (kube-lease-manager did, client-go does not), the clock skew between nodes.
    /// A third leaves the leader two thirds of the duration to renew (5 s of 15 s by default,
    /// as client-go's renew deadline of 10 s).
    pub fn fence_margin(&self) -> Duration {
        self.duration / 3
    }

    /// How long one Lease request may take before it counts as failed (its outcome is then
    /// unknown, and a renewal is not counted): a third of the duration.
    pub fn request_timeout(&self) -> Duration {
        (self.duration / 3).max(MIN_RETRY_PERIOD)
    }
}

/// Whether the fence is held, at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceState {
    /// This replica never acquired the Lease, or its term ended (another replica holds
    /// the Lease, or this one released it).
    NotHeld,
    /// Held for `remaining` more, unless renewed.
    Held {
        /// Time left before the fence expires.
        remaining: Duration,
    },
    /// The last confirmed renewal is too old: a standby may take the Lease over soon.
    Expired {
        /// Time since the last confirmed renewal was sent.
        since_renewal: Duration,
    },
}

/// The fence at `now`, given when the last confirmed renewal (or the acquisition) was sent.
///
/// Held while `now < last_renewal + duration - margin`. A standby takes over only after it
/// has seen one Lease record unchanged for `duration`, and it first saw the last record
/// this replica wrote no earlier than that write was sent; so the fence expires at least
/// `margin` before any takeover. All instants are monotonic: the clock keeps running while
/// the process is stopped (SIGSTOP), so a resumed leader finds its fence expired until a
/// renewal succeeds.
pub fn fence_state(
    last_renewal: Option<Instant>,
    now: Instant,
    duration: Duration,
    margin: Duration,
) -> FenceState {
    let Some(last) = last_renewal else {
        return FenceState::NotHeld;
    };
    let valid_for = duration.saturating_sub(margin);
    let elapsed = now.saturating_duration_since(last);
    if elapsed < valid_for {
        FenceState::Held {
            remaining: valid_for - elapsed,
        }
    } else {
        FenceState::Expired {
            since_renewal: elapsed,
        }
    }
}

/// This replica's term as the leader, as the fence records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    /// Not acquired yet.
    NotYet,
    /// Leading; the last confirmed renewal was sent at this instant.
    Leading(Instant),
    /// Over: lost, released, or the fence expired. A process leads at most once.
    Ended,
}

#[derive(Debug)]
struct FenceInner {
    lease: String,
    namespace: String,
    timing: LeaseTiming,
    term: Mutex<Term>,
}

/// A cheap, clonable, synchronous check that this replica still holds the leader Lease,
/// by its own monotonic clock ([`fence_state`]). Check [`LeaderFence::is_held`] right
/// before each write; the controllers' client does for every request ([`fenced_client`]).
///
/// Once the fence expires it stays closed: a renewal that succeeds later does not reopen
/// it, the controllers stop and the process exits, so a pause never leads to two leaders.
#[derive(Clone, Debug)]
pub struct LeaderFence {
    inner: Arc<FenceInner>,
}

impl LeaderFence {
    /// A fence for Lease `namespace/lease`, not held until the Lease is acquired.
    pub fn new(lease: &str, namespace: &str, timing: LeaseTiming) -> Self {
        LeaderFence {
            inner: Arc::new(FenceInner {
                lease: lease.to_owned(),
                namespace: namespace.to_owned(),
                timing,
                term: Mutex::new(Term::NotYet),
            }),
        }
    }

    /// Whether this replica may write as the leader now.
    pub fn is_held(&self) -> bool {
        matches!(self.state(), FenceState::Held { .. })
    }

    /// The fence now.
    pub fn state(&self) -> FenceState {
        self.state_at(Instant::now())
    }

    /// The Lease's `namespace/name`.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.inner.namespace, self.inner.lease)
    }

    /// The election's intervals.
    pub fn timing(&self) -> LeaseTiming {
        self.inner.timing
    }

    fn term(&self) -> std::sync::MutexGuard<'_, Term> {
        self.inner.term.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state_at(&self, now: Instant) -> FenceState {
        let last = match *self.term() {
            Term::Leading(at) => Some(at),
            Term::NotYet | Term::Ended => None,
        };
        let timing = self.inner.timing;
        fence_state(last, now, timing.duration, timing.fence_margin())
    }

    /// Whether the term started and has not ended (the fence may have expired).
    fn leading(&self) -> bool {
        matches!(*self.term(), Term::Leading(_))
    }

    /// Whether the term is over.
    fn ended(&self) -> bool {
        matches!(*self.term(), Term::Ended)
    }

    /// Record a confirmed acquisition or renewal sent at `sent`. Starts the term, or
    /// extends it while the fence is held; returns `false` when the fence expired before
    /// this confirmation arrived (it stays expired) or the term is over.
    fn renewed(&self, sent: Instant) -> bool {
        let now = Instant::now();
        let timing = self.inner.timing;
        let mut term = self.term();
        match *term {
            Term::NotYet => {
                *term = Term::Leading(sent);
                true
            }
            Term::Leading(last) => {
                match fence_state(Some(last), now, timing.duration, timing.fence_margin()) {
                    FenceState::Held { .. } => {
                        *term = Term::Leading(last.max(sent));
                        true
                    }
                    FenceState::Expired { .. } | FenceState::NotHeld => false,
                }
            }
            Term::Ended => false,
        }
    }

    /// End the term: the fence closes for good.
    fn end(&self) {
        *self.term() = Term::Ended;
    }

    /// Resolves when the fence expires, with the time since the last confirmed renewal;
    /// `None` at once when it is not held (never acquired, or the term ended).
    pub async fn expired(&self) -> Option<Duration> {
        loop {
            match self.state() {
                FenceState::Held { remaining } => tokio::time::sleep(remaining).await,
                FenceState::Expired { since_renewal } => return Some(since_renewal),
                FenceState::NotHeld => return None,
            }
        }
    }
}

/// What a replica does next with the Lease, from what it last saw of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The Lease does not exist: create it, held by this replica.
    Create,
    /// The Lease is free, or its holder stopped renewing it: take it.
    Acquire,
    /// This replica holds it: renew it.
    Renew,
    /// Another replica holds it and renews it: look again later.
    Wait,
}

/// What a replica knows of the Lease record it last saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenLease<'a> {
    /// `spec.holderIdentity` (an empty string counts as none).
    pub holder: Option<&'a str>,
    /// `spec.leaseDurationSeconds`.
    pub duration: Option<Duration>,
    /// How long this replica has seen this record (this `resourceVersion`) unchanged.
    pub unchanged_for: Duration,
}

/// The next step of replica `identity`, given the Lease record it saw (`None`: there is
/// none) and the duration it would write.
///
/// Another holder's Lease is taken over once this replica has seen the record unchanged
/// for the record's own duration (this replica's when the record has none), as client-go
/// does; a record this replica holds (e.g. written before a restart under the same
/// identity) is renewed at once.
pub fn next_step(seen: Option<SeenLease<'_>>, identity: &str, duration: Duration) -> Step {
    let Some(seen) = seen else {
        return Step::Create;
    };
    match seen.holder.filter(|h| !h.is_empty()) {
        None => Step::Acquire,
        Some(holder) if holder == identity => Step::Renew,
        Some(_) if seen.unchanged_for >= seen.duration.unwrap_or(duration) => Step::Acquire,
        Some(_) => Step::Wait,
    }
}

/// The Lease as last read or written, and since when (by this replica's monotonic clock)
/// it has been seen unchanged.
struct Seen {
    lease: Option<Lease>,
    since: Instant,
}

fn holder_of(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 409)
}

/// The background task that competes for, holds, renews and finally releases the Lease.
struct Campaign {
    api: Api<Lease>,
    name: String,
    identity: String,
    fence: LeaderFence,
    leading: watch::Sender<bool>,
    seen: Option<Seen>,
}

/// How a Lease request went.
enum Written {
    /// Written; the Lease as the API server returned it.
    Ok(Box<Lease>),
    /// Someone else wrote it first (409): read it again.
    Conflict,
    /// Failed or timed out; the message says why.
    Failed(String),
}

impl Campaign {
    /// Compete for the Lease, then hold it until `stop` is set, the fence expires, or
    /// another replica holds it; release it if this replica still holds it.
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let timing = self.fence.timing();
        loop {
            if *stop.borrow() || self.fence.ended() {
                break;
            }
            let leading = self.fence.leading();
            if leading && !self.fence.is_held() {
                // Expired, and it stays so: Elector::lost logs it and the controllers stop.
                // Renew no more; release once they have stopped.
                let _ = self.leading.send(false);
                let _ = stop.wait_for(|s| *s).await;
                break;
            }
            // The leader renews from what it last wrote; everyone else reads first.
            if (!leading || self.seen.is_none())
                && let Err(message) = self.read().await
            {
                tracing::warn!(
                    lease = self.name,
                    error = message,
                    "cannot read the leader Lease"
                );
                self.pause(&mut stop, timing.retry_period()).await;
                continue;
            }
            let step = self.next_step(timing.duration);
            if step == Step::Wait {
                if leading {
                    let holder = self
                        .seen
                        .as_ref()
                        .and_then(|s| s.lease.as_ref())
                        .and_then(holder_of)
                        .unwrap_or_default()
                        .to_owned();
                    tracing::error!(
                        lease = self.name,
                        holder,
                        "another replica holds the leader Lease now; writes are refused and the controllers stop"
                    );
                    break;
                }
                self.pause(&mut stop, timing.retry_period()).await;
                continue;
            }
            let sent = Instant::now();
            let written = tokio::select! {
                written = self.write(step) => written,
                _ = stop.wait_for(|s| *s) => break,
            };
            match written {
                Written::Ok(lease) => {
                    self.seen = Some(Seen {
                        lease: Some(*lease),
                        since: Instant::now(),
                    });
                    if !self.fence.renewed(sent) {
                        // The fence expired before the renewal was confirmed.
                        continue;
                    }
                    if !leading {
                        tracing::info!(
                            lease = self.name,
                            identity = self.identity,
                            "acquired the leader Lease"
                        );
                        let _ = self.leading.send(true);
                    }
                    self.pause(&mut stop, timing.retry_period()).await;
                }
                Written::Conflict => {
                    tracing::debug!(
                        lease = self.name,
                        ?step,
                        "the Lease changed meanwhile; reading it again"
                    );
                    self.seen = None;
                }
                Written::Failed(message) => {
                    if leading {
                        let left = match self.fence.state() {
                            FenceState::Held { remaining } => remaining.as_secs_f64(),
                            _ => 0.0,
                        };
                        tracing::warn!(
                            lease = self.name,
                            error = message,
                            writes_stop_in_seconds = left,
                            "cannot renew the leader Lease"
                        );
                    } else {
                        tracing::warn!(
                            lease = self.name,
                            error = message,
                            ?step,
                            "cannot acquire the leader Lease"
                        );
                    }
                    self.pause(&mut stop, timing.retry_period()).await;
                }
            }
        }
        self.fence.end();
        if *self.leading.borrow() {
            let _ = self.leading.send(false);
        }
        self.release().await;
    }

    /// The next step, from the Lease as last seen.
    fn next_step(&self, duration: Duration) -> Step {
        let now = Instant::now();
        let seen = self.seen.as_ref().and_then(|seen| {
            let lease = seen.lease.as_ref()?;
            Some(SeenLease {
                holder: holder_of(lease),
                duration: lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_duration_seconds)
                    .and_then(|d| u64::try_from(d).ok())
                    .map(Duration::from_secs),
                unchanged_for: now.saturating_duration_since(seen.since),
            })
        });
        next_step(seen, &self.identity, duration)
    }

    /// Sleep `period`, or less when stopped meanwhile.
    async fn pause(&self, stop: &mut watch::Receiver<bool>, period: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    /// Read the Lease; a new `resourceVersion` restarts the "unchanged since" clock.
    async fn read(&mut self) -> Result<(), String> {
        let timeout = self.fence.timing().request_timeout();
        let lease = match tokio::time::timeout(timeout, self.api.get_opt(&self.name)).await {
            Ok(Ok(lease)) => lease,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {timeout:?}")),
        };
        let version = |l: &Option<Lease>| l.as_ref().map(|l| l.resource_version());
        let unchanged = self
            .seen
            .as_ref()
            .is_some_and(|s| version(&s.lease) == version(&lease));
        if !unchanged {
            self.seen = Some(Seen {
                lease,
                since: Instant::now(),
            });
        }
        Ok(())
    }

    /// Create, take or renew the Lease as this replica's.
    async fn write(&self, step: Step) -> Written {
        let timing = self.fence.timing();
        let now = MicroTime(jiff::Timestamp::now());
        let duration = i32::try_from(timing.duration.as_secs()).unwrap_or(i32::MAX);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let current = self.seen.as_ref().and_then(|s| s.lease.clone());
        let request = async {
            match (step, current) {
                (Step::Renew, Some(mut lease)) => {
                    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                    spec.renew_time = Some(now);
                    spec.lease_duration_seconds = Some(duration);
                    self.api.replace(&self.name, &params, &lease).await
                }
                (Step::Acquire, Some(mut lease)) => {
                    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                    let transitions = spec.lease_transitions.unwrap_or(0);
                    spec.lease_transitions = Some(transitions.saturating_add(1));
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(now.clone());
                    spec.renew_time = Some(now);
                    spec.lease_duration_seconds = Some(duration);
                    self.api.replace(&self.name, &params, &lease).await
                }
                // Step::Create (Wait never writes; Renew and Acquire come with a Lease).
                _ => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            ..ObjectMeta::default()
                        },
                        spec: Some(LeaseSpec {
                            holder_identity: Some(self.identity.clone()),
                            acquire_time: Some(now.clone()),
                            renew_time: Some(now),
                            lease_duration_seconds: Some(duration),
                            lease_transitions: Some(0),
                            ..LeaseSpec::default()
                        }),
                    };
                    self.api.create(&params, &lease).await
                }
            }
        };
        match tokio::time::timeout(timing.request_timeout(), request).await {
            Ok(Ok(lease)) => Written::Ok(Box::new(lease)),
            Ok(Err(e)) if is_conflict(&e) => Written::Conflict,
            Ok(Err(e)) => Written::Failed(e.to_string()),
            Err(_) => Written::Failed(format!("no answer within {:?}", timing.request_timeout())),
        }
    }

    /// Clear the holder if this replica still holds the Lease, so a standby takes over at
    /// once. Conditional on the `resourceVersion`: never clears another replica's hold.
    async fn release(&mut self) {
        let timing = self.fence.timing();
        for _ in 0..3 {
            if self.seen.is_none()
                && let Err(message) = self.read().await
            {
                tracing::warn!(
                    lease = self.name,
                    error = message,
                    "cannot release the leader Lease"
                );
                return;
            }
            let Some(mut lease) = self.seen.as_ref().and_then(|s| s.lease.clone()) else {
                return;
            };
            if holder_of(&lease) != Some(self.identity.as_str()) {
                return;
            }
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = None;
            spec.acquire_time = None;
            spec.renew_time = None;
            spec.lease_duration_seconds = None;
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            };
            let request = self.api.replace(&self.name, &params, &lease);
            match tokio::time::timeout(timing.request_timeout(), request).await {
                Ok(Ok(_)) => {
                    tracing::info!(lease = self.name, "leader Lease released");
                    return;
                }
                Ok(Err(e)) if is_conflict(&e) => self.seen = None,
                Ok(Err(e)) => {
                    tracing::warn!(lease = self.name, error = %e, "cannot release the leader Lease");
                    return;
                }
                Err(_) => {
                    tracing::warn!(
                        lease = self.name,
                        "cannot release the leader Lease: no answer in time"
                    );
                    return;
                }
            }
        }
    }
}

/// A running election: a background task keeps trying to hold (and renew) the Lease,
/// publishes whether this replica holds it, and keeps the [`LeaderFence`].
pub struct Elector {
    fence: LeaderFence,
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Elector {
    /// Start competing as `identity` for the Lease `fence` names (created when missing).
    /// `client` must not be a [`fenced_client`]: the election writes the Lease before it
    /// holds the fence. Fails when the Lease cannot be read at all (RBAC, namespace).
    pub async fn start(
        client: Client,
        identity: &str,
        fence: LeaderFence,
    ) -> Result<Self, ElectionError> {
        let (name, namespace) = (fence.inner.lease.clone(), fence.inner.namespace.clone());
        let api: Api<Lease> = Api::namespaced(client, &namespace);
        api.get_opt(&name).await.map_err(|source| ElectionError {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
        let (leading_tx, leading) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let campaign = Campaign {
            api,
            name: name.clone(),
            identity: identity.to_owned(),
            fence: fence.clone(),
            leading: leading_tx,
            seen: None,
        };
        let task = tokio::spawn(campaign.run(stop_rx));
        tracing::info!(
            lease = name,
            namespace,
            identity,
            "waiting to become the leader"
        );
        Ok(Elector {
            fence,
            leading,
            stop,
            task,
        })
    }

    /// Resolves `true` once this replica holds the Lease, `false` if the election stopped.
    pub fn wait_until_leader(&self) -> impl Future<Output = bool> + Send + 'static {
        let mut leading = self.leading.clone();
        async move { leading.wait_for(|l| *l).await.is_ok() }
    }

    /// Resolves when this replica stops being the leader: its fence expired (logged at
    /// error level with the time since the last renewal), another replica holds the
    /// Lease, or the election stopped. Resolves at once when it is not the leader.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut leading = self.leading.clone();
        let fence = self.fence.clone();
        async move {
            tokio::select! {
                _ = fence.expired() => {}
                _ = leading.wait_for(|l| !*l) => {}
            }
            // Whichever noticed first, an expired fence is the reason to report.
            if let FenceState::Expired { since_renewal } = fence.state() {
                let timing = fence.timing();
                tracing::error!(
                    lease = fence.inner.lease,
                    namespace = fence.inner.namespace,
                    since_last_renewal_seconds = since_renewal.as_secs_f64(),
                    valid_for_seconds = timing
                        .duration
                        .saturating_sub(timing.fence_margin())
                        .as_secs_f64(),
                    "leader fence expired: the Lease was not renewed in time; writes are refused and the controllers stop"
                );
            }
        }
    }

    /// Stop competing and release the Lease if held, so a standby takes over at once.
    pub async fn release(self) {
        let Elector {
            fence, stop, task, ..
        } = self;
        fence.end();
        let _ = stop.send(true);
        if let Err(error) = task.await {
            tracing::warn!(%error, "leader election task failed");
        }
    }
}

/// A write refused because this replica does not hold the leader fence.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused {method} {path}: this replica does not hold the leader Lease {lease} ({state:?}); another replica may be the leader"
)]
pub struct FencedWrite {
    /// The request's method.
    pub method: Method,
    /// The request's path.
    pub path: String,
    /// The Lease (`namespace/name`).
    pub lease: String,
    /// The fence when the write was refused.
    pub state: FenceState,
}

/// Whether a request changes something on the API server.
pub fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A client that sends reads through `client` and refuses every write (create, update,
/// patch, delete; events included) while `fence` is not held, with a [`FencedWrite`]
/// (as `kube::Error::Service`). The fence is checked as each request is sent, so a write
/// cannot leave a replica whose fence expired while the write was being prepared.
pub fn fenced_client(client: Client, fence: LeaderFence) -> Client {
    let namespace = client.default_namespace().to_owned();
    Client::new(
        FencedWrites {
            inner: client,
            fence,
        },
        namespace,
    )
}

#[derive(Clone)]
struct FencedWrites {
    inner: Client,
    fence: LeaderFence,
}

impl tower_service::Service<Request<Body>> for FencedWrites {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if is_write(request.method()) {
            let state = self.fence.state();
            if !matches!(state, FenceState::Held { .. }) {
                let refused = FencedWrite {
                    method: request.method().clone(),
                    path: request.uri().path().to_owned(),
                    lease: self.fence.lease(),
                    state,
                };
                tracing::warn!(error = %refused, "write refused");
                return futures::future::ready(Err(kube::Error::Service(Box::new(refused))))
                    .boxed();
            }
        }
        let client = self.inner.clone();
        async move { client.send(request).await }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_fence_holds_until_the_margin_before_the_lease_expires() {
        let t0 = Instant::now();
        let (duration, margin) = (secs(15.0), secs(5.0));
        // (seconds since the last renewal or None, expected state)
        let cases = [
            (None, FenceState::NotHeld),
            (
                Some(0.0),
                FenceState::Held {
                    remaining: secs(10.0),
                },
            ),
            (
                Some(9.5),
                FenceState::Held {
                    remaining: secs(0.5),
                },
            ),
            (
                Some(10.0),
                FenceState::Expired {
                    since_renewal: secs(10.0),
                },
            ),
            (
                Some(14.0),
                FenceState::Expired {
                    since_renewal: secs(14.0),
                },
            ),
            // A leader stopped for a minute: expired on resume, long before it can look.
            (
                Some(60.0),
                FenceState::Expired {
                    since_renewal: secs(60.0),
                },
            ),
        ];
        for (ago, expected) in cases {
            let now = t0 + secs(ago.unwrap_or(0.0));
            let last = ago.map(|_| t0);
            assert_eq!(
                fence_state(last, now, duration, margin),
                expected,
                "renewed {ago:?} s ago"
            );
        }
        // A renewal "after" now (clocks read in another order) counts as just now.
        assert_eq!(
            fence_state(Some(t0 + secs(1.0)), t0, duration, margin),
            FenceState::Held {
                remaining: secs(10.0)
            }
        );
        // A margin as long as the duration never holds.
        assert!(matches!(
            fence_state(Some(t0), t0, duration, duration),
            FenceState::Expired { .. }
        ));
    }

    #[test]
    fn timing_follows_the_lease_duration() {
        // (duration, retry period, margin)
        let cases = [
            (15, 2.5, 5.0),
            (6, 1.0, 2.0),
            (5, 5.0 / 6.0, 5.0 / 3.0),
            (2, 0.5, 2.0 / 3.0),
        ];
        for (duration, retry, margin) in cases {
            let timing = LeaseTiming::from_seconds(duration);
            let close = |a: Duration, b: f64| (a.as_secs_f64() - b).abs() < 1e-6;
            assert!(
                close(timing.retry_period(), retry),
                "{duration}: {timing:?}"
            );
            assert!(close(timing.fence_margin(), margin), "{duration}");
            // The leader gets several attempts before its fence expires.
            let valid = timing.duration - timing.fence_margin();
            assert!(valid >= timing.retry_period() * 2, "{duration}");
        }
    }

    #[test]
    fn the_next_step_follows_the_lease_record() {
        let d = secs(15.0);
        let seen = |holder: Option<&'static str>, duration: Option<f64>, unchanged: f64| {
            Some(SeenLease {
                holder,
                duration: duration.map(secs),
                unchanged_for: secs(unchanged),
            })
        };
        let cases = [
            (None, Step::Create, "no Lease"),
            (seen(None, None, 0.0), Step::Acquire, "released"),
            (
                seen(Some(""), Some(15.0), 0.0),
                Step::Acquire,
                "empty holder",
            ),
            (seen(Some("me"), Some(15.0), 0.0), Step::Renew, "mine"),
            (seen(Some("me"), Some(15.0), 99.0), Step::Renew, "mine, old"),
            (seen(Some("other"), Some(15.0), 0.0), Step::Wait, "fresh"),
            (seen(Some("other"), Some(15.0), 14.9), Step::Wait, "nearly"),
            (
                seen(Some("other"), Some(15.0), 15.0),
                Step::Acquire,
                "expired",
            ),
            (
                seen(Some("other"), Some(30.0), 20.0),
                Step::Wait,
                "its duration",
            ),
            (seen(Some("other"), None, 15.0), Step::Acquire, "ours"),
            (seen(Some("other"), None, 10.0), Step::Wait, "ours, fresh"),
        ];
        for (seen, expected, what) in cases {
            assert_eq!(next_step(seen, "me", d), expected, "{what}");
        }
    }

    fn fence(duration_seconds: u64) -> LeaderFence {
        LeaderFence::new(
            "stowage-controller",
            "stowage-system",
            LeaseTiming::from_seconds(duration_seconds),
        )
    }

    #[test]
    fn a_fence_opens_once_and_an_expiry_ends_the_term() {
        let f = fence(15);
        assert_eq!(f.state(), FenceState::NotHeld);
        assert!(!f.is_held());
        let start = Instant::now();
        assert!(f.renewed(start));
        assert!(f.is_held());
        // A renewal sent earlier than the one recorded does not move the fence back.
        assert!(f.renewed(start - secs(5.0)));
        assert!(matches!(f.state(), FenceState::Held { remaining } if remaining > secs(9.0)));

        // Renewed 11 s ago: expired; a confirmation arriving now does not reopen it.
        let f = fence(15);
        assert!(f.renewed(Instant::now() - secs(11.0)));
        assert!(
            matches!(f.state(), FenceState::Expired { since_renewal } if since_renewal >= secs(11.0))
        );
        assert!(!f.is_held());
        assert!(!f.renewed(Instant::now()));
        assert!(matches!(f.state(), FenceState::Expired { .. }));
        assert!(!f.is_held());

        // Ended (lost or released): closed for good.
        let f = fence(15);
        assert!(f.renewed(Instant::now()));
        f.end();
        assert!(!f.is_held());
        assert!(!f.renewed(Instant::now()));
        assert!(!f.is_held());
    }

    #[tokio::test]
    async fn expired_resolves_when_the_fence_expires() {
        let f = fence(15);
        assert_eq!(f.expired().await, None, "not held");
        // Renewed 9.9 s ago: 0.1 s left.
        assert!(f.renewed(Instant::now() - secs(9.9)));
        let since = tokio::time::timeout(secs(5.0), f.expired())
            .await
            .expect("resolves once expired")
            .expect("expired");
        assert!(since >= secs(10.0), "{since:?}");
    }

    #[tokio::test]
    async fn the_fenced_client_refuses_writes_without_the_fence() {
        use tower_test::mock;
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let f = fence(15);
        let client = fenced_client(Client::new(service, "shop"), f.clone());
        let leases: Api<Lease> = Api::namespaced(client, "shop");
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                seen.push(format!("{} {}", request.method(), request.uri().path()));
                let body = serde_json::to_vec(&serde_json::json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "l", "namespace": "shop"}
                }))
                .unwrap();
                send.send_response(
                    Response::builder()
                        .status(200)
                        .body(Body::from(body))
                        .unwrap(),
                );
            }
            seen
        });
        let lease = |name: &str| Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: None,
        };

        // Not held: reads pass, writes are refused before they leave.
        leases.get("l").await.expect("a read passes");
        let err = leases
            .create(&PostParams::default(), &lease("refused"))
            .await
            .expect_err("a write is refused");
        let text = err.to_string();
        assert!(
            text.contains("does not hold the leader Lease stowage-system/stowage-controller"),
            "{text}"
        );
        assert!(text.contains("POST"), "{text}");
        assert!(
            leases.delete("l", &Default::default()).await.is_err(),
            "a delete is refused"
        );

        // Held: writes pass.
        assert!(f.renewed(Instant::now()));
        leases
            .create(&PostParams::default(), &lease("passes"))
            .await
            .expect("a write passes while held");

        // Ended: refused again.
        f.end();
        assert!(
            leases
                .create(&PostParams::default(), &lease("late"))
                .await
                .is_err()
        );

        drop(leases);
        let seen = server.await.unwrap();
        assert_eq!(
            seen,
            vec![
                "GET /apis/coordination.k8s.io/v1/namespaces/shop/leases/l",
                "POST /apis/coordination.k8s.io/v1/namespaces/shop/leases",
            ],
            "only the read and the write made while held reached the server"
        );
    }

    #[test]
    fn only_reads_pass_without_the_fence() {
        for (method, write) in [
            (Method::GET, false),
            (Method::HEAD, false),
            (Method::OPTIONS, false),
            (Method::POST, true),
            (Method::PUT, true),
            (Method::PATCH, true),
            (Method::DELETE, true),
        ] {
            assert_eq!(is_write(&method), write, "{method}");
        }
    }
}
