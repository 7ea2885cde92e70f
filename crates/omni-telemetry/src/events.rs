//! Internal events: one struct per thing that happens, each emitting its log
//! line and metrics together.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use tracing::{debug, error, info, warn};

/// Metric names, in one place so dashboards and docs can rely on them.
pub mod names {
    pub const WEBHOOK_REQUESTS_TOTAL: &str = "omnid_webhook_requests_total";
    pub const WEBHOOK_DURATION_SECONDS: &str = "omnid_webhook_duration_seconds";
    pub const LOG_APPENDS_TOTAL: &str = "omnid_log_appends_total";
    pub const LOG_APPEND_ERRORS_TOTAL: &str = "omnid_log_append_errors_total";
    pub const DEAD_LETTERS_TOTAL: &str = "omnid_dead_letters_total";
    pub const CONFIG_RELOADS_TOTAL: &str = "omnid_config_reloads_total";
    pub const IMAP_MESSAGES_TOTAL: &str = "omnid_imap_messages_total";
    pub const IMAP_SESSION_ERRORS_TOTAL: &str = "omnid_imap_session_errors_total";
    pub const IMAP_CHECKPOINT_UID: &str = "omnid_imap_checkpoint_uid";
    pub const OUTBOUND_DELIVERIES_TOTAL: &str = "omnid_outbound_deliveries_total";
    pub const OUTBOUND_REQUESTS_TOTAL: &str = "omnid_outbound_requests_total";
    pub const THREADING_EVENTS_TOTAL: &str = "omnid_threading_events_total";
    pub const TIMELINE_PUBLISHED_TOTAL: &str = "omnid_timeline_published_total";
    pub const THREADING_COMMANDS_TOTAL: &str = "omnid_threading_commands_total";
    pub const MEDIA_DEFERRED_TOTAL: &str = "omnid_media_deferred_total";
    pub const MEDIA_FETCHED_TOTAL: &str = "omnid_media_fetched_total";
    pub const MEDIA_RETRIED_TOTAL: &str = "omnid_media_retried_total";
    pub const MEDIA_GIVEN_UP_TOTAL: &str = "omnid_media_given_up_total";
    pub const MEDIA_QUEUE_DEPTH: &str = "omnid_media_queue_depth";
    pub const HTTP_REFUSALS_TOTAL: &str = "omnid_http_refusals_total";
    pub const CHANNEL_UP: &str = "omnid_channel_up";
    pub const CHANNEL_RESTARTS_TOTAL: &str = "omnid_channel_restarts_total";
}

/// Bounds a log line that hostile clients can trigger at will: the first
/// occurrence is logged, then at most one per interval, carrying how many
/// were suppressed in between. Counters still count every occurrence.
#[derive(Debug)]
pub struct LogSampler {
    origin: Instant,
    interval_ms: u64,
    /// Milliseconds after `origin` before which nothing more is logged.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogSampler {
    /// The interval of refusal log lines.
    pub const REFUSAL_INTERVAL: Duration = Duration::from_secs(10);

