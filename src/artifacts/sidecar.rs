//! The sidecar: `<artifact>.meta.json`, everything needed to list, verify, prune and restore
//! an artifact without the cluster.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::fsio;
use crate::api::Compression;

/// The sidecar format this build writes. Readers accept this version and older ones.
pub const FORMAT_VERSION: u32 = 1;

/// The metadata of one artifact, stored next to it as `<artifact>.meta.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sidecar {
    /// Version of this format (currently 1).
    pub format_version: u32,
    /// Key of the plugin that produced the artifact (e.g. `postgres`).
    pub plugin: String,
    /// Version of that plugin.
    pub plugin_version: String,
    /// Version of the stowage runner that wrote the artifact.
    pub stowage_version: String,
    /// Namespace of the `BackupTarget`.
    pub namespace: String,
    /// Name of the `BackupTarget`.
    pub target: String,
    /// Name of the `BackupSchedule` that made it; `null` for an on-demand backup.
    pub schedule: Option<String>,
    /// Identifier of the run.
    pub run_id: String,
    /// The schedule tick the run was for; `null` for an on-demand backup.
    pub scheduled_time: Option<Timestamp>,
    /// When the run started writing.
    pub start_time: Timestamp,
    /// When the artifact was complete.
    pub end_time: Timestamp,
    /// Size of the plugin's output before compression, in bytes.
    pub raw_bytes: u64,
    /// Size of the file on disk, in bytes.
    pub stored_bytes: u64,
    /// SHA-256 of the file on disk (the stored, compressed bytes), lowercase hex.
    pub sha256: String,
    /// How the file is compressed: `none`, `gzip` or `zstd`.
    pub compression: Compression,
    /// MIME type of the uncompressed artifact.
    pub content_type: String,
    /// Plugin-specific facts (e.g. `serverVersion`), used again at restore time.
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
}

impl Sidecar {
    /// The time retention buckets this artifact by: the schedule tick if any, else the start.
    pub fn time(&self) -> Timestamp {
        self.scheduled_time.unwrap_or(self.start_time)
    }

    /// Read and parse a sidecar file.
    pub fn read(path: &Path) -> Result<Sidecar, StoreError> {
        let bytes =
            std::fs::read(path).map_err(|source| StoreError::io("read sidecar", path, source))?;
        let sidecar: Sidecar =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::BadSidecar {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if sidecar.format_version > FORMAT_VERSION {
            return Err(StoreError::BadSidecar {
                path: path.to_owned(),
                message: format!(
                    "format version {} is newer than this stowage understands ({FORMAT_VERSION}); \
                     use a newer stowage",
                    sidecar.format_version
                ),
            });
        }
        Ok(sidecar)
    }

    /// Write the sidecar atomically to `path`, which must not exist: never replaces the
    /// sidecar of another artifact. Its temporary file is `<path>.<run id>.partial`, so a
    /// retried run recognises and removes it like its other partial files.
    pub fn write_new(&self, path: &Path) -> Result<(), StoreError> {
        let partial = super::layout::partial_name(path, &self.run_id);
        fsio::write_new(path, &partial, &self.to_json(path)?)
    }

    fn to_json(&self, path: &Path) -> Result<Vec<u8>, StoreError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| StoreError::BadSidecar {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        json.push(b'\n');
        Ok(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Sidecar {
        Sidecar {
            format_version: FORMAT_VERSION,
            plugin: "postgres".into(),
            plugin_version: "1.0.0".into(),
            stowage_version: "0.1.0".into(),
            namespace: "shop".into(),
            target: "app-db".into(),
            schedule: None,
            run_id: "r1".into(),
            scheduled_time: None,
            start_time: "2026-11-21T02:30:00Z".parse().unwrap(),
            end_time: "2026-11-21T02:31:00Z".parse().unwrap(),
            raw_bytes: 10,
            stored_bytes: 5,
            sha256: "ab".repeat(32),
            compression: Compression::Zstd,
            content_type: "application/octet-stream".into(),
            facts: BTreeMap::from([("serverVersion".into(), "17.2".into())]),
        }
    }

    #[test]
    fn sidecar_round_trips_through_the_file_with_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dump.zst.meta.json");
        let mut sidecar = sample();
        sidecar.schedule = Some("nightly".into());
        sidecar.scheduled_time = Some("2026-11-21T02:30:00Z".parse().unwrap());
        sidecar.write_new(&path).unwrap();
        assert_eq!(Sidecar::read(&path).unwrap(), sidecar);
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "no temporary file is left: {files:?}");
        assert!(
            sidecar.write_new(&path).is_err(),
            "a sidecar is never replaced"
        );

        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for field in [
            "formatVersion",
            "plugin",
            "pluginVersion",
            "stowageVersion",
            "namespace",
            "target",
            "schedule",
            "runId",
            "scheduledTime",
            "startTime",
            "endTime",
            "rawBytes",
            "storedBytes",
            "sha256",
            "compression",
            "contentType",
            "facts",
        ] {
            assert!(json.get(field).is_some(), "missing {field} in {json}");
        }
        assert_eq!(json["compression"], "zstd");
        assert_eq!(json["scheduledTime"], "2026-11-21T02:30:00Z");
    }

    #[test]
    fn on_demand_sidecar_has_null_schedule() {
        let json = serde_json::to_value(sample()).unwrap();
        assert!(json["schedule"].is_null());
        assert!(json["scheduledTime"].is_null());
    }

    #[test]
    fn a_newer_format_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.meta.json");
        let mut sidecar = sample();
        sidecar.format_version = 99;
        sidecar.write_new(&path).unwrap();
        let err = Sidecar::read(&path).unwrap_err().to_string();
        assert!(err.contains("newer stowage"), "{err}");
    }
}
