//! External plugins end to end on the real control plane and node: the example LDAP
//! plugin (`examples/plugins/ldap`, a shell script in its own image) installed as a
//! `BackupPlugin`, against real slapd servers. The plugin is accepted (status lists its
//! secret fields and that its image is not pinned); a target with a misspelt field applied
//! while no webhook runs is marked `InvalidConfig` by the operator with the field path;
//! once the operator serves its admission webhook, a config that breaks the schema is
//! rejected by `kubectl apply`; a target naming a plugin that is not installed says so; a
//! good target is probed and backed up through the plugin's image (the artifact and
//! sidecar made by the runner), restored into another server and compared entry by entry;
//! a restore into a server holding data is refused; the plugin's namespace selector
//! takes the plugin away from the namespace; the password is in no log.

#[path = "operator_e2e/support.rs"]
#[allow(dead_code)] // shared with the other e2e suites
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use stowage_test_ldap::{LdapServer, SECRET_KEY, SECRET_NAME, SUFFIX, seed, snapshot_differences};
use stowage_testenv::eventually;
use support::{Env, PG_PASSWORD, at, condition};

const LDAP_PASSWORD: &str = "e2e-ldap-Pw-93qz";

fn cond(object: &Value, type_: &str) -> (String, String, String) {
    let c = condition(object, type_).unwrap_or_else(|| panic!("no {type_}: {object}"));
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The example's BackupPlugin manifest, named `name`, with the image built for this node
/// (or, with the node agent, the script from the repository).
fn plugin_manifest(env: &Env, name: &str) -> Value {
    let path = stowage_testenv::repo_root().join("examples/plugins/ldap/backupplugin.yaml");
    let text = std::fs::read_to_string(&path).expect("read the example manifest");
    let mut manifest: Value = serde_yaml_ng::from_str(&text).expect("the manifest parses");
    manifest["metadata"]["name"] = name.into();
    match env
        .cluster
        .ldap_plugin_image()
        .expect("the plugin image is built")
    {
        Some(image) => manifest["spec"]["image"] = image.into(),
        None => {
            let script = stowage_testenv::repo_root().join("examples/plugins/ldap/ldap.sh");
            manifest["spec"]["command"] = json!([script.to_string_lossy()]);
        }
    }
    manifest
}

fn target(name: &str, plugin: &str, config: Value) -> Value {
    json!({
        "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": name},
        "spec": {"external": {"plugin": plugin, "config": config}, "storage": {"claimName": support::CLAIM}}
    })
}

fn backup_plugin(env: &Env, name: &str) -> Value {
    let text = env
        .cluster
        .kubectl_output(&["get", "backupplugin", name, "-o", "json"])
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&text).expect("JSON")
}

