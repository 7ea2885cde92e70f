//! The webhook driver: the one skeleton every push channel runs in, after
//! Vector's HTTP source prelude. A channel fills in only what differs (how
//! its provider signs, what its payload means, what answer its provider
//! expects); the driver owns everything else, the same way for every
//! channel:
//!
//! 1. the method check (405 with `Allow`);
//! 2. authentication before anything is parsed (403, nothing stored);
//! 3. parsing; authentic input that is not a message becomes a dead-letter
//!    record, never an ignored 2xx;
//! 4. the optional enrich step (channel state, lookups);
//! 5. appending, and the 2xx only once every entry is durable; a log that
//!    did not take an entry answers 503 with `Retry-After`, so the provider
//!    keeps the message and retries;
//! 6. deferring the message's files to the media queue;
//! 7. one internal event per request (log line, outcome counter, duration),
//!    and the loud warning when an admin turned verification off.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use omni_proto::v1::{ChannelKind, ConversationEvent};
use omni_telemetry::emit;

use crate::{
    connector::ChannelContext,
    events::{DeadLettered, WebhookMetrics, WebhookOutcome},
    media::{MediaJob, MediaQueue, MediaRef},
    parse::ParseError,
    sender::{EventSender, SendError, dead_letter},
    webhook::{
        WebhookHandler, WebhookRequest, WebhookResponse, error_response, finish,
        unavailable_response,
    },
};

/// How long a provider should wait before retrying after a 503.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a request is not authentic: answered 403, nothing is stored. `code`
/// is bounded and stable (the error body's code, the log's detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// One message of a request, with the files still to download.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub event: ConversationEvent,
    /// Files the driver hands to the media queue once the event is
    /// durable; each names the attachment it fills in.
    pub media: Vec<MediaRef>,
}

impl Inbound {
    pub fn new(event: ConversationEvent) -> Self {
        Self {
            event,
            media: Vec::new(),
        }
    }

    pub fn with_media(mut self, media: Vec<MediaRef>) -> Self {
        self.media = media;
        self
    }
}

/// A part of a request that is authentic but unreadable (one bad entry of
/// a batch): kept on the dead-letter topic while the rest is appended.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub error: ParseError,
    /// The part's own bytes (the whole body when there is no finer part).
    pub raw: Vec<u8>,
}

/// What an authentic request asks of the log.
#[derive(Debug)]
pub enum Parsed {
    /// Entries to append in order; answered with the channel's
    /// [`WebhookChannel::accepted`] once all are durable.
    Append {
        events: Vec<Inbound>,
        unreadable: Vec<Unreadable>,
    },
    /// Nothing to store; answer at once. For what a provider sends that is
    /// not a message by design: a URL check's challenge, a message part the
    /// channel keeps in its durable state until the rest arrives.
    Answer(WebhookResponse),
}

impl Parsed {
    /// One message.
    pub fn event(event: ConversationEvent) -> Self {
        Self::inbound(vec![Inbound::new(event)])
    }

    /// Messages, in order.
    pub fn inbound(events: Vec<Inbound>) -> Self {
        Self::Append {
            events,
            unreadable: Vec::new(),
        }
    }
}

/// Why the enrich step did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrichError {
    /// The input turned out unreadable: dead-lettered like a parse error.
    #[error(transparent)]
    Invalid(#[from] ParseError),
    /// A dependency failed (the channel's state store, a lookup): 503 with
    /// Retry-After, so the provider retries.
    #[error("{0}")]
    Unavailable(String),
}

