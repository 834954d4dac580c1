use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::init_tracing();
    let cli: image_repo::cli::Cli = service_runtime::cli::parse();
    service_runtime::exit_code(image_repo::cli::run(cli).await)
}
