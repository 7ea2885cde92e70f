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
    Ack, AttachmentStore, ChannelContext, ChannelState, DeliveryError, EventSender, EventSink,
    FetchError, FsAttachmentStore, LogEntry, MediaJob, MediaRef, MemoryMediaQueue, SendError,
    StateStore, StateUpdate, StoredAttachment, WebhookRequest,
    attachments::AttachmentError,
    state::{MemoryStateStore, StateError},
    testing::MemorySink,
};
use omni_proto::v1::{
    Attachment, ConversationEvent, Direction, EventKind, HandleKind, IdentityHandle, ThreadingHints,
};
use omni_telegram::{TelegramChannelConfig, polling::OFFSET_KEY};
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
    /// Scripted answers to sendMessage, sendDocument and sendPhoto
    /// (status, body); success once empty.
    send_replies: VecDeque<(u16, Value)>,
    file_delay: Duration,
    /// Scripted answers to getFile (status, body); a file of 11 bytes
    /// once empty.
    get_file_replies: VecDeque<(u16, Value)>,
    /// The status of file downloads (200 when unset).
    file_status: Option<u16>,
    /// Files uploaded with sendDocument / sendPhoto.
    uploads: Vec<Upload>,
    /// The next message id of a sent file.
    next_file_message_id: i64,
}

/// One file part of a multipart upload.
#[derive(Debug, Clone)]
struct Upload {
    method: String,
    field: String,
    file_name: String,
    bytes: Vec<u8>,
}

/// The parts of a `multipart/form-data` body: (field name, file name,
/// content). Enough of RFC 7578 for what reqwest writes.
fn multipart_parts(content_type: &str, body: &[u8]) -> Vec<(String, Option<String>, Vec<u8>)> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .expect("a multipart boundary")
        .trim_matches('"');
    let delimiter = format!("--{boundary}").into_bytes();
    let find =
        |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).position(|w| w == needle);
    let mut parts = Vec::new();
    let mut rest = &body[find(body, &delimiter).expect("a first boundary") + delimiter.len()..];
    while !rest.starts_with(b"--") {
        rest = rest.strip_prefix(b"\r\n").expect("CRLF after a boundary");
        let end =
            find(rest, &[b"\r\n".as_slice(), &delimiter].concat()).expect("a closing boundary");
        let part = &rest[..end];
        let head_end = find(part, b"\r\n\r\n").expect("part headers");
        let head = String::from_utf8_lossy(&part[..head_end]).into_owned();
        let param = |key: &str| {
            let marker = format!("{key}=\"");
            let start = head.find(&marker)? + marker.len();
            let len = head[start..].find('"')?;
            Some(head[start..start + len].to_owned())
        };
        let name = param(" name")
            .or_else(|| param(";name"))
            .expect("a field name");
        parts.push((name, param("filename"), part[head_end + 4..].to_vec()));
        rest = &rest[end + 2 + delimiter.len()..];
    }
    parts
}

type Shared = Arc<Mutex<Fake>>;

