//! The OTLP exporter: spans of [`TARGET`](crate::trace::TARGET) batched
//! and sent as protobuf over HTTP (`POST .../v1/traces`) to an
//! OpenTelemetry collector or any backend that speaks OTLP/HTTP.
//!
//! The SDK's batch processor runs on its own thread, and exports from
//! there; the HTTP client is the workspace's reqwest, whose requests run
//! on the daemon's tokio runtime ([`RuntimeClient`]), so no second HTTP
//! stack or gRPC is built. The queue is bounded (the SDK's 2,048 spans by
//! default): when the collector is slow or away, spans are dropped, never
//! buffered without limit, and nothing in the daemon waits for them.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{
    Resource,
    trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider},
};

use crate::TelemetryError;

/// The path OTLP/HTTP receivers take traces on.
pub const TRACES_PATH: &str = "/v1/traces";

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// The receiver's URL: a base URL (`http://collector:4318`) gets
    /// [`TRACES_PATH`] appended; a URL with a path is used as it is.
    pub endpoint: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// `service.version` of every span.
    pub service_version: String,
    /// The share of new traces exported, 0.0 to 1.0; a trace continued
    /// from a `traceparent` follows the decision made where it began.
    pub sampling_ratio: f64,
    /// How long one export request may take.
    pub timeout: Duration,
}

impl OtlpConfig {
    /// The URL spans are posted to (see [`OtlpConfig::endpoint`]).
    pub fn traces_url(&self) -> String {
        traces_url(&self.endpoint)
    }
}

/// `endpoint` with [`TRACES_PATH`] when it names no path of its own, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is read; unchanged otherwise, as
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is.
fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        endpoint.to_owned()
    } else {
        format!("{trimmed}{TRACES_PATH}")
    }
}

/// The running exporter. Its spans are flushed by [`shutdown`](Self::shutdown),
/// which the daemon calls last, after everything that makes spans stopped.
#[derive(Debug)]
pub struct OtlpExporter {
    provider: SdkTracerProvider,
}

impl OtlpExporter {
    /// Sends the spans still queued and stops the exporter. Blocks for up
    /// to `timeout` (call it from a blocking thread in async code).
    pub fn shutdown(self, timeout: Duration) -> Result<(), TelemetryError> {
        self.provider
            .shutdown_with_timeout(timeout)
            .map_err(|e| TelemetryError::Otlp(e.to_string()))
    }
}

/// Builds the tracer the OTLP layer records with, and the exporter behind
/// it. Must run inside a tokio runtime, which carries the export requests.
pub(crate) fn tracer(config: &OtlpConfig) -> Result<(SdkTracer, OtlpExporter), TelemetryError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| TelemetryError::Otlp("no tokio runtime to send spans from".into()))?;
    if !(0.0..=1.0).contains(&config.sampling_ratio) {
        return Err(TelemetryError::Otlp(format!(
            "sampling ratio {} is not between 0 and 1",
            config.sampling_ratio
        )));
    }
    let url = config.traces_url();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(TelemetryError::Otlp(format!(
            "endpoint {url:?} is not an http:// or https:// URL"
        )));
    }
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .build()
        .map_err(|e| TelemetryError::Otlp(format!("cannot build the http client: {e}")))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(RuntimeClient { client, runtime })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(config.timeout)
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new(
            "service.version",
            config.service_version.clone(),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("omnid");
    Ok((tracer, OtlpExporter { provider }))
}

/// reqwest, with each request run on the daemon's runtime: the SDK exports
/// from its own thread, where no runtime is current.
#[derive(Debug)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

/// Larger answers than this are not read: a receiver answers with a small
/// status message.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let mut response = client.execute(request).await?;
            let mut answer = http::Response::builder().status(response.status());
            if let Some(headers) = answer.headers_mut() {
                *headers = std::mem::take(response.headers_mut());
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(HttpError::from("the receiver's answer is too large"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, HttpError>(answer.body(Bytes::from(body))?)
        });
        sent.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_and_a_full_url_is_kept() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otlp.example.com/v1/traces"),
            "https://otlp.example.com/v1/traces"
        );
        assert_eq!(
            traces_url("https://example.com/otlp/v1/traces"),
            "https://example.com/otlp/v1/traces"
        );
    }

    fn config(endpoint: &str, sampling_ratio: f64) -> OtlpConfig {
        OtlpConfig {
            endpoint: endpoint.into(),
            service_name: "omnid".into(),
            service_version: "0.0.0".into(),
            sampling_ratio,
            timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn bad_settings_are_refused_before_anything_runs() {
        let error = tracer(&config("http://127.0.0.1:4318", 1.5)).unwrap_err();
        assert!(error.to_string().contains("sampling ratio"), "{error}");
        let error = tracer(&config("127.0.0.1:4318", 1.0)).unwrap_err();
        assert!(error.to_string().contains("not an http"), "{error}");
        let (_, exporter) = tracer(&config("http://127.0.0.1:4318", 0.5)).unwrap();
        exporter.shutdown(Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn outside_a_runtime_there_is_nothing_to_send_from() {
        let error = tracer(&config("http://127.0.0.1:4318", 1.0)).unwrap_err();
        assert!(error.to_string().contains("tokio runtime"), "{error}");
    }
}
