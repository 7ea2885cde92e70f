//! SLA timers end to end, on the real daemon with a Twilio SMS channel
//! (a local server playing Twilio's Messages API): a customer nobody
//! answers gets an escalation and then a breach on their timeline, one an
//! agent answers through `POST /v1/outbound` gets an `sla_answered` entry
//! and no breach, the acknowledgement the rules send never counts as the
//! answer, a timer started before a kill -9 still fires after the
//! restart, and the metrics count all of it.
//!
//! The targets are seconds long so the test runs in real time: the
//! deadlines are event times, and the daemon's SLA clock fires them.

use std::time::{Duration, Instant};

use omni_testkit::daemon::{Daemon, Deployment};
use omni_testkit::twilio::{FakeTwilio, incoming_sms, signed_post};
use serde_json::{Value, json};

const PUBLIC: &str = "https://omnid.example.com";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "twilio-auth-token-0123";
const CHANNEL: &str = "support-sms";
const OUR_NUMBER: &str = "+14155550100";
const TOKEN: &str = "helpdesk-token-0123456789";

/// P3 (every message here) must be answered within 4 s, escalating 2 s
/// before; every new conversation is acknowledged.
const RULES: &str = r#"
name = "support"
time_zone = "UTC"
default_language = "en"
channels = ["support-sms"]
[sla.p3]
first_response = "4s"
next_response = "4s"
escalate_before = "2s"
[templates.received]
en = "We got your message and will answer soon."
[[rules]]
name = "acknowledge-new"
match.conversation = ["new"]
actions.acknowledge = "received"
"#;

const TARGET: Duration = Duration::from_secs(4);

fn deployment(twilio: &FakeTwilio) -> Deployment {
    let deployment = Deployment::new();
    deployment.enable_api(TOKEN);
    twilio.add_channel(&deployment, CHANNEL, PUBLIC, OUR_NUMBER);
    deployment.write_rules("support", RULES);
    deployment
}

async fn text_us(daemon: &Daemon, message_sid: &str, from: &str, text: &str) {
    let params = incoming_sms(SID, message_sid, from, OUR_NUMBER, text);
    let path = format!("/webhooks/{CHANNEL}");
    let response = signed_post(
        &reqwest::Client::new(),
        &daemon.url(&path),
        &format!("{PUBLIC}{path}"),
        AUTH_TOKEN,
        &params,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200, "{}", daemon.last_lines(20));
}

