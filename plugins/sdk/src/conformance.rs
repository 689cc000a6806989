//! The plugin conformance kit (feature `conformance`, for plugins' tests): the checks
//! every plugin passes, whatever service it backs up.
//!
//! Without a service:
//! - [`check_config_schema`]: the config's JSON schema documents every field (its
//!   descriptions are what `kubectl explain` shows), closes every object to unknown fields,
//!   and takes credentials only as `...SecretRef` references to a Secret key, never as
//!   values in the spec;
//! - [`check_validation`]: `validate` accepts the documented examples and rejects each
//!   documented mistake with an error naming the field at fault.
//!
//! Against the plugin's real service, which the plugin's test starts (configs and secrets
//! come from the test, the checks are the same for every plugin):
//! - [`check_failures`]: each documented failure (refused port → `Unreachable`, wrong
//!   password → `Unauthorized`, missing database/key/path → `NotFound`, a server that never
//!   answers → `Timeout`, see [`BlackHole`]) is reported with its kind by the probe *and*
//!   the backup, the message names the field at fault, and no secret value of the run
//!   appears in any message (give the case a canary password the service echoes);
//! - [`check_round_trip`]: the probe succeeds, the destination is empty before and holds
//!   data after, the artifact is not empty, and the test's own comparison of the restored
//!   data with the original passes;
//! - [`check_flat_memory`]: a large backup streams with the process's peak memory growing
//!   by less than a bound (run it in a test binary of its own: the peak is per process).
//!
//! Each returns every problem found, so one run lists them all:
//!
//! ```ignore
//! #[test]
//! fn conformance() {
//!     stowage_plugin_sdk::conformance::check_config_schema::<MyPlugin>().unwrap();
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde_json::{Map, Value};
use tokio::io::AsyncWrite;

use crate::{
    ArtifactSink, ArtifactSource, ErrorKind, Plugin, PluginError, RestoreRequest, RunContext,
};

/// Words that name a credential in a field name (compared case-insensitively): such a
/// field must be a `...SecretRef`.
pub const CREDENTIAL_WORDS: [&str; 6] = [
    "password",
    "passwd",
    "token",
    "secret",
    "credential",
    "privatekey",
];

/// Check `P::Config`'s JSON schema: every property has a description, every object
/// rejects unknown fields (`additionalProperties: false`), and every field whose name
/// speaks of a credential is a `...SecretRef` holding a Secret's `name` and `key`.
pub fn check_config_schema<P: Plugin>() -> Result<(), Vec<String>> {
    let schema = serde_json::to_value(schemars::schema_for!(P::Config))
        .map_err(|e| vec![format!("the schema does not serialize: {e}")])?;
    let mut problems = Vec::new();
    if schema
        .get("description")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        problems.push(format!(
            "spec.{}: the config type has no doc comment (the description of spec.{} in \
             kubectl explain)",
            P::KEY,
            P::KEY
        ));
    }
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    walk(
        &schema,
        &format!("spec.{}", P::KEY),
        &defs,
        &mut problems,
        0,
    );
    problems.sort();
    problems.dedup();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Check `P::validate`: each of `good` (configs as JSON) deserializes and validates; each
