//! The daemon's own configuration: `omnid.toml`, overridden by `OMNID__*`
//! environment variables (`OMNID__HTTP__LISTEN` sets `http.listen`).
//! Relative paths are resolved against the working directory, as with most
//! daemons; deployments should use absolute ones.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use omni_telemetry::LogFormat;
use serde::{Deserialize, Deserializer, de::IntoDeserializer as _};

pub use crate::sink::Encoding;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the embedded event log, the pull channels' checkpoints
    /// (`channel-state.sqlite3`) and, by default, attachments live. Keep it
    /// on a persistent volume: losing it re-ingests IMAP mailboxes.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub attachments: AttachmentSettings,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub channels: ChannelSettings,
    #[serde(default)]
    pub rules: RulesSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub threading: ThreadingSettings,
    #[serde(default)]
    pub media: MediaSettings,
    #[serde(default)]
    pub state: StateSettings,
    /// Upper bound (seconds) on draining in-flight requests and queued
    /// events at shutdown.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
}

/// The channels' durable state, `<data_dir>/channel-state.sqlite3`:
/// checkpoints, buffered parts, and the ids each channel has seen, by
/// which a provider's retry or a redelivery is recognised and dropped.
/// Seen ids older than the window are removed every hour (and at start),
/// in small batches between the channels' own writes, so the file stops
/// growing; the space they held is reused rather than returned.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSettings {
    /// How many days a seen id is kept, from when it was first seen; 0
    /// keeps them forever. Duplicates come from providers' retries, which
    /// stop within days: Meta's webhooks (WhatsApp, Messenger, Instagram)
    /// are retried for up to 7 days, Vonage's for 24 hours, Twilio's,
    /// WeChat's and Telegram's within minutes to a day; 14 days covers the
    /// longest twice. Beyond the window a repeat is appended again, with
    /// the same event id, so consumers that deduplicate by it drop it: an
    /// IMAP mailbox whose UIDVALIDITY changes is walked again, and its
    /// messages older than the window are fetched and appended once more;
    /// an outbound reply redelivered more than the window after it was
    /// sent (a dispatcher held back that long by a channel that kept
    /// failing) is sent again.
    #[serde(default = "default_seen_window_days")]
    pub seen_window_days: u64,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            seen_window_days: default_seen_window_days(),
        }
    }
}

const fn default_seen_window_days() -> u64 {
    14
}

/// Deferred media: the files a message names are downloaded after the
/// message is durable (webhooks are answered without waiting for them),
/// from a queue in `<data_dir>/media-queue.sqlite3`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSettings {
    /// Downloads in progress at a time, over all channels (0 counts as 1).
    #[serde(default = "default_media_concurrency")]
    pub concurrency: usize,
    /// A download that keeps failing temporarily (timeouts, 5xx) is retried
    /// with backoff (5 s doubling to 1 h) until its job is this many
    /// seconds old, then given up; the message keeps the provider's
    /// reference. A download the provider refuses (404) is given up at
    /// once.
    #[serde(default = "default_media_max_age_secs")]
    pub max_age_secs: u64,
    /// Most downloads the queue holds; 0 sets no limit. Beyond it a
    /// message's files are not queued (the jobs already queued stay): the
    /// message keeps the provider's references, and each such file is
    /// counted in `omnid_media_given_up_total{reason="queue_full"}` and
    /// logged as a warning. A job takes a few hundred bytes.
    #[serde(default = "default_media_max_queued_jobs")]
    pub max_queued_jobs: u64,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            concurrency: default_media_concurrency(),
            max_age_secs: default_media_max_age_secs(),
            max_queued_jobs: default_media_max_queued_jobs(),
        }
    }
}

const fn default_media_concurrency() -> usize {
    4
}

const fn default_media_max_age_secs() -> u64 {
    3 * 24 * 3600
}

const fn default_media_max_queued_jobs() -> u64 {
    100_000
}

/// The attachment store, and how long its files are kept. A file is
/// removed once no retained record can name it: storing the same content
/// again, or appending a record that names it, refreshes the file's
/// modification time, and a file last refreshed more than an hour before
/// the oldest record still retained on the inbound, timeline and outbound
/// topics goes (the hour covers the time between storing a file and
/// appending its record). So on the embedded log files follow
/// `[log.retention]`; with Kafka, whose retention the daemon cannot read,
/// `max_age_days` stands in. Consumers that keep conversations longer
/// than the topics must copy the files they need.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentSettings {
    /// Directory of the content-addressed attachment store; default
    /// `<data_dir>/attachments`. Consumers resolve `omni-att://sha256/<hex>`
    /// to `<dir>/<first two hex digits>/<hex>`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// With `log.backend = "kafka"` only: a file not stored or named by a
    /// record this daemon appended for this many days is removed; 0 keeps
    /// files forever. Seven days matches Kafka's default `retention.ms`
    /// and the embedded log's default; set it to the retention of the
    /// inbound, timeline and outbound topics. The embedded log ignores it
    /// (its own retention decides).
    #[serde(default = "default_attachments_max_age_days")]
    pub max_age_days: u64,
    /// The store's files are kept under this many bytes, the least
    /// recently stored or named removed first, even while a retained
    /// record still names them (each such removal is logged as a
    /// warning); files stored within the last hour are never removed. A
    /// safety net for a flood of large files on a small disk, like
    /// `log.retention.max_bytes`; 0 sets no limit.
    #[serde(default = "default_attachments_max_bytes")]
    pub max_bytes: u64,
    /// How often (seconds, at least 1) the store is checked. Each pass
    /// reads the metadata of every file, off the request path, and removes
    /// at most 100,000 files (the next pass continues); it also refreshes
    /// the store's size metrics.
    #[serde(default = "default_attachments_check_interval_secs")]
    pub check_interval_secs: u64,
}

