//! A visitor's `message` frame to a [`ConversationEvent`], and events back
//! to the widget's `history` entries. Pure: no I/O, no clock.
//!
//! The provider message id is `<visitor id>:<client_message_id>`, so the
//! event id (derived from it and the channel id) is the same for every
//! resend of one message, across reconnects and tabs: the log appends it
//! once and the `ack` names the same event each time.

use omni_connector::ParseError;
use omni_model::HandleKind;
use omni_proto::{
    Timestamp,
    v1::{
        Attachment, ChannelKind, Content, ConversationEvent, Direction, EventKind, ThreadingHints,
    },
};

use crate::{
    identity::{SenderIdentity, is_visitor_id},
    protocol::{HistoryAttachment, HistoryDirection, HistoryEntry, is_client_message_id},
};

/// Every [`ParseError::code`] [`message_event`] returns.
pub const CODES: [&str; 4] = [
    "invalid_visitor_id",
    "invalid_client_message_id",
    "empty_message",
    "invalid_sender",
];

/// What normalization needs besides the frame.
#[derive(Debug, Clone, Copy)]
pub struct ChatContext<'a> {
    pub channel_id: &'a str,
    /// When the frame reached us: `received_at`, `ingested_at` and (the
    /// browser's clock being nobody's to trust) `sent_at` of the event.
    pub received_at: Timestamp,
    /// The page's language from `hello` (its `locale`), empty when it sent
    /// none: the event's `language`, a hint for the customer-service
    /// rules.
    pub language: &'a str,
}

/// The provider message id of a visitor's message.
pub fn provider_message_id(visitor_id: &str, client_message_id: &str) -> String {
    format!("{visitor_id}:{client_message_id}")
}

/// The event id of a visitor's message, as [`message_event`] sets it: what
/// the `ack` names, computable before the event is built.
pub fn message_event_id(channel_id: &str, visitor_id: &str, client_message_id: &str) -> String {
    omni_model::event_id(
        channel_id,
        &provider_message_id(visitor_id, client_message_id),
    )
    .to_string()
}

/// The inbound event of one `message` frame from `visitor_id` (proved by
/// its token, so the `chat_visitor` sender is verified). `identity`, from
/// [`crate::identity::IdentityCheck::sender`], becomes the sender's other
/// identity, verified or not as its check said, and names the sender.
/// `attachments` are the visitor's uploads the frame named, already in the
/// attachment store, in the frame's order; with them the text may be
/// empty. They do not enter the event id: a resend is the same event.
///
/// The ids and the text's emptiness are checked again although
/// [`crate::protocol::parse_client_frame`] already did, so no caller can
/// build an event keyed on an unchecked id. The text's length is not: its
/// bound is the channel's [`crate::protocol::Limits::max_text_chars`],
/// which the frame parser enforced.
pub fn message_event(
    cx: &ChatContext<'_>,
    visitor_id: &str,
    identity: Option<&SenderIdentity>,
    client_message_id: &str,
    text: &str,
    attachments: Vec<Attachment>,
) -> Result<ConversationEvent, ParseError> {
    if !is_visitor_id(visitor_id) {
        return Err(ParseError::new(
            "invalid_visitor_id",
            "the visitor id is not one the channel issues",
        ));
    }
    if !is_client_message_id(client_message_id) {
        return Err(ParseError::new(
            "invalid_client_message_id",
            "`client_message_id` must be 1 to 64 of A-Z, a-z, 0-9, `_` and `-`",
        ));
    }
    if text.trim().is_empty() && attachments.is_empty() {
        return Err(ParseError::new(
            "empty_message",
            "the message has no text and no attachment",
        ));
    }
    let visitor =
        omni_model::Handle::provider(HandleKind::ChatVisitor, visitor_id, Some(cx.channel_id))
            .map_err(|e| ParseError::new("invalid_sender", format!("the visitor handle: {e}")))?;
    let name = identity.and_then(|i| i.name.as_deref()).unwrap_or_default();
    let provider_message_id = provider_message_id(visitor_id, client_message_id);
    Ok(ConversationEvent {
        event_id: omni_model::event_id(cx.channel_id, &provider_message_id).to_string(),
        channel_id: cx.channel_id.to_owned(),
        channel_kind: ChannelKind::Chat as i32,
        direction: Direction::Inbound as i32,
        kind: EventKind::Message as i32,
        sender: Some(omni_connector::handle::to_proto(&visitor, name, true)),
        sender_identities: identity
            .map(|i| omni_connector::handle::to_proto(&i.handle, name, i.verified))
            .into_iter()
            .collect(),
        provider_message_id,
        sent_at: Some(cx.received_at),
        received_at: Some(cx.received_at),
        ingested_at: Some(cx.received_at),
        content: Some(Content {
            text: text.to_owned(),
            attachments,
            ..Default::default()
        }),
        threading: Some(ThreadingHints {
            provider_chat_id: visitor_id.to_owned(),
            ..Default::default()
        }),
        language: cx.language.to_owned(),
        ..Default::default()
    })
}

