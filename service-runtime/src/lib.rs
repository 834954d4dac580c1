//! What every program of the workspace does the same way: structured logs to stderr, a
//! future that completes on SIGTERM or SIGINT, one exit status convention, atomic file
//! writes ([`files`]), TLS with rustls ([`tls`]) and the certificates the programs make
//! ([`pki`]). Kept apart so the servers and agents stay thin (linkerd's thin `main`).

pub mod files;
pub mod pki;
pub mod tls;

use std::process::ExitCode;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Completes when the process receives SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
}

/// Exit status 0, or 1 after printing the error and its causes on stderr.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
