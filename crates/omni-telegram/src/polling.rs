//! Long-polling mode: `getUpdates` in a loop, with the update offset kept
//! in the channel state and moved only once the batch's events are durable.
//!
//! Per batch: every update is normalized and handed to the log in order;
//! once the acknowledgements resolve, the files of the durable messages are
//! deferred to the media queue (downloaded later by the media worker), then
//! the offset (the last durable update id + 1) and the seen ids
//! (`update:<id>` and `event:<event id>`) are committed in one transaction.
//! A restart in the middle of a batch resumes at the stored offset;
//! Telegram hands out the unconfirmed updates again and the ones already
//! durable are recognised by their seen ids and skipped. Should the process die between
//! the log's acknowledgement and the commit, the replayed events carry the
//! same event ids, which consumers drop.

use std::time::{Duration, SystemTime};

use omni_connector::{Ack, ChannelContext, MediaJob, StateUpdate, dead_letter};
use omni_proto::v1::ChannelKind;
use omni_telemetry::emit;
use teloxide_core::{
    payloads::GetUpdatesSetters,
    prelude::Requester,
    requests::Request,
    types::{AllowedUpdate, Update},
};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{BotApi, TelegramError},
    events::{BatchCheckpointed, PollFailed, TelegramMetrics, UpdateIgnored},
    normalize::{Outcome, normalize_update},
};

/// The state key of the next update id to ask for.
pub const OFFSET_KEY: &str = "telegram/offset";

/// Everything the polling loop needs.
#[derive(Debug, Clone)]
pub struct Poller {
    pub context: ChannelContext,
    pub api: BotApi,
    pub poll_timeout_secs: u32,
    pub limit: u8,
    pub allowed_updates: Vec<AllowedUpdate>,
    pub delete_webhook: bool,
    pub max_backoff: Duration,
    pub metrics: TelegramMetrics,
}

/// One update of a batch on its way to the log.
struct Submitted {
    update_id: u32,
    seen: Vec<String>,
    /// None when nothing was appended.
    ack: Option<Ack>,
    kind: Kind,
    /// The message's files, deferred once it is durable.
    media: Vec<MediaJob>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Event,
    DeadLetter,
    Ignored,
    Duplicate,
}

impl Poller {
    /// Polls until `shutdown`, backing off after failures.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_secs(1).min(self.max_backoff);
        let mut webhook_deleted = !self.delete_webhook;
        loop {
            let mut healthy = false;
            match self
                .session(&shutdown, &mut healthy, &mut webhook_deleted)
                .await
            {
                Ok(()) => return,
                Err(error) => {
                    if healthy {
                        backoff = Duration::from_secs(1).min(self.max_backoff);
                    }
                    let wait = match &error {
                        TelegramError::Request(teloxide_core::RequestError::RetryAfter(s)) => {
                            s.duration().max(backoff)
                        }
                        _ => backoff,
                    };
                    emit!(PollFailed { error: &error, retry_in: wait } => &self.metrics);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        healthy: &mut bool,
        webhook_deleted: &mut bool,
    ) -> Result<(), TelegramError> {
        if !*webhook_deleted {
            self.api
                .call("deleteWebhook", self.api.bot.delete_webhook().send())
                .await?;
            *webhook_deleted = true;
        }
        let poll_bound =
            self.api.request_timeout + Duration::from_secs(self.poll_timeout_secs.into());
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let offset = self.offset().await?;
            let request = self
                .api
                .bot
                .get_updates()
                .offset(offset)
                .limit(self.limit)
                .timeout(self.poll_timeout_secs)
                .allowed_updates(self.allowed_updates.clone());
            let updates = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                result = tokio::time::timeout(poll_bound, request.send()) => {
                    result.map_err(|_| TelegramError::Timeout("getUpdates"))??
                }
            };
            *healthy = true;
            if !updates.is_empty() {
                self.ingest(updates, offset, shutdown).await?;
            }
        }
    }

