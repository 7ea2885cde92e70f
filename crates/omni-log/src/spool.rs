//! The durable spool: keeps accepting, and acknowledging, appends while the
//! primary log (Kafka) is unreachable or slow, and forwards them in order
//! when it returns.
//!
//! One task (the router) sees every append in call order:
//! - *Direct*: records go to the primary; each is acknowledged when the
//!   primary acknowledges it.
//! - When the oldest unacknowledged record has waited `spool_after`, or an
//!   append fails, the router switches to *spooling*: every record still
//!   waiting is written to the local spool (a [`SqliteLog`], fsync'd) in call
//!   order and acknowledged from there, and so is every later append. The
//!   original sends stay queued in the primary's producer.
//! - A drain task forwards spooled records to the primary in order. It first
//!   waits for the original sends to resolve and skips the spooled copy of
//!   any that got through, so an outage does not put a record on the topic
//!   twice. When the spool is empty the router goes back to direct.
//!
//! The spool is bounded: beyond `max_records` waiting records, appends fail
//! with [`LogError::Overloaded`] (a 503 with Retry-After for webhooks).
//!
//! A crash loses nothing: every acknowledged record is in the primary or in
//! the spool file, which is drained on the next start. Exactly once holds
//! unless the daemon dies while original sends are still in flight; then a
//! record may reach the topic twice, with the same event id.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::{
    BoxFuture, EventLog, LogError, Position, Record, SqliteLog, StoredRecord, Subscription,
};

/// The spool's one topic (all primary topics share it, keeping call order).
pub const SPOOL_TOPIC: &str = "omnid.spool";
const DRAIN_GROUP: &str = "omnid-spool-drain";
/// The primary topic a spooled record belongs to.
const TOPIC_HEADER: &str = "omnid-spool-topic";
/// Set on records spooled while their original send was in flight.
const ORIGINAL_HEADER: &str = "omnid-spool-original";

/// Positions of spooled appends carry this partition: the record is
/// durable in the spool, not yet in the primary.
pub const SPOOLED_PARTITION: i32 = -1;

/// When to spool and how much.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Most records waiting in the spool before appends are refused.
    pub max_records: u64,
    /// How long the primary may take to acknowledge before records are
    /// spooled instead.
    pub spool_after: Duration,
}

/// What the spool is doing, for readiness and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStatus {
    pub spooling: bool,
    /// Records in the spool not yet forwarded.
    pub waiting: u64,
}

enum Request {
    Append {
        record: Record,
        reply: oneshot::Sender<Result<Position, LogError>>,
    },
    /// The drainer forwarded (or skipped) this many spooled records.
    Drained(u64),
    /// A spool append failed: it will never be drained.
    SpoolFailed,
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Original sends still in flight when the router started spooling, shared
/// with the drainer.
#[derive(Default)]
struct Originals {
    pending: usize,
    delivered: HashSet<u64>,
}

/// An [`EventLog`] that spools to local disk while its primary is away.
pub struct SpooledLog {
    primary: Arc<dyn EventLog>,
    spool: SqliteLog,
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<SpoolStatus>,
    /// Stops the router and the drainer when the log is dropped, so a
    /// dropped log never forwards behind a newer one's back.
    stop: watch::Sender<bool>,
}

impl Drop for SpooledLog {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl fmt::Debug for SpooledLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpooledLog")
            .field("primary", &self.primary)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl SpooledLog {
    /// Wraps `primary`; records left in `spool` by an earlier run are
    /// forwarded first, before anything new goes direct.
    pub async fn new(
        primary: Arc<dyn EventLog>,
        spool: SqliteLog,
        config: SpoolConfig,
    ) -> Result<Self, LogError> {
        let end = spool.end_offset(SPOOL_TOPIC, 0).await?;
        let drained = spool.committed_offset(DRAIN_GROUP, SPOOL_TOPIC).await?;
        let waiting = (end - drained).max(0) as u64;
        if waiting > 0 {
            tracing::warn!(
                waiting,
                "spool holds records from an earlier run, forwarding them first"
            );
        }
        let initial = SpoolStatus {
            spooling: waiting > 0,
            waiting,
        };
        let (status_tx, status) = watch::channel(initial);
        // Room for bursts; a full queue fails fast with Overloaded.
        let (requests, rx) = mpsc::channel(65_536);
        let originals = Arc::new((Mutex::new(Originals::default()), Notify::new()));
        let subscription = spool
            .subscribe(DRAIN_GROUP, &[SPOOL_TOPIC.to_owned()])
            .await?;
        let router = Router {
            primary: primary.clone(),
            spool: spool.clone(),
            config,
            status: status_tx,
            state: initial,
            in_flight: BTreeMap::new(),
            deliveries: FuturesUnordered::new(),
            next_seq: 0,
            originals: originals.clone(),
            requests: requests.clone(),
        };
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(router.run(rx, stopped.clone()));
        tokio::spawn(drain(
            primary.clone(),
            spool.clone(),
            subscription,
            originals,
            requests.clone(),
            stopped,
        ));
        Ok(Self {
            primary,
            spool,
            requests,
            status,
            stop,
        })
    }

    pub fn status(&self) -> SpoolStatus {
        *self.status.borrow()
    }
}

#[async_trait]
impl EventLog for SpooledLog {
    fn append(&self, record: Record) -> BoxFuture<'static, Result<Position, LogError>> {
        let (reply, rx) = oneshot::channel();
        let sent = match self.requests.try_send(Request::Append { record, reply }) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(LogError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(LogError::Closed),
        };
        Box::pin(async move { sent?.await.unwrap_or(Err(LogError::Closed)) })
    }

