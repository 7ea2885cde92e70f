//! The WeChat channels in the real daemon, against WeChat as
//! `omni_testkit::wechat` plays it (signatures and AES written
//! independently of the channel, and a local server for both platforms'
//! APIs):
//!
//! - `wechat_oa`: the URL check, the three message modes, a retry and a
//!   kill -9 landing each message once, files following as
//!   attachment-stored updates, hostile requests refused, replies through
//!   `message/custom/send`.
//! - `wecom_kf`: a callback triggering `kf/sync_msg` over many pages, a
//!   kill -9 mid-sync resuming from a durable cursor, polling without
//!   callbacks, replies through `kf/send_msg`.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use omni_testkit::{
    daemon::{Daemon, Deployment},
    wechat::{
        self, Endpoint, FakeWechat, OfficialAccount, WebhookPost, WecomApp, image_message,
        kf_enter_session, kf_servicer_text, kf_text, subscribe_event, text_message,
        unknown_message, voice_message,
    },
};
use serde_json::{Value, json};

const OA: &str = "wx-oa";
const APP_ID: &str = "wx1234567890abcdef";
const OA_TOKEN: &str = "oaServerToken2024";
const OA_KEY: &str = "u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocQ";
const APP_SECRET: &str = "0123456789abcdef0123456789abcdef";
/// The account's original id, WeChat's ToUserName.
const GH: &str = "gh_3ad31aa8e7f8";

/// An account in plaintext mode (no EncodingAESKey configured).
const PLAIN: &str = "wx-plain";
const PLAIN_APP_ID: &str = "wxfedcba0987654321";
const PLAIN_TOKEN: &str = "plainToken";

/// The sample account of WeChat's documentation: the last character of its
/// EncodingAESKey carries two bits beyond the 32 bytes, as most real keys
/// do, which a strict base64 decoder refuses.
const DOC: &str = "wx-doc";
const DOC_APP_ID: &str = "wx5823bf96d3bd56c7";
const DOC_TOKEN: &str = "QDG6eK";
const DOC_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

const KF: &str = "kf";
const CORP_ID: &str = "ww1234567890";
const KF_SECRET: &str = "kfSecret-0123456789abcdefghij";
const KF_TOKEN: &str = "kfCallbackToken";
const KF_KEY: &str = "sAjIhKtJ0RlgLKOmxgJTeKdNnFRIBXuDL7DxtpYlSXc";
const OPEN_KFID: &str = "wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw";

const API_TOKEN: &str = "wechat-helpdesk-token-0123456789";
const JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF a customer's photo, more or less";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn oa() -> OfficialAccount {
    OfficialAccount::new(APP_ID, OA_TOKEN, OA_KEY)
}

fn wecom() -> WecomApp {
    WecomApp::new(CORP_ID, KF_TOKEN, KF_KEY)
}

/// The fake API server, knowing both apps' secrets.
async fn fake() -> FakeWechat {
    let fake = FakeWechat::start().await;
    fake.add_official_account(APP_ID, APP_SECRET);
    fake.add_corp(CORP_ID, KF_SECRET);
    fake
}

/// `{ file = "..." }` of a new secret file in the deployment.
fn secret(deployment: &Deployment, name: &str, value: &str) -> String {
    let path = deployment.path().join(name);
    std::fs::write(&path, value).unwrap();
    format!("{{ file = {:?} }}", path.display().to_string())
}

/// The Official Account channel `wx-oa` (safe mode, with an AppSecret).
fn add_oa(deployment: &Deployment, fake: &FakeWechat) {
    let text = format!(
        "id = \"{OA}\"\nkind = \"wechat_oa\"\napp_id = \"{APP_ID}\"\ntoken = {}\n\
         encoding_aes_key = {}\napp_secret = {}\napi_base = \"{}\"\n",
        secret(deployment, "oa-token", OA_TOKEN),
        secret(deployment, "oa-aes-key", OA_KEY),
        secret(deployment, "oa-app-secret", APP_SECRET),
        fake.base_url()
    );
    deployment.write_channel(OA, &text);
}

/// `wx-plain`: plaintext only, receive only.
fn add_plain(deployment: &Deployment) {
    let text = format!(
        "id = \"{PLAIN}\"\nkind = \"wechat_oa\"\napp_id = \"{PLAIN_APP_ID}\"\ntoken = {}\n",
        secret(deployment, "plain-token", PLAIN_TOKEN),
    );
    deployment.write_channel(PLAIN, &text);
}

/// `wx-doc`: the documentation's sample account, receive only.
fn add_doc(deployment: &Deployment) {
    let text = format!(
        "id = \"{DOC}\"\nkind = \"wechat_oa\"\napp_id = \"{DOC_APP_ID}\"\ntoken = {}\n\
         encoding_aes_key = {}\n",
        secret(deployment, "doc-token", DOC_TOKEN),
        secret(deployment, "doc-aes-key", DOC_KEY),
    );
    deployment.write_channel(DOC, &text);
}

/// The customer-service channel `kf`, with `extra` settings.
fn add_kf(deployment: &Deployment, fake: &FakeWechat, extra: &str) {
    let text = format!(
        "id = \"{KF}\"\nkind = \"wecom_kf\"\ncorp_id = \"{CORP_ID}\"\nsecret = {}\ntoken = {}\n\
         encoding_aes_key = {}\napi_base = \"{}\"\n{extra}",
        secret(deployment, "kf-secret", KF_SECRET),
        secret(deployment, "kf-token", KF_TOKEN),
        secret(deployment, "kf-aes-key", KF_KEY),
        fake.base_url()
    );
    deployment.write_channel(KF, &text);
}

