//! Subcommands besides `serve`: client commands talk gRPC to a running service at `--addr`;
//! `eval` runs in process and needs no server.

pub mod budget;
pub mod cache;
pub mod cases;
pub mod complete;
pub mod eval;
pub mod models;
pub mod spend;
pub mod tenant;
pub mod tokenize;

/// Runs a client command on a small runtime of its own; errors go to stderr with exit code 1.
pub(crate) fn block_on<F>(future: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    use std::io::Write;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "tollgate: {error}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(future) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let message = match error.downcast_ref::<tonic::Status>() {
                Some(status) => format!("{:?}: {}", status.code(), status.message()),
                None => error.to_string(),
            };
            let _ = writeln!(std::io::stderr(), "tollgate: {message}");
            std::process::ExitCode::from(1)
        }
    }
}
