//! IMAP in: one task per mailbox pulls new mail, appends it, and moves the
//! mailbox's UID checkpoint only once the appended events are durable.
//!
//! Each pass SELECTs the mailbox, finds the UIDs above the checkpoint and
//! ingests them in batches. Per batch, a first FETCH reads sizes and
//! Message-IDs so that messages already ingested (a replay after a crash, a
//! renumbered mailbox) are skipped without downloading them; a second
//! fetches the bodies of the rest, bounded in bytes. Every message becomes
//! an event or a dead-letter record; the checkpoint and the ids of the
//! batch are then written in one transaction. Between passes the
//! connection waits in IDLE (re-issued every `idle_refresh_secs`) or
//! sleeps for `poll_interval_secs`. Any error drops the connection and
//! reconnects with exponential backoff; every command has a timeout, so a
//! dead server shows up as an error, never as a silent hang.

mod checkpoint;
pub mod transport;

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use omni_connector::{ChannelContext, LogEntry, SendError, StateUpdate};
use omni_proto::{
    Timestamp,
    v1::{ChannelKind, DeadLetter},
};
use omni_telemetry::emit;
use rustls::ClientConfig;
use tokio_util::sync::CancellationToken;

pub use checkpoint::{Checkpoint, Resume, new_uids, resume, uid_set};
use transport::{Credentials, ImapSession};

use crate::{
    config::{ImapSettings, StartFrom},
    events::{ImapBatchIngested, ImapMetrics, ImapSessionFailed, ImapUidValidityChanged},
    parse::{ParseLimits, header_message_id, parse_message},
};

/// Bodies fetched in one round trip are bounded by this many bytes (on top
/// of the batch size), so a batch of large messages cannot exhaust memory.
const MAX_FETCH_BYTES: u64 = 32 * 1024 * 1024;

