//! What the channel remembers between POSTs, written in groups: the ids
//! already appended (so Meta's redeliveries are dropped before the log)
//! and each customer's latest message time (for the reply window).
//!
//! Writing both in the POST's own state commit cost a synchronous SQLite
//! commit (an fsync) per POST on top of the log's group commit, which
//! tripled the CPU of a one-message POST. Marks are instead kept in memory
//! until a writer task commits everything pending in one transaction;
//! under load, one commit covers many POSTs. Lookups see pending marks
//! too, so a redelivery arriving before the commit is still dropped.
//!
//! Lookups of ids not pending are batched the same way: a reader task
//! answers every lookup queued meanwhile with one trip to the store's
//! thread, since a thread hand-off per POST was most of a small POST's
//! cost.
//!
//! The channel flushes its marks when it stops (a deploy, a reload).
//! Losing pending marks (a crash) costs nothing that matters: a redelivery
//! is then appended again with the same event id and dropped downstream by
//! the threading service, and a lost window time is refreshed by the
//! customer's next message. Nothing acknowledged depends on the marks.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
};

use omni_connector::{ChannelState, state::StateError};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::window;

/// The marks of one channel.
#[derive(Debug)]
pub struct Marks {
    shared: Arc<Shared>,
    writer: OnceLock<()>,
    reader: OnceLock<mpsc::UnboundedSender<Lookup>>,
}

/// Ids to look up in the store, and where the answer goes.
type Lookup = (Vec<String>, oneshot::Sender<Result<Vec<bool>, StateError>>);

/// The least time between two commits of marks.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Most ids one store trip looks up.
const MAX_LOOKUP_BATCH: usize = 4096;

#[derive(Debug)]
struct Shared {
    state: ChannelState,
    channel_id: String,
    pending: Mutex<Pending>,
    wake: Notify,
    /// Held for a whole write, so a flush waits for one in flight.
    write: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Not yet handed to the writer.
    seen: HashSet<String>,
    windows: HashMap<String, i64>,
    /// Being committed right now: still only in memory.
    writing: HashSet<String>,
    writing_windows: HashMap<String, i64>,
}

impl Marks {
    pub fn new(state: ChannelState, channel_id: &str) -> Self {
        Self {
            shared: Arc::new(Shared {
                state,
                channel_id: channel_id.to_owned(),
                pending: Mutex::new(Pending::default()),
                wake: Notify::new(),
                write: tokio::sync::Mutex::new(()),
            }),
            writer: OnceLock::new(),
            reader: OnceLock::new(),
        }
    }

    /// For each id, whether it was appended before (committed or pending).
    pub async fn seen(&self, ids: &[String]) -> Result<Vec<bool>, StateError> {
        let mut answer = vec![false; ids.len()];
        let mut unknown = Vec::new();
        {
            let pending = self.shared.lock();
            for (i, id) in ids.iter().enumerate() {
                if pending.seen.contains(id) || pending.writing.contains(id) {
                    answer[i] = true;
                } else {
                    unknown.push(i);
                }
            }
        }
        if unknown.is_empty() {
            return Ok(answer);
        }
        let (answer_to, answered) = oneshot::channel();
        let reader = self.reader.get_or_init(|| {
            let (queue, lookups) = mpsc::unbounded_channel();
            tokio::spawn(read_forever(self.shared.state.clone(), lookups));
            queue
        });
        let lookup = (unknown.iter().map(|&i| ids[i].clone()).collect(), answer_to);
        let closed = || StateError {
            path: String::new(),
            message: "the seen-mark reader stopped".into(),
        };
        reader.send(lookup).map_err(|_| closed())?;
        let stored = answered.await.map_err(|_| closed())??;
        for (i, seen) in unknown.into_iter().zip(stored) {
            answer[i] = seen;
        }
        Ok(answer)
    }

    /// Records that customers wrote at these times (seconds since the
    /// epoch), keeping the latest per customer.
    pub fn wrote(&self, messages: impl IntoIterator<Item = (String, i64)>) {
        let mut any = false;
        {
            let mut pending = self.shared.lock();
            for (customer, at) in messages {
                let slot = pending.windows.entry(customer).or_insert(at);
                *slot = (*slot).max(at);
                any = true;
            }
        }
        if any {
            self.wake();
        }
    }

    /// Records that these event ids are durable in the log.
    pub fn appended(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        self.shared.lock().seen.extend(ids.iter().cloned());
        self.wake();
    }

    /// The latest pending message time of `customer`, not yet committed.
    pub fn pending_window(&self, customer: &str) -> Option<i64> {
        let pending = self.shared.lock();
        let a = pending.windows.get(customer).copied();
        let b = pending.writing_windows.get(customer).copied();
        a.max(b)
    }

