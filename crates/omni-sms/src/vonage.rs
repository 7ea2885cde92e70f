//! Vonage (`kind = "vonage"`): inbound SMS and delivery receipts of the SMS
//! API (JSON POST, form POST or GET query), with signed webhooks; replies
//! through the SMS API.
//!
//! Authentication is the SMS API's signed-webhook scheme (the `sig`
//! parameter), the one Vonage documents for inbound SMS: take every
//! parameter except `sig`, sorted by name, each value with `&` and `=`
//! replaced by `_`, written as `&name=value` one after another; `sig` is
//! then the lowercase hex MD5 of that string followed by the signature
//! secret (`md5hash`, Vonage's default), or the hex HMAC of the string
//! under the secret with MD5, SHA-1, SHA-256 or SHA-512 (compared without
//! regard to case; Vonage sends it upper-case). The signed `timestamp`
//! parameter must be within `replay_window_secs` of the daemon's clock.
//!
//! Concatenated SMS: each part (`concat=true` with `concat-ref`,
//! `concat-total`, `concat-part`) is written to the channel's durable
//! state before it is acknowledged with 200, so an acknowledged part is
//! never lost. The part that completes the set appends one message, its
//! text the parts' texts in `concat-part` order and its provider id the
//! first part's `messageId`; once that event is durable the parts are
//! cleared and their ids remembered, so a late retry of a part is
//! acknowledged without starting a new set. Until then the parts stay, so
//! a retry of the completing part after a failed append finds them all.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use http::{Method, StatusCode};
use omni_connector::{
    ChannelContext, ChannelState, ConfigError, Delivered, DeliveryError, EnrichError,
    OutboundHandler, ParseError, Parsed, Refusal, Secret, SecretRef, StateUpdate, Unreadable,
    WebhookChannel, WebhookConnector, WebhookDriver, WebhookRequest, WebhookResponse,
    driver::static_response,
    signature::{digest, eq_hex, hmac},
};
use omni_model::Region;
use omni_proto::{
    Timestamp,
    v1::{
        ChannelKind, Content, ConversationEvent, DeliveryState, DeliveryStatus, Direction,
        EventKind, IdentityHandle, ThreadingHints,
    },
};
use serde::Deserialize;

use crate::common::{self, Params, param};

/// The `kind` of Vonage channels.
pub const KIND: &str = "vonage";

/// The most parts of one concatenated SMS we buffer.
pub const MAX_PARTS: u32 = 32;

/// How Vonage signs webhooks (chosen in the Vonage dashboard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureMethod {
    /// MD5 of the parameter string followed by the secret (Vonage's
    /// default).
    Md5hash,
    /// HMAC-MD5.
    Md5,
    /// HMAC-SHA1.
    Sha1,
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// Settings of one Vonage channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VonageConfig {
    /// The signature secret of the account (dashboard, API settings):
    /// `{ env = "NAME" }` or `{ file = "PATH" }`. Required unless
    /// `verify_signatures = false`.
    #[serde(default)]
    pub signature_secret: Option<SecretRef>,

    /// The signature method set in the dashboard: `md5hash`, `md5`,
    /// `sha1`, `sha256` or `sha512`.
    #[serde(default = "default_method")]
    pub signature_method: SignatureMethod,

    /// Checks the `sig` parameter of every request. Off, anyone can post;
    /// logged as a warning at every load.
    #[serde(default = "default_true")]
    pub verify_signatures: bool,

    /// How far (seconds) the signed `timestamp` may be from the daemon's
    /// clock, either way.
    #[serde(default = "default_replay_window_secs")]
    pub replay_window_secs: u64,

    /// ISO 3166 region for numbers without a country code (Vonage sends
    /// international numbers, so this rarely matters).
    #[serde(default)]
    pub default_region: Option<String>,

    /// The API key, for sending replies.
    #[serde(default)]
    pub api_key: Option<String>,

    /// The API secret, for sending replies: `{ env = ... }` or
    /// `{ file = ... }`.
    #[serde(default)]
    pub api_secret: Option<SecretRef>,

    /// The sender of replies: a Vonage number (E.164, with or without `+`)
    /// or an alphanumeric sender id. With `api_key` and `api_secret` it
    /// turns sending on.
    #[serde(default)]
    pub from: Option<String>,

    /// Base URL of the SMS API (tests point it at a local server).
    #[serde(default = "default_api_base")]
    pub api_base: String,

    /// Bound (seconds) on each API call.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

