//! Webhook mode: Telegram posts each update to `POST /webhooks/{id}` with
//! the secret token in `X-Telegram-Bot-Api-Secret-Token`. This is the
//! channel's half; the SDK's [`WebhookDriver`] runs it, so an update is
//! answered 2xx only once its event (or dead letter) is durable, and a
//! message's files are downloaded after that, never while Telegram waits:
//! Telegram holds every later update of the bot behind one it must
//! redeliver.

use http::StatusCode;
use omni_connector::{
    ParseError, Parsed, Refusal, Secret, WebhookChannel, WebhookDriver, WebhookRequest,
    WebhookResponse,
    signature::constant_time_eq,
    webhook::{error_response, json_response},
};
use omni_telemetry::emit;
use teloxide_core::types::Update;

use crate::{
    events::{TelegramMetrics, UpdateIgnored, WebhookUpdateHandled},
    normalize::{Outcome, normalize_update},
};

/// The header Telegram puts the webhook's secret token in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Error codes of bodies that are not Telegram updates at all (answered
/// 400); every other dead letter is a real update, answered 200.
const NOT_AN_UPDATE: [&str; 2] = ["invalid_json", "invalid_update"];

/// The webhook of one Telegram channel.
#[derive(Debug)]
pub struct TelegramWebhook {
    pub(crate) channel_id: String,
    /// None when verification is off.
    pub(crate) secret: Option<Secret>,
    pub(crate) metrics: TelegramMetrics,
}

impl TelegramWebhook {
    /// Runs the channel in the SDK's webhook driver.
    pub fn driver(
        self,
        context: &omni_connector::ChannelContext,
    ) -> WebhookDriver<TelegramWebhook> {
        WebhookDriver::new(context, self)
    }
}

impl WebhookChannel for TelegramWebhook {
    fn verifies(&self) -> bool {
        self.secret.is_some()
    }

    fn verify(&self, request: &WebhookRequest) -> Result<(), Refusal> {
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        match request.header(SECRET_HEADER) {
            None => Err(Refusal::new(
                "missing_secret_token",
                "no secret token header",
            )),
            Some(given) if constant_time_eq(given.as_bytes(), secret.expose()) => Ok(()),
            Some(_) => Err(Refusal::new(
                "invalid_secret_token",
                "the secret token does not match",
            )),
        }
    }

    fn parse(&self, request: &WebhookRequest) -> Result<Parsed, ParseError> {
        let value: serde_json::Value = serde_json::from_slice(&request.body)
            .map_err(|e| ParseError::new("invalid_json", format!("body is not valid JSON: {e}")))?;
        // From the bytes, not the value: teloxide's untagged message kinds
        // only match when read from text.
        let update: Update = serde_json::from_slice(&request.body).map_err(|e| {
            ParseError::new("invalid_update", format!("not a Telegram update: {e}"))
        })?;
        let received_at = omni_proto::timestamp(request.received_at);
        match normalize_update(&update, Some(&value), &self.channel_id, received_at) {
            Outcome::Event(normalized) => Ok(Parsed::inbound(vec![normalized.into_inbound()])),
            Outcome::Invalid(error) => Err(error),
            Outcome::Ignored(what) => {
                emit!(UpdateIgnored { update_id: update.id.0, kind: what } => &self.metrics);
                Ok(Parsed::Answer(json_response(
                    StatusCode::OK,
                    &serde_json::json!({}),
                )))
            }
        }
    }

    fn accepted(&self, event_ids: &[String]) -> WebhookResponse {
        emit!(WebhookUpdateHandled { dead_lettered: false } => &self.metrics);
        json_response(
            StatusCode::OK,
            &serde_json::json!({ "event_id": event_ids.first() }),
        )
    }

    fn invalid(&self, error: &ParseError) -> WebhookResponse {
        emit!(WebhookUpdateHandled { dead_lettered: true } => &self.metrics);
        if NOT_AN_UPDATE.contains(&error.code) {
            // It cannot have come from Telegram (though it passed the
            // secret): the sender learns what is wrong.
            error_response(StatusCode::BAD_REQUEST, error.code, &error.message)
        } else {
            // A real update Omnid cannot read: kept, and answered 200 so
            // Telegram does not hold back the updates behind it.
            json_response(
                StatusCode::OK,
                &serde_json::json!({ "dead_lettered": error.code }),
            )
        }
    }
}
