//! The frames between the widget and the channel
//! (`docs/channels/webchat.md`, "Frames"): one JSON object per WebSocket
//! text frame, tagged by `type`.
//!
//! Browser frames are untrusted: [`parse_client_frame`] bounds the frame's
//! size and nesting before serde sees it (a plain byte scan, so a hostile
//! `[[[[...` costs one pass and never recursion), then checks every field
//! the channel keys or stores on. Unknown fields are ignored, so a newer
//! widget cached in a browser keeps working with an older daemon; the size
//! bound is what keeps them harmless.

use omni_connector::ParseError;
use omni_proto::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::identity::ClaimedIdentity;

/// Close code: a `hello` whose identity is refused (`require_identity`).
pub const CLOSE_IDENTITY_REFUSED: u16 = 4001;
/// Close code: the page's `Origin` is not in `allowed_origins`.
pub const CLOSE_ORIGIN_NOT_ALLOWED: u16 = 4003;
/// Close code: the visitor sends faster than the channel allows.
pub const CLOSE_RATE_LIMITED: u16 = 4008;
/// Close code: the visitor (or address) has too many open connections.
pub const CLOSE_TOO_MANY_CONNECTIONS: u16 = 4009;
/// Close code (RFC 6455): a frame over `max_message_bytes`.
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;
/// Close code (RFC 6455): the daemon is stopping.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Longest `client_message_id`, in bytes (all ASCII).
pub const MAX_CLIENT_MESSAGE_ID_BYTES: usize = 64;

/// Longest `locale` kept: the longest well-formed BCP 47 tag a browser
/// sends is well under this.
pub const MAX_LOCALE_BYTES: usize = omni_model::MAX_LANGUAGE_TAG_BYTES;

/// Most files one message may carry: a chat message is not a file
/// transfer, and each one is a state lookup before the append.
pub const MAX_ATTACHMENTS: usize = 5;

/// Bounds on one browser frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The channel's `max_message_bytes`: longest frame, in bytes.
    pub max_frame_bytes: usize,
    /// Longest message text, in characters (Unicode scalar values, so a
    /// Persian message gets as many letters as an English one).
    pub max_text_chars: usize,
    /// Deepest nesting of arrays and objects. Frames are at most 3 deep
    /// (a `message`'s `attachments`); the margin is for fields added later.
    pub max_depth: usize,
}

impl Default for Limits {
    /// 4,000 characters of text; 32 KiB holds that much text in any script
    /// (at most 4 bytes a character) with room for JSON escapes.
    fn default() -> Self {
        Self {
            max_frame_bytes: 32 * 1024,
            max_text_chars: 4_000,
            max_depth: 8,
        }
    }
}

/// A frame from the browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// The first frame of every connection. `visitor_id` and
    /// `visitor_token` are absent on a first visit; they are taken as sent
    /// (bounded by the frame size) and proved by
    /// [`crate::identity::verify_visitor_token`], so stale browser storage
    /// starts a new visitor instead of failing here.
    Hello {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        visitor_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        visitor_token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<ClaimedIdentity>,
        /// Only a well-formed tag of at most [`MAX_LOCALE_BYTES`] is kept;
        /// anything else is dropped, the locale being cosmetic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locale: Option<String>,
    },
    /// A message, resent with the same `client_message_id` until acked.
    Message {
        client_message_id: String,
        /// As typed: not trimmed, never empty or only whitespace unless
        /// the message carries attachments (a photo needs no caption).
        text: String,
        /// Files the visitor uploaded first (`POST uploads`), in the order
        /// shown; at most [`MAX_ATTACHMENTS`].
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<AttachmentRef>,
    },
    Typing {
        on: bool,
    },
    /// The visitor saw the reply with this event id (a UUID).
    Read {
        event_id: String,
    },
    /// The address the visitor wants replies emailed to while away;
    /// normalized by [`parse_client_frame`] (`Ana@Example.COM` →
    /// `ana@example.com`).
    Contact {
        email: String,
    },
}

/// A file of a `message` frame: the id the upload answered (the file's
/// SHA-256, 64 lowercase hex digits). Only the form is checked here; that
/// this visitor uploaded it is the session's to check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    pub id: String,
}

