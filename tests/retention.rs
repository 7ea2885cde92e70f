//! Retention of the embedded log through the real daemon: with a tiny size
//! limit on the inbound topic, the topic shrinks to the limit while the
//! threading worker still threads every message exactly once (retention
//! waits for its commits, even when it starts late behind a full topic),
//! offsets keep counting, and `omnid tail` reads what is left.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use omni_testkit::daemon::{CHANNEL, Daemon, Deployment, SECRET, signed};
use serde_json::{Value, json};

/// The inbound topic's size limit: a handful of records.
const INBOUND_MAX_BYTES: u64 = 4096;
const SENDERS: usize = 8;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Posts `count` messages per sender, the senders concurrently; their event
/// ids.
async fn post_messages(daemon: &Daemon, round: &str, count: usize) -> Vec<String> {
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    let tasks: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let (client, url, round) = (client(), url.clone(), round.to_owned());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..count {
                    let body = json!({
                        "external_id": format!("{round}-{sender}-{i:04}"),
                        "sender": { "kind": "phone", "value": format!("+1415555030{sender}") },
                        "text": format!("message {i} of sender {sender} in {round}"),
                    });
                    let response = signed(&client, &url, body.to_string(), SECRET)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    let body: Value = response.json().await.unwrap();
                    ids.push(body["event_id"].as_str().unwrap().to_owned());
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids
}

/// A metric's value by its exact series (`name{labels}`), if exported.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

fn offsets(records: &[Value]) -> Vec<i64> {
    records
        .iter()
        .map(|r| r["offset"].as_i64().unwrap())
        .collect()
}

/// Every message on the timeline topic exactly once, and each customer's
/// entries numbered 1, 2, 3, ... without gaps.
fn assert_threaded_once(timeline: &[Value], sent: &[String]) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut sequences: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for record in timeline {
        let value = &record["value"];
        if let Some(id) = value["message"]["event"]["eventId"].as_str() {
            *seen.entry(id).or_default() += 1;
        }
        let sequence = match &value["sequence"] {
            Value::String(s) => s.parse().unwrap(),
            other => other.as_u64().unwrap(),
        };
        sequences
            .entry(record["key"].as_str().unwrap())
            .or_default()
            .push(sequence);
    }
    for id in sent {
        assert_eq!(
            seen.get(id.as_str()),
            Some(&1),
            "message {id} on the timeline"
        );
    }
    assert_eq!(seen.len(), sent.len(), "only the messages sent");
    for (customer, sequence) in sequences {
        assert_eq!(
            sequence,
            (1..=sequence.len() as u64).collect::<Vec<_>>(),
            "timeline of {customer}"
        );
    }
}

