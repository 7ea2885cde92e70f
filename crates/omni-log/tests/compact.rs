//! The compact record format of the SQLite log: headers templated against
//! a per-file table, payloads compressed with a per-topic dictionary. What
//! consumers read must be byte for byte what producers appended, whatever
//! the record's shape and whichever format its row was written in,
//! including files written before the format existed.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use omni_log::{
    EventLog, LogError, Record, RetentionLimits, RetentionPolicy, SqliteLog, SqliteLogConfig,
};
use tempfile::TempDir;

fn log_path(dir: &TempDir) -> PathBuf {
    dir.path().join("events.sqlite3")
}

fn open(path: &Path) -> SqliteLog {
    SqliteLog::open(path, SqliteLogConfig::default()).expect("open log")
}

fn h(name: &str, value: impl AsRef<[u8]>) -> (String, Bytes) {
    (name.to_owned(), Bytes::copy_from_slice(value.as_ref()))
}

/// A deterministic stream of pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: [&str; 16] = [
    "order", "refund", "parcel", "where", "is", "my", "please", "help", "größe", "café", "today",
    "thanks", "invoice", "wrong", "size", "colour",
];

/// A UUID-looking event id, as the daemon's.
fn event_id(i: u64) -> String {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-5{:03x}-a{:03x}-{:012x}",
        x >> 32,
        x >> 16 & 0xffff,
        x >> 4 & 0xfff,
        x & 0xfff,
        i
    )
}

/// `ce_time` as the daemon writes it for `timestamp_ms` plus `extra_ns`.
fn ce_time(timestamp_ms: i64, extra_ns: u32) -> String {
    let time = std::time::UNIX_EPOCH
        + Duration::from_millis(timestamp_ms as u64)
        + Duration::from_nanos(u64::from(extra_ns));
    omni_model::cloudevents::format_rfc3339(time)
}

/// Record `i` of a stream that mixes every shape the format handles.
fn shaped(topic: &str, i: u64, rng: &mut Rng) -> Record {
    let timestamp_ms = 1_700_000_000_000 + i as i64 * 7;
    let id = event_id(i);
    let text: Vec<&str> = (0..20 + rng.next() % 30)
        .map(|_| WORDS[(rng.next() % 16) as usize])
        .collect();
    // A protobuf-like payload holding the event id, as the daemon's does.
    let mut payload = vec![0x0a, 36];
    payload.extend_from_slice(id.as_bytes());
    payload.extend_from_slice(b"\x12\x08api-main\x62");
    payload.extend_from_slice(text.join(" ").as_bytes());
    let mut cloudevent = |content_type: Option<&str>| {
        let mut headers = vec![
            h("ce_specversion", "1.0"),
            h("ce_id", &id),
            h("ce_source", format!("/omnid/channels/ch-{}", i % 3)),
            h("ce_type", "dev.omnid.conversation_event.v1"),
            h(
                "ce_time",
                ce_time(timestamp_ms, (rng.next() % 1_000_000) as u32),
            ),
        ];
        if let Some(content_type) = content_type {
            headers.push(h("content-type", content_type));
        }
        headers
    };
    let (headers, payload) = match i % 10 {
        // The daemon's own records.
        0..=3 => (cloudevent(Some("application/protobuf")), payload),
        // No content-type; a traceparent and another extension.
        4 => {
            let mut headers = cloudevent(None);
            headers.push(h(
                "traceparent",
                format!("00-{:032x}-{:016x}-01", rng.next(), rng.next()),
            ));
            headers.push(h("x-tenant", "acme"));
            (headers, payload)
        }
        // Binary values, an empty name, duplicates, a ce_id that is not
        // in the payload and a ce_time in another form.
        5 => (
            vec![
                h("ce_id", format!("other-{i}")),
                h("", [0_u8, 255, 1]),
                h("bin", (0..(i % 7) as u8).collect::<Vec<u8>>()),
                h("ce_type", "a"),
                h("ce_type", "b"),
                h("ce_time", "2023-11-14T22:13:20.5+01:00"),
                h("ce_time", ce_time(timestamp_ms, 0)),
            ],
            payload,
        ),
        // No headers at all, and an empty payload.
        6 => (Vec::new(), payload),
        7 => (cloudevent(Some("application/json")), Vec::new()),
        // A large payload (compressible without a dictionary), and an
        // incompressible one.
        8 => (
            cloudevent(Some("text/plain")),
            format!("{} ", text.join(" ")).repeat(60).into_bytes(),
        ),
        _ => (
            vec![h("ce_id", &id)],
            (0..200 + rng.next() % 300)
                .map(|_| rng.next() as u8)
                .collect(),
        ),
    };
    Record {
        topic: topic.to_owned(),
        key: Bytes::from(format!("external:customer-{}", i % 13)),
        headers,
        payload: Bytes::from(payload),
        timestamp_ms,
    }
}

