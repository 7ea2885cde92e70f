//! The backend contract: what every [`EventLog`] must do, written once and
//! run against each backend (SQLite here; Kafka and the workspace's
//! integration tests reuse it through the `contract-tests` feature).
//!
//! Each case is a public async function taking a freshly made log, so a
//! backend's test file can run them one `#[tokio::test]` each (better
//! failure reports) or all at once with [`run_all`]. Cases use topic and
//! group names unique to the run, so they also work against a shared
//! broker that keeps topics between runs. They read partition 0 only, so
//! topics they create must have one partition (Kafka's default for
//! auto-created topics). They need a multi-threaded Tokio runtime and
//! panic on failure, like any test.
//!
//! Timeouts are generous for a real broker (the first Kafka group join
//! takes about 20 s); SQLite answers in milliseconds.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;

use crate::{EventLog, LogError, Position, Record, StoredRecord, Subscription};

/// How long a case waits for records it knows are there.
const PATIENCE: Duration = Duration::from_secs(60);

/// Runs every case, each against a fresh log from `make`.
pub async fn run_all<L: EventLog>(make: impl Fn() -> L) {
    append_then_read_roundtrip(make()).await;
    offsets_are_dense_per_topic(make()).await;
    concurrent_appends_get_distinct_offsets(make()).await;
    call_order_is_log_order(make()).await;
    read_from_middle_with_max(make()).await;
    end_offset_tracks_appends(make()).await;
    invalid_arguments_are_rejected(make()).await;
    subscription_resumes_after_commit(make()).await;
    groups_are_independent(make()).await;
    poll_covers_all_topics(make()).await;
    poll_wakes_on_append(make()).await;
    poll_waits_through_other_topics(make()).await;
    poll_times_out_empty(make()).await;
    close_acknowledges_accepted_appends(make()).await;
    close_then_append_is_closed(make()).await;
}

/// A name no earlier run against the same broker used.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("contract.{prefix}.{}.{nanos}.{n}", std::process::id())
}

/// A record whose fields all derive from `i`, so a read can check it.
pub fn sample_record(topic: &str, i: u64) -> Record {
    Record {
        topic: topic.to_owned(),
        key: Bytes::from(format!("key-{}", i % 7)),
        headers: vec![
            ("ce_id".to_owned(), Bytes::from(format!("id-{i}"))),
            ("ce_type".to_owned(), Bytes::from_static(b"omni.test")),
            (
                "binary".to_owned(),
                Bytes::from(vec![0, 255, (i % 256) as u8]),
            ),
        ],
        payload: Bytes::from(format!("payload-{i}-").repeat(1 + (i % 5) as usize)),
        timestamp_ms: 1_700_000_000_000 + i as i64,
    }
}

async fn append_ok<L: EventLog + ?Sized>(log: &L, record: Record) -> Position {
    let topic = record.topic.clone();
    match log.append(record).await {
        Ok(position) => position,
        Err(e) => panic!("append to {topic} failed: {e}"),
    }
}

async fn read_ok<L: EventLog + ?Sized>(
    log: &L,
    topic: &str,
    from: i64,
    max: usize,
) -> Vec<StoredRecord> {
    match log.read(topic, 0, from, max).await {
        Ok(records) => records,
        Err(e) => panic!("read of {topic} from {from} failed: {e}"),
    }
}

async fn subscribe_ok<L: EventLog + ?Sized>(
    log: &L,
    group: &str,
    topics: &[&str],
) -> Box<dyn Subscription> {
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    match log.subscribe(group, &topics).await {
        Ok(subscription) => subscription,
        Err(e) => panic!("subscribe of {group} to {topics:?} failed: {e}"),
    }
}

/// Polls until `n` records arrived (failing after [`PATIENCE`]).
async fn poll_n(subscription: &mut dyn Subscription, n: usize) -> Vec<StoredRecord> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut records = Vec::new();
    while records.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "got {} of {n} records before the deadline",
            records.len()
        );
        let batch = subscription
            .poll(n - records.len(), Duration::from_secs(1))
            .await
            .expect("poll");
        assert!(
            batch.len() <= n - records.len(),
            "poll returned more than max"
        );
        records.extend(batch);
    }
    records
}

