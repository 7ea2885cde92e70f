//! Updates to events: pure functions over the Bot API's types, unit tested
//! on recorded payloads. Files are only named here: each becomes an
//! attachment whose `uri` is its `file_id` ([`FILE_ID_URI_PREFIX`]), and a
//! [`MediaRef`] the media worker downloads once the message is durable.
//!
//! What Omnid does with each update kind:
//!
//! - `message` and `edited_message` with content a person sent become
//!   events. Every other message update is dead-lettered, never dropped:
//!   a message the Bot API types cannot read (a field of the wrong type, a
//!   content kind newer than the types), a service message (members joining
//!   or leaving, a pin, a title change) and a business account's message.
//! - Update kinds that are not messages, or not a conversation with a
//!   customer, are deliberately not ingested: they are acknowledged, logged
//!   and counted ([`Outcome::Ignored`]). Those are channel posts (the
//!   channel's own broadcasts), business connections and deleted business
//!   messages, reactions, inline queries and chosen inline results,
//!   callback queries, shipping and pre-checkout queries, paid media
//!   purchases, polls and poll answers, chat member and join request
//!   changes, chat boosts, and kinds newer than the Bot API types that
//!   carry no `message`.

use std::collections::HashMap;

use omni_connector::{Inbound, MediaRef, ParseError};
use omni_model::{Handle, HandleKind};
use omni_proto::{
    Timestamp,
    v1::{
        Attachment, ChannelKind, Content, ConversationEvent, Direction, EventKind, ThreadingHints,
    },
};
use teloxide_core::types::{FileMeta, MediaKind, Message, MessageKind, Update, UpdateKind, User};

/// The URI of a file still on Telegram's servers: `tg-file:<file_id>`,
/// usable with `getFile` by the same bot. Every attachment of an ingested
/// message starts with it; once the media worker has stored the file, an
/// update names the stored copy. A file never downloaded (over
/// `max_file_bytes`, or refused by the Bot API) keeps it.
pub const FILE_ID_URI_PREFIX: &str = "tg-file:";

/// A file a message carries, still on Telegram's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub file_id: String,
    /// Size as Telegram announced it (0 when unknown).
    pub size: u64,
    pub name: String,
    pub media_type: String,
}

impl FileRef {
    fn of(meta: &FileMeta, name: Option<&str>, media_type: String) -> Self {
        Self {
            file_id: meta.id.0.clone(),
            size: u64::from(meta.size),
            name: name.unwrap_or_default().to_owned(),
            media_type,
        }
    }

    /// The attachment that stands for the file until it is stored.
    fn attachment(&self) -> Attachment {
        Attachment {
            name: self.name.clone(),
            media_type: self.media_type.clone(),
            size: self.size,
            sha256: String::new(),
            uri: format!("{FILE_ID_URI_PREFIX}{}", self.file_id),
        }
    }
}

/// A normalized message and the files it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// The event; `content.attachments[i]` stands for `files[i]`.
    pub event: ConversationEvent,
    pub files: Vec<FileRef>,
}

impl Normalized {
    /// The message for the log, with a download owed for each file (the
    /// fetcher enforces the size limit, with the size `getFile` reports).
    pub fn into_inbound(self) -> Inbound {
        let media = self
            .files
            .iter()
            .zip(0u32..)
            .map(|(file, attachment)| MediaRef {
                attachment,
                source: file.file_id.clone(),
            })
            .collect();
        Inbound::new(self.event).with_media(media)
    }
}

/// What an update becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A message or an edit.
    Event(Box<Normalized>),
    /// Authentic, but a message update Omnid cannot normalize, or not an
    /// update at all: dead-letter it.
    Invalid(ParseError),
    /// An update kind Omnid deliberately does not ingest (listed in the
    /// module's documentation): acknowledged, logged and counted. The
    /// label is bounded (a metric label).
    Ignored(&'static str),
}

/// The provider message id of a Telegram message: `chat_id:message_id`
/// (message ids are only unique within a chat).
pub fn provider_message_id(chat_id: i64, message_id: i32) -> String {
    format!("{chat_id}:{message_id}")
}

