//! Durable per-channel state for pull connectors: checkpoints (an IMAP
//! mailbox's UIDVALIDITY and last UID, a Telegram update offset) and a
//! "seen" set of provider message ids for deduplication.
//!
//! A connector writes its checkpoint only after the events it covers are
//! durable in the event log, and writes the seen marks in the same
//! transaction, so after any crash the checkpoint never claims more than
//! the log holds. The worst case is a replay of events whose ids the log
//! already has, which consumers drop by event id.
//!
//! Seen marks are only needed while a duplicate can still arrive (a
//! provider's retry, a redelivered batch), so the daemon removes old ones
//! with [`StateStore::prune_seen`]; without that the table would grow with
//! every message ever received. A mark's age counts from its first
//! marking: marking an id again does not renew it.

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
    ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        // Every key is after the empty string (channels never write an
        // empty key).
        self.scan_after(channel, prefix, "", limit)
    }

    /// Like [`Self::scan`], but only keys after `after` (in byte order):
    /// how a channel walks a prefix it does not empty as it goes, one
    /// bounded page at a time.
    fn scan_after(
        &self,
        channel: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StateError>;

    /// Removes up to `limit` seen marks, of every channel, first made
    /// before `older_than_unix_secs`, and says how many it removed. Bounded
    /// so that a caller works through a large backlog in short
    /// transactions, between which the channels' own commits get their
    /// turn: call it again until it returns less than `limit`. A store
    /// that cannot prune answers an error rather than pretending to.
    fn prune_seen(&self, older_than_unix_secs: i64, limit: usize) -> Result<usize, StateError> {
        let _ = (older_than_unix_secs, limit);
        Err(unsupported("pruning seen marks"))
    }

    /// How many seen marks the store holds, over all channels: a gauge for
    /// operators, read after pruning. Costs a pass over the marks, so call
    /// it seldom.
    fn count_seen(&self) -> Result<u64, StateError> {
        Err(unsupported("counting seen marks"))
    }
}

fn unsupported(what: &str) -> StateError {
    StateError {
        path: String::new(),
        message: format!("this state store does not support {what}"),
    }
}

/// Removes old seen marks off the async threads; see
/// [`StateStore::prune_seen`].
pub async fn prune_seen(
    store: Arc<dyn StateStore>,
    older_than_unix_secs: i64,
    limit: usize,
) -> Result<usize, StateError> {
    blocking(move || store.prune_seen(older_than_unix_secs, limit)).await
}

/// Counts seen marks off the async threads; see
/// [`StateStore::count_seen`].
pub async fn count_seen(store: Arc<dyn StateStore>) -> Result<u64, StateError> {
    blocking(move || store.count_seen()).await
}

/// Where the stores read the time they stamp seen marks with (seconds
/// since the Unix epoch): the system clock, or a test's own, so tests can
/// age marks without waiting.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        }))
    }

    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// Seconds since the Unix epoch.
    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
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

    /// See [`StateStore::scan_after`].
    pub async fn scan_after(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let (store, channel, prefix, after) = (
            self.store.clone(),
            self.channel.clone(),
            prefix.to_owned(),
            after.to_owned(),
        );
        blocking(move || store.scan_after(&channel, &prefix, &after, limit)).await
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
///
/// Seen marks carry the time they were first made, indexed
/// (`seen_by_time`), so pruning old ones reads only those, never the whole
/// table.
#[derive(Debug)]
pub struct SqliteStateStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    reader: Mutex<Connection>,
    clock: Clock,
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
                 PRIMARY KEY (channel, id)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS seen_by_time ON seen (seen_at);",
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
            clock: Clock::system(),
        })
    }

    /// Stamps seen marks with `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
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
        let now = self.clock.now();
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

    fn scan_after(
        &self,
        channel: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        // One lower bound, the greater of the two, so the key range is
        // exactly what the primary key's order walks.
        let (lower, op) = if after >= prefix {
            (after, ">")
        } else {
            (prefix, ">=")
        };
        let conn = self.reader();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let read = |row: &rusqlite::Row<'_>| Ok((row.get(0)?, row.get(1)?));
        let rows = match prefix_end(prefix) {
            Some(end) => conn
                .prepare_cached(&format!(
                    "SELECT key, value FROM checkpoints
                     WHERE channel = ?1 AND key {op} ?2 AND key < ?3 ORDER BY key LIMIT ?4"
                ))
                .and_then(|mut query| {
                    query
                        .query_map(params![channel, lower, end, limit], read)
                        .and_then(Iterator::collect)
                }),
            None => conn
                .prepare_cached(&format!(
                    "SELECT key, value FROM checkpoints
                     WHERE channel = ?1 AND key {op} ?2 ORDER BY key LIMIT ?3"
                ))
                .and_then(|mut query| {
                    query
                        .query_map(params![channel, lower, limit], read)
                        .and_then(Iterator::collect)
                }),
        };
        rows.map_err(|e| self.error(e))
    }

    fn prune_seen(&self, older_than_unix_secs: i64, limit: usize) -> Result<usize, StateError> {
        if limit == 0 {
            return Ok(0);
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // The subquery walks `seen_by_time`; each row is then removed by
        // its primary key. One statement, so one short transaction.
        self.conn()
            .prepare_cached(
                "DELETE FROM seen WHERE (channel, id) IN
                     (SELECT channel, id FROM seen WHERE seen_at < ?1 LIMIT ?2)",
            )
            .and_then(|mut delete| delete.execute(params![older_than_unix_secs, limit]))
            .map_err(|e| self.error(e))
    }

    fn count_seen(&self) -> Result<u64, StateError> {
        // A connection of its own: the count reads every mark, and channels'
        // lookups on the shared reader should not wait behind it.
        let conn = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| self.error(e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| self.error(e))?;
        conn.query_row("SELECT count(*) FROM seen", [], |row| row.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| self.error(e))
    }
}

