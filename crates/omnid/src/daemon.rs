//! The daemon assembled: the event log, the channels and their supervised
//! loops, the outbound dispatcher, deferred media, threading, and the HTTP
//! server, started in order and stopped in reverse, each finishing what it
//! has in hand.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use omni_connector::{ConnectorFactory, EventSender};
use omni_telemetry::emit;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    Error, attachment_gc, auth, channels, event_log,
    events::{ChannelsReloaded, ReloadMetrics, RulesNameUnknownChannels, RulesReloaded},
    media, outbound, retention, rules, seen_prune, server,
    settings::{Settings, Topics},
    sink, supervisor, threading,
};

/// A running daemon. It serves until [`Daemon::shutdown`] (the binary
/// calls it on SIGTERM or SIGINT), then stops in order; [`Daemon::stopped`]
/// waits for that.
pub struct Daemon {
    addr: SocketAddr,
    state: server::AppState,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Opens everything `settings` name, builds the channels with
    /// `registry` (the kinds channel files may use: the built-in ones are
    /// [`channels::registry`], a test or an embedding may add its own) and
    /// starts serving. Returns once the HTTP listener is bound.
    /// `prometheus` renders `/metrics` (none: it answers 404).
    pub async fn start(
        settings: Settings,
        registry: Vec<Box<dyn ConnectorFactory>>,
        prometheus: Option<PrometheusHandle>,
    ) -> Result<Daemon, Error> {
        let opened = event_log::open(&settings, event_log::LogUse::Daemon)
            .await
            .map_err(Error::failed)?;
        let log = opened.log;
        let topics = Topics::new(&settings.log.topic_prefix);
        let encoding = settings.log.encoding;
        let attachment_store = omni_connector::FsAttachmentStore::new(settings.attachments_dir());
        let sender = EventSender::new(Arc::new(
            sink::LogSink::new(log.clone(), topics.clone(), encoding)
                .with_attachments(attachment_store.clone()),
        ));
        let factories = registry;
        let public = settings.http.public_base_url.clone();
        let state_path = settings.data_dir.join("channel-state.sqlite3");
        let state_store: Arc<dyn omni_connector::StateStore> = Arc::new(
            omni_connector::SqliteStateStore::open(&state_path)
                .with_context(|| format!("cannot open channel state {}", state_path.display()))
                .map_err(Error::failed)?,
        );
        let media_queue = media::open(&settings).map_err(Error::failed)?;
        let wiring = channels::Wiring {
            sender,
            public_base_url: public.clone(),
            state: Some(state_store.clone()),
            attachments: Some(Arc::new(omni_connector::FsAttachmentStore::new(
                settings.attachments_dir(),
            ))),
            media: Some(media_queue.clone()),
        };
        let initial = channels::load(&settings.channels.dir, &factories, &wiring, None)
            .map_err(Error::Channels)?;
        let reloads = ReloadMetrics::register("channels");
        emit!(ChannelsReloaded {
            channels: initial.len(),
            error: None,
        } => &reloads);
        let book = rules::load(&settings.rules.dir).map_err(Error::Rules)?;
        let rule_reloads = ReloadMetrics::register("rules");
        emit!(RulesReloaded {
            rule_sets: book.rule_sets().len(),
            rules: rules::rule_count(&book),
            error: None,
        } => &rule_reloads);
        warn_unknown_channels(&book, &initial);
        let rules = rules::Rules::new(book);

        let shutdown = CancellationToken::new();
        let seen_pruner = seen_prune::start(&settings, state_store, &shutdown);
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
                .map_err(|e| Error::Failed(format!("http.api_token: {e}")))?;
            let sink = sink::LogSink::new(log.clone(), topics.clone(), settings.log.encoding)
                .with_attachments(attachment_store.clone());
            state.enable_outbound_api(server::OutboundApi::new(auth::ApiToken::new(&token), sink));
        }
        let outbound = outbound::start(
            &settings,
            log.clone(),
            &wiring,
            state.live_channels(),
            &shutdown,
        );
        let threading_store = threading::Store::open(&settings)
            .await
            .map_err(Error::failed)?;
        state.enable_threading_api(threading_store.shared());
        let threading = threading::start(
            &settings,
            log.clone(),
            wiring.sender.clone(),
            threading_store,
            rules.clone(),
            state.live_channels(),
            &shutdown,
        );
        // The consumers this daemon runs: retention never removes what they
        // have not committed.
        let mut consumers = vec![(topics.outbound.clone(), outbound::GROUP)];
        if settings.threading.enabled {
            consumers.extend(threading::consumer_groups(&topics));
        }
        let attachment_gc = attachment_gc::start(&settings, opened.embedded.clone(), &shutdown);
        let retention = opened
            .embedded
            .map(|embedded| retention::start(&settings, embedded, &consumers, &shutdown));

