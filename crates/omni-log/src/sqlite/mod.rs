//! The embedded default backend: the whole stream in one SQLite file.
//!
//! Writes go through one writer thread that group-commits (see
//! [`writer`]); reads use a small pool of separate connections on the
//! blocking thread pool, which WAL mode lets run alongside the writer.
//! Consumer offsets are committed through the writer too, so they are as
//! durable as records and share their fsyncs.
//!
//! Limits of this backend, by design: one partition per topic; every live
//! subscription of a group reads the whole topic (there is no rebalancing,
//! the daemon runs one consumer per group). Records are kept until a
//! retention pass removes them ([`retention`]); reads and subscriptions
//! positioned before the log start resume at it, like a Kafka consumer with
//! `auto.offset.reset=earliest`.

mod catalog;
mod queue;
mod retention;
mod schema;
mod writer;

pub use self::retention::{
    HELD_BACK_SCAN_LIMIT, HeldBack, RetentionLimits, RetentionPolicy, RetentionReport,
    TopicRetention, TopicStats,
};

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{oneshot, watch};

use self::{
    catalog::Catalog,
    queue::{QueueSender, TrySendError},
    writer::{Command, Ends, PendingRecord, Writer},
};
use crate::{
    BoxFuture, EventLog, HeaderDecodeError, LogError, Position, Record, StoredRecord, Subscription,
    deadline_after, headers, validate_topic,
};

/// Largest key, encoded headers or payload SQLite stores (its default
/// `SQLITE_MAX_LENGTH`). Checked before queueing so that one oversized
/// record fails alone instead of failing the whole batch it would join.
pub(super) const MAX_FIELD_BYTES: usize = 1_000_000_000;

/// Read connections kept open between reads; more are opened under load
/// and closed again.
const MAX_IDLE_READERS: usize = 4;

/// Tuning of the SQLite log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteLogConfig {
    /// Most commands (appends, offset commits) written in one transaction,
    /// i.e. sharing one fsync. Larger batches raise throughput under load
    /// and cost nothing when idle (the writer never waits to fill a batch).
    pub max_batch: usize,
    /// Appends waiting for the writer before `append` answers
    /// [`LogError::Overloaded`]; bounds the memory a burst can take.
    pub queue_capacity: usize,
}

impl Default for SqliteLogConfig {
    fn default() -> Self {
        SqliteLogConfig {
            max_batch: 1024,
            queue_capacity: 65_536,
        }
    }
}

/// The embedded event log: one SQLite file in WAL mode, group-committed by
/// a dedicated writer thread.
///
/// Dropping it without [`close`](EventLog::close) loses nothing that was
/// acknowledged (acknowledged means committed); the writer thread finishes
/// what is queued and exits on its own once the log and its subscriptions
/// are gone.
#[derive(Clone)]
pub struct SqliteLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    tx: QueueSender<Command>,
    closed: AtomicBool,
    /// Turns true when the writer thread has finished; its sender is dropped
    /// without turning true if the thread panicked.
    writer_done: watch::Receiver<bool>,
    /// Changed by the writer after each commit with appends.
    appended: watch::Receiver<Ends>,
    readers: Mutex<Vec<Connection>>,
    catalog: Arc<Catalog>,
}

