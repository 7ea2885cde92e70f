//! Retention of the embedded log, as Kafka's `retention.ms` and
//! `retention.bytes` work: per topic, the oldest records beyond an age or
//! beyond a size are removed; the log start offset moves forward and no
//! remaining record's offset changes.
//!
//! One difference from Kafka, on purpose: a record at or after the
//! committed position of a *protected* consumer group (the daemon's own
//! consumers, which must see every record) is never removed, whatever its
//! age or the topic's size. A protected group that never committed on a
//! topic protects all of it: it will start reading at the log start, so
//! nothing may go before it has read (and committed) it. Retention of that
//! topic waits, and the pass reports by how many records.
//!
//! A pass works topic by topic in bounded batches: it finds the next
//! removable records by reading (offset, timestamp, size) of the oldest
//! records on a read connection, then hands one bounded removal to the
//! writer thread, which deletes them in the same kind of transaction as
//! appends (re-reading the protected positions inside it). So the write
//! lock is held for one small batch at a time, queued appends get their
//! turn between batches, and an interrupted pass leaves a consistent log:
//! each batch is committed whole or not at all.
//!
//! Removed records' pages go to SQLite's freelist and are reused by later
//! appends; the file does not shrink (no `VACUUM`), it stops growing.

use std::{
    collections::BTreeMap,
    sync::atomic::Ordering,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::{SqliteLog, writer::Command};
use crate::{LogError, validate_topic};

/// Removals in a row that may find nothing to remove (another pass got
/// there first) before a pass gives up on a topic until the next pass.
const MAX_STALLS: u32 = 3;

/// Most records a pass reads past a protected position to tell how many
/// records that group holds back; beyond it, the count is a lower bound.
pub const HELD_BACK_SCAN_LIMIT: usize = 10_000;

/// How much of one topic the embedded log keeps; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionLimits {
    /// Records whose timestamp is older than this are removed (oldest
    /// first; a younger record stops the removal, so a record with a
    /// timestamp in the future keeps everything after it).
    pub max_age: Option<Duration>,
    /// The topic's records (key, headers and payload bytes as stored,
    /// after templating and compression) are kept at or under this size
    /// by removing the oldest ones.
    pub max_bytes: Option<u64>,
}

impl RetentionLimits {
    /// Neither limit set: the topic is kept whole.
    pub fn is_unlimited(&self) -> bool {
        self.max_age.is_none() && self.max_bytes.is_none()
    }
}

/// What a retention pass removes, and what it must never remove.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// Limits of every topic not named in `topics`.
    pub default: RetentionLimits,
    /// Limits per topic name.
    pub topics: BTreeMap<String, RetentionLimits>,
    /// Per topic name, the consumer groups whose uncommitted records are
    /// never removed (see the module documentation).
    pub protected_groups: BTreeMap<String, Vec<String>>,
    /// Most records removed in one transaction.
    pub batch_records: usize,
    /// Most record bytes removed in one transaction (at least one record
    /// is, whatever its size). Removing a large record reads its overflow
    /// pages, so this bounds how long one batch holds the write lock.
    pub batch_bytes: u64,
}

impl Default for RetentionPolicy {
    /// Keeps everything; batches of 512 records or 4 MiB, a few
    /// milliseconds of the writer each.
    fn default() -> Self {
        RetentionPolicy {
            default: RetentionLimits::default(),
            topics: BTreeMap::new(),
            protected_groups: BTreeMap::new(),
            batch_records: 512,
            batch_bytes: 4 * 1024 * 1024,
        }
    }
}

impl RetentionPolicy {
    /// The limits that apply to `topic`.
    pub fn limits(&self, topic: &str) -> RetentionLimits {
        self.topics.get(topic).copied().unwrap_or(self.default)
    }

