//! One container instance: from its spec, the pod's volumes and its resolved environment
//! to a sandbox spec, then start, wait (or stop on request) and describe how it ended.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use nix::sys::signal::Signal;
use tokio::sync::watch;

use crate::context::Agent;
use crate::env::command_line;
use crate::expansion::expand;
use crate::process::{self, termination_message};
use crate::sandbox::{DEFAULT_PATH, MountSpec, SandboxSpec, UserSpec};
use crate::status::Ended;
use crate::volumes::Prepared;

/// A request to stop every process of the pod.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KillOrder {
    /// Keep running.
    None,
    /// SIGTERM, then SIGKILL after `grace`.
    Stop {
        /// Time between SIGTERM and SIGKILL.
        grace: Duration,
    },
}

/// A container that cannot be configured (`CreateContainerConfigError`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A volumeMount names no volume of the pod.
    #[error("volumeMount {0:?} names no volume of the pod")]
    UnknownVolume(String),
    /// A `subPath` leaves its volume.
    #[error("subPath {0:?} must not contain '..'")]
    SubPath(String),
    /// `runAsNonRoot` cannot be verified or is violated.
    #[error("{0}")]
    NonRoot(String),
    /// Preparing the container's files failed.
    #[error("preparing {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the pod worker needs to start one instance.
pub struct Instance<'a> {
    /// Shared agent state.
    pub agent: &'a Agent,
    /// The pod.
    pub pod: &'a Pod,
    /// The container.
    pub container: &'a Container,
    /// Prepared volumes by name.
    pub volumes: &'a HashMap<String, Prepared>,
    /// Resolved environment.
    pub env: &'a BTreeMap<String, String>,
    /// Restart number, for the container id.
    pub restart: i32,
}

/// The sandbox spec and the container's host paths.
pub struct Planned {
    spec: SandboxSpec,
    spec_file: std::path::PathBuf,
    message_file: std::path::PathBuf,
    log: std::path::PathBuf,
    container_id: String,
}

/// Builds the sandbox spec (mounts, user, argv, env) of an instance.
pub fn plan(i: &Instance<'_>) -> Result<Planned, ConfigError> {
    let uid = i.pod.metadata.uid.as_deref().unwrap_or_default();
    let namespace = i.pod.metadata.namespace.as_deref().unwrap_or("default");
    let pod_name = i.pod.metadata.name.as_deref().unwrap_or_default();
    let c = i.container;
    let dir = i.agent.layout.container(uid, &c.name);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigError::Io { path, source }
    };
    for sub in ["root", "stage"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(io(&dir.join(sub)))?;
    }
    let message_file = dir.join("termination-log");
    std::fs::write(&message_file, b"").map_err(io(&message_file))?;
    std::fs::set_permissions(&message_file, std::fs::Permissions::from_mode(0o666))
        .map_err(io(&message_file))?;

    let mut mounts = Vec::new();
    for vm in c.volume_mounts.iter().flatten() {
        let volume = i
            .volumes
            .get(&vm.name)
            .ok_or_else(|| ConfigError::UnknownVolume(vm.name.clone()))?;
        let sub_path = match (&vm.sub_path, &vm.sub_path_expr) {
            (Some(p), _) if !p.is_empty() => Some(p.clone()),
            (_, Some(e)) if !e.is_empty() => Some(expand(e, |n| i.env.get(n).cloned())),
            _ => None,
        };
        let source = match sub_path {
            Some(sub) => sub_path_dir(&volume.host_path, &sub)?,
            None => volume.host_path.clone(),
        };
        mounts.push(MountSpec {
            source,
            target: vm.mount_path.clone(),
            read_only: vm.read_only == Some(true) || volume.read_only,
        });
    }
    mounts.push(MountSpec {
        source: message_file.clone(),
        target: c
            .termination_message_path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/dev/termination-log".into()),
        read_only: false,
    });
    let image = c.image.as_deref().unwrap_or_default();
    let mapped = i.agent.image_map.files_for(image);
    for file in &mapped {
        mounts.push(MountSpec {
            source: file.host.clone(),
            target: file.container.clone(),
            read_only: true,
        });
    }
    // Parents before children, as container runtimes sort mounts.
    mounts.sort_by_key(|m| Path::new(&m.target).components().count());

    let mut env: Vec<(String, String)> =
        i.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if !i.env.contains_key("PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !i.env.contains_key("HOSTNAME") {
        env.push(("HOSTNAME".into(), pod_name.into()));
    }
    let user = user(i.pod, c)?;
    if !i.env.contains_key("HOME") {
        let home = if user.as_ref().is_none_or(|u| u.uid == 0) {
            "/root"
        } else {
            "/"
        };
        env.push(("HOME".into(), home.into()));
    }
    let argv = command_line(c, i.env, mapped.first().map(|f| f.container.as_str()));
    let container_id = format!("stowage://{uid}/{}/{}", c.name, i.restart);
    Ok(Planned {
        spec: SandboxSpec {
            root: dir.join("root"),
            stage: dir.join("stage"),
            mounts,
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            argv,
            env,
            user,
            read_only_root: c
                .security_context
                .as_ref()
                .and_then(|s| s.read_only_root_filesystem)
                == Some(true),
            hostname: pod_name.to_string(),
            error_file: dir.join("start-error"),
        },
        spec_file: dir.join("sandbox.json"),
        message_file,
        log: i.agent.layout.log(namespace, pod_name, &c.name),
        container_id,
    })
}