impl fmt::Debug for SqliteLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLog")
            .field("path", &self.inner.path)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SqliteLog {
    /// Opens (creating if needed) the log at `path`, with its parent
    /// directory and schema, and starts the writer thread.
    ///
    /// Blocks briefly on file I/O; call it at start-up or from
    /// `spawn_blocking`.
    pub fn open(path: &Path, config: SqliteLogConfig) -> Result<SqliteLog, LogError> {
        if config.max_batch == 0 {
            return Err(LogError::InvalidConfig {
                reason: "max_batch must be at least 1",
            });
        }
        if config.queue_capacity == 0 {
            return Err(LogError::InvalidConfig {
                reason: "queue_capacity must be at least 1",
            });
        }
        let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                LogError::storage(format!("cannot create directory {}", dir.display()), e)
            })?;
        }
        let conn = schema::open_writer(path)?;
        let catalog = Arc::new(Catalog::load(&conn).map_err(|e| {
            LogError::storage(
                format!(
                    "cannot read the header templates and dictionaries of event log {}",
                    path.display()
                ),
                e,
            )
        })?);
        // The schema commit created the database and WAL files; make their
        // directory entries durable too, or a power loss could lose the
        // whole file right after its first acknowledged append.
        {
            let dir = dir.unwrap_or(Path::new("."));
            std::fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| {
                    LogError::storage(format!("cannot sync directory {}", dir.display()), e)
                })?;
        }
        // Fail now, not at the first read, if readers cannot open the file.
        let reader = schema::open_reader(path)?;

        let (tx, rx) = queue::bounded(config.queue_capacity);
        let (appended_tx, appended_rx) = watch::channel(Ends::default());
        let (done_tx, done_rx) = watch::channel(false);
        let writer = Writer::new(
            path.to_owned(),
            conn,
            rx,
            config.max_batch,
            appended_tx,
            Arc::clone(&catalog),
        );
        let thread_path = path.to_owned();
        std::thread::Builder::new()
            .name("omni-log-writer".into())
            .spawn(move || {
                // A panic drops every waiter's reply (they see `Closed`, never
                // Ok) and leaves `done` false, so `close` reports it.
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.run())) {
                    Ok(()) => {
                        done_tx.send_replace(true);
                    }
                    Err(_) => {
                        tracing::error!(path = %thread_path.display(), "event log writer thread panicked");
                    }
                }
            })
            .map_err(|e| {
                LogError::storage(
                    format!(
                        "cannot start the writer thread of event log {}",
                        path.display()
                    ),
                    e,
                )
            })?;

        let checkpointer = schema::open_checkpointer(path)?;
        let (appended, done) = (appended_rx.clone(), done_rx.clone());
        let thread_path = path.to_owned();
        std::thread::Builder::new()
            .name("omni-log-checkpointer".into())
            .spawn(move || run_checkpointer(&thread_path, checkpointer, appended, done))
            .map_err(|e| {
                LogError::storage(
                    format!(
                        "cannot start the checkpointer of event log {}",
                        path.display()
                    ),
                    e,
                )
            })?;

        tracing::info!(path = %path.display(), max_batch = config.max_batch, queue_capacity = config.queue_capacity, "event log opened");
        Ok(SqliteLog {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                tx,
                closed: AtomicBool::new(false),
                writer_done: done_rx,
                appended: appended_rx,
                readers: Mutex::new(vec![reader]),
                catalog,
            }),
        })
    }

    /// Deletes the records of `topic` up to and including `through_offset`
    /// (never the newest one), at once and whatever any group committed.
    /// For the spool, which only needs what has not been forwarded yet;
    /// the main log removes records by retention
    /// ([`enforce_retention`](SqliteLog::enforce_retention)).
    pub async fn trim(&self, topic: &str, through_offset: i64) -> Result<(), LogError> {
        validate_topic(topic)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .send_blocking(Command::Trim {
                topic: topic.to_owned(),
                through_offset,
                reply,
            })
            .await?;
        rx.await.unwrap_or(Err(LogError::Closed))
    }

    /// The offset group `group` resumes `topic` from: one past its last
    /// commit, 0 if it never committed.
    pub async fn committed_offset(&self, group: &str, topic: &str) -> Result<i64, LogError> {
        validate_topic(topic)?;
        let (group, topic) = (group.to_owned(), topic.to_owned());
        let context = format!(
            "cannot read offsets of group {group} from event log {}",
            self.inner.path.display()
        );
        self.inner
            .with_reader(move |conn| {
                conn.prepare_cached(
                    "SELECT next_offset FROM log_consumer_offsets
                     WHERE group_id = ?1 AND topic = ?2 AND partition_id = 0",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(rusqlite::params![group, topic], |row| row.get::<_, i64>(0))
                        .optional()
                })
                .map(Option::unwrap_or_default)
                .map_err(|e| LogError::storage(context, e))
            })
            .await
    }

    /// Validates and queues `record`; the returned receiver resolves once
    /// the writer committed it.
    fn enqueue(
        &self,
        record: Record,
    ) -> Result<oneshot::Receiver<Result<Position, LogError>>, LogError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        validate_topic(&record.topic)?;
        let too_large = |field, size| LogError::RecordTooLarge {
            topic: record.topic.clone(),
            field,
            size,
            max: MAX_FIELD_BYTES,
        };
        if record.key.len() > MAX_FIELD_BYTES {
            return Err(too_large("key", record.key.len()));
        }
        if record.payload.len() > MAX_FIELD_BYTES {
            return Err(too_large("payload", record.payload.len()));
        }
        let headers_len = headers::encoded_len(&record.headers);
        if headers_len > MAX_FIELD_BYTES {
            return Err(too_large("headers", headers_len));
        }
        let catalog = &self.inner.catalog;
        let headers = catalog
            .prepare_headers(&record.headers, &record.payload, record.timestamp_ms)
            .ok_or_else(|| too_large("headers", headers_len))?;
        let stored = catalog.compress(&record.topic, &record.payload);
        let (reply, rx) = oneshot::channel();
        let pending = PendingRecord {
            topic: record.topic,
            key: record.key,
            headers,
            payload: stored.bytes,
            payload_codec: stored.codec,
            sample: stored.sample.then_some(record.payload),
            timestamp_ms: record.timestamp_ms,
        };
        match self.inner.tx.try_send(Command::Append {
            record: pending,
            reply,
        }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(LogError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(LogError::Closed),
        }
    }
}

