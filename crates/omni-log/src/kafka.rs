//! The production backend: any Kafka-protocol cluster, through librdkafka.
//!
//! Appends go through one idempotent producer (`enable.idempotence=true`
//! implies `acks=all` and ordered, duplicate-free retries per partition), so
//! an `Ok` means every in-sync replica has the record. `send_result`
//! enqueues inside librdkafka when `append` is called, which keeps call
//! order equal to log order per partition, as the trait promises.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
};

use crate::{
    BoxFuture, EventLog, LogError, Position, Record, StoredRecord, Subscription, validate_topic,
};

/// How to reach and use the cluster.
#[derive(Debug, Clone)]
pub struct KafkaLogConfig {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// `client.id`, visible in broker logs and metrics.
    pub client_id: String,
    /// How long the producer waits to fill a batch (`linger.ms`). A few ms
    /// of linger turns thousands of concurrent webhooks into a few produce
    /// requests; acknowledgements still wait for the broker.
    pub linger_ms: u32,
    /// Upper bound on a record's delivery, retries included
    /// (`message.timeout.ms`); after it the append fails (and the spool, if
    /// configured, has long taken over).
    pub delivery_timeout_ms: u32,
    /// Records librdkafka may hold in memory (`queue.buffering.max.messages`);
    /// beyond it appends fail fast with `Overloaded`.
    pub max_in_flight_records: u32,
    /// Timeout of metadata, watermark and admin requests.
    pub request_timeout: Duration,
    /// Any other librdkafka property, passed through unchanged: security
    /// (`security.protocol`, `sasl.*`, `ssl.*`), compression, tuning.
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for KafkaLogConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "omnid".into(),
            linger_ms: 5,
            delivery_timeout_ms: 120_000,
            max_in_flight_records: 100_000,
            request_timeout: Duration::from_secs(10),
            librdkafka: BTreeMap::new(),
        }
    }
}

impl KafkaLogConfig {
    /// Properties shared by every client (producer, consumers, admin).
    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id);
        for (key, value) in &self.librdkafka {
            config.set(key, value);
        }
        config
    }
}

/// Settings of the topics `omnid` writes, checked (and created when
/// allowed) at start.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic-level configs to create the topic with (`retention.ms`, ...).
    pub config: BTreeMap<String, String>,
}

/// How long `read` waits for more records once the partition went quiet.
const READ_IDLE: Duration = Duration::from_millis(1000);

fn kafka_error(context: impl Into<String>, error: KafkaError) -> LogError {
    LogError::storage(context, error)
}

/// The Kafka [`EventLog`].
pub struct KafkaLog {
    config: KafkaLogConfig,
    producer: FutureProducer,
    closed: Arc<AtomicBool>,
}

