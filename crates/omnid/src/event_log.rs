//! Opening the configured event log, for the daemon and for readers such
//! as `omnid tail`.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use omni_log::{
    EventLog, KafkaLog, KafkaLogConfig, SpoolConfig, SpooledLog, SqliteLog, SqliteLogConfig,
    TopicSpec,
};

use crate::settings::{LogBackend, Settings, Topics};

/// Who opens the log: the daemon writes (topics checked, spool started);
/// a reader such as `omnid tail` only reads, and must never drain the
/// daemon's spool behind its back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogUse {
    Daemon,
    Reader,
}

/// The opened event log, and the embedded one's own handle for what only
/// it does (retention).
#[derive(Debug)]
pub(crate) struct OpenedLog {
    pub(crate) log: Arc<dyn EventLog>,
    /// With `backend = "sqlite"`.
    pub(crate) embedded: Option<SqliteLog>,
}

/// Opens the configured event log (see [`open`]).
pub(crate) async fn open_log(
    settings: &Settings,
    usage: LogUse,
) -> anyhow::Result<Arc<dyn EventLog>> {
    Ok(open(settings, usage).await?.log)
}

/// Opens the configured event log. For Kafka, the daemon checks (and
/// creates, when allowed) the topics first, so a wrong cluster or missing
/// topic is a startup error rather than a stream of failed webhooks.
pub(crate) async fn open(settings: &Settings, usage: LogUse) -> anyhow::Result<OpenedLog> {
    let opened = |log: Arc<dyn EventLog>| OpenedLog {
        log,
        embedded: None,
    };
    match settings.log.backend {
        LogBackend::Kafka => {
            let kafka = &settings.log.kafka;
            let log = KafkaLog::new(KafkaLogConfig {
                brokers: kafka.brokers.clone(),
                client_id: kafka.client_id.clone(),
                linger_ms: kafka.linger_ms,
                delivery_timeout_ms: kafka.delivery_timeout_ms,
                max_in_flight_records: kafka.max_in_flight_records,
                librdkafka: kafka.librdkafka.clone(),
                ..KafkaLogConfig::default()
            })?;
            if usage == LogUse::Reader {
                return Ok(opened(Arc::new(log)));
            }
            let topics: Vec<TopicSpec> = Topics::new(&settings.log.topic_prefix)
                .all()
                .iter()
                .map(|name| TopicSpec {
                    name: (*name).to_owned(),
                    partitions: kafka.partitions,
                    replication_factor: kafka.replication_factor,
                    config: Default::default(),
                })
                .collect();
            log.ensure_topics(&topics, kafka.create_topics)
                .await
                .with_context(|| format!("kafka cluster {} is not ready", kafka.brokers))?;
            let spool = &settings.log.spool;
            if !spool.enabled {
                return Ok(opened(Arc::new(log)));
            }
            let path = settings.spool_path();
            let file = SqliteLog::open(&path, SqliteLogConfig::default())
                .with_context(|| format!("cannot open spool {}", path.display()))?;
            let config = SpoolConfig {
                max_records: spool.max_records,
                spool_after: Duration::from_millis(spool.spool_after_ms),
            };
            let spooled = SpooledLog::new(Arc::new(log), file, config).await?;
            Ok(opened(Arc::new(spooled)))
        }
        LogBackend::Sqlite => {
            let path = settings.sqlite_path();
            let config = SqliteLogConfig {
                max_batch: settings.log.sqlite.max_batch,
                queue_capacity: settings.log.sqlite.queue_capacity,
            };
            let log = SqliteLog::open(&path, config)
                .with_context(|| format!("cannot open event log {}", path.display()))?;
            Ok(OpenedLog {
                log: Arc::new(log.clone()),
                embedded: Some(log),
            })
        }
    }
}