/// Waits until the timeline topic holds `count` message entries.
async fn wait_for_timeline(daemon: &Daemon, deployment: &Deployment, count: usize) -> Vec<Value> {
    daemon
        .eventually(
            &format!("{count} messages on the timeline"),
            Duration::from_secs(60),
            || {
                let records = deployment.tail("timeline");
                let messages = records
                    .iter()
                    .filter(|r| r["value"]["message"].is_object())
                    .count();
                (messages >= count).then_some(records)
            },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tiny_inbound_limit_shrinks_the_topic_and_loses_no_message_to_threading() {
    // First without threading: the inbound topic fills up, nobody has
    // committed on it.
    let deployment = Deployment::with_config("[threading]\nenabled = false\n");
    let mut daemon = deployment.start();
    let mut sent = post_messages(&daemon, "early", 25).await;
    assert!(daemon.terminate().success(), "{}", daemon.stderr());
    let inbound = deployment.tail("inbound");
    assert_eq!(inbound.len(), sent.len());

    // Now threading is on and the inbound topic may keep 4 KiB. Every
    // record is over the limit from the first pass on, but the threading
    // group has not committed any: retention waits for it.
    let config = std::fs::read_to_string(deployment.config_path()).unwrap();
    deployment.write_config(&format!(
        "{}\n[log.retention]\ncheck_interval_secs = 1\n[log.retention.topics.inbound]\nmax_bytes = {INBOUND_MAX_BYTES}\n",
        config.replace("[threading]\nenabled = false\n", "")
    ));
    let mut daemon = deployment.start();
    let timeline = wait_for_timeline(&daemon, &deployment, sent.len()).await;
    assert_threaded_once(&timeline, &sent);

    // More while it runs.
    sent.extend(post_messages(&daemon, "live", 15).await);
    let timeline = wait_for_timeline(&daemon, &deployment, sent.len()).await;
    assert_threaded_once(&timeline, &sent);

    // The topic shrinks to its limit; offsets keep counting.
    let total = sent.len() as i64;
    let metrics = daemon
        .eventually(
            "the inbound topic within its size limit",
            Duration::from_secs(30),
            || {
                let text = futures::executor::block_on(daemon.metrics());
                let bytes = metric(&text, r#"omnid_log_topic_bytes{topic="omni.inbound.v1"}"#)?;
                // A pass that ran before the last records were appended
                // is within the limit too: wait for one that saw them all.
                let removed = metric(
                    &text,
                    r#"omnid_log_retention_removed_records_total{topic="omni.inbound.v1"}"#,
                )?;
                let kept = metric(&text, r#"omnid_log_topic_records{topic="omni.inbound.v1"}"#)?;
                (bytes <= INBOUND_MAX_BYTES as f64 && bytes > 0.0 && removed + kept >= total as f64)
                    .then_some(text)
            },
        )
        .await;
    let removed = metric(
        &metrics,
        r#"omnid_log_retention_removed_records_total{topic="omni.inbound.v1"}"#,
    )
    .unwrap();
    let kept = metric(
        &metrics,
        r#"omnid_log_topic_records{topic="omni.inbound.v1"}"#,
    )
    .unwrap();
    assert_eq!(removed + kept, total as f64, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            r#"omnid_log_retention_held_back_records{topic="omni.inbound.v1",group="omnid-threading"}"#
        ),
        Some(0.0),
        "{metrics}"
    );
    // Other topics keep everything (the default limits are far away).
    assert_eq!(
        metric(
            &metrics,
            r#"omnid_log_retention_removed_records_total{topic="omni.timeline.v1"}"#
        ),
        Some(0.0),
        "{metrics}"
    );

    // `omnid tail` reads what is left, at its original offsets, from the
    // log start (`--offset 0` is before it) or from the end.
    let inbound = deployment.tail("inbound");
    assert_eq!(inbound.len() as f64, kept);
    let first = inbound[0]["offset"].as_i64().unwrap();
    assert!(first > 0, "the oldest records are gone");
    assert_eq!(offsets(&inbound), (first..total).collect::<Vec<_>>());
    let last = deployment
        .command(&["tail", "--topic", "inbound", "--last", "2"])
        .output()
        .unwrap();
    assert!(last.status.success());
    let last: Vec<Value> = String::from_utf8(last.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(offsets(&last), [total - 2, total - 1]);
    assert_eq!(
        last[1]["value"]["eventId"].as_str(),
        inbound.last().unwrap()["value"]["eventId"].as_str()
    );

    // After a restart the worker resumes at its commit, past the log
    // start, and the next message is threaded once like the rest.
    assert!(daemon.terminate().success(), "{}", daemon.stderr());
    let daemon = deployment.start();
    sent.extend(post_messages(&daemon, "after", 1).await);
    let timeline = wait_for_timeline(&daemon, &deployment, sent.len()).await;
    assert_threaded_once(&timeline, &sent);
    let inbound = deployment.tail("inbound");
    assert_eq!(
        inbound.last().unwrap()["offset"].as_i64(),
        Some(sent.len() as i64 - 1)
    );
}
