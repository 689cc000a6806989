//! The http plugin against a real HTTP/1.1 server on 127.0.0.1: downloads, credentials,
//! status and transport errors, timeouts, redirects and probes. No secret value, URL
//! query string or userinfo may appear in any error message.

mod common;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{Reply, TestServer};
use stowage_plugin_http::{
    BasicAuth, BearerAuth, HttpAuth, HttpConfig, HttpHeader, HttpMethod, HttpPlugin, ProbeMethod,
};
use stowage_plugin_sdk::{
    ArtifactSink, BackupReport, ErrorKind, Plugin, PluginError, ProbeReport, RunContext,
    SecretKeyRef, SecretValue,
};

const TOKEN: &str = "canary-bearer-7f3a91";
const WRONG_TOKEN: &str = "canary-wrong-bearer-42aa";
const PASSWORD: &str = "canary-password-c0ffee";
/// base64("backup:canary-password-c0ffee"), what basic auth sends.
const BASIC: &str = "YmFja3VwOmNhbmFyeS1wYXNzd29yZC1jMGZmZWU=";
const HEADER_SECRET: &str = "canary-header-5eed";
const QUERY_SECRET: &str = "canary-query-q1";

fn token_ref() -> SecretKeyRef {
    SecretKeyRef::new("api", "token")
}
fn password_ref() -> SecretKeyRef {
    SecretKeyRef::new("api", "password")
}
fn header_ref() -> SecretKeyRef {
    SecretKeyRef::new("api", "header")
}

/// A context holding every canary secret; the bearer token is `token`.
fn ctx(token: &str) -> RunContext {
    let mut ctx = RunContext::new("shop", "export");
    ctx.secrets
        .insert(token_ref(), SecretValue::new(format!("{token}\n")));
    ctx.secrets
        .insert(password_ref(), SecretValue::new(PASSWORD));
    ctx.secrets
        .insert(header_ref(), SecretValue::new(HEADER_SECRET));
    ctx
}

fn bearer() -> Option<HttpAuth> {
    Some(HttpAuth {
        bearer: Some(BearerAuth {
            token_secret_ref: token_ref(),
        }),
        basic: None,
    })
}

fn basic() -> Option<HttpAuth> {
    Some(HttpAuth {
        bearer: None,
        basic: Some(BasicAuth {
            username: "backup".into(),
            password_secret_ref: password_ref(),
        }),
    })
}

fn secret_header() -> HttpHeader {
    HttpHeader {
        name: "X-Api-Key".into(),
        value: None,
        value_secret_ref: Some(header_ref()),
    }
}

/// Fails the test when a message shows a secret, the query string or userinfo.
fn assert_clean(error: &PluginError) {
    println!("{:?}: {error}", error.kind());
    let text = format!("{error} {error:?}");
    for canary in [
        TOKEN,
        WRONG_TOKEN,
        PASSWORD,
        BASIC,
        HEADER_SECRET,
        QUERY_SECRET,
    ] {
        assert!(!text.contains(canary), "message leaks {canary:?}: {text}");
    }
    assert!(!text.contains('?'), "message shows a query string: {text}");
}

async fn backup(
    config: &HttpConfig,
    ctx: &RunContext,
) -> (Result<BackupReport, PluginError>, Vec<u8>) {
    HttpPlugin::validate(config).expect("test configs are valid");
    let mut out = Vec::new();
    let result = {
        let mut sink = ArtifactSink::new(&mut out);
        HttpPlugin::backup(config, ctx, &mut sink).await
    };
    if let Err(e) = &result {
        assert_clean(e);
    }
    (result, out)
}

async fn probe(config: &HttpConfig, ctx: &RunContext) -> Result<ProbeReport, PluginError> {
    let result = HttpPlugin::probe(config, ctx).await;
    if let Err(e) = &result {
        assert_clean(e);
    }
    result
}

