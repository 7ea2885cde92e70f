//! After-hours acknowledgements on every kind of channel, end to end: one
//! rule file, whose shop is never open, acknowledges each new conversation
//! in the customer's language (Persian, Chinese, Arabic, English by
//! default) and tags Arabic refund requests. Each test drives a real daemon
//! through a channel as its provider would (a real MIME email over Dovecot
//! IMAP, a Telegram Update to the webhook, a signed Twilio webhook) and
//! checks what the customer receives: the mail in the SMTP server, the
//! `sendMessage` to the Bot API, the message Twilio was asked to send. A
//! second message in a conversation is never acknowledged again.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    routing::post,
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use omni_testkit::{
    ALICE, Dovecot, SmtpSink,
    daemon::{Daemon, Deployment},
    twilio::{self, FakeTwilio},
    wechat::unix_now,
};
use serde_json::{Value, json};

const AFTER_HOURS_FA: &str =
    "پیام شما رسید. الان خارج از ساعت کاری هستیم و در اولین فرصت پاسخ می‌دهیم.";
const AFTER_HOURS_ZH: &str = "我们已收到您的消息。现在是非工作时间，我们会尽快回复您。";
const AFTER_HOURS_AR: &str = "وصلتنا رسالتك. نحن خارج ساعات العمل الآن وسنرد عليك في أقرب وقت.";
const AFTER_HOURS_EN: &str =
    "We got your message. We are closed right now and will answer as soon as we can.";

/// The rule book of every test. `[business_hours]` names no day, so every
/// moment is outside business hours. The refund phrase is written as an
/// admin on a Persian keyboard types Arabic (ی, ک and ه where Arabic has
/// ي, ك and ة); customers' spelling matches it through normalization.
const RULES: &str = r#"
name = "shop"
time_zone = "Asia/Tehran"
default_language = "en"

[business_hours]

[templates.after_hours]
fa = "پیام شما رسید. الان خارج از ساعت کاری هستیم و در اولین فرصت پاسخ می‌دهیم."
zh = "我们已收到您的消息。现在是非工作时间，我们会尽快回复您。"
ar = "وصلتنا رسالتك. نحن خارج ساعات العمل الآن وسنرد عليك في أقرب وقت."
en = "We got your message. We are closed right now and will answer as soon as we can."

[[rules]]
name = "refund"
match.keywords = ["*استرداد", "*استرجاع"]
match.phrases = ["فلوسی کامله"]
actions.tags = ["refund"]
actions.priority = "P1"

[[rules]]
name = "after-hours"
match.conversation = ["new", "reopened"]
match.hours = ["outside", "holiday"]
actions.acknowledge = "after_hours"
"#;

/// How long a message may take from the provider to the customer's reply.
const WITHIN: Duration = Duration::from_secs(60);

fn deployment() -> Deployment {
    let deployment = Deployment::new();
    deployment.write_rules("shop", RULES);
    deployment
}

