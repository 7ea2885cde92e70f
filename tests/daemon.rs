//! End-to-end tests of the real `omnid` binary on the embedded default.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use omni_testkit::daemon::{CHANNEL, Daemon, Deployment, SECRET, message, signed};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_messages_are_stored_and_tailed_with_stream_headers() {
    let deployment = Deployment::new();
    let mut daemon = deployment.start();
    let client = client();
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));

    let mut ids = Vec::new();
    for i in 0..5 {
        let response = signed(
            &client,
            &url,
            message(&format!("m-{i}"), &format!("سلام {i}")),
            SECRET,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        ids.push(body["event_id"].as_str().unwrap().to_owned());
    }
    // A provider retry of the same external id: same event id.
    let retry = signed(&client, &url, message("m-0", "سلام 0"), SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 200);
    let retry: serde_json::Value = retry.json().await.unwrap();
    assert_eq!(retry["event_id"], ids[0].as_str());

    let health = client.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(&format!(
            "omnid_webhook_requests_total{{channel=\"{CHANNEL}\",outcome=\"accepted\"}} 6"
        )),
        "{metrics}"
    );

    // Readable while the daemon runs (WAL readers) ...
    let records = deployment.tail("inbound");
    assert_eq!(records.len(), 6);
    let first = &records[0];
    assert_eq!(first["topic"], "omni.inbound.v1");
    assert_eq!(first["key"], "phone:+989121234567");
    assert_eq!(first["headers"]["ce_id"], ids[0].as_str());
    assert_eq!(first["headers"]["ce_specversion"], "1.0");
    assert_eq!(
        first["headers"]["ce_type"],
        "dev.omnid.conversation_event.v1"
    );
    assert_eq!(
        first["headers"]["ce_source"],
        format!("/omnid/channels/{CHANNEL}")
    );
    assert_eq!(first["headers"]["content-type"], "application/protobuf");
    assert_eq!(first["value"]["eventId"], ids[0].as_str());
    assert_eq!(first["value"]["sender"]["value"], "+989121234567");
    assert_eq!(first["value"]["content"]["text"], "سلام 0");
    let offsets: Vec<i64> = records
        .iter()
        .map(|r| r["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4, 5]);

    // ... and after a graceful stop.
    let status = daemon.terminate();
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        daemon.stderr()
    );
    assert_eq!(deployment.tail("inbound").len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_4xx_and_only_authentic_garbage_is_dead_lettered() {
    let deployment = Deployment::new();
    let daemon = deployment.start();
    let client = client();
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));

    let forged = signed(&client, &url, message("f-1", "hi"), "not-the-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let body: serde_json::Value = forged.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_signature");

    let unsigned = client
        .post(&url)
        .body(message("f-2", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 403);

    let unknown = signed(
        &client,
        &daemon.url("/webhooks/nope"),
        message("f-3", "hi"),
        SECRET,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);

    let huge = message("f-4", &"x".repeat(70_000));
    let too_large = signed(&client, &url, huge, SECRET).send().await.unwrap();
    assert_eq!(too_large.status(), 413);
    let body: serde_json::Value = too_large.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    let garbage = signed(&client, &url, "{not json".into(), SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    let body: serde_json::Value = garbage.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");

    let typo = signed(
        &client,
        &url,
        r#"{"external_id":"t","sender":{"kind":"email","value":"a@b.example"},"txt":"hi"}"#.into(),
        SECRET,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(typo.status(), 400);
    let body: serde_json::Value = typo.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `txt`"),
        "{body}"
    );

    assert!(
        deployment.tail("inbound").is_empty(),
        "nothing unauthenticated or invalid may reach the stream"
    );
    let dead = deployment.tail("deadletter");
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0]["value"]["reason"], "invalid_json");
    assert_eq!(dead[1]["value"]["reason"], "invalid_field");
    assert_eq!(dead[0]["headers"]["ce_type"], "dev.omnid.dead_letter.v1");
}

