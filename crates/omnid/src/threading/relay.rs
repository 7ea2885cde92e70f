//! The timeline relay: publishes the store's outbox to the timeline topic
//! in order, once, while it holds the store's relay lease.

use std::{collections::HashSet, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use omni_connector::{EventSink as _, LogEntry};
use omni_log::EventLog;
use omni_model::cloudevents;
use omni_proto::{
    Message as _,
    v1::{
        AutomatedReplyKind, ChannelKind, ConversationEvent, Priority, SlaResponse, TimelineEvent,
        timeline_event::Entry,
    },
};
use omni_telemetry::emit;
use omni_threading::{OutboxRow, ThreadingStore};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::events::{
    AutomatedReplyRelayed, ReplyKind, ReplyOutcome, SlaEntryPublished, SlaWhat, ThreadingMetrics,
    TimelinePublished,
};
use crate::{
    channels::{ChannelSet, LiveChannels},
    consume::{Backoff, header, timestamp},
    sink::LogSink,
    traces,
};

/// Outbox rows published per append batch; also how far back the relay
/// looks in the timeline topic at start.
const RELAY_BATCH: u32 = 1024;

/// How often the relay looks for rows when nobody wakes it (rows written
/// by other processes on a shared PostgreSQL), and how often a standby
/// relay asks for the lease.
const RELAY_IDLE: Duration = Duration::from_millis(500);

/// How long the relay lease lasts unless renewed. A holder publishes only
/// while at least two thirds of it remain, so a round (append, wait for
/// the broker, mark) has 20 s before a standby may take over; a holder
/// stalled longer than that may repeat entries, never lose or reorder
/// them, and consumers drop repeats by `(customer_id, sequence)`.
pub(super) const RELAY_LEASE: Duration = Duration::from_secs(30);

/// The lease's name in the store.
const RELAY_LEASE_NAME: &str = "timeline-relay";

pub(super) struct Relay {
    pub store: Arc<dyn ThreadingStore>,
    pub log: Arc<dyn EventLog>,
    pub sink: LogSink,
    pub topic: String,
    pub metrics: ThreadingMetrics,
    pub wake: Arc<Notify>,
    /// Cancelled at shutdown: publish what is pending, then return.
    pub stop: CancellationToken,
    /// This process's name on the relay lease.
    pub holder: String,
    /// Trace contexts of the events the worker threaded.
    pub traces: Arc<traces::EventTraces>,
    /// The channels of the moment (reloads included): an automated reply
    /// is checked against them as `POST /v1/outbound` checks a posted one.
    pub channels: LiveChannels,
}

/// This daemon's name on the relay lease: its host and data directory.
/// Stable across restarts, so a daemon restarted after a crash takes its
/// own lease back at once instead of waiting for it to lapse; distinct
/// between daemons, which never share a data directory (the event log and
/// channel state live there).
pub(super) fn relay_holder(data_dir: &Path) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    format!("{host}:{}", dir.display())
}

/// What one relay round did.
enum Round {
    Published,
    Idle,
    /// Another relay holds the lease.
    Standby,
}

