//! Materialising a pod's volumes as host directories.
//!
//! - `persistentVolumeClaim`: `<state>/volumes/pvc/<namespace>/<claim>` (the claim must exist;
//!   the directory outlives the pod, like a local-path volume).
//! - `emptyDir`, `secret`, `configMap`, `downwardAPI`, `projected`: a per-pod directory
//!   (plain files on disk, written once at pod start, not kept in sync).
//! - `hostPath`: the host path itself.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    KeyToPath, PersistentVolumeClaim, Pod, ServiceAccount, Volume, VolumeProjection,
};
use kube::Api;
use kube::api::PostParams;

use crate::context::Agent;
use crate::downward::{self, DownwardError};
use crate::lookup::{KeyValues, ObjectLookup};

/// A volume ready to be bind-mounted.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The host directory (or file, for hostPath files).
    pub host_path: PathBuf,
    /// Whether the volume source forces read-only.
    pub read_only: bool,
}

/// Why a pod's volumes could not be set up (reported as `FailedMount`).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The claim does not exist.
    #[error(
        "volume {volume:?}: persistentvolumeclaim {claim:?} not found in namespace {namespace:?}"
    )]
    ClaimNotFound {
        /// Volume name.
        volume: String,
        /// Claim name.
        claim: String,
        /// Namespace.
        namespace: String,
    },
    /// A Secret/ConfigMap is missing and not optional.
    #[error("volume {volume:?}: {kind} {name:?} not found")]
    ObjectNotFound {
        /// Volume name.
        volume: String,
        /// "secret" or "configmap".
        kind: &'static str,
        /// Object name.
        name: String,
    },
    /// An item's key is missing.
    #[error("volume {volume:?}: couldn't find key {key} in {kind} {name:?}")]
    KeyNotFound {
        /// Volume name.
        volume: String,
        /// "Secret" or "ConfigMap".
        kind: &'static str,
        /// Object name.
        name: String,
        /// The key.
        key: String,
    },
    /// The volume type is not implemented by this agent.
    #[error(
        "volume {volume:?}: unsupported volume type (the node agent supports persistentVolumeClaim, emptyDir, secret, configMap, downwardAPI, projected, hostPath)"
    )]
    Unsupported {
        /// Volume name.
        volume: String,
    },
    /// An API call failed.
    #[error("volume {volume:?}: {what}: {source}")]
    Api {
        /// Volume name.
        volume: String,
        /// What was attempted.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// A downward API item failed.
    #[error("volume {volume:?}: {source}")]
    Downward {
        /// Volume name.
        volume: String,
        /// The cause.
        source: DownwardError,
    },
    /// A file operation failed.
    #[error("volume {volume:?}: writing {path}: {source}")]
    Io {
        /// Volume name.
        volume: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Prepares every volume of `pod`.
pub async fn prepare(
    agent: &Agent,
    pod: &Pod,
    lookup: &impl ObjectLookup,
) -> Result<HashMap<String, Prepared>, VolumeError> {
    let mut out = HashMap::new();
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(out);
    };
    let fs_group = spec.security_context.as_ref().and_then(|s| {
        Some(FsGroup {
            gid: s.fs_group.and_then(|g| u32::try_from(g).ok())?,
            policy: match s.fs_group_change_policy.as_deref() {
                Some("OnRootMismatch") => ChangePolicy::OnRootMismatch,
                _ => ChangePolicy::Always,
            },
        })
    });
    for volume in spec.volumes.iter().flatten() {
        let prepared = prepare_one(agent, pod, volume, lookup, fs_group).await?;
        out.insert(volume.name.clone(), prepared);
    }
    Ok(out)
}

async fn prepare_one(
    agent: &Agent,
    pod: &Pod,
    volume: &Volume,
    lookup: &impl ObjectLookup,
    fs_group: Option<FsGroup>,
) -> Result<Prepared, VolumeError> {
    let name = volume.name.as_str();
    let namespace = lookup.namespace();
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let layout = &agent.layout;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VolumeError::Io {
            volume: name.to_string(),
            path,
            source,
        }
    };

    if let Some(pvc) = &volume.persistent_volume_claim {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(agent.client.clone(), namespace);
        let found = claims
            .get_opt(&pvc.claim_name)
            .await
            .map_err(|source| VolumeError::Api {
                volume: name.into(),
                what: format!("reading persistentvolumeclaim {:?}", pvc.claim_name),
                source,
            })?;
        if found.is_none() {
            return Err(VolumeError::ClaimNotFound {
                volume: name.into(),
                claim: pvc.claim_name.clone(),
                namespace: namespace.into(),
            });
        }
        let dir = layout.claim(namespace, &pvc.claim_name);
        let read_only = pvc.read_only == Some(true);
        claim_dir(&dir, fs_group, read_only).map_err(io_err(&dir))?;
        return Ok(Prepared {
            host_path: dir,
            read_only,
        });
    }
    if volume.empty_dir.is_some() {
        let dir = layout.pod_volume(uid, "empty-dir", name);
        empty_dir(&dir, fs_group.map(|g| g.gid)).map_err(io_err(&dir))?;
        return Ok(Prepared {
            host_path: dir,
            read_only: false,
        });
    }
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        match host.type_.as_deref() {
            Some("DirectoryOrCreate") => std::fs::create_dir_all(&path).map_err(io_err(&path))?,
            Some("FileOrCreate") if !path.exists() => {
                std::fs::write(&path, b"").map_err(io_err(&path))?;
            }
            _ => {}
        }
        return Ok(Prepared {
            host_path: path,
            read_only: false,
        });
    }

    let file_group = fs_group.map(|g| g.gid);
    let mut files = Files::default();
    if let Some(secret) = &volume.secret {
        let secret_name = secret.secret_name.clone().unwrap_or_default();
        let mode = secret.default_mode.unwrap_or(0o644);
        let data = fetch(lookup, name, "secret", &secret_name).await?;
        match data {
            Some(data) => files.items(
                name,
                "Secret",
                &secret_name,
                &data,
                secret.items.as_deref(),
                mode,
            )?,
            None if secret.optional == Some(true) => {}
            None => return Err(not_found(name, "secret", &secret_name)),
        }
        return files.write(
            layout.pod_volume(uid, "secret", name),
            file_group,
            name,
            true,
        );
    }
    if let Some(cm) = &volume.config_map {
        let mode = cm.default_mode.unwrap_or(0o644);
        match fetch(lookup, name, "configmap", &cm.name).await? {
            Some(data) => files.items(
                name,
                "ConfigMap",
                &cm.name,
                &data,
                cm.items.as_deref(),
                mode,
            )?,
            None if cm.optional == Some(true) => {}
            None => return Err(not_found(name, "configmap", &cm.name)),
        }
        return files.write(
            layout.pod_volume(uid, "configmap", name),
            file_group,
            name,
            true,
        );
    }
    if let Some(dapi) = &volume.downward_api {
        let mode = dapi.default_mode.unwrap_or(0o644);
        for item in dapi.items.iter().flatten() {
            let value =
                downward_item(agent, pod, item).map_err(|source| VolumeError::Downward {
                    volume: name.into(),
                    source,
                })?;
            files.add(&item.path, value.into_bytes(), item.mode.unwrap_or(mode));
        }
        return files.write(
            layout.pod_volume(uid, "downward-api", name),
            file_group,
            name,
            true,
        );
    }
    if let Some(projected) = &volume.projected {
        let mode = projected.default_mode.unwrap_or(0o644);
        for source in projected.sources.iter().flatten() {
            project(agent, pod, name, source, lookup, mode, &mut files).await?;
        }
        return files.write(
            layout.pod_volume(uid, "projected", name),
            file_group,
            name,
            true,
        );
    }
    Err(VolumeError::Unsupported {
        volume: name.into(),
    })
}

