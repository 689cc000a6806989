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

const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn payload(len: usize) -> Vec<u8> {
    // Compressible but not trivial.
    (0..len)
        .map(|i| ((i * 7919) % 251) as u8 ^ (i / 4096) as u8)
        .collect()
}

async fn write(store: &ArtifactStore, compression: Compression, data: &[u8]) -> WrittenArtifact {
    let mut pending = store.create(&name(compression), "r").unwrap();
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
    let mut pending = store.create(&name(Compression::Zstd), "killed").unwrap();
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

    // Another run leaves it alone while it may be live; the same run's retry removes it.
    let recovery = store.recover(&target, "other", DAY).unwrap();
    assert_eq!(recovery.kept_live, vec![partial.clone()]);
    assert!(partial.exists());
    let recovery = store.recover(&target, "killed", DAY).unwrap();
    assert_eq!(recovery.removed, vec![partial.clone()]);
    assert!(!partial.exists());

    // A failure reported normally aborts and removes the partial right away.
    let pending = store.create(&name(Compression::Gzip), "r").unwrap();
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
    // The producer can run ahead of the encoder by at most its buffers: check that while
    // the pipeline is not driven, writes stop being accepted.
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let mut pending = store.create(&name(Compression::None), "r").unwrap();
    let (mut writer, pipeline) = pending.start().unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let bound = pipeline::BUFFERS * pipeline::BUFFER_SIZE;
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
            accepted <= bound,
            "the writer accepted {accepted} bytes with no encoder"
        );
    }
    assert!(
        accepted >= bound - chunk.len(),
        "the writer stopped at {accepted} bytes, before its {bound} bytes of buffers"
    );
    drop(writer);
    let encoded = pipeline.await.unwrap();
    assert!(encoded.raw_bytes <= bound as u64);
    // What was accepted is in the file, in order (the partial last write included).
    let stored = std::fs::read(pending.partial_path()).unwrap();
    assert_eq!(stored.len() as u64, encoded.raw_bytes);
    assert!(stored.iter().all(|&b| b == 7));
    pending.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_encoder_fails_the_plugins_writes() {
    // The encoder fails (here: its file is read-only): the plugin's writes fail instead
    // of waiting forever, and the pipeline reports the encoder's error.
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let pending = store.create(&name(Compression::Zstd), "r").unwrap();
    let read_only = std::fs::File::open(pending.partial_path()).unwrap();
    let (input_writer, input) = pipeline::channel(pending.counters());
    let encoder = tokio::task::spawn_blocking(move || {
        pipeline::encode(input, read_only, Compression::Zstd, &Counters::default())
    });
    let mut sink = stowage_plugin_sdk::ArtifactSink::new(input_writer);
    let data = payload(64 * 1024 * 1024);
    let mut failed = None;
    for chunk in data.chunks(1024 * 1024) {
        if let Err(e) = sink.write_all(chunk).await {
            failed = Some(e);
            break;
        }
    }
    let failed = failed.expect("a write failed once the encoder stopped");
    assert_eq!(failed.kind(), std::io::ErrorKind::BrokenPipe, "{failed}");
    let encoded = encoder.await.unwrap();
    assert!(encoded.is_err(), "the encoder reports its own error");
    pending.abort();
}

/// Write `data` as run `run` of `schedule` up to (not including) the commit.
async fn encode_pending(
    store: &ArtifactStore,
    schedule: Option<&str>,
    run: &str,
    data: Vec<u8>,
) -> (PendingArtifact, Sidecar) {
    let mut pending = store
        .create(&name(Compression::Zstd).for_schedule(schedule), run)
        .unwrap();
    let (writer, pipeline) = pending.start().unwrap();
    let producer = async move {
        let mut sink = stowage_plugin_sdk::ArtifactSink::new(writer);
        sink.write_all(&data).await.unwrap();
        sink.shutdown().await.unwrap();
    };
    let ((), encoded) = tokio::join!(producer, pipeline);
    let mut sidecar = sidecar_for(&encoded.unwrap(), Compression::Zstd);
    sidecar.run_id = run.into();
    sidecar.schedule = schedule.map(str::to_owned);
    (pending, sidecar)
}

