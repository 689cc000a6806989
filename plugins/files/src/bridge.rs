//! Blocking tar code on one side, the async artifact streams on the other: bounded
//! channels of chunks between them, so memory stays flat whatever the tree's size.

use std::io::{self, Read, Write};

use tokio::sync::mpsc;

/// Size of one chunk handed across.
pub const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the two sides (so at most about 1 MiB buffered).
pub const IN_FLIGHT: usize = 4;

/// A blocking writer that hands full chunks to the async side. When the async side is
/// gone (the sink failed, the run was cancelled) writes fail with `BrokenPipe`.
pub struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buffer: Vec<u8>,
}

impl ChunkWriter {
    /// A writer sending into `tx`.
    pub fn new(tx: mpsc::Sender<Vec<u8>>) -> Self {
        ChunkWriter {
            tx,
            buffer: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(full).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the artifact stream was closed while the tree was archived",
            )
        })
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A blocking reader over chunks the async side reads from the artifact; an error it
/// read is returned instead of the end of input. Remembers whether it reached the end.
pub struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    /// The end of the artifact was reached.
    pub at_end: bool,
}

impl ChunkReader {
    /// A reader receiving from `rx`; the sender being dropped is the end of input.
    pub fn new(rx: mpsc::Receiver<io::Result<Vec<u8>>>) -> Self {
        ChunkReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            at_end: false,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => {
                    self.at_end = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