/// A server that answers `body` only to requests with the expected bearer token.
async fn bearer_server(body: &'static [u8]) -> TestServer {
    TestServer::start(move |request| {
        if request.header("authorization") == Some(&format!("Bearer {TOKEN}")) {
            Reply::Full {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: body.to_vec(),
            }
        } else {
            Reply::status(401, "no")
        }
    })
    .await
}

#[tokio::test]
async fn download_streams_the_body_and_records_facts() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let served = body.clone();
    let server = TestServer::start(move |_| Reply::Full {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("etag".into(), "\"v42\"".into()),
        ],
        body: served.clone(),
    })
    .await;
    let mut config = HttpConfig::for_url(server.url(&format!("/api/export?sig={QUERY_SECRET}")));
    config.headers = vec![
        HttpHeader {
            name: "Accept".into(),
            value: Some("application/json".into()),
            value_secret_ref: None,
        },
        secret_header(),
    ];

    let (result, out) = backup(&config, &ctx(TOKEN)).await;
    let report = result.unwrap();
    assert_eq!(out.len(), body.len());
    assert!(out == body, "the artifact differs from the served body");
    let facts = &report.facts;
    assert_eq!(facts["httpStatus"], "200");
    assert_eq!(facts["contentType"], "application/json");
    assert_eq!(facts["contentLength"], body.len().to_string());
    assert_eq!(facts["etag"], "\"v42\"");
    assert_eq!(facts["finalUrl"], server.url("/api/export"));
    assert!(facts.values().all(|v| !v.contains(QUERY_SECRET)));

    let requests = server.received();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "GET");
    assert_eq!(request.target, format!("/api/export?sig={QUERY_SECRET}"));
    assert_eq!(request.header("accept"), Some("application/json"));
    assert_eq!(request.header("x-api-key"), Some(HEADER_SECRET));
    assert!(
        request
            .header("user-agent")
            .unwrap()
            .starts_with("stowage-http/")
    );
}

#[tokio::test]
async fn bearer_token_is_sent_and_a_wrong_one_is_unauthorized() {
    let server = bearer_server(b"{\"ok\":true}").await;
    let mut config = HttpConfig::for_url(server.url(&format!("/export?token={QUERY_SECRET}")));
    config.auth = bearer();

    let (result, out) = backup(&config, &ctx(TOKEN)).await;
    result.unwrap();
    assert_eq!(out, b"{\"ok\":true}");

    let (result, out) = backup(&config, &ctx(WRONG_TOKEN)).await;
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unauthorized, "{error}");
    let text = error.to_string();
    assert!(text.contains("401"), "{text}");
    assert!(text.contains(&server.url("/export")), "{text}");
    assert!(
        text.contains("check the Secret referenced by spec.http.auth"),
        "{text}"
    );
    assert!(out.is_empty(), "nothing is written for an error status");
}

#[tokio::test]
async fn basic_credentials_are_checked_by_the_server() {
    let server = TestServer::start(|request| {
        if request.header("authorization") == Some(&format!("Basic {BASIC}")) {
            Reply::status(200, "basic ok")
        } else {
            Reply::status(403, "forbidden")
        }
    })
    .await;
    let mut config = HttpConfig::for_url(server.url("/dump"));
    config.auth = basic();
    let (result, out) = backup(&config, &ctx(TOKEN)).await;
    result.unwrap();
    assert_eq!(out, b"basic ok");

    let mut wrong = ctx(TOKEN);
    wrong
        .secrets
        .insert(password_ref(), SecretValue::new(WRONG_TOKEN));
    let (result, _) = backup(&config, &wrong).await;
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unauthorized, "{error}");
    assert!(error.to_string().contains("403"), "{error}");
}