impl Default for AttachmentSettings {
    fn default() -> Self {
        Self {
            dir: None,
            max_age_days: default_attachments_max_age_days(),
            max_bytes: default_attachments_max_bytes(),
            check_interval_secs: default_attachments_check_interval_secs(),
        }
    }
}

const fn default_attachments_max_age_days() -> u64 {
    7
}

const fn default_attachments_max_bytes() -> u64 {
    10 * 1024 * 1024 * 1024
}

const fn default_attachments_check_interval_secs() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of the HTTP server (webhooks, query API, health, metrics).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest request body accepted (bytes); larger bodies get 413 before
    /// any channel code sees them.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// A request taking longer than this (seconds) is answered 408. The
    /// event may still become durable; the sender's retry is deduplicated by
    /// its event id.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// A connection must send a complete request head within this many
    /// seconds of opening, or of its previous response (an idle keep-alive
    /// connection), or it is closed: slow or silent clients cannot hold
    /// connections.
    #[serde(default = "default_header_read_timeout_secs")]
    pub header_read_timeout_secs: u64,
    /// A webhook body must arrive within this many seconds of the handler
    /// starting to read it, or the request is answered 408 and the
    /// connection closed.
    #[serde(default = "default_body_read_timeout_secs")]
    pub body_read_timeout_secs: u64,
    /// Open connections at most; a connection beyond it is answered 503
    /// and closed at once rather than queued.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Webhook body bytes buffered before their signature is checked, over
    /// all requests: the worst case of that memory. A body that does not
    /// fit is answered 503 with Retry-After, unread.
    #[serde(default = "default_max_inflight_body_bytes")]
    pub max_inflight_body_bytes: usize,
    /// The same, per client IP address, so one client cannot take the
    /// whole budget; a body that does not fit is answered 429, unread.
    /// Behind a reverse proxy every client has the proxy's address.
    #[serde(default = "default_max_inflight_body_bytes_per_peer")]
    pub max_inflight_body_bytes_per_peer: usize,
    /// The URL providers reach this daemon at (scheme, host, optional path
    /// prefix), e.g. `https://omnid.example.com`. Needed by channels whose
    /// signatures cover the URL, since a proxy may rewrite the host.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// Bearer token of the daemon's own API (`POST /v1/outbound`):
    /// `{ env = "NAME" }` or `{ file = "PATH" }`, read at start. Unset, the
    /// API answers 404.
    #[serde(default)]
    pub api_token: Option<omni_connector::SecretRef>,
}

/// Where events are stored. A closed set, so a misspelt backend is a
/// config error rather than the embedded log by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogBackend {
    /// The embedded SQLite log in the data directory.
    #[default]
    Sqlite,
    /// A Kafka cluster (`log.kafka`), with the local spool in front.
    Kafka,
}

/// Which threading store a deployment uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadingStoreKind {
    /// Embedded, a file in the data directory.
    #[default]
    Sqlite,
    /// Shared by every worker (`threading.postgres_url`).
    Postgres,
}

/// `telemetry.log_format` read straight into the telemetry crate's type.
#[derive(Deserialize)]
#[serde(remote = "LogFormat", rename_all = "snake_case")]
enum LogFormatSetting {
    Auto,
    Pretty,
    Json,
}

/// Reads a closed-set setting from its text by serde's own enum rules, so
/// an unknown value is an error that lists the accepted ones (the config
/// crate's enum error names none).
fn closed_set<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let text = String::deserialize(deserializer)?;
    T::deserialize(text.as_str().into_deserializer())
        .map_err(|e: serde::de::value::Error| serde::de::Error::custom(e))
}

