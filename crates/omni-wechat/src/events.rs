//! The WeChat channels' own internal events, each emitting its log line
//! and its metrics together through [`omni_telemetry::emit!`], with handles
//! registered once per channel. The webhook's request metrics are the
//! SDK's `WebhookMetrics`.

use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use omni_telemetry::{InternalEvent, names};
use tracing::{debug, info, warn};

/// Pre-registered metrics of one WeChat channel.
#[derive(Debug, Clone)]
pub struct WechatMetrics {
    channel: String,
    ingested: Counter,
    dead_lettered: Counter,
    skipped: Counter,
    syncs_ok: Counter,
    syncs_failed: Counter,
}

impl WechatMetrics {
    pub fn register(channel: &str) -> Self {
        let messages = |outcome: &'static str| counter!(names::WECHAT_MESSAGES_TOTAL, "channel" => channel.to_owned(), "outcome" => outcome);
        let syncs = |outcome: &'static str| counter!(names::WECOM_KF_SYNCS_TOTAL, "channel" => channel.to_owned(), "outcome" => outcome);
        Self {
            channel: channel.to_owned(),
            ingested: messages("ingested"),
            dead_lettered: messages("dead_lettered"),
            skipped: messages("skipped"),
            syncs_ok: syncs("ok"),
            syncs_failed: syncs("failed"),
        }
    }

    /// The unread-age gauge of one customer-service account.
    pub(crate) fn unread_age(&self, open_kfid: &str) -> Gauge {
        gauge!(names::WECOM_KF_UNREAD_AGE_SECONDS, "channel" => self.channel.clone(), "open_kfid" => open_kfid.to_owned())
    }
}

/// A pushed Official Account message was answered: durable, or
/// dead-lettered.
#[derive(Debug)]
pub struct PushHandled {
    pub dead_lettered: bool,
}

impl InternalEvent for PushHandled {
    type Handles = WechatMetrics;

    fn emit(self, metrics: &WechatMetrics) {
        if self.dead_lettered {
            metrics.dead_lettered.increment(1);
        } else {
            metrics.ingested.increment(1);
        }
    }
}

/// A page of `kf/sync_msg` is durable and its cursor stored.
#[derive(Debug)]
pub struct SyncPageStored<'a> {
    pub open_kfid: &'a str,
    pub events: u64,
    pub dead_letters: u64,
    /// Items deliberately not ingested (servicer status changes, which
    /// belong to no customer).
    pub skipped: u64,
    pub has_more: bool,
}

impl InternalEvent for SyncPageStored<'_> {
    type Handles = WechatMetrics;

    fn emit(self, metrics: &WechatMetrics) {
        metrics.ingested.increment(self.events);
        metrics.dead_lettered.increment(self.dead_letters);
        metrics.skipped.increment(self.skipped);
        debug!(
            channel = %metrics.channel,
            open_kfid = self.open_kfid,
            events = self.events,
            dead_letters = self.dead_letters,
            skipped = self.skipped,
            has_more = self.has_more,
            "wecom kf page stored"
        );
    }
}

/// A sync of one account reached its end (`has_more` false).
#[derive(Debug)]
pub struct SyncCaughtUp<'a> {
    pub open_kfid: &'a str,
    pub pages: u64,
}

impl InternalEvent for SyncCaughtUp<'_> {
    type Handles = WechatMetrics;

    fn emit(self, metrics: &WechatMetrics) {
        metrics.syncs_ok.increment(1);
        if self.pages > 1 {
            info!(channel = %metrics.channel, open_kfid = self.open_kfid, pages = self.pages, "wecom kf account caught up");
        }
    }
}

/// A sync stopped before the end; the cursor stays at the last durable
/// page and the next callback or poll resumes from there.
#[derive(Debug)]
pub struct SyncFailed<'a> {
    pub open_kfid: &'a str,
    pub error: &'a dyn std::error::Error,
    pub retry_in: Duration,
}

impl InternalEvent for SyncFailed<'_> {
    type Handles = WechatMetrics;

    fn emit(self, metrics: &WechatMetrics) {
        metrics.syncs_failed.increment(1);
        warn!(
            channel = %metrics.channel,
            open_kfid = self.open_kfid,
            error = %self.error,
            retry_in_ms = self.retry_in.as_millis() as u64,
            "wecom kf sync failed, will resume from the stored cursor"
        );
    }
}
