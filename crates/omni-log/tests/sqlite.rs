//! The SQLite backend: the shared contract, plus what only a file can show
//! (reopening, damage, several connections on one file, overload).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use omni_log::{
    EventLog, LogError, Position, SqliteLog, SqliteLogConfig,
    contract::{self, sample_record},
};
use tempfile::TempDir;

fn log_path(dir: &TempDir) -> PathBuf {
    dir.path().join("data").join("events.sqlite3")
}

fn open(path: &Path) -> SqliteLog {
    SqliteLog::open(path, SqliteLogConfig::default()).expect("open log")
}

macro_rules! contract_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let dir = tempfile::tempdir().unwrap();
            contract::$case(open(&log_path(&dir))).await;
        }
    )*};
}

contract_cases!(
    append_then_read_roundtrip,
    offsets_are_dense_per_topic,
    concurrent_appends_get_distinct_offsets,
    call_order_is_log_order,
    read_from_middle_with_max,
    end_offset_tracks_appends,
    invalid_arguments_are_rejected,
    subscription_resumes_after_commit,
    groups_are_independent,
    poll_covers_all_topics,
    poll_wakes_on_append,
    poll_waits_through_other_topics,
    poll_times_out_empty,
    close_acknowledges_accepted_appends,
    close_then_append_is_closed,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_run_all() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    contract::run_all(|| {
        open(
            &dir.path()
                .join(format!("log-{}.sqlite3", n.fetch_add(1, Ordering::Relaxed))),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usable_as_arc_dyn_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(open(&log_path(&dir)));
    let position = log.append(sample_record("dyn", 0)).await.unwrap();
    assert_eq!(
        position,
        Position {
            partition: 0,
            offset: 0
        }
    );
    assert_eq!(log.partition_count("dyn").await.unwrap(), 1);
    assert!(format!("{log:?}").contains("SqliteLog"));
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_everything_and_offsets_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let log = open(&path);
    for i in 0..50 {
        log.append(sample_record("a", i)).await.unwrap();
        if i < 20 {
            log.append(sample_record("b", i)).await.unwrap();
        }
    }
    let mut subscription = log.subscribe("g", &["a".to_owned()]).await.unwrap();
    subscription
        .commit(
            "a",
            Position {
                partition: 0,
                offset: 9,
            },
        )
        .await
        .unwrap();
    drop(subscription);
    log.close().await.unwrap();

    let log = open(&path);
    assert_eq!(log.end_offset("a", 0).await.unwrap(), 50);
    assert_eq!(log.end_offset("b", 0).await.unwrap(), 20);
    let a = log.read("a", 0, 0, 1000).await.unwrap();
    assert_eq!(
        a.iter().map(|r| r.record.clone()).collect::<Vec<_>>(),
        (0..50).map(|i| sample_record("a", i)).collect::<Vec<_>>()
    );
    assert_eq!(log.append(sample_record("a", 50)).await.unwrap().offset, 50);
    assert_eq!(log.append(sample_record("b", 20)).await.unwrap().offset, 20);
    assert_eq!(log.append(sample_record("c", 0)).await.unwrap().offset, 0);
    let mut subscription = log.subscribe("g", &["a".to_owned()]).await.unwrap();
    let resumed = subscription.poll(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        resumed[0].position.offset, 10,
        "group resumes after its commit from before the reopen"
    );
    drop(subscription);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_without_close_keeps_acknowledged_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let log = open(&path);
    let pending: Vec<_> = (0..300)
        .map(|i| log.append(sample_record("t", i)))
        .collect();
    for future in pending {
        future.await.unwrap();
    }
    drop(log);
    let log = open(&path);
    let records = log.read("t", 0, 0, 1000).await.unwrap();
    assert_eq!(records.len(), 300);
    assert_eq!(records[299].record, sample_record("t", 299));
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_headers_in_the_file_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let log = open(&path);
    for i in 0..3 {
        log.append(sample_record("t", i)).await.unwrap();
    }
    log.close().await.unwrap();

    let conn = rusqlite::Connection::open(&path).unwrap();
    let changed = conn
        .execute(
            "UPDATE log_records SET headers = x'01ffffffff00' WHERE record_offset = 1",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);

    let log = open(&path);
    match log.read("t", 0, 0, 10).await {
        Err(LogError::Corrupt { topic, offset, .. }) => {
            assert_eq!((topic.as_str(), offset), ("t", 1))
        }
        other => panic!("expected a corrupt-record error, got {other:?}"),
    }
    assert_eq!(
        log.read("t", 0, 2, 10).await.unwrap()[0].record,
        sample_record("t", 2)
    );
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_overloaded_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(
        &log_path(&dir),
        SqliteLogConfig {
            max_batch: 1,
            queue_capacity: 4,
        },
    )
    .unwrap();
    let pending: Vec<_> = (0..2000)
        .map(|i| log.append(sample_record("t", i)))
        .collect();
    let mut acked = Vec::new();
    let mut overloaded = 0;
    for (i, future) in pending.into_iter().enumerate() {
        match future.await {
            Ok(position) => acked.push((i as u64, position.offset)),
            Err(LogError::Overloaded) => overloaded += 1,
            Err(e) => panic!("append {i}: {e}"),
        }
    }
    assert!(overloaded > 0, "a queue of 4 took 2000 appends at once");
    assert!(!acked.is_empty());
    let records = log.read("t", 0, 0, 5000).await.unwrap();
    assert_eq!(records.len(), acked.len());
    for (i, offset) in acked {
        assert_eq!(records[offset as usize].record, sample_record("t", i));
    }
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logs_on_one_file_keep_offsets_dense() {
    // `omnid tail` (or any second process) may open the same file: the
    // writers must not trust stale in-memory offsets.
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let logs = [Arc::new(open(&path)), Arc::new(open(&path))];
    for round in 0..5_u64 {
        for (n, log) in logs.iter().enumerate() {
            log.append(sample_record("shared", round * 2 + n as u64))
                .await
                .unwrap();
        }
    }
    let tasks: Vec<_> = (0..200_u64)
        .map(|i| {
            let log = Arc::clone(&logs[(i % 2) as usize]);
            tokio::spawn(async move {
                (
                    i,
                    log.append(sample_record("shared", 10 + i)).await.unwrap(),
                )
            })
        })
        .collect();
    let mut acked = Vec::new();
    for task in tasks {
        acked.push(task.await.unwrap());
    }
    let offsets: BTreeSet<i64> = acked.iter().map(|(_, p)| p.offset).collect();
    assert_eq!(offsets.len(), 200);
    let records = logs[0].read("shared", 0, 0, 1000).await.unwrap();
    assert_eq!(
        records
            .iter()
            .map(|r| r.position.offset)
            .collect::<Vec<_>>(),
        (0..210).collect::<Vec<_>>()
    );
    for (i, position) in acked {
        assert_eq!(
            records[position.offset as usize].record,
            sample_record("shared", 10 + i)
        );
    }
    for log in logs {
        log.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_finds_what_another_log_on_the_file_appended() {
    // A subscription is woken by its own process's commits only; what
    // another process appends is found by the read each poll starts with.
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let (reading, writing) = (open(&path), open(&path));
    let mut subscription = reading.subscribe("g", &["t".to_owned()]).await.unwrap();
    assert!(
        subscription
            .poll(10, Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );
    writing.append(sample_record("t", 0)).await.unwrap();
    // Woken for another topic in between: still nothing new to read here.
    reading.append(sample_record("x", 0)).await.unwrap();
    let records = subscription.poll(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record, sample_record("t", 0));
    reading.close().await.unwrap();
    writing.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_close_calls_all_wait_for_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(&log_path(&dir)));
    let pending: Vec<_> = (0..500)
        .map(|i| log.append(sample_record("t", i)))
        .collect();
    let closes: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn({
                let log = Arc::clone(&log);
                async move { log.close().await }
            })
        })
        .collect();
    for close in closes {
        close.await.unwrap().unwrap();
    }
    for future in pending {
        future.await.unwrap();
    }
    assert!(matches!(
        log.read("t", 0, 0, 1).await,
        Err(LogError::Closed)
    ));
    let mut subscription_error = None;
    if let Err(e) = log.subscribe("g", &["t".to_owned()]).await {
        subscription_error = Some(e);
    }
    assert!(matches!(subscription_error, Some(LogError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_after_close_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&log_path(&dir));
    log.append(sample_record("t", 0)).await.unwrap();
    let mut subscription = log.subscribe("g", &["t".to_owned()]).await.unwrap();
    log.close().await.unwrap();
    let result = subscription
        .commit(
            "t",
            Position {
                partition: 0,
                offset: 0,
            },
        )
        .await;
    assert!(matches!(result, Err(LogError::Closed)), "{result:?}");
    let result = subscription.poll(10, Duration::from_secs(5)).await;
    assert!(matches!(result, Err(LogError::Closed)), "{result:?}");
}

#[test]
fn invalid_config_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for config in [
        SqliteLogConfig {
            max_batch: 0,
            ..SqliteLogConfig::default()
        },
        SqliteLogConfig {
            queue_capacity: 0,
            ..SqliteLogConfig::default()
        },
    ] {
        assert!(matches!(
            SqliteLog::open(&log_path(&dir), config),
            Err(LogError::InvalidConfig { .. })
        ));
    }
    assert_eq!(
        SqliteLogConfig::default(),
        SqliteLogConfig {
            max_batch: 1024,
            queue_capacity: 65_536
        }
    );
}

#[test]
fn unopenable_path_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let err =
        SqliteLog::open(&file.join("events.sqlite3"), SqliteLogConfig::default()).unwrap_err();
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}