/// The event id of an edit: one per version, so each edit is its own event
/// and a redelivered edit has the same id.
pub fn edit_event_id(channel_id: &str, chat_id: i64, message_id: i32, edit_date: i64) -> String {
    omni_model::event_id(
        channel_id,
        &format!(
            "{}:edit:{edit_date}",
            provider_message_id(chat_id, message_id)
        ),
    )
    .to_string()
}

/// Normalizes one update. `raw` is the update as JSON, consulted only when
/// the Bot API types could not read it. (Parse updates from bytes, not from
/// a `serde_json::Value`: teloxide's untagged message kinds only match when
/// read from text.)
pub fn normalize_update(
    update: &Update,
    raw: Option<&serde_json::Value>,
    channel_id: &str,
    received_at: Timestamp,
) -> Outcome {
    match &update.kind {
        UpdateKind::Message(message) => {
            normalize_message(message, update.id.0, false, channel_id, received_at)
        }
        UpdateKind::EditedMessage(message) => {
            normalize_message(message, update.id.0, true, channel_id, received_at)
        }
        UpdateKind::BusinessMessage(_) | UpdateKind::EditedBusinessMessage(_) => {
            Outcome::Invalid(ParseError::new(
                "unsupported_message",
                "messages of business accounts are not ingested",
            ))
        }
        UpdateKind::Error(value) => {
            let value = match value {
                serde_json::Value::Object(map) if !map.is_empty() => value,
                _ => raw.unwrap_or(value),
            };
            unreadable(value)
        }
        UpdateKind::ChannelPost(_)
        | UpdateKind::EditedChannelPost(_)
        | UpdateKind::BusinessConnection(_)
        | UpdateKind::DeletedBusinessMessages(_)
        | UpdateKind::MessageReaction(_)
        | UpdateKind::MessageReactionCount(_)
        | UpdateKind::InlineQuery(_)
        | UpdateKind::ChosenInlineResult(_)
        | UpdateKind::CallbackQuery(_)
        | UpdateKind::ShippingQuery(_)
        | UpdateKind::PreCheckoutQuery(_)
        | UpdateKind::PurchasedPaidMedia(_)
        | UpdateKind::Poll(_)
        | UpdateKind::PollAnswer(_)
        | UpdateKind::MyChatMember(_)
        | UpdateKind::ChatMember(_)
        | UpdateKind::ChatJoinRequest(_)
        | UpdateKind::ChatBoost(_)
        | UpdateKind::RemovedChatBoost(_) => Outcome::Ignored("unsupported_update"),
    }
}

/// An update the Bot API types could not read: one that carries a message
/// is dead-lettered; an update kind newer than the types is ignored.
fn unreadable(value: &serde_json::Value) -> Outcome {
    let Some(map) = value.as_object() else {
        return Outcome::Invalid(ParseError::new(
            "invalid_update",
            "update is not a JSON object",
        ));
    };
    for key in [
        "message",
        "edited_message",
        "business_message",
        "edited_business_message",
    ] {
        if map.contains_key(key) {
            return Outcome::Invalid(ParseError::new(
                "invalid_message",
                format!("`{key}` does not match the Bot API's Message type"),
            ));
        }
    }
    Outcome::Ignored("unknown_update")
}

