//! Connection set-up and schema of the SQLite log.
//!
//! Tables carry a `log_` prefix because the embedded deployment keeps the
//! threading service's state in the same file.
//!
//! - `log_topics(id, name)`: topic names are stored once and records refer
//!   to a small integer, which keeps the record key short (a topic name is
//!   repeated in every row otherwise) and makes the primary key compact.
//! - `log_records(seq, topic_id, record_offset, timestamp_ms, key, headers,
//!   payload, payload_codec)`: a rowid table in append order (`seq`, the
//!   rowid) with a unique index on `(topic_id, record_offset)`, through
//!   which reads range-scan a topic. Offsets are dense per topic from 0 (one
//!   partition, 0). `headers` is the blob of [`crate::headers`] (literal, or
//!   templated against `log_header_templates`); `payload` is stored as
//!   given or zstd-compressed, as `payload_codec` says (see
//!   [`super::catalog`]).
//!
//!   The index costs ~13 bytes of file per record, and two layouts without
//!   it were measured (`examples/layout.rs`: 100,000 compact records of
//!   three interleaved topics, as the daemon's inbound, timeline and
//!   outbound): a rowid encoding `topic_id << 40 | offset` took 320 bytes
//!   per record against 324 and 24% more CPU per insert, `WITHOUT ROWID`
//!   keyed by `(topic_id, record_offset)` 329 bytes and 67% more CPU. Both
//!   insert into the middle of the b-tree for every topic but the last,
//!   which leaves pages partly empty where a rowid table appends at its
//!   right edge (SQLite's `balance_quick`) and leaves them full; and
//!   `WITHOUT ROWID` keeps only ~1 KB of a row in its page, spilling larger
//!   records (e-mails) to overflow pages.
//! - `log_header_templates(id, template)`: the header names and the values
//!   that repeat per channel or topic, stored once and referred to by
//!   templated header blobs.
//! - `log_dictionaries(id, topic_id, dictionary)`: the zstd dictionaries
//!   payloads are compressed with, trained per topic.
//! - `log_consumer_offsets(group_id, topic, partition_id, next_offset)`:
//!   the next offset a group will consume. Keyed by topic name rather than
//!   id so that a group may commit on a topic nobody wrote to yet.
//! - `log_topic_stats(topic_id, records, bytes, start_offset, next_offset)`:
//!   per topic, how many records it holds, their size (key, headers and
//!   payload bytes as stored: templated and compressed), the log start
//!   offset (every record below it has been removed) and the offset of the
//!   next append. Updated in the same
//!   transaction as every append and removal, so retention and the size
//!   metrics never scan the records to know a topic's size, and offsets
//!   continue after a removal even when it emptied the topic.
//! - `log_meta(key, value)`: the schema version, so a later release can
//!   migrate (`PRAGMA user_version` belongs to whoever else shares the file).
//!
//! Versions: 1 had no `log_topic_stats`; opening a version-1 file computes
//! the stats once (one read of every record's header, not its payload
//! pages). 2 had neither templates, dictionaries nor `payload_codec`, and
//! wrote every header blob literally: opening it adds the two tables and
//! the column (0, stored as given, for every existing row) without
//! rewriting a record, and new records are written compactly beside the
//! old ones, which stay readable. Either moves to version 3 in one
//! transaction. A release before 3 refuses a version-3 file rather than
//! misread its records.

use std::{path::Path, time::Duration};

use rusqlite::{Connection, OpenFlags, OptionalExtension, config::DbConfig};

use crate::LogError;

pub(super) const SCHEMA_VERSION: i64 = 3;

/// How long a connection waits for a lock held by another connection (the
/// threading store or `omnid tail` in another process) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// WAL size in pages after which the writer itself checkpoints (copies the
/// WAL into the database file, inside the commit that crossed the limit).
/// Most copying is done beforehand by the background checkpointer (see
/// `open_checkpointer`), so this checkpoint finds little left to copy; it
/// remains because only a checkpoint with no concurrent writer can finish
/// the whole WAL and so let the next commit restart the file from the top.
/// SQLite's default of 1000 pages (4 MiB) checkpoints every few thousand
/// records at our rates; with a larger WAL, pages written again and again
/// (the right edge of the b-trees, interior pages) are copied once per
/// checkpoint instead of once per few batches. Measured: 1000 pages gave
/// ~25% fewer appends/s with 64 and 512 appenders. The cost is a WAL file
/// of up to ~64 MiB and a longer recovery scan when opening after a crash.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// The WAL file is truncated back to this size after a checkpoint, so a
/// burst does not leave a huge file behind.
const JOURNAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value ANY
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS log_topics (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
) STRICT;

