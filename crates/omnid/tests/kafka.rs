//! The daemon on a real Kafka-protocol broker (Tansu): the stream contract,
//! and the spool's guarantees when the broker goes away.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{CHANNEL, Deployment, SECRET, kafka::Broker, message, signed};
use omni_log::{EventLog, KafkaLog, KafkaLogConfig, StoredRecord};
use omni_proto::{Message, v1::ConversationEvent};

const INBOUND: &str = "omni.inbound.v1";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn reader(bootstrap: &str) -> KafkaLog {
    KafkaLog::new(KafkaLogConfig {
        brokers: bootstrap.to_owned(),
        ..KafkaLogConfig::default()
    })
    .unwrap()
}

/// Every record of a topic, all partitions, read by assignment in one pass
/// per partition. One pass matters on Tansu 0.6: a fetch that starts inside
/// a multi-record batch returns nothing there (Kafka returns the batch), so
/// reading in chunks would skip records that are on the topic.
async fn topic_records(log: &KafkaLog, topic: &str) -> Vec<StoredRecord> {
    let mut all = Vec::new();
    for partition in 0..log.partition_count(topic).await.unwrap() {
        let mut next = 0;
        loop {
            let batch = log.read(topic, partition, next, 1_000_000).await.unwrap();
            let Some(last) = batch.last() else { break };
            next = last.position.offset + 1;
            all.extend(batch);
        }
    }
    all
}

fn header<'a>(record: &'a StoredRecord, name: &str) -> &'a str {
    let value = record
        .record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_ref())
        .unwrap_or_default();
    std::str::from_utf8(value).unwrap()
}

