//! The embedded store: a SQLite file in the data directory, deciding
//! from the threading state of the customers in use, held in memory and
//! journaled to the file.

use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use omni_proto::v1::ThreadingCommand;
use omni_proto::v1::TimelineEvent;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection as _, Row as _, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::batch::{Overlay, Wants, Write, key_chunks, plan_batch, row_chunks};
use crate::error::{DbContext as _, StoreError, ThreadingError};
use crate::groups::{self, GroupCache, GroupCodec, GroupPlan, KeyHasher, OnDisk};
use crate::ids::{CustomerId, HandleKey};
use crate::logic::{Conversation, InboundEvent, ThreadingConfig};
use crate::sql::{retrying, sql_shared};
use crate::state::{HashMap, State, StateSizes, command_writes};
use crate::store::{
    CommandOutcome, IdentityRecord, OutboxRow, Outcome, ThreadingStore, TimelinePage,
};
use crate::{CommandDecision, CommandError, CommandLookups};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Threading state in a SQLite file.
///
/// Decisions read the per-customer state (who owns which handle, their
/// conversations, Message-IDs) from memory; each batch or command commits
/// one `state_journal` row with its row changes plus its timeline rows,
/// in one transaction, and only then changes the memory. Updating state
/// tables per batch instead costs several random B-tree pages per event,
/// which caps throughput far below what a journal append does
/// (docs/benchmarks.md, "Fourth look").
///
/// Nothing in memory grows with history: a snapshot (every
/// [`SnapshotLimits`]) moves the event ids threaded since the last one to
/// the `threaded_events` table, where later batches look them up,
/// indexes the new timeline rows by customer on disk, writes the customer
/// groups that changed (`groups.rs`) and deletes the journal; then memory
/// keeps the most recently active groups up to
/// [`SqliteOptions::cache_bytes`], and a batch loads the others from disk
/// when its lookups lead to them. Event ids are kept for
/// [`SqliteOptions::dedupe_window`] and then pruned. So memory follows the
/// cache, and opening replays at most one snapshot interval.
///
/// Writers take the file's write lock at `BEGIN IMMEDIATE` and then apply
/// any journal rows another process (or pool) committed since their last
/// look, loading the groups they change first, so several stores on one
/// file stay correct, like several workers on PostgreSQL (a store that
/// missed rows another's snapshot deleted reloads); WAL lets readers (the
/// query API, the relay) run meanwhile.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The one connection write transactions use: writers take the file's
    /// lock one at a time anyway.
    writer: SqlitePool,
    state: Arc<Mutex<Journaled>>,
    options: Arc<SqliteOptions>,
}

/// The state as of journal row `through`, and the store's index of each
/// customer's timeline rows after the last snapshot.
#[derive(Default)]
struct Journaled {
    state: State,
    through: i64,
    /// Journal rows up to here are in the state tables (and deleted).
    snapshot_through: i64,
    /// Customer id (as stored in the row) -> its timeline row ids after
    /// `timeline_snapshot`, in increasing order (older rows are indexed in
    /// `timeline_by_customer`).
    timeline: HashMap<String, Vec<i64>>,
    timeline_through: i64,
    timeline_snapshot: i64,
    /// Commands applied since the snapshot (id, issued at): a snapshot
    /// moves them to `applied_commands` and they leave memory.
    commands: Vec<(String, i64)>,
    /// Which customer groups memory holds, and which changed.
    cache: GroupCache,
    /// The stored form of the group index's keys, with the file's seed.
    keys: KeyHasher,
    /// Journal rows since the snapshot (what an open replays).
    journal_rows: i64,
    /// The file was written by a version that kept the whole state in
    /// memory: the first snapshot writes every group.
    upgrade: bool,
    /// When the last snapshot ran (or the store opened).
    last_snapshot: Option<Instant>,
    /// When event ids older than the window were last pruned.
    last_prune: Option<Instant>,
    /// A commit failed after the state had changed: reload before use.
    stale: bool,
    /// `processed_events`, where versions before `threaded_events` kept
    /// event ids, still holds some: lookups look there too.
    legacy_ids: bool,
}

impl Journaled {
    /// The state the file holds: its state tables, then its journal.
    ///
    /// Memory gets the groups with SLA timers (the clock reads them from
    /// memory) and those the journal since the snapshot changed; the rest
    /// are loaded when a lookup needs them.
    async fn load(conn: &mut SqliteConnection) -> Result<Journaled, StoreError> {
        let mut journaled = Journaled {
            legacy_ids: legacy_ids(conn).await?,
            ..Journaled::default()
        };
        let marker = read_marker(conn).await?;
        journaled.keys = KeyHasher::new(marker.seed);
        if !marker.grouped {
            load_tables(conn, &mut journaled.state).await?;
        }
        journaled.snapshot_through = marker.journal;
        journaled.through = marker.journal;
        journaled.timeline_through = marker.timeline;
        journaled.timeline_snapshot = marker.timeline;
        journaled.last_snapshot = Some(Instant::now());
        if marker.grouped {
            fault_in(conn, &mut journaled, &[groups::TIMERS_KEY.to_owned()]).await?;
        } else {
            // An earlier version's journal starts with a dump of the
            // state: all of it is replayed, then written as groups.
            journaled.through = 0;
            journaled.upgrade = true;
        }
        catch_up_rows(conn, &mut journaled).await?;
        journaled.through = journaled.through.max(marker.journal);
        if journaled.upgrade {
            journaled.cache.all_changed(&journaled.state);
        }
        Ok(journaled)
    }

    fn add_timeline_row(&mut self, id: i64, customer: String) {
        self.timeline.entry(customer).or_default().push(id);
        self.timeline_through = self.timeline_through.max(id);
    }

    /// Applies one journal row's writes. The event ids it threaded stay
    /// in the state's memory until a snapshot moves them to the tables.
    fn apply(&mut self, journal_id: i64, writes: &[Write]) {
        for write in writes {
            match write {
                // A snapshot put it on disk: it stays out of memory.
                Write::Processed { .. } if journal_id <= self.snapshot_through => continue,
                Write::Command {
                    command_id,
                    issued_at_ms,
                } => self.commands.push((command_id.clone(), *issued_at_ms)),
                _ => {}
            }
            let mut touched = Vec::new();
            self.state.touched_by(write, &mut touched);
            self.state.apply(write);
            self.cache.changed(&self.state, write, touched);
        }
    }

