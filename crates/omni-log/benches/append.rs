//! Throughput of acknowledged appends (each one durable: committed with
//! fsync) into a SQLite log, by number of concurrent appenders. One
//! criterion iteration is one acknowledged append.
//!
//! The log lives under the target directory, on the same disk as real
//! data, not on a tmpfs where fsync is free.

use std::{
    sync::Arc,
    time::{Duration, Instant},
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("omni-log-bench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let log = Arc::new(
        SqliteLog::open(
            &dir.path().join("events.sqlite3"),
            SqliteLogConfig::default(),
        )
        .unwrap(),
    );

    let mut group = c.benchmark_group("acknowledged_append");
    group.throughput(Throughput::Elements(1));
    for appenders in [1_u64, 64, 512] {
        group.bench_with_input(
            BenchmarkId::from_parameter(appenders),
            &appenders,
            |b, &appenders| {
                b.iter_custom(|iters| {
                    let log = Arc::clone(&log);
                    runtime.block_on(async move {
                        let started = Instant::now();
                        let tasks: Vec<_> = (0..appenders)
                            .map(|task| {
                                let log = Arc::clone(&log);
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
    runtime.block_on(log.close()).unwrap();
}

criterion_group!(benches, append);
criterion_main!(benches);
