//! The spool's fault handling, fast: the primary is a real SQLite log behind
//! a gate that can hold appends in order (a broker that stopped answering;
//! the producer keeps them queued) or fail them (a broker that refuses).
//! The Kafka end-to-end versions of these cases run against a real broker
//! in the daemon's tests.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use omni_log::{
    BoxFuture, EventLog, LogError, Position, Record, SPOOLED_PARTITION, SpoolConfig, SpooledLog,
    SqliteLog, SqliteLogConfig, StoredRecord, Subscription,
};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Gate {
    Open,
    Hold,
    Fail,
}

type Held = VecDeque<(Record, oneshot::Sender<Result<Position, LogError>>)>;

#[derive(Debug, Clone)]
struct GatedLog {
    inner: SqliteLog,
    state: Arc<Mutex<(Gate, Held)>>,
}

impl GatedLog {
    fn new(inner: SqliteLog) -> Self {
        Self {
            inner,
            state: Arc::new(Mutex::new((Gate::Open, VecDeque::new()))),
        }
    }

    fn set(&self, gate: Gate) {
        let mut state = self.state.lock().unwrap();
        state.0 = gate;
        let held: Vec<_> = state.1.drain(..).collect();
        for (record, reply) in held {
            match gate {
                // Released in the order they were queued, like a producer.
                Gate::Open => {
                    let ack = self.inner.append(record);
                    tokio::spawn(async move {
                        let _ = reply.send(ack.await);
                    });
                }
                Gate::Fail => {
                    let _ = reply.send(Err(LogError::Closed));
                }
                Gate::Hold => state.1.push_back((record, reply)),
            }
        }
    }
}

#[async_trait]
impl EventLog for GatedLog {
    fn append(&self, record: Record) -> BoxFuture<'static, Result<Position, LogError>> {
        let mut state = self.state.lock().unwrap();
        match state.0 {
            Gate::Open => self.inner.append(record),
            Gate::Fail => Box::pin(async { Err(LogError::Overloaded) }),
            Gate::Hold => {
                let (reply, rx) = oneshot::channel();
                state.1.push_back((record, reply));
                Box::pin(async move { rx.await.unwrap_or(Err(LogError::Closed)) })
            }
        }
    }
    async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        self.inner.read(topic, partition, from, max).await
    }
    async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, LogError> {
        self.inner.end_offset(topic, partition).await
    }
    async fn partition_count(&self, topic: &str) -> Result<i32, LogError> {
        self.inner.partition_count(topic).await
    }
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, LogError> {
        self.inner.subscribe(group, topics).await
    }
    async fn close(&self) -> Result<(), LogError> {
        self.inner.close().await
    }
}

