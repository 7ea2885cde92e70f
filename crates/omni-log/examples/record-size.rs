//! What one record costs the embedded log on disk and in CPU: appends N
//! records as the daemon writes them for the API channel (see
//! `benches/support/events.rs`), checkpoints, and reports the file's bytes
//! per record, where they go (each column's stored bytes, SQLite's pages
//! per table and index), the CPU time per acknowledged append (the whole
//! process's, and split between the writer thread and the threads that
//! call `append`) and per record read back.
//!
//!   cargo run --release -p omni-log --example record-size -- [N] [words|x] [appenders] [dir]
//!
//! Defaults: 50,000 records of `words` text from 64 concurrent appenders,
//! in a temporary directory under `target/tmp` (a real disk, where fsync
//! costs what it costs in production, unlike a tmpfs).

mod support;

use std::{sync::Arc, time::Instant};

use omni_log::{EventLog, SqliteLog, SqliteLogConfig};

/// User + system CPU ticks (1/100 s) of `/proc/<what>/stat`.
fn ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn process_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
        .unwrap_or(0)
}

/// Nanoseconds on CPU of the live thread named `name` (schedstat's first
/// field, exact, unlike the ticks of `stat`).
fn thread_cpu_ns(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .filter_map(|task| {
            std::fs::read_to_string(task.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Times the whole topic is read back, for a measurable CPU time.
const READ_PASSES: u64 = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (n, kind, mut args) = support::args()?;
    let appenders: u64 = args.next().map_or(Ok(64), |n| n.parse())?;
    let parent = args.next().unwrap_or_else(|| "target/tmp".to_owned());

    // Built before timing: encoding events is the daemon's work, not the log's.
    let records: Vec<_> = support::records(n, kind).collect();
    let raw =
        |f: fn(&omni_log::Record) -> usize| records.iter().map(f).sum::<usize>() as f64 / n as f64;
    let raw_key = raw(|r| r.key.len());
    let raw_headers = raw(|r| r.headers.iter().map(|(k, v)| k.len() + v.len()).sum());
    let raw_payload = raw(|r| r.payload.len());

    let dir = tempfile::Builder::new()
        .prefix("omni-log-record-size")
        .tempdir_in({
            std::fs::create_dir_all(&parent)?;
            &parent
        })?;
    let path = dir.path().join("events.sqlite3");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let log = Arc::new(SqliteLog::open(&path, SqliteLogConfig::default())?);

    let (wall, cpu_ticks, writer_ns, workers_ns, read_ticks) = runtime.block_on(async {
        let records = Arc::new(std::sync::Mutex::new(records));
        let cpu_before = process_ticks();
        let writer_before = thread_cpu_ns("omni-log-writer");
        let workers_before = thread_cpu_ns("tokio-rt-worker");
        let started = Instant::now();
        let tasks: Vec<_> = (0..appenders)
            .map(|task| {
                let (log, records) = (Arc::clone(&log), Arc::clone(&records));
                tokio::spawn(async move {
                    loop {
                        let Some(record) = records.lock().unwrap().pop() else {
                            break;
                        };
                        log.append(record).await.unwrap();
                    }
                    let _ = task;
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let wall = started.elapsed();
        let writer_ns = thread_cpu_ns("omni-log-writer") - writer_before;
        let workers_ns = thread_cpu_ns("tokio-rt-worker") - workers_before;
        let cpu_ticks = process_ticks() - cpu_before;
        // Reading it all back, three times over, as a consumer does.
        let read_before = process_ticks();
        for _ in 0..READ_PASSES {
            let mut offset = 0;
            loop {
                let records = log
                    .read(support::events::TOPIC, 0, offset, 1000)
                    .await
                    .unwrap();
                if records.is_empty() {
                    break;
                }
                offset += records.len() as i64;
            }
            assert_eq!(offset as u64, n);
        }
        let read_ticks = process_ticks() - read_before;
        log.close().await.unwrap();
        (wall, cpu_ticks, writer_ns, workers_ns, read_ticks)
    });

    let conn = rusqlite::Connection::open(&path)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let pragma = |name: &str| -> rusqlite::Result<i64> {
        conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
    };
    let file_bytes = pragma("page_count")? * pragma("page_size")?;
    let free_bytes = pragma("freelist_count")? * pragma("page_size")?;
    let per = |bytes: f64| bytes / n as f64;
    let (key, headers, payload): (f64, f64, f64) = conn.query_row(
        "SELECT SUM(length(key)), SUM(length(headers)), SUM(length(payload)) FROM log_records",
        [],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;

    println!("{n} records of {kind:?} text, {appenders} appenders");
    println!(
        "file: {file_bytes} bytes ({free_bytes} free), {:.0} bytes per record",
        per(file_bytes as f64)
    );
    println!(
        "as given per record: key {raw_key:.1}, headers {raw_headers:.1} (names + values), payload {raw_payload:.1}"
    );
    println!(
        "stored per record:   key {:.1}, headers {:.1}, payload {:.1}, sum {:.1}",
        per(key),
        per(headers),
        per(payload),
        per(key + headers + payload)
    );
    // Only once the file has this column (omni-log after version 2).
    if let Ok(mut stmt) = conn.prepare(
        "SELECT payload_codec, COUNT(*), AVG(length(payload)) FROM log_records
         GROUP BY payload_codec ORDER BY payload_codec",
    ) {
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, f64>(2)?,
            ))
        })?;
        for row in rows {
            let (codec, count, average) = row?;
            println!("  payload codec {codec:>2}: {count:>7} records, {average:.1} bytes each");
        }
    }
    // dbstat: every page of the file by the table or index it belongs to.
    let mut stmt = conn.prepare(
        "SELECT name, SUM(pgsize), SUM(payload), SUM(unused), COUNT(*) FROM dbstat
         GROUP BY name ORDER BY SUM(pgsize) DESC",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, i64>(3)?,
            row.get::<_, i64>(4)?,
        ))
    })?;
    println!("pages by table/index (bytes per record: pages, cell content, unused):");
    for row in rows {
        let (name, pages, content, unused, count) = row?;
        if pages == 0 {
            continue;
        }
        println!(
            "  {name:<40} {:>8.1} {:>8.1} {:>8.1}  ({count} pages)",
            per(pages as f64),
            per(content as f64),
            per(unused as f64)
        );
    }
    println!(
        "append: {:.0} records/s; CPU per record: process {:.1} µs, writer thread {:.1} µs, appending threads {:.1} µs",
        n as f64 / wall.as_secs_f64(),
        cpu_ticks as f64 * 10_000.0 / n as f64,
        writer_ns as f64 / 1000.0 / n as f64,
        workers_ns as f64 / 1000.0 / n as f64,
    );
    println!(
        "read: CPU per record {:.1} µs",
        read_ticks as f64 * 10_000.0 / (n * READ_PASSES) as f64
    );
    Ok(())
}