impl fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.config.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaLog {
    /// Creates the producer. librdkafka connects lazily; call
    /// [`KafkaLog::ensure_topics`] to fail fast on an unreachable cluster.
    pub fn new(config: KafkaLogConfig) -> Result<Self, LogError> {
        let mut producer_config = config.client_config();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.linger_ms.to_string())
            .set("message.timeout.ms", config.delivery_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                config.max_in_flight_records.to_string(),
            );
        let producer: FutureProducer = producer_config
            .create()
            .map_err(|e| kafka_error("cannot create the kafka producer", e))?;
        Ok(Self {
            config,
            producer,
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Checks that every topic exists with at least the configured
    /// partitions; creates missing ones when `create` is true. Errors name
    /// the topic and what is wrong.
    pub async fn ensure_topics(&self, topics: &[TopicSpec], create: bool) -> Result<(), LogError> {
        let timeout = self.config.request_timeout;
        let topics = topics.to_vec();
        let missing = with_client(self.config.client_config(), move |consumer| {
            let mut missing = Vec::new();
            for topic in topics {
                let metadata = consumer
                    .fetch_metadata(Some(&topic.name), timeout)
                    .map_err(|e| {
                        kafka_error(format!("cannot fetch metadata of topic {}", topic.name), e)
                    })?;
                let found = metadata.topics().iter().find(|t| t.name() == topic.name);
                match found {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                        let partitions = t.partitions().len() as i32;
                        if partitions < topic.partitions {
                            return Err(LogError::storage(
                                format!(
                                    "topic {} has {partitions} partitions, configured {}",
                                    topic.name, topic.partitions
                                ),
                                std::io::Error::other("too few partitions"),
                            ));
                        }
                    }
                    _ => missing.push(topic),
                }
            }
            Ok(missing)
        })
        .await?;
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = missing.iter().map(|t| t.name.as_str()).collect();
        if !create {
            return Err(LogError::storage(
                format!(
                    "kafka topics missing: {} (create them, or set log.kafka.create_topics = true)",
                    names.join(", ")
                ),
                std::io::Error::other("missing topics"),
            ));
        }
        let admin: AdminClient<DefaultClientContext> = self
            .config
            .client_config()
            .create()
            .map_err(|e| kafka_error("cannot create a kafka admin client", e))?;
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                let mut new = NewTopic::new(
                    &t.name,
                    t.partitions,
                    TopicReplication::Fixed(t.replication_factor),
                );
                for (key, value) in &t.config {
                    new = new.set(key, value);
                }
                new
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(self.config.request_timeout));
        let results = admin
            .create_topics(&new_topics, &options)
            .await
            .map_err(|e| kafka_error(format!("cannot create topics {}", names.join(", ")), e))?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "kafka topic created"),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::debug!(topic = %name, "kafka topic created concurrently")
                }
                Err((name, code)) => {
                    return Err(LogError::storage(
                        format!("cannot create topic {name}"),
                        std::io::Error::other(code.to_string()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.config.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        config
    }
}

/// Runs `work` with a fresh client of `config` on the blocking pool:
/// metadata, watermark and assignment reads are blocking librdkafka calls,
/// and async code never blocks.
async fn with_client<T: Send + 'static>(
    config: ClientConfig,
    work: impl FnOnce(&BaseConsumer) -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config
            .create()
            .map_err(|e| kafka_error("cannot create a kafka client", e))?;
        work(&client)
    })
    .await
    .map_err(|e| LogError::storage("kafka client task failed", e))?
}

fn owned_headers(headers: &[(String, Bytes)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |acc, (key, value)| {
            acc.insert(Header {
                key,
                value: Some(value.as_ref()),
            })
        },
    )
}

