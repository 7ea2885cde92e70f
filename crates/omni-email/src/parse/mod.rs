//! Inbound email as pure functions: a raw RFC 5322 message in, a normalized
//! [`ConversationEvent`] (plus attachment bytes and a machine-mail
//! classification) out. No I/O, so everything here is tested on recorded
//! messages and fuzzed; the IMAP side only fetches bytes and hands them in.
//!
//! MIME, RFC 2047 encoded words and legacy charsets are `mail-parser`'s job.
//! Because it parses whatever it is given, the limits (size, nesting depth,
//! part count) are checked first by a cheap structural walk (`shape.rs`) and
//! again on the parsed tree.

mod classify;
mod html;
mod quote;
mod shape;
mod subject;
mod tidy;

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;
use mail_parser::{
    Address, HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
    parsers::MessageStream,
};
use omni_model::Handle;
use omni_proto::{
    Timestamp,
    v1::{
        Attachment, ChannelKind, Content, ConversationEvent, Direction, EventKind, IdentityHandle,
        ThreadingHints,
    },
};
use sha2::{Digest, Sha256};

pub use classify::Classification;
pub use html::html_to_text;
pub use quote::strip_quoted_reply;
pub use shape::{MAX_BOUNDARY_BYTES, MAX_HEADER_BYTES, MAX_HEADER_FIELDS};
pub use subject::normalize_subject;

/// Most recipients (To and Cc together) kept on an event; the rest are
/// dropped and `recipients_truncated` is set.
pub const MAX_RECIPIENTS: usize = 100;
/// Most `References` ids kept: the first (the thread root) and the newest.
pub const MAX_REFERENCES: usize = 64;
/// Longest message id kept (RFC 5322 lines are at most 998 bytes).
pub const MAX_MESSAGE_ID_BYTES: usize = 998;
/// Longest subject kept, in bytes (cut on a character boundary).
pub const MAX_SUBJECT_BYTES: usize = 4096;

/// Bounds on the work one message may cause. Messages over a limit are
/// rejected (so they reach the dead-letter topic with the reason), except
/// oversized bodies and attachments, which are cut or left out and flagged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest raw message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Deepest MIME nesting accepted (the message is level 0, the parts of
    /// a top-level multipart level 1, and so on; attached messages count).
    pub max_depth: usize,
    /// Most MIME entities accepted (the message, every part, every
    /// attached message and its parts).
    pub max_parts: usize,
    /// Largest attachment whose bytes are kept; larger ones are listed with
    /// their size only.
    pub max_attachment_bytes: usize,
    /// Longest text or HTML body kept, in bytes (cut on a character
    /// boundary, with `truncated = "true"` in the provider metadata).
    pub max_text_bytes: usize,
}

impl ParseLimits {
    pub const DEFAULT: Self = Self {
        max_message_bytes: 25 * 1024 * 1024,
        max_depth: 10,
        max_parts: 200,
        max_attachment_bytes: 20 * 1024 * 1024,
        max_text_bytes: 1024 * 1024,
    };
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A parsed inbound message.
#[derive(Debug, Clone)]
pub struct ParsedEmail {
    /// The normalized event: channel kind email, direction inbound, kind
    /// message.
    pub event: ConversationEvent,
    /// The bytes of every attachment listed in `event.content.attachments`
    /// with a non-empty `sha256`, in the same order. Attachments over the
    /// size limit are listed in the event (size only) and have no entry here.
    pub attachments: Vec<AttachmentBody>,
    /// Whether a machine sent it (auto-reply, bounce, bulk). Also in the
    /// event's provider metadata.
    pub classification: Classification,
}

/// The content of one attachment, for the attachment store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentBody {
    /// Lowercase hex SHA-256 of `bytes` (the store key).
    pub sha256: String,
    /// Same as the event attachment's media type.
    pub media_type: String,
    pub bytes: Bytes,
}

/// Why a message cannot be normalized; codes: `too_large`, `too_deep`,
/// `too_many_parts`, `headers_too_large`, `invalid_mime`, `not_rfc5322`,
/// `missing_sender`, `invalid_sender`.
pub use omni_connector::ParseError;

