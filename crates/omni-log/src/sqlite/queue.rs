//! The writer's command queue: bounded like `std::sync::mpsc::sync_channel`,
//! but holding memory only for the commands in it.
//!
//! `sync_channel(n)` allocates and touches all `n` slots when it is made:
//! at the default capacity of 65,536 that was 14 MiB of resident memory
//! for a queue that is nearly always empty. Here an unbounded channel
//! (which grows and shrinks in small blocks) carries the commands, and a
//! count under a mutex enforces the bound.

use std::sync::{
    Arc, Condvar, Mutex, MutexGuard,
    mpsc::{self, RecvError, TryRecvError},
};

/// Why [`QueueSender::try_send`] did not queue a value; the value comes
/// back with it.
#[derive(Debug)]
pub(super) enum TrySendError<T> {
    Full(T),
    Disconnected(T),
}

/// The receiver is gone; the value comes back.
#[derive(Debug)]
pub(super) struct SendError<T>(pub T);

struct Room {
    queued: Mutex<usize>,
    freed: Condvar,
    capacity: usize,
}

impl Room {
    fn queued(&self) -> MutexGuard<'_, usize> {
        // The count stays consistent whatever panicked while holding it.
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self) {
        *self.queued() -= 1;
        self.freed.notify_one();
    }
}

/// A queue of at most `capacity` values.
pub(super) fn bounded<T>(capacity: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let (tx, rx) = mpsc::channel();
    let room = Arc::new(Room {
        queued: Mutex::new(0),
        freed: Condvar::new(),
        capacity,
    });
    (
        QueueSender {
            tx,
            room: Arc::clone(&room),
        },
        QueueReceiver { rx, room },
    )
}

pub(super) struct QueueSender<T> {
    tx: mpsc::Sender<T>,
    room: Arc<Room>,
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        QueueSender {
            tx: self.tx.clone(),
            room: Arc::clone(&self.room),
        }
    }
}

impl<T> QueueSender<T> {
    /// Queues `value` if there is room, without waiting.
    pub(super) fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let mut queued = self.room.queued();
        if *queued >= self.room.capacity {
            return Err(TrySendError::Full(value));
        }
        *queued += 1;
        drop(queued);
        self.tx.send(value).map_err(|e| {
            self.room.release();
            TrySendError::Disconnected(e.0)
        })
    }

    /// Queues `value`, blocking the thread until there is room.
    pub(super) fn send(&self, value: T) -> Result<(), SendError<T>> {
        let mut queued = self.room.queued();
        while *queued >= self.room.capacity {
            queued = self
                .room
                .freed
                .wait(queued)
                .unwrap_or_else(|e| e.into_inner());
        }
        *queued += 1;
        drop(queued);
        self.tx.send(value).map_err(|e| {
            self.room.release();
            SendError(e.0)
        })
    }
}

pub(super) struct QueueReceiver<T> {
    rx: mpsc::Receiver<T>,
    room: Arc<Room>,
}

impl<T> QueueReceiver<T> {
    /// Blocks until a value comes; `Err` once every sender is gone and the
    /// queue is empty.
    pub(super) fn recv(&self) -> Result<T, RecvError> {
        let value = self.rx.recv()?;
        self.room.release();
        Ok(value)
    }

    pub(super) fn try_recv(&self) -> Result<T, TryRecvError> {
        let value = self.rx.try_recv()?;
        self.room.release();
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn refuses_beyond_capacity_and_makes_room_as_values_leave() {
        let (tx, rx) = bounded(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.recv().unwrap(), 1);
        tx.try_send(3).unwrap();
        assert!(matches!(tx.try_send(4), Err(TrySendError::Full(4))));
        assert_eq!(rx.try_recv().unwrap(), 2);
        assert_eq!(rx.try_recv().unwrap(), 3);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn send_waits_for_room() {
        let (tx, rx) = bounded(1);
        tx.send(1).unwrap();
        let sender = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(2).unwrap())
        };
        std::thread::sleep(Duration::from_millis(50));
        // The second value waits: the queue holds only the first.
        assert!(!sender.is_finished());
        assert_eq!(rx.recv().unwrap(), 1);
        sender.join().unwrap();
        assert_eq!(rx.recv().unwrap(), 2);
    }

    #[test]
    fn a_gone_receiver_returns_the_value_and_frees_its_room() {
        let (tx, rx) = bounded(1);
        drop(rx);
        assert!(matches!(tx.try_send(7), Err(TrySendError::Disconnected(7))));
        assert!(matches!(tx.send(8), Err(SendError(8))));
        assert!(matches!(tx.try_send(9), Err(TrySendError::Disconnected(9))));
    }

    #[test]
    fn senders_gone_ends_the_receiver_after_the_queued_values() {
        let (tx, rx) = bounded(4);
        tx.try_send(1).unwrap();
        drop(tx);
        assert_eq!(rx.recv().unwrap(), 1);
        assert!(rx.recv().is_err());
    }
}
