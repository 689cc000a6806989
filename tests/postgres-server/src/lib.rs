//! A real PostgreSQL server for tests: `initdb` into a temporary directory (SCRAM
//! authentication, superuser `postgres` with a given password), `postgres` listening on
//! 127.0.0.1 at a free port, stopped and removed on drop. Shared by the root crate's
//! tests and benchmarks, the postgres plugin's tests and the operator's end-to-end tests.
//! [`PgServer::start_in`] keeps the cluster in a given directory instead, for data that is
//! costly to generate (the runner benchmark's).
//!
//! initdb and postgres refuse to run as root: when the tests run as root, the server runs
//! as the unprivileged system user `stowage-test` (created if missing) through `setpriv`.
//! The server binaries are the newest under `/usr/lib/postgresql/*/bin`, or
//! `STOWAGE_TEST_PG_BINDIR`.
//!
//! ```no_run
//! use stowage_test_postgres::{PgServer, seed};
//! let server = PgServer::start("s3cret");
//! seed(&server, "shop");
//! let before = server.snapshot("shop");
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The unprivileged user the server runs as when the tests run as root.
pub const SERVER_USER: &str = "stowage-test";

/// The Secret name test configs reference for the superuser password.
pub const SECRET_NAME: &str = "pg-credentials";
/// The key in [`SECRET_NAME`].
pub const SECRET_KEY: &str = "superuser-password";

/// A running PostgreSQL server; stopped (immediately) on drop, and deleted unless it was
/// started in a directory of the caller's ([`PgServer::start_in`]).
pub struct PgServer {
    /// The TCP port (on 127.0.0.1, and on [`PodAccess::host`] when given).
    pub port: u16,
    /// The address [`PgServer::config_json`] gives: 127.0.0.1, or the host's address on a
    /// real node's link ([`PodAccess`]).
    pub host: String,
    /// The superuser's (`postgres`) password.
    pub password: String,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The temporary directory removed on drop (after the server stopped); `None` for a
    /// cluster kept in the caller's directory.
    scratch: Option<ScratchDir>,
}

/// A temporary directory removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(prefix: &str) -> ScratchDir {
        ScratchDir(stowage_test_scratch::scratch_dir(
            prefix.trim_end_matches('-'),
        ))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Where initdb, postgres, pg_ctl and the matching client tools (pg_dump, psql) are: the
/// newest `/usr/lib/postgresql/*/bin`, or `STOWAGE_TEST_PG_BINDIR`.
pub fn server_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STOWAGE_TEST_PG_BINDIR") {
        return dir.into();
    }
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server packages are installed (/usr/lib/postgresql)")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, bin)| bin)
        .expect("a PostgreSQL server (initdb) under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn id_of(flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, SERVER_USER]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The server user's uid and gid when running as root (creating the user if needed).
fn server_user() -> Option<(u32, u32)> {
    static USER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *USER.get_or_init(|| {
        if !is_root() {
            return None;
        }
        if id_of("-u").is_none() {
            // Another test binary may create it at the same time: check again afterwards.
            let _ = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                ])
                .arg(SERVER_USER)
                .status();
        }
        let uid = id_of("-u").expect("the stowage-test user exists (useradd --system)");
        let gid = id_of("-g").expect("the stowage-test user has a group");
        Some((uid, gid))
    })
}

