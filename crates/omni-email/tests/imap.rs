//! The IMAP half against a real Dovecot server (omni-testkit): IDLE
//! delivery, checkpoints across restarts, UIDVALIDITY changes, TLS modes,
//! oversized mail, a server restart and a server that never answers.

use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use omni_connector::{
    ChannelContext, ChannelState, EventSender, LogEntry, SqliteStateStore, testing::MemorySink,
};
use omni_email::EmailChannelConfig;
use omni_testkit::{ALICE, Dovecot};
use tokio_util::sync::CancellationToken;

fn message(i: usize) -> Vec<u8> {
    format!(
        "From: Customer {c} <customer{c}@shop.example>\r\nTo: support@acme.example\r\n\
         Subject: Order {i}\r\nMessage-ID: <order-{i}@shop.example>\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Where is order {i}?\r\n",
        c = i % 7
    )
    .into_bytes()
}

/// A channel pulling Alice's INBOX, with its state in `state_dir` so a
/// second run resumes where the first stopped.
struct Channel {
    sink: MemorySink,
    state: Arc<SqliteStateStore>,
    settings: String,
}

impl Channel {
    fn new(dovecot: &Dovecot, state_dir: &Path, extra: &str) -> Self {
        let password = state_dir.join("password");
        std::fs::write(&password, ALICE.password).unwrap();
        let settings = format!(
            "[imap]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"{}\"\n\
             password = {{ file = {:?} }}\ncommand_timeout_secs = 5\nmax_backoff_secs = 1\n{extra}",
            dovecot.imap_port(),
            ALICE.login,
            password.display().to_string(),
        );
        Self {
            sink: MemorySink::default(),
            state: Arc::new(SqliteStateStore::open(&state_dir.join("state.sqlite3")).unwrap()),
            settings,
        }
    }

    fn start(&self) -> Running {
        let mut context = ChannelContext::new(
            "support-mail",
            EventSender::new(Arc::new(self.sink.clone())),
        );
        context.state = ChannelState::new(self.state.clone(), "support-mail");
        let connector = omni_connector::factory::<EmailChannelConfig>()
            .build(context, toml::from_str(&self.settings).unwrap())
            .unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(connector.run(shutdown.clone()));
        Running { shutdown, task }
    }

    fn events(&self) -> Vec<omni_proto::v1::ConversationEvent> {
        self.sink
            .entries()
            .into_iter()
            .filter_map(|e| match e {
                LogEntry::Event(event) => Some(*event),
                LogEntry::DeadLetter(_) | LogEntry::Outbound(_) => None,
            })
            .collect()
    }

    fn dead_letters(&self) -> Vec<omni_proto::v1::DeadLetter> {
        self.sink
            .entries()
            .into_iter()
            .filter_map(|e| match e {
                LogEntry::DeadLetter(dl) => Some(*dl),
                LogEntry::Event(_) | LogEntry::Outbound(_) => None,
            })
            .collect()
    }

    async fn wait_for_entries(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.sink.entries().len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} entries after {within:?}",
                self.sink.entries().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), omni_connector::ConnectorError>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the connector stops promptly on shutdown")
            .unwrap()
            .unwrap();
    }
}

/// Message-ID -> how many events carried it.
fn counts(events: &[omni_proto::v1::ConversationEvent]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for event in events {
        *counts.entry(event.provider_message_id.clone()).or_default() += 1;
    }
    counts
}