/// What the `welcome` frame says of the `hello`'s identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityStatus {
    Verified,
    Unverified,
    None,
}

/// Which way a history message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryDirection {
    /// From the visitor.
    Inbound,
    /// An agent's reply.
    Outbound,
}

/// One message of the `history` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub event_id: String,
    pub direction: HistoryDirection,
    pub text: String,
    /// RFC 3339 in UTC on the wire (`2025-01-31T09:30:00+00:00`,
    /// fractional seconds when there are any).
    pub sent_at: Timestamp,
    /// The visitor's own id for an inbound message, so a tab that still
    /// holds it unacknowledged can mark it delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    /// The message's files, as the widget shows them (a chip with the
    /// name). No URI: the store is not the browser's to read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<HistoryAttachment>,
}

/// One file of a [`HistoryEntry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryAttachment {
    pub name: String,
    pub media_type: String,
    pub size: u64,
}

/// A frame to the browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The answer to `hello`: the browser stores the id and token.
    Welcome {
        visitor_id: String,
        visitor_token: String,
        identity: IdentityStatus,
        /// The address replies are emailed to while the visitor is away,
        /// once left (a `contact` frame, or a signed-in email identity).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contact_email: Option<String>,
        /// Whether the channel emails replies to visitors who are away
        /// (`[offline_email]`), so the widget offers its address form.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        email_replies: bool,
    },
    /// The conversation so far, oldest first, after `welcome`.
    History { messages: Vec<HistoryEntry> },
    /// The message is durable in the log.
    Ack {
        client_message_id: String,
        event_id: String,
    },
    /// An agent's reply.
    Reply {
        event_id: String,
        text: String,
        /// RFC 3339 in UTC on the wire.
        sent_at: Timestamp,
    },
    /// The `contact` address is saved (normalized).
    Contact { email: String },
    /// A refused frame; the connection stays open unless a close follows.
    /// `client_message_id` names the message refused, when it was one: the
    /// widget gives it up, unless the code is one of [`RETRYABLE`].
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_message_id: Option<String>,
    },
}

/// Error codes after which the widget keeps the message and sends it
/// again (the log or the channel's state was briefly unavailable, or the
/// visitor wrote too fast).
pub const RETRYABLE: [&str; 3] = ["storage_unavailable", "state_unavailable", "rate_limited"];

impl ServerFrame {
    /// An `error` frame.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::Error {
            code: code.to_owned(),
            message: message.into(),
            client_message_id: None,
        }
    }

    /// The frame's JSON text. Serializing these types cannot fail (string
    /// keys only); should it ever, the browser gets an `internal` error
    /// frame rather than the daemon a panic.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"the frame could not be encoded"}"#
                .to_owned()
        })
    }
}

impl From<&FrameError> for ServerFrame {
    /// The `error` frame answering a refused browser frame.
    fn from(error: &FrameError) -> Self {
        Self::error(error.code(), error.to_string())
    }
}

/// Why a browser frame is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the frame is {size} bytes; at most {max} are read")]
    TooLarge { size: usize, max: usize },
    #[error("the frame nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("the frame is not a JSON object: {0}")]
    InvalidJson(String),
    #[error("the frame has no string `type`")]
    MissingType,
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    #[error("invalid `{kind}` frame: {message}")]
    InvalidFrame { kind: &'static str, message: String },
    #[error("invalid identity: {0}")]
    InvalidIdentity(String),
    #[error("`client_message_id` must be 1 to 64 of A-Z, a-z, 0-9, `_` and `-`")]
    InvalidClientMessageId,
    #[error("the message has no text")]
    EmptyMessage,
    #[error("the message is {chars} characters; at most {max} are taken")]
    TextTooLong { chars: usize, max: usize },
    #[error("`event_id` is not an event id")]
    InvalidEventId,
    #[error("the message has {count} attachments; at most {max} are taken")]
    TooManyAttachments { count: usize, max: usize },
    #[error("an attachment `id` is not the 64 lowercase hex digits an upload answers")]
    InvalidAttachmentId,
    #[error("not an email address: {0}")]
    InvalidEmail(String),
}

