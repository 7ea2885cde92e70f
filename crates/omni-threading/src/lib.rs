//! Omnid's threading service core: who sent an inbound message (identity
//! resolution across channels), which conversation it continues, and where
//! it goes in that customer's ordered timeline.
//!
//! Split the sans-I/O way: [`logic`] decides from a [`Snapshot`] of the
//! state an event touches and returns a [`Plan`]; a [`ThreadingStore`]
//! loads that snapshot, runs the logic and writes the plan plus the
//! resulting timeline rows (its transactional outbox) in one database
//! transaction. [`ThreadingStore::thread_batch`] does the same for many
//! events in one transaction: their state is read in bulk into an overlay
//! that each plan updates, and the plans' row changes are collected
//! (`batch`).
//!
//! [`PostgresStore`] (production, several workers) keeps the state in
//! tables and writes a batch's changes in multi-row statements (`sql`).
//! [`SqliteStore`] (the embedded default) decides from the state of the
//! customers in use, in memory (`state`), and journals each batch's
//! changes to its file instead, which is several times faster; from time
//! to time (a snapshot) the journal is folded into tables, one row per
//! customer group (`groups`), and memory keeps a bounded cache of those
//! groups. Both stores give each change the same meaning, and the
//! contract suite (`contract`) runs against both.
//!
//! Everything is deterministic (ids are UUIDv5 of their cause, times are
//! event times), so replaying `omni.inbound.v1` from the start into an
//! empty store rebuilds an identical timeline.

pub(crate) mod batch;
pub mod commands;
#[cfg(feature = "contract-tests")]
pub mod contract;
pub mod error;
mod groups;
pub mod ids;
pub mod logic;
#[cfg(feature = "postgres")]
mod postgres;
pub mod sla;
mod sql;
mod sqlite;
mod state;
mod store;
pub(crate) mod timeline_retention;

pub use commands::{
    CommandDecision, CommandError, CommandLookups, CommandPlan, CommandSnapshot, command_lookups,
    plan_command,
};
pub use error::{StoreError, ThreadingError};
pub use ids::{CustomerId, HandleKey};
pub use logic::{
    AwaitingResponse, Conversation, Decision, HandleOwner, InboundEvent, Lookups, Plan, Snapshot,
    ThreadingConfig, event_time_ms, lookups, plan, plan_with,
};
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use sla::{TimerPlan, TimerSnapshot, plan_timers};
pub use sqlite::{DEFAULT_CACHE_BYTES, SnapshotLimits, SqliteOptions, SqliteStats, SqliteStore};
pub use state::StateSizes;
pub use store::{CommandOutcome, IdentityRecord, OutboxRow, Outcome, ThreadingStore, TimelinePage};
