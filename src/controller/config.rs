//! Configuration of `stowage controller`: command-line flags with `STOWAGE_*` environment
//! fallbacks, and the clock the reconcilers read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::registry::PluginConfig;

/// Arguments of `stowage controller`.
#[derive(Clone, Debug, clap::Args)]
pub struct ControllerArgs {
    /// Namespaces to watch, comma-separated; empty (the default) watches all namespaces.
    #[arg(
        long,
        env = "STOWAGE_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub namespaces: Vec<String>,

    /// Plugins targets may use, comma-separated; empty (the default) allows every plugin
    /// this build ships. A target using another plugin gets `ConfigValid=False` with reason
    /// `PluginNotAllowed`.
    #[arg(
        long,
        env = "STOWAGE_ALLOWED_PLUGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub allowed_plugins: Vec<String>,

    /// Image of the stowage runner (native plugins run in it; tool plugins get it copied in).
    #[arg(long, env = "STOWAGE_RUNNER_IMAGE", default_value = crate::jobs::DEFAULT_RUNNER_IMAGE)]
    pub runner_image: String,

    /// ServiceAccount of backup and probe pods when a target's `spec.job` names none.
    #[arg(
        long,
        env = "STOWAGE_RUNNER_SERVICE_ACCOUNT",
        default_value = "stowage-runner"
    )]
    pub runner_service_account: String,

    /// `activeDeadlineSeconds` of a backup Job when the target's `spec.job` sets none.
    #[arg(
        long,
        env = "STOWAGE_JOB_ACTIVE_DEADLINE_SECONDS",
        default_value_t = 3600
    )]
    pub job_active_deadline_seconds: i64,

    /// `backoffLimit` of a backup Job when the target's `spec.job` sets none.
    #[arg(long, env = "STOWAGE_JOB_BACKOFF_LIMIT", default_value_t = 2)]
    pub job_backoff_limit: i32,

    /// Most probe Jobs running at once, over all namespaces. Probes of many new or changed
    /// targets (an install, a GitOps sync) wait for a free slot instead of all starting
    /// at once; backups are not limited by it.
    #[arg(long, env = "STOWAGE_MAX_CONCURRENT_PROBES", default_value_t = 10)]
    pub max_concurrent_probes: u32,

    /// Log format: `text` or `json`. The level comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "STOWAGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "STOWAGE_BIND_ADDRESS", default_value = "0.0.0.0:8080")]
    pub bind_address: SocketAddr,

    /// Elect a leader through a Lease, so only one replica reconciles. Turn off only when
    /// exactly one replica runs.
    #[arg(long, env = "STOWAGE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader-election Lease.
    #[arg(long, env = "STOWAGE_LEASE_NAME", default_value = "stowage-controller")]
    pub lease_name: String,

    /// Namespace of the leader-election Lease (default: `POD_NAMESPACE`, else `stowage-system`).
    #[arg(long, env = "STOWAGE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Seconds a leader's Lease stays valid without renewal.
    #[arg(long, env = "STOWAGE_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// This replica's identity in the Lease and in events (default: `POD_NAME`, else the
    /// host name, else a generated one).
    #[arg(long, env = "STOWAGE_IDENTITY")]
    pub identity: Option<String>,

    /// Serve the admission webhook on this address (HTTPS, e.g. `0.0.0.0:9443`): a
    /// BackupTarget whose `spec.external.config` breaks its BackupPlugin's schema is then
    /// rejected when it is applied. Needs `--webhook-service` or `--webhook-url`. Unset:
    /// no webhook; the operator still checks every config before a run
    /// (`ConfigValid=False`, reason `InvalidConfig`).
    #[arg(long, env = "STOWAGE_WEBHOOK_BIND_ADDRESS")]
    pub webhook_bind_address: Option<std::net::SocketAddr>,

    /// The Service the API server calls the webhook through, as `namespace/name:port`
    /// (the chart sets it). The serving certificate is made for its DNS names.
    #[arg(long, env = "STOWAGE_WEBHOOK_SERVICE")]
    pub webhook_service: Option<String>,

    /// Instead of a Service, the URL the API server calls (`https://host:port`), for an
    /// operator that runs outside the cluster.
    #[arg(long, env = "STOWAGE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Name of the ValidatingWebhookConfiguration the operator writes (with its CA).
    #[arg(
        long,
        env = "STOWAGE_WEBHOOK_CONFIGURATION_NAME",
        default_value = "stowage"
    )]
    pub webhook_configuration_name: String,

    /// Testing knob: shift the controller's clock by this many seconds (may be negative).
    /// Debug builds only (the test suite's); a release build has no testing knobs.
    #[cfg(debug_assertions)]
    #[arg(
        long,
        env = "STOWAGE_CLOCK_OFFSET_SECONDS",
        hide = true,
        allow_hyphen_values = true
    )]
    pub clock_offset_seconds: Option<i64>,

    /// Testing knob: read "now" (RFC 3339) from this file at every use, so a test can move
    /// time; requeues are capped at 2 seconds while it is set. Debug builds only.
    #[cfg(debug_assertions)]
    #[arg(long, env = "STOWAGE_FAKE_TIME_FILE", hide = true)]
    pub fake_time_file: Option<PathBuf>,
}

