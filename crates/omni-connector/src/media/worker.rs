//! The media worker: downloads what the queue holds, a few at a time,
//! stores each file, and appends the update that names it.
//!
//! A job leaves the queue only once its update is durable in the log, so
//! the worst a crash does is download a file twice; the attachment store
//! is content addressed and the update's event id deterministic, so that
//! stores and threads nothing twice.

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher,
    sync::Arc,
    time::{Duration, SystemTime},
};

use omni_proto::v1::{Attachment, AttachmentStored, ConversationEvent, Direction, EventKind};
use omni_telemetry::emit;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    FetchError, MediaFetcher, MediaJob,
    queue::{QueuedJob, RETRY_BASE, RETRY_CAP, SqliteMediaQueue, backoff, epoch_ms},
};
use crate::{
    attachments::AttachmentStore,
    events::{MediaFetched, MediaGivenUp, MediaRetried},
    sender::EventSender,
};

/// The fetcher of a channel id: the daemon looks it up among the channels
/// configured now, so a reloaded channel's new credentials are used.
pub type FetcherLookup = Arc<dyn Fn(&str) -> Option<Arc<dyn MediaFetcher>> + Send + Sync>;

/// How the worker paces itself.
#[derive(Debug, Clone)]
pub struct MediaWorkerConfig {
    /// Downloads at a time.
    pub concurrency: usize,
    /// A download that keeps failing temporarily is given up once its job
    /// is this old.
    pub max_age: Duration,
    /// The first retry's delay, doubling per failure up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

impl Default for MediaWorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            max_age: Duration::from_secs(3 * 24 * 3600),
            retry_base: RETRY_BASE,
            retry_cap: RETRY_CAP,
        }
    }
}

/// How long the worker waits after the queue itself failed.
const QUEUE_ERROR_WAIT: Duration = Duration::from_secs(5);
/// The longest sleep between two looks at the queue.
const MAX_IDLE: Duration = Duration::from_secs(60);

type Key = (String, String, u32);

fn key(job: &MediaJob) -> Key {
    (
        job.channel_id.clone(),
        job.event_id.clone(),
        job.media.attachment,
    )
}