    async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        self.primary.read(topic, partition, from, max).await
    }

    async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, LogError> {
        self.primary.end_offset(topic, partition).await
    }

    async fn partition_count(&self, topic: &str) -> Result<i32, LogError> {
        self.primary.partition_count(topic).await
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, LogError> {
        self.primary.subscribe(group, topics).await
    }

    /// Spools whatever the primary has not acknowledged, closes the spool
    /// (so every accepted append is durable somewhere), then gives the
    /// primary its own close (a bounded flush).
    async fn close(&self) -> Result<(), LogError> {
        let (reply, done) = oneshot::channel();
        if self.requests.send(Request::Close { reply }).await.is_ok() {
            let _ = done.await;
        }
        self.spool.close().await?;
        self.primary.close().await
    }
}

struct InFlight {
    record: Record,
    since: Instant,
    /// None once the record was spooled (its acknowledgement now comes from
    /// the spool).
    reply: Option<oneshot::Sender<Result<Position, LogError>>>,
}

struct Router {
    primary: Arc<dyn EventLog>,
    spool: SqliteLog,
    config: SpoolConfig,
    status: watch::Sender<SpoolStatus>,
    state: SpoolStatus,
    in_flight: BTreeMap<u64, InFlight>,
    deliveries: FuturesUnordered<BoxFuture<'static, (u64, Result<Position, LogError>)>>,
    next_seq: u64,
    originals: Arc<(Mutex<Originals>, Notify)>,
    requests: mpsc::Sender<Request>,
}

impl Router {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                request = rx.recv() => match request {
                    Some(Request::Append { record, reply }) => self.append(record, reply),
                    Some(Request::Drained(count)) => {
                        self.state.waiting = self.state.waiting.saturating_sub(count);
                        self.maybe_go_direct();
                    }
                    Some(Request::SpoolFailed) => {
                        self.state.waiting = self.state.waiting.saturating_sub(1);
                        self.maybe_go_direct();
                    }
                    Some(Request::Close { reply }) => {
                        // Everything accepted must be durable before close
                        // returns: spool what the primary still owes.
                        let spooled = self.spool_in_flight();
                        if spooled > 0 {
                            tracing::info!(records = spooled, "shutting down: spooled what the primary had not acknowledged");
                        }
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                },
                Some((seq, result)) = self.deliveries.next(), if !self.deliveries.is_empty() => {
                    self.delivered(seq, result);
                }
                _ = tick.tick() => {
                    let overdue = self
                        .in_flight
                        .values()
                        .find(|f| f.reply.is_some())
                        .is_some_and(|oldest| oldest.since.elapsed() >= self.config.spool_after);
                    if overdue {
                        self.start_spooling("primary log slow or unreachable");
                    }
                }
            }
        }
    }

    fn publish(&self) {
        self.status.send_replace(self.state);
    }

    fn append(&mut self, record: Record, reply: oneshot::Sender<Result<Position, LogError>>) {
        if self.state.spooling {
            self.spool_record(record, None, reply);
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let delivery = self.primary.append(record.clone());
        self.deliveries
            .push(Box::pin(async move { (seq, delivery.await) }));
        self.in_flight.insert(
            seq,
            InFlight {
                record,
                since: Instant::now(),
                reply: Some(reply),
            },
        );
    }

    fn delivered(&mut self, seq: u64, result: Result<Position, LogError>) {
        let Some(entry) = self.in_flight.remove(&seq) else {
            return;
        };
        match entry.reply {
            // Still ours to answer.
            Some(reply) => match result {
                Ok(position) => {
                    let _ = reply.send(Ok(position));
                }
                Err(error @ (LogError::InvalidTopic { .. } | LogError::RecordTooLarge { .. })) => {
                    // The record itself is wrong; spooling would not help.
                    let _ = reply.send(Err(error));
                }
                Err(error) => {
                    tracing::warn!(error = %error, "primary log append failed, spooling");
                    self.in_flight.insert(
                        seq,
                        InFlight {
                            reply: Some(reply),
                            ..entry
                        },
                    );
                    self.deliveries_failed_now(seq);
                }
            },
            // Already spooled: tell the drainer whether its copy is needed.
            None => {
                let (lock, notify) = &*self.originals;
                let mut originals = lock.lock().unwrap_or_else(|e| e.into_inner());
                originals.pending = originals.pending.saturating_sub(1);
                if result.is_ok() {
                    originals.delivered.insert(seq);
                }
                notify.notify_waiters();
            }
        }
    }

    /// A failed (not merely slow) append: spool it and everything behind
    /// it. Its original will never be delivered, so it counts as resolved.
    fn deliveries_failed_now(&mut self, seq: u64) {
        self.start_spooling("primary log append failed");
        let (lock, notify) = &*self.originals;
        let mut originals = lock.lock().unwrap_or_else(|e| e.into_inner());
        originals.pending = originals.pending.saturating_sub(1);
        self.in_flight.remove(&seq);
        notify.notify_waiters();
    }

    /// Switches to spooling (logged once per episode) and spools what the
    /// primary still owes.
    fn start_spooling(&mut self, why: &str) {
        if !self.state.spooling {
            tracing::warn!(reason = why, "spooling to local disk");
            self.state.spooling = true;
        }
        self.spool_in_flight();
    }

    /// Spools every in-flight record not yet answered, in call order (the
    /// map is ordered by sequence); their originals stay queued in the
    /// primary and are tracked for the drainer. Returns how many.
    fn spool_in_flight(&mut self) -> usize {
        let owed: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.reply.is_some())
            .map(|(seq, _)| *seq)
            .collect();
        {
            let (lock, _) = &*self.originals;
            lock.lock().unwrap_or_else(|e| e.into_inner()).pending += owed.len();
        }
        for &seq in &owed {
            if let Some(entry) = self.in_flight.get_mut(&seq)
                && let Some(reply) = entry.reply.take()
            {
                let record = entry.record.clone();
                self.spool_record(record, Some(seq), reply);
            }
        }
        self.publish();
        owed.len()
    }

    fn spool_record(
        &mut self,
        record: Record,
        original: Option<u64>,
        reply: oneshot::Sender<Result<Position, LogError>>,
    ) {
        if self.state.waiting >= self.config.max_records {
            let _ = reply.send(Err(LogError::Overloaded));
            if let Some(seq) = original {
                // Its original is now the only copy; let it resolve quietly.
                let (lock, _) = &*self.originals;
                let mut originals = lock.lock().unwrap_or_else(|e| e.into_inner());
                originals.pending = originals.pending.saturating_sub(1);
                self.in_flight.remove(&seq);
            }
            return;
        }
        let mut headers = record.headers;
        headers.push((TOPIC_HEADER.to_owned(), Bytes::from(record.topic)));
        if let Some(seq) = original {
            headers.push((ORIGINAL_HEADER.to_owned(), Bytes::from(seq.to_string())));
        }
        let spooled = self.spool.append(Record {
            topic: SPOOL_TOPIC.to_owned(),
            headers,
            ..record
        });
        self.state.waiting += 1;
        self.publish();
        let requests = self.requests.clone();
        tokio::spawn(async move {
            match spooled.await {
                Ok(position) => {
                    let _ = reply.send(Ok(Position {
                        partition: SPOOLED_PARTITION,
                        offset: position.offset,
                    }));
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                    let _ = requests.send(Request::SpoolFailed).await;
                }
            }
        });
    }

    fn maybe_go_direct(&mut self) {
        if self.state.spooling && self.state.waiting == 0 {
            self.state.spooling = false;
            tracing::info!("spool drained, appending to the primary log again");
        }
        self.publish();
    }
}

