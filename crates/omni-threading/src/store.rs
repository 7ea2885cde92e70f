//! The store trait: threading state behind one interface, so the worker,
//! the outbox relay and the query API are written once for SQLite and
//! PostgreSQL.

use async_trait::async_trait;
use omni_proto::v1::{ThreadingCommand, TimelineEvent};

use crate::error::{StoreError, ThreadingError};
use crate::ids::{CustomerId, HandleKey};
use crate::logic::{InboundEvent, ThreadingConfig};

/// What threading one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The event id was threaded before; nothing was written.
    Duplicate,
    /// The event was threaded and its timeline rows are in the outbox.
    Threaded {
        /// The customer (surviving id).
        customer_id: CustomerId,
        /// The conversation the message went to.
        conversation_id: String,
        /// Sequence numbers of the rows written, first and last.
        sequences: (u64, u64),
    },
}

/// What applying a helpdesk command did.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// The command id was applied before; nothing was written.
    Duplicate,
    /// Applied: the timeline entries it wrote to the outbox (none when it
    /// was already true, such as closing a closed conversation).
    Applied(Vec<TimelineEvent>),
}

/// A timeline row from the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Position in the outbox; increases in commit order per customer.
    pub id: i64,
    /// The timeline event (its `customer_id` is the record key).
    pub event: TimelineEvent,
}

/// A page of a customer's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelinePage {
    /// The customer id the query resolved to (after merges).
    pub customer_id: CustomerId,
    /// Entries in outbox order; those of merged customers are included with
    /// their own `customer_id` and `sequence`.
    pub entries: Vec<OutboxRow>,
    /// Pass as `after` to read the next page; `None` at the end.
    pub next: Option<i64>,
}

/// Who a handle belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    /// The owning customer (surviving id).
    pub customer_id: CustomerId,
    /// False when the link was never proven (a customer created from an
    /// unverified sender).
    pub confirmed: bool,
}

/// Threading state with transactional semantics.
///
/// [`ThreadingStore::thread`] is the whole write path: in one transaction it
/// loads the state the event touches, runs [`crate::plan`], applies the
/// state change, and appends the resulting timeline rows to the outbox.
/// A crash before commit leaves nothing; after commit, everything, so the
/// relay that publishes the outbox never loses or reorders a row.
/// Implementations must be safe with several workers (processes) on one
/// database: they rely on database transactions, not in-process locks.
#[async_trait]
pub trait ThreadingStore: Send + Sync + 'static {
    /// Threads one event; a duplicate event id writes nothing.
    async fn thread(
        &self,
        config: &ThreadingConfig,
        input: &InboundEvent,
    ) -> Result<Outcome, StoreError>;

    /// Threads `inputs` in order in one transaction: exactly what calling
    /// [`ThreadingStore::thread`] on each in turn does (later events see
    /// what earlier ones wrote; duplicates, including repeats within the
    /// batch, write nothing), but with one commit, so one fsync covers
    /// the batch.
    ///
    /// One result per input, in order: `Err` for an event the logic
    /// refuses (it writes nothing and does not affect the others). An
    /// outer `Err` means the transaction failed and nothing of the batch
    /// was written; conflicts with other workers are retried with the
    /// whole batch before that. The default runs one transaction per
    /// event (an outer `Err` may then follow committed events, which a
    /// retry drops as duplicates); the SQL stores override it.
    async fn thread_batch(
        &self,
        config: &ThreadingConfig,
        inputs: &[InboundEvent],
    ) -> Result<Vec<Result<Outcome, ThreadingError>>, StoreError> {
        let mut outcomes = Vec::with_capacity(inputs.len());
        for input in inputs {
            match self.thread(config, input).await {
                Ok(outcome) => outcomes.push(Ok(outcome)),
                Err(StoreError::Threading { source, .. }) => outcomes.push(Err(source)),
                Err(e) => return Err(e),
            }
        }
        Ok(outcomes)
    }

    /// Unpublished outbox rows after `after` (exclusive), oldest first.
    async fn pending_outbox(&self, after: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;

    /// Marks outbox rows published (after the broker acknowledged them).
    async fn mark_published(&self, ids: &[i64]) -> Result<(), StoreError>;

    /// A page of a customer's timeline, with merged customers' entries;
    /// `after` is the last row id of the previous page.
    async fn timeline(
        &self,
        customer: &CustomerId,
        after: Option<i64>,
        limit: u32,
    ) -> Result<TimelinePage, StoreError>;

    /// The customer a handle belongs to.
    async fn identity(&self, handle: &HandleKey) -> Result<Option<IdentityRecord>, StoreError>;

    /// The surviving id of a customer id (itself unless merged); `None`
    /// for an unknown id.
    async fn resolve_customer(&self, id: &CustomerId) -> Result<Option<CustomerId>, StoreError>;

    /// Handles suggested (not linked) for a customer.
    async fn suggestions(&self, customer: &CustomerId) -> Result<Vec<HandleKey>, StoreError>;

    /// Applies a helpdesk command in one transaction, with its timeline
    /// rows in the outbox, like [`ThreadingStore::thread`]. A refused
    /// command is `Err(StoreError::Command)` and writes nothing.
    async fn apply_command(&self, command: &ThreadingCommand)
    -> Result<CommandOutcome, StoreError>;

    /// Fires the SLA timers due at `now_ms` (escalations and breaches,
    /// see [`crate::sla`]), at most `limit` conversations' worth, in one
    /// transaction with their timeline rows in the outbox; returns the
    /// rows written (none when nothing was due). The daemon calls it from
    /// its clock once threading has caught up with the inbound stream, so
    /// every event before `now_ms` was threaded first and a replay writes
    /// the same entries.
    async fn fire_sla_timers(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<TimelineEvent>, StoreError>;

    /// Removes the timeline rows recorded before `before_ms` (epoch
    /// milliseconds) that the relay has published, oldest first, in
    /// windows of `batch` rows each committed on its own (so no write
    /// waits long); returns how many went. An unpublished row always
    /// stays, however old. The query API's history then starts at the
    /// first row kept; sequences go on unchanged. The embedded store only
    /// removes rows its last snapshot indexed on disk. Rows are found by
    /// id, without an index on their time (module `timeline_retention`).
    async fn prune_timeline(&self, before_ms: i64, batch: u32) -> Result<u64, StoreError>;

    /// Takes or renews the lease `name` for `holder` until `now_ms +
    /// ttl_ms`; false while another holder's lease has not expired.
    /// Times are the callers' clocks, so hosts sharing a store need clocks
    /// closer than the lease's length.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Gives the lease up if `holder` has it, so a standby takes over
    /// without waiting for it to expire.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}
