//! Threading through the running daemon: messages posted to API channels
//! become customers and ordered timelines, read back through the query
//! API, `omnid timeline` and the timeline topic (`omnid tail`), on the
//! embedded SQLite store and on a real PostgreSQL server.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use omni_testkit::{
    daemon::{CHANNEL, Daemon, Deployment, SECRET, signed},
    postgres::Schema,
};
use serde_json::{Value, json};

const TOKEN: &str = "threading-test-token";
const TRUSTED: &str = "trusted-api";
const PHONE: &str = "+14155550134";
const PHONE_PATH: &str = "%2B14155550134";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A deployment with the query API on (`http.api_token`), `threading`
/// settings appended, and a second API channel that trusts its senders.
fn deployment(threading: &str) -> Deployment {
    let deployment = Deployment::with_config(threading);
    deployment.enable_api(TOKEN);
    deployment.add_trusted_channel(TRUSTED);
    deployment
}

/// Posts a message to an API channel; returns its event id.
async fn post(client: &reqwest::Client, daemon: &Daemon, channel: &str, body: Value) -> String {
    let url = daemon.url(&format!("/webhooks/{channel}"));
    let response = signed(client, &url, body.to_string(), SECRET)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

fn from_email(external_id: &str, email: &str) -> Value {
    json!({ "external_id": external_id, "sender": { "kind": "email", "value": email }, "text": external_id })
}

fn from_phone(external_id: &str, phone: &str) -> Value {
    json!({ "external_id": external_id, "sender": { "kind": "phone", "value": phone }, "text": external_id })
}

/// `GET` on the query API with the token; status and JSON body.
async fn query(client: &reqwest::Client, daemon: &Daemon, path: &str) -> (u16, Value) {
    let response = client
        .get(daemon.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until `handle` (`email/...`) belongs to a customer; its id.
async fn customer_of(client: &reqwest::Client, daemon: &Daemon, handle: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = query(client, daemon, &format!("/v1/identities/{handle}")).await;
        if status == 200 {
            return body;
        }
        assert_eq!(status, 404, "{body}");
        assert!(Instant::now() < deadline, "{handle} never got a customer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every page of a customer's timeline through the query API.
async fn timeline(
    client: &reqwest::Client,
    daemon: &Daemon,
    customer: &str,
) -> (Value, Vec<Value>) {
    let mut entries = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = query(
            client,
            daemon,
            &format!("/v1/customers/{customer}/timeline?limit=2{after}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        entries.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(next) => after = format!("&after={next}"),
            None => return (page, entries),
        }
    }
}

/// Event ids of the message entries, in timeline order.
fn messages(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| e["message"]["event"]["eventId"].as_str())
        .map(str::to_owned)
        .collect()
}

/// Asserts every customer's entries carry sequences 1..n in order.
fn assert_gapless<'a>(entries: impl IntoIterator<Item = (&'a str, u64)>) {
    let mut per_customer: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (customer, sequence) in entries {
        per_customer.entry(customer).or_default().push(sequence);
    }
    for (customer, sequences) in per_customer {
        let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(sequences, expected, "sequences of customer {customer}");
    }
}

fn sequence(entry: &Value) -> u64 {
    // Protobuf JSON writes uint64 as a string.
    match &entry["sequence"] {
        Value::String(s) => s.parse().unwrap(),
        other => other.as_u64().unwrap(),
    }
}

/// Waits until the timeline topic holds `count` message entries; its
/// records.
fn wait_for_topic(deployment: &Deployment, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = deployment.tail("timeline");
        let messages = records
            .iter()
            .filter(|r| r["value"]["message"].is_object())
            .count();
        if messages >= count {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "the timeline topic has {messages} of {count} messages"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Email, then phone, then a trusted channel proving both: one customer,
/// one ordered timeline, on the query API, the CLI and the timeline topic.
async fn one_person_across_handles(deployment: &Deployment) {
    let daemon = deployment.start();
    let client = client();
    let e1 = post(
        &client,
        &daemon,
        CHANNEL,
        from_email("a-1", "Ana@Example.com"),
    )
    .await;
    let by_email = customer_of(&client, &daemon, "email/ana@example.com").await;
    let e2 = post(&client, &daemon, CHANNEL, from_phone("a-2", PHONE)).await;
    let by_phone = customer_of(&client, &daemon, &format!("phone/{PHONE_PATH}")).await;
    assert_ne!(
        by_email["customer_id"], by_phone["customer_id"],
        "nothing links them yet"
    );

    let mut linking = from_email("a-3", "ana@example.com");
    linking["sender_identities"] = json!([{ "kind": "phone", "value": PHONE, "verified": true }]);
    let e3 = post(&client, &daemon, TRUSTED, linking).await;

    // Both handles end at one customer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let survivor = loop {
        let email = customer_of(&client, &daemon, "email/ana@example.com").await;
        let phone = customer_of(&client, &daemon, &format!("phone/{PHONE_PATH}")).await;
        if email["customer_id"] == phone["customer_id"] {
            // The email may have been read just before the linking event
            // committed (its customer survives the merge), so read it again.
            let email = customer_of(&client, &daemon, "email/ana@example.com").await;
            assert_eq!(email["confirmed"], true, "{email}");
            break email["customer_id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "never merged: {email} {phone}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (page, entries) = timeline(&client, &daemon, &survivor).await;
    assert_eq!(page["customer_id"], survivor.as_str());
    assert_eq!(page["merged"], false);
    assert_eq!(messages(&entries), [e1.clone(), e2.clone(), e3.clone()]);
    assert_gapless(
        entries
            .iter()
            .map(|e| (e["customerId"].as_str().unwrap(), sequence(e))),
    );
    assert!(
        entries.iter().any(|e| e["merged"].is_object()),
        "a merge entry"
    );

    // The absorbed customer id resolves to the survivor, and says so.
    let absorbed = [&by_email, &by_phone]
        .into_iter()
        .map(|b| b["customer_id"].as_str().unwrap())
        .find(|id| *id != survivor)
        .unwrap();
    let (page, merged) = timeline(&client, &daemon, absorbed).await;
    assert_eq!(page["merged"], true);
    assert_eq!(page["customer_id"], survivor.as_str());
    assert_eq!(page["requested_customer_id"], absorbed);
    assert_eq!(merged, entries);

    // Unknown ids and handles are 404; no token, 401.
    let (status, _) = query(&client, &daemon, "/v1/customers/nobody/timeline").await;
    assert_eq!(status, 404);
    let (status, _) = query(&client, &daemon, "/v1/identities/email/nobody@example.com").await;
    assert_eq!(status, 404);
    let (status, _) = query(&client, &daemon, "/v1/identities/fax/1").await;
    assert_eq!(status, 400);
    let anonymous = client
        .get(daemon.url(&format!("/v1/customers/{survivor}/timeline")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // The CLI prints the same timeline.
    let printed = deployment.timeline("email:ana@example.com");
    assert_eq!(printed, entries);

    // The timeline topic: keyed by customer, CloudEvents headers, every
    // customer's sequence 1..n.
    let records = wait_for_topic(deployment, 3);
    for record in &records {
        assert_eq!(record["headers"]["ce_type"], "dev.omnid.timeline_event.v1");
        assert_eq!(record["key"], record["value"]["customerId"]);
    }
    let published: Vec<Value> = records.iter().map(|r| r["value"].clone()).collect();
    assert_eq!(messages(&published), [e1, e2, e3]);
    assert_gapless(
        published
            .iter()
            .map(|e| (e["customerId"].as_str().unwrap(), sequence(e))),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_person_by_email_then_phone_then_a_verified_claim_is_one_customer() {
    one_person_across_handles(&deployment("")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unverified_claim_stays_a_suggestion() {
    let deployment = deployment("");
    let daemon = deployment.start();
    let client = client();
    let owner_event = post(
        &client,
        &daemon,
        CHANNEL,
        from_email("b-1", "ana@example.com"),
    )
    .await;
    let owner = customer_of(&client, &daemon, "email/ana@example.com").await;

    // A visitor on an untrusted channel claims Ana's address, "verified".
    let claim = json!({
        "external_id": "b-2",
        "sender": { "kind": "external", "value": "visitor-9" },
        "sender_identities": [{ "kind": "email", "value": "ana@example.com", "verified": true }],
        "text": "show me my orders",
    });
    post(&client, &daemon, CHANNEL, claim).await;
    let visitor = customer_of(&client, &daemon, "external/visitor-9?scope=shop-api").await;
    assert_ne!(visitor["customer_id"], owner["customer_id"]);
    assert_eq!(
        visitor["suggestions"],
        json!([{ "kind": "email", "scope": "", "value": "ana@example.com" }])
    );

    // Ana's customer and history are untouched.
    let again = customer_of(&client, &daemon, "email/ana@example.com").await;
    assert_eq!(again["customer_id"], owner["customer_id"]);
    let (_, entries) = timeline(&client, &daemon, owner["customer_id"].as_str().unwrap()).await;
    assert_eq!(messages(&entries), [owner_event]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_post_makes_no_second_timeline_entry() {
    let deployment = deployment("");
    let daemon = deployment.start();
    let client = client();
    let first = post(&client, &daemon, CHANNEL, from_phone("c-1", PHONE)).await;
    let again = post(&client, &daemon, CHANNEL, from_phone("c-1", PHONE)).await;
    assert_eq!(first, again, "same external id, same event id");
    let last = post(&client, &daemon, CHANNEL, from_phone("c-2", PHONE)).await;

    let customer = customer_of(&client, &daemon, &format!("phone/{PHONE_PATH}")).await;
    let customer = customer["customer_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let entries = loop {
        let (_, entries) = timeline(&client, &daemon, &customer).await;
        if messages(&entries).contains(&last) {
            break entries;
        }
        assert!(Instant::now() < deadline, "c-2 never threaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(messages(&entries), [first, last]);
    assert_eq!(
        deployment.tail("inbound").len(),
        3,
        "the duplicate is on the inbound topic"
    );
    let records = wait_for_topic(&deployment, 2);
    let published: Vec<Value> = records.iter().map(|r| r["value"].clone()).collect();
    assert_eq!(
        messages(&published).len(),
        2,
        "and not on the timeline topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_burst_leaves_no_gap_duplicate_or_reordering() {
    const SENDERS: usize = 8;
    let deployment = deployment("");
    let mut daemon = deployment.start();
    let client = client();
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    let acked = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let body = from_phone(
                    &format!("d-{sender}-{i:05}"),
                    &format!("+1415555020{sender}"),
                );
                let Ok(response) = signed(&client, &url, body.to_string(), SECRET).send().await
                else {
                    return;
                };
                if response.status() != 200 {
                    return;
                }
                *acked.lock().unwrap() += 1;
            }
        }));
    }
    while *acked.lock().unwrap() < 600 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.kill9();
    for task in tasks {
        task.await.unwrap();
    }

    eprintln!(
        "killed with {} inbound records, {} timeline records",
        deployment.tail("inbound").len(),
        deployment.tail("timeline").len()
    );
    // Restart: the worker resumes from its committed position, the relay
    // from the outbox; one more message proves the daemon is threading.
    let daemon = deployment.start();
    post(&client, &daemon, CHANNEL, from_phone("d-after", PHONE)).await;
    let inbound = deployment.tail("inbound");
    let records = wait_for_topic(&deployment, inbound.len());
    drop(daemon);

    let mut ids = HashSet::new();
    let mut per_key: HashMap<String, Vec<&Value>> = HashMap::new();
    for record in &records {
        let id = record["headers"]["ce_id"].as_str().unwrap().to_owned();
        assert!(ids.insert(id.clone()), "entry {id} published twice");
        per_key
            .entry(record["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(&record["value"]);
    }
    assert_eq!(per_key.len(), SENDERS + 1, "one customer per sender");
    for (customer, entries) in &per_key {
        let sequences: Vec<u64> = entries.iter().map(|e| sequence(e)).collect();
        let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(sequences, expected, "sequences of {customer}");
        let sent: Vec<&str> = entries
            .iter()
            .filter_map(|e| e["message"]["event"]["providerMessageId"].as_str())
            .collect();
        let mut sorted = sent.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sent, sorted,
            "messages of {customer} in the order sent, once each"
        );
    }
    let threaded: usize = records
        .iter()
        .filter(|r| r["value"]["message"].is_object())
        .count();
    assert_eq!(
        threaded,
        inbound.len(),
        "every inbound message is on the timeline once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_person_across_handles_on_postgres() {
    let schema = Schema::create().await;
    let dir = tempfile::tempdir().unwrap();
    let deployment = deployment(&schema.threading_config(dir.path()));
    let result = tokio::spawn(async move { one_person_across_handles(&deployment).await }).await;
    schema.drop().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A helpdesk command over HTTP with the token; status and JSON body.
async fn command(
    client: &reqwest::Client,
    daemon: &Daemon,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Value,
) -> (u16, Value) {
    let response = client
        .request(method, daemon.url(path))
        .bearer_auth(TOKEN)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The conversation of the message entry of `event_id`.
fn conversation_of(entries: &[Value], event_id: &str) -> String {
    entries
        .iter()
        .find(|e| e["message"]["event"]["eventId"] == event_id)
        .and_then(|e| e["conversationId"].as_str())
        .unwrap_or_else(|| panic!("no message {event_id}"))
        .to_owned()
}

/// Helpdesk commands through the HTTP API: merge, close (and its effect
/// on the next message), link, split and unlink change exactly what they
/// name, repeat requests with the same Idempotency-Key apply once,
/// refusals get 404/409/400, and every entry reaches the timeline topic
/// with gapless per-customer sequences.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helpdesk_commands_over_http() {
    let deployment = deployment("");
    let daemon = deployment.start();
    let client = client();
    let post_ = reqwest::Method::POST;

    // Without the token: refused.
    let response = client
        .post(daemon.url("/v1/conversations/x/close"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let e1 = post(
        &client,
        &daemon,
        CHANNEL,
        from_email("h1", "ana@example.com"),
    )
    .await;
    let e2 = post(&client, &daemon, CHANNEL, from_phone("h2", PHONE)).await;
    let a = customer_of(&client, &daemon, "email/ana@example.com").await["customer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let p = customer_of(&client, &daemon, &format!("phone/{PHONE_PATH}")).await["customer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(a, p);

    // Merge, twice with the same key: applied once.
    let merge = json!({ "customer_ids": [p], "actor": "agent-7" });
    let (status, merged) = command(
        &client,
        &daemon,
        post_.clone(),
        &format!("/v1/customers/{a}/merge"),
        "merge-1",
        merge.clone(),
    )
    .await;
    assert_eq!(status, 200, "{merged}");
    assert_eq!(merged["outcome"], "applied");
    let survivor = merged["entries"][0]["customerId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(survivor, a.clone().min(p.clone()));
    assert_eq!(merged["entries"][0]["merged"]["reason"], "command");
    let (status, again) = command(
        &client,
        &daemon,
        post_.clone(),
        &format!("/v1/customers/{a}/merge"),
        "merge-1",
        merge,
    )
    .await;
    assert_eq!(
        (status, again["outcome"].as_str()),
        (200, Some("duplicate"))
    );

    // Close the phone conversation: the next SMS-like message opens a new
    // one (the API channel is chat-like and well inside its timeout).
    let (_, entries) = timeline(&client, &daemon, &survivor).await;
    let phone_conversation = conversation_of(&entries, &e2);
    let close_path = format!("/v1/conversations/{phone_conversation}/close");
    let close = |key: &'static str| {
        command(
            &client,
            &daemon,
            reqwest::Method::POST,
            &close_path,
            key,
            json!({ "reason": "resolved", "actor": "agent-7" }),
        )
    };
    let (status, closed) = close("close-1").await;
    assert_eq!(
        (status, closed["outcome"].as_str()),
        (200, Some("applied")),
        "{closed}"
    );
    assert_eq!(
        closed["entries"][0]["conversation"]["state"],
        "CONVERSATION_STATE_CLOSED"
    );
    let (status, closed) = close("close-2").await;
    assert_eq!(
        (status, closed["outcome"].as_str()),
        (200, Some("unchanged"))
    );
    let e3 = post(&client, &daemon, CHANNEL, from_phone("h3", PHONE)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let entries = loop {
        let (_, entries) = timeline(&client, &daemon, &survivor).await;
        if messages(&entries).contains(&e3) {
            break entries;
        }
        assert!(Instant::now() < deadline, "h3 never threaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let new_conversation = conversation_of(&entries, &e3);
    assert_ne!(
        new_conversation, phone_conversation,
        "a closed conversation is not continued"
    );

    // Refusals.
    let (status, body) = command(
        &client,
        &daemon,
        post_.clone(),
        "/v1/conversations/nope/close",
        "close-3",
        json!({}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, body) = command(
        &client,
        &daemon,
        post_.clone(),
        &format!("/v1/customers/{survivor}/identities"),
        "link-0",
        json!({ "kind": "fax", "value": "1" }),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // Link a Telegram user, then split it off with the new conversation.
    let (status, body) = command(
        &client,
        &daemon,
        post_.clone(),
        &format!("/v1/customers/{survivor}/identities"),
        "link-1",
        json!({ "kind": "telegram", "value": "777" }),
    )
    .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let (status, body) = command(
        &client,
        &daemon,
        post_.clone(),
        &format!("/v1/customers/{survivor}/split"),
        "split-1",
        json!({
            "handles": [{ "kind": "phone", "value": PHONE }],
            "conversation_ids": [new_conversation],
        }),
    )
    .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let split_off = body["entries"][1]["customerId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        customer_of(&client, &daemon, &format!("phone/{PHONE_PATH}")).await["customer_id"],
        split_off.as_str()
    );
    assert_eq!(
        customer_of(&client, &daemon, "email/ana@example.com").await["customer_id"],
        survivor.as_str()
    );

    // Linking the phone back is a conflict; unlinking it moves it on.
    let (status, body) = command(
        &client,
        &daemon,
        post_.clone(),
        &format!("/v1/customers/{survivor}/identities"),
        "link-2",
        json!({ "kind": "phone", "value": PHONE }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (status, body) = command(
        &client,
        &daemon,
        reqwest::Method::DELETE,
        &format!("/v1/customers/{split_off}/identities/phone/{PHONE_PATH}?actor=agent-7"),
        "unlink-1",
        Value::Null,
    )
    .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let moved = customer_of(&client, &daemon, &format!("phone/{PHONE_PATH}")).await["customer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(moved, split_off);

    // The raw form, as on the commands topic.
    let (status, body) = command(
        &client,
        &daemon,
        post_.clone(),
        "/v1/commands",
        "reopen-1",
        json!({
            "actor": "agent-7",
            "reopen": { "conversationId": phone_conversation },
        }),
    )
    .await;
    assert_eq!(
        (status, body["action"].as_str(), body["outcome"].as_str()),
        (200, Some("reopen"), Some("applied")),
        "{body}"
    );

    // Everything reaches the timeline topic, in order per customer.
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = deployment.tail("timeline");
        if records
            .iter()
            .any(|r| r["value"]["conversation"]["state"] == "CONVERSATION_STATE_OPEN")
        {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "the reopen never reached the topic"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_gapless(
        records
            .iter()
            .map(|r| (r["key"].as_str().unwrap(), sequence(&r["value"]))),
    );
    let count = |f: &dyn Fn(&Value) -> bool| records.iter().filter(|r| f(&r["value"])).count();
    assert_eq!(
        count(&|v| v["merged"]["reason"] == "command"),
        1,
        "one merge entry"
    );
    assert_eq!(
        count(&|v| v["conversation"]["reason"] == "resolved"),
        1,
        "one close entry"
    );
    assert_eq!(
        count(&|v| v["split"].is_object()),
        2,
        "split on both customers"
    );
    assert_eq!(
        count(&|v| v["identity"]["reason"] == "command"),
        3,
        "link, unlink, relink"
    );
    let _ = e1;
}
