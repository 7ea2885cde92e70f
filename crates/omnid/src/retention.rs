//! Retention of the embedded log: a pass every
//! `log.retention.check_interval_secs` removes each topic's records beyond
//! its limits (`omni_log`'s retention), never one the daemon's own
//! consumers have not committed, and reports every topic's size and what
//! holds retention back as metrics.

use std::{collections::HashMap, time::Duration};

use metrics::{Counter, counter};
use omni_log::{LogError, RetentionPolicy, SqliteLog};
use omni_telemetry::{emit, names};
use tokio_util::sync::CancellationToken;

use crate::{
    events::{LogRetained, LogRetentionFailed, TopicRetentionMetrics},
    settings::{Settings, Topics},
    task::{self, BackgroundTask},
};

/// Starts the retention task of `log`. `protected` names, per topic, the
/// consumer groups this daemon runs on it: retention waits for their
/// commits. The first pass runs at once (so the size metrics are there
/// from the start); the task stops at `shutdown`, between two batches
/// (each batch is its own transaction), and the next start continues.
pub(crate) fn start(
    settings: &Settings,
    log: SqliteLog,
    protected: &[(String, &'static str)],
    shutdown: &CancellationToken,
) -> BackgroundTask {
    let topics = Topics::new(&settings.log.topic_prefix);
    let retention = &settings.log.retention;
    let policy = retention.policy(&topics, protected);
    let interval = Duration::from_secs(retention.check_interval_secs.max(1));
    for topic in topics.all() {
        let limits = policy.limits(topic);
        tracing::info!(
            topic,
            max_age_secs = limits.max_age.map(|age| age.as_secs()),
            max_bytes = limits.max_bytes,
            protected_by = ?policy.protected_groups.get(topic),
            "log retention"
        );
    }
    BackgroundTask::spawn(
        "log retention",
        "the next start continues its pass",
        shutdown,
        |stop| run(log, policy, interval, stop),
    )
}

async fn run(log: SqliteLog, policy: RetentionPolicy, interval: Duration, stop: CancellationToken) {
    let failures: Counter = counter!(names::LOG_RETENTION_FAILURES_TOTAL);
    // Per topic, registered when the topic is first seen in the file.
    let mut metrics: HashMap<String, TopicRetentionMetrics> = HashMap::new();
    let mut ticks = task::ticks(interval);
    while task::next_tick(&mut ticks, &stop).await {
        // Dropping a pass between batches is safe: each batch is committed
        // whole or not at all, and the next pass continues.
        let pass = tokio::select! {
            _ = stop.cancelled() => return,
            pass = log.enforce_retention(&policy) => pass,
        };
        match pass {
            Ok(report) => {
                for retained in &report.topics {
                    let topic = &retained.stats.topic;
                    let handles = metrics.entry(topic.clone()).or_insert_with(|| {
                        let groups: Vec<&str> = policy
                            .protected_groups
                            .get(topic)
                            .map(|groups| groups.iter().map(String::as_str).collect())
                            .unwrap_or_default();
                        TopicRetentionMetrics::register(topic, &groups)
                    });
                    emit!(LogRetained { retained } => handles);
                }
            }
            Err(LogError::Closed) => return,
            Err(error) => emit!(LogRetentionFailed { error: &error } => &failures),
        }
    }
}
