//! Internal events: one struct per thing that happens, each emitting its log
//! line and metrics together.

use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};
use tracing::{debug, error, warn};

/// Metric names, in one place so dashboards and docs can rely on them.
pub mod names {
    pub const WEBHOOK_REQUESTS_TOTAL: &str = "omnid_webhook_requests_total";
    pub const WEBHOOK_DURATION_SECONDS: &str = "omnid_webhook_duration_seconds";
    pub const LOG_APPENDS_TOTAL: &str = "omnid_log_appends_total";
    pub const LOG_APPEND_ERRORS_TOTAL: &str = "omnid_log_append_errors_total";
    pub const DEAD_LETTERS_TOTAL: &str = "omnid_dead_letters_total";
    pub const CONFIG_RELOADS_TOTAL: &str = "omnid_config_reloads_total";
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
                warn!(channel, outcome, detail = self.detail, "webhook rejected")
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
