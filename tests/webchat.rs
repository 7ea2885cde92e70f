//! The web chat channel in the real daemon, spoken to as the widget does
//! (a WebSocket client sending the widget's frames):
//!
//! - a message is acknowledged with its event id once durable, and a
//!   resend after a reconnect appends nothing twice, also across a kill -9
//!   between the append and the acknowledgement;
//! - only the visitor's token resumes a visitor and reads its history;
//! - a reply posted through the API reaches every open tab of the visitor
//!   and the history of a later visit;
//! - identity hashes: refused when forged under `require_identity`, an
//!   unverified claim without it, and a verified email joins that
//!   customer's email history on one timeline;
//! - a page from an origin not allowed is refused with close code 4003;
//! - the widget itself, in headless Chromium: the demo page in Persian,
//!   a message acknowledged, an agent's reply in two tabs, the history
//!   after a reload, a PNG chosen with the paperclip and sent (the event
//!   names the stored file), the email for replies while away left and
//!   shown after a reload, and screenshots left to right and right to
//!   left.

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use omni_connector::signature::hmac_sha256;
use omni_testkit::daemon::{Daemon, Deployment};
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest},
};

const CHAT: &str = "site-chat";
const SECRET: &str = "chat-visitor-secret-7f3a";
const IDENTITY_SECRET: &str = "chat-identity-secret-19c2";
const API_TOKEN: &str = "chat-helpdesk-token-0123456789";
const SHOP: &str = "https://shop.example";

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

fn secret_file(deployment: &Deployment, name: &str, value: &str) -> String {
    let path = deployment.path().join(name);
    std::fs::write(&path, value).unwrap();
    format!("{{ file = {:?} }}", path.display().to_string())
}

/// A deployment with the chat channel; `extra` ends its channel file.
fn deployment(extra: &str) -> Deployment {
    let deployment = Deployment::new();
    deployment.enable_api(API_TOKEN);
    let text = format!(
        "id = \"{CHAT}\"\nkind = \"webchat\"\nsecret = {}\nidentity_secret = {}\n\
         allowed_origins = [\"{SHOP}\"]\n{extra}",
        secret_file(&deployment, "chat-secret", SECRET),
        secret_file(&deployment, "chat-identity-secret", IDENTITY_SECRET),
    );
    deployment.write_channel(CHAT, &text);
    deployment
}

async fn connect(daemon: &Daemon, origin: &str) -> Socket {
    let url = daemon
        .url(&format!("/channels/{CHAT}/socket"))
        .replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the chat upgrades the connection");
    socket
}

async fn send(socket: &mut Socket, frame: Value) {
    socket.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next frame; `Err(close code)` when the channel closes instead.
async fn next(socket: &mut Socket) -> Result<Value, u16> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), socket.next())
            .await
            .expect("a frame within 15 s");
        match message {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => {
                return Err(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => continue,
            other => panic!("the connection ended: {other:?}"),
        }
    }
}

/// `hello` and its `welcome` and `history`.
async fn hello(
    socket: &mut Socket,
    resume: Option<(&str, &str)>,
    identity: Value,
) -> (Value, Value) {
    let mut frame = json!({ "type": "hello", "locale": "fa" });
    if let Some((id, token)) = resume {
        frame["visitor_id"] = json!(id);
        frame["visitor_token"] = json!(token);
    }
    if !identity.is_null() {
        frame["identity"] = identity;
    }
    send(socket, frame).await;
    let welcome = next(socket).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let history = next(socket).await.expect("history");
    assert_eq!(history["type"], "history", "{history}");
    (welcome, history)
}

async fn message(socket: &mut Socket, client_message_id: &str, text: &str) -> Value {
    send(
        socket,
        json!({ "type": "message", "client_message_id": client_message_id, "text": text }),
    )
    .await;
    next(socket).await.expect("an answer")
}

fn inbound(deployment: &Deployment) -> Vec<Value> {
    deployment
        .channel_records("inbound", CHAT)
        .into_iter()
        .filter(|r| r["value"]["kind"] == "EVENT_KIND_MESSAGE")
        .collect()
}

