//! The open connections of one channel, by visitor: a reply is pushed to
//! every open tab of its visitor. Bounded in total and per visitor.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::mpsc;

use crate::protocol::ServerFrame;

/// Frames queued for one connection at most; a tab that does not read is
/// dropped rather than letting its queue grow.
pub const QUEUE: usize = 64;

/// Why a connection was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Channel,
    Visitor,
}

/// One channel's connections.
#[derive(Debug)]
pub struct Hub {
    max_total: usize,
    max_per_visitor: usize,
    next: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    total: usize,
    visitors: HashMap<String, Vec<(u64, mpsc::Sender<ServerFrame>)>>,
}

impl Hub {
    pub fn new(max_total: usize, max_per_visitor: usize) -> Self {
        Self {
            max_total,
            max_per_visitor,
            next: AtomicU64::new(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection before the visitor is known (the
    /// channel-wide cap); give it back with [`Hub::leave`] or turn it into
    /// a visitor's with [`Hub::register`].
    pub fn admit(&self) -> Result<(), Full> {
        let mut inner = self.lock();
        if inner.total >= self.max_total {
            return Err(Full::Channel);
        }
        inner.total += 1;
        Ok(())
    }

    /// Gives back an admitted place that was never registered.
    pub fn leave(&self) {
        let mut inner = self.lock();
        inner.total = inner.total.saturating_sub(1);
    }

    /// Registers an admitted connection of `visitor`; its id for
    /// [`Hub::unregister`].
    pub fn register(&self, visitor: &str, frames: mpsc::Sender<ServerFrame>) -> Result<u64, Full> {
        let mut inner = self.lock();
        let tabs = inner.visitors.entry(visitor.to_owned()).or_default();
        if tabs.len() >= self.max_per_visitor {
            return Err(Full::Visitor);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        tabs.push((id, frames));
        Ok(id)
    }

    /// Removes a registered connection and gives back its place.
    pub fn unregister(&self, visitor: &str, id: u64) {
        let mut inner = self.lock();
        if let Some(tabs) = inner.visitors.get_mut(visitor) {
            tabs.retain(|(tab, _)| *tab != id);
            if tabs.is_empty() {
                inner.visitors.remove(visitor);
            }
        }
        inner.total = inner.total.saturating_sub(1);
    }

    /// Queues `frame` for every open tab of `visitor`; how many took it.
    pub fn push(&self, visitor: &str, frame: &ServerFrame) -> usize {
        let inner = self.lock();
        let Some(tabs) = inner.visitors.get(visitor) else {
            return 0;
        };
        tabs.iter()
            .filter(|(_, tab)| tab.try_send(frame.clone()).is_ok())
            .count()
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}