CREATE TABLE IF NOT EXISTS log_records (
    seq           INTEGER PRIMARY KEY,
    topic_id      INTEGER NOT NULL REFERENCES log_topics (id),
    record_offset INTEGER NOT NULL,
    timestamp_ms  INTEGER NOT NULL,
    key           BLOB NOT NULL,
    headers       BLOB NOT NULL,
    payload       BLOB NOT NULL,
    payload_codec INTEGER NOT NULL DEFAULT 0,
    UNIQUE (topic_id, record_offset)
) STRICT;

CREATE TABLE IF NOT EXISTS log_header_templates (
    id       INTEGER PRIMARY KEY,
    template BLOB NOT NULL UNIQUE
) STRICT;

CREATE TABLE IF NOT EXISTS log_dictionaries (
    id         INTEGER PRIMARY KEY,
    topic_id   INTEGER NOT NULL REFERENCES log_topics (id),
    dictionary BLOB NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS log_consumer_offsets (
    group_id     TEXT NOT NULL,
    topic        TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    next_offset  INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS log_topic_stats (
    topic_id     INTEGER PRIMARY KEY REFERENCES log_topics (id),
    records      INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    next_offset  INTEGER NOT NULL
) STRICT;
";

/// Fills `log_topic_stats` for topics that have no row yet (every topic of
/// a version-1 file) from their records. `length()` of a blob reads the
/// record header only, never the overflow pages of a large payload.
const BACKFILL_STATS: &str = "
INSERT OR IGNORE INTO log_topic_stats (topic_id, records, bytes, start_offset, next_offset)
SELECT t.id,
       COUNT(r.seq),
       COALESCE(SUM(length(r.key) + length(r.headers) + length(r.payload)), 0),
       COALESCE(MIN(r.record_offset), 0),
       COALESCE(MAX(r.record_offset) + 1, 0)
FROM log_topics t LEFT JOIN log_records r ON r.topic_id = t.id
GROUP BY t.id
";

fn storage(path: &Path, what: &str) -> impl FnOnce(rusqlite::Error) -> LogError {
    let context = format!("cannot {what} event log {}", path.display());
    move |e| LogError::storage(context, e)
}

/// Opens the writer's connection and makes sure the file is a WAL database
/// with our schema.
pub(super) fn open_writer(path: &Path) -> Result<Connection, LogError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(storage(path, "open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(storage(path, "configure"))?;
    stable_plans(&conn).map_err(storage(path, "configure"))?;

    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(storage(path, "configure"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LogError::storage(
            format!("cannot switch event log {} to WAL mode", path.display()),
            std::io::Error::other(format!("journal_mode is {mode}")),
        ));
    }
    // FULL is what makes an acknowledgement mean durable: in WAL mode it
    // fsyncs the WAL at every commit. NORMAL would fsync only at checkpoints,
    // so a power loss or kernel crash could roll back transactions whose
    // appends were already acknowledged (and whose webhooks got their 2xx).
    // Group commit is what pays for the fsync, not a weaker setting.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(storage(path, "configure"))?;
    let synchronous: i64 = conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .map_err(storage(path, "configure"))?;
    if synchronous < 2 {
        return Err(LogError::storage(
            format!("cannot make event log {} synchronous", path.display()),
            std::io::Error::other(format!("synchronous is {synchronous}")),
        ));
    }
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .map_err(storage(path, "configure"))?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES)
        .map_err(storage(path, "configure"))?;
    // 4 MiB of page cache keeps the right edge of every topic's b-tree and
    // the interior pages hot; appends touch little else (readers have their
    // own connections). 16 MiB appended no faster and held 13 MiB more.
    conn.pragma_update(None, "cache_size", -4_096)
        .map_err(storage(path, "configure"))?;

    // IMMEDIATE: two processes opening an old file at once migrate it once.
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(storage(path, "create the schema of"))?;
    let migrated = migrate(&conn, path);
    let finished = match migrated {
        Ok(()) => conn
            .execute_batch("COMMIT")
            .map_err(storage(path, "create the schema of")),
        Err(error) => Err(error),
    };
    if let Err(error) = finished {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return Err(error);
    }
    Ok(conn)
}

/// Creates the tables a new file lacks and moves an older file to
/// [`SCHEMA_VERSION`], inside the caller's transaction.
fn migrate(conn: &Connection, path: &Path) -> Result<(), LogError> {
    conn.execute_batch(SCHEMA)
        .map_err(storage(path, "create the schema of"))?;
    let version: Option<i64> = conn
        .query_row(
            "SELECT value FROM log_meta WHERE key = 'schema_version'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(storage(path, "read the schema version of"))?;
    match version {
        Some(SCHEMA_VERSION) => return Ok(()),
        // None: a new file (no topics yet, so the backfill finds nothing).
        None | Some(1 | 2) => {}
        Some(other) => {
            return Err(LogError::storage(
                format!("unsupported schema version in event log {}", path.display()),
                std::io::Error::other(format!(
                    "found {other}, this build supports {SCHEMA_VERSION}"
                )),
            ));
        }
    }
    let started = std::time::Instant::now();
    if matches!(version, None | Some(1)) {
        // Reads every record's header: only where the stats are missing.
        conn.execute_batch(BACKFILL_STATS)
            .map_err(storage(path, "compute the topic sizes of"))?;
    }
    // A file from before version 3 has `log_records` without the codec
    // column (a new file got it from SCHEMA). Adding a column with a
    // default rewrites no row.
    let has_codec: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('log_records') WHERE name = 'payload_codec'",
            [],
            |row| row.get::<_, i64>(0).map(|n| n > 0),
        )
        .map_err(storage(path, "read the schema of"))?;
    if !has_codec {
        conn.execute_batch(
            "ALTER TABLE log_records ADD COLUMN payload_codec INTEGER NOT NULL DEFAULT 0",
        )
        .map_err(storage(path, "migrate"))?;
    }
    conn.execute(
        "INSERT INTO log_meta (key, value) VALUES ('schema_version', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [SCHEMA_VERSION],
    )
    .map_err(storage(path, "record the schema version of"))?;
    if version.is_some() {
        tracing::info!(
            path = %path.display(),
            from = version,
            to = SCHEMA_VERSION,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "event log schema migrated"
        );
    }
    Ok(())
}

/// Opens a connection for reads. WAL lets it read while the writer writes;
/// `query_only` guards against a bug writing behind the writer's back (its
/// in-memory offsets would go stale).
pub(super) fn open_reader(path: &Path) -> Result<Connection, LogError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(storage(path, "open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(storage(path, "configure"))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(storage(path, "configure"))?;
    stable_plans(&conn).map_err(storage(path, "configure"))?;
    Ok(conn)
}

/// Turns on SQLite's query planner stability guarantee. Without it, a
/// statement whose `LIMIT` is a bound parameter is recompiled on every
/// run after its limit is bound again (the planner may use the value);
/// the subscriptions' read was re-parsed at every poll, 3% of the
/// daemon's CPU at full load. Our plans never depend on values anyway:
/// no file is ever `ANALYZE`d.
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map(drop)
}

/// Opens the background checkpointer's connection. It copies committed WAL
/// frames into the database file with PASSIVE checkpoints, which never
/// block the writer, so the writer's own checkpoint (which does block every
/// append behind it for as long as it copies) stays short. Without it,
/// appends waiting behind a 64 MiB checkpoint showed up as 100-200 ms p99
/// webhook latency.
pub(super) fn open_checkpointer(path: &Path) -> Result<Connection, LogError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(storage(path, "open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(storage(path, "configure"))?;
    // The checkpoint fsyncs the database file before the WAL may be reused.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(storage(path, "configure"))?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(storage(path, "configure"))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_appends_run_on_stable_plans() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sqlite3");
        for conn in [open_writer(&path).unwrap(), open_reader(&path).unwrap()] {
            assert!(
                conn.db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG)
                    .unwrap()
            );
        }
    }
}
