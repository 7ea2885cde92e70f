//! Replies end to end: `POST /v1/outbound` into the real daemon, out over
//! SMTP to a real server (omni-testkit's aiosmtpd sink), and the delivery
//! status back on the inbound topic, read with `omnid tail`. Also the
//! API's refusals, a relay that is down and comes back, and a message whose
//! channel goes away while it waits.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use omni_testkit::SmtpSink;
use omni_testkit::{
    daemon::{CHANNEL as API_CHANNEL, Deployment},
    kafka::{Broker, log_config},
};
use serde_json::{Value, json};

const CHANNEL: &str = "support-mail";
const TOKEN: &str = "helpdesk-token-0123456789";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A deployment with the outbound API on and an email channel whose relay
/// is `127.0.0.1:smtp_port`.
fn deployment(smtp_port: u16) -> Deployment {
    deployment_with(smtp_port, "")
}

/// The same, with more sections in `omnid.toml`.
fn deployment_with(smtp_port: u16, extra_config: &str) -> Deployment {
    let deployment = Deployment::with_config(extra_config);
    deployment.enable_api(TOKEN);
    deployment.write_channel(
        CHANNEL,
        &format!(
            "id = \"{CHANNEL}\"\nkind = \"email\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\n\
             tls = \"none\"\nfrom = \"Acme Support <support@acme.example>\"\ntimeout_secs = 5\n"
        ),
    );
    deployment
}