#[tokio::test]
async fn post_sends_the_body() {
    let server = TestServer::start(|request| {
        if request.method == "POST" && request.body == b"{\"scope\":\"all\"}" {
            Reply::status(200, "exported")
        } else {
            Reply::status(400, "bad request")
        }
    })
    .await;
    let mut config = HttpConfig::for_url(server.url("/export"));
    config.method = HttpMethod::Post;
    config.body = Some("{\"scope\":\"all\"}".into());
    config.headers = vec![HttpHeader {
        name: "Content-Type".into(),
        value: Some("application/json".into()),
        value_secret_ref: None,
    }];
    let (result, out) = backup(&config, &ctx(TOKEN)).await;
    result.unwrap();
    assert_eq!(out, b"exported");
    assert_eq!(
        server.received()[0].header("content-type"),
        Some("application/json")
    );
}

#[tokio::test]
async fn error_statuses_map_to_their_kinds() {
    let server = TestServer::start(|request| match request.path() {
        "/missing" => Reply::status(404, "not here"),
        "/gone" => Reply::status(410, "gone"),
        "/broken" => Reply::status(500, "boom"),
        "/busy" => Reply::status(503, "later"),
        "/accepted" => Reply::status(202, "queued"),
        _ => Reply::status(200, "ok"),
    })
    .await;
    let ctx = ctx(TOKEN);
    let run = |path: &str| {
        let mut config = HttpConfig::for_url(server.url(&format!("{path}?k={QUERY_SECRET}")));
        config.auth = bearer();
        config.headers = vec![secret_header()];
        config
    };

    for (path, kind) in [
        ("/missing", ErrorKind::NotFound),
        ("/gone", ErrorKind::NotFound),
        ("/broken", ErrorKind::RemoteError),
    ] {
        let (result, _) = backup(&run(path), &ctx).await;
        let error = result.unwrap_err();
        assert_eq!(error.kind(), kind, "{path}: {error}");
        assert!(error.to_string().contains(&server.url(path)), "{error}");
    }
    let (result, _) = backup(&run("/busy"), &ctx).await;
    match result.unwrap_err() {
        PluginError::Remote { status, message } => {
            assert_eq!(status, Some(503));
            assert!(
                message.starts_with("HTTP 503 Service Unavailable from "),
                "{message}"
            );
        }
        other => panic!("expected Remote, got {other:?}"),
    }

    // expectedStatus narrows what counts as success.
    let mut config = run("/accepted");
    backup(&config, &ctx).await.0.unwrap();
    config.expected_status = Some(200);
    let (result, _) = backup(&config, &ctx).await;
    let error = result.unwrap_err();
    assert!(
        matches!(
            error,
            PluginError::Remote {
                status: Some(202),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("expectedStatus is 200"),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = TestServer::start(|_| Reply::Stall(Duration::from_secs(30))).await;
    let mut config = HttpConfig::for_url(server.url(&format!("/slow?k={QUERY_SECRET}")));
    config.timeout_seconds = 1;
    config.connect_timeout_seconds = 1;
    config.auth = bearer();
    let (result, _) = backup(&config, &ctx(TOKEN)).await;
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert!(
        error.to_string().contains("timeoutSeconds (1 s)"),
        "{error}"
    );

    let error = probe(&config, &ctx(TOKEN)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
}

#[tokio::test]
async fn the_timeout_covers_a_trickling_body() {
    let server = TestServer::start(|_| Reply::Trickle {
        total: 100,
        every: Duration::from_millis(100),
    })
    .await;
    let mut config = HttpConfig::for_url(server.url("/trickle"));
    config.timeout_seconds = 1;
    config.connect_timeout_seconds = 1;
    let (result, out) = backup(&config, &ctx(TOKEN)).await;
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert!(out.len() < 100, "the body cannot have completed");
}

#[tokio::test]
async fn a_refused_connection_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config = HttpConfig::for_url(format!("http://{addr}/export?k={QUERY_SECRET}"));
    config.auth = bearer();
    config.headers = vec![secret_header()];

    let (result, _) = backup(&config, &ctx(TOKEN)).await;
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unreachable, "{error}");
    let text = error.to_string();
    assert!(
        text.contains(&format!("cannot connect to {addr}")),
        "{text}"
    );

    let error = probe(&config, &ctx(TOKEN)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unreachable, "{error}");
}

#[tokio::test]
async fn a_missing_secret_names_the_secret() {
    let server = bearer_server(b"x").await;
    let mut config = HttpConfig::for_url(server.url("/x"));
    config.auth = bearer();
    let (result, _) = backup(&config, &RunContext::new("shop", "export")).await;
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    assert!(error.to_string().contains("\"api\""), "{error}");
    assert!(
        server.received().is_empty(),
        "no request without credentials"
    );
}

#[tokio::test]
async fn redirects_are_followed_within_the_origin_but_credentials_never_leave_it() {
    let elsewhere = TestServer::start(|_| Reply::status(200, "elsewhere")).await;
    let away = elsewhere.url("/stolen");
    let server = TestServer::start(move |request| match request.path() {
        "/old" => Reply::Full {
            status: 302,
            headers: vec![("location".into(), "/new".into())],
            body: Vec::new(),
        },
        "/away" => Reply::Full {
            status: 302,
            headers: vec![("location".into(), away.clone())],
            body: Vec::new(),
        },
        _ => Reply::status(200, "moved here"),
    })
    .await;

    let mut config = HttpConfig::for_url(server.url("/old"));
    config.headers = vec![secret_header()];
    let (result, out) = backup(&config, &ctx(TOKEN)).await;
    let report = result.unwrap();
    assert_eq!(out, b"moved here");
    assert_eq!(report.facts["finalUrl"], server.url("/new"));

    config.url = server.url("/away");
    let (result, _) = backup(&config, &ctx(TOKEN)).await;
    let error = result.unwrap_err();
    assert!(error.to_string().contains("another origin"), "{error}");
    assert!(
        elsewhere.received().is_empty(),
        "the secret header went to another origin"
    );

    // Without credentials, a redirect to another origin is simply followed.
    config.headers.clear();
    let (result, out) = backup(&config, &ctx(TOKEN)).await;
    result.unwrap();
    assert_eq!(out, b"elsewhere");
}

/// A writer that fails like a full disk.
struct FullDisk;

impl tokio::io::AsyncWrite for FullDisk {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "no space left on device",
        )))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failing_sink_is_an_io_error() {
    let server = bearer_server(b"some bytes").await;
    let mut config = HttpConfig::for_url(server.url("/x"));
    config.auth = bearer();
    let mut sink = ArtifactSink::new(FullDisk);
    let error = HttpPlugin::backup(&config, &ctx(TOKEN), &mut sink)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::IoError, "{error}");
    assert!(error.to_string().contains("no space left"), "{error}");
    assert_clean(&error);
}

