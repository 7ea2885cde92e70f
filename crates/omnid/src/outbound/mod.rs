//! Outbound: replies on `omni.outbound.v1` go out through their channel,
//! and what became of each comes back as a delivery-status event on the
//! inbound topic.
//!
//! The dispatcher is one consumer of group [`GROUP`]. It reads the topic in
//! order and hands each record to its channel's queue
//! ([`dispatch`] explains the queues, their bound and what is committed
//! when). Each channel's queue is worked through in order, one record at a
//! time ([`lane`]):
//! 1. decode it (protobuf, or JSON when its `content-type` says so);
//!    undecodable input, a record that is not an outbound message, an
//!    unknown channel or a channel that cannot send becomes a dead-letter
//!    record;
//! 2. skip it if this daemon already delivered that event id (a redelivery
//!    after a crash, or a client retrying with the same idempotency key):
//!    the seen marks live in `channel-state.sqlite3`, so this holds per
//!    daemon, and across a Kafka group rebalance delivery stays at least
//!    once;
//! 3. hand it to the channel's [`OutboundHandler`](omni_connector::OutboundHandler);
//!    a temporary failure is retried with capped exponential backoff
//!    ([`INITIAL_BACKOFF`](crate::consume::INITIAL_BACKOFF) doubling up to
//!    [`MAX_BACKOFF`](crate::consume::MAX_BACKOFF)), waiting at least as
//!    long as the provider asked, without moving on in that channel's
//!    queue (other channels keep going), looking the channel up again
//!    each time, so a reload that fixes its settings takes effect;
//! 4. append the outcome (`DELIVERY_STATE_SENT` or `_FAILED`) as a
//!    delivery-status event through the same sink as connectors, and wait
//!    until it is durable;
//! 5. only then may the record's position be committed.
//!
//! A crash between 3 and 5 sends the message again, with the same
//! provider-visible id (an email's Message-ID), so delivery is at least
//! once and a repeat is recognisable.
//!
//! [`prepare`] is the other way in: it checks and completes a message
//! posted to `POST /v1/outbound`, which the server appends to the outbound
//! topic, for deployments whose helpdesk cannot produce to the log itself.

mod dispatch;
#[cfg(test)]
pub(crate) mod fixtures;
mod lane;
mod prepare;
mod status;

use std::sync::Arc;

use omni_connector::{EventSender, StateStore};
use omni_log::EventLog;
use tokio_util::sync::CancellationToken;

pub(crate) use prepare::prepare;

use crate::{
    channels::{LiveChannels, Wiring},
    settings::{Settings, Topics},
    task::BackgroundTask,
};

/// The consumer group of the dispatcher on the outbound topic.
pub(crate) const GROUP: &str = "omnid-outbound";

/// Starts the dispatcher. It stops at `shutdown`, each channel finishing
/// the record in hand (delivery, status) and committing what is done;
/// [`BackgroundTask::stop`] waits for that, within its grace.
pub(crate) fn start(
    settings: &Settings,
    log: Arc<dyn EventLog>,
    wiring: &Wiring,
    channels: LiveChannels,
    shutdown: &CancellationToken,
) -> BackgroundTask {
    let topics = Topics::new(&settings.log.topic_prefix);
    spawn(
        log,
        topics.outbound,
        wiring.sender.clone(),
        wiring.state.clone(),
        channels,
        shutdown,
    )
}

/// Starts the dispatcher alone.
fn spawn(
    log: Arc<dyn EventLog>,
    topic: String,
    sender: EventSender,
    seen: Option<Arc<dyn StateStore>>,
    channels: LiveChannels,
    shutdown: &CancellationToken,
) -> BackgroundTask {
    BackgroundTask::spawn(
        "outbound dispatcher",
        "its records will be delivered again",
        shutdown,
        |stop| {
            let shared = lane::Shared {
                sender,
                seen,
                channels,
                shutdown: stop,
            };
            dispatch::Dispatcher::new(log, topic, shared).run()
        },
    )
}
