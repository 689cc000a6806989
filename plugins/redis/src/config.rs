//! The typed configuration of the redis plugin (`BackupTarget.spec.redis`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stowage_plugin_sdk::{SecretKeyRef, ValidationErrors};

/// Default of `port`.
pub const DEFAULT_PORT: u16 = 6379;

/// Export selected databases of a Redis server (a cache that is not only a cache, a
/// queue, a session store) key by key, and restore them into a running server.
///
/// The export walks the keys while the server keeps serving (`SCAN`, `DUMP`, `PTTL`): it
/// is not a point-in-time snapshot. Each key is exported whole, with its time to live;
/// restore writes them back with `RESTORE`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisConfig {
    /// Host name or IP address of the server (e.g. `redis-master.cache.svc`).
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// TCP port of the server (default 6379).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// ACL user (Redis 6 and later). Unset: the `default` user, with `passwordSecretRef`
    /// as its `requirepass` password. The user needs `+@read +@keyspace +dump +restore`
    /// (and `+@write` to restore) on every key (`~*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub username: Option<String>,
    /// The password, from a Secret in the target's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Numbers of the databases to export (`SELECT` indexes, e.g. `[0, 2]`). Unset: `[0]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(range(max = 9999)))]
    pub databases: Vec<u32>,
    /// Connect with TLS (Redis's `tls-port`), verifying the server's certificate against
    /// `caSecretRef` (unset: the runner image's trusted roots), with a client certificate
    /// when the server requires one (`tls-auth-clients`). Unset: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTls>,
    /// Time allowed to connect and authenticate in seconds (default 10).
    #[serde(default = "default_connect_timeout_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub connect_timeout_seconds: u32,
}

/// TLS material for a Redis server's `tls-port`, each a PEM value in a Secret of the
/// target's namespace (e.g. the `ca.crt`, `tls.crt` and `tls.key` keys of a cert-manager
/// Secret). `host` must be a name (or IP address) the server's certificate is valid for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisTls {
    /// The CA certificate(s) the server's certificate chains to. Unset: the runner
    /// image's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// The client certificate, for servers that require one; set with `keySecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretKeyRef>,
    /// The client certificate's private key; set with `certSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

fn default_connect_timeout_seconds() -> u32 {
    10
}

impl RedisConfig {
    /// The databases exported: `databases`, else `[0]`.
    pub fn effective_databases(&self) -> Vec<u32> {
        if self.databases.is_empty() {
            vec![0]
        } else {
            self.databases.clone()
        }
    }

    /// `host:port` for messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Checks the schema cannot express; field paths relative to `spec.redis`.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if self.username.is_some() && self.password_secret_ref.is_none() {
            errors.push(
                "passwordSecretRef",
                "an ACL user needs its password: set passwordSecretRef",
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, db) in self.databases.iter().enumerate() {
            if !seen.insert(db) {
                errors.push(
                    format!("databases[{i}]"),
                    format!("database {db} is listed twice"),
                );
            }
        }
        if let Some(tls) = &self.tls
            && tls.cert_secret_ref.is_some() != tls.key_secret_ref.is_some()
        {
            errors.push(
                "tls",
                "a client certificate needs both certSecretRef and keySecretRef",
            );
        }
        if self.host.contains('/') || self.host.contains(' ') {
            errors.push(
                "host",
                "must be a host name or IP address, without a scheme, path or spaces (e.g. \
                 redis.cache.svc)",
            );
        }
        errors.into_result()
    }
}
