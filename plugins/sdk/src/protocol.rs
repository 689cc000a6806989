//! The external plugin protocol, version 1: how the stowage runner drives a plugin that
//! is not compiled into it (an installed `BackupPlugin`), and the `main` that turns any
//! [`Plugin`] into a binary speaking it.
//!
//! The runner executes the plugin's command with one more argument, the [`Operation`].
//! The process gets a clean environment with the variables of [`env`]; for a backup it
//! writes the artifact on stdout, for a restore it reads it on stdin; before it exits it
//! writes a [`Report`] (JSON) to the file named by [`env::REPORT`]. Its exit code is 0 or
//! an [`ErrorKind`] exit code. `docs/plugin-protocol.md` is the user-facing description;
//! both sides of the contract live in this module so they cannot drift apart.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::{
    ArtifactSink, ArtifactSource, ErrorKind, Plugin, PluginError, RestoreRequest, RunContext,
    Secrets, ValidationErrors, secret_bindings,
};

/// The protocol version this SDK speaks (the value of [`env::PROTOCOL`]).
pub const VERSION: u32 = 1;

/// The largest report the runner reads; a bigger one is a protocol error.
pub const REPORT_LIMIT: u64 = 64 * 1024;

/// Where a message names the config of an external target.
pub const CONFIG_FIELD: &str = "spec.external.config";

/// The environment of a plugin process. Nothing else of the runner's environment is
/// passed on, except `PATH`, `HOME`, `TMPDIR`, `LANG` and the variables the
/// `BackupPlugin` declares.
pub mod env {
    /// The protocol version, `1`.
    pub const PROTOCOL: &str = "STOWAGE_PROTOCOL";
    /// The operation, as in the last argument: `probe`, `backup`, `inspect`, `restore`.
    pub const OPERATION: &str = "STOWAGE_OPERATION";
    /// The target's config (`spec.external.config`) as a JSON object, already checked
    /// against the plugin's schema.
    pub const CONFIG: &str = "STOWAGE_CONFIG";
    /// Path of the file the plugin writes its [`Report`](super::Report) to.
    pub const REPORT: &str = "STOWAGE_REPORT";
    /// Namespace of the BackupTarget.
    pub const NAMESPACE: &str = "STOWAGE_NAMESPACE";
    /// Name of the BackupTarget.
    pub const TARGET: &str = "STOWAGE_TARGET";
    /// Identifier of the run.
    pub const RUN_ID: &str = "STOWAGE_RUN_ID";
    /// Name of the BackupSchedule of a scheduled backup.
    pub const SCHEDULE: &str = "STOWAGE_SCHEDULE";
    /// The schedule tick of a scheduled backup (RFC 3339).
    pub const SCHEDULED_TIME: &str = "STOWAGE_SCHEDULED_TIME";
    /// `inspect` and `restore`: `IntoEmpty` or `Replace`.
    pub const RESTORE_MODE: &str = "STOWAGE_RESTORE_MODE";
    /// `inspect` and `restore`: a name inside the destination to restore into, if asked.
    pub const RESTORE_INTO: &str = "STOWAGE_RESTORE_INTO";
    /// `inspect` and `restore`: the facts the backup reported, as a JSON object.
    pub const FACTS: &str = "STOWAGE_FACTS";
}

/// One operation of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A non-destructive connectivity and credentials test.
    Probe,
    /// Write the artifact on stdout.
    Backup,
    /// Say whether the restore destination holds data, without changing it.
    Inspect,
    /// Read the artifact on stdin into the destination.
    Restore,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 4] = [
        Operation::Probe,
        Operation::Backup,
        Operation::Inspect,
        Operation::Restore,
    ];

    /// The argument and [`env::OPERATION`] value.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Probe => "probe",
            Operation::Backup => "backup",
            Operation::Inspect => "inspect",
            Operation::Restore => "restore",
        }
    }

    /// The operation named `name`.
    pub fn parse(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

/// What a plugin reports at the end of an operation, as JSON in the [`env::REPORT`] file.
/// Required when the plugin exits 0; on failure it carries the error's message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `probe`: the summary shown in the target's `Reachable` condition. `restore`: what
    /// was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `probe` and `backup`: facts (string to string) kept in the status or the
    /// artifact's sidecar, such as `serverVersion`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
    /// `inspect` (required): whether restoring would overwrite data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds_data: Option<bool>,
    /// `inspect` (required): one line naming the destination and what it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A failure: the exit code is then the kind's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReportedError>,
}