fn log_format<'de, D: Deserializer<'de>>(deserializer: D) -> Result<LogFormat, D::Error> {
    let text = String::deserialize(deserializer)?;
    LogFormatSetting::deserialize(text.as_str().into_deserializer())
        .map_err(|e: serde::de::value::Error| serde::de::Error::custom(e))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `sqlite` (the embedded default) or `kafka`.
    #[serde(default, deserialize_with = "closed_set")]
    pub backend: LogBackend,
    /// Prefix of every topic name (`omni.` gives `omni.inbound.v1`).
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Payload encoding: `protobuf` (default) or `json` (the protobuf JSON
    /// mapping), announced by each record's `content-type` header.
    #[serde(default, deserialize_with = "closed_set")]
    pub encoding: Encoding,
    #[serde(default)]
    pub sqlite: SqliteSettings,
    #[serde(default)]
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub spool: SpoolSettings,
    #[serde(default)]
    pub retention: RetentionSettings,
}

/// How long, and how much, the embedded log (`backend = "sqlite"`) keeps of
/// each topic, as Kafka's `retention.ms` and `retention.bytes` do: the
/// oldest records beyond either limit are removed, offsets of the rest
/// never change. The daemon's own consumers (threading, helpdesk commands,
/// the outbound dispatcher) are never overtaken: a record they have not
/// committed stays, whatever its age. Freed space is reused by new
/// records; the file stops growing rather than shrinking. With Kafka the
/// broker's topic settings apply instead.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Records older than this many seconds are removed; 0 keeps them
    /// regardless of age. A week covers a business closed over a long
    /// weekend and a consumer outage noticed late; the helpdesk keeps the
    /// conversations themselves.
    #[serde(default = "default_retention_max_age_secs")]
    pub max_age_secs: u64,
    /// Each topic's records (keys, headers, payloads) are kept under this
    /// many bytes, the oldest removed first; 0 sets no size limit. A safety
    /// net for bursts and floods on a small disk: SQLite's pages and index
    /// add a quarter to a half on top, so with five topics the file stays
    /// under about 7.5 times this, plus a write-ahead log of up to 64 MiB.
    #[serde(default = "default_retention_max_bytes")]
    pub max_bytes: u64,
    /// The age limit of the dead-letter topic instead of `max_age_secs`
    /// (0: no age limit): dead letters are rare and someone has to look at
    /// them, which may take longer than a week.
    #[serde(default = "default_retention_deadletter_max_age_secs")]
    pub deadletter_max_age_secs: u64,
    /// How often (seconds, at least 1) a retention pass runs; each pass
    /// also refreshes the topic-size metrics.
    #[serde(default = "default_retention_check_interval_secs")]
    pub check_interval_secs: u64,
    /// Limits of single topics, overriding the ones above: one table per
    /// topic, named by its short name (`inbound`, `timeline`, `outbound`,
    /// `deadletter`, `commands`) or full name, with `max_age_secs` and
    /// `max_bytes` (0: no limit; a key left out keeps the value above).
    /// For example `[log.retention.topics.inbound]` with
    /// `max_age_secs = 2592000` keeps inbound messages a month.
    #[serde(default)]
    pub topics: std::collections::BTreeMap<String, TopicRetentionSettings>,
}

/// One topic's retention limits (`log.retention.topics.<topic>`).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRetentionSettings {
    /// Records older than this many seconds are removed; 0: no age limit.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    /// The topic's records are kept under this many bytes; 0: no size limit.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

impl RetentionSettings {
    /// The policy of the embedded log's retention pass: limits per topic
    /// and the consumer groups each topic must wait for.
    pub fn policy(
        &self,
        topics: &Topics,
        protected: &[(String, &str)],
    ) -> omni_log::RetentionPolicy {
        use std::time::Duration;
        let limit = |value: u64| (value > 0).then_some(value);
        let default = omni_log::RetentionLimits {
            max_age: limit(self.max_age_secs).map(Duration::from_secs),
            max_bytes: limit(self.max_bytes),
        };
        let mut per_topic = std::collections::BTreeMap::new();
        per_topic.insert(
            topics.deadletter.clone(),
            omni_log::RetentionLimits {
                max_age: limit(self.deadletter_max_age_secs).map(Duration::from_secs),
                ..default
            },
        );
        for (name, overrides) in &self.topics {
            let topic = topics.resolve(name);
            let base = per_topic.get(&topic).copied().unwrap_or(default);
            per_topic.insert(
                topic,
                omni_log::RetentionLimits {
                    max_age: overrides
                        .max_age_secs
                        .map_or(base.max_age, |secs| limit(secs).map(Duration::from_secs)),
                    max_bytes: overrides.max_bytes.map_or(base.max_bytes, limit),
                },
            );
        }
        let mut protected_groups: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        for (topic, group) in protected {
            protected_groups
                .entry(topic.clone())
                .or_default()
                .push((*group).to_owned());
        }
        omni_log::RetentionPolicy {
            default,
            topics: per_topic,
            protected_groups,
            ..omni_log::RetentionPolicy::default()
        }
    }
}