/// The host directory of a `subPath` of the volume at `root`. A missing one is created
/// as the kubelet does: each new directory with the permission bits of the volume's root
/// (its group and setgid bit come from the parent, so an `fsGroup` volume keeps its group).
fn sub_path_dir(root: &Path, sub: &str) -> Result<std::path::PathBuf, ConfigError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigError::Io { path, source }
    };
    let perm = std::fs::metadata(root)
        .map_err(io(root))?
        .permissions()
        .mode()
        & 0o777;
    let mut path = root.to_path_buf();
    for part in Path::new(sub).components() {
        match part {
            Component::Normal(name) => path.push(name),
            Component::CurDir | Component::RootDir => continue,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ConfigError::SubPath(sub.to_string()));
            }
        }
        if std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        std::fs::create_dir(&path).map_err(io(&path))?;
        let inherited = std::fs::metadata(&path).map_err(io(&path))?.mode() & 0o2000;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perm | inherited))
            .map_err(io(&path))?;
    }
    Ok(path)
}

/// The identity from the pod's and container's security contexts.
fn user(pod: &Pod, c: &Container) -> Result<Option<UserSpec>, ConfigError> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let c_sc = c.security_context.as_ref();
    let uid = c_sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    let gid = c_sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group));
    let non_root = c_sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        == Some(true);
    match uid {
        Some(0) if non_root => {
            return Err(ConfigError::NonRoot(
                "container's runAsUser breaks non-root policy (runAsNonRoot with runAsUser 0)"
                    .into(),
            ));
        }
        None if non_root => {
            return Err(ConfigError::NonRoot(
                "container has runAsNonRoot and image will run as root (the node agent cannot read image users: set runAsUser)".into(),
            ));
        }
        _ => {}
    }
    let to_u32 = |v: i64| u32::try_from(v).unwrap_or(0);
    let mut groups: Vec<u32> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .map(to_u32)
        .collect();
    // The runtime adds fsGroup whoever the container runs as.
    if let Some(fs_group) = pod_sc.and_then(|s| s.fs_group) {
        groups.push(to_u32(fs_group));
    }
    if uid.is_none() && gid.is_none() && groups.is_empty() {
        return Ok(None);
    }
    Ok(Some(UserSpec {
        uid: uid.map_or(0, to_u32),
        gid: gid.map_or(0, to_u32),
        groups,
    }))
}

/// Runs one planned instance until it ends or a kill order stops it. `on_start` is called
/// once the process exists, with its start time and container id.
pub async fn run(
    planned: Planned,
    policy_fallback_to_logs: bool,
    kill: &mut watch::Receiver<KillOrder>,
    on_start: impl FnOnce(Timestamp, &str),
) -> Ended {
    let log_offset = std::fs::metadata(&planned.log)
        .map(|m| m.len())
        .unwrap_or(0);
    let started_at = Timestamp::now();
    let mut running = match process::spawn(&planned.spec, &planned.spec_file, &planned.log) {
        Ok(r) => r,
        Err(e) => {
            return Ended {
                exit_code: 128,
                signal: None,
                reason: "StartError".into(),
                message: Some(e.to_string()),
                started_at: None,
                finished_at: Timestamp::now(),
                container_id: Some(planned.container_id),
            };
        }
    };
    let pid_file = planned.spec_file.with_file_name("pid");
    let _ = std::fs::write(
        &pid_file,
        format!(
            "{} {}",
            running.pid(),
            process_start_ticks(running.pid()).unwrap_or(0)
        ),
    );
    on_start(started_at, &planned.container_id);

    let stop = tokio::select! {
        exit = running.wait() => Err(exit),
        grace = wait_for_kill(kill) => Ok(grace),
    };
    let exit = match stop {
        Err(exit) => exit,
        Ok(grace) => {
            running.signal(Signal::SIGTERM);
            match tokio::time::timeout(grace, running.wait()).await {
                Ok(exit) => exit,
                Err(_) => {
                    running.signal(Signal::SIGKILL);
                    running.wait().await
                }
            }
        }
    };
    let _ = std::fs::remove_file(&pid_file);
    let finished_at = Timestamp::now();
    if let Some(start_error) = exit.start_error {
        return Ended {
            exit_code: exit.code,
            signal: None,
            reason: "StartError".into(),
            message: Some(start_error),
            started_at: None,
            finished_at,
            container_id: Some(planned.container_id),
        };
    }
    let failed = exit.code != 0;
    let message = termination_message(
        &planned.message_file,
        policy_fallback_to_logs,
        failed,
        &planned.log,
        log_offset,
    );
    Ended {
        exit_code: exit.code,
        signal: exit.signal,
        reason: if failed { "Error" } else { "Completed" }.into(),
        message,
        started_at: Some(started_at),
        finished_at,
        container_id: Some(planned.container_id),
    }
}

/// Resolves when a stop is ordered (immediately if one already was); never when the
/// sender is gone.
pub async fn wait_for_kill(kill: &mut watch::Receiver<KillOrder>) -> Duration {
    loop {
        if let KillOrder::Stop { grace } = *kill.borrow_and_update() {
            return grace;
        }
        if kill.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks, to recognise a pid later.
pub fn process_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after the last ')' are plain.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}
