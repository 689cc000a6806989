//! Types shared by the API kinds.

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a target's artifacts are written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {
    /// Name of a PersistentVolumeClaim in the target's namespace (a DNS subdomain: lowercase
    /// letters, digits, `-` and `.`, at most 253 characters). It is mounted at
    /// `/backups` in each backup Job; artifacts go to
    /// `/backups/<namespace>/<target>/<YYYY-MM-DD>/<plugin>-<timestamp>.<ext>`.
    #[schemars(
        length(min = 1, max = 253),
        transform = object_name_rule("spec.storage.claimName", "PersistentVolumeClaim", "backups")
    )]
    pub claim_name: String,
}

/// How artifacts are compressed on the fly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Store the plugin's bytes as they are (for artifacts that are already compressed).
    None,
    /// gzip: slower and larger than zstd, readable everywhere.
    Gzip,
    /// zstd (the default): fast, multi-threaded, good ratio.
    #[default]
    Zstd,
}

impl Compression {
    /// The name used on the runner's command line and in sidecars.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Settings of the Jobs that run a target's backups and probes. Unset fields take the
/// operator's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSettings {
    /// Container image for the backup. Defaults to the plugin's tool image (e.g.
    /// `postgres:17`) for tool plugins, and to the operator's runner image for native
    /// plugins. Set it to match your server's major version when the default does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Compute resources of the backup container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the backup pod must match (at most 64): keys and values as Kubernetes
    /// labels, e.g. `kubernetes.io/arch: amd64`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "node_selector_schema")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the backup pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Seconds a backup Job may run before it is stopped and counted as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub active_deadline_seconds: Option<i64>,
    /// Retries of a failed backup pod before the run counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: Option<i32>,
    /// ServiceAccount the backup pod runs as (its name: a DNS subdomain). Only plugins
    /// that use the Kubernetes API (such as `kubernetes`) receive its token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        transform = object_name_rule("spec.job.serviceAccountName", "ServiceAccount", "stowage-runner")
    )]
    pub service_account_name: Option<String>,
    /// The user and groups the backup, probe and restore pods run as, instead of the
    /// operator's (65532 by default). Set it when a plugin reads or writes an
    /// application's files (`sqlite`) that only the application's user may read: use the
    /// application's `runAsUser`/`runAsGroup`. Root (0) is refused; pods stay non-root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<RunAs>,
}

/// A non-root user and its groups for a target's pods (`spec.job.runAs`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunAs {
    /// User id the containers run as; at least 1 (root is refused). Unset: the
    /// operator's (65532).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub user: Option<i64>,
    /// Primary group id of the containers. Unset: the operator's (65532).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub group: Option<i64>,
    /// More group ids the containers belong to (at most 32), e.g. a group that may read
    /// the application's files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(range(min = 0, max = 2147483647)))]
    pub supplemental_groups: Vec<i64>,
}

/// Periodic connectivity test of a target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::cel::Rule::new("!has(self.interval) || duration(self.interval) >= duration('1m')")
    .message("spec.probe.interval must be at least 1m (e.g. 30m, 1h, 24h)"))]
pub struct ProbeSettings {
    /// How often to run the plugin's connectivity test, as a duration such as `30m`,
    /// `1h` or `24h` (at least `1m`). Unset: probe only when the spec changes or on the
    /// `stowage.dev/probe-now` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"))]
    pub interval: Option<String>,
}

/// An object name as Kubernetes checks most of them (RFC 1123 DNS subdomain): lowercase
/// letters, digits, `-` and `.`, each dot-separated part starting and ending with a letter
/// or digit. The length limit (253) is the field's `maxLength`.
const DNS_SUBDOMAIN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A label key: an optional DNS subdomain prefix and `/`, then a name of at most 63
/// letters, digits, `-`, `_` and `.` that starts and ends with a letter or digit. The
/// prefix's length limit (253) is [`LABEL_KEY_PREFIX_LENGTH`].
const LABEL_KEY: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";

/// A label key's prefix is at most 253 characters (checked when the key has a `/`).
const LABEL_KEY_PREFIX_LENGTH: &str = "^[^/]{1,253}/";

/// A label value: empty, or at most 63 letters, digits, `-`, `_` and `.` that start and
/// end with a letter or digit.
const LABEL_VALUE: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$";

/// The most labels `spec.job.nodeSelector` holds; it bounds the cost of its CEL rules.
const MAX_NODE_SELECTOR_LABELS: u32 = 64;

/// A schema transform: a CEL rule that the string (at `field`, named in the message with
/// `example`) is the name of a `kind` object, so the API server rejects a bad name at
/// apply time instead of the backup Job failing later.
fn object_name_rule(
    field: &'static str,
    kind: &'static str,
    example: &'static str,
) -> impl Fn(&mut schemars::Schema) {
    move |schema: &mut schemars::Schema| {
        schema.insert(
            "x-kubernetes-validations".into(),
            serde_json::json!([{
                "rule": format!("self.matches('{DNS_SUBDOMAIN}')"),
                "message": format!(
                    "{field} must be the name of a {kind}: lowercase letters, digits, '-' and \
                     '.', starting and ending with a letter or digit (e.g. {example})"
                ),
            }]),
        );
    }
}

/// The schema of `spec.job.nodeSelector`: a map whose keys and values are Kubernetes
/// label keys and values, checked by CEL rules (a schema cannot constrain map keys).
fn node_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": MAX_NODE_SELECTOR_LABELS,
        "additionalProperties": {"type": "string", "maxLength": 63},
        "x-kubernetes-validations": [
            {
                "rule": format!(
                    "self.all(k, k.matches('{LABEL_KEY}') && \
                     (!k.contains('/') || k.matches('{LABEL_KEY_PREFIX_LENGTH}')))"
                ),
                "message": "spec.job.nodeSelector keys must be label keys: an optional DNS \
                            subdomain prefix and '/', then a name of at most 63 letters, \
                            digits, '-', '_' or '.' that starts and ends with a letter or \
                            digit (e.g. kubernetes.io/arch or disktype)",
            },
            {
                "rule": format!("self.all(k, self[k].matches('{LABEL_VALUE}'))"),
                "message": "spec.job.nodeSelector values must be label values: empty, or at \
                            most 63 letters, digits, '-', '_' or '.' that start and end with \
                            a letter or digit (e.g. amd64)",
            },
        ],
    })
}

/// Marks a `conditions` list as a list-type map keyed by `type` (Kubernetes API
/// conventions), so server-side apply merges conditions by type.
pub fn condition_list_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema =
        <Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}