/// of `bad` (a config and the field path, relative to the config, its error must name)
/// deserializes and is rejected naming that field.
pub fn check_validation<P: Plugin>(
    good: &[Value],
    bad: &[(Value, &str)],
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let parse = |json: &Value, problems: &mut Vec<String>| -> Option<P::Config> {
        match serde_json::from_value::<P::Config>(json.clone()) {
            Ok(config) => Some(config),
            Err(e) => {
                problems.push(format!("{json}: does not deserialize: {e}"));
                None
            }
        }
    };
    for json in good {
        if let Some(config) = parse(json, &mut problems)
            && let Err(errors) = P::validate(&config)
        {
            problems.push(format!(
                "{json}: a documented example is rejected: {errors}"
            ));
        }
    }
    for (json, field) in bad {
        let Some(config) = parse(json, &mut problems) else {
            continue;
        };
        match P::validate(&config) {
            Ok(()) => problems.push(format!("{json}: accepted, but {field} is wrong")),
            Err(errors) => {
                if !errors.0.iter().any(|e| e.field == *field) {
                    problems.push(format!("{json}: rejected without naming {field}: {errors}"));
                }
                if let Some(e) = errors.0.iter().find(|e| e.message.trim().len() < 10) {
                    problems.push(format!(
                        "{json}: the message for {} says too little to act on: {:?}",
                        e.field, e.message
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A documented failure of a plugin against its real service (see [`check_failures`]).
pub struct FailureCase<P: Plugin> {
    /// What the case is, for messages (e.g. `"wrong password"`).
    pub name: &'static str,
    /// The config that fails (a refused port, a missing database, ...).
    pub config: P::Config,
    /// The run's context, with the secret values (a wrong or canary password).
    pub ctx: RunContext,
    /// The error kind the probe and the backup must report.
    pub kind: ErrorKind,
    /// Text the message must contain: the field at fault (e.g. `"passwordSecretRef"`).
    pub mentions: &'static str,
}

/// Every secret value of `ctx` that `text` contains, for messages (never printed whole).
fn leaked(ctx: &RunContext, text: &str) -> Option<String> {
    ctx.secrets
        .values()
        .map(|v| v.expose())
        .filter(|v| v.len() >= 4)
        .find(|v| text.contains(v))
        .map(|v| format!("a secret value of {} characters", v.len()))
}

/// Check each documented failure: `probe` and `backup` both fail with the case's kind, a
/// message that names the field at fault, and no secret value of the run. Returns every
/// problem found.
pub async fn check_failures<P: Plugin>(cases: &[FailureCase<P>]) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for case in cases {
        let probe = P::probe(&case.config, &case.ctx).await.map(|r| r.message);
        let mut sink_bytes = Vec::new();
        let backup = {
            let mut sink = ArtifactSink::new(&mut sink_bytes);
            P::backup(&case.config, &case.ctx, &mut sink)
                .await
                .map(|_| String::new())
        };
        for (operation, outcome) in [("probe", probe), ("backup", backup)] {
            match outcome {
                Ok(_) => problems.push(format!(
                    "{}: {operation} succeeded; it must fail with {}",
                    case.name, case.kind
                )),
                Err(e) => problems.extend(failure_problems(case, operation, &e)),
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn failure_problems<P: Plugin>(
    case: &FailureCase<P>,
    operation: &str,
    error: &PluginError,
) -> Vec<String> {
    let mut problems = Vec::new();
    let text = error.to_string();
    if error.kind() != case.kind {
        problems.push(format!(
            "{}: {operation} failed with {}, not {}: {text}",
            case.name,
            error.kind(),
            case.kind
        ));
    }
    if !text.contains(case.mentions) {
        problems.push(format!(
            "{}: the {operation} message does not name {:?}: {text}",
            case.name, case.mentions
        ));
    }
    if let Some(what) = leaked(&case.ctx, &text) {
        problems.push(format!(
            "{}: the {operation} message contains {what}",
            case.name
        ));
    }
    problems
}

/// Check a backup and its restore: the probe of `source` succeeds; `destination` is
/// reported empty before the restore and holding data after it; the artifact is not
/// empty; no message or fact contains a secret value; and `compare` (the test's own
/// comparison of the restored data with the original) passes.
pub async fn check_round_trip<P, F, Fut>(
    source: &P::Config,
    destination: &P::Config,
    ctx: &RunContext,
    request: &RestoreRequest,
    compare: F,
) -> Result<(), Vec<String>>
where
    P: Plugin,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut problems = Vec::new();
    let mut texts = Vec::new();
    match P::probe(source, ctx).await {
        Ok(report) => {
            if report.message.trim().is_empty() {
                problems.push("the probe's message is empty".to_owned());
            }
            texts.push(report.message);
            texts.extend(report.facts.into_values());
        }
        Err(e) => problems.push(format!("the probe of the source failed: {e}")),
    }
    match P::inspect_destination(destination, ctx, request).await {
        Ok(report) if report.holds_data => problems.push(format!(
            "the destination holds data before the restore (start the test with an empty one): {}",
            report.description
        )),
        Ok(report) => texts.push(report.description),
        Err(e) => problems.push(format!(
            "inspect_destination failed before the restore: {e}"
        )),
    }
    let mut artifact = Vec::new();
    let backup = {
        let mut sink = ArtifactSink::new(&mut artifact);
        P::backup(source, ctx, &mut sink).await
    };
    match backup {
        Ok(report) => texts.extend(report.facts.into_values()),
        Err(e) => {
            problems.push(format!("the backup failed: {e}"));
            return Err(problems);
        }
    }
    if artifact.is_empty() {
        problems.push("the backup wrote an empty artifact".to_owned());
    }
    let mut source_bytes = ArtifactSource::new(&artifact[..]);
    match P::restore(destination, ctx, &mut source_bytes, request).await {
        Ok(report) => texts.push(report.message),
        Err(e) => {
            problems.push(format!("the restore failed: {e}"));
            return Err(problems);
        }
    }
    match P::inspect_destination(destination, ctx, request).await {
        Ok(report) if !report.holds_data => problems.push(format!(
            "the destination is reported empty after the restore: {}",
            report.description
        )),
        Ok(report) => texts.push(report.description),
        Err(e) => problems.push(format!("inspect_destination failed after the restore: {e}")),
    }
    if let Err(why) = compare().await {
        problems.push(format!(
            "the restored data differs from the original: {why}"
        ));
    }
    for text in &texts {
        if let Some(what) = leaked(ctx, text) {
            problems.push(format!(
                "an output contains {what}: a report, fact or message"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// What [`check_flat_memory`] measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    /// Bytes the backup wrote.
    pub artifact_bytes: u64,
    /// How much the process's peak resident memory grew during the backup, in bytes.
    pub peak_growth_bytes: u64,
}

/// Check that a backup streams: back up `config` into a sink that counts and discards,
/// and fail when it wrote less than `min_artifact_bytes` (the test's data is too small
/// to tell) or the process's peak resident memory (`VmHWM`, reset before the backup
/// through `/proc/self/clear_refs`) grew by more than `max_growth_bytes`. Linux only; run
/// it alone in its test binary, since the peak is the whole process's.
pub async fn check_flat_memory<P: Plugin>(
    config: &P::Config,
    ctx: &RunContext,
    min_artifact_bytes: u64,
    max_growth_bytes: u64,
) -> Result<MemoryUse, Vec<String>> {
    let before = reset_peak_rss().map_err(|e| vec![e])?;
    let mut counter = Counter(0);
    let backup = {
        let mut sink = ArtifactSink::new(&mut counter);
        P::backup(config, ctx, &mut sink).await
    };
    let peak = peak_rss().map_err(|e| vec![e])?;
    let used = MemoryUse {
        artifact_bytes: counter.0,
        peak_growth_bytes: peak.saturating_sub(before),
    };
    let mut problems = Vec::new();
    if let Err(e) = backup {
        problems.push(format!("the backup failed: {e}"));
    }
    if used.artifact_bytes < min_artifact_bytes {
        problems.push(format!(
            "the backup wrote {} bytes, less than the {min_artifact_bytes} needed to tell streaming from buffering: give the test more data",
            used.artifact_bytes
        ));
    }
    if used.peak_growth_bytes > max_growth_bytes {
        problems.push(format!(
            "the peak resident memory grew by {} bytes while writing {} bytes (bound {}): the backup buffers instead of streaming",
            used.peak_growth_bytes, used.artifact_bytes, max_growth_bytes
        ));
    }
    if problems.is_empty() {
        Ok(used)
    } else {
        Err(problems)
    }
}

/// A sink that counts bytes and keeps none.
struct Counter(u64);

impl AsyncWrite for Counter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| "no VmHWM in /proc/self/status".to_owned())
}

/// Reset the peak to the current resident memory; returns it.
fn reset_peak_rss() -> Result<u64, String> {
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| format!("cannot reset the peak through /proc/self/clear_refs: {e}"))?;
    peak_rss()
}

/// A TCP server on loopback that accepts connections and never answers, for the
/// `Timeout` case of [`check_failures`]: point the config at [`BlackHole::port`] with a
/// short timeout. Connections are held until it is dropped.
pub struct BlackHole {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BlackHole {
    /// Start it on an ephemeral loopback port.
    pub fn start() -> BlackHole {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("its address").port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        });
        BlackHole { port, stop }
    }

    /// The port it listens on (at `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn resolve<'a>(schema: &'a Value, defs: &'a Map<String, Value>) -> Option<(&'a Value, String)> {
    let reference = schema.get("$ref")?.as_str()?;
    let name = reference.strip_prefix("#/$defs/")?;
    Some((defs.get(name)?, name.to_owned()))
}

/// The schemas a property may take: itself, or the branches of an `anyOf`/`oneOf`
/// (an `Option` is `anyOf: [T, null]`), each with its `$ref` followed.
fn branches<'a>(
    schema: &'a Value,
    defs: &'a Map<String, Value>,
) -> Vec<(&'a Value, Option<String>)> {
    let mut out = Vec::new();
    let alternatives: Vec<&Value> = ["anyOf", "oneOf"]
        .iter()
        .filter_map(|k| schema.get(*k)?.as_array())
        .flatten()
        .collect();
    let candidates = if alternatives.is_empty() {
        vec![schema]
    } else {
        alternatives
    };
    for candidate in candidates {
        match resolve(candidate, defs) {
            Some((target, name)) => out.push((target, Some(name))),
            None => out.push((candidate, None)),
        }
    }
    out
}

fn is_secret_ref(schema: &Value) -> bool {
    let props = schema.get("properties").and_then(Value::as_object);
    props.is_some_and(|p| p.contains_key("name") && p.contains_key("key") && p.len() == 2)
}

fn walk(
    schema: &Value,
    path: &str,
    defs: &Map<String, Value>,
    problems: &mut Vec<String>,
    depth: usize,
) {
    if depth > 16 {
        return;
    }
    for (target, _) in branches(schema, defs) {
        if let Some(items) = target.get("items") {
            walk(items, &format!("{path}[]"), defs, problems, depth + 1);
        }
        let Some(properties) = target.get("properties").and_then(Value::as_object) else {
            continue;
        };
        if target.get("additionalProperties") != Some(&Value::Bool(false)) && !is_secret_ref(target)
        {
            problems.push(format!(
                "{path}: accepts unknown fields; add #[serde(deny_unknown_fields)] so a typo \
                 is rejected at apply instead of ignored"
            ));
        }
        for (name, property) in properties {
            let field = format!("{path}.{name}");
            let described = property
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| d.trim().len() >= 10);
            if !described {
                problems.push(format!(
                    "{field}: no description (a doc comment of at least a sentence), so \
                     kubectl explain shows nothing"
                ));
            }
            let lower = name.to_ascii_lowercase();
            let credential = CREDENTIAL_WORDS.iter().any(|w| lower.contains(w));
            if credential {
                let refs_a_secret = name.ends_with("SecretRef")
                    && branches(property, defs)
                        .iter()
                        .any(|(t, _)| is_secret_ref(t));
                if !refs_a_secret {
                    problems.push(format!(
                        "{field}: names a credential but is not a ...SecretRef to a Secret's \
                         name and key; a value in the spec would be readable by everyone who \
                         can read the BackupTarget"
                    ));
                }
                continue;
            }
            walk(property, &field, defs, problems, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ArtifactSink, BackupReport, Capabilities, Execution, PluginError, PluginInfo, ProbeReport,
        RunContext, SecretKeyRef, ValidationErrors,
    };
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// A config that breaks every rule once.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    struct Sloppy {
        host: String,
        /// The password, in the spec.
        password: String,
        /// A token from a Secret.
        token_secret_ref: SecretKeyRef,
    }

    /// A config that follows them.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Tidy {
        /// Host name of the server.
        host: String,
        /// The password, from a Secret.
        password_secret_ref: Option<SecretKeyRef>,
    }

    macro_rules! plugin {
        ($name:ident, $config:ty) => {
            struct $name;
            impl Plugin for $name {
                type Config = $config;
                const KEY: &'static str = "test";
                fn info() -> PluginInfo {
                    PluginInfo {
                        key: "test",
                        name: "test",
                        version: "1",
                        description: "test",
                        capabilities: Capabilities {
                            backup: true,
                            restore: false,
                            probe: true,
                        },
                        artifact_extension: "bin",
                        content_type: "application/octet-stream",
                        execution: Execution::Native,
                        needs_kubernetes_api: false,
                    }
                }
                fn validate(config: &$config) -> Result<(), ValidationErrors> {
                    if config.host.is_empty() {
                        return Err(ValidationErrors::single("host", "must not be empty"));
                    }
                    Ok(())
                }
                async fn probe(_: &$config, _: &RunContext) -> Result<ProbeReport, PluginError> {
                    unimplemented!()
                }
                async fn backup(
                    _: &$config,
                    _: &RunContext,
                    _: &mut ArtifactSink<'_>,
                ) -> Result<BackupReport, PluginError> {
                    unimplemented!()
                }
            }
        };
    }
    plugin!(SloppyPlugin, Sloppy);
    plugin!(TidyPlugin, Tidy);

    #[test]
    fn each_broken_rule_is_named() {
        let problems = check_config_schema::<SloppyPlugin>().unwrap_err();
        let text = problems.join("\n");
        for expected in [
            "spec.test: accepts unknown fields",
            "spec.test.host: no description",
            "spec.test.password: names a credential but is not a ...SecretRef",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains("tokenSecretRef"), "{text}");
    }

    #[test]
    fn a_tidy_config_passes_and_validation_cases_are_checked() {
        check_config_schema::<TidyPlugin>().unwrap();
        let good = [serde_json::json!({"host": "db"})];
        let bad = [(serde_json::json!({"host": ""}), "host")];
        check_validation::<TidyPlugin>(&good, &bad).unwrap();
        let wrong_field = [(serde_json::json!({"host": ""}), "port")];
        assert!(check_validation::<TidyPlugin>(&good, &wrong_field).is_err());
        let rejected_example = [serde_json::json!({"host": ""})];
        assert!(check_validation::<TidyPlugin>(&rejected_example, &[]).is_err());
    }

    /// A toy service for the service-backed checks: a "store" of bytes behind a password,
    /// with switches that break what the checks must catch.
    mod toy {
        use super::*;
        use std::sync::Mutex;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        pub static RESTORED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct ToyConfig {
            /// Port of the toy service (0: refused).
            pub port: u16,
            /// The password, from a Secret.
            pub password_secret_ref: SecretKeyRef,
            /// Break: echo the password in the error.
            pub echo: bool,
            /// Break: buffer the whole artifact before writing it.
            pub buffer: bool,
            /// Break: say the destination is empty after the restore.
            pub blind: bool,
            /// Bytes the backup streams.
            pub size: u64,
        }

        pub struct Toy;

        impl Plugin for Toy {
            type Config = ToyConfig;
            const KEY: &'static str = "toy";
            fn info() -> PluginInfo {
                PluginInfo {
                    key: "toy",
                    name: "toy",
                    version: "1",
                    description: "toy",
                    capabilities: Capabilities {
                        backup: true,
                        restore: true,
                        probe: true,
                    },
                    artifact_extension: "bin",
                    content_type: "application/octet-stream",
                    execution: Execution::Native,
                    needs_kubernetes_api: false,
                }
            }
            async fn probe(
                config: &ToyConfig,
                ctx: &RunContext,
            ) -> Result<ProbeReport, PluginError> {
                check(config, ctx)?;
                Ok(ProbeReport {
                    message: "toy reachable".into(),
                    facts: Default::default(),
                })
            }
            async fn backup(
                config: &ToyConfig,
                ctx: &RunContext,
                sink: &mut ArtifactSink<'_>,
            ) -> Result<BackupReport, PluginError> {
                check(config, ctx)?;
                let chunk = vec![7u8; 64 * 1024];
                if config.buffer {
                    let whole = vec![7u8; config.size as usize];
                    sink.write_all(&whole).await?;
                } else {
                    let mut left = config.size;
                    while left > 0 {
                        let n = left.min(chunk.len() as u64) as usize;
                        sink.write_all(&chunk[..n]).await?;
                        left -= n as u64;
                    }
                }
                Ok(BackupReport::default())
            }
            async fn inspect_destination(
                config: &ToyConfig,
                _: &RunContext,
                _: &crate::RestoreRequest,
            ) -> Result<crate::DestinationReport, PluginError> {
                let holds = !RESTORED.lock().unwrap().is_empty() && !config.blind;
                Ok(crate::DestinationReport {
                    holds_data: holds,
                    description: "the toy store".into(),
                })
            }
            async fn restore(
                _: &ToyConfig,
                _: &RunContext,
                source: &mut crate::ArtifactSource<'_>,
                _: &crate::RestoreRequest,
            ) -> Result<crate::RestoreReport, PluginError> {
                let mut bytes = Vec::new();
                source.read_to_end(&mut bytes).await?;
                *RESTORED.lock().unwrap() = bytes;
                Ok(crate::RestoreReport {
                    message: "restored".into(),
                })
            }
        }

        fn check(config: &ToyConfig, ctx: &RunContext) -> Result<(), PluginError> {
            if config.port == 0 {
                return Err(PluginError::Unreachable(
                    "toy at port 0: connection refused; check port".into(),
                ));
            }
            let password = ctx.secret(&config.password_secret_ref)?.expose();
            if password != "right-password" {
                let said = if config.echo {
                    password.to_owned()
                } else {
                    "***".to_owned()
                };
                return Err(PluginError::Unauthorized(format!(
                    "the toy refused password {said}; check passwordSecretRef"
                )));
            }
            Ok(())
        }
    }

    fn toy(port: u16) -> toy::ToyConfig {
        toy::ToyConfig {
            port,
            password_secret_ref: SecretKeyRef::new("toy", "password"),
            echo: false,
            buffer: false,
            blind: false,
            size: 1024,
        }
    }

    fn toy_ctx(password: &str) -> RunContext {
        let mut ctx = RunContext::new("ns", "t");
        ctx.secrets.insert(
            SecretKeyRef::new("toy", "password"),
            crate::SecretValue::new(password),
        );
        ctx
    }

    #[tokio::test]
    async fn failure_cases_catch_a_wrong_kind_a_missing_field_and_an_echoed_secret() {
        let case = |name, config, password: &str, kind, mentions| FailureCase::<toy::Toy> {
            name,
            config,
            ctx: toy_ctx(password),
            kind,
            mentions,
        };
        let good = [
            case(
                "refused",
                toy(0),
                "right-password",
                ErrorKind::Unreachable,
                "port",
            ),
            case(
                "wrong password",
                toy(1),
                "Canary-7f3",
                ErrorKind::Unauthorized,
                "passwordSecretRef",
            ),
        ];
        check_failures(&good).await.unwrap();

        let echo = toy::ToyConfig {
            echo: true,
            ..toy(1)
        };
        let bad = [
            case(
                "wrong kind",
                toy(0),
                "right-password",
                ErrorKind::Timeout,
                "port",
            ),
            case(
                "no field",
                toy(0),
                "right-password",
                ErrorKind::Unreachable,
                "hostname",
            ),
            case(
                "echo",
                echo,
                "Canary-7f3",
                ErrorKind::Unauthorized,
                "passwordSecretRef",
            ),
            case(
                "succeeds",
                toy(1),
                "right-password",
                ErrorKind::Unauthorized,
                "x",
            ),
        ];
        let text = check_failures(&bad).await.unwrap_err().join("\n");
        for expected in [
            "wrong kind: probe failed with Unreachable, not Timeout",
            "wrong kind: backup failed with Unreachable, not Timeout",
            "no field: the probe message does not name \"hostname\"",
            "echo: the probe message contains a secret value",
            "succeeds: probe succeeded",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(
            !text.contains("Canary-7f3"),
            "the kit itself printed the secret: {text}"
        );
    }

    #[tokio::test]
    async fn round_trip_catches_a_blind_destination_and_a_failed_comparison() {
        toy::RESTORED.lock().unwrap().clear();
        let ctx = toy_ctx("right-password");
        let request = crate::RestoreRequest::default();
        check_round_trip::<toy::Toy, _, _>(&toy(1), &toy(1), &ctx, &request, || async {
            (toy::RESTORED.lock().unwrap().len() == 1024)
                .then_some(())
                .ok_or_else(|| "sizes differ".to_owned())
        })
        .await
        .unwrap();

        toy::RESTORED.lock().unwrap().clear();
        let blind = toy::ToyConfig {
            blind: true,
            ..toy(1)
        };
        let text = check_round_trip::<toy::Toy, _, _>(&toy(1), &blind, &ctx, &request, || async {
            Err("row 3 differs".to_owned())
        })
        .await
        .unwrap_err()
        .join("\n");
        assert!(text.contains("reported empty after the restore"), "{text}");
        assert!(text.contains("row 3 differs"), "{text}");
    }

    #[tokio::test]
    async fn flat_memory_tells_streaming_from_buffering() {
        let ctx = toy_ctx("right-password");
        let streaming = toy::ToyConfig {
            size: 256 << 20,
            ..toy(1)
        };
        let used = check_flat_memory::<toy::Toy>(&streaming, &ctx, 128 << 20, 32 << 20)
            .await
            .unwrap();
        assert_eq!(used.artifact_bytes, 256 << 20);
        let buffering = toy::ToyConfig {
            buffer: true,
            ..streaming
        };
        let text = check_flat_memory::<toy::Toy>(&buffering, &ctx, 128 << 20, 32 << 20)
            .await
            .unwrap_err()
            .join("\n");
        assert!(text.contains("buffers instead of streaming"), "{text}");
        let small = toy::ToyConfig { size: 10, ..toy(1) };
        let text = check_flat_memory::<toy::Toy>(&small, &ctx, 128 << 20, 32 << 20)
            .await
            .unwrap_err()
            .join("\n");
        assert!(text.contains("give the test more data"), "{text}");
    }
}
