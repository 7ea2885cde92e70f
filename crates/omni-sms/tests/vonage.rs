//! The Vonage channel end to end: documented payloads (JSON, form and GET)
//! signed with Vonage's published `sig` scheme, concatenated parts out of
//! order, delivery receipts, and replies against a local SMS API.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    extract::Form,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::Bytes;
use omni_connector::{
    ChannelContext, Connector, DeliveryError, EventSender, LogEntry, OutboundHandler,
    WebhookRequest, testing::MemorySink,
};
use omni_proto::v1::{
    Content, ConversationEvent, DeliveryState, EventKind, HandleKind, IdentityHandle,
};
use omni_sms::vonage::{SignatureMethod, signature};

const SECRET: &str = "vonage-signature-secret";

fn secret_file() -> String {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("omni-sms-vonage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, SECRET).unwrap();
        file
    })
    .display()
    .to_string()
}

fn connector(sink: &MemorySink, extra: &str) -> Arc<dyn Connector> {
    let context = ChannelContext::new("acme-vonage", EventSender::new(Arc::new(sink.clone())));
    let file = secret_file();
    let settings =
        format!("signature_secret = {{ file = {file:?} }}\nsignature_method = \"sha256\"\n{extra}");
    omni_connector::factory::<omni_sms::vonage::VonageConfig>()
        .build(context, toml::from_str(&settings).unwrap())
        .unwrap()
}

fn now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

/// Adds `timestamp`, `nonce` and the `sig` Vonage computes (HMAC-SHA256
/// of the sorted `&name=value` string, `&`/`=` in values as `_`), written
/// here from the documented steps rather than with the crate's helper.
fn sign_json(json: &[u8]) -> Vec<u8> {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).unwrap();
    object.insert("timestamp".into(), now().into());
    object.insert(
        "nonce".into(),
        "a1b2c3d4-0000-4000-8000-000000000000".into(),
    );
    let mut pairs: Vec<(String, String)> = object
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    pairs.sort();
    let mut input = String::new();
    for (k, v) in &pairs {
        input.push_str(&format!("&{k}={}", v.replace(['&', '='], "_")));
    }
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let sig = hex::encode_upper(mac.finalize().into_bytes());
    assert_eq!(
        sig,
        signature(SignatureMethod::Sha256, SECRET.as_bytes(), &pairs)
    );
    object.insert("sig".into(), sig.into());
    serde_json::to_vec(&object).unwrap()
}

fn json_request(body: &[u8]) -> WebhookRequest {
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    WebhookRequest {
        method: http::Method::POST,
        uri: "/webhooks/acme-vonage".parse().unwrap(),
        headers,
        body: Bytes::copy_from_slice(body),
        received_at: SystemTime::now(),
        public_url: None,
    }
}

