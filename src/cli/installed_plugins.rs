//! The installed plugins of a cluster (`BackupPlugin`s) for `stowage plugins --cluster`
//! and `stowage plugins schema <name.with.dots>`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use serde::Serialize;

use crate::api::{ACCEPTED, BackupPlugin};
use crate::installed::check;

/// One installed plugin as `stowage plugins --cluster` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledRow {
    /// The BackupPlugin's name (what targets write in `spec.external.plugin`).
    pub name: String,
    /// Its `spec.version`.
    pub version: String,
    /// Its capabilities, comma-separated.
    pub capabilities: String,
    /// Whether targets can use it.
    pub accepted: bool,
    /// Why (not): the operator's `Accepted` condition, or the problems this command's own
    /// check finds when the operator has not judged this generation yet.
    pub reason: String,
    /// Its `spec.description`.
    pub description: String,
}

/// The row of `plugin`: the operator's verdict when its status describes the current
/// generation, otherwise the same check run here.
pub fn row(plugin: &BackupPlugin) -> InstalledRow {
    let name = plugin.metadata.name.clone().unwrap_or_default();
    let spec = &plugin.spec;
    let current = plugin.status.as_ref().filter(|s| {
        s.observed_generation.is_some() && s.observed_generation == plugin.metadata.generation
    });
    let condition: Option<&Condition> =
        current.and_then(|s| s.conditions.iter().find(|c| c.type_ == ACCEPTED));
    let (accepted, reason) = match condition {
        Some(c) => (
            c.status == "True",
            if c.message.is_empty() {
                c.reason.clone()
            } else {
                format!("{}: {}", c.reason, c.message)
            },
        ),
        None => {
            let verdict = check(&name, spec);
            let reason = if verdict.accepted() {
                "not yet seen by the operator; accepted by this command's check".to_owned()
            } else {
                format!(
                    "not yet seen by the operator; refused by this command's check: {}",
                    verdict.problems.join("; ")
                )
            };
            (verdict.accepted(), reason)
        }
    };
    let c = spec.capabilities;
    let capabilities: Vec<&str> = [
        (c.backup, "backup"),
        (c.restore, "restore"),
        (c.probe, "probe"),
    ]
    .into_iter()
    .filter_map(|(on, n)| on.then_some(n))
    .collect();
    InstalledRow {
        name,
        version: spec.version.clone(),
        capabilities: capabilities.join(","),
        accepted,
        reason,
        description: spec.description.clone(),
    }
}

/// A client for the cluster of the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or of the
/// pod this runs in, with an error that says how to point at one.
pub async fn client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to a cluster: {e}; set KUBECONFIG (or ~/.kube/config) to the \
             cluster's kubeconfig. Without --cluster, `stowage plugins` lists the built-in \
             plugins and needs no cluster"
        )
    })
}

/// Every installed BackupPlugin, sorted by name.
pub async fn list(client: kube::Client) -> anyhow::Result<Vec<BackupPlugin>> {
    let api: Api<BackupPlugin> = Api::all(client);
    let mut plugins = api
        .list(&Default::default())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot list BackupPlugins: {e}; is the stowage CRD installed (stowage crd | \
                 kubectl apply -f -) and may you list backupplugins.stowage.dev?"
            )
        })?
        .items;
    plugins.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(plugins)
}

/// The installed BackupPlugin `name`, or `None` when there is none.
pub async fn get(client: kube::Client, name: &str) -> anyhow::Result<Option<BackupPlugin>> {
    let api: Api<BackupPlugin> = Api::all(client);
    api.get_opt(name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read BackupPlugin {name:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupPluginSpec, BackupPluginStatus};

    fn plugin(name: &str, schema: serde_json::Value) -> BackupPlugin {
        let spec: BackupPluginSpec = serde_json::from_value(serde_json::json!({
            "image": "registry.example.com/p@sha256:0123",
            "command": ["/p"],
            "version": "1.2.3",
            "description": "a test plugin",
            "capabilities": {"backup": true, "probe": true},
            "artifact": {"extension": "txt"},
            "configSchema": schema,
        }))
        .unwrap();
        let mut plugin = BackupPlugin::new(name, spec);
        plugin.metadata.generation = Some(2);
        plugin
    }

    fn accepted_condition(status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: ACCEPTED.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: Some(2),
        }
    }

    #[test]
    fn without_a_current_status_the_row_says_what_the_check_finds() {
        let good = row(&plugin(
            "p.example.com",
            serde_json::json!({"type": "object"}),
        ));
        assert!(good.accepted, "{good:?}");
        assert_eq!(
            (good.version.as_str(), good.capabilities.as_str()),
            ("1.2.3", "backup,probe")
        );
        assert!(
            good.reason.contains("not yet seen by the operator"),
            "{good:?}"
        );

        let bad = row(&plugin("nodot", serde_json::json!({"type": "string"})));
        assert!(!bad.accepted, "{bad:?}");
        assert!(bad.reason.contains("metadata.name"), "{bad:?}");
        assert!(bad.reason.contains("spec.configSchema"), "{bad:?}");
    }

    #[test]
    fn a_current_status_is_the_operators_verdict_and_a_stale_one_is_not() {
        let mut p = plugin("p.example.com", serde_json::json!({"type": "object"}));
        p.status = Some(BackupPluginStatus {
            observed_generation: Some(2),
            conditions: vec![accepted_condition(
                "False",
                "InvalidPlugin",
                "spec.image: x",
            )],
            ..Default::default()
        });
        let r = row(&p);
        assert!(!r.accepted, "{r:?}");
        assert_eq!(r.reason, "InvalidPlugin: spec.image: x");

        p.status.as_mut().unwrap().observed_generation = Some(1);
        let r = row(&p);
        assert!(r.accepted, "a stale status is not the verdict: {r:?}");
    }
}