/// The guarantee: a message that got a 2xx survives a kill -9 in the middle
/// of a burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_burst_loses_no_acknowledged_message() {
    let deployment = Deployment::new();
    let mut daemon = deployment.start();
    let client = client();
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();

    let mut senders = Vec::new();
    for worker in 0..32 {
        let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let external_id = format!("burst-{worker}-{i}");
                let Ok(response) = signed(&client, &url, message(&external_id, "burst"), SECRET)
                    .send()
                    .await
                else {
                    return; // the daemon is gone
                };
                if response.status() == 200 {
                    let Ok(body) = response.json::<serde_json::Value>().await else {
                        return;
                    };
                    let event_id = body["event_id"].as_str().unwrap().to_owned();
                    acked.lock().unwrap().insert(external_id, event_id);
                }
            }
        }));
    }
    // Let the burst run, then pull the plug mid-flight.
    while acked.lock().unwrap().len() < 2000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.kill9();
    for sender in senders {
        sender.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // Restart on the same data: the log opens, offsets continue.
    let daemon = deployment.start();
    let after = signed(
        &client,
        &daemon.url(&format!("/webhooks/{CHANNEL}")),
        message("after-restart", "x"),
        SECRET,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(after.status(), 200);
    drop(daemon);

    let records = deployment.tail("inbound");
    let stored: HashSet<String> = records
        .iter()
        .map(|r| r["headers"]["ce_id"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(_, id)| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
    let offsets: Vec<i64> = records
        .iter()
        .map(|r| r["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        (0..records.len() as i64).collect::<Vec<_>>(),
        "offsets are dense across the crash"
    );
    assert!(
        stored.len() > acked.len(),
        "the post-restart message is there too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn channel_files_reload_without_restart_and_bad_edits_are_refused() {
    let deployment = Deployment::new();
    let daemon = deployment.start();
    let client = client();
    let new_url = daemon.url("/webhooks/new-api");
    assert_eq!(
        signed(&client, &new_url, message("r-1", "hi"), SECRET)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let secret_file = deployment.path().join("secret");
    deployment.write_channel(
        "new-api",
        &format!("id = \"new-api\"\nkind = \"api\"\ndefault_region = \"IR\"\nsecret = {{ file = \"{}\" }}\n", secret_file.display()),
    );
    wait_for_status(&client, &new_url, 200, &daemon).await;

    // A broken edit is refused as a whole: both channels keep working.
    deployment.write_channel("new-api", "id = \"new-api\"\nkind = \"api\"\nsecrett = 1\n");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old_url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    assert_eq!(
        signed(&client, &new_url, message("r-2", "hi"), SECRET)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        signed(&client, &old_url, message("r-3", "hi"), SECRET)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        daemon.stderr().contains("channel configuration rejected"),
        "{}",
        daemon.stderr()
    );

    // Removing the file removes the channel.
    std::fs::remove_file(deployment.channels_dir().join("new-api.toml")).unwrap();
    wait_for_status(&client, &new_url, 404, &daemon).await;
}

async fn wait_for_status(client: &reqwest::Client, url: &str, status: u16, daemon: &Daemon) {
    for _ in 0..100 {
        let response = signed(
            client,
            url,
            message(&format!("probe-{status}"), "hi"),
            SECRET,
        )
        .send()
        .await
        .unwrap();
        if response.status() == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{url} never answered {status}; stderr:\n{}",
        daemon.stderr()
    );
}

#[test]
fn check_config_names_file_key_and_reason() {
    let deployment = Deployment::new();
    let ok = deployment.command(&["check-config"]).output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(CHANNEL));

    deployment.write_channel("broken", "id = \"broken\"\nkind = \"api\"\nsecret = { env = \"OMNI_TEST_NOT_SET\" }\nreplay_window_secs = \"five\"\n");
    let bad = deployment.command(&["check-config"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("broken.toml"), "{stderr}");
    assert!(stderr.contains("key `replay_window_secs`"), "{stderr}");
    assert!(stderr.contains("invalid type"), "{stderr}");

    // The daemon refuses to start on it, with the same message.
    let run = deployment.command(&["run"]).output().unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("key `replay_window_secs`"));
}

#[test]
fn environment_overrides_config_keys() {
    let deployment = Deployment::new();
    let output = deployment
        .command(&["check-config"])
        .env("OMNID__HTTP__MAX_BODY_BYTES", "zero")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("max_body_bytes"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let other_data = deployment.path().join("elsewhere");
    let mut daemon_cmd = deployment.command(&["tail"]);
    let status = daemon_cmd
        .env("OMNID__DATA_DIR", &other_data)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        other_data.join("events.sqlite3").exists(),
        "OMNID__DATA_DIR moved the log"
    );
}

/// SIGTERM mid-burst: the daemon stops accepting, answers what is in
/// flight, flushes the log and exits 0; every 2xx is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_burst_drains_in_flight_requests_and_exits_cleanly() {
    let deployment = Deployment::new();
    let mut daemon = deployment.start();
    let client = client();
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();

    let mut senders = Vec::new();
    for worker in 0..16 {
        let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let request = signed(
                    &client,
                    &url,
                    message(&format!("term-{worker}-{i}"), "bye"),
                    SECRET,
                );
                match request.send().await {
                    Ok(response) if response.status() == 200 => {
                        let body: serde_json::Value = response.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .push(body["event_id"].as_str().unwrap().to_owned());
                    }
                    Ok(response) => {
                        panic!("unexpected status {} during shutdown", response.status())
                    }
                    // The listener closed, or a keep-alive connection was
                    // closed between requests: the burst is over.
                    Err(_) => return,
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = daemon.terminate();
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        daemon.stderr()
    );
    for sender in senders {
        sender.await.unwrap();
    }
    assert!(
        daemon.stderr().contains("event log closed, bye"),
        "{}",
        daemon.stderr()
    );

    let stored: HashSet<String> = deployment
        .tail("inbound")
        .iter()
        .map(|r| r["headers"]["ce_id"].as_str().unwrap().to_owned())
        .collect();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 500);
    assert!(
        acked.iter().all(|id| stored.contains(id)),
        "an acknowledged message is missing after SIGTERM"
    );
}

/// Hostile identities: a sender address with a right-to-left override in
/// its local part renders as another address in an agent's inbox, so it is
/// refused (400) and kept as a dead letter, never stored as a handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sender_with_a_bidi_override_is_refused_and_dead_lettered() {
    let deployment = Deployment::new();
    let daemon = deployment.start();
    let url = daemon.url(&format!("/webhooks/{CHANNEL}"));
    let body = serde_json::json!({
        "external_id": "bidi-1",
        "sender": { "kind": "email", "value": "moc.elpmaxe\u{202e}@example.com" },
        "text": "refund please",
    })
    .to_string();
    let response = signed(&client(), &url, body.clone(), SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid character '\\u{202e}'"),
        "{answer}"
    );
    assert!(deployment.tail("inbound").is_empty());
    let dead = deployment.tail("deadletter");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["value"]["reason"], "invalid_field");
}

/// A secret that is only whitespace (an empty file with a newline, a
/// variable set to a space) is a config error, not a key anyone can guess.
#[test]
fn check_config_refuses_whitespace_only_secrets() {
    let deployment = Deployment::new();
    std::fs::write(deployment.path().join("blank"), " \n").unwrap();
    deployment.write_channel(
        "blank",
        &format!(
            "id = \"blank\"\nkind = \"api\"\nsecret = {{ file = \"{}\" }}\n",
            deployment.path().join("blank").display()
        ),
    );
    let output = deployment.command(&["check-config"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("blank.toml"), "{stderr}");
    assert!(stderr.contains("key `secret`"), "{stderr}");
    assert!(stderr.contains("whitespace"), "{stderr}");
}
