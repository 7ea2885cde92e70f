//! The `messaging[]` items of a Messenger (`object = "page"`) or Instagram
//! (`object = "instagram"`) webhook POST to events. Pure: no I/O, no clock.
//!
//! - `message` from the customer: an inbound `EVENT_KIND_MESSAGE` whose
//!   sender is the customer's page- or Instagram-scoped id, scoped by the
//!   account id and verified (Meta proves it). Files are attachments whose
//!   `uri` is the CDN URL Meta announced, each with a [`MediaRef`] naming
//!   that URL ([`crate::media`] downloads it once the message is durable).
//!   A story mention gets no [`MediaRef`]: Meta forbids storing the media
//!   of a customer's story, only its (expiring) URL. Links without a file
//!   (`share`, `fallback`, `template`, `ig_post`) are appended to the text.
//! - Echoes (`is_echo`), the business's own messages: when the echo is of
//!   this Omnid's own app ([`MessagingContext::own_app_id`]) it is skipped
//!   and counted, since the reply is already on the outbound timeline;
//!   otherwise (a reply typed in the Page inbox or the Instagram app) it is
//!   an outbound `EVENT_KIND_MESSAGE` with no sender and the customer as
//!   its recipient, so it can never pass for the customer's words.
//! - `postback` (a button, Get Started, an ice breaker): a message whose
//!   text is the button's title.
//! - `reaction`, `read`, `delivery` and Instagram's unsend (`is_deleted`):
//!   `EVENT_KIND_ACTIVITY` of the customer (`reaction`, `read`,
//!   `delivered`, `deleted`).
//! - Everything else is [`Unreadable`], never dropped: an entry of another
//!   account ([`OTHER_ACCOUNT`]), a `changes[]` field such as Instagram
//!   comments ([`UNSUPPORTED_FIELD`]), an item of another kind such as
//!   `optin` or `message_edit` ([`UNSUPPORTED_EVENT`]), a message Meta could
//!   not render ([`UNSUPPORTED_MESSAGE`]), and a malformed item. Each item
//!   is read on its own, so one bad item costs only itself.
//!
//! Meta retries deliveries and sometimes delivers twice, so every event id
//! is derived from what Meta sent: the message id (`mid`) for messages and
//! echoes, and for the others a key of the customer and the item's own
//! fields (see [`normalize`]).

use std::collections::HashMap;

use omni_connector::{Inbound, MediaRef, ParseError, Unreadable};
use omni_model::{Handle, HandleKind};
use omni_proto::{
    Timestamp,
    v1::{
        Activity, Attachment, ChannelKind, Content, ConversationEvent, Direction, EventKind,
        IdentityHandle, ThreadingHints,
    },
};
use serde::Serialize;
use serde_json::{Map, Value, value::RawValue};

use crate::envelope::{Change, Entry, Envelope};

/// An entry of an account other than the channel's.
pub const OTHER_ACCOUNT: &str = "other_account";
/// A `changes[]` field (comments, mentions): not messages.
pub const UNSUPPORTED_FIELD: &str = "unsupported_field";
/// An item that is not the JSON its kind documents.
pub const INVALID_ITEM: &str = "invalid_item";
/// An item of a kind Omnid does not ingest (`optin`, `referral`,
/// `account_linking`, `policy_enforcement`, `message_edit`, ...).
pub const UNSUPPORTED_EVENT: &str = "unsupported_event";
/// A message Meta marks `is_unsupported`, or one with nothing to show.
pub const UNSUPPORTED_MESSAGE: &str = "unsupported_message";
/// The customer (`sender.id`) is missing or not a valid id.
pub const INVALID_SENDER: &str = "invalid_sender";
/// An echo's customer (`recipient.id`) is missing or not a valid id.
pub const INVALID_RECIPIENT: &str = "invalid_recipient";
/// `timestamp` is outside the years a `Timestamp` holds.
pub const INVALID_TIMESTAMP: &str = "invalid_timestamp";

/// Every code of an [`Unreadable`] this module produces (dead-letter
/// reasons, metric labels).
pub const CODES: [&str; 8] = [
    OTHER_ACCOUNT,
    UNSUPPORTED_FIELD,
    INVALID_ITEM,
    UNSUPPORTED_EVENT,
    UNSUPPORTED_MESSAGE,
    INVALID_SENDER,
    INVALID_RECIPIENT,
    INVALID_TIMESTAMP,
];

/// Attachments read per message; Meta sends at most a handful, and a
/// longer list only costs work (the rest are counted in the metadata).
pub const MAX_ATTACHMENTS: usize = 10;

/// Longest message id or other provider id taken from an item (Meta's
/// mids are under 200 bytes).
const MAX_ID_LEN: usize = 512;
/// Longest URL taken from an item (Meta's signed CDN URLs are a few
/// hundred bytes).
const MAX_URL_LEN: usize = 4096;
/// Longest short word (attachment type, reaction action) kept.
const MAX_WORD_LEN: usize = 64;
/// Longest attachment name kept (an `ig_reel` title is its caption).
const MAX_NAME_LEN: usize = 512;
/// Longest part of a key built from a postback's payload.
const MAX_KEY_PART_LEN: usize = 1024;
/// Message ids listed in a delivery's `mids` attribute.
const MAX_MIDS: usize = 20;
/// Below this a `timestamp` is seconds, not milliseconds (as milliseconds
/// it would be in 1973). Meta sends milliseconds; the App Dashboard's test
/// samples send seconds.
const SECONDS_BELOW: i64 = 100_000_000_000;

/// Attachment types that are a file to show (and, but for story mentions,
/// to download).
const FILE_TYPES: &[&str] = &[
    "image",
    "video",
    "audio",
    "file",
    "sticker",
    "animated_image",
    "reel",
    "ig_reel",
    "story_mention",
];

/// The item kinds read, in the order they are looked for.
const KINDS: &[&str] = &["message", "postback", "reaction", "read", "delivery"];

/// Which of the two products a channel serves: both share this format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Messenger,
    Instagram,
}

impl Platform {
    /// The envelope's `object` the product's webhooks carry.
    pub const fn object(self) -> &'static str {
        match self {
            Self::Messenger => "page",
            Self::Instagram => "instagram",
        }
    }

    pub const fn channel_kind(self) -> ChannelKind {
        match self {
            Self::Messenger => ChannelKind::Messenger,
            Self::Instagram => ChannelKind::Instagram,
        }
    }

    /// The kind of the customer's handle: ids are scoped by the Page or
    /// account, so they are only meaningful with it.
    pub const fn handle_kind(self) -> HandleKind {
        match self {
            Self::Messenger => HandleKind::MessengerPsid,
            Self::Instagram => HandleKind::InstagramIgsid,
        }
    }

    /// The prefix of the product's `provider_metadata` keys.
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Messenger => "messenger",
            Self::Instagram => "instagram",
        }
    }
}

/// What normalization needs besides the POST.
#[derive(Debug, Clone, Copy)]
pub struct MessagingContext<'a> {
    pub channel_id: &'a str,
    pub platform: Platform,
    /// The Page id (Messenger) or Instagram professional account id: the
    /// one entry id this channel reads, and the scope of its customers.
    pub account_id: &'a str,
    /// The Meta app Omnid sends replies with: echoes of it are skipped.
    pub own_app_id: Option<&'a str>,
    pub received_at: Timestamp,
}

/// What one POST holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Normalized {
    /// Events to append, in the POST's order.
    pub events: Vec<Inbound>,
    /// Parts to dead-letter, in the POST's order.
    pub unreadable: Vec<Unreadable>,
    /// Echoes of Omnid's own replies, skipped.
    pub own_echoes: usize,
}

/// Normalizes every entry of `envelope`, entries and items in order.
///
/// Event ids are [`omni_model::event_id`] of the channel id and the event's
/// `provider_message_id`, which is:
/// - a message's or echo's `mid`, or a postback's `mid` when it has one;
/// - `postback:{customer}:{timestamp}:{payload}` for a postback without;
/// - `reaction:{customer}:{mid}:{action}:{timestamp}`;
/// - `deleted:{mid}` for an unsent message;
/// - `read:{customer}:{watermark or mid}`;
/// - `delivery:{customer}:{watermark or first mid}`.
pub fn normalize(envelope: &Envelope<'_>, cx: &MessagingContext<'_>) -> Normalized {
    let mut out = Normalized::default();
    for entry in &envelope.entry {
        if entry.id != cx.account_id {
            out.unreadable.push(other_account(entry, cx));
            continue;
        }
        for item in &entry.messaging {
            match normalize_item(item.get(), cx) {
                Ok(Outcome::Event(inbound)) => out.events.push(*inbound),
                Ok(Outcome::OwnEcho) => out.own_echoes += 1,
                Err(error) => out.unreadable.push(Unreadable {
                    error,
                    raw: item.get().as_bytes().to_vec(),
                }),
            }
        }
        for change in &entry.changes {
            out.unreadable.push(unsupported_change(change, cx));
        }
    }
    out
}

