//! The API channel's provider-specific half: its signature check and its
//! message parser. The SDK's [`WebhookDriver`] runs them, so the method
//! check, the 403, dead letters, the 503 with Retry-After and the request
//! metrics are the same as every other push channel's.

use std::time::{Duration, SystemTime};

use omni_connector::{
    ChannelContext, ConfigError, ParseError, Parsed, Refusal, WebhookChannel, WebhookDriver,
    WebhookRequest, signature::HmacSha256Key,
};
use omni_model::Region;

use crate::{
    config::ApiChannelConfig,
    message::{self, NormalizeOptions},
    signature,
};

/// The webhook of one API channel, built once per (re)load.
pub type ApiWebhook = WebhookDriver<ApiChannel>;

/// What an API channel checks and parses with.
#[derive(Debug)]
pub struct ApiChannel {
    channel_id: String,
    /// The secrets' HMAC keys, prepared once; empty when verification is
    /// off.
    keys: Vec<HmacSha256Key>,
    replay_window: Duration,
    default_region: Option<Region>,
    trust_sender: bool,
}

impl ApiChannel {
    pub fn new(channel_id: &str, config: ApiChannelConfig) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        if config.verify_signatures {
            let primary = config.secret.as_ref().ok_or_else(|| {
                ConfigError::new("secret", "required unless verify_signatures = false")
            })?;
            let primary = primary
                .resolve()
                .map_err(|e| ConfigError::new("secret", e))?;
            keys.push(HmacSha256Key::new(primary.expose()));
            if let Some(previous) = &config.previous_secret {
                let previous = previous
                    .resolve()
                    .map_err(|e| ConfigError::new("previous_secret", e))?;
                keys.push(HmacSha256Key::new(previous.expose()));
            }
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
            channel_id: channel_id.to_owned(),
            keys,
            replay_window: Duration::from_secs(config.replay_window_secs),
            default_region,
            trust_sender: config.trust_sender,
        })
    }

    /// The channel run by the webhook driver.
    pub fn webhook(
        context: &ChannelContext,
        config: ApiChannelConfig,
    ) -> Result<ApiWebhook, ConfigError> {
        Ok(WebhookDriver::new(
            context,
            Self::new(&context.channel_id, config)?,
        ))
    }
}

impl WebhookChannel for ApiChannel {
    fn verifies(&self) -> bool {
        !self.keys.is_empty()
    }

    fn verify(&self, request: &WebhookRequest) -> Result<(), Refusal> {
        if self.keys.is_empty() {
            return Ok(());
        }
        signature::verify_keyed(
            &self.keys,
            request.header(signature::TIMESTAMP_HEADER),
            request.header(signature::SIGNATURE_HEADER),
            &request.body,
            SystemTime::now(),
            self.replay_window,
        )
        .map_err(|error| Refusal::new(error.code(), error.to_string()))
    }

    fn parse(&self, request: &WebhookRequest) -> Result<Parsed, ParseError> {
        let options = NormalizeOptions {
            channel_id: &self.channel_id,
            default_region: self.default_region,
            trust_sender: self.trust_sender,
            received_at: omni_proto::timestamp(request.received_at),
        };
        message::parse(&request.body, &options).map(Parsed::event)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::UNIX_EPOCH};

    use super::*;
    use bytes::Bytes;
    use http::StatusCode;
    use omni_connector::{EventSender, LogEntry, SendError, WebhookHandler, testing::MemorySink};

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
        ApiChannel::webhook(&context, config).unwrap()
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
