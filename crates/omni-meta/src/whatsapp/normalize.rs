//! A WhatsApp Business Cloud API webhook POST (its [`Envelope`]) to events.
//! Pure: no I/O, no clock.
//!
//! Only `changes[].field == "messages"` carries messages and delivery
//! statuses; every other field (template reviews, account updates...) is
//! dead-lettered as `unsupported_field` rather than acknowledged and lost.
//! A change names the phone number it is for (`metadata.phone_number_id`);
//! one for another number of the account is `other_phone_number`.
//!
//! Inside a change every message and status is read on its own, so one
//! Omnid cannot read is one [`Unreadable`] (with that item's own JSON)
//! while the rest of the POST is appended.
//!
//! - Messages become `EVENT_KIND_MESSAGE` from the customer's wa_id, with
//!   the wamid as provider message id: Meta redelivers a POST it thinks
//!   failed, and the redelivery gets the same event ids. Files are named
//!   by their Graph media id ([`graph_media`]) and downloaded once the
//!   message is durable. Reactions and system notices (a changed number)
//!   are `EVENT_KIND_ACTIVITY`.
//! - Statuses of our replies become `EVENT_KIND_DELIVERY_STATUS`, one
//!   event per (wamid, status), tied to the outbound event through
//!   `biz_opaque_callback_data`, where our senders put its event id.
//!
//! Order: events and dead letters each keep the POST's order: entry by
//! entry, change by change, and within a change its messages, then its
//! statuses, then its webhook-level errors. Meta gives no order across
//! POSTs, so what one POST lists is at least appended as listed.

use std::collections::HashMap;

use omni_connector::{Inbound, MediaRef, ParseError, Unreadable};
use omni_model::{Handle, HandleKind};
use omni_proto::{
    Timestamp,
    v1::{
        Activity, Attachment, ChannelKind, Content, ConversationEvent, DeliveryState,
        DeliveryStatus, Direction, EventKind, ThreadingHints,
    },
};
use serde::{Deserialize, de::IgnoredAny};
use serde_json::value::RawValue;

use crate::{
    envelope::{Change, Envelope},
    media::graph_media,
};

/// The one `changes[].field` that carries messages and statuses.
pub const MESSAGES_FIELD: &str = "messages";

/// Longest wa_id taken as a sender: E.164 numbers have at most 15
/// digits; the margin is for ids Meta may lengthen.
pub const MAX_WA_ID_DIGITS: usize = 20;

/// Longest wamid or media id taken. Real ones are under 100 bytes; a
/// longer one is not Meta's and would only bloat keys and logs.
pub const MAX_ID_BYTES: usize = 512;

/// Shared contacts listed in a message's text; the rest are only in the
/// `whatsapp.contacts` metadata, so a hostile array cannot grow the text.
pub const MAX_CONTACTS_LISTED: usize = 20;

/// Phone numbers listed per shared contact, for the same reason.
const MAX_PHONES_LISTED: usize = 10;

/// Longest provider text copied into a dead letter's message.
const MAX_SHOWN_CHARS: usize = 200;

/// Every code of the [`Unreadable`]s [`normalize`] returns.
pub const CODES: [&str; 10] = [
    "unsupported_field",
    "other_phone_number",
    "invalid_change",
    "invalid_message",
    "invalid_message_id",
    "invalid_sender",
    "unsupported_message",
    "invalid_status",
    "unsupported_status",
    "whatsapp_error",
];

/// What normalization needs besides the POST.
#[derive(Debug, Clone, Copy)]
pub struct WaContext<'a> {
    pub channel_id: &'a str,
    /// The channel's phone number id: the only one whose changes it reads.
    pub phone_number_id: &'a str,
    /// When the POST reached us: `received_at` and `ingested_at` of every
    /// event.
    pub received_at: Timestamp,
}

/// The `uri` prefix of an attachment still on WhatsApp's servers,
/// followed by its media id.
pub const MEDIA_URI_PREFIX: &str = "whatsapp-media:";

/// The events and dead letters of one POST, each in the POST's order
/// (see the module documentation).
pub fn normalize(envelope: &Envelope<'_>, cx: &WaContext<'_>) -> (Vec<Inbound>, Vec<Unreadable>) {
    let mut out = Output::default();
    for entry in &envelope.entry {
        for change in &entry.changes {
            read_change(&entry.id, change, cx, &mut out);
        }
        // Messenger's shape in a WhatsApp envelope: not ours to read, but
        // not to be dropped either.
        for item in &entry.messaging {
            out.dead(
                item.get(),
                ParseError::new(
                    "unsupported_field",
                    "a `messaging` item in a WhatsApp Business Account envelope",
                ),
            );
        }
    }
    (out.events, out.unreadable)
}

#[derive(Default)]
struct Output {
    events: Vec<Inbound>,
    unreadable: Vec<Unreadable>,
}

impl Output {
    fn dead(&mut self, raw: &str, error: ParseError) {
        self.unreadable.push(Unreadable {
            error,
            raw: raw.as_bytes().to_vec(),
        });
    }
}

/// One `changes[].value` of the `messages` field.
#[derive(Deserialize)]
struct ChangeValue<'a> {
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default, borrow)]
    contacts: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow)]
    messages: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow)]
    statuses: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow)]
    errors: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    display_phone_number: Option<String>,
    phone_number_id: String,
}

/// A `value.contacts[]` item: who sent the change's messages.
#[derive(Deserialize)]
struct Contact {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    profile: Option<Profile>,
}

#[derive(Deserialize)]
struct Profile {
    #[serde(default)]
    name: Option<String>,
}

/// What every item of one change shares.
struct Scope<'c> {
    cx: &'c WaContext<'c>,
    business_account_id: &'c str,
    phone_number_id: &'c str,
    display_phone_number: &'c str,
    contacts: Vec<Contact>,
}

impl Scope<'_> {
    /// The profile name of `wa_id`: its contact's, or the only contact's
    /// (Meta sends one contact per change and does not always repeat its
    /// wa_id in the same form).
    fn display_name(&self, wa_id: &str) -> &str {
        fn named(contact: &Contact) -> Option<&str> {
            contact.profile.as_ref().and_then(|p| p.name.as_deref())
        }
        self.contacts
            .iter()
            .find(|c| c.wa_id.as_deref() == Some(wa_id))
            .and_then(named)
            .or_else(|| match self.contacts.as_slice() {
                [only] => named(only),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The metadata every event of the change carries.
    fn metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::new();
        metadata.insert(
            "whatsapp.phone_number_id".to_owned(),
            self.phone_number_id.to_owned(),
        );
        metadata.insert(
            "whatsapp.display_phone_number".to_owned(),
            self.display_phone_number.to_owned(),
        );
        if !self.business_account_id.is_empty() {
            metadata.insert(
                "whatsapp.business_account_id".to_owned(),
                self.business_account_id.to_owned(),
            );
        }
        metadata
    }
}

fn read_change(
    business_account_id: &str,
    change: &Change<'_>,
    cx: &WaContext<'_>,
    out: &mut Output,
) {
    if change.field != MESSAGES_FIELD {
        out.dead(
            &change_json(change),
            ParseError::new(
                "unsupported_field",
                format!("the {:?} field is not ingested", shown(&change.field)),
            ),
        );
        return;
    }
    let Some(raw) = change.value else {
        out.dead(
            &change_json(change),
            ParseError::new("invalid_change", "a `messages` change without a value"),
        );
        return;
    };
    let value: ChangeValue<'_> = match object(raw, "invalid_change") {
        Ok(value) => value,
        Err(e) => {
            out.dead(&change_json(change), e);
            return;
        }
    };
    let Some(metadata) = value.metadata else {
        out.dead(
            &change_json(change),
            ParseError::new(
                "invalid_change",
                "the value has no `metadata.phone_number_id`",
            ),
        );
        return;
    };
    if metadata.phone_number_id != cx.phone_number_id {
        out.dead(
            &change_json(change),
            ParseError::new(
                "other_phone_number",
                format!(
                    "the change is for phone number id {:?}; this channel reads {:?}",
                    shown(&metadata.phone_number_id),
                    cx.phone_number_id
                ),
            ),
        );
        return;
    }
    let scope = Scope {
        cx,
        business_account_id,
        phone_number_id: &metadata.phone_number_id,
        display_phone_number: metadata.display_phone_number.as_deref().unwrap_or_default(),
        // A contact that does not read only costs its display name.
        contacts: value
            .contacts
            .unwrap_or_default()
            .iter()
            .filter_map(|c| serde_json::from_str(c.get()).ok())
            .collect(),
    };
    for raw in value.messages.unwrap_or_default() {
        match message(raw, &scope) {
            Ok(inbound) => out.events.push(inbound),
            Err(error) => out.dead(raw.get(), error),
        }
    }
    for raw in value.statuses.unwrap_or_default() {
        match status(raw, &scope) {
            Ok(event) => out.events.push(Inbound::new(event)),
            Err(error) => out.dead(raw.get(), error),
        }
    }
    for raw in value.errors.unwrap_or_default() {
        let text = serde_json::from_str::<WaError>(raw.get())
            .map(|e| e.describe())
            .unwrap_or_default();
        out.dead(
            raw.get(),
            ParseError::new(
                "whatsapp_error",
                format!("WhatsApp reports an error: {}", shown(&text)),
            ),
        );
    }
}

