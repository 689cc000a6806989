//! The `http` plugin: a generic, authenticated HTTP(S) download streamed into the artifact.
//!
//! It is a native plugin: the stowage runner itself requests the URL (with optional bearer
//! or basic credentials, extra headers and a private CA, all from Secrets) and streams the
//! response body into the [`ArtifactSink`] chunk by chunk, so memory stays flat whatever
//! the export's size. The probe sends `HEAD` (or `GET`) to the URL or to a health path on
//! the same origin.
//!
//! Restores are not supported: an HTTP export has no generic import counterpart, so
//! [`Plugin::restore`] keeps the SDK's default, which fails with
//! [`PluginError::Unsupported`].
//!
//! The Job's `HTTP_PROXY` / `HTTPS_PROXY` / `NO_PROXY` environment is honoured. Redirects
//! are followed (at most 10), but never to another origin while the request carries
//! credentials from a Secret: that fails with a message naming the redirect's target.
//!
//! Messages never contain a secret value, the URL's userinfo or its query string (which
//! may carry a token): URLs are shown as `scheme://host[:port]/path`, and a secret value
//! in the path of a URL the server redirected to is redacted before it is logged or
//! reported (the runner redacts the result and the sidecar's facts again).

mod client;
mod config;
mod errors;

pub use config::{
    BasicAuth, BearerAuth, DEFAULT_ARTIFACT_EXTENSION, DEFAULT_CONNECT_TIMEOUT_SECONDS,
    DEFAULT_TIMEOUT_SECONDS, HttpAuth, HttpConfig, HttpHeader, HttpMethod, ProbeMethod,
    ProbeOptions, TlsOptions, probe_url_on,
};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Response, Url};
use stowage_plugin_sdk::{
    ArtifactSink, BackupReport, Capabilities, Execution, Plugin, PluginError, PluginInfo,
    ProbeReport, Redactor, RunContext, ValidationErrors,
};
use tokio::io::AsyncWriteExt;

use crate::client::Session;
use crate::errors::{Operation, shown_url, status_error, timeout_error, transport_error};

/// The longest a probe may take, whatever `timeoutSeconds` says.
const PROBE_TIMEOUT_SECONDS: u32 = 60;

/// The HTTP download plugin.
pub struct HttpPlugin;

impl Plugin for HttpPlugin {
    type Config = HttpConfig;
    const KEY: &'static str = "http";

    fn info() -> PluginInfo {
        PluginInfo {
            key: Self::KEY,
            name: "HTTP download",
            version: "1.0.0",
            description: "Any HTTP(S) export endpoint or file, downloaded with optional bearer or basic credentials",
            capabilities: Capabilities {
                backup: true,
                restore: false,
                probe: true,
            },
            artifact_extension: DEFAULT_ARTIFACT_EXTENSION,
            content_type: "application/octet-stream",
            execution: Execution::Native,
            needs_kubernetes_api: false,
        }
    }

    fn artifact_extension(config: &HttpConfig) -> String {
        config.effective_artifact_extension().to_owned()
    }

    fn validate(config: &HttpConfig) -> Result<(), ValidationErrors> {
        config.validate()
    }