    pub fn new(interval: Duration) -> Self {
        Self {
            origin: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when this occurrence is to be logged, with the
    /// number left unlogged since the previous line; `None` otherwise.
    pub fn sample(&self) -> Option<u64> {
        self.sample_at(self.origin.elapsed())
    }

    fn sample_at(&self, elapsed: Duration) -> Option<u64> {
        let now = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Why a webhook request ended the way it did. A closed set: these are the
/// `outcome` label values of `omnid_webhook_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Durable and acknowledged with a 2xx.
    Accepted,
    /// Signature or timestamp missing, wrong or stale.
    Unauthenticated,
    /// Authentic, but not a message we can normalize (also dead-lettered).
    Invalid,
    /// Body over the configured limit.
    TooLarge,
    /// Shed with 503 and Retry-After: the log's queue is full.
    Overloaded,
    /// The log failed to store the event.
    Failed,
}

impl WebhookOutcome {
    pub const ALL: [WebhookOutcome; 6] = [
        Self::Accepted,
        Self::Unauthenticated,
        Self::Invalid,
        Self::TooLarge,
        Self::Overloaded,
        Self::Failed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Unauthenticated => "unauthenticated",
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::Overloaded => "overloaded",
            Self::Failed => "failed",
        }
    }
}

/// Pre-registered webhook metrics of one channel.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    channel: String,
    outcomes: [Counter; WebhookOutcome::ALL.len()],
    /// One per outcome: anyone can send unsigned or oversized requests, so
    /// their log lines are sampled (a flood of one kind hides no other).
    logs: Arc<[LogSampler; WebhookOutcome::ALL.len()]>,
    duration: Histogram,
    dead_letters: Counter,
}

impl WebhookMetrics {
    pub fn register(channel: &str) -> Self {
        let outcomes = WebhookOutcome::ALL.map(|outcome| {
            counter!(names::WEBHOOK_REQUESTS_TOTAL, "channel" => channel.to_owned(), "outcome" => outcome.as_str())
        });
        Self {
            channel: channel.to_owned(),
            outcomes,
            logs: Arc::new(
                WebhookOutcome::ALL.map(|_| LogSampler::new(LogSampler::REFUSAL_INTERVAL)),
            ),
            duration: histogram!(names::WEBHOOK_DURATION_SECONDS, "channel" => channel.to_owned()),
            dead_letters: counter!(names::DEAD_LETTERS_TOTAL, "channel" => channel.to_owned()),
        }
    }
}

/// A webhook request finished.
#[derive(Debug)]
pub struct WebhookHandled<'a> {
    pub outcome: WebhookOutcome,
    pub elapsed: Duration,
    /// Detail for the log line only (never a label).
    pub detail: &'a str,
}

impl WebhookHandled<'_> {
    pub fn emit(&self, metrics: &WebhookMetrics) {
        let index = WebhookOutcome::ALL
            .iter()
            .position(|o| *o == self.outcome)
            .unwrap_or(0);
        metrics.outcomes[index].increment(1);
        metrics.duration.record(self.elapsed.as_secs_f64());
        let channel = metrics.channel.as_str();
        let outcome = self.outcome.as_str();
        match self.outcome {
            WebhookOutcome::Accepted => debug!(channel, outcome, "webhook accepted"),
            WebhookOutcome::Unauthenticated
            | WebhookOutcome::Invalid
            | WebhookOutcome::TooLarge => {
                if let Some(suppressed) = metrics.logs[index].sample() {
                    warn!(
                        channel,
                        outcome,
                        detail = self.detail,
                        suppressed,
                        "webhook rejected"
                    )
                }
            }
            WebhookOutcome::Overloaded => {
                warn!(channel, outcome, "webhook shed, event log overloaded")
            }
            WebhookOutcome::Failed => error!(
                channel,
                outcome,
                detail = self.detail,
                "webhook failed, event not stored"
            ),
        }
    }
}

/// An authentic input could not be normalized and was dead-lettered.
#[derive(Debug)]
pub struct DeadLettered<'a> {
    pub reason: &'a str,
    pub detail: &'a str,
}

impl DeadLettered<'_> {
    pub fn emit(&self, metrics: &WebhookMetrics) {
        metrics.dead_letters.increment(1);
        warn!(channel = %metrics.channel, reason = self.reason, detail = self.detail, "input dead-lettered");
    }
}

/// Why the HTTP listener turned a client away before any handler saw its
/// request. A closed set: the `reason` label values of
/// `omnid_http_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRefusal {
    /// `http.max_connections` connections were open; answered 503 and
    /// closed.
    ConnectionLimit,
    /// A new connection did not send a complete request head within
    /// `http.header_read_timeout_secs`; closed.
    HeaderTimeout,
    /// A request body did not arrive within `http.body_read_timeout_secs`;
    /// answered 408 and closed.
    BodyTimeout,
    /// `http.max_inflight_body_bytes` were reserved by unauthenticated
    /// bodies; answered 503 without reading the body.
    BodyBudget,
    /// The peer's share, `http.max_inflight_body_bytes_per_peer`, was
    /// reserved; answered 429 without reading the body.
    PeerBodyBudget,
}

impl HttpRefusal {
    pub const ALL: [HttpRefusal; 5] = [
        Self::ConnectionLimit,
        Self::HeaderTimeout,
        Self::BodyTimeout,
        Self::BodyBudget,
        Self::PeerBodyBudget,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLimit => "connection_limit",
            Self::HeaderTimeout => "header_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::BodyBudget => "body_budget",
            Self::PeerBodyBudget => "peer_body_budget",
        }
    }
}