    async fn offset(&self) -> Result<i32, TelegramError> {
        Ok(self
            .context
            .state
            .get(OFFSET_KEY)
            .await?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.parse().ok())
            .unwrap_or(0))
    }

    /// Appends one batch and moves the offset past what is durable.
    async fn ingest(
        &self,
        mut updates: Vec<Update>,
        offset: i32,
        shutdown: &CancellationToken,
    ) -> Result<(), TelegramError> {
        updates.sort_by_key(|u| u.id.0);
        updates.dedup_by_key(|u| u.id.0);
        // A server that ignores the offset must not make us go backwards.
        updates.retain(|u| i64::from(u.id.0) >= i64::from(offset));
        if updates.is_empty() {
            return Ok(());
        }
        let channel_id = &self.context.channel_id;
        let now = SystemTime::now();
        let received_at = omni_proto::timestamp(now);

        let mut submitted: Vec<Submitted> = Vec::with_capacity(updates.len());
        let mut failure: Option<TelegramError> = None;
        for update in &updates {
            if shutdown.is_cancelled() {
                break;
            }
            let update_key = format!("update:{}", update.id.0);
            let outcome = normalize_update(update, None, channel_id, received_at);
            let event_key = match &outcome {
                Outcome::Event(n) => Some(format!("event:{}", n.event.event_id)),
                _ => None,
            };
            let keys: Vec<String> = std::iter::once(update_key).chain(event_key).collect();
            let seen = self.context.state.seen(keys.clone()).await?;
            if seen.iter().any(|s| *s) {
                submitted.push(Submitted {
                    update_id: update.id.0,
                    seen: keys,
                    ack: None,
                    kind: Kind::Duplicate,
                    media: Vec::new(),
                });
                continue;
            }
            let (ack, kind, media) = match outcome {
                Outcome::Ignored(what) => {
                    emit!(UpdateIgnored { update_id: update.id.0, kind: what } => &self.metrics);
                    (None, Kind::Ignored, Vec::new())
                }
                Outcome::Invalid(error) => {
                    let mut record = dead_letter(
                        channel_id,
                        ChannelKind::Telegram,
                        error.code,
                        &error.message,
                        raw_update(update),
                        "application/json",
                        received_at,
                    );
                    record
                        .metadata
                        .insert("update_id".to_owned(), update.id.0.to_string());
                    (
                        Some(self.context.sender.send_dead_letter(record)),
                        Kind::DeadLetter,
                        Vec::new(),
                    )
                }
                Outcome::Event(normalized) => {
                    let inbound = normalized.into_inbound();
                    let media = inbound
                        .media
                        .into_iter()
                        .map(|media| MediaJob::new(&inbound.event, media))
                        .collect();
                    (
                        Some(self.context.sender.send_event(inbound.event)),
                        Kind::Event,
                        media,
                    )
                }
            };
            submitted.push(Submitted {
                update_id: update.id.0,
                seen: keys,
                ack,
                kind,
                media,
            });
        }

        // Only what is durable moves the offset: up to the first update
        // whose append failed. Later successes are still marked seen.
        let results = futures::future::join_all(submitted.iter_mut().map(|s| async {
            match s.ack.take() {
                Some(ack) => ack.await.map(|_| ()),
                None => Ok(()),
            }
        }))
        .await;
        let (mut events, mut dead_letters, mut duplicates) = (0u64, 0u64, 0u64);
        let mut next_offset: Option<i64> = None;
        let mut contiguous = true;
        let mut seen = Vec::new();
        let mut media = Vec::new();
        for (s, result) in submitted.iter_mut().zip(results) {
            match result {
                Ok(_) => {
                    media.append(&mut s.media);
                    match s.kind {
                        Kind::Event => events += 1,
                        Kind::DeadLetter => dead_letters += 1,
                        Kind::Duplicate => duplicates += 1,
                        Kind::Ignored => {}
                    }
                    seen.extend(s.seen.iter().cloned());
                    if contiguous {
                        next_offset = Some(i64::from(s.update_id) + 1);
                    }
                }
                Err(error) => {
                    contiguous = false;
                    failure.get_or_insert(TelegramError::Log(error));
                }
            }
        }
        // The files of every durable message are owed before the offset
        // passes it: if they cannot be queued, the batch comes again.
        if !media.is_empty() {
            self.context.media.defer(media).await?;
        }
        if let Some(next) = next_offset {
            self.context
                .state
                .commit(StateUpdate {
                    puts: vec![(OFFSET_KEY.to_owned(), next.to_string().into_bytes())],
                    seen,
                    deletes: Vec::new(),
                })
                .await?;
            emit!(BatchCheckpointed { events, dead_letters, duplicates, offset: next } => &self.metrics);
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The update as Telegram sent it, for its dead letter: what the Bot API
/// types could not read is kept whole by them; a message they read only in
/// part (an unreadable content field) is written back from the types, so
/// the fields they dropped are missing.
fn raw_update(update: &Update) -> Vec<u8> {
    match &update.kind {
        teloxide_core::types::UpdateKind::Error(value)
            if value.as_object().is_some_and(|map| !map.is_empty()) =>
        {
            serde_json::to_vec(value)
        }
        _ => serde_json::to_vec(update),
    }
    .unwrap_or_default()
}