/// Why a session ended early. Every variant leads to a reconnect.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("login failed: {0}")]
    Login(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("imap: {0}")]
    Imap(#[from] async_imap::error::Error),
    #[error("mailbox state: {0}")]
    State(#[from] omni_connector::state::StateError),
    #[error("attachment store: {0}")]
    Attachment(#[from] omni_connector::attachments::AttachmentError),
    #[error("event log: {0}")]
    Log(#[from] SendError),
}

/// Everything one mailbox's task needs.
#[derive(Debug, Clone)]
pub struct MailboxWorker {
    pub context: ChannelContext,
    pub settings: Arc<ImapSettings>,
    pub mailbox: String,
    pub start: StartFrom,
    pub credentials: Credentials,
    pub tls: Arc<ClientConfig>,
    pub limits: ParseLimits,
    pub metrics: ImapMetrics,
}

/// A batch whose entries are submitted: their acknowledgements, the ids to
/// mark seen, and what to report once the checkpoint moved.
struct Staged {
    acks: Vec<omni_connector::Ack>,
    seen: Vec<String>,
    report: ImapBatchIngested,
}

/// A batch's commit (acks, then checkpoint), running in its own task.
type Committing = tokio::task::JoinHandle<Result<(), ImapError>>;

async fn finish(committing: Committing) -> Result<(), ImapError> {
    committing
        .await
        .unwrap_or_else(|e| Err(ImapError::Protocol(format!("commit task failed: {e}"))))
}

/// A fetched message on its way to the log.
struct Pending {
    uid: u32,
    entry: LogEntry,
    seen_id: String,
}

impl MailboxWorker {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.settings.command_timeout_secs)
    }

    /// Runs sessions until `shutdown`, reconnecting after failures.
    pub async fn run(self, shutdown: CancellationToken) {
        let max = Duration::from_secs(self.settings.max_backoff_secs);
        let mut backoff = Duration::from_secs(1).min(max);
        loop {
            let mut healthy = false;
            match self.session(&shutdown, &mut healthy).await {
                Ok(()) => return,
                Err(error) => {
                    if healthy {
                        backoff = Duration::from_secs(1).min(max);
                    }
                    emit!(ImapSessionFailed {
                        error: &error,
                        retry_in: backoff,
                    } => &self.metrics);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max);
        }
    }

    /// One connection: sync, wait, sync, ... until shutdown (Ok) or an
    /// error. `healthy` is set once a pass completed, to reset the backoff.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        healthy: &mut bool,
    ) -> Result<(), ImapError> {
        let mut session = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            s = transport::connect(&self.settings, &self.credentials, &self.tls, self.timeout()) => s?,
        };
        let capabilities = self.command("CAPABILITY", session.capabilities()).await?;
        let idle = self.settings.idle && capabilities.has_str("IDLE");
        tracing::info!(
            channel = %self.context.channel_id,
            mailbox = %self.mailbox,
            idle,
            "imap session started"
        );
        loop {
            self.sync(&mut session, shutdown).await?;
            *healthy = true;
            if shutdown.is_cancelled() {
                break;
            }
            if idle {
                session = self.idle(session, shutdown).await?;
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(self.settings.poll_interval_secs)) => {}
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        // A polite goodbye; the server drops the connection anyway.
        let _ = tokio::time::timeout(self.timeout(), session.logout()).await;
        Ok(())
    }

    async fn command<T, E: Into<ImapError>>(
        &self,
        what: &'static str,
        future: impl Future<Output = Result<T, E>>,
    ) -> Result<T, ImapError> {
        tokio::time::timeout(self.timeout(), future)
            .await
            .map_err(|_| ImapError::Timeout(what))?
            .map_err(Into::into)
    }

    /// Waits in IDLE until the server reports a change, the refresh time
    /// passes or shutdown; returns the session after DONE.
    async fn idle(
        &self,
        session: ImapSession,
        shutdown: &CancellationToken,
    ) -> Result<ImapSession, ImapError> {
        let mut handle = session.idle();
        self.command("IDLE", handle.init()).await?;
        let refresh = Duration::from_secs(self.settings.idle_refresh_secs);
        {
            // async-imap's own timeout restarts at every keepalive line, so
            // the refresh is bounded from outside as well.
            let (wait, _interrupt) = handle.wait_with_timeout(refresh);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = tokio::time::timeout(refresh, wait) => {
                    if let Ok(result) = result {
                        result?;
                    }
                }
            }
        }
        self.command("DONE", handle.done()).await
    }

    /// Ingests everything above the checkpoint, batch by batch.
    async fn sync(
        &self,
        session: &mut ImapSession,
        shutdown: &CancellationToken,
    ) -> Result<(), ImapError> {
        let selected = self
            .command("SELECT", session.select(&self.mailbox))
            .await?;
        let uid_validity = selected
            .uid_validity
            .ok_or_else(|| ImapError::Protocol("SELECT returned no UIDVALIDITY".into()))?;
        let key = Checkpoint::key(&self.mailbox);
        let stored = self
            .context
            .state
            .get(&key)
            .await?
            .and_then(|bytes| Checkpoint::decode(&bytes));
        let (last_uid, criterion) = match resume(stored, uid_validity) {
            Resume::After(last_uid) => (last_uid, None),
            Resume::Fresh => (0, self.start.search_criterion()),
            Resume::Renumbered { previous } => {
                emit!(ImapUidValidityChanged {
                    previous,
                    current: uid_validity,
                } => &self.metrics);
                (0, None)
            }
        };
        let query = match &criterion {
            Some(criterion) => format!("UID {}:* {criterion}", last_uid + 1),
            None => format!("UID {}:*", last_uid + 1),
        };
        let found = self
            .command("UID SEARCH", session.uid_search(&query))
            .await?;
        let uids = new_uids(found, last_uid);

        let fresh_or_renumbered = stored.is_none_or(|c| c.uid_validity != uid_validity);
        if uids.is_empty() {
            if fresh_or_renumbered {
                // Remember the mailbox generation even when there is
                // nothing to ingest; with a start date, everything now in
                // the mailbox is older than it.
                let last_uid = match criterion {
                    Some(_) => selected.uid_next.map_or(0, |n| n.saturating_sub(1)),
                    None => 0,
                };
                self.commit_checkpoint(uid_validity, last_uid, Vec::new())
                    .await?;
            }
            return Ok(());
        }
        // One batch's commit runs while the next batch is fetched and
        // parsed; commits stay in UID order (each waits for the one before),
        // and ids submitted in this pass count as seen for the batches after.
        let mut submitted = HashSet::new();
        let mut committing: Option<Committing> = None;
        for batch in uids.chunks(self.settings.batch_size as usize) {
            match self
                .ingest(
                    session,
                    uid_validity,
                    batch,
                    &mut submitted,
                    committing.take(),
                )
                .await
            {
                Ok(next) => committing = Some(next),
                Err(error) => return Err(error),
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        match committing {
            Some(last) => finish(last).await,
            None => Ok(()),
        }
    }

    async fn commit_checkpoint(
        &self,
        uid_validity: u32,
        last_uid: u32,
        seen: Vec<String>,
    ) -> Result<(), ImapError> {
        let checkpoint = Checkpoint {
            uid_validity,
            last_uid,
        };
        self.context
            .state
            .commit(StateUpdate {
                puts: vec![(Checkpoint::key(&self.mailbox), checkpoint.encode())],
                seen,
                deletes: Vec::new(),
            })
            .await?;
        Ok(())
    }

    /// Fetches, appends and checkpoints one batch of UIDs (sorted).
    ///
    /// Returns the batch's commit, running: it waits for `previous`, then
    /// for every append to be durable, then moves the checkpoint. If this
    /// batch fails before that, `previous` is awaited first, so a reconnect
    /// never reads a checkpoint that is about to move.
    async fn ingest(
        &self,
        session: &mut ImapSession,
        uid_validity: u32,
        batch: &[u32],
        submitted: &mut HashSet<String>,
        previous: Option<Committing>,
    ) -> Result<Committing, ImapError> {
        match self
            .fetch_batch(session, uid_validity, batch, submitted)
            .await
        {
            Ok(staged) => Ok(self.commit_later(uid_validity, batch, staged, previous)),
            Err(error) => {
                if let Some(previous) = previous {
                    let _ = finish(previous).await;
                }
                Err(error)
            }
        }
    }

    /// Submits a fetched batch and spawns its commit.
    fn commit_later(
        &self,
        uid_validity: u32,
        batch: &[u32],
        staged: Staged,
        previous: Option<Committing>,
    ) -> Committing {
        let Staged {
            acks,
            seen,
            mut report,
        } = staged;
        report.last_uid = *batch.last().expect("batches are not empty");
        let worker = self.clone();
        tokio::spawn(async move {
            if let Some(previous) = previous {
                finish(previous).await?;
            }
            futures::future::try_join_all(acks).await?;
            worker
                .commit_checkpoint(uid_validity, report.last_uid, seen)
                .await?;
            emit!(report => &worker.metrics);
            Ok(())
        })
    }

    /// Fetches one batch and submits its entries (in UID order, so log order
    /// follows the mailbox).
    async fn fetch_batch(
        &self,
        session: &mut ImapSession,
        uid_validity: u32,
        batch: &[u32],
        submitted: &mut HashSet<String>,
    ) -> Result<Staged, ImapError> {
        // Sizes and Message-IDs first.
        let heads: Vec<_> = self
            .command(
                "UID FETCH",
                session
                    .uid_fetch(
                        uid_set(batch),
                        "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
                    )
                    .await?
                    .try_collect::<Vec<_>>(),
            )
            .await?;
        let mut known: BTreeMap<u32, (u64, Option<String>)> = BTreeMap::new();
        for fetch in &heads {
            if let Some(uid) = fetch.uid {
                let message_id = fetch.header().and_then(header_message_id);
                known.insert(uid, (u64::from(fetch.size.unwrap_or(0)), message_id));
            }
        }
        // Messages expunged since the search have no FETCH answer: nothing
        // to ingest, and the checkpoint may pass them.
        let ids: Vec<String> = known.values().filter_map(|(_, id)| id.clone()).collect();
        let seen_flags = self.context.state.seen(ids.clone()).await?;
        let already: std::collections::HashSet<String> = ids
            .into_iter()
            .zip(seen_flags)
            .filter_map(|(id, seen)| seen.then_some(id))
            .collect();

        let mut duplicates = 0u64;
        let mut wanted = Vec::new();
        let mut oversized = Vec::new();
        for (&uid, (size, message_id)) in &known {
            if message_id
                .as_ref()
                .is_some_and(|id| already.contains(id) || submitted.contains(id))
            {
                duplicates += 1;
            } else if *size > self.limits.max_message_bytes as u64 {
                oversized.push((uid, *size));
            } else {
                wanted.push((uid, *size));
            }
        }

        let mut pending: Vec<Pending> = Vec::new();
        let mut group: Vec<u32> = Vec::new();
        let mut group_bytes = 0u64;
        for (i, &(uid, size)) in wanted.iter().enumerate() {
            group.push(uid);
            group_bytes += size;
            let last = i + 1 == wanted.len();
            if last || group_bytes + wanted[i + 1].1 > MAX_FETCH_BYTES {
                self.fetch_bodies(session, uid_validity, &group, &mut pending)
                    .await?;
                group.clear();
                group_bytes = 0;
            }
        }
        for (uid, size) in oversized {
            pending.push(self.oversized(session, uid_validity, uid, size).await?);
        }
        pending.sort_by_key(|p| p.uid);
        pending.dedup_by_key(|p| p.uid);

        // Parsed messages without a Message-ID are recognised by their
        // content hash, known only now.
        let ids: Vec<String> = pending.iter().map(|p| p.seen_id.clone()).collect();
        let seen_flags = self.context.state.seen(ids).await?;
        let mut acks = Vec::with_capacity(pending.len());
        let (mut events, mut dead_letters) = (0u64, 0u64);
        let mut seen = Vec::with_capacity(pending.len());
        for (p, was_seen) in pending.into_iter().zip(seen_flags) {
            // Also the same Message-ID twice in one mailbox, in this batch
            // or one still committing: appended once.
            if was_seen || !submitted.insert(p.seen_id.clone()) {
                duplicates += 1;
                continue;
            }
            match &p.entry {
                LogEntry::DeadLetter(_) => dead_letters += 1,
                LogEntry::Event(_) | LogEntry::Outbound(_) => events += 1,
            }
            seen.push(p.seen_id);
            acks.push(self.context.sender.send(p.entry));
        }
        Ok(Staged {
            acks,
            seen,
            report: ImapBatchIngested {
                events,
                dead_letters,
                duplicates,
                last_uid: 0,
            },
        })
    }

    async fn fetch_bodies(
        &self,
        session: &mut ImapSession,
        uid_validity: u32,
        uids: &[u32],
        pending: &mut Vec<Pending>,
    ) -> Result<(), ImapError> {
        let mut stream = session
            .uid_fetch(uid_set(uids), "(UID INTERNALDATE BODY.PEEK[])")
            .await?;
        let deadline = tokio::time::Instant::now() + self.timeout();
        loop {
            let next = tokio::time::timeout_at(deadline, stream.next())
                .await
                .map_err(|_| ImapError::Timeout("UID FETCH"))?;
            let Some(fetch) = next else { break };
            let fetch = fetch?;
            let Some(uid) = fetch.uid.filter(|uid| uids.binary_search(uid).is_ok()) else {
                continue;
            };
            let received_at = internal_date(&fetch);
            // A FETCH without the body is a flag update from another
            // client, or the message was expunged meanwhile.
            let Some(raw) = fetch.body() else { continue };
            pending.push(self.normalize(uid_validity, uid, raw, received_at).await?);
        }
        Ok(())
    }

    /// One raw message to a log entry: the event (its attachments stored
    /// first) or, if it cannot be normalized, a dead-letter record.
    async fn normalize(
        &self,
        uid_validity: u32,
        uid: u32,
        raw: &[u8],
        received_at: Timestamp,
    ) -> Result<Pending, ImapError> {
        match parse_message(raw, &self.context.channel_id, received_at, &self.limits) {
            Ok(parsed) => {
                for attachment in parsed.attachments {
                    self.context.attachments.put(attachment.bytes).await?;
                }
                let mut event = parsed.event;
                event.ingested_at = Some(now());
                event
                    .provider_metadata
                    .extend(self.location(uid_validity, uid));
                Ok(Pending {
                    uid,
                    seen_id: event.provider_message_id.clone(),
                    entry: LogEntry::Event(Box::new(event)),
                })
            }
            Err(error) => {
                let seen_id = header_id_or_digest(raw);
                Ok(Pending {
                    uid,
                    seen_id,
                    entry: LogEntry::DeadLetter(Box::new(self.dead_letter(
                        uid_validity,
                        uid,
                        raw.to_vec(),
                        error.code,
                        error.message,
                        received_at,
                    ))),
                })
            }
        }
    }

    /// A message over the size limit: its header goes to the dead-letter
    /// topic, so someone can find it in the mailbox.
    async fn oversized(
        &self,
        session: &mut ImapSession,
        uid_validity: u32,
        uid: u32,
        size: u64,
    ) -> Result<Pending, ImapError> {
        let fetched: Vec<_> = self
            .command(
                "UID FETCH",
                session
                    .uid_fetch(uid.to_string(), "(UID INTERNALDATE BODY.PEEK[HEADER])")
                    .await?
                    .try_collect::<Vec<_>>(),
            )
            .await?;
        let fetch = fetched.iter().find(|f| f.uid == Some(uid));
        let header = fetch.and_then(|f| f.header()).unwrap_or_default().to_vec();
        let received_at = fetch.map_or_else(now, internal_date);
        let seen_id = header_message_id(&header)
            .unwrap_or_else(|| format!("imap:{}:{uid_validity}:{uid}", self.mailbox));
        let detail = format!(
            "message of {size} bytes is over the limit of {} bytes; header only",
            self.limits.max_message_bytes
        );
        Ok(Pending {
            uid,
            seen_id,
            entry: LogEntry::DeadLetter(Box::new(self.dead_letter(
                uid_validity,
                uid,
                header,
                "too_large",
                detail,
                received_at,
            ))),
        })
    }

    fn dead_letter(
        &self,
        uid_validity: u32,
        uid: u32,
        raw: Vec<u8>,
        reason: &str,
        detail: String,
        received_at: Timestamp,
    ) -> DeadLetter {
        let mut record = omni_connector::dead_letter(
            &self.context.channel_id,
            ChannelKind::Email,
            reason,
            &detail,
            raw,
            "message/rfc822",
            received_at,
        );
        record.metadata = self.location(uid_validity, uid).collect();
        record
    }

    /// Where a message was found, for people tracing an event back.
    fn location(&self, uid_validity: u32, uid: u32) -> impl Iterator<Item = (String, String)> {
        [
            ("imap_mailbox".to_owned(), self.mailbox.clone()),
            ("imap_uid_validity".to_owned(), uid_validity.to_string()),
            ("imap_uid".to_owned(), uid.to_string()),
        ]
        .into_iter()
    }
}

fn header_id_or_digest(raw: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let end = memchr::memmem::find(raw, b"\r\n\r\n").map_or(raw.len(), |i| i + 2);
    header_message_id(&raw[..end.min(64 * 1024)])
        .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(raw))))
}

/// When the server received the message (INTERNALDATE), or now if it
/// did not say.
fn internal_date(fetch: &async_imap::types::Fetch) -> Timestamp {
    fetch
        .internal_date()
        .map(|d| Timestamp {
            seconds: d.timestamp(),
            nanos: 0,
        })
        .unwrap_or_else(now)
}

fn now() -> Timestamp {
    omni_proto::timestamp(std::time::SystemTime::now())
}
