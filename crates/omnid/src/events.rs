//! The daemon's internal events: the HTTP listener's refusals, event-log
//! appends, configuration reloads, connector supervision, outbound
//! delivery, threading and helpdesk commands. Each emits its log line and
//! its metrics together through [`omni_telemetry::emit!`], with handles
//! registered once.

use std::{net::IpAddr, sync::Arc, time::Duration};

use metrics::{Counter, Gauge, counter, gauge, histogram};
use omni_connector::events::WebhookOutcome;
use omni_telemetry::{InternalEvent, LogSampler, names};
use tracing::{debug, error, info, warn};

/// Why the HTTP listener turned a client away before any handler saw its
/// request. A closed set: the `reason` label values of
/// `omnid_http_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpRefusal {
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
    pub(crate) const ALL: [HttpRefusal; 5] = [
        Self::ConnectionLimit,
        Self::HeaderTimeout,
        Self::BodyTimeout,
        Self::BodyBudget,
        Self::PeerBodyBudget,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
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
pub(crate) struct HttpRefusalMetrics {
    counters: [Counter; HttpRefusal::ALL.len()],
    logs: Arc<[LogSampler; HttpRefusal::ALL.len()]>,
}

impl HttpRefusalMetrics {
    pub(crate) fn register() -> Self {
        Self {
            counters: HttpRefusal::ALL
                .map(|reason| counter!(names::HTTP_REFUSALS_TOTAL, "reason" => reason.as_str())),
            logs: Arc::new(HttpRefusal::ALL.map(|_| LogSampler::new(LogSampler::REFUSAL_INTERVAL))),
        }
    }
}

/// The HTTP listener refused a connection or a request.
#[derive(Debug)]
pub(crate) struct HttpRefused<'a> {
    pub reason: HttpRefusal,
    pub peer: IpAddr,
    /// For the log line only (never a label).
    pub detail: &'a str,
}

impl InternalEvent for HttpRefused<'_> {
    type Handles = HttpRefusalMetrics;

    fn emit(self, metrics: &HttpRefusalMetrics) {
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

/// Pre-registered handles of the daemon's own refusal of one webhook
/// channel's requests: a body over `http.max_body_bytes`, turned away
/// before the channel sees it. Counted with the channel's other outcomes of
/// `omnid_webhook_requests_total`; its log line is sampled, as anyone can
/// send oversized requests.
#[derive(Debug, Clone)]
pub(crate) struct WebhookLimitMetrics {
    channel: String,
    too_large: Counter,
    log: Arc<LogSampler>,
}

impl WebhookLimitMetrics {
    pub(crate) fn register(channel: &str) -> Self {
        Self {
            channel: channel.to_owned(),
            too_large: counter!(
                names::WEBHOOK_REQUESTS_TOTAL,
                "channel" => channel.to_owned(),
                "outcome" => WebhookOutcome::TooLarge.as_str()
            ),
            log: Arc::new(LogSampler::new(LogSampler::REFUSAL_INTERVAL)),
        }
    }
}

/// A webhook request's body was over `http.max_body_bytes`; answered 413.
#[derive(Debug)]
pub(crate) struct WebhookTooLarge {
    pub max_body_bytes: usize,
}

impl InternalEvent for WebhookTooLarge {
    type Handles = WebhookLimitMetrics;

    fn emit(self, metrics: &WebhookLimitMetrics) {
        metrics.too_large.increment(1);
        if let Some(suppressed) = metrics.log.sample() {
            warn!(
                channel = %metrics.channel,
                max_body_bytes = self.max_body_bytes,
                suppressed,
                "webhook rejected, body too large"
            );
        }
    }
}

/// Pre-registered event-log metrics of one topic.
#[derive(Debug, Clone)]
pub(crate) struct LogMetrics {
    appends: Counter,
    errors: Counter,
}

impl LogMetrics {
    pub(crate) fn register(topic: &str) -> Self {
        Self {
            appends: counter!(names::LOG_APPENDS_TOTAL, "topic" => topic.to_owned()),
            errors: counter!(names::LOG_APPEND_ERRORS_TOTAL, "topic" => topic.to_owned()),
        }
    }
}

/// An append to the event log finished (durably or not).
#[derive(Debug)]
pub(crate) struct LogAppended<'a> {
    pub topic: &'a str,
    pub error: Option<&'a dyn std::error::Error>,
}

