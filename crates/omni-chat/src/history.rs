//! Each visitor's recent conversation, kept in the channel's durable state
//! for the widget's `history` frame: the last `keep` messages both ways.
//! Appends of one channel are serialized, so two tabs writing at once do
//! not lose each other's entry.

use omni_connector::{ChannelState, StateUpdate, state::StateError};
use omni_proto::v1::ConversationEvent;

use crate::protocol::{HistoryEntry, ServerFrame};

/// The conversations of one channel.
#[derive(Debug)]
pub struct History {
    state: ChannelState,
    keep: usize,
    writing: tokio::sync::Mutex<()>,
}

fn key(visitor: &str) -> String {
    format!("history/{visitor}")
}

impl History {
    pub fn new(state: ChannelState, keep: usize) -> Self {
        Self {
            state,
            keep,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// The visitor's messages, oldest first (none if unreadable: the
    /// history is a convenience, the log has the messages).
    pub async fn load(&self, visitor: &str) -> Result<Vec<HistoryEntry>, StateError> {
        Ok(self
            .state
            .get(&key(visitor))
            .await?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default())
    }

    /// Adds `entry` (once: an entry already there by event id is kept as
    /// is), dropping the oldest beyond `keep`.
    pub async fn append(&self, visitor: &str, entry: HistoryEntry) -> Result<(), StateError> {
        if self.keep == 0 {
            return Ok(());
        }
        let _writing = self.writing.lock().await;
        let mut entries = self.load(visitor).await?;
        if entries.iter().any(|e| e.event_id == entry.event_id) {
            return Ok(());
        }
        entries.push(entry);
        let excess = entries.len().saturating_sub(self.keep);
        entries.drain(..excess);
        let bytes = serde_json::to_vec(&entries).unwrap_or_default();
        self.state
            .commit(StateUpdate {
                puts: vec![(key(visitor), bytes)],
                seen: Vec::new(),
            })
            .await
    }
}

/// The `reply` frame of an agent's reply kept in history.
pub fn reply_frame(entry: &HistoryEntry) -> ServerFrame {
    ServerFrame::Reply {
        event_id: entry.event_id.clone(),
        text: entry.text.clone(),
        sent_at: entry.sent_at,
    }
}

/// The history entry of an event the channel stores or sends.
pub fn entry(event: &ConversationEvent) -> Option<HistoryEntry> {
    crate::normalize::history_entry(event)
}
