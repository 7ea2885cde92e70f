//! "Nothing acknowledged is lost", tested with a real crash: a child
//! process appends as fast as it can and prints every acknowledged offset;
//! the parent SIGKILLs it mid-stream, reopens the file and checks that every
//! printed offset holds the record the child was told was durable.
//!
//! The child is this test binary re-executed with an environment variable
//! that turns `crash_child` from a no-op into the appender.
//!
//! SIGKILL proves the ack path (nothing is acknowledged before its commit
//! returned); it cannot prove fsync against power loss, which rests on
//! `synchronous=FULL` (see the schema module).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use omni_log::{EventLog, Record, RetentionLimits, RetentionPolicy, SqliteLog, SqliteLogConfig};

const CHILD_ENV: &str = "OMNI_LOG_CRASH_CHILD_PATH";
/// Set (to the log's path) for the child of
/// `retention_survives_sigkill`: it appends and runs retention passes.
const RETENTION_CHILD_ENV: &str = "OMNI_LOG_CRASH_RETENTION_CHILD_PATH";
/// The size limit of that child's retention, small enough that every pass
/// removes something.
const RETAINED_BYTES: u64 = 256 * 1024;
const TOPIC: &str = "crash";
const APPENDERS: u64 = 64;
/// Acknowledgements the parent waits for before killing the child.
const KILL_AFTER_ACKS: usize = 5_000;

fn record(task: u64, seq: u64) -> Record {
    // ~300 bytes, like a normalized message, and unique per (task, seq).
    let payload = format!("task={task} seq={seq} ").repeat(16);
    Record {
        topic: TOPIC.to_owned(),
        key: Bytes::from(format!("sender-{task}")),
        headers: vec![("ce_id".to_owned(), Bytes::from(format!("{task}-{seq}")))],
        payload: Bytes::from(payload),
        timestamp_ms: seq as i64,
    }
}

/// Kills the child if the parent panics, so a failed test leaves no
/// appender running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.sqlite3");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();

    let mut acked: HashMap<i64, (u64, u64)> = HashMap::new();
    let parse = |line: &str| -> Option<(i64, u64, u64)> {
        let mut fields = line.strip_prefix("ack ")?.split(' ');
        Some((
            fields.next()?.parse().ok()?,
            fields.next()?.parse().ok()?,
            fields.next()?.parse().ok()?,
        ))
    };
    let started = Instant::now();
    while acked.len() < KILL_AFTER_ACKS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "child acknowledged only {} appends",
            acked.len()
        );
        let line = lines
            .next()
            .expect("child exited before it was killed")
            .unwrap();
        if let Some((offset, task, seq)) = parse(&line) {
            assert!(
                acked.insert(offset, (task, seq)).is_none(),
                "offset {offset} acknowledged twice"
            );
        }
    }
    // SIGKILL, mid-stream: the child is appending from 64 tasks right now.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    // Acks printed before the kill but not yet read count too.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some((offset, task, seq)) = parse(&line) {
            assert!(
                acked.insert(offset, (task, seq)).is_none(),
                "offset {offset} acknowledged twice"
            );
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
        let end = log.end_offset(TOPIC, 0).await.unwrap();
        let max_acked = acked.keys().copied().max().unwrap();
        assert!(
            end > max_acked,
            "end offset {end} but offset {max_acked} was acknowledged"
        );
        let mut stored = Vec::new();
        while (stored.len() as i64) < end {
            let batch = log
                .read(TOPIC, 0, stored.len() as i64, 10_000)
                .await
                .unwrap();
            assert!(
                !batch.is_empty(),
                "offsets are not dense: nothing at {}",
                stored.len()
            );
            stored.extend(batch);
        }
        for (i, record) in stored.iter().enumerate() {
            assert_eq!(record.position.offset, i as i64, "offsets are dense");
        }
        for (offset, (task, seq)) in &acked {
            assert_eq!(
                stored[*offset as usize].record,
                record(*task, *seq),
                "acknowledged record at offset {offset}"
            );
        }
        eprintln!(
            "{} acknowledged appends checked, {} records in the file after SIGKILL",
            acked.len(),
            end
        );
        // A log that crashed mid-write keeps working.
        assert_eq!(log.append(record(0, u64::MAX)).await.unwrap().offset, end);
        log.close().await.unwrap();
    });
}

/// The appender; does nothing unless run by `acknowledged_appends_survive_sigkill`.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    run_child(Path::new(&path));
}

