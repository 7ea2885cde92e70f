//! Both WeChat kinds through the SDK's webhook driver, built by their
//! factories as the daemon builds them, with requests signed and encrypted
//! the way WeChat's servers do (omni-testkit's independent implementation
//! of the published algorithm) and an in-memory log. The real daemon is
//! tested in the workspace's `tests/wechat.rs`.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{Method, StatusCode};
use omni_connector::{
    ChannelContext, Connector, EventSender, LogEntry, SendError, WebhookHandler, WebhookRequest,
    WebhookResponse, testing::MemorySink,
};
use omni_proto::v1::{Direction, EventKind, HandleKind};
use omni_testkit::wechat::{self, FakeWechat, OfficialAccount, UrlCheck, WebhookPost, WecomApp};

const APP_ID: &str = "wx1234567890abcdef";
const TOKEN: &str = "omnid-wechat-token";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const OLD_AES_KEY: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkj";
const CORP_ID: &str = "ww0123456789abcdef";
const KFID: &str = "wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw";
const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

/// Secrets as files, as an admin would keep them: one file per call, so
/// tests running at once never read each other's half-written file.
fn secret_file(name: &str, value: &str) -> String {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.path().join(format!("{name}-{n}"));
    std::fs::write(&path, value).unwrap();
    path.display().to_string()
}

fn build<C: omni_connector::ChannelConfig>(
    id: &str,
    sink: &MemorySink,
    settings: &str,
) -> (Arc<dyn Connector>, ChannelContext) {
    let context = ChannelContext::new(id, EventSender::new(Arc::new(sink.clone())));
    let connector = omni_connector::factory::<C>()
        .build(context.clone(), toml::from_str(settings).unwrap())
        .unwrap();
    (connector, context)
}

fn official_account(sink: &MemorySink, extra: &str) -> Arc<dyn WebhookHandler> {
    let settings = format!(
        "app_id = {APP_ID:?}\ntoken = {{ file = {:?} }}\nencoding_aes_key = {{ file = {:?} }}\n\
         previous_encoding_aes_key = {{ file = {:?} }}\n{extra}",
        secret_file("token", TOKEN),
        secret_file("aes", AES_KEY),
        secret_file("old-aes", OLD_AES_KEY),
    );
    build::<omni_wechat::WechatOaConfig>("wx-oa", sink, &settings)
        .0
        .webhook()
        .unwrap()
}

fn request(method: Method, url: String, body: String) -> WebhookRequest {
    WebhookRequest {
        method,
        uri: url.parse().unwrap(),
        headers: http::HeaderMap::new(),
        body: Bytes::from(body),
        received_at: SystemTime::now(),
        public_url: None,
    }
}

async fn post(webhook: &Arc<dyn WebhookHandler>, post: &WebhookPost) -> WebhookResponse {
    webhook
        .handle(request(
            Method::POST,
            post.url("/webhooks/wx-oa"),
            post.body.clone(),
        ))
        .await
}

async fn get(webhook: &Arc<dyn WebhookHandler>, check: &UrlCheck) -> WebhookResponse {
    webhook
        .handle(request(
            Method::GET,
            check.url("/webhooks/wx-oa"),
            String::new(),
        ))
        .await
}

fn body(response: &WebhookResponse) -> &str {
    std::str::from_utf8(response.body()).unwrap()
}

fn events(sink: &MemorySink) -> Vec<omni_proto::v1::ConversationEvent> {
    sink.entries()
        .into_iter()
        .filter_map(|e| match e {
            LogEntry::Event(event) => Some(*event),
            LogEntry::DeadLetter(_) | LogEntry::Outbound(_) => None,
        })
        .collect()
}

fn dead_letters(sink: &MemorySink) -> Vec<String> {
    sink.entries()
        .into_iter()
        .filter_map(|e| match e {
            LogEntry::DeadLetter(d) => Some(d.reason.clone()),
            LogEntry::Event(_) | LogEntry::Outbound(_) => None,
        })
        .collect()
}

fn text(msg_id: u64, content: &str) -> String {
    wechat::text_message("gh_0123456789ab", OPENID, 1_764_000_000, content, msg_id)
}

