//! The `postgres` plugin: PostgreSQL backups with `pg_dump` / `pg_dumpall`, restores with
//! `pg_restore` / `psql`.
//!
//! It is a tool plugin: its Job runs a PostgreSQL image (so the dump tool's version
//! matches the server's) with the static stowage runner copied in. Each operation spawns
//! the image's client tools with the connection in libpq's environment variables
//! (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGSSLMODE`, `PGCONNECT_TIMEOUT`, and the
//! password in `PGPASSWORD`): a secret never appears in a tool's argv, and every tool
//! output (the stdout facts are read from, the stderr errors and warnings quote) comes
//! back from the SDK's `ToolCommand` already redacted.
//!
//! - **probe** asks the server for its version with `psql` and checks that the image's
//!   `pg_dump` (or `pg_dumpall`) is at least as new: PostgreSQL's dump tools refuse newer
//!   servers.
//! - **backup** runs the same checks, then `pg_dump --format=<format>` (one database) or
//!   `pg_dumpall` (every database, roles and tablespaces, plain SQL), streaming its stdout
//!   into the artifact sink with backpressure: memory stays flat whatever the dump's size.
//!   Facts recorded: `serverVersion`, `dumpToolVersion`, `format`, and `database` or
//!   `allDatabases`.
//! - **inspect_destination** tells whether a restore would overwrite data: see
//!   [`PostgresPlugin::inspect_with`].
//! - **restore**: see [`PostgresPlugin::restore_with`].

mod config;
mod errors;
mod options;
mod toolbox;
mod version;

pub use config::{DumpFormat, PostgresConfig, SslMode};
pub use options::{DumpOptionError, DumpTool, parse_dump_option};
pub use toolbox::Toolbox;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, BackupReport, Capabilities, DestinationReport, Execution, Plugin,
    PluginError, PluginInfo, ProbeReport, Redactor, RestoreReport, RestoreRequest, RunContext,
    SecretValue, ValidationErrors,
};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};

use stowage_plugin_sdk::tool::{ToolCommand, ToolFailure, ToolOutput};

use crate::errors::{Endpoint, classify_failure, excerpt};
use crate::version::{ServerVersion, ToolVersion, check_dump_compatible};

/// The PostgreSQL plugin.
pub struct PostgresPlugin;

/// Image used when neither `spec.postgres.image` nor `spec.job.image` is set.
pub const DEFAULT_IMAGE: &str = "postgres:17";

/// libpq's connect timeout for every tool (`PGCONNECT_TIMEOUT`), in seconds.
pub const CONNECT_TIMEOUT_SECONDS: u32 = 15;

/// The longest a short command (a version query, `--version`, creating a database) may run.
const SHORT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The database short commands and all-databases restores connect to.
const MAINTENANCE_DATABASE: &str = "postgres";

/// Fact: the server's `server_version`.
pub const FACT_SERVER_VERSION: &str = "serverVersion";
/// Fact: the dump tool's version.
pub const FACT_DUMP_TOOL_VERSION: &str = "dumpToolVersion";
/// Fact: the database dumped (one-database backups).
pub const FACT_DATABASE: &str = "database";
/// Fact: `true` for an all-databases (`pg_dumpall`) backup.
pub const FACT_ALL_DATABASES: &str = "allDatabases";
/// Fact: the dump format (`custom`, `plain` or `tar`).
pub const FACT_FORMAT: &str = "format";

impl Plugin for PostgresPlugin {
    type Config = PostgresConfig;
    const KEY: &'static str = "postgres";

    fn info() -> PluginInfo {
        PluginInfo {
            key: Self::KEY,
            name: "PostgreSQL",
            version: env!("CARGO_PKG_VERSION"),
            description: "PostgreSQL databases with pg_dump/pg_dumpall, restored with pg_restore/psql",
            capabilities: Capabilities {
                backup: true,
                restore: true,
                probe: true,
            },
            artifact_extension: "dump",
            content_type: "application/vnd.postgresql.dump",
            execution: Execution::Tool {
                default_image: DEFAULT_IMAGE,
            },
            needs_kubernetes_api: false,
        }
    }

    /// `dump` for custom archives, `sql` for plain SQL (every all-databases dump), `tar`
    /// for tar archives.
    fn artifact_extension(config: &PostgresConfig) -> String {
        match config.effective_format() {
            DumpFormat::Custom => "dump",
            DumpFormat::Plain => "sql",
            DumpFormat::Tar => "tar",
        }
        .to_owned()
    }

    fn validate(config: &PostgresConfig) -> Result<(), ValidationErrors> {
        config.validate()
    }

    async fn probe(config: &PostgresConfig, ctx: &RunContext) -> Result<ProbeReport, PluginError> {
        Self::probe_with(config, ctx, &Toolbox::from_env()).await
    }

    async fn backup(
        config: &PostgresConfig,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> Result<BackupReport, PluginError> {
        Self::backup_with(config, ctx, sink, &Toolbox::from_env()).await
    }

    async fn inspect_destination(
        config: &PostgresConfig,
        ctx: &RunContext,
        request: &RestoreRequest,
    ) -> Result<DestinationReport, PluginError> {
        Self::inspect_with(config, ctx, request, &Toolbox::from_env()).await
    }

    async fn restore(
        config: &PostgresConfig,
        ctx: &RunContext,
        source: &mut ArtifactSource<'_>,
        request: &RestoreRequest,
    ) -> Result<RestoreReport, PluginError> {
        Self::restore_with(config, ctx, source, request, &Toolbox::from_env()).await
    }
}

impl PostgresPlugin {
    /// [`Plugin::probe`] with the tools from `tools`: connects and authenticates with `psql`,
    /// reads the server's version, and checks that the dump tool can dump it.
    pub async fn probe_with(
        config: &PostgresConfig,
        ctx: &RunContext,
        tools: &Toolbox,
    ) -> Result<ProbeReport, PluginError> {
        let session = Session::new(config, ctx, tools)?;
        let (server, dump_tool) = session.check_versions().await?;
        let mut facts = BTreeMap::new();
        facts.insert(FACT_SERVER_VERSION.to_owned(), server.text.clone());
        facts.insert(FACT_DUMP_TOOL_VERSION.to_owned(), dump_tool.text.clone());
        let message = format!(
            "connected to PostgreSQL {} at {} as {:?} (database {:?}); {} {} can dump it",
            server.short(),
            session.address(),
            config.username,
            session.dump_database(),
            session.dump_tool(),
            dump_tool.short()
        );
        Ok(ProbeReport { message, facts })
    }

