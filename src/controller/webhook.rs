//! The admission webhook: a BackupTarget whose `spec.external.config` breaks the schema
//! of its installed BackupPlugin is rejected when it is applied, with the field paths in
//! the message (the same check, [`crate::installed::InstalledPlugins::check_target`], that
//! the operator repeats before any run).
//!
//! The leader serves it over HTTPS with a certificate it makes at start-up (a private CA
//! that lives only in its memory) and registers itself: it writes the
//! ValidatingWebhookConfiguration with that CA as `caBundle`, pointing at its Service (in
//! a cluster) or at a URL (outside one). The configuration matches only targets that have
//! `spec.external` and fails open (`failurePolicy: Ignore`): when the operator is down,
//! targets can still be applied, and the operator's own check marks a bad config with
//! `ConfigValid=False` before anything runs.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::installed::{InstalledPlugins, Unusable};
use crate::registry::PluginConfig;

/// The path the webhook answers on.
pub const PATH: &str = "/validate/backuptargets";

/// Where the API server reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Service in front of the operator: `namespace`, `name`, `port`.
    Service {
        /// The Service's namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its port.
        port: u16,
    },
    /// A URL (`https://host:port`), for an operator that runs outside the cluster.
    Url(String),
}

impl Endpoint {
    /// The DNS names (or IP addresses) the serving certificate must hold.
    pub fn hosts(&self) -> Vec<String> {
        match self {
            Endpoint::Service {
                namespace, name, ..
            } => vec![
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.cluster.local"),
            ],
            Endpoint::Url(url) => {
                let rest = url.trim_start_matches("https://");
                let host = rest.split(['/', ':']).next().unwrap_or_default();
                vec![host.trim_matches(['[', ']']).to_owned()]
            }
        }
    }

    fn client_config(&self) -> Value {
        match self {
            Endpoint::Service {
                namespace,
                name,
                port,
            } => {
                json!({"service": {"namespace": namespace, "name": name, "port": port, "path": PATH}})
            }
            Endpoint::Url(url) => json!({"url": format!("{}{PATH}", url.trim_end_matches('/'))}),
        }
    }
}

/// The answer to one AdmissionReview request (pure): allowed, or denied with the field
/// paths. Only a config that breaks the schema of an installed, accepted plugin is denied;
/// a plugin that is missing, refused or not allowed in the namespace shows as a condition
/// of the target instead (GitOps may apply the target before the plugin).
pub fn review(plugins: &InstalledPlugins, review: &Value) -> Value {
    let request = &review["request"];
    let uid = request["uid"].clone();
    let allowed = |message: Option<String>| {
        let mut response = json!({"uid": uid, "allowed": message.is_none()});
        if let Some(message) = message {
            response["status"] = json!({"code": 422, "reason": "Invalid", "message": message});
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    };
    let object = &request["object"];
    let spec = &object["spec"];
    let Some(external) = spec.get("external") else {
        return allowed(None);
    };
    let config = match serde_json::from_value::<PluginConfig>(json!({"external": external})) {
        Ok(PluginConfig::External(config)) => config,
        // The CRD's schema rejects this shape already.
        _ => return allowed(None),
    };
    let namespace = request["namespace"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match plugins.check_target(&config, namespace, None) {
        Err(Unusable::InvalidConfig(message)) => {
            allowed(Some(format!("BackupTarget {namespace}/{name}: {message}")))
        }
        _ => allowed(None),
    }
}

async fn handle(
    State(plugins): State<InstalledPlugins>,
    body: axum::body::Bytes,
) -> impl axum::response::IntoResponse {
    let answer = match serde_json::from_slice::<Value>(&body) {
        Ok(request) => review(&plugins, &request),
        Err(e) => json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": "", "allowed": true, "warnings": [format!("stowage could not read the AdmissionReview: {e}")]}
        }),
    };
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
}

/// A private CA and a serving certificate for `hosts`, made now (PEM: CA certificate,
/// server certificate, server key).
pub fn certificates(hosts: &[String]) -> anyhow::Result<(String, String, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "stowage webhook CA");
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(hosts.to_vec())?;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.distinguished_name.push(
        DnType::CommonName,
        hosts.first().cloned().unwrap_or_default(),
    );
    let cert = server.signed_by(&key, &issuer)?;
    let ca_cert = issuer.as_ref().clone();
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// Serve the webhook on `address` and register it under `configuration` for `endpoint`;
/// runs until the process stops.
pub async fn run(
    client: kube::Client,
    plugins: InstalledPlugins,
    address: SocketAddr,
    endpoint: Endpoint,
    configuration: String,
) -> anyhow::Result<()> {
    let (ca, cert, key) = certificates(&endpoint.hosts())?;
    let tls = {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs =
            CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address} for the webhook: {e}"))?;
    register(&client, &configuration, &endpoint, &ca).await?;
    tracing::info!(%address, configuration, ?endpoint, "admission webhook registered and serving");
    let app = Router::new().route(PATH, post(handle)).with_state(plugins);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                continue;
            }
        };
        let tls = tls.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

