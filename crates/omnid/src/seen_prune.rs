//! Pruning of the channels' seen ids: once at start and every hour, the
//! marks older than `state.seen_window_days` are removed from
//! `channel-state.sqlite3`, so the file holds a window of ids rather than
//! every id ever received.
//!
//! The removal runs in batches of [`BATCH`] marks, each its own short
//! transaction on the store's one writer: a channel's commit waits for at
//! most one batch (a few milliseconds), never for a whole pass, even when
//! the first pass after an upgrade has years of marks to remove.
//!
//! After each pass the marks left are counted for the
//! `omnid_state_seen_marks` gauge. The count reads every mark (through the
//! time index, on a connection of its own, so no channel's lookup waits for
//! it); pruning bounds it to one window of traffic, about 60 ms per two
//! million marks, once an hour.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use metrics::{Counter, Gauge, counter, gauge};
use omni_connector::{
    StateStore,
    state::{self, StateError},
};
use omni_telemetry::{InternalEvent, emit, names};
use tokio_util::sync::CancellationToken;

use crate::{
    settings::Settings,
    task::{self, BackgroundTask},
};

/// Marks removed per transaction.
pub(crate) const BATCH: usize = 500;

/// How often a pass runs (the first at start).
pub(crate) const INTERVAL: Duration = Duration::from_secs(3600);

const DAY_SECS: u64 = 24 * 3600;

/// Starts pruning `store` every [`INTERVAL`], or nothing when
/// `state.seen_window_days` is 0 (marks are then kept forever). At
/// `shutdown` a pass in progress stops after its current batch (each
/// batch is its own transaction), and the next start continues.
pub(crate) fn start(
    settings: &Settings,
    store: Arc<dyn StateStore>,
    shutdown: &CancellationToken,
) -> Option<BackgroundTask> {
    let days = settings.state.seen_window_days;
    if days == 0 {
        tracing::info!("seen ids are kept forever (state.seen_window_days = 0)");
        return None;
    }
    let window = Duration::from_secs(days.saturating_mul(DAY_SECS));
    Some(BackgroundTask::spawn(
        "seen-id pruning",
        "the next start continues its pass",
        shutdown,
        |stop| run(store, window, INTERVAL, stop),
    ))
}

/// Prunes at once, then every `interval`, until `stop`.
pub(crate) async fn run(
    store: Arc<dyn StateStore>,
    window: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    let metrics = SeenPruneMetrics::register();
    let mut ticks = task::ticks(interval);
    while task::next_tick(&mut ticks, &stop).await {
        let started = Instant::now();
        let older_than = cutoff(SystemTime::now(), window);
        let mut removed = 0;
        let outcome = prune_all(&store, older_than, BATCH, &stop, &mut removed).await;
        let outcome = match outcome {
            Ok(()) => state::count_seen(store.clone()).await.map(Some),
            Err(error) => Err(error),
        };
        emit!(SeenPruned {
            removed,
            kept: outcome.as_ref().ok().copied().flatten(),
            error: outcome.as_ref().err(),
            elapsed: started.elapsed(),
        } => &metrics);
        if stop.is_cancelled() {
            return;
        }
    }
}

/// The first second that is kept: marks first made before it go. Pure, so
/// the arithmetic at the edges is tested without a clock.
pub(crate) fn cutoff(now: SystemTime, window: Duration) -> i64 {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    now.saturating_sub(i64::try_from(window.as_secs()).unwrap_or(i64::MAX))
}

/// Removes every mark first made before `older_than`, `batch` at a time,
/// counting into `removed` as it goes (so a failure still reports what was
/// done). Stops early, between batches, at `stop`.
pub(crate) async fn prune_all(
    store: &Arc<dyn StateStore>,
    older_than: i64,
    batch: usize,
    stop: &CancellationToken,
    removed: &mut u64,
) -> Result<(), StateError> {
    loop {
        let done = state::prune_seen(store.clone(), older_than, batch).await?;
        *removed += done as u64;
        if done < batch || stop.is_cancelled() {
            return Ok(());
        }
        // Between two batches the writer is free: let whatever waits for
        // it (a channel's commit) go first.
        tokio::task::yield_now().await;
    }
}