    /// [`Plugin::backup`] with the tools from `tools`: checks versions, then streams
    /// `pg_dump` (or `pg_dumpall`) into `sink`.
    pub async fn backup_with(
        config: &PostgresConfig,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
        tools: &Toolbox,
    ) -> Result<BackupReport, PluginError> {
        let session = Session::new(config, ctx, tools)?;
        let (server, dump_tool) = session.check_versions().await?;
        let format = config.effective_format();
        let all = config.dumps_all_databases();
        let mut args: Vec<OsString> = Vec::new();
        if !all {
            args.push(format!("--format={}", format_name(format)).into());
        }
        if format == DumpFormat::Custom
            && !sets_compression(config.dump_tool(), &config.extra_dump_options)
        {
            // stowage compresses the stream (spec.compression, zstd by default); pg_dump's
            // own gzip would only cost CPU and defeat it.
            args.push("--compress=0".into());
        }
        args.push("--no-password".into());
        args.extend(config.extra_dump_options.iter().map(OsString::from));
        let database = session.dump_database();
        let tool = session.dump_tool();
        tracing::info!(
            namespace = %ctx.namespace,
            target = %ctx.target,
            tool,
            database,
            format = format_name(format),
            server_version = %server.text,
            "dumping"
        );
        let output = session
            .command(tool, database, args)?
            .run_to_sink(sink, &session.redactor, session.classifier(tool, database))
            .await?;
        session.log_warnings(tool, &output);
        tracing::info!(tool, bytes = output.bytes, "dump finished");

        let mut facts = BTreeMap::new();
        facts.insert(FACT_SERVER_VERSION.to_owned(), server.text);
        facts.insert(FACT_DUMP_TOOL_VERSION.to_owned(), dump_tool.text);
        facts.insert(FACT_FORMAT.to_owned(), format_name(format).to_owned());
        if all {
            facts.insert(FACT_ALL_DATABASES.to_owned(), "true".to_owned());
        } else {
            facts.insert(FACT_DATABASE.to_owned(), database.to_owned());
        }
        Ok(BackupReport { facts })
    }

    /// [`Plugin::inspect_destination`] with the tools from `tools`: whether a restore of
    /// the artifact `request` describes would overwrite data, without changing anything.
    ///
    /// The artifact's kind comes from its facts exactly as for [`PostgresPlugin::restore_with`]
    /// (with the same errors for a missing database name, or a target database given for an
    /// all-databases artifact).
    ///
    /// - **One database** (`request.into`, else `spec.postgres.database`): holds data when it
    ///   exists and has at least one user table (an ordinary or partitioned table outside
    ///   `pg_catalog`, `information_schema` and the TOAST schemas; temporary tables do not
    ///   count). Its existence is checked through the `postgres` database, its tables by
    ///   connecting to it.
    /// - **All databases** (`pg_dumpall`): the server holds data when it has a database other
    ///   than `postgres`, `template0` and `template1` (the description names up to five), or
    ///   when its `postgres` database has user tables.
    ///
    /// Connection failures are classified like every other operation's (a wrong password is
    /// `Unauthorized`, a refused connection `Unreachable`, ...); no message carries the
    /// password.
    pub async fn inspect_with(
        config: &PostgresConfig,
        ctx: &RunContext,
        request: &RestoreRequest,
        tools: &Toolbox,
    ) -> Result<DestinationReport, PluginError> {
        let session = Session::new(config, ctx, tools)?;
        match destination(config, request)? {
            Destination::AllDatabases => session.inspect_server().await,
            Destination::Database(database) => session.inspect_database(database).await,
        }
    }

