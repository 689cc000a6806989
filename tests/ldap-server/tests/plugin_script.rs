//! The example LDAP plugin (`examples/plugins/ldap/ldap.sh`) driven as the stowage runner
//! drives an external plugin (protocol 1): a clean environment with the STOWAGE_*
//! variables, the operation as the one argument, the artifact on stdout (backup) or stdin
//! (restore), a JSON report in the file named by STOWAGE_REPORT, the error kind as the
//! exit code. Against real slapd servers on loopback.
//!
//! The script runs under busybox's `sh`, the shell of the plugin's image
//! (`deploy/local/images.sh build ldap-plugin`), except in one test that executes it by
//! its `#!/bin/sh` line with the host's shell.
//!
//! With `STOWAGE_LDAP_PLUGIN_ROOTFS` set to the unpacked root file system of that image
//! (root only), every run is the image's own `/plugin/ldap.sh` instead, as user 65532 in
//! a chroot of it (private mount namespace, `/dev` and the run's directory bound in):
//! the same tests then prove the image carries every tool and library the script needs.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use stowage_test_ldap::{LdapServer, ROOT_DN, SUFFIX, free_port, scratch_dir, seed};

/// A password no tool output would contain by chance: quotes, a dollar sign, spaces and a
/// backslash also catch a script that quotes it wrong.
const PASSWORD: &str = "Ld4p \"root\" $HOME \\ pw-7QxZ31";
/// The wrong one, as distinctive.
const WRONG_PASSWORD: &str = "Wr0ng 'guess' $PATH-9KpV02";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/ldap/ldap.sh")
}

/// What one run of the plugin left.
struct Outcome {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
    /// The report file's text ("" when the plugin wrote none).
    report_text: String,
    /// TMPDIR of the run: the script must leave nothing in it.
    tmpdir: PathBuf,
    /// The run's directory (removed on drop).
    dir: PathBuf,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Outcome {
    fn report(&self) -> Value {
        serde_json::from_str(&self.report_text).unwrap_or_else(|e| {
            panic!(
                "the report is not JSON ({e}): {:?}\nstderr: {}",
                self.report_text, self.stderr
            )
        })
    }

    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "exit {}\nreport: {}\nstderr: {}",
            self.code, self.report_text, self.stderr
        )
    }

    /// The run failed with `code`, and its report's error has `kind` and a message that
    /// contains `mentions`.
    fn assert_error(&self, code: i32, kind: &str, mentions: &str) {
        assert_eq!(self.code, code, "{}", self.describe());
        let report = self.report();
        assert_eq!(report["error"]["kind"], kind, "{}", self.describe());
        let message = report["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(mentions),
            "the message should mention {mentions:?}: {message}"
        );
    }
}

/// One run of the plugin, as the runner does it.
struct Run<'a> {
    op: &'a str,
    config: Value,
    password: Option<&'a str>,
    stdin: Vec<u8>,
    env: Vec<(&'a str, String)>,
    /// Execute the script by its `#!` line instead of with busybox sh.
    by_shebang: bool,
}

