//! Durable per-channel state for pull connectors: checkpoints (an IMAP
//! mailbox's UIDVALIDITY and last UID, a Telegram update offset) and a
//! "seen" set of provider message ids for deduplication.
//!
//! A connector writes its checkpoint only after the events it covers are
//! durable in the event log, and writes the seen marks in the same
//! transaction, so after any crash the checkpoint never claims more than
//! the log holds. The worst case is a replay of events whose ids the log
//! already has, which consumers drop by event id.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, Clone, thiserror::Error)]
#[error("connector state {path}: {message}")]
pub struct StateError {
    pub path: String,
    pub message: String,
}

/// Changes applied together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateUpdate {
    /// Keys to set.
    pub puts: Vec<(String, Vec<u8>)>,
    /// Ids to mark as seen.
    pub seen: Vec<String>,
    /// Keys to remove (after the puts, so a key in both is removed).
    pub deletes: Vec<String>,
}

/// Where channels keep their state. Blocking: [`ChannelState`] runs the
/// calls off the async threads.
pub trait StateStore: Send + Sync + std::fmt::Debug + 'static {
    fn get(&self, channel: &str, key: &str) -> Result<Option<Vec<u8>>, StateError>;
    fn commit(&self, channel: &str, update: &StateUpdate) -> Result<(), StateError>;
    /// For each id, whether it was marked seen.
    fn seen(&self, channel: &str, ids: &[String]) -> Result<Vec<bool>, StateError>;
    /// Up to `limit` keys starting with `prefix`, in byte order of the key,
    /// with their values: how a channel walks a queue it keys by time
    /// (`due/<zero-padded millis>/...`) without holding it in memory.
    fn scan(
        &self,
        channel: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StateError>;
}

/// One channel's view of the store.
#[derive(Debug, Clone)]
pub struct ChannelState {
    store: Arc<dyn StateStore>,
    channel: Arc<str>,
}

impl ChannelState {
    pub fn new(store: Arc<dyn StateStore>, channel: &str) -> Self {
        Self {
            store,
            channel: channel.into(),
        }
    }

    /// A throwaway in-memory state, for tests and `check-config`.
    pub fn memory(channel: &str) -> Self {
        Self::new(Arc::new(MemoryStateStore::default()), channel)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let (store, channel, key) = (self.store.clone(), self.channel.clone(), key.to_owned());
        blocking(move || store.get(&channel, &key)).await
    }

    /// Several keys in one trip to the store's thread.
    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let (store, channel) = (self.store.clone(), self.channel.clone());
        blocking(move || keys.iter().map(|key| store.get(&channel, key)).collect()).await
    }

    pub async fn commit(&self, update: StateUpdate) -> Result<(), StateError> {
        let (store, channel) = (self.store.clone(), self.channel.clone());
        blocking(move || store.commit(&channel, &update)).await
    }

    pub async fn seen(&self, ids: Vec<String>) -> Result<Vec<bool>, StateError> {
        let (store, channel) = (self.store.clone(), self.channel.clone());
        blocking(move || store.seen(&channel, &ids)).await
    }

    /// See [`StateStore::scan`].
    pub async fn scan(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let (store, channel, prefix) =
            (self.store.clone(), self.channel.clone(), prefix.to_owned());
        blocking(move || store.scan(&channel, &prefix, limit)).await
    }
}

/// The least string greater than every string starting with `prefix`, in
/// byte order; `None` when there is none (an empty prefix, or one of only
/// U+10FFFF), and the scan then has no upper bound.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // The next scalar value after `last` (skipping the surrogates).
        let next = match last as u32 {
            0xD7FF => Some('\u{E000}'),
            n => char::from_u32(n + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StateError {
            path: String::new(),
            message: format!("state task failed: {e}"),
        })
    })
}

