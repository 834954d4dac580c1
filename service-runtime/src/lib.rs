//! What every program of the workspace does the same way: structured logs to stderr, a
//! future that completes on SIGTERM or SIGINT, one table of exit statuses and error messages
//! ([`cli`]), the wall clock ([`clock`]), atomic file
//! writes ([`files`]), image digests on threads of their own ([`digest`]), TLS with rustls ([`tls`]), the HTTP accept loop and client builder
//! that refuse clear text by default ([`http`]) and the certificates the programs make
//! ([`pki`]), and the memory allocator. Kept apart so the servers and agents stay thin
//! (linkerd's thin `main`).

pub mod body;
pub mod cli;
pub mod clock;
pub mod conn_memory;
pub mod digest;
pub mod direct;
pub mod durable;
pub mod files;
pub mod http;
pub mod idle;
pub mod metrics;
pub mod pki;
pub mod speed;
pub mod throttle;
pub mod tls;

use std::process::ExitCode;

/// Every program of the workspace allocates through mimalloc. Reading a large targets file
/// and verifying manifests make many small, short-lived allocations; with the system
/// allocator they were a third of the typed reading of a 10,000-target file (issue 15,
/// docs/BENCHMARKS.md). The C code linked in (SQLite, aws-lc) keeps the C library's
/// allocator: mimalloc's `override` feature moved it over too (about 15% more manifests per
/// second), but then glibc frees, during the start-up of a preloaded library such as
/// libfaketime, memory mimalloc never allocated, and every program crashed at start under
/// it (2026-12-05; docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An error and its causes in one line (`a: b: c`), each cause once: what reqwest, tonic
/// and rustls put in the chain (an unknown certificate issuer, a refused connection) is
/// what an operator needs to read.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), coloured only on a terminal and
/// without `NO_COLOR` (a log written to a file carries no escape codes).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(cli::colour_on_stderr())
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

/// Exit status 0, or the error's status ([`cli::Exit`]) after printing it on stderr.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    cli::finish(result)
}