const fn default_method() -> SignatureMethod {
    SignatureMethod::Md5hash
}

const fn default_true() -> bool {
    true
}

const fn default_replay_window_secs() -> u64 {
    300
}

fn default_api_base() -> String {
    "https://rest.nexmo.com".to_owned()
}

const fn default_timeout_secs() -> u64 {
    30
}

/// The string Vonage signs: `&name=value` for every parameter but `sig`,
/// sorted by name, with `&` and `=` in values replaced by `_`.
pub fn signing_string(params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != "sig").collect();
    sorted.sort();
    let mut out = String::new();
    for (name, value) in sorted {
        out.push('&');
        out.push_str(name);
        out.push('=');
        out.push_str(&value.replace(['&', '='], "_"));
    }
    out
}

/// The bytes of the `sig` Vonage computes for `params` (sent as hex:
/// md5hash lowercase, the HMACs upper-case).
fn signature_bytes(method: SignatureMethod, secret: &[u8], params: &[(String, String)]) -> Vec<u8> {
    let input = signing_string(params);
    let input = input.as_bytes();
    match method {
        SignatureMethod::Md5hash => digest::<md5::Md5>(&[input, secret]),
        SignatureMethod::Md5 => hmac::<md5::Md5>(secret, &[input]),
        SignatureMethod::Sha1 => hmac::<sha1::Sha1>(secret, &[input]),
        SignatureMethod::Sha256 => hmac::<sha2::Sha256>(secret, &[input]),
        SignatureMethod::Sha512 => hmac::<sha2::Sha512>(secret, &[input]),
    }
}

/// The `sig` Vonage computes for `params` (md5hash lowercase, HMACs
/// upper-case hex).
pub fn signature(method: SignatureMethod, secret: &[u8], params: &[(String, String)]) -> String {
    let bytes = signature_bytes(method, secret, params);
    match method {
        SignatureMethod::Md5hash => hex::encode(bytes),
        _ => hex::encode_upper(bytes),
    }
}

/// Why a request is not authentic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    MissingSignature,
    Mismatch,
    MissingTimestamp,
    StaleTimestamp,
}

impl AuthError {
    pub const fn code(self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::Mismatch => "invalid_signature",
            Self::MissingTimestamp => "missing_timestamp",
            Self::StaleTimestamp => "stale_timestamp",
        }
    }
}

/// Checks `sig` and the signed `timestamp`.
pub fn verify(
    method: SignatureMethod,
    secret: &[u8],
    params: &[(String, String)],
    now: SystemTime,
    window: Duration,
) -> Result<(), AuthError> {
    let provided = param(params, "sig")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(AuthError::MissingSignature)?;
    if !eq_hex(&signature_bytes(method, secret, params), provided) {
        return Err(AuthError::Mismatch);
    }
    let timestamp: u64 = param(params, "timestamp")
        .and_then(|t| t.trim().parse().ok())
        .ok_or(AuthError::MissingTimestamp)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now.abs_diff(timestamp) > window.as_secs() {
        return Err(AuthError::StaleTimestamp);
    }
    Ok(())
}

/// What normalization needs to know about the channel.
#[derive(Debug, Clone)]
pub struct NormalizeOptions<'a> {
    pub channel_id: &'a str,
    pub default_region: Option<Region>,
    pub received_at: Timestamp,
}

/// One part of a concatenated SMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub msisdn: String,
    pub reference: String,
    pub total: u32,
    pub part: u32,
    pub message_id: String,
}

