use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::init_tracing();
    let cli = director::cli::Cli::parse();
    service_runtime::exit_code(director::cli::run(cli).await)
}
