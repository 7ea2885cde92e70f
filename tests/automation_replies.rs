//! Acknowledgements from the customer-service rules, end to end: a signed
//! Twilio webhook into the real daemon, the rules acknowledge the new
//! conversation in the customer's language, the reply goes on the
//! outbound topic once and out to a local server playing Twilio's
//! Messages API once, also when the daemon is killed right after it
//! acknowledged the webhook.

use std::time::Duration;

use omni_testkit::{
    daemon::{Daemon, Deployment},
    twilio::{self, FakeTwilio},
};
use serde_json::Value;

const PUBLIC: &str = "https://omnid.example.com";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "twilio-auth-token-0123";
const CHANNEL: &str = "support-sms";
const OUR_NUMBER: &str = "+14155550100";

const RECEIVED_FA: &str = "پیام شما رسید؛ به زودی پاسخ می‌دهیم.";
const RECEIVED_EN: &str = "We got your message and will answer soon.";

/// What Twilio was asked to send: (To, Body), all from our number.
fn sent(twilio: &FakeTwilio) -> Vec<(String, String)> {
    twilio
        .messages()
        .into_iter()
        .map(|(to, from, body)| {
            assert_eq!(from, OUR_NUMBER, "sent from the channel's number");
            (to, body)
        })
        .collect()
}

/// A Twilio channel sending through `base`, and rules acknowledging
/// every new conversation on it (Persian or English, English by default).
fn deployment(twilio: &FakeTwilio) -> Deployment {
    let deployment = Deployment::new();
    twilio.add_channel(&deployment, CHANNEL, PUBLIC, OUR_NUMBER);
    deployment.write_rules(
        "support",
        &format!(
            r#"
name = "support"
time_zone = "UTC"
default_language = "en"
channels = ["{CHANNEL}"]
[templates.received]
fa = "{RECEIVED_FA}"
en = "{RECEIVED_EN}"
[[rules]]
name = "acknowledge-new"
match.conversation = ["new"]
actions.acknowledge = "received"
"#
        ),
    );
    deployment
}

/// Posts an SMS from `from` to the channel's webhook, signed as Twilio
/// signs it; asserts the daemon acknowledged it.
async fn text_us(daemon: &Daemon, message_sid: &str, from: &str, text: &str) {
    let params = twilio::incoming_sms(SID, message_sid, from, OUR_NUMBER, text);
    let response = twilio::signed_post(
        &reqwest::Client::new(),
        &daemon.url(&format!("/webhooks/{CHANNEL}")),
        &format!("{PUBLIC}/webhooks/{CHANNEL}"),
        AUTH_TOKEN,
        &params,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200, "{}", daemon.last_lines(20));
}

