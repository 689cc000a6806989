//! The CRDs on a real kube-apiserver: every example is accepted, every invalid manifest is
//! rejected with a message naming the offending field, and `kubectl explain` shows the
//! plugins' documentation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use stowage_testenv::TestCluster;

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// `kubectl apply -n <ns> -f -` of each document on its own (so the API server, not
/// kubectl's client-side schema check, validates it), with its namespace replaced by `ns`.
fn apply(cluster: &TestCluster, ns: &str, manifest: &str) -> Result<String, String> {
    let mut output = String::new();
    for doc in serde_yaml_ng::Deserializer::from_str(manifest) {
        let mut value: serde_json::Value =
            serde::Deserialize::deserialize(doc).map_err(|e| format!("not YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.insert("namespace".into(), ns.into());
        }
        let mut child = cluster
            .kubectl()
            .args(["apply", "--validate=strict", "-n", ns, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl starts");
        let body = serde_json::to_vec(&value).unwrap();
        child.stdin.take().unwrap().write_all(&body).unwrap();
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        output.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    Ok(output)
}

#[tokio::test]
async fn every_example_is_accepted() {
    let cluster = TestCluster::shared().expect("control plane");
    let ns = cluster.ns("examples").await.unwrap();
    let dir = stowage_testenv::repo_root().join("deploy/examples");
    let files = yaml_files(&dir);
    assert!(files.len() >= 3, "expected examples in {}", dir.display());
    for file in files {
        let manifest = std::fs::read_to_string(&file).unwrap();
        if let Err(e) = apply(cluster, ns.name(), &manifest) {
            panic!("{} was rejected:\n{e}", file.display());
        }
    }
}

#[tokio::test]
async fn invalid_manifests_are_rejected_naming_the_field() {
    let cluster = TestCluster::shared().expect("control plane");
    let ns = cluster.ns("invalid").await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/invalid");
    let files = yaml_files(&dir);
    assert!(files.len() >= 20, "expected at least 20 invalid manifests");
    let mut failures = Vec::new();
    for file in &files {
        let manifest = std::fs::read_to_string(file).unwrap();
        let expect = manifest
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", file.display()))
            .trim()
            .to_owned();
        match apply(cluster, ns.name(), &manifest) {
            Ok(out) => failures.push(format!("{}: accepted ({})", file.display(), out.trim())),
            Err(err) if !err.contains(&expect) => failures.push(format!(
                "{}: rejected, but the message does not contain {expect:?}:\n{err}",
                file.display()
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `kubectl create --dry-run=server -n <ns> -f -` of one object: the API server's verdict
/// without storing anything.
fn server_verdict(
    cluster: &TestCluster,
    ns: &str,
    object: &serde_json::Value,
) -> Result<(), String> {
    let mut child = cluster
        .kubectl()
        .args([
            "create",
            "--dry-run=server",
            "--validate=strict",
            "-n",
            ns,
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl starts");
    let body = serde_json::to_vec(object).unwrap();
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The CRD's rules for names and labels agree with Kubernetes' own: every claim name,
/// ServiceAccount name, node label key and value is accepted in a BackupTarget exactly
/// when the API server accepts it in the object it ends up in (a PersistentVolumeClaim,
/// a ServiceAccount, a Pod's nodeSelector), and a refusal names the BackupTarget field.
#[tokio::test]
async fn names_and_labels_are_checked_as_kubernetes_checks_them() {
    use serde_json::json;
    let cluster = TestCluster::shared().expect("control plane");
    let ns = cluster.ns("names").await.unwrap();
    let ns = ns.name();
    let target = |storage: serde_json::Value, job: serde_json::Value| {
        json!({"apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
               "metadata": {"name": "names"},
               "spec": {"postgres": {"host": "db", "database": "shop", "username": "backup"},
                        "storage": storage, "job": job}})
    };
    let names = [
        "backups",
        "backups-2.v1",
        "0",
        &"n".repeat(253),
        "Backups",
        "bad_name",
        "-backups",
        "backups-",
        "a..b",
        "a b",
        &"n".repeat(254),
    ];
    let keys = [
        "disktype",
        "kubernetes.io/arch",
        "Disk_Type.v2",
        "example.com/Disk-Type_2",
        &"k".repeat(63),
        &format!("{}/arch", "p".repeat(253)),
        &format!("{}.example.com/arch", "p".repeat(70)),
        "/arch",
        "kubernetes.io/",
        "Kubernetes.IO/arch",
        "a/b/c",
        "arch-",
        "disk type",
        "example_com/arch",
        &"k".repeat(64),
        &format!("{}/arch", "p".repeat(254)),
    ];
    let values = [
        "",
        "ssd",
        "SSD_2.fast-1",
        &"v".repeat(63),
        "fast ssd",
        "-ssd",
        "ssd.",
        "a/b",
        &"v".repeat(64),
    ];

    let mut disagreements = Vec::new();
    let mut compare = |case: String,
                       kubernetes: Result<(), String>,
                       ours: Result<(), String>,
                       field: &str| {
        match (&kubernetes, &ours) {
            (Ok(()), Ok(())) => {}
            (Err(_), Err(e)) if e.contains(field) => {}
            _ => disagreements.push(format!(
                "{case}: Kubernetes {kubernetes:?}, BackupTarget {ours:?}"
            )),
        }
    };
    for name in names {
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "metadata": {"name": name},
                         "spec": {"accessModes": ["ReadWriteOnce"],
                                  "resources": {"requests": {"storage": "1Gi"}}}});
        compare(
            format!("claimName {name:?}"),
            server_verdict(cluster, ns, &pvc),
            server_verdict(cluster, ns, &target(json!({"claimName": name}), json!({}))),
            "spec.storage.claimName",
        );
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                             "metadata": {"name": name}});
        compare(
            format!("serviceAccountName {name:?}"),
            server_verdict(cluster, ns, &account),
            server_verdict(
                cluster,
                ns,
                &target(
                    json!({"claimName": "backups"}),
                    json!({"serviceAccountName": name}),
                ),
            ),
            "spec.job.serviceAccountName",
        );
    }
    let selectors = keys
        .iter()
        .map(|k| json!({*k: "x"}))
        .chain(values.iter().map(|v| json!({"disktype": *v})));
    for selector in selectors {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
                         "spec": {"nodeSelector": selector,
                                  "containers": [{"name": "c", "image": "busybox"}]}});
        compare(
            format!("nodeSelector {selector}"),
            server_verdict(cluster, ns, &pod),
            server_verdict(
                cluster,
                ns,
                &target(
                    json!({"claimName": "backups"}),
                    json!({"nodeSelector": selector}),
                ),
            ),
            "spec.job.nodeSelector",
        );
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[tokio::test]
async fn kubectl_explain_shows_plugin_documentation() {
    let cluster = TestCluster::shared().expect("control plane");
    let out = cluster
        .kubectl_output(&["explain", "backuptarget.spec.postgres.passwordSecretRef"])
        .unwrap();
    assert!(out.contains("The role's password, from a Secret"), "{out}");
    assert!(
        out.contains("Name of the Secret, in the same namespace"),
        "{out}"
    );
    let out = cluster
        .kubectl_output(&["explain", "backupschedule.spec.timeZone"])
        .unwrap();
    assert!(out.contains("IANA time zone"), "{out}");
}

#[tokio::test]
async fn printer_columns_show_in_kubectl_get() {
    let cluster = TestCluster::shared().expect("control plane");
    let ns = cluster.ns("columns").await.unwrap();
    let dir = stowage_testenv::repo_root().join("deploy/examples");
    for name in ["postgres-target.yaml", "nightly-schedule.yaml"] {
        apply(
            cluster,
            ns.name(),
            &std::fs::read_to_string(dir.join(name)).unwrap(),
        )
        .unwrap();
    }
    let out = cluster
        .kubectl_output(&["get", "stowage", "-n", ns.name()])
        .unwrap();
    for column in [
        "PLUGIN",
        "READY",
        "LAST BACKUP",
        "SIZE",
        "SCHEDULE",
        "TIMEZONE",
        "NEXT RUN",
    ] {
        assert!(out.contains(column), "missing column {column}:\n{out}");
    }
    assert!(out.contains("Europe/Paris"), "{out}");
}