enum Outcome {
    Event(Box<Inbound>),
    OwnEcho,
}

/// The entry as it came, for the dead-letter record.
#[derive(Serialize)]
struct EntryRecord<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<i64>,
    messaging: &'a [&'a RawValue],
    changes: Vec<ChangeRecord<'a>>,
}

#[derive(Serialize)]
struct ChangeRecord<'a> {
    field: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
}

impl<'a> From<&'a Change<'a>> for ChangeRecord<'a> {
    fn from(change: &'a Change<'a>) -> Self {
        Self {
            field: &change.field,
            value: change.value,
        }
    }
}

fn other_account(entry: &Entry<'_>, cx: &MessagingContext<'_>) -> Unreadable {
    let record = EntryRecord {
        id: &entry.id,
        time: entry.time,
        messaging: &entry.messaging,
        changes: entry.changes.iter().map(ChangeRecord::from).collect(),
    };
    Unreadable {
        error: ParseError::new(
            OTHER_ACCOUNT,
            format!(
                "the entry is for account {:?}; this channel reads {:?}",
                shown(&entry.id),
                shown(cx.account_id)
            ),
        ),
        raw: serde_json::to_vec(&record).unwrap_or_default(),
    }
}

fn unsupported_change(change: &Change<'_>, cx: &MessagingContext<'_>) -> Unreadable {
    Unreadable {
        error: ParseError::new(
            UNSUPPORTED_FIELD,
            format!(
                "the {} field {:?} is not ingested",
                cx.platform.object(),
                shown(&change.field)
            ),
        ),
        raw: serde_json::to_vec(&ChangeRecord::from(change)).unwrap_or_default(),
    }
}

fn normalize_item(raw: &str, cx: &MessagingContext<'_>) -> Result<Outcome, ParseError> {
    let value: Value = serde_json::from_str(raw)
        .map_err(|e| invalid(format!("the item is not JSON: {}", shown(&e.to_string()))))?;
    let Value::Object(fields) = &value else {
        return Err(invalid("the item is not a JSON object"));
    };
    let item = Part {
        name: "item",
        fields,
    };
    let Some(&kind) = KINDS.iter().find(|kind| fields.contains_key(**kind)) else {
        let found = fields
            .keys()
            .find(|key| !matches!(key.as_str(), "sender" | "recipient" | "timestamp"))
            .map_or_else(|| "nothing".to_owned(), |key| format!("{:?}", shown(key)));
        return Err(ParseError::new(
            UNSUPPORTED_EVENT,
            format!("the item carries {found}, which is not ingested"),
        ));
    };
    let timestamp = item.integer("timestamp")?;
    let sent_at = timestamp.map(sent_at).transpose()?;
    let at = Item {
        cx,
        timestamp,
        sent_at,
    };
    let body = item.required(kind)?;
    match kind {
        "message" => at.message(&item, &body),
        "postback" => at.postback(&item, &body).map(boxed),
        "reaction" => at.reaction(&item, &body).map(boxed),
        "read" => at.read(&item, &body).map(boxed),
        _ => at.delivery(&item, &body).map(boxed),
    }
}

fn boxed(inbound: Inbound) -> Outcome {
    Outcome::Event(Box::new(inbound))
}

/// One item's shared fields.
struct Item<'c> {
    cx: &'c MessagingContext<'c>,
    /// `timestamp` as Meta sent it, for keys.
    timestamp: Option<i64>,
    sent_at: Option<Timestamp>,
}

/// What an event says, gathered per kind.
#[derive(Default)]
struct Body {
    text: String,
    attachments: Vec<Attachment>,
    media: Vec<MediaRef>,
    metadata: HashMap<String, String>,
    activity: Option<Activity>,
    reply_to: String,
}

