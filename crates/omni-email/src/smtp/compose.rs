//! One outbound [`ConversationEvent`] as an RFC 5322 message: pure, no I/O,
//! so every rule here is unit tested.
//!
//! Rules (each violation is [`DeliveryError::Rejected`], because sending
//! the same event again would fail the same way):
//! - The event must be an outbound message (`DIRECTION_OUTBOUND`,
//!   `EVENT_KIND_MESSAGE`) with a non-empty `event_id` made of `atext`
//!   (a UUID, as the daemon assigns).
//! - `To` is every recipient; each must be an email handle with a valid
//!   address. Other handle kinds, or no recipient at all, are rejected
//!   rather than skipped.
//! - Single-line values (subject, display names, addresses, message ids)
//!   containing CR, LF or any other control character except TAB are
//!   rejected, never cleaned up: a header injection attempt must fail
//!   loudly, not half-succeed.
//! - `Subject` is `content.subject` as given (no `Re:` is added; a helpdesk
//!   that wants one writes it), omitted when empty; non-ASCII is RFC 2047
//!   encoded.
//! - `Message-ID` is `<{event_id}@{message_id_domain}>`: deterministic, so
//!   a redelivery after a crash carries the same id and the recipient's
//!   mail system (and our own IMAP ingestion) can recognise it. Any
//!   `threading.message_id` on the event is ignored.
//! - `In-Reply-To` is the last of `threading.in_reply_to`; `References` is
//!   `threading.references`, then every `in_reply_to` id not already
//!   present, the parent last (RFC 5322 §3.6.4), deduplicated. Over
//!   [`MAX_REFERENCES`] ids, the first (the thread's root) and the most
//!   recent ones are kept, as RFC 5537 §3.4.4 suggests. Ids are given
//!   without angle brackets; one enclosing pair is tolerated. Each must be
//!   `id-left@id-right` in `atext` and dots (or a `[domain literal]` on the
//!   right), at most [`MAX_MESSAGE_ID_LEN`] bytes.
//! - `Date` is the event's `sent_at`, else its `ingested_at` (when the
//!   message was ready to send, which is what RFC 5322 asks for), else now.
//! - The body is `text/plain`, or `multipart/alternative` with the HTML
//!   when `content.html` is set (the plain part is then `content.text`, or
//!   the HTML reduced to text when that is empty).
//! - Attachments (`content.attachments`) make the message
//!   `multipart/mixed`: that body first, then one part per file, in order.
//!   The composer never reads them: the sender loads and verifies the bytes
//!   (see [`super::load_attachments`]) and passes them in as [`FileBytes`],
//!   one per attachment. Each part's file name is the attachment's `name`
//!   without any directory (`../x/report.pdf` → `report.pdf`; empty →
//!   `attachment`); its type is `media_type`, `application/octet-stream`
//!   when empty or unparseable. A name or type with CR, LF or another
//!   control character is rejected, like every header value. Non-ASCII
//!   names are RFC 2231 encoded by lettre.
//! - `provider_metadata["auto_acknowledgement"] == "true"` adds
//!   `Auto-Submitted: auto-replied` (RFC 3834) and
//!   `X-Auto-Response-Suppress: All` (Exchange), so the customer's own
//!   auto-responder does not answer the acknowledgement.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lettre::message::{
    Mailbox, MultiPart, SinglePart,
    header::{ContentType, HeaderName, HeaderValue},
};
use omni_connector::{ConfigError, DeliveryError};
use omni_proto::v1::{ConversationEvent, Direction, EventKind, HandleKind};

use super::SmtpSettings;

/// Most message ids written into `References`.
pub const MAX_REFERENCES: usize = 30;

/// Longest message id accepted (without angle brackets).
pub const MAX_MESSAGE_ID_LEN: usize = 500;

/// The metadata key that marks an automatic acknowledgement.
pub const AUTO_ACKNOWLEDGEMENT: &str = "auto_acknowledgement";

pub use omni_connector::attachments::{DEFAULT_FILE_NAME, MAX_FILE_NAME_CHARS};

/// The media type of attachments whose type is missing or unparseable.
pub const DEFAULT_MEDIA_TYPE: &str = "application/octet-stream";

/// The loaded content of one `content.attachments` entry.
pub type FileBytes = bytes::Bytes;

/// A composed message and the id it carries.
#[derive(Debug, Clone)]
pub struct Composed {
    pub message: lettre::Message,
    /// The `Message-ID` without angle brackets: `{event_id}@{domain}`.
    pub message_id: String,
}

/// Composes messages from one channel's address.
#[derive(Debug, Clone)]
pub struct Composer {
    from: Mailbox,
    message_id_domain: String,
}

