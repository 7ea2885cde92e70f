//! The Telegram channel against a local HTTP server that speaks the Bot
//! API's request/response format (`/bot<token>/<method>`, `{"ok": ...}`
//! envelopes, `/file/bot<token>/<path>` downloads), fed with the recorded
//! payloads under `tests/payloads/`.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
    routing::{get, post},
};
use bytes::Bytes;
use omni_connector::{
    Ack, ChannelContext, ChannelState, ConnectorFactory, DeliveryError, EventSender, EventSink,
    LogEntry, SendError, WebhookRequest, testing::MemorySink,
};
use omni_proto::v1::{
    ConversationEvent, Direction, EventKind, HandleKind, IdentityHandle, ThreadingHints,
};
use omni_telegram::{TelegramFactory, polling::OFFSET_KEY};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11";

fn payload(name: &str) -> Value {
    let text = std::fs::read_to_string(format!(
        "{}/tests/payloads/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// What the fake Bot API holds and records.
#[derive(Default)]
struct Fake {
    updates: Vec<Value>,
    calls: Vec<(String, Value)>,
    /// Scripted sendMessage answers (status, body); success once empty.
    send_replies: VecDeque<(u16, Value)>,
    file_delay: Duration,
}

type Shared = Arc<Mutex<Fake>>;

async fn method(
    State(fake): State<Shared>,
    Path((bot, method)): Path<(String, String)>,
    body: Bytes,
) -> impl IntoResponse {
    assert_eq!(bot, format!("bot{TOKEN}"));
    // Bot API method names are case-insensitive (teloxide capitalizes).
    let method = method.to_ascii_lowercase();
    // JSON for most methods; setWebhook is multipart (it may carry a
    // certificate), kept as its raw text.
    let params: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    fake.lock()
        .unwrap()
        .calls
        .push((method.clone(), params.clone()));
    let ok = |result: Value| {
        (
            StatusCode::OK,
            Json(json!({ "ok": true, "result": result })),
        )
    };
    match method.as_str() {
        "getupdates" => {
            let offset = params["offset"].as_i64().unwrap_or(0);
            let limit = params["limit"].as_u64().unwrap_or(100) as usize;
            // Unconfirmed updates come again until a later offset confirms them.
            let batch: Vec<Value> = {
                let fake = fake.lock().unwrap();
                fake.updates
                    .iter()
                    .filter(|u| u["update_id"].as_i64().unwrap() >= offset)
                    .take(limit)
                    .cloned()
                    .collect()
            };
            if batch.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ok(Value::Array(batch))
        }
        "getfile" => {
            let file_id = params["file_id"].as_str().unwrap().to_owned();
            ok(json!({
                "file_id": file_id,
                "file_unique_id": format!("u-{file_id}"),
                "file_size": 11,
                "file_path": format!("photos/{file_id}.jpg"),
            }))
        }
        "sendmessage" => {
            let scripted = fake.lock().unwrap().send_replies.pop_front();
            match scripted {
                Some((status, body)) => (StatusCode::from_u16(status).unwrap(), Json(body)),
                None => ok(json!({
                    "message_id": 4242,
                    "from": { "id": 5555555, "is_bot": true, "first_name": "Acme Support" },
                    "chat": { "id": params["chat_id"], "first_name": "Test", "type": "private" },
                    "date": 1441650000,
                    "text": params["text"],
                })),
            }
        }
        "deletewebhook" | "setwebhook" => ok(json!(true)),
        other => (
            {
                eprintln!("fake bot api: unknown method {other}");
                StatusCode::NOT_FOUND
            },
            Json(json!({ "ok": false, "error_code": 404, "description": "Not Found" })),
        ),
    }
}

async fn file(State(fake): State<Shared>, Path((bot, path)): Path<(String, String)>) -> Vec<u8> {
    assert_eq!(bot, format!("bot{TOKEN}"));
    let delay = fake.lock().unwrap().file_delay;
    tokio::time::sleep(delay).await;
    format!("bytes of {path}").into_bytes()
}

async fn start_fake(fake: Shared) -> SocketAddr {
    let app = Router::new()
        .route("/{bot}/{method}", post(method))
        .route("/file/{bot}/{*path}", get(file))
        .fallback(|uri: axum::http::Uri| async move {
            eprintln!("fake bot api: no route for {uri}");
            StatusCode::NOT_FOUND
        })
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Files {
    _dir: tempfile::TempDir,
    token: String,
    secret: String,
}

fn secret_files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret-Token_1\n").unwrap();
    Files {
        token: token.display().to_string(),
        secret: secret.display().to_string(),
        _dir: dir,
    }
}

fn build(context: ChannelContext, settings: &str) -> Arc<dyn omni_connector::Connector> {
    TelegramFactory
        .build(context, toml::from_str(settings).unwrap())
        .unwrap()
}

fn polling_settings(files: &Files, addr: SocketAddr) -> String {
    format!(
        "mode = \"long_polling\"\nbot_token = {{ file = {:?} }}\napi_url = \"http://{addr}\"\npoll_timeout_secs = 1\nmax_backoff_secs = 1\nrequest_timeout_secs = 5\n",
        files.token
    )
}

fn events(sink: &MemorySink) -> Vec<ConversationEvent> {
    sink.entries()
        .into_iter()
        .filter_map(|e| match e {
            LogEntry::Event(e) => Some(*e),
            LogEntry::DeadLetter(_) => None,
        })
        .collect()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_delivers_every_kind_and_confirms_the_offset() {
    let fake: Shared = Default::default();
    fake.lock().unwrap().updates = vec![
        payload("text.json"),
        payload("edited.json"),
        payload("photo.json"),
        payload("contact_own.json"),
        json!({ "update_id": 10011, "brand_new_kind": { "x": 1 } }),
    ];
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let context = ChannelContext::new("tg-poll", EventSender::new(Arc::new(sink.clone())));
    let state = context.state.clone();
    let attachments = context.attachments.clone();
    let connector = build(context, &polling_settings(&files, addr));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(connector.run(shutdown.clone()));

    wait_for("four events", || events(&sink).len() == 4).await;
    // The unknown update is confirmed too, so it is not asked for again.
    wait_for("the offset", || {
        fake.lock()
            .unwrap()
            .calls
            .iter()
            .any(|(m, p)| m == "getupdates" && p["offset"] == 10012)
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let calls = fake.lock().unwrap().calls.clone();
    assert_eq!(calls[0].0, "deletewebhook", "{calls:?}");
    let all = events(&sink);
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[0].content.as_ref().unwrap().text, "/start");
    assert_eq!(all[1].kind, EventKind::Edit as i32);
    assert_eq!(
        all[1].threading.as_ref().unwrap().edits_event_id,
        all[0].event_id
    );
    let photo = &all[2].content.as_ref().unwrap().attachments[0];
    assert!(photo.uri.starts_with("omni-att://sha256/"), "{photo:?}");
    assert_eq!(
        attachments.get(&photo.sha256).await.unwrap().as_deref(),
        Some(&b"bytes of photos/AgADBAADbig-photo.jpg"[..])
    );
    assert_eq!(all[3].provider_metadata["verified_phone"], "+989121234567");
    assert_eq!(
        state.get(OFFSET_KEY).await.unwrap(),
        Some(b"10012".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_middle_of_a_batch_loses_and_doubles_nothing() {
    let fake: Shared = Default::default();
    {
        let mut f = fake.lock().unwrap();
        f.updates = vec![
            payload("text.json"),
            payload("photo.json"),
            payload("reply.json"),
            payload("location.json"),
        ];
        f.file_delay = Duration::from_millis(500);
    }
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let state = ChannelState::memory("tg-restart");

    // First run: stopped right after the first event, while the photo of
    // the second update is still downloading.
    let mut context = ChannelContext::new("tg-restart", EventSender::new(Arc::new(sink.clone())));
    context.state = state.clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(build(context, &polling_settings(&files, addr)).run(shutdown.clone()));
    wait_for("the first event", || !events(&sink).is_empty()).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let after_first = events(&sink).len();
    assert!(
        after_first < 4,
        "the batch was stopped part way: {after_first}"
    );

    // Second run on the same state: the server hands out the unconfirmed
    // updates again.
    fake.lock().unwrap().file_delay = Duration::ZERO;
    let mut context = ChannelContext::new("tg-restart", EventSender::new(Arc::new(sink.clone())));
    context.state = state.clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(build(context, &polling_settings(&files, addr)).run(shutdown.clone()));
    wait_for("every event", || events(&sink).len() >= 4).await;
    wait_for("the offset", || {
        fake.lock()
            .unwrap()
            .calls
            .iter()
            .any(|(m, p)| m == "getupdates" && p["offset"] == 10009)
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let ids: Vec<String> = events(&sink)
        .iter()
        .map(|e| e.provider_message_id.clone())
        .collect();
    assert_eq!(
        ids,
        [
            "1111111:1365",
            "1111111:1366",
            "1111111:1367",
            "1111111:1372"
        ],
        "every message exactly once, in update order"
    );
}

/// A log that refuses one chosen append, to leave a batch half durable.
#[derive(Clone, Default)]
struct FlakySink {
    inner: MemorySink,
    submits: Arc<Mutex<usize>>,
    fail_at: usize,
}

impl EventSink for FlakySink {
    fn submit(&self, entry: LogEntry) -> Ack {
        let n = {
            let mut submits = self.submits.lock().unwrap();
            *submits += 1;
            *submits
        };
        if n == self.fail_at {
            return Box::pin(async { Err(SendError::Failed("disk full".into())) });
        }
        self.inner.submit(entry)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_durable_batch_is_replayed_without_duplicates() {
    let fake: Shared = Default::default();
    fake.lock().unwrap().updates = vec![
        payload("text.json"),
        payload("reply.json"),
        payload("location.json"),
    ];
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    // The second append fails: the offset may only pass the first update,
    // and the third, though durable, must not be appended again.
    let sink = FlakySink {
        fail_at: 2,
        ..Default::default()
    };
    let context = ChannelContext::new("tg-flaky", EventSender::new(Arc::new(sink.clone())));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(build(context, &polling_settings(&files, addr)).run(shutdown.clone()));
    wait_for("all three", || events(&sink.inner).len() >= 3).await;
    wait_for("the offset", || {
        fake.lock()
            .unwrap()
            .calls
            .iter()
            .any(|(m, p)| m == "getupdates" && p["offset"] == 10009)
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let mut ids: Vec<String> = events(&sink.inner)
        .iter()
        .map(|e| e.provider_message_id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["1111111:1365", "1111111:1366", "1111111:1372"]);
}

fn webhook_request(body: &[u8], secret: Option<&str>) -> WebhookRequest {
    let mut headers = http::HeaderMap::new();
    if let Some(secret) = secret {
        headers.insert("x-telegram-bot-api-secret-token", secret.parse().unwrap());
    }
    WebhookRequest {
        method: http::Method::POST,
        uri: "/webhooks/tg-hook".parse().unwrap(),
        headers,
        body: Bytes::copy_from_slice(body),
        received_at: SystemTime::now(),
        public_url: None,
    }
}

async fn webhook_channel(
    sink: &MemorySink,
    files: &Files,
    addr: SocketAddr,
    extra: &str,
) -> (Arc<dyn omni_connector::Connector>, ChannelContext) {
    let mut context = ChannelContext::new("tg-hook", EventSender::new(Arc::new(sink.clone())));
    context.public_base_url = Some("https://omnid.example".into());
    let settings = format!(
        "mode = \"webhook\"\nbot_token = {{ file = {:?} }}\nsecret_token = {{ file = {:?} }}\napi_url = \"http://{addr}\"\n{extra}",
        files.token, files.secret
    );
    (build(context.clone(), &settings), context)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_checks_the_secret_token_and_stores_then_answers() {
    let fake: Shared = Default::default();
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let (connector, _) = webhook_channel(&sink, &files, addr, "").await;
    let hook = connector.webhook().unwrap();
    let body = serde_json::to_vec(&payload("text.json")).unwrap();

    for secret in [None, Some("wrong"), Some("s3cret-Token_")] {
        let response = hook.handle(webhook_request(&body, secret)).await;
        assert_eq!(response.status(), http::StatusCode::FORBIDDEN, "{secret:?}");
    }
    assert!(
        sink.entries().is_empty(),
        "nothing appended without the secret"
    );

    let response = hook
        .handle(webhook_request(&body, Some("s3cret-Token_1")))
        .await;
    assert_eq!(response.status(), http::StatusCode::OK);
    let answer: Value = serde_json::from_slice(response.body()).unwrap();
    let all = events(&sink);
    assert_eq!(all.len(), 1);
    assert_eq!(answer["event_id"], all[0].event_id.as_str());
    assert_eq!(all[0].direction, Direction::Inbound as i32);

    // A redelivery carries the same event id.
    hook.handle(webhook_request(&body, Some("s3cret-Token_1")))
        .await;
    let all = events(&sink);
    assert_eq!(all[0].event_id, all[1].event_id);

    // Edits, contacts shared by their owner, unknown kinds, garbage.
    let edited = serde_json::to_vec(&payload("edited.json")).unwrap();
    assert_eq!(
        hook.handle(webhook_request(&edited, Some("s3cret-Token_1")))
            .await
            .status(),
        http::StatusCode::OK
    );
    let contact = serde_json::to_vec(&payload("contact_own.json")).unwrap();
    hook.handle(webhook_request(&contact, Some("s3cret-Token_1")))
        .await;
    let all = events(&sink);
    assert_eq!(all[2].kind, EventKind::Edit as i32);
    assert_eq!(
        all[2].threading.as_ref().unwrap().edits_event_id,
        all[0].event_id
    );
    assert_eq!(all[3].provider_metadata["verified_phone"], "+989121234567");
    assert!(
        all[3]
            .sender_identities
            .iter()
            .any(|h| h.kind == HandleKind::Phone as i32
                && h.value == "+989121234567"
                && h.verified)
    );

    let before = sink.entries().len();
    let unknown = br#"{"update_id": 99, "brand_new_kind": {}}"#;
    let response = hook
        .handle(webhook_request(unknown, Some("s3cret-Token_1")))
        .await;
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(
        sink.entries().len(),
        before,
        "unknown kinds are not dead letters"
    );

    let response = hook
        .handle(webhook_request(b"{not json", Some("s3cret-Token_1")))
        .await;
    assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
    let entries = sink.entries();
    let Some(LogEntry::DeadLetter(dl)) = entries.last() else {
        panic!("{entries:?}")
    };
    assert_eq!(dl.reason, "invalid_json");
    assert_eq!(dl.raw_payload, b"{not json");

    sink.fail_with(Some(SendError::Overloaded));
    let response = hook
        .handle(webhook_request(&body, Some("s3cret-Token_1")))
        .await;
    assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_webhook_registers_url_secret_and_allowed_updates() {
    let fake: Shared = Default::default();
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let (connector, _) = webhook_channel(&sink, &files, addr, "set_webhook = true\n").await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(connector.run(shutdown.clone()));
    wait_for("setwebhook", || {
        fake.lock()
            .unwrap()
            .calls
            .iter()
            .any(|(m, _)| m == "setwebhook")
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let calls = fake.lock().unwrap().calls.clone();
    let (_, params) = calls.iter().find(|(m, _)| m == "setwebhook").unwrap();
    let form = params.as_str().expect("setWebhook is sent as multipart");
    for (field, value) in [
        ("url", "https://omnid.example/webhooks/tg-hook"),
        ("secret_token", "s3cret-Token_1"),
        ("allowed_updates", r#"["message","edited_message"]"#),
    ] {
        assert!(
            form.contains(&format!("name=\"{field}\"\r\n\r\n{value}\r\n")),
            "{field} = {value} in {form}"
        );
    }
}

fn reply(text: &str) -> ConversationEvent {
    ConversationEvent {
        event_id: "out-1".into(),
        channel_id: "tg-hook".into(),
        direction: Direction::Outbound as i32,
        kind: EventKind::Message as i32,
        recipients: vec![IdentityHandle {
            kind: HandleKind::TelegramUser as i32,
            value: "1111111".into(),
            ..Default::default()
        }],
        content: Some(omni_proto::v1::Content {
            text: text.into(),
            ..Default::default()
        }),
        threading: Some(ThreadingHints {
            provider_chat_id: "1111111".into(),
            reply_to_provider_message_id: "1111111:1365".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_message_honours_retry_after_and_rejects_bad_requests() {
    let fake: Shared = Default::default();
    fake.lock().unwrap().send_replies = VecDeque::from([(
        429,
        json!({ "ok": false, "error_code": 429,
                "description": "Too Many Requests: retry after 1",
                "parameters": { "retry_after": 1 } }),
    )]);
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let (connector, _) = webhook_channel(&sink, &files, addr, "per_chat_interval_ms = 10\n").await;
    let outbound = connector.outbound().unwrap();

    let started = Instant::now();
    let delivered = outbound.deliver(&reply("It ships today.")).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited out retry_after"
    );
    assert_eq!(delivered.provider_message_id, "1111111:4242");
    let calls = fake.lock().unwrap().calls.clone();
    let sends: Vec<&Value> = calls
        .iter()
        .filter(|(m, _)| m == "sendmessage")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[1]["chat_id"], 1111111);
    assert_eq!(sends[1]["text"], "It ships today.");
    assert_eq!(sends[1]["reply_parameters"]["message_id"], 1365);

    fake.lock().unwrap().send_replies = VecDeque::from([(
        400,
        json!({ "ok": false, "error_code": 400, "description": "Bad Request: chat not found" }),
    )]);
    let error = outbound.deliver(&reply("hello")).await.unwrap_err();
    assert!(matches!(error, DeliveryError::Rejected(_)), "{error:?}");

    // A long wait goes back to the daemon as a temporary failure.
    fake.lock().unwrap().send_replies = VecDeque::from([(
        429,
        json!({ "ok": false, "error_code": 429,
                "description": "Too Many Requests: retry after 60",
                "parameters": { "retry_after": 60 } }),
    )]);
    let error = outbound.deliver(&reply("hello")).await.unwrap_err();
    assert!(matches!(error, DeliveryError::Temporary(_)), "{error:?}");
}
