//! What only a real node can show (`deploy/local/node.sh`: containerd, runc and the
//! kubelet): the backup pod's security settings really hold, a fresh claim becomes writable
//! for the runner through `fsGroup`, a tool image without its tool gives a clear condition,
//! an OOM-killed run is recorded as such, a result stays within the kubelet's 4 KiB,
//! `kubectl logs`/`exec` reach the node, and an image never built here is named on the
//! target (nothing is pulled). Each test backs up through the operator (a local process, as in
//! `operator_e2e`) with stand-in tools packed into an image of their own
//! (`deploy/local/images.sh standin-tools=DIR`), so every test controls what its pod runs.

#[path = "operator_e2e/support.rs"]
#[allow(dead_code)] // shared with tests/operator_e2e.rs, which uses the rest
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde_json::{Value, json};
use support::{Env, PG_PASSWORD, at, condition, condition_summary};

/// The probe's stand-in `psql`: a server version the plugin accepts.
const PSQL: &str = r#"#!/bin/sh
echo "150018|15.18 (stand-in server)"
"#;

/// An Env on a real node; fails clearly when the suite is pointed at the node agent.
async fn real_node_env(prefix: &str) -> Env {
    let env = Env::new(prefix, PG_PASSWORD).await;
    assert!(
        env.cluster.real_node(),
        "this suite needs a real node: unset STOWAGE_TEST_NODE (it is '{}')",
        std::env::var("STOWAGE_TEST_NODE").unwrap_or_default()
    );
    env
}

/// Writes `tools` (name, script) into a fresh directory, packs them with busybox into an
/// image, imports it into the node and returns its reference.
fn tools_image(env: &Env, tools: &[(&str, &str)]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("a temp dir");
    for (name, text) in tools {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write a stand-in tool");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make it executable");
    }
    let image = stowage_testenv::node::import_image(
        env.cluster.state_dir(),
        &format!("standin-tools={}", dir.path().display()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (dir, image)
}

/// A target of the stand-in server (nothing listens there: the stand-ins never connect).
fn standin_target(env: &Env, name: &str, image: &str, job: Value) {
    env.apply(json!({
        "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": name},
        "spec": {
            "postgres": {
                "host": env.cluster.pod_host(),
                "port": 5432,
                "username": "backup",
                "database": "shop",
                "passwordSecretRef": {
                    "name": stowage_testenv::postgres::SECRET_NAME,
                    "key": stowage_testenv::postgres::SECRET_KEY,
                },
                "image": image,
            },
            "storage": {"claimName": support::CLAIM},
            "compression": "none",
            "job": job
        }
    }));
}

/// Requests an on-demand backup of `name` with `token` and waits until it is recorded.
async fn backup_now(env: &Env, name: &str, token: &str) -> Value {
    env.kubectl(&[
        "annotate",
        "backuptarget",
        name,
        &format!("stowage.dev/backup-now={token}"),
        "--overwrite",
    ]);
    let token = token.to_owned();
    env.wait_target(&format!("backup {token} of {name}"), name, move |t| {
        let last = &t["status"]["lastBackup"];
        if t["status"]["lastHandledBackupNow"] == token.as_str() && last["outcome"].is_string() {
            Ok(())
        } else {
            Err(format!(
                "lastBackup = {last}; {}",
                condition_summary(t, "LastBackupSucceeded")
            ))
        }
    })
    .await
}

/// The single artifact (not a sidecar) under `dir`.
fn only_artifact(dir: &Path) -> std::path::PathBuf {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().ends_with(".meta.json") {
                found.push(p);
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "one artifact under {}: {found:?}",
        dir.display()
    );
    found.remove(0)
}

