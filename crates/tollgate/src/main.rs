//! `tollgate`: parse the command line, load the configuration, start telemetry, run the
//! command. Exit codes: 0 success (also after a graceful SIGTERM), 64 bad configuration or
//! usage, 1 a failure at run time.

use std::process::ExitCode;

use clap::Parser;
use tollgate::cli::{Cli, Command};
use tollgate::config::Config;
use tollgate_kit::shutdown::Shutdown;

/// EX_USAGE from sysexits.h: the configuration or the command line is wrong.
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    // One TLS crypto provider for every HTTPS client of the process (the provider-adapter's
    // upstream calls): ring, installed before anything builds a client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let config: Config = match tollgate_kit::config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => return fail(EXIT_BAD_CONFIG, &error),
    };
    match cli.command {
        Command::Serve { target } => serve(config, target),
        Command::Spend(args) => tollgate::commands::spend::run(args),
        Command::Budget(args) => tollgate::commands::budget::run(args),
        Command::Eval(args) => tollgate::commands::eval::run(args),
        Command::Cases(args) => tollgate::commands::cases::run(args),
        Command::Complete(args) => tollgate::commands::complete::run_complete(&config, args),
        Command::Route(args) => tollgate::commands::complete::run_route(&config, args),
        Command::Models(args) => tollgate::commands::models::run(&config, &args),
        Command::Cache(args) => tollgate::commands::cache::run(args, &config),
        Command::Tokenize(args) => tollgate::commands::tokenize::run(args, &config),
        Command::Tenant(args) => tollgate::commands::tenant::run(args, &config),
    }
}

fn serve(mut config: Config, target: tollgate::cli::Target) -> ExitCode {
    if target != tollgate::cli::Target::All {
        config.telemetry.service_name =
            format!("{}-{}", config.telemetry.service_name, target.name());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(1, &error),
    };
    // The OTLP exporter starts a runtime of its own, so telemetry starts and stops outside ours.
    let telemetry = match tollgate_kit::telemetry::init(&config.telemetry) {
        Ok(guard) => guard,
        Err(error) => return fail(EXIT_BAD_CONFIG, &error),
    };
    let result = runtime.block_on(async move {
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals().map_err(|e| (1, e.to_string()))?;
        let gateway = tollgate::serve::start(config, target, shutdown).await.map_err(|e| (1, e.to_string()))?;
        for service in &gateway.services {
            tracing::info!(target_service = service.target.name(), grpc = %service.grpc, metrics = %service.metrics, "service ready");
        }
        gateway.wait().await.map_err(|e| (1, e.to_string()))
    });
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => fail(code, &message),
    }
}

/// Reports a fatal error on stderr (the subscriber may not be installed yet) and exits.
fn fail(code: u8, error: &dyn std::fmt::Display) -> ExitCode {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "tollgate: {error}");
    ExitCode::from(code)
}