/// How often the background checkpointer looks for new commits.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Copies committed WAL frames into the database file while the writer
/// keeps appending; stops once the writer has stopped (or vanished).
fn run_checkpointer(
    path: &Path,
    conn: Connection,
    mut appended: watch::Receiver<Ends>,
    done: watch::Receiver<bool>,
) {
    loop {
        std::thread::sleep(CHECKPOINT_INTERVAL);
        if *done.borrow() || done.has_changed().is_err() {
            return;
        }
        match appended.has_changed() {
            Ok(true) => {
                appended.borrow_and_update();
            }
            Ok(false) => continue,
            Err(_) => return,
        }
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            // Harmless for durability (the WAL holds the data); the writer's
            // own checkpoint does the work instead.
            tracing::warn!(path = %path.display(), error = %error, "background checkpoint failed");
        }
    }
}

impl Inner {
    /// Runs `f` with a read connection on the blocking pool.
    async fn with_reader<T, F>(self: &Arc<Self>, f: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, LogError> + Send + 'static,
    {
        let inner = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            if inner.closed.load(Ordering::Acquire) {
                return Err(LogError::Closed);
            }
            let idle = inner
                .readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop();
            let conn = match idle {
                Some(conn) => conn,
                None => schema::open_reader(&inner.path)?,
            };
            let result = f(&conn);
            if !inner.closed.load(Ordering::Acquire) {
                let mut readers = inner.readers.lock().unwrap_or_else(|e| e.into_inner());
                if readers.len() < MAX_IDLE_READERS {
                    readers.push(conn);
                }
            }
            result
        });
        match task.await {
            Ok(result) => result,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only happens when the runtime shuts down.
                Err(_) => Err(LogError::Closed),
            },
        }
    }

    /// Sends a command that must not be refused for load (offset commits,
    /// shutdown): waits on the blocking pool for room in the queue.
    async fn send_blocking(&self, command: Command) -> Result<(), LogError> {
        let tx = self.tx.clone();
        let task =
            tokio::task::spawn_blocking(move || tx.send(command).map_err(|_| LogError::Closed));
        task.await.unwrap_or(Err(LogError::Closed))
    }

    fn read_error(&self, topic: &str) -> impl Fn(rusqlite::Error) -> LogError + Send + use<> {
        let context = format!(
            "cannot read topic {topic} from event log {}",
            self.path.display()
        );
        move |e| LogError::storage(context.clone(), e)
    }
}

fn check_partition(topic: &str, partition: i32) -> Result<(), LogError> {
    if partition == 0 {
        Ok(())
    } else {
        Err(LogError::UnknownPartition {
            topic: topic.to_owned(),
            partition,
        })
    }
}

/// Reads up to `max` records of `topic` from `from_offset` on.
fn read_records(
    conn: &Connection,
    catalog: &Catalog,
    topic: &str,
    from_offset: i64,
    max: usize,
    read_error: &dyn Fn(rusqlite::Error) -> LogError,
) -> Result<Vec<StoredRecord>, LogError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT record_offset, timestamp_ms, key, headers, payload, payload_codec
             FROM log_records
             WHERE topic_id = (SELECT id FROM log_topics WHERE name = ?1) AND record_offset >= ?2
             ORDER BY record_offset LIMIT ?3",
        )
        .map_err(read_error)?;
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let mut rows = stmt
        .query(rusqlite::params![topic, from_offset, limit])
        .map_err(read_error)?;
    let mut records = Vec::with_capacity(max.min(1024));
    while let Some(row) = rows.next().map_err(read_error)? {
        let offset: i64 = row.get(0).map_err(read_error)?;
        let corrupt = |source| LogError::Corrupt {
            topic: topic.to_owned(),
            offset,
            source,
        };
        let timestamp_ms: i64 = row.get(1).map_err(read_error)?;
        let key: Vec<u8> = row.get(2).map_err(read_error)?;
        let payload: Vec<u8> = row.get(4).map_err(read_error)?;
        let codec: i64 = row.get(5).map_err(read_error)?;
        let payload = catalog
            .decompress(conn, codec, payload)
            .map_err(read_error)?
            .map_err(corrupt)?;
        let header_blob = row
            .get_ref(3)
            .map_err(read_error)?
            .as_blob()
            .map_err(|e| read_error(e.into()))?;
        let template = match headers::template_id(header_blob).map_err(corrupt)? {
            Some(id) => Some(
                catalog
                    .template(conn, id)
                    .map_err(read_error)?
                    .unwrap_or(Err(HeaderDecodeError::UnknownTemplate(id)))
                    .map_err(corrupt)?,
            ),
            None => None,
        };
        let headers = headers::decode(header_blob, template.as_deref(), &payload, timestamp_ms)
            .map_err(corrupt)?;
        records.push(StoredRecord {
            position: Position {
                partition: 0,
                offset,
            },
            record: Record {
                topic: topic.to_owned(),
                key: Bytes::from(key),
                headers,
                payload,
                timestamp_ms,
            },
        });
    }
    Ok(records)
}

