//! The I/O half of the API channel: verify, parse, append, answer.

use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::StatusCode;
use omni_connector::{
    ChannelContext, ConfigError, EventSender, Secret, SendError, WebhookHandler, WebhookRequest,
    WebhookResponse,
    webhook::{error_response, json_response, unavailable_response},
};
use omni_model::Region;
use omni_proto::v1::{ChannelKind, DeadLetter};
use omni_telemetry::events::{DeadLettered, WebhookMetrics, WebhookOutcome};

use crate::{
    config::ApiChannelConfig,
    message::{self, NormalizeOptions},
    signature::{self, AuthError},
};

/// How long a provider should wait before retrying after a 503.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The webhook of one API channel, built once per (re)load.
#[derive(Debug)]
pub struct ApiWebhook {
    channel_id: String,
    sender: EventSender,
    /// Empty when verification is off.
    secrets: Vec<Secret>,
    replay_window: Duration,
    default_region: Option<Region>,
    trust_sender: bool,
    metrics: WebhookMetrics,
}

impl ApiWebhook {
    pub fn new(context: ChannelContext, config: ApiChannelConfig) -> Result<Self, ConfigError> {
        let mut secrets = Vec::new();
        if config.verify_signatures {
            let primary = config.secret.as_ref().ok_or_else(|| {
                ConfigError::new("secret", "required unless verify_signatures = false")
            })?;
            secrets.push(
                primary
                    .resolve()
                    .map_err(|e| ConfigError::new("secret", e))?,
            );
            if let Some(previous) = &config.previous_secret {
                secrets.push(
                    previous
                        .resolve()
                        .map_err(|e| ConfigError::new("previous_secret", e))?,
                );
            }
        } else {
            tracing::warn!(
                channel = %context.channel_id,
                "signature verification is off: this channel accepts unauthenticated requests from anyone"
            );
        }
        let default_region = config
            .default_region
            .as_deref()
            .map(|r| {
                r.parse::<Region>()
                    .map_err(|e| ConfigError::new("default_region", e))
            })
            .transpose()?;
        if config.replay_window_secs == 0 {
            return Err(ConfigError::new("replay_window_secs", "must be at least 1"));
        }
        Ok(Self {
            metrics: WebhookMetrics::register(&context.channel_id),
            channel_id: context.channel_id,
            sender: context.sender,
            secrets,
            replay_window: Duration::from_secs(config.replay_window_secs),
            default_region,
            trust_sender: config.trust_sender,
        })
    }

    fn authenticate(&self, request: &WebhookRequest) -> Result<(), AuthError> {
        if self.secrets.is_empty() {
            return Ok(());
        }
        signature::verify(
            &self.secrets,
            request.header(signature::TIMESTAMP_HEADER),
            request.header(signature::SIGNATURE_HEADER),
            &request.body,
            SystemTime::now(),
            self.replay_window,
        )
    }

    fn finish(
        &self,
        started: Instant,
        outcome: WebhookOutcome,
        detail: &str,
        response: WebhookResponse,
    ) -> WebhookResponse {
        omni_connector::webhook::finish(&self.metrics, started, outcome, detail, response)
    }

    fn storage_failure(&self, started: Instant, error: SendError) -> WebhookResponse {
        let outcome = match error {
            SendError::Overloaded => WebhookOutcome::Overloaded,
            SendError::Closed | SendError::Failed(_) => WebhookOutcome::Failed,
        };
        let code = match error {
            SendError::Overloaded => "overloaded",
            SendError::Closed => "shutting_down",
            SendError::Failed(_) => "storage_unavailable",
        };
        let response =
            unavailable_response(code, "the message was not stored; retry later", RETRY_AFTER);
        self.finish(started, outcome, &error.to_string(), response)
    }
}

#[async_trait]
impl WebhookHandler for ApiWebhook {
    async fn handle(&self, request: WebhookRequest) -> WebhookResponse {
        let started = Instant::now();
        if request.method != http::Method::POST {
            let response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
            );
            return self.finish(
                started,
                WebhookOutcome::Invalid,
                "method not allowed",
                response,
            );
        }
        if let Err(error) = self.authenticate(&request) {
            let response = error_response(StatusCode::FORBIDDEN, error.code(), error);
            return self.finish(
                started,
                WebhookOutcome::Unauthenticated,
                error.code(),
                response,
            );
        }

