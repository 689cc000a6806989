use clap::{Args, FromArgMatches};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use serde_json::{Value, json};

use super::*;
use crate::runner::RunArgs;

const UID: &str = "6c1d7f0e-3a52-4d55-9a43-0c1f6f3b1e2a";

fn target(name: &str, spec: Value) -> BackupTarget {
    serde_json::from_value(json!({
        "apiVersion": "stowage.dev/v1alpha1",
        "kind": "BackupTarget",
        "metadata": {"name": name, "namespace": "shop", "uid": UID},
        "spec": spec,
    }))
    .unwrap()
}

/// A postgres (tool plugin) target whose Secret name and key are canaries.
fn postgres(name: &str) -> BackupTarget {
    target(
        name,
        json!({
            "postgres": {
                "host": "app-db.shop.svc",
                "database": "shop",
                "username": "backup",
                "passwordSecretRef": {"name": "canary-secret-name", "key": "canary-secret-key"},
            },
            "storage": {"claimName": "backups"},
        }),
    )
}

/// An http (native plugin) target with two secret references.
fn http(name: &str) -> BackupTarget {
    target(
        name,
        json!({
            "http": {
                "url": "https://app.shop.svc/export",
                "headers": [{"name": "X-Key", "valueSecretRef": {"name": "api", "key": "header"}}],
                "auth": {"bearer": {"tokenSecretRef": {"name": "api", "key": "token"}}},
            },
            "storage": {"claimName": "http-backups"},
            "compression": "gzip",
        }),
    )
}

fn tick() -> Timestamp {
    "2026-06-11T00:30:00Z".parse().unwrap()
}

fn nightly() -> RunRequest {
    RunRequest::scheduled("nightly", tick(), None, None)
}

fn build(target: &BackupTarget, request: &RunRequest) -> Value {
    let job = build_job(target, request, &JobDefaults::default()).unwrap();
    serde_json::to_value(job).unwrap()
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

fn plain_env(container: &Value) -> BTreeMap<String, String> {
    env_of(container)
        .into_iter()
        .filter_map(|(k, v)| Some((k, v["value"].as_str()?.to_owned())))
        .collect()
}

// ---- names ---------------------------------------------------------------------------

#[test]
fn names_are_deterministic_and_distinct_per_run() {
    let t = postgres("app-db");
    let name = job_name(&t, &nightly());
    assert_eq!(name, job_name(&t, &nightly()));
    assert_eq!(name, job_name(&postgres("app-db"), &nightly()));
    assert!(name.starts_with("app-db-b-"), "{name}");
    assert_eq!(name.len(), "app-db-b-".len() + 10);

    let later = RunRequest::scheduled(
        "nightly",
        tick() + jiff::SignedDuration::from_hours(24),
        None,
        None,
    );
    let other_schedule = RunRequest::scheduled("hourly", tick(), None, None);
    let names = [
        name.clone(),
        job_name(&t, &later),
        job_name(&t, &other_schedule),
        job_name(&t, &RunRequest::backup_now("1700000000")),
        job_name(&t, &RunRequest::backup_now("1700000001")),
        job_name(&t, &RunRequest::probe("1700000000")),
        job_name(&postgres("app-db2"), &nightly()),
    ];
    let distinct: std::collections::BTreeSet<_> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "{names:?}");
    assert!(names[5].starts_with("app-db-p-"), "{}", names[5]);

    // Retention and time zone do not identify a run: changing them cannot rerun a tick.
    let with_retention = RunRequest::scheduled(
        "nightly",
        tick(),
        Some(RetentionPolicy {
            keep_last: 3,
            ..Default::default()
        }),
        Some("Europe/Paris".into()),
    );
    assert_eq!(job_name(&t, &with_retention), name);
    assert_eq!(run_id(&t, &with_retention), run_id(&t, &nightly()));

    // A target recreated under the same name (new uid) gets new names.
    let mut recreated = postgres("app-db");
    recreated.metadata.uid = Some("another-uid".into());
    assert_ne!(job_name(&recreated, &nightly()), name);
}

