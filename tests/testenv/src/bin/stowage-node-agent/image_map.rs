//! Which host binaries stand in for files of which images.
//!
//! `--image-map stowage=/work/target/debug/stowage:/usr/local/bin/stowage` makes
//! `/usr/local/bin/stowage` inside every container whose image is `stowage` (any
//! registry prefix, tag or digest) the host's `/work/target/debug/stowage`.

use std::path::PathBuf;

/// One mapping: a host file shown at a path for matching images.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageFile {
    /// Image name (`stowage`, `ghcr.io/stowage-dev/stowage`).
    pub image: String,
    /// Host file.
    pub host: PathBuf,
    /// Path inside the container.
    pub container: String,
}

/// A malformed `--image-map` entry.
#[derive(Debug, thiserror::Error)]
#[error("invalid --image-map {0:?}: expected IMAGE=HOST_PATH:CONTAINER_PATH with absolute paths")]
pub struct ImageMapError(String);

/// All mappings.
#[derive(Clone, Debug, Default)]
pub struct ImageMap {
    entries: Vec<ImageFile>,
}

impl ImageMap {
    /// Parses `IMAGE=HOST_PATH:CONTAINER_PATH` entries.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, ImageMapError> {
        let mut out = Vec::new();
        for raw in entries {
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            let bad = || ImageMapError(raw.to_string());
            let (image, paths) = raw.split_once('=').ok_or_else(bad)?;
            let (host, container) = paths.rsplit_once(':').ok_or_else(bad)?;
            if image.is_empty() || !host.starts_with('/') || !container.starts_with('/') {
                return Err(bad());
            }
            out.push(ImageFile {
                image: image.to_string(),
                host: PathBuf::from(host),
                container: container.to_string(),
            });
        }
        Ok(Self { entries: out })
    }

    /// The files mapped for `image`, in flag order.
    pub fn files_for(&self, image: &str) -> Vec<&ImageFile> {
        let repo = repository(image);
        self.entries
            .iter()
            .filter(|e| repo == e.image || repo.ends_with(&format!("/{}", e.image)))
            .collect()
    }
}

/// `registry:5000/org/name:tag@sha256:..` -> `registry:5000/org/name`.
fn repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => no_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_images_by_repository() {
        let map = ImageMap::parse([
            "stowage=/build/stowage:/usr/local/bin/stowage",
            "# comment",
            "postgres=/usr/lib/postgresql/17/bin/pg_dump:/usr/bin/pg_dump",
        ])
        .unwrap();
        assert_eq!(map.files_for("stowage").len(), 1);
        assert_eq!(map.files_for("ghcr.io/stowage-dev/stowage:0.1.0").len(), 1);
        assert_eq!(map.files_for("localhost:5000/stowage@sha256:abc").len(), 1);
        assert_eq!(map.files_for("stowage-other:1").len(), 0);
        assert_eq!(
            map.files_for("postgres:17")[0].container,
            "/usr/bin/pg_dump"
        );
        assert!(ImageMap::parse(["stowage=relative:/x"]).is_err());
        assert!(ImageMap::parse(["nothing"]).is_err());
    }
}
