//! The dispatcher: reads the outbound topic and hands each record to its
//! channel's queue, so that one channel whose provider stays down holds
//! back its own replies, not every channel's.
//!
//! Why this shape. The topic interleaves every channel's replies, and a
//! consumer group commits one position per partition: "done up to here".
//! Retrying a failed record in place (as one loop over the topic would)
//! keeps that simple but stalls every channel behind it. Instead:
//!
//! - each channel has an in-memory queue of at most [`QUEUE_CAPACITY`]
//!   records, worked through in order by its own [`Lane`], which retries a
//!   temporary failure without moving on: per-channel order holds;
//! - a position is committed only up to the lowest record that is not yet
//!   durably handled, across all channels ([`Watermarks`]): a crash
//!   redelivers everything after it, so delivery stays at least once.
//!   Records of other channels that were already sent are then skipped by
//!   their seen marks, so the repeat costs a look-up, not a second
//!   message;
//! - memory is bounded: when any queue has no room for a whole poll, the
//!   dispatcher stops reading the topic until it drains. So a channel that
//!   stays down holds the others back only once [`QUEUE_CAPACITY`] of its
//!   replies are waiting, rather than from its first.
//!
//! The alternative, per-channel consumers or topics, would need as many
//! consumer groups (or topics) as channels, created and removed with
//! channel files; the queues keep one group and one topic.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use omni_log::{EventLog, Position, StoredRecord, Subscription};
use omni_model::cloudevents;
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    GROUP,
    lane::{Done, Item, Lane, Shared},
};
use crate::consume::{self, Backoff, Stopped, decode, header};

/// Records fetched per poll.
pub(super) const POLL_BATCH: usize = 16;

/// Records one channel's queue holds (beyond the one in hand).
pub(super) const QUEUE_CAPACITY: usize = 256;

/// The queue of records whose channel is not configured (nor has a queue
/// already): they are dead-lettered there, so they cannot make a queue
/// each. No channel id is empty.
const UNROUTABLE: &str = "";

/// Positions handed to queues, per partition, and whether each is done:
/// what may be committed is everything below the lowest that is not.
#[derive(Debug, Default)]
pub(super) struct Watermarks {
    partitions: HashMap<(String, i32), BTreeMap<i64, bool>>,
}

impl Watermarks {
    /// `position` was handed to a queue.
    pub(super) fn dispatched(&mut self, topic: &str, position: Position) {
        self.partitions
            .entry((topic.to_owned(), position.partition))
            .or_default()
            .entry(position.offset)
            .or_insert(false);
    }

    /// `position`'s outcome is durable.
    pub(super) fn done(&mut self, topic: &str, position: Position) {
        if let Some(done) = self
            .partitions
            .get_mut(&(topic.to_owned(), position.partition))
            .and_then(|offsets| offsets.get_mut(&position.offset))
        {
            *done = true;
        }
    }

    /// The positions that may be committed now, one per partition that
    /// moved: the last of the records that are done with nothing undone
    /// before them. They are forgotten here.
    pub(super) fn committable(&mut self) -> Vec<(String, Position)> {
        let mut positions = Vec::new();
        for ((topic, partition), offsets) in &mut self.partitions {
            let mut last = None;
            while let Some(entry) = offsets.first_entry() {
                if !*entry.get() {
                    break;
                }
                last = Some(entry.remove_entry().0);
            }
            if let Some(offset) = last {
                positions.push((
                    topic.clone(),
                    Position {
                        partition: *partition,
                        offset,
                    },
                ));
            }
        }
        self.partitions.retain(|_, offsets| !offsets.is_empty());
        positions
    }
}

/// A channel's queue and its lane.
struct Queue {
    records: mpsc::Sender<Item>,
    lane: JoinHandle<()>,
}

pub(super) struct Dispatcher {
    log: Arc<dyn EventLog>,
    topic: String,
    shared: Arc<Shared>,
}

impl Dispatcher {
    pub(super) fn new(log: Arc<dyn EventLog>, topic: String, shared: Shared) -> Self {
        Self {
            log,
            topic,
            shared: Arc::new(shared),
        }
    }

