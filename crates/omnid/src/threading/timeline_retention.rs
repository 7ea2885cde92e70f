//! Timeline retention: once a minute (the first pass at start), the
//! timeline rows recorded more than `threading.timeline_retention_days` ago
//! are removed from the threading store, oldest first and only once the
//! relay has published them (`ThreadingStore::prune_timeline`), so
//! `threading.sqlite3` or the PostgreSQL table holds a window of history
//! rather than all of it.
//!
//! A pass removes rows in windows of [`BATCH`], each its own short
//! transaction, so a threading batch waits for one window at most, even
//! on the first pass after the retention was shortened.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use metrics::{Counter, counter};
use omni_telemetry::{InternalEvent, emit, names};
use omni_threading::{StoreError, ThreadingStore};
use tokio_util::sync::CancellationToken;

use crate::task;

/// How often a pass runs: rows only need to go within a small fraction of
/// the retention, and a pass with nothing to remove reads one window.
pub(crate) const INTERVAL: Duration = Duration::from_secs(60);

/// Rows looked at per transaction.
pub(crate) const BATCH: u32 = 1000;

const DAY_SECS: u64 = 24 * 3600;

/// Starts pruning `store` every [`INTERVAL`] until `stop`, or nothing when
/// `days` is 0 (rows are then kept forever).
pub(crate) fn start(days: u64, store: Arc<dyn ThreadingStore>, stop: CancellationToken) {
    if days == 0 {
        tracing::info!("timeline rows are kept forever (threading.timeline_retention_days = 0)");
        return;
    }
    let retention = Duration::from_secs(days.saturating_mul(DAY_SECS));
    tokio::spawn(run(store, retention, INTERVAL, stop));
}

/// Prunes at once, then every `interval`, until `stop`. A pass cut short
/// by `stop` loses only its current window's transaction; the next start
/// goes on.
pub(crate) async fn run(
    store: Arc<dyn ThreadingStore>,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    let pruned = counter!(names::THREADING_TIMELINE_PRUNED_TOTAL);
    let mut ticks = task::ticks(interval);
    while task::next_tick(&mut ticks, &stop).await {
        let started = Instant::now();
        let before_ms = cutoff_ms(SystemTime::now(), retention);
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = store.prune_timeline(before_ms, BATCH) => outcome,
        };
        emit!(TimelinePruned {
            outcome: outcome.as_ref().copied(),
            elapsed: started.elapsed(),
        } => &pruned);
    }
}

/// The first epoch millisecond kept: rows recorded before it go. Pure, so
/// the arithmetic at the edges is tested without a clock.
pub(crate) fn cutoff_ms(now: SystemTime, retention: Duration) -> i64 {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX))
}

/// A timeline retention pass ended.
#[derive(Debug)]
pub(crate) struct TimelinePruned<'a> {
    /// Rows removed, or why the pass failed (the rows of the windows it
    /// committed before stay removed; the next pass goes on).
    pub outcome: Result<u64, &'a StoreError>,
    pub elapsed: Duration,
}

impl InternalEvent for TimelinePruned<'_> {
    type Handles = Counter;

    fn emit(self, pruned: &Counter) {
        let elapsed_ms = u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX);
        match self.outcome {
            Ok(0) => tracing::debug!(elapsed_ms, "timeline retention removed nothing"),
            Ok(removed) => {
                pruned.increment(removed);
                tracing::info!(
                    removed,
                    elapsed_ms,
                    "timeline retention removed published rows older than the retention"
                );
            }
            Err(error) => tracing::warn!(
                error = %error,
                elapsed_ms,
                "timeline retention pass failed, retrying at the next pass"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use omni_proto::{
        Timestamp,
        v1::{ChannelKind, ConversationEvent, Direction, EventKind, HandleKind, IdentityHandle},
    };
    use omni_threading::{CustomerId, InboundEvent, SqliteStore, ThreadingConfig};

    use super::*;

    #[test]
    fn the_cutoff_is_the_retention_before_now_and_saturates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            cutoff_ms(now, Duration::from_secs(DAY_SECS)),
            1_000_000_000 - 86_400_000
        );
        assert_eq!(cutoff_ms(now, Duration::MAX), 1_000_000_000 - i64::MAX);
        assert_eq!(cutoff_ms(UNIX_EPOCH, Duration::ZERO), 0);
    }

    #[test]
    fn removed_rows_are_counted_and_failures_and_empty_passes_are_not() {
        let value = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let pruned = Counter::from_arc(value.clone());
        let error = StoreError::Contention {
            event_id: "x".into(),
            attempts: 1,
        };
        for outcome in [Ok(0), Ok(42), Err(&error), Ok(8)] {
            emit!(TimelinePruned {
                outcome,
                elapsed: Duration::from_millis(3),
            } => &pruned);
        }
        assert_eq!(value.load(std::sync::atomic::Ordering::Relaxed), 50);
    }

    /// The task removes the published rows older than the retention at
    /// start (the sample events are from 2023) and stops on shutdown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_task_prunes_at_start_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("threading.sqlite3"))
            .await
            .unwrap();
        // An SMS from 2023: long past a day's retention.
        let events: Vec<_> = (0..3)
            .map(|n| {
                let at = Timestamp {
                    seconds: 1_700_000_000 + n,
                    nanos: 0,
                };
                InboundEvent::new(ConversationEvent {
                    event_id: format!("ev-{n}"),
                    channel_id: "sms".into(),
                    channel_kind: ChannelKind::Sms as i32,
                    direction: Direction::Inbound as i32,
                    kind: EventKind::Message as i32,
                    sender: Some(IdentityHandle {
                        kind: HandleKind::Phone as i32,
                        value: "+14155550134".into(),
                        verified: true,
                        ..Default::default()
                    }),
                    provider_message_id: format!("ev-{n}"),
                    received_at: Some(at),
                    ingested_at: Some(at),
                    ..Default::default()
                })
            })
            .collect();
        store
            .thread_batch(&ThreadingConfig::default(), &events)
            .await
            .unwrap();
        let rows = store.pending_outbox(0, 100).await.unwrap();
        assert!(rows.len() >= 3);
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        store.mark_published(&ids).await.unwrap();
        store.snapshot().await.unwrap();
        let customer = CustomerId::from_string(rows[0].event.customer_id.clone());
        assert_eq!(
            store.timeline(&customer, None, 10).await.unwrap().entries,
            rows
        );

        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            Arc::new(store.clone()),
            Duration::from_secs(DAY_SECS),
            INTERVAL,
            stop.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store
            .timeline(&customer, None, 10)
            .await
            .unwrap()
            .entries
            .is_empty()
        {
            assert!(Instant::now() < deadline, "no pass at start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task stops")
            .unwrap();
    }
}