#[async_trait]
impl EventLog for SqliteLog {
    // Written out instead of `async fn` so the record is queued when
    // `append` is called, not when the future is first polled: call order
    // is log order, as the trait promises.
    fn append(&self, record: Record) -> BoxFuture<'static, Result<Position, LogError>> {
        let queued = self.enqueue(record);
        Box::pin(async move {
            // A dropped reply means the writer stopped before answering:
            // not acknowledged, so never Ok.
            queued?.await.unwrap_or(Err(LogError::Closed))
        })
    }

    async fn read(
        &self,
        topic: &str,
        partition: i32,
        from_offset: i64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        check_partition(topic, partition)?;
        if from_offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                topic: topic.to_owned(),
                partition,
                offset: from_offset,
            });
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        let topic = topic.to_owned();
        let read_error = self.inner.read_error(&topic);
        let catalog = Arc::clone(&self.inner.catalog);
        self.inner
            .with_reader(move |conn| {
                read_records(conn, &catalog, &topic, from_offset, max, &read_error)
            })
            .await
    }

    async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, LogError> {
        check_partition(topic, partition)?;
        let topic = topic.to_owned();
        let read_error = self.inner.read_error(&topic);
        self.inner
            .with_reader(move |conn| {
                // From the stats, not the newest record: retention may have
                // removed every record, and offsets still continue.
                conn.prepare_cached(
                    "SELECT s.next_offset FROM log_topic_stats s JOIN log_topics t ON t.id = s.topic_id
                     WHERE t.name = ?1",
                )
                .and_then(|mut stmt| {
                    stmt.query_row([&topic], |row| row.get(0))
                        .optional()
                })
                .map(Option::unwrap_or_default)
                .map_err(read_error)
            })
            .await
    }

    async fn partition_count(&self, topic: &str) -> Result<i32, LogError> {
        validate_topic(topic)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        Ok(1)
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, LogError> {
        for topic in topics {
            validate_topic(topic)?;
        }
        let mut unique: Vec<String> = Vec::with_capacity(topics.len());
        for topic in topics {
            if !unique.contains(topic) {
                unique.push(topic.clone());
            }
        }
        let topics = unique;
        // Mark the current generation seen before reading positions, so a
        // commit racing with subscribe still wakes the first poll.
        let mut appended = self.inner.appended.clone();
        appended.borrow_and_update();
        let group_owned = group.to_owned();
        let topics_owned = topics.clone();
        let context = format!(
            "cannot read offsets of group {group} from event log {}",
            self.inner.path.display()
        );
        let next_offsets = self
            .inner
            .with_reader(move |conn| {
                let read = || -> rusqlite::Result<Vec<i64>> {
                    let mut stmt = conn.prepare_cached(
                        "SELECT next_offset FROM log_consumer_offsets
                         WHERE group_id = ?1 AND topic = ?2 AND partition_id = 0",
                    )?;
                    let mut next_offsets = Vec::with_capacity(topics_owned.len());
                    for topic in &topics_owned {
                        let next: Option<i64> = stmt
                            .query_row(rusqlite::params![group_owned, topic], |row| row.get(0))
                            .optional()?;
                        next_offsets.push(next.unwrap_or(0));
                    }
                    Ok(next_offsets)
                };
                read().map_err(|e| LogError::storage(context, e))
            })
            .await?;
        Ok(Box::new(SqliteSubscription {
            inner: Arc::clone(&self.inner),
            group: group.to_owned(),
            positions: topics.into_iter().zip(next_offsets).collect(),
            next_topic: 0,
            appended,
        }))
    }

    async fn close(&self) -> Result<(), LogError> {
        let first = !self.inner.closed.swap(true, Ordering::AcqRel);
        if first {
            // Queued behind every accepted append, which the writer commits
            // and acknowledges before it stops. A send error means the
            // writer is already gone; `writer_done` tells how it ended.
            let _ = self.inner.send_blocking(Command::Shutdown).await;
        }
        let mut done = self.inner.writer_done.clone();
        let finished = done.wait_for(|done| *done).await.is_ok();
        self.inner
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if finished {
            if first {
                tracing::info!(path = %self.inner.path.display(), "event log closed");
            }
            Ok(())
        } else {
            Err(LogError::storage(
                format!(
                    "writer thread of event log {} stopped unexpectedly",
                    self.inner.path.display()
                ),
                std::io::Error::other("writer thread panicked"),
            ))
        }
    }
}

