//! The benchmarks' control plane on real processes: started without
//! kube-controller-manager, a Job is finished by the simulated node and the API server
//! accepts its status; the client-side request counts agree with the API server's own
//! `apiserver_request_total`; a ServiceAccount kubeconfig carries that account's RBAC;
//! stopping removes everything.
//!
//! Timeouts below are guards against hangs, never assertions on speed.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;
use stowage_testenv::bench::api_metrics::{self, RequestKind};
use stowage_testenv::bench::client_counts::{RequestCounter, counts_since};
use stowage_testenv::bench::node::{SimulatedNode, job_finished};
use stowage_testenv::{BarePlane, PlaneOptions, config_from, eventually, repo_root};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test]
async fn a_bare_plane_serves_jobs_that_the_simulated_node_finishes_and_counts_agree() -> TestResult
{
    let plane = tokio::task::spawn_blocking(|| {
        BarePlane::start(PlaneOptions {
            controller_manager: false,
            real_node: false,
            audit_job_creates: false,
        })
    })
    .await??;
    let state_dir = plane.state_dir().to_path_buf();
    assert!(plane.pid("etcd").is_ok() && plane.pid("kube-apiserver").is_ok());
    assert!(
        plane.pid("kube-controller-manager").is_err(),
        "no controller manager was asked for"
    );

    let counter = RequestCounter::default();
    let client = counter.client(plane.admin_config().await?)?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bench"}}))?,
        )
        .await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "bench");
    let before_server = api_metrics::scrape(&client).await?;
    let before_client = counter.snapshot();

    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "one"},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]
        }}}
    }))?;
    jobs.create(&PostParams::default(), &job).await?;
    let created = jobs.get("one").await?;
    assert!(!job_finished(&created));

    // The API server accepts the simulated node's status: the Job reads as finished.
    let node = SimulatedNode::new(client.clone(), |_| Duration::from_millis(200), 4);
    node.observe(&created);
    node.observe(&created);
    let finished = eventually("the Job is finished", Duration::from_secs(60), || {
        let jobs = jobs.clone();
        let node = node.clone();
        async move {
            let job = jobs.get("one").await.map_err(|e| e.to_string())?;
            if job_finished(&job) {
                Ok(job)
            } else {
                Err(format!(
                    "status {:?}, node failures {:?}",
                    job.status,
                    node.failures()
                ))
            }
        }
    })
    .await?;
    assert_eq!(node.finished(), 1, "one status write for two sightings");
    eventually(
        "the node has nothing left to run",
        Duration::from_secs(10),
        || {
            let running = node.running();
            async move {
                if running == 0 {
                    Ok(())
                } else {
                    Err(format!("{running} running"))
                }
            }
        },
    )
    .await?;
    let status = finished.status.unwrap_or_default();
    assert_eq!(status.succeeded, Some(1));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    let types: Vec<String> = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.status == "True")
        .map(|c| c.type_)
        .collect();
    assert_eq!(types, ["SuccessCriteriaMet", "Complete"]);

    jobs.list(&ListParams::default()).await?;
    jobs.delete("one", &DeleteParams::background()).await?;

    // Nothing else touches Jobs on this plane: both sides count the same requests.
    let server = api_metrics::scrape(&client).await?.since(&before_server);
    let client_side = counts_since(&counter.snapshot(), &before_client);
    let batch = |counts: Vec<(RequestKind, u64)>| -> Vec<(String, u64)> {
        counts
            .into_iter()
            .filter(|(kind, _)| kind.group == "batch")
            .map(|(kind, n)| (kind.to_string(), n))
            .collect()
    };
    let server_jobs = batch(server.by_kind().into_iter().collect());
    assert_eq!(server_jobs, batch(client_side.into_iter().collect()));
    let count = |kind: &str| {
        server_jobs
            .iter()
            .find(|(k, _)| k == kind)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(server_jobs.len(), 5, "{server_jobs:?}");
    assert_eq!(count("POST jobs.batch"), 1);
    assert_eq!(count("PATCH jobs.batch/status"), 1);
    assert_eq!(count("LIST jobs.batch"), 1);
    assert_eq!(count("DELETE jobs.batch"), 1);
    // One by the test, one or more by the guard loop.
    assert!(count("GET jobs.batch") >= 2, "{server_jobs:?}");
    assert!(
        server.server_errors().is_empty(),
        "{:?}",
        server.server_errors()
    );

    // A ServiceAccount kubeconfig authenticates as that account, with its RBAC.
    let kubeconfig = plane.service_account_kubeconfig(
        &repo_root().join("deploy/rbac/operator.yaml"),
        "stowage-system",
        "stowage",
        1,
    )?;
    let operator = kube::Client::try_from(config_from(&kubeconfig).await?)?;
    Api::<Job>::all(operator.clone())
        .list(&ListParams::default().limit(1))
        .await?;
    match Api::<Secret>::namespaced(operator, "bench")
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("the operator's account must not list Secrets: {other:?}"),
    }

    tokio::task::spawn_blocking(move || plane.stop()).await??;
    assert!(!state_dir.exists(), "{} is removed", state_dir.display());
    Ok(())
}