async fn close_ok<L: EventLog + ?Sized>(log: &L) {
    log.close().await.expect("close");
}

/// Appended records read back in order with every field intact.
pub async fn append_then_read_roundtrip<L: EventLog>(log: L) {
    let topic = unique_name("roundtrip");
    let mut expected = vec![
        // Edge cases: nothing but a topic, and every field empty or extreme.
        Record {
            topic: topic.clone(),
            key: Bytes::new(),
            headers: Vec::new(),
            payload: Bytes::new(),
            timestamp_ms: 0,
        },
        Record {
            topic: topic.clone(),
            key: Bytes::from_static(&[0, 1, 2, 255]),
            headers: vec![
                ("dup".to_owned(), Bytes::from_static(b"1")),
                ("dup".to_owned(), Bytes::from_static(b"2")),
                ("empty".to_owned(), Bytes::new()),
            ],
            payload: Bytes::from(vec![7_u8; 64 * 1024]),
            timestamp_ms: i64::from(i32::MAX) * 1000,
        },
    ];
    expected.extend((0..20).map(|i| sample_record(&topic, i)));
    for (i, record) in expected.iter().enumerate() {
        let position = append_ok(&log, record.clone()).await;
        assert_eq!(
            position,
            Position {
                partition: 0,
                offset: i as i64
            },
            "position of record {i}"
        );
    }
    let stored = read_ok(&log, &topic, 0, 1000).await;
    assert_eq!(stored.len(), expected.len());
    for (i, (stored, expected)) in stored.iter().zip(&expected).enumerate() {
        assert_eq!(
            stored.position,
            Position {
                partition: 0,
                offset: i as i64
            }
        );
        assert_eq!(&stored.record, expected, "record {i}");
    }
    close_ok(&log).await;
}

/// Each topic has its own dense offsets from 0.
pub async fn offsets_are_dense_per_topic<L: EventLog>(log: L) {
    let a = unique_name("dense-a");
    let b = unique_name("dense-b");
    for i in 0..10_u64 {
        assert_eq!(append_ok(&log, sample_record(&a, i)).await.offset, i as i64);
        if i % 2 == 0 {
            assert_eq!(
                append_ok(&log, sample_record(&b, i)).await.offset,
                (i / 2) as i64
            );
        }
    }
    let in_a: Vec<i64> = read_ok(&log, &a, 0, 100)
        .await
        .iter()
        .map(|r| r.position.offset)
        .collect();
    let in_b: Vec<i64> = read_ok(&log, &b, 0, 100)
        .await
        .iter()
        .map(|r| r.position.offset)
        .collect();
    assert_eq!(in_a, (0..10).collect::<Vec<_>>());
    assert_eq!(in_b, (0..5).collect::<Vec<_>>());
    assert!(
        read_ok(&log, &b, 0, 100)
            .await
            .iter()
            .all(|r| r.record.topic == b)
    );
    close_ok(&log).await;
}

/// 200 appends from 200 tasks at once: all acknowledged, offsets distinct
/// and dense, every record readable at the offset it was acknowledged with.
pub async fn concurrent_appends_get_distinct_offsets<L: EventLog>(log: L) {
    let log = Arc::new(log);
    let topic = unique_name("concurrent");
    let tasks: Vec<_> = (0..200_u64)
        .map(|i| {
            let log = Arc::clone(&log);
            let record = sample_record(&topic, i);
            tokio::spawn(async move { (i, log.append(record).await) })
        })
        .collect();
    let mut acked = Vec::new();
    for task in tasks {
        let (i, result) = task.await.expect("append task panicked");
        acked.push((
            i,
            result.unwrap_or_else(|e| panic!("append {i} failed: {e}")),
        ));
    }
    let offsets: BTreeSet<i64> = acked.iter().map(|(_, p)| p.offset).collect();
    assert_eq!(
        offsets,
        (0..200).collect(),
        "offsets must be distinct and dense"
    );
    let stored = read_ok(&*log, &topic, 0, 1000).await;
    assert_eq!(stored.len(), 200);
    for (i, position) in acked {
        assert_eq!(
            stored[position.offset as usize].record,
            sample_record(&topic, i),
            "record {i} at {position:?}"
        );
    }
    close_ok(&*log).await;
}

