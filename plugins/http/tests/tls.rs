//! HTTPS against a real TLS server on 127.0.0.1 whose certificate comes from a private CA
//! made by the test: trusted through `tls.caSecretRef`, rejected without it.

mod common;

use std::sync::Arc;

use common::{Reply, TestServer};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use stowage_plugin_http::{BearerAuth, HttpAuth, HttpConfig, HttpPlugin};
use stowage_plugin_sdk::{
    ArtifactSink, ErrorKind, Plugin, PluginError, RunContext, SecretKeyRef, SecretValue,
};

const TOKEN: &str = "canary-tls-bearer-9d0e";

/// A private CA (PEM) and a server config with a certificate it signed for 127.0.0.1.
fn private_ca_and_server() -> (String, Arc<rustls::ServerConfig>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stowage test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

    let chain = vec![
        CertificateDer::from(leaf.der().to_vec()),
        CertificateDer::from(ca.der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    (ca.pem(), Arc::new(config))
}

fn ca_ref() -> SecretKeyRef {
    SecretKeyRef::new("export-ca", "ca.crt")
}

fn ctx(ca_pem: &str) -> RunContext {
    let mut ctx = RunContext::new("shop", "export");
    ctx.secrets.insert(ca_ref(), SecretValue::new(ca_pem));
    ctx.secrets
        .insert(SecretKeyRef::new("api", "token"), SecretValue::new(TOKEN));
    ctx
}

async fn server() -> (String, TestServer) {
    let (ca_pem, tls) = private_ca_and_server();
    let server = TestServer::start_tls(
        |request| {
            if request.header("authorization") == Some(&format!("Bearer {TOKEN}")) {
                Reply::status(200, "secret export")
            } else {
                Reply::status(401, "no")
            }
        },
        tls,
    )
    .await;
    (ca_pem, server)
}

fn config(url: String) -> HttpConfig {
    let mut config = HttpConfig::for_url(url);
    config.auth = Some(HttpAuth {
        bearer: Some(BearerAuth {
            token_secret_ref: SecretKeyRef::new("api", "token"),
        }),
        basic: None,
    });
    config
}

async fn backup(config: &HttpConfig, ctx: &RunContext) -> (Result<(), PluginError>, Vec<u8>) {
    HttpPlugin::validate(config).expect("test configs are valid");
    let mut out = Vec::new();
    let result = {
        let mut sink = ArtifactSink::new(&mut out);
        HttpPlugin::backup(config, ctx, &mut sink).await.map(|_| ())
    };
    if let Err(e) = &result {
        println!("{:?}: {e}", e.kind());
        let text = format!("{e} {e:?}");
        assert!(!text.contains(TOKEN), "message leaks the token: {text}");
        // Every DER certificate in base64 starts with "MII".
        assert!(!text.contains("MII"), "message shows the CA: {text}");
    }
    (result, out)
}

#[tokio::test]
async fn a_private_ca_from_ca_secret_ref_is_trusted() {
    let (ca_pem, server) = server().await;
    let mut config = config(server.url("/export?k=1"));
    config.tls.ca_secret_ref = Some(ca_ref());
    let (result, out) = backup(&config, &ctx(&ca_pem)).await;
    result.unwrap();
    assert_eq!(out, b"secret export");

    let report = HttpPlugin::probe(&config, &ctx(&ca_pem)).await.unwrap();
    assert!(
        report
            .message
            .starts_with("HTTP 200 from https://127.0.0.1:"),
        "{}",
        report.message
    );
}

#[tokio::test]
async fn without_the_ca_the_handshake_fails_naming_tls_and_the_fix() {
    let (ca_pem, server) = server().await;
    let config = config(server.url("/export"));
    let (result, out) = backup(&config, &ctx(&ca_pem)).await;
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unreachable, "{error}");
    let text = error.to_string();
    assert!(text.contains("TLS"), "{text}");
    assert!(text.contains("tls.caSecretRef"), "{text}");
    assert!(text.contains("insecureSkipVerify"), "{text}");
    assert!(out.is_empty());
    assert!(
        server.received().is_empty(),
        "no request went over an untrusted connection"
    );

    let error = HttpPlugin::probe(&config, &ctx(&ca_pem)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unreachable, "{error}");
    assert!(error.to_string().contains("TLS"), "{error}");
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate() {
    let (ca_pem, server) = server().await;
    let mut config = config(server.url("/export"));
    config.tls.insecure_skip_verify = true;
    let (result, out) = backup(&config, &ctx(&ca_pem)).await;
    result.unwrap();
    assert_eq!(out, b"secret export");
}

#[tokio::test]
async fn a_ca_secret_without_a_certificate_is_a_config_error() {
    let (_, server) = server().await;
    let mut config = config(server.url("/export"));
    config.tls.ca_secret_ref = Some(ca_ref());
    let (result, _) = backup(&config, &ctx("not a certificate")).await;
    match result.unwrap_err() {
        PluginError::InvalidConfig(errors) => {
            assert_eq!(errors.0[0].field, "tls.caSecretRef");
            assert!(errors.0[0].message.contains("\"export-ca\""), "{errors}");
            assert!(
                !errors.0[0].message.contains("not a certificate"),
                "{errors}"
            );
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}
