//! `mode: Replace` restores (`RestoreRequest::replace`) against a real PostgreSQL server:
//! the database is replaced by the artifact's content, other sessions on it are ended, and
//! a restore or swap that fails leaves it untouched with no scratch database behind.

mod common;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::{PgServer, PluginFixture, ctx_with_password, free_port, seed};
use stowage_plugin_postgres::{DumpFormat, PostgresConfig, PostgresPlugin};
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, ErrorKind, Plugin, PluginError, RestoreReport, RestoreRequest,
    RunContext,
};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

async fn backup_to_memory(
    config: &PostgresConfig,
    server: &PgServer,
) -> (Vec<u8>, BTreeMap<String, String>) {
    let mut artifact = Vec::new();
    let mut sink = ArtifactSink::new(&mut artifact);
    let report = match PostgresPlugin::backup(config, &server.ctx(), &mut sink).await {
        Ok(report) => report,
        Err(e) => panic!("backup failed ({}): {e}", e.kind()),
    };
    drop(sink);
    (artifact, report.facts)
}

/// A replacing restore of `input` with `facts` into `into` (else the config's database).
async fn replace(
    config: &PostgresConfig,
    ctx: &RunContext,
    input: impl AsyncRead + Send,
    facts: &BTreeMap<String, String>,
    into: Option<&str>,
) -> Result<RestoreReport, PluginError> {
    let request = RestoreRequest {
        facts: facts.clone(),
        into: into.map(str::to_owned),
        replace: true,
    };
    let mut source = ArtifactSource::new(input);
    PostgresPlugin::restore(config, ctx, &mut source, &request).await
}

