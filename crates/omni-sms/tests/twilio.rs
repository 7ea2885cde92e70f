//! The Twilio channel end to end: documented payloads signed with Twilio's
//! published algorithm, media deferred and then fetched from, and replies
//! sent to, a local server that speaks Twilio's REST API.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use omni_connector::{
    ChannelContext, Connector, DeliveryError, EventSender, FetchError, LogEntry, MediaRef,
    MemoryMediaQueue, OutboundHandler, WebhookHandler, WebhookRequest, testing::MemorySink,
};
use omni_proto::v1::{
    Content, ConversationEvent, DeliveryState, EventKind, HandleKind, IdentityHandle,
};
use omni_sms::twilio::{self, SIGNATURE_HEADER};

const BASE: &str = "https://omnid.example.com";
const TOKEN: &str = "twilio-auth-token-0123456789abcdef";
const SID: &str = "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX";

fn secret_file() -> String {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("omni-sms-twilio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
        file
    })
    .display()
    .to_string()
}

fn connector(sink: &MemorySink, extra: &str) -> Arc<dyn Connector> {
    connector_with_queue(sink, &MemoryMediaQueue::default(), extra)
}

/// A channel whose deferred media lands in `queue`.
fn connector_with_queue(
    sink: &MemorySink,
    queue: &MemoryMediaQueue,
    extra: &str,
) -> Arc<dyn Connector> {
    let mut context = ChannelContext::new("acme-twilio", EventSender::new(Arc::new(sink.clone())));
    context.public_base_url = Some(BASE.to_owned());
    context.media = Arc::new(queue.clone());
    let settings = format!(
        "account_sid = {SID:?}\nauth_token = {{ file = {:?} }}\ndefault_region = \"US\"\n{extra}",
        secret_file()
    );
    omni_connector::factory::<omni_sms::twilio::TwilioConfig>()
        .build(context, toml::from_str(&settings).unwrap())
        .unwrap()
}

fn webhook(sink: &MemorySink) -> Arc<dyn WebhookHandler> {
    connector(sink, "fetch_media = false\n").webhook().unwrap()
}

