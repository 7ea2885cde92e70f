//! The channel's own cost per message, beside the API channel's signed
//! JSON through its driver (the ceiling, measured in the same run):
//!
//! - `whatsapp_pure_*`: the pure half, signature check, envelope and
//!   normalization of a POST carrying 1 or 10 text messages;
//! - `whatsapp_*_per_post`: the same POSTs through the webhook driver with
//!   a log that keeps nothing, including the redelivery check against the
//!   channel's state, whose trip to the state store's thread dominates an
//!   idle single-threaded run (under load the daemon batches those trips:
//!   `scripts/bench-meta` measures it with HTTP and the durable log).

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use omni_connector::testing::NullSink;
use omni_connector::{
    ChannelConfig, ChannelContext, EventSender, WebhookHandler, WebhookRequest,
    signature::hmac_sha256,
};
use omni_meta::{
    envelope::{Envelope, Limits},
    whatsapp::normalize::{WaContext, normalize},
};

const APP_SECRET: &str = "bench-app-secret";
const PHONE_NUMBER_ID: &str = "106540352242922";

fn webhook<C: ChannelConfig>(settings: &str) -> Arc<dyn WebhookHandler> {
    let context = ChannelContext::new("bench", EventSender::new(Arc::new(NullSink)));
    omni_connector::factory::<C>()
        .build(context, toml::from_str(settings).unwrap())
        .unwrap()
        .webhook()
        .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn request(headers: HeaderMap, body: String) -> WebhookRequest {
    WebhookRequest {
        method: Method::POST,
        uri: "/webhooks/bench".parse().unwrap(),
        headers,
        body: Bytes::from(body),
        received_at: SystemTime::now(),
        public_url: None,
    }
}

/// A POST as Meta sends it: one change carrying `count` text messages from
/// as many customers, with their contacts.
fn whatsapp_request(first: u64, count: u64) -> WebhookRequest {
    let (mut contacts, mut messages) = (Vec::new(), Vec::new());
    for i in first..first + count {
        let wa_id = format!("1555{:07}", i % 1000);
        contacts.push(serde_json::json!({"profile": {"name": "Bench Customer"}, "wa_id": wa_id}));
        messages.push(serde_json::json!({
            "from": wa_id,
            "id": format!("wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBQzQTZBRTk{i:020}"),
            "timestamp": now().to_string(),
            "text": {"body": "x".repeat(200)},
            "type": "text",
        }));
    }
    let body = serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "102290129340398",
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
                    "contacts": contacts,
                    "messages": messages,
                },
            }],
        }],
    })
    .to_string();
    let signature = format!(
        "sha256={}",
        hex::encode(hmac_sha256(APP_SECRET.as_bytes(), &[body.as_bytes()]))
    );
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "x-hub-signature-256",
        HeaderValue::from_str(&signature).unwrap(),
    );
    request(headers, body)
}

/// What the channel does with a POST before the log: the signature, the
/// envelope, the events.
fn pure(request: &WebhookRequest) -> usize {
    let header = request.header("x-hub-signature-256").unwrap_or_default();
    let expected = hmac_sha256(APP_SECRET.as_bytes(), &[&request.body]);
    assert!(omni_connector::signature::eq_hex(
        &expected,
        header.trim_start_matches("sha256=")
    ));
    let envelope = Envelope::parse(
        &request.body,
        "whatsapp_business_account",
        &Limits::default(),
    )
    .unwrap();
    let cx = WaContext {
        channel_id: "bench",
        phone_number_id: PHONE_NUMBER_ID,
        received_at: omni_proto::timestamp(request.received_at),
    };
    let (events, unreadable) = normalize(&envelope, &cx);
    assert!(unreadable.is_empty());
    events.len()
}

fn api_request(i: u64) -> WebhookRequest {
    let body = serde_json::json!({
        "external_id": format!("bench-{i}"),
        "sender": { "kind": "external", "value": format!("customer-{}", i % 1000) },
        "text": "x".repeat(200),
    })
    .to_string();
    let now = now();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        omni_api::signature::TIMESTAMP_HEADER,
        HeaderValue::from_str(&now.to_string()).unwrap(),
    );
    headers.insert(
        omni_api::signature::SIGNATURE_HEADER,
        HeaderValue::from_str(&omni_api::signature::sign(
            b"bench-secret",
            now,
            body.as_bytes(),
        ))
        .unwrap(),
    );
    request(headers, body)
}

fn bench(c: &mut Criterion) {
    // Timers on: the channel's marks writer waits between commits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        path.display().to_string()
    };
    let (app_secret, verify, api_secret) = (
        file("app_secret", APP_SECRET),
        file("verify", "bench-verify"),
        file("api_secret", "bench-secret"),
    );
    let whatsapp = format!(
        "phone_number_id = {PHONE_NUMBER_ID:?}\napp_secret = {{ file = {app_secret:?} }}\n\
         verify_token = {{ file = {verify:?} }}\n"
    );
    let api = format!("secret = {{ file = {api_secret:?} }}\n");

    let mut group = c.benchmark_group("webhook");
    // Requests are built outside the timed part (iter_batched), so each
    // figure is the channel's work alone; throughput is per message.
    group.throughput(Throughput::Elements(1));
    let api_hook = webhook::<omni_api::ApiChannelConfig>(&api);
    let mut i = 0;
    group.bench_function("api_signed_json (ceiling)", |b| {
        b.iter_batched(
            || {
                i += 1;
                api_request(i)
            },
            |r| runtime.block_on(api_hook.handle(r)),
            criterion::BatchSize::SmallInput,
        )
    });
    for count in [1u64, 10] {
        group.throughput(Throughput::Elements(count));
        group.bench_function(format!("whatsapp_pure_{count}"), |b| {
            b.iter_batched(
                || {
                    i += count;
                    whatsapp_request(i, count)
                },
                |r| pure(&r),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.throughput(Throughput::Elements(1));
    let wa = webhook::<omni_meta::WhatsappConfig>(&whatsapp);
    group.bench_function("whatsapp_1_per_post", |b| {
        b.iter_batched(
            || {
                i += 1;
                whatsapp_request(i, 1)
            },
            |r| runtime.block_on(wa.handle(r)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Elements(10));
    group.bench_function("whatsapp_10_per_post", |b| {
        b.iter_batched(
            || {
                i += 10;
                whatsapp_request(i, 10)
            },
            |r| runtime.block_on(wa.handle(r)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
