//! Throughput of acknowledged appends (each one durable: committed with
//! fsync) into a SQLite log, by number of concurrent appenders. One
//! criterion iteration is one acknowledged append.
//!
//! Two kinds of record: `acknowledged_append` a synthetic one (300 bytes
//! of payload, five CloudEvents headers), `acknowledged_append_api_event`
//! the API channel's events as the daemon writes them (see
//! `support/events.rs`). After each group the file's bytes per record are
//! printed (after a checkpoint: what the records take on disk).
//!
//! The log lives under the target directory, on the same disk as real
//! data, not on a tmpfs where fsync is free.

#[path = "support/events.rs"]
mod events;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use omni_log::{EventLog, Record, SqliteLog, SqliteLogConfig};

fn record(i: u64) -> Record {
    let mut payload = format!("{i:020}").into_bytes();
    payload.resize(300, b'x');
    Record {
        topic: "omni.inbound.v1".to_owned(),
        key: Bytes::from(format!("tel:+4915100000{:03}", i % 1000)),
        headers: vec![
            ("ce_id".to_owned(), Bytes::from(format!("{i:032x}"))),
            (
                "ce_source".to_owned(),
                Bytes::from_static(b"omnid/channels/sms-main"),
            ),
            (
                "ce_type".to_owned(),
                Bytes::from_static(b"omni.conversation.v1"),
            ),
            ("ce_specversion".to_owned(), Bytes::from_static(b"1.0")),
            (
                "content-type".to_owned(),
                Bytes::from_static(b"application/protobuf"),
            ),
        ],
        payload: Bytes::from(payload),
        timestamp_ms: 1_700_000_000_000 + i as i64,
    }
}

fn append(c: &mut Criterion) {
    bench_group(c, "acknowledged_append", Arc::new(record));
    // Built once: parsing and encoding events is the daemon's work, not
    // the log's. Cycled through; each is compressed on its own anyway.
    let mut rng = events::Rng::new(42);
    let start = SystemTime::now();
    let pool: Vec<Record> = (0..20_000)
        .map(|i| {
            let now = start + Duration::from_micros(200 * i);
            events::record(i, events::Text::Words, &mut rng, now)
        })
        .collect();
    let pool = Arc::new(pool);
    bench_group(
        c,
        "acknowledged_append_api_event",
        Arc::new(move |i| pool[(i % pool.len() as u64) as usize].clone()),
    );
}

fn bench_group(c: &mut Criterion, name: &str, record: Arc<dyn Fn(u64) -> Record + Send + Sync>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("omni-log-bench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let path = dir.path().join("events.sqlite3");
    let log = Arc::new(SqliteLog::open(&path, SqliteLogConfig::default()).unwrap());

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for appenders in [1_u64, 64, 512] {
        group.bench_with_input(
            BenchmarkId::from_parameter(appenders),
            &appenders,
            |b, &appenders| {
                b.iter_custom(|iters| {
                    let (log, record) = (Arc::clone(&log), Arc::clone(&record));
                    runtime.block_on(async move {
                        let started = Instant::now();
                        let tasks: Vec<_> = (0..appenders)
                            .map(|task| {
                                let (log, record) = (Arc::clone(&log), Arc::clone(&record));
                                // Spread `iters` appends over the tasks.
                                let count = iters / appenders + u64::from(task < iters % appenders);
                                tokio::spawn(async move {
                                    for i in 0..count {
                                        log.append(record(i * appenders + task)).await.unwrap();
                                    }
                                })
                            })
                            .collect();
                        for task in tasks {
                            task.await.unwrap();
                        }
                        started.elapsed().max(Duration::from_nanos(1))
                    })
                });
            },
        );
    }
    group.finish();
    let records: i64 = runtime
        .block_on(log.topic_stats())
        .unwrap()
        .iter()
        .map(|stats| stats.end_offset)
        .sum();
    runtime.block_on(log.close()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .unwrap();
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .unwrap();
    println!(
        "{name}: {records} records, {:.0} bytes of file per record",
        (pages * page_size) as f64 / records.max(1) as f64
    );
}

criterion_group!(benches, append);
criterion_main!(benches);