#[tokio::test]
async fn an_installed_script_plugin_is_checked_backs_up_and_restores_through_the_operator() {
    let mut env = Env::new("e2e-external", PG_PASSWORD).await;
    env.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_NAME},
        "stringData": {SECRET_KEY: LDAP_PASSWORD}
    }));
    let source = LdapServer::start_on(LDAP_PASSWORD, env.cluster.pod_host());
    let entries = seed(&source, 20);
    let destination = LdapServer::start_on(LDAP_PASSWORD, env.cluster.pod_host());
    // Cluster-scoped: a name of this test's own, so parallel runs do not meet.
    let plugin = format!("ldap.{}.e2e.stowage.dev", env.name());
    env.cluster
        .apply(&[plugin_manifest(&env, &plugin)])
        .expect("the BackupPlugin is created");

    // Applied before the operator (and its webhook) runs: the API server cannot check it.
    env.apply(target(
        "typo",
        &plugin,
        source.config_json(json!({"baseDN": SUFFIX})),
    ));
    env.apply(target(
        "missing",
        "nope.example.com",
        source.config_json(json!({})),
    ));
    env.set_time(&at("06-11T10:00:00Z"));
    let port = stowage_test_ldap::free_port();
    let address = format!("127.0.0.1:{port}");
    let url = format!("https://127.0.0.1:{port}");
    env.start_operator_with_env(&[
        ("STOWAGE_WEBHOOK_BIND_ADDRESS", address.as_str()),
        ("STOWAGE_WEBHOOK_URL", url.as_str()),
    ]);

    // The plugin is accepted, with advice and its secret fields.
    let installed = eventually(
        "the BackupPlugin is accepted",
        Duration::from_secs(60),
        || {
            let installed = backup_plugin(&env, &plugin);
            async move {
                match condition(&installed, "Accepted") {
                    Some(c) if c["status"] == "True" => Ok(installed),
                    _ => Err(format!("status = {}", installed["status"])),
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        installed["status"]["secretFields"],
        json!(["bindPasswordSecretRef -> STOWAGE_SECRET_BINDPASSWORDSECRETREF"])
    );
    assert!(
        installed["status"]["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("not pinned by digest")),
        "{}",
        installed["status"]
    );

    // The operator's own check: what slipped past admission never runs.
    let typo = env
        .wait_target(
            "the misspelt field is reported",
            "typo",
            |t| match condition(t, "ConfigValid") {
                Some(c) if c["reason"] == "InvalidConfig" => Ok(()),
                _ => Err(format!("status = {}", t["status"])),
            },
        )
        .await;
    let (status, _, message) = cond(&typo, "ConfigValid");
    assert_eq!(status, "False");
    assert!(
        message.contains("spec.external.config") && message.contains("'baseDN' was unexpected"),
        "{message}"
    );
    assert!(
        env.jobs("stowage.dev/target=typo").await.is_empty(),
        "a Job ran for typo"
    );
    let missing = env
        .wait_target(
            "the missing plugin is reported",
            "missing",
            |t| match condition(t, "ConfigValid") {
                Some(c) if c["reason"] == "PluginNotInstalled" => Ok(()),
                _ => Err(format!("status = {}", t["status"])),
            },
        )
        .await;
    assert!(
        cond(&missing, "ConfigValid")
            .2
            .contains("no BackupPlugin \"nope.example.com\" is installed"),
        "{}",
        missing["status"]
    );

    // The webhook: a config that breaks the schema is refused when it is applied.
    let mut bad = target(
        "bad-url",
        &plugin,
        source.config_json(json!({"url": "http://ldap.example.org", "timeoutSeconds": 0})),
    );
    bad["metadata"]["namespace"] = env.name().into();
    let refusal = eventually(
        "the webhook refuses the config",
        Duration::from_secs(60),
        || {
            let result = env.cluster.apply(std::slice::from_ref(&bad));
            async move {
                match result {
                    Err(e) => Ok(e.to_string()),
                    Ok(()) => Err("kubectl apply accepted it".to_owned()),
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        refusal.contains("spec.external.config.url")
            && refusal.contains("spec.external.config.timeoutSeconds"),
        "{refusal}"
    );

    // A good target: probed and backed up through the plugin's image.
    env.apply(target("directory", &plugin, source.config_json(json!({}))));
    let probed = env
        .wait_target("the target is probed", "directory", |t| {
            match condition(t, "Reachable") {
                Some(c) if c["status"] == "True" => Ok(()),
                _ => Err(format!("status = {}", t["status"])),
            }
        })
        .await;
    assert_eq!(probed["status"]["plugin"], plugin.as_str());
    assert_eq!(probed["status"]["pluginVersion"], "0.1.0");
    let before = source.snapshot(SUFFIX);
    let backed_up = env.backup_now("directory", "t1").await;
    let artifact = backed_up["status"]["lastBackup"]["artifact"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(artifact.ends_with(".ldif.zst"), "{}", backed_up["status"]);
    env.verify("directory")
        .expect("the artifact matches its sidecar");
    let sidecars = env.sidecars("directory");
    assert_eq!(sidecars.len(), 1, "{sidecars:?}");
    let sidecar = &sidecars[0].1;
    assert_eq!(sidecar["plugin"], plugin.as_str(), "{sidecar}");
    assert_eq!(sidecar["pluginVersion"], "0.1.0", "{sidecar}");
    assert_eq!(sidecar["contentType"], "text/x-ldif", "{sidecar}");
    assert_eq!(
        sidecar["facts"]["entries"],
        entries.to_string(),
        "{sidecar}"
    );
    // The Job ran the plugin's image, restricted, with no API token.
    for job in env.jobs("stowage.dev/target=directory").await {
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let container = &pod.containers[0];
        if let Some(image) = env.cluster.ldap_plugin_image().unwrap() {
            assert_eq!(container.image.as_deref(), Some(image.as_str()));
        }
        let security = container
            .security_context
            .as_ref()
            .expect("a security context");
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
    }

    // Restored into another server, entry by entry the same.
    env.apply(target(
        "directory-copy",
        &plugin,
        destination.config_json(json!({})),
    ));
    env.create_restore(
        "r-ldap",
        json!({"source": {"targetRef": {"name": "directory"}}, "destination": {"targetRef": {"name": "directory-copy"}}}),
    );
    let restore = env.wait_restore_end("r-ldap").await;
    assert_eq!(
        restore["status"]["phase"], "Succeeded",
        "{}",
        restore["status"]
    );
    assert_eq!(
        restore["status"]["plan"]["holdsData"], false,
        "{}",
        restore["status"]
    );
    let differences = snapshot_differences(&before, &destination.snapshot(SUFFIX));
    assert!(
        differences.is_empty(),
        "the restored tree differs:\n{}",
        differences.join("\n")
    );
    // Again: the destination holds data now, and nothing is changed.
    env.create_restore(
        "r-ldap-again",
        json!({"source": {"targetRef": {"name": "directory"}}, "destination": {"targetRef": {"name": "directory-copy"}}}),
    );
    let again = env.wait_restore_end("r-ldap-again").await;
    assert_eq!(again["status"]["phase"], "Failed", "{}", again["status"]);
    assert_eq!(cond(&again, "Completed").1, "DestinationNotEmpty");

    // The plugin's namespace selector leaves this namespace out: the target says so.
    env.cluster
        .kubectl_output(&[
            "patch",
            "backupplugin",
            &plugin,
            "--type=merge",
            "-p",
            r#"{"spec":{"namespaceSelector":{"matchLabels":{"stowage.dev/e2e-plugins":"yes"}}}}"#,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = env
        .wait_target(
            "the namespace is left out",
            "directory",
            |t| match condition(t, "ConfigValid") {
                Some(c) if c["reason"] == "PluginNotAllowed" => Ok(()),
                _ => Err(format!("status = {}", t["status"])),
            },
        )
        .await;
    assert!(
        cond(&refused, "ConfigValid")
            .2
            .contains("spec.namespaceSelector"),
        "{}",
        refused["status"]
    );
    env.cluster
        .kubectl_output(&[
            "label",
            "namespace",
            env.name(),
            "stowage.dev/e2e-plugins=yes",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    env.kubectl(&[
        "annotate",
        "backuptarget",
        "directory",
        "stowage.dev/probe-now=after-label",
    ]);
    env.wait_target(
        "the labelled namespace may use it",
        "directory",
        |t| match condition(t, "ConfigValid") {
            Some(c) if c["status"] == "True" => Ok(()),
            _ => Err(format!("status = {}", t["status"])),
        },
    )
    .await;

    let logs = format!("{}{}", env.container_logs(), env.operator_log());
    assert!(!logs.contains(LDAP_PASSWORD), "the password is in a log");
    env.stop_operator();
    let _ = env
        .cluster
        .kubectl_output(&["delete", "backupplugin", &plugin, "--wait=false"]);
    let _ = env.cluster.kubectl_output(&[
        "delete",
        "validatingwebhookconfiguration",
        "stowage",
        "--ignore-not-found",
    ]);
}