fn normalize_message(
    message: &Message,
    update_id: u32,
    edited: bool,
    channel_id: &str,
    received_at: Timestamp,
) -> Outcome {
    let common = match &message.kind {
        MessageKind::Common(common) => common,
        // What the types fall back to when nothing else matched: a field
        // of the wrong type (`"text": 123`), or content newer than them.
        MessageKind::Empty {} => {
            return Outcome::Invalid(ParseError::new(
                "unreadable_message",
                "the message has no content the Bot API types can read",
            ));
        }
        // Service messages (members joining, a pin, a title change, a
        // payment, a dice) say nothing a customer wrote: counted and
        // logged, not dead-lettered, or every join in a group chat would
        // fill the dead-letter topic.
        _ => return Outcome::Ignored("service_message"),
    };
    let Some(from) = message.from.as_ref() else {
        return Outcome::Invalid(ParseError::new(
            "missing_sender",
            "message has no `from` user",
        ));
    };
    let sender = match sender_handle(from) {
        Ok(sender) => sender,
        Err(error) => return Outcome::Invalid(error),
    };
    let chat_id = message.chat.id.0;
    let message_id = message.id.0;
    let pmid = provider_message_id(chat_id, message_id);
    let original_event_id = omni_model::event_id(channel_id, &pmid).to_string();

    let mut metadata: HashMap<String, String> = HashMap::new();
    metadata.insert("update_id".into(), update_id.to_string());
    metadata.insert("chat_type".into(), chat_type(message).into());
    if let Some(username) = &from.username {
        metadata.insert("username".into(), username.clone());
    }
    if let Some(thread) = message.thread_id {
        metadata.insert("message_thread_id".into(), thread.0.0.to_string());
    }

    let mut text = String::new();
    let mut files = Vec::new();
    let mut sender_identities = Vec::new();
    let kind = match &common.media_kind {
        MediaKind::Text(m) => {
            text.clone_from(&m.text);
            "text"
        }
        MediaKind::Photo(m) => {
            text = m.caption.clone().unwrap_or_default();
            // Telegram lists the sizes smallest first; keep the largest.
            if let Some(photo) = m
                .photo
                .iter()
                .max_by_key(|p| (u64::from(p.width) * u64::from(p.height), p.file.size))
            {
                files.push(FileRef::of(&photo.file, None, "image/jpeg".into()));
            }
            "photo"
        }
        MediaKind::Document(m) => {
            text = m.caption.clone().unwrap_or_default();
            let d = &m.document;
            files.push(FileRef::of(
                &d.file,
                d.file_name.as_deref(),
                mime(d.mime_type.as_ref(), "application/octet-stream"),
            ));
            "document"
        }
        MediaKind::Voice(m) => {
            text = m.caption.clone().unwrap_or_default();
            let v = &m.voice;
            files.push(FileRef::of(
                &v.file,
                None,
                mime(v.mime_type.as_ref(), "audio/ogg"),
            ));
            "voice"
        }
        MediaKind::Video(m) => {
            text = m.caption.clone().unwrap_or_default();
            let v = &m.video;
            files.push(FileRef::of(
                &v.file,
                v.file_name.as_deref(),
                mime(v.mime_type.as_ref(), "video/mp4"),
            ));
            "video"
        }
        MediaKind::Audio(m) => {
            text = m.caption.clone().unwrap_or_default();
            let a = &m.audio;
            files.push(FileRef::of(
                &a.file,
                a.file_name.as_deref(),
                mime(a.mime_type.as_ref(), "audio/mpeg"),
            ));
            "audio"
        }
        MediaKind::Animation(m) => {
            text = m.caption.clone().unwrap_or_default();
            let a = &m.animation;
            files.push(FileRef::of(
                &a.file,
                a.file_name.as_deref(),
                mime(a.mime_type.as_ref(), "video/mp4"),
            ));
            "animation"
        }
        MediaKind::VideoNote(m) => {
            files.push(FileRef::of(&m.video_note.file, None, "video/mp4".into()));
            "video_note"
        }
        MediaKind::Sticker(m) => {
            let s = &m.sticker;
            let media_type = if s.is_video() {
                "video/webm"
            } else if s.is_animated() {
                "application/x-tgsticker"
            } else {
                "image/webp"
            };
            if let Some(emoji) = &s.emoji {
                metadata.insert("sticker_emoji".into(), emoji.clone());
            }
            files.push(FileRef::of(&s.file, None, media_type.into()));
            "sticker"
        }
        MediaKind::Location(m) => {
            metadata.insert("latitude".into(), m.location.latitude.to_string());
            metadata.insert("longitude".into(), m.location.longitude.to_string());
            "location"
        }
        MediaKind::Venue(m) => {
            let v = &m.venue;
            metadata.insert("latitude".into(), v.location.latitude.to_string());
            metadata.insert("longitude".into(), v.location.longitude.to_string());
            metadata.insert("venue_title".into(), v.title.clone());
            metadata.insert("venue_address".into(), v.address.clone());
            text = format!("{}\n{}", v.title, v.address).trim().to_owned();
            "venue"
        }
        MediaKind::Contact(m) => {
            let c = &m.contact;
            metadata.insert("contact_phone_number".into(), c.phone_number.clone());
            let name = join_name(&c.first_name, c.last_name.as_deref());
            metadata.insert("contact_name".into(), name);
            if let Some(user_id) = c.user_id {
                metadata.insert("contact_user_id".into(), user_id.0.to_string());
                // Shared by its owner (the "share my phone number" button):
                // Telegram vouches that this number is the sender's.
                if user_id == from.id
                    && let Some(phone) = contact_phone(&c.phone_number)
                {
                    metadata.insert("verified_phone".into(), phone.value().to_owned());
                    sender_identities.push(omni_connector::handle::to_proto(&phone, "", true));
                }
            }
            "contact"
        }
        _ => "other",
    };
    metadata.insert("message_kind".into(), kind.into());

    let reply_to = common
        .reply_to_message
        .as_ref()
        .map(|reply| provider_message_id(reply.chat.id.0, reply.id.0))
        .unwrap_or_default();
    let sent_at = Timestamp {
        seconds: message.date.timestamp(),
        nanos: 0,
    };

    let (event_kind, event_id, edits_event_id, sent_at) = if edited {
        let edit_date = common.edit_date.map_or(sent_at.seconds, |d| d.timestamp());
        metadata.insert("edit_date".into(), edit_date.to_string());
        (
            EventKind::Edit,
            edit_event_id(channel_id, chat_id, message_id, edit_date),
            original_event_id,
            Timestamp {
                seconds: edit_date,
                nanos: 0,
            },
        )
    } else {
        (
            EventKind::Message,
            original_event_id,
            String::new(),
            sent_at,
        )
    };

    let event = ConversationEvent {
        event_id,
        channel_id: channel_id.to_owned(),
        channel_kind: ChannelKind::Telegram as i32,
        direction: Direction::Inbound as i32,
        kind: event_kind as i32,
        sender: Some(sender),
        recipients: Vec::new(),
        provider_message_id: pmid,
        sent_at: Some(sent_at),
        received_at: Some(received_at),
        ingested_at: Some(received_at),
        content: Some(Content {
            text,
            attachments: files.iter().map(FileRef::attachment).collect(),
            ..Default::default()
        }),
        threading: Some(ThreadingHints {
            provider_chat_id: chat_id.to_string(),
            reply_to_provider_message_id: reply_to,
            edits_event_id,
            ..Default::default()
        }),
        provider_metadata: metadata,
        delivery: None,
        sender_identities,
        language: from.language_code.clone().unwrap_or_default(),
        ..Default::default()
    };
    Outcome::Event(Box::new(Normalized { event, files }))
}

