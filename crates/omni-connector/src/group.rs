//! Group commit of one channel's state: many callers, one transaction.
//!
//! Each [`ChannelState::commit`] is a synchronous SQLite commit with an
//! fsync. A channel that writes state on a hot path (the web chat's
//! history, one write per reply pushed) then pays one fsync per request,
//! and callers queue behind each other's fsync. A [`GroupCommit`] keeps
//! every caller's promise (its `commit` returns only once its update is
//! durable) but commits every update submitted while a transaction is in
//! flight together in the next one: under load one fsync covers many
//! callers, and an idle channel still commits at once, since no timer
//! waits for company.
//!
//! Merged updates keep their submission order: a later put of a key wins
//! over an earlier one, and a put or delete of a key acts after every
//! earlier update's, exactly as if the updates had been committed one by
//! one. A failed transaction fails every caller of it; none of its
//! updates is stored.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

use crate::state::{ChannelState, StateError, StateUpdate};

/// Most updates one transaction takes: bounds a transaction's time (and
/// so the wait of the callers queued behind it) under a burst.
pub const MAX_BATCH: usize = 1_000;

/// The group committer of one channel's state. Clones share the queue.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: ChannelState,
    max_batch: usize,
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    /// A writer task is draining `waiting`; a new update only queues.
    writing: bool,
}

/// An update and where its outcome goes.
type Waiter = (StateUpdate, oneshot::Sender<Result<(), StateError>>);

impl GroupCommit {
    pub fn new(state: ChannelState) -> Self {
        Self::with_max_batch(state, MAX_BATCH)
    }

    /// A committer taking at most `max_batch` updates (at least 1) per
    /// transaction.
    pub fn with_max_batch(state: ChannelState, max_batch: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state,
                max_batch: max_batch.max(1),
                queue: Mutex::new(Queue::default()),
            }),
        }
    }

    /// The state it commits to, for reads.
    pub fn state(&self) -> &ChannelState {
        &self.inner.state
    }

    /// Commits `update` with whatever else is queued; returns once that
    /// transaction is durable, or with its error.
    ///
    /// The writing runs in a task of its own, so a caller that stops
    /// waiting (a timeout) neither stalls the others nor withdraws its
    /// update: like [`ChannelState::commit`], once called it may still be
    /// stored.
    pub async fn commit(&self, update: StateUpdate) -> Result<(), StateError> {
        let (done, outcome) = oneshot::channel();
        let start_writer = {
            let mut queue = self.inner.lock();
            queue.waiting.push_back((update, done));
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            tokio::spawn(write(Writer {
                inner: self.inner.clone(),
                finished: false,
            }));
        }
        outcome.await.unwrap_or_else(|_| {
            Err(StateError {
                path: String::new(),
                message: "the state's group commit stopped before this update was stored".into(),
            })
        })
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The writer's hold on the queue. If its task is dropped mid-way (the
/// runtime shutting down), the queue is released and the callers still
/// waiting are told (their senders drop), rather than waiting forever
/// for a writer that will never come.
struct Writer {
    inner: Arc<Inner>,
    finished: bool,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished {
            let mut queue = self.inner.lock();
            queue.writing = false;
            queue.waiting.clear();
        }
    }
}

/// Commits batches until the queue is empty, then ends (the next update
/// starts a new writer): the leader of a group commit, as a task.
async fn write(mut writer: Writer) {
    loop {
        let batch: Vec<Waiter> = {
            let mut queue = writer.inner.lock();
            if queue.waiting.is_empty() {
                queue.writing = false;
                writer.finished = true;
                return;
            }
            let take = queue.waiting.len().min(writer.inner.max_batch);
            queue.waiting.drain(..take).collect()
        };
        let (updates, waiters): (Vec<StateUpdate>, Vec<_>) = batch.into_iter().unzip();
        let merged = merge(updates);
        let outcome = if is_empty(&merged) {
            Ok(())
        } else {
            writer.inner.state.commit(merged).await
        };
        for done in waiters {
            // A caller that stopped waiting does not care.
            let _ = done.send(outcome.clone());
        }
    }
}

fn is_empty(update: &StateUpdate) -> bool {
    update.puts.is_empty() && update.seen.is_empty() && update.deletes.is_empty()
}