/// What a Vonage request is.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A whole message.
    Message(Box<ConversationEvent>),
    /// One part of a concatenated message, to buffer.
    Part(Part),
    /// A delivery receipt of a message we sent.
    Receipt(Box<ConversationEvent>),
}

fn required<'a>(params: &'a [(String, String)], name: &str) -> Result<&'a str, ParseError> {
    param(params, name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ParseError::new("missing_field", format!("{name}: required")))
}

/// Vonage writes numbers in international form without `+`.
fn vonage_phone(
    field: &str,
    raw: &str,
    region: Option<Region>,
    verified: bool,
) -> Result<IdentityHandle, ParseError> {
    let raw = raw.trim();
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        common::phone(field, &format!("+{raw}"), region, verified)
    } else {
        common::phone(field, raw, region, verified)
    }
}

fn message_id(params: &[(String, String)]) -> Result<&str, ParseError> {
    let id = required(params, "messageId")?;
    if id.len() > 64 || id.chars().any(char::is_control) {
        return Err(ParseError::new(
            "invalid_field",
            "messageId: at most 64 bytes, no control characters",
        ));
    }
    Ok(id)
}

/// Classifies and normalizes one Vonage request's parameters.
pub fn parse(params: &Params, options: &NormalizeOptions<'_>) -> Result<Inbound, ParseError> {
    if param(params, "type").is_none()
        && (param(params, "scts").is_some() || param(params, "status").is_some())
    {
        return parse_receipt(params, options).map(Inbound::Receipt);
    }
    let id = message_id(params)?;
    if param(params, "concat").map(str::trim) == Some("true") {
        let number = |name: &str| -> Result<u32, ParseError> {
            required(params, name)?
                .parse()
                .map_err(|_| ParseError::new("invalid_field", format!("{name}: not a number")))
        };
        let (total, part) = (number("concat-total")?, number("concat-part")?);
        let reference = required(params, "concat-ref")?;
        if total == 0 || total > MAX_PARTS || part == 0 || part > total || reference.len() > 32 {
            return Err(ParseError::new(
                "invalid_field",
                format!("concat: parts 1..=total, at most {MAX_PARTS} parts, a short concat-ref"),
            ));
        }
        // Checked now so that a part that can never be assembled is
        // dead-lettered at once rather than buffered.
        let msisdn = vonage_phone(
            "msisdn",
            required(params, "msisdn")?,
            options.default_region,
            true,
        )?;
        return Ok(Inbound::Part(Part {
            msisdn: msisdn.value,
            reference: reference.to_owned(),
            total,
            part,
            message_id: id.to_owned(),
        }));
    }
    message(params, id, options).map(|e| Inbound::Message(Box::new(e)))
}

/// Normalizes a whole message (a single SMS or assembled parts).
fn message(
    params: &[(String, String)],
    id: &str,
    options: &NormalizeOptions<'_>,
) -> Result<ConversationEvent, ParseError> {
    let kind = param(params, "type").unwrap_or("text").trim();
    if kind == "binary" {
        return Err(ParseError::new(
            "unsupported_type",
            "type: binary messages are not supported",
        ));
    }
    let sender = vonage_phone(
        "msisdn",
        required(params, "msisdn")?,
        options.default_region,
        true,
    )?;
    let recipients = match param(params, "to").filter(|to| !to.trim().is_empty()) {
        Some(to) => vec![vonage_phone("to", to, options.default_region, false)?],
        None => Vec::new(),
    };
    let text = param(params, "text").unwrap_or_default().to_owned();
    if text.trim().is_empty() {
        return Err(ParseError::new("invalid_field", "text: empty message"));
    }
    let sent_at = param(params, "message-timestamp").and_then(common::parse_time);
    Ok(ConversationEvent {
        event_id: omni_model::event_id(options.channel_id, id).to_string(),
        channel_id: options.channel_id.to_owned(),
        channel_kind: ChannelKind::Sms as i32,
        direction: Direction::Inbound as i32,
        kind: EventKind::Message as i32,
        sender: Some(sender),
        recipients,
        provider_message_id: id.to_owned(),
        sent_at,
        received_at: Some(options.received_at),
        ingested_at: Some(options.received_at),
        content: Some(Content {
            text,
            ..Default::default()
        }),
        threading: Some(ThreadingHints::default()),
        provider_metadata: metadata(params, &["type", "keyword", "concat-ref", "concat-total"]),
        delivery: None,
        ..Default::default()
    })
}