        let listener = tokio::net::TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.http.listen))
            .map_err(Error::failed)?;
        let addr = listener
            .local_addr()
            .context("the listener has no address")
            .map_err(Error::failed)?;
        tracing::info!(%addr, data_dir = %settings.data_dir.display(), "listening");

        let reloader = tokio::spawn(reload_loop(
            settings.clone(),
            factories,
            wiring,
            state.clone(),
            runners,
            Reloadable {
                channels: reloads,
                rules: rules.clone(),
                rule_reloads,
            },
            shutdown.clone(),
        ));

        let app = server::router(
            state.clone(),
            Duration::from_secs(settings.http.request_timeout_secs),
        );
        state.set_ready(true);
        let serving = shutdown.clone();
        let task = tokio::spawn(async move {
            crate::listener::serve(listener, app, &settings.http, serving).await;

            // In-flight requests are answered; now stop connectors and flush the log.
            let grace = Duration::from_secs(settings.shutdown_timeout_secs);
            if let Ok(Ok(mut runners)) = tokio::time::timeout(grace, reloader).await {
                runners.stop_all(grace).await;
            }
            if let Some(pruner) = seen_pruner {
                pruner.stop(grace).await;
            }
            outbound.stop(grace).await;
            media.stop(grace).await;
            threading.stop(grace).await;
            if let Some(retention) = retention {
                retention.stop(grace).await;
            }
            attachment_gc.stop(grace).await;
            match tokio::time::timeout(grace, log.close()).await {
                Ok(Ok(())) => tracing::info!("event log closed, bye"),
                Ok(Err(error)) => {
                    tracing::error!(error = %error, "event log did not close cleanly")
                }
                Err(_) => tracing::error!("event log did not close within the shutdown timeout"),
            }
        });
        Ok(Daemon {
            addr,
            state,
            shutdown,
            task,
        })
    }

    /// Where the HTTP server listens (an `http.listen` port of 0 picks a
    /// free one).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Begins a graceful shutdown: `/readyz` turns 503, in-flight requests
    /// are answered, then connectors, dispatcher, media, threading and the
    /// log are stopped, each within `shutdown_timeout_secs`.
    pub fn shutdown(&self) {
        tracing::info!("shutting down: finishing in-flight requests");
        self.state.set_ready(false);
        self.shutdown.cancel();
    }

    /// Waits until the daemon has stopped (after [`Daemon::shutdown`]).
    pub async fn stopped(self) {
        if let Err(error) = self.task.await {
            tracing::error!(error = %error, "the daemon's shutdown did not finish");
        }
    }
}

/// `omnid run`: loads the config at `config` (and `OMNID__*` overrides),
/// installs logging and the metrics recorder, and runs the daemon with the
/// channel kinds of `registry` until SIGTERM or SIGINT.
pub async fn run(config: &Path, registry: Vec<Box<dyn ConnectorFactory>>) -> Result<(), Error> {
    let settings = Settings::load(config)?;
    let otlp = settings.telemetry.otlp.exporter();
    let exporter = omni_telemetry::init_tracing_with_otlp(
        settings.telemetry.log_format,
        &settings.telemetry.log_level,
        otlp.as_ref(),
    )
    .map_err(|e| Error::Failed(e.to_string()))?;
    if let Some(otlp) = &otlp {
        tracing::info!(
            endpoint = %otlp.traces_url(),
            service = %otlp.service_name,
            sampling_ratio = otlp.sampling_ratio,
            "exporting traces over otlp"
        );
    }
    // Response times are minutes to days: buckets rather than the
    // default summary, so they aggregate across instances.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                omni_telemetry::names::SLA_RESPONSE_SECONDS.to_owned(),
            ),
            &[
                60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0,
            ],
        )
        .map_err(|e| tracing::warn!(error = %e, "SLA response buckets not set"))
        .unwrap_or_default()
        .install_recorder()
        .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
        .ok();
    let daemon = Daemon::start(settings, registry, prometheus).await?;
    wait_for_signal().await;
    daemon.shutdown();
    daemon.stopped().await;
    if let (Some(exporter), Some(otlp)) = (exporter, otlp) {
        // Last, so the spans of the shutdown's own work go too. It blocks
        // while it sends.
        let flushed = tokio::task::spawn_blocking(move || exporter.shutdown(otlp.timeout)).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(error = %error, "traces not all exported at shutdown");
        }
    }
    Ok(())
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