#[tokio::test]
async fn a_probe_path_never_sends_the_credentials_to_another_server() {
    let home = TestServer::start(|_| Reply::status(200, "ok")).await;
    let elsewhere = TestServer::start(|_| Reply::status(200, "thanks")).await;
    let other = elsewhere.url("");
    let other_host = other.trim_start_matches("http://");
    let mut config = HttpConfig::for_url(home.url("/api/export"));
    config.auth = bearer();
    // URL parsers read a backslash as '/' and drop tabs and newlines, so each of these
    // joined naively with the URL names the other server.
    for path in [
        format!("/\\{other_host}/steal"),
        format!("/\t/{other_host}/steal"),
        format!("/\n\\{other_host}/steal"),
        format!("{other}/steal"),
    ] {
        config.probe.path = Some(path.clone());
        let error = probe(&config, &ctx(TOKEN)).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{path:?}: {error}");
        assert!(error.to_string().contains("probe.path"), "{error}");
    }
    assert!(
        elsewhere.received().is_empty(),
        "{:?}",
        elsewhere.received()
    );
    assert!(home.received().is_empty());
}

#[tokio::test]
async fn probe_sends_head_to_the_health_path_with_credentials() {
    let server = TestServer::start(|request| {
        let authorized = request.header("authorization") == Some(&format!("Bearer {TOKEN}"));
        match (request.method.as_str(), request.path(), authorized) {
            (_, _, false) => Reply::status(401, "no"),
            ("HEAD", "/healthz", true) => Reply::status(200, "healthy"),
            ("GET", "/healthz", true) => Reply::status(204, ""),
            _ => Reply::status(405, "method not allowed"),
        }
    })
    .await;
    let mut config = HttpConfig::for_url(server.url(&format!("/api/export?k={QUERY_SECRET}")));
    config.auth = bearer();
    config.probe.path = Some("/healthz".into());

    let report = probe(&config, &ctx(TOKEN)).await.unwrap();
    let prefix = format!("HTTP 200 from {} in ", server.url("/healthz"));
    assert!(report.message.starts_with(&prefix), "{}", report.message);
    assert!(report.message.ends_with(" ms"), "{}", report.message);
    assert_eq!(report.facts["httpStatus"], "200");
    let request = &server.received()[0];
    assert_eq!(
        (request.method.as_str(), request.target.as_str()),
        ("HEAD", "/healthz")
    );

    config.probe.method = ProbeMethod::Get;
    let report = probe(&config, &ctx(TOKEN)).await.unwrap();
    assert!(
        report.message.starts_with("HTTP 204 from "),
        "{}",
        report.message
    );

    let error = probe(&config, &ctx(WRONG_TOKEN)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unauthorized, "{error}");

    // Without probe.path, the probe requests the URL itself (here: no HEAD allowed).
    config.probe.path = None;
    config.probe.method = ProbeMethod::Head;
    let error = probe(&config, &ctx(TOKEN)).await.unwrap_err();
    assert!(
        matches!(
            error,
            PluginError::Remote {
                status: Some(405),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("probe.method: GET"), "{error}");
    let last = server.received().pop().unwrap();
    assert_eq!(last.target, format!("/api/export?k={QUERY_SECRET}"));
}

/// The conformance kit's service-backed checks against a real HTTP server whose error
/// pages echo the request's credentials back (as careless applications do): each failure
/// typed, naming the field to fix, without any secret; and memory flat is checked in
/// `tests/memory.rs`.
#[tokio::test]
async fn the_conformance_kit_passes_against_a_server_that_echoes_credentials() {
    use stowage_plugin_sdk::conformance::{BlackHole, FailureCase, check_failures};
    let server = TestServer::start(|request| {
        let auth = request
            .header("authorization")
            .unwrap_or_default()
            .to_owned();
        let echo = |status, what: &str| Reply::status(status, &format!("{what}: you sent {auth}"));
        match request.path() {
            "/missing" => echo(404, "no such export"),
            _ if auth != format!("Bearer {TOKEN}") => echo(401, "bad token"),
            _ => Reply::status(200, "ok"),
        }
    })
    .await;
    let silent = BlackHole::start();
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let config = |url: String| {
        let mut config = HttpConfig::for_url(url);
        config.auth = bearer();
        config.timeout_seconds = 1;
        config.connect_timeout_seconds = 1;
        config
    };
    let case = |name, config, token: &str, kind, mentions| FailureCase::<HttpPlugin> {
        name,
        config,
        ctx: ctx(token),
        kind,
        mentions,
    };
    let cases = [
        case(
            "refused port",
            config(format!("http://{refused}/export")),
            TOKEN,
            ErrorKind::Unreachable,
            "spec.http.url",
        ),
        case(
            "wrong token, echoed",
            config(server.url("/export")),
            WRONG_TOKEN,
            ErrorKind::Unauthorized,
            "spec.http.auth",
        ),
        case(
            "missing path, token echoed",
            config(server.url("/missing")),
            TOKEN,
            ErrorKind::NotFound,
            "spec.http.url",
        ),
        case(
            "server that never answers",
            config(format!("http://127.0.0.1:{}/export", silent.port())),
            TOKEN,
            ErrorKind::Timeout,
            "spec.http.timeoutSeconds",
        ),
    ];
    check_failures(&cases)
        .await
        .unwrap_or_else(|p| panic!("{}", p.join("\n")));
}
