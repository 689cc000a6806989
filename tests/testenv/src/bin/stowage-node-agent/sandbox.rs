//! The container side: `stowage-node-agent sandbox-exec <spec>` runs in a fresh,
//! single-threaded process, builds the container's view of the file system in a private
//! mount namespace, drops privileges and `execve`s the container's command.
//!
//! The view: an empty tmpfs becomes the new root; every top-level entry of the host's `/`
//! is bind-mounted (recursively) into it, so the machine's own tools stand in for the
//! image. Each mount (volumes, termination log, image-map binaries) is bind-mounted at its
//! path. When a path is missing and its parent comes from the host, that parent is
//! "mimicked": its host content is moved aside, a tmpfs takes its place and every original
//! entry is bind-mounted back, so the new directory exists only in this namespace and the
//! host's real directories are never written.
//!
//! With `readOnlyRootFilesystem` every other mount of the view (the root tmpfs, the host's
//! directories, mimicked ones) is then remounted read-only, except `/dev`, `/proc` and
//! `/sys`, which a runtime mounts writable itself.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{Gid, Uid, chdir, chroot, execve, setgid, setgroups, sethostname, setuid};
use serde::{Deserialize, Serialize};

/// The default `PATH` of container images.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit code of the helper when the container could not be started (as runc's 128).
pub const START_ERROR_EXIT: i32 = 128;

/// One bind mount in the container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountSpec {
    /// Host file or directory.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// The identity the command runs as.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserSpec {
    /// `runAsUser`.
    pub uid: u32,
    /// `runAsGroup` (0 when unset, as for a numeric image user).
    pub gid: u32,
    /// `supplementalGroups` and `fsGroup`.
    pub groups: Vec<u32>,
}

/// Everything the helper needs; written by the agent to a 0600 file the helper deletes
/// after reading (the environment may hold secret values, which never go into argv).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// An empty host directory that becomes the container's root.
    pub root: PathBuf,
    /// An empty host directory for moving mimicked directories aside.
    pub stage: PathBuf,
    /// Bind mounts, applied in order.
    pub mounts: Vec<MountSpec>,
    /// `workingDir`, created if missing.
    pub working_dir: Option<String>,
    /// Command and arguments.
    pub argv: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// `runAsUser`/`runAsGroup`, when set.
    pub user: Option<UserSpec>,
    /// `readOnlyRootFilesystem`: everything but the mounts above (and `/dev`, `/proc`,
    /// `/sys`) is remounted read-only.
    #[serde(default)]
    pub read_only_root: bool,
    /// The hostname (the pod name, as in Kubernetes).
    pub hostname: String,
    /// Host file the helper writes a start error into.
    pub error_file: PathBuf,
}

