//! The node agent on a real control plane: Jobs run by the real Job controller complete
//! or fail from what the agent reports, volumes and env arrive as the kubelet would make
//! them, garbage collection stops processes, and projected service-account tokens work.
//!
//! Timeouts below are guards against hangs, never assertions on speed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::{Api, Client};
use serde_json::{Value, json};
use stowage_testenv::{TestCluster, TestEnvError, eventually};

const GUARD: Duration = Duration::from_secs(180);

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn setup(prefix: &str) -> Result<(&'static TestCluster, Client, String), TestEnvError> {
    let cluster = TestCluster::shared_with_agent()?;
    let ns = cluster.ns(prefix).await?;
    let client = cluster.client().await?;
    Ok((cluster, client, ns.name().to_string()))
}

async fn create_claim(client: &Client, ns: &str, name: &str) -> Result<(), kube::Error> {
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } }
    }))
    .map_err(kube::Error::SerdeError)?;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &claim)
        .await?;
    Ok(())
}

/// A Job with one `sh -c script` container and the claim `data` at `/data`.
fn job(
    name: &str,
    backoff_limit: i32,
    script: &str,
    extra_container: Value,
) -> Result<Job, serde_json::Error> {
    let mut container = json!({
        "name": "main",
        "image": "busybox",
        "command": ["sh", "-c", script],
        "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
    });
    if let (Some(c), Some(extra)) = (container.as_object_mut(), extra_container.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": backoff_limit,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [container],
                "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data" } }],
            }},
        },
    }))
}

async fn wait_job_condition(jobs: &Api<Job>, name: &str, kind: &str) -> Result<Job, TestEnvError> {
    eventually(
        &format!("Job {name} condition {kind}=True"),
        GUARD,
        || async {
            let job = jobs.get(name).await.map_err(|e| e.to_string())?;
            let conditions = job
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            if conditions
                .iter()
                .any(|c| c.type_ == kind && c.status == "True")
            {
                Ok(job)
            } else {
                Err(format!("conditions: {conditions:?}"))
            }
        },
    )
    .await
}

async fn job_pods(pods: &Api<Pod>, job: &str) -> Result<Vec<Pod>, kube::Error> {
    Ok(pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await?
        .items)
}

fn terminated(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .clone()
}

#[tokio::test]
async fn job_writes_into_its_claim_and_reports_a_termination_message() -> TestResult {
    let (cluster, client, ns) = setup("job-ok").await?;
    create_claim(&client, &ns, "data").await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let script = r#"mkdir -p /data/out && echo "artifact body" > /data/out/artifact.txt && printf '{"ok":true,"bytes":14}' > /dev/termination-log"#;
    jobs.create(
        &PostParams::default(),
        &job("backup", 0, script, json!({}))?,
    )
    .await?;

    wait_job_condition(&jobs, "backup", "Complete").await?;

    let written = std::fs::read_to_string(cluster.claim_dir(&ns, "data").join("out/artifact.txt"))?;
    assert_eq!(written, "artifact body\n");
    let pods = job_pods(&Api::namespaced(client.clone(), &ns), "backup").await?;
    assert_eq!(pods.len(), 1, "one pod for a Job that succeeded first time");
    let pod = &pods[0];
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded")
    );
    let state = terminated(pod).ok_or("container is not terminated")?;
    assert_eq!(state.exit_code, 0);
    assert_eq!(state.reason.as_deref(), Some("Completed"));
    let message: Value =
        serde_json::from_str(state.message.as_deref().ok_or("no termination message")?)?;
    assert_eq!(message, json!({ "ok": true, "bytes": 14 }));
    Ok(())
}

