use std::io::IsTerminal;

use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::{FilterExt as _, LevelFilter, filter_fn},
    fmt,
    prelude::*,
};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Pretty when stderr is a terminal, JSON otherwise: people read
    /// terminals, machines read everything else.
    #[default]
    Auto,
    /// Human-readable, coloured.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = TelemetryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "pretty" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            other => Err(TelemetryError::UnknownFormat(other.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("unknown log format `{0}`, expected one of auto, pretty, json")]
    UnknownFormat(String),
    #[error("invalid log filter `{filter}`")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
    /// The OTLP exporter's settings, or the exporter itself.
    #[error("otlp trace export: {0}")]
    Otlp(String),
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `filter`
/// so an operator can raise verbosity without editing config.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    install(format, filter, None)
}

/// [`init_tracing`], and the export of spans over OTLP when `otlp` is set.
/// Log lines stay as they are either way: exported spans never show in
/// them, and log lines are not exported. Call it inside the tokio runtime
/// that is to carry the export requests; flush with
/// [`OtlpExporter::shutdown`](crate::OtlpExporter::shutdown) at exit.
#[cfg(feature = "otlp")]
pub fn init_tracing_with_otlp(
    format: LogFormat,
    filter: &str,
    otlp: Option<&crate::OtlpConfig>,
) -> Result<Option<crate::OtlpExporter>, TelemetryError> {
    let Some(config) = otlp else {
        install(format, filter, None)?;
        return Ok(None);
    };
    let (tracer, exporter) = crate::otlp::tracer(config)?;
    install(format, filter, Some(otel_layer(tracer)))?;
    Ok(Some(exporter))
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The layer that turns spans of [`trace::TARGET`](crate::trace::TARGET),
/// and those only, into OpenTelemetry spans.
#[cfg(feature = "otlp")]
fn otel_layer<T>(tracer: T) -> BoxedLayer
where
    T: opentelemetry::trace::Tracer + Send + Sync + 'static,
    T::Span: Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // What a span is, is in its name and fields; where in the source
        // and on which thread would only make every span larger.
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_filter(
            filter_fn(|meta| {
                meta.target() == crate::trace::TARGET && *meta.level() <= tracing::Level::INFO
            })
            // So `debug!` and `trace!` stay one level check where the log
            // filter says `info`.
            .with_max_level_hint(LevelFilter::INFO),
        )
        .boxed()
}

fn install(
    format: LogFormat,
    filter: &str,
    traces: Option<BoxedLayer>,
) -> Result<(), TelemetryError> {
    tracing_subscriber::registry()
        .with(layers(format, filter, std::io::stderr, traces)?)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)
}

