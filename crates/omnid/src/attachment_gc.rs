//! Garbage collection of the attachment store: a pass every
//! `attachments.check_interval_secs` removes the files no retained record
//! can name any more (see `omni_connector::attachments::gc` for the rule),
//! and the oldest ones beyond `attachments.max_bytes`, and reports the
//! store's size as metrics.
//!
//! Where the rule's cutoff comes from: on the embedded log, the append
//! time of the oldest record still retained on the topics whose records
//! name files (inbound, timeline, outbound; dead letters carry raw input
//! and commands no files), read at each pass, so files follow
//! `[log.retention]`; with Kafka, `attachments.max_age_days` before now.
//! Either way less [`MARGIN`]: a file is stored (or refreshed) before the
//! record naming it is appended, by at most the time one request or one
//! download takes, far under an hour.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use metrics::{Counter, Gauge, counter, gauge};
use omni_connector::{
    FsAttachmentStore,
    attachments::gc::{GcReport, GcRule, Reason},
};
use omni_log::{EventLog, SqliteLog};
use omni_telemetry::{InternalEvent, emit, names};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    settings::{Settings, Topics},
    task::{self, BackgroundTask},
};

/// How long before the cutoff a file must have been last refreshed to be
/// removed, and the youngest a file removed for the byte limit may be.
/// Covers the time between storing a file and appending its record: a
/// webhook request (seconds), a download finishing (at most its timeout),
/// a visitor's upload and the chat message naming it (minutes), and clock
/// jitter between records appended together.
pub(crate) const MARGIN: Duration = Duration::from_secs(3600);

/// Most files removed in one pass: a pass stays short (the next one
/// continues), and a mistaken cutoff cannot empty a large store at once.
pub(crate) const MAX_REMOVALS_PER_PASS: usize = 100_000;

/// Where the cutoff of each pass comes from.
#[derive(Debug, Clone)]
pub(crate) enum Cutoff {
    /// The oldest record retained on these topics of the embedded log.
    OldestRetained { log: SqliteLog, topics: Vec<String> },
    /// A fixed age (Kafka); `None` keeps files regardless of age.
    MaxAge(Option<Duration>),
}

impl Cutoff {
    /// The cutoff of `settings`: `embedded` is the embedded log, if that
    /// is the backend.
    pub(crate) fn of(settings: &Settings, embedded: Option<SqliteLog>) -> Cutoff {
        match embedded {
            Some(log) => {
                let topics = Topics::new(&settings.log.topic_prefix);
                Cutoff::OldestRetained {
                    log,
                    topics: vec![topics.inbound, topics.timeline, topics.outbound],
                }
            }
            None => Cutoff::MaxAge((settings.attachments.max_age_days > 0).then(|| {
                Duration::from_secs(settings.attachments.max_age_days.saturating_mul(86_400))
            })),
        }
    }

