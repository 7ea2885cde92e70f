//! SMS replies end to end: `POST /v1/outbound` into the real daemon for a
//! Twilio, a Vonage and a generic gateway channel, out to a local server
//! playing each provider's send API, and on the stream: the replies on the
//! outbound topic and their delivery statuses on the inbound topic, all
//! carrying the SMS channel kind and the provider's message id.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Form, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use omni_testkit::{daemon::Deployment, twilio::FakeTwilio};
use serde_json::{Value, json};

const TOKEN: &str = "helpdesk-token-0123456789";
const PUBLIC: &str = "https://omnid.example.com";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const SMS_SECRET: &str = "sms-secret-0123456789";
const VONAGE_ID: &str = "0A0000000123ABCD1";

/// What each provider was asked to send: the recipient by API.
type Sent = Arc<Mutex<Vec<(&'static str, String)>>>;

/// Vonage's SMS API: one part accepted.
async fn vonage(State(sent): State<Sent>, Form(form): Form<Vec<(String, String)>>) -> Response {
    let to = field(&form, "to");
    sent.lock().unwrap().push(("vonage", to.clone()));
    let body = json!({
        "message-count": "1",
        "messages": [{
            "to": to, "message-id": VONAGE_ID, "status": "0",
            "remaining-balance": "3.14159265", "message-price": "0.03330000",
            "network": "12345", "client-ref": field(&form, "client-ref"),
        }],
    });
    (StatusCode::OK, body.to_string()).into_response()
}

/// A gateway that answers any send with `{"ok": true}`.
async fn gateway(State(sent): State<Sent>, body: String) -> Response {
    let value: Value = serde_json::from_str(&body).unwrap_or_default();
    let to = value["to"].as_str().unwrap_or_default().to_owned();
    sent.lock().unwrap().push(("gateway", to));
    (StatusCode::OK, r#"{"ok":true}"#).into_response()
}

fn field(form: &[(String, String)], name: &str) -> String {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Vonage and the gateway on one local server; returns its base URL.
/// Twilio is the testkit's [`FakeTwilio`].
async fn providers(sent: Sent) -> String {
    let app = Router::new()
        .route("/sms/json", post(vonage))
        .route("/send", post(gateway))
        .with_state(sent);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// The outbound API on, the public URL Twilio's callbacks need, and one
/// channel of each SMS kind: Twilio's sending through `twilio_base`, the
/// others through `base`.
fn deployment(twilio_base: &str, base: &str) -> Deployment {
    let deployment = Deployment::new();
    deployment.enable_api(TOKEN);
    let config = std::fs::read_to_string(deployment.config_path()).unwrap();
    deployment.write_config(&config.replacen(
        "[http]\n",
        &format!("[http]\npublic_base_url = \"{PUBLIC}\"\n"),
        1,
    ));
    let secret = deployment.path().join("sms-secret");
    std::fs::write(&secret, SMS_SECRET).unwrap();
    let secret = format!("{{ file = {:?} }}", secret.display().to_string());
    deployment.write_channel(
        "sms-twilio",
        &format!(
            "id = \"sms-twilio\"\nkind = \"twilio\"\naccount_sid = \"{SID}\"\nauth_token = {secret}\n\
             default_region = \"US\"\nfrom = \"+14155550100\"\nfetch_media = false\napi_base = \"{twilio_base}\"\n"
        ),
    );
    deployment.write_channel(
        "sms-vonage",
        &format!(
            "id = \"sms-vonage\"\nkind = \"vonage\"\nsignature_secret = {secret}\n\
             api_key = \"abcd1234\"\napi_secret = {secret}\nfrom = \"AcmeInc\"\napi_base = \"{base}\"\n"
        ),
    );
    deployment.write_channel(
        "sms-gateway",
        &format!(
            "id = \"sms-gateway\"\nkind = \"sms_gateway\"\nsecret = {secret}\n[outbound]\n\
             url = \"{base}/send\"\nbody_template = '{{\"to\":\"{{{{to}}}}\",\"text\":\"{{{{text}}}}\"}}'\n"
        ),
    );
    deployment
}

fn reply(channel: &str, to: &str) -> Value {
    json!({
        "channelId": channel,
        "providerMessageId": format!("ticket-7/{channel}"),
        "recipients": [{ "kind": "HANDLE_KIND_PHONE", "value": to }],
        "content": { "text": "Your order ships today." },
    })
}

/// Delivery statuses on the inbound topic, by channel.
fn statuses(deployment: &Deployment) -> BTreeMap<String, Value> {
    deployment
        .tail("inbound")
        .into_iter()
        .filter(|r| r["value"]["kind"] == "EVENT_KIND_DELIVERY_STATUS")
        .map(|r| (r["value"]["channelId"].as_str().unwrap().to_owned(), r))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_replies_are_sent_and_reported_with_the_sms_channel_kind() {
    let sent = Sent::default();
    let base = providers(sent.clone()).await;
    let twilio = FakeTwilio::start(SID, SMS_SECRET).await;
    let deployment = deployment(twilio.base_url(), &base);
    let daemon = deployment.start();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let mut posted = BTreeMap::new();
    for (channel, to) in [
        ("sms-twilio", "+14155550134"),
        ("sms-vonage", "+447911123401"),
        ("sms-gateway", "+989121234567"),
    ] {
        let response = client
            .post(daemon.url("/v1/outbound"))
            .bearer_auth(TOKEN)
            .json(&reply(channel, to))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "{channel}: {body}");
        posted.insert(channel, (to, body["event_id"].as_str().unwrap().to_owned()));
    }

    // Every reply is on the outbound topic as an SMS.
    let outbound = deployment.tail("outbound");
    assert_eq!(outbound.len(), 3, "{outbound:?}");
    for record in &outbound {
        let value = &record["value"];
        let channel = value["channelId"].as_str().unwrap();
        assert_eq!(value["channelKind"], "CHANNEL_KIND_SMS", "{value}");
        assert_eq!(value["eventId"], posted[channel].1.as_str());
    }

    // Each delivery status carries the SMS kind and the provider's id.
    let deadline = Instant::now() + Duration::from_secs(30);
    let statuses = loop {
        let statuses = statuses(&deployment);
        if statuses.len() == 3 {
            break statuses;
        }
        assert!(
            Instant::now() < deadline,
            "delivery statuses within 30 s: {statuses:?}\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let twilio_sent = twilio.sent();
    assert_eq!(twilio_sent.len(), 1, "{twilio_sent:?}");
    let provider_ids = [
        ("sms-twilio", twilio_sent[0].sid.clone()),
        ("sms-vonage", VONAGE_ID.to_owned()),
        // The gateway answers no id of its own: the reply's event id is it.
        ("sms-gateway", posted["sms-gateway"].1.clone()),
    ];
    for (channel, provider_id) in provider_ids {
        let (to, event_id) = &posted[channel];
        let record = &statuses[channel];
        let value = &record["value"];
        assert_eq!(value["channelKind"], "CHANNEL_KIND_SMS", "{value}");
        assert_eq!(value["direction"], "DIRECTION_OUTBOUND");
        assert_eq!(value["delivery"]["state"], "DELIVERY_STATE_SENT", "{value}");
        assert_eq!(value["delivery"]["outboundEventId"], event_id.as_str());
        assert_eq!(value["providerMessageId"], provider_id.as_str(), "{value}");
        assert_eq!(value["recipients"][0]["value"], *to);
        assert_eq!(record["key"], format!("phone:{to}"));
        assert_eq!(
            value["eventId"],
            omni_model::event_id(channel, &format!("delivery:{event_id}")).to_string()
        );
    }

    // Each provider was asked once, for its recipient.
    let mut sent = sent.lock().unwrap().clone();
    sent.extend(twilio.sent().into_iter().map(|s| ("twilio", s.to)));
    sent.sort();
    assert_eq!(
        sent,
        [
            ("gateway", "+989121234567".to_owned()),
            ("twilio", "+14155550134".to_owned()),
            ("vonage", "447911123401".to_owned()),
        ]
    );
}
