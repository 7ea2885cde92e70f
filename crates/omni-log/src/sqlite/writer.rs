//! The writer thread: group commit.
//!
//! One OS thread owns the only writing connection. It blocks for the first
//! queued command, drains whatever else is queued (up to `max_batch`),
//! writes it all in one transaction and commits once, so every append in
//! the batch shares one fsync. Only after the commit returned does it answer
//! the waiters; if anything fails, every waiter in the batch gets the error.
//! Blocking SQLite calls never run on the async runtime this way.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        mpsc::{self, Receiver, Sender},
    },
};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

use super::catalog::{self, Catalog, PendingHeaders};
use super::queue::QueueReceiver;
use crate::{LogError, Position, headers};

/// Each topic's next offset, as this process's writer last committed it.
/// Sent after every commit that appended, so a subscription woken by an
/// append to a topic it does not read goes back to sleep without a read.
pub(super) type Ends = HashMap<String, i64>;

/// A record on its way to the writer, with its headers encoded and its
/// payload compressed by the appending task (spreading that work over the
/// runtime's threads).
#[derive(Debug)]
pub(super) struct PendingRecord {
    pub topic: String,
    pub key: Bytes,
    pub headers: PendingHeaders,
    /// As stored: compressed if `payload_codec` says so.
    pub payload: Bytes,
    pub payload_codec: i64,
    /// The payload as given, while its topic has no dictionary to compress
    /// with: a sample to train one on.
    pub sample: Option<Bytes>,
    pub timestamp_ms: i64,
}

#[derive(Debug)]
pub(super) enum Command {
    Append {
        record: PendingRecord,
        reply: oneshot::Sender<Result<Position, LogError>>,
    },
    CommitOffset {
        group: String,
        topic: String,
        next_offset: i64,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// Deletes records of `topic` up to and including `through_offset`,
    /// except the newest record (the spool's drainer reads its position
    /// from it).
    Trim {
        topic: String,
        through_offset: i64,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// Retention: removes the records of `topic` below `end_offset`, but
    /// never one at or after the committed position of a group in
    /// `protected` (a group without one protects the whole topic). The
    /// positions are read inside the transaction, so a commit racing with
    /// the retention pass can never be overtaken.
    Remove {
        topic: String,
        end_offset: i64,
        protected: Vec<String>,
        reply: oneshot::Sender<Result<Removed, LogError>>,
    },
    /// Sent once by `close`: everything queued before it is committed and
    /// answered, everything after it is refused.
    Shutdown,
}

/// What one removal took out of a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Removed {
    pub records: u64,
    pub bytes: u64,
}

/// What the writer knows about a topic: its id and the offset its next
/// record gets. Valid only while no other connection writes to the topic,
/// which `data_version` checks at the start of every batch.
#[derive(Debug, Clone, Copy)]
struct TopicState {
    id: i64,
    next_offset: i64,
}

/// Where a topic is on its way to a compression dictionary.
#[derive(Debug)]
enum Training {
    /// Collecting payloads to train on.
    Sampling { samples: Vec<Bytes>, bytes: usize },
    /// A thread is training on them.
    Running,
    /// Trained (or untrainable: this process stores the topic's payloads
    /// as given).
    Done,
}

/// A dictionary trained for a topic and waiting to be stored.
type Trained = (String, Option<Vec<u8>>);

pub(super) struct Writer {
    path: PathBuf,
    conn: Connection,
    rx: QueueReceiver<Command>,
    max_batch: usize,
    topics: HashMap<String, TopicState>,
    catalog: Arc<Catalog>,
    training: HashMap<String, Training>,
    trained_tx: Sender<Trained>,
    trained_rx: Receiver<Trained>,
    /// Trained dictionaries the next batch stores.
    untrained: Vec<(String, Vec<u8>)>,
    /// `PRAGMA data_version` after our last transaction; a different value
    /// at the start of the next one means another connection committed.
    data_version: Option<i64>,
    /// Changed after every commit that added records, to wake
    /// subscriptions.
    appended: watch::Sender<Ends>,
}

impl Writer {
    pub(super) fn new(
        path: PathBuf,
        conn: Connection,
        rx: QueueReceiver<Command>,
        max_batch: usize,
        appended: watch::Sender<Ends>,
        catalog: Arc<Catalog>,
    ) -> Self {
        let (trained_tx, trained_rx) = mpsc::channel();
        Writer {
            path,
            conn,
            rx,
            max_batch,
            topics: HashMap::new(),
            catalog,
            training: HashMap::new(),
            trained_tx,
            trained_rx,
            untrained: Vec::new(),
            data_version: None,
            appended,
        }
    }

