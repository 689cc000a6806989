//! The `mysql` plugin: MariaDB and MySQL backups with `mariadb-dump` / `mysqldump`,
//! restored with the `mariadb` / `mysql` client.
//!
//! It is a tool plugin: its Job runs an image with the client tools of the server's family
//! and version (`mariadb:11` by default, `mysql:8.4` for a MySQL 8.4 server) with the
//! static stowage runner copied in. It uses `mariadb-dump` and `mariadb` when the image has
//! them, else `mysqldump` and `mysql`. Every tool gets the connection on its command line
//! (`--host`, `--port`, `--user`, `--protocol=TCP`, TLS flags) after `--no-defaults`, so no
//! option file of the image changes where or as whom it connects, and the password only in
//! its environment (`MYSQL_PWD`): a secret never appears in a tool's argv, and every tool
//! output (the stdout facts are read from, the stderr errors quote) comes back from the
//! SDK's `ToolCommand` already redacted.
//!
//! - **probe** connects with the client (`SELECT VERSION()`), checks that every database
//!   the config names exists, and that the image has a dump tool.
//! - **backup** runs the same checks, then the dump tool with `--single-transaction`
//!   (InnoDB tables in one consistent snapshot, without locking them), `--routines`,
//!   `--triggers`, `--events` and `--hex-blob`, streaming its stdout into the artifact sink
//!   with backpressure: memory stays flat whatever the dump's size. One database is dumped
//!   without `--databases`, so the dump has no `CREATE DATABASE` or `USE` and can be
//!   restored under another name; several (or all) are dumped with `--databases` and
//!   restored under their own names. Facts recorded: `serverVersion`, `dumpTool`,
//!   `dumpToolVersion`, and `database` or `databases` (a JSON list) with `allDatabases`.
//! - **inspect_destination** and **restore**: see [`MysqlPlugin::inspect_with`] and
//!   [`MysqlPlugin::restore_with`].

mod config;
mod errors;
mod options;
mod toolbox;
mod version;

pub use config::{MysqlConfig, SYSTEM_SCHEMAS, Selection, SslMode, check_database_name};
pub use options::{DumpOptionError, check_dump_option};
pub use toolbox::{CLIENTS, DUMP_TOOLS, Toolbox};
pub use version::Family;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::time::Duration;

use stowage_plugin_sdk::tool::{ToolCommand, ToolFailure, ToolOutput};
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, BackupReport, Capabilities, DestinationReport, Execution, Plugin,
    PluginError, PluginInfo, ProbeReport, Redactor, RestoreReport, RestoreRequest, RunContext,
    SecretValue, ValidationErrors,
};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::errors::{Endpoint, classify_failure, excerpt};
use crate::version::{batch_rows, tool_version_line};

/// The MariaDB / MySQL plugin.
pub struct MysqlPlugin;

/// Image used when neither `spec.mysql.image` nor `spec.job.image` is set.
pub const DEFAULT_IMAGE: &str = "mariadb:11";

/// The client's connect timeout (`--connect-timeout`), in seconds.
pub const CONNECT_TIMEOUT_SECONDS: u32 = 15;

/// The longest a short command (a query, `--version`, creating a database) may run.
const SHORT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long dropping a database may take.
const DROP_TIMEOUT: Duration = Duration::from_secs(600);

/// Fact: the server's `VERSION()`.
pub const FACT_SERVER_VERSION: &str = "serverVersion";
/// Fact: the dump tool's program name (`mariadb-dump` or `mysqldump`).
pub const FACT_DUMP_TOOL: &str = "dumpTool";
/// Fact: the dump tool's `--version` line.
pub const FACT_DUMP_TOOL_VERSION: &str = "dumpToolVersion";
/// Fact: the one database dumped (without `--databases`: restorable under another name).
pub const FACT_DATABASE: &str = "database";
/// Fact: the databases dumped with `--databases`, as a JSON list of names.
pub const FACT_DATABASES: &str = "databases";
/// Fact: `true` when the databases were every database of the server.
pub const FACT_ALL_DATABASES: &str = "allDatabases";

/// The first line of a dump by a recent `mariadb-dump` (10.5.25, 10.6.18, 10.11.8, 11.x
/// and later): a MariaDB client enters its sandbox mode (no shell escapes) there; MySQL's
/// client cannot parse it, so it is left out when one restores the dump.
const SANDBOX_LINE: &[u8] = b"/*M!999999\\- enable the sandbox mode */";

impl Plugin for MysqlPlugin {
    type Config = MysqlConfig;
    const KEY: &'static str = "mysql";

    fn info() -> PluginInfo {
        PluginInfo {
            key: Self::KEY,
            name: "MariaDB / MySQL",
            version: env!("CARGO_PKG_VERSION"),
            description: "MariaDB and MySQL databases with mariadb-dump/mysqldump \
                          (--single-transaction, routines, triggers, events), restored with \
                          the client",
            capabilities: Capabilities {
                backup: true,
                restore: true,
                probe: true,
            },
            artifact_extension: "sql",
            content_type: "application/sql",
            execution: Execution::Tool {
                default_image: DEFAULT_IMAGE,
            },
            needs_kubernetes_api: false,
        }
    }

    fn validate(config: &MysqlConfig) -> Result<(), ValidationErrors> {
        config.validate()
    }