/// A change as JSON, for its dead letter: the envelope keeps its parts,
/// not its text.
fn change_json(change: &Change<'_>) -> String {
    let field = serde_json::to_string(&change.field).unwrap_or_else(|_| "\"\"".to_owned());
    let value = change.value.map_or("null", RawValue::get);
    format!("{{\"field\":{field},\"value\":{value}}}")
}

/// One `messages[]` item. The type's own object is kept raw and read only
/// for the message's `type`, so a stray field of another type cannot fail
/// it.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default)]
    from: String,
    #[serde(default)]
    id: String,
    #[serde(default, borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    context: Option<MessageContext>,
    #[serde(default)]
    referral: Option<Referral>,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default, borrow)]
    errors: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    image: Option<&'a RawValue>,
    #[serde(default, borrow)]
    video: Option<&'a RawValue>,
    #[serde(default, borrow)]
    audio: Option<&'a RawValue>,
    #[serde(default, borrow)]
    document: Option<&'a RawValue>,
    #[serde(default, borrow)]
    sticker: Option<&'a RawValue>,
    #[serde(default, borrow)]
    location: Option<&'a RawValue>,
    #[serde(default, borrow)]
    contacts: Option<&'a RawValue>,
    #[serde(default, borrow)]
    interactive: Option<&'a RawValue>,
    #[serde(default, borrow)]
    button: Option<&'a RawValue>,
    #[serde(default, borrow)]
    order: Option<&'a RawValue>,
    #[serde(default, borrow)]
    reaction: Option<&'a RawValue>,
    #[serde(default, borrow)]
    system: Option<&'a RawValue>,
}

/// `context`: the message replied to, or how it was forwarded.
#[derive(Deserialize)]
struct MessageContext {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    forwarded: Option<bool>,
    #[serde(default)]
    frequently_forwarded: Option<bool>,
    #[serde(default)]
    referred_product: Option<ReferredProduct>,
}

#[derive(Deserialize)]
struct ReferredProduct {
    #[serde(default)]
    catalog_id: Option<String>,
    #[serde(default)]
    product_retailer_id: Option<String>,
}

/// `referral`: the Click to WhatsApp ad the conversation started from.
#[derive(Deserialize)]
struct Referral {
    #[serde(default)]
    source_url: Option<String>,
    #[serde(default)]
    source_type: Option<String>,
    #[serde(default)]
    source_id: Option<String>,
    #[serde(default)]
    headline: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    ctwa_clid: Option<String>,
}

/// An error object of WhatsApp (on a status, an unsupported message, or
/// a whole change).
#[derive(Deserialize)]
struct WaError {
    #[serde(default)]
    code: Option<Scalar>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error_data: Option<ErrorData>,
}

#[derive(Deserialize)]
struct ErrorData {
    #[serde(default)]
    details: Option<String>,
}

impl WaError {
    /// `{code}: {title} ({details})`, leaving out what is missing.
    fn describe(&self) -> String {
        let code = self.code.as_ref().map(Scalar::text).unwrap_or_default();
        let title = non_empty(self.title.as_deref())
            .or_else(|| non_empty(self.message.as_deref()))
            .unwrap_or_default();
        let mut text = match (code.is_empty(), title.is_empty()) {
            (false, false) => format!("{code}: {title}"),
            (false, true) => code,
            _ => title.to_owned(),
        };
        if let Some(details) =
            non_empty(self.error_data.as_ref().and_then(|d| d.details.as_deref()))
        {
            if text.is_empty() {
                text = details.to_owned();
            } else {
                text = format!("{text} ({details})");
            }
        }
        text
    }
}

/// A JSON scalar where Meta's documentation and its payloads disagree on
/// the type (a code, a coordinate, a timestamp).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Int(n) => n.to_string(),
            Self::Float(x) => x.to_string(),
        }
    }
}

/// What a message says, gathered per type.
#[derive(Default)]
struct Body {
    text: String,
    attachments: Vec<Attachment>,
    media: Vec<MediaRef>,
    metadata: HashMap<String, String>,
    activity: Option<Activity>,
    reply_to: Option<String>,
}

impl Body {
    fn meta(&mut self, key: &str, value: impl Into<String>) {
        self.metadata.insert(key.to_owned(), value.into());
    }

    /// Sets `key` when `value` is present and not blank.
    fn meta_opt(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = non_empty(value) {
            self.meta(key, value);
        }
    }
}

fn message(raw: &RawValue, scope: &Scope<'_>) -> Result<Inbound, ParseError> {
    let message: Message<'_> = object(raw, "invalid_message")?;
    check_id(&message.id, "invalid_message_id", "message id")?;
    let sender = wa_id_handle(&message.from)?;

    let mut body = Body::default();
    let kind = message_body(&message, &mut body)?;
    body.meta("whatsapp.type", message.kind.as_str());
    body.metadata.extend(scope.metadata());
    if let Some(context) = &message.context {
        body.meta_opt("whatsapp.context_from", context.from.as_deref());
        if context.forwarded == Some(true) {
            body.meta("whatsapp.forwarded", "true");
        }
        if context.frequently_forwarded == Some(true) {
            body.meta("whatsapp.frequently_forwarded", "true");
        }
        if let Some(product) = &context.referred_product {
            body.meta_opt(
                "whatsapp.referred_product.catalog_id",
                product.catalog_id.as_deref(),
            );
            body.meta_opt(
                "whatsapp.referred_product.product_retailer_id",
                product.product_retailer_id.as_deref(),
            );
        }
    }
    if let Some(referral) = &message.referral {
        for (key, value) in [
            ("whatsapp.referral.source_url", &referral.source_url),
            ("whatsapp.referral.source_type", &referral.source_type),
            ("whatsapp.referral.source_id", &referral.source_id),
            ("whatsapp.referral.headline", &referral.headline),
            ("whatsapp.referral.body", &referral.body),
            ("whatsapp.referral.media_type", &referral.media_type),
            ("whatsapp.referral.ctwa_clid", &referral.ctwa_clid),
        ] {
            body.meta_opt(key, value.as_deref());
        }
    }
    body.meta_opt("whatsapp.group_id", message.group_id.as_deref());

    // A reaction points at the reacted message; anything else at the
    // message it replies to.
    let reply_to = body.reply_to.take().unwrap_or_else(|| {
        message
            .context
            .as_ref()
            .and_then(|c| non_empty(c.id.as_deref()))
            .unwrap_or_default()
            .to_owned()
    });
    let content = if body.activity.is_some() {
        None
    } else {
        Some(Content {
            text: body.text,
            attachments: body.attachments,
            ..Default::default()
        })
    };
    let cx = scope.cx;
    let event = ConversationEvent {
        event_id: omni_model::event_id(cx.channel_id, &message.id).to_string(),
        channel_id: cx.channel_id.to_owned(),
        channel_kind: ChannelKind::Whatsapp as i32,
        direction: Direction::Inbound as i32,
        kind: kind as i32,
        sender: Some(omni_connector::handle::to_proto(
            &sender,
            scope.display_name(&message.from),
            true,
        )),
        provider_message_id: message.id,
        sent_at: unix_seconds(message.timestamp),
        received_at: Some(cx.received_at),
        ingested_at: Some(cx.received_at),
        content,
        threading: Some(ThreadingHints {
            provider_chat_id: sender.value().to_owned(),
            reply_to_provider_message_id: reply_to,
            ..Default::default()
        }),
        provider_metadata: body.metadata,
        activity: body.activity,
        ..Default::default()
    };
    Ok(Inbound::new(event).with_media(body.media))
}

