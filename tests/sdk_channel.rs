//! A channel kind written here with the connector SDK alone (none of the
//! workspace's channel crates), registered with the library daemon next to
//! the built-in kinds, keeps the webhook driver's contract against the
//! running daemon: a bad signature is 403 and stores nothing; authentic
//! garbage is a dead letter carrying the raw body, answered 4xx; a 2xx
//! means the event is already in the log; a log that cannot take the event
//! (Kafka unreachable, no spool) is 503 with `Retry-After`.

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use omni_connector::{
    ChannelConfig, ChannelContext, ConfigError, Connector, ParseError, Parsed, Refusal,
    WebhookChannel, WebhookConnector, WebhookDriver, WebhookRequest, factory,
    handle::to_proto,
    signature::{hmac_sha256, verify_hmac_sha256_hex},
};
use omni_log::{EventLog, KafkaLog, KafkaLogConfig};
use omni_model::Handle;
use omni_proto::v1::{ChannelKind, Content, ConversationEvent, Direction, EventKind};
use omni_testkit::{daemon::Deployment, kafka::Broker};
use serde_json::{Value, json};

const KIND: &str = "test-hook";
const CHANNEL: &str = "hooked";
const KEY: &str = "test-hook-key";
const SIGNATURE: &str = "x-test-signature";

/// The test provider's settings: only its signing key.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TestConfig {
    key: String,
}

impl ChannelConfig for TestConfig {
    const KIND: &'static str = KIND;
    const CHANNEL_KIND: ChannelKind = ChannelKind::Api;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        let channel = TestHook {
            channel_id: context.channel_id.clone(),
            key: self.key.into_bytes(),
        };
        let driver = WebhookDriver::new(&context, channel);
        Ok(Arc::new(WebhookConnector::new(Arc::new(driver))))
    }
}

/// The test provider: `{"id", "from", "text"}`, signed with the hex
/// HMAC-SHA256 of the body.
#[derive(Debug)]
struct TestHook {
    channel_id: String,
    key: Vec<u8>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    id: String,
    from: String,
    text: String,
}

impl WebhookChannel for TestHook {
    fn verifies(&self) -> bool {
        true
    }

    fn verify(&self, request: &WebhookRequest) -> Result<(), Refusal> {
        let given = request
            .header(SIGNATURE)
            .ok_or_else(|| Refusal::new("missing_signature", "no signature"))?;
        if verify_hmac_sha256_hex(&self.key, &[&request.body], given) {
            Ok(())
        } else {
            Err(Refusal::new("invalid_signature", "signature mismatch"))
        }
    }