    fn protected(&self, topic: &str) -> &[String] {
        self.protected_groups
            .get(topic)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// A topic's size, kept by the log as records are appended and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStats {
    pub topic: String,
    pub records: u64,
    /// Key, headers and payload bytes of its records as stored (templated
    /// headers, compressed payloads). The file takes more: SQLite's row
    /// headers, the offset index, free space.
    pub bytes: u64,
    /// The log start offset: every record below it has been removed.
    pub start_offset: i64,
    /// The offset the next record gets.
    pub end_offset: i64,
}

/// How many records retention wanted to remove but could not, because
/// `group` has not committed past them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBack {
    pub group: String,
    /// Where the group resumes, `None` if it never committed on the topic.
    pub committed: Option<i64>,
    /// Records over the limits at or after the group's position (counted
    /// up to [`HELD_BACK_SCAN_LIMIT`] past it); 0 when it holds nothing
    /// back.
    pub records: u64,
}

/// What one pass did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRetention {
    /// The topic after the pass.
    pub stats: TopicStats,
    pub removed_records: u64,
    pub removed_bytes: u64,
    /// One entry per protected group of the topic.
    pub held_back: Vec<HeldBack>,
}

/// What one pass did, per topic of the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub topics: Vec<TopicRetention>,
}

/// One record as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub bytes: u64,
}

/// Walks a topic's records in offset order from its log start and says,
/// for each, whether the limits want it gone. The first record they keep
/// ends the walk: only a prefix is ever removed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Walker {
    /// Records with a timestamp before this are too old.
    cutoff_ms: Option<i64>,
    /// Bytes still to remove to get under the size limit.
    excess: u64,
}

impl Walker {
    pub(crate) fn new(limits: RetentionLimits, topic_bytes: u64, now_ms: i64) -> Self {
        Walker {
            cutoff_ms: limits.max_age.map(|age| {
                now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
            }),
            excess: limits
                .max_bytes
                .map_or(0, |max| topic_bytes.saturating_sub(max)),
        }
    }

    /// Whether `record`, the next one in offset order, is to be removed.
    pub(crate) fn wants(&mut self, record: &Scanned) -> bool {
        let too_old = self
            .cutoff_ms
            .is_some_and(|cutoff| record.timestamp_ms < cutoff);
        let wanted = too_old || self.excess > 0;
        if wanted {
            self.excess = self.excess.saturating_sub(record.bytes);
        }
        wanted
    }
}

/// Why a batch plan ended where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The next record is within the limits: nothing more to remove.
    Kept,
    /// The next record is over the limits but at or after `floor`.
    Protected,
    /// The batch is full; more may follow.
    Full,
    /// The scanned records ran out.
    Scanned,
}

/// The next batch: how many of `records` (consecutive, from the log start)
/// to remove, their bytes, and why it stopped there. `floor` is the lowest
/// protected position (`i64::MAX` for none).
pub(crate) fn plan_batch(
    records: &[Scanned],
    walker: &mut Walker,
    floor: i64,
    batch_records: usize,
    batch_bytes: u64,
) -> (usize, u64, Stop) {
    let (mut taken, mut bytes) = (0, 0_u64);
    for record in records {
        if taken >= batch_records.max(1) {
            return (taken, bytes, Stop::Full);
        }
        if taken > 0 && bytes.saturating_add(record.bytes) > batch_bytes {
            return (taken, bytes, Stop::Full);
        }
        if !walker.wants(record) {
            return (taken, bytes, Stop::Kept);
        }
        if record.offset >= floor {
            return (taken, bytes, Stop::Protected);
        }
        taken += 1;
        bytes = bytes.saturating_add(record.bytes);
    }
    (taken, bytes, Stop::Scanned)
}

/// The lowest position of the protected groups; a group that never
/// committed protects from offset 0. `i64::MAX` when no group protects.
pub(crate) fn protection_floor(committed: &[Option<i64>]) -> i64 {
    committed
        .iter()
        .map(|offset| offset.unwrap_or(0))
        .min()
        .unwrap_or(i64::MAX)
}