/// Delivery statuses on the inbound topic.
fn statuses(deployment: &Deployment) -> Vec<Value> {
    deployment
        .tail("inbound")
        .into_iter()
        .filter(|r| r["value"]["kind"] == "EVENT_KIND_DELIVERY_STATUS")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_conversation_is_acknowledged_once_in_the_customers_language() {
    let twilio = FakeTwilio::start(SID, AUTH_TOKEN).await;
    let deployment = deployment(&twilio);
    let mut daemon = deployment.start();

    text_us(
        &daemon,
        "SM00000000000000000000000000000001",
        "+14155550123",
        "سلام، پیام من را دریافت کردید؟",
    )
    .await;
    daemon
        .eventually(
            "the acknowledgement's delivery status",
            Duration::from_secs(30),
            || (statuses(&deployment).len() == 1).then_some(()),
        )
        .await;

    let outbound = deployment.tail("outbound");
    assert_eq!(outbound.len(), 1, "{outbound:?}");
    let reply = &outbound[0]["value"];
    assert_eq!(reply["channelId"], CHANNEL);
    assert_eq!(reply["direction"], "DIRECTION_OUTBOUND");
    assert_eq!(reply["recipients"][0]["value"], "+14155550123");
    assert_eq!(reply["content"]["text"], RECEIVED_FA);
    assert_eq!(reply["language"], "fa");
    assert_eq!(reply["providerMetadata"]["auto_acknowledgement"], "true");
    assert_eq!(
        reply["providerMetadata"]["automation_rule"],
        "acknowledge-new"
    );
    let status = &statuses(&deployment)[0]["value"];
    assert_eq!(
        status["delivery"]["state"], "DELIVERY_STATE_SENT",
        "{status}"
    );
    assert_eq!(status["delivery"]["outboundEventId"], reply["eventId"]);
    assert_eq!(
        sent(&twilio),
        [("+14155550123".to_owned(), RECEIVED_FA.to_owned())]
    );
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(
            r#"omnid_automated_replies_total{kind="acknowledgement",outcome="handed_over"} 1"#
        ),
        "{metrics}"
    );

    // On the timeline: the message, its triage, the reply.
    let timeline = deployment.timeline("phone:+14155550123");
    let automated: Vec<&Value> = timeline
        .iter()
        .filter(|e| {
            e.to_string()
                .contains("AUTOMATED_REPLY_KIND_ACKNOWLEDGEMENT")
        })
        .collect();
    assert_eq!(automated.len(), 1, "{timeline:?}");

    // The customer writes again: the conversation was acknowledged.
    text_us(
        &daemon,
        "SM00000000000000000000000000000002",
        "+14155550123",
        "ممنون",
    )
    .await;

    // Another customer; the daemon dies as soon as it acknowledged the
    // webhook, whatever it was doing with the reply, and comes back.
    text_us(
        &daemon,
        "SM00000000000000000000000000000003",
        "+14155550177",
        "Hello, is anyone there?",
    )
    .await;
    daemon.kill9();
    let daemon = deployment.start();
    daemon
        .eventually("both delivery statuses", Duration::from_secs(30), || {
            (statuses(&deployment).len() >= 2).then_some(())
        })
        .await;
    // Time for a repeat to show, if there were one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut sent = sent(&twilio);
    sent.sort();
    assert_eq!(
        sent,
        [
            ("+14155550123".to_owned(), RECEIVED_FA.to_owned()),
            ("+14155550177".to_owned(), RECEIVED_EN.to_owned()),
        ],
        "each customer acknowledged once; log:\n{}",
        daemon.last_lines(40)
    );
    let mut ids: Vec<String> = deployment
        .tail("outbound")
        .iter()
        .map(|r| r["value"]["eventId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2, "two replies on the outbound topic");
    assert_eq!(statuses(&deployment).len(), 2, "one delivery each");
}

/// The API channel only receives: an acknowledgement the rules decide for
/// it is dead-lettered with the reason, nothing goes on the outbound
/// topic, and the timeline still shows what the rules decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_the_channel_cannot_send_is_dead_lettered() {
    use omni_testkit::daemon::{CHANNEL as API_CHANNEL, SECRET, message, signed};
    let deployment = Deployment::new();
    deployment.write_rules(
        "support",
        &format!(
            r#"
name = "support"
time_zone = "UTC"
default_language = "fa"
channels = ["{API_CHANNEL}"]
[templates.received]
fa = "{RECEIVED_FA}"
[[rules]]
name = "acknowledge-new"
actions.acknowledge = "received"
"#
        ),
    );
    let daemon = deployment.start();
    let response = signed(
        &reqwest::Client::new(),
        &daemon.url(&format!("/webhooks/{API_CHANNEL}")),
        message("ext-1", "سلام"),
        SECRET,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let dead = daemon
        .eventually("the dead letter", Duration::from_secs(30), || {
            let dead = deployment.tail("deadletter");
            (!dead.is_empty()).then_some(dead)
        })
        .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0]["value"];
    assert_eq!(letter["reason"], "outbound_not_supported", "{letter}");
    assert_eq!(letter["channelId"], API_CHANNEL);
    assert!(
        letter["detail"]
            .as_str()
            .unwrap()
            .starts_with("automated reply not sent"),
        "{letter}"
    );
    assert!(deployment.tail("outbound").is_empty());
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(
            r#"omnid_automated_replies_total{kind="acknowledgement",outcome="dead_lettered"} 1"#
        ),
        "{metrics}"
    );
    daemon
        .eventually(
            "the automated_reply entry on the timeline topic",
            Duration::from_secs(30),
            || {
                deployment
                    .tail("timeline")
                    .iter()
                    .any(|r| {
                        r.to_string()
                            .contains("AUTOMATED_REPLY_KIND_ACKNOWLEDGEMENT")
                    })
                    .then_some(())
            },
        )
        .await;
}