impl Composer {
    /// Parses `from` and settles the Message-ID domain; errors name their
    /// key under `smtp.`.
    pub fn new(settings: &SmtpSettings) -> Result<Self, ConfigError> {
        if settings.from.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "smtp.from",
                "must be one line without control characters",
            ));
        }
        let from: Mailbox = settings.from.parse().map_err(|e| {
            ConfigError::new(
                "smtp.from",
                format!("expected an address like \"Acme Support <support@acme.example>\": {e}"),
            )
        })?;
        let message_id_domain = match &settings.message_id_domain {
            Some(domain) => {
                if !is_dot_atom(domain) {
                    return Err(ConfigError::new(
                        "smtp.message_id_domain",
                        "must be an ASCII domain name such as `acme.example`",
                    ));
                }
                domain.to_ascii_lowercase()
            }
            None => {
                let handle = omni_model::Handle::email(from.email.as_ref()).map_err(|e| {
                    ConfigError::new(
                        "smtp.message_id_domain",
                        format!("cannot derive it from `from` ({e}); set it explicitly"),
                    )
                })?;
                let domain = handle.value().rsplit('@').next().unwrap_or_default();
                if !is_dot_atom(domain) {
                    return Err(ConfigError::new(
                        "smtp.message_id_domain",
                        "cannot derive it from `from`; set it explicitly",
                    ));
                }
                domain.to_owned()
            }
        };
        Ok(Self {
            from,
            message_id_domain,
        })
    }

    /// The sender's mailbox.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// The right-hand side of generated Message-IDs.
    pub fn message_id_domain(&self) -> &str {
        &self.message_id_domain
    }

    /// The Message-ID (without brackets) of the outbound event `event_id`.
    pub fn message_id(&self, event_id: &str) -> String {
        format!("{event_id}@{}", self.message_id_domain)
    }

    /// Builds the message for `event` without attachments (an event that
    /// has some is rejected: use [`Composer::compose_with`]); `now` is the
    /// `Date` of an event without timestamps.
    pub fn compose(
        &self,
        event: &ConversationEvent,
        now: SystemTime,
    ) -> Result<Composed, DeliveryError> {
        self.compose_with(event, &[], now)
    }

    /// Builds the message for `event` with `files`, the loaded content of
    /// each of its `content.attachments`, in the same order.
    pub fn compose_with(
        &self,
        event: &ConversationEvent,
        files: &[FileBytes],
        now: SystemTime,
    ) -> Result<Composed, DeliveryError> {
        if event.direction != Direction::Outbound as i32 || event.kind != EventKind::Message as i32
        {
            return Err(rejected(
                "not an outbound message (direction must be DIRECTION_OUTBOUND, kind EVENT_KIND_MESSAGE)",
            ));
        }
        if event.event_id.is_empty() || !event.event_id.bytes().all(|b| is_atext(b) || b == b'.') {
            return Err(rejected("event_id must be non-empty atext, such as a uuid"));
        }
        let message_id = self.message_id(&event.event_id);
        if message_id.len() > MAX_MESSAGE_ID_LEN {
            return Err(rejected("event_id is too long for a message id"));
        }

        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .message_id(Some(format!("<{message_id}>")))
            .date(date_of(event, now));

        if event.recipients.is_empty() {
            return Err(rejected("no recipients"));
        }
        for (i, recipient) in event.recipients.iter().enumerate() {
            if recipient.kind != HandleKind::Email as i32 {
                let kind =
                    HandleKind::try_from(recipient.kind).map_or("unknown", |k| k.as_str_name());
                return Err(rejected(format!(
                    "recipients[{i}] is a {kind} handle; an email channel can only send to email handles"
                )));
            }
            single_line(&format!("recipients[{i}].value"), &recipient.value)?;
            single_line(
                &format!("recipients[{i}].display_name"),
                &recipient.display_name,
            )?;
            let address = recipient.value.trim().parse().map_err(|e| {
                rejected(format!(
                    "recipients[{i}].value is not a valid email address: {e}"
                ))
            })?;
            let name = recipient.display_name.trim();
            let name = (!name.is_empty()).then(|| name.to_owned());
            builder = builder.to(Mailbox::new(name, address));
        }

        let content = event.content.clone().unwrap_or_default();
        single_line("content.subject", &content.subject)?;
        if !content.subject.trim().is_empty() {
            builder = builder.subject(content.subject.trim());
        }
        if content.attachments.len() != files.len() {
            return Err(rejected(format!(
                "the event has {} attachments but {} were loaded",
                content.attachments.len(),
                files.len()
            )));
        }
        let attachment_parts = content
            .attachments
            .iter()
            .zip(files)
            .enumerate()
            .map(|(i, (attachment, bytes))| {
                let name = omni_connector::attachments::outbound_file_name(i, &attachment.name)?;
                let media_type = media_type(
                    &format!("attachments[{i}].media_type"),
                    &attachment.media_type,
                )?;
                Ok(lettre::message::Attachment::new(name).body(bytes.to_vec(), media_type))
            })
            .collect::<Result<Vec<_>, DeliveryError>>()?;

        let threading = event.threading.clone().unwrap_or_default();
        let in_reply_to = threading
            .in_reply_to
            .iter()
            .enumerate()
            .map(|(i, id)| normalize_message_id(&format!("threading.in_reply_to[{i}]"), id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut references: Vec<String> = Vec::new();
        for (i, id) in threading.references.iter().enumerate() {
            let id = normalize_message_id(&format!("threading.references[{i}]"), id)?;
            if !references.contains(&id) {
                references.push(id);
            }
        }
        // Every parent ends the list, the one replied to last.
        for id in &in_reply_to {
            references.retain(|r| r != id);
            references.push(id.clone());
        }
        if references.len() > MAX_REFERENCES {
            let excess = references.len() - MAX_REFERENCES;
            references.drain(1..=excess);
        }
        if let Some(parent) = in_reply_to.last() {
            builder = builder.in_reply_to(format!("<{parent}>"));
        }
        if !references.is_empty() {
            let value: Vec<String> = references.iter().map(|id| format!("<{id}>")).collect();
            builder = builder.references(value.join(" "));
        }

        if event
            .provider_metadata
            .get(AUTO_ACKNOWLEDGEMENT)
            .is_some_and(|v| v == "true")
        {
            builder = builder
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("Auto-Submitted"),
                    "auto-replied".to_owned(),
                ))
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("X-Auto-Response-Suppress"),
                    "All".to_owned(),
                ));
        }

        enum Body {
            Single(SinglePart),
            Multi(MultiPart),
        }
        let body = if content.html.is_empty() {
            if content.text.trim().is_empty() {
                return Err(rejected("content has neither text nor html"));
            }
            Body::Single(SinglePart::plain(content.text))
        } else {
            let text = if content.text.trim().is_empty() {
                crate::parse::html_to_text(&content.html)
            } else {
                content.text
            };
            Body::Multi(MultiPart::alternative_plain_html(text, content.html))
        };
        let message = if attachment_parts.is_empty() {
            match body {
                Body::Single(part) => builder.singlepart(part),
                Body::Multi(part) => builder.multipart(part),
            }
        } else {
            let mixed = MultiPart::mixed();
            let mut mixed = match body {
                Body::Single(part) => mixed.singlepart(part),
                Body::Multi(part) => mixed.multipart(part),
            };
            for part in attachment_parts {
                mixed = mixed.singlepart(part);
            }
            builder.multipart(mixed)
        }
        .map_err(|e| rejected(format!("cannot build the message: {e}")))?;
        Ok(Composed {
            message,
            message_id,
        })
    }
}

