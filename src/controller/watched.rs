//! Jobs and pods as the operator watches them: decoded straight into the few fields the
//! cache keeps, never into the whole object.
//!
//! A run's Job is about 5 KiB of JSON, most of it the pod template (containers, env,
//! volumes, security context), and its pod repeats that spec. The cache keeps a few
//! hundred bytes of each ([`super::cache::RunJob`], [`super::cache::PodSummary`]), so
//! building the full `k8s_openapi` object for every watch event and list item, only to
//! drop it, was most of the operator's work per Job event: during a tick of thousands
//! of runs the Job watch fell behind the API server, which then closed it ("Forcing
//! watcher close due to unresponsiveness"), and its relist cost memory and time.
//!
//! BackupTargets are kept whole, since a reconcile reads all of a target, but not as
//! Rust structs: [`WatchedTarget`] keeps the spec and status as the compact JSON the API
//! server sent (about a third of their parsed size, measured at 5,000 targets),
//! zstd-compressed with contexts shared in a pool (a status packs to about a third of
//! its JSON after one backup, a fifth after ten), and a reconcile unpacks and parses them
//! ([`WatchedTarget::target`]).
//!
//! [`WatchedJob`] and [`WatchedPod`] are the same kinds (`batch/v1` Job, `v1` Pod, the
//! same API paths) with a `Deserialize` that skips everything the cache does not read;
//! what is read is put into an ordinary `Job` or `Pod`, so the code that compacts them
//! is the one that reads full objects in tests.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Mutex;

use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodStatus, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::api::{BackupTarget, BackupTargetStatus};

/// The metadata the cache reads: identity, version, times, labels and annotations
/// (not `managedFields`, owner references or finalizers).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

impl From<Meta> for ObjectMeta {
    fn from(meta: Meta) -> ObjectMeta {
        ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            resource_version: meta.resource_version,
            creation_timestamp: meta.creation_timestamp,
            deletion_timestamp: meta.deletion_timestamp,
            labels: meta.labels,
            annotations: meta.annotations,
            ..ObjectMeta::default()
        }
    }
}

/// A `batch/v1` Job with its metadata (as [`Meta`]), the claims its pod template mounts,
/// and its status; the rest of the spec is skipped while decoding.
#[derive(Clone, Debug, Default)]
pub struct WatchedJob(pub Job);

impl<'de> Deserialize<'de> for WatchedJob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Shape {
            metadata: Option<Meta>,
            spec: Option<Spec>,
            status: Option<JobStatus>,
        }
        #[derive(Deserialize)]
        struct Spec {
            template: Option<Template>,
        }
        #[derive(Deserialize)]
        struct Template {
            spec: Option<TemplateSpec>,
        }
        #[derive(Deserialize)]
        struct TemplateSpec {
            volumes: Option<Vec<ClaimVolume>>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct ClaimVolume {
            name: String,
            persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
        }

        let shape = Shape::deserialize(deserializer)?;
        // Only the claim volumes are kept: they are what the cache reads of the template.
        let volumes = shape
            .spec
            .and_then(|s| s.template)
            .and_then(|t| t.spec)
            .and_then(|s| s.volumes)
            .map(|volumes| {
                volumes
                    .into_iter()
                    .filter(|v| v.persistent_volume_claim.is_some())
                    .map(|v| Volume {
                        name: v.name,
                        persistent_volume_claim: v.persistent_volume_claim,
                        ..Volume::default()
                    })
                    .collect()
            });
        Ok(WatchedJob(Job {
            metadata: shape.metadata.map(ObjectMeta::from).unwrap_or_default(),
            spec: Some(JobSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        volumes,
                        ..PodSpec::default()
                    }),
                },
                ..JobSpec::default()
            }),
            status: shape.status,
        }))
    }
}

/// A `v1` Pod with its metadata (as [`Meta`]) and its status; its spec is skipped while
/// decoding.
#[derive(Clone, Debug, Default)]
pub struct WatchedPod(pub Pod);

impl<'de> Deserialize<'de> for WatchedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Shape {
            metadata: Option<Meta>,
            status: Option<PodStatus>,
        }
        let shape = Shape::deserialize(deserializer)?;
        Ok(WatchedPod(Pod {
            metadata: shape.metadata.map(ObjectMeta::from).unwrap_or_default(),
            spec: None,
            status: shape.status,
        }))
    }
}