/// Records in `[max(position, start), wanted_end)`: what retention wants
/// gone but a group at `position` holds back (offsets are dense).
pub(crate) fn held_back(position: Option<i64>, start: i64, wanted_end: i64) -> u64 {
    let from = position.unwrap_or(0).max(start);
    u64::try_from(wanted_end.saturating_sub(from)).unwrap_or(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn read_all_stats(conn: &Connection) -> rusqlite::Result<Vec<TopicStats>> {
    let mut stmt = conn.prepare_cached(
        "SELECT t.name, s.records, s.bytes, s.start_offset, s.next_offset
         FROM log_topic_stats s JOIN log_topics t ON t.id = s.topic_id
         ORDER BY t.name",
    )?;
    let rows = stmt.query_map([], stats_row)?;
    rows.collect()
}

fn read_stats(conn: &Connection, topic: &str) -> rusqlite::Result<Option<TopicStats>> {
    conn.prepare_cached(
        "SELECT t.name, s.records, s.bytes, s.start_offset, s.next_offset
         FROM log_topic_stats s JOIN log_topics t ON t.id = s.topic_id
         WHERE t.name = ?1",
    )?
    .query_row([topic], stats_row)
    .optional()
}

fn stats_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TopicStats> {
    Ok(TopicStats {
        topic: row.get(0)?,
        records: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
        bytes: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
        start_offset: row.get(3)?,
        end_offset: row.get(4)?,
    })
}

fn read_committed(
    conn: &Connection,
    topic: &str,
    groups: &[String],
) -> rusqlite::Result<Vec<Option<i64>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT next_offset FROM log_consumer_offsets
         WHERE group_id = ?1 AND topic = ?2 AND partition_id = 0",
    )?;
    groups
        .iter()
        .map(|group| {
            stmt.query_row(rusqlite::params![group, topic], |row| row.get(0))
                .optional()
        })
        .collect()
}

/// Up to `max` records of `topic` from `from` on, as retention sees them.
/// `length()` reads a blob's size from the row header, never its overflow
/// pages.
fn scan(conn: &Connection, topic: &str, from: i64, max: usize) -> rusqlite::Result<Vec<Scanned>> {
    let mut stmt = conn.prepare_cached(
        "SELECT record_offset, timestamp_ms, length(key) + length(headers) + length(payload)
         FROM log_records
         WHERE topic_id = (SELECT id FROM log_topics WHERE name = ?1) AND record_offset >= ?2
         ORDER BY record_offset LIMIT ?3",
    )?;
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let rows = stmt.query_map(rusqlite::params![topic, from, limit], |row| {
        Ok(Scanned {
            offset: row.get(0)?,
            timestamp_ms: row.get(1)?,
            bytes: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
        })
    })?;
    rows.collect()
}

/// What the planner reads before each batch.
struct Snapshot {
    stats: TopicStats,
    committed: Vec<Option<i64>>,
    records: Vec<Scanned>,
}

impl SqliteLog {
    /// The size of every topic in the file, from the stats the log keeps
    /// (no scan of the records).
    pub async fn topic_stats(&self) -> Result<Vec<TopicStats>, LogError> {
        let context = format!(
            "cannot read topic sizes from event log {}",
            self.inner.path.display()
        );
        self.inner
            .with_reader(move |conn| {
                read_all_stats(conn).map_err(|e| LogError::storage(context, e))
            })
            .await
    }

    /// Runs one retention pass over every topic of the file, with `now` as
    /// the current time; see [`SqliteLog::enforce_retention_at`].
    pub async fn enforce_retention(
        &self,
        policy: &RetentionPolicy,
    ) -> Result<RetentionReport, LogError> {
        self.enforce_retention_at(policy, now_ms()).await
    }

