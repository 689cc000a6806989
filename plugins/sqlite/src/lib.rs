//! The `sqlite` plugin: a SQLite database file on an application's claim, copied with
//! SQLite's online backup API while the application keeps running, and written back the
//! same way.
//!
//! It is a native plugin (SQLite is compiled into the runner, so the Job needs no tool
//! image) that works on files of the application's PersistentVolumeClaim, mounted by the
//! Job at [`APP_CLAIM_ROOT`](stowage_plugin_sdk::APP_CLAIM_ROOT) (see
//! [`AppClaim`](stowage_plugin_sdk::AppClaim)).
//!
//! - **probe** opens the database read-only and reads its header: SQLite version, journal
//!   mode, page count. A missing file is `NotFound`, an unreadable one `Unauthorized`
//!   (with the `spec.job.runAs` fix), a file that is not a database `InvalidConfig`.
//! - **backup** copies the database into a scratch file in the pod's `/tmp` with the
//!   online backup API in a single step: one read transaction, so the copy is one
//!   consistent state even while the application writes (in WAL mode the application's
//!   writers are not blocked; in rollback-journal mode they wait for the copy). The copy
//!   is checked with `PRAGMA quick_check`, then streamed into the artifact: the artifact
//!   is a plain SQLite database file that `sqlite3` opens as it is.
//! - **inspect_destination**: the destination file exists and is not empty.
//! - **restore** writes the artifact to a scratch file, checks it (`quick_check`), then
//!   copies it into the destination with the online backup API in a single step: one
//!   write transaction of the destination, so a running application sees the old
//!   database or the new one, never a mix, and a failure leaves the old one whole.

mod config;

pub use config::{SqliteConfig, relative_path};

