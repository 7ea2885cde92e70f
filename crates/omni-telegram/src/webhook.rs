//! Webhook mode: Telegram posts each update to `POST /webhooks/{id}` with
//! the secret token in `X-Telegram-Bot-Api-Secret-Token`. Verify, parse,
//! normalize, fetch files, append, and answer 2xx only once the event is
//! durable; anything else makes Telegram deliver the update again.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use http::StatusCode;
use omni_connector::{
    AttachmentStore, EventSender, Secret, SendError, WebhookHandler, WebhookRequest,
    WebhookResponse,
    signature::constant_time_eq,
    webhook::{error_response, json_response, unavailable_response},
};
use omni_proto::v1::{ChannelKind, DeadLetter};
use omni_telemetry::events::{DeadLettered, WebhookMetrics, WebhookOutcome};
use teloxide_core::types::Update;

use crate::{
    api::BotApi,
    metrics::TelegramMetrics,
    normalize::{Outcome, normalize_update},
};

/// The header Telegram puts the webhook's secret token in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// How long Telegram should wait before retrying after a 503.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The webhook of one Telegram channel.
#[derive(Debug)]
pub struct TelegramWebhook {
    pub(crate) channel_id: String,
    pub(crate) sender: EventSender,
    pub(crate) attachments: Arc<dyn AttachmentStore>,
    /// None when verification is off.
    pub(crate) secret: Option<Secret>,
    pub(crate) api: BotApi,
    pub(crate) metrics: WebhookMetrics,
    pub(crate) telegram_metrics: TelegramMetrics,
}

impl TelegramWebhook {
    fn finish(
        &self,
        started: Instant,
        outcome: WebhookOutcome,
        detail: &str,
        response: WebhookResponse,
    ) -> WebhookResponse {
        omni_connector::webhook::finish(&self.metrics, started, outcome, detail, response)
    }

    fn unavailable(&self, started: Instant, code: &str, detail: String) -> WebhookResponse {
        let outcome = if code == "overloaded" {
            WebhookOutcome::Overloaded
        } else {
            WebhookOutcome::Failed
        };
        let response =
            unavailable_response(code, "the update was not stored; retry later", RETRY_AFTER);
        self.finish(started, outcome, &detail, response)
    }

    fn storage_failure(&self, started: Instant, error: SendError) -> WebhookResponse {
        let code = match error {
            SendError::Overloaded => "overloaded",
            SendError::Closed => "shutting_down",
            SendError::Failed(_) => "storage_unavailable",
        };
        self.unavailable(started, code, error.to_string())
    }

    /// Keeps authentic input that is not a message, then answers `status`.
    async fn dead_letter(
        &self,
        started: Instant,
        request: &WebhookRequest,
        code: &'static str,
        message: &str,
        status: StatusCode,
    ) -> WebhookResponse {
        let dead_letter = DeadLetter {
            dead_letter_id: omni_connector::dead_letter_id(&self.channel_id, &request.body),
            channel_id: self.channel_id.clone(),
            channel_kind: ChannelKind::Telegram as i32,
            reason: code.to_owned(),
            detail: message.to_owned(),
            raw_payload: request.body.to_vec(),
            content_type: "application/json".to_owned(),
            received_at: Some(timestamp(request.received_at)),
            metadata: Default::default(),
        };
        match self.sender.send_dead_letter(dead_letter).await {
            Ok(_) => {
                DeadLettered {
                    reason: code,
                    detail: message,
                }
                .emit(&self.metrics);
                self.telegram_metrics.webhook_update(true);
                let response = if status.is_success() {
                    json_response(status, &serde_json::json!({ "dead_lettered": code }))
                } else {
                    error_response(status, code, message)
                };
                self.finish(started, WebhookOutcome::Invalid, code, response)
            }
            Err(error) => self.storage_failure(started, error),
        }
    }
}

#[async_trait]
impl WebhookHandler for TelegramWebhook {
    async fn handle(&self, request: WebhookRequest) -> WebhookResponse {
        let started = Instant::now();
        if request.method != http::Method::POST {
            let response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
            );
            return self.finish(started, WebhookOutcome::Invalid, "method", response);
        }
        if let Some(secret) = &self.secret {
            let failure = match request.header(SECRET_HEADER) {
                None => Some(("missing_secret_token", "no secret token header")),
                Some(given) if !constant_time_eq(given.as_bytes(), secret.expose()) => {
                    Some(("invalid_secret_token", "the secret token does not match"))
                }
                Some(_) => None,
            };
            if let Some((code, message)) = failure {
                let response = error_response(StatusCode::FORBIDDEN, code, message);
                return self.finish(started, WebhookOutcome::Unauthenticated, code, response);
            }
        }

        let value: serde_json::Value = match serde_json::from_slice(&request.body) {
            Ok(value) => value,
            Err(e) => {
                let message = format!("body is not valid JSON: {e}");
                return self
                    .dead_letter(
                        started,
                        &request,
                        "invalid_json",
                        &message,
                        StatusCode::BAD_REQUEST,
                    )
                    .await;
            }
        };
        let update = match serde_json::from_slice::<Update>(&request.body) {
            Ok(update) => update,
            Err(e) => {
                let message = format!("not a Telegram update: {e}");
                return self
                    .dead_letter(
                        started,
                        &request,
                        "invalid_update",
                        &message,
                        StatusCode::BAD_REQUEST,
                    )
                    .await;
            }
        };
        let received_at = timestamp(request.received_at);
        match normalize_update(&update, Some(&value), &self.channel_id, received_at) {
            Outcome::Ignored(what) => {
                self.telegram_metrics.ignored(update.id.0, what);
                let response = json_response(StatusCode::OK, &serde_json::json!({}));
                self.finish(started, WebhookOutcome::Accepted, what, response)
            }
            // A real update Omnid cannot read: kept, and answered 200 so
            // Telegram does not hold back the updates behind it.
            Outcome::Invalid(error) => {
                self.dead_letter(
                    started,
                    &request,
                    error.code,
                    &error.message,
                    StatusCode::OK,
                )
                .await
            }
            Outcome::Event(mut normalized) => {
                if let Err(error) = self
                    .api
                    .fetch_files(
                        &mut normalized,
                        self.attachments.as_ref(),
                        &self.telegram_metrics,
                    )
                    .await
                {
                    return self.unavailable(started, "file_unavailable", error.to_string());
                }
                let event_id = normalized.event.event_id.clone();
                match self.sender.send_event(normalized.event).await {
                    Ok(_) => {
                        self.telegram_metrics.webhook_update(false);
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
        }
    }
}

pub(crate) use omni_proto::timestamp;
