//! The Telegram channel's own internal events (log line and metric
//! together), pre-registered per channel. The webhook's request metrics are
//! the shared `WebhookMetrics`.

use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};

pub const UPDATES_TOTAL: &str = "omnid_telegram_updates_total";
pub const POLL_ERRORS_TOTAL: &str = "omnid_telegram_poll_errors_total";
pub const OFFSET: &str = "omnid_telegram_offset";
pub const FILES_TOTAL: &str = "omnid_telegram_files_total";

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
        let updates = |outcome: &'static str| counter!(UPDATES_TOTAL, "channel" => channel.to_owned(), "outcome" => outcome);
        let files = |outcome: &'static str| counter!(FILES_TOTAL, "channel" => channel.to_owned(), "outcome" => outcome);
        Self {
            channel: channel.to_owned(),
            ingested: updates("ingested"),
            dead_lettered: updates("dead_lettered"),
            duplicates: updates("duplicate"),
            ignored: updates("ignored"),
            poll_errors: counter!(POLL_ERRORS_TOTAL, "channel" => channel.to_owned()),
            offset: gauge!(OFFSET, "channel" => channel.to_owned()),
            files_downloaded: files("downloaded"),
            files_listed: files("listed"),
        }
    }

    /// An update of a kind Omnid deliberately does not ingest was
    /// acknowledged without storing anything. Logged at info: such updates
    /// only come when `allowed_updates` asks for them.
    pub fn ignored(&self, update_id: u32, what: &'static str) {
        self.ignored.increment(1);
        tracing::info!(channel = %self.channel, update_id, kind = what, "telegram update not ingested");
    }

    /// A file was downloaded, or will never be and stays listed by its
    /// file_id.
    pub fn file(&self, downloaded: bool, file_id: &str, reason: &str) {
        if downloaded {
            self.files_downloaded.increment(1);
        } else {
            self.files_listed.increment(1);
            tracing::info!(channel = %self.channel, file_id, reason, "telegram file listed, not downloaded");
        }
    }

    pub fn webhook_update(&self, dead_lettered: bool) {
        if dead_lettered {
            self.dead_lettered.increment(1);
        } else {
            self.ingested.increment(1);
        }
    }

    /// A polled batch is durable and the offset moved.
    pub fn batch(&self, events: u64, dead_letters: u64, duplicates: u64, offset: i64) {
        self.ingested.increment(events);
        self.dead_lettered.increment(dead_letters);
        self.duplicates.increment(duplicates);
        self.offset.set(offset as f64);
        tracing::debug!(
            channel = %self.channel,
            events,
            dead_letters,
            duplicates,
            offset,
            "telegram batch checkpointed"
        );
    }

    pub fn poll_failed(&self, error: &dyn std::error::Error, retry_in: Duration) {
        self.poll_errors.increment(1);
        tracing::warn!(
            channel = %self.channel,
            error = %error,
            retry_in_ms = retry_in.as_millis() as u64,
            "telegram polling failed, retrying"
        );
    }
}
