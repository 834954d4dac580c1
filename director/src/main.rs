use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::init_tracing();
    let cli: director::cli::Cli = service_runtime::cli::parse();
    service_runtime::exit_code(director::cli::run(cli).await)
}