/// Why the container could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The spec file could not be read.
    #[error("reading sandbox spec {path}: {source}")]
    Spec {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was attempted.
        what: String,
        /// The errno.
        source: nix::Error,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A mount path cannot be created.
    #[error("mount path {path}: {reason}")]
    BadPath {
        /// The container path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The command cannot be executed.
    #[error("exec: {0}")]
    Exec(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Sys { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// Entry point of `sandbox-exec`: never returns on success (the process becomes the
/// container); on failure writes the reason to the spec's error file and exits 128.
pub fn run(spec_path: &Path) -> ! {
    let spec = match read_spec(spec_path) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("stowage-node-agent: {e}");
            std::process::exit(START_ERROR_EXIT);
        }
    };
    // Opened before chroot so a late failure can still be reported.
    let error_file = fs::File::create(&spec.error_file).ok();
    let err = match enter(&spec) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    if let Some(mut f) = error_file {
        let _ = write!(f, "{err}");
    }
    eprintln!("stowage-node-agent: container start failed: {err}");
    std::process::exit(START_ERROR_EXIT);
}

fn read_spec(path: &Path) -> Result<SandboxSpec, SandboxError> {
    let text = fs::read(path).map_err(|e| SandboxError::Spec {
        path: path.into(),
        source: e.into(),
    })?;
    let _ = fs::remove_file(path);
    serde_json::from_slice(&text).map_err(|e| SandboxError::Spec {
        path: path.into(),
        source: e.into(),
    })
}

enum Never {}

fn enter(spec: &SandboxSpec) -> Result<Never, SandboxError> {
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(sys("unshare(CLONE_NEWNS|CLONE_NEWUTS)"))?;
    let hostname: String = spec.hostname.chars().take(63).collect();
    sethostname(&hostname).map_err(sys("sethostname"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making / private"))?;

    let mut view = View::new(spec.root.clone(), spec.stage.clone());
    view.build_root()?;
    for m in &spec.mounts {
        view.bind(m)?;
    }
    let workdir = spec.working_dir.clone().unwrap_or_else(|| "/".into());
    view.resolve(&workdir, true)?;
    if spec.read_only_root {
        view.seal()?;
    }

    chroot(&spec.root).map_err(sys("chroot"))?;
    chdir(workdir.as_str()).map_err(sys(format!("chdir {workdir}")))?;

    if let Some(user) = &spec.user {
        let mut groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        groups.dedup();
        setgroups(&groups).map_err(sys("setgroups"))?;
        setgid(Gid::from_raw(user.gid)).map_err(sys("setgid"))?;
        setuid(Uid::from_raw(user.uid)).map_err(sys("setuid"))?;
    }
    exec(spec)
}

fn exec(spec: &SandboxSpec) -> Result<Never, SandboxError> {
    let Some(program) = spec.argv.first() else {
        return Err(SandboxError::Exec(
            "no command: the container has no `command` and its image is not in the node agent's image map".into(),
        ));
    };
    let path_var = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let resolved = if program.contains('/') {
        PathBuf::from(program)
    } else {
        path_var
            .split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| {
                SandboxError::Exec(format!("{program:?}: executable file not found in $PATH"))
            })?
    };
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| SandboxError::Exec(format!("{s:?} contains a NUL byte")))
    };
    let path = cstr(&resolved.to_string_lossy())?;
    let argv = spec
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = spec
        .env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    match execve(&path, &argv, &env) {
        Ok(never) => match never {},
        Err(e) => Err(SandboxError::Exec(format!("{}: {e}", resolved.display()))),
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Who owns a directory of the view, which decides whether it may be written.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Origin {
    /// Bound from the host: never written, mimicked before creating anything inside.
    Host,
    /// A tmpfs of this namespace.
    Private,
    /// A pod volume: creating mount points inside it is what the kubelet does too.
    Volume,
}

/// The container's file system being assembled under `root`.
struct View {
    root: PathBuf,
    stage: PathBuf,
    staged: usize,
    /// Container paths and where their content comes from; the longest prefix wins.
    origins: Vec<(PathBuf, Origin)>,
}

impl View {
    fn new(root: PathBuf, stage: PathBuf) -> Self {
        Self {
            root,
            stage,
            staged: 0,
            origins: vec![(PathBuf::from("/"), Origin::Private)],
        }
    }

    fn host(&self, container_path: &Path) -> PathBuf {
        self.root
            .join(container_path.strip_prefix("/").unwrap_or(container_path))
    }

    fn origin(&self, container_path: &Path) -> Origin {
        self.origins
            .iter()
            .filter(|(p, _)| container_path.starts_with(p))
            .max_by_key(|(p, _)| p.components().count())
            .map_or(Origin::Host, |(_, o)| *o)
    }

    fn set_origin(&mut self, path: PathBuf, origin: Origin) {
        self.origins.retain(|(p, _)| !p.starts_with(&path));
        self.origins.push((path, origin));
    }

    /// tmpfs root with the host's top-level entries bound in.
    fn build_root(&mut self) -> Result<(), SandboxError> {
        mount(
            Some("tmpfs"),
            &self.root,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .map_err(sys(format!("mounting tmpfs at {}", self.root.display())))?;
        self.populate(Path::new("/"), Path::new("/"))
    }

    /// Recreates each entry of host directory `from` at container directory `at`.
    fn populate(&mut self, from: &Path, at: &Path) -> Result<(), SandboxError> {
        let entries = fs::read_dir(from).map_err(io(format!("listing {}", from.display())))?;
        for entry in entries {
            let entry = entry.map_err(io(format!("listing {}", from.display())))?;
            let src = entry.path();
            let container = at.join(entry.file_name());
            let dst = self.host(&container);
            let kind = entry
                .file_type()
                .map_err(io(format!("stat {}", src.display())))?;
            if kind.is_symlink() {
                let target =
                    fs::read_link(&src).map_err(io(format!("readlink {}", src.display())))?;
                symlink(&target, &dst).map_err(io(format!("symlink {}", dst.display())))?;
                continue;
            }
            if kind.is_dir() {
                fs::create_dir(&dst).map_err(io(format!("mkdir {}", dst.display())))?;
            } else {
                fs::File::create(&dst).map_err(io(format!("creating {}", dst.display())))?;
            }
            mount(
                Some(&src),
                &dst,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys(format!(
                "binding {} at {}",
                src.display(),
                dst.display()
            )))?;
            self.set_origin(container, Origin::Host);
        }
        Ok(())
    }

    /// Makes container directory `dir` writable without touching the host.
    fn make_writable(&mut self, dir: &Path) -> Result<(), SandboxError> {
        if self.origin(dir) != Origin::Host {
            return Ok(());
        }
        let host_dir = self.host(dir);
        self.staged += 1;
        let stage = self.stage.join(self.staged.to_string());
        fs::create_dir_all(&stage).map_err(io(format!("mkdir {}", stage.display())))?;
        mount(
            Some(&host_dir),
            &stage,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys(format!("moving {} aside", dir.display())))?;
        let mode = fs::metadata(&stage)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o755);
        mount(
            Some("tmpfs"),
            &host_dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(format!("mode={mode:o}").as_str()),
        )
        .map_err(sys(format!("mounting tmpfs over {}", dir.display())))?;
        self.set_origin(dir.to_path_buf(), Origin::Private);
        self.populate(&stage, dir)
    }

    /// Resolves container path `path` (following symlinks inside the view), creating what
    /// is missing: directories, and the last component as a file when `dir` is false.
    /// Returns the canonical container path.
    fn resolve(&mut self, path: &str, dir: bool) -> Result<PathBuf, SandboxError> {
        let bad = |reason: &str| SandboxError::BadPath {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        if !path.starts_with('/') {
            return Err(bad("must be absolute"));
        }
        let mut pending: VecDeque<String> = components(Path::new(path));
        let mut current = PathBuf::from("/");
        let mut hops = 0;
        while let Some(name) = pending.pop_front() {
            let next = current.join(&name);
            let host = self.host(&next);
            let last = pending.is_empty();
            match fs::symlink_metadata(&host) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > 40 {
                        return Err(bad("too many levels of symbolic links"));
                    }
                    let target =
                        fs::read_link(&host).map_err(io(format!("readlink {}", host.display())))?;
                    let base = if target.is_absolute() {
                        PathBuf::from("/")
                    } else {
                        current.clone()
                    };
                    let mut rest = components(&base.join(&target));
                    rest.extend(pending);
                    pending = rest;
                    current = PathBuf::from("/");
                }
                Ok(meta) if meta.is_dir() => current = next,
                Ok(_) if last && !dir => current = next,
                Ok(_) => return Err(bad(&format!("{} is not a directory", next.display()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.make_writable(&current)?;
                    let host = self.host(&next);
                    if last && !dir {
                        fs::File::create(&host)
                            .map_err(io(format!("creating {}", next.display())))?;
                    } else {
                        fs::create_dir(&host).map_err(io(format!("mkdir {}", next.display())))?;
                        if self.origin(&current) == Origin::Private {
                            let _ = fs::set_permissions(&host, fs::Permissions::from_mode(0o755));
                        }
                    }
                    current = next;
                }
                Err(e) => return Err(io(format!("stat {}", next.display()))(e)),
            }
        }
        Ok(current)
    }

    fn bind(&mut self, m: &MountSpec) -> Result<(), SandboxError> {
        let is_dir = fs::metadata(&m.source)
            .map_err(io(format!("volume source {}", m.source.display())))?
            .is_dir();
        let target = self.resolve(&m.target, is_dir)?;
        let host = self.host(&target);
        mount(
            Some(&m.source),
            &host,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys(format!(
            "binding {} at {}",
            m.source.display(),
            m.target
        )))?;
        if m.read_only {
            remount_read_only(&host).map_err(sys(format!("making {} read-only", m.target)))?;
        }
        self.set_origin(target, Origin::Volume);
        Ok(())
    }

    /// `readOnlyRootFilesystem`: remounts read-only every mount of the view that is not a
    /// declared mount (volumes, termination log) or below one; what the runtime provides
    /// writable (`/dev`, `/proc`, `/sys`) is left as it is.
    fn seal(&self) -> Result<(), SandboxError> {
        let table = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io("reading /proc/self/mountinfo"))?;
        let targets = sealed_mounts(&table, &self.root, |container| {
            self.origin(container) == Origin::Volume
                || RUNTIME_WRITABLE
                    .iter()
                    .any(|dir| container.starts_with(dir))
        });
        for container in targets {
            let host = self.host(&container);
            match remount_read_only(&host) {
                // ENOENT, or EINVAL with a read-only result: a mount hidden by a later
                // one at or above its path; the path shows what covers it, sealed before
                // (parents come first).
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::EINVAL)
                    if statvfs(&host).is_ok_and(|s| s.flags().contains(FsFlags::ST_RDONLY)) => {}
                Err(e) => {
                    return Err(sys(format!(
                        "making {} read-only (readOnlyRootFilesystem)",
                        container.display()
                    ))(e));
                }
            }
        }
        Ok(())
    }
}

/// Kernel and device file systems a container runtime mounts itself, writable whatever
/// `readOnlyRootFilesystem` says.
const RUNTIME_WRITABLE: [&str; 3] = ["/dev", "/proc", "/sys"];

/// Makes the mount at `path` read-only, keeping its other per-mount flags (dropping a
/// flag such as `nosuid` would be refused where it is locked).
fn remount_read_only(path: &Path) -> nix::Result<()> {
    let current = statvfs(path)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (st, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(st) {
            flags |= ms;
        }
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
}

/// The container paths of the mounts in `mountinfo` (the text of `/proc/self/mountinfo`)
/// that lie under `root` and are not `writable`, each once, parents first.
fn sealed_mounts(mountinfo: &str, root: &Path, writable: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options ...
        let Some(point) = line.split(' ').nth(4) else {
            continue;
        };
        let point = PathBuf::from(unescape_mount_path(point));
        let Ok(rel) = point.strip_prefix(root) else {
            continue;
        };
        let container = Path::new("/").join(rel);
        if !writable(&container) && !out.contains(&container) {
            out.push(container);
        }
    }
    out.sort_by_key(|p| p.components().count());
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                u8::try_from(value).ok()
            });
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Normal components of an absolute path, with `.` dropped and `..` applied.
fn components(path: &Path) -> VecDeque<String> {
    let mut out: VecDeque<String> = VecDeque::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push_back(n.to_string_lossy().into_owned()),
            Component::ParentDir => {
                out.pop_back();
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{components, sealed_mounts, unescape_mount_path};
    use std::path::{Path, PathBuf};

    #[test]
    fn sealing_selects_the_view_s_mounts_except_writable_ones() {
        let root = "/state/pods/u/containers/main/root";
        let table = [
            "22 1 0:21 / / rw,relatime - ext4 /dev/sda1 rw".to_string(),
            format!("90 22 0:50 / {root} rw - tmpfs tmpfs rw"),
            format!("91 90 8:1 /usr {root}/usr rw,nosuid - ext4 /dev/sda1 rw"),
            format!("92 90 0:5 / {root}/dev rw - devtmpfs udev rw"),
            format!("93 92 0:6 / {root}/dev/pts rw - devpts devpts rw"),
            format!("94 90 8:1 /v {root}/data rw - ext4 /dev/sda1 rw"),
            format!("95 94 8:1 /w {root}/data/sub rw - ext4 /dev/sda1 rw"),
            format!("96 90 8:1 /o {root}/opt/my\\040dir rw - ext4 /dev/sda1 rw"),
            format!("97 90 0:51 / {root}/etc rw - tmpfs tmpfs rw"),
            format!("98 97 8:1 /etc/passwd {root}/etc/passwd rw - ext4 /dev/sda1 rw"),
            format!("99 90 0:50 / {root}rest rw - tmpfs tmpfs rw"),
            format!("100 90 8:1 /usr {root}/usr rw,nosuid - ext4 /dev/sda1 rw"),
        ]
        .join("\n");
        let volumes = [Path::new("/data")];
        let sealed = sealed_mounts(&table, Path::new(root), |p| {
            volumes.iter().any(|v| p.starts_with(v)) || p.starts_with("/dev")
        });
        let want: Vec<PathBuf> = ["/", "/usr", "/etc", "/opt/my dir", "/etc/passwd"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(sealed, want);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mount_path(r"/plain\x"), r"/plain\x");
    }

    #[test]
    fn components_normalise() {
        assert_eq!(components(Path::new("/a/./b/../c/")), ["a", "c"]);
        assert_eq!(components(Path::new("/../x")), ["x"]);
    }
}
