//! The connectors' loops (IMAP, long polling; a webhook channel's waits for
//! shutdown), one task per channel, each supervised: a loop that returns an
//! error or panics is reported down and restarted with capped exponential
//! backoff, so one broken mailbox neither stops its channel for good nor
//! takes the daemon with it. What each channel's loop is doing is kept in
//! [`Health`], which `/readyz` reports.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt as _;
use omni_connector::Connector;
use omni_telemetry::emit;
use serde::Serialize;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::channels::ChannelSet;
use crate::events::{ConnectorFailed, ConnectorMetrics, ConnectorStarted};

/// Where a channel's loop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunState {
    /// Not started yet (its previous generation is still stopping).
    Starting,
    Up,
    /// Failed; restarted after a backoff.
    Down,
}

/// A channel's loop, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelHealth {
    pub state: RunState,
    /// Why it is down.
    pub error: Option<String>,
    /// How often it was restarted since it was (re)built.
    pub restarts: u64,
}

impl ChannelHealth {
    /// Before its loop first starts.
    pub(crate) const STARTING: Self = Self {
        state: RunState::Starting,
        error: None,
        restarts: 0,
    };
}

/// Every supervised channel's [`ChannelHealth`], by id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health(Arc<Mutex<HashMap<String, ChannelHealth>>>);

impl Health {
    /// The health of every supervised channel, now.
    pub(crate) fn snapshot(&self) -> HashMap<String, ChannelHealth> {
        self.lock().clone()
    }

    fn set(&self, channel: &str, health: ChannelHealth) {
        self.lock().insert(channel.to_owned(), health);
    }

    fn remove(&self, channel: &str) {
        self.lock().remove(channel);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ChannelHealth>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How failed loops are restarted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RestartPolicy {
    /// The wait before the first restart; it doubles at each failure.
    pub initial: Duration,
    /// The longest wait between two restarts.
    pub max: Duration,
    /// A loop that ran this long before failing counts as having been
    /// healthy: the wait starts again from `initial`.
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
        }
    }
}

impl RestartPolicy {
    /// The wait before the restart that follows `previous` (the wait
    /// before the last restart, `None` before the first) after a run of
    /// `ran`.
    pub(crate) fn next_wait(&self, previous: Option<Duration>, ran: Duration) -> Duration {
        match previous {
            Some(previous) if ran < self.healthy_after => (previous * 2).min(self.max),
            _ => self.initial.min(self.max),
        }
    }
}

/// The supervised loops, one per channel. A loop is replaced exactly when
/// its channel's connector was rebuilt (its file changed, or a SIGHUP
/// rebuilt everything).
pub(crate) struct Supervisor {
    running: HashMap<String, Runner>,
    health: Health,
    policy: RestartPolicy,
}