impl InternalEvent for LogAppended<'_> {
    type Handles = LogMetrics;

    fn emit(self, metrics: &LogMetrics) {
        match self.error {
            None => metrics.appends.increment(1),
            Some(error) => {
                metrics.errors.increment(1);
                error!(topic = self.topic, error = %error, "event log append failed");
            }
        }
    }
}

/// How long a group may keep holding retention back before its warning is
/// repeated.
pub(crate) const HELD_BACK_REMINDER: Duration = Duration::from_secs(600);

/// What to log about one group holding retention back, given when it was
/// last warned about (`None`: it was not holding anything back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldLog {
    /// It started holding records back: warn.
    Started,
    /// Still holding records back, and the last warning is old: warn again.
    Continues,
    /// It no longer holds anything back: say so once.
    Ended,
    Quiet,
}

/// The log decision of [`HoldLog`] and the new "last warned" state; one
/// line when a group starts or stops holding retention back, a reminder
/// every `reminder` in between.
pub(crate) fn hold_log(
    last_warned: Option<std::time::Instant>,
    held: u64,
    now: std::time::Instant,
    reminder: Duration,
) -> (HoldLog, Option<std::time::Instant>) {
    match (last_warned, held > 0) {
        (None, true) => (HoldLog::Started, Some(now)),
        (Some(at), true) if now.saturating_duration_since(at) >= reminder => {
            (HoldLog::Continues, Some(now))
        }
        (Some(at), true) => (HoldLog::Quiet, Some(at)),
        (Some(_), false) => (HoldLog::Ended, None),
        (None, false) => (HoldLog::Quiet, None),
    }
}

/// Pre-registered retention metrics of one topic of the embedded log, and
/// per protected group the held-back gauge and when it was last warned
/// about.
#[derive(Debug)]
pub(crate) struct TopicRetentionMetrics {
    bytes: Gauge,
    records: Gauge,
    removed: Counter,
    groups:
        std::sync::Mutex<std::collections::BTreeMap<String, (Gauge, Option<std::time::Instant>)>>,
}

impl TopicRetentionMetrics {
    pub(crate) fn register(topic: &str, groups: &[&str]) -> Self {
        Self {
            bytes: gauge!(names::LOG_TOPIC_BYTES, "topic" => topic.to_owned()),
            records: gauge!(names::LOG_TOPIC_RECORDS, "topic" => topic.to_owned()),
            removed: counter!(
                names::LOG_RETENTION_REMOVED_RECORDS_TOTAL,
                "topic" => topic.to_owned()
            ),
            groups: std::sync::Mutex::new(
                groups
                    .iter()
                    .map(|group| {
                        let gauge = gauge!(
                            names::LOG_RETENTION_HELD_BACK_RECORDS,
                            "topic" => topic.to_owned(),
                            "group" => (*group).to_owned()
                        );
                        ((*group).to_owned(), (gauge, None))
                    })
                    .collect(),
            ),
        }
    }
}

/// A retention pass finished with one topic of the embedded log.
#[derive(Debug)]
pub(crate) struct LogRetained<'a> {
    pub retained: &'a omni_log::TopicRetention,
}