    async fn probe(config: &MysqlConfig, ctx: &RunContext) -> Result<ProbeReport, PluginError> {
        Self::probe_with(config, ctx, &Toolbox::from_env()).await
    }

    async fn backup(
        config: &MysqlConfig,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> Result<BackupReport, PluginError> {
        Self::backup_with(config, ctx, sink, &Toolbox::from_env()).await
    }

    async fn inspect_destination(
        config: &MysqlConfig,
        ctx: &RunContext,
        request: &RestoreRequest,
    ) -> Result<DestinationReport, PluginError> {
        Self::inspect_with(config, ctx, request, &Toolbox::from_env()).await
    }

    async fn restore(
        config: &MysqlConfig,
        ctx: &RunContext,
        source: &mut ArtifactSource<'_>,
        request: &RestoreRequest,
    ) -> Result<RestoreReport, PluginError> {
        Self::restore_with(config, ctx, source, request, &Toolbox::from_env()).await
    }
}

/// What a probe or a backup learned before dumping.
struct Checked {
    /// The server's `VERSION()`.
    server: String,
    /// The dump tool's program name.
    dump_tool: &'static str,
    /// Its `--version` line.
    dump_version: String,
    /// The databases to dump.
    databases: Vec<String>,
}

impl MysqlPlugin {
    /// [`Plugin::probe`] with the tools from `tools`: connects and authenticates with the
    /// client, reads the server's version, checks that every database the config names
    /// exists and that the image has a dump tool.
    pub async fn probe_with(
        config: &MysqlConfig,
        ctx: &RunContext,
        tools: &Toolbox,
    ) -> Result<ProbeReport, PluginError> {
        let session = Session::new(config, ctx, tools)?;
        let checked = session.check().await?;
        let mut facts = BTreeMap::new();
        facts.insert(FACT_SERVER_VERSION.to_owned(), checked.server.clone());
        facts.insert(
            FACT_DUMP_TOOL_VERSION.to_owned(),
            checked.dump_version.clone(),
        );
        let what = match session.selection() {
            Selection::All => format!(
                "{} database(s) besides the system schemas",
                checked.databases.len()
            ),
            _ => format!("database(s) {} present", quoted_list(&checked.databases)),
        };
        let mut message = format!(
            "connected to {} {} at {} as {:?}; {what}; {} can dump them",
            Family::of(&checked.server),
            checked.server,
            session.address(),
            config.username,
            checked.dump_tool,
        );
        message.push_str(&family_note(&checked));
        Ok(ProbeReport { message, facts })
    }

    /// [`Plugin::backup`] with the tools from `tools`: checks as the probe does, then
    /// streams the dump into `sink`.
    pub async fn backup_with(
        config: &MysqlConfig,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
        tools: &Toolbox,
    ) -> Result<BackupReport, PluginError> {
        let session = Session::new(config, ctx, tools)?;
        let checked = session.check().await?;
        let selection = session.selection();
        let args = dump_args(&selection, &checked.databases, &config.extra_dump_options);
        let tool = checked.dump_tool;
        tracing::info!(
            namespace = %ctx.namespace,
            target = %ctx.target,
            tool,
            databases = ?checked.databases,
            server_version = %checked.server,
            "dumping"
        );
        let output = session
            .command(tool, false)
            .await?
            .args(args)
            .run_to_sink(sink, &session.redactor, session.classifier(tool))
            .await?;
        session.log_warnings(tool, &output);
        tracing::info!(tool, bytes = output.bytes, "dump finished");

        let mut facts = BTreeMap::new();
        facts.insert(FACT_SERVER_VERSION.to_owned(), checked.server);
        facts.insert(FACT_DUMP_TOOL.to_owned(), tool.to_owned());
        facts.insert(FACT_DUMP_TOOL_VERSION.to_owned(), checked.dump_version);
        match selection {
            Selection::One(database) => {
                facts.insert(FACT_DATABASE.to_owned(), database.to_owned());
            }
            Selection::Several(_) | Selection::All => {
                facts.insert(
                    FACT_DATABASES.to_owned(),
                    serde_json::to_string(&checked.databases)
                        .map_err(|e| PluginError::Internal(e.to_string()))?,
                );
                if selection == Selection::All {
                    facts.insert(FACT_ALL_DATABASES.to_owned(), "true".to_owned());
                }
            }
        }
        Ok(BackupReport { facts })
    }

    /// [`Plugin::inspect_destination`] with the tools from `tools`: whether a restore of the
    /// artifact `request` describes would overwrite data, without changing anything.
    ///
    /// A database holds data when it exists and has at least one table or view. For a
    /// one-database artifact that is the database `request.into` (else
    /// `spec.mysql.database`); for a several-databases artifact each database it holds
    /// (for an artifact without facts, every database of the server but the system
    /// schemas). Connection failures are classified like every other operation's.
    pub async fn inspect_with(
        config: &MysqlConfig,
        ctx: &RunContext,
        request: &RestoreRequest,
        tools: &Toolbox,
    ) -> Result<DestinationReport, PluginError> {
        let session = Session::new(config, ctx, tools)?;
        let destination = destination(config, request)?;
        let tables = session.table_counts().await?;
        Ok(describe_destination(
            &destination,
            &tables,
            &session.address(),
        ))
    }