/// Parses and normalizes one raw message (the exact bytes fetched from the
/// mailbox).
///
/// - sender: the first `From` address, canonicalized with
///   [`Handle::email`], with its decoded display name; `Sender`, then
///   `Return-Path`, only when there is no `From` at all. A message with two
///   `From` headers is rejected. Never `verified`: `From` is whatever the
///   sending client wrote, and SPF/DKIM/DMARC results are not evaluated
///   here (the threading service treats the handle as a claim);
/// - recipients: `To` then `Cc`, canonicalized, deduplicated, invalid
///   addresses skipped;
/// - `provider_message_id`: the `Message-ID` without angle brackets, or
///   `sha256:<hex of the raw bytes>` when it is missing or unusable, so the
///   same message fetched twice gets the same event id;
/// - `sent_at` from `Date` (unset when missing or invalid); `received_at`
///   and `ingested_at` are `received_at`;
/// - content: the text/plain body (or the HTML reduced to text when there
///   is none), the HTML body, the decoded subject, and the new text above
///   any quote (see [`strip_quoted_reply`]);
/// - threading: message id, all `In-Reply-To` ids, `References` oldest
///   first (at most [`MAX_REFERENCES`]), and [`normalize_subject`];
/// - attachments: see [`ParsedEmail::attachments`];
/// - provider metadata: `truncated` (a body or the subject was cut),
///   `attachments_skipped`,
///   `recipients_truncated`, `reply_to`, and the classification
///   (`auto_reply`, `bounce`, `bulk` as `"true"`, `noise_reasons` as a
///   comma-separated list), each only when it applies.
pub fn parse_message(
    raw: &[u8],
    channel_id: &str,
    received_at: Timestamp,
    limits: &ParseLimits,
) -> Result<ParsedEmail, ParseError> {
    if raw.len() > limits.max_message_bytes {
        return Err(ParseError::new(
            "too_large",
            format!(
                "message of {} bytes is over the limit of {} bytes",
                raw.len(),
                limits.max_message_bytes
            ),
        ));
    }
    shape::check(raw, limits)?;
    let message = parse_mime(raw)?
        .filter(|m| !m.parts.is_empty() && !m.parts[0].headers.is_empty())
        .ok_or_else(|| ParseError::new("not_rfc5322", "no header block found"))?;
    check_tree(&message, limits)?;

    let mut metadata = HashMap::new();
    let sender = sender(&message)?;
    let recipients = recipients(&message, &mut metadata);
    if let Some(reply_to) = message
        .reply_to()
        .and_then(|a| a.iter().find_map(|a| Handle::email(a.address()?).ok()))
    {
        metadata.insert("reply_to".to_owned(), reply_to.value().to_owned());
    }

    let message_id = message.message_id().and_then(clean_id);
    let provider_message_id = message_id
        .clone()
        .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(raw))));
    let in_reply_to = ids(message.in_reply_to(), usize::MAX);
    let references = ids(message.references(), MAX_REFERENCES);

    let sent_at = message.date().filter(|d| d.is_valid()).map(|d| Timestamp {
        seconds: d.to_timestamp(),
        nanos: 0,
    });

    let mut truncated = false;
    let subject_raw = message.subject().unwrap_or_default().trim();
    let (subject, cut) = truncate(subject_raw, MAX_SUBJECT_BYTES);
    truncated |= cut;

    let (text, html) = bodies(&message);
    let (html, cut) = truncate(&html, limits.max_text_bytes);
    truncated |= cut;
    let (text, cut) = truncate(&text, limits.max_text_bytes);
    truncated |= cut;
    let new_text = strip_quoted_reply(&text).unwrap_or_default();
    if truncated {
        metadata.insert("truncated".to_owned(), "true".to_owned());
    }

    let (attachments, bodies, skipped) = attachments(&message, raw, limits);
    if skipped > 0 {
        metadata.insert("attachments_skipped".to_owned(), skipped.to_string());
    }

    let content_type = message.root_part().content_type();
    let media_type = content_type.map(media_type).unwrap_or_default();
    let headers = classification_headers(&message);
    let classification = classify::classify(&classify::Evidence {
        headers: &headers,
        content_type: &media_type,
        report_type: content_type.and_then(|ct| ct.attribute("report-type")),
        sender: &sender.value,
        subject: &subject,
    });
    for (flag, key) in [
        (classification.auto_reply, "auto_reply"),
        (classification.bounce, "bounce"),
        (classification.bulk, "bulk"),
    ] {
        if flag {
            metadata.insert(key.to_owned(), "true".to_owned());
        }
    }
    if !classification.reasons.is_empty() {
        metadata.insert("noise_reasons".to_owned(), classification.reasons.join(","));
    }

    let normalized_subject = normalize_subject(&subject);
    let event = ConversationEvent {
        event_id: omni_model::event_id(channel_id, &provider_message_id).to_string(),
        channel_id: channel_id.to_owned(),
        channel_kind: ChannelKind::Email as i32,
        direction: Direction::Inbound as i32,
        kind: EventKind::Message as i32,
        sender: Some(sender),
        recipients,
        provider_message_id,
        sent_at,
        received_at: Some(received_at),
        ingested_at: Some(received_at),
        content: Some(Content {
            text,
            html,
            subject,
            new_text,
            attachments,
        }),
        threading: Some(ThreadingHints {
            message_id: message_id.unwrap_or_default(),
            in_reply_to,
            references,
            normalized_subject,
            ..Default::default()
        }),
        provider_metadata: metadata,
        delivery: None,
        sender_identities: Vec::new(),
        attachment_stored: None,
        activity: None,
        language: content_language(&headers).unwrap_or_default(),
    };
    Ok(ParsedEmail {
        event,
        attachments: bodies,
        classification,
    })
}