    /// Runs until `close` sends [`Command::Shutdown`] or every sender is gone
    /// (the log was dropped without `close`).
    pub(super) fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut shutdown = false;
        while !shutdown {
            // Blocks without spinning; Err means every sender is gone and the
            // queue is empty, so nothing is left to acknowledge.
            let Ok(first) = self.rx.recv() else { break };
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Shutdown => {
                        shutdown = true;
                        break;
                    }
                    command => batch.push(command),
                }
                if batch.len() < self.max_batch {
                    // Empty or disconnected: write what we have.
                    next = self.rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.write_batch(&mut batch);
            }
        }
        // Appends that raced with `close` and got queued after Shutdown.
        while let Ok(command) = self.rx.try_recv() {
            refuse(command);
        }
        tracing::debug!(path = %self.path.display(), "event log writer stopped");
    }

    fn write_batch(&mut self, batch: &mut Vec<Command>) {
        let mut staged = Staged::default();
        let mut positions = Vec::with_capacity(batch.len());
        let mut removals = Vec::new();
        while let Ok((topic, dictionary)) = self.trained_rx.try_recv() {
            match dictionary {
                Some(dictionary) => self.untrained.push((topic, dictionary)),
                None => {
                    tracing::warn!(path = %self.path.display(), topic = %topic, "cannot train a compression dictionary; the topic's payloads are stored as given");
                }
            }
        }
        let result = self.write(batch, &mut staged, &mut positions, &mut removals);
        if let Err(error) = result {
            if !self.conn.is_autocommit()
                && let Err(rollback) = self.conn.execute_batch("ROLLBACK")
            {
                tracing::error!(path = %self.path.display(), error = %rollback, "event log rollback failed");
            }
            // A failed COMMIT may still have reached the disk; forget what
            // we believe about offsets and reload them from the file.
            self.topics.clear();
            self.data_version = None;
            let error = LogError::storage(
                format!(
                    "cannot commit {} command(s) to event log {}",
                    batch.len(),
                    self.path.display()
                ),
                error,
            );
            tracing::error!(path = %self.path.display(), batch = batch.len(), error = %error, "event log commit failed");
            for command in batch.drain(..) {
                match command {
                    Command::Append { reply, .. } => {
                        let _ = reply.send(Err(error.clone()));
                    }
                    Command::CommitOffset { reply, .. } | Command::Trim { reply, .. } => {
                        let _ = reply.send(Err(error.clone()));
                    }
                    Command::Remove { reply, .. } => {
                        let _ = reply.send(Err(error.clone()));
                    }
                    Command::Shutdown => {}
                }
            }
            return;
        }

        // Committed: only now do the offsets become real and the waiters hear Ok.
        if !staged.topics.is_empty() {
            self.appended.send_modify(|ends| {
                for (topic, state) in &staged.topics {
                    match ends.get_mut(topic) {
                        Some(end) => *end = state.next_offset,
                        None => {
                            ends.insert(topic.clone(), state.next_offset);
                        }
                    }
                }
            });
        }
        self.topics.extend(staged.topics);
        self.catalog.add_templates(staged.templates);
        // Until stored, they stay for the next batch to try again.
        self.untrained.clear();
        for (topic, id, dictionary) in &staged.dictionaries {
            self.catalog.install(topic, *id, dictionary);
            tracing::info!(path = %self.path.display(), topic = %topic, dictionary = id, bytes = dictionary.len(), "compression dictionary stored");
        }
        self.sample(batch);
        let mut positions = positions.into_iter();
        let mut removals = removals.into_iter();
        for command in batch.drain(..) {
            match command {
                Command::Append { reply, .. } => {
                    let offset = positions.next().unwrap_or_default();
                    // The waiter may have given up (its future dropped); the
                    // record is durable regardless.
                    let _ = reply.send(Ok(Position {
                        partition: 0,
                        offset,
                    }));
                }
                Command::CommitOffset { reply, .. } | Command::Trim { reply, .. } => {
                    let _ = reply.send(Ok(()));
                }
                Command::Remove { reply, .. } => {
                    let _ = reply.send(Ok(removals.next().unwrap_or_default()));
                }
                Command::Shutdown => {}
            }
        }
    }

    /// Keeps the batch's payloads of topics without a dictionary as
    /// samples, and starts training once a topic has enough.
    fn sample(&mut self, batch: &[Command]) {
        for command in batch {
            let Command::Append { record, .. } = command else {
                continue;
            };
            let Some(sample) = &record.sample else {
                continue;
            };
            let state = match self.training.get_mut(&record.topic) {
                Some(state) => state,
                None => self
                    .training
                    .entry(record.topic.clone())
                    .or_insert(Training::Sampling {
                        samples: Vec::new(),
                        bytes: 0,
                    }),
            };
            let Training::Sampling { samples, bytes } = state else {
                continue;
            };
            let sample = if sample.len() > catalog::MAX_SAMPLE {
                Bytes::copy_from_slice(&sample[..catalog::MAX_SAMPLE])
            } else {
                sample.clone()
            };
            *bytes += sample.len();
            samples.push(sample);
            if samples.len() < catalog::TRAIN_SAMPLES && *bytes < catalog::TRAIN_BYTES {
                continue;
            }
            let samples = std::mem::take(samples);
            *state = Training::Running;
            if self.catalog.has_encoder(&record.topic) {
                // Another process trained one first.
                *state = Training::Done;
                continue;
            }
            let (topic, tx) = (record.topic.clone(), self.trained_tx.clone());
            let spawned = std::thread::Builder::new()
                .name("omni-log-train".into())
                .spawn(move || {
                    let dictionary = catalog::train(&samples);
                    let _ = tx.send((topic, dictionary));
                });
            if let Err(error) = spawned {
                tracing::warn!(path = %self.path.display(), error = %error, "cannot start training a compression dictionary");
                *state = Training::Done;
            }
        }
    }

    /// The id of a template, from the catalog, the batch or the file,
    /// storing it if new; `None` if that would make more than
    /// [`catalog::MAX_TEMPLATES`].
    fn template_id(
        conn: &Connection,
        catalog: &Catalog,
        staged: &mut Staged,
        template: &[u8],
    ) -> rusqlite::Result<Option<i64>> {
        if let Some(id) = catalog.template_id(template) {
            return Ok(Some(id));
        }
        if let Some(&id) = staged.templates.get(template) {
            return Ok(Some(id));
        }
        // Another process on the file may have stored it.
        let id: Option<i64> = conn
            .prepare_cached("SELECT id FROM log_header_templates WHERE template = ?1")?
            .query_row([template], |row| row.get(0))
            .optional()?;
        let id = match id {
            Some(id) => id,
            None if catalog.template_count() + staged.templates.len() >= catalog::MAX_TEMPLATES => {
                return Ok(None);
            }
            None => {
                conn.prepare_cached("INSERT INTO log_header_templates (template) VALUES (?1)")?
                    .execute([template])?;
                conn.last_insert_rowid()
            }
        };
        staged.templates.insert(template.to_vec(), id);
        Ok(Some(id))
    }

    /// Writes the batch in one transaction. `staged` collects the topics'
    /// new state and the templates and dictionaries stored, `positions`
    /// the offsets of the appends and `removals` what each removal took, in
    /// order; all apply only if this returns Ok (the commit succeeded).
    fn write(
        &mut self,
        batch: &[Command],
        staged: &mut Staged,
        positions: &mut Vec<i64>,
        removals: &mut Vec<Removed>,
    ) -> rusqlite::Result<()> {
        let conn = &self.conn;
        // IMMEDIATE takes the write lock now, so nothing can commit between
        // the data_version check and our inserts.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let data_version: i64 = conn.query_row("PRAGMA data_version", [], |row| row.get(0))?;
        if self.data_version != Some(data_version) {
            // Another connection (another process on the same file) may
            // have appended: our cached offsets could be stale.
            self.topics.clear();
        }
        for (topic, dictionary) in &self.untrained {
            let state = match self.topics.get(topic) {
                Some(state) => *state,
                None => load_topic(conn, topic)?,
            };
            conn.prepare_cached(
                "INSERT INTO log_dictionaries (topic_id, dictionary) VALUES (?1, ?2)",
            )?
            .execute(params![state.id, dictionary])?;
            staged
                .dictionaries
                .push((topic.clone(), conn.last_insert_rowid(), dictionary.clone()));
        }
        let mut insert = conn.prepare_cached(
            "INSERT INTO log_records
                 (topic_id, record_offset, timestamp_ms, key, headers, payload, payload_codec)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        // Per topic id: records and bytes appended by this batch, added to
        // `log_topic_stats` once per topic before the commit.
        let mut added: HashMap<i64, Removed> = HashMap::new();
        for command in batch {
            match command {
                Command::Append { record, .. } => {
                    let topic = record.topic.as_str();
                    let mut state =
                        match staged.topics.get(topic).or_else(|| self.topics.get(topic)) {
                            Some(state) => *state,
                            None => load_topic(conn, topic)?,
                        };
                    let templated;
                    let header_blob = match &record.headers {
                        PendingHeaders::Blob(blob) => blob.as_slice(),
                        PendingHeaders::NewTemplate { split, literal } => {
                            match Self::template_id(conn, &self.catalog, staged, &split.template)? {
                                Some(id) => {
                                    templated = headers::encode_templated(id, &split.slots);
                                    templated.as_slice()
                                }
                                None => literal.as_slice(),
                            }
                        }
                    };
                    insert.execute(params![
                        state.id,
                        state.next_offset,
                        record.timestamp_ms,
                        record.key.as_ref(),
                        header_blob,
                        record.payload.as_ref(),
                        record.payload_codec,
                    ])?;
                    positions.push(state.next_offset);
                    state.next_offset += 1;
                    let sum = added.entry(state.id).or_default();
                    sum.records += 1;
                    sum.bytes +=
                        (record.key.len() + header_blob.len() + record.payload.len()) as u64;
                    match staged.topics.get_mut(topic) {
                        Some(staged) => *staged = state,
                        None => {
                            staged.topics.insert(record.topic.clone(), state);
                        }
                    }
                }
                Command::CommitOffset {
                    group,
                    topic,
                    next_offset,
                    ..
                } => {
                    conn.prepare_cached(
                        "INSERT INTO log_consumer_offsets (group_id, topic, partition_id, next_offset)
                         VALUES (?1, ?2, 0, ?3)
                         ON CONFLICT (group_id, topic, partition_id) DO UPDATE SET next_offset = excluded.next_offset",
                    )?
                                        .execute(params![group, topic, next_offset])?;
                }
                Command::Trim {
                    topic,
                    through_offset,
                    ..
                } => {
                    if let Some(stats) = load_stats(conn, topic)? {
                        // Below the newest record committed before this
                        // batch: never one appended in it.
                        let end = through_offset.saturating_add(1).min(stats.next_offset - 1);
                        remove_below(conn, &stats, end)?;
                    }
                }
                Command::Remove {
                    topic,
                    end_offset,
                    protected,
                    ..
                } => {
                    let removed = match load_stats(conn, topic)? {
                        Some(stats) => {
                            let mut end = (*end_offset).min(stats.next_offset);
                            let mut position = conn.prepare_cached(
                                "SELECT next_offset FROM log_consumer_offsets
                                 WHERE group_id = ?1 AND topic = ?2 AND partition_id = 0",
                            )?;
                            for group in protected {
                                let committed: Option<i64> = position
                                    .query_row(params![group, topic], |row| row.get(0))
                                    .optional()?;
                                end = end.min(committed.unwrap_or(0));
                            }
                            remove_below(conn, &stats, end)?
                        }
                        None => Removed::default(),
                    };
                    removals.push(removed);
                }
                Command::Shutdown => {}
            }
        }
        drop(insert);
        let mut update = conn.prepare_cached(
            "UPDATE log_topic_stats
             SET records = records + ?2, bytes = bytes + ?3, next_offset = ?4
             WHERE topic_id = ?1",
        )?;
        for state in staged.topics.values() {
            let sum = added.get(&state.id).copied().unwrap_or_default();
            update.execute(params![
                state.id,
                sum.records as i64,
                sum.bytes as i64,
                state.next_offset
            ])?;
        }
        drop(update);
        // synchronous=FULL: this fsyncs the WAL before returning.
        conn.execute_batch("COMMIT")?;
        self.data_version = Some(data_version);
        Ok(())
    }
}

