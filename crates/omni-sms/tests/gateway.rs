//! The generic gateway: mapped fields, HMAC-SHA256 of the raw body in a
//! configured header, and templated replies against a local server.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::Bytes;
use omni_connector::{
    ChannelContext, Connector, DeliveryError, EventSender, LogEntry, OutboundHandler,
    WebhookRequest, testing::MemorySink,
};
use omni_proto::v1::{Content, ConversationEvent, HandleKind, IdentityHandle};

const SECRET: &str = "gateway-secret";

fn secret_file() -> String {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("omni-sms-gateway-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, SECRET).unwrap();
        file
    })
    .display()
    .to_string()
}

fn connector(sink: &MemorySink, extra: &str) -> Arc<dyn Connector> {
    let context = ChannelContext::new("tehran-sms", EventSender::new(Arc::new(sink.clone())));
    let settings = format!(
        r#"secret = {{ file = {:?} }}
signature_header = "X-Gateway-Signature"
signature_encoding = "base64"
signature_prefix = "sha256="
default_region = "IR"
{extra}
[fields]
from = "data.sender"
to = "data.receiver"
text = "data.body"
id = "data.message_id"
sent_at = "data.received_at"
"#,
        secret_file()
    );
    omni_connector::factory::<omni_sms::gateway::GatewayConfig>()
        .build(context, toml::from_str(&settings).unwrap())
        .unwrap()
}

fn request(body: &[u8], signature: Option<String>) -> WebhookRequest {
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    if let Some(signature) = signature {
        headers.insert("x-gateway-signature", signature.parse().unwrap());
    }
    WebhookRequest {
        method: http::Method::POST,
        uri: "/webhooks/tehran-sms".parse().unwrap(),
        headers,
        body: Bytes::copy_from_slice(body),
        received_at: SystemTime::now(),
        public_url: None,
    }
}

fn sign(body: &[u8], secret: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!(
        "sha256={}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

const BODY: &[u8] = include_bytes!("payloads/gateway-inbound.json");

#[tokio::test]
async fn mapped_fields_are_normalized_and_a_replay_has_the_same_id() {
    let sink = MemorySink::default();
    let hook = connector(&sink, "").webhook().unwrap();
    for _ in 0..2 {
        let response = hook.handle(request(BODY, Some(sign(BODY, SECRET)))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let entries = sink.entries();
    let [LogEntry::Event(a), LogEntry::Event(b)] = entries.as_slice() else {
        panic!("{entries:?}")
    };
    assert_eq!(a.event_id, b.event_id);
    assert_eq!(a.provider_message_id, "gw-7781-1");
    let sender = a.sender.as_ref().unwrap();
    assert_eq!(
        (sender.kind, sender.value.as_str()),
        (HandleKind::Phone as i32, "+989121234567")
    );
    assert_eq!(a.recipients[0].value, "+982155550100");
    assert_eq!(
        a.content.as_ref().unwrap().text,
        "سلام، سفارش من هنوز نرسیده است"
    );
    assert_eq!(a.sent_at.unwrap().seconds, 1_795_420_740);
}

#[tokio::test]
async fn forged_and_missing_signatures_get_403_and_nothing_is_stored() {
    let sink = MemorySink::default();
    let hook = connector(&sink, "").webhook().unwrap();
    for signature in [None, Some(sign(BODY, "wrong")), Some("sha256=!!".into())] {
        let response = hook.handle(request(BODY, signature)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert!(sink.entries().is_empty());
}

#[tokio::test]
async fn authentic_garbage_gets_400_and_a_dead_letter() {
    let sink = MemorySink::default();
    let hook = connector(&sink, "").webhook().unwrap();
    let body = br#"{"data":{"sender":"0912 123 4567"}}"#;
    let response = hook.handle(request(body, Some(sign(body, SECRET)))).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let entries = sink.entries();
    let [LogEntry::DeadLetter(dead)] = entries.as_slice() else {
        panic!()
    };
    assert_eq!(dead.reason, "missing_field");
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_are_posted_from_the_template() {
    let app = Router::new().route(
        "/send",
        post(|body: String| async move {
            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
            let answer: Response = match value["to"].as_str().unwrap() {
                "989121234567" => (StatusCode::OK, r#"{"ok":true}"#).into_response(),
                "989121234568" => (StatusCode::SERVICE_UNAVAILABLE, "").into_response(),
                "989121234570" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "120")],
                    "",
                )
                    .into_response(),
                _ => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    r#"{"error":"bad number"}"#,
                )
                    .into_response(),
            };
            answer
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let sink = MemorySink::default();
    let extra = format!(
        "[outbound]\nurl = \"{base}/send\"\nbody_template = '{{\"to\":\"{{{{to_digits}}}}\",\"message\":\"{{{{text}}}}\",\"ref\":\"{{{{id}}}}\"}}'\n"
    );
    let outbound: Arc<dyn OutboundHandler> = connector(&sink, &extra).outbound().unwrap();
    let reply = |to: &str| ConversationEvent {
        event_id: "e-1".into(),
        recipients: vec![IdentityHandle {
            kind: HandleKind::Phone as i32,
            value: to.into(),
            ..Default::default()
        }],
        content: Some(Content {
            text: "ارسال شد".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(outbound.deliver(&reply("+989121234567")).await.is_ok());
    assert!(matches!(
        outbound.deliver(&reply("+989121234568")).await,
        Err(DeliveryError::Temporary { .. })
    ));
    let throttled = outbound.deliver(&reply("+989121234570")).await.unwrap_err();
    assert!(matches!(throttled, DeliveryError::Temporary { .. }));
    assert_eq!(throttled.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(
        outbound
            .deliver(&reply("+989121234568"))
            .await
            .unwrap_err()
            .retry_after(),
        None
    );
    assert!(matches!(
        outbound.deliver(&reply("+989121234569")).await,
        Err(DeliveryError::Rejected(_))
    ));
}
