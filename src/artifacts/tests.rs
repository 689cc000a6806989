//! Tests of the writer, the catalog and verify, on real files in a temporary directory.

use std::collections::BTreeMap;
use std::io::Read;

use jiff::Timestamp;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::catalog::{self, ProblemKind};
use super::reader::Decoded;
use super::*;
use crate::api::Compression;

fn name(compression: Compression) -> ArtifactName {
    ArtifactName::new(
        TargetDir::new("shop", "app-db").unwrap(),
        "test",
        "bin",
        compression,
        "2026-11-21T02:30:00Z".parse().unwrap(),
    )
    .unwrap()
}

fn sidecar_for(encoded: &Encoded, compression: Compression) -> Sidecar {
    let now = Timestamp::now();
    Sidecar {
        format_version: sidecar::FORMAT_VERSION,
        plugin: "test".into(),
        plugin_version: "1".into(),
        stowage_version: "0".into(),
        namespace: "shop".into(),
        target: "app-db".into(),
        schedule: Some("nightly".into()),
        run_id: "r".into(),
        scheduled_time: Some("2026-11-21T02:30:00Z".parse().unwrap()),
        start_time: now,
        end_time: now,
        raw_bytes: encoded.raw_bytes,
        stored_bytes: encoded.stored_bytes,
        sha256: encoded.sha256.clone(),
        compression,
        content_type: "application/octet-stream".into(),
        facts: BTreeMap::new(),
    }
}

fn payload(len: usize) -> Vec<u8> {
    // Compressible but not trivial.
    (0..len)
        .map(|i| ((i * 7919) % 251) as u8 ^ (i / 4096) as u8)
        .collect()
}