/// One update with the effect of `updates` applied in order. A store
/// applies an update's puts before its deletes, so concatenating would
/// let an earlier update's delete remove a later update's put of the same
/// key; instead each key keeps its last operation, a put (with its value)
/// or a delete. Seen ids accumulate (marking twice is marking once).
pub fn merge(updates: impl IntoIterator<Item = StateUpdate>) -> StateUpdate {
    // Each key's last operation, in the order keys were first touched.
    let mut last: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut seen = Vec::new();
    let mut set = |key: String, value: Option<Vec<u8>>| match at.get(&key) {
        Some(&i) => last[i].1 = value,
        None => {
            at.insert(key.clone(), last.len());
            last.push((key, value));
        }
    };
    for update in updates {
        for (key, value) in update.puts {
            set(key, Some(value));
        }
        for key in update.deletes {
            set(key, None);
        }
        seen.extend(update.seen);
    }
    let mut merged = StateUpdate {
        seen,
        ..StateUpdate::default()
    };
    for (key, value) in last {
        match value {
            Some(value) => merged.puts.push((key, value)),
            None => merged.deletes.push(key),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::CountingStateStore;

    fn put(key: &str, value: &str) -> StateUpdate {
        StateUpdate {
            puts: vec![(key.into(), value.as_bytes().to_vec())],
            ..StateUpdate::default()
        }
    }

    fn delete(key: &str) -> StateUpdate {
        StateUpdate {
            deletes: vec![key.into()],
            ..StateUpdate::default()
        }
    }

    #[test]
    fn merging_acts_as_committing_one_by_one() {
        let merged = merge([
            put("a", "1"),
            StateUpdate {
                puts: vec![("b".into(), b"1".to_vec()), ("c".into(), b"1".to_vec())],
                seen: vec!["m1".into()],
                deletes: vec!["c".into()],
            },
            put("a", "2"),
            delete("a"),
            put("a", "3"),
            delete("b"),
            StateUpdate {
                seen: vec!["m2".into()],
                ..StateUpdate::default()
            },
        ]);
        assert_eq!(
            merged,
            StateUpdate {
                puts: vec![("a".into(), b"3".to_vec())],
                seen: vec!["m1".into(), "m2".into()],
                deletes: vec!["b".into(), "c".into()],
            }
        );
        assert_eq!(merge([]), StateUpdate::default());
    }

    #[tokio::test]
    async fn concurrent_commits_all_land_in_fewer_transactions() {
        // 2 ms per transaction, as an fsync would take: updates queue
        // behind it and join the next one.
        let store = Arc::new(CountingStateStore::with_delay(Duration::from_millis(2)));
        let state = ChannelState::new(store.clone(), "c");
        let group = GroupCommit::new(state.clone());
        let callers = 200;
        let tasks: Vec<_> = (0..callers)
            .map(|i| {
                let group = group.clone();
                tokio::spawn(
                    async move { group.commit(put(&format!("k{i}"), &i.to_string())).await },
                )
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        for i in 0..callers {
            assert_eq!(
                state.get(&format!("k{i}")).await.unwrap(),
                Some(i.to_string().into_bytes())
            );
        }
        let commits = store.commits();
        assert!(
            (1..callers / 2).contains(&commits),
            "{commits} transactions for {callers} callers"
        );
    }

    #[tokio::test]
    async fn an_idle_channel_commits_at_once() {
        let store = Arc::new(CountingStateStore::default());
        let state = ChannelState::new(store.clone(), "c");
        let group = GroupCommit::new(state.clone());
        group.commit(put("k", "1")).await.unwrap();
        assert_eq!(store.commits(), 1);
        group.commit(put("k", "2")).await.unwrap();
        assert_eq!(store.commits(), 2, "each alone: nothing to wait for");
        assert_eq!(state.get("k").await.unwrap(), Some(b"2".to_vec()));
        group.commit(StateUpdate::default()).await.unwrap();
        assert_eq!(store.commits(), 2, "nothing to store, no transaction");
    }

    #[tokio::test]
    async fn a_failed_transaction_fails_each_of_its_callers() {
        let store = Arc::new(CountingStateStore::with_delay(Duration::from_millis(2)));
        let state = ChannelState::new(store.clone(), "c");
        let group = GroupCommit::new(state.clone());
        store.fail(true);
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let group = group.clone();
                tokio::spawn(async move { group.commit(put(&format!("k{i}"), "v")).await })
            })
            .collect();
        for task in tasks {
            let error = task.await.unwrap().unwrap_err();
            assert!(error.message.contains("refused"), "{error}");
        }
        assert_eq!(state.get("k0").await.unwrap(), None);
        store.fail(false);
        group.commit(put("k0", "v")).await.unwrap();
        assert_eq!(state.get("k0").await.unwrap(), Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn puts_to_one_key_keep_their_order_within_and_across_batches() {
        let store = Arc::new(CountingStateStore::with_delay(Duration::from_millis(1)));
        let state = ChannelState::new(store.clone(), "c");
        // Small batches, so the puts span several transactions.
        let group = GroupCommit::with_max_batch(state.clone(), 7);
        // Each submitted by its first poll, in order, then all awaited.
        let mut pending = Vec::new();
        for i in 0..50 {
            let update = if i == 25 {
                delete("k")
            } else {
                put("k", &i.to_string())
            };
            let mut commit = Box::pin(group.commit(update));
            assert!(futures::FutureExt::now_or_never(&mut commit).is_none());
            pending.push(commit);
        }
        for outcome in futures::future::join_all(pending).await {
            outcome.unwrap();
        }
        assert_eq!(state.get("k").await.unwrap(), Some(b"49".to_vec()));
        let stored = store.stored();
        assert!(
            (2..50).contains(&stored.len()),
            "{} transactions",
            stored.len()
        );
        // What each transaction left of the key, in commit order: the
        // submission order, a delete counting as 25.
        let values: Vec<i32> = stored
            .iter()
            .map(|update| {
                let put = update.puts.iter().find(|(key, _)| key == "k");
                match put {
                    Some((_, v)) => String::from_utf8_lossy(v).parse().unwrap(),
                    None => {
                        assert_eq!(update.deletes, ["k"]);
                        25
                    }
                }
            })
            .collect();
        let mut sorted = values.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(values, sorted, "values written out of order");
    }
}