impl InternalEvent for LogRetained<'_> {
    type Handles = TopicRetentionMetrics;

    fn emit(self, metrics: &TopicRetentionMetrics) {
        let retained = self.retained;
        let stats = &retained.stats;
        metrics.bytes.set(stats.bytes as f64);
        metrics.records.set(stats.records as f64);
        metrics.removed.increment(retained.removed_records);
        if retained.removed_records > 0 {
            debug!(
                topic = %stats.topic,
                removed_records = retained.removed_records,
                removed_bytes = retained.removed_bytes,
                start_offset = stats.start_offset,
                "log retention removed records"
            );
        }
        let now = std::time::Instant::now();
        let mut groups = metrics.groups.lock().unwrap_or_else(|e| e.into_inner());
        for held in &retained.held_back {
            let (gauge, last_warned) = groups.entry(held.group.clone()).or_insert_with(|| {
                let gauge = gauge!(
                    names::LOG_RETENTION_HELD_BACK_RECORDS,
                    "topic" => stats.topic.clone(),
                    "group" => held.group.clone()
                );
                (gauge, None)
            });
            gauge.set(held.records as f64);
            let (log, warned) = hold_log(*last_warned, held.records, now, HELD_BACK_REMINDER);
            *last_warned = warned;
            match log {
                HoldLog::Started | HoldLog::Continues => warn!(
                    topic = %stats.topic,
                    group = %held.group,
                    held_back_records = held.records,
                    committed_offset = held.committed,
                    start_offset = stats.start_offset,
                    end_offset = stats.end_offset,
                    topic_bytes = stats.bytes,
                    "log retention held back: the consumer group has not committed records over the retention limits, so they stay and the log grows"
                ),
                HoldLog::Ended => info!(
                    topic = %stats.topic,
                    group = %held.group,
                    "log retention no longer held back by the consumer group"
                ),
                HoldLog::Quiet => {}
            }
        }
    }
}

/// A retention pass of the embedded log failed; the next one retries.
#[derive(Debug)]
pub(crate) struct LogRetentionFailed<'a> {
    pub error: &'a dyn std::error::Error,
}

impl InternalEvent for LogRetentionFailed<'_> {
    type Handles = Counter;

    fn emit(self, failures: &Counter) {
        failures.increment(1);
        warn!(error = %self.error, "log retention pass failed, retrying at the next pass");
    }
}

/// Pre-registered `omnid_config_reloads_total` counters of one kind of
/// file (`channels`, `rules`), one per result.
#[derive(Debug, Clone)]
pub(crate) struct ReloadMetrics {
    ok: Counter,
    error: Counter,
}

impl ReloadMetrics {
    pub(crate) fn register(files: &'static str) -> Self {
        Self {
            ok: counter!(names::CONFIG_RELOADS_TOTAL, "files" => files, "result" => "ok"),
            error: counter!(names::CONFIG_RELOADS_TOTAL, "files" => files, "result" => "error"),
        }
    }
}

/// Channel configuration was (re)loaded, or a reload was refused.
#[derive(Debug)]
pub(crate) struct ChannelsReloaded<'a> {
    pub channels: usize,
    pub error: Option<&'a str>,
}

impl InternalEvent for ChannelsReloaded<'_> {
    type Handles = ReloadMetrics;

    fn emit(self, metrics: &ReloadMetrics) {
        match self.error {
            None => {
                metrics.ok.increment(1);
                info!(channels = self.channels, "channel configuration loaded");
            }
            Some(error) => {
                metrics.error.increment(1);
                error!(
                    error,
                    "channel configuration rejected, keeping the previous one"
                );
            }
        }
    }
}

/// Rule files were (re)loaded, or a reload was refused.
#[derive(Debug)]
pub(crate) struct RulesReloaded<'a> {
    pub rule_sets: usize,
    pub rules: usize,
    pub error: Option<&'a str>,
}

impl InternalEvent for RulesReloaded<'_> {
    type Handles = ReloadMetrics;

    fn emit(self, metrics: &ReloadMetrics) {
        match self.error {
            None => {
                metrics.ok.increment(1);
                info!(
                    rule_sets = self.rule_sets,
                    rules = self.rules,
                    "rule files loaded"
                );
            }
            Some(error) => {
                metrics.error.increment(1);
                error!(error, "rule files rejected, keeping the previous rules");
            }
        }
    }
}

/// Rules name a channel no channel file defines: they never match until
/// it exists. A warning, not a refusal, because channels and rules are
/// reloaded apart and removing a channel must not stop its rules' siblings.
#[derive(Debug)]
pub(crate) struct RulesNameUnknownChannels<'a> {
    pub problems: &'a str,
}

impl InternalEvent for RulesNameUnknownChannels<'_> {
    type Handles = ();

    fn emit(self, _: &()) {
        warn!(
            problems = self.problems,
            "rule files name channels that are not configured"
        );
    }
}