/// The log layer, filtered by `filter` (or `RUST_LOG`), and `traces`. Each
/// filters for itself, so spans meant for export cost nothing when no
/// layer exports them, whatever the log filter lets through.
fn layers<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
    traces: Option<BoxedLayer>,
) -> Result<Vec<BoxedLayer>, TelemetryError>
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => from_env,
        _ => filter.to_owned(),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|source| TelemetryError::Filter {
        filter: filter.clone(),
        source,
    })?;
    // The level bound is the log filter's alone (a combination without a
    // hint on either side would have none, and every `debug!` would then
    // get past the first check).
    let logged = env_filter.and(
        filter_fn(|meta| meta.target() != crate::trace::TARGET)
            .with_max_level_hint(LevelFilter::TRACE),
    );
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let logs = if json {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(writer)
            .with_filter(logged)
            .boxed()
    } else {
        fmt::layer().with_writer(writer).with_filter(logged).boxed()
    };
    Ok(std::iter::once(logs).chain(traces).collect())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::trace::TARGET;

    /// The tests that install a subscriber take turns: tracing caches each
    /// callsite's interest from every subscriber alive at its first use,
    /// so while the exporter test's subscriber (which wants trace spans)
    /// was alive, the other test's trace span could come out enabled.
    static SUBSCRIBERS: Mutex<()> = Mutex::new(());

    fn one_subscriber_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        SUBSCRIBERS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Log lines written by the layers under test.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn subscriber(lines: &Lines, traces: Option<BoxedLayer>) -> impl tracing::Subscriber {
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(layers(LogFormat::Json, "info", move || writer.clone(), traces).unwrap());
        // `debug!` and `trace!` stop at the first check, as with the log
        // filter alone.
        assert_eq!(
            tracing::Subscriber::max_level_hint(&subscriber),
            Some(LevelFilter::INFO)
        );
        subscriber
    }

    #[test]
    fn without_an_exporter_trace_spans_are_disabled_and_logs_unchanged() {
        let _turn = one_subscriber_at_a_time();
        let lines = Lines::default();
        tracing::subscriber::with_default(subscriber(&lines, None), || {
            let evaluated = std::cell::Cell::new(false);
            let span = tracing::info_span!(
                target: TARGET,
                "webhook",
                field = { evaluated.set(true); 1 }
            );
            assert!(span.is_disabled());
            assert!(
                !evaluated.get(),
                "a disabled span's fields are never evaluated"
            );
            let _entered = span.enter();
            let logged = tracing::info_span!("logged");
            assert!(!logged.is_disabled(), "other spans still reach the log");
            let _logged = logged.enter();
            tracing::info!(channel = "shop", "stored");
            tracing::debug!("below the filter");
        });
        let text = lines.text();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "stored");
        assert_eq!(line["channel"], "shop");
        assert_eq!(line["spans"], serde_json::json!([{ "name": "logged" }]));
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    #[cfg(feature = "otlp")]
    mod otlp {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

        use super::*;
        use crate::trace::{TraceContext, add_link, set_parent};

        /// Keeps what it is given.
        #[derive(Debug, Clone, Default)]
        struct Collected(Arc<Mutex<Vec<SpanData>>>);

        impl SpanExporter for Collected {
            async fn export(
                &self,
                batch: Vec<SpanData>,
            ) -> opentelemetry_sdk::error::OTelSdkResult {
                self.0.lock().unwrap().extend(batch);
                Ok(())
            }
        }

        #[test]
        fn trace_spans_are_exported_linked_and_kept_out_of_the_log() {
            let _turn = one_subscriber_at_a_time();
            let collected = Collected::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(collected.clone())
                .build();
            let lines = Lines::default();
            let traces = otel_layer(provider.tracer("test"));
            let upstream =
                TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                    .unwrap();
            let [request, append, batch] =
                tracing::subscriber::with_default(subscriber(&lines, Some(traces)), || {
                    let request = tracing::info_span!(target: TARGET, "webhook", channel = "shop");
                    add_link(&request, &upstream);
                    let append = request.in_scope(|| {
                        let append = tracing::info_span!(target: TARGET, "log.append");
                        append.in_scope(|| tracing::info!("appended"));
                        append
                    });
                    let append_context = TraceContext::of(&append).unwrap();
                    let batch =
                        tracing::info_span!(target: TARGET, parent: None, "threading.event");
                    set_parent(&batch, &append_context);
                    let contexts =
                        [&request, &append, &batch].map(|s| TraceContext::of(s).unwrap());
                    drop((request, append, batch));
                    tracing::info!("after");
                    contexts
                });
            let spans = collected.0.lock().unwrap().clone();
            let by_name = |name: &str| {
                spans
                    .iter()
                    .find(|s| s.name == name)
                    .unwrap_or_else(|| panic!("no {name} in {spans:?}"))
            };
            let (webhook, log_append, event) = (
                by_name("webhook"),
                by_name("log.append"),
                by_name("threading.event"),
            );
            assert_eq!(
                webhook.span_context.span_id().to_string(),
                request.span_id()
            );
            assert_eq!(
                webhook
                    .links
                    .iter()
                    .map(|l| l.span_context.span_id().to_string())
                    .collect::<Vec<_>>(),
                ["00f067aa0ba902b7"]
            );
            assert!(
                webhook
                    .attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "channel")
            );
            assert_eq!(log_append.parent_span_id.to_string(), request.span_id());
            assert_eq!(
                log_append.span_context.span_id().to_string(),
                append.span_id()
            );
            assert_eq!(event.parent_span_id.to_string(), append.span_id());
            assert!(event.parent_span_is_remote);
            assert_eq!(event.span_context.span_id().to_string(), batch.span_id());
            for context in [&append, &batch] {
                assert_eq!(context.trace_id(), request.trace_id());
            }
            assert_ne!(
                request.trace_id(),
                upstream.trace_id(),
                "a link starts no trace"
            );
            // The log saw its lines, and no exported span.
            let text = lines.text();
            assert_eq!(text.lines().count(), 2, "{text}");
            assert!(
                !text.contains("log.append") && !text.contains("webhook"),
                "{text}"
            );
        }
    }
}