/// A consumer-group member reading from the SQLite log.
struct SqliteSubscription {
    inner: Arc<Inner>,
    group: String,
    /// Per topic, the next offset `poll` returns (partition 0 only).
    positions: Vec<(String, i64)>,
    /// Topic `poll` reads first, rotated so one busy topic cannot starve
    /// the others.
    next_topic: usize,
    appended: watch::Receiver<Ends>,
}

impl fmt::Debug for SqliteSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteSubscription")
            .field("group", &self.group)
            .field("positions", &self.positions)
            .finish_non_exhaustive()
    }
}

impl SqliteSubscription {
    async fn fetch(&mut self, max: usize) -> Result<Vec<StoredRecord>, LogError> {
        let count = self.positions.len();
        let start = self.next_topic % count.max(1);
        self.next_topic = self.next_topic.wrapping_add(1);
        let order: Vec<(String, i64)> = self.positions[start..]
            .iter()
            .chain(&self.positions[..start])
            .cloned()
            .collect();
        let path = self.inner.path.display().to_string();
        let catalog = Arc::clone(&self.inner.catalog);
        let records = self
            .inner
            .with_reader(move |conn| {
                let mut records = Vec::new();
                for (topic, from) in &order {
                    let left = max - records.len();
                    if left == 0 {
                        break;
                    }
                    let context = format!("cannot read topic {topic} from event log {path}");
                    let read_error = move |e| LogError::storage(context.clone(), e);
                    records.extend(read_records(
                        conn,
                        &catalog,
                        topic,
                        *from,
                        left,
                        &read_error,
                    )?);
                }
                Ok(records)
            })
            .await?;
        for record in &records {
            if let Some((_, next)) = self
                .positions
                .iter_mut()
                .find(|(topic, _)| *topic == record.record.topic)
            {
                *next = (*next).max(record.position.offset + 1);
            }
        }
        Ok(records)
    }
}

#[async_trait]
impl Subscription for SqliteSubscription {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<StoredRecord>, LogError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = deadline_after(timeout);
        // The first read of a poll is unconditional: it also finds what
        // another process on the file appended, which wakes no one here.
        let mut first = true;
        loop {
            // Seen before reading: a commit after this point changes the
            // value again and wakes the wait below.
            let news = {
                let ends = self.appended.borrow_and_update();
                first
                    || self
                        .positions
                        .iter()
                        .any(|(topic, next)| ends.get(topic).is_some_and(|end| end > next))
            };
            first = false;
            // Woken by a commit to topics this subscription does not read
            // (every append wakes every subscription): nothing to read.
            if news && !self.positions.is_empty() {
                let records = self.fetch(max).await?;
                if !records.is_empty() {
                    return Ok(records);
                }
            }
            match tokio::time::timeout_at(deadline, self.appended.changed()).await {
                Err(_elapsed) => return Ok(Vec::new()),
                Ok(Ok(())) => {}
                // The writer is gone: nothing new can arrive.
                Ok(Err(_)) => return Err(LogError::Closed),
            }
        }
    }

    async fn commit(&mut self, topic: &str, position: Position) -> Result<(), LogError> {
        validate_topic(topic)?;
        check_partition(topic, position.partition)?;
        let out_of_range = || LogError::OffsetOutOfRange {
            topic: topic.to_owned(),
            partition: position.partition,
            offset: position.offset,
        };
        if position.offset < 0 {
            return Err(out_of_range());
        }
        let next_offset = position.offset.checked_add(1).ok_or_else(out_of_range)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .send_blocking(Command::CommitOffset {
                group: self.group.clone(),
                topic: topic.to_owned(),
                next_offset,
                reply,
            })
            .await?;
        rx.await.unwrap_or(Err(LogError::Closed))
    }
}