#[tokio::test]
async fn a_safe_mode_message_is_answered_success_and_a_retry_is_the_same_event() {
    let sink = MemorySink::default();
    let webhook = official_account(&sink, "");
    let account = OfficialAccount::new(APP_ID, TOKEN, AES_KEY);

    let first = post(
        &webhook,
        &account.safe(&text(6_054_768_590_064_713_728, "你好，我的订单在哪里？")),
    )
    .await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(body(&first), "success");
    // WeChat's retry: a new nonce and ciphertext, the same message.
    let retry = post(
        &webhook,
        &account.safe(&text(6_054_768_590_064_713_728, "你好，我的订单在哪里？")),
    )
    .await;
    assert_eq!(body(&retry), "success");

    let events = events(&sink);
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].event_id, events[1].event_id,
        "a retry is the same event"
    );
    let event = &events[0];
    assert_eq!(event.provider_message_id, "6054768590064713728");
    assert_eq!(event.direction, Direction::Inbound as i32);
    assert_eq!(
        event.content.as_ref().unwrap().text,
        "你好，我的订单在哪里？"
    );
    let sender = event.sender.as_ref().unwrap();
    assert_eq!(sender.kind, HandleKind::WechatOpenid as i32);
    assert_eq!(
        (sender.value.as_str(), sender.scope.as_str()),
        (OPENID, APP_ID)
    );
    assert!(sender.verified);
}

#[tokio::test]
async fn plaintext_and_compatible_mode_messages_land_too() {
    let sink = MemorySink::default();
    let webhook = official_account(&sink, "");
    let account = OfficialAccount::new(APP_ID, TOKEN, AES_KEY);
    assert_eq!(
        body(&post(&webhook, &account.plaintext(&text(1, "plain"))).await),
        "success"
    );
    assert_eq!(
        body(&post(&webhook, &account.compatible(&text(2, "both"))).await),
        "success"
    );
    let texts: Vec<String> = events(&sink)
        .iter()
        .map(|e| e.content.as_ref().unwrap().text.clone())
        .collect();
    assert_eq!(texts, ["plain", "both"]);
}

#[tokio::test]
async fn the_url_check_echoes_only_when_signed() {
    let sink = MemorySink::default();
    let webhook = official_account(&sink, "");
    let account = OfficialAccount::new(APP_ID, TOKEN, AES_KEY);
    let check = account.url_check("6842735620179341085");
    let answer = get(&webhook, &check).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(body(&answer), "6842735620179341085");

    let forged = get(&webhook, &check.clone().set("signature", &"0".repeat(40))).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(!body(&forged).contains("6842735620179341085"));
    assert!(sink.entries().is_empty());

    let put = webhook
        .handle(request(
            Method::PUT,
            check.url("/webhooks/wx-oa"),
            String::new(),
        ))
        .await;
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put.headers()["allow"], "GET, POST");
}

#[tokio::test]
async fn forged_and_broken_requests_are_refused_and_nothing_is_appended() {
    let sink = MemorySink::default();
    let webhook = official_account(&sink, "");
    let account = OfficialAccount::new(APP_ID, TOKEN, AES_KEY);
    let xml = text(3, "hello");

    // Not signed with the channel's token: 403, nothing stored at all.
    let forged = account.safe(&xml).set("msg_signature", &"a".repeat(40));
    assert_eq!(
        post(&webhook, &forged).await.status(),
        StatusCode::FORBIDDEN
    );
    let other_token = OfficialAccount::new(APP_ID, "another-token", AES_KEY);
    assert_eq!(
        post(&webhook, &other_token.safe(&xml)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&webhook, &account.plaintext(&xml).set("signature", ""))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert!(sink.entries().is_empty());

    // Signed, but not something WeChat sends: 400, kept as a dead letter.
    let other_app = wechat::encrypt(AES_KEY, "wx00000000000000ff", &xml);
    // A last byte of 0 is no PKCS#7 pad length.
    let bad_padding = wechat::encrypt_blocks(AES_KEY, [vec![7u8; 63], vec![0]].concat());
    let truncated = &wechat::encrypt(AES_KEY, APP_ID, &xml)[..40];
    let bomb = "<!DOCTYPE xml [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]>\
                <xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime>\
                <MsgType>text</MsgType><Content>&b;</Content><MsgId>4</MsgId></xml>";
    let bomb = wechat::encrypt(AES_KEY, APP_ID, bomb);
    for (encrypted, code) in [
        (other_app.as_str(), "wrong_receive_id"),
        (bad_padding.as_str(), "bad_padding"),
        (truncated, ""),
        (bomb.as_str(), "xml_doctype"),
    ] {
        let response = post(&webhook, &account.safe_with(&xml, encrypted)).await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{code}: {}",
            body(&response)
        );
        assert!(
            body(&response).contains(code),
            "{code}: {}",
            body(&response)
        );
    }
    assert!(events(&sink).is_empty(), "nothing reaches the stream");
    assert_eq!(dead_letters(&sink).len(), 4);
}