/// State that lives as long as the process.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    inner: Mutex<MemoryInner>,
    clock: Clock,
}

#[derive(Debug, Default)]
struct MemoryInner {
    values: HashMap<(String, String), Vec<u8>>,
    /// When each mark was first made.
    seen: HashMap<(String, String), i64>,
}

impl MemoryStateStore {
    /// Stamps seen marks with `clock` instead of the system clock.
    pub fn with_clock(clock: Clock) -> Self {
        Self {
            inner: Mutex::default(),
            clock,
        }
    }
}

impl StateStore for MemoryStateStore {
    fn get(&self, channel: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(inner.values.get(&(channel.into(), key.into())).cloned())
    }

    fn commit(&self, channel: &str, update: &StateUpdate) -> Result<(), StateError> {
        let now = self.clock.now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (key, value) in &update.puts {
            inner
                .values
                .insert((channel.into(), key.clone()), value.clone());
        }
        for id in &update.seen {
            inner
                .seen
                .entry((channel.into(), id.clone()))
                .or_insert(now);
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
            .map(|id| inner.seen.contains_key(&(channel.into(), id.clone())))
            .collect())
    }

    fn scan_after(
        &self,
        channel: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<(String, Vec<u8>)> = inner
            .values
            .iter()
            .filter(|((c, key), _)| c == channel && key.starts_with(prefix) && key.as_str() > after)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.truncate(limit);
        Ok(found)
    }

