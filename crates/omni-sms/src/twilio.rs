//! Twilio (`kind = "twilio"`): inbound SMS/MMS and status callbacks as
//! signed form posts, replies through the Messages REST API.
//!
//! Authentication: `X-Twilio-Signature` is
//! `base64(HMAC-SHA1(auth token, URL + every POST parameter's name and
//! value, sorted by name))`, where URL is the full URL Twilio called: the
//! channel's public webhook URL (from `http.public_base_url`, since the
//! daemon may sit behind a proxy) plus the query string as received.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use omni_connector::{
    ChannelContext, ConfigError, Delivered, DeliveryError, FetchError, Fetched, MediaFetcher,
    MediaRef, OutboundHandler, ParseError, Parsed, Refusal, Secret, SecretRef, WebhookChannel,
    WebhookConnector, WebhookDriver, WebhookRequest, WebhookResponse,
    driver::static_response,
    signature::{constant_time_eq, hmac},
};
use omni_model::Region;
use omni_proto::{
    Timestamp,
    v1::{
        Attachment, ChannelKind, Content, ConversationEvent, DeliveryState, DeliveryStatus,
        Direction, EventKind, ThreadingHints,
    },
};
use serde::Deserialize;

use crate::common::{self, Params, param};

/// The `kind` of Twilio channels.
pub const KIND: &str = "twilio";

/// The header Twilio signs requests with.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// The query parameter of status-callback URLs that names the outbound
/// event the status is about (set by [`TwilioSender`]; signed by Twilio as
/// part of the URL).
pub const OUTBOUND_EVENT_PARAM: &str = "omnid_outbound_event_id";

/// At most this many media items of one MMS are taken (Twilio allows 10).
pub const MAX_MEDIA: usize = 10;

/// Settings of one Twilio channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// The account SID (`AC...`): the user name of REST calls and media
    /// downloads.
    pub account_sid: String,

    /// The account's auth token: `{ env = "NAME" }` or `{ file = "PATH" }`.
    /// Verifies `X-Twilio-Signature` and authenticates REST calls.
    pub auth_token: SecretRef,

    /// Checks `X-Twilio-Signature` on every request (needs
    /// `http.public_base_url`). Off, anyone can post; logged as a warning
    /// at every load.
    #[serde(default = "default_true")]
    pub verify_signatures: bool,

    /// ISO 3166 region for numbers without a country code.
    #[serde(default)]
    pub default_region: Option<String>,

    /// The business's number (E.164) replies are sent from; one of `from`
    /// and `messaging_service_sid` is needed to send.
    #[serde(default)]
    pub from: Option<String>,

    /// A Messaging Service SID (`MG...`) to send replies through instead of
    /// a fixed `from` number.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,

    /// Base URL of the REST API (tests point it at a local server).
    #[serde(default = "default_api_base")]
    pub api_base: String,

    /// Bound (seconds) on each REST call and media download.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,

    /// Downloads MMS media into the attachment store once the message is
    /// durable (the message is answered at once, its files follow); off,
    /// events keep Twilio's media URLs.
    #[serde(default = "default_true")]
    pub fetch_media: bool,

    /// Media larger than this (bytes) is not downloaded; the event keeps
    /// its Twilio URL instead.
    #[serde(default = "default_max_media_bytes")]
    pub max_media_bytes: u64,

    /// Asks Twilio to post status callbacks of sent replies to this
    /// channel's webhook (needs `http.public_base_url`), so their delivery
    /// and failure come back as delivery-status events.
    #[serde(default = "default_true")]
    pub status_callbacks: bool,
}

const fn default_true() -> bool {
    true
}

fn default_api_base() -> String {
    "https://api.twilio.com".to_owned()
}

const fn default_timeout_secs() -> u64 {
    30
}

const fn default_max_media_bytes() -> u64 {
    5 * 1024 * 1024
}

/// The HMAC-SHA1 Twilio signs a form post with: under the auth token, of
/// the URL followed by each parameter's name and value, sorted by name
/// (then value, for repeated names).
fn signature_bytes(auth_token: &[u8], url: &str, params: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + 2 * sorted.len());
    parts.push(url.as_bytes());
    for (name, value) in sorted {
        parts.push(name.as_bytes());
        parts.push(value.as_bytes());
    }
    hmac::<sha1::Sha1>(auth_token, &parts)
}

/// Twilio's signature of a form post, as `X-Twilio-Signature` carries it
/// (base64).
pub fn signature(auth_token: &[u8], url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD.encode(signature_bytes(auth_token, url, params))
}

