//! The Meta channels in the real daemon, against Meta as
//! `omni_testkit::meta` plays it (the `X-Hub-Signature-256` written
//! independently of the channel, the documentation's payloads, and a local
//! Graph API):
//!
//! - the URL check of all three kinds, and only bodies signed with the
//!   app secret (or the previous one, during a rotation) appended;
//! - a redelivery after a restart, a batched POST, and a kill -9 mid-burst
//!   with Meta's redeliveries: every message on the timeline once;
//! - a WhatsApp image on the stream at once, its file following through
//!   failed downloads;
//! - replies: a template outside the 24-hour window, tied back by
//!   `biz_opaque_callback_data`; a text with context inside it; an
//!   Instagram reply whose echo is not recorded twice, beside an inbox
//!   echo recorded as the business's message;
//! - one customer across WhatsApp and SMS;
//! - hostile bodies answered without a crash.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use omni_testkit::{
    daemon::{Daemon, Deployment},
    meta::{
        self, Batch, FakeGraph, MediaRef, instagram_text, messenger_text, sign, signed_post,
        verification_url, whatsapp_image, whatsapp_status, whatsapp_text,
    },
};
use serde_json::{Value, json};

const WA: &str = "wa";
const PHONE_NUMBER_ID: &str = "106540352242922";
const FB: &str = "fb";
const PAGE_ID: &str = "108729612340987";
const IG: &str = "ig";
const IG_ACCOUNT_ID: &str = "17841405822304914";

/// One Meta app serves all three channels: one app secret, one verify
/// token.
const APP_SECRET: &str = "4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a99";
const PREVIOUS_APP_SECRET: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
const VERIFY_TOKEN: &str = "meta-verify-token-8c1f";
const WA_TOKEN: &str = "EAAGm0PX4ZCpsBAtestsystemusertoken0123456789";
const TEMPLATE: &str = "support_followup";
const LANGUAGE: &str = "en_US";

const API_TOKEN: &str = "meta-helpdesk-token-0123456789";
const JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF a customer's photo of a broken parcel";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `{ file = "..." }` of a new secret file in the deployment.
fn secret(deployment: &Deployment, name: &str, value: &str) -> String {
    let path = deployment.path().join(name);
    std::fs::write(&path, value).unwrap();
    format!("{{ file = {:?} }}", path.display().to_string())
}

/// The settings every Meta channel file here shares.
fn common(deployment: &Deployment) -> String {
    format!(
        "app_secret = {}\nprevious_app_secret = {}\nverify_token = {}\n",
        secret(deployment, "meta-app-secret", APP_SECRET),
        secret(deployment, "meta-previous-app-secret", PREVIOUS_APP_SECRET),
        secret(deployment, "meta-verify-token", VERIFY_TOKEN),
    )
}

/// The WhatsApp channel `wa`; with a Graph API, an access token and the
/// template (it then downloads files and replies).
fn add_whatsapp(deployment: &Deployment, graph: Option<&FakeGraph>) {
    let mut text = format!(
        "id = \"{WA}\"\nkind = \"whatsapp\"\nphone_number_id = \"{PHONE_NUMBER_ID}\"\n{}",
        common(deployment)
    );
    if let Some(graph) = graph {
        text.push_str(&format!(
            "access_token = {}\ngraph_base = \"{}\"\napi_version = \"v23.0\"\n\
             [template]\nname = \"{TEMPLATE}\"\nlanguage = \"{LANGUAGE}\"\n",
            secret(deployment, "wa-token", WA_TOKEN),
            graph.base_url()
        ));
    }
    deployment.write_channel(WA, &text);
}

/// The Messenger channel `fb` and the Instagram channel `ig`, receive
/// only.
fn add_messenger_and_instagram(deployment: &Deployment) {
    deployment.write_channel(
        FB,
        &format!(
            "id = \"{FB}\"\nkind = \"messenger\"\npage_id = \"{PAGE_ID}\"\n{}",
            common(deployment)
        ),
    );
    deployment.write_channel(
        IG,
        &format!(
            "id = \"{IG}\"\nkind = \"instagram\"\naccount_id = \"{IG_ACCOUNT_ID}\"\n{}",
            common(deployment)
        ),
    );
}

fn webhook_url(daemon: &Daemon, channel: &str) -> String {
    daemon.url(&format!("/webhooks/{channel}"))
}

/// Posts `body` as Meta would (signed with the app secret); the status and
/// the answer's body.
async fn post(
    client: &reqwest::Client,
    daemon: &Daemon,
    channel: &str,
    body: &Value,
) -> (u16, String) {
    post_bytes(client, daemon, channel, body.to_string().into_bytes()).await
}

async fn post_bytes(
    client: &reqwest::Client,
    daemon: &Daemon,
    channel: &str,
    bytes: Vec<u8>,
) -> (u16, String) {
    answer(signed_post(
        client,
        &webhook_url(daemon, channel),
        APP_SECRET,
        bytes,
    ))
    .await
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, String) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Inbound message records from `channel`, by provider message id.
fn inbound_by_id(deployment: &Deployment, channel: &str) -> BTreeMap<String, Vec<Value>> {
    let mut by_id: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in deployment.channel_records("inbound", channel) {
        if record["value"]["kind"] != "EVENT_KIND_MESSAGE" {
            continue;
        }
        if let Some(id) = record["value"]["providerMessageId"].as_str() {
            by_id.entry(id.to_owned()).or_default().push(record);
        }
    }
    by_id
}