/// Pre-registered refusal counters of the HTTP listener, and the samplers
/// bounding their log lines (one per reason).
#[derive(Debug, Clone)]
pub struct HttpRefusalMetrics {
    counters: [Counter; HttpRefusal::ALL.len()],
    logs: Arc<[LogSampler; HttpRefusal::ALL.len()]>,
}

impl HttpRefusalMetrics {
    pub fn register() -> Self {
        Self {
            counters: HttpRefusal::ALL
                .map(|reason| counter!(names::HTTP_REFUSALS_TOTAL, "reason" => reason.as_str())),
            logs: Arc::new(HttpRefusal::ALL.map(|_| LogSampler::new(LogSampler::REFUSAL_INTERVAL))),
        }
    }
}

/// The HTTP listener refused a connection or a request.
#[derive(Debug)]
pub struct HttpRefused<'a> {
    pub reason: HttpRefusal,
    pub peer: IpAddr,
    /// For the log line only (never a label).
    pub detail: &'a str,
}

impl HttpRefused<'_> {
    pub fn emit(&self, metrics: &HttpRefusalMetrics) {
        let index = HttpRefusal::ALL
            .iter()
            .position(|r| *r == self.reason)
            .unwrap_or(0);
        metrics.counters[index].increment(1);
        if let Some(suppressed) = metrics.logs[index].sample() {
            warn!(
                reason = self.reason.as_str(),
                peer = %self.peer,
                detail = self.detail,
                suppressed,
                "http request refused"
            );
        }
    }
}

/// Pre-registered event-log metrics of one topic.
#[derive(Debug, Clone)]
pub struct LogMetrics {
    appends: Counter,
    errors: Counter,
}

impl LogMetrics {
    pub fn register(topic: &str) -> Self {
        Self {
            appends: counter!(names::LOG_APPENDS_TOTAL, "topic" => topic.to_owned()),
            errors: counter!(names::LOG_APPEND_ERRORS_TOTAL, "topic" => topic.to_owned()),
        }
    }
}

/// An append to the event log finished (durably or not).
#[derive(Debug)]
pub struct LogAppended<'a> {
    pub topic: &'a str,
    pub error: Option<&'a dyn std::error::Error>,
}

impl LogAppended<'_> {
    pub fn emit(&self, metrics: &LogMetrics) {
        match self.error {
            None => metrics.appends.increment(1),
            Some(error) => {
                metrics.errors.increment(1);
                error!(topic = self.topic, error = %error, "event log append failed");
            }
        }
    }
}

/// Channel configuration was (re)loaded, or a reload was refused.
#[derive(Debug)]
pub struct ChannelsReloaded<'a> {
    pub channels: usize,
    pub error: Option<&'a str>,
}

impl ChannelsReloaded<'_> {
    pub fn emit(&self) {
        match self.error {
            None => {
                counter!(names::CONFIG_RELOADS_TOTAL, "result" => "ok").increment(1);
                tracing::info!(channels = self.channels, "channel configuration loaded");
            }
            Some(error) => {
                counter!(names::CONFIG_RELOADS_TOTAL, "result" => "error").increment(1);
                error!(
                    error,
                    "channel configuration rejected, keeping the previous one"
                );
            }
        }
    }
}

/// Pre-registered metrics of one channel's connector: whether its loop
/// runs (`omnid_channel_up`, 1 or 0) and how often it was restarted.
#[derive(Debug, Clone)]
pub struct ConnectorMetrics {
    channel: String,
    up: Gauge,
    restarts: Counter,
}

impl ConnectorMetrics {
    pub fn register(channel: &str, kind: &str) -> Self {
        Self {
            channel: channel.to_owned(),
            up: gauge!(names::CHANNEL_UP, "channel" => channel.to_owned(), "kind" => kind.to_owned()),
            restarts: counter!(names::CHANNEL_RESTARTS_TOTAL, "channel" => channel.to_owned()),
        }
    }
}

/// A channel's connector loop started, first or after a failure.
#[derive(Debug)]
pub struct ConnectorStarted {
    /// Times it was restarted before this start (0: its first).
    pub restarts: u64,
}

