//! The spans the daemon exports over OTLP (`telemetry.otlp`), and how one
//! trace follows a message through the stream.
//!
//! - `webhook`: one per webhook request, the root of a new trace. A
//!   `traceparent` the caller sent is linked, not followed: a provider is
//!   not part of the daemon's trace and must not decide what is sampled.
//! - `api.request`: one per reply posted to the helpdesk API (`POST
//!   /v1/outbound`), a root like the webhook's and for the same reason
//!   (the caller's `traceparent` is linked), so a reply's trace starts
//!   where it enters the daemon.
//! - `log.append`: one per record appended, from hand-over to durable; a
//!   child of the span it is appended in (the webhook, an API request, a
//!   delivery, a relay round). Its context is the record's `traceparent`
//!   header, so the trace crosses the stream with the record.
//! - `threading.batch`: one per store transaction, a root with a link to
//!   every record it covers; and `threading.event` for each record that
//!   carries a `traceparent`, that record's child, linked to the batch.
//!   Batches follow OpenTelemetry's messaging guidance: a batch of many
//!   traces cannot be the child of one, so it links to all of them, and
//!   each message keeps its own trace through its `threading.event`.
//! - `timeline.relay`: one per relay round (a batch of timeline entries),
//!   a root; each entry's `log.append` is the child of the
//!   `threading.event` that wrote it (handed over in this process by
//!   [`Handoff`]), linked to the round, and its context becomes the
//!   timeline record's `traceparent`. An entry that no event of this
//!   process wrote (a helpdesk command, a row another process threaded)
//!   is a plain child of the round.
//! - `outbound.delivery`: one per outbound record delivered, the child of
//!   the record's `traceparent`; the delivery status it appends is its
//!   child. It ends with `omnid.outcome` (`delivered`, `failed`,
//!   `dead_lettered`, `duplicate`, or `retried` when the daemon stopped
//!   between attempts) and `omnid.delivery.retries`; a failure's reason
//!   is its `error` and its error status, so a trace shows why a reply
//!   did not go out without reading logs.
//!
//! With `telemetry.otlp` off no layer takes these spans: each costs one
//! cached check, fields are not evaluated, no header is written.

use std::collections::HashMap;

use http::{HeaderMap, Method, StatusCode};
use omni_log::{Record, StoredRecord};
use omni_model::cloudevents;
use omni_telemetry::trace::{self, Handoff, TARGET, TraceContext};
use omni_threading::Outcome;
use tracing::{Span, field::Empty};

/// Contexts of threaded events waiting for the relay, per daemon; bounded
/// so that rows another process publishes cannot grow it.
pub(crate) type EventTraces = Handoff<String>;

/// How many events' contexts wait for the relay at most.
pub(crate) const EVENT_TRACES: usize = 16_384;

/// A header's value as text, if present and UTF-8.
fn header<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

fn traceparent(record: &Record) -> Option<TraceContext> {
    header(record, cloudevents::HEADER_TRACEPARENT).and_then(TraceContext::parse)
}

/// The span of a webhook request (see the module docs).
pub(crate) fn webhook(method: &Method, channel_id: &str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "webhook",
        otel.kind = "server",
        http.request.method = %method,
        http.route = "/webhooks/{channel_id}",
        omnid.channel = %channel_id,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    link_caller(&span, headers);
    span
}

/// The span of a request to the helpdesk API on `route` (see the module
/// docs).
pub(crate) fn api_request(method: &Method, route: &'static str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "api.request",
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    link_caller(&span, headers);
    span
}

/// Links a request's root span to the caller's `traceparent`, if it sent
/// one.
fn link_caller(span: &Span, headers: &HeaderMap) {
    if !span.is_disabled()
        && let Some(upstream) = headers
            .get(cloudevents::HEADER_TRACEPARENT)
            .and_then(|value| value.to_str().ok())
            .and_then(TraceContext::parse)
    {
        trace::add_link(span, &upstream);
    }
}