/// Pre-registered handles of the pruning task.
#[derive(Debug, Clone)]
pub(crate) struct SeenPruneMetrics {
    pruned: Counter,
    kept: Gauge,
}

impl SeenPruneMetrics {
    pub(crate) fn register() -> Self {
        Self {
            pruned: counter!(names::STATE_SEEN_PRUNED_TOTAL),
            kept: gauge!(names::STATE_SEEN_MARKS),
        }
    }
}

/// A pruning pass ended.
#[derive(Debug)]
pub(crate) struct SeenPruned<'a> {
    /// Marks removed (before a failure, if it failed).
    pub removed: u64,
    /// Marks left, when counted.
    pub kept: Option<u64>,
    pub error: Option<&'a StateError>,
    pub elapsed: Duration,
}

impl InternalEvent for SeenPruned<'_> {
    type Handles = SeenPruneMetrics;

    fn emit(self, metrics: &SeenPruneMetrics) {
        metrics.pruned.increment(self.removed);
        if let Some(kept) = self.kept {
            metrics.kept.set(kept as f64);
        }
        let elapsed_ms = u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX);
        match self.error {
            None => tracing::debug!(
                removed = self.removed,
                kept = self.kept,
                elapsed_ms,
                "seen ids pruned"
            ),
            Some(error) => tracing::warn!(
                removed = self.removed,
                error = %error,
                elapsed_ms,
                "cannot prune or count seen ids, retrying at the next pass"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use omni_connector::{
        ChannelState, StateUpdate,
        state::{Clock, MemoryStateStore},
    };

    use super::*;

    #[test]
    fn the_cutoff_is_the_window_before_now_and_saturates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(cutoff(now, Duration::from_secs(14 * DAY_SECS)), -209_600);
        assert_eq!(cutoff(now, Duration::from_secs(1000)), 999_000);
        assert_eq!(cutoff(now, Duration::MAX), 1_000_000 - i64::MAX);
        assert_eq!(cutoff(UNIX_EPOCH, Duration::ZERO), 0);
    }

    /// A store whose marks are made at `now`, and that clock.
    fn store() -> (Arc<AtomicI64>, Arc<dyn StateStore>) {
        let now = Arc::new(AtomicI64::new(1000));
        let read = now.clone();
        let store = MemoryStateStore::with_clock(Clock::new(move || read.load(Ordering::SeqCst)));
        (now, Arc::new(store))
    }

    async fn mark(store: &Arc<dyn StateStore>, channel: &str, ids: &[&str]) {
        ChannelState::new(store.clone(), channel)
            .commit(StateUpdate {
                seen: ids.iter().map(|id| (*id).to_owned()).collect(),
                ..StateUpdate::default()
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_pass_removes_every_old_mark_in_batches_and_keeps_the_rest() {
        let (now, store) = store();
        mark(&store, "a", &["1", "2", "3"]).await;
        mark(&store, "b", &["4", "5"]).await;
        now.store(5000, Ordering::SeqCst);
        mark(&store, "a", &["new"]).await;
        let mut removed = 0;
        prune_all(&store, 3000, 2, &CancellationToken::new(), &mut removed)
            .await
            .unwrap();
        assert_eq!(removed, 5);
        assert_eq!(store.count_seen().unwrap(), 1);
        assert_eq!(store.seen("a", &["new".into()]).unwrap(), [true]);
    }

    #[tokio::test]
    async fn a_stopped_pass_ends_after_its_batch() {
        let (_now, store) = store();
        mark(&store, "a", &["1", "2", "3", "4", "5"]).await;
        let stop = CancellationToken::new();
        stop.cancel();
        let mut removed = 0;
        prune_all(&store, 3000, 2, &stop, &mut removed)
            .await
            .unwrap();
        assert_eq!(removed, 2);
        assert_eq!(store.count_seen().unwrap(), 3);
    }

    #[tokio::test]
    async fn the_task_prunes_at_start_and_stops_on_shutdown() {
        // System time: marks made "now" are inside a one-hour window, marks
        // made in 1970 are not.
        let old = Arc::new(MemoryStateStore::with_clock(Clock::new(|| 1000)));
        let store: Arc<dyn StateStore> = old;
        mark(&store, "a", &["old"]).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            store.clone(),
            Duration::from_secs(3600),
            INTERVAL,
            stop.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.count_seen().unwrap() > 0 {
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
