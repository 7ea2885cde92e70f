//! OpenTelemetry traces end to end: the real daemon with
//! `telemetry.otlp` pointed at a local OTLP/HTTP receiver that this test
//! runs (protobuf `ExportTraceServiceRequest`s on `POST /v1/traces`), one
//! signed API-channel webhook, and the trace that follows its message
//! through the append, threading and the timeline relay, matched against
//! the `traceparent` headers on the stream (read with `omnid tail`); a
//! reply's trace from its `POST /v1/outbound` through its append, its
//! delivery (to a local SMS gateway, which may fail for now or for good)
//! and its status. Also what happens with tracing off, and with no trace
//! sampled.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use omni_testkit::daemon::{CHANNEL, Deployment, SECRET, message, signed};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, any_value},
    trace::v1::{Span, span::SpanKind, status::StatusCode as SpanStatus},
};
use prost::Message as _;
use serde_json::Value;

/// A traceparent the webhook's caller sends: linked, never followed.
const UPSTREAM: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Spans received, with the `service.name` of their resource.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// OTLP/HTTP's trace endpoint: records every span, answers success.
async fn export(State(received): State<Received>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut received = received.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            received.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
        }
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// An SMS gateway's send API, on the same server: accepts everything.
async fn send_sms() -> &'static str {
    r#"{"ok":true}"#
}

/// The receiver on a free loopback port (with [`send_sms`] on `/send`; on
/// `/flaky` a gateway that answers 503 once, then as `/send`; on `/refuse`
/// one that refuses every message for good): its base URL and what it
/// got.
async fn receiver() -> (String, Received) {
    let received = Received::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let flaky = move || {
        let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                (StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"busy"}"#)
            } else {
                (StatusCode::OK, r#"{"ok":true}"#)
            }
        }
    };
    let refuse = || async { (StatusCode::BAD_REQUEST, r#"{"error":"number barred"}"#) };
    let app = Router::new()
        .route("/v1/traces", post(export))
        .route("/send", post(send_sms))
        .route("/flaky", post(flaky))
        .route("/refuse", post(refuse))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn text(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(n) => Some(n.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one span named `name` whose attributes include `with`.
fn one<'a>(spans: &'a [Span], name: &str, with: &[(&str, &str)]) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(key, value)| attr(s, key).as_deref() == Some(value))
        })
        .collect();
    let names: Vec<_> = spans.iter().map(|s| &s.name).collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} span with {with:?} among {names:?}"
    );
    found[0]
}

fn links(span: &Span) -> Vec<(String, String)> {
    span.links
        .iter()
        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
        .collect()
}

