//! Reading records back from the log, for the daemon's own consumers (the
//! outbound dispatcher, the threading worker, the helpdesk commands
//! consumer): decoding a record by its content type, the dead-letter record
//! of one that cannot be handled, storing it and committing positions with
//! retries, and the backoff they retry with.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use omni_connector::{EventSender, SendError};
use omni_log::{EventLog, Position, StoredRecord, Subscription};
use omni_model::cloudevents;
use omni_proto::{
    Message,
    v1::{ChannelKind, ConversationEvent, DeadLetter},
};
use tokio_util::sync::CancellationToken;

/// First wait after a temporary failure (delivery, log append or commit).
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(500);

/// Longest wait between two attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The dead-letter record of a consumed record that cannot be handled:
/// its raw payload and content type, the reason, and where it was read
/// (`topic`, `partition`, `offset`, `event_id` in `metadata`).
pub(crate) fn dead_letter_of(
    stored: &StoredRecord,
    channel_id: &str,
    channel_kind: ChannelKind,
    event_id: &str,
    reason: &str,
    detail: &str,
) -> DeadLetter {
    let record = &stored.record;
    let metadata = HashMap::from([
        ("topic".to_owned(), record.topic.clone()),
        (
            "partition".to_owned(),
            stored.position.partition.to_string(),
        ),
        ("offset".to_owned(), stored.position.offset.to_string()),
        ("event_id".to_owned(), event_id.to_owned()),
    ]);
    let content_type = header(stored, cloudevents::HEADER_CONTENT_TYPE)
        .unwrap_or_else(|| cloudevents::CONTENT_TYPE_PROTOBUF.to_owned());
    let mut dead = omni_connector::dead_letter(
        channel_id,
        channel_kind,
        reason,
        detail,
        record.payload.to_vec(),
        &content_type,
        timestamp(SystemTime::now()),
    );
    dead.metadata = metadata;
    dead
}

/// Capped exponential backoff.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: INITIAL_BACKOFF,
        }
    }
}

impl Backoff {
    pub(crate) fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }

    pub(crate) fn reset(&mut self) {
        self.next = INITIAL_BACKOFF;
    }
}

/// A record header as text (names compared case-insensitively).
pub(crate) fn header(stored: &StoredRecord, name: &str) -> Option<String> {
    stored
        .record
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .map(str::to_owned)
}

/// Decodes a conversation-event record (outbound, or inbound for the
/// threading worker).
pub(crate) fn decode(stored: &StoredRecord) -> Result<ConversationEvent, (&'static str, String)> {
    decode_as(stored, cloudevents::TYPE_CONVERSATION_EVENT)
}

/// Decodes a record of CloudEvents type `ce_type`: JSON (the protobuf JSON
/// mapping) when its `content-type` says `application/json`, else binary
/// protobuf. A record of another type is refused; one without a type is
/// tried as `M`.
pub(crate) fn decode_as<M>(
    stored: &StoredRecord,
    ce_type: &str,
) -> Result<M, (&'static str, String)>
where
    M: Message + Default + serde::de::DeserializeOwned,
{
    if let Some(ty) = header(stored, cloudevents::HEADER_TYPE)
        && ty != ce_type
    {
        return Err((
            "unsupported_type",
            format!("ce_type {ty:?} is not {ce_type}"),
        ));
    }
    let payload = stored.record.payload.as_ref();
    let json = header(stored, cloudevents::HEADER_CONTENT_TYPE).is_some_and(|ct| {
        ct.split(';').next().is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case(cloudevents::CONTENT_TYPE_JSON)
        })
    });
    if json {
        serde_json::from_slice(payload).map_err(|e| ("invalid_json", e.to_string()))
    } else {
        M::decode(payload).map_err(|e| ("invalid_protobuf", e.to_string()))
    }
}

/// Stores a dead letter, retrying until it is durable or the consumer is
/// stopped (the record's position must not be committed before).
pub(crate) async fn store_dead_letter(
    sender: &EventSender,
    dead_letter: DeadLetter,
    shutdown: &CancellationToken,
) -> Result<(), Stopped> {
    let mut backoff = Backoff::default();
    loop {
        match sender.send_dead_letter(dead_letter.clone()).await {
            Ok(_) => return Ok(()),
            Err(SendError::Closed) => return Err(Stopped),
            Err(error) => {
                let wait = backoff.next();
                tracing::warn!(channel = %dead_letter.channel_id, reason = %dead_letter.reason, error = %error, retry_in_ms = wait.as_millis() as u64, "cannot store a dead letter, retrying");
                pause(shutdown, wait).await?;
            }
        }
    }
}

/// Commits past `records`: the last position of each partition they hold,
/// each retried until the commit is durable or the consumer is stopped.
pub(crate) async fn commit(
    subscription: &mut dyn Subscription,
    records: &[StoredRecord],
    shutdown: &CancellationToken,
) -> Result<(), Stopped> {
    let mut last: BTreeMap<(&str, i32), Position> = BTreeMap::new();
    for record in records {
        last.insert(
            (record.record.topic.as_str(), record.position.partition),
            record.position,
        );
    }
    for ((topic, _), position) in last {
        commit_at(subscription, topic, position, shutdown).await?;
    }
    Ok(())
}