impl Item<'_> {
    fn prefix(&self) -> &'static str {
        self.cx.platform.prefix()
    }

    fn meta(&self, body: &mut Body, key: &str, value: impl Into<String>) {
        body.metadata
            .insert(format!("{}.{key}", self.prefix()), value.into());
    }

    /// The customer named by `{field}.id`.
    fn customer(
        &self,
        item: &Part<'_>,
        field: &str,
        code: &'static str,
    ) -> Result<Handle, ParseError> {
        let raw = item.fields.get(field).and_then(|party| party.get("id"));
        let value = match raw {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Number(number)) if number.is_u64() => number.to_string(),
            Some(_) => {
                return Err(ParseError::new(
                    code,
                    format!("`{field}.id` is not a string"),
                ));
            }
            None => return Err(ParseError::new(code, format!("no `{field}.id`"))),
        };
        Handle::provider(
            self.cx.platform.handle_kind(),
            &value,
            Some(self.cx.account_id),
        )
        .map_err(|e| ParseError::new(code, format!("`{field}.id`: {e}")))
    }

    fn message(&self, item: &Part<'_>, message: &Part<'_>) -> Result<Outcome, ParseError> {
        let mid = message.required_id("mid")?;
        let echo = message.flag("is_echo")?;
        let mut body = Body::default();
        let (direction, customer) = if echo {
            let app_id = message.id("app_id")?;
            if let (Some(own), Some(app_id)) = (self.cx.own_app_id, app_id.as_deref())
                && own.trim() == app_id
            {
                return Ok(Outcome::OwnEcho);
            }
            self.meta(&mut body, "echo", "true");
            if let Some(app_id) = app_id {
                self.meta(&mut body, "app_id", app_id);
            }
            (
                Direction::Outbound,
                self.customer(item, "recipient", INVALID_RECIPIENT)?,
            )
        } else {
            (
                Direction::Inbound,
                self.customer(item, "sender", INVALID_SENDER)?,
            )
        };

        if message.flag("is_deleted")? {
            body.activity = Some(Activity {
                name: "deleted".to_owned(),
                attributes: HashMap::from([("message_id".to_owned(), mid.clone())]),
            });
            body.reply_to = mid.clone();
            return Ok(boxed(self.event(
                format!("deleted:{mid}"),
                direction,
                &customer,
                body,
            )));
        }
        if message.flag("is_unsupported")? {
            return Err(ParseError::new(
                UNSUPPORTED_MESSAGE,
                "Meta marks the message unsupported (a format its API does not deliver)",
            ));
        }

        let mut links = Vec::new();
        self.attachments(message, &mut body, &mut links)?;
        let mut text = message.text("text")?.unwrap_or_default().to_owned();
        for link in links {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&link);
        }
        body.text = text;
        if let Some(quick_reply) = message.part("quick_reply")?
            && let Some(payload) = quick_reply.text("payload")?
        {
            self.meta(&mut body, "quick_reply.payload", payload);
        }
        if let Some(reply_to) = message.part("reply_to")? {
            if let Some(replied) = reply_to.id("mid")? {
                body.reply_to = replied;
            }
            if let Some(story) = reply_to.part("story")? {
                if let Some(id) = story.id("id")? {
                    self.meta(&mut body, "story.id", id);
                }
                if let Some(url) = story.url("url")? {
                    self.meta(&mut body, "story.url", url);
                }
            }
        }
        if let Some(referral) = message.part("referral")? {
            self.referral(&referral, &mut body)?;
        }
        if body.text.is_empty() && body.attachments.is_empty() {
            return Err(ParseError::new(
                UNSUPPORTED_MESSAGE,
                "the message carries no text or file Omnid reads",
            ));
        }
        Ok(boxed(self.event(mid, direction, &customer, body)))
    }

    /// Files become attachments; links without a file become `links`
    /// (lines for the text).
    fn attachments(
        &self,
        message: &Part<'_>,
        body: &mut Body,
        links: &mut Vec<String>,
    ) -> Result<(), ParseError> {
        let all = message.array("attachments")?;
        let mut types = Vec::new();
        for value in all.iter().take(MAX_ATTACHMENTS) {
            let Value::Object(fields) = value else {
                return Err(invalid("an `attachments` item is not an object"));
            };
            let attachment = Part {
                name: "attachments[]",
                fields,
            };
            let kind = attachment.text("type")?.unwrap_or_default().trim();
            let kind = bounded(kind, MAX_WORD_LEN);
            types.push(kind.to_owned());
            let payload = attachment.part("payload")?;
            let (mut url, mut title) = (None, None);
            if let Some(payload) = &payload {
                url = payload.url("url")?;
                title = payload.text("title")?;
                if let Some(sticker) = payload.id("sticker_id")? {
                    self.meta(body, "sticker_id", sticker);
                }
            }
            // Fallback attachments carry their link beside the payload.
            if url.is_none() {
                url = match attachment.url("url")? {
                    Some(url) => Some(url),
                    None => attachment.url("URL")?,
                };
            }
            if title.is_none() {
                title = attachment.text("title")?;
            }

            if FILE_TYPES.contains(&kind) {
                let https = url.filter(|url| is_https(url));
                let index = u32::try_from(body.attachments.len()).unwrap_or(u32::MAX);
                body.attachments.push(Attachment {
                    name: bounded(title.unwrap_or_default().trim(), MAX_NAME_LEN).to_owned(),
                    media_type: String::new(),
                    size: 0,
                    sha256: String::new(),
                    uri: https.unwrap_or_default().to_owned(),
                });
                match (kind, https) {
                    ("story_mention", _) => self.meta(body, "story_mention", "true"),
                    (_, Some(url)) => body.media.push(MediaRef {
                        attachment: index,
                        source: url.to_owned(),
                    }),
                    _ => {}
                }
                if let Some(payload) = &payload
                    && let Some(reel) = payload.id("reel_video_id")?
                {
                    self.meta(body, "reel_video_id", reel);
                }
            } else {
                if let Some(payload) = &payload {
                    if let Some(media_id) = payload.id("ig_post_media_id")? {
                        self.meta(body, "ig_post.media_id", media_id);
                    }
                    if let Some(template) = payload.text("template_type")? {
                        self.meta(body, "template_type", bounded(template, MAX_WORD_LEN));
                    }
                }
                for line in [title, url].into_iter().flatten() {
                    let line = line.trim();
                    if !line.is_empty() && !links.iter().any(|known| known == line) {
                        links.push(line.to_owned());
                    }
                }
            }
        }
        if !types.is_empty() {
            self.meta(body, "attachment_types", types.join(","));
        }
        if all.len() > MAX_ATTACHMENTS {
            self.meta(
                body,
                "attachments_omitted",
                (all.len() - MAX_ATTACHMENTS).to_string(),
            );
        }
        Ok(())
    }

    /// Where the customer came from (an ad, a link with `ref`, a shop).
    fn referral(&self, referral: &Part<'_>, body: &mut Body) -> Result<(), ParseError> {
        for name in ["ref", "source", "type"] {
            if let Some(value) = referral.text(name)? {
                self.meta(
                    body,
                    &format!("referral.{name}"),
                    bounded(value, MAX_KEY_PART_LEN),
                );
            }
        }
        if let Some(product) = referral.part("product")?
            && let Some(id) = product.id("id")?
        {
            self.meta(body, "referral.product_id", id);
        }
        Ok(())
    }

    fn postback(&self, item: &Part<'_>, postback: &Part<'_>) -> Result<Inbound, ParseError> {
        let customer = self.customer(item, "sender", INVALID_SENDER)?;
        let title = postback.text("title")?;
        let payload = postback.text("payload")?;
        if title.is_none() && payload.is_none() {
            return Err(invalid("the postback has neither `title` nor `payload`"));
        }
        let mut body = Body {
            text: title.unwrap_or_default().to_owned(),
            ..Body::default()
        };
        if let Some(payload) = payload {
            self.meta(&mut body, "postback.payload", payload);
        }
        if let Some(referral) = postback.part("referral")? {
            self.referral(&referral, &mut body)?;
        }
        let pmid = match postback.id("mid")? {
            Some(mid) => mid,
            None => format!(
                "postback:{}:{}:{}",
                customer.value(),
                self.timestamp_key(),
                bounded(payload.unwrap_or_default(), MAX_KEY_PART_LEN)
            ),
        };
        Ok(self.event(pmid, Direction::Inbound, &customer, body))
    }

    fn reaction(&self, item: &Part<'_>, reaction: &Part<'_>) -> Result<Inbound, ParseError> {
        let customer = self.customer(item, "sender", INVALID_SENDER)?;
        let mid = reaction.required_id("mid")?;
        let action = match reaction.text("action")?.map(str::trim) {
            None | Some("") => "react",
            Some(action) if action.len() <= MAX_WORD_LEN => action,
            Some(_) => return Err(invalid("`reaction.action` is too long")),
        };
        let mut attributes = HashMap::from([
            ("message_id".to_owned(), mid.clone()),
            ("action".to_owned(), action.to_owned()),
        ]);
        for name in ["emoji", "reaction"] {
            if let Some(value) = reaction.text(name)? {
                attributes.insert(name.to_owned(), bounded(value, MAX_WORD_LEN).to_owned());
            }
        }
        let pmid = format!(
            "reaction:{}:{mid}:{action}:{}",
            customer.value(),
            self.timestamp_key()
        );
        let body = Body {
            activity: Some(Activity {
                name: "reaction".to_owned(),
                attributes,
            }),
            reply_to: mid,
            ..Body::default()
        };
        Ok(self.event(pmid, Direction::Inbound, &customer, body))
    }

    /// Messenger reports reads by watermark, Instagram by the read mid.
    fn read(&self, item: &Part<'_>, read: &Part<'_>) -> Result<Inbound, ParseError> {
        let customer = self.customer(item, "sender", INVALID_SENDER)?;
        let watermark = read.integer("watermark")?;
        let mid = read.id("mid")?;
        let mut attributes = HashMap::new();
        let key = match (watermark, &mid) {
            (Some(watermark), _) => watermark.to_string(),
            (None, Some(mid)) => mid.clone(),
            (None, None) => return Err(invalid("the read has neither `watermark` nor `mid`")),
        };
        if let Some(watermark) = watermark {
            attributes.insert("watermark".to_owned(), watermark.to_string());
        }
        if let Some(mid) = mid {
            attributes.insert("mids".to_owned(), mid);
        }
        let pmid = format!("read:{}:{key}", customer.value());
        Ok(self.activity(pmid, "read", attributes, &customer))
    }

    fn delivery(&self, item: &Part<'_>, delivery: &Part<'_>) -> Result<Inbound, ParseError> {
        let customer = self.customer(item, "sender", INVALID_SENDER)?;
        let watermark = delivery.integer("watermark")?;
        let all = delivery.array("mids")?;
        let mut mids = Vec::new();
        for value in all.iter().take(MAX_MIDS) {
            mids.push(
                id_of(value)
                    .ok_or_else(|| invalid("a `delivery.mids` item is not a message id"))?,
            );
        }
        let key = match (watermark, mids.first()) {
            (Some(watermark), _) => watermark.to_string(),
            (None, Some(first)) => first.clone(),
            (None, None) => return Err(invalid("the delivery has neither `watermark` nor `mids`")),
        };
        let mut attributes = HashMap::new();
        if let Some(watermark) = watermark {
            attributes.insert("watermark".to_owned(), watermark.to_string());
        }
        if !mids.is_empty() {
            attributes.insert("mids".to_owned(), mids.join(","));
        }
        if all.len() > MAX_MIDS {
            attributes.insert(
                "mids_omitted".to_owned(),
                (all.len() - MAX_MIDS).to_string(),
            );
        }
        let pmid = format!("delivery:{}:{key}", customer.value());
        Ok(self.activity(pmid, "delivered", attributes, &customer))
    }

    /// The item's `timestamp` as part of a key (empty when it has none).
    fn timestamp_key(&self) -> String {
        self.timestamp.map(|t| t.to_string()).unwrap_or_default()
    }

    fn activity(
        &self,
        pmid: String,
        name: &str,
        attributes: HashMap<String, String>,
        customer: &Handle,
    ) -> Inbound {
        let body = Body {
            activity: Some(Activity {
                name: name.to_owned(),
                attributes,
            }),
            ..Body::default()
        };
        self.event(pmid, Direction::Inbound, customer, body)
    }

    fn event(&self, pmid: String, direction: Direction, customer: &Handle, body: Body) -> Inbound {
        let cx = self.cx;
        let handle: IdentityHandle = omni_connector::handle::to_proto(customer, "", true);
        let (sender, recipients) = match direction {
            Direction::Outbound => (None, vec![handle]),
            _ => (Some(handle), Vec::new()),
        };
        let (kind, content) = match body.activity {
            Some(_) => (EventKind::Activity, None),
            None => (
                EventKind::Message,
                Some(Content {
                    text: body.text,
                    attachments: body.attachments,
                    ..Default::default()
                }),
            ),
        };
        let event = ConversationEvent {
            event_id: omni_model::event_id(cx.channel_id, &pmid).to_string(),
            channel_id: cx.channel_id.to_owned(),
            channel_kind: cx.platform.channel_kind() as i32,
            direction: direction as i32,
            kind: kind as i32,
            sender,
            recipients,
            provider_message_id: pmid,
            sent_at: self.sent_at,
            received_at: Some(cx.received_at),
            ingested_at: Some(cx.received_at),
            content,
            threading: Some(ThreadingHints {
                provider_chat_id: customer.value().to_owned(),
                reply_to_provider_message_id: body.reply_to,
                ..Default::default()
            }),
            provider_metadata: body.metadata,
            activity: body.activity,
            ..Default::default()
        };
        Inbound::new(event).with_media(body.media)
    }
}