/// The durable local spool in front of Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSettings {
    /// Spool while Kafka is unreachable or slow (only with `backend =
    /// "kafka"`). Off: webhooks get 503 until the broker answers again.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Spool file; default `<data_dir>/spool.sqlite3`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Records the spool may hold before webhooks get 503.
    #[serde(default = "default_spool_max_records")]
    pub max_records: u64,
    /// Milliseconds Kafka may take to acknowledge before records are
    /// spooled instead (and acknowledged from the spool).
    #[serde(default = "default_spool_after_ms")]
    pub spool_after_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// `host:port[,host:port...]` of the cluster.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Create missing topics at start; otherwise a missing topic is a
    /// startup error.
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Partitions of created topics (and the minimum accepted for existing
    /// ones).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Producer `linger.ms`: batching delay before a produce request.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u32,
    /// Producer `message.timeout.ms`: how long a record may take to be
    /// acknowledged, retries included, before its append fails.
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u32,
    /// Records held by the producer before appends fail with 503.
    #[serde(default = "default_max_in_flight_records")]
    pub max_in_flight_records: u32,
    /// Further librdkafka properties, passed through unchanged (security,
    /// compression): `"security.protocol" = "SASL_SSL"`.
    #[serde(default)]
    pub librdkafka: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSettings {
    /// Log file; default `<data_dir>/events.sqlite3`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Most appends committed in one transaction (one fsync).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Appends waiting for the writer before webhooks get 503.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    /// Directory of channel files (`*.toml`, one channel each).
    #[serde(default = "default_channels_dir")]
    pub dir: PathBuf,
    /// How often (seconds) the directory is checked for changes; 0 turns
    /// polling off (SIGHUP still reloads).
    #[serde(default = "default_reload_interval_secs")]
    pub reload_interval_secs: u64,
}

/// Customer-service rule files. They are reloaded with the channel files
/// (same polling interval, and on SIGHUP), each kind of file all or
/// nothing on its own: a broken rule file keeps the previous rules and
/// does not hold back a channel edit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSettings {
    /// Directory of rule files (`*.toml`, one rule set each). A directory
    /// that does not exist holds no rules: automation is off.
    #[serde(default = "default_rules_dir")]
    pub dir: PathBuf,
}

impl Default for RulesSettings {
    fn default() -> Self {
        Self {
            dir: default_rules_dir(),
        }
    }
}

fn default_rules_dir() -> PathBuf {
    PathBuf::from("config/rules")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `auto` (pretty on a terminal, JSON otherwise), `pretty` or `json`.
    #[serde(default, deserialize_with = "log_format")]
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,omni_api=debug`; `RUST_LOG`
    /// overrides it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// OpenTelemetry traces, exported over OTLP; off by default.
    #[serde(default)]
    pub otlp: OtlpSettings,
}

/// OpenTelemetry traces over OTLP/HTTP (protobuf): a span per webhook
/// request and per `POST /v1/outbound`, per append to the event log, per
/// threading batch and threaded event, per timeline relay round and per
/// outbound delivery (with its outcome), joined into
/// one trace across the stream by each record's `traceparent` header
/// (docs/operations.md, "Tracing"). Off, no span is made and no
/// `traceparent` written. `OTEL_EXPORTER_OTLP_HEADERS` adds request
/// headers (a collector's API key), `OTEL_BSP_*` tune the export batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSettings {
    /// Export traces.
    #[serde(default)]
    pub enabled: bool,
    /// The OTLP/HTTP receiver (an OpenTelemetry Collector, or a tracing
    /// backend that takes OTLP): a base URL gets `/v1/traces` appended, a
    /// URL with a path is used as it is.
    #[serde(default = "default_otlp_endpoint")]
    pub endpoint: String,
    /// The OTLP transport; `http/protobuf` is the one supported.
    #[serde(default, deserialize_with = "closed_set")]
    pub protocol: OtlpProtocol,
    /// `service.name` of the spans.
    #[serde(default = "default_otlp_service_name")]
    pub service_name: String,
    /// The share of new traces exported, from 0.0 to 1.0. A trace that
    /// crosses the stream keeps the decision made where it began, so a
    /// trace is exported whole or not at all.
    #[serde(default = "default_otlp_sampling_ratio")]
    pub sampling_ratio: f64,
    /// How long (seconds) one export request may take.
    #[serde(default = "default_otlp_timeout_secs")]
    pub timeout_secs: u64,
}

/// `telemetry.otlp.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP/1.1 (`POST <endpoint>/v1/traces`).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpSettings {
    /// The exporter's settings, when tracing is on.
    pub fn exporter(&self) -> Option<omni_telemetry::OtlpConfig> {
        self.enabled.then(|| omni_telemetry::OtlpConfig {
            endpoint: self.endpoint.clone(),
            service_name: self.service_name.clone(),
            service_version: env!("CARGO_PKG_VERSION").to_owned(),
            sampling_ratio: self.sampling_ratio,
            timeout: std::time::Duration::from_secs(self.timeout_secs),
        })
    }
}

/// The threading service: the worker that consumes the inbound topic, its
/// state store, and the relay that publishes the timeline topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadingSettings {
    /// Run the threading worker and the timeline relay in this process.
    /// Off, the query API and `omnid timeline` still read the store.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The state store: `sqlite` (embedded, a file in the data directory)
    /// or `postgres` (production, shared by every worker).
    #[serde(default, deserialize_with = "closed_set")]
    pub store: ThreadingStoreKind,
    /// SQLite store file; default `<data_dir>/threading.sqlite3`.
    #[serde(default)]
    pub sqlite_path: Option<PathBuf>,
    /// With `store = "postgres"`: the connection URL
    /// (`postgres://user:password@host/db`), as `{ env = "NAME" }` or
    /// `{ file = "PATH" }` since it may hold a password. A schema other
    /// than `public` is chosen with `?options=-c%20search_path%3Dname`.
    #[serde(default)]
    pub postgres_url: Option<omni_connector::SecretRef>,
    /// Connections of the PostgreSQL pool.
    #[serde(default = "default_threading_max_connections")]
    pub max_connections: u32,
    /// Days the embedded store keeps threaded event ids, so a provider's
    /// retry or a replay within them is dropped (Meta retries for up to 7
    /// days). Older ids are pruned; at least 1.
    #[serde(default = "default_dedupe_window_days")]
    pub dedupe_window_days: u64,
    /// MiB of customer state (counted as its JSON on disk, before
    /// compression) the embedded store keeps in memory after each snapshot; the least recently active customers
    /// beyond it are read back from disk when they write again. The rows in
    /// memory, with their indexes, take several times this. Customers
    /// changed since the last snapshot and those with running SLA timers
    /// always stay.
    #[serde(default = "default_threading_cache_mib")]
    pub cache_mib: u64,
    /// Days timeline rows stay in the store after the time they record;
    /// 0 keeps them forever. Once a minute older rows are removed, oldest
    /// first and only once published to the timeline topic. The query API
    /// and `omnid timeline` then reach back this far only, and so does a
    /// consumer rebuilding its copy of the timeline from them; the
    /// timeline topic keeps records by its own retention. Rows written
    /// before this setting existed count from the upgrade.
    #[serde(default = "default_timeline_retention_days")]
    pub timeline_retention_days: u64,
    /// How far apart (seconds) two emails with the same normalized subject
    /// and no Message-ID link may be and still share a conversation.
    #[serde(default = "default_subject_window_secs")]
    pub subject_window_secs: u64,
    /// How long (seconds) a chat-like conversation may be idle before the
    /// next message opens a new one.
    #[serde(default = "default_idle_timeout_secs")]
    pub default_idle_timeout_secs: u64,
    /// Per channel id idle timeouts (seconds), overriding the default:
    /// `idle_timeout_secs = { "shop-sms" = 172800 }`.
    #[serde(default)]
    pub idle_timeout_secs: std::collections::BTreeMap<String, u64>,
    /// Channel ids whose unverified sender identities are trusted as
    /// proven (a form behind the business's own login). Trusting a claim
    /// lets whoever typed it read that customer's history.
    #[serde(default)]
    pub trusted_claim_channels: Vec<String>,
}