/// State in one SQLite file (WAL, `synchronous = FULL`), shared by every
/// channel of the daemon. Reads have a connection of their own, so a
/// lookup never waits behind another channel's commit and its fsync (WAL
/// lets one writer and readers run at once; a read sees every commit that
/// finished before it began).
#[derive(Debug)]
pub struct SqliteStateStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl SqliteStateStore {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let fail = |e: rusqlite::Error| StateError {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StateError {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        let conn = Connection::open(path).map_err(fail)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS checkpoints (
                 channel TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                 PRIMARY KEY (channel, key)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS seen (
                 channel TEXT NOT NULL, id TEXT NOT NULL, seen_at INTEGER NOT NULL,
                 PRIMARY KEY (channel, id)) WITHOUT ROWID;",
        )
        .map_err(fail)?;
        let reader = Connection::open(path).map_err(fail)?;
        reader
            .execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")
            .map_err(fail)?;
        Ok(Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
        })
    }

    fn error(&self, e: rusqlite::Error) -> StateError {
        StateError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StateStore for SqliteStateStore {
    fn get(&self, channel: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.reader()
            .query_row(
                "SELECT value FROM checkpoints WHERE channel = ?1 AND key = ?2",
                params![channel, key],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    fn commit(&self, channel: &str, update: &StateUpdate) -> Result<(), StateError> {
        let mut conn = self.conn();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO checkpoints (channel, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (channel, key) DO UPDATE SET value = excluded.value",
                )
                .map_err(|e| self.error(e))?;
            for (key, value) in &update.puts {
                put.execute(params![channel, key, value])
                    .map_err(|e| self.error(e))?;
            }
            let mut mark = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO seen (channel, id, seen_at) VALUES (?1, ?2, ?3)",
                )
                .map_err(|e| self.error(e))?;
            for id in &update.seen {
                mark.execute(params![channel, id, now])
                    .map_err(|e| self.error(e))?;
            }
            let mut delete = tx
                .prepare_cached("DELETE FROM checkpoints WHERE channel = ?1 AND key = ?2")
                .map_err(|e| self.error(e))?;
            for key in &update.deletes {
                delete
                    .execute(params![channel, key])
                    .map_err(|e| self.error(e))?;
            }
        }
        tx.commit().map_err(|e| self.error(e))
    }

    fn seen(&self, channel: &str, ids: &[String]) -> Result<Vec<bool>, StateError> {
        let conn = self.reader();
        let mut query = conn
            .prepare_cached("SELECT 1 FROM seen WHERE channel = ?1 AND id = ?2")
            .map_err(|e| self.error(e))?;
        ids.iter()
            .map(|id| {
                query
                    .exists(params![channel, id])
                    .map_err(|e| self.error(e))
            })
            .collect()
    }

    fn scan(
        &self,
        channel: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        // A key range, not `LIKE`, so the primary key's order serves it.
        let conn = self.reader();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match prefix_end(prefix) {
            Some(end) => {
                let mut query = conn
                    .prepare_cached(
                        "SELECT key, value FROM checkpoints
                         WHERE channel = ?1 AND key >= ?2 AND key < ?3 ORDER BY key LIMIT ?4",
                    )
                    .map_err(|e| self.error(e))?;
                query
                    .query_map(params![channel, prefix, end, limit], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .and_then(Iterator::collect)
            }
            None => {
                let mut query = conn
                    .prepare_cached(
                        "SELECT key, value FROM checkpoints
                         WHERE channel = ?1 AND key >= ?2 ORDER BY key LIMIT ?3",
                    )
                    .map_err(|e| self.error(e))?;
                query
                    .query_map(params![channel, prefix, limit], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .and_then(Iterator::collect)
            }
        };
        rows.map_err(|e| self.error(e))
    }
}

/// State that lives as long as the process.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    values: HashMap<(String, String), Vec<u8>>,
    seen: std::collections::HashSet<(String, String)>,
}

impl StateStore for MemoryStateStore {
    fn get(&self, channel: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(inner.values.get(&(channel.into(), key.into())).cloned())
    }

    fn commit(&self, channel: &str, update: &StateUpdate) -> Result<(), StateError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (key, value) in &update.puts {
            inner
                .values
                .insert((channel.into(), key.clone()), value.clone());
        }
        for id in &update.seen {
            inner.seen.insert((channel.into(), id.clone()));
        }
        for key in &update.deletes {
            inner.values.remove(&(channel.into(), key.clone()));
        }
        Ok(())
    }

    fn seen(&self, channel: &str, ids: &[String]) -> Result<Vec<bool>, StateError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(ids
            .iter()
            .map(|id| inner.seen.contains(&(channel.into(), id.clone())))
            .collect())
    }

    fn scan(
        &self,
        channel: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<(String, Vec<u8>)> = inner
            .values
            .iter()
            .filter(|((c, key), _)| c == channel && key.starts_with(prefix))
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.truncate(limit);
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every store keeps, run against each.
    async fn contract(store: Arc<dyn StateStore>) {
        let a = ChannelState::new(store.clone(), "a");
        let b = ChannelState::new(store, "b");
        assert_eq!(a.get("k").await.unwrap(), None);
        a.commit(StateUpdate {
            puts: vec![("k".into(), b"1".to_vec())],
            seen: vec!["<m1@x>".into()],
            ..StateUpdate::default()
        })
        .await
        .unwrap();
        a.commit(StateUpdate {
            puts: vec![("k".into(), b"2".to_vec())],
            seen: vec!["<m1@x>".into(), "<m2@x>".into()],
            ..StateUpdate::default()
        })
        .await
        .unwrap();
        assert_eq!(a.get("k").await.unwrap(), Some(b"2".to_vec()));
        assert_eq!(b.get("k").await.unwrap(), None, "channels are separate");
        assert_eq!(
            a.seen(vec!["<m1@x>".into(), "<m3@x>".into(), "<m2@x>".into()])
                .await
                .unwrap(),
            [true, false, true]
        );
        assert_eq!(b.seen(vec!["<m1@x>".into()]).await.unwrap(), [false]);

        // Scans: by prefix, in key order, bounded, deletes applied.
        let put = |key: &str| (key.to_owned(), key.as_bytes().to_vec());
        a.commit(StateUpdate {
            puts: vec![
                put("due/002/x"),
                put("due/001/y"),
                put("due/003/z"),
                put("duf"),
            ],
            ..StateUpdate::default()
        })
        .await
        .unwrap();
        b.commit(StateUpdate {
            puts: vec![put("due/000/b")],
            ..StateUpdate::default()
        })
        .await
        .unwrap();
        let keys = |found: Vec<(String, Vec<u8>)>| -> Vec<String> {
            found
                .into_iter()
                .map(|(key, value)| {
                    assert_eq!(key.as_bytes(), value);
                    key
                })
                .collect()
        };
        assert_eq!(
            keys(a.scan("due/", 2).await.unwrap()),
            ["due/001/y", "due/002/x"]
        );
        a.commit(StateUpdate {
            puts: vec![put("due/004/w")],
            deletes: vec!["due/001/y".into(), "due/004/w".into(), "absent".into()],
            ..StateUpdate::default()
        })
        .await
        .unwrap();
        assert_eq!(
            keys(a.scan("due/", 10).await.unwrap()),
            ["due/002/x", "due/003/z"]
        );
        assert_eq!(
            a.get("due/004/w").await.unwrap(),
            None,
            "deletes follow puts"
        );
        assert_eq!(
            a.scan("", 10).await.unwrap().len(),
            4,
            "k, due/002/x, due/003/z, duf"
        );
        assert_eq!(keys(b.scan("due/", 10).await.unwrap()), ["due/000/b"]);
    }

    #[test]
    fn prefix_ends_bound_exactly_the_prefixed_keys() {
        assert_eq!(prefix_end("due/").as_deref(), Some("due0"));
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("\u{10FFFF}"), None);
    }

    #[tokio::test]
    async fn memory_store_keeps_the_contract() {
        contract(Arc::new(MemoryStateStore::default())).await;
    }

    #[tokio::test]
    async fn sqlite_store_keeps_the_contract_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.sqlite");
        contract(Arc::new(SqliteStateStore::open(&path).unwrap())).await;
        let reopened = ChannelState::new(Arc::new(SqliteStateStore::open(&path).unwrap()), "a");
        assert_eq!(reopened.get("k").await.unwrap(), Some(b"2".to_vec()));
        assert_eq!(reopened.seen(vec!["<m2@x>".into()]).await.unwrap(), [true]);
    }
}
