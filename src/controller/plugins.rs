//! The BackupPlugin watch: every installed plugin is checked ([`crate::installed::check`])
//! into the registry that target checks and Job building read, its status says whether it
//! is accepted and why not, and the targets that use it are woken when what they see of
//! it changes (installed, accepted, refused, changed, deleted).

use std::collections::HashSet;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};

use super::status::upsert_condition;
use super::{Context, Running, ShutdownSignal};
use crate::api::{ACCEPTED, BackupPlugin, BackupPluginStatus};
use crate::installed::Verdict;

/// Condition reasons of a BackupPlugin.
pub mod reasons {
    /// Targets can use the plugin.
    pub const ACCEPTED: &str = "Accepted";
    /// The plugin has problems (listed in `status.problems`).
    pub const INVALID_PLUGIN: &str = "InvalidPlugin";
}

/// The status a BackupPlugin should have for `verdict` (pure).
pub fn desired_status(
    plugin: &BackupPlugin,
    verdict: &Verdict,
    now: Timestamp,
) -> BackupPluginStatus {
    let previous = plugin
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = plugin.metadata.generation;
    let (status, reason, message) = if verdict.accepted() {
        let mut message = format!(
            "targets can use it under spec.external.plugin: {}",
            plugin.name_any()
        );
        if !verdict.warnings.is_empty() {
            message.push_str("; ");
            message.push_str(&verdict.warnings.join("; "));
        }
        ("True", reasons::ACCEPTED, message)
    } else {
        (
            "False",
            reasons::INVALID_PLUGIN,
            format!(
                "{} problem(s), no target can use it until they are fixed: {}",
                verdict.problems.len(),
                verdict.problems.join("; ")
            ),
        )
    };
    let mut conditions = Vec::new();
    upsert_condition(
        &mut conditions,
        &previous,
        ACCEPTED,
        status,
        reason,
        message,
        generation,
        now,
    );
    BackupPluginStatus {
        observed_generation: generation,
        conditions,
        problems: verdict.problems.clone(),
        warnings: verdict.warnings.clone(),
        secret_fields: verdict.secret_fields.clone(),
    }
}

/// The merge patch that writes `status` (pure). The lists are written even when empty: a
/// merge patch leaves a field it does not name as it was, so fixed problems would stay.
pub fn status_patch(status: &BackupPluginStatus) -> serde_json::Value {
    serde_json::json!({ "status": {
        "observedGeneration": status.observed_generation,
        "conditions": status.conditions,
        "problems": status.problems,
        "warnings": status.warnings,
        "secretFields": status.secret_fields,
    }})
}

/// Watches every BackupPlugin of the cluster into `ctx.plugins()`. Reconcilers wait for
/// its first list (through the cache's sync), so a restart never shows an installed
/// plugin as missing.
pub fn watch(ctx: &Arc<Context>, stop: ShutdownSignal) -> Running {
    let mut sync = ctx.cache.syncing();
    let ctx = ctx.clone();
    async move {
        let api: Api<BackupPlugin> = Api::all(ctx.client.clone());
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .take_until(stop)
            .boxed();
        let mut listed: Option<HashSet<String>> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => listed = Some(HashSet::new()),
                Ok(Event::InitApply(plugin)) | Ok(Event::Apply(plugin)) => {
                    if let Some(seen) = listed.as_mut() {
                        seen.insert(plugin.name_any());
                    }
                    applied(&ctx, &plugin).await;
                }
                Ok(Event::Delete(plugin)) => deleted(&ctx, &plugin.name_any()),
                Ok(Event::InitDone) => {
                    let seen = listed.take().unwrap_or_default();
                    for name in ctx.plugins().names() {
                        if !seen.contains(&name) {
                            deleted(&ctx, &name);
                        }
                    }
                    sync.done();
                }
                Err(e) => super::log_watch_error("BackupPlugin", &e),
            }
        }
    }
    .boxed()
}

async fn applied(ctx: &Context, plugin: &BackupPlugin) {
    let name = plugin.name_any();
    let (verdict, changed) = ctx.plugins().set(plugin);
    if changed {
        tracing::info!(
            plugin = %name,
            accepted = verdict.accepted(),
            problems = %verdict.problems.join("; "),
            "BackupPlugin checked"
        );
        ctx.cache.wake_targets_of_plugin(&name);
    }
    let desired = desired_status(plugin, &verdict, ctx.clock.now());
    if plugin.status.as_ref() == Some(&desired) || !ctx.may_write() {
        return;
    }
    let api: Api<BackupPlugin> = Api::all(ctx.client.clone());
    let patch = status_patch(&desired);
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(plugin = %name, error = %e, "cannot write the BackupPlugin's status");
    }
}

fn deleted(ctx: &Context, name: &str) {
    if ctx.plugins().remove(name) {
        tracing::info!(plugin = %name, "BackupPlugin removed");
        ctx.cache.wake_targets_of_plugin(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(image: &str) -> BackupPlugin {
        let mut p = crate::installed::fixture(
            "ldap.example.com",
            image,
            serde_json::json!({"type": "object", "properties": {}}),
        );
        p.metadata.generation = Some(3);
        p
    }

    #[test]
    fn the_status_says_accepted_or_lists_the_problems() {
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let good = plugin("r/ldap@sha256:00");
        let status = desired_status(
            &good,
            &crate::installed::check("ldap.example.com", &good.spec),
            now,
        );
        let c = &status.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Accepted", "True", "Accepted")
        );
        assert_eq!(status.observed_generation, Some(3));

        let tagged = plugin("r/ldap:1");
        let status = desired_status(
            &tagged,
            &crate::installed::check("ldap.example.com", &tagged.spec),
            now,
        );
        assert!(
            status.conditions[0]
                .message
                .contains("not pinned by digest"),
            "{status:?}"
        );
        assert_eq!(status.warnings.len(), 1);

        let bad = plugin("");
        let verdict = crate::installed::check("ldap.example.com", &bad.spec);
        let status = desired_status(&bad, &verdict, now);
        let c = &status.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidPlugin")
        );
        assert!(c.message.contains("spec.image: empty"), "{}", c.message);
        assert_eq!(status.problems, verdict.problems);

        // The same verdict later keeps the transition time: no status write.
        let mut written = bad.clone();
        written.status = Some(status.clone());
        let later: Timestamp = "2026-12-01T11:00:00Z".parse().unwrap();
        assert_eq!(desired_status(&written, &verdict, later), status);

        // Fixed: the patch empties the lists instead of leaving the old problems.
        let fixed = desired_status(
            &good,
            &crate::installed::check("ldap.example.com", &good.spec),
            now,
        );
        let patch = status_patch(&fixed);
        assert_eq!(patch["status"]["problems"], serde_json::json!([]));
        assert_eq!(patch["status"]["warnings"], serde_json::json!([]));
        assert_eq!(patch["status"]["secretFields"], serde_json::json!([]));
    }
}
