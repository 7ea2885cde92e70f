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
