//! Runner tests with a small in-test plugin, on real files.

use std::collections::BTreeMap;
use std::sync::Mutex;

use jiff::tz::TimeZone;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, BackupReport, Capabilities, DestinationReport, Execution, Plugin,
    PluginError, PluginInfo, ProbeReport, RestoreReport, RestoreRequest, RunContext, SecretKeyRef,
    SecretValue, Secrets,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::artifacts::catalog;

/// Writes `size` pattern bytes; fails after `fail_after` bytes when set, with a message
/// that contains the secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct PatternConfig {
    size: u64,
    #[serde(default)]
    fail_after: Option<u64>,
    token_secret_ref: SecretKeyRef,
}

struct Pattern;

static RESTORED: Mutex<Vec<(Vec<u8>, Option<String>)>> = Mutex::new(Vec::new());

fn pattern(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8).collect()
}

impl Plugin for Pattern {
    type Config = PatternConfig;
    const KEY: &'static str = "pattern";

    fn info() -> PluginInfo {
        PluginInfo {
            key: "pattern",
            name: "Pattern",
            version: "9.9.9",
            description: "test",
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

    async fn probe(config: &PatternConfig, ctx: &RunContext) -> Result<ProbeReport, PluginError> {
        let token = ctx.secret(&config.token_secret_ref)?;
        Ok(ProbeReport {
            message: format!("reachable with token {}", token.expose()),
            facts: BTreeMap::from([
                ("serverVersion".into(), "1.2".into()),
                ("greeting".into(), format!("hello {}", token.expose())),
            ]),
        })
    }

    async fn backup(
        config: &PatternConfig,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> Result<BackupReport, PluginError> {
        let token = ctx.secret(&config.token_secret_ref)?.expose().to_owned();
        let data = pattern(config.size);
        for (i, chunk) in data.chunks(8192).enumerate() {
            if config
                .fail_after
                .is_some_and(|limit| (i * 8192) as u64 >= limit)
            {
                return Err(PluginError::Unauthorized(format!(
                    "server said: bad token {token}"
                )));
            }
            sink.write_all(chunk).await?;
        }
        Ok(BackupReport {
            facts: BTreeMap::from([("rows".into(), config.size.to_string())]),
        })
    }

    /// A destination named `full...` holds data; the description echoes the token, so
    /// redaction is tested.
    async fn inspect_destination(
        config: &PatternConfig,
        ctx: &RunContext,
        request: &RestoreRequest,
    ) -> Result<DestinationReport, PluginError> {
        let token = ctx.secret(&config.token_secret_ref)?.expose().to_owned();
        let into = request.into.clone().unwrap_or_default();
        Ok(DestinationReport {
            holds_data: into.starts_with("full"),
            description: format!("destination {into:?} reached with token {token}"),
        })
    }

    async fn restore(
        _config: &PatternConfig,
        _ctx: &RunContext,
        source: &mut ArtifactSource<'_>,
        request: &RestoreRequest,
    ) -> Result<RestoreReport, PluginError> {
        let mut data = Vec::new();
        source.read_to_end(&mut data).await?;
        assert_eq!(
            request.facts.get("rows").map(String::as_str),
            Some(data.len().to_string().as_str())
        );
        RESTORED.lock().unwrap().push((data, request.into.clone()));
        Ok(RestoreReport {
            message: "restored".into(),
        })
    }
}

fn spec(root: &std::path::Path) -> RunSpec {
    RunSpec {
        namespace: "shop".into(),
        target: "app-db".into(),
        schedule: Some("nightly".into()),
        run_id: "run-1".into(),
        scheduled_time: Some("2026-11-21T02:30:00Z".parse().unwrap()),
        compression: Compression::Zstd,
        root: root.to_owned(),
        claim_root: None,
        retention: None,
        time_zone: TimeZone::UTC,
        prune_dry_run: false,
        progress_interval: Duration::from_secs(5),
        timeout: None,
    }
}

fn by_path(artifact: &str, into: Option<String>) -> RestoreInputs {
    RestoreInputs {
        into,
        ..RestoreInputs::path(artifact)
    }
}

fn choose(selection: crate::artifacts::select::Selection, into: &str) -> RestoreInputs {
    RestoreInputs {
        source: RestoreSourceSpec::Choose {
            target: "app-db".into(),
            selection,
        },
        into: Some(into.into()),
        replace: false,
        dry_run: false,
        claim: Some("backups".into()),
    }
}

fn restored_into(into: &str) -> bool {
    RESTORED
        .lock()
        .unwrap()
        .iter()
        .any(|(_, i)| i.as_deref() == Some(into))
}

/// Three backups of `app-db` by schedule `nightly` on three days, sizes 1000, 2000, 3000.
async fn three_backups(root: &std::path::Path) -> Vec<String> {
    let mut artifacts = Vec::new();
    for (day, size) in [(1, 1000u64), (2, 2000), (3, 3000)] {
        let mut spec = spec(root);
        spec.run_id = format!("run-{day}");
        spec.scheduled_time = Some(format!("2026-11-0{day}T02:00:00Z").parse().unwrap());
        let result = backup(&plugin(size, None), &spec, secrets()).await;
        assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
        artifacts.push(result.artifact.unwrap());
    }
    artifacts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_chooses_among_the_targets_own_artifacts() {
    use crate::artifacts::select::Selection;
    let dir = tempfile::tempdir().unwrap();
    let artifacts = three_backups(dir.path()).await;
    // Another target's newer artifact on the same claim is never chosen.
    let mut other = spec(dir.path());
    other.target = "app-db-2".into();
    other.scheduled_time = Some("2026-11-09T02:00:00Z".parse().unwrap());
    assert_eq!(
        backup(&plugin(10, None), &other, secrets()).await.outcome,
        Outcome::Ok
    );
    let spec = spec(dir.path());
    let cases = [
        ("choose-latest", Selection::default(), &artifacts[2]),
        (
            "choose-previous",
            Selection {
                previous: Some(2),
                ..Selection::default()
            },
            &artifacts[0],
        ),
        (
            "choose-as-of",
            Selection {
                as_of: Some("2026-11-02T12:00:00Z".parse().unwrap()),
                ..Selection::default()
            },
            &artifacts[1],
        ),
    ];
    for (into, selection, want) in cases {
        let result = restore(&plugin(0, None), &spec, secrets(), &choose(selection, into)).await;
        assert_eq!(result.outcome, Outcome::Ok, "{into}: {result:?}");
        assert_eq!(result.artifact.as_deref(), Some(want.as_str()), "{into}");
        let progress = result.restore.unwrap();
        assert_eq!(progress.stage, RestoreStage::Done);
        assert_eq!(progress.schedule.as_deref(), Some("nightly"));
        assert_eq!(progress.holds_data, Some(false));
        assert!(restored_into(into), "{into}");
    }

    let none = restore(
        &plugin(0, None),
        &spec,
        secrets(),
        &choose(
            Selection {
                previous: Some(3),
                ..Selection::default()
            },
            "choose-none",
        ),
    )
    .await;
    assert_eq!(none.error_kind, Some(ErrorKind::NotFound));
    let message = none.message.unwrap();
    assert!(
        message.contains("3 artifact(s) in shop/app-db/ on claim backups"),
        "{message}"
    );

    // A path of another target is refused when the restore names its source target.
    let foreign = RestoreInputs {
        source: RestoreSourceSpec::Path {
            path: "shop/app-db-2/2026-11-09/pattern-20261109T020000Z-nightly.bin.zst".into(),
            source_target: Some("app-db".into()),
        },
        ..by_path("unused", Some("foreign".into()))
    };
    let refused = restore(&plugin(0, None), &spec, secrets(), &foreign).await;
    assert_eq!(
        refused.error_kind,
        Some(ErrorKind::InvalidConfig),
        "{refused:?}"
    );
    assert!(refused.message.unwrap().contains("not shop/app-db"));
    assert!(!restored_into("foreign"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_artifacts_names_the_claim_and_path_searched() {
    let dir = tempfile::tempdir().unwrap();
    let result = restore(
        &plugin(0, None),
        &spec(dir.path()),
        secrets(),
        &choose(Default::default(), "nothing"),
    )
    .await;
    assert_eq!(result.error_kind, Some(ErrorKind::NotFound));
    assert_eq!(result.restore.unwrap().stage, RestoreStage::Resolve);
    let message = result.message.unwrap();
    assert!(
        message
            .contains("BackupTarget shop/app-db has no artifact in shop/app-db/ on claim backups"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_with_data_is_refused_unless_replacing_and_a_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    three_backups(dir.path()).await;
    let spec = spec(dir.path());

    let mut refused = restore(
        &plugin(0, None),
        &spec,
        secrets(),
        &choose(Default::default(), "full-a"),
    )
    .await;
    assert_eq!(refused.error_kind, Some(ErrorKind::DestinationNotEmpty));
    assert_eq!(refused.exit_code(), 21);
    assert!(!restored_into("full-a"), "the plugin must not be called");
    let message = refused.message.clone().unwrap();
    assert!(
        message.contains("mode: Replace and confirm: app-db"),
        "{message}"
    );
    redact_result(&mut refused, &secrets().redactor());
    let json = refused.to_bounded_json(TERMINATION_MESSAGE_LIMIT);
    assert!(!json.contains("s3cr3t-t0ken"), "{json}");
    assert!(json.contains("with token <redacted>"), "{json}");

    let mut dry = choose(Default::default(), "full-b");
    dry.dry_run = true;
    let planned = restore(&plugin(0, None), &spec, secrets(), &dry).await;
    assert_eq!(planned.outcome, Outcome::Ok, "{planned:?}");
    assert!(!restored_into("full-b"), "a dry run changes nothing");
    let progress = planned.restore.clone().unwrap();
    assert!(progress.dry_run && progress.holds_data == Some(true) && !progress.replaces);
    assert!(planned.message.unwrap().contains("refused as it is"));

    let mut replace = choose(Default::default(), "full-c");
    replace.replace = true;
    let replaced = restore(&plugin(0, None), &spec, secrets(), &replace).await;
    assert_eq!(replaced.outcome, Outcome::Ok, "{replaced:?}");
    assert!(replaced.restore.unwrap().replaces);
    assert!(restored_into("full-c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_holds_its_artifact_against_retention_and_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = three_backups(dir.path()).await;
    let spec = spec(dir.path());
    let oldest = dir.path().join(&artifacts[0]);
    let before = std::time::SystemTime::now();
    let hold = crate::artifacts::select::Hold::take(&oldest, "restore-x");
    // Retention as a backup would apply it, while the restore holds the oldest.
    let policy = crate::retention::RetentionPolicy {
        keep_last: 1,
        ..Default::default()
    };
    let store = crate::artifacts::ArtifactStore::new(dir.path());
    let target = crate::artifacts::TargetDir::new("shop", "app-db").unwrap();
    let outcome =
        crate::retention::apply(&store, &target, "nightly", &policy, &TimeZone::UTC, false)
            .unwrap();
    assert_eq!(outcome.pruned.len(), 1, "{outcome:?}");
    assert!(oldest.exists(), "the held artifact stays");
    assert!(!dir.path().join(&artifacts[1]).exists());
    drop(hold);
    assert!(!crate::artifacts::select::is_held(&oldest, before));
    // The restore's own hold is gone when it ends.
    let result = restore(
        &plugin(0, None),
        &spec,
        secrets(),
        &by_path(&artifacts[0], Some("held".into())),
    )
    .await;
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    assert!(!crate::artifacts::select::is_held(
        &oldest,
        std::time::SystemTime::now()
    ));
}

fn secrets() -> Secrets {
    let mut secrets = Secrets::default();
    secrets.insert(
        SecretKeyRef::new("api", "token"),
        SecretValue::new("s3cr3t-t0ken"),
    );
    secrets
}

fn plugin(size: u64, fail_after: Option<u64>) -> Single<Pattern> {
    Single(PatternConfig {
        size,
        fail_after,
        token_secret_ref: SecretKeyRef::new("api", "token"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_writes_artifact_and_sidecar_then_restore_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let result = backup(&plugin(1_000_000, None), &spec, secrets()).await;
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    let artifact = result.artifact.clone().unwrap();
    assert_eq!(
        artifact,
        "shop/app-db/2026-11-21/pattern-20261121T023000Z-nightly.bin.zst"
    );
    let stored = std::fs::read(dir.path().join(&artifact)).unwrap();
    assert_eq!(
        result.sha256.as_deref(),
        Some(crate::artifacts::writer::hex(&Sha256::digest(&stored)).as_str())
    );
    assert_eq!(result.raw_bytes, Some(1_000_000));
    assert_eq!(result.stored_bytes, Some(stored.len() as u64));
    assert_eq!(result.plugin_version.as_deref(), Some("9.9.9"));
    let decoded = zstd::decode_all(&stored[..]).unwrap();
    assert!(decoded == pattern(1_000_000));

    let found = catalog::scan(dir.path()).unwrap();
    assert_eq!(found.artifacts.len(), 1);
    let sidecar = &found.artifacts[0].sidecar;
    assert_eq!(sidecar.schedule.as_deref(), Some("nightly"));
    assert_eq!(sidecar.run_id, "run-1");
    assert_eq!(
        sidecar.facts.get("rows").map(String::as_str),
        Some("1000000")
    );
    assert_eq!(sidecar.plugin_version, "9.9.9");

    let restored = restore(
        &plugin(0, None),
        &spec,
        secrets(),
        &by_path(&artifact, Some("copy".into())),
    )
    .await;
    assert_eq!(restored.outcome, Outcome::Ok, "{restored:?}");
    assert_eq!(restored.raw_bytes, Some(1_000_000));
    let (data, into) = RESTORED.lock().unwrap().pop().unwrap();
    assert!(data == pattern(1_000_000));
    assert_eq!(into.as_deref(), Some("copy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_corrupted_artifact_and_escaping_paths() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path());
    spec.compression = Compression::None;
    let result = backup(&plugin(100_000, None), &spec, secrets()).await;
    let artifact = result.artifact.unwrap();
    let path = dir.path().join(&artifact);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let restored = restore(
        &plugin(0, None),
        &spec,
        secrets(),
        &by_path(&artifact, None),
    )
    .await;
    assert_eq!(restored.outcome, Outcome::Failed);
    assert_eq!(restored.error_kind, Some(ErrorKind::ChecksumMismatch));
    assert_eq!(
        restored.restore.as_ref().map(|r| r.stage),
        Some(RestoreStage::Verify),
        "the checksum is checked before the destination is touched"
    );
    assert!(
        restored
            .message
            .unwrap()
            .contains("does not match its sidecar")
    );

    let escaped = restore(
        &plugin(0, None),
        &spec,
        secrets(),
        &by_path("../../etc/passwd", None),
    )
    .await;
    assert_eq!(escaped.error_kind, Some(ErrorKind::InvalidConfig));
    let missing = restore(
        &plugin(0, None),
        &spec,
        secrets(),
        &by_path("shop/app-db/nope.bin", None),
    )
    .await;
    assert_eq!(missing.error_kind, Some(ErrorKind::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_leaves_nothing_and_its_error_is_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let mut result = backup(&plugin(1_000_000, Some(300_000)), &spec, secrets()).await;
    assert_eq!(result.outcome, Outcome::Failed);
    assert_eq!(result.error_kind, Some(ErrorKind::Unauthorized));
    assert_eq!(result.exit_code(), 13);
    redact_result(&mut result, &secrets().redactor());
    let json = result.to_bounded_json(TERMINATION_MESSAGE_LIMIT);
    assert!(!json.contains("s3cr3t-t0ken"), "{json}");
    assert!(json.contains("bad token <redacted>"), "{json}");
    // Nothing at all is left under the target: no artifact, no sidecar, no .partial.
    let files: Vec<_> = walk(dir.path());
    assert!(files.is_empty(), "{files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_message_and_facts() {
    let dir = tempfile::tempdir().unwrap();
    let mut result = probe(&plugin(0, None), &spec(dir.path()), secrets()).await;
    assert_eq!(result.outcome, Outcome::Ok);
    assert_eq!(
        result.facts.get("serverVersion").map(String::as_str),
        Some("1.2")
    );
    redact_result(&mut result, &secrets().redactor());
    assert_eq!(
        result.message.as_deref(),
        Some("reachable with token <redacted>")
    );
    // A probe's facts reach the status only through the result: they are redacted too.
    assert_eq!(
        result.facts.get("greeting").map(String::as_str),
        Some("hello <redacted>")
    );
    let no_secret = probe(&plugin(0, None), &spec(dir.path()), Secrets::default()).await;
    assert_eq!(no_secret.error_kind, Some(ErrorKind::NotFound));
    assert!(no_secret.message.unwrap().contains("\"api\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_runs_after_a_scheduled_backup_and_spares_on_demand_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path());
    spec.compression = Compression::None;
    // An on-demand backup first, then four nightly ones, keeping the last two.
    let on_demand = RunSpec {
        schedule: None,
        scheduled_time: None,
        ..spec.clone()
    };
    assert_eq!(
        backup(&plugin(10, None), &on_demand, secrets())
            .await
            .outcome,
        Outcome::Ok
    );
    spec.retention = Some(RetentionPolicy {
        keep_last: 2,
        ..Default::default()
    });
    let mut pruned = Vec::new();
    let mut stored = Vec::new();
    for day in 1..=4u64 {
        spec.scheduled_time = Some(format!("2026-11-0{day}T02:30:00Z").parse().unwrap());
        // A different size each day, so the pruned bytes tell which artifact went.
        let result = backup(&plugin(10 * day, None), &spec, secrets()).await;
        assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
        pruned.push((result.pruned.unwrap(), result.pruned_bytes.unwrap()));
        stored.push(result.stored_bytes.unwrap());
    }
    // Day 3's backup prunes day 1's artifact, day 4's prunes day 2's: their stored bytes.
    assert_eq!(pruned, vec![(0, 0), (0, 0), (1, stored[0]), (1, stored[1])]);
    assert_ne!(stored[0], stored[1]);
    let found = catalog::scan(dir.path()).unwrap();
    let mut names: Vec<String> = found
        .artifacts
        .iter()
        .map(|l| l.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"pattern-20261103T023000Z-nightly.bin".to_owned()));
    assert!(names.contains(&"pattern-20261104T023000Z-nightly.bin".to_owned()));
    assert!(found.artifacts.iter().any(|l| l.sidecar.schedule.is_none()));
    // Sidecars of pruned artifacts are gone too.
    assert_eq!(walk(dir.path()).len(), 6);

    // Dry run: reports but deletes nothing.
    spec.prune_dry_run = true;
    spec.retention = Some(RetentionPolicy {
        keep_last: 1,
        ..Default::default()
    });
    spec.scheduled_time = Some("2026-11-05T02:30:00Z".parse().unwrap());
    let result = backup(&plugin(10, None), &spec, secrets()).await;
    assert_eq!(result.pruned, Some(0));
    assert_eq!(result.pruned_bytes, Some(0));
    assert_eq!(walk(dir.path()).len(), 8);
}

#[test]
fn bad_inputs_become_invalid_config_results() {
    let args =
        |config: &str, retention: Option<&str>, time: Option<&str>, compression: &str| RunArgs {
            plugin: "pattern".into(),
            plugin_config: config.into(),
            namespace: "shop".into(),
            target: "db".into(),
            schedule: None,
            run_id: "r".into(),
            scheduled_time: time.map(Into::into),
            compression: compression.into(),
            root: "/tmp".into(),
            claim_root: None,
            retention: retention.map(Into::into),
            time_zone: "UTC".into(),
            prune_dry_run: false,
            termination_message_path: "/dev/null".into(),
            progress_interval: 5,
            timeout_seconds: None,
        };
    assert!(args("{}", None, None, "zstd").spec().is_ok());
    for bad in [
        args("{not json", None, None, "zstd"),
        args("{}", Some("{\"keepLast\":-1}"), None, "zstd"),
        args("{}", None, Some("yesterday"), "zstd"),
        args("{}", None, None, "lz4"),
    ] {
        let err = bad.spec().unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidConfig, "{}", err.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_escape_the_store_are_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    for (namespace, target) in [
        ("..", "x"),
        ("shop", "../../etc"),
        ("shop", "a/b"),
        ("", "x"),
    ] {
        let spec = RunSpec {
            namespace: namespace.into(),
            target: target.into(),
            ..spec(dir.path())
        };
        let result = backup(&plugin(10, None), &spec, secrets()).await;
        assert_eq!(
            result.error_kind,
            Some(ErrorKind::InvalidConfig),
            "{namespace}/{target}"
        );
    }
    assert!(walk(dir.path()).is_empty());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
