//! The `stowage` binary: operator, in-Job runner and tools, by subcommand.

use std::process::ExitCode;

use clap::Parser;
use stowage::cli::RuntimeFlavor;

/// Rust allocations go through jemalloc instead of the C library's allocator (C code
/// linked in, such as libzstd in the runner, still uses glibc's). Measured at 5,000
/// targets after a tick of 5,000 Jobs, glibc held 21 MB of free chunks scattered among
/// the 43 MB in use (its arenas cannot return a page that still holds one live chunk);
/// jemalloc packs objects of one size class together and gives freed pages back
/// (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (the `_RJEM_MALLOC_CONF` environment variable
/// still overrides them):
/// - `narenas:1`: one arena for all threads, so the few threads' allocations share pages
///   instead of each thread's arena keeping its own partly used ones;
/// - `background_thread:true`, `dirty_decay_ms:1000`: a jemalloc thread gives freed pages
///   back to the system gradually over about a second, also while the operator is idle
///   (otherwise only later allocations would);
/// - `muzzy_decay_ms:0`: pages leaving that state are given back for good
///   (`MADV_DONTNEED`), not lazily (`MADV_FREE`, which leaves them in RSS until the
///   system runs short of memory).
///
/// docs/operations.md ("Memory") says how to override them.
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8; 70] =
    b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let cli = stowage::cli::Cli::parse();
    let mut builder = match cli.runtime_flavor() {
        RuntimeFlavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        RuntimeFlavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.execute()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
