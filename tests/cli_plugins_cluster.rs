//! `stowage plugins --cluster` and `stowage plugins schema <name>` against a real
//! kube-apiserver (a control plane of its own, no node): installed BackupPlugins are
//! listed with their version and whether they are accepted and why not; an installed
//! plugin's schema is printed by name; without `--cluster` no cluster is needed.

use std::path::Path;
use std::process::{Command, Output};

use stowage_testenv::{BarePlane, PlaneOptions};

fn stowage(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn backup_plugin(name: &str, version: &str, schema: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "stowage.dev/v1alpha1",
        "kind": "BackupPlugin",
        "metadata": {"name": name},
        "spec": {
            "image": "registry.example.com/p@sha256:0123",
            "command": ["/p"],
            "version": version,
            "capabilities": {"backup": true, "restore": true},
            "artifact": {"extension": "txt"},
            "configSchema": schema,
        }
    })
}

#[test]
fn installed_plugins_are_listed_with_their_verdict_and_their_schema_is_printed() {
    let plane = BarePlane::start(PlaneOptions {
        controller_manager: false,
        real_node: false,
        audit_job_creates: false,
    })
    .expect("control plane");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = plane.kubeconfig();

    // No kubeconfig at all: the plain listing works, --cluster says how to point at one.
    let nowhere = dir.path().join("missing-kubeconfig");
    let out = stowage(&nowhere, &["plugins"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("redis"), "{}", text(&out));
    let out = stowage(&nowhere, &["plugins", "--cluster"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("KUBECONFIG"), "{}", text(&out));

    let crds = dir.path().join("crds.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_stowage"))
        .arg("crd")
        .output()
        .unwrap();
    std::fs::write(&crds, &out.stdout).unwrap();
    plane
        .kubectl_output(&["apply", "-f", crds.to_str().unwrap()])
        .unwrap();
    plane
        .kubectl_output(&[
            "wait",
            "--for=condition=Established",
            "crd/backupplugins.stowage.dev",
            "--timeout=60s",
        ])
        .unwrap();

    let out = stowage(kubeconfig, &["plugins", "--cluster"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("No BackupPlugin is installed"),
        "{}",
        text(&out)
    );

    let schema = serde_json::json!({
        "type": "object",
        "required": ["url"],
        "properties": {"url": {"type": "string", "description": "The server's URL."}}
    });
    let plugins = [
        backup_plugin("ldap.example.com", "1.4.2", schema.clone()),
        backup_plugin("nodot", "0.1.0", serde_json::json!({"type": "string"})),
    ];
    let manifests = dir.path().join("plugins.yaml");
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": plugins});
    std::fs::write(&manifests, list.to_string()).unwrap();
    plane
        .kubectl_output(&["apply", "-f", manifests.to_str().unwrap()])
        .unwrap();

    let out = stowage(kubeconfig, &["plugins", "--cluster"]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = text(&out);
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{listing}"))
            .to_owned()
    };
    let ldap = line("ldap.example.com");
    assert!(
        ldap.contains("1.4.2") && ldap.contains("backup,restore") && ldap.contains("True"),
        "{ldap}"
    );
    let nodot = line("nodot");
    assert!(nodot.contains("False"), "{nodot}");
    assert!(
        nodot.contains("metadata.name: \"nodot\" has no dot"),
        "{nodot}"
    );
    assert!(nodot.contains("spec.configSchema"), "{nodot}");
    assert!(
        listing.contains("postgres"),
        "built-in plugins too:\n{listing}"
    );

    let out = stowage(kubeconfig, &["plugins", "--cluster", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["installed"][0]["name"], "ldap.example.com");
    assert_eq!(json["installed"][0]["accepted"], true);
    assert_eq!(json["installed"][1]["accepted"], false);
    assert!(json["builtIn"].as_array().unwrap().len() >= 5, "{json}");

    let out = stowage(kubeconfig, &["plugins", "schema", "ldap.example.com"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, schema);

    let out = stowage(kubeconfig, &["plugins", "schema", "nope.example.com"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no BackupPlugin \"nope.example.com\" is installed"),
        "{}",
        text(&out)
    );

    // A built-in plugin's schema still needs no cluster.
    let out = stowage(&nowhere, &["plugins", "schema", "redis"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("passwordSecretRef"), "{}", text(&out));
    plane.stop().unwrap();
}