    /// Drops from memory what a snapshot through journal row `journal` and
    /// timeline row `timeline` put in the tables.
    fn snapshotted(&mut self, journal: i64, timeline: i64) {
        // A snapshot runs through every journal row memory holds, so
        // every event id in memory is in the tables now.
        debug_assert!(journal >= self.through);
        self.state.forget_processed();
        self.timeline.retain(|_, rows| {
            let keep = rows.partition_point(|&id| id <= timeline);
            rows.drain(..keep);
            !rows.is_empty()
        });
        for (command_id, _) in std::mem::take(&mut self.commands) {
            self.state.forget_command(&command_id);
        }
        self.snapshot_through = self.snapshot_through.max(journal);
        self.timeline_snapshot = self.timeline_snapshot.max(timeline);
        self.last_snapshot = Some(Instant::now());
    }

    /// Whether enough is pending that a snapshot should run now.
    fn snapshot_due(&self, limits: &SnapshotLimits) -> bool {
        let pending =
            self.through > self.snapshot_through || self.timeline_through > self.timeline_snapshot;
        pending
            && (self.state.sizes().recent_event_ids >= limits.events
                || self.cache.changed_count() >= limits.changed_customers
                || self.through - self.snapshot_through >= limits.journal_rows
                || self
                    .last_snapshot
                    .is_none_or(|at| at.elapsed() >= limits.interval))
    }

    /// The first `limit` row ids after `after` of `customers`' timelines
    /// together, in order, among the rows indexed in memory.
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

/// When the embedded store moves event ids and the timeline index to disk.
#[derive(Debug, Clone)]
pub struct SnapshotLimits {
    /// Event ids threaded since the last snapshot (each costs memory until
    /// it is on disk).
    pub events: usize,
    /// Customers changed since the last snapshot: their groups stay in
    /// memory until it writes them, so this bounds memory beyond the
    /// cache when many customers write.
    pub changed_customers: usize,
    /// Journal rows since the last snapshot (each is replayed on open).
    pub journal_rows: i64,
    /// Time since the last snapshot, so a quiet store's journal is short
    /// too.
    pub interval: Duration,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        // A few seconds of work at full speed: opening replays at most
        // this much (about half a second), memory holds at most this many
        // recent ids (about 20 MB), and each snapshot rewrites the pages
        // of the event-id index it touches once for all of them, so
        // larger snapshots write less per event.
        SnapshotLimits {
            events: 131_072,
            changed_customers: 16_384,
            journal_rows: 1024,
            interval: Duration::from_secs(60),
        }
    }
}

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long threaded event ids are kept for deduplication. Providers
    /// retry for days (Meta for up to 7), so the default is 14 days.
    pub dedupe_window: Duration,
    /// When snapshots run.
    pub snapshots: SnapshotLimits,
    /// How much of the per-customer state memory keeps after a snapshot,
    /// as bytes of the customer groups' JSON on disk, before compression
    /// (their rows and indexes in memory take several times that); the
    /// least recently used groups beyond it are dropped and loaded again
    /// when a lookup needs them. Groups changed since the
    /// snapshot and groups with SLA timers always stay.
    pub cache_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            dedupe_window: Duration::from_secs(14 * 86_400),
            snapshots: SnapshotLimits::default(),
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// The default [`SqliteOptions::cache_bytes`]: tens of thousands of
/// customers at a few hundred bytes each, well inside a small box.
pub const DEFAULT_CACHE_BYTES: u64 = 16 << 20;

/// How often the ids older than the window are pruned: they only need to
/// go within a fraction of the window, and each prune is a write.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Ids pruned per transaction, so a large backlog never holds the write
/// lock long.
const PRUNE_BATCH: i64 = 10_000;