fn rejected(reason: impl Into<String>) -> DeliveryError {
    DeliveryError::Rejected(reason.into())
}

/// Refuses line breaks and other control characters (TAB aside) in a value
/// that becomes part of one header line.
fn single_line(field: &str, value: &str) -> Result<(), DeliveryError> {
    if value.contains(['\r', '\n']) {
        return Err(rejected(format!(
            "{field} contains a line break, which is not allowed in a header"
        )));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(rejected(format!("{field} contains a control character")));
    }
    Ok(())
}

/// An attachment's `Content-Type`: `raw` when it parses as a media type,
/// else [`DEFAULT_MEDIA_TYPE`]. Line breaks and control characters are
/// rejected.
pub fn media_type(field: &str, raw: &str) -> Result<ContentType, DeliveryError> {
    single_line(field, raw)?;
    let fallback = || ContentType::parse(DEFAULT_MEDIA_TYPE).expect("a valid media type");
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(fallback());
    }
    Ok(ContentType::parse(raw).unwrap_or_else(|_| fallback()))
}

/// A message id as written on the event (without angle brackets, one
/// enclosing pair tolerated), checked to be `id-left@id-right`.
fn normalize_message_id(field: &str, raw: &str) -> Result<String, DeliveryError> {
    single_line(field, raw)?;
    let trimmed = raw.trim();
    let id = trimmed
        .strip_prefix('<')
        .and_then(|id| id.strip_suffix('>'))
        .unwrap_or(trimmed);
    if is_message_id(id) {
        Ok(id.to_owned())
    } else {
        let shown: String = raw.chars().take(80).collect();
        Err(rejected(format!(
            "{field} {shown:?} is not a message id (id-left@id-right)"
        )))
    }
}

