//! Checks of the Helm chart (`charts/stowage/`) that need only the `helm` binary built by
//! `deploy/local/build.sh` (and `promtool` for the alert rules): lint, the values schema,
//! what the templates render for the documented values, RBAC without Secrets, and the
//! chart's copy of the CRDs against `crds/`.
//!
//! The install/upgrade/uninstall tests against a running control plane are in
//! `tests/chart/install.sh` (run by the last test here).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const CHART: &str = "charts/stowage";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `helm` binary: `$HELM`, else the one `deploy/local/build.sh` puts in the cache.
fn helm_bin() -> PathBuf {
    if let Some(h) = std::env::var_os("HELM") {
        return PathBuf::from(h);
    }
    let cache = std::env::var_os("STOWAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/stowage")
        });
    let helm = cache.join("bin/helm");
    assert!(
        helm.exists(),
        "{} is missing: build it with deploy/local/build.sh (or set HELM)",
        helm.display()
    );
    helm
}

/// Run helm with `args` in the repository; returns (success, stdout, stderr).
fn helm(args: &[&str]) -> (bool, String, String) {
    let scratch = tempfile::tempdir().expect("temp dir");
    let out = Command::new(helm_bin())
        .args(args)
        .current_dir(repo())
        // Keep helm's cache/config out of $HOME and independent of other runs.
        .env("HELM_CACHE_HOME", scratch.path().join("cache"))
        .env("HELM_CONFIG_HOME", scratch.path().join("config"))
        .env("HELM_DATA_HOME", scratch.path().join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` with extra args; panics with helm's error when it fails.
fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "stowage",
        CHART,
        "--namespace",
        "stowage-system",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = helm(&args);
    assert!(ok, "helm template {extra:?} failed:\n{stderr}");
    parse_docs(&stdout)
}

/// `helm template` that must fail; returns the error text.
fn render_err(extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "stowage",
        CHART,
        "--namespace",
        "stowage-system",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = helm(&args);
    assert!(
        !ok,
        "helm template {extra:?} should fail but rendered:\n{stdout}"
    );
    stderr
}

fn parse_docs(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(doc).expect("rendered YAML parses");
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

/// `value` with every number as an f64, so `0` and `0.0` compare equal.
fn numbers_as_f64(value: Value) -> Value {
    match value {
        Value::Number(n) => n.as_f64().map(Value::from).unwrap_or(Value::Number(n)),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_f64).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, numbers_as_f64(v)))
                .collect(),
        ),
        other => other,
    }
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, got {}",
        found.len()
    );
    found[0]
}

fn container(docs: &[Value]) -> &Value {
    &one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn args(docs: &[Value]) -> Vec<String> {
    container(docs)["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

fn names_ns(docs: &[Value], kind: &str) -> Vec<(String, String)> {
    let mut v: Vec<_> = of_kind(docs, kind)
        .iter()
        .map(|d| {
            (
                d["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
                d["metadata"]["name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Values combinations every RBAC and rendering check runs over.
const MATRIX: &[&[&str]] = &[
    &[],
    &["--set", "watchNamespaces={shop,web}"],
    &[
        "--set",
        "replicas=3",
        "--set",
        "rbac.aggregateToDefaultRoles=false",
    ],
    &[
        "--set",
        "leaderElection.enabled=false",
        "--set",
        "crds.enabled=false",
    ],
    &[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "grafanaDashboard.enabled=true",
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
    ],
];

#[test]
fn chart_crds_are_identical_to_the_generated_crds() {
    let read_dir = |dir: &Path| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| {
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                (name, std::fs::read(&p).expect("read crd"))
            })
            .collect()
    };
    let generated = read_dir(&repo().join("crds"));
    let in_chart = read_dir(&repo().join(CHART).join("files/crds"));
    assert!(!generated.is_empty(), "crds/ holds no CRD");
    let fix = "cp crds/*.yaml charts/stowage/files/crds/ (and remove files no longer in crds/)";
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        in_chart.keys().collect::<Vec<_>>(),
        "charts/stowage/files/crds/ and crds/ hold different files; {fix}"
    );
    for (name, bytes) in &generated {
        assert!(
            &in_chart[name] == bytes,
            "charts/stowage/files/crds/{name} differs from crds/{name}; {fix}"
        );
    }
}

#[test]
fn rendered_crds_are_the_generated_crds_plus_labels_and_keep_policy() {
    let docs = render(&[]);
    let crds = of_kind(&docs, "CustomResourceDefinition");
    let mut files: Vec<_> = std::fs::read_dir(repo().join("crds"))
        .expect("crds/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert_eq!(
        crds.len(),
        files.len(),
        "one rendered CRD per file in crds/"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read crd");
        let expected = parse_docs(&text).remove(0);
        let name = &expected["metadata"]["name"];
        let rendered = crds
            .iter()
            .find(|c| &c["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("CRD {name} not rendered"));
        assert_eq!(
            rendered["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}: crds.keep defaults to true"
        );
        assert_eq!(
            rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "Helm"
        );
        let mut stripped = (*rendered).clone();
        let meta = stripped["metadata"].as_object_mut().expect("metadata");
        meta.remove("labels");
        meta.remove("annotations");
        // Helm's fromYaml/toYaml turns `0.0` into `0`: compare numbers by value.
        assert_eq!(
            numbers_as_f64(stripped),
            numbers_as_f64(expected.clone()),
            "{name}: rendering changed the CRD's content"
        );
    }

    let no_keep = render(&["--set", "crds.keep=false"]);
    for crd in of_kind(&no_keep, "CustomResourceDefinition") {
        assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
    }
    assert!(
        of_kind(
            &render(&["--set", "crds.enabled=false"]),
            "CustomResourceDefinition"
        )
        .is_empty()
    );
}

#[test]
fn helm_lint_passes_on_defaults_and_documented_variants() {
    for extra in [
        &[][..],
        &["--set", "watchNamespaces={shop}", "--set", "replicas=2"][..],
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "grafanaDashboard.enabled=true",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = helm(&args);
        assert!(ok, "helm lint {extra:?} failed:\n{stdout}\n{stderr}");
    }
}

#[test]
fn the_values_schema_rejects_wrong_values_naming_the_field() {
    for (set, field) in [
        ("replicas=two", "/replicas"),
        ("logFormat=xml", "/logFormat"),
        ("watchNamespaces={Not_A_Namespace}", "/watchNamespaces/0"),
        ("runner.job.backoffLimit=11", "/runner/job/backoffLimit"),
        (
            "leaderElection.leaseDurationSeconds=1",
            "/leaderElection/leaseDurationSeconds",
        ),
        ("metrics.port=70000", "/metrics/port"),
        ("image.digest=latest", "/image/digest"),
        ("typoedKey=1", "typoedKey"),
        ("runner.serviceAcount.name=x", "serviceAcount"),
    ] {
        let err = render_err(&["--set", set]);
        assert!(
            err.contains(field),
            "--set {set}: error does not name {field}:\n{err}"
        );
        let (ok, out, _) = helm(&["lint", CHART, "--set", set]);
        assert!(!ok, "helm lint accepted --set {set}:\n{out}");
    }
}

#[test]
fn rbac_never_grants_access_to_secrets() {
    for extra in MATRIX {
        let docs = render(extra);
        let roles: Vec<_> = docs
            .iter()
            .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
            .collect();
        assert!(!roles.is_empty(), "{extra:?}: no Role rendered");
        for role in roles {
            for rule in role["rules"].as_array().expect("rules") {
                let resources: Vec<&str> = rule["resources"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let groups: Vec<&str> = rule["apiGroups"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let name = &role["metadata"]["name"];
                assert!(
                    !resources
                        .iter()
                        .any(|r| *r == "*" || r.starts_with("secrets")),
                    "{extra:?}: {name} grants {resources:?}"
                );
                assert!(
                    !groups.contains(&"*"),
                    "{extra:?}: {name} grants every API group"
                );
                assert!(
                    rule["nonResourceURLs"].is_null(),
                    "{extra:?}: {name} grants URLs"
                );
                // Installing a plugin runs its image with targets' secrets: only cluster
                // administrators may, and no role of the chart lets anyone else.
                if resources.contains(&"backupplugins") {
                    let verbs: Vec<&str> = rule["verbs"]
                        .as_array()
                        .map(|v| v.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    assert!(
                        verbs.iter().all(|v| ["get", "list", "watch"].contains(v)),
                        "{extra:?}: {name} grants {verbs:?} on backupplugins"
                    );
                }
            }
        }
    }
}

#[test]
fn all_namespaces_get_a_cluster_role_and_a_list_gets_roles_and_the_flag() {
    let all = render(&[]);
    assert_eq!(
        names_ns(&all, "ClusterRoleBinding"),
        vec![
            (String::new(), "stowage".to_owned()),
            (String::new(), "stowage-cluster".to_owned())
        ]
    );
    assert!(!args(&all).iter().any(|a| a.starts_with("--namespaces")));
    // Only the leader-election Role, in the release namespace.
    assert_eq!(
        names_ns(&all, "Role"),
        vec![(
            "stowage-system".to_owned(),
            "stowage-leader-election".to_owned()
        )]
    );

    let some = render(&["--set", "watchNamespaces={web,shop}"]);
    // Only the cluster-scoped part (BackupPlugins, namespace labels, the webhook).
    assert_eq!(
        names_ns(&some, "ClusterRoleBinding"),
        vec![(String::new(), "stowage-cluster".to_owned())]
    );
    assert!(
        !of_kind(&some, "ClusterRole")
            .iter()
            .any(|r| r["metadata"]["name"] == "stowage"),
        "no cluster-wide operator role when namespaces are listed"
    );
    assert_eq!(
        names_ns(&some, "RoleBinding"),
        vec![
            ("shop".to_owned(), "stowage".to_owned()),
            (
                "stowage-system".to_owned(),
                "stowage-leader-election".to_owned()
            ),
            ("web".to_owned(), "stowage".to_owned()),
        ]
    );
    assert!(args(&some).contains(&"--namespaces=shop,web".to_owned()));
    for binding in of_kind(&some, "RoleBinding") {
        assert_eq!(binding["subjects"][0]["name"], "stowage");
        assert_eq!(binding["subjects"][0]["namespace"], "stowage-system");
    }
}

#[test]
fn the_runner_service_account_is_created_in_each_watched_and_listed_namespace() {
    let docs = render(&[
        "--set",
        "watchNamespaces={shop,web}",
        "--set",
        "runner.serviceAccount.namespaces={batch,shop}",
    ]);
    let runners: Vec<_> = of_kind(&docs, "ServiceAccount")
        .into_iter()
        .filter(|sa| sa["metadata"]["name"] == "stowage-runner")
        .collect();
    let namespaces: Vec<_> = runners
        .iter()
        .map(|sa| sa["metadata"]["namespace"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(namespaces, ["batch", "shop", "web"]);
    for sa in runners {
        assert_eq!(
            sa["automountServiceAccountToken"], false,
            "runner pods get no API token"
        );
    }
    assert!(args(&docs).contains(&"--runner-service-account=stowage-runner".to_owned()));
    let none = render(&[
        "--set",
        "runner.serviceAccount.create=false",
        "--set",
        "watchNamespaces={shop}",
    ]);
    assert!(
        !of_kind(&none, "ServiceAccount")
            .iter()
            .any(|sa| sa["metadata"]["name"] == "stowage-runner")
    );
}

#[test]
fn the_deployment_is_restricted_probed_and_configured_from_values() {
    let docs = render(&[
        "--set",
        "image.tag=9.9.9",
        "--set",
        "logFormat=text",
        "--set",
        "allowedPlugins={postgres,http}",
        "--set",
        "metrics.port=9191",
        "--set",
        "runner.job.backoffLimit=4",
        "--set",
        "nodeSelector.disk=ssd",
        "--set",
        "extraArgs={--lease-duration-seconds=30}",
        "--set",
        "extraEnv[0].name=FOO,extraEnv[0].value=bar",
    ]);
    let c = container(&docs);
    assert_eq!(c["image"], "ghcr.io/stowage-dev/stowage:9.9.9");
    let a = args(&docs);
    assert_eq!(a[0], "controller");
    for expected in [
        "--allowed-plugins=postgres,http",
        "--log-format=text",
        "--bind-address=0.0.0.0:9191",
        "--job-backoff-limit=4",
        "--runner-image=ghcr.io/stowage-dev/stowage:9.9.9",
        "--leader-election=true",
        "--lease-namespace=stowage-system",
        "--lease-duration-seconds=30",
    ] {
        assert!(
            a.contains(&expected.to_owned()),
            "missing {expected} in {a:?}"
        );
    }
    assert_eq!(c["ports"][0]["containerPort"], 9191);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["nodeSelector"]["disk"], "ssd");
    assert!(c["resources"]["limits"]["memory"].is_string());
    let env: Vec<_> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert!(env.contains(&Value::from("POD_NAMESPACE")) && env.contains(&Value::from("FOO")));
    // The default tag is the chart's appVersion.
    let chart = std::fs::read_to_string(repo().join(CHART).join("Chart.yaml")).expect("Chart.yaml");
    let chart: Value = serde_yaml_ng::from_str(&chart).expect("Chart.yaml parses");
    let default_image = container(&render(&[]))["image"].clone();
    assert_eq!(
        default_image,
        format!(
            "ghcr.io/stowage-dev/stowage:{}",
            chart["appVersion"].as_str().expect("appVersion")
        )
    );
    let pinned = render(&["--set", &format!("image.digest=sha256:{}", "a".repeat(64))]);
    assert_eq!(
        container(&pinned)["image"],
        format!("ghcr.io/stowage-dev/stowage@sha256:{}", "a".repeat(64))
    );
}

#[test]
fn several_replicas_get_a_pdb_and_require_leader_election() {
    assert!(of_kind(&render(&[]), "PodDisruptionBudget").is_empty());
    let docs = render(&["--set", "replicas=2"]);
    assert_eq!(one(&docs, "Deployment")["spec"]["replicas"], 2);
    assert_eq!(one(&docs, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
    let err = render_err(&[
        "--set",
        "replicas=2",
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(err.contains("leaderElection.enabled=true"), "{err}");
    let single = render(&["--set", "leaderElection.enabled=false"]);
    assert!(args(&single).contains(&"--leader-election=false".to_owned()));
    assert!(
        !names_ns(&single, "Role")
            .iter()
            .any(|(_, n)| n.ends_with("leader-election"))
    );
}

#[test]
fn monitoring_objects_need_their_api_and_scrape_the_metrics_service() {
    let err = render_err(&["--set", "metrics.serviceMonitor.enabled=true"]);
    assert!(
        err.contains("--api-versions monitoring.coreos.com/v1/ServiceMonitor"),
        "{err}"
    );
    let err = render_err(&["--set", "metrics.prometheusRule.enabled=true"]);
    assert!(err.contains("PrometheusRule"), "{err}");
    assert!(of_kind(&render(&[]), "ServiceMonitor").is_empty());

    let docs = render(MATRIX[4]);
    let sm = one(&docs, "ServiceMonitor");
    let svc = of_kind(&docs, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "stowage-metrics")
        .expect("the metrics Service");
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(sm["spec"]["endpoints"][0]["honorLabels"], true);
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "ServiceMonitor selects the Service"
        );
    }
    let rule = one(&docs, "PrometheusRule");
    let alerts: Vec<_> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["alert"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        alerts,
        [
            "StowageBackupFailed",
            "StowageNoRecentBackup",
            "StowageScheduleNotReady",
            "StowageReconcileErrors"
        ]
    );
    let dashboard = one(&docs, "ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value =
        serde_json::from_str(dashboard["data"]["stowage.json"].as_str().expect("json"))
            .expect("the dashboard is valid JSON");
    let exprs = json["panels"].to_string();
    for metric in [
        "stowage_backup_last_success_timestamp_seconds",
        "stowage_backup_runs_total",
        "stowage_backup_duration_seconds_bucket",
        "stowage_backup_artifact_bytes",
        "stowage_schedule_next_run_timestamp_seconds",
        "stowage_reconcile_errors_total",
    ] {
        assert!(exprs.contains(metric), "dashboard does not chart {metric}");
    }
    let np = one(&docs, "NetworkPolicy");
    assert_eq!(
        np["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
}

/// The metric names the chart's alerts and dashboard use are the ones the controller
/// exports (read from its source, so a rename breaks this test, not production alerts).
#[test]
fn alerts_and_dashboard_use_metrics_the_controller_exports() {
    let source = std::fs::read_to_string(repo().join("src/controller/metrics.rs"))
        .expect("src/controller/metrics.rs");
    for metric in [
        "stowage_backup_runs",
        "stowage_backup_last_success_timestamp_seconds",
        "stowage_backup_duration_seconds",
        "stowage_backup_artifact_bytes",
        "stowage_schedule_next_run_timestamp_seconds",
        "stowage_reconcile_errors",
    ] {
        assert!(
            source.contains(&format!("\"{metric}\"")),
            "the controller no longer registers {metric}; update the chart's alerts and dashboard"
        );
    }
}

/// The alert rules are valid PromQL and fire when they should (`promtool test rules`).
#[test]
fn alert_rules_pass_promtool_unit_tests() {
    let docs = render(MATRIX[4]);
    let rule = one(&docs, "PrometheusRule");
    let dir = tempfile::tempdir().expect("temp dir");
    let rules_file = dir.path().join("rules.yaml");
    let rules = serde_json::json!({ "groups": rule["spec"]["groups"] });
    std::fs::write(&rules_file, serde_yaml_ng::to_string(&rules).expect("yaml")).expect("write");
    let tests_src = repo().join("tests/chart/alerts.test.yaml");
    std::fs::copy(&tests_src, dir.path().join("alerts.test.yaml")).expect("copy alert tests");
    let promtool = |args: &[&str]| {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("promtool not found: apt-get install prometheus (tests/install-deps.sh does)");
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    promtool(&["check", "rules", "rules.yaml"]);
    promtool(&["test", "rules", "alerts.test.yaml"]);
}

/// `kubectl` from the local control plane's binaries (`$KUBECTL`, else the cache).
fn kubectl_bin() -> PathBuf {
    if let Some(k) = std::env::var_os("KUBECTL") {
        return PathBuf::from(k);
    }
    helm_bin().with_file_name("kubectl")
}

fn kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new(kubectl_bin())
        .args(["kustomize", dir])
        .current_dir(repo())
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_docs(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn crds_kustomization_lists_every_generated_crd() {
    let text =
        std::fs::read_to_string(repo().join("crds/Kustomization")).expect("crds/Kustomization");
    let k: Value = serde_yaml_ng::from_str(&text).expect("crds/Kustomization parses");
    let mut listed: Vec<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    listed.sort();
    let mut files: Vec<String> = std::fs::read_dir(repo().join("crds"))
        .expect("crds/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(
        listed, files,
        "crds/Kustomization must list exactly the CRD files in crds/"
    );
}

#[test]
fn the_kustomize_install_matches_the_chart_and_grants_no_secrets() {
    let docs = kustomize("deploy");
    let mut kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Deployment",
            "Namespace",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    // The CRDs are the generated ones, unchanged.
    for crd in of_kind(&docs, "CustomResourceDefinition") {
        let name = crd["metadata"]["name"].as_str().expect("name");
        let text =
            std::fs::read_to_string(repo().join(format!("crds/{name}.yaml"))).expect("crd file");
        let mut expected = parse_docs(&text).remove(0);
        expected["metadata"]["labels"] =
            serde_json::json!({"app.kubernetes.io/part-of": "stowage"});
        assert_eq!(
            numbers_as_f64((*crd).clone()),
            numbers_as_f64(expected),
            "{name}"
        );
    }
    // Same operator permissions as the chart, and so no Secrets either.
    let chart = render(&[]);
    let chart_role = |name: &str| {
        of_kind(&chart, "ClusterRole")
            .into_iter()
            .find(|r| r["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("chart ClusterRole {name}"))
    };
    let kustomize_role = |name: &str| {
        of_kind(&docs, "ClusterRole")
            .into_iter()
            .find(|r| r["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("kustomize ClusterRole {name}"))
    };
    assert_eq!(
        kustomize_role("stowage-controller")["rules"],
        chart_role("stowage")["rules"]
    );
    assert_eq!(
        kustomize_role("stowage-controller-cluster")["rules"],
        chart_role("stowage-cluster")["rules"]
    );
    // Users' access through the default roles: the same in both.
    for (kustomize, chart) in [
        ("stowage-edit", "stowage-edit"),
        ("stowage-view", "stowage-view"),
    ] {
        assert_eq!(
            kustomize_role(kustomize)["rules"],
            chart_role(chart)["rules"],
            "{kustomize}"
        );
        assert_eq!(
            kustomize_role(kustomize)["metadata"]["labels"]
                .as_object()
                .map(|l| l.keys().filter(|k| k.starts_with("rbac.")).count()),
            chart_role(chart)["metadata"]["labels"]
                .as_object()
                .map(|l| l.keys().filter(|k| k.starts_with("rbac.")).count()),
            "{kustomize}: aggregated to the same default roles"
        );
    }
    assert_eq!(
        one(&docs, "Role")["rules"],
        of_kind(&chart, "Role")[0]["rules"],
        "leader-election Role"
    );
    let sa = one(&docs, "ServiceAccount");
    assert_eq!(sa["metadata"]["namespace"], "stowage-system");
    for binding in of_kind(&docs, "ClusterRoleBinding") {
        assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    }
    // The Deployment runs the chart's default flags and security settings.
    let kargs: Vec<String> = container(&docs)["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let chart_args = args(&chart);
    for a in &kargs {
        assert!(
            chart_args.contains(a),
            "kustomize flag {a} differs from the chart's defaults {chart_args:?}"
        );
    }
    assert!(
        kargs[1].starts_with("--runner-image="),
        "tests/chart/install.sh patches args[1]: {kargs:?}"
    );
    assert_eq!(
        container(&docs)["securityContext"],
        container(&chart)["securityContext"]
    );
    assert_eq!(container(&docs)["image"], container(&chart)["image"]);
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"],
        one(&chart, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    );
}

/// Install, upgrade and uninstall on a real control plane with a real node (the stowage
/// image built from the binary cargo built and imported), plus `kubectl apply -k deploy/`;
/// each runs the operator and completes a backup. Needs the stowage binary, so it runs
/// after `cargo build`.
#[test]
fn chart_and_kustomize_install_on_a_local_control_plane() {
    let script = repo().join("tests/chart/install.sh");
    // The binary cargo built for this test run.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_stowage"))
        .parent()
        .expect("binary directory")
        .to_path_buf();
    // Captured, not inherited: the script's own summary line must not be counted as
    // test results by tests/run.sh.
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(repo())
        .env("STOWAGE_BIN_DIR_RUST", &bin_dir)
        .output()
        .expect("run tests/chart/install.sh");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "tests/chart/install.sh failed:\n{report}"
    );
    let failures: Vec<&str> = report.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(failures.is_empty(), "{failures:?}\n{report}");
}