/// A failure as a plugin reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedError {
    /// The [`ErrorKind`] reason (e.g. `Unauthorized`); the exit code says the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// What went wrong and how to fix it, naming the config field; never a secret value.
    pub message: String,
}

impl ErrorKind {
    /// The kind whose reason is `reason` (e.g. `Unauthorized`).
    pub fn from_reason(reason: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.reason() == reason)
    }
}

impl PluginError {
    /// An error of `kind` with `message`, as an external plugin reported it. Kinds that
    /// only the runner decides (`ChecksumMismatch`, `DestinationNotEmpty`) become
    /// [`PluginError::ToolFailed`].
    pub fn from_kind(kind: ErrorKind, message: String) -> PluginError {
        match kind {
            ErrorKind::InvalidConfig => {
                PluginError::InvalidConfig(ValidationErrors::single(CONFIG_FIELD, message))
            }
            ErrorKind::NotFound => PluginError::NotFound(message),
            ErrorKind::Unreachable => PluginError::Unreachable(message),
            ErrorKind::Unauthorized => PluginError::Unauthorized(message),
            ErrorKind::RemoteError => PluginError::Remote {
                status: None,
                message,
            },
            ErrorKind::Timeout => PluginError::Timeout(message),
            ErrorKind::IoError => PluginError::Io(std::io::Error::other(message)),
            ErrorKind::Unsupported => PluginError::Unsupported(message),
            ErrorKind::Internal => PluginError::Internal(message),
            ErrorKind::ToolFailed
            | ErrorKind::ChecksumMismatch
            | ErrorKind::DestinationNotEmpty => PluginError::ToolFailed(message),
        }
    }

    /// The message without the variant's prefix (`invalid configuration: `), as a plugin
    /// reports it.
    fn report_message(&self) -> String {
        match self {
            PluginError::InvalidConfig(errors) => errors.to_string(),
            PluginError::Io(e) => e.to_string(),
            PluginError::Internal(m) => m.clone(),
            other => other.to_string(),
        }
    }
}

/// The outcome of [`serve`]: the exit code and the report to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// 0, or the error kind's exit code.
    pub exit_code: i32,
    /// The report.
    pub report: Report,
}

impl Served {
    /// The outcome of `error` of plugin `key`: a plugin compiled in names its fields
    /// `spec.<key>.<field>`; run through the protocol they are under `spec.external.config`.
    fn failed(error: PluginError, secrets: &Secrets, key: &str) -> Served {
        let kind = error.kind();
        let message = error
            .report_message()
            .replace(&format!("spec.{key}"), CONFIG_FIELD);
        Served {
            exit_code: kind.exit_code(),
            report: Report {
                error: Some(ReportedError {
                    kind: Some(kind.reason().to_owned()),
                    message: secrets.redactor().redact(&message),
                }),
                ..Report::default()
            },
        }
    }
}

