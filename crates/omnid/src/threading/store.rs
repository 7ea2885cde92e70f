//! The threading store a deployment chose: embedded SQLite or shared
//! PostgreSQL, opened (and migrated) from the settings.

use std::{str::FromStr as _, sync::Arc};

use anyhow::Context as _;
use omni_threading::{PostgresStore, SqliteOptions, SqliteStore, ThreadingStore};

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
        let options = SqliteOptions {
            dedupe_window: std::time::Duration::from_secs(
                threading.dedupe_window_days.max(1) * 86_400,
            ),
            cache_bytes: threading.cache_mib.saturating_mul(1 << 20),
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_with(&path, options)
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

    /// Folds the embedded store's journal into its tables (a snapshot),
    /// so the next start has nothing to replay: a stop that took its time
    /// buys a quick start. A failure only means a longer replay.
    pub(crate) async fn flush(&self) {
        if let Store::Sqlite(store) = self
            && let Err(e) = store.snapshot().await
        {
            tracing::warn!(error = %e, "threading snapshot at shutdown failed; the next start replays the journal");
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

/// How often the embedded store's figures are read: they move slowly, and
/// reading them takes the state lock.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Store {
    /// Reports the embedded store's size as gauges until `stop`: rows of
    /// the state in memory by kind, event ids kept for deduplication, and
    /// journal rows an open would replay (PostgreSQL reports nothing: its
    /// server has its own figures).
    pub(crate) fn report_stats(&self, stop: tokio_util::sync::CancellationToken) {
        let Store::Sqlite(store) = self else {
            return;
        };
        let store = store.clone();
        tokio::spawn(async move {
            use omni_telemetry::names;
            let mut ticks = tokio::time::interval(STATS_EVERY);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let stats = match store.stats().await {
                    Ok(stats) => stats,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the threading store's figures");
                        continue;
                    }
                };
                let m = stats.memory;
                for (kind, rows) in [
                    ("customers", m.customers),
                    ("identities", m.identities),
                    ("conversations", m.conversations),
                    ("message_ids", m.message_ids),
                    ("recent_event_ids", m.recent_event_ids),
                ] {
                    metrics::gauge!(names::THREADING_STATE_ROWS, "kind" => kind).set(rows as f64);
                }
                metrics::gauge!(names::THREADING_DEDUPE_EVENT_IDS)
                    .set(stats.event_ids_on_disk as f64);
                metrics::gauge!(names::THREADING_JOURNAL_ROWS).set(stats.journal_rows as f64);
                metrics::gauge!(names::THREADING_CACHED_CUSTOMER_GROUPS)
                    .set(stats.groups_in_memory as f64);
                metrics::gauge!(names::THREADING_CACHED_STATE_BYTES)
                    .set(stats.group_bytes_in_memory as f64);
            }
        });
    }
}
