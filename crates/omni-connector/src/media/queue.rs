//! The durable media queue: one SQLite file in the data directory.
//!
//! A job is written (and fsynced) before `defer` returns, and deleted only
//! after the update naming its stored file is durable in the log, so a
//! crash between the two downloads the file again (the attachment store
//! is content addressed and the update's id deterministic: nothing is
//! duplicated). The file, not memory, holds the backlog, so a provider
//! that is down for a day costs disk, not RAM; and at most
//! [`DEFAULT_MAX_JOBS`] (or the daemon's `media.max_queued_jobs`) jobs,
//! so a flood of media messages cannot fill the disk either: beyond it, a
//! message's files are not queued and keep the provider's references,
//! counted and logged. The jobs already queued stay.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use omni_proto::{
    Message,
    v1::{ChannelKind, IdentityHandle},
};
use omni_telemetry::emit;
use rusqlite::{Connection, params};
use tokio::sync::Notify;

use super::{MediaJob, MediaQueue, MediaQueueError, MediaRef};
use crate::events::{MediaDeferred, MediaMetrics, MediaQueueDepth, MediaQueueFull};

/// Most jobs the queue holds unless told otherwise: a few hundred bytes
/// each, so tens of megabytes at most; far more than a day's outage of a
/// busy channel's provider (jobs are also given up after the daemon's
/// `media.max_age_secs`).
pub(crate) const DEFAULT_MAX_JOBS: u64 = 100_000;

/// The first retry's delay; each failure doubles it.
pub(super) const RETRY_BASE: Duration = Duration::from_secs(5);
/// The longest delay between two attempts.
pub(super) const RETRY_CAP: Duration = Duration::from_secs(3600);

/// The delay before attempt `failures + 1`, after `failures` (>= 1)
/// failed attempts: `base` doubling per failure up to `cap`, less up to
/// half of it by `jitter` (in `[0, 1)`), so the jobs of one provider
/// outage do not all come back in the same second.
pub fn backoff(failures: u32, jitter: f64, base: Duration, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    let full = base.saturating_mul(1 << doublings).min(cap);
    full.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

/// A job as the queue holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub job: MediaJob,
    /// Failed attempts so far.
    pub failures: u32,
    /// When it was first deferred (ms since the epoch): its age decides
    /// when a failing download is given up.
    pub deferred_ms: i64,
}

/// Jobs in a SQLite file (WAL, `synchronous = FULL`), keyed by
/// (channel, message event id, attachment index): a provider's retry that
/// defers the same file again adds nothing.
#[derive(Debug)]
pub struct SqliteMediaQueue {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    /// Woken by `defer`, so new jobs start without waiting for a poll.
    wake: Notify,
    metrics: MediaMetrics,
    /// Most jobs held; 0: no limit.
    max_jobs: u64,
}