fn metadata(
    params: &[(String, String)],
    names: &[&str],
) -> std::collections::HashMap<String, String> {
    names
        .iter()
        .filter_map(|name| {
            param(params, name)
                .filter(|v| !v.is_empty() && v.len() <= 256)
                .map(|v| ((*name).to_owned(), v.to_owned()))
        })
        .collect()
}

/// Joins the parts (each a request's parameters) of one concatenated SMS
/// into one message, texts in `concat-part` order, the first part's
/// parameters (and so its `messageId`) for the rest.
pub fn assemble(
    mut parts: Vec<Params>,
    options: &NormalizeOptions<'_>,
) -> Result<ConversationEvent, ParseError> {
    let number = |p: &Params| {
        param(p, "concat-part")
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    parts.sort_by_key(number);
    let text: String = parts
        .iter()
        .map(|p| param(p, "text").unwrap_or_default())
        .collect();
    let mut first = parts
        .first()
        .cloned()
        .ok_or_else(|| ParseError::new("missing_field", "concat: no parts"))?;
    first.retain(|(k, _)| k != "text");
    first.push(("text".to_owned(), text));
    let id = message_id(&first)?.to_owned();
    let mut event = message(&first, &id, options)?;
    event
        .provider_metadata
        .insert("concat-message-ids".to_owned(), {
            parts
                .iter()
                .filter_map(|p| param(p, "messageId"))
                .collect::<Vec<_>>()
                .join(",")
        });
    Ok(event)
}

/// The normalized state of a Vonage delivery-receipt status.
pub fn delivery_state(status: &str) -> DeliveryState {
    match status {
        "delivered" => DeliveryState::Delivered,
        "accepted" | "buffered" => DeliveryState::Sent,
        "expired" | "failed" | "rejected" => DeliveryState::Failed,
        _ => DeliveryState::Unspecified,
    }
}

fn parse_receipt(
    params: &Params,
    options: &NormalizeOptions<'_>,
) -> Result<Box<ConversationEvent>, ParseError> {
    let id = message_id(params)?;
    let status = required(params, "status")?.to_ascii_lowercase();
    if status.len() > 32 {
        return Err(ParseError::new("invalid_field", "status: too long"));
    }
    // In a receipt `msisdn` is the customer and `to` our sender id.
    let recipients = param(params, "msisdn")
        .and_then(|m| vonage_phone("msisdn", m, options.default_region, false).ok())
        .into_iter()
        .collect();
    let sender =
        param(params, "to").and_then(|t| vonage_phone("to", t, options.default_region, false).ok());
    let error = match param(params, "err-code").map(str::trim) {
        Some(code) if !code.is_empty() && code != "0" => format!("err-code {code}"),
        _ => String::new(),
    };
    let outbound_event_id = param(params, "client-ref")
        .filter(|r| r.len() <= 64)
        .unwrap_or_default();
    Ok(Box::new(ConversationEvent {
        event_id: omni_model::event_id(options.channel_id, &format!("status:{id}:{status}"))
            .to_string(),
        channel_id: options.channel_id.to_owned(),
        channel_kind: ChannelKind::Sms as i32,
        direction: Direction::Outbound as i32,
        kind: EventKind::DeliveryStatus as i32,
        sender,
        recipients,
        provider_message_id: id.to_owned(),
        sent_at: None,
        received_at: Some(options.received_at),
        ingested_at: Some(options.received_at),
        content: None,
        threading: None,
        provider_metadata: metadata(params, &["network-code", "price", "scts", "err-code"]),
        delivery: Some(DeliveryStatus {
            outbound_event_id: outbound_event_id.to_owned(),
            state: delivery_state(&status) as i32,
            provider_status: status,
            error,
        }),
        ..Default::default()
    }))
}

/// The parameters of a Vonage request: the query of a GET, the JSON
/// object or the form of a POST.
pub fn request_params(request: &WebhookRequest) -> Result<Params, ParseError> {
    if request.method == Method::GET {
        return Ok(common::form_params(
            request.uri.query().unwrap_or_default().as_bytes(),
        ));
    }
    if common::is_json(request) {
        return common::json_params(&request.body);
    }
    Ok(common::form_params(&request.body))
}

/// Vonage's answer to everything it sent that we took (or dead-lettered:
/// anything but a 2xx makes it resend for a day).
fn ok() -> WebhookResponse {
    static_response(StatusCode::OK, "", "")
}

/// Builds one Vonage channel: its webhook and, when configured, its sender.
pub fn build(
    context: ChannelContext,
    config: VonageConfig,
) -> Result<WebhookConnector, ConfigError> {
    let secret = if config.verify_signatures {
        let secret = config.signature_secret.as_ref().ok_or_else(|| {
            ConfigError::new(
                "signature_secret",
                "required unless verify_signatures = false",
            )
        })?;
        Some(
            secret
                .resolve()
                .map_err(|e| ConfigError::new("signature_secret", e))?,
        )
    } else {
        None
    };
    if config.replay_window_secs == 0 {
        return Err(ConfigError::new("replay_window_secs", "must be at least 1"));
    }
    if config.timeout_secs == 0 {
        return Err(ConfigError::new("timeout_secs", "must be at least 1"));
    }
    if !config.api_base.starts_with("https://") && !config.api_base.starts_with("http://") {
        return Err(ConfigError::new("api_base", "an http(s) URL"));
    }
    let default_region = common::region(config.default_region.as_deref())?;
    let outbound = match (&config.api_key, &config.api_secret, &config.from) {
        (Some(key), Some(api_secret), Some(from)) => Some(Arc::new(VonageSender {
            client: common::http_client(Duration::from_secs(config.timeout_secs), "timeout_secs")?,
            url: format!("{}/sms/json", config.api_base.trim_end_matches('/')),
            api_key: key.clone(),
            api_secret: api_secret
                .resolve()
                .map_err(|e| ConfigError::new("api_secret", e))?,
            from: from.trim().trim_start_matches('+').to_owned(),
        }) as Arc<dyn OutboundHandler>),
        (None, None, None) => None,
        _ => {
            return Err(ConfigError::new(
                "api_key",
                "sending needs api_key, api_secret and from together",
            ));
        }
    };
    let channel = VonageChannel {
        channel_id: context.channel_id.clone(),
        secret,
        method: config.signature_method,
        window: Duration::from_secs(config.replay_window_secs),
        default_region,
        state: context.state.clone(),
        concat: tokio::sync::Mutex::new(()),
    };
    let webhook = WebhookDriver::new(&context, channel);
    Ok(WebhookConnector::new(Arc::new(webhook)).with_outbound(outbound))
}

/// The webhook half of one Vonage channel.
#[derive(Debug)]
pub struct VonageChannel {
    channel_id: String,
    /// None when verification is off.
    secret: Option<Secret>,
    method: SignatureMethod,
    window: Duration,
    default_region: Option<Region>,
    state: ChannelState,
    /// Serializes the buffering of concatenated parts, so two parts of one
    /// set arriving together cannot each miss the other.
    concat: tokio::sync::Mutex<()>,
}

fn part_key(part: &Part, number: u32) -> String {
    format!(
        "vonage-concat/{}/{}/{}/{}",
        part.msisdn, part.reference, part.total, number
    )
}

fn part_seen_id(message_id: &str) -> String {
    format!("vonage-part/{message_id}")
}

fn unavailable(error: impl std::fmt::Display) -> EnrichError {
    EnrichError::Unavailable(error.to_string())
}

impl VonageChannel {
    /// The request's parameters and what they are.
    fn classify(&self, request: &WebhookRequest) -> Result<(Inbound, Params), ParseError> {
        let params = request_params(request)?;
        let options = NormalizeOptions {
            channel_id: &self.channel_id,
            default_region: self.default_region,
            received_at: common::timestamp(request.received_at),
        };
        parse(&params, &options).map(|inbound| (inbound, params))
    }

    /// Every stored part of `part`'s set, in part order; None while one is
    /// missing.
    async fn stored_parts(&self, part: &Part) -> Result<Option<Vec<Params>>, EnrichError> {
        let mut parts = Vec::with_capacity(part.total as usize);
        for number in 1..=part.total {
            match self
                .state
                .get(&part_key(part, number))
                .await
                .map_err(unavailable)?
            {
                Some(value) if !value.is_empty() => parts.push(
                    serde_json::from_slice::<Params>(&value)
                        .map_err(|e| unavailable(format!("unreadable sms part: {e}")))?,
                ),
                _ => return Ok(None),
            }
        }
        Ok(Some(parts))
    }

    /// Stores one part durably; the whole message once it is the last one
    /// missing (or the parts as one unreadable entry, if they do not join
    /// into a message).
    async fn buffer(
        &self,
        request: &WebhookRequest,
        part: Part,
        params: Params,
    ) -> Result<Parsed, EnrichError> {
        let _guard = self.concat.lock().await;
        let seen = self
            .state
            .seen(vec![part_seen_id(&part.message_id)])
            .await
            .map_err(unavailable)?;
        if seen.first() == Some(&true) {
            // Already part of a message that is durable: a retry.
            return Ok(Parsed::Answer(ok()));
        }
        let stored = serde_json::to_vec(&params).map_err(unavailable)?;
        let update = StateUpdate {
            puts: vec![(part_key(&part, part.part), stored)],
            seen: Vec::new(),
            deletes: Vec::new(),
        };
        self.state.commit(update).await.map_err(unavailable)?;
        let Some(parts) = self.stored_parts(&part).await? else {
            // Not complete yet; this part is durable.
            return Ok(Parsed::Answer(ok()));
        };
        let options = NormalizeOptions {
            channel_id: &self.channel_id,
            default_region: self.default_region,
            received_at: common::timestamp(request.received_at),
        };
        Ok(match assemble(parts.clone(), &options) {
            Ok(event) => Parsed::event(event),
            Err(error) => Parsed::Append {
                events: Vec::new(),
                unreadable: vec![Unreadable {
                    error,
                    raw: serde_json::to_vec(&parts).unwrap_or_default(),
                }],
            },
        })
    }

    /// Clears a joined set's parts and remembers their ids. Only once the
    /// joined message is durable: cleared earlier, a failed append would
    /// lose the parts Vonage no longer resends.
    async fn clear(&self, part: &Part) -> Result<(), EnrichError> {
        let _guard = self.concat.lock().await;
        let mut update = StateUpdate::default();
        for number in 1..=part.total {
            let key = part_key(part, number);
            if let Some(value) = self.state.get(&key).await.map_err(unavailable)?
                && let Ok(params) = serde_json::from_slice::<Params>(&value)
                && let Some(id) = param(&params, "messageId")
            {
                update.seen.push(part_seen_id(id));
            }
            update.puts.push((key, Vec::new()));
        }
        self.state.commit(update).await.map_err(unavailable)
    }
}

#[async_trait]
impl WebhookChannel for VonageChannel {
    fn methods(&self) -> &'static [Method] {
        &[Method::POST, Method::GET]
    }

    fn verifies(&self) -> bool {
        self.secret.is_some()
    }

    fn verify(&self, request: &WebhookRequest) -> Result<(), Refusal> {
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        // An unreadable body cannot carry a valid signature.
        let checked = match request_params(request) {
            Ok(params) => verify(
                self.method,
                secret.expose(),
                &params,
                SystemTime::now(),
                self.window,
            ),
            Err(_) => Err(AuthError::MissingSignature),
        };
        checked.map_err(|error| Refusal::new(error.code(), "the Vonage signature does not match"))
    }

    /// A part of a concatenated message parses to the answer it gets once
    /// [`Self::enrich`] has stored it.
    fn parse(&self, request: &WebhookRequest) -> Result<Parsed, ParseError> {
        match self.classify(request) {
            Ok((Inbound::Message(event) | Inbound::Receipt(event), _)) => Ok(Parsed::event(*event)),
            Ok((Inbound::Part(_), _)) => Ok(Parsed::Answer(ok())),
            // A GET has no body: what is kept is its query.
            Err(error) if request.method == Method::GET => Ok(Parsed::Append {
                events: Vec::new(),
                unreadable: vec![Unreadable {
                    error,
                    raw: request.uri.query().unwrap_or_default().as_bytes().to_vec(),
                }],
            }),
            Err(error) => Err(error),
        }
    }

    async fn enrich(
        &self,
        request: &WebhookRequest,
        parsed: Parsed,
    ) -> Result<Parsed, EnrichError> {
        if !matches!(parsed, Parsed::Answer(_)) {
            return Ok(parsed);
        }
        match self.classify(request) {
            Ok((Inbound::Part(part), params)) => self.buffer(request, part, params).await,
            _ => Ok(parsed),
        }
    }

    async fn appended(&self, request: &WebhookRequest, _event_ids: &[String]) {
        let Ok((Inbound::Part(part), _)) = self.classify(request) else {
            return;
        };
        if let Err(error) = self.clear(&part).await {
            // The message is durable; the parts linger until a later
            // message reuses the reference. A retried part would append
            // the same event id again, which consumers drop.
            tracing::warn!(channel = %self.channel_id, error = %error, "cannot clear joined sms parts");
        }
    }

    fn accepted(&self, _event_ids: &[String]) -> WebhookResponse {
        ok()
    }

    fn invalid(&self, _error: &ParseError) -> WebhookResponse {
        ok()
    }
}

