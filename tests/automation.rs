//! Customer-service rule files in the running daemon: checked, loaded and
//! hot reloaded all or nothing.

use std::time::Duration;

use omni_testkit::daemon::{CHANNEL, Daemon, Deployment, SECRET, signed};
use serde_json::Value;

/// A valid rule set for the test channel, with `rules` rules.
fn rule_set(rules: usize) -> String {
    let mut text = format!(
        "name = \"support\"\ntime_zone = \"Asia/Tehran\"\ndefault_language = \"fa\"\nchannels = [\"{CHANNEL}\"]\n"
    );
    for i in 0..rules {
        text.push_str(&format!(
            "[[rules]]\nname = \"rule-{i}\"\nmatch.keywords = [\"word{i}\"]\nactions.tags = [\"tag-{i}\"]\n"
        ));
    }
    text
}

/// Waits until `/metrics` holds `line`.
async fn wait_for_metric(daemon: &Daemon, line: &str) {
    for _ in 0..100 {
        if daemon.metrics().await.lines().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no `{line}` in /metrics:\n{}\nstderr:\n{}",
        daemon.metrics().await,
        daemon.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_files_reload_without_restart_and_bad_edits_are_refused() {
    let deployment = Deployment::new();
    deployment.write_rules("support", &rule_set(1));
    let daemon = deployment.start();
    wait_for_metric(
        &daemon,
        r#"omnid_config_reloads_total{files="rules",result="ok"} 1"#,
    )
    .await;
    assert!(
        daemon
            .stderr()
            .lines()
            .any(|l| l.contains("rule files loaded") && l.contains(r#""rules":1"#)),
        "{}",
        daemon.stderr()
    );

    // An edit is picked up without a restart.
    deployment.write_rules("support", &rule_set(3));
    wait_for_metric(
        &daemon,
        r#"omnid_config_reloads_total{files="rules",result="ok"} 2"#,
    )
    .await;
    assert!(
        daemon
            .stderr()
            .lines()
            .any(|l| l.contains("rule files loaded") && l.contains(r#""rules":3"#)),
        "{}",
        daemon.stderr()
    );

    // A broken edit is refused as a whole, saying where and why, and the
    // channels are not touched.
    deployment.write_rules(
        "support",
        &rule_set(3).replace("actions.tags = [\"tag-2\"]", "actions.priority = \"P9\""),
    );
    wait_for_metric(
        &daemon,
        r#"omnid_config_reloads_total{files="rules",result="error"} 1"#,
    )
    .await;
    let stderr = daemon.stderr();
    let rejected = stderr
        .lines()
        .find(|l| l.contains("rule files rejected"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(rejected.contains("support.toml"), "{rejected}");
    assert!(rejected.contains("rules[2].actions.priority"), "{rejected}");
    assert!(
        daemon
            .metrics()
            .await
            .contains(r#"omnid_config_reloads_total{files="channels",result="error"} 0"#),
        "a rule edit is not a channel reload"
    );

    // check-config says the same, one line per problem, and exits 1.
    let check = deployment.command(&["check-config"]).output().unwrap();
    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains("support.toml"), "{stderr}");
    assert!(
        stderr.contains("key `rules[2].actions.priority`"),
        "{stderr}"
    );

    // Mended: loaded again.
    deployment.write_rules("support", &rule_set(2));
    wait_for_metric(
        &daemon,
        r#"omnid_config_reloads_total{files="rules",result="ok"} 3"#,
    )
    .await;
    let check = deployment.command(&["check-config"]).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("1 rule set(s): support (2 rules)"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn the_daemon_refuses_to_start_on_a_broken_rule_file_and_check_config_names_it() {
    let deployment = Deployment::new();
    deployment.write_rules(
        "support",
        &rule_set(1).replace("Asia/Tehran", "Asia/Teheran"),
    );
    let check = deployment.command(&["check-config"]).output().unwrap();
    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains("support.toml: key `time_zone`"), "{stderr}");
    assert!(stderr.contains("Asia/Teheran"), "{stderr}");

    let run = deployment.command(&["run"]).output().unwrap();
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("key `time_zone`"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Rules naming a channel that does not exist are refused by
    // check-config (the running daemon only warns).
    deployment.write_rules("support", &rule_set(1).replace(CHANNEL, "no-such-channel"));
    let check = deployment.command(&["check-config"]).output().unwrap();
    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("key `channels[0]`") && stderr.contains("no-such-channel"),
        "{stderr}"
    );
}

const TOKEN: &str = "automation-test-token";

/// A rule set for the test channel: refund requests (in English and in
/// Arabic as customers type it) are tagged and P1.
fn refund_rules(extra: &str) -> String {
    format!(
        r#"name = "support"
time_zone = "Asia/Tehran"
default_language = "fa"
default_priority = "P3"
channels = ["{CHANNEL}"]

[[rules]]
name = "refund"
match.keywords = ["refund*", "استرداد"]
actions.tags = ["refund"]
actions.priority = "P1"
{extra}"#
    )
}

/// The customer a handle belongs to, through the query API; `None` until
/// it has one.
async fn customer_of(client: &reqwest::Client, daemon: &Daemon, handle: &str) -> Option<String> {
    let identity = client
        .get(daemon.url(&format!("/v1/identities/{handle}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    if identity.status() != 200 {
        return None;
    }
    let identity: Value = identity.json().await.unwrap();
    Some(identity["customer_id"].as_str().unwrap().to_owned())
}

/// The message and `triaged` entries of a customer's timeline through the
/// query API, once it holds `count` of them.
async fn timeline_of(
    client: &reqwest::Client,
    daemon: &Daemon,
    handle: &str,
    count: usize,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(customer) = customer_of(client, daemon, handle).await {
            let page: Value = client
                .get(daemon.url(&format!("/v1/customers/{customer}/timeline?limit=100")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            // Messages and triage only (not the identity link entry).
            let entries: Vec<Value> = page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e.get("message").is_some() || e.get("triaged").is_some())
                .cloned()
                .collect();
            if entries.len() >= count {
                return entries;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{handle} never had {count} timeline entries; stderr:\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(client: &reqwest::Client, daemon: &Daemon, external_id: &str, text: &str) {
    let body = serde_json::json!({
        "external_id": external_id,
        "sender": { "kind": "phone", "value": "+989121234567" },
        "text": text,
    });
    let response = signed(
        client,
        &daemon.url(&format!("/webhooks/{CHANNEL}")),
        body.to_string(),
        SECRET,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
}

/// The `triaged` entries of a timeline: (tags, priority, language, the
/// message's event id).
fn triaged(entries: &[Value]) -> Vec<(Vec<String>, String, String)> {
    entries
        .iter()
        .filter_map(|e| e.get("triaged"))
        .map(|t| {
            let tags = t["tags"]
                .as_array()
                .map(|tags| {
                    tags.iter()
                        .map(|t| t.as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            (
                tags,
                t["priority"].as_str().unwrap().to_owned(),
                t["language"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_tag_and_prioritise_conversations_on_the_timeline_and_reloads_apply_to_later_messages()
 {
    let deployment = Deployment::new();
    deployment.enable_api(TOKEN);
    deployment.write_rules("support", &refund_rules(""));
    let daemon = deployment.start();
    let client = reqwest::Client::new();

    // A greeting opens the conversation at the set's default priority; an
    // Arabic refund request, written with a hamza on the alef, harakat and
    // a tatweel, is tagged and raised to P1.
    post(&client, &daemon, "m-1", "مرحبا").await;
    post(&client, &daemon, "m-2", "أريد إسْتِرْدَاد المبلـــغ من فضلكم").await;
    // Matching nothing new: no entry.
    post(&client, &daemon, "m-3", "شكرا").await;
    let handle = "phone/%2B989121234567";
    let entries = timeline_of(&client, &daemon, handle, 5).await;
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| {
            if e.get("triaged").is_some() {
                "triaged"
            } else if e.get("message").is_some() {
                "message"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(
        kinds,
        ["message", "triaged", "message", "triaged", "message"],
        "{entries:#?}"
    );
    assert_eq!(
        triaged(&entries),
        [
            (vec![], "PRIORITY_P3".to_owned(), "ar".to_owned()),
            (
                vec!["refund".to_owned()],
                "PRIORITY_P1".to_owned(),
                "ar".to_owned()
            ),
        ]
    );
    let refund = entries[3]["triaged"].clone();
    assert_eq!(refund["matchedRules"], serde_json::json!(["refund"]));
    assert_eq!(refund["ruleSet"], "support");
    assert_eq!(refund["eventId"], entries[2]["message"]["event"]["eventId"]);

    // `omnid timeline` prints the same entries.
    let printed = deployment.timeline("phone:+989121234567");
    assert_eq!(triaged(&printed), triaged(&entries));

    // An edited rule file applies to the next message without a restart.
    deployment.write_rules(
        "support",
        &refund_rules(
            "[[rules]]\nname = \"angry\"\nmatch.keywords = [\"angry\"]\nactions.tags = [\"upset\"]\n",
        ),
    );
    wait_for_metric(
        &daemon,
        r#"omnid_config_reloads_total{files="rules",result="ok"} 2"#,
    )
    .await;
    post(&client, &daemon, "m-4", "I am ANGRY").await;
    let entries = timeline_of(&client, &daemon, handle, 7).await;
    assert_eq!(
        triaged(&entries).last().unwrap(),
        &(
            vec!["refund".to_owned(), "upset".to_owned()],
            "PRIORITY_P1".to_owned(),
            "en".to_owned()
        ),
        "tags add up, the priority stays the most urgent"
    );

    // The helpdesk marks the customer a VIP: a customer-level entry, and
    // the next message matches the `vip` rule.
    deployment.write_rules(
        "support",
        &refund_rules(
            "[[rules]]\nname = \"vip\"\nmatch.segments = [\"vip\"]\nactions.tags = [\"vip\"]\n",
        ),
    );
    wait_for_metric(
        &daemon,
        r#"omnid_config_reloads_total{files="rules",result="ok"} 3"#,
    )
    .await;
    let customer = customer_of(&client, &daemon, handle).await.unwrap();
    let segment = |value: &str| {
        client
            .put(daemon.url(&format!("/v1/customers/{customer}/segment")))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "segment": value, "actor": "ana" }))
            .send()
    };
    let response = segment("vip").await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["action"], "segment", "{answer}");
    assert_eq!(answer["outcome"], "applied", "{answer}");
    assert_eq!(
        answer["entries"][0]["segmentChanged"]["segment"], "vip",
        "{answer}"
    );
    let response = segment("not a segment!").await.unwrap();
    assert_eq!(response.status(), 400);
    post(&client, &daemon, "m-5", "hello again").await;
    let entries = timeline_of(&client, &daemon, handle, 9).await;
    assert_eq!(
        triaged(&entries).last().unwrap().0,
        ["refund", "upset", "vip"],
        "{entries:#?}"
    );
}
