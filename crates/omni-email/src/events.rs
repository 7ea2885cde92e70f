//! The IMAP connector's internal events: each emits its log line and its
//! metrics together through [`omni_telemetry::emit!`], with handles
//! registered once per mailbox.

use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use omni_telemetry::{InternalEvent, names};
use tracing::{debug, warn};

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

impl InternalEvent for ImapBatchIngested {
    type Handles = ImapMetrics;

    fn emit(self, metrics: &ImapMetrics) {
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

impl InternalEvent for ImapSessionFailed<'_> {
    type Handles = ImapMetrics;

    fn emit(self, metrics: &ImapMetrics) {
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

impl InternalEvent for ImapUidValidityChanged {
    type Handles = ImapMetrics;

    fn emit(self, metrics: &ImapMetrics) {
        warn!(
            channel = %metrics.channel,
            mailbox = %metrics.mailbox,
            previous = self.previous,
            current = self.current,
            "imap uidvalidity changed, resyncing deduplicated by message-id"
        );
    }
}