    /// Runs one retention pass over every topic of the file: removes, per
    /// topic, the oldest records beyond its limits (records with a
    /// timestamp before `now_ms - max_age`, and as many as it takes to get
    /// under `max_bytes`), never one a protected group has not committed
    /// past, in batches of at most `batch_records` records and
    /// `batch_bytes` bytes, each its own transaction on the writer thread.
    /// Dropping the returned future between batches, or a crash, leaves a
    /// consistent log; the next pass continues.
    pub async fn enforce_retention_at(
        &self,
        policy: &RetentionPolicy,
        now_ms: i64,
    ) -> Result<RetentionReport, LogError> {
        let topics = self.topic_stats().await?;
        let mut report = RetentionReport::default();
        for stats in topics {
            report
                .topics
                .push(self.retain_topic(policy, stats, now_ms).await?);
        }
        Ok(report)
    }

    async fn retain_topic(
        &self,
        policy: &RetentionPolicy,
        stats: TopicStats,
        now_ms: i64,
    ) -> Result<TopicRetention, LogError> {
        let topic = stats.topic.clone();
        let limits = policy.limits(&topic);
        let groups = policy.protected(&topic).to_vec();
        let mut result = TopicRetention {
            stats,
            removed_records: 0,
            removed_bytes: 0,
            held_back: Vec::new(),
        };
        let batch_records = policy.batch_records.max(1);
        // Records appended during the pass are left to the next one, so a
        // pass ends even while appends outpace it.
        let pass_end = result.stats.end_offset;
        let mut stalls = 0;
        loop {
            let snapshot = self
                .snapshot(
                    &topic,
                    &groups,
                    if limits.is_unlimited() {
                        0
                    } else {
                        batch_records
                    },
                )
                .await?;
            let Some(snapshot) = snapshot else {
                return Ok(result);
            };
            result.stats = snapshot.stats.clone();
            let floor = protection_floor(&snapshot.committed);
            let mut walker = Walker::new(limits, snapshot.stats.bytes, now_ms);
            let before_end = snapshot
                .records
                .iter()
                .take_while(|r| r.offset < pass_end)
                .count();
            let (taken, _, stop) = plan_batch(
                &snapshot.records[..before_end],
                &mut walker,
                floor,
                batch_records,
                policy.batch_bytes,
            );
            if taken == 0 || stalls >= MAX_STALLS {
                let stop = if taken == 0 { stop } else { Stop::Kept };
                result.held_back = self
                    .measure_held_back(&snapshot, &groups, stop, walker)
                    .await?;
                return Ok(result);
            }
            let end_offset = snapshot.records[taken - 1].offset + 1;
            let removed = self.remove(&topic, end_offset, groups.clone()).await?;
            result.removed_records += removed.records;
            result.removed_bytes += removed.bytes;
            // Nothing removed: another pass got there first. Plan again
            // from a fresh snapshot, a few times at most.
            stalls = if removed.records == 0 { stalls + 1 } else { 0 };
        }
    }

    /// The topic's stats, its protected groups' positions and up to
    /// `scan_max` records from its log start; `None` if the topic is gone.
    async fn snapshot(
        &self,
        topic: &str,
        groups: &[String],
        scan_max: usize,
    ) -> Result<Option<Snapshot>, LogError> {
        let (topic, groups) = (topic.to_owned(), groups.to_vec());
        let read_error = self.inner.read_error(&topic);
        self.inner
            .with_reader(move |conn| {
                let read = || -> rusqlite::Result<Option<Snapshot>> {
                    let Some(stats) = read_stats(conn, &topic)? else {
                        return Ok(None);
                    };
                    let committed = read_committed(conn, &topic, &groups)?;
                    let records = if scan_max == 0 {
                        Vec::new()
                    } else {
                        scan(conn, &topic, stats.start_offset, scan_max)?
                    };
                    Ok(Some(Snapshot {
                        stats,
                        committed,
                        records,
                    }))
                };
                read().map_err(read_error)
            })
            .await
    }