/// The backup pod runs as uid 65532 with no capabilities, seccomp on, no privilege
/// escalation and a read-only root file system (a world-writable directory of the image
/// refuses a write); the fresh claim, a root-owned directory, is writable to it only
/// through `fsGroup`, and what it writes keeps the group.
#[tokio::test]
async fn the_backup_pod_runs_confined_and_writes_only_its_claim() {
    let mut env = real_node_env("node-confined").await;
    let claim_root = env.cluster.claim_dir(env.name(), support::CLAIM);
    let fresh = std::fs::metadata(&claim_root).expect("the claim's directory");
    assert_eq!(
        (fresh.uid(), fresh.gid(), fresh.mode() & 0o7777),
        (0, 0, 0o755),
        "a fresh local volume is root's and closed to others"
    );
    // Its output is the artifact (compression none): what the pod saw, line by line.
    let pg_dump = r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 15.18"; exit 0; fi
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
if touch /var/tmp/write-test 2>/dev/null; then echo "rootfs=writable"; else echo "rootfs=read-only"; fi
grep -E '^(CapEff|CapPrm|Seccomp|NoNewPrivs):' /proc/self/status | tr -d '\t' | tr ':' '='
"#;
    let (_dir, image) = tools_image(&env, &[("psql", PSQL), ("pg_dump", pg_dump)]);
    standin_target(&env, "confined", &image, json!({"backoffLimit": 0}));
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    let target = backup_now(&env, "confined", "c-1").await;
    assert_eq!(
        target["status"]["lastBackup"]["outcome"], "Succeeded",
        "{}",
        target["status"]
    );
    let artifact = only_artifact(&env.target_dir("confined"));
    let seen = std::fs::read_to_string(&artifact).expect("read the artifact");
    let lines: Vec<&str> = seen.lines().collect();
    for expected in [
        "uid=65532 gid=65532 groups=65532",
        "rootfs=read-only",
        "CapPrm=0000000000000000",
        "CapEff=0000000000000000",
        "NoNewPrivs=1",
        "Seccomp=2",
    ] {
        assert!(
            lines.contains(&expected),
            "the backup pod saw {lines:?}, expected {expected:?}"
        );
    }
    // fsGroup: the claim's root became group 65532, group-writable and setgid, and the
    // artifact keeps the group.
    let root = std::fs::metadata(&claim_root).expect("the claim's directory");
    assert_eq!(root.gid(), 65532, "claim root group");
    assert_eq!(
        root.mode() & 0o2070,
        0o2070,
        "claim root is setgid and group rwx: {:o}",
        root.mode()
    );
    let file = std::fs::metadata(&artifact).expect("the artifact");
    assert_eq!((file.uid(), file.gid()), (65532, 65532), "artifact owner");
}

/// A target whose image lacks the plugin's tools is told so, with the fix, instead of a
/// backup that fails later or a pod that crashes without a word.
#[tokio::test]
async fn a_tool_image_without_its_tool_gives_a_clear_condition() {
    let mut env = real_node_env("node-notool").await;
    let (_dir, image) = tools_image(&env, &[]);
    standin_target(&env, "no-tools", &image, json!({"backoffLimit": 0}));
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    let target = env
        .wait_target("the probe's verdict", "no-tools", |t| {
            match condition(t, "Reachable") {
                Some(c) if c["status"] == "False" => Ok(()),
                _ => Err(condition_summary(t, "Reachable")),
            }
        })
        .await;
    let probe = condition(&target, "Reachable").expect("Reachable");
    let message = probe["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not found in the image") && message.contains("spec.postgres.image"),
        "the condition names the missing tool and the fix: {probe}"
    );
    assert_eq!(
        target["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| c["status"].clone()),
        Some(json!("False")),
        "{}",
        target["status"]
    );
}

/// A runner killed by the kernel for exceeding its memory limit leaves no result; the
/// run is recorded as failed with the kubelet's reason, OOMKilled, not as a success and
/// not without a word. The stand-in makes the runner the kernel's first choice
/// (`oom_score_adj` 1000, which any process may raise for its own user) and then fills
/// the container's memory.
#[tokio::test]
async fn an_oom_killed_runner_is_recorded_as_such() {
    let mut env = real_node_env("node-oom").await;
    let pg_dump = r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 15.18"; exit 0; fi
echo 1000 > "/proc/$PPID/oom_score_adj"
x=$(head -c 400000000 /dev/zero | tr '\0' x)
echo "still alive after ${#x} bytes"
"#;
    let (_dir, image) = tools_image(&env, &[("psql", PSQL), ("pg_dump", pg_dump)]);
    standin_target(
        &env,
        "greedy",
        &image,
        json!({
            "backoffLimit": 0,
            "resources": {"limits": {"memory": "96Mi"}, "requests": {"memory": "96Mi"}}
        }),
    );
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    let target = backup_now(&env, "greedy", "oom-1").await;
    let last = &target["status"]["lastBackup"];
    assert_eq!(last["outcome"], "Failed", "{last}");
    assert_eq!(last["reason"], "OOMKilled", "{last}");
    let message = last["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.job.resources.limits.memory"),
        "the message names the fix: {last}"
    );
    assert!(
        env.sidecars("greedy").is_empty(),
        "no artifact is published for a killed run"
    );
}