/// Rows a query may have in flight between sqlx's connection thread and
/// the task reading them: the largest batch the store reads at once (the
/// relay's 1,024 outbox rows), so a read never stalls that thread half
/// way. The rows are collected in full anyway.
const ROW_BUFFER: usize = 1024;

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with the default
    /// options, migrates it and loads its state.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, SqliteOptions::default()).await
    }

    /// Opens (creating if needed) the store at `path`, migrates it and
    /// loads its state.
    pub async fn open_with(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let connect = SqliteConnectOptions::from_str("sqlite:")
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
            // sqlx hands rows from its connection thread to the caller
            // through a channel of this many; at its default of 50 the
            // relay's read of up to 1,024 outbox rows put that thread to
            // sleep and woke it again every 50 rows.
            .row_buffer_size(ROW_BUFFER);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(connect.clone())
            .await
            .ctx("opening sqlite store")?;
        MIGRATOR.run(&pool).await.map_err(StoreError::Migrate)?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // The writer looks event ids up in a table that grows with the
            // deduplication window: 16 MiB of page cache keeps the upper
            // levels of its index in memory, a fixed amount.
            .connect_with(connect.pragma("cache_size", "-16384"))
            .await
            .ctx("opening sqlite store")?;
        let mut conn = writer.acquire().await.ctx("opening sqlite store")?;
        index_by_hashes(&mut conn).await?;
        drop(conn);
        let mut conn = pool.acquire().await.ctx("opening sqlite store")?;
        let journaled = Journaled::load(&mut conn).await?;
        drop(conn);
        Ok(SqliteStore {
            pool,
            writer,
            state: Arc::new(Mutex::new(journaled)),
            options: Arc::new(options),
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

    /// The state, caught up with what other processes committed, with
    /// the groups `keys` lead to in memory.
    async fn current(
        &self,
        keys: &[String],
    ) -> Result<tokio::sync::MutexGuard<'_, Journaled>, StoreError> {
        let mut journaled = self.lock().await?;
        let mut conn = self.pool.acquire().await.ctx("reading state journal")?;
        catch_up(&mut conn, &mut journaled).await?;
        fault_in(&mut conn, &mut journaled, keys).await?;
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
        // Ids threaded before the last snapshot are on disk: read first, so
        // the prefetch also brings the conversations they name.
        let on_disk: Vec<&String> = wants
            .event_ids
            .iter()
            .filter(|id| !journaled.state.has_processed(id))
            .collect();
        let processed = processed_on_disk(&mut tx, &on_disk, journaled.legacy_ids).await?;
        // The groups the lookups lead to, from disk where memory lacks
        // them; then whatever the first read names that is still missing
        // (a customer an attachment update's message went to).
        let conversations: Vec<String> = wants
            .event_ids
            .iter()
            .filter_map(|id| journaled.state.processed_conversation(id).cloned())
            .chain(processed.iter().map(|(_, c)| c.clone()))
            .collect();
        let keys = groups::keys_for_batch(&journaled.state, &wants, &conversations);
        fault_in(&mut tx, &mut journaled, &keys).await?;
        let mut overlay = Overlay::default();
        for (id, conversation) in &processed {
            overlay.add_processed(id.clone(), conversation.clone());
        }
        journaled.state.prefetch(&wants, &mut overlay);
        let missing = groups::keys_for_overlay(&journaled.state, &overlay);
        if !missing.is_empty() {
            fault_in(&mut tx, &mut journaled, &missing).await?;
            overlay = Overlay::default();
            for (id, conversation) in processed {
                overlay.add_processed(id, conversation);
            }
            journaled.state.prefetch(&wants, &mut overlay);
        }
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

    async fn fire_sla_timers_once(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<TimelineEvent>, StoreError> {
        let mut journaled = self.lock().await?;
        if !journaled.state.has_due_timer(now_ms) {
            return Ok(Vec::new());
        }
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("beginning transaction")?;
        catch_up(&mut tx, &mut journaled).await?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let plan = crate::plan_timers(&journaled.state.timer_snapshot(now_ms, limit), now_ms);
        if plan.timeline.is_empty() {
            tx.rollback().await.ctx("rolling back")?;
            return Ok(Vec::new());
        }
        let mut pipeline = Pipeline::start(tx).await?;
        pipeline.push(crate::state::timer_writes(&plan))?;
        pipeline.finish(&mut journaled).await?;
        Ok(plan.timeline)
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
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM applied_commands WHERE command_id = $1")
                .bind(&lookups.command_id)
                .fetch_optional(&mut *tx)
                .await
                .ctx("looking the command up")?;
        if applied.is_some() {
            tx.rollback().await.ctx("rolling back")?;
            return Ok(Ok(CommandOutcome::Duplicate));
        }
        let keys = groups::keys_for_command(&journaled.state, lookups);
        fault_in(&mut tx, &mut journaled, &keys).await?;
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
    /// Journal rows written.
    rows: i64,
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
            let mut rows = 0;
            while let Some(part) = receive.recv().await {
                rows += 1;
                // Ids go on after the snapshot's even when it left the
                // table empty (SQLite would start again at 1).
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO state_journal (id, writes) VALUES (1 + MAX( \
                     COALESCE((SELECT MAX(id) FROM state_journal), 0), \
                     (SELECT journal_through FROM state_snapshot WHERE id = 1)), $1) \
                     RETURNING id",
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
            Ok(Written {
                tx,
                journal_id,
                rows,
            })
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
        let parts_written = written.rows;
        let Some(id) = written.journal_id else {
            return written.tx.rollback().await.ctx("rolling back");
        };
        let commit = written.tx.commit();
        let apply = async { journaled.apply(id, &changes) };
        let (committed, ()) = tokio::join!(commit, apply);
        if let Err(e) = committed {
            journaled.stale = true;
            return Err(StoreError::Database {
                op: "committing",
                source: e,
            });
        }
        journaled.through = id;
        journaled.journal_rows += parts_written;
        for (n, customer) in (1..).zip(customers) {
            journaled.add_timeline_row(last + n, customer);
        }
        Ok(())
    }
}

/// Applies the journal rows after `journaled.through` and indexes the
/// timeline rows after `journaled.timeline_through`: those another process
/// committed. Should another process's snapshot have deleted rows this
/// state has not applied, the state is loaded again.
async fn catch_up(
    conn: &mut SqliteConnection,
    journaled: &mut Journaled,
) -> Result<(), StoreError> {
    let marker = read_marker(conn).await?;
    // Another process's snapshot deleted journal rows this state has not
    // applied, or converted the file to groups: start again from the file.
    if marker.journal > journaled.through || (marker.grouped && journaled.upgrade) {
        *journaled = Journaled::load(conn).await?;
        return Ok(());
    }
    journaled.snapshot_through = journaled.snapshot_through.max(marker.journal);
    catch_up_rows(conn, journaled).await
}

/// Reads the journal and timeline rows after those `journaled` has seen.
async fn catch_up_rows(
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
    loop {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, writes FROM state_journal WHERE id > $1 ORDER BY id LIMIT 64",
        )
        .bind(journaled.through)
        .fetch_all(&mut *conn)
        .await
        .ctx("reading state journal")?;
        let Some(&(last, _)) = rows.last() else {
            return Ok(());
        };
        let mut decoded = Vec::with_capacity(rows.len());
        for (id, json) in rows {
            let writes: Vec<Write> =
                serde_json::from_str(&json).map_err(|source| StoreError::Journal { id, source })?;
            decoded.push((id, writes));
        }
        // The groups the rows change, as the snapshot left them, then the
        // rows in order: loading a group before an earlier row of the page
        // is applied is the same order (the disk is older than them all).
        let mut keys: Vec<String> = decoded
            .iter()
            .flat_map(|(_, writes)| groups::keys_of_writes(&journaled.state, writes))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        fault_in(conn, journaled, &keys).await?;
        for (id, writes) in decoded {
            journaled.apply(id, &writes);
            journaled.journal_rows += 1;
        }
        journaled.through = last;
    }
}

/// Loads from disk the customer groups that `keys` lead to and memory
/// does not hold (see `groups.rs`).
async fn fault_in(
    conn: &mut SqliteConnection,
    journaled: &mut Journaled,
    keys: &[String],
) -> Result<(), StoreError> {
    let mut hashes: Vec<i64> = keys.iter().map(|key| journaled.keys.key(key)).collect();
    hashes.sort_unstable();
    hashes.dedup();
    let mut found: Vec<i64> = rows_in::<_, (i64,)>(
        conn,
        "SELECT grp FROM group_keys WHERE key IN (",
        &hashes,
        ")",
        "looking customer groups up",
    )
    .await?
    .into_iter()
    .map(|(grp,)| grp)
    .collect();
    found.sort_unstable();
    found.dedup();
    let mut codec = None;
    for list in key_chunks(&found) {
        // Each base row with its survivor, in the order written; those
        // memory holds (changed since, perhaps) are not loaded over.
        let bases: Vec<(i64, String, Vec<u8>)> = in_list(
            "SELECT rowid, survivor, CAST(writes AS BLOB) FROM state_groups WHERE rowid IN (",
            &list,
            ") ORDER BY rowid",
        )
        .build_query_as()
        .fetch_all(&mut *conn)
        .await
        .ctx("loading customer groups")?;
        let bases: Vec<(i64, CustomerId, Vec<u8>)> = bases
            .into_iter()
            .map(|(row, survivor, base)| (row, CustomerId::from_string(survivor), base))
            .filter(|(_, survivor, _)| !journaled.cache.holds(survivor))
            .collect();
        let survivors: Vec<&str> = bases.iter().map(|(_, s, _)| s.as_str()).collect();
        let mut deltas: HashMap<String, Vec<Vec<u8>>> = HashMap::default();
        // Each survivor is in one list, so its deltas stay in rowid order.
        let rows: Vec<(String, Vec<u8>)> = rows_in(
            conn,
            "SELECT survivor, writes FROM state_group_deltas WHERE survivor IN (",
            &survivors,
            ") ORDER BY rowid",
            "loading customer group deltas",
        )
        .await?;
        for (survivor, row) in rows {
            deltas.entry(survivor).or_default().push(row);
        }
        let codec = match &mut codec {
            Some(codec) => codec,
            None => codec.insert(GroupCodec::new().map_err(StoreError::GroupCodec)?),
        };
        for (row, survivor, base) in bases {
            let parts = deltas.remove(survivor.as_str()).unwrap_or_default();
            let mut disk = OnDisk {
                row,
                ..OnDisk::default()
            };
            for (i, row) in std::iter::once(&base).chain(&parts).enumerate() {
                let (writes, bytes) = codec.decode(row).map_err(|source| StoreError::Group {
                    survivor: survivor.to_string(),
                    source,
                })?;
                for write in &writes {
                    journaled.state.apply(write);
                }
                if i == 0 {
                    disk.base = bytes;
                } else {
                    disk.deltas += bytes;
                    disk.parts += 1;
                }
            }
            journaled.cache.loaded(survivor, disk);
        }
    }
    Ok(())
}

/// `before`, the values bound as a comma-separated list, then `after`: a
/// bulk statement over one of [`key_chunks`]' lists.
fn in_list<T>(before: &str, values: &[&T], after: &str) -> sqlx::QueryBuilder<sqlx::Sqlite>
where
    T: Copy + for<'t> sqlx::Encode<'t, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    let mut q = sqlx::QueryBuilder::new(before);
    let mut separated = q.separated(", ");
    for value in values {
        separated.push_bind(**value);
    }
    q.push(after);
    q
}

/// Writes the customer groups that changed since the last snapshot (whole,
/// or their new writes as a delta row), with their index rows, and
/// deletes the groups merged away; returns what each written group has on
/// disk now.
async fn write_groups(
    tx: &mut SqliteConnection,
    journaled: &Journaled,
) -> Result<Vec<(CustomerId, OnDisk)>, StoreError> {
    let state = &journaled.state;
    let timers_key = journaled.keys.key(groups::TIMERS_KEY);
    let (plans, gone) = journaled.cache.plans(state);
    let gone: Vec<&str> = gone.iter().map(CustomerId::as_str).collect();
    for list in key_chunks(&gone) {
        let rows: Vec<i64> = in_list(
            "DELETE FROM state_groups WHERE survivor IN (",
            &list,
            ") RETURNING rowid",
        )
        .build_query_scalar()
        .fetch_all(&mut *tx)
        .await
        .ctx("deleting merged customer groups")?;
        // Before any new group can take over one of these rowids.
        forget_timers(tx, timers_key, rows).await?;
    }
    let codec_error = |survivor: &CustomerId| {
        let survivor = survivor.to_string();
        move |source| StoreError::Group { survivor, source }
    };
    let mut codec = GroupCodec::new().map_err(StoreError::GroupCodec)?;
    let mut bases = Vec::new();
    let mut deltas = Vec::new();
    // Groups whose delta rows go: those merged away and those written
    // whole.
    let mut drop_deltas = gone.clone();
    // (index key, the group's place in `written`): a new group's row is
    // known once its base row is written.
    let mut keys: Vec<(i64, usize)> = Vec::new();
    let mut written = Vec::new();
    for (survivor, plan, disk) in &plans {
        let delta = match plan {
            GroupPlan::Delta(writes) => {
                let (row, bytes) = codec.encode(writes).map_err(codec_error(survivor))?;
                (!groups::fold_deltas(*disk, bytes)).then_some((writes, row, bytes))
            }
            GroupPlan::Whole => None,
        };
        if let Some((writes, row, bytes)) = delta {
            for key in groups::keys_of_group(survivor, writes) {
                keys.push((journaled.keys.key(&key), written.len()));
            }
            deltas.push((survivor.as_str(), row));
            written.push((
                survivor.clone(),
                OnDisk {
                    deltas: disk.deltas + bytes,
                    parts: disk.parts + 1,
                    ..*disk
                },
            ));
        } else {
            let writes = state.group_writes(survivor);
            let (row, bytes) = codec.encode(&writes).map_err(codec_error(survivor))?;
            for key in groups::keys_of_group(survivor, &writes) {
                keys.push((journaled.keys.key(&key), written.len()));
            }
            // Whatever this store's view of them: another process may
            // have appended some since it loaded the group, and a delta
            // left behind a newer base would take its rows back.
            drop_deltas.push(survivor.as_str());
            bases.push((survivor.as_str(), row));
            written.push((
                survivor.clone(),
                OnDisk {
                    row: disk.row,
                    base: bytes,
                    ..OnDisk::default()
                },
            ));
        }
        if state.group_has_timers(survivor) {
            keys.push((timers_key, written.len() - 1));
        }
    }
    for list in key_chunks(&drop_deltas) {
        in_list(
            "DELETE FROM state_group_deltas WHERE survivor IN (",
            &list,
            ")",
        )
        .build()
        .execute(&mut *tx)
        .await
        .ctx("deleting customer group deltas")?;
    }
    // New groups get the next rowids, at the end of the table; a group
    // written whole again keeps its row.
    let mut rows: HashMap<String, i64> = HashMap::default();
    for chunk in row_chunks(&bases) {
        let mut q =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO state_groups (survivor, writes) ");
        q.push_values(chunk, |mut b, (survivor, row)| {
            b.push_bind(*survivor).push_bind(row.as_slice());
        });
        q.push(
            " ON CONFLICT (survivor) DO UPDATE SET writes = excluded.writes \
             RETURNING survivor, rowid",
        );
        let returned: Vec<(String, i64)> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .ctx("writing customer groups")?;
        rows.extend(returned);
    }
    for (survivor, disk) in &mut written {
        if let Some(&row) = rows.get(survivor.as_str()) {
            disk.row = row;
        }
        debug_assert!(disk.row > 0, "group {survivor} written without its row");
    }
    for chunk in row_chunks(&deltas) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT OR IGNORE INTO state_group_deltas (survivor, writes) ",
        );
        q.push_values(chunk, |mut b, (survivor, row)| {
            b.push_bind(*survivor).push_bind(row.as_slice());
        });
        q.build()
            .execute(&mut *tx)
            .await
            .ctx("writing customer group deltas")?;
    }
    let index = keys
        .into_iter()
        .map(|(key, group)| (key, written[group].1.row))
        .collect();
    index_groups(tx, index).await?;
    let no_timers = written
        .iter()
        .filter(|(survivor, _)| !state.group_has_timers(survivor))
        .map(|(_, disk)| disk.row)
        .collect();
    forget_timers(tx, timers_key, no_timers).await?;
    Ok(written)
}

