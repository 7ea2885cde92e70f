//! What the trace spans cost one webhook request: the `webhook` span with
//! its fields, entered around the work, the `log.append` span inside it
//! and its `traceparent` for the record, both closed, with OTLP export off
//! (the daemon's default) and on (spans handed to the SDK's batch
//! processor, whose exporter here drops them, so the network is not
//! measured). Beside them, the request without any span: the floor.
//!
//! The subscribers are composed as `init_tracing_with_otlp` composes them:
//! the JSON log layer filtered by `info` and kept off the trace target, and
//! the OpenTelemetry layer on the trace target only.
//!
//! `cargo bench -p omni-telemetry --features otlp --bench spans`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use omni_telemetry::trace::{TARGET, TraceContext};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt as _, LevelFilter, filter_fn},
    fmt,
    prelude::*,
};

/// Takes spans and drops them.
#[derive(Debug)]
struct Dropped;

impl SpanExporter for Dropped {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

fn logs() -> impl tracing_subscriber::Layer<tracing_subscriber::Registry> {
    fmt::layer().json().with_writer(std::io::sink).with_filter(
        EnvFilter::new("info")
            .and(filter_fn(|m| m.target() != TARGET).with_max_level_hint(LevelFilter::TRACE)),
    )
}

/// The spans of one request, as the daemon makes them.
fn request(channel: &str) -> Option<String> {
    let webhook = tracing::info_span!(
        target: TARGET,
        parent: None,
        "webhook",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/webhooks/{channel_id}",
        omnid.channel = %channel,
        http.response.status_code = tracing::field::Empty,
    );
    let traceparent = webhook.in_scope(|| {
        let append = tracing::info_span!(
            target: TARGET,
            "log.append",
            otel.kind = "producer",
            messaging.destination.name = "omni.inbound.v1",
            messaging.message.id = "2f1b6c0e-6b7e-5d7c-9a51-0c1f3e4d5a6b",
            messaging.kafka.offset = tracing::field::Empty,
        );
        let traceparent = TraceContext::of(&append).map(|c| c.traceparent());
        append.in_scope(|| black_box(&traceparent));
        append.record("messaging.kafka.offset", 42);
        traceparent
    });
    webhook.record("http.response.status_code", 200);
    traceparent
}

fn spans(c: &mut Criterion) {
    let mut group = c.benchmark_group("spans per webhook request");
    group.bench_function("no spans (floor)", |b| {
        b.iter(|| black_box(black_box("shop-api").len()))
    });
    let off = tracing_subscriber::registry().with(logs());
    tracing::subscriber::with_default(off, || {
        assert!(request("shop-api").is_none(), "off: no trace context");
        group.bench_function("otlp off", |b| b.iter(|| request(black_box("shop-api"))));
    });
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(Dropped).build())
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("bench"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_filter(filter_fn(|m| m.target() == TARGET).with_max_level_hint(LevelFilter::INFO));
    let on = tracing_subscriber::registry().with(logs()).with(otel);
    tracing::subscriber::with_default(on, || {
        assert!(request("shop-api").is_some(), "on: a trace context");
        group.bench_function("otlp on", |b| b.iter(|| request(black_box("shop-api"))));
    });
    group.finish();
    let _ = provider.shutdown();
}

criterion_group!(benches, spans);
criterion_main!(benches);