/// A push channel's provider-specific half. `verify` and `parse` are pure
/// (no I/O), so they are unit tested on recorded payloads and fuzzed;
/// `enrich` is the one place a channel does I/O before the append.
#[async_trait]
pub trait WebhookChannel: Send + Sync + std::fmt::Debug + 'static {
    /// The methods the provider uses; others are answered 405. Providers
    /// that check the URL with a GET (WeChat, Meta) add it.
    fn methods(&self) -> &'static [Method] {
        &[Method::POST]
    }

    /// Whether `verify` authenticates anything: `false` only when an admin
    /// turned verification off, which the driver logs loudly at every load.
    fn verifies(&self) -> bool;

    /// Checks the provider's signature or token, in constant time.
    fn verify(&self, request: &WebhookRequest) -> Result<(), Refusal>;

    /// Turns an authentic request into what it asks of the log.
    fn parse(&self, request: &WebhookRequest) -> Result<Parsed, ParseError>;

    /// I/O between parse and append, when a channel needs it.
    async fn enrich(
        &self,
        _request: &WebhookRequest,
        parsed: Parsed,
    ) -> Result<Parsed, EnrichError> {
        Ok(parsed)
    }

    /// Called once every entry of the request is durable, before the
    /// answer: for channel state that may only change after the log holds
    /// the message (buffered message parts are cleared here, never
    /// before). The message is stored whatever happens here, so a failure
    /// is the channel's to log.
    async fn appended(&self, _request: &WebhookRequest, _event_ids: &[String]) {}

    /// The provider's expected answer once every entry is durable.
    fn accepted(&self, event_ids: &[String]) -> WebhookResponse {
        accepted_response(event_ids)
    }

    /// The answer to authentic input that was dead-lettered. A 4xx by
    /// default; providers that stall on errors (Telegram holds every later
    /// update behind one it must redeliver) want a 2xx for real updates.
    fn invalid(&self, error: &ParseError) -> WebhookResponse {
        error_response(StatusCode::BAD_REQUEST, error.code, &error.message)
    }
}

/// Runs a [`WebhookChannel`] as a channel's [`WebhookHandler`].
#[derive(Debug)]
pub struct WebhookDriver<C> {
    channel: C,
    channel_id: String,
    channel_kind: ChannelKind,
    sender: EventSender,
    media: std::sync::Arc<dyn MediaQueue>,
    metrics: WebhookMetrics,
}

impl<C: WebhookChannel> WebhookDriver<C> {
    /// Wraps `channel`; warns now if its verification is off, so an admin
    /// sees it at every start and reload.
    pub fn new(context: &ChannelContext, channel: C) -> Self {
        if !channel.verifies() {
            tracing::warn!(
                channel = %context.channel_id,
                "signature verification is off: this channel accepts unauthenticated requests from anyone"
            );
        }
        Self {
            channel,
            channel_id: context.channel_id.clone(),
            channel_kind: context.channel_kind,
            sender: context.sender.clone(),
            media: context.media.clone(),
            metrics: WebhookMetrics::register(&context.channel_id),
        }
    }

    /// The channel inside, for its own tests.
    pub fn channel(&self) -> &C {
        &self.channel
    }

    async fn append(
        &self,
        started: Instant,
        request: &WebhookRequest,
        events: Vec<Inbound>,
        unreadable: Vec<Unreadable>,
    ) -> WebhookResponse {
        let mut event_ids = Vec::with_capacity(events.len());
        let mut jobs = Vec::new();
        let mut acks = Vec::with_capacity(events.len() + unreadable.len());
        // Submitted one after another (so they keep their order in the
        // log), awaited together.
        for inbound in events {
            let message = inbound.event;
            // The job names the channel as the driver knows it, whatever
            // the event says.
            jobs.extend(inbound.media.into_iter().map(|media| MediaJob {
                channel_id: self.channel_id.clone(),
                ..MediaJob::new(&message, media)
            }));
            event_ids.push(message.event_id.clone());
            acks.push(self.sender.send_event(message));
        }
        for part in &unreadable {
            acks.push(self.sender.send_dead_letter(self.dead_letter(
                request,
                &part.error,
                part.raw.clone(),
            )));
        }
        for ack in acks {
            if let Err(error) = ack.await {
                return self.storage_failure(started, error);
            }
        }
        for part in &unreadable {
            self.dead_lettered(&part.error);
        }
        if !jobs.is_empty()
            && let Err(error) = self.media.defer(jobs).await
        {
            return self.unavailable(started, "media_queue_unavailable", &error.to_string());
        }
        self.channel.appended(request, &event_ids).await;
        let response = self.channel.accepted(&event_ids);
        finish(
            &self.metrics,
            started,
            WebhookOutcome::Accepted,
            "",
            response,
        )
    }

    fn dead_letter(
        &self,
        request: &WebhookRequest,
        error: &ParseError,
        raw: Vec<u8>,
    ) -> omni_proto::v1::DeadLetter {
        let mut record = dead_letter(
            &self.channel_id,
            self.channel_kind,
            error.code,
            &error.message,
            raw,
            request
                .header("content-type")
                .unwrap_or("application/octet-stream"),
            omni_proto::timestamp(request.received_at),
        );
        record
            .metadata
            .insert("method".to_owned(), request.method.to_string());
        record
    }

