//! The runner side of the plugin protocol against real processes: shell-script plugins
//! that behave, and ones that break the contract in each way the protocol names. Every
//! broken one must end in an error with a reason, never in a success or a hang.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use stowage_plugin_external::{
    ExternalConfig, ExternalPlugin, ResolvedCapabilities, ResolvedPlugin,
};
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, ErrorKind, Plugin, RestoreRequest, RunContext, SecretKeyRef,
    SecretValue,
};

const SECRET: &str = "canary-Pw-93k1x";

/// A plugin whose command is `script` (a POSIX shell script written to `dir`), with a
/// `passwordSecretRef` in its config.
fn plugin(dir: &Path, script: &str) -> (ExternalConfig, RunContext) {
    let path = dir.join("plugin.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{script}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = ExternalConfig {
        plugin: "toy.example.com".into(),
        config: serde_json::json!({
            "path": dir.join("service").to_string_lossy(),
            "passwordSecretRef": {"name": "toy", "key": "password"}
        })
        .as_object()
        .unwrap()
        .clone(),
        resolved: Some(ResolvedPlugin {
            name: "toy.example.com".into(),
            version: "0.1.0".into(),
            image: "example/toy:1".into(),
            command: vec![path.to_string_lossy().into_owned()],
            capabilities: ResolvedCapabilities {
                backup: true,
                restore: true,
                probe: true,
            },
            extension: "txt".into(),
            content_type: "text/plain".into(),
            env: [("TOY_MODE".to_owned(), "test".to_owned())].into(),
            needs_kubernetes_api: false,
        }),
    };
    let mut ctx = RunContext::new("shop", "toy");
    ctx.secrets.insert(
        SecretKeyRef::new("toy", "password"),
        SecretValue::new(SECRET),
    );
    (config, ctx)
}

/// A plugin that keeps its "service" in a file: backup cats it, restore writes it, probe
/// and inspect look at it; it checks the password it is given, and echoes nothing else.
const WELL_BEHAVED: &str = r#"
set -eu
file=$(printf '%s' "$STOWAGE_CONFIG" | sed 's/.*"path":"\([^"]*\)".*/\1/')
[ "$STOWAGE_SECRET_PASSWORDSECRETREF" = "canary-Pw-93k1x" ] || {
  printf '{"error":{"kind":"Unauthorized","message":"wrong password: check spec.external.config.passwordSecretRef"}}' > "$STOWAGE_REPORT"
  exit 13
}
case "$1" in
probe) printf '{"message":"service file %s, mode %s, protocol %s","facts":{"size":"%s"}}' \
         "$file" "$TOY_MODE" "$STOWAGE_PROTOCOL" "$(wc -c < "$file" | tr -d ' ')" > "$STOWAGE_REPORT" ;;
backup) cat "$file"; printf '{"facts":{"lines":"%s"}}' "$(wc -l < "$file" | tr -d ' ')" > "$STOWAGE_REPORT" ;;
inspect) if [ -s "$file.restored" ]; then h=true; else h=false; fi
         printf '{"holdsData":%s,"description":"%s.restored (mode %s)"}' "$h" "$file" "$STOWAGE_RESTORE_MODE" > "$STOWAGE_REPORT" ;;
restore) cat > "$file.restored"; printf '{"message":"restored into %s.restored; facts %s"}' "$file" "$(printf %s "$STOWAGE_FACTS" | tr -d '"')" > "$STOWAGE_REPORT" ;;
*) exit 17 ;;
esac
"#;

async fn backup(
    config: &ExternalConfig,
    ctx: &RunContext,
) -> (
    Result<stowage_plugin_sdk::BackupReport, stowage_plugin_sdk::PluginError>,
    Vec<u8>,
) {
    let mut bytes = Vec::new();
    let report = {
        let mut sink = ArtifactSink::new(&mut bytes);
        ExternalPlugin::backup(config, ctx, &mut sink).await
    };
    (report, bytes)
}

