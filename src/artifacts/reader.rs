//! Reading an artifact back: decompression and checking the SHA-256 while streaming.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::writer::hex;
use crate::api::Compression;

/// Size of one chunk of decoded bytes a restore hands to the plugin.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Decoded chunks that may wait for the plugin during a restore.
pub const CHANNEL_CHUNKS: usize = 8;

/// Reads a file and hashes the stored bytes as they pass.
pub struct HashingReader {
    inner: BufReader<File>,
    hasher: Sha256,
    bytes: u64,
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl HashingReader {
    /// Open a file.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(HashingReader {
            inner: BufReader::with_capacity(256 * 1024, File::open(path)?),
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    /// Read what is left (to hash the whole file) and return the size and SHA-256.
    pub fn finish(mut self) -> io::Result<(u64, String)> {
        io::copy(
            &mut self.inner.by_ref(),
            &mut HashSink(&mut self.hasher, &mut self.bytes),
        )?;
        Ok((self.bytes, hex(&self.hasher.finalize())))
    }
}

struct HashSink<'a>(&'a mut Sha256, &'a mut u64);

impl io::Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        *self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A decompressing reader over an artifact; [`Decoded::finish`] returns the stored size
/// and SHA-256 of the file once everything was read.
pub enum Decoded {
    /// Stored as is.
    None(HashingReader),
    /// gzip.
    Gzip(Box<flate2::read::MultiGzDecoder<HashingReader>>),
    /// zstd.
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<HashingReader>>>),
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoded::None(r) => r.read(buf),
            Decoded::Gzip(r) => r.read(buf),
            Decoded::Zstd(r) => r.read(buf),
        }
    }
}

impl Decoded {
    /// Open `path` compressed with `compression`.
    pub fn open(path: &Path, compression: Compression) -> io::Result<Decoded> {
        let file = HashingReader::open(path)?;
        Ok(match compression {
            Compression::None => Decoded::None(file),
            Compression::Gzip => Decoded::Gzip(Box::new(flate2::read::MultiGzDecoder::new(file))),
            Compression::Zstd => Decoded::Zstd(Box::new(zstd::stream::read::Decoder::new(file)?)),
        })
    }

    /// Size and SHA-256 of the whole stored file.
    pub fn finish(self) -> io::Result<(u64, String)> {
        match self {
            Decoded::None(r) => r.finish(),
            Decoded::Gzip(r) => r.into_inner().finish(),
            Decoded::Zstd(r) => r.finish().into_inner().finish(),
        }
    }
}

/// Check a whole read's size and hash against what the sidecar recorded.
pub fn check_digest(
    path: &Path,
    expected_size: u64,
    expected_sha: &str,
    actual: (u64, String),
) -> Result<(), DigestMismatch> {
    if actual.0 != expected_size || actual.1 != expected_sha {
        return Err(DigestMismatch {
            path: path.to_owned(),
            expected: format!("{expected_size} bytes, sha256 {expected_sha}"),
            actual: format!("{} bytes, sha256 {}", actual.0, actual.1),
        });
    }
    Ok(())
}

/// The artifact read differs from its sidecar.
#[derive(Debug, thiserror::Error)]
#[error("{path}: the artifact does not match its sidecar (expected {expected}, read {actual}); it is corrupt or was changed - run `stowage verify` on it", path = path.display())]
pub struct DigestMismatch {
    /// The artifact.
    pub path: PathBuf,
    /// What the sidecar says.
    pub expected: String,
    /// What was read.
    pub actual: String,
}