#[test]
fn names_fit_a_dns_label_even_for_the_longest_target_names() {
    let long = format!("{}.{}", "a".repeat(200), "b".repeat(52));
    assert_eq!(long.len(), 253);
    for target_name in [
        long.as_str(),
        "x",
        "db.example.com",
        "-weird--",
        "1234567890",
    ] {
        let t = postgres(target_name);
        for request in [nightly(), RunRequest::probe("t")] {
            let name = job_name(&t, &request);
            assert!(name.len() <= MAX_JOB_NAME_LEN, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
        }
    }
    assert!(job_name(&postgres(&long), &nightly()).starts_with(&"a".repeat(50)));
    assert_eq!(run_id(&postgres("x"), &nightly()).len(), 10);
}

#[test]
fn label_values_are_kept_or_shortened_with_a_hash() {
    assert_eq!(label_value("app-db"), "app-db");
    assert_eq!(label_value("db.example.com"), "db.example.com");
    let long = "n".repeat(253);
    let short = label_value(&long);
    assert_eq!(short.len(), 63);
    assert_ne!(
        label_value(&"n".repeat(254)),
        short,
        "hash tells long names apart"
    );
    assert_eq!(label_value(&long), short, "deterministic");
    let job = build(&postgres(&long), &nightly());
    assert_eq!(
        job["metadata"]["labels"]["stowage.dev/target"],
        json!(short)
    );
    assert_eq!(
        job["metadata"]["annotations"]["stowage.dev/target"],
        json!(long)
    );
}

// ---- the Job -------------------------------------------------------------------------

#[test]
fn a_scheduled_backup_job_has_owner_labels_annotations_and_limits() {
    let job = build(&postgres("app-db"), &nightly());
    let meta = &job["metadata"];
    let run = run_id(&postgres("app-db"), &nightly());
    assert_eq!(
        meta["name"],
        json!(job_name(&postgres("app-db"), &nightly()))
    );
    assert_eq!(meta["namespace"], json!("shop"));
    assert_eq!(
        meta["ownerReferences"],
        json!([{
            "apiVersion": "stowage.dev/v1alpha1",
            "kind": "BackupTarget",
            "name": "app-db",
            "uid": UID,
            "controller": true,
            "blockOwnerDeletion": true,
        }])
    );
    let labels = json!({
        "app.kubernetes.io/managed-by": "stowage",
        "stowage.dev/target": "app-db",
        "stowage.dev/schedule": "nightly",
        "stowage.dev/plugin": "postgres",
        "stowage.dev/run": run,
        "stowage.dev/kind": "backup",
    });
    assert_eq!(meta["labels"], labels);
    assert_eq!(job["spec"]["template"]["metadata"]["labels"], labels);
    assert_eq!(
        meta["annotations"],
        json!({
            "stowage.dev/target": "app-db",
            "stowage.dev/schedule": "nightly",
            "stowage.dev/scheduled-time": "2026-06-11T00:30:00Z",
        })
    );
    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], json!(2));
    assert_eq!(spec["activeDeadlineSeconds"], json!(3600));
    assert!(spec.get("ttlSecondsAfterFinished").is_none());
    assert_eq!(spec["template"]["spec"]["restartPolicy"], json!("Never"));
    let rules = &spec["podFailurePolicy"]["rules"];
    assert_eq!(rules[0]["action"], json!("FailJob"));
    assert_eq!(rules[0]["onExitCodes"]["containerName"], json!("run"));
    assert_eq!(rules[0]["onExitCodes"]["values"], json!([10, 11, 13, 17]));
    assert_eq!(rules[1]["action"], json!("Ignore"));
}