/// Pre-registered metrics of one channel's connector: whether its loop
/// runs (`omnid_channel_up`, 1 or 0) and how often it was restarted.
#[derive(Debug, Clone)]
pub(crate) struct ConnectorMetrics {
    channel: String,
    up: Gauge,
    restarts: Counter,
}

impl ConnectorMetrics {
    pub(crate) fn register(channel: &str, kind: &str) -> Self {
        Self {
            channel: channel.to_owned(),
            up: gauge!(names::CHANNEL_UP, "channel" => channel.to_owned(), "kind" => kind.to_owned()),
            restarts: counter!(names::CHANNEL_RESTARTS_TOTAL, "channel" => channel.to_owned()),
        }
    }
}

/// A channel's connector loop started, first or after a failure.
#[derive(Debug)]
pub(crate) struct ConnectorStarted {
    /// Times it was restarted before this start (0: its first).
    pub restarts: u64,
}

impl InternalEvent for ConnectorStarted {
    type Handles = ConnectorMetrics;

    fn emit(self, metrics: &ConnectorMetrics) {
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
pub(crate) struct ConnectorFailed<'a> {
    pub error: &'a str,
    pub restart_in: Duration,
}

impl InternalEvent for ConnectorFailed<'_> {
    type Handles = ConnectorMetrics;

    fn emit(self, metrics: &ConnectorMetrics) {
        metrics.up.set(0.0);
        error!(
            channel = %metrics.channel,
            error = self.error,
            restart_in_ms = self.restart_in.as_millis() as u64,
            "connector failed, restarting"
        );
    }
}