/// Polls `check` until it answers, for at most [`WITHIN`]; panics with
/// `what` and the daemon's last log lines.
fn eventually<T>(daemon: &Daemon, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WITHIN:?}; daemon log (last lines):\n{}",
            daemon.last_lines(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the timeline topic holds the message entry of
/// `provider_message_id`. The relay appends a message's automated reply to
/// the outbound topic before it publishes the message's entries, so from
/// then on the outbound topic says whether that message was acknowledged.
fn wait_until_threaded(deployment: &Deployment, daemon: &Daemon, provider_message_id: &str) {
    eventually(
        daemon,
        &format!("{provider_message_id} on the timeline topic"),
        || {
            deployment
                .tail("timeline")
                .iter()
                .any(|r| r["value"]["message"]["event"]["providerMessageId"] == provider_message_id)
                .then_some(())
        },
    );
}

/// Waits until every reply on the outbound topic has its delivery status
/// (the dispatcher handed it to the provider), and returns the replies.
fn all_delivered(deployment: &Deployment, daemon: &Daemon) -> Vec<Value> {
    eventually(daemon, "a delivery status for every reply", || {
        let outbound = deployment.tail("outbound");
        let delivered: Vec<Value> = deployment
            .tail("inbound")
            .into_iter()
            .filter(|r| r["value"]["kind"] == "EVENT_KIND_DELIVERY_STATUS")
            .map(|r| r["value"]["delivery"]["outboundEventId"].clone())
            .collect();
        outbound
            .iter()
            .all(|reply| delivered.contains(&reply["value"]["eventId"]))
            .then_some(outbound)
    })
}

/// The `automatedReply` entries of a customer's timeline (the store's, via
/// `omnid timeline`).
fn automated_replies(deployment: &Deployment, handle: &str) -> Vec<Value> {
    deployment
        .timeline(handle)
        .into_iter()
        .filter_map(|e| e.get("automatedReply").cloned())
        .collect()
}

/// Asserts the customer's timeline holds exactly one acknowledgement, the
/// after-hours one in `language` with `text`.
fn assert_acknowledged_once(deployment: &Deployment, handle: &str, language: &str, text: &str) {
    let replies = automated_replies(deployment, handle);
    assert_eq!(replies.len(), 1, "{handle}: {replies:#?}");
    let reply = &replies[0];
    assert_eq!(
        reply["kind"], "AUTOMATED_REPLY_KIND_ACKNOWLEDGEMENT",
        "{reply}"
    );
    assert_eq!(reply["rule"], "after-hours", "{reply}");
    assert_eq!(reply["template"], "after_hours", "{reply}");
    assert_eq!(reply["language"], language, "{handle}: {reply}");
    assert_eq!(
        reply["outbound"]["content"]["text"], text,
        "{handle}: {reply}"
    );
    assert_eq!(
        reply["outbound"]["providerMetadata"]["auto_acknowledgement"],
        "true"
    );
}

// ---------------------------------------------------------------------------
// Email
// ---------------------------------------------------------------------------

const SUPPORT: &str = "support@acme.example";

/// A Persian customer's mail as Gmail writes it: multipart/alternative,
/// UTF-8 parts in base64, an encoded-word subject and name.
fn persian_email(message_id: &str, extra_headers: &str, subject: &str, text: &str) -> Vec<u8> {
    let html = format!("<div dir=\"rtl\">{text}</div>");
    format!(
        "MIME-Version: 1.0\r\nDate: Sun, 6 Dec 2026 23:41:07 +0330\r\n\
         Message-ID: <{message_id}>\r\n{extra_headers}\
         Subject: {}\r\nFrom: {} <maryam.ahmadi@gmail.example>\r\nTo: {SUPPORT}\r\n\
         Content-Type: multipart/alternative; boundary=\"000000000000a1b2c3d4e5f60718\"\r\n\r\n\
         --000000000000a1b2c3d4e5f60718\r\n\
         Content-Type: text/plain; charset=\"UTF-8\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {}\r\n--000000000000a1b2c3d4e5f60718\r\n\
         Content-Type: text/html; charset=\"UTF-8\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {}\r\n--000000000000a1b2c3d4e5f60718--\r\n",
        encoded_word(subject),
        encoded_word("مریم احمدی"),
        base64_lines(&format!("{text}\r\n")),
        base64_lines(&format!("{html}\r\n")),
    )
    .into_bytes()
}

/// A Chinese customer's mail as Foxmail writes it: one UTF-8 text part in
/// base64.
fn chinese_email(message_id: &str, subject: &str, text: &str) -> Vec<u8> {
    format!(
        "Date: Mon, 7 Dec 2026 04:12:44 +0800\r\nFrom: \"{}\" <wangfang@qq.example>\r\n\
         To: \"support\" <{SUPPORT}>\r\nSubject: {}\r\nX-Priority: 3\r\n\
         X-Mailer: Foxmail 7.2.25.254[cn]\r\nMime-Version: 1.0\r\nMessage-ID: <{message_id}>\r\n\
         Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
        encoded_word("王芳"),
        encoded_word(subject),
        base64_lines(&format!("{text}\r\n")),
    )
    .into_bytes()
}

/// An RFC 2047 encoded word (UTF-8, base64).
fn encoded_word(text: &str) -> String {
    format!("=?UTF-8?B?{}?=", STANDARD.encode(text))
}

/// Base64 in lines of 76 characters, as MIME wants it.
fn base64_lines(text: &str) -> String {
    let encoded = STANDARD.encode(text);
    encoded
        .as_bytes()
        .chunks(76)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// The header section of a raw message, unfolded, as (name, value).
fn headers(raw: &str) -> Vec<(String, String)> {
    let head = raw.split("\r\n\r\n").next().unwrap_or_default();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    fields
}

fn header(raw: &str, name: &str) -> Option<String> {
    headers(raw)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The text of a single-part `text/plain` message, decoded from its
/// transfer encoding (base64, quoted-printable, 7bit or 8bit).
fn plain_text(raw: &str) -> String {
    let content_type = header(raw, "Content-Type").unwrap_or_default();
    assert!(
        content_type.to_ascii_lowercase().starts_with("text/plain"),
        "a plain-text reply: {raw}"
    );
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let encoding = header(raw, "Content-Transfer-Encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "base64" => STANDARD
            .decode(body.split_whitespace().collect::<String>())
            .expect("base64 body"),
        "quoted-printable" => quoted_printable(body),
        _ => body.as_bytes().to_vec(),
    };
    String::from_utf8(bytes)
        .expect("a UTF-8 body")
        .trim_end()
        .to_owned()
}

fn quoted_printable(body: &str) -> Vec<u8> {
    let body = body.replace("=\r\n", "");
    let bytes = body.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(byte) = u8::from_str_radix(hex, 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[test]
fn email_customers_get_the_after_hours_acknowledgement_in_their_language_once() {
    let dovecot = Dovecot::start();
    let sink = SmtpSink::start();
    let deployment = deployment();
    let password = deployment.path().join("imap-password");
    std::fs::write(&password, ALICE.password).unwrap();
    deployment.write_channel(
        "support-mail",
        &format!(
            "id = \"support-mail\"\nkind = \"email\"\n[imap]\nhost = \"127.0.0.1\"\nport = {}\n\
             tls = \"none\"\nusername = \"{}\"\npassword = {{ file = {:?} }}\n\
             command_timeout_secs = 10\nmax_backoff_secs = 1\n\
             [smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
             from = \"Acme Support <{SUPPORT}>\"\ntimeout_secs = 5\n",
            dovecot.imap_port(),
            ALICE.login,
            password.display().to_string(),
            sink.port(),
        ),
    );
    let daemon = deployment.start();

    let persian_subject = "سفارش ۷۷۸۱ هنوز نرسیده";
    dovecot.append(
        ALICE,
        "INBOX",
        &persian_email(
            "CAHx7f1q9Xb3Yy0pQz@mail.gmail.example",
            "",
            persian_subject,
            "سلام، سفارشم هنوز نرسیده. لطفاً پیگیری کنید. ممنون، مریم",
        ),
    );
    dovecot.append(
        ALICE,
        "INBOX",
        &chinese_email(
            "202612070412441837261@qq.example",
            "关于订单 7782 的问题",
            "您好，我的订单还没有发货，请帮忙查一下。谢谢！",
        ),
    );

    let sent = sink.wait_for(2, WITHIN);
    let reply_to = |address: &str| {
        let received = sent
            .iter()
            .find(|r| r.rcpt_to == [address])
            .unwrap_or_else(|| panic!("no reply to {address}: {sent:#?}"));
        String::from_utf8(received.data.clone()).expect("a 7-bit clean reply")
    };
    for (address, message_id, text) in [
        (
            "maryam.ahmadi@gmail.example",
            "CAHx7f1q9Xb3Yy0pQz@mail.gmail.example",
            AFTER_HOURS_FA,
        ),
        (
            "wangfang@qq.example",
            "202612070412441837261@qq.example",
            AFTER_HOURS_ZH,
        ),
    ] {
        let raw = reply_to(address);
        assert_eq!(plain_text(&raw), text, "{raw}");
        assert_eq!(
            header(&raw, "Auto-Submitted").as_deref(),
            Some("auto-replied"),
            "{raw}"
        );
        assert_eq!(
            header(&raw, "X-Auto-Response-Suppress").as_deref(),
            Some("All"),
            "{raw}"
        );
        let in_reply_to = format!("<{message_id}>");
        assert_eq!(
            header(&raw, "In-Reply-To").as_deref(),
            Some(in_reply_to.as_str()),
            "{raw}"
        );
        assert!(
            header(&raw, "References").is_some_and(|r| r.contains(&in_reply_to)),
            "{raw}"
        );
        let to = header(&raw, "To").unwrap_or_default();
        assert!(to.contains(address), "{raw}");
    }
    assert_acknowledged_once(
        &deployment,
        "email:maryam.ahmadi@gmail.example",
        "fa",
        AFTER_HOURS_FA,
    );
    assert_acknowledged_once(
        &deployment,
        "email:wangfang@qq.example",
        "zh",
        AFTER_HOURS_ZH,
    );

    // Maryam answers the acknowledgement: the same conversation, so no
    // second acknowledgement.
    let ack = reply_to("maryam.ahmadi@gmail.example");
    let ack_id = header(&ack, "Message-ID").expect("the acknowledgement has a Message-ID");
    dovecot.append(
        ALICE,
        "INBOX",
        &persian_email(
            "CAHx7f1q9Xb3Yy0pRa@mail.gmail.example",
            &format!(
                "In-Reply-To: {ack_id}\r\n\
                 References: <CAHx7f1q9Xb3Yy0pQz@mail.gmail.example> {ack_id}\r\n"
            ),
            &format!("Re: {persian_subject}"),
            "ممنون، منتظر خبرتان هستم.",
        ),
    );
    wait_until_threaded(
        &deployment,
        &daemon,
        "CAHx7f1q9Xb3Yy0pRa@mail.gmail.example",
    );
    let outbound = all_delivered(&deployment, &daemon);
    assert_eq!(outbound.len(), 2, "{outbound:#?}");
    assert_eq!(sink.received().len(), 2, "one mail per conversation");
    assert_acknowledged_once(
        &deployment,
        "email:maryam.ahmadi@gmail.example",
        "fa",
        AFTER_HOURS_FA,
    );
}

// ---------------------------------------------------------------------------
// Telegram
// ---------------------------------------------------------------------------

const BOT_TOKEN: &str = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";
const TG_SECRET: &str = "s3cret_token-1";

/// `sendMessage` calls: (chat_id, text).
type BotSends = Arc<Mutex<Vec<(i64, String)>>>;

/// The Bot API's `POST /bot<token>/<method>`: sendMessage answers the sent
/// Message; anything else is Telegram's 404.
async fn bot_method(
    State(sends): State<BotSends>,
    Path((bot, method)): Path<(String, String)>,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    let not_found = (
        StatusCode::NOT_FOUND,
        Json(json!({ "ok": false, "error_code": 404, "description": "Not Found" })),
    );
    // Method names are case-insensitive (teloxide capitalizes them).
    if bot != format!("bot{BOT_TOKEN}") || !method.eq_ignore_ascii_case("sendMessage") {
        return not_found;
    }
    let params: Value = serde_json::from_slice(&body).unwrap_or_default();
    let chat = match &params["chat_id"] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    let (Some(chat), Some(text)) = (chat, params["text"].as_str()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "ok": false, "error_code": 400,
                         "description": "Bad Request: message text is empty" })),
        );
    };
    let message_id = {
        let mut sends = sends.lock().unwrap();
        sends.push((chat, text.to_owned()));
        4241 + i64::try_from(sends.len()).unwrap()
    };
    (
        StatusCode::OK,
        Json(json!({ "ok": true, "result": {
            "message_id": message_id,
            "from": { "id": 110201543, "is_bot": true, "first_name": "Acme Support",
                      "username": "acme_support_bot" },
            "chat": { "id": chat, "type": "private" },
            "date": unix_now(),
            "text": text,
        }})),
    )
}

async fn fake_bot_api(sends: BotSends) -> String {
    let app = Router::new()
        .route("/{bot}/{method}", post(bot_method))
        .with_state(sends);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A private-chat text message Update, as the Bot API posts it to a
/// webhook (a user's private chat has the user's id).
fn telegram_update(
    update_id: i64,
    message_id: i64,
    user: (i64, &str, &str, &str),
    text: &str,
) -> Value {
    let (id, first_name, username, language_code) = user;
    json!({
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "from": { "id": id, "is_bot": false, "first_name": first_name,
                      "username": username, "language_code": language_code },
            "chat": { "id": id, "first_name": first_name, "username": username,
                      "type": "private" },
            "date": unix_now(),
            "text": text,
        }
    })
}

async fn post_update(daemon: &Daemon, update: &Value) {
    let response = reqwest::Client::new()
        .post(daemon.url("/webhooks/support-telegram"))
        .header("content-type", "application/json")
        .header("x-telegram-bot-api-secret-token", TG_SECRET)
        .body(update.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", daemon.last_lines(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_customers_get_the_after_hours_acknowledgement_in_their_language_once() {
    let sends = BotSends::default();
    let api = fake_bot_api(sends.clone()).await;
    let deployment = deployment();
    for (name, value) in [("bot-token", BOT_TOKEN), ("tg-secret", TG_SECRET)] {
        std::fs::write(deployment.path().join(name), value).unwrap();
    }
    deployment.write_channel(
        "support-telegram",
        &format!(
            "id = \"support-telegram\"\nkind = \"telegram\"\nmode = \"webhook\"\n\
             bot_token = {{ file = {:?} }}\nsecret_token = {{ file = {:?} }}\n\
             set_webhook = false\napi_url = \"{api}\"\nrequest_timeout_secs = 5\n",
            deployment.path().join("bot-token").display().to_string(),
            deployment.path().join("tg-secret").display().to_string(),
        ),
    );
    let daemon = deployment.start();

    // Telegram's clients send IETF tags: "zh-hans" for Simplified Chinese.
    let li = (5512345678, "李伟", "liwei_sh", "zh-hans");
    let sara = (7012345678, "سارا", "sara_tehran", "fa");
    // No German text in the template: the rule set's default, English.
    let jonas = (6034567890, "Jonas", "jonas_hh", "de");
    post_update(
        &daemon,
        &telegram_update(912345001, 17, li, "你好，请问我昨天下的订单什么时候发货？"),
    )
    .await;
    post_update(
        &daemon,
        &telegram_update(912345002, 23, sara, "سلام، وقت بخیر. سفارشم کی ارسال می‌شود؟"),
    )
    .await;
    post_update(
        &daemon,
        &telegram_update(
            912345003,
            5,
            jonas,
            "Hallo, wann wird meine Bestellung verschickt?",
        ),
    )
    .await;

    let mut sent = tokio::task::block_in_place(|| {
        eventually(&daemon, "three sendMessage calls", || {
            let sends = sends.lock().unwrap().clone();
            (sends.len() >= 3).then_some(sends)
        })
    });
    sent.sort();
    assert_eq!(
        sent,
        [
            (5512345678, AFTER_HOURS_ZH.to_owned()),
            (6034567890, AFTER_HOURS_EN.to_owned()),
            (7012345678, AFTER_HOURS_FA.to_owned()),
        ]
    );
    assert_acknowledged_once(&deployment, "telegram:5512345678", "zh", AFTER_HOURS_ZH);
    assert_acknowledged_once(&deployment, "telegram:7012345678", "fa", AFTER_HOURS_FA);
    assert_acknowledged_once(&deployment, "telegram:6034567890", "en", AFTER_HOURS_EN);

    // Li writes again in the same chat: no second acknowledgement.
    post_update(&daemon, &telegram_update(912345004, 18, li, "好的，谢谢！")).await;
    tokio::task::block_in_place(|| {
        wait_until_threaded(&deployment, &daemon, "5512345678:18");
        let outbound = all_delivered(&deployment, &daemon);
        assert_eq!(outbound.len(), 3, "{outbound:#?}");
    });
    assert_eq!(sends.lock().unwrap().len(), 3, "one reply per conversation");
    assert_acknowledged_once(&deployment, "telegram:5512345678", "zh", AFTER_HOURS_ZH);
}

// ---------------------------------------------------------------------------
// SMS over Twilio
// ---------------------------------------------------------------------------

const PUBLIC: &str = "https://omnid.example.com";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "twilio-auth-token-0123";
const OUR_NUMBER: &str = "+14155550100";

async fn text_us(daemon: &Daemon, message_sid: &str, from: &str, text: &str) {
    let params = twilio::incoming_sms(SID, message_sid, from, OUR_NUMBER, text);
    let response = twilio::signed_post(
        &reqwest::Client::new(),
        &daemon.url("/webhooks/support-sms"),
        &format!("{PUBLIC}/webhooks/support-sms"),
        AUTH_TOKEN,
        &params,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200, "{}", daemon.last_lines(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_customers_get_the_after_hours_acknowledgement_and_arabic_refunds_are_urgent() {
    let twilio = FakeTwilio::start(SID, AUTH_TOKEN).await;
    let deployment = self::deployment();
    twilio.add_channel(&deployment, "support-sms", PUBLIC, OUR_NUMBER);
    let daemon = deployment.start();

    text_us(
        &daemon,
        "SM1f0e2d3c4b5a69788796a5b4c3d2e1f0",
        "+14155550123",
        "سلام، سفارش من کی می‌رسد؟",
    )
    .await;
    text_us(
        &daemon,
        "SM2f0e2d3c4b5a69788796a5b4c3d2e1f0",
        "+14155550124",
        "您好，我的包裹还没到，请帮忙查一下。",
    )
    .await;
    // A refund request in Gulf Arabic, with harakat, a tatweel and Arabic
    // ي, ك and ة where the rule has Persian ی, ک and ه.
    text_us(
        &daemon,
        "SM3f0e2d3c4b5a69788796a5b4c3d2e1f0",
        "+14155550125",
        "السلام عليكم، الطلب وصل تالف. أَبِي فُلُوسِـــي كَامِلَة لو سمحت",
    )
    .await;

    let mut sent = tokio::task::block_in_place(|| {
        eventually(&daemon, "three messages sent through Twilio", || {
            let sent = twilio.messages();
            (sent.len() >= 3).then_some(sent)
        })
    });
    sent.sort();
    let expected = |to: &str, body: &str| (to.to_owned(), OUR_NUMBER.to_owned(), body.to_owned());
    assert_eq!(
        sent,
        [
            expected("+14155550123", AFTER_HOURS_FA),
            expected("+14155550124", AFTER_HOURS_ZH),
            expected("+14155550125", AFTER_HOURS_AR),
        ]
    );
    assert_acknowledged_once(&deployment, "phone:+14155550123", "fa", AFTER_HOURS_FA);
    assert_acknowledged_once(&deployment, "phone:+14155550124", "zh", AFTER_HOURS_ZH);
    assert_acknowledged_once(&deployment, "phone:+14155550125", "ar", AFTER_HOURS_AR);

    // The refund request is tagged and urgent.
    let timeline = deployment.timeline("phone:+14155550125");
    let triaged: Vec<&Value> = timeline.iter().filter_map(|e| e.get("triaged")).collect();
    assert_eq!(triaged.len(), 1, "{timeline:#?}");
    assert_eq!(triaged[0]["tags"], json!(["refund"]), "{}", triaged[0]);
    assert_eq!(triaged[0]["priority"], "PRIORITY_P1", "{}", triaged[0]);
    assert_eq!(triaged[0]["language"], "ar", "{}", triaged[0]);
    assert_eq!(
        triaged[0]["matchedRules"],
        json!(["refund", "after-hours"]),
        "{}",
        triaged[0]
    );
    // The others are not.
    for handle in ["phone:+14155550123", "phone:+14155550124"] {
        let timeline = deployment.timeline(handle);
        assert!(
            timeline
                .iter()
                .filter_map(|e| e.get("triaged"))
                .all(|t| t["tags"].as_array().is_none_or(Vec::is_empty)
                    && t["priority"] != "PRIORITY_P1"),
            "{handle}: {timeline:#?}"
        );
    }

    // Each writes again: the same conversations, no second acknowledgement.
    for (sid, from, text) in [
        (
            "SM4f0e2d3c4b5a69788796a5b4c3d2e1f0",
            "+14155550123",
            "ممنون",
        ),
        ("SM5f0e2d3c4b5a69788796a5b4c3d2e1f0", "+14155550124", "谢谢"),
        ("SM6f0e2d3c4b5a69788796a5b4c3d2e1f0", "+14155550125", "شكراً"),
    ] {
        text_us(&daemon, sid, from, text).await;
    }
    tokio::task::block_in_place(|| {
        for sid in [
            "SM4f0e2d3c4b5a69788796a5b4c3d2e1f0",
            "SM5f0e2d3c4b5a69788796a5b4c3d2e1f0",
            "SM6f0e2d3c4b5a69788796a5b4c3d2e1f0",
        ] {
            wait_until_threaded(&deployment, &daemon, sid);
        }
        let outbound = all_delivered(&deployment, &daemon);
        assert_eq!(outbound.len(), 3, "{outbound:#?}");
    });
    assert_eq!(twilio.messages().len(), 3, "one reply per conversation");
    assert_acknowledged_once(&deployment, "phone:+14155550125", "ar", AFTER_HOURS_AR);
}