/// Records the answer on a request's span; a 5xx marks it failed.
pub(crate) fn answered(span: &Span, status: StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span of one append, in the current span or under `parent` (see the
/// module docs), and the record with its `traceparent` header.
pub(crate) fn append(mut record: Record, parent: Option<&TraceContext>) -> (Span, Record) {
    let span = tracing::info_span!(
        target: TARGET,
        "log.append",
        otel.kind = "producer",
        messaging.destination.name = %record.topic,
        messaging.message.id = header(&record, cloudevents::HEADER_ID).unwrap_or_default(),
        messaging.destination.partition.id = Empty,
        messaging.kafka.offset = Empty,
        otel.status_code = Empty,
        error = Empty,
    );
    if span.is_disabled() {
        return (span, record);
    }
    if let Some(parent) = parent {
        let round = TraceContext::of(&Span::current());
        trace::set_parent(&span, parent);
        if let Some(round) = round {
            trace::add_link(&span, &round);
        }
    }
    if let Some(context) = TraceContext::of(&span) {
        record.headers.push((
            cloudevents::HEADER_TRACEPARENT.to_owned(),
            context.traceparent().into(),
        ));
    }
    (span, record)
}

/// Records where an append landed, or why it failed.
pub(crate) fn appended<E: std::fmt::Display>(span: &Span, result: Result<(i32, i64), &E>) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok((partition, offset)) => {
            span.record("messaging.destination.partition.id", partition);
            span.record("messaging.kafka.offset", offset);
        }
        Err(error) => {
            span.record("otel.status_code", "ERROR");
            span.record("error", tracing::field::display(error));
        }
    }
}

/// The spans of one threading batch (see the module docs). Dropping it
/// ends them.
pub(crate) struct ThreadingBatch<'a> {
    pub(crate) span: Span,
    events: HashMap<String, Span>,
    handoff: &'a EventTraces,
}

impl<'a> ThreadingBatch<'a> {
    /// Opens the batch span and the span of each traced event, and hands
    /// each event's context over to the relay before the store commits (so
    /// the relay can never publish an entry before its context is there).
    pub(crate) fn start(
        topic: &str,
        records: &[StoredRecord],
        handoff: &'a EventTraces,
    ) -> ThreadingBatch<'a> {
        let span = tracing::info_span!(
            target: TARGET,
            parent: None,
            "threading.batch",
            otel.kind = "consumer",
            messaging.destination.name = %topic,
            messaging.batch.message_count = records.len(),
        );
        let mut batch = ThreadingBatch {
            events: HashMap::new(),
            handoff,
            span,
        };
        let Some(batch_context) = TraceContext::of(&batch.span) else {
            return batch;
        };
        for stored in records {
            let Some(parent) = traceparent(&stored.record) else {
                continue;
            };
            trace::add_link(&batch.span, &parent);
            let event_id = header(&stored.record, cloudevents::HEADER_ID).unwrap_or_default();
            let event = tracing::info_span!(
                target: TARGET,
                parent: None,
                "threading.event",
                otel.kind = "consumer",
                messaging.destination.name = %topic,
                messaging.message.id = %event_id,
                omnid.outcome = Empty,
                omnid.customer_id = Empty,
            );
            trace::set_parent(&event, &parent);
            trace::add_link(&event, &batch_context);
            if let Some(context) = TraceContext::of(&event) {
                handoff.put(event_id.to_owned(), context);
            }
            batch.events.insert(event_id.to_owned(), event);
        }
        batch
    }

    /// Ends an event's span with what threading did; an event that wrote
    /// no timeline row leaves nothing for the relay.
    pub(crate) fn threaded<E>(&mut self, event_id: &str, outcome: &Result<Outcome, E>) {
        if self.events.is_empty() {
            return;
        }
        let Some(span) = self.events.remove(event_id) else {
            return;
        };
        match outcome {
            Ok(Outcome::Threaded { customer_id, .. }) => {
                span.record("omnid.outcome", "threaded");
                span.record("omnid.customer_id", customer_id.as_str());
            }
            Ok(Outcome::Duplicate) => {
                span.record("omnid.outcome", "duplicate");
                self.handoff.take(event_id);
            }
            Err(_) => {
                span.record("omnid.outcome", "refused");
                self.handoff.take(event_id);
            }
        }
    }
}

impl Drop for ThreadingBatch<'_> {
    fn drop(&mut self) {
        // Events the batch never got to (a record dead-lettered before
        // threading, a batch cut short by shutdown): nothing to publish.
        for event_id in self.events.keys() {
            self.handoff.take(event_id.as_str());
        }
    }
}

