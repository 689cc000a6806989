//! The `stowage` binary: operator, in-Job runner and tools, by subcommand.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc returns freed memory to the system: the operator's memory follows what it
/// holds (caches of thousands of objects) instead of the peak of its first lists, and the
/// runner's stays flat while it streams.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = stowage::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