    /// [`Plugin::restore`] with the tools from `tools`.
    ///
    /// The artifact's kind comes from the facts recorded at backup time, falling back to
    /// the destination config's selection.
    ///
    /// - **One database** (dumped without `--databases`): restored into `request.into`,
    ///   else `spec.mysql.database`, with the client connected to that database. A database
    ///   that does not exist is created first (`CREATE DATABASE`, the server's default
    ///   character set), and dropped again if the restore fails; an existing (empty)
    ///   database is used as is. Routines, triggers, events and views keep their `DEFINER`:
    ///   restoring as another user needs the privilege to set it (`SET USER` on MariaDB
    ///   10.5+, `SET_USER_ID`/`SUPER` on MySQL).
    /// - **Several or all databases** (dumped with `--databases`): replayed by the client
    ///   as recorded: the dump creates each database (`CREATE DATABASE IF NOT EXISTS`) and
    ///   fills it under its own name, so `request.into` is rejected.
    ///
    /// The client stops at the first error. A dump's statements are not one transaction
    /// (MariaDB and MySQL commit every DDL statement), so a failed restore into an existing
    /// database leaves what was restored until then.
    ///
    /// `request.replace` (`mode: Replace`) is refused with [`PluginError::Unsupported`]:
    /// MariaDB and MySQL cannot rename a database, so there is no way to restore next to
    /// the existing data and swap it in atomically, and dropping it first would lose it if
    /// the restore failed. Restore `into` an empty (or new) database instead, then point
    /// the application at it or move the tables with `RENAME TABLE`.
    pub async fn restore_with(
        config: &MysqlConfig,
        ctx: &RunContext,
        source: &mut ArtifactSource<'_>,
        request: &RestoreRequest,
        tools: &Toolbox,
    ) -> Result<RestoreReport, PluginError> {
        let session = Session::new(config, ctx, tools)?;
        let destination = destination(config, request)?;
        if request.replace {
            return Err(PluginError::Unsupported(format!(
                "the mysql plugin cannot replace existing databases (mode: Replace): MariaDB \
                 and MySQL cannot rename a database, so a failed restore could not leave the \
                 existing data untouched. Restore into an empty or new database instead \
                 (mode: IntoEmpty{}), then switch the application over",
                match destination {
                    Destination::One(_) => " with spec.destination.into naming a new database",
                    Destination::Several(_) => ", into a server without these databases",
                }
            )));
        }
        let client = session.client().await?;
        let mut reader = BufReader::new(source);
        if client.family == Family::MySql {
            // MySQL's client cannot parse mariadb-dump's sandbox-mode line.
            let head = reader.fill_buf().await?;
            if head.starts_with(SANDBOX_LINE)
                && let Some(end) = head.iter().position(|&b| b == b'\n')
            {
                reader.consume(end + 1);
            }
        }
        let mut input = ArtifactSource::new(reader);
        let address = session.address();
        match destination {
            Destination::One(database) => {
                let existing = session.table_counts().await?;
                let created = !existing.contains_key(database);
                if created {
                    session.create_database(database).await?;
                }
                tracing::info!(
                    namespace = %ctx.namespace,
                    target = %ctx.target,
                    tool = client.program,
                    database,
                    created,
                    "restoring"
                );
                let restored = session
                    .command(client.program, true)
                    .await?
                    .args(restore_args(Some(database)))
                    .run_from_source(
                        &mut input,
                        &session.redactor,
                        session.classifier(client.program),
                    )
                    .await;
                let output = match restored {
                    Ok(output) => output,
                    Err(error) if created => {
                        let note = match session.drop_database(database).await {
                            Ok(()) => format!(
                                "; the database {database:?} created for the restore was \
                                 dropped again"
                            ),
                            Err(e) => format!(
                                "; the database {database:?} created for the restore could not \
                                 be dropped ({e}): drop it by hand"
                            ),
                        };
                        return Err(with_note(error, &note));
                    }
                    Err(error) => {
                        return Err(with_note(
                            error,
                            &format!(
                                "; database {database:?} existed before the restore and keeps \
                                 what was restored until the error"
                            ),
                        ));
                    }
                };
                session.log_warnings(client.program, &output);
                let how = if created {
                    "created and restored"
                } else {
                    "restored"
                };
                let from = match request.facts.get(FACT_DATABASE) {
                    Some(source) if source != database => format!(" from a dump of {source:?}"),
                    _ => String::new(),
                };
                Ok(RestoreReport {
                    message: format!(
                        "{how} database {database:?} on the server at {address}{from}"
                    ),
                })
            }
            Destination::Several(databases) => {
                tracing::info!(
                    namespace = %ctx.namespace,
                    target = %ctx.target,
                    tool = client.program,
                    databases = ?databases,
                    "restoring several databases under their own names"
                );
                let output = session
                    .command(client.program, true)
                    .await?
                    .args(restore_args(None))
                    .run_from_source(
                        &mut input,
                        &session.redactor,
                        session.classifier(client.program),
                    )
                    .await?;
                session.log_warnings(client.program, &output);
                let which = match databases {
                    Some(names) => format!("database(s) {}", quoted_list(&names)),
                    None => "the databases of the dump".to_owned(),
                };
                Ok(RestoreReport {
                    message: format!("restored {which} on the server at {address}"),
                })
            }
        }
    }
}

/// `"a", "b"`.
fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A note for a probe when the dump tool's family is not the server's.
fn family_note(checked: &Checked) -> String {
    let server = Family::of(&checked.server);
    let tool = Family::of(&checked.dump_version);
    if server == tool {
        return String::new();
    }
    format!(
        "; note: {} is {tool}'s and the server is {server}: if backups fail, set \
         spec.mysql.image to a {server} image of the server's version",
        checked.dump_tool
    )
}

/// The dump tool's arguments after the connection: the consistent snapshot, everything
/// that lives in a database besides tables, the user's options, then `--` and the
/// databases.
fn dump_args(selection: &Selection<'_>, databases: &[String], extra: &[String]) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--single-transaction",
        "--routines",
        "--triggers",
        "--events",
        "--hex-blob",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    if !matches!(selection, Selection::One(_)) {
        args.push("--databases".into());
    }
    args.extend(extra.iter().map(OsString::from));
    // After `--`, a database name is never read as an option, and an option of the user's
    // written without its value takes `--` (and fails) rather than a database name.
    args.push("--".into());
    args.extend(databases.iter().map(OsString::from));
    args
}

/// The client's arguments for a restore, after the connection: into `database`, or as
/// the dump says (`None`).
fn restore_args(database: Option<&str>) -> Vec<OsString> {
    // Binary mode: a dump's data is bytes, not the client's commands (`\C`, `\d`, ...).
    let mut args: Vec<OsString> = vec!["--batch".into(), "--binary-mode".into()];
    if let Some(database) = database {
        args.push(format!("--database={database}").into());
    }
    args
}

/// Where a restore writes: the one place that decides it from the artifact's facts and
/// the request, for restores and destination inspections alike.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Destination<'a> {
    /// This one database (a one-database dump, restored under any name).
    One(&'a str),
    /// The databases of a `--databases` dump, under their own names (`None`: an artifact
    /// without facts, whose list is unknown).
    Several(Option<Vec<String>>),
}

/// The destination of a restore of the artifact `request` describes.
fn destination<'a>(
    config: &'a MysqlConfig,
    request: &'a RestoreRequest,
) -> Result<Destination<'a>, PluginError> {
    let several = if let Some(list) = request.facts.get(FACT_DATABASES) {
        let names: Vec<String> = serde_json::from_str(list).map_err(|_| {
            PluginError::Unsupported(format!(
                "the artifact's recorded databases {list:?} are not a JSON list of names"
            ))
        })?;
        Some(Some(names))
    } else if request.facts.contains_key(FACT_DATABASE) {
        None
    } else {
        match config.selection() {
            Some(Selection::Several(names)) => Some(Some(names.to_vec())),
            Some(Selection::All) => Some(None),
            _ => None,
        }
    };
    if let Some(names) = several {
        if let Some(into) = &request.into {
            return Err(PluginError::InvalidConfig(ValidationErrors::single(
                "into",
                format!(
                    "the artifact holds several databases (dumped with --databases), which \
                     restore under their own names, not into {into:?}; restore without a \
                     target database"
                ),
            )));
        }
        return Ok(Destination::Several(names));
    }
    let database = request
        .into
        .as_deref()
        .filter(|d| !d.is_empty())
        .or(config.database.as_deref())
        .ok_or_else(|| {
            PluginError::InvalidConfig(ValidationErrors::single(
                "into",
                "name the database to restore into (the restore's spec.destination.into, or \
                 spec.mysql.database of the destination target)",
            ))
        })?;
    check_database_name(database)
        .map_err(|e| PluginError::InvalidConfig(ValidationErrors::single("into", e)))?;
    Ok(Destination::One(database))
}

