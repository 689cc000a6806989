//! Prometheus metrics of the controller, served as text at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `stowage_backup_runs_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// Namespace of the target.
    pub namespace: String,
    /// Name of the target.
    pub target: String,
    /// Plugin key.
    pub plugin: String,
    /// `succeeded` or `failed`.
    pub result: String,
}

/// Labels naming one target.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// Namespace of the target.
    pub namespace: String,
    /// Name of the target.
    pub target: String,
}

/// Labels naming one schedule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabels {
    /// Namespace of the schedule.
    pub namespace: String,
    /// Name of the schedule.
    pub schedule: String,
}

/// Labels of the backup duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    /// Plugin key.
    pub plugin: String,
    /// `succeeded` or `failed`.
    pub result: String,
}

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `backuptarget` or `backupschedule`.
    pub controller: String,
}

/// Labels of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `backuptarget` or `backupschedule`.
    pub controller: String,
    /// The error's `metric_label()`.
    pub error: String,
}

/// Labels of finished restores.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestoreLabels {
    /// Namespace of the BackupRestore.
    pub namespace: String,
    /// Plugin of the destination target.
    pub plugin: String,
    /// `succeeded`, `failed` or `dry-run`.
    pub result: String,
    /// The `Completed` condition's reason (`Restored`, `DryRun`, or an error kind).
    pub reason: String,
}

