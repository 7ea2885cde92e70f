//! The embedded store: a SQLite file in the data directory.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::error::{DbContext as _, StoreError};
use crate::sql::sql_store;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Threading state in a SQLite file.
///
/// Writers take the file's write lock at `BEGIN IMMEDIATE`, so two
/// processes (or pools) on one file serialize instead of failing on a lock
/// upgrade; WAL lets readers (the query API, the relay) run meanwhile.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The one connection threading transactions use: writers take the
    /// file's lock one at a time anyway, and a connection that is the
    /// only writer keeps its page cache across transactions (SQLite drops
    /// a connection's cache whenever another connection wrote).
    writer: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and migrates it.
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
            // A batch's multi-row upserts need statement journals: keep
            // them (and other temporary data) in memory, not temp files.
            .pragma("temp_store", "memory")
            // 64 MiB of page cache per connection (the default is 2 MiB):
            // a batch's index lookups then rarely read the file.
            .pragma("cache_size", "-65536")
            // Checkpoint every ~256 MiB of WAL instead of ~4 MiB: a page
            // batches rewrite often is copied back once, not once per
            // checkpoint (a 100k-event run writes 15% fewer bytes than
            // with 64 MiB). Durability is the WAL's fsync, unchanged.
            .pragma("wal_autocheckpoint", "65536")
            // Read the database file through a memory map (up to 2 GB,
            // SQLite's limit on Linux) instead of a `pread` per page that
            // misses the page cache: once the file outgrows the cache, as
            // in a replay, a batch's index lookups cost no system calls.
            // Writes still go through the WAL.
            .pragma("mmap_size", "2147418112")
            // A batch's multi-row writes and bulk reads come in a few fixed
            // shapes (`batch::row_chunks`, `batch::key_chunks`), about 90
            // statements with the rest: all stay prepared.
            .statement_cache_capacity(256);
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
        Ok(SqliteStore { pool, writer })
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// SQLITE_BUSY / SQLITE_LOCKED (another writer), and a unique violation
/// from a row another writer inserted first: all settle on retry.
fn retryable(e: &StoreError) -> bool {
    crate::sql::db_code(e).is_some_and(|code| {
        let code: i64 = code.parse().unwrap_or(0);
        matches!(code & 0xff, 5 | 6) || code == 2067 || code == 1555
    })
}

sql_store!(SqliteStore, sqlx::Sqlite, "BEGIN IMMEDIATE", "", retryable);