async fn project(
    agent: &Agent,
    pod: &Pod,
    volume: &str,
    source: &VolumeProjection,
    lookup: &impl ObjectLookup,
    mode: i32,
    files: &mut Files,
) -> Result<(), VolumeError> {
    if let Some(token) = &source.service_account_token {
        let value = service_account_token(
            agent,
            pod,
            volume,
            token.audience.as_deref(),
            token.expiration_seconds,
        )
        .await?;
        files.add(&token.path, value.into_bytes(), mode);
    }
    if let Some(cm) = &source.config_map {
        match fetch(lookup, volume, "configmap", &cm.name).await? {
            Some(data) => files.items(
                volume,
                "ConfigMap",
                &cm.name,
                &data,
                cm.items.as_deref(),
                mode,
            )?,
            None if cm.optional == Some(true) => {}
            None => return Err(not_found(volume, "configmap", &cm.name)),
        }
    }
    if let Some(secret) = &source.secret {
        match fetch(lookup, volume, "secret", &secret.name).await? {
            Some(data) => files.items(
                volume,
                "Secret",
                &secret.name,
                &data,
                secret.items.as_deref(),
                mode,
            )?,
            None if secret.optional == Some(true) => {}
            None => return Err(not_found(volume, "secret", &secret.name)),
        }
    }
    if let Some(dapi) = &source.downward_api {
        for item in dapi.items.iter().flatten() {
            let value =
                downward_item(agent, pod, item).map_err(|source| VolumeError::Downward {
                    volume: volume.into(),
                    source,
                })?;
            files.add(&item.path, value.into_bytes(), item.mode.unwrap_or(mode));
        }
    }
    Ok(())
}