/// What became of one record of the outbound topic, or of one attempt at
/// it. A closed set: the `outcome` label values of
/// `omnid_outbound_deliveries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboundOutcome {
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
    pub(crate) const ALL: [OutboundOutcome; 5] = [
        Self::Sent,
        Self::Failed,
        Self::Retried,
        Self::Duplicate,
        Self::DeadLettered,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
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
pub(crate) struct OutboundMetrics {
    channel: String,
    outcomes: [Counter; OutboundOutcome::ALL.len()],
}

impl OutboundMetrics {
    /// The label of records whose channel is not configured.
    pub(crate) const UNKNOWN_CHANNEL: &'static str = "unknown";

    pub(crate) fn register(channel: &str) -> Self {
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
pub(crate) struct OutboundDelivered<'a> {
    pub outcome: OutboundOutcome,
    /// The outbound event id (empty when the record did not decode).
    pub event_id: &'a str,
    /// The provider's reply, the error, or the dead-letter reason: for the
    /// log line only, never a label.
    pub detail: &'a str,
    /// For [`OutboundOutcome::Retried`]: the wait before the next attempt.
    pub retry_in: Option<Duration>,
}

impl InternalEvent for OutboundDelivered<'_> {
    type Handles = OutboundMetrics;

    fn emit(self, metrics: &OutboundMetrics) {
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
                info!(channel, event_id, detail, "outbound message sent")
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
pub(crate) enum OutboundRequestOutcome {
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
    pub(crate) const ALL: [OutboundRequestOutcome; 6] = [
        Self::Accepted,
        Self::Unauthorized,
        Self::Invalid,
        Self::UnknownChannel,
        Self::TooLarge,
        Self::Unavailable,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
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
pub(crate) struct OutboundRequestMetrics {
    outcomes: [Counter; OutboundRequestOutcome::ALL.len()],
}

impl OutboundRequestMetrics {
    pub(crate) fn register() -> Self {
        Self {
            outcomes: OutboundRequestOutcome::ALL.map(
                |outcome| counter!(names::OUTBOUND_REQUESTS_TOTAL, "outcome" => outcome.as_str()),
            ),
        }
    }
}

/// A `POST /v1/outbound` request was answered.
#[derive(Debug)]
pub(crate) struct OutboundRequestHandled<'a> {
    pub outcome: OutboundRequestOutcome,
    /// The channel id the request named (log line only).
    pub channel: &'a str,
    /// The assigned event id, or why the request was refused (log line
    /// only).
    pub detail: &'a str,
}

impl InternalEvent for OutboundRequestHandled<'_> {
    type Handles = OutboundRequestMetrics;

    fn emit(self, metrics: &OutboundRequestMetrics) {
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
pub(crate) enum ThreadingOutcome {
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
    pub(crate) const ALL: [ThreadingOutcome; 4] = [
        Self::Threaded,
        Self::Duplicate,
        Self::DeadLettered,
        Self::Retried,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
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
pub(crate) struct ThreadingMetrics {
    outcomes: [Counter; ThreadingOutcome::ALL.len()],
    published: Counter,
    /// `omnid_automated_replies_total`, by [`ReplyKind`] then
    /// [`ReplyOutcome`].
    replies: [[Counter; 2]; 2],
}

impl ThreadingMetrics {
    pub(crate) fn register() -> Self {
        Self {
            outcomes: ThreadingOutcome::ALL.map(
                |outcome| counter!(names::THREADING_EVENTS_TOTAL, "outcome" => outcome.as_str()),
            ),
            published: counter!(names::TIMELINE_PUBLISHED_TOTAL),
            replies: [ReplyKind::Acknowledgement, ReplyKind::AutoReply].map(|kind| {
                [ReplyOutcome::HandedOver, ReplyOutcome::DeadLettered].map(|outcome| {
                    counter!(
                        names::AUTOMATED_REPLIES_TOTAL,
                        "kind" => kind.as_str(),
                        "outcome" => outcome.as_str()
                    )
                })
            }),
        }
    }
}

/// Which automated reply: the `kind` label of
/// `omnid_automated_replies_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    Acknowledgement,
    AutoReply,
}

impl ReplyKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Acknowledgement => "acknowledgement",
            Self::AutoReply => "auto_reply",
        }
    }
}

/// What the relay did with an automated reply: the `outcome` label of
/// `omnid_automated_replies_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyOutcome {
    /// Durable on the outbound topic: the dispatcher sends it.
    HandedOver,
    /// The channel cannot send it (gone, or a kind that only receives):
    /// on the dead-letter topic instead.
    DeadLettered,
}

impl ReplyOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::HandedOver => "handed_over",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// The timeline relay handed an automated reply to the outbound topic, or
/// dead-lettered it. Counted once the append is submitted; a relay round
/// repeated after a crash counts it again (the dispatcher still sends it
/// once).
#[derive(Debug)]
pub(crate) struct AutomatedReplyRelayed<'a> {
    pub kind: ReplyKind,
    pub outcome: ReplyOutcome,
    pub channel: &'a str,
    /// The outbound event id.
    pub event_id: &'a str,
    pub rule: &'a str,
    /// The customer message it answers.
    pub trigger: &'a str,
    /// Why it was dead-lettered: the refusal's code and text.
    pub reason: &'a str,
    pub detail: &'a str,
}

impl InternalEvent for AutomatedReplyRelayed<'_> {
    type Handles = ThreadingMetrics;

    fn emit(self, metrics: &ThreadingMetrics) {
        let kind = match self.kind {
            ReplyKind::Acknowledgement => 0,
            ReplyKind::AutoReply => 1,
        };
        match self.outcome {
            ReplyOutcome::HandedOver => {
                metrics.replies[kind][0].increment(1);
                debug!(
                    channel = self.channel,
                    event_id = self.event_id,
                    rule = self.rule,
                    trigger = self.trigger,
                    "automated reply handed to the outbound topic"
                );
            }
            ReplyOutcome::DeadLettered => {
                metrics.replies[kind][1].increment(1);
                warn!(
                    channel = self.channel,
                    reason = self.reason,
                    detail = self.detail,
                    rule = self.rule,
                    trigger = self.trigger,
                    "automated reply not sendable, dead-lettered"
                );
            }
        }
    }
}

/// An SLA entry reached the timeline topic: an agent answered a customer
/// message a timer ran for (`omnid_sla_response_seconds`, by channel,
/// priority and first or next response), or a deadline neared
/// (`omnid_sla_escalations_total`) or passed (`omnid_sla_breaches_total`).
/// Counted when the relay publishes the entry, so once per entry (a
/// crash between publishing and marking it published counts it again).
#[derive(Debug)]
pub(crate) struct SlaEntryPublished<'a> {
    pub what: SlaWhat,
    pub channel: &'a str,
    /// `P1`..`P4`.
    pub priority: &'static str,
    /// `first` or `next`.
    pub response: &'static str,
    /// The customer message awaiting an answer.
    pub event_id: &'a str,
    pub conversation_id: &'a str,
}

