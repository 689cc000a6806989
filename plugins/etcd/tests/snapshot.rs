//! The etcd plugin against real etcd members started on loopback by the test (the etcd
//! and etcdutl that `deploy/local/build.sh` builds): a snapshot restored with `etcdutl`
//! holds the keys that were written; TLS with client certificates and authentication;
//! every documented failure typed, without the password in any message.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use stowage_plugin_etcd::{EtcdConfig, EtcdPlugin, FACT_ETCD_VERSION};
use stowage_plugin_sdk::{
    ArtifactSink, ErrorKind, Plugin, PluginError, RunContext, SecretKeyRef, SecretValue,
};

const PASSWORD: &str = "etcd-canary-Pw-41f7";

/// Where `deploy/local/build.sh` put etcd and etcdutl (it builds them when missing).
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let out = Command::new("bash")
            .arg(root.join("deploy/local/build.sh"))
            .arg("--print-bin-dir")
            .stderr(Stdio::inherit())
            .output()
            .expect("run deploy/local/build.sh");
        assert!(out.status.success(), "deploy/local/build.sh failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// TLS material: a CA, the member's certificate for 127.0.0.1, and a client certificate.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stowage etcd test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &ca).unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        // Not a user name: etcd takes a client certificate's CN as the user when no
        // password is given.
        .push(rcgen::DnType::CommonName, "stowage-backup-client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client.signed_by(&client_key, &ca).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("server.crt"), server_cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
    Pki {
        dir,
        ca: ca.pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// One etcd member on loopback, stopped when dropped.
struct Member {
    child: Child,
    url: String,
    /// Kept until the member stops.
    _data: tempfile::TempDir,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Member {
    /// A new member (`tls`: serve https and require client certificates), or one on an
    /// existing data directory.
    fn start(tls: Option<&Pki>, data: Option<tempfile::TempDir>) -> Member {
        let data = data.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let (client, peer) = (free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{client}");
        let mut command = Command::new(bin_dir().join("etcd"));
        command
            .arg("--name=m0")
            .arg(format!("--data-dir={}", data.path().join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=m0=http://127.0.0.1:{peer}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(pki) = tls {
            let p = |f: &str| pki.dir.path().join(f).display().to_string();
            command
                .arg(format!("--cert-file={}", p("server.crt")))
                .arg(format!("--key-file={}", p("server.key")))
                .arg(format!("--trusted-ca-file={}", p("ca.crt")))
                .arg("--client-cert-auth");
        }
        let child = command.spawn().expect("start etcd");
        let member = Member {
            child,
            url,
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen on {client}");
            std::thread::sleep(Duration::from_millis(100));
        }
        member
    }

    async fn client(&self, pki: Option<&Pki>, user: Option<(&str, &str)>) -> Client {
        let mut options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        if let Some(pki) = pki {
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&pki.ca))
                    .identity(Identity::from_pem(&pki.client_cert, &pki.client_key)),
            );
        }
        if let Some((u, p)) = user {
            options = options.with_user(u, p);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let error = match Client::connect([self.url.as_str()], Some(options.clone())).await {
                Ok(mut c) => match c.status().await {
                    Ok(_) => return c,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "etcd at {} not ready: {error}",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn refs() -> [SecretKeyRef; 4] {
    [
        SecretKeyRef::new("etcd-tls", "ca.crt"),
        SecretKeyRef::new("etcd-tls", "tls.crt"),
        SecretKeyRef::new("etcd-tls", "tls.key"),
        SecretKeyRef::new("etcd-root", "password"),
    ]
}

fn ctx(pki: Option<&Pki>, password: &str) -> RunContext {
    let mut ctx = RunContext::new("kube-system", "etcd");
    let [ca, cert, key, pw] = refs();
    if let Some(pki) = pki {
        ctx.secrets.insert(ca, SecretValue::new(pki.ca.clone()));
        ctx.secrets
            .insert(cert, SecretValue::new(pki.client_cert.clone()));
        ctx.secrets
            .insert(key, SecretValue::new(pki.client_key.clone()));
    }
    ctx.secrets.insert(pw, SecretValue::new(password));
    ctx
}

fn config(value: serde_json::Value) -> EtcdConfig {
    serde_json::from_value(value).unwrap()
}

async fn backup(config: &EtcdConfig, ctx: &RunContext) -> Result<Vec<u8>, PluginError> {
    let mut bytes = Vec::new();
    {
        let mut sink = ArtifactSink::new(&mut bytes);
        EtcdPlugin::backup(config, ctx, &mut sink).await?;
    }
    Ok(bytes)
}

/// Restore `snapshot` with `etcdutl snapshot restore` (which checks its SHA-256 trailer)
/// and start a member on it.
fn restore(snapshot: &[u8]) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.db");
    std::fs::write(&file, snapshot).unwrap();
    let data = tempfile::tempdir().unwrap();
    let peer = free_port();
    let out = Command::new(bin_dir().join("etcdutl"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg(format!("--data-dir={}", data.path().join("data").display()))
        .arg("--name=m0")
        .arg(format!("--initial-cluster=m0=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .output()
        .expect("run etcdutl");
    assert!(
        out.status.success(),
        "etcdutl snapshot restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Member::start(None, Some(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restored_with_etcdutl_holds_every_key_written() {
    let member = Member::start(None, None);
    let mut client = member.client(None, None).await;
    for i in 0..300 {
        client
            .put(
                format!("/registry/items/{i:04}"),
                format!("value {i} {}", "x".repeat(i)),
                None,
            )
            .await
            .unwrap();
    }
    client.delete("/registry/items/0007", None).await.unwrap();
    let before = client
        .get(
            "/registry/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let expected: Vec<(Vec<u8>, Vec<u8>)> = before
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect();
    assert_eq!(expected.len(), 299);

    // The first endpoint is dead: the snapshot comes from the next member.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = config(serde_json::json!({"endpoints": [dead, member.url]}));
    let probe = EtcdPlugin::probe(&cfg, &ctx(None, PASSWORD)).await.unwrap();
    assert!(
        probe.message.contains("connected to etcd 3."),
        "{}",
        probe.message
    );
    assert!(probe.facts[FACT_ETCD_VERSION].starts_with("3."));
    let snapshot = backup(&cfg, &ctx(None, PASSWORD)).await.unwrap();
    assert!(snapshot.len() > 20_000, "{} bytes", snapshot.len());

    // Changes after the snapshot are not in it.
    client.put("/registry/after", "later", None).await.unwrap();
    drop(member);
    let restored = restore(&snapshot);
    let mut client = restored.client(None, None).await;
    let after = client
        .get(
            "/registry/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let got: Vec<(Vec<u8>, Vec<u8>)> = after
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect();
    assert_eq!(
        got, expected,
        "the restored keys differ from those snapshotted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_authentication_and_each_failure_typed() {
    let pki = pki();
    let member = Member::start(Some(&pki), None);
    let mut admin = member.client(Some(&pki), None).await;
    admin.user_add("root", PASSWORD, None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let [ca, cert, key, pw] = refs();
    let full = serde_json::json!({
        "endpoints": [member.url],
        "tls": {"caSecretRef": ca, "certSecretRef": cert, "keySecretRef": key},
        "username": "root", "passwordSecretRef": pw,
    });

    let snapshot = backup(&config(full.clone()), &ctx(Some(&pki), PASSWORD))
        .await
        .unwrap();
    assert!(snapshot.len() > 1000);

    let wrong = "wrong-Pw-not-this-one";
    let mut no_client_cert = full.clone();
    no_client_cert["tls"] = serde_json::json!({"caSecretRef": refs()[0]});
    let mut no_tls = full.clone();
    no_tls.as_object_mut().unwrap().remove("tls");
    let mut anonymous = full.clone();
    anonymous.as_object_mut().unwrap().remove("username");
    anonymous
        .as_object_mut()
        .unwrap()
        .remove("passwordSecretRef");
    let refused = format!("http://127.0.0.1:{}", free_port());
    let cases: Vec<(&str, serde_json::Value, &str, ErrorKind)> = vec![
        (
            "a wrong password",
            full.clone(),
            wrong,
            ErrorKind::Unauthorized,
        ),
        (
            "no client certificate",
            no_client_cert,
            PASSWORD,
            ErrorKind::Unreachable,
        ),
        (
            "no CA for a private certificate",
            no_tls,
            PASSWORD,
            ErrorKind::Unreachable,
        ),
        (
            "no user with authentication on",
            anonymous,
            PASSWORD,
            ErrorKind::Unauthorized,
        ),
        (
            "a refused port",
            serde_json::json!({"endpoints": [refused]}),
            PASSWORD,
            ErrorKind::Unreachable,
        ),
    ];
    for (name, cfg, password, kind) in cases {
        let err = EtcdPlugin::probe(&config(cfg.clone()), &ctx(Some(&pki), password))
            .await
            .expect_err(name);
        let text = err.to_string();
        assert_eq!(err.kind(), kind, "{name}: {text}");
        assert!(
            !text.contains(PASSWORD) && !text.contains(wrong),
            "{name}: the password leaked: {text}"
        );
        let backup_err = backup(&config(cfg), &ctx(Some(&pki), password))
            .await
            .expect_err(name);
        assert_eq!(backup_err.kind(), kind, "{name} (backup): {backup_err}");
    }
}

/// The conformance kit's failure checks against a real etcd with authentication: each
/// documented failure typed, naming the field to fix, without the (canary) password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_kit_failure_checks_pass_against_a_real_member() {
    use stowage_plugin_sdk::ErrorKind;
    use stowage_plugin_sdk::conformance::{BlackHole, FailureCase, check_failures};
    let member = Member::start(None, None);
    let mut admin = member.client(None, None).await;
    admin.user_add("root", PASSWORD, None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let pw = refs()[3].clone();
    let silent = BlackHole::start();
    let at = |url: String| {
        config(serde_json::json!({
            "endpoints": [url], "username": "root", "passwordSecretRef": pw,
            "connectTimeoutSeconds": 2,
        }))
    };
    let case = |name, config, password: &str, kind, mentions| FailureCase::<EtcdPlugin> {
        name,
        config,
        ctx: ctx(None, password),
        kind,
        mentions,
    };
    let cases = [
        case(
            "refused port",
            at(format!("http://127.0.0.1:{}", free_port())),
            PASSWORD,
            ErrorKind::Unreachable,
            "spec.etcd.endpoints",
        ),
        case(
            "wrong password",
            at(member.url.clone()),
            "Canary-wrong-Pw-3c1",
            ErrorKind::Unauthorized,
            "spec.etcd.passwordSecretRef",
        ),
        case(
            "member that never answers",
            at(format!("http://127.0.0.1:{}", silent.port())),
            PASSWORD,
            ErrorKind::Timeout,
            "spec.etcd.connectTimeoutSeconds",
        ),
    ];
    check_failures(&cases)
        .await
        .unwrap_or_else(|p| panic!("{}", p.join("\n")));
}
