//! The `dagflow` commands behind the parsed [`Config`]: [`run`] starts logging and
//! dispatches to the processes (`serve`, `worker`, in [`server`]) or to the client
//! commands (`submit`, `status`, `watch`, in [`client`]), which talk to a server over
//! HTTP and WebSocket.
//!
//! Exit codes: 0 success (for `submit --wait` and `watch`: the flow completed),
//! 1 the flow failed, 2 the flow was cancelled, 3 any error (see [`CliError`]).

pub mod client;
pub mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use dagflow_actors::{EngineError, FlowStatus};
use tracing_subscriber::EnvFilter;

use crate::config::{Command, Config};

/// Exit code of a command that failed (as opposed to a flow that failed).
pub const EXIT_ERROR: u8 = 3;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The `--log-filter` / `RUST_LOG` value does not parse.
    #[error("invalid log filter '{filter}': {message}")]
    LogFilter {
        /// The filter given.
        filter: String,
        /// What is wrong with it.
        message: String,
    },
    /// Redis does not answer.
    #[error("cannot reach redis at {url}: {message}")]
    RedisUnreachable {
        /// The URL tried (without its password).
        url: String,
        /// What the connection attempt said.
        message: String,
    },
    /// Another process holds the sled directory.
    #[error("data dir {} is locked by another dagflow process (one server per data dir)", .0.display())]
    DataDirLocked(PathBuf),
    /// The engine failed to start or stop.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// The API failed to start.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// Installing the signal handlers failed.
    #[error("cannot listen for signals: {0}")]
    Signal(std::io::Error),
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The server could not be reached, or the exchange broke off.
    #[error("request to {url} failed: {message}")]
    Http {
        /// What was requested.
        url: String,
        /// Why it failed.
        message: String,
    },
    /// The server answered with an error.
    #[error("server answered {status} {code}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The error's `code`.
        code: String,
        /// The error's `message` (the server puts everything a person needs in it,
        /// the problems of an invalid flow included).
        message: String,
        /// The error's `details`, for programs.
        details: serde_json::Value,
    },
    /// The server's answer was not what the protocol says.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The WebSocket failed.
    #[error("websocket {url}: {message}")]
    WebSocket {
        /// The WebSocket URL.
        url: String,
        /// Why.
        message: String,
    },
}

/// Runs the command `config` describes; the result is the process's exit code.
pub async fn run(config: Config) -> Result<ExitCode, CliError> {
    init_logging(&config)?;
    match config.command {
        Command::Serve(serve) => server::serve(serve).await,
        Command::Worker(worker) => server::worker(worker).await,
        Command::Submit(submit) => client::submit(submit).await,
        Command::Status(status) => client::status(status).await,
        Command::Watch(watch) => client::watch(watch).await,
        Command::Signal(signal) => client::signal(signal).await,
        Command::Rerun(rerun) => client::rerun(rerun).await,
        Command::Schedule(args) => client::schedule::run(args).await,
        Command::Bench(args) => match crate::bench::run(args).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("dagflow bench: {e:#}");
                Ok(ExitCode::from(EXIT_ERROR))
            }
        },
    }
}

/// The exit code that reports a flow's final status.
pub fn flow_exit_code(status: FlowStatus) -> ExitCode {
    ExitCode::from(match status {
        FlowStatus::Completed => 0,
        FlowStatus::Failed => 1,
        FlowStatus::Cancelled => 2,
        FlowStatus::Running => EXIT_ERROR,
    })
}

/// Logs go to stderr, so that stdout carries only what a command prints for scripts.
fn init_logging(config: &Config) -> Result<(), CliError> {
    let filter = EnvFilter::try_new(&config.log_filter).map_err(|e| CliError::LogFilter {
        filter: config.log_filter.clone(),
        message: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (run called twice in one process) keeps the first.
    let _ = if config.log_json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}