/// A JSON object of an item, named for error messages.
struct Part<'v> {
    name: &'static str,
    fields: &'v Map<String, Value>,
}

impl<'v> Part<'v> {
    /// The field's value; `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.fields.get(key).filter(|value| !value.is_null())
    }

    fn wrong(&self, key: &str, what: &str) -> ParseError {
        invalid(format!("`{}.{key}` is not {what}", self.name))
    }

    fn part(&self, key: &'static str) -> Result<Option<Part<'v>>, ParseError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(fields)) => Ok(Some(Part { name: key, fields })),
            Some(_) => Err(self.wrong(key, "an object")),
        }
    }

    fn required(&self, key: &'static str) -> Result<Part<'v>, ParseError> {
        self.part(key)?.ok_or_else(|| self.wrong(key, "an object"))
    }

    fn text(&self, key: &str) -> Result<Option<&'v str>, ParseError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(self.wrong(key, "a string")),
        }
    }

    /// A URL, bounded; whether it may be fetched is [`is_https`]'s call.
    fn url(&self, key: &str) -> Result<Option<&'v str>, ParseError> {
        match self.text(key)?.map(str::trim) {
            None | Some("") => Ok(None),
            Some(url) if url.len() <= MAX_URL_LEN => Ok(Some(url)),
            Some(_) => Err(self.wrong(key, "a URL of at most 4096 bytes")),
        }
    }

    /// An id: Meta sends strings, a whole number is taken too.
    fn id(&self, key: &str) -> Result<Option<String>, ParseError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => id_of(value)
                .map(Some)
                .ok_or_else(|| self.wrong(key, "an id")),
        }
    }

    fn required_id(&self, key: &str) -> Result<String, ParseError> {
        self.id(key)?
            .ok_or_else(|| invalid(format!("no `{}.{key}`", self.name)))
    }

    fn flag(&self, key: &str) -> Result<bool, ParseError> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(_) => Err(self.wrong(key, "true or false")),
        }
    }

    /// A whole number, or one written as a string (Meta's test samples).
    fn integer(&self, key: &str) -> Result<Option<i64>, ParseError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(number)) => number
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a whole number")),
            Some(Value::String(text)) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| self.wrong(key, "a whole number")),
            Some(_) => Err(self.wrong(key, "a whole number")),
        }
    }

    fn array(&self, key: &str) -> Result<&'v [Value], ParseError> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(self.wrong(key, "an array")),
        }
    }
}

/// A string or unsigned number as an id: trimmed, non-empty, bounded.
fn id_of(value: &Value) -> Option<String> {
    let id = match value {
        Value::String(text) => text.trim().to_owned(),
        Value::Number(number) if number.is_u64() => number.to_string(),
        _ => return None,
    };
    (!id.is_empty() && id.len() <= MAX_ID_LEN && !id.chars().any(char::is_control)).then_some(id)
}

/// Whether Omnid may fetch `url`: only https (a `javascript:` or plain
/// http link never reaches an attachment's `uri` or the media worker).
fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
        && url.len() > 8
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// An item's `timestamp` (milliseconds, or seconds below
/// [`SECONDS_BELOW`]).
fn sent_at(raw: i64) -> Result<Timestamp, ParseError> {
    let (seconds, millis) = if (0..SECONDS_BELOW).contains(&raw) {
        (raw, 0)
    } else {
        (raw.div_euclid(1000), raw.rem_euclid(1000))
    };
    let nanos = i32::try_from(millis * 1_000_000).unwrap_or(0);
    omni_model::timestamp::checked_timestamp(seconds, nanos).map_err(|_| {
        ParseError::new(
            INVALID_TIMESTAMP,
            format!("`timestamp` {raw} is outside the years 0001 to 9999"),
        )
    })
}

