//! Which row layout stores the log's records in the fewest bytes: the rowid
//! table with a unique `(topic_id, record_offset)` index the log uses, a
//! rowid that encodes topic and offset (no index), and a `WITHOUT ROWID`
//! table keyed by `(topic_id, record_offset)`. Appends interleave three
//! topics (as the daemon's inbound, timeline and outbound topics do) with
//! rows the size of compact records (~200 bytes, 2% of 3 KB), in batches
//! of 256 per transaction; no fsync, so the time is the CPU's.
//!
//!   cargo run --release -p omni-log --example layout -- [N]

use std::time::Instant;

use rusqlite::{Connection, params};

const LAYOUTS: [(&str, &str, &str); 3] = [
    (
        "rowid + unique index (current)",
        "CREATE TABLE r (seq INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL,
             record_offset INTEGER NOT NULL, timestamp_ms INTEGER NOT NULL, key BLOB NOT NULL,
             headers BLOB NOT NULL, payload BLOB NOT NULL, codec INTEGER NOT NULL,
             UNIQUE (topic_id, record_offset)) STRICT",
        "INSERT INTO r (topic_id, record_offset, timestamp_ms, key, headers, payload, codec)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    ),
    (
        "rowid = topic << 40 | offset",
        "CREATE TABLE r (seq INTEGER PRIMARY KEY, timestamp_ms INTEGER NOT NULL,
             key BLOB NOT NULL, headers BLOB NOT NULL, payload BLOB NOT NULL,
             codec INTEGER NOT NULL) STRICT",
        "INSERT INTO r (seq, timestamp_ms, key, headers, payload, codec)
             VALUES ((?1 << 40) | ?2, ?3, ?4, ?5, ?6, ?7)",
    ),
    (
        "WITHOUT ROWID (topic_id, record_offset)",
        "CREATE TABLE r (topic_id INTEGER NOT NULL, record_offset INTEGER NOT NULL,
             timestamp_ms INTEGER NOT NULL, key BLOB NOT NULL, headers BLOB NOT NULL,
             payload BLOB NOT NULL, codec INTEGER NOT NULL,
             PRIMARY KEY (topic_id, record_offset)) STRICT, WITHOUT ROWID",
        "INSERT INTO r (topic_id, record_offset, timestamp_ms, key, headers, payload, codec)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    ),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args().nth(1).map_or(Ok(100_000), |n| n.parse())?;
    let dir = tempfile::tempdir()?;
    for (i, (name, create, insert)) in LAYOUTS.iter().enumerate() {
        let path = dir.path().join(format!("layout-{i}.sqlite3"));
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.execute_batch(create)?;
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut offsets = [0_i64; 3];
        let started = Instant::now();
        let mut stmt = conn.prepare(insert)?;
        for batch in 0..n.div_ceil(256) {
            conn.execute_batch("BEGIN")?;
            for j in 0..256.min(n - batch * 256) {
                // Inbound 50%, timeline 45%, outbound 5%.
                let topic = match next() % 100 {
                    0..50 => 0,
                    50..95 => 1,
                    _ => 2,
                };
                let size = if next() % 50 == 0 {
                    3000
                } else {
                    150 + next() % 30
                };
                let payload: Vec<u8> = (0..size).map(|_| next() as u8).collect();
                stmt.execute(params![
                    topic as i64 + 1,
                    offsets[topic],
                    1_700_000_000_000_i64 + (batch * 256 + j) as i64,
                    format!("external:customer-{}", next() % 1000).as_bytes(),
                    [2_u8, 1, 3, 36, 0x80, 0x89, 0x0f].as_slice(),
                    payload,
                    1,
                ])?;
                offsets[topic] += 1;
            }
            conn.execute_batch("COMMIT")?;
        }
        let elapsed = started.elapsed();
        drop(stmt);
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
        let (content, unused): (i64, i64) =
            conn.query_row("SELECT SUM(payload), SUM(unused) FROM dbstat", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
        // Reading one topic in offset order, as consumers do.
        let read_started = Instant::now();
        let read_sql = if i == 1 {
            "SELECT payload FROM r WHERE seq >= (2 << 40) AND seq < (3 << 40) ORDER BY seq"
        } else {
            "SELECT payload FROM r WHERE topic_id = 2 ORDER BY record_offset"
        };
        let mut read = conn.prepare(read_sql)?;
        let mut rows = read.query([])?;
        let mut count = 0;
        while rows.next()?.is_some() {
            count += 1;
        }
        let read_elapsed = read_started.elapsed();
        println!(
            "{name:<42} {:>6.1} bytes per record (cells {:>6.1}, unused {:>5.1}); insert {:>5.2} µs, read {:>5.2} µs per record ({count} read)",
            (pages * 4096) as f64 / n as f64,
            content as f64 / n as f64,
            unused as f64 / n as f64,
            elapsed.as_secs_f64() * 1e6 / n as f64,
            read_elapsed.as_secs_f64() * 1e6 / count as f64,
        );
    }
    Ok(())
}