fn record(i: usize) -> Record {
    Record {
        topic: "omni.inbound.v1".into(),
        key: Bytes::from(format!("customer-{}", i % 3)),
        headers: vec![("ce_id".into(), Bytes::from(format!("id-{i}")))],
        payload: Bytes::from(format!("payload-{i}")),
        timestamp_ms: i as i64,
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    primary: GatedLog,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let primary = GatedLog::new(
            SqliteLog::open(
                &dir.path().join("primary.sqlite3"),
                SqliteLogConfig::default(),
            )
            .unwrap(),
        );
        Self { dir, primary }
    }

    async fn spooled(&self, max_records: u64) -> SpooledLog {
        let spool = SqliteLog::open(
            &self.dir.path().join("spool.sqlite3"),
            SqliteLogConfig::default(),
        )
        .unwrap();
        let config = SpoolConfig {
            max_records,
            // Long enough that a healthy primary (a SQLite file, one
            // fsync per append) never counts as stalled while the other
            // tests of this file share the disk: with 200 ms, CI once saw
            // an append after recovery spooled instead of sent directly.
            spool_after: Duration::from_secs(1),
        };
        SpooledLog::new(Arc::new(self.primary.clone()), spool, config)
            .await
            .unwrap()
    }

    /// Payloads in the primary, in log order.
    async fn primary_payloads(&self) -> Vec<String> {
        let records = self
            .primary
            .inner
            .read("omni.inbound.v1", 0, 0, 100_000)
            .await
            .unwrap();
        records
            .iter()
            .map(|r| String::from_utf8(r.record.payload.to_vec()).unwrap())
            .collect()
    }

    async fn wait_for_primary(&self, count: usize, log: &SpooledLog) -> Vec<String> {
        for _ in 0..200 {
            let payloads = self.primary_payloads().await;
            if payloads.len() >= count && !log.status().spooling {
                return payloads;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "primary has {} of {count} records; status {:?}",
            self.primary_payloads().await.len(),
            log.status()
        );
    }
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("payload-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_while_the_primary_answers() {
    let fx = Fixture::new();
    let log = fx.spooled(1000).await;
    let acks: Vec<_> = (0..50).map(|i| log.append(record(i))).collect();
    for ack in acks {
        assert_ne!(ack.await.unwrap().partition, SPOOLED_PARTITION);
    }
    assert!(!log.status().spooling);
    assert_eq!(fx.primary_payloads().await, expected(0..50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_primary_is_spooled_then_drained_exactly_once_in_order() {
    let fx = Fixture::new();
    let log = fx.spooled(1000).await;
    for i in 0..10 {
        log.append(record(i)).await.unwrap();
    }
    fx.primary.set(Gate::Hold);
    // These wait on the stalled primary, then are acknowledged from the spool.
    let acks: Vec<_> = (10..60).map(|i| log.append(record(i))).collect();
    for ack in acks {
        let position = tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .expect("acknowledged from the spool")
            .unwrap();
        assert_eq!(position.partition, SPOOLED_PARTITION);
    }
    assert!(log.status().spooling);
    // While spooling, new appends go straight to the spool.
    for i in 60..80 {
        assert_eq!(
            log.append(record(i)).await.unwrap().partition,
            SPOOLED_PARTITION
        );
    }
    // The broker comes back: the held originals get through, so their
    // spooled copies must be skipped; the rest is forwarded after them.
    fx.primary.set(Gate::Open);
    let payloads = fx.wait_for_primary(80, &log).await;
    assert_eq!(payloads, expected(0..80), "each record once, in call order");
    assert_eq!(
        log.append(record(80)).await.unwrap().partition,
        0,
        "direct again"
    );
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_primary_is_spooled_and_drained_when_it_returns() {
    let fx = Fixture::new();
    let log = fx.spooled(1000).await;
    fx.primary.set(Gate::Fail);
    for i in 0..30 {
        assert_eq!(
            log.append(record(i)).await.unwrap().partition,
            SPOOLED_PARTITION
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fx.primary_payloads().await.is_empty());
    fx.primary.set(Gate::Open);
    assert_eq!(fx.wait_for_primary(30, &log).await, expected(0..30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_instead_of_growing() {
    let fx = Fixture::new();
    let log = fx.spooled(5).await;
    fx.primary.set(Gate::Fail);
    let mut refused = 0;
    for i in 0..8 {
        match log.append(record(i)).await {
            Ok(position) => assert_eq!(position.partition, SPOOLED_PARTITION),
            Err(LogError::Overloaded) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(refused, 3);
    fx.primary.set(Gate::Open);
    assert_eq!(fx.wait_for_primary(5, &log).await, expected(0..5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_records_survive_a_restart() {
    let fx = Fixture::new();
    {
        let log = fx.spooled(1000).await;
        fx.primary.set(Gate::Fail);
        for i in 0..20 {
            log.append(record(i)).await.unwrap();
        }
        // Dropped without close, as in a crash: acknowledged means fsync'd.
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    fx.primary.set(Gate::Open);
    let log = fx.spooled(1000).await;
    assert!(
        log.status().spooling,
        "a non-empty spool is drained before going direct"
    );
    assert_eq!(
        log.append(record(20)).await.unwrap().partition,
        SPOOLED_PARTITION,
        "new records queue behind the old"
    );
    assert_eq!(fx.wait_for_primary(21, &log).await, expected(0..21));
}

/// Many concurrent appenders through a stall and a recovery: every
/// acknowledged record reaches the primary exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_through_an_outage_arrive_exactly_once() {
    let fx = Fixture::new();
    let log = Arc::new(fx.spooled(1_000_000).await);
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (log, acked, stop) = (log.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let n = w * 1_000_000 + i;
                    log.append(record(n)).await.unwrap();
                    acked.lock().unwrap().push(n);
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    fx.primary.set(Gate::Hold);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fx.primary.set(Gate::Open);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let mut payloads = Vec::new();
    for _ in 0..100 {
        payloads = fx.primary_payloads().await;
        if payloads.len() >= acked.len() && !log.status().spooling {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut counts = std::collections::HashMap::new();
    for p in &payloads {
        *counts.entry(p.clone()).or_insert(0) += 1;
    }
    let missing = acked
        .iter()
        .filter(|n| !counts.contains_key(&format!("payload-{n}")))
        .count();
    let doubled = counts.values().filter(|c| **c > 1).count();
    assert_eq!(
        (missing, doubled),
        (0, 0),
        "of {} acknowledged; status {:?}",
        acked.len(),
        log.status()
    );
    // Per appender, call order is log order.
    for w in 0..8 {
        let mine: Vec<&String> = payloads
            .iter()
            .filter(|p| {
                p.strip_prefix("payload-")
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n / 1_000_000 == w)
            })
            .collect();
        let mut sorted = mine.clone();
        sorted.sort_by_key(|p| {
            p.strip_prefix("payload-")
                .unwrap()
                .parse::<usize>()
                .unwrap()
        });
        assert_eq!(mine, sorted, "appender {w} out of order");
    }
}