/// Runs `mail-parser`. It never panics in release builds, but a few
/// `debug_assert!`s in its MIME state machine are reachable with malformed
/// multipart/message nesting, so a debug build (tests, `cargo run`) would
/// panic on such mail; that is contained here and reported as
/// `invalid_mime`. (In a release build the parser recovers what it can.)
fn parse_mime(raw: &[u8]) -> Result<Option<Message<'_>>, ParseError> {
    std::panic::catch_unwind(|| MessageParser::new().parse(raw))
        .map_err(|_| ParseError::new("invalid_mime", "mime structure the parser cannot follow"))
}

/// Counts parts and nesting on the parsed tree, including messages that
/// were attached base64-encoded (which the parser decodes and parses).
fn check_tree(message: &Message<'_>, limits: &ParseLimits) -> Result<(), ParseError> {
    let mut seen = 0usize;
    let mut stack: Vec<(&Message<'_>, u32, usize)> = vec![(message, 0, 0)];
    while let Some((msg, id, depth)) = stack.pop() {
        seen += 1;
        if seen > limits.max_parts {
            return Err(shape::too_many_parts(limits));
        }
        if depth > limits.max_depth {
            return Err(shape::too_deep(limits));
        }
        let Some(part) = msg.parts.get(id as usize) else {
            continue;
        };
        match &part.body {
            PartType::Multipart(children) => {
                for &child in children {
                    // A part listing itself would loop; the count above
                    // bounds that too, this just keeps the error honest.
                    if child != id {
                        stack.push((msg, child, depth + 1));
                    }
                }
            }
            PartType::Message(inner) if !inner.parts.is_empty() => {
                stack.push((inner, 0, depth + 1));
            }
            _ => {}
        }
    }
    Ok(())
}

fn sender(message: &Message<'_>) -> Result<IdentityHandle, ParseError> {
    let headers = &message.root_part().headers;
    let has = |name: HeaderName<'static>| headers.iter().any(|h| h.name == name);
    let from_headers = headers
        .iter()
        .filter(|h| h.name == HeaderName::From)
        .count();
    if from_headers > 1 {
        // Clients disagree on which one to show; a sender identity must not
        // depend on that (a known way to spoof a ticket's customer).
        return Err(ParseError::new(
            "invalid_sender",
            format!("{from_headers} From headers, RFC 5322 allows one"),
        ));
    }
    let (field, candidate) = if from_headers == 1 {
        ("From", first_addr(message.from()))
    } else if has(HeaderName::Sender) {
        ("Sender", first_addr(message.sender()))
    } else if has(HeaderName::ReturnPath) {
        let path = match message.return_path() {
            HeaderValue::Text(t) => Some(t.as_ref()),
            HeaderValue::TextList(list) => list.first().map(Cow::as_ref),
            _ => None,
        };
        (
            "Return-Path",
            path.filter(|p| !p.trim().is_empty())
                .map(|p| (p.to_owned(), String::new())),
        )
    } else {
        return Err(ParseError::new(
            "missing_sender",
            "no From, Sender or Return-Path header",
        ));
    };
    let Some((address, name)) = candidate else {
        return Err(ParseError::new(
            "invalid_sender",
            format!("{field} header has no address"),
        ));
    };
    let handle = Handle::email(&address)
        .map_err(|e| ParseError::new("invalid_sender", format!("{field} header: {e}")))?;
    Ok(omni_connector::handle::to_proto(&handle, &name, false))
}

/// The first address of an address header, with its decoded display name.
fn first_addr(address: Option<&Address<'_>>) -> Option<(String, String)> {
    let addr = address?.iter().find(|a| a.address().is_some())?;
    Some((
        addr.address().unwrap_or_default().to_owned(),
        display_name(addr.name()),
    ))
}

/// A decoded display name, without the single quotes Outlook wraps some
/// names in (`"'Acme Support'"`).
fn display_name(name: Option<&str>) -> String {
    let name = name.unwrap_or_default().trim();
    name.strip_prefix('\'')
        .and_then(|n| n.strip_suffix('\''))
        .unwrap_or(name)
        .to_owned()
}

fn recipients(
    message: &Message<'_>,
    metadata: &mut HashMap<String, String>,
) -> Vec<IdentityHandle> {
    let mut out: Vec<IdentityHandle> = Vec::new();
    let all = message
        .all_to()
        .chain(message.all_cc())
        .flat_map(|a| a.iter());
    for addr in all {
        let Some(handle) = addr.address().and_then(|a| Handle::email(a).ok()) else {
            continue;
        };
        if out.iter().any(|r| r.value == handle.value()) {
            continue;
        }
        if out.len() == MAX_RECIPIENTS {
            metadata.insert("recipients_truncated".to_owned(), "true".to_owned());
            break;
        }
        out.push(omni_connector::handle::to_proto(
            &handle,
            &display_name(addr.name()),
            false,
        ));
    }
    out
}

/// A message id as kept: without brackets, no white space or control
/// characters, at most [`MAX_MESSAGE_ID_BYTES`].
/// The `Message-ID` of a header block (e.g. `BODY[HEADER.FIELDS
/// (MESSAGE-ID)]`), cleaned exactly as [`parse_message`] cleans it for the
/// provider message id, so a puller can skip what it already ingested
/// without fetching the body.
pub fn header_message_id(header: &[u8]) -> Option<String> {
    if header.len() > 64 * 1024 {
        return None;
    }
    let mut block = header.to_vec();
    block.extend_from_slice(b"\r\n\r\n");
    parse_mime(&block)
        .ok()
        .flatten()
        .and_then(|m| m.message_id().and_then(clean_id))
}

fn clean_id(id: &str) -> Option<String> {
    let id = id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (!id.is_empty()
        && id.len() <= MAX_MESSAGE_ID_BYTES
        && !id.chars().any(|c| c.is_whitespace() || c.is_control()))
    .then(|| id.to_owned())
}

/// Message ids of an `In-Reply-To` or `References` header, in header order.
/// Over `max`, keeps the first and the newest `max - 1`.
fn ids(value: &HeaderValue<'_>, max: usize) -> Vec<String> {
    let all: Vec<String> = match value {
        HeaderValue::Text(id) => clean_id(id).into_iter().collect(),
        HeaderValue::TextList(list) => list.iter().filter_map(|id| clean_id(id)).collect(),
        _ => Vec::new(),
    };
    if all.len() <= max || max == 0 {
        return all;
    }
    let mut kept = Vec::with_capacity(max);
    kept.push(all[0].clone());
    kept.extend_from_slice(&all[all.len() - (max - 1)..]);
    kept
}

/// The text and HTML bodies. Text is the text/plain parts joined (line
/// ends normalized to `\n`, `format=flowed` undone); without any, the HTML
/// parts reduced to text. Parts the parser lists as body but that are not
/// text (inline images) are skipped.
fn bodies(message: &Message<'_>) -> (String, String) {
    let mut text = String::new();
    let mut html = String::new();
    let push = |out: &mut String, s: &str| {
        if !out.is_empty() && !s.is_empty() {
            out.push('\n');
        }
        out.push_str(s);
    };
    for &id in &message.text_body {
        let Some(part) = message.parts.get(id as usize) else {
            continue;
        };
        match &part.body {
            PartType::Text(t) => {
                let ct = part.content_type();
                let param = |name: &str| {
                    ct.and_then(|ct| ct.attribute(name)).is_some_and(|v| {
                        v.trim().eq_ignore_ascii_case(if name == "format" {
                            "flowed"
                        } else {
                            "yes"
                        })
                    })
                };
                let plain = if param("format") {
                    unflow(t, param("delsp"))
                } else {
                    t.replace("\r\n", "\n")
                };
                push(&mut text, plain.trim_end());
            }
            PartType::Html(h) => push(&mut text, &html_to_text(h)),
            _ => {}
        }
    }
    for &id in &message.html_body {
        if let Some(PartType::Html(h)) = message.parts.get(id as usize).map(|p| &p.body) {
            push(&mut html, h);
        }
    }
    let start = text.len() - text.trim_start_matches(['\r', '\n']).len();
    text.drain(..start);
    (text, html)
}

/// Undoes RFC 3676 `format=flowed`: a line ending in a space continues on
/// the next line (without that space when `DelSp=yes`), and the space a
/// client stuffed before lines starting with a space, `>` or `From ` is
/// removed. Quoted (`>`) lines are kept as they are, and the signature
/// separator `-- ` never joins.
fn unflow(text: &str, delsp: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut joining = false;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let quoted = line.starts_with('>');
        if joining && quoted {
            out.push('\n');
        }
        let line = if quoted {
            line
        } else {
            line.strip_prefix(' ').unwrap_or(line)
        };
        if !quoted && line.ends_with(' ') && line != "-- " {
            out.push_str(if delsp { &line[..line.len() - 1] } else { line });
            joining = true;
        } else {
            out.push_str(line);
            out.push('\n');
            joining = false;
        }
    }
    out
}