#[tokio::test]
async fn failing_container_fails_the_job_after_its_backoff_limit() -> TestResult {
    let (_cluster, client, ns) = setup("job-fail").await?;
    create_claim(&client, &ns, "data").await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let script = "echo 'connection refused by db' >&2; exit 3";
    let spec = job(
        "broken",
        1,
        script,
        json!({ "terminationMessagePolicy": "FallbackToLogsOnError" }),
    )?;
    jobs.create(&PostParams::default(), &spec).await?;

    let job = wait_job_condition(&jobs, "broken", "Failed").await?;

    let failed_condition = job
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .ok_or("no Failed condition")?;
    assert_eq!(
        failed_condition.reason.as_deref(),
        Some("BackoffLimitExceeded")
    );
    let pods = job_pods(&Api::namespaced(client.clone(), &ns), "broken").await?;
    let failed: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
        .collect();
    assert_eq!(failed.len(), 2, "backoffLimit 1 means two failed pods");
    for pod in failed {
        let state = terminated(pod).ok_or("container is not terminated")?;
        assert_eq!(state.exit_code, 3);
        assert_eq!(state.reason.as_deref(), Some("Error"));
        let message = state.message.unwrap_or_default();
        assert!(
            message.contains("connection refused by db"),
            "log fallback message: {message:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn secret_and_config_map_references_reach_the_environment() -> TestResult {
    let (cluster, client, ns) = setup("job-env").await?;
    create_claim(&client, &ns, "data").await?;
    let password = format!("pw-{}-{}", std::process::id(), ns.len());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "db" },
        "stringData": { "password": password },
    }))?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let config: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "settings" },
        "data": { "host": "db.internal" },
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &config)
        .await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let env = json!({
        "env": [
            { "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": "db", "key": "password" } } },
            { "name": "ABSENT", "valueFrom": { "secretKeyRef": { "name": "db", "key": "nope", "optional": true } } },
            { "name": "DSN", "value": "postgres://backup:$(PASSWORD)@$(CFG_host)/shop" },
            { "name": "POD", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
        ],
        "envFrom": [{ "prefix": "CFG_", "configMapRef": { "name": "settings" } }],
    });
    let script =
        r#"printf '%s\n%s\n%s\n%s\n' "$PASSWORD" "$DSN" "${ABSENT-unset}" "$POD" > /data/env.txt"#;
    jobs.create(&PostParams::default(), &job("env", 0, script, env)?)
        .await?;

    wait_job_condition(&jobs, "env", "Complete").await?;

    let pods = job_pods(&Api::namespaced(client.clone(), &ns), "env").await?;
    let pod_name = pods
        .first()
        .and_then(|p| p.metadata.name.clone())
        .ok_or("no pod")?;
    let written = std::fs::read_to_string(cluster.claim_dir(&ns, "data").join("env.txt"))?;
    assert_eq!(
        written,
        format!("{password}\npostgres://backup:{password}@db.internal/shop\nunset\n{pod_name}\n")
    );
    Ok(())
}

#[tokio::test]
async fn deleting_a_job_garbage_collects_its_pods_and_stops_their_processes() -> TestResult {
    let (cluster, client, ns) = setup("job-gc").await?;
    create_claim(&client, &ns, "data").await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // `$$$$`: the kubelet's expansion turns `$$` into `$`, so the shell sees `$$`.
    let script = "echo $$$$ > /data/pid; exec sleep 3600";
    jobs.create(&PostParams::default(), &job("long", 0, script, json!({}))?)
        .await?;
    let pid_file = cluster.claim_dir(&ns, "data").join("pid");
    eventually("the Job's pod to run and record its pid", GUARD, || async {
        let running = job_pods(&pods, "long")
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        match (running, std::fs::read_to_string(&pid_file)) {
            (true, Ok(pid)) if !pid.trim().is_empty() => Ok(()),
            (running, pid) => Err(format!("running: {running}, pid file: {pid:?}")),
        }
    })
    .await?;
    let pid: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container process runs"
    );

    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    jobs.delete("long", &background).await?;

    eventually("the Job's pods to be garbage-collected", GUARD, || async {
        let left = job_pods(&pods, "long").await.map_err(|e| e.to_string())?;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{} pod(s) left", left.len()))
        }
    })
    .await?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("sleep"),
        "the container process {pid} was stopped"
    );
    Ok(())
}

