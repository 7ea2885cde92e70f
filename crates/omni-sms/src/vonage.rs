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
//!
//! A set that is still not joined `concat_timeout_secs` after its first
//! part arrived is expired by the channel's loop ([`VonageConnector`]):
//! the parts received go to the dead-letter topic as one record (reason
//! `incomplete_concatenated_sms`), or, if every part is there after all (a
//! joined message whose append failed and was never retried), they are
//! joined and appended. Only once that entry is durable are the parts
//! removed, so a crash in between repeats the same entry, with the same id.
//! Each set's first part also writes a due entry
//! (`vonage-concat-due/<zero-padded millis>/...`) so that the loop reads
//! only the sets that are due, in due order.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use http::{Method, StatusCode};
use omni_connector::{
    ChannelContext, ChannelState, ConfigError, Connector, ConnectorError, Delivered, DeliveryError,
    EnrichError, EventSender, LogEntry, OutboundHandler, ParseError, Parsed, Refusal, Secret,
    SecretRef, SendError, StateUpdate, Unreadable, WebhookChannel, WebhookDriver, WebhookHandler,
    WebhookRequest, WebhookResponse, dead_letter,
    driver::static_response,
    events::{DeadLettered, WebhookMetrics},
    signature::{digest, eq_hex, hmac},
    state::StateError,
};
use omni_model::Region;
use omni_proto::{
    Timestamp,
    v1::{
        ChannelKind, Content, ConversationEvent, DeliveryState, DeliveryStatus, Direction,
        EventKind, IdentityHandle, ThreadingHints,
    },
};
use omni_telemetry::emit;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

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

    /// How long (seconds) the parts of a concatenated SMS wait for the
    /// rest, from the first part's arrival, before the parts received go
    /// to the dead-letter topic (`incomplete_concatenated_sms`) and are
    /// removed from the channel's state. Vonage retries each part on its
    /// own for 24 hours after a failed delivery, so the default of 48 hours
    /// outlasts every retry of a missing part; much less risks
    /// dead-lettering a set whose last part is still being retried.
    #[serde(default = "default_concat_timeout_secs")]
    pub concat_timeout_secs: u64,
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

const fn default_concat_timeout_secs() -> u64 {
    48 * 3600
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

impl Part {
    /// The set this part belongs to.
    pub fn set(&self) -> ConcatSet {
        ConcatSet {
            msisdn: self.msisdn.clone(),
            reference: self.reference.clone(),
            total: self.total,
        }
    }
}

/// One concatenated SMS being assembled: its sender, the sender's
/// reference and the number of parts. Stored (JSON) as the value of the
/// set's due entry, so the expiry loop need not parse keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConcatSet {
    pub msisdn: String,
    pub reference: String,
    pub total: u32,
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

/// Builds one Vonage channel: its webhook, its loop that expires
/// incomplete concatenated SMS and, when configured, its sender.
pub fn build(
    context: ChannelContext,
    config: VonageConfig,
) -> Result<VonageConnector, ConfigError> {
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
    if config.concat_timeout_secs == 0 {
        return Err(ConfigError::new(
            "concat_timeout_secs",
            "must be at least 1",
        ));
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
        concat_timeout: Duration::from_secs(config.concat_timeout_secs),
        channel_kind: context.channel_kind,
        sender: context.sender.clone(),
        metrics: WebhookMetrics::register(&context.channel_id),
    };
    let webhook = Arc::new(WebhookDriver::new(&context, channel));
    Ok(VonageConnector { webhook, outbound })
}

/// How often the channel's loop looks for expired concatenated sets. The
/// timeout is hours, so a minute late is nothing; the look is one short
/// key-range read when nothing is due.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Due entries read per page, and most sets expired per sweep (the rest
/// wait for the next one), so one sweep never holds the channel's
/// concatenation lock for long.
const SWEEP_PAGE: usize = 64;
const SWEEP_MAX_SETS: usize = 1024;

/// A Vonage channel: the webhook, the sender of replies, and a loop that
/// expires concatenated SMS whose parts never all arrived.
#[derive(Debug)]
pub struct VonageConnector {
    webhook: Arc<WebhookDriver<VonageChannel>>,
    outbound: Option<Arc<dyn OutboundHandler>>,
}

impl VonageConnector {
    /// The webhook half, for tests and the expiry sweep.
    pub fn channel(&self) -> &VonageChannel {
        self.webhook.channel()
    }
}

#[async_trait]
impl Connector for VonageConnector {
    fn webhook(&self) -> Option<Arc<dyn WebhookHandler>> {
        Some(self.webhook.clone())
    }

    fn outbound(&self) -> Option<Arc<dyn OutboundHandler>> {
        self.outbound.clone()
    }

    /// Sweeps expired concatenated sets at start and every
    /// [`SWEEP_INTERVAL`]. A failed sweep (the log overloaded, the state
    /// store failing) is logged and tried again at the next tick rather
    /// than failing the channel: the webhook keeps working meanwhile, and
    /// nothing is lost by waiting. Stopping in the middle of a sweep is
    /// safe: each set's entry is appended before its parts are removed.
    async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ConnectorError> {
        let channel = self.channel();
        let mut legacy_done = false;
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let sweep = async {
                if !legacy_done {
                    channel.adopt_legacy_parts(SystemTime::now()).await?;
                    legacy_done = true;
                }
                channel.expire_concat(SystemTime::now()).await
            };
            let result = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                result = sweep => result,
            };
            match result {
                Ok(swept) if swept != Swept::default() => tracing::debug!(
                    channel = %channel.channel_id,
                    dead_lettered = swept.dead_lettered,
                    joined = swept.joined,
                    cleared = swept.cleared,
                    "expired concatenated sms swept"
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    channel = %channel.channel_id,
                    error = %error,
                    "cannot expire concatenated sms parts, retrying at the next sweep"
                ),
            }
        }
    }
}