/// Runs until `shutdown`; downloads in progress then are dropped and
/// their jobs stay queued for the next start.
pub async fn run_media_worker(
    queue: Arc<SqliteMediaQueue>,
    fetchers: FetcherLookup,
    attachments: Arc<dyn AttachmentStore>,
    sender: EventSender,
    config: MediaWorkerConfig,
    shutdown: CancellationToken,
) {
    let concurrency = config.concurrency.max(1);
    let attempt = Arc::new(Attempt {
        queue: queue.clone(),
        fetchers,
        attachments,
        sender,
        config,
    });
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, Key> = HashMap::new();
    loop {
        let now = epoch_ms(SystemTime::now());
        let free = concurrency.saturating_sub(tasks.len());
        let mut wait = MAX_IDLE;
        if free > 0 {
            let busy: HashSet<Key> = in_flight.values().cloned().collect();
            match queue
                .due(now, free, move |job| busy.contains(&key(job)))
                .await
            {
                Ok(jobs) => {
                    for queued in jobs {
                        let job_key = key(&queued.job);
                        let attempt = attempt.clone();
                        let task = tasks.spawn(async move { attempt.run(queued).await });
                        in_flight.insert(task.id(), job_key);
                    }
                    if let Ok(Some(due)) = queue.next_due(now).await {
                        let until = u64::try_from(due.saturating_sub(now)).unwrap_or(0);
                        wait = wait.min(Duration::from_millis(until));
                    }
                }
                Err(error) => {
                    tracing::error!(error = %error, "media queue unreadable");
                    wait = QUEUE_ERROR_WAIT;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                // A panicked attempt leaves its job queued, due again.
                let id = done.map_or_else(|e| e.id(), |(id, ())| id);
                in_flight.remove(&id);
            }
            () = queue.deferred() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    tasks.shutdown().await;
}

/// What one download needs.
struct Attempt {
    queue: Arc<SqliteMediaQueue>,
    fetchers: FetcherLookup,
    attachments: Arc<dyn AttachmentStore>,
    sender: EventSender,
    config: MediaWorkerConfig,
}

impl Attempt {
    async fn run(&self, queued: QueuedJob) {
        let job = &queued.job;
        let fetched = match (self.fetchers)(&job.channel_id) {
            Some(fetcher) => fetcher.fetch(&job.media).await,
            // The channel was removed or reconfigured without media: it
            // may come back, so this ages out like any temporary failure.
            None => Err(FetchError::Temporary(
                "the channel has no media fetcher".into(),
            )),
        };
        let outcome = match fetched {
            Ok(fetched) => self.store(&queued, fetched).await,
            Err(FetchError::Permanent(error)) => self.give_up(&queued, true, &error).await,
            Err(FetchError::Temporary(error)) => {
                let age = epoch_ms(SystemTime::now()).saturating_sub(queued.deferred_ms);
                if u128::try_from(age).unwrap_or(0) >= self.config.max_age.as_millis() {
                    self.give_up(&queued, false, &error).await
                } else {
                    Err(error)
                }
            }
        };
        if let Err(error) = outcome {
            self.retry(&queued, &error).await;
        }
    }

    /// Stores the file and appends its update; `Err` says why it must be
    /// tried again.
    async fn store(&self, queued: &QueuedJob, fetched: super::Fetched) -> Result<(), String> {
        let job = &queued.job;
        let stored = self
            .attachments
            .put(fetched.content)
            .await
            .map_err(|e| e.to_string())?;
        let attachment = Attachment {
            name: String::new(),
            media_type: fetched.media_type,
            size: stored.size,
            sha256: stored.sha256,
            uri: stored.uri,
        };
        let size = attachment.size;
        self.append(job, Some(attachment), "").await?;
        emit!(MediaFetched {
            channel: &job.channel_id,
            event_id: &job.event_id,
            attachment: job.media.attachment,
            size,
            retries: queued.failures,
        } => self.queue.metrics());
        Ok(())
    }

    /// Appends the update saying the file will not come, then drops the
    /// job; `Err` if the update is not durable (the job is tried again).
    async fn give_up(&self, queued: &QueuedJob, refused: bool, error: &str) -> Result<(), String> {
        let job = &queued.job;
        self.append(job, None, error).await?;
        emit!(MediaGivenUp {
            channel: &job.channel_id,
            event_id: &job.event_id,
            attachment: job.media.attachment,
            refused,
            error,
        } => self.queue.metrics());
        Ok(())
    }

    async fn append(
        &self,
        job: &MediaJob,
        attachment: Option<Attachment>,
        error: &str,
    ) -> Result<(), String> {
        let update = update_event(job, attachment, error, SystemTime::now());
        self.sender
            .send_event(update)
            .await
            .map_err(|e| e.to_string())?;
        // Should this fail, the job runs again: the same update, which
        // consumers drop by its event id.
        if let Err(e) = self.queue.complete(job).await {
            tracing::error!(
                channel = %job.channel_id,
                event_id = %job.event_id,
                error = %e,
                "media job done but not removed from the queue"
            );
        }
        Ok(())
    }

    async fn retry(&self, queued: &QueuedJob, error: &str) {
        let job = &queued.job;
        let failures = queued.failures.saturating_add(1);
        let jitter = std::collections::hash_map::RandomState::new().hash_one(key(job)) as f64
            / u64::MAX as f64;
        let delay = backoff(
            failures,
            jitter,
            self.config.retry_base,
            self.config.retry_cap,
        );
        let due = epoch_ms(SystemTime::now())
            .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        if let Err(e) = self.queue.retry_at(job, failures, due, error).await {
            // The job stays due: it is tried again at the next look.
            tracing::error!(channel = %job.channel_id, error = %e, "media retry not recorded");
        }
        emit!(MediaRetried {
            channel: &job.channel_id,
            event_id: &job.event_id,
            attachment: job.media.attachment,
            attempts: failures,
            retry_in: delay,
            error,
        } => self.queue.metrics());
    }
}

/// The update naming the stored file (or, with `attachment` unset, why it
/// will not come): an `EVENT_KIND_ATTACHMENT_STORED` event with the
/// message's channel and sender, whose id depends only on the job.
pub fn update_event(
    job: &MediaJob,
    attachment: Option<Attachment>,
    error: &str,
    now: SystemTime,
) -> ConversationEvent {
    let name = format!(
        "attachment-stored/{}/{}",
        job.event_id, job.media.attachment
    );
    ConversationEvent {
        event_id: omni_model::event_id(&job.channel_id, &name).to_string(),
        channel_id: job.channel_id.clone(),
        channel_kind: job.channel_kind as i32,
        direction: Direction::Inbound as i32,
        kind: EventKind::AttachmentStored as i32,
        sender: job.sender.clone(),
        ingested_at: Some(omni_proto::timestamp(now)),
        attachment_stored: Some(AttachmentStored {
            message_event_id: job.event_id.clone(),
            attachment_index: job.media.attachment,
            attachment,
            error: error.to_owned(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, sync::Mutex};

    use async_trait::async_trait;
    use bytes::Bytes;
    use omni_proto::v1::ChannelKind;

    use super::*;
    use crate::{
        LogEntry, MediaQueue,
        attachments::MemoryAttachmentStore,
        media::{Fetched, MediaRef},
        sender::SendError,
        testing::MemorySink,
    };

    /// Answers each fetch with the next scripted result.
    #[derive(Debug, Default)]
    struct Script {
        answers: Mutex<VecDeque<Result<Fetched, FetchError>>>,
        calls: Mutex<Vec<MediaRef>>,
    }

    #[async_trait]
    impl MediaFetcher for Script {
        async fn fetch(&self, media: &MediaRef) -> Result<Fetched, FetchError> {
            self.calls.lock().unwrap().push(media.clone());
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Err(FetchError::Temporary("script ran out".into())))
        }
    }

    fn photo() -> Fetched {
        Fetched {
            content: Bytes::from_static(b"jpeg bytes"),
            media_type: "image/jpeg".into(),
        }
    }

    fn job() -> MediaJob {
        MediaJob {
            channel_id: "tg".into(),
            event_id: "ev-1".into(),
            media: MediaRef {
                attachment: 1,
                source: "file-id-1".into(),
            },
            channel_kind: ChannelKind::Telegram,
            sender: None,
        }
    }

    struct Running {
        _dir: tempfile::TempDir,
        queue: Arc<SqliteMediaQueue>,
        sink: MemorySink,
        attachments: MemoryAttachmentStore,
        shutdown: CancellationToken,
        worker: tokio::task::JoinHandle<()>,
    }

    async fn start(fetcher: Arc<Script>, max_age: Duration) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(SqliteMediaQueue::open(&dir.path().join("q.sqlite3")).unwrap());
        let sink = MemorySink::default();
        let attachments = MemoryAttachmentStore::default();
        let shutdown = CancellationToken::new();
        let lookup: FetcherLookup = Arc::new(move |channel: &str| {
            (channel == "tg").then(|| fetcher.clone() as Arc<dyn MediaFetcher>)
        });
        let worker = tokio::spawn(run_media_worker(
            queue.clone(),
            lookup,
            Arc::new(attachments.clone()),
            EventSender::new(Arc::new(sink.clone())),
            MediaWorkerConfig {
                concurrency: 2,
                max_age,
                retry_base: Duration::from_millis(20),
                retry_cap: Duration::from_millis(100),
            },
            shutdown.clone(),
        ));
        Running {
            _dir: dir,
            queue,
            sink,
            attachments,
            shutdown,
            worker,
        }
    }

    impl Running {
        /// Waits (up to 10 s) for the queue to empty.
        async fn drained(&self) {
            for _ in 0..1000 {
                if self.queue.depth().await.unwrap() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the queue never emptied");
        }

        async fn stop(self) -> Vec<LogEntry> {
            self.shutdown.cancel();
            self.worker.await.unwrap();
            self.sink.entries()
        }
    }

    fn update(entries: &[LogEntry]) -> ConversationEvent {
        let [LogEntry::Event(event)] = entries else {
            panic!("one update expected: {entries:?}")
        };
        (**event).clone()
    }

    #[tokio::test]
    async fn a_temporary_failure_is_retried_then_one_update_names_the_stored_file() {
        let fetcher = Arc::new(Script::default());
        fetcher.answers.lock().unwrap().extend([
            Err(FetchError::Temporary("502 from the provider".into())),
            Ok(photo()),
        ]);
        let running = start(fetcher.clone(), Duration::from_secs(3600)).await;
        running.queue.defer(vec![job()]).await.unwrap();
        running.drained().await;
        let attachments = running.attachments.clone();
        let entries = running.stop().await;

        let event = update(&entries);
        assert_eq!(event.kind, EventKind::AttachmentStored as i32);
        assert_eq!(event.channel_id, "tg");
        assert_eq!(event.channel_kind, ChannelKind::Telegram as i32);
        assert_eq!(
            event.event_id,
            update_event(&job(), None, "", SystemTime::now()).event_id,
            "the id depends on the job alone"
        );
        let stored = event.attachment_stored.unwrap();
        assert_eq!(
            (stored.message_event_id.as_str(), stored.attachment_index),
            ("ev-1", 1)
        );
        assert_eq!(stored.error, "");
        let attachment = stored.attachment.unwrap();
        assert_eq!(attachment.media_type, "image/jpeg");
        assert_eq!(attachment.size, 10);
        assert_eq!(
            attachment.uri,
            format!("omni-att://sha256/{}", attachment.sha256)
        );
        assert_eq!(
            attachments
                .get(&attachment.sha256)
                .await
                .unwrap()
                .as_deref(),
            Some(&b"jpeg bytes"[..])
        );
        assert_eq!(fetcher.calls.lock().unwrap().len(), 2);
        assert_eq!(fetcher.calls.lock().unwrap()[0], job().media);
    }

    #[tokio::test]
    async fn a_refused_download_is_given_up_at_once_with_a_note() {
        let fetcher = Arc::new(Script::default());
        fetcher
            .answers
            .lock()
            .unwrap()
            .push_back(Err(FetchError::Permanent("404 file not found".into())));
        let running = start(fetcher.clone(), Duration::from_secs(3600)).await;
        running.queue.defer(vec![job()]).await.unwrap();
        running.drained().await;
        let entries = running.stop().await;

        let stored = update(&entries).attachment_stored.unwrap();
        assert_eq!(stored.attachment, None);
        assert_eq!(stored.error, "404 file not found");
        assert_eq!(fetcher.calls.lock().unwrap().len(), 1, "never retried");
    }

    #[tokio::test]
    async fn a_download_failing_past_the_maximum_age_is_given_up() {
        let fetcher = Arc::new(Script::default());
        let running = start(fetcher.clone(), Duration::ZERO).await;
        running.queue.defer(vec![job()]).await.unwrap();
        running.drained().await;
        let entries = running.stop().await;

        let stored = update(&entries).attachment_stored.unwrap();
        assert_eq!(stored.attachment, None);
        assert_eq!(stored.error, "script ran out");
        assert_eq!(fetcher.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_job_stays_queued_until_its_update_is_durable() {
        let fetcher = Arc::new(Script::default());
        fetcher
            .answers
            .lock()
            .unwrap()
            .extend(std::iter::repeat_with(|| Ok(photo())).take(1000));
        let running = start(fetcher.clone(), Duration::from_secs(3600)).await;
        running
            .sink
            .fail_with(Some(SendError::Failed("disk full".into())));
        running.queue.defer(vec![job()]).await.unwrap();
        for _ in 0..1000 {
            if !fetcher.calls.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            running.queue.depth().await.unwrap(),
            1,
            "kept while the log fails"
        );
        running.sink.fail_with(None);
        running.drained().await;
        let entries = running.stop().await;
        assert!(
            update(&entries)
                .attachment_stored
                .unwrap()
                .attachment
                .is_some()
        );
        assert!(fetcher.calls.lock().unwrap().len() >= 2, "downloaded again");
    }

    #[tokio::test]
    async fn pending_jobs_resume_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sqlite3");
        SqliteMediaQueue::open(&path)
            .unwrap()
            .defer(vec![job()])
            .await
            .unwrap();
        // The daemon stopped before the worker ran; the next start finds
        // the job.
        let fetcher = Arc::new(Script::default());
        fetcher.answers.lock().unwrap().push_back(Ok(photo()));
        let queue = Arc::new(SqliteMediaQueue::open(&path).unwrap());
        let sink = MemorySink::default();
        let shutdown = CancellationToken::new();
        let lookup: FetcherLookup = {
            let fetcher = fetcher.clone();
            Arc::new(move |_: &str| Some(fetcher.clone() as Arc<dyn MediaFetcher>))
        };
        let worker = tokio::spawn(run_media_worker(
            queue.clone(),
            lookup,
            Arc::new(MemoryAttachmentStore::default()),
            EventSender::new(Arc::new(sink.clone())),
            MediaWorkerConfig::default(),
            shutdown.clone(),
        ));
        for _ in 0..1000 {
            if queue.depth().await.unwrap() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        worker.await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), 0);
        assert!(update(&sink.entries()).attachment_stored.is_some());
    }
}
