//! The objects a run creates: N BackupTargets (postgres plugin, one claim each) in
//! groups, and M BackupSchedules each selecting one group by label, in one namespace or
//! spread over several.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use stowage::api::{BackupSchedule, BackupTarget};

use crate::BenchError;

/// Label that puts a target in a schedule's group.
pub const GROUP_LABEL: &str = "bench.stowage.dev/group";
/// Requests in flight while creating the objects (the benchmark's own writes, before the
/// operator starts).
const CREATE_CONCURRENCY: usize = 32;

/// How many objects, and where.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// BackupTargets (and claims).
    pub targets: usize,
    /// BackupSchedules; target `t` belongs to group `t % schedules`.
    pub schedules: usize,
    /// Namespaces; group `g` lives in namespace `g % namespaces`.
    pub namespaces: usize,
}

impl Layout {
    /// The namespaces that hold objects (never more than there are groups).
    pub fn used_namespaces(&self) -> Vec<String> {
        (0..self.namespaces.min(self.schedules))
            .map(namespace_name)
            .collect()
    }

    /// The group of target `t`.
    pub fn group_of(&self, t: usize) -> usize {
        t % self.schedules
    }

    /// The namespace of group `g`.
    pub fn namespace_of_group(&self, g: usize) -> String {
        namespace_name(g % self.namespaces)
    }

    /// The namespace of target `t`.
    pub fn namespace_of_target(&self, t: usize) -> String {
        self.namespace_of_group(self.group_of(t))
    }
}

fn namespace_name(i: usize) -> String {
    format!("bench-{i:02}")
}

/// Name of target `t`.
pub fn target_name(t: usize) -> String {
    format!("t-{t:05}")
}

/// Name of the schedule of group `g`.
pub fn schedule_name(g: usize) -> String {
    format!("s-{g:04}")
}

fn group_value(g: usize) -> String {
    format!("g-{g:04}")
}

/// Target `t`: a PostgreSQL database (never reached: no pod runs) backed up to its own
/// ReadWriteOnce claim, probed hourly.
fn target_body(layout: &Layout, t: usize) -> Value {
    json!({
        "apiVersion": "stowage.dev/v1alpha1",
        "kind": "BackupTarget",
        "metadata": {
            "name": target_name(t),
            "namespace": layout.namespace_of_target(t),
            "labels": {GROUP_LABEL: group_value(layout.group_of(t))},
        },
        "spec": {
            "postgres": {
                "host": format!("db-{t:05}.bench.svc"),
                "port": 5432,
                "database": "app",
                "username": "backup",
                "passwordSecretRef": {"name": "db-backup", "key": "password"},
            },
            "storage": {"claimName": format!("c-{t:05}")},
            "compression": "zstd",
            "probe": {"interval": "1h"},
        }
    })
}

/// Claim of target `t` (stays Pending: nothing provisions volumes, nothing mounts it).
fn claim_body(t: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": format!("c-{t:05}")},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        }
    })
}

/// Schedule of group `g` with cron expression `cron` (UTC).
fn schedule_body(layout: &Layout, g: usize, cron: &str) -> Value {
    json!({
        "apiVersion": "stowage.dev/v1alpha1",
        "kind": "BackupSchedule",
        "metadata": {"name": schedule_name(g), "namespace": layout.namespace_of_group(g)},
        "spec": {
            "schedule": cron,
            "timeZone": "UTC",
            "targets": {"matchLabels": {GROUP_LABEL: group_value(g)}},
            "retention": {"keepLast": 3, "keepDaily": 7},
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,
        }
    })
}

fn api_error(what: String) -> impl FnOnce(kube::Error) -> BenchError {
    move |source| BenchError::Api { what, source }
}

/// Creates namespace `name` (one that exists is fine).
pub async fn create_namespace(client: &kube::Client, name: &str) -> Result<(), BenchError> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(api_error(format!("creating namespace {name}"))(e)),
    }
}

/// Creates the layout's namespaces, then every claim, target and schedule.
pub async fn create(client: &kube::Client, layout: &Layout, cron: &str) -> Result<(), BenchError> {
    for name in layout.used_namespaces() {
        create_namespace(client, &name).await?;
    }
    futures::stream::iter(0..layout.targets)
        .map(|t| async move {
            let ns = layout.namespace_of_target(t);
            let claim: PersistentVolumeClaim = serde_json::from_value(claim_body(t))?;
            Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &claim)
                .await
                .map_err(api_error(format!("creating claim c-{t:05}")))?;
            let target: BackupTarget = serde_json::from_value(target_body(layout, t))?;
            Api::<BackupTarget>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &target)
                .await
                .map_err(api_error(format!(
                    "creating BackupTarget {}",
                    target_name(t)
                )))?;
            Ok::<(), BenchError>(())
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    futures::stream::iter(0..layout.schedules)
        .map(|g| async move {
            let schedule: BackupSchedule = serde_json::from_value(schedule_body(layout, g, cron))?;
            Api::<BackupSchedule>::namespaced(client.clone(), &layout.namespace_of_group(g))
                .create(&PostParams::default(), &schedule)
                .await
                .map_err(api_error(format!(
                    "creating BackupSchedule {}",
                    schedule_name(g)
                )))?;
            Ok::<(), BenchError>(())
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<()>()
        .await
}

/// Sets every schedule's cron expression to `cron` (a merge patch of `spec.schedule`).
pub async fn reschedule(
    client: &kube::Client,
    layout: &Layout,
    cron: &str,
) -> Result<(), BenchError> {
    let patch = json!({"spec": {"schedule": cron}});
    let patch = &patch;
    futures::stream::iter(0..layout.schedules)
        .map(|g| async move {
            Api::<BackupSchedule>::namespaced(client.clone(), &layout.namespace_of_group(g))
                .patch(
                    &schedule_name(g),
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await
                .map_err(api_error(format!(
                    "patching BackupSchedule {}",
                    schedule_name(g)
                )))?;
            Ok::<(), BenchError>(())
        })
        .buffer_unordered(CREATE_CONCURRENCY / 2)
        .try_collect::<()>()
        .await
}
