//! The files plugin on temporary directories standing in for the application's claim:
//! trees round-trip with their modes, times and links, special files are skipped and
//! noted, include/exclude choose what goes in, a file written during the backup leaves a
//! valid archive, hostile or truncated artifacts write nothing, and every mistake ends in
//! the documented error kind naming the field.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use stowage_plugin_files::{FilesConfig, FilesPlugin};
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, ErrorKind, Plugin, PluginError, RestoreRequest, RunContext,
};

fn config(path: &str) -> FilesConfig {
    FilesConfig {
        claim_name: "app-data".into(),
        path: path.into(),
        include: Vec::new(),
        exclude: Vec::new(),
    }
}

fn ctx(claim: &Path) -> RunContext {
    let mut ctx = RunContext::new("shop", "app-files");
    ctx.claim_root = Some(claim.to_owned());
    ctx
}

async fn backup(
    config: &FilesConfig,
    claim: &Path,
) -> Result<(Vec<u8>, BTreeMap<String, String>), PluginError> {
    let mut bytes = Vec::new();
    let mut sink = ArtifactSink::new(&mut bytes);
    let report = FilesPlugin::backup(config, &ctx(claim), &mut sink).await?;
    drop(sink);
    Ok((bytes, report.facts))
}

async fn restore(
    config: &FilesConfig,
    claim: &Path,
    artifact: &[u8],
    into: Option<&str>,
    replace: bool,
) -> Result<String, PluginError> {
    let mut source = ArtifactSource::new(artifact);
    let request = RestoreRequest {
        into: into.map(Into::into),
        replace,
        ..RestoreRequest::default()
    };
    FilesPlugin::restore(config, &ctx(claim), &mut source, &request)
        .await
        .map(|r| r.message)
}

async fn holds_data(
    config: &FilesConfig,
    claim: &Path,
    into: Option<&str>,
) -> Result<bool, PluginError> {
    let request = RestoreRequest {
        into: into.map(Into::into),
        ..RestoreRequest::default()
    };
    FilesPlugin::inspect_destination(config, &ctx(claim), &request)
        .await
        .map(|r| r.holds_data)
}

/// One entry of a tree as a user would compare it.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        contents: Vec<u8>,
        mtime: i64,
    },
    Link {
        target: String,
    },
    Special,
}

/// Every entry below `root`, by relative path.
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    use std::os::unix::fs::MetadataExt;
    let mut tree = BTreeMap::new();
    for entry in walkdir_lite(root) {
        let relative = entry.strip_prefix(root).unwrap().display().to_string();
        let meta = fs::symlink_metadata(&entry).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let node = if meta.file_type().is_symlink() {
            Node::Link {
                target: fs::read_link(&entry).unwrap().display().to_string(),
            }
        } else if meta.is_dir() {
            Node::Dir { mode }
        } else if meta.is_file() {
            Node::File {
                mode,
                contents: fs::read(&entry).unwrap(),
                mtime: meta.mtime(),
            }
        } else {
            Node::Special
        };
        tree.insert(relative, node);
    }
    tree
}