/// A bound token for the pod's service account, as the kubelet requests it.
async fn service_account_token(
    agent: &Agent,
    pod: &Pod,
    volume: &str,
    audience: Option<&str>,
    expiration_seconds: Option<i64>,
) -> Result<String, VolumeError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            expiration_seconds: Some(expiration_seconds.unwrap_or(3600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(agent.client.clone(), namespace);
    let response = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(|source| VolumeError::Api {
            volume: volume.into(),
            what: format!("requesting a token for serviceaccount {account:?}"),
            source,
        })?;
    Ok(response.status.map(|s| s.token).unwrap_or_default())
}

fn downward_item(
    agent: &Agent,
    pod: &Pod,
    item: &k8s_openapi::api::core::v1::DownwardAPIVolumeFile,
) -> Result<String, DownwardError> {
    if let Some(field) = &item.field_ref {
        return downward::pod_field(pod, &field.field_path);
    }
    if let Some(resource) = &item.resource_field_ref {
        return downward::container_resource(pod, None, resource, &agent.node);
    }
    Ok(String::new())
}

async fn fetch(
    lookup: &impl ObjectLookup,
    volume: &str,
    kind: &'static str,
    name: &str,
) -> Result<Option<KeyValues>, VolumeError> {
    let result = if kind == "secret" {
        lookup.secret(name).await
    } else {
        lookup.config_map(name).await
    };
    result.map_err(|source| VolumeError::Api {
        volume: volume.into(),
        what: format!("reading {kind} {name:?}"),
        source,
    })
}

fn not_found(volume: &str, kind: &'static str, name: &str) -> VolumeError {
    VolumeError::ObjectNotFound {
        volume: volume.into(),
        kind,
        name: name.into(),
    }
}

/// `fsGroupChangePolicy`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ChangePolicy {
    /// Every file of the volume, on every pod start (the default).
    Always,
    /// Only when the volume's root does not show the group and permissions yet.
    OnRootMismatch,
}

/// The pod's `fsGroup` and how it is applied to volumes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FsGroup {
    /// The group id.
    pub gid: u32,
    /// `fsGroupChangePolicy`.
    pub policy: ChangePolicy,
}

/// Group read and write (read only on a read-only volume), as the kubelet adds them.
const GROUP_RW: u32 = 0o660;
const GROUP_RO: u32 = 0o440;
/// Group (and owner) search on directories.
const GROUP_X: u32 = 0o110;
const SETGID: u32 = 0o2000;

/// The mode `fsGroup` gives a file or directory of a volume (kubelet
/// `changeFilePermission`): group read/write (read on a read-only volume), and for
/// directories also search and setgid, so what is created inside keeps the group.
fn fs_group_mode(mode: u32, is_dir: bool, read_only: bool) -> u32 {
    let mut mask = if read_only { GROUP_RO } else { GROUP_RW };
    if is_dir {
        mask |= GROUP_X | SETGID;
    }
    (mode & 0o7777) | mask
}

/// Whether a volume's root lacks what `fsGroup` gives (kubelet
/// `requiresPermissionChange`, the test of `OnRootMismatch`): another group, missing
/// group permissions or no setgid bit.
fn root_mismatch(gid: u32, mode: u32, is_dir: bool, fs_group: u32, read_only: bool) -> bool {
    if gid != fs_group || !is_dir {
        return true;
    }
    let wanted = if read_only { GROUP_RO } else { GROUP_RW } | GROUP_X;
    mode & wanted != wanted || mode & SETGID == 0
}

/// A claim's directory. A new one is root's with mode 0755, as a fresh file system's
/// root on a real node: without `fsGroup` only root may write into it. With `fsGroup`
/// the kubelet's volume ownership is applied: the group owns every file (recursively,
/// or only when the root does not match yet with `OnRootMismatch`), with group
/// read/write and setgid directories.
fn claim_dir(dir: &Path, fs_group: Option<FsGroup>, read_only: bool) -> std::io::Result<()> {
    if !dir.exists() {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::create_dir(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let Some(fs_group) = fs_group else {
        return Ok(());
    };
    let root = std::fs::metadata(dir)?;
    if fs_group.policy == ChangePolicy::OnRootMismatch
        && !root_mismatch(
            root.gid(),
            root.mode(),
            root.is_dir(),
            fs_group.gid,
            read_only,
        )
    {
        return Ok(());
    }
    set_ownership(dir, fs_group.gid, read_only)
}

/// Gives `path` and everything below it (symlinks not followed) to group `gid`.
fn set_ownership(path: &Path, gid: u32, read_only: bool) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    std::os::unix::fs::lchown(path, None, Some(gid))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = fs_group_mode(meta.mode(), meta.is_dir(), read_only);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            set_ownership(&entry?.path(), gid, read_only)?;
        }
    }
    Ok(())
}