/// Whether `provided` (the header's base64) is Twilio's signature of the
/// post; compared as bytes, in constant time.
pub fn verify(auth_token: &[u8], url: &str, params: &[(String, String)], provided: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(provided.trim())
        .is_ok_and(|provided| {
            constant_time_eq(&signature_bytes(auth_token, url, params), &provided)
        })
}

/// What normalization needs to know about the channel.
#[derive(Debug, Clone)]
pub struct NormalizeOptions<'a> {
    pub channel_id: &'a str,
    pub default_region: Option<Region>,
    pub received_at: Timestamp,
}

/// One media item an MMS announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub url: String,
    pub media_type: String,
}

/// What a Twilio post is.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A customer's message, with its media still to fetch (the event's
    /// attachments name the Twilio URLs until then).
    Message {
        event: Box<ConversationEvent>,
        media: Vec<Media>,
    },
    /// A status callback of a message we sent.
    Status(Box<ConversationEvent>),
}

impl Inbound {
    /// What the post asks of the log: the event, with a [`MediaRef`] per
    /// file to download (attachment `i` is `MediaUrl{i}`) when `fetch_media`.
    pub fn into_parsed(self, fetch_media: bool) -> Parsed {
        match self {
            Inbound::Message { event, media } => {
                let refs = if fetch_media {
                    media
                        .into_iter()
                        .zip(0u32..)
                        .map(|(item, attachment)| MediaRef {
                            attachment,
                            source: item.url,
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                Parsed::inbound(vec![omni_connector::Inbound::new(*event).with_media(refs)])
            }
            Inbound::Status(event) => Parsed::event(*event),
        }
    }
}

fn required<'a>(params: &'a [(String, String)], name: &str) -> Result<&'a str, ParseError> {
    param(params, name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ParseError::new("missing_field", format!("{name}: required")))
}

/// Normalizes a Twilio post (an inbound message or a status callback).
/// `outbound_event_id` is the id the status-callback URL carried.
pub fn parse(
    params: &Params,
    outbound_event_id: Option<&str>,
    options: &NormalizeOptions<'_>,
) -> Result<Inbound, ParseError> {
    let sid = required(params, "MessageSid")
        .or_else(|_| required(params, "SmsSid"))
        .map_err(|_| ParseError::new("missing_field", "MessageSid: required"))?;
    if sid.len() > 64 || !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ParseError::new(
            "invalid_field",
            "MessageSid: not a Twilio SID",
        ));
    }
    let status = param(params, "MessageStatus")
        .or_else(|| param(params, "SmsStatus"))
        .unwrap_or("received")
        .trim()
        .to_ascii_lowercase();
    if status != "received" {
        return parse_status(params, sid, &status, outbound_event_id, options).map(Inbound::Status);
    }

    let sender = common::phone(
        "From",
        required(params, "From")?,
        options.default_region,
        true,
    )?;
    let recipients = match param(params, "To").filter(|to| !to.trim().is_empty()) {
        Some(to) => vec![common::phone("To", to, options.default_region, false)?],
        None => Vec::new(),
    };
    let num_media: usize = param(params, "NumMedia")
        .unwrap_or("0")
        .trim()
        .parse()
        .map_err(|_| ParseError::new("invalid_field", "NumMedia: not a number"))?;
    if num_media > MAX_MEDIA {
        return Err(ParseError::new(
            "invalid_field",
            format!("NumMedia: at most {MAX_MEDIA}"),
        ));
    }
    let mut media = Vec::with_capacity(num_media);
    for i in 0..num_media {
        let url = required(params, &format!("MediaUrl{i}"))?;
        if !url.starts_with("https://") && !url.starts_with("http://") || url.len() > 2048 {
            return Err(ParseError::new(
                "invalid_field",
                format!("MediaUrl{i}: an http(s) URL of at most 2048 bytes"),
            ));
        }
        media.push(Media {
            url: url.to_owned(),
            media_type: param(params, &format!("MediaContentType{i}"))
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase(),
        });
    }
    let text = param(params, "Body").unwrap_or_default().to_owned();
    if text.trim().is_empty() && media.is_empty() {
        return Err(ParseError::new(
            "invalid_field",
            "Body: a message needs a body or media",
        ));
    }
    let attachments = media
        .iter()
        .map(|m| Attachment {
            name: String::new(),
            media_type: m.media_type.clone(),
            size: 0,
            sha256: String::new(),
            uri: m.url.clone(),
        })
        .collect();
    let event = ConversationEvent {
        event_id: omni_model::event_id(options.channel_id, sid).to_string(),
        channel_id: options.channel_id.to_owned(),
        channel_kind: ChannelKind::Sms as i32,
        direction: Direction::Inbound as i32,
        kind: EventKind::Message as i32,
        sender: Some(sender),
        recipients,
        provider_message_id: sid.to_owned(),
        sent_at: None,
        received_at: Some(options.received_at),
        ingested_at: Some(options.received_at),
        content: Some(Content {
            text,
            attachments,
            ..Default::default()
        }),
        threading: Some(ThreadingHints::default()),
        provider_metadata: metadata(
            params,
            &[
                "AccountSid",
                "MessagingServiceSid",
                "NumSegments",
                "NumMedia",
                "FromCountry",
                "ToCountry",
            ],
        ),
        delivery: None,
        ..Default::default()
    };
    Ok(Inbound::Message {
        event: Box::new(event),
        media,
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

/// The normalized state of a Twilio message status.
pub fn delivery_state(status: &str) -> Option<DeliveryState> {
    Some(match status {
        "accepted" | "scheduled" | "queued" | "sending" | "sent" => DeliveryState::Sent,
        "delivered" => DeliveryState::Delivered,
        "read" => DeliveryState::Read,
        "undelivered" | "failed" | "canceled" => DeliveryState::Failed,
        _ => return None,
    })
}

fn parse_status(
    params: &Params,
    sid: &str,
    status: &str,
    outbound_event_id: Option<&str>,
    options: &NormalizeOptions<'_>,
) -> Result<Box<ConversationEvent>, ParseError> {
    let state = delivery_state(status).ok_or_else(|| {
        ParseError::new(
            "invalid_field",
            format!(
                "MessageStatus: unknown status {:?}",
                status.chars().take(32).collect::<String>()
            ),
        )
    })?;
    // Our number sent it; the customer is the recipient. Either may be
    // missing from a callback; an unparseable one is left out rather than
    // losing the status.
    let sender = param(params, "From")
        .and_then(|from| common::phone("From", from, options.default_region, false).ok());
    let recipients = param(params, "To")
        .and_then(|to| common::phone("To", to, options.default_region, false).ok())
        .into_iter()
        .collect();
    let error = match param(params, "ErrorCode").map(str::trim) {
        Some(code) if !code.is_empty() && code != "0" => match param(params, "ErrorMessage") {
            Some(message) if !message.is_empty() => format!("{code}: {message}"),
            _ => code.to_owned(),
        },
        _ => String::new(),
    };
    let outbound_event_id = outbound_event_id.unwrap_or_default();
    Ok(Box::new(ConversationEvent {
        // One event per (message, status): a retried callback dedupes, a
        // later status is a new event.
        event_id: omni_model::event_id(options.channel_id, &format!("status:{sid}:{status}"))
            .to_string(),
        channel_id: options.channel_id.to_owned(),
        channel_kind: ChannelKind::Sms as i32,
        direction: Direction::Outbound as i32,
        kind: EventKind::DeliveryStatus as i32,
        sender,
        recipients,
        provider_message_id: sid.to_owned(),
        sent_at: None,
        received_at: Some(options.received_at),
        ingested_at: Some(options.received_at),
        content: None,
        threading: None,
        provider_metadata: metadata(params, &["AccountSid", "MessagingServiceSid", "ErrorCode"]),
        delivery: Some(DeliveryStatus {
            outbound_event_id: outbound_event_id.to_owned(),
            state: state as i32,
            provider_status: status.to_owned(),
            error,
        }),
        ..Default::default()
    }))
}

/// The empty TwiML document Twilio expects: "received, nothing to do".
fn twiml_ok() -> WebhookResponse {
    static_response(
        StatusCode::OK,
        "text/xml",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>",
    )
}

/// Builds one Twilio channel: its webhook, its media downloader when
/// `fetch_media`, and its sender when configured.
pub fn build(
    context: ChannelContext,
    config: TwilioConfig,
) -> Result<WebhookConnector, ConfigError> {
    let token = config
        .auth_token
        .resolve()
        .map_err(|e| ConfigError::new("auth_token", e))?;
    if config.account_sid.trim().is_empty() {
        return Err(ConfigError::new("account_sid", "must not be empty"));
    }
    if config.timeout_secs == 0 {
        return Err(ConfigError::new("timeout_secs", "must be at least 1"));
    }
    if !config.api_base.starts_with("https://") && !config.api_base.starts_with("http://") {
        return Err(ConfigError::new("api_base", "an http(s) URL"));
    }
    let webhook_url = context.webhook_url();
    if config.verify_signatures && webhook_url.is_none() {
        return Err(ConfigError::new(
            "verify_signatures",
            "Twilio signs the public URL it calls: set http.public_base_url in the daemon's config",
        ));
    }
    let default_region = common::region(config.default_region.as_deref())?;
    let timeout = Duration::from_secs(config.timeout_secs);
    let client = common::http_client(timeout, "timeout_secs")?;
    let credentials = Credentials {
        account_sid: config.account_sid.trim().to_owned(),
        token,
    };
    let outbound = match (&config.from, &config.messaging_service_sid) {
        (None, None) => None,
        (from, service) => Some(Arc::new(TwilioSender {
            client: client.clone(),
            credentials: credentials.clone(),
            url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                config.api_base.trim_end_matches('/'),
                credentials.account_sid
            ),
            from: from.clone(),
            messaging_service_sid: service.clone(),
            status_callback: webhook_url.clone().filter(|_| config.status_callbacks),
        }) as Arc<dyn OutboundHandler>),
    };
    let media = config.fetch_media.then(|| {
        Arc::new(TwilioMedia {
            client,
            credentials: credentials.clone(),
            max_bytes: config.max_media_bytes,
            origin: origin(&config.api_base).unwrap_or_default(),
        }) as Arc<dyn MediaFetcher>
    });
    let channel = TwilioChannel {
        channel_id: context.channel_id.clone(),
        webhook_url: webhook_url.filter(|_| config.verify_signatures),
        credentials,
        default_region,
        fetch_media: config.fetch_media,
    };
    let webhook = WebhookDriver::new(&context, channel);
    Ok(WebhookConnector::new(Arc::new(webhook))
        .with_outbound(outbound)
        .with_media(media))
}

#[derive(Debug, Clone)]
struct Credentials {
    account_sid: String,
    token: Secret,
}

/// The webhook half of one Twilio channel. Every answer is the empty
/// TwiML, including the one to authentic posts that are not a message:
/// those are dead-lettered, and any other answer would only make Twilio
/// send them again.
#[derive(Debug)]
pub struct TwilioChannel {
    channel_id: String,
    /// The signed URL's base; None when verification is off.
    webhook_url: Option<String>,
    credentials: Credentials,
    default_region: Option<Region>,
    fetch_media: bool,
}

impl WebhookChannel for TwilioChannel {
    fn verifies(&self) -> bool {
        self.webhook_url.is_some()
    }

    fn verify(&self, request: &WebhookRequest) -> Result<(), Refusal> {
        let Some(base) = &self.webhook_url else {
            return Ok(());
        };
        let provided = request
            .header(SIGNATURE_HEADER)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Refusal::new("missing_signature", "X-Twilio-Signature is missing"))?;
        let url = match request.uri.query() {
            Some(query) => format!("{base}?{query}"),
            None => base.clone(),
        };
        let params = common::form_params(&request.body);
        if verify(self.credentials.token.expose(), &url, &params, provided) {
            Ok(())
        } else {
            Err(Refusal::new(
                "invalid_signature",
                "X-Twilio-Signature does not match",
            ))
        }
    }

    fn parse(&self, request: &WebhookRequest) -> Result<Parsed, ParseError> {
        let params = common::form_params(&request.body);
        let query = request
            .uri
            .query()
            .map(|q| common::form_params(q.as_bytes()));
        let outbound_event_id = query
            .as_deref()
            .and_then(|q| param(q, OUTBOUND_EVENT_PARAM))
            .filter(|id| id.len() <= 64);
        let options = NormalizeOptions {
            channel_id: &self.channel_id,
            default_region: self.default_region,
            received_at: common::timestamp(request.received_at),
        };
        parse(&params, outbound_event_id, &options)
            .map(|inbound| inbound.into_parsed(self.fetch_media))
    }

    fn accepted(&self, _event_ids: &[String]) -> WebhookResponse {
        twiml_ok()
    }

    fn invalid(&self, _error: &ParseError) -> WebhookResponse {
        twiml_ok()
    }
}

