//! Test helpers: a mock API server (tower-test) that asserts each expected request in
//! order and answers with canned objects, and builders of test objects.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

use super::{Context, Metrics, Settings, TestClock};
use crate::api::BackupTarget;
use crate::jobs::JobDefaults;

/// The mock API server's side of the client.
pub struct ApiServer(pub Handle<Request<Body>, Response<Body>>);

/// One request the mock server received.
pub struct Received {
    /// Path and query.
    pub uri: String,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
    send: SendResponse<Response<Body>>,
}

impl Received {
    /// Answer with `status` and `body`.
    pub fn respond(self, status: u16, body: Value) {
        let bytes = serde_json::to_vec(&body).unwrap();
        self.send.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(bytes))
                .unwrap(),
        );
    }

    /// Answer 200 with the request's own body (what the API server does for a create).
    pub fn echo(self) {
        let body = self.body.clone();
        self.respond(200, body);
    }

    /// The query parameter `name`, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.uri.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ApiServer {
    /// The next request; asserts its method and path (without the query).
    pub async fn expect(&mut self, method: Method, path: &str) -> Received {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
            .unwrap_or_else(|| panic!("the client went away before {method} {path}"));
        let (parts, body) = request.into_parts();
        let uri = parts.uri.to_string();
        assert_eq!(
            (parts.method.as_str(), parts.uri.path()),
            (method.as_str(), path),
            "unexpected request {} {uri}",
            parts.method
        );
        let bytes = body.collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Received { uri, body, send }
    }

    /// Asserts the client makes no further request (call after dropping the context).
    pub async fn expect_no_more(mut self) {
        let next = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .expect("the client is still alive: drop the context first");
        if let Some((request, _)) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

/// An active probe Job of target `t1`, generation 1, started (and created) at `started`.
pub fn active_probe(name: &str, started: Timestamp) -> super::cache::RunJob {
    super::cache::RunJob {
        name: name.into(),
        uid: None,
        kind: Some(crate::jobs::RunKind::Probe),
        target: "t1".into(),
        schedule: None,
        claim: None,
        state: super::status::JobState::Active,
        created: Some(started),
        start_time: Some(started),
        finish_time: None,
        failed_reason: None,
        failed_message: None,
        deleting: false,
        restore: None,
        generation: Some(1),
    }
}

/// The test "now".
pub fn now() -> Timestamp {
    "2030-03-01T02:30:10Z".parse().unwrap()
}

/// A context on a mock API server, with a test clock at [`now`].
pub fn context() -> (
    Arc<Context>,
    ApiServer,
    Arc<TestClock>,
    prometheus_client::registry::Registry,
) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let clock = Arc::new(TestClock::new(now()));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::default().register(&mut registry);
    let settings = Settings {
        allowed_plugins: None,
        job_defaults: JobDefaults {
            runner_image: "stowage:test".into(),
            service_account_name: Some("stowage-runner".into()),
            ..JobDefaults::default()
        },
        max_concurrent_probes: 10,
    };
    let mut ctx = Context::new(
        client,
        settings,
        clock.clone(),
        metrics,
        Reporter {
            controller: "stowage-controller".into(),
            instance: Some("test".into()),
        },
    );
    ctx.events_inline = true;
    (Arc::new(ctx), ApiServer(handle), clock, registry)
}

/// A valid postgres target `shop/app-db` (label `tier: db`) at generation 1, without status.
pub fn target() -> BackupTarget {
    serde_json::from_value(json!({
        "apiVersion": "stowage.dev/v1alpha1",
        "kind": "BackupTarget",
        "metadata": {"name": "app-db", "namespace": "shop", "uid": "uid-app-db", "generation": 1,
                     "labels": {"tier": "db"},
                     "creationTimestamp": "2030-03-01T00:00:00Z"},
        "spec": {
            "postgres": {"host": "db.shop.svc", "database": "shop", "username": "backup",
                         "passwordSecretRef": {"name": "db", "key": "password"}},
            "storage": {"claimName": "backups"}
        }
    }))
    .unwrap()
}

/// A ReadWriteOnce claim named `backups`.
pub fn rwo_claim() -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": "backups", "namespace": "shop"},
           "spec": {"accessModes": ["ReadWriteOnce"]}})
}

/// Mark a Job (as JSON) finished.
pub fn finish_job(mut job: Value, succeeded: bool, at: &str) -> Value {
    let type_ = if succeeded { "Complete" } else { "Failed" };
    job["status"] = json!({
        "startTime": "2030-03-01T02:30:00Z",
        "conditions": [{"type": type_, "status": "True", "lastTransitionTime": at,
                        "reason": if succeeded { "Completed" } else { "BackoffLimitExceeded" },
                        "message": if succeeded { "" } else { "Job has reached the specified backoff limit" }}]
    });
    if succeeded {
        job["status"]["completionTime"] = json!(at);
        job["status"]["succeeded"] = json!(1);
    }
    job
}

/// A pod of `job` whose container terminated with `message`.
pub fn pod_with_message(job: &str, message: &str, exit_code: i32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{job}-x1"), "namespace": "shop",
                     "creationTimestamp": "2030-03-01T02:30:01Z",
                     "labels": {"batch.kubernetes.io/job-name": job}},
        "status": {"containerStatuses": [{
            "name": "runner", "image": "stowage:test", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "message": message,
                                     "reason": if exit_code == 0 { "Completed" } else { "Error" }}}
        }]}
    })
}
