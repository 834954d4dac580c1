use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::init_tracing();
    let cli = image_repo::cli::Cli::parse();
    service_runtime::exit_code(image_repo::cli::run(cli).await)
}
