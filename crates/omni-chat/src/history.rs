//! Each visitor's recent conversation, kept in the channel's durable state
//! for the widget's `history` frame: the last `keep` messages both ways.
//!
//! An append reads the visitor's entries, adds one and writes them back,
//! so appends for one visitor are serialized (two tabs writing at once do
//! not lose each other's entry). Appends for different visitors run at
//! once, and their writes share transactions through a [`GroupCommit`]:
//! each visitor message and each agent reply is one append, and with one
//! channel-wide lock and a synchronous commit (an fsync) each, every
//! visitor's messages and the channel's replies waited for one another's
//! fsync.

use std::hash::{BuildHasher, RandomState};

use omni_connector::{ChannelState, GroupCommit, StateUpdate, state::StateError};
use omni_proto::v1::ConversationEvent;

use crate::protocol::{HistoryEntry, ServerFrame};

/// The conversations of one channel.
#[derive(Debug)]
pub struct History {
    state: ChannelState,
    keep: usize,
    writes: GroupCommit,
    /// Appends of visitors with the same stripe wait for each other: a
    /// bounded set of locks rather than one per visitor ever seen. Keyed
    /// by a hash random per process, so no visitor id can be chosen to
    /// share a stripe with another's.
    visitors: [tokio::sync::Mutex<()>; STRIPES],
    stripe_of: RandomState,
}

/// Locks visitors' appends are spread over: enough that appends for
/// different visitors rarely wait for each other.
const STRIPES: usize = 64;

fn key(visitor: &str) -> String {
    format!("history/{visitor}")
}

impl History {
    /// A history kept in `writes`' state, its writes grouped with the
    /// channel's other state writes.
    pub fn new(writes: GroupCommit, keep: usize) -> Self {
        Self {
            state: writes.state().clone(),
            writes,
            keep,
            visitors: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            stripe_of: RandomState::new(),
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
        let stripe = self.stripe_of.hash_one(visitor) as usize % STRIPES;
        let _writing = self.visitors[stripe].lock().await;
        let mut entries = self.load(visitor).await?;
        if entries.iter().any(|e| e.event_id == entry.event_id) {
            return Ok(());
        }
        entries.push(entry);
        let excess = entries.len().saturating_sub(self.keep);
        entries.drain(..excess);
        let bytes = serde_json::to_vec(&entries).unwrap_or_default();
        // Durable before returning: a reply reported as stored for the
        // visitor's next visit must survive a crash.
        self.writes
            .commit(StateUpdate {
                puts: vec![(key(visitor), bytes)],
                ..StateUpdate::default()
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, sync::Arc, time::Duration};

    use omni_connector::testing::CountingStateStore;

    use super::*;
    use crate::protocol::HistoryDirection;

    fn reply(id: String) -> HistoryEntry {
        HistoryEntry {
            event_id: id,
            direction: HistoryDirection::Outbound,
            text: "hello".into(),
            sent_at: omni_proto::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            },
            client_message_id: None,
            attachments: Vec::new(),
        }
    }

    fn ids(entries: &[HistoryEntry]) -> BTreeSet<String> {
        entries.iter().map(|e| e.event_id.clone()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_all_land_in_fewer_commits() {
        // Each commit takes 2 ms, as an fsync does, so appends overlap.
        let store = Arc::new(CountingStateStore::with_delay(Duration::from_millis(2)));
        let history = Arc::new(History::new(
            GroupCommit::new(ChannelState::new(store.clone(), "chat")),
            10,
        ));
        let (visitors, each) = (20, 10);
        let tasks: Vec<_> = (0..visitors * each)
            .map(|i| {
                let history = history.clone();
                // Interleaved: the appends of one visitor are in flight
                // together, as replies from several agents would be.
                let visitor = format!("v{}", i % visitors);
                let id = format!("{visitor}-e{}", i / visitors);
                tokio::spawn(async move { history.append(&visitor, reply(id)).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        for v in 0..visitors {
            let visitor = format!("v{v}");
            let expected: BTreeSet<String> = (0..each).map(|e| format!("{visitor}-e{e}")).collect();
            let entries = history.load(&visitor).await.unwrap();
            assert_eq!(entries.len(), each, "{visitor}");
            assert_eq!(ids(&entries), expected, "{visitor}");
        }
        let commits = store.commits();
        assert!(
            commits < visitors * each / 2,
            "{commits} commits for {} appends",
            visitors * each
        );

        // Beyond `keep`, the oldest goes; a repeated event id is kept once.
        let entries = history.load("v0").await.unwrap();
        history.append("v0", reply("v0-late".into())).await.unwrap();
        history.append("v0", reply("v0-late".into())).await.unwrap();
        let after = history.load("v0").await.unwrap();
        assert_eq!(after.len(), 10);
        assert_eq!(after[..9], entries[1..]);
        assert_eq!(after[9].event_id, "v0-late");
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_and_stores_nothing() {
        let store = Arc::new(CountingStateStore::default());
        let history = History::new(
            GroupCommit::new(ChannelState::new(store.clone(), "chat")),
            10,
        );
        store.fail(true);
        assert!(history.append("v", reply("e1".into())).await.is_err());
        store.fail(false);
        assert!(history.load("v").await.unwrap().is_empty());
    }
}
