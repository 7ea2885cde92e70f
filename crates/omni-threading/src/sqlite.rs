//! The embedded store: a SQLite file in the data directory, with the
//! threading state held in memory and journaled to the file.

use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use omni_proto::v1::ThreadingCommand;
use omni_proto::v1::TimelineEvent;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row as _, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::batch::{Overlay, Wants, Write, plan_batch};
use crate::error::{DbContext as _, StoreError, ThreadingError};
use crate::ids::{CustomerId, HandleKey};
use crate::logic::{Conversation, InboundEvent, ThreadingConfig};
use crate::sql::{retrying, sql_shared};
use crate::state::{HashMap, State, command_writes};
use crate::store::{
    CommandOutcome, IdentityRecord, OutboxRow, Outcome, ThreadingStore, TimelinePage,
};
use crate::{CommandDecision, CommandError, CommandLookups};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Threading state in a SQLite file.
///
/// The state (who owns which handle, open conversations, Message-IDs,
/// event ids seen) lives in memory; each batch or command commits one
/// `state_journal` row with its row changes plus its timeline rows, in one
/// transaction, and only then changes the memory. Updating state tables
/// instead costs several random B-tree pages per event, which caps
/// throughput far below what a journal append does (docs/benchmarks.md,
/// "Fourth look"). The price is memory: the state is a few hundred bytes
/// per event threaded (every event id is kept, for deduplication), loaded
/// again when the store opens.
///
/// Writers take the file's write lock at `BEGIN IMMEDIATE` and then apply
/// any journal rows another process (or pool) committed since their last
/// look, so several stores on one file stay correct, like several workers
/// on PostgreSQL; WAL lets readers (the query API, the relay) run
/// meanwhile.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The one connection write transactions use: writers take the file's
    /// lock one at a time anyway.
    writer: SqlitePool,
    state: Arc<Mutex<Journaled>>,
}

/// The state as of journal row `through`, and the store's index of each
/// customer's timeline rows as of row `timeline_through`.
#[derive(Default)]
struct Journaled {
    state: State,
    through: i64,
    /// Customer id (as stored in the row) -> its timeline row ids, in
    /// increasing order.
    timeline: HashMap<String, Vec<i64>>,
    timeline_through: i64,
    /// A commit failed after the state had changed: reload before use.
    stale: bool,
}

impl Journaled {
    /// The state the file holds: its state tables, then its journal.
    async fn load(conn: &mut SqliteConnection) -> Result<Journaled, StoreError> {
        let mut journaled = Journaled::default();
        load_tables(conn, &mut journaled.state).await?;
        catch_up(conn, &mut journaled).await?;
        Ok(journaled)
    }

    fn add_timeline_row(&mut self, id: i64, customer: String) {
        self.timeline.entry(customer).or_default().push(id);
        self.timeline_through = self.timeline_through.max(id);
    }

    /// The first `limit` row ids after `after` of `customers`' timelines
    /// together, in order.
    fn page_ids(&self, customers: &[CustomerId], after: i64, limit: usize) -> Vec<i64> {
        let mut ids: Vec<i64> = customers
            .iter()
            .filter_map(|c| self.timeline.get(c.as_str()))
            .flat_map(|rows| {
                let start = rows.partition_point(|&id| id <= after);
                rows[start..].iter().take(limit).copied()
            })
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        ids
    }
}