/// Downloads an MMS's files from Twilio (HTTP basic auth with the account
/// SID and auth token), for the media queue's worker.
#[derive(Debug)]
pub struct TwilioMedia {
    client: reqwest::Client,
    credentials: Credentials,
    max_bytes: u64,
    /// The origin of `api_base`: the only host the account's credentials
    /// are sent to. A media URL comes from the webhook's body, and a
    /// channel with verification off takes bodies from anyone.
    origin: String,
}

/// `scheme://host[:port]` of a URL, as reqwest spells it.
fn origin(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    Some(url.origin().ascii_serialization())
}

#[async_trait]
impl MediaFetcher for TwilioMedia {
    async fn fetch(&self, media: &MediaRef) -> Result<Fetched, FetchError> {
        let transport = |e: reqwest::Error| FetchError::Temporary(format!("twilio media: {e}"));
        if origin(&media.source).as_deref() != Some(self.origin.as_str()) {
            return Err(FetchError::Permanent(format!(
                "twilio media: the url is not on {}, so the credentials are not sent there",
                self.origin
            )));
        }
        let mut response = self
            .client
            .get(&media.source)
            .basic_auth(
                &self.credentials.account_sid,
                Some(String::from_utf8_lossy(self.credentials.token.expose())),
            )
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let detail = format!("twilio media: http status {status}");
            return Err(
                if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    FetchError::Temporary(detail)
                } else {
                    FetchError::Permanent(detail)
                },
            );
        }
        let too_large = || FetchError::Permanent(format!("larger than {} bytes", self.max_bytes));
        if response
            .content_length()
            .is_some_and(|len| len > self.max_bytes)
        {
            return Err(too_large());
        }
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            content: Bytes::from(body),
            media_type,
        })
    }
}