fn sender_handle(user: &User) -> Result<omni_proto::v1::IdentityHandle, ParseError> {
    let handle = Handle::provider(HandleKind::TelegramUser, &user.id.0.to_string(), None)
        .map_err(|e| ParseError::new("invalid_sender", e.to_string()))?;
    // Telegram authenticated the account that sent the update.
    Ok(omni_connector::handle::to_proto(
        &handle,
        &join_name(&user.first_name, user.last_name.as_deref()),
        true,
    ))
}

fn join_name(first: &str, last: Option<&str>) -> String {
    match last {
        Some(last) if !last.trim().is_empty() => format!("{first} {last}"),
        _ => first.to_owned(),
    }
}

fn chat_type(message: &Message) -> &'static str {
    let chat = &message.chat;
    if chat.is_private() {
        "private"
    } else if chat.is_supergroup() {
        "supergroup"
    } else if chat.is_group() {
        "group"
    } else if chat.is_channel() {
        "channel"
    } else {
        "other"
    }
}

fn mime(declared: Option<&impl std::fmt::Display>, fallback: &str) -> String {
    declared.map_or_else(|| fallback.to_owned(), ToString::to_string)
}

/// A contact's phone number as an E.164 handle. Telegram sends
/// international numbers, usually without the `+`.
pub fn contact_phone(raw: &str) -> Option<Handle> {
    let trimmed = raw.trim();
    let with_plus = if trimmed.starts_with('+') {
        trimmed.to_owned()
    } else {
        format!("+{trimmed}")
    };
    Handle::phone(&with_plus, None).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(json: &str) -> (Update, serde_json::Value) {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        (serde_json::from_str(json).unwrap(), value)
    }

    fn payload(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/payloads/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    const AT: Timestamp = Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };

    fn event(name: &str) -> Normalized {
        let (u, v) = update(&payload(name));
        match normalize_update(&u, Some(&v), "tg", AT) {
            Outcome::Event(n) => *n,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn text_message() {
        let n = event("text.json");
        let e = &n.event;
        assert_eq!(e.kind, EventKind::Message as i32);
        assert_eq!(e.provider_message_id, "1111111:1365");
        assert_eq!(
            e.event_id,
            omni_model::event_id("tg", "1111111:1365").to_string()
        );
        let sender = e.sender.as_ref().unwrap();
        assert_eq!(sender.kind, omni_proto::v1::HandleKind::TelegramUser as i32);
        assert_eq!(sender.value, "1111111");
        assert_eq!(sender.display_name, "Test Lastname");
        assert!(sender.verified);
        assert_eq!(e.content.as_ref().unwrap().text, "/start");
        assert_eq!(e.threading.as_ref().unwrap().provider_chat_id, "1111111");
        assert_eq!(e.provider_metadata["message_kind"], "text");
        assert_eq!(e.provider_metadata["update_id"], "10000");
        assert_eq!(e.language, "en", "the sender's `language_code`");
        assert!(n.files.is_empty());
    }

    #[test]
    fn reply_is_a_threading_hint() {
        let e = event("reply.json").event;
        assert_eq!(
            e.threading.unwrap().reply_to_provider_message_id,
            "1111111:1334"
        );
    }

    #[test]
    fn edit_names_the_original() {
        let e = event("edited.json").event;
        assert_eq!(e.kind, EventKind::Edit as i32);
        assert_eq!(e.provider_message_id, "1111111:1365");
        let threading = e.threading.unwrap();
        assert_eq!(
            threading.edits_event_id,
            omni_model::event_id("tg", "1111111:1365").to_string()
        );
        assert_eq!(e.event_id, edit_event_id("tg", 1111111, 1365, 1441646600));
        assert_ne!(e.event_id, threading.edits_event_id);
        assert_eq!(e.content.unwrap().text, "Edited text");
    }

    #[test]
    fn files_are_named_for_fetching() {
        let n = event("photo.json");
        assert_eq!(n.files.len(), 1);
        assert_eq!(n.files[0].file_id, "AgADBAADbig-photo");
        assert_eq!(n.files[0].media_type, "image/jpeg");
        assert_eq!(n.event.content.unwrap().text, "my order");
        let n = event("document.json");
        assert_eq!(n.files[0].name, "invoice.pdf");
        assert_eq!(n.files[0].media_type, "application/pdf");
        assert_eq!(n.files[0].size, 48213);
        for (name, kind) in [
            ("voice.json", "voice"),
            ("video.json", "video"),
            ("sticker.json", "sticker"),
        ] {
            let n = event(name);
            assert_eq!(n.files.len(), 1, "{name}");
            assert_eq!(n.event.provider_metadata["message_kind"], kind);
        }
    }

    #[test]
    fn location_and_contacts() {
        let e = event("location.json").event;
        assert_eq!(e.provider_metadata["latitude"], "35.6892");
        assert_eq!(e.provider_metadata["longitude"], "51.389");
        let own = event("contact_own.json").event;
        assert_eq!(own.provider_metadata["verified_phone"], "+989121234567");
        let [phone] = own.sender_identities.as_slice() else {
            panic!("{:?}", own.sender_identities)
        };
        assert_eq!(phone.kind, omni_proto::v1::HandleKind::Phone as i32);
        assert_eq!(phone.value, "+989121234567");
        assert!(phone.verified);
        let other = event("contact_other.json").event;
        assert!(!other.provider_metadata.contains_key("verified_phone"));
        assert!(other.sender_identities.is_empty());
        assert_eq!(
            other.provider_metadata["contact_phone_number"],
            "+14155550134"
        );
    }

    #[test]
    fn unknown_update_kinds_are_ignored_and_broken_messages_invalid() {
        let (u, v) = update(r#"{"update_id": 5, "brand_new_kind": {"x": 1}}"#);
        assert_eq!(
            normalize_update(&u, Some(&v), "tg", AT),
            Outcome::Ignored("unknown_update")
        );
        let (u, v) = update(r#"{"update_id": 6, "message": {"message_id": "nope"}}"#);
        assert!(matches!(
            normalize_update(&u, Some(&v), "tg", AT),
            Outcome::Invalid(e) if e.code == "invalid_message"
        ));
        let (u, v) = update(
            r#"{"update_id": 7, "callback_query": {"id": "1", "from": {"id": 1, "is_bot": false, "first_name": "A"}, "chat_instance": "x"}}"#,
        );
        assert_eq!(
            normalize_update(&u, Some(&v), "tg", AT),
            Outcome::Ignored("unsupported_update")
        );
    }

    fn outcome(json: &str) -> Outcome {
        let (u, v) = update(json);
        normalize_update(&u, Some(&v), "tg", AT)
    }

    #[test]
    fn messages_that_cannot_be_read_are_invalid_never_ignored() {
        for text in ["123", "null", "{}"] {
            let json = format!(
                r#"{{"update_id":500,"message":{{"message_id":500,"date":1765000000,"chat":{{"id":559,"type":"private"}},"from":{{"id":559,"is_bot":false,"first_name":"E"}},"text":{text}}}}}"#
            );
            assert!(
                matches!(outcome(&json), Outcome::Invalid(ref e) if e.code == "unreadable_message"),
                "text: {text}"
            );
        }
        let caption = r#"{"update_id":501,"message":{"message_id":501,"date":1765000000,"chat":{"id":559,"type":"private"},"from":{"id":559,"is_bot":false,"first_name":"E"},"photo":[{"file_id":"p","file_unique_id":"u","width":1,"height":1}],"caption":7}}"#;
        assert!(matches!(outcome(caption), Outcome::Invalid(e) if e.code == "unreadable_message"));
        let joined = r#"{"update_id":502,"message":{"message_id":502,"date":1765000000,"chat":{"id":-5,"type":"group","title":"G"},"from":{"id":559,"is_bot":false,"first_name":"E"},"new_chat_members":[{"id":560,"is_bot":false,"first_name":"F"}]}}"#;
        assert_eq!(outcome(joined), Outcome::Ignored("service_message"));
        let edited = r#"{"update_id":503,"edited_message":{"message_id":503,"date":1765000000,"edit_date":1765000001,"chat":{"id":559,"type":"private"},"from":{"id":559,"is_bot":false,"first_name":"E"},"text":false}}"#;
        assert!(matches!(outcome(edited), Outcome::Invalid(e) if e.code == "unreadable_message"));
    }

    #[test]
    fn non_message_kinds_are_ignored() {
        let poll = r#"{"update_id":8,"poll":{"id":"1","question":"Q?","options":[],"total_voter_count":0,"is_closed":false,"is_anonymous":true,"type":"regular","allows_multiple_answers":false}}"#;
        assert_eq!(outcome(poll), Outcome::Ignored("unsupported_update"));
        let member = r#"{"update_id":9,"my_chat_member":{"chat":{"id":559,"type":"private"},"from":{"id":559,"is_bot":false,"first_name":"E"},"date":1765000000,"old_chat_member":{"user":{"id":1,"is_bot":true,"first_name":"B"},"status":"member"},"new_chat_member":{"user":{"id":1,"is_bot":true,"first_name":"B"},"status":"kicked","until_date":0}}}"#;
        assert_eq!(outcome(member), Outcome::Ignored("unsupported_update"));
    }

    #[test]
    fn files_become_provider_references_and_media_jobs() {
        let n = event("photo.json");
        let attachments = n.event.content.as_ref().unwrap().attachments.clone();
        assert_eq!(
            attachments,
            [Attachment {
                name: String::new(),
                media_type: "image/jpeg".into(),
                size: 52342,
                sha256: String::new(),
                uri: "tg-file:AgADBAADbig-photo".into(),
            }]
        );
        let inbound = n.clone().into_inbound();
        assert_eq!(
            inbound.media,
            [MediaRef {
                attachment: 0,
                source: "AgADBAADbig-photo".into()
            }]
        );
        assert_eq!(inbound.event, n.event);
    }

    #[test]
    fn contact_numbers_become_e164() {
        let value = |raw: &str| contact_phone(raw).map(|h| h.value().to_owned());
        assert_eq!(value("989121234567").as_deref(), Some("+989121234567"));
        assert_eq!(value("+1 415 555 0134").as_deref(), Some("+14155550134"));
        assert_eq!(contact_phone("garbage"), None);
    }
}