        let received_at = timestamp(request.received_at);
        let options = NormalizeOptions {
            channel_id: &self.channel_id,
            default_region: self.default_region,
            trust_sender: self.trust_sender,
            received_at,
        };
        match message::parse(&request.body, &options) {
            Ok(event) => {
                let event_id = event.event_id.clone();
                match self.sender.send_event(event).await {
                    Ok(_) => {
                        let body = serde_json::json!({ "event_id": event_id });
                        self.finish(
                            started,
                            WebhookOutcome::Accepted,
                            "",
                            json_response(StatusCode::OK, &body),
                        )
                    }
                    Err(error) => self.storage_failure(started, error),
                }
            }
            Err(error) => {
                // Authentic but not a message: keep the raw input so nothing
                // is dropped silently, then tell the sender what is wrong.
                let dead_letter = DeadLetter {
                    dead_letter_id: omni_connector::dead_letter_id(&self.channel_id, &request.body),
                    channel_id: self.channel_id.clone(),
                    channel_kind: ChannelKind::Api as i32,
                    reason: error.code.to_owned(),
                    detail: error.message.clone(),
                    raw_payload: request.body.to_vec(),
                    content_type: request
                        .header("content-type")
                        .unwrap_or("application/json")
                        .to_owned(),
                    received_at: Some(received_at),
                    metadata: Default::default(),
                };
                match self.sender.send_dead_letter(dead_letter).await {
                    Ok(_) => {
                        DeadLettered {
                            reason: error.code,
                            detail: &error.message,
                        }
                        .emit(&self.metrics);
                        let response =
                            error_response(StatusCode::BAD_REQUEST, error.code, &error.message);
                        self.finish(started, WebhookOutcome::Invalid, error.code, response)
                    }
                    Err(send_error) => self.storage_failure(started, send_error),
                }
            }
        }
    }
}

use omni_proto::timestamp;

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use bytes::Bytes;
    use omni_connector::{LogEntry, testing::MemorySink};
    use std::sync::Arc;

    fn webhook(sink: &MemorySink, verify: bool) -> ApiWebhook {
        // Written once per process: tests run in parallel and must never
        // see each other's half-written file.
        static SECRET_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
        let file = SECRET_FILE.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("omni-api-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("secret");
            std::fs::write(&file, "s3cret\n").unwrap();
            file
        });
        let settings = format!(
            "secret = {{ file = {:?} }}\nverify_signatures = {verify}\ndefault_region = \"IR\"\n",
            file.display().to_string()
        );
        let config: ApiChannelConfig =
            omni_connector::parse_settings(toml::from_str(&settings).unwrap()).unwrap();
        let context = ChannelContext::new("acme-api", EventSender::new(Arc::new(sink.clone())));
        ApiWebhook::new(context, config).unwrap()
    }

    fn request(body: &[u8], signed_with: Option<&[u8]>) -> WebhookRequest {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut headers = http::HeaderMap::new();
        if let Some(secret) = signed_with {
            headers.insert(
                signature::TIMESTAMP_HEADER,
                now.to_string().parse().unwrap(),
            );
            headers.insert(
                signature::SIGNATURE_HEADER,
                signature::sign(secret, now, body).parse().unwrap(),
            );
        }
        WebhookRequest {
            method: http::Method::POST,
            uri: "/webhooks/acme-api".parse().unwrap(),
            headers,
            body: Bytes::copy_from_slice(body),
            received_at: SystemTime::now(),
            public_url: None,
        }
    }

    const BODY: &[u8] =
        br#"{"external_id":"m-1","sender":{"kind":"email","value":"a@b.example"},"text":"hello"}"#;

    #[tokio::test]
    async fn signed_message_is_stored_then_acknowledged() {
        let sink = MemorySink::default();
        let response = webhook(&sink, true)
            .handle(request(BODY, Some(b"s3cret")))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        let entries = sink.entries();
        let [LogEntry::Event(event)] = entries.as_slice() else {
            panic!("{entries:?}")
        };
        assert_eq!(body["event_id"], event.event_id.as_str());
    }

    #[tokio::test]
    async fn forged_or_unsigned_requests_get_403_and_store_nothing() {
        let sink = MemorySink::default();
        let hook = webhook(&sink, true);
        for req in [request(BODY, Some(b"wrong")), request(BODY, None)] {
            let response = hook.handle(req).await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
        }
        assert!(sink.entries().is_empty());
    }

    #[tokio::test]
    async fn authentic_garbage_is_dead_lettered_with_400() {
        let sink = MemorySink::default();
        let response = webhook(&sink, true)
            .handle(request(b"{not json", Some(b"s3cret")))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let entries = sink.entries();
        let [LogEntry::DeadLetter(dl)] = entries.as_slice() else {
            panic!("{entries:?}")
        };
        assert_eq!(dl.reason, "invalid_json");
        assert_eq!(dl.raw_payload, b"{not json");
    }

    #[tokio::test]
    async fn storage_failure_is_503_with_retry_after_never_2xx() {
        let sink = MemorySink::default();
        sink.fail_with(Some(SendError::Overloaded));
        let hook = webhook(&sink, true);
        let response = hook.handle(request(BODY, Some(b"s3cret"))).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        sink.fail_with(Some(SendError::Failed("disk full".into())));
        let response = hook.handle(request(b"{", Some(b"s3cret"))).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn verification_off_accepts_unsigned() {
        let sink = MemorySink::default();
        let response = webhook(&sink, false).handle(request(BODY, None)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(sink.entries().len(), 1);
    }
}
