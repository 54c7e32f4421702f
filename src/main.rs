//! The `dagflow` binary: parses the command line and the environment into a
//! [`Config`] and hands it to [`dagflow::cli::run`].

use std::process::ExitCode;

use clap::Parser;
use dagflow::cli::{self, EXIT_ERROR};
use dagflow::config::Config;

/// glibc's allocator was a quarter of the engine's CPU under load (malloc, free
/// and their consolidation, profiled with `perf` on `dagflow bench`); mimalloc's
/// per-thread free lists cost a fraction of that. Only the binary chooses: a
/// program that embeds the engine keeps its own allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    // Fault injection (tests only): the failpoints named in `FAILPOINTS` are set for
    // the process's life. Without the feature this is not compiled in.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    match cli::run(config).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("dagflow: {:#}", anyhow::Error::from(error));
            ExitCode::from(EXIT_ERROR)
        }
    }
}
