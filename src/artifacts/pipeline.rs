//! The stream pipeline of a backup: plugin bytes → [`ArtifactWriter`] buffers → encoder
//! thread (compression → SHA-256 → `<final>.partial`) → fsync.
//!
//! It costs the run as little CPU as the plain `tool | zstd > file` pipeline would, since
//! on a small node it shares the cores with the service being dumped:
//!
//! - the plugin's bytes are copied once, into one of [`BUFFERS`] buffers of
//!   [`BUFFER_SIZE`] that are recycled (no allocation or zeroing per chunk), and a full
//!   buffer wakes the encoder thread once per MiB instead of once per pipe write;
//! - zstd runs one worker per core (up to 8) on jobs of [`ZSTD_JOB_SIZE`], which bounds its
//!   memory (about 30 MiB with two workers) whatever the artifact's size;
//! - the file's writeback is started every [`WRITEBACK_STEP`], so the final fsync waits for
//!   little and the page cache never holds much of the artifact dirty;
//! - SHA-256 uses the CPU's SHA extensions when it has them (detected at run time).
//!
//! Memory is bounded: the plugin's writes wait (backpressure) when all buffers are full.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::writer::{Counters, Encoded, hex};
use crate::api::Compression;

/// Size of one buffer of plugin bytes handed to the encoder thread.
pub const BUFFER_SIZE: usize = 1024 * 1024;
/// Buffers at most: one filling, the others waiting for or inside the encoder. The plugin
/// can run ahead of the encoder by at most `BUFFERS * BUFFER_SIZE` bytes.
pub const BUFFERS: usize = 4;
/// zstd level used (zstd's default, as `zstd` without `-#`).
pub const ZSTD_LEVEL: i32 = 3;
/// Size of one zstd job (the unit its workers compress in parallel). zstd would pick 8 MiB
/// at level 3; 4 MiB halves its buffers (about 50 MiB → 30 MiB with two workers) for a
/// compression ratio within 0.1%.
pub const ZSTD_JOB_SIZE: u32 = 4 * 1024 * 1024;
/// Bytes written to the file between two starts of its writeback.
pub const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;
/// Bytes of compressed output gathered before one `write` to the file.
const FILE_BUFFER: usize = 256 * 1024;

/// The plugin's end of an artifact's pipeline (what its [`ArtifactSink`] wraps).
///
/// Writes are copied into a buffer of [`BUFFER_SIZE`]; each full buffer goes to the encoder
/// thread, which sends it back empty. When all [`BUFFERS`] are in use, a write waits for
/// one to come back. Flushing, shutting down or dropping the writer hands over the buffer
/// being filled; shutting down or dropping it ends the artifact's input. A write fails with
/// [`io::ErrorKind::BrokenPipe`] once the encoder stopped (its own error says why).
///
/// [`ArtifactSink`]: stowage_plugin_sdk::ArtifactSink
#[derive(Debug)]
pub struct ArtifactWriter {
    filling: Option<Vec<u8>>,
    allocated: usize,
    to_encoder: Option<UnboundedSender<Vec<u8>>>,
    recycled: UnboundedReceiver<Vec<u8>>,
    counters: Arc<Counters>,
}

/// The encoder thread's end: full buffers in, empty buffers back.
pub(super) struct EncoderInput {
    full: UnboundedReceiver<Vec<u8>>,
    recycled: UnboundedSender<Vec<u8>>,
}

/// A connected writer and encoder input.
pub(super) fn channel(counters: Arc<Counters>) -> (ArtifactWriter, EncoderInput) {
    // Unbounded channels, bounded by the buffers: at most BUFFERS exist.
    let (full_tx, full_rx) = unbounded_channel();
    let (recycled_tx, recycled_rx) = unbounded_channel();
    (
        ArtifactWriter {
            filling: None,
            allocated: 0,
            to_encoder: Some(full_tx),
            recycled: recycled_rx,
            counters,
        },
        EncoderInput {
            full: full_rx,
            recycled: recycled_tx,
        },
    )
}

fn encoder_stopped() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the artifact's encoder stopped (its own error says why)",
    )
}

impl ArtifactWriter {
    /// The buffer being filled: a new one while fewer than [`BUFFERS`] exist, else one the
    /// encoder sent back.
    fn poll_buffer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut Vec<u8>>> {
        if self.filling.is_none() {
            let buffer = if self.allocated < BUFFERS {
                self.allocated += 1;
                Vec::with_capacity(BUFFER_SIZE)
            } else {
                match ready!(self.recycled.poll_recv(cx)) {
                    Some(buffer) => buffer,
                    None => return Poll::Ready(Err(encoder_stopped())),
                }
            };
            self.filling = Some(buffer);
        }
        match self.filling.as_mut() {
            Some(buffer) => Poll::Ready(Ok(buffer)),
            None => Poll::Ready(Err(encoder_stopped())),
        }
    }

