//! The SDK's internal events: what the webhook driver and the media queue
//! report, each emitting its log line and its metrics together through
//! [`omni_telemetry::emit!`].

use std::{sync::Arc, time::Duration};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use omni_telemetry::{InternalEvent, LogSampler, names};
use tracing::{debug, error, info, warn};

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

impl InternalEvent for WebhookHandled<'_> {
    type Handles = WebhookMetrics;

    fn emit(self, metrics: &WebhookMetrics) {
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

impl InternalEvent for DeadLettered<'_> {
    type Handles = WebhookMetrics;

    fn emit(self, metrics: &WebhookMetrics) {
        metrics.dead_letters.increment(1);
        warn!(channel = %metrics.channel, reason = self.reason, detail = self.detail, "input dead-lettered");
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
    queue_full: Counter,
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
            queue_full: given_up("queue_full"),
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

impl InternalEvent for MediaDeferred {
    type Handles = MediaMetrics;

    fn emit(self, metrics: &MediaMetrics) {
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

impl InternalEvent for MediaFetched<'_> {
    type Handles = MediaMetrics;

    fn emit(self, metrics: &MediaMetrics) {
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

impl InternalEvent for MediaRetried<'_> {
    type Handles = MediaMetrics;

    fn emit(self, metrics: &MediaMetrics) {
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

impl InternalEvent for MediaGivenUp<'_> {
    type Handles = MediaMetrics;

    fn emit(self, metrics: &MediaMetrics) {
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

/// Downloads not queued because the queue already held its maximum: the
/// messages keep the provider's references.
#[derive(Debug)]
pub struct MediaQueueFull<'a> {
    /// The first job not queued (the others are counted).
    pub channel: &'a str,
    pub event_id: &'a str,
    pub jobs: u64,
    pub max_jobs: u64,
}

impl InternalEvent for MediaQueueFull<'_> {
    type Handles = MediaMetrics;

    fn emit(self, metrics: &MediaMetrics) {
        metrics.queue_full.increment(self.jobs);
        warn!(
            channel = self.channel,
            event_id = self.event_id,
            jobs = self.jobs,
            max_jobs = self.max_jobs,
            "media queue full, downloads not queued: the messages keep the provider's references"
        );
    }
}

/// How many downloads the queue holds (due or waiting for a retry).
#[derive(Debug)]
pub struct MediaQueueDepth {
    pub jobs: u64,
}

impl InternalEvent for MediaQueueDepth {
    type Handles = MediaMetrics;

    fn emit(self, metrics: &MediaMetrics) {
        metrics.depth.set(self.jobs as f64);
    }
}