/// Which SLA entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SlaWhat {
    /// Answered after this long, in time or not.
    Answered {
        seconds: f64,
        in_time: bool,
    },
    Escalated,
    Breached,
}

impl InternalEvent for SlaEntryPublished<'_> {
    type Handles = ThreadingMetrics;

    fn emit(self, _metrics: &ThreadingMetrics) {
        let labels = [
            ("channel", self.channel.to_owned()),
            ("priority", self.priority.to_owned()),
            ("response", self.response.to_owned()),
        ];
        match self.what {
            SlaWhat::Answered { seconds, in_time } => {
                histogram!(names::SLA_RESPONSE_SECONDS, &labels).record(seconds);
                debug!(
                    channel = self.channel,
                    priority = self.priority,
                    response = self.response,
                    event_id = self.event_id,
                    conversation_id = self.conversation_id,
                    seconds,
                    in_time,
                    "customer message answered"
                );
            }
            SlaWhat::Escalated => {
                counter!(names::SLA_ESCALATIONS_TOTAL, &labels).increment(1);
                info!(
                    channel = self.channel,
                    priority = self.priority,
                    response = self.response,
                    event_id = self.event_id,
                    conversation_id = self.conversation_id,
                    "SLA deadline near, conversation escalated"
                );
            }
            SlaWhat::Breached => {
                counter!(names::SLA_BREACHES_TOTAL, &labels).increment(1);
                warn!(
                    channel = self.channel,
                    priority = self.priority,
                    response = self.response,
                    event_id = self.event_id,
                    conversation_id = self.conversation_id,
                    "SLA deadline passed without an answer"
                );
            }
        }
    }
}

/// The threading worker handled one inbound record (or one attempt at it
/// failed).
#[derive(Debug)]
pub(crate) struct EventThreaded<'a> {
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

