//! The Telegram channel's own internal events, each emitting its log line
//! and its metrics together through [`omni_telemetry::emit!`], with handles
//! registered once per channel. The webhook's request metrics are the SDK's
//! `WebhookMetrics`.

use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use omni_telemetry::{InternalEvent, names};
use tracing::{debug, info, warn};

/// Pre-registered metrics of one Telegram channel.
#[derive(Debug, Clone)]
pub struct TelegramMetrics {
    channel: String,
    ingested: Counter,
    dead_lettered: Counter,
    duplicates: Counter,
    ignored: Counter,
    poll_errors: Counter,
    offset: Gauge,
    files_downloaded: Counter,
    files_listed: Counter,
}

impl TelegramMetrics {
    pub fn register(channel: &str) -> Self {
        let updates = |outcome: &'static str| counter!(names::TELEGRAM_UPDATES_TOTAL, "channel" => channel.to_owned(), "outcome" => outcome);
        let files = |outcome: &'static str| counter!(names::TELEGRAM_FILES_TOTAL, "channel" => channel.to_owned(), "outcome" => outcome);
        Self {
            channel: channel.to_owned(),
            ingested: updates("ingested"),
            dead_lettered: updates("dead_lettered"),
            duplicates: updates("duplicate"),
            ignored: updates("ignored"),
            poll_errors: counter!(names::TELEGRAM_POLL_ERRORS_TOTAL, "channel" => channel.to_owned()),
            offset: gauge!(names::TELEGRAM_OFFSET, "channel" => channel.to_owned()),
            files_downloaded: files("downloaded"),
            files_listed: files("listed"),
        }
    }
}

/// An update of a kind Omnid deliberately does not ingest was acknowledged
/// without storing anything. Logged at info: such updates only come when
/// `allowed_updates` asks for them.
#[derive(Debug)]
pub struct UpdateIgnored {
    pub update_id: u32,
    /// What the update was (`edited_message`, `poll`, ...).
    pub kind: &'static str,
}

impl InternalEvent for UpdateIgnored {
    type Handles = TelegramMetrics;

    fn emit(self, metrics: &TelegramMetrics) {
        metrics.ignored.increment(1);
        info!(channel = %metrics.channel, update_id = self.update_id, kind = self.kind, "telegram update not ingested");
    }
}

/// A pushed update was answered: durable, or dead-lettered.
#[derive(Debug)]
pub struct WebhookUpdateHandled {
    pub dead_lettered: bool,
}

impl InternalEvent for WebhookUpdateHandled {
    type Handles = TelegramMetrics;

    fn emit(self, metrics: &TelegramMetrics) {
        if self.dead_lettered {
            metrics.dead_lettered.increment(1);
        } else {
            metrics.ingested.increment(1);
        }
    }
}

/// A file was downloaded.
#[derive(Debug)]
pub struct FileDownloaded;

impl InternalEvent for FileDownloaded {
    type Handles = TelegramMetrics;

    fn emit(self, metrics: &TelegramMetrics) {
        metrics.files_downloaded.increment(1);
    }
}

/// A file will never be downloaded: its attachment stays listed by its
/// `file_id`.
#[derive(Debug)]
pub struct FileListed<'a> {
    pub file_id: &'a str,
    pub reason: &'a str,
}

impl InternalEvent for FileListed<'_> {
    type Handles = TelegramMetrics;

    fn emit(self, metrics: &TelegramMetrics) {
        metrics.files_listed.increment(1);
        info!(channel = %metrics.channel, file_id = self.file_id, reason = self.reason, "telegram file listed, not downloaded");
    }
}

/// A polled batch is durable and the offset moved.
#[derive(Debug)]
pub struct BatchCheckpointed {
    pub events: u64,
    pub dead_letters: u64,
    pub duplicates: u64,
    pub offset: i64,
}

impl InternalEvent for BatchCheckpointed {
    type Handles = TelegramMetrics;

    fn emit(self, metrics: &TelegramMetrics) {
        metrics.ingested.increment(self.events);
        metrics.dead_lettered.increment(self.dead_letters);
        metrics.duplicates.increment(self.duplicates);
        metrics.offset.set(self.offset as f64);
        debug!(
            channel = %metrics.channel,
            events = self.events,
            dead_letters = self.dead_letters,
            duplicates = self.duplicates,
            offset = self.offset,
            "telegram batch checkpointed"
        );
    }
}

/// A `getUpdates` call failed; polling resumes after `retry_in`.
#[derive(Debug)]
pub struct PollFailed<'a> {
    pub error: &'a dyn std::error::Error,
    pub retry_in: Duration,
}

impl InternalEvent for PollFailed<'_> {
    type Handles = TelegramMetrics;

    fn emit(self, metrics: &TelegramMetrics) {
        metrics.poll_errors.increment(1);
        warn!(
            channel = %metrics.channel,
            error = %self.error,
            retry_in_ms = self.retry_in.as_millis() as u64,
            "telegram polling failed, retrying"
        );
    }
}