#[tokio::test]
async fn a_well_behaved_script_round_trips_through_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let original = "line one\nline two ü\n".repeat(1000);
    std::fs::write(dir.path().join("service"), &original).unwrap();
    let (config, ctx) = plugin(dir.path(), WELL_BEHAVED);

    let probe = ExternalPlugin::probe(&config, &ctx).await.unwrap();
    assert!(
        probe.message.contains("mode test, protocol 1"),
        "{}",
        probe.message
    );
    assert_eq!(probe.facts["size"], original.len().to_string());

    let (report, artifact) = backup(&config, &ctx).await;
    let report = report.unwrap();
    assert_eq!(artifact, original.as_bytes());
    assert_eq!(report.facts["lines"], "2000");

    let request = RestoreRequest {
        facts: report.facts.clone(),
        into: None,
        replace: false,
    };
    let empty = ExternalPlugin::inspect_destination(&config, &ctx, &request)
        .await
        .unwrap();
    assert!(!empty.holds_data, "{empty:?}");
    assert!(empty.description.contains("mode IntoEmpty"), "{empty:?}");
    let mut source = ArtifactSource::new(&artifact[..]);
    let restored = ExternalPlugin::restore(&config, &ctx, &mut source, &request)
        .await
        .unwrap();
    assert!(
        restored.message.contains("facts {lines:2000}"),
        "{}",
        restored.message
    );
    let written = std::fs::read_to_string(dir.path().join("service.restored")).unwrap();
    assert_eq!(written, original);
    let full = ExternalPlugin::inspect_destination(&config, &ctx, &request)
        .await
        .unwrap();
    assert!(full.holds_data, "{full:?}");
}

/// Runs `script` as a backup and returns the error; the run must fail.
async fn failed_backup(script: &str) -> (ErrorKind, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("service"), "data\n").unwrap();
    let (config, ctx) = plugin(dir.path(), script);
    let run = backup(&config, &ctx);
    let (report, _) = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("a misbehaving plugin never hangs the run");
    let error = report.expect_err("a misbehaving plugin never succeeds");
    let message = error.to_string();
    assert!(!message.contains(SECRET), "the secret leaked: {message}");
    (error.kind(), message)
}

