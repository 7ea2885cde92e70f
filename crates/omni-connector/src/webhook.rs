//! Webhook plumbing shared by every push connector: the request as a
//! connector sees it, and JSON error replies with one shape everywhere.

use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use omni_telemetry::emit;

use crate::events::{WebhookHandled, WebhookMetrics, WebhookOutcome};

/// A webhook request, already limited in size by the daemon.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub method: Method,
    /// Path and query as received.
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub received_at: SystemTime,
    /// The URL the provider called, when the daemon knows its public base
    /// URL (signatures such as Twilio's cover it, and the daemon may sit
    /// behind a proxy that rewrites the host).
    pub public_url: Option<String>,
}

impl WebhookRequest {
    /// A header's value as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type WebhookResponse = http::Response<Bytes>;

/// The webhook endpoint of one configured channel.
#[async_trait]
pub trait WebhookHandler: Send + Sync + std::fmt::Debug + 'static {
    async fn handle(&self, request: WebhookRequest) -> WebhookResponse;
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> WebhookResponse {
    let mut response = http::Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The error body every Omnid endpoint uses:
/// `{"error": {"code": "invalid_signature", "message": "..."}}`. `code` is
/// stable and machine-readable; `message` is for people.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: impl std::fmt::Display,
) -> WebhookResponse {
    json_response(
        status,
        &serde_json::json!({ "error": { "code": code, "message": message.to_string() } }),
    )
}

/// A 503 telling the provider when to retry, for overload and storage
/// failures: the provider keeps the message and nothing is lost.
pub fn unavailable_response(
    code: &str,
    message: impl std::fmt::Display,
    retry_after: Duration,
) -> WebhookResponse {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, code, message);
    let seconds = retry_after.as_secs().max(1);
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Ends a webhook request: emits its internal event (log line, outcome
/// counter, duration) and hands the response back, so every channel
/// reports its requests the same way.
pub fn finish(
    metrics: &WebhookMetrics,
    started: Instant,
    outcome: WebhookOutcome,
    detail: &str,
    response: WebhookResponse,
) -> WebhookResponse {
    emit!(WebhookHandled {
        outcome,
        elapsed: started.elapsed(),
        detail,
    } => metrics);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_shape_and_retry_after() {
        let response = unavailable_response("overloaded", "try later", Duration::from_millis(10));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"]["code"], "overloaded");
        assert_eq!(body["error"]["message"], "try later");
    }
}