/// What a restore into `destination` would overwrite, given the server's databases and
/// their table counts.
fn describe_destination(
    destination: &Destination<'_>,
    tables: &BTreeMap<String, u64>,
    address: &str,
) -> DestinationReport {
    let tables_phrase = |n: u64| {
        if n == 1 {
            "1 table".to_owned()
        } else {
            format!("{n} tables")
        }
    };
    match destination {
        Destination::One(database) => match tables.get(*database) {
            None => DestinationReport {
                holds_data: false,
                description: format!(
                    "database {database:?} does not exist on the server at {address}; it will \
                     be created"
                ),
            },
            Some(0) => DestinationReport {
                holds_data: false,
                description: format!(
                    "database {database:?} on the server at {address} exists and has no tables"
                ),
            },
            Some(&n) => DestinationReport {
                holds_data: true,
                description: format!(
                    "database {database:?} on the server at {address} has {}",
                    tables_phrase(n)
                ),
            },
        },
        Destination::Several(names) => {
            let candidates: Vec<&String> = match names {
                Some(names) => names.iter().collect(),
                None => tables
                    .keys()
                    .filter(|d| !SYSTEM_SCHEMAS.contains(&d.as_str()))
                    .collect(),
            };
            let full: Vec<String> = candidates
                .iter()
                .filter_map(|d| {
                    let n = *tables.get(d.as_str())?;
                    (n > 0).then(|| format!("{d:?} ({})", tables_phrase(n)))
                })
                .collect();
            if full.is_empty() {
                let which = match names {
                    Some(names) => format!("none of {}", quoted_list(names)),
                    None => "no database besides the system schemas".to_owned(),
                };
                DestinationReport {
                    holds_data: false,
                    description: format!(
                        "the server at {address} has {which} with tables; the dump's databases \
                         will be created as needed"
                    ),
                }
            } else {
                DestinationReport {
                    holds_data: true,
                    description: format!("the server at {address} already has {}", full.join(", ")),
                }
            }
        }
    }
}