/// Provider message ids of the inbound messages from `channel`, in stream
/// order.
fn inbound_order(deployment: &Deployment, channel: &str) -> Vec<String> {
    deployment
        .channel_records("inbound", channel)
        .into_iter()
        .filter(|r| r["value"]["kind"] == "EVENT_KIND_MESSAGE")
        .filter_map(|r| r["value"]["providerMessageId"].as_str().map(str::to_owned))
        .collect()
}

/// Message entries on the timeline topic from `channel`, counted by
/// provider message id.
fn timeline_counts(deployment: &Deployment, channel: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in deployment.tail("timeline") {
        let event = &record["value"]["message"]["event"];
        if event["channelId"] == channel
            && event["kind"] == "EVENT_KIND_MESSAGE"
            && let Some(id) = event["providerMessageId"].as_str()
        {
            *counts.entry(id.to_owned()).or_default() += 1;
        }
    }
    counts
}

/// The distinct CloudEvents ids among copies of one message.
fn event_ids(copies: &[Value]) -> HashSet<String> {
    copies
        .iter()
        .filter_map(|r| r["headers"]["ce_id"].as_str().map(str::to_owned))
        .collect()
}

/// A customer's wa_id (a US number, in WhatsApp's digits-only form).
fn wa_id(i: usize) -> String {
    format!("1555{:07}", 2_000_000 + i)
}

fn now() -> u64 {
    meta::unix_now()
}