/// Commits past `position` of `topic`, retrying until the commit is
/// durable or the consumer is stopped.
pub(crate) async fn commit_at(
    subscription: &mut dyn Subscription,
    topic: &str,
    position: Position,
    shutdown: &CancellationToken,
) -> Result<(), Stopped> {
    let mut backoff = Backoff::default();
    loop {
        match subscription.commit(topic, position).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                let wait = backoff.next();
                tracing::warn!(topic, offset = position.offset, error = %error, retry_in_ms = wait.as_millis() as u64, "cannot commit the consumer position, retrying");
                pause(shutdown, wait).await?;
            }
        }
    }
}

pub(crate) use omni_proto::timestamp;

/// The consumer was told to stop.
#[derive(Debug)]
pub(crate) struct Stopped;

/// Sleeps for `wait` unless the consumer is stopped first.
pub(crate) async fn pause(shutdown: &CancellationToken, wait: Duration) -> Result<(), Stopped> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(Stopped),
        _ = tokio::time::sleep(wait) => Ok(()),
    }
}

/// Joins `group` on `topic`, retrying with backoff until it works or the
/// consumer is stopped (joining a Kafka group can take a while; shutdown
/// must not wait for it).
pub(crate) async fn subscribe(
    log: &dyn EventLog,
    group: &str,
    topic: &str,
    shutdown: &CancellationToken,
) -> Result<Box<dyn Subscription>, Stopped> {
    let mut backoff = Backoff::default();
    let topics = [topic.to_owned()];
    loop {
        let subscribed = tokio::select! {
            _ = shutdown.cancelled() => return Err(Stopped),
            subscribed = log.subscribe(group, &topics) => subscribed,
        };
        match subscribed {
            Ok(subscription) => return Ok(subscription),
            Err(error) => {
                let wait = backoff.next();
                tracing::warn!(topic, group, error = %error, retry_in_ms = wait.as_millis() as u64, "cannot subscribe");
                pause(shutdown, wait).await?;
            }
        }
    }
}

/// What a batch consumer does with each polled batch, before its
/// positions are committed.
pub(crate) trait BatchHandler: Sync {
    fn handle_batch(
        &self,
        records: &[StoredRecord],
    ) -> impl Future<Output = Result<(), Stopped>> + Send;

    /// Called after a poll that returned less than a full batch, once its
    /// records are handled and committed: every record appended before
    /// `polled_at` has been handled. Work that must come after all earlier
    /// records (the threading worker's SLA clock) waits for this.
    fn caught_up(
        &self,
        polled_at: std::time::SystemTime,
    ) -> impl Future<Output = Result<(), Stopped>> + Send {
        let _ = polled_at;
        std::future::ready(Ok(()))
    }
}

/// A consumer that works in batches: joins `group` on `topic`, then for
/// each polled batch (at most `max` records) runs `handler` and commits
/// the batch's positions, until it is stopped or `handler` stops it. A
/// record is thus committed only after its whole batch was handled.
pub(crate) async fn consume_batches(
    log: &dyn EventLog,
    group: &str,
    topic: &str,
    max: usize,
    shutdown: &CancellationToken,
    handler: &impl BatchHandler,
) {
    let Ok(mut subscription) = subscribe(log, group, topic, shutdown).await else {
        return;
    };
    tracing::info!(topic, group, "consumer started");
    let mut backoff = Backoff::default();
    loop {
        let polled_at = std::time::SystemTime::now();
        let Ok(records) = poll(subscription.as_mut(), max, topic, &mut backoff, shutdown).await
        else {
            break;
        };
        if !records.is_empty()
            && (handler.handle_batch(&records).await.is_err()
                || commit(subscription.as_mut(), &records, shutdown)
                    .await
                    .is_err())
        {
            break;
        }
        if records.len() < max && handler.caught_up(polled_at).await.is_err() {
            break;
        }
    }
    tracing::info!(topic, group, "consumer stopped");
}

/// The next records (possibly none after a second), a failed poll retried
/// with `backoff`, until the consumer is stopped.
pub(crate) async fn poll(
    subscription: &mut dyn Subscription,
    max: usize,
    topic: &str,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Result<Vec<StoredRecord>, Stopped> {
    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => return Err(Stopped),
            polled = subscription.poll(max, Duration::from_secs(1)) => polled,
        };
        match polled {
            Ok(records) => {
                backoff.reset();
                return Ok(records);
            }
            Err(error) => {
                let wait = backoff.next();
                tracing::warn!(topic, error = %error, retry_in_ms = wait.as_millis() as u64, "poll failed");
                pause(shutdown, wait).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..9).map(|_| backoff.next()).collect();
        assert_eq!(waits[0], INITIAL_BACKOFF);
        assert_eq!(waits[1], INITIAL_BACKOFF * 2);
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
        backoff.reset();
        assert_eq!(backoff.next(), INITIAL_BACKOFF);
    }
}
