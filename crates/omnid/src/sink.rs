//! The bridge from connectors to the event log: encodes each entry as a
//! record (topic, key, CloudEvents headers, protobuf payload) and hands the
//! log's durable acknowledgement back as the connector's [`Ack`].

use std::{sync::Arc, time::SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use omni_connector::{Ack, EventSink, LogEntry, Receipt, SendError, handle::partition_key};
use omni_log::{EventLog, LogError, Record};
use omni_model::cloudevents::{self, CloudEvent};
use omni_proto::Message;
use omni_telemetry::events::{LogAppended, LogMetrics};

use crate::settings::Topics;

/// How payloads are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Binary protobuf (`application/protobuf`): compact, the default.
    Protobuf,
    /// The protobuf JSON mapping (`application/json`), for consumers
    /// without protobuf tooling.
    Json,
}

impl Encoding {
    /// From the validated `log.encoding` setting.
    pub fn from_setting(value: &str) -> Self {
        if value == "json" {
            Self::Json
        } else {
            Self::Protobuf
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => cloudevents::CONTENT_TYPE_PROTOBUF,
            Self::Json => cloudevents::CONTENT_TYPE_JSON,
        }
    }

    fn encode<M: Message + serde::Serialize>(self, message: &M) -> Vec<u8> {
        match self {
            Self::Protobuf => message.encode_to_vec(),
            // Generated types always serialize (string map keys, no
            // non-finite floats); an empty body would still be stored and
            // visible, never dropped.
            Self::Json => serde_json::to_vec(message).unwrap_or_default(),
        }
    }
}

#[derive(Debug)]
pub struct LogSink {
    log: Arc<dyn EventLog>,
    topics: Topics,
    encoding: Encoding,
    inbound_metrics: LogMetrics,
    deadletter_metrics: LogMetrics,
}

impl LogSink {
    pub fn new(log: Arc<dyn EventLog>, topics: Topics, encoding: Encoding) -> Self {
        Self {
            encoding,
            inbound_metrics: LogMetrics::register(&topics.inbound),
            deadletter_metrics: LogMetrics::register(&topics.deadletter),
            log,
            topics,
        }
    }

    fn record(&self, entry: LogEntry) -> (Record, LogMetrics) {
        let now = SystemTime::now();
        match entry {
            LogEntry::Event(event) => {
                let key = event.sender.as_ref().map(partition_key).unwrap_or_default();
                let ce = CloudEvent {
                    id: event.event_id.clone(),
                    source: cloudevents::source_for_channel(&event.channel_id),
                    ty: cloudevents::TYPE_CONVERSATION_EVENT.to_owned(),
                    time: now,
                    content_type: self.encoding.content_type().to_owned(),
                    traceparent: None,
                };
                let record = record(
                    &self.topics.inbound,
                    key,
                    &ce,
                    self.encoding.encode(event.as_ref()),
                    now,
                );
                (record, self.inbound_metrics.clone())
            }
            LogEntry::DeadLetter(dead_letter) => {
                let ce = CloudEvent {
                    id: dead_letter.dead_letter_id.clone(),
                    source: cloudevents::source_for_channel(&dead_letter.channel_id),
                    ty: cloudevents::TYPE_DEAD_LETTER.to_owned(),
                    time: now,
                    content_type: self.encoding.content_type().to_owned(),
                    traceparent: None,
                };
                let key = dead_letter.channel_id.clone();
                let record = record(
                    &self.topics.deadletter,
                    key,
                    &ce,
                    self.encoding.encode(dead_letter.as_ref()),
                    now,
                );
                (record, self.deadletter_metrics.clone())
            }
        }
    }
}

fn record(topic: &str, key: String, ce: &CloudEvent, payload: Vec<u8>, now: SystemTime) -> Record {
    let timestamp_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Record {
        topic: topic.to_owned(),
        key: Bytes::from(key),
        headers: ce
            .to_headers()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), Bytes::from(value)))
            .collect(),
        payload: Bytes::from(payload),
        timestamp_ms,
    }
}

impl EventSink for LogSink {
    fn submit(&self, entry: LogEntry) -> Ack {
        let (record, metrics) = self.record(entry);
        let topic = record.topic.clone();
        // `append` enqueues now, so submission order is log order.
        self.log
            .append(record)
            .map(move |result| {
                LogAppended {
                    topic: &topic,
                    error: result.as_ref().err().map(|e| e as &dyn std::error::Error),
                }
                .emit(&metrics);
                result
                    .map(|position| Receipt {
                        partition: position.partition,
                        offset: position.offset,
                    })
                    .map_err(|error| match error {
                        LogError::Overloaded => SendError::Overloaded,
                        LogError::Closed => SendError::Closed,
                        other => SendError::Failed(other.to_string()),
                    })
            })
            .boxed()
    }
}