#[test]
fn pods_run_restricted() {
    for (t, request) in [
        (postgres("a"), nightly()),
        (http("b"), RunRequest::probe("x")),
    ] {
        let job = build(&t, &request);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"],
            json!({
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "fsGroup": 65532,
                "fsGroupChangePolicy": "OnRootMismatch",
                "seccompProfile": {"type": "RuntimeDefault"},
            })
        );
        assert_eq!(pod["automountServiceAccountToken"], json!(false));
        assert_eq!(pod["enableServiceLinks"], json!(false));
        let containers = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_array().into_iter().flatten());
        for c in containers {
            assert_eq!(
                c["securityContext"],
                json!({
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "runAsNonRoot": true,
                    "capabilities": {"drop": ["ALL"]},
                }),
                "{}",
                c["name"]
            );
            assert_eq!(c["terminationMessagePath"], json!("/dev/termination-log"));
            assert_eq!(
                c["terminationMessagePolicy"],
                json!("FallbackToLogsOnError")
            );
        }
        let run = &pod["containers"][0];
        assert!(
            run["volumeMounts"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "tmp", "mountPath": "/tmp"})),
            "{run}"
        );
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "tmp", "emptyDir": {}}))
        );
    }
}

#[test]
fn secrets_travel_only_as_secret_key_refs() {
    let t = postgres("app-db");
    let job = build_job(&t, &nightly(), &JobDefaults::default()).unwrap();
    let text = serde_json::to_string(&job).unwrap();
    let run = &serde_json::to_value(&job).unwrap()["spec"]["template"]["spec"]["containers"][0];
    let env = env_of(run);
    assert_eq!(
        env["STOWAGE_SECRET_PASSWORDSECRETREF"],
        json!({
            "name": "STOWAGE_SECRET_PASSWORDSECRETREF",
            "valueFrom": {"secretKeyRef": {
                "name": "canary-secret-name", "key": "canary-secret-key", "optional": false
            }},
        })
    );
    // The canaries appear only in that reference and in the config's own reference
    // (the config JSON carries `{name, key}`, never a value).
    assert_eq!(text.matches("canary-secret-name").count(), 2, "{text}");
    let config: Value =
        serde_json::from_str(plain_env(run)["STOWAGE_PLUGIN_CONFIG"].as_str()).unwrap();
    assert_eq!(
        config["passwordSecretRef"],
        json!({"name": "canary-secret-name", "key": "canary-secret-key"})
    );
    // Every secret env variable of a target with several references is a reference.
    let job = build(&http("site"), &RunRequest::backup_now("now"));
    let env = env_of(&job["spec"]["template"]["spec"]["containers"][0]);
    let secret_envs: Vec<_> = env
        .keys()
        .filter(|k| k.starts_with("STOWAGE_SECRET_"))
        .collect();
    assert_eq!(
        secret_envs,
        [
            "STOWAGE_SECRET_AUTH_BEARER_TOKENSECRETREF",
            "STOWAGE_SECRET_HEADERS_0_VALUESECRETREF"
        ]
    );
    for name in secret_envs {
        assert!(env[name].get("value").is_none(), "{name}");
        assert!(
            env[name]["valueFrom"]["secretKeyRef"]["name"] == json!("api"),
            "{name}"
        );
    }
}