fn signed(kind: &str, value: &str) -> Value {
    json!({
        "kind": kind,
        "value": value,
        "name": "Ana Lima",
        "hash": hex::encode(hmac_sha256(IDENTITY_SECRET.as_bytes(), &[format!("{kind}:{value}").as_bytes()])),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_acknowledged_once_durable_and_resends_append_nothing() {
    let deployment = deployment("");
    let mut daemon = deployment.start();
    let mut socket = connect(&daemon, SHOP).await;
    let (welcome, history) = hello(&mut socket, None, Value::Null).await;
    let visitor = welcome["visitor_id"].as_str().unwrap().to_owned();
    let token = welcome["visitor_token"].as_str().unwrap().to_owned();
    assert!(visitor.starts_with("v_"), "{welcome}");
    assert_eq!(welcome["identity"], "none");
    assert_eq!(history["messages"], json!([]));

    let ack = message(&mut socket, "m-1", "سلام، سفارشم کی می‌رسد؟").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["client_message_id"], "m-1");
    let event_id = ack["event_id"].as_str().unwrap().to_owned();
    // Durable before the ack: on the stream now.
    let stored = inbound(&deployment);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["value"]["eventId"], event_id.as_str());
    assert_eq!(
        stored[0]["value"]["content"]["text"],
        "سلام، سفارشم کی می‌رسد؟"
    );
    assert_eq!(
        stored[0]["value"]["sender"]["kind"],
        "HANDLE_KIND_CHAT_VISITOR"
    );
    assert_eq!(stored[0]["value"]["sender"]["value"], visitor.as_str());
    assert_eq!(stored[0]["value"]["sender"]["scope"], CHAT);

    // The widget's resend after a reconnect: the same event, nothing new.
    drop(socket);
    let mut socket = connect(&daemon, SHOP).await;
    let (again, history) = hello(&mut socket, Some((&visitor, &token)), Value::Null).await;
    assert_eq!(
        again["visitor_id"],
        visitor.as_str(),
        "resumed with the token"
    );
    assert_eq!(
        history["messages"][0]["event_id"],
        event_id.as_str(),
        "{history}"
    );
    assert_eq!(history["messages"][0]["client_message_id"], "m-1");
    let resent = message(&mut socket, "m-1", "سلام، سفارشم کی می‌رسد؟").await;
    assert_eq!(resent["event_id"], event_id.as_str());
    assert_eq!(inbound(&deployment).len(), 1);

    // kill -9 with messages sent and not yet acknowledged, then the
    // widget's resends: each message once.
    for i in 2..12 {
        send(
            &mut socket,
            json!({ "type": "message", "client_message_id": format!("m-{i}"), "text": format!("پیام {i}") }),
        )
        .await;
    }
    daemon.kill9();
    drop(socket);
    let daemon = deployment.start();
    let mut socket = connect(&daemon, SHOP).await;
    hello(&mut socket, Some((&visitor, &token)), Value::Null).await;
    for i in 2..12 {
        let ack = message(&mut socket, &format!("m-{i}"), &format!("پیام {i}")).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let stored = inbound(&deployment);
    let mut ids: Vec<&str> = stored
        .iter()
        .map(|r| r["value"]["providerMessageId"].as_str().unwrap())
        .collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 11, "every message on the stream: {ids:?}");
    // A message appended before the kill may be appended again by the
    // resend (same event id); the timeline has each once.
    let timeline = daemon
        .eventually(
            "every message on the timeline",
            Duration::from_secs(30),
            || {
                let entries: Vec<Value> = deployment
                    .tail("timeline")
                    .into_iter()
                    .filter(|r| r["value"]["message"]["event"]["channelId"] == CHAT)
                    .collect();
                (entries.len() >= 11).then_some(entries)
            },
        )
        .await;
    assert_eq!(
        timeline.len(),
        11,
        "stream had {total} copies, timeline each once"
    );

    // A guessed visitor id without its token reads nothing.
    let mut stranger = connect(&daemon, SHOP).await;
    let (other, history) = hello(
        &mut stranger,
        Some((&visitor, "00".repeat(32).as_str())),
        Value::Null,
    )
    .await;
    assert_ne!(other["visitor_id"], visitor.as_str());
    assert_eq!(history["messages"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_reach_every_open_tab_and_later_visits() {
    let deployment = deployment("");
    let daemon = deployment.start();
    let mut first = connect(&daemon, SHOP).await;
    let (welcome, _) = hello(&mut first, None, Value::Null).await;
    let visitor = welcome["visitor_id"].as_str().unwrap().to_owned();
    let token = welcome["visitor_token"].as_str().unwrap().to_owned();
    let mut second = connect(&daemon, SHOP).await;
    hello(&mut second, Some((&visitor, &token)), Value::Null).await;
    assert_eq!(
        message(&mut first, "q-1", "Is it in stock?").await["type"],
        "ack"
    );

    let event_id = reply(&daemon, &visitor, "بله، موجود است.", "ticket-7/reply-1").await;
    for tab in [&mut first, &mut second] {
        let pushed = next(tab).await.expect("the reply");
        assert_eq!(pushed["type"], "reply", "{pushed}");
        assert_eq!(pushed["event_id"], event_id.as_str());
        assert_eq!(pushed["text"], "بله، موجود است.");
    }
    // The visitor types and reads the reply: activities, not messages.
    send(&mut first, json!({ "type": "typing", "on": true })).await;
    send(&mut first, json!({ "type": "read", "event_id": event_id })).await;
    // A message the channel refuses for good is named, so the widget
    // gives it up.
    let refused = message(&mut first, "q-2", &"x".repeat(4001)).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "text_too_long");
    assert_eq!(refused["client_message_id"], "q-2");
    let activities = daemon
        .eventually(
            "typing and read on the stream",
            Duration::from_secs(10),
            || {
                let names: Vec<String> = deployment
                    .channel_records("inbound", CHAT)
                    .into_iter()
                    .filter(|r| r["value"]["kind"] == "EVENT_KIND_ACTIVITY")
                    .filter_map(|r| r["value"]["activity"]["name"].as_str().map(str::to_owned))
                    .collect();
                (names.len() >= 2).then_some(names)
            },
        )
        .await;
    assert_eq!(activities, ["typing", "read"]);

    drop((first, second));
    let mut later = connect(&daemon, SHOP).await;
    let (_, history) = hello(&mut later, Some((&visitor, &token)), Value::Null).await;
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{history}");
    assert_eq!(messages[1]["direction"], "outbound");
    assert_eq!(messages[1]["text"], "بله، موجود است.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_verified_claimed_or_refused_and_origins_checked() {
    // Without require_identity: a forged hash is an unverified claim.
    let deployment = deployment("");
    let daemon = deployment.start();
    let mut forged = connect(&daemon, SHOP).await;
    let mut identity = signed("email", "ana@example.com");
    identity["hash"] = json!("ab".repeat(32));
    let (welcome, _) = hello(&mut forged, None, identity).await;
    assert_eq!(welcome["identity"], "unverified");
    assert_eq!(message(&mut forged, "f-1", "hi").await["type"], "ack");
    let stored = inbound(&deployment);
    assert_eq!(
        stored[0]["value"]["senderIdentities"][0]["value"],
        "ana@example.com"
    );
    assert!(
        stored[0]["value"]["senderIdentities"][0]["verified"].is_null()
            || stored[0]["value"]["senderIdentities"][0]["verified"] == false
    );

    // A right hash: verified.
    let mut real = connect(&daemon, SHOP).await;
    let (welcome, _) = hello(&mut real, None, signed("email", "ana@example.com")).await;
    assert_eq!(welcome["identity"], "verified");
    assert_eq!(message(&mut real, "r-1", "my order").await["type"], "ack");
    let stored = inbound(&deployment);
    assert_eq!(stored[1]["value"]["senderIdentities"][0]["verified"], true);

    // The same address writing through the API channel (an email): one
    // customer, both messages on one timeline, by the verified claim.
    let api_message = json!({
        "external_id": "mail-1",
        "sender": { "kind": "email", "value": "ana@example.com" },
        "text": "Re: my order",
    })
    .to_string();
    let client = reqwest::Client::new();
    let response = omni_testkit::daemon::signed(
        &client,
        &daemon.url(&format!("/webhooks/{}", omni_testkit::daemon::CHANNEL)),
        api_message,
        omni_testkit::daemon::SECRET,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let chat_id = stored[1]["value"]["providerMessageId"]
        .as_str()
        .unwrap()
        .to_owned();
    daemon
        .eventually(
            "the chat and the email on one customer's timeline",
            Duration::from_secs(30),
            || {
                let timeline = deployment.tail("timeline");
                let customer_of = |id: &str| {
                    timeline
                        .iter()
                        .find(|r| r["value"]["message"]["event"]["providerMessageId"] == id)
                        .and_then(|r| r["value"]["customerId"].as_str().map(str::to_owned))
                };
                match (customer_of(&chat_id), customer_of("mail-1")) {
                    (Some(chat), Some(mail)) => {
                        assert_eq!(
                            chat, mail,
                            "the verified chat and the email are one customer"
                        );
                        Some(())
                    }
                    _ => None,
                }
            },
        )
        .await;

    // An origin not on the list is refused.
    let mut elsewhere = connect(&daemon, "https://evil.example").await;
    assert_eq!(next(&mut elsewhere).await, Err(4003));
    let metrics = daemon.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("omnid_chat_refusals_total")
                && l.contains("reason=\"origin_not_allowed\"")
                && l.ends_with(" 1")),
        "the refusal is counted:\n{metrics}"
    );
    drop(daemon);

    // With require_identity: forged and missing hashes are refused.
    let strict = self::deployment("require_identity = true\n");
    let daemon = strict.start();
    let mut forged = connect(&daemon, SHOP).await;
    let mut identity = signed("email", "ana@example.com");
    identity["hash"] = json!("ab".repeat(32));
    send(
        &mut forged,
        json!({ "type": "hello", "identity": identity }),
    )
    .await;
    assert_eq!(next(&mut forged).await, Err(4001));
    let mut anonymous = connect(&daemon, SHOP).await;
    send(&mut anonymous, json!({ "type": "hello" })).await;
    assert_eq!(next(&mut anonymous).await, Err(4001));
    let mut signed_in = connect(&daemon, SHOP).await;
    let (welcome, _) = hello(&mut signed_in, None, signed("email", "ana@example.com")).await;
    assert_eq!(welcome["identity"], "verified");
}

/// Posts an agent's reply to `visitor` through the API; its event id.
async fn reply(daemon: &Daemon, visitor: &str, text: &str, id: &str) -> String {
    let reply = json!({
        "channelId": CHAT,
        "providerMessageId": id,
        "recipients": [{ "kind": "HANDLE_KIND_CHAT_VISITOR", "value": visitor, "scope": CHAT }],
        "content": { "text": text },
    });
    let response = reqwest::Client::new()
        .post(daemon.url("/v1/outbound"))
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/json")
        .body(reply.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Delivery statuses of the chat's replies, by provider status.
fn chat_statuses(deployment: &Deployment) -> Vec<String> {
    deployment
        .channel_records("inbound", CHAT)
        .into_iter()
        .filter(|r| r["value"]["kind"] == "EVENT_KIND_DELIVERY_STATUS")
        .map(|r| {
            r["value"]["delivery"]["providerStatus"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_the_visitor_misses_is_emailed_once_across_a_kill() {
    let smtp = omni_testkit::SmtpSink::start();
    let deployment = deployment(
        "[offline_email]\nchannel = \"support-mail\"\nafter_secs = 3\n\
         subject = \"Your chat with Acme\"\n",
    );
    deployment.write_channel(
        "support-mail",
        &format!(
            "id = \"support-mail\"\nkind = \"email\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\n\
             tls = \"none\"\nfrom = \"Acme Support <support@acme.example>\"\ntimeout_secs = 5\n",
            smtp.port()
        ),
    );
    let mut daemon = deployment.start();

    // Ana leaves her address and a message, then closes the tab.
    let mut ana = connect(&daemon, SHOP).await;
    let (welcome, _) = hello(&mut ana, None, Value::Null).await;
    assert!(welcome.get("contact_email").is_none(), "{welcome}");
    assert_eq!(welcome["email_replies"], true, "the widget offers its form");
    let ana_id = welcome["visitor_id"].as_str().unwrap().to_owned();
    let ana_token = welcome["visitor_token"].as_str().unwrap().to_owned();
    send(
        &mut ana,
        json!({ "type": "contact", "email": "not an address" }),
    )
    .await;
    let refused = next(&mut ana).await.unwrap();
    assert_eq!(refused["code"], "invalid_email", "{refused}");
    send(
        &mut ana,
        json!({ "type": "contact", "email": " Ana.Lima@Example.COM" }),
    )
    .await;
    let saved = next(&mut ana).await.unwrap();
    assert_eq!(
        saved,
        json!({ "type": "contact", "email": "ana.lima@example.com" })
    );
    let ack = message(&mut ana, "a-1", "Is the blue kettle back in stock?").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    drop(ana);
    // Her message carries the address as an unverified claim.
    let stored = inbound(&deployment);
    let claims = &stored[0]["value"]["senderIdentities"];
    assert_eq!(claims[0]["kind"], "HANDLE_KIND_EMAIL", "{claims}");
    assert_eq!(claims[0]["value"], "ana.lima@example.com");
    assert!(claims[0]["verified"].as_bool() != Some(true), "{claims}");

    // Sara, signed in by email, will come back and read hers in time.
    let mut sara = connect(&daemon, SHOP).await;
    let (welcome, _) = hello(&mut sara, None, signed("email", "sara@shop.example")).await;
    assert_eq!(welcome["contact_email"], "sara@shop.example", "{welcome}");
    let sara_id = welcome["visitor_id"].as_str().unwrap().to_owned();
    let sara_token = welcome["visitor_token"].as_str().unwrap().to_owned();
    drop(sara);

    // Replies to both while neither has a tab open; the daemon is killed
    // with both queued for email.
    let to_ana = reply(&daemon, &ana_id, "Yes, it is back: 4 left.", "r-ana").await;
    let to_sara = reply(&daemon, &sara_id, "Your refund is on its way.", "r-sara").await;
    daemon
        .eventually(
            "both replies stored for the next visit",
            Duration::from_secs(20),
            || {
                let stored = chat_statuses(&deployment)
                    .iter()
                    .filter(|s| s.starts_with("stored for the visitor"))
                    .count();
                (stored == 2).then_some(())
            },
        )
        .await;
    daemon.kill9();
    assert!(
        smtp.received().is_empty(),
        "nothing emailed before its time"
    );
    let daemon = deployment.start();

    // Sara comes back and reads hers.
    let mut sara = connect(&daemon, SHOP).await;
    let (_, history) = hello(&mut sara, Some((&sara_id, &sara_token)), Value::Null).await;
    assert_eq!(
        history["messages"][0]["event_id"],
        to_sara.as_str(),
        "{history}"
    );
    send(&mut sara, json!({ "type": "read", "event_id": to_sara })).await;

    // Ana stays away: her reply is emailed, once.
    let received = smtp.wait_for(1, Duration::from_secs(30));
    assert_eq!(received[0].rcpt_to, ["ana.lima@example.com"]);
    let mail = String::from_utf8_lossy(&received[0].data);
    assert!(mail.contains("Subject: Your chat with Acme"), "{mail}");
    assert!(mail.contains("Yes, it is back: 4 left."), "{mail}");
    let emails: Vec<Value> = deployment
        .channel_records("outbound", "support-mail")
        .into_iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(
        emails[0]["providerMessageId"],
        format!("webchat/{CHAT}/{to_ana}").as_str()
    );
    // A restart finds nothing more to send, and Sara's stays unsent.
    drop(daemon);
    let daemon = deployment.start();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(smtp.received().len(), 1, "emailed once, and only Ana's");
    let mut ana = connect(&daemon, SHOP).await;
    let (welcome, history) = hello(&mut ana, Some((&ana_id, &ana_token)), Value::Null).await;
    assert_eq!(welcome["contact_email"], "ana.lima@example.com");
    assert_eq!(
        history["messages"][1]["event_id"],
        to_ana.as_str(),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_shares_one_message_budget() {
    let deployment = deployment("messages_per_minute = 2\nmessages_per_minute_per_address = 3\n");
    let daemon = deployment.start();
    let mut first = connect(&daemon, SHOP).await;
    hello(&mut first, None, Value::Null).await;
    let mut second = connect(&daemon, SHOP).await;
    hello(&mut second, None, Value::Null).await;
    for id in ["f-1", "f-2"] {
        assert_eq!(message(&mut first, id, "hello").await["type"], "ack");
    }
    // Another visitor from the same address: one more, then refused.
    assert_eq!(message(&mut second, "s-1", "hi").await["type"], "ack");
    let refused = message(&mut second, "s-2", "hi again").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited");
    assert_eq!(refused["client_message_id"], "s-2");
    assert_eq!(inbound(&deployment).len(), 3);
}

/// A real 2x2 PNG (blue pixels), as a visitor's photo.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x02\x00\x00\x00\x02\x08\x02\
    \x00\x00\x00\xfd\xd4\x9a\x73\x00\x00\x00\x10IDAT\x78\xda\x63\x50\x09\x3c\x0e\x44\x0c\x10\x0a\
    \x00\x20\x12\x04\xf1\x5a\xa1\x06\x93\x00\x00\x00\x00IEND\xae\x42\x60\x82";

/// A protobuf `uint64` in JSON: a string, or a number from older writers.
fn json_u64(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

/// Types `email` into the widget's "leave your email" field and presses
/// its save button.
async fn leave_email(tab: &omni_testkit::browser::Tab, email: &str) {
    tab.execute(
        "const input = document.querySelector('.omnid-chat__contact-input');
         input.value = arguments[0];
         input.dispatchEvent(new Event('input', { bubbles: true }));
         document.querySelector('.omnid-chat__contact-save').click();
         return true",
        vec![json!(email)],
    )
    .await;
}

/// Where screenshots go: `OMNID_SCREENSHOT_DIR` (to refresh the ones in
/// docs/), else a temporary directory.
fn screenshot(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = std::env::var("OMNID_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    std::fs::write(dir.join(name), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_widget_in_chromium_sends_receives_and_reloads_its_history() {
    use omni_testkit::browser::Browser;
    // Replies are emailed to visitors who are away, so the widget offers
    // its address form (no reply here stays unread long enough).
    let deployment = deployment("[offline_email]\nchannel = \"support-mail\"\n");
    let daemon = deployment.start();
    let browser = Browser::start().await;
    let tab = browser.tab().await;
    let demo = daemon.url(&format!("/channels/{CHAT}/demo"));
    tab.goto(&format!("{demo}?lang=fa")).await;
    let wait = Duration::from_secs(20);
    tab.wait_for(
        "the widget online",
        "window.OmnidChatWidget && OmnidChatWidget.status() === 'online'",
        wait,
    )
    .await;
    let dir = tab
        .execute(
            "return document.querySelector('[dir=rtl]') !== null",
            vec![],
        )
        .await;
    assert_eq!(dir, json!(true), "Persian lays the panel out right to left");

    let text = "سلام! سفارش ۱۲۳۴ من کی می‌رسد؟";
    tab.execute(
        "OmnidChatWidget.send(arguments[0]); return true",
        vec![json!(text)],
    )
    .await;
    tab.wait_for(
        "the message acknowledged",
        "OmnidChatWidget.messages().some(m => m.direction === 'inbound' && m.state === 'acked')",
        wait,
    )
    .await;
    let stored = inbound(&deployment);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]["value"]["content"]["text"], text,
        "the Persian text, as typed"
    );
    let visitor = stored[0]["value"]["sender"]["value"]
        .as_str()
        .unwrap()
        .to_owned();

    // A second tab of the same browser is the same visitor.
    let second = browser.new_tab().await;
    second.goto(&format!("{demo}?lang=fa")).await;
    second
        .wait_for(
            "the second tab online",
            "window.OmnidChatWidget && OmnidChatWidget.status() === 'online'",
            wait,
        )
        .await;
    let answer = "سلام! فردا تحویل داده می‌شود.";
    let event_id = reply(&daemon, &visitor, answer, "ticket-9/reply-1").await;
    let shown = format!(
        "OmnidChatWidget.messages().some(m => m.direction === 'outbound' && m.event_id === '{event_id}')"
    );
    tab.wait_for("the reply in the first tab", &shown, wait)
        .await;
    second
        .wait_for("the reply in the second tab", &shown, wait)
        .await;
    screenshot("webchat-rtl.png", &tab.screenshot_png().await);

    // After a reload the history has both, once each.
    tab.reload().await;
    tab.wait_for("the history after a reload", &shown, wait)
        .await;
    let messages = tab
        .execute("return OmnidChatWidget.messages()", vec![])
        .await;
    let messages = messages.as_array().unwrap();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["text"], text);
    assert_eq!(messages[1]["text"], answer);

    // Left to right in English.
    tab.goto(&format!("{demo}?lang=en")).await;
    tab.wait_for(
        "the widget online",
        "window.OmnidChatWidget && OmnidChatWidget.status() === 'online'",
        wait,
    )
    .await;
    tab.execute(
        "OmnidChatWidget.send('Thanks! Can I change the address?'); return true",
        vec![],
    )
    .await;
    tab.wait_for(
        "the English message acknowledged",
        "OmnidChatWidget.messages().filter(m => m.direction === 'inbound' && m.state === 'acked').length === 2",
        wait,
    )
    .await;

    // A photo: chosen in the paperclip's file input, uploaded at once (a
    // chip above the text box), then sent with a caption by the send
    // button. The event names the stored file by its digest.
    let files = tempfile::tempdir().unwrap();
    let photo = files.path().join("label photo.png");
    std::fs::write(&photo, PNG).unwrap();
    tab.choose_files(".omnid-chat__picker", &[photo.as_path()])
        .await;
    let uploaded = tab
        .wait_for(
            "the photo uploaded",
            "OmnidChatWidget.pendingFiles().length === 1 && OmnidChatWidget.pendingFiles()[0].state === 'ready' && OmnidChatWidget.pendingFiles()[0]",
            wait,
        )
        .await;
    let digest = omni_testkit::meta::sha256_hex(PNG);
    assert_eq!(uploaded["id"], digest.as_str(), "{uploaded}");
    assert_eq!(
        tab.execute(
            "return Array.from(document.querySelectorAll('.omnid-chat__pending .omnid-chat__chip-name'), n => n.textContent)",
            vec![],
        )
        .await,
        json!(["label photo.png"]),
        "a chip above the text box"
    );
    let caption = "Here is the label, it came torn.";
    tab.execute(
        "document.querySelector('.omnid-chat__input').value = arguments[0];
         document.querySelector('.omnid-chat__send').click();
         return true",
        vec![json!(caption)],
    )
    .await;
    tab.wait_for(
        "the photo's message acknowledged",
        "OmnidChatWidget.messages().filter(m => m.direction === 'inbound' && m.state === 'acked').length === 3",
        wait,
    )
    .await;
    let stored = inbound(&deployment);
    let sent = stored
        .iter()
        .find(|r| r["value"]["content"]["text"] == caption)
        .unwrap_or_else(|| panic!("the caption's event: {stored:?}"));
    let attachments = sent["value"]["content"]["attachments"]
        .as_array()
        .unwrap_or_else(|| panic!("attachments on the event: {sent}"));
    assert_eq!(attachments.len(), 1, "{sent}");
    assert_eq!(attachments[0]["mediaType"], "image/png", "{sent}");
    assert_eq!(attachments[0]["sha256"], digest.as_str(), "{sent}");
    assert_eq!(
        json_u64(&attachments[0]["size"]),
        Some(PNG.len() as u64),
        "{sent}"
    );
    assert_eq!(attachments[0]["name"], "label photo.png", "{sent}");
    let pending = tab
        .execute(
            "return [OmnidChatWidget.pendingFiles().length, document.querySelector('.omnid-chat__pending').hidden]",
            vec![],
        )
        .await;
    assert_eq!(pending, json!([0, true]), "the chips went with the message");

    // Email for replies while away: the form (no address yet), a refused
    // address shown as such, then a saved one (as the channel normalized
    // it) in place of the form.
    let contact_form = "!document.querySelector('.omnid-chat__contact').hidden \
         && !document.querySelector('.omnid-chat__contact-form').hidden \
         && document.querySelector('.omnid-chat__contact-saved').hidden";
    tab.wait_for("the email form", contact_form, wait).await;
    leave_email(&tab, "ana").await;
    let refused = tab
        .wait_for(
            "the refused address",
            "!document.querySelector('.omnid-chat__contact-error').hidden \
             && document.querySelector('.omnid-chat__contact-error').textContent",
            wait,
        )
        .await;
    assert_eq!(refused, "That doesn\u{2019}t look like an email address.");
    assert_eq!(
        tab.execute(
            "return document.querySelector('.omnid-chat__contact-input').getAttribute('aria-invalid')",
            vec![]
        )
        .await,
        "true"
    );
    leave_email(&tab, "  Ana@Example.COM ").await;
    let saved_line = "OmnidChatWidget.contactEmail() === 'ana@example.com' \
         && document.querySelector('.omnid-chat__contact-form').hidden \
         && !document.querySelector('.omnid-chat__contact-saved').hidden \
         && document.querySelector('.omnid-chat__contact-text').textContent";
    let saved = tab.wait_for("the saved address", saved_line, wait).await;
    assert_eq!(
        saved,
        "We\u{2019}ll email ana@example.com if you\u{2019}re away"
    );
    // "change" opens the form again, with the address in it.
    let reopened = tab
        .execute(
            "document.querySelector('.omnid-chat__contact-change').click();
             return [document.querySelector('.omnid-chat__contact-form').hidden,
                     document.querySelector('.omnid-chat__contact-input').value,
                     document.activeElement === document.querySelector('.omnid-chat__contact-input')]",
            vec![],
        )
        .await;
    assert_eq!(reopened, json!([false, "ana@example.com", true]));
    leave_email(&tab, "ana@example.com").await;
    tab.wait_for("the address saved again", saved_line, wait)
        .await;

    // A message the socket cannot carry waits in the outbox with its
    // file's id (and name, to show it), and goes with it on the next
    // connection: here the one after a reload.
    let receipt = files.path().join("receipt.png");
    std::fs::write(&receipt, PNG).unwrap();
    tab.choose_files(".omnid-chat__picker", &[receipt.as_path()])
        .await;
    tab.wait_for(
        "the receipt uploaded",
        "OmnidChatWidget.pendingFiles().length === 1 && OmnidChatWidget.pendingFiles()[0].state === 'ready'",
        wait,
    )
    .await;
    let outbox = tab
        .execute(
            "WebSocket.prototype.send = function () { throw new Error('the network is gone'); };
             document.querySelector('.omnid-chat__input').value = 'And the receipt.';
             document.querySelector('.omnid-chat__send').click();
             return JSON.parse(localStorage.getItem('omnid-chat:' + arguments[0])).outbox",
            vec![json!(CHAT)],
        )
        .await;
    assert_eq!(outbox.as_array().map(Vec::len), Some(1), "{outbox}");
    assert_eq!(outbox[0]["text"], "And the receipt.");
    assert_eq!(
        outbox[0]["attachments"],
        json!([{ "id": digest.as_str(), "name": "receipt.png", "media_type": "image/png", "size": PNG.len() }]),
    );

    // After a reload the outbox is resent, the welcome brings the address
    // (no form), and the history the photos' chips.
    tab.reload().await;
    tab.wait_for(
        "the saved address after a reload",
        &format!("window.OmnidChatWidget && OmnidChatWidget.status() === 'online' && {saved_line}"),
        wait,
    )
    .await;
    tab.wait_for(
        "the receipt's message acknowledged",
        "OmnidChatWidget.messages().some(m => m.text === 'And the receipt.' && m.state === 'acked')",
        wait,
    )
    .await;
    let stored = inbound(&deployment);
    let resent: Vec<&Value> = stored
        .iter()
        .filter(|r| r["value"]["content"]["text"] == "And the receipt.")
        .collect();
    assert_eq!(resent.len(), 1, "{stored:?}");
    let attachments = &resent[0]["value"]["content"]["attachments"];
    assert_eq!(attachments[0]["name"], "receipt.png", "{attachments}");
    assert_eq!(attachments[0]["sha256"], digest.as_str(), "{attachments}");
    let with_photo = tab
        .wait_for(
            "the photo in the history",
            &format!(
                "OmnidChatWidget.messages().find(m => m.text === {caption:?} && m.state === 'acked' && m.attachments.length)"
            ),
            wait,
        )
        .await;
    assert_eq!(
        with_photo["attachments"],
        json!([{ "name": "label photo.png", "media_type": "image/png", "size": PNG.len() }]),
        "{with_photo}"
    );
    assert_eq!(
        tab.execute(
            "return Array.from(document.querySelectorAll('.omnid-chat__list .omnid-chat__chip-name'), n => n.textContent)",
            vec![],
        )
        .await,
        json!(["label photo.png", "receipt.png"]),
        "the chips in the conversation"
    );
    screenshot("webchat-ltr.png", &tab.screenshot_png().await);
}