impl ConnectorStarted {
    pub fn emit(&self, metrics: &ConnectorMetrics) {
        metrics.up.set(1.0);
        if self.restarts > 0 {
            metrics.restarts.increment(1);
            info!(
                channel = %metrics.channel,
                restarts = self.restarts,
                "connector restarted"
            );
        }
    }
}

/// A channel's connector loop failed (returned an error or panicked); it is
/// restarted after `restart_in`.
#[derive(Debug)]
pub struct ConnectorFailed<'a> {
    pub error: &'a str,
    pub restart_in: Duration,
}

impl ConnectorFailed<'_> {
    pub fn emit(&self, metrics: &ConnectorMetrics) {
        metrics.up.set(0.0);
        error!(
            channel = %metrics.channel,
            error = self.error,
            restart_in_ms = self.restart_in.as_millis() as u64,
            "connector failed, restarting"
        );
    }
}

/// Pre-registered metrics of one IMAP mailbox of one channel (mailboxes
/// come from the channel file, so the label set stays bounded).
#[derive(Debug, Clone)]
pub struct ImapMetrics {
    channel: String,
    mailbox: String,
    ingested: Counter,
    dead_lettered: Counter,
    duplicates: Counter,
    session_errors: Counter,
    checkpoint_uid: Gauge,
}

impl ImapMetrics {
    pub fn register(channel: &str, mailbox: &str) -> Self {
        let messages = |outcome: &'static str| counter!(names::IMAP_MESSAGES_TOTAL, "channel" => channel.to_owned(), "mailbox" => mailbox.to_owned(), "outcome" => outcome);
        Self {
            channel: channel.to_owned(),
            mailbox: mailbox.to_owned(),
            ingested: messages("ingested"),
            dead_lettered: messages("dead_lettered"),
            duplicates: messages("duplicate"),
            session_errors: counter!(names::IMAP_SESSION_ERRORS_TOTAL, "channel" => channel.to_owned(), "mailbox" => mailbox.to_owned()),
            checkpoint_uid: gauge!(names::IMAP_CHECKPOINT_UID, "channel" => channel.to_owned(), "mailbox" => mailbox.to_owned()),
        }
    }
}

/// A batch of fetched messages is durable and the checkpoint moved.
#[derive(Debug)]
pub struct ImapBatchIngested {
    pub events: u64,
    pub dead_letters: u64,
    /// Already ingested before (a replay after a crash or a UIDVALIDITY
    /// change), so not appended again.
    pub duplicates: u64,
    pub last_uid: u32,
}

impl ImapBatchIngested {
    pub fn emit(&self, metrics: &ImapMetrics) {
        metrics.ingested.increment(self.events);
        metrics.dead_lettered.increment(self.dead_letters);
        metrics.duplicates.increment(self.duplicates);
        metrics.checkpoint_uid.set(f64::from(self.last_uid));
        debug!(
            channel = %metrics.channel,
            mailbox = %metrics.mailbox,
            events = self.events,
            dead_letters = self.dead_letters,
            duplicates = self.duplicates,
            last_uid = self.last_uid,
            "imap batch checkpointed"
        );
    }
}

/// An IMAP session ended with an error; the mailbox reconnects after
/// `retry_in`.
#[derive(Debug)]
pub struct ImapSessionFailed<'a> {
    pub error: &'a dyn std::error::Error,
    pub retry_in: Duration,
}

impl ImapSessionFailed<'_> {
    pub fn emit(&self, metrics: &ImapMetrics) {
        metrics.session_errors.increment(1);
        warn!(
            channel = %metrics.channel,
            mailbox = %metrics.mailbox,
            error = %self.error,
            retry_in_ms = self.retry_in.as_millis() as u64,
            "imap session failed, reconnecting"
        );
    }
}

/// The server renumbered a mailbox; it is walked again from the start and
/// messages already ingested are recognised by their Message-ID.
#[derive(Debug)]
pub struct ImapUidValidityChanged {
    pub previous: u32,
    pub current: u32,
}

impl ImapUidValidityChanged {
    pub fn emit(&self, metrics: &ImapMetrics) {
        warn!(
            channel = %metrics.channel,
            mailbox = %metrics.mailbox,
            previous = self.previous,
            current = self.current,
            "imap uidvalidity changed, resyncing deduplicated by message-id"
        );
    }
}

