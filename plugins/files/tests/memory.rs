//! The conformance kit's memory check, alone in its test binary (the peak it reads is the
//! whole process's): archiving 80 MiB of files keeps the plugin's memory flat.

use std::io::Write;

use stowage_plugin_files::{FilesConfig, FilesPlugin};
use stowage_plugin_sdk::RunContext;
use stowage_plugin_sdk::conformance::check_flat_memory;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_tree_streams_with_flat_memory() {
    let claim = tempfile::tempdir().unwrap();
    let dir = claim.path().join("media");
    std::fs::create_dir(&dir).unwrap();
    // 20 files of 4 MiB each, of varied bytes.
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    for n in 0..20 {
        let mut file = std::fs::File::create(dir.join(format!("clip-{n}.bin"))).unwrap();
        for _ in 0..4 {
            file.write_all(&block).unwrap();
        }
    }
    drop(block);
    let mut ctx = RunContext::new("media", "clips");
    ctx.claim_root = Some(claim.path().to_owned());
    let config = FilesConfig {
        claim_name: "media".into(),
        path: "media".into(),
        include: Vec::new(),
        exclude: Vec::new(),
    };
    let used = check_flat_memory::<FilesPlugin>(&config, &ctx, 64 << 20, 24 << 20)
        .await
        .unwrap_or_else(|p| panic!("{}", p.join("\n")));
    println!(
        "archived {} MiB with the peak growing by {} MiB",
        used.artifact_bytes >> 20,
        used.peak_growth_bytes >> 20
    );
}