fn assert_exactly_once(events: &[omni_proto::v1::ConversationEvent], n: usize) {
    let counts = counts(events);
    for i in 0..n {
        let id = format!("order-{i}@shop.example");
        assert_eq!(
            counts.get(&id),
            Some(&1),
            "{id} ingested {:?} times",
            counts.get(&id)
        );
    }
    assert_eq!(events.len(), n, "no other events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_then_idle_delivers_each_message_once_with_its_location() {
    let dovecot = Dovecot::start();
    dovecot.append_many(ALICE, "INBOX", &(0..5).map(message).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let channel = Channel::new(&dovecot, dir.path(), "");
    let running = channel.start();
    channel.wait_for_entries(5, Duration::from_secs(20)).await;

    // Now the connection is idling: new mail must arrive without a poll
    // (the poll interval is a minute).
    for i in 5..8 {
        dovecot.append(ALICE, "INBOX", &message(i));
    }
    channel.wait_for_entries(8, Duration::from_secs(10)).await;
    running.stop().await;

    let events = channel.events();
    assert_exactly_once(&events, 8);
    let first = events
        .iter()
        .find(|e| e.provider_message_id == "order-0@shop.example")
        .unwrap();
    assert_eq!(
        first.sender.as_ref().unwrap().value,
        "customer0@shop.example"
    );
    assert_eq!(first.content.as_ref().unwrap().subject, "Order 0");
    assert_eq!(first.provider_metadata["imap_mailbox"], "INBOX");
    assert_eq!(first.provider_metadata["imap_uid"], "1");
    assert_eq!(
        first.provider_metadata["imap_uid_validity"],
        dovecot.uid_validity(ALICE, "INBOX").to_string()
    );
    assert!(first.received_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_mid_backlog_and_restarting_ingests_every_message_exactly_once() {
    let dovecot = Dovecot::start();
    let n = 600;
    dovecot.append_many(ALICE, "INBOX", &(0..n).map(message).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let channel = Channel::new(&dovecot, dir.path(), "batch_size = 25\n");

    let running = channel.start();
    channel.wait_for_entries(50, Duration::from_secs(20)).await;
    running.stop().await;
    let after_first = channel.sink.entries().len();
    assert!(
        after_first < n,
        "stopped mid-backlog ({after_first} of {n})"
    );

    let running = channel.start();
    channel.wait_for_entries(n, Duration::from_secs(60)).await;
    // Give a wrongly re-read batch the chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;
    assert_exactly_once(&channel.events(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_uidvalidity_resyncs_without_duplicates() {
    let dovecot = Dovecot::start();
    dovecot.append_many(ALICE, "INBOX", &(0..6).map(message).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let channel = Channel::new(&dovecot, dir.path(), "");
    let running = channel.start();
    channel.wait_for_entries(6, Duration::from_secs(20)).await;
    running.stop().await;

    let before = dovecot.uid_validity(ALICE, "INBOX");
    dovecot.set_uid_validity(ALICE, "INBOX", before + 1000);
    dovecot.append_many(ALICE, "INBOX", &(6..9).map(message).collect::<Vec<_>>());

    let running = channel.start();
    channel.wait_for_entries(9, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;
    let events = channel.events();
    assert_exactly_once(&events, 9);
    let late = events
        .iter()
        .find(|e| e.provider_message_id == "order-7@shop.example")
        .unwrap();
    assert_eq!(
        late.provider_metadata["imap_uid_validity"],
        (before + 1000).to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_uidvalidity_while_idling_resyncs_without_duplicates() {
    let dovecot = Dovecot::start();
    dovecot.append_many(ALICE, "INBOX", &(0..4).map(message).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let channel = Channel::new(&dovecot, dir.path(), "");
    let running = channel.start();
    channel.wait_for_entries(4, Duration::from_secs(20)).await;

    let before = dovecot.uid_validity(ALICE, "INBOX");
    dovecot.set_uid_validity(ALICE, "INBOX", before + 7);
    dovecot.append(ALICE, "INBOX", &message(4));
    channel.wait_for_entries(5, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;
    assert_exactly_once(&channel.events(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_a_date_skips_older_mail() {
    let dovecot = Dovecot::start();
    dovecot.append_many(ALICE, "INBOX", &(0..3).map(message).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    // Dovecot stamps APPENDed mail with the time of the APPEND, so all of
    // it is older than tomorrow.
    let channel = Channel::new(&dovecot, dir.path(), "start_from = \"2099-01-01\"\n");
    let running = channel.start();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(channel.sink.entries().len(), 0, "old mail skipped");
    dovecot.append(ALICE, "INBOX", &message(3));
    // Still dated before 2099: the start point stays in force only for the
    // first pass, and the checkpoint now covers the old UIDs, so mail that
    // arrives later is ingested whatever its date.
    channel.wait_for_entries(1, Duration::from_secs(10)).await;
    running.stop().await;
    assert_eq!(
        channel.events()[0].provider_message_id,
        "order-3@shop.example"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_mailboxes_and_tls_modes() {
    let dovecot = Dovecot::start();
    dovecot.create_mailbox(ALICE, "Support");
    dovecot.append(ALICE, "INBOX", &message(0));
    dovecot.append(ALICE, "Support", &message(1));
    for (tls, port) in [
        ("starttls", dovecot.imap_port()),
        ("tls", dovecot.imaps_port()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut channel = Channel::new(
            &dovecot,
            dir.path(),
            "mailboxes = [\"INBOX\", \"Support\"]\n",
        );
        channel.settings = channel
            .settings
            .replace("host = \"127.0.0.1\"", "host = \"localhost\"")
            .replace(
                "tls = \"none\"",
                &format!(
                    "tls = \"{tls}\"\nca_file = {:?}",
                    dovecot.ca_pem_path().display().to_string()
                ),
            )
            .replace(
                &format!("port = {}", dovecot.imap_port()),
                &format!("port = {port}"),
            );
        let running = channel.start();
        channel.wait_for_entries(2, Duration::from_secs(20)).await;
        running.stop().await;
        let mut ids: Vec<_> = channel
            .events()
            .into_iter()
            .map(|e| e.provider_message_id)
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            ["order-0@shop.example", "order-1@shop.example"],
            "{tls}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_fails_closed_without_the_servers_ca() {
    let dovecot = Dovecot::start();
    dovecot.append(ALICE, "INBOX", &message(0));
    let dir = tempfile::tempdir().unwrap();
    let mut channel = Channel::new(&dovecot, dir.path(), "");
    channel.settings = channel
        .settings
        .replace("host = \"127.0.0.1\"", "host = \"localhost\"")
        .replace("tls = \"none\"", "tls = \"tls\"")
        .replace(
            &format!("port = {}", dovecot.imap_port()),
            &format!("port = {}", dovecot.imaps_port()),
        );
    let running = channel.start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.stop().await;
    assert_eq!(
        channel.sink.entries().len(),
        0,
        "an untrusted server gets nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_mail_become_dead_letters_and_the_checkpoint_moves_on() {
    let dovecot = Dovecot::start();
    let mut big = message(0);
    big.extend(std::iter::repeat_n(b'x', 3000));
    big.extend_from_slice(b"\r\n");
    let no_sender = b"To: support@acme.example\r\nSubject: who am I\r\nMessage-ID: <anon@x.example>\r\n\r\nhi\r\n".to_vec();
    dovecot.append_many(ALICE, "INBOX", &[big, no_sender, message(2)]);
    let dir = tempfile::tempdir().unwrap();
    let channel = Channel::new(&dovecot, dir.path(), "[limits]\nmax_message_bytes = 2048\n");
    let running = channel.start();
    channel.wait_for_entries(3, Duration::from_secs(20)).await;
    running.stop().await;

    let dead = channel.dead_letters();
    let mut reasons: Vec<_> = dead.iter().map(|d| d.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(reasons, ["missing_sender", "too_large"]);
    let too_large = dead.iter().find(|d| d.reason == "too_large").unwrap();
    let header = String::from_utf8_lossy(&too_large.raw_payload);
    assert!(
        header.contains("Message-ID: <order-0@shop.example>"),
        "{header}"
    );
    assert!(!header.contains("xxxx"), "the body is not fetched");
    assert_eq!(too_large.metadata["imap_uid"], "1");
    assert_eq!(channel.events().len(), 1);

    // Nothing is fetched again on the next start.
    let running = channel.start();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.stop().await;
    assert_eq!(channel.sink.entries().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_survived_by_reconnecting() {
    let mut dovecot = Dovecot::start();
    dovecot.append(ALICE, "INBOX", &message(0));
    let dir = tempfile::tempdir().unwrap();
    let channel = Channel::new(&dovecot, dir.path(), "");
    let running = channel.start();
    channel.wait_for_entries(1, Duration::from_secs(20)).await;
    dovecot.restart();
    dovecot.append(ALICE, "INBOX", &message(1));
    channel.wait_for_entries(2, Duration::from_secs(20)).await;
    running.stop().await;
    assert_exactly_once(&channel.events(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_leaves_the_checkpoint_so_nothing_is_lost() {
    let dovecot = Dovecot::start();
    dovecot.append_many(ALICE, "INBOX", &(0..3).map(message).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let channel = Channel::new(&dovecot, dir.path(), "");
    channel
        .sink
        .fail_with(Some(omni_connector::SendError::Failed("disk full".into())));
    let running = channel.start();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(channel.sink.entries().len(), 0);
    channel.sink.fail_with(None);
    // The session failed and reconnects (backoff at most 1 s here).
    channel.wait_for_entries(3, Duration::from_secs(20)).await;
    running.stop().await;
    assert_exactly_once(&channel.events(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out_instead_of_hanging() {
    // Accepts connections and says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    let settings = omni_email::config::ImapSettings {
        port: Some(port),
        command_timeout_secs: 1,
        ..toml::from_str::<omni_email::config::EmailChannelConfig>(
            "[imap]\nhost = \"127.0.0.1\"\ntls = \"none\"\nusername = \"u\"\npassword = { env = \"UNUSED\" }\n",
        )
        .unwrap()
        .imap
        .unwrap()
    };
    let tls = omni_email::imap::transport::tls_config(&settings).unwrap();
    let started = Instant::now();
    let result = omni_email::imap::transport::connect(
        &settings,
        &omni_email::imap::transport::Credentials::Password(omni_connector::SecretRef::Env(
            "UNUSED".into(),
        )),
        &tls,
        Duration::from_secs(1),
    )
    .await;
    assert!(
        matches!(
            result,
            Err(omni_email::imap::ImapError::Timeout("greeting"))
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_logs_in_with_a_valid_token_and_gets_nothing_with_a_bad_one() {
    let dovecot = Dovecot::start_with_oauth2();
    dovecot.append(ALICE, "INBOX", &message(0));
    // The `Channel` helper's settings, logging in with a token file
    // instead of the password file.
    let oauth2_channel = |dir: &Path, token: &str| {
        let mut channel = Channel::new(&dovecot, dir, "");
        let password = format!(
            "password = {{ file = {:?} }}",
            dir.join("password").display().to_string()
        );
        let token_file = dir.join("token");
        std::fs::write(&token_file, token).unwrap();
        assert!(channel.settings.contains(&password), "{}", channel.settings);
        channel.settings = channel.settings.replace(
            &password,
            &format!(
                "oauth2_token = {{ file = {:?} }}",
                token_file.display().to_string()
            ),
        );
        channel
    };
    let failures = |log: &str| {
        log.lines()
            .filter(|l| l.contains("auth failed") && l.contains("method=XOAUTH2"))
            .count()
    };

    // Refused tokens: nothing is ingested, the session fails and is
    // retried (backoff at most 1 s here), and the connector still stops
    // promptly.
    for (what, token) in [
        ("expired", dovecot.expired_oauth2_token(ALICE)),
        ("Bob's", dovecot.oauth2_token(omni_testkit::BOB)),
    ] {
        let before = failures(&dovecot.log());
        let dir = tempfile::tempdir().unwrap();
        let channel = oauth2_channel(dir.path(), &token);
        let running = channel.start();
        let deadline = Instant::now() + Duration::from_secs(20);
        while failures(&dovecot.log()) < before + 2 {
            assert!(
                Instant::now() < deadline,
                "no retried XOAUTH2 login with the {what} token\n{}",
                dovecot.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running.stop().await;
        assert_eq!(channel.sink.entries().len(), 0, "the {what} token got mail");
    }
    let log = dovecot.log();
    assert!(log.contains("Token has expired"), "{log}");
    assert!(log.contains("did not match"), "{log}");
    assert!(
        !log.contains("Login: user=<alice>, method=XOAUTH2"),
        "{log}"
    );

    // A valid token: the connector logs in with XOAUTH2 and ingests.
    let dir = tempfile::tempdir().unwrap();
    let channel = oauth2_channel(dir.path(), &dovecot.oauth2_token(ALICE));
    let running = channel.start();
    channel.wait_for_entries(1, Duration::from_secs(20)).await;
    dovecot.append(ALICE, "INBOX", &message(1));
    channel.wait_for_entries(2, Duration::from_secs(10)).await;
    running.stop().await;
    assert_exactly_once(&channel.events(), 2);
    assert!(
        dovecot
            .log()
            .contains("Login: user=<alice>, method=XOAUTH2"),
        "{}",
        dovecot.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_id_twice_in_a_mailbox_is_appended_once() {
    let dovecot = Dovecot::start();
    // A copy of order 0 (say, filed twice by a mail rule) in the same batch
    // and in a later batch, whose predecessor may still be committing.
    let mut copy = message(0);
    copy.extend_from_slice(b"(copy)\r\n");
    let mailbox = [
        message(0),
        copy.clone(),
        message(1),
        message(2),
        copy,
        message(3),
    ];
    dovecot.append_many(ALICE, "INBOX", &mailbox);
    let dir = tempfile::tempdir().unwrap();
    let channel = Channel::new(&dovecot, dir.path(), "batch_size = 2\n");
    let running = channel.start();
    channel.wait_for_entries(4, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;
    assert_exactly_once(&channel.events(), 4);
}