fn signed_query(form: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.push(("timestamp".into(), now()));
    let sig = signature(SignatureMethod::Sha256, SECRET.as_bytes(), &pairs);
    pairs.push(("sig".into(), sig));
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn events(sink: &MemorySink) -> Vec<ConversationEvent> {
    sink.entries()
        .into_iter()
        .map(|e| match e {
            LogEntry::Event(event) => *event,
            other => panic!("unexpected entry {other:?}"),
        })
        .collect()
}

const INBOUND: &[u8] = include_bytes!("payloads/vonage-inbound.json");

#[tokio::test]
async fn signed_json_sms_is_appended_then_acknowledged() {
    let sink = MemorySink::default();
    let hook = connector(&sink, "").webhook().unwrap();
    let response = hook.handle(json_request(&sign_json(INBOUND))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let [event] = events(&sink).try_into().unwrap();
    assert_eq!(event.provider_message_id, "0A0000000123ABCD1");
    assert_eq!(
        event.event_id,
        omni_model::event_id("acme-vonage", "0A0000000123ABCD1").to_string()
    );
    let sender = event.sender.unwrap();
    assert_eq!(
        (sender.kind, sender.value.as_str()),
        (HandleKind::Phone as i32, "+447911123401")
    );
    assert_eq!(event.recipients[0].value, "+447911123400");
    assert_eq!(event.content.unwrap().text, "Hello world");
    assert_eq!(event.sent_at.unwrap().seconds, 1_577_880_000);
}

#[tokio::test]
async fn get_and_form_variants_are_accepted_and_a_replay_has_the_same_id() {
    let sink = MemorySink::default();
    let hook = connector(&sink, "").webhook().unwrap();
    let form = "msisdn=447911123401&to=447911123400&messageId=0A0000000123ABCD1&text=Hello+world&type=text&keyword=HELLO&message-timestamp=2020-01-01+12%3A00%3A00";
    let query = signed_query(form);
    let get = WebhookRequest {
        method: http::Method::GET,
        uri: format!("/webhooks/acme-vonage?{query}").parse().unwrap(),
        headers: http::HeaderMap::new(),
        body: Bytes::new(),
        received_at: SystemTime::now(),
        public_url: None,
    };
    assert_eq!(hook.handle(get).await.status(), StatusCode::OK);
    let mut post = json_request(query.as_bytes());
    post.headers.insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    assert_eq!(hook.handle(post).await.status(), StatusCode::OK);
    let [a, b] = events(&sink).try_into().unwrap();
    assert_eq!(a.event_id, b.event_id);
}

#[tokio::test]
async fn forged_missing_and_stale_signatures_get_403_and_nothing_is_stored() {
    let sink = MemorySink::default();
    let hook = connector(&sink, "").webhook().unwrap();
    let signed = sign_json(INBOUND);
    let forged = String::from_utf8(signed.clone())
        .unwrap()
        .replace("Hello world", "Hello moon");
    let mut stale: serde_json::Value = serde_json::from_slice(INBOUND).unwrap();
    stale["timestamp"] = "1577880000".into();
    let mut pairs: Vec<(String, String)> = stale
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    pairs.sort();
    stale["sig"] = signature(SignatureMethod::Sha256, SECRET.as_bytes(), &pairs).into();
    for body in [
        INBOUND.to_vec(),
        forged.into_bytes(),
        serde_json::to_vec(&stale).unwrap(),
        b"not json".to_vec(),
    ] {
        let response = hook.handle(json_request(&body)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert!(sink.entries().is_empty());
}

#[tokio::test]
async fn concatenated_parts_out_of_order_become_one_message() {
    let sink = MemorySink::default();
    let hook = connector(&sink, "").webhook().unwrap();
    let parts = [
        &include_bytes!("payloads/vonage-concat-3.json")[..],
        &include_bytes!("payloads/vonage-concat-1.json")[..],
        &include_bytes!("payloads/vonage-concat-2.json")[..],
    ];
    for (i, part) in parts.iter().enumerate() {
        let response = hook.handle(json_request(&sign_json(part))).await;
        assert_eq!(response.status(), StatusCode::OK);
        if i < 2 {
            assert!(sink.entries().is_empty(), "nothing before the last part");
        }
    }
    let [event] = events(&sink).try_into().unwrap();
    assert_eq!(
        event.content.unwrap().text,
        "This is a long message that did not fit into one SMS, so the network split it \
         into three parts that Vonage posts one by one, in any order, \
         and Omnid joins them back together."
    );
    assert_eq!(event.provider_message_id, "0B00000012345601");
    // A late retry of a part is acknowledged and appends nothing new.
    let response = hook.handle(json_request(&sign_json(parts[1]))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sink.entries().len(), 1);
}

#[tokio::test]
async fn a_part_is_not_acknowledged_unless_stored_and_the_message_survives_a_log_failure() {
    let sink = MemorySink::default();
    let hook = connector(&sink, "").webhook().unwrap();
    let p1 = sign_json(include_bytes!("payloads/vonage-concat-1.json"));
    let p2 = sign_json(include_bytes!("payloads/vonage-concat-2.json"));
    let p3 = sign_json(include_bytes!("payloads/vonage-concat-3.json"));
    assert_eq!(
        hook.handle(json_request(&p1)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        hook.handle(json_request(&p2)).await.status(),
        StatusCode::OK
    );
    sink.fail_with(Some(omni_connector::SendError::Failed("disk".into())));
    assert_eq!(
        hook.handle(json_request(&p3)).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    sink.fail_with(None);
    // Vonage retries the last part; the first two were kept.
    assert_eq!(
        hook.handle(json_request(&p3)).await.status(),
        StatusCode::OK
    );
    assert_eq!(events(&sink).len(), 1);
}

#[tokio::test]
async fn delivery_receipts_become_delivery_status_events() {
    let sink = MemorySink::default();
    let hook = connector(&sink, "").webhook().unwrap();
    let form = String::from_utf8_lossy(include_bytes!("payloads/vonage-dlr.form"))
        .replace("CLIENT_REF", "5f0c5d8e-0000-5000-8000-000000000001");
    let mut request = json_request(signed_query(&form).as_bytes());
    request.headers.insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    assert_eq!(hook.handle(request).await.status(), StatusCode::OK);
    let [event] = events(&sink).try_into().unwrap();
    assert_eq!(event.kind, EventKind::DeliveryStatus as i32);
    let delivery = event.delivery.unwrap();
    assert_eq!(delivery.state, DeliveryState::Delivered as i32);
    assert_eq!(
        delivery.outbound_event_id,
        "5f0c5d8e-0000-5000-8000-000000000001"
    );
    assert_eq!(event.recipients[0].value, "+447911123401");
}

async fn sms_api(Form(form): Form<Vec<(String, String)>>) -> Response {
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("api_key"), "abcd1234");
    assert_eq!(get("api_secret"), SECRET);
    let answer = match get("to").as_str() {
        "447911120430" => {
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "7")], "").into_response();
        }
        "447911120429" => (StatusCode::TOO_MANY_REQUESTS, String::new()),
        "447911120500" => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
        "447911120400" => (
            StatusCode::OK,
            r#"{"message-count":"1","messages":[{"status":"6","error-text":"Unroutable message - rejected"}]}"#.into(),
        ),
        "447911123401" => {
            assert_eq!(get("client-ref"), "5f0c5d8e-0000-5000-8000-000000000001");
            (
                StatusCode::OK,
                r#"{"message-count":"1","messages":[{"to":"447911123401","message-id":"0A0000000123ABCD1","status":"0","remaining-balance":"3.14159265","message-price":"0.03330000","network":"12345","client-ref":"5f0c5d8e-0000-5000-8000-000000000001"}]}"#.into(),
            )
        }
        _ => (StatusCode::BAD_REQUEST, "bad".into()),
    };
    answer.into_response()
}

fn reply(to: &str) -> ConversationEvent {
    ConversationEvent {
        event_id: "5f0c5d8e-0000-5000-8000-000000000001".into(),
        recipients: vec![IdentityHandle {
            kind: HandleKind::Phone as i32,
            value: to.into(),
            ..Default::default()
        }],
        content: Some(Content {
            text: "It ships today.".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_go_through_the_sms_api_and_errors_are_classified() {
    let app = Router::new().route("/sms/json", post(sms_api));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let sink = MemorySink::default();
    let file = secret_file();
    let outbound: Arc<dyn OutboundHandler> = connector(
        &sink,
        &format!("api_base = {base:?}\napi_key = \"abcd1234\"\napi_secret = {{ file = {file:?} }}\nfrom = \"AcmeInc\"\n"),
    )
    .outbound()
    .unwrap();
    let delivered = outbound.deliver(&reply("+447911123401")).await.unwrap();
    assert_eq!(delivered.provider_message_id, "0A0000000123ABCD1");
    for to in ["+447911120429", "+447911120500"] {
        assert!(matches!(
            outbound.deliver(&reply(to)).await,
            Err(DeliveryError::Temporary { .. })
        ));
    }
    let throttled = outbound.deliver(&reply("+447911120430")).await.unwrap_err();
    assert!(matches!(throttled, DeliveryError::Temporary { .. }));
    assert_eq!(throttled.retry_after(), Some(Duration::from_secs(7)));
    assert!(matches!(
        outbound.deliver(&reply("+447911120400")).await,
        Err(DeliveryError::Rejected(_))
    ));
    assert!(matches!(
        outbound.deliver(&reply("+447911120999")).await,
        Err(DeliveryError::Rejected(_))
    ));
}
