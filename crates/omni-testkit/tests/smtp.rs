//! The SMTP sink against real SMTP dialogues.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{Conn, connect, handshake, tls_config};
use omni_testkit::{SMTP_LOGIN, SMTP_PASSWORD, SmtpSink};

/// Sends one message in an open session (after EHLO).
fn send_mail<S: Read + Write>(conn: &mut Conn<S>, from: &str, to: &[&str], body: &str) {
    conn.send(&format!("MAIL FROM:<{from}>"));
    assert!(conn.smtp_reply().starts_with("250"));
    for rcpt in to {
        conn.send(&format!("RCPT TO:<{rcpt}>"));
        assert!(conn.smtp_reply().starts_with("250"));
    }
    conn.send("DATA");
    assert!(conn.smtp_reply().starts_with("354"));
    conn.send(&format!("{body}\r\n."));
    let reply = conn.smtp_reply();
    assert!(reply.starts_with("250"), "{reply}");
}

#[test]
fn receives_a_message_over_a_raw_smtp_dialogue() {
    let sink = SmtpSink::start();
    let mut conn = Conn::new(connect(sink.port()));
    assert!(conn.line().starts_with("220"));
    conn.send("EHLO client.example");
    assert!(conn.smtp_reply().starts_with("250"));
    let body = "From: support@example.com\r\nTo: a@example.com\r\nSubject: Re: help\r\n\r\n\
                first line\r\n..leading dot\r\nlast line";
    send_mail(
        &mut conn,
        "support@example.com",
        &["a@example.com", "b@example.com"],
        body,
    );
    send_mail(
        &mut conn,
        "",
        &["c@example.com"],
        "Subject: second\r\n\r\nx",
    );
    conn.send("QUIT");
    assert!(conn.smtp_reply().starts_with("221"));

    let received = sink.wait_for(2, Duration::from_secs(10));
    assert_eq!(received.len(), 2);
    let first = &received[0];
    assert_eq!(first.mail_from, "support@example.com");
    assert_eq!(first.rcpt_to, ["a@example.com", "b@example.com"]);
    assert_eq!(first.auth, None);
    assert!(!first.tls);
    // Dot-unstuffed, CRLF kept.
    assert_eq!(
        String::from_utf8(first.data.clone()).unwrap(),
        body.replace("\r\n..", "\r\n.") + "\r\n"
    );
    assert_eq!(received[1].mail_from, "");
    assert_eq!(sink.messages()[1], b"Subject: second\r\n\r\nx\r\n");
}

#[test]
fn starttls_and_auth_are_recorded() {
    let sink = SmtpSink::start();
    let mut plain = Conn::new(connect(sink.port()));
    assert!(plain.line().starts_with("220"));
    plain.send("EHLO client.example");
    assert!(plain.smtp_reply().starts_with("250"));
    plain.send("STARTTLS");
    assert!(plain.smtp_reply().starts_with("220"));
    let tls = handshake(tls_config(sink.ca_pem()), "localhost", plain.into_inner())
        .expect("STARTTLS handshake");
    let mut conn = Conn::new(tls);
    conn.send("EHLO client.example");
    assert!(conn.smtp_reply().starts_with("250"));

    let wrong = BASE64.encode(format!("\0{SMTP_LOGIN}\0nope").as_bytes());
    conn.send(&format!("AUTH PLAIN {wrong}"));
    assert!(conn.smtp_reply().starts_with("535"));
    let right = BASE64.encode(format!("\0{SMTP_LOGIN}\0{SMTP_PASSWORD}").as_bytes());
    conn.send(&format!("AUTH PLAIN {right}"));
    let reply = conn.smtp_reply();
    assert!(reply.starts_with("235"), "{reply}");

    send_mail(
        &mut conn,
        "support@example.com",
        &["a@example.com"],
        "Subject: s\r\n\r\nhi",
    );
    let received = sink.wait_for(1, Duration::from_secs(10));
    assert!(received[0].tls);
    assert_eq!(received[0].auth.as_deref(), Some(SMTP_LOGIN));
}
