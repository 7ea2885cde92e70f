//! Replies a visitor did not see, sent on by email: a reply that found no
//! open tab is queued in the channel's state, and once `after` has passed
//! without the visitor reading it, it goes out through an email channel of
//! the daemon, once.
//!
//! The queue lives in the channel's durable state, keyed by due time
//! (`offline/due/<millis, 16 digits>/<reply event id>`), so a restart
//! loses nothing and the mailer walks it in order without holding it in
//! memory. The email is appended to the outbound stream with an event id
//! derived from the reply's, and the queue entry is removed only after
//! that append is durable: a crash in between appends it again, and the
//! outbound dispatcher, which sends each event id once, sends it once.

use std::time::{Duration, SystemTime};

use omni_connector::{ChannelState, EventSender, StateUpdate, state::StateError};
use omni_proto::{
    Timestamp,
    v1::{
        ChannelKind, Content, ConversationEvent, Direction, EventKind, HandleKind, IdentityHandle,
    },
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::events::ChatMetrics;

const DUE_PREFIX: &str = "offline/due/";
const QUEUED_PREFIX: &str = "offline/queued/";

/// Queue entries read per pass: bounds the mailer's memory, not its rate
/// (it reads again at once while entries are due).
const BATCH: usize = 100;

/// How often the mailer looks for due replies.
const TICK: Duration = Duration::from_secs(1);

/// Where and when unseen replies are emailed (`offline_email`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineMail {
    /// The email channel that sends them.
    pub channel: String,
    /// How long a reply may stay unread before it is emailed.
    pub after: Duration,
    /// The email's subject.
    pub subject: String,
}

/// The address a visitor left for replies while away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Normalized (`omni_model::Handle::email`).
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A reply waiting to be emailed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub visitor: String,
    pub contact: Contact,
    pub reply_event_id: String,
    pub text: String,
    /// When the reply was sent, in seconds since the epoch.
    pub sent_at: i64,
}

/// The state key of a visitor's contact address.
pub fn contact_key(visitor: &str) -> String {
    format!("contact/{visitor}")
}

/// The seen mark the visitor's `read` of a reply leaves: the mailer skips
/// a reply so marked.
pub fn read_mark(reply_event_id: &str) -> String {
    format!("read/{reply_event_id}")
}

/// The queue key of a reply due at `due_ms`; zero-padded, so the keys'
/// byte order is the due order.
pub fn due_key(due_ms: u64, reply_event_id: &str) -> String {
    format!("{DUE_PREFIX}{due_ms:016}/{reply_event_id}")
}

/// The key saying a reply is queued, whatever its due time: a reply the
/// outbound dispatcher hands over again (after a crash) is not queued
/// twice.
fn queued_key(reply_event_id: &str) -> String {
    format!("{QUEUED_PREFIX}{reply_event_id}")
}