/// The Resource and Metadata impls of a watched kind: those of the kind it stands for.
macro_rules! same_kind_as {
    ($watched:ty, $kind:ty) => {
        impl k8s_openapi::Resource for $watched {
            const API_VERSION: &'static str = <$kind as k8s_openapi::Resource>::API_VERSION;
            const GROUP: &'static str = <$kind as k8s_openapi::Resource>::GROUP;
            const KIND: &'static str = <$kind as k8s_openapi::Resource>::KIND;
            const VERSION: &'static str = <$kind as k8s_openapi::Resource>::VERSION;
            const URL_PATH_SEGMENT: &'static str =
                <$kind as k8s_openapi::Resource>::URL_PATH_SEGMENT;
            type Scope = <$kind as k8s_openapi::Resource>::Scope;
        }

        impl k8s_openapi::Metadata for $watched {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.0.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.0.metadata
            }
        }
    };
}

same_kind_as!(WatchedJob, Job);
same_kind_as!(WatchedPod, Pod);

/// A BackupTarget as the operator's cache keeps it: its metadata, and its spec and
/// status as the API server's compact JSON, packed ([`PackedJson`]) and parsed by
/// [`WatchedTarget::target`] when a reconcile reads the target.
#[derive(Clone, Debug)]
pub struct WatchedTarget {
    /// The target's metadata (the watch strips `managedFields`).
    pub metadata: ObjectMeta,
    spec: PackedJson,
    status: Option<PackedJson>,
}

impl<'de> Deserialize<'de> for WatchedTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Shape {
            metadata: ObjectMeta,
            spec: Box<RawValue>,
            #[serde(default)]
            status: Option<Box<RawValue>>,
        }
        let shape = Shape::deserialize(deserializer)?;
        Ok(WatchedTarget {
            metadata: shape.metadata,
            spec: PackedJson::pack(shape.spec.get()),
            status: shape.status.as_deref().map(|s| PackedJson::pack(s.get())),
        })
    }
}

/// zstd level of [`PackedJson`]: the fastest level; a status of ten backup records packs
/// to a fifth of its size at it, one record to a third.
const PACK_LEVEL: i32 = 1;

/// zstd contexts, made once and shared: making one per call allocates and clears its
/// tables every time, and one per thread would cost a context per core. The pools hold
/// as many as were ever in use at once (libzstd allocates them, outside the Rust heap).
static PACKERS: Mutex<Vec<zstd::bulk::Compressor<'static>>> = Mutex::new(Vec::new());
static UNPACKERS: Mutex<Vec<zstd::bulk::Decompressor<'static>>> = Mutex::new(Vec::new());

/// Run `work` with a context from `pool` (a new one when all are in use), then put it back.
fn pooled<C, R>(
    pool: &Mutex<Vec<C>>,
    make: impl FnOnce() -> std::io::Result<C>,
    work: impl FnOnce(&mut C) -> std::io::Result<R>,
) -> std::io::Result<R> {
    let taken = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut context = match taken {
        Some(context) => context,
        None => make()?,
    };
    let result = work(&mut context);
    pool.lock().unwrap_or_else(|e| e.into_inner()).push(context);
    result
}

/// Why a cached BackupTarget cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadTargetError {
    /// It does not match this operator's types (the API server validated it against the
    /// installed CRD, so the CRD is of another release).
    #[error(transparent)]
    Types(#[from] serde_json::Error),
    /// Its packed copy does not unpack: a fault of the operator, not of the object.
    #[error(
        "its cached copy does not unpack ({0}); this is a bug in the operator, and restarting it rebuilds the cache"
    )]
    Unpack(std::io::Error),
}

/// A JSON document kept zstd-compressed, or as it came when that does not make it
/// smaller. A target's status repeats its keys in every backup record, and `lastBackup`
/// is `recentBackups[0]` again: at 5,000 targets (`cargo bench --bench target_cache`)
/// packing holds 0.6x the bytes with one backup record and 0.34x with ten.
#[derive(Clone, Debug)]
enum PackedJson {
    Plain(Box<str>),
    Zstd { len: u32, frame: Box<[u8]> },
}

/// Whether [`PackedJson`] packs. `STOWAGE_TARGET_CACHE_PACKING=off` in the operator's
/// environment keeps every spec and status as it came: a diagnostic, to measure what
/// packing costs in one build (docs/performance.md). Read once.
fn packing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("STOWAGE_TARGET_CACHE_PACKING").map_or(true, |v| v != "off"))
}

impl PackedJson {
    fn pack(json: &str) -> PackedJson {
        if !packing() {
            return PackedJson::Plain(json.into());
        }
        let frame = pooled(
            &PACKERS,
            || zstd::bulk::Compressor::new(PACK_LEVEL),
            |packer| packer.compress(json.as_bytes()),
        );
        match (frame, u32::try_from(json.len())) {
            (Ok(frame), Ok(len)) if frame.len() < json.len() => PackedJson::Zstd {
                len,
                frame: frame.into_boxed_slice(),
            },
            _ => PackedJson::Plain(json.into()),
        }
    }

