//! The `etcd` plugin: a snapshot of an etcd cluster through its maintenance API
//! (`Maintenance.Snapshot`, what `etcdctl snapshot save` uses), streamed into the
//! artifact.
//!
//! It is a native plugin: the runner connects with etcd's Rust gRPC client
//! ([`etcd_client`]), with TLS material and the password from Secrets. The member sends
//! its database followed by etcd's SHA-256 of it; the plugin hashes the stream as it
//! passes and fails the run when the two differ, so a truncated or corrupted snapshot
//! never becomes an artifact. The artifact is the snapshot exactly as `etcdctl` writes
//! it, trailer included, so `etcdutl snapshot restore` checks it again.
//!
//! Restoring an etcd snapshot replaces a cluster's data directories while its members are
//! stopped: an offline procedure, documented in docs/artifacts.md. `restore` keeps the
//! SDK's default (`Unsupported`), so a BackupRestore naming an etcd target is refused at
//! once with `RestoreUnsupported`.

mod config;
mod errors;

pub use config::{DEFAULT_CONNECT_TIMEOUT_SECONDS, EtcdConfig, EtcdTls};

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmType, Certificate, Client, ConnectOptions, Identity, TlsOptions,
};
use sha2::{Digest, Sha256};
use stowage_plugin_sdk::{
    ArtifactSink, BackupReport, Capabilities, Execution, Plugin, PluginError, PluginInfo,
    ProbeReport, RunContext, ValidationErrors,
};
use tokio::io::AsyncWriteExt;

use crate::errors::classify;

/// Fact: the member's etcd version (e.g. `3.6.16`).
pub const FACT_ETCD_VERSION: &str = "etcdVersion";
/// Fact: the member the snapshot came from.
pub const FACT_ENDPOINT: &str = "endpoint";
/// Fact: the member's raft index when the backup started.
pub const FACT_RAFT_INDEX: &str = "raftIndex";
/// Fact: the size of the member's database in bytes, as it reported it.
pub const FACT_DB_SIZE: &str = "dbSizeBytes";

/// The longest a probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Length of etcd's SHA-256 trailer.
const TRAILER_LEN: usize = 32;

/// The etcd snapshot plugin.
pub struct EtcdPlugin;

impl Plugin for EtcdPlugin {
    type Config = EtcdConfig;
    const KEY: &'static str = "etcd";

    fn info() -> PluginInfo {
        PluginInfo {
            key: Self::KEY,
            name: "etcd snapshot",
            version: "1.0.0",
            description: "A snapshot of an etcd cluster through its maintenance API, integrity-checked (restore offline with etcdutl)",
            capabilities: Capabilities {
                backup: true,
                restore: false,
                probe: true,
            },
            artifact_extension: "db",
            content_type: "application/vnd.etcd.snapshot",
            execution: Execution::Native,
            needs_kubernetes_api: false,
        }
    }

    fn validate(config: &EtcdConfig) -> Result<(), ValidationErrors> {
        config.validate()
    }

    async fn probe(config: &EtcdConfig, ctx: &RunContext) -> Result<ProbeReport, PluginError> {
        let (mut client, endpoint) = connect(config, ctx, Some(PROBE_TIMEOUT)).await?;
        let fail = |e: etcd_client::Error| classify(&e, &endpoint, config, ctx);
        let status = client.status().await.map_err(fail)?;
        // Listing users needs the permission a snapshot needs (the root role, once
        // authentication is on), so the probe finds a user that could connect but not
        // back up. The list itself is dropped.
        client.user_list().await.map_err(fail)?;
        // An active alarm (NOSPACE, CORRUPT) is worth knowing.
        let alarms = client
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .map_err(fail)?;
        let alarms: Vec<String> = alarms
            .alarms()
            .iter()
            .map(|a| format!("{:?} on member {:x}", a.alarm(), a.member_id()))
            .collect();
        let mut facts = BTreeMap::new();
        facts.insert(FACT_ETCD_VERSION.to_owned(), status.version().to_owned());
        facts.insert(FACT_ENDPOINT.to_owned(), endpoint.clone());
        facts.insert(FACT_DB_SIZE.to_owned(), status.db_size().to_string());
        Ok(ProbeReport {
            message: format!(
                "connected to etcd {} at {endpoint}{}; database {} bytes, raft index {}{}",
                status.version(),
                config
                    .username
                    .as_deref()
                    .map(|u| format!(" as {u:?}"))
                    .unwrap_or_default(),
                status.db_size(),
                status.raft_index(),
                if alarms.is_empty() {
                    String::new()
                } else {
                    format!("; active alarms: {}", alarms.join(", "))
                }
            ),
            facts,
        })
    }