fn reply(key: &str) -> Value {
    json!({
        "channelId": CHANNEL,
        "providerMessageId": key,
        "recipients": [
            { "kind": "HANDLE_KIND_EMAIL", "value": "sara@shop.example", "displayName": "Sara Mohammadi" }
        ],
        "content": {
            "subject": "Re: Réclamation 7781",
            "text": "Your order ships today.\n\nAcme Support"
        },
        "threading": {
            "inReplyTo": ["order-2@shop.example"],
            "references": ["order-1@shop.example"]
        },
        "providerMetadata": { "auto_acknowledgement": "false" }
    })
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = client.post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Header fields of a raw message, unfolded.
fn header(raw: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap().replace("\r\n ", " ");
    head.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// `omnid_outbound_deliveries_total` of the channel for one outcome.
async fn counter(client: &reqwest::Client, url: &str, outcome: &str) -> f64 {
    let text = client.get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with("omnid_outbound_deliveries_total{"))
        .filter(|line| line.contains(&format!("channel=\"{CHANNEL}\"")))
        .filter(|line| line.contains(&format!("outcome=\"{outcome}\"")))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Delivery-status records on the inbound topic.
fn statuses(deployment: &Deployment) -> Vec<Value> {
    deployment
        .tail("inbound")
        .into_iter()
        .filter(|r| r["value"]["kind"] == "EVENT_KIND_DELIVERY_STATUS")
        .collect()
}

fn wait_until<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_reply_is_sent_threaded_and_reported() {
    let sink = SmtpSink::start();
    let deployment = deployment(sink.port());
    let daemon = deployment.start();
    let client = client();
    let url = daemon.url("/v1/outbound");

    let (status, body) = post(&client, &url, Some(TOKEN), &reply("ticket-19/reply-1")).await;
    assert_eq!(status, 202, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    assert_eq!(
        event_id,
        omni_model::event_id(CHANNEL, "ticket-19/reply-1").to_string()
    );

    let received = sink.wait_for(1, Duration::from_secs(30));
    let message = &received[0];
    assert_eq!(message.mail_from, "support@acme.example");
    assert_eq!(message.rcpt_to, ["sara@shop.example"]);
    let raw = &message.data;
    let message_id = format!("{event_id}@acme.example");
    assert_eq!(
        header(raw, "Message-ID").as_deref(),
        Some(format!("<{message_id}>").as_str())
    );
    assert_eq!(
        header(raw, "In-Reply-To").as_deref(),
        Some("<order-2@shop.example>")
    );
    assert_eq!(
        header(raw, "References").as_deref(),
        Some("<order-1@shop.example> <order-2@shop.example>")
    );
    assert_eq!(
        header(raw, "From").as_deref(),
        Some("\"Acme Support\" <support@acme.example>")
    );
    assert!(header(raw, "Auto-Submitted").is_none());
    assert!(
        header(raw, "Subject").unwrap().contains("=?utf-8?"),
        "non-ASCII subject is encoded"
    );

    // The delivery status, keyed and threaded like the customer's mail.
    let status = wait_until("a delivery status", Duration::from_secs(20), || {
        statuses(&deployment).into_iter().next()
    });
    assert_eq!(status["key"], "email:sara@shop.example");
    let value = &status["value"];
    assert_eq!(status["headers"]["ce_id"], value["eventId"]);
    assert_eq!(
        value["eventId"],
        omni_model::event_id(CHANNEL, &format!("delivery:{event_id}")).to_string()
    );
    assert_eq!(value["channelId"], CHANNEL);
    assert_eq!(value["channelKind"], "CHANNEL_KIND_EMAIL");
    assert_eq!(value["direction"], "DIRECTION_OUTBOUND");
    assert_eq!(value["providerMessageId"], message_id.as_str());
    assert_eq!(value["threading"]["messageId"], message_id.as_str());
    assert_eq!(value["recipients"][0]["value"], "sara@shop.example");
    assert_eq!(value["delivery"]["outboundEventId"], event_id.as_str());
    assert_eq!(value["delivery"]["state"], "DELIVERY_STATE_SENT");
    assert!(
        value["delivery"]["providerStatus"]
            .as_str()
            .unwrap()
            .starts_with("250"),
        "{value}"
    );

    // The command itself is on the outbound topic.
    let outbound = deployment.tail("outbound");
    assert_eq!(outbound.len(), 1);
    assert_eq!(outbound[0]["value"]["eventId"], event_id.as_str());
    assert_eq!(outbound[0]["key"], "email:sara@shop.example");

    // A client retry with the same idempotency key: same id, not sent again.
    let (status, body) = post(&client, &url, Some(TOKEN), &reply("ticket-19/reply-1")).await;
    assert_eq!(status, 202);
    assert_eq!(body["event_id"], event_id.as_str());
    assert_eq!(deployment.tail("outbound").len(), 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(&client, &daemon.url("/metrics"), "duplicate").await < 1.0 {
        assert!(Instant::now() < deadline, "the retry was not consumed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(counter(&client, &daemon.url("/metrics"), "sent").await, 1.0);
    assert_eq!(sink.received().len(), 1, "a retried post is sent once");
    assert_eq!(statuses(&deployment).len(), 1);

    // An auto-acknowledgement says so.
    let mut ack = reply("ticket-20/ack");
    ack["providerMetadata"]["auto_acknowledgement"] = json!("true");
    let (status, _) = post(&client, &url, Some(TOKEN), &ack).await;
    assert_eq!(status, 202);
    let received = sink.wait_for(2, Duration::from_secs(30));
    assert_eq!(
        header(&received[1].data, "Auto-Submitted").as_deref(),
        Some("auto-replied")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_bad_tokens_channels_and_bodies() {
    let sink = SmtpSink::start();
    let deployment = deployment(sink.port());
    let daemon = deployment.start();
    let client = client();
    let url = daemon.url("/v1/outbound");

    let body = reply("k-1");
    let (status, error) = post(&client, &url, None, &body).await;
    assert_eq!(status, 401);
    assert_eq!(error["error"]["code"], "unauthorized");
    let (status, _) = post(&client, &url, Some("helpdesk-token-0123456788"), &body).await;
    assert_eq!(status, 401);
    let (status, _) = post(&client, &url, Some(""), &body).await;
    assert_eq!(status, 401);

    let mut unknown = reply("k-2");
    unknown["channelId"] = json!("no-such-channel");
    let (status, error) = post(&client, &url, Some(TOKEN), &unknown).await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "unknown_channel");

    // The API channel receives only.
    let mut receive_only = reply("k-3");
    receive_only["channelId"] = json!(API_CHANNEL);
    let (status, error) = post(&client, &url, Some(TOKEN), &receive_only).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], "outbound_not_supported");

    let mut no_key = reply("");
    no_key.as_object_mut().unwrap().remove("providerMessageId");
    let (status, error) = post(&client, &url, Some(TOKEN), &no_key).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], "invalid_field");

    let mut typo = reply("k-4");
    typo["recipeints"] = json!([]);
    let (status, error) = post(&client, &url, Some(TOKEN), &typo).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], "invalid_json");

    let mut huge = reply("k-5");
    huge["content"]["text"] = json!("x".repeat(70_000));
    let (status, error) = post(&client, &url, Some(TOKEN), &huge).await;
    assert_eq!(status, 413);
    assert_eq!(error["error"]["code"], "payload_too_large");

    assert!(deployment.tail("outbound").is_empty(), "nothing was stored");

    // Without `http.api_token` the API is off.
    let plain = Deployment::new();
    let other = plain.start();
    let (status, _) = post(&client, &other.url("/v1/outbound"), Some(TOKEN), &body).await;
    assert_eq!(status, 404);
}

/// A TCP gate in front of a server: connections are dropped while it is
/// closed and relayed once it is open.
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
}

