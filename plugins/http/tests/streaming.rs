//! A 512 MiB body, generated on the fly by a real server on 127.0.0.1, streams through the
//! plugin into a sink that only counts and hashes, while this process's peak resident
//! memory stays far below the body's size. (Its own test binary, so no other test's
//! allocations move the peak.)

mod common;

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use common::{Reply, TestServer};
use ring::digest;
use stowage_plugin_http::{HttpConfig, HttpPlugin};
use stowage_plugin_sdk::{ArtifactSink, Plugin, RunContext};

const BODY: u64 = 512 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;
/// Generous: buffers of the client, the server and the runtime, not the body.
const MAX_PEAK_GROWTH: u64 = 64 * MIB;

/// Counts and hashes what it is given, keeping none of it.
struct CountingHasher {
    bytes: u64,
    hash: digest::Context,
}

impl tokio::io::AsyncWrite for CountingHasher {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.bytes += buf.len() as u64;
        self.hash.update(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A `kB` figure from /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs is mounted");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_512_mib_body_streams_with_flat_memory() {
    let digest_slot = Arc::new(Mutex::new(None));
    let served = digest_slot.clone();
    let server = TestServer::start(move |_| Reply::Generated {
        len: BODY,
        digest: served.clone(),
    })
    .await;
    let config = HttpConfig::for_url(server.url("/big.bin"));
    let ctx = RunContext::new("shop", "big");

    let peak_before = status_bytes("VmHWM:");
    let rss_before = status_bytes("VmRSS:");
    let mut sink_state = CountingHasher {
        bytes: 0,
        hash: digest::Context::new(&digest::SHA256),
    };
    let report = {
        let mut sink = ArtifactSink::new(&mut sink_state);
        let report = HttpPlugin::backup(&config, &ctx, &mut sink).await.unwrap();
        assert_eq!(sink.bytes_written(), BODY);
        report
    };
    let peak_after = status_bytes("VmHWM:");
    let rss_after = status_bytes("VmRSS:");
    let growth = peak_after.saturating_sub(peak_before);
    println!(
        "streamed {} MiB: VmHWM {:.1} MiB -> {:.1} MiB (+{:.1} MiB), VmRSS {:.1} MiB -> {:.1} MiB",
        BODY / MIB,
        peak_before as f64 / MIB as f64,
        peak_after as f64 / MIB as f64,
        growth as f64 / MIB as f64,
        rss_before as f64 / MIB as f64,
        rss_after as f64 / MIB as f64,
    );

    assert_eq!(sink_state.bytes, BODY);
    assert_eq!(report.facts["contentLength"], BODY.to_string());
    let received = sink_state.hash.finish();
    // The server records its digest right after its last write, which may be a moment
    // after the client has read that write.
    let mut sent = None;
    for _ in 0..1000 {
        sent = digest_slot.lock().unwrap().clone();
        if sent.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let sent = sent.expect("the server finished sending");
    assert_eq!(
        received.as_ref(),
        sent.as_slice(),
        "the bytes differ from those sent"
    );
    assert!(
        growth < MAX_PEAK_GROWTH,
        "peak RSS grew by {} MiB while streaming {} MiB; the body is being buffered",
        growth / MIB,
        BODY / MIB
    );
}
