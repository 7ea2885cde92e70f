//! The daemon on a real Kafka-protocol broker (Tansu): the stream contract,
//! and the spool's guarantees when the broker goes away.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use omni_log::{EventLog, KafkaLog, KafkaLogConfig, StoredRecord};
use omni_proto::{
    Message,
    v1::{
        CloseConversation, ConversationEvent, DeadLetter, HandleKind, IdentityHandle, LinkIdentity,
        MergeCustomers, ThreadingCommand, TimelineEvent, threading_command::Command,
        timeline_event::Entry,
    },
};
use omni_testkit::{
    daemon::{CHANNEL, Daemon, Deployment, SECRET, message, signed},
    kafka::{Broker, log_config},
    postgres::Schema,
};

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
    daemon: &Daemon,
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
    let deployment = Deployment::with_config(&log_config(&broker.bootstrap(), 3, "protobuf"));
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
    let deployment = Deployment::with_config(&log_config(&broker.bootstrap(), 3, "protobuf"));
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
    let deployment = Deployment::with_config(&log_config(&broker.bootstrap(), 3, "protobuf"));
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
    let deployment = Deployment::with_config(&log_config(&broker.bootstrap(), 1, "json"));
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

/// A counter's value on a daemon's `/metrics` (0 when absent): the series
/// `name` carrying every label of `labels` (`outcome="applied"`), in
/// whatever order the exporter writes them.
async fn metric(daemon: &Daemon, name: &str, labels: &[&str]) -> f64 {
    let text = daemon.metrics().await;
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The timeline topic's records, decoded, in partition and offset order
/// (a customer's records are all in one partition).
async fn timeline_records(log: &KafkaLog) -> Vec<TimelineEvent> {
    topic_records(log, "omni.timeline.v1")
        .await
        .iter()
        .map(|r| {
            let event = TimelineEvent::decode(r.record.payload.as_ref()).expect("timeline record");
            assert_eq!(
                std::str::from_utf8(&r.record.key).unwrap(),
                event.customer_id,
                "keyed by customer id"
            );
            event
        })
        .collect()
}

fn message_id(event: &TimelineEvent) -> Option<&str> {
    match &event.entry {
        Some(Entry::Message(m)) => m.event.as_ref().map(|e| e.event_id.as_str()),
        _ => None,
    }
}

/// Waits until `done` holds for the timeline topic; its records.
async fn wait_for_timeline(
    log: &KafkaLog,
    what: &str,
    done: impl Fn(&[TimelineEvent]) -> bool,
) -> Vec<TimelineEvent> {
    for _ in 0..120 {
        let records = timeline_records(log).await;
        if done(&records) {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the timeline topic never had {what}");
}

/// A helpdesk command record on the commands topic, as a helpdesk would
/// produce it.
async fn produce_command(log: &KafkaLog, key: &str, command: &ThreadingCommand) {
    let record = omni_log::Record {
        topic: "omni.commands.v1".to_owned(),
        key: key.to_owned().into_bytes().into(),
        headers: vec![
            (
                "ce_id".to_owned(),
                command.command_id.clone().into_bytes().into(),
            ),
            (
                "ce_type".to_owned(),
                omni_model::cloudevents::TYPE_THREADING_COMMAND
                    .as_bytes()
                    .to_vec()
                    .into(),
            ),
            (
                "content-type".to_owned(),
                b"application/protobuf".to_vec().into(),
            ),
        ],
        payload: command.encode_to_vec().into(),
        timestamp_ms: 0,
    };
    log.append(record).await.expect("produce command");
}

const TOKEN: &str = "kafka-test-token";
const TRUSTED: &str = "trusted-api";
const PHONE: &str = "+14155550134";

fn from(external_id: &str, kind: &str, value: &str) -> serde_json::Value {
    serde_json::json!({ "external_id": external_id, "sender": { "kind": kind, "value": value }, "text": external_id })
}

/// Posts one message to a channel of `daemon`; its event id.
async fn post_one(
    client: &reqwest::Client,
    daemon: &Daemon,
    channel: &str,
    body: serde_json::Value,
) -> String {
    let url = daemon.url(&format!("/webhooks/{channel}"));
    let response = signed(client, &url, body.to_string(), SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["event_id"].as_str().unwrap().to_owned()
}

/// The customer id owning a handle (`email/...`), per the query API.
async fn identity(client: &reqwest::Client, daemon: &Daemon, handle: &str) -> Option<String> {
    let response = client
        .get(daemon.url(&format!("/v1/identities/{handle}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    if response.status() == 404 {
        return None;
    }
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["customer_id"].as_str().map(str::to_owned)
}

/// Two daemons on one Kafka cluster and one PostgreSQL store, in one
/// consumer group, both taking traffic: every message lands on the
/// timeline once, each customer's sequence is gapless, each sender's
/// messages keep their order, and both workers threaded; one person's
/// handles, their messages taken by different daemons, end as one
/// customer. Commands from the
/// commands topic apply once (a repeated record is dropped, a refused one
/// is dead-lettered). When one daemon stops, the other publishes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_the_stream_and_the_commands_topic() {
    let broker = Broker::start().await;
    let schema = Schema::create().await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        log_config(&broker.bootstrap(), 4, "protobuf") + &schema.threading_config(dir.path());
    let result = tokio::spawn(async move {
        let (one, two) = (
            Deployment::with_config(&config),
            Deployment::with_config(&config),
        );
        for deployment in [&one, &two] {
            deployment.enable_api(TOKEN);
            deployment.add_trusted_channel(TRUSTED);
        }
        let mut first = one.start();
        let second = two.start();
        let (url1, url2) = (
            first.url(&format!("/webhooks/{CHANNEL}")),
            second.url(&format!("/webhooks/{CHANNEL}")),
        );
        // The group spreads the partitions once both have joined: warm
        // up until each worker has threaded something.
        let threaded = |daemon| {
            metric(
                daemon,
                "omnid_threading_events_total",
                &["outcome=\"threaded\""],
            )
        };
        let mut warm_up = Vec::new();
        for round in 0.. {
            if threaded(&first).await > 0.0 && threaded(&second).await > 0.0 {
                break;
            }
            assert!(round < 120, "the second worker never got a partition");
            warm_up.extend(post_burst(&url1, &format!("warm{round}"), 8, 1).await);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (a, b) = tokio::join!(post_burst(&url1, "a", 8, 12), post_burst(&url2, "b", 8, 12),);
        let sent: Vec<&Vec<String>> = a.iter().chain(b.iter()).chain(warm_up.iter()).collect();
        let total: usize = sent.iter().map(|ids| ids.len()).sum();

        let log = reader(&broker.bootstrap());
        let records = wait_for_timeline(&log, "every message", |records| {
            records.iter().filter_map(message_id).count() >= total
        })
        .await;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for id in records.iter().filter_map(message_id) {
            *seen.entry(id).or_default() += 1;
        }
        assert_eq!(seen.len(), total, "every message threaded");
        assert!(seen.values().all(|&n| n == 1), "no message twice");
        let mut per_customer: HashMap<&str, Vec<u64>> = HashMap::new();
        let mut customer_of: HashMap<&str, &str> = HashMap::new();
        for r in &records {
            per_customer
                .entry(&r.customer_id)
                .or_default()
                .push(r.sequence);
            if let Some(id) = message_id(r) {
                customer_of.insert(id, &r.customer_id);
            }
        }
        for (customer, sequences) in &per_customer {
            let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
            assert_eq!(sequences, &expected, "sequences of {customer}");
        }
        let position: HashMap<&str, usize> = records
            .iter()
            .filter_map(message_id)
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        for ids in &sent {
            let order: Vec<usize> = ids.iter().map(|id| position[id.as_str()]).collect();
            assert!(order.is_sorted(), "a sender's messages keep their order");
        }
        let (n1, n2) = (threaded(&first).await, threaded(&second).await);
        assert!(n1 > 0.0 && n2 > 0.0, "both workers threaded ({n1}, {n2})");
        assert_eq!(n1 + n2, total as f64, "each message by one worker");

        // One person across handles, their messages taken by both daemons
        // (and so by both workers), plus a provider's retry of one of
        // them: one customer, each message once.
        let client = client();
        let x1 = post_one(
            &client,
            &first,
            CHANNEL,
            from("x-1", "email", "ana@example.com"),
        )
        .await;
        let x2 = post_one(&client, &second, CHANNEL, from("x-2", "phone", PHONE)).await;
        // Both handles threaded before the link: the two workers consume
        // different partitions, and a link threaded first would find the
        // phone unowned and claim it, with nothing to merge.
        wait_for_timeline(&log, "the first two messages", |records| {
            [&x1, &x2]
                .iter()
                .all(|id| records.iter().any(|r| message_id(r) == Some(id.as_str())))
        })
        .await;
        let mut linking = from("x-3", "email", "ana@example.com");
        linking["sender_identities"] =
            serde_json::json!([{ "kind": "phone", "value": PHONE, "verified": true }]);
        let x3 = post_one(&client, &first, TRUSTED, linking).await;
        let retry = post_one(
            &client,
            &second,
            CHANNEL,
            from("x-1", "email", "ana@example.com"),
        )
        .await;
        assert_eq!(retry, x1, "a retry carries the same event id");
        let mut survivor = String::new();
        for _ in 0..120 {
            let email = identity(&client, &second, "email/ana@example.com").await;
            let phone = identity(&client, &first, "phone/%2B14155550134").await;
            if let Some(email) = email
                && Some(&email) == phone.as_ref()
            {
                survivor = email;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            !survivor.is_empty(),
            "the email and the phone never became one customer"
        );
        let records = wait_for_timeline(&log, "the linked messages", |records| {
            [&x1, &x2, &x3]
                .iter()
                .all(|id| records.iter().any(|r| message_id(r) == Some(id.as_str())))
        })
        .await;
        let mine: Vec<&str> = records
            .iter()
            .filter_map(message_id)
            .filter(|id| [&x1, &x2, &x3].iter().any(|x| x.as_str() == *id))
            .collect();
        assert_eq!(mine.len(), 3, "each once, the retry dropped: {mine:?}");
        let position = |id: &str| mine.iter().position(|m| *m == id).unwrap();
        assert!(
            position(&x1) < position(&x3),
            "one sender's messages keep their order"
        );
        assert!(
            records
                .iter()
                .any(|r| r.customer_id == survivor && matches!(&r.entry, Some(Entry::Merged(_)))),
            "the survivor's timeline has the merge"
        );

        // Commands on the topic: a merge (sent twice) and a refusal.
        let c0 = customer_of[a[0][0].as_str()].to_owned();
        let c1 = customer_of[a[1][0].as_str()].to_owned();
        let merge = ThreadingCommand {
            command_id: "merge-topic-1".to_owned(),
            actor: "helpdesk".to_owned(),
            issued_at: None,
            command: Some(Command::Merge(MergeCustomers {
                customer_ids: vec![c0.clone(), c1.clone()],
            })),
        };
        produce_command(&log, &c0, &merge).await;
        produce_command(&log, &c0, &merge).await;
        let refused = ThreadingCommand {
            command_id: "close-unknown".to_owned(),
            command: Some(Command::Close(CloseConversation {
                conversation_id: "no-such-conversation".to_owned(),
                reason: String::new(),
            })),
            ..Default::default()
        };
        produce_command(&log, "x", &refused).await;
        let records = wait_for_timeline(&log, "the merge", |records| {
            records
                .iter()
                .any(|r| matches!(&r.entry, Some(Entry::Merged(m)) if m.reason == "command"))
        })
        .await;
        let merges: Vec<&TimelineEvent> = records
            .iter()
            .filter(|r| matches!(&r.entry, Some(Entry::Merged(m)) if m.reason == "command"))
            .collect();
        assert_eq!(merges.len(), 1, "the repeated command applied once");
        assert_eq!(merges[0].customer_id, c0.clone().min(c1.clone()));
        let mut dead = Vec::new();
        for _ in 0..60 {
            dead = topic_records(&log, "omni.deadletter.v1").await;
            if !dead.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let dead: Vec<DeadLetter> = dead
            .iter()
            .map(|r| DeadLetter::decode(r.record.payload.as_ref()).unwrap())
            .collect();
        assert!(
                dead.iter()
                    .any(|d| d.reason == "command_refused"
                        && d.detail.contains("no-such-conversation")),
                "the refused command is dead-lettered: {dead:?}"
            );

        // One daemon stops (giving the lease up); the other publishes on.
        assert!(first.terminate().success());
        let late = post_burst(&url2, "late", 2, 3).await;
        let late: Vec<String> = late.into_iter().flatten().collect();
        let records = wait_for_timeline(&log, "the messages after one daemon stopped", |records| {
            let ids: HashSet<&str> = records.iter().filter_map(message_id).collect();
            late.iter().all(|id| ids.contains(id.as_str()))
        })
        .await;
        let mut per_customer: HashMap<&str, Vec<u64>> = HashMap::new();
        for r in &records {
            per_customer
                .entry(&r.customer_id)
                .or_default()
                .push(r.sequence);
        }
        for (customer, sequences) in &per_customer {
            let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
            assert_eq!(
                sequences, &expected,
                "sequences of {customer} after the handover"
            );
        }
    })
    .await;
    schema.drop().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Kill -9 the daemon while it applies a stream of helpdesk commands from
/// the topic, restart it: every command's entry is on the timeline exactly
/// once (the consumer commits only after applying, and the store drops
/// what it applied before), and the customer's sequence has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_survive_kill_9_exactly_once() {
    const COMMANDS: usize = 1500;
    let broker = Broker::start().await;
    // A killed consumer leaves the group only when its session times out:
    // keep that short, so the restarted one gets the partitions back soon.
    let config = log_config(&broker.bootstrap(), 3, "protobuf").replacen(
        "[log.kafka.librdkafka]\n",
        "[log.kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
        1,
    );
    let deployment = Deployment::with_config(&config);
    let mut daemon = deployment.start();
    let client = client();
    post_one(&client, &daemon, CHANNEL, from("k-1", "phone", PHONE)).await;
    let log = reader(&broker.bootstrap());
    let records = wait_for_timeline(&log, "the first message", |records| {
        records.iter().any(|r| message_id(r).is_some())
    })
    .await;
    let customer = records[0].customer_id.clone();

    // The commands consumer joins its group first (a command applied).
    let warm_up = ThreadingCommand {
        command_id: "warm-up".to_owned(),
        command: Some(Command::Close(CloseConversation {
            conversation_id: records
                .iter()
                .find(|r| message_id(r).is_some())
                .unwrap()
                .conversation_id
                .clone(),
            reason: String::new(),
        })),
        ..Default::default()
    };
    produce_command(&log, &customer, &warm_up).await;
    wait_for_timeline(&log, "the warm-up command", |records| {
        records
            .iter()
            .any(|r| matches!(&r.entry, Some(Entry::Conversation(_))))
    })
    .await;

    // Produced one by one while the daemon applies them, so the kill
    // lands mid-stream.
    let producer = {
        let (log, customer) = (reader(&broker.bootstrap()), customer.clone());
        tokio::spawn(async move {
            for i in 0..COMMANDS {
                let link = ThreadingCommand {
                    command_id: format!("link-{i}"),
                    actor: "helpdesk".to_owned(),
                    issued_at: None,
                    command: Some(Command::Link(LinkIdentity {
                        customer_id: customer.clone(),
                        handle: Some(IdentityHandle {
                            kind: HandleKind::TelegramUser as i32,
                            value: (100_000 + i).to_string(),
                            ..Default::default()
                        }),
                    })),
                };
                produce_command(&log, &customer, &link).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let links = |records: &[TimelineEvent]| {
        records
            .iter()
            .filter(|r| matches!(&r.entry, Some(Entry::Identity(l)) if l.reason == "command"))
            .count()
    };
    // Kill once some are applied (the daemon's own count, read fast).
    let mut applied = 0.0;
    for _ in 0..3000 {
        applied = metric(
            &daemon,
            "omnid_threading_commands_total",
            &["outcome=\"applied\"", "source=\"topic\""],
        )
        .await;
        if applied >= 50.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(applied >= 50.0, "the commands consumer never got going");
    daemon.kill9();
    eprintln!(
        "killed with {applied} of {COMMANDS} commands applied (producer finished: {})",
        producer.is_finished()
    );
    producer.await.unwrap();

    let daemon = deployment.start();
    // The restarted consumer applies the rest (a replayed batch is
    // dropped as duplicates), then the relay publishes it.
    let mut done = false;
    for _ in 0..240 {
        let records = timeline_records(&log).await;
        if links(&records) >= COMMANDS {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !done {
        let stderr = daemon.stderr();
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        panic!(
            "the timeline never had every command; daemon log (newest first):\n{}",
            tail.join("\n")
        );
    }
    // Let anything doubled arrive before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = timeline_records(&log).await;
    let mut handles: HashMap<String, usize> = HashMap::new();
    for r in &records {
        if let Some(Entry::Identity(l)) = &r.entry
            && l.reason == "command"
        {
            *handles
                .entry(l.handle.as_ref().unwrap().value.clone())
                .or_default() += 1;
        }
    }
    assert_eq!(handles.len(), COMMANDS, "every command applied");
    assert!(
        handles.values().all(|&n| n == 1),
        "no command applied twice"
    );
    let sequences: Vec<u64> = records
        .iter()
        .filter(|r| r.customer_id == customer)
        .map(|r| r.sequence)
        .collect();
    let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
    assert_eq!(sequences, expected, "the customer's sequence has no gap");
}
