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
}

impl MemorySink {
    pub fn entries(&self) -> Vec<LogEntry> {
        self.lock().entries.clone()
    }

    /// Makes every later submit fail with `error` (None: succeed again).
    pub fn fail_with(&self, error: Option<SendError>) {
        self.lock().fail_with = error;
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
        let result = match inner.fail_with.clone() {
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
