//! Outbound: replies on `omni.outbound.v1` go out through their channel,
//! and what became of each comes back as a delivery-status event on the
//! inbound topic.
//!
//! The dispatcher is one consumer of group [`GROUP`]. For each record, in
//! order:
//! 1. decode it (protobuf, or JSON when its `content-type` says so);
//!    undecodable input, a record that is not an outbound message, an
//!    unknown channel or a channel that cannot send becomes a dead-letter
//!    record;
//! 2. skip it if this daemon already delivered that event id (a redelivery
//!    after a crash, or a client retrying with the same idempotency key):
//!    the seen marks live in `channel-state.sqlite3`, so this holds per
//!    daemon, and across a Kafka group rebalance delivery stays at least
//!    once;
//! 3. hand it to the channel's [`OutboundHandler`]; a temporary failure is
//!    retried with capped exponential backoff
//!    ([`INITIAL_BACKOFF`](crate::consume::INITIAL_BACKOFF) doubling up to
//!    [`MAX_BACKOFF`](crate::consume::MAX_BACKOFF)) without moving on, looking the channel up
//!    again each time, so a reload that fixes its settings takes effect;
//! 4. append the outcome (`DELIVERY_STATE_SENT` or `_FAILED`) as a
//!    delivery-status event through the same sink as connectors, and wait
//!    until it is durable;
//! 5. only then commit the record's position.
//!
//! A crash between 3 and 5 sends the message again, with the same
//! provider-visible id (an email's Message-ID), so delivery is at least
//! once and a repeat is recognisable.
//!
//! [`prepare`] is the other way in: it checks and completes a message
//! posted to `POST /v1/outbound`, which the server appends to the outbound
//! topic, for deployments whose helpdesk cannot produce to the log itself.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::http::StatusCode;
use omni_connector::{
    ChannelState, Delivered, DeliveryError, EventSender, OutboundHandler, Secret, SendError,
    StateStore, StateUpdate, signature::constant_time_eq,
};
use omni_log::{EventLog, StoredRecord, Subscription};
use omni_model::cloudevents;
use omni_proto::v1::{
    ChannelKind, ConversationEvent, DeliveryState, DeliveryStatus, Direction, EventKind,
    ThreadingHints,
};
use omni_telemetry::events::{
    OutboundDelivered, OutboundMetrics, OutboundOutcome, OutboundRequestMetrics,
};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    channels::{ChannelSet, Wiring},
    consume::{self, Backoff, Stopped, dead_letter_of, decode, header, pause, timestamp},
    server::AppState,
    settings::{Settings, Topics},
    sink::{Encoding, LogSink},
};

/// The consumer group of the dispatcher on the outbound topic.
pub const GROUP: &str = "omnid-outbound";

/// Longest idempotency key (`provider_message_id`) the API accepts.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 512;

/// Records fetched per poll.
const POLL_BATCH: usize = 16;

/// What `POST /v1/outbound` needs, installed on the [`AppState`] when
/// `http.api_token` is set.
#[derive(Debug)]
pub struct OutboundApi {
    /// SHA-256 of the bearer token: presented tokens are hashed and the
    /// digests compared in constant time, so neither the token's bytes nor
    /// its length leak through timing.
    token_sha256: [u8; 32],
    pub sink: LogSink,
    pub metrics: OutboundRequestMetrics,
}

impl OutboundApi {
    pub fn new(token: &Secret, sink: LogSink) -> Self {
        Self {
            token_sha256: Sha256::digest(token.expose()).into(),
            sink,
            metrics: OutboundRequestMetrics::register(),
        }
    }

    /// Whether `presented` is the configured token.
    pub fn authorizes(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        constant_time_eq(&digest, &self.token_sha256)
    }
}