/// Adds (index key, group row) entries to the group index, in key order
/// so each of its pages is visited once.
async fn index_groups(
    tx: &mut SqliteConnection,
    mut entries: Vec<(i64, i64)>,
) -> Result<(), StoreError> {
    entries.sort_unstable();
    entries.dedup();
    for chunk in row_chunks(&entries) {
        let mut q =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT OR IGNORE INTO group_keys (key, grp) ");
        q.push_values(chunk, |mut b, (key, grp)| {
            b.push_bind(*key).push_bind(*grp);
        });
        q.build()
            .execute(&mut *tx)
            .await
            .ctx("indexing customer groups")?;
    }
    Ok(())
}

/// Takes the groups at `rows` off the list of groups with SLA timers
/// (which opening the store loads). Other index rows of a group that is
/// gone may stay: they only cost a useless load.
async fn forget_timers(
    tx: &mut SqliteConnection,
    timers_key: i64,
    mut rows: Vec<i64>,
) -> Result<(), StoreError> {
    rows.sort_unstable();
    for list in key_chunks(&rows) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("DELETE FROM group_keys WHERE key = ");
        q.push_bind(timers_key).push(" AND grp IN (");
        let mut separated = q.separated(", ");
        for row in list {
            separated.push_bind(*row);
        }
        q.push(")");
        q.build()
            .execute(&mut *tx)
            .await
            .ctx("indexing customer groups")?;
    }
    Ok(())
}

