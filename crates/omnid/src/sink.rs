//! The bridge from connectors to the event log: encodes each entry as a
//! record (topic, key, CloudEvents headers, protobuf payload) and hands the
//! log's durable acknowledgement back as the connector's [`Ack`].

use std::{sync::Arc, time::SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use omni_connector::{Ack, EventSink, LogEntry, Receipt, SendError, handle::partition_key};
use omni_log::{EventLog, LogError, Record};
use omni_model::cloudevents::{self, CloudEvent};
use omni_proto::{
    Message,
    v1::{ConversationEvent, Direction, TimelineEvent},
};
use omni_telemetry::emit;
use tracing::Instrument as _;

use crate::events::{LogAppended, LogMetrics};
use crate::settings::Topics;
use crate::traces;

/// How payloads are written (`log.encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Binary protobuf (`application/protobuf`): compact, the default.
    #[default]
    Protobuf,
    /// The protobuf JSON mapping (`application/json`), for consumers
    /// without protobuf tooling.
    Json,
}

impl Encoding {
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
pub(crate) struct LogSink {
    log: Arc<dyn EventLog>,
    topics: Topics,
    encoding: Encoding,
    inbound_metrics: LogMetrics,
    outbound_metrics: LogMetrics,
    deadletter_metrics: LogMetrics,
    timeline_metrics: LogMetrics,
    /// Refreshed for every record naming its files, so garbage collection
    /// keeps them as long as the record may be retained.
    attachments: Option<omni_connector::FsAttachmentStore>,
}

impl LogSink {
    pub(crate) fn new(log: Arc<dyn EventLog>, topics: Topics, encoding: Encoding) -> Self {
        Self {
            encoding,
            inbound_metrics: LogMetrics::register(&topics.inbound),
            outbound_metrics: LogMetrics::register(&topics.outbound),
            deadletter_metrics: LogMetrics::register(&topics.deadletter),
            timeline_metrics: LogMetrics::register(&topics.timeline),
            log,
            topics,
            attachments: None,
        }
    }

    /// Refreshes the files of `store` each record names as it is appended
    /// (see `crate::attachment_gc`).
    pub(crate) fn with_attachments(mut self, store: omni_connector::FsAttachmentStore) -> Self {
        self.attachments = Some(store);
        self
    }

    /// Starts refreshing the files `digests` name, if this sink refreshes
    /// any: before the record is handed to the log, so the refresh never
    /// comes later than the record.
    fn touch(&self, digests: impl FnOnce() -> Vec<String>) -> Option<tokio::task::JoinHandle<()>> {
        self.attachments
            .as_ref()
            .and_then(|store| crate::attachment_gc::touch_named(store, digests()))
    }

    /// Appends an outbound message (a reply for a channel to send) to the
    /// outbound topic, with the same headers and key rule as inbound
    /// events; resolves once it is durable.
    pub(crate) fn submit_outbound(&self, event: ConversationEvent) -> Ack {
        self.submit(LogEntry::Outbound(Box::new(event)))
    }

    /// Appends a timeline entry to the timeline topic, keyed by its
    /// customer id (so one customer's entries keep their order), with
    /// `ce_id` the entry's id; resolves once it is durable.
    /// `parent` is the trace context of the event that wrote the entry, when
    /// it is known (see [`crate::traces`]).
    pub(crate) fn submit_timeline(
        &self,
        entry: &TimelineEvent,
        parent: Option<&omni_telemetry::trace::TraceContext>,
    ) -> Ack {
        let now = SystemTime::now();
        let ce = CloudEvent {
            id: entry.timeline_event_id.clone(),
            source: TIMELINE_SOURCE.to_owned(),
            ty: cloudevents::TYPE_TIMELINE_EVENT.to_owned(),
            time: now,
            content_type: self.encoding.content_type().to_owned(),
            traceparent: None,
        };
        let record = record(
            &self.topics.timeline,
            entry.customer_id.clone(),
            ce,
            self.encoding.encode(entry),
            now,
        );
        let touch = self.touch(|| omni_connector::attachments::timeline_digests(entry));
        waiting_for(
            self.append_in(record, self.timeline_metrics.clone(), parent),
            touch,
        )
    }

    fn event_record(&self, topic: &str, event: &ConversationEvent) -> Record {
        let now = SystemTime::now();
        let ce = CloudEvent {
            id: event.event_id.clone(),
            source: cloudevents::source_for_channel(&event.channel_id),
            ty: cloudevents::TYPE_CONVERSATION_EVENT.to_owned(),
            time: now,
            content_type: self.encoding.content_type().to_owned(),
            traceparent: None,
        };
        record(
            topic,
            event_key(event),
            ce,
            self.encoding.encode(event),
            now,
        )
    }