/// The running dispatcher.
#[derive(Debug)]
pub struct Outbound {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts the dispatcher and, when `http.api_token` is set, enables
/// `POST /v1/outbound`. The dispatcher stops at `shutdown`, finishing the
/// record in hand; [`Outbound::stop`] waits for that.
pub fn start(
    settings: &Settings,
    log: Arc<dyn EventLog>,
    wiring: &Wiring,
    state: &AppState,
    shutdown: &CancellationToken,
) -> anyhow::Result<Outbound> {
    let topics = Topics::new(&settings.log.topic_prefix);
    if let Some(token) = &settings.http.api_token {
        let token = token
            .resolve()
            .map_err(|e| anyhow::anyhow!("http.api_token: {e}"))?;
        let sink = LogSink::new(
            log.clone(),
            topics.clone(),
            Encoding::from_setting(&settings.log.encoding),
        );
        state.enable_outbound_api(OutboundApi::new(&token, sink));
    }
    let stop = shutdown.child_token();
    let dispatcher = Dispatcher {
        log,
        topic: topics.outbound,
        sender: wiring.sender.clone(),
        seen: wiring.state.clone(),
        state: state.clone(),
        metrics: HashMap::new(),
        shutdown: stop.clone(),
    };
    let task = tokio::spawn(dispatcher.run());
    Ok(Outbound { stop, task })
}

impl Outbound {
    /// Stops the dispatcher: it finishes the record in hand (delivery,
    /// status, commit) within `grace`, else it is abandoned uncommitted
    /// and delivered again after the restart.
    pub async fn stop(self, grace: Duration) {
        self.stop.cancel();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(grace, self.task).await.is_err() {
            abort.abort();
            tracing::warn!(
                "outbound dispatcher did not stop within the shutdown timeout; its record will be delivered again"
            );
        }
    }
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

struct Dispatcher {
    log: Arc<dyn EventLog>,
    topic: String,
    sender: EventSender,
    seen: Option<Arc<dyn StateStore>>,
    state: AppState,
    metrics: HashMap<String, OutboundMetrics>,
    shutdown: CancellationToken,
}

impl Dispatcher {
    async fn run(mut self) {
        let Ok(mut subscription) =
            consume::subscribe(self.log.as_ref(), GROUP, &self.topic, &self.shutdown).await
        else {
            return;
        };
        tracing::info!(topic = %self.topic, group = GROUP, "outbound dispatcher started");
        let mut backoff = Backoff::default();
        loop {
            let Ok(records) = consume::poll(
                subscription.as_mut(),
                POLL_BATCH,
                &self.topic,
                &mut backoff,
                &self.shutdown,
            )
            .await
            else {
                break;
            };
            for record in records {
                if self.handle(subscription.as_mut(), record).await.is_err() {
                    tracing::info!("outbound dispatcher stopped");
                    return;
                }
            }
        }
        tracing::info!("outbound dispatcher stopped");
    }

    /// One record, from decoding to committing its position.
    async fn handle(
        &mut self,
        subscription: &mut dyn Subscription,
        stored: StoredRecord,
    ) -> Result<(), Stopped> {
        let event = match decode(&stored) {
            Ok(event) => event,
            Err((reason, detail)) => {
                let channel = header(&stored, cloudevents::HEADER_SOURCE)
                    .and_then(|s| s.rsplit('/').next().map(str::to_owned))
                    .unwrap_or_default();
                let event_id = header(&stored, cloudevents::HEADER_ID).unwrap_or_default();
                self.dead_letter(&stored, &channel, &event_id, reason, &detail)
                    .await?;
                return self.commit(subscription, &stored).await;
            }
        };
        if self.already_delivered(&event).await {
            OutboundDelivered {
                outcome: OutboundOutcome::Duplicate,
                event_id: &event.event_id,
                detail: "",
                retry_in: None,
            }
            .emit(self.metrics_for(&event.channel_id));
            return self.commit(subscription, &stored).await;
        }
        let result = match self.deliver(&event).await? {
            Outcome::Unroutable { reason, detail } => {
                self.dead_letter(&stored, &event.channel_id, &event.event_id, reason, &detail)
                    .await?;
                return self.commit(subscription, &stored).await;
            }
            Outcome::Delivered(delivered) => Ok(delivered),
            Outcome::Rejected(reason) => Err(reason),
        };
        let status = delivery_status(&event, result.as_ref(), SystemTime::now());
        self.append(status).await?;
        self.mark_delivered(&event).await;
        let (outcome, detail) = match &result {
            Ok(delivered) => (OutboundOutcome::Sent, delivered.provider_status.as_str()),
            Err(reason) => (OutboundOutcome::Failed, reason.as_str()),
        };
        OutboundDelivered {
            outcome,
            event_id: &event.event_id,
            detail,
            retry_in: None,
        }
        .emit(self.metrics_for(&event.channel_id));
        self.commit(subscription, &stored).await
    }

