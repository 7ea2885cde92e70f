//! The SMTP half against a real SMTP server (omni-testkit's aiosmtpd sink):
//! what arrives, byte for byte, for a threaded reply and its attachments;
//! STARTTLS with a private CA and AUTH; and how failures are classified,
//! including against a scripted peer that answers with the 4xx and 5xx
//! replies a real relay gives, and unusable attachments.

use std::{collections::HashMap, sync::Arc};

use mail_parser::MimeHeaders;
use omni_connector::{
    AttachmentStore, DeliveryError, FsAttachmentStore, OutboundHandler, StoredAttachment,
    attachments::{AttachmentError, MemoryAttachmentStore},
};
use omni_email::smtp::{SmtpSender, SmtpSettings};
use omni_proto::v1::{
    Attachment, Content, ConversationEvent, Direction, EventKind, HandleKind, IdentityHandle,
    ThreadingHints,
};
use omni_testkit::{SMTP_LOGIN, SMTP_PASSWORD, SmtpSink};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

fn settings(text: &str) -> SmtpSettings {
    toml::from_str(text).expect("valid [smtp] settings")
}

fn plain_settings(port: u16) -> SmtpSettings {
    settings(&format!(
        "host = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         from = \"Acme Support <support@acme.example>\"\ntimeout_secs = 5\n"
    ))
}

fn reply(subject: &str) -> ConversationEvent {
    ConversationEvent {
        event_id: "5f0c2a1e-9b7d-5c3e-8a41-2d6f0e9b7c11".into(),
        channel_id: "support-mail".into(),
        direction: Direction::Outbound as i32,
        kind: EventKind::Message as i32,
        recipients: vec![IdentityHandle {
            kind: HandleKind::Email as i32,
            value: "sara@shop.example".into(),
            display_name: "سارا محمدی".into(),
            ..Default::default()
        }],
        content: Some(Content {
            subject: subject.into(),
            text: "Your order ships today.\n.\nA line with a lone dot above.".into(),
            ..Default::default()
        }),
        threading: Some(ThreadingHints {
            in_reply_to: vec!["order-2@shop.example".into()],
            references: vec!["order-1@shop.example".into(), "order-2@shop.example".into()],
            ..Default::default()
        }),
        provider_metadata: HashMap::from([("auto_acknowledgement".into(), "true".into())]),
        ..Default::default()
    }
}

/// Header fields of a raw message, unfolded, RFC 2047 left as is.
fn headers(raw: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8(raw.to_vec()).expect("7-bit message");
    let head = text.split("\r\n\r\n").next().unwrap().replace("\r\n ", " ");
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect()
}

async fn start_sink() -> SmtpSink {
    tokio::task::spawn_blocking(SmtpSink::start).await.unwrap()
}

#[tokio::test]
async fn a_reply_arrives_threaded_with_our_message_id() {
    let sink = start_sink().await;
    let sender = SmtpSender::new("support-mail", plain_settings(sink.port())).unwrap();
    let subject = "Re: Order 7781 — تحویل فردا";
    let delivered = sender.deliver(&reply(subject)).await.expect("delivered");
    assert_eq!(
        delivered.provider_message_id,
        "5f0c2a1e-9b7d-5c3e-8a41-2d6f0e9b7c11@acme.example"
    );
    assert!(
        delivered.provider_status.starts_with("250 "),
        "{}",
        delivered.provider_status
    );

    let received = sink.received();
    assert_eq!(received.len(), 1);
    let message = &received[0];
    assert_eq!(message.mail_from, "support@acme.example");
    assert_eq!(message.rcpt_to, ["sara@shop.example"]);
    assert!(!message.tls);
    assert_eq!(message.auth, None);

    let fields = headers(&message.data);
    assert_eq!(fields["from"], "\"Acme Support\" <support@acme.example>");
    assert_eq!(
        fields["message-id"],
        "<5f0c2a1e-9b7d-5c3e-8a41-2d6f0e9b7c11@acme.example>"
    );
    assert_eq!(fields["in-reply-to"], "<order-2@shop.example>");
    assert_eq!(
        fields["references"],
        "<order-1@shop.example> <order-2@shop.example>"
    );
    assert_eq!(fields["auto-submitted"], "auto-replied");
    assert_eq!(fields["x-auto-response-suppress"], "All");
    assert!(fields.contains_key("date"));
    assert!(fields["subject"].contains("=?utf-8?b?"), "{fields:?}");

    // What a mail client shows.
    let parsed = mail_parser::MessageParser::default()
        .parse(&message.data)
        .unwrap();
    assert_eq!(parsed.subject(), Some(subject));
    let to = parsed.to().unwrap().first().unwrap();
    assert_eq!(to.name(), Some("سارا محمدی"));
    assert_eq!(to.address(), Some("sara@shop.example"));
    let body = parsed.body_text(0).unwrap();
    assert!(
        body.contains("today.\r\n.\r\nA line with a lone dot above."),
        "dot-stuffing round-trips: {body:?}"
    );

    // A redelivery (after a crash) is recognisable: same Message-ID.
    let again = sender.deliver(&reply(subject)).await.unwrap();
    assert_eq!(again.provider_message_id, delivered.provider_message_id);
    let second = &sink.received()[1];
    assert_eq!(
        headers(&second.data)["message-id"],
        fields["message-id"],
        "the same event is sent with the same Message-ID"
    );
}