impl Relay {
    pub(super) async fn run(self) {
        let mut backoff = Backoff::default();
        let mut reconciled = false;
        // When the lease was last taken or renewed (by our clock).
        let mut leased_at: Option<tokio::time::Instant> = None;
        tracing::info!(topic = %self.topic, holder = %self.holder, "timeline relay started");
        loop {
            let stopping = self.stop.is_cancelled();
            let step = async {
                if !self.hold_lease(&mut leased_at).await? {
                    return Ok(Round::Standby);
                }
                if !reconciled {
                    self.reconcile().await?;
                    reconciled = true;
                }
                let rows = self
                    .store
                    .pending_outbox(0, RELAY_BATCH)
                    .await
                    .context("reading the outbox")?;
                if rows.is_empty() {
                    return Ok(Round::Idle);
                }
                self.publish(&rows).await?;
                Ok::<_, anyhow::Error>(Round::Published)
            };
            match step.await {
                Ok(Round::Published) => backoff.reset(),
                Ok(Round::Idle | Round::Standby) if stopping => break,
                Ok(round) => {
                    backoff.reset();
                    if matches!(round, Round::Standby) {
                        // Whoever held it may have appended without
                        // marking: look at the topic before publishing.
                        reconciled = false;
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => {}
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(RELAY_IDLE) => {}
                    }
                }
                Err(error) => {
                    if stopping {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "timeline relay stopped with rows unpublished; they are published at the next start"
                        );
                        break;
                    }
                    let wait = backoff.next();
                    tracing::warn!(
                        error = format!("{error:#}"),
                        retry_in_ms = wait.as_millis() as u64,
                        "timeline relay failed, retrying"
                    );
                    // Rows appended before the failure may be on the
                    // topic already: look again before republishing.
                    reconciled = false;
                    tokio::select! {
                        _ = self.stop.cancelled() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        if leased_at.is_some()
            && let Err(error) = self
                .store
                .release_lease(RELAY_LEASE_NAME, &self.holder)
                .await
        {
            tracing::warn!(error = %error, "cannot give up the relay lease; a standby takes over when it expires");
        }
        tracing::info!("timeline relay stopped");
    }

    /// Takes or renews the relay lease when a third of it has passed;
    /// false while another relay holds it.
    async fn hold_lease(
        &self,
        leased_at: &mut Option<tokio::time::Instant>,
    ) -> anyhow::Result<bool> {
        let now = tokio::time::Instant::now();
        if leased_at.is_some_and(|at| now.duration_since(at) < RELAY_LEASE / 3) {
            return Ok(true);
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let ttl_ms = i64::try_from(RELAY_LEASE.as_millis()).unwrap_or(i64::MAX);
        let held = self
            .store
            .acquire_lease(RELAY_LEASE_NAME, &self.holder, now_ms, ttl_ms)
            .await
            .context("taking the relay lease")?;
        match (held, leased_at.is_some()) {
            (true, false) => {
                tracing::info!(holder = %self.holder, "this relay now publishes the timeline")
            }
            (false, true) => tracing::warn!(holder = %self.holder, "relay lease lost; standing by"),
            _ => {}
        }
        *leased_at = held.then_some(now);
        Ok(held)
    }

    /// Appends `rows` in order, waits until all are durable, marks them
    /// published.
    async fn publish(&self, rows: &[OutboxRow]) -> anyhow::Result<()> {
        let round = traces::relay_round(&self.topic, rows.len());
        self.publish_rows(rows, &round)
            .instrument(round.clone())
            .await
    }

    async fn publish_rows(&self, rows: &[OutboxRow], round: &tracing::Span) -> anyhow::Result<()> {
        // Replies the rules sent go out before their entries: once an
        // `automated_reply` entry is on the timeline topic its message is
        // durable on the outbound topic (or dead-lettered). A crash in
        // between appends them again, with the same event ids, and the
        // outbound dispatcher sends each id once.
        self.hand_over_replies(rows).await?;
        // `append` enqueues at once, so the topic gets the outbox order.
        let acks: Vec<_> = rows
            .iter()
            .map(|row| {
                let parent = traces::handed_over(round, &self.traces, &row.event.timeline_event_id);
                self.sink.submit_timeline(&row.event, parent.as_ref())
            })
            .collect();
        for ack in acks {
            ack.await.context("appending to the timeline topic")?;
        }
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        self.store
            .mark_published(&ids)
            .await
            .context("marking outbox rows published")?;
        emit!(TimelinePublished {
            entries: rows.len(),
            last_row: ids.last().copied().unwrap_or_default(),
        } => &self.metrics);
        for row in rows {
            self.observe_sla(&row.event);
        }
        Ok(())
    }

    /// Counts a published SLA entry in the SLA metrics.
    fn observe_sla(&self, entry: &TimelineEvent) {
        let (what, timer, priority) = match &entry.entry {
            Some(Entry::SlaAnswered(a)) => (
                SlaWhat::Answered {
                    seconds: a.response_ms as f64 / 1000.0,
                    in_time: a.in_time,
                },
                a.timer.as_ref(),
                a.priority,
            ),
            Some(Entry::SlaEscalated(e)) => (SlaWhat::Escalated, e.timer.as_ref(), e.priority),
            Some(Entry::SlaBreached(b)) => (SlaWhat::Breached, b.timer.as_ref(), b.priority),
            _ => return,
        };
        let Some(timer) = timer else { return };
        let priority = match Priority::try_from(priority) {
            Ok(Priority::P1) => "P1",
            Ok(Priority::P2) => "P2",
            Ok(Priority::P3) => "P3",
            Ok(Priority::P4) => "P4",
            _ => "unspecified",
        };
        let response = if timer.response == SlaResponse::Next as i32 {
            "next"
        } else {
            "first"
        };
        emit!(SlaEntryPublished {
            what,
            channel: &timer.channel_id,
            priority,
            response,
            event_id: &timer.event_id,
            conversation_id: &entry.conversation_id,
        } => &self.metrics);
    }

    /// Appends the outbound message of every `automated_reply` entry in
    /// `rows` to the outbound topic, in order, and waits until all are
    /// durable. A message the channel cannot take (the channel is gone, or
    /// its kind only receives, like the API channel) goes to the
    /// dead-letter topic instead, and its entry is still published: the
    /// timeline says what the rules decided, the dead letter why nothing
    /// was sent.
    async fn hand_over_replies(&self, rows: &[OutboxRow]) -> anyhow::Result<()> {
        let mut channels: Option<Arc<ChannelSet>> = None;
        let mut acks = Vec::new();
        for row in rows {
            let Some(Entry::AutomatedReply(reply)) = &row.event.entry else {
                continue;
            };
            let outbound = reply.outbound.clone().unwrap_or_default();
            let channels = channels.get_or_insert_with(|| self.channels.get());
            let kind = if reply.kind == AutomatedReplyKind::AutoReply as i32 {
                ReplyKind::AutoReply
            } else {
                ReplyKind::Acknowledgement
            };
            let entry = match checked_reply(outbound, channels) {
                Ok(event) => {
                    emit!(AutomatedReplyRelayed {
                        kind,
                        outcome: ReplyOutcome::HandedOver,
                        channel: &event.channel_id,
                        event_id: &event.event_id,
                        rule: &reply.rule,
                        trigger: &reply.event_id,
                        reason: "",
                        detail: "",
                    } => &self.metrics);
                    LogEntry::Outbound(Box::new(event))
                }
                Err(dead) => {
                    emit!(AutomatedReplyRelayed {
                        kind,
                        outcome: ReplyOutcome::DeadLettered,
                        channel: &dead.channel_id,
                        event_id: dead.metadata.get("event_id").map_or("", String::as_str),
                        rule: &reply.rule,
                        trigger: &reply.event_id,
                        reason: &dead.reason,
                        detail: &dead.detail,
                    } => &self.metrics);
                    LogEntry::DeadLetter(dead)
                }
            };
            acks.push(self.sink.submit(entry));
        }
        for ack in acks {
            ack.await
                .context("appending an automated reply to the outbound topic")?;
        }
        Ok(())
    }

    /// Marks published the pending rows already on the topic: those a
    /// crash left appended but unmarked (at most one batch, the newest
    /// records of the topic).
    async fn reconcile(&self) -> anyhow::Result<()> {
        let pending = self
            .store
            .pending_outbox(0, RELAY_BATCH)
            .await
            .context("reading the outbox")?;
        if pending.is_empty() {
            return Ok(());
        }
        let mut on_topic = HashSet::new();
        let partitions = self
            .log
            .partition_count(&self.topic)
            .await
            .context("reading the timeline topic")?;
        for partition in 0..partitions.max(1) {
            let end = self
                .log
                .end_offset(&self.topic, partition)
                .await
                .context("reading the timeline topic")?;
            let mut next = (end - i64::from(RELAY_BATCH)).max(0);
            while next < end {
                let records = self
                    .log
                    .read(&self.topic, partition, next, RELAY_BATCH as usize)
                    .await
                    .context("reading the timeline topic")?;
                let Some(last) = records.last() else {
                    break;
                };
                next = last.position.offset + 1;
                on_topic.extend(
                    records
                        .iter()
                        .filter_map(|r| header(r, cloudevents::HEADER_ID)),
                );
            }
        }
        let published: Vec<i64> = pending
            .iter()
            .filter(|row| on_topic.contains(&row.event.timeline_event_id))
            .map(|row| row.id)
            .collect();
        if !published.is_empty() {
            tracing::info!(
                entries = published.len(),
                "timeline entries found on the topic after a restart, not published again"
            );
            self.store
                .mark_published(&published)
                .await
                .context("marking outbox rows published")?;
        }
        Ok(())
    }
}

/// An automated reply's outbound message as the outbound topic takes it:
/// checked and completed as a message posted to `POST /v1/outbound` is,
/// its times left at the customer message's event time (so a repeat is
/// the same record). A refused one becomes its dead letter, with the
/// refusal's code as the reason (`unknown_channel`,
/// `outbound_not_supported`, `invalid_field`) and the message as its raw
/// payload.
fn checked_reply(
    outbound: ConversationEvent,
    channels: &ChannelSet,
) -> Result<ConversationEvent, Box<omni_proto::v1::DeadLetter>> {
    let at = outbound
        .ingested_at
        .and_then(|t| {
            let nanos = u32::try_from(t.nanos).ok()?;
            let secs = u64::try_from(t.seconds).ok()?;
            std::time::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        })
        .unwrap_or(std::time::UNIX_EPOCH);
    crate::outbound::prepare(outbound.clone(), channels, at).map_err(|refusal| {
        let mut dead = omni_connector::dead_letter(
            &outbound.channel_id,
            ChannelKind::try_from(outbound.channel_kind).unwrap_or_default(),
            refusal.code,
            &format!("automated reply not sent: {}", refusal.message),
            outbound.encode_to_vec(),
            cloudevents::CONTENT_TYPE_PROTOBUF,
            timestamp(std::time::SystemTime::now()),
        );
        dead.metadata = [
            ("event_id".to_owned(), outbound.event_id.clone()),
            (
                "automation_rule".to_owned(),
                outbound
                    .provider_metadata
                    .get("automation_rule")
                    .cloned()
                    .unwrap_or_default(),
            ),
        ]
        .into();
        Box::new(dead)
    })
}

#[cfg(test)]
mod tests {
    use omni_proto::Timestamp;

    use super::*;
    use crate::outbound::fixtures::{channels, posted};

    /// An automated acknowledgement as the threading logic builds it for
    /// `channel`.
    fn acknowledgement(channel: &str) -> ConversationEvent {
        let mut event = posted();
        event.channel_id = channel.into();
        event.provider_message_id = "automation/acknowledgement/ack/ev-1".into();
        event.event_id = omni_model::event_id(channel, &event.provider_message_id).to_string();
        event.direction = omni_proto::v1::Direction::Outbound as i32;
        event.kind = omni_proto::v1::EventKind::Message as i32;
        event.ingested_at = Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 5_000_000,
        });
        event
            .provider_metadata
            .insert("automation_rule".into(), "ack".into());
        event
    }

    #[test]
    fn a_sendable_reply_keeps_its_id_and_times() {
        let reply = acknowledgement("support-mail");
        let checked = checked_reply(reply.clone(), &channels()).unwrap();
        assert_eq!(checked.event_id, reply.event_id);
        assert_eq!(
            checked.ingested_at, reply.ingested_at,
            "a repeat is the same record"
        );
        assert_eq!(checked.channel_kind, ChannelKind::Email as i32);
        assert_eq!(
            checked_reply(reply, &channels()).unwrap(),
            checked,
            "deterministic"
        );
    }

    #[test]
    fn a_reply_the_channel_cannot_take_is_its_dead_letter() {
        for (channel, reason) in [
            ("shop-api", "outbound_not_supported"),
            ("gone", "unknown_channel"),
        ] {
            let reply = acknowledgement(channel);
            let dead = checked_reply(reply.clone(), &channels()).unwrap_err();
            assert_eq!(dead.reason, reason);
            assert_eq!(dead.channel_id, channel);
            assert!(
                dead.detail.starts_with("automated reply not sent: "),
                "{}",
                dead.detail
            );
            assert_eq!(dead.metadata["event_id"], reply.event_id);
            assert_eq!(dead.metadata["automation_rule"], "ack");
            assert_eq!(
                ConversationEvent::decode(dead.raw_payload.as_slice()).unwrap(),
                reply
            );
        }
    }
}