#[test]
fn tool_plugins_run_the_tool_image_with_the_runner_copied_in() {
    let job = build(&postgres("app-db"), &nightly());
    let pod = &job["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0];
    assert_eq!(init["name"], json!("install-runner"));
    assert_eq!(init["image"], json!(DEFAULT_RUNNER_IMAGE));
    assert_eq!(
        init["command"],
        json!(["/usr/local/bin/stowage", "copy-self", "/stowage/stowage"])
    );
    assert_eq!(
        init["volumeMounts"],
        json!([{"name": "stowage-bin", "mountPath": "/stowage"}])
    );
    let run = &pod["containers"][0];
    assert_eq!(run["name"], json!("run"));
    assert_eq!(run["image"], json!("postgres:17"));
    assert_eq!(run["command"], json!(["/stowage/stowage", "run", "backup"]));
    let mounts = run["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.contains(&json!({"name": "stowage-bin", "mountPath": "/stowage", "readOnly": true}))
    );
    assert!(mounts.contains(&json!({"name": "artifacts", "mountPath": "/backups"})));
    assert!(pod["volumes"].as_array().unwrap().contains(&json!({
        "name": "artifacts", "persistentVolumeClaim": {"claimName": "backups", "readOnly": false}
    })));

    // The config's `image` beats the plugin default; `spec.job.image` beats both.
    let mut t = postgres("app-db");
    let mut spec = serde_json::to_value(&t.spec).unwrap();
    spec["postgres"]["image"] = json!("postgres:16");
    t.spec = serde_json::from_value(spec.clone()).unwrap();
    let image = |t: &BackupTarget| {
        build(t, &nightly())["spec"]["template"]["spec"]["containers"][0]["image"].clone()
    };
    assert_eq!(image(&t), json!("postgres:16"));
    spec["job"] = json!({"image": "registry.example/pg:15"});
    t.spec = serde_json::from_value(spec).unwrap();
    assert_eq!(image(&t), json!("registry.example/pg:15"));
}

#[test]
fn native_plugins_run_the_runner_image_alone() {
    let defaults = JobDefaults {
        runner_image: "registry.example/stowage:dev".into(),
        image_pull_policy: Some("IfNotPresent".into()),
        ..JobDefaults::default()
    };
    let job = serde_json::to_value(
        build_job(&http("site"), &RunRequest::backup_now("n"), &defaults).unwrap(),
    )
    .unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert!(pod.get("initContainers").is_none());
    let run = &pod["containers"][0];
    assert_eq!(run["image"], json!("registry.example/stowage:dev"));
    assert_eq!(run["imagePullPolicy"], json!("IfNotPresent"));
    assert_eq!(
        run["command"],
        json!(["/usr/local/bin/stowage", "run", "backup"])
    );
    assert!(
        !pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "stowage-bin")
    );
    assert_eq!(
        job["metadata"]["annotations"]["stowage.dev/token"],
        json!("n")
    );
    assert!(
        job["metadata"]["labels"]
            .get("stowage.dev/schedule")
            .is_none()
    );
}

#[test]
fn probe_jobs_mount_no_claim() {
    let job = build(&postgres("app-db"), &RunRequest::probe("gen-3"));
    assert_eq!(
        job["metadata"]["labels"]["stowage.dev/kind"],
        json!("probe")
    );
    assert_eq!(
        job["metadata"]["annotations"]["stowage.dev/token"],
        json!("gen-3")
    );
    let pod = &job["spec"]["template"]["spec"];
    assert!(
        !pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.get("persistentVolumeClaim").is_some())
    );
    let run = &pod["containers"][0];
    assert_eq!(run["command"], json!(["/stowage/stowage", "run", "probe"]));
    assert!(!plain_env(run).contains_key("STOWAGE_ARTIFACT_ROOT"));
}

#[test]
fn spec_job_overrides_the_defaults() {
    let mut spec = serde_json::to_value(&http("site").spec).unwrap();
    spec["job"] = json!({
        "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m"}},
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "backup", "operator": "Exists", "effect": "NoSchedule"}],
        "activeDeadlineSeconds": 600,
        "backoffLimit": 0,
        "serviceAccountName": "backup-runner",
    });
    let mut t = http("site");
    t.spec = serde_json::from_value(spec).unwrap();
    let defaults = JobDefaults {
        service_account_name: Some("default-runner".into()),
        ttl_seconds_after_finished: Some(86400),
        ..JobDefaults::default()
    };
    let job = serde_json::to_value(build_job(&t, &nightly(), &defaults).unwrap()).unwrap();
    assert_eq!(job["spec"]["activeDeadlineSeconds"], json!(600));
    assert_eq!(job["spec"]["backoffLimit"], json!(0));
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], json!(86400));
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], json!("backup-runner"));
    assert_eq!(pod["nodeSelector"], json!({"disk": "ssd"}));
    assert_eq!(pod["tolerations"][0]["key"], json!("backup"));
    assert_eq!(
        pod["containers"][0]["resources"],
        json!({"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m"}})
    );
    assert_eq!(
        plain_env(&pod["containers"][0])["STOWAGE_TIMEOUT_SECONDS"],
        "540"
    );

    // Without overrides, the defaults apply (the runner ServiceAccount only to plugins that
    // call the Kubernetes API, which http does not).
    let job =
        serde_json::to_value(build_job(&http("site"), &nightly(), &defaults).unwrap()).unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"].get("serviceAccountName"),
        None
    );
    assert!(
        job["spec"]["template"]["spec"]
            .get("nodeSelector")
            .is_none()
    );
}