use std::collections::BTreeMap;
use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};
use stowage_plugin_sdk::{
    AppClaim, ArtifactSink, ArtifactSource, BackupReport, Capabilities, DestinationReport,
    Execution, Plugin, PluginError, PluginInfo, ProbeReport, RestoreReport, RestoreRequest,
    RunContext, ValidationErrors,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The sqlite plugin.
pub struct SqlitePlugin;

/// Fact: the SQLite library version that made the copy.
pub const FACT_SQLITE_VERSION: &str = "sqliteVersion";
/// Fact: the database's journal mode (`wal`, `delete`, ...).
pub const FACT_JOURNAL_MODE: &str = "journalMode";
/// Fact: the number of pages of the copy.
pub const FACT_PAGE_COUNT: &str = "pageCount";
/// Fact: the page size of the copy, in bytes.
pub const FACT_PAGE_SIZE: &str = "pageSize";
/// Fact: the database's path inside the claim.
pub const FACT_PATH: &str = "path";

/// How long to wait for a lock the application holds before giving up with `Timeout`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

impl Plugin for SqlitePlugin {
    type Config = SqliteConfig;
    const KEY: &'static str = "sqlite";

    fn info() -> PluginInfo {
        PluginInfo {
            key: Self::KEY,
            name: "SQLite",
            version: env!("CARGO_PKG_VERSION"),
            description: "A SQLite database file on an application's claim, copied live with SQLite's online backup API",
            capabilities: Capabilities {
                backup: true,
                restore: true,
                probe: true,
            },
            artifact_extension: "sqlite",
            content_type: "application/vnd.sqlite3",
            execution: Execution::Native,
            needs_kubernetes_api: false,
        }
    }

    fn app_claim(config: &SqliteConfig) -> Option<AppClaim> {
        Some(AppClaim {
            claim_name: config.claim_name.clone(),
        })
    }

    fn validate(config: &SqliteConfig) -> Result<(), ValidationErrors> {
        config.validate()
    }

    async fn probe(config: &SqliteConfig, ctx: &RunContext) -> Result<ProbeReport, PluginError> {
        let file = Location::of(config, ctx, None)?;
        let facts = blocking(move || {
            let (db, _) = file.open_source()?;
            let facts = describe(&db, &file)?;
            Ok(facts)
        })
        .await?;
        let message = format!(
            "database {} on claim {:?}: SQLite {}, journal mode {}, {} pages",
            facts[FACT_PATH],
            config.claim_name,
            facts[FACT_SQLITE_VERSION],
            facts[FACT_JOURNAL_MODE],
            facts[FACT_PAGE_COUNT],
        );
        Ok(ProbeReport { message, facts })
    }

    async fn backup(
        config: &SqliteConfig,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> Result<BackupReport, PluginError> {
        let file = Location::of(config, ctx, None)?;
        let scratch = Scratch::new(ctx, "backup")?;
        let copy = scratch.path.clone();
        tracing::info!(
            namespace = %ctx.namespace,
            target = %ctx.target,
            path = %file.shown,
            claim = %config.claim_name,
            "copying the database with the online backup API"
        );
        let facts = blocking(move || {
            const ATTEMPTS: u32 = 3;
            for attempt in 1..=ATTEMPTS {
                let (source, immutable) = file.open_source()?;
                let journal_mode = pragma_text(&source, "journal_mode", &file)?;
                remove_database_files(&copy);
                let mut copy_db =
                    Connection::open(&copy).map_err(|e| scratch_error(&copy, e))?;
                copy_all(&source, &mut copy_db, &file)?;
                drop(source);
                // A file copied as immutable must not have changed meanwhile.
                if let Some(before) = immutable
                    && FileState::of(&file.path) != Some(before)
                {
                    tracing::warn!(attempt, path = %file.shown, "the database changed while it was copied as immutable; copying again");
                    if attempt == ATTEMPTS {
                        return Err(PluginError::Timeout(format!(
                            "{} on claim {:?} kept changing while it was copied ({ATTEMPTS} attempts) and the claim is mounted read-only without the application's -shm file; retry, or back up while the application runs",
                            file.shown, file.claim
                        )));
                    }
                    continue;
                }
                quick_check(&copy_db, "the copy")?;
                let mut facts = describe(&copy_db, &file)?;
                facts.insert(FACT_JOURNAL_MODE.to_owned(), journal_mode);
                return Ok(facts);
            }
            unreachable!("the last attempt returns")
        })
        .await?;
        let mut input = tokio::fs::File::open(&scratch.path).await?;
        let copied = tokio::io::copy(&mut input, sink).await?;
        sink.flush().await?;
        tracing::info!(bytes = copied, pages = %facts[FACT_PAGE_COUNT], "database copied");
        Ok(BackupReport { facts })
    }

    async fn inspect_destination(
        config: &SqliteConfig,
        ctx: &RunContext,
        request: &RestoreRequest,
    ) -> Result<DestinationReport, PluginError> {
        let file = Location::of(config, ctx, request.into.as_deref())?;
        let size = match std::fs::metadata(&file.path) {
            Ok(meta) if meta.is_dir() => {
                return Err(PluginError::InvalidConfig(ValidationErrors::single(
                    "path",
                    format!("{} is a directory on the claim; name a file", file.shown),
                )));
            }
            Ok(meta) => Some(meta.len()),
            Err(e) if e.kind() == IoKind::NotFound => None,
            Err(e) => return Err(file.io_error(e)),
        };
        let (holds_data, description) = match size {
            None => (
                false,
                format!(
                    "{} does not exist on claim {:?}",
                    file.shown, config.claim_name
                ),
            ),
            Some(0) => (
                false,
                format!("{} on claim {:?} is empty", file.shown, config.claim_name),
            ),
            Some(bytes) => (
                true,
                format!(
                    "{} on claim {:?} holds a {bytes}-byte file",
                    file.shown, config.claim_name
                ),
            ),
        };
        Ok(DestinationReport {
            holds_data,
            description,
        })
    }

    async fn restore(
        config: &SqliteConfig,
        ctx: &RunContext,
        source: &mut ArtifactSource<'_>,
        request: &RestoreRequest,
    ) -> Result<RestoreReport, PluginError> {
        let file = Location::of(config, ctx, request.into.as_deref())?;
        let scratch = Scratch::new(ctx, "restore")?;
        {
            let mut output = tokio::fs::File::create(&scratch.path)
                .await
                .map_err(|e| PluginError::Io(scratch_io(&scratch.path, e)))?;
            let mut buffer = vec![0u8; 256 * 1024];
            loop {
                let n = source.read(&mut buffer).await?;
                if n == 0 {
                    break;
                }
                output.write_all(&buffer[..n]).await?;
            }
            output.sync_all().await?;
        }
        let artifact = scratch.path.clone();
        let shown = file.shown.clone();
        let pages = blocking(move || {
            let from = Connection::open_with_flags(&artifact, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| not_a_database("the artifact", e))?;
            quick_check(&from, "the artifact")?;
            if let Some(parent) = file.path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| file.io_error(e))?;
            }
            let mut into = Connection::open(&file.path).map_err(|e| file.sqlite_error(e))?;
            into.busy_timeout(BUSY_TIMEOUT)
                .map_err(|e| file.sqlite_error(e))?;
            copy_all(&from, &mut into, &file)?;
            let pages: i64 = into
                .query_row("PRAGMA page_count", [], |row| row.get(0))
                .map_err(|e| file.sqlite_error(e))?;
            Ok(pages)
        })
        .await?;
        Ok(RestoreReport {
            message: format!(
                "restored {pages} pages into {shown} on claim {:?}",
                config.claim_name
            ),
        })
    }
}

/// The database file of a run: its path in the pod and the path shown in messages.
#[derive(Clone, Debug)]
struct Location {
    path: PathBuf,
    shown: String,
    claim: String,
}