/// `error` with `note` appended to its message, its kind kept.
fn with_note(error: PluginError, note: &str) -> PluginError {
    match error {
        PluginError::NotFound(m) => PluginError::NotFound(m + note),
        PluginError::Unreachable(m) => PluginError::Unreachable(m + note),
        PluginError::Unauthorized(m) => PluginError::Unauthorized(m + note),
        PluginError::Remote { status, message } => PluginError::Remote {
            status,
            message: message + note,
        },
        PluginError::Timeout(m) => PluginError::Timeout(m + note),
        PluginError::Io(e) => PluginError::Io(std::io::Error::new(e.kind(), format!("{e}{note}"))),
        PluginError::Unsupported(m) => PluginError::Unsupported(m + note),
        PluginError::ToolFailed(m) => PluginError::ToolFailed(m + note),
        PluginError::Internal(m) => PluginError::Internal(m + note),
        other => other,
    }
}

/// `error` with every secret value in its message replaced.
fn redacted(error: PluginError, redactor: &Redactor) -> PluginError {
    let r = |m: String| redactor.redact(&m);
    match error {
        PluginError::NotFound(m) => PluginError::NotFound(r(m)),
        PluginError::Unreachable(m) => PluginError::Unreachable(r(m)),
        PluginError::Unauthorized(m) => PluginError::Unauthorized(r(m)),
        PluginError::Remote { status, message } => PluginError::Remote {
            status,
            message: r(message),
        },
        PluginError::Timeout(m) => PluginError::Timeout(r(m)),
        PluginError::Unsupported(m) => PluginError::Unsupported(r(m)),
        PluginError::ToolFailed(m) => PluginError::ToolFailed(r(m)),
        PluginError::Internal(m) => PluginError::Internal(r(m)),
        other => other,
    }
}

/// A MySQL identifier in backquotes.
fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The connection arguments every tool gets, after `--no-defaults` (which must come
/// first). No secret: the password goes into `MYSQL_PWD`.
fn connection_args(config: &MysqlConfig, family: Family, client: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--no-defaults".into(),
        "--protocol=TCP".into(),
        format!("--host={}", config.host).into(),
        format!("--port={}", config.port).into(),
        format!("--user={}", config.username).into(),
        "--default-character-set=utf8mb4".into(),
    ];
    if client {
        args.push(format!("--connect-timeout={CONNECT_TIMEOUT_SECONDS}").into());
    }
    args.extend(
        ssl_args(config.ssl_mode, family)
            .into_iter()
            .map(OsString::from),
    );
    args
}

/// The TLS flags of `mode` in the spelling of a `family` tool.
fn ssl_args(mode: Option<SslMode>, family: Family) -> Vec<&'static str> {
    match (mode, family) {
        (None, _) => vec![],
        (Some(SslMode::Disabled), Family::MariaDb) => vec!["--skip-ssl"],
        (Some(SslMode::Preferred), Family::MariaDb) => vec![],
        (Some(SslMode::Required), Family::MariaDb) => vec!["--ssl"],
        (Some(SslMode::VerifyCa | SslMode::VerifyIdentity), Family::MariaDb) => {
            vec!["--ssl", "--ssl-verify-server-cert"]
        }
        (Some(SslMode::Disabled), Family::MySql) => vec!["--ssl-mode=DISABLED"],
        (Some(SslMode::Preferred), Family::MySql) => vec!["--ssl-mode=PREFERRED"],
        (Some(SslMode::Required), Family::MySql) => vec!["--ssl-mode=REQUIRED"],
        (Some(SslMode::VerifyCa), Family::MySql) => vec!["--ssl-mode=VERIFY_CA"],
        (Some(SslMode::VerifyIdentity), Family::MySql) => vec!["--ssl-mode=VERIFY_IDENTITY"],
    }
}

/// A tool of the image and what it said about itself.
#[derive(Clone, Debug)]
struct Tool {
    program: &'static str,
    version: String,
    family: Family,
}

/// One operation's connection: the config, the password and the tools.
struct Session<'a> {
    config: &'a MysqlConfig,
    password: Option<&'a SecretValue>,
    redactor: Redactor,
    tools: &'a Toolbox,
}