/// The env of a built Job is exactly what `stowage run` understands: every plain variable
/// maps to a runner flag, and the runner turns them into the intended run.
#[test]
fn the_runner_accepts_the_env_of_a_built_job() {
    let request = RunRequest::scheduled(
        "nightly",
        tick(),
        Some(RetentionPolicy {
            keep_last: 3,
            keep_daily: 7,
            ..Default::default()
        }),
        Some("Europe/Paris".into()),
    );
    let t = http("site");
    let job = build(&t, &request);
    let env = plain_env(&job["spec"]["template"]["spec"]["containers"][0]);
    let command = RunArgs::augment_args(clap::Command::new("run"));
    let mut argv = vec!["run".to_owned()];
    for (name, value) in &env {
        if name == "HOME" {
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .unwrap_or_else(|| panic!("the runner reads no {name}"));
        argv.push(format!("--{}={value}", arg.get_long().unwrap()));
    }
    let matches = command.try_get_matches_from(argv).unwrap();
    let args = RunArgs::from_arg_matches(&matches).unwrap();
    let (spec, config) = args.spec().unwrap();
    assert_eq!(args.plugin, "http");
    assert_eq!(spec.namespace, "shop");
    assert_eq!(spec.target, "site");
    assert_eq!(spec.schedule.as_deref(), Some("nightly"));
    assert_eq!(spec.scheduled_time, Some(tick()));
    assert_eq!(spec.run_id, run_id(&t, &request));
    assert_eq!(spec.compression, crate::api::Compression::Gzip);
    assert_eq!(spec.root, std::path::PathBuf::from("/backups"));
    assert_eq!(
        spec.retention.as_ref().map(|r| (r.keep_last, r.keep_daily)),
        Some((3, 7))
    );
    assert_eq!(spec.time_zone.iana_name(), Some("Europe/Paris"));
    assert_eq!(spec.timeout, Some(std::time::Duration::from_secs(3540)));
    assert_eq!(config, t.spec.plugin.config_json().unwrap());
    assert_eq!(
        args.termination_message_path,
        std::path::PathBuf::from("/dev/termination-log")
    );
}

#[test]
fn inconsistent_requests_and_unsaved_targets_are_refused() {
    let t = postgres("app-db");
    let bad = RunRequest {
        kind: RunKind::Probe,
        trigger: nightly().trigger,
    };
    let err = build_job(&t, &bad, &JobDefaults::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a probe run cannot be triggered by a schedule tick: use RunRequest::scheduled"
    );
    let mut unsaved = postgres("app-db");
    unsaved.metadata.uid = None;
    let err = build_job(&unsaved, &nightly(), &JobDefaults::default()).unwrap_err();
    assert!(err.to_string().contains("metadata.uid"), "{err}");
    let _: Job = build_job(&t, &nightly(), &JobDefaults::default()).unwrap();
}

#[test]
fn plugins_that_do_not_use_the_api_keep_the_default_service_account() {
    let defaults = JobDefaults {
        service_account_name: Some("stowage-runner".into()),
        ..JobDefaults::default()
    };
    for t in [http("site"), postgres("db")] {
        let job = serde_json::to_value(build_job(&t, &nightly(), &defaults).unwrap()).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(
            pod.get("serviceAccountName"),
            None,
            "{}",
            t.spec.plugin.key()
        );
        assert_eq!(pod["automountServiceAccountToken"], json!(false));
    }
}

/// A sqlite target: a plugin that works on an application's claim.
fn sqlite(run_as: Option<Value>) -> BackupTarget {
    let mut spec = json!({
        "sqlite": {"claimName": "vaultwarden-data", "path": "db.sqlite3"},
        "storage": {"claimName": "backups"},
    });
    if let Some(run_as) = run_as {
        spec["job"] = json!({"runAs": run_as});
    }
    target("vaultwarden", spec)
}

fn restore_request() -> RunRequest {
    RunRequest::restore(RestoreRun {
        name: "undo".into(),
        uid: "0b7f2b3c-1111-4d55-9a43-0c1f6f3b1e2a".into(),
        owner: OwnerReference {
            api_version: "stowage.dev/v1alpha1".into(),
            kind: "BackupRestore".into(),
            name: "undo".into(),
            uid: "0b7f2b3c-1111-4d55-9a43-0c1f6f3b1e2a".into(),
            controller: Some(true),
            ..OwnerReference::default()
        },
        claim: "backups".into(),
        source_target: Some("vaultwarden".into()),
        path: None,
        as_of: None,
        previous: None,
        schedule: None,
        into: Some("db-restored.sqlite3".into()),
        replace: false,
        dry_run: false,
        deadline_seconds: None,
    })
}

#[test]
fn an_application_claim_is_mounted_read_only_except_by_restores_which_change_no_ownership() {
    // (request, app claim read-only, fsGroup, supplemental groups)
    let cases = [
        ("backup", nightly(), true, json!(65532), Value::Null),
        (
            "probe",
            RunRequest::probe("gen-1"),
            true,
            json!(65532),
            Value::Null,
        ),
        (
            "restore",
            restore_request(),
            false,
            Value::Null,
            json!([65532]),
        ),
    ];
    for (name, request, read_only, fs_group, supplemental) in cases {
        let job = build(&sqlite(None), &request);
        let pod = &job["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == APP_VOLUME)
            .unwrap_or_else(|| panic!("{name}: no {APP_VOLUME} volume: {pod}"));
        assert_eq!(
            volume["persistentVolumeClaim"]["claimName"], "vaultwarden-data",
            "{name}"
        );
        // Read-only at the volume: the kubelet then applies no fsGroup to the app's files.
        assert_eq!(
            volume["persistentVolumeClaim"]["readOnly"],
            json!(read_only),
            "{name}"
        );
        let container = &pod["containers"][0];
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == APP_VOLUME)
            .unwrap();
        assert_eq!(
            mount["mountPath"],
            stowage_plugin_sdk::APP_CLAIM_ROOT,
            "{name}"
        );
        assert_eq!(
            mount["readOnly"].as_bool().unwrap_or(false),
            read_only,
            "{name}"
        );
        assert_eq!(plain_env(container)[env::CLAIM_ROOT], "/data", "{name}");
        let security = &pod["securityContext"];
        assert_eq!(security["fsGroup"], fs_group, "{name}: {security}");
        assert_eq!(
            security["supplementalGroups"], supplemental,
            "{name}: {security}"
        );
        assert_eq!(security["runAsNonRoot"], true, "{name}");
        if fs_group.is_null() {
            assert!(
                security["fsGroupChangePolicy"].is_null(),
                "{name}: {security}"
            );
        }
    }
    // Other plugins mount no application claim and keep no CLAIM_ROOT.
    let job = build(&postgres("db"), &nightly());
    let pod = &job["spec"]["template"]["spec"];
    assert!(!pod.to_string().contains(APP_VOLUME), "{pod}");
    assert!(!plain_env(&pod["containers"][0]).contains_key(env::CLAIM_ROOT));
}

#[test]
fn run_as_sets_the_user_and_groups_of_every_pod() {
    let run_as = json!({"user": 1000, "group": 1001, "supplementalGroups": [44, 1000]});
    for request in [nightly(), RunRequest::probe("gen-1"), restore_request()] {
        let job = build(&sqlite(Some(run_as.clone())), &request);
        let security = &job["spec"]["template"]["spec"]["securityContext"];
        assert_eq!(security["runAsUser"], 1000, "{security}");
        assert_eq!(security["runAsGroup"], 1001, "{security}");
        let groups = security["supplementalGroups"].as_array().unwrap();
        assert!(
            groups.contains(&json!(44)) && groups.contains(&json!(1000)),
            "{security}"
        );
        assert_eq!(security["runAsNonRoot"], true);
    }
}

// ---- external plugins ------------------------------------------------------------------

/// Defaults whose registry holds BackupPlugin `ldap.example.com`, needing the API or not.
fn with_ldap_plugin(kubernetes_api: bool) -> JobDefaults {
    let defaults = JobDefaults::default();
    let plugin: crate::api::BackupPlugin = serde_json::from_value(json!({
        "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupPlugin",
        "metadata": {"name": "ldap.example.com", "generation": 1},
        "spec": {
            "image": "registry.example/ldap@sha256:00", "command": ["/plugin/ldap.sh", "-v"],
            "version": "2.0.0", "capabilities": {"backup": true, "probe": true},
            "artifact": {"extension": "ldif"},
            "configSchema": {"type": "object", "properties": {
                "url": {"type": "string"},
                "bindPasswordSecretRef": {"type": "object", "required": ["name", "key"],
                    "properties": {"name": {"type": "string"}, "key": {"type": "string"}}}
            }},
            "needs": {"kubernetesApi": kubernetes_api, "env": [{"name": "LDAPTLS_REQCERT", "value": "demand"}]}
        }
    }))
    .unwrap();
    let (verdict, _) = defaults.installed_plugins.set(&plugin);
    assert!(verdict.accepted(), "{verdict:?}");
    defaults
}

fn ldap(job: Option<Value>) -> BackupTarget {
    let mut spec = json!({
        "external": {"plugin": "ldap.example.com", "config": {
            "url": "ldap://ldap.shop.svc",
            "bindPasswordSecretRef": {"name": "ldap", "key": "password"}
        }},
        "storage": {"claimName": "backups"},
    });
    if let Some(job) = job {
        spec["job"] = job;
    }
    target("directory", spec)
}

#[test]
fn external_plugins_run_their_image_with_the_resolved_definition_and_no_token() {
    let defaults = with_ldap_plugin(false);
    // spec.job.image cannot replace the image an administrator installed.
    let target = ldap(Some(json!({"image": "evil.example/any:1"})));
    let job = serde_json::to_value(build_job(&target, &nightly(), &defaults).unwrap()).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], json!(false));
    assert!(pod["serviceAccountName"].is_null(), "{pod}");
    assert_eq!(pod["initContainers"][0]["name"], json!("install-runner"));
    let run = &pod["containers"][0];
    assert_eq!(run["image"], json!("registry.example/ldap@sha256:00"));
    assert_eq!(run["command"], json!(["/stowage/stowage", "run", "backup"]));
    let env = plain_env(run);
    assert_eq!(env["STOWAGE_PLUGIN"], "external");
    let config: Value = serde_json::from_str(&env["STOWAGE_PLUGIN_CONFIG"]).unwrap();
    assert_eq!(
        config["resolved"]["command"],
        json!(["/plugin/ldap.sh", "-v"])
    );
    assert_eq!(config["resolved"]["version"], json!("2.0.0"));
    assert_eq!(
        config["resolved"]["env"],
        json!({"LDAPTLS_REQCERT": "demand"})
    );
    // The secret travels as a secretKeyRef, under the name the runner derives.
    let secret = &env_of(run)["STOWAGE_SECRET_CONFIG_BINDPASSWORDSECRETREF"];
    assert_eq!(
        secret["valueFrom"]["secretKeyRef"],
        json!({"name": "ldap", "key": "password", "optional": false})
    );
    assert_eq!(
        run["securityContext"]["readOnlyRootFilesystem"],
        json!(true)
    );

    // A plugin that declares it needs the API gets a token (of the runner account).
    let defaults = JobDefaults {
        service_account_name: Some("stowage-runner".into()),
        ..with_ldap_plugin(true)
    };
    let job = serde_json::to_value(build_job(&ldap(None), &nightly(), &defaults).unwrap()).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], json!(true));
    assert_eq!(pod["serviceAccountName"], json!("stowage-runner"));

    // A config that breaks the schema: no Job, the field named.
    let mut bad = ldap(None);
    let mut spec = serde_json::to_value(&bad.spec).unwrap();
    spec["external"]["config"]["url"] = json!(5);
    bad.spec = serde_json::from_value(spec).unwrap();
    let error = build_job(&bad, &nightly(), &with_ldap_plugin(false)).unwrap_err();
    assert!(
        error.to_string().contains("spec.external.config.url"),
        "{error}"
    );

    // Not installed: no Job, an error naming the plugin.
    let error = build_job(&ldap(None), &nightly(), &JobDefaults::default()).unwrap_err();
    assert!(
        error.to_string().contains("\"ldap.example.com\""),
        "{error}"
    );
}
