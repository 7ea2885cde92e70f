//! Automatic acknowledgements on email against real mail servers (a
//! Dovecot per test, an SMTP server per daemon): no loop between two
//! daemons that acknowledge every new conversation, and none with an
//! out-of-office responder.

use std::time::{Duration, Instant};

use omni_testkit::daemon::{Daemon, Deployment};
use omni_testkit::{ALICE, BOB, Dovecot, SmtpSink, User};
use serde_json::Value;

const CHANNEL: &str = "support-mail";
const ACK: &str = "We got your message and will answer soon.";

/// A daemon whose email channel reads `user`'s INBOX and sends through
/// `sink`, and acknowledges every new conversation.
fn deployment(dovecot: &Dovecot, user: User, sink: &SmtpSink, address: &str) -> Deployment {
    let deployment = Deployment::new();
    let password = deployment.path().join("imap-password");
    std::fs::write(&password, user.password).unwrap();
    deployment.write_channel(
        CHANNEL,
        &format!(
            "id = \"{CHANNEL}\"\nkind = \"email\"\n[imap]\nhost = \"127.0.0.1\"\nport = {}\n\
             tls = \"none\"\nusername = \"{}\"\npassword = {{ file = {:?} }}\n\
             command_timeout_secs = 10\nmax_backoff_secs = 1\n\
             [smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
             from = \"Support <{address}>\"\ntimeout_secs = 5\n",
            dovecot.imap_port(),
            user.login,
            password.display().to_string(),
            sink.port(),
        ),
    );
    deployment.write_rules(
        "support",
        &format!(
            "name = \"support\"\ntime_zone = \"UTC\"\ndefault_language = \"en\"\n\
             channels = [\"{CHANNEL}\"]\n[templates.received]\nen = \"{ACK}\"\n\
             [[rules]]\nname = \"acknowledge\"\nmatch.conversation = [\"new\", \"reopened\"]\n\
             actions.acknowledge = \"received\"\n"
        ),
    );
    deployment
}

/// Waits until the timeline topic holds the message entry of the email
/// with `message_id`. The relay appends a message's automated reply to the
/// outbound topic before its entries, so from then on the outbound topic
/// says whether one was sent.
fn wait_until_threaded(deployment: &Deployment, daemon: &Daemon, message_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let threaded = deployment
            .tail("timeline")
            .iter()
            .any(|record| record["value"]["message"]["event"]["providerMessageId"] == message_id);
        if threaded {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "<{message_id}> never reached the timeline; stderr:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn outbound(deployment: &Deployment) -> Vec<Value> {
    deployment.tail("outbound")
}

fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    raw.split("\r\n\r\n").next()?.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

#[test]
fn acknowledgements_never_answer_each_other_or_an_out_of_office_reply() {
    let dovecot = Dovecot::start();
    let (sink_a, sink_b) = (SmtpSink::start(), SmtpSink::start());
    let a = deployment(&dovecot, ALICE, &sink_a, "support@acme.example");
    let b = deployment(&dovecot, BOB, &sink_b, "help@other.example");
    let daemon_a = a.start();
    let daemon_b = b.start();

    // A customer writes to A: one acknowledgement, marked as automatic.
    dovecot.append(
        ALICE,
        "INBOX",
        b"From: Sara <sara@shop.example>\r\nTo: support@acme.example\r\n\
          Subject: Order 7781\r\nMessage-ID: <q1@shop.example>\r\n\
          Date: Sun, 06 Dec 2026 10:00:00 +0000\r\n\r\nWhere is my order?\r\n",
    );
    let sent = sink_a.wait_for(1, Duration::from_secs(60));
    let ack = String::from_utf8_lossy(&sent[0].data).into_owned();
    assert!(ack.contains(ACK), "{ack}");
    assert_eq!(
        header(&ack, "Auto-Submitted"),
        Some("auto-replied"),
        "{ack}"
    );
    assert_eq!(
        header(&ack, "In-Reply-To"),
        Some("<q1@shop.example>"),
        "{ack}"
    );
    let ack_id = header(&ack, "Message-ID")
        .expect("the acknowledgement has a Message-ID")
        .trim_matches(['<', '>'])
        .to_owned();

    // That acknowledgement lands in B's mailbox (B acknowledges every new
    // conversation too): B threads it and does not answer it.
    dovecot.append(BOB, "INBOX", &sent[0].data);
    wait_until_threaded(&b, &daemon_b, &ack_id);
    assert_eq!(
        outbound(&b),
        Vec::<Value>::new(),
        "B answered an automatic reply"
    );

    // The customer's out-of-office responder answers A's acknowledgement:
    // A threads it and does not answer it.
    let away = format!(
        "From: Sara <sara@shop.example>\r\nTo: support@acme.example\r\n\
         Subject: Automatic reply: Order 7781\r\nMessage-ID: <ooo1@shop.example>\r\n\
         In-Reply-To: <{ack_id}>\r\nAuto-Submitted: auto-replied\r\nX-Autoreply: yes\r\n\
         Date: Sun, 06 Dec 2026 10:01:00 +0000\r\n\r\nI am out of the office until Monday.\r\n"
    );
    dovecot.append(ALICE, "INBOX", away.as_bytes());
    wait_until_threaded(&a, &daemon_a, "ooo1@shop.example");
    assert_eq!(outbound(&a).len(), 1, "A answered the out-of-office reply");

    // A newsletter to the support address (bulk mail) opens a conversation
    // of its own and is not acknowledged either.
    dovecot.append(
        ALICE,
        "INBOX",
        b"From: News <news@shop.example>\r\nTo: support@acme.example\r\n\
          Subject: Our December deals\r\nMessage-ID: <news1@shop.example>\r\n\
          Precedence: bulk\r\nList-Unsubscribe: <mailto:unsub@shop.example>\r\n\
          Date: Sun, 06 Dec 2026 10:02:00 +0000\r\n\r\nDeals!\r\n",
    );
    wait_until_threaded(&a, &daemon_a, "news1@shop.example");
    assert_eq!(outbound(&a).len(), 1, "A answered bulk mail");
    assert_eq!(sink_a.received().len(), 1);

    // The control: B does acknowledge a person who writes to it, so its
    // silence above was loop safety, not rules that never fire.
    dovecot.append(
        BOB,
        "INBOX",
        b"From: Omid <omid@shop.example>\r\nTo: help@other.example\r\n\
          Subject: Hello\r\nMessage-ID: <h1@shop.example>\r\n\
          Date: Sun, 06 Dec 2026 10:03:00 +0000\r\n\r\nAre you open today?\r\n",
    );
    let sent = sink_b.wait_for(1, Duration::from_secs(60));
    assert_eq!(sent.len(), 1);
    assert!(String::from_utf8_lossy(&sent[0].data).contains(ACK));
}
