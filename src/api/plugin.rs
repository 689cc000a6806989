//! `BackupPlugin`: a plugin installed on its own, as an image whose command speaks the
//! stowage plugin protocol (`docs/plugin-protocol.md`), with the JSON schema of its config.

// `printcolumn(...)` entries repeat `type_ = ...` by design; clippy reads them as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition_list_schema;

/// An installed plugin: what it runs, what it can do, and the schema of its config.
/// Cluster-scoped; only cluster administrators should be able to create one (the chart's
/// RBAC gives no one else access), because its image runs in the namespaces it allows,
/// with the secrets their targets name.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.dev",
    version = "v1alpha1",
    kind = "BackupPlugin",
    plural = "backupplugins",
    singular = "backupplugin",
    shortname = "bp",
    category = "stowage",
    status = "BackupPluginStatus",
    doc = "A backup plugin installed on its own: an image whose command speaks the stowage plugin protocol, with the JSON schema of the config that targets give it under spec.external.",
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.version",
        description = "The plugin's version"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status",
        description = "Whether targets can use the plugin"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        description = "The image its Jobs run"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].reason",
        priority = 1,
        description = "Why the plugin is (not) accepted"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupPluginSpec {
    /// The image that holds the plugin's command; the runner is copied into it at run
    /// time. Pin it by digest (`registry/plugin@sha256:...`): a tag can later point to
    /// other code, and the plugin sees the secrets its targets name. The status says
    /// when the image is not pinned.
    #[schemars(length(min = 1))]
    pub image: String,
    /// The command run in the image, as an argv list (e.g. `["/plugin/run.sh"]`); the
    /// runner appends the operation: `probe`, `backup`, `inspect` or `restore`.
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// The plugin's version, recorded in its targets' status and in every artifact's
    /// sidecar. Change it with the image when you upgrade.
    #[schemars(length(min = 1, max = 64))]
    pub version: String,
    /// One line saying what the plugin backs up, shown by `stowage plugins`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The version of the plugin protocol its command speaks. Only `1` exists.
    #[serde(default = "protocol_v1")]
    #[schemars(range(min = 1, max = 1))]
    pub protocol_version: u32,
    /// What the plugin can do. A target's probes, backups and restores run only when the
    /// plugin declares them.
    pub capabilities: PluginCapabilities,
    /// The format of an uncompressed artifact.
    pub artifact: ArtifactFormat,
    /// The JSON schema of the config that targets write under `spec.external.config`:
    /// the structural subset Kubernetes accepts in CRDs (`type` on every node;
    /// `properties`, `required`, `items`, `enum`, `pattern`, `minimum`/`maximum`,
    /// `minLength`/`maxLength`, `minItems`/`maxItems`, `default`, `description`; no
    /// `$ref`). A property whose name ends in `SecretRef` must be an object with string
    /// `name` and `key`: it names a Secret in the target's namespace, and its value
    /// reaches the plugin in an environment variable, never in the config.
    #[schemars(schema_with = "free_object")]
    pub config_schema: serde_json::Value,
    /// What the plugin needs beyond the protocol.
    #[serde(default)]
    pub needs: PluginNeeds,
    /// The namespaces whose targets may use the plugin, by their labels; unset means
    /// every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

fn protocol_v1() -> u32 {
    1
}

fn free_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "The JSON schema (structural subset) of the config that targets write under spec.external.config."
    })
}

/// The operations a plugin implements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginCapabilities {
    /// It writes artifacts (`backup`).
    #[serde(default)]
    pub backup: bool,
    /// It restores them (`inspect`, then `restore`).
    #[serde(default)]
    pub restore: bool,
    /// It tests connectivity and credentials without side effects (`probe`).
    #[serde(default)]
    pub probe: bool,
}

/// The format of an uncompressed artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactFormat {
    /// File extension without a dot (e.g. `ldif`, `tar`, `json`); the compression's
    /// extension is added after it.
    #[schemars(
        length(min = 1, max = 16),
        regex(pattern = r"^[a-z0-9]+(\.[a-z0-9]+)*$")
    )]
    pub extension: String,
    /// MIME type, recorded in each artifact's sidecar.
    #[serde(default = "octet_stream")]
    pub content_type: String,
}

fn octet_stream() -> String {
    "application/octet-stream".to_owned()
}

/// What a plugin needs beyond the protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginNeeds {
    /// Mount a Kubernetes API token in its Jobs (of the target's `spec.job.serviceAccountName`
    /// or the operator's runner account). Off by default: without it the pods have no
    /// token at all.
    #[serde(default)]
    pub kubernetes_api: bool,
    /// Extra environment variables for the command (plain values, never secrets: secrets
    /// come from `...SecretRef` config fields).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<PluginEnvVar>,
}

/// One environment variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginEnvVar {
    /// Its name; names starting with `STOWAGE_` belong to the protocol and are refused.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,
    /// Its value.
    #[serde(default)]
    pub value: String,
}

/// The observed state of a BackupPlugin, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPluginStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Condition `Accepted`: `True` when targets can use the plugin; `False` with reason
    /// `InvalidPlugin` and the problems listed in the message otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "condition_list_schema")]
    pub conditions: Vec<Condition>,
    /// Every problem that keeps the plugin from being accepted, one per entry, each
    /// naming the field (e.g. `spec.configSchema.properties.port: ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Advice that does not block the plugin (e.g. an image not pinned by digest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The config fields that are secret references (properties named `...SecretRef`),
    /// as paths, with the environment variable each value reaches the plugin in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_fields: Vec<String>,
}

/// Condition type of a BackupPlugin.
pub const ACCEPTED: &str = "Accepted";