    /// [`Plugin::restore`] with the tools from `tools`.
    ///
    /// The artifact's format and kind come from the facts recorded at backup time
    /// (`format`, `allDatabases`), falling back to the destination config.
    ///
    /// - **One database** (custom, tar or plain): the destination database is
    ///   `request.into`, else `spec.postgres.database`. Custom and tar archives are restored
    ///   with `pg_restore --exit-on-error --single-transaction --no-owner --no-privileges`:
    ///   the whole restore is one transaction (all or nothing), and objects are owned by the
    ///   restoring role without the source's grants, because the source's roles often do not
    ///   exist on the destination (and would abort the restore). Plain dumps are replayed
    ///   verbatim with `psql -v ON_ERROR_STOP=1 --single-transaction`; roles they name in
    ///   `OWNER TO` or `GRANT` must exist (back up with `extraDumpOptions: [--no-owner,
    ///   --no-privileges]` to avoid that).
    ///   - Without `request.replace` (`mode: IntoEmpty`), the database is created (`CREATE
    ///     DATABASE` through `psql` connected to the `postgres` database) when it does not
    ///     exist; an existing database is used as is and nothing in it is dropped, so a
    ///     restore over existing tables fails (and, being one transaction, leaves nothing
    ///     behind).
    ///   - With `request.replace` (`mode: Replace`), nothing is lost if the restore fails:
    ///     the artifact is restored into a new scratch database
    ///     (`<database>_stowage_new_<8 hex digits>`, the name shortened to stay within
    ///     PostgreSQL's 63 bytes), which is dropped again when the restore fails, leaving
    ///     the existing database untouched. On success the other sessions on the existing
    ///     database are ended (`pg_terminate_backend`; a non-superuser needs
    ///     `pg_signal_backend` to end other roles' sessions), then one transaction renames the
    ///     existing database to `<database>_stowage_old_<same digits>` and the scratch
    ///     database to its name (PostgreSQL allows `ALTER DATABASE ... RENAME` in a
    ///     transaction block, so applications never see the name missing), and the old
    ///     database is dropped. When the database did not exist, the scratch database is
    ///     simply renamed into place. If the swap fails (sessions reconnected, or the role
    ///     may not rename the database: that needs its ownership and `CREATEDB`), the
    ///     scratch database is dropped and the error says what to do; the existing database
    ///     is unchanged. The replaced database's own settings (owner, grants, `ALTER
    ///     DATABASE ... SET` parameters) are not carried over: the new one is created like
    ///     any restored database, owned by the restoring role.
    /// - **All databases** (`pg_dumpall`): replayed with `psql -v ON_ERROR_STOP=1` connected
    ///   to the `postgres` database; `request.into` is rejected, and so is
    ///   `request.replace` (`Unsupported`: such an artifact restores only into a fresh
    ///   server). Roles that already exist on
    ///   the destination (at least the restoring superuser) are updated rather than failing
    ///   the restore (`CREATE ROLE` becomes create-if-missing, the dump's `ALTER ROLE`
    ///   follows). The restoring role (`spec.postgres.username`) keeps its own password, so
    ///   the script's reconnections and the destination's Secret keep working; other roles
    ///   get the dump's passwords unless the backup used `--no-role-passwords`.
    ///   Databases of the dump other than `postgres` and `template1` must not exist yet: restore
    ///   into a fresh server.
    pub async fn restore_with(
        config: &PostgresConfig,
        ctx: &RunContext,
        source: &mut ArtifactSource<'_>,
        request: &RestoreRequest,
        tools: &Toolbox,
    ) -> Result<RestoreReport, PluginError> {
        let session = Session::new(config, ctx, tools)?;
        let destination = destination(config, request)?;
        let format = match request.facts.get(FACT_FORMAT) {
            Some(name) => parse_format(name).ok_or_else(|| {
                PluginError::Unsupported(format!(
                    "the artifact's recorded format {name:?} is not one this plugin restores \
                     (custom, plain, tar)"
                ))
            })?,
            None if destination == Destination::AllDatabases => DumpFormat::Plain,
            None => config.effective_format(),
        };
        let database = match destination {
            Destination::AllDatabases if request.replace => {
                return Err(PluginError::Unsupported(
                    "the artifact holds every database of a server (pg_dumpall), which \
                     restores only into a fresh server (mode IntoEmpty), never over existing \
                     databases (mode Replace)"
                        .to_owned(),
                ));
            }
            Destination::AllDatabases => return session.restore_all(source).await,
            Destination::Database(database) => database,
        };
        if request.replace {
            return session
                .replace_database(ctx, database, format, source)
                .await;
        }
        let created = session.ensure_database(database).await?;
        tracing::info!(
            namespace = %ctx.namespace,
            target = %ctx.target,
            tool = restore_tool(format),
            database,
            created,
            format = format_name(format),
            "restoring"
        );
        session.restore_into(database, format, source).await?;
        let how = if created {
            "created and restored"
        } else {
            "restored"
        };
        Ok(RestoreReport {
            message: format!(
                "{how} database {database:?} on PostgreSQL at {} from a {} dump",
                session.address(),
                format_name(format)
            ),
        })
    }
}

/// Where a restore writes: the one place that decides it from the artifact's facts and the
/// request, for restores and destination inspections alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Destination<'a> {
    /// Every database of the server (a `pg_dumpall` artifact).
    AllDatabases,
    /// This one database.
    Database(&'a str),
}

/// The destination of a restore of the artifact `request` describes: all databases for a
/// `pg_dumpall` artifact (its `allDatabases` fact; without facts, the destination config's
/// kind), else the database `request.into` or `spec.postgres.database`.
fn destination<'a>(
    config: &'a PostgresConfig,
    request: &'a RestoreRequest,
) -> Result<Destination<'a>, PluginError> {
    let all = match request.facts.get(FACT_ALL_DATABASES) {
        Some(value) => value == "true",
        None if request.facts.contains_key(FACT_DATABASE) => false,
        None => config.dumps_all_databases(),
    };
    if all {
        if let Some(into) = &request.into {
            return Err(PluginError::InvalidConfig(ValidationErrors::single(
                "into",
                format!(
                    "the artifact holds every database of a server (pg_dumpall), which \
                     restores into their own names, not into {into:?}; restore without a \
                     target database"
                ),
            )));
        }
        return Ok(Destination::AllDatabases);
    }
    request
        .into
        .as_deref()
        .filter(|d| !d.is_empty())
        .or(config.database.as_deref())
        .map(Destination::Database)
        .ok_or_else(|| {
            PluginError::InvalidConfig(ValidationErrors::single(
                "database",
                "name the database to restore into (spec.postgres.database or the \
                 restore's target database)",
            ))
        })
}

/// One operation's connection: the config, the password and the tools.
struct Session<'a> {
    config: &'a PostgresConfig,
    password: Option<&'a SecretValue>,
    redactor: Redactor,
    tools: &'a Toolbox,
}

impl<'a> Session<'a> {
    fn new(
        config: &'a PostgresConfig,
        ctx: &'a RunContext,
        tools: &'a Toolbox,
    ) -> Result<Session<'a>, PluginError> {
        config
            .validate()
            .map_err(|e| PluginError::InvalidConfig(e.prefixed("spec.postgres")))?;
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

    fn address(&self) -> String {
        if self.config.host.contains(':') {
            format!("[{}]:{}", self.config.host, self.config.port)
        } else {
            format!("{}:{}", self.config.host, self.config.port)
        }
    }