/// Moves the group index of a file written before `group_keys` (keys and
/// survivors as text in `state_keys`) to `group_keys`, then drops the old
/// table.
///
/// In steps of [`INDEX_STEP`] rows, each one transaction that inserts the
/// rows' new entries and deletes them from the old table: together the two
/// tables always hold every key, and a process killed midway (a startup
/// probe giving up on a large file) resumes where it stopped instead of
/// starting over. Lookups only ever read `group_keys`, so every process
/// finishes this before it loads any state; one that opens the file
/// meanwhile helps, a step at a time.
async fn index_by_hashes(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    async fn old_index(conn: &mut SqliteConnection) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master \
             WHERE type = 'table' AND name = 'state_keys')",
        )
        .fetch_one(conn)
        .await
        .ctx("looking for the group index of an earlier version")
    }
    if !old_index(&mut *conn).await? {
        return Ok(());
    }
    tracing::info!("moving the customer group index of an earlier version to hashed keys (once)");
    let started = Instant::now();
    let mut moved = 0_u64;
    loop {
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("moving the group index of an earlier version")?;
        // Another process may have finished meanwhile.
        if !old_index(&mut tx).await? {
            return Ok(());
        }
        let keys = KeyHasher::new(read_marker(&mut tx).await?.seed);
        // The first rows left, with their group's row; a row whose group
        // has been merged away has none, leads nowhere and goes.
        let step: Vec<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT k.key, k.survivor, g.rowid FROM \
             (SELECT key, survivor FROM state_keys ORDER BY key, survivor LIMIT $1) k \
             LEFT JOIN state_groups g ON g.survivor = k.survivor",
        )
        .bind(INDEX_STEP)
        .fetch_all(&mut *tx)
        .await
        .ctx("moving the group index of an earlier version")?;
        let Some((last_key, last_survivor)) =
            step.iter().map(|(key, survivor, _)| (key, survivor)).max()
        else {
            sqlx::query("DROP TABLE state_keys")
                .execute(&mut *tx)
                .await
                .ctx("moving the group index of an earlier version")?;
            tx.commit()
                .await
                .ctx("moving the group index of an earlier version")?;
            tracing::info!(
                keys = moved,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "moved the customer group index of an earlier version to hashed keys"
            );
            return Ok(());
        };
        let rows = step
            .iter()
            .filter_map(|(key, _, row)| Some((keys.key(key), (*row)?)))
            .collect();
        index_groups(&mut tx, rows).await?;
        sqlx::query("DELETE FROM state_keys WHERE (key, survivor) <= ($1, $2)")
            .bind(last_key)
            .bind(last_survivor)
            .execute(&mut *tx)
            .await
            .ctx("moving the group index of an earlier version")?;
        tx.commit()
            .await
            .ctx("moving the group index of an earlier version")?;
        moved += step.len() as u64;
    }
}

