//! `dagflow bench` without the `dagflow` binary: the same flags, the same JSON
//! lines. `cargo run --release --example bench -- diamond --width 10 --flows 2000`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match dagflow::bench::BenchArgs::try_parse_from(std::env::args_os()) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    match dagflow::bench::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
