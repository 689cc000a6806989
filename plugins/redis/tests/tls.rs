//! The redis plugin over TLS, against a real redis-server serving only its `tls-port`
//! and requiring client certificates: the export works with the CA and the client
//! certificate from Secrets, and each TLS mistake is a clear `Unreachable` naming
//! `spec.redis.tls`, never the key.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use serde_json::json;
use stowage_plugin_redis::{RedisConfig, RedisPlugin};
use stowage_plugin_sdk::conformance::{FailureCase, check_failures};
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, ErrorKind, Plugin, RestoreRequest, RunContext, SecretKeyRef,
    SecretValue,
};

struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    client_cert: String,
    client_key: String,
    other_ca: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki() -> Pki {
    let ca_issuer = ca("stowage redis test CA");
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &ca_issuer).unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stowage-backup");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client.signed_by(&client_key, &ca_issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca_issuer.pem()).unwrap();
    std::fs::write(dir.path().join("server.crt"), server_cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
    Pki {
        dir,
        ca: ca_issuer.pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
        other_ca: ca("another CA").pem(),
    }
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(pki: &Pki) -> Server {
    let port = free_port();
    let file = |name: &str| pki.dir.path().join(name).display().to_string();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &file("server.crt"),
            "--tls-key-file",
            &file("server.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &file("ca.crt"),
            "--tls-auth-clients",
            "yes",
        ])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(pki.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (tests/install-deps.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, port }
}

fn config(port: u16, tls: serde_json::Value) -> RedisConfig {
    serde_json::from_value(json!({
        "host": "127.0.0.1", "port": port, "connectTimeoutSeconds": 5, "tls": tls,
    }))
    .unwrap()
}

fn ctx(pki: &Pki, ca: &str) -> RunContext {
    let mut ctx = RunContext::new("cache", "secure");
    for (key, value) in [
        ("ca.crt", ca),
        ("tls.crt", &pki.client_cert),
        ("tls.key", &pki.client_key),
    ] {
        ctx.secrets
            .insert(SecretKeyRef::new("redis-tls", key), SecretValue::new(value));
    }
    ctx
}

fn full_tls() -> serde_json::Value {
    json!({
        "caSecretRef": {"name": "redis-tls", "key": "ca.crt"},
        "certSecretRef": {"name": "redis-tls", "key": "tls.crt"},
        "keySecretRef": {"name": "redis-tls", "key": "tls.key"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_over_tls_with_a_client_certificate_restores_every_key() {
    let pki = pki();
    let source = start(&pki);
    let copy = start(&pki);
    let config_of = |server: &Server| config(server.port, full_tls());
    let ctx = ctx(&pki, &pki.ca);

    // Seed the source with the client itself, over TLS.
    let seed = redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{}/0", source.port).as_str(),
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: pki.client_cert.clone().into_bytes(),
                client_key: pki.client_key.clone().into_bytes(),
            }),
            root_cert: Some(pki.ca.clone().into_bytes()),
        },
    )
    .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut connection = seed.get_multiplexed_async_connection().await.unwrap();
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("order:{i}"))
            .arg(format!("paid {i}"))
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("HSET")
        .arg("user:1")
        .arg("name")
        .arg("Ada")
        .query_async(&mut connection)
        .await
        .unwrap();

    let probe = RedisPlugin::probe(&config_of(&source), &ctx).await.unwrap();
    assert!(
        probe.message.contains("connected to Redis"),
        "{}",
        probe.message
    );
    let mut artifact = Vec::new();
    {
        let mut sink = ArtifactSink::new(&mut artifact);
        RedisPlugin::backup(&config_of(&source), &ctx, &mut sink)
            .await
            .unwrap();
    }
    let mut input = ArtifactSource::new(&artifact[..]);
    RedisPlugin::restore(
        &config_of(&copy),
        &ctx,
        &mut input,
        &RestoreRequest::default(),
    )
    .await
    .unwrap();

    let reader = redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{}/0", copy.port).as_str(),
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: pki.client_cert.clone().into_bytes(),
                client_key: pki.client_key.clone().into_bytes(),
            }),
            root_cert: Some(pki.ca.clone().into_bytes()),
        },
    )
    .unwrap();
    let mut connection = reader.get_multiplexed_async_connection().await.unwrap();
    let size: u64 = redis::cmd("DBSIZE")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(size, 201);
    let value: String = redis::cmd("GET")
        .arg("order:117")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(value, "paid 117");
    let name: String = redis::cmd("HGET")
        .arg("user:1")
        .arg("name")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(name, "Ada");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mistakes_are_unreachable_naming_spec_redis_tls_without_the_key() {
    let pki = pki();
    let server = start(&pki);
    let no_client_cert = json!({"caSecretRef": {"name": "redis-tls", "key": "ca.crt"}});
    let case = |name, tls: serde_json::Value, ca: &str| FailureCase::<RedisPlugin> {
        name,
        config: config(server.port, tls),
        ctx: ctx(&pki, ca),
        kind: ErrorKind::Unreachable,
        mentions: "spec.redis.tls",
    };
    let cases = [
        case(
            "a CA that did not sign the server's certificate",
            full_tls(),
            &pki.other_ca,
        ),
        case("the image's roots instead of the CA", json!({}), &pki.ca),
        case(
            "no client certificate where the server requires one",
            no_client_cert,
            &pki.ca,
        ),
    ];
    check_failures(&cases)
        .await
        .unwrap_or_else(|p| panic!("{}", p.join("\n")));
    // A plain-TCP config against the TLS port: the server hangs up; not a success.
    let plain = config(server.port, serde_json::Value::Null);
    let err = RedisPlugin::probe(&plain, &ctx(&pki, &pki.ca))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unreachable | ErrorKind::Timeout),
        "{err}"
    );
}
