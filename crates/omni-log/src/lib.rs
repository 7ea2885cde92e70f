//! The unified event stream every connector writes to and every consumer
//! (threading, helpdesk products, `omnid tail`) reads from.
//!
//! One trait, [`EventLog`], hides whether the stream is the embedded SQLite
//! file ([`SqliteLog`], the default that needs no servers) or Kafka (a later
//! backend), so connectors and the threading logic are written once. The
//! trait is deliberately Kafka-shaped (topics, partitions, offsets, keys,
//! headers, consumer groups with committed positions) so that the embedded
//! default never promises something Kafka cannot keep.
//!
//! The crate moves opaque bytes: encoding events is the caller's job, which
//! keeps this crate free of the workspace's protobuf and model crates.
//!
//! The one guarantee that matters: an `Ok` from [`EventLog::append`] means
//! the record is durable, and must never be lost afterwards. Everything
//! upstream (webhook 2xx, IMAP checkpoints, Telegram offsets) is acknowledged
//! on the strength of it.

use std::{error::Error as StdError, fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(feature = "contract-tests")]
pub mod contract;
mod headers;
#[cfg(feature = "kafka")]
mod kafka;
mod spool;
mod sqlite;

pub use headers::HeaderDecodeError;
#[cfg(feature = "kafka")]
pub use kafka::{KafkaLog, KafkaLogConfig, TopicSpec};
pub use spool::{SPOOL_TOPIC, SPOOLED_PARTITION, SpoolConfig, SpoolStatus, SpooledLog};
pub use sqlite::{
    HELD_BACK_SCAN_LIMIT, HeldBack, RetentionLimits, RetentionPolicy, RetentionReport, SqliteLog,
    SqliteLogConfig, TopicRetention, TopicStats,
};

/// A record as a producer hands it to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic name; Kafka's naming rules apply (see [`validate_topic`]) so a
    /// deployment can move from SQLite to Kafka without renaming anything.
    pub topic: String,
    /// Partitioning key: records with equal keys keep their relative order.
    pub key: Bytes,
    /// Kafka-style headers (CloudEvents binary mode puts `ce_*` here).
    /// Order and duplicates are preserved.
    pub headers: Vec<(String, Bytes)>,
    pub payload: Bytes,
    /// Producer's timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// Where a record sits in its topic: consumers resume from it and commit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// A record read back from the log, with the position it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub position: Position,
    pub record: Record,
}

/// Why a log operation failed. Callers branch on the first two (shed load,
/// stop), everything else is reported.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The log was closed (or its writer stopped); nothing more is accepted.
    #[error("event log is closed")]
    Closed,
    /// The append queue is full; the record was not accepted. Callers turn
    /// this into a 503 with Retry-After instead of buffering without bound.
    #[error("event log is overloaded: append queue is full")]
    Overloaded,
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
    #[error("unknown partition {partition} of topic {topic}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("offset {offset} is out of range for topic {topic} partition {partition}")]
    OffsetOutOfRange {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error(
        "record for topic {topic} is too large: {field} is {size} bytes, at most {max} allowed"
    )]
    RecordTooLarge {
        topic: String,
        field: &'static str,
        size: usize,
        max: usize,
    },
    #[error("invalid event log configuration: {reason}")]
    InvalidConfig { reason: &'static str },
    /// A stored record could not be decoded; the file was damaged or written
    /// by something else.
    #[error("corrupt record at offset {offset} of topic {topic}")]
    Corrupt {
        topic: String,
        offset: i64,
        #[source]
        source: HeaderDecodeError,
    },
    /// The storage backend failed. `source` is shared so that one failed
    /// group commit can report the same error to every waiter in the batch.
    #[error("{context}")]
    Storage {
        context: String,
        #[source]
        source: Arc<dyn StdError + Send + Sync + 'static>,
    },
}

