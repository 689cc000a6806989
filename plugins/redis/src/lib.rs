//! The `redis` plugin: a logical export of selected databases (`SCAN`, then `DUMP` and
//! `PTTL` of each key), restored into a running server with `RESTORE ... REPLACE`.
//!
//! It is a native plugin speaking the Redis protocol through the `redis` crate: no shell
//! on the server and no `redis-cli` in the image. The export walks the keyspace while the
//! server keeps serving, so it is not a point-in-time snapshot: a key written during the
//! walk may or may not be in it, and a key deleted during it is skipped. Each key is
//! exported whole, in Redis's own serialization (the `DUMP` payload, which carries a
//! checksum the server verifies on `RESTORE`), with its remaining time to live.
//!
//! The artifact format (`.redis`, version 1), all integers big-endian:
//! - the magic `STOWAGE-REDIS\n` and a version byte `1`;
//! - per database: `D`, the database number (u32); then per key: `K`, the key's length
//!   (u32) and bytes, its remaining time to live in milliseconds (i64, `-1` for none), the
//!   payload's length (u32) and bytes;
//! - `E` and the number of keys (u64): an export without it is truncated.

mod config;

pub use config::{DEFAULT_PORT, RedisConfig, RedisTls};

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ConnectionInfo, ProtocolVersion, RedisConnectionInfo};
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, BackupReport, Capabilities, DestinationReport, Execution, Plugin,
    PluginError, PluginInfo, ProbeReport, RestoreReport, RestoreRequest, RunContext,
    ValidationErrors,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The first bytes of every export.
pub const MAGIC: &[u8] = b"STOWAGE-REDIS\n";
/// The format version written.
pub const FORMAT_VERSION: u8 = 1;
/// Fact: the server's version.
pub const FACT_SERVER_VERSION: &str = "serverVersion";
/// Fact: the databases exported, comma-separated.
pub const FACT_DATABASES: &str = "databases";
/// Fact: the number of keys exported.
pub const FACT_KEYS: &str = "keys";

/// Keys asked per `SCAN`.
const SCAN_COUNT: u32 = 1000;
/// The longest a key or payload may be in an export (Redis's own limit is 512 MiB).
const MAX_LEN: u32 = 512 * 1024 * 1024;

/// The Redis plugin.
pub struct RedisPlugin;

impl Plugin for RedisPlugin {
    type Config = RedisConfig;
    const KEY: &'static str = "redis";

    fn info() -> PluginInfo {
        PluginInfo {
            key: Self::KEY,
            name: "Redis",
            version: "1.0.0",
            description: "Selected Redis databases as a logical export (SCAN + DUMP), restored into a running server with RESTORE",
            capabilities: Capabilities {
                backup: true,
                restore: true,
                probe: true,
            },
            artifact_extension: "redis",
            content_type: "application/vnd.stowage.redis-export",
            execution: Execution::Native,
            needs_kubernetes_api: false,
        }
    }

    fn validate(config: &RedisConfig) -> Result<(), ValidationErrors> {
        config.validate()
    }

    async fn probe(config: &RedisConfig, ctx: &RunContext) -> Result<ProbeReport, PluginError> {
        let mut session = Session::connect(config, ctx).await?;
        let version = session.server_version().await?;
        let mut sizes = Vec::new();
        for db in config.effective_databases() {
            session.select(db).await?;
            sizes.push(format!("db{db}: {} keys", session.dbsize().await?));
        }
        let mut facts = BTreeMap::new();
        facts.insert(FACT_SERVER_VERSION.to_owned(), version.clone());
        Ok(ProbeReport {
            message: format!(
                "connected to Redis {version} at {}{}; {}",
                config.address(),
                config
                    .username
                    .as_deref()
                    .map(|u| format!(" as {u:?}"))
                    .unwrap_or_default(),
                sizes.join(", ")
            ),
            facts,
        })
    }