/// An emptyDir: every container user may write (the kubelet's 0777); with `fsGroup`
/// group-owned by it with the setgid bit.
fn empty_dir(dir: &Path, fs_group: Option<u32>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    match fs_group {
        Some(gid) => {
            std::os::unix::fs::chown(dir, None, Some(gid))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2777))
        }
        None => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)),
    }
}

/// Files of an atomic-writer style volume, collected before writing.
#[derive(Default)]
struct Files {
    entries: BTreeMap<String, (Vec<u8>, i32)>,
}

impl Files {
    fn add(&mut self, path: &str, data: Vec<u8>, mode: i32) {
        self.entries.insert(path.to_string(), (data, mode));
    }

    /// `items` select and rename keys; without them every key becomes a file.
    fn items(
        &mut self,
        volume: &str,
        kind: &'static str,
        name: &str,
        data: &KeyValues,
        items: Option<&[KeyToPath]>,
        mode: i32,
    ) -> Result<(), VolumeError> {
        match items {
            Some(items) if !items.is_empty() => {
                for item in items {
                    let value = data
                        .get(&item.key)
                        .ok_or_else(|| VolumeError::KeyNotFound {
                            volume: volume.into(),
                            kind,
                            name: name.into(),
                            key: item.key.clone(),
                        })?;
                    self.add(&item.path, value.clone(), item.mode.unwrap_or(mode));
                }
            }
            _ => {
                for (key, value) in data {
                    self.add(key, value.clone(), mode);
                }
            }
        }
        Ok(())
    }

    fn write(
        self,
        dir: PathBuf,
        fs_group: Option<u32>,
        volume: &str,
        read_only: bool,
    ) -> Result<Prepared, VolumeError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| VolumeError::Io {
                volume: volume.into(),
                path,
                source,
            }
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(err(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(err(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(err(&dir))?;
        for (rel, (data, mode)) in self.entries {
            // The API server rejects absolute paths and `..`; refuse them anyway.
            if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
                continue;
            }
            let path = dir.join(&rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(err(parent))?;
            }
            std::fs::write(&path, &data).map_err(err(&path))?;
            let mut mode = u32::try_from(mode).unwrap_or(0o644) & 0o7777;
            if let Some(gid) = fs_group {
                std::os::unix::fs::chown(&path, None, Some(gid)).map_err(err(&path))?;
                mode |= 0o040;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(err(&path))?;
        }
        Ok(Prepared {
            host_path: dir,
            read_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{fs_group_mode, root_mismatch};

    #[test]
    fn fs_group_adds_group_access_and_setgid_on_directories() {
        // (mode, is_dir, read_only, expected)
        let cases = [
            (0o755, true, false, 0o2775),
            (0o700, true, false, 0o2770),
            (0o644, false, false, 0o664),
            (0o600, false, true, 0o640),
            (0o755, true, true, 0o2755),
            (0o40755, true, false, 0o2775),
        ];
        for (mode, is_dir, read_only, want) in cases {
            assert_eq!(
                fs_group_mode(mode, is_dir, read_only),
                want,
                "{mode:o} dir={is_dir} ro={read_only}"
            );
        }
    }

    #[test]
    fn on_root_mismatch_checks_group_permissions_and_setgid() {
        // (gid, mode, is_dir, read_only, mismatch)
        let cases = [
            (3000, 0o2775, true, false, false),
            (3000, 0o2770, true, false, false),
            (3000, 0o2777, true, false, false),
            (0, 0o2775, true, false, true),
            (3000, 0o775, true, false, true),
            (3000, 0o2755, true, false, true),
            (3000, 0o2755, true, true, false),
            (3000, 0o2775, false, false, true),
        ];
        for (gid, mode, is_dir, read_only, want) in cases {
            assert_eq!(
                root_mismatch(gid, mode, is_dir, 3000, read_only),
                want,
                "gid={gid} mode={mode:o} dir={is_dir} ro={read_only}"
            );
        }
    }
}