/// What a batch changes, applied to the writer's and the catalog's state
/// only once it committed.
#[derive(Debug, Default)]
struct Staged {
    topics: HashMap<String, TopicState>,
    templates: HashMap<Vec<u8>, i64>,
    /// Topic, id and bytes of each dictionary stored.
    dictionaries: Vec<(String, i64, Vec<u8>)>,
}

/// Looks a topic up in the file, creating it (and its stats row) if new,
/// inside the batch's transaction, so a failed batch does not leave it
/// behind.
fn load_topic(conn: &Connection, name: &str) -> rusqlite::Result<TopicState> {
    let id: Option<i64> = conn
        .prepare_cached("SELECT id FROM log_topics WHERE name = ?1")?
        .query_row([name], |row| row.get(0))
        .optional()?;
    let id = match id {
        Some(id) => id,
        None => {
            conn.prepare_cached("INSERT INTO log_topics (name) VALUES (?1)")?
                .execute([name])?;
            conn.last_insert_rowid()
        }
    };
    let mut next_offset = conn
        .prepare_cached("SELECT next_offset FROM log_topic_stats WHERE topic_id = ?1")?
        .query_row([id], |row| row.get::<_, i64>(0))
        .optional()?;
    if next_offset.is_none() {
        // The opening migration gives every topic its row, and a new topic
        // gets it here; one missing anyway is computed from the records
        // rather than trusted to be empty.
        conn.prepare_cached(
            "INSERT INTO log_topic_stats (topic_id, records, bytes, start_offset, next_offset)
             SELECT ?1, COUNT(*),
                    COALESCE(SUM(length(key) + length(headers) + length(payload)), 0),
                    COALESCE(MIN(record_offset), 0), COALESCE(MAX(record_offset) + 1, 0)
             FROM log_records WHERE topic_id = ?1",
        )?
        .execute([id])?;
        next_offset = Some(
            conn.prepare_cached("SELECT next_offset FROM log_topic_stats WHERE topic_id = ?1")?
                .query_row([id], |row| row.get(0))?,
        );
    }
    Ok(TopicState {
        id,
        next_offset: next_offset.unwrap_or_default(),
    })
}