fn make_old(path: &std::path::Path) {
    let old = std::time::SystemTime::now() - 2 * DAY;
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_never_removes_or_takes_a_live_runs_file() {
    // The reported race: run A is writing; run B of the same target starts, and today
    // B's start removed A's partial file and both aimed at one final name.
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let target = TargetDir::new("shop", "app-db").unwrap();
    let mut a = store.create(&name(Compression::None), "run-a").unwrap();
    let (mut a_writer, a_pipeline) = a.start().unwrap();
    let a_pipeline = tokio::spawn(a_pipeline);
    a_writer.write_all(b"first half of A, ").await.unwrap();

    let recovery = store.recover(&target, "run-b", DAY).unwrap();
    assert!(recovery.removed.is_empty(), "{:?}", recovery.removed);
    assert!(a.partial_path().exists(), "B removed A's live file");
    let mut b = store.create(&name(Compression::None), "run-b").unwrap();
    assert_ne!(a.relative(), b.relative(), "A and B aim at one final name");
    let (mut b_writer, b_pipeline) = b.start().unwrap();
    b_writer.write_all(b"all of B").await.unwrap();
    drop(b_writer);
    let b_encoded = b_pipeline.await.unwrap();

    a_writer.write_all(b"second half of A").await.unwrap();
    drop(a_writer);
    let a_encoded = a_pipeline.await.unwrap().unwrap();
    let a_written = a
        .commit(sidecar_for(&a_encoded, Compression::None))
        .unwrap();
    let b_written = b
        .commit(sidecar_for(&b_encoded, Compression::None))
        .unwrap();
    assert_eq!(
        std::fs::read(&a_written.path).unwrap(),
        b"first half of A, second half of A"
    );
    assert_eq!(std::fs::read(&b_written.path).unwrap(), b"all of B");
    let report = catalog::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.ok.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedules_at_one_tick_write_two_named_artifacts_without_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let (nightly, nightly_sidecar) =
        encode_pending(&store, Some("nightly"), "run-n", payload(10_000)).await;
    let (hourly, hourly_sidecar) =
        encode_pending(&store, Some("hourly"), "run-h", payload(20_000)).await;
    let nightly = nightly.commit(nightly_sidecar).unwrap();
    let hourly = hourly.commit(hourly_sidecar).unwrap();
    assert!(
        nightly
            .relative
            .ends_with("test-20261121T023000Z-nightly.bin.zst")
    );
    assert!(
        hourly
            .relative
            .ends_with("test-20261121T023000Z-hourly.bin.zst")
    );
    assert!(catalog::verify(dir.path()).unwrap().problems.is_empty());
}

fn final_artifacts_without_sidecar(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    catalog::scan(root)
        .unwrap()
        .problems
        .into_iter()
        .filter(|p| p.kind == ProblemKind::NoSidecar)
        .map(|p| p.path)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_step_of_a_commit_shows_a_final_artifact_without_its_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let (pending, sidecar) =
        encode_pending(&store, Some("nightly"), "run-1", payload(50_000)).await;
    let root = dir.path().to_owned();
    let mut steps = Vec::new();
    pending
        .commit_observed(sidecar, &mut |step| {
            assert_eq!(
                final_artifacts_without_sidecar(&root),
                Vec::<std::path::PathBuf>::new(),
                "after {step:?}"
            );
            steps.push(step);
        })
        .unwrap();
    assert_eq!(
        steps,
        [
            CommitStep::SidecarWritten,
            CommitStep::Published,
            CommitStep::Synced
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_commit_is_named_by_verify_and_completed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let target = TargetDir::new("shop", "app-db").unwrap();
    let data = payload(80_000);
    let (pending, sidecar) = encode_pending(&store, Some("nightly"), "run-1", data.clone()).await;
    let final_path = dir.path().join(pending.relative());
    // The run dies right after the sidecar is written.
    let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pending.commit_observed(sidecar, &mut |step| {
            if step == CommitStep::SidecarWritten {
                panic!("killed");
            }
        })
    }));
    assert!(died.is_err());
    assert!(!final_path.exists());
    let report = catalog::verify(dir.path()).unwrap();
    assert!(report.ok.is_empty());
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert!(
        matches!(problem.kind, ProblemKind::Uncommitted { .. }),
        "{problem}"
    );
    assert!(
        problem.fix().contains("stowage artifacts repair"),
        "{}",
        problem.fix()
    );
    // Not listed: retention never counts it.
    assert!(catalog::scan(dir.path()).unwrap().artifacts.is_empty());

    let recovery = store.recover(&target, "run-2", DAY).unwrap();
    assert_eq!(recovery.completed, vec![final_path.clone()]);
    let report = catalog::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let mut back = Vec::new();
    Decoded::open(&final_path, Compression::Zstd)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_runs_that_are_over_are_removed_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let target = TargetDir::new("shop", "app-db").unwrap();
    // A sidecar whose file does not match it (the run died mid-way and something wrote
    // over its partial file), left for two days: both go.
    let (pending, mut sidecar) = encode_pending(&store, Some("a"), "run-a", payload(1000)).await;
    sidecar.sha256 = "0".repeat(64);
    let bad_final = dir.path().join(pending.relative());
    let bad_partial = pending.partial_path().to_owned();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pending.commit_observed(sidecar, &mut |_| panic!("killed"))
    }));
    make_old(&bad_partial);
    // A sidecar whose artifact was pruned (artifact first, sidecar second).
    let (pending, sidecar) = encode_pending(&store, Some("b"), "run-b", payload(1000)).await;
    let pruned = pending.commit(sidecar).unwrap();
    std::fs::remove_file(&pruned.path).unwrap();
    // A stale partial of another run, and a fresh one.
    let (stale, _) = encode_pending(&store, Some("c"), "run-c", payload(10)).await;
    let stale_path = stale.partial_path().to_owned();
    std::mem::forget(stale);
    make_old(&stale_path);
    let (live, _) = encode_pending(&store, Some("d"), "run-d", payload(10)).await;
    let live_path = live.partial_path().to_owned();

    let report = catalog::verify(dir.path()).unwrap();
    let kinds: Vec<_> = report.problems.iter().map(|p| &p.kind).collect();
    assert_eq!(report.problems.len(), 3, "{kinds:?}");
    assert!(kinds.contains(&&ProblemKind::StalePartial), "{kinds:?}");
    assert!(kinds.contains(&&ProblemKind::Missing), "{kinds:?}");

    let recovery = store.recover(&target, "run-e", DAY).unwrap();
    assert!(!bad_final.exists() && !bad_partial.exists());
    assert!(!layout::with_suffix(&bad_final, layout::SIDECAR_SUFFIX).exists());
    assert!(!layout::with_suffix(&pruned.path, layout::SIDECAR_SUFFIX).exists());
    assert!(!stale_path.exists());
    assert!(live_path.exists(), "a live run's file was removed");
    assert_eq!(recovery.kept_live, vec![live_path]);
    let report = catalog::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    live.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_another_runs_recovery_completed_keeps_its_sidecar() {
    // Run A is between its two commit steps when run B of the same target starts: B's
    // recovery sees A's sidecar and A's whole partial file and publishes it. A's own
    // publication then finds the name taken; it must not remove the sidecar of the
    // artifact that is now there (a final-named artifact without its sidecar).
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let target = TargetDir::new("shop", "app-db").unwrap();
    let data = payload(60_000);
    let (pending, sidecar) = encode_pending(&store, Some("nightly"), "run-a", data.clone()).await;
    let final_path = dir.path().join(pending.relative());
    let written = pending.commit_observed(sidecar, &mut |step| {
        if step == CommitStep::SidecarWritten {
            let recovery = store.recover(&target, "run-b", DAY).unwrap();
            assert_eq!(recovery.completed, vec![final_path.clone()]);
        }
    });
    let report = catalog::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.ok, vec![final_path.clone()]);
    let written = written.expect("A's artifact is published (by B's recovery)");
    assert_eq!(written.path, final_path);
    let mut back = Vec::new();
    Decoded::open(&final_path, Compression::Zstd)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_racing_the_runs_own_commit_leaves_the_artifact_whole() {
    // Run B's recovery listed the directory while run A was between its two commit
    // steps (a sidecar, no artifact); then A went on. Whatever A had done by the time B
    // settles the sidecar, B must neither remove the sidecar of A's published artifact
    // nor fail.
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(dir.path());
    let never_over = |_: &std::path::Path, _: Option<&str>| false;
    for a_unlinked_its_partial in [true, false] {
        let (pending, sidecar) =
            encode_pending(&store, Some("nightly"), "run-a", payload(30_000)).await;
        let partial = pending.partial_path().to_owned();
        let written = pending.commit(sidecar).unwrap();
        if !a_unlinked_its_partial {
            // A is between the hard link and the unlink of its publication.
            std::fs::hard_link(&written.path, &partial).unwrap();
        }
        let sidecar_path = layout::with_suffix(&written.path, layout::SIDECAR_SUFFIX);
        let settled = writer::settle_sidecar(
            written.path.parent().unwrap(),
            &sidecar_path,
            &written.path,
            &written.sidecar,
            &never_over,
        );
        let case = if a_unlinked_its_partial {
            "after A's publication"
        } else {
            "during A's publication"
        };
        assert!(
            matches!(settled, Ok(writer::Settled::PublishedByItsRun)),
            "{case}: {settled:?}"
        );
        assert!(sidecar_path.exists(), "{case}: A's sidecar was removed");
        let report = catalog::verify(&written.path).unwrap();
        assert!(report.problems.is_empty(), "{case}: {:?}", report.problems);
        let _ = std::fs::remove_file(&partial);
    }
}