/// Fills `body` from the message's own object; the event's kind.
fn message_body(message: &Message<'_>, body: &mut Body) -> Result<EventKind, ParseError> {
    let kind = message.kind.as_str();
    match kind {
        "text" => {
            let text: Text = part(message.text, kind)?;
            body.text = text.body;
        }
        "image" => media(part(message.image, kind)?, body)?,
        "video" => media(part(message.video, kind)?, body)?,
        "audio" => media(part(message.audio, kind)?, body)?,
        "document" => media(part(message.document, kind)?, body)?,
        "sticker" => media(part(message.sticker, kind)?, body)?,
        "location" => location(part(message.location, kind)?, body)?,
        "contacts" => {
            let raw = message.contacts.ok_or_else(|| missing_part(kind))?;
            contacts(raw, body)?;
        }
        "interactive" => interactive(part(message.interactive, kind)?, body)?,
        "button" => {
            let button: Button = part(message.button, kind)?;
            body.meta_opt("whatsapp.button.payload", button.payload.as_deref());
            body.text = button.text;
        }
        "order" => order(part(message.order, kind)?, body)?,
        "reaction" => {
            reaction(part(message.reaction, kind)?, body)?;
            return Ok(EventKind::Activity);
        }
        "system" => {
            system(part(message.system, kind)?, body);
            return Ok(EventKind::Activity);
        }
        _ => {
            let errors: Vec<String> = message
                .errors
                .iter()
                .flatten()
                .filter_map(|e| serde_json::from_str::<WaError>(e.get()).ok())
                .map(|e| e.describe())
                .filter(|e| !e.is_empty())
                .take(3)
                .collect();
            let mut text = format!("WhatsApp message type {:?} is not ingested", shown(kind));
            if !errors.is_empty() {
                text = format!("{text} ({})", shown(&errors.join("; ")));
            }
            return Err(ParseError::new("unsupported_message", text));
        }
    }
    Ok(EventKind::Message)
}

/// The message's object of its own type, read now that the type is known.
fn part<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>, kind: &str) -> Result<T, ParseError> {
    let raw = raw.ok_or_else(|| missing_part(kind))?;
    object(raw, "invalid_message")
        .map_err(|e| ParseError::new("invalid_message", format!("`{kind}`: {}", e.message)))
}

/// `raw` read as `T`, which must be a JSON object: serde would also fill a
/// struct from an array, which Meta never sends for one.
fn object<'a, T: Deserialize<'a>>(raw: &'a RawValue, code: &'static str) -> Result<T, ParseError> {
    if !raw.get().starts_with('{') {
        return Err(ParseError::new(code, "not a JSON object"));
    }
    serde_json::from_str(raw.get()).map_err(|e| ParseError::new(code, shown(&e.to_string())))
}

fn missing_part(kind: &str) -> ParseError {
    ParseError::new(
        "invalid_message",
        format!("a {kind} message without its `{kind}` object"),
    )
}

#[derive(Deserialize)]
struct Text {
    body: String,
}

/// `image`, `video`, `audio`, `document` and `sticker` objects.
#[derive(Deserialize)]
struct Media {
    #[serde(default)]
    id: String,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    voice: Option<bool>,
    #[serde(default)]
    animated: Option<bool>,
}

fn media(media: Media, body: &mut Body) -> Result<(), ParseError> {
    let id = media.id.trim();
    check_id(id, "invalid_message", "media id")?;
    let media_type = non_empty(media.mime_type.as_deref()).unwrap_or("application/octet-stream");
    let index = u32::try_from(body.attachments.len()).unwrap_or(u32::MAX);
    // The attachment's `sha256` is the stored file's hex hash, empty until
    // the media worker has stored it (the stream's contract); Meta's own
    // (base64 in its payloads) goes in the metadata.
    body.attachments.push(Attachment {
        name: media.filename.clone().unwrap_or_default(),
        media_type: media_type.to_owned(),
        size: 0,
        sha256: String::new(),
        // Until the file is stored, the attachment names WhatsApp's media
        // id, as other channels name their provider's reference.
        uri: format!("{MEDIA_URI_PREFIX}{id}"),
    });
    body.media.push(MediaRef {
        attachment: index,
        source: graph_media(id),
    });
    body.meta("whatsapp.media_id", id);
    body.meta_opt("whatsapp.media_sha256", media.sha256.as_deref());
    if media.voice == Some(true) {
        body.meta("whatsapp.voice", "true");
    }
    if let Some(animated) = media.animated {
        body.meta("whatsapp.sticker.animated", animated.to_string());
    }
    body.text = media.caption.unwrap_or_default();
    Ok(())
}

#[derive(Deserialize)]
struct Location {
    #[serde(default)]
    latitude: Option<Scalar>,
    #[serde(default)]
    longitude: Option<Scalar>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

fn location(location: Location, body: &mut Body) -> Result<(), ParseError> {
    let latitude = coordinate(location.latitude.as_ref(), 90.0, "latitude")?;
    let longitude = coordinate(location.longitude.as_ref(), 180.0, "longitude")?;
    let place = [location.name.as_deref(), location.address.as_deref()]
        .into_iter()
        .filter_map(non_empty)
        .collect::<Vec<_>>()
        .join(", ");
    body.text = if place.is_empty() {
        format!("Location: ({latitude}, {longitude})")
    } else {
        format!("Location: {place} ({latitude}, {longitude})")
    };
    body.meta("whatsapp.location.latitude", latitude);
    body.meta("whatsapp.location.longitude", longitude);
    body.meta_opt("whatsapp.location.name", location.name.as_deref());
    body.meta_opt("whatsapp.location.address", location.address.as_deref());
    body.meta_opt("whatsapp.location.url", location.url.as_deref());
    Ok(())
}

/// A latitude or longitude within `limit` degrees, as written.
fn coordinate(value: Option<&Scalar>, limit: f64, name: &str) -> Result<String, ParseError> {
    let number = match value {
        Some(Scalar::Float(x)) => Some(*x),
        Some(Scalar::Int(n)) => i32::try_from(*n).ok().map(f64::from),
        Some(Scalar::Text(text)) => text.trim().parse::<f64>().ok(),
        None => None,
    };
    match (number, value) {
        (Some(x), Some(value)) if x.is_finite() && x.abs() <= limit => {
            Ok(value.text().trim().to_owned())
        }
        _ => Err(ParseError::new(
            "invalid_message",
            format!("the location's {name} is missing or not a coordinate"),
        )),
    }
}

/// A shared contact (`contacts[]` of a `contacts` message). Only what the
/// text lists is read; the whole array is kept in the metadata.
#[derive(Deserialize)]
struct SharedContact {
    #[serde(default)]
    name: Option<ContactName>,
    #[serde(default)]
    phones: Option<Vec<ContactPhone>>,
}

#[derive(Deserialize)]
struct ContactName {
    #[serde(default)]
    formatted_name: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
}

#[derive(Deserialize)]
struct ContactPhone {
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    wa_id: Option<String>,
}

fn contacts(raw: &RawValue, body: &mut Body) -> Result<(), ParseError> {
    let shared: Vec<SharedContact> = serde_json::from_str(raw.get()).map_err(|e| {
        ParseError::new(
            "invalid_message",
            format!("`contacts`: {}", shown(&e.to_string())),
        )
    })?;
    let mut lines = Vec::new();
    for contact in shared.iter().take(MAX_CONTACTS_LISTED) {
        let name = contact.name.as_ref().map_or_else(String::new, |n| {
            non_empty(n.formatted_name.as_deref()).map_or_else(
                || {
                    [n.first_name.as_deref(), n.last_name.as_deref()]
                        .into_iter()
                        .filter_map(non_empty)
                        .collect::<Vec<_>>()
                        .join(" ")
                },
                str::to_owned,
            )
        });
        let phones = contact
            .phones
            .iter()
            .flatten()
            .filter_map(|p| non_empty(p.phone.as_deref()).or_else(|| non_empty(p.wa_id.as_deref())))
            .take(MAX_PHONES_LISTED)
            .collect::<Vec<_>>()
            .join(", ");
        let name = if name.is_empty() {
            "(no name)"
        } else {
            name.as_str()
        };
        lines.push(if phones.is_empty() {
            format!("Contact: {name}")
        } else {
            format!("Contact: {name} ({phones})")
        });
    }
    if shared.len() > MAX_CONTACTS_LISTED {
        lines.push(format!(
            "(and {} more contacts)",
            shared.len() - MAX_CONTACTS_LISTED
        ));
    }
    body.text = lines.join("\n");
    body.meta("whatsapp.contacts", compact(raw));
    Ok(())
}

#[derive(Deserialize)]
struct Interactive {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    button_reply: Option<Reply>,
    #[serde(default)]
    list_reply: Option<Reply>,
}

/// The button or list row the customer chose.
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: Option<String>,
}