/// What became of one record of the outbound topic, or of one attempt at
/// it. A closed set: the `outcome` label values of
/// `omnid_outbound_deliveries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundOutcome {
    /// The provider accepted the message; a `SENT` status was appended.
    Sent,
    /// The provider or the channel refused it for good; a `FAILED` status
    /// was appended.
    Failed,
    /// One attempt failed temporarily; the same message is tried again.
    Retried,
    /// Already delivered before (a redelivery after a crash, or a client
    /// retry with the same idempotency key): not sent again.
    Duplicate,
    /// Undecodable, for an unknown channel, or for a channel that cannot
    /// send: written to the dead-letter topic.
    DeadLettered,
}

impl OutboundOutcome {
    pub const ALL: [OutboundOutcome; 5] = [
        Self::Sent,
        Self::Failed,
        Self::Retried,
        Self::Duplicate,
        Self::DeadLettered,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Retried => "retried",
            Self::Duplicate => "duplicate",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// Pre-registered outbound delivery metrics of one channel. Records naming
/// a channel that is not configured are counted under `channel="unknown"`,
/// so a producer cannot grow the label set.
#[derive(Debug, Clone)]
pub struct OutboundMetrics {
    channel: String,
    outcomes: [Counter; OutboundOutcome::ALL.len()],
}

impl OutboundMetrics {
    /// The label of records whose channel is not configured.
    pub const UNKNOWN_CHANNEL: &'static str = "unknown";

    pub fn register(channel: &str) -> Self {
        let outcomes = OutboundOutcome::ALL.map(|outcome| {
            counter!(names::OUTBOUND_DELIVERIES_TOTAL, "channel" => channel.to_owned(), "outcome" => outcome.as_str())
        });
        Self {
            channel: channel.to_owned(),
            outcomes,
        }
    }
}

/// An outbound record was handled (or one attempt at it failed).
#[derive(Debug)]
pub struct OutboundDelivered<'a> {
    pub outcome: OutboundOutcome,
    /// The outbound event id (empty when the record did not decode).
    pub event_id: &'a str,
    /// The provider's reply, the error, or the dead-letter reason: for the
    /// log line only, never a label.
    pub detail: &'a str,
    /// For [`OutboundOutcome::Retried`]: the wait before the next attempt.
    pub retry_in: Option<Duration>,
}

impl OutboundDelivered<'_> {
    pub fn emit(&self, metrics: &OutboundMetrics) {
        let index = OutboundOutcome::ALL
            .iter()
            .position(|o| *o == self.outcome)
            .unwrap_or(0);
        metrics.outcomes[index].increment(1);
        let channel = metrics.channel.as_str();
        let event_id = self.event_id;
        let detail = self.detail;
        match self.outcome {
            OutboundOutcome::Sent => {
                tracing::info!(channel, event_id, detail, "outbound message sent")
            }
            OutboundOutcome::Failed => {
                warn!(channel, event_id, detail, "outbound message rejected")
            }
            OutboundOutcome::Retried => warn!(
                channel,
                event_id,
                detail,
                retry_in_ms = self.retry_in.map_or(0, |d| d.as_millis() as u64),
                "outbound delivery failed, retrying"
            ),
            OutboundOutcome::Duplicate => debug!(
                channel,
                event_id, "outbound message already delivered, not sent again"
            ),
            OutboundOutcome::DeadLettered => {
                warn!(channel, event_id, detail, "outbound record dead-lettered")
            }
        }
    }
}

/// How a `POST /v1/outbound` request ended. A closed set: the `outcome`
/// label values of `omnid_outbound_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundRequestOutcome {
    /// Durable on the outbound topic; answered 202.
    Accepted,
    /// Missing or wrong bearer token.
    Unauthorized,
    /// Not a valid outbound message, or its channel cannot send.
    Invalid,
    /// No channel with that id.
    UnknownChannel,
    /// Body over the configured limit.
    TooLarge,
    /// The log is overloaded or failed; answered 503.
    Unavailable,
}