    async fn backup(
        config: &RedisConfig,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> Result<BackupReport, PluginError> {
        let mut session = Session::connect(config, ctx).await?;
        let version = session.server_version().await?;
        sink.write_all(MAGIC).await?;
        sink.write_u8(FORMAT_VERSION).await?;
        let mut total: u64 = 0;
        let databases = config.effective_databases();
        for &db in &databases {
            session.select(db).await?;
            sink.write_u8(b'D').await?;
            sink.write_u32(db).await?;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = session
                    .query(redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(SCAN_COUNT))
                    .await?;
                for key in keys {
                    let mut pipe = redis::pipe();
                    pipe.cmd("DUMP").arg(&key).cmd("PTTL").arg(&key);
                    let (payload, ttl): (Option<Vec<u8>>, i64) = session.query_pipe(&pipe).await?;
                    // Deleted (or expired) since SCAN saw it.
                    let (Some(payload), true) = (payload, ttl != -2) else {
                        continue;
                    };
                    sink.write_u8(b'K').await?;
                    sink.write_u32(len(&key)?).await?;
                    sink.write_all(&key).await?;
                    sink.write_i64(ttl).await?;
                    sink.write_u32(len(&payload)?).await?;
                    sink.write_all(&payload).await?;
                    total += 1;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            tracing::info!(db, keys_so_far = total, "database exported");
        }
        sink.write_u8(b'E').await?;
        sink.write_u64(total).await?;
        let mut facts = BTreeMap::new();
        facts.insert(FACT_SERVER_VERSION.to_owned(), version);
        facts.insert(
            FACT_DATABASES.to_owned(),
            databases
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        facts.insert(FACT_KEYS.to_owned(), total.to_string());
        Ok(BackupReport { facts })
    }

    async fn inspect_destination(
        config: &RedisConfig,
        ctx: &RunContext,
        request: &RestoreRequest,
    ) -> Result<DestinationReport, PluginError> {
        reject_into(request)?;
        let mut session = Session::connect(config, ctx).await?;
        let mut held = Vec::new();
        for db in exported_databases(config, request) {
            session.select(db).await?;
            let keys = session.dbsize().await?;
            if keys > 0 {
                held.push(format!("db{db} has {keys} keys"));
            }
        }
        Ok(DestinationReport {
            holds_data: !held.is_empty(),
            description: if held.is_empty() {
                format!(
                    "Redis at {}: the databases restored into are empty",
                    config.address()
                )
            } else {
                format!("Redis at {}: {}", config.address(), held.join(", "))
            },
        })
    }

    async fn restore(
        config: &RedisConfig,
        ctx: &RunContext,
        source: &mut ArtifactSource<'_>,
        request: &RestoreRequest,
    ) -> Result<RestoreReport, PluginError> {
        reject_into(request)?;
        let mut session = Session::connect(config, ctx).await?;
        let mut magic = vec![0u8; MAGIC.len()];
        source.read_exact(&mut magic).await.map_err(truncated)?;
        let version = source.read_u8().await.map_err(truncated)?;
        if magic != MAGIC || version != FORMAT_VERSION {
            return Err(PluginError::Unsupported(format!(
                "the artifact is not a stowage Redis export of format version {FORMAT_VERSION}"
            )));
        }
        let mut restored: u64 = 0;
        let mut selected = false;
        loop {
            match source.read_u8().await.map_err(truncated)? {
                b'D' => {
                    let db = source.read_u32().await.map_err(truncated)?;
                    session.select(db).await?;
                    selected = true;
                }
                b'K' => {
                    if !selected {
                        return Err(corrupt("a key before its database"));
                    }
                    let key = read_bytes(source).await?;
                    let ttl = source.read_i64().await.map_err(truncated)?;
                    let payload = read_bytes(source).await?;
                    // RESTORE takes 0 for "no expiry"; a key about to expire keeps 1 ms.
                    let ttl = if ttl < 0 { 0 } else { ttl.max(1) };
                    let mut command = redis::cmd("RESTORE");
                    command.arg(&key).arg(ttl).arg(&payload);
                    if request.replace {
                        command.arg("REPLACE");
                    }
                    session.query::<()>(&command).await?;
                    restored += 1;
                }
                b'E' => {
                    let expected = source.read_u64().await.map_err(truncated)?;
                    if expected != restored {
                        return Err(corrupt("its key count does not match its keys"));
                    }
                    break;
                }
                other => return Err(corrupt(&format!("unknown record {other:#04x}"))),
            }
        }
        Ok(RestoreReport {
            message: format!(
                "restored {restored} keys into Redis at {}{}",
                config.address(),
                if request.replace {
                    " (replacing keys of the same names)"
                } else {
                    ""
                }
            ),
        })
    }
}

/// The databases an export holds (its facts), else those the config names.
fn exported_databases(config: &RedisConfig, request: &RestoreRequest) -> Vec<u32> {
    request
        .facts
        .get(FACT_DATABASES)
        .map(|list| {
            list.split(',')
                .filter_map(|d| d.trim().parse().ok())
                .collect()
        })
        .filter(|dbs: &Vec<u32>| !dbs.is_empty())
        .unwrap_or_else(|| config.effective_databases())
}

fn reject_into(request: &RestoreRequest) -> Result<(), PluginError> {
    match &request.into {
        Some(into) => Err(PluginError::InvalidConfig(ValidationErrors::single(
            "into",
            format!(
                "a Redis export restores into the databases it was taken from, not into \
                 {into:?}; remove spec.destination.into (point spec.destination.targetRef at \
                 another server instead)"
            ),
        ))),
        None => Ok(()),
    }
}

fn len(bytes: &[u8]) -> Result<u32, PluginError> {
    u32::try_from(bytes.len())
        .ok()
        .filter(|n| *n <= MAX_LEN)
        .ok_or_else(|| PluginError::Unsupported("a key or value larger than 512 MiB".into()))
}

fn truncated(e: std::io::Error) -> PluginError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        corrupt("it ends early")
    } else {
        PluginError::Io(e)
    }
}

fn corrupt(what: &str) -> PluginError {
    PluginError::Unsupported(format!(
        "the artifact is not a complete Redis export ({what}); nothing after that point was \
         restored"
    ))
}

async fn read_bytes(source: &mut ArtifactSource<'_>) -> Result<Vec<u8>, PluginError> {
    let n = source.read_u32().await.map_err(truncated)?;
    if n > MAX_LEN {
        return Err(corrupt("a length beyond 512 MiB"));
    }
    let mut bytes = vec![0u8; n as usize];
    source.read_exact(&mut bytes).await.map_err(truncated)?;
    Ok(bytes)
}

/// One connection and what is needed to explain its errors.
struct Session<'a> {
    connection: MultiplexedConnection,
    config: &'a RedisConfig,
    redactor: stowage_plugin_sdk::Redactor,
}