/// The server's databases, in order.
fn databases(server: &PgServer) -> Vec<String> {
    server
        .psql("postgres", "select datname from pg_database order by 1")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Assert that no scratch or replaced database of a replacing restore is left.
fn assert_no_scratch_database(server: &PgServer) {
    let all = databases(server);
    assert!(
        !all.iter().any(|d| d.contains("_stowage_")),
        "a scratch database is left: {all:?}"
    );
}

/// Change `shop` after its backup: updated and inserted rows, a new table, a dropped index.
fn change_shop(server: &PgServer) {
    server.psql(
        "shop",
        "update items set name = 'changed', price = price + 1 where id <= 100; \
         delete from events where id > 2900; \
         insert into empty_one values (1, 'new row'); \
         create table added_later (id int primary key, note text); \
         insert into added_later values (1, 'gone after the restore'); \
         drop index items_name_idx; \
         select nextval('invoice_no') from generate_series(1, 5)",
    );
}

async fn replace_round_trip(format: DumpFormat) {
    let server = PgServer::start("replace-round-trip-pw");
    seed(&server, "shop");
    let original = server.snapshot("shop");
    let mut config = server.config(Some("shop"));
    config.format = Some(format);
    let (artifact, facts) = backup_to_memory(&config, &server).await;

    change_shop(&server);
    let changed = server.snapshot("shop");
    assert_ne!(changed, original, "the change shows in the snapshot");
    assert!(changed["tables"].contains("added_later"));

    let report = match replace(&config, &server.ctx(), &artifact[..], &facts, None).await {
        Ok(report) => report,
        Err(e) => panic!("replacing restore failed ({}): {e}", e.kind()),
    };
    assert!(
        report.message.starts_with(
            "replaced database \"shop\", which had 4 user tables, on PostgreSQL at 127.0.0.1:"
        ),
        "{}",
        report.message
    );

    let restored = server.snapshot("shop");
    for (key, value) in &original {
        assert!(
            restored.get(key) == Some(value),
            "{key} differs after the replacing restore"
        );
    }
    assert_eq!(
        restored.keys().collect::<Vec<_>>(),
        original.keys().collect::<Vec<_>>(),
        "the table added after the backup is gone"
    );
    assert!(!restored["tables"].contains("added_later"));
    assert_no_scratch_database(&server);
}

#[tokio::test]
async fn replace_round_trip_custom_format() {
    replace_round_trip(DumpFormat::Custom).await;
}

#[tokio::test]
async fn replace_round_trip_plain_format() {
    replace_round_trip(DumpFormat::Plain).await;
}

#[tokio::test]
async fn replacing_a_missing_database_creates_it() {
    let server = PgServer::start("replace-missing-pw");
    seed(&server, "shop");
    let config = server.config(Some("shop"));
    let (artifact, facts) = backup_to_memory(&config, &server).await;
    let report = replace(&config, &server.ctx(), &artifact[..], &facts, Some("copy"))
        .await
        .unwrap();
    assert!(
        report
            .message
            .starts_with("created and restored database \"copy\""),
        "{}",
        report.message
    );
    assert_eq!(server.snapshot("copy"), server.snapshot("shop"));
    assert_no_scratch_database(&server);
}

/// Bytes, then a read error: an artifact whose stream fails half way (as a checksum
/// mismatch found while streaming does).
struct FailingReader {
    bytes: Vec<u8>,
    at: usize,
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at == self.bytes.len() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the artifact is corrupt (test)",
            )));
        }
        let n = buf.remaining().min(self.bytes.len() - self.at).min(8192);
        let at = self.at;
        buf.put_slice(&self.bytes[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failed_restore_leaves_the_database_and_no_scratch_database() {
    let server = PgServer::start("replace-failed-pw");
    seed(&server, "shop");
    let mut config = server.config(Some("shop"));
    let (custom, custom_facts) = backup_to_memory(&config, &server).await;
    config.format = Some(DumpFormat::Plain);
    let (plain, plain_facts) = backup_to_memory(&config, &server).await;
    change_shop(&server);
    let before = server.snapshot("shop");
    let databases_before = databases(&server);

    // A truncated custom archive: pg_restore fails.
    let truncated = &custom[..custom.len() / 2];
    let err = replace(&config, &server.ctx(), truncated, &custom_facts, None)
        .await
        .expect_err("a truncated archive does not restore");
    assert_eq!(err.kind(), ErrorKind::ToolFailed, "{err}");
    let text = err.to_string();
    assert!(text.starts_with("pg_restore exited with code 1"), "{text}");
    assert!(text.contains("nothing was replaced"), "{text}");
    assert!(text.contains("dropped again"), "{text}");
    assert!(text.contains("database \"shop\" is unchanged"), "{text}");
    assert_eq!(server.snapshot("shop"), before);
    assert_eq!(databases(&server), databases_before);

    // A plain dump whose stream fails half way: psql is killed before it could commit.
    let failing = FailingReader {
        bytes: plain[..plain.len() / 2].to_vec(),
        at: 0,
    };
    let err = replace(&config, &server.ctx(), failing, &plain_facts, None)
        .await
        .expect_err("a failing stream does not restore");
    assert_eq!(err.kind(), ErrorKind::IoError, "{err}");
    let text = err.to_string();
    assert!(text.contains("the artifact is corrupt (test)"), "{text}");
    assert!(text.contains("dropped again"), "{text}");
    assert_eq!(server.snapshot("shop"), before);
    assert_eq!(databases(&server), databases_before);
    assert_no_scratch_database(&server);
}

/// `psql` connected to `database` as `role`, sleeping; returns once the server shows its
/// session.
fn hold_session(server: &PgServer, database: &str, role: &str, password: &str) -> Child {
    let child = Command::new("psql")
        .args(["-XAtq", "-h", "127.0.0.1", "-U", role, "-d", database])
        .args(["-p", &server.port.to_string()])
        .args(["-c", "select pg_sleep(120)"])
        .env("PGPASSWORD", password)
        .env("PGAPPNAME", "holder")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run psql");
    let deadline = Instant::now() + Duration::from_secs(30);
    let query = format!(
        "select count(*) from pg_stat_activity where application_name = 'holder' \
         and datname = '{database}' and state = 'active'"
    );
    while server.psql("postgres", &query).trim() != "1" {
        assert!(Instant::now() < deadline, "the psql session did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// Whether `child` exits within `limit`.
fn exits_within(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().expect("wait for psql").is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test]
async fn other_sessions_on_the_database_are_ended_and_the_swap_succeeds() {
    let server = PgServer::start("replace-sessions-pw");
    seed(&server, "shop");
    let original = server.snapshot("shop");
    let config = server.config(Some("shop"));
    let (artifact, facts) = backup_to_memory(&config, &server).await;
    change_shop(&server);

    let mut holder = hold_session(&server, "shop", "postgres", &server.password);
    let result = replace(&config, &server.ctx(), &artifact[..], &facts, None).await;
    let ended = exits_within(&mut holder, Duration::from_secs(10));
    if !ended {
        let _ = holder.kill();
        let _ = holder.wait();
    }
    let report = match result {
        Ok(report) => report,
        Err(e) => panic!("replacing restore failed ({}): {e}", e.kind()),
    };
    assert!(ended, "the session on the replaced database was ended");
    assert!(!holder.wait().unwrap().success());
    assert!(
        report.message.ends_with("; ended 1 other session using it"),
        "{}",
        report.message
    );
    assert_eq!(server.snapshot("shop"), original);
    assert_no_scratch_database(&server);
}

#[tokio::test]
async fn a_swap_the_role_may_not_do_leaves_the_database_with_the_fix() {
    let server = PgServer::start("replace-swap-pw");
    seed(&server, "shop");
    let (artifact, facts) = backup_to_memory(&server.config(Some("shop")), &server).await;
    change_shop(&server);
    let before = server.snapshot("shop");
    let databases_before = databases(&server);
    server.psql(
        "postgres",
        "create role restorer login createdb password 'restorer-pw-Kx3'; \
         create role app login password 'app-pw'",
    );
    let mut config = server.config(Some("shop"));
    config.username = "restorer".into();
    let ctx = ctx_with_password("restorer-pw-Kx3");

    // Not the owner: renaming the database is refused.
    let err = replace(&config, &ctx, &artifact[..], &facts, None)
        .await
        .expect_err("restorer may not rename shop");
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("role \"restorer\" may not rename database \"shop\""),
        "{text}"
    );
    assert!(text.contains("OWNER TO"), "{text}");
    assert!(text.contains("dropped again"), "{text}");
    assert!(!text.contains("restorer-pw-Kx3"), "{text}");
    assert_eq!(server.snapshot("shop"), before);
    assert_eq!(databases(&server), databases_before);

    // The owner, but another role's session is on it and restorer may not end it.
    server.psql("postgres", "alter database shop owner to restorer");
    let mut holder = hold_session(&server, "shop", "app", "app-pw");
    let err = replace(&config, &ctx, &artifact[..], &facts, None)
        .await
        .expect_err("the session stays");
    assert_eq!(err.kind(), ErrorKind::RemoteError, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("other sessions were still using it"),
        "{text}"
    );
    assert!(
        text.contains("Stop the applications using the database"),
        "{text}"
    );
    assert!(text.contains("pg_signal_backend"), "{text}");
    assert!(text.contains("may not end 1 session(s)"), "{text}");
    assert!(text.contains("dropped again"), "{text}");
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the session was not ended"
    );
    assert_eq!(server.snapshot("shop"), before);
    assert_eq!(databases(&server), databases_before);

    // With pg_signal_backend it ends the session and replaces the database.
    server.psql("postgres", "grant pg_signal_backend to restorer");
    let result = replace(&config, &ctx, &artifact[..], &facts, None).await;
    let ended = exits_within(&mut holder, Duration::from_secs(10));
    if !ended {
        let _ = holder.kill();
        let _ = holder.wait();
    }
    if let Err(e) = result {
        panic!("replacing restore failed ({}): {e}", e.kind());
    }
    assert!(ended, "the session was ended");
    assert_eq!(
        server.snapshot("shop")["tables"],
        "empty_one\nevents\nitems\n"
    );
    assert_no_scratch_database(&server);
}

#[tokio::test]
async fn an_all_databases_artifact_is_never_restored_over_a_server() {
    // Refused before connecting: nothing listens on this port.
    let config: PostgresConfig = serde_json::from_value(serde_json::json!({
        "host": "127.0.0.1", "port": free_port(), "allDatabases": true, "username": "postgres"
    }))
    .unwrap();
    let facts = BTreeMap::from([
        ("allDatabases".to_owned(), "true".to_owned()),
        ("format".to_owned(), "plain".to_owned()),
    ]);
    let mut input = &b"-- a pg_dumpall script\n"[..];
    let err = replace(
        &config,
        &RunContext::new("ns", "t"),
        &mut input,
        &facts,
        None,
    )
    .await
    .expect_err("replace with a pg_dumpall artifact");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("only into a fresh server (mode IntoEmpty)"),
        "{text}"
    );
    let mut rest = Vec::new();
    input.read_to_end(&mut rest).await.unwrap();
    assert!(!rest.is_empty(), "nothing of the artifact was read");
}
