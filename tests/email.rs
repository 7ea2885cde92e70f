//! The email channel inside the real daemon, against a real Dovecot: what
//! survives a kill -9 and a graceful restart in the middle of a backlog.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use omni_testkit::daemon::Deployment;
use omni_testkit::{ALICE, Dovecot};

const CHANNEL: &str = "support-mail";

fn message(i: usize) -> Vec<u8> {
    format!(
        "From: Customer {c} <customer{c}@shop.example>\r\nTo: support@acme.example\r\n\
         Subject: =?UTF-8?B?{subject}?=\r\nMessage-ID: <order-{i}@shop.example>\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Where is order {i}?\r\n",
        c = i % 7,
        // "Réclamation" in an RFC 2047 encoded word.
        subject = "UsOpY2xhbWF0aW9u",
    )
    .into_bytes()
}

fn deployment(dovecot: &Dovecot) -> Deployment {
    let deployment = Deployment::new();
    let password = deployment.path().join("imap-password");
    std::fs::write(&password, ALICE.password).unwrap();
    deployment.write_channel(
        CHANNEL,
        &format!(
            "id = \"{CHANNEL}\"\nkind = \"email\"\n[imap]\nhost = \"127.0.0.1\"\nport = {}\n\
             tls = \"none\"\nusername = \"{}\"\npassword = {{ file = {:?} }}\nbatch_size = 20\n\
             command_timeout_secs = 10\nmax_backoff_secs = 1\n",
            dovecot.imap_port(),
            ALICE.login,
            password.display().to_string()
        ),
    );
    deployment
}

/// Message-ID -> the event ids it was appended under.
fn ingested(deployment: &Deployment) -> HashMap<String, Vec<String>> {
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for record in deployment.tail("inbound") {
        let value = &record["value"];
        assert_eq!(value["channelId"], CHANNEL);
        assert_eq!(record["headers"]["ce_id"], value["eventId"]);
        seen.entry(value["providerMessageId"].as_str().unwrap().to_owned())
            .or_default()
            .push(value["eventId"].as_str().unwrap().to_owned());
    }
    seen
}

fn wait_for(
    deployment: &Deployment,
    at_least: usize,
    within: Duration,
) -> HashMap<String, Vec<String>> {
    let deadline = Instant::now() + within;
    loop {
        let seen = ingested(deployment);
        if seen.len() >= at_least {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {at_least} messages ingested after {within:?}",
            seen.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill_9_during_ingestion_loses_nothing() {
    let dovecot = Dovecot::start();
    let n = 1500;
    dovecot.append_many(ALICE, "INBOX", &(0..n).map(message).collect::<Vec<_>>());
    let deployment = deployment(&dovecot);

    let mut daemon = deployment.start();
    wait_for(&deployment, 100, Duration::from_secs(60));
    daemon.kill9();
    let partial = ingested(&deployment).len();
    assert!(partial < n, "killed mid-backlog ({partial} of {n})");

    let _daemon = deployment.start();
    let seen = wait_for(&deployment, n, Duration::from_secs(120));
    for i in 0..n {
        let ids = &seen[&format!("order-{i}@shop.example")];
        // A batch that was durable but not yet checkpointed when the
        // process died is fetched again; it must carry the same event id,
        // which is how consumers drop it.
        assert!(ids.iter().all(|id| id == &ids[0]), "order-{i}: {ids:?}");
    }
    let total: usize = seen.values().map(Vec::len).sum();
    assert!(
        total - n <= 20,
        "at most one batch (20) replayed, got {} duplicates",
        total - n
    );
    let one = &seen["order-3@shop.example"];
    assert_eq!(one.len(), 1);
    let event = deployment
        .tail("inbound")
        .into_iter()
        .find(|r| r["value"]["eventId"] == one[0].as_str())
        .unwrap();
    assert_eq!(event["value"]["content"]["subject"], "Réclamation");
    assert_eq!(event["key"], "email:customer3@shop.example");
}

#[test]
fn a_graceful_restart_mid_backlog_ingests_every_message_exactly_once() {
    let dovecot = Dovecot::start();
    let n = 1000;
    dovecot.append_many(ALICE, "INBOX", &(0..n).map(message).collect::<Vec<_>>());
    let deployment = deployment(&dovecot);

    let mut daemon = deployment.start();
    wait_for(&deployment, 100, Duration::from_secs(60));
    assert!(daemon.terminate().success(), "{}", daemon.stderr());
    let partial = ingested(&deployment).len();
    assert!(partial < n, "stopped mid-backlog ({partial} of {n})");

    let daemon = deployment.start();
    // Mail that arrives while the daemon runs comes in through IDLE too.
    dovecot.append(ALICE, "INBOX", &message(n));
    let seen = wait_for(&deployment, n + 1, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    let seen_after = ingested(&deployment);
    assert_eq!(seen, seen_after, "nothing more arrives");
    for (id, ids) in &seen {
        assert_eq!(ids.len(), 1, "{id} appended {} times", ids.len());
    }
    drop(daemon);
}

#[test]
fn the_example_email_channel_file_passes_check_config_and_mistakes_name_their_key() {
    let deployment = Deployment::new();
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/email.toml"),
    )
    .unwrap();
    deployment.write_channel("support-mail", &example);
    let ok = deployment
        .command(&["check-config"])
        .env("OMNID_SUPPORT_IMAP_PASSWORD", "imap-pw")
        .env("OMNID_SUPPORT_SMTP_PASSWORD", "smtp-pw")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("support-mail (email)"), "{stdout}");

    let cases = [
        ("tls = \"tls\"", "tls = \"none\"", "key `imap.tls`"),
        (
            "mailboxes = [\"INBOX\"]",
            "mailboxes = []",
            "key `imap.mailboxes`",
        ),
        (
            "start_from = \"all\"",
            "start_from = \"last week\"",
            "key `imap.start_from`",
        ),
    ];
    for (from, to, expected) in cases {
        deployment.write_channel("support-mail", &example.replacen(from, to, 1));
        let bad = deployment
            .command(&["check-config"])
            .env("OMNID_SUPPORT_IMAP_PASSWORD", "imap-pw")
            .env("OMNID_SUPPORT_SMTP_PASSWORD", "smtp-pw")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success(), "{to} accepted");
        assert!(
            stderr.contains("support-mail.toml") && stderr.contains(expected),
            "{to}: {stderr}"
        );
    }
}
