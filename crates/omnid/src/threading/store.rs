//! The threading store a deployment chose: embedded SQLite or shared
//! PostgreSQL, opened (and migrated) from the settings.

use std::{str::FromStr as _, sync::Arc};

use anyhow::Context as _;
use omni_threading::{PostgresStore, SqliteStore, ThreadingStore};

use crate::settings::{Settings, ThreadingStoreKind};

/// The opened threading store.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Opens the configured store (and migrates it).
    pub(crate) async fn open(settings: &Settings) -> anyhow::Result<Store> {
        let threading = &settings.threading;
        if threading.store == ThreadingStoreKind::Postgres {
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
    pub(crate) fn shared(&self) -> Arc<dyn ThreadingStore> {
        match self {
            Store::Sqlite(store) => Arc::new(store.clone()),
            Store::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// Closes its connections.
    pub(crate) async fn close(&self) {
        match self {
            Store::Sqlite(store) => store.close().await,
            Store::Postgres(store) => store.close().await,
        }
    }
}
