//! One channel's outbound queue, worked through in order, one record at a
//! time: a channel whose provider is down or throttling holds back its own
//! replies only.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::FutureExt as _;
use omni_connector::{
    ChannelState, Delivered, DeliveryError, EventSender, OutboundHandler, SendError, StateStore,
    StateUpdate,
};
use omni_log::{Position, StoredRecord};
use omni_model::cloudevents;
use omni_proto::v1::{ChannelKind, ConversationEvent, Direction, EventKind};
use omni_telemetry::emit;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::status::delivery_status;
use crate::events::{OutboundDelivered, OutboundMetrics, OutboundOutcome};
use crate::{
    channels::LiveChannels,
    consume::{self, Backoff, Stopped, dead_letter_of, header, pause},
    traces::{self, DeliveryEnd},
};

/// Longest wait a provider's `retry_after` may impose between two
/// attempts: a broken or hostile answer must not park a channel for days.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What every lane works with.
pub(super) struct Shared {
    pub sender: EventSender,
    /// Seen marks of delivered event ids (`None`: nothing is remembered).
    pub seen: Option<Arc<dyn StateStore>>,
    /// Where channels are looked up, afresh for every attempt.
    pub channels: LiveChannels,
    pub shutdown: CancellationToken,
}

/// A record for a lane, decoded by the dispatcher, which routes it by its
/// channel id.
pub(super) struct Item {
    pub stored: StoredRecord,
    pub decoded: Result<ConversationEvent, (&'static str, String)>,
}

/// A record whose outcome is durable (sent or failed status, or dead
/// letter): its position may be committed.
pub(super) type Done = (String, Position);

/// The wait before the next attempt after a temporary failure: the
/// backoff's, or longer when the provider asked for longer.
pub(super) fn retry_wait(backoff: &mut Backoff, retry_after: Option<Duration>) -> Duration {
    let wait = backoff.next();
    retry_after.map_or(wait, |after| wait.max(after.min(MAX_RETRY_AFTER)))
}

/// Where one outbound record ends up.
enum Outcome {
    Delivered(Delivered),
    Rejected(String),
    Unroutable {
        reason: &'static str,
        detail: String,
    },
}

/// The worker of one queue.
pub(super) struct Lane {
    shared: Arc<Shared>,
    metrics: HashMap<String, OutboundMetrics>,
}

impl Lane {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            metrics: HashMap::new(),
        }
    }

    /// Handles the queue's records in order, reporting each on `done`,
    /// until the queue closes or the dispatcher stops (the record in hand
    /// is finished first).
    pub(super) async fn run(
        mut self,
        mut queue: mpsc::Receiver<Item>,
        done: mpsc::UnboundedSender<Done>,
    ) {
        loop {
            let item = tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => return,
                item = queue.recv() => match item {
                    Some(item) => item,
                    None => return,
                },
            };
            let position = (item.stored.record.topic.clone(), item.stored.position);
            let channel_id = item.decoded.as_ref().ok().map(|e| e.channel_id.as_str());
            let mut traced = traces::Delivery::start(&item.stored, channel_id);
            let span = traced.span().clone();
            let handled = self.handle(item, &mut traced).instrument(span).await;
            drop(traced);
            if handled.is_err() || done.send(position).is_err() {
                return;
            }
        }
    }

    /// One record, from its decoded form to its durable outcome.
    async fn handle(&mut self, item: Item, traced: &mut traces::Delivery) -> Result<(), Stopped> {
        let Item { stored, decoded } = item;
        let event = match decoded {
            Ok(event) => event,
            Err((reason, detail)) => {
                let channel = header(&stored, cloudevents::HEADER_SOURCE)
                    .and_then(|s| s.rsplit('/').next().map(str::to_owned))
                    .unwrap_or_default();
                let event_id = header(&stored, cloudevents::HEADER_ID).unwrap_or_default();
                traced.ended(DeliveryEnd::DeadLettered(reason, &detail));
                return self
                    .dead_letter(&stored, &channel, &event_id, reason, &detail)
                    .await;
            }
        };
        if self.already_delivered(&event).await {
            traced.ended(DeliveryEnd::Duplicate);
            emit!(OutboundDelivered {
                outcome: OutboundOutcome::Duplicate,
                event_id: &event.event_id,
                detail: "",
                retry_in: None,
            } => self.metrics_for(&event.channel_id));
            return Ok(());
        }
        let result = match self.deliver(&event, traced).await? {
            Outcome::Unroutable { reason, detail } => {
                traced.ended(DeliveryEnd::DeadLettered(reason, &detail));
                return self
                    .dead_letter(&stored, &event.channel_id, &event.event_id, reason, &detail)
                    .await;
            }
            Outcome::Delivered(delivered) => Ok(delivered),
            Outcome::Rejected(reason) => Err(reason),
        };
        traced.ended(match &result {
            Ok(_) => DeliveryEnd::Delivered,
            Err(reason) => DeliveryEnd::Failed(reason),
        });
        let status = delivery_status(&event, result.as_ref(), SystemTime::now());
        self.append(status).await?;
        self.mark_delivered(&event).await;
        let (outcome, detail) = match &result {
            Ok(delivered) => (OutboundOutcome::Sent, delivered.provider_status.as_str()),
            Err(reason) => (OutboundOutcome::Failed, reason.as_str()),
        };
        emit!(OutboundDelivered {
            outcome,
            event_id: &event.event_id,
            detail,
            retry_in: None,
        } => self.metrics_for(&event.channel_id));
        Ok(())
    }

    /// Delivers until the channel accepts or refuses for good; temporary
    /// failures (and a handler that panics) are retried with backoff, the
    /// channel looked up afresh each time.
    async fn deliver(
        &mut self,
        event: &ConversationEvent,
        traced: &mut traces::Delivery,
    ) -> Result<Outcome, Stopped> {
        if event.direction != Direction::Outbound as i32 || event.kind != EventKind::Message as i32
        {
            return Ok(Outcome::Unroutable {
                reason: "not_outbound_message",
                detail: format!(
                    "expected direction DIRECTION_OUTBOUND and kind EVENT_KIND_MESSAGE, got {} and {}",
                    enum_name(
                        Direction::try_from(event.direction)
                            .ok()
                            .map(|d| d.as_str_name())
                    ),
                    enum_name(
                        EventKind::try_from(event.kind)
                            .ok()
                            .map(|k| k.as_str_name())
                    ),
                ),
            });
        }
        if event.event_id.is_empty() {
            return Ok(Outcome::Unroutable {
                reason: "missing_event_id",
                detail: "an outbound message needs an event_id (a uuidv5 of the channel id and your idempotency key)".into(),
            });
        }
        let mut backoff = Backoff::default();
        loop {
            let handler = match self.handler(&event.channel_id) {
                Ok(handler) => handler,
                Err(unroutable) => return Ok(unroutable),
            };
            let attempt = AssertUnwindSafe(handler.deliver(event))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(DeliveryError::temporary("the channel's sender panicked")));
            match attempt {
                Ok(delivered) => return Ok(Outcome::Delivered(delivered)),
                Err(DeliveryError::Rejected(reason)) => return Ok(Outcome::Rejected(reason)),
                Err(DeliveryError::Temporary {
                    reason,
                    retry_after,
                }) => {
                    let wait = retry_wait(&mut backoff, retry_after);
                    traced.retrying(&reason);
                    emit!(OutboundDelivered {
                        outcome: OutboundOutcome::Retried,
                        event_id: &event.event_id,
                        detail: &reason,
                        retry_in: Some(wait),
                    } => self.metrics_for(&event.channel_id));
                    pause(&self.shared.shutdown, wait).await?;
                }
            }
        }
    }

    fn handler(&self, channel_id: &str) -> Result<Arc<dyn OutboundHandler>, Outcome> {
        let channels = self.shared.channels.get();
        let Some(channel) = channels.get(channel_id) else {
            return Err(Outcome::Unroutable {
                reason: "unknown_channel",
                detail: format!("no channel with id {channel_id:?}"),
            });
        };
        channel
            .connector
            .outbound()
            .ok_or_else(|| Outcome::Unroutable {
                reason: "outbound_not_supported",
                detail: format!(
                    "channel {channel_id:?} (kind {}) cannot send messages",
                    channel.kind
                ),
            })
    }

    async fn already_delivered(&self, event: &ConversationEvent) -> bool {
        let Some(store) = &self.shared.seen else {
            return false;
        };
        let state = ChannelState::new(store.clone(), &event.channel_id);
        match state.seen(vec![seen_key(&event.event_id)]).await {
            Ok(seen) => seen.first().copied().unwrap_or(false),
            Err(error) => {
                tracing::warn!(channel = %event.channel_id, event_id = %event.event_id, error = %error, "cannot check whether an outbound message was sent, sending");
                false
            }
        }
    }

    async fn mark_delivered(&self, event: &ConversationEvent) {
        let Some(store) = &self.shared.seen else {
            return;
        };
        let state = ChannelState::new(store.clone(), &event.channel_id);
        let update = StateUpdate {
            puts: Vec::new(),
            seen: vec![seen_key(&event.event_id)],
            deletes: Vec::new(),
        };
        if let Err(error) = state.commit(update).await {
            tracing::warn!(channel = %event.channel_id, event_id = %event.event_id, error = %error, "cannot record an outbound message as sent; a redelivery would send it again");
        }
    }

    /// Appends a delivery status, retrying until it is durable.
    async fn append(&self, status: ConversationEvent) -> Result<(), Stopped> {
        let mut backoff = Backoff::default();
        loop {
            match self.shared.sender.send_event(status.clone()).await {
                Ok(_) => return Ok(()),
                Err(SendError::Closed) => return Err(Stopped),
                Err(error) => {
                    let wait = backoff.next();
                    tracing::warn!(channel = %status.channel_id, event_id = %status.event_id, error = %error, retry_in_ms = wait.as_millis() as u64, "cannot store a delivery status, retrying");
                    pause(&self.shared.shutdown, wait).await?;
                }
            }
        }
    }

    async fn dead_letter(
        &mut self,
        stored: &StoredRecord,
        channel_id: &str,
        event_id: &str,
        reason: &'static str,
        detail: &str,
    ) -> Result<(), Stopped> {
        let channels = self.shared.channels.get();
        let channel_kind = channels
            .get(channel_id)
            .map_or(ChannelKind::Unspecified, |channel| channel.channel_kind);
        let dead_letter =
            dead_letter_of(stored, channel_id, channel_kind, event_id, reason, detail);
        consume::store_dead_letter(&self.shared.sender, dead_letter, &self.shared.shutdown).await?;
        let label = if channels.contains_key(channel_id) {
            channel_id
        } else {
            OutboundMetrics::UNKNOWN_CHANNEL
        };
        emit!(OutboundDelivered {
            outcome: OutboundOutcome::DeadLettered,
            event_id,
            detail: &format!("{reason}: {detail}"),
            retry_in: None,
        } => self.metrics_for(label));
        Ok(())
    }

    /// The metrics of a configured channel (records for unknown channels
    /// count under one label).
    fn metrics_for(&mut self, channel_id: &str) -> &OutboundMetrics {
        let label = if channel_id == OutboundMetrics::UNKNOWN_CHANNEL
            || self.shared.channels.get().contains_key(channel_id)
        {
            channel_id
        } else {
            OutboundMetrics::UNKNOWN_CHANNEL
        };
        self.metrics
            .entry(label.to_owned())
            .or_insert_with(|| OutboundMetrics::register(label))
    }
}

/// The seen-set id of a delivered outbound event.
fn seen_key(event_id: &str) -> String {
    format!("outbound:{event_id}")
}

fn enum_name(name: Option<&'static str>) -> &'static str {
    name.unwrap_or("an unknown value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::{INITIAL_BACKOFF, MAX_BACKOFF};

    #[test]
    fn a_provider_asking_for_longer_than_the_backoff_is_obeyed() {
        let mut backoff = Backoff::default();
        assert_eq!(retry_wait(&mut backoff, None), INITIAL_BACKOFF);
        let long = Duration::from_secs(90);
        assert!(long > MAX_BACKOFF);
        assert_eq!(retry_wait(&mut backoff, Some(long)), long);
        // Asking for less than the backoff does not shorten it.
        assert_eq!(
            retry_wait(&mut backoff, Some(Duration::from_millis(1))),
            INITIAL_BACKOFF * 4
        );
        // Nor can a provider park the channel for more than an hour.
        assert_eq!(
            retry_wait(&mut backoff, Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
    }
}
