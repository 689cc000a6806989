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