/// The attachments as listed in the event, their bytes, and how many were
/// over the size limit.
fn attachments(
    message: &Message<'_>,
    raw: &[u8],
    limits: &ParseLimits,
) -> (Vec<Attachment>, Vec<AttachmentBody>, usize) {
    let mut listed = Vec::new();
    let mut bodies = Vec::new();
    let mut skipped = 0;
    for &id in &message.attachments {
        let Some(part) = message.parts.get(id as usize) else {
            continue;
        };
        let content_type = part.content_type();
        let name = part.attachment_name().map(file_name).unwrap_or_default();
        let (bytes, media_type): (Cow<'_, [u8]>, String) = match &part.body {
            PartType::Text(_) | PartType::Html(_) => {
                let explicit = !name.is_empty()
                    || part
                        .content_disposition()
                        .is_some_and(|d| d.is_attachment());
                if !explicit {
                    // Alternative renderings and report fragments
                    // (text/calendar, text/rfc822-headers) without a name.
                    continue;
                }
                let mut media_type = content_type
                    .map(media_type)
                    .unwrap_or_else(|| "text/plain".to_owned());
                if let Some(charset) = content_type.and_then(|ct| ct.attribute("charset")) {
                    let charset = charset.trim().to_ascii_lowercase();
                    if !charset.is_empty() && charset.bytes().all(is_token_byte) {
                        media_type = format!("{media_type}; charset={charset}");
                    }
                }
                (original_bytes(part, raw), media_type)
            }
            PartType::Binary(b) | PartType::InlineBinary(b) => (
                Cow::Borrowed(b.as_ref()),
                content_type
                    .map(media_type)
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
            ),
            PartType::Message(_) => (
                Cow::Borrowed(part.contents()),
                content_type
                    .map(media_type)
                    .filter(|t| t.starts_with("message/"))
                    .unwrap_or_else(|| "message/rfc822".to_owned()),
            ),
            PartType::Multipart(_) => continue,
        };
        let size = bytes.len() as u64;
        if bytes.len() > limits.max_attachment_bytes {
            skipped += 1;
            listed.push(Attachment {
                name,
                media_type,
                size,
                sha256: String::new(),
                uri: String::new(),
            });
            continue;
        }
        let sha256 = hex::encode(Sha256::digest(&bytes));
        listed.push(Attachment {
            name,
            media_type: media_type.clone(),
            size,
            sha256: sha256.clone(),
            uri: format!("omni-att://sha256/{sha256}"),
        });
        bodies.push(AttachmentBody {
            sha256,
            media_type,
            bytes: Bytes::from(bytes.into_owned()),
        });
    }
    (listed, bodies, skipped)
}

