//! An in-memory [`EventSink`] for connector unit tests. Integration tests
//! use the real daemon and log instead.

use std::sync::{Arc, Mutex};

use crate::sender::{Ack, EventSink, LogEntry, Receipt, SendError};

/// Records every entry; can be told to fail, to exercise error paths.
#[derive(Debug, Default, Clone)]
pub struct MemorySink {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: Vec<LogEntry>,
    fail_with: Option<SendError>,
    /// Entries still taken before `fail_with` applies.
    fail_after: Option<usize>,
}

impl MemorySink {
    pub fn entries(&self) -> Vec<LogEntry> {
        self.lock().entries.clone()
    }

    /// Makes every later submit fail with `error` (None: succeed again).
    pub fn fail_with(&self, error: Option<SendError>) {
        let mut inner = self.lock();
        inner.fail_with = error;
        inner.fail_after = None;
    }

    /// Takes `count` more entries, then fails every later submit with
    /// `error`: a log that breaks in the middle of a request.
    pub fn fail_after(&self, count: usize, error: SendError) {
        let mut inner = self.lock();
        inner.fail_with = Some(error);
        inner.fail_after = Some(count);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl EventSink for MemorySink {
    fn submit(&self, entry: LogEntry) -> Ack {
        let mut inner = self.lock();
        let failing = match &mut inner.fail_after {
            Some(0) | None => inner.fail_with.clone(),
            Some(left) => {
                *left -= 1;
                None
            }
        };
        let result = match failing {
            Some(error) => Err(error),
            None => {
                inner.entries.push(entry);
                Ok(Receipt {
                    partition: 0,
                    offset: inner.entries.len() as i64 - 1,
                })
            }
        };
        Box::pin(async move { result })
    }
}

/// A log that takes every entry at once and keeps none: benchmarks run
/// millions of requests through a channel and measure the channel, not a
/// growing vector.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl EventSink for NullSink {
    fn submit(&self, _entry: LogEntry) -> Ack {
        Box::pin(async {
            Ok(Receipt {
                partition: 0,
                offset: 0,
            })
        })
    }
}

/// The settings of `config/examples/<file>`, the example channel file a
/// kind ships, parsed as `C` the way the daemon parses channel files (its
/// `kind` must be `C::KIND`). Panics with the reason: a test helper that
/// keeps every kind's example honest.
pub fn example_channel<C: crate::ChannelConfig>(file: &str) -> C {
    let path = format!(
        "{}/../../config/examples/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut table: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    table.remove("id");
    let kind = table.remove("kind");
    assert_eq!(
        kind.as_ref().and_then(|k| k.as_str()),
        Some(C::KIND),
        "{path}: the kind"
    );
    crate::parse_settings(table).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A [`MemoryStateStore`](crate::state::MemoryStateStore) that records its
/// transactions, can take a while over each (as an fsync does, so
/// concurrent writers overlap) and can be told to fail them: what tests of
/// batched state writes count and break.
#[derive(Debug, Default)]
pub struct CountingStateStore {
    store: crate::state::MemoryStateStore,
    delay: std::time::Duration,
    fail: std::sync::atomic::AtomicBool,
    log: Mutex<CommitLog>,
}

#[derive(Debug, Default)]
struct CommitLog {
    attempts: usize,
    stored: Vec<crate::StateUpdate>,
}

impl CountingStateStore {
    /// Each commit blocks its thread for `delay` before storing.
    pub fn with_delay(delay: std::time::Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    /// Makes every later commit fail (false: succeed again).
    pub fn fail(&self, fail: bool) {
        self.fail.store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// Transactions attempted, failed ones included.
    pub fn commits(&self) -> usize {
        self.log().attempts
    }

    /// The updates stored, one per successful transaction, in order.
    pub fn stored(&self) -> Vec<crate::StateUpdate> {
        self.log().stored.clone()
    }

    fn log(&self) -> std::sync::MutexGuard<'_, CommitLog> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl crate::StateStore for CountingStateStore {
    fn get(&self, channel: &str, key: &str) -> Result<Option<Vec<u8>>, crate::state::StateError> {
        self.store.get(channel, key)
    }

    fn commit(
        &self,
        channel: &str,
        update: &crate::StateUpdate,
    ) -> Result<(), crate::state::StateError> {
        self.log().attempts += 1;
        std::thread::sleep(self.delay);
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::state::StateError {
                path: "counting".into(),
                message: "commit refused by the test".into(),
            });
        }
        self.store.commit(channel, update)?;
        self.log().stored.push(update.clone());
        Ok(())
    }

    fn seen(&self, channel: &str, ids: &[String]) -> Result<Vec<bool>, crate::state::StateError> {
        self.store.seen(channel, ids)
    }

    fn scan_after(
        &self,
        channel: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, crate::state::StateError> {
        self.store.scan_after(channel, prefix, after, limit)
    }

    fn prune_seen(
        &self,
        older_than_unix_secs: i64,
        limit: usize,
    ) -> Result<usize, crate::state::StateError> {
        self.store.prune_seen(older_than_unix_secs, limit)
    }

    fn count_seen(&self) -> Result<u64, crate::state::StateError> {
        self.store.count_seen()
    }
}