impl LogError {
    pub(crate) fn storage(
        context: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        LogError::Storage {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

/// A boxed future, as `async_trait` produces; spelled out where an
/// implementation does work before returning it.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The unified event stream.
///
/// Implementations are shared as `Arc<dyn EventLog>` by every connector and
/// consumer in the process.
#[async_trait]
pub trait EventLog: fmt::Debug + Send + Sync + 'static {
    /// Appends `record` to its topic and resolves with its position.
    ///
    /// Resolves `Ok` only once the record is durable (SQLite: the
    /// transaction holding it has committed with fsync; Kafka: acknowledged
    /// by all in-sync replicas). An `Ok` that is later lost is the one bug a
    /// backend must never have; on any doubt it returns an error, and the
    /// caller's retry may then produce a duplicate (consumers deduplicate by
    /// event id).
    ///
    /// Backends accept the record when `append` is called, before the
    /// returned future is first polled, so the order of calls is the order
    /// in the log even when the futures are awaited concurrently or out of
    /// order. A full queue fails fast with [`LogError::Overloaded`].
    /// The returned future owns everything it needs (`'static`), so callers
    /// holding the log behind an `Arc` can hand it on as an acknowledgement.
    fn append(&self, record: Record) -> BoxFuture<'static, Result<Position, LogError>>;

    /// Up to `max` records of one partition starting at `from_offset`, in
    /// offset order; empty at or past the end. On SQLite, an offset below
    /// the log start (records removed by retention) reads from the start.
    async fn read(
        &self,
        topic: &str,
        partition: i32,
        from_offset: i64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, LogError>;

    /// The offset the next record of this partition will get (0 for an empty
    /// or unknown topic).
    async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, LogError>;

    /// How many partitions the topic has (SQLite: always 1).
    async fn partition_count(&self, topic: &str) -> Result<i32, LogError>;

    /// Joins consumer group `group` for `topics`. Consumption starts after
    /// the group's committed position, or at the beginning of a topic the
    /// group never committed on, or whose records after its position were
    /// removed by retention (Kafka: `auto.offset.reset=earliest`).
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, LogError>;

    /// Stops accepting appends, finishes (commits and acknowledges)
    /// everything already accepted, and releases files and connections.
    /// Idempotent; a call made while another is in progress waits for it.
    async fn close(&self) -> Result<(), LogError>;
}

/// One member of a consumer group.
///
/// Like a Kafka consumer, it keeps a fetch position that advances as
/// [`poll`](Subscription::poll) returns records, separate from the group's
/// committed position that [`commit`](Subscription::commit) stores: a
/// record polled but not committed is delivered again only to a later
/// subscription of the group (at-least-once).
#[async_trait]
pub trait Subscription: fmt::Debug + Send {
    /// Records after this subscription's position (per topic/partition),
    /// waiting up to `timeout` for new ones. It is woken by new commits, not
    /// by polling the store; on timeout it returns an empty `Vec`.
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<StoredRecord>, LogError>;

    /// The handler is done with everything up to and including `position`
    /// on `topic`; a later subscription of the same group resumes after it.
    /// Committing is separate from polling so that a consumer commits only
    /// after its handler succeeded. Resolves once the commit is durable.
    async fn commit(&mut self, topic: &str, position: Position) -> Result<(), LogError>;
}

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;

/// Checks `topic` against Kafka's rules (1 to 249 characters of
/// `[a-zA-Z0-9._-]`, not `.` or `..`), so that every backend accepts the
/// same names and a deployment can switch backends.
pub fn validate_topic(topic: &str) -> Result<(), LogError> {
    let invalid = |reason| {
        Err(LogError::InvalidTopic {
            topic: topic.to_owned(),
            reason,
        })
    };
    if topic.is_empty() {
        return invalid("empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return invalid("longer than 249 characters");
    }
    if topic == "." || topic == ".." {
        return invalid("reserved name");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// A poll timeout as a deadline, saturating instead of panicking on huge
/// timeouts (`Duration::MAX` means "wait for a record").
pub(crate) fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_topic_rules() {
        assert!(validate_topic("omni.inbound.v1").is_ok());
        assert!(validate_topic("a-b_c.D9").is_ok());
        assert!(validate_topic(&"a".repeat(249)).is_ok());
        for bad in [
            "",
            ".",
            "..",
            "with space",
            "slash/topic",
            "ünï",
            &"a".repeat(250),
        ] {
            assert!(
                matches!(validate_topic(bad), Err(LogError::InvalidTopic { .. })),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn errors_are_lowercase_with_context() {
        let e = LogError::UnknownPartition {
            topic: "t".into(),
            partition: 3,
        };
        assert_eq!(e.to_string(), "unknown partition 3 of topic t");
        let e = LogError::storage("cannot open /x", std::io::Error::other("boom"));
        assert_eq!(e.to_string(), "cannot open /x");
        assert_eq!(e.source().map(ToString::to_string).as_deref(), Some("boom"));
    }

    #[test]
    fn log_error_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<LogError>();
    }
}
