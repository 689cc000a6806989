//! `stowage copy-self <destination>`: the init container of a tool plugin's Job copies the
//! static stowage binary from the runner image into a shared emptyDir, so the tool's image
//! (e.g. `postgres:17`) can run `stowage run` without containing stowage. The runner image
//! is `FROM scratch` (no `cp`), hence a subcommand.

use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Arguments of `stowage copy-self`.
#[derive(Debug, Clone, clap::Args)]
pub struct CopySelfArgs {
    /// Where to write the copy (e.g. `/stowage/stowage`); its directory must exist.
    pub destination: PathBuf,
}

/// Why the copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopySelfError {
    /// The path of the running executable is unknown (no `/proc`?).
    #[error("cannot find the running stowage executable (is /proc mounted?): {0}")]
    CurrentExe(#[source] io::Error),
    /// Reading the source or writing the destination failed.
    #[error(
        "cannot copy {source_path} to {destination}: {error}; check that the destination's \
         directory exists and is writable (an emptyDir mounted in the init container)"
    )]
    Copy {
        /// The executable copied.
        source_path: PathBuf,
        /// The destination.
        destination: PathBuf,
        /// The I/O error.
        #[source]
        error: io::Error,
    },
}

impl CopySelfArgs {
    /// Copy the running executable to the destination; returns the bytes copied.
    pub fn execute(&self) -> Result<u64, CopySelfError> {
        let source = std::env::current_exe().map_err(CopySelfError::CurrentExe)?;
        copy_executable(&source, &self.destination)
    }
}

/// Copies `source` to `destination` with mode 0755, through a temporary file renamed into
/// place, so a reader never runs a half-written binary.
pub fn copy_executable(source: &Path, destination: &Path) -> Result<u64, CopySelfError> {
    let fail = |error| CopySelfError::Copy {
        source_path: source.to_owned(),
        destination: destination.to_owned(),
        error,
    };
    let mut partial = destination.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let copy = || -> io::Result<u64> {
        let mut input = File::open(source)?;
        let mut output = File::create(&partial)?;
        let bytes = io::copy(&mut input, &mut output)?;
        output.set_permissions(Permissions::from_mode(0o755))?;
        output.sync_all()?;
        drop(output);
        fs::rename(&partial, destination)?;
        Ok(bytes)
    };
    copy().map_err(|error| {
        let _ = fs::remove_file(&partial);
        fail(error)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_identical_executable_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("stowage");
        let bytes = CopySelfArgs {
            destination: destination.clone(),
        }
        .execute()
        .unwrap();
        let source = std::env::current_exe().unwrap();
        assert_eq!(bytes, fs::metadata(&source).unwrap().len());
        assert_eq!(
            fs::metadata(&destination).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(!dir.path().join("stowage.partial").exists());
        // The copy is this test binary: ask it to run no test.
        let output = std::process::Command::new(&destination)
            .args(["--exact", "no::such::test"])
            .output()
            .unwrap();
        assert!(output.status.success());
        assert!(String::from_utf8_lossy(&output.stdout).contains("0 passed"));
    }

    #[test]
    fn a_missing_directory_is_reported_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("bin");
        fs::write(&source, b"#!/bin/sh\n").unwrap();
        let err = copy_executable(&source, &dir.path().join("missing/stowage")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("missing/stowage"), "{msg}");
        assert!(msg.contains("emptyDir"), "{msg}");
    }
}