/// The span of a relay round publishing `entries` to `topic`.
pub(crate) fn relay_round(topic: &str, entries: usize) -> Span {
    tracing::info_span!(
        target: TARGET,
        parent: None,
        "timeline.relay",
        otel.kind = "producer",
        messaging.destination.name = %topic,
        messaging.batch.message_count = entries,
    )
}

/// The context the threading worker left for a timeline entry, when the
/// round is traced.
pub(crate) fn handed_over(
    round: &Span,
    handoff: &EventTraces,
    timeline_event_id: &str,
) -> Option<TraceContext> {
    if round.is_disabled() {
        return None;
    }
    handoff.take(timeline_event_id)
}

/// How the delivery of an outbound record ended, for its span.
#[derive(Debug)]
pub(crate) enum DeliveryEnd<'a> {
    /// The channel sent it.
    Delivered,
    /// Sent before (its seen mark was there): not sent again.
    Duplicate,
    /// The provider refused it for good, saying why; a failed delivery
    /// status follows.
    Failed(&'a str),
    /// It could not be routed or decoded (reason and detail); it went to
    /// the dead-letter topic.
    DeadLettered(&'a str, &'a str),
}

/// The span of delivering one outbound record and what it records (see
/// the module docs): temporary failures as they come, the outcome once.
/// Dropped before an outcome (the daemon stopped between two attempts),
/// it ends as `retried` with the last failure: the record is delivered
/// again after the restart, in a span of its own.
#[derive(Debug)]
pub(crate) struct Delivery {
    span: Span,
    retries: u32,
    /// The last temporary failure, kept only when the span is exported.
    last_error: Option<String>,
    ended: bool,
}

impl Delivery {
    /// Opens the span, the child of the record's `traceparent`.
    pub(crate) fn start(stored: &StoredRecord, channel_id: Option<&str>) -> Self {
        let span = tracing::info_span!(
            target: TARGET,
            parent: None,
            "outbound.delivery",
            otel.kind = "client",
            messaging.destination.name = %stored.record.topic,
            messaging.message.id = header(&stored.record, cloudevents::HEADER_ID).unwrap_or_default(),
            omnid.channel = channel_id.unwrap_or_default(),
            omnid.outcome = Empty,
            omnid.delivery.retries = Empty,
            error = Empty,
            otel.status_description = Empty,
        );
        if !span.is_disabled()
            && let Some(parent) = traceparent(&stored.record)
        {
            trace::set_parent(&span, &parent);
        }
        Self {
            span,
            retries: 0,
            last_error: None,
            ended: false,
        }
    }

    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// An attempt failed for now and will be retried.
    pub(crate) fn retrying(&mut self, reason: &str) {
        self.retries += 1;
        if !self.span.is_disabled() {
            self.last_error = Some(reason.to_owned());
        }
    }

    /// Records the outcome, once. The retry count and error are recorded
    /// here too rather than as they change: the exporter keeps every value
    /// a field is given, so a field recorded twice would be exported twice.
    pub(crate) fn ended(&mut self, end: DeliveryEnd<'_>) {
        if std::mem::replace(&mut self.ended, true) || self.span.is_disabled() {
            return;
        }
        let (outcome, error) = match end {
            DeliveryEnd::Delivered => ("delivered", None),
            DeliveryEnd::Duplicate => ("duplicate", None),
            DeliveryEnd::Failed(reason) => ("failed", Some(reason.to_owned())),
            DeliveryEnd::DeadLettered(reason, detail) => {
                ("dead_lettered", Some(format!("{reason}: {detail}")))
            }
        };
        self.record(outcome, error);
    }

    fn record(&self, outcome: &'static str, error: Option<String>) {
        self.span.record("omnid.outcome", outcome);
        self.span
            .record("omnid.delivery.retries", i64::from(self.retries));
        if let Some(error) = error {
            self.span.record("error", error.as_str());
            // An error status with its description.
            self.span.record("otel.status_description", error.as_str());
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.ended && !self.span.is_disabled() {
            let error = self.last_error.take();
            self.record("retried", error);
        }
    }
}
