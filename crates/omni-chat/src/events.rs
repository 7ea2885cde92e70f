//! The web chat's own metrics, registered once per channel: open
//! connections, messages, and every refusal by its reason (the close code's
//! or error frame's code), so an operator sees a misconfigured origin list
//! or a visitor hammering the channel without reading logs.

use metrics::{Counter, Gauge, counter, gauge};
use omni_telemetry::names;

/// Handles of one channel's metrics.
#[derive(Debug, Clone)]
pub struct ChatMetrics {
    channel: String,
    pub connections: Gauge,
    pub accepted: Counter,
    pub duplicates: Counter,
    /// Replies emailed because the visitor was away.
    pub offline_emailed: Counter,
    /// Replies queued for email that the visitor read in time.
    pub offline_read: Counter,
}

impl ChatMetrics {
    pub fn register(channel: &str) -> Self {
        let messages = |outcome: &'static str| counter!(names::CHAT_MESSAGES_TOTAL, "channel" => channel.to_owned(), "outcome" => outcome);
        Self {
            channel: channel.to_owned(),
            connections: gauge!(names::CHAT_CONNECTIONS, "channel" => channel.to_owned()),
            accepted: messages("accepted"),
            duplicates: messages("duplicate"),
            offline_emailed: counter!(names::CHAT_OFFLINE_REPLIES_TOTAL, "channel" => channel.to_owned(), "outcome" => "emailed"),
            offline_read: counter!(names::CHAT_OFFLINE_REPLIES_TOTAL, "channel" => channel.to_owned(), "outcome" => "read"),
        }
    }

    /// Counts a refusal: `omnid_chat_refusals_total{channel, reason}`. The
    /// reasons are the protocol's fixed codes, so the label stays bounded.
    pub fn refused(&self, reason: &'static str) {
        counter!(names::CHAT_REFUSALS_TOTAL, "channel" => self.channel.clone(), "reason" => reason)
            .increment(1);
        tracing::debug!(channel = %self.channel, reason, "chat refusal");
    }
}
