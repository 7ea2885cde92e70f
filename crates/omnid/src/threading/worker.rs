//! The threading worker: threads each polled batch of the inbound topic
//! in one store transaction, dead-letters what cannot be threaded, and
//! wakes the relay.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use omni_connector::EventSender;
use omni_log::{EventLog, StoredRecord};
use omni_model::cloudevents;
use omni_proto::v1::ChannelKind;
use omni_telemetry::emit;
use omni_threading::{InboundEvent, Outcome, ThreadingConfig, ThreadingStore};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::consume::{self, Backoff, Stopped, dead_letter_of, decode, header, pause};
use crate::events::{EventThreaded, ThreadingMetrics, ThreadingOutcome};
use crate::traces;

/// The consumer group of the threading worker on the inbound topic.
pub(super) const GROUP: &str = "omnid-threading";

/// Records threaded per poll (and per store transaction and commit). A
/// poll returns what is there, so batches are small when traffic is light;
/// under a backlog a larger transaction shares more pages per commit
/// (docs/benchmarks.md, "Threading": 1,024 threads ~30% faster than 256
/// embedded), while one batch still commits well within a second.
const POLL_BATCH: usize = 1024;

pub(super) struct Worker {
    pub log: Arc<dyn EventLog>,
    pub topic: String,
    pub store: Arc<dyn ThreadingStore>,
    pub config: ThreadingConfig,
    /// The customer-service rules, current as of each batch: a reload
    /// takes effect from the next batch, never inside one.
    pub rules: crate::rules::Rules,
    pub sender: EventSender,
    pub metrics: ThreadingMetrics,
    pub wake: Arc<Notify>,
    pub shutdown: CancellationToken,
    /// Each threaded event's trace context, for the relay.
    pub traces: Arc<traces::EventTraces>,
    /// When the SLA clock last fired timers (UTC ms).
    pub sla_clock_ms: AtomicI64,
}

impl consume::BatchHandler for Worker {
    async fn handle_batch(&self, records: &[StoredRecord]) -> Result<(), Stopped> {
        let mut traced = traces::ThreadingBatch::start(&self.topic, records, &self.traces);
        let span = traced.span.clone();
        self.handle(records, &mut traced).instrument(span).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// The SLA clock: fires the timers due by `polled_at` (less a second
    /// for events still being appended as the poll ran), at most once a
    /// second. Only now, when every earlier event has been threaded, so
    /// an answer that came in time is never counted late and a replay
    /// writes the same entries. A store failure waits for the next tick.
    async fn caught_up(&self, polled_at: SystemTime) -> Result<(), Stopped> {
        let now_ms = polled_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .saturating_sub(SLA_CLOCK_MARGIN_MS);
        let last = self.sla_clock_ms.load(Ordering::Relaxed);
        if now_ms < last.saturating_add(SLA_CLOCK_TICK_MS) {
            return Ok(());
        }
        self.sla_clock_ms.store(now_ms, Ordering::Relaxed);
        loop {
            match self
                .store
                .fire_sla_timers(now_ms, SLA_TIMERS_PER_ROUND)
                .await
            {
                Ok(fired) if fired.is_empty() => return Ok(()),
                Ok(_) => self.wake.notify_one(),
                Err(error) => {
                    tracing::warn!(error = %anyhow::Error::new(error), "SLA timers not fired, retrying at the next tick");
                    return Ok(());
                }
            }
            if self.shutdown.is_cancelled() {
                return Err(Stopped);
            }
        }
    }
}

/// How far behind the poll the SLA clock runs: an event being appended
/// while the poll ran may carry a time up to this much earlier.
const SLA_CLOCK_MARGIN_MS: i64 = 1_000;
/// The SLA clock's resolution.
const SLA_CLOCK_TICK_MS: i64 = 1_000;
/// Conversations whose timers one store transaction fires.
const SLA_TIMERS_PER_ROUND: u32 = 256;

impl Worker {
    pub(super) async fn run(self) {
        consume::consume_batches(
            self.log.as_ref(),
            GROUP,
            &self.topic,
            POLL_BATCH,
            &self.shutdown,
            &self,
        )
        .await;
    }