impl<'a> Run<'a> {
    fn new(op: &'a str, config: Value) -> Run<'a> {
        Run {
            op,
            config,
            password: Some(PASSWORD),
            stdin: Vec::new(),
            env: Vec::new(),
            by_shebang: false,
        }
    }

    fn password(mut self, password: Option<&'a str>) -> Self {
        self.password = password;
        self
    }

    fn stdin(mut self, stdin: Vec<u8>) -> Self {
        self.stdin = stdin;
        self
    }

    fn env(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.env.push((name, value.into()));
        self
    }

    fn run(self) -> Outcome {
        let dir = scratch_dir("stowage-ldap-plugin-run");
        let tmpdir = dir.join("tmp");
        fs::create_dir(&tmpdir).expect("create TMPDIR");
        let report = dir.join("report.json");
        let mut cmd = if let Some(rootfs) = std::env::var_os("STOWAGE_LDAP_PLUGIN_ROOTFS") {
            use std::os::unix::fs::PermissionsExt;
            // The plugin's user writes the report and its temporary files here.
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
            fs::set_permissions(&tmpdir, fs::Permissions::from_mode(0o1777)).expect("chmod");
            let mut cmd = Command::new("unshare");
            cmd.args([
                "--mount",
                "sh",
                "-c",
                r#"set -e; mkdir -p "$0/dev" "$0$1"; mount --bind /dev "$0/dev"; mount --bind "$1" "$0$1"
                   exec chroot --userspec=65532:65532 "$0" /plugin/ldap.sh "$2""#,
            ])
            .arg(rootfs)
            .arg(&dir)
            .arg(self.op);
            cmd
        } else if self.by_shebang {
            Command::new(script())
        } else {
            let mut cmd = Command::new("busybox");
            cmd.arg("sh").arg(script());
            cmd
        };
        if std::env::var_os("STOWAGE_LDAP_PLUGIN_ROOTFS").is_none() {
            cmd.arg(self.op);
        }
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", "/tmp")
            .env("TMPDIR", &tmpdir)
            .env("LANG", "C.UTF-8")
            .env("STOWAGE_PROTOCOL", "1")
            .env("STOWAGE_OPERATION", self.op)
            .env("STOWAGE_CONFIG", self.config.to_string())
            .env("STOWAGE_REPORT", &report)
            .env("STOWAGE_NAMESPACE", "directory")
            .env("STOWAGE_TARGET", "ldap")
            .env("STOWAGE_RUN_ID", "run-1")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(password) = self.password {
            cmd.env("STOWAGE_SECRET_BINDPASSWORDSECRETREF", password);
        }
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        let mut child = cmd.spawn().expect("run busybox sh (busybox-static)");
        let mut input = child.stdin.take().expect("stdin");
        let stdin = self.stdin;
        // Fed from a thread: the script may read its stdin while writing stdout.
        let feeder = std::thread::spawn(move || {
            let _ = input.write_all(&stdin);
        });
        let out = child.wait_with_output().expect("wait for the plugin");
        let _ = feeder.join();
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            report_text: fs::read_to_string(&report).unwrap_or_default(),
            tmpdir,
            dir,
        }
    }
}

/// The facts of a backup report as STOWAGE_FACTS.
fn facts_env(backup: &Outcome) -> String {
    backup.report()["facts"].to_string()
}

#[test]
fn probe_binds_counts_and_names_the_vendor() {
    let server = LdapServer::start(PASSWORD);
    let entries = seed(&server, 20);
    let probe = Run::new("probe", server.config_json(json!({}))).run();
    assert_eq!(probe.code, 0, "{}", probe.describe());
    let report = probe.report();
    let message = report["message"].as_str().unwrap_or_default();
    assert_eq!(
        message,
        format!(
            "bound as {ROOT_DN} to {}; {entries} entries under {SUFFIX}",
            server.url()
        )
    );
    assert_eq!(report["facts"]["serverVendor"], "OpenLDAP");
    assert_eq!(report["facts"]["entries"], entries.to_string());
}

#[test]
fn probe_by_the_scripts_own_shebang_line() {
    // The host's /bin/sh (dash on Debian) instead of busybox: the script is POSIX sh.
    let server = LdapServer::start(PASSWORD);
    let entries = seed(&server, 3);
    let mut run = Run::new("probe", server.config_json(json!({"timeoutSeconds": 5})));
    run.by_shebang = true;
    let probe = run.run();
    assert_eq!(probe.code, 0, "{}", probe.describe());
    assert_eq!(probe.report()["facts"]["entries"], entries.to_string());
}