/// Log output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A problem with the controller's flags.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--webhook-bind-address` without a usable `--webhook-service` or `--webhook-url`.
    #[error(
        "the webhook needs exactly one of --webhook-service namespace/name:port or --webhook-url https://host:port (got {value:?})"
    )]
    Webhook {
        /// The value at fault.
        value: String,
    },
    /// `--allowed-plugins` names a plugin this build does not ship.
    #[error("--allowed-plugins names unknown plugin {name:?}; this build ships: {known}")]
    UnknownPlugin {
        /// The unknown name.
        name: String,
        /// The known plugin keys.
        known: String,
    },
    /// A numeric flag is out of range.
    #[error("{flag} must be {expected}, got {value}")]
    OutOfRange {
        /// The flag.
        flag: &'static str,
        /// What is accepted.
        expected: &'static str,
        /// The value given.
        value: i64,
    },
}

impl ControllerArgs {
    /// Namespaces to watch; empty means all.
    pub fn watched_namespaces(&self) -> Vec<String> {
        clean_list(&self.namespaces)
    }

    /// The allowed plugin keys, checked against the registry; `None` means all.
    pub fn allowed_plugin_keys(&self) -> Result<Option<Vec<String>>, ConfigError> {
        let keys = clean_list(&self.allowed_plugins);
        if keys.is_empty() {
            return Ok(None);
        }
        for key in &keys {
            if !PluginConfig::KEYS.contains(&key.as_str()) {
                return Err(ConfigError::UnknownPlugin {
                    name: key.clone(),
                    known: PluginConfig::KEYS.join(", "),
                });
            }
        }
        Ok(Some(keys))
    }

    /// Where the API server reaches the webhook, when it is on.
    pub fn webhook_endpoint(&self) -> Result<Option<super::webhook::Endpoint>, ConfigError> {
        use super::webhook::Endpoint;
        if self.webhook_bind_address.is_none() {
            return Ok(None);
        }
        let invalid = |value: &str| ConfigError::Webhook {
            value: value.to_owned(),
        };
        match (&self.webhook_service, &self.webhook_url) {
            (Some(service), None) => {
                let (namespace, rest) = service.split_once('/').ok_or_else(|| invalid(service))?;
                let (name, port) = rest.split_once(':').unwrap_or((rest, "443"));
                let port: u16 = port.parse().map_err(|_| invalid(service))?;
                if namespace.is_empty() || name.is_empty() {
                    return Err(invalid(service));
                }
                Ok(Some(Endpoint::Service {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    port,
                }))
            }
            (None, Some(url)) if url.starts_with("https://") && url.len() > 8 => {
                Ok(Some(Endpoint::Url(url.clone())))
            }
            (None, Some(url)) => Err(invalid(url)),
            _ => Err(invalid("")),
        }
    }

    /// Check the webhook and numeric flags.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.webhook_endpoint()?;
        if self.job_active_deadline_seconds < 1 {
            return Err(ConfigError::OutOfRange {
                flag: "--job-active-deadline-seconds",
                expected: "at least 1",
                value: self.job_active_deadline_seconds,
            });
        }
        if !(0..=10).contains(&self.job_backoff_limit) {
            return Err(ConfigError::OutOfRange {
                flag: "--job-backoff-limit",
                expected: "between 0 and 10",
                value: i64::from(self.job_backoff_limit),
            });
        }
        if self.max_concurrent_probes < 1 {
            return Err(ConfigError::OutOfRange {
                flag: "--max-concurrent-probes",
                expected: "at least 1",
                value: i64::from(self.max_concurrent_probes),
            });
        }
        if self.lease_duration_seconds < 5 {
            return Err(ConfigError::OutOfRange {
                flag: "--lease-duration-seconds",
                expected: "at least 5",
                value: i64::try_from(self.lease_duration_seconds).unwrap_or(i64::MAX),
            });
        }
        self.allowed_plugin_keys().map(|_| ())
    }

    /// The Lease namespace: the flag, else `POD_NAMESPACE`, else `stowage-system`.
    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "stowage-system".to_owned())
    }

    /// This replica's identity: the flag, else `POD_NAME`, else `HOSTNAME`, else generated.
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                format!(
                    "stowage-{}-{}",
                    std::process::id(),
                    Timestamp::now().as_millisecond()
                )
            })
    }

    /// The clock selected by the testing knobs (the system clock by default, and always
    /// in a release build).
    #[cfg(not(debug_assertions))]
    pub fn clock(&self) -> std::sync::Arc<dyn Clock> {
        std::sync::Arc::new(SystemClock)
    }

    /// The clock selected by the testing knobs (the system clock by default, and always
    /// in a release build).
    #[cfg(debug_assertions)]
    pub fn clock(&self) -> std::sync::Arc<dyn Clock> {
        match (&self.fake_time_file, self.clock_offset_seconds) {
            (Some(path), _) => std::sync::Arc::new(FileClock { path: path.clone() }),
            (None, Some(offset)) => std::sync::Arc::new(OffsetClock {
                offset: SignedDuration::from_secs(offset),
            }),
            (None, None) => std::sync::Arc::new(SystemClock),
        }
    }
}

