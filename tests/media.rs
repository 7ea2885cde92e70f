//! Deferred media inside the real daemon: a Telegram photo whose file the
//! Bot API cannot serve yet is acknowledged and on the stream at once; the
//! file follows as an attachment-stored update once the server serves it,
//! and the timeline shows the stored file.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{get, post},
};
use omni_testkit::daemon::Deployment;
use serde_json::{Value, json};

const TOKEN: &str = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";
const SECRET: &str = "s3cret_token-1";
const PHOTO: &[u8] = b"\xff\xd8\xff\xe0 a jpeg, more or less";

/// A Bot API server whose file downloads fail with 502 until `serving`.
#[derive(Default)]
struct BotApi {
    serving: AtomicBool,
    downloads: AtomicUsize,
}

async fn get_file(body: String) -> Json<Value> {
    let file_id = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["file_id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Json(json!({
        "ok": true,
        "result": {
            "file_id": file_id,
            "file_unique_id": "AQADbig",
            "file_size": PHOTO.len(),
            "file_path": "photos/file_7.jpg",
        }
    }))
}

async fn download(State(api): State<Arc<BotApi>>, uri: axum::http::Uri) -> impl IntoResponse {
    // The client escapes the file path's slash.
    let path = uri.path().replace("%2F", "/");
    if !(path.starts_with("/file/bot") && path.ends_with("/photos/file_7.jpg")) {
        return (StatusCode::NOT_FOUND, b"not found".to_vec());
    }
    api.downloads.fetch_add(1, Ordering::SeqCst);
    if api.serving.load(Ordering::SeqCst) {
        (StatusCode::OK, PHOTO.to_vec())
    } else {
        (StatusCode::BAD_GATEWAY, b"bad gateway".to_vec())
    }
}

async fn serve(api: Arc<BotApi>) -> String {
    let app = Router::new()
        .route(&format!("/bot{TOKEN}/GetFile"), post(get_file))
        .route(&format!("/bot{TOKEN}/getFile"), post(get_file))
        // Downloads: `/file/bot<token>/<file_path>`.
        .fallback(get(download))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn records(deployment: &Deployment, kind: &str) -> Vec<Value> {
    deployment
        .tail("inbound")
        .into_iter()
        .filter(|r| r["value"]["channelId"] == "support-telegram" && r["value"]["kind"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_is_on_the_stream_at_once_and_its_file_follows() {
    let api = Arc::new(BotApi::default());
    let api_url = serve(api.clone()).await;
    let deployment = Deployment::new();
    for (name, value) in [("bot-token", TOKEN), ("tg-secret", SECRET)] {
        std::fs::write(deployment.path().join(name), value).unwrap();
    }
    deployment.write_channel(
        "support-telegram",
        &format!(
            "id = \"support-telegram\"\nkind = \"telegram\"\nmode = \"webhook\"\n\
             bot_token = {{ file = {:?} }}\nsecret_token = {{ file = {:?} }}\n\
             set_webhook = false\napi_url = {api_url:?}\n",
            deployment.path().join("bot-token").display().to_string(),
            deployment.path().join("tg-secret").display().to_string(),
        ),
    );
    let daemon = deployment.start();

    let update = include_str!("../crates/omni-telegram/tests/payloads/photo.json");
    let response = reqwest::Client::new()
        .post(daemon.url("/webhooks/support-telegram"))
        .header("content-type", "application/json")
        .header("x-telegram-bot-api-secret-token", SECRET)
        .body(update)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "acknowledged without the file");

    // The message is on the stream with the provider's reference, while
    // the Bot API still fails to serve the file.
    let messages = records(&deployment, "EVENT_KIND_MESSAGE");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0]["value"];
    let attachments = message["content"]["attachments"].as_array().unwrap();
    let index = attachments
        .iter()
        .position(|a| a["uri"].as_str().is_some_and(|u| u.starts_with("tg-file:")))
        .expect("an attachment announced by its file_id");
    assert!(attachments[index]["sha256"].is_null());
    for _ in 0..300 {
        if api.downloads.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        api.downloads.load(Ordering::SeqCst) > 0,
        "a download was tried: {}",
        daemon.stderr()
    );
    assert!(records(&deployment, "EVENT_KIND_ATTACHMENT_STORED").is_empty());

    // The server recovers: the retry stores the file and appends the
    // update, keyed like the message.
    api.serving.store(true, Ordering::SeqCst);
    let mut updates = Vec::new();
    for _ in 0..600 {
        updates = records(&deployment, "EVENT_KIND_ATTACHMENT_STORED");
        if !updates.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(updates.len(), 1, "one update: {}", daemon.stderr());
    assert_eq!(updates[0]["key"], messages[0]["key"]);
    let stored = &updates[0]["value"]["attachmentStored"];
    assert_eq!(stored["messageEventId"], message["eventId"]);
    assert_eq!(
        stored["attachmentIndex"].as_u64().unwrap_or(0),
        index as u64
    );
    let sha256 = stored["attachment"]["sha256"].as_str().unwrap().to_owned();
    assert_eq!(
        stored["attachment"]["uri"],
        format!("omni-att://sha256/{sha256}")
    );
    let file = deployment
        .data_dir()
        .join("attachments")
        .join(&sha256[..2])
        .join(&sha256);
    assert_eq!(std::fs::read(file).unwrap(), PHOTO);

    // The timeline shows the message with the stored file, and the update.
    let mut timeline = Vec::new();
    for _ in 0..300 {
        let output = deployment
            .command(&["timeline", "telegram:1111111"])
            .output()
            .unwrap();
        timeline = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        if timeline.iter().any(|e| !e["attachmentStored"].is_null()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entry = timeline
        .iter()
        .find(|e| e["timelineEventId"] == message["eventId"])
        .expect("the message's entry");
    let shown = &entry["message"]["event"]["content"]["attachments"][index];
    assert_eq!(shown["uri"], format!("omni-att://sha256/{sha256}"));
    assert_eq!(shown["name"], attachments[index]["name"]);
    let update = timeline
        .iter()
        .find(|e| !e["attachmentStored"].is_null())
        .expect("the attachment-stored entry");
    assert_eq!(update["timelineEventId"], updates[0]["value"]["eventId"]);
    assert_eq!(update["conversationId"], entry["conversationId"]);
}