impl ThreadingSettings {
    /// The pure threading configuration.
    pub fn config(&self) -> omni_threading::ThreadingConfig {
        use std::time::Duration;
        omni_threading::ThreadingConfig {
            subject_window: Duration::from_secs(self.subject_window_secs),
            default_idle_timeout: Duration::from_secs(self.default_idle_timeout_secs),
            idle_timeouts: self
                .idle_timeout_secs
                .iter()
                .map(|(channel, secs)| (channel.clone(), Duration::from_secs(*secs)))
                .collect(),
            trusted_claim_channels: self.trusted_claim_channels.iter().cloned().collect(),
            // The daemon's rule files, set per batch by the worker.
            rules: Default::default(),
        }
    }
}

const fn default_dedupe_window_days() -> u64 {
    14
}
// omni_threading::DEFAULT_CACHE_BYTES, in MiB (the configuration
// reference shows this body).
const fn default_threading_cache_mib() -> u64 {
    16
}
const fn default_timeline_retention_days() -> u64 {
    365
}
const fn default_threading_max_connections() -> u32 {
    8
}
const fn default_subject_window_secs() -> u64 {
    7 * 24 * 3600
}
const fn default_idle_timeout_secs() -> u64 {
    24 * 3600
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
const fn default_max_body_bytes() -> usize {
    1024 * 1024
}
const fn default_request_timeout_secs() -> u64 {
    30
}
const fn default_header_read_timeout_secs() -> u64 {
    10
}
const fn default_body_read_timeout_secs() -> u64 {
    15
}
const fn default_max_connections() -> u32 {
    1024
}
const fn default_max_inflight_body_bytes() -> usize {
    64 * 1024 * 1024
}
const fn default_max_inflight_body_bytes_per_peer() -> usize {
    8 * 1024 * 1024
}
const fn default_shutdown_timeout_secs() -> u64 {
    30
}
fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_client_id() -> String {
    "omnid".into()
}
const fn default_true() -> bool {
    true
}
const fn default_partitions() -> i32 {
    6
}
const fn default_replication_factor() -> i32 {
    1
}
const fn default_spool_max_records() -> u64 {
    1_000_000
}
const fn default_spool_after_ms() -> u64 {
    2_000
}
const fn default_linger_ms() -> u32 {
    5
}
const fn default_delivery_timeout_ms() -> u32 {
    120_000
}
const fn default_max_in_flight_records() -> u32 {
    100_000
}
fn default_topic_prefix() -> String {
    "omni.".into()
}
const fn default_max_batch() -> usize {
    1024
}
const fn default_retention_max_age_secs() -> u64 {
    7 * 24 * 3600
}
const fn default_retention_max_bytes() -> u64 {
    1024 * 1024 * 1024
}
const fn default_retention_deadletter_max_age_secs() -> u64 {
    30 * 24 * 3600
}
const fn default_retention_check_interval_secs() -> u64 {
    60
}
const fn default_queue_capacity() -> usize {
    65_536
}
fn default_channels_dir() -> PathBuf {
    PathBuf::from("config/channels")
}
const fn default_reload_interval_secs() -> u64 {
    2
}
fn default_log_level() -> String {
    "info".into()
}
fn default_otlp_endpoint() -> String {
    "http://127.0.0.1:4318".into()
}
fn default_otlp_service_name() -> String {
    "omnid".into()
}
const fn default_otlp_sampling_ratio() -> f64 {
    1.0
}
const fn default_otlp_timeout_secs() -> u64 {
    10
}

macro_rules! default_from_serde {
    ($($ty:ty),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                // Every field has a serde default, so an empty table is valid.
                match toml::from_str("") {
                    Ok(value) => value,
                    Err(error) => unreachable!("defaults of {} must deserialize: {error}", stringify!($ty)),
                }
            }
        }
    )*};
}
default_from_serde!(
    HttpSettings,
    LogSettings,
    SqliteSettings,
    KafkaSettings,
    SpoolSettings,
    RetentionSettings,
    ChannelSettings,
    TelemetrySettings,
    OtlpSettings,
    ThreadingSettings
);

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SettingsError {
    pub path: String,
    pub reason: String,
}