/// The kubelet keeps at most 4096 bytes of a termination message, its tail. A result
/// that would be longer (here: a server version of 6,000 characters, which becomes a
/// fact, and a tool error of 400 lines) is bounded by the runner so that what the kubelet
/// keeps is the whole result: the success is recorded as a success, and a long failure
/// keeps the reason a short one gets, with the tool's words.
#[tokio::test]
async fn results_longer_than_the_kubelet_keeps_are_bounded_and_still_read() {
    let mut env = real_node_env("node-longmsg").await;
    let psql = format!(
        "#!/bin/sh\necho \"150018|15.18 (stand-in server {})\"\n",
        "y".repeat(6000)
    );
    let pg_dump = r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 15.18"; exit 0; fi
case "$PGDATABASE" in
  ok) echo "-- stand-in dump"; exit 0 ;;
  short) echo "pg_dump: error: LONGMSG-HEAD the dump failed" >&2; exit 1 ;;
esac
echo "pg_dump: error: LONGMSG-HEAD the dump failed" >&2
i=0
while [ $i -lt 400 ]; do
  echo "pg_dump: detail $i: $(head -c 60 /dev/zero | tr '\0' 'y')" >&2
  i=$((i + 1))
done
echo "pg_dump: error: LONGMSG-TAIL giving up" >&2
exit 1
"#;
    let (_dir, image) = tools_image(&env, &[("psql", &psql), ("pg_dump", pg_dump)]);
    for (name, database) in [("big", "ok"), ("long", "long"), ("short", "short")] {
        env.apply(json!({
            "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
            "metadata": {"name": name},
            "spec": {
                "postgres": {
                    "host": env.cluster.pod_host(), "port": 5432, "username": "backup",
                    "database": database, "image": image,
                    "passwordSecretRef": {
                        "name": stowage_testenv::postgres::SECRET_NAME,
                        "key": stowage_testenv::postgres::SECRET_KEY,
                    },
                },
                "storage": {"claimName": support::CLAIM},
                "compression": "none",
                "job": {"backoffLimit": 0}
            }
        }));
    }
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    let big = backup_now(&env, "big", "big-1").await;
    let long = backup_now(&env, "long", "long-1").await;
    let short = backup_now(&env, "short", "short-1").await;
    let big = &big["status"]["lastBackup"];
    assert_eq!(big["outcome"], "Succeeded", "{big}");
    let (long, short) = (
        &long["status"]["lastBackup"],
        &short["status"]["lastBackup"],
    );
    assert_eq!(long["outcome"], "Failed", "{long}");
    assert_eq!(
        long["reason"], short["reason"],
        "a long failure keeps the reason a short one gets: {long} vs {short}"
    );
    assert!(
        long["message"]
            .as_str()
            .unwrap_or_default()
            .contains("LONGMSG"),
        "the tool's words are recorded: {long}"
    );
    // What the kubelet recorded is the runner's result, whole: it parses as JSON.
    for (last, outcome) in [(big, "ok"), (long, "failed")] {
        let pods: Value = serde_json::from_str(&env.kubectl(&[
            "get",
            "pods",
            "-l",
            &format!("job-name={}", last["job"].as_str().unwrap_or_default()),
            "-o",
            "json",
        ]))
        .expect("pods as JSON");
        let terminated = pods["items"][0]["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "run")
            .map(|c| c["state"]["terminated"].clone())
            .expect("the run container terminated");
        let text = terminated["message"].as_str().unwrap_or_default();
        assert!(
            text.len() <= 4096,
            "within the kubelet's limit: {} bytes",
            text.len()
        );
        let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| {
            panic!("the termination message is the whole result ({e}): {text}")
        });
        assert_eq!(parsed["outcome"], outcome, "{parsed}");
    }
}

/// Starts pod `name` of `image` running `command` and waits until it is Ready.
fn running_pod(env: &Env, name: &str, image: &str, command: Value) {
    env.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{"name": "main", "image": image, "command": command}],
        }
    }));
    env.kubectl(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{name}"),
        "--timeout=120s",
    ]);
}