impl std::fmt::Debug for Journaled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journaled")
            .field("through", &self.through)
            .field("timeline_through", &self.timeline_through)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, migrates it and
    /// loads its state.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .ctx("parsing sqlite options")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed threading transaction survives power loss,
            // like the event log's commits do.
            .synchronous(SqliteSynchronous::Full)
            // Another writer holds the lock for one transaction at most;
            // waiting beats failing.
            .busy_timeout(Duration::from_secs(30))
            .pragma("temp_store", "memory")
            // Checkpoint every ~256 MiB of WAL instead of ~4 MiB: a page
            // written often is copied back once, not once per checkpoint.
            // Durability is the WAL's fsync, unchanged.
            .pragma("wal_autocheckpoint", "65536")
            // Read the file through a memory map (up to 2 GB, SQLite's
            // limit on Linux): loading the state and serving pages cost no
            // system call per page. Writes still go through the WAL.
            .pragma("mmap_size", "2147418112");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .ctx("opening sqlite store")?;
        MIGRATOR.run(&pool).await.map_err(StoreError::Migrate)?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .ctx("opening sqlite store")?;
        let mut conn = pool.acquire().await.ctx("opening sqlite store")?;
        let journaled = Journaled::load(&mut conn).await?;
        drop(conn);
        Ok(SqliteStore {
            pool,
            writer,
            state: Arc::new(Mutex::new(journaled)),
        })
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    /// The state, reloaded first if a failed commit left it ahead of the
    /// file.
    async fn lock(&self) -> Result<tokio::sync::MutexGuard<'_, Journaled>, StoreError> {
        let mut journaled = self.state.lock().await;
        if journaled.stale {
            let mut conn = self.pool.acquire().await.ctx("reloading state")?;
            *journaled = Journaled::load(&mut conn).await?;
        }
        Ok(journaled)
    }

    /// The state, caught up with what other processes committed.
    async fn current(&self) -> Result<tokio::sync::MutexGuard<'_, Journaled>, StoreError> {
        let mut journaled = self.lock().await?;
        let mut conn = self.pool.acquire().await.ctx("reading state journal")?;
        catch_up(&mut conn, &mut journaled).await?;
        Ok(journaled)
    }

    /// One attempt at a batch: plans against the state in memory, then
    /// commits the journal row and the timeline rows (one fsync).
    async fn thread_batch_once(
        &self,
        config: &ThreadingConfig,
        inputs: &[InboundEvent],
    ) -> Result<Vec<Result<Outcome, ThreadingError>>, StoreError> {
        let lookups: Vec<_> = inputs.iter().map(crate::lookups).collect();
        let wants = Wants::of(lookups.iter().flatten());
        let mut journaled = self.lock().await?;
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("beginning transaction")?;
        catch_up(&mut tx, &mut journaled).await?;
        let mut overlay = Overlay::default();
        journaled.state.prefetch(&wants, &mut overlay);
        let mut pipeline = Pipeline::start(tx).await?;
        let mut outcomes = Vec::with_capacity(inputs.len());
        let mut lookups = lookups.into_iter();
        for part in inputs.chunks(PART) {
            let part_lookups = lookups.by_ref().take(part.len()).collect();
            outcomes.extend(plan_batch(config, part, part_lookups, &mut overlay));
            let writes = overlay
                .take_writes()
                .into_iter()
                .map(|write| with_merged_customers(write, &journaled.state))
                .collect();
            pipeline.push(writes)?;
        }
        pipeline.finish(&mut journaled).await?;
        Ok(outcomes)
    }

    async fn apply_command_once(
        &self,
        command: &ThreadingCommand,
        lookups: &CommandLookups,
    ) -> Result<Result<CommandOutcome, CommandError>, StoreError> {
        let mut journaled = self.lock().await?;
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("beginning transaction")?;
        catch_up(&mut tx, &mut journaled).await?;
        let snapshot = journaled.state.command_snapshot(lookups);
        let plan = match crate::plan_command(command, &snapshot) {
            Ok(CommandDecision::Apply(plan)) => plan,
            Ok(CommandDecision::Duplicate) => {
                tx.rollback().await.ctx("rolling back")?;
                return Ok(Ok(CommandOutcome::Duplicate));
            }
            Err(refused) => {
                tx.rollback().await.ctx("rolling back")?;
                return Ok(Err(refused));
            }
        };
        let issued_ms = crate::logic::timestamp_ms(command.issued_at.as_ref());
        let mut pipeline = Pipeline::start(tx).await?;
        pipeline.push(command_writes(&command.command_id, issued_ms, &plan))?;
        pipeline.finish(&mut journaled).await?;
        Ok(Ok(CommandOutcome::Applied(plan.timeline)))
    }
}

/// A message's timeline row stays with the customer it was written for;
/// that customer may since have been merged into the one an attachment
/// update goes to, so the update looks among the merged customers' rows
/// too.
fn with_merged_customers(write: Write, state: &State) -> Write {
    match write {
        Write::StoreAttachment {
            customers,
            message_event_id,
            index,
            attachment,
        } => {
            let mut all: Vec<CustomerId> = customers
                .iter()
                .flat_map(|c| state.timeline_customers(c))
                .chain(customers.iter().cloned())
                .collect();
            all.sort();
            all.dedup();
            Write::StoreAttachment {
                customers: all,
                message_event_id,
                index,
                attachment,
            }
        }
        write => write,
    }
}

/// Events planned before their rows are handed to the writing task: small
/// enough that SQLite starts early, large enough for multi-row statements.
const PART: usize = 128;