    fn dead_lettered(&self, error: &ParseError) {
        emit!(DeadLettered {
            reason: error.code,
            detail: &error.message,
        } => &self.metrics);
    }

    /// Keeps the whole request on the dead-letter topic, then answers as
    /// the channel says (or 503 if the record is not durable).
    async fn reject(
        &self,
        started: Instant,
        request: &WebhookRequest,
        error: ParseError,
    ) -> WebhookResponse {
        let record = self.dead_letter(request, &error, request.body.to_vec());
        match self.sender.send_dead_letter(record).await {
            Ok(_) => {
                self.dead_lettered(&error);
                let response = self.channel.invalid(&error);
                finish(
                    &self.metrics,
                    started,
                    WebhookOutcome::Invalid,
                    error.code,
                    response,
                )
            }
            Err(send_error) => self.storage_failure(started, send_error),
        }
    }

    fn storage_failure(&self, started: Instant, error: SendError) -> WebhookResponse {
        let (outcome, code) = match error {
            SendError::Overloaded => (WebhookOutcome::Overloaded, "overloaded"),
            SendError::Closed => (WebhookOutcome::Failed, "shutting_down"),
            SendError::Failed(_) => (WebhookOutcome::Failed, "storage_unavailable"),
        };
        let response =
            unavailable_response(code, "the message was not stored; retry later", RETRY_AFTER);
        finish(
            &self.metrics,
            started,
            outcome,
            &error.to_string(),
            response,
        )
    }

    fn unavailable(&self, started: Instant, code: &str, detail: &str) -> WebhookResponse {
        let response =
            unavailable_response(code, "the message was not stored; retry later", RETRY_AFTER);
        finish(
            &self.metrics,
            started,
            WebhookOutcome::Failed,
            detail,
            response,
        )
    }
}

#[async_trait]
impl<C: WebhookChannel> WebhookHandler for WebhookDriver<C> {
    async fn handle(&self, request: WebhookRequest) -> WebhookResponse {
        let started = Instant::now();
        let methods = self.channel.methods();
        if !methods.contains(&request.method) {
            let allowed: Vec<&str> = methods.iter().map(Method::as_str).collect();
            let allowed = allowed.join(", ");
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("use {allowed}"),
            );
            if let Ok(value) = HeaderValue::from_str(&allowed) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            return finish(
                &self.metrics,
                started,
                WebhookOutcome::Invalid,
                "method not allowed",
                response,
            );
        }
        if let Err(refusal) = self.channel.verify(&request) {
            let response = error_response(StatusCode::FORBIDDEN, refusal.code, &refusal.message);
            return finish(
                &self.metrics,
                started,
                WebhookOutcome::Unauthenticated,
                refusal.code,
                response,
            );
        }
        let parsed = match self.channel.parse(&request) {
            Ok(parsed) => parsed,
            Err(error) => return self.reject(started, &request, error).await,
        };
        let parsed = match self.channel.enrich(&request, parsed).await {
            Ok(parsed) => parsed,
            Err(EnrichError::Invalid(error)) => return self.reject(started, &request, error).await,
            Err(EnrichError::Unavailable(detail)) => {
                return self.unavailable(started, "state_unavailable", &detail);
            }
        };
        match parsed {
            Parsed::Answer(response) => finish(
                &self.metrics,
                started,
                WebhookOutcome::Accepted,
                "",
                response,
            ),
            Parsed::Append { events, unreadable } => {
                self.append(started, &request, events, unreadable).await
            }
        }
    }
}