impl FrameError {
    /// Every [`FrameError::code`].
    pub const CODES: [&'static str; 14] = [
        "frame_too_large",
        "too_deep",
        "invalid_json",
        "missing_type",
        "unknown_type",
        "invalid_frame",
        "invalid_identity",
        "invalid_client_message_id",
        "empty_message",
        "text_too_long",
        "invalid_event_id",
        "invalid_email",
        "too_many_attachments",
        "invalid_attachment_id",
    ];

    /// The stable code: the `error` frame's `code`, a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "frame_too_large",
            Self::TooDeep(_) => "too_deep",
            Self::InvalidJson(_) => "invalid_json",
            Self::MissingType => "missing_type",
            Self::UnknownType(_) => "unknown_type",
            Self::InvalidFrame { .. } => "invalid_frame",
            Self::InvalidIdentity(_) => "invalid_identity",
            Self::InvalidClientMessageId => "invalid_client_message_id",
            Self::EmptyMessage => "empty_message",
            Self::TextTooLong { .. } => "text_too_long",
            Self::InvalidEventId => "invalid_event_id",
            Self::TooManyAttachments { .. } => "too_many_attachments",
            Self::InvalidAttachmentId => "invalid_attachment_id",
            Self::InvalidEmail(_) => "invalid_email",
        }
    }
}

impl From<FrameError> for ParseError {
    fn from(error: FrameError) -> Self {
        ParseError::new(error.code(), error.to_string())
    }
}

/// Longest piece of browser-supplied text (or serde message quoting it)
/// echoed back in an error.
const MAX_SHOWN_CHARS: usize = 100;

/// Reads one browser text frame within `limits`.
///
/// A malformed `hello` identity (an unknown `kind`, a value that is not a
/// string) is [`FrameError::InvalidIdentity`], not silently dropped: it is
/// a bug in the business's page, not something a visitor typed, and should
/// show at once. A well-formed identity whose value is no address is
/// [`crate::identity::check_identity`]'s to judge.
pub fn parse_client_frame(text: &str, limits: &Limits) -> Result<ClientFrame, FrameError> {
    if text.len() > limits.max_frame_bytes {
        return Err(FrameError::TooLarge {
            size: text.len(),
            max: limits.max_frame_bytes,
        });
    }
    if omni_connector::json::depth(text.as_bytes()) > limits.max_depth {
        return Err(FrameError::TooDeep(limits.max_depth));
    }
    let mut object: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| FrameError::InvalidJson(shown(&e.to_string())))?;
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        _ => return Err(FrameError::MissingType),
    };
    let kind: &'static str = match kind {
        "hello" => "hello",
        "message" => "message",
        "typing" => "typing",
        "read" => "read",
        "contact" => "contact",
        other => return Err(FrameError::UnknownType(shown(other))),
    };
    // The identity is read on its own so that its errors say so.
    let identity = match object.remove("identity") {
        Some(value) if kind == "hello" && !value.is_null() => Some(
            ClaimedIdentity::deserialize(value)
                .map_err(|e| FrameError::InvalidIdentity(shown(&e.to_string())))?,
        ),
        _ => None,
    };
    let frame =
        ClientFrame::deserialize(Value::Object(object)).map_err(|e| FrameError::InvalidFrame {
            kind,
            message: shown(&e.to_string()),
        })?;
    match frame {
        ClientFrame::Hello {
            visitor_id,
            visitor_token,
            locale,
            identity: _,
        } => Ok(ClientFrame::Hello {
            visitor_id,
            visitor_token,
            identity,
            locale: locale.filter(|l| omni_model::is_language_tag(l)),
        }),
        ClientFrame::Message {
            client_message_id,
            text,
            attachments,
        } => {
            if !is_client_message_id(&client_message_id) {
                return Err(FrameError::InvalidClientMessageId);
            }
            if attachments.len() > MAX_ATTACHMENTS {
                return Err(FrameError::TooManyAttachments {
                    count: attachments.len(),
                    max: MAX_ATTACHMENTS,
                });
            }
            if !attachments.iter().all(|a| is_attachment_id(&a.id)) {
                return Err(FrameError::InvalidAttachmentId);
            }
            if attachments.is_empty() {
                check_text(&text, limits)?;
            } else {
                check_text_length(&text, limits)?;
            }
            Ok(ClientFrame::Message {
                client_message_id,
                text,
                attachments,
            })
        }
        ClientFrame::Typing { on } => Ok(ClientFrame::Typing { on }),
        ClientFrame::Read { event_id } => {
            if event_id.parse::<omni_model::EventId>().is_err() || event_id.len() != 36 {
                return Err(FrameError::InvalidEventId);
            }
            Ok(ClientFrame::Read { event_id })
        }
        ClientFrame::Contact { email } => match omni_model::Handle::email(&email) {
            Ok(handle) => Ok(ClientFrame::Contact {
                email: handle.value().to_owned(),
            }),
            Err(e) => Err(FrameError::InvalidEmail(shown(&e.to_string()))),
        },
    }
}

