//! What a client sent: a tower layer for `kube::Client` that counts each request,
//! classified the way the API server's `apiserver_request_total` classifies it, so a
//! benchmark can tell its own requests from the ones it measures.
//!
//! The layer sits outside kube's retry layer: a request the client retries by itself
//! (after a 429 or a 503) is counted once here and once per attempt by the server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Method, Request};

use super::api_metrics::RequestKind;

/// Shared request counts of one or more clients.
#[derive(Clone, Debug, Default)]
pub struct RequestCounter {
    counts: Arc<Mutex<BTreeMap<RequestKind, u64>>>,
}

impl RequestCounter {
    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<RequestKind, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn count(&self, kind: RequestKind) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_insert(0) += 1;
    }

    /// A client for `config` whose requests this counter counts.
    pub fn client(&self, config: kube::Config) -> Result<kube::Client, kube::Error> {
        Ok(kube::client::ClientBuilder::try_from(config)?
            .with_layer(&CountingLayer {
                counter: self.clone(),
            })
            .build())
    }
}

/// The differences `later - earlier` of two snapshots, per kind (kinds without requests
/// in between are left out).
pub fn counts_since(
    later: &BTreeMap<RequestKind, u64>,
    earlier: &BTreeMap<RequestKind, u64>,
) -> BTreeMap<RequestKind, u64> {
    later
        .iter()
        .map(|(kind, n)| {
            (
                kind.clone(),
                n.saturating_sub(earlier.get(kind).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The [`tower_layer::Layer`] that wraps a client's service in [`CountingService`].
#[derive(Clone, Debug)]
pub struct CountingLayer {
    counter: RequestCounter,
}

impl<S> tower_layer::Layer<S> for CountingLayer {
    type Service = CountingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountingService {
            inner,
            counter: self.counter.clone(),
        }
    }
}

/// Counts each request, then hands it to the inner service.
#[derive(Clone, Debug)]
pub struct CountingService<S> {
    inner: S,
    counter: RequestCounter,
}

impl<S, B> tower_service::Service<Request<B>> for CountingService<S>
where
    S: tower_service::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if let Some(kind) = classify(request.method(), request.uri(), content_type) {
            self.counter.count(kind);
        }
        self.inner.call(request)
    }
}

/// Subresources of a namespace itself (`/api/v1/namespaces/<ns>/status`), as the API
/// server's request-info parser knows them.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// The kind of a resource request as `apiserver_request_total` labels it; `None` for
/// non-resource URLs (`/metrics`, `/version`).
pub fn classify(
    method: &Method,
    uri: &http::Uri,
    content_type: Option<&str>,
) -> Option<RequestKind> {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let mut parts = rest;
    if parts.first() == Some(&"namespaces")
        && parts.len() > 2
        && !NAMESPACE_SUBRESOURCES.contains(&parts[2])
    {
        parts = &parts[2..];
    }
    let resource = *parts.first()?;
    let named = parts.len() > 1;
    let subresource = parts.get(2).copied().unwrap_or_default();
    let watch = uri.query().is_some_and(|q| {
        q.split('&').any(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            key == "watch" && !matches!(value.to_ascii_lowercase().as_str(), "0" | "false")
        })
    });
    let verb = match *method {
        Method::GET if watch => "WATCH",
        Method::GET if named => "GET",
        Method::GET => "LIST",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH if content_type == Some("application/apply-patch+yaml") => "APPLY",
        Method::PATCH => "PATCH",
        Method::DELETE if named => "DELETE",
        Method::DELETE => "DELETECOLLECTION",
        _ => return None,
    };
    Some(RequestKind::new(verb, group, resource, subresource))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_like_the_api_server_does() {
        let apply = Some("application/apply-patch+yaml");
        let merge = Some("application/merge-patch+json");
        /// `(verb, group, resource, subresource)`.
        type Expected<'a> = Option<(&'a str, &'a str, &'a str, &'a str)>;
        let cases: Vec<(Method, &str, Option<&str>, Expected)> = vec![
            (
                Method::GET,
                "/apis/batch/v1/namespaces/a/jobs?labelSelector=x",
                None,
                Some(("LIST", "batch", "jobs", "")),
            ),
            (
                Method::GET,
                "/apis/batch/v1/jobs?watch=true&resourceVersion=1",
                None,
                Some(("WATCH", "batch", "jobs", "")),
            ),
            (
                Method::GET,
                "/apis/batch/v1/jobs?watch=false",
                None,
                Some(("LIST", "batch", "jobs", "")),
            ),
            (
                Method::GET,
                "/apis/batch/v1/namespaces/a/jobs/j",
                None,
                Some(("GET", "batch", "jobs", "")),
            ),
            (
                Method::POST,
                "/apis/batch/v1/namespaces/a/jobs",
                None,
                Some(("POST", "batch", "jobs", "")),
            ),
            (
                Method::PATCH,
                "/apis/batch/v1/namespaces/a/jobs/j/status",
                merge,
                Some(("PATCH", "batch", "jobs", "status")),
            ),
            (
                Method::PATCH,
                "/apis/stowage.dev/v1alpha1/namespaces/a/backuptargets/t/status?fieldManager=x&force=true",
                apply,
                Some(("APPLY", "stowage.dev", "backuptargets", "status")),
            ),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/a/leases/l",
                None,
                Some(("PUT", "coordination.k8s.io", "leases", "")),
            ),
            (
                Method::DELETE,
                "/apis/batch/v1/namespaces/a/jobs/j",
                None,
                Some(("DELETE", "batch", "jobs", "")),
            ),
            (
                Method::DELETE,
                "/apis/batch/v1/namespaces/a/jobs",
                None,
                Some(("DELETECOLLECTION", "batch", "jobs", "")),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/persistentvolumeclaims/c",
                None,
                Some(("GET", "", "persistentvolumeclaims", "")),
            ),
            (
                Method::GET,
                "/api/v1/pods",
                None,
                Some(("LIST", "", "pods", "")),
            ),
            // The namespaces resource itself.
            (
                Method::GET,
                "/api/v1/namespaces",
                None,
                Some(("LIST", "", "namespaces", "")),
            ),
            (
                Method::POST,
                "/api/v1/namespaces",
                None,
                Some(("POST", "", "namespaces", "")),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a",
                None,
                Some(("GET", "", "namespaces", "")),
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/a/finalize",
                None,
                Some(("PUT", "", "namespaces", "finalize")),
            ),
            // Not resource requests.
            (Method::GET, "/metrics", None, None),
            (Method::GET, "/version", None, None),
            (Method::GET, "/apis", None, None),
        ];
        for (method, uri, content_type, expected) in cases {
            let uri: http::Uri = uri.parse().unwrap();
            let expected = expected.map(|(v, g, r, s)| RequestKind::new(v, g, r, s));
            assert_eq!(
                classify(&method, &uri, content_type),
                expected,
                "{method} {uri}"
            );
        }
    }

    #[test]
    fn differences_leave_out_kinds_without_new_requests() {
        let kind = |verb: &str| RequestKind::new(verb, "batch", "jobs", "");
        let earlier = BTreeMap::from([(kind("LIST"), 2), (kind("POST"), 5)]);
        let later = BTreeMap::from([(kind("LIST"), 2), (kind("POST"), 9), (kind("GET"), 1)]);
        assert_eq!(
            counts_since(&later, &earlier),
            BTreeMap::from([(kind("POST"), 4), (kind("GET"), 1)])
        );
    }
}
