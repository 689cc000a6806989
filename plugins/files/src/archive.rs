//! The backup side: walk a directory tree without following links and write it as a tar
//! stream (blocking; run off the async runtime).

use std::fs::File;
use std::io::{self, ErrorKind as IoKind, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stowage_plugin_sdk::PluginError;
use tar::{Builder, EntryType, Header, HeaderMode};
use walkdir::WalkDir;

use crate::config::{Decision, Selection};

/// How many names of skipped or changed files the facts list.
pub const NAMES_KEPT: usize = 5;
/// Progress is logged every this many entries...
const PROGRESS_ENTRIES: u64 = 10_000;
/// ...or after this long, whichever comes first.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// What went into an archive, and what did not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Regular files archived.
    pub files: u64,
    /// Directories archived.
    pub directories: u64,
    /// Symbolic links archived (as links).
    pub symlinks: u64,
    /// Bytes of the regular files' contents.
    pub bytes: u64,
    /// FIFOs, sockets and device files skipped.
    pub skipped_special: u64,
    /// The first few of them, relative to the archived directory.
    pub skipped_special_names: Vec<String>,
    /// Files that changed (size or modification time) or vanished while they were read.
    pub changed: u64,
    /// The first few of them.
    pub changed_names: Vec<String>,
}

impl Tally {
    /// Entries in the archive.
    pub fn entries(&self) -> u64 {
        self.files + self.directories + self.symlinks
    }

    fn note_changed(&mut self, relative: &Path, what: &str) {
        tracing::warn!(file = %relative.display(), "{what} while it was archived");
        self.changed += 1;
        if self.changed_names.len() < NAMES_KEPT {
            self.changed_names.push(relative.display().to_string());
        }
    }
}

/// Where the walk reports errors about the tree: the claim and the path as the user
/// wrote them.
pub struct Place<'a> {
    /// The claim's name.
    pub claim: &'a str,
    /// `path` as shown in messages (quoted).
    pub shown: &'a str,
}

impl Place<'_> {
    fn error(&self, relative: &Path, e: io::Error) -> PluginError {
        let entry = if relative.as_os_str().is_empty() {
            self.shown.to_owned()
        } else {
            format!("{:?} in {}", relative.display().to_string(), self.shown)
        };
        match e.kind() {
            IoKind::PermissionDenied => PluginError::Unauthorized(format!(
                "spec.files.path: {entry} on claim {:?} cannot be read by the backup pod's user ({e}); set spec.job.runAs to the application's user and group, or exclude it with spec.files.exclude",
                self.claim
            )),
            _ => PluginError::Io(io::Error::new(
                e.kind(),
                format!("reading {entry} on claim {:?}: {e}", self.claim),
            )),
        }
    }
}

