//! Deferred media: a message is appended as soon as its text and media
//! references are known, and its files follow.
//!
//! Providers give a few seconds to answer a webhook (WeChat 5, Telegram
//! holds every later update behind a failed one), and file downloads are
//! the slowest and least reliable part of ingesting a message. So a
//! channel's `parse` names each file by the provider's reference (a URL, a
//! media id, a Telegram `file_id`) in a [`MediaRef`], the webhook driver
//! appends the message, then hands the references to the channel's
//! [`MediaQueue`]; a worker downloads each file through the channel's
//! [`MediaFetcher`], stores it, and appends an update that names the
//! stored file. A download that keeps failing never delays or loses the
//! message: its attachment keeps the provider's reference.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use omni_proto::v1::{ChannelKind, ConversationEvent, IdentityHandle};

mod queue;
mod worker;

pub use queue::{QueuedJob, SqliteMediaQueue, backoff};
pub use worker::{FetcherLookup, MediaWorkerConfig, run_media_worker, update_event};

/// One file of a message, still at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    /// The index of the attachment in the message's content that this file
    /// fills in.
    pub attachment: u32,
    /// The provider's reference: what the channel's [`MediaFetcher`] needs
    /// to download it (a URL, a media id, a `file_id`).
    pub source: String,
}

/// A download the queue owes: which message, which attachment, from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaJob {
    pub channel_id: String,
    /// The id of the durable message the file belongs to.
    pub event_id: String,
    pub media: MediaRef,
    /// The message's channel kind and sender, copied to the update that
    /// names the stored file: the sender is the update's partition key, so
    /// it follows its message in the log.
    pub channel_kind: ChannelKind,
    pub sender: Option<IdentityHandle>,
}

impl MediaJob {
    /// The job of one file of `message`.
    pub fn new(message: &ConversationEvent, media: MediaRef) -> Self {
        Self {
            channel_id: message.channel_id.clone(),
            event_id: message.event_id.clone(),
            media,
            channel_kind: ChannelKind::try_from(message.channel_kind)
                .unwrap_or(ChannelKind::Unspecified),
            sender: message.sender.clone(),
        }
    }
}

/// Why a download did not produce the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// May work later (timeout, 5xx, 429, an expired token being renewed):
    /// retried with backoff.
    #[error("temporarily failed: {0}")]
    Temporary(String),
    /// Will never work (404, larger than allowed, a type the channel
    /// refuses): given up, the attachment keeps the provider's reference.
    #[error("failed: {0}")]
    Permanent(String),
}

/// A downloaded file, as the provider described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub content: Bytes,
    /// The provider's media type, when it says one (empty otherwise).
    pub media_type: String,
}

/// Downloads one channel's files. Implemented by each channel that has
/// deferred media; the queue's worker calls it, never the webhook path.
#[async_trait]
pub trait MediaFetcher: Send + Sync + std::fmt::Debug + 'static {
    async fn fetch(&self, media: &MediaRef) -> Result<Fetched, FetchError>;
}

/// Why jobs could not be queued; the webhook is then answered 503 so the
/// provider retries (the message itself is deduplicated downstream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("media queue failed: {0}")]
pub struct MediaQueueError(pub String);

/// Where downloads wait. `defer` returns once the jobs are durable.
#[async_trait]
pub trait MediaQueue: Send + Sync + std::fmt::Debug + 'static {
    async fn defer(&self, jobs: Vec<MediaJob>) -> Result<(), MediaQueueError>;
}

/// A queue that only records its jobs: what `omnid check-config` and a
/// channel crate's own tests need. The daemon gives channels its durable
/// queue instead.
#[derive(Debug, Default, Clone)]
pub struct MemoryMediaQueue {
    jobs: Arc<Mutex<Vec<MediaJob>>>,
}

impl MemoryMediaQueue {
    /// Every job deferred so far.
    pub fn jobs(&self) -> Vec<MediaJob> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[async_trait]
impl MediaQueue for MemoryMediaQueue {
    async fn defer(&self, jobs: Vec<MediaJob>) -> Result<(), MediaQueueError> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(jobs);
        Ok(())
    }
}