    /// Files last refreshed before the returned time are named by no
    /// retained record; `None`: none can be said to be.
    pub(crate) async fn unreferenced_before(
        &self,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, omni_log::LogError> {
        match self {
            Cutoff::MaxAge(age) => Ok(age.and_then(|age| now.checked_sub(age + MARGIN))),
            Cutoff::OldestRetained { log, topics } => {
                let mut oldest_ms = Vec::with_capacity(topics.len());
                for topic in topics {
                    // From offset 0: the log start, wherever retention put it.
                    let first = log.read(topic, 0, 0, 1).await?;
                    oldest_ms.push(first.first().map(|r| r.record.timestamp_ms));
                }
                Ok(oldest_retained_cutoff(&oldest_ms, now))
            }
        }
    }
}

/// The cutoff from the append time (ms since the epoch) of each topic's
/// oldest retained record (`None`: the topic is empty, so only what is
/// stored from now on may be named): the oldest of them, or now, less
/// [`MARGIN`]. Records are appended in time order, so the first one is the
/// oldest (within the jitter the margin covers).
pub(crate) fn oldest_retained_cutoff(
    oldest_ms: &[Option<i64>],
    now: SystemTime,
) -> Option<SystemTime> {
    let oldest = oldest_ms
        .iter()
        .map(|ms| {
            ms.map_or(now, |ms| {
                UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
            })
        })
        .fold(now, SystemTime::min);
    oldest.checked_sub(MARGIN)
}

/// Starts the collector of the store at `settings.attachments_dir()`. The
/// first pass runs at once (so the size metrics are there from the
/// start); the task stops at `shutdown`, after the file it is removing.
/// A pass cut short finishes in the background (its blocking part cannot
/// be interrupted, and is bounded); a crash or a stop mid-pass leaves
/// files for the next pass, never a damaged one.
pub(crate) fn start(
    settings: &Settings,
    embedded: Option<SqliteLog>,
    shutdown: &CancellationToken,
) -> BackgroundTask {
    let cutoff = Cutoff::of(settings, embedded);
    let store = FsAttachmentStore::new(settings.attachments_dir());
    let max_bytes = (settings.attachments.max_bytes > 0).then_some(settings.attachments.max_bytes);
    let interval = Duration::from_secs(settings.attachments.check_interval_secs.max(1));
    tracing::info!(
        dir = %store.root().display(),
        cutoff = match &cutoff {
            Cutoff::OldestRetained { .. } => "oldest retained record",
            Cutoff::MaxAge(_) => "max_age_days",
        },
        max_age_days = settings.attachments.max_age_days,
        max_bytes,
        "attachment store garbage collection"
    );
    BackgroundTask::spawn(
        "attachment garbage collection",
        "the files it did not get to are left for the next pass",
        shutdown,
        |stop| run(store, cutoff, max_bytes, interval, stop),
    )
}

async fn run(
    store: FsAttachmentStore,
    cutoff: Cutoff,
    max_bytes: Option<u64>,
    interval: Duration,
    stop: CancellationToken,
) {
    let metrics = Arc::new(GcMetrics::register());
    let mut ticks = task::ticks(interval);
    while task::next_tick(&mut ticks, &stop).await {
        let now = SystemTime::now();
        let unreferenced_before = tokio::select! {
            _ = stop.cancelled() => return,
            found = cutoff.unreferenced_before(now) => found,
        };
        let unreferenced_before = match unreferenced_before {
            Ok(found) => found,
            Err(omni_log::LogError::Closed) => return,
            Err(error) => {
                emit!(AttachmentGcFailed { error: &error } => &metrics);
                continue;
            }
        };
        let rule = GcRule {
            now,
            unreferenced_before,
            max_bytes,
            min_age: MARGIN,
            max_removals: MAX_REMOVALS_PER_PASS,
        };
        let pass = store.clone();
        let done = tokio::task::spawn_blocking(move || pass.collect_garbage(&rule)).await;
        match done {
            Ok(Ok(report)) => emit!(AttachmentsCollected {
                report: &report,
                unreferenced_before,
            } => &metrics),
            Ok(Err(error)) => emit!(AttachmentGcFailed { error: &error } => &metrics),
            Err(error) => emit!(AttachmentGcFailed { error: &error } => &metrics),
        }
    }
}

/// The collector's pre-registered metrics.
#[derive(Debug)]
pub(crate) struct GcMetrics {
    files: Gauge,
    bytes: Gauge,
    removed: Vec<(Reason, Counter, Counter)>,
    failures: Counter,
}

impl GcMetrics {
    pub(crate) fn register() -> Self {
        let removed = [
            Reason::Unreferenced,
            Reason::MaxBytes,
            Reason::StaleTemporary,
        ]
        .into_iter()
        .map(|reason| {
            (
                reason,
                counter!(names::ATTACHMENTS_REMOVED_FILES_TOTAL, "reason" => reason.as_str()),
                counter!(names::ATTACHMENTS_REMOVED_BYTES_TOTAL, "reason" => reason.as_str()),
            )
        })
        .collect();
        Self {
            files: gauge!(names::ATTACHMENTS_FILES),
            bytes: gauge!(names::ATTACHMENTS_BYTES),
            removed,
            failures: counter!(names::ATTACHMENTS_GC_FAILURES_TOTAL),
        }
    }
}

/// A garbage collection pass of the attachment store finished.
#[derive(Debug)]
pub(crate) struct AttachmentsCollected<'a> {
    pub report: &'a GcReport,
    pub unreferenced_before: Option<SystemTime>,
}

