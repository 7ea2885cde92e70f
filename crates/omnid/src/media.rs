//! Deferred media in the daemon: the durable queue channels hand their
//! messages' files to, and the worker that downloads them through each
//! channel's fetcher once the message is durable.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use omni_connector::{
    EventSender,
    attachments::AttachmentStore,
    media::{FetcherLookup, MediaWorkerConfig, SqliteMediaQueue, run_media_worker},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{server::AppState, settings::Settings, task};

/// Opens the queue in the data directory; jobs a previous run left are
/// downloaded once the worker starts.
pub(crate) fn open(settings: &Settings) -> anyhow::Result<Arc<SqliteMediaQueue>> {
    let path = settings.data_dir.join("media-queue.sqlite3");
    let queue = SqliteMediaQueue::open(&path)
        .with_context(|| format!("cannot open media queue {}", path.display()))?
        .with_max_jobs(settings.media.max_queued_jobs);
    Ok(Arc::new(queue))
}

/// The running worker.
#[derive(Debug)]
pub(crate) struct MediaWorker {
    task: JoinHandle<()>,
}

/// Starts the worker. Each job's fetcher is looked up among the channels
/// configured at the time, so a reloaded channel's new credentials apply.
pub(crate) fn start(
    settings: &Settings,
    queue: Arc<SqliteMediaQueue>,
    state: &AppState,
    attachments: Arc<dyn AttachmentStore>,
    sender: EventSender,
    shutdown: &CancellationToken,
) -> MediaWorker {
    let state = state.clone();
    let fetchers: FetcherLookup = Arc::new(move |channel_id: &str| {
        state
            .channels()
            .get(channel_id)
            .and_then(|channel| channel.connector.media())
    });
    let config = MediaWorkerConfig {
        concurrency: settings.media.concurrency,
        max_age: Duration::from_secs(settings.media.max_age_secs),
        ..MediaWorkerConfig::default()
    };
    let task = tokio::spawn(run_media_worker(
        queue,
        fetchers,
        attachments,
        sender,
        config,
        shutdown.clone(),
    ));
    MediaWorker { task }
}

impl MediaWorker {
    /// Waits for the worker to stop (after `shutdown`): downloads in
    /// progress are dropped and stay queued for the next start.
    pub(crate) async fn stop(self, grace: Duration) {
        task::join_within(
            self.task,
            grace,
            "media worker",
            "its downloads stay queued for the next start",
        )
        .await;
    }
}