/// Archive the tree under `root` (a directory) into `out` as tar entries named relative
/// to `root`, choosing entries with `selection`. Symbolic links are stored as links,
/// FIFOs, sockets and devices are skipped (and counted), and a file that changes while it
/// is read is stored with exactly the size its header announced.
pub fn write_tree<W: Write>(
    root: &Path,
    selection: &Selection,
    place: &Place<'_>,
    out: W,
) -> Result<(Tally, W), PluginError> {
    let mut builder = Builder::new(out);
    builder.mode(HeaderMode::Complete);
    builder.follow_symlinks(false);
    let mut tally = Tally::default();
    // One frame per directory from `root` down to the current entry's parent: its
    // decision, and for a directory walked but not (yet) archived, what to archive when
    // something below it is.
    let root_decision = if selection.filters_includes() {
        Decision::WalkOnly
    } else {
        Decision::Archive
    };
    let mut stack: Vec<Frame> = vec![Frame {
        decision: root_decision,
        pending: None,
    }];
    let mut walk = WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(false)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter();
    let mut last_report = Instant::now();
    while let Some(next) = walk.next() {
        let entry = match next {
            Ok(entry) => entry,
            Err(e) => {
                let relative = e
                    .path()
                    .and_then(|p| p.strip_prefix(root).ok())
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                let io = e
                    .into_io_error()
                    .unwrap_or_else(|| io::Error::other("a filesystem loop"));
                if io.kind() == IoKind::NotFound {
                    tally.note_changed(&relative, "vanished");
                    continue;
                }
                return Err(place.error(&relative, io));
            }
        };
        let relative = entry
            .path()
            .strip_prefix(root)
            .map_err(|e| PluginError::Internal(format!("walked outside the tree: {e}")))?
            .to_path_buf();
        let file_type = entry.file_type();
        stack.truncate(entry.depth());
        let parent = stack.last().map_or(root_decision, |f| f.decision);
        let decision = selection.decide(&relative, file_type.is_dir(), parent);
        if decision == Decision::Skip {
            if file_type.is_dir() {
                walk.skip_current_dir();
            }
            continue;
        }
        if file_type.is_fifo()
            || file_type.is_socket()
            || file_type.is_block_device()
            || file_type.is_char_device()
        {
            if decision == Decision::Archive {
                tracing::warn!(file = %relative.display(), "skipped: a FIFO, socket or device file is not archived");
                tally.skipped_special += 1;
                if tally.skipped_special_names.len() < NAMES_KEPT {
                    tally
                        .skipped_special_names
                        .push(relative.display().to_string());
                }
            }
            continue;
        }
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            Err(e) => {
                let io = e
                    .into_io_error()
                    .unwrap_or_else(|| io::Error::other("unreadable metadata"));
                if io.kind() == IoKind::NotFound {
                    tally.note_changed(&relative, "vanished");
                    continue;
                }
                return Err(place.error(&relative, io));
            }
        };
        if decision == Decision::WalkOnly {
            // Only directories are walked without being archived.
            stack.push(Frame {
                decision,
                pending: Some((relative, metadata)),
            });
            continue;
        }
        archive_ancestors(&mut builder, &mut stack, &mut tally, place)?;
        let absolute = entry.path();
        if file_type.is_dir() {
            append_dir(&mut builder, &relative, &metadata, place)?;
            tally.directories += 1;
            stack.push(Frame {
                decision,
                pending: None,
            });
        } else if file_type.is_symlink() {
            let target = match std::fs::read_link(absolute) {
                Ok(target) => target,
                Err(e) if e.kind() == IoKind::NotFound => {
                    tally.note_changed(&relative, "vanished");
                    continue;
                }
                Err(e) => return Err(place.error(&relative, e)),
            };
            let mut header = Header::new_gnu();
            header.set_metadata_in_mode(&metadata, HeaderMode::Complete);
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            builder
                .append_link(&mut header, &relative, &target)
                .map_err(|e| place.error(&relative, e))?;
            tally.symlinks += 1;
        } else {
            append_file(&mut builder, absolute, &relative, &mut tally, place)?;
        }
        if tally.entries() % PROGRESS_ENTRIES == 0 || last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            tracing::info!(
                files = tally.files,
                directories = tally.directories,
                symlinks = tally.symlinks,
                bytes = tally.bytes,
                at = %relative.display(),
                "archiving"
            );
        }
    }
    if tally.entries() == 0 {
        return Err(nothing_selected(selection, place));
    }
    let out = builder
        .into_inner()
        .map_err(|e| place.error(Path::new(""), e))?;
    Ok((tally, out))
}

/// A directory of the walk.
struct Frame {
    decision: Decision,
    /// A directory walked but not archived yet: archived (for its mode and time) as soon
    /// as something below it is.
    pending: Option<(PathBuf, std::fs::Metadata)>,
}

fn archive_ancestors<W: Write>(
    builder: &mut Builder<W>,
    stack: &mut [Frame],
    tally: &mut Tally,
    place: &Place<'_>,
) -> Result<(), PluginError> {
    for frame in stack.iter_mut() {
        if let Some((relative, metadata)) = frame.pending.take() {
            append_dir(builder, &relative, &metadata, place)?;
            tally.directories += 1;
        }
    }
    Ok(())
}

fn append_dir<W: Write>(
    builder: &mut Builder<W>,
    relative: &Path,
    metadata: &std::fs::Metadata,
    place: &Place<'_>,
) -> Result<(), PluginError> {
    let mut header = Header::new_gnu();
    header.set_metadata_in_mode(metadata, HeaderMode::Complete);
    header.set_entry_type(EntryType::Directory);
    header.set_size(0);
    builder
        .append_data(&mut header, relative, io::empty())
        .map_err(|e| place.error(relative, e))
}

