//! `omnid`: the command line of the omnichannel message-ingestion daemon.
//! Everything it runs lives in the `omnid` library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: threading allocates many small,
/// short-lived strings per event, and glibc spent a third of the embedded
/// store's time in malloc and free (docs/benchmarks.md, "Fourth look").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "omnid",
    version,
    about = "Omnichannel message-ingestion daemon"
)]
struct Cli {
    /// The daemon's config file; `OMNID__*` environment variables override
    /// its keys (`OMNID__HTTP__LISTEN=0.0.0.0:8080`).
    #[arg(
        long,
        short,
        global = true,
        env = "OMNID_CONFIG",
        default_value = "config/omnid.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run,
    /// Validate the daemon config and every channel file, then exit:
    /// 0 when valid, 1 with one line per problem otherwise.
    CheckConfig,
    /// Print records of a topic as JSON lines.
    Tail(omnid::TailArgs),
    /// Print a customer's timeline from the threading store as JSON lines.
    Timeline(omnid::TimelineArgs),
    /// Ask the running daemon's /healthz (or /readyz): exit 0 on 200, 1
    /// with one line saying why otherwise. For container health checks.
    Health(omnid::HealthArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run => omnid::run(&cli.config, omnid::channels::registry())
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Tail(args) => omnid::tail(&cli.config, args).await,
            Command::Timeline(args) => omnid::timeline(&cli.config, args).await,
            Command::CheckConfig => Ok(check_config(&cli.config)),
            Command::Health(args) => omnid::health(&cli.config, args).await.map(|line| {
                println!("{line}");
                ExitCode::SUCCESS
            }),
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `ok: ...` and every channel, or one line per problem.
fn check_config(config: &std::path::Path) -> ExitCode {
    match omnid::check_config(config, &omnid::channels::registry()) {
        Ok(checked) => {
            let ids: Vec<_> = checked
                .channels
                .iter()
                .map(|(id, kind)| format!("{id} ({kind})"))
                .collect();
            println!(
                "ok: {} and {} channel(s): {}",
                config.display(),
                ids.len(),
                ids.join(", ")
            );
            let sets: Vec<_> = checked
                .rule_sets
                .iter()
                .map(|(name, rules)| format!("{name} ({rules} rules)"))
                .collect();
            if !sets.is_empty() {
                println!("ok: {} rule set(s): {}", sets.len(), sets.join(", "));
            }
            ExitCode::SUCCESS
        }
        Err(omnid::Error::Channels(errors)) => {
            for error in &errors {
                eprintln!("error: {error}");
            }
            ExitCode::FAILURE
        }
        Err(omnid::Error::Rules(errors)) => {
            for error in &errors {
                eprintln!("error: {error}");
            }
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
