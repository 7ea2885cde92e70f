//! How connectors hand events to the event log without depending on it.

use std::sync::Arc;

use futures::future::BoxFuture;
use omni_proto::{
    Timestamp,
    v1::{ChannelKind, ConversationEvent, DeadLetter},
};

/// What a connector can append.
#[derive(Debug, Clone, PartialEq)]
pub enum LogEntry {
    /// A normalized event for the inbound stream (a customer's message, a
    /// delivery status, an activity).
    Event(Box<ConversationEvent>),
    /// Authentic input that could not be normalized.
    DeadLetter(Box<DeadLetter>),
    /// A message for another channel to send, on the outbound stream, as a
    /// helpdesk would post it: a web chat reply the visitor did not read,
    /// sent on by email. The outbound dispatcher sends it once per event
    /// id, so a connector that appends it again after a crash sends
    /// nothing twice.
    Outbound(Box<ConversationEvent>),
}

/// The id of a dead-letter record: deterministic in the raw input, so a
/// provider retrying (or a mailbox re-fetching) the same bad input produces
/// one id.
pub fn dead_letter_id(channel_id: &str, raw: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(raw));
    omni_model::event_id(channel_id, &format!("dead-letter/{digest}")).to_string()
}

/// The dead-letter record of input that could not be normalized: the raw
/// bytes exactly as received, so nothing is lost and an operator (or a
/// fixed release) can replay it. Callers add `metadata` saying where it was
/// found (an IMAP UID, a topic offset, the HTTP method).
pub fn dead_letter(
    channel_id: &str,
    channel_kind: ChannelKind,
    reason: &str,
    detail: &str,
    raw: Vec<u8>,
    content_type: &str,
    received_at: Timestamp,
) -> DeadLetter {
    DeadLetter {
        dead_letter_id: dead_letter_id(channel_id, &raw),
        channel_id: channel_id.to_owned(),
        channel_kind: channel_kind as i32,
        reason: reason.to_owned(),
        detail: detail.to_owned(),
        raw_payload: raw,
        content_type: content_type.to_owned(),
        received_at: Some(received_at),
        metadata: Default::default(),
    }
}

/// Where an entry landed, once durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub partition: i32,
    pub offset: i64,
}

/// Why an entry was not stored. Every variant means "not durable": the
/// connector must not acknowledge upstream and should let the provider
/// retry.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("event log is overloaded")]
    Overloaded,
    #[error("event log is shut down")]
    Closed,
    #[error("event log failed to store the entry: {0}")]
    Failed(String),
}

/// Resolves when the entry is durable (Ok) or will never be (Err).
pub type Ack = BoxFuture<'static, Result<Receipt, SendError>>;

/// The event log as connectors see it, implemented by the daemon.
///
/// `submit` enqueues the entry before it returns, so entries submitted one
/// after another keep their order in the log even though their
/// acknowledgements are awaited concurrently; only the returned future
/// waits for durability.
pub trait EventSink: Send + Sync + 'static {
    fn submit(&self, entry: LogEntry) -> Ack;
}

/// A connector's handle to the event log.
#[derive(Clone)]
pub struct EventSender {
    sink: Arc<dyn EventSink>,
}

impl std::fmt::Debug for EventSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSender").finish_non_exhaustive()
    }
}

impl EventSender {
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        Self { sink }
    }

    /// Appends any entry; see [`EventSink::submit`] for ordering.
    pub fn send(&self, entry: LogEntry) -> Ack {
        self.sink.submit(entry)
    }

    /// Appends a normalized event; see [`EventSink::submit`] for ordering.
    pub fn send_event(&self, event: ConversationEvent) -> Ack {
        self.sink.submit(LogEntry::Event(Box::new(event)))
    }

    /// Appends a message to the outbound stream, for the channel it names
    /// to send; see [`LogEntry::Outbound`].
    pub fn send_outbound(&self, event: ConversationEvent) -> Ack {
        self.sink.submit(LogEntry::Outbound(Box::new(event)))
    }

    /// Appends a dead-letter record.
    pub fn send_dead_letter(&self, dead_letter: DeadLetter) -> Ack {
        self.sink
            .submit(LogEntry::DeadLetter(Box::new(dead_letter)))
    }
}