/// `id-left "@" id-right` of RFC 5322 §3.6.4, in ASCII: `atext` and dots
/// on both sides (dots anywhere, as `obs-id-left` and real mail have
/// them), or a `no-fold-literal` on the right.
pub fn is_message_id(id: &str) -> bool {
    if id.is_empty() || id.len() > MAX_MESSAGE_ID_LEN {
        return false;
    }
    let Some((left, right)) = id.split_once('@') else {
        return false;
    };
    let dotted = |s: &str| !s.is_empty() && s.bytes().all(|b| is_atext(b) || b == b'.');
    let literal = |s: &str| {
        s.strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .is_some_and(|inner| inner.bytes().all(|b| matches!(b, 33..=90 | 94..=126)))
    };
    dotted(left) && (dotted(right) || literal(right))
}

/// RFC 5322 `atext`.
const fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'/'
                | b'='
                | b'?'
                | b'^'
                | b'_'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
                | b'~'
        )
}

/// RFC 5322 `dot-atom-text`, strictly: atoms separated by single dots.
fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

fn date_of(event: &ConversationEvent, now: SystemTime) -> SystemTime {
    event
        .sent_at
        .as_ref()
        .or(event.ingested_at.as_ref())
        .and_then(|t| {
            let seconds = u64::try_from(t.seconds).ok().filter(|s| *s > 0)?;
            let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
            UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
        })
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use omni_proto::{
        Timestamp,
        v1::{Attachment, Content, IdentityHandle, ThreadingHints},
    };

    use mail_parser::MimeHeaders;

    use super::*;

    fn settings(from: &str, message_id_domain: Option<&str>) -> SmtpSettings {
        SmtpSettings {
            host: "smtp.acme.example".into(),
            port: None,
            tls: super::super::SmtpTls::Starttls,
            ca_file: None,
            username: None,
            password: None,
            from: from.into(),
            message_id_domain: message_id_domain.map(str::to_owned),
            timeout_secs: 30,
            max_attachment_bytes: 1024,
        }
    }

    fn composer() -> Composer {
        Composer::new(&settings("Acme Support <support@acme.example>", None)).unwrap()
    }

    fn email(value: &str, name: &str) -> IdentityHandle {
        IdentityHandle {
            kind: HandleKind::Email as i32,
            value: value.into(),
            display_name: name.into(),
            ..Default::default()
        }
    }

    fn reply() -> ConversationEvent {
        ConversationEvent {
            event_id: "0b8f6c1e-3f4a-5d6b-8c7d-9e0f1a2b3c4d".into(),
            channel_id: "support-mail".into(),
            direction: Direction::Outbound as i32,
            kind: EventKind::Message as i32,
            recipients: vec![email("ana@example.com", "Ana Lima")],
            content: Some(Content {
                subject: "Re: Where is my order?".into(),
                text: "It ships today.\n\nAcme".into(),
                ..Default::default()
            }),
            threading: Some(ThreadingHints {
                in_reply_to: vec!["m2@mail.example.com".into()],
                references: vec!["m1@mail.example.com".into()],
                ..Default::default()
            }),
            sent_at: Some(Timestamp {
                seconds: 1_767_225_600, // 2026-01-01T00:00:00Z
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    fn render(event: &ConversationEvent) -> String {
        let composed = composer()
            .compose(event, SystemTime::now())
            .expect("composes");
        String::from_utf8(composed.message.formatted()).unwrap()
    }

    /// The unfolded value of the first header `name` (case-insensitive).
    fn header(raw: &str, name: &str) -> Option<String> {
        let head = raw.split("\r\n\r\n").next().unwrap();
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", "\t");
        unfolded.split("\r\n").find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    fn rejection(event: &ConversationEvent) -> String {
        match composer().compose(event, SystemTime::now()) {
            Err(DeliveryError::Rejected(reason)) => reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_reply_carries_threading_headers_and_a_message_id_in_our_domain() {
        let event = reply();
        let composed = composer().compose(&event, SystemTime::now()).unwrap();
        assert_eq!(
            composed.message_id,
            "0b8f6c1e-3f4a-5d6b-8c7d-9e0f1a2b3c4d@acme.example"
        );
        let raw = String::from_utf8(composed.message.formatted()).unwrap();
        assert_eq!(
            header(&raw, "From").unwrap(),
            "\"Acme Support\" <support@acme.example>"
        );
        assert_eq!(
            header(&raw, "To").unwrap(),
            "\"Ana Lima\" <ana@example.com>"
        );
        assert_eq!(header(&raw, "Subject").unwrap(), "Re: Where is my order?");
        assert_eq!(
            header(&raw, "Message-ID").unwrap(),
            "<0b8f6c1e-3f4a-5d6b-8c7d-9e0f1a2b3c4d@acme.example>"
        );
        assert_eq!(
            header(&raw, "In-Reply-To").unwrap(),
            "<m2@mail.example.com>"
        );
        assert_eq!(
            header(&raw, "References").unwrap(),
            "<m1@mail.example.com> <m2@mail.example.com>"
        );
        assert_eq!(
            header(&raw, "Date").unwrap(),
            "Thu, 01 Jan 2026 00:00:00 +0000"
        );
        assert!(header(&raw, "Auto-Submitted").is_none());
        assert!(
            header(&raw, "Content-Type")
                .unwrap()
                .starts_with("text/plain"),
            "{raw}"
        );
        let envelope = composed.message.envelope();
        assert_eq!(
            envelope.from().map(ToString::to_string).as_deref(),
            Some("support@acme.example")
        );
        assert_eq!(envelope.to().len(), 1);
        assert_eq!(envelope.to()[0].to_string(), "ana@example.com");
    }

    #[test]
    fn the_same_event_gets_the_same_message_id() {
        let a = composer().compose(&reply(), SystemTime::now()).unwrap();
        let b = composer().compose(&reply(), UNIX_EPOCH).unwrap();
        assert_eq!(a.message_id, b.message_id);
        let domain =
            Composer::new(&settings("support@acme.example", Some("Mail.Acme.Example"))).unwrap();
        assert_eq!(domain.message_id("x"), "x@mail.acme.example");
    }

    #[test]
    fn references_are_deduplicated_bracketed_and_folded() {
        let mut event = reply();
        let many: Vec<String> = (0..12)
            .map(|i| format!("thread-{i}.a-rather-long-left-part@mail.example.com"))
            .collect();
        let mut references = many.clone();
        references.push(many[3].clone());
        references.push(format!("<{}>", many[4]));
        references.push("m2@mail.example.com".into());
        event.threading = Some(ThreadingHints {
            in_reply_to: vec!["m2@mail.example.com".into()],
            references,
            ..Default::default()
        });
        let raw = render(&event);
        let mut expected: Vec<String> = many.iter().map(|id| format!("<{id}>")).collect();
        expected.push("<m2@mail.example.com>".into());
        assert_eq!(header(&raw, "References").unwrap(), expected.join(" "));
        let head = raw.split("\r\n\r\n").next().unwrap();
        assert!(
            head.lines().all(|line| line.len() <= 78),
            "every header line is folded:\n{head}"
        );
    }

    #[test]
    fn long_reference_lists_keep_the_root_and_the_latest() {
        let mut event = reply();
        let ids: Vec<String> = (0..40).map(|i| format!("r{i}@x.example")).collect();
        event.threading = Some(ThreadingHints {
            in_reply_to: vec!["r39@x.example".into()],
            references: ids[..39].to_vec(),
            ..Default::default()
        });
        let raw = render(&event);
        let references = header(&raw, "References").unwrap();
        let kept: Vec<&str> = references.split(' ').collect();
        assert_eq!(kept.len(), MAX_REFERENCES);
        assert_eq!(kept[0], "<r0@x.example>");
        assert_eq!(kept[1], "<r11@x.example>");
        assert_eq!(kept[MAX_REFERENCES - 1], "<r39@x.example>");
    }

    #[test]
    fn a_first_message_has_no_threading_headers() {
        let mut event = reply();
        event.threading = None;
        let raw = render(&event);
        assert!(header(&raw, "In-Reply-To").is_none());
        assert!(header(&raw, "References").is_none());
    }

    #[test]
    fn html_makes_a_multipart_alternative() {
        let mut event = reply();
        let content = event.content.as_mut().unwrap();
        content.text.clear();
        content.html = "<p>It ships <b>today</b>.</p>".into();
        let raw = render(&event);
        let content_type = header(&raw, "Content-Type").unwrap();
        assert!(
            content_type.starts_with("multipart/alternative"),
            "{content_type}"
        );
        assert!(raw.contains("Content-Type: text/plain"), "{raw}");
        assert!(raw.contains("Content-Type: text/html"), "{raw}");
        assert!(raw.contains("It ships today."), "{raw}");
    }

    #[test]
    fn non_ascii_subjects_and_names_are_encoded_words() {
        let mut event = reply();
        event.content.as_mut().unwrap().subject = "Re: Ваш заказ 7781 — отправлен 📦".into();
        event.recipients = vec![email("li.wei@example.cn", "李伟")];
        let raw = render(&event);
        assert!(raw.is_ascii(), "headers and body are 7-bit clean:\n{raw}");
        let subject = header(&raw, "Subject").unwrap();
        assert!(subject.contains("=?utf-8?b?"), "{subject}");
        let parsed = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap();
        assert_eq!(parsed.subject(), Some("Re: Ваш заказ 7781 — отправлен 📦"));
        let to = parsed.to().unwrap().first().unwrap();
        assert_eq!(to.name(), Some("李伟"));
        assert_eq!(to.address(), Some("li.wei@example.cn"));
    }

    #[test]
    fn display_names_with_specials_are_quoted() {
        let mut event = reply();
        event.recipients = vec![email(
            "ana@example.com",
            "Lima, Ana \"boss\" <x@evil.example>",
        )];
        let raw = render(&event);
        let parsed = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap();
        let to = parsed.to().unwrap();
        assert_eq!(to.iter().count(), 1, "{raw}");
        let to = to.first().unwrap();
        assert_eq!(to.address(), Some("ana@example.com"), "{raw}");
        assert_eq!(to.name(), Some("Lima, Ana \"boss\" <x@evil.example>"));
        let envelope = composer()
            .compose(&event, SystemTime::now())
            .unwrap()
            .message
            .envelope()
            .clone();
        assert_eq!(envelope.to().len(), 1);
    }

    #[test]
    fn crlf_injection_is_rejected_never_stripped() {
        let injected = "Hello\r\nBcc: victim@evil.example";
        let mut event = reply();
        event.content.as_mut().unwrap().subject = injected.into();
        assert!(rejection(&event).contains("content.subject contains a line break"));

        let mut event = reply();
        event.content.as_mut().unwrap().subject = "Hello\nBcc: victim@evil.example".into();
        assert!(rejection(&event).contains("content.subject"));

        let mut event = reply();
        event.recipients = vec![email("ana@example.com", injected)];
        assert!(rejection(&event).contains("recipients[0].display_name contains a line break"));

        let mut event = reply();
        event.recipients = vec![email("ana@example.com\r\nBcc: victim@evil.example", "")];
        assert!(rejection(&event).contains("recipients[0].value contains a line break"));

        let mut event = reply();
        event.threading.as_mut().unwrap().references =
            vec!["m1@mail.example.com>\r\nBcc: victim@evil.example".into()];
        assert!(rejection(&event).contains("threading.references[0] contains a line break"));

        let mut event = reply();
        event.threading.as_mut().unwrap().in_reply_to = vec!["m2@x.example\rX: y".into()];
        assert!(rejection(&event).contains("threading.in_reply_to[0] contains a line break"));

        let mut event = reply();
        event.content.as_mut().unwrap().subject = "nul \0 byte".into();
        assert!(rejection(&event).contains("control character"));

        // A tab is ordinary white space in a header.
        let mut event = reply();
        event.content.as_mut().unwrap().subject = "Order\t7781".into();
        assert!(render(&event).contains("Order\t7781"));
    }

    #[test]
    fn malformed_message_ids_are_rejected() {
        for bad in [
            "no-at-sign",
            "two@at@signs.example",
            "@right.example",
            "left@",
            "spa ce@x.example",
            "<unclosed@x.example",
            "quo\"te@x.example",
            "ünïcode@x.example",
            "a@b.example> <c@d.example",
        ] {
            let mut event = reply();
            event.threading.as_mut().unwrap().references = vec![bad.into()];
            assert!(
                rejection(&event).contains("is not a message id"),
                "{bad} should be rejected"
            );
        }
        for good in [
            "CAF=abc+def@mail.gmail.com",
            "<bracketed@x.example>",
            "1234.5678@[127.0.0.1]",
            "odd..dots.@x.example",
        ] {
            let mut event = reply();
            event.threading.as_mut().unwrap().in_reply_to = vec![good.into()];
            let raw = render(&event);
            let bare = good.trim_start_matches('<').trim_end_matches('>');
            assert_eq!(header(&raw, "In-Reply-To").unwrap(), format!("<{bare}>"));
        }
    }

    #[test]
    fn recipients_must_be_email_handles() {
        let mut event = reply();
        event.recipients.clear();
        assert_eq!(rejection(&event), "no recipients");

        let mut event = reply();
        event.recipients.push(IdentityHandle {
            kind: HandleKind::Phone as i32,
            value: "+14155550134".into(),
            ..Default::default()
        });
        assert!(rejection(&event).contains("recipients[1] is a HANDLE_KIND_PHONE handle"));

        let mut event = reply();
        event.recipients = vec![email("not an address", "")];
        assert!(rejection(&event).contains("recipients[0].value is not a valid email address"));
    }

    #[test]
    fn only_outbound_messages_with_a_body_are_sent() {
        let mut event = reply();
        event.direction = Direction::Inbound as i32;
        assert!(rejection(&event).contains("not an outbound message"));

        let mut event = reply();
        event.kind = EventKind::DeliveryStatus as i32;
        assert!(rejection(&event).contains("not an outbound message"));

        let mut event = reply();
        event.event_id = "has space".into();
        assert!(rejection(&event).contains("event_id"));

        let mut event = reply();
        event.content = None;
        assert!(rejection(&event).contains("neither text nor html"));

        let mut event = reply();
        event.content.as_mut().unwrap().attachments = vec![Attachment::default()];
        assert!(rejection(&event).contains("attachments"));
    }

    fn with_attachments(mut event: ConversationEvent, files: &[(&str, &str)]) -> ConversationEvent {
        event.content.as_mut().unwrap().attachments = files
            .iter()
            .map(|(name, media_type)| Attachment {
                name: (*name).into(),
                media_type: (*media_type).into(),
                ..Default::default()
            })
            .collect();
        event
    }

    fn render_with(event: &ConversationEvent, files: &[FileBytes]) -> String {
        let composed = composer()
            .compose_with(event, files, SystemTime::now())
            .expect("composes");
        String::from_utf8(composed.message.formatted()).unwrap()
    }

    fn rejection_with(event: &ConversationEvent, files: &[FileBytes]) -> String {
        match composer().compose_with(event, files, SystemTime::now()) {
            Err(DeliveryError::Rejected(reason)) => reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn attachments_make_a_multipart_mixed_after_the_text() {
        let event = with_attachments(
            reply(),
            &[
                ("../../etc/Relatório final.pdf", "application/pdf"),
                ("C:\\Users\\ana\\dump.bin", ""),
                ("", "not a media type"),
            ],
        );
        let pdf = FileBytes::from_static(b"%PDF-1.7\n\x00\xff binary");
        let bin: FileBytes = (0..=255u8).collect::<Vec<u8>>().into();
        let empty = FileBytes::new();
        let raw = render_with(&event, &[pdf.clone(), bin.clone(), empty]);
        assert!(raw.is_ascii(), "7-bit clean:\n{raw}");
        assert!(
            header(&raw, "Content-Type")
                .unwrap()
                .starts_with("multipart/mixed"),
            "{raw}"
        );
        assert!(!raw.contains("etc/"), "no directories in names:\n{raw}");

        let parsed = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap();
        assert_eq!(
            parsed.body_text(0).unwrap().trim_end(),
            "It ships today.\r\n\r\nAcme"
        );
        let found: Vec<_> = parsed.attachments().collect();
        assert_eq!(found.len(), 3, "{raw}");
        assert_eq!(found[0].attachment_name(), Some("Relatório final.pdf"));
        assert_eq!(found[0].contents(), &pdf[..]);
        let pdf_type = found[0].content_type().unwrap();
        assert_eq!(
            (pdf_type.ctype(), pdf_type.subtype()),
            ("application", Some("pdf"))
        );
        assert_eq!(found[1].attachment_name(), Some("dump.bin"));
        assert_eq!(found[1].contents(), &bin[..]);
        let fallback = found[1].content_type().unwrap();
        assert_eq!(
            (fallback.ctype(), fallback.subtype()),
            ("application", Some("octet-stream"))
        );
        assert_eq!(found[2].attachment_name(), Some(DEFAULT_FILE_NAME));
        let fallback = found[2].content_type().unwrap();
        assert_eq!(fallback.subtype(), Some("octet-stream"));
    }

    #[test]
    fn html_with_attachments_nests_the_alternative_in_the_mixed() {
        let mut event = with_attachments(reply(), &[("receipt.png", "image/png")]);
        event.content.as_mut().unwrap().html = "<p>It ships <b>today</b>.</p>".into();
        let raw = render_with(&event, &[FileBytes::from_static(b"\x89PNG")]);
        assert!(
            header(&raw, "Content-Type")
                .unwrap()
                .starts_with("multipart/mixed"),
            "{raw}"
        );
        let alternative = raw
            .find("multipart/alternative")
            .expect("nested alternative");
        let png = raw.find("image/png").unwrap();
        assert!(alternative < png, "the body comes before the file:\n{raw}");
        let parsed = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap();
        assert_eq!(parsed.attachments().count(), 1);
        assert!(parsed.body_html(0).unwrap().contains("<b>today</b>"));
    }

    #[test]
    fn crlf_in_attachment_names_and_types_is_rejected() {
        let file = [FileBytes::from_static(b"x")];
        let event = with_attachments(
            reply(),
            &[("a.txt\r\nBcc: victim@evil.example", "text/plain")],
        );
        assert!(
            rejection_with(&event, &file).contains("attachments[0].name contains a line break")
        );
        let event = with_attachments(
            reply(),
            &[("a.txt", "text/plain\r\nBcc: victim@evil.example")],
        );
        assert!(
            rejection_with(&event, &file)
                .contains("attachments[0].media_type contains a line break")
        );
        let event = with_attachments(reply(), &[("a\nb.txt", "text/plain")]);
        assert!(rejection_with(&event, &file).contains("line break"));
        let event = with_attachments(reply(), &[("nul\0.txt", "text/plain")]);
        assert!(
            rejection_with(&event, &file)
                .contains("attachments[0].name contains a line break or control character")
        );
    }

    #[test]
    fn every_attachment_must_be_loaded() {
        let event = with_attachments(reply(), &[("a.txt", ""), ("b.txt", "")]);
        assert!(
            rejection_with(&event, &[FileBytes::from_static(b"a")])
                .contains("2 attachments but 1 were loaded")
        );
        assert!(rejection(&event).contains("2 attachments but 0 were loaded"));
    }

    #[test]
    fn file_names_lose_their_directories_and_keep_their_end() {
        assert_eq!(
            omni_connector::attachments::outbound_file_name(0, "/tmp/x/report.pdf").unwrap(),
            "report.pdf"
        );
        assert_eq!(
            omni_connector::attachments::outbound_file_name(0, "..\\..\\boot.ini").unwrap(),
            "boot.ini"
        );
        assert_eq!(
            omni_connector::attachments::outbound_file_name(0, "  spaced name.txt ").unwrap(),
            "spaced name.txt"
        );
        assert_eq!(
            omni_connector::attachments::outbound_file_name(0, "dir/").unwrap(),
            DEFAULT_FILE_NAME
        );
        assert_eq!(
            omni_connector::attachments::outbound_file_name(0, "..").unwrap(),
            DEFAULT_FILE_NAME
        );
        let long = format!("{}.pdf", "a".repeat(300));
        let kept = omni_connector::attachments::outbound_file_name(0, &long).unwrap();
        assert_eq!(kept.chars().count(), MAX_FILE_NAME_CHARS);
        assert!(kept.ends_with("aaa.pdf"));
        assert_eq!(
            omni_connector::attachments::outbound_file_name(0, "名前.txt").unwrap(),
            "名前.txt"
        );
    }

    #[test]
    fn auto_acknowledgements_say_so() {
        let mut event = reply();
        event.provider_metadata =
            HashMap::from([(AUTO_ACKNOWLEDGEMENT.to_owned(), "true".to_owned())]);
        let raw = render(&event);
        assert_eq!(header(&raw, "Auto-Submitted").unwrap(), "auto-replied");
        assert_eq!(header(&raw, "X-Auto-Response-Suppress").unwrap(), "All");

        event.provider_metadata =
            HashMap::from([(AUTO_ACKNOWLEDGEMENT.to_owned(), "false".to_owned())]);
        assert!(header(&render(&event), "Auto-Submitted").is_none());
    }

    #[test]
    fn empty_subjects_are_omitted_and_dates_fall_back() {
        let mut event = reply();
        event.content.as_mut().unwrap().subject.clear();
        event.sent_at = None;
        event.ingested_at = None;
        let composed = composer()
            .compose(&event, UNIX_EPOCH + Duration::from_secs(86_400))
            .unwrap();
        let raw = String::from_utf8(composed.message.formatted()).unwrap();
        assert!(header(&raw, "Subject").is_none(), "{raw}");
        assert_eq!(
            header(&raw, "Date").unwrap(),
            "Fri, 02 Jan 1970 00:00:00 +0000"
        );
    }

    #[test]
    fn sender_settings_are_checked() {
        for (from, domain, key) in [
            ("not an address", None, "smtp.from"),
            (
                "Acme\r\nBcc: x@y.example <support@acme.example>",
                None,
                "smtp.from",
            ),
            (
                "support@acme.example",
                Some("bad domain"),
                "smtp.message_id_domain",
            ),
            (
                "support@acme.example",
                Some("a..b"),
                "smtp.message_id_domain",
            ),
        ] {
            let err = Composer::new(&settings(from, domain)).expect_err(from);
            assert_eq!(err.key, key, "{from}: {err}");
        }
        let idn = Composer::new(&settings("Soporte <ayuda@bücher.example>", None)).unwrap();
        assert_eq!(idn.message_id_domain(), "xn--bcher-kva.example");
    }
}