#[test]
fn backup_then_restore_into_an_empty_server_reproduces_the_tree() {
    let original = LdapServer::start(PASSWORD);
    let entries = seed(&original, 60);
    let before = original.snapshot(SUFFIX);
    assert_eq!(before.len(), entries, "the seeded tree: {before:#?}");
    // What makes the round trip worth comparing is in the tree: binary values, a DN that
    // is not ASCII, an escaped comma, UTF-8 values.
    let all: Vec<&String> = before.values().flatten().collect();
    assert!(all.iter().any(|l| l.starts_with("jpegPhoto:: ")));
    assert!(before.keys().any(|dn| dn.starts_with("dn:: ")));
    assert!(
        before
            .keys()
            .any(|dn| dn.contains("Doe\\") && dn.contains("John")),
        "{:?}",
        before.keys().collect::<Vec<_>>()
    );
    assert!(all.iter().any(|l| l.starts_with("cn:: ")));

    let inspect = Run::new("inspect", original.config_json(json!({})))
        .env("STOWAGE_RESTORE_MODE", "IntoEmpty")
        .run();
    assert_eq!(inspect.code, 0, "{}", inspect.describe());
    assert_eq!(inspect.report()["holdsData"], true);
    let description = inspect.report()["description"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        description.contains(&original.url()) && description.contains(SUFFIX),
        "{description}"
    );

    let backup = Run::new("backup", original.config_json(json!({}))).run();
    assert_eq!(backup.code, 0, "{}", backup.describe());
    let ldif = backup.stdout_text();
    assert_eq!(
        backup.report()["facts"],
        json!({"baseDn": SUFFIX, "entries": entries.to_string()})
    );
    assert_eq!(
        ldif.lines().filter(|l| l.starts_with("dn:")).count(),
        entries
    );
    // The artifact is the tree itself, not a description of it.
    assert_eq!(stowage_test_ldap::parse_ldif(&ldif), before);
    // The server's order puts the moved entry before its new parent: the restore must
    // order them itself.
    let mover = ldif
        .find("dn: uid=mover,ou=late,")
        .expect("the moved entry");
    let late = ldif.find("dn: ou=late,").expect("its new parent");
    assert!(
        mover < late,
        "the seed should make the server return a child first"
    );

    let destination = LdapServer::start(PASSWORD);
    let inspect = Run::new("inspect", destination.config_json(json!({})))
        .env("STOWAGE_RESTORE_MODE", "IntoEmpty")
        .env("STOWAGE_FACTS", facts_env(&backup))
        .run();
    assert_eq!(inspect.code, 0, "{}", inspect.describe());
    assert_eq!(
        inspect.report()["holdsData"],
        false,
        "{}",
        inspect.describe()
    );

    let restore = Run::new("restore", destination.config_json(json!({})))
        .env("STOWAGE_RESTORE_MODE", "IntoEmpty")
        .env("STOWAGE_FACTS", facts_env(&backup))
        .stdin(backup.stdout.clone())
        .run();
    assert_eq!(restore.code, 0, "{}", restore.describe());
    assert_eq!(
        restore.report()["message"],
        format!(
            "restored {entries} entries under {SUFFIX} to {}",
            destination.url()
        )
    );
    let after = destination.snapshot(SUFFIX);
    let differences = stowage_test_ldap::snapshot_differences(&before, &after);
    assert!(
        differences.is_empty(),
        "the restored tree differs:\n{}",
        differences.join("\n")
    );
    for run in [&inspect, &backup, &restore] {
        assert_eq!(
            fs::read_dir(&run.tmpdir).map(|d| d.count()).unwrap_or(0),
            0,
            "the script left files in TMPDIR"
        );
    }

    // Now the destination holds the tree: inspect says so, and a second restore into it
    // is refused before anything is added.
    let inspect = Run::new("inspect", destination.config_json(json!({})))
        .env("STOWAGE_RESTORE_MODE", "IntoEmpty")
        .run();
    assert_eq!(
        inspect.report()["holdsData"],
        true,
        "{}",
        inspect.describe()
    );
    let again = Run::new("restore", destination.config_json(json!({})))
        .env("STOWAGE_RESTORE_MODE", "IntoEmpty")
        .stdin(backup.stdout.clone())
        .run();
    again.assert_error(21, "DestinationNotEmpty", SUFFIX);
    let replace = Run::new("restore", destination.config_json(json!({})))
        .env("STOWAGE_RESTORE_MODE", "Replace")
        .stdin(backup.stdout.clone())
        .run();
    replace.assert_error(17, "Unsupported", "Replace");
    assert_eq!(destination.snapshot(SUFFIX), before);
}

#[test]
fn a_backup_of_another_base_dn_is_not_restored_under_this_one() {
    let server = LdapServer::start(PASSWORD);
    let restore = Run::new(
        "restore",
        server.config_json(json!({"baseDn": format!("ou=people,{SUFFIX}")})),
    )
    .env("STOWAGE_RESTORE_MODE", "IntoEmpty")
    .env(
        "STOWAGE_FACTS",
        json!({"baseDn": SUFFIX, "entries": "3"}).to_string(),
    )
    .stdin(
        format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: x\n"
        )
        .into_bytes(),
    )
    .run();
    restore.assert_error(10, "InvalidConfig", "spec.external.config.baseDn");
    assert!(server.snapshot(SUFFIX).is_empty());
}