/// One write transaction, fed in parts. A task of its own writes each
/// part's journal row and timeline rows as soon as it is handed over, so
/// SQLite works on one core while the caller plans the next part on the
/// other; [`Pipeline::finish`] commits all parts at once (one fsync) and
/// only then changes the state in memory.
struct Pipeline {
    parts: mpsc::UnboundedSender<Part>,
    task: JoinHandle<Result<Written, StoreError>>,
    /// The timeline's sequence before the transaction: the new rows take
    /// the ids after it, in order (under the write lock, AUTOINCREMENT).
    last: i64,
    changes: Vec<Write>,
    customers: Vec<String>,
}

/// A part's journal row (its changes, JSON), timeline rows, and the
/// message rows its attachment updates fill in.
struct Part {
    json: String,
    timeline: Vec<TimelineEvent>,
    fills: Vec<Fill>,
}

/// A [`Write::StoreAttachment`], for the writing task.
struct Fill {
    customers: Vec<String>,
    message_event_id: String,
    index: u32,
    attachment: Box<omni_proto::v1::Attachment>,
}

/// The transaction after its parts were written, and the last journal
/// row's id (none: nothing to commit).
struct Written {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    journal_id: Option<i64>,
}

impl Pipeline {
    async fn start(
        mut tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    ) -> Result<Pipeline, StoreError> {
        let last: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'timeline'), 0)",
        )
        .fetch_one(&mut *tx)
        .await
        .ctx("reading timeline sequence")?;
        let (parts, mut receive) = mpsc::unbounded_channel::<Part>();
        let task = tokio::spawn(async move {
            let mut journal_id = None;
            while let Some(part) = receive.recv().await {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO state_journal (writes) VALUES ($1) RETURNING id",
                )
                .bind(part.json)
                .fetch_one(&mut *tx)
                .await
                .ctx("journaling state")?;
                SqliteStore::append_timeline(&mut tx, &part.timeline).await?;
                for fill in &part.fills {
                    SqliteStore::rewrite_attachment(
                        &mut tx,
                        &fill.customers,
                        &fill.message_event_id,
                        fill.index,
                        &fill.attachment,
                    )
                    .await?;
                }
                journal_id = Some(id);
            }
            Ok(Written { tx, journal_id })
        });
        Ok(Pipeline {
            parts,
            task,
            last,
            changes: Vec::new(),
            customers: Vec::new(),
        })
    }

    /// Hands `writes` (in plan order) to the writing task.
    fn push(&mut self, writes: Vec<Write>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut timeline = Vec::new();
        let mut fills = Vec::new();
        let first = self.changes.len();
        for write in writes {
            match write {
                Write::Timeline(entry) => {
                    self.customers.push(entry.customer_id.clone());
                    timeline.push(*entry);
                }
                Write::StoreAttachment {
                    customers,
                    message_event_id,
                    index,
                    attachment,
                } => fills.push(Fill {
                    customers: customers.iter().map(|c| c.as_str().to_owned()).collect(),
                    message_event_id,
                    index,
                    attachment,
                }),
                change => self.changes.push(change),
            }
        }
        let json = serde_json::to_string(&self.changes[first..])
            .map_err(|source| StoreError::Journal { id: 0, source })?;
        // A closed channel means the task failed: `finish` reports why.
        let _ = self.parts.send(Part {
            json,
            timeline,
            fills,
        });
        Ok(())
    }

    /// Commits what was pushed, then applies it to `journaled` (during the
    /// commit's fsync; should the commit fail, the state is reloaded).
    async fn finish(self, journaled: &mut Journaled) -> Result<(), StoreError> {
        let Pipeline {
            parts,
            task,
            last,
            changes,
            customers,
        } = self;
        drop(parts);
        let written = task.await.map_err(StoreError::Writer)??;
        let Some(id) = written.journal_id else {
            return written.tx.rollback().await.ctx("rolling back");
        };
        let commit = written.tx.commit();
        let apply = async {
            for change in &changes {
                journaled.state.apply(change);
            }
        };
        let (committed, ()) = tokio::join!(commit, apply);
        if let Err(e) = committed {
            journaled.stale = true;
            return Err(StoreError::Database {
                op: "committing",
                source: e,
            });
        }
        journaled.through = id;
        for (n, customer) in (1..).zip(customers) {
            journaled.add_timeline_row(last + n, customer);
        }
        Ok(())
    }
}