impl Gate {
    fn new(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(false));
        let is_open = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if !is_open.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                relay(&client, &server);
                relay(&server, &client);
            }
        });
        Self { port, open }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

fn relay(from: &TcpStream, to: &TcpStream) {
    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        while let Ok(n) = from.read(&mut buffer) {
            if n == 0 || to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_is_down_gets_the_message_once_it_is_back() {
    let sink = SmtpSink::start();
    let gate = Gate::new(sink.port());
    let deployment = deployment(gate.port);
    let daemon = deployment.start();
    let client = client();

    let (status, body) = post(
        &client,
        &daemon.url("/v1/outbound"),
        Some(TOKEN),
        &reply("ticket-21/reply-1"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    wait_until("a retry", Duration::from_secs(20), || {
        daemon
            .stderr()
            .contains("outbound delivery failed, retrying")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(sink.received().is_empty());
    assert!(statuses(&deployment).is_empty(), "no status while retrying");

    gate.open();
    let received = sink.wait_for(1, Duration::from_secs(40));
    assert_eq!(received.len(), 1);
    let status = wait_until("a delivery status", Duration::from_secs(20), || {
        statuses(&deployment).into_iter().next()
    });
    assert_eq!(status["value"]["delivery"]["state"], "DELIVERY_STATE_SENT");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sink.received().len(), 1, "sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_channel_goes_away_is_dead_lettered() {
    // Nothing listens on the relay port: the message waits, retrying.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let deployment = deployment(port);
    let daemon = deployment.start();
    let (status, body) = post(
        &client(),
        &daemon.url("/v1/outbound"),
        Some(TOKEN),
        &reply("ticket-22/reply-1"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    wait_until("a retry", Duration::from_secs(20), || {
        daemon
            .stderr()
            .contains("outbound delivery failed, retrying")
            .then_some(())
    });

    std::fs::remove_file(deployment.channels_dir().join(format!("{CHANNEL}.toml"))).unwrap();
    let dead = wait_until("a dead letter", Duration::from_secs(60), || {
        deployment.tail("deadletter").into_iter().next()
    });
    let value = &dead["value"];
    assert_eq!(value["reason"], "unknown_channel");
    assert_eq!(value["channelId"], CHANNEL);
    assert_eq!(value["metadata"]["event_id"], event_id.as_str());
    assert!(value["rawPayload"].as_str().is_some_and(|p| !p.is_empty()));
    assert!(statuses(&deployment).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_out_from_kafka_too() {
    let broker = Broker::start().await;
    let sink = SmtpSink::start();
    // JSON payloads, so the dispatcher decodes by content-type.
    let deployment = deployment_with(sink.port(), &log_config(&broker.bootstrap(), 3, "json"));
    let daemon = deployment.start();
    let (status, body) = post(
        &client(),
        &daemon.url("/v1/outbound"),
        Some(TOKEN),
        &reply("ticket-23/reply-1"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_owned();

    // The first consumer-group join takes a while on a fresh broker.
    let received = sink.wait_for(1, Duration::from_secs(90));
    assert_eq!(
        header(&received[0].data, "Message-ID"),
        Some(format!("<{event_id}@acme.example>"))
    );
    let status = wait_until("a delivery status", Duration::from_secs(30), || {
        statuses(&deployment).into_iter().next()
    });
    assert_eq!(status["headers"]["content-type"], "application/json");
    assert_eq!(status["key"], "email:sara@shop.example");
    assert_eq!(status["value"]["delivery"]["state"], "DELIVERY_STATE_SENT");
    assert_eq!(
        status["value"]["delivery"]["outboundEventId"],
        event_id.as_str()
    );
}