/// Sends replies with the Vonage SMS API (`POST {api_base}/sms/json`).
#[derive(Debug)]
pub struct VonageSender {
    client: reqwest::Client,
    url: String,
    api_key: String,
    api_secret: Secret,
    from: String,
}

#[derive(Debug, Deserialize)]
struct SendResponse {
    #[serde(default)]
    messages: Vec<SendResult>,
}

#[derive(Debug, Deserialize)]
struct SendResult {
    #[serde(default)]
    status: String,
    #[serde(default, rename = "message-id")]
    message_id: String,
    #[serde(default, rename = "error-text")]
    error_text: String,
}

/// Whether a Vonage SMS API status code is worth retrying: throttled (1),
/// internal error (5), and the account's own problems an operator fixes
/// (4 invalid credentials, 9 partner quota exceeded).
pub fn temporary_status(status: &str) -> bool {
    matches!(status, "1" | "4" | "5" | "9")
}

#[async_trait]
impl OutboundHandler for VonageSender {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError> {
        let to = common::outbound_phone(message)?;
        let text = common::outbound_text(message)?;
        let kind = if text.is_ascii() { "text" } else { "unicode" };
        let form = [
            ("api_key", self.api_key.as_str()),
            (
                "api_secret",
                &String::from_utf8_lossy(self.api_secret.expose()),
            ),
            ("from", &self.from),
            ("to", to.trim_start_matches('+')),
            ("text", text),
            ("type", kind),
            ("client-ref", &message.event_id),
        ];
        let response = self
            .client
            .post(&self.url)
            .form(&form)
            .send()
            .await
            .map_err(|e| common::transport_error("vonage", &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .map_err(|e| common::transport_error("vonage", &e))?;
        if !status.is_success() {
            return Err(common::classify_status(
                status,
                &headers,
                format!("vonage {status}: {}", common::snippet(&body, 200)),
            ));
        }
        let answer: SendResponse = serde_json::from_str(&body).map_err(|e| {
            DeliveryError::temporary(format!("vonage answered with an unreadable body: {e}"))
        })?;
        if answer.messages.is_empty() {
            return Err(DeliveryError::temporary("vonage answered without messages"));
        }
        if let Some(failed) = answer.messages.iter().find(|m| m.status != "0") {
            let detail = format!("vonage status {}: {}", failed.status, failed.error_text);
            return Err(if temporary_status(&failed.status) {
                DeliveryError::temporary(detail)
            } else {
                DeliveryError::Rejected(detail)
            });
        }
        Ok(Delivered {
            provider_message_id: answer
                .messages
                .iter()
                .map(|m| m.message_id.as_str())
                .collect::<Vec<_>>()
                .join(","),
            provider_status: format!("status 0 ({} part(s))", answer.messages.len()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Params {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The SDK's generic helpers with the hashes Vonage and Twilio use,
    /// against RFC 2202 (HMAC-MD5, HMAC-SHA1) and RFC 1321 (MD5).
    #[test]
    fn published_vectors_of_the_hashes_sms_signs_with() {
        let data: &[&[u8]] = &[b"what do ya want ", b"for nothing?"];
        assert_eq!(
            hex::encode(hmac::<md5::Md5>(b"Jefe", data)),
            "750c783e6ab0b503eaa86e310a5db738"
        );
        assert_eq!(
            hex::encode(hmac::<sha1::Sha1>(b"Jefe", data)),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            hex::encode(hmac::<md5::Md5>(&[0x0b; 16], &[b"Hi There"])),
            "9294727a3638bb1c13f48ef8158bfc9d"
        );
        assert_eq!(
            hex::encode(hmac::<sha1::Sha1>(&[0x0b; 20], &[b"Hi There"])),
            "b617318655057264e28bc0b6fb378c8ef146be00"
        );
        // RFC 2202 test case 6: a key longer than the block.
        assert_eq!(
            hex::encode(hmac::<sha1::Sha1>(
                &[0xaa; 80],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
        assert_eq!(
            hex::encode(digest::<md5::Md5>(&[b"a", b"bc"])),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn signing_string_sorts_excludes_sig_and_replaces_separators() {
        let params = pairs(&[
            ("text", "You & Me = Love"),
            ("sig", "x"),
            ("api_key", "k"),
            ("timestamp", "1461605396"),
        ]);
        assert_eq!(
            signing_string(&params),
            "&api_key=k&text=You _ Me _ Love&timestamp=1461605396"
        );
    }

    #[test]
    fn every_method_round_trips_and_md5hash_is_md5_of_string_and_secret() {
        let params = pairs(&[("a", "1"), ("timestamp", "1700000000")]);
        // md5("&a=1&timestamp=1700000000" + "secret"), by hand with md5sum.
        assert_eq!(
            signature(SignatureMethod::Md5hash, b"secret", &params),
            hex::encode(<md5::Md5 as md5::Digest>::digest(
                b"&a=1&timestamp=1700000000secret"
            ))
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        for method in [
            SignatureMethod::Md5hash,
            SignatureMethod::Md5,
            SignatureMethod::Sha1,
            SignatureMethod::Sha256,
            SignatureMethod::Sha512,
        ] {
            let mut signed = params.clone();
            signed.push(("sig".into(), signature(method, b"secret", &params)));
            let w = Duration::from_secs(300);
            assert_eq!(verify(method, b"secret", &signed, now, w), Ok(()));
            assert_eq!(
                verify(method, b"other", &signed, now, w),
                Err(AuthError::Mismatch)
            );
            let late = now + Duration::from_secs(3600);
            assert_eq!(
                verify(method, b"secret", &signed, late, w),
                Err(AuthError::StaleTimestamp)
            );
        }
        assert_eq!(
            verify(
                SignatureMethod::Md5hash,
                b"secret",
                &params,
                now,
                Duration::from_secs(300)
            ),
            Err(AuthError::MissingSignature)
        );
    }
}