impl<'a> Session<'a> {
    fn new(
        config: &'a MysqlConfig,
        ctx: &'a RunContext,
        tools: &'a Toolbox,
    ) -> Result<Session<'a>, PluginError> {
        config
            .validate()
            .map_err(|e| PluginError::InvalidConfig(e.prefixed("spec.mysql")))?;
        let password = match &config.password_secret_ref {
            Some(reference) => Some(ctx.secret(reference)?),
            None => None,
        };
        Ok(Session {
            config,
            password,
            redactor: ctx.secrets.redactor(),
            tools,
        })
    }

    fn selection(&self) -> Selection<'a> {
        // Session::new validated the config, so it selects exactly one way.
        self.config.selection().unwrap_or(Selection::All)
    }

    fn address(&self) -> String {
        if self.config.host.contains(':') {
            format!("[{}]:{}", self.config.host, self.config.port)
        } else {
            format!("{}:{}", self.config.host, self.config.port)
        }
    }

    /// `program` with a C locale and the tools' search path, and none of the variables
    /// that would change where, as whom or with which password it connects.
    fn bare(&self, program: &'static str) -> ToolCommand {
        ToolCommand::new(program)
            // The child's PATH is also where the program is looked up.
            .env("PATH", self.tools.search_path().to_string_lossy())
            .env("LC_ALL", "C")
            .env_remove("MYSQL_PWD")
            .env_remove("MYSQL_HOST")
            .env_remove("MYSQL_TCP_PORT")
            .env_remove("MYSQL_UNIX_PORT")
            .env_remove("LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN")
            // MySQL reads ~/.mylogin.cnf even with --no-defaults; this points it nowhere.
            .env("MYSQL_TEST_LOGIN_FILE", "/nonexistent/.mylogin.cnf")
            .env("MYSQL_HISTFILE", "/dev/null")
    }

    /// `<program> --version`: the tool, its version line and family.
    async fn tool(&self, program: &'static str) -> Result<Tool, PluginError> {
        let output = self
            .bare(program)
            .arg("--version")
            .timeout(SHORT_COMMAND_TIMEOUT)
            .run(&self.redactor, self.classifier(program))
            .await?;
        let version = tool_version_line(&output.stdout).ok_or_else(|| {
            PluginError::Unsupported(format!(
                "{program} --version printed nothing; set spec.mysql.image to an image with \
                 the MariaDB or MySQL client tools, such as {DEFAULT_IMAGE}"
            ))
        })?;
        Ok(Tool {
            program,
            family: Family::of(&version),
            version,
        })
    }

    /// The image's client (`mariadb`, else `mysql`).
    async fn client(&self) -> Result<Tool, PluginError> {
        self.tool(self.tools.first_of(CLIENTS)?).await
    }

    /// The image's dump tool (`mariadb-dump`, else `mysqldump`).
    async fn dump_tool(&self) -> Result<Tool, PluginError> {
        self.tool(self.tools.first_of(DUMP_TOOLS)?).await
    }

    /// `program` connected to the server (the password only in its environment); `client`
    /// for the command-line client, which also gets the connect timeout.
    async fn command(
        &self,
        program: &'static str,
        client: bool,
    ) -> Result<ToolCommand, PluginError> {
        // Only TLS flags differ between the families: ask the tool only when they matter.
        let family = match self.config.ssl_mode {
            None => Family::MariaDb,
            Some(_) => self.tool(program).await?.family,
        };
        let command = self
            .bare(program)
            .args(connection_args(self.config, family, client));
        Ok(match self.password {
            Some(password) => command.secret_env("MYSQL_PWD", password),
            None => command,
        })
    }

    /// Turns a failure of `program` into a typed error.
    fn classifier(&self, program: &'static str) -> impl Fn(&ToolFailure) -> PluginError + use<'_> {
        let endpoint = Endpoint {
            address: self.address(),
            username: self.config.username.clone(),
            password_ref: self.config.password_secret_ref.clone(),
        };
        move |failure: &ToolFailure| {
            let error = classify_failure(
                program,
                &endpoint,
                &failure.stderr,
                &self.redactor,
                failure.code,
            );
            // The message also quotes the config (a user name may be a password too).
            redacted(error, &self.redactor)
        }
    }

    fn log_warnings(&self, tool: &str, output: &ToolOutput) {
        let said = excerpt(&output.stderr);
        if !said.is_empty() {
            tracing::warn!(tool, stderr = %said, "the tool reported warnings");
        }
    }

    /// Run `sql` with the client (no database selected); its output rows.
    async fn query(&self, sql: &str, timeout: Duration) -> Result<Vec<Vec<String>>, PluginError> {
        let client = self.tools.first_of(CLIENTS)?;
        let output = self
            .command(client, true)
            .await?
            .args(["--batch", "--skip-column-names", "--execute"])
            .arg(sql)
            .timeout(timeout)
            .run(&self.redactor, self.classifier(client))
            .await?;
        Ok(batch_rows(&output.stdout))
    }

    /// The server's version and its databases.
    async fn server(&self) -> Result<(String, BTreeSet<String>), PluginError> {
        let rows = self
            .query(
                "SELECT VERSION(); SELECT SCHEMA_NAME FROM information_schema.SCHEMATA",
                SHORT_COMMAND_TIMEOUT,
            )
            .await?;
        let mut rows = rows.into_iter().map(|mut r| r.swap_remove(0));
        let version = rows.next().ok_or_else(|| {
            PluginError::ToolFailed("the client printed nothing for SELECT VERSION()".to_owned())
        })?;
        Ok((version, rows.collect()))
    }

    /// Every database the user sees, with its number of tables and views.
    async fn table_counts(&self) -> Result<BTreeMap<String, u64>, PluginError> {
        let rows = self
            .query(
                "SELECT s.SCHEMA_NAME, COUNT(t.TABLE_NAME) FROM information_schema.SCHEMATA s \
                 LEFT JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = s.SCHEMA_NAME \
                 GROUP BY s.SCHEMA_NAME",
                SHORT_COMMAND_TIMEOUT,
            )
            .await?;
        rows.into_iter()
            .map(|row| match row.as_slice() {
                [name, count] => count
                    .parse()
                    .map(|n| (name.clone(), n))
                    .map_err(|_| row_error(&row)),
                _ => Err(row_error(&row)),
            })
            .collect()
    }

    /// The dump tool, the server's version and the databases to dump, after checking that
    /// every database named exists.
    async fn check(&self) -> Result<Checked, PluginError> {
        let dump = self.dump_tool().await?;
        let (server, present) = self.server().await?;
        let address = self.address();
        let databases: Vec<String> = match self.selection() {
            Selection::One(database) => vec![database.to_owned()],
            Selection::Several(names) => names.to_vec(),
            Selection::All => {
                let names: Vec<String> = present
                    .iter()
                    .filter(|d| !SYSTEM_SCHEMAS.contains(&d.as_str()))
                    .cloned()
                    .collect();
                if names.is_empty() {
                    return Err(PluginError::NotFound(format!(
                        "the server at {address} has no databases besides the system schemas \
                         (or user {:?} sees none): nothing to back up; check \
                         spec.mysql.allDatabases and the user's privileges",
                        self.config.username
                    )));
                }
                names
            }
        };
        let field = match self.selection() {
            Selection::One(_) => "spec.mysql.database".to_owned(),
            _ => "spec.mysql.databases".to_owned(),
        };
        if let Some(missing) = missing_databases(&databases, &present, &field) {
            return Err(PluginError::NotFound(format!(
                "{missing} on the server at {address} (or user {:?} has no privilege on it)",
                self.config.username
            )));
        }
        Ok(Checked {
            server,
            dump_tool: dump.program,
            dump_version: dump.version,
            databases,
        })
    }

    /// Run one statement with the client.
    async fn execute(&self, sql: &str, timeout: Duration) -> Result<(), PluginError> {
        self.query(sql, timeout).await.map(drop)
    }

    /// Create `database` (failing when it exists).
    async fn create_database(&self, database: &str) -> Result<(), PluginError> {
        self.execute(
            &format!("CREATE DATABASE {}", quote_identifier(database)),
            SHORT_COMMAND_TIMEOUT,
        )
        .await
    }

    /// Drop `database`.
    async fn drop_database(&self, database: &str) -> Result<(), PluginError> {
        self.execute(
            &format!("DROP DATABASE IF EXISTS {}", quote_identifier(database)),
            DROP_TIMEOUT,
        )
        .await
    }
}