async fn method(
    State(fake): State<Shared>,
    Path((bot, method)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    assert_eq!(bot, format!("bot{TOKEN}"));
    // Bot API method names are case-insensitive (teloxide capitalizes).
    let method = method.to_ascii_lowercase();
    // JSON for most methods; setWebhook is multipart (it may carry a
    // certificate), kept as its raw text; sendDocument and sendPhoto are
    // multipart uploads: their text fields become a JSON object, their
    // files go to `uploads`.
    let params: Value = if matches!(method.as_str(), "senddocument" | "sendphoto") {
        let content_type = headers[axum::http::header::CONTENT_TYPE].to_str().unwrap();
        let mut fields = serde_json::Map::new();
        for (field, file_name, bytes) in multipart_parts(content_type, &body) {
            match file_name {
                Some(file_name) => fake.lock().unwrap().uploads.push(Upload {
                    method: method.clone(),
                    field,
                    file_name,
                    bytes,
                }),
                None => {
                    let text = String::from_utf8(bytes).unwrap();
                    // Non-string fields (reply_parameters) are JSON.
                    let value = serde_json::from_str(&text)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or(Value::String(text));
                    fields.insert(field, value);
                }
            }
        }
        Value::Object(fields)
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
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
            let scripted = fake.lock().unwrap().get_file_replies.pop_front();
            if let Some((status, body)) = scripted {
                return (StatusCode::from_u16(status).unwrap(), Json(body));
            }
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
        "senddocument" | "sendphoto" => {
            let scripted = fake.lock().unwrap().send_replies.pop_front();
            if let Some((status, body)) = scripted {
                return (StatusCode::from_u16(status).unwrap(), Json(body));
            }
            let id = {
                let mut fake = fake.lock().unwrap();
                fake.next_file_message_id += 1;
                5000 + fake.next_file_message_id
            };
            let chat_id: i64 = params["chat_id"].as_str().unwrap().parse().unwrap();
            let mut message = json!({
                "message_id": id,
                "from": { "id": 5555555, "is_bot": true, "first_name": "Acme Support" },
                "chat": { "id": chat_id, "first_name": "Test", "type": "private" },
                "date": 1441650000,
            });
            if method == "sendphoto" {
                message["photo"] = json!([{ "file_id": "p1", "file_unique_id": "up1",
                                            "width": 1, "height": 1 }]);
            } else {
                message["document"] = json!({ "file_id": "d1", "file_unique_id": "ud1" });
            }
            if let Some(caption) = params.get("caption") {
                message["caption"] = caption.clone();
            }
            ok(message)
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

async fn file(
    State(fake): State<Shared>,
    Path((bot, path)): Path<(String, String)>,
) -> (StatusCode, Vec<u8>) {
    assert_eq!(bot, format!("bot{TOKEN}"));
    let (delay, status) = {
        let fake = fake.lock().unwrap();
        (fake.file_delay, fake.file_status.unwrap_or(200))
    };
    tokio::time::sleep(delay).await;
    (
        StatusCode::from_u16(status).unwrap(),
        format!("bytes of {path}").into_bytes(),
    )
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
    omni_connector::factory::<TelegramChannelConfig>()
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
            LogEntry::DeadLetter(_) | LogEntry::Outbound(_) => None,
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
    let mut context = ChannelContext::new("tg-poll", EventSender::new(Arc::new(sink.clone())));
    let media = MemoryMediaQueue::default();
    context.media = Arc::new(media.clone());
    let state = context.state.clone();
    let connector = build(context, &polling_settings(&files, addr));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(connector.clone().run(shutdown.clone()));

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
    // The photo is appended at once, named by its file_id; its download
    // is owed to the media queue, and the channel's fetcher does it.
    let photo = &all[2].content.as_ref().unwrap().attachments[0];
    assert_eq!(photo.uri, "tg-file:AgADBAADbig-photo", "{photo:?}");
    assert!(photo.sha256.is_empty());
    let [job] = media.jobs().try_into().expect("one media job");
    assert_owed(&job, "tg-poll", &all[2].event_id, "AgADBAADbig-photo");
    let fetched = connector.media().unwrap().fetch(&job.media).await.unwrap();
    assert_eq!(
        fetched.content.as_ref(),
        b"bytes of photos/AgADBAADbig-photo.jpg"
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
    }
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let store = Arc::new(SlowStore::default());
    *store.slow.lock().unwrap() = Some(("update:10003".into(), Duration::from_millis(500)));
    let state = ChannelState::new(store.clone(), "tg-restart");

    // First run: stopped right after the first event, while the second
    // update is still being looked up.
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
    *store.slow.lock().unwrap() = None;
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

/// A state store whose seen lookup of one id is slow, so a batch can be
/// stopped part way.
#[derive(Debug, Default)]
struct SlowStore {
    inner: MemoryStateStore,
    slow: Mutex<Option<(String, Duration)>>,
}

impl StateStore for SlowStore {
    fn get(&self, channel: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.inner.get(channel, key)
    }

    fn commit(&self, channel: &str, update: &StateUpdate) -> Result<(), StateError> {
        self.inner.commit(channel, update)
    }

    fn seen(&self, channel: &str, ids: &[String]) -> Result<Vec<bool>, StateError> {
        let slow = self.slow.lock().unwrap().clone();
        if let Some((id, delay)) = slow
            && ids.contains(&id)
        {
            std::thread::sleep(delay);
        }
        self.inner.seen(channel, ids)
    }

    fn scan_after(
        &self,
        channel: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.inner.scan_after(channel, prefix, after, limit)
    }
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

/// Asserts that `job` owes the download of `file_id` as the first
/// attachment of `event_id`.
fn assert_owed(job: &MediaJob, channel_id: &str, event_id: &str, file_id: &str) {
    assert_eq!(job.channel_id, channel_id, "{job:?}");
    assert_eq!(job.event_id, event_id, "{job:?}");
    assert_eq!(
        job.media,
        MediaRef {
            attachment: 0,
            source: file_id.into()
        }
    );
}

/// A webhook channel whose media jobs are recorded.
async fn webhook_with_media(
    sink: &MemorySink,
    files: &Files,
    addr: SocketAddr,
    extra: &str,
) -> (Arc<dyn omni_connector::Connector>, MemoryMediaQueue) {
    let media = MemoryMediaQueue::default();
    let mut context = ChannelContext::new("tg-hook", EventSender::new(Arc::new(sink.clone())));
    context.media = Arc::new(media.clone());
    let settings = format!(
        "mode = \"webhook\"\nbot_token = {{ file = {:?} }}\nsecret_token = {{ file = {:?} }}\napi_url = \"http://{addr}\"\n{extra}",
        files.token, files.secret
    );
    (build(context, &settings), media)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_photo_is_acknowledged_at_once_and_its_file_fetched_later() {
    let fake: Shared = Default::default();
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let (connector, media) = webhook_with_media(&sink, &files, addr, "").await;
    let hook = connector.webhook().unwrap();
    let body = serde_json::to_vec(&payload("photo.json")).unwrap();

    let response = hook
        .handle(webhook_request(&body, Some("s3cret-Token_1")))
        .await;
    assert_eq!(response.status(), http::StatusCode::OK);
    let answer: Value = serde_json::from_slice(response.body()).unwrap();
    let all = events(&sink);
    let [event] = all.as_slice() else {
        panic!("{all:?}")
    };
    assert_eq!(answer["event_id"], event.event_id.as_str());
    let content = event.content.as_ref().unwrap();
    assert_eq!(content.text, "my order");
    assert_eq!(content.attachments[0].uri, "tg-file:AgADBAADbig-photo");
    assert_eq!(content.attachments[0].size, 52342);
    assert!(
        !fake
            .lock()
            .unwrap()
            .calls
            .iter()
            .any(|(m, _)| m == "getfile"),
        "nothing is fetched while telegram waits"
    );
    let [job] = media.jobs().try_into().expect("one media job");
    assert_owed(&job, "tg-hook", &event.event_id, "AgADBAADbig-photo");

    let fetched = connector.media().unwrap().fetch(&job.media).await.unwrap();
    assert_eq!(
        fetched.content.as_ref(),
        b"bytes of photos/AgADBAADbig-photo.jpg"
    );
    let calls = calls_to(&fake, "getfile");
    assert_eq!(calls[0]["file_id"], "AgADBAADbig-photo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_failures_are_temporary_or_permanent() {
    let fake: Shared = Default::default();
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let (connector, _) = webhook_with_media(
        &sink,
        &files,
        addr,
        "max_file_bytes = 10\nrequest_timeout_secs = 1\n",
    )
    .await;
    let fetcher = connector.media().unwrap();
    let photo = MediaRef {
        attachment: 0,
        source: "AgADBAADbig-photo".into(),
    };
    let permanent = |result: Result<_, FetchError>| match result {
        Err(FetchError::Permanent(reason)) => reason,
        other => panic!("expected a permanent failure, got {other:?}"),
    };
    let temporary = |result: Result<_, FetchError>| match result {
        Err(FetchError::Temporary(reason)) => reason,
        other => panic!("expected a temporary failure, got {other:?}"),
    };

    // getFile announces 11 bytes, over max_file_bytes.
    assert!(permanent(fetcher.fetch(&photo).await).contains("max_file_bytes"));
    // The Bot API refuses the file.
    for description in [
        "Bad Request: file is too big",
        "Bad Request: file not found",
    ] {
        fake.lock().unwrap().get_file_replies = VecDeque::from([(
            400,
            json!({ "ok": false, "error_code": 400, "description": description }),
        )]);
        permanent(fetcher.fetch(&photo).await);
    }
    // Telegram asks to slow down: later.
    fake.lock().unwrap().get_file_replies = VecDeque::from([(
        429,
        json!({ "ok": false, "error_code": 429,
                "description": "Too Many Requests: retry after 1",
                "parameters": { "retry_after": 1 } }),
    )]);
    temporary(fetcher.fetch(&photo).await);

    // Within the limit, the file server's 5xx and a download slower than
    // the request timeout are temporary; its 404 is permanent.
    let (connector, _) =
        webhook_with_media(&sink, &files, addr, "request_timeout_secs = 1\n").await;
    let fetcher = connector.media().unwrap();
    fake.lock().unwrap().file_status = Some(502);
    temporary(fetcher.fetch(&photo).await);
    fake.lock().unwrap().file_status = Some(404);
    permanent(fetcher.fetch(&photo).await);
    {
        let mut fake = fake.lock().unwrap();
        fake.file_status = None;
        fake.file_delay = Duration::from_secs(3);
    }
    assert!(temporary(fetcher.fetch(&photo).await).contains("timed out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_messages_it_cannot_read_are_dead_letters_never_ignored() {
    let fake: Shared = Default::default();
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let (connector, _) = webhook_channel(&sink, &files, addr, "").await;
    let hook = connector.webhook().unwrap();

    for text in ["123", "null", "{}"] {
        let body = format!(
            r#"{{"update_id":500,"message":{{"message_id":500,"date":1765000000,"chat":{{"id":559,"type":"private"}},"from":{{"id":559,"is_bot":false,"first_name":"E"}},"text":{text}}}}}"#
        );
        let before = sink.entries().len();
        let response = hook
            .handle(webhook_request(body.as_bytes(), Some("s3cret-Token_1")))
            .await;
        // Answered 200 so Telegram does not hold back later updates.
        assert_eq!(response.status(), http::StatusCode::OK, "text: {text}");
        let answer: Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(answer["dead_lettered"], "unreadable_message");
        let entries = sink.entries();
        assert_eq!(entries.len(), before + 1, "text: {text}: {entries:?}");
        let Some(LogEntry::DeadLetter(dead)) = entries.last() else {
            panic!("text: {text}: {entries:?}")
        };
        assert_eq!(dead.reason, "unreadable_message");
        assert_eq!(dead.raw_payload, body.as_bytes(), "the update as sent");
        assert_eq!(dead.channel_id, "tg-hook");
        assert_eq!(
            dead.channel_kind,
            omni_proto::v1::ChannelKind::Telegram as i32
        );
    }
    assert!(events(&sink).is_empty());

    // A service message (a member joining a group) says nothing a
    // customer wrote: answered 200 and counted, neither an event nor a
    // dead letter, so a busy group does not flood the dead-letter topic.
    let before = sink.entries().len();
    let joined = br#"{"update_id":502,"message":{"message_id":502,"date":1765000000,"chat":{"id":-5,"type":"group","title":"G"},"from":{"id":559,"is_bot":false,"first_name":"E"},"new_chat_members":[{"id":560,"is_bot":false,"first_name":"F"}]}}"#;
    let response = hook
        .handle(webhook_request(joined, Some("s3cret-Token_1")))
        .await;
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(sink.entries().len(), before);

    // Valid JSON that is not an update: 400.
    let before = sink.entries().len();
    let response = hook
        .handle(webhook_request(b"[1, 2]", Some("s3cret-Token_1")))
        .await;
    assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
    let entries = sink.entries();
    assert_eq!(entries.len(), before + 1);
    let Some(LogEntry::DeadLetter(dead)) = entries.last() else {
        panic!("{entries:?}")
    };
    assert_eq!(dead.reason, "invalid_update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_dead_letters_messages_it_cannot_read() {
    let fake: Shared = Default::default();
    fake.lock().unwrap().updates = vec![
        json!({ "update_id": 500, "message": { "message_id": 500, "date": 1765000000,
                "chat": { "id": 559, "type": "private" },
                "from": { "id": 559, "is_bot": false, "first_name": "E" }, "text": 123 } }),
        json!({ "update_id": 501, "message": { "message_id": "nope" } }),
        payload("text.json"),
    ];
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let context = ChannelContext::new("tg-poll-bad", EventSender::new(Arc::new(sink.clone())));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(build(context, &polling_settings(&files, addr)).run(shutdown.clone()));
    wait_for("the offset", || {
        fake.lock()
            .unwrap()
            .calls
            .iter()
            .any(|(m, p)| m == "getupdates" && p["offset"] == 10001)
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let dead: Vec<_> = sink
        .entries()
        .into_iter()
        .filter_map(|e| match e {
            LogEntry::DeadLetter(d) => Some(*d),
            LogEntry::Event(_) | LogEntry::Outbound(_) => None,
        })
        .collect();
    assert_eq!(
        dead.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>(),
        ["unreadable_message", "invalid_message"]
    );
    assert_eq!(dead[0].metadata["update_id"], "500");
    // What the Bot API types could not read at all is kept whole.
    let raw: Value = serde_json::from_slice(&dead[1].raw_payload).unwrap();
    assert_eq!(raw["message"]["message_id"], "nope");
    assert_eq!(events(&sink).len(), 1);
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

    // A 429 goes back to the daemon's dispatcher with Telegram's wait; the
    // chat is held until then, and the dispatcher's retry goes through.
    let started = Instant::now();
    let error = outbound
        .deliver(&reply("It ships today."))
        .await
        .unwrap_err();
    assert!(
        matches!(error, DeliveryError::Temporary { .. }),
        "{error:?}"
    );
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
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
    assert!(
        matches!(error, DeliveryError::Temporary { .. }),
        "{error:?}"
    );
    assert_eq!(error.retry_after(), Some(Duration::from_secs(60)));
}

fn with_files(text: &str, attachments: Vec<Attachment>) -> ConversationEvent {
    let mut event = reply(text);
    event.content.as_mut().unwrap().attachments = attachments;
    event
}

fn attachment(name: &str, media_type: &str, stored: &StoredAttachment) -> Attachment {
    Attachment {
        name: name.into(),
        media_type: media_type.into(),
        size: stored.size,
        sha256: stored.sha256.clone(),
        uri: stored.uri.clone(),
    }
}

fn calls_to(fake: &Shared, wanted: &str) -> Vec<Value> {
    fake.lock()
        .unwrap()
        .calls
        .iter()
        .filter(|(m, _)| m == wanted)
        .map(|(_, p)| p.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_attachment_goes_as_a_document_captioned_with_the_text() {
    let fake: Shared = Default::default();
    // The upload is throttled once: handed back with its wait, sent again
    // by the dispatcher's retry.
    fake.lock().unwrap().send_replies = VecDeque::from([(
        429,
        json!({ "ok": false, "error_code": 429,
                "description": "Too Many Requests: retry after 1",
                "parameters": { "retry_after": 1 } }),
    )]);
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let (connector, context) =
        webhook_channel(&sink, &files, addr, "per_chat_interval_ms = 10\n").await;
    let pdf: Vec<u8> = (0..70_000u32).map(|i| (i * 13 % 256) as u8).collect();
    let stored = context.attachments.put(pdf.clone().into()).await.unwrap();
    let outbound = connector.outbound().unwrap();

    let started = Instant::now();
    let event = with_files(
        "Your invoice is attached.",
        vec![attachment(
            "../tmp/invoice 7781.pdf",
            "application/pdf",
            &stored,
        )],
    );
    let error = outbound.deliver(&event).await.unwrap_err();
    assert_eq!(
        error.retry_after(),
        Some(Duration::from_secs(1)),
        "{error:?}"
    );
    let delivered = outbound.deliver(&event).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited out retry_after"
    );
    assert_eq!(delivered.provider_message_id, "1111111:5001");
    assert!(
        calls_to(&fake, "sendmessage").is_empty(),
        "the text is the caption"
    );
    let documents = calls_to(&fake, "senddocument");
    assert_eq!(documents.len(), 2, "{documents:?}");
    assert_eq!(documents[1]["chat_id"], "1111111");
    assert_eq!(documents[1]["caption"], "Your invoice is attached.");
    assert_eq!(documents[1]["reply_parameters"]["message_id"], 1365);
    let uploads = fake.lock().unwrap().uploads.clone();
    assert_eq!(uploads.len(), 2);
    let upload = &uploads[1];
    assert_eq!(upload.method, "senddocument");
    assert_eq!(
        documents[1]["document"],
        format!("attach://{}", upload.field),
        "the document field names the uploaded part"
    );
    assert_eq!(upload.file_name, "invoice 7781.pdf");
    assert_eq!(upload.bytes, pdf, "the stored bytes arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_attachments_follow_the_text_photos_as_photos() {
    let fake: Shared = Default::default();
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let (connector, context) =
        webhook_channel(&sink, &files, addr, "per_chat_interval_ms = 10\n").await;
    let png = b"\x89PNG\r\n\x1a\n not really a png".to_vec();
    let csv = b"order,status\r\n7781,shipped\r\n".to_vec();
    let stored_png = context.attachments.put(png.clone().into()).await.unwrap();
    let stored_csv = context.attachments.put(csv.clone().into()).await.unwrap();
    let outbound = connector.outbound().unwrap();

    let event = with_files(
        "Here are the photo and the list.",
        vec![
            attachment("label.png", "image/png", &stored_png),
            attachment("orders.csv", "text/csv", &stored_csv),
        ],
    );
    let delivered = outbound.deliver(&event).await.unwrap();
    assert_eq!(
        delivered.provider_message_id, "1111111:4242",
        "the text went first"
    );
    let order: Vec<String> = fake
        .lock()
        .unwrap()
        .calls
        .iter()
        .map(|(m, _)| m.clone())
        .filter(|m| m.starts_with("send"))
        .collect();
    assert_eq!(order, ["sendmessage", "sendphoto", "senddocument"]);
    let text = &calls_to(&fake, "sendmessage")[0];
    assert_eq!(text["reply_parameters"]["message_id"], 1365);
    let photo = &calls_to(&fake, "sendphoto")[0];
    assert!(photo.get("caption").is_none());
    assert!(
        photo.get("reply_parameters").is_none(),
        "only the first replies"
    );
    let uploads = fake.lock().unwrap().uploads.clone();
    assert_eq!(
        uploads
            .iter()
            .map(|u| (u.method.as_str(), u.file_name.as_str(), u.bytes.clone()))
            .collect::<Vec<_>>(),
        [
            ("sendphoto", "label.png", png),
            ("senddocument", "orders.csv", csv)
        ]
    );

    // A text too long for a caption goes first, even with one file.
    fake.lock().unwrap().calls.clear();
    let long = "x".repeat(1025);
    let event = with_files(&long, vec![attachment("a.csv", "", &stored_csv)]);
    outbound.deliver(&event).await.unwrap();
    assert_eq!(calls_to(&fake, "sendmessage")[0]["text"], long);
    assert!(calls_to(&fake, "senddocument")[0].get("caption").is_none());

    // Files alone, without any text.
    fake.lock().unwrap().calls.clear();
    let event = with_files("", vec![attachment("a.csv", "", &stored_csv)]);
    let delivered = outbound.deliver(&event).await.unwrap();
    assert!(calls_to(&fake, "sendmessage").is_empty());
    assert_eq!(delivered.provider_message_id, "1111111:5004");
}

/// An attachment store whose disk fails.
#[derive(Debug)]
struct BrokenStore;

#[async_trait::async_trait]
impl AttachmentStore for BrokenStore {
    async fn put(&self, _: Bytes) -> Result<StoredAttachment, AttachmentError> {
        unreachable!("replies only read")
    }

    async fn get(&self, sha256: &str) -> Result<Option<Bytes>, AttachmentError> {
        Err(AttachmentError {
            path: sha256.into(),
            source: std::io::Error::other("disk on fire"),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_attachments_fail_before_anything_is_sent() {
    let fake: Shared = Default::default();
    let addr = start_fake(fake.clone()).await;
    let files = secret_files();
    let sink = MemorySink::default();
    let (connector, context) = webhook_channel(&sink, &files, addr, "").await;
    let stored = context
        .attachments
        .put(Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let outbound = connector.outbound().unwrap();
    let rejected = |error: DeliveryError| match error {
        DeliveryError::Rejected(reason) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    };
    let good = attachment("a.txt", "text/plain", &stored);

    let mut remote = good.clone();
    remote.uri = "http://169.254.169.254/latest/meta-data/".into();
    let error = outbound
        .deliver(&with_files("x", vec![good.clone(), remote]))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("never fetched"));

    let mut missing = good.clone();
    missing.uri = format!("omni-att://sha256/{}", "ab".repeat(32));
    missing.sha256.clear();
    let error = outbound
        .deliver(&with_files("x", vec![missing]))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("not in the attachment store"));

    let mut injected = good.clone();
    injected.name = "a.txt\r\nX-Evil: 1".into();
    let error = outbound
        .deliver(&with_files("x", vec![injected]))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("attachments[0].name"));

    let mut injected = good.clone();
    injected.media_type = "text/plain\r\nX-Evil: 1".into();
    let error = outbound
        .deliver(&with_files("x", vec![injected]))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("attachments[0].media_type"));

    let mut huge = good.clone();
    huge.size = 60_000_000;
    let error = outbound
        .deliver(&with_files("x", vec![huge]))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("upload limit"));

    // A store file whose content does not hash to its name.
    let dir = tempfile::tempdir().unwrap();
    let digest = &stored.sha256;
    std::fs::create_dir_all(dir.path().join(&digest[..2])).unwrap();
    std::fs::write(dir.path().join(&digest[..2]).join(digest), b"tampered").unwrap();
    let mut tampered = context.clone();
    tampered.attachments = Arc::new(FsAttachmentStore::new(dir.path()));
    let settings = format!(
        "mode = \"webhook\"\nbot_token = {{ file = {:?} }}\nsecret_token = {{ file = {:?} }}\napi_url = \"http://{addr}\"\n",
        files.token, files.secret
    );
    let error = build(tampered.clone(), &settings)
        .outbound()
        .unwrap()
        .deliver(&with_files("x", vec![good.clone()]))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("does not match its sha256"));

    // A store that cannot be read: retried later.
    let mut broken = context.clone();
    broken.attachments = Arc::new(BrokenStore);
    let error = build(broken, &settings)
        .outbound()
        .unwrap()
        .deliver(&with_files("x", vec![good]))
        .await
        .unwrap_err();
    assert!(
        matches!(error, DeliveryError::Temporary { reason: ref r, .. } if r.contains("disk on fire")),
        "{error:?}"
    );

    let sends: Vec<String> = fake
        .lock()
        .unwrap()
        .calls
        .iter()
        .map(|(m, _)| m.clone())
        .filter(|m| m.starts_with("send"))
        .collect();
    assert!(sends.is_empty(), "nothing half-sent: {sends:?}");
}