#[tokio::test]
async fn a_backup_that_writes_nothing_fails() {
    let (kind, message) = failed_backup(r#"printf '{}' > "$STOWAGE_REPORT""#).await;
    assert_eq!(kind, ErrorKind::ToolFailed);
    assert!(message.contains("wrote no artifact"), "{message}");
}

#[tokio::test]
async fn exiting_0_without_a_report_fails() {
    let (kind, message) = failed_backup("echo some bytes").await;
    assert_eq!(kind, ErrorKind::ToolFailed);
    assert!(
        message.contains("without writing its report to $STOWAGE_REPORT"),
        "{message}"
    );
}

#[tokio::test]
async fn a_malformed_report_fails() {
    let scripts: Vec<String> = [r#"not json"#, r#"{"facts": {"n": 3}}"#, r#"[1, 2]"#]
        .iter()
        .map(|report| format!("echo bytes; printf '%s' '{report}' > \"$STOWAGE_REPORT\""))
        .collect();
    each_backup_fails_saying(&scripts, "not a valid report").await;
}

/// Each of `scripts`, run as a backup, fails as `ToolFailed` with `expected` in its
/// message.
async fn each_backup_fails_saying(scripts: &[impl AsRef<str>], expected: &str) {
    for script in scripts {
        let script = script.as_ref();
        let (kind, message) = failed_backup(script).await;
        assert_eq!(kind, ErrorKind::ToolFailed, "{script}");
        assert!(message.contains(expected), "{script}: {message}");
    }
}

#[tokio::test]
async fn a_huge_report_fails() {
    let (kind, message) = failed_backup(
        r#"echo bytes; head -c 200000 /dev/zero | tr '\0' 'a' | sed 's/^/{"message":"/; s/$/"}/' > "$STOWAGE_REPORT""#,
    )
    .await;
    assert_eq!(kind, ErrorKind::ToolFailed);
    assert!(message.contains("larger than 65536 bytes"), "{message}");
}

#[tokio::test]
async fn a_flood_on_stderr_neither_blocks_nor_floods_the_message() {
    // 20 MiB on stderr, far more than a pipe holds: a runner that does not drain stderr
    // would deadlock here.
    let (kind, message) = failed_backup(
        r#"yes 'a line of noise' | head -c 20971520 >&2
echo "the last words: $STOWAGE_SECRET_PASSWORDSECRETREF" >&2; exit 1"#,
    )
    .await;
    assert_eq!(kind, ErrorKind::ToolFailed);
    assert!(message.contains("exited with code 1"), "{message}");
    assert!(message.contains("the last words: <redacted>"), "{message}");
    assert!(message.len() < 2048, "{} bytes", message.len());
}

#[tokio::test]
async fn exit_codes_and_reports_map_to_error_kinds() {
    // The exit code decides; a report's message explains.
    let (kind, message) = failed_backup(
        r#"printf '{"error":{"kind":"Unauthorized","message":"bind refused for %s"}}' "$STOWAGE_SECRET_PASSWORDSECRETREF" > "$STOWAGE_REPORT"; exit 13"#,
    )
    .await;
    assert_eq!(kind, ErrorKind::Unauthorized);
    assert_eq!(message, "bind refused for <redacted>");
    // A code outside stowage's table: the report's kind decides.
    let (kind, message) = failed_backup(
        r#"printf '{"error":{"kind":"Unreachable","message":"no route to ldap.shop.svc"}}' > "$STOWAGE_REPORT"; exit 1"#,
    )
    .await;
    assert_eq!(kind, ErrorKind::Unreachable);
    assert_eq!(message, "no route to ldap.shop.svc");
    // Each of the plugin kinds round-trips through its exit code alone.
    for kind in [
        ErrorKind::NotFound,
        ErrorKind::Unreachable,
        ErrorKind::RemoteError,
        ErrorKind::Timeout,
        ErrorKind::IoError,
        ErrorKind::Unsupported,
        ErrorKind::Internal,
    ] {
        let (got, message) =
            failed_backup(&format!("echo oops >&2; exit {}", kind.exit_code())).await;
        assert_eq!(got, kind, "{message}");
        assert!(message.contains("oops"), "{message}");
    }
    // A signal is a tool failure.
    let (kind, message) = failed_backup("kill -9 $$").await;
    assert_eq!(kind, ErrorKind::ToolFailed);
    assert!(message.contains("killed by signal 9"), "{message}");
}

#[tokio::test]
async fn the_plugin_sees_only_the_protocol_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("service"), "x").unwrap();
    // SAFETY: set before any other thread of this test reads the environment.
    unsafe { std::env::set_var("STOWAGE_SECRET_CONFIG_PASSWORDSECRETREF", SECRET) };
    let (config, ctx) = plugin(dir.path(), r#"env | sort; printf '{}' > "$STOWAGE_REPORT""#);
    let (report, bytes) = backup(&config, &ctx).await;
    report.unwrap();
    let env = String::from_utf8(bytes).unwrap();
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(n, _)| n))
        .filter(|n| *n != "PWD" && *n != "SHLVL" && *n != "_")
        .collect();
    assert_eq!(
        names,
        [
            "HOME",
            "LANG",
            "PATH",
            "STOWAGE_CONFIG",
            "STOWAGE_NAMESPACE",
            "STOWAGE_OPERATION",
            "STOWAGE_PROTOCOL",
            "STOWAGE_REPORT",
            "STOWAGE_RUN_ID",
            "STOWAGE_SECRET_PASSWORDSECRETREF",
            "STOWAGE_TARGET",
            "TMPDIR",
            "TOY_MODE"
        ],
        "{env}"
    );
}

#[tokio::test]
async fn a_run_without_the_resolved_plugin_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, ctx) = plugin(dir.path(), "exit 0");
    config.resolved = None;
    let error = ExternalPlugin::probe(&config, &ctx).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Internal);
    assert!(error.to_string().contains("toy.example.com"), "{error}");
}

#[tokio::test]
async fn a_report_that_is_a_link_or_a_fifo_neither_blocks_nor_floods() {
    // A FIFO nobody writes would block a reader forever; /dev/zero never ends.
    let scripts = [
        r#"echo bytes; mkfifo "$STOWAGE_REPORT""#,
        r#"echo bytes; ln -s /dev/zero "$STOWAGE_REPORT""#,
    ];
    each_backup_fails_saying(&scripts, "not a regular file").await;
}

#[tokio::test]
async fn secret_values_in_fact_names_are_redacted_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("service"), "x").unwrap();
    let (config, ctx) = plugin(
        dir.path(),
        r#"echo bytes; printf '{"facts":{"k-%s":"v-%s"}}' "$STOWAGE_SECRET_PASSWORDSECRETREF" "$STOWAGE_SECRET_PASSWORDSECRETREF" > "$STOWAGE_REPORT""#,
    );
    let (report, _) = backup(&config, &ctx).await;
    let facts = report.unwrap().facts;
    assert_eq!(
        facts,
        [("k-<redacted>".to_owned(), "v-<redacted>".to_owned())].into()
    );
}