/// Waits until every id in `expected` is on the topic; returns how often
/// each id occurs.
async fn wait_for_ids(
    log: &KafkaLog,
    expected: &HashSet<String>,
    daemon: &common::Daemon,
) -> HashMap<String, usize> {
    let mut missing = expected.len();
    for _ in 0..20 {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for record in topic_records(log, INBOUND).await {
            *counts
                .entry(header(&record, "ce_id").to_owned())
                .or_default() += 1;
        }
        missing = expected
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .count();
        if missing == 0 {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stderr = daemon.stderr();
    let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
    panic!(
        "{missing} of {} acknowledged events never reached the topic; daemon log (newest first):\n{}",
        expected.len(),
        tail.join("\n")
    );
}

/// Posts `count` messages from one sender each for `senders` senders,
/// sequentially per sender; returns the event ids in order per sender.
async fn post_burst(url: &str, prefix: &str, senders: usize, count: usize) -> Vec<Vec<String>> {
    let client = client();
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let (client, url, prefix) = (client.clone(), url.to_owned(), prefix.to_owned());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..count {
                    let body = serde_json::json!({
                        "external_id": format!("{prefix}-{s}-{i}"),
                        "sender": { "kind": "email", "value": format!("customer{s}@example.com") },
                        "text": format!("message {i}"),
                    })
                    .to_string();
                    let response = signed(&client, &url, body, SECRET).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    let body: serde_json::Value = response.json().await.unwrap();
                    ids.push(body["event_id"].as_str().unwrap().to_owned());
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.push(task.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_reach_kafka_with_contract_keys_headers_and_ids_and_a_group_consumes_them() {
    let broker = Broker::start().await;
    let deployment = Deployment::with_config(&common::kafka::log_config(
        &broker.bootstrap(),
        3,
        "protobuf",
    ));
    let daemon = deployment.start();
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    let per_sender = post_burst(&url, "contract", 10, 10).await;
    let acked: HashSet<String> = per_sender.iter().flatten().cloned().collect();
    assert_eq!(acked.len(), 100);

    // A consumer group reads them all back.
    let log = reader(&broker.bootstrap());
    let mut subscription = log
        .subscribe("contract-test", &[INBOUND.to_owned()])
        .await
        .unwrap();
    let mut records = Vec::new();
    for _ in 0..60 {
        records.extend(
            subscription
                .poll(500, Duration::from_secs(1))
                .await
                .unwrap(),
        );
        if records.len() >= 100 {
            break;
        }
    }
    assert_eq!(records.len(), 100, "consumed {} of 100", records.len());
    for record in &records {
        subscription
            .commit(&record.record.topic, record.position)
            .await
            .unwrap();
    }

    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    let mut positions: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    for record in &records {
        let event =
            ConversationEvent::decode(record.record.payload.as_ref()).expect("protobuf payload");
        let ce_id = header(record, "ce_id");
        assert_eq!(event.event_id, ce_id);
        assert!(acked.contains(ce_id));
        assert_eq!(header(record, "ce_specversion"), "1.0");
        assert_eq!(header(record, "ce_type"), "dev.omnid.conversation_event.v1");
        assert_eq!(
            header(record, "ce_source"),
            format!("/omnid/channels/{CHANNEL}")
        );
        assert_eq!(header(record, "content-type"), "application/protobuf");
        assert!(omni_model::cloudevents::parse_rfc3339(header(record, "ce_time")).is_ok());
        let sender = event.sender.as_ref().unwrap();
        let key = std::str::from_utf8(&record.record.key).unwrap();
        assert_eq!(key, format!("email:{}", sender.value));
        order
            .entry(key.to_owned())
            .or_default()
            .push(event.event_id.clone());
        positions
            .entry(key.to_owned())
            .or_default()
            .push((record.position.partition, record.position.offset));
    }
    // Per-key order: each sender's events arrive in the order they were sent.
    for ids in &per_sender {
        let key_ids = order.values().find(|v| v.contains(&ids[0])).unwrap();
        assert_eq!(key_ids, ids, "a sender's events keep their order");
    }
    for key_positions in positions.values() {
        let partitions: HashSet<i32> = key_positions.iter().map(|p| p.0).collect();
        assert_eq!(partitions.len(), 1, "one key, one partition");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_mid_burst_is_spooled_and_every_ack_arrives_exactly_once() {
    let broker = Broker::start().await;
    let deployment = Deployment::with_config(&common::kafka::log_config(
        &broker.bootstrap(),
        3,
        "protobuf",
    ));
    let daemon = deployment.start();
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    let client = client();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (client, url, acked, stop) =
                (client.clone(), url.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let response = signed(
                        &client,
                        &url,
                        message(&format!("outage-{w}-{i}"), "x"),
                        SECRET,
                    )
                    .send()
                    .await
                    .unwrap();
                    assert_eq!(
                        response.status(),
                        200,
                        "the spool keeps acknowledging while the broker is away"
                    );
                    let body: serde_json::Value = response.json().await.unwrap();
                    let id = body["event_id"].as_str().unwrap().to_owned();
                    acked.lock().unwrap().push(id);
                    i += 1;
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.proxy.cut().await;
    let at_cut = acked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during_outage = acked.lock().unwrap().len() - at_cut;
    broker.proxy.restore();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(
        during_outage > 50,
        "only {during_outage} acknowledged while the broker was away"
    );

    let expected: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let counts = wait_for_ids(&reader(&broker.bootstrap()), &expected, &daemon).await;
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "{} events twice on the topic, e.g. {:?}",
        doubled.len(),
        doubled.first()
    );
    assert_eq!(counts.len(), expected.len());
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_in_the_spool_survive_kill_9() {
    let broker = Broker::start().await;
    let deployment = Deployment::with_config(&common::kafka::log_config(
        &broker.bootstrap(),
        3,
        "protobuf",
    ));
    let mut daemon = deployment.start();
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    let mut expected: HashSet<String> = post_burst(&url, "before", 2, 5)
        .await
        .into_iter()
        .flatten()
        .collect();

    broker.proxy.cut().await;
    let spooled = post_burst(&url, "spooled", 10, 5).await;
    expected.extend(spooled.into_iter().flatten());
    daemon.kill9();

    broker.proxy.restore();
    let daemon = deployment.start();
    let counts = wait_for_ids(&reader(&broker.bootstrap()), &expected, &daemon).await;
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert!(
        daemon
            .stderr()
            .contains("spool holds records from an earlier run"),
        "{}",
        daemon.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_encoding_writes_the_protobuf_json_mapping() {
    let broker = Broker::start().await;
    let deployment =
        Deployment::with_config(&common::kafka::log_config(&broker.bootstrap(), 1, "json"));
    let daemon = deployment.start();
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    let ids: HashSet<String> = post_burst(&url, "json", 1, 3)
        .await
        .into_iter()
        .flatten()
        .collect();
    let log = reader(&broker.bootstrap());
    wait_for_ids(&log, &ids, &daemon).await;
    for record in topic_records(&log, INBOUND).await {
        assert_eq!(header(&record, "content-type"), "application/json");
        let value: serde_json::Value = serde_json::from_slice(&record.record.payload).unwrap();
        assert_eq!(value["eventId"], header(&record, "ce_id"));
        assert_eq!(value["channelKind"], "CHANNEL_KIND_API");
    }
    // `omnid tail` reads Kafka too.
    let tailed = deployment.tail("inbound");
    assert_eq!(tailed.len(), 3);
    assert_eq!(tailed[0]["value"]["channelKind"], "CHANNEL_KIND_API");
    drop(daemon);
}