impl OutboundRequestOutcome {
    pub const ALL: [OutboundRequestOutcome; 6] = [
        Self::Accepted,
        Self::Unauthorized,
        Self::Invalid,
        Self::UnknownChannel,
        Self::TooLarge,
        Self::Unavailable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Unauthorized => "unauthorized",
            Self::Invalid => "invalid",
            Self::UnknownChannel => "unknown_channel",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Pre-registered metrics of `POST /v1/outbound`.
#[derive(Debug, Clone)]
pub struct OutboundRequestMetrics {
    outcomes: [Counter; OutboundRequestOutcome::ALL.len()],
}

impl OutboundRequestMetrics {
    pub fn register() -> Self {
        Self {
            outcomes: OutboundRequestOutcome::ALL.map(
                |outcome| counter!(names::OUTBOUND_REQUESTS_TOTAL, "outcome" => outcome.as_str()),
            ),
        }
    }
}

/// A `POST /v1/outbound` request was answered.
#[derive(Debug)]
pub struct OutboundRequestHandled<'a> {
    pub outcome: OutboundRequestOutcome,
    /// The channel id the request named (log line only).
    pub channel: &'a str,
    /// The assigned event id, or why the request was refused (log line
    /// only).
    pub detail: &'a str,
}

impl OutboundRequestHandled<'_> {
    pub fn emit(&self, metrics: &OutboundRequestMetrics) {
        let index = OutboundRequestOutcome::ALL
            .iter()
            .position(|o| *o == self.outcome)
            .unwrap_or(0);
        metrics.outcomes[index].increment(1);
        let (channel, outcome, detail) = (self.channel, self.outcome.as_str(), self.detail);
        match self.outcome {
            OutboundRequestOutcome::Accepted => {
                debug!(
                    channel,
                    outcome,
                    event_id = detail,
                    "outbound message accepted"
                )
            }
            OutboundRequestOutcome::Unavailable => {
                error!(channel, outcome, detail, "outbound message not stored")
            }
            _ => warn!(channel, outcome, detail, "outbound request refused"),
        }
    }
}

/// What the threading worker did with one inbound record: the `outcome`
/// label values of `omnid_threading_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadingOutcome {
    /// Threaded: its timeline rows are in the outbox.
    Threaded,
    /// Its event id was threaded before (a provider retry or a replay):
    /// nothing written.
    Duplicate,
    /// Not a conversation event, undecodable, or not threadable: written
    /// to the dead-letter topic.
    DeadLettered,
    /// The store failed; the record is tried again.
    Retried,
}

impl ThreadingOutcome {
    pub const ALL: [ThreadingOutcome; 4] = [
        Self::Threaded,
        Self::Duplicate,
        Self::DeadLettered,
        Self::Retried,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Threaded => "threaded",
            Self::Duplicate => "duplicate",
            Self::DeadLettered => "dead_lettered",
            Self::Retried => "retried",
        }
    }
}

/// Pre-registered metrics of the threading worker and its outbox relay.
#[derive(Debug, Clone)]
pub struct ThreadingMetrics {
    outcomes: [Counter; ThreadingOutcome::ALL.len()],
    published: Counter,
}

impl ThreadingMetrics {
    pub fn register() -> Self {
        Self {
            outcomes: ThreadingOutcome::ALL.map(
                |outcome| counter!(names::THREADING_EVENTS_TOTAL, "outcome" => outcome.as_str()),
            ),
            published: counter!(names::TIMELINE_PUBLISHED_TOTAL),
        }
    }
}

/// The threading worker handled one inbound record (or one attempt at it
/// failed).
#[derive(Debug)]
pub struct EventThreaded<'a> {
    pub outcome: ThreadingOutcome,
    /// The inbound event id (empty when the record did not decode).
    pub event_id: &'a str,
    /// The customer it went to (for [`ThreadingOutcome::Threaded`]).
    pub customer_id: &'a str,
    /// The dead-letter reason or the store error: log line only.
    pub detail: &'a str,
    /// For [`ThreadingOutcome::Retried`]: the wait before the next attempt.
    pub retry_in: Option<Duration>,
}

impl EventThreaded<'_> {
    pub fn emit(&self, metrics: &ThreadingMetrics) {
        let index = ThreadingOutcome::ALL
            .iter()
            .position(|o| *o == self.outcome)
            .unwrap_or(0);
        metrics.outcomes[index].increment(1);
        let (event_id, customer_id, detail) = (self.event_id, self.customer_id, self.detail);
        match self.outcome {
            ThreadingOutcome::Threaded => debug!(event_id, customer_id, "event threaded"),
            ThreadingOutcome::Duplicate => {
                debug!(event_id, "event threaded before, dropped as a duplicate")
            }
            ThreadingOutcome::DeadLettered => {
                warn!(
                    event_id,
                    detail, "inbound record not threadable, dead-lettered"
                )
            }
            ThreadingOutcome::Retried => warn!(
                event_id,
                detail,
                retry_in_ms = self.retry_in.map_or(0, |d| d.as_millis() as u64),
                "threading failed, retrying"
            ),
        }
    }
}