    /// Delivers until the channel accepts or refuses for good; temporary
    /// failures are retried with backoff, the channel looked up afresh
    /// each time.
    async fn deliver(&mut self, event: &ConversationEvent) -> Result<Outcome, Stopped> {
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
            match handler.deliver(event).await {
                Ok(delivered) => return Ok(Outcome::Delivered(delivered)),
                Err(DeliveryError::Rejected(reason)) => return Ok(Outcome::Rejected(reason)),
                Err(DeliveryError::Temporary { reason, .. }) => {
                    let wait = backoff.next();
                    OutboundDelivered {
                        outcome: OutboundOutcome::Retried,
                        event_id: &event.event_id,
                        detail: &reason,
                        retry_in: Some(wait),
                    }
                    .emit(self.metrics_for(&event.channel_id));
                    pause(&self.shutdown, wait).await?;
                }
            }
        }
    }

    fn handler(&self, channel_id: &str) -> Result<Arc<dyn OutboundHandler>, Outcome> {
        let channels = self.state.channels();
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
        let Some(store) = &self.seen else {
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
        let Some(store) = &self.seen else {
            return;
        };
        let state = ChannelState::new(store.clone(), &event.channel_id);
        let update = StateUpdate {
            puts: Vec::new(),
            seen: vec![seen_key(&event.event_id)],
        };
        if let Err(error) = state.commit(update).await {
            tracing::warn!(channel = %event.channel_id, event_id = %event.event_id, error = %error, "cannot record an outbound message as sent; a redelivery would send it again");
        }
    }

    /// Appends a delivery status, retrying until it is durable.
    async fn append(&self, status: ConversationEvent) -> Result<(), Stopped> {
        let mut backoff = Backoff::default();
        loop {
            match self.sender.send_event(status.clone()).await {
                Ok(_) => return Ok(()),
                Err(SendError::Closed) => return Err(Stopped),
                Err(error) => {
                    let wait = backoff.next();
                    tracing::warn!(channel = %status.channel_id, event_id = %status.event_id, error = %error, retry_in_ms = wait.as_millis() as u64, "cannot store a delivery status, retrying");
                    pause(&self.shutdown, wait).await?;
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
        let channels = self.state.channels();
        let channel_kind = channels
            .get(channel_id)
            .map_or(ChannelKind::Unspecified, |channel| channel.channel_kind);
        let dead_letter =
            dead_letter_of(stored, channel_id, channel_kind, event_id, reason, detail);
        consume::store_dead_letter(&self.sender, dead_letter, &self.shutdown).await?;
        let label = if channels.contains_key(channel_id) {
            channel_id
        } else {
            OutboundMetrics::UNKNOWN_CHANNEL
        };
        OutboundDelivered {
            outcome: OutboundOutcome::DeadLettered,
            event_id,
            detail: &format!("{reason}: {detail}"),
            retry_in: None,
        }
        .emit(self.metrics_for(label));
        Ok(())
    }

    /// Commits past `stored`, retrying until the commit is durable.
    async fn commit(
        &self,
        subscription: &mut dyn Subscription,
        stored: &StoredRecord,
    ) -> Result<(), Stopped> {
        consume::commit(subscription, std::slice::from_ref(stored), &self.shutdown).await
    }

    /// The metrics of a configured channel (records for unknown channels
    /// count under one label).
    fn metrics_for(&mut self, channel_id: &str) -> &OutboundMetrics {
        let label = if channel_id == OutboundMetrics::UNKNOWN_CHANNEL
            || self.state.channels().contains_key(channel_id)
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

/// The delivery-status event of `outbound`: same channel, the outbound
/// recipients (so it is keyed and threaded with the customer), the
/// outbound content and threading hints (so the timeline shows what was
/// sent), and for a sent message its provider id as `provider_message_id`
/// and `threading.message_id`, so the customer's answer threads onto it.
fn delivery_status(
    outbound: &ConversationEvent,
    result: Result<&Delivered, &String>,
    now: SystemTime,
) -> ConversationEvent {
    let (state, provider_message_id, provider_status, error) = match result {
        Ok(delivered) => (
            DeliveryState::Sent,
            delivered.provider_message_id.clone(),
            delivered.provider_status.clone(),
            String::new(),
        ),
        Err(reason) => (
            DeliveryState::Failed,
            String::new(),
            String::new(),
            reason.clone(),
        ),
    };
    let threading = ThreadingHints {
        message_id: provider_message_id.clone(),
        ..outbound.threading.clone().unwrap_or_default()
    };
    ConversationEvent {
        event_id: omni_model::event_id(
            &outbound.channel_id,
            &format!("delivery:{}", outbound.event_id),
        )
        .to_string(),
        channel_id: outbound.channel_id.clone(),
        channel_kind: outbound.channel_kind,
        direction: Direction::Outbound as i32,
        kind: EventKind::DeliveryStatus as i32,
        sender: outbound.sender.clone(),
        recipients: outbound.recipients.clone(),
        provider_message_id,
        sent_at: outbound.sent_at,
        received_at: None,
        ingested_at: Some(timestamp(now)),
        content: outbound.content.clone(),
        threading: Some(threading),
        provider_metadata: outbound.provider_metadata.clone(),
        delivery: Some(DeliveryStatus {
            outbound_event_id: outbound.event_id.clone(),
            state: state as i32,
            provider_status,
            error,
        }),
        sender_identities: Vec::new(),
    }
}

/// Why `POST /v1/outbound` refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            message: message.into(),
        }
    }
}

/// Checks a message posted to `POST /v1/outbound` and completes it for the
/// outbound topic: direction and kind (when unset), the channel's kind,
/// `event_id` from the channel and the client's idempotency key
/// (`provider_message_id`), and `ingested_at`.
pub fn prepare(
    mut event: ConversationEvent,
    channels: &ChannelSet,
    now: SystemTime,
) -> Result<ConversationEvent, Refusal> {
    if event.channel_id.is_empty() {
        return Err(Refusal::invalid("channel_id is required"));
    }
    let Some(channel) = channels.get(&event.channel_id) else {
        return Err(Refusal {
            status: StatusCode::NOT_FOUND,
            code: "unknown_channel",
            message: format!("no channel with id {:?}", event.channel_id),
        });
    };
    if channel.connector.outbound().is_none() {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "outbound_not_supported",
            message: format!(
                "channel {:?} (kind {}) cannot send messages",
                event.channel_id, channel.kind
            ),
        });
    }
    let key = &event.provider_message_id;
    if key.is_empty() {
        return Err(Refusal::invalid(
            "provider_message_id (your idempotency key for this message) is required",
        ));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES || key.chars().any(char::is_control) {
        return Err(Refusal::invalid(format!(
            "provider_message_id must be at most {MAX_IDEMPOTENCY_KEY_BYTES} bytes without control characters"
        )));
    }
    if !matches!(
        Direction::try_from(event.direction),
        Ok(Direction::Unspecified | Direction::Outbound)
    ) {
        return Err(Refusal::invalid(
            "direction must be DIRECTION_OUTBOUND or left out",
        ));
    }
    if !matches!(
        EventKind::try_from(event.kind),
        Ok(EventKind::Unspecified | EventKind::Message)
    ) {
        return Err(Refusal::invalid(
            "kind must be EVENT_KIND_MESSAGE or left out",
        ));
    }
    if event.delivery.is_some() {
        return Err(Refusal::invalid(
            "delivery is reported by the daemon, not posted",
        ));
    }
    if event.recipients.is_empty() {
        return Err(Refusal::invalid(
            "recipients must name at least one recipient",
        ));
    }
    let has_body = event
        .content
        .as_ref()
        .is_some_and(|c| !c.text.trim().is_empty() || !c.html.trim().is_empty());
    if !has_body {
        return Err(Refusal::invalid("content.text or content.html is required"));
    }
    let event_id = omni_model::event_id(&event.channel_id, key).to_string();
    if !event.event_id.is_empty() && event.event_id != event_id {
        return Err(Refusal::invalid(
            "event_id is derived from channel_id and provider_message_id; leave it out",
        ));
    }
    event.event_id = event_id;
    event.direction = Direction::Outbound as i32;
    event.kind = EventKind::Message as i32;
    event.channel_kind = channel.channel_kind as i32;
    event.ingested_at = Some(timestamp(now));
    Ok(event)
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::UNIX_EPOCH};

    use omni_connector::Connector;
    use omni_proto::Message as _;
    use omni_proto::v1::{Content, HandleKind, IdentityHandle};

    use super::*;

    #[derive(Debug)]
    struct Sends;

    #[async_trait::async_trait]
    impl OutboundHandler for Sends {
        async fn deliver(&self, _: &ConversationEvent) -> Result<Delivered, DeliveryError> {
            Err(DeliveryError::temporary("not in this test"))
        }
    }

    #[derive(Debug)]
    struct Mailer(bool);

    impl Connector for Mailer {
        fn outbound(&self) -> Option<Arc<dyn OutboundHandler>> {
            self.0.then(|| Arc::new(Sends) as Arc<dyn OutboundHandler>)
        }
    }

    fn channels() -> ChannelSet {
        let channel = |id: &str, kind: &str, sends: bool| crate::channels::Channel {
            id: id.into(),
            kind: kind.into(),
            channel_kind: match kind {
                "email" => ChannelKind::Email,
                _ => ChannelKind::Api,
            },
            file: PathBuf::from(format!("{id}.toml")),
            fingerprint: String::new(),
            connector: Arc::new(Mailer(sends)),
            webhook: None,
        };
        ChannelSet::from([
            (
                "support-mail".into(),
                channel("support-mail", "email", true),
            ),
            ("shop-api".into(), channel("shop-api", "api", false)),
        ])
    }

    fn posted() -> ConversationEvent {
        ConversationEvent {
            channel_id: "support-mail".into(),
            provider_message_id: "ticket-19/reply-3".into(),
            recipients: vec![IdentityHandle {
                kind: HandleKind::Email as i32,
                value: "ana@example.com".into(),
                ..Default::default()
            }],
            content: Some(Content {
                text: "It ships today.".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn prepare_completes_a_posted_reply() {
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let event = prepare(posted(), &channels(), now).unwrap();
        assert_eq!(
            event.event_id,
            omni_model::event_id("support-mail", "ticket-19/reply-3").to_string()
        );
        assert_eq!(event.direction, Direction::Outbound as i32);
        assert_eq!(event.kind, EventKind::Message as i32);
        assert_eq!(event.channel_kind, ChannelKind::Email as i32);
        assert_eq!(event.ingested_at.unwrap().seconds, 1_767_225_600);
        // A retry with the same key gets the same id, also when it says so.
        let mut again = posted();
        again.event_id = event.event_id.clone();
        assert_eq!(
            prepare(again, &channels(), now).unwrap().event_id,
            event.event_id
        );
    }

    #[test]
    fn prepare_refuses_what_cannot_be_sent() {
        let now = SystemTime::now();
        let refuse = |edit: fn(&mut ConversationEvent)| {
            let mut event = posted();
            edit(&mut event);
            let refusal = prepare(event, &channels(), now).unwrap_err();
            (refusal.status, refusal.code)
        };
        let bad = (StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(
            refuse(|e| e.channel_id = "nope".into()),
            (StatusCode::NOT_FOUND, "unknown_channel")
        );
        assert_eq!(
            refuse(|e| e.channel_id = "shop-api".into()),
            (StatusCode::BAD_REQUEST, "outbound_not_supported")
        );
        assert_eq!(refuse(|e| e.channel_id.clear()), bad);
        assert_eq!(refuse(|e| e.provider_message_id.clear()), bad);
        assert_eq!(refuse(|e| e.provider_message_id = "a\nb".into()), bad);
        assert_eq!(refuse(|e| e.recipients.clear()), bad);
        assert_eq!(refuse(|e| e.content = None), bad);
        assert_eq!(refuse(|e| e.direction = Direction::Inbound as i32), bad);
        assert_eq!(refuse(|e| e.kind = EventKind::DeliveryStatus as i32), bad);
        assert_eq!(refuse(|e| e.event_id = "made-up".into()), bad);
        assert_eq!(
            refuse(|e| e.delivery = Some(DeliveryStatus::default())),
            bad
        );
    }

    fn outbound() -> ConversationEvent {
        let mut event = prepare(posted(), &channels(), SystemTime::now()).unwrap();
        event.threading = Some(ThreadingHints {
            in_reply_to: vec!["m2@shop.example".into()],
            references: vec!["m1@shop.example".into(), "m2@shop.example".into()],
            ..Default::default()
        });
        event
    }

    #[test]
    fn a_sent_status_carries_the_message_id_for_threading() {
        let outbound = outbound();
        let delivered = Delivered {
            provider_message_id: "abc@acme.example".into(),
            provider_status: "250 2.0.0 OK".into(),
        };
        let status = delivery_status(&outbound, Ok(&delivered), SystemTime::now());
        assert_eq!(
            status.event_id,
            omni_model::event_id("support-mail", &format!("delivery:{}", outbound.event_id))
                .to_string()
        );
        assert_eq!(status.kind, EventKind::DeliveryStatus as i32);
        assert_eq!(status.direction, Direction::Outbound as i32);
        assert_eq!(status.recipients, outbound.recipients);
        assert_eq!(status.provider_message_id, "abc@acme.example");
        let threading = status.threading.unwrap();
        assert_eq!(threading.message_id, "abc@acme.example");
        assert_eq!(threading.in_reply_to, ["m2@shop.example"]);
        let delivery = status.delivery.unwrap();
        assert_eq!(delivery.outbound_event_id, outbound.event_id);
        assert_eq!(delivery.state, DeliveryState::Sent as i32);
        assert_eq!(delivery.provider_status, "250 2.0.0 OK");
        assert!(delivery.error.is_empty());
    }

    #[test]
    fn a_failed_status_says_why() {
        let outbound = outbound();
        let rejected = "550 5.1.1 no such user".to_owned();
        let status = delivery_status(&outbound, Err(&rejected), SystemTime::now());
        assert!(status.provider_message_id.is_empty());
        assert!(status.threading.unwrap().message_id.is_empty());
        let delivery = status.delivery.unwrap();
        assert_eq!(delivery.state, DeliveryState::Failed as i32);
        assert_eq!(delivery.error, "550 5.1.1 no such user");
    }

    fn stored(headers: &[(&str, &str)], payload: Vec<u8>) -> StoredRecord {
        StoredRecord {
            position: omni_log::Position {
                partition: 0,
                offset: 7,
            },
            record: omni_log::Record {
                topic: "omni.outbound.v1".into(),
                key: Default::default(),
                headers: headers
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), bytes::Bytes::from(v.to_string())))
                    .collect(),
                payload: payload.into(),
                timestamp_ms: 0,
            },
        }
    }

    #[test]
    fn records_decode_by_content_type() {
        let event = outbound();
        let binary = stored(
            &[("content-type", "application/protobuf")],
            event.encode_to_vec(),
        );
        assert_eq!(decode(&binary).unwrap(), event);
        let bare = stored(&[], event.encode_to_vec());
        assert_eq!(decode(&bare).unwrap(), event);
        let json = stored(
            &[("content-type", "application/json; charset=utf-8")],
            serde_json::to_vec(&event).unwrap(),
        );
        assert_eq!(decode(&json).unwrap(), event);

        let garbage = stored(
            &[("content-type", "application/json")],
            b"{not json".to_vec(),
        );
        assert_eq!(decode(&garbage).unwrap_err().0, "invalid_json");
        let garbage = stored(&[], vec![0xff, 0xff, 0xff]);
        assert_eq!(decode(&garbage).unwrap_err().0, "invalid_protobuf");
        let other = stored(
            &[("ce_type", cloudevents::TYPE_DEAD_LETTER)],
            event.encode_to_vec(),
        );
        assert_eq!(decode(&other).unwrap_err().0, "unsupported_type");
    }
}