fn run_child(path: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let log = Arc::new(SqliteLog::open(path, SqliteLogConfig::default()).unwrap());
        // Written straight to the file descriptor, past the test harness's
        // output capture, one flushed line per acknowledgement.
        let stdout = Arc::new(Mutex::new(std::io::stdout()));
        let tasks: Vec<_> = (0..APPENDERS)
            .map(|task| {
                let log = Arc::clone(&log);
                let stdout = Arc::clone(&stdout);
                tokio::spawn(async move {
                    for seq in 0.. {
                        let position = log.append(record(task, seq)).await.unwrap();
                        let mut out = stdout.lock().unwrap();
                        writeln!(out, "ack {} {task} {seq}", position.offset).unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        // The parent kills us long before this; it only keeps an orphan
        // from running forever if the parent died first.
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
    });
    std::process::exit(1);
}

/// SIGKILL while retention passes remove records and appends keep coming:
/// after reopening, the kept sizes match the records, offsets are dense
/// from the log start, and every acknowledged record at or after the start
/// is intact.
#[test]
fn retention_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.sqlite3");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "retention_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(RETENTION_CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut acked: HashMap<i64, (u64, u64)> = HashMap::new();
    let mut passes = 0;
    let started = Instant::now();
    // Enough acknowledgements and passes that the kill lands among them.
    while acked.len() < KILL_AFTER_ACKS || passes < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "child acknowledged {} appends and ran {passes} passes",
            acked.len()
        );
        let line = lines
            .next()
            .expect("child exited before it was killed")
            .unwrap();
        if line == "pass" {
            passes += 1;
        } else if let Some((offset, task, seq)) = parse_ack(&line) {
            acked.insert(offset, (task, seq));
        }
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    for line in lines.map_while(Result::ok) {
        if let Some((offset, task, seq)) = parse_ack(&line) {
            acked.insert(offset, (task, seq));
        }
    }

    let (records, bytes, min, max): (i64, i64, Option<i64>, Option<i64>) = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(key) + length(headers) + length(payload)), 0),
                    MIN(record_offset), MAX(record_offset)
             FROM log_records WHERE topic_id = (SELECT id FROM log_topics WHERE name = ?1)",
            [TOPIC],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let log = SqliteLog::open(&path, SqliteLogConfig::default()).unwrap();
        let stats = log
            .topic_stats()
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.topic == TOPIC)
            .unwrap();
        assert_eq!(
            (stats.records, stats.bytes),
            (records as u64, bytes as u64),
            "kept stats against the records"
        );
        assert!(
            stats.start_offset > 0,
            "retention removed nothing: {stats:?}"
        );
        assert_eq!(min, Some(stats.start_offset), "{stats:?}");
        assert_eq!(max.map(|m| m + 1), Some(stats.end_offset), "{stats:?}");
        assert_eq!(
            stats.end_offset - stats.start_offset,
            records,
            "dense offsets"
        );
        let max_acked = acked.keys().copied().max().unwrap();
        assert!(
            stats.end_offset > max_acked,
            "{stats:?}, acknowledged {max_acked}"
        );
        let stored = log
            .read(TOPIC, 0, stats.start_offset, usize::MAX >> 1)
            .await
            .unwrap();
        let mut checked = 0;
        for (offset, (task, seq)) in &acked {
            if *offset >= stats.start_offset {
                let index = (*offset - stats.start_offset) as usize;
                assert_eq!(stored[index].record, record(*task, *seq), "offset {offset}");
                checked += 1;
            }
        }
        eprintln!("{checked} acknowledged records checked after SIGKILL mid-retention, {stats:?}");
        log.close().await.unwrap();
    });
}

fn parse_ack(line: &str) -> Option<(i64, u64, u64)> {
    let mut fields = line.strip_prefix("ack ")?.split(' ');
    Some((
        fields.next()?.parse().ok()?,
        fields.next()?.parse().ok()?,
        fields.next()?.parse().ok()?,
    ))
}

/// The appender and remover; does nothing unless run by
/// `retention_survives_sigkill`.
#[test]
fn retention_child() {
    let Some(path) = std::env::var_os(RETENTION_CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let log = Arc::new(SqliteLog::open(Path::new(&path), SqliteLogConfig::default()).unwrap());
        let stdout = Arc::new(Mutex::new(std::io::stdout()));
        for task in 0..16 {
            let (log, stdout) = (Arc::clone(&log), Arc::clone(&stdout));
            tokio::spawn(async move {
                for seq in 0.. {
                    let position = log.append(record(task, seq)).await.unwrap();
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "ack {} {task} {seq}", position.offset).unwrap();
                    out.flush().unwrap();
                }
            });
        }
        let policy = RetentionPolicy {
            default: RetentionLimits {
                max_age: None,
                max_bytes: Some(RETAINED_BYTES),
            },
            batch_records: 50,
            ..RetentionPolicy::default()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            log.enforce_retention(&policy).await.unwrap();
            let mut out = stdout.lock().unwrap();
            writeln!(out, "pass").unwrap();
            out.flush().unwrap();
        }
    });
    std::process::exit(1);
}