/// An agent's reply to `to`, through the helpdesk API.
async fn agent_replies(daemon: &Daemon, to: &str) {
    let response = reqwest::Client::new()
        .post(daemon.url("/v1/outbound"))
        .bearer_auth(TOKEN)
        .json(&json!({
            "channelId": CHANNEL,
            "providerMessageId": format!("ticket/{to}"),
            "recipients": [{ "kind": "HANDLE_KIND_PHONE", "value": to }],
            "content": { "text": "Hello! Your parcel left today." },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// The SLA entries of a timeline, by name (`slaEscalated` ...), in order.
fn sla_entries(timeline: &[Value]) -> Vec<(&'static str, Value)> {
    timeline
        .iter()
        .filter_map(|e| {
            ["slaEscalated", "slaBreached", "slaAnswered"]
                .into_iter()
                .find_map(|name| e.get(name).map(|v| (name, v.clone())))
        })
        .collect()
}

fn names(entries: &[(&'static str, Value)]) -> Vec<&'static str> {
    entries.iter().map(|(name, _)| *name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_messages_breach_and_answered_ones_do_not() {
    let twilio = FakeTwilio::start(SID, AUTH_TOKEN).await;
    let deployment = deployment(&twilio);
    let mut daemon = deployment.start();
    let (ana, bo, cy) = ("+14155550123", "+14155550124", "+14155550125");

    text_us(
        &daemon,
        "SM0000000000000000000000000000a001",
        ana,
        "Where is my parcel?",
    )
    .await;
    text_us(
        &daemon,
        "SM0000000000000000000000000000b001",
        bo,
        "Where is my parcel?",
    )
    .await;
    let bo_texted = Instant::now();
    // An agent answers Bo at once; it is threaded well before his deadline.
    agent_replies(&daemon, bo).await;
    daemon
        .eventually(
            "Bo's answer on his timeline",
            Duration::from_secs(30),
            || {
                let timeline = deployment.timeline(&format!("phone:{bo}"));
                names(&sla_entries(&timeline))
                    .contains(&"slaAnswered")
                    .then_some(())
            },
        )
        .await;
    // Ana is acknowledged (an automated reply: it stops no timer).
    daemon
        .eventually("Ana's acknowledgement", Duration::from_secs(30), || {
            twilio
                .messages()
                .iter()
                .any(|(to, _, _)| to == ana)
                .then_some(())
        })
        .await;

    // Cy writes, and the daemon dies at once; the timer is in the store.
    text_us(&daemon, "SM0000000000000000000000000000c001", cy, "Hello?").await;
    daemon.kill9();
    let daemon = deployment.start();

    for who in [ana, cy] {
        let timeline = daemon
            .eventually("the breach", Duration::from_secs(30), || {
                let timeline = deployment.timeline(&format!("phone:{who}"));
                names(&sla_entries(&timeline))
                    .contains(&"slaBreached")
                    .then_some(timeline)
            })
            .await;
        let entries = sla_entries(&timeline);
        assert_eq!(
            names(&entries),
            ["slaEscalated", "slaBreached"],
            "{who}: escalated first: {timeline:#?}"
        );
        let (_, escalated) = &entries[0];
        assert_eq!(escalated["previousPriority"], "PRIORITY_P3");
        assert_eq!(escalated["priority"], "PRIORITY_P2");
        let (_, breached) = &entries[1];
        let timer = &breached["timer"];
        assert_eq!(timer["response"], "SLA_RESPONSE_FIRST", "{breached}");
        assert_eq!(timer["channelId"], CHANNEL);
        assert_eq!(timer["ruleSet"], "support");
        assert_eq!(breached["priority"], "PRIORITY_P2", "after the escalation");
    }

    // Bo was answered in time: past his deadline (and a clock tick), his
    // timeline has the answer and no breach.
    let wait = (TARGET + Duration::from_secs(2)).saturating_sub(bo_texted.elapsed());
    tokio::time::sleep(wait).await;
    let timeline = deployment.timeline(&format!("phone:{bo}"));
    let entries = sla_entries(&timeline);
    assert_eq!(names(&entries), ["slaAnswered"], "{timeline:#?}");
    let answered = &entries[0].1;
    assert_eq!(answered["inTime"], true, "{answered}");
    assert_eq!(answered["priority"], "PRIORITY_P3");
    assert_eq!(answered["timer"]["response"], "SLA_RESPONSE_FIRST");

    // Ana is answered late: recorded as such.
    agent_replies(&daemon, ana).await;
    let timeline = daemon
        .eventually("Ana's late answer", Duration::from_secs(30), || {
            let timeline = deployment.timeline(&format!("phone:{ana}"));
            names(&sla_entries(&timeline))
                .contains(&"slaAnswered")
                .then_some(timeline)
        })
        .await;
    let entries = sla_entries(&timeline);
    let late = &entries[2].1;
    // proto3 JSON leaves `false` out.
    assert_eq!(late.get("inTime"), None, "{late}");
    let waited: u64 = late["responseMs"].as_str().unwrap().parse().unwrap();
    assert!(waited > 4_000, "{late}");

    // Counted since the restart: both breaches and Ana's late answer at
    // least (Ana's escalation may have come before the kill).
    let metrics = daemon.metrics().await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} in:\n{metrics}"))
    };
    let labels = r#"{channel="support-sms",priority="P2",response="first"}"#;
    assert!(value(&format!("omnid_sla_breaches_total{labels}")) >= 1.0);
    assert_eq!(
        value(&format!("omnid_sla_response_seconds_count{labels}")),
        1.0
    );
    assert!(
        metrics.contains(r#"omnid_sla_response_seconds_bucket{channel="support-sms",priority="P2",response="first",le="60"} 1"#),
        "{metrics}"
    );
}