impl InternalEvent for AttachmentsCollected<'_> {
    type Handles = GcMetrics;

    fn emit(self, metrics: &GcMetrics) {
        let report = self.report;
        metrics.files.set(report.files as f64);
        metrics.bytes.set(report.bytes as f64);
        for (reason, files, bytes) in &metrics.removed {
            if let Some(removed) = report.removed.get(reason) {
                files.increment(removed.files);
                bytes.increment(removed.bytes);
            }
        }
        let cutoff_unix_secs = self
            .unreferenced_before
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        let removed = |reason| report.removed.get(&reason).copied().unwrap_or_default();
        let (unreferenced, over_limit, temporary) = (
            removed(Reason::Unreferenced),
            removed(Reason::MaxBytes),
            removed(Reason::StaleTemporary),
        );
        if over_limit.files > 0 || report.over_max_bytes {
            warn!(
                removed_files = over_limit.files,
                removed_bytes = over_limit.bytes,
                files = report.files,
                bytes = report.bytes,
                still_over = report.over_max_bytes,
                "attachment store over attachments.max_bytes: the least recently stored files were removed, and records still retained may name them"
            );
        }
        if unreferenced.files + temporary.files > 0 || report.deferred > 0 {
            debug!(
                removed_files = unreferenced.files,
                removed_bytes = unreferenced.bytes,
                removed_temporaries = temporary.files,
                deferred = report.deferred,
                cutoff_unix_secs,
                files = report.files,
                bytes = report.bytes,
                "attachment store garbage collected"
            );
        }
        if report.failed > 0 {
            metrics.failures.increment(1);
            warn!(
                failed = report.failed,
                error = report.first_error.as_deref().unwrap_or_default(),
                "attachment files could not be removed, retrying at the next pass"
            );
        }
    }
}

/// A garbage collection pass could not run (the store or the log could
/// not be read); the next one retries.
#[derive(Debug)]
pub(crate) struct AttachmentGcFailed<'a> {
    pub error: &'a dyn std::error::Error,
}

impl InternalEvent for AttachmentGcFailed<'_> {
    type Handles = GcMetrics;

    fn emit(self, metrics: &GcMetrics) {
        metrics.failures.increment(1);
        warn!(error = %self.error, "attachment garbage collection failed, retrying at the next pass");
    }
}