#[tokio::test]
async fn projected_service_account_token_reaches_the_api_server() -> TestResult {
    let (cluster, client, ns) = setup("sa-token").await?;
    create_claim(&client, &ns, "out").await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "in-cluster" },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": "curlimages/curl",
                "command": ["sh", "-c", r#"
                    D=/var/run/secrets/kubernetes.io/serviceaccount
                    cp "$D/token" "$D/ca.crt" "$D/namespace" /out/
                    echo "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT" > /out/api
                    curl -sS -o /dev/null -w '%{http_code}' --cacert "$D/ca.crt" \
                      -H "Authorization: Bearer $(cat "$D/token")" \
                      "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api" > /out/http_code
                "#],
                "volumeMounts": [{ "name": "out", "mountPath": "/out" }],
            }],
            "volumes": [{ "name": "out", "persistentVolumeClaim": { "claimName": "out" } }],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod).await?;
    wait_pod_phase(&pods, "in-cluster", "Succeeded").await?;

    let out = cluster.claim_dir(&ns, "out");
    assert_eq!(std::fs::read_to_string(out.join("namespace"))?, ns);
    assert_eq!(
        std::fs::read_to_string(out.join("api"))?.trim(),
        format!("127.0.0.1:{}", cluster.api_port())
    );
    assert_eq!(
        std::fs::read_to_string(out.join("http_code"))?,
        "200",
        "the API server accepted the token"
    );
    let root_ca = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("kube-root-ca.crt")
        .await?;
    let expected_ca = root_ca
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .ok_or("no ca.crt")?;
    assert_eq!(std::fs::read_to_string(out.join("ca.crt"))?, expected_ca);

    let token = std::fs::read_to_string(out.join("token"))?;
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    let status = reviewed.status.ok_or("TokenReview has no status")?;
    assert_eq!(
        status.authenticated,
        Some(true),
        "token rejected: {:?}",
        status.error
    );
    let user = status.user.ok_or("no user")?;
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{ns}:default").as_str())
    );
    let bound_pod = user
        .extra
        .unwrap_or_default()
        .get("authentication.kubernetes.io/pod-name")
        .cloned();
    assert_eq!(
        bound_pod,
        Some(vec!["in-cluster".to_string()]),
        "the token is bound to the pod"
    );
    Ok(())
}

#[tokio::test]
async fn mounts_honour_sub_path_items_read_only_and_the_pod_user() -> TestResult {
    let (cluster, client, ns) = setup("mounts").await?;
    create_claim(&client, &ns, "data").await?;
    let config: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "cfg" },
        "data": { "a": "alpha", "b": "beta" },
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &config)
        .await?;
    let script = r#"
        id -u > /data/uid
        id -G > /data/groups
        cat /etc/stowage-test/dir/a.txt > /data/cfg
        ls /etc/stowage-test > /data/cfg_ls
        if touch /scratch/x 2>/dev/null; then echo writable; else echo read-only; fi > /data/scratch
        echo in-sub-path > /sub/file
    "#;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "mounts" },
        "spec": {
            "restartPolicy": "Never",
            "securityContext": { "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000 },
            "containers": [{
                "name": "main",
                "image": "busybox",
                "command": ["sh", "-c", script],
                "volumeMounts": [
                    { "name": "data", "mountPath": "/data" },
                    { "name": "data", "mountPath": "/sub", "subPath": "nested/dir" },
                    { "name": "cfg", "mountPath": "/etc/stowage-test" },
                    { "name": "scratch", "mountPath": "/scratch", "readOnly": true },
                ],
            }],
            "volumes": [
                { "name": "data", "persistentVolumeClaim": { "claimName": "data" } },
                { "name": "cfg", "configMap": { "name": "cfg", "items": [{ "key": "a", "path": "dir/a.txt" }] } },
                { "name": "scratch", "emptyDir": {} },
            ],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod).await?;
    wait_pod_phase(&pods, "mounts", "Succeeded").await?;

    let data = cluster.claim_dir(&ns, "data");
    let read = |file: &str| std::fs::read_to_string(data.join(file)).map(|s| s.trim().to_string());
    assert_eq!(read("uid")?, "1000");
    assert!(
        read("groups")?.split_whitespace().any(|g| g == "2000"),
        "fsGroup is a supplementary group"
    );
    assert_eq!(read("cfg")?, "alpha");
    assert_eq!(
        read("cfg_ls")?,
        "dir",
        "only the selected item is projected"
    );
    assert_eq!(read("scratch")?, "read-only");
    assert_eq!(read("nested/dir/file")?, "in-sub-path");
    assert!(
        !std::path::Path::new("/etc/stowage-test").exists(),
        "mount points are created inside the container's namespace only"
    );
    Ok(())
}