async fn append_all(log: &SqliteLog, records: &[Record]) {
    let pending: Vec<_> = records.iter().map(|r| log.append(r.clone())).collect();
    for (i, future) in pending.into_iter().enumerate() {
        future
            .await
            .unwrap_or_else(|e| panic!("append {i} failed: {e}"));
    }
}

async fn read_all(log: &SqliteLog, topic: &str) -> Vec<Record> {
    let mut records = Vec::new();
    loop {
        let from = log
            .read(topic, 0, records.len() as i64, 500)
            .await
            .expect("read");
        if from.is_empty() {
            return records;
        }
        records.extend(from.into_iter().map(|stored| stored.record));
    }
}

fn assert_same(read: &[Record], written: &[Record]) {
    assert_eq!(read.len(), written.len());
    for (i, (read, written)) in read.iter().zip(written).enumerate() {
        assert_eq!(read, written, "record {i} differs");
    }
}

fn query<T: rusqlite::types::FromSql>(path: &Path, sql: &str) -> T {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(sql, [], |row| row.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Appends records of every shape until the topic compresses with a
/// dictionary (trained in the background on its first payloads), then a
/// few hundred more.
async fn append_until_compressed(log: &SqliteLog, path: &Path, topic: &str) -> Vec<Record> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut written: Vec<Record> = (0..1200).map(|i| shaped(topic, i, &mut rng)).collect();
    append_all(log, &written).await;
    for _ in 0..600 {
        let trained: i64 = query(path, "SELECT COUNT(*) FROM log_dictionaries");
        if trained > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let more: Vec<Record> = (0..10)
            .map(|j| shaped(topic, written.len() as u64 + j, &mut rng))
            .collect();
        append_all(log, &more).await;
        written.extend(more);
    }
    let more: Vec<Record> = (0..500)
        .map(|j| shaped(topic, written.len() as u64 + j, &mut rng))
        .collect();
    append_all(log, &more).await;
    written.extend(more);
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_reads_back_byte_identical_before_and_after_compression() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let log = open(&path);
    let written = append_until_compressed(&log, &path, "inbound").await;

    // Every way of storing a payload was used: as given, compressed
    // without a dictionary (large ones before training) and with one.
    let codecs: String = query(
        &path,
        "SELECT group_concat(c) FROM (SELECT DISTINCT sign(payload_codec) AS c
         FROM log_records ORDER BY c)",
    );
    assert_eq!(codecs, "-1,0,1");
    // Headers: templated (first byte 2), none (empty); the templates are
    // few, one per shape and source.
    let templated: i64 = query(
        &path,
        "SELECT COUNT(*) FROM log_records WHERE headers >= x'02'",
    );
    let empty: i64 = query(
        &path,
        "SELECT COUNT(*) FROM log_records WHERE headers = x''",
    );
    assert_eq!(templated + empty, written.len() as i64);
    let templates: i64 = query(&path, "SELECT COUNT(*) FROM log_header_templates");
    assert!((5..=40).contains(&templates), "{templates} templates");

    assert_same(&read_all(&log, "inbound").await, &written);

    // Consumers see the same through a subscription.
    let mut subscription = log.subscribe("g", &["inbound".to_owned()]).await.unwrap();
    let mut polled = Vec::new();
    while polled.len() < written.len() {
        let batch = subscription
            .poll(1000, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!batch.is_empty(), "poll timed out at {}", polled.len());
        polled.extend(batch.into_iter().map(|stored| stored.record));
    }
    assert_same(&polled, &written);
    drop(subscription);
    log.close().await.unwrap();

    // Reopened, with nothing cached: templates and dictionaries come from
    // the file, and new records compress with the stored dictionary.
    let log = open(&path);
    assert_same(&read_all(&log, "inbound").await, &written);
    let mut rng = Rng(7);
    let mut written = written;
    let more: Vec<Record> = (0..100)
        .map(|j| shaped("inbound", written.len() as u64 + j, &mut rng))
        .collect();
    append_all(&log, &more).await;
    written.extend(more);
    assert_same(&read_all(&log, "inbound").await, &written);
    let dictionaries: i64 = query(&path, "SELECT COUNT(*) FROM log_dictionaries");
    assert_eq!(dictionaries, 1, "the reopened log trained another");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_records_are_what_the_stats_and_retention_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let log = open(&path);
    let written = append_until_compressed(&log, &path, "t").await;
    let stats = log.topic_stats().await.unwrap();
    let stored: i64 = query(
        &path,
        "SELECT SUM(length(key) + length(headers) + length(payload)) FROM log_records",
    );
    assert_eq!(stats[0].bytes, stored as u64, "stats count stored bytes");
    let given: usize = written
        .iter()
        .map(|r| {
            r.key.len()
                + r.payload.len()
                + r.headers
                    .iter()
                    .map(|(name, value)| name.len() + value.len())
                    .sum::<usize>()
        })
        .sum();
    assert!(
        (stored as usize) < given * 2 / 3,
        "stored {stored} of {given} bytes"
    );

    // Keep about a third: the oldest go, the rest read back unchanged.
    let limit = stats[0].bytes / 3;
    let policy = RetentionPolicy {
        default: RetentionLimits {
            max_bytes: Some(limit),
            ..RetentionLimits::default()
        },
        ..RetentionPolicy::default()
    };
    let report = log.enforce_retention(&policy).await.unwrap();
    let after = &report.topics[0].stats;
    assert!(after.bytes <= limit && after.bytes > limit / 2, "{after:?}");
    assert_eq!(
        after.records + report.topics[0].removed_records,
        written.len() as u64
    );
    let kept = read_all_from(&log, "t", after.start_offset).await;
    assert_same(&kept, &written[after.start_offset as usize..]);
    log.close().await.unwrap();
}