/// The ValidatingWebhookConfiguration (pure).
pub fn configuration(name: &str, endpoint: &Endpoint, ca_pem: &str) -> Value {
    use base64::Engine;
    let mut client_config = endpoint.client_config();
    client_config["caBundle"] =
        Value::String(base64::engine::general_purpose::STANDARD.encode(ca_pem));
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "stowage"}},
        "webhooks": [{
            "name": "backuptargets.stowage.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
            "clientConfig": client_config,
            "rules": [{
                "apiGroups": ["stowage.dev"], "apiVersions": ["v1alpha1"],
                "resources": ["backuptargets"], "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced"
            }],
            "matchConditions": [{
                "name": "external-targets-only",
                "expression": "has(object.spec.external)"
            }]
        }]
    })
}

async fn register(
    client: &kube::Client,
    name: &str,
    endpoint: &Endpoint,
    ca_pem: &str,
) -> anyhow::Result<()> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let desired = configuration(name, endpoint, ca_pem);
    api.patch(
        name,
        &PatchParams::apply("stowage-controller").force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot write ValidatingWebhookConfiguration {name}: {e}; the operator needs get, \
             create and patch on validatingwebhookconfigurations (the chart's RBAC grants them)"
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugins() -> InstalledPlugins {
        let plugins = InstalledPlugins::default();
        let plugin = crate::installed::fixture(
            "ldap.example.com",
            "r/ldap@sha256:00",
            json!({"type": "object", "required": ["url"], "properties": {
                "url": {"type": "string", "pattern": "^ldap://"}
            }}),
        );
        plugins.set(&plugin);
        plugins
    }

    fn request(spec: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-1", "namespace": "shop", "operation": "CREATE",
            "object": {"metadata": {"name": "dir"}, "spec": spec}
        }})
    }

    #[test]
    fn only_a_config_that_breaks_an_installed_schema_is_denied() {
        let plugins = plugins();
        let cases = [
            (
                json!({"external": {"plugin": "ldap.example.com", "config": {"url": "ldap://x"}}}),
                true,
                "",
            ),
            (
                json!({"external": {"plugin": "ldap.example.com", "config": {"url": "http://x"}}}),
                false,
                "BackupTarget shop/dir: the config does not match the schema of BackupPlugin \"ldap.example.com\": spec.external.config.url: \"http://x\" does not match \"^ldap://\"",
            ),
            (
                json!({"external": {"plugin": "ldap.example.com", "config": {"url": "ldap://x", "baseDN": "o"}}}),
                false,
                "'baseDN' was unexpected",
            ),
            (
                json!({"external": {"plugin": "ldap.example.com", "config": {}}}),
                false,
                "spec.external.config: \"url\" is a required property",
            ),
            // Not installed: a condition, not a rejection.
            (
                json!({"external": {"plugin": "git.example.com", "config": {}}}),
                true,
                "",
            ),
            (json!({"postgres": {"host": "db"}}), true, ""),
        ];
        for (spec, allowed, message) in cases {
            let answer = review(&plugins, &request(spec.clone()));
            let response = &answer["response"];
            assert_eq!(response["uid"], "u-1");
            assert_eq!(response["allowed"], allowed, "{spec}: {answer}");
            if !allowed {
                let got = response["status"]["message"].as_str().unwrap();
                assert!(got.contains(message), "{spec}: {got}");
                assert_eq!(response["status"]["code"], 422);
            }
        }
    }

    #[test]
    fn the_configuration_points_at_the_endpoint_with_the_ca() {
        let service = Endpoint::Service {
            namespace: "stowage-system".into(),
            name: "stowage".into(),
            port: 443,
        };
        assert_eq!(
            service.hosts(),
            [
                "stowage.stowage-system.svc",
                "stowage.stowage-system.svc.cluster.local"
            ]
        );
        let config = configuration("stowage", &service, "PEM");
        let webhook = &config["webhooks"][0];
        assert_eq!(webhook["clientConfig"]["service"]["path"], PATH);
        assert_eq!(webhook["clientConfig"]["caBundle"], "UEVN");
        assert_eq!(webhook["failurePolicy"], "Ignore");
        let url = Endpoint::Url("https://127.0.0.1:9443".into());
        assert_eq!(url.hosts(), ["127.0.0.1"]);
        assert_eq!(
            configuration("s", &url, "x")["webhooks"][0]["clientConfig"]["url"],
            "https://127.0.0.1:9443/validate/backuptargets"
        );
        let (ca, cert, key) = certificates(&url.hosts()).unwrap();
        assert!(ca.contains("BEGIN CERTIFICATE") && cert.contains("BEGIN CERTIFICATE"));
        assert!(key.contains("PRIVATE KEY"));
    }
}