    /// The JSON, unpacked.
    fn json(&self) -> Result<Cow<'_, [u8]>, ReadTargetError> {
        let (len, frame) = match self {
            PackedJson::Plain(json) => return Ok(Cow::Borrowed(json.as_bytes())),
            PackedJson::Zstd { len, frame } => (*len as usize, frame),
        };
        pooled(&UNPACKERS, zstd::bulk::Decompressor::new, |unpacker| {
            unpacker.decompress(frame, len)
        })
        .map(Cow::Owned)
        .map_err(ReadTargetError::Unpack)
    }
}

impl WatchedTarget {
    /// The BackupPlugin an external target names (`spec.external.plugin`), read from the
    /// raw spec without parsing the rest.
    pub fn external_plugin(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Spec {
            external: Option<External>,
        }
        #[derive(Deserialize)]
        struct External {
            plugin: String,
        }
        serde_json::from_slice::<Spec>(&self.spec.json().ok()?)
            .ok()?
            .external
            .map(|e| e.plugin)
    }
}

/// What a cached BackupTarget's status records of its backups: the Jobs that ran them.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordedJobs {
    #[serde(default)]
    recent_backups: Vec<RecordedJob>,
    #[serde(default)]
    last_backup: Option<RecordedJob>,
}

#[derive(Deserialize)]
struct RecordedJob {
    #[serde(default)]
    job: Option<String>,
}

impl WatchedTarget {
    /// The BackupTarget, unpacked and parsed. [`ReadTargetError::Types`] means the object
    /// does not match the types this operator was built with (a CRD of another version):
    /// the API server validated it against the installed schema.
    pub fn target(&self) -> Result<BackupTarget, ReadTargetError> {
        let spec = serde_json::from_slice(&self.spec.json()?)?;
        let status = match &self.status {
            Some(status) => Some(serde_json::from_slice::<BackupTargetStatus>(
                &status.json()?,
            )?),
            None => None,
        };
        Ok(BackupTarget {
            metadata: self.metadata.clone(),
            spec,
            status,
        })
    }

    /// The Jobs of the backups its status records (`lastBackup`, `recentBackups`), sorted
    /// and without repeats; read without parsing the rest of the status.
    pub fn recorded_jobs(&self) -> Vec<String> {
        let recorded: RecordedJobs = self
            .status
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.json().ok()?).ok())
            .unwrap_or_default();
        let mut jobs: Vec<String> = recorded
            .recent_backups
            .into_iter()
            .chain(recorded.last_backup)
            .filter_map(|b| b.job)
            .collect();
        jobs.sort();
        jobs.dedup();
        jobs
    }

    /// The cached form of `target` (as the watch would deliver it).
    pub fn of(target: &BackupTarget) -> WatchedTarget {
        let json = serde_json::to_string(target).expect("a BackupTarget serializes to JSON");
        serde_json::from_str(&json).expect("a serialized BackupTarget is a WatchedTarget")
    }
}

/// The `kube::Resource` impl of a type that stands for a BackupTarget: the target's kind,
/// group, version and plural, and the type's own `metadata`.
macro_rules! a_backup_target {
    ($t:ty) => {
        impl kube::Resource for $t {
            type DynamicType = ();
            type Scope = kube::core::NamespaceResourceScope;

            fn kind(dt: &()) -> Cow<'_, str> {
                BackupTarget::kind(dt)
            }

            fn group(dt: &()) -> Cow<'_, str> {
                BackupTarget::group(dt)
            }

            fn version(dt: &()) -> Cow<'_, str> {
                BackupTarget::version(dt)
            }

            fn api_version(dt: &()) -> Cow<'_, str> {
                BackupTarget::api_version(dt)
            }

            fn plural(dt: &()) -> Cow<'_, str> {
                BackupTarget::plural(dt)
            }

            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

a_backup_target!(WatchedTarget);
a_backup_target!(TargetMeta);

/// A BackupTarget read for its metadata alone, as the answer to a status write: the spec
/// and status are skipped while decoding, never parsed or packed.
#[derive(Clone, Debug, Deserialize)]
pub struct TargetMeta {
    /// The target's metadata.
    pub metadata: ObjectMeta,
}

