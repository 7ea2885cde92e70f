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
//!   after a reload, and screenshots left to right and right to left.

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

    let reply = json!({
        "channelId": CHAT,
        "providerMessageId": "ticket-7/reply-1",
        "recipients": [{ "kind": "HANDLE_KIND_CHAT_VISITOR", "value": visitor, "scope": CHAT }],
        "content": { "text": "بله، موجود است." },
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
    let event_id = response.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
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
    let deployment = deployment("");
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
    screenshot("webchat-ltr.png", &tab.screenshot_png().await);
}