/// Forwards spooled records to the primary, in order, forever.
async fn drain(
    primary: Arc<dyn EventLog>,
    spool: SqliteLog,
    mut subscription: Box<dyn Subscription>,
    originals: Arc<(Mutex<Originals>, Notify)>,
    requests: mpsc::Sender<Request>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let polled = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            polled = subscription.poll(512, Duration::from_millis(500)) => polled,
        };
        let batch = match polled {
            Ok(batch) => batch,
            Err(LogError::Closed) => return,
            Err(error) => {
                tracing::error!(error = %error, "cannot read the spool");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(last) = batch.last().map(|r| r.position) else {
            if requests.is_closed() {
                return;
            }
            continue;
        };
        // Originals first: a spooled copy is only needed if its original
        // did not get through, which is known once it resolved.
        let delivered = loop {
            let (lock, notify) = &*originals;
            let waiting = notify.notified();
            {
                let mut originals = lock.lock().unwrap_or_else(|e| e.into_inner());
                if originals.pending == 0 {
                    break std::mem::take(&mut originals.delivered);
                }
            }
            if *stop.borrow() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), waiting).await;
        };
        let mut unsent: Vec<Record> = Vec::with_capacity(batch.len());
        let mut skipped = HashSet::new();
        for stored in batch.iter() {
            let original = header(&stored.record, ORIGINAL_HEADER)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
            if let Some(seq) = original
                && delivered.contains(&seq)
            {
                skipped.insert(seq);
                continue;
            }
            unsent.push(restore(stored.record.clone()));
        }
        {
            // Deliveries this batch did not cover belong to later batches.
            let (lock, _) = &*originals;
            let mut originals = lock.lock().unwrap_or_else(|e| e.into_inner());
            originals
                .delivered
                .extend(delivered.difference(&skipped).copied());
        }
        // Send in order; resend only what failed (the primary keeps order
        // per partition, so failures are a suffix in practice).
        while !unsent.is_empty() {
            if *stop.borrow() {
                return;
            }
            let sends: Vec<_> = unsent
                .iter()
                .map(|record| primary.append(record.clone()))
                .collect();
            let results = futures::future::join_all(sends).await;
            let failed: Vec<Record> = unsent
                .into_iter()
                .zip(results)
                .filter_map(|(record, result)| result.err().map(|error| (record, error)))
                .map(|(record, error)| {
                    tracing::debug!(error = %error, "spooled record not forwarded yet");
                    record
                })
                .collect();
            if failed.is_empty() {
                backoff = Duration::from_millis(100);
            } else {
                if requests.is_closed() {
                    return;
                }
                tracing::warn!(
                    records = failed.len(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "primary log still unavailable, spool kept"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            unsent = failed;
        }
        if let Err(error) = subscription.commit(SPOOL_TOPIC, last).await {
            tracing::error!(error = %error, "cannot record spool progress");
            continue;
        }
        if let Err(error) = spool.trim(SPOOL_TOPIC, last.offset).await {
            tracing::warn!(error = %error, "cannot trim the spool");
        }
        if requests
            .send(Request::Drained(batch.len() as u64))
            .await
            .is_err()
        {
            return;
        }
    }
}

fn header<'a>(record: &'a Record, name: &str) -> Option<&'a [u8]> {
    record
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_ref())
}

/// The record as it was appended: its own topic, without spool headers.
fn restore(mut record: Record) -> Record {
    if let Some(topic) = header(&record, TOPIC_HEADER).and_then(|v| std::str::from_utf8(v).ok()) {
        record.topic = topic.to_owned();
    }
    record
        .headers
        .retain(|(key, _)| key != TOPIC_HEADER && key != ORIGINAL_HEADER);
    record
}