/// Whether `id` is a valid `client_message_id`: 1–64 of `[A-Za-z0-9_-]`.
/// It becomes part of the provider message id, so nothing else gets in.
pub fn is_client_message_id(id: &str) -> bool {
    (1..=MAX_CLIENT_MESSAGE_ID_BYTES).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `id` names an upload: its SHA-256 as 64 lowercase hex digits,
/// the form the attachment store keys files by.
pub fn is_attachment_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A message text must carry something besides whitespace and stay within
/// [`Limits::max_text_chars`].
pub fn check_text(text: &str, limits: &Limits) -> Result<(), FrameError> {
    if text.trim().is_empty() {
        return Err(FrameError::EmptyMessage);
    }
    check_text_length(text, limits)
}

/// The length bound alone: the caption of attachments may be empty.
pub fn check_text_length(text: &str, limits: &Limits) -> Result<(), FrameError> {
    let chars = text.chars().count();
    if chars > limits.max_text_chars {
        return Err(FrameError::TextTooLong {
            chars,
            max: limits.max_text_chars,
        });
    }
    Ok(())
}

/// At most [`MAX_SHOWN_CHARS`] characters of `text`, cut on a character
/// boundary.
fn shown(text: &str) -> String {
    match text.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((end, _)) => format!("{}…", text.get(..end).unwrap_or_default()),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use crate::identity::IdentityKind;

    use super::*;

    fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        parse_client_frame(text, &Limits::default())
    }

    fn code(text: &str) -> &'static str {
        match parse(text) {
            Ok(frame) => panic!("{text} parsed as {frame:?}"),
            Err(e) => e.code(),
        }
    }

    #[test]
    fn reads_every_documented_frame() {
        assert_eq!(
            parse(r#"{"type":"hello","locale":"fa-IR"}"#).unwrap(),
            ClientFrame::Hello {
                visitor_id: None,
                visitor_token: None,
                identity: None,
                locale: Some("fa-IR".to_owned()),
            }
        );
        let hello = parse(
            r#"{"type":"hello","visitor_id":"v_0123456789ABCDEFGHIJab","visitor_token":"ab",
                "identity":{"kind":"email","value":"ana@example.com","name":"Ana","hash":"00"},
                "locale":"en"}"#,
        )
        .unwrap();
        let ClientFrame::Hello {
            visitor_id,
            visitor_token,
            identity: Some(identity),
            ..
        } = hello
        else {
            panic!("{hello:?}")
        };
        assert_eq!(visitor_id.as_deref(), Some("v_0123456789ABCDEFGHIJab"));
        assert_eq!(visitor_token.as_deref(), Some("ab"));
        assert_eq!(identity.kind, IdentityKind::Email);
        assert_eq!(identity.name.as_deref(), Some("Ana"));
        assert_eq!(identity.hash.as_deref(), Some("00"));
        assert_eq!(
            parse(r#"{"type":"message","client_message_id":"m-1_a","text":"سلام، خوبی؟"}"#).unwrap(),
            ClientFrame::Message {
                client_message_id: "m-1_a".to_owned(),
                text: "سلام، خوبی؟".to_owned(),
                attachments: Vec::new(),
            }
        );
        assert_eq!(
            parse(r#"{"type":"typing","on":true}"#).unwrap(),
            ClientFrame::Typing { on: true }
        );
        assert_eq!(
            parse(r#"{"on":false,"type":"typing"}"#).unwrap(),
            ClientFrame::Typing { on: false }
        );
        assert_eq!(
            parse(r#"{"type":"read","event_id":"6f1c1b9e-1f5d-5c1a-9a7e-2b1f3c4d5e6f"}"#).unwrap(),
            ClientFrame::Read {
                event_id: "6f1c1b9e-1f5d-5c1a-9a7e-2b1f3c4d5e6f".to_owned()
            }
        );
    }

    #[test]
    fn tolerates_unknown_fields_and_null_identity() {
        assert_eq!(
            parse(r#"{"type":"typing","on":true,"future":{"x":[1,2]}}"#).unwrap(),
            ClientFrame::Typing { on: true }
        );
        assert!(matches!(
            parse(r#"{"type":"hello","identity":null,"visitor_id":null}"#).unwrap(),
            ClientFrame::Hello {
                identity: None,
                visitor_id: None,
                ..
            }
        ));
        // `identity` on a frame that has none is ignored like any unknown.
        assert!(parse(r#"{"type":"typing","on":true,"identity":7}"#).is_ok());
    }

    #[test]
    fn text_is_kept_exactly() {
        let text = "  مرحبا\u{200c}  بك\n\t😀 \u{202b}x\u{202c} ";
        let frame = ServerFrame::Reply {
            event_id: "e".into(),
            text: text.into(),
            sent_at: Timestamp::default(),
        };
        assert!(frame.to_text().contains("مرحبا"));
        let json = serde_json::json!({"type":"message","client_message_id":"a","text":text});
        let ClientFrame::Message { text: got, .. } = parse(&json.to_string()).unwrap() else {
            panic!()
        };
        assert_eq!(got, text);
    }

    #[test]
    fn refuses_malformed_frames_with_stable_codes() {
        for (frame, expected) in [
            ("", "invalid_json"),
            ("not json", "invalid_json"),
            ("[]", "invalid_json"),
            ("\"hello\"", "invalid_json"),
            ("null", "invalid_json"),
            (r#"{"type":"typing","on":true} {}"#, "invalid_json"),
            (r#"{"type":"typing","on":true"#, "invalid_json"),
            ("{}", "missing_type"),
            (r#"{"type":1}"#, "missing_type"),
            (r#"{"type":null}"#, "missing_type"),
            (r#"{"type":"welcome"}"#, "unknown_type"),
            (r#"{"type":"Hello"}"#, "unknown_type"),
            (r#"{"type":"typing"}"#, "invalid_frame"),
            (r#"{"type":"typing","on":"yes"}"#, "invalid_frame"),
            (r#"{"type":"message","text":"hi"}"#, "invalid_frame"),
            (
                r#"{"type":"message","client_message_id":1,"text":"hi"}"#,
                "invalid_frame",
            ),
            (r#"{"type":"hello","visitor_id":5}"#, "invalid_frame"),
            (r#"{"type":"read"}"#, "invalid_frame"),
            (
                r#"{"type":"hello","identity":{"kind":"sms","value":"x"}}"#,
                "invalid_identity",
            ),
            (
                r#"{"type":"hello","identity":{"kind":"external","value":42}}"#,
                "invalid_identity",
            ),
            (
                r#"{"type":"hello","identity":"ana@example.com"}"#,
                "invalid_identity",
            ),
            (
                r#"{"type":"message","client_message_id":"","text":"hi"}"#,
                "invalid_client_message_id",
            ),
            (
                r#"{"type":"message","client_message_id":"a b","text":"hi"}"#,
                "invalid_client_message_id",
            ),
            (
                r#"{"type":"message","client_message_id":"a:b","text":"hi"}"#,
                "invalid_client_message_id",
            ),
            (
                r#"{"type":"message","client_message_id":"۱","text":"hi"}"#,
                "invalid_client_message_id",
            ),
            (
                r#"{"type":"message","client_message_id":"a","text":""}"#,
                "empty_message",
            ),
            (
                r#"{"type":"message","client_message_id":"a","text":" \n\t\u3000"}"#,
                "empty_message",
            ),
            (r#"{"type":"read","event_id":"x"}"#, "invalid_event_id"),
            (
                r#"{"type":"read","event_id":"6f1c1b9e1f5d5c1a9a7e2b1f3c4d5e6f"}"#,
                "invalid_event_id",
            ),
        ] {
            assert_eq!(code(frame), expected, "{frame}");
        }
        let id = "a".repeat(64);
        assert!(
            parse(&format!(
                r#"{{"type":"message","client_message_id":"{id}","text":"x"}}"#
            ))
            .is_ok()
        );
        assert_eq!(
            code(&format!(
                r#"{{"type":"message","client_message_id":"{id}a","text":"x"}}"#
            )),
            "invalid_client_message_id"
        );
    }

    #[test]
    fn bounds_size_depth_and_text() {
        let limits = Limits {
            max_frame_bytes: 200,
            max_text_chars: 10,
            max_depth: 3,
        };
        let big = format!(
            r#"{{"type":"typing","on":true,"pad":"{}"}}"#,
            "x".repeat(200)
        );
        assert_eq!(
            parse_client_frame(&big, &limits),
            Err(FrameError::TooLarge {
                size: big.len(),
                max: 200
            })
        );
        let deep = format!(
            r#"{{"type":"typing","on":true,"x":{}{}}}"#,
            "[".repeat(3),
            "]".repeat(3)
        );
        assert_eq!(
            parse_client_frame(&deep, &limits),
            Err(FrameError::TooDeep(3))
        );
        // Brackets inside strings do not count.
        let quoted = r#"{"type":"typing","on":true,"x":"[[[[[[\"[[[["}"#;
        assert!(parse_client_frame(quoted, &limits).is_ok());
        // A hostile nesting far past serde's recursion limit is one scan.
        let hostile = "[".repeat(100_000);
        assert_eq!(
            parse_client_frame(
                &hostile,
                &Limits {
                    max_frame_bytes: 1 << 20,
                    ..limits
                }
            )
            .unwrap_err()
            .code(),
            "too_deep"
        );

        let ten = "۰۱۲۳۴۵۶۷۸۹"; // 10 characters, 20 bytes
        let frame = format!(r#"{{"type":"message","client_message_id":"a","text":"{ten}"}}"#);
        assert!(parse_client_frame(&frame, &limits).is_ok());
        let frame = format!(r#"{{"type":"message","client_message_id":"a","text":"{ten}!"}}"#);
        assert_eq!(
            parse_client_frame(&frame, &limits),
            Err(FrameError::TextTooLong { chars: 11, max: 10 })
        );
    }

    #[test]
    fn default_limits_take_the_longest_text_in_any_script() {
        let limits = Limits::default();
        for letter in ["a", "ش", "😀"] {
            let json = serde_json::json!({
                "type": "message",
                "client_message_id": "m1",
                "text": letter.repeat(limits.max_text_chars),
            });
            assert!(
                parse_client_frame(&json.to_string(), &limits).is_ok(),
                "{letter}"
            );
        }
    }

    #[test]
    fn message_attachments_are_checked_and_allow_an_empty_caption() {
        let id = "0123456789abcdef".repeat(4);
        let frame = |text: &str, ids: &[&str]| {
            let attachments: Vec<Value> =
                ids.iter().map(|id| serde_json::json!({"id": id})).collect();
            serde_json::json!({"type": "message", "client_message_id": "m1", "text": text,
                               "attachments": attachments})
            .to_string()
        };
        assert_eq!(
            parse(&frame("", &[&id, &id.replace('0', "f")])).unwrap(),
            ClientFrame::Message {
                client_message_id: "m1".into(),
                text: String::new(),
                attachments: vec![
                    AttachmentRef { id: id.clone() },
                    AttachmentRef {
                        id: id.replace('0', "f")
                    },
                ],
            }
        );
        // Unknown fields of an attachment are ignored, like the frame's.
        let extra = format!(
            r#"{{"type":"message","client_message_id":"m1","text":"hi","attachments":[{{"id":"{id}","name":"x.png"}}]}}"#
        );
        assert!(parse(&extra).is_ok());
        assert_eq!(code(&frame("", &[])), "empty_message");
        assert_eq!(code(&frame(" ", &[])), "empty_message");
        assert_eq!(
            code(&frame("", &[id.as_str(); MAX_ATTACHMENTS + 1])),
            "too_many_attachments"
        );
        assert!(parse(&frame("", &[id.as_str(); MAX_ATTACHMENTS])).is_ok());
        for bad in [
            "",
            "abc",
            &id.to_uppercase(),
            &format!("{id}0"),
            &id[1..],
            &id.replace('a', "g"),
            "../../../../etc/passwd",
        ] {
            assert_eq!(
                code(&frame("hi", &[&id, bad])),
                "invalid_attachment_id",
                "{bad:?}"
            );
        }
        assert_eq!(
            code(
                r#"{"type":"message","client_message_id":"m1","text":"hi","attachments":[{"id":7}]}"#
            ),
            "invalid_frame"
        );
        assert_eq!(
            code(r#"{"type":"message","client_message_id":"m1","text":"hi","attachments":"x"}"#),
            "invalid_frame"
        );
        // The caption keeps its length bound.
        let limits = Limits {
            max_text_chars: 3,
            ..Limits::default()
        };
        assert_eq!(
            parse_client_frame(&frame("abcd", &[&id]), &limits),
            Err(FrameError::TextTooLong { chars: 4, max: 3 })
        );
    }

    #[test]
    fn bad_locales_are_dropped() {
        for locale in ["", "fa IR", "<script>", &"a".repeat(36)] {
            let json = serde_json::json!({"type": "hello", "locale": locale});
            let Ok(ClientFrame::Hello { locale, .. }) = parse(&json.to_string()) else {
                panic!()
            };
            assert_eq!(locale, None);
        }
    }

    #[test]
    fn errors_quote_input_briefly_and_safely() {
        let long_type = "ب".repeat(1000);
        let json = serde_json::json!({"type": long_type});
        let error = parse(&json.to_string()).unwrap_err();
        assert_eq!(error.code(), "unknown_type");
        assert!(error.to_string().chars().count() < 150, "{error}");
        let json = format!(r#"{{"type":"typing","on":"{}"}}"#, "é".repeat(500));
        let error = parse(&json).unwrap_err();
        assert_eq!(error.code(), "invalid_frame");
        assert!(error.to_string().chars().count() < 150, "{error}");
        for code in FrameError::CODES {
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }

    #[test]
    fn contact_addresses_are_normalized_or_refused() {
        let limits = Limits::default();
        let parse = |email: &str| {
            parse_client_frame(
                &serde_json::json!({"type": "contact", "email": email}).to_string(),
                &limits,
            )
        };
        assert_eq!(
            parse("  Ana.Lima@Example.COM ").unwrap(),
            ClientFrame::Contact {
                email: "ana.lima@example.com".into()
            }
        );
        for bad in [
            "",
            "ana",
            "ana@",
            "@example.com",
            "a b@example.com",
            "ana@exa mple.com",
        ] {
            assert_eq!(parse(bad).unwrap_err().code(), "invalid_email", "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(300));
        let error = parse(&long).unwrap_err();
        assert_eq!(error.code(), "invalid_email");
        assert!(error.to_string().chars().count() < 150, "{error}");
    }

    #[test]
    fn server_frames_have_the_documented_json() {
        let sent_at = Timestamp {
            seconds: 1_738_315_800,
            nanos: 0,
        };
        let frames = [
            (
                ServerFrame::Welcome {
                    visitor_id: "v_x".into(),
                    visitor_token: "t".into(),
                    identity: IdentityStatus::None,
                    contact_email: None,
                    email_replies: false,
                },
                serde_json::json!({"type":"welcome","visitor_id":"v_x","visitor_token":"t","identity":"none"}),
            ),
            (
                ServerFrame::Welcome {
                    visitor_id: "v_x".into(),
                    visitor_token: "t".into(),
                    identity: IdentityStatus::Unverified,
                    contact_email: Some("ana@example.com".into()),
                    email_replies: true,
                },
                serde_json::json!({"type":"welcome","visitor_id":"v_x","visitor_token":"t",
                    "identity":"unverified","contact_email":"ana@example.com","email_replies":true}),
            ),
            (
                ServerFrame::Contact {
                    email: "ana@example.com".into(),
                },
                serde_json::json!({"type":"contact","email":"ana@example.com"}),
            ),
            (
                ServerFrame::History {
                    messages: vec![
                        HistoryEntry {
                            event_id: "e1".into(),
                            direction: HistoryDirection::Inbound,
                            text: "hi".into(),
                            sent_at,
                            client_message_id: Some("m1".into()),
                            attachments: Vec::new(),
                        },
                        HistoryEntry {
                            event_id: "e2".into(),
                            direction: HistoryDirection::Outbound,
                            text: "hello".into(),
                            sent_at,
                            client_message_id: None,
                            attachments: vec![HistoryAttachment {
                                name: "invoice.pdf".into(),
                                media_type: "application/pdf".into(),
                                size: 2048,
                            }],
                        },
                    ],
                },
                serde_json::json!({"type":"history","messages":[
                    {"event_id":"e1","direction":"inbound","text":"hi","sent_at":"2025-01-31T09:30:00+00:00","client_message_id":"m1"},
                    {"event_id":"e2","direction":"outbound","text":"hello","sent_at":"2025-01-31T09:30:00+00:00",
                     "attachments":[{"name":"invoice.pdf","media_type":"application/pdf","size":2048}]}]}),
            ),
            (
                ServerFrame::Ack {
                    client_message_id: "m1".into(),
                    event_id: "e1".into(),
                },
                serde_json::json!({"type":"ack","client_message_id":"m1","event_id":"e1"}),
            ),
            (
                ServerFrame::Reply {
                    event_id: "e2".into(),
                    text: "hello".into(),
                    sent_at,
                },
                serde_json::json!({"type":"reply","event_id":"e2","text":"hello","sent_at":"2025-01-31T09:30:00+00:00"}),
            ),
            (
                ServerFrame::from(&FrameError::EmptyMessage),
                serde_json::json!({"type":"error","code":"empty_message","message":"the message has no text"}),
            ),
        ];
        for (frame, expected) in frames {
            let text = frame.to_text();
            assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap(),
                expected,
                "{text}"
            );
            assert_eq!(serde_json::from_str::<ServerFrame>(&text).unwrap(), frame);
        }
        assert_eq!(
            serde_json::to_value(IdentityStatus::Unverified).unwrap(),
            "unverified"
        );
    }

    #[test]
    fn client_frames_round_trip() {
        for frame in [
            ClientFrame::Typing { on: true },
            ClientFrame::Message {
                client_message_id: "x".into(),
                text: "y".into(),
                attachments: Vec::new(),
            },
            ClientFrame::Message {
                client_message_id: "x".into(),
                text: String::new(),
                attachments: vec![AttachmentRef {
                    id: "ab".repeat(32),
                }],
            },
            ClientFrame::Hello {
                visitor_id: Some("v_0123456789ABCDEFGHIJab".into()),
                visitor_token: None,
                identity: Some(ClaimedIdentity {
                    kind: IdentityKind::External,
                    value: "42".into(),
                    name: None,
                    hash: Some("ab".into()),
                }),
                locale: Some("de".into()),
            },
        ] {
            let text = serde_json::to_string(&frame).unwrap();
            assert_eq!(parse(&text).unwrap(), frame, "{text}");
        }
    }

    #[test]
    fn close_codes_are_the_documented_ones() {
        assert_eq!(
            [
                CLOSE_IDENTITY_REFUSED,
                CLOSE_ORIGIN_NOT_ALLOWED,
                CLOSE_RATE_LIMITED,
                CLOSE_TOO_MANY_CONNECTIONS,
                CLOSE_MESSAGE_TOO_BIG,
                CLOSE_GOING_AWAY
            ],
            [4001, 4003, 4008, 4009, 1009, 1001]
        );
    }
}
