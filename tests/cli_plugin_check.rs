//! `stowage plugin check` on real plugin processes (shell scripts written by the test):
//! a well-behaved plugin passes every check; each way of breaking the protocol fails the
//! check that names it, and only that one; the secret given on the command line never
//! appears in the command's output.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const PASSWORD: &str = "check-Pw-4471-hunter2";

const MANIFEST: &str = r#"
apiVersion: stowage.dev/v1alpha1
kind: BackupPlugin
metadata:
  name: toy.example.com
spec:
  image: registry.example.com/toy@sha256:0123456789abcdef
  command: ["/plugin/toy.sh"]
  version: "0.3.0"
  description: A file that stands in for a service
  capabilities: {backup: true, restore: true, probe: true}
  artifact: {extension: txt, contentType: text/plain}
  configSchema:
    type: object
    required: [path, passwordSecretRef]
    properties:
      path:
        type: string
        description: The file that holds the service's data.
      passwordSecretRef:
        type: object
        required: [name, key]
        properties:
          name: {type: string}
          key: {type: string}
"#;

/// A plugin whose "service" is the file named by `path`, guarded by `PASSWORD`: backup
/// cats it, restore writes it, inspect says whether it holds data. `{leak}`, `{auth}` and
/// `{unknown}` are replaced to break it.
const PLUGIN: &str = r#"#!/bin/sh
set -eu
file=$(printf '%s' "$STOWAGE_CONFIG" | sed 's/.*"path":"\([^"]*\)".*/\1/')
{leak}
if [ "$STOWAGE_SECRET_PASSWORDSECRETREF" != "check-Pw-4471-hunter2" ]; then
  {auth}
fi
case "$1" in
probe) printf '{"message":"service file %s is there"}' "$file" > "$STOWAGE_REPORT" ;;
backup) cat "$file"; printf '{"facts":{"bytes":"%s"}}' "$(wc -c < "$file" | tr -d ' ')" > "$STOWAGE_REPORT" ;;
inspect) if [ -s "$file" ]; then h=true; else h=false; fi
         printf '{"holdsData":%s,"description":"file %s"}' "$h" "$file" > "$STOWAGE_REPORT" ;;
restore) cat > "$file"; printf '{"message":"restored into %s"}' "$file" > "$STOWAGE_REPORT" ;;
*) {unknown} ;;
esac
"#;

const REFUSE: &str = r#"printf '{"error":{"kind":"Unauthorized","message":"wrong password: check passwordSecretRef"}}' > "$STOWAGE_REPORT"; exit 13"#;
const UNSUPPORTED: &str = r#"echo "unknown operation $1" >&2; exit 17"#;

fn plugin(leak: &str, auth: &str, unknown: &str) -> String {
    PLUGIN
        .replace("{leak}", leak)
        .replace("{auth}", auth)
        .replace("{unknown}", unknown)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `stowage plugin check` of `script` against a source file with data and an empty
/// destination.
fn check(dir: &Path, script: &str) -> Run {
    let script_path = dir.join("toy.sh");
    std::fs::write(&script_path, script).unwrap();
    std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("backupplugin.yaml"), MANIFEST).unwrap();
    let source = dir.join("source.txt");
    std::fs::write(&source, "line one\nline two\n").unwrap();
    let destination = dir.join("destination.txt");
    let _ = std::fs::remove_file(&destination);
    let config = |path: &Path| {
        serde_json::json!({
            "path": path.to_string_lossy(),
            "passwordSecretRef": {"name": "toy", "key": "password"}
        })
        .to_string()
    };
    std::fs::write(dir.join("config.json"), config(&source)).unwrap();
    std::fs::write(dir.join("restore.json"), config(&destination)).unwrap();
    std::fs::write(dir.join("password"), format!("{PASSWORD}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stowage"))
        .current_dir(dir)
        .args(["plugin", "check", "--manifest", "backupplugin.yaml"])
        .args([
            "--config",
            "config.json",
            "--restore-config",
            "restore.json",
        ])
        .args([
            "--secret",
            "toy/password=@password",
            "--timeout-seconds",
            "30",
        ])
        .arg("--command")
        .arg(format!("sh {}", script_path.display()))
        .output()
        .unwrap();
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains(PASSWORD), "the secret leaked:\n{text}");
    }
    run
}

/// The status each check printed, by name.
fn statuses(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let status = words.next()?;
            ["PASS", "FAIL", "SKIP"]
                .contains(&status)
                .then(|| (words.next().unwrap_or("").to_owned(), status.to_owned()))
        })
        .collect()
}

const ALL: [&str; 10] = [
    "manifest",
    "config",
    "restore-config",
    "probe",
    "backup",
    "secret-canary",
    "wrong-secret",
    "unknown-operation",
    "inspect",
    "round-trip",
];