impl InternalEvent for EventThreaded<'_> {
    type Handles = ThreadingMetrics;

    fn emit(self, metrics: &ThreadingMetrics) {
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
pub(crate) struct TimelinePublished {
    /// How many entries.
    pub entries: usize,
    /// The last outbox row id published.
    pub last_row: i64,
}

impl InternalEvent for TimelinePublished {
    type Handles = ThreadingMetrics;

    fn emit(self, metrics: &ThreadingMetrics) {
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
pub(crate) enum CommandOutcome {
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
    pub(crate) const ALL: [CommandOutcome; 5] = [
        Self::Applied,
        Self::Unchanged,
        Self::Duplicate,
        Self::Refused,
        Self::Retried,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
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
pub(crate) struct CommandMetrics {
    outcomes: [Counter; CommandOutcome::ALL.len()],
}

impl CommandMetrics {
    pub(crate) fn register(source: &'static str) -> Self {
        Self {
            outcomes: CommandOutcome::ALL.map(|outcome| {
                counter!(names::THREADING_COMMANDS_TOTAL, "source" => source, "outcome" => outcome.as_str())
            }),
        }
    }
}

/// A helpdesk command was handled (or one attempt at it failed).
#[derive(Debug)]
pub(crate) struct CommandHandled<'a> {
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

impl InternalEvent for CommandHandled<'_> {
    type Handles = CommandMetrics;

    fn emit(self, metrics: &CommandMetrics) {
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

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, atomic::AtomicU64, atomic::Ordering};

    use metrics::{Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
    use omni_telemetry::emit;

    use super::*;

    /// Records every counter registered, as Prometheus spells its series.
    #[derive(Debug, Default)]
    struct Capture(Mutex<Vec<(String, Arc<AtomicU64>)>>);

    impl Capture {
        fn series(&self) -> Vec<(String, u64)> {
            let counters = self.0.lock().unwrap();
            counters
                .iter()
                .map(|(series, value)| (series.clone(), value.load(Ordering::Relaxed)))
                .collect()
        }
    }

    impl Recorder for Capture {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels: Vec<_> = key
                .labels()
                .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
                .collect();
            let value = Arc::new(AtomicU64::new(0));
            let series = format!("{}{{{}}}", key.name(), labels.join(","));
            self.0.lock().unwrap().push((series, value.clone()));
            Counter::from_arc(value)
        }

        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }

        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn an_oversized_webhook_body_counts_as_the_channels_too_large_outcome() {
        let capture = Capture::default();
        let limits =
            metrics::with_local_recorder(&capture, || WebhookLimitMetrics::register("shop"));
        emit!(WebhookTooLarge { max_body_bytes: 10 } => &limits);
        emit!(WebhookTooLarge { max_body_bytes: 10 } => &limits);
        assert_eq!(
            capture.series(),
            [(
                r#"omnid_webhook_requests_total{channel="shop",outcome="too_large"}"#.to_owned(),
                2
            )]
        );
    }

    #[test]
    fn reloads_count_by_result() {
        let capture = Capture::default();
        let (channels, rules) = metrics::with_local_recorder(&capture, || {
            (
                ReloadMetrics::register("channels"),
                ReloadMetrics::register("rules"),
            )
        });
        emit!(ChannelsReloaded { channels: 2, error: None } => &channels);
        emit!(ChannelsReloaded { channels: 2, error: Some("bad.toml: key `kind`") } => &channels);
        emit!(ChannelsReloaded { channels: 3, error: None } => &channels);
        emit!(RulesReloaded { rule_sets: 1, rules: 4, error: Some("shop.toml: key `name`") } => &rules);
        assert_eq!(
            capture.series(),
            [
                (
                    r#"omnid_config_reloads_total{files="channels",result="ok"}"#.to_owned(),
                    2
                ),
                (
                    r#"omnid_config_reloads_total{files="channels",result="error"}"#.to_owned(),
                    1
                ),
                (
                    r#"omnid_config_reloads_total{files="rules",result="ok"}"#.to_owned(),
                    0
                ),
                (
                    r#"omnid_config_reloads_total{files="rules",result="error"}"#.to_owned(),
                    1
                ),
            ]
        );
    }

    #[test]
    fn held_back_retention_is_warned_about_when_it_starts_now_and_then_and_when_it_ends() {
        let start = std::time::Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let reminder = Duration::from_secs(600);
        let mut state = None;
        let mut logged = Vec::new();
        for (secs, held) in [
            (0, 0),
            (60, 5),
            (120, 9),
            (600, 9),
            (660, 12),
            (720, 0),
            (780, 0),
            (840, 3),
        ] {
            let (log, next) = hold_log(state, held, at(secs), reminder);
            state = next;
            logged.push(log);
        }
        assert_eq!(
            logged,
            [
                HoldLog::Quiet,
                HoldLog::Started,
                HoldLog::Quiet,
                HoldLog::Quiet,
                HoldLog::Continues,
                HoldLog::Ended,
                HoldLog::Quiet,
                HoldLog::Started,
            ]
        );
    }

    #[test]
    fn retention_counts_removed_records_per_topic() {
        let capture = Capture::default();
        let metrics = metrics::with_local_recorder(&capture, || {
            TopicRetentionMetrics::register("omni.inbound.v1", &["omnid-threading"])
        });
        let retained = |removed_records| omni_log::TopicRetention {
            stats: omni_log::TopicStats {
                topic: "omni.inbound.v1".into(),
                records: 3,
                bytes: 300,
                start_offset: 7,
                end_offset: 10,
            },
            removed_records,
            removed_bytes: removed_records * 100,
            held_back: vec![omni_log::HeldBack {
                group: "omnid-threading".into(),
                committed: Some(7),
                records: 0,
            }],
        };
        emit!(LogRetained { retained: &retained(4) } => &metrics);
        emit!(LogRetained { retained: &retained(3) } => &metrics);
        assert_eq!(
            capture.series(),
            [(
                r#"omnid_log_retention_removed_records_total{topic="omni.inbound.v1"}"#.to_owned(),
                7
            )]
        );
    }
}
