//! The API channel's JSON message and its normalization into a
//! [`ConversationEvent`]: pure functions, unit tested and fuzzable.

use std::collections::BTreeMap;

use omni_model::{Handle, HandleKind, Region};
use omni_proto::{
    Timestamp,
    v1::{
        Attachment, ChannelKind, Content, ConversationEvent, Direction, EventKind, IdentityHandle,
        ThreadingHints,
    },
};
use serde::Deserialize;

/// Limits that keep one request's cost bounded (the body size itself is
/// limited by the daemon before the request reaches the channel).
pub const MAX_EXTERNAL_ID_BYTES: usize = 256;
pub const MAX_ATTACHMENTS: usize = 32;
pub const MAX_RECIPIENTS: usize = 32;
pub const MAX_SENDER_IDENTITIES: usize = 8;
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_KEY_BYTES: usize = 64;
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;

/// The request body senders post. Unknown fields are rejected, so a typo
/// (`txt`) is an error, not a silently empty message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiMessage {
    /// The sender's own id for this message; the idempotency key.
    pub external_id: String,
    pub sender: ApiHandle,
    #[serde(default)]
    pub recipients: Vec<ApiHandle>,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub html: String,
    #[serde(default)]
    pub subject: String,
    /// RFC 3339 time the person sent it.
    #[serde(
        default,
        deserialize_with = "omni_model::timestamp::deserialize_optional"
    )]
    pub sent_at: Option<Timestamp>,
    /// The sender system's conversation id, as a threading hint.
    #[serde(default)]
    pub conversation_id: String,
    /// External id of the message this one replies to.
    #[serde(default)]
    pub reply_to: String,
    #[serde(default)]
    pub attachments: Vec<ApiAttachment>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Other handles of the sender (an email typed into a form, a phone
    /// number from the customer's profile), for the threading service.
    #[serde(default)]
    pub sender_identities: Vec<ApiIdentity>,
    /// The sender's language as the posting system knows it (a BCP 47 tag
    /// such as `fa-IR`), a hint for the customer-service rules.
    #[serde(default)]
    pub language: String,
}

/// Another handle of the sender. `verified` is honoured only on channels
/// with `trust_sender = true`; elsewhere every claim is unverified, so it
/// is only ever a suggested link.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiIdentity {
    pub kind: String,
    pub value: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub verified: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiHandle {
    /// `email`, `phone`, `external`, `telegram`, `whatsapp`,
    /// `wechat_openid`, `wechat_unionid` or `chat_visitor`.
    pub kind: String,
    pub value: String,
    #[serde(default)]
    pub display_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiAttachment {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub media_type: String,
    #[serde(default)]
    pub size: u64,
    /// Lowercase hex SHA-256 of the content, when the sender knows it.
    #[serde(default)]
    pub sha256: String,
    /// Where the content can be fetched.
    pub url: String,
}

pub use omni_connector::ParseError;

/// What normalization needs to know about the channel.
#[derive(Debug, Clone)]
pub struct NormalizeOptions<'a> {
    pub channel_id: &'a str,
    pub default_region: Option<Region>,
    pub trust_sender: bool,
    pub received_at: Timestamp,
}

/// Parses and normalizes one request body.
pub fn parse(body: &[u8], options: &NormalizeOptions<'_>) -> Result<ConversationEvent, ParseError> {
    // serde would also accept a struct written as an array; a message is
    // only ever an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ParseError::new(
            "invalid_json",
            "body must be a JSON object",
        ));
    }
    // Plain serde first: tracking the path of every field costs about as
    // much as the parse itself, and only a refusal needs it, so a body that
    // fails is read again with the path tracked for the error message.
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let message = match ApiMessage::deserialize(&mut deserializer) {
        Ok(message) => message,
        Err(_) => return Err(refusal(body)),
    };
    deserializer.end().map_err(|e| {
        ParseError::new(
            "invalid_json",
            format!("trailing data after the JSON object: {e}"),
        )
    })?;
    normalize(message, options)
}

/// Why `body` is not an [`ApiMessage`], naming the field at fault.
fn refusal(body: &[u8]) -> ParseError {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, ApiMessage>(&mut deserializer) {
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                ParseError::new("invalid_json", format!("body is not valid JSON: {inner}"))
            } else {
                ParseError::new("invalid_field", format!("{path}: {inner}"))
            }
        }
        // Deserialization is deterministic; kept total all the same.
        Ok(_) => ParseError::new("invalid_json", "body is not a message"),
    }
}