/// `append` takes the record when called, so offsets follow call order even
/// when the futures are awaited in reverse.
pub async fn call_order_is_log_order<L: EventLog>(log: L) {
    let topic = unique_name("order");
    let pending: Vec<_> = (0..100_u64)
        .map(|i| log.append(sample_record(&topic, i)))
        .collect();
    let mut offsets = Vec::new();
    for future in pending.into_iter().rev() {
        offsets.push(future.await.expect("append").offset);
    }
    offsets.reverse();
    assert_eq!(offsets, (0..100).collect::<Vec<_>>());
    close_ok(&log).await;
}

/// Reads start anywhere and honour `max`.
pub async fn read_from_middle_with_max<L: EventLog>(log: L) {
    let topic = unique_name("middle");
    for i in 0..10 {
        append_ok(&log, sample_record(&topic, i)).await;
    }
    let offsets = |records: Vec<StoredRecord>| {
        records
            .iter()
            .map(|r| r.position.offset)
            .collect::<Vec<_>>()
    };
    assert_eq!(offsets(read_ok(&log, &topic, 3, 4).await), [3, 4, 5, 6]);
    assert_eq!(
        read_ok(&log, &topic, 3, 4).await[0].record,
        sample_record(&topic, 3)
    );
    assert_eq!(offsets(read_ok(&log, &topic, 8, 100).await), [8, 9]);
    assert_eq!(offsets(read_ok(&log, &topic, 9, 1).await), [9]);
    assert!(
        read_ok(&log, &topic, 10, 5).await.is_empty(),
        "reading at the end is empty"
    );
    assert!(
        read_ok(&log, &topic, 0, 0).await.is_empty(),
        "max 0 reads nothing"
    );
    assert!(
        read_ok(&log, &unique_name("never-written"), 0, 5)
            .await
            .is_empty()
    );
    close_ok(&log).await;
}

/// `end_offset` is the next offset to be written.
pub async fn end_offset_tracks_appends<L: EventLog>(log: L) {
    let topic = unique_name("end");
    assert_eq!(
        log.end_offset(&topic, 0).await.expect("end_offset"),
        0,
        "unknown topic"
    );
    for i in 0..3 {
        append_ok(&log, sample_record(&topic, i)).await;
    }
    assert_eq!(log.end_offset(&topic, 0).await.expect("end_offset"), 3);
    assert!(log.partition_count(&topic).await.expect("partition_count") >= 1);
    close_ok(&log).await;
}

/// Bad names, partitions and offsets are errors, not panics or empty reads.
pub async fn invalid_arguments_are_rejected<L: EventLog>(log: L) {
    let topic = unique_name("invalid");
    let mut bad = sample_record("no spaces allowed", 0);
    assert!(matches!(
        log.append(bad.clone()).await,
        Err(LogError::InvalidTopic { .. })
    ));
    bad.topic = String::new();
    assert!(matches!(
        log.append(bad).await,
        Err(LogError::InvalidTopic { .. })
    ));
    append_ok(&log, sample_record(&topic, 0)).await;
    let partitions = log.partition_count(&topic).await.expect("partition_count");
    assert!(matches!(
        log.read(&topic, partitions, 0, 1).await,
        Err(LogError::UnknownPartition { .. })
    ));
    assert!(matches!(
        log.read(&topic, -1, 0, 1).await,
        Err(LogError::UnknownPartition { .. })
    ));
    assert!(matches!(
        log.read(&topic, 0, -1, 1).await,
        Err(LogError::OffsetOutOfRange { .. })
    ));
    close_ok(&log).await;
}

