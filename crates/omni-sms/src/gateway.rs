//! The generic SMS gateway (`kind = "sms_gateway"`), for the many regional
//! gateways Omnid has no dedicated connector for: a JSON or form post
//! whose field names are configured, authenticated by an HMAC-SHA256 of
//! the raw body (hex or base64) in a configured header. Replies are sent,
//! when configured, as a JSON post built from a template.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use base64::Engine as _;
use omni_connector::{
    ChannelContext, ConfigError, Delivered, DeliveryError, OutboundHandler, ParseError, Parsed,
    Refusal, Secret, SecretRef, WebhookChannel, WebhookConnector, WebhookDriver, WebhookRequest,
    signature::{constant_time_eq, hmac_sha256},
};
use omni_model::Region;
use omni_proto::{
    Timestamp,
    v1::{ChannelKind, Content, ConversationEvent, Direction, EventKind, ThreadingHints},
};
use serde::Deserialize;

use crate::common;

/// The `kind` of generic gateway channels.
pub const KIND: &str = "sms_gateway";

/// How the signature header encodes the HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Hex,
    Base64,
}

/// Where each part of a message is in the gateway's payload: a top-level
/// field name (JSON: a dotted path into nested objects, `data.from`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMap {
    /// The sender's number.
    #[serde(default = "default_from")]
    pub from: String,
    /// The business number it was sent to (optional in payloads).
    #[serde(default = "default_to")]
    pub to: String,
    /// The message text.
    #[serde(default = "default_text")]
    pub text: String,
    /// The gateway's message id, the idempotency key.
    #[serde(default = "default_id")]
    pub id: String,
    /// When the customer sent it (RFC 3339, `YYYY-MM-DD HH:MM:SS` UTC or
    /// Unix seconds); unset, not read.
    #[serde(default)]
    pub sent_at: Option<String>,
}

impl Default for FieldMap {
    fn default() -> Self {
        Self {
            from: default_from(),
            to: default_to(),
            text: default_text(),
            id: default_id(),
            sent_at: None,
        }
    }
}

fn default_from() -> String {
    "from".into()
}
fn default_to() -> String {
    "to".into()
}
fn default_text() -> String {
    "text".into()
}
fn default_id() -> String {
    "id".into()
}

/// Settings of one generic gateway channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The shared HMAC-SHA256 secret: `{ env = "NAME" }` or
    /// `{ file = "PATH" }`. Required unless `verify_signatures = false`.
    #[serde(default)]
    pub secret: Option<SecretRef>,

    /// The header carrying the signature.
    #[serde(default = "default_signature_header")]
    pub signature_header: String,

    /// `hex` or `base64`.
    #[serde(default = "default_encoding")]
    pub signature_encoding: Encoding,

    /// A prefix the gateway puts before the signature (`sha256=`), removed
    /// before comparing.
    #[serde(default)]
    pub signature_prefix: String,

    /// Checks every request's signature. Off, anyone can post; logged as a
    /// warning at every load.
    #[serde(default = "default_true")]
    pub verify_signatures: bool,

    /// ISO 3166 region for numbers without a country code (a gateway in
    /// Tehran sends `0912...`).
    #[serde(default)]
    pub default_region: Option<String>,

    /// Where the message's parts are in the payload.
    #[serde(default)]
    pub fields: FieldMap,

    /// Sending replies; unset, the channel only receives.
    #[serde(default)]
    pub outbound: Option<GatewayOutbound>,
}

/// How replies are sent: a JSON post to `url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayOutbound {
    /// The gateway's send endpoint.
    pub url: String,

    /// The JSON body, where `{{to}}` (E.164), `{{to_digits}}` (without
    /// `+`), `{{text}}` and `{{id}}` (the outbound event id) are replaced
    /// by JSON-escaped values; write them inside quotes.
    pub body_template: String,

    /// A bearer token for the `Authorization` header, if the gateway
    /// wants one.
    #[serde(default)]
    pub token: Option<SecretRef>,

    /// Bound (seconds) on each call.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_signature_header() -> String {
    "x-signature".into()
}
const fn default_encoding() -> Encoding {
    Encoding::Hex
}
const fn default_true() -> bool {
    true
}
const fn default_timeout_secs() -> u64 {
    30
}

/// What normalization needs to know about the channel.
#[derive(Debug, Clone)]
pub struct NormalizeOptions<'a> {
    pub channel_id: &'a str,
    pub default_region: Option<Region>,
    pub received_at: Timestamp,
    pub fields: &'a FieldMap,
}

/// A payload as fields: a JSON object, or form parameters.
#[derive(Debug)]
pub enum Payload {
    Json(serde_json::Value),
    Form(common::Params),
}