/// The default answer to a stored request: `{"event_id": "..."}` for one
/// event, `{"event_ids": [...]}` for several. Serialized straight from the
/// ids, without building a JSON tree first (this is every message's
/// answer).
pub fn accepted_response(event_ids: &[String]) -> WebhookResponse {
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Accepted<'a> {
        One { event_id: &'a str },
        Many { event_ids: &'a [String] },
    }
    let accepted = match event_ids {
        [one] => Accepted::One { event_id: one },
        many => Accepted::Many { event_ids: many },
    };
    // Strings always serialize; an empty body would still be a 200 for a
    // stored message, never a lost one.
    let body = serde_json::to_vec(&accepted).unwrap_or_default();
    let mut response = http::Response::new(Bytes::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A response with a fixed body and content type, for providers that
/// expect a particular document (TwiML, `success`).
pub fn static_response(
    status: StatusCode,
    content_type: &'static str,
    body: &'static str,
) -> WebhookResponse {
    let mut response = http::Response::new(Bytes::from_static(body.as_bytes()));
    *response.status_mut() = status;
    if !content_type.is_empty() {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::SystemTime};

    use super::*;
    use crate::{
        LogEntry,
        media::MemoryMediaQueue,
        signature::{hmac_sha256, verify_hmac_sha256_hex},
        testing::MemorySink,
    };

    /// A channel as small as a real one: HMAC-SHA256 of the body in a
    /// header, one line of `id:text` per message, `!` lines unreadable,
    /// `media=` naming one file.
    #[derive(Debug)]
    struct LineChannel {
        key: Option<Vec<u8>>,
    }

    impl WebhookChannel for LineChannel {
        fn verifies(&self) -> bool {
            self.key.is_some()
        }

        fn verify(&self, request: &WebhookRequest) -> Result<(), Refusal> {
            let Some(key) = &self.key else { return Ok(()) };
            let given = request
                .header("x-signature")
                .ok_or_else(|| Refusal::new("missing_signature", "no signature"))?;
            if verify_hmac_sha256_hex(key, &[&request.body], given) {
                Ok(())
            } else {
                Err(Refusal::new("invalid_signature", "signature mismatch"))
            }
        }

        fn parse(&self, request: &WebhookRequest) -> Result<Parsed, ParseError> {
            let text = std::str::from_utf8(&request.body)
                .map_err(|_| ParseError::new("invalid_utf8", "not text"))?;
            if text.trim() == "ping" {
                return Ok(Parsed::Answer(static_response(
                    StatusCode::OK,
                    "text/plain",
                    "pong",
                )));
            }
            let mut events = Vec::new();
            let mut unreadable = Vec::new();
            for line in text.lines() {
                if line.starts_with('!') {
                    unreadable.push(Unreadable {
                        error: ParseError::new("bad_line", "a line starting with !"),
                        raw: line.as_bytes().to_vec(),
                    });
                    continue;
                }
                let (id, rest) = line
                    .split_once(':')
                    .ok_or_else(|| ParseError::new("no_colon", "expected id:text"))?;
                let event = ConversationEvent {
                    event_id: format!("ev-{id}"),
                    ..Default::default()
                };
                let media = rest
                    .strip_prefix("media=")
                    .map(|source| {
                        vec![MediaRef {
                            attachment: 0,
                            source: source.to_owned(),
                        }]
                    })
                    .unwrap_or_default();
                events.push(Inbound::new(event).with_media(media));
            }
            Ok(Parsed::Append { events, unreadable })
        }
    }

    struct Fixture {
        sink: MemorySink,
        media: MemoryMediaQueue,
        driver: WebhookDriver<LineChannel>,
    }

    const KEY: &[u8] = b"k3y";

    fn fixture(verify: bool) -> Fixture {
        let sink = MemorySink::default();
        let media = MemoryMediaQueue::default();
        let mut context = ChannelContext::new("lines", EventSender::new(Arc::new(sink.clone())));
        context.channel_kind = ChannelKind::Api;
        context.media = Arc::new(media.clone());
        let channel = LineChannel {
            key: verify.then(|| KEY.to_vec()),
        };
        Fixture {
            driver: WebhookDriver::new(&context, channel),
            sink,
            media,
        }
    }

    fn request(method: Method, body: &str, signed: bool) -> WebhookRequest {
        let mut headers = http::HeaderMap::new();
        if signed {
            let signature = hex::encode(hmac_sha256(KEY, &[body.as_bytes()]));
            headers.insert("x-signature", signature.parse().unwrap());
        }
        headers.insert("content-type", "text/plain".parse().unwrap());
        WebhookRequest {
            method,
            uri: "/webhooks/lines".parse().unwrap(),
            headers,
            body: Bytes::from(body.to_owned()),
            received_at: SystemTime::now(),
            public_url: None,
        }
    }

    fn json(response: &WebhookResponse) -> serde_json::Value {
        serde_json::from_slice(response.body()).unwrap()
    }

    #[test]
    fn accepted_answers_name_the_stored_events() {
        let one = accepted_response(&["ev-1".to_owned()]);
        assert_eq!(one.status(), StatusCode::OK);
        assert_eq!(one.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(one.body().as_ref(), br#"{"event_id":"ev-1"}"#);
        let many = accepted_response(&["a".to_owned(), "b\"c".to_owned()]);
        assert_eq!(many.body().as_ref(), br#"{"event_ids":["a","b\"c"]}"#);
        assert_eq!(
            accepted_response(&[]).body().as_ref(),
            br#"{"event_ids":[]}"#
        );
    }

    #[tokio::test]
    async fn wrong_method_is_405_with_allow() {
        let f = fixture(true);
        let response = f.driver.handle(request(Method::PUT, "1:a", true)).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "POST");
        assert!(f.sink.entries().is_empty());
    }

    #[tokio::test]
    async fn unauthenticated_is_403_and_stores_nothing() {
        let f = fixture(true);
        let unsigned = f.driver.handle(request(Method::POST, "1:a", false)).await;
        assert_eq!(unsigned.status(), StatusCode::FORBIDDEN);
        assert_eq!(json(&unsigned)["error"]["code"], "missing_signature");
        let mut forged = request(Method::POST, "1:a", true);
        forged.body = Bytes::from_static(b"1:b");
        let forged = f.driver.handle(forged).await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        assert_eq!(json(&forged)["error"]["code"], "invalid_signature");
        assert!(f.sink.entries().is_empty());
        assert!(f.media.jobs().is_empty());
    }

    #[tokio::test]
    async fn accepted_only_after_every_entry_is_durable() {
        let f = fixture(true);
        let response = f
            .driver
            .handle(request(Method::POST, "1:a\n!x\n2:media=file-9", true))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            json(&response)["event_ids"],
            serde_json::json!(["ev-1", "ev-2"])
        );
        let entries = f.sink.entries();
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert!(matches!(&entries[0], LogEntry::Event(e) if e.event_id == "ev-1"));
        assert!(matches!(&entries[1], LogEntry::Event(e) if e.event_id == "ev-2"));
        let LogEntry::DeadLetter(dead) = &entries[2] else {
            panic!("{entries:?}")
        };
        assert_eq!(dead.reason, "bad_line");
        assert_eq!(dead.raw_payload, b"!x");
        assert_eq!(dead.channel_kind, ChannelKind::Api as i32);
        assert_eq!(
            f.media.jobs(),
            [MediaJob {
                channel_id: "lines".into(),
                event_id: "ev-2".into(),
                media: MediaRef {
                    attachment: 0,
                    source: "file-9".into()
                },
                channel_kind: ChannelKind::Unspecified,
                sender: None,
            }]
        );
    }

    #[tokio::test]
    async fn log_failure_is_503_with_retry_after_and_defers_no_media() {
        let f = fixture(true);
        f.sink
            .fail_with(Some(SendError::Failed("disk full".into())));
        let response = f
            .driver
            .handle(request(Method::POST, "1:media=f", true))
            .await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(json(&response)["error"]["code"], "storage_unavailable");
        assert!(f.media.jobs().is_empty());

        f.sink.fail_with(Some(SendError::Overloaded));
        let response = f.driver.handle(request(Method::POST, "1:a", true)).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json(&response)["error"]["code"], "overloaded");
    }

    #[tokio::test]
    async fn unreadable_request_is_dead_lettered_whole() {
        let f = fixture(true);
        let response = f
            .driver
            .handle(request(Method::POST, "no colon", true))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json(&response)["error"]["code"], "no_colon");
        let entries = f.sink.entries();
        let [LogEntry::DeadLetter(dead)] = entries.as_slice() else {
            panic!("{entries:?}")
        };
        assert_eq!(dead.raw_payload, b"no colon");
        assert_eq!(dead.content_type, "text/plain");
        assert_eq!(dead.metadata["method"], "POST");
        assert_eq!(
            dead.dead_letter_id,
            crate::dead_letter_id("lines", b"no colon")
        );
    }

    #[tokio::test]
    async fn answers_need_no_append_and_verification_can_be_off() {
        let f = fixture(false);
        let response = f.driver.handle(request(Method::POST, "ping", false)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body().as_ref(), b"pong");
        assert!(f.sink.entries().is_empty());
        let response = f.driver.handle(request(Method::POST, "7:x", false)).await;
        assert_eq!(json(&response)["event_id"], "ev-7");
    }
}