/// Which of `wanted` is not in `present`, as a message naming `field`; `None` when all are.
fn missing_databases(wanted: &[String], present: &BTreeSet<String>, field: &str) -> Option<String> {
    let missing: Vec<String> = wanted
        .iter()
        .filter(|d| !present.contains(*d))
        .cloned()
        .collect();
    match missing.as_slice() {
        [] => None,
        [one] => Some(format!("database {one:?} does not exist; check {field}")),
        many => Some(format!(
            "databases {} do not exist; check {field}",
            quoted_list(many)
        )),
    }
}

fn row_error(row: &[String]) -> PluginError {
    PluginError::ToolFailed(format!(
        "the client printed {:?} where a database and its table count were expected",
        row.join("\t")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use stowage_plugin_sdk::ErrorKind;

    fn config(selection: serde_json::Value) -> MysqlConfig {
        let mut base = json!({"host": "db", "username": "backup",
            "passwordSecretRef": {"name": "db", "key": "password"}});
        base.as_object_mut()
            .unwrap()
            .extend(selection.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn one_database_is_dumped_without_naming_it_several_with_databases() {
        let one = config(json!({"database": "shop"}));
        let args = strings(&dump_args(
            &one.selection().unwrap(),
            &["shop".to_owned()],
            &["--skip-add-locks".to_owned()],
        ));
        assert_eq!(
            args,
            [
                "--single-transaction",
                "--routines",
                "--triggers",
                "--events",
                "--hex-blob",
                "--skip-add-locks",
                "--",
                "shop"
            ]
        );
        let several = config(json!({"databases": ["a", "b"]}));
        let args = strings(&dump_args(
            &several.selection().unwrap(),
            &["a".to_owned(), "b".to_owned()],
            &[],
        ));
        assert!(args.ends_with(&["--databases".into(), "--".into(), "a".into(), "b".into()]));
    }

    #[test]
    fn the_connection_is_on_the_command_line_without_the_password() {
        let mut c = config(json!({"database": "shop", "port": 3307, "sslMode": "VerifyCa"}));
        let mariadb = strings(&connection_args(&c, Family::MariaDb, true));
        assert_eq!(
            mariadb,
            [
                "--no-defaults",
                "--protocol=TCP",
                "--host=db",
                "--port=3307",
                "--user=backup",
                "--default-character-set=utf8mb4",
                "--connect-timeout=15",
                "--ssl",
                "--ssl-verify-server-cert"
            ]
        );
        let mysql = strings(&connection_args(&c, Family::MySql, false));
        assert_eq!(mysql.last().unwrap(), "--ssl-mode=VERIFY_CA");
        assert!(!mysql.iter().any(|a| a.starts_with("--connect-timeout")));
        c.ssl_mode = None;
        assert!(
            !strings(&connection_args(&c, Family::MySql, true))
                .iter()
                .any(|a| a.contains("ssl"))
        );
    }

    #[test]
    fn ssl_modes_map_to_each_family() {
        let cases = [
            (
                SslMode::Disabled,
                vec!["--skip-ssl"],
                vec!["--ssl-mode=DISABLED"],
            ),
            (SslMode::Preferred, vec![], vec!["--ssl-mode=PREFERRED"]),
            (
                SslMode::Required,
                vec!["--ssl"],
                vec!["--ssl-mode=REQUIRED"],
            ),
            (
                SslMode::VerifyIdentity,
                vec!["--ssl", "--ssl-verify-server-cert"],
                vec!["--ssl-mode=VERIFY_IDENTITY"],
            ),
        ];
        for (mode, mariadb, mysql) in cases {
            assert_eq!(ssl_args(Some(mode), Family::MariaDb), mariadb, "{mode:?}");
            assert_eq!(ssl_args(Some(mode), Family::MySql), mysql, "{mode:?}");
        }
    }

    fn request(facts: &[(&str, &str)], into: Option<&str>) -> RestoreRequest {
        RestoreRequest {
            facts: facts
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            into: into.map(str::to_owned),
            replace: false,
        }
    }

    #[test]
    fn the_destination_follows_the_artifact_then_the_request() {
        let one = config(json!({"database": "shop"}));
        let several = config(json!({"databases": ["a", "b"]}));
        let all = config(json!({"allDatabases": true}));
        // (config, facts, into, Ok(destination) or the field of the error)
        let cases: Vec<(&MysqlConfig, RestoreRequest, Result<Destination, &str>)> = vec![
            (
                &one,
                request(&[("database", "shop")], None),
                Ok(Destination::One("shop")),
            ),
            (
                &one,
                request(&[("database", "shop")], Some("copy")),
                Ok(Destination::One("copy")),
            ),
            (
                &one,
                request(&[], Some("copy")),
                Ok(Destination::One("copy")),
            ),
            // A one-database artifact into a target that names no one database.
            (&all, request(&[("database", "shop")], None), Err("into")),
            (
                &all,
                request(&[("database", "shop")], Some("copy")),
                Ok(Destination::One("copy")),
            ),
            (
                &one,
                request(&[("database", "shop")], Some("a/b")),
                Err("into"),
            ),
            (
                &one,
                request(&[("databases", "[\"a\",\"b\"]")], None),
                Ok(Destination::Several(Some(vec!["a".into(), "b".into()]))),
            ),
            (
                &one,
                request(&[("databases", "[\"a\"]")], Some("copy")),
                Err("into"),
            ),
            (
                &several,
                request(&[], None),
                Ok(Destination::Several(Some(vec!["a".into(), "b".into()]))),
            ),
            (&all, request(&[], None), Ok(Destination::Several(None))),
        ];
        for (config, request, want) in cases {
            let got = destination(config, &request).map_err(|e| match e {
                PluginError::InvalidConfig(errors) => errors.0[0].field.clone(),
                other => panic!("{other}"),
            });
            assert_eq!(got, want.map_err(str::to_owned), "{request:?}");
        }
        let err = destination(&one, &request(&[("databases", "nope")], None)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }

    #[test]
    fn destinations_hold_data_when_a_database_has_tables() {
        let tables: BTreeMap<String, u64> =
            [("shop", 3), ("empty", 0), ("mysql", 31), ("other", 1)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
        let at = "db:3306";
        let cases = [
            (Destination::One("shop"), true, "has 3 tables"),
            (Destination::One("empty"), false, "exists and has no tables"),
            (Destination::One("new"), false, "will be created"),
            (
                Destination::Several(Some(vec!["new".into(), "empty".into()])),
                false,
                "none of \"new\", \"empty\"",
            ),
            (
                Destination::Several(Some(vec!["new".into(), "other".into()])),
                true,
                "\"other\" (1 table)",
            ),
            (
                Destination::Several(None),
                true,
                "\"other\" (1 table), \"shop\" (3 tables)",
            ),
        ];
        for (destination, holds, says) in cases {
            let report = describe_destination(&destination, &tables, at);
            assert_eq!(report.holds_data, holds, "{destination:?}");
            assert!(report.description.contains(says), "{}", report.description);
            assert!(report.description.contains(at), "{}", report.description);
        }
        let only_system: BTreeMap<String, u64> = [("mysql".to_owned(), 31)].into();
        assert!(!describe_destination(&Destination::Several(None), &only_system, at).holds_data);
    }

    #[test]
    fn missing_databases_name_the_field() {
        let present: BTreeSet<String> = ["shop".to_owned(), "mysql".to_owned()].into();
        assert_eq!(missing_databases(&["shop".into()], &present, "f"), None);
        assert_eq!(
            missing_databases(&["nope".into()], &present, "spec.mysql.database").as_deref(),
            Some("database \"nope\" does not exist; check spec.mysql.database")
        );
        assert_eq!(
            missing_databases(&["a".into(), "shop".into(), "b".into()], &present, "f").as_deref(),
            Some("databases \"a\", \"b\" do not exist; check f")
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("shop"), "`shop`");
        assert_eq!(quote_identifier("a`b"), "`a``b`");
    }

    #[test]
    fn notes_keep_the_error_kind() {
        let err = with_note(PluginError::ToolFailed("mariadb failed".into()), "; note");
        assert_eq!(err.kind(), ErrorKind::ToolFailed);
        assert_eq!(err.to_string(), "mariadb failed; note");
    }

    #[test]
    fn a_missing_secret_names_the_secret() {
        let c = config(json!({"database": "shop"}));
        let ctx = RunContext::new("ns", "t");
        let tools = Toolbox::with_search_path("/nowhere");
        let err = Session::new(&c, &ctx, &tools).err().unwrap();
        assert!(err.to_string().contains("Secret \"db\""), "{err}");
    }
}