#[test]
fn a_well_behaved_plugin_passes_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let run = check(dir.path(), &plugin("", REFUSE, UNSUPPORTED));
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let expected: Vec<(String, String)> = ALL
        .iter()
        .map(|n| (n.to_string(), "PASS".to_owned()))
        .collect();
    assert_eq!(statuses(&run.stdout), expected, "{}", run.stdout);
    assert!(
        run.stdout.contains("failed with Unauthorized (exit 13)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .ends_with("10 checks: 10 passed, 0 failed, 0 skipped\n"),
        "{}",
        run.stdout
    );
    let restored = std::fs::read_to_string(dir.path().join("destination.txt")).unwrap();
    assert_eq!(restored, "line one\nline two\n");
}

#[test]
fn each_broken_plugin_fails_the_check_that_names_its_fault() {
    let cases = [
        (
            "echoes its secret to stderr",
            plugin(
                r#"echo "connecting with $STOWAGE_SECRET_PASSWORDSECRETREF" >&2"#,
                REFUSE,
                UNSUPPORTED,
            ),
            "secret-canary",
            "passwordSecretRef (STOWAGE_SECRET_PASSWORDSECRETREF) appeared in the stderr of probe",
        ),
        (
            "puts its secret in the report",
            plugin(
                "",
                r#"printf '{"error":{"kind":"Unauthorized","message":"password %s refused"}}' "$STOWAGE_SECRET_PASSWORDSECRETREF" > "$STOWAGE_REPORT"; exit 13"#,
                UNSUPPORTED,
            ),
            "secret-canary",
            "appeared in the report of probe",
        ),
        (
            "accepts any password",
            plugin("", ":", UNSUPPORTED),
            "wrong-secret",
            "succeeded with canary secret values",
        ),
        (
            "takes an unknown operation for done",
            plugin("", REFUSE, r#"printf '{}' > "$STOWAGE_REPORT""#),
            "unknown-operation",
            "exited 0",
        ),
    ];
    for (what, script, failing, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let run = check(dir.path(), &script);
        assert_eq!(run.code, Some(1), "{what}:\n{}\n{}", run.stdout, run.stderr);
        let expected: Vec<(String, String)> = ALL
            .iter()
            .map(|n| {
                let status = if *n == failing { "FAIL" } else { "PASS" };
                (n.to_string(), status.to_owned())
            })
            .collect();
        assert_eq!(statuses(&run.stdout), expected, "{what}:\n{}", run.stdout);
        assert!(run.stdout.contains(says), "{what}:\n{}", run.stdout);
        assert!(run.stdout.contains("1 failed"), "{what}:\n{}", run.stdout);
    }
}

#[test]
fn a_refused_manifest_and_a_config_off_its_schema_are_reported_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    // Written into the script: if it ran, this file would exist.
    let ran = dir.path().join("ran");
    let script = format!("#!/bin/sh\ntouch {}\nexit 0\n", ran.display());
    let bad_manifest = MANIFEST
        .replace("toy.example.com", "toy")
        .replace("type: object\n    required", "type: string\n    required");
    std::fs::write(dir.path().join("toy.sh"), &script).unwrap();
    std::fs::write(dir.path().join("backupplugin.yaml"), bad_manifest).unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"pth": "x"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stowage"))
        .current_dir(dir.path())
        .args(["plugin", "check", "--manifest", "backupplugin.yaml"])
        .args(["--config", "config.json", "--command", "sh toy.sh"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  manifest"), "{stdout}");
    assert!(
        stdout.contains("metadata.name: \"toy\" has no dot"),
        "{stdout}"
    );
    assert!(stdout.contains("spec.configSchema"), "{stdout}");
    assert!(stdout.contains("SKIP  config"), "{stdout}");
    assert!(
        !ran.exists(),
        "the plugin ran although its manifest is refused"
    );

    std::fs::write(dir.path().join("backupplugin.yaml"), MANIFEST).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stowage"))
        .current_dir(dir.path())
        .args(["plugin", "check", "--manifest", "backupplugin.yaml"])
        .args(["--config", "config.json", "--command", "sh toy.sh"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("PASS  manifest"), "{stdout}");
    assert!(stdout.contains("FAIL  config"), "{stdout}");
    assert!(stdout.contains("spec.external.config"), "{stdout}");
    assert!(stdout.contains("pth"), "{stdout}");
    assert!(
        !ran.exists(),
        "the plugin ran although its config is refused"
    );
}

#[test]
fn a_malformed_secret_flag_is_an_error_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("backupplugin.yaml"), MANIFEST).unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stowage"))
        .current_dir(dir.path())
        .args(["plugin", "check", "--manifest", "backupplugin.yaml"])
        .args(["--config", "config.json", "--secret", "no-slash=value-9x"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("--secret"), "{stderr}");
    assert!(!stderr.contains("value-9x"), "{stderr}");
}