    /// Send the buffer being filled (if it holds anything) to the encoder.
    fn hand_over(&mut self) -> io::Result<()> {
        let Some(buffer) = self.filling.take_if(|b| !b.is_empty()) else {
            return Ok(());
        };
        match &self.to_encoder {
            Some(tx) => tx.send(buffer).map_err(|_| encoder_stopped()),
            None => Err(encoder_stopped()),
        }
    }
}

impl AsyncWrite for ArtifactWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.to_encoder.is_none() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the artifact was already shut down",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let buffer = ready!(this.poll_buffer(cx))?;
        let n = (BUFFER_SIZE - buffer.len()).min(data.len());
        buffer.extend_from_slice(&data[..n]);
        let full = buffer.len() >= BUFFER_SIZE;
        this.counters.add_raw(n as u64);
        if full {
            this.hand_over()?;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().hand_over())
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let handed = this.hand_over();
        // Dropping the sender ends the encoder's input.
        this.to_encoder = None;
        Poll::Ready(handed)
    }
}

impl Drop for ArtifactWriter {
    fn drop(&mut self) {
        // As a closed pipe would: what was written reaches the encoder, then its input ends.
        let _ = self.hand_over();
    }
}

/// Compress `input` into `file` (on the calling thread, which blocks), hashing the stored
/// bytes; fsyncs the file. Returns once the writer was shut down or dropped.
pub(super) fn encode(
    input: EncoderInput,
    file: File,
    compression: Compression,
    counters: &Counters,
) -> io::Result<Encoded> {
    let sink = HashingFile::new(file, counters);
    let EncoderInput { mut full, recycled } = input;
    let mut raw_bytes = 0u64;
    let mut feed = |w: &mut dyn Write| -> io::Result<()> {
        while let Some(mut buffer) = full.blocking_recv() {
            raw_bytes += buffer.len() as u64;
            w.write_all(&buffer)?;
            buffer.clear();
            // The writer may be gone already (it was shut down): then the buffer is freed.
            let _ = recycled.send(buffer);
        }
        Ok(())
    };
    let sink = match compression {
        Compression::None => {
            let mut w = sink;
            feed(&mut w)?;
            w
        }
        Compression::Gzip => {
            let mut w = flate2::write::GzEncoder::new(sink, flate2::Compression::default());
            feed(&mut w)?;
            w.finish()?
        }
        Compression::Zstd => {
            let mut w = zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL)?;
            let workers = zstd_workers();
            if workers > 1 {
                w.multithread(workers)?;
                w.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_SIZE))?;
            }
            w.include_checksum(true)?;
            feed(&mut w)?;
            w.finish()?
        }
    };
    let (file, sha256) = sink.finish()?;
    file.sync_all()?;
    let stored_bytes = file.metadata()?.len();
    Ok(Encoded {
        raw_bytes,
        stored_bytes,
        sha256,
    })
}

fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get().min(8) as u32)
        .unwrap_or(1)
}

/// A file writer that hashes and counts what it writes, writes in blocks of
/// [`FILE_BUFFER`], and starts the writeback of every [`WRITEBACK_STEP`] written.
struct HashingFile<'a> {
    file: File,
    buffer: Vec<u8>,
    hasher: Sha256,
    counters: &'a Counters,
    /// Bytes written to the file.
    written: u64,
    /// Bytes whose writeback was started.
    kicked: u64,
}

impl<'a> HashingFile<'a> {
    fn new(file: File, counters: &'a Counters) -> Self {
        HashingFile {
            file,
            buffer: Vec::with_capacity(FILE_BUFFER),
            hasher: Sha256::new(),
            counters,
            written: 0,
            kicked: 0,
        }
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buffer)?;
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        if self.written - self.kicked >= WRITEBACK_STEP {
            start_writeback(&self.file, self.kicked, self.written - self.kicked);
            self.kicked = self.written;
        }
        Ok(())
    }

    /// Write what is buffered; the file and the SHA-256 of everything written.
    fn finish(mut self) -> io::Result<(File, String)> {
        self.write_buffer()?;
        Ok((self.file, hex(&self.hasher.finalize())))
    }
}

impl Write for HashingFile<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buffer.len() >= FILE_BUFFER {
            self.write_buffer()?;
        }
        let n = (FILE_BUFFER - self.buffer.len()).min(data.len());
        self.buffer.extend_from_slice(&data[..n]);
        self.hasher.update(&data[..n]);
        self.counters.add_stored(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_buffer()
    }
}

/// Ask the kernel to start writing `len` bytes of `file` from `offset` to the disk, without
/// waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a hint: durability
/// still comes from the fsync at the end, and a filesystem that does not support it just
/// writes back later.
fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open for
    // as long as `file` is borrowed.
    let r = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot start the artifact's writeback early; the final fsync writes it");
    }
}