fn walkdir_lite(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

fn write(path: &Path, contents: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// An application's directory: nested directories, files of several modes, a read-only
/// directory, links (relative, dangling, absolute), a FIFO.
fn app_tree(dir: &Path) {
    write(&dir.join("config.yaml"), b"listen: 8080\n", 0o640);
    write(&dir.join("secret.key"), b"not really a key", 0o600);
    write(&dir.join("bin/run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write(
        &dir.join("uploads/2024/01/photo.jpg"),
        &vec![7u8; 300_000],
        0o644,
    );
    write(&dir.join("uploads/2024/02/empty.txt"), b"", 0o644);
    write(&dir.join("frozen/readme"), b"read only", 0o444);
    fs::set_permissions(dir.join("frozen"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::create_dir_all(dir.join("empty-dir")).unwrap();
    symlink("uploads/2024/01/photo.jpg", dir.join("latest.jpg")).unwrap();
    symlink("does/not/exist", dir.join("dangling")).unwrap();
    symlink("/etc/hostname", dir.join("absolute")).unwrap();
    write(
        &dir.join(format!("long/{}/name.txt", "d".repeat(120))),
        b"long",
        0o644,
    );
    mkfifo(&dir.join("app.fifo"));
}

#[tokio::test]
async fn a_tree_round_trips_with_modes_times_and_links_and_a_fifo_is_skipped_and_noted() {
    let claim = tempfile::tempdir().unwrap();
    let data = claim.path().join("data");
    app_tree(&data);
    let (artifact, facts) = backup(&config("data"), claim.path()).await.unwrap();

    assert_eq!(facts["path"], "data");
    assert_eq!(facts["files"], "7", "{facts:?}");
    assert_eq!(facts["symlinks"], "3", "{facts:?}");
    assert_eq!(facts["skippedSpecialFiles"], "1", "{facts:?}");
    assert_eq!(facts["skippedSpecialFileNames"], "app.fifo");
    assert!(!facts.contains_key("changedDuringBackup"), "{facts:?}");

    assert!(
        !holds_data(&config("data"), claim.path(), Some("restored"))
            .await
            .unwrap()
    );
    let message = restore(
        &config("data"),
        claim.path(),
        &artifact,
        Some("restored"),
        false,
    )
    .await
    .unwrap();
    assert!(message.contains("\"restored\""), "{message}");

    let mut want = snapshot(&data);
    assert_eq!(want.remove("app.fifo"), Some(Node::Special));
    let got = snapshot(&claim.path().join("restored"));
    assert_eq!(got, want);
    // Links are links, not copies of what they point at.
    assert!(
        fs::symlink_metadata(claim.path().join("restored/absolute"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // No staging directory is left behind.
    let mut names: Vec<String> = fs::read_dir(claim.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["data", "restored"]);
    // Tidy the read-only directories for the temporary directory's removal.
    for root in ["data", "restored"] {
        fs::set_permissions(
            claim.path().join(root).join("frozen"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
}

/// The entry names of a tar archive, in order.
fn entry_names(artifact: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(artifact);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .display()
                .to_string()
                .trim_end_matches('/')
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn include_and_exclude_choose_the_entries_and_an_excluded_directory_is_not_read() {
    let claim = tempfile::tempdir().unwrap();
    let root = claim.path();
    write(&root.join("app.conf"), b"a", 0o644);
    write(&root.join("notes.txt"), b"n", 0o644);
    write(&root.join("photos/a.jpg"), b"a", 0o644);
    write(&root.join("photos/upload.tmp"), b"t", 0o644);
    write(&root.join("photos/raw/big.raw"), b"r", 0o644);
    write(&root.join("deep/er/x.conf"), b"x", 0o644);
    write(&root.join("cache/blob"), b"c", 0o644);
    // An unreadable directory under an exclude: never opened, so no error.
    fs::create_dir_all(root.join("cache/locked")).unwrap();
    fs::set_permissions(root.join("cache/locked"), fs::Permissions::from_mode(0o000)).unwrap();

    let mut cfg = config(".");
    cfg.include = vec!["photos".into(), "*.conf".into(), "deep/**/*.conf".into()];
    cfg.exclude = vec!["photos/raw".into(), "**/*.tmp".into()];
    let (artifact, facts) = backup(&cfg, root).await.unwrap();
    assert_eq!(
        entry_names(&artifact),
        [
            "app.conf",
            "deep",
            "deep/er",
            "deep/er/x.conf",
            "photos",
            "photos/a.jpg"
        ]
    );
    assert_eq!(facts["files"], "3");
    assert_eq!(facts["directories"], "3");

    let mut cfg = config(".");
    cfg.exclude = vec!["cache".into(), "photos".into()];
    let (artifact, _) = backup(&cfg, root).await.unwrap();
    assert_eq!(
        entry_names(&artifact),
        ["app.conf", "deep", "deep/er", "deep/er/x.conf", "notes.txt"]
    );
    fs::set_permissions(root.join("cache/locked"), fs::Permissions::from_mode(0o755)).unwrap();
}

fn assert_error(
    result: Result<impl std::fmt::Debug, PluginError>,
    kind: ErrorKind,
    words: &[&str],
) {
    let error = result.expect_err("an error");
    assert_eq!(error.kind(), kind, "{error}");
    let text = match &error {
        PluginError::InvalidConfig(errors) => errors
            .0
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    };
    for word in words {
        assert!(text.contains(word), "{word:?} not in {text:?}");
    }
}

#[tokio::test]
async fn every_documented_mistake_ends_in_its_kind_naming_the_field_and_the_fix() {
    let claim = tempfile::tempdir().unwrap();
    let root = claim.path();
    write(&root.join("data/a.txt"), b"a", 0o644);
    write(&root.join("file.txt"), b"f", 0o644);
    fs::create_dir_all(root.join("empty")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    write(&outside.path().join("host.txt"), b"h", 0o644);
    symlink(outside.path(), root.join("escape")).unwrap();

    symlink("data", root.join("data-link")).unwrap();
    let (_, facts) = backup(&config("data-link"), root).await.unwrap();
    assert_eq!(
        facts["files"], "1",
        "a path linking to a directory on the claim is that directory"
    );
    assert_error(
        backup(&config("missing"), root).await,
        ErrorKind::NotFound,
        &["spec.files.path", "\"missing\"", "app-data"],
    );
    assert_error(
        FilesPlugin::probe(&config("missing"), &ctx(root)).await,
        ErrorKind::NotFound,
        &["spec.files.path"],
    );
    assert_error(
        backup(&config("file.txt"), root).await,
        ErrorKind::InvalidConfig,
        &["path: ", "not a directory", "include"],
    );
    assert_error(
        backup(&config("../etc"), root).await,
        ErrorKind::InvalidConfig,
        &["path: ", "leaves the claim"],
    );
    assert_error(
        backup(&config("/etc"), root).await,
        ErrorKind::InvalidConfig,
        &["path: ", "absolute"],
    );
    assert_error(
        backup(&config("escape"), root).await,
        ErrorKind::InvalidConfig,
        &["path: ", "outside the claim"],
    );
    assert_error(
        FilesPlugin::probe(&config("escape"), &ctx(root)).await,
        ErrorKind::InvalidConfig,
        &["path: ", "outside the claim"],
    );
    assert_error(
        backup(&config("empty"), root).await,
        ErrorKind::NotFound,
        &["spec.files.path", "nothing to archive"],
    );
    let mut cfg = config("data");
    cfg.include = vec!["*.jpg".into()];
    assert_error(
        backup(&cfg, root).await,
        ErrorKind::NotFound,
        &["spec.files.include", "nothing to archive"],
    );
    let mut cfg = config("data");
    cfg.exclude = vec!["*".into()];
    assert_error(
        backup(&cfg, root).await,
        ErrorKind::NotFound,
        &["spec.files.exclude"],
    );
    let mut cfg = config("data");
    cfg.include = vec!["[".into()];
    assert_error(
        backup(&cfg, root).await,
        ErrorKind::InvalidConfig,
        &["include[0]: "],
    );

    let (artifact, _) = backup(&config("data"), root).await.unwrap();
    assert_error(
        restore(&config("data"), root, &artifact, Some("../x"), true).await,
        ErrorKind::InvalidConfig,
        &["into: ", "leaves the claim"],
    );
    assert_error(
        restore(&config("data"), root, &artifact, Some("escape/in"), false).await,
        ErrorKind::InvalidConfig,
        &["into: ", "outside the claim"],
    );
    assert_error(
        restore(&config("data"), root, &artifact, Some("file.txt"), true).await,
        ErrorKind::InvalidConfig,
        &["into: ", "not a directory"],
    );
    assert_error(
        holds_data(&config("data"), root, Some("file.txt")).await,
        ErrorKind::InvalidConfig,
        &["into: "],
    );
    assert_error(
        restore(&config("data"), root, &artifact, None, false).await,
        ErrorKind::Unsupported,
        &["holds data", "Replace"],
    );
    assert_error(
        restore(&config("."), root, &artifact, None, true).await,
        ErrorKind::Unsupported,
        &["mount point", "spec.destination.into"],
    );
    assert!(!outside.path().join("in").exists());
    assert_eq!(fs::read(root.join("data/a.txt")).unwrap(), b"a");
}

#[tokio::test]
async fn replace_swaps_the_tree_and_a_truncated_artifact_leaves_the_old_one_untouched() {
    let claim = tempfile::tempdir().unwrap();
    let root = claim.path();
    write(&root.join("data/keep.txt"), b"new contents", 0o644);
    write(&root.join("data/sub/added.txt"), &vec![1u8; 10_000], 0o644);
    let (artifact, _) = backup(&config("data"), root).await.unwrap();
    let backed_up = snapshot(&root.join("data"));

    fs::remove_dir_all(root.join("data")).unwrap();
    write(&root.join("data/keep.txt"), b"old contents", 0o644);
    write(&root.join("data/stale.txt"), b"stale", 0o644);
    let old = snapshot(&root.join("data"));
    assert!(holds_data(&config("data"), root, None).await.unwrap());

    // Cut inside a file's data, and cut at a block boundary before the end marker.
    for cut in [artifact.len() / 2, artifact.len() - 1024] {
        let truncated = &artifact[..cut];
        assert_error(
            restore(&config("data"), root, truncated, None, true).await,
            ErrorKind::ToolFailed,
            &["nothing was restored"],
        );
        assert_eq!(snapshot(&root.join("data")), old, "cut at {cut}");
        let names: Vec<_> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["data"],
            "a staging directory was left behind (cut at {cut})"
        );
    }

    restore(&config("data"), root, &artifact, None, true)
        .await
        .unwrap();
    assert_eq!(snapshot(&root.join("data")), backed_up);
    let names: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["data"]);
}

#[tokio::test]
async fn the_whole_claim_restores_into_an_empty_claim_root() {
    let claim = tempfile::tempdir().unwrap();
    write(&claim.path().join("a/b.txt"), b"b", 0o600);
    symlink("a/b.txt", claim.path().join("link")).unwrap();
    let (artifact, facts) = backup(&config("."), claim.path()).await.unwrap();
    assert_eq!(facts["path"], ".");
    let want = snapshot(claim.path());

    let empty = tempfile::tempdir().unwrap();
    assert!(!holds_data(&config("."), empty.path(), None).await.unwrap());
    restore(&config("."), empty.path(), &artifact, None, false)
        .await
        .unwrap();
    assert_eq!(snapshot(empty.path()), want);
}

/// One hand-written tar entry: name, kind, data, link target.
type RawEntry<'a> = (&'a str, tar::EntryType, &'a [u8], &'a str);

/// A tar archive whose entries are written by hand, `..` included, as an attacker would.
fn hostile_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[tokio::test]
async fn an_entry_that_would_escape_the_destination_is_refused_and_writes_nothing() {
    use tar::EntryType::{Regular, Symlink};
    let outer = tempfile::tempdir().unwrap();
    let claim = outer.path().join("claim");
    fs::create_dir_all(&claim).unwrap();
    let cases: [&[RawEntry<'_>]; 3] = [
        &[
            ("ok.txt", Regular, b"fine", ""),
            ("../../escaped.txt", Regular, b"evil", ""),
        ],
        &[("/escaped.txt", Regular, b"evil", "")],
        // A link out of the destination, then a file written through it.
        &[
            ("out", Symlink, b"", "../.."),
            ("out/escaped.txt", Regular, b"evil", ""),
        ],
    ];
    for entries in cases {
        let artifact = hostile_tar(entries);
        assert_error(
            restore(&config("data"), &claim, &artifact, Some("restored"), false).await,
            ErrorKind::ToolFailed,
            &[],
        );
        assert!(!outer.path().join("escaped.txt").exists(), "{entries:?}");
        assert!(!claim.join("escaped.txt").exists(), "{entries:?}");
        let names: Vec<_> = fs::read_dir(&claim)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(names.is_empty(), "{entries:?} left {names:?}");
    }
}

/// Every entry of an archive made while `growing.log` grew is whole and sized as its
/// header says, and the file starts with what it held before.
fn check_growing_archive(artifact: &[u8]) {
    let mut archive = tar::Archive::new(artifact);
    let mut seen = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut contents = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut contents).unwrap();
        assert_eq!(contents.len() as u64, entry.header().size().unwrap());
        seen.insert(entry.path().unwrap().display().to_string(), contents);
    }
    assert_eq!(seen["before.txt"], b"before");
    assert_eq!(seen["zafter.txt"], b"after");
    assert!(seen["growing.log"].len() >= 8 << 20);
    assert!(seen["growing.log"].starts_with(&vec![b'x'; 8 << 20]));
}

#[tokio::test]
async fn a_file_written_during_the_backup_leaves_a_valid_archive_and_is_noted() {
    let claim = tempfile::tempdir().unwrap();
    let root = claim.path();
    write(&root.join("before.txt"), b"before", 0o644);
    write(&root.join("growing.log"), &vec![b'x'; 8 << 20], 0o644);
    write(&root.join("zafter.txt"), b"after", 0o644);
    // The writer must append while the backup reads the file; on a loaded machine one
    // attempt may read it between two appends, so up to five backups are made, each
    // checked whole below, until one saw the file change.
    let mut noted = None;
    for _ in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = {
            let (stop, writes, path) = (stop.clone(), writes.clone(), root.join("growing.log"));
            std::thread::spawn(move || {
                let mut file = fs::OpenOptions::new().append(true).open(path).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    file.write_all(&[b'y'; 4096]).unwrap();
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        while writes.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let result = backup(&config("."), root).await;
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let (artifact, facts) = result.unwrap();
        check_growing_archive(&artifact);
        if facts.get("changedDuringBackup").map(String::as_str) == Some("1") {
            noted = Some((artifact, facts));
            break;
        }
    }
    let (artifact, facts) = noted.expect("in five backups the file never changed during one");
    assert_eq!(facts["changedDuringBackupNames"], "growing.log");
    let into = tempfile::tempdir().unwrap();
    restore(&config("."), into.path(), &artifact, None, false)
        .await
        .unwrap();
    assert_eq!(fs::read(into.path().join("zafter.txt")).unwrap(), b"after");
}

/// The conformance kit's service-backed checks on a real directory tree: the documented
/// mistakes typed and naming the field, and a round trip into another directory compared
/// entry by entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_kit_passes() {
    use stowage_plugin_sdk::conformance::{FailureCase, check_failures, check_round_trip};
    let claim = tempfile::tempdir().unwrap();
    fs::create_dir(claim.path().join("app")).unwrap();
    app_tree(&claim.path().join("app"));
    write(
        &claim.path().join("notes.txt"),
        b"a file, not a directory",
        0o644,
    );
    let case = |name, path: &str, kind, mentions| FailureCase::<FilesPlugin> {
        name,
        config: config(path),
        ctx: ctx(claim.path()),
        kind,
        mentions,
    };
    let cases = [
        case(
            "missing directory",
            "missing",
            ErrorKind::NotFound,
            "spec.files.path",
        ),
        case(
            "a file, not a directory",
            "notes.txt",
            ErrorKind::InvalidConfig,
            "path",
        ),
        case(
            "outside the claim",
            "../etc",
            ErrorKind::InvalidConfig,
            "path",
        ),
    ];
    check_failures(&cases)
        .await
        .unwrap_or_else(|p| panic!("{}", p.join("\n")));

    let request = RestoreRequest {
        into: Some("copy".into()),
        ..RestoreRequest::default()
    };
    let root = claim.path().to_owned();
    check_round_trip::<FilesPlugin, _, _>(
        &config("app"),
        &config("app"),
        &ctx(&root),
        &request,
        || async {
            let (mut want, got) = (snapshot(&root.join("app")), snapshot(&root.join("copy")));
            // The FIFO is skipped and noted, never archived.
            want.remove("app.fifo");
            (want == got).then_some(()).ok_or_else(|| {
                format!(
                    "{} entries backed up, {} restored differently",
                    want.len(),
                    got.len()
                )
            })
        },
    )
    .await
    .unwrap_or_else(|p| panic!("{}", p.join("\n")));
    // Tidy the read-only directories for the temporary directory's removal.
    for dir in ["app", "copy"] {
        fs::set_permissions(
            root.join(dir).join("frozen"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
}