    fn prune_seen(&self, older_than_unix_secs: i64, limit: usize) -> Result<usize, StateError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let old: Vec<(String, String)> = inner
            .seen
            .iter()
            .filter(|(_, at)| **at < older_than_unix_secs)
            .map(|(key, _)| key.clone())
            .take(limit)
            .collect();
        for key in &old {
            inner.seen.remove(key);
        }
        Ok(old.len())
    }

    fn count_seen(&self) -> Result<u64, StateError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(inner.seen.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    /// A clock the test sets, and the [`Clock`] the stores read it by.
    fn test_clock(start: i64) -> (Arc<AtomicI64>, Clock) {
        let now = Arc::new(AtomicI64::new(start));
        let read = now.clone();
        (now, Clock::new(move || read.load(Ordering::SeqCst)))
    }

    /// The contract every store keeps, run against each. `now` is the
    /// store's clock, at 1000 to begin with.
    async fn contract(store: Arc<dyn StateStore>, now: &AtomicI64) {
        let a = ChannelState::new(store.clone(), "a");
        let b = ChannelState::new(store.clone(), "b");
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

        // Paged scans: strictly after the cursor, within the prefix.
        assert_eq!(
            keys(a.scan_after("due/", "due/002/x", 10).await.unwrap()),
            ["due/003/z"]
        );
        assert_eq!(
            keys(a.scan_after("due/", "", 1).await.unwrap()),
            ["due/002/x"]
        );
        assert_eq!(
            keys(a.scan_after("due/", "due/002", 1).await.unwrap()),
            ["due/002/x"]
        );
        assert!(
            a.scan_after("due/", "due/003/z", 10)
                .await
                .unwrap()
                .is_empty()
        );
        let rest: Vec<String> = a
            .scan_after("", "due/003/z", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(rest, ["duf", "k"]);
        assert_eq!(
            keys(b.scan_after("due/", "a", 10).await.unwrap()),
            ["due/000/b"]
        );

        // Pruning: marks first made before the cut go, in bounded batches,
        // from every channel; later ones stay. Marking <m1@x> again later
        // does not renew it.
        b.commit(StateUpdate {
            seen: vec!["old-b".into()],
            ..StateUpdate::default()
        })
        .await
        .unwrap();
        now.store(5000, Ordering::SeqCst);
        a.commit(StateUpdate {
            seen: vec!["new-a".into(), "<m1@x>".into()],
            ..StateUpdate::default()
        })
        .await
        .unwrap();
        b.commit(StateUpdate {
            seen: vec!["new-b".into()],
            ..StateUpdate::default()
        })
        .await
        .unwrap();
        assert_eq!(count_seen(store.clone()).await.unwrap(), 5);
        assert_eq!(prune_seen(store.clone(), 3000, 0).await.unwrap(), 0);
        assert_eq!(prune_seen(store.clone(), 3000, 2).await.unwrap(), 2);
        assert_eq!(count_seen(store.clone()).await.unwrap(), 3);
        assert_eq!(prune_seen(store.clone(), 3000, 2).await.unwrap(), 1);
        assert_eq!(prune_seen(store.clone(), 3000, 2).await.unwrap(), 0);
        assert_eq!(
            a.seen(vec!["<m1@x>".into(), "<m2@x>".into(), "new-a".into()])
                .await
                .unwrap(),
            [false, false, true]
        );
        assert_eq!(
            b.seen(vec!["old-b".into(), "new-b".into()]).await.unwrap(),
            [false, true]
        );
        assert_eq!(count_seen(store.clone()).await.unwrap(), 2);
        // The cut is exclusive: a mark made at 5000 is not older than 5000.
        assert_eq!(prune_seen(store.clone(), 5000, 10).await.unwrap(), 0);
        // Pruning leaves checkpoints alone.
        assert_eq!(a.get("k").await.unwrap(), Some(b"2".to_vec()));
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
        let (now, clock) = test_clock(1000);
        contract(Arc::new(MemoryStateStore::with_clock(clock)), &now).await;
    }

    #[tokio::test]
    async fn sqlite_store_keeps_the_contract_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.sqlite");
        let (now, clock) = test_clock(1000);
        contract(
            Arc::new(SqliteStateStore::open(&path).unwrap().with_clock(clock)),
            &now,
        )
        .await;
        let reopened = ChannelState::new(Arc::new(SqliteStateStore::open(&path).unwrap()), "a");
        assert_eq!(reopened.get("k").await.unwrap(), Some(b"2".to_vec()));
        assert_eq!(
            reopened
                .seen(vec!["new-a".into(), "<m2@x>".into()])
                .await
                .unwrap(),
            [true, false]
        );
    }

    /// A file written before marks were indexed by time gets the index on
    /// open, keeps its marks, and pruning then reads the index rather than
    /// the table.
    #[test]
    fn an_existing_file_gains_the_time_index_and_pruning_uses_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE checkpoints (
                     channel TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                     PRIMARY KEY (channel, key)) WITHOUT ROWID;
                 CREATE TABLE seen (
                     channel TEXT NOT NULL, id TEXT NOT NULL, seen_at INTEGER NOT NULL,
                     PRIMARY KEY (channel, id)) WITHOUT ROWID;
                 INSERT INTO seen VALUES ('a', 'old', 100), ('a', 'new', 900);",
            )
            .unwrap();
        }
        let store = SqliteStateStore::open(&path).unwrap();
        let plan: Vec<String> = {
            let conn = store.conn();
            let mut explain = conn
                .prepare(
                    "EXPLAIN QUERY PLAN DELETE FROM seen WHERE (channel, id) IN
                         (SELECT channel, id FROM seen WHERE seen_at < ?1 LIMIT ?2)",
                )
                .unwrap();
            explain
                .query_map(params![500, 10], |row| row.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert!(
            plan.iter().any(|step| step.contains("seen_by_time")),
            "{plan:?}"
        );
        assert_eq!(store.prune_seen(500, 10).unwrap(), 1);
        assert_eq!(
            store.seen("a", &["old".into(), "new".into()]).unwrap(),
            [false, true]
        );
        assert_eq!(store.count_seen().unwrap(), 1);
    }

    /// A store that keeps only the required methods cannot prune, and says
    /// so instead of reporting nothing to prune; its whole-prefix scan
    /// comes from the paged one.
    #[test]
    fn stores_without_pruning_say_so_and_scan_by_default() {
        #[derive(Debug, Default)]
        struct Minimal(MemoryStateStore);
        impl StateStore for Minimal {
            fn get(&self, channel: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
                self.0.get(channel, key)
            }
            fn commit(&self, channel: &str, update: &StateUpdate) -> Result<(), StateError> {
                self.0.commit(channel, update)
            }
            fn seen(&self, channel: &str, ids: &[String]) -> Result<Vec<bool>, StateError> {
                self.0.seen(channel, ids)
            }
            fn scan_after(
                &self,
                channel: &str,
                prefix: &str,
                after: &str,
                limit: usize,
            ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
                self.0.scan_after(channel, prefix, after, limit)
            }
        }
        let store = Minimal::default();
        store
            .commit(
                "c",
                &StateUpdate {
                    puts: vec![
                        ("p/1".into(), Vec::new()),
                        ("p/2".into(), Vec::new()),
                        ("p/3".into(), Vec::new()),
                        ("q".into(), Vec::new()),
                    ],
                    ..StateUpdate::default()
                },
            )
            .unwrap();
        let page: Vec<String> = store
            .scan_after("c", "p/", "p/1", 1)
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(page, ["p/2"]);
        assert_eq!(store.scan("c", "p/", 10).unwrap().len(), 3);
        assert!(store.prune_seen(i64::MAX, 10).is_err());
        assert!(store.count_seen().is_err());
    }
}