impl Location {
    /// `into` (a path inside the claim, for restores) or the config's `path`, under the
    /// claim's mount.
    fn of(
        config: &SqliteConfig,
        ctx: &RunContext,
        into: Option<&str>,
    ) -> Result<Self, PluginError> {
        let (field, text) = match into {
            Some(into) => ("into", into),
            None => ("path", config.path.as_str()),
        };
        let relative = relative_path(text).map_err(|message| {
            PluginError::InvalidConfig(ValidationErrors::single(field, message))
        })?;
        Ok(Location {
            path: ctx.claim_root()?.join(&relative),
            shown: format!("{:?}", relative.display().to_string()),
            claim: config.claim_name.clone(),
        })
    }

    /// Open the database read-only, as it is, without creating anything.
    ///
    /// A WAL-mode database that no connection has open has no `-shm` file, and on a
    /// read-only mount SQLite cannot create one: the normal open fails. Then, when no
    /// `-wal` file holds commits either, the file alone is the whole database, and it is
    /// opened as immutable; the returned [`FileState`] lets the caller check that nothing
    /// started writing it during the copy.
    fn open_source(&self) -> Result<(Connection, Option<FileState>), PluginError> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.is_dir() => {
                return Err(PluginError::InvalidConfig(ValidationErrors::single(
                    "path",
                    format!(
                        "{} is a directory on claim {:?}; name the database file",
                        self.shown, self.claim
                    ),
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(self.io_error(e)),
        }
        let open = |target: &str, flags: OpenFlags| -> Result<Connection, rusqlite::Error> {
            let db = Connection::open_with_flags(target, flags)?;
            db.busy_timeout(BUSY_TIMEOUT)?;
            // Reading the header is where a file that is not a database shows, and where
            // a missing -shm shows.
            db.query_row("PRAGMA schema_version", [], |row| row.get::<_, i64>(0))?;
            Ok(db)
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let path = self.path.to_string_lossy().into_owned();
        match open(&path, flags) {
            Ok(db) => Ok((db, None)),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen) => {
                let before = FileState::of(&self.path);
                let readable = std::fs::File::open(&self.path).is_ok();
                if !readable || before.as_ref().is_none_or(|s| s.wal_bytes > 0) {
                    return Err(self.sqlite_error(e));
                }
                let uri = format!("file:{}?immutable=1", uri_path(&path));
                let db = open(&uri, flags | OpenFlags::SQLITE_OPEN_URI)
                    .map_err(|e| self.sqlite_error(e))?;
                tracing::info!(
                    path = %self.shown,
                    "no connection has the database open (no -shm file) and the claim is read-only: copying the file as immutable, then checking that it did not change"
                );
                Ok((db, before))
            }
            Err(e) => Err(self.sqlite_error(e)),
        }
    }

    fn io_error(&self, e: std::io::Error) -> PluginError {
        match e.kind() {
            IoKind::NotFound => PluginError::NotFound(format!(
                "spec.sqlite.path: no file {} on claim {:?} (mounted at the claim's root); check the path the application uses",
                self.shown, self.claim
            )),
            IoKind::PermissionDenied => PluginError::Unauthorized(format!(
                "spec.sqlite.path: {} on claim {:?} cannot be read or written by the backup pod's user ({e}); set spec.job.runAs to the application's user and group",
                self.shown, self.claim
            )),
            _ => PluginError::Io(std::io::Error::new(
                e.kind(),
                format!("{} on claim {:?}: {e}", self.shown, self.claim),
            )),
        }
    }

    fn sqlite_error(&self, e: rusqlite::Error) -> PluginError {
        use rusqlite::ErrorCode as C;
        let code = e.sqlite_error_code();
        let what = format!("{} on claim {:?}", self.shown, self.claim);
        match code {
            Some(C::NotADatabase) => PluginError::InvalidConfig(ValidationErrors::single(
                "path",
                format!("{what} is not a SQLite database ({e}); name the database file"),
            )),
            Some(C::CannotOpen) if !self.path.exists() => self.io_error(IoKind::NotFound.into()),
            Some(C::CannotOpen | C::PermissionDenied | C::ReadOnly) => {
                PluginError::Unauthorized(format!(
                    "spec.sqlite.path: {what} cannot be opened by the pod's user ({e}); set spec.job.runAs to the application's user and group"
                ))
            }
            Some(C::DatabaseBusy | C::DatabaseLocked) => PluginError::Timeout(format!(
                "{what} stayed locked by the application for {}s ({e}); retry when it is less busy",
                BUSY_TIMEOUT.as_secs()
            )),
            Some(C::DatabaseCorrupt) => {
                PluginError::ToolFailed(format!("SQLite reports {what} as corrupt: {e}"))
            }
            _ => PluginError::ToolFailed(format!("SQLite failed on {what}: {e}")),
        }
    }
}

/// What tells whether a database file changed: its size and modification time, and the
/// size of its `-wal` file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileState {
    len: u64,
    modified: Option<std::time::SystemTime>,
    wal_bytes: u64,
}

impl FileState {
    fn of(path: &Path) -> Option<FileState> {
        let meta = std::fs::metadata(path).ok()?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Some(FileState {
            len: meta.len(),
            modified: meta.modified().ok(),
            wal_bytes: std::fs::metadata(PathBuf::from(wal)).map_or(0, |m| m.len()),
        })
    }
}

/// `path` for a `file:` URI: the characters that URIs give a meaning escaped.
fn uri_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// A scratch file in the pod's temporary directory (an emptyDir), removed when dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(ctx: &RunContext, purpose: &str) -> Result<Self, PluginError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let name: String = format!("stowage-sqlite-{purpose}-{}-{pid}-{n}.db", ctx.run_id)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let path = std::env::temp_dir().join(name);
        remove_database_files(&path);
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_database_files(&self.path);
    }
}