fn invalid(message: impl Into<String>) -> ParseError {
    ParseError::new(INVALID_ITEM, message)
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn bounded(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// A provider value for an error message: bounded, since it is hostile.
fn shown(value: &str) -> String {
    value.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Limits;

    const AT: Timestamp = Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };
    const PAGE: &str = "106712345678901";
    const PSID: &str = "6251234567890123";
    const IG: &str = "17841405822304914";
    const IGSID: &str = "1293847561029384";
    const OWN_APP: &str = "1517776481860111";

    const FB: MessagingContext<'static> = MessagingContext {
        channel_id: "fb",
        platform: Platform::Messenger,
        account_id: PAGE,
        own_app_id: Some(OWN_APP),
        received_at: AT,
    };
    const INSTA: MessagingContext<'static> = MessagingContext {
        channel_id: "ig",
        platform: Platform::Instagram,
        account_id: IG,
        own_app_id: Some(OWN_APP),
        received_at: AT,
    };

    macro_rules! fixture {
        ($path:literal) => {
            include_str!(concat!("../../tests/fixtures/", $path))
        };
    }

    fn run(body: &str, cx: &MessagingContext<'_>) -> Normalized {
        let envelope =
            Envelope::parse(body.as_bytes(), cx.platform.object(), &Limits::default()).unwrap();
        normalize(&envelope, cx)
    }

    fn events(body: &str, cx: &MessagingContext<'_>) -> Vec<Inbound> {
        let out = run(body, cx);
        assert!(out.unreadable.is_empty(), "{:?}", out.unreadable);
        assert_eq!(out.own_echoes, 0);
        out.events
    }

    fn one(body: &str, cx: &MessagingContext<'_>) -> Inbound {
        let mut all = events(body, cx);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    fn unreadable(body: &str, cx: &MessagingContext<'_>) -> Vec<(&'static str, String)> {
        let out = run(body, cx);
        assert!(out.events.is_empty(), "{:?}", out.events);
        out.unreadable
            .into_iter()
            .map(|u| (u.error.code, String::from_utf8(u.raw).unwrap()))
            .collect()
    }

    /// One item in a POST for `cx`'s account.
    fn post(cx: &MessagingContext<'_>, item: &str) -> String {
        format!(
            r#"{{"object":"{}","entry":[{{"id":"{}","time":1,"messaging":[{item}]}}]}}"#,
            cx.platform.object(),
            cx.account_id
        )
    }

    fn error_of(cx: &MessagingContext<'_>, item: &str) -> &'static str {
        let out = run(&post(cx, item), cx);
        assert!(out.events.is_empty(), "{item}: {:?}", out.events);
        let [one] = out.unreadable.as_slice() else {
            panic!("{item}: {:?}", out.unreadable)
        };
        assert_eq!(one.raw, item.as_bytes());
        one.error.code
    }

    fn customer(kind: omni_proto::v1::HandleKind, value: &str, scope: &str) -> IdentityHandle {
        IdentityHandle {
            kind: kind as i32,
            value: value.into(),
            scope: scope.into(),
            display_name: String::new(),
            verified: true,
        }
    }

    fn psid(value: &str) -> IdentityHandle {
        customer(omni_proto::v1::HandleKind::MessengerPsid, value, PAGE)
    }

    fn igsid(value: &str) -> IdentityHandle {
        customer(omni_proto::v1::HandleKind::InstagramIgsid, value, IG)
    }

    fn millis(ms: i64) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: ms / 1000,
            nanos: i32::try_from(ms % 1000).unwrap() * 1_000_000,
        })
    }

    fn text_of(e: &ConversationEvent) -> &str {
        &e.content.as_ref().unwrap().text
    }

    fn activity_of(e: &ConversationEvent) -> &Activity {
        assert_eq!(e.kind, EventKind::Activity as i32);
        assert!(e.content.is_none());
        e.activity.as_ref().unwrap()
    }

    #[test]
    fn platforms() {
        assert_eq!(Platform::Messenger.object(), "page");
        assert_eq!(Platform::Instagram.object(), "instagram");
        assert_eq!(Platform::Messenger.channel_kind(), ChannelKind::Messenger);
        assert_eq!(Platform::Instagram.channel_kind(), ChannelKind::Instagram);
        assert_eq!(Platform::Messenger.handle_kind(), HandleKind::MessengerPsid);
        assert_eq!(
            Platform::Instagram.handle_kind(),
            HandleKind::InstagramIgsid
        );
        assert_eq!(Platform::Messenger.prefix(), "messenger");
        assert_eq!(Platform::Instagram.prefix(), "instagram");
        assert!(Platform::Messenger.handle_kind().requires_scope());
        assert!(Platform::Instagram.handle_kind().requires_scope());
    }

    #[test]
    fn messenger_text() {
        let inbound = one(fixture!("messenger/text.json"), &FB);
        let e = &inbound.event;
        let mid = "mid.1457764197618:41d102a3e1ae206a38";
        assert_eq!(e.event_id, omni_model::event_id("fb", mid).to_string());
        assert_eq!(e.provider_message_id, mid);
        assert_eq!(e.channel_id, "fb");
        assert_eq!(e.channel_kind, ChannelKind::Messenger as i32);
        assert_eq!(e.direction, Direction::Inbound as i32);
        assert_eq!(e.kind, EventKind::Message as i32);
        assert_eq!(e.sender, Some(psid(PSID)));
        assert!(e.recipients.is_empty());
        assert_eq!(e.sent_at, millis(1_458_692_752_478));
        assert_eq!(e.received_at, Some(AT));
        assert_eq!(e.ingested_at, Some(AT));
        assert_eq!(text_of(e), "hello, world!");
        assert!(e.content.as_ref().unwrap().attachments.is_empty());
        let threading = e.threading.as_ref().unwrap();
        assert_eq!(threading.provider_chat_id, PSID);
        assert_eq!(threading.reply_to_provider_message_id, "");
        assert!(e.provider_metadata.is_empty(), "{:?}", e.provider_metadata);
        assert!(e.activity.is_none());
        assert!(inbound.media.is_empty());
    }

    #[test]
    fn messenger_quick_reply_and_reply_to() {
        let e = one(fixture!("messenger/quick_reply.json"), &FB).event;
        assert_eq!(text_of(&e), "Red");
        assert_eq!(
            e.provider_metadata["messenger.quick_reply.payload"],
            "COLOR_RED"
        );
        let e = one(fixture!("messenger/reply_to.json"), &FB).event;
        assert_eq!(text_of(&e), "hello, world!");
        assert_eq!(
            e.threading.unwrap().reply_to_provider_message_id,
            "m_1fTq8oLumEyIp3Q2MR-aY7IfLZDamVrALniheU"
        );
        assert_eq!(e.provider_message_id, "m_1457764197618:41d102a3e1ae206a38");
    }

    #[test]
    fn messenger_images_are_downloaded_from_their_urls() {
        let inbound = one(fixture!("messenger/image.json"), &FB);
        let content = inbound.event.content.as_ref().unwrap();
        assert_eq!(content.text, "");
        let urls = [
            "https://scontent.xx.fbcdn.net/v/t1.15752-9/photo1.jpg?_nc_cat=1&oh=abc&oe=5B2C",
            "https://scontent.xx.fbcdn.net/v/t1.15752-9/photo2.jpg?_nc_cat=1&oh=def&oe=5B2C",
        ];
        assert_eq!(
            content.attachments,
            urls.map(|url| Attachment {
                name: String::new(),
                media_type: String::new(),
                size: 0,
                sha256: String::new(),
                uri: url.into(),
            })
        );
        assert_eq!(
            inbound.media,
            [
                MediaRef {
                    attachment: 0,
                    source: urls[0].into()
                },
                MediaRef {
                    attachment: 1,
                    source: urls[1].into()
                },
            ]
        );
        assert_eq!(
            inbound.event.provider_metadata["messenger.attachment_types"],
            "image,image"
        );
        assert_eq!(inbound.event.sent_at, millis(1_518_479_195_308));
    }

    #[test]
    fn messenger_sticker_file_and_fallback() {
        let inbound = one(fixture!("messenger/sticker.json"), &FB);
        assert_eq!(
            inbound.event.provider_metadata["messenger.sticker_id"],
            "369239263222822"
        );
        assert_eq!(inbound.media.len(), 1);
        assert_eq!(
            inbound.event.content.unwrap().attachments[0].uri,
            "https://scontent.xx.fbcdn.net/v/t39.1997-6/851557_369239266556155_759568595_n.png"
        );

        let inbound = one(fixture!("messenger/file_and_fallback.json"), &FB);
        let e = &inbound.event;
        // The shared link has no file: it joins the text.
        assert_eq!(
            text_of(e),
            "the invoice and the product page\nSpring collection\nhttps://www.example.com/spring"
        );
        let attachments = &e.content.as_ref().unwrap().attachments;
        assert_eq!(attachments.len(), 1);
        assert_eq!(
            attachments[0].uri,
            "https://cdn.fbsbx.com/v/t59.2708-21/invoice.pdf?_nc_cat=104&oh=aa"
        );
        assert_eq!(
            inbound.media,
            [MediaRef {
                attachment: 0,
                source: attachments[0].uri.clone()
            }]
        );
        assert_eq!(
            e.provider_metadata["messenger.attachment_types"],
            "file,fallback"
        );
    }

    #[test]
    fn messenger_postbacks() {
        let all = events(fixture!("messenger/postback.json"), &FB);
        let [with_mid, without] = all.as_slice() else {
            panic!("{all:?}")
        };
        let e = &with_mid.event;
        assert_eq!(e.kind, EventKind::Message as i32);
        assert_eq!(e.direction, Direction::Inbound as i32);
        assert_eq!(text_of(e), "Get Started");
        let mid = "m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6AC8fplwlqLP_5cgXIbu7I3rBN0P";
        assert_eq!(e.provider_message_id, mid);
        assert_eq!(e.event_id, omni_model::event_id("fb", mid).to_string());
        assert_eq!(
            e.provider_metadata["messenger.postback.payload"],
            "GET_STARTED"
        );
        assert_eq!(e.provider_metadata["messenger.referral.ref"], "spring-ad");
        assert_eq!(
            e.provider_metadata["messenger.referral.source"],
            "SHORTLINK"
        );
        assert_eq!(
            e.provider_metadata["messenger.referral.type"],
            "OPEN_THREAD"
        );
        assert_eq!(e.sender, Some(psid(PSID)));

        let e = &without.event;
        let key = format!("postback:{PSID}:1527459830000:HUMAN");
        assert_eq!(e.provider_message_id, key);
        assert_eq!(e.event_id, omni_model::event_id("fb", &key).to_string());
        assert_eq!(text_of(e), "Talk to a person");
    }

    #[test]
    fn messenger_reactions() {
        let all = events(fixture!("messenger/reaction.json"), &FB);
        let [react, unreact] = all.as_slice() else {
            panic!("{all:?}")
        };
        let e = &react.event;
        let a = activity_of(e);
        assert_eq!(a.name, "reaction");
        assert_eq!(a.attributes["emoji"], "\u{2764}\u{fe0f}");
        assert_eq!(a.attributes["reaction"], "love");
        assert_eq!(a.attributes["action"], "react");
        assert_eq!(a.attributes["message_id"], "m_reacted-to-message-id");
        assert_eq!(a.attributes.len(), 4);
        assert_eq!(e.direction, Direction::Inbound as i32);
        assert_eq!(e.sender, Some(psid(PSID)));
        let threading = e.threading.as_ref().unwrap();
        assert_eq!(
            threading.reply_to_provider_message_id,
            "m_reacted-to-message-id"
        );
        let key = format!("reaction:{PSID}:m_reacted-to-message-id:react:1458668856463");
        assert_eq!(e.provider_message_id, key);
        assert_eq!(e.event_id, omni_model::event_id("fb", &key).to_string());

        let a = activity_of(&unreact.event);
        assert_eq!(a.attributes["action"], "unreact");
        assert!(!a.attributes.contains_key("emoji"));
        assert_ne!(unreact.event.event_id, react.event.event_id);
    }

    #[test]
    fn messenger_read_and_delivery() {
        let e = one(fixture!("messenger/read.json"), &FB).event;
        let a = activity_of(&e);
        assert_eq!(a.name, "read");
        assert_eq!(a.attributes["watermark"], "1458668856253");
        assert_eq!(a.attributes.len(), 1);
        assert_eq!(e.provider_message_id, format!("read:{PSID}:1458668856253"));
        assert_eq!(e.direction, Direction::Inbound as i32);
        assert_eq!(e.sender, Some(psid(PSID)));
        assert_eq!(e.sent_at, millis(1_458_668_856_463));

        let e = one(fixture!("messenger/delivery.json"), &FB).event;
        let a = activity_of(&e);
        assert_eq!(a.name, "delivered");
        assert_eq!(a.attributes["watermark"], "1458668856253");
        assert_eq!(
            a.attributes["mids"],
            "mid.1458668856218:ed81099e15d3f4f233,mid.1458668856219:ed81099e15d3f4f234"
        );
        assert_eq!(
            e.provider_message_id,
            format!("delivery:{PSID}:1458668856253")
        );
        // The documented delivery has no `timestamp`.
        assert_eq!(e.sent_at, None);
        assert_eq!(e.threading.unwrap().provider_chat_id, PSID);
    }

    #[test]
    fn echo_of_a_reply_typed_in_the_page_inbox_is_outbound() {
        let inbound = one(fixture!("messenger/echo.json"), &FB);
        let e = &inbound.event;
        assert_eq!(e.direction, Direction::Outbound as i32);
        assert_eq!(e.kind, EventKind::Message as i32);
        assert_eq!(e.sender, None);
        assert_eq!(e.recipients, [psid(PSID)]);
        assert_eq!(text_of(e), "Thanks, we will call you back today.");
        assert_eq!(
            e.provider_message_id,
            "mid.1457764197618:41d102a3e1ae206a40"
        );
        assert_eq!(e.provider_metadata["messenger.echo"], "true");
        assert_eq!(e.provider_metadata["messenger.app_id"], "263902037430900");
        assert_eq!(e.threading.as_ref().unwrap().provider_chat_id, PSID);
    }

    #[test]
    fn echo_of_omnids_own_app_is_skipped() {
        let out = run(fixture!("messenger/own_echo.json"), &FB);
        assert!(out.events.is_empty());
        assert!(out.unreadable.is_empty());
        assert_eq!(out.own_echoes, 1);
        // Without a configured app id it is just another outbound message.
        let unknown = MessagingContext {
            own_app_id: None,
            ..FB
        };
        let e = one(fixture!("messenger/own_echo.json"), &unknown).event;
        assert_eq!(e.direction, Direction::Outbound as i32);
        assert_eq!(e.provider_metadata["messenger.app_id"], OWN_APP);
        // Another app's id is not ours.
        let other = MessagingContext {
            own_app_id: Some("42"),
            ..FB
        };
        assert_eq!(events(fixture!("messenger/own_echo.json"), &other).len(), 1);
    }

    #[test]
    fn other_item_kinds_are_dead_lettered_with_their_json() {
        let all = unreadable(fixture!("messenger/unsupported_events.json"), &FB);
        assert_eq!(all.len(), 5);
        let expected = [
            "optin",
            "referral",
            "account_linking",
            "policy_enforcement",
            "message_edit",
        ];
        for ((code, raw), kind) in all.iter().zip(expected) {
            assert_eq!(*code, UNSUPPORTED_EVENT);
            let item: Value = serde_json::from_str(raw).unwrap();
            assert!(item.get(kind).is_some(), "{kind}: {raw}");
        }
        let out = run(fixture!("messenger/unsupported_events.json"), &FB);
        assert!(out.unreadable[4].error.message.contains("message_edit"));
    }

    #[test]
    fn instagram_text_and_image() {
        let e = one(fixture!("instagram/text.json"), &INSTA).event;
        assert_eq!(e.channel_kind, ChannelKind::Instagram as i32);
        assert_eq!(e.sender, Some(igsid(IGSID)));
        assert_eq!(text_of(&e), "Hi! Is the blue jacket still available?");
        assert_eq!(e.sent_at, millis(1_569_262_485_349));
        assert_eq!(
            e.event_id,
            omni_model::event_id("ig", &e.provider_message_id).to_string()
        );
        assert!(e.provider_message_id.starts_with("aWdfZAG1"));

        let inbound = one(fixture!("instagram/image.json"), &INSTA);
        let url = "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=17890000000000001&signature=AbCdEf";
        assert_eq!(
            inbound.media,
            [MediaRef {
                attachment: 0,
                source: url.into()
            }]
        );
        assert_eq!(inbound.event.content.unwrap().attachments[0].uri, url);
        assert_eq!(
            inbound.event.provider_metadata["instagram.attachment_types"],
            "image"
        );
    }

    #[test]
    fn instagram_story_reply_and_mention() {
        let e = one(fixture!("instagram/story_reply.json"), &INSTA).event;
        assert_eq!(text_of(&e), "Love this!");
        assert_eq!(
            e.provider_metadata["instagram.story.id"],
            "17950000000000002"
        );
        assert_eq!(
            e.provider_metadata["instagram.story.url"],
            "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=17950000000000002&signature=GhIjKl"
        );
        assert_eq!(e.threading.unwrap().reply_to_provider_message_id, "");

        let inbound = one(fixture!("instagram/story_mention.json"), &INSTA);
        let e = &inbound.event;
        assert_eq!(e.kind, EventKind::Message as i32);
        assert_eq!(e.provider_metadata["instagram.story_mention"], "true");
        let url = "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=17960000000000003&signature=MnOpQr";
        assert_eq!(e.content.as_ref().unwrap().attachments[0].uri, url);
        // Meta forbids storing a story's media: the URL only.
        assert!(inbound.media.is_empty());
    }

    #[test]
    fn instagram_shares_are_links_and_reels_are_files() {
        let inbound = one(fixture!("instagram/share.json"), &INSTA);
        let e = &inbound.event;
        let post = "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=18139494541428835&signature=StUvWx";
        let reel = "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=18000000000000004&signature=YzAbCd";
        // The share and the post name one URL: it is written once.
        assert_eq!(
            text_of(e),
            format!("{post}\nBuild a workspace that attracts talent.")
        );
        let attachments = &e.content.as_ref().unwrap().attachments;
        assert_eq!(attachments.len(), 1);
        assert_eq!(attachments[0].name, "Behind the scenes");
        assert_eq!(attachments[0].uri, reel);
        assert_eq!(
            inbound.media,
            [MediaRef {
                attachment: 0,
                source: reel.into()
            }]
        );
        let m = &e.provider_metadata;
        assert_eq!(m["instagram.attachment_types"], "share,ig_post,ig_reel");
        assert_eq!(m["instagram.ig_post.media_id"], "18139494541428835");
        assert_eq!(m["instagram.reel_video_id"], "18000000000000004");
    }

    #[test]
    fn instagram_reactions_seen_and_postbacks() {
        let all = events(fixture!("instagram/reaction.json"), &INSTA);
        assert_eq!(all.len(), 2);
        let a = activity_of(&all[0].event);
        assert_eq!(a.name, "reaction");
        assert_eq!(a.attributes["reaction"], "love");
        assert_eq!(a.attributes["emoji"], "\u{2764}\u{fe0f}");
        assert_eq!(all[0].event.sender, Some(igsid(IGSID)));
        assert_eq!(activity_of(&all[1].event).attributes["action"], "unreact");

        let e = one(fixture!("instagram/seen.json"), &INSTA).event;
        let a = activity_of(&e);
        assert_eq!(a.name, "read");
        assert_eq!(
            a.attributes["mids"],
            "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOourreply"
        );
        assert!(!a.attributes.contains_key("watermark"));
        assert_eq!(
            e.provider_message_id,
            format!("read:{IGSID}:aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOourreply")
        );

        let e = one(fixture!("instagram/postback.json"), &INSTA).event;
        assert_eq!(text_of(&e), "What are your opening hours?");
        assert_eq!(
            e.provider_metadata["instagram.postback.payload"],
            "ICEBREAKER_HOURS"
        );
        assert_eq!(
            e.provider_message_id,
            "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOicebreaker"
        );
    }

    #[test]
    fn instagram_unsend_is_a_deleted_activity() {
        let e = one(fixture!("instagram/deleted.json"), &INSTA).event;
        let a = activity_of(&e);
        let mid = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOunsent";
        assert_eq!(a.name, "deleted");
        assert_eq!(
            a.attributes,
            HashMap::from([("message_id".into(), mid.into())])
        );
        assert_eq!(e.provider_message_id, format!("deleted:{mid}"));
        assert_eq!(
            e.event_id,
            omni_model::event_id("ig", &format!("deleted:{mid}")).to_string()
        );
        assert_ne!(e.event_id, omni_model::event_id("ig", mid).to_string());
        assert_eq!(e.direction, Direction::Inbound as i32);
        assert_eq!(e.sender, Some(igsid(IGSID)));
        assert_eq!(e.threading.unwrap().reply_to_provider_message_id, mid);
    }

    #[test]
    fn instagram_unsupported_echo_and_comments() {
        let all = unreadable(fixture!("instagram/unsupported.json"), &INSTA);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, UNSUPPORTED_MESSAGE);
        assert!(all[0].1.contains("is_unsupported"));

        // Instagram's echoes carry no app id: an outbound message.
        let e = one(fixture!("instagram/echo.json"), &INSTA).event;
        assert_eq!(e.direction, Direction::Outbound as i32);
        assert_eq!(e.sender, None);
        assert_eq!(e.recipients, [igsid(IGSID)]);
        assert_eq!(e.provider_metadata["instagram.echo"], "true");
        assert!(!e.provider_metadata.contains_key("instagram.app_id"));

        let all = unreadable(fixture!("instagram/comments.json"), &INSTA);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, UNSUPPORTED_FIELD);
        let change: Value = serde_json::from_str(&all[0].1).unwrap();
        assert_eq!(change["field"], "comments");
        assert_eq!(change["value"]["text"], "Where can I buy this?");
    }

    #[test]
    fn a_post_of_several_entries_keeps_its_order() {
        let out = run(fixture!("messenger/batch.json"), &FB);
        let ids: Vec<_> = out
            .events
            .iter()
            .map(|i| i.event.provider_message_id.as_str())
            .collect();
        let read = format!("read:{}:1700000000450", "6251234567890124");
        assert_eq!(ids, ["m_batch_1", "m_batch_2", "m_batch_3", read.as_str()]);
        assert_eq!(out.own_echoes, 1);
        let codes: Vec<_> = out.unreadable.iter().map(|u| u.error.code).collect();
        assert_eq!(codes, [OTHER_ACCOUNT, INVALID_ITEM]);
        // The other account's entry is kept whole.
        let entry: Value = serde_json::from_slice(&out.unreadable[0].raw).unwrap();
        assert_eq!(entry["id"], "999999999999999");
        assert_eq!(entry["time"], 1_700_000_000_600_i64);
        assert_eq!(entry["messaging"][0]["message"]["mid"], "m_other_page");
        assert!(out.unreadable[0].error.message.contains("999999999999999"));
        let item: Value = serde_json::from_slice(&out.unreadable[1].raw).unwrap();
        assert_eq!(item["message"], "not an object");
        // The same POST on another channel reads nothing.
        let other = MessagingContext {
            account_id: "555",
            ..FB
        };
        let out = run(fixture!("messenger/batch.json"), &other);
        assert!(out.events.is_empty());
        assert_eq!(out.unreadable.len(), 3);
        assert!(out.unreadable.iter().all(|u| u.error.code == OTHER_ACCOUNT));
    }

    #[test]
    fn ids_are_deterministic() {
        let fixtures = [
            fixture!("messenger/text.json"),
            fixture!("messenger/postback.json"),
            fixture!("messenger/reaction.json"),
            fixture!("messenger/read.json"),
            fixture!("messenger/delivery.json"),
            fixture!("messenger/echo.json"),
        ];
        let mut seen = std::collections::HashSet::new();
        for body in fixtures {
            let first = events(body, &FB);
            assert_eq!(first, events(body, &FB), "a retry is the same events");
            for inbound in &first {
                let e = &inbound.event;
                assert_eq!(
                    e.event_id,
                    omni_model::event_id("fb", &e.provider_message_id).to_string()
                );
                assert!(seen.insert(e.event_id.clone()), "{e:?}");
            }
            // Another channel of the same Page has other ids.
            let elsewhere = MessagingContext {
                channel_id: "fb2",
                ..FB
            };
            assert_ne!(
                events(body, &elsewhere)[0].event.event_id,
                first[0].event.event_id
            );
        }
    }

    #[test]
    fn senders_must_be_valid_ids() {
        let message = r#""timestamp":1700000000000,"message":{"mid":"m1","text":"hi"}"#;
        assert_eq!(error_of(&FB, &format!("{{{message}}}")), INVALID_SENDER);
        assert_eq!(
            error_of(
                &FB,
                &format!(r#"{{"sender":{{"user_ref":"abc"}},{message}}}"#)
            ),
            INVALID_SENDER
        );
        assert_eq!(
            error_of(&FB, &format!(r#"{{"sender":{{"id":""}},{message}}}"#)),
            INVALID_SENDER
        );
        assert_eq!(
            error_of(&FB, &format!(r#"{{"sender":{{"id":1.5}},{message}}}"#)),
            INVALID_SENDER
        );
        assert_eq!(
            error_of(&FB, &format!(r#"{{"sender":"1",{message}}}"#)),
            INVALID_SENDER
        );
        let huge = "9".repeat(300);
        assert_eq!(
            error_of(&FB, &format!(r#"{{"sender":{{"id":"{huge}"}},{message}}}"#)),
            INVALID_SENDER
        );
        assert_eq!(
            error_of(
                &FB,
                &format!(r#"{{"sender":{{"id":"a\u202eb"}},{message}}}"#)
            ),
            INVALID_SENDER
        );
        // A number is taken as the id it spells.
        let e = one(
            &post(
                &FB,
                &format!(r#"{{"sender":{{"id":6251234567890123}},{message}}}"#),
            ),
            &FB,
        )
        .event;
        assert_eq!(e.sender, Some(psid(PSID)));
        // An echo's customer is its recipient.
        let echo = r#"{"sender":{"id":"106712345678901"},"timestamp":1,"message":{"mid":"m2","is_echo":true,"text":"x"}}"#;
        assert_eq!(error_of(&FB, echo), INVALID_RECIPIENT);
        for kind in [
            r#""postback":{"title":"t"}"#,
            r#""reaction":{"mid":"m"}"#,
            r#""read":{"watermark":1}"#,
            r#""delivery":{"watermark":1}"#,
        ] {
            assert_eq!(
                error_of(&FB, &format!("{{{kind}}}")),
                INVALID_SENDER,
                "{kind}"
            );
        }
    }

    #[test]
    fn malformed_items_cost_only_themselves() {
        let sender = format!(r#""sender":{{"id":"{PSID}"}},"timestamp":1700000000000"#);
        for (item, code) in [
            ("1".to_owned(), INVALID_ITEM),
            ("[]".to_owned(), INVALID_ITEM),
            ("{}".to_owned(), UNSUPPORTED_EVENT),
            (format!("{{{sender}}}"), UNSUPPORTED_EVENT),
            (format!(r#"{{{sender},"message":null}}"#), INVALID_ITEM),
            (
                format!(r#"{{{sender},"message":{{"text":"no mid"}}}}"#),
                INVALID_ITEM,
            ),
            (
                format!(r#"{{{sender},"message":{{"mid":{{}},"text":"x"}}}}"#),
                INVALID_ITEM,
            ),
            (
                format!(r#"{{{sender},"message":{{"mid":"m","text":5}}}}"#),
                INVALID_ITEM,
            ),
            (
                format!(r#"{{{sender},"message":{{"mid":"m","is_echo":"yes","text":"x"}}}}"#),
                INVALID_ITEM,
            ),
            (
                format!(r#"{{{sender},"message":{{"mid":"m","attachments":{{}}}}}}"#),
                INVALID_ITEM,
            ),
            (
                format!(r#"{{{sender},"message":{{"mid":"m","attachments":[1]}}}}"#),
                INVALID_ITEM,
            ),
            (
                format!(
                    r#"{{{sender},"message":{{"mid":"m","attachments":[{{"type":"image","payload":{{"url":7}}}}]}}}}"#
                ),
                INVALID_ITEM,
            ),
            (
                format!(r#"{{{sender},"message":{{"mid":"m","reply_to":"m0","text":"x"}}}}"#),
                INVALID_ITEM,
            ),
            (
                format!(r#"{{{sender},"message":{{"mid":"m","text":""}}}}"#),
                UNSUPPORTED_MESSAGE,
            ),
            (
                format!(
                    r#"{{{sender},"message":{{"mid":"m","attachments":[{{"type":"fallback","payload":null}}]}}}}"#
                ),
                UNSUPPORTED_MESSAGE,
            ),
            (
                format!(
                    r#"{{{sender},"message":{{"mid":"{}","text":"x"}}}}"#,
                    "m".repeat(600)
                ),
                INVALID_ITEM,
            ),
            (format!(r#"{{{sender},"postback":{{}}}}"#), INVALID_ITEM),
            (
                format!(r#"{{{sender},"reaction":{{"action":"react"}}}}"#),
                INVALID_ITEM,
            ),
            (
                format!(
                    r#"{{{sender},"reaction":{{"mid":"m","action":"{}"}}}}"#,
                    "x".repeat(100)
                ),
                INVALID_ITEM,
            ),
            (format!(r#"{{{sender},"read":{{}}}}"#), INVALID_ITEM),
            (
                format!(r#"{{{sender},"read":{{"watermark":"soon"}}}}"#),
                INVALID_ITEM,
            ),
            (
                format!(r#"{{{sender},"delivery":{{"mids":[]}}}}"#),
                INVALID_ITEM,
            ),
            (
                format!(r#"{{{sender},"delivery":{{"mids":[null]}}}}"#),
                INVALID_ITEM,
            ),
            (
                format!(
                    r#"{{"sender":{{"id":"{PSID}"}},"timestamp":"soon","message":{{"mid":"m","text":"x"}}}}"#
                ),
                INVALID_ITEM,
            ),
            (
                format!(
                    r#"{{"sender":{{"id":"{PSID}"}},"timestamp":1e300,"message":{{"mid":"m","text":"x"}}}}"#
                ),
                INVALID_ITEM,
            ),
            (
                format!(
                    r#"{{"sender":{{"id":"{PSID}"}},"timestamp":9223372036854775807,"message":{{"mid":"m","text":"x"}}}}"#
                ),
                INVALID_TIMESTAMP,
            ),
            (
                format!(
                    r#"{{"sender":{{"id":"{PSID}"}},"timestamp":-9223372036854775808,"message":{{"mid":"m","text":"x"}}}}"#
                ),
                INVALID_TIMESTAMP,
            ),
        ] {
            assert_eq!(error_of(&FB, &item), code, "{item}");
        }
        // Between two good items a bad one is dead-lettered alone.
        let good = |mid: &str| format!(r#"{{{sender},"message":{{"mid":"{mid}","text":"x"}}}}"#);
        let body = post(
            &FB,
            &format!("{},{{\"message\":7}},{}", good("a"), good("b")),
        );
        let out = run(&body, &FB);
        assert_eq!(out.events.len(), 2);
        assert_eq!(out.unreadable.len(), 1);
        assert_eq!(out.unreadable[0].raw, br#"{"message":7}"#);
    }

    #[test]
    fn timestamps_in_seconds_and_strings_are_read() {
        let item = |ts: &str| {
            format!(
                r#"{{"sender":{{"id":"{PSID}"}},"timestamp":{ts},"message":{{"mid":"m","text":"x"}}}}"#
            )
        };
        let at = |ts: &str| one(&post(&FB, &item(ts)), &FB).event.sent_at;
        assert_eq!(
            at("1527459824"),
            Some(Timestamp {
                seconds: 1_527_459_824,
                nanos: 0
            })
        );
        assert_eq!(
            at("\"1527459824\""),
            Some(Timestamp {
                seconds: 1_527_459_824,
                nanos: 0
            })
        );
        assert_eq!(at("1527459824123"), millis(1_527_459_824_123));
        assert_eq!(at("\"1527459824123\""), millis(1_527_459_824_123));
        assert_eq!(at("null"), None);
    }

    #[test]
    fn work_and_built_strings_are_bounded() {
        let many: Vec<String> = (0..25)
            .map(|i| {
                format!(r#"{{"type":"image","payload":{{"url":"https://cdn.example/{i}.jpg"}}}}"#)
            })
            .collect();
        let item = format!(
            r#"{{"sender":{{"id":"{PSID}"}},"timestamp":1,"message":{{"mid":"m","attachments":[{}]}}}}"#,
            many.join(",")
        );
        let inbound = one(&post(&FB, &item), &FB);
        assert_eq!(
            inbound.event.content.as_ref().unwrap().attachments.len(),
            MAX_ATTACHMENTS
        );
        assert_eq!(inbound.media.len(), MAX_ATTACHMENTS);
        assert_eq!(inbound.media[9].source, "https://cdn.example/9.jpg");
        assert_eq!(
            inbound.event.provider_metadata["messenger.attachments_omitted"],
            "15"
        );

        let mids: Vec<String> = (0..50).map(|i| format!("\"mid.{i}\"")).collect();
        let item = format!(
            r#"{{"sender":{{"id":"{PSID}"}},"delivery":{{"watermark":5,"mids":[{}]}}}}"#,
            mids.join(",")
        );
        let e = one(&post(&FB, &item), &FB).event;
        let a = activity_of(&e);
        assert_eq!(a.attributes["mids"].split(',').count(), MAX_MIDS);
        assert_eq!(a.attributes["mids_omitted"], "30");

        // A long postback payload is cut (on a character boundary) in the key.
        let payload = "é".repeat(2000);
        let item = format!(
            r#"{{"sender":{{"id":"{PSID}"}},"timestamp":7,"postback":{{"payload":"{payload}"}}}}"#
        );
        let e = one(&post(&FB, &item), &FB).event;
        assert!(
            e.provider_message_id.len() <= 1100,
            "{}",
            e.provider_message_id.len()
        );
        assert!(
            e.provider_message_id
                .starts_with(&format!("postback:{PSID}:7:é"))
        );
        assert_eq!(e.provider_metadata["messenger.postback.payload"], payload);

        let long_title = "t".repeat(5000);
        let item = format!(
            r#"{{"sender":{{"id":"{PSID}"}},"timestamp":1,"message":{{"mid":"m","attachments":[{{"type":"ig_reel","payload":{{"title":"{long_title}","url":"https://cdn.example/r.mp4"}}}}]}}}}"#
        );
        let e = one(&post(&FB, &item), &FB).event;
        assert_eq!(e.content.unwrap().attachments[0].name.len(), MAX_NAME_LEN);
    }

    #[test]
    fn only_https_urls_are_fetched() {
        for url in [
            "http://cdn.example/a.jpg",
            "javascript:alert(1)",
            "https://",
            "https://cdn.example/a b.jpg",
            "ftp://cdn.example/a.jpg",
        ] {
            let item = format!(
                r#"{{"sender":{{"id":"{PSID}"}},"timestamp":1,"message":{{"mid":"m","attachments":[{{"type":"image","payload":{{"url":"{url}"}}}}]}}}}"#
            );
            let inbound = one(&post(&FB, &item), &FB);
            assert!(inbound.media.is_empty(), "{url}");
            let attachments = inbound.event.content.unwrap().attachments;
            assert_eq!(attachments.len(), 1);
            assert_eq!(attachments[0].uri, "", "{url}");
        }
        assert!(is_https("HTTPS://cdn.example/a.jpg"));
        let long = format!("https://cdn.example/{}", "a".repeat(MAX_URL_LEN));
        let item = format!(
            r#"{{"sender":{{"id":"{PSID}"}},"timestamp":1,"message":{{"mid":"m","attachments":[{{"type":"image","payload":{{"url":"{long}"}}}}]}}}}"#
        );
        assert_eq!(error_of(&FB, &item), INVALID_ITEM);
    }

    #[test]
    fn entries_without_an_id_are_another_account() {
        let body = r#"{"object":"page","entry":[{"time":1,"messaging":[{"sender":{"id":"1"}}]},{"id":"106712345678901"}]}"#;
        let out = run(body, &FB);
        assert!(out.events.is_empty());
        assert_eq!(out.unreadable.len(), 1);
        assert_eq!(out.unreadable[0].error.code, OTHER_ACCOUNT);
        let entry: Value = serde_json::from_slice(&out.unreadable[0].raw).unwrap();
        assert_eq!(entry["id"], "");
        assert_eq!(entry["messaging"][0]["sender"]["id"], "1");
    }

    #[test]
    fn bounded_cuts_on_character_boundaries() {
        assert_eq!(bounded("abc", 5), "abc");
        assert_eq!(bounded("abc", 2), "ab");
        assert_eq!(bounded("éé", 3), "é");
        assert_eq!(bounded("é", 1), "");
        for code in CODES {
            assert!(!code.is_empty() && code.len() < 32);
        }
    }
}