    async fn backup(
        config: &EtcdConfig,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> Result<BackupReport, PluginError> {
        let (mut client, endpoint) = connect(config, ctx, None).await?;
        let fail = |e: etcd_client::Error| classify(&e, &endpoint, config, ctx);
        let status = client.status().await.map_err(fail)?;
        tracing::info!(
            namespace = %ctx.namespace,
            target = %ctx.target,
            endpoint = %endpoint,
            etcd_version = status.version(),
            db_size = status.db_size(),
            "taking a snapshot"
        );
        let mut stream = client.snapshot().await.map_err(fail)?;
        let mut check = TrailerCheck::default();
        while let Some(message) = stream.message().await.map_err(fail)? {
            let blob = message.blob();
            check.feed(blob);
            sink.write_all(blob).await?;
        }
        let bytes = check.finish().map_err(|problem| PluginError::Remote {
            status: None,
            message: format!(
                "the snapshot from etcd at {endpoint} failed its integrity check ({problem}); \
                     nothing was stored: retry, and check the member's disk and logs"
            ),
        })?;
        tracing::info!(endpoint = %endpoint, bytes, "snapshot received and its SHA-256 checked");
        let mut facts = BTreeMap::new();
        facts.insert(FACT_ETCD_VERSION.to_owned(), status.version().to_owned());
        facts.insert(FACT_ENDPOINT.to_owned(), endpoint);
        facts.insert(FACT_RAFT_INDEX.to_owned(), status.raft_index().to_string());
        facts.insert(FACT_DB_SIZE.to_owned(), status.db_size().to_string());
        Ok(BackupReport { facts })
    }
}

/// Connect to the first member of `config.endpoints` that answers; the client and that
/// member's URL.
async fn connect(
    config: &EtcdConfig,
    ctx: &RunContext,
    timeout: Option<Duration>,
) -> Result<(Client, String), PluginError> {
    config
        .validate()
        .map_err(|e| PluginError::InvalidConfig(e.prefixed("spec.etcd")))?;
    let mut options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(u64::from(
        config.connect_timeout_seconds,
    )));
    if let Some(timeout) = timeout {
        options = options.with_timeout(timeout);
    }
    if let (Some(user), Some(password)) = (&config.username, &config.password_secret_ref) {
        options = options.with_user(user.clone(), ctx.secret(password)?.expose().to_owned());
    }
    if let Some(tls) = &config.tls {
        let mut client_tls = TlsOptions::new();
        if let Some(ca) = &tls.ca_secret_ref {
            client_tls = client_tls.ca_certificate(Certificate::from_pem(ctx.secret(ca)?.expose()));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_secret_ref, &tls.key_secret_ref) {
            client_tls = client_tls.identity(Identity::from_pem(
                ctx.secret(cert)?.expose(),
                ctx.secret(key)?.expose(),
            ));
        }
        options = options.with_tls(client_tls);
    }
    let mut last = None;
    for endpoint in &config.endpoints {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        // A client per member: the snapshot must come from one member, whole.
        // Connecting, authenticating and the first answer, within connectTimeoutSeconds:
        // a member that accepts the connection and never answers must not hang the run.
        let limit = Duration::from_secs(u64::from(config.connect_timeout_seconds));
        let attempt = async {
            let mut client = Client::connect([endpoint.as_str()], Some(options.clone()))
                .await
                .map_err(|e| classify(&e, &endpoint, config, ctx))?;
            client
                .status()
                .await
                .map_err(|e| classify(&e, &endpoint, config, ctx))?;
            Ok::<_, PluginError>(client)
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(client)) => return Ok((client, endpoint)),
            Ok(Err(error)) => last = Some(error),
            Err(_) => {
                last = Some(PluginError::Timeout(format!(
                    "etcd at {endpoint} accepted the connection but did not answer within {}s \
                     (spec.etcd.connectTimeoutSeconds); check spec.etcd.endpoints and that the \
                     member is healthy, or raise the timeout",
                    config.connect_timeout_seconds
                )))
            }
        }
        if let Some(error) = &last {
            tracing::warn!(endpoint = %endpoint, error = %error, "etcd member not usable; trying the next");
        }
    }
    Err(last.unwrap_or_else(|| {
        PluginError::InvalidConfig(ValidationErrors::single(
            "spec.etcd.endpoints",
            "list at least one member",
        ))
    }))
}

/// Checks etcd's snapshot trailer while the snapshot streams: the last 32 bytes are the
/// SHA-256 of everything before them.
#[derive(Default)]
pub struct TrailerCheck {
    hasher: Sha256,
    /// The last up to 32 bytes seen, not hashed yet.
    tail: Vec<u8>,
    total: u64,
}

impl TrailerCheck {
    /// Take the next bytes of the snapshot.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > TRAILER_LEN {
            let hashed = self.tail.len() - TRAILER_LEN;
            self.hasher.update(&self.tail[..hashed]);
            self.tail.drain(..hashed);
        }
    }

    /// The snapshot's size when its trailer matches; what is wrong otherwise.
    pub fn finish(self) -> Result<u64, String> {
        if self.tail.len() < TRAILER_LEN {
            return Err(format!(
                "{} bytes is shorter than the 32-byte SHA-256 trailer",
                self.total
            ));
        }
        let digest = self.hasher.finalize();
        if digest.as_slice() == self.tail.as_slice() {
            Ok(self.total)
        } else {
            Err(format!(
                "the SHA-256 of its {} bytes does not match its trailer",
                self.total - TRAILER_LEN as u64
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(content: &[u8]) -> Vec<u8> {
        let mut bytes = content.to_vec();
        bytes.extend_from_slice(&Sha256::digest(content));
        bytes
    }

    #[test]
    fn the_trailer_check_accepts_any_chunking_and_refuses_any_change() {
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let good = snapshot(&content);
        for chunk in [1, 7, 31, 32, 33, 4096, good.len()] {
            let mut check = TrailerCheck::default();
            for part in good.chunks(chunk) {
                check.feed(part);
            }
            assert_eq!(check.finish(), Ok(good.len() as u64), "chunks of {chunk}");
        }
        let mut flipped = good.clone();
        flipped[500] ^= 1;
        let mut truncated = good.clone();
        truncated.truncate(good.len() - 1);
        for (name, bytes) in [
            ("flipped", flipped),
            ("truncated", truncated),
            ("tiny", vec![1, 2, 3]),
        ] {
            let mut check = TrailerCheck::default();
            check.feed(&bytes);
            assert!(check.finish().is_err(), "{name}");
        }
    }
}