impl Settings {
    /// Loads `path` (optional when absent: all defaults) and `OMNID__*`
    /// environment overrides.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let error = |reason: String| SettingsError {
            path: path.display().to_string(),
            reason,
        };
        let loaded = config::Config::builder()
            .add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(false),
            )
            .add_source(
                config::Environment::with_prefix("OMNID")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .map_err(|e| error(e.to_string()))?;
        let settings: Settings = loaded.try_deserialize().map_err(|e| error(e.to_string()))?;
        settings.validate().map_err(error)?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        if self.log.kafka.partitions < 1 || self.log.kafka.replication_factor < 1 {
            return Err("log.kafka: partitions and replication_factor must be at least 1".into());
        }
        if self.http.max_body_bytes == 0 {
            return Err("http.max_body_bytes: must be at least 1".into());
        }
        if self.http.header_read_timeout_secs == 0 || self.http.body_read_timeout_secs == 0 {
            return Err(
                "http: header_read_timeout_secs and body_read_timeout_secs must be at least 1"
                    .into(),
            );
        }
        if self.http.max_connections == 0 {
            return Err("http.max_connections: must be at least 1".into());
        }
        // Otherwise a body of the largest allowed size could never be read.
        if self.http.max_inflight_body_bytes_per_peer < self.http.max_body_bytes
            || self.http.max_inflight_body_bytes < self.http.max_inflight_body_bytes_per_peer
        {
            return Err(
                "http: need max_body_bytes <= max_inflight_body_bytes_per_peer <= max_inflight_body_bytes"
                    .into(),
            );
        }
        if self.log.sqlite.max_batch == 0 || self.log.sqlite.queue_capacity == 0 {
            return Err("log.sqlite: max_batch and queue_capacity must be at least 1".into());
        }
        if self.log.retention.check_interval_secs == 0 {
            return Err("log.retention.check_interval_secs: must be at least 1".into());
        }
        let topics = Topics::new(&self.log.topic_prefix);
        for name in self.log.retention.topics.keys() {
            let topic = topics.resolve(name);
            if !topics.all().contains(&topic.as_str()) {
                return Err(format!(
                    "log.retention.topics: `{name}` is not one of the daemon's topics (inbound, timeline, outbound, deadletter, commands, or their full names)"
                ));
            }
        }
        if self.threading.store == ThreadingStoreKind::Postgres {
            if self.threading.postgres_url.is_none() {
                return Err(
                    "threading.postgres_url: required with threading.store = \"postgres\"".into(),
                );
            }
            if self.threading.max_connections == 0 {
                return Err("threading.max_connections: must be at least 1".into());
            }
        }
        let otlp = &self.telemetry.otlp;
        if otlp.enabled {
            if !(0.0..=1.0).contains(&otlp.sampling_ratio) {
                return Err("telemetry.otlp.sampling_ratio: must be between 0.0 and 1.0".into());
            }
            if !(otlp.endpoint.starts_with("https://") || otlp.endpoint.starts_with("http://")) {
                return Err("telemetry.otlp.endpoint: must start with https:// or http://".into());
            }
            if otlp.timeout_secs == 0 {
                return Err("telemetry.otlp.timeout_secs: must be at least 1".into());
            }
        }
        if let Some(base) = &self.http.public_base_url
            && !(base.starts_with("https://") || base.starts_with("http://"))
        {
            return Err("http.public_base_url: must start with https:// or http://".into());
        }
        Ok(())
    }

    pub fn spool_path(&self) -> PathBuf {
        self.log
            .spool
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("spool.sqlite3"))
    }

    pub fn attachments_dir(&self) -> PathBuf {
        self.attachments
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("attachments"))
    }

    pub fn threading_sqlite_path(&self) -> PathBuf {
        self.threading
            .sqlite_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("threading.sqlite3"))
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.log
            .sqlite
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("events.sqlite3"))
    }
}