    /// `pg_dumpall` for all-databases configs, else `pg_dump`.
    fn dump_tool(&self) -> &'static str {
        self.config.dump_tool().name()
    }

    /// The database dumped (`postgres` for all-databases configs, which pg_dumpall starts
    /// from).
    fn dump_database(&self) -> &'a str {
        match (&self.config.database, self.config.dumps_all_databases()) {
            (Some(database), false) => database,
            _ => MAINTENANCE_DATABASE,
        }
    }

    /// `program` (which must be in the toolbox) with its arguments and a C locale, so its
    /// messages can be classified.
    fn tool(&self, program: &'static str, args: Vec<OsString>) -> Result<ToolCommand, PluginError> {
        self.tools.require(program)?;
        Ok(ToolCommand::new(program)
            .args(args)
            // The child's PATH is also where the program is looked up.
            .env("PATH", self.tools.search_path().to_string_lossy())
            .env("LC_ALL", "C"))
    }

    /// `program` with the connection to `database` in its environment (the password
    /// only there).
    fn command(
        &self,
        program: &'static str,
        database: &str,
        args: Vec<OsString>,
    ) -> Result<ToolCommand, PluginError> {
        let mut command = self
            .tool(program, args)?
            // Connection settings the runner's image or pod may carry would override or
            // add to the config's (another password, a service file's host and options,
            // a fixed address): only the config decides where and as whom to connect.
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .env_remove("PGSERVICE")
            .env_remove("PGHOSTADDR")
            .env("PGHOST", &self.config.host)
            .env("PGPORT", self.config.port.to_string())
            .env("PGUSER", &self.config.username)
            .env("PGDATABASE", database)
            .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECONDS.to_string());
        if let Some(mode) = self.config.ssl_mode {
            command = command.env("PGSSLMODE", mode.as_str());
        }
        Ok(match self.password {
            Some(password) => command.secret_env("PGPASSWORD", password),
            // Without a password libpq must not read one from the image's ~/.pgpass either.
            None => command.env("PGPASSFILE", "/dev/null"),
        })
    }

    /// Turns a failure of `program` connected to `database` into a typed error.
    fn classifier(
        &self,
        program: &'static str,
        database: &str,
    ) -> impl Fn(&ToolFailure) -> PluginError + use<'_> {
        let endpoint = Endpoint {
            address: self.address(),
            username: self.config.username.clone(),
            password_ref: self.config.password_secret_ref.clone(),
            database: database.to_owned(),
        };
        move |failure: &ToolFailure| {
            classify_failure(
                program,
                &endpoint,
                &failure.stderr,
                &self.redactor,
                failure.code,
            )
        }
    }

    fn log_warnings(&self, tool: &str, output: &ToolOutput) {
        let said = excerpt(&output.stderr);
        if !said.is_empty() {
            tracing::warn!(tool, stderr = %said, "the tool reported warnings");
        }
    }

    /// `<tool> --version`.
    async fn tool_version(&self, tool: &'static str) -> Result<ToolVersion, PluginError> {
        let output = self
            .tool(tool, vec!["--version".into()])?
            .timeout(SHORT_COMMAND_TIMEOUT)
            .run(&self.redactor, self.classifier(tool, ""))
            .await?;
        ToolVersion::parse(&output.stdout).ok_or_else(|| {
            PluginError::Unsupported(format!(
                "{tool} --version printed {:?}, not a PostgreSQL version; set \
                 spec.postgres.image to a PostgreSQL image such as {DEFAULT_IMAGE}",
                excerpt(&output.stdout)
            ))
        })
    }

    /// Connect to `database`, authenticate and read the server's version.
    async fn server_version(&self, database: &str) -> Result<ServerVersion, PluginError> {
        let output = self
            .command(
                "psql",
                database,
                vec![
                    "-XAtq".into(),
                    "--no-password".into(),
                    "-c".into(),
                    "select current_setting('server_version_num'), current_setting('server_version')"
                        .into(),
                ],
            )?
            .timeout(SHORT_COMMAND_TIMEOUT)
            .run(&self.redactor, self.classifier("psql", database))
            .await?;
        ServerVersion::parse(&output.stdout).ok_or_else(|| {
            PluginError::ToolFailed(format!(
                "psql printed {:?} instead of the server's version",
                excerpt(&output.stdout)
            ))
        })
    }

    /// The server's version and the dump tool's, after checking that the tool can dump the
    /// server.
    async fn check_versions(&self) -> Result<(ServerVersion, ToolVersion), PluginError> {
        let tool = self.dump_tool();
        let dump_tool = self.tool_version(tool).await?;
        let server = self.server_version(self.dump_database()).await?;
        check_dump_compatible(tool, &dump_tool, &server).map_err(PluginError::Unsupported)?;
        Ok((server, dump_tool))
    }

    /// Run the psql `script` connected to `database`, stopping at its first error. The
    /// script is fed on stdin so that psql interpolates its `:'name'` (as a literal) and
    /// `:"name"` (as an identifier) references to `vars`, quoted: any database name is safe
    /// there, unlike in SQL built with `format!` (and `-c` would not interpolate them).
    async fn run_script(
        &self,
        database: &str,
        script: &str,
        vars: &[(&str, &str)],
        timeout: Duration,
        classify: impl Fn(&ToolFailure) -> PluginError,
    ) -> Result<ToolOutput, PluginError> {
        let mut args: Vec<OsString> = vec![
            "-XAtq".into(),
            "--no-password".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
        ];
        for (name, value) in vars {
            args.push("-v".into());
            args.push(format!("{name}={value}").into());
        }
        let mut input = ArtifactSource::new(script.as_bytes());
        self.command("psql", database, args)?
            .timeout(timeout)
            .run_from_source(&mut input, &self.redactor, classify)
            .await
    }

    /// Create `database` unless it exists; whether it was created.
    async fn ensure_database(&self, database: &str) -> Result<bool, PluginError> {
        let script = "SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = :'db') AS missing \\gset\n\
                      \\if :missing\n\
                      CREATE DATABASE :\"db\";\n\
                      \\echo created\n\
                      \\endif\n";
        let output = self
            .run_script(
                MAINTENANCE_DATABASE,
                script,
                &[("db", database)],
                SHORT_COMMAND_TIMEOUT,
                self.classifier("psql", MAINTENANCE_DATABASE),
            )
            .await?;
        Ok(output.stdout.lines().any(|l| l.trim() == "created"))
    }

    /// Create `database`, failing when it exists.
    async fn create_database(&self, database: &str) -> Result<(), PluginError> {
        self.run_script(
            MAINTENANCE_DATABASE,
            "CREATE DATABASE :\"db\";\n",
            &[("db", database)],
            SHORT_COMMAND_TIMEOUT,
            self.classifier("psql", MAINTENANCE_DATABASE),
        )
        .await
        .map(drop)
    }

    /// Drop `database` if it exists.
    async fn drop_database(&self, database: &str) -> Result<(), PluginError> {
        self.run_script(
            MAINTENANCE_DATABASE,
            "DROP DATABASE IF EXISTS :\"db\";\n",
            &[("db", database)],
            DROP_TIMEOUT,
            self.classifier("psql", MAINTENANCE_DATABASE),
        )
        .await
        .map(drop)
    }

    /// Drop the scratch database of a replacing restore that did not replace anything, as
    /// best it can (a failure is logged); whether it is gone.
    async fn drop_scratch(&self, scratch: &str) -> bool {
        match self.drop_database(scratch).await {
            Ok(()) => {
                tracing::info!(database = scratch, "dropped the scratch database");
                true
            }
            Err(error) => {
                tracing::warn!(
                    database = scratch,
                    %error,
                    "could not drop the scratch database; drop it by hand"
                );
                false
            }
        }
    }

    /// Whether `database` exists (asked through the `postgres` database).
    async fn database_exists(&self, database: &str) -> Result<bool, PluginError> {
        let output = self
            .run_script(
                MAINTENANCE_DATABASE,
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = :'db');\n",
                &[("db", database)],
                SHORT_COMMAND_TIMEOUT,
                self.classifier("psql", MAINTENANCE_DATABASE),
            )
            .await?;
        match output.stdout.trim() {
            "t" => Ok(true),
            "f" => Ok(false),
            other => Err(PluginError::ToolFailed(format!(
                "psql printed {:?} instead of whether database {database:?} exists",
                excerpt(other)
            ))),
        }
    }

    /// How many user tables (see [`USER_TABLES_SQL`]) the existing `database` has.
    async fn user_tables(&self, database: &str) -> Result<u64, PluginError> {
        let output = self
            .command(
                "psql",
                database,
                vec![
                    "-XAtq".into(),
                    "--no-password".into(),
                    "-c".into(),
                    USER_TABLES_SQL.into(),
                ],
            )?
            .timeout(SHORT_COMMAND_TIMEOUT)
            .run(&self.redactor, self.classifier("psql", database))
            .await?;
        output.stdout.trim().parse().map_err(|_| {
            PluginError::ToolFailed(format!(
                "psql printed {:?} instead of the number of tables in database {database:?}",
                excerpt(&output.stdout)
            ))
        })
    }

    /// How many user tables `database` has; `None` when it does not exist.
    async fn tables_in(&self, database: &str) -> Result<Option<u64>, PluginError> {
        if !self.database_exists(database).await? {
            return Ok(None);
        }
        self.user_tables(database).await.map(Some)
    }

    /// What a restore into `database` would overwrite.
    async fn inspect_database(&self, database: &str) -> Result<DestinationReport, PluginError> {
        let address = self.address();
        Ok(match self.tables_in(database).await? {
            None => DestinationReport {
                holds_data: false,
                description: format!(
                    "database {database:?} does not exist on PostgreSQL at {address}; it will \
                     be created"
                ),
            },
            Some(0) => DestinationReport {
                holds_data: false,
                description: format!(
                    "database {database:?} on PostgreSQL at {address} exists and has no user \
                     tables"
                ),
            },
            Some(n) => DestinationReport {
                holds_data: true,
                description: format!(
                    "database {database:?} on PostgreSQL at {address} has {}",
                    user_tables_phrase(n)
                ),
            },
        })
    }

    /// What an all-databases restore would overwrite: the server's databases other than
    /// `postgres` and the templates, and the `postgres` database's user tables.
    async fn inspect_server(&self) -> Result<DestinationReport, PluginError> {
        let query = format!(
            "SELECT ({USER_TABLES_SQL}), \
             (SELECT coalesce(pg_catalog.json_agg(datname::text ORDER BY datname), '[]') \
              FROM pg_catalog.pg_database \
              WHERE datname NOT IN ('{MAINTENANCE_DATABASE}', 'template0', 'template1'))"
        );
        let output = self
            .command(
                "psql",
                MAINTENANCE_DATABASE,
                vec![
                    "-XAtq".into(),
                    "--no-password".into(),
                    "-c".into(),
                    query.into(),
                ],
            )?
            .timeout(SHORT_COMMAND_TIMEOUT)
            .run(
                &self.redactor,
                self.classifier("psql", MAINTENANCE_DATABASE),
            )
            .await?;
        // `<tables>|<JSON array of names>`: the count has no `|`, so the first one splits.
        let parsed = output
            .stdout
            .trim_end_matches('\n')
            .split_once('|')
            .and_then(|(tables, names)| {
                Some((
                    tables.parse::<u64>().ok()?,
                    serde_json::from_str::<Vec<String>>(names).ok()?,
                ))
            });
        let Some((tables, databases)) = parsed else {
            return Err(PluginError::ToolFailed(format!(
                "psql printed {:?} instead of the server's databases",
                excerpt(&output.stdout)
            )));
        };
        let address = self.address();
        let databases = if databases.is_empty() {
            None
        } else {
            let shown: Vec<String> = databases
                .iter()
                .take(NAMED_DATABASES)
                .map(|d| format!("{d:?}"))
                .collect();
            let more = match databases.len().saturating_sub(NAMED_DATABASES) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            let noun = if databases.len() == 1 {
                "database"
            } else {
                "databases"
            };
            Some(format!(
                "PostgreSQL at {address} holds {} {noun} besides postgres, template0 and \
                 template1 ({}{more})",
                databases.len(),
                shown.join(", ")
            ))
        };
        let description = match (databases, tables) {
            (None, 0) => {
                return Ok(DestinationReport {
                    holds_data: false,
                    description: format!(
                        "PostgreSQL at {address} holds no databases besides postgres, \
                         template0 and template1, and its postgres database has no user \
                         tables"
                    ),
                });
            }
            (None, n) => format!(
                "the postgres database on PostgreSQL at {address} has {}",
                user_tables_phrase(n)
            ),
            (Some(databases), 0) => databases,
            (Some(databases), n) => format!(
                "{databases}, and its postgres database has {}",
                user_tables_phrase(n)
            ),
        };
        Ok(DestinationReport {
            holds_data: true,
            description,
        })
    }

    /// Restore a one-database artifact of `format` from `source` into the existing
    /// `database`, as one transaction: `pg_restore` for custom and tar archives, `psql` for
    /// plain dumps (see [`PostgresPlugin::restore_with`]).
    async fn restore_into(
        &self,
        database: &str,
        format: DumpFormat,
        source: &mut ArtifactSource<'_>,
    ) -> Result<ToolOutput, PluginError> {
        let tool = restore_tool(format);
        let args: Vec<OsString> = match format {
            DumpFormat::Plain => vec![
                "-X".into(),
                "-q".into(),
                "--no-password".into(),
                "-v".into(),
                "ON_ERROR_STOP=1".into(),
                "--single-transaction".into(),
                "--file=-".into(),
            ],
            DumpFormat::Custom | DumpFormat::Tar => vec![
                format!("--format={}", format_name(format)).into(),
                "--exit-on-error".into(),
                "--single-transaction".into(),
                "--no-owner".into(),
                "--no-privileges".into(),
                "--no-password".into(),
                // pg_restore only connects when given --dbname; a conninfo string keeps any
                // database name literal (host, port, user and password come from the env).
                format!("--dbname=dbname={}", conninfo_quote(database)).into(),
            ],
        };
        let output = self
            .command(tool, database, args)?
            .run_from_source(source, &self.redactor, self.classifier(tool, database))
            .await?;
        self.log_warnings(tool, &output);
        Ok(output)
    }

    /// A `mode: Replace` restore of a one-database artifact into `database`: restore into a
    /// scratch database, then swap it in (see [`PostgresPlugin::restore_with`]). Whatever
    /// fails before the swap commits leaves `database` as it was, and the scratch database
    /// is dropped again.
    async fn replace_database(
        &self,
        ctx: &RunContext,
        database: &str,
        format: DumpFormat,
        source: &mut ArtifactSource<'_>,
    ) -> Result<RestoreReport, PluginError> {
        // Counting also checks, before the long restore, that the database can be reached.
        let tables = self.tables_in(database).await?;
        let (scratch, old) = scratch_names(database, random_suffix());
        tracing::info!(
            namespace = %ctx.namespace,
            target = %ctx.target,
            tool = restore_tool(format),
            database,
            scratch = %scratch,
            existing_tables = ?tables,
            format = format_name(format),
            "restoring into a scratch database, to replace the database"
        );
        self.create_database(&scratch).await?;
        if let Err(error) = self.restore_into(&scratch, format, source).await {
            let dropped = self.drop_scratch(&scratch).await;
            return Err(with_note(error, &scratch_note(database, &scratch, dropped)));
        }
        let swap = match self.swap(database, &scratch, &old).await {
            Ok(swap) => swap,
            Err(error) => {
                let dropped = self.drop_scratch(&scratch).await;
                return Err(with_note(error, &scratch_note(database, &scratch, dropped)));
            }
        };
        let address = self.address();
        let dump = format_name(format);
        let ended = match swap.ended {
            0 => String::new(),
            1 => "; ended 1 other session using it".to_owned(),
            n => format!("; ended {n} other sessions using it"),
        };
        if !swap.replaced {
            return Ok(RestoreReport {
                message: format!(
                    "created and restored database {database:?} on PostgreSQL at {address} \
                     from a {dump} dump (there was no database to replace)"
                ),
            });
        }
        let had = match tables {
            Some(n) => format!(", which had {},", user_tables_phrase(n)),
            None => String::new(),
        };
        let mut message = format!(
            "replaced database {database:?}{had} on PostgreSQL at {address} with a {dump} dump, \
             restored into a new database first and then renamed into place{ended}"
        );
        match self.drop_database(&old).await {
            Ok(()) => tracing::info!(database = %old, "dropped the replaced database"),
            Err(error) => {
                tracing::warn!(
                    database = %old,
                    %error,
                    "could not drop the replaced database; drop it by hand"
                );
                message.push_str(&format!(
                    "; the replaced database, renamed {old:?}, could not be dropped ({error}): \
                     drop it by hand"
                ));
            }
        }
        Ok(RestoreReport { message })
    }

    /// Put the restored `scratch` database in the place of `target`: end the other sessions
    /// on `target`, then, in one transaction, rename `target` to `old` and `scratch` to
    /// `target` (just the second rename when `target` does not exist). On failure nothing
    /// was renamed.
    async fn swap(&self, target: &str, scratch: &str, old: &str) -> Result<Swap, PluginError> {
        // The target is passed to the DO block in a custom setting: psql does not
        // interpolate variables inside dollar quotes. Autovacuum workers (no role) are left
        // to the server, which ends them itself for a rename; sessions the role may not end
        // (other roles' without pg_signal_backend, superusers' for a non-superuser) are
        // counted and reported, and the rename then fails if they are still there.
        let script = r#"SELECT pg_catalog.set_config('stowage.target', :'target', false) IS NULL AS unused \gset
DO $stowage$
DECLARE
  other integer;
  ended integer := 0;
  refused integer := 0;
BEGIN
  FOR other IN
    SELECT pid FROM pg_catalog.pg_stat_activity
    WHERE datname = pg_catalog.current_setting('stowage.target')
      AND pid <> pg_catalog.pg_backend_pid()
      AND usesysid IS NOT NULL
  LOOP
    BEGIN
      IF pg_catalog.pg_terminate_backend(other) THEN
        ended := ended + 1;
      END IF;
    EXCEPTION WHEN insufficient_privilege THEN
      refused := refused + 1;
    END;
  END LOOP;
  PERFORM pg_catalog.set_config('stowage.ended', ended::text, false);
  IF refused > 0 THEN
    RAISE WARNING 'the restoring role may not end % session(s) on the database', refused;
  END IF;
END
$stowage$;
SELECT pg_catalog.current_setting('stowage.ended') AS ended \gset
\echo ended :ended
SELECT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = :'target') AS present \gset
BEGIN;
\if :present
ALTER DATABASE :"target" RENAME TO :"old";
\endif
ALTER DATABASE :"scratch" RENAME TO :"target";
COMMIT;
\if :present
\echo replaced
\else
\echo created
\endif
"#;
        let connect_to = maintenance_database_for(target);
        let output = self
            .run_script(
                connect_to,
                script,
                &[("target", target), ("scratch", scratch), ("old", old)],
                SHORT_COMMAND_TIMEOUT,
                |failure: &ToolFailure| self.swap_failure(failure, target, connect_to),
            )
            .await?;
        self.log_warnings("psql", &output);
        let mut swap = Swap::default();
        for line in output.stdout.lines() {
            if let Some(n) = line.strip_prefix("ended ") {
                swap.ended = n.trim().parse().unwrap_or(0);
            } else if line.trim() == "replaced" {
                swap.replaced = true;
            }
        }
        Ok(swap)
    }

    /// The error for a failed swap of `target`: what to do about sessions that are still
    /// there or a missing privilege, else the classifier's.
    fn swap_failure(&self, failure: &ToolFailure, target: &str, connected_to: &str) -> PluginError {
        let said = excerpt(&failure.stderr);
        let address = self.address();
        let user = &self.config.username;
        if failure.stderr.contains("is being accessed by other users") {
            return PluginError::Remote {
                status: None,
                message: format!(
                    "database {target:?} on PostgreSQL at {address} was not replaced: other \
                     sessions were still using it (they reconnected after stowage ended them, \
                     or role {user:?} may not end them), so it could not be renamed. Stop the \
                     applications using the database (e.g. scale them to zero) and restore \
                     again, or grant role {user:?} pg_signal_backend (or restore as a \
                     superuser) so stowage can end other roles' sessions (psql: {said})"
                ),
            };
        }
        if failure.stderr.contains("must be owner of database")
            || failure
                .stderr
                .contains("permission denied to rename database")
        {
            return PluginError::Unauthorized(format!(
                "role {user:?} may not rename database {target:?} on PostgreSQL at {address}, \
                 which replacing it needs: make the role the database's owner (ALTER DATABASE \
                 ... OWNER TO) and give it CREATEDB, or restore as a superuser (psql: {said})"
            ));
        }
        self.classifier("psql", connected_to)(failure)
    }

    /// Replay a `pg_dumpall` script into the server.
    async fn restore_all(
        &self,
        source: &mut ArtifactSource<'_>,
    ) -> Result<RestoreReport, PluginError> {
        let mut reader = BufReader::new(source);
        let header = roles_header(&mut reader, &self.config.username).await?;
        let mut input = ArtifactSource::new(std::io::Cursor::new(header).chain(reader));
        tracing::info!(
            tool = "psql",
            "restoring every database of an all-databases dump"
        );
        let output = self
            .command(
                "psql",
                MAINTENANCE_DATABASE,
                vec![
                    "-X".into(),
                    "-q".into(),
                    "--no-password".into(),
                    "-v".into(),
                    "ON_ERROR_STOP=1".into(),
                    "--file=-".into(),
                ],
            )?
            .run_from_source(
                &mut input,
                &self.redactor,
                self.classifier("psql", MAINTENANCE_DATABASE),
            )
            .await?;
        self.log_warnings("psql", &output);
        Ok(RestoreReport {
            message: format!(
                "restored every database of an all-databases dump on PostgreSQL at {}",
                self.address()
            ),
        })
    }
}