type DurationFamily = Family<DurationLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 s to ~9 h.
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// Every metric the controller exports.
#[derive(Clone)]
pub struct Metrics {
    /// `stowage_backup_runs_total{namespace,target,plugin,result}`: finished backup runs.
    pub backup_runs: Family<RunLabels, Counter>,
    /// `stowage_backup_duration_seconds{plugin,result}`: duration of finished backup runs.
    pub backup_duration: DurationFamily,
    /// `stowage_backup_last_success_timestamp_seconds{namespace,target}`.
    pub last_success: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    /// `stowage_backup_artifact_bytes{namespace,target}`: bytes of the artifacts observed.
    pub artifact_bytes: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    /// `stowage_schedule_next_run_timestamp_seconds{namespace,schedule}`.
    pub next_run: Family<ScheduleLabels, Gauge<f64, AtomicU64>>,
    /// `stowage_reconcile_total{controller}`.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// `stowage_reconcile_errors_total{controller,error}`.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Finished restores, by namespace, plugin, result and reason.
    pub restores: Family<RestoreLabels, Counter>,
    /// Duration of finished restores (not dry runs), by plugin and result.
    pub restore_duration: DurationFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            backup_runs: Family::default(),
            backup_duration: Family::new_with_constructor(duration_histogram),
            last_success: Family::default(),
            artifact_bytes: Family::default(),
            next_run: Family::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            restores: Family::default(),
            restore_duration: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl Metrics {
    /// Register every metric in `registry` (counters get the `_total` suffix there).
    pub fn register(self, registry: &mut Registry) -> Self {
        registry.register(
            "stowage_backup_runs",
            "Finished backup runs, by target, plugin and result",
            self.backup_runs.clone(),
        );
        registry.register(
            "stowage_backup_duration_seconds",
            "Duration of finished backup runs in seconds",
            self.backup_duration.clone(),
        );
        registry.register(
            "stowage_backup_last_success_timestamp_seconds",
            "Unix time when the target's most recent successful backup finished",
            self.last_success.clone(),
        );
        registry.register(
            "stowage_backup_artifact_bytes",
            "Total stored bytes of the target's artifacts the operator has observed",
            self.artifact_bytes.clone(),
        );
        registry.register(
            "stowage_schedule_next_run_timestamp_seconds",
            "Unix time of the schedule's next tick",
            self.next_run.clone(),
        );
        registry.register(
            "stowage_reconcile",
            "Reconciliations, by controller",
            self.reconciles.clone(),
        );
        registry.register(
            "stowage_reconcile_errors",
            "Failed reconciliations, by controller and error",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "stowage_restores",
            "Finished BackupRestores, by namespace, plugin, result and reason",
            self.restores.clone(),
        );
        registry.register(
            "stowage_restore_duration_seconds",
            "Duration of finished restores (not dry runs) in seconds",
            self.restore_duration.clone(),
        );
        self
    }

    /// Count one reconcile of `controller`.
    pub fn reconciled(&self, controller: &str) {
        self.reconciles
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .inc();
    }

    /// Count one failed reconcile.
    pub fn reconcile_failed(&self, controller: &str, error: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_owned(),
                error: error.to_owned(),
            })
            .inc();
    }

    /// Record one finished backup run.
    pub fn backup_finished(
        &self,
        namespace: &str,
        target: &str,
        plugin: &str,
        succeeded: bool,
        duration_seconds: Option<f64>,
    ) {
        let result = if succeeded { "succeeded" } else { "failed" };
        self.backup_runs
            .get_or_create(&RunLabels {
                namespace: namespace.to_owned(),
                target: target.to_owned(),
                plugin: plugin.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        if let Some(seconds) = duration_seconds.filter(|s| s.is_finite() && *s >= 0.0) {
            self.backup_duration
                .get_or_create(&DurationLabels {
                    plugin: plugin.to_owned(),
                    result: result.to_owned(),
                })
                .observe(seconds);
        }
    }

    /// Set the target's gauges from its status.
    /// Count a finished restore; `duration_seconds` for restores that ran (not dry runs).
    pub fn restore_finished(
        &self,
        namespace: &str,
        plugin: &str,
        result: &str,
        reason: &str,
        duration_seconds: Option<f64>,
    ) {
        self.restores
            .get_or_create(&RestoreLabels {
                namespace: namespace.to_owned(),
                plugin: plugin.to_owned(),
                result: result.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
        if let Some(seconds) = duration_seconds.filter(|s| s.is_finite() && *s >= 0.0) {
            self.restore_duration
                .get_or_create(&DurationLabels {
                    plugin: plugin.to_owned(),
                    result: result.to_owned(),
                })
                .observe(seconds);
        }
    }

    pub fn target_observed(
        &self,
        namespace: &str,
        target: &str,
        last_success: Option<jiff::Timestamp>,
        artifact_bytes: Option<u64>,
    ) {
        let labels = TargetLabels {
            namespace: namespace.to_owned(),
            target: target.to_owned(),
        };
        if let Some(ts) = last_success {
            self.last_success
                .get_or_create(&labels)
                .set(ts.as_millisecond() as f64 / 1000.0);
        }
        if let Some(bytes) = artifact_bytes {
            self.artifact_bytes.get_or_create(&labels).set(bytes as f64);
        }
    }

    /// Remove the target's gauges (`stowage_backup_last_success_timestamp_seconds` and
    /// `stowage_backup_artifact_bytes`): the target was deleted. Its run counters stay, as
    /// counters do.
    pub fn target_deleted(&self, namespace: &str, target: &str) {
        let labels = TargetLabels {
            namespace: namespace.to_owned(),
            target: target.to_owned(),
        };
        self.last_success.remove(&labels);
        self.artifact_bytes.remove(&labels);
    }

    /// Remove the schedule's next-tick gauge: the schedule was deleted.
    pub fn schedule_deleted(&self, namespace: &str, schedule: &str) {
        self.schedule_observed(namespace, schedule, None);
    }

    /// Set the schedule's next-tick gauge; `None` (invalid or suspended) removes it.
    pub fn schedule_observed(
        &self,
        namespace: &str,
        schedule: &str,
        next: Option<jiff::Timestamp>,
    ) {
        let labels = ScheduleLabels {
            namespace: namespace.to_owned(),
            schedule: schedule.to_owned(),
        };
        match next {
            Some(ts) => {
                self.next_run
                    .get_or_create(&labels)
                    .set(ts.as_second() as f64);
            }
            None => {
                self.next_run.remove(&labels);
            }
        }
    }
}

/// Render the registry in the Prometheus/OpenMetrics text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_their_documented_names_and_labels() {
        let mut registry = Registry::default();
        let metrics = Metrics::default().register(&mut registry);
        metrics.backup_finished("shop", "app-db", "postgres", true, Some(12.5));
        metrics.backup_finished("shop", "app-db", "postgres", false, None);
        metrics.target_observed(
            "shop",
            "app-db",
            Some("2030-01-01T00:00:00Z".parse().unwrap()),
            Some(4096),
        );
        metrics.schedule_observed(
            "shop",
            "nightly",
            Some("2030-01-02T02:30:00Z".parse().unwrap()),
        );
        metrics.reconciled("backuptarget");
        metrics.reconcile_failed("backuptarget", "kube");
        let text = render(&registry).unwrap();
        for expected in [
            r#"stowage_backup_runs_total{namespace="shop",target="app-db",plugin="postgres",result="succeeded"} 1"#,
            r#"stowage_backup_runs_total{namespace="shop",target="app-db",plugin="postgres",result="failed"} 1"#,
            r#"stowage_backup_duration_seconds_count{plugin="postgres",result="succeeded"} 1"#,
            r#"stowage_backup_last_success_timestamp_seconds{namespace="shop",target="app-db"} 1893456000"#,
            r#"stowage_backup_artifact_bytes{namespace="shop",target="app-db"} 4096"#,
            r#"stowage_schedule_next_run_timestamp_seconds{namespace="shop",schedule="nightly"} 1893551400"#,
            r#"stowage_reconcile_total{controller="backuptarget"} 1"#,
            r#"stowage_reconcile_errors_total{controller="backuptarget",error="kube"} 1"#,
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        metrics.schedule_observed("shop", "nightly", None);
        let text = render(&registry).unwrap();
        assert!(!text.contains(r#"schedule="nightly""#), "{text}");
    }

    #[test]
    fn deleting_a_target_or_schedule_removes_only_its_series() {
        let mut registry = Registry::default();
        let metrics = Metrics::default().register(&mut registry);
        let at = Some("2030-01-01T00:00:00Z".parse().unwrap());
        for target in ["app-db", "other-db"] {
            metrics.target_observed("shop", target, at, Some(4096));
        }
        for schedule in ["nightly", "hourly"] {
            metrics.schedule_observed("shop", schedule, at);
        }
        let labels = |target: &str| TargetLabels {
            namespace: "shop".into(),
            target: target.into(),
        };
        let schedule = |schedule: &str| ScheduleLabels {
            namespace: "shop".into(),
            schedule: schedule.into(),
        };

        metrics.target_deleted("shop", "app-db");
        metrics.schedule_deleted("shop", "nightly");
        assert!(metrics.last_success.get(&labels("app-db")).is_none());
        assert!(metrics.artifact_bytes.get(&labels("app-db")).is_none());
        assert!(metrics.next_run.get(&schedule("nightly")).is_none());
        assert!(metrics.last_success.get(&labels("other-db")).is_some());
        assert!(metrics.artifact_bytes.get(&labels("other-db")).is_some());
        assert!(metrics.next_run.get(&schedule("hourly")).is_some());
        let text = render(&registry).unwrap();
        assert!(!text.contains(r#"target="app-db""#), "{text}");
        assert!(!text.contains(r#"schedule="nightly""#), "{text}");
        assert!(
            text.contains(
                r#"stowage_backup_artifact_bytes{namespace="shop",target="other-db"} 4096"#
            ),
            "{text}"
        );
        // Deleting what has no series (or twice) is harmless.
        metrics.target_deleted("shop", "app-db");
        metrics.schedule_deleted("elsewhere", "nightly");
    }
}
