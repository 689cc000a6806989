//! The sqlite plugin against real SQLite databases on a directory standing in for the
//! application's claim: copies of a database that another connection keeps writing are
//! consistent, restores compare equal with what was backed up, and every mistake ends in
//! the documented error kind naming the field.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, ErrorKind, Plugin, RestoreRequest, RunContext,
};
use stowage_plugin_sqlite::{SqliteConfig, SqlitePlugin};

fn config(path: &str) -> SqliteConfig {
    SqliteConfig {
        claim_name: "app-data".into(),
        path: path.into(),
    }
}

fn ctx(claim: &Path) -> RunContext {
    let mut ctx = RunContext::new("shop", "app-db");
    ctx.claim_root = Some(claim.to_owned());
    ctx
}

/// An application's database: `orders`, and `totals` that each transaction keeps equal
/// to the orders' sum, so a copy that mixes two states shows.
fn create_app_db(path: &Path, journal_mode: &str) {
    let db = Connection::open(path).unwrap();
    db.query_row(&format!("PRAGMA journal_mode={journal_mode}"), [], |_| {
        Ok(())
    })
    .unwrap();
    db.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL, amount INTEGER NOT NULL);
         CREATE TABLE totals (id INTEGER PRIMARY KEY CHECK (id = 1), orders INTEGER, amount INTEGER);
         INSERT INTO totals VALUES (1, 0, 0);
         CREATE INDEX orders_item ON orders(item);
         CREATE VIEW big AS SELECT * FROM orders WHERE amount > 500;
         CREATE TRIGGER no_negative BEFORE INSERT ON orders WHEN NEW.amount < 0
           BEGIN SELECT RAISE(ABORT, 'negative'); END;",
    )
    .unwrap();
    let tx = db.unchecked_transaction().unwrap();
    for i in 0..2000 {
        add_order(&tx, i);
    }
    tx.commit().unwrap();
}

fn add_order(db: &Connection, i: u64) {
    let amount = (i * 37 % 1000) as i64;
    db.execute(
        "INSERT INTO orders (item, amount) VALUES (?1, ?2)",
        rusqlite::params![
            format!("item-{i}-{}", "x".repeat((i % 50) as usize)),
            amount
        ],
    )
    .unwrap();
    db.execute(
        "UPDATE totals SET orders = orders + 1, amount = amount + ?1 WHERE id = 1",
        [amount],
    )
    .unwrap();
}

/// Rows of `orders`, the `totals` row, and the schema: a database's contents.
type Contents = (Vec<(i64, String, i64)>, (i64, i64), Vec<String>);