fn params(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn request(body: &[u8], query: Option<&str>, signature: Option<String>) -> WebhookRequest {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    if let Some(signature) = signature {
        headers.insert(SIGNATURE_HEADER, signature.parse().unwrap());
    }
    let path = match query {
        Some(q) => format!("/webhooks/acme-twilio?{q}"),
        None => "/webhooks/acme-twilio".to_owned(),
    };
    WebhookRequest {
        method: http::Method::POST,
        uri: path.parse().unwrap(),
        headers,
        body: Bytes::copy_from_slice(body),
        received_at: SystemTime::now(),
        public_url: Some(format!("{BASE}{path}")),
    }
}

/// Signs as Twilio does: the full URL, then each POST parameter's name and
/// value sorted by name, HMAC-SHA1 under the auth token, base64.
fn signed(body: &[u8], query: Option<&str>) -> WebhookRequest {
    let url = match query {
        Some(q) => format!("{BASE}/webhooks/acme-twilio?{q}"),
        None => format!("{BASE}/webhooks/acme-twilio"),
    };
    let mut sorted = params(body);
    sorted.sort();
    let mut data = url;
    for (k, v) in &sorted {
        data.push_str(k);
        data.push_str(v);
    }
    use base64::Engine as _;
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    request(body, query, Some(signature))
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

const SMS: &[u8] = include_bytes!("payloads/twilio-inbound-sms.form");

#[tokio::test]
async fn signed_sms_is_appended_then_answered_with_empty_twiml() {
    let sink = MemorySink::default();
    let response = webhook(&sink).handle(signed(SMS, None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/xml");
    assert!(String::from_utf8_lossy(response.body()).contains("<Response/>"));
    let [event] = events(&sink).try_into().unwrap();
    assert_eq!(
        event.event_id,
        omni_model::event_id("acme-twilio", "SM1b2c3d4e5f60718293a4b5c6d7e8f901").to_string()
    );
    assert_eq!(
        event.provider_message_id,
        "SM1b2c3d4e5f60718293a4b5c6d7e8f901"
    );
    let sender = event.sender.unwrap();
    assert_eq!(
        (sender.kind, sender.value.as_str(), sender.verified),
        (HandleKind::Phone as i32, "+14155550134", true)
    );
    assert_eq!(event.recipients[0].value, "+14155550100");
    assert_eq!(
        event.content.unwrap().text,
        "Hello from Twilio! Where is my order?"
    );
    assert_eq!(event.provider_metadata["NumSegments"], "1");
}

#[tokio::test]
async fn forged_and_missing_signatures_get_403_and_nothing_is_stored() {
    let sink = MemorySink::default();
    let hook = webhook(&sink);
    let mut tampered = signed(SMS, None);
    tampered.body = Bytes::from(String::from_utf8_lossy(SMS).replace("order", "refund"));
    let mut other_url = signed(SMS, None);
    other_url.uri = "/webhooks/acme-twilio?x=1".parse().unwrap();
    for req in [
        request(SMS, None, None),
        request(SMS, None, Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ=".into())),
        tampered,
        other_url,
    ] {
        let response = hook.handle(req).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert!(sink.entries().is_empty());
}

#[tokio::test]
async fn a_replay_carries_the_same_event_id() {
    let sink = MemorySink::default();
    let hook = webhook(&sink);
    for _ in 0..2 {
        assert_eq!(
            hook.handle(signed(SMS, None)).await.status(),
            StatusCode::OK
        );
    }
    let [a, b] = events(&sink).try_into().unwrap();
    assert_eq!(a.event_id, b.event_id);
}

#[tokio::test]
async fn the_log_failing_gets_503_with_retry_after() {
    let sink = MemorySink::default();
    sink.fail_with(Some(omni_connector::SendError::Overloaded));
    let response = webhook(&sink).handle(signed(SMS, None)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn status_callback_becomes_a_delivery_status_event() {
    let sink = MemorySink::default();
    let body = include_bytes!("payloads/twilio-status-undelivered.form");
    let query = "omnid_outbound_event_id=5f0c5d8e-0000-5000-8000-000000000001";
    let response = webhook(&sink).handle(signed(body, Some(query))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let [event] = events(&sink).try_into().unwrap();
    assert_eq!(event.kind, EventKind::DeliveryStatus as i32);
    let delivery = event.delivery.unwrap();
    assert_eq!(delivery.state, DeliveryState::Failed as i32);
    assert_eq!(delivery.provider_status, "undelivered");
    assert_eq!(delivery.error, "30003");
    assert_eq!(
        delivery.outbound_event_id,
        "5f0c5d8e-0000-5000-8000-000000000001"
    );
    assert_eq!(event.recipients[0].value, "+14155550134");
}

#[tokio::test]
async fn authentic_garbage_is_dead_lettered() {
    let sink = MemorySink::default();
    let body = b"MessageSid=SM1&From=not-a-number&Body=hi";
    let response = webhook(&sink).handle(signed(body, None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let entries = sink.entries();
    let [LogEntry::DeadLetter(dead)] = entries.as_slice() else {
        panic!()
    };
    assert_eq!(dead.reason, "invalid_field");
    assert_eq!(dead.raw_payload, body);
}

#[test]
fn public_base_url_is_required_to_verify() {
    let sink = MemorySink::default();
    let context = ChannelContext::new("acme-twilio", EventSender::new(Arc::new(sink)));
    let settings = format!(
        "account_sid = {SID:?}\nauth_token = {{ file = {:?} }}\n",
        secret_file()
    );
    let error = omni_connector::factory::<omni_sms::twilio::TwilioConfig>()
        .build(context, toml::from_str(&settings).unwrap())
        .unwrap_err();
    assert!(error.reason.contains("public_base_url"), "{error}");
}

type Form = Vec<(String, String)>;

/// What the local Twilio saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    forms: Arc<Mutex<Vec<Form>>>,
    auth: Arc<Mutex<Vec<String>>>,
}

fn record_auth(seen: &Seen, headers: &HeaderMap) {
    seen.auth.lock().unwrap().push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    );
}

async fn create_message(
    State(seen): State<Seen>,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<Form>,
) -> Response {
    record_auth(&seen, &headers);
    let to = form
        .iter()
        .find(|(k, _)| k == "To")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    seen.forms.lock().unwrap().push(form);
    match to.as_str() {
        "+14155550130" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            r#"{"code":20429,"message":"Too Many Requests","more_info":"https://www.twilio.com/docs/errors/20429","status":429}"#,
        )
            .into_response(),
        "+14155550129" => (
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"code":20429,"message":"Too Many Requests","more_info":"https://www.twilio.com/docs/errors/20429","status":429}"#,
        )
            .into_response(),
        "+14155550150" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"code":20500,"message":"Internal Server Error","status":500}"#,
        )
            .into_response(),
        "+14155550140" => (
            StatusCode::BAD_REQUEST,
            r#"{"code":21211,"message":"The 'To' number +14155550140 is not a valid phone number.","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#,
        )
            .into_response(),
        _ => (
            StatusCode::CREATED,
            r#"{"account_sid":"ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX","api_version":"2010-04-01","body":"It ships today.","direction":"outbound-api","error_code":null,"error_message":null,"from":"+14155550100","num_media":"0","num_segments":"1","sid":"SM4d5e6f708192a3b4c5d6e7f8091a2b3c","status":"queued","to":"+14155550134"}"#,
        )
            .into_response(),
    }
}

/// A media file, like Twilio's: only with the account's basic auth.
async fn media(State(seen): State<Seen>, headers: HeaderMap) -> Response {
    record_auth(&seen, &headers);
    (
        [("content-type", "image/jpeg")],
        &b"\xff\xd8\xff\xe0fake-jpeg"[..],
    )
        .into_response()
}

async fn server(seen: Seen) -> String {
    let app = Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(create_message),
        )
        .route("/media/{id}", get(media))
        .route("/big/{id}", get(|| async { vec![0u8; 64 * 1024] }))
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move {
                StatusCode::from_u16(code).unwrap().into_response()
            }),
        )
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn reply(to: &str) -> ConversationEvent {
    ConversationEvent {
        event_id: "5f0c5d8e-0000-5000-8000-000000000001".into(),
        channel_id: "acme-twilio".into(),
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
async fn replies_go_through_the_messages_api_and_errors_are_classified() {
    let seen = Seen::default();
    let base = server(seen.clone()).await;
    let sink = MemorySink::default();
    let outbound: Arc<dyn OutboundHandler> = connector(
        &sink,
        &format!("api_base = {base:?}\nfrom = \"+14155550100\"\n"),
    )
    .outbound()
    .unwrap();

    let delivered = outbound.deliver(&reply("+14155550134")).await.unwrap();
    assert_eq!(
        delivered.provider_message_id,
        "SM4d5e6f708192a3b4c5d6e7f8091a2b3c"
    );
    assert_eq!(delivered.provider_status, "queued");
    let form = seen.forms.lock().unwrap()[0].clone();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("To").as_deref(), Some("+14155550134"));
    assert_eq!(get("From").as_deref(), Some("+14155550100"));
    assert_eq!(get("Body").as_deref(), Some("It ships today."));
    assert_eq!(
        get("StatusCallback").as_deref(),
        Some(
            "https://omnid.example.com/webhooks/acme-twilio?omnid_outbound_event_id=5f0c5d8e-0000-5000-8000-000000000001"
        )
    );
    use base64::Engine as _;
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"))
    );
    assert_eq!(seen.auth.lock().unwrap()[0], expected_auth);

    for to in ["+14155550129", "+14155550150"] {
        assert!(
            matches!(
                outbound.deliver(&reply(to)).await,
                Err(DeliveryError::Temporary { .. })
            ),
            "{to}"
        );
    }
    // A 429 that says how long to wait is retried no sooner; one that does
    // not leaves the wait to the daemon's backoff.
    let throttled = outbound.deliver(&reply("+14155550130")).await.unwrap_err();
    assert!(matches!(throttled, DeliveryError::Temporary { .. }));
    assert_eq!(throttled.retry_after(), Some(Duration::from_secs(7)));
    let plain = outbound.deliver(&reply("+14155550129")).await.unwrap_err();
    assert_eq!(plain.retry_after(), None);
    match outbound.deliver(&reply("+14155550140")).await {
        Err(DeliveryError::Rejected(detail)) => assert!(detail.contains("21211"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // Nobody listening: temporary.
    let dead = connector(
        &sink,
        "api_base = \"http://127.0.0.1:9\"\nfrom = \"+14155550100\"\ntimeout_secs = 2\n",
    )
    .outbound()
    .unwrap();
    assert!(matches!(
        dead.deliver(&reply("+14155550134")).await,
        Err(DeliveryError::Temporary { .. })
    ));
}

/// The MMS payload with its media URL on the local server (`/media/`).
fn mms_body(base: &str) -> String {
    String::from_utf8_lossy(include_bytes!("payloads/twilio-inbound-mms.form"))
        .replace("MEDIA_BASE%2F2010-04-01", &format!("{base}/media/"))
        .replace("%2FAccounts%2FACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX%2FMessages%2FMM2c3d4e5f60718293a4b5c6d7e8f9012%2FMedia%2F", "")
}

const MEDIA_ID: &str = "ME0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread")]
async fn mms_is_answered_at_once_and_its_media_deferred_then_fetched() {
    let seen = Seen::default();
    let base = server(seen.clone()).await;
    let sink = MemorySink::default();
    let queue = MemoryMediaQueue::default();
    let channel = connector_with_queue(
        &sink,
        &queue,
        &format!("max_media_bytes = 1024\napi_base = {base:?}\n"),
    );
    let hook = channel.webhook().unwrap();
    let response = hook.handle(signed(mms_body(&base).as_bytes(), None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(String::from_utf8_lossy(response.body()).contains("<Response/>"));
    // The message is durable before any download: its attachment still
    // names Twilio's URL, and the download waits in the media queue.
    let url = format!("{base}/media/{MEDIA_ID}");
    let [event] = events(&sink).try_into().unwrap();
    let attachment = event.content.as_ref().unwrap().attachments[0].clone();
    assert_eq!(attachment.media_type, "image/jpeg");
    assert_eq!(attachment.uri, url);
    assert!(attachment.sha256.is_empty());
    assert!(
        seen.auth.lock().unwrap().is_empty(),
        "nothing downloaded yet"
    );
    let [job] = queue.jobs().try_into().unwrap();
    assert_eq!(job.channel_id, "acme-twilio");
    assert_eq!(job.event_id, event.event_id);
    assert_eq!(
        job.media,
        MediaRef {
            attachment: 0,
            source: url
        }
    );

    // The queue's worker fetches it later, with the account's credentials.
    let fetcher = channel.media().unwrap();
    let fetched = fetcher.fetch(&job.media).await.unwrap();
    assert_eq!(fetched.content.as_ref(), b"\xff\xd8\xff\xe0fake-jpeg");
    assert_eq!(fetched.content.len(), 13);
    assert_eq!(fetched.media_type, "image/jpeg");
    use base64::Engine as _;
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"))
    );
    assert_eq!(seen.auth.lock().unwrap().as_slice(), [expected_auth]);

    // Over the limit: the message is taken all the same, and the download
    // fails for good (its attachment keeps Twilio's URL).
    let sink = MemorySink::default();
    let queue = MemoryMediaQueue::default();
    let hook = connector_with_queue(&sink, &queue, "max_media_bytes = 1024\n")
        .webhook()
        .unwrap();
    let big = mms_body(&base)
        .replace("%2Fmedia%2F", "%2Fbig%2F")
        .replace("/media/", "/big/");
    assert_eq!(
        hook.handle(signed(big.as_bytes(), None)).await.status(),
        StatusCode::OK
    );
    let [event] = events(&sink).try_into().unwrap();
    let attachment = event.content.unwrap().attachments[0].clone();
    assert!(attachment.uri.contains("/big/"), "{attachment:?}");
    assert!(attachment.sha256.is_empty());
    let [job] = queue.jobs().try_into().unwrap();
    assert!(matches!(
        fetcher.fetch(&job.media).await,
        Err(FetchError::Permanent(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn media_failures_are_temporary_or_permanent_as_twilio_answers() {
    let base = server(Seen::default()).await;
    let fetcher = connector(&MemorySink::default(), &format!("api_base = {base:?}\n"))
        .media()
        .unwrap();
    let at = |source: String| MediaRef {
        attachment: 0,
        source,
    };
    for code in [500, 503, 429] {
        assert!(
            matches!(
                fetcher.fetch(&at(format!("{base}/status/{code}"))).await,
                Err(FetchError::Temporary(_))
            ),
            "{code}"
        );
    }
    for code in [404, 403] {
        assert!(
            matches!(
                fetcher.fetch(&at(format!("{base}/status/{code}"))).await,
                Err(FetchError::Permanent(_))
            ),
            "{code}"
        );
    }
    // A media URL on another host than `api_base` (a forged post to a
    // channel without verification) never gets the account's credentials.
    assert!(matches!(
        fetcher
            .fetch(&at("https://attacker.example/media/x".into()))
            .await,
        Err(FetchError::Permanent(ref reason)) if reason.contains("not on")
    ));
    // Nobody listening: temporary.
    let unreachable = connector(
        &MemorySink::default(),
        "api_base = \"http://127.0.0.1:9\"\n",
    )
    .media()
    .unwrap();
    assert!(matches!(
        unreachable
            .fetch(&at("http://127.0.0.1:9/media/x".into()))
            .await,
        Err(FetchError::Temporary(_))
    ));
}

#[tokio::test]
async fn without_fetch_media_the_event_keeps_twilios_urls_and_nothing_is_deferred() {
    let sink = MemorySink::default();
    let queue = MemoryMediaQueue::default();
    let channel = connector_with_queue(&sink, &queue, "fetch_media = false\n");
    assert!(channel.media().is_none());
    let response = channel
        .webhook()
        .unwrap()
        .handle(signed(mms_body("https://api.twilio.com").as_bytes(), None))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let [event] = events(&sink).try_into().unwrap();
    assert_eq!(
        event.content.unwrap().attachments[0].uri,
        format!("https://api.twilio.com/media/{MEDIA_ID}")
    );
    assert!(queue.jobs().is_empty());
}

#[test]
fn documented_example_signature_matches() {
    let params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+12349013030"),
        ("Digits", "1234"),
        ("From", "+12349013030"),
        ("To", "+18005551212"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    assert_eq!(
        twilio::signature(
            b"12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &params
        ),
        "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    );
}
