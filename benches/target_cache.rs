//! What a cached BackupTarget costs the operator, packed (`WatchedTarget`, spec and status
//! zstd-compressed) against the plain JSON the cache kept before, side by side in one run:
//!
//! ```sh
//! cargo bench --bench target_cache
//! ```
//!
//! For a status of 1 and of 10 backup records, over `STOWAGE_BENCH_TARGETS` targets (5,000),
//! it prints per target:
//!
//! - the heap bytes the cached object holds (requested bytes, counted by this benchmark's
//!   allocator; the allocator's own rounding comes on top of both, and so do the few zstd
//!   contexts the cache shares, which libzstd allocates outside the Rust heap);
//! - the time to decode it from the watch event's JSON (what the watch does per event);
//! - the time to read it back as a `BackupTarget` (what every reconcile of the target and
//!   every schedule selecting it does);
//!
//! and the ratio of packed to plain for each. The times are medians of
//! `STOWAGE_BENCH_ROUNDS` rounds (7), alternating which side goes first. It exits 0
//! whatever the figures are.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use stowage::api::BackupTarget;
use stowage::controller::watched::WatchedTarget;

/// The system allocator, counting the bytes in use.
struct Counting;

static IN_USE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        IN_USE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The cache's form before packing: spec and status as the API server's JSON.
#[derive(Deserialize)]
struct PlainTarget {
    metadata: ObjectMeta,
    spec: Box<RawValue>,
    #[serde(default)]
    status: Option<Box<RawValue>>,
}

impl PlainTarget {
    fn target(&self) -> BackupTarget {
        BackupTarget {
            metadata: self.metadata.clone(),
            spec: serde_json::from_str(self.spec.get()).expect("spec"),
            status: self
                .status
                .as_ref()
                .map(|s| serde_json::from_str(s.get()).expect("status")),
        }
    }
}

/// Target `i` as the API server sends it, after `records` backups (ten at most are kept).
fn served(i: usize, records: usize) -> String {
    let record = |n: usize| {
        json!({"outcome": "Succeeded",
               "startTime": format!("2026-12-{:02}T02:30:00Z", n + 1),
               "completionTime": format!("2026-12-{:02}T02:30:07Z", n + 1),
               "artifact": format!("shop/db-{i:04}/2026-12-{:02}T02-30-00Z-postgres.dump.zst", n + 1),
               "sizeBytes": 123_456 + n * 17 + i, "size": "120.6 KiB",
               "sha256": format!("{:x}", Sha256::digest(format!("{i}/{n}"))),
               "durationSeconds": 7.2, "job": format!("db-{i:04}-nightly-{}", 29_000_000 + n),
               "schedule": "nightly"})
    };
    let condition = |type_: &str, reason: &str, message: String| {
        json!({"type": type_, "status": "True", "reason": reason, "message": message,
               "lastTransitionTime": "2026-12-01T02:30:07Z", "observedGeneration": 1})
    };
    let newest = records - 1;
    json!({
        "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": format!("db-{i:04}"), "namespace": "shop",
                     "uid": format!("6f1c2d3e-0000-4000-8000-{i:012}"),
                     "resourceVersion": format!("{}", 1_000_000 + i), "generation": 1,
                     "creationTimestamp": "2026-12-01T00:00:00Z",
                     "labels": {"tier": "db", "shard": format!("s{}", i % 50)}},
        "spec": {
            "postgres": {"host": format!("db-{i:04}.shop.svc"), "database": "shop",
                         "username": "backup",
                         "passwordSecretRef": {"name": "db", "key": "password"}},
            "storage": {"claimName": "backups"}
        },
        "status": {
            "observedGeneration": 1, "plugin": "postgres", "pluginVersion": "0.1.0",
            "conditions": [
                condition("ConfigValid", "Valid", "the postgres config is valid".into()),
                condition("Reachable", "ProbeSucceeded", "PostgreSQL 15.8, database shop, 3 schemas".into()),
                condition("LastBackupSucceeded", "Succeeded", format!("db-{i:04}-nightly-{} stored 120.6 KiB", 29_000_000 + newest)),
                condition("Ready", "BackedUp", "the last backup succeeded and the target is reachable".into()),
            ],
            "lastBackup": record(newest),
            "lastSuccessfulBackupTime": format!("2026-12-{:02}T02:30:07Z", newest + 1),
            "recentBackups": (0..records).rev().map(record).collect::<Vec<_>>(),
            "artifacts": {"count": records, "totalBytes": 123_456 * records},
            "probedGeneration": 1, "lastProbeTime": "2026-12-01T00:01:00Z"
        }
    })
    .to_string()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Heap bytes per object held by `decode` of every event, and the objects.
