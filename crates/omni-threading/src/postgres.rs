//! The production store: PostgreSQL, shared by every threading worker.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::error::{DbContext as _, StoreError};
use crate::sql::{sql_shared, sql_store};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Threading state in PostgreSQL.
///
/// Several workers may thread at once: each event is one `SERIALIZABLE`
/// transaction that locks the customers it touches (`FOR UPDATE`), and a
/// serialization failure, deadlock or unique violation (two workers
/// creating the same customer) is retried from the start, re-reading the
/// state the winner committed. No in-process lock is involved.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Threading transactions use the same pool (the server's page cache
    /// is shared by all connections).
    writer: PgPool,
}

impl PostgresStore {
    /// Connects with `options` (its `search_path` selects the schema) and
    /// migrates.
    pub async fn connect(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<PostgresStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await
            .ctx("connecting to postgres")?;
        MIGRATOR.run(&pool).await.map_err(StoreError::Migrate)?;
        Ok(PostgresStore {
            writer: pool.clone(),
            pool,
        })
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// serialization_failure, deadlock_detected, unique_violation.
fn retryable(e: &StoreError) -> bool {
    crate::sql::db_code(e).is_some_and(|code| matches!(code.as_str(), "40001" | "40P01" | "23505"))
}

/// Nothing to add: the timeline's `UNIQUE (customer_id, sequence)` index
/// finds the customers' rows.
fn narrow_attachment_search(_: &mut sqlx::QueryBuilder<sqlx::Postgres>, _: &[String]) {}

sql_shared!(PostgresStore, sqlx::Postgres, narrow_attachment_search);
sql_store!(
    PostgresStore,
    sqlx::Postgres,
    "BEGIN ISOLATION LEVEL SERIALIZABLE",
    " FOR UPDATE",
    retryable
);
