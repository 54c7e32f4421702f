//! `dagflow schedule create|list|get|pause|resume|delete|runs`: the schedules of a
//! server, over its REST API.
//!
//! What they print is for scripts: the schedule (or the list, or the runs) as
//! pretty JSON on stdout; `delete` prints the name it deleted.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};

use super::{encode_segment, error_chain, print_pretty, read_spec, server_error, Client};
use crate::cli::CliError;
use crate::config::ClientConfig;

/// `dagflow schedule`.
#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ScheduleCommand,
}

/// The schedule subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule that starts the flow in `--flow` (a JSON file, `-` for
    /// stdin) on a cron timetable; prints it with its next fire time.
    Create(CreateArgs),
    /// Print every schedule with its next fire time.
    List(ListArgs),
    /// Print one schedule.
    Get(NameArgs),
    /// Stop a schedule from firing until it is resumed.
    Pause(NameArgs),
    /// Let a paused schedule fire again, from its next tick.
    Resume(NameArgs),
    /// Delete a schedule (the flows it started stay).
    Delete(NameArgs),
    /// Print a schedule's last runs, newest first, with each flow's status.
    Runs(NameArgs),
}

/// A command about one schedule.
#[derive(Debug, Clone, Args)]
pub struct NameArgs {
    /// The schedule's name.
    pub name: String,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientConfig,
}

/// `dagflow schedule list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Server and token.
    #[command(flatten)]
    pub client: ClientConfig,
}

/// `dagflow schedule create`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Unique name: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// Five fields (`*/5 * * * *`), or six with seconds first (`*/10 * * * * *`).
    #[arg(long)]
    pub cron: String,
    /// The flow spec each tick starts: a JSON file, or `-` for stdin.
    #[arg(long)]
    pub flow: PathBuf,
    /// IANA time zone the expression is read in.
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// What a tick does while the previous run is still going.
    #[arg(long, value_enum, default_value_t = OverlapArg::Skip)]
    pub overlap: OverlapArg,
    /// Which ticks missed while the server was down are fired.
    #[arg(long, value_enum, default_value_t = CatchUpArg::Latest)]
    pub catch_up: CatchUpArg,
    /// Create it paused.
    #[arg(long)]
    pub paused: bool,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientConfig,
}

/// `--overlap`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OverlapArg {
    /// Start nothing while the previous run is going.
    Skip,
    /// Start anyway.
    Allow,
    /// Cancel the previous run, then start.
    CancelPrevious,
}

/// `--catch-up`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CatchUpArg {
    /// Fire none of the missed ticks.
    None,
    /// Fire the most recent one.
    Latest,
    /// Fire all of them (at most 100).
    All,
}

/// Runs a `dagflow schedule` command.
pub async fn run(args: ScheduleArgs) -> Result<ExitCode, CliError> {
    let one = |name: &str| format!("/schedules/{}", encode_segment(name));
    let answer = match args.command {
        ScheduleCommand::Create(create) => {
            let client = Client::new(&create.client)?;
            let flow_bytes = read_spec(&create.flow).await?;
            let flow: Value = serde_json::from_slice(&flow_bytes).map_err(|e| {
                CliError::Protocol(format!("{} is not JSON: {e}", create.flow.display()))
            })?;
            let body = json!({
                "name": create.name,
                "cron": create.cron,
                "timezone": create.timezone,
                "flow": flow,
                "overlap": match create.overlap {
                    OverlapArg::Skip => "skip",
                    OverlapArg::Allow => "allow",
                    OverlapArg::CancelPrevious => "cancelPrevious",
                },
                "catchUp": match create.catch_up {
                    CatchUpArg::None => "none",
                    CatchUpArg::Latest => "latest",
                    CatchUpArg::All => "all",
                },
                "paused": create.paused,
            });
            let request = client
                .http
                .post(client.url("/schedules"))
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
            client.send(request, "/schedules").await?
        }
        ScheduleCommand::List(list) => {
            let client = Client::new(&list.client)?;
            client
                .send(client.http.get(client.url("/schedules")), "/schedules")
                .await?
        }
        ScheduleCommand::Get(args) => {
            let client = Client::new(&args.client)?;
            let path = one(&args.name);
            client
                .send(client.http.get(client.url(&path)), &path)
                .await?
        }
        ScheduleCommand::Pause(args) => set_paused(&args, &one(&args.name), true).await?,
        ScheduleCommand::Resume(args) => set_paused(&args, &one(&args.name), false).await?,
        ScheduleCommand::Delete(args) => {
            let client = Client::new(&args.client)?;
            let path = one(&args.name);
            let url = client.url(&path);
            let http_error = |e: reqwest::Error| CliError::Http {
                url: url.clone(),
                message: error_chain(&e.without_url()),
            };
            let response = client
                .http
                .delete(client.url(&path))
                .send()
                .await
                .map_err(http_error)?;
            let status = response.status();
            if !status.is_success() {
                let body = response.bytes().await.map_err(http_error)?;
                return Err(server_error(status.as_u16(), &body));
            }
            println!("{}", args.name);
            return Ok(ExitCode::SUCCESS);
        }
        ScheduleCommand::Runs(args) => {
            let client = Client::new(&args.client)?;
            let path = format!("{}/runs", one(&args.name));
            client
                .send(client.http.get(client.url(&path)), &path)
                .await?
        }
    };
    print_pretty(&answer);
    Ok(ExitCode::SUCCESS)
}

async fn set_paused(args: &NameArgs, path: &str, paused: bool) -> Result<Value, CliError> {
    let client = Client::new(&args.client)?;
    let request = client
        .http
        .patch(client.url(path))
        .header(CONTENT_TYPE, "application/json")
        .body(json!({ "paused": paused }).to_string());
    client.send(request, path).await
}