/// An activity of the visitor (`typing`, `read`): not a message, so it
/// never opens a conversation. Its id is random: two "typing" moments are
/// two events, and a lost one is not resent.
pub fn activity_event(
    cx: &ChatContext<'_>,
    visitor_id: &str,
    name: &str,
    attributes: Vec<(&str, String)>,
) -> Result<ConversationEvent, ParseError> {
    let visitor =
        omni_model::Handle::provider(HandleKind::ChatVisitor, visitor_id, Some(cx.channel_id))
            .map_err(|e| ParseError::new("invalid_sender", format!("the visitor handle: {e}")))?;
    let nonce: u128 = rand::random();
    let provider_message_id = format!("{visitor_id}:{name}:{nonce:032x}");
    Ok(ConversationEvent {
        event_id: omni_model::event_id(cx.channel_id, &provider_message_id).to_string(),
        channel_id: cx.channel_id.to_owned(),
        channel_kind: ChannelKind::Chat as i32,
        direction: Direction::Inbound as i32,
        kind: EventKind::Activity as i32,
        sender: Some(omni_connector::handle::to_proto(&visitor, "", true)),
        provider_message_id,
        received_at: Some(cx.received_at),
        ingested_at: Some(cx.received_at),
        threading: Some(ThreadingHints {
            provider_chat_id: visitor_id.to_owned(),
            ..Default::default()
        }),
        activity: Some(omni_proto::v1::Activity {
            name: name.to_owned(),
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }),
        ..Default::default()
    })
}

