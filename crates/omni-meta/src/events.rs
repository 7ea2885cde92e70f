//! The Meta channels' own internal events, each emitting its log line and
//! its metrics together through [`omni_telemetry::emit!`]. Request metrics
//! (outcome, latency) are the SDK's `WebhookMetrics`; these count what was
//! inside the requests.

use metrics::{Counter, counter};
use omni_telemetry::{InternalEvent, names};
use tracing::debug;

/// Pre-registered metrics of one Meta channel:
/// `omnid_meta_updates_total{channel, outcome}`, where outcome is
/// `ingested`, `dead_lettered`, `duplicate` (a redelivery of something
/// already appended, dropped) or `own_echo` (Messenger or Instagram echoing
/// a reply Omnid sent, already on the timeline).
#[derive(Debug, Clone)]
pub struct MetaMetrics {
    ingested: Counter,
    dead_lettered: Counter,
    duplicate: Counter,
    own_echo: Counter,
}

impl MetaMetrics {
    pub fn register(channel: &str) -> Self {
        let updates = |outcome: &'static str| counter!(names::META_UPDATES_TOTAL, "channel" => channel.to_owned(), "outcome" => outcome);
        Self {
            ingested: updates("ingested"),
            dead_lettered: updates("dead_lettered"),
            duplicate: updates("duplicate"),
            own_echo: updates("own_echo"),
        }
    }
}

/// A POST's contents were read and redeliveries dropped: how many updates
/// go to the log, how many were unreadable, how many were own echoes.
#[derive(Debug)]
pub struct UpdatesParsed {
    pub events: u64,
    pub dead_lettered: u64,
    pub own_echoes: u64,
}

impl InternalEvent for UpdatesParsed {
    type Handles = MetaMetrics;

    fn emit(self, metrics: &MetaMetrics) {
        metrics.ingested.increment(self.events);
        metrics.dead_lettered.increment(self.dead_lettered);
        metrics.own_echo.increment(self.own_echoes);
    }
}

/// Updates already appended arrived again (Meta retries for 7 days and
/// sometimes delivers twice after a 200) and were dropped.
#[derive(Debug)]
pub struct DuplicatesDropped<'a> {
    pub channel: &'a str,
    pub count: u64,
}

impl InternalEvent for DuplicatesDropped<'_> {
    type Handles = MetaMetrics;

    fn emit(self, metrics: &MetaMetrics) {
        debug!(channel = %self.channel, count = self.count, "redelivered updates dropped");
        metrics.duplicate.increment(self.count);
    }
}