#[tokio::test]
async fn mapped_image_binary_is_the_entrypoint_of_a_container_without_command() -> TestResult {
    let (cluster, client, ns) = setup("image-map").await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "mapped" },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": "registry.example/tools/stowage-node-agent:dev",
                "args": ["--version"],
            }],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod).await?;
    wait_pod_phase(&pods, "mapped", "Succeeded").await?;
    let log = std::fs::read_to_string(cluster.container_log(&ns, "mapped", "main"))?;
    assert!(log.starts_with("stowage-node-agent "), "log: {log:?}");
    Ok(())
}

async fn wait_pod_phase(pods: &Api<Pod>, name: &str, want: &str) -> Result<(), TestEnvError> {
    eventually(&format!("pod {name} phase {want}"), GUARD, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some(phase) if phase == want => Ok(()),
            phase => Err(format!("phase {phase:?}, status {:?}", pod.status)),
        }
    })
    .await
}

#[tokio::test]
async fn active_deadline_stops_the_pod_and_fails_it() -> TestResult {
    let (_cluster, client, ns) = setup("deadline").await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "slow" },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": 2,
            "terminationGracePeriodSeconds": 5,
            "containers": [{ "name": "main", "image": "busybox", "command": ["sleep", "3600"] }],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod).await?;
    // Like the kubelet, the agent reports the pod Failed as soon as the deadline passes and
    // the container terminated once its process is gone: two status updates, waited for
    // together.
    let pod = eventually(
        "pod slow Failed with its container terminated",
        GUARD,
        || async {
            let pod = pods.get("slow").await.map_err(|e| e.to_string())?;
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            match (phase, terminated(&pod)) {
                (Some("Failed"), Some(_)) => Ok(pod),
                _ => Err(format!("phase {phase:?}, status {:?}", pod.status)),
            }
        },
    )
    .await?;
    let status = pod.status.as_ref().ok_or("no status")?;
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    let state = terminated(&pod).ok_or("container is not terminated")?;
    assert_eq!(state.signal, Some(15), "stopped with SIGTERM first");
    assert_eq!(state.exit_code, 143);
    Ok(())
}

/// The container status of `pod`'s first container.
fn first_container_state(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerState> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .clone()
}

fn condition(pod: &Pod, kind: &str) -> Option<k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .cloned()
}

#[tokio::test]
async fn read_only_root_filesystem_leaves_only_volumes_writable() -> TestResult {
    let (cluster, client, ns) = setup("rofs").await?;
    create_claim(&client, &ns, "data").await?;
    // Under /tmp of the host: the one place a failing run may write to (removed below).
    let host_probe = std::path::PathBuf::from(format!("/tmp/stowage-rofs-probe-{ns}"));
    let script = format!(
        r#"
        probe() {{
            if err=$(touch "$1" 2>&1); then echo "$1 writable"
            else case "$err" in
                *"Read-only file system"*) echo "$1 read-only" ;;
                *) echo "$1 error: $err" ;;
            esac; fi
        }}
        {{
            probe /probe
            probe {host_probe}
            probe /etc/probe
            probe /data/probe
            probe /scratch/probe
            probe /etc/stowage-rofs/probe
            probe /ro/probe
        }} > /data/result
        echo done > /dev/termination-log
    "#,
        host_probe = host_probe.display()
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "rofs" },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": "busybox",
                "command": ["sh", "-c", script],
                "securityContext": { "readOnlyRootFilesystem": true },
                "volumeMounts": [
                    { "name": "data", "mountPath": "/data" },
                    { "name": "scratch", "mountPath": "/scratch" },
                    // A mount point under a host directory: /etc is mimicked by a tmpfs,
                    // which must be read-only too.
                    { "name": "etc", "mountPath": "/etc/stowage-rofs" },
                    { "name": "scratch", "mountPath": "/ro", "readOnly": true },
                ],
            }],
            "volumes": [
                { "name": "data", "persistentVolumeClaim": { "claimName": "data" } },
                { "name": "scratch", "emptyDir": {} },
                { "name": "etc", "emptyDir": {} },
            ],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod).await?;
    let outcome = wait_pod_phase(&pods, "rofs", "Succeeded").await;
    let leaked = host_probe.exists();
    let _ = std::fs::remove_file(&host_probe);
    outcome?;

    let result = std::fs::read_to_string(cluster.claim_dir(&ns, "data").join("result"))?;
    let expected = format!(
        "/probe read-only\n{} read-only\n/etc/probe read-only\n/data/probe writable\n\
         /scratch/probe writable\n/etc/stowage-rofs/probe writable\n/ro/probe read-only\n",
        host_probe.display()
    );
    assert_eq!(result, expected);
    assert!(!leaked, "the container wrote into the host's /tmp");
    let pod = pods.get("rofs").await?;
    let state = terminated(&pod).ok_or("container is not terminated")?;
    assert_eq!(
        state.message.as_deref(),
        Some("done\n"),
        "/dev/termination-log stays writable"
    );
    Ok(())
}