    async fn probe(config: &HttpConfig, ctx: &RunContext) -> Result<ProbeReport, PluginError> {
        let url = probe_url(config)?;
        let shown = shown_url(&url);
        let seconds = config.timeout_seconds.clamp(1, PROBE_TIMEOUT_SECONDS);
        let total = Duration::from_secs(seconds.into());
        let session = Session::new(config, ctx, &url, total)?;
        let request = session.request(config.probe.method.as_reqwest(), url.clone());
        tracing::debug!(url = %shown, method = ?config.probe.method, "probing");

        let started = Instant::now();
        let sent = tokio::time::timeout(total, request.send()).await;
        let response = match sent {
            Err(_elapsed) => return Err(timeout_error(&shown, Operation::Probe, seconds)),
            Ok(Err(e)) => {
                return Err(transport_error(
                    &e,
                    &url,
                    Operation::Probe,
                    seconds,
                    config.connect_timeout_seconds,
                ));
            }
            Ok(Ok(response)) => response,
        };
        let elapsed = started.elapsed();
        let status = response.status();
        // A redirect's target comes from the server, which may echo a secret in its path.
        let final_url = ctx.secrets.redactor().redact(&shown_url(response.url()));
        // The body (of a GET probe) is not read: dropping the response closes it.
        drop(response);
        if !(status.is_success() || status.is_redirection()) {
            return Err(status_error(
                status,
                &final_url,
                Operation::Probe,
                None,
                config.probe.method == ProbeMethod::Head,
            ));
        }
        tracing::info!(url = %final_url, status = status.as_u16(), "probe succeeded");
        Ok(ProbeReport {
            message: format!(
                "HTTP {} from {final_url} in {} ms",
                status.as_u16(),
                elapsed.as_millis()
            ),
            facts: BTreeMap::from([
                ("httpStatus".to_owned(), status.as_u16().to_string()),
                ("probeUrl".to_owned(), final_url),
            ]),
        })
    }

    async fn backup(
        config: &HttpConfig,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> Result<BackupReport, PluginError> {
        let url = parse_url(config)?;
        let shown = shown_url(&url);
        let total = Duration::from_secs(config.timeout_seconds.into());
        let session = Session::new(config, ctx, &url, total)?;
        let mut request = session.request(config.method.as_reqwest(), url.clone());
        if config.method == HttpMethod::Post
            && let Some(body) = &config.body
        {
            request = request.body(body.clone());
        }
        tracing::info!(url = %shown, method = ?config.method, "downloading");

        // reqwest's own timeout covers the body too; this outer bound also covers time spent
        // waiting on the sink.
        let redactor = ctx.secrets.redactor();
        match tokio::time::timeout(total, download(config, &url, request, sink, &redactor)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(timeout_error(
                &shown,
                Operation::Download,
                config.timeout_seconds,
            )),
        }
    }
}

/// Sends the download request and streams the body into the sink. The final URL (which
/// the server chose if it redirected) is redacted before it is logged or reported.
async fn download(
    config: &HttpConfig,
    url: &Url,
    request: reqwest::RequestBuilder,
    sink: &mut ArtifactSink<'_>,
    redactor: &Redactor,
) -> Result<BackupReport, PluginError> {
    let transport = |e: &reqwest::Error| {
        transport_error(
            e,
            url,
            Operation::Download,
            config.timeout_seconds,
            config.connect_timeout_seconds,
        )
    };
    let response = request.send().await.map_err(|e| transport(&e))?;
    let status = response.status();
    let final_url = redactor.redact(&shown_url(response.url()));
    let accepted = match config.expected_status {
        Some(expected) => status.as_u16() == expected,
        None => status.is_success(),
    };
    if !accepted {
        return Err(status_error(
            status,
            &final_url,
            Operation::Download,
            config.expected_status,
            false,
        ));
    }
    let mut facts = response_facts(&response);
    facts.insert("finalUrl".to_owned(), final_url.clone());

    let mut body = response.bytes_stream();
    let mut received: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| transport(&e))?;
        sink.write_all(&chunk).await?;
        received += chunk.len() as u64;
    }
    sink.flush().await?;
    tracing::info!(url = %final_url, status = status.as_u16(), bytes = received, "download finished");
    Ok(BackupReport { facts })
}

/// Facts about a response worth keeping in the artifact's sidecar.
fn response_facts(response: &Response) -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    facts.insert(
        "httpStatus".to_owned(),
        response.status().as_u16().to_string(),
    );
    let headers = response.headers();
    for (fact, header) in [
        ("contentType", reqwest::header::CONTENT_TYPE),
        ("contentLength", reqwest::header::CONTENT_LENGTH),
        ("etag", reqwest::header::ETAG),
        ("lastModified", reqwest::header::LAST_MODIFIED),
    ] {
        if let Some(value) = headers.get(&header).and_then(|v| v.to_str().ok()) {
            facts.insert(fact.to_owned(), value.to_owned());
        }
    }
    facts
}