/// Rows of an earlier version's group index moved per transaction.
const INDEX_STEP: i64 = 16_384;

/// The snapshot marker: how far the event ids and the timeline index are
/// on disk, whether the state is in groups, and the group index's seed.
#[derive(Debug)]
struct Marker {
    /// Event ids of journal rows up to here are in `threaded_events`.
    journal: i64,
    /// Timeline rows up to here are in `timeline_by_customer`.
    timeline: i64,
    /// The state is on disk in groups (else as an earlier version left
    /// it: in the journal and the old tables).
    grouped: bool,
    /// The seed of the group index's keys.
    seed: [u8; 16],
}

async fn read_marker(conn: &mut SqliteConnection) -> Result<Marker, StoreError> {
    let (journal, timeline, grouped, seed): (i64, i64, bool, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT journal_through, timeline_through, grouped, key_seed \
         FROM state_snapshot WHERE id = 1",
    )
    .fetch_one(&mut *conn)
    .await
    .ctx("reading snapshot marker")?;
    Ok(Marker {
        journal,
        timeline,
        grouped,
        seed: seed
            .and_then(|seed| seed.try_into().ok())
            .ok_or(StoreError::KeySeed)?,
    })
}

/// The conversations of those `ids` a snapshot put in the tables, found
/// by their hashes (a hash's other ids are left out); also in the table
/// of earlier versions while `legacy` says it may hold some.
async fn processed_on_disk(
    conn: &mut SqliteConnection,
    ids: &[&String],
    legacy: bool,
) -> Result<Vec<(String, String)>, StoreError> {
    let wanted: std::collections::HashSet<&str> = ids.iter().map(|id| id.as_str()).collect();
    let mut hashes: Vec<i64> = ids.iter().map(|id| id_hash(id)).collect();
    hashes.sort_unstable();
    hashes.dedup();
    let select = "SELECT event_id, conversation_id FROM threaded_events WHERE id_hash IN (";
    let mut found: Vec<(String, String)> =
        rows_in(conn, select, &hashes, ")", "looking event ids up").await?;
    found.retain(|(id, _)| wanted.contains(id.as_str()));
    if legacy {
        let ids: Vec<&str> = wanted.into_iter().collect();
        let select = "SELECT event_id, conversation_id FROM processed_events WHERE event_id IN (";
        found.extend(rows_in(conn, select, &ids, ")", "looking event ids up").await?);
    }
    Ok(found)
}

/// The rows `before`, a list of `keys`, then `after` select: one
/// statement per [`key_chunks`] list, their rows in statement order.
async fn rows_in<K, R>(
    conn: &mut SqliteConnection,
    before: &'static str,
    keys: &[K],
    after: &'static str,
    op: &'static str,
) -> Result<Vec<R>, StoreError>
where
    K: Copy + Send + for<'q> sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
    R: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    let mut found = Vec::new();
    for list in key_chunks(keys) {
        let rows: Vec<R> = in_list(before, &list, after)
            .build_query_as()
            .fetch_all(&mut *conn)
            .await
            .ctx(op)?;
        found.extend(rows);
    }
    Ok(found)
}

/// The key an event id is found by on disk: 64-bit FNV-1a of its bytes.
/// Stable across versions and platforms (it is stored); not a defence
/// against chosen collisions, which only make a lookup read more rows,
/// since the ids themselves are compared.
fn id_hash(id: &str) -> i64 {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Whether the table where versions before `threaded_events` kept event
/// ids still holds any.
async fn legacy_ids(conn: &mut SqliteConnection) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processed_events)")
        .fetch_one(&mut *conn)
        .await
        .ctx("looking for event ids of an earlier version")
}

/// Loads what the state tables hold: the state an older version of this
/// store wrote before it journaled (empty in a file created since). Event
/// ids stay on disk: they are looked up there.
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
            // Versions that kept conversations in this table ran no rules.
            tags: Vec::new(),
            priority: None,
            last_acknowledgement_ms: None,
            auto_replies: Vec::new(),
            agent_replied: false,
            awaiting: None,
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

/// Keeps the lookup of the timeline row an attachment fills in to the
/// customers' rows. The embedded timeline has no index by customer (its
/// appends stay on its last page), so the lookup alone would read the
/// whole table, inside the writer's transaction, for every file stored:
/// rows up to the last snapshot are found through `timeline_by_customer`,
/// later ones by row id.
fn narrow_attachment_search(q: &mut sqlx::QueryBuilder<sqlx::Sqlite>, customers: &[String]) {
    q.push(
        " AND (id > (SELECT timeline_through FROM state_snapshot WHERE id = 1) \
         OR id IN (SELECT id FROM timeline_by_customer WHERE customer_id IN (",
    );
    let mut list = q.separated(", ");
    for customer in customers {
        list.push_bind(customer.clone());
    }
    q.push(")))");
}

sql_shared!(SqliteStore, sqlx::Sqlite, narrow_attachment_search);

/// What the embedded store holds, for operators' figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqliteStats {
    /// Rows of the state in memory.
    pub memory: StateSizes,
    /// Event ids kept on disk for deduplication (the window's).
    pub event_ids_on_disk: u64,
    /// Journal rows since the last snapshot: what opening replays.
    pub journal_rows: i64,
    /// Customer groups in memory, and their size on disk (the figure
    /// [`SqliteOptions::cache_bytes`] bounds after each snapshot).
    pub groups_in_memory: usize,
    pub group_bytes_in_memory: u64,
}