    /// Per protected group, how many records over the limits it holds
    /// back. Reads past the protected position only when the plan stopped
    /// there.
    async fn measure_held_back(
        &self,
        snapshot: &Snapshot,
        groups: &[String],
        stop: Stop,
        walker: Walker,
    ) -> Result<Vec<HeldBack>, LogError> {
        let start = snapshot.stats.start_offset;
        let mut wanted_end = start;
        if stop == Stop::Protected {
            // The record the plan stopped at is wanted (the walker already
            // counted it); continue from the one after it.
            let first = snapshot
                .records
                .iter()
                .find(|r| r.offset >= protection_floor(&snapshot.committed));
            if let Some(first) = first {
                wanted_end = first.offset + 1;
                let mut walker = walker;
                let topic = snapshot.stats.topic.clone();
                let read_error = self.inner.read_error(&topic);
                let from = wanted_end;
                let more = self
                    .inner
                    .with_reader(move |conn| {
                        scan(conn, &topic, from, HELD_BACK_SCAN_LIMIT).map_err(read_error)
                    })
                    .await?;
                for record in &more {
                    if !walker.wants(record) {
                        break;
                    }
                    wanted_end = record.offset + 1;
                }
            }
        }
        Ok(groups
            .iter()
            .zip(&snapshot.committed)
            .map(|(group, committed)| HeldBack {
                group: group.clone(),
                committed: *committed,
                records: held_back(*committed, start, wanted_end),
            })
            .collect())
    }

