//! Where the PostgreSQL client tools are found.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use stowage_plugin_sdk::PluginError;
use stowage_plugin_sdk::tool::SearchPath;

/// Where the plugin finds the PostgreSQL client tools (`psql`, `pg_dump`, `pg_dumpall`,
/// `pg_restore`): a `PATH`-style list of directories, also given to each tool as its
/// `PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolbox {
    search_path: SearchPath,
}

impl Toolbox {
    /// Env variable that overrides the runner's `PATH` for finding the tools, e.g.
    /// `/usr/lib/postgresql/17/bin` on a host with several PostgreSQL versions.
    pub const SEARCH_PATH_ENV: &'static str = "STOWAGE_POSTGRES_TOOLS_PATH";

    /// The tools on [`Toolbox::SEARCH_PATH_ENV`] if set, else on the runner's `PATH`, else
    /// in the usual system directories.
    pub fn from_env() -> Toolbox {
        Toolbox {
            search_path: SearchPath::from_env(Self::SEARCH_PATH_ENV),
        }
    }

    /// The tools on the given `PATH`-style list of directories.
    pub fn with_search_path(search_path: impl Into<OsString>) -> Toolbox {
        Toolbox {
            search_path: SearchPath::new(search_path),
        }
    }

    /// The directories searched, `PATH`-style.
    pub fn search_path(&self) -> &OsStr {
        self.search_path.as_os_str()
    }

    /// The executable `program` on the search path, if any.
    pub fn find(&self, program: &str) -> Option<PathBuf> {
        self.search_path.find(program)
    }

    /// `Ok` when `program` is on the search path, else an error naming the image fix.
    pub(crate) fn require(&self, program: &str) -> Result<(), PluginError> {
        match self.find(program) {
            Some(_) => Ok(()),
            None => Err(PluginError::Unsupported(format!(
                "{program} not found in the image (searched {}); set spec.postgres.image to a \
                 PostgreSQL image such as {} whose major version is at least the server's",
                self.search_path().to_string_lossy(),
                crate::DEFAULT_IMAGE
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_found_only_as_executables_on_the_search_path() {
        let dir = std::env::temp_dir().join(format!("stowage-toolbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tool = dir.join("pg_dump");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        let tools = Toolbox::with_search_path(format!("/nonexistent::{}", dir.display()));
        assert_eq!(tools.find("pg_dump"), None, "not executable yet");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(tools.find("pg_dump"), Some(tool));
        let err = tools.require("pg_restore").unwrap_err().to_string();
        assert!(
            err.starts_with("pg_restore not found in the image (searched /nonexistent::"),
            "{err}"
        );
        assert!(err.contains("set spec.postgres.image"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
