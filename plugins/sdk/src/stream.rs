//! The byte streams a plugin writes an artifact into and reads one back from.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a plugin writes its artifact.
///
/// The framework behind it compresses, hashes and stores the bytes; the plugin only
/// writes (with [`tokio::io::AsyncWriteExt`] or [`tokio::io::copy`]). Writes apply
/// backpressure, so memory stays flat whatever the artifact size.
pub struct ArtifactSink<'a> {
    inner: Pin<Box<dyn AsyncWrite + Send + 'a>>,
    written: u64,
}

impl<'a> ArtifactSink<'a> {
    /// A sink over any async writer.
    pub fn new(inner: impl AsyncWrite + Send + 'a) -> Self {
        ArtifactSink {
            inner: Box::pin(inner),
            written: 0,
        }
    }

    /// Bytes the plugin has written so far (before compression).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }
}

impl AsyncWrite for ArtifactSink<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = self.inner.as_mut().poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.written += n as u64;
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

/// Where a plugin reads an artifact from during a restore (already decompressed).
pub struct ArtifactSource<'a> {
    inner: Pin<Box<dyn AsyncRead + Send + 'a>>,
}

impl<'a> ArtifactSource<'a> {
    /// A source over any async reader.
    pub fn new(inner: impl AsyncRead + Send + 'a) -> Self {
        ArtifactSource {
            inner: Box::pin(inner),
        }
    }
}

impl AsyncRead for ArtifactSource<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn sink_counts_bytes_and_source_reads_them_back() {
        let mut buffer = Vec::new();
        {
            let mut sink = ArtifactSink::new(&mut buffer);
            sink.write_all(b"hello ").await.unwrap();
            sink.write_all(b"world").await.unwrap();
            sink.shutdown().await.unwrap();
            assert_eq!(sink.bytes_written(), 11);
        }
        let mut source = ArtifactSource::new(&buffer[..]);
        let mut text = String::new();
        source.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "hello world");
    }
}