    pub(super) async fn run(self) {
        let shutdown = self.shared.shutdown.clone();
        let Ok(mut subscription) =
            consume::subscribe(self.log.as_ref(), GROUP, &self.topic, &shutdown).await
        else {
            return;
        };
        tracing::info!(topic = %self.topic, group = GROUP, "outbound dispatcher started");
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut queues: HashMap<String, Queue> = HashMap::new();
        let mut marks = Watermarks::default();
        let mut backoff = Backoff::default();
        'consume: loop {
            while let Ok((topic, position)) = done_rx.try_recv() {
                marks.done(&topic, position);
            }
            if self
                .commit(subscription.as_mut(), &mut marks)
                .await
                .is_err()
            {
                break;
            }
            if queues
                .values()
                .any(|queue| queue.records.capacity() < POLL_BATCH)
            {
                // A queue is (nearly) full: read on only once it drains.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some((topic, position)) = done_rx.recv() => marks.done(&topic, position),
                }
                continue;
            }
            let Ok(records) = consume::poll(
                subscription.as_mut(),
                POLL_BATCH,
                &self.topic,
                &mut backoff,
                &shutdown,
            )
            .await
            else {
                break;
            };
            for stored in records {
                if self
                    .route(stored, &mut queues, &mut marks, &done_tx)
                    .await
                    .is_err()
                {
                    // Stopping, or a lane is gone (a bug): reading on could
                    // commit past the records it held, so stop here and
                    // leave them to the next start.
                    if !shutdown.is_cancelled() {
                        tracing::error!(
                            "an outbound queue stopped unexpectedly; the dispatcher stops, its records are delivered after a restart"
                        );
                    }
                    break 'consume;
                }
            }
        }
        // Each lane finishes the record in hand; what is done is committed
        // (once: the commit is not retried past the stop).
        let lanes: Vec<_> = queues.into_values().map(|queue| queue.lane).collect();
        futures::future::join_all(lanes).await;
        drop(done_tx);
        while let Some((topic, position)) = done_rx.recv().await {
            marks.done(&topic, position);
        }
        let _ = self.commit(subscription.as_mut(), &mut marks).await;
        tracing::info!("outbound dispatcher stopped");
    }

    /// Hands `stored` to its channel's queue (made on first use).
    async fn route(
        &self,
        stored: StoredRecord,
        queues: &mut HashMap<String, Queue>,
        marks: &mut Watermarks,
        done: &mpsc::UnboundedSender<Done>,
    ) -> Result<(), Stopped> {
        let decoded = decode(&stored);
        let channel = match &decoded {
            Ok(event) => event.channel_id.clone(),
            Err(_) => header(&stored, cloudevents::HEADER_SOURCE)
                .and_then(|s| s.rsplit('/').next().map(str::to_owned))
                .unwrap_or_default(),
        };
        // A channel removed while its replies wait keeps its queue, so
        // they are dead-lettered in order.
        let key =
            if queues.contains_key(&channel) || self.shared.channels.get().contains_key(&channel) {
                channel
            } else {
                UNROUTABLE.to_owned()
            };
        marks.dispatched(&stored.record.topic, stored.position);
        let queue = queues.entry(key).or_insert_with(|| {
            let (records, queue) = mpsc::channel(QUEUE_CAPACITY);
            let lane = Lane::new(self.shared.clone());
            Queue {
                records,
                lane: tokio::spawn(lane.run(queue, done.clone())),
            }
        });
        // The dispatcher polls only when every queue has room for a whole
        // poll, so this does not wait.
        tokio::select! {
            _ = self.shared.shutdown.cancelled() => Err(Stopped),
            sent = queue.records.send(Item { stored, decoded }) => sent.map_err(|_| Stopped),
        }
    }

    /// Commits what [`Watermarks`] allow, retrying until durable.
    async fn commit(
        &self,
        subscription: &mut dyn Subscription,
        marks: &mut Watermarks,
    ) -> Result<(), Stopped> {
        for (topic, position) in marks.committable() {
            consume::commit_at(subscription, &topic, position, &self.shared.shutdown).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Mutex,
            atomic::{AtomicBool, AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use omni_connector::{
        Connector, Delivered, DeliveryError, EventSender, OutboundHandler, SqliteStateStore,
    };
    use omni_log::{SqliteLog, SqliteLogConfig};
    use omni_proto::{
        Message as _,
        v1::{ConversationEvent, DeliveryState, Direction, EventKind},
    };
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        channels::{ChannelSet, LiveChannels},
        outbound::fixtures::{channel, outbound, posted},
        settings::Topics,
        sink::{Encoding, LogSink},
    };

    fn at(offset: i64) -> Position {
        Position {
            partition: 0,
            offset,
        }
    }

    #[test]
    fn only_what_has_nothing_undone_before_it_is_committed() {
        let mut marks = Watermarks::default();
        for offset in 1..=5 {
            marks.dispatched("t", at(offset));
        }
        marks.dispatched(
            "t",
            Position {
                partition: 1,
                offset: 9,
            },
        );
        marks.done("t", at(2));
        marks.done("t", at(3));
        assert!(marks.committable().is_empty(), "1 is still undone");
        marks.done("t", at(1));
        marks.done("t", at(5));
        assert_eq!(marks.committable(), [("t".to_owned(), at(3))]);
        assert!(marks.committable().is_empty(), "committed once");
        marks.done("t", at(4));
        marks.done(
            "t",
            Position {
                partition: 1,
                offset: 9,
            },
        );
        let mut committable = marks.committable();
        committable.sort_by_key(|(_, p)| p.partition);
        assert_eq!(
            committable,
            [
                ("t".to_owned(), at(5)),
                (
                    "t".to_owned(),
                    Position {
                        partition: 1,
                        offset: 9
                    }
                )
            ]
        );
        // A position done twice, or never handed out, changes nothing.
        marks.done("t", at(5));
        marks.done("t", at(40));
        assert!(marks.committable().is_empty());
    }

    fn stored(headers: &[(&str, &str)], payload: Vec<u8>) -> StoredRecord {
        StoredRecord {
            position: at(7),
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

    /// A provider that is down (temporarily failing) until told otherwise
    /// and records what it sent, in order.
    #[derive(Debug, Default)]
    struct Provider {
        down: AtomicBool,
        attempts: AtomicUsize,
        sent: Mutex<Vec<String>>,
        /// Each delivery takes this long (ms), as a provider's API does.
        latency_ms: AtomicUsize,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    impl Provider {
        fn sent(&self) -> Vec<String> {
            self.sent.lock().unwrap().clone()
        }
    }

    #[async_trait::async_trait]
    impl OutboundHandler for Provider {
        async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(DeliveryError::throttled(
                    "relay down",
                    Duration::from_millis(10),
                ));
            }
            let latency = self.latency_ms.load(Ordering::SeqCst) as u64;
            if latency > 0 {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(latency)).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            self.sent
                .lock()
                .unwrap()
                .push(message.provider_message_id.clone());
            Ok(Delivered {
                provider_message_id: format!("{}@provider", message.provider_message_id),
                provider_status: "250 ok".into(),
            })
        }
    }

    #[derive(Debug)]
    struct Sending(Arc<Provider>);

    impl Connector for Sending {
        fn outbound(&self) -> Option<Arc<dyn OutboundHandler>> {
            Some(self.0.clone())
        }
    }

    fn reply(channel_id: &str, key: &str) -> ConversationEvent {
        ConversationEvent {
            event_id: omni_model::event_id(channel_id, key).to_string(),
            channel_id: channel_id.into(),
            provider_message_id: key.into(),
            direction: Direction::Outbound as i32,
            kind: EventKind::Message as i32,
            ..posted()
        }
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An embedded log in `dir`, its topics and a sink appending to it.
    fn log_in(dir: &tempfile::TempDir) -> (Arc<dyn EventLog>, Topics, LogSink) {
        let log: Arc<dyn EventLog> = Arc::new(
            SqliteLog::open(
                &dir.path().join("events.sqlite3"),
                SqliteLogConfig::default(),
            )
            .unwrap(),
        );
        let topics = Topics::new("omni.");
        let sink = LogSink::new(log.clone(), topics.clone(), Encoding::Protobuf);
        (log, topics, sink)
    }

    /// The dispatcher as the daemon runs it on that log, remembering sent
    /// ids in `dir`.
    fn dispatcher_on(
        dir: &tempfile::TempDir,
        log: &Arc<dyn EventLog>,
        topics: &Topics,
        channels: LiveChannels,
        shutdown: &CancellationToken,
    ) -> crate::task::BackgroundTask {
        let seen = SqliteStateStore::open(&dir.path().join("channel-state.sqlite3")).unwrap();
        let sender = EventSender::new(Arc::new(LogSink::new(
            log.clone(),
            topics.clone(),
            Encoding::Protobuf,
        )));
        crate::outbound::spawn(
            log.clone(),
            topics.outbound.clone(),
            sender,
            Some(Arc::new(seen)),
            channels,
            shutdown,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_channel_that_is_down_holds_back_only_its_own_replies() {
        let dir = tempfile::tempdir().unwrap();
        let (log, topics, sink) = log_in(&dir);
        let down = Arc::new(Provider::default());
        down.down.store(true, Ordering::SeqCst);
        let up = Arc::new(Provider::default());
        let channels = LiveChannels::new(ChannelSet::from([
            (
                "relay-down".into(),
                channel("relay-down", "email", Arc::new(Sending(down.clone()))),
            ),
            (
                "relay-up".into(),
                channel("relay-up", "email", Arc::new(Sending(up.clone()))),
            ),
        ]));
        // The failing channel's replies come first on the topic.
        for n in 1..=3 {
            for channel in ["relay-down", "relay-up"] {
                sink.submit_outbound(reply(channel, &format!("r{n}")))
                    .await
                    .unwrap();
            }
        }

        let shutdown = CancellationToken::new();
        let dispatcher = dispatcher_on(&dir, &log, &topics, channels, &shutdown);
        until("the failing channel is tried", || {
            down.attempts.load(Ordering::SeqCst) >= 1
        })
        .await;
        until("the other channel's replies are sent meanwhile", || {
            up.sent().len() == 3
        })
        .await;
        assert_eq!(up.sent(), ["r1", "r2", "r3"]);
        assert!(down.sent().is_empty());

        down.down.store(false, Ordering::SeqCst);
        until("the recovered channel's replies are sent", || {
            down.sent().len() == 3
        })
        .await;
        dispatcher.stop(Duration::from_secs(10)).await;
        assert_eq!(down.sent(), ["r1", "r2", "r3"], "in order, each once");
        assert_eq!(up.sent(), ["r1", "r2", "r3"]);

        // Every reply's status is durable, and every position committed: a
        // new member of the group has nothing left to read.
        let statuses: Vec<ConversationEvent> = log
            .read(&topics.inbound, 0, 0, 100)
            .await
            .unwrap()
            .iter()
            .map(|record| decode(record).unwrap())
            .collect();
        assert_eq!(statuses.len(), 6);
        assert!(statuses.iter().all(|s| {
            s.delivery
                .as_ref()
                .is_some_and(|d| d.state == DeliveryState::Sent as i32)
        }));
        let mut again = log
            .subscribe(GROUP, std::slice::from_ref(&topics.outbound))
            .await
            .unwrap();
        let left = again.poll(16, Duration::from_millis(200)).await.unwrap();
        assert!(left.is_empty(), "{} records were not committed", left.len());
        drop(again);
        log.close().await.unwrap();
    }

    /// Replies to different customers of one channel are sent together;
    /// each customer's in the order they were posted, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_to_different_customers_go_out_together_each_customer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (log, topics, sink) = log_in(&dir);
        let provider = Arc::new(Provider::default());
        provider.latency_ms.store(40, Ordering::SeqCst);
        let channels = LiveChannels::new(ChannelSet::from([(
            "relay".into(),
            channel("relay", "email", Arc::new(Sending(provider.clone()))),
        )]));
        let customers = ["ana", "bo", "cy", "di"];
        for n in 1..=5 {
            for customer in customers {
                let mut event = reply("relay", &format!("{customer}/r{n}"));
                event.recipients[0].value = format!("{customer}@example.com");
                sink.submit_outbound(event).await.unwrap();
            }
        }
        let shutdown = CancellationToken::new();
        let dispatcher = dispatcher_on(&dir, &log, &topics, channels, &shutdown);
        until("every reply is sent", || provider.sent().len() == 20).await;
        dispatcher.stop(Duration::from_secs(10)).await;
        let sent = provider.sent();
        for customer in customers {
            let theirs: Vec<&String> = sent
                .iter()
                .filter(|key| key.starts_with(&format!("{customer}/")))
                .collect();
            let posted: Vec<String> = (1..=5).map(|n| format!("{customer}/r{n}")).collect();
            assert_eq!(theirs, posted.iter().collect::<Vec<_>>(), "in order, once");
        }
        let most = provider.most_in_flight.load(Ordering::SeqCst);
        assert!(
            (2..=customers.len()).contains(&most),
            "customers' replies overlap, one customer's never: {most} at once"
        );
        log.close().await.unwrap();
    }
}