/// A watch event of a watched kind as one of the kind it stands for.
pub fn unwrap_event<W, K>(
    event: kube::runtime::watcher::Event<W>,
    unwrap: impl Fn(W) -> K,
) -> kube::runtime::watcher::Event<K> {
    use kube::runtime::watcher::Event;
    match event {
        Event::Apply(w) => Event::Apply(unwrap(w)),
        Event::Delete(w) => Event::Delete(unwrap(w)),
        Event::Init => Event::Init,
        Event::InitApply(w) => Event::InitApply(unwrap(w)),
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::cache::{PodSummary, RunJob};
    use crate::controller::fixtures;
    use crate::jobs::{JobDefaults, RunRequest, build_job};
    use jiff::Timestamp;
    use serde_json::{Value, json};

    /// The Job the operator creates for a scheduled backup, as the API server returns it
    /// (server-set metadata and `managedFields` included), in `state`.
    fn served_job(state: &str) -> Value {
        let tick: Timestamp = "2030-03-01T02:30:00Z".parse().unwrap();
        let request = RunRequest::scheduled("nightly", tick, None, None);
        let job = build_job(&fixtures::target(), &request, &JobDefaults::default()).unwrap();
        let mut job = serde_json::to_value(job).unwrap();
        job["metadata"]["uid"] = json!("0b7c3e0e-5d1f-4c53-9d55-1f7c0e3f5a10");
        job["metadata"]["resourceVersion"] = json!("4711");
        job["metadata"]["creationTimestamp"] = json!("2030-03-01T02:30:00Z");
        job["metadata"]["managedFields"] = json!([{"manager": "stowage", "operation": "Apply",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]);
        match state {
            "active" => {
                job["status"] = json!({"active": 1, "startTime": "2030-03-01T02:30:01Z"});
                job
            }
            "deleting" => {
                job["metadata"]["deletionTimestamp"] = json!("2030-03-01T02:31:00Z");
                job
            }
            "succeeded" => fixtures::finish_job(job, true, "2030-03-01T02:31:00Z"),
            "failed" => fixtures::finish_job(job, false, "2030-03-01T02:31:00Z"),
            other => panic!("no state {other}"),
        }
    }

    #[test]
    fn a_watched_job_compacts_as_the_full_job_does() {
        for state in ["active", "deleting", "succeeded", "failed"] {
            let served = served_job(state);
            let full: Job = serde_json::from_value(served.clone()).unwrap();
            let watched: WatchedJob = serde_json::from_value(served).unwrap();
            let compact = RunJob::from_job(&watched.0);
            assert_eq!(compact, RunJob::from_job(&full), "{state}");
            // What the comparison stands on: the fields a run is found and told by.
            assert!(compact.claim.is_some(), "{state}: {compact:?}");
            assert!(compact.kind.is_some(), "{state}: {compact:?}");
            assert_eq!(compact.schedule.as_deref(), Some("nightly"), "{state}");
            assert_eq!(
                watched.0.metadata.resource_version.as_deref(),
                Some("4711"),
                "{state}: the watch resumes from the version"
            );
            assert!(watched.0.metadata.managed_fields.is_none(), "{state}");
            let template = watched.0.spec.unwrap().template.spec.unwrap();
            assert!(
                template.containers.is_empty(),
                "{state}: the template is skipped"
            );
        }
    }

    #[test]
    fn a_watched_pod_summarizes_as_the_full_pod_does() {
        let waiting = |reason: &str, message: &str| {
            json!({"containerStatuses": [{"name": "runner", "image": "stowage:test",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}}}]})
        };
        let unschedulable = json!({"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims"}]});
        for status in [
            waiting("CreateContainerConfigError", "secret \"db\" not found"),
            waiting("ImagePullBackOff", "Back-off pulling image \"postgres:17\""),
            waiting("ContainerCreating", ""),
            unschedulable,
            json!({}),
        ] {
            let mut served = fixtures::pod_with_message("app-db-x", "", 0);
            served["status"] = status.clone();
            served["spec"] = json!({"containers": [{"name": "runner", "image": "stowage:test",
                "env": [{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}]});
            let full: Pod = serde_json::from_value(served.clone()).unwrap();
            let watched: WatchedPod = serde_json::from_value(served).unwrap();
            assert_eq!(
                PodSummary::from_pod(&watched.0),
                PodSummary::from_pod(&full),
                "{status}"
            );
            assert!(watched.0.spec.is_none());
        }
    }

    #[test]
    fn a_watched_target_reads_back_as_the_target_it_was() {
        let bare = fixtures::target();
        let mut recorded = fixtures::target();
        let record = |job: &str| json!({"outcome": "Succeeded", "job": job, "artifact": format!("{job}.dump.zst")});
        recorded.status = Some(
            serde_json::from_value(json!({
                "observedGeneration": 1,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Probed",
                                "message": "ok", "lastTransitionTime": "2030-03-01T02:30:00Z"}],
                "lastBackup": record("b-2"),
                "recentBackups": [record("b-2"), record("b-1")]
            }))
            .unwrap(),
        );
        for (target, jobs) in [(bare, vec![]), (recorded, vec!["b-1", "b-2"])] {
            let watched = WatchedTarget::of(&target);
            let back = watched.target().unwrap();
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(&target).unwrap()
            );
            assert!(back.status.is_some() == target.status.is_some());
            assert_eq!(watched.recorded_jobs(), jobs);
        }
    }

    /// A status as the operator writes it after ten backups.
    fn status_of_ten_backups() -> Value {
        let record = |i: u32| {
            json!({"outcome": "Succeeded", "startTime": format!("2030-03-{:02}T02:30:00Z", i + 1),
                   "completionTime": format!("2030-03-{:02}T02:30:07Z", i + 1),
                   "artifact": format!("shop/app-db/2030-03-{:02}T02-30-00Z-postgres.dump.zst", i + 1),
                   "sizeBytes": 123_456 + i, "size": "120.6 KiB",
                   "sha256": format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(i.to_le_bytes())),
                   "durationSeconds": 7.2, "job": format!("app-db-nightly-{i}"), "schedule": "nightly"})
        };
        json!({
            "observedGeneration": 1, "plugin": "postgres",
            "conditions": [{"type": "Ready", "status": "True", "reason": "BackedUp",
                            "message": "the last backup succeeded",
                            "lastTransitionTime": "2030-03-01T02:30:07Z"}],
            "lastBackup": record(9),
            "recentBackups": (0..10).rev().map(record).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn a_cached_status_is_packed_and_unpacks_to_the_same_json() {
        let status = serde_json::to_string(&status_of_ten_backups()).unwrap();
        let packed = PackedJson::pack(&status);
        let PackedJson::Zstd { frame, .. } = &packed else {
            panic!("a status of ten backups is kept as it came: {packed:?}");
        };
        assert!(
            frame.len() * 3 < status.len(),
            "{} bytes packed to {}",
            status.len(),
            frame.len()
        );
        assert_eq!(packed.json().unwrap(), status.as_bytes());

        // JSON too small to gain from packing is kept as it came.
        let small = PackedJson::pack("{}");
        assert!(matches!(small, PackedJson::Plain(_)), "{small:?}");
        assert_eq!(small.json().unwrap(), "{}".as_bytes());

        // A damaged frame is an error, not a default.
        let damaged = PackedJson::Zstd {
            len: status.len() as u32,
            frame: vec![0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3].into_boxed_slice(),
        };
        let err = damaged.json().unwrap_err();
        assert!(matches!(err, ReadTargetError::Unpack(_)), "{err:?}");
        assert!(err.to_string().contains("bug in the operator"), "{err}");
    }

    #[test]
    fn a_watched_target_with_ten_backups_reads_back_whole() {
        let mut target = fixtures::target();
        target.status = Some(serde_json::from_value(status_of_ten_backups()).unwrap());
        let watched = WatchedTarget::of(&target);
        assert!(matches!(watched.status, Some(PackedJson::Zstd { .. })));
        assert_eq!(
            serde_json::to_value(watched.target().unwrap()).unwrap(),
            serde_json::to_value(&target).unwrap()
        );
        let jobs: Vec<String> = (0..10).map(|i| format!("app-db-nightly-{i}")).collect();
        assert_eq!(watched.recorded_jobs(), jobs);
    }

    #[test]
    fn a_target_this_version_cannot_read_is_an_error_not_a_default() {
        let mut served = serde_json::to_value(fixtures::target()).unwrap();
        served["spec"]["storage"] = json!("not an object");
        let watched: WatchedTarget = serde_json::from_value(served).unwrap();
        let err = watched.target().unwrap_err().to_string();
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn watched_kinds_are_served_where_their_kinds_are() {
        use kube::Resource;
        assert_eq!(
            WatchedTarget::url_path(&(), Some("shop")),
            BackupTarget::url_path(&(), Some("shop"))
        );
        assert_eq!(WatchedTarget::kind(&()), "BackupTarget");
        assert_eq!(
            WatchedJob::url_path(&(), Some("shop")),
            Job::url_path(&(), Some("shop"))
        );
        assert_eq!(WatchedPod::url_path(&(), None), Pod::url_path(&(), None));
        assert_eq!(WatchedJob::kind(&()), "Job");
        assert_eq!(WatchedPod::api_version(&()), "v1");
    }
}