fn interactive(interactive: Interactive, body: &mut Body) -> Result<(), ParseError> {
    let reply = match interactive.kind.as_str() {
        "button_reply" => interactive.button_reply,
        "list_reply" => interactive.list_reply,
        other => {
            return Err(ParseError::new(
                "unsupported_message",
                format!("interactive reply type {:?} is not ingested", shown(other)),
            ));
        }
    };
    let reply = reply.ok_or_else(|| {
        ParseError::new(
            "invalid_message",
            format!("an interactive {} without its object", interactive.kind),
        )
    })?;
    body.meta("whatsapp.interactive.type", interactive.kind.as_str());
    body.meta("whatsapp.interactive.id", reply.id);
    body.meta_opt(
        "whatsapp.interactive.description",
        reply.description.as_deref(),
    );
    body.text = reply.title;
    Ok(())
}

/// A template's quick-reply button.
#[derive(Deserialize)]
struct Button {
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct Order<'a> {
    #[serde(default)]
    catalog_id: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default, borrow)]
    product_items: Option<&'a RawValue>,
}

fn order(order: Order<'_>, body: &mut Body) -> Result<(), ParseError> {
    let count = match order.product_items {
        None => 0,
        Some(items) => serde_json::from_str::<Vec<IgnoredAny>>(items.get())
            .map_err(|_| {
                ParseError::new(
                    "invalid_message",
                    "the order's `product_items` is not an array",
                )
            })?
            .len(),
    };
    let items = if count == 1 { "item" } else { "items" };
    let mut text = match non_empty(order.catalog_id.as_deref()) {
        Some(catalog) => format!("Order: {count} {items} from catalog {catalog}"),
        None => format!("Order: {count} {items}"),
    };
    if let Some(note) = non_empty(order.text.as_deref()) {
        text.push('\n');
        text.push_str(note);
    }
    body.text = text;
    body.meta_opt("whatsapp.order.catalog_id", order.catalog_id.as_deref());
    body.meta_opt("whatsapp.order.text", order.text.as_deref());
    if let Some(items) = order.product_items {
        body.meta("whatsapp.order.items", compact(items));
    }
    Ok(())
}

#[derive(Deserialize)]
struct Reaction {
    #[serde(default)]
    message_id: String,
    #[serde(default)]
    emoji: Option<String>,
}

fn reaction(reaction: Reaction, body: &mut Body) -> Result<(), ParseError> {
    if reaction.message_id.trim().is_empty() {
        return Err(ParseError::new(
            "invalid_message",
            "a reaction without the reacted `message_id`",
        ));
    }
    let emoji = reaction.emoji.unwrap_or_default();
    let mut attributes = HashMap::new();
    if emoji.is_empty() {
        // WhatsApp sends a reaction without an emoji when it is removed.
        attributes.insert("removed".to_owned(), "true".to_owned());
    }
    attributes.insert("emoji".to_owned(), emoji);
    attributes.insert("message_id".to_owned(), reaction.message_id.clone());
    body.reply_to = Some(reaction.message_id);
    body.activity = Some(Activity {
        name: "reaction".to_owned(),
        attributes,
    });
    Ok(())
}

/// A notice about the customer: `user_changed_number` and the like.
#[derive(Deserialize)]
struct System {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    new_wa_id: Option<String>,
}

fn system(system: System, body: &mut Body) {
    let new_wa_id = non_empty(system.new_wa_id.as_deref()).or(non_empty(system.wa_id.as_deref()));
    let attributes = [
        ("type", non_empty(system.kind.as_deref())),
        ("body", non_empty(system.body.as_deref())),
        ("new_wa_id", new_wa_id),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key.to_owned(), value?.to_owned())))
    .collect();
    body.activity = Some(Activity {
        name: "system".to_owned(),
        attributes,
    });
}

/// One `statuses[]` item: how a message we sent fared.
#[derive(Deserialize)]
struct Status<'a> {
    #[serde(default)]
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default, borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(default)]
    recipient_id: Option<String>,
    #[serde(default)]
    biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    conversation: Option<Conversation>,
    #[serde(default)]
    pricing: Option<Pricing>,
    #[serde(default, borrow)]
    errors: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct Conversation {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    origin: Option<Origin>,
}

#[derive(Deserialize)]
struct Origin {
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Pricing {
    #[serde(default)]
    category: Option<String>,
}

fn status(raw: &RawValue, scope: &Scope<'_>) -> Result<ConversationEvent, ParseError> {
    let status: Status<'_> = object(raw, "invalid_status")?;
    check_id(&status.id, "invalid_message_id", "status message id")?;
    let state = match status.status.as_str() {
        "sent" => DeliveryState::Sent,
        "delivered" => DeliveryState::Delivered,
        "read" => DeliveryState::Read,
        "failed" => DeliveryState::Failed,
        other => {
            return Err(ParseError::new(
                "unsupported_status",
                format!("status {:?} is not ingested", shown(other)),
            ));
        }
    };
    let error = if state == DeliveryState::Failed {
        status
            .errors
            .as_deref()
            .and_then(<[_]>::first)
            .and_then(|e| serde_json::from_str::<WaError>(e.get()).ok())
            .map(|e| e.describe())
            .unwrap_or_default()
    } else {
        String::new()
    };
    // A recipient that is not a wa_id (a group) is left out rather than
    // losing the status.
    let recipients = status
        .recipient_id
        .as_deref()
        .and_then(|r| wa_id_handle(r).ok())
        .map(|h| omni_connector::handle::to_proto(&h, "", true))
        .into_iter()
        .collect();
    let mut metadata = scope.metadata();
    let mut put = |key: &str, value: Option<&str>| {
        if let Some(value) = non_empty(value) {
            metadata.insert(key.to_owned(), value.to_owned());
        }
    };
    if let Some(conversation) = &status.conversation {
        put("whatsapp.conversation.id", conversation.id.as_deref());
        put(
            "whatsapp.conversation.origin",
            conversation.origin.as_ref().and_then(|o| o.kind.as_deref()),
        );
    }
    put(
        "whatsapp.pricing.category",
        status.pricing.as_ref().and_then(|p| p.category.as_deref()),
    );
    let cx = scope.cx;
    Ok(ConversationEvent {
        // One event per (message, status): a redelivered status dedupes, a
        // later one is a new event.
        event_id: omni_model::event_id(
            cx.channel_id,
            &format!("status:{}:{}", status.id, status.status),
        )
        .to_string(),
        channel_id: cx.channel_id.to_owned(),
        channel_kind: ChannelKind::Whatsapp as i32,
        direction: Direction::Outbound as i32,
        kind: EventKind::DeliveryStatus as i32,
        sender: None,
        recipients,
        provider_message_id: status.id,
        sent_at: unix_seconds(status.timestamp),
        received_at: Some(cx.received_at),
        ingested_at: Some(cx.received_at),
        provider_metadata: metadata,
        delivery: Some(DeliveryStatus {
            outbound_event_id: status.biz_opaque_callback_data.unwrap_or_default(),
            state: state as i32,
            provider_status: status.status,
            error,
        }),
        ..Default::default()
    })
}

/// The handle of a wa_id: the customer's number as digits, without '+'.
fn wa_id_handle(wa_id: &str) -> Result<Handle, ParseError> {
    let valid = !wa_id.is_empty()
        && wa_id.len() <= MAX_WA_ID_DIGITS
        && wa_id.bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return Err(ParseError::new(
            "invalid_sender",
            format!(
                "{:?} is not a wa_id (1 to {MAX_WA_ID_DIGITS} digits)",
                shown(wa_id)
            ),
        ));
    }
    Handle::provider(HandleKind::Whatsapp, wa_id, None)
        .map_err(|e| ParseError::new("invalid_sender", format!("wa_id: {e}")))
}

