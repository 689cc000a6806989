//! Tests of the restore controller's pure decisions.

use serde_json::json;
use stowage_plugin_sdk::ErrorKind;

use super::*;
use crate::controller::fixtures;
use crate::runner::{Outcome, RestoreProgress, RunKind};

fn restore(spec: serde_json::Value) -> BackupRestore {
    serde_json::from_value(json!({
        "apiVersion": "stowage.dev/v1alpha1",
        "kind": "BackupRestore",
        "metadata": {"name": "r1", "namespace": "shop", "uid": "uid-r1", "generation": 1,
                     "creationTimestamp": "2030-03-01T00:00:00Z"},
        "spec": spec,
    }))
    .unwrap()
}

fn from_target() -> BackupRestore {
    restore(json!({"source": {"targetRef": {"name": "app-db"}}}))
}

fn http_target(name: &str) -> BackupTarget {
    serde_json::from_value(json!({
        "apiVersion": "stowage.dev/v1alpha1",
        "kind": "BackupTarget",
        "metadata": {"name": name, "namespace": "shop", "uid": "uid-h", "generation": 1},
        "spec": {"http": {"url": "https://example.test/export"}, "storage": {"claimName": "exports"}}
    }))
    .unwrap()
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

#[test]
fn a_restore_starts_only_when_what_it_names_exists_and_fits() {
    let postgres = fixtures::target();
    let mut elsewhere = fixtures::target();
    elsewhere.metadata.name = Some("staging-db".into());
    elsewhere.spec.storage.claim_name = "staging-backups".into();
    let http = http_target("grafana");
    let early = at("2030-03-01T00:01:00Z");
    let late = at("2030-03-01T00:10:00Z");
    let to_staging = restore(json!({
        "source": {"targetRef": {"name": "app-db"}},
        "destination": {"targetRef": {"name": "staging-db"}}
    }));
    let from_claim = restore(json!({
        "source": {"claimName": "old-backups", "path": "shop/app-db/x.dump.zst"},
        "destination": {"targetRef": {"name": "staging-db"}}
    }));
    let into_http = restore(json!({
        "source": {"targetRef": {"name": "app-db"}},
        "destination": {"targetRef": {"name": "grafana"}}
    }));
    // (name, restore, source, destination, now) -> Ready(claim) | Wait(reason) | Fail(reason)
    type Case<'a> = (
        &'a str,
        &'a BackupRestore,
        Option<Option<&'a BackupTarget>>,
        Option<&'a BackupTarget>,
        Timestamp,
        Result<&'a str, (&'a str, &'a str)>,
    );
    let from_target = from_target();
    let cases: Vec<Case> = vec![
        (
            "into the source itself",
            &from_target,
            Some(Some(&postgres)),
            Some(&postgres),
            early,
            Ok("backups"),
        ),
        (
            "into another target reads the source's claim",
            &to_staging,
            Some(Some(&postgres)),
            Some(&elsewhere),
            early,
            Ok("backups"),
        ),
        (
            "from a claim",
            &from_claim,
            None,
            Some(&elsewhere),
            early,
            Ok("old-backups"),
        ),
        (
            "source missing, within the grace",
            &from_target,
            Some(None),
            None,
            early,
            Err(("wait", reasons::TARGET_NOT_FOUND)),
        ),
        (
            "source missing, past the grace",
            &from_target,
            Some(None),
            None,
            late,
            Err(("fail", reasons::TARGET_NOT_FOUND)),
        ),
        (
            "destination missing, past the grace",
            &from_claim,
            None,
            None,
            late,
            Err(("fail", reasons::TARGET_NOT_FOUND)),
        ),
        (
            "a plugin that cannot restore",
            &into_http,
            Some(Some(&postgres)),
            Some(&http),
            early,
            Err(("fail", reasons::RESTORE_UNSUPPORTED)),
        ),
        (
            "source and destination plugins differ",
            &to_staging,
            Some(Some(&http)),
            Some(&elsewhere),
            early,
            Err(("fail", reasons::PLUGIN_MISMATCH)),
        ),
    ];
    for (name, restore, source, destination, now, want) in cases {
        let got = match check(restore, source, destination, None, &plugins(), now) {
            Check::Ready(r) => Ok(r.claim),
            Check::Wait { reason, .. } => Err(("wait", reason)),
            Check::Fail { reason, .. } => Err(("fail", reason)),
        };
        assert_eq!(got.as_deref().map_err(|e| *e), want, "{name}");
    }
    match check(
        &into_http,
        Some(Some(&postgres)),
        Some(&http),
        None,
        &plugins(),
        early,
    ) {
        Check::Fail { message, .. } => assert!(
            message.contains("http plugin, which cannot restore")
                && message.contains("plugins that can:")
                && message.contains("postgres"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    match check(
        &from_target,
        Some(Some(&postgres)),
        Some(&postgres),
        Some(&["http".to_owned()]),
        &plugins(),
        early,
    ) {
        Check::Fail { reason, message } => {
            assert_eq!(reason, reasons::INVALID_CONFIG);
            assert!(message.contains("allowed: http"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_job_of_a_restore_is_owned_by_it_named_after_it_and_carries_its_choice() {
    let restore = restore(json!({
        "source": {"targetRef": {"name": "app-db"}, "previous": 2, "schedule": "nightly"},
        "destination": {"into": "shop_restored"},
        "mode": "Replace", "confirm": "app-db", "dryRun": true
    }));
    let target = fixtures::target();
    let Check::Ready(resolved) = check(
        &restore,
        Some(Some(&target)),
        Some(&target),
        None,
        &plugins(),
        at("2030-03-01T00:00:10Z"),
    ) else {
        panic!("not ready")
    };
    let request = RunRequest::restore(restore_run(&restore, &resolved).unwrap());
    let job = build_job(&target, &request, &Default::default()).unwrap();
    let name = job.metadata.name.clone().unwrap();
    assert!(name.starts_with("r1-r-"), "{name}");
    assert_eq!(
        name,
        job_name(&target, &request),
        "the same restore, the same Job"
    );
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("BackupRestore", "uid-r1")
    );
    let labels = job.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["stowage.dev/kind"], "restore");
    assert_eq!(labels["stowage.dev/target"], "app-db");
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(
        spec.active_deadline_seconds,
        Some(crate::jobs::RESTORE_DEADLINE_SECONDS)
    );
    let pod = spec.template.spec.as_ref().unwrap();
    let env: std::collections::BTreeMap<_, _> = pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    for (name, value) in [
        ("STOWAGE_RESTORE_PREVIOUS", "2"),
        ("STOWAGE_RESTORE_SCHEDULE", "nightly"),
        ("STOWAGE_RESTORE_INTO", "shop_restored"),
        ("STOWAGE_RESTORE_MODE", "Replace"),
        ("STOWAGE_RESTORE_DRY_RUN", "true"),
        ("STOWAGE_RESTORE_SOURCE_TARGET", "app-db"),
        ("STOWAGE_RESTORE_CLAIM", "backups"),
        ("STOWAGE_ARTIFACT_ROOT", "/backups"),
    ] {
        assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
    }
    let secret = pod.containers[0]
        .env
        .iter()
        .flatten()
        .find_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .expect("the password comes through a secretKeyRef");
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("db", "password")
    );
    let claim = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.persistent_volume_claim.as_ref());
    assert_eq!(claim.map(|c| c.claim_name.as_str()), Some("backups"));
}

fn result(outcome: Outcome, kind: Option<ErrorKind>, progress: RestoreProgress) -> RunResult {
    let start = at("2030-03-01T00:01:00Z");
    let mut r = RunResult::new(RunKind::Restore, outcome, start, at("2030-03-01T00:02:00Z"));
    r.error_kind = kind;
    r.message = Some(match kind {
        Some(k) => format!("failed: {k}"),
        None => "restored database \"shop\"".into(),
    });
    if progress.stage > RestoreStage::Resolve {
        r.artifact = Some("shop/app-db/2030-03-01/postgres-20300301T000000Z.dump.zst".into());
        r.sha256 = Some("ab".repeat(32));
        r.stored_bytes = Some(1234);
    }
    if progress.stage == RestoreStage::Done && !progress.dry_run {
        r.raw_bytes = Some(5678);
    }
    r.restore = Some(progress);
    r
}

fn run(result: Option<RunResult>, reason: Option<&str>) -> FinishedRun {
    let succeeded = result.as_ref().is_some_and(|r| r.outcome == Outcome::Ok);
    FinishedRun {
        job: "r1-r-0123456789".into(),
        kind: RunKind::Restore,
        schedule: None,
        succeeded,
        message: result
            .as_ref()
            .and_then(|r| r.message.clone())
            .or(Some("Job failed".into())),
        result,
        start_time: None,
        finish_time: at("2030-03-01T00:02:00Z"),
        reason: reason.map(str::to_owned),
        generation: Some(1),
    }
}

fn progress(
    stage: RestoreStage,
    holds_data: Option<bool>,
    replaces: bool,
    dry_run: bool,
) -> RestoreProgress {
    RestoreProgress {
        stage,
        dry_run,
        created_at: Some(at("2030-03-01T00:00:30Z")),
        schedule: Some("nightly".into()),
        artifact_plugin: Some("postgres".into()),
        destination: holds_data.map(|_| "database \"shop\" on db:5432 has 3 user tables".into()),
        holds_data,
        replaces,
    }
}

#[test]
fn the_status_of_a_finished_restore_says_how_far_it_got() {
    let restore = from_target();
    let dry = restore_with_dry_run();
    let ok = Outcome::Ok;
    let failed = Outcome::Failed;
    use RestoreStage::*;
    // (name, restore, run) -> phase, [resolved, verified, destination, completed] statuses,
    // Completed reason.
    type Case<'a> = (
        &'a str,
        &'a BackupRestore,
        FinishedRun,
        RestorePhase,
        [&'a str; 4],
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "restored into an empty destination",
            &restore,
            run(
                Some(result(ok, None, progress(Done, Some(false), false, false))),
                None,
            ),
            RestorePhase::Succeeded,
            ["True", "True", "True", "True"],
            reasons::RESTORED,
        ),
        (
            "no artifact",
            &restore,
            run(
                Some(result(
                    failed,
                    Some(ErrorKind::NotFound),
                    progress(Resolve, None, false, false),
                )),
                Some("NotFound"),
            ),
            RestorePhase::Failed,
            ["False", "Unknown", "Unknown", "False"],
            "NotFound",
        ),
        (
            "a corrupt artifact",
            &restore,
            run(
                Some(result(
                    failed,
                    Some(ErrorKind::ChecksumMismatch),
                    progress(Verify, None, false, false),
                )),
                Some("ChecksumMismatch"),
            ),
            RestorePhase::Failed,
            ["True", "False", "Unknown", "False"],
            "ChecksumMismatch",
        ),
        (
            "a destination holding data",
            &restore,
            run(
                Some(result(
                    failed,
                    Some(ErrorKind::DestinationNotEmpty),
                    progress(Destination, Some(true), false, false),
                )),
                Some("DestinationNotEmpty"),
            ),
            RestorePhase::Failed,
            ["True", "True", "False", "False"],
            "DestinationNotEmpty",
        ),
        (
            "the tool failed while restoring",
            &restore,
            run(
                Some(result(
                    failed,
                    Some(ErrorKind::ToolFailed),
                    progress(Restore, Some(false), false, false),
                )),
                Some("ToolFailed"),
            ),
            RestorePhase::Failed,
            ["True", "True", "True", "False"],
            "ToolFailed",
        ),
        (
            "a dry run into a destination holding data",
            &dry,
            run(
                Some(result(ok, None, progress(Done, Some(true), false, true))),
                None,
            ),
            RestorePhase::Succeeded,
            ["True", "True", "False", "True"],
            reasons::DRY_RUN,
        ),
        (
            "a Job without a result",
            &restore,
            run(None, Some("DeadlineExceeded")),
            RestorePhase::Failed,
            ["Unknown", "Unknown", "Unknown", "False"],
            "DeadlineExceeded",
        ),
    ];
    let now = at("2030-03-01T00:03:00Z");
    for (name, restore, run, phase, states, reason) in cases {
        let status = finished_status(&BackupRestoreStatus::default(), restore, &run, now);
        assert_eq!(status.phase, Some(phase), "{name}");
        let state = |t: &str| {
            status
                .conditions
                .iter()
                .find(|k| k.type_ == t)
                .map(|k| k.status.clone())
                .unwrap_or_default()
        };
        let got = [
            state(c::ARTIFACT_RESOLVED),
            state(c::ARTIFACT_VERIFIED),
            state(c::DESTINATION_READY),
            state(c::COMPLETED),
        ];
        assert_eq!(got, states.map(str::to_owned), "{name}");
        let completed = status
            .conditions
            .iter()
            .find(|k| k.type_ == c::COMPLETED)
            .unwrap();
        assert_eq!(completed.reason, reason, "{name}");
        assert!(
            status.completion_time.is_some(),
            "{name}: every end has a time"
        );
    }
    // What a success records.
    let status = finished_status(
        &BackupRestoreStatus::default(),
        &restore,
        &run(
            Some(result(ok, None, progress(Done, Some(false), false, false))),
            None,
        ),
        now,
    );
    let artifact = status.artifact.unwrap();
    assert_eq!(artifact.size_bytes, Some(1234));
    assert_eq!(artifact.schedule.as_deref(), Some("nightly"));
    assert_eq!(
        artifact.created_at.map(|t| t.0),
        Some(at("2030-03-01T00:00:30Z"))
    );
    assert_eq!(status.bytes_restored, Some(5678));
    assert_eq!(status.source.as_deref(), Some("target app-db"));
    assert_eq!(status.destination.as_deref(), Some("app-db"));
    let plan = status.plan.unwrap();
    assert!(!plan.holds_data && !plan.would_replace);
}

fn restore_with_dry_run() -> BackupRestore {
    restore(json!({"source": {"targetRef": {"name": "app-db"}}, "dryRun": true}))
}

#[test]
fn events_mark_start_wait_and_end_once() {
    let restore = from_target();
    let now = at("2030-03-01T00:01:00Z");
    let empty = BackupRestoreStatus::default();
    let waiting = waiting_status(
        &empty,
        &restore,
        RestorePhase::Pending,
        reasons::WAITING_FOR_RUN,
        "Job x runs".into(),
        now,
    );
    let events = transition_events(&empty, &waiting);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, event_reasons::RESTORE_WAITING);
    assert!(
        transition_events(&waiting, &waiting).is_empty(),
        "the same wait is told once"
    );
    let mut running = waiting_status(
        &waiting,
        &restore,
        RestorePhase::Running,
        reasons::RUNNING,
        "Job r1 is restoring".into(),
        now,
    );
    running.job = Some("r1-r-1".into());
    let events = transition_events(&waiting, &running);
    assert_eq!(events[0].reason, event_reasons::RESTORE_STARTED);
    let failed = refused_status(&running, &restore, reasons::JOB_DELETED, "gone".into(), now);
    let events = transition_events(&running, &failed);
    assert!(events[0].warning && events[0].reason == event_reasons::RESTORE_FAILED);
    assert!(is_final(&failed));
    assert!(transition_events(&failed, &failed).is_empty());
}

fn plugins() -> crate::installed::InstalledPlugins {
    crate::installed::InstalledPlugins::default()
}