/// Append one regular file: its header's size is the size when it was opened, and
/// exactly that many bytes follow, whatever the application does to it meanwhile.
fn append_file<W: Write>(
    builder: &mut Builder<W>,
    absolute: &Path,
    relative: &Path,
    tally: &mut Tally,
    place: &Place<'_>,
) -> Result<(), PluginError> {
    let mut file = match File::open(absolute) {
        Ok(file) => file,
        Err(e) if e.kind() == IoKind::NotFound => {
            tally.note_changed(relative, "vanished");
            return Ok(());
        }
        Err(e) => return Err(place.error(relative, e)),
    };
    let before = file.metadata().map_err(|e| place.error(relative, e))?;
    if !before.is_file() {
        tally.note_changed(relative, "was replaced by something that is not a file");
        return Ok(());
    }
    let size = before.len();
    let mut header = Header::new_gnu();
    header.set_metadata_in_mode(&before, HeaderMode::Complete);
    header.set_entry_type(EntryType::Regular);
    header.set_size(size);
    let mut contents = ExactSize::new(&mut file, size);
    builder
        .append_data(&mut header, relative, &mut contents)
        .map_err(|e| place.error(relative, e))?;
    let padded = contents.padded;
    let grew = matches!(file.read(&mut [0u8; 1]), Ok(n) if n > 0);
    let after = file.metadata().ok();
    let touched = after.is_some_and(|after| after.modified().ok() != before.modified().ok());
    if padded > 0 {
        tally.note_changed(relative, "shrank (the missing end is stored as zeros)");
    } else if grew {
        tally.note_changed(relative, "grew (stored up to the size it had when opened)");
    } else if touched {
        tally.note_changed(relative, "was modified");
    }
    tally.files += 1;
    tally.bytes += size;
    Ok(())
}

/// A reader giving exactly `size` bytes of `inner`: cut where `inner` has more, padded
/// with zeros where it has fewer (a file that shrank while read), so a tar entry's data
/// always matches its header.
pub struct ExactSize<R> {
    inner: R,
    remaining: u64,
    ended: bool,
    /// Zeros added because `inner` ended early.
    pub padded: u64,
}

impl<R: Read> ExactSize<R> {
    /// `size` bytes of `inner`.
    pub fn new(inner: R, size: u64) -> Self {
        ExactSize {
            inner,
            remaining: size,
            ended: false,
            padded: 0,
        }
    }
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = if self.ended {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        let n = if n == 0 {
            self.ended = true;
            buf[..want].fill(0);
            self.padded += want as u64;
            want
        } else {
            n
        };
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn nothing_selected(selection: &Selection, place: &Place<'_>) -> PluginError {
    let (field, fix) = if selection.filters_includes() {
        (
            "spec.files.include",
            "no entry matches the include patterns (after exclude); patterns are relative to spec.files.path and `*` stays within one directory (use `**/` for any depth)",
        )
    } else if selection.excludes_anything() {
        (
            "spec.files.exclude",
            "the exclude patterns leave nothing to archive",
        )
    } else {
        (
            "spec.files.path",
            "the directory is empty; check that it is the directory the application writes to",
        )
    };
    PluginError::NotFound(format!(
        "{field}: nothing to archive in {} on claim {:?}: {fix}",
        place.shown, place.claim
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_size_cuts_and_pads() {
        // (contents, announced size, bytes out, zeros padded)
        let cases: [(&[u8], u64, &[u8], u64); 4] = [
            (b"hello", 5, b"hello", 0),
            (b"hello world", 5, b"hello", 0),
            (b"hi", 5, b"hi\0\0\0", 3),
            (b"", 3, b"\0\0\0", 3),
        ];
        for (contents, size, want, padded) in cases {
            let mut reader = ExactSize::new(contents, size);
            let mut out = Vec::new();
            reader.read_to_end(&mut out).unwrap();
            assert_eq!(out, want, "{contents:?} as {size}");
            assert_eq!(reader.padded, padded, "{contents:?} as {size}");
        }
    }
}