/// A wamid or media id: opaque printable ASCII of bounded length.
fn check_id(id: &str, code: &'static str, what: &str) -> Result<(), ParseError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ParseError::new(
            code,
            format!("the {what} is empty, longer than {MAX_ID_BYTES} bytes or not printable ASCII"),
        ));
    }
    Ok(())
}

/// A `timestamp`: Unix seconds, as a string (numbers are taken too);
/// anything else leaves the time unknown rather than losing the item.
fn unix_seconds(raw: Option<&RawValue>) -> Option<Timestamp> {
    let seconds = match serde_json::from_str::<Scalar>(raw?.get()).ok()? {
        Scalar::Text(text) => text.trim().parse::<i64>().ok()?,
        Scalar::Int(n) => n,
        Scalar::Float(_) => return None,
    };
    omni_model::timestamp::checked_timestamp(seconds, 0).ok()
}

/// JSON without its white space, for metadata.
fn compact(raw: &RawValue) -> String {
    serde_json::from_str::<serde_json::Value>(raw.get())
        .map_or_else(|_| raw.get().to_owned(), |value| value.to_string())
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.trim().is_empty())
}

/// A provider value for an error message: bounded, since it is hostile.
fn shown(value: &str) -> String {
    value.chars().take(MAX_SHOWN_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Limits;
    use omni_proto::v1::HandleKind as ProtoHandleKind;

    const AT: Timestamp = Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };

    const PHONE_NUMBER_ID: &str = "106540352242922";

    const CX: WaContext<'static> = WaContext {
        channel_id: "wa",
        phone_number_id: PHONE_NUMBER_ID,
        received_at: AT,
    };

    const OBJECT: &str = "whatsapp_business_account";

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/whatsapp/", $name))
        };
    }

    fn run(body: &str) -> (Vec<Inbound>, Vec<Unreadable>) {
        let envelope = Envelope::parse(body.as_bytes(), OBJECT, &Limits::default()).unwrap();
        normalize(&envelope, &CX)
    }

    /// The one event of a body that has nothing unreadable.
    fn one(body: &str) -> Inbound {
        let (events, unreadable) = run(body);
        assert!(unreadable.is_empty(), "{unreadable:?}");
        let [inbound] = <[Inbound; 1]>::try_from(events).unwrap();
        inbound
    }

    /// The one dead letter of a body that has no event.
    fn dead(body: &str) -> Unreadable {
        let (events, unreadable) = run(body);
        assert!(events.is_empty(), "{events:?}");
        let [dead] = <[Unreadable; 1]>::try_from(unreadable).unwrap();
        assert!(CODES.contains(&dead.error.code), "{dead:?}");
        dead
    }

    /// A body of one change for this channel's number with `messages`.
    fn with_messages(messages: &str) -> String {
        format!(
            r#"{{"object":"{OBJECT}","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"metadata":{{"display_phone_number":"15550783881","phone_number_id":"{PHONE_NUMBER_ID}"}},"messages":{messages}}}}}]}}]}}"#
        )
    }

    fn text(inbound: &Inbound) -> &str {
        &inbound.event.content.as_ref().unwrap().text
    }

    fn meta<'e>(inbound: &'e Inbound, key: &str) -> &'e str {
        inbound
            .event
            .provider_metadata
            .get(key)
            .unwrap_or_else(|| panic!("no {key}: {:?}", inbound.event.provider_metadata))
    }

    #[test]
    fn text_message() {
        let inbound = one(fixture!("text.json"));
        let e = &inbound.event;
        let wamid = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=";
        assert_eq!(e.event_id, omni_model::event_id("wa", wamid).to_string());
        assert_eq!(e.provider_message_id, wamid);
        assert_eq!(e.channel_id, "wa");
        assert_eq!(e.channel_kind, ChannelKind::Whatsapp as i32);
        assert_eq!(e.direction, Direction::Inbound as i32);
        assert_eq!(e.kind, EventKind::Message as i32);
        let sender = e.sender.as_ref().unwrap();
        assert_eq!(sender.kind, ProtoHandleKind::Whatsapp as i32);
        assert_eq!(sender.value, "16505551234");
        assert_eq!(sender.scope, "");
        assert_eq!(sender.display_name, "Sheena Nelson");
        assert!(sender.verified);
        assert_eq!(text(&inbound), "Does it come in another color?");
        assert!(e.content.as_ref().unwrap().attachments.is_empty());
        assert_eq!(
            e.sent_at,
            Some(Timestamp {
                seconds: 1_749_416_383,
                nanos: 0
            })
        );
        assert_eq!(e.received_at, Some(AT));
        assert_eq!(e.ingested_at, Some(AT));
        let threading = e.threading.as_ref().unwrap();
        assert_eq!(threading.provider_chat_id, "16505551234");
        assert_eq!(threading.reply_to_provider_message_id, "");
        assert_eq!(meta(&inbound, "whatsapp.type"), "text");
        assert_eq!(meta(&inbound, "whatsapp.phone_number_id"), PHONE_NUMBER_ID);
        assert_eq!(
            meta(&inbound, "whatsapp.display_phone_number"),
            "15550783881"
        );
        assert_eq!(
            meta(&inbound, "whatsapp.business_account_id"),
            "102290129340398"
        );
        assert!(e.activity.is_none());
        assert!(e.delivery.is_none());
        assert!(inbound.media.is_empty());
    }

    #[test]
    fn forwarded_and_referred_text() {
        let inbound = one(fixture!("text_forwarded.json"));
        assert_eq!(text(&inbound), "Check this out");
        assert_eq!(meta(&inbound, "whatsapp.forwarded"), "true");
        assert!(
            !inbound
                .event
                .provider_metadata
                .contains_key("whatsapp.frequently_forwarded")
        );

        let inbound = one(fixture!("text_referral.json"));
        assert_eq!(text(&inbound), "Can I get more info about this?");
        for (key, value) in [
            ("source_url", "https://fb.me/3cr4Wqqkv"),
            ("source_type", "ad"),
            ("source_id", "120226305854810726"),
            ("headline", "Chat with us"),
            ("body", "Summer succulents are here!"),
            ("media_type", "image"),
        ] {
            assert_eq!(meta(&inbound, &format!("whatsapp.referral.{key}")), value);
        }
        assert!(meta(&inbound, "whatsapp.referral.ctwa_clid").starts_with("Aff-n8ZT"));
    }

    #[test]
    fn image_is_deferred_to_the_graph_api() {
        let inbound = one(fixture!("image.json"));
        let content = inbound.event.content.as_ref().unwrap();
        assert_eq!(content.text, "Here is the damaged box");
        assert_eq!(
            content.attachments,
            [Attachment {
                name: String::new(),
                media_type: "image/jpeg".into(),
                size: 0,
                sha256: String::new(),
                uri: "whatsapp-media:1003383421387256".into(),
            }]
        );
        assert_eq!(
            inbound.media,
            [MediaRef {
                attachment: 0,
                source: "graph:1003383421387256".into()
            }]
        );
        assert_eq!(
            meta(&inbound, "whatsapp.media_sha256"),
            "KoRXZpnmTbG2vsw9w1S+yqsn7eW8UoB6nWoM0Qnp5PQ="
        );
        assert_eq!(meta(&inbound, "whatsapp.media_id"), "1003383421387256");
        assert_eq!(meta(&inbound, "whatsapp.type"), "image");
    }

    #[test]
    fn video_audio_document_and_sticker() {
        let video = one(fixture!("video.json"));
        assert_eq!(text(&video), "Unboxing");
        assert_eq!(
            video.event.content.as_ref().unwrap().attachments[0].media_type,
            "video/mp4"
        );
        assert_eq!(video.media[0].source, "graph:1166846181421424");

        let audio = one(fixture!("audio.json"));
        assert_eq!(text(&audio), "");
        assert_eq!(
            audio.event.content.as_ref().unwrap().attachments[0].media_type,
            "audio/ogg; codecs=opus"
        );
        assert_eq!(meta(&audio, "whatsapp.voice"), "true");
        assert_eq!(audio.media[0].source, "graph:1003383421387257");

        let document = one(fixture!("document.json"));
        let attachment = &document.event.content.as_ref().unwrap().attachments[0];
        assert_eq!(attachment.name, "lucky-shrub-invoice.pdf");
        assert_eq!(attachment.media_type, "application/pdf");
        assert_eq!(text(&document), "Lucky Shrub Invoice");
        assert!(
            !document
                .event
                .provider_metadata
                .contains_key("whatsapp.voice")
        );

        let sticker = one(fixture!("sticker.json"));
        assert_eq!(
            sticker.event.content.as_ref().unwrap().attachments[0].media_type,
            "image/webp"
        );
        assert_eq!(meta(&sticker, "whatsapp.sticker.animated"), "false");
        assert_eq!(meta(&sticker, "whatsapp.type"), "sticker");
    }

    #[test]
    fn media_without_an_id_or_type_object() {
        let no_id = with_messages(
            r#"[{"from":"1","id":"wamid.x","timestamp":"1","type":"image","image":{"mime_type":"image/png"}}]"#,
        );
        assert_eq!(dead(&no_id).error.code, "invalid_message");
        let no_object = with_messages(r#"[{"from":"1","id":"wamid.x","type":"video"}]"#);
        assert_eq!(dead(&no_object).error.code, "invalid_message");
        let no_mime = with_messages(
            r#"[{"from":"1","id":"wamid.x","type":"document","document":{"id":"42"}}]"#,
        );
        let inbound = one(&no_mime);
        assert_eq!(
            inbound.event.content.unwrap().attachments[0].media_type,
            "application/octet-stream"
        );
    }

    #[test]
    fn location_message() {
        let inbound = one(fixture!("location.json"));
        assert_eq!(
            text(&inbound),
            "Location: Philz Coffee, 101 Forest Ave, Palo Alto, CA 94301 (37.44221496582, -122.16138458252)"
        );
        assert_eq!(
            meta(&inbound, "whatsapp.location.latitude"),
            "37.44221496582"
        );
        assert_eq!(
            meta(&inbound, "whatsapp.location.longitude"),
            "-122.16138458252"
        );
        assert_eq!(meta(&inbound, "whatsapp.location.name"), "Philz Coffee");
        assert_eq!(
            meta(&inbound, "whatsapp.location.address"),
            "101 Forest Ave, Palo Alto, CA 94301"
        );
        assert_eq!(
            meta(&inbound, "whatsapp.location.url"),
            "https://philzcoffee.com/"
        );
        let bare = with_messages(
            r#"[{"from":"1","id":"wamid.x","type":"location","location":{"latitude":"1.5","longitude":2}}]"#,
        );
        assert_eq!(text(&one(&bare)), "Location: (1.5, 2)");
        let off_earth = with_messages(
            r#"[{"from":"1","id":"wamid.x","type":"location","location":{"latitude":91,"longitude":2}}]"#,
        );
        assert_eq!(dead(&off_earth).error.code, "invalid_message");
    }

    #[test]
    fn contacts_message() {
        let inbound = one(fixture!("contacts.json"));
        assert_eq!(
            text(&inbound),
            "Contact: Barbara J. Johnson (+1 (650) 555-1234, +1 (650) 555-5678)\nContact: Pablo Morales (+1 (415) 555-0100)"
        );
        let contacts = meta(&inbound, "whatsapp.contacts");
        assert!(
            !contacts.contains('\n') && !contacts.contains(": "),
            "{contacts}"
        );
        let value: serde_json::Value = serde_json::from_str(contacts).unwrap();
        assert_eq!(value[0]["org"]["company"], "Lucky Shrub");
        assert_eq!(value.as_array().unwrap().len(), 2);
    }

    #[test]
    fn contacts_text_is_bounded() {
        let contact =
            r#"{"name":{"first_name":"A","last_name":"B"},"phones":[{"phone":"1"},{"wa_id":"2"}]}"#;
        let many = format!("[{}]", vec![contact; 5_000].join(","));
        let body = with_messages(&format!(
            r#"[{{"from":"1","id":"wamid.x","type":"contacts","contacts":{many}}}]"#
        ));
        let inbound = one(&body);
        let lines: Vec<_> = text(&inbound).lines().collect();
        assert_eq!(lines.len(), MAX_CONTACTS_LISTED + 1);
        assert_eq!(lines[0], "Contact: A B (1, 2)");
        assert_eq!(lines[MAX_CONTACTS_LISTED], "(and 4980 more contacts)");
    }

    #[test]
    fn interactive_replies() {
        let context = "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA=";
        let button = one(fixture!("interactive_button_reply.json"));
        assert_eq!(text(&button), "Cancel");
        assert_eq!(meta(&button, "whatsapp.interactive.type"), "button_reply");
        assert_eq!(meta(&button, "whatsapp.interactive.id"), "cancel-button");
        assert_eq!(meta(&button, "whatsapp.context_from"), "15550783881");
        assert_eq!(
            button
                .event
                .threading
                .as_ref()
                .unwrap()
                .reply_to_provider_message_id,
            context
        );

        let list = one(fixture!("interactive_list_reply.json"));
        assert_eq!(text(&list), "Priority Mail Express");
        assert_eq!(meta(&list, "whatsapp.interactive.type"), "list_reply");
        assert_eq!(meta(&list, "whatsapp.interactive.id"), "priority_express");
        assert_eq!(
            meta(&list, "whatsapp.interactive.description"),
            "Next Day to 2 Days"
        );

        let flow = with_messages(
            r#"[{"from":"1","id":"wamid.x","type":"interactive","interactive":{"type":"nfm_reply","nfm_reply":{}}}]"#,
        );
        assert_eq!(dead(&flow).error.code, "unsupported_message");
    }

    #[test]
    fn template_button() {
        let inbound = one(fixture!("button.json"));
        assert_eq!(text(&inbound), "Unsubscribe");
        assert_eq!(meta(&inbound, "whatsapp.button.payload"), "Unsubscribe");
        assert_eq!(meta(&inbound, "whatsapp.type"), "button");
        assert!(
            inbound
                .event
                .threading
                .unwrap()
                .reply_to_provider_message_id
                .starts_with("wamid.")
        );
    }

    #[test]
    fn order_message() {
        let inbound = one(fixture!("order.json"));
        assert_eq!(
            text(&inbound),
            "Order: 2 items from catalog 194836987003835\nLove these!"
        );
        assert_eq!(
            meta(&inbound, "whatsapp.order.catalog_id"),
            "194836987003835"
        );
        assert_eq!(meta(&inbound, "whatsapp.order.text"), "Love these!");
        let items: serde_json::Value =
            serde_json::from_str(meta(&inbound, "whatsapp.order.items")).unwrap();
        assert_eq!(items[0]["product_retailer_id"], "di9ozbzfi4");
        assert_eq!(items[1]["quantity"], 1);
        assert!(!meta(&inbound, "whatsapp.order.items").contains(' '));
        let not_array = with_messages(
            r#"[{"from":"1","id":"wamid.x","type":"order","order":{"product_items":{"a":1}}}]"#,
        );
        assert_eq!(dead(&not_array).error.code, "invalid_message");
    }

    #[test]
    fn reactions_are_activities() {
        let reacted = "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA=";
        let inbound = one(fixture!("reaction.json"));
        let e = &inbound.event;
        assert_eq!(e.kind, EventKind::Activity as i32);
        assert!(e.content.is_none());
        let activity = e.activity.as_ref().unwrap();
        assert_eq!(activity.name, "reaction");
        assert_eq!(activity.attributes["emoji"], "\u{1F44D}");
        assert_eq!(activity.attributes["message_id"], reacted);
        assert!(!activity.attributes.contains_key("removed"));
        let threading = e.threading.as_ref().unwrap();
        assert_eq!(threading.reply_to_provider_message_id, reacted);
        assert_eq!(threading.provider_chat_id, "16505551234");
        assert_eq!(e.sender.as_ref().unwrap().display_name, "Sheena Nelson");

        let removed = one(fixture!("reaction_removed.json"));
        let activity = removed.event.activity.unwrap();
        assert_eq!(activity.attributes["removed"], "true");
        assert_eq!(activity.attributes["emoji"], "");
        assert_eq!(activity.attributes["message_id"], reacted);
    }

    #[test]
    fn system_notice_is_an_activity() {
        let inbound = one(fixture!("system.json"));
        let e = &inbound.event;
        assert_eq!(e.kind, EventKind::Activity as i32);
        assert!(e.content.is_none());
        // No contacts in a system change: no display name.
        assert_eq!(e.sender.as_ref().unwrap().display_name, "");
        assert_eq!(e.sender.as_ref().unwrap().value, "16505551234");
        let activity = e.activity.as_ref().unwrap();
        assert_eq!(activity.name, "system");
        assert_eq!(activity.attributes["type"], "user_changed_number");
        assert_eq!(activity.attributes["new_wa_id"], "12195555358");
        assert!(activity.attributes["body"].contains("changed from 16505551234"));
    }

    #[test]
    fn unsupported_messages_are_dead_letters() {
        let body = fixture!("unsupported.json");
        let dead = dead(body);
        assert_eq!(dead.error.code, "unsupported_message");
        assert!(dead.error.message.contains("\"unsupported\""), "{dead:?}");
        assert!(
            dead.error.message.contains(
                "131051: Message type unknown (Message type is currently not supported.)"
            ),
            "{dead:?}"
        );
        let raw: serde_json::Value = serde_json::from_slice(&dead.raw).unwrap();
        assert_eq!(raw["unsupported"]["type"], "poll_update");
        assert_eq!(raw["type"], "unsupported");

        for kind in ["unknown", "ephemeral", ""] {
            let body = with_messages(&format!(
                r#"[{{"from":"1","id":"wamid.x","type":"{kind}"}}]"#
            ));
            assert_eq!(run(&body).1[0].error.code, "unsupported_message", "{kind}");
        }
    }

    fn status_of(body: &str) -> ConversationEvent {
        let inbound = one(body);
        assert!(inbound.media.is_empty());
        inbound.event
    }

    #[test]
    fn statuses_are_delivery_reports() {
        let wamid = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI3MjA3NjdEMzQ2MDg5ODJBQTcA";
        for (name, body, state) in [
            ("sent", fixture!("status_sent.json"), DeliveryState::Sent),
            (
                "delivered",
                fixture!("status_delivered.json"),
                DeliveryState::Delivered,
            ),
            ("read", fixture!("status_read.json"), DeliveryState::Read),
        ] {
            let e = status_of(body);
            assert_eq!(
                e.event_id,
                omni_model::event_id("wa", &format!("status:{wamid}:{name}")).to_string()
            );
            assert_eq!(e.kind, EventKind::DeliveryStatus as i32);
            assert_eq!(e.direction, Direction::Outbound as i32);
            assert_eq!(e.channel_kind, ChannelKind::Whatsapp as i32);
            assert_eq!(e.provider_message_id, wamid);
            assert!(e.sender.is_none());
            assert!(e.content.is_none());
            assert_eq!(e.recipients.len(), 1);
            assert_eq!(e.recipients[0].value, "16505551234");
            assert_eq!(e.recipients[0].kind, ProtoHandleKind::Whatsapp as i32);
            assert_eq!(e.sent_at.unwrap().seconds, 1_750_030_073);
            assert_eq!(e.received_at, Some(AT));
            let delivery = e.delivery.as_ref().unwrap();
            assert_eq!(delivery.state, state as i32, "{name}");
            assert_eq!(delivery.provider_status, name);
            assert_eq!(
                delivery.outbound_event_id,
                "0f3e9a52-6c1d-5b8e-9a4f-2d7c1e8b3a60"
            );
            assert_eq!(delivery.error, "");
            assert_eq!(
                e.provider_metadata["whatsapp.phone_number_id"],
                PHONE_NUMBER_ID
            );
            if name == "read" {
                assert!(!e.provider_metadata.contains_key("whatsapp.conversation.id"));
            } else {
                assert_eq!(
                    e.provider_metadata["whatsapp.conversation.id"],
                    "a75d17ad06104c51166f948319b03c6a"
                );
                assert_eq!(
                    e.provider_metadata["whatsapp.conversation.origin"],
                    "service"
                );
                assert_eq!(e.provider_metadata["whatsapp.pricing.category"], "service");
            }
        }
    }

    #[test]
    fn failed_status_carries_the_error() {
        let e = status_of(fixture!("status_failed.json"));
        let delivery = e.delivery.unwrap();
        assert_eq!(delivery.state, DeliveryState::Failed as i32);
        assert_eq!(delivery.provider_status, "failed");
        assert_eq!(
            delivery.error,
            "131047: Re-engagement message (Message failed to send because more than 24 hours have passed since the customer last replied to this number.)"
        );
    }

    #[test]
    fn odd_statuses() {
        let body = |status: &str| {
            format!(
                r#"{{"object":"{OBJECT}","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"metadata":{{"phone_number_id":"{PHONE_NUMBER_ID}"}},"statuses":[{status}]}}}}]}}]}}"#
            )
        };
        for word in ["deleted", "warning", "played", ""] {
            let b = body(&format!(
                r#"{{"id":"wamid.x","status":"{word}","recipient_id":"1"}}"#
            ));
            assert_eq!(dead(&b).error.code, "unsupported_status", "{word}");
        }
        // No callback data, a group recipient, no timestamp: still a status.
        let e = status_of(&body(
            r#"{"id":"wamid.x","status":"delivered","recipient_id":"group-1"}"#,
        ));
        assert!(e.recipients.is_empty());
        assert!(e.sent_at.is_none());
        assert_eq!(e.delivery.unwrap().outbound_event_id, "");
        assert_eq!(
            dead(&body(r#"{"id":7,"status":"sent"}"#)).error.code,
            "invalid_status"
        );
        assert_eq!(
            dead(&body(r#"{"status":"sent"}"#)).error.code,
            "invalid_message_id"
        );
    }

    #[test]
    fn other_fields_and_webhook_errors_are_dead_letters() {
        let dead_field = dead(fixture!("template_status.json"));
        assert_eq!(dead_field.error.code, "unsupported_field");
        assert!(
            dead_field
                .error
                .message
                .contains("message_template_status_update")
        );
        let raw: serde_json::Value = serde_json::from_slice(&dead_field.raw).unwrap();
        assert_eq!(raw["field"], "message_template_status_update");
        assert_eq!(raw["value"]["event"], "APPROVED");

        let error = dead(fixture!("webhook_error.json"));
        assert_eq!(error.error.code, "whatsapp_error");
        assert!(
            error.error.message.contains(
                "130429: Rate limit hit (Cloud API message throughput has been reached.)"
            ),
            "{error:?}"
        );
        let raw: serde_json::Value = serde_json::from_slice(&error.raw).unwrap();
        assert_eq!(raw["code"], 130429);

        let messenger = format!(
            r#"{{"object":"{OBJECT}","entry":[{{"id":"1","messaging":[{{"sender":{{"id":"2"}}}}]}}]}}"#
        );
        let item = dead(&messenger);
        assert_eq!(item.error.code, "unsupported_field");
        assert_eq!(item.raw, br#"{"sender":{"id":"2"}}"#);
    }

    #[test]
    fn changes_that_do_not_read() {
        let change = |value: &str| {
            format!(
                r#"{{"object":"{OBJECT}","entry":[{{"id":"1","changes":[{{"field":"messages","value":{value}}}]}}]}}"#
            )
        };
        for value in [
            "null",
            "[]",
            r#"{"messages":[]}"#,
            r#"{"metadata":{"phone_number_id":106540352242922},"messages":[]}"#,
            &format!(r#"{{"metadata":{{"phone_number_id":"{PHONE_NUMBER_ID}"}},"messages":{{}}}}"#),
        ] {
            let d = dead(&change(value));
            assert_eq!(d.error.code, "invalid_change", "{value}");
            let raw: serde_json::Value = serde_json::from_slice(&d.raw).unwrap();
            assert_eq!(raw["field"], "messages");
        }
        let no_value = format!(
            r#"{{"object":"{OBJECT}","entry":[{{"id":"1","changes":[{{"field":"messages"}}]}}]}}"#
        );
        assert_eq!(dead(&no_value).error.code, "invalid_change");
        // Null lists are empty lists.
        let nulls = change(&format!(
            r#"{{"metadata":{{"phone_number_id":"{PHONE_NUMBER_ID}"}},"messages":null,"statuses":null}}"#
        ));
        assert_eq!(run(&nulls), (Vec::new(), Vec::new()));
    }

    #[test]
    fn a_batch_keeps_its_order() {
        let (events, unreadable) = run(fixture!("batch.json"));
        let ids: Vec<_> = events
            .iter()
            .map(|i| i.event.provider_message_id.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "wamid.batch.1",
                "wamid.batch.2",
                "wamid.out.1",
                "wamid.out.2",
                "wamid.out.3",
                "wamid.batch.4"
            ]
        );
        let kinds: Vec<_> = events.iter().map(|i| i.event.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Message as i32,
                EventKind::Message as i32,
                EventKind::DeliveryStatus as i32,
                EventKind::DeliveryStatus as i32,
                EventKind::DeliveryStatus as i32,
                EventKind::Activity as i32,
            ]
        );
        // Each message's own contact names it.
        assert_eq!(
            events[1].event.sender.as_ref().unwrap().display_name,
            "Pablo Morales"
        );
        assert_eq!(
            events[0].event.sender.as_ref().unwrap().display_name,
            "Sheena Nelson"
        );
        assert_eq!(events[1].media[0].source, "graph:2754859441498128");
        assert_eq!(
            events[1].event.provider_metadata["whatsapp.media_sha256"],
            "abc="
        );
        assert_eq!(
            events[5].event.provider_metadata["whatsapp.business_account_id"],
            "102290129340399"
        );
        let codes: Vec<_> = unreadable.iter().map(|u| u.error.code).collect();
        assert_eq!(codes, ["unsupported_message", "other_phone_number"]);
        let first: serde_json::Value = serde_json::from_slice(&unreadable[0].raw).unwrap();
        assert_eq!(first["id"], "wamid.batch.3");
        let second: serde_json::Value = serde_json::from_slice(&unreadable[1].raw).unwrap();
        assert_eq!(
            second["value"]["metadata"]["phone_number_id"],
            "999999999999999"
        );
        assert!(unreadable[1].error.message.contains("999999999999999"));
    }

    #[test]
    fn ids_are_deterministic() {
        let ids = |body: &str| -> Vec<String> {
            run(body).0.into_iter().map(|i| i.event.event_id).collect()
        };
        let first = ids(fixture!("batch.json"));
        assert_eq!(first.len(), 6);
        assert_eq!(first, ids(fixture!("batch.json")));
        let unique: std::collections::HashSet<_> = first.iter().collect();
        assert_eq!(unique.len(), first.len());
        // Another channel's copy is another event.
        let envelope =
            Envelope::parse(fixture!("text.json").as_bytes(), OBJECT, &Limits::default()).unwrap();
        let other = WaContext {
            channel_id: "wa-2",
            ..CX
        };
        assert_ne!(
            normalize(&envelope, &other).0[0].event.event_id,
            ids(fixture!("text.json"))[0]
        );
    }

    #[test]
    fn invalid_senders() {
        for from in [
            "",
            "+16505551234",
            "1650555123x",
            "123456789012345678901",
            " 1",
            "١٢٣",
        ] {
            let body = with_messages(&format!(
                r#"[{{"from":"{from}","id":"wamid.x","type":"text","text":{{"body":"hi"}}}}]"#
            ));
            let d = dead(&body);
            assert_eq!(d.error.code, "invalid_sender", "{from:?}");
            assert!(String::from_utf8(d.raw).unwrap().contains("wamid.x"));
        }
        let longest = with_messages(
            r#"[{"from":"12345678901234567890","id":"wamid.x","type":"text","text":{"body":"hi"}}]"#,
        );
        assert_eq!(
            one(&longest).event.sender.unwrap().value,
            "12345678901234567890"
        );
    }

    #[test]
    fn one_bad_message_does_not_sink_the_rest() {
        let body = with_messages(
            r#"[{"from":"1","id":"wamid.a","type":"text","text":{"body":"a"}},
                {"from":"1","id":"wamid.b","type":"text","text":{"body":5}},
                {"from":"1","id":"wamid.c","type":"text","text":{"body":"c"}}]"#,
        );
        let (events, unreadable) = run(&body);
        assert_eq!(events.len(), 2);
        assert_eq!(text(&events[1]), "c");
        assert_eq!(unreadable.len(), 1);
        assert_eq!(unreadable[0].error.code, "invalid_message");
        assert!(String::from_utf8_lossy(&unreadable[0].raw).contains("wamid.b"));
    }

    #[test]
    fn hostile_input_is_unreadable_not_a_panic() {
        let huge = "w".repeat(10 * 1024);
        let body = with_messages(&format!(
            r#"[{{"from":"1","id":"{huge}","type":"text","text":{{"body":"hi"}}}}]"#
        ));
        let d = dead(&body);
        assert_eq!(d.error.code, "invalid_message_id");
        assert!(d.error.message.len() < 200, "{}", d.error.message);
        // A huge value in an error stays out of the message.
        let body = with_messages(&format!(
            r#"[{{"from":"{huge}","id":"wamid.x","type":"text","text":{{"body":"hi"}}}}]"#
        ));
        assert!(dead(&body).error.message.len() < 1_000);

        for message in [
            r#"{"from":16505551234,"id":"wamid.x","type":"text","text":{"body":"hi"}}"#,
            r#"{"from":"1","id":["wamid.x"],"type":"text","text":{"body":"hi"}}"#,
            r#"{"from":"1","id":"wamid.x","type":7,"text":{"body":"hi"}}"#,
            r#"{"from":"1","id":"wamid.x","type":"text","text":"hi"}"#,
            r#"{"from":"1","id":"wamid.x","type":"text","text":{"body":{"deep":[[[[1]]]]}}}"#,
            r#"{"from":"1","id":"wamid.x","type":"image","image":{"id":12}}"#,
            r#"{"from":"1","id":"wamid.x","type":"reaction","reaction":{"message_id":true}}"#,
            r#"{"from":"1","id":"wamid.x","type":"system","system":{"body":[1]}}"#,
            r#"{"from":"1","id":"wamid.x","type":"text","text":{"body":"hi"},"context":{"forwarded":"yes"}}"#,
            r#"{"from":"1","id":"wamid.x","id":"wamid.y","type":"text","text":{"body":"hi"}}"#,
            r#"[]"#,
            r#"null"#,
            r#"1e999"#,
        ] {
            let d = dead(&with_messages(&format!("[{message}]")));
            assert_eq!(d.error.code, "invalid_message", "{message}");
        }
        // A timestamp that is not Unix seconds only loses the time.
        for timestamp in [
            r#""soon""#,
            "1.5",
            "{}",
            r#""99999999999999999999""#,
            "-99999999999999",
        ] {
            let body = with_messages(&format!(
                r#"[{{"from":"1","id":"wamid.x","timestamp":{timestamp},"type":"text","text":{{"body":"hi"}}}}]"#
            ));
            assert!(one(&body).event.sent_at.is_none(), "{timestamp}");
        }
        let numeric = with_messages(
            r#"[{"from":"1","id":"wamid.x","timestamp":1739321024,"type":"text","text":{"body":"hi"}}]"#,
        );
        assert_eq!(one(&numeric).event.sent_at.unwrap().seconds, 1_739_321_024);
    }

    #[test]
    fn real_text_is_not_truncated() {
        let long = "é".repeat(4096);
        let body = with_messages(&format!(
            r#"[{{"from":"1","id":"wamid.x","type":"text","text":{{"body":"{long}"}}}}]"#
        ));
        assert_eq!(text(&one(&body)), long);
    }
}