/// Rows of every table and the schema, for comparisons.
fn contents(path: &Path) -> Contents {
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = db
        .prepare("SELECT id, item, amount FROM orders ORDER BY id")
        .unwrap();
    let orders = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let totals = db
        .query_row("SELECT orders, amount FROM totals", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let mut stmt = db
        .prepare("SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_schema ORDER BY name")
        .unwrap();
    let schema = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (orders, totals, schema)
}

/// Back up into memory; the artifact's bytes.
async fn backup(
    config: &SqliteConfig,
    ctx: &RunContext,
) -> Result<Vec<u8>, stowage_plugin_sdk::PluginError> {
    let mut bytes = Vec::new();
    let mut sink = ArtifactSink::new(&mut bytes);
    SqlitePlugin::backup(config, ctx, &mut sink).await?;
    drop(sink);
    Ok(bytes)
}

async fn restore(
    config: &SqliteConfig,
    ctx: &RunContext,
    artifact: &[u8],
    into: Option<&str>,
    replace: bool,
) -> Result<String, stowage_plugin_sdk::PluginError> {
    let mut source = ArtifactSource::new(artifact);
    let request = RestoreRequest {
        into: into.map(Into::into),
        replace,
        ..RestoreRequest::default()
    };
    SqlitePlugin::restore(config, ctx, &mut source, &request)
        .await
        .map(|r| r.message)
}

/// Another connection that commits orders until stopped, like a running application.
struct Writer {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(path: &Path) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let path = path.to_owned();
        let thread = {
            let (stop, commits) = (stop.clone(), commits.clone());
            std::thread::spawn(move || {
                let db = Connection::open(&path).unwrap();
                db.busy_timeout(Duration::from_secs(30)).unwrap();
                // Like a busy application between checkpoints: in WAL mode the commits
                // stay in the -wal file, which a copy of the main file alone would miss.
                db.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
                let mut i = 100_000;
                while !stop.load(Ordering::Relaxed) {
                    let tx = db.unchecked_transaction().unwrap();
                    for _ in 0..20 {
                        add_order(&tx, i);
                        i += 1;
                    }
                    tx.commit().unwrap();
                    commits.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Writer {
            stop,
            commits,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.commits.load(Ordering::Relaxed)
    }
}

fn write_artifact(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(format!("artifact-{}.sqlite", bytes.len()));
    std::fs::write(&path, bytes).unwrap();
    path
}

async fn live_copies_are_consistent(journal_mode: &str) {
    let claim = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(claim.path().join("data")).unwrap();
    let db = claim.path().join("data/app.db");
    create_app_db(&db, journal_mode);
    let config = config("data/app.db");
    let ctx = ctx(claim.path());

    let writer = Writer::start(&db);
    let mut artifacts = Vec::new();
    let mut committed_before = Vec::new();
    for _ in 0..3 {
        // Let the application commit between the copies.
        tokio::time::sleep(Duration::from_millis(100)).await;
        committed_before.push(writer.commits.load(Ordering::Relaxed));
        artifacts.push(backup(&config, &ctx).await.unwrap());
    }
    // An idle connection of the application stays open, so closing the writer does not
    // checkpoint the WAL into the main file.
    let idle = Connection::open(&db).unwrap();
    idle.query_row("SELECT count(*) FROM orders", [], |r| r.get::<_, i64>(0))
        .unwrap();
    let commits = writer.stop();
    assert!(commits > 0, "the writer never committed during the backups");

    let mut order_counts = Vec::new();
    for (bytes, committed) in artifacts.iter().zip(&committed_before) {
        assert_eq!(
            &bytes[..16],
            b"SQLite format 3\0",
            "the artifact is a database file"
        );
        let copy = write_artifact(outside.path(), bytes);
        let (orders, totals, schema) = contents(&copy);
        // One state: the running totals match the orders the copy holds.
        let sum: i64 = orders.iter().map(|o| o.2).sum();
        assert_eq!(
            totals,
            (orders.len() as i64, sum),
            "a copy mixes two states"
        );
        assert_eq!(
            schema.len(),
            5,
            "two tables, an index, a view, a trigger: {schema:?}"
        );
        // Every transaction committed before the backup started is in the copy.
        assert!(
            orders.len() as u64 >= 2000 + 20 * committed,
            "the copy has {} orders; {committed} commits of 20 were made before it started",
            orders.len()
        );
        order_counts.push(orders.len());
    }
    assert!(
        order_counts.windows(2).all(|w| w[0] <= w[1]),
        "copies go forward: {order_counts:?}"
    );

    // Restore the last copy into another file of the claim; it equals the copy.
    let last = artifacts.last().unwrap();
    let message = restore(&config, &ctx, last, Some("restored/app.db"), false)
        .await
        .unwrap();
    assert!(message.contains("restored/app.db"), "{message}");
    let copy = write_artifact(outside.path(), last);
    assert_eq!(
        contents(&claim.path().join("restored/app.db")),
        contents(&copy)
    );

    // With the writer stopped, a backup and restore round trip equals the original.
    let bytes = backup(&config, &ctx).await.unwrap();
    restore(&config, &ctx, &bytes, Some("again.db"), false)
        .await
        .unwrap();
    assert_eq!(contents(&claim.path().join("again.db")), contents(&db));
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_database_written_during_the_backup_is_copied_in_one_state_and_restored_equal() {
    live_copies_are_consistent("wal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_journal_database_written_during_the_backup_is_copied_in_one_state() {
    live_copies_are_consistent("delete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_swaps_the_database_under_an_open_connection_and_a_bad_artifact_changes_nothing() {
    let claim = tempfile::tempdir().unwrap();
    let db = claim.path().join("app.db");
    create_app_db(&db, "wal");
    let config = config("app.db");
    let ctx = ctx(claim.path());
    let before = contents(&db);
    let artifact = backup(&config, &ctx).await.unwrap();

    // The application keeps a connection open and changes the data after the backup.
    let app = Connection::open(&db).unwrap();
    app.execute("DELETE FROM orders WHERE id > 10", []).unwrap();
    app.execute("UPDATE totals SET orders = -1", []).unwrap();
    assert_ne!(contents(&db), before);

    // The destination holds data: that is what IntoEmpty refuses, through the runner.
    let report = SqlitePlugin::inspect_destination(&config, &ctx, &RestoreRequest::default())
        .await
        .unwrap();
    assert!(report.holds_data, "{report:?}");
    assert!(report.description.contains("app.db"), "{report:?}");
    let elsewhere = RestoreRequest {
        into: Some("new/app.db".into()),
        ..RestoreRequest::default()
    };
    let report = SqlitePlugin::inspect_destination(&config, &ctx, &elsewhere)
        .await
        .unwrap();
    assert!(!report.holds_data, "{report:?}");

    // A corrupt artifact (a page overwritten) is refused, and the database is untouched.
    let changed = contents(&db);
    let mut corrupt = artifact.clone();
    let page = 4096 * 3;
    for b in &mut corrupt[page..page + 512] {
        *b = 0xA5;
    }
    let err = restore(&config, &ctx, &corrupt, None, true)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ToolFailed, "{err}");
    assert!(err.to_string().contains("the artifact"), "{err}");
    let err = restore(&config, &ctx, b"not a database at all", None, true)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ToolFailed, "{err}");
    assert_eq!(contents(&db), changed);

    // Replace: the open connection sees the backed-up state.
    restore(&config, &ctx, &artifact, None, true).await.unwrap();
    let orders: i64 = app
        .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(orders, before.0.len() as i64);
    drop(app);
    assert_eq!(contents(&db), before);
    let check: String = Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[tokio::test]
async fn mistakes_end_in_the_documented_error_naming_the_field() {
    let claim = tempfile::tempdir().unwrap();
    std::fs::write(claim.path().join("notes.txt"), "x".repeat(5000)).unwrap();
    std::fs::create_dir(claim.path().join("dir")).unwrap();
    create_app_db(&claim.path().join("ok.db"), "wal");
    let ctx = ctx(claim.path());

    let cases = [
        (
            "missing.db",
            ErrorKind::NotFound,
            "spec.sqlite.path: no file \"missing.db\" on claim \"app-data\"",
        ),
        (
            "notes.txt",
            ErrorKind::InvalidConfig,
            "path: \"notes.txt\" on claim \"app-data\" is not a SQLite database",
        ),
        (
            "dir",
            ErrorKind::InvalidConfig,
            "path: \"dir\" is a directory",
        ),
        (
            "../etc/passwd",
            ErrorKind::InvalidConfig,
            "path: \"../etc/passwd\" leaves the claim",
        ),
    ];
    for (path, kind, text) in cases {
        let config = config(path);
        let probe = SqlitePlugin::probe(&config, &ctx).await.unwrap_err();
        assert_eq!(probe.kind(), kind, "probe {path}: {probe}");
        assert!(probe.to_string().contains(text), "probe {path}: {probe}");
        let backup = backup(&config, &ctx).await.unwrap_err();
        assert_eq!(backup.kind(), kind, "backup {path}: {backup}");
    }

    let probe = SqlitePlugin::probe(&config("ok.db"), &ctx).await.unwrap();
    assert_eq!(probe.facts["journalMode"], "wal");
    assert!(
        probe.message.contains("journal mode wal"),
        "{}",
        probe.message
    );

    // A run without the claim mounted is a clear internal error, not a panic.
    let bare = RunContext::new("shop", "app-db");
    let err = SqlitePlugin::probe(&config("ok.db"), &bare)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    // `into` is checked like `path`.
    let err = restore(&config("ok.db"), &ctx, b"", Some("/abs.db"), false)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("into: \"/abs.db\" is absolute"),
        "{err}"
    );
}

/// The conformance kit's service-backed checks on real database files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_kit_passes() {
    use stowage_plugin_sdk::conformance::{FailureCase, check_failures, check_round_trip};
    let claim = tempfile::tempdir().unwrap();
    create_app_db(&claim.path().join("app.db"), "wal");
    std::fs::write(claim.path().join("notes.txt"), "x".repeat(5000)).unwrap();
    let case = |name, path: &str, kind, mentions| FailureCase::<SqlitePlugin> {
        name,
        config: config(path),
        ctx: ctx(claim.path()),
        kind,
        mentions,
    };
    let cases = [
        case(
            "missing file",
            "missing.db",
            ErrorKind::NotFound,
            "spec.sqlite.path",
        ),
        case(
            "not a database",
            "notes.txt",
            ErrorKind::InvalidConfig,
            "path",
        ),
        case(
            "outside the claim",
            "../app.db",
            ErrorKind::InvalidConfig,
            "path",
        ),
    ];
    check_failures(&cases)
        .await
        .unwrap_or_else(|p| panic!("{}", p.join("\n")));

    let request = RestoreRequest {
        into: Some("copies/app.db".into()),
        ..RestoreRequest::default()
    };
    let ctx = ctx(claim.path());
    check_round_trip::<SqlitePlugin, _, _>(
        &config("app.db"),
        &config("app.db"),
        &ctx,
        &request,
        || async {
            let (want, got) = (
                contents(&claim.path().join("app.db")),
                contents(&claim.path().join("copies/app.db")),
            );
            (want == got).then_some(()).ok_or_else(|| {
                format!(
                    "{} orders backed up, {} restored",
                    want.0.len(),
                    got.0.len()
                )
            })
        },
    )
    .await
    .unwrap_or_else(|p| panic!("{}", p.join("\n")));
}