impl Payload {
    fn get(&self, path: &str) -> Option<String> {
        match self {
            Payload::Json(value) => {
                let mut at = value;
                for key in path.split('.') {
                    at = at.get(key)?;
                }
                common::scalar_string(at)
            }
            Payload::Form(params) => common::param(params, path).map(str::to_owned),
        }
    }
}

/// Reads a body as JSON (an object) or a form.
pub fn payload(body: &[u8], json: bool) -> Result<Payload, ParseError> {
    if json {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ParseError::new("invalid_json", format!("body is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ParseError::new(
                "invalid_json",
                "body must be a JSON object",
            ));
        }
        Ok(Payload::Json(value))
    } else {
        Ok(Payload::Form(common::form_params(body)))
    }
}

/// Normalizes a gateway payload.
pub fn normalize(
    payload: &Payload,
    options: &NormalizeOptions<'_>,
) -> Result<ConversationEvent, ParseError> {
    let fields = options.fields;
    let required = |path: &str| {
        payload
            .get(path)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ParseError::new("missing_field", format!("{path}: required")))
    };
    let id = required(&fields.id)?;
    if id.len() > 256 || id.chars().any(char::is_control) {
        return Err(ParseError::new(
            "invalid_field",
            format!("{}: at most 256 bytes, no control characters", fields.id),
        ));
    }
    let sender = common::phone(
        &fields.from,
        &required(&fields.from)?,
        options.default_region,
        true,
    )?;
    let recipients = match payload.get(&fields.to).filter(|v| !v.trim().is_empty()) {
        Some(to) => vec![common::phone(
            &fields.to,
            &to,
            options.default_region,
            false,
        )?],
        None => Vec::new(),
    };
    let text = payload.get(&fields.text).unwrap_or_default();
    if text.trim().is_empty() {
        return Err(ParseError::new(
            "invalid_field",
            format!("{}: empty message", fields.text),
        ));
    }
    let sent_at =
        match &fields.sent_at {
            Some(path) => match payload.get(path) {
                Some(raw) => Some(common::parse_time(&raw).ok_or_else(|| {
                    ParseError::new("invalid_field", format!("{path}: not a time"))
                })?),
                None => None,
            },
            None => None,
        };
    Ok(ConversationEvent {
        event_id: omni_model::event_id(options.channel_id, &id).to_string(),
        channel_id: options.channel_id.to_owned(),
        channel_kind: ChannelKind::Sms as i32,
        direction: Direction::Inbound as i32,
        kind: EventKind::Message as i32,
        sender: Some(sender),
        recipients,
        provider_message_id: id,
        sent_at,
        received_at: Some(options.received_at),
        ingested_at: Some(options.received_at),
        content: Some(Content {
            text,
            ..Default::default()
        }),
        threading: Some(ThreadingHints::default()),
        ..Default::default()
    })
}

/// Builds one gateway channel: its webhook and, when configured, its sender.
pub fn build(
    context: ChannelContext,
    config: GatewayConfig,
) -> Result<WebhookConnector, ConfigError> {
    let secret = if config.verify_signatures {
        let secret = config.secret.as_ref().ok_or_else(|| {
            ConfigError::new("secret", "required unless verify_signatures = false")
        })?;
        Some(
            secret
                .resolve()
                .map_err(|e| ConfigError::new("secret", e))?,
        )
    } else {
        None
    };
    let header = config.signature_header.trim().to_ascii_lowercase();
    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
        return Err(ConfigError::new("signature_header", "not a header name"));
    }
    for (key, value) in [
        ("fields.from", &config.fields.from),
        ("fields.to", &config.fields.to),
        ("fields.text", &config.fields.text),
        ("fields.id", &config.fields.id),
    ] {
        if value.trim().is_empty() {
            return Err(ConfigError::new(key, "must not be empty"));
        }
    }
    let outbound = config
        .outbound
        .as_ref()
        .map(|o| GatewaySender::new(o).map(Arc::new))
        .transpose()?;
    let channel = GatewayChannel {
        channel_id: context.channel_id.clone(),
        secret,
        header,
        encoding: config.signature_encoding,
        prefix: config.signature_prefix.clone(),
        default_region: common::region(config.default_region.as_deref())?,
        fields: config.fields,
    };
    let webhook = WebhookDriver::new(&context, channel);
    Ok(WebhookConnector::new(Arc::new(webhook))
        .with_outbound(outbound.map(|o| o as Arc<dyn OutboundHandler>)))
}

/// The webhook half of one gateway channel. Its answers are the driver's
/// defaults: `{"event_id"}` once durable, a 400 naming the problem for
/// authentic input that is not a message (a generic gateway has no
/// resend-for-a-day behaviour to avoid, and the 400 tells its operator).
#[derive(Debug)]
pub struct GatewayChannel {
    channel_id: String,
    secret: Option<Secret>,
    header: String,
    encoding: Encoding,
    prefix: String,
    default_region: Option<Region>,
    fields: FieldMap,
}