/// Sends replies with Twilio's Messages API.
#[derive(Debug)]
pub struct TwilioSender {
    client: reqwest::Client,
    credentials: Credentials,
    /// `{api_base}/2010-04-01/Accounts/{sid}/Messages.json`.
    url: String,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    /// The channel's webhook URL, for status callbacks.
    status_callback: Option<String>,
}

/// The parts of Twilio's answers we read.
#[derive(Debug, Deserialize)]
struct MessageResource {
    #[serde(default)]
    sid: String,
    #[serde(default)]
    status: String,
}

#[derive(Debug, Deserialize)]
struct ErrorResource {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: String,
}

#[async_trait]
impl OutboundHandler for TwilioSender {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError> {
        let to = common::outbound_phone(message)?;
        let text = common::outbound_text(message)?;
        let mut form: Vec<(&str, String)> = vec![("To", to), ("Body", text.to_owned())];
        if let Some(service) = &self.messaging_service_sid {
            form.push(("MessagingServiceSid", service.clone()));
        }
        if let Some(from) = &self.from {
            form.push(("From", from.clone()));
        }
        if let Some(callback) = &self.status_callback {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(OUTBOUND_EVENT_PARAM, &message.event_id)
                .finish();
            form.push(("StatusCallback", format!("{callback}?{query}")));
        }
        let response = self
            .client
            .post(&self.url)
            .basic_auth(
                &self.credentials.account_sid,
                Some(String::from_utf8_lossy(self.credentials.token.expose())),
            )
            .form(&form)
            .send()
            .await
            .map_err(|e| common::transport_error("twilio", &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .map_err(|e| common::transport_error("twilio", &e))?;
        if status.is_success() {
            let resource: MessageResource = serde_json::from_str(&body).map_err(|e| {
                DeliveryError::temporary(format!(
                    "twilio answered {status} with an unreadable body: {e}"
                ))
            })?;
            return Ok(Delivered {
                provider_message_id: resource.sid,
                provider_status: resource.status,
            });
        }
        let detail = match serde_json::from_str::<ErrorResource>(&body) {
            Ok(ErrorResource {
                code: Some(code),
                message,
            }) => format!("twilio {status}: error {code}: {message}"),
            _ => format!("twilio {status}: {}", common::snippet(&body, 200)),
        };
        Err(common::classify_status(status, &headers, detail))
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

    #[test]
    fn documented_example_signature() {
        // The example of Twilio's webhook security documentation.
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            signature(
                b"12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn statuses_map_to_states() {
        assert_eq!(delivery_state("queued"), Some(DeliveryState::Sent));
        assert_eq!(delivery_state("delivered"), Some(DeliveryState::Delivered));
        assert_eq!(delivery_state("undelivered"), Some(DeliveryState::Failed));
        assert_eq!(delivery_state("failed"), Some(DeliveryState::Failed));
        assert_eq!(delivery_state("exploded"), None);
    }
}
