//! Threading: the worker that turns `omni.inbound.v1` into customers,
//! conversations and timeline rows, and the relay that publishes those rows
//! to `omni.timeline.v1`.
//!
//! The worker is one consumer of group [`GROUP`]. For each polled batch, in
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
//!
//! Several daemons may share one store (PostgreSQL): each runs a worker
//! (the consumer group spreads the partitions), but only the holder of the
//! store's relay lease publishes, so the topic gets each customer's rows
//! once and in order. The others stand by and take over when the lease
//! lapses (a holder renews it every [`RELAY_LEASE`] / 3 and gives it up
//! when it stops), reconciling with the topic's tail first.

use std::{collections::HashSet, str::FromStr as _, sync::Arc};
use std::{path::Path, time::Duration};

use anyhow::Context as _;
use omni_connector::EventSender;
use omni_log::{EventLog, StoredRecord};
use omni_model::{Handle, HandleKind, cloudevents};
use omni_proto::v1::ChannelKind;
use omni_telemetry::events::{
    CommandMetrics, EventThreaded, ThreadingMetrics, ThreadingOutcome, TimelinePublished,
};
use omni_threading::{
    HandleKey, InboundEvent, OutboxRow, Outcome, PostgresStore, SqliteStore, ThreadingConfig,
    ThreadingStore,
};
use serde_json::{Value, json};
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    consume::{self, Backoff, Stopped, dead_letter_of, decode, header, pause},
    settings::{Settings, Topics},
    sink::LogSink,
};

/// The consumer group of the threading worker on the inbound topic.
pub const GROUP: &str = "omnid-threading";

/// Records threaded per poll (and per store transaction and commit). A
/// poll returns what is there, so batches are small when traffic is light;
/// under a backlog a larger transaction shares more pages per commit
/// (docs/benchmarks.md, "Threading": 1,024 threads ~30% faster than 256
/// embedded), while one batch still commits well within a second.
const POLL_BATCH: usize = 1024;

/// Outbox rows published per append batch; also how far back the relay
/// looks in the timeline topic at start.
const RELAY_BATCH: u32 = 256;

/// How often the relay looks for rows when nobody wakes it (rows written
/// by other processes on a shared PostgreSQL), and how often a standby
/// relay asks for the lease.
const RELAY_IDLE: Duration = Duration::from_millis(500);

/// How long the relay lease lasts unless renewed. A holder publishes only
/// while at least two thirds of it remain, so a round (append, wait for
/// the broker, mark) has 20 s before a standby may take over; a holder
/// stalled longer than that may repeat entries, never lose or reorder
/// them, and consumers drop repeats by `(customer_id, sequence)`.
pub const RELAY_LEASE: Duration = Duration::from_secs(30);

/// The lease's name in the store.
const RELAY_LEASE_NAME: &str = "timeline-relay";

/// The opened threading store.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Opens the configured store (and migrates it).
    pub async fn open(settings: &Settings) -> anyhow::Result<Store> {
        let threading = &settings.threading;
        if threading.store == crate::settings::ThreadingStoreKind::Postgres {
            let url = threading
                .postgres_url
                .as_ref()
                .context("threading.postgres_url is required with threading.store = \"postgres\"")?
                .resolve()
                .map_err(|e| anyhow::anyhow!("threading.postgres_url: {e}"))?;
            let url = std::str::from_utf8(url.expose())
                .map_err(|_| anyhow::anyhow!("threading.postgres_url: not UTF-8"))?
                .trim();
            // The parser's message may quote the URL, password included.
            let options = sqlx::postgres::PgConnectOptions::from_str(url).map_err(|_| {
                anyhow::anyhow!("threading.postgres_url: not a valid postgres:// url")
            })?;
            let store = PostgresStore::connect(options, threading.max_connections)
                .await
                .context("cannot open the threading store (postgres)")?;
            return Ok(Store::Postgres(store));
        }
        let path = settings.threading_sqlite_path();
        let store = SqliteStore::open(&path)
            .await
            .with_context(|| format!("cannot open the threading store {}", path.display()))?;
        Ok(Store::Sqlite(store))
    }

    /// The store behind its trait.
    pub fn shared(&self) -> Arc<dyn ThreadingStore> {
        match self {
            Store::Sqlite(store) => Arc::new(store.clone()),
            Store::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// Closes its connections.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(store) => store.close().await,
            Store::Postgres(store) => store.close().await,
        }
    }
}