/// Turns a well-formed message into the stream's event.
pub fn normalize(
    message: ApiMessage,
    options: &NormalizeOptions<'_>,
) -> Result<ConversationEvent, ParseError> {
    let external_id = message.external_id.trim();
    if external_id.is_empty() {
        return Err(ParseError::new(
            "invalid_field",
            "external_id: must not be empty",
        ));
    }
    if external_id.len() > MAX_EXTERNAL_ID_BYTES || external_id.chars().any(char::is_control) {
        return Err(ParseError::new(
            "invalid_field",
            format!("external_id: at most {MAX_EXTERNAL_ID_BYTES} bytes, no control characters"),
        ));
    }
    if message.text.trim().is_empty()
        && message.html.trim().is_empty()
        && message.attachments.is_empty()
    {
        return Err(ParseError::new(
            "invalid_field",
            "text: a message needs text, html or attachments",
        ));
    }
    check_count("recipients", message.recipients.len(), MAX_RECIPIENTS)?;
    check_count("attachments", message.attachments.len(), MAX_ATTACHMENTS)?;
    check_count(
        "sender_identities",
        message.sender_identities.len(),
        MAX_SENDER_IDENTITIES,
    )?;
    check_count("metadata", message.metadata.len(), MAX_METADATA_ENTRIES)?;
    if !message.language.is_empty() && !omni_model::is_language_tag(&message.language) {
        return Err(ParseError::new(
            "invalid_field",
            format!(
                "language: a language tag such as `fa-IR`: a letter, then letters, digits, `-` or `_`, at most {} bytes",
                omni_model::MAX_LANGUAGE_TAG_BYTES
            ),
        ));
    }
    for (key, value) in &message.metadata {
        if key.len() > MAX_METADATA_KEY_BYTES || value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(ParseError::new(
                "invalid_field",
                format!(
                    "metadata.{key}: keys at most {MAX_METADATA_KEY_BYTES} bytes, values at most {MAX_METADATA_VALUE_BYTES}"
                ),
            ));
        }
    }

    let sender = handle("sender", &message.sender, options, options.trust_sender)?;
    let recipients = message
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| handle(&format!("recipients[{i}]"), r, options, false))
        .collect::<Result<Vec<_>, _>>()?;
    let sender_identities = message
        .sender_identities
        .iter()
        .enumerate()
        .map(|(i, claim)| {
            let raw = ApiHandle {
                kind: claim.kind.clone(),
                value: claim.value.clone(),
                display_name: claim.display_name.clone(),
            };
            let verified = claim.verified && options.trust_sender;
            handle(&format!("sender_identities[{i}]"), &raw, options, verified)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let attachments = message
        .attachments
        .into_iter()
        .enumerate()
        .map(|(i, a)| attachment(i, a))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(ConversationEvent {
        event_id: omni_model::event_id(options.channel_id, external_id).to_string(),
        channel_id: options.channel_id.to_owned(),
        channel_kind: ChannelKind::Api as i32,
        direction: Direction::Inbound as i32,
        kind: EventKind::Message as i32,
        sender: Some(sender),
        recipients,
        provider_message_id: external_id.to_owned(),
        sent_at: message.sent_at,
        received_at: Some(options.received_at),
        ingested_at: Some(options.received_at),
        content: Some(Content {
            text: message.text,
            html: message.html,
            subject: message.subject.trim().to_owned(),
            new_text: String::new(),
            attachments,
        }),
        threading: Some(ThreadingHints {
            provider_chat_id: message.conversation_id,
            reply_to_provider_message_id: message.reply_to,
            ..Default::default()
        }),
        provider_metadata: message.metadata.into_iter().collect(),
        delivery: None,
        sender_identities,
        language: message.language,
        ..Default::default()
    })
}

fn check_count(field: &str, count: usize, max: usize) -> Result<(), ParseError> {
    if count > max {
        return Err(ParseError::new(
            "invalid_field",
            format!("{field}: at most {max} entries, got {count}"),
        ));
    }
    Ok(())
}

fn handle(
    field: &str,
    raw: &ApiHandle,
    options: &NormalizeOptions<'_>,
    verified: bool,
) -> Result<IdentityHandle, ParseError> {
    let invalid = |reason: String| ParseError::new("invalid_field", format!("{field}: {reason}"));
    let kind: HandleKind = raw.kind.parse().map_err(|_| {
        invalid(format!(
            "unknown handle kind `{}`",
            raw.kind.chars().take(32).collect::<String>()
        ))
    })?;
    let handle = match kind {
        HandleKind::Email => Handle::email(&raw.value),
        HandleKind::Phone => Handle::phone(&raw.value, options.default_region),
        // Ids the posting system invents are only unique within its channel.
        HandleKind::External | HandleKind::ChatVisitor => {
            Handle::provider(kind, &raw.value, Some(options.channel_id))
        }
        other => Handle::provider(other, &raw.value, None),
    }
    .map_err(|e| invalid(e.to_string()))?;
    Ok(omni_connector::handle::to_proto(
        &handle,
        &raw.display_name,
        verified,
    ))
}

fn attachment(index: usize, raw: ApiAttachment) -> Result<Attachment, ParseError> {
    let sha256 = raw.sha256.trim().to_ascii_lowercase();
    if !sha256.is_empty() && (sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ParseError::new(
            "invalid_field",
            format!("attachments[{index}].sha256: not a hex SHA-256"),
        ));
    }
    if !(raw.url.starts_with("https://") || raw.url.starts_with("http://")) || raw.url.len() > 2048
    {
        return Err(ParseError::new(
            "invalid_field",
            format!("attachments[{index}].url: an http(s) URL of at most 2048 bytes"),
        ));
    }
    Ok(Attachment {
        name: omni_model::normalize_display_name(&raw.name),
        media_type: raw.media_type.trim().to_ascii_lowercase(),
        size: raw.size,
        sha256,
        uri: raw.url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use omni_proto::v1::HandleKind as ProtoKind;

    fn options() -> NormalizeOptions<'static> {
        NormalizeOptions {
            channel_id: "acme-api",
            default_region: Some("IR".parse().unwrap()),
            trust_sender: false,
            received_at: Timestamp {
                seconds: 1_763_884_800,
                nanos: 0,
            },
        }
    }

    #[test]
    fn normalizes_a_full_message() {
        let body = include_bytes!("../tests/payloads/full.json");
        let event = parse(body, &options()).unwrap();
        assert_eq!(
            event.event_id,
            omni_model::event_id("acme-api", "ord-7781/msg-1").to_string()
        );
        assert_eq!(event.provider_message_id, "ord-7781/msg-1");
        let sender = event.sender.as_ref().unwrap();
        assert_eq!(sender.kind, ProtoKind::Phone as i32);
        assert_eq!(sender.value, "+989121234567");
        assert_eq!(sender.display_name, "سارا محمدی");
        assert!(!sender.verified);
        assert_eq!(event.recipients[0].value, "support@xn--bcher-kva.example");
        let content = event.content.as_ref().unwrap();
        assert_eq!(content.text, "سلام، سفارش من هنوز نرسیده است");
        assert_eq!(content.attachments[0].sha256.len(), 64);
        assert_eq!(
            event.threading.as_ref().unwrap().provider_chat_id,
            "ticket-19"
        );
        assert_eq!(event.provider_metadata["order"], "7781");
        assert_eq!(event.sent_at.as_ref().unwrap().seconds, 1_763_884_740);
    }

    #[test]
    fn the_language_is_kept_when_well_formed_and_refused_otherwise() {
        let body = |language: &str| {
            format!(
                r#"{{"external_id":"a","sender":{{"kind":"email","value":"a@b.example"}},"text":"hi","language":"{language}"}}"#
            )
        };
        let event = parse(body("fa-IR").as_bytes(), &options()).unwrap();
        assert_eq!(event.language, "fa-IR");
        let event = parse(body("").as_bytes(), &options()).unwrap();
        assert_eq!(event.language, "");
        let error = parse(body("fa IR").as_bytes(), &options()).unwrap_err();
        assert_eq!(error.code, "invalid_field");
        assert!(error.message.starts_with("language:"), "{}", error.message);
    }

    #[test]
    fn sender_identities_are_verified_only_on_trusted_channels() {
        let body = br#"{"external_id":"a","sender":{"kind":"email","value":"Ana@Example.com"},
            "sender_identities":[{"kind":"phone","value":"+1 415 555 0134","verified":true},
                                 {"kind":"email","value":"ana.lima@example.org"}],
            "text":"hi"}"#;
        let event = parse(body, &options()).unwrap();
        let claims = &event.sender_identities;
        assert_eq!(claims.len(), 2);
        assert_eq!(claims[0].kind, ProtoKind::Phone as i32);
        assert_eq!(claims[0].value, "+14155550134");
        assert!(!claims[0].verified, "an untrusted channel proves nothing");
        let mut opts = options();
        opts.trust_sender = true;
        let event = parse(body, &opts).unwrap();
        assert!(event.sender_identities[0].verified);
        assert!(!event.sender_identities[1].verified);

        let bad = br#"{"external_id":"a","sender":{"kind":"email","value":"a@b.example"},
            "sender_identities":[{"kind":"fax","value":"1"}],"text":"hi"}"#;
        let error = parse(bad, &options()).unwrap_err();
        assert!(
            error.message.contains("sender_identities[0]"),
            "{}",
            error.message
        );
    }

    #[test]
    fn external_ids_are_scoped_by_channel_and_trust_marks_verified() {
        let body =
            br#"{"external_id":"a","sender":{"kind":"external","value":"user-1"},"text":"hi"}"#;
        let mut opts = options();
        opts.trust_sender = true;
        let event = parse(body, &opts).unwrap();
        let sender = event.sender.unwrap();
        assert_eq!((sender.scope.as_str(), sender.verified), ("acme-api", true));
    }

    #[test]
    fn same_external_id_same_event_id() {
        let body =
            br#"{"external_id":"x-1","sender":{"kind":"email","value":"A@B.example"},"text":"hi"}"#;
        let first = parse(body, &options()).unwrap();
        let mut later = options();
        later.received_at.seconds += 3600;
        assert_eq!(first.event_id, parse(body, &later).unwrap().event_id);
    }

    #[test]
    fn rejections_name_the_field() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"{", "invalid_json", ""),
            (b"[]", "invalid_json", ""),
            (br#"{"external_id":"1","sender":{"kind":"email","value":"a@b.c"},"text":"x"} {}"#, "invalid_json", "trailing"),
            (br#"{"sender":{"kind":"email","value":"a@b.c"},"text":"x"}"#, "invalid_field", "external_id"),
            (br#"{"external_id":"1","sender":{"kind":"email","value":"a@b.c"},"txt":"x"}"#, "invalid_field", "txt"),
            (br#"{"external_id":"1","sender":{"kind":"fax","value":"1"},"text":"x"}"#, "invalid_field", "sender"),
            (br#"{"external_id":"1","sender":{"kind":"phone","value":"12"},"text":"x"}"#, "invalid_field", "sender"),
            (br#"{"external_id":" ","sender":{"kind":"email","value":"a@b.c"},"text":"x"}"#, "invalid_field", "external_id"),
            (br#"{"external_id":"1","sender":{"kind":"email","value":"a@b.c"}}"#, "invalid_field", "text"),
            (br#"{"external_id":1,"sender":{"kind":"email","value":"a@b.c"},"text":"x"}"#, "invalid_field", "external_id"),
            (br#"{"external_id":"1","sender":{"kind":"email","value":"a@b.c"},"text":"x","sent_at":"yesterday"}"#, "invalid_field", "sent_at"),
            (br#"{"external_id":"1","sender":{"kind":"email","value":"a@b.c"},"attachments":[{"url":"file:///etc/passwd"}]}"#, "invalid_field", "attachments[0].url"),
        ];
        for (body, code, field) in cases {
            let err = parse(body, &options()).unwrap_err();
            assert_eq!(err.code, *code, "{}: {err}", String::from_utf8_lossy(body));
            assert!(
                err.message.contains(field),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn hostile_bodies_never_panic() {
        let deep = "[".repeat(100_000);
        let _ = parse(deep.as_bytes(), &options());
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let seed = include_bytes!("../tests/payloads/full.json");
        for _ in 0..5000 {
            let mut body = seed.to_vec();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % body.len();
                body[at] = (state >> 32) as u8;
            }
            let _ = parse(&body, &options());
        }
    }
}
