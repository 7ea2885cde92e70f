//! The daemon's background tasks and how they end at shutdown.
//!
//! Every task is asked to stop first, so it can finish the unit of work in
//! hand (a batch, a record, a file), and is aborted only when it overruns
//! the shutdown timeout: a stuck store or provider must not hold the
//! process open. Each task's work is arranged so that what an abort cuts
//! short is done again at the next start; the warning says what that is,
//! so an operator reading it knows nothing was lost.

use std::{future::Future, time::Duration};

use tokio::{
    task::JoinHandle,
    time::{Interval, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;

/// A spawned task with a stop token of its own, so it can be stopped at
/// its turn in the shutdown order rather than when the daemon's shutdown
/// is signalled.
#[derive(Debug)]
pub(crate) struct BackgroundTask {
    what: &'static str,
    cut_short: &'static str,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl BackgroundTask {
    /// Spawns `task` with a child of `parent`: the daemon's shutdown still
    /// reaches it, and stopping it leaves `parent` alone. `what` names the
    /// task and `cut_short` says what becomes of the work an abort cuts
    /// short, for the warning of [`stop`](Self::stop).
    pub(crate) fn spawn<F>(
        what: &'static str,
        cut_short: &'static str,
        parent: &CancellationToken,
        task: impl FnOnce(CancellationToken) -> F,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = parent.child_token();
        let handle = tokio::spawn(task(stop.clone()));
        Self {
            what,
            cut_short,
            stop,
            handle,
        }
    }

    /// Asks the task to stop and waits for it up to `grace`, then aborts
    /// it. True when it stopped by itself.
    pub(crate) async fn stop(self, grace: Duration) -> bool {
        self.stop.cancel();
        join_within(self.handle, grace, self.what, self.cut_short).await
    }
}

/// Waits up to `grace` for a task already told to stop (through a token it
/// shares with others), then aborts it and warns: `what` did not stop,
/// `cut_short` says what becomes of its work. True when it ended in time
/// (a panic counts: it has ended, and was reported when it happened).
pub(crate) async fn join_within(
    handle: JoinHandle<()>,
    grace: Duration,
    what: &str,
    cut_short: &str,
) -> bool {
    let abort = handle.abort_handle();
    if tokio::time::timeout(grace, handle).await.is_ok() {
        return true;
    }
    abort.abort();
    tracing::warn!("{what} did not stop within the shutdown timeout; {cut_short}");
    false
}

/// Ticks for a task's passes, the first at once. A pass that overruns its
/// interval delays the next one rather than being followed by a burst of
/// catch-up passes: passes are idempotent sweeps, and running several
/// back to back only adds load.
pub(crate) fn ticks(interval: Duration) -> Interval {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// Waits for the next of `ticks`; false once `stop` is cancelled, even if
/// a tick is due, so a stopping task starts no new pass.
pub(crate) async fn next_tick(ticks: &mut Interval, stop: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = stop.cancelled() => false,
        _ = ticks.tick() => true,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, AtomicUsize, Ordering},
        },
        time::Instant,
    };

    use super::*;

    /// Long enough for a cooperative task to notice its token on a loaded
    /// machine; short enough to keep the abort test quick.
    const GRACE: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_task_that_stops_on_cancel_is_joined() {
        let parent = CancellationToken::new();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let task = BackgroundTask::spawn("test task", "nothing", &parent, |stop| async move {
            stop.cancelled().await;
            flag.store(true, Ordering::SeqCst);
        });
        assert!(task.stop(Duration::from_secs(10)).await);
        assert!(finished.load(Ordering::SeqCst), "it ran to its end");
        assert!(!parent.is_cancelled(), "the parent is left alone");
    }

    #[tokio::test]
    async fn the_parent_token_reaches_the_task() {
        let parent = CancellationToken::new();
        let task = BackgroundTask::spawn("test task", "nothing", &parent, |stop| async move {
            stop.cancelled().await;
        });
        parent.cancel();
        let handle = task.handle;
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("the task ends at its parent's cancel")
            .unwrap();
    }

    #[tokio::test]
    async fn a_task_that_ignores_cancel_is_aborted_after_grace() {
        let handle = tokio::spawn(std::future::pending::<()>());
        let abort = handle.abort_handle();
        let started = Instant::now();
        assert!(!join_within(handle, GRACE, "test task", "nothing").await);
        assert!(started.elapsed() >= GRACE, "it waited the grace");
        // Abort takes effect at the task's next poll, on the runtime.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !abort.is_finished() {
            assert!(Instant::now() < deadline, "the task was not aborted");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn stop_aborts_a_task_that_ignores_its_token() {
        let parent = CancellationToken::new();
        let task = BackgroundTask::spawn("test task", "nothing", &parent, |_stop| {
            std::future::pending::<()>()
        });
        let abort = task.handle.abort_handle();
        assert!(!task.stop(GRACE).await);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !abort.is_finished() {
            assert!(Instant::now() < deadline, "the task was not aborted");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_periodic_loop_ticks_at_once_then_ends_when_stopped() {
        let stop = CancellationToken::new();
        let passes = Arc::new(AtomicUsize::new(0));
        let counted = passes.clone();
        let looping = stop.clone();
        // An hour apart: a second pass within the test would be a bug.
        let task = tokio::spawn(async move {
            let mut ticks = ticks(Duration::from_secs(3600));
            while next_tick(&mut ticks, &looping).await {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while passes.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no pass at start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the loop ends when stopped")
            .unwrap();
        assert_eq!(passes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn no_pass_starts_once_stopped_even_with_a_tick_due() {
        let stop = CancellationToken::new();
        let mut ticks = ticks(Duration::from_secs(3600));
        stop.cancel();
        assert!(!next_tick(&mut ticks, &stop).await);
    }

    #[tokio::test]
    async fn an_overrunning_pass_delays_the_next_rather_than_bursting() {
        let interval = Duration::from_millis(100);
        let stop = CancellationToken::new();
        let mut ticks = ticks(interval);
        assert!(next_tick(&mut ticks, &stop).await);
        // The pass overruns two intervals: one tick is due at once...
        tokio::time::sleep(interval * 5 / 2).await;
        assert!(next_tick(&mut ticks, &stop).await);
        let caught_up = Instant::now();
        // ...and the next a whole interval later, not the missed ones now.
        assert!(next_tick(&mut ticks, &stop).await);
        let gap = caught_up.elapsed();
        assert!(
            gap >= interval * 85 / 100,
            "the next pass came after {gap:?}"
        );
    }
}