fn held<T>(events: &[String], decode: impl Fn(&str) -> T) -> (f64, Vec<T>) {
    let before = IN_USE.load(Ordering::Relaxed);
    let kept: Vec<T> = events.iter().map(|e| decode(e)).collect();
    let after = IN_USE.load(Ordering::Relaxed);
    ((after - before) as f64 / events.len() as f64, kept)
}

/// Time per item of `work` over `items`.
fn per_item<T>(items: &[T], work: impl Fn(&T)) -> Duration {
    let start = Instant::now();
    for item in items {
        work(item);
    }
    start.elapsed() / items.len() as u32
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let targets = env_usize("STOWAGE_BENCH_TARGETS", 5_000).max(1);
    let rounds = env_usize("STOWAGE_BENCH_ROUNDS", 7).max(1);
    println!("cached BackupTargets: {targets} targets, {rounds} rounds, packed against plain");
    for records in [1, 10] {
        let events: Vec<String> = (0..targets).map(|i| served(i, records)).collect();
        let json_bytes = events.iter().map(String::len).sum::<usize>() / targets;
        let (plain_bytes, plain) = held(&events, |e| {
            serde_json::from_str::<PlainTarget>(e).expect("plain")
        });
        let (packed_bytes, packed) = held(&events, |e| {
            serde_json::from_str::<WatchedTarget>(e).expect("packed")
        });
        // The same target either way.
        for (a, b) in plain.iter().zip(&packed) {
            assert_eq!(
                serde_json::to_value(a.target()).unwrap(),
                serde_json::to_value(b.target().unwrap()).unwrap()
            );
        }

        let (mut decode, mut read) = ((vec![], vec![]), (vec![], vec![]));
        for round in 0..rounds {
            let plain_side = || {
                (
                    per_item(&events, |e| {
                        black_box(serde_json::from_str::<PlainTarget>(e).unwrap());
                    }),
                    per_item(&plain, |t| {
                        black_box(t.target());
                    }),
                )
            };
            let packed_side = || {
                (
                    per_item(&events, |e| {
                        black_box(serde_json::from_str::<WatchedTarget>(e).unwrap());
                    }),
                    per_item(&packed, |t| {
                        black_box(t.target().unwrap());
                    }),
                )
            };
            let ((pd, pr), (kd, kr)) = if round % 2 == 0 {
                let p = plain_side();
                (p, packed_side())
            } else {
                let k = packed_side();
                (plain_side(), k)
            };
            decode.0.push(pd);
            decode.1.push(kd);
            read.0.push(pr);
            read.1.push(kr);
        }
        let (decode_plain, decode_packed) = (median(decode.0), median(decode.1));
        let (read_plain, read_packed) = (median(read.0), median(read.1));
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!("\nstatus with {records} backup record(s), {json_bytes} bytes of JSON per target");
        println!(
            "  held per target:  plain {plain_bytes:>8.0} B   packed {packed_bytes:>8.0} B   ratio {:.2}   ({:.1} MiB less at {targets} targets)",
            packed_bytes / plain_bytes,
            (plain_bytes - packed_bytes) * targets as f64 / (1024.0 * 1024.0)
        );
        println!(
            "  decode (watch):   plain {:>8.1} us  packed {:>8.1} us  ratio {:.2}",
            decode_plain.as_secs_f64() * 1e6,
            decode_packed.as_secs_f64() * 1e6,
            ratio(decode_packed, decode_plain)
        );
        println!(
            "  read (reconcile): plain {:>8.1} us  packed {:>8.1} us  ratio {:.2}",
            read_plain.as_secs_f64() * 1e6,
            read_packed.as_secs_f64() * 1e6,
            ratio(read_packed, read_plain)
        );
        drop((plain, packed));
    }
}