#[tokio::test]
async fn an_unknown_message_type_is_dead_lettered_and_answered_success() {
    let sink = MemorySink::default();
    let webhook = official_account(&sink, "");
    let account = OfficialAccount::new(APP_ID, TOKEN, AES_KEY);
    let xml = wechat::unknown_message("gh_0123456789ab", OPENID, 1_764_000_000, "hologram", 9);
    let response = post(&webhook, &account.safe(&xml)).await;
    assert_eq!(
        (response.status(), body(&response)),
        (StatusCode::OK, "success")
    );
    assert!(events(&sink).is_empty());
    assert_eq!(dead_letters(&sink), ["unknown_msg_type"]);
}

#[tokio::test]
async fn the_previous_key_decrypts_while_an_admin_rotates_it() {
    let sink = MemorySink::default();
    let webhook = official_account(&sink, "");
    let old = OfficialAccount::new(APP_ID, TOKEN, OLD_AES_KEY);
    assert_eq!(
        body(&post(&webhook, &old.safe(&text(5, "old key"))).await),
        "success"
    );
    let unknown =
        OfficialAccount::new(APP_ID, TOKEN, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG");
    assert_eq!(
        post(&webhook, &unknown.safe(&text(6, "no key")))
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(events(&sink).len(), 1);
}

#[tokio::test]
async fn a_follow_is_an_activity() {
    let sink = MemorySink::default();
    let webhook = official_account(&sink, "");
    let account = OfficialAccount::new(APP_ID, TOKEN, AES_KEY);
    let xml = wechat::subscribe_event("gh_0123456789ab", OPENID, 1_764_000_100);
    assert_eq!(body(&post(&webhook, &account.safe(&xml)).await), "success");
    let event = events(&sink).remove(0);
    assert_eq!(event.kind, EventKind::Activity as i32);
    assert_eq!(event.activity.unwrap().name, "subscribe");
    assert_eq!(
        event.provider_message_id,
        format!("{OPENID}:1764000100:subscribe")
    );
}

#[tokio::test]
async fn nothing_is_answered_success_before_the_log_has_it() {
    let sink = MemorySink::default();
    let webhook = official_account(&sink, "");
    let account = OfficialAccount::new(APP_ID, TOKEN, AES_KEY);
    sink.fail_with(Some(SendError::Overloaded));
    let response = post(&webhook, &account.safe(&text(7, "busy"))).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert_ne!(body(&response), "success");
}

#[tokio::test]
async fn the_sender_gets_a_unionid_from_user_info_once_per_openid() {
    let fake = FakeWechat::start().await;
    fake.add_official_account(APP_ID, "app-secret");
    fake.add_user(OPENID, "o6_bmasdasdsad6_2sgVt7hMZOPfL");
    let sink = MemorySink::default();
    let extra = format!(
        "app_secret = {{ file = {:?} }}\nlookup_unionid = true\napi_base = {:?}\n",
        secret_file("app-secret", "app-secret"),
        fake.base_url()
    );
    let webhook = official_account(&sink, &extra);
    let account = OfficialAccount::new(APP_ID, TOKEN, AES_KEY);
    for id in [11, 12] {
        assert_eq!(
            body(&post(&webhook, &account.safe(&text(id, "hi"))).await),
            "success"
        );
    }
    for event in events(&sink) {
        let unionids: Vec<_> = event
            .sender_identities
            .iter()
            .filter(|h| h.kind == HandleKind::WechatUnionid as i32)
            .map(|h| h.value.clone())
            .collect();
        assert_eq!(unionids, ["o6_bmasdasdsad6_2sgVt7hMZOPfL"]);
    }
    assert_eq!(fake.user_info_calls(), 1, "cached per openid");
}

fn customer_service(sink: &MemorySink, api_base: &str) -> (Arc<dyn Connector>, ChannelContext) {
    let settings = format!(
        "corp_id = {CORP_ID:?}\nsecret = {{ file = {:?} }}\ntoken = {{ file = {:?} }}\n\
         encoding_aes_key = {{ file = {:?} }}\nopen_kfids = [{KFID:?}]\n\
         poll_interval_secs = 3600\nsync_limit = 2\napi_base = {api_base:?}\n",
        secret_file("kf-secret", "kf-secret"),
        secret_file("token", TOKEN),
        secret_file("aes", AES_KEY),
    );
    build::<omni_wechat::WecomKfConfig>("wx-kf", sink, &settings)
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_pulls_every_page_and_the_cursor_never_runs_ahead_of_the_log() {
    let fake = FakeWechat::start().await;
    fake.add_corp(CORP_ID, "kf-secret");
    let customer = "wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw";
    let sink = MemorySink::default();
    let (connector, context) = customer_service(&sink, fake.base_url());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(connector.clone().run(shutdown.clone()));
    let webhook = connector.webhook().unwrap();
    let app = WecomApp::new(CORP_ID, TOKEN, AES_KEY);

    // The URL check answers the decrypted echostr.
    let check = app.url_check("1288432023552776189");
    let answer = webhook
        .handle(request(
            Method::GET,
            check.url("/webhooks/wx-kf"),
            String::new(),
        ))
        .await;
    assert_eq!(body(&answer), check.answer);

    // The poll's first tick syncs the configured account at start: it is
    // empty, and its cursor (position 0) is stored. Waited for, so that
    // sync cannot land in the middle of what follows.
    let cursor_key = format!("cursor/{KFID}");
    let stored = async || context.state.get(&cursor_key).await.unwrap();
    wait_for("the start-up sync's cursor", async || {
        stored().await.is_some()
    })
    .await;
    let start_cursor = stored().await;
    let synced = fake.sync_requests().len();

    // The log refuses everything: a page is fetched, nothing is stored, so
    // the cursor must not move.
    sink.fail_with(Some(SendError::Failed("disk full".into())));
    fake.push_kf_messages(
        KFID,
        (0..5).map(|i| {
            wechat::kf_text(
                &format!("msg-{i}"),
                KFID,
                customer,
                1_764_000_000 + i,
                &format!("text {i}"),
            )
        }),
    );
    let callback = app.kf_msg_or_event("ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR", KFID);
    let response = post(&webhook, &callback).await;
    assert_eq!(body(&response), "success");
    wait_for("a refused page", async || {
        fake.sync_requests().len() > synced
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stored().await, start_cursor);

    // The log works again: the retry (1 s, then 2 s: no callback, and the
    // next poll is an hour away) reads all 5 in pages of 2, with the
    // callback's token.
    sink.fail_with(None);
    wait_for("all five messages", async || events(&sink).len() >= 5).await;
    let ids: Vec<String> = events(&sink)
        .iter()
        .map(|e| e.provider_message_id.clone())
        .collect();
    assert_eq!(ids, ["msg-0", "msg-1", "msg-2", "msg-3", "msg-4"]);
    wait_for("the cursor", async || {
        fake.sync_requests()
            .last()
            .is_some_and(|r| r.position == Some(4) && r.answer.is_some())
    })
    .await;
    let requests = fake.sync_requests();
    assert!(requests.iter().all(|r| r.open_kfid == KFID && r.limit == 2));
    assert!(
        requests.last().unwrap().token.starts_with("ENCApHx"),
        "the retry keeps the callback's token"
    );
    // Pages from the start while the log refused them, then 0, 2, 4.
    let positions: Vec<_> = requests.iter().map(|r| r.position).collect();
    assert_eq!(
        &positions[positions.len() - 3..],
        [Some(0), Some(2), Some(4)]
    );
    let event = &events(&sink)[0];
    let sender = event.sender.as_ref().unwrap();
    assert_eq!(sender.kind, HandleKind::WecomExternalUser as i32);
    assert_eq!(
        (sender.value.as_str(), sender.scope.as_str()),
        (customer, CORP_ID)
    );

    shutdown.cancel();
    running.await.unwrap().unwrap();
}