    /// Threads a polled batch in one store transaction (one commit, so
    /// one fsync, for all of it) and dead-letters the records that are no
    /// conversation event or that the threading logic refuses. A store
    /// failure leaves nothing written and is retried, the whole batch,
    /// until it passes or the worker is stopped.
    async fn handle(
        &self,
        records: &[StoredRecord],
        traced: &mut traces::ThreadingBatch<'_>,
    ) -> Result<(), Stopped> {
        let mut threadable: Vec<(&StoredRecord, InboundEvent)> = Vec::with_capacity(records.len());
        for stored in records {
            match decode(stored) {
                Ok(event) => threadable.push((
                    stored,
                    InboundEvent {
                        claims: event.sender_identities.clone(),
                        event,
                    },
                )),
                Err((reason, detail)) => {
                    let channel = header(stored, cloudevents::HEADER_SOURCE)
                        .and_then(|s| s.rsplit('/').next().map(str::to_owned))
                        .unwrap_or_default();
                    let event_id = header(stored, cloudevents::HEADER_ID).unwrap_or_default();
                    self.dead_letter(
                        stored,
                        &channel,
                        ChannelKind::Unspecified,
                        &event_id,
                        reason,
                        &detail,
                    )
                    .await?;
                }
            }
        }
        if threadable.is_empty() {
            return Ok(());
        }
        let (threadable, inputs): (Vec<&StoredRecord>, Vec<InboundEvent>) =
            threadable.into_iter().unzip();
        let config = ThreadingConfig {
            rules: self.rules.current(),
            ..self.config.clone()
        };
        let mut backoff = Backoff::default();
        let outcomes = loop {
            match self.store.thread_batch(&config, &inputs).await {
                Ok(outcomes) => break outcomes,
                Err(error) => {
                    let wait = backoff.next();
                    // One line per attempt, naming the batch's first event.
                    emit!(EventThreaded {
                        outcome: ThreadingOutcome::Retried,
                        event_id: &inputs[0].event.event_id,
                        customer_id: "",
                        detail: &format!(
                            "batch of {} events: {:#}",
                            inputs.len(),
                            anyhow::Error::new(error)
                        ),
                        retry_in: Some(wait),
                    } => &self.metrics);
                    pause(&self.shutdown, wait).await?;
                }
            }
        };
        for ((stored, input), outcome) in threadable.into_iter().zip(&inputs).zip(outcomes) {
            let event = &input.event;
            traced.threaded(&event.event_id, &outcome);
            let emit = |outcome, customer_id: &str| {
                emit!(EventThreaded {
                    outcome,
                    event_id: &event.event_id,
                    customer_id,
                    detail: "",
                    retry_in: None,
                } => &self.metrics);
            };
            match outcome {
                Ok(Outcome::Duplicate) => emit(ThreadingOutcome::Duplicate, ""),
                Ok(Outcome::Threaded { customer_id, .. }) => {
                    emit(ThreadingOutcome::Threaded, customer_id.as_str());
                }
                Err(refused) => {
                    let kind = ChannelKind::try_from(event.channel_kind)
                        .unwrap_or(ChannelKind::Unspecified);
                    self.dead_letter(
                        stored,
                        &event.channel_id,
                        kind,
                        &event.event_id,
                        "not_threadable",
                        &refused.to_string(),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        stored: &StoredRecord,
        channel_id: &str,
        channel_kind: ChannelKind,
        event_id: &str,
        reason: &'static str,
        detail: &str,
    ) -> Result<(), Stopped> {
        let dead_letter =
            dead_letter_of(stored, channel_id, channel_kind, event_id, reason, detail);
        consume::store_dead_letter(&self.sender, dead_letter, &self.shutdown).await?;
        emit!(EventThreaded {
            outcome: ThreadingOutcome::DeadLettered,
            event_id,
            customer_id: "",
            detail: &format!("{reason}: {detail}"),
            retry_in: None,
        } => &self.metrics);
        Ok(())
    }
}