#[tokio::test]
async fn starttls_with_a_private_ca_and_auth() {
    let sink = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("smtp-password");
    std::fs::write(&password, format!("{SMTP_PASSWORD}\n")).unwrap();
    let with = |extra: &str| {
        settings(&format!(
            "host = \"localhost\"\nport = {}\ntls = \"starttls\"\n\
             from = \"support@acme.example\"\ntimeout_secs = 5\n\
             username = \"{SMTP_LOGIN}\"\n{extra}",
            sink.port()
        ))
    };
    let secret = format!(
        "password = {{ file = {:?} }}\n",
        password.display().to_string()
    );
    let ca = format!("ca_file = {:?}\n", sink.ca_pem_path().display().to_string());

    let sender = SmtpSender::new("support-mail", with(&format!("{secret}{ca}"))).unwrap();
    let delivered = sender.deliver(&reply("Re: Order 7781")).await.unwrap();
    assert!(delivered.provider_status.starts_with("250"));
    let received = sink.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].tls, "sent over STARTTLS");
    assert_eq!(received[0].auth.as_deref(), Some(SMTP_LOGIN));

    // Without the private CA the certificate is not trusted: nothing is
    // sent, and the failure is temporary (fix the config, it goes out).
    let untrusted = SmtpSender::new("support-mail", with(&secret)).unwrap();
    let error = untrusted
        .deliver(&reply("Re: Order 7781"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, DeliveryError::Temporary { .. }),
        "{error:?}"
    );

    // A wrong password is the operator's to fix, not the message's fault.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let wrong = format!(
        "password = {{ file = {:?} }}\n",
        wrong.display().to_string()
    );
    let refused = SmtpSender::new("support-mail", with(&format!("{wrong}{ca}"))).unwrap();
    match refused.deliver(&reply("Re: Order 7781")).await {
        Err(DeliveryError::Temporary { reason, .. }) => {
            assert!(reason.contains("credentials"), "{reason}")
        }
        other => panic!("expected a temporary failure, got {other:?}"),
    }
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn an_unreachable_relay_is_a_temporary_failure() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let sender = SmtpSender::new("support-mail", plain_settings(port)).unwrap();
    let error = sender.deliver(&reply("Re: hi")).await.unwrap_err();
    assert!(
        matches!(error, DeliveryError::Temporary { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_unsendable_message_is_rejected_before_connecting() {
    // Nothing listens here; a rejection proves no connection was tried.
    let sender = SmtpSender::new("support-mail", plain_settings(9)).unwrap();
    let error = sender
        .deliver(&reply("Hi\r\nBcc: everyone@victim.example"))
        .await
        .unwrap_err();
    assert!(matches!(error, DeliveryError::Rejected(_)), "{error:?}");
}

/// A relay that accepts the session and answers `RCPT TO` with `reply`.
async fn scripted_relay(rcpt_reply: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 relay.test ESMTP\r\n").await.ok();
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                    let answer = match verb.as_str() {
                        "EHLO" => "250-relay.test\r\n250 8BITMIME\r\n",
                        "MAIL" => "250 2.1.0 Ok\r\n",
                        "RCPT" => rcpt_reply,
                        "QUIT" => "221 2.0.0 Bye\r\n",
                        _ => "502 5.5.2 Error: command not recognized\r\n",
                    };
                    if write.write_all(answer.as_bytes()).await.is_err() || verb == "QUIT" {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn permanent_replies_reject_and_transient_ones_retry() {
    let port =
        scripted_relay("550 5.1.1 <sara@shop.example>: Recipient address rejected\r\n").await;
    let sender = SmtpSender::new("support-mail", plain_settings(port)).unwrap();
    match sender.deliver(&reply("Re: hi")).await {
        Err(DeliveryError::Rejected(reason)) => {
            assert!(reason.contains("550"), "{reason}");
            assert!(reason.contains("Recipient address rejected"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    let port = scripted_relay("451 4.3.0 Try again later\r\n").await;
    let sender = SmtpSender::new("support-mail", plain_settings(port)).unwrap();
    match sender.deliver(&reply("Re: hi")).await {
        Err(DeliveryError::Temporary { reason, .. }) => assert!(reason.contains("451"), "{reason}"),
        other => panic!("expected a temporary failure, got {other:?}"),
    }
}

#[test]
fn configuration_errors_name_their_key() {
    let cases = [
        (
            "host = \"smtp.acme.example\"\ntls = \"none\"\nfrom = \"a@acme.example\"",
            "smtp.tls",
        ),
        (
            "host = \"localhost\"\nfrom = \"a@acme.example\"\nca_file = \"/nonexistent/ca.pem\"",
            "smtp.ca_file",
        ),
        (
            "host = \"localhost\"\nfrom = \"a@acme.example\"\nusername = \"u\"\npassword = { env = \"OMNI_SURELY_UNSET_SMTP_PASSWORD\" }",
            "smtp.password",
        ),
        ("host = \"localhost\"\nfrom = \"nobody\"", "smtp.from"),
    ];
    for (text, key) in cases {
        let error = SmtpSender::new("support-mail", settings(text)).expect_err(text);
        assert_eq!(error.key, key, "{text}: {error}");
    }
}

/// An attachment store whose disk fails.
#[derive(Debug)]
struct BrokenStore;

#[async_trait::async_trait]
impl AttachmentStore for BrokenStore {
    async fn put(&self, _: bytes::Bytes) -> Result<StoredAttachment, AttachmentError> {
        unreachable!("replies only read")
    }

    async fn get(&self, sha256: &str) -> Result<Option<bytes::Bytes>, AttachmentError> {
        Err(AttachmentError {
            path: sha256.into(),
            source: std::io::Error::other("disk on fire"),
        })
    }
}

fn attached(mut event: ConversationEvent, attachments: Vec<Attachment>) -> ConversationEvent {
    event.content.as_mut().unwrap().attachments = attachments;
    event
}

fn attachment(name: &str, media_type: &str, stored: &StoredAttachment) -> Attachment {
    Attachment {
        name: name.into(),
        media_type: media_type.into(),
        size: stored.size,
        sha256: stored.sha256.clone(),
        uri: stored.uri.clone(),
    }
}

#[tokio::test]
async fn attachments_arrive_with_their_bytes() {
    let sink = start_sink().await;
    let store = Arc::new(MemoryAttachmentStore::default());
    let pdf: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let stored_pdf = store.put(pdf.clone().into()).await.unwrap();
    let stored_txt = store
        .put(bytes::Bytes::from_static(b"line one\r\n.\r\nline three\n"))
        .await
        .unwrap();
    let sender = SmtpSender::new("support-mail", plain_settings(sink.port()))
        .unwrap()
        .with_attachments(store);
    let event = attached(
        reply("Re: Order 7781"),
        vec![
            attachment("/var/tmp/Счёт 7781.pdf", "application/pdf", &stored_pdf),
            attachment("notes.txt", "", &stored_txt),
        ],
    );
    sender.deliver(&event).await.expect("delivered");

    let received = sink.received();
    assert_eq!(received.len(), 1);
    let parsed = mail_parser::MessageParser::default()
        .parse(&received[0].data)
        .unwrap();
    assert!(
        parsed
            .content_type()
            .is_some_and(|t| t.ctype() == "multipart" && t.subtype() == Some("mixed")),
        "{:?}",
        parsed.content_type()
    );
    assert!(
        parsed
            .body_text(0)
            .unwrap()
            .contains("A line with a lone dot above.")
    );
    let files: Vec<_> = parsed.attachments().collect();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].attachment_name(), Some("Счёт 7781.pdf"));
    assert_eq!(files[0].contents(), &pdf[..]);
    assert_eq!(
        files[0].content_type().unwrap().subtype(),
        Some("pdf"),
        "the given media type"
    );
    assert_eq!(files[1].attachment_name(), Some("notes.txt"));
    assert_eq!(files[1].contents(), b"line one\r\n.\r\nline three\n");
    assert_eq!(
        files[1].content_type().unwrap().subtype(),
        Some("octet-stream")
    );
}

#[tokio::test]
async fn unusable_attachments_fail_before_anything_is_sent() {
    let sink = start_sink().await;
    let store = Arc::new(MemoryAttachmentStore::default());
    let stored = store
        .put(bytes::Bytes::from(vec![1u8; 2048]))
        .await
        .unwrap();
    let mut small = plain_settings(sink.port());
    small.max_attachment_bytes = 3000;
    let sender = SmtpSender::new("support-mail", small)
        .unwrap()
        .with_attachments(store.clone());
    let rejected = |error: DeliveryError| match error {
        DeliveryError::Rejected(reason) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    };
    let file = attachment("a.bin", "", &stored);

    // Anything but a store reference is never fetched.
    let mut remote = file.clone();
    remote.uri = "http://169.254.169.254/latest/meta-data/".into();
    let error = sender
        .deliver(&attached(reply("x"), vec![remote]))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("never fetched"));

    // Not in the store.
    let mut missing = file.clone();
    missing.uri = format!("omni-att://sha256/{}", "ab".repeat(32));
    missing.sha256.clear();
    let error = sender
        .deliver(&attached(reply("x"), vec![missing]))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("not in the attachment store"));

    // A sha256 that names another file than the URI.
    let mut contradictory = file.clone();
    contradictory.sha256 = "cd".repeat(32);
    let error = sender
        .deliver(&attached(reply("x"), vec![contradictory]))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("does not match its uri"));

    // Over the size cap, declared or actual.
    let error = sender
        .deliver(&attached(reply("x"), vec![file.clone(), file.clone()]))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("over the limit of 3000"));
    let mut understated = file.clone();
    understated.size = 1;
    let error = sender
        .deliver(&attached(
            reply("x"),
            vec![understated.clone(), understated],
        ))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("4096 bytes, over the limit"));

    // A store file whose content does not hash to its name.
    let dir = tempfile::tempdir().unwrap();
    let digest = &stored.sha256;
    std::fs::create_dir_all(dir.path().join(&digest[..2])).unwrap();
    std::fs::write(dir.path().join(&digest[..2]).join(digest), b"tampered").unwrap();
    let tampered = SmtpSender::new("support-mail", plain_settings(sink.port()))
        .unwrap()
        .with_attachments(Arc::new(FsAttachmentStore::new(dir.path())));
    let error = tampered
        .deliver(&attached(reply("x"), vec![file.clone()]))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("does not match its sha256"));

    // Without a store (a sender built without one), attachments are refused.
    let bare = SmtpSender::new("support-mail", plain_settings(sink.port())).unwrap();
    let error = bare
        .deliver(&attached(reply("x"), vec![file.clone()]))
        .await
        .unwrap_err();
    assert!(rejected(error).contains("no attachment store"));

    // A store that cannot be read is the operator's to fix: retried.
    let broken = SmtpSender::new("support-mail", plain_settings(sink.port()))
        .unwrap()
        .with_attachments(Arc::new(BrokenStore));
    let error = broken
        .deliver(&attached(reply("x"), vec![file]))
        .await
        .unwrap_err();
    assert!(
        matches!(error, DeliveryError::Temporary { reason: ref r, .. } if r.contains("disk on fire")),
        "{error:?}"
    );

    assert!(sink.received().is_empty(), "nothing half-sent");
}