/// The bytes of a text part as sent (transfer encoding undone, charset
/// untouched), so a text attachment is stored as the file the sender
/// attached.
fn original_bytes<'a>(part: &'a MessagePart<'a>, raw: &'a [u8]) -> Cow<'a, [u8]> {
    let Some(body) = raw.get(part.offset_body as usize..part.offset_end as usize) else {
        return Cow::Borrowed(part.contents());
    };
    match part.encoding {
        mail_parser::Encoding::Base64 => Cow::Owned(
            MessageStream::new(body)
                .decode_base64_mime(b"")
                .1
                .into_owned(),
        ),
        mail_parser::Encoding::QuotedPrintable => Cow::Owned(
            MessageStream::new(body)
                .decode_quoted_printable_mime(b"")
                .1
                .into_owned(),
        ),
        mail_parser::Encoding::None => Cow::Borrowed(body),
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+')
}

/// `type/subtype`, lowercased, without parameters.
fn media_type(ct: &mail_parser::ContentType<'_>) -> String {
    let main = ct.ctype().trim().to_ascii_lowercase();
    match ct.subtype() {
        Some(sub) => format!("{main}/{}", sub.trim().to_ascii_lowercase()),
        None => main,
    }
}

/// A sender-supplied file name made safe to show and store: the last path
/// component only (`../../etc/passwd` and `C:\Users\x\a.pdf` lose their
/// directories), control characters removed, white space collapsed, at most
/// 256 characters; `.` and `..` become empty.
fn file_name(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let name = omni_model::normalize_display_name(last);
    if name == "." || name == ".." {
        String::new()
    } else {
        name
    }
}