/// Topic names, derived once from the prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    pub inbound: String,
    pub timeline: String,
    pub outbound: String,
    pub deadletter: String,
    /// Helpdesk commands to the threading service.
    pub commands: String,
}

impl Topics {
    pub fn all(&self) -> [&str; 5] {
        [
            &self.inbound,
            &self.timeline,
            &self.outbound,
            &self.deadletter,
            &self.commands,
        ]
    }
    pub fn new(prefix: &str) -> Self {
        Self {
            inbound: format!("{prefix}inbound.v1"),
            timeline: format!("{prefix}timeline.v1"),
            outbound: format!("{prefix}outbound.v1"),
            deadletter: format!("{prefix}deadletter.v1"),
            commands: format!("{prefix}commands.v1"),
        }
    }

    /// Resolves a short name (`inbound`) or a full topic name.
    pub fn resolve(&self, name: &str) -> String {
        match name {
            "inbound" => self.inbound.clone(),
            "timeline" => self.timeline.clone(),
            "outbound" => self.outbound.clone(),
            "deadletter" => self.deadletter.clone(),
            "commands" => self.commands.clone(),
            other => other.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's default cache is the store's.
    #[test]
    fn the_threading_cache_default_is_the_stores() {
        assert_eq!(
            default_threading_cache_mib() << 20,
            omni_threading::DEFAULT_CACHE_BYTES
        );
    }

    fn load(text: &str) -> (tempfile::TempDir, Result<Settings, SettingsError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("omnid.toml");
        std::fs::write(&path, text).unwrap();
        let loaded = Settings::load(&path);
        (dir, loaded)
    }

    #[test]
    fn closed_sets_default_and_parse() {
        let (_dir, defaults) = load("");
        let defaults = defaults.unwrap();
        assert_eq!(defaults.log.backend, LogBackend::Sqlite);
        assert_eq!(defaults.log.encoding, Encoding::Protobuf);
        assert_eq!(defaults.threading.store, ThreadingStoreKind::Sqlite);
        assert_eq!(defaults.telemetry.log_format, LogFormat::Auto);

        let (_dir, chosen) = load(
            "[log]\nbackend = \"kafka\"\nencoding = \"json\"\n\
             [threading]\nstore = \"postgres\"\npostgres_url = { env = \"PG_URL\" }\n\
             [telemetry]\nlog_format = \"pretty\"\n",
        );
        let chosen = chosen.unwrap();
        assert_eq!(chosen.log.backend, LogBackend::Kafka);
        assert_eq!(chosen.log.encoding, Encoding::Json);
        assert_eq!(chosen.threading.store, ThreadingStoreKind::Postgres);
        assert_eq!(chosen.telemetry.log_format, LogFormat::Pretty);
    }

    #[test]
    fn an_unknown_value_names_the_file_the_key_and_the_accepted_values() {
        let cases = [
            (
                "[log]\nbackend = \"kafak\"",
                "log.backend",
                "kafak",
                &["sqlite", "kafka"][..],
            ),
            (
                "[log]\nencoding = \"avro\"",
                "log.encoding",
                "avro",
                &["protobuf", "json"],
            ),
            (
                "[threading]\nstore = \"mysql\"",
                "threading.store",
                "mysql",
                &["sqlite", "postgres"],
            ),
            (
                "[telemetry]\nlog_format = \"xml\"",
                "telemetry.log_format",
                "xml",
                &["auto", "pretty", "json"],
            ),
        ];
        for (text, key, value, accepted) in cases {
            let (dir, loaded) = load(text);
            let message = loaded.unwrap_err().to_string();
            assert!(
                message.starts_with(&dir.path().join("omnid.toml").display().to_string()),
                "{message}"
            );
            assert!(message.contains(&format!("`{key}`")), "{message}");
            assert!(message.contains(&format!("`{value}`")), "{message}");
            for accepted in accepted {
                assert!(message.contains(&format!("`{accepted}`")), "{message}");
            }
        }
    }

    #[test]
    fn otlp_is_off_by_default_and_checked_when_on() {
        let (_dir, defaults) = load("");
        let otlp = defaults.unwrap().telemetry.otlp;
        assert!(!otlp.enabled);
        assert_eq!(otlp.exporter(), None);

        let (_dir, on) = load(
            "[telemetry.otlp]\nenabled = true\nendpoint = \"http://collector:4318\"\n\
             protocol = \"http/protobuf\"\nservice_name = \"omnid-eu\"\nsampling_ratio = 0.25\n",
        );
        let exporter = on.unwrap().telemetry.otlp.exporter().unwrap();
        assert_eq!(exporter.traces_url(), "http://collector:4318/v1/traces");
        assert_eq!(exporter.service_name, "omnid-eu");
        assert_eq!(exporter.sampling_ratio, 0.25);
        assert_eq!(exporter.timeout, std::time::Duration::from_secs(10));

        for (text, key) in [
            ("sampling_ratio = 1.5", "telemetry.otlp.sampling_ratio"),
            ("endpoint = \"collector:4318\"", "telemetry.otlp.endpoint"),
            ("timeout_secs = 0", "telemetry.otlp.timeout_secs"),
        ] {
            let (_dir, loaded) = load(&format!("[telemetry.otlp]\nenabled = true\n{text}\n"));
            let message = loaded.unwrap_err().to_string();
            assert!(message.contains(key), "{message}");
        }
        let (_dir, loaded) = load("[telemetry.otlp]\nprotocol = \"grpc\"\n");
        let message = loaded.unwrap_err().to_string();
        assert!(message.contains("`http/protobuf`"), "{message}");
    }

    #[test]
    fn retention_defaults_keep_a_week_and_a_gibibyte_and_dead_letters_a_month() {
        use std::time::Duration;
        let (_dir, loaded) = load("");
        let settings = loaded.unwrap();
        let topics = Topics::new(&settings.log.topic_prefix);
        let policy = settings
            .log
            .retention
            .policy(&topics, &[(topics.inbound.clone(), "omnid-threading")]);
        let week = omni_log::RetentionLimits {
            max_age: Some(Duration::from_secs(7 * 86_400)),
            max_bytes: Some(1 << 30),
        };
        assert_eq!(policy.limits("omni.inbound.v1"), week);
        assert_eq!(policy.limits("omni.timeline.v1"), week);
        assert_eq!(
            policy.limits("omni.deadletter.v1"),
            omni_log::RetentionLimits {
                max_age: Some(Duration::from_secs(30 * 86_400)),
                ..week
            }
        );
        assert_eq!(
            policy.protected_groups.get("omni.inbound.v1"),
            Some(&vec!["omnid-threading".to_owned()])
        );
        assert_eq!(settings.log.retention.check_interval_secs, 60);
    }

    #[test]
    fn retention_overrides_by_short_or_full_name_and_zero_is_unlimited() {
        use std::time::Duration;
        let (_dir, loaded) = load(
            "[log]\ntopic_prefix = \"acme.\"\n\
             [log.retention]\nmax_age_secs = 3600\nmax_bytes = 0\ndeadletter_max_age_secs = 0\n\
             [log.retention.topics.inbound]\nmax_bytes = 4096\n\
             [log.retention.topics.\"acme.timeline.v1\"]\nmax_age_secs = 0\n\
             [log.retention.topics.deadletter]\nmax_bytes = 10\n",
        );
        let settings = loaded.unwrap();
        let topics = Topics::new(&settings.log.topic_prefix);
        let policy = settings.log.retention.policy(&topics, &[]);
        let hour = Some(Duration::from_secs(3600));
        let limits = |max_age, max_bytes| omni_log::RetentionLimits { max_age, max_bytes };
        assert_eq!(policy.limits("acme.inbound.v1"), limits(hour, Some(4096)));
        assert_eq!(policy.limits("acme.timeline.v1"), limits(None, None));
        assert!(policy.limits("acme.timeline.v1").is_unlimited());
        assert_eq!(policy.limits("acme.outbound.v1"), limits(hour, None));
        // The dead-letter age stays its own, the override adds a size.
        assert_eq!(policy.limits("acme.deadletter.v1"), limits(None, Some(10)));
    }

    #[test]
    fn retention_refuses_unknown_topics_and_a_zero_interval() {
        let (_dir, loaded) = load("[log.retention.topics.inbund]\nmax_bytes = 1\n");
        let message = loaded.unwrap_err().to_string();
        assert!(
            message.contains("log.retention.topics") && message.contains("inbund"),
            "{message}"
        );
        let (_dir, loaded) = load("[log.retention]\ncheck_interval_secs = 0\n");
        let message = loaded.unwrap_err().to_string();
        assert!(
            message.contains("log.retention.check_interval_secs"),
            "{message}"
        );
        let (_dir, loaded) = load("[log.retention.topics.inbound]\nmax_size = 1\n");
        assert!(loaded.unwrap_err().to_string().contains("max_size"));
    }

    #[test]
    fn seen_ids_are_kept_two_weeks_unless_told_otherwise() {
        let (_dir, defaults) = load("");
        assert_eq!(defaults.unwrap().state.seen_window_days, 14);
        let (_dir, forever) = load("[state]\nseen_window_days = 0");
        assert_eq!(forever.unwrap().state.seen_window_days, 0);
        let (_dir, typo) = load("[state]\nseen_window = 3");
        assert!(typo.unwrap_err().to_string().contains("seen_window"));
    }

    #[test]
    fn postgres_needs_its_url() {
        let (_dir, loaded) = load("[threading]\nstore = \"postgres\"");
        let message = loaded.unwrap_err().to_string();
        assert!(message.contains("threading.postgres_url"), "{message}");
    }
}