/// Remove a database file and the journal files SQLite may leave next to it.
fn remove_database_files(path: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

/// Copy every page of `from` into `to` in one step of the online backup API: a single
/// read transaction of the source and a single write transaction of the destination.
fn copy_all(from: &Connection, to: &mut Connection, file: &Location) -> Result<(), PluginError> {
    let backup = Backup::new(from, to).map_err(|e| file.sqlite_error(e))?;
    match backup.step(-1).map_err(|e| file.sqlite_error(e))? {
        rusqlite::backup::StepResult::Done => Ok(()),
        rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
            Err(PluginError::Timeout(format!(
                "{} on claim {:?} was locked by the application during the copy; retry when it is less busy",
                file.shown, file.claim
            )))
        }
        other => Err(PluginError::Internal(format!(
            "the online backup of {} did not finish in one step: {other:?}",
            file.shown
        ))),
    }
}

/// `PRAGMA quick_check` of `db` (`what` names it in the error).
fn quick_check(db: &Connection, what: &str) -> Result<(), PluginError> {
    let verdict: String = db
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|e| not_a_database(what, e))?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(PluginError::ToolFailed(format!(
            "SQLite's quick_check of {what} failed: {verdict}"
        )))
    }
}

fn not_a_database(what: &str, e: rusqlite::Error) -> PluginError {
    PluginError::ToolFailed(format!("{what} is not a readable SQLite database: {e}"))
}

fn pragma_text(db: &Connection, pragma: &str, file: &Location) -> Result<String, PluginError> {
    db.query_row(&format!("PRAGMA {pragma}"), [], |row| {
        row.get::<_, String>(0)
    })
    .map_err(|e| file.sqlite_error(e))
}

/// The facts of a database: SQLite version, journal mode, page count and size, path.
fn describe(db: &Connection, file: &Location) -> Result<BTreeMap<String, String>, PluginError> {
    let int = |pragma: &str| -> Result<i64, PluginError> {
        db.query_row(&format!("PRAGMA {pragma}"), [], |row| row.get::<_, i64>(0))
            .map_err(|e| file.sqlite_error(e))
    };
    Ok(BTreeMap::from([
        (
            FACT_SQLITE_VERSION.to_owned(),
            rusqlite::version().to_owned(),
        ),
        (
            FACT_JOURNAL_MODE.to_owned(),
            pragma_text(db, "journal_mode", file)?,
        ),
        (FACT_PAGE_COUNT.to_owned(), int("page_count")?.to_string()),
        (FACT_PAGE_SIZE.to_owned(), int("page_size")?.to_string()),
        (
            FACT_PATH.to_owned(),
            file.shown.trim_matches('"').to_owned(),
        ),
    ]))
}

fn scratch_error(path: &Path, e: rusqlite::Error) -> PluginError {
    PluginError::Io(std::io::Error::other(format!(
        "cannot create the scratch copy {} in the pod's temporary directory: {e}",
        path.display()
    )))
}

fn scratch_io(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(
        e.kind(),
        format!(
            "cannot write the scratch copy {} in the pod's temporary directory: {e}",
            path.display()
        ),
    )
}

/// Run SQLite's blocking calls off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PluginError> + Send + 'static,
) -> Result<T, PluginError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PluginError::Internal(format!("the SQLite task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::uri_path;

    #[test]
    fn uri_paths_escape_what_uris_give_a_meaning() {
        for (path, want) in [
            ("/data/db.sqlite3", "/data/db.sqlite3"),
            ("/data/a b/x.db", "/data/a b/x.db"),
            ("/data/what?.db", "/data/what%3f.db"),
            ("/data/#1/100%.db", "/data/%231/100%25.db"),
        ] {
            assert_eq!(uri_path(path), want, "{path}");
        }
    }
}