/// A command run as the server user (directly when not root).
fn as_server_user(program: &Path) -> Command {
    match server_user() {
        Some(_) => {
            let mut cmd = Command::new("setpriv");
            cmd.args([
                format!("--reuid={SERVER_USER}"),
                format!("--regid={SERVER_USER}"),
                "--init-groups".to_owned(),
                "--".to_owned(),
            ])
            .arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn give_to_server_user(path: &Path) {
    if let Some((uid, gid)) = server_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to stowage-test");
    }
}

pub use stowage_test_scratch::free_port;

/// How pods of a real node reach a server on this host: it listens on `host` too (the
/// host's address on the node's link) and lets clients of `pod_cidr` in with a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAccess {
    /// The host's address that pods can reach (`STOWAGE_NODE_HOST_IP`).
    pub host: String,
    /// The pods' network (`STOWAGE_NODE_POD_CIDR`).
    pub pod_cidr: String,
}

impl PgServer {
    /// initdb and start a server whose superuser `postgres` has `password`.
    pub fn start(password: &str) -> PgServer {
        PgServer::start_for(password, None)
    }

    /// [`PgServer::start`], reachable from pods as `access` says (`None`: on 127.0.0.1
    /// only, for processes of this host).
    pub fn start_for(password: &str, access: Option<&PodAccess>) -> PgServer {
        let scratch = ScratchDir::new("stowage-pg-");
        let dir = scratch.0.clone();
        PgServer::start_at(dir, password, Some(scratch), access)
    }

    /// Start a server on the cluster kept in `dir` (created with initdb and `password` when
    /// `dir` holds none yet), and keep the directory when dropped: for data that is costly
    /// to generate, such as the benchmarks' gigabyte. The server user must be able to reach
    /// `dir` (when running as root: not under a `0700` home). A cluster found there must
    /// have been created with the same `password`.
    pub fn start_in(dir: &Path, password: &str) -> PgServer {
        fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("create the directory {}: {e}", dir.display()));
        PgServer::start_at(dir.to_owned(), password, None, None)
    }

    fn start_at(
        dir: PathBuf,
        password: &str,
        scratch: Option<ScratchDir>,
        access: Option<&PodAccess>,
    ) -> PgServer {
        let bin = server_bin_dir();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        give_to_server_user(&dir);
        let sockets = dir.join("sock");
        if !sockets.exists() {
            fs::create_dir(&sockets).expect("create the socket directory");
        }
        give_to_server_user(&sockets);
        let data = dir.join("data");

        if !data.join("PG_VERSION").exists() {
            let _ = fs::remove_dir_all(&data);
            let pwfile = dir.join("pwfile");
            fs::write(&pwfile, format!("{password}\n")).expect("write the password file");
            give_to_server_user(&pwfile);
            let out = as_server_user(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "--username=postgres",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .output()
                .expect("run initdb");
            let _ = fs::remove_file(&pwfile);
            assert!(
                out.status.success(),
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let mut listen = "127.0.0.1".to_owned();
        if let Some(access) = access {
            let hba = data.join("pg_hba.conf");
            let mut text = fs::read_to_string(&hba).expect("read pg_hba.conf");
            let line = format!("host all all {} scram-sha-256", access.pod_cidr);
            if !text.lines().any(|l| l == line) {
                text.push_str(&format!("{line}\n"));
                fs::write(&hba, text).expect("write pg_hba.conf");
            }
            listen = format!("127.0.0.1,{}", access.host);
        }
        let mut server = PgServer {
            port: 0,
            host: access.map_or_else(|| "127.0.0.1".to_owned(), |a| a.host.clone()),
            password: password.to_owned(),
            log: PathBuf::new(),
            dir,
            child: None,
            scratch,
        };
        // The free port may be taken between the check and the bind: try a few.
        for _ in 0..5 {
            let port = free_port();
            let log = server.dir.join(format!("postgres-{port}.log"));
            let log_file = fs::File::create(&log).expect("create the server log");
            let child = as_server_user(&bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .arg("-k")
                .arg(&sockets)
                .args(["-h", &listen, "-p", &port.to_string()])
                .args([
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=30",
                    "-c",
                    "shared_buffers=16MB",
                ])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("clone the log handle"))
                .stderr(log_file)
                .spawn()
                .expect("start postgres");
            server.port = port;
            server.log = log.clone();
            server.child = Some(child);
            if server.wait_ready() {
                if server.scratch.is_none() {
                    // A kept cluster keeps only the current log.
                    remove_old_logs(&server.dir, &log);
                }
                return server;
            }
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            eprintln!(
                "postgres did not start on port {port}: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("postgres did not start; see the logs above");
    }

    /// Poll pg_isready until the server accepts connections or its process exits.
    fn wait_ready(&mut self) -> bool {
        for _ in 0..240 {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            let ready = Command::new("pg_isready")
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-t",
                    "2",
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON of a `spec.postgres` for one database (or every database when `None`)
    /// of this server, as `postgres`, with the password from
    /// [`SECRET_NAME`]/[`SECRET_KEY`].
    pub fn config_json(&self, database: Option<&str>) -> serde_json::Value {
        let mut value = serde_json::json!({
            "host": self.host,
            "port": self.port,
            "username": "postgres",
            "passwordSecretRef": {"name": SECRET_NAME, "key": SECRET_KEY},
        });
        match database {
            Some(db) => value["database"] = db.into(),
            None => value["allDatabases"] = true.into(),
        }
        value
    }

    /// Run SQL in `database` as the superuser with `psql -XAt`; its stdout.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        match self.try_psql(database, sql) {
            Ok(out) => out,
            Err(e) => panic!("psql on {database} failed: {e}\nSQL: {sql}"),
        }
    }

    /// Run SQL in `database`; stdout or stderr.
    pub fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args([
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
            .env("PGPASSWORD", &self.password)
            .env("LC_MESSAGES", "C")
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Every row of every table and sequence of `database`'s `public` schema, and its
    /// index, view and table names: what a faithful restore reproduces.
    pub fn snapshot(&self, database: &str) -> BTreeMap<String, String> {
        let mut snapshot = BTreeMap::new();
        let tables = self.psql(
            database,
            "select tablename from pg_tables where schemaname = 'public' order by 1",
        );
        for table in tables.lines() {
            snapshot.insert(
                format!("table {table}"),
                self.psql(
                    database,
                    &format!("copy (select * from public.{table} order by 1) to stdout"),
                ),
            );
        }
        let sequences = self.psql(
            database,
            "select sequencename from pg_sequences where schemaname = 'public' order by 1",
        );
        for sequence in sequences.lines() {
            snapshot.insert(
                format!("sequence {sequence}"),
                self.psql(
                    database,
                    &format!("select last_value, is_called from public.{sequence}"),
                ),
            );
        }
        snapshot.insert("tables".into(), tables);
        snapshot.insert("sequences".into(), sequences);
        snapshot.insert(
            "indexes".into(),
            self.psql(
                database,
                "select indexname, indexdef from pg_indexes where schemaname = 'public' order by 1",
            ),
        );
        snapshot.insert(
            "views".into(),
            self.psql(
                database,
                "select viewname, definition from pg_views where schemaname = 'public' order by 1",
            ),
        );
        snapshot
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let mode = if self.scratch.is_some() {
            "immediate"
        } else {
            "fast"
        };
        let _ = as_server_user(&server_bin_dir().join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            // A kept cluster shuts down cleanly, so its next start needs no recovery.
            .args(["stop", "-m", mode, "-w", "-t", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // ScratchDir (when there is one) removes the directory.
    }
}

/// Remove the server logs in `dir` other than `current`.
fn remove_old_logs(dir: &Path, current: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("postgres-") && n.ends_with(".log"));
        if is_log && path != current {
            let _ = fs::remove_file(path);
        }
    }
}

/// Create `database` with tables of many types (int, numeric, unicode text, bytea,
/// timestamptz, json, jsonb, NULLs), a few thousand rows, sequences, indexes and a view.
pub fn seed(server: &PgServer, database: &str) {
    server.psql("postgres", &format!("create database {database}"));
    server.psql(
        database,
        r#"
        create table items (
            id serial primary key,
            name text not null,
            price numeric(10, 2),
            created timestamptz not null,
            attrs json,
            blob bytea
        );
        create index items_name_idx on items (name);
        insert into items (name, price, created, attrs, blob)
        select 'item ' || g || E' \u2014 \u00fcn\u00efc\u00f8d\u00e9 \u2713 \u65e5\u672c\u8a9e \U0001F418 ' || md5(g::text),
               (g * 1.25)::numeric(10, 2),
               timestamptz '2024-01-01 00:00:00+00' + g * interval '37 minutes 13.5 seconds',
               json_build_object('n', g, 'tags', json_build_array('a', 'b', g % 7),
                                 'note', E'line\nbreak "quoted" \\ tab\t'),
               decode(md5(g::text) || md5((g * 7)::text), 'hex')
        from generate_series(1, 4000) g;
        insert into items (name, price, created, attrs, blob)
        values ('nulls', null, '1999-12-31 23:59:59.999999+05:30', null, null),
               (E'quote '' and backslash \\ and newline\n', 0, now(), '[]', '\x00ff00');
        create sequence invoice_no start 1000;
        select nextval('invoice_no') from generate_series(1, 42);
        create table events (
            id bigint primary key,
            kind text,
            at timestamptz,
            payload jsonb,
            amount integer
        );
        insert into events
        select g, case when g % 3 = 0 then 'création' else 'mise à jour' end,
               timestamptz '2020-02-29 12:00:00+00' - g * interval '1 hour',
               jsonb_build_object('k', g, 'nested', jsonb_build_object('ok', g % 2 = 0)),
               g * -3
        from generate_series(1, 3000) g;
        create index events_kind_at_idx on events (kind, at desc);
        create table empty_one (id int primary key, note text);
        create view expensive as select id, name from items where price > 100;
        "#,
    );
}