/// The running worker and relay.
#[derive(Debug)]
pub struct Threading {
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
pub fn start(
    settings: &Settings,
    log: Arc<dyn EventLog>,
    sender: EventSender,
    store: Store,
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
    if !settings.threading.enabled {
        tracing::info!("threading is off (threading.enabled = false)");
        return threading;
    }
    let topics = Topics::new(&settings.log.topic_prefix);
    let metrics = ThreadingMetrics::register();
    let wake = Arc::new(Notify::new());
    let commands = crate::commands::Consumer {
        log: log.clone(),
        topic: topics.commands.clone(),
        store: store.shared(),
        sender: sender.clone(),
        metrics: CommandMetrics::register("topic"),
        wake: wake.clone(),
        shutdown: worker_stop.clone(),
    };
    let worker = Worker {
        log: log.clone(),
        topic: topics.inbound.clone(),
        store: store.shared(),
        config: settings.threading.config(),
        sender,
        metrics: metrics.clone(),
        wake: wake.clone(),
        shutdown: worker_stop,
    };
    let relay = Relay {
        store: store.shared(),
        sink: LogSink::new(
            log.clone(),
            topics.clone(),
            settings.log.encoding,
        ),
        log,
        topic: topics.timeline,
        metrics,
        wake,
        stop: relay_stop,
        holder: relay_holder(&settings.data_dir),
    };
    threading.worker = Some(tokio::spawn(worker.run()));
    threading.commands = Some(tokio::spawn(commands.run()));
    threading.relay = Some(tokio::spawn(relay.run()));
    threading
}

impl Threading {
    /// Stops the worker (it finishes its batch), then the relay (it
    /// publishes the rows left), each within `grace`, and closes the store.
    /// Whatever is cut short is done again after the restart.
    pub async fn stop(self, grace: Duration) {
        self.worker_stop.cancel();
        for (task, what) in [
            (self.worker, "threading worker"),
            (self.commands, "commands consumer"),
        ] {
            let Some(task) = task else { continue };
            let abort = task.abort_handle();
            if tokio::time::timeout(grace, task).await.is_err() {
                abort.abort();
                tracing::warn!(
                    "{what} did not stop within the shutdown timeout; its batch will be applied again"
                );
            }
        }
        self.relay_stop.cancel();
        if let Some(relay) = self.relay {
            let abort = relay.abort_handle();
            if tokio::time::timeout(grace, relay).await.is_err() {
                abort.abort();
                tracing::warn!(
                    "timeline relay did not stop within the shutdown timeout; it resumes at the next start"
                );
            }
        }
        self.store.close().await;
    }
}

struct Worker {
    log: Arc<dyn EventLog>,
    topic: String,
    store: Arc<dyn ThreadingStore>,
    config: ThreadingConfig,
    sender: EventSender,
    metrics: ThreadingMetrics,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
}

impl consume::BatchHandler for Worker {
    async fn handle_batch(&self, records: &[StoredRecord]) -> Result<(), Stopped> {
        self.handle(records).await?;
        self.wake.notify_one();
        Ok(())
    }
}

impl Worker {
    async fn run(self) {
        consume::consume_batches(
            self.log.as_ref(),
            GROUP,
            &self.topic,
            POLL_BATCH,
            &self.shutdown,
            &self,
        )
        .await;
    }

