//! What the three SMS kinds share: form and JSON parameters, phone
//! handles, timestamps, and the HTTP client of the outbound senders.

use std::time::Duration;

use omni_connector::{ConfigError, DeliveryError, ParseError, WebhookRequest, parse_retry_after};
use omni_model::{Handle, Region};
use omni_proto::{
    Timestamp,
    v1::{ConversationEvent, IdentityHandle},
};

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
/// than the customer's fault) are temporary; other 4xx are final. A 429 or
/// 503 that says how long to wait (`Retry-After`) is honoured, so the
/// channel's queue backs off as long as the provider asked rather than
/// hammering it on the default backoff.
pub(crate) fn classify_status(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    detail: String,
) -> DeliveryError {
    use reqwest::StatusCode;
    let temporary = status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN;
    if !temporary {
        return DeliveryError::Rejected(detail);
    }
    let throttled =
        status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    let wait = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_retry_after)
        .filter(|_| throttled);
    match wait {
        Some(wait) => DeliveryError::throttled(detail, wait),
        None => DeliveryError::temporary(detail),
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
