//! Where the MariaDB or MySQL client tools are found, and which ones there are.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use stowage_plugin_sdk::PluginError;
use stowage_plugin_sdk::tool::SearchPath;

/// The dump tools, in order of preference: MariaDB's own name first (MariaDB 11 images no
/// longer ship the `mysqldump` name), then MySQL's.
pub const DUMP_TOOLS: [&str; 2] = ["mariadb-dump", "mysqldump"];
/// The command-line clients, in the same order.
pub const CLIENTS: [&str; 2] = ["mariadb", "mysql"];

/// Where the plugin finds the client tools (`mariadb-dump`/`mysqldump`,
/// `mariadb`/`mysql`): a `PATH`-style list of directories, also given to each tool as its
/// `PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolbox {
    search_path: SearchPath,
}

impl Toolbox {
    /// Env variable that overrides the runner's `PATH` for finding the tools.
    pub const SEARCH_PATH_ENV: &'static str = "STOWAGE_MYSQL_TOOLS_PATH";

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

    /// The first of `programs` on the search path, else an error naming the image fix.
    pub fn first_of(&self, programs: [&'static str; 2]) -> Result<&'static str, PluginError> {
        programs
            .into_iter()
            .find(|p| self.find(p).is_some())
            .ok_or_else(|| {
                PluginError::Unsupported(format!(
                    "neither {} nor {} is in the image (searched {}); set spec.mysql.image to \
                     an image with the client tools, such as {} for MariaDB or mysql:8.4 for \
                     MySQL 8.4",
                    programs[0],
                    programs[1],
                    self.search_path().to_string_lossy(),
                    crate::DEFAULT_IMAGE
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_names_are_preferred_and_a_missing_tool_names_the_image_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tools = Toolbox::with_search_path(format!("/nonexistent::{}", dir.path().display()));
        let err = tools.first_of(DUMP_TOOLS).unwrap_err().to_string();
        assert!(
            err.starts_with("neither mariadb-dump nor mysqldump is in the image"),
            "{err}"
        );
        assert!(err.contains("spec.mysql.image"), "{err}");
        // (tool written, found before it is executable, found after)
        let steps = [
            ("mysqldump", None, "mysqldump"),
            ("mariadb-dump", Some("mysqldump"), "mariadb-dump"),
        ];
        for (name, before, after) in steps {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            assert_eq!(tools.first_of(DUMP_TOOLS).ok(), before, "{name}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(tools.first_of(DUMP_TOOLS).ok(), Some(after), "{name}");
        }
    }
}