/// Header fields classification reads, with raw (unfolded) values.
fn classification_headers(message: &Message<'_>) -> Vec<(String, String)> {
    const NAMES: &[&str] = &[
        "auto-submitted",
        "x-autoreply",
        "x-autorespond",
        "x-auto-response-suppress",
        "precedence",
        "list-id",
        "list-unsubscribe",
        "feedback-id",
        "content-language",
    ];
    let raw = message.raw_message.as_ref();
    message
        .root_part()
        .headers
        .iter()
        .filter(|h| {
            NAMES
                .iter()
                .any(|n| h.name.as_str().eq_ignore_ascii_case(n))
        })
        .map(|h| {
            let value = raw
                .get(h.offset_start as usize..h.offset_end as usize)
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let value: String = value
                .split(['\r', '\n'])
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            (h.name.as_str().to_owned(), value)
        })
        .collect()
}

/// The first tag of `Content-Language` (RFC 3282), the sender's mail
/// program's language: a hint for the customer-service rules. Only a
/// well-formed tag is kept, so a hostile header adds nothing.
fn content_language(headers: &[(String, String)]) -> Option<String> {
    let (_, value) = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-language"))?;
    let tag = value.split([',', ';', ' ']).next()?.trim();
    omni_model::is_language_tag(tag).then(|| tag.to_owned())
}

/// `s` cut to at most `max` bytes on a character boundary, and whether it
/// was cut.
fn truncate(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_owned(), false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_owned(), true)
}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn header_message_id_matches_the_full_parse() {
        let raw = b"From: a@example.com\r\nMessage-ID:  <abc.123@example.com> \r\nSubject: x\r\n\r\nbody\r\n";
        let parsed = parse_message(raw, "c", Timestamp::default(), &ParseLimits::DEFAULT).unwrap();
        assert_eq!(parsed.event.provider_message_id, "abc.123@example.com");
        assert_eq!(
            header_message_id(b"Message-ID:  <abc.123@example.com> \r\n").as_deref(),
            Some("abc.123@example.com")
        );
        assert_eq!(header_message_id(b"Message-ID: <a b@c>\r\n"), None);
        assert_eq!(header_message_id(b"\r\n"), None);
        assert_eq!(header_message_id(b""), None);
    }

    #[test]
    fn content_language_is_the_event_language_when_well_formed() {
        let parse = |headers: &str| {
            let raw = format!("From: a@example.com\r\n{headers}Subject: x\r\n\r\nbody\r\n");
            parse_message(
                raw.as_bytes(),
                "c",
                Timestamp::default(),
                &ParseLimits::DEFAULT,
            )
            .unwrap()
            .event
            .language
        };
        assert_eq!(parse("Content-Language: fa-IR\r\n"), "fa-IR");
        assert_eq!(parse("Content-Language: de, en\r\n"), "de");
        assert_eq!(parse(""), "", "no header, no language");
        assert_eq!(parse("Content-Language: <script>\r\n"), "");
        assert_eq!(
            parse(&format!("Content-Language: {}\r\n", "a".repeat(40))),
            ""
        );
    }
}