    /// One bounded removal through the writer thread.
    async fn remove(
        &self,
        topic: &str,
        end_offset: i64,
        protected: Vec<String>,
    ) -> Result<super::writer::Removed, LogError> {
        validate_topic(topic)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .send_blocking(Command::Remove {
                topic: topic.to_owned(),
                end_offset,
                protected,
                reply,
            })
            .await?;
        rx.await.unwrap_or(Err(LogError::Closed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(specs: &[(i64, i64, u64)]) -> Vec<Scanned> {
        specs
            .iter()
            .map(|&(offset, timestamp_ms, bytes)| Scanned {
                offset,
                timestamp_ms,
                bytes,
            })
            .collect()
    }

    const DAY_MS: i64 = 86_400_000;

    fn limits(max_age_days: Option<u64>, max_bytes: Option<u64>) -> RetentionLimits {
        RetentionLimits {
            max_age: max_age_days.map(|d| Duration::from_secs(d * 86_400)),
            max_bytes,
        }
    }

    #[test]
    fn age_removes_the_old_prefix_and_stops_at_the_first_young_record() {
        let now = 100 * DAY_MS;
        // Offsets 5..9: 10, 9, 8 days old, then 1 day, then 20 days (a
        // late timestamp behind a young one stays, as in Kafka).
        let scanned = records(&[
            (5, now - 10 * DAY_MS, 10),
            (6, now - 9 * DAY_MS, 10),
            (7, now - 8 * DAY_MS, 10),
            (8, now - DAY_MS, 10),
            (9, now - 20 * DAY_MS, 10),
        ]);
        let mut walker = Walker::new(limits(Some(7), None), 50, now);
        assert_eq!(
            plan_batch(&scanned, &mut walker, i64::MAX, 100, u64::MAX),
            (3, 30, Stop::Kept)
        );
    }

    #[test]
    fn size_removes_the_oldest_until_the_rest_fits() {
        let now = 100 * DAY_MS;
        let scanned = records(&[(0, now, 40), (1, now, 40), (2, now, 40), (3, now, 40)]);
        // 160 bytes, at most 90: removing 0 leaves 120, removing 1 leaves 80.
        let mut walker = Walker::new(limits(None, Some(90)), 160, now);
        assert_eq!(
            plan_batch(&scanned, &mut walker, i64::MAX, 100, u64::MAX),
            (2, 80, Stop::Kept)
        );
        // Exactly at the limit: nothing to do.
        let mut walker = Walker::new(limits(None, Some(160)), 160, now);
        assert_eq!(
            plan_batch(&scanned, &mut walker, i64::MAX, 100, u64::MAX),
            (0, 0, Stop::Kept)
        );
    }

    #[test]
    fn either_limit_is_enough_to_remove() {
        let now = 100 * DAY_MS;
        let scanned = records(&[(0, now - 30 * DAY_MS, 10), (1, now, 10), (2, now, 10)]);
        // Young record 1 goes for size, old record 0 for age.
        let mut walker = Walker::new(limits(Some(7), Some(10)), 30, now);
        assert_eq!(
            plan_batch(&scanned, &mut walker, i64::MAX, 100, u64::MAX),
            (2, 20, Stop::Kept)
        );
    }

    #[test]
    fn unlimited_removes_nothing() {
        let scanned = records(&[(0, 0, 1_000_000)]);
        let mut walker = Walker::new(RetentionLimits::default(), u64::MAX, i64::MAX);
        assert_eq!(
            plan_batch(&scanned, &mut walker, i64::MAX, 100, u64::MAX),
            (0, 0, Stop::Kept)
        );
    }

    #[test]
    fn a_protected_position_stops_the_batch() {
        let scanned = records(&[(3, 0, 10), (4, 0, 10), (5, 0, 10), (6, 0, 10)]);
        let mut walker = Walker::new(limits(Some(1), None), 40, 10 * DAY_MS);
        assert_eq!(
            plan_batch(&scanned, &mut walker, 5, 100, u64::MAX),
            (2, 20, Stop::Protected)
        );
        let mut walker = Walker::new(limits(Some(1), None), 40, 10 * DAY_MS);
        assert_eq!(
            plan_batch(&scanned, &mut walker, 3, 100, u64::MAX),
            (0, 0, Stop::Protected)
        );
    }

    #[test]
    fn batches_are_bounded_by_records_and_bytes_but_take_at_least_one() {
        let scanned = records(&[(0, 0, 100), (1, 0, 100), (2, 0, 100), (3, 0, 100)]);
        let old = || Walker::new(limits(Some(1), None), 400, 10 * DAY_MS);
        assert_eq!(
            plan_batch(&scanned, &mut old(), i64::MAX, 2, u64::MAX),
            (2, 200, Stop::Full)
        );
        assert_eq!(
            plan_batch(&scanned, &mut old(), i64::MAX, 100, 250),
            (2, 200, Stop::Full)
        );
        assert_eq!(
            plan_batch(&scanned, &mut old(), i64::MAX, 100, 10),
            (1, 100, Stop::Full),
            "a record larger than the batch goes alone"
        );
        assert_eq!(
            plan_batch(&scanned, &mut old(), i64::MAX, 100, u64::MAX),
            (4, 400, Stop::Scanned)
        );
    }

    #[test]
    fn a_group_that_never_committed_protects_everything() {
        assert_eq!(protection_floor(&[]), i64::MAX);
        assert_eq!(protection_floor(&[Some(7), Some(3)]), 3);
        assert_eq!(protection_floor(&[Some(7), None]), 0);
    }

    #[test]
    fn held_back_counts_from_the_group_or_the_log_start() {
        assert_eq!(held_back(Some(5), 2, 9), 4);
        assert_eq!(held_back(None, 2, 9), 7);
        assert_eq!(
            held_back(Some(1), 2, 9),
            7,
            "below the start counts from it"
        );
        assert_eq!(
            held_back(Some(12), 2, 9),
            0,
            "past what is wanted holds nothing"
        );
    }

    #[test]
    fn the_policy_falls_back_to_its_default() {
        let inbound = limits(None, Some(10));
        let policy = RetentionPolicy {
            default: limits(Some(7), None),
            topics: BTreeMap::from([("inbound".to_owned(), inbound)]),
            ..RetentionPolicy::default()
        };
        assert_eq!(policy.limits("inbound"), inbound);
        assert_eq!(policy.limits("other"), limits(Some(7), None));
        assert!(RetentionPolicy::default().default.is_unlimited());
    }
}