fn clean_list(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Where the reconcilers get "now" from.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// The longest a reconciler may wait before looking again (a test clock that jumps
    /// needs short requeues); `None` means no cap.
    fn max_requeue(&self) -> Option<Duration> {
        None
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// The system clock shifted by a fixed offset (testing knob `STOWAGE_CLOCK_OFFSET_SECONDS`).
#[derive(Clone, Copy, Debug)]
pub struct OffsetClock {
    /// Added to the system time.
    pub offset: SignedDuration,
}

impl Clock for OffsetClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
            .checked_add(self.offset)
            .unwrap_or_else(|_| Timestamp::now())
    }
}

/// "Now" read from a file holding an RFC 3339 timestamp (testing knob
/// `STOWAGE_FAKE_TIME_FILE`); an unreadable file falls back to the system time.
#[derive(Clone, Debug)]
pub struct FileClock {
    /// The file.
    pub path: PathBuf,
}

impl Clock for FileClock {
    fn now(&self) -> Timestamp {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => match text.trim().parse::<Timestamp>() {
                Ok(ts) => ts,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "fake time file does not hold an RFC 3339 timestamp; using the system time");
                    Timestamp::now()
                }
            },
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the fake time file; using the system time");
                Timestamp::now()
            }
        }
    }

    fn max_requeue(&self) -> Option<Duration> {
        Some(Duration::from_secs(2))
    }
}

/// A clock for tests: holds a settable time.
#[derive(Debug)]
pub struct TestClock(Mutex<Timestamp>);

impl TestClock {
    /// A clock reading `now`.
    pub fn new(now: Timestamp) -> Self {
        TestClock(Mutex::new(now))
    }

    /// Set the time.
    pub fn set(&self, now: Timestamp) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// Move the time forward.
    pub fn advance(&self, by: SignedDuration) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *guard = guard.checked_add(by).unwrap_or(*guard);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ControllerArgs,
    }

    fn parse(argv: &[&str]) -> ControllerArgs {
        let mut full = vec!["stowage"];
        full.extend_from_slice(argv);
        Wrapper::try_parse_from(full).unwrap().args
    }

    #[test]
    fn defaults_watch_everything_and_allow_every_plugin() {
        let args = parse(&[]);
        assert!(args.watched_namespaces().is_empty());
        assert_eq!(args.allowed_plugin_keys().unwrap(), None);
        assert!(args.leader_election);
        assert_eq!(args.log_format, LogFormat::Text);
        args.check().unwrap();
    }

    #[test]
    fn lists_are_comma_separated_and_trimmed() {
        let args = parse(&[
            "--namespaces",
            "shop, web,,",
            "--allowed-plugins",
            "postgres",
        ]);
        assert_eq!(args.watched_namespaces(), vec!["shop", "web"]);
        assert_eq!(
            args.allowed_plugin_keys().unwrap(),
            Some(vec!["postgres".to_owned()])
        );
    }

    #[test]
    fn an_unknown_allowed_plugin_is_rejected_with_the_known_ones() {
        let args = parse(&["--allowed-plugins", "postgres,nope"]);
        let err = args.check().unwrap_err().to_string();
        assert!(err.contains("\"nope\""), "{err}");
        assert!(err.contains("postgres"), "{err}");
    }

    #[test]
    fn leader_election_can_be_turned_off_and_bad_numbers_are_named() {
        let args = parse(&["--leader-election", "false", "--job-backoff-limit", "11"]);
        assert!(!args.leader_election);
        assert!(
            args.check()
                .unwrap_err()
                .to_string()
                .contains("--job-backoff-limit")
        );
    }

    #[test]
    fn the_file_clock_reads_the_file_each_time_and_caps_requeues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("now");
        std::fs::write(&path, "2030-01-01T00:00:00Z\n").unwrap();
        let args = parse(&["--fake-time-file", path.to_str().unwrap()]);
        let clock = args.clock();
        assert_eq!(clock.now(), "2030-01-01T00:00:00Z".parse().unwrap());
        std::fs::write(&path, "2030-01-01T02:30:00Z").unwrap();
        assert_eq!(clock.now(), "2030-01-01T02:30:00Z".parse().unwrap());
        assert_eq!(clock.max_requeue(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn the_offset_clock_shifts_the_system_time() {
        let args = parse(&["--clock-offset-seconds", "-86400"]);
        let shifted = args.clock().now();
        let delta = Timestamp::now() - shifted;
        assert!(delta.get_seconds() >= 86_399, "{delta:?}");
        assert!(args.clock().max_requeue().is_none());
    }

    #[test]
    fn the_test_clock_is_settable() {
        let clock = TestClock::new("2030-01-01T00:00:00Z".parse().unwrap());
        clock.advance(SignedDuration::from_mins(5));
        assert_eq!(clock.now(), "2030-01-01T00:05:00Z".parse().unwrap());
        clock.set("2031-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(clock.now(), "2031-01-01T00:00:00Z".parse().unwrap());
    }
}