/// The most of a `pg_dumpall` script's head read before its first `\connect` (the roles
/// and tablespaces section).
const ROLES_HEADER_LIMIT: usize = 16 * 1024 * 1024;

/// Read a `pg_dumpall` script up to and including its first `\connect` line (the global
/// objects), making each `CREATE ROLE name;` create-if-missing and keeping the restoring
/// role's own password (so the script's later reconnections, and the destination's Secret,
/// keep working); the rest of the script is left in `reader`.
async fn roles_header(
    reader: &mut (impl AsyncBufRead + Unpin),
    restoring_role: &str,
) -> Result<Vec<u8>, PluginError> {
    let mut out = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).await?;
        if n == 0 {
            break;
        }
        if let Some(role) = create_role_target(&line) {
            out.extend_from_slice(
                format!(
                    "DO $stowage$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $stowage$;\n"
                )
                .as_bytes(),
            );
        } else if let Some(kept) = without_own_password(&line, restoring_role) {
            out.extend_from_slice(kept.as_bytes());
        } else {
            out.extend_from_slice(&line);
        }
        if line.starts_with(b"\\connect") || out.len() > ROLES_HEADER_LIMIT {
            break;
        }
    }
    Ok(out)
}

/// The role of a `CREATE ROLE name;` line exactly as pg_dumpall writes it.
fn create_role_target(line: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(line)
        .ok()?
        .trim_end_matches(['\n', '\r']);
    let role = text.strip_prefix("CREATE ROLE ")?.strip_suffix(';')?;
    let quoted = role.starts_with('"') && role.ends_with('"') && role.len() >= 2;
    let bare = !role.is_empty()
        && role
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    (quoted || bare).then_some(role)
}