impl SqliteStore {
    /// Folds the journal into the state tables if enough is pending (see
    /// [`SnapshotLimits`]) and prunes event ids older than the window when
    /// that is due. Runs after each write; a failure leaves the journal
    /// as it was (nothing is lost, the next write tries again).
    async fn after_write(&self) {
        let (snapshot, prune) = {
            let journaled = self.state.lock().await;
            (
                journaled.snapshot_due(&self.options.snapshots),
                journaled
                    .last_prune
                    .is_none_or(|at| at.elapsed() >= PRUNE_EVERY),
            )
        };
        if snapshot && let Err(e) = self.snapshot().await {
            tracing::warn!(error = %e, "threading snapshot failed; the journal keeps everything, retrying after the next write");
        }
        if prune {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let before = now.saturating_sub(self.options.dedupe_window);
            let before = i64::try_from(before.as_millis()).unwrap_or(i64::MAX);
            match self.prune_event_ids(before).await {
                Ok(n) if n > 0 => {
                    tracing::info!(
                        pruned = n,
                        "pruned threaded event ids older than the deduplication window"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning threaded event ids failed"),
            }
            self.state.lock().await.last_prune = Some(Instant::now());
        }
    }

    /// Folds the journal into the tables: moves the event ids threaded
    /// since the last snapshot to disk, indexes the timeline rows since
    /// then by customer, writes every customer group that changed, and
    /// deletes the journal rows; then drops the least recently used
    /// groups from memory beyond [`SqliteOptions::cache_bytes`]. One
    /// transaction: a crash leaves everything as it was.
    ///
    /// Its many-row statements are `INSERT OR IGNORE` (they never insert
    /// a row twice, and bind no NULLs): a statement that may abort on a
    /// constraint keeps a statement journal of every page it changes, in
    /// memory with `temp_store = memory`: heaptrack showed 16 MB of them
    /// at the daemon's peak.
    pub async fn snapshot(&self) -> Result<(), StoreError> {
        let mut journaled = self.lock().await?;
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("beginning snapshot")?;
        catch_up(&mut tx, &mut journaled).await?;
        let marker = read_marker(&mut tx).await?;
        let now = now_ms();
        // In hash order, so each index page is visited once; every id
        // is new here (a batch looks each up before threading it).
        let mut events: Vec<(i64, &String, &String)> = journaled
            .state
            .processed()
            .map(|(event, conversation)| (id_hash(event), event, conversation))
            .collect();
        events.sort_unstable();
        let mut added = 0;
        for rows in row_chunks(&events) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO threaded_events (id_hash, event_id, conversation_id, threaded_ms) ",
            );
            q.push_values(rows, |mut b, (hash, event, conversation)| {
                b.push_bind(*hash)
                    .push_bind(event.as_str())
                    .push_bind(conversation.as_str())
                    .push_bind(now);
            });
            added += q
                .build()
                .execute(&mut *tx)
                .await
                .ctx("recording event ids")?
                .rows_affected();
        }
        let timeline_through: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM timeline")
            .fetch_one(&mut *tx)
            .await
            .ctx("reading timeline sequence")?;
        sqlx::query(
            "INSERT OR IGNORE INTO timeline_by_customer (customer_id, id) \
             SELECT customer_id, id FROM timeline WHERE id > $1 AND id <= $2 \
             ORDER BY customer_id, id",
        )
        .bind(marker.timeline)
        .bind(timeline_through)
        .execute(&mut *tx)
        .await
        .ctx("indexing timeline")?;
        let written = write_groups(&mut tx, &journaled).await?;
        let commands = &journaled.commands;
        for rows in row_chunks(commands) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT OR IGNORE INTO applied_commands (command_id, issued_at_ms) ",
            );
            q.push_values(rows, |mut b, (id, issued)| {
                b.push_bind(id.as_str()).push_bind(*issued);
            });
            q.build()
                .execute(&mut *tx)
                .await
                .ctx("recording commands")?;
        }
        if journaled.upgrade {
            // What an earlier version kept in these tables is in the
            // groups now.
            for delete in [
                "DELETE FROM customers",
                "DELETE FROM identities",
                "DELETE FROM suggested_links",
                "DELETE FROM conversations",
                "DELETE FROM message_refs",
            ] {
                sqlx::query(delete)
                    .execute(&mut *tx)
                    .await
                    .ctx("clearing tables of an earlier version")?;
            }
        }
        let through = journaled.through;
        sqlx::query("DELETE FROM state_journal WHERE id <= $1")
            .bind(through)
            .execute(&mut *tx)
            .await
            .ctx("deleting the folded journal")?;
        sqlx::query(
            "UPDATE state_snapshot SET journal_through = $1, timeline_through = $2, \
             event_ids = event_ids + $3, grouped = 1 WHERE id = 1",
        )
        .bind(through)
        .bind(timeline_through)
        .bind(i64::try_from(added).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .ctx("recording snapshot")?;
        tx.commit().await.ctx("committing snapshot")?;
        journaled.snapshotted(through, timeline_through);
        journaled.journal_rows = 0;
        journaled.upgrade = false;
        let j = &mut *journaled;
        j.cache.written(&j.state, &written);
        j.cache.shrink(&mut j.state, self.options.cache_bytes);
        Ok(())
    }

    /// Deletes event ids threaded before `before_ms` (epoch milliseconds),
    /// oldest first, in batches; returns how many. A retry of an event
    /// that old is threaded again, so the window must cover providers'
    /// retries.
    pub async fn prune_event_ids(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        for delete in [
            "DELETE FROM processed_events WHERE rowid IN (SELECT rowid FROM processed_events \
             WHERE threaded_ms < $1 ORDER BY threaded_ms LIMIT $2)",
            "DELETE FROM threaded_events WHERE rowid IN (SELECT rowid FROM threaded_events \
             WHERE threaded_ms < $1 ORDER BY threaded_ms LIMIT $2)",
        ] {
            total += self.prune_ids_with(delete, before_ms).await?;
        }
        let mut journaled = self.state.lock().await;
        if journaled.legacy_ids {
            let mut conn = self.pool.acquire().await.ctx("pruning event ids")?;
            journaled.legacy_ids = legacy_ids(&mut conn).await?;
        }
        Ok(total)
    }

    /// [`SqliteStore::prune_event_ids`] in one table, with its `delete`
    /// statement (a batch of the oldest ids).
    async fn prune_ids_with(
        &self,
        delete: &'static str,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let mut tx = self
                .writer
                .begin_with("BEGIN IMMEDIATE")
                .await
                .ctx("beginning prune")?;
            let done = sqlx::query(delete)
                .bind(before_ms)
                .bind(PRUNE_BATCH)
                .execute(&mut *tx)
                .await
                .ctx("pruning event ids")?
                .rows_affected();
            sqlx::query("UPDATE state_snapshot SET event_ids = event_ids - $1 WHERE id = 1")
                .bind(i64::try_from(done).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .ctx("counting event ids")?;
            tx.commit().await.ctx("committing prune")?;
            total += done;
            if done < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// What the store holds now.
    pub async fn stats(&self) -> Result<SqliteStats, StoreError> {
        let (memory, journal_rows, (groups_in_memory, group_bytes_in_memory)) = {
            let journaled = self.state.lock().await;
            (
                journaled.state.sizes(),
                journaled.journal_rows,
                journaled.cache.size(),
            )
        };
        let on_disk: i64 = sqlx::query_scalar("SELECT event_ids FROM state_snapshot WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .ctx("counting event ids")?
            .unwrap_or(0);
        Ok(SqliteStats {
            memory,
            event_ids_on_disk: u64::try_from(on_disk).unwrap_or(0),
            journal_rows,
            groups_in_memory,
            group_bytes_in_memory,
        })
    }
}

/// The wall clock in epoch milliseconds.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

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
        let outcomes =
            retrying(first, retryable, || self.thread_batch_once(config, inputs)).await?;
        self.after_write().await;
        Ok(outcomes)
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
            let journaled = self.current(&[groups::customer_key(customer)]).await?;
            let resolved = journaled
                .state
                .resolve(customer)
                .unwrap_or_else(|| customer.clone());
            let customers = journaled.state.timeline_customers(&resolved);
            // One more than asked: it says whether there is a next page.
            let ids = journaled.page_ids(&customers, after.unwrap_or(0), limit + 1);
            (resolved, customers, ids)
        };
        // Rows older than the last snapshot are indexed on disk; a
        // snapshot between the two reads leaves a row in both, never in
        // neither (memory was read first).
        let mut ids = ids;
        if !customers.is_empty() {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "SELECT id FROM timeline_by_customer WHERE customer_id IN (",
            );
            let mut list = q.separated(", ");
            for c in &customers {
                list.push_bind(c.as_str());
            }
            q.push(") AND id > ");
            q.push_bind(after.unwrap_or(0));
            q.push(" ORDER BY id LIMIT ");
            q.push_bind(i64::try_from(limit + 1).unwrap_or(i64::MAX));
            let on_disk: Vec<i64> = q
                .build_query_scalar()
                .fetch_all(&self.pool)
                .await
                .ctx("reading timeline index")?;
            ids.extend(on_disk);
            ids.sort_unstable();
            ids.dedup();
            ids.truncate(limit + 1);
        }
        // Timeline retention may remove rows between the two reads: the
        // page then holds fewer, but still goes on after the ids it read.
        let covered = if ids.len() > limit {
            limit.checked_sub(1).map(|last| ids[last])
        } else {
            None
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
        let mut page =
            Self::timeline_page(resolved, rows, u32::try_from(limit).unwrap_or(u32::MAX))?;
        if covered.is_some() {
            page.next = covered;
        }
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
        let journaled = self.current(&[groups::handle_key(handle)]).await?;
        Ok(journaled.state.owner(handle).map(|o| IdentityRecord {
            customer_id: o.customer,
            confirmed: o.confirmed,
        }))
    }

    async fn resolve_customer(&self, id: &CustomerId) -> Result<Option<CustomerId>, StoreError> {
        let keys = [groups::customer_key(id)];
        Ok(self.current(&keys).await?.state.resolve(id))
    }

    async fn suggestions(&self, customer: &CustomerId) -> Result<Vec<HandleKey>, StoreError> {
        let keys = [groups::customer_key(customer)];
        Ok(self.current(&keys).await?.state.suggestions(customer))
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
        let outcome = retrying(&command.command_id, retryable, || {
            self.apply_command_once(command, &lookups)
        })
        .await?
        .map_err(refused)?;
        self.after_write().await;
        Ok(outcome)
    }

    async fn fire_sla_timers(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<TimelineEvent>, StoreError> {
        let fired = retrying("sla-timers", retryable, || {
            self.fire_sla_timers_once(now_ms, limit)
        })
        .await?;
        if !fired.is_empty() {
            self.after_write().await;
        }
        Ok(fired)
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

    async fn prune_timeline(&self, before_ms: i64, batch: u32) -> Result<u64, StoreError> {
        crate::timeline_retention::prune_sqlite(&self.writer, before_ms, batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::{SqliteStore, id_hash};

    /// The stored key must never change: FNV-1a's published 64-bit test
    /// vectors.
    #[test]
    fn event_id_hashes_are_fnv_1a() {
        let as_u64 = |id: &str| u64::from_ne_bytes(id_hash(id).to_ne_bytes());
        assert_eq!(as_u64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(as_u64("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(as_u64("foobar"), 0x8594_4171_f739_67e8);
    }

    /// Filling an attachment in finds its message's row through indexes:
    /// a whole-table scan would read every message ever kept, inside the
    /// writer's transaction, for each file stored.
    #[tokio::test]
    async fn the_row_an_attachment_fills_in_is_found_without_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("threading.sqlite3"))
            .await
            .unwrap();
        let customers = ["c-1".to_owned(), "c-2".to_owned()];
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("EXPLAIN QUERY PLAN ");
        SqliteStore::push_attachment_row_query(&mut q, &customers, "e-1");
        let plan: Vec<(i64, i64, i64, String)> =
            q.build_query_as().fetch_all(&store.pool).await.unwrap();
        let steps: Vec<&str> = plan.iter().map(|step| step.3.as_str()).collect();
        assert!(
            steps.iter().all(|step| !step.starts_with("SCAN")),
            "{steps:?}"
        );
        assert!(
            steps.contains(&"SEARCH timeline_by_customer USING PRIMARY KEY (customer_id=?)"),
            "{steps:?}"
        );
        store.close().await;
    }
}