/// Run one operation of plugin `P` as the protocol says: the config, secrets and run
/// identity come from `lookup` (the environment), the artifact goes to `output` or comes
/// from `input`. Never panics on bad input: a config that does not parse or validate is
/// an `InvalidConfig` outcome naming the field.
pub async fn serve<P: Plugin>(
    operation: &str,
    lookup: impl Fn(&str) -> Option<String>,
    input: impl tokio::io::AsyncRead + Send + Unpin,
    output: impl tokio::io::AsyncWrite + Send + Unpin,
) -> Served {
    let no_secrets = Secrets::default();
    let Some(operation) = Operation::parse(operation) else {
        return Served::failed(
            PluginError::Unsupported(format!(
                "unknown operation {operation:?}; protocol {VERSION} has probe, backup, \
                 inspect and restore"
            )),
            &no_secrets,
            P::KEY,
        );
    };
    let raw = lookup(env::CONFIG).unwrap_or_else(|| "{}".to_owned());
    let value: serde_json::Value = match serde_json::from_str(&raw) {
        Ok(value) => value,
        Err(e) => {
            return Served::failed(
                PluginError::InvalidConfig(ValidationErrors::single(
                    CONFIG_FIELD,
                    format!("{} is not JSON: {e}", env::CONFIG),
                )),
                &no_secrets,
                P::KEY,
            );
        }
    };
    let config: P::Config = match serde_json::from_value(value.clone()) {
        Ok(config) => config,
        Err(e) => {
            return Served::failed(
                PluginError::InvalidConfig(ValidationErrors::single(CONFIG_FIELD, e.to_string())),
                &no_secrets,
                P::KEY,
            );
        }
    };
    if let Err(errors) = P::validate(&config) {
        return Served::failed(
            PluginError::InvalidConfig(errors.prefixed(CONFIG_FIELD)),
            &no_secrets,
            P::KEY,
        );
    }
    let secrets = Secrets::from_bindings(&secret_bindings(&value), &lookup);
    let ctx = RunContext {
        namespace: lookup(env::NAMESPACE).unwrap_or_default(),
        target: lookup(env::TARGET).unwrap_or_default(),
        schedule: lookup(env::SCHEDULE).filter(|s| !s.is_empty()),
        run_id: lookup(env::RUN_ID).unwrap_or_else(|| "manual".to_owned()),
        scheduled_time: lookup(env::SCHEDULED_TIME).and_then(|t| t.parse().ok()),
        secrets: secrets.clone(),
        claim_root: None,
    };
    let request = || RestoreRequest {
        facts: lookup(env::FACTS)
            .and_then(|f| serde_json::from_str(&f).ok())
            .unwrap_or_default(),
        into: lookup(env::RESTORE_INTO).filter(|s| !s.is_empty()),
        replace: lookup(env::RESTORE_MODE).as_deref() == Some("Replace"),
    };
    let outcome = match operation {
        Operation::Probe => P::probe(&config, &ctx).await.map(|r| Report {
            message: Some(r.message),
            facts: r.facts,
            ..Report::default()
        }),
        Operation::Backup => {
            use tokio::io::AsyncWriteExt;
            let mut sink = ArtifactSink::new(output);
            let report = P::backup(&config, &ctx, &mut sink).await;
            match (report, sink.shutdown().await) {
                (Ok(r), Ok(())) => Ok(Report {
                    facts: r.facts,
                    ..Report::default()
                }),
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(PluginError::Io(e)),
            }
        }
        Operation::Inspect => P::inspect_destination(&config, &ctx, &request())
            .await
            .map(|r| Report {
                holds_data: Some(r.holds_data),
                description: Some(r.description),
                ..Report::default()
            }),
        Operation::Restore => {
            let mut source = ArtifactSource::new(input);
            P::restore(&config, &ctx, &mut source, &request())
                .await
                .map(|r| Report {
                    message: Some(r.message),
                    ..Report::default()
                })
        }
    };
    match outcome {
        Ok(mut report) => {
            let redactor = secrets.redactor();
            report.message = report.message.map(|m| redactor.redact(&m));
            report.description = report.description.map(|m| redactor.redact(&m));
            report.facts = std::mem::take(&mut report.facts)
                .into_iter()
                .map(|(key, value)| (redactor.redact(&key), redactor.redact(&value)))
                .collect();
            Served {
                exit_code: 0,
                report,
            }
        }
        Err(error) => Served::failed(error, &secrets, P::KEY),
    }
}

/// The `main` of a plugin binary: `fn main() { stowage_plugin_sdk::protocol::main::<MyPlugin>() }`.
///
/// Reads the operation from the first argument, serves it with [`serve`] over stdin and
/// stdout, writes the report to [`env::REPORT`] and exits with the outcome's code. The
/// same plugin type can be compiled into stowage or shipped as an image this way.
pub fn main<P: Plugin>() -> ! {
    let operation = std::env::args().nth(1).unwrap_or_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            std::process::exit(ErrorKind::Internal.exit_code());
        }
    };
    let served = runtime.block_on(serve::<P>(
        &operation,
        |name| std::env::var(name).ok(),
        tokio::io::stdin(),
        tokio::io::stdout(),
    ));
    if let Some(error) = &served.report.error {
        eprintln!("{}", error.message);
    }
    let code = match std::env::var_os(env::REPORT) {
        Some(path) => match write_report(std::path::Path::new(&path), &served.report) {
            Ok(()) => served.exit_code,
            Err(e) => {
                eprintln!("cannot write the report to {}: {e}", path.to_string_lossy());
                ErrorKind::IoError.exit_code()
            }
        },
        None => {
            eprintln!(
                "{} is not set: run this plugin through the stowage runner (protocol {VERSION})",
                env::REPORT
            );
            ErrorKind::InvalidConfig.exit_code()
        }
    };
    drop(runtime);
    std::process::exit(code)
}

