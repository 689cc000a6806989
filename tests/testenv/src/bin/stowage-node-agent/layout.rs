//! Where the agent keeps things under its state directory.
//!
//! ```text
//! <state>/logs/<namespace>_<pod>_<container>.log      stdout+stderr of every instance
//! <state>/volumes/pvc/<namespace>/<claim>/             a claim's data, survives pods
//! <state>/pods/<uid>/volumes/<kind>/<volume>/          emptyDir, secret, configMap, projected...
//! <state>/pods/<uid>/containers/<name>/                root, stage, termination-log, pid
//! ```

use std::path::{Path, PathBuf};

/// The state directory layout.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A layout rooted at `root`.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The logs directory.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The log file of one container.
    pub fn log(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.logs()
            .join(format!("{namespace}_{pod}_{container}.log"))
    }

    /// The host directory of a PersistentVolumeClaim.
    pub fn claim(&self, namespace: &str, claim: &str) -> PathBuf {
        self.root
            .join("volumes")
            .join("pvc")
            .join(namespace)
            .join(claim)
    }

    /// All pod directories.
    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// One pod's directory.
    pub fn pod(&self, uid: &str) -> PathBuf {
        self.pods().join(uid)
    }

    /// A pod volume's directory.
    pub fn pod_volume(&self, uid: &str, kind: &str, volume: &str) -> PathBuf {
        self.pod(uid).join("volumes").join(kind).join(volume)
    }

    /// A container's working directory (not visible to the container).
    pub fn container(&self, uid: &str, container: &str) -> PathBuf {
        self.pod(uid).join("containers").join(container)
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}