    /// Wakes the writer, starting it on first use (the channel may be
    /// built outside a runtime, as `check-config` does).
    fn wake(&self) {
        self.writer.get_or_init(|| {
            let shared = self.shared.clone();
            tokio::spawn(write_forever(Arc::downgrade(&shared)));
        });
        self.shared.wake.notify_one();
    }

    /// Commits everything pending now (tests, and shutdown paths).
    pub async fn flush(&self) -> Result<(), StateError> {
        self.shared.write_once().await
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves what is pending to `writing`, commits it in one transaction,
    /// then forgets it (it is in the store). On failure the marks go back
    /// to pending for the next round.
    async fn write_once(&self) -> Result<(), StateError> {
        let _writing = self.write.lock().await;
        let (seen, windows) = {
            let mut pending = self.lock();
            if pending.seen.is_empty() && pending.windows.is_empty() {
                return Ok(());
            }
            let seen = std::mem::take(&mut pending.seen);
            let windows = std::mem::take(&mut pending.windows);
            pending.writing.extend(seen.iter().cloned());
            pending
                .writing_windows
                .extend(windows.iter().map(|(c, t)| (c.clone(), *t)));
            (seen, windows)
        };
        let result = window::record(
            &self.state,
            windows.iter().map(|(c, t)| (c.clone(), *t)),
            seen.iter().cloned().collect(),
        )
        .await;
        let mut pending = self.lock();
        pending.writing.clear();
        pending.writing_windows.clear();
        if result.is_err() {
            pending.seen.extend(seen);
            for (customer, at) in windows {
                let slot = pending.windows.entry(customer).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
        result
    }
}

/// The reader: answers every lookup queued while the previous trip ran
/// with one trip. Ends when the channel (the queue's sender) is dropped.
async fn read_forever(state: ChannelState, mut lookups: mpsc::UnboundedReceiver<Lookup>) {
    while let Some(first) = lookups.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].0.len();
        while count < MAX_LOOKUP_BATCH {
            match lookups.try_recv() {
                Ok(lookup) => {
                    count += lookup.0.len();
                    batch.push(lookup);
                }
                Err(_) => break,
            }
        }
        let ids: Vec<String> = batch
            .iter()
            .flat_map(|(ids, _)| ids.iter().cloned())
            .collect();
        let mut answers = state.seen(ids).await.map(Vec::into_iter);
        for (ids, answer_to) in batch {
            let answer = match &mut answers {
                Ok(all) => Ok(all.by_ref().take(ids.len()).collect()),
                Err(e) => Err(e.clone()),
            };
            let _ = answer_to.send(answer);
        }
    }
}

/// The writer: one commit per wake-up, covering everything that arrived
/// meanwhile. Ends when the channel is dropped (a reload replaced it).
async fn write_forever(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if let Err(e) = strong.write_once().await {
            tracing::warn!(channel = %strong.channel_id, error = %e, "could not store seen marks; retrying");
            drop(strong);
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        // Marks arriving in the next moments join the next commit: a
        // synchronous commit (an fsync) per group rather than per POST,
        // while the log's own commits keep the disk busy. A wake-up
        // meanwhile left a permit, so nothing is missed; the bounded wait
        // lets a dropped channel's writer end.
        tokio::time::sleep(COALESCE).await;
        let wait = async {
            let notified = strong.wake.notified();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), notified).await;
        };
        wait.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pending_marks_count_before_and_after_the_commit() {
        let state = ChannelState::memory("wa");
        let marks = Marks::new(state.clone(), "wa");
        let ids = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(marks.seen(&ids).await.unwrap(), [false, false]);
        marks.appended(&ids[..1]);
        marks.wrote([("155".to_owned(), 10), ("155".to_owned(), 30)]);
        // Seen at once, whether or not the writer has committed yet.
        assert_eq!(marks.seen(&ids).await.unwrap(), [true, false]);
        let stored = window::last_message(&state, "155").await.unwrap();
        assert_eq!(marks.pending_window("155").max(stored), Some(30));
        marks.flush().await.unwrap();
        assert_eq!(state.seen(ids.clone()).await.unwrap(), [true, false]);
        assert_eq!(window::last_message(&state, "155").await.unwrap(), Some(30));
        assert_eq!(marks.pending_window("155"), None);
        assert_eq!(marks.seen(&ids).await.unwrap(), [true, false]);
    }

    #[tokio::test]
    async fn the_writer_commits_without_being_asked() {
        let state = ChannelState::memory("wa");
        let marks = Marks::new(state.clone(), "wa");
        marks.appended(&["x".to_owned()]);
        for _ in 0..200 {
            if state.seen(vec!["x".into()]).await.unwrap()[0] {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the mark was never committed");
    }
}