/// The config's URL, checked again at run time (the config may not have been validated).
fn parse_url(config: &HttpConfig) -> Result<Url, PluginError> {
    let invalid =
        |message: String| PluginError::InvalidConfig(ValidationErrors::single("url", message));
    let url = Url::parse(&config.url).map_err(|e| {
        invalid(format!(
            "is not a valid URL ({e}); write it as https://host[:port]/path"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            "must be an http:// or https:// URL with a host".to_owned(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "must not contain credentials; use auth.basic or auth.bearer".to_owned(),
        ));
    }
    Ok(url)
}

/// The URL the probe requests: `probe.path` on the origin of `url`, or `url` itself.
fn probe_url(config: &HttpConfig) -> Result<Url, PluginError> {
    let url = parse_url(config)?;
    let Some(path) = &config.probe.path else {
        return Ok(url);
    };
    probe_url_on(&url, path).map_err(|message| {
        PluginError::InvalidConfig(ValidationErrors::single("probe.path", message))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_describes_a_native_backup_and_probe_plugin() {
        let info = HttpPlugin::info();
        assert_eq!(info.key, "http");
        assert_eq!(info.version, "1.0.0");
        assert_eq!(info.capabilities.names(), ["backup", "probe"]);
        assert_eq!(info.execution, Execution::Native);
        assert_eq!(info.artifact_extension, "bin");
        assert_eq!(info.content_type, "application/octet-stream");
    }

    #[test]
    fn the_probe_path_replaces_path_and_query_of_the_url() {
        let mut config = HttpConfig::for_url("https://h.example:8443/api/export?token=x");
        assert_eq!(
            probe_url(&config).unwrap().as_str(),
            "https://h.example:8443/api/export?token=x"
        );
        config.probe.path = Some("/healthz".into());
        assert_eq!(
            probe_url(&config).unwrap().as_str(),
            "https://h.example:8443/healthz"
        );
    }

    #[test]
    fn the_probe_never_leaves_the_origin_of_the_url_even_unvalidated() {
        // probe_url is also the run-time check: a config that skipped validate() (or a
        // path validate() let through) must still not send the probe, with its
        // credentials, to another host.
        let mut config = HttpConfig::for_url("https://h.example:8443/api/export");
        for path in [
            "/\\evil.example/x",
            "/\t/evil.example/x",
            "/\n\\evil.example:8443/x",
            "\\\\evil.example/x",
            "http://evil.example/",
            "https:evil.example/x",
        ] {
            config.probe.path = Some(path.into());
            let error = probe_url(&config).expect_err(path);
            assert!(
                matches!(&error, PluginError::InvalidConfig(e) if e.0[0].field == "probe.path"),
                "{path:?}: {error}"
            );
        }
        for (path, expected) in [
            ("/healthz", "https://h.example:8443/healthz"),
            ("/../up?x=1", "https://h.example:8443/up?x=1"),
            ("/a@evil.example", "https://h.example:8443/a@evil.example"),
        ] {
            config.probe.path = Some(path.into());
            assert_eq!(probe_url(&config).unwrap().as_str(), expected, "{path}");
        }
    }

    #[tokio::test]
    async fn restore_is_unsupported() {
        let config = HttpConfig::for_url("https://h.example/x");
        let ctx = RunContext::new("ns", "target");
        let mut source = stowage_plugin_sdk::ArtifactSource::new(&b""[..]);
        let request = stowage_plugin_sdk::RestoreRequest::default();
        let error = HttpPlugin::restore(&config, &ctx, &mut source, &request)
            .await
            .unwrap_err();
        assert!(matches!(error, PluginError::Unsupported(_)), "{error}");
    }
}