/// Refreshes the files a record about to be appended names (see
/// `FsAttachmentStore::touch`), off the async threads; the returned task
/// is done when they are. `None` when the record names none.
pub(crate) fn touch_named(
    store: &FsAttachmentStore,
    digests: Vec<String>,
) -> Option<JoinHandle<()>> {
    if digests.is_empty() {
        return None;
    }
    let store = store.clone();
    let touch = move || {
        for digest in &digests {
            match store.touch(digest) {
                Ok(true) => {}
                Ok(false) => debug!(
                    sha256 = %digest,
                    "a record names an attachment that is not in the store"
                ),
                Err(error) => warn!(
                    sha256 = %digest,
                    error = %error,
                    "attachment not refreshed for its new record: garbage collection may remove it early"
                ),
            }
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => Some(runtime.spawn_blocking(touch)),
        Err(_) => {
            touch();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_the_oldest_retained_record_less_the_margin() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ms = |secs_ago: u64| Some((1_800_000_000 - secs_ago) as i64 * 1000);
        let day = 86_400;
        assert_eq!(
            oldest_retained_cutoff(&[ms(7 * day), ms(3 * day), ms(9 * day)], now),
            Some(now - Duration::from_secs(9 * day) - MARGIN)
        );
        // An empty topic names nothing stored before now.
        assert_eq!(
            oldest_retained_cutoff(&[None, ms(2 * day)], now),
            Some(now - Duration::from_secs(2 * day) - MARGIN)
        );
        assert_eq!(
            oldest_retained_cutoff(&[None, None, None], now),
            Some(now - MARGIN)
        );
        // A record dated in the future does not move the cutoff past now.
        assert_eq!(
            oldest_retained_cutoff(&[Some(i64::MAX / 2)], now),
            Some(now - MARGIN)
        );
    }

    fn aged(path: &std::path::Path, by: Duration) {
        std::fs::File::open(path)
            .unwrap()
            .set_modified(SystemTime::now() - by)
            .unwrap();
    }

    fn record(topic: &str, timestamp: SystemTime) -> omni_log::Record {
        omni_log::Record {
            topic: topic.to_owned(),
            key: bytes::Bytes::from_static(b"k"),
            headers: Vec::new(),
            payload: bytes::Bytes::from_static(b"p"),
            timestamp_ms: timestamp.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64,
        }
    }

    /// The embedded log, its retention and the store together: the file of
    /// a record retention removed goes, the file of a retained record
    /// stays, and so does an old file a new record names again.
    #[tokio::test]
    async fn files_of_records_retention_removed_go_and_those_of_retained_ones_stay() {
        use omni_connector::{AttachmentStore, EventSink, LogEntry};
        use omni_proto::v1::{Attachment, Content, ConversationEvent};

        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(
            &dir.path().join("events.sqlite3"),
            omni_log::SqliteLogConfig::default(),
        )
        .unwrap();
        let topics = Topics::new("omni.");
        let store = FsAttachmentStore::new(dir.path().join("attachments"));
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let file = |n: u8| bytes::Bytes::from(vec![n; 100]);
        let (gone, kept, named_again) = (
            store.put(file(1)).await.unwrap(),
            store.put(file(2)).await.unwrap(),
            store.put(file(3)).await.unwrap(),
        );
        // Ten days ago a message named `gone` and `named_again`; two days
        // ago another named `kept`. (Records written with those times, the
        // files aged to match.)
        log.append(record(&topics.inbound, now - 10 * day))
            .await
            .unwrap();
        log.append(record(&topics.inbound, now - 2 * day))
            .await
            .unwrap();
        let path = |sha256: &str| store.root().join(&sha256[..2]).join(sha256);
        aged(&path(&gone.sha256), 10 * day);
        aged(&path(&named_again.sha256), 10 * day);
        aged(&path(&kept.sha256), 2 * day);
        // A reply names `named_again` now, through the daemon's sink.
        let sink = crate::sink::LogSink::new(
            Arc::new(log.clone()),
            topics.clone(),
            crate::settings::Encoding::Protobuf,
        )
        .with_attachments(store.clone());
        let reply = ConversationEvent {
            event_id: "reply-1".to_owned(),
            channel_id: "api".to_owned(),
            content: Some(Content {
                attachments: vec![Attachment {
                    uri: named_again.uri.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        sink.submit(LogEntry::Outbound(Box::new(reply)))
            .await
            .unwrap();

        // Retention of a week removes the ten-day-old record.
        let policy = omni_log::RetentionPolicy {
            default: omni_log::RetentionLimits {
                max_age: Some(7 * day),
                max_bytes: None,
            },
            ..omni_log::RetentionPolicy::default()
        };
        let report = log.enforce_retention(&policy).await.unwrap();
        let removed: u64 = report.topics.iter().map(|t| t.removed_records).sum();
        assert_eq!(removed, 1);

        let cutoff = Cutoff::OldestRetained {
            log: log.clone(),
            topics: vec![
                topics.inbound.clone(),
                topics.timeline.clone(),
                topics.outbound.clone(),
            ],
        };
        let unreferenced_before = cutoff.unreferenced_before(SystemTime::now()).await.unwrap();
        let expected = now - 2 * day - MARGIN;
        let found = unreferenced_before.unwrap();
        assert!(
            found <= expected + Duration::from_secs(1)
                && found + Duration::from_secs(1) >= expected,
            "{found:?} vs {expected:?}"
        );
        let rule = GcRule {
            now: SystemTime::now(),
            unreferenced_before,
            max_bytes: None,
            min_age: MARGIN,
            max_removals: MAX_REMOVALS_PER_PASS,
        };
        let report = store.collect_garbage(&rule).unwrap();
        assert_eq!(store.get(&gone.sha256).await.unwrap(), None);
        assert!(store.get(&kept.sha256).await.unwrap().is_some());
        assert!(store.get(&named_again.sha256).await.unwrap().is_some());
        assert_eq!(report.removed[&Reason::Unreferenced].files, 1);
        assert_eq!((report.files, report.bytes), (2, 200));
        log.close().await.unwrap();
    }

    #[tokio::test]
    async fn with_kafka_the_age_limit_stands_in() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let week = Duration::from_secs(7 * 86_400);
        assert_eq!(
            Cutoff::MaxAge(Some(week))
                .unreferenced_before(now)
                .await
                .unwrap(),
            Some(now - week - MARGIN)
        );
        assert_eq!(
            Cutoff::MaxAge(None).unreferenced_before(now).await.unwrap(),
            None
        );
    }
}