/// Why a sweep of expired concatenated sets stopped early. Nothing is lost
/// either way: what it had not finished is still in the state, still due.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("channel state: {0}")]
    State(#[from] StateError),
    #[error("event log: {0}")]
    Log(#[from] SendError),
    #[error("cannot encode a concatenated set: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What a sweep did with the sets that were due.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Incomplete sets whose parts went to the dead-letter topic.
    pub dead_lettered: usize,
    /// Sets found complete (their joined message's append had failed and
    /// no retry came): joined and appended.
    pub joined: usize,
    /// Sets with no part left (only their bookkeeping, or the empty
    /// leftovers of joined sets that older versions kept): removed.
    pub cleared: usize,
}

/// The dead-letter reason of a concatenated SMS whose parts did not all
/// arrive in time.
pub const INCOMPLETE_REASON: &str = "incomplete_concatenated_sms";

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
    /// Serializes the buffering, joining and expiry of concatenated parts,
    /// so two parts of one set arriving together cannot each miss the
    /// other, and a set is never expired while a part is being added.
    concat: tokio::sync::Mutex<()>,
    concat_timeout: Duration,
    channel_kind: ChannelKind,
    sender: EventSender,
    /// The channel's dead-letter counter, shared with its webhook.
    metrics: WebhookMetrics,
}

/// Where the parts of sets live: `<PARTS>{msisdn}/{ref}/{total}/{n}`.
const PARTS: &str = "vonage-concat/";
/// A set's due entry key, by set: `<SETS>{msisdn}/{ref}/{total}`.
const SETS: &str = "vonage-concat-set/";
/// The expiry queue: `<DUE>{due millis, 16 digits}/{msisdn}/{ref}/{total}`.
const DUE: &str = "vonage-concat-due/";

fn part_key(set: &ConcatSet, number: u32) -> String {
    format!(
        "{PARTS}{}/{}/{}/{}",
        set.msisdn, set.reference, set.total, number
    )
}

fn set_key(set: &ConcatSet) -> String {
    format!("{SETS}{}/{}/{}", set.msisdn, set.reference, set.total)
}

/// Zero-padded, so the keys' byte order is the due order.
fn due_key(due_ms: u64, set: &ConcatSet) -> String {
    format!(
        "{DUE}{due_ms:016}/{}/{}/{}",
        set.msisdn, set.reference, set.total
    )
}

/// The due time of a due entry's key; None if it is not one.
fn due_millis(key: &str) -> Option<u64> {
    key.strip_prefix(DUE)?.get(..16)?.parse().ok()
}

