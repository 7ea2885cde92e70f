//! The Dovecot harness against the real server.

mod common;

use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use common::{Conn, connect, handshake, tls_config};
use omni_testkit::{ALICE, BOB, Dovecot};

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: Customer <customer@example.com>\r\nTo: support@example.com\r\n\
         Subject: message {n}\r\nMessage-ID: <m{n}@example.com>\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

fn login(dovecot: &Dovecot) -> Conn<TcpStream> {
    let mut conn = Conn::new(connect(dovecot.imap_port()));
    assert!(conn.line().starts_with("* OK"));
    let reply = conn.imap("l", &format!("LOGIN {} {}", ALICE.login, ALICE.password));
    assert!(reply.last().unwrap().starts_with("l OK"), "{reply:?}");
    conn
}

#[test]
fn appends_and_counts_per_user_and_mailbox() {
    let dovecot = Dovecot::start();
    let uids: Vec<u32> = (1..=3)
        .map(|n| dovecot.append(ALICE, "INBOX", &message(n)))
        .collect();
    assert_eq!(uids, [1, 2, 3]);
    assert_eq!(dovecot.message_count(ALICE, "INBOX"), 3);
    assert_eq!(dovecot.uids(ALICE, "INBOX"), [1, 2, 3]);
    assert_eq!(dovecot.message_count(BOB, "INBOX"), 0);

    dovecot.create_mailbox(ALICE, "Archive");
    dovecot.create_mailbox(ALICE, "Archive");
    assert_eq!(dovecot.append(ALICE, "Archive", &message(9)), 1);
    assert_eq!(dovecot.message_count(ALICE, "Archive"), 1);

    // The messages come back byte for byte.
    let mut conn = login(&dovecot);
    conn.imap("s", "EXAMINE INBOX");
    let fetch = conn.imap("f", "UID FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]");
    assert!(fetch.iter().any(|l| l == "Subject: message 2"), "{fetch:?}");

    // The config is clean: nothing for Dovecot to complain about.
    let log = dovecot.log();
    assert!(!log.contains("Error") && !log.contains("Warning"), "{log}");
}

#[test]
fn append_many_builds_a_backlog_quickly() {
    let dovecot = Dovecot::start();
    dovecot.append(ALICE, "INBOX", &message(0));
    let backlog: Vec<Vec<u8>> = (1..=3000).map(message).collect();
    let started = Instant::now();
    let uids = dovecot.append_many(ALICE, "INBOX", &backlog);
    let took = started.elapsed();
    assert_eq!(uids, (2..=3001).collect::<Vec<u32>>());
    assert_eq!(dovecot.message_count(ALICE, "INBOX"), 3001);
    assert!(took < Duration::from_secs(30), "3000 appends took {took:?}");
    eprintln!("3000 appends took {took:?}");
}

#[test]
fn starttls_and_imaps_verify_against_the_generated_ca() {
    let dovecot = Dovecot::start();
    let config = tls_config(dovecot.ca_pem());
    assert_eq!(
        std::fs::read_to_string(dovecot.ca_pem_path()).unwrap(),
        dovecot.ca_pem()
    );

    // STARTTLS on the plain port, then a command over TLS.
    let mut plain = Conn::new(connect(dovecot.imap_port()));
    let greeting = plain.line();
    assert!(greeting.contains("STARTTLS"), "{greeting}");
    let reply = plain.imap("a", "STARTTLS");
    assert!(reply.last().unwrap().starts_with("a OK"), "{reply:?}");
    let tls = handshake(config.clone(), "localhost", plain.into_inner()).expect("STARTTLS");
    let mut tls = Conn::new(tls);
    let reply = tls.imap("b", &format!("LOGIN {} {}", ALICE.login, ALICE.password));
    assert!(reply.last().unwrap().starts_with("b OK"), "{reply:?}");

    // Implicit TLS, by name and by address.
    for name in ["localhost", "127.0.0.1"] {
        let tls = handshake(config.clone(), name, connect(dovecot.imaps_port()))
            .unwrap_or_else(|e| panic!("IMAPS as {name}: {e}"));
        let mut tls = Conn::new(tls);
        assert!(tls.line().starts_with("* OK"));
    }

    // Verification is real: without the CA the handshake fails.
    let untrusted = handshake(tls_config(""), "localhost", connect(dovecot.imaps_port()));
    assert!(untrusted.is_err(), "handshake without the CA succeeded");
}