/// A topic's row of `log_topic_stats`, as committed before this batch.
#[derive(Debug, Clone, Copy)]
struct Stats {
    id: i64,
    start_offset: i64,
    next_offset: i64,
}

fn load_stats(conn: &Connection, name: &str) -> rusqlite::Result<Option<Stats>> {
    conn.prepare_cached(
        "SELECT s.topic_id, s.start_offset, s.next_offset
         FROM log_topic_stats s JOIN log_topics t ON t.id = s.topic_id
         WHERE t.name = ?1",
    )?
    .query_row([name], |row| {
        Ok(Stats {
            id: row.get(0)?,
            start_offset: row.get(1)?,
            next_offset: row.get(2)?,
        })
    })
    .optional()
}

/// Deletes the topic's records below `end` and takes them off its stats;
/// the log start offset moves to `end`, and no remaining offset changes.
fn remove_below(conn: &Connection, stats: &Stats, end: i64) -> rusqlite::Result<Removed> {
    if end <= stats.start_offset {
        return Ok(Removed::default());
    }
    let (records, bytes): (i64, i64) = conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(length(key) + length(headers) + length(payload)), 0)
             FROM log_records WHERE topic_id = ?1 AND record_offset < ?2",
        )?
        .query_row(params![stats.id, end], |row| Ok((row.get(0)?, row.get(1)?)))?;
    conn.prepare_cached("DELETE FROM log_records WHERE topic_id = ?1 AND record_offset < ?2")?
        .execute(params![stats.id, end])?;
    conn.prepare_cached(
        "UPDATE log_topic_stats
         SET records = records - ?2, bytes = bytes - ?3, start_offset = ?4
         WHERE topic_id = ?1",
    )?
    .execute(params![stats.id, records, bytes, end])?;
    Ok(Removed {
        records: records as u64,
        bytes: bytes as u64,
    })
}

fn refuse(command: Command) {
    match command {
        Command::Append { reply, .. } => {
            let _ = reply.send(Err(LogError::Closed));
        }
        Command::CommitOffset { reply, .. } | Command::Trim { reply, .. } => {
            let _ = reply.send(Err(LogError::Closed));
        }
        Command::Remove { reply, .. } => {
            let _ = reply.send(Err(LogError::Closed));
        }
        Command::Shutdown => {}
    }
}