/// Applies the journal rows after `journaled.through` and indexes the
/// timeline rows after `journaled.timeline_through`: those another process
/// committed, or all of them when the store opens.
async fn catch_up(
    conn: &mut SqliteConnection,
    journaled: &mut Journaled,
) -> Result<(), StoreError> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, customer_id FROM timeline WHERE id > $1 ORDER BY id")
            .bind(journaled.timeline_through)
            .fetch_all(&mut *conn)
            .await
            .ctx("reading timeline index")?;
    for (id, customer) in rows {
        journaled.add_timeline_row(id, customer);
    }
    let rows = sqlx::query("SELECT id, writes FROM state_journal WHERE id > $1 ORDER BY id")
        .bind(journaled.through)
        .fetch_all(&mut *conn)
        .await
        .ctx("reading state journal")?;
    for row in rows {
        let id: i64 = row.try_get(0).ctx("decoding state journal")?;
        let json: &str = row.try_get(1).ctx("decoding state journal")?;
        let writes: Vec<Write> =
            serde_json::from_str(json).map_err(|source| StoreError::Journal { id, source })?;
        for write in &writes {
            journaled.state.apply(write);
        }
        journaled.through = id;
    }
    Ok(())
}

/// Loads what the state tables hold: the state an older version of this
/// store wrote before it journaled (empty in a file created since).
async fn load_tables(conn: &mut SqliteConnection, state: &mut State) -> Result<(), StoreError> {
    let decode = |e| StoreError::Database {
        op: "loading state",
        source: e,
    };
    let mut merges = Vec::new();
    for r in sqlx::query("SELECT id, merged_into, next_sequence FROM customers")
        .fetch_all(&mut *conn)
        .await
        .ctx("loading customers")?
    {
        let id = CustomerId::from_string(r.try_get(0).map_err(decode)?);
        if let Some(survivor) = r.try_get::<Option<String>, _>(1).map_err(decode)? {
            merges.push(Write::Merge {
                survivor: CustomerId::from_string(survivor),
                loser: id.clone(),
            });
        }
        let next: i64 = r.try_get(2).map_err(decode)?;
        state.apply(&Write::Customer {
            id,
            next_sequence: u64::try_from(next).unwrap_or(1),
        });
    }
    merges.iter().for_each(|m| state.apply(m));
    for r in sqlx::query("SELECT kind, scope, value, customer_id, confirmed FROM identities")
        .fetch_all(&mut *conn)
        .await
        .ctx("loading identities")?
    {
        state.apply(&Write::Identity {
            key: HandleKey {
                kind: r.try_get(0).map_err(decode)?,
                scope: r.try_get(1).map_err(decode)?,
                value: r.try_get(2).map_err(decode)?,
            },
            customer: CustomerId::from_string(r.try_get(3).map_err(decode)?),
            confirmed: r.try_get(4).map_err(decode)?,
        });
    }
    for r in sqlx::query(
        "SELECT id, customer_id, channel_id, thread_key, email, subject, open, \
         last_activity_ms FROM conversations",
    )
    .fetch_all(&mut *conn)
    .await
    .ctx("loading conversations")?
    {
        state.apply(&Write::Conversation(Conversation {
            id: r.try_get(0).map_err(decode)?,
            customer: CustomerId::from_string(r.try_get(1).map_err(decode)?),
            channel_id: r.try_get(2).map_err(decode)?,
            thread_key: r.try_get(3).map_err(decode)?,
            email: r.try_get(4).map_err(decode)?,
            subject: r.try_get(5).map_err(decode)?,
            open: r.try_get(6).map_err(decode)?,
            last_activity_ms: r.try_get(7).map_err(decode)?,
        }));
    }
    for r in sqlx::query("SELECT message_id, customer_id, conversation_id FROM message_refs")
        .fetch_all(&mut *conn)
        .await
        .ctx("loading message ids")?
    {
        state.apply(&Write::MessageRef {
            message_id: r.try_get(0).map_err(decode)?,
            customer: CustomerId::from_string(r.try_get(1).map_err(decode)?),
            conversation: r.try_get(2).map_err(decode)?,
        });
    }
    for r in sqlx::query("SELECT event_id, customer_id, conversation_id FROM processed_events")
        .fetch_all(&mut *conn)
        .await
        .ctx("loading events")?
    {
        state.apply(&Write::Processed {
            event_id: r.try_get(0).map_err(decode)?,
            customer: CustomerId::from_string(r.try_get(1).map_err(decode)?),
            conversation: r.try_get(2).map_err(decode)?,
        });
    }
    for r in sqlx::query("SELECT customer_id, kind, scope, value FROM suggested_links")
        .fetch_all(&mut *conn)
        .await
        .ctx("loading suggestions")?
    {
        state.apply(&Write::InsertSuggestion {
            customer: CustomerId::from_string(r.try_get(0).map_err(decode)?),
            key: HandleKey {
                kind: r.try_get(1).map_err(decode)?,
                scope: r.try_get(2).map_err(decode)?,
                value: r.try_get(3).map_err(decode)?,
            },
        });
    }
    for r in sqlx::query("SELECT command_id, issued_at_ms FROM applied_commands")
        .fetch_all(&mut *conn)
        .await
        .ctx("loading commands")?
    {
        state.apply(&Write::Command {
            command_id: r.try_get(0).map_err(decode)?,
            issued_at_ms: r.try_get(1).map_err(decode)?,
        });
    }
    Ok(())
}