    /// Threads a polled batch in one store transaction (one commit, so
    /// one fsync, for all of it) and dead-letters the records that are no
    /// conversation event or that the threading logic refuses. A store
    /// failure leaves nothing written and is retried, the whole batch,
    /// until it passes or the worker is stopped.
    async fn handle(&self, records: &[StoredRecord]) -> Result<(), Stopped> {
        let mut threadable: Vec<(&StoredRecord, InboundEvent)> = Vec::with_capacity(records.len());
        for stored in records {
            match decode(stored) {
                Ok(event) => threadable.push((
                    stored,
                    InboundEvent {
                        claims: event.sender_identities.clone(),
                        event,
                    },
                )),
                Err((reason, detail)) => {
                    let channel = header(stored, cloudevents::HEADER_SOURCE)
                        .and_then(|s| s.rsplit('/').next().map(str::to_owned))
                        .unwrap_or_default();
                    let event_id = header(stored, cloudevents::HEADER_ID).unwrap_or_default();
                    self.dead_letter(
                        stored,
                        &channel,
                        ChannelKind::Unspecified,
                        &event_id,
                        reason,
                        &detail,
                    )
                    .await?;
                }
            }
        }
        if threadable.is_empty() {
            return Ok(());
        }
        let inputs: Vec<InboundEvent> = threadable.iter().map(|(_, i)| i.clone()).collect();
        let mut backoff = Backoff::default();
        let outcomes = loop {
            match self.store.thread_batch(&self.config, &inputs).await {
                Ok(outcomes) => break outcomes,
                Err(error) => {
                    let wait = backoff.next();
                    // One line per attempt, naming the batch's first event.
                    EventThreaded {
                        outcome: ThreadingOutcome::Retried,
                        event_id: &inputs[0].event.event_id,
                        customer_id: "",
                        detail: &format!(
                            "batch of {} events: {:#}",
                            inputs.len(),
                            anyhow::Error::new(error)
                        ),
                        retry_in: Some(wait),
                    }
                    .emit(&self.metrics);
                    pause(&self.shutdown, wait).await?;
                }
            }
        };
        for ((stored, input), outcome) in threadable.iter().zip(outcomes) {
            let event = &input.event;
            let emit = |outcome, customer_id: &str| {
                EventThreaded {
                    outcome,
                    event_id: &event.event_id,
                    customer_id,
                    detail: "",
                    retry_in: None,
                }
                .emit(&self.metrics);
            };
            match outcome {
                Ok(Outcome::Duplicate) => emit(ThreadingOutcome::Duplicate, ""),
                Ok(Outcome::Threaded { customer_id, .. }) => {
                    emit(ThreadingOutcome::Threaded, customer_id.as_str());
                }
                Err(refused) => {
                    let kind = ChannelKind::try_from(event.channel_kind)
                        .unwrap_or(ChannelKind::Unspecified);
                    self.dead_letter(
                        stored,
                        &event.channel_id,
                        kind,
                        &event.event_id,
                        "not_threadable",
                        &refused.to_string(),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        stored: &StoredRecord,
        channel_id: &str,
        channel_kind: ChannelKind,
        event_id: &str,
        reason: &'static str,
        detail: &str,
    ) -> Result<(), Stopped> {
        let dead_letter =
            dead_letter_of(stored, channel_id, channel_kind, event_id, reason, detail);
        consume::store_dead_letter(&self.sender, dead_letter, &self.shutdown).await?;
        EventThreaded {
            outcome: ThreadingOutcome::DeadLettered,
            event_id,
            customer_id: "",
            detail: &format!("{reason}: {detail}"),
            retry_in: None,
        }
        .emit(&self.metrics);
        Ok(())
    }
}

struct Relay {
    store: Arc<dyn ThreadingStore>,
    log: Arc<dyn EventLog>,
    sink: LogSink,
    topic: String,
    metrics: ThreadingMetrics,
    wake: Arc<Notify>,
    /// Cancelled at shutdown: publish what is pending, then return.
    stop: CancellationToken,
    /// This process's name on the relay lease.
    holder: String,
}

/// This daemon's name on the relay lease: its host and data directory.
/// Stable across restarts, so a daemon restarted after a crash takes its
/// own lease back at once instead of waiting for it to lapse; distinct
/// between daemons, which never share a data directory (the event log and
/// channel state live there).
fn relay_holder(data_dir: &Path) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    format!("{host}:{}", dir.display())
}

/// What one relay round did.
enum Round {
    Published,
    Idle,
    /// Another relay holds the lease.
    Standby,
}

impl Relay {
    async fn run(self) {
        let mut backoff = Backoff::default();
        let mut reconciled = false;
        // When the lease was last taken or renewed (by our clock).
        let mut leased_at: Option<tokio::time::Instant> = None;
        tracing::info!(topic = %self.topic, holder = %self.holder, "timeline relay started");
        loop {
            let stopping = self.stop.is_cancelled();
            let step = async {
                if !self.hold_lease(&mut leased_at).await? {
                    return Ok(Round::Standby);
                }
                if !reconciled {
                    self.reconcile().await?;
                    reconciled = true;
                }
                let rows = self
                    .store
                    .pending_outbox(0, RELAY_BATCH)
                    .await
                    .context("reading the outbox")?;
                if rows.is_empty() {
                    return Ok(Round::Idle);
                }
                self.publish(&rows).await?;
                Ok::<_, anyhow::Error>(Round::Published)
            };
            match step.await {
                Ok(Round::Published) => backoff.reset(),
                Ok(Round::Idle | Round::Standby) if stopping => break,
                Ok(round) => {
                    backoff.reset();
                    if matches!(round, Round::Standby) {
                        // Whoever held it may have appended without
                        // marking: look at the topic before publishing.
                        reconciled = false;
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => {}
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(RELAY_IDLE) => {}
                    }
                }
                Err(error) => {
                    if stopping {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "timeline relay stopped with rows unpublished; they are published at the next start"
                        );
                        break;
                    }
                    let wait = backoff.next();
                    tracing::warn!(
                        error = format!("{error:#}"),
                        retry_in_ms = wait.as_millis() as u64,
                        "timeline relay failed, retrying"
                    );
                    // Rows appended before the failure may be on the
                    // topic already: look again before republishing.
                    reconciled = false;
                    tokio::select! {
                        _ = self.stop.cancelled() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        if leased_at.is_some()
            && let Err(error) = self
                .store
                .release_lease(RELAY_LEASE_NAME, &self.holder)
                .await
        {
            tracing::warn!(error = %error, "cannot give up the relay lease; a standby takes over when it expires");
        }
        tracing::info!("timeline relay stopped");
    }

    /// Takes or renews the relay lease when a third of it has passed;
    /// false while another relay holds it.
    async fn hold_lease(
        &self,
        leased_at: &mut Option<tokio::time::Instant>,
    ) -> anyhow::Result<bool> {
        let now = tokio::time::Instant::now();
        if leased_at.is_some_and(|at| now.duration_since(at) < RELAY_LEASE / 3) {
            return Ok(true);
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let ttl_ms = i64::try_from(RELAY_LEASE.as_millis()).unwrap_or(i64::MAX);
        let held = self
            .store
            .acquire_lease(RELAY_LEASE_NAME, &self.holder, now_ms, ttl_ms)
            .await
            .context("taking the relay lease")?;
        match (held, leased_at.is_some()) {
            (true, false) => {
                tracing::info!(holder = %self.holder, "this relay now publishes the timeline")
            }
            (false, true) => tracing::warn!(holder = %self.holder, "relay lease lost; standing by"),
            _ => {}
        }
        *leased_at = held.then_some(now);
        Ok(held)
    }

    /// Appends `rows` in order, waits until all are durable, marks them
    /// published.
    async fn publish(&self, rows: &[OutboxRow]) -> anyhow::Result<()> {
        // `append` enqueues at once, so the topic gets the outbox order.
        let acks: Vec<_> = rows
            .iter()
            .map(|row| self.sink.submit_timeline(&row.event))
            .collect();
        for ack in acks {
            ack.await.context("appending to the timeline topic")?;
        }
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        self.store
            .mark_published(&ids)
            .await
            .context("marking outbox rows published")?;
        TimelinePublished {
            entries: rows.len(),
            last_row: ids.last().copied().unwrap_or_default(),
        }
        .emit(&self.metrics);
        Ok(())
    }

    /// Marks published the pending rows already on the topic: those a
    /// crash left appended but unmarked (at most one batch, the newest
    /// records of the topic).
    async fn reconcile(&self) -> anyhow::Result<()> {
        let pending = self
            .store
            .pending_outbox(0, RELAY_BATCH)
            .await
            .context("reading the outbox")?;
        if pending.is_empty() {
            return Ok(());
        }
        let mut on_topic = HashSet::new();
        let partitions = self
            .log
            .partition_count(&self.topic)
            .await
            .context("reading the timeline topic")?;
        for partition in 0..partitions.max(1) {
            let end = self
                .log
                .end_offset(&self.topic, partition)
                .await
                .context("reading the timeline topic")?;
            let mut next = (end - i64::from(RELAY_BATCH)).max(0);
            while next < end {
                let records = self
                    .log
                    .read(&self.topic, partition, next, RELAY_BATCH as usize)
                    .await
                    .context("reading the timeline topic")?;
                let Some(last) = records.last() else {
                    break;
                };
                next = last.position.offset + 1;
                on_topic.extend(
                    records
                        .iter()
                        .filter_map(|r| header(r, cloudevents::HEADER_ID)),
                );
            }
        }
        let published: Vec<i64> = pending
            .iter()
            .filter(|row| on_topic.contains(&row.event.timeline_event_id))
            .map(|row| row.id)
            .collect();
        if !published.is_empty() {
            tracing::info!(
                entries = published.len(),
                "timeline entries found on the topic after a restart, not published again"
            );
            self.store
                .mark_published(&published)
                .await
                .context("marking outbox rows published")?;
        }
        Ok(())
    }
}

/// Reads a handle as the query API and the CLI take it: a kind's wire name
/// (`email`, `phone`, `telegram`, ...), the value, and for channel-local
/// kinds (`external`, `chat_visitor`) the channel id as scope. Values are
/// normalized like the channels do (phones need their country code).
pub fn handle_key(kind: &str, value: &str, scope: Option<&str>) -> Result<HandleKey, String> {
    let kind: HandleKind = kind
        .parse()
        .map_err(|_| format!("unknown handle kind `{kind}`"))?;
    let scope = scope.filter(|s| !s.is_empty());
    let handle = Handle::provider(kind, value, scope).map_err(|e| e.to_string())?;
    Ok(HandleKey::from_handle(&handle))
}

/// Parses a handle in the form of inbound record keys, `kind:value` or
/// `kind:scope:value` ([`omni_model::HandleText`]), normalizing the value.
pub fn parse_handle(text: &str) -> Result<HandleKey, String> {
    let handle: Handle = text.parse().map_err(|e| format!("handle `{text}`: {e}"))?;
    Ok(HandleKey::from_handle(&handle))
}

/// A handle key as JSON.
pub fn handle_json(key: &HandleKey) -> Value {
    json!({ "kind": key.kind, "scope": key.scope, "value": key.value })
}

/// A timeline entry as JSON: the protobuf JSON mapping of `TimelineEvent`.
pub fn entry_json(row: &OutboxRow) -> Value {
    serde_json::to_value(&row.event).unwrap_or(Value::Null)
}

/// `omnid timeline`: the arguments.
#[derive(Debug, clap::Args)]
pub struct TimelineArgs {
    /// A handle of the customer: `email:ana@example.com`,
    /// `phone:+14155550134`, `external:<channel>:<id>`.
    #[arg(required_unless_present = "customer", conflicts_with = "customer")]
    handle: Option<String>,
    /// A customer id instead (a merged id reads its survivor's timeline).
    #[arg(long)]
    customer: Option<String>,
}

/// `omnid timeline`: prints a customer's timeline from the configured
/// store as JSON lines, oldest first.
pub async fn timeline(config: &Path, args: TimelineArgs) -> anyhow::Result<std::process::ExitCode> {
    let settings = Settings::load(config)?;
    let store = Store::open(&settings).await?;
    let shared = store.shared();
    let result = print_timeline(shared.as_ref(), &args).await;
    store.close().await;
    result
}

async fn print_timeline(
    store: &dyn ThreadingStore,
    args: &TimelineArgs,
) -> anyhow::Result<std::process::ExitCode> {
    use std::io::Write as _;
    let customer = match (&args.customer, &args.handle) {
        (Some(id), _) => omni_threading::CustomerId::from_string(id.clone()),
        (None, Some(text)) => {
            let key = parse_handle(text).map_err(|e| anyhow::anyhow!("{e}"))?;
            match store.identity(&key).await? {
                Some(identity) => identity.customer_id,
                None => {
                    eprintln!("error: no customer has the handle {text}");
                    return Ok(std::process::ExitCode::FAILURE);
                }
            }
        }
        (None, None) => anyhow::bail!("give a handle or --customer"),
    };
    let Some(resolved) = store.resolve_customer(&customer).await? else {
        eprintln!("error: no customer with id {customer}");
        return Ok(std::process::ExitCode::FAILURE);
    };
    let stdout = std::io::stdout();
    let mut after = None;
    loop {
        let page = store.timeline(&resolved, after, 500).await?;
        let mut out = stdout.lock();
        for row in &page.entries {
            if writeln!(out, "{}", entry_json(row)).is_err() {
                return Ok(std::process::ExitCode::SUCCESS);
            }
        }
        let _ = out.flush();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_parse_like_record_keys() {
        let email = parse_handle("email:Ana@Example.COM").unwrap();
        assert_eq!(
            (email.kind.as_str(), email.value.as_str()),
            ("email", "ana@example.com")
        );
        let phone = parse_handle("phone:+1 415 555 0134").unwrap();
        assert_eq!(phone.value, "+14155550134");
        let external = parse_handle("external:shop-api:user:7").unwrap();
        assert_eq!(
            (external.scope.as_str(), external.value.as_str()),
            ("shop-api", "user:7")
        );
        let telegram = parse_handle("telegram:12345").unwrap();
        assert_eq!(
            (telegram.scope.as_str(), telegram.value.as_str()),
            ("", "12345")
        );
        let wechat = parse_handle("wechat_openid:wx123:oUpF8u").unwrap();
        assert_eq!(
            (wechat.scope.as_str(), wechat.value.as_str()),
            ("wx123", "oUpF8u")
        );
        assert_eq!(wechat.to_string(), "wechat_openid:wx123:oUpF8u");
        assert!(parse_handle("fax:1").is_err());
        assert!(parse_handle("ana@example.com").is_err());
        assert!(parse_handle("external:no-scope").is_err());
    }
}