/// Whether `provided` is the HMAC-SHA256 of `body` under `secret`.
pub fn verify(secret: &[u8], body: &[u8], provided: &str, encoding: Encoding) -> bool {
    let decoded = match encoding {
        Encoding::Hex => hex::decode(provided.trim()).ok(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(provided.trim())
            .ok(),
    };
    decoded.is_some_and(|d| constant_time_eq(&hmac_sha256(secret, &[body]), &d))
}

impl WebhookChannel for GatewayChannel {
    fn verifies(&self) -> bool {
        self.secret.is_some()
    }

    fn verify(&self, request: &WebhookRequest) -> Result<(), Refusal> {
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        let provided = request
            .header(&self.header)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Refusal::new("missing_signature", "the signature header is missing"))?;
        let provided = provided
            .strip_prefix(self.prefix.as_str())
            .unwrap_or(provided);
        if verify(secret.expose(), &request.body, provided, self.encoding) {
            Ok(())
        } else {
            Err(Refusal::new(
                "invalid_signature",
                "the signature does not match",
            ))
        }
    }

    fn parse(&self, request: &WebhookRequest) -> Result<Parsed, ParseError> {
        let options = NormalizeOptions {
            channel_id: &self.channel_id,
            default_region: self.default_region,
            received_at: common::timestamp(request.received_at),
            fields: &self.fields,
        };
        let payload = payload(&request.body, common::is_json(request))?;
        normalize(&payload, &options).map(Parsed::event)
    }
}

/// Sends replies as a JSON post built from the configured template.
#[derive(Debug)]
pub struct GatewaySender {
    client: reqwest::Client,
    url: String,
    template: String,
    token: Option<Secret>,
}

impl GatewaySender {
    fn new(config: &GatewayOutbound) -> Result<Self, ConfigError> {
        if !config.url.starts_with("https://") && !config.url.starts_with("http://") {
            return Err(ConfigError::new("outbound.url", "an http(s) URL"));
        }
        if config.timeout_secs == 0 {
            return Err(ConfigError::new(
                "outbound.timeout_secs",
                "must be at least 1",
            ));
        }
        // The template must be JSON once filled in.
        let sample = fill(&config.body_template, "+10000000000", "text", "id");
        if serde_json::from_str::<serde_json::Value>(&sample).is_err() {
            return Err(ConfigError::new(
                "outbound.body_template",
                "not JSON once its placeholders are filled (placeholders go inside quotes)",
            ));
        }
        Ok(Self {
            client: common::http_client(
                Duration::from_secs(config.timeout_secs),
                "outbound.timeout_secs",
            )?,
            url: config.url.clone(),
            template: config.body_template.clone(),
            token: config
                .token
                .as_ref()
                .map(|t| {
                    t.resolve()
                        .map_err(|e| ConfigError::new("outbound.token", e))
                })
                .transpose()?,
        })
    }
}

/// The template with its placeholders replaced by JSON-escaped values
/// (without their quotes, which the template has).
fn fill(template: &str, to: &str, text: &str, id: &str) -> String {
    let escape = |s: &str| {
        let quoted = serde_json::Value::String(s.to_owned()).to_string();
        quoted[1..quoted.len() - 1].to_owned()
    };
    template
        .replace("{{to_digits}}", &escape(to.trim_start_matches('+')))
        .replace("{{to}}", &escape(to))
        .replace("{{text}}", &escape(text))
        .replace("{{id}}", &escape(id))
}

#[async_trait]
impl OutboundHandler for GatewaySender {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError> {
        let to = common::outbound_phone(message)?;
        let text = common::outbound_text(message)?;
        let body = fill(&self.template, &to, text, &message.event_id);
        let mut request = self
            .client
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(String::from_utf8_lossy(token.expose()));
        }
        let response = request
            .send()
            .await
            .map_err(|e| common::transport_error("gateway", &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(Delivered {
                provider_message_id: message.event_id.clone(),
                provider_status: format!("{status}: {}", common::snippet(&body, 200)),
            });
        }
        Err(common::classify_status(
            status,
            &headers,
            format!("gateway {status}: {}", common::snippet(&body, 200)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_values_are_json_escaped() {
        let filled = fill(
            r#"{"to":"{{to_digits}}","msg":"{{text}}","ref":"{{id}}"}"#,
            "+989121234567",
            "say \"hi\"\n",
            "e-1",
        );
        let value: serde_json::Value = serde_json::from_str(&filled).unwrap();
        assert_eq!(value["to"], "989121234567");
        assert_eq!(value["msg"], "say \"hi\"\n");
    }
}