/// The outbox relay published timeline entries (durably appended to the
/// timeline topic, then marked published).
#[derive(Debug)]
pub struct TimelinePublished {
    /// How many entries.
    pub entries: usize,
    /// The last outbox row id published.
    pub last_row: i64,
}

impl TimelinePublished {
    pub fn emit(&self, metrics: &ThreadingMetrics) {
        metrics.published.increment(self.entries as u64);
        debug!(
            entries = self.entries,
            last_row = self.last_row,
            "timeline entries published"
        );
    }
}

/// What became of one helpdesk command: the `outcome` label values of
/// `omnid_threading_commands_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Applied; its timeline entries are in the outbox.
    Applied,
    /// Applied, but it was already true: nothing changed.
    Unchanged,
    /// Its command id was applied before.
    Duplicate,
    /// Refused (unknown id, conflict, malformed): a 4xx, or a dead letter
    /// for a record of the commands topic.
    Refused,
    /// The store failed; the command is tried again.
    Retried,
}

impl CommandOutcome {
    pub const ALL: [CommandOutcome; 5] = [
        Self::Applied,
        Self::Unchanged,
        Self::Duplicate,
        Self::Refused,
        Self::Retried,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Duplicate => "duplicate",
            Self::Refused => "refused",
            Self::Retried => "retried",
        }
    }
}

/// Pre-registered `omnid_threading_commands_total` counters of one source
/// (`topic` or `http`).
#[derive(Debug, Clone)]
pub struct CommandMetrics {
    outcomes: [Counter; CommandOutcome::ALL.len()],
}

impl CommandMetrics {
    pub fn register(source: &'static str) -> Self {
        Self {
            outcomes: CommandOutcome::ALL.map(|outcome| {
                counter!(names::THREADING_COMMANDS_TOTAL, "source" => source, "outcome" => outcome.as_str())
            }),
        }
    }
}

/// A helpdesk command was handled (or one attempt at it failed).
#[derive(Debug)]
pub struct CommandHandled<'a> {
    pub outcome: CommandOutcome,
    pub command_id: &'a str,
    /// `close`, `reopen`, `link`, `unlink`, `merge`, `split` (empty when
    /// the record did not decode).
    pub action: &'a str,
    pub actor: &'a str,
    /// Why it was refused, or the store error: log line only.
    pub detail: &'a str,
    /// For [`CommandOutcome::Retried`]: the wait before the next attempt.
    pub retry_in: Option<Duration>,
}

impl CommandHandled<'_> {
    pub fn emit(&self, metrics: &CommandMetrics) {
        let index = CommandOutcome::ALL
            .iter()
            .position(|o| *o == self.outcome)
            .unwrap_or(0);
        metrics.outcomes[index].increment(1);
        let (command_id, action, actor, detail) =
            (self.command_id, self.action, self.actor, self.detail);
        match self.outcome {
            CommandOutcome::Applied | CommandOutcome::Unchanged => {
                info!(
                    command_id,
                    action,
                    actor,
                    outcome = self.outcome.as_str(),
                    "command applied"
                )
            }
            CommandOutcome::Duplicate => {
                debug!(
                    command_id,
                    action, "command applied before, dropped as a duplicate"
                )
            }
            CommandOutcome::Refused => warn!(command_id, action, actor, detail, "command refused"),
            CommandOutcome::Retried => warn!(
                command_id,
                action,
                detail,
                retry_in_ms = self.retry_in.map_or(0, |d| d.as_millis() as u64),
                "applying a command failed, retrying"
            ),
        }
    }
}

/// Pre-registered metrics of the deferred-media queue: downloads that
/// follow a message once it is durable.
#[derive(Debug, Clone)]
pub struct MediaMetrics {
    deferred: Counter,
    fetched: Counter,
    retried: Counter,
    refused: Counter,
    expired: Counter,
    depth: Gauge,
}