/// An `ALTER ROLE <role> WITH ... PASSWORD '...' ...;` line for `role` without its password
/// clause; `None` for any other line.
fn without_own_password(line: &[u8], role: &str) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.strip_prefix("ALTER ROLE ")?;
    let quoted = format!("\"{}\"", role.replace('"', "\"\""));
    let rest = rest
        .strip_prefix(&format!("{role} WITH "))
        .or_else(|| rest.strip_prefix(&format!("{quoted} WITH ")))?;
    let start = text.len() - rest.len() + rest.find(" PASSWORD '")?;
    let value = start + " PASSWORD '".len();
    let end = value + text[value..].find('\'')? + 1;
    Some(format!("{}{}", &text[..start], &text[end..]))
}

/// How long dropping a database may take (removing a large database's files takes a while).
const DROP_TIMEOUT: Duration = Duration::from_secs(600);

/// PostgreSQL's longest identifier, in bytes (longer names are truncated).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// How many databases an inspection of a whole server names.
const NAMED_DATABASES: usize = 5;

/// Counts the user tables of the connected database: ordinary and partitioned tables
/// outside the system schemas (`pg_catalog`, `information_schema`, the TOAST schemas),
/// temporary tables excepted (they vanish with their session).
const USER_TABLES_SQL: &str = "SELECT count(*) FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%'";