impl SqliteMediaQueue {
    pub fn open(path: &Path) -> Result<Self, MediaQueueError> {
        let fail = |e: &dyn std::fmt::Display| MediaQueueError(format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| fail(&e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS media_jobs (
                 channel_id TEXT NOT NULL,
                 event_id TEXT NOT NULL,
                 attachment INTEGER NOT NULL,
                 source TEXT NOT NULL,
                 channel_kind INTEGER NOT NULL,
                 sender BLOB,
                 deferred_ms INTEGER NOT NULL,
                 failures INTEGER NOT NULL DEFAULT 0,
                 due_ms INTEGER NOT NULL,
                 last_error TEXT NOT NULL DEFAULT '',
                 PRIMARY KEY (channel_id, event_id, attachment)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS media_jobs_due ON media_jobs (due_ms);",
        )
        .map_err(|e| fail(&e))?;
        let queue = Self {
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(conn)),
            wake: Notify::new(),
            metrics: MediaMetrics::register(),
            max_jobs: DEFAULT_MAX_JOBS,
        };
        let depth = queue.with_conn(count)?;
        emit!(MediaQueueDepth { jobs: depth } => &queue.metrics);
        Ok(queue)
    }

    /// Holds at most `max_jobs` jobs (0: no limit); see the module
    /// documentation.
    pub fn with_max_jobs(mut self, max_jobs: u64) -> Self {
        self.max_jobs = max_jobs;
        self
    }

    pub fn metrics(&self) -> &MediaMetrics {
        &self.metrics
    }

    /// Resolves once `defer` added jobs (or at once if it did since the
    /// last call).
    pub async fn deferred(&self) {
        self.wake.notified().await;
    }

    /// Up to `limit` jobs due at `now_ms`, earliest first, skipping those
    /// `skip` says are already being worked on.
    pub async fn due(
        &self,
        now_ms: i64,
        limit: usize,
        skip: impl Fn(&MediaJob) -> bool + Send + 'static,
    ) -> Result<Vec<QueuedJob>, MediaQueueError> {
        self.blocking(move |conn| {
            let mut query = conn.prepare_cached(
                "SELECT channel_id, event_id, attachment, source, channel_kind, sender,
                        deferred_ms, failures
                 FROM media_jobs WHERE due_ms <= ?1 ORDER BY due_ms",
            )?;
            let mut rows = query.query(params![now_ms])?;
            let mut jobs = Vec::new();
            while jobs.len() < limit
                && let Some(row) = rows.next()?
            {
                let sender: Option<Vec<u8>> = row.get(5)?;
                let job = MediaJob {
                    channel_id: row.get(0)?,
                    event_id: row.get(1)?,
                    media: MediaRef {
                        attachment: row.get(2)?,
                        source: row.get(3)?,
                    },
                    channel_kind: ChannelKind::try_from(row.get::<_, i32>(4)?)
                        .unwrap_or(ChannelKind::Unspecified),
                    // Written by `defer` from a valid handle.
                    sender: sender.and_then(|b| IdentityHandle::decode(b.as_slice()).ok()),
                };
                if skip(&job) {
                    continue;
                }
                jobs.push(QueuedJob {
                    job,
                    deferred_ms: row.get(6)?,
                    failures: row.get(7)?,
                });
            }
            Ok(jobs)
        })
        .await
    }

    /// When the earliest job due after `after_ms` is due (ms since the
    /// epoch), if any.
    pub async fn next_due(&self, after_ms: i64) -> Result<Option<i64>, MediaQueueError> {
        self.blocking(move |conn| {
            conn.query_row(
                "SELECT MIN(due_ms) FROM media_jobs WHERE due_ms > ?1",
                params![after_ms],
                |row| row.get(0),
            )
        })
        .await
    }

    /// Removes a job whose update is durable (or that was given up).
    pub async fn complete(&self, job: &MediaJob) -> Result<(), MediaQueueError> {
        let key = key(job);
        let depth = self
            .blocking(move |conn| {
                conn.prepare_cached(
                    "DELETE FROM media_jobs
                     WHERE channel_id = ?1 AND event_id = ?2 AND attachment = ?3",
                )?
                .execute(params![key.0, key.1, key.2])?;
                count(conn)
            })
            .await?;
        emit!(MediaQueueDepth { jobs: depth } => &self.metrics);
        Ok(())
    }

    /// Records a failed attempt: the job is due again at `due_ms`.
    pub async fn retry_at(
        &self,
        job: &MediaJob,
        failures: u32,
        due_ms: i64,
        error: &str,
    ) -> Result<(), MediaQueueError> {
        let (key, error) = (key(job), error.to_owned());
        self.blocking(move |conn| {
            conn.prepare_cached(
                "UPDATE media_jobs SET failures = ?4, due_ms = ?5, last_error = ?6
                 WHERE channel_id = ?1 AND event_id = ?2 AND attachment = ?3",
            )?
            .execute(params![key.0, key.1, key.2, failures, due_ms, error])?;
            Ok(())
        })
        .await
    }

    /// How many jobs the queue holds.
    pub async fn depth(&self) -> Result<u64, MediaQueueError> {
        self.blocking(count).await
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, MediaQueueError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|e| MediaQueueError(format!("{}: {e}", self.path.display())))
    }

