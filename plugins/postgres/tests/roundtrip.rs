//! Backup → restore round trips against a real PostgreSQL server started by each test,
//! comparing every table's rows, the sequences, indexes and views.

mod common;

use common::{PgServer, PluginFixture, seed};
use stowage_plugin_postgres::{DumpFormat, PostgresConfig, PostgresPlugin};
use stowage_plugin_sdk::{ArtifactSink, ArtifactSource, Plugin, RestoreRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn backup_to_memory(
    config: &PostgresConfig,
    server: &PgServer,
) -> (Vec<u8>, std::collections::BTreeMap<String, String>) {
    let mut artifact = Vec::new();
    let mut sink = ArtifactSink::new(&mut artifact);
    let report = match PostgresPlugin::backup(config, &server.ctx(), &mut sink).await {
        Ok(report) => report,
        Err(e) => panic!("backup failed ({}): {e}", e.kind()),
    };
    let written = sink.bytes_written();
    drop(sink);
    assert_eq!(written, artifact.len() as u64);
    (artifact, report.facts)
}

/// Dump `shop` in `format`, restore it into `restored` and compare.
async fn round_trip(format: DumpFormat, precreate: bool) -> Vec<u8> {
    let server = PgServer::start("s3cret-round-trip");
    seed(&server, "shop");
    let mut config = server.config(Some("shop"));
    config.format = Some(format);

    let (artifact, facts) = backup_to_memory(&config, &server).await;
    let format_name = match format {
        DumpFormat::Custom => "custom",
        DumpFormat::Plain => "plain",
        DumpFormat::Tar => "tar",
    };
    assert_eq!(facts["format"], format_name);
    assert_eq!(facts["database"], "shop");
    assert!(
        facts["serverVersion"].starts_with(char::is_numeric),
        "{facts:?}"
    );
    assert!(
        facts["dumpToolVersion"].starts_with(char::is_numeric),
        "{facts:?}"
    );

    if precreate {
        server.psql("postgres", "create database restored");
    }
    // The destination config does not name the format: it comes from the facts.
    let destination = server.config(Some("shop"));
    let request = RestoreRequest {
        facts,
        into: Some("restored".into()),
        replace: false,
    };
    let mut source = ArtifactSource::new(&artifact[..]);
    let report =
        match PostgresPlugin::restore(&destination, &server.ctx(), &mut source, &request).await {
            Ok(report) => report,
            Err(e) => panic!("restore failed ({}): {e}", e.kind()),
        };
    drop(source);
    let expected_verb = if precreate {
        "restored database"
    } else {
        "created and restored"
    };
    assert!(
        report.message.starts_with(expected_verb),
        "{}",
        report.message
    );

    let original = server.snapshot("shop");
    let restored = server.snapshot("restored");
    assert_eq!(
        original["tables"].lines().collect::<Vec<_>>(),
        ["empty_one", "events", "items"]
    );
    assert_eq!(original["table items"].lines().count(), 4002);
    assert_eq!(original["table events"].lines().count(), 3000);
    assert!(original["sequences"].contains("invoice_no"));
    assert!(original["indexes"].contains("events_kind_at_idx"));
    for (key, value) in &original {
        assert!(
            restored.get(key) == Some(value),
            "{key} differs after a {format_name} round trip"
        );
    }
    assert_eq!(original.len(), restored.len());
    artifact
}

#[tokio::test]
async fn custom_format_round_trip_into_a_new_database() {
    let artifact = round_trip(DumpFormat::Custom, false).await;
    assert!(artifact.starts_with(b"PGDMP"), "a custom-format archive");
}

#[tokio::test]
async fn plain_format_round_trip_into_an_existing_empty_database() {
    let artifact = round_trip(DumpFormat::Plain, true).await;
    let text = String::from_utf8(artifact).expect("a plain dump is UTF-8 SQL");
    assert!(text.contains("PostgreSQL database dump"));
    assert!(text.contains("CREATE TABLE public.items"));
}

#[tokio::test]
async fn tar_format_round_trip() {
    let artifact = round_trip(DumpFormat::Tar, false).await;
    assert_eq!(&artifact[257..262], b"ustar", "a tar archive");
}

#[tokio::test]
async fn restore_never_overwrites_existing_tables() {
    let server = PgServer::start("s3cret-overwrite");
    seed(&server, "shop");
    let config = server.config(Some("shop"));
    let (artifact, facts) = backup_to_memory(&config, &server).await;
    server.psql("shop", "insert into empty_one values (1, 'kept')");
    let request = RestoreRequest {
        facts,
        into: None,
        replace: false,
    };
    let mut source = ArtifactSource::new(&artifact[..]);
    let err = PostgresPlugin::restore(&config, &server.ctx(), &mut source, &request)
        .await
        .expect_err("restoring over existing tables fails");
    assert!(err.to_string().contains("already exists"), "{err}");
    // One transaction: nothing of the failed restore remains, nothing was dropped.
    assert_eq!(server.psql("shop", "select note from empty_one"), "kept\n");
}

/// The dump reaches the sink while pg_dump is still running: the plugin streams, it does
/// not collect the dump first.
#[tokio::test]
async fn backup_streams_into_the_sink_while_pg_dump_runs() {
    let server = PgServer::start("s3cret-stream");
    server.psql("postgres", "create database big");
    // About 16 MB of incompressible bytes, far more than the pipes between pg_dump, the
    // plugin and the reader below can hold.
    server.psql(
        "big",
        "create table blobs (id int primary key, data bytea); \
         insert into blobs select g, decode(string_agg(md5(g::text || ':' || i), ''), 'hex') \
         from generate_series(1, 4000) g, generate_series(1, 128) i group by g",
    );
    let mut config = server.config(Some("big"));
    config.format = Some(DumpFormat::Plain);
    let ctx = server.ctx();

    let (writer, mut reader) = tokio::io::duplex(64 * 1024);
    let backup = async {
        let mut sink = ArtifactSink::new(writer);
        let report = PostgresPlugin::backup(&config, &ctx, &mut sink).await;
        let written = sink.bytes_written();
        sink.shutdown().await.expect("close the sink");
        (report, written)
    };
    let port = server.port;
    let password = server.password.clone();
    let read =
        async move {
            let mut first = vec![0u8; 1024];
            reader
                .read_exact(&mut first)
                .await
                .expect("the first bytes of the dump");
            // The reader has stopped draining: pg_dump is blocked on its output and so still
            // connected, unless the plugin collected the whole dump before writing it.
            let active =
                tokio::task::spawn_blocking(move || {
                    std::process::Command::new("psql")
                .args(["-XAtq", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
                .args(["-p", &port.to_string()])
                .args([
                    "-c",
                    "select count(*) from pg_stat_activity where application_name = 'pg_dump'",
                ])
                .env("PGPASSWORD", password)
                .output()
                .expect("run psql")
                })
                .await
                .expect("join psql");
            let mut rest = Vec::new();
            reader
                .read_to_end(&mut rest)
                .await
                .expect("the rest of the dump");
            (
                first,
                rest,
                String::from_utf8_lossy(&active.stdout).trim().to_owned(),
            )
        };
    let ((report, written), (first, rest, active)) = tokio::join!(backup, read);
    let report = report.expect("backup succeeds");
    assert_eq!(
        active, "1",
        "pg_dump was still connected when the first bytes arrived"
    );
    assert_eq!(written, (first.len() + rest.len()) as u64);
    assert!(written > 16_000_000, "dump of {written} bytes");
    assert!(first.starts_with(b"--\n-- PostgreSQL database dump"));
    assert_eq!(report.facts["format"], "plain");
}