impl<'a> Session<'a> {
    async fn connect(
        config: &'a RedisConfig,
        ctx: &RunContext,
    ) -> Result<Session<'a>, PluginError> {
        config
            .validate()
            .map_err(|e| PluginError::InvalidConfig(e.prefixed("spec.redis")))?;
        let password = match &config.password_secret_ref {
            Some(reference) => Some(ctx.secret(reference)?.expose().to_owned()),
            None => None,
        };
        let redactor = ctx.secrets.redactor();
        let addr = match config.tls {
            None => ConnectionAddr::Tcp(config.host.clone(), config.port),
            Some(_) => ConnectionAddr::TcpTls {
                host: config.host.clone(),
                port: config.port,
                insecure: false,
                tls_params: None,
            },
        };
        let info = ConnectionInfo {
            addr,
            redis: RedisConnectionInfo {
                db: 0,
                username: config.username.clone(),
                password,
                protocol: ProtocolVersion::RESP2,
            },
        };
        let client = match &config.tls {
            None => redis::Client::open(info),
            Some(tls) => {
                // rustls needs a process-wide crypto provider: ring, kube's and the http
                // plugin's too.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let pem = |reference: &Option<stowage_plugin_sdk::SecretKeyRef>| {
                    reference
                        .as_ref()
                        .map(|r| ctx.secret(r).map(|v| v.expose().as_bytes().to_vec()))
                        .transpose()
                };
                let client_tls = match (pem(&tls.cert_secret_ref)?, pem(&tls.key_secret_ref)?) {
                    (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
                        client_cert,
                        client_key,
                    }),
                    _ => None,
                };
                let certificates = redis::TlsCertificates {
                    client_tls,
                    root_cert: pem(&tls.ca_secret_ref)?,
                };
                redis::Client::build_with_tls(info, certificates)
            }
        }
        .map_err(|e| classify(&e, config, &redactor))?;
        let timeout = Duration::from_secs(u64::from(config.connect_timeout_seconds));
        let connection = tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| {
                PluginError::Timeout(format!(
                    "Redis at {} did not answer within {}s (spec.redis.connectTimeoutSeconds); \
                     check spec.redis.host and port, or raise the timeout for a slow network",
                    config.address(),
                    config.connect_timeout_seconds
                ))
            })?
            .map_err(|e| classify(&e, config, &redactor))?;
        Ok(Session {
            connection,
            config,
            redactor,
        })
    }

    async fn query<T: redis::FromRedisValue>(
        &mut self,
        command: &redis::Cmd,
    ) -> Result<T, PluginError> {
        command
            .query_async(&mut self.connection)
            .await
            .map_err(|e| classify(&e, self.config, &self.redactor))
    }

    async fn query_pipe<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T, PluginError> {
        pipe.query_async(&mut self.connection)
            .await
            .map_err(|e| classify(&e, self.config, &self.redactor))
    }

    async fn select(&mut self, db: u32) -> Result<(), PluginError> {
        self.query::<()>(redis::cmd("SELECT").arg(db))
            .await
            .map_err(|e| match e {
                PluginError::Remote { message, .. } if message.contains("DB index") => {
                    PluginError::NotFound(format!(
                        "Redis at {} has no database {db} (its `databases` setting is lower); fix \
                     spec.redis.databases",
                        self.config.address()
                    ))
                }
                other => other,
            })
    }

    async fn dbsize(&mut self) -> Result<u64, PluginError> {
        self.query(&redis::cmd("DBSIZE")).await
    }

    async fn server_version(&mut self) -> Result<String, PluginError> {
        let info: String = self.query(redis::cmd("INFO").arg("server")).await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned())
    }
}