impl MediaMetrics {
    pub fn register() -> Self {
        let given_up =
            |reason: &'static str| counter!(names::MEDIA_GIVEN_UP_TOTAL, "reason" => reason);
        Self {
            deferred: counter!(names::MEDIA_DEFERRED_TOTAL),
            fetched: counter!(names::MEDIA_FETCHED_TOTAL),
            retried: counter!(names::MEDIA_RETRIED_TOTAL),
            refused: given_up("refused"),
            expired: given_up("expired"),
            depth: gauge!(names::MEDIA_QUEUE_DEPTH),
        }
    }
}

/// Downloads were queued behind a durable message (a provider's retry of
/// jobs already queued counts nothing).
#[derive(Debug)]
pub struct MediaDeferred {
    /// Jobs new to the queue.
    pub jobs: u64,
}

impl MediaDeferred {
    pub fn emit(&self, metrics: &MediaMetrics) {
        metrics.deferred.increment(self.jobs);
        if self.jobs > 0 {
            debug!(jobs = self.jobs, "media downloads deferred");
        }
    }
}

/// A file was downloaded, stored, and its update is durable in the log.
#[derive(Debug)]
pub struct MediaFetched<'a> {
    pub channel: &'a str,
    pub event_id: &'a str,
    pub attachment: u32,
    pub size: u64,
    /// Failed attempts before this one.
    pub retries: u32,
}

impl MediaFetched<'_> {
    pub fn emit(&self, metrics: &MediaMetrics) {
        metrics.fetched.increment(1);
        debug!(
            channel = self.channel,
            event_id = self.event_id,
            attachment = self.attachment,
            size = self.size,
            retries = self.retries,
            "media stored"
        );
    }
}

/// A download (or appending its update) failed for now; it is tried again
/// after `retry_in`.
#[derive(Debug)]
pub struct MediaRetried<'a> {
    pub channel: &'a str,
    pub event_id: &'a str,
    pub attachment: u32,
    /// Failed attempts so far, this one included.
    pub attempts: u32,
    pub retry_in: Duration,
    pub error: &'a str,
}

impl MediaRetried<'_> {
    pub fn emit(&self, metrics: &MediaMetrics) {
        metrics.retried.increment(1);
        info!(
            channel = self.channel,
            event_id = self.event_id,
            attachment = self.attachment,
            attempts = self.attempts,
            retry_in_ms = self.retry_in.as_millis() as u64,
            error = self.error,
            "media download failed, retrying"
        );
    }
}

/// A download was given up: the message keeps the provider's reference.
#[derive(Debug)]
pub struct MediaGivenUp<'a> {
    pub channel: &'a str,
    pub event_id: &'a str,
    pub attachment: u32,
    /// The provider refused it for good (`false`: it kept failing for
    /// longer than the queue's maximum age).
    pub refused: bool,
    pub error: &'a str,
}

impl MediaGivenUp<'_> {
    pub fn emit(&self, metrics: &MediaMetrics) {
        let reason = if self.refused {
            metrics.refused.increment(1);
            "refused"
        } else {
            metrics.expired.increment(1);
            "expired"
        };
        warn!(
            channel = self.channel,
            event_id = self.event_id,
            attachment = self.attachment,
            reason,
            error = self.error,
            "media download given up, the message keeps the provider's reference"
        );
    }
}

/// How many downloads the queue holds (due or waiting for a retry).
#[derive(Debug)]
pub struct MediaQueueDepth {
    pub jobs: u64,
}

impl MediaQueueDepth {
    pub fn emit(&self, metrics: &MediaMetrics) {
        metrics.depth.set(self.jobs as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_logs_the_first_then_one_per_interval_with_the_suppressed_count() {
        let sampler = LogSampler::new(Duration::from_secs(10));
        let at = Duration::from_millis;
        assert_eq!(sampler.sample_at(at(0)), Some(0));
        assert_eq!(sampler.sample_at(at(1)), None);
        assert_eq!(sampler.sample_at(at(9_999)), None);
        assert_eq!(sampler.sample_at(at(10_000)), Some(2));
        assert_eq!(sampler.sample_at(at(10_001)), None);
        // A quiet spell: the next occurrence is logged at once.
        assert_eq!(sampler.sample_at(at(60_000)), Some(1));
        assert_eq!(sampler.sample_at(at(60_001)), None);
    }
}