/// Poll delivers in order and moves on; a later subscription of the same
/// group resumes right after the committed position.
pub async fn subscription_resumes_after_commit<L: EventLog>(log: L) {
    let topic = unique_name("resume");
    let group = unique_name("group");
    for i in 0..5 {
        append_ok(&log, sample_record(&topic, i)).await;
    }
    let mut first = subscribe_ok(&log, &group, &[&topic]).await;
    let polled = poll_n(&mut *first, 3).await;
    assert_eq!(
        polled.iter().map(|r| r.position.offset).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(polled[1].record, sample_record(&topic, 1));
    // The fetch position moved on even without a commit.
    let rest = poll_n(&mut *first, 2).await;
    assert_eq!(
        rest.iter().map(|r| r.position.offset).collect::<Vec<_>>(),
        [3, 4]
    );
    // Only the first three were handled.
    first
        .commit(&topic, polled[2].position)
        .await
        .expect("commit");
    drop(first);

    let mut second = subscribe_ok(&log, &group, &[&topic]).await;
    let resumed = poll_n(&mut *second, 2).await;
    assert_eq!(
        resumed
            .iter()
            .map(|r| r.position.offset)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!(resumed[0].record, sample_record(&topic, 3));
    second
        .commit(&topic, resumed[1].position)
        .await
        .expect("commit");
    drop(second);

    let mut third = subscribe_ok(&log, &group, &[&topic]).await;
    let nothing = third
        .poll(10, Duration::from_millis(300))
        .await
        .expect("poll");
    assert!(
        nothing.is_empty(),
        "everything was committed, got {nothing:?}"
    );
    append_ok(&log, sample_record(&topic, 5)).await;
    let new = poll_n(&mut *third, 1).await;
    assert_eq!(new[0].position.offset, 5);
    drop(third);
    close_ok(&log).await;
}

/// Another group's commits do not move a group: it starts from 0.
pub async fn groups_are_independent<L: EventLog>(log: L) {
    let topic = unique_name("groups");
    for i in 0..4 {
        append_ok(&log, sample_record(&topic, i)).await;
    }
    let mut a = subscribe_ok(&log, &unique_name("group-a"), &[&topic]).await;
    let polled = poll_n(&mut *a, 4).await;
    a.commit(&topic, polled[3].position).await.expect("commit");
    drop(a);
    let mut b = subscribe_ok(&log, &unique_name("group-b"), &[&topic]).await;
    let from_b = poll_n(&mut *b, 4).await;
    assert_eq!(
        from_b.iter().map(|r| r.position.offset).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    drop(b);
    close_ok(&log).await;
}

/// A subscription to several topics delivers from all of them, each in
/// order, and commits per topic.
pub async fn poll_covers_all_topics<L: EventLog>(log: L) {
    let a = unique_name("multi-a");
    let b = unique_name("multi-b");
    let group = unique_name("group");
    for i in 0..6 {
        append_ok(&log, sample_record(&a, i)).await;
        append_ok(&log, sample_record(&b, 100 + i)).await;
    }
    let mut subscription = subscribe_ok(&log, &group, &[&a, &b]).await;
    let records = poll_n(&mut *subscription, 12).await;
    for topic in [&a, &b] {
        let offsets: Vec<i64> = records
            .iter()
            .filter(|r| &r.record.topic == topic)
            .map(|r| r.position.offset)
            .collect();
        assert_eq!(offsets, (0..6).collect::<Vec<_>>(), "records of {topic}");
    }
    subscription
        .commit(
            &a,
            Position {
                partition: 0,
                offset: 5,
            },
        )
        .await
        .expect("commit a");
    subscription
        .commit(
            &b,
            Position {
                partition: 0,
                offset: 2,
            },
        )
        .await
        .expect("commit b");
    drop(subscription);
    let mut again = subscribe_ok(&log, &group, &[&a, &b]).await;
    let rest = poll_n(&mut *again, 3).await;
    assert!(
        rest.iter().all(|r| r.record.topic == b),
        "only b has uncommitted records: {rest:?}"
    );
    assert_eq!(
        rest.iter().map(|r| r.position.offset).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    drop(again);
    close_ok(&log).await;
}

/// A waiting poll returns soon after a record is appended, long before its
/// timeout.
pub async fn poll_wakes_on_append<L: EventLog>(log: L) {
    let log = Arc::new(log);
    let topic = unique_name("wake");
    let mut subscription = subscribe_ok(&*log, &unique_name("group"), &[&topic]).await;
    let timeout = Duration::from_secs(60);
    let waiting = tokio::spawn(async move {
        let records = subscription.poll(10, timeout).await;
        (records, tokio::time::Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "poll returned before anything was appended"
    );
    append_ok(&*log, sample_record(&topic, 0)).await;
    let appended_at = tokio::time::Instant::now();
    let (records, returned_at) = tokio::time::timeout(timeout, waiting)
        .await
        .expect("poll did not return within its timeout")
        .expect("poll task panicked");
    let records = records.expect("poll");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record, sample_record(&topic, 0));
    let latency = returned_at.saturating_duration_since(appended_at);
    assert!(
        latency < Duration::from_secs(5),
        "poll woke {latency:?} after the append"
    );
    close_ok(&*log).await;
}

/// Appends to topics a subscription does not read neither end its poll
/// nor hide a later append to its own topic.
pub async fn poll_waits_through_other_topics<L: EventLog>(log: L) {
    let log = Arc::new(log);
    let (mine, other) = (unique_name("mine"), unique_name("other"));
    let mut subscription = subscribe_ok(&*log, &unique_name("group"), &[&mine]).await;
    let waiting = tokio::spawn(async move { subscription.poll(10, PATIENCE).await });
    for i in 0..5 {
        append_ok(&*log, sample_record(&other, i)).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(
        !waiting.is_finished(),
        "poll returned for appends to a topic it does not read"
    );
    append_ok(&*log, sample_record(&mine, 0)).await;
    let records = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("poll did not return after an append to its topic")
        .expect("poll task panicked")
        .expect("poll");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record, sample_record(&mine, 0));
    close_ok(&*log).await;
}

/// With nothing to deliver, poll waits out its timeout and returns empty.
pub async fn poll_times_out_empty<L: EventLog>(log: L) {
    let topic = unique_name("timeout");
    let mut subscription = subscribe_ok(&log, &unique_name("group"), &[&topic]).await;
    let started = tokio::time::Instant::now();
    let records = subscription
        .poll(10, Duration::from_millis(300))
        .await
        .expect("poll");
    let waited = started.elapsed();
    assert!(records.is_empty());
    assert!(
        waited >= Duration::from_millis(250),
        "returned after {waited:?}, before the timeout"
    );
    assert!(
        waited < Duration::from_secs(30),
        "waited {waited:?} for a 300 ms timeout"
    );
    drop(subscription);
    close_ok(&log).await;
}

/// `close` commits and acknowledges what was accepted before it.
pub async fn close_acknowledges_accepted_appends<L: EventLog>(log: L) {
    let topic = unique_name("close-drain");
    let pending: Vec<_> = (0..100_u64)
        .map(|i| log.append(sample_record(&topic, i)))
        .collect();
    close_ok(&log).await;
    for (i, future) in pending.into_iter().enumerate() {
        let position = future
            .await
            .unwrap_or_else(|e| panic!("append {i}, accepted before close, failed: {e}"));
        assert_eq!(position.offset, i as i64);
    }
}

/// After `close`, appends are refused with `Closed`, and closing again is
/// fine.
pub async fn close_then_append_is_closed<L: EventLog>(log: L) {
    let topic = unique_name("closed");
    append_ok(&log, sample_record(&topic, 0)).await;
    close_ok(&log).await;
    let result = log.append(sample_record(&topic, 1)).await;
    assert!(
        matches!(result, Err(LogError::Closed)),
        "append after close: {result:?}"
    );
    close_ok(&log).await;
}