/// What the reload loop keeps current besides the channels.
struct Reloadable {
    channels: ReloadMetrics,
    rules: rules::Rules,
    rule_reloads: ReloadMetrics,
}

/// Reloads channel files and rule files when their directory changes
/// (polled) or on SIGHUP. Each kind is all or nothing on its own: a
/// rejected reload keeps the previous channels, or the previous rules.
async fn reload_loop(
    settings: Settings,
    factories: Vec<Box<dyn ConnectorFactory>>,
    wiring: channels::Wiring,
    state: server::AppState,
    mut runners: supervisor::Supervisor,
    reloadable: Reloadable,
    shutdown: CancellationToken,
) -> supervisor::Supervisor {
    use tokio::signal::unix::{SignalKind, signal};
    let dir = settings.channels.dir.clone();
    let rules_dir = settings.rules.dir.clone();
    let mut hangup = signal(SignalKind::hangup()).ok();
    let interval = Duration::from_secs(settings.channels.reload_interval_secs.max(1));
    let polling = settings.channels.reload_interval_secs > 0;
    let mut stamp = channels::directory_stamp(&dir);
    let mut rules_stamp = channels::directory_stamp(&rules_dir);
    loop {
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return runners,
            _ = tokio::time::sleep(interval), if polling => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let current = channels::directory_stamp(&dir);
        if forced || current != stamp {
            stamp = current;
            reload_channels(
                &dir,
                &factories,
                &wiring,
                &state,
                &mut runners,
                &reloadable.channels,
                forced,
                &shutdown,
            );
        }
        let current = channels::directory_stamp(&rules_dir);
        if forced || current != rules_stamp {
            rules_stamp = current;
            match rules::load(&rules_dir) {
                Ok(book) => {
                    emit!(RulesReloaded {
                        rule_sets: book.rule_sets().len(),
                        rules: rules::rule_count(&book),
                        error: None,
                    } => &reloadable.rule_reloads);
                    warn_unknown_channels(&book, &state.channels());
                    reloadable.rules.replace(book);
                }
                Err(errors) => {
                    let text: Vec<_> = errors.iter().map(ToString::to_string).collect();
                    emit!(RulesReloaded {
                        rule_sets: reloadable.rules.current().rule_sets().len(),
                        rules: rules::rule_count(&reloadable.rules.current()),
                        error: Some(&text.join("; ")),
                    } => &reloadable.rule_reloads);
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn reload_channels(
    dir: &std::path::Path,
    factories: &[Box<dyn ConnectorFactory>],
    wiring: &channels::Wiring,
    state: &server::AppState,
    runners: &mut supervisor::Supervisor,
    reloads: &ReloadMetrics,
    forced: bool,
    shutdown: &CancellationToken,
) {
    let previous = state.channels();
    let reuse = if forced {
        None
    } else {
        Some(previous.as_ref())
    };
    match channels::load(dir, factories, wiring, reuse) {
        Ok(loaded) => {
            emit!(ChannelsReloaded {
                channels: loaded.len(),
                error: None,
            } => reloads);
            runners.sync(&loaded, shutdown);
            state.replace_channels(loaded);
        }
        Err(errors) => {
            let text: Vec<_> = errors.iter().map(ToString::to_string).collect();
            emit!(ChannelsReloaded {
                channels: previous.len(),
                error: Some(&text.join("; ")),
            } => reloads);
        }
    }
}

/// Rules naming channels that are not configured never match; `omnid
/// check-config` refuses them, the running daemon only warns (see
/// [`RulesNameUnknownChannels`]).
fn warn_unknown_channels(book: &omni_rules::RuleBook, channels: &channels::ChannelSet) {
    let unknown = book.unknown_channels(|id| channels.contains_key(id));
    if !unknown.is_empty() {
        let text: Vec<_> = unknown.iter().map(ToString::to_string).collect();
        emit!(RulesNameUnknownChannels {
            problems: &text.join("; "),
        });
    }
}