fn write_report(path: &std::path::Path, report: &Report) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    serde_json::to_writer(&mut file, report)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackupReport, Capabilities, Execution, PluginInfo, ProbeReport, SecretKeyRef};
    use schemars::JsonSchema;
    use tokio::io::AsyncWriteExt;

    struct Echo;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct EchoConfig {
        text: String,
        token_secret_ref: SecretKeyRef,
    }

    impl Plugin for Echo {
        type Config = EchoConfig;
        const KEY: &'static str = "echo";
        fn info() -> PluginInfo {
            PluginInfo {
                key: "echo",
                name: "Echo",
                version: "1",
                description: "test",
                capabilities: Capabilities {
                    backup: true,
                    restore: false,
                    probe: true,
                },
                artifact_extension: "txt",
                content_type: "text/plain",
                execution: Execution::Native,
                needs_kubernetes_api: false,
            }
        }
        fn validate(config: &EchoConfig) -> Result<(), ValidationErrors> {
            if config.text.is_empty() {
                return Err(ValidationErrors::single("text", "must not be empty"));
            }
            Ok(())
        }
        async fn probe(config: &EchoConfig, ctx: &RunContext) -> Result<ProbeReport, PluginError> {
            let token = ctx.secret(&config.token_secret_ref)?;
            if token.expose() != "s3cr3t-token" {
                return Err(PluginError::Unauthorized(format!(
                    "token {} refused: check spec.echo.tokenSecretRef",
                    token.expose()
                )));
            }
            Ok(ProbeReport {
                message: format!("ok for {} (token {})", ctx.target, token.expose()),
                facts: BTreeMap::from([("run".into(), ctx.run_id.clone())]),
            })
        }
        async fn backup(
            config: &EchoConfig,
            _ctx: &RunContext,
            sink: &mut ArtifactSink<'_>,
        ) -> Result<BackupReport, PluginError> {
            sink.write_all(config.text.as_bytes()).await?;
            Ok(BackupReport::default())
        }
    }

    async fn run(operation: &str, config: &str, token: &str) -> (Served, Vec<u8>) {
        let env: BTreeMap<&str, String> = BTreeMap::from([
            (env::CONFIG, config.to_owned()),
            (env::TARGET, "app".to_owned()),
            (env::RUN_ID, "r1".to_owned()),
            ("STOWAGE_SECRET_TOKENSECRETREF", token.to_owned()),
        ]);
        let mut out = Vec::new();
        let served =
            serve::<Echo>(operation, |name| env.get(name).cloned(), &b""[..], &mut out).await;
        (served, out)
    }

    const CONFIG: &str = r#"{"text": "hello", "tokenSecretRef": {"name": "t", "key": "k"}}"#;

    #[tokio::test]
    async fn serve_runs_each_operation_and_maps_errors_to_exit_codes() {
        let (served, out) = run("backup", CONFIG, "s3cr3t-token").await;
        assert_eq!((served.exit_code, out.as_slice()), (0, &b"hello"[..]));

        let (served, _) = run("probe", CONFIG, "s3cr3t-token").await;
        assert_eq!(served.exit_code, 0);
        assert_eq!(
            served.report.message.as_deref(),
            Some("ok for app (token <redacted>)")
        );
        assert_eq!(served.report.facts["run"], "r1");

        let (served, _) = run("probe", CONFIG, "wrong-token-9").await;
        assert_eq!(served.exit_code, 13);
        let error = served.report.error.unwrap();
        assert_eq!(error.kind.as_deref(), Some("Unauthorized"));
        assert_eq!(
            error.message,
            "token <redacted> refused: check spec.external.config.tokenSecretRef"
        );

        let cases = [
            ("restore", CONFIG, 17, "cannot restore"),
            ("dance", CONFIG, 17, "unknown operation \"dance\""),
            ("probe", "{not json", 10, "STOWAGE_CONFIG is not JSON"),
            (
                "probe",
                r#"{"text": "x", "tokenSecretRef": {"name": "t", "key": "k"}, "txet": 1}"#,
                10,
                "unknown field `txet`",
            ),
            (
                "probe",
                r#"{"text": "", "tokenSecretRef": {"name": "t", "key": "k"}}"#,
                10,
                "spec.external.config.text: must not be empty",
            ),
        ];
        for (operation, config, code, expected) in cases {
            let (served, _) = run(operation, config, "s3cr3t-token").await;
            assert_eq!(served.exit_code, code, "{operation} {config}");
            let message = served.report.error.unwrap().message;
            assert!(message.contains(expected), "{operation}: {message}");
        }
    }
}
