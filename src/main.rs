//! The `dagflow` binary: parses the command line and the environment into a
//! [`Config`] and hands it to [`dagflow::cli::run`].

use std::process::ExitCode;

use clap::Parser;
use dagflow::cli::{self, EXIT_ERROR};
use dagflow::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    match cli::run(config).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("dagflow: {:#}", anyhow::Error::from(error));
            ExitCode::from(EXIT_ERROR)
        }
    }
}
