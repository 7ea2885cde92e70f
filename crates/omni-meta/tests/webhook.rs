//! The channel through the SDK's webhook driver with a log that can fail:
//! a POST is answered 200 only when every update in it is durable, a log
//! failing mid-way answers 5xx and Meta's redelivery completes it, and a
//! redelivery of what is durable appends nothing, also after a restart
//! (the channel's state on disk).

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use omni_connector::{
    ChannelContext, ChannelState, EventSender, LogEntry, SendError, SqliteStateStore, StateStore,
    WebhookHandler, WebhookRequest, signature::hmac_sha256, testing::MemorySink,
};
use serde_json::json;

const SECRET: &str = "app-secret";
const PHONE_NUMBER_ID: &str = "106540352242922";

/// A WhatsApp channel on `sink`, its state in `state`.
fn channel(
    sink: &MemorySink,
    state: ChannelState,
    dir: &std::path::Path,
) -> Arc<dyn WebhookHandler> {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    std::fs::write(dir.join("verify"), "verify").unwrap();
    let settings = format!(
        "phone_number_id = \"{PHONE_NUMBER_ID}\"\napp_secret = {{ file = {:?} }}\n\
         verify_token = {{ file = {:?} }}\n",
        dir.join("secret").display().to_string(),
        dir.join("verify").display().to_string(),
    );
    let mut context = ChannelContext::new("wa", EventSender::new(Arc::new(sink.clone())));
    context.state = state;
    omni_connector::factory::<omni_meta::WhatsappConfig>()
        .build(context, toml::from_str(&settings).unwrap())
        .unwrap()
        .webhook()
        .unwrap()
}

/// One POST as Meta batches them: two entries, each with two changes of
/// three text messages (12 in all) and, in the last change, a status.
fn batch() -> Bytes {
    let change = |first: usize| {
        let messages: Vec<_> = (first..first + 3)
            .map(|i| {
                json!({"from": format!("1555000{i:04}"), "id": format!("wamid.batch.{i}"),
                       "timestamp": "1749416383", "type": "text", "text": {"body": format!("message {i}")}})
            })
            .collect();
        let mut value = json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [],
            "messages": messages,
        });
        if first == 9 {
            value["statuses"] = json!([{"id": "wamid.out.1", "status": "delivered",
                "timestamp": "1749416390", "recipient_id": "15550000001"}]);
        }
        json!({"field": "messages", "value": value})
    };
    let body = json!({
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "102290129340398", "changes": [change(0), change(3)]},
            {"id": "102290129340398", "changes": [change(6), change(9)]},
        ],
    });
    Bytes::from(body.to_string())
}

fn post(body: &Bytes) -> WebhookRequest {
    let signature = format!(
        "sha256={}",
        hex::encode(hmac_sha256(SECRET.as_bytes(), &[body]))
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-hub-signature-256",
        HeaderValue::from_str(&signature).unwrap(),
    );
    WebhookRequest {
        method: Method::POST,
        uri: "/webhooks/wa".parse().unwrap(),
        headers,
        body: body.clone(),
        received_at: SystemTime::now(),
        public_url: None,
    }
}

/// How often each provider message id is in the log.
fn appended(sink: &MemorySink) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for entry in sink.entries() {
        if let LogEntry::Event(event) = entry {
            *counts.entry(event.provider_message_id.clone()).or_default() += 1;
        }
    }
    counts
}

