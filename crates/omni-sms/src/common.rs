//! What the three SMS kinds share: the webhook's bookkeeping (metrics,
//! dead letters, storage failures), form and JSON parameters, phone
//! handles, timestamps, and the HTTP client of the outbound senders.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use http::StatusCode;
use omni_connector::{
    ConfigError, DeliveryError, EventSender, ParseError, SendError, WebhookRequest,
    WebhookResponse,
    webhook::{error_response, unavailable_response},
};
use omni_model::{Handle, Region};
use omni_proto::{
    Timestamp,
    v1::{ChannelKind, ConversationEvent, DeadLetter, IdentityHandle},
};
use omni_telemetry::events::{DeadLettered, WebhookMetrics, WebhookOutcome};

/// How long a provider should wait before retrying after a 503.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Request parameters in the order received (a name may repeat).
pub(crate) type Params = Vec<(String, String)>;

/// The parameters of an `application/x-www-form-urlencoded` body or query.
pub(crate) fn form_params(input: &[u8]) -> Params {
    form_urlencoded::parse(input)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `name`.
pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The top-level members of a JSON object as strings (strings as they are,
/// numbers and booleans in their JSON spelling; nested values and nulls are
/// left out). Errors when the body is not a JSON object.
pub(crate) fn json_params(body: &[u8]) -> Result<Params, ParseError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ParseError::new("invalid_json", format!("body is not valid JSON: {e}")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(ParseError::new(
            "invalid_json",
            "body must be a JSON object",
        ));
    };
    Ok(object
        .into_iter()
        .filter_map(|(k, v)| scalar_string(&v).map(|v| (k, v)))
        .collect())
}

pub(crate) fn scalar_string(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether the request declares a JSON body.
pub(crate) fn is_json(request: &WebhookRequest) -> bool {
    request.header("content-type").is_some_and(|t| {
        t.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/json")
    })
}

/// A phone handle in E.164; `field` names the provider's parameter in the
/// error.
pub(crate) fn phone(
    field: &str,
    raw: &str,
    region: Option<Region>,
    verified: bool,
) -> Result<IdentityHandle, ParseError> {
    let handle = Handle::phone(raw, region).map_err(|e| {
        ParseError::new(
            "invalid_field",
            format!(
                "{field}: not a phone number ({e}): {:?}",
                raw.chars().take(32).collect::<String>()
            ),
        )
    })?;
    Ok(omni_connector::handle::to_proto(&handle, "", verified))
}

/// Parses a channel's `default_region` setting.
pub(crate) fn region(raw: Option<&str>) -> Result<Option<Region>, ConfigError> {
    raw.map(|r| {
        r.parse::<Region>()
            .map_err(|e| ConfigError::new("default_region", e))
    })
    .transpose()
}

pub(crate) use omni_proto::timestamp;

/// `YYYY-MM-DD HH:MM:SS` (UTC), as Vonage writes times, or RFC 3339.
pub(crate) fn parse_time(raw: &str) -> Option<Timestamp> {
    let raw = raw.trim();
    if let Ok(seconds) = raw.parse::<i64>() {
        return omni_model::timestamp::checked_timestamp(seconds, 0).ok();
    }
    if raw.len() == 19 && raw.as_bytes()[10] == b' ' {
        return omni_model::timestamp::parse_timestamp(&format!("{raw}Z")).ok();
    }
    omni_model::timestamp::parse_timestamp(raw).ok()
}

/// The webhook bookkeeping every SMS kind shares.
#[derive(Debug)]
pub(crate) struct Hook {
    pub channel_id: String,
    pub sender: EventSender,
    pub metrics: WebhookMetrics,
}

impl Hook {
    pub fn new(channel_id: &str, sender: EventSender) -> Self {
        Self {
            channel_id: channel_id.to_owned(),
            sender,
            metrics: WebhookMetrics::register(channel_id),
        }
    }

    pub fn finish(
        &self,
        started: Instant,
        outcome: WebhookOutcome,
        detail: &str,
        response: WebhookResponse,
    ) -> WebhookResponse {
        omni_connector::webhook::finish(&self.metrics, started, outcome, detail, response)
    }

    /// 403: not authentic; nothing was stored.
    pub fn forbidden(
        &self,
        started: Instant,
        code: &'static str,
        message: &str,
    ) -> WebhookResponse {
        let response = error_response(StatusCode::FORBIDDEN, code, message);
        self.finish(started, WebhookOutcome::Unauthenticated, code, response)
    }

    /// A 4xx for requests that are not even candidates (wrong method).
    pub fn refuse(
        &self,
        started: Instant,
        status: StatusCode,
        code: &'static str,
        message: &str,
    ) -> WebhookResponse {
        let response = error_response(status, code, message);
        self.finish(started, WebhookOutcome::Invalid, code, response)
    }

    /// 503 with Retry-After: the log did not take the entry, so the
    /// provider must keep the message and retry.
    pub fn storage_failure(&self, started: Instant, error: SendError) -> WebhookResponse {
        let (outcome, code) = match error {
            SendError::Overloaded => (WebhookOutcome::Overloaded, "overloaded"),
            SendError::Closed => (WebhookOutcome::Failed, "shutting_down"),
            SendError::Failed(_) => (WebhookOutcome::Failed, "storage_unavailable"),
        };
        let response =
            unavailable_response(code, "the message was not stored; retry later", RETRY_AFTER);
        self.finish(started, outcome, &error.to_string(), response)
    }

    /// 503 for a failure of the channel's own durable state.
    pub fn state_failure(&self, started: Instant, detail: &str) -> WebhookResponse {
        let response = unavailable_response(
            "state_unavailable",
            "the message part was not stored; retry later",
            RETRY_AFTER,
        );
        self.finish(started, WebhookOutcome::Failed, detail, response)
    }

    /// Appends `event`; answers `accepted` once it is durable, 503 if not.
    pub async fn append(
        &self,
        started: Instant,
        event: ConversationEvent,
        accepted: WebhookResponse,
    ) -> WebhookResponse {
        match self.sender.send_event(event).await {
            Ok(_) => self.finish(started, WebhookOutcome::Accepted, "", accepted),
            Err(error) => self.storage_failure(started, error),
        }
    }

    /// Keeps authentic input that is not a message on the dead-letter
    /// topic, then answers `answer` (or 503 if the record is not durable).
    #[allow(clippy::too_many_arguments)]
    pub async fn dead_letter(
        &self,
        started: Instant,
        kind: ChannelKind,
        request: &WebhookRequest,
        raw: Vec<u8>,
        error: &ParseError,
        answer: WebhookResponse,
    ) -> WebhookResponse {
        let dead_letter = DeadLetter {
            dead_letter_id: omni_connector::dead_letter_id(&self.channel_id, &raw),
            channel_id: self.channel_id.clone(),
            channel_kind: kind as i32,
            reason: error.code.to_owned(),
            detail: error.message.clone(),
            raw_payload: raw,
            content_type: request
                .header("content-type")
                .unwrap_or(if request.method == http::Method::GET {
                    "application/x-www-form-urlencoded"
                } else {
                    "application/octet-stream"
                })
                .to_owned(),
            received_at: Some(timestamp(request.received_at)),
            metadata: BTreeMap::from([("method".to_owned(), request.method.to_string())])
                .into_iter()
                .collect(),
        };
        match self.sender.send_dead_letter(dead_letter).await {
            Ok(_) => {
                DeadLettered {
                    reason: error.code,
                    detail: &error.message,
                }
                .emit(&self.metrics);
                self.finish(started, WebhookOutcome::Invalid, error.code, answer)
            }
            Err(send_error) => self.storage_failure(started, send_error),
        }
    }
}

/// A response with a body and content type.
pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: &'static str,
) -> WebhookResponse {
    let mut response = http::Response::new(bytes::Bytes::from_static(body.as_bytes()));
    *response.status_mut() = status;
    if !content_type.is_empty() {
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
    }
    response
}

/// The HTTP client of an outbound sender: rustls, bounded connect and
/// whole-request times, no proxy from the environment.
pub(crate) fn http_client(timeout: Duration, key: &str) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .user_agent(concat!("omnid/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError::new(key, format!("cannot build the HTTP client: {e}")))
}

/// The normal classification of an HTTP answer of a provider's REST API:
/// 429, 5xx and refused credentials (401/403, an operator's fix rather
/// than the customer's fault) are temporary; other 4xx are final.
pub(crate) fn classify_status(status: reqwest::StatusCode, detail: String) -> DeliveryError {
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || status == reqwest::StatusCode::UNAUTHORIZED
        || status == reqwest::StatusCode::FORBIDDEN
    {
        DeliveryError::temporary(detail)
    } else {
        DeliveryError::Rejected(detail)
    }
}

/// A transport failure (connection refused, timeout, TLS) is temporary.
pub(crate) fn transport_error(provider: &str, error: &reqwest::Error) -> DeliveryError {
    DeliveryError::temporary(format!("{provider} request failed: {error}"))
}

/// The first recipient of an outbound message, which must be a phone
/// number (E.164).
pub(crate) fn outbound_phone(message: &ConversationEvent) -> Result<String, DeliveryError> {
    let recipient = message
        .recipients
        .first()
        .ok_or_else(|| DeliveryError::Rejected("the message has no recipient".into()))?;
    if message.recipients.len() > 1 {
        return Err(DeliveryError::Rejected(
            "an SMS has exactly one recipient".into(),
        ));
    }
    if recipient.kind != omni_proto::v1::HandleKind::Phone as i32 {
        return Err(DeliveryError::Rejected(
            "the recipient is not a phone number".into(),
        ));
    }
    let handle = Handle::phone(&recipient.value, None).map_err(|e| {
        DeliveryError::Rejected(format!("the recipient is not an E.164 number: {e}"))
    })?;
    Ok(handle.value().to_owned())
}

/// The text of an outbound message; attachments are not sent (yet).
pub(crate) fn outbound_text(message: &ConversationEvent) -> Result<&str, DeliveryError> {
    let content = message
        .content
        .as_ref()
        .ok_or_else(|| DeliveryError::Rejected("the message has no content".into()))?;
    if !content.attachments.is_empty() {
        return Err(DeliveryError::Rejected(
            "attachments cannot be sent over this SMS channel yet".into(),
        ));
    }
    if content.text.trim().is_empty() {
        return Err(DeliveryError::Rejected("the message has no text".into()));
    }
    Ok(&content.text)
}

/// At most `max` bytes of a provider's answer, for error messages.
pub(crate) fn snippet(body: &str, max: usize) -> String {
    let mut end = body.len().min(max);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_vonage_and_rfc3339_forms() {
        assert_eq!(
            parse_time("2020-01-01 12:00:00").unwrap().seconds,
            1_577_880_000
        );
        assert_eq!(
            parse_time("2020-01-01T12:00:00Z").unwrap().seconds,
            1_577_880_000
        );
        assert_eq!(parse_time("1577880000").unwrap().seconds, 1_577_880_000);
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn json_params_keep_scalars() {
        let params = json_params(br#"{"a":"x","b":2,"c":true,"d":null,"e":{}}"#).unwrap();
        assert_eq!(
            params,
            [
                ("a".to_owned(), "x".to_owned()),
                ("b".to_owned(), "2".to_owned()),
                ("c".to_owned(), "true".to_owned())
            ]
        );
        assert_eq!(json_params(b"[1]").unwrap_err().code, "invalid_json");
    }
}