fn traceparent(span: &Span) -> String {
    format!("00-{}-{}-01", hex(&span.trace_id), hex(&span.span_id))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Posts one signed message with the [`UPSTREAM`] traceparent; its event id.
async fn post_message(daemon: &omni_testkit::daemon::Daemon, id: &str) -> String {
    let response = signed(
        &client(),
        &daemon.url(&format!("/webhooks/{CHANNEL}")),
        message(id, "where is my order?"),
        SECRET,
    )
    .header("traceparent", UPSTREAM)
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["event_id"].as_str().unwrap().to_owned()
}

/// The record of `event_id` on `topic` (the timeline: its message entry),
/// once there.
fn record_of(deployment: &Deployment, topic: &str, event_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = deployment
            .tail(topic)
            .into_iter()
            .find(|r| r["headers"]["ce_id"] == event_id);
        if let Some(record) = found {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "no record of {event_id} on {topic}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the receiver got once the daemon has exited (it sends what is left
/// at shutdown), as `omnid` spans.
fn exported(received: &Received) -> Vec<Span> {
    let received = received.lock().unwrap();
    assert!(
        received.iter().all(|(service, _)| service == "omnid"),
        "every span is the daemon's"
    );
    received.iter().map(|(_, span)| span.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_webhook_is_one_trace_through_append_threading_and_the_timeline() {
    let (otlp, received) = receiver().await;
    let deployment = Deployment::with_config(&format!(
        "[telemetry.otlp]\nenabled = true\nendpoint = \"{otlp}\"\nprotocol = \"http/protobuf\"\n"
    ));
    let mut daemon = deployment.start();
    let event_id = post_message(&daemon, "trace-1").await;
    let inbound = record_of(&deployment, "inbound", &event_id);
    let timeline = record_of(&deployment, "timeline", &event_id);
    assert!(timeline["value"]["message"].is_object(), "{timeline}");
    assert!(daemon.terminate().success(), "{}", daemon.stderr());
    let spans = exported(&received);

    // The webhook request starts the trace; the caller's traceparent is a
    // link, not its parent.
    let webhook = one(&spans, "webhook", &[("omnid.channel", CHANNEL)]);
    assert_eq!(webhook.kind, SpanKind::Server as i32);
    assert!(webhook.parent_span_id.is_empty(), "a root span");
    assert_eq!(
        attr(webhook, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        links(webhook),
        [(
            "0af7651916cd43dd8448eb211c80319c".to_owned(),
            "b7ad6b7169203331".to_owned()
        )]
    );
    let trace = hex(&webhook.trace_id);

    // Its append is its child, and the record carries the append's context.
    let append = one(
        &spans,
        "log.append",
        &[
            ("messaging.destination.name", "omni.inbound.v1"),
            ("messaging.message.id", &event_id),
        ],
    );
    assert_eq!(hex(&append.trace_id), trace);
    assert_eq!(append.parent_span_id, webhook.span_id);
    assert_eq!(append.kind, SpanKind::Producer as i32);
    assert_eq!(inbound["headers"]["traceparent"], traceparent(append));
    assert!(attr(append, "messaging.kafka.offset").is_some());

    // Threading: the batch is a trace of its own that links to each record
    // it covers; the message's own threading span is the child of its
    // append, in the webhook's trace, and links to the batch.
    let threaded = one(
        &spans,
        "threading.event",
        &[("messaging.message.id", &event_id)],
    );
    assert_eq!(hex(&threaded.trace_id), trace);
    assert_eq!(threaded.parent_span_id, append.span_id);
    assert_eq!(attr(threaded, "omnid.outcome").as_deref(), Some("threaded"));
    assert!(attr(threaded, "omnid.customer_id").is_some_and(|c| !c.is_empty()));
    let batch_id = links(threaded)
        .into_iter()
        .next()
        .expect("the event links to its batch");
    let batch = spans
        .iter()
        .find(|s| s.name == "threading.batch" && (hex(&s.trace_id), hex(&s.span_id)) == batch_id)
        .expect("the linked batch span was exported");
    assert!(batch.parent_span_id.is_empty(), "a batch is a root");
    assert_ne!(hex(&batch.trace_id), trace);
    assert!(
        links(batch).contains(&(trace.clone(), hex(&append.span_id))),
        "the batch links to the append"
    );

    // The relay: the message's timeline entry is appended as the child of
    // its threading span, linked to the relay round, and the timeline
    // record carries that append's context.
    let relayed = one(
        &spans,
        "log.append",
        &[
            ("messaging.destination.name", "omni.timeline.v1"),
            ("messaging.message.id", &event_id),
        ],
    );
    assert_eq!(hex(&relayed.trace_id), trace);
    assert_eq!(relayed.parent_span_id, threaded.span_id);
    assert_eq!(timeline["headers"]["traceparent"], traceparent(relayed));
    let round_id = links(relayed)
        .into_iter()
        .next()
        .expect("the entry links to its relay round");
    let round = spans
        .iter()
        .find(|s| s.name == "timeline.relay" && (hex(&s.trace_id), hex(&s.span_id)) == round_id)
        .expect("the linked relay round was exported");
    assert!(round.parent_span_id.is_empty(), "a round is a root");

    // Each exported span ended after it started.
    assert!(
        spans
            .iter()
            .all(|s| s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0)
    );
}

/// The bearer token of the helpdesk API in the reply tests.
const TOKEN: &str = "helpdesk-token-0123456789";

/// A deployment exporting to `otlp`, with the helpdesk API on and an SMS
/// gateway channel `id` sending to `url`.
fn reply_deployment(otlp: &str, channels: &[(&str, &str)]) -> Deployment {
    let deployment = Deployment::with_config(&format!(
        "[telemetry.otlp]\nenabled = true\nendpoint = \"{otlp}\"\n"
    ));
    deployment.enable_api(TOKEN);
    let secret = deployment.path().join("sms-secret");
    std::fs::write(&secret, "sms-secret-0123456789").unwrap();
    for (id, url) in channels {
        deployment.write_channel(
            id,
            &format!(
                "id = \"{id}\"\nkind = \"sms_gateway\"\nsecret = {{ file = {:?} }}\n[outbound]\n\
                 url = \"{url}\"\nbody_template = '{{\"to\":\"{{{{to}}}}\"}}'\n",
                secret.display().to_string()
            ),
        );
    }
    deployment
}

/// Posts a reply for `channel` to `POST /v1/outbound`; its event id, and
/// the id of its delivery status.
async fn post_reply(daemon: &omni_testkit::daemon::Daemon, channel: &str) -> (String, String) {
    let reply = serde_json::json!({
        "channelId": channel,
        "providerMessageId": format!("ticket-{channel}"),
        "recipients": [{ "kind": "HANDLE_KIND_PHONE", "value": "+989121234567" }],
        "content": { "text": "Your order ships today." },
    });
    let response = client()
        .post(daemon.url("/v1/outbound"))
        .bearer_auth(TOKEN)
        .header("traceparent", UPSTREAM)
        .json(&reply)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let reply_id = body["event_id"].as_str().unwrap().to_owned();
    let status_id = omni_model::event_id(channel, &format!("delivery:{reply_id}")).to_string();
    (reply_id, status_id)
}

/// The spans of one reply: its request, the append of the reply (the
/// request's child, whose context the outbound record carries) and its
/// delivery (the append's child), all in one trace.
fn reply_spans<'a>(
    spans: &'a [Span],
    deployment: &Deployment,
    reply_id: &str,
    channel: &str,
) -> (&'a Span, &'a Span) {
    let append = one(
        spans,
        "log.append",
        &[
            ("messaging.destination.name", "omni.outbound.v1"),
            ("messaging.message.id", reply_id),
        ],
    );
    let request = spans
        .iter()
        .find(|s| s.span_id == append.parent_span_id)
        .expect("the reply's append has an exported parent");
    assert_eq!(request.name, "api.request");
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert!(request.parent_span_id.is_empty(), "a root span");
    assert_eq!(request.trace_id, append.trace_id);
    assert_eq!(
        attr(request, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(attr(request, "http.route").as_deref(), Some("/v1/outbound"));
    assert_eq!(
        attr(request, "http.response.status_code").as_deref(),
        Some("202")
    );
    // The helpdesk's traceparent is linked, as a provider's is.
    assert_eq!(
        links(request),
        [(
            "0af7651916cd43dd8448eb211c80319c".to_owned(),
            "b7ad6b7169203331".to_owned()
        )]
    );
    let outbound = record_of(deployment, "outbound", reply_id);
    assert_eq!(outbound["headers"]["traceparent"], traceparent(append));

    let delivery = one(
        spans,
        "outbound.delivery",
        &[
            ("messaging.message.id", reply_id),
            ("omnid.channel", channel),
        ],
    );
    assert_eq!(delivery.kind, SpanKind::Client as i32);
    assert_eq!(delivery.trace_id, request.trace_id);
    assert_eq!(delivery.parent_span_id, append.span_id);
    (delivery, append)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_traced_from_its_request_through_its_delivery_to_its_status() {
    let (otlp, received) = receiver().await;
    let deployment = reply_deployment(&otlp, &[("sms", &format!("{otlp}/send"))]);
    let mut daemon = deployment.start();
    let (reply_id, status_id) = post_reply(&daemon, "sms").await;
    let status = record_of(&deployment, "inbound", &status_id);
    assert_eq!(
        status["value"]["delivery"]["state"], "DELIVERY_STATE_SENT",
        "{status}"
    );
    assert!(daemon.terminate().success(), "{}", daemon.stderr());
    let spans = exported(&received);

    let (delivery, append) = reply_spans(&spans, &deployment, &reply_id, "sms");
    assert_eq!(
        attr(delivery, "omnid.outcome").as_deref(),
        Some("delivered")
    );
    assert_eq!(
        attr(delivery, "omnid.delivery.retries").as_deref(),
        Some("0")
    );
    assert!(attr(delivery, "error").is_none());
    assert_ne!(
        delivery.status.as_ref().map(|s| s.code),
        Some(SpanStatus::Error as i32)
    );
    let status_append = one(
        &spans,
        "log.append",
        &[
            ("messaging.destination.name", "omni.inbound.v1"),
            ("messaging.message.id", &status_id),
        ],
    );
    assert_eq!(status_append.trace_id, append.trace_id);
    assert_eq!(status_append.parent_span_id, delivery.span_id);
    assert_eq!(status["headers"]["traceparent"], traceparent(status_append));
    // The status goes on to be threaded in the same trace.
    let threaded = one(
        &spans,
        "threading.event",
        &[("messaging.message.id", &status_id)],
    );
    assert_eq!(threaded.parent_span_id, status_append.span_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_span_records_retries_and_failures() {
    let (otlp, received) = receiver().await;
    let deployment = reply_deployment(
        &otlp,
        &[
            ("flaky", &format!("{otlp}/flaky")),
            ("refused", &format!("{otlp}/refuse")),
        ],
    );
    let mut daemon = deployment.start();
    let (flaky_id, flaky_status) = post_reply(&daemon, "flaky").await;
    let (refused_id, refused_status) = post_reply(&daemon, "refused").await;
    let flaky_status = record_of(&deployment, "inbound", &flaky_status);
    assert_eq!(
        flaky_status["value"]["delivery"]["state"], "DELIVERY_STATE_SENT",
        "{flaky_status}"
    );
    let refused_status = record_of(&deployment, "inbound", &refused_status);
    assert_eq!(
        refused_status["value"]["delivery"]["state"], "DELIVERY_STATE_FAILED",
        "{refused_status}"
    );
    assert!(daemon.terminate().success(), "{}", daemon.stderr());
    let spans = exported(&received);

    // Sent on the second attempt: one retry, and no error.
    let (flaky, _) = reply_spans(&spans, &deployment, &flaky_id, "flaky");
    assert_eq!(attr(flaky, "omnid.outcome").as_deref(), Some("delivered"));
    assert_eq!(attr(flaky, "omnid.delivery.retries").as_deref(), Some("1"));
    assert_ne!(
        flaky.status.as_ref().map(|s| s.code),
        Some(SpanStatus::Error as i32)
    );

    // Refused for good: failed, with the provider's reason as the error
    // and the span's status.
    let (refused, _) = reply_spans(&spans, &deployment, &refused_id, "refused");
    assert_eq!(attr(refused, "omnid.outcome").as_deref(), Some("failed"));
    let error = attr(refused, "error").unwrap_or_default();
    assert!(
        error.contains("400") && error.contains("number barred"),
        "{error}"
    );
    let status = refused.status.as_ref().expect("a span status");
    assert_eq!(status.code, SpanStatus::Error as i32);
    assert_eq!(status.message, error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_off_no_trace_context_is_written_and_messages_flow() {
    let (otlp, received) = receiver().await;
    // The endpoint is there, but export is not enabled.
    let deployment = Deployment::with_config(&format!("[telemetry.otlp]\nendpoint = \"{otlp}\"\n"));
    let mut daemon = deployment.start();
    let event_id = post_message(&daemon, "untraced-1").await;
    let inbound = record_of(&deployment, "inbound", &event_id);
    let timeline = record_of(&deployment, "timeline", &event_id);
    assert!(timeline["value"]["message"].is_object(), "{timeline}");
    assert!(daemon.terminate().success(), "{}", daemon.stderr());
    for record in [&inbound, &timeline] {
        assert!(record["headers"].get("traceparent").is_none(), "{record}");
    }
    assert!(received.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_trace_is_carried_but_not_exported() {
    let (otlp, received) = receiver().await;
    let deployment = Deployment::with_config(&format!(
        "[telemetry.otlp]\nenabled = true\nendpoint = \"{otlp}/v1/traces\"\nsampling_ratio = 0.0\n"
    ));
    let mut daemon = deployment.start();
    let event_id = post_message(&daemon, "unsampled-1").await;
    let inbound = record_of(&deployment, "inbound", &event_id);
    let timeline = record_of(&deployment, "timeline", &event_id);
    assert!(daemon.terminate().success(), "{}", daemon.stderr());
    // Downstream sees the decision ("-00") and keeps it: nothing of the
    // message's trace is exported anywhere.
    let inbound_trace = inbound["headers"]["traceparent"].as_str().unwrap();
    let timeline_trace = timeline["headers"]["traceparent"].as_str().unwrap();
    assert!(inbound_trace.ends_with("-00"), "{inbound_trace}");
    assert!(timeline_trace.ends_with("-00"), "{timeline_trace}");
    assert_eq!(inbound_trace[3..35], timeline_trace[3..35], "one trace");
    assert!(received.lock().unwrap().is_empty());
}