    fn parse(&self, request: &WebhookRequest) -> Result<Parsed, ParseError> {
        let payload: Payload = serde_json::from_slice(&request.body)
            .map_err(|e| ParseError::new("invalid_json", e.to_string()))?;
        let sender = Handle::email(&payload.from)
            .map_err(|e| ParseError::new("invalid_sender", e.to_string()))?;
        Ok(Parsed::event(ConversationEvent {
            event_id: omni_model::event_id(&self.channel_id, &payload.id).to_string(),
            channel_id: self.channel_id.clone(),
            channel_kind: ChannelKind::Api as i32,
            direction: Direction::Inbound as i32,
            kind: EventKind::Message as i32,
            sender: Some(to_proto(&sender, "", false)),
            provider_message_id: payload.id,
            content: Some(Content {
                text: payload.text,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

fn sign(body: &str) -> String {
    hex::encode(hmac_sha256(KEY.as_bytes(), &[body.as_bytes()]))
}

/// A deployment with one channel of the test kind; `extra` ends
/// `omnid.toml`.
fn deployment(extra: &str) -> Deployment {
    let deployment = Deployment::empty();
    deployment.write_config(&format!(
        "data_dir = \"{}\"\nshutdown_timeout_secs = 10\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [channels]\ndir = \"{}\"\n{extra}",
        deployment.data_dir().display(),
        deployment.channels_dir().display(),
    ));
    deployment.write_channel(
        CHANNEL,
        &format!("id = \"{CHANNEL}\"\nkind = \"{KIND}\"\nkey = \"{KEY}\"\n"),
    );
    deployment
}

/// The daemon as a library, with the built-in kinds and the test's.
async fn start(deployment: &Deployment) -> omnid::Daemon {
    let mut registry = omnid::channels::registry();
    registry.push(factory::<TestConfig>());
    let settings = omnid::Settings::load(&deployment.config_path()).unwrap();
    omnid::Daemon::start(settings, registry, None)
        .await
        .unwrap()
}

async fn stop(daemon: omnid::Daemon) {
    daemon.shutdown();
    tokio::time::timeout(Duration::from_secs(20), daemon.stopped())
        .await
        .expect("the daemon stops");
}

async fn post(url: &str, body: &str, signature: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(30))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header(SIGNATURE, signature);
    }
    request.send().await.unwrap()
}

/// `omnid tail` of a topic, from a blocking section of the runtime the
/// daemon runs on.
fn tail(deployment: &Deployment, topic: &str) -> Vec<Value> {
    tokio::task::block_in_place(|| deployment.tail(topic))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_registered_through_the_sdk_keeps_the_webhook_contract() {
    let deployment = deployment("");
    let daemon = start(&deployment).await;
    let url = format!("http://{}/webhooks/{CHANNEL}", daemon.local_addr());
    let body = json!({ "id": "m-1", "from": "sara@shop.example", "text": "Where is my order?" })
        .to_string();

    // Forged or missing signatures: 403, nothing stored anywhere.
    for signature in [None, Some("00".repeat(32)), Some(sign("another body"))] {
        let response = post(&url, &body, signature.as_deref()).await;
        assert_eq!(response.status(), 403);
    }
    assert!(tail(&deployment, "inbound").is_empty());
    assert!(tail(&deployment, "deadletter").is_empty());

    // Authentic garbage: a 4xx, and the raw body kept as a dead letter.
    let garbage = r#"{"id":"m-2","text":"no sender"}"#;
    let response = post(&url, garbage, Some(&sign(garbage))).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_json");
    let dead = tail(&deployment, "deadletter");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let dead = &dead[0]["value"];
    assert_eq!(dead["channelId"], CHANNEL);
    assert_eq!(dead["channelKind"], "CHANNEL_KIND_API");
    assert_eq!(dead["reason"], "invalid_json");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(dead["rawPayload"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, garbage.as_bytes());
    assert!(tail(&deployment, "inbound").is_empty());

    // A 2xx: the event is in the log by then, with its deterministic id.
    let expected_id = omni_model::event_id(CHANNEL, "m-1").to_string();
    let response = post(&url, &body, Some(&sign(&body))).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["event_id"], expected_id.as_str());
    let inbound = tail(&deployment, "inbound");
    assert_eq!(inbound.len(), 1, "{inbound:?}");
    assert_eq!(inbound[0]["value"]["eventId"], expected_id.as_str());
    assert_eq!(inbound[0]["headers"]["ce_id"], expected_id.as_str());
    assert_eq!(inbound[0]["key"], "email:sara@shop.example");
    assert_eq!(inbound[0]["value"]["channelKind"], "CHANNEL_KIND_API");
    assert_eq!(inbound[0]["value"]["content"]["text"], "Where is my order?");

    // The provider's retry: the same event id again.
    let retry = post(&url, &body, Some(&sign(&body))).await;
    assert_eq!(retry.status(), 200);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["event_id"], expected_id.as_str());

    stop(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_take_the_event_is_answered_503_with_retry_after() {
    let broker = Broker::start().await;
    // No spool to fall back on, a short delivery timeout, and no threading
    // worker (no consumer group): the append fails soon after the broker
    // goes away.
    let deployment = deployment(&format!(
        "[log]\nbackend = \"kafka\"\n[log.kafka]\nbrokers = \"{}\"\npartitions = 1\n\
         delivery_timeout_ms = 2000\n[log.kafka.librdkafka]\n\"reconnect.backoff.max.ms\" = \"500\"\n\
         [log.spool]\nenabled = false\n[threading]\nenabled = false\n",
        broker.bootstrap()
    ));
    let daemon = start(&deployment).await;
    let url = format!("http://{}/webhooks/{CHANNEL}", daemon.local_addr());

    let first = json!({ "id": "k-1", "from": "sara@shop.example", "text": "first" }).to_string();
    let response = post(&url, &first, Some(&sign(&first))).await;
    assert_eq!(response.status(), 200);
    // Durable on the broker by the time of the 2xx.
    let reader = KafkaLog::new(KafkaLogConfig {
        brokers: broker.bootstrap(),
        ..KafkaLogConfig::default()
    })
    .unwrap();
    let records = reader.read("omni.inbound.v1", 0, 0, 100).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        String::from_utf8_lossy(
            &records[0]
                .record
                .headers
                .iter()
                .find(|(name, _)| name == "ce_id")
                .unwrap()
                .1
        ),
        omni_model::event_id(CHANNEL, "k-1").to_string()
    );

    broker.proxy.cut().await;
    let second = json!({ "id": "k-2", "from": "sara@shop.example", "text": "second" }).to_string();
    let response = post(&url, &second, Some(&sign(&second))).await;
    assert_eq!(response.status(), 503);
    let retry_after = response
        .headers()
        .get("retry-after")
        .expect("a 503 says when to retry");
    assert!(
        retry_after.to_str().unwrap().parse::<u64>().unwrap() >= 1,
        "{retry_after:?}"
    );

    stop(daemon).await;
}