#[test]
fn idle_clients_are_told_about_appends() {
    let dovecot = Dovecot::start();
    dovecot.append(ALICE, "INBOX", &message(1));
    let mut conn = login(&dovecot);
    conn.imap("s", "SELECT INBOX");
    conn.send("i IDLE");
    assert!(conn.line().starts_with('+'));
    let started = Instant::now();
    dovecot.append(ALICE, "INBOX", &message(2));
    while conn.line() != "* 2 EXISTS" {}
    // Dovecot batches change notifications for half a second.
    eprintln!("IDLE woke after {:?}", started.elapsed());
    conn.send("DONE");
    while !conn.line().starts_with("i OK") {}
}

#[test]
fn set_uid_validity_renumbers_and_select_reports_it() {
    let dovecot = Dovecot::start();
    for n in 1..=4 {
        dovecot.append(ALICE, "INBOX", &message(n));
    }
    // Expunge the first two, so the survivors have UIDs 3 and 4.
    let mut conn = login(&dovecot);
    conn.imap("s", "SELECT INBOX");
    conn.imap("d", "UID STORE 1:2 +FLAGS.SILENT (\\Deleted)");
    conn.imap("e", "EXPUNGE");
    assert_eq!(dovecot.uids(ALICE, "INBOX"), [3, 4]);
    let old = dovecot.uid_validity(ALICE, "INBOX");
    assert_ne!(old, 4242);

    dovecot.set_uid_validity(ALICE, "INBOX", 4242);

    // A client with the mailbox selected is thrown out.
    conn.send("n NOOP");
    let mut lines = Vec::new();
    while let Some(line) = conn.try_line() {
        lines.push(line);
    }
    assert!(lines.iter().any(|l| l.starts_with("* BYE")), "{lines:?}");

    // A new SELECT sees the new UIDVALIDITY and renumbered messages.
    let mut conn = login(&dovecot);
    let select = conn.imap("s", "SELECT INBOX");
    assert!(
        select.iter().any(|l| l.contains("[UIDVALIDITY 4242]")),
        "{select:?}"
    );
    assert!(select.iter().any(|l| l == "* 2 EXISTS"), "{select:?}");
    let fetch = conn.imap("f", "UID FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]");
    let subjects: Vec<&String> = fetch.iter().filter(|l| l.starts_with("Subject")).collect();
    assert_eq!(subjects, ["Subject: message 3", "Subject: message 4"]);
    assert!(fetch[0].contains("UID 1 "), "{fetch:?}");
    assert_eq!(dovecot.uids(ALICE, "INBOX"), [1, 2]);
    assert_eq!(dovecot.uid_validity(ALICE, "INBOX"), 4242);
    assert_eq!(dovecot.append(ALICE, "INBOX", &message(5)), 3);
}

#[test]
fn restart_keeps_ports_and_messages() {
    let mut dovecot = Dovecot::start();
    let (imap, imaps) = (dovecot.imap_port(), dovecot.imaps_port());
    dovecot.append_many(ALICE, "INBOX", &[message(1), message(2)]);
    let validity = dovecot.uid_validity(ALICE, "INBOX");
    let mut connected = login(&dovecot);

    dovecot.stop();
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, imap)).is_err());
    // The connected client's connection is closed, not left hanging.
    let _ = connected.try_send("n NOOP");
    let mut lines = Vec::new();
    while let Some(line) = connected.try_line() {
        lines.push(line);
        assert!(lines.len() < 5, "connection survived the stop: {lines:?}");
    }

    let started = Instant::now();
    dovecot.restart();
    eprintln!("restart took {:?}", started.elapsed());
    assert_eq!((dovecot.imap_port(), dovecot.imaps_port()), (imap, imaps));
    assert_eq!(dovecot.message_count(ALICE, "INBOX"), 2);
    assert_eq!(dovecot.uid_validity(ALICE, "INBOX"), validity);
    assert_eq!(dovecot.append(ALICE, "INBOX", &message(3)), 3);

    // restart() on a running server works too.
    dovecot.restart();
    assert_eq!(dovecot.message_count(ALICE, "INBOX"), 3);
}