/// What a swap did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Swap {
    /// An existing database was replaced (else the restored one was only renamed into
    /// place).
    replaced: bool,
    /// How many other sessions on the replaced database were ended.
    ended: u64,
}

/// `1 user table`, `N user tables`.
fn user_tables_phrase(n: u64) -> String {
    if n == 1 {
        "1 user table".to_owned()
    } else {
        format!("{n} user tables")
    }
}

/// The database a swap of `target` connects to: `postgres`, or `template1` when `postgres`
/// itself is replaced (a session cannot rename its own database).
fn maintenance_database_for(target: &str) -> &'static str {
    if target == MAINTENANCE_DATABASE {
        "template1"
    } else {
        MAINTENANCE_DATABASE
    }
}

/// The scratch database a replacing restore of `target` fills, and the name the replaced
/// database has until it is dropped: `<target>_stowage_new_<suffix>` and
/// `<target>_stowage_old_<suffix>` (8 hex digits), `target` shortened (on a character
/// boundary) so that both fit in PostgreSQL's 63 bytes.
fn scratch_names(target: &str, suffix: u32) -> (String, String) {
    let tag_len = "_stowage_new_".len() + 8;
    let mut end = target.len().min(MAX_IDENTIFIER_BYTES - tag_len);
    while !target.is_char_boundary(end) {
        end -= 1;
    }
    let prefix = &target[..end];
    (
        format!("{prefix}_stowage_new_{suffix:08x}"),
        format!("{prefix}_stowage_old_{suffix:08x}"),
    )
}

/// A random suffix for [`scratch_names`]: the standard library's randomly keyed hasher over
/// the time and the process id.
fn random_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
}

/// What a replacing restore that failed did, appended to its error: `database` was not
/// touched, and the `scratch` database it restored into was dropped again (or not).
fn scratch_note(database: &str, scratch: &str, dropped: bool) -> String {
    let scratch = if dropped {
        format!("the scratch database {scratch:?} used for the restore was dropped again")
    } else {
        format!(
            "the scratch database {scratch:?} used for the restore could not be dropped: \
             drop it by hand"
        )
    };
    format!("; nothing was replaced: database {database:?} is unchanged, and {scratch}")
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

/// The tool restoring a one-database artifact of `format`.
fn restore_tool(format: DumpFormat) -> &'static str {
    match format {
        DumpFormat::Plain => "psql",
        DumpFormat::Custom | DumpFormat::Tar => "pg_restore",
    }
}

fn format_name(format: DumpFormat) -> &'static str {
    match format {
        DumpFormat::Custom => "custom",
        DumpFormat::Plain => "plain",
        DumpFormat::Tar => "tar",
    }
}

fn parse_format(name: &str) -> Option<DumpFormat> {
    match name {
        "custom" | "c" => Some(DumpFormat::Custom),
        "plain" | "p" => Some(DumpFormat::Plain),
        "tar" | "t" => Some(DumpFormat::Tar),
        _ => None,
    }
}