    fn record(&self, entry: LogEntry) -> (Record, LogMetrics) {
        let now = SystemTime::now();
        match entry {
            LogEntry::Event(event) => (
                self.event_record(&self.topics.inbound, &event),
                self.inbound_metrics.clone(),
            ),
            LogEntry::Outbound(event) => (
                self.event_record(&self.topics.outbound, &event),
                self.outbound_metrics.clone(),
            ),
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
                    ce,
                    self.encoding.encode(dead_letter.as_ref()),
                    now,
                );
                (record, self.deadletter_metrics.clone())
            }
        }
    }
}

/// `ce_source` of timeline entries: the threading service, not a channel.
pub(crate) const TIMELINE_SOURCE: &str = "/omnid/threading";

/// The partition key of a conversation event: the customer's handle, so
/// one customer's records keep their order. That is the sender of an
/// inbound message, and the first recipient of an outbound one (a reply,
/// or the delivery status of a reply).
fn event_key(event: &ConversationEvent) -> String {
    let customer = if event.direction == Direction::Outbound as i32 {
        event.recipients.first()
    } else {
        event.sender.as_ref()
    };
    customer.map(partition_key).unwrap_or_default()
}

fn record(topic: &str, key: String, ce: CloudEvent, payload: Vec<u8>, now: SystemTime) -> Record {
    let timestamp_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Record {
        topic: topic.to_owned(),
        key: Bytes::from(key),
        headers: headers(ce),
        payload: Bytes::from(payload),
        timestamp_ms,
    }
}

/// The record headers of `ce`: what [`CloudEvent::to_headers`] writes (same
/// names, order and values), with the event's strings moved into the
/// header values instead of copied. Every record gets these.
fn headers(ce: CloudEvent) -> Vec<(String, Bytes)> {
    let CloudEvent {
        id,
        source,
        ty,
        time,
        content_type,
        traceparent,
    } = ce;
    let mut headers = Vec::with_capacity(6 + usize::from(traceparent.is_some()));
    headers.push((
        cloudevents::HEADER_SPEC_VERSION.to_owned(),
        Bytes::from_static(cloudevents::SPEC_VERSION.as_bytes()),
    ));
    headers.push((cloudevents::HEADER_ID.to_owned(), Bytes::from(id)));
    headers.push((cloudevents::HEADER_SOURCE.to_owned(), Bytes::from(source)));
    headers.push((cloudevents::HEADER_TYPE.to_owned(), Bytes::from(ty)));
    headers.push((
        cloudevents::HEADER_TIME.to_owned(),
        Bytes::from(cloudevents::format_rfc3339(time)),
    ));
    headers.push((
        cloudevents::HEADER_CONTENT_TYPE.to_owned(),
        Bytes::from(content_type),
    ));
    if let Some(traceparent) = traceparent {
        headers.push((
            cloudevents::HEADER_TRACEPARENT.to_owned(),
            Bytes::from(traceparent),
        ));
    }
    headers
}

impl EventSink for LogSink {
    fn submit(&self, entry: LogEntry) -> Ack {
        let digests = || match &entry {
            LogEntry::Event(event) | LogEntry::Outbound(event) => {
                omni_connector::attachments::referenced_digests(event)
            }
            LogEntry::DeadLetter(_) => Vec::new(),
        };
        let touch = self.touch(digests);
        let (record, metrics) = self.record(entry);
        waiting_for(self.append(record, metrics), touch)
    }
}

/// `ack`, resolving once `touch` (the refresh of the files the record
/// names) is done too.
fn waiting_for(ack: Ack, touch: Option<tokio::task::JoinHandle<()>>) -> Ack {
    match touch {
        None => ack,
        Some(touch) => async move {
            let result = ack.await;
            let _ = touch.await;
            result
        }
        .boxed(),
    }
}

impl LogSink {
    fn append(&self, record: Record, metrics: LogMetrics) -> Ack {
        self.append_in(record, metrics, None)
    }

    fn append_in(
        &self,
        record: Record,
        metrics: LogMetrics,
        parent: Option<&omni_telemetry::trace::TraceContext>,
    ) -> Ack {
        let (span, record) = traces::append(record, parent);
        let traced = span.clone();
        let topic = record.topic.clone();
        // `append` enqueues now, so submission order is log order.
        self.log
            .append(record)
            .map(move |result| {
                traces::appended(&traced, result.as_ref().map(|p| (p.partition, p.offset)));
                emit!(LogAppended {
                    topic: &topic,
                    error: result.as_ref().err().map(|e| e as &dyn std::error::Error),
                } => &metrics);
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
            .instrument(span)
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn headers_are_what_to_headers_writes() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for traceparent in [None, Some(traceparent.to_owned())] {
            let ce = CloudEvent {
                id: "e-1".to_owned(),
                source: cloudevents::source_for_channel("shop api"),
                ty: cloudevents::TYPE_CONVERSATION_EVENT.to_owned(),
                time: UNIX_EPOCH + Duration::new(1_763_884_800, 123_456_000),
                content_type: cloudevents::CONTENT_TYPE_PROTOBUF.to_owned(),
                traceparent,
            };
            let expected: Vec<(String, Bytes)> = ce
                .to_headers()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), Bytes::from(value)))
                .collect();
            assert_eq!(headers(ce), expected);
        }
    }
}