/// Logs in over plain IMAP with `AUTHENTICATE <mechanism>` and an initial
/// response (SASL-IR); returns the tagged reply and the connection.
fn authenticate(dovecot: &Dovecot, mechanism: &str, response: &str) -> (String, Conn<TcpStream>) {
    use base64::Engine as _;
    let mut conn = Conn::new(connect(dovecot.imap_port()));
    let greeting = conn.line();
    assert!(
        greeting.contains(&format!("AUTH={mechanism}")),
        "{greeting}"
    );
    let response = base64::engine::general_purpose::STANDARD.encode(response);
    conn.send(&format!("a AUTHENTICATE {mechanism} {response}"));
    let mut line = conn.line();
    if line.starts_with("+ ") {
        // A refused token: the JSON error as a challenge (RFC 7628), to
        // be answered with an empty line before the tagged NO.
        conn.send("");
        line = conn.line();
    }
    (line, conn)
}

fn xoauth2(dovecot: &Dovecot, login: &str, token: &str) -> String {
    let response = format!("user={login}\x01auth=Bearer {token}\x01\x01");
    authenticate(dovecot, "XOAUTH2", &response).0
}

#[test]
fn oauth2_dovecot_accepts_its_tokens_and_refuses_others() {
    let dovecot = Dovecot::start_with_oauth2();
    dovecot.append(ALICE, "INBOX", &message(1));

    // XOAUTH2 and OAUTHBEARER with a fresh token log in as its user.
    let token = dovecot.oauth2_token(ALICE);
    let (reply, mut conn) = authenticate(
        &dovecot,
        "XOAUTH2",
        &format!("user={}\x01auth=Bearer {token}\x01\x01", ALICE.login),
    );
    assert!(reply.starts_with("a OK"), "{reply}\n{}", dovecot.log());
    let status = conn.imap("s", "STATUS INBOX (MESSAGES)");
    assert!(
        status.iter().any(|l| l.contains("(MESSAGES 1)")),
        "{status:?}"
    );
    let (reply, _) = authenticate(
        &dovecot,
        "OAUTHBEARER",
        &format!("n,a={},\x01auth=Bearer {token}\x01\x01", ALICE.login),
    );
    assert!(reply.starts_with("a OK"), "{reply}\n{}", dovecot.log());
    let bob = dovecot.oauth2_token(BOB);
    assert!(xoauth2(&dovecot, BOB.login, &bob).starts_with("a OK"));

    // Refused, each within Dovecot's 0.5 s failure batching: with the
    // auth penalty on, the second refusal alone would wait 2 s, the third
    // 4 s and so on.
    let other_server = Dovecot::start_with_oauth2();
    let (header, rest) = token.split_once('.').unwrap();
    let (_, signature) = rest.rsplit_once('.').unwrap();
    let bobs_claims = bob.split('.').nth(1).unwrap();
    let refused = [
        ("expired", ALICE.login, dovecot.expired_oauth2_token(ALICE)),
        (
            "another server's",
            ALICE.login,
            other_server.oauth2_token(ALICE),
        ),
        (
            "tampered (Bob's claims, Alice's signature)",
            BOB.login,
            format!("{header}.{bobs_claims}.{signature}"),
        ),
        ("another user's", BOB.login, token.clone()),
        ("a password as", ALICE.login, ALICE.password.to_owned()),
    ];
    let started = Instant::now();
    for (what, login, bad) in &refused {
        let reply = xoauth2(&dovecot, login, bad);
        assert!(
            reply.starts_with("a NO [AUTHENTICATIONFAILED]"),
            "{what} token for {login}: {reply}\n{}",
            dovecot.log()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "refusals took {:?}",
        started.elapsed()
    );
    let log = dovecot.log();
    for reason in [
        "Token has expired",
        "Incorrect JWT signature",
        "Username 'bob' did not match 'alice'",
        "Not a JWT token",
    ] {
        assert!(log.contains(reason), "{reason:?} not in\n{log}");
    }

    // Passwords still work with LOGIN, and a token is no password.
    login(&dovecot);
    assert_eq!(dovecot.message_count(BOB, "INBOX"), 0);
    let mut conn = Conn::new(connect(dovecot.imap_port()));
    conn.line();
    let reply = conn.imap("l", &format!("LOGIN {} {token}", ALICE.login));
    assert!(reply.last().unwrap().starts_with("l NO"), "{reply:?}");
}
