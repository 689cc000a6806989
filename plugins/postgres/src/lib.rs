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
    ArtifactSink, ArtifactSource, BackupReport, Capabilities, Execution, Plugin, PluginError,
    PluginInfo, ProbeReport, Redactor, RestoreReport, RestoreRequest, RunContext, SecretValue,
    ValidationErrors,
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

    /// [`Plugin::restore`] with the tools from `tools`.
    ///
    /// The artifact's format and kind come from the facts recorded at backup time
    /// (`format`, `allDatabases`), falling back to the destination config.
    ///
    /// - **One database** (custom, tar or plain): the destination database is
    ///   `request.into`, else `spec.postgres.database`. It is created (`CREATE DATABASE`
    ///   through `psql` connected to the `postgres` database) when it does not exist; an
    ///   existing database is used as is and nothing in it is dropped, so restore into a new
    ///   or empty database. Custom and tar archives are restored with `pg_restore
    ///   --exit-on-error --single-transaction --no-owner --no-privileges`: the whole restore
    ///   is one transaction (all or nothing), and objects are owned by the restoring role
    ///   without the source's grants, because the source's roles often do not exist on the
    ///   destination (and would abort the restore). Plain dumps are replayed verbatim with
    ///   `psql -v ON_ERROR_STOP=1 --single-transaction`; roles they name in `OWNER TO` or
    ///   `GRANT` must exist (back up with `extraDumpOptions: [--no-owner, --no-privileges]`
    ///   to avoid that).
    /// - **All databases** (`pg_dumpall`): replayed with `psql -v ON_ERROR_STOP=1` connected
    ///   to the `postgres` database; `request.into` is rejected. Roles that already exist on
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
        let all = match request.facts.get(FACT_ALL_DATABASES) {
            Some(value) => value == "true",
            None if request.facts.contains_key(FACT_DATABASE) => false,
            None => config.dumps_all_databases(),
        };
        let format = match request.facts.get(FACT_FORMAT) {
            Some(name) => parse_format(name).ok_or_else(|| {
                PluginError::Unsupported(format!(
                    "the artifact's recorded format {name:?} is not one this plugin restores \
                     (custom, plain, tar)"
                ))
            })?,
            None if all => DumpFormat::Plain,
            None => config.effective_format(),
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
            return session.restore_all(source).await;
        }
        let database = request
            .into
            .as_deref()
            .filter(|d| !d.is_empty())
            .or(config.database.as_deref())
            .ok_or_else(|| {
                PluginError::InvalidConfig(ValidationErrors::single(
                    "database",
                    "name the database to restore into (spec.postgres.database or the \
                     restore's target database)",
                ))
            })?;
        let created = session.ensure_database(database).await?;
        let tool = match format {
            DumpFormat::Plain => "psql",
            DumpFormat::Custom | DumpFormat::Tar => "pg_restore",
        };
        tracing::info!(
            namespace = %ctx.namespace,
            target = %ctx.target,
            tool,
            database,
            created,
            format = format_name(format),
            "restoring"
        );
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
        let output = session
            .command(tool, database, args)?
            .run_from_source(
                source,
                &session.redactor,
                session.classifier(tool, database),
            )
            .await?;
        session.log_warnings(tool, &output);
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

    /// Create `database` unless it exists; whether it was created.
    async fn ensure_database(&self, database: &str) -> Result<bool, PluginError> {
        // psql variables quote the name (:'db' as a literal, :"db" as an identifier), so
        // any database name is safe; -c would not interpolate them, hence stdin.
        let script = "SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = :'db') AS missing \\gset\n\
                      \\if :missing\n\
                      CREATE DATABASE :\"db\";\n\
                      \\echo created\n\
                      \\endif\n";
        let mut input = ArtifactSource::new(script.as_bytes());
        let output = self
            .command(
                "psql",
                MAINTENANCE_DATABASE,
                vec![
                    "-XAtq".into(),
                    "--no-password".into(),
                    "-v".into(),
                    "ON_ERROR_STOP=1".into(),
                    "-v".into(),
                    format!("db={database}").into(),
                ],
            )?
            .timeout(SHORT_COMMAND_TIMEOUT)
            .run_from_source(
                &mut input,
                &self.redactor,
                self.classifier("psql", MAINTENANCE_DATABASE),
            )
            .await?;
        Ok(output.stdout.lines().any(|l| l.trim() == "created"))
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