async fn write(store: &ArtifactStore, compression: Compression, data: &[u8]) -> WrittenArtifact {
    let mut pending = store.create(&name(compression)).unwrap();
    let (writer, pipeline) = pending.start().unwrap();
    let producer = async move {
        let mut sink = stowage_plugin_sdk::ArtifactSink::new(writer);
        for chunk in data.chunks(10_000) {
            sink.write_all(chunk).await.unwrap();
        }
        sink.shutdown().await.unwrap();
    };
    let ((), encoded) = tokio::join!(producer, pipeline);
    let encoded = encoded.unwrap();
    let sidecar = sidecar_for(&encoded, compression);
    pending.commit(sidecar).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_compresses_hashes_and_reads_back_for_every_compression() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let data = payload(3 * 1024 * 1024 + 17);
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let written = write(&store, compression, &data).await;
        let stored = std::fs::read(&written.path).unwrap();
        assert_eq!(written.sidecar.raw_bytes, data.len() as u64);
        assert_eq!(written.sidecar.stored_bytes, stored.len() as u64);
        assert_eq!(
            written.sidecar.sha256,
            writer::hex(&Sha256::digest(&stored))
        );
        if compression != Compression::None {
            assert!(
                stored.len() < data.len(),
                "{compression:?} did not compress"
            );
        }
        let mut decoded = Decoded::open(&written.path, compression).unwrap();
        let mut back = Vec::new();
        decoded.read_to_end(&mut back).unwrap();
        assert!(back == data, "{compression:?} round trip differs");
        let (size, sha) = decoded.finish().unwrap();
        assert_eq!(
            (size, sha),
            (written.sidecar.stored_bytes, written.sidecar.sha256.clone())
        );
        let sidecar_path = layout::with_suffix(&written.path, layout::SIDECAR_SUFFIX);
        assert_eq!(Sidecar::read(&sidecar_path).unwrap(), written.sidecar);
    }
    // All three were written in the "same second": distinct names, nothing overwritten.
    let found = catalog::scan(dir.path()).unwrap();
    assert_eq!(found.artifacts.len(), 3);
    assert!(found.problems.is_empty(), "{:?}", found.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_second_collisions_get_a_counter_and_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let first = write(&store, Compression::None, b"first").await;
    let second = write(&store, Compression::None, b"second").await;
    assert_eq!(
        first.relative,
        std::path::Path::new("shop/app-db/2026-11-21/test-20261121T023000Z.bin")
    );
    assert_eq!(
        second.relative,
        std::path::Path::new("shop/app-db/2026-11-21/test-20261121T023000Z-1.bin")
    );
    assert_eq!(std::fs::read(&first.path).unwrap(), b"first");
    assert_eq!(std::fs::read(&second.path).unwrap(), b"second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_midway_leaves_no_final_file_and_the_next_run_removes_the_partial() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let target = TargetDir::new("shop", "app-db").unwrap();
    let mut pending = store.create(&name(Compression::Zstd)).unwrap();
    let partial = pending.partial_path().to_owned();
    let final_path = dir.path().join(pending.relative());
    let (writer, pipeline) = pending.start().unwrap();
    let producer = async move {
        let mut sink = stowage_plugin_sdk::ArtifactSink::new(writer);
        sink.write_all(&payload(500_000)).await.unwrap();
        // The plugin fails here: the sink is dropped without completing.
    };
    let ((), encoded) = tokio::join!(producer, pipeline);
    assert!(encoded.is_ok());
    // Simulate a crash: neither commit nor abort runs; the .partial stays behind.
    std::mem::forget(pending);
    assert!(partial.exists());
    assert!(!final_path.exists());
    assert!(catalog::scan(dir.path()).unwrap().artifacts.is_empty());

    let removed = store.remove_stale_partials(&target).unwrap();
    assert_eq!(removed, vec![partial.clone()]);
    assert!(!partial.exists());

    // A failure reported normally aborts and removes the partial right away.
    let pending = store.create(&name(Compression::Gzip)).unwrap();
    let partial = pending.partial_path().to_owned();
    pending.abort();
    assert!(!partial.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_a_flipped_byte_a_missing_file_and_an_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let good = write(&store, Compression::Zstd, &payload(100_000)).await;
    let flipped = write(&store, Compression::Gzip, &payload(100_000)).await;
    let missing = write(&store, Compression::None, &payload(1000)).await;
    let report = catalog::verify(dir.path()).unwrap();
    assert_eq!(report.ok.len(), 3);
    assert!(report.problems.is_empty());

    let mut bytes = std::fs::read(&flipped.path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&flipped.path, &bytes).unwrap();
    std::fs::remove_file(&missing.path).unwrap();
    let orphan = good.path.with_file_name("stray.bin");
    std::fs::write(&orphan, b"x").unwrap();

    let report = catalog::verify(dir.path()).unwrap();
    assert_eq!(report.ok, vec![good.path.clone()]);
    let kinds: Vec<(&std::path::Path, &ProblemKind)> = report
        .problems
        .iter()
        .map(|p| (p.path.as_path(), &p.kind))
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(
        kinds
            .iter()
            .any(|(p, k)| *p == flipped.path && matches!(k, ProblemKind::HashMismatch { .. }))
    );
    assert!(
        kinds
            .iter()
            .any(|(p, k)| *p == missing.path && matches!(k, ProblemKind::Missing))
    );
    assert!(
        kinds
            .iter()
            .any(|(p, k)| *p == orphan && matches!(k, ProblemKind::NoSidecar))
    );

    // One artifact, or a subdirectory, can be verified on its own.
    let one = catalog::verify(&flipped.path).unwrap();
    assert!(one.ok.is_empty() && one.problems.len() == 1);
    let sub = catalog::verify(&dir.path().join("shop/app-db")).unwrap();
    assert_eq!(sub.problems.len(), 3);
    let text = report
        .problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("sha256 mismatch"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_encoder_applies_backpressure_so_memory_stays_bounded() {
    // The producer can run ahead of the encoder by at most the pipe plus the channel:
    // check that while the pipeline is not driven, writes stop being accepted.
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let mut pending = store.create(&name(Compression::None)).unwrap();
    let (mut writer, pipeline) = pending.start().unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut accepted = 0usize;
    loop {
        match tokio::time::timeout(
            std::time::Duration::from_millis(200),
            writer.write_all(&chunk),
        )
        .await
        {
            Ok(Ok(())) => accepted += chunk.len(),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => break,
        }
        assert!(
            accepted <= writer::CHUNK_SIZE * 2,
            "pipe accepted {accepted} bytes with no reader"
        );
    }
    drop(writer);
    let encoded = pipeline.await.unwrap();
    assert!(encoded.raw_bytes <= writer::CHUNK_SIZE as u64 * 2);
    pending.abort();
}