/// A libpq conninfo value in single quotes, with `\` and `'` escaped.
fn conninfo_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Whether the user chose pg_dump's compression in `extraDumpOptions` (`-Z`, `--compress`,
/// in any spelling the tool accepts).
fn sets_compression(tool: DumpTool, options: &[String]) -> bool {
    options
        .iter()
        .any(|o| parse_dump_option(tool, o).is_ok_and(|names| names.contains(&"compress")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pg_dump_compression_is_left_to_stowage_unless_chosen() {
        let sets = |o: &str| super::sets_compression(super::DumpTool::PgDump, &[o.into()]);
        assert!(!sets("--no-comments"));
        assert!(sets("-Z5"));
        assert!(sets("-vZ5"));
        assert!(sets("--compress=zstd:3"));
        assert!(sets("--comp=9"));
        assert!(!sets("-tZ5"), "a table named Z5");
    }

    use super::*;

    #[tokio::test]
    async fn create_role_lines_of_the_header_become_create_if_missing() {
        let script = b"SET default_transaction_read_only = off;\n\
                       CREATE ROLE postgres;\n\
                       ALTER ROLE postgres WITH SUPERUSER;\n\
                       CREATE ROLE \"App User\";\n\
                       \\connect template1\n\
                       CREATE ROLE later;\n";
        let mut reader = BufReader::new(&script[..]);
        let header = roles_header(&mut reader, "postgres").await.unwrap();
        let header = String::from_utf8(header).unwrap();
        assert!(header.contains(
            "DO $stowage$ BEGIN CREATE ROLE postgres; EXCEPTION WHEN duplicate_object THEN NULL; END $stowage$;\n"
        ));
        assert!(header.contains("CREATE ROLE \"App User\"; EXCEPTION"));
        assert!(header.contains("ALTER ROLE postgres WITH SUPERUSER;\n"));
        assert!(header.ends_with("\\connect template1\n"));
        let mut rest = String::new();
        reader.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "CREATE ROLE later;\n");
    }

    #[test]
    fn only_plain_create_role_statements_are_rewritten() {
        assert_eq!(create_role_target(b"CREATE ROLE app;\n"), Some("app"));
        assert_eq!(
            create_role_target(b"CREATE ROLE \"a b\";\n"),
            Some("\"a b\"")
        );
        assert_eq!(
            create_role_target(b"CREATE ROLE app; DROP TABLE x;\n"),
            None
        );
        assert_eq!(create_role_target(b"CREATE ROLE app WITH LOGIN;\n"), None);
    }

    #[test]
    fn the_restoring_role_keeps_its_password() {
        let line = b"ALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc=' VALID UNTIL 'infinity';\n";
        assert_eq!(
            without_own_password(line, "postgres").as_deref(),
            Some("ALTER ROLE postgres WITH SUPERUSER LOGIN VALID UNTIL 'infinity';\n")
        );
        assert_eq!(without_own_password(line, "app"), None);
        let quoted = b"ALTER ROLE \"Backup\" WITH LOGIN PASSWORD 'x';\n";
        assert_eq!(
            without_own_password(quoted, "Backup").as_deref(),
            Some("ALTER ROLE \"Backup\" WITH LOGIN;\n")
        );
        assert_eq!(
            without_own_password(b"ALTER ROLE postgres WITH LOGIN;\n", "postgres"),
            None
        );
    }

    #[test]
    fn the_artifact_extension_follows_the_format() {
        let mut config: PostgresConfig = serde_json::from_value(serde_json::json!({
            "host": "db", "database": "shop", "username": "backup"
        }))
        .unwrap();
        assert_eq!(PostgresPlugin::artifact_extension(&config), "dump");
        config.format = Some(DumpFormat::Tar);
        assert_eq!(PostgresPlugin::artifact_extension(&config), "tar");
        config.format = None;
        config.database = None;
        config.all_databases = Some(true);
        assert_eq!(PostgresPlugin::artifact_extension(&config), "sql");
    }

    #[test]
    fn scratch_names_fit_in_an_identifier() {
        assert_eq!(
            scratch_names("shop", 0x1a2b3c),
            (
                "shop_stowage_new_001a2b3c".to_owned(),
                "shop_stowage_old_001a2b3c".to_owned()
            )
        );
        // 63 bytes of two-byte characters: cut on a character boundary.
        let long = "x".to_owned() + &"é".repeat(31);
        let (scratch, old) = scratch_names(&long, u32::MAX);
        assert!(scratch.len() <= 63 && old.len() <= 63, "{scratch} {old}");
        assert_eq!(
            scratch,
            "x".to_owned() + &"é".repeat(20) + "_stowage_new_ffffffff"
        );
        assert_eq!(
            old,
            "x".to_owned() + &"é".repeat(20) + "_stowage_old_ffffffff"
        );
        assert_ne!(random_suffix(), random_suffix());
    }

    #[test]
    fn notes_keep_the_error_kind() {
        let err = with_note(
            PluginError::ToolFailed("pg_restore failed".into()),
            "; note",
        );
        assert_eq!(err.kind(), stowage_plugin_sdk::ErrorKind::ToolFailed);
        assert_eq!(err.to_string(), "pg_restore failed; note");
        let err = with_note(
            PluginError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad")),
            "; note",
        );
        assert_eq!(err.kind(), stowage_plugin_sdk::ErrorKind::IoError);
        assert_eq!(err.to_string(), "I/O error: bad; note");
    }

    #[test]
    fn conninfo_values_are_quoted() {
        assert_eq!(conninfo_quote("shop"), "'shop'");
        assert_eq!(conninfo_quote("a'b\\c=d"), "'a\\'b\\\\c=d'");
    }

    #[test]
    fn the_connection_is_in_the_env_and_never_in_argv() {
        let config: PostgresConfig = serde_json::from_value(serde_json::json!({
            "host": "db", "port": 6543, "database": "shop", "username": "backup",
            "passwordSecretRef": {"name": "db", "key": "password"}, "sslMode": "require"
        }))
        .unwrap();
        let mut ctx = RunContext::new("ns", "t");
        ctx.secrets.insert(
            stowage_plugin_sdk::SecretKeyRef::new("db", "password"),
            SecretValue::new("hunter2"),
        );
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("pg_dump");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tools = Toolbox::with_search_path(dir.path());
        let session = Session::new(&config, &ctx, &tools).unwrap();
        let command = session
            .command("pg_dump", "shop", vec!["--no-password".into()])
            .unwrap();
        let shown = format!("{command:?}");
        for pair in [
            "(\"PGHOST\", \"db\")",
            "(\"PGPORT\", \"6543\")",
            "(\"PGUSER\", \"backup\")",
            "(\"PGDATABASE\", \"shop\")",
            "(\"PGSSLMODE\", \"require\")",
            "(\"LC_ALL\", \"C\")",
            "(\"PGPASSWORD\", SecretValue(<redacted>))",
        ] {
            assert!(shown.contains(pair), "{pair} in {shown}");
        }
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            session.command("pg_restore", "shop", vec![]).is_err(),
            "pg_restore is not in the toolbox"
        );
    }

    #[test]
    fn a_missing_secret_names_the_secret() {
        let config: PostgresConfig = serde_json::from_value(serde_json::json!({
            "host": "db", "database": "shop", "username": "backup",
            "passwordSecretRef": {"name": "db", "key": "password"}
        }))
        .unwrap();
        let ctx = RunContext::new("ns", "t");
        let tools = Toolbox::with_search_path("/nowhere");
        let err = Session::new(&config, &ctx, &tools).err().unwrap();
        assert!(err.to_string().contains("Secret \"db\""), "{err}");
    }
}