/// The kubelet's API works through the API server: `kubectl logs` and `kubectl exec`
/// reach a container that runs in containerd (its ID says so).
#[tokio::test]
async fn kubectl_logs_and_exec_reach_a_container_of_the_node() {
    let env = real_node_env("node-kubectl").await;
    let (_dir, image) = tools_image(&env, &[]);
    running_pod(
        &env,
        "shell",
        &image,
        json!(["/bin/sh", "-c", "echo hello-from-the-pod; exec sleep 600"]),
    );
    let id = env.kubectl(&[
        "get",
        "pod",
        "shell",
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ]);
    assert!(id.starts_with("containerd://"), "container ID {id}");
    let logs = env.kubectl(&["logs", "shell"]);
    assert_eq!(logs.trim(), "hello-from-the-pod");
    // Not env.kubectl: its `-n` would land after `--`, in the container's command.
    let answer = env
        .cluster
        .kubectl_output(&[
            "exec",
            "-n",
            env.name(),
            "shell",
            "--",
            "/bin/sh",
            "-c",
            "echo $((6 * 7))",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer.trim(), "42");
}

/// Nothing is pulled: a target whose image was never built here shows the kubelet's
/// pull failure, naming the image, on the target at once.
#[tokio::test]
async fn an_image_never_built_is_named_on_the_target() {
    let mut env = real_node_env("node-noimage").await;
    let missing = "localhost/stowage-never-built:1";
    standin_target(&env, "nowhere", missing, json!({"backoffLimit": 0}));
    // On the real clock (no fake time): a pod that cannot start is stopped after 300 s
    // of the operator's clock, which a fake time a year ahead would make at once.
    env.start_operator();
    let target = env
        .wait_target(
            "the pull failure on the target",
            "nowhere",
            |t| match condition(t, "Reachable") {
                Some(c)
                    if c["status"] == "False"
                        && matches!(
                            c["reason"].as_str(),
                            Some("ErrImagePull" | "ImagePullBackOff")
                        ) =>
                {
                    Ok(())
                }
                _ => Err(condition_summary(t, "Reachable")),
            },
        )
        .await;
    let reachable = condition(&target, "Reachable").expect("Reachable");
    assert!(
        reachable["message"]
            .as_str()
            .unwrap_or_default()
            .contains(missing),
        "the condition names the image: {reachable}"
    );
}

/// Pod traffic stays inside the namespaces the test run made: a pod reaches a server of
/// this host on the host's end of the node's link, and not the same server on the host's
/// other addresses.
#[tokio::test]
async fn pods_reach_the_hosts_end_of_the_link_and_nothing_else() {
    let env = real_node_env("node-net").await;
    let server = std::net::TcpListener::bind("0.0.0.0:0").expect("bind a server");
    let port = server.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for stream in server.incoming().flatten() {
            let mut stream = stream;
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            );
        }
    });
    // The host's addresses other than the link's (where its default route leaves).
    let route = std::process::Command::new("ip")
        .args(["-4", "route", "get", "192.0.2.123"])
        .output()
        .expect("ip route get");
    let route = String::from_utf8_lossy(&route.stdout).into_owned();
    let other = route
        .split_whitespace()
        .skip_while(|w| *w != "src")
        .nth(1)
        .map(str::to_owned);
    let (_dir, image) = tools_image(&env, &[]);
    running_pod(&env, "client", &image, json!(["sleep", "600"]));
    // busybox nc (its static wget crashes resolving names); a connection that cannot be
    // made prints nothing.
    let fetch = |host: &str| {
        env.cluster
            .kubectl_output(&[
                "exec",
                "-n",
                env.name(),
                "client",
                "--",
                "/bin/sh",
                "-c",
                &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}; true"),
            ])
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let link = env.cluster.pod_host().to_owned();
    let answer = fetch(&link);
    assert!(
        answer.contains("200 OK"),
        "the host's end of the link ({link}) answers: {answer:?}"
    );
    match other.filter(|ip| *ip != link) {
        Some(ip) => {
            let answer = fetch(&ip);
            assert!(
                !answer.contains("200 OK"),
                "the host's address {ip} must be out of the pods' reach: {answer:?}"
            );
        }
        None => eprintln!("no other host address to try (route: {route})"),
    }
}