fn stored(message: &BorrowedMessage<'_>) -> StoredRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    StoredRecord {
        position: Position {
            partition: message.partition(),
            offset: message.offset(),
        },
        record: Record {
            topic: message.topic().to_owned(),
            key: Bytes::copy_from_slice(message.key().unwrap_or_default()),
            headers,
            payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            timestamp_ms: message.timestamp().to_millis().unwrap_or_default(),
        },
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    fn append(&self, record: Record) -> BoxFuture<'static, Result<Position, LogError>> {
        if self.closed.load(Ordering::Acquire) {
            return Box::pin(async { Err(LogError::Closed) });
        }
        if let Err(error) = validate_topic(&record.topic) {
            return Box::pin(async move { Err(error) });
        }
        let future_record = FutureRecord::to(&record.topic)
            .key(record.key.as_ref())
            .payload(record.payload.as_ref())
            .headers(owned_headers(&record.headers))
            .timestamp(record.timestamp_ms);
        match self.producer.send_result(future_record) {
            Ok(delivery) => {
                let topic = record.topic.clone();
                Box::pin(async move {
                    match delivery.await {
                        Ok(Ok(delivery)) => Ok(Position {
                            partition: delivery.partition,
                            offset: delivery.offset,
                        }),
                        Ok(Err((error, _))) => Err(kafka_error(
                            format!("kafka did not acknowledge a record of {topic}"),
                            error,
                        )),
                        // The producer was dropped before answering: not
                        // acknowledged, so never Ok.
                        Err(_) => Err(LogError::Closed),
                    }
                })
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Box::pin(async { Err(LogError::Overloaded) })
            }
            Err((error, _)) => {
                let error = kafka_error(format!("cannot produce to {}", record.topic), error);
                Box::pin(async move { Err(error) })
            }
        }
    }

    /// Reads by assignment (no consumer group), until `max` records or
    /// until the partition stays quiet for a moment (`READ_IDLE`). It deliberately
    /// does not stop at the high watermark: some Kafka-protocol brokers
    /// (Tansu 0.6) under-report it for multi-record batches, and a reader
    /// trusting it would silently miss records.
    async fn read(
        &self,
        topic: &str,
        partition: i32,
        from_offset: i64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        validate_topic(topic)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut config = self.config.client_config();
        config
            .set("enable.auto.commit", "false")
            .set("group.id", "omnid-reader");
        let (topic, timeout) = (topic.to_owned(), self.config.request_timeout);
        with_client(config, move |consumer| {
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&topic, partition, Offset::Offset(from_offset))
                .map_err(|e| kafka_error("invalid assignment", e))?;
            consumer
                .assign(&assignment)
                .map_err(|e| kafka_error(format!("cannot read {topic}"), e))?;
            let mut records = Vec::new();
            let deadline = std::time::Instant::now() + timeout;
            let mut last_message = std::time::Instant::now();
            while records.len() < max
                && std::time::Instant::now() < deadline
                && last_message.elapsed() < READ_IDLE
            {
                match consumer.poll(Duration::from_millis(50)) {
                    Some(Ok(message)) => {
                        records.push(stored(&message));
                        last_message = std::time::Instant::now();
                    }
                    Some(Err(error)) => {
                        return Err(kafka_error(format!("cannot read {topic}"), error));
                    }
                    None => {}
                }
            }
            Ok(records)
        })
        .await
    }

    async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, LogError> {
        validate_topic(topic)?;
        let (topic, timeout) = (topic.to_owned(), self.config.request_timeout);
        with_client(self.config.client_config(), move |consumer| match consumer
            .fetch_watermarks(&topic, partition, timeout)
        {
            Ok((_, high)) => Ok(high),
            Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition)) => Ok(0),
            Err(error) => Err(kafka_error(
                format!("cannot fetch the end offset of {topic}"),
                error,
            )),
        })
        .await
    }

    async fn partition_count(&self, topic: &str) -> Result<i32, LogError> {
        validate_topic(topic)?;
        let (topic, timeout) = (topic.to_owned(), self.config.request_timeout);
        with_client(self.config.client_config(), move |consumer| {
            let metadata = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| kafka_error(format!("cannot fetch metadata of {topic}"), e))?;
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| t.partitions().len() as i32))
        })
        .await
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, LogError> {
        for topic in topics {
            validate_topic(topic)?;
        }
        let consumer: StreamConsumer = self
            .consumer_config(group)
            .create()
            .map_err(|e| kafka_error(format!("cannot create a consumer for group {group}"), e))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| kafka_error(format!("cannot subscribe group {group}"), e))?;
        Ok(Box::new(KafkaSubscription {
            consumer: Arc::new(consumer),
            group: group.to_owned(),
        }))
    }

    async fn close(&self) -> Result<(), LogError> {
        self.closed.store(true, Ordering::Release);
        let producer = self.producer.clone();
        let timeout = Duration::from_millis(u64::from(self.config.delivery_timeout_ms));
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| LogError::storage("kafka flush task failed", e))?
            .map_err(|e| kafka_error("cannot flush the kafka producer", e))
    }
}

/// A consumer-group member: offsets are committed only by
/// [`Subscription::commit`], after the handler succeeded.
struct KafkaSubscription {
    consumer: Arc<StreamConsumer>,
    group: String,
}

impl fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<StoredRecord>, LogError> {
        let mut records = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while records.len() < max {
            // Wait up to the deadline for the first record, then only
            // briefly for more, so a trickle is returned promptly.
            let wait = if records.is_empty() {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            } else {
                Duration::from_millis(5)
            };
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Ok(Ok(message)) => records.push(stored(&message)),
                Ok(Err(error)) => {
                    return Err(kafka_error(
                        format!("consumer of group {} failed", self.group),
                        error,
                    ));
                }
                Err(_) => break,
            }
        }
        Ok(records)
    }

    async fn commit(&mut self, topic: &str, position: Position) -> Result<(), LogError> {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(
                topic,
                position.partition,
                Offset::Offset(position.offset + 1),
            )
            .map_err(|e| kafka_error("invalid commit position", e))?;
        let consumer = self.consumer.clone();
        let group = self.group.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
            .await
            .map_err(|e| LogError::storage("kafka commit task failed", e))?
            .map_err(|e| kafka_error(format!("cannot commit offsets of group {group}"), e))
    }
}