/// The `history` entry of a stored event of the conversation: a visitor's
/// message (with its `client_message_id`, read back from the provider
/// message id) or an agent's reply, with its files' names, types and
/// sizes. `None` for anything else (typing, delivery statuses, events with
/// neither text nor files), which the widget does not show.
pub fn history_entry(event: &ConversationEvent) -> Option<HistoryEntry> {
    if event.kind != EventKind::Message as i32 {
        return None;
    }
    let content = event.content.as_ref()?;
    if content.text.is_empty() && content.attachments.is_empty() {
        return None;
    }
    let (direction, client_message_id) = match Direction::try_from(event.direction).ok()? {
        Direction::Inbound => (
            HistoryDirection::Inbound,
            event
                .provider_message_id
                .split_once(':')
                .map(|(_, id)| id)
                .filter(|id| is_client_message_id(id))
                .map(str::to_owned),
        ),
        Direction::Outbound => (HistoryDirection::Outbound, None),
        _ => return None,
    };
    Some(HistoryEntry {
        event_id: event.event_id.clone(),
        direction,
        text: content.text.clone(),
        sent_at: event.sent_at.or(event.received_at).unwrap_or_default(),
        client_message_id,
        attachments: content
            .attachments
            .iter()
            .map(|a| HistoryAttachment {
                name: a.name.clone(),
                media_type: a.media_type.clone(),
                size: a.size,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use omni_model::Handle;
    use omni_proto::v1::HandleKind as ProtoKind;

    use super::*;
    use crate::identity::{
        ClaimedIdentity, IdentityKind, check_identity, identity_hash, new_visitor_id,
    };

    const VISITOR: &str = "v_0123456789ABCDEFGHIJab";

    fn cx() -> ChatContext<'static> {
        ChatContext {
            channel_id: "chat-main",
            received_at: Timestamp {
                seconds: 1_738_315_800,
                nanos: 5,
            },
            language: "",
        }
    }

    #[test]
    fn the_page_language_is_the_event_language() {
        let event = message_event(
            &ChatContext {
                language: "fa-IR",
                ..cx()
            },
            VISITOR,
            None,
            "m1",
            "سلام",
            Vec::new(),
        )
        .unwrap();
        assert_eq!(event.language, "fa-IR");
        let event = message_event(&cx(), VISITOR, None, "m1", "hello", Vec::new()).unwrap();
        assert_eq!(event.language, "", "no locale in hello, no language");
    }

    #[test]
    fn an_anonymous_message() {
        let event = message_event(&cx(), VISITOR, None, "m1", "hello", Vec::new()).unwrap();
        assert_eq!(event.channel_id, "chat-main");
        assert_eq!(event.channel_kind, ChannelKind::Chat as i32);
        assert_eq!(event.direction, Direction::Inbound as i32);
        assert_eq!(event.kind, EventKind::Message as i32);
        assert_eq!(event.provider_message_id, format!("{VISITOR}:m1"));
        assert_eq!(
            event.event_id,
            omni_model::event_id("chat-main", &format!("{VISITOR}:m1")).to_string()
        );
        assert_eq!(event.event_id, message_event_id("chat-main", VISITOR, "m1"));
        let sender = event.sender.as_ref().unwrap();
        assert_eq!(sender.kind, ProtoKind::ChatVisitor as i32);
        assert_eq!(sender.value, VISITOR);
        assert_eq!(sender.scope, "chat-main");
        assert!(sender.verified);
        assert_eq!(sender.display_name, "");
        assert!(event.sender_identities.is_empty());
        assert_eq!(event.threading.as_ref().unwrap().provider_chat_id, VISITOR);
        assert_eq!(event.content.as_ref().unwrap().text, "hello");
        for at in [event.sent_at, event.received_at, event.ingested_at] {
            assert_eq!(at, Some(cx().received_at));
        }
    }

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let a = message_event(&cx(), VISITOR, None, "m1", "hello", Vec::new()).unwrap();
        // A resend, even with other text, is the same event.
        let again = message_event(&cx(), VISITOR, None, "m1", "hello!", Vec::new()).unwrap();
        assert_eq!(a.event_id, again.event_id);
        let other_id = message_event(&cx(), VISITOR, None, "m2", "hello", Vec::new()).unwrap();
        let other_visitor = message_event(
            &cx(),
            "v_0123456789ABCDEFGHIJac",
            None,
            "m1",
            "hello",
            Vec::new(),
        )
        .unwrap();
        let other_channel = message_event(
            &ChatContext {
                channel_id: "chat-b",
                ..cx()
            },
            VISITOR,
            None,
            "m1",
            "hello",
            Vec::new(),
        )
        .unwrap();
        let ids = [
            &a.event_id,
            &other_id.event_id,
            &other_visitor.event_id,
            &other_channel.event_id,
        ];
        for (i, x) in ids.iter().enumerate() {
            for y in &ids[i + 1..] {
                assert_ne!(x, y);
            }
        }
        // Pinned, so a change of the derivation cannot pass unnoticed:
        // uuid5(d6418134-c9bf-4075-b3ea-05e51e007fec, "chat-main\0v_…:m1").
        assert_eq!(
            a.event_id,
            omni_model::event_id("chat-main", "v_0123456789ABCDEFGHIJab:m1").to_string()
        );
    }

    #[test]
    fn a_verified_identity_joins_the_sender() {
        let claimed = ClaimedIdentity {
            kind: IdentityKind::Email,
            value: "Ana@Example.com".into(),
            name: Some("آنا رضایی".into()),
            hash: Some(identity_hash(b"k", IdentityKind::Email, "Ana@Example.com")),
        };
        let check = check_identity(Some(b"k"), &claimed, true, "chat-main");
        let identity = check.sender(Some(&claimed)).unwrap();
        let event =
            message_event(&cx(), VISITOR, Some(&identity), "m1", "سلام", Vec::new()).unwrap();
        let sender = event.sender.as_ref().unwrap();
        assert_eq!(sender.display_name, "آنا رضایی");
        assert!(sender.verified);
        let [other] = event.sender_identities.as_slice() else {
            panic!("{:?}", event.sender_identities)
        };
        assert_eq!(other.kind, ProtoKind::Email as i32);
        assert_eq!(other.value, "ana@example.com");
        assert_eq!(other.scope, "");
        assert!(other.verified);
        assert_eq!(other.display_name, "آنا رضایی");
    }

    #[test]
    fn an_unverified_identity_is_kept_as_a_claim() {
        let identity = SenderIdentity {
            handle: Handle::phone("+989121234567", None).unwrap(),
            verified: false,
            name: None,
        };
        let event = message_event(&cx(), VISITOR, Some(&identity), "m1", "hi", Vec::new()).unwrap();
        assert!(event.sender.as_ref().unwrap().verified);
        let [other] = event.sender_identities.as_slice() else {
            panic!()
        };
        assert_eq!(other.kind, ProtoKind::Phone as i32);
        assert!(!other.verified);
    }

    #[test]
    fn persian_and_arabic_text_is_kept_byte_for_byte() {
        for text in [
            "سلام، وقت بخیر. سفارش ۱۲۳۴ کی می‌رسد؟",
            "مرحبًا، أين طلبي رقم ٤٥٦؟",
            "  \u{202b}mixed עברית and English\u{202c}\n",
        ] {
            let event = message_event(&cx(), VISITOR, None, "m1", text, Vec::new()).unwrap();
            assert_eq!(event.content.unwrap().text, text);
        }
    }

    #[test]
    fn refuses_what_the_frame_parser_would() {
        for (visitor, id, text, code) in [
            ("visitor", "m1", "hi", "invalid_visitor_id"),
            ("", "m1", "hi", "invalid_visitor_id"),
            (VISITOR, "", "hi", "invalid_client_message_id"),
            (VISITOR, "a:b", "hi", "invalid_client_message_id"),
            (VISITOR, "m1", "", "empty_message"),
            (VISITOR, "m1", " \n", "empty_message"),
        ] {
            let error = message_event(&cx(), visitor, None, id, text, Vec::new()).unwrap_err();
            assert_eq!(error.code, code, "{visitor:?} {id:?} {text:?}");
            assert!(CODES.contains(&error.code));
        }
        // The length bound is the channel's, enforced by the frame parser.
        let long = "a".repeat(10_000);
        assert!(message_event(&cx(), VISITOR, None, "m1", &long, Vec::new()).is_ok());
        let error = message_event(
            &ChatContext {
                channel_id: "",
                ..cx()
            },
            VISITOR,
            None,
            "m1",
            "hi",
            Vec::new(),
        )
        .unwrap_err();
        assert_eq!(error.code, "invalid_sender");
    }

    #[test]
    fn history_entries_of_messages_and_replies() {
        let visitor = new_visitor_id(&mut rand::rng());
        let inbound = message_event(&cx(), &visitor, None, "m-7", "hi", Vec::new()).unwrap();
        assert_eq!(
            history_entry(&inbound),
            Some(HistoryEntry {
                event_id: inbound.event_id.clone(),
                direction: HistoryDirection::Inbound,
                text: "hi".into(),
                sent_at: cx().received_at,
                client_message_id: Some("m-7".into()),
                attachments: Vec::new(),
            })
        );
        let reply = ConversationEvent {
            event_id: "r1".into(),
            direction: Direction::Outbound as i32,
            kind: EventKind::Message as i32,
            content: Some(Content {
                text: "how can we help?".into(),
                ..Default::default()
            }),
            received_at: Some(Timestamp {
                seconds: 9,
                nanos: 0,
            }),
            ..Default::default()
        };
        let entry = history_entry(&reply).unwrap();
        assert_eq!(entry.direction, HistoryDirection::Outbound);
        assert_eq!(entry.client_message_id, None);
        assert_eq!(entry.sent_at.seconds, 9);

        let typing = ConversationEvent {
            kind: EventKind::Activity as i32,
            ..reply.clone()
        };
        assert_eq!(history_entry(&typing), None);
        let empty = ConversationEvent {
            content: None,
            ..reply.clone()
        };
        assert_eq!(history_entry(&empty), None);
        let unknown_direction = ConversationEvent {
            direction: 99,
            ..reply
        };
        assert_eq!(history_entry(&unknown_direction), None);
    }

    fn photo(sha: &str, name: &str) -> Attachment {
        Attachment {
            name: name.into(),
            media_type: "image/png".into(),
            size: 1234,
            sha256: sha.into(),
            uri: format!("{}{sha}", omni_connector::attachments::URI_PREFIX),
        }
    }

    #[test]
    fn attachments_ride_on_the_message_and_not_in_its_id() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let files = vec![photo(&b, "second.png"), photo(&a, "first.png")];
        let event = message_event(&cx(), VISITOR, None, "m1", "", files.clone()).unwrap();
        let content = event.content.as_ref().unwrap();
        assert_eq!(content.text, "");
        assert_eq!(content.attachments, files, "kept in the frame's order");
        // A resend, or the same id with other files, is the same event.
        let plain = message_event(&cx(), VISITOR, None, "m1", "hi", Vec::new()).unwrap();
        assert_eq!(event.event_id, plain.event_id);
        // Whitespace only is still empty without a file, a caption with one.
        assert_eq!(
            message_event(&cx(), VISITOR, None, "m1", " ", Vec::new())
                .unwrap_err()
                .code,
            "empty_message"
        );
        assert!(message_event(&cx(), VISITOR, None, "m1", " ", files).is_ok());
    }

    #[test]
    fn history_entries_carry_file_chips_without_uris() {
        let sha = "c".repeat(64);
        let event =
            message_event(&cx(), VISITOR, None, "m1", "", vec![photo(&sha, "p.png")]).unwrap();
        let entry = history_entry(&event).expect("a file without text is shown");
        assert_eq!(entry.text, "");
        assert_eq!(
            entry.attachments,
            [HistoryAttachment {
                name: "p.png".into(),
                media_type: "image/png".into(),
                size: 1234,
            }]
        );
        let json = serde_json::to_string(&entry).unwrap();
        assert!(!json.contains("omni-att") && !json.contains(&sha), "{json}");
        // Without files the field is left out, as before.
        let plain = message_event(&cx(), VISITOR, None, "m2", "hi", Vec::new()).unwrap();
        let json = serde_json::to_string(&history_entry(&plain).unwrap()).unwrap();
        assert!(!json.contains("attachments"), "{json}");
    }
}
