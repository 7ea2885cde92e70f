//! The channel's own cost per message: one safe-mode (and one plaintext)
//! Official Account push through its webhook driver, from the request as
//! the HTTP server hands it over to the answer, with an in-memory log;
//! beside the API channel's signed JSON through its driver, measured in the
//! same run as the ceiling (a log that keeps nothing). HTTP and the durable log are the same for both
//! and are measured by `scripts/bench-wechat` against the running daemon.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use omni_connector::testing::NullSink;
use omni_connector::{ChannelConfig, ChannelContext, EventSender, WebhookHandler, WebhookRequest};
use omni_wechat::crypto::{AesKey, MsgCrypt, sign};

const TOKEN: &str = "bench-token";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APP_ID: &str = "wx1234567890abcdef";

fn webhook<C: ChannelConfig>(settings: &str) -> Arc<dyn WebhookHandler> {
    let context = ChannelContext::new("bench", EventSender::new(Arc::new(NullSink)));
    omni_connector::factory::<C>()
        .build(context, toml::from_str(settings).unwrap())
        .unwrap()
        .webhook()
        .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn request(uri: String, headers: HeaderMap, body: String) -> WebhookRequest {
    WebhookRequest {
        method: Method::POST,
        uri: uri.parse().unwrap(),
        headers,
        body: Bytes::from(body),
        received_at: SystemTime::now(),
        public_url: None,
    }
}

fn text_xml(i: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>\
         <FromUserName><![CDATA[oBench{:022}]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{}]]></Content><MsgId>{}</MsgId></xml>",
        i % 1000,
        now(),
        "x".repeat(200),
        6_000_000_000_000_000_000 + i
    )
}

fn safe_request(crypt: &MsgCrypt, i: u64) -> WebhookRequest {
    let encrypted = crypt.encrypt(text_xml(i).as_bytes());
    let (timestamp, nonce) = (now().to_string(), i.to_string());
    let signature = sign(TOKEN.as_bytes(), &[&timestamp, &nonce]);
    let msg_signature = sign(TOKEN.as_bytes(), &[&timestamp, &nonce, &encrypted]);
    request(
        format!(
            "/webhooks/bench?signature={signature}&timestamp={timestamp}&nonce={nonce}\
             &openid=oBench&encrypt_type=aes&msg_signature={msg_signature}"
        ),
        HeaderMap::new(),
        format!(
            "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>\
             <Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
        ),
    )
}

fn plaintext_request(i: u64) -> WebhookRequest {
    let (timestamp, nonce) = (now().to_string(), i.to_string());
    let signature = sign(TOKEN.as_bytes(), &[&timestamp, &nonce]);
    request(
        format!("/webhooks/bench?signature={signature}&timestamp={timestamp}&nonce={nonce}"),
        HeaderMap::new(),
        text_xml(i),
    )
}

fn api_request(i: u64) -> WebhookRequest {
    let body = serde_json::json!({
        "external_id": format!("bench-{i}"),
        "sender": { "kind": "external", "value": format!("customer-{}", i % 1000) },
        "text": "x".repeat(200),
    })
    .to_string();
    let now = now();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        omni_api::signature::TIMESTAMP_HEADER,
        HeaderValue::from_str(&now.to_string()).unwrap(),
    );
    headers.insert(
        omni_api::signature::SIGNATURE_HEADER,
        HeaderValue::from_str(&omni_api::signature::sign(
            b"bench-secret",
            now,
            body.as_bytes(),
        ))
        .unwrap(),
    );
    request("/webhooks/bench".to_owned(), headers, body)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        path.display().to_string()
    };
    let (token, aes, secret) = (
        file("token", TOKEN),
        file("aes", AES_KEY),
        file("secret", "bench-secret"),
    );
    let crypt = MsgCrypt::new(
        AesKey::from_encoding_aes_key(AES_KEY).unwrap(),
        None,
        APP_ID,
    );
    let wechat = format!(
        "app_id = {APP_ID:?}\ntoken = {{ file = {token:?} }}\nencoding_aes_key = {{ file = {aes:?} }}\n"
    );
    let api = format!("secret = {{ file = {secret:?} }}\n");

    let mut group = c.benchmark_group("webhook");
    group.throughput(Throughput::Elements(1));
    // Requests are built outside the timed part (iter_batched), so each
    // figure is the channel's work alone.
    let api_hook = webhook::<omni_api::ApiChannelConfig>(&api);
    let mut i = 0;
    group.bench_function("api_signed_json (ceiling)", |b| {
        b.iter_batched(
            || {
                i += 1;
                api_request(i)
            },
            |r| runtime.block_on(api_hook.handle(r)),
            criterion::BatchSize::SmallInput,
        )
    });
    let oa = webhook::<omni_wechat::WechatOaConfig>(&wechat);
    group.bench_function("wechat_safe_mode", |b| {
        b.iter_batched(
            || {
                i += 1;
                safe_request(&crypt, i)
            },
            |r| runtime.block_on(oa.handle(r)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("wechat_plaintext", |b| {
        b.iter_batched(
            || {
                i += 1;
                plaintext_request(i)
            },
            |r| runtime.block_on(oa.handle(r)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