#[tokio::test]
async fn claims_are_writable_through_fs_group_only() -> TestResult {
    let (cluster, client, ns) = setup("fsgroup").await?;
    create_claim(&client, &ns, "plain").await?;
    create_claim(&client, &ns, "shared").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let probe = r#"if err=$(touch /data/probe 2>&1); then echo writable; else echo "denied: $err"; fi > /dev/termination-log"#;
    let pod = |name: &str,
               claim: &str,
               script: &str,
               security: Value|
     -> Result<Pod, serde_json::Error> {
        serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": {
                "restartPolicy": "Never",
                "securityContext": security,
                "containers": [{
                    "name": "main",
                    "image": "busybox",
                    "command": ["sh", "-c", script],
                    "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                }],
                "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": claim } }],
            },
        }))
    };
    let message = |pod: &Pod| terminated(pod).and_then(|t| t.message).unwrap_or_default();

    // Without fsGroup a non-root user cannot write into a fresh claim, as on a real node.
    pods.create(
        &PostParams::default(),
        &pod(
            "no-fs-group",
            "plain",
            probe,
            json!({ "runAsUser": 1000, "runAsGroup": 1000 }),
        )?,
    )
    .await?;
    wait_pod_phase(&pods, "no-fs-group", "Succeeded").await?;
    let seen = message(&pods.get("no-fs-group").await?);
    assert!(
        seen.starts_with("denied: "),
        "non-root write without fsGroup: {seen:?}"
    );
    let plain = std::fs::metadata(cluster.claim_dir(&ns, "plain"))?;
    assert_eq!(plain.mode() & 0o7777, 0o755, "a fresh claim is root's 0755");

    // With fsGroup the claim, including what was in it, becomes the group's.
    let shared = cluster.claim_dir(&ns, "shared");
    std::fs::create_dir_all(shared.join("old"))?;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(shared.join("old"), std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(shared.join("old/seed.txt"), "seed\n")?;
    std::fs::set_permissions(
        shared.join("old/seed.txt"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    let script = r#"
        {
            id -G
            echo appended >> /data/old/seed.txt && echo appended
            mkdir /data/old/sub && touch /data/old/sub/new && echo created
        } > /dev/termination-log 2>&1
    "#;
    let security = json!({ "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 3000 });
    pods.create(
        &PostParams::default(),
        &pod("fs-group", "shared", script, security)?,
    )
    .await?;
    wait_pod_phase(&pods, "fs-group", "Succeeded").await?;
    let seen = message(&pods.get("fs-group").await?);
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.len(), 3, "output: {seen:?}");
    assert!(
        lines[0].split_whitespace().any(|g| g == "3000"),
        "fsGroup is a supplementary group: {seen:?}"
    );
    assert_eq!(&lines[1..], ["appended", "created"], "output: {seen:?}");
    let root = std::fs::metadata(&shared)?;
    assert_eq!((root.gid(), root.mode() & 0o7777), (3000, 0o2775));
    let seed = std::fs::metadata(shared.join("old/seed.txt"))?;
    assert_eq!((seed.gid(), seed.mode() & 0o7777), (3000, 0o664));
    let sub = std::fs::metadata(shared.join("old/sub"))?;
    assert_eq!(sub.gid(), 3000, "new directories inherit the group");
    assert_eq!(sub.mode() & 0o2000, 0o2000, "and the setgid bit");
    assert_eq!(std::fs::metadata(shared.join("old/sub/new"))?.gid(), 3000);

    // OnRootMismatch: the root already matches, so nothing below it is changed.
    // (Created in a setgid directory, it would inherit the group: give it back to root.)
    std::fs::write(shared.join("late.txt"), "late\n")?;
    std::os::unix::fs::chown(shared.join("late.txt"), None, Some(0))?;
    std::fs::set_permissions(
        shared.join("late.txt"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    let security = json!({
        "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 3000,
        "fsGroupChangePolicy": "OnRootMismatch",
    });
    let probe_late = r#"if err=$(sh -c 'echo x >> /data/late.txt' 2>&1); then echo writable; else echo "denied: $err"; fi > /dev/termination-log"#;
    pods.create(
        &PostParams::default(),
        &pod("on-root-mismatch", "shared", probe_late, security)?,
    )
    .await?;
    wait_pod_phase(&pods, "on-root-mismatch", "Succeeded").await?;
    let seen = message(&pods.get("on-root-mismatch").await?);
    assert!(
        seen.starts_with("denied: "),
        "late file was changed: {seen:?}"
    );
    let late = std::fs::metadata(shared.join("late.txt"))?;
    assert_eq!((late.gid(), late.mode() & 0o7777), (0, 0o644));
    Ok(())
}

#[tokio::test]
async fn termination_message_keeps_the_last_4096_bytes() -> TestResult {
    let (_cluster, client, ns) = setup("term-tail").await?;
    let script = r#"{ printf HEAD; head -c 5000 /dev/zero | tr '\0' x; printf TAIL; } > /dev/termination-log"#;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "long-message" },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{ "name": "main", "image": "busybox", "command": ["sh", "-c", script] }],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod).await?;
    wait_pod_phase(&pods, "long-message", "Succeeded").await?;
    let pod = pods.get("long-message").await?;
    let message = terminated(&pod)
        .and_then(|t| t.message)
        .ok_or("no termination message")?;
    assert_eq!(message, format!("{}TAIL", "x".repeat(4092)));
    Ok(())
}

/// The agent's default `--setup-timeout`, which the fixture keeps: after it, volume
/// problems fail a pod, but a container config error must not.
const AGENT_SETUP_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn missing_secret_keeps_the_pod_waiting_until_the_secret_appears() -> TestResult {
    let (_cluster, client, ns) = setup("late-secret").await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "needs-secret" },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": "busybox",
                "command": ["sh", "-c", "printf %s \"$TOKEN\" > /dev/termination-log"],
                "env": [{ "name": "TOKEN", "valueFrom": { "secretKeyRef": { "name": "later", "key": "token" } } }],
            }],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod).await?;

    let waiting_with = |pod: &Pod, message: &str| -> Result<(), String> {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let waiting = first_container_state(pod).and_then(|s| s.waiting);
        let ready = condition(pod, "ContainersReady");
        match (phase, &waiting, &ready) {
            (Some("Pending"), Some(w), Some(r))
                if w.reason.as_deref() == Some("CreateContainerConfigError")
                    && w.message.as_deref() == Some(message)
                    && r.status == "False" =>
            {
                Ok(())
            }
            _ => Err(format!(
                "phase {phase:?}, waiting {waiting:?}, ContainersReady {ready:?}"
            )),
        }
    };
    let missing_secret = r#"secret "later" not found"#;
    eventually(
        "CreateContainerConfigError for the missing Secret",
        GUARD,
        || async {
            let pod = pods.get("needs-secret").await.map_err(|e| e.to_string())?;
            waiting_with(&pod, missing_secret)
        },
    )
    .await?;
    // The kubelet never gives up on a container config error: still waiting well after
    // the agent's setup timeout.
    let until = std::time::Instant::now() + AGENT_SETUP_TIMEOUT + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        let pod = pods.get("needs-secret").await?;
        waiting_with(&pod, missing_secret)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "later" },
        "stringData": { "other": "x" },
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    let missing_key = format!("couldn't find key token in Secret {ns}/later");
    eventually(
        "CreateContainerConfigError for the missing key",
        GUARD,
        || async {
            let pod = pods.get("needs-secret").await.map_err(|e| e.to_string())?;
            waiting_with(&pod, &missing_key)
        },
    )
    .await?;

    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "later" },
        "stringData": { "other": "x", "token": "t0k3n" },
    }))?;
    secrets
        .replace("later", &PostParams::default(), &secret)
        .await?;
    wait_pod_phase(&pods, "needs-secret", "Succeeded").await?;
    let pod = pods.get("needs-secret").await?;
    let state = terminated(&pod).ok_or("container is not terminated")?;
    assert_eq!(state.message.as_deref(), Some("t0k3n"));
    Ok(())
}
