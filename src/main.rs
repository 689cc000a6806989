//! The `stowage` binary: operator, in-Job runner and tools, by subcommand.

use std::process::ExitCode;

use clap::Parser;
use stowage::cli::RuntimeFlavor;

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