async fn read_all_from(log: &SqliteLog, topic: &str, start: i64) -> Vec<Record> {
    let mut records = Vec::new();
    loop {
        let from = log
            .read(topic, 0, start + records.len() as i64, 500)
            .await
            .unwrap();
        if from.is_empty() {
            return records;
        }
        assert_eq!(from[0].position.offset, start + records.len() as i64);
        records.extend(from.into_iter().map(|stored| stored.record));
    }
}

/// The literal header blob of the releases before templates.
fn literal_blob(headers: &[(String, Bytes)]) -> Vec<u8> {
    if headers.is_empty() {
        return Vec::new();
    }
    let mut blob = vec![1];
    blob.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, value) in headers {
        blob.extend_from_slice(&(name.len() as u32).to_le_bytes());
        blob.extend_from_slice(name.as_bytes());
        blob.extend_from_slice(&(value.len() as u32).to_le_bytes());
        blob.extend_from_slice(value);
    }
    blob
}

/// Writes `records` into a new file in the schema of version 1 (no topic
/// stats) or 2, as those releases did, with a consumer group's position.
fn write_old_file(path: &Path, version: i64, records: &[Record]) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE log_meta (key TEXT PRIMARY KEY NOT NULL, value ANY) STRICT, WITHOUT ROWID;
         CREATE TABLE log_topics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE) STRICT;
         CREATE TABLE log_records (
             seq           INTEGER PRIMARY KEY,
             topic_id      INTEGER NOT NULL REFERENCES log_topics (id),
             record_offset INTEGER NOT NULL,
             timestamp_ms  INTEGER NOT NULL,
             key           BLOB NOT NULL,
             headers       BLOB NOT NULL,
             payload       BLOB NOT NULL,
             UNIQUE (topic_id, record_offset)
         ) STRICT;
         CREATE TABLE log_consumer_offsets (
             group_id     TEXT NOT NULL,
             topic        TEXT NOT NULL,
             partition_id INTEGER NOT NULL,
             next_offset  INTEGER NOT NULL,
             PRIMARY KEY (group_id, topic, partition_id)
         ) STRICT, WITHOUT ROWID;",
    )
    .unwrap();
    if version >= 2 {
        conn.execute_batch(
            "CREATE TABLE log_topic_stats (
                 topic_id     INTEGER PRIMARY KEY REFERENCES log_topics (id),
                 records      INTEGER NOT NULL,
                 bytes        INTEGER NOT NULL,
                 start_offset INTEGER NOT NULL,
                 next_offset  INTEGER NOT NULL
             ) STRICT;",
        )
        .unwrap();
    }
    conn.execute(
        "INSERT INTO log_meta (key, value) VALUES ('schema_version', ?1)",
        [version],
    )
    .unwrap();
    for (offset, record) in records.iter().enumerate() {
        conn.execute(
            "INSERT OR IGNORE INTO log_topics (name) VALUES (?1)",
            [&record.topic],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO log_records (topic_id, record_offset, timestamp_ms, key, headers, payload)
             VALUES ((SELECT id FROM log_topics WHERE name = ?1), ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                record.topic,
                offset as i64,
                record.timestamp_ms,
                record.key.as_ref(),
                literal_blob(&record.headers),
                record.payload.as_ref(),
            ],
        )
        .unwrap();
    }
    if version >= 2 {
        conn.execute_batch(
            "INSERT INTO log_topic_stats
             SELECT topic_id, COUNT(*), SUM(length(key) + length(headers) + length(payload)),
                    MIN(record_offset), MAX(record_offset) + 1
             FROM log_records GROUP BY topic_id",
        )
        .unwrap();
    }
    conn.execute(
        "INSERT INTO log_consumer_offsets VALUES ('threading', 'old', 0, 17)",
        [],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_older_versions_open_read_and_take_compact_records() {
    for version in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(&dir);
        let mut rng = Rng(99);
        let old: Vec<Record> = (0..60).map(|i| shaped("old", i, &mut rng)).collect();
        write_old_file(&path, version, &old);
        let old_bytes: i64 = query(
            &path,
            "SELECT SUM(length(key) + length(headers) + length(payload)) FROM log_records",
        );

        let log = open(&path);
        assert_same(&read_all(&log, "old").await, &old);
        assert_eq!(log.committed_offset("threading", "old").await.unwrap(), 17);
        let stats = log.topic_stats().await.unwrap();
        assert_eq!(
            (stats[0].records, stats[0].bytes, stats[0].end_offset),
            (60, old_bytes as u64, 60),
            "version {version}"
        );
        // New records continue the offsets in the new format; old rows
        // stay as they were written.
        let new: Vec<Record> = (60..90).map(|i| shaped("old", i, &mut rng)).collect();
        append_all(&log, &new).await;
        let mut all = old.clone();
        all.extend(new);
        assert_same(&read_all(&log, "old").await, &all);
        log.close().await.unwrap();

        let literal: i64 = query(
            &path,
            "SELECT COUNT(*) FROM log_records WHERE substr(headers, 1, 1) = x'01'",
        );
        let old_literal = old.iter().filter(|r| !r.headers.is_empty()).count() as i64;
        assert_eq!(
            literal, old_literal,
            "version {version}: old rows rewritten"
        );
        let templated: i64 = query(
            &path,
            "SELECT COUNT(*) FROM log_records WHERE substr(headers, 1, 1) = x'02'",
        );
        assert!(templated > 20, "version {version}: {templated} templated");
        assert_eq!(
            query::<i64>(
                &path,
                "SELECT value FROM log_meta WHERE key = 'schema_version'"
            ),
            3
        );
        let stats_bytes: i64 = query(&path, "SELECT bytes FROM log_topic_stats");
        let stored: i64 = query(
            &path,
            "SELECT SUM(length(key) + length(headers) + length(payload)) FROM log_records",
        );
        assert_eq!(stats_bytes, stored);

        // And once more, already migrated.
        let log = open(&path);
        assert_same(&read_all(&log, "old").await, &all);
        log.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_never_repeat_stay_readable_past_the_template_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let log = open(&path);
    // A producer that puts a different source on every record.
    let written: Vec<Record> = (0..4200)
        .map(|i| Record {
            topic: "t".to_owned(),
            key: Bytes::new(),
            headers: vec![
                h("ce_source", format!("/sources/{i}")),
                h("ce_id", format!("id-{i}")),
            ],
            payload: Bytes::from(format!("payload of id-{i}")),
            timestamp_ms: i,
        })
        .collect();
    append_all(&log, &written).await;
    assert_same(&read_all(&log, "t").await, &written);
    // At most 4096 templates; the records beyond store their headers as
    // they are.
    let templates: i64 = query(&path, "SELECT COUNT(*) FROM log_header_templates");
    assert_eq!(templates, 4096);
    let literal: i64 = query(
        &path,
        "SELECT COUNT(*) FROM log_records WHERE substr(headers, 1, 1) = x'01'",
    );
    assert_eq!(literal, 4200 - 4096);
    log.close().await.unwrap();
    let log = open(&path);
    assert_same(&read_all(&log, "t").await, &written);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logs_on_one_file_share_templates() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let (a, b) = (open(&path), open(&path));
    let mut rng = Rng(5);
    let records: Vec<Record> = (0..40).map(|i| shaped("t", i, &mut rng)).collect();
    for (i, record) in records.iter().enumerate() {
        let log = if i % 2 == 0 { &a } else { &b };
        log.append(record.clone()).await.unwrap();
    }
    assert_same(&read_all(&a, "t").await, &records);
    assert_same(&read_all(&b, "t").await, &records);
    let templates: i64 = query(&path, "SELECT COUNT(*) FROM log_header_templates");
    let distinct: i64 = query(
        &path,
        "SELECT COUNT(DISTINCT template) FROM log_header_templates",
    );
    assert_eq!(templates, distinct, "a template stored twice");
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_templates_and_dictionaries_are_corrupt_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let log = open(&path);
    let written = append_until_compressed(&log, &path, "t").await;
    log.close().await.unwrap();
    let compressed: String = query(
        &path,
        "SELECT group_concat(record_offset) FROM (SELECT record_offset FROM log_records
         WHERE payload_codec > 0 ORDER BY record_offset DESC LIMIT 2)",
    );
    let (last, before): (i64, i64) = match compressed.split_once(',') {
        Some((last, before)) => (last.parse().unwrap(), before.parse().unwrap()),
        None => panic!("not two compressed records: {compressed}"),
    };

    let conn = rusqlite::Connection::open(&path).unwrap();
    // A compressed payload cut short.
    conn.execute(
        "UPDATE log_records SET payload = substr(payload, 1, length(payload) - 3)
         WHERE record_offset = ?1",
        [last],
    )
    .unwrap();
    let log = open(&path);
    match log.read("t", 0, last, 1).await {
        Err(LogError::Corrupt { offset, .. }) => assert_eq!(offset, last),
        other => panic!("expected a corrupt record, got {other:?}"),
    }
    assert_eq!(
        log.read("t", 0, before, 1).await.unwrap()[0].record,
        written[before as usize]
    );
    log.close().await.unwrap();

    // The dictionary, then the templates, gone.
    conn.execute_batch("DELETE FROM log_dictionaries").unwrap();
    let log = open(&path);
    assert!(matches!(
        log.read("t", 0, before, 1).await,
        Err(LogError::Corrupt { .. })
    ));
    log.close().await.unwrap();
    conn.execute_batch(
        "DELETE FROM log_header_templates; UPDATE log_records SET payload_codec = 0",
    )
    .unwrap();
    let log = open(&path);
    match log.read("t", 0, 0, 1).await {
        Err(error @ LogError::Corrupt { .. }) => {
            let source = std::error::Error::source(&error).unwrap().to_string();
            assert!(source.contains("template"), "{source}");
        }
        other => panic!("expected a corrupt record, got {other:?}"),
    }
    log.close().await.unwrap();
}
