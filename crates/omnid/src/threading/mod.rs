//! Threading: the worker that turns `omni.inbound.v1` into customers,
//! conversations and timeline rows, and the relay that publishes those rows
//! to `omni.timeline.v1`.
//!
//! The worker is one consumer of group [`GROUP`](worker::GROUP). For each polled batch, in
//! order:
//! 1. decode each record (protobuf, or JSON when its `content-type` says
//!    so, with the outbound dispatcher's decoder); a record that is not a
//!    conversation event, or that the threading logic refuses (no event id,
//!    no customer handle, an unknown handle kind), becomes a dead-letter
//!    record;
//! 2. thread the batch's events in order in one store transaction
//!    (`ThreadingStore::thread_batch`): for each it resolves the customer,
//!    places the message and appends its timeline rows to the outbox (a
//!    duplicate event id writes nothing), so one commit (one fsync)
//!    covers the batch; a store failure writes nothing and is retried,
//!    the whole batch, with backoff without moving on;
//! 3. once the whole batch is threaded, commit the batch's position.
//!
//! A crash before 3 re-threads the batch after the restart, and the store
//! drops every event it already threaded, so nothing is lost or doubled.
//!
//! Helpdesk commands are applied beside it by [`crate::commands`].
//!
//! The relay reads the unpublished outbox rows oldest first, appends them
//! to the timeline topic (keyed by customer id), waits until they are
//! durable, then marks them published. At start it first reads the tail of
//! the timeline topic and marks rows found there published: a crash
//! between "appended" and "marked" neither loses nor repeats an entry.
//! Before a round's timeline appends it hands the reply of every
//! `automated_reply` entry (an acknowledgement or keyword auto-reply the
//! rules sent) to `omni.outbound.v1`, checked as `POST /v1/outbound`
//! checks a posted reply against the channels of the moment, or to
//! `omni.deadletter.v1` when the channel cannot send it, and waits until
//! those are durable. A crash after that and before "marked" appends them
//! again with the same outbound event ids, which the outbound dispatcher
//! delivers once.
//!
//! Several daemons may share one store (PostgreSQL): each runs a worker
//! (the consumer group spreads the partitions), but only the holder of the
//! store's relay lease publishes, so the topic gets each customer's rows
//! once and in order. The others stand by and take over when the lease
//! lapses (a holder renews it every [`RELAY_LEASE`](relay::RELAY_LEASE) / 3 and gives it up
//! when it stops), reconciling with the topic's tail first.

mod cli;
mod relay;
mod store;
mod timeline_retention;
mod wire;
mod worker;

use std::{sync::Arc, time::Duration};

use omni_connector::EventSender;
use omni_log::EventLog;
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use cli::TimelineArgs;
pub(crate) use cli::timeline;
pub(crate) use store::Store;
pub(crate) use wire::{entry_json, handle_json, handle_key};

use crate::events::{CommandMetrics, ThreadingMetrics};
use crate::{
    settings::{Settings, Topics},
    sink::LogSink,
    task,
};

/// The running worker and relay.
#[derive(Debug)]
pub(crate) struct Threading {
    store: Store,
    worker_stop: CancellationToken,
    relay_stop: CancellationToken,
    worker: Option<JoinHandle<()>>,
    commands: Option<JoinHandle<()>>,
    relay: Option<JoinHandle<()>>,
}

/// Starts the worker and the relay (when `threading.enabled`). The worker
/// stops at `shutdown`, finishing its batch; [`Threading::stop`] then lets
/// the relay publish what is left.
pub(crate) fn start(
    settings: &Settings,
    log: Arc<dyn EventLog>,
    sender: EventSender,
    store: Store,
    rules: crate::rules::Rules,
    channels: crate::channels::LiveChannels,
    shutdown: &CancellationToken,
) -> Threading {
    let worker_stop = shutdown.child_token();
    let relay_stop = CancellationToken::new();
    let mut threading = Threading {
        store: store.clone(),
        worker_stop: worker_stop.clone(),
        relay_stop: relay_stop.clone(),
        worker: None,
        commands: None,
        relay: None,
    };
    store.report_stats(shutdown.child_token());
    if !settings.threading.enabled {
        tracing::info!("threading is off (threading.enabled = false)");
        return threading;
    }
    let topics = Topics::new(&settings.log.topic_prefix);
    let metrics = ThreadingMetrics::register();
    let wake = Arc::new(Notify::new());
    let traces = Arc::new(crate::traces::EventTraces::new(crate::traces::EVENT_TRACES));
    let commands = crate::commands::Consumer {
        log: log.clone(),
        topic: topics.commands.clone(),
        store: store.shared(),
        sender: sender.clone(),
        metrics: CommandMetrics::register("topic"),
        wake: wake.clone(),
        shutdown: worker_stop.clone(),
    };
    let worker = worker::Worker {
        log: log.clone(),
        topic: topics.inbound.clone(),
        store: store.shared(),
        config: settings.threading.config(),
        rules,
        sender,
        metrics: metrics.clone(),
        wake: wake.clone(),
        shutdown: worker_stop,
        traces: traces.clone(),
        sla_clock_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
    };
    let relay = relay::Relay {
        store: store.shared(),
        sink: LogSink::new(log.clone(), topics.clone(), settings.log.encoding).with_attachments(
            omni_connector::FsAttachmentStore::new(settings.attachments_dir()),
        ),
        log,
        topic: topics.timeline,
        metrics,
        wake,
        stop: relay_stop,
        holder: relay::relay_holder(&settings.data_dir),
        traces,
        channels,
    };
    timeline_retention::start(
        settings.threading.timeline_retention_days,
        store.shared(),
        threading.worker_stop.clone(),
    );
    threading.worker = Some(tokio::spawn(worker.run()));
    threading.commands = Some(tokio::spawn(commands.run()));
    threading.relay = Some(tokio::spawn(relay.run()));
    threading
}

/// The consumer groups the threading service runs when enabled, with the
/// topic each consumes: the embedded log's retention must wait for them.
pub(crate) fn consumer_groups(topics: &Topics) -> [(String, &'static str); 2] {
    [
        (topics.inbound.clone(), worker::GROUP),
        (topics.commands.clone(), crate::commands::GROUP),
    ]
}

impl Threading {
    /// Stops the worker (it finishes its batch), then the relay (it
    /// publishes the rows left), each within `grace`, and closes the store.
    /// Whatever is cut short is done again after the restart.
    pub(crate) async fn stop(self, grace: Duration) {
        self.worker_stop.cancel();
        let batch_again = "its batch will be applied again";
        if let Some(worker) = self.worker {
            task::join_within(worker, grace, "threading worker", batch_again).await;
        }
        if let Some(commands) = self.commands {
            task::join_within(commands, grace, "commands consumer", batch_again).await;
        }
        self.relay_stop.cancel();
        if let Some(relay) = self.relay {
            let resumes = "it resumes at the next start";
            task::join_within(relay, grace, "timeline relay", resumes).await;
        }
        self.store.flush().await;
        self.store.close().await;
    }
}
