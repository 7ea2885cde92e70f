//! Timeline retention: the `timeline` table is both the outbox and the
//! query API's history, so without a limit it grows with every message.
//! [`crate::ThreadingStore::prune_timeline`] removes the rows recorded
//! before a cutoff, oldest first, once the relay has published them.
//!
//! Each row carries `recorded_ms` (the entry's `recorded_at`) and nothing
//! indexes it: rows are appended in id order at roughly the time they
//! record, so a pass walks the oldest rows by id (the primary key) in
//! windows of `batch` rows, one short transaction each, and stops at the
//! first window holding no row old enough. The write path pays for one
//! integer per row, not for one more index. The price is that a row
//! recorded long before the rows just before it (a replay of old events
//! after new ones) waits while a whole window of newer rows precedes it.
//!
//! Rows written before the column existed have none (`NULL`: the time is
//! in the protobuf payload, which a migration cannot read, and rewriting
//! every row would copy the whole table): they count as recorded when the
//! store was upgraded (`timeline_upgrade`), so they are kept a full
//! retention period from then.

use omni_proto::v1::TimelineEvent;
#[cfg(feature = "postgres")]
use sqlx::PgPool;
use sqlx::SqlitePool;

use crate::error::{DbContext as _, StoreError};

/// The `recorded_ms` of a new row: the entry's `recorded_at`, or `now_ms`
/// when it has none or claims a later time, so a client's clock set in the
/// future cannot keep a row forever.
pub(crate) fn recorded_ms(entry: &TimelineEvent, now_ms: i64) -> i64 {
    entry
        .recorded_at
        .as_ref()
        .map_or(now_ms, |t| crate::logic::timestamp_ms(Some(t)).min(now_ms))
}

/// The wall clock in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What a window of the oldest rows holds: how many rows, the last one's
/// id, and the earliest time any of them records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub rows: i64,
    pub last_id: i64,
    pub oldest_ms: i64,
}

impl Window {
    /// Whether the window may hold rows to remove.
    pub(crate) fn has_old_rows(&self, before_ms: i64) -> bool {
        self.rows > 0 && self.oldest_ms < before_ms
    }

    /// Where the next window starts (exclusive), or `None` when the pass
    /// is over: the window was the last one, or none of its rows is old
    /// enough (rows come in time order, so neither will those after it).
    pub(crate) fn next(&self, batch: u32, before_ms: i64) -> Option<i64> {
        (self.rows >= i64::from(batch.max(1)) && self.has_old_rows(before_ms))
            .then_some(self.last_id)
    }
}

/// The window of up to `$4` rows after id `$1` and up to id `$2`, rows
/// without a time counting as recorded at `$3`.
const WINDOW: &str = "SELECT COUNT(*), COALESCE(MAX(id), 0), \
     COALESCE(MIN(COALESCE(recorded_ms, $3)), 0) \
     FROM (SELECT id, recorded_ms FROM timeline WHERE id > $1 AND id <= $2 \
     ORDER BY id LIMIT $4) w";

/// The published rows of the window (ids `$1` exclusive to `$2`) recorded
/// before `$4`.
const REMOVE: &str = "DELETE FROM timeline WHERE id > $1 AND id <= $2 AND published \
     AND COALESCE(recorded_ms, $3) < $4";

/// The embedded store's index rows of the rows [`REMOVE`] removes.
const REMOVE_INDEXED: &str = "DELETE FROM timeline_by_customer WHERE (customer_id, id) IN \
     (SELECT customer_id, id FROM timeline WHERE id > $1 AND id <= $2 AND published \
     AND COALESCE(recorded_ms, $3) < $4)";

/// When the store was upgraded to a version that records times: what rows
/// without one count as.
const UPGRADED: &str = "SELECT upgraded_ms FROM timeline_upgrade WHERE id = 1";