// ---------------------------------------------------------------------------
// Verification and signatures
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_check_echoes_the_challenge_only_for_the_verify_token() {
    let deployment = Deployment::new();
    add_whatsapp(&deployment, None);
    add_messenger_and_instagram(&deployment);
    let daemon = deployment.start();
    let client = client();
    let get = |url: String| answer(client.get(url));

    for channel in [WA, FB, IG] {
        let endpoint = webhook_url(&daemon, channel);
        let (status, body) = get(verification_url(&endpoint, VERIFY_TOKEN, "1158201444")).await;
        assert_eq!((status, body.as_str()), (200, "1158201444"), "{channel}");
        let (status, body) = get(verification_url(&endpoint, "guessed", "1158201444")).await;
        assert_eq!(status, 403, "{channel}, a wrong verify token: {body}");
        assert!(!body.contains("1158201444"), "{channel}: {body}");
        let other_mode = format!(
            "{endpoint}?hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=77"
        );
        let (status, body) = get(other_mode).await;
        assert!(
            (400..500).contains(&status) && !body.contains("77"),
            "{channel}, not a subscribe: {status} {body}"
        );
        let (status, _) = get(endpoint.clone()).await;
        assert!(
            (400..500).contains(&status),
            "{channel}, no query: {status}"
        );
    }
    for channel in [WA, FB, IG] {
        assert!(
            deployment.channel_records("inbound", channel).is_empty(),
            "a URL check stores nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_bodies_signed_with_the_app_secret_are_appended() {
    let deployment = Deployment::new();
    add_whatsapp(&deployment, None);
    add_messenger_and_instagram(&deployment);
    let daemon = deployment.start();
    let client = client();
    let url = webhook_url(&daemon, WA);

    let body = whatsapp_text(
        PHONE_NUMBER_ID,
        &wa_id(1),
        "Ana Lima",
        "wamid.HBgLMTU1NTIwMDAwMDEVAgASGBQzQUFCRkI0RjE3NTY0NUI1RkE1OQA=",
        "Where is my order?",
        now(),
    )
    .to_string()
    .into_bytes();
    let mut tampered = body.clone();
    let at = tampered.len() - 20;
    tampered[at] ^= 0x01;
    let cases: Vec<(&str, Option<String>, Vec<u8>)> = vec![
        (
            "a forged signature",
            Some(format!("sha256={}", "0".repeat(64))),
            body.clone(),
        ),
        ("no signature header", None, body.clone()),
        (
            "signed with another app's secret",
            Some(sign("not-the-app-secret", &body)),
            body.clone(),
        ),
        (
            "the right HMAC under another scheme name",
            Some(sign(APP_SECRET, &body).replacen("sha256=", "sha1=", 1)),
            body.clone(),
        ),
        (
            "a body changed after signing",
            Some(sign(APP_SECRET, &body)),
            tampered,
        ),
    ];
    for (what, signature, bytes) in cases {
        let (status, answer_body) = answer(meta::post_with_signature(
            &client,
            &url,
            signature.as_deref(),
            bytes,
        ))
        .await;
        assert_eq!(status, 403, "{what}: {answer_body}");
    }
    assert!(deployment.channel_records("inbound", WA).is_empty());
    assert!(
        deployment.channel_records("deadletter", WA).is_empty(),
        "nothing unauthenticated is kept"
    );

    // Signed with the secret before the last reset: Meta's retries from
    // before the rotation still land.
    let (status, _) = answer(signed_post(
        &client,
        &url,
        PREVIOUS_APP_SECRET,
        body.clone(),
    ))
    .await;
    assert_eq!(status, 200);
    let later = whatsapp_text(
        PHONE_NUMBER_ID,
        &wa_id(1),
        "Ana Lima",
        "wamid.HBgLMTU1NTIwMDAwMDEVAgASGBQzQUFCRkI0RjE3NTY0NUI1RkE2MAA=",
        "It was due yesterday.",
        now(),
    );
    assert_eq!(post(&client, &daemon, WA, &later).await.0, 200);
    let inbound = inbound_by_id(&deployment, WA);
    assert_eq!(inbound.len(), 2, "{inbound:?}");
    let event = &inbound["wamid.HBgLMTU1NTIwMDAwMDEVAgASGBQzQUFCRkI0RjE3NTY0NUI1RkE1OQA="][0];
    let value = &event["value"];
    assert_eq!(value["kind"], "EVENT_KIND_MESSAGE", "{value}");
    assert_eq!(value["channelKind"], "CHANNEL_KIND_WHATSAPP");
    assert_eq!(value["direction"], "DIRECTION_INBOUND");
    assert_eq!(value["content"]["text"], "Where is my order?");
    assert_eq!(value["sender"]["kind"], "HANDLE_KIND_WHATSAPP");
    assert_eq!(value["sender"]["value"], wa_id(1));

    // Messenger and Instagram: the same scheme; customers are scoped by
    // the Page and the account.
    let ms = now() * 1000;
    let messenger = messenger_text(
        PAGE_ID,
        "6543210987654321",
        "m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6AC8fplwlqLP_5cgXIbu7I3rBN0P",
        "Hola",
        ms,
    );
    let forged = meta::post_with_signature(
        &client,
        &webhook_url(&daemon, FB),
        Some(&sign(APP_SECRET, b"another body")),
        messenger.to_string(),
    );
    assert_eq!(answer(forged).await.0, 403);
    assert_eq!(post(&client, &daemon, FB, &messenger).await.0, 200);
    let instagram = instagram_text(
        IG_ACCOUNT_ID,
        "1789012345678901",
        "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDA1ODIyMzA0OTE0",
        "hey, is this in stock?",
        ms,
    );
    assert_eq!(post(&client, &daemon, IG, &instagram).await.0, 200);
    for (channel, kind, channel_kind, sender, scope, text) in [
        (
            FB,
            "HANDLE_KIND_MESSENGER_PSID",
            "CHANNEL_KIND_MESSENGER",
            "6543210987654321",
            PAGE_ID,
            "Hola",
        ),
        (
            IG,
            "HANDLE_KIND_INSTAGRAM_IGSID",
            "CHANNEL_KIND_INSTAGRAM",
            "1789012345678901",
            IG_ACCOUNT_ID,
            "hey, is this in stock?",
        ),
    ] {
        let inbound = inbound_by_id(&deployment, channel);
        assert_eq!(inbound.len(), 1, "{channel}: {inbound:?}");
        let value = &inbound.values().next().unwrap()[0]["value"];
        assert_eq!(value["channelKind"], channel_kind, "{value}");
        assert_eq!(value["sender"]["kind"], kind, "{value}");
        assert_eq!(value["sender"]["value"], sender);
        assert_eq!(value["sender"]["scope"], scope);
        assert_eq!(value["content"]["text"], text);
    }
}

// ---------------------------------------------------------------------------
// Redeliveries, batches and kill -9
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_a_restart_appends_nothing() {
    let deployment = Deployment::new();
    add_whatsapp(&deployment, None);
    let mut daemon = deployment.start();
    let client = client();
    let wamid = "wamid.HBgLMTU1NTIwMDAwMDcVAgASGBQzRUIwQzc2N0Y3QjQ3QkI5NDc0RQA=";
    let bytes = whatsapp_text(
        PHONE_NUMBER_ID,
        &wa_id(7),
        "Bo",
        wamid,
        "My parcel arrived damaged",
        now(),
    )
    .to_string()
    .into_bytes();

    assert_eq!(post_bytes(&client, &daemon, WA, bytes.clone()).await.0, 200);
    // Meta sometimes delivers twice even after a 200.
    assert_eq!(post_bytes(&client, &daemon, WA, bytes.clone()).await.0, 200);
    daemon
        .eventually(
            "the message on the timeline",
            Duration::from_secs(20),
            || {
                timeline_counts(&deployment, WA)
                    .contains_key(wamid)
                    .then_some(())
            },
        )
        .await;
    daemon.stop();

    // Meta's redelivery a day later, to a restarted daemon whose clock
    // (libfaketime) is a day ahead.
    let library = faketime();
    let daemon = deployment.start_with_env(&[
        ("LD_PRELOAD", library.as_str()),
        ("FAKETIME", "+1d"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    let (status, _) = post_bytes(&client, &daemon, WA, bytes).await;
    assert_eq!(status, 200, "a redelivery is acknowledged");
    // A new message shows the daemon's day: received a day after now.
    let fresh = "wamid.HBgLMTU1NTIwMDAwMDcVAgASGBQzRUIwQzc2N0Y3QjQ3QkI5NDc0RgA=";
    let later = whatsapp_text(PHONE_NUMBER_ID, &wa_id(7), "Bo", fresh, "Any news?", now())
        .to_string()
        .into_bytes();
    assert_eq!(post_bytes(&client, &daemon, WA, later).await.0, 200);
    // Give a second copy the time to reach the timeline if it were going to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let inbound = inbound_by_id(&deployment, WA);
    assert_eq!(
        inbound.get(wamid).map(Vec::len),
        Some(1),
        "the event once on the inbound stream: {inbound:?}"
    );
    let counts = timeline_counts(&deployment, WA);
    assert_eq!(counts.get(wamid), Some(&1), "{counts:?}");
    let received = inbound[fresh][0]["value"]["receivedAt"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        utc_seconds(&received) >= now() + 23 * 3600,
        "the restarted daemon's clock is a day ahead: received {received}"
    );
}

/// Seconds since the epoch of a UTC RFC 3339 time (`2026-12-07T09:18:39.89+00:00`),
/// 0 when unreadable.
fn utc_seconds(text: &str) -> u64 {
    let field = |range: std::ops::Range<usize>| -> i64 {
        text.get(range).and_then(|t| t.parse().ok()).unwrap_or(0)
    };
    let (year, month, day) = (field(0..4), field(5..7), field(8..10));
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let seconds = days * 86_400 + field(11..13) * 3600 + field(14..16) * 60 + field(17..19);
    u64::try_from(seconds).unwrap_or(0)
}

/// libfaketime, which `scripts/test` installs (`OMNID_TEST_FAKETIME`).
fn faketime() -> String {
    if let Ok(path) = std::env::var("OMNID_TEST_FAKETIME") {
        return path;
    }
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .map(str::to_owned)
    .expect("libfaketime is needed (scripts/test installs it: apt install faketime)")
}

/// A text from customer `i` with wamid `wamid.<tag>.<n>`.
fn text_of(tag: &str, n: usize, customer: usize, at: u64) -> (String, Value) {
    let wamid = format!("wamid.{tag}.{n:05}");
    let body = whatsapp_text(
        PHONE_NUMBER_ID,
        &wa_id(customer),
        &format!("Customer {customer}"),
        &wamid,
        &format!("message {n} of {tag}"),
        at,
    );
    (wamid, body)
}

/// One POST of 10 texts as Meta batches them: two entries, the first with
/// two changes, several customers per change.
fn batched_post(tag: &str, first: usize, at: u64) -> (Vec<String>, Value) {
    let texts: Vec<(String, Value)> = (first..first + 10)
        .map(|n| text_of(tag, n, n % 7, at))
        .collect();
    let mut batch = Batch::new(texts[0].1.clone());
    for (i, (_, body)) in texts.iter().enumerate().skip(1) {
        batch = match i {
            4 => batch.into_entry(body.clone()),
            7 => batch.push_entry(body.clone()),
            _ => batch.into_change(body.clone()),
        };
    }
    (texts.into_iter().map(|(id, _)| id).collect(), batch.build())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_posts_land_in_order_and_a_kill_9_leaves_every_message_once() {
    let deployment = Deployment::new();
    add_whatsapp(&deployment, None);
    let mut daemon = deployment.start();
    let client = client();
    let at = now();

    // Three entries, five changes, twelve messages and a status.
    let (mut expected, body) = batched_post("batch", 0, at);
    let status_wamid = "wamid.HBgLMTU1NTIwMDAwMDAVAgARGBI5QTRDRjE0MjBGRjA4NTM5NjMA";
    let (tenth, text_10) = text_of("batch", 10, 2, at);
    let (eleventh, text_11) = text_of("batch", 11, 3, at);
    let body = Batch::new(body)
        .into_entry(whatsapp_status(
            PHONE_NUMBER_ID,
            status_wamid,
            &wa_id(1),
            "read",
            at,
            None,
        ))
        .push_entry(text_10)
        .into_change(text_11)
        .build();
    expected.extend([tenth, eleventh]);
    assert_eq!(post(&client, &daemon, WA, &body).await.0, 200);
    let order = inbound_order(&deployment, WA);
    assert_eq!(order, expected, "every message once, in the POST's order");
    let status_kept = deployment
        .channel_records("inbound", WA)
        .into_iter()
        .chain(deployment.channel_records("deadletter", WA))
        .any(|r| r.to_string().contains(status_wamid));
    assert!(status_kept, "the status is recorded, not dropped");

    // A burst of such POSTs, killed mid-way. Each sender paces its POSTs
    // a little, as Meta does, so the kill finds some in flight rather than
    // a burst already over.
    const TASKS: usize = 6;
    const PER_TASK: usize = 12;
    let burst: Vec<Vec<(Vec<String>, Vec<u8>)>> = (0..TASKS)
        .map(|task| {
            (0..PER_TASK)
                .map(|i| {
                    let (ids, body) = batched_post(&format!("burst{task}"), i * 10, at);
                    (ids, body.to_string().into_bytes())
                })
                .collect()
        })
        .collect();
    let acked: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let url = webhook_url(&daemon, WA);
    let mut senders = Vec::new();
    for (task, posts) in burst.iter().cloned().enumerate() {
        let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            for (i, (_, bytes)) in posts.into_iter().enumerate() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let Ok(response) = signed_post(&client, &url, APP_SECRET, bytes).send().await
                else {
                    return; // the daemon is gone
                };
                if response.status() == 200 {
                    acked.lock().unwrap().push((task, i));
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 20 {
        assert!(
            Instant::now() < deadline,
            "20 POSTs not answered; daemon log:\n{}",
            daemon.last_lines(40)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    daemon.kill9();
    for sender in senders {
        sender.await.unwrap();
    }
    let acked: HashSet<(usize, usize)> = acked.lock().unwrap().iter().copied().collect();
    assert!(acked.len() < TASKS * PER_TASK, "the kill came mid-burst");
    eprintln!(
        "answered 200 before the kill: {} of {} POSTs",
        acked.len(),
        TASKS * PER_TASK
    );

    // Nothing answered 200 was lost.
    let durable = inbound_by_id(&deployment, WA);
    let lost: Vec<&String> = acked
        .iter()
        .flat_map(|(task, i)| &burst[*task][*i].0)
        .filter(|id| !durable.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );

    // Meta redelivers every POST it got no 200 for, and some it did.
    let daemon = deployment.start();
    let url = webhook_url(&daemon, WA);
    let mut redeliveries = Vec::new();
    for (task, posts) in burst.iter().cloned().enumerate() {
        let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
        redeliveries.push(tokio::spawn(async move {
            for (i, (_, bytes)) in posts.into_iter().enumerate() {
                if acked.contains(&(task, i)) && i % 3 != 0 {
                    continue;
                }
                let response = signed_post(&client, &url, APP_SECRET, bytes)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "POST {task}/{i}");
            }
        }));
    }
    for redelivery in redeliveries {
        redelivery.await.unwrap();
    }

    // One event id per message on the inbound stream, one timeline entry
    // each.
    let wanted: Vec<String> = burst
        .iter()
        .flatten()
        .flat_map(|(ids, _)| ids.iter().cloned())
        .chain(expected.iter().cloned())
        .collect();
    let inbound = inbound_by_id(&deployment, WA);
    for id in &wanted {
        let copies = inbound
            .get(id)
            .unwrap_or_else(|| panic!("{id} not on the inbound stream"));
        assert_eq!(event_ids(copies).len(), 1, "{id} got several event ids");
    }
    let counts = daemon
        .eventually(
            "every message on the timeline",
            Duration::from_secs(45),
            || {
                let counts = timeline_counts(&deployment, WA);
                wanted
                    .iter()
                    .all(|id| counts.contains_key(id))
                    .then_some(counts)
            },
        )
        .await;
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        doubled.is_empty(),
        "timeline entries per wamid: {doubled:?}"
    );
    let unexpected: Vec<_> = counts.keys().filter(|id| !wanted.contains(id)).collect();
    assert!(
        unexpected.is_empty(),
        "messages nobody sent: {unexpected:?}"
    );
}

// ---------------------------------------------------------------------------
// Media
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_lands_at_once_and_its_file_follows_through_failed_downloads() {
    let graph = FakeGraph::start().await;
    graph.allow_token(WA_TOKEN);
    let media_id = "1037543291543636";
    graph.add_media(media_id, "image/jpeg", JPEG);
    // Meta's CDN fails twice before it serves the file.
    graph.fail_downloads(2);
    let deployment = Deployment::new();
    add_whatsapp(&deployment, Some(&graph));
    let daemon = deployment.start();
    let client = client();

    let wamid = "wamid.HBgLMTU1NTIwMDAwMDkVAgASGBQzQUJGNUQ2RjQ1RTA0QzVCNTQ0MQA=";
    let image = MediaRef::of(media_id, "image/jpeg", JPEG).with_caption("the box");
    let body = whatsapp_image(PHONE_NUMBER_ID, &wa_id(9), "Chen", wamid, &image, now());
    assert_eq!(post(&client, &daemon, WA, &body).await.0, 200);

    // On the stream at once, naming WhatsApp's media id.
    let inbound = inbound_by_id(&deployment, WA);
    let record = inbound
        .get(wamid)
        .and_then(|copies| copies.first())
        .unwrap_or_else(|| panic!("the image message: {inbound:?}"))
        .clone();
    let message = &record["value"];
    let attachments = message["content"]["attachments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(attachments.len(), 1, "{message}");
    assert!(
        attachments[0].to_string().contains(media_id),
        "the attachment names the media id: {}",
        attachments[0]
    );

    let update = daemon
        .eventually(
            "the attachment-stored update",
            Duration::from_secs(45),
            || {
                deployment
                    .channel_records("inbound", WA)
                    .into_iter()
                    .find(|r| {
                        r["value"]["kind"] == "EVENT_KIND_ATTACHMENT_STORED"
                            && r["value"]["attachmentStored"]["messageEventId"]
                                == message["eventId"]
                    })
            },
        )
        .await;
    let stored = &update["value"]["attachmentStored"];
    let sha256 = meta::sha256_hex(JPEG);
    assert_eq!(stored["attachment"]["sha256"], sha256.as_str(), "{update}");
    assert_eq!(stored["attachmentIndex"].as_u64().unwrap_or(0), 0);
    assert_eq!(update["key"], record["key"]);
    let file = deployment
        .data_dir()
        .join("attachments")
        .join(&sha256[..2])
        .join(&sha256);
    assert_eq!(std::fs::read(file).unwrap(), JPEG);

    // Looked up and downloaded with the channel's token, retried past
    // the two failures.
    assert!(
        graph.media_lookups().iter().any(|id| id == media_id),
        "{:?}",
        graph.log()
    );
    assert!(graph.downloads().len() >= 3, "{:?}", graph.log());
    for request in graph.requests() {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {WA_TOKEN}").as_str()),
            "{} {}",
            request.method,
            request.path
        );
    }
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

async fn send_reply(client: &reqwest::Client, daemon: &Daemon, reply: &Value) -> String {
    let response = client
        .post(daemon.url("/v1/outbound"))
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/json")
        .body(reply.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or_default();
    assert_eq!(status, 202, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

/// A delivery status of the reply `event_id` in `state`, once appended.
async fn delivery(deployment: &Deployment, daemon: &Daemon, event_id: &str, state: &str) -> Value {
    daemon
        .eventually(
            &format!("{state} for {event_id}"),
            Duration::from_secs(30),
            || {
                deployment
                    .channel_records("inbound", WA)
                    .into_iter()
                    .find(|r| {
                        r["value"]["kind"] == "EVENT_KIND_DELIVERY_STATUS"
                            && r["value"]["delivery"]["outboundEventId"] == event_id
                            && r["value"]["delivery"]["state"] == state
                    })
            },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_use_the_template_outside_the_window_and_statuses_tie_back() {
    let graph = FakeGraph::start().await;
    graph.allow_token(WA_TOKEN);
    let deployment = Deployment::new();
    deployment.enable_api(API_TOKEN);
    add_whatsapp(&deployment, Some(&graph));
    let daemon = deployment.start();
    let client = client();
    let reply = |to: &str, id: &str, text: &str| {
        json!({
            "channelId": WA,
            "providerMessageId": id,
            "recipients": [{ "kind": "HANDLE_KIND_WHATSAPP", "value": to }],
            "content": { "text": text },
        })
    };

    // A customer who last wrote two days ago: only a template may go out.
    let old = wa_id(21);
    let body = whatsapp_text(
        PHONE_NUMBER_ID,
        &old,
        "Dana",
        "wamid.HBgLMTU1NTIwMDAwMjEVAgASGBQzQTU2QjM2MjY3RDcyNjE1MjA2QQA=",
        "Any news about my refund?",
        now() - 2 * 24 * 3600,
    );
    assert_eq!(post(&client, &daemon, WA, &body).await.0, 200);
    let text = "Your refund was issued today.";
    let event_id = send_reply(&client, &daemon, &reply(&old, "ticket-31/reply-1", text)).await;
    let sent = delivery(&deployment, &daemon, &event_id, "DELIVERY_STATE_SENT").await;
    let sends = graph.whatsapp_sends();
    assert_eq!(sends.len(), 1, "{:?}", graph.log());
    let send = &sends[0];
    assert_eq!(send.phone_number_id, PHONE_NUMBER_ID);
    let body = &send.body;
    assert_eq!(body["messaging_product"], "whatsapp", "{body}");
    assert_eq!(body["to"], old.as_str());
    assert_eq!(body["type"], "template", "{body}");
    assert_eq!(body["template"]["name"], TEMPLATE);
    assert_eq!(body["template"]["language"]["code"], LANGUAGE);
    let parameters: Vec<&Value> = body["template"]["components"]
        .as_array()
        .map(|components| {
            components
                .iter()
                .filter(|c| c["type"] == "body")
                .flat_map(|c| c["parameters"].as_array().into_iter().flatten())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        parameters,
        [&json!({ "type": "text", "text": text })],
        "the reply's text is the body's parameter: {body}"
    );
    assert_eq!(
        body["biz_opaque_callback_data"],
        event_id.as_str(),
        "{body}"
    );
    let wamid = send.wamid.clone().expect("the fake accepted it");
    assert_eq!(
        sent["value"]["providerMessageId"],
        wamid.as_str(),
        "the wamid WhatsApp answered: {sent}"
    );

    // WhatsApp reports it delivered, carrying the callback data back.
    let status = whatsapp_status(
        PHONE_NUMBER_ID,
        &wamid,
        &old,
        "delivered",
        now(),
        Some(&event_id),
    );
    assert_eq!(post(&client, &daemon, WA, &status).await.0, 200);
    delivery(&deployment, &daemon, &event_id, "DELIVERY_STATE_DELIVERED").await;

    // A customer who wrote just now: a plain text, in context.
    let recent = wa_id(22);
    let their_wamid = "wamid.HBgLMTU1NTIwMDAwMjIVAgASGBQzQjk0MkE0OUY0OEI2RTk1QjcyOQA=";
    let body = whatsapp_text(
        PHONE_NUMBER_ID,
        &recent,
        "Eli",
        their_wamid,
        "Is the shop open on Sunday?",
        now(),
    );
    assert_eq!(post(&client, &daemon, WA, &body).await.0, 200);
    assert!(inbound_by_id(&deployment, WA).contains_key(their_wamid));
    let mut answer = reply(&recent, "ticket-32/reply-1", "Yes, 10:00 to 16:00.");
    answer["threading"] = json!({ "replyToProviderMessageId": their_wamid });
    let event_id = send_reply(&client, &daemon, &answer).await;
    delivery(&deployment, &daemon, &event_id, "DELIVERY_STATE_SENT").await;
    let sends = graph.whatsapp_sends();
    assert_eq!(sends.len(), 2, "{:?}", graph.log());
    let body = &sends[1].body;
    assert_eq!(body["to"], recent.as_str());
    assert_eq!(body["type"], "text", "inside the window: {body}");
    assert_eq!(body["text"]["body"], "Yes, 10:00 to 16:00.");
    assert_eq!(body["context"]["message_id"], their_wamid, "{body}");
    assert!(body["template"].is_null());
}

/// An Instagram echo: the account's own message to `igsid`, as Meta posts
/// it back (no `app_id`, as Instagram's echoes often have none).
fn instagram_echo(igsid: &str, mid: &str, text: &str, ts_ms: u64) -> Value {
    json!({
        "object": "instagram",
        "entry": [{
            "id": IG_ACCOUNT_ID,
            "time": ts_ms,
            "messaging": [{
                "sender": { "id": IG_ACCOUNT_ID },
                "recipient": { "id": igsid },
                "timestamp": ts_ms,
                "message": { "mid": mid, "text": text, "is_echo": true },
            }],
        }],
    })
}

/// A reply through the Send API answers inside the window, and its echo is
/// not recorded a second time; an echo of a message sent from the
/// Instagram inbox is recorded as the business's outbound message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instagram_replies_go_out_and_their_echoes_are_not_recorded_twice() {
    let graph = FakeGraph::start().await;
    graph.allow_token(WA_TOKEN);
    let deployment = Deployment::new();
    deployment.enable_api(API_TOKEN);
    deployment.write_channel(
        IG,
        &format!(
            "id = \"{IG}\"\nkind = \"instagram\"\naccount_id = \"{IG_ACCOUNT_ID}\"\n{}\
             access_token = {}\ngraph_base = \"{}\"\n",
            common(&deployment),
            secret(&deployment, "ig-token", WA_TOKEN),
            graph.base_url()
        ),
    );
    let daemon = deployment.start();
    let client = client();
    let igsid = "6180412345678901";
    let ts = now() * 1000;
    let body = instagram_text(
        IG_ACCOUNT_ID,
        igsid,
        "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx",
        "سلام، سفارشم کجاست؟",
        ts,
    );
    assert_eq!(post(&client, &daemon, IG, &body).await.0, 200);

    let reply = json!({
        "channelId": IG,
        "providerMessageId": "ticket-41/reply-1",
        "recipients": [{ "kind": "HANDLE_KIND_INSTAGRAM_IGSID", "value": igsid, "scope": IG_ACCOUNT_ID }],
        "content": { "text": "سفارش شما امروز ارسال شد." },
    });
    let event_id = send_reply(&client, &daemon, &reply).await;
    let sent = daemon
        .eventually("the reply sent", Duration::from_secs(30), || {
            deployment
                .channel_records("inbound", IG)
                .into_iter()
                .find(|r| {
                    r["value"]["kind"] == "EVENT_KIND_DELIVERY_STATUS"
                        && r["value"]["delivery"]["outboundEventId"] == event_id.as_str()
                        && r["value"]["delivery"]["state"] == "DELIVERY_STATE_SENT"
                })
        })
        .await;
    let calls = graph.send_api_calls();
    assert_eq!(calls.len(), 1, "{:?}", graph.log());
    assert_eq!(
        calls[0].body["messaging_type"], "RESPONSE",
        "{}",
        calls[0].body
    );
    assert_eq!(calls[0].body["recipient"]["id"], igsid);
    let mid = calls[0].message_id.clone().expect("the fake accepted it");
    assert_eq!(sent["value"]["providerMessageId"], mid.as_str());

    // Meta echoes the reply back, and the business also wrote from the
    // Instagram app.
    let echo = instagram_echo(igsid, &mid, "سفارش شما امروز ارسال شد.", ts + 1000);
    assert_eq!(post(&client, &daemon, IG, &echo).await.0, 200);
    let inbox_mid = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQyinbox";
    let inbox = instagram_echo(igsid, inbox_mid, "A colleague will call you.", ts + 2000);
    assert_eq!(post(&client, &daemon, IG, &inbox).await.0, 200);

    let messages = |mid: &str| -> Vec<Value> {
        deployment
            .channel_records("inbound", IG)
            .into_iter()
            .filter(|r| {
                r["value"]["kind"] == "EVENT_KIND_MESSAGE" && r["value"]["providerMessageId"] == mid
            })
            .collect()
    };
    let recorded = daemon
        .eventually(
            "the inbox echo on the stream",
            Duration::from_secs(20),
            || messages(inbox_mid).pop(),
        )
        .await;
    assert_eq!(
        recorded["value"]["direction"], "DIRECTION_OUTBOUND",
        "{recorded}"
    );
    assert_eq!(recorded["value"]["recipients"][0]["value"], igsid);
    assert!(
        recorded["value"]["sender"].is_null(),
        "never a customer message: {recorded}"
    );
    assert!(
        messages(&mid).is_empty(),
        "the reply's echo is the reply itself, already recorded"
    );
    let metrics = daemon.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("omnid_meta_updates_total")
                && l.contains("channel=\"ig\"")
                && l.contains("outcome=\"duplicate\"")
                && l.ends_with(" 1")),
        "the echo was dropped as already seen:\n{metrics}"
    );
}

// ---------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------

const PUBLIC: &str = "https://omnid.example.com";
const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_TOKEN: &str = "twilio-auth-token-12345";

/// Waits until `handle` (`kind/value`) belongs to a customer; its id.
async fn customer_of(client: &reqwest::Client, daemon: &Daemon, handle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = client
            .get(daemon.url(&format!("/v1/identities/{handle}")))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or_default();
        if status == 200 {
            return body["customer_id"].as_str().unwrap().to_owned();
        }
        assert_eq!(status, 404, "{body}");
        assert!(Instant::now() < deadline, "{handle} never got a customer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A WhatsApp id is the customer's number without its `+`; WhatsApp
/// verified it, so the threading service takes it as proof of the phone
/// number an SMS comes from. (+1 415 555 01xx: 555 numbers outside that
/// range are not valid numbers, and would link nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_and_sms_from_one_number_are_one_customer() {
    let deployment = Deployment::new();
    deployment.enable_api(API_TOKEN);
    let config = std::fs::read_to_string(deployment.config_path()).unwrap();
    deployment.write_config(&config.replacen(
        "[http]\n",
        &format!("[http]\npublic_base_url = \"{PUBLIC}\"\n"),
        1,
    ));
    add_whatsapp(&deployment, None);
    deployment.write_channel(
        "sms",
        &format!(
            "id = \"sms\"\nkind = \"twilio\"\naccount_sid = \"{TWILIO_SID}\"\nauth_token = {}\n\
             default_region = \"US\"\nfrom = \"+14155550100\"\nfetch_media = false\n",
            secret(&deployment, "twilio-token", TWILIO_TOKEN)
        ),
    );
    let daemon = deployment.start();
    let client = client();

    let wamid = "wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBQzQUY3OTU2RDQ2RkE2QUIyQzQ4QgA=";
    let body = whatsapp_text(
        PHONE_NUMBER_ID,
        "14155550123",
        "Fatima",
        wamid,
        "Hi, order 1182?",
        now(),
    );
    assert_eq!(post(&client, &daemon, WA, &body).await.0, 200);
    let by_whatsapp = customer_of(&client, &daemon, "whatsapp/14155550123").await;

    let params: Vec<(String, String)> = [
        ("AccountSid", TWILIO_SID),
        ("Body", "Also: can I change the address?"),
        ("From", "+14155550123"),
        ("MessageSid", "SM7a1c3e5f7a9b1c3d5e7f9a1b3c5d7e9f"),
        ("NumMedia", "0"),
        ("To", "+14155550100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let form = omni_testkit::daemon::form_body(&params);
    let signature = omni_sms::twilio::signature(
        TWILIO_TOKEN.as_bytes(),
        &format!("{PUBLIC}/webhooks/sms"),
        &params,
    );
    let response = client
        .post(daemon.url("/webhooks/sms"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let deadline = Instant::now() + Duration::from_secs(30);
    let customer = loop {
        let by_phone = customer_of(&client, &daemon, "phone/%2B14155550123").await;
        let by_whatsapp_now = customer_of(&client, &daemon, "whatsapp/14155550123").await;
        if by_phone == by_whatsapp_now {
            break by_phone;
        }
        assert!(
            Instant::now() < deadline,
            "never one customer: whatsapp {by_whatsapp_now} (first {by_whatsapp}), phone {by_phone}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Both messages on that customer's timeline.
    let timeline = daemon
        .eventually("both on one timeline", Duration::from_secs(30), || {
            let entries: Vec<Value> = deployment
                .tail("timeline")
                .into_iter()
                .filter(|r| r["value"]["customerId"] == customer.as_str())
                .collect();
            let ids: HashSet<String> = entries
                .iter()
                .filter_map(|r| r["value"]["message"]["event"]["providerMessageId"].as_str())
                .map(str::to_owned)
                .collect();
            (ids.contains(wamid) && ids.contains("SM7a1c3e5f7a9b1c3d5e7f9a1b3c5d7e9f"))
                .then_some(entries)
        })
        .await;
    assert!(timeline.len() >= 2);
}

// ---------------------------------------------------------------------------
// Hostile bodies
// ---------------------------------------------------------------------------

/// `count` entries of one text each.
fn many_entries(count: usize) -> Vec<u8> {
    let at = now();
    let mut batch = Batch::new(text_of("flood", 0, 0, at).1);
    for n in 1..count {
        batch = batch.push_entry(text_of("flood", n, n % 50, at).1);
    }
    batch.to_bytes()
}

/// A WhatsApp body whose change value holds `depth` nested arrays.
fn deeply_nested(depth: usize) -> Vec<u8> {
    format!(
        "{{\"object\":\"whatsapp_business_account\",\"entry\":[{{\"id\":\"{}\",\"changes\":[{{\"field\":\"messages\",\"value\":{}{}}}]}}]}}",
        meta::WABA_ID,
        "[".repeat(depth),
        "]".repeat(depth)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_a_clear_answer_and_never_a_crash() {
    let deployment = Deployment::new();
    // Room for the 10,000-entry body: the channel's own limits are tested,
    // not the daemon's body size limit.
    let config = std::fs::read_to_string(deployment.config_path()).unwrap();
    deployment.write_config(&config.replacen(
        "max_body_bytes = 65536",
        "max_body_bytes = 6291456",
        1,
    ));
    add_whatsapp(&deployment, None);
    let mut daemon = deployment.start();
    let client = client();
    let at = now();

    let invalid_utf8 = {
        let mut bytes = text_of("utf8", 0, 1, at).1.to_string().into_bytes();
        let position = bytes
            .windows(7)
            .position(|w| w == b"message")
            .expect("the text is in the body");
        bytes.splice(position..position + 2, [0xff, 0xfe]);
        bytes
    };
    let long_id = "wamid.".to_owned() + &"A".repeat(10 * 1024);
    let long_sender = format!("1555{}", "1".repeat(10 * 1024));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("10,000 entries", many_entries(10_000)),
        ("1000-deep nesting", deeply_nested(1000)),
        ("invalid UTF-8", invalid_utf8),
        (
            "a 10 KB message id",
            whatsapp_text(PHONE_NUMBER_ID, &wa_id(2), "G", &long_id, "hi", at)
                .to_string()
                .into_bytes(),
        ),
        (
            "a 10 KB sender id",
            whatsapp_text(
                PHONE_NUMBER_ID,
                &long_sender,
                "G",
                "wamid.long-sender",
                "hi",
                at,
            )
            .to_string()
            .into_bytes(),
        ),
        (
            "another phone number's update",
            text_of("other-number", 0, 3, at)
                .1
                .to_string()
                .replace(PHONE_NUMBER_ID, "106540352249999")
                .into_bytes(),
        ),
        ("not JSON", b"<xml>hello</xml>".to_vec()),
    ];
    for (what, bytes) in cases {
        let dead_before = deployment.channel_records("deadletter", WA).len();
        let (status, body) = post_bytes(&client, &daemon, WA, bytes).await;
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "{what}: the daemon died; log:\n{}",
            daemon.last_lines(40)
        );
        let dead_after = deployment.channel_records("deadletter", WA).len();
        eprintln!(
            "{what}: {status} {body}; dead letters +{}",
            dead_after - dead_before
        );
        assert!(
            (400..500).contains(&status) || (status == 200 && dead_after > dead_before),
            "{what}: {status} {body}, dead letters {dead_before} -> {dead_after}"
        );
        let health = client.get(daemon.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200, "{what}");
    }
    let inbound = inbound_by_id(&deployment, WA);
    assert!(
        !inbound.contains_key(&long_id) && !inbound.contains_key("wamid.long-sender"),
        "over-long ids are not appended as messages"
    );
    assert!(
        inbound
            .keys()
            .all(|id| !id.starts_with("wamid.other-number")),
        "another number's update is not this channel's message"
    );
    assert!(
        inbound
            .keys()
            .filter(|id| id.starts_with("wamid.flood"))
            .count()
            < 10_000,
        "10,000 entries are not taken whole"
    );

    // Still serving: a normal message lands.
    let (wamid, body) = text_of("after", 0, 4, at);
    assert_eq!(post(&client, &daemon, WA, &body).await.0, 200);
    assert!(inbound_by_id(&deployment, WA).contains_key(&wamid));
    daemon.stop();
}