#[tokio::test]
async fn a_log_failing_mid_post_answers_5xx_and_the_redelivery_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let hook = channel(&sink, ChannelState::memory("wa"), dir.path());
    let body = batch();

    // The log takes five entries, then fails: Meta must redeliver.
    sink.fail_after(5, SendError::Failed("disk full".into()));
    let response = hook.handle(post(&body)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(appended(&sink).len(), 5);

    // The redelivery appends everything; the five already durable come
    // again with the same event ids (the threading service drops them).
    sink.fail_with(None);
    let response = hook.handle(post(&body)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let counts = appended(&sink);
    assert_eq!(counts.len(), 13, "12 messages and a status: {counts:?}");
    assert_eq!(counts.values().filter(|&&n| n == 2).count(), 5);
    let ids: HashMap<String, Vec<String>> = sink
        .entries()
        .into_iter()
        .filter_map(|e| match e {
            LogEntry::Event(event) => {
                Some((event.provider_message_id.clone(), event.event_id.clone()))
            }
            LogEntry::DeadLetter(_) | LogEntry::Outbound(_) => None,
        })
        .fold(HashMap::new(), |mut ids, (message, event)| {
            ids.entry(message).or_insert_with(Vec::new).push(event);
            ids
        });
    assert!(
        ids.values()
            .all(|events| events.iter().all(|e| *e == events[0]))
    );

    // Now that all of it is durable, a third delivery appends nothing.
    let before = sink.entries().len();
    let response = hook.handle(post(&body)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sink.entries().len(), before);
}

#[tokio::test]
async fn a_redelivery_after_a_restart_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let sink = MemorySink::default();
    let body = batch();
    {
        let store = Arc::new(SqliteStateStore::open(&path).unwrap());
        let hook = channel(&sink, ChannelState::new(store.clone(), "wa"), dir.path());
        assert_eq!(hook.handle(post(&body)).await.status(), StatusCode::OK);
        // The marks are committed in groups, moments after the answer.
        let last = omni_model::event_id("wa", "wamid.batch.11").to_string();
        let mut waited = 0;
        while !store.seen("wa", std::slice::from_ref(&last)).unwrap()[0] {
            assert!(waited < 200, "the seen marks were never committed");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            waited += 1;
        }
    }
    assert_eq!(sink.entries().len(), 13);
    let store = Arc::new(SqliteStateStore::open(&path).unwrap());
    let hook = channel(&sink, ChannelState::new(store, "wa"), dir.path());
    assert_eq!(hook.handle(post(&body)).await.status(), StatusCode::OK);
    assert_eq!(sink.entries().len(), 13);
    // A POST with one new message among the old appends only that one.
    let mut mixed: serde_json::Value = serde_json::from_slice(&batch()).unwrap();
    mixed["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = json!("wamid.new");
    let mixed = Bytes::from(mixed.to_string());
    assert_eq!(hook.handle(post(&mixed)).await.status(), StatusCode::OK);
    let counts = appended(&sink);
    assert_eq!(sink.entries().len(), 14);
    assert_eq!(counts["wamid.new"], 1);
}

#[tokio::test]
async fn stopping_the_channel_flushes_its_marks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Arc::new(SqliteStateStore::open(&path).unwrap());
    let sink = MemorySink::default();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("verify"), "verify").unwrap();
    let settings = format!(
        "phone_number_id = \"{PHONE_NUMBER_ID}\"\napp_secret = {{ file = {:?} }}\n\
         verify_token = {{ file = {:?} }}\n",
        dir.path().join("secret").display().to_string(),
        dir.path().join("verify").display().to_string(),
    );
    let mut context = ChannelContext::new("wa", EventSender::new(Arc::new(sink.clone())));
    context.state = ChannelState::new(store.clone(), "wa");
    let connector = omni_connector::factory::<omni_meta::WhatsappConfig>()
        .build(context, toml::from_str(&settings).unwrap())
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(connector.clone().run(stop.clone()));
    let hook = connector.webhook().unwrap();
    // The first POST's marks are committed at once; the second's wait for
    // the next group commit, 100 ms later, unless the channel stops.
    let first = batch();
    assert_eq!(hook.handle(post(&first)).await.status(), StatusCode::OK);
    let mut second: serde_json::Value = serde_json::from_slice(&batch()).unwrap();
    second["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = json!("wamid.second");
    let second = Bytes::from(second.to_string());
    assert_eq!(hook.handle(post(&second)).await.status(), StatusCode::OK);
    stop.cancel();
    running.await.unwrap().unwrap();
    let id = omni_model::event_id("wa", "wamid.second").to_string();
    assert_eq!(store.seen("wa", &[id]).unwrap(), [true]);
}