/// SQLITE_BUSY / SQLITE_LOCKED (another writer): settles on retry.
fn retryable(e: &StoreError) -> bool {
    crate::sql::db_code(e).is_some_and(|code| {
        let code: i64 = code.parse().unwrap_or(0);
        matches!(code & 0xff, 5 | 6)
    })
}

sql_shared!(SqliteStore, sqlx::Sqlite);

#[async_trait]
impl ThreadingStore for SqliteStore {
    async fn thread(
        &self,
        config: &ThreadingConfig,
        input: &InboundEvent,
    ) -> Result<Outcome, StoreError> {
        let outcome = self
            .thread_batch(config, std::slice::from_ref(input))
            .await?;
        match outcome.into_iter().next() {
            Some(Ok(outcome)) => Ok(outcome),
            Some(Err(source)) => Err(StoreError::Threading {
                event_id: input.event.event_id.clone(),
                source,
            }),
            None => Ok(Outcome::Duplicate),
        }
    }

    async fn thread_batch(
        &self,
        config: &ThreadingConfig,
        inputs: &[InboundEvent],
    ) -> Result<Vec<Result<Outcome, ThreadingError>>, StoreError> {
        let first = inputs.first().map_or("", |i| i.event.event_id.as_str());
        retrying(first, retryable, || self.thread_batch_once(config, inputs)).await
    }

    async fn pending_outbox(&self, after: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        self.read_outbox(after, limit).await
    }

    async fn mark_published(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.set_published(ids).await
    }

    async fn timeline(
        &self,
        customer: &CustomerId,
        after: Option<i64>,
        limit: u32,
    ) -> Result<TimelinePage, StoreError> {
        let limit = limit as usize;
        let (resolved, customers, ids) = {
            let journaled = self.current().await?;
            let resolved = journaled
                .state
                .resolve(customer)
                .unwrap_or_else(|| customer.clone());
            let customers = journaled.state.timeline_customers(&resolved);
            // One more than asked: it says whether there is a next page.
            let ids = journaled.page_ids(&customers, after.unwrap_or(0), limit + 1);
            (resolved, customers, ids)
        };
        let rows = if ids.is_empty() {
            Vec::new()
        } else {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "SELECT id, payload FROM timeline WHERE id IN (",
            );
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind(id);
            }
            q.push(") ORDER BY id");
            q.build()
                .fetch_all(&self.pool)
                .await
                .ctx("reading timeline")?
        };
        let page = Self::timeline_page(resolved, rows, u32::try_from(limit).unwrap_or(u32::MAX))?;
        // The index is in memory: never let a row id it got wrong show
        // one customer another's history.
        if let Some(row) = page
            .entries
            .iter()
            .find(|r| !customers.iter().any(|c| c.as_str() == r.event.customer_id))
        {
            self.state.lock().await.stale = true;
            return Err(StoreError::TimelineIndex { id: row.id });
        }
        Ok(page)
    }

    async fn identity(&self, handle: &HandleKey) -> Result<Option<IdentityRecord>, StoreError> {
        let journaled = self.current().await?;
        Ok(journaled.state.owner(handle).map(|o| IdentityRecord {
            customer_id: o.customer,
            confirmed: o.confirmed,
        }))
    }

    async fn resolve_customer(&self, id: &CustomerId) -> Result<Option<CustomerId>, StoreError> {
        Ok(self.current().await?.state.resolve(id))
    }

    async fn suggestions(&self, customer: &CustomerId) -> Result<Vec<HandleKey>, StoreError> {
        Ok(self.current().await?.state.suggestions(customer))
    }

    async fn apply_command(
        &self,
        command: &ThreadingCommand,
    ) -> Result<CommandOutcome, StoreError> {
        let refused = |source| StoreError::Command {
            command_id: command.command_id.clone(),
            source,
        };
        let lookups = crate::command_lookups(command).map_err(refused)?;
        retrying(&command.command_id, retryable, || {
            self.apply_command_once(command, &lookups)
        })
        .await?
        .map_err(refused)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        self.take_lease(name, holder, now_ms, ttl_ms).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.give_up_lease(name, holder).await
    }
}
