//! The long-running processes: `dagflow serve` (API + engine + local workers) and
//! `dagflow worker` (workers only), with their graceful shutdown.
//!
//! Shutdown order on the first SIGINT or SIGTERM: the API stops accepting and closes
//! its WebSockets (so no new flow starts while the engine stops), then the engine
//! lets running jobs finish until the deadline, drains every flow and flushes the
//! store. A second signal exits at once; whatever was not flushed is recovered from
//! Redis and the snapshots on the next start.

use std::process::ExitCode;
use std::time::Duration;

use dagflow_actors::{Engine, EngineBuilder, EngineError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::CliError;
use crate::api::{self, ApiConfig};
use crate::config::{QueueList, RedisConfig, ServeConfig, WorkerConfig};
use crate::handlers;

/// Shortest time the engine gets to stop, even when the API used up the deadline:
/// draining flows and the final flush must get a chance to run.
const MIN_ENGINE_SHUTDOWN: Duration = Duration::from_secs(1);

/// Exit code after a second signal forced the exit (128 + SIGINT, as shells do).
const FORCED_EXIT: i32 = 130;

/// Runs `dagflow serve` until a signal, then stops gracefully.
pub async fn serve(config: ServeConfig) -> Result<ExitCode, CliError> {
    // Installed first: a signal during start-up must not kill the process mid-write.
    let mut signals = Signals::install()?;
    // api::serve warns about a non-loopback address without a token.
    let hibernate_after = Some(config.hibernate_after.0).filter(|d| !d.is_zero());
    let engine = engine_builder(&config.redis, &config.queues)
        .data_dir(&config.data_dir)
        .hibernate_after(hibernate_after)
        .reconcile_every(config.reconcile_every.0)
        .retention(config.retention())
        .notify_options(config.webhooks.options())
        .build()
        .await
        .map_err(|e| startup_error(e, &config.redis, Some(&config.data_dir)))?;

    let stop_api = CancellationToken::new();
    let api_config = ApiConfig {
        api_token: config.api_token.clone(),
        body_limit: config.body_limit,
        ..ApiConfig::default()
    };
    let (addr, mut api_task) = match api::serve(
        engine.clone(),
        api_config,
        config.bind,
        stop_api.clone().cancelled_owned(),
    )
    .await
    {
        Ok(started) => started,
        Err(e) => {
            engine.shutdown(config.shutdown_timeout.0).await;
            return Err(CliError::Api(e));
        }
    };
    info!(
        addr = %addr,
        queues = %config.queues,
        data_dir = %config.data_dir.display(),
        "dagflow is listening"
    );

    let api_ended_early = tokio::select! {
        signal = signals.next() => {
            info!(signal, "shutting down (send the signal again to exit at once)");
            false
        }
        _ = &mut api_task => {
            warn!("the API server stopped on its own; shutting down");
            true
        }
    };
    signals.force_exit_on_next();
    let deadline = Instant::now() + config.shutdown_timeout.0;
    stop_api.cancel();
    if !api_ended_early
        && tokio::time::timeout_at(deadline, &mut api_task)
            .await
            .is_err()
    {
        warn!("the API did not stop before the deadline; stopping the engine anyway");
        api_task.abort();
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(MIN_ENGINE_SHUTDOWN);
    engine.shutdown(left).await;
    info!("dagflow stopped");
    Ok(ExitCode::SUCCESS)
}

/// Runs `dagflow worker` until a signal, then lets running jobs finish.
pub async fn worker(config: WorkerConfig) -> Result<ExitCode, CliError> {
    let mut signals = Signals::install()?;
    if config.queues.0.is_empty() {
        warn!("no queues given: this worker will not run any job");
    }
    let engine: Engine = engine_builder(&config.redis, &config.queues)
        .worker_only()
        .build()
        .await
        .map_err(|e| startup_error(e, &config.redis, None))?;
    info!(queues = %config.queues, prefix = %config.redis.prefix, "dagflow worker is running");
    let signal = signals.next().await;
    info!(
        signal,
        "shutting down (send the signal again to exit at once)"
    );
    signals.force_exit_on_next();
    engine.shutdown(config.shutdown_timeout.0).await;
    info!("dagflow worker stopped");
    Ok(ExitCode::SUCCESS)
}

/// An engine builder with the Redis settings, the built-in handlers and `queues`.
fn engine_builder(redis: &RedisConfig, queues: &QueueList) -> EngineBuilder {
    let mut builder = Engine::builder()
        .redis_url(&redis.redis_url)
        .prefix(&redis.prefix)
        .lease(redis.lease.0);
    for (name, handler) in handlers::builtin() {
        builder = builder.handler_arc(name, handler);
    }
    for queue in &queues.0 {
        builder = builder.queue(&queue.name, queue.concurrency);
    }
    builder
}

/// Turns the two start-up failures an operator can fix at once (Redis down, data
/// dir in use) into errors that say so.
fn startup_error(
    error: EngineError,
    redis: &RedisConfig,
    data_dir: Option<&std::path::Path>,
) -> CliError {
    match (&error, data_dir) {
        (EngineError::Unavailable(message), _) => CliError::RedisUnreachable {
            url: redact(&redis.redis_url),
            message: message
                .strip_prefix("redis is unavailable: ")
                .unwrap_or(message)
                .to_owned(),
        },
        // sled's only way to say so: an I/O error "could not acquire lock on ...".
        (EngineError::Store(message), Some(dir)) if message.contains("acquire lock") => {
            CliError::DataDirLocked(dir.to_owned())
        }
        _ => CliError::Engine(error),
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// SIGINT and SIGTERM (Ctrl-C only, off Unix), as one stream.
struct Signals {
    /// Ctrl-C.
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    /// What service managers and `kill` send.
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening; from now on these signals no longer kill the process.
    fn install() -> Result<Signals, CliError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt()).map_err(CliError::Signal)?,
                terminate: signal(SignalKind::terminate()).map_err(CliError::Signal)?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The name of the next signal received.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }

    /// A second signal during the graceful shutdown exits at once: an operator who
    /// sends it does not want to wait out the deadline.
    fn force_exit_on_next(self) {
        let mut signals = self;
        tokio::spawn(async move {
            let signal = signals.next().await;
            warn!(signal, "second signal: exiting without waiting");
            std::process::exit(FORCED_EXIT);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
