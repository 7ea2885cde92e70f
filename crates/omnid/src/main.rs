//! `omnid`: the omnichannel message-ingestion daemon.

mod auth;
mod channels;
mod commands;
mod consume;
mod event_log;
mod listener;
mod media;
mod outbound;
mod server;
mod settings;
mod sink;
mod supervisor;
mod tail;
mod threading;

/// mimalloc rather than glibc's malloc: threading allocates many small,
/// short-lived strings per event, and glibc spent a third of the embedded
/// store's time in malloc and free (docs/benchmarks.md, "Fourth look").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use omni_connector::{Ack, EventSender, EventSink, LogEntry, SendError};
use tokio_util::sync::CancellationToken;

use crate::settings::{Settings, Topics};

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
    Tail(tail::TailArgs),
    /// Print a customer's timeline from the threading store as JSON lines.
    Timeline(threading::TimelineArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run => run(&cli.config).await,
            Command::CheckConfig => check_config(&cli.config),
            Command::Tail(args) => tail::tail(&cli.config, args).await,
            Command::Timeline(args) => threading::timeline(&cli.config, args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// An event sink that stores nothing, for validating channel files without
/// opening the log.
struct DiscardSink;

impl EventSink for DiscardSink {
    fn submit(&self, _entry: LogEntry) -> Ack {
        Box::pin(async { Err(SendError::Closed) })
    }
}

fn check_config(config: &std::path::Path) -> anyhow::Result<std::process::ExitCode> {
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(std::process::ExitCode::FAILURE);
        }
    };
    let wiring = channels::Wiring {
        sender: EventSender::new(Arc::new(DiscardSink)),
        public_base_url: settings.http.public_base_url.clone(),
        state: None,
        attachments: None,
        media: None,
    };
    match channels::load(&settings.channels.dir, &channels::registry(), &wiring, None) {
        Ok(channels) => {
            let ids: Vec<_> = channels
                .values()
                .map(|c| format!("{} ({})", c.id, c.kind))
                .collect();
            println!(
                "ok: {} and {} channel(s): {}",
                config.display(),
                ids.len(),
                ids.join(", ")
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("error: {error}");
            }
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

async fn run(config: &std::path::Path) -> anyhow::Result<std::process::ExitCode> {
    let settings = Settings::load(config)?;
    omni_telemetry::init_tracing(settings.telemetry.log_format, &settings.telemetry.log_level)?;
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
        .ok();

    let log = event_log::open_log(&settings, event_log::LogUse::Daemon).await?;
    let topics = Topics::new(&settings.log.topic_prefix);
    let encoding = settings.log.encoding;
    let sender = EventSender::new(Arc::new(sink::LogSink::new(
        log.clone(),
        topics.clone(),
        encoding,
    )));
    let factories = channels::registry();
    let public = settings.http.public_base_url.clone();
    let state_path = settings.data_dir.join("channel-state.sqlite3");
    let state_store = omni_connector::SqliteStateStore::open(&state_path)
        .with_context(|| format!("cannot open channel state {}", state_path.display()))?;
    let media_queue = media::open(&settings)?;
    let wiring = channels::Wiring {
        sender,
        public_base_url: public.clone(),
        state: Some(Arc::new(state_store)),
        attachments: Some(Arc::new(omni_connector::FsAttachmentStore::new(
            settings.attachments_dir(),
        ))),
        media: Some(media_queue.clone()),
    };
    let initial =
        channels::load(&settings.channels.dir, &factories, &wiring, None).map_err(|errors| {
            let lines: Vec<_> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("invalid channel configuration:\n  {}", lines.join("\n  "))
        })?;
    omni_telemetry::events::ChannelsReloaded {
        channels: initial.len(),
        error: None,
    }
    .emit();

    let shutdown = CancellationToken::new();
    let health = supervisor::Health::default();
    let mut runners =
        supervisor::Supervisor::new(health.clone(), supervisor::RestartPolicy::default());
    runners.sync(&initial, &shutdown);
    let state = server::AppState::new(
        initial,
        settings.http.max_body_bytes,
        public.clone(),
        prometheus,
        health,
    );
    let media = media::start(
        &settings,
        media_queue,
        &state,
        Arc::new(omni_connector::FsAttachmentStore::new(
            settings.attachments_dir(),
        )),
        wiring.sender.clone(),
        &shutdown,
    );
    if let Some(token) = &settings.http.api_token {
        let token = token
            .resolve()
            .map_err(|e| anyhow::anyhow!("http.api_token: {e}"))?;
        let sink = sink::LogSink::new(log.clone(), topics.clone(), settings.log.encoding);
        state.enable_outbound_api(server::OutboundApi::new(auth::ApiToken::new(&token), sink));
    }
    let outbound = outbound::start(
        &settings,
        log.clone(),
        &wiring,
        state.live_channels(),
        &shutdown,
    );
    let threading_store = threading::Store::open(&settings).await?;
    state.enable_threading_api(threading_store.shared());
    let threading = threading::start(
        &settings,
        log.clone(),
        wiring.sender.clone(),
        threading_store,
        &shutdown,
    );

    let listener = tokio::net::TcpListener::bind(settings.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.http.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %settings.data_dir.display(), "listening");

    let reloader = tokio::spawn(reload_loop(
        settings.clone(),
        factories,
        wiring,
        state.clone(),
        runners,
        shutdown.clone(),
    ));

    let app = server::router(
        state.clone(),
        Duration::from_secs(settings.http.request_timeout_secs),
    );
    state.set_ready(true);
    let stop = shutdown.clone();
    let signal_state = state.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        signal_state.set_ready(false);
        stop.cancel();
    });
    crate::listener::serve(listener, app, &settings.http, shutdown.clone()).await;

    // In-flight requests are answered; now stop connectors and flush the log.
    let grace = Duration::from_secs(settings.shutdown_timeout_secs);
    if let Ok(Ok(mut runners)) = tokio::time::timeout(grace, reloader).await {
        runners.stop_all(grace).await;
    }
    outbound.stop(grace).await;
    media.stop(grace).await;
    threading.stop(grace).await;
    match tokio::time::timeout(grace, log.close()).await {
        Ok(Ok(())) => tracing::info!("event log closed, bye"),
        Ok(Err(error)) => tracing::error!(error = %error, "event log did not close cleanly"),
        Err(_) => tracing::error!("event log did not close within the shutdown timeout"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Reloads channel files when the directory changes (polled) or on SIGHUP.
/// A rejected reload keeps the previous channels running.
async fn reload_loop(
    settings: Settings,
    factories: Vec<Box<dyn omni_connector::ConnectorFactory>>,
    wiring: channels::Wiring,
    state: server::AppState,
    mut runners: supervisor::Supervisor,
    shutdown: CancellationToken,
) -> supervisor::Supervisor {
    use tokio::signal::unix::{SignalKind, signal};
    let dir = settings.channels.dir.clone();
    let mut hangup = signal(SignalKind::hangup()).ok();
    let interval = Duration::from_secs(settings.channels.reload_interval_secs.max(1));
    let polling = settings.channels.reload_interval_secs > 0;
    let mut stamp = channels::directory_stamp(&dir);
    loop {
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return runners,
            _ = tokio::time::sleep(interval), if polling => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let current = channels::directory_stamp(&dir);
        if !forced && current == stamp {
            continue;
        }
        stamp = current;
        let previous = state.channels();
        let reuse = if forced {
            None
        } else {
            Some(previous.as_ref())
        };
        match channels::load(&dir, &factories, &wiring, reuse) {
            Ok(loaded) => {
                omni_telemetry::events::ChannelsReloaded {
                    channels: loaded.len(),
                    error: None,
                }
                .emit();
                runners.sync(&loaded, &shutdown);
                state.replace_channels(loaded);
            }
            Err(errors) => {
                let text: Vec<_> = errors.iter().map(ToString::to_string).collect();
                omni_telemetry::events::ChannelsReloaded {
                    channels: previous.len(),
                    error: Some(&text.join("; ")),
                }
                .emit();
            }
        }
    }
}