/// Posts what WeChat would; the status and body of the answer.
async fn post(
    client: &reqwest::Client,
    daemon: &Daemon,
    channel: &str,
    request: &WebhookPost,
) -> (u16, String) {
    let response = client
        .post(request.url(&daemon.url(&format!("/webhooks/{channel}"))))
        .header("content-type", "text/xml")
        .body(request.body.clone())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The status line's code for `request` posted with its real
/// Content-Length while only its first 64 KiB are sent: the daemon refuses
/// an oversized body from its Content-Length, before reading it, and
/// closes the connection, so a client still writing 10 MB may see the
/// connection break before it reads the 413.
async fn oversized_status(daemon: &Daemon, channel: &str, request: &WebhookPost) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = daemon.url("/");
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /webhooks/{channel}?{} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: text/xml\r\n\
         content-length: {}\r\n\r\n",
        request.query(),
        request.body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Ignored: the daemon may already have answered and closed.
    let _ = stream
        .write_all(&request.body.as_bytes()[..64 * 1024])
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// Inbound records from `channel` by provider message id.
fn inbound_by_id(deployment: &Deployment, channel: &str) -> BTreeMap<String, Vec<Value>> {
    let mut by_id: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in deployment.channel_records("inbound", channel) {
        if let Some(id) = record["value"]["providerMessageId"].as_str() {
            by_id.entry(id.to_owned()).or_default().push(record);
        }
    }
    by_id
}

/// Message entries on the timeline topic from `channel`, counted by
/// provider message id.
fn timeline_counts(deployment: &Deployment, channel: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in deployment.tail("timeline") {
        let event = &record["value"]["message"]["event"];
        if event["channelId"] == channel
            && let Some(id) = event["providerMessageId"].as_str()
        {
            *counts.entry(id.to_owned()).or_default() += 1;
        }
    }
    counts
}

fn openid(i: usize) -> String {
    format!("oUpF8uMuAJO_M2pxb1Q9zNjWeS{i:02}")
}

// ---------------------------------------------------------------------------
// Official Accounts
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_checks_are_answered_only_when_signed() {
    let fake = fake().await;
    let deployment = Deployment::new();
    add_oa(&deployment, &fake);
    add_doc(&deployment);
    add_kf(&deployment, &fake, "poll_interval_secs = 3600\n");
    let daemon = deployment.start();
    let client = client();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (status, content_type, response.text().await.unwrap())
        }
    };
    let endpoint = |channel: &str| daemon.url(&format!("/webhooks/{channel}"));

    // Official Account: the echostr back, as text.
    let check = oa().url_check("6984237652398412312");
    let (status, content_type, body) = get(check.url(&endpoint(OA))).await;
    assert_eq!((status, body.as_str()), (200, "6984237652398412312"));
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let forged = check.clone().set("signature", &"0".repeat(40));
    let (status, _, body) = get(forged.url(&endpoint(OA))).await;
    assert_eq!(status, 403, "a forged signature: {body}");
    assert!(!body.contains("6984237652398412312"));
    let other_token = OfficialAccount::new(APP_ID, "not-the-token", OA_KEY).url_check("77");
    let (status, _, _) = get(other_token.url(&endpoint(OA))).await;
    assert_eq!(status, 403, "signed with another token");
    let (status, _, _) = get(endpoint(OA)).await;
    assert!((400..500).contains(&status), "unsigned: {status}");

    // The documentation's sample key (trailing bits past 32 bytes).
    let doc = OfficialAccount::new(DOC_APP_ID, DOC_TOKEN, DOC_KEY);
    let (status, _, body) = get(doc.url_check("1616140317555161061").url(&endpoint(DOC))).await;
    assert_eq!((status, body.as_str()), (200, "1616140317555161061"));

    // WeCom: the echostr is encrypted; the answer is its plaintext.
    let check = wecom().url_check("1616140317555161061");
    let (status, content_type, body) = get(check.url(&endpoint(KF))).await;
    assert_eq!((status, body.as_str()), (200, "1616140317555161061"));
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let forged = check.clone().set("msg_signature", &"0".repeat(40));
    let (status, _, body) = get(forged.url(&endpoint(KF))).await;
    assert_eq!(status, 403, "a forged msg_signature: {body}");
    for channel in [OA, KF] {
        assert!(
            deployment.channel_records("inbound", channel).is_empty(),
            "a URL check stores nothing"
        );
        let dead = deployment.channel_records("deadletter", channel);
        assert!(dead.is_empty(), "{channel}: {dead:?}");
    }

    // Signed with the right token but encrypted under another key: not a
    // check WeChat made either (a dead letter of it is fine).
    let other_key = WecomApp::new(CORP_ID, KF_TOKEN, OA_KEY).url_check("5");
    let (status, _, _) = get(other_key.url(&endpoint(KF))).await;
    assert!((400..500).contains(&status), "another key: {status}");
    assert!(deployment.channel_records("inbound", KF).is_empty());

    // A safe-mode message under the documentation's key lands too.
    let xml = text_message(
        GH,
        &openid(1),
        wechat::unix_now(),
        "你好",
        6_000_000_000_000_000_001,
    );
    let (status, body) = post(&client, &daemon, DOC, &doc.safe(&xml)).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    assert_eq!(deployment.channel_records("inbound", DOC).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_safe_mode_text_lands_once_across_wechats_retry() {
    let fake = fake().await;
    let deployment = Deployment::new();
    add_oa(&deployment, &fake);
    let daemon = deployment.start();
    let client = client();

    let msg_id = 23_137_546_548_768_001u64;
    let xml = text_message(
        GH,
        &openid(7),
        wechat::unix_now(),
        "我的订单在哪里？",
        msg_id,
    );
    let request = oa().safe(&xml);
    let first = post(&client, &daemon, OA, &request).await;
    // WeChat gives up after 5 s and posts the identical request again.
    let retry = post(&client, &daemon, OA, &request).await;
    assert_eq!(first, (200, "success".to_owned()));
    assert_eq!(retry, (200, "success".to_owned()));

    let inbound = inbound_by_id(&deployment, OA);
    let copies = inbound
        .get(&msg_id.to_string())
        .unwrap_or_else(|| panic!("MsgId {msg_id} as the provider message id: {inbound:?}"));
    let ids: HashSet<&str> = copies
        .iter()
        .map(|r| r["headers"]["ce_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "one event id for both: {copies:?}");
    let event = &copies[0]["value"];
    assert_eq!(event["kind"], "EVENT_KIND_MESSAGE", "{event}");
    assert_eq!(event["channelKind"], "CHANNEL_KIND_WECHAT");
    assert_eq!(event["direction"], "DIRECTION_INBOUND");
    assert_eq!(event["content"]["text"], "我的订单在哪里？");
    assert_eq!(event["sender"]["kind"], "HANDLE_KIND_WECHAT_OPENID");
    assert_eq!(event["sender"]["value"], openid(7));
    assert_eq!(event["sender"]["scope"], APP_ID);

    let counts = daemon
        .eventually(
            "the message on the timeline",
            Duration::from_secs(20),
            || {
                let counts = timeline_counts(&deployment, OA);
                counts.contains_key(&msg_id.to_string()).then_some(counts)
            },
        )
        .await;
    // Give a second copy the time to show up if it were going to.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = timeline_counts(&deployment, OA).max(counts);
    assert_eq!(counts[&msg_id.to_string()], 1, "{counts:?}");
}

/// The guarantee: WeChat retries whatever it got no `success` for, and
/// every message ends up on the timeline exactly once; nothing answered
/// `success` is lost to a kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_burst_and_wechats_retries_leave_every_message_once() {
    const TASKS: usize = 16;
    const PER_TASK: usize = 40;
    let fake = fake().await;
    let deployment = Deployment::new();
    add_oa(&deployment, &fake);
    let mut daemon = deployment.start();
    let client = client();

    let account = oa();
    let now = wechat::unix_now();
    let burst: Vec<Vec<(String, WebhookPost)>> = (0..TASKS)
        .map(|task| {
            (0..PER_TASK)
                .map(|i| {
                    let msg_id = 24_000_000_000_000_000u64 + (task * 1000 + i) as u64;
                    let xml = text_message(
                        GH,
                        &openid(task % 8),
                        now,
                        &format!("burst {task}/{i}"),
                        msg_id,
                    );
                    (msg_id.to_string(), account.safe(&xml))
                })
                .collect()
        })
        .collect();

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let url = daemon.url(&format!("/webhooks/{OA}"));
    let mut senders = Vec::new();
    for messages in burst.clone() {
        let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            for (msg_id, request) in messages {
                let Ok(response) = client
                    .post(request.url(&url))
                    .body(request.body.clone())
                    .send()
                    .await
                else {
                    return; // the daemon is gone
                };
                let status = response.status();
                if let Ok(body) = response.text().await
                    && status == 200
                    && body == "success"
                {
                    acked.lock().unwrap().insert(msg_id);
                }
            }
        }));
    }
    daemon
        .eventually(
            "150 answers before the kill",
            Duration::from_secs(30),
            || (acked.lock().unwrap().len() >= 150).then_some(()),
        )
        .await;
    daemon.kill9();
    for sender in senders {
        sender.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() < TASKS * PER_TASK, "the kill came mid-burst");

    // Nothing answered `success` was lost.
    let durable = inbound_by_id(&deployment, OA);
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !durable.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );

    // WeChat retries every message of the burst on the restarted daemon.
    let daemon = deployment.start();
    let url = daemon.url(&format!("/webhooks/{OA}"));
    let mut retries = Vec::new();
    for messages in burst {
        let (client, url) = (client.clone(), url.clone());
        retries.push(tokio::spawn(async move {
            for (msg_id, request) in messages {
                let response = client
                    .post(request.url(&url))
                    .body(request.body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body = response.text().await.unwrap();
                assert_eq!(
                    (status.as_u16(), body.as_str()),
                    (200, "success"),
                    "{msg_id}"
                );
            }
        }));
    }
    for retry in retries {
        retry.await.unwrap();
    }

    // One event id per message on the inbound stream, and one timeline
    // entry each.
    for (id, copies) in inbound_by_id(&deployment, OA) {
        let ids: HashSet<&str> = copies
            .iter()
            .map(|r| r["headers"]["ce_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "MsgId {id} got {} event ids", ids.len());
    }
    let total = TASKS * PER_TASK;
    let counts = daemon
        .eventually(
            "every message on the timeline",
            Duration::from_secs(40),
            || {
                let counts = timeline_counts(&deployment, OA);
                (counts.len() >= total).then_some(counts)
            },
        )
        .await;
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "entries per MsgId: {doubled:?}");
    assert_eq!(counts.len(), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_lands_and_an_image_file_follows_from_media_get() {
    let fake = fake().await;
    fake.add_media("MEDIA_photo_1", "image/jpeg", JPEG);
    fake.add_media("MEDIA_voice_1", "audio/amr", b"#!AMR\n a short voice");
    let deployment = Deployment::new();
    add_oa(&deployment, &fake);
    add_plain(&deployment);
    let daemon = deployment.start();
    let client = client();
    let now = wechat::unix_now();

    // Plaintext mode, on the account without a key.
    let plain = OfficialAccount::new(PLAIN_APP_ID, PLAIN_TOKEN, OA_KEY);
    let xml = text_message(GH, &openid(1), now, "plain hello", 25_000_000_000_000_001);
    let answer = post(&client, &daemon, PLAIN, &plain.plaintext(&xml)).await;
    assert_eq!(answer, (200, "success".to_owned()));
    let landed = inbound_by_id(&deployment, PLAIN);
    let event = &landed["25000000000000001"][0]["value"];
    assert_eq!(event["content"]["text"], "plain hello");
    assert_eq!(event["sender"]["scope"], PLAIN_APP_ID);

    // Compatible mode: plain fields and <Encrypt> together.
    let xml = text_message(
        GH,
        &openid(2),
        now,
        "compatible hello",
        25_000_000_000_000_002,
    );
    let answer = post(&client, &daemon, OA, &oa().compatible(&xml)).await;
    assert_eq!(answer, (200, "success".to_owned()));

    // A voice message with WeChat's recognition, and a follow, in safe mode.
    let xml = voice_message(
        GH,
        &openid(3),
        now,
        "MEDIA_voice_1",
        "我要退货",
        25_000_000_000_000_003,
    );
    let answer = post(&client, &daemon, OA, &oa().safe(&xml)).await;
    assert_eq!(answer, (200, "success".to_owned()));
    let xml = subscribe_event(GH, &openid(4), now);
    let answer = post(&client, &daemon, OA, &oa().safe(&xml)).await;
    assert_eq!(answer, (200, "success".to_owned()));

    // An image: on the stream at once, with WeChat's media id.
    let pic_url = format!("{}/mmbiz_jpg/not-served", fake.base_url());
    let xml = image_message(
        GH,
        &openid(5),
        now,
        &pic_url,
        "MEDIA_photo_1",
        25_000_000_000_000_005,
    );
    let answer = post(&client, &daemon, OA, &oa().safe(&xml)).await;
    assert_eq!(answer, (200, "success".to_owned()));

    let landed = inbound_by_id(&deployment, OA);
    assert_eq!(
        landed["25000000000000002"][0]["value"]["content"]["text"],
        "compatible hello"
    );
    assert!(
        landed.contains_key("25000000000000003"),
        "the voice message: {landed:?}"
    );
    let follows: Vec<Value> = deployment
        .channel_records("inbound", OA)
        .into_iter()
        .filter(|r| r["value"]["kind"] == "EVENT_KIND_ACTIVITY")
        .collect();
    assert_eq!(follows.len(), 1, "the follow as an activity");
    assert_eq!(follows[0]["value"]["activity"]["name"], "subscribe");
    assert_eq!(follows[0]["value"]["sender"]["value"], openid(4));

    let image = landed["25000000000000005"][0].clone();
    let message = &image["value"];
    assert_eq!(message["kind"], "EVENT_KIND_MESSAGE");
    let attachments = message["content"]["attachments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(attachments.len(), 1, "{message}");

    // The file follows from media/get as an attachment-stored update.
    let updates = daemon
        .eventually(
            "the attachment-stored update",
            Duration::from_secs(30),
            || {
                let updates: Vec<Value> = deployment
                    .channel_records("inbound", OA)
                    .into_iter()
                    .filter(|r| {
                        r["value"]["kind"] == "EVENT_KIND_ATTACHMENT_STORED"
                            && r["value"]["attachmentStored"]["messageEventId"]
                                == message["eventId"]
                    })
                    .collect();
                (!updates.is_empty()).then_some(updates)
            },
        )
        .await;
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert!(
        fake.media_gets().contains(&"MEDIA_photo_1".to_owned()),
        "the file came from media/get: {:?}",
        fake.log()
    );
    assert_eq!(updates[0]["key"], image["key"]);
    let stored = &updates[0]["value"]["attachmentStored"];
    assert_eq!(stored["messageEventId"], message["eventId"]);
    assert_eq!(stored["attachmentIndex"].as_u64().unwrap_or(0), 0);
    let sha256 = stored["attachment"]["sha256"].as_str().unwrap();
    assert_eq!(
        stored["attachment"]["uri"],
        format!("omni-att://sha256/{sha256}")
    );
    let file = deployment
        .data_dir()
        .join("attachments")
        .join(&sha256[..2])
        .join(sha256);
    assert_eq!(std::fs::read(file).unwrap(), JPEG);
}

/// A ciphertext that decrypts to a plaintext with a zero padding byte.
fn badly_padded(xml: &str) -> String {
    let mut plain = vec![7u8; 16];
    plain.extend_from_slice(&(xml.len() as u32).to_be_bytes());
    plain.extend_from_slice(xml.as_bytes());
    plain.extend_from_slice(APP_ID.as_bytes());
    let pad = 32 - plain.len() % 32;
    plain.resize(plain.len() + pad, 0);
    wechat::encrypt_blocks(OA_KEY, plain)
}

/// A billion laughs, the expansions inside the message.
fn entity_bomb(msg_id: u64) -> String {
    let mut doctype = String::from("<!DOCTYPE xml [\n<!ENTITY lol0 \"lol\">\n");
    for i in 1..10 {
        let previous = format!("&lol{};", i - 1);
        doctype.push_str(&format!("<!ENTITY lol{i} \"{}\">\n", previous.repeat(10)));
    }
    doctype.push_str("]>\n");
    format!(
        "<?xml version=\"1.0\"?>\n{doctype}<xml><ToUserName><![CDATA[{GH}]]></ToUserName>\
         <FromUserName><![CDATA[{}]]></FromUserName><CreateTime>1</CreateTime>\
         <MsgType><![CDATA[text]]></MsgType><Content>&lol9;</Content><MsgId>{msg_id}</MsgId></xml>",
        openid(9)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_nothing_reaches_the_stream() {
    let fake = fake().await;
    let deployment = Deployment::new();
    add_oa(&deployment, &fake);
    add_plain(&deployment);
    let daemon = deployment.start();
    let client = client();
    let account = oa();
    let xml = text_message(
        GH,
        &openid(1),
        wechat::unix_now(),
        "hi",
        26_000_000_000_000_001,
    );

    // What each is answered, as docs/channels/wechat_oa.md documents it:
    // 403 for what is not signed with the token, 400 for what is signed
    // but not something WeChat would send, 413 for an oversized body.
    let foreign = wechat::encrypt(OA_KEY, "wx0000000000000000", &xml);
    let valid = wechat::encrypt(OA_KEY, APP_ID, &xml);
    let truncated = &valid[..valid.len() - 7];
    let bomb = entity_bomb(26_000_000_000_000_002);
    let mut huge = account.safe(&xml);
    huge.body = format!("{}{}", huge.body, " ".repeat(10 * 1024 * 1024));
    let cases: Vec<(&str, &str, WebhookPost, u16)> = vec![
        (
            "forged msg_signature",
            OA,
            account.safe(&xml).set("msg_signature", &"0".repeat(40)),
            403,
        ),
        (
            "forged plaintext signature",
            PLAIN,
            OfficialAccount::new(PLAIN_APP_ID, "guessed", OA_KEY).plaintext(&xml),
            403,
        ),
        (
            "another AppID's ciphertext",
            OA,
            account.safe_with(&xml, &foreign),
            400,
        ),
        (
            "bad padding",
            OA,
            account.safe_with(&xml, &badly_padded(&xml)),
            400,
        ),
        (
            "truncated base64",
            OA,
            account.safe_with(&xml, truncated),
            400,
        ),
        ("an entity bomb", OA, account.safe(&bomb), 400),
    ];
    for (what, channel, request, expected) in &cases {
        let (status, body) = post(&client, &daemon, channel, request).await;
        assert_eq!(status, *expected, "{what}: {body}");
    }
    assert_eq!(
        oversized_status(&daemon, OA, &huge).await,
        413,
        "a 10 MB body"
    );
    let put = client
        .put(daemon.url(&format!("/webhooks/{OA}")))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 405);
    let health = client.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    for channel in [OA, PLAIN] {
        let inbound = deployment.channel_records("inbound", channel);
        assert!(inbound.is_empty(), "{channel}: {inbound:?}");
    }

    // A signed message of a type WeChat may add later: answered, so WeChat
    // does not retry it, and kept as a dead letter.
    let xml = unknown_message(
        GH,
        &openid(2),
        wechat::unix_now(),
        "hologram",
        26_000_000_000_000_003,
    );
    let answer = post(&client, &daemon, OA, &account.safe(&xml)).await;
    assert_eq!(answer, (200, "success".to_owned()));
    let dead = deployment.channel_records("deadletter", OA);
    assert!(
        dead.iter()
            .any(|d| d["value"]["reason"] == "unknown_msg_type"),
        "a dead letter for the unknown MsgType: {dead:?}"
    );
    assert!(deployment.channel_records("inbound", OA).is_empty());
    let health = client.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

// ---------------------------------------------------------------------------
// WeChat Customer Service
// ---------------------------------------------------------------------------

/// `count` messages for [`OPEN_KFID`]: customer texts from 20 customers,
/// every 10th a servicer's text (origin 5), every 250th an
/// `enter_session` event. Msgids `msg-00000`...
fn kf_backlog(from: usize, count: usize) -> Vec<Value> {
    let now = wechat::unix_now();
    (from..from + count)
        .map(|i| {
            let msgid = format!("msg-{i:05}");
            let customer = format!("wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoA{:02}", i % 20);
            let at = now - 600 + (i as u64 % 600);
            if i % 250 == 0 {
                kf_enter_session(&msgid, OPEN_KFID, &customer, at, &format!("welcome-{i}"))
            } else if i % 10 == 5 {
                kf_servicer_text(
                    &msgid,
                    OPEN_KFID,
                    &customer,
                    "zhangsan",
                    at,
                    &format!("agent {i}"),
                )
            } else {
                kf_text(&msgid, OPEN_KFID, &customer, at, &format!("customer {i}"))
            }
        })
        .collect()
}

fn msgid(message: &Value) -> String {
    message["msgid"].as_str().unwrap().to_owned()
}

fn is_text(message: &Value) -> bool {
    message["msgtype"] == "text"
}

/// Every request after the first continues from the previous answer's
/// `next_cursor`, never from a cursor the fake did not issue, and the last
/// answer says there is no more.
fn assert_cursor_sequence_sane(requests: &[wechat::SyncRequest], from_scratch: bool) {
    let mut previous: Option<&wechat::SyncRequest> = None;
    for (i, request) in requests.iter().enumerate() {
        assert_eq!(request.open_kfid, OPEN_KFID, "request {i}");
        let position = request
            .position
            .unwrap_or_else(|| panic!("request {i}: a cursor the fake never issued: {request:?}"));
        if let Some(previous) = previous {
            let answer = previous.answer.as_ref().expect("answered before the next");
            assert!(
                position >= previous.position.unwrap_or(0),
                "request {i} went back: {previous:?} then {request:?}"
            );
            if answer.errcode == 0 {
                assert_eq!(
                    request.cursor, answer.next_cursor,
                    "request {i} continues from the last next_cursor"
                );
            }
        } else if from_scratch {
            assert!(
                request.cursor.is_empty(),
                "the first sync starts without a cursor"
            );
        }
        previous = Some(request);
    }
    // A poll still in flight when the requests were read (the next one,
    // a poll interval after the last page) has no answer yet.
    let last = requests
        .iter()
        .rev()
        .find_map(|r| r.answer.as_ref().map(|answer| (r, answer)))
        .expect("at least one answered sync_msg");
    assert!(!last.1.has_more, "{:?}", last.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_syncs_2500_messages_each_landing_once() {
    let fake = fake().await;
    let backlog = kf_backlog(0, 2500);
    fake.push_kf_messages(OPEN_KFID, backlog.clone());
    let deployment = Deployment::new();
    // No configured accounts and no polling to speak of: the callback
    // names the account and triggers the sync.
    add_kf(
        &deployment,
        &fake,
        "poll_interval_secs = 3600\nsync_limit = 200\n",
    );
    let daemon = deployment.start();
    let client = client();

    let callback_token = "ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR";
    let (status, _) = post(
        &client,
        &daemon,
        KF,
        &wecom().kf_msg_or_event(callback_token, OPEN_KFID),
    )
    .await;
    assert_eq!(status, 200);

    let wanted: HashSet<String> = backlog.iter().map(msgid).collect();
    let inbound = daemon
        .eventually(
            "all 2500 on the inbound stream",
            Duration::from_secs(45),
            || {
                let inbound = inbound_by_id(&deployment, KF);
                wanted
                    .iter()
                    .all(|id| inbound.contains_key(id))
                    .then_some(inbound)
            },
        )
        .await;
    let doubled: Vec<_> = inbound
        .iter()
        .filter(|(_, r)| r.len() != 1)
        .map(|(id, _)| id)
        .collect();
    assert!(doubled.is_empty(), "appended more than once: {doubled:?}");
    let first = &inbound["msg-00001"][0]["value"];
    assert_eq!(first["content"]["text"], "customer 1");
    assert_eq!(first["sender"]["kind"], "HANDLE_KIND_WECOM_EXTERNAL_USER");
    assert_eq!(first["sender"]["scope"], CORP_ID);
    assert_eq!(first["direction"], "DIRECTION_INBOUND");
    let servicer = &inbound["msg-00005"][0]["value"];
    assert_eq!(
        servicer["direction"], "DIRECTION_OUTBOUND",
        "origin 5: {servicer}"
    );
    assert_eq!(
        inbound["msg-00250"][0]["value"]["kind"],
        "EVENT_KIND_ACTIVITY"
    );

    let requests = fake.sync_requests();
    assert_cursor_sequence_sane(&requests, true);
    assert_eq!(
        requests[0].token, callback_token,
        "the callback's token goes with the sync"
    );
    assert!(
        requests.iter().all(|r| r.limit == 200),
        "sync_limit is the limit"
    );
    assert!(
        requests.len() >= 13,
        "2500 in pages of 200: {}",
        requests.len()
    );

    // Every text on the timeline once.
    let texts: Vec<String> = backlog.iter().filter(|m| is_text(m)).map(msgid).collect();
    let counts = daemon
        .eventually(
            "every text on the timeline",
            Duration::from_secs(40),
            || {
                let counts = timeline_counts(&deployment, KF);
                texts
                    .iter()
                    .all(|id| counts.contains_key(id))
                    .then_some(counts)
            },
        )
        .await;
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        doubled.is_empty(),
        "timeline entries per msgid: {doubled:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_sync_resumes_from_a_durable_cursor() {
    let fake = fake().await;
    let backlog = kf_backlog(0, 2500);
    fake.push_kf_messages(OPEN_KFID, backlog.clone());
    fake.set_sync_delay(Duration::from_millis(150));
    let deployment = Deployment::new();
    add_kf(
        &deployment,
        &fake,
        &format!("open_kfids = [\"{OPEN_KFID}\"]\npoll_interval_secs = 1\nsync_limit = 100\n"),
    );
    let mut daemon = deployment.start();

    daemon
        .eventually("six pages served", Duration::from_secs(30), || {
            (fake.sync_pages_served() >= 6).then_some(())
        })
        .await;
    daemon.kill9();
    // Let a request the dead daemon sent reach the fake's record.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_restart = fake.sync_requests().len();
    let durable: HashSet<String> = inbound_by_id(&deployment, KF).into_keys().collect();
    assert!(durable.len() < backlog.len(), "the kill came mid-sync");

    fake.set_sync_delay(Duration::from_millis(10));
    let daemon = deployment.start();
    let wanted: HashSet<String> = backlog.iter().map(msgid).collect();
    daemon
        .eventually(
            "all 2500 after the restart",
            Duration::from_secs(45),
            || {
                let inbound = inbound_by_id(&deployment, KF);
                wanted
                    .iter()
                    .all(|id| inbound.contains_key(id))
                    .then_some(())
            },
        )
        .await;

    // The first sync after the restart asked from a cursor whose every
    // earlier message was already durable.
    let requests = fake.sync_requests();
    let first = requests
        .get(before_restart)
        .unwrap_or_else(|| panic!("no sync after the restart: {requests:?}"));
    let position = first
        .position
        .unwrap_or_else(|| panic!("a cursor the fake never issued: {first:?}"));
    let missing: Vec<String> = backlog[..position.min(backlog.len())]
        .iter()
        .map(msgid)
        .filter(|id| !durable.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "resumed at {position}, but {} earlier messages were not durable, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    eprintln!(
        "durable before the restart: {}; resumed from position {position}",
        durable.len()
    );
    assert_cursor_sequence_sane(&requests[before_restart..], false);

    // Replayed messages keep their event ids; the timeline has each once.
    for (id, copies) in inbound_by_id(&deployment, KF) {
        let ids: HashSet<&str> = copies
            .iter()
            .map(|r| r["headers"]["ce_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "{id} got {} event ids", ids.len());
    }
    let texts: Vec<String> = backlog.iter().filter(|m| is_text(m)).map(msgid).collect();
    let counts = daemon
        .eventually(
            "every text on the timeline",
            Duration::from_secs(40),
            || {
                let counts = timeline_counts(&deployment, KF);
                texts
                    .iter()
                    .all(|id| counts.contains_key(id))
                    .then_some(counts)
            },
        )
        .await;
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        doubled.is_empty(),
        "timeline entries per msgid: {doubled:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_picks_up_messages_without_any_callback() {
    let fake = fake().await;
    fake.push_kf_messages(OPEN_KFID, kf_backlog(1, 5));
    let deployment = Deployment::new();
    add_kf(
        &deployment,
        &fake,
        &format!("open_kfids = [\"{OPEN_KFID}\"]\npoll_interval_secs = 1\n"),
    );
    let daemon = deployment.start();
    let landed = |from: usize, to: usize| {
        let inbound = inbound_by_id(&deployment, KF);
        (from..to).all(|i| inbound.contains_key(&format!("msg-{i:05}")))
    };
    daemon
        .eventually("the first five", Duration::from_secs(20), || {
            landed(1, 6).then_some(())
        })
        .await;

    // New messages, and still no callback.
    fake.push_kf_messages(OPEN_KFID, kf_backlog(6, 3));
    daemon
        .eventually("three more by polling", Duration::from_secs(10), || {
            landed(6, 9).then_some(())
        })
        .await;
    let inbound = inbound_by_id(&deployment, KF);
    assert!(
        inbound.values().all(|copies| copies.len() == 1),
        "{inbound:?}"
    );
    assert!(
        fake.sync_requests().iter().all(|r| r.token.is_empty()),
        "no callback token"
    );

    let metrics = daemon
        .eventually("the unread-age gauge", Duration::from_secs(15), || {
            let metrics = block_on(daemon.metrics());
            metrics
                .lines()
                .any(|l| {
                    l.starts_with("omnid_wecom_kf_unread_age_seconds{") && l.contains(OPEN_KFID)
                })
                .then_some(metrics)
        })
        .await;
    assert!(metrics.contains(&format!("channel=\"{KF}\"")), "{metrics}");
}

/// Runs a future to completion from inside a synchronous probe.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

async fn send_reply(client: &reqwest::Client, daemon: &Daemon, reply: &Value) -> String {
    let response = client
        .post(daemon.url("/v1/outbound"))
        .bearer_auth(API_TOKEN)
        .json(reply)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    assert_eq!(status, 202, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

/// The delivery status of the reply `event_id`, once appended.
async fn delivery(
    deployment: &Deployment,
    daemon: &Daemon,
    channel: &str,
    event_id: &str,
) -> Value {
    daemon
        .eventually("the delivery status", Duration::from_secs(30), || {
            deployment
                .channel_records("inbound", channel)
                .into_iter()
                .find(|r| {
                    r["value"]["kind"] == "EVENT_KIND_DELIVERY_STATUS"
                        && r["value"]["delivery"]["outboundEventId"] == event_id
                })
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_out_through_custom_send_and_kf_send_msg() {
    let fake = fake().await;
    let deployment = Deployment::new();
    deployment.enable_api(API_TOKEN);
    add_oa(&deployment, &fake);
    add_kf(&deployment, &fake, "poll_interval_secs = 3600\n");
    let daemon = deployment.start();
    let client = client();
    let customer = openid(3);

    // An Official Account reply: custom/send, then SENT.
    let reply = |id: &str, text: &str| {
        json!({
            "channelId": OA,
            "providerMessageId": id,
            "recipients": [{ "kind": "HANDLE_KIND_WECHAT_OPENID", "value": customer, "scope": APP_ID }],
            "content": { "text": text },
        })
    };
    let event_id = send_reply(
        &client,
        &daemon,
        &reply("ticket-1/reply-1", "您的订单今天发货。"),
    )
    .await;
    let status = delivery(&deployment, &daemon, OA, &event_id).await;
    assert_eq!(
        status["value"]["delivery"]["state"], "DELIVERY_STATE_SENT",
        "{status}"
    );
    let sent = fake.custom_sends();
    assert_eq!(
        sent,
        [
            json!({ "touser": customer, "msgtype": "text", "text": { "content": "您的订单今天发货。" } })
        ],
        "custom/send bodies; calls: {:?}",
        fake.log()
    );

    // Out of the 48-hour window: WeChat answers 45015, the reply fails
    // for good.
    fake.fail_always(Endpoint::CustomSend, 45015);
    let event_id = send_reply(&client, &daemon, &reply("ticket-1/reply-2", "还在吗？")).await;
    let status = delivery(&deployment, &daemon, OA, &event_id).await;
    let value = &status["value"]["delivery"];
    assert_eq!(value["state"], "DELIVERY_STATE_FAILED", "{status}");
    assert!(
        value["error"].as_str().is_some_and(|e| e.contains("45015")),
        "the error names WeChat's errcode: {status}"
    );
    fake.recover(Endpoint::CustomSend);

    // WeChat expired the access token: the channel fetches a new one and
    // the reply still goes out.
    let tokens_before = fake.token_calls();
    fake.expire_tokens();
    let event_id = send_reply(
        &client,
        &daemon,
        &reply("ticket-1/reply-3", "抱歉，久等了。"),
    )
    .await;
    let status = delivery(&deployment, &daemon, OA, &event_id).await;
    assert_eq!(
        status["value"]["delivery"]["state"], "DELIVERY_STATE_SENT",
        "after the token expired: {status}"
    );
    assert!(
        fake.token_calls() > tokens_before,
        "a new token was fetched"
    );
    assert_eq!(fake.custom_sends().len(), 3, "{:?}", fake.log());

    // The customer's photo, stored from media/get, goes back with a text:
    // uploaded with media/upload, then sent as an image after the text.
    fake.add_media("MEDIA_photo_2", "image/jpeg", JPEG);
    let xml = image_message(
        GH,
        &customer,
        wechat::unix_now(),
        &format!("{}/mmbiz_jpg/not-served", fake.base_url()),
        "MEDIA_photo_2",
        27_000_000_000_000_001,
    );
    let answer = post(&client, &daemon, OA, &oa().safe(&xml)).await;
    assert_eq!(answer, (200, "success".to_owned()));
    let stored = daemon
        .eventually("the photo stored", Duration::from_secs(30), || {
            deployment
                .channel_records("inbound", OA)
                .into_iter()
                .find(|r| r["value"]["attachmentStored"]["attachment"]["sha256"].is_string())
        })
        .await;
    let attachment = stored["value"]["attachmentStored"]["attachment"].clone();
    let mut with_file = reply("ticket-1/reply-4", "这是您发的照片。");
    with_file["content"]["attachments"] = json!([{
        "uri": attachment["uri"],
        "mediaType": "image/jpeg",
        "name": "photo.jpg",
        "size": JPEG.len(),
    }]);
    let event_id = send_reply(&client, &daemon, &with_file).await;
    let status = delivery(&deployment, &daemon, OA, &event_id).await;
    assert_eq!(
        status["value"]["delivery"]["state"], "DELIVERY_STATE_SENT",
        "{status}"
    );
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1, "{:?}", fake.log());
    assert_eq!(uploads[0].kind, "image");
    assert_eq!(uploads[0].bytes, JPEG);
    let sent = fake.custom_sends();
    assert_eq!(
        sent[3..],
        [
            json!({ "touser": customer, "msgtype": "text", "text": { "content": "这是您发的照片。" } }),
            json!({ "touser": customer, "msgtype": "image", "image": { "media_id": uploads[0].media_id } }),
        ]
    );

    // A customer-service reply: kf/send_msg to the account it came in on.
    let external_userid = "wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoA07";
    let kf_reply = json!({
        "channelId": KF,
        "providerMessageId": "ticket-2/reply-1",
        "recipients": [{
            "kind": "HANDLE_KIND_WECOM_EXTERNAL_USER", "value": external_userid, "scope": CORP_ID,
        }],
        "content": { "text": "客服为您服务" },
        "providerMetadata": { "open_kfid": OPEN_KFID },
    });
    // WeCom superseded the token (40014): refreshed, and sent.
    fake.invalidate_tokens();
    let event_id = send_reply(&client, &daemon, &kf_reply).await;
    let status = delivery(&deployment, &daemon, KF, &event_id).await;
    assert_eq!(
        status["value"]["delivery"]["state"], "DELIVERY_STATE_SENT",
        "{status}"
    );
    let sent = fake.kf_sends();
    assert_eq!(sent.len(), 1, "{:?}", fake.log());
    let body = &sent[0];
    assert_eq!(body["touser"], external_userid);
    assert_eq!(body["open_kfid"], OPEN_KFID);
    assert_eq!(body["msgtype"], "text");
    assert_eq!(body["text"], json!({ "content": "客服为您服务" }));
    assert_eq!(
        status["value"]["providerMessageId"].as_str(),
        fake.kf_sent_msgids().first().map(String::as_str),
        "the msgid WeCom answered is the provider message id: {status}"
    );

    // A welcome message: the enter_session event's code, through
    // send_msg_on_event.
    let mut welcome = kf_reply.clone();
    welcome["providerMessageId"] = json!("ticket-2/welcome");
    welcome["content"] = json!({ "text": "欢迎咨询" });
    welcome["providerMetadata"] = json!({ "open_kfid": OPEN_KFID, "welcome_code": "aaaaaa" });
    let event_id = send_reply(&client, &daemon, &welcome).await;
    let status = delivery(&deployment, &daemon, KF, &event_id).await;
    assert_eq!(
        status["value"]["delivery"]["state"], "DELIVERY_STATE_SENT",
        "{status}"
    );
    let sent = fake.kf_event_sends();
    assert_eq!(sent.len(), 1, "{:?}", fake.log());
    assert_eq!(sent[0]["code"], "aaaaaa");
    assert_eq!(sent[0]["msgtype"], "text");
    assert_eq!(sent[0]["text"], json!({ "content": "欢迎咨询" }));
    assert_eq!(fake.kf_sends().len(), 1, "not through send_msg");
}