/// A client error as a typed plugin error naming the server and the fix.
fn classify(
    error: &redis::RedisError,
    config: &RedisConfig,
    redactor: &stowage_plugin_sdk::Redactor,
) -> PluginError {
    let said = redactor.redact(&error.to_string());
    let address = config.address();
    let lower = said.to_ascii_lowercase();
    if error.kind() == redis::ErrorKind::AuthenticationFailed
        || lower.contains("wrongpass")
        || lower.contains("noauth")
        || lower.contains("invalid password")
        || lower.contains("invalid username-password")
    {
        return PluginError::Unauthorized(format!(
            "Redis at {address} refused the credentials ({said}); check spec.redis.username \
             and the password in spec.redis.passwordSecretRef"
        ));
    }
    if lower.contains("noperm") {
        return PluginError::Unauthorized(format!(
            "the Redis user may not run a command the backup needs ({said}); grant it \
             +@read +@keyspace +dump +restore and the databases' keys (~*)"
        ));
    }
    let tls_words = [
        "certificate",
        "tls",
        "handshake",
        "pem",
        "unknownissuer",
        "notvalidforname",
    ];
    if config.tls.is_some() && tls_words.iter().any(|w| lower.contains(w)) {
        return PluginError::Unreachable(format!(
            "the TLS connection to Redis at {address} failed ({said}); check spec.redis.tls \
             (caSecretRef must hold the CA of the server's certificate, which must be valid \
             for spec.redis.host; certSecretRef and keySecretRef a client certificate when \
             the server requires one) and that port is the server's tls-port"
        ));
    }
    if error.is_timeout() {
        return PluginError::Timeout(format!(
            "Redis at {address} did not answer in time: {said}; check spec.redis.host and port, \
             or raise spec.redis.connectTimeoutSeconds"
        ));
    }
    if error.is_connection_refusal() || error.is_io_error() {
        return PluginError::Unreachable(format!(
            "cannot reach Redis at {address}: {said}; check spec.redis.host and port"
        ));
    }
    PluginError::Remote {
        status: None,
        message: format!("Redis at {address} answered: {said}"),
    }
}