/// The set and part number of a part's key (the number of an old
/// version's key too); None if it is not one. The sender is E.164, so it
/// has no `/`; a reference may, so it is what lies between.
fn parse_part_key(key: &str) -> Option<(ConcatSet, u32)> {
    let rest = key.strip_prefix(PARTS)?;
    let (msisdn, rest) = rest.split_once('/')?;
    let (rest, number) = rest.rsplit_once('/')?;
    let (reference, total) = rest.rsplit_once('/')?;
    Some((
        ConcatSet {
            msisdn: msisdn.to_owned(),
            reference: reference.to_owned(),
            total: total.parse().ok()?,
        },
        number.parse().ok()?,
    ))
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

    /// Every stored part of `set`, in part order; None while one is
    /// missing.
    async fn stored_parts(&self, set: &ConcatSet) -> Result<Option<Vec<Params>>, EnrichError> {
        let keys = (1..=set.total).map(|n| part_key(set, n)).collect();
        let mut parts = Vec::with_capacity(set.total as usize);
        for value in self.state.get_many(keys).await.map_err(unavailable)? {
            match value {
                Some(value) if !value.is_empty() => parts.push(
                    serde_json::from_slice::<Params>(&value)
                        .map_err(|e| unavailable(format!("unreadable sms part: {e}")))?,
                ),
                _ => return Ok(None),
            }
        }
        Ok(Some(parts))
    }

    /// Stores one part durably, with its set's due entry if it is the
    /// set's first; the whole message once it is the last one missing (or
    /// the parts as one unreadable entry, if they do not join into a
    /// message).
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
        let set = part.set();
        let stored = serde_json::to_vec(&params).map_err(unavailable)?;
        let mut update = StateUpdate {
            puts: vec![(part_key(&set, part.part), stored)],
            ..StateUpdate::default()
        };
        if self
            .state
            .get(&set_key(&set))
            .await
            .map_err(unavailable)?
            .is_none()
        {
            update.puts.extend(
                self.schedule(&set, request.received_at)
                    .map_err(unavailable)?,
            );
        }
        self.state.commit(update).await.map_err(unavailable)?;
        let Some(parts) = self.stored_parts(&set).await? else {
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

    /// The puts that start `set`'s clock at `first_seen`: its due entry and
    /// the set's pointer to it.
    fn schedule(
        &self,
        set: &ConcatSet,
        first_seen: SystemTime,
    ) -> Result<[(String, Vec<u8>); 2], serde_json::Error> {
        let timeout = u64::try_from(self.concat_timeout.as_millis()).unwrap_or(u64::MAX);
        let due = due_key(millis(first_seen).saturating_add(timeout), set);
        Ok([
            (set_key(set), due.clone().into_bytes()),
            (due, serde_json::to_vec(set)?),
        ])
    }

    /// Clears a joined set's parts and its due entry, and remembers the
    /// parts' ids. Only once the joined message is durable: cleared
    /// earlier, a failed append would lose the parts Vonage no longer
    /// resends.
    async fn clear(&self, part: &Part) -> Result<(), EnrichError> {
        let _guard = self.concat.lock().await;
        let set = part.set();
        let keys: Vec<String> = (1..=set.total).map(|n| part_key(&set, n)).collect();
        let values = self
            .state
            .get_many(keys.clone())
            .await
            .map_err(unavailable)?;
        let mut update = StateUpdate {
            seen: values
                .iter()
                .flatten()
                .filter_map(|value| serde_json::from_slice::<Params>(value).ok())
                .filter_map(|params| param(&params, "messageId").map(part_seen_id))
                .collect(),
            deletes: keys,
            ..StateUpdate::default()
        };
        if let Some(due) = self.state.get(&set_key(&set)).await.map_err(unavailable)? {
            update
                .deletes
                .push(String::from_utf8_lossy(&due).into_owned());
            update.deletes.push(set_key(&set));
        }
        self.state.commit(update).await.map_err(unavailable)
    }

    /// Expires every set due by `now`, oldest first, up to a bound per
    /// sweep (the rest stay due for the next).
    pub async fn expire_concat(&self, now: SystemTime) -> Result<Swept, SweepError> {
        let now_ms = millis(now);
        let mut swept = Swept::default();
        let mut handled = 0;
        while handled < SWEEP_MAX_SETS {
            let page = self.state.scan(DUE, SWEEP_PAGE).await?;
            let full = page.len() == SWEEP_PAGE;
            for (key, value) in page {
                match due_millis(&key) {
                    Some(due) if due > now_ms => return Ok(swept),
                    _ => {}
                }
                match serde_json::from_slice::<ConcatSet>(&value) {
                    Ok(set) if due_millis(&key).is_some() => {
                        self.expire(&key, &set, now, &mut swept).await?;
                    }
                    // Not a due entry this version wrote: nothing to
                    // expire, and left alone it would block the queue.
                    _ => {
                        tracing::warn!(channel = %self.channel_id, key, "removing an unreadable due entry of a concatenated sms");
                        self.state
                            .commit(StateUpdate {
                                deletes: vec![key],
                                ..StateUpdate::default()
                            })
                            .await?;
                    }
                }
                handled += 1;
            }
            if !full {
                break;
            }
        }
        Ok(swept)
    }

    /// Expires one due set: appends what its parts amount to, then (only
    /// once that is durable) removes them, its due entry and its pointer,
    /// remembering the parts' ids so that a late retry of one is answered
    /// without starting a new set.
    async fn expire(
        &self,
        due: &str,
        set: &ConcatSet,
        now: SystemTime,
        swept: &mut Swept,
    ) -> Result<(), SweepError> {
        let _guard = self.concat.lock().await;
        // Joined and cleared while this sweep waited for the lock.
        if self.state.get(due).await?.is_none() {
            return Ok(());
        }
        let keys: Vec<String> = (1..=set.total).map(|n| part_key(set, n)).collect();
        let values = self.state.get_many(keys.clone()).await?;
        let parts: Vec<(u32, Params)> = (1..=set.total)
            .zip(values)
            .filter_map(|(number, value)| {
                let params = serde_json::from_slice::<Params>(&value?).ok()?;
                Some((number, params))
            })
            .collect();
        let mut update = StateUpdate {
            seen: parts
                .iter()
                .filter_map(|(_, params)| param(params, "messageId").map(part_seen_id))
                .collect(),
            deletes: keys,
            ..StateUpdate::default()
        };
        update.deletes.push(due.to_owned());
        if self.state.get(&set_key(set)).await?.as_deref() == Some(due.as_bytes()) {
            update.deletes.push(set_key(set));
        }
        let numbers: Vec<u32> = parts.iter().map(|(number, _)| *number).collect();
        let parts: Vec<Params> = parts.into_iter().map(|(_, params)| params).collect();
        let raw = serde_json::to_vec(&parts)?;
        if parts.is_empty() {
            swept.cleared += 1;
        } else if numbers.len() == set.total as usize {
            let options = NormalizeOptions {
                channel_id: &self.channel_id,
                default_region: self.default_region,
                received_at: common::timestamp(now),
            };
            match assemble(parts, &options) {
                Ok(event) => {
                    self.sender.send_event(event).await?;
                }
                Err(error) => {
                    self.dead_letter(error.code, &error.message, raw, set, &numbers, now)
                        .await?;
                }
            }
            swept.joined += 1;
        } else {
            let missing: Vec<String> = (1..=set.total)
                .filter(|n| !numbers.contains(n))
                .map(|n| n.to_string())
                .collect();
            let detail = format!(
                "{} of {} parts arrived within {} s; missing part(s) {}",
                numbers.len(),
                set.total,
                self.concat_timeout.as_secs(),
                missing.join(", ")
            );
            self.dead_letter(INCOMPLETE_REASON, &detail, raw, set, &numbers, now)
                .await?;
            swept.dead_lettered += 1;
        }
        self.state.commit(update).await?;
        Ok(())
    }

    /// Appends the parts of `set` as one dead letter and waits until it is
    /// durable. Its id derives from `raw` (the parts as stored, in part
    /// order), so a repeat after a crash is the same record.
    async fn dead_letter(
        &self,
        reason: &str,
        detail: &str,
        raw: Vec<u8>,
        set: &ConcatSet,
        numbers: &[u32],
        now: SystemTime,
    ) -> Result<(), SendError> {
        let mut record = dead_letter(
            &self.channel_id,
            self.channel_kind,
            reason,
            detail,
            raw,
            "application/json",
            common::timestamp(now),
        );
        let received: Vec<String> = numbers.iter().map(u32::to_string).collect();
        record.metadata.extend([
            ("concat-ref".to_owned(), set.reference.clone()),
            ("concat-total".to_owned(), set.total.to_string()),
            ("concat-parts-received".to_owned(), received.join(",")),
        ]);
        self.sender
            .send(LogEntry::DeadLetter(Box::new(record)))
            .await?;
        emit!(DeadLettered { reason, detail } => &self.metrics);
        Ok(())
    }

    /// Brings parts an older version stored (without a due entry) under
    /// expiry, their clock starting `now`, and removes the empty values it
    /// left for every joined set. Walks the parts in pages, so it costs a
    /// pass over what is buffered, once per start.
    pub async fn adopt_legacy_parts(&self, now: SystemTime) -> Result<usize, SweepError> {
        let mut adopted = 0;
        let mut after = String::new();
        loop {
            let _guard = self.concat.lock().await;
            let page = self.state.scan_after(PARTS, &after, SWEEP_PAGE).await?;
            let Some((last, _)) = page.last() else {
                return Ok(adopted);
            };
            after = last.clone();
            let full = page.len() == SWEEP_PAGE;
            let mut update = StateUpdate::default();
            let mut scheduled = HashSet::new();
            for (key, value) in page {
                if value.is_empty() {
                    update.deletes.push(key);
                    continue;
                }
                let Some((set, _)) = parse_part_key(&key) else {
                    continue;
                };
                if !scheduled.contains(&set) && self.state.get(&set_key(&set)).await?.is_none() {
                    update.puts.extend(self.schedule(&set, now)?);
                    adopted += 1;
                }
                scheduled.insert(set);
            }
            if update != StateUpdate::default() {
                self.state.commit(update).await?;
            }
            if !full {
                return Ok(adopted);
            }
        }
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
            // The message is durable; the parts linger until their set
            // expires, when the sweep joins and appends them again (the
            // same event id, which consumers drop).
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

/// Expiry of concatenated sets, against the memory state and sink.
#[cfg(test)]
mod expiry_tests {
    use omni_connector::{
        StateStore,
        testing::{CountingStateStore, MemorySink},
    };
    use omni_proto::v1::DeadLetter;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    struct Fixture {
        sink: MemorySink,
        connector: Arc<VonageConnector>,
        store: Arc<CountingStateStore>,
    }

    impl Fixture {
        /// A channel whose sets expire an hour after their first part.
        fn new() -> Self {
            let sink = MemorySink::default();
            let store = Arc::new(CountingStateStore::default());
            let mut context =
                ChannelContext::new("acme-vonage", EventSender::new(Arc::new(sink.clone())));
            context.channel_kind = ChannelKind::Sms;
            context.state = ChannelState::new(store.clone(), "acme-vonage");
            let config: VonageConfig =
                toml::from_str("verify_signatures = false\nconcat_timeout_secs = 3600").unwrap();
            let connector = Arc::new(build(context, config).unwrap());
            Self {
                sink,
                connector,
                store,
            }
        }

        fn channel(&self) -> &VonageChannel {
            self.connector.channel()
        }

        /// Posts part `part` of 3 of reference 42, received at `at`.
        async fn post(&self, part: u32, at: SystemTime) -> StatusCode {
            let body = serde_json::json!({
                "msisdn": "447911123401",
                "to": "447911123400",
                "messageId": format!("0B0000001234560{part}"),
                "text": format!("part {part}. "),
                "type": "text",
                "concat": "true",
                "concat-ref": "42",
                "concat-total": "3",
                "concat-part": part.to_string(),
            });
            let mut headers = http::HeaderMap::new();
            headers.insert("content-type", "application/json".parse().unwrap());
            let request = WebhookRequest {
                method: Method::POST,
                uri: "/webhooks/acme-vonage".parse().unwrap(),
                headers,
                body: serde_json::to_vec(&body).unwrap().into(),
                received_at: at,
                public_url: None,
            };
            self.connector
                .webhook()
                .unwrap()
                .handle(request)
                .await
                .status()
        }

        /// Every key the channel keeps.
        fn keys(&self) -> Vec<String> {
            self.store
                .scan("acme-vonage", "", usize::MAX)
                .unwrap()
                .into_iter()
                .map(|(key, _)| key)
                .collect()
        }

        fn dead_letters(&self) -> Vec<DeadLetter> {
            self.sink
                .entries()
                .into_iter()
                .filter_map(|entry| match entry {
                    LogEntry::DeadLetter(dead) => Some(*dead),
                    _ => None,
                })
                .collect()
        }
    }

    fn texts(raw: &[u8]) -> Vec<String> {
        let parts: Vec<Params> = serde_json::from_slice(raw).unwrap();
        parts
            .iter()
            .map(|p| param(p, "text").unwrap().to_owned())
            .collect()
    }

    #[test]
    fn keys_order_by_due_time_and_parse_back() {
        let set = ConcatSet {
            msisdn: "+447911123401".into(),
            reference: "a/b".into(),
            total: 3,
        };
        let (early, late) = (due_key(9_999, &set), due_key(10_000, &set));
        assert!(early < late, "zero padding keeps numeric order");
        assert_eq!(due_millis(&late), Some(10_000));
        assert_eq!(due_millis("vonage-concat-due/12"), None);
        assert_eq!(parse_part_key(&part_key(&set, 2)), Some((set.clone(), 2)));
        assert_eq!(parse_part_key("vonage-concat/+1/r/x/1"), None);
        assert_eq!(parse_part_key("other/+1/r/3/1"), None);
    }

    #[tokio::test]
    async fn an_incomplete_set_expires_into_one_dead_letter_and_its_state_goes() {
        let f = Fixture::new();
        assert_eq!(f.post(3, t0()).await, StatusCode::OK);
        assert_eq!(
            f.post(1, t0() + Duration::from_secs(5)).await,
            StatusCode::OK
        );
        assert!(f.sink.entries().is_empty());

        // The clock runs from the first part.
        let early = f
            .channel()
            .expire_concat(t0() + HOUR - Duration::from_secs(1));
        assert_eq!(early.await.unwrap(), Swept::default());
        assert!(f.sink.entries().is_empty());

        let swept = f.channel().expire_concat(t0() + HOUR).await.unwrap();
        assert_eq!(
            swept,
            Swept {
                dead_lettered: 1,
                ..Swept::default()
            }
        );
        let [dead] = f.dead_letters().try_into().unwrap();
        assert_eq!(dead.reason, INCOMPLETE_REASON);
        assert_eq!(dead.channel_kind, ChannelKind::Sms as i32);
        assert_eq!(dead.content_type, "application/json");
        assert_eq!(texts(&dead.raw_payload), ["part 1. ", "part 3. "]);
        assert_eq!(
            dead.dead_letter_id,
            omni_connector::dead_letter_id("acme-vonage", &dead.raw_payload)
        );
        assert_eq!(dead.metadata["concat-ref"], "42");
        assert_eq!(dead.metadata["concat-total"], "3");
        assert_eq!(dead.metadata["concat-parts-received"], "1,3");
        assert!(dead.detail.contains("missing part(s) 2"), "{}", dead.detail);
        assert!(f.keys().is_empty(), "{:?}", f.keys());

        // A late retry of a dead-lettered part starts nothing; a sweep
        // later finds nothing.
        assert_eq!(f.post(1, t0() + 2 * HOUR).await, StatusCode::OK);
        assert!(f.keys().is_empty(), "{:?}", f.keys());
        let later = f.channel().expire_concat(t0() + 10 * HOUR).await.unwrap();
        assert_eq!(later, Swept::default());
        assert_eq!(f.sink.entries().len(), 1);
    }

    #[tokio::test]
    async fn a_crash_between_the_dead_letter_and_the_cleanup_repeats_the_same_record() {
        let f = Fixture::new();
        assert_eq!(f.post(2, t0()).await, StatusCode::OK);
        let keys = f.keys();

        // The log refuses: nothing is removed.
        f.sink
            .fail_with(Some(SendError::Failed("disk full".into())));
        let failed = f.channel().expire_concat(t0() + HOUR).await;
        assert!(matches!(failed, Err(SweepError::Log(_))), "{failed:?}");
        assert_eq!(f.keys(), keys);
        f.sink.fail_with(None);

        // The record is durable but the state commit fails (as if the
        // process died before it): the parts stay, still due.
        f.store.fail(true);
        let failed = f.channel().expire_concat(t0() + HOUR).await;
        assert!(matches!(failed, Err(SweepError::State(_))), "{failed:?}");
        assert_eq!(f.keys(), keys);
        f.store.fail(false);

        f.channel().expire_concat(t0() + HOUR).await.unwrap();
        let [first, again] = f.dead_letters().try_into().unwrap();
        assert_eq!(first, again, "the repeat is the same record, same id");
        assert!(f.keys().is_empty(), "{:?}", f.keys());
    }

    #[tokio::test]
    async fn a_complete_set_whose_append_failed_is_joined_when_it_expires() {
        let f = Fixture::new();
        assert_eq!(f.post(1, t0()).await, StatusCode::OK);
        assert_eq!(f.post(2, t0()).await, StatusCode::OK);
        f.sink
            .fail_with(Some(SendError::Failed("disk full".into())));
        assert_eq!(f.post(3, t0()).await, StatusCode::SERVICE_UNAVAILABLE);
        f.sink.fail_with(None);
        // Vonage never retried the last part.
        let swept = f.channel().expire_concat(t0() + HOUR).await.unwrap();
        assert_eq!(
            swept,
            Swept {
                joined: 1,
                ..Swept::default()
            }
        );
        let entries: [LogEntry; 1] = f.sink.entries().try_into().unwrap();
        let [LogEntry::Event(event)] = entries else {
            panic!("one event: {:?}", f.sink.entries());
        };
        assert_eq!(event.content.unwrap().text, "part 1. part 2. part 3. ");
        assert_eq!(
            event.event_id,
            omni_model::event_id("acme-vonage", "0B00000012345601").to_string()
        );
        assert!(f.keys().is_empty(), "{:?}", f.keys());
    }

    #[tokio::test]
    async fn a_joined_set_leaves_nothing_behind_and_sets_expire_in_due_order() {
        let f = Fixture::new();
        for part in [2, 3, 1] {
            assert_eq!(f.post(part, t0()).await, StatusCode::OK);
        }
        assert_eq!(f.sink.entries().len(), 1);
        assert!(f.keys().is_empty(), "joined and cleared: {:?}", f.keys());

        // Two more sets: the one due first expires alone.
        let other = |reference: &str, at: SystemTime| {
            let set = ConcatSet {
                msisdn: "+447911123402".into(),
                reference: reference.into(),
                total: 2,
            };
            let mut update = StateUpdate::default();
            update.puts.push((
                part_key(&set, 1),
                serde_json::to_vec(&vec![("text".to_owned(), reference.to_owned())]).unwrap(),
            ));
            update.puts.extend(f.channel().schedule(&set, at).unwrap());
            f.store.commit("acme-vonage", &update).unwrap();
        };
        other("late", t0() + 2 * HOUR);
        other("early", t0() + HOUR);
        let swept = f
            .channel()
            .expire_concat(t0() + 2 * HOUR + Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(swept.dead_lettered, 1);
        let [dead] = f.dead_letters().try_into().unwrap();
        assert_eq!(texts(&dead.raw_payload), ["early"]);
        assert_eq!(f.keys().len(), 3, "the later set is untouched");
    }

    #[tokio::test]
    async fn parts_an_older_version_stored_are_adopted_and_its_leftovers_removed() {
        let f = Fixture::new();
        let set = |reference: &str| ConcatSet {
            msisdn: "+447911123401".into(),
            reference: reference.into(),
            total: 2,
        };
        let mut legacy = StateUpdate::default();
        // 100 joined sets' emptied parts, and one set still waiting.
        for reference in 0..100 {
            for number in 1..=2 {
                legacy
                    .puts
                    .push((part_key(&set(&reference.to_string()), number), Vec::new()));
            }
        }
        let waiting = serde_json::to_vec(&vec![
            ("messageId".to_owned(), "0C01".to_owned()),
            ("text".to_owned(), "half".to_owned()),
        ])
        .unwrap();
        legacy.puts.push((part_key(&set("w"), 2), waiting));
        f.store.commit("acme-vonage", &legacy).unwrap();

        assert_eq!(f.channel().adopt_legacy_parts(t0()).await.unwrap(), 1);
        let mut keys = f.keys();
        keys.sort();
        assert_eq!(
            keys,
            [
                due_key(millis(t0() + HOUR), &set("w")),
                set_key(&set("w")),
                part_key(&set("w"), 2),
            ]
        );
        // Again (the next start): nothing new to adopt.
        assert_eq!(f.channel().adopt_legacy_parts(t0()).await.unwrap(), 0);
        let swept = f.channel().expire_concat(t0() + HOUR).await.unwrap();
        assert_eq!(swept.dead_lettered, 1);
        assert!(f.keys().is_empty(), "{:?}", f.keys());
    }

    #[tokio::test]
    async fn the_channel_loop_sweeps_at_start_and_stops_on_shutdown() {
        let f = Fixture::new();
        let long_ago = SystemTime::now() - 2 * HOUR;
        assert_eq!(f.post(1, long_ago).await, StatusCode::OK);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(f.connector.clone().run(shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while f.dead_letters().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no sweep at start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the loop stops on shutdown")
            .unwrap()
            .unwrap();
        assert!(f.keys().is_empty(), "{:?}", f.keys());
    }
}
