//! The typed configuration of the etcd plugin (`BackupTarget.spec.etcd`) and its semantic
//! validation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stowage_plugin_sdk::{SecretKeyRef, ValidationErrors};

/// Default of `connectTimeoutSeconds`.
pub const DEFAULT_CONNECT_TIMEOUT_SECONDS: u32 = 10;

/// Take a snapshot of an etcd cluster (a k3s datastore, an external cluster, a
/// self-hosted control plane) through etcd's maintenance API.
///
/// The snapshot is the member's whole database with etcd's SHA-256 appended, checked as
/// it streams: a snapshot that does not match is never stored. Restoring is an offline
/// procedure (`etcdutl snapshot restore`, see docs/artifacts.md), so `restore` is not
/// available for this plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, `http://` or `https://` with a port (e.g.
    /// `https://etcd-0.etcd.kube-system.svc:2379`). The snapshot is taken from the first
    /// member that answers; list every member so a backup works while one is down.
    #[schemars(
        length(min = 1, max = 16),
        inner(
            length(min = 8, max = 512),
            regex(pattern = r"^https?://[^/\s]+:[0-9]+/?$")
        )
    )]
    pub endpoints: Vec<String>,
    /// TLS settings for `https://` endpoints: the CA that signed the members'
    /// certificates and, when the members require client certificates (etcd's
    /// `--client-cert-auth`), a client certificate and key, all from Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EtcdTls>,
    /// User name, when etcd authentication is enabled (`etcdctl auth enable`). The user
    /// needs the `root` role: only it may take snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub username: Option<String>,
    /// That user's password, from a Secret in the target's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Time allowed to connect to a member (and finish the TLS handshake) in seconds
    /// (default 10).
    #[serde(default = "default_connect_timeout_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub connect_timeout_seconds: u32,
}

fn default_connect_timeout_seconds() -> u32 {
    DEFAULT_CONNECT_TIMEOUT_SECONDS
}

/// TLS material for `https://` endpoints, each a PEM value in a Secret of the target's
/// namespace (e.g. the `ca.crt`, `tls.crt` and `tls.key` keys of a cert-manager Secret).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdTls {
    /// The CA certificate(s) the members' certificates chain to. Unset: the runner
    /// image's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// The client certificate, for members that require one; set with `keySecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretKeyRef>,
    /// The client certificate's private key; set with `certSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
}

impl EtcdConfig {
    /// Checks the schema cannot express; field paths relative to `spec.etcd`.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let https = self.endpoints.iter().any(|e| e.starts_with("https://"));
        let http = self.endpoints.iter().any(|e| e.starts_with("http://"));
        if https && http {
            errors.push(
                "endpoints",
                "mixes http:// and https:// members; a cluster serves clients one way: use the \
                 scheme of its --advertise-client-urls for every member",
            );
        }
        if let Some(tls) = &self.tls {
            if !https {
                errors.push(
                    "tls",
                    "is set but every endpoint is http://; use https:// endpoints, or remove tls",
                );
            }
            if tls.cert_secret_ref.is_some() != tls.key_secret_ref.is_some() {
                errors.push(
                    "tls",
                    "a client certificate needs both certSecretRef and keySecretRef",
                );
            }
        }
        if self.username.is_some() != self.password_secret_ref.is_some() {
            errors.push(
                if self.username.is_some() {
                    "passwordSecretRef"
                } else {
                    "username"
                },
                "etcd authentication needs both username and passwordSecretRef",
            );
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if endpoint.contains('@') {
                errors.push(
                    format!("endpoints[{i}]"),
                    "must not carry credentials; use username and passwordSecretRef",
                );
            }
        }
        errors.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> EtcdConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn each_documented_mistake_names_its_field() {
        let cases = [
            (
                serde_json::json!({"endpoints": ["http://a:2379", "https://b:2379"]}),
                "endpoints",
            ),
            (
                serde_json::json!({"endpoints": ["http://a:2379"], "tls": {}}),
                "tls",
            ),
            (
                serde_json::json!({"endpoints": ["https://a:2379"],
                    "tls": {"certSecretRef": {"name": "t", "key": "tls.crt"}}}),
                "tls",
            ),
            (
                serde_json::json!({"endpoints": ["https://a:2379"], "username": "root"}),
                "passwordSecretRef",
            ),
            (
                serde_json::json!({"endpoints": ["https://a:2379"],
                    "passwordSecretRef": {"name": "e", "key": "p"}}),
                "username",
            ),
            (
                serde_json::json!({"endpoints": ["http://root:pw@a:2379"]}),
                "endpoints[0]",
            ),
        ];
        for (json, field) in cases {
            let errors = config(json.clone()).validate().unwrap_err();
            assert!(
                errors.0.iter().any(|e| e.field == field),
                "{json}: {errors}"
            );
        }
        for ok in [
            serde_json::json!({"endpoints": ["http://127.0.0.1:2379"]}),
            serde_json::json!({"endpoints": ["https://a:2379", "https://b:2379"],
                "tls": {"caSecretRef": {"name": "t", "key": "ca.crt"},
                        "certSecretRef": {"name": "t", "key": "tls.crt"},
                        "keySecretRef": {"name": "t", "key": "tls.key"}},
                "username": "root", "passwordSecretRef": {"name": "e", "key": "p"}}),
        ] {
            config(ok.clone())
                .validate()
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }
}