/// A supervised loop, its connector and its stop switch.
struct Runner {
    connector: Arc<dyn Connector>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Supervisor {
    pub(crate) fn new(health: Health, policy: RestartPolicy) -> Self {
        Self {
            running: HashMap::new(),
            health,
            policy,
        }
    }

    /// Starts connectors that are new or were rebuilt and stops the rest.
    /// A rebuilt channel's new connector starts only once its predecessor
    /// has stopped, so two generations never pull the same mailbox (or
    /// offset) at once.
    pub(crate) fn sync(&mut self, channels: &ChannelSet, shutdown: &CancellationToken) {
        let mut stopping = HashMap::new();
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for id in ids {
            let current = channels
                .get(&id)
                .is_some_and(|c| Arc::ptr_eq(&c.connector, &self.running[&id].connector));
            if !current && let Some(runner) = self.running.remove(&id) {
                runner.stop.cancel();
                stopping.insert(id, runner.task);
            }
        }
        for id in stopping.keys() {
            if !channels.contains_key(id) {
                self.health.remove(id);
            }
        }
        for channel in channels.values() {
            if self.running.contains_key(&channel.id) {
                continue;
            }
            let stop = shutdown.child_token();
            self.health.set(&channel.id, ChannelHealth::STARTING);
            let task = tokio::spawn(supervise(
                Loop {
                    channel: channel.id.clone(),
                    connector: channel.connector.clone(),
                    metrics: ConnectorMetrics::register(&channel.id, &channel.kind),
                    health: self.health.clone(),
                    policy: self.policy,
                    stop: stop.clone(),
                },
                stopping.remove(&channel.id),
            ));
            self.running.insert(
                channel.id.clone(),
                Runner {
                    connector: channel.connector.clone(),
                    stop,
                    task,
                },
            );
        }
    }

    /// Stops every loop, waiting up to `grace` for them to finish.
    pub(crate) async fn stop_all(&mut self, grace: Duration) {
        for runner in self.running.values() {
            runner.stop.cancel();
        }
        let tasks: Vec<_> = self
            .running
            .drain()
            .map(|(_, runner)| runner.task)
            .collect();
        if tokio::time::timeout(grace, futures::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!("some connectors did not stop within the shutdown timeout");
        }
    }
}

/// One channel's supervised loop.
struct Loop {
    channel: String,
    connector: Arc<dyn Connector>,
    metrics: ConnectorMetrics,
    health: Health,
    policy: RestartPolicy,
    stop: CancellationToken,
}

/// Runs the loop until it is stopped, restarting it after each failure. A
/// loop that returns `Ok` before being stopped has nothing (left) to pull
/// (an email channel that only sends) and is not restarted.
async fn supervise(run: Loop, predecessor: Option<JoinHandle<()>>) {
    if let Some(predecessor) = predecessor {
        let _ = predecessor.await;
    }
    let mut restarts = 0;
    let mut wait = None;
    loop {
        if run.stop.is_cancelled() {
            return;
        }
        run.health.set(
            &run.channel,
            ChannelHealth {
                state: RunState::Up,
                error: None,
                restarts,
            },
        );
        emit!(ConnectorStarted { restarts } => &run.metrics);
        let started = Instant::now();
        let outcome = AssertUnwindSafe(run.connector.clone().run(run.stop.clone()))
            .catch_unwind()
            .await;
        if run.stop.is_cancelled() {
            return;
        }
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
        };
        let next = run.policy.next_wait(wait, started.elapsed());
        wait = Some(next);
        run.health.set(
            &run.channel,
            ChannelHealth {
                state: RunState::Down,
                error: Some(error.clone()),
                restarts,
            },
        );
        emit!(ConnectorFailed {
            error: &error,
            restart_in: next,
        } => &run.metrics);
        tokio::select! {
            _ = run.stop.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
        restarts += 1;
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-text panic")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use omni_connector::ConnectorError;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::outbound::fixtures::channel;

    #[test]
    fn the_restart_wait_doubles_up_to_its_cap_and_resets_after_a_healthy_run() {
        let policy = RestartPolicy::default();
        let brief = Duration::from_secs(1);
        let mut wait = None;
        let waits: Vec<u64> = (0..8)
            .map(|_| {
                let next = policy.next_wait(wait, brief);
                wait = Some(next);
                next.as_secs()
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(
            policy.next_wait(wait, Duration::from_secs(61)),
            Duration::from_secs(1)
        );
    }

    /// A pulling loop that fails on its first runs, each when the test
    /// lets it, then runs until stopped (or panics, if told to).
    #[derive(Debug)]
    struct Mailbox {
        failures: usize,
        panics: bool,
        runs: AtomicUsize,
        fail_now: Semaphore,
    }

    #[async_trait::async_trait]
    impl Connector for Mailbox {
        async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ConnectorError> {
            let run = self.runs.fetch_add(1, Ordering::SeqCst);
            if run < self.failures {
                let _ = self.fail_now.acquire().await.map(|p| p.forget());
                if self.panics {
                    panic!("imap session state corrupt");
                }
                return Err(ConnectorError {
                    channel: "support-mail".into(),
                    message: "imap login refused".into(),
                });
            }
            shutdown.cancelled().await;
            Ok(())
        }
    }

    async fn until(health: &Health, what: &str, check: impl Fn(&ChannelHealth) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if health.snapshot().get("support-mail").is_some_and(&check) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {:?}", health.snapshot());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn supervised(panics: bool) -> (Arc<Mailbox>, Health, Supervisor) {
        let mailbox = Arc::new(Mailbox {
            failures: 2,
            panics,
            runs: AtomicUsize::new(0),
            fail_now: Semaphore::new(0),
        });
        let health = Health::default();
        let mut supervisor = Supervisor::new(
            health.clone(),
            RestartPolicy {
                initial: Duration::from_millis(300),
                max: Duration::from_secs(1),
                healthy_after: Duration::from_secs(60),
            },
        );
        let channels = ChannelSet::from([(
            "support-mail".to_owned(),
            channel("support-mail", "email", mailbox.clone()),
        )]);
        supervisor.sync(&channels, &CancellationToken::new());
        (mailbox, health, supervisor)
    }

    #[tokio::test]
    async fn a_failing_loop_is_reported_down_and_restarted_until_it_runs() {
        let (mailbox, health, mut supervisor) = supervised(false).await;
        until(&health, "up", |h| {
            h.state == RunState::Up && h.restarts == 0
        })
        .await;
        for restarts in 0..2 {
            mailbox.fail_now.add_permits(1);
            until(&health, "down", |h| {
                h.state == RunState::Down
                    && h.restarts == restarts
                    && h.error.as_deref() == Some("channel support-mail: imap login refused")
            })
            .await;
            until(&health, "restarted", |h| {
                h.state == RunState::Up && h.restarts == restarts + 1 && h.error.is_none()
            })
            .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(mailbox.runs.load(Ordering::SeqCst), 3);
        assert_eq!(health.snapshot()["support-mail"].state, RunState::Up);
        supervisor.stop_all(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_panicking_loop_is_restarted_too() {
        let (mailbox, health, mut supervisor) = supervised(true).await;
        until(&health, "up", |h| h.state == RunState::Up).await;
        mailbox.fail_now.add_permits(1);
        until(&health, "down", |h| {
            h.state == RunState::Down
                && h.error.as_deref() == Some("panicked: imap session state corrupt")
        })
        .await;
        until(&health, "restarted", |h| {
            h.state == RunState::Up && h.restarts == 1
        })
        .await;
        supervisor.stop_all(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_removed_channel_leaves_the_report() {
        let (_mailbox, health, mut supervisor) = supervised(false).await;
        until(&health, "up", |h| h.state == RunState::Up).await;
        supervisor.sync(&ChannelSet::new(), &CancellationToken::new());
        assert!(health.snapshot().is_empty());
        supervisor.stop_all(Duration::from_secs(5)).await;
    }
}
