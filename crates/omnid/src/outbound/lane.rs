//! One channel's outbound queue: a channel whose provider is down or
//! throttling holds back its own replies only.
//!
//! Records for different conversations are delivered concurrently (up to
//! [`IN_FLIGHT`] at once), those for one conversation (the same recipients
//! and chat) one after the other in queue order, so a customer never gets
//! two replies swapped. Why: each delivery waits for the provider and then
//! for two durable writes (its status and its seen mark); one at a time, a
//! channel sent a few hundred replies a second however fast its provider
//! was (docs/benchmarks.md, "Acknowledgement latency"), while concurrent
//! deliveries share their fsyncs (the log commits appends made together
//! in one transaction).

use std::{
    collections::{HashMap, VecDeque},
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use futures::FutureExt as _;
use omni_connector::{
    ChannelState, Delivered, DeliveryError, EventSender, OutboundHandler, SendError, StateStore,
    StateUpdate,
};
use omni_log::{Position, StoredRecord};
use omni_model::cloudevents;
use omni_proto::v1::{ChannelKind, ConversationEvent, Direction, EventKind};
use omni_telemetry::emit;
use tokio::{sync::mpsc, task::JoinSet};
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

/// Records of one lane being delivered at once, and waiting behind an
/// earlier record of their conversation, in all: what a lane holds beyond
/// its queue.
pub(super) const IN_FLIGHT: usize = 32;

/// The worker of one queue.
pub(super) struct Lane {
    shared: Arc<Shared>,
    metrics: Mutex<HashMap<String, OutboundMetrics>>,
    /// Until when the provider rests after a temporary failure.
    resting_until: Mutex<Option<Instant>>,
}

/// Which records must keep their order: those to the same recipients in
/// the same chat (an undecodable record orders with the other ones).
fn conversation_key(item: &Item) -> String {
    let Ok(event) = &item.decoded else {
        return String::new();
    };
    let mut key = String::new();
    for recipient in &event.recipients {
        key.push_str(&recipient.scope);
        key.push('\u{0}');
        key.push_str(&recipient.value);
        key.push('\u{0}');
    }
    if let Some(threading) = &event.threading {
        key.push_str(&threading.provider_chat_id);
    }
    key
}

impl Lane {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            metrics: Mutex::new(HashMap::new()),
            resting_until: Mutex::new(None),
        }
    }

    /// Handles the queue's records, each conversation's in order, reporting
    /// each on `done` once its outcome is durable, until the queue closes or
    /// the dispatcher stops (records in hand are finished first; one
    /// waiting for a retry stops at once, uncommitted, and is delivered
    /// again after a restart).
    pub(super) async fn run(
        self,
        mut queue: mpsc::Receiver<Item>,
        done: mpsc::UnboundedSender<Done>,
    ) {
        let lane = Arc::new(self);
        let mut running: JoinSet<(String, Result<(), Stopped>, Done)> = JoinSet::new();
        // Per conversation running now: the records queued behind it.
        let mut waiting: HashMap<String, VecDeque<Item>> = HashMap::new();
        let mut held = 0usize;
        let start = |running: &mut JoinSet<_>, key: String, item: Item| {
            let lane = lane.clone();
            running.spawn(async move {
                let position = (item.stored.record.topic.clone(), item.stored.position);
                let channel_id = item.decoded.as_ref().ok().map(|e| e.channel_id.as_str());
                let mut traced = traces::Delivery::start(&item.stored, channel_id);
                let span = traced.span().clone();
                let handled = lane.handle(item, &mut traced).instrument(span).await;
                drop(traced);
                (key, handled, position)
            });
        };
        let mut closed = false;
        loop {
            let stopping = lane.shared.shutdown.is_cancelled();
            if (closed || stopping) && running.is_empty() {
                return;
            }
            tokio::select! {
                biased;
                // Wakes an idle lane to stop; records in hand finish first.
                () = lane.shared.shutdown.cancelled(), if !stopping => {}
                finished = running.join_next(), if !running.is_empty() => {
                    let Some(Ok((key, handled, position))) = finished else {
                        // A panic outside the provider's code: stop the
                        // lane; its records are delivered after a restart.
                        return;
                    };
                    held -= 1;
                    if handled.is_err() || done.send(position).is_err() {
                        return;
                    }
                    // The next record of the conversation, unless stopping:
                    // what was not started is delivered after a restart.
                    match waiting.get_mut(&key).and_then(VecDeque::pop_front) {
                        Some(next) if !lane.shared.shutdown.is_cancelled() => {
                            start(&mut running, key, next);
                        }
                        _ => {
                            waiting.remove(&key);
                        }
                    }
                }
                item = queue.recv(), if !closed && !stopping && held < IN_FLIGHT => match item {
                    Some(item) => {
                        held += 1;
                        let key = conversation_key(&item);
                        match waiting.get_mut(&key) {
                            Some(behind) => behind.push_back(item),
                            None => {
                                waiting.insert(key.clone(), VecDeque::new());
                                start(&mut running, key, item);
                            }
                        }
                    }
                    None => closed = true,
                },
                else => return,
            }
        }
    }

    /// One record, from its decoded form to its durable outcome.
    async fn handle(&self, item: Item, traced: &mut traces::Delivery) -> Result<(), Stopped> {
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
            } => &self.metrics_for(&event.channel_id));
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
        } => &self.metrics_for(&event.channel_id));
        Ok(())
    }

    /// Delivers until the channel accepts or refuses for good; temporary
    /// failures (and a handler that panics) are retried with backoff, the
    /// channel looked up afresh each time.
    async fn deliver(
        &self,
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
            // A provider that failed one delivery is given the same rest
            // by all of them, not hit by every record in flight.
            let resting = *self.resting_until.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(wait) =
                resting.and_then(|until| until.checked_duration_since(Instant::now()))
            {
                pause(&self.shared.shutdown, wait).await?;
            }
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
                    {
                        let mut until =
                            self.resting_until.lock().unwrap_or_else(|e| e.into_inner());
                        let end = Instant::now() + wait;
                        *until = Some(until.map_or(end, |u| u.max(end)));
                    }
                    traced.retrying(&reason);
                    emit!(OutboundDelivered {
                        outcome: OutboundOutcome::Retried,
                        event_id: &event.event_id,
                        detail: &reason,
                        retry_in: Some(wait),
                    } => &self.metrics_for(&event.channel_id));
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
        &self,
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
        } => &self.metrics_for(label));
        Ok(())
    }

    /// The metrics of a configured channel (records for unknown channels
    /// count under one label).
    fn metrics_for(&self, channel_id: &str) -> OutboundMetrics {
        let label = if channel_id == OutboundMetrics::UNKNOWN_CHANNEL
            || self.shared.channels.get().contains_key(channel_id)
        {
            channel_id
        } else {
            OutboundMetrics::UNKNOWN_CHANNEL
        };
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label.to_owned())
            .or_insert_with(|| OutboundMetrics::register(label))
            .clone()
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