/// The due time in a queue key, if it is one.
fn due_of(key: &str) -> Option<u64> {
    key.strip_prefix(DUE_PREFIX)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// The reply event id in a queue key, if it is one.
fn reply_of(key: &str) -> Option<&str> {
    key.strip_prefix(DUE_PREFIX)?
        .split_once('/')
        .map(|(_, id)| id)
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The provider message id (the idempotency key) of the email of one
/// reply: a reply is emailed once, whatever happens in between.
pub fn email_key(chat_channel: &str, reply_event_id: &str) -> String {
    format!("webchat/{chat_channel}/{reply_event_id}")
}

/// The outbound email carrying `pending`, for `mail.channel`. Pure.
pub fn email_event(
    chat_channel: &str,
    mail: &OfflineMail,
    pending: &Pending,
    now: Timestamp,
) -> ConversationEvent {
    let key = email_key(chat_channel, &pending.reply_event_id);
    // Stored addresses were normalized when saved, so this is the handle
    // `omni_model::Handle::email` made of what the visitor typed.
    let recipient = IdentityHandle {
        kind: HandleKind::Email as i32,
        value: pending.contact.email.clone(),
        display_name: pending.contact.name.clone().unwrap_or_default(),
        ..IdentityHandle::default()
    };
    ConversationEvent {
        event_id: omni_model::event_id(&mail.channel, &key).to_string(),
        channel_id: mail.channel.clone(),
        channel_kind: ChannelKind::Email as i32,
        direction: Direction::Outbound as i32,
        kind: EventKind::Message as i32,
        provider_message_id: key,
        recipients: vec![recipient],
        content: Some(Content {
            subject: mail.subject.clone(),
            text: pending.text.clone(),
            ..Content::default()
        }),
        ingested_at: Some(now),
        provider_metadata: [
            ("webchat.channel_id", chat_channel),
            ("webchat.visitor_id", &pending.visitor),
            ("webchat.reply_event_id", &pending.reply_event_id),
            ("auto_acknowledgement", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ..ConversationEvent::default()
    }
}

/// The visitor's contact address, if one was left.
pub async fn load_contact(
    state: &ChannelState,
    visitor: &str,
) -> Result<Option<Contact>, StateError> {
    Ok(state
        .get(&contact_key(visitor))
        .await?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// Keeps `contact` as the visitor's address.
pub async fn save_contact(
    state: &ChannelState,
    visitor: &str,
    contact: &Contact,
) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(contact).unwrap_or_default();
    state
        .commit(StateUpdate {
            puts: vec![(contact_key(visitor), bytes)],
            ..StateUpdate::default()
        })
        .await
}

/// Queues `pending` to be emailed `after` from `now`, unless it is
/// queued already.
pub async fn schedule(
    state: &ChannelState,
    after: Duration,
    pending: &Pending,
    now: SystemTime,
) -> Result<(), StateError> {
    let queued = queued_key(&pending.reply_event_id);
    if state.get(&queued).await?.is_some() {
        return Ok(());
    }
    let due = due_key(millis(now + after), &pending.reply_event_id);
    let bytes = serde_json::to_vec(pending).unwrap_or_default();
    state
        .commit(StateUpdate {
            puts: vec![(due.clone(), bytes), (queued, due.into_bytes())],
            ..StateUpdate::default()
        })
        .await
}

/// Works the queue of one channel.
#[derive(Debug)]
pub struct Mailer {
    pub chat_channel: String,
    pub mail: OfflineMail,
    pub state: ChannelState,
    pub sender: EventSender,
    pub metrics: ChatMetrics,
}

/// What one pass over the queue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub emailed: usize,
    pub read: usize,
    /// Whether more were due than one batch holds.
    pub more: bool,
}

impl Mailer {
    /// Until `shutdown`: every second, emails the replies that are due.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let pass = self.pass(SystemTime::now()).await;
            let more = match pass {
                Ok(pass) => pass.more,
                Err(error) => {
                    // The entries stay queued and are tried again.
                    tracing::warn!(channel = %self.chat_channel, error = %error, "offline replies not emailed yet");
                    false
                }
            };
            if more {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Emails every reply due by `now` (a batch at most), skipping those
    /// the visitor has read meanwhile.
    pub async fn pass(&self, now: SystemTime) -> Result<Pass, MailError> {
        let now_ms = millis(now);
        let entries = self.state.scan(DUE_PREFIX, BATCH).await?;
        let full = entries.len() == BATCH;
        let due: Vec<(String, Pending)> = entries
            .into_iter()
            .take_while(|(key, _)| due_of(key).is_some_and(|due| due <= now_ms))
            .map(|(key, bytes)| {
                let pending = serde_json::from_slice(&bytes).ok();
                (key, pending)
            })
            .filter_map(|(key, pending)| match pending {
                Some(pending) => Some((key, pending)),
                None => {
                    // Written by this module, so unreadable only if the
                    // format changed: dropped, and said.
                    tracing::warn!(channel = %self.chat_channel, key = %key, "unreadable offline reply dropped");
                    None
                }
            })
            .collect();
        let mut pass = Pass {
            more: full && due.len() == BATCH,
            ..Pass::default()
        };
        if due.is_empty() {
            return Ok(pass);
        }
        let marks = due
            .iter()
            .map(|(_, p)| read_mark(&p.reply_event_id))
            .collect();
        let read = self.state.seen(marks).await?;
        let mut done = Vec::with_capacity(due.len());
        let mut acks = Vec::new();
        for ((key, pending), read) in due.into_iter().zip(read) {
            if read {
                pass.read += 1;
                done.push(key);
                continue;
            }
            let event = email_event(
                &self.chat_channel,
                &self.mail,
                &pending,
                omni_proto::timestamp(now),
            );
            acks.push((key, self.sender.send_outbound(event)));
        }
        // Submitted in due order; removed only once durable.
        for (key, ack) in acks {
            match ack.await {
                Ok(_) => {
                    pass.emailed += 1;
                    done.push(key);
                }
                Err(error) => {
                    self.finish(done, &pass).await?;
                    return Err(MailError::Log(error));
                }
            }
        }
        self.finish(done, &pass).await?;
        Ok(pass)
    }

    async fn finish(&self, done: Vec<String>, pass: &Pass) -> Result<(), MailError> {
        self.metrics.offline_emailed.increment(pass.emailed as u64);
        self.metrics.offline_read.increment(pass.read as u64);
        if done.is_empty() {
            return Ok(());
        }
        let queued = done.iter().filter_map(|key| reply_of(key)).map(queued_key);
        let deletes = queued.chain(done.iter().cloned()).collect();
        self.state
            .commit(StateUpdate {
                deletes,
                ..StateUpdate::default()
            })
            .await?;
        Ok(())
    }
}

/// Why a pass stopped; what was due stays queued.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("the channel's state: {0}")]
    State(#[from] StateError),
    #[error("the outbound stream: {0}")]
    Log(omni_connector::SendError),
}

#[cfg(test)]
mod tests {
    use omni_connector::{LogEntry, SendError, testing::MemorySink};

    use super::*;

    fn mailer(sink: &MemorySink, state: &ChannelState) -> Mailer {
        Mailer {
            chat_channel: "site-chat".into(),
            mail: OfflineMail {
                channel: "support-mail".into(),
                after: Duration::from_secs(300),
                subject: "Your chat with Acme".into(),
            },
            state: state.clone(),
            sender: EventSender::new(std::sync::Arc::new(sink.clone())),
            metrics: ChatMetrics::register("site-chat"),
        }
    }

    fn pending(reply: &str) -> Pending {
        Pending {
            visitor: "v_0123456789abcdefghijkl".into(),
            contact: Contact {
                email: "ana@example.com".into(),
                name: Some("Ana Lima".into()),
            },
            reply_event_id: reply.into(),
            text: "It ships today.".into(),
            sent_at: 1_765_000_000,
        }
    }

    fn outbound(sink: &MemorySink) -> Vec<ConversationEvent> {
        sink.entries()
            .into_iter()
            .filter_map(|entry| match entry {
                LogEntry::Outbound(event) => Some(*event),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn queue_keys_sort_by_due_time() {
        let a = due_key(999, "r");
        let b = due_key(1_000, "r");
        assert!(a < b, "{a} < {b}");
        assert_eq!(due_of(&b), Some(1_000));
        assert_eq!(reply_of(&b), Some("r"));
        assert_eq!(due_of("offline/due/x/r"), None);
    }

    #[test]
    fn the_email_is_an_outbound_message_with_a_key_of_the_reply() {
        let mail = OfflineMail {
            channel: "support-mail".into(),
            after: Duration::from_secs(60),
            subject: "Your chat with Acme".into(),
        };
        let event = email_event("site-chat", &mail, &pending("r1"), Timestamp::default());
        assert_eq!(event.channel_id, "support-mail");
        assert_eq!(event.direction, Direction::Outbound as i32);
        assert_eq!(event.kind, EventKind::Message as i32);
        assert_eq!(event.provider_message_id, "webchat/site-chat/r1");
        assert_eq!(
            event.event_id,
            omni_model::event_id("support-mail", "webchat/site-chat/r1").to_string()
        );
        let to = &event.recipients[0];
        assert_eq!(
            (to.kind, to.value.as_str(), to.display_name.as_str()),
            (
                omni_proto::v1::HandleKind::Email as i32,
                "ana@example.com",
                "Ana Lima"
            )
        );
        let content = event.content.unwrap();
        assert_eq!(content.subject, "Your chat with Acme");
        assert_eq!(content.text, "It ships today.");
        assert_eq!(event.provider_metadata["webchat.reply_event_id"], "r1");
        // Another reply, another email; the same reply, the same event.
        let again = email_event("site-chat", &mail, &pending("r1"), Timestamp::default());
        let other = email_event("site-chat", &mail, &pending("r2"), Timestamp::default());
        assert_eq!(again.event_id, event.event_id);
        assert_ne!(other.event_id, event.event_id);
    }

    #[tokio::test]
    async fn due_replies_are_emailed_once_and_read_ones_not_at_all() {
        let (sink, state) = (MemorySink::default(), ChannelState::memory("site-chat"));
        let mailer = mailer(&sink, &state);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        let after = Duration::from_secs(300);
        for (i, reply) in ["r1", "r2", "r3"].into_iter().enumerate() {
            let at = t0 + Duration::from_secs(i as u64);
            schedule(&state, after, &pending(reply), at).await.unwrap();
        }
        // The visitor reads r2 in time.
        state
            .commit(StateUpdate {
                seen: vec![read_mark("r2")],
                ..StateUpdate::default()
            })
            .await
            .unwrap();
        // Nothing is due before its time.
        let early = mailer
            .pass(t0 + after - Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(early, Pass::default());
        assert!(outbound(&sink).is_empty());
        // r1 and r2 are due: r1 is emailed, r2 was read.
        let pass = mailer
            .pass(t0 + after + Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!((pass.emailed, pass.read), (1, 1));
        let sent = outbound(&sink);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].provider_metadata["webchat.reply_event_id"], "r1");
        // Later passes send r3 alone, then nothing.
        let later = t0 + after + Duration::from_secs(10);
        assert_eq!(mailer.pass(later).await.unwrap().emailed, 1);
        assert_eq!(mailer.pass(later).await.unwrap(), Pass::default());
        let sent = outbound(&sink);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1].provider_metadata["webchat.reply_event_id"], "r3");
        assert!(state.scan(DUE_PREFIX, 10).await.unwrap().is_empty());
        assert!(state.scan(QUEUED_PREFIX, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_reply_handed_over_again_is_queued_once() {
        let (sink, state) = (MemorySink::default(), ChannelState::memory("site-chat"));
        let mailer = mailer(&sink, &state);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        let after = Duration::from_secs(60);
        schedule(&state, after, &pending("r1"), t0).await.unwrap();
        schedule(&state, after, &pending("r1"), t0 + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(state.scan(DUE_PREFIX, 10).await.unwrap().len(), 1);
        let pass = mailer.pass(t0 + Duration::from_secs(120)).await.unwrap();
        assert_eq!(pass.emailed, 1);
        assert_eq!(outbound(&sink).len(), 1);
    }

    #[tokio::test]
    async fn a_log_failure_keeps_the_reply_queued() {
        let (sink, state) = (MemorySink::default(), ChannelState::memory("site-chat"));
        let mailer = mailer(&sink, &state);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        schedule(&state, Duration::ZERO, &pending("r1"), t0)
            .await
            .unwrap();
        sink.fail_with(Some(SendError::Overloaded));
        assert!(matches!(
            mailer.pass(t0).await,
            Err(MailError::Log(SendError::Overloaded))
        ));
        assert_eq!(state.scan(DUE_PREFIX, 10).await.unwrap().len(), 1);
        sink.fail_with(None);
        assert_eq!(mailer.pass(t0).await.unwrap().emailed, 1);
        assert_eq!(outbound(&sink).len(), 1);
    }

    #[tokio::test]
    async fn a_long_queue_is_worked_in_batches() {
        let (sink, state) = (MemorySink::default(), ChannelState::memory("site-chat"));
        let mailer = mailer(&sink, &state);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        for i in 0..(BATCH + 5) {
            schedule(&state, Duration::ZERO, &pending(&format!("r{i:03}")), t0)
                .await
                .unwrap();
        }
        let first = mailer.pass(t0).await.unwrap();
        assert_eq!((first.emailed, first.more), (BATCH, true));
        let second = mailer.pass(t0).await.unwrap();
        assert_eq!((second.emailed, second.more), (5, false));
        assert_eq!(outbound(&sink).len(), BATCH + 5);
    }
}