    /// Runs `f` on the connection off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, MediaQueueError> {
        let (conn, path) = (self.conn.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| MediaQueueError(format!("{}: task failed: {e}", path.display())))?
        .map_err(|e| MediaQueueError(format!("{}: {e}", path.display())))
    }
}

fn key(job: &MediaJob) -> (String, String, u32) {
    (
        job.channel_id.clone(),
        job.event_id.clone(),
        job.media.attachment,
    )
}

fn count(conn: &mut Connection) -> rusqlite::Result<u64> {
    jobs_in(conn)
}

fn jobs_in(conn: &Connection) -> rusqlite::Result<u64> {
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM media_jobs", [], |row| row.get(0))?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Milliseconds since the epoch of `time`.
pub(crate) fn epoch_ms(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl MediaQueue for SqliteMediaQueue {
    async fn defer(&self, jobs: Vec<MediaJob>) -> Result<(), MediaQueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let now = epoch_ms(SystemTime::now());
        let max_jobs = self.max_jobs;
        let (added, depth, refused) = self
            .blocking(move |conn| {
                let tx = conn.transaction()?;
                let mut added = 0;
                let mut depth = jobs_in(&tx)?;
                let mut refused: Vec<MediaJob> = Vec::new();
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT OR IGNORE INTO media_jobs
                         (channel_id, event_id, attachment, source, channel_kind, sender,
                          deferred_ms, due_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                    )?;
                    let mut queued = tx.prepare_cached(
                        "SELECT 1 FROM media_jobs
                         WHERE channel_id = ?1 AND event_id = ?2 AND attachment = ?3",
                    )?;
                    for job in jobs {
                        if max_jobs > 0 && depth >= max_jobs {
                            // A provider's retry of a queued job is not new.
                            let known = queued.exists(params![
                                job.channel_id,
                                job.event_id,
                                job.media.attachment
                            ])?;
                            if !known {
                                refused.push(job);
                            }
                            continue;
                        }
                        let inserted = insert.execute(params![
                            job.channel_id,
                            job.event_id,
                            job.media.attachment,
                            job.media.source,
                            job.channel_kind as i32,
                            job.sender.as_ref().map(Message::encode_to_vec),
                            now,
                        ])? as u64;
                        added += inserted;
                        depth += inserted;
                    }
                }
                tx.commit()?;
                Ok((added, count(conn)?, refused))
            })
            .await?;
        emit!(MediaDeferred { jobs: added } => &self.metrics);
        emit!(MediaQueueDepth { jobs: depth } => &self.metrics);
        if let Some(first) = refused.first() {
            emit!(MediaQueueFull {
                channel: &first.channel_id,
                event_id: &first.event_id,
                jobs: refused.len() as u64,
                max_jobs,
            } => &self.metrics);
        }
        if added > 0 {
            self.wake.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use omni_proto::v1::HandleKind;

    use super::*;

    fn job(event: &str, attachment: u32) -> MediaJob {
        MediaJob {
            channel_id: "tg".into(),
            event_id: event.into(),
            media: MediaRef {
                attachment,
                source: format!("file-{event}-{attachment}"),
            },
            channel_kind: ChannelKind::Telegram,
            sender: Some(IdentityHandle {
                kind: HandleKind::TelegramUser as i32,
                value: "42".into(),
                ..Default::default()
            }),
        }
    }

    const FAR: i64 = i64::MAX;

    #[test]
    fn backoff_doubles_from_the_base_to_the_cap_less_the_jitter() {
        let at = |failures, jitter| backoff(failures, jitter, RETRY_BASE, RETRY_CAP);
        let secs = Duration::from_secs;
        assert_eq!(at(1, 0.0), secs(5));
        assert_eq!(at(2, 0.0), secs(10));
        assert_eq!(at(3, 0.0), secs(20));
        assert_eq!(at(10, 0.0), secs(2560));
        assert_eq!(at(11, 0.0), secs(3600), "capped");
        assert_eq!(at(u32::MAX, 0.0), secs(3600), "no overflow");
        assert_eq!(at(1, 0.5), Duration::from_millis(3750));
        assert_eq!(at(11, 1.0), secs(1800), "jitter takes at most half");
        assert_eq!(at(11, 7.0), secs(1800), "jitter is clamped");
    }

    #[tokio::test]
    async fn jobs_survive_reopening_and_a_repeated_defer_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/media-queue.sqlite3");
        let queue = SqliteMediaQueue::open(&path).unwrap();
        queue.defer(vec![job("a", 0), job("a", 1)]).await.unwrap();
        // The provider retried the webhook: same message, same files.
        queue.defer(vec![job("a", 1), job("b", 0)]).await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), 3);
        drop(queue);

        let queue = SqliteMediaQueue::open(&path).unwrap();
        let due = queue.due(FAR, 10, |_| false).await.unwrap();
        let jobs: Vec<MediaJob> = due.iter().map(|q| q.job.clone()).collect();
        assert_eq!(jobs, [job("a", 0), job("a", 1), job("b", 0)]);
        assert!(due.iter().all(|q| q.failures == 0));
        assert_eq!(queue.due(FAR, 2, |_| false).await.unwrap().len(), 2);
        let skipped = queue.due(FAR, 10, |j| j.event_id == "a").await.unwrap();
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].job, job("b", 0));
    }

    #[tokio::test]
    async fn beyond_its_maximum_the_queue_keeps_the_oldest_jobs_and_adds_no_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("media-queue.sqlite3");
        let queue = SqliteMediaQueue::open(&path).unwrap().with_max_jobs(2);
        queue.defer(vec![job("a", 0)]).await.unwrap();
        // One fits, the other two do not: none of them fails the defer
        // (the message is durable; its files keep the provider's refs).
        queue
            .defer(vec![job("b", 0), job("c", 0), job("c", 1)])
            .await
            .unwrap();
        assert_eq!(queue.depth().await.unwrap(), 2);
        // A provider's retry of a queued job is still fine, and a new job
        // still does not fit.
        queue.defer(vec![job("a", 0), job("d", 0)]).await.unwrap();
        let due = queue.due(FAR, 10, |_| false).await.unwrap();
        let jobs: Vec<MediaJob> = due.into_iter().map(|q| q.job).collect();
        assert_eq!(jobs, [job("a", 0), job("b", 0)]);
        // Room again once one is done.
        queue.complete(&job("a", 0)).await.unwrap();
        queue.defer(vec![job("d", 0)]).await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), 2);

        let unlimited = SqliteMediaQueue::open(&dir.path().join("other.sqlite3"))
            .unwrap()
            .with_max_jobs(0);
        let many: Vec<MediaJob> = (0..50).map(|n| job("many", n)).collect();
        unlimited.defer(many).await.unwrap();
        assert_eq!(unlimited.depth().await.unwrap(), 50);
    }

    #[tokio::test]
    async fn a_failed_job_waits_until_due_and_a_completed_one_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("media-queue.sqlite3");
        let queue = SqliteMediaQueue::open(&path).unwrap();
        queue.defer(vec![job("a", 0), job("b", 0)]).await.unwrap();
        let now = epoch_ms(SystemTime::now());
        queue
            .retry_at(&job("a", 0), 1, now + 60_000, "503")
            .await
            .unwrap();
        let due = queue.due(now + 1_000, 10, |_| false).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].job, job("b", 0));
        assert_eq!(queue.next_due(now).await.unwrap(), Some(now + 60_000));

        queue.complete(&job("b", 0)).await.unwrap();
        let later = queue.due(now + 60_000, 10, |_| false).await.unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!((later[0].job.clone(), later[0].failures), (job("a", 0), 1));
        drop(queue);

        let queue = SqliteMediaQueue::open(&path).unwrap();
        assert_eq!(
            queue.depth().await.unwrap(),
            1,
            "the retry state is durable"
        );
        queue.complete(&job("a", 0)).await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), 0);
        assert_eq!(queue.next_due(0).await.unwrap(), None);
    }
}