#[test]
fn a_wrong_password_is_unauthorized_and_no_password_is_ever_shown() {
    let server = LdapServer::start(PASSWORD);
    seed(&server, 2);
    let config = server.config_json(json!({}));
    for op in ["probe", "backup", "inspect"] {
        let run = Run::new(op, config.clone())
            .password(Some(WRONG_PASSWORD))
            .env("STOWAGE_RESTORE_MODE", "IntoEmpty")
            .run();
        run.assert_error(
            13,
            "Unauthorized",
            "spec.external.config.bindPasswordSecretRef",
        );
        assert_no_secret(&run, WRONG_PASSWORD);
    }
    // Neither is the right one, in a run that succeeds.
    let backup = Run::new("backup", config).run();
    assert_eq!(backup.code, 0, "{}", backup.describe());
    assert_no_secret(&backup, PASSWORD);
}

/// `secret` (or its distinctive tail) is in none of stdout, stderr, the report, or a
/// file left in TMPDIR.
fn assert_no_secret(run: &Outcome, secret: &str) {
    let tail = &secret[secret.len() - 8..];
    for (what, text) in [
        ("stdout", run.stdout_text()),
        ("stderr", run.stderr.clone()),
        ("the report", run.report_text.clone()),
    ] {
        assert!(
            !text.contains(secret) && !text.contains(tail),
            "the password is in {what}: {text}"
        );
    }
    assert_eq!(
        fs::read_dir(&run.tmpdir).map(|d| d.count()).unwrap_or(0),
        0,
        "the script left files (the password file?) in TMPDIR"
    );
}

#[test]
fn a_server_that_is_down_is_unreachable() {
    let mut server = LdapServer::start(PASSWORD);
    let config = server.config_json(json!({}));
    server.stop();
    let probe = Run::new("probe", config.clone()).run();
    probe.assert_error(12, "Unreachable", "spec.external.config.url");
    let elsewhere = json!({"url": format!("ldap://127.0.0.1:{}", free_port())});
    let backup = Run::new("backup", server.config_json(elsewhere)).run();
    backup.assert_error(12, "Unreachable", "spec.external.config.url");
}

#[test]
fn a_server_that_does_not_answer_times_out() {
    // Accepts connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let _held = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let config = json!({
        "url": format!("ldap://127.0.0.1:{port}"),
        "baseDn": SUFFIX,
        "bindDn": ROOT_DN,
        "bindPasswordSecretRef": {"name": "ldap", "key": "password"},
        "timeoutSeconds": 1,
    });
    let started = std::time::Instant::now();
    let probe = Run::new("probe", config).run();
    probe.assert_error(15, "Timeout", "spec.external.config.timeoutSeconds");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn a_base_dn_that_does_not_exist_is_not_found() {
    let server = LdapServer::start(PASSWORD);
    seed(&server, 2);
    let config = server.config_json(json!({"baseDn": format!("ou=missing,{SUFFIX}")}));
    for op in ["probe", "backup"] {
        let run = Run::new(op, config.clone()).run();
        run.assert_error(11, "NotFound", "spec.external.config.baseDn");
        assert!(run.stdout.is_empty(), "{op} wrote an artifact");
    }
}

#[test]
fn a_missing_config_field_is_invalid_config_naming_it() {
    let server = LdapServer::start(PASSWORD);
    for field in ["url", "baseDn", "bindDn", "bindPasswordSecretRef"] {
        let mut config = server.config_json(json!({}));
        config.as_object_mut().map(|c| c.remove(field));
        let run = Run::new("probe", config).run();
        run.assert_error(
            10,
            "InvalidConfig",
            &format!("spec.external.config.{field}"),
        );
    }
    let bad = [
        (
            json!({"url": "http://ldap.example"}),
            "spec.external.config.url",
        ),
        (
            json!({"timeoutSeconds": 0}),
            "spec.external.config.timeoutSeconds",
        ),
        (json!({"startTls": "yes"}), "spec.external.config.startTls"),
        (json!({"baseDN": SUFFIX}), "spec.external.config.baseDN"),
    ];
    for (extra, field) in bad {
        let run = Run::new("probe", server.config_json(extra)).run();
        run.assert_error(10, "InvalidConfig", field);
    }
    // The runner did not pass the Secret's value.
    let run = Run::new("probe", server.config_json(json!({})))
        .password(None)
        .run();
    run.assert_error(
        10,
        "InvalidConfig",
        "spec.external.config.bindPasswordSecretRef",
    );
}

#[test]
fn an_unknown_operation_is_unsupported() {
    let server = LdapServer::start(PASSWORD);
    let run = Run::new("verify", server.config_json(json!({}))).run();
    run.assert_error(17, "Unsupported", "verify");
}