/// Removes the embedded store's published rows recorded before
/// `before_ms`, and their `timeline_by_customer` rows, in windows of
/// `batch` rows each committed on its own; returns how many went.
///
/// Only rows a snapshot indexed on disk (up to
/// `state_snapshot.timeline_through`) may go: the newer ones are indexed
/// in the memory of every store open on the file. `pool` should be the
/// store's writer, so the windows queue with its batches instead of
/// waiting on the file's lock.
pub(crate) async fn prune_sqlite(
    pool: &SqlitePool,
    before_ms: i64,
    batch: u32,
) -> Result<u64, StoreError> {
    let upgraded: i64 = sqlx::query_scalar(UPGRADED)
        .fetch_one(pool)
        .await
        .ctx("reading the timeline upgrade time")?;
    let mut after = 0;
    let mut removed = 0;
    loop {
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("beginning timeline prune")?;
        let indexed: i64 =
            sqlx::query_scalar("SELECT timeline_through FROM state_snapshot WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await
                .ctx("reading the timeline index marker")?
                .unwrap_or(0);
        let (rows, last_id, oldest_ms): (i64, i64, i64) = sqlx::query_as(WINDOW)
            .bind(after)
            .bind(indexed)
            .bind(upgraded)
            .bind(i64::from(batch.max(1)))
            .fetch_one(&mut *tx)
            .await
            .ctx("reading the oldest timeline rows")?;
        let window = Window {
            rows,
            last_id,
            oldest_ms,
        };
        if window.has_old_rows(before_ms) {
            sqlx::query(REMOVE_INDEXED)
                .bind(after)
                .bind(window.last_id)
                .bind(upgraded)
                .bind(before_ms)
                .execute(&mut *tx)
                .await
                .ctx("pruning the timeline index")?;
            removed += sqlx::query(REMOVE)
                .bind(after)
                .bind(window.last_id)
                .bind(upgraded)
                .bind(before_ms)
                .execute(&mut *tx)
                .await
                .ctx("pruning the timeline")?
                .rows_affected();
            tx.commit().await.ctx("committing timeline prune")?;
        } else {
            tx.rollback().await.ctx("rolling back")?;
        }
        match window.next(batch, before_ms) {
            Some(next) => after = next,
            None => return Ok(removed),
        }
        // The writer is free between two windows: a waiting batch goes
        // first.
        tokio::task::yield_now().await;
    }
}

/// Removes the PostgreSQL store's published rows recorded before
/// `before_ms`, in windows of `batch` rows each committed on its own;
/// returns how many went. Several daemons may run it at once: a row
/// another one removed first is simply not there any more.
#[cfg(feature = "postgres")]
pub(crate) async fn prune_postgres(
    pool: &PgPool,
    before_ms: i64,
    batch: u32,
) -> Result<u64, StoreError> {
    let upgraded: i64 = sqlx::query_scalar(UPGRADED)
        .fetch_one(pool)
        .await
        .ctx("reading the timeline upgrade time")?;
    let mut after = 0;
    let mut removed = 0;
    loop {
        let (rows, last_id, oldest_ms): (i64, i64, i64) = sqlx::query_as(WINDOW)
            .bind(after)
            .bind(i64::MAX)
            .bind(upgraded)
            .bind(i64::from(batch.max(1)))
            .fetch_one(pool)
            .await
            .ctx("reading the oldest timeline rows")?;
        let window = Window {
            rows,
            last_id,
            oldest_ms,
        };
        if window.has_old_rows(before_ms) {
            // One statement, so its own short transaction: a row whose
            // `published` has not committed yet is not matched and stays.
            removed += sqlx::query(REMOVE)
                .bind(after)
                .bind(window.last_id)
                .bind(upgraded)
                .bind(before_ms)
                .execute(pool)
                .await
                .ctx("pruning the timeline")?
                .rows_affected();
        }
        match window.next(batch, before_ms) {
            Some(next) => after = next,
            None => return Ok(removed),
        }
    }
}

#[cfg(test)]
mod tests {
    use omni_proto::Timestamp;

    use super::*;

    #[test]
    fn a_row_records_its_entry_time_never_later_than_now() {
        let at = |seconds, nanos| TimelineEvent {
            recorded_at: Some(Timestamp { seconds, nanos }),
            ..Default::default()
        };
        let now = 1_800_000_000_000;
        assert_eq!(
            recorded_ms(&at(1_700_000_000, 250_000_000), now),
            1_700_000_000_250
        );
        assert_eq!(recorded_ms(&at(1_900_000_000, 0), now), now);
        assert_eq!(recorded_ms(&TimelineEvent::default(), now), now);
    }

    #[test]
    fn a_pass_walks_full_windows_until_one_holds_nothing_old_enough() {
        let window = |rows, oldest_ms| Window {
            rows,
            last_id: 500,
            oldest_ms,
        };
        // Full and with old rows: the next window starts after this one.
        assert_eq!(window(100, 10).next(100, 20), Some(500));
        assert!(window(100, 10).has_old_rows(20));
        // Short: the end of the table (or of the rows indexed on disk).
        assert_eq!(window(99, 10).next(100, 20), None);
        assert!(window(99, 10).has_old_rows(20));
        // Nothing old enough: rows after it are newer still.
        assert_eq!(window(100, 20).next(100, 20), None);
        assert!(!window(100, 20).has_old_rows(20));
        // Empty.
        assert_eq!(window(0, 0).next(100, 20), None);
        assert!(!window(0, 0).has_old_rows(20));
        // A batch of 0 counts as 1 and still ends.
        assert_eq!(window(1, 10).next(0, 20), Some(500));
    }
}
