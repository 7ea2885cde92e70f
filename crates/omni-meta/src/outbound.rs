//! Replies, through the Graph API.
//!
//! - WhatsApp: `POST /{phone-number-id}/messages`. Free-form messages are
//!   allowed for 24 hours after the customer's last message (the
//!   customer-service window); after that only an approved template is,
//!   so a reply outside the window goes as the configured template or is
//!   rejected before anything is sent. Files are uploaded first
//!   (`/{phone-number-id}/media`) and sent by media id. Every message
//!   carries the outbound event id as `biz_opaque_callback_data`, which
//!   Meta echoes in the message's status webhooks.
//! - Messenger and Instagram: the Send API (`POST /me/messages`), inside
//!   24 hours as `RESPONSE`, and up to 7 days after the customer's last
//!   message as `MESSAGE_TAG` `HUMAN_AGENT` where the channel enables it
//!   (the app needs Meta's Human Agent permission). Files are uploaded in
//!   the same request, as multipart.
//!
//! The window is read from the channel's state, where the webhook records
//! each customer's latest message time ([`crate::window`]); a state that
//! cannot be read fails the reply temporarily rather than guessing.
//!
//! A reply with files is several messages; which of them went out is
//! remembered in memory per outbound event id, so a retry after a
//! temporary failure sends only the rest (after a restart, the whole reply
//! again: at least once, as every reply). Every file is loaded and checked
//! before the first message is sent.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;
use omni_connector::{
    AttachmentStore, ChannelState, Delivered, DeliveryError, OutboundHandler, StateUpdate,
    attachments::{load_outbound, outbound_file_name},
    state::StateError,
};
use omni_proto::v1::{ConversationEvent, HandleKind};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    config::TemplateConfig,
    graph::{FilePart, GraphClient, GraphError},
    marks::Marks,
    window,
};

/// WhatsApp's limit on a text message's body, in characters.
pub const MAX_WHATSAPP_TEXT_CHARS: usize = 4096;

/// WhatsApp's limit on a media caption, in characters; a longer text goes
/// as its own message before the files.
pub const MAX_WHATSAPP_CAPTION_CHARS: usize = 1024;

/// Messenger's limit on a text message, in characters.
pub const MAX_MESSENGER_TEXT_CHARS: usize = 2000;

/// Instagram's limit on a text message, in bytes of UTF-8.
pub const MAX_INSTAGRAM_TEXT_BYTES: usize = 1000;

/// Most bytes one reply's files may total (they are held in memory while
/// they are sent); WhatsApp's largest file, a document, is 100 MB.
pub const MAX_REPLY_BYTES: u64 = 100 * 1024 * 1024;

/// The Send API's limit on one file (Messenger and Instagram), in bytes.
pub const MAX_SEND_API_FILE_BYTES: usize = 25 * 1024 * 1024;

/// The metadata key of a reply's template parameters: a JSON array of
/// strings, the template body's `{{1}}`, `{{2}}`, ….
pub const TEMPLATE_PARAMETERS_KEY: &str = "whatsapp.template_parameters";

/// Longest `biz_opaque_callback_data` Meta accepts.
const MAX_CALLBACK_DATA_CHARS: usize = 512;

/// How many unfinished replies' progress is remembered.
const MAX_REMEMBERED: usize = 10_000;

/// How long an unfinished reply's progress is worth keeping (no reply can
/// be sent later than 7 days after the customer wrote).
const REMEMBER_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// An approved WhatsApp message template: what a reply outside the
/// 24-hour window is sent as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    /// Its language code (`en_US`).
    pub language: String,
    /// Whether the body's one parameter is the reply's text (when the reply
    /// carries no [`TEMPLATE_PARAMETERS_KEY`]).
    pub text_parameter: bool,
}

impl From<&TemplateConfig> for Template {
    fn from(config: &TemplateConfig) -> Self {
        Self {
            name: config.name.clone(),
            language: config.language.clone(),
            text_parameter: config.text_parameter,
        }
    }
}

/// Which messages of unfinished replies went out (their provider ids), by
/// outbound event id.
#[derive(Debug, Default)]
struct Progress {
    sent: Mutex<HashMap<String, (Instant, Vec<String>)>>,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Vec<String>)>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ids of the parts of `event_id` an earlier attempt sent.
    fn already_sent(&self, event_id: &str) -> Vec<String> {
        self.lock()
            .get(event_id)
            .map(|(_, ids)| ids.clone())
            .unwrap_or_default()
    }

    fn record(&self, event_id: &str, ids: &[String]) {
        let mut sent = self.lock();
        if sent.len() >= MAX_REMEMBERED && !sent.contains_key(event_id) {
            let now = Instant::now();
            sent.retain(|_, (at, _)| now.duration_since(*at) < REMEMBER_FOR);
            if sent.len() >= MAX_REMEMBERED {
                sent.clear();
            }
        }
        sent.insert(event_id.to_owned(), (Instant::now(), ids.to_vec()));
    }

    /// The reply is complete or given up: nothing to remember.
    fn finish(&self, event_id: &str) {
        self.lock().remove(event_id);
    }
}

/// A file of a reply, loaded and checked.
#[derive(Debug, Clone)]
struct File {
    /// The message type it goes as.
    kind: &'static str,
    name: String,
    media_type: String,
    content: Bytes,
}

/// One message of a reply.
#[derive(Debug, Clone)]
enum Part {
    Text(String),
    File { file: File, caption: Option<String> },
}

/// The outbound event's id, which ties Meta's status webhooks to it.
fn event_id(message: &ConversationEvent) -> Result<&str, DeliveryError> {
    let id = message.event_id.trim();
    if id.is_empty() {
        return Err(DeliveryError::Rejected("event_id is empty".into()));
    }
    Ok(id)
}

/// The `media_type` without parameters, lowercase.
fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The files of a reply, loaded from the store and checked, each with the
/// message type `kind_of` picks (or its refusal).
async fn load_files(
    store: &dyn AttachmentStore,
    message: &ConversationEvent,
    limit: &str,
    kind_of: fn(usize, &str, usize) -> Result<&'static str, DeliveryError>,
) -> Result<Vec<File>, DeliveryError> {
    let attachments = message
        .content
        .as_ref()
        .map(|c| c.attachments.as_slice())
        .unwrap_or_default();
    if attachments.is_empty() {
        return Ok(Vec::new());
    }
    let mut names = Vec::with_capacity(attachments.len());
    for (i, attachment) in attachments.iter().enumerate() {
        if attachment.media_type.chars().any(char::is_control) {
            return Err(DeliveryError::Rejected(format!(
                "attachments[{i}].media_type contains a line break or control character"
            )));
        }
        names.push(outbound_file_name(i, &attachment.name)?);
    }
    let contents = load_outbound(store, attachments, MAX_REPLY_BYTES, limit).await?;
    let mut files = Vec::with_capacity(contents.len());
    for (i, ((attachment, name), content)) in
        attachments.iter().zip(names).zip(contents).enumerate()
    {
        let media_type = match essence(&attachment.media_type) {
            t if t.is_empty() => "application/octet-stream".to_owned(),
            t => t,
        };
        files.push(File {
            kind: kind_of(i, &media_type, content.len())?,
            name,
            media_type,
            content,
        });
    }
    Ok(files)
}

/// How long ago `at` was, in words.
fn ago(at: i64, now: SystemTime) -> String {
    let age = window::age(at, now).as_secs();
    match age {
        0..3600 => format!("{} minutes ago", age / 60),
        3600..172_800 => format!("{} hours ago", age / 3600),
        _ => format!("{} days ago", age / 86_400),
    }
}

/// When the customer last wrote, in words.
fn last_wrote(last: Option<i64>, now: SystemTime) -> String {
    match last {
        Some(at) => format!("the customer last wrote {}", ago(at, now)),
        None => "the customer has never written".to_owned(),
    }
}

fn state_error(error: StateError) -> DeliveryError {
    DeliveryError::temporary(format!("reading the customer-service window: {error}"))
}

/// What common refusals mean, for people reading the delivery status.
/// From the WhatsApp Cloud API and Messenger Platform error code lists.
fn explain(code: Option<i64>, subcode: Option<i64>) -> Option<&'static str> {
    Some(match (code?, subcode) {
        (131047, _) => {
            "more than 24 hours since the customer last wrote: only a template reaches them"
        }
        (131026, _) => {
            "undeliverable: not a WhatsApp user, an old WhatsApp version, or the customer has not accepted the latest terms"
        }
        (131030, _) => "the recipient is not on the test number's allowed list",
        (131051, _) => "WhatsApp does not support this message type",
        (131052 | 131053, _) => "WhatsApp could not read the uploaded file (type or size)",
        (132000, _) => "the template takes another number of parameters",
        (132001, _) => "the template does not exist in this language, or is not approved",
        (132012, _) => "a template parameter is not in the format the template expects",
        (190, _) => "the access token is invalid or expired",
        (10, Some(2018278)) => "sent outside the allowed messaging window",
        (10 | 200..=299, _) => "the app or token lacks the permission",
        (551, _) => "this person is not available to receive messages",
        (100, Some(2018001)) => "no matching user: the id is not this Page's or account's",
        _ => return None,
    })
}

/// A Graph failure as a delivery outcome; refusals say what the code means.
fn delivery_error(error: GraphError) -> DeliveryError {
    let hint = match &error {
        GraphError::Rejected { code, subcode, .. } => explain(Some(*code), *subcode),
        _ => None,
    };
    match (error.into_delivery(), hint) {
        (DeliveryError::Rejected(reason), Some(hint)) => {
            DeliveryError::Rejected(format!("{reason} ({hint})"))
        }
        (outcome, _) => outcome,
    }
}

/// Sends `parts` with `send`, skipping those an earlier attempt sent: the
/// ids of all, and the status the first answer gave.
async fn send_parts<'a, F, Fut>(
    progress: &Progress,
    event_id: &str,
    parts: &'a [Part],
    mut send: F,
) -> Result<(Vec<String>, Option<String>), DeliveryError>
where
    F: FnMut(usize, &'a Part) -> Fut,
    Fut: std::future::Future<Output = Result<(String, Option<String>), DeliveryError>>,
{
    let mut ids = progress.already_sent(event_id);
    let mut status = None;
    for (i, part) in parts.iter().enumerate().skip(ids.len()) {
        match send(i, part).await {
            Ok((id, part_status)) => {
                ids.push(id);
                status = status.or(part_status);
                progress.record(event_id, &ids);
            }
            Err(DeliveryError::Rejected(reason)) => {
                progress.finish(event_id);
                return Err(DeliveryError::Rejected(if ids.is_empty() {
                    reason
                } else {
                    format!(
                        "{reason} (after {} of {} messages were sent: {})",
                        ids.len(),
                        parts.len(),
                        ids.join(",")
                    )
                }));
            }
            Err(temporary) => return Err(temporary),
        }
    }
    progress.finish(event_id);
    Ok((ids, status))
}

/// The WhatsApp message type of a file: images (JPEG, PNG up to 5 MB),
/// stickers (WebP up to 500 KB), audio (AAC, AMR, MP3, MP4 audio, OGG up
/// to 16 MB) and video (MP4, 3GPP up to 16 MB) by their own type; anything
/// else, or larger, as a document (up to 100 MB).
fn whatsapp_kind(
    index: usize,
    media_type: &str,
    size: usize,
) -> Result<&'static str, DeliveryError> {
    const MB: usize = 1024 * 1024;
    let typed = match media_type {
        "image/jpeg" | "image/png" => Some(("image", 5 * MB)),
        "image/webp" => Some(("sticker", 500 * 1024)),
        "audio/aac" | "audio/amr" | "audio/mpeg" | "audio/mp4" | "audio/ogg" => {
            Some(("audio", 16 * MB))
        }
        "video/mp4" | "video/3gpp" => Some(("video", 16 * MB)),
        _ => None,
    };
    match typed {
        Some((kind, limit)) if size <= limit => Ok(kind),
        _ if size <= 100 * MB => Ok("document"),
        _ => Err(DeliveryError::Rejected(format!(
            "attachments[{index}]: a WhatsApp document is at most {} bytes, this one is {size}",
            100 * MB
        ))),
    }
}

/// Whether a WhatsApp message type takes a caption.
fn takes_caption(kind: &str) -> bool {
    matches!(kind, "image" | "video" | "document")
}

/// The messages of a WhatsApp reply: the text as the first file's caption
/// when that file takes one and the text fits, else as its own message
/// first; then the files.
fn whatsapp_parts(text: &str, files: Vec<File>) -> Vec<Part> {
    let text = (!text.trim().is_empty()).then(|| text.to_owned());
    let mut parts = Vec::with_capacity(files.len() + 1);
    let mut caption = None;
    match (&text, files.first()) {
        (Some(text), Some(first))
            if takes_caption(first.kind) && text.chars().count() <= MAX_WHATSAPP_CAPTION_CHARS =>
        {
            caption = Some(text.clone());
        }
        (Some(text), _) => parts.push(Part::Text(text.clone())),
        (None, _) => {}
    }
    for (i, file) in files.into_iter().enumerate() {
        parts.push(Part::File {
            file,
            caption: if i == 0 { caption.take() } else { None },
        });
    }
    parts
}

/// The template's body parameters: the reply's
/// [`TEMPLATE_PARAMETERS_KEY`], else its text when the template takes it,
/// else none. The text is put on one line with single spaces, as WhatsApp
/// refuses parameters with line breaks, tabs or runs of spaces.
fn template_parameters(
    message: &ConversationEvent,
    template: &Template,
    text: &str,
) -> Result<Vec<String>, DeliveryError> {
    if let Some(raw) = message.provider_metadata.get(TEMPLATE_PARAMETERS_KEY) {
        return serde_json::from_str::<Vec<String>>(raw).map_err(|_| {
            DeliveryError::Rejected(format!(
                "provider_metadata[{TEMPLATE_PARAMETERS_KEY:?}] is not a JSON array of strings"
            ))
        });
    }
    if !template.text_parameter {
        return Ok(Vec::new());
    }
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return Err(DeliveryError::Rejected(format!(
            "the template {:?} takes the reply's text as its parameter, and the text is empty",
            template.name
        )));
    }
    Ok(vec![flat])
}

/// The `template` object of a template message.
fn template_object(template: &Template, parameters: &[String]) -> Value {
    let mut object = json!({
        "name": template.name,
        "language": { "code": template.language },
    });
    if !parameters.is_empty() {
        let parameters: Vec<Value> = parameters
            .iter()
            .map(|text| json!({ "type": "text", "text": text }))
            .collect();
        object["components"] = json!([{ "type": "body", "parameters": parameters }]);
    }
    object
}

/// The recipient's `wa_id`: the first recipient that is a WhatsApp id, or
/// a phone number (E.164 without its `+`).
fn whatsapp_recipient(message: &ConversationEvent) -> Result<String, DeliveryError> {
    let handle = message
        .recipients
        .iter()
        .find(|h| h.kind == HandleKind::Whatsapp as i32 || h.kind == HandleKind::Phone as i32)
        .ok_or_else(|| {
            DeliveryError::Rejected("no recipient is a WhatsApp id or a phone number".into())
        })?;
    let value = handle.value.trim();
    let digits = if handle.kind == HandleKind::Phone as i32 {
        value.strip_prefix('+').unwrap_or(value)
    } else {
        value
    };
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DeliveryError::Rejected(format!(
            "the recipient {:?} is not a WhatsApp id (the phone number's digits)",
            value.chars().take(32).collect::<String>()
        )));
    }
    Ok(digits.to_owned())
}

/// The first id of a WhatsApp send answer (`messages[0].id`, a wamid) and
/// its `message_status`, if any.
fn wamid(answer: &Value) -> Result<(String, Option<String>), GraphError> {
    let first = answer.get("messages").and_then(|m| m.get(0));
    let id = first
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            GraphError::InvalidResponse("the send answer has no messages[0].id".into())
        })?;
    let status = first
        .and_then(|m| m.get("message_status"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    Ok((id.to_owned(), status))
}

/// Sends replies of one WhatsApp Business phone number.
#[derive(Debug)]
pub struct WhatsappSender {
    graph: GraphClient,
    phone_number_id: String,
    state: ChannelState,
    attachments: Arc<dyn AttachmentStore>,
    template: Option<Template>,
    progress: Progress,
    marks: Option<Arc<Marks>>,
}

impl WhatsappSender {
    /// A sender from `phone_number_id` through `graph`, reading the window
    /// from `state`, files from `attachments`; outside the window, replies
    /// go as `template` (or are rejected without one).
    pub fn new(
        graph: GraphClient,
        phone_number_id: String,
        state: ChannelState,
        attachments: Arc<dyn AttachmentStore>,
        template: Option<Template>,
    ) -> Self {
        Self {
            graph,
            phone_number_id,
            state,
            attachments,
            template,
            progress: Progress::default(),
            marks: None,
        }
    }

    /// Also reads the window from the webhook's marks not yet committed,
    /// so a reply moments after the customer's message (an instant
    /// acknowledgement) sees it.
    pub fn with_marks(mut self, marks: Arc<Marks>) -> Self {
        self.marks = Some(marks);
        self
    }

    /// A message to `to` of type `kind`, tied to `event_id`.
    fn message(
        &self,
        event_id: &str,
        to: &str,
        reply_to: Option<&str>,
        kind: &str,
        payload: Value,
    ) -> Value {
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": kind,
            kind: payload,
            "biz_opaque_callback_data": event_id
                .chars()
                .take(MAX_CALLBACK_DATA_CHARS)
                .collect::<String>(),
        });
        if let Some(reply_to) = reply_to {
            body["context"] = json!({ "message_id": reply_to });
        }
        body
    }

    async fn send(&self, body: &Value) -> Result<(String, Option<String>), DeliveryError> {
        let answer = self
            .graph
            .post(&format!("{}/messages", self.phone_number_id), body)
            .await
            .map_err(delivery_error)?;
        wamid(&answer).map_err(delivery_error)
    }

    /// Sends one part (uploading its file first).
    async fn send_part(
        &self,
        event_id: &str,
        to: &str,
        reply_to: Option<&str>,
        part: &Part,
    ) -> Result<(String, Option<String>), DeliveryError> {
        let body = match part {
            Part::Text(text) => self.message(
                event_id,
                to,
                reply_to,
                "text",
                json!({ "body": text, "preview_url": false }),
            ),
            Part::File { file, caption } => {
                let media_id = self
                    .graph
                    .upload_whatsapp_media(
                        &self.phone_number_id,
                        file.content.clone(),
                        &file.media_type,
                        &file.name,
                    )
                    .await
                    .map_err(delivery_error)?;
                let mut payload = json!({ "id": media_id });
                if let Some(caption) = caption {
                    payload["caption"] = caption.as_str().into();
                }
                if file.kind == "document" {
                    payload["filename"] = file.name.as_str().into();
                }
                self.message(event_id, to, reply_to, file.kind, payload)
            }
        };
        self.send(&body).await
    }

    /// A reply outside the window: the template, or a rejection saying why.
    async fn send_template(
        &self,
        event_id: &str,
        to: &str,
        message: &ConversationEvent,
        last: Option<i64>,
        now: SystemTime,
    ) -> Result<Delivered, DeliveryError> {
        let Some(template) = &self.template else {
            return Err(DeliveryError::Rejected(format!(
                "outside WhatsApp's 24-hour customer-service window ({}): configure a template to reach them",
                last_wrote(last, now)
            )));
        };
        let content = message.content.clone().unwrap_or_default();
        if !content.attachments.is_empty() {
            return Err(DeliveryError::Rejected(format!(
                "outside WhatsApp's 24-hour customer-service window ({}), replies go as the template {:?}, which carries no attachments",
                last_wrote(last, now),
                template.name
            )));
        }
        let parameters = template_parameters(message, template, &content.text)?;
        let body = self.message(
            event_id,
            to,
            None,
            "template",
            template_object(template, &parameters),
        );
        let (id, status) = self.send(&body).await?;
        Ok(Delivered {
            provider_message_id: id,
            provider_status: status.unwrap_or_else(|| "accepted".into()),
        })
    }
}

#[async_trait]
impl OutboundHandler for WhatsappSender {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError> {
        let event_id = event_id(message)?;
        let to = whatsapp_recipient(message)?;
        let content = message.content.clone().unwrap_or_default();
        if content.text.trim().is_empty() && content.attachments.is_empty() {
            return Err(DeliveryError::Rejected(
                "content has neither text nor attachments".into(),
            ));
        }
        let chars = content.text.chars().count();
        if chars > MAX_WHATSAPP_TEXT_CHARS {
            return Err(DeliveryError::Rejected(format!(
                "text of {chars} characters is over WhatsApp's limit of {MAX_WHATSAPP_TEXT_CHARS}"
            )));
        }
        let last = last_message(&self.state, self.marks.as_deref(), &to).await?;
        let now = SystemTime::now();
        if last.is_none_or(|at| window::age(at, now) >= window::STANDARD) {
            return self.send_template(event_id, &to, message, last, now).await;
        }
        let files = load_files(
            self.attachments.as_ref(),
            message,
            "the most one WhatsApp reply carries",
            whatsapp_kind,
        )
        .await?;
        let parts = whatsapp_parts(&content.text, files);
        let reply_to = message
            .threading
            .as_ref()
            .map(|t| t.reply_to_provider_message_id.trim())
            .filter(|id| !id.is_empty());
        let (ids, status) = send_parts(&self.progress, event_id, &parts, |i, part| {
            let reply_to = if i == 0 { reply_to } else { None };
            let to = to.as_str();
            async move { self.send_part(event_id, to, reply_to, part).await }
        })
        .await?;
        Ok(Delivered {
            provider_message_id: ids.join(","),
            provider_status: status.unwrap_or_else(|| "accepted".into()),
        })
    }
}

/// Which Send API a [`SendApiSender`] speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPlatform {
    Messenger,
    Instagram,
}

impl SendPlatform {
    fn name(self) -> &'static str {
        match self {
            Self::Messenger => "Messenger",
            Self::Instagram => "Instagram",
        }
    }

    fn handle_kind(self) -> HandleKind {
        match self {
            Self::Messenger => HandleKind::MessengerPsid,
            Self::Instagram => HandleKind::InstagramIgsid,
        }
    }

    fn handle_name(self) -> &'static str {
        match self {
            Self::Messenger => "a Messenger page-scoped id (PSID)",
            Self::Instagram => "an Instagram-scoped id (IGSID)",
        }
    }

    /// Messenger counts characters, Instagram bytes.
    fn check_text(self, text: &str) -> Result<(), DeliveryError> {
        let (size, limit, unit) = match self {
            Self::Messenger => (text.chars().count(), MAX_MESSENGER_TEXT_CHARS, "characters"),
            Self::Instagram => (text.len(), MAX_INSTAGRAM_TEXT_BYTES, "bytes"),
        };
        if size > limit {
            return Err(DeliveryError::Rejected(format!(
                "text of {size} {unit} is over {}'s limit of {limit}",
                self.name()
            )));
        }
        Ok(())
    }
}

/// How a Send API reply is tagged, given the customer's last message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tagging {
    /// Within 24 hours: `messaging_type: RESPONSE`.
    Response,
    /// Within 7 days, where enabled: `MESSAGE_TAG` `HUMAN_AGENT`.
    HumanAgent,
}

/// Whether a reply may go, and how; or why not.
fn send_api_tagging(
    platform: SendPlatform,
    last: Option<i64>,
    now: SystemTime,
    human_agent_tag: bool,
) -> Result<Tagging, DeliveryError> {
    let name = platform.name();
    let age = last.map(|at| window::age(at, now));
    match age {
        Some(age) if age < window::STANDARD => Ok(Tagging::Response),
        Some(age) if age < window::HUMAN_AGENT && human_agent_tag => Ok(Tagging::HumanAgent),
        Some(age) if age < window::HUMAN_AGENT => Err(DeliveryError::Rejected(format!(
            "outside {name}'s 24-hour messaging window ({}): set human_agent_tag = true (with Meta's Human Agent permission) to reply up to 7 days after the customer's last message",
            last_wrote(last, now)
        ))),
        Some(_) => Err(DeliveryError::Rejected(format!(
            "outside {name}'s 24-hour messaging window and the 7-day HUMAN_AGENT window ({}): no reply is possible until the customer writes again",
            last_wrote(last, now)
        ))),
        None => Err(DeliveryError::Rejected(format!(
            "outside {name}'s 24-hour messaging window ({}): {name} only allows replies to customers' messages",
            last_wrote(last, now)
        ))),
    }
}

/// The Send API attachment type of a file, up to 25 MB.
fn send_api_kind(
    index: usize,
    media_type: &str,
    size: usize,
) -> Result<&'static str, DeliveryError> {
    if size > MAX_SEND_API_FILE_BYTES {
        return Err(DeliveryError::Rejected(format!(
            "attachments[{index}]: the Send API takes files of at most {MAX_SEND_API_FILE_BYTES} bytes, this one is {size}"
        )));
    }
    Ok(match media_type.split('/').next().unwrap_or_default() {
        "image" => "image",
        "video" => "video",
        "audio" => "audio",
        _ => "file",
    })
}

/// Sends replies of one Facebook Page (Messenger) or Instagram
/// professional account.
#[derive(Debug)]
pub struct SendApiSender {
    graph: GraphClient,
    platform: SendPlatform,
    /// The Page or account id: the scope of the ids it answers.
    account_id: String,
    state: ChannelState,
    attachments: Arc<dyn AttachmentStore>,
    human_agent_tag: bool,
    progress: Progress,
    /// The channel whose echoes of sent messages are pre-marked seen.
    echo_channel: Option<String>,
    marks: Option<Arc<Marks>>,
}

impl SendApiSender {
    /// A sender for `platform`'s account `account_id` through `graph` (with
    /// the Page's token), reading the window from `state` and files from
    /// `attachments`; `human_agent_tag` allows replies up to 7 days after
    /// the customer's last message.
    pub fn new(
        graph: GraphClient,
        platform: SendPlatform,
        account_id: String,
        state: ChannelState,
        attachments: Arc<dyn AttachmentStore>,
        human_agent_tag: bool,
    ) -> Self {
        Self {
            graph,
            platform,
            account_id,
            state,
            attachments,
            human_agent_tag,
            progress: Progress::default(),
            echo_channel: None,
            marks: None,
        }
    }

    /// Also reads the window from the webhook's marks not yet committed
    /// (see [`WhatsappSender::with_marks`]).
    pub fn with_marks(mut self, marks: Arc<Marks>) -> Self {
        self.marks = Some(marks);
        self
    }

    /// Marks the event id each sent message's echo will get on channel
    /// `channel_id` as already seen, so the webhook drops the echo:
    /// Meta echoes every message a Page or account sends, and the reply
    /// is on the timeline already as its outbound event. Instagram's
    /// echoes do not always name the sending app, so the message id is
    /// the only sure way to recognise them. (An echo that overtakes the
    /// Send API's answer is still recorded, as an outbound message.)
    pub fn marking_echoes(mut self, channel_id: &str) -> Self {
        self.echo_channel = Some(channel_id.to_owned());
        self
    }

    /// The customer's id: the first recipient of the platform's kind, in
    /// this account's scope.
    fn recipient<'a>(&self, message: &'a ConversationEvent) -> Result<&'a str, DeliveryError> {
        let kind = self.platform.handle_kind() as i32;
        let handle = message
            .recipients
            .iter()
            .find(|h| h.kind == kind)
            .ok_or_else(|| {
                DeliveryError::Rejected(format!("no recipient is {}", self.platform.handle_name()))
            })?;
        if !handle.scope.is_empty() && handle.scope != self.account_id {
            return Err(DeliveryError::Rejected(format!(
                "the recipient belongs to {:?}, not to this channel's {}",
                handle.scope.chars().take(32).collect::<String>(),
                self.account_id
            )));
        }
        let id = handle.value.trim();
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DeliveryError::Rejected(format!(
                "the recipient is not {}",
                self.platform.handle_name()
            )));
        }
        Ok(id)
    }

    /// `messaging_type` and `tag` of every message of a reply.
    fn tagging_fields(tagging: Tagging) -> Vec<(&'static str, &'static str)> {
        match tagging {
            Tagging::Response => vec![("messaging_type", "RESPONSE")],
            Tagging::HumanAgent => vec![("messaging_type", "MESSAGE_TAG"), ("tag", "HUMAN_AGENT")],
        }
    }

    async fn send_part(
        &self,
        to: &str,
        tagging: Tagging,
        part: &Part,
    ) -> Result<(String, Option<String>), DeliveryError> {
        let answer = match part {
            Part::Text(text) => {
                let mut body = json!({
                    "recipient": { "id": to },
                    "message": { "text": text },
                });
                for (key, value) in Self::tagging_fields(tagging) {
                    body[key] = value.into();
                }
                self.graph.post("me/messages", &body).await
            }
            Part::File { file, .. } => {
                let mut fields = vec![("recipient", json!({ "id": to }).to_string())];
                fields.extend(
                    Self::tagging_fields(tagging)
                        .into_iter()
                        .map(|(key, value)| (key, value.to_owned())),
                );
                fields.push((
                    "message",
                    json!({
                        "attachment": {
                            "type": file.kind,
                            "payload": { "is_reusable": false },
                        }
                    })
                    .to_string(),
                ));
                let upload = FilePart {
                    field: "filedata".into(),
                    file_name: file.name.clone(),
                    media_type: file.media_type.clone(),
                    content: file.content.clone(),
                };
                self.graph
                    .post_multipart("me/messages", &fields, upload)
                    .await
            }
        }
        .map_err(delivery_error)?;
        let id = answer
            .get("message_id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                delivery_error(GraphError::InvalidResponse(
                    "the send answer has no message_id".into(),
                ))
            })?;
        Ok((id.to_owned(), None))
    }
}

#[async_trait]
impl OutboundHandler for SendApiSender {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError> {
        let event_id = event_id(message)?;
        let to = self.recipient(message)?;
        let content = message.content.clone().unwrap_or_default();
        if content.text.trim().is_empty() && content.attachments.is_empty() {
            return Err(DeliveryError::Rejected(
                "content has neither text nor attachments".into(),
            ));
        }
        self.platform.check_text(&content.text)?;
        let last = last_message(&self.state, self.marks.as_deref(), to).await?;
        let tagging =
            send_api_tagging(self.platform, last, SystemTime::now(), self.human_agent_tag)?;
        let files = load_files(
            self.attachments.as_ref(),
            message,
            "the most one reply carries",
            send_api_kind,
        )
        .await?;
        let mut parts = Vec::with_capacity(files.len() + 1);
        if !content.text.trim().is_empty() {
            parts.push(Part::Text(content.text.clone()));
        }
        parts.extend(files.into_iter().map(|file| Part::File {
            file,
            caption: None,
        }));
        let (ids, _) = send_parts(&self.progress, event_id, &parts, |_, part| {
            self.send_part(to, tagging, part)
        })
        .await?;
        if let Some(channel) = &self.echo_channel {
            let seen = ids
                .iter()
                .map(|mid| omni_model::event_id(channel, mid).to_string())
                .collect();
            if let Err(e) = self
                .state
                .commit(StateUpdate {
                    puts: Vec::new(),
                    seen,
                    deletes: Vec::new(),
                })
                .await
            {
                tracing::warn!(channel = %channel, error = %e, "sent, but its echo will be recorded too");
            }
        }
        Ok(Delivered {
            provider_message_id: ids.join(","),
            provider_status: "accepted".into(),
        })
    }
}

/// The customer's latest message time: committed, or still pending in
/// the webhook's marks, whichever is later.
async fn last_message(
    state: &ChannelState,
    marks: Option<&Marks>,
    customer: &str,
) -> Result<Option<i64>, DeliveryError> {
    let stored = window::last_message(state, customer)
        .await
        .map_err(state_error)?;
    Ok(stored.max(marks.and_then(|m| m.pending_window(customer))))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use omni_connector::{FsAttachmentStore, StateStore, StateUpdate};
    use omni_proto::v1::{Attachment, Content, IdentityHandle, ThreadingHints};

    use super::*;
    use crate::graph::fake::{Fake, Reply};

    const EVENT_ID: &str = "0b3f3c3e-8a4c-5f6e-9d2b-1c2d3e4f5a6b";
    const PHONE_ID: &str = "106540352242922";
    const WA_ID: &str = "15551234567";
    const PAGE_ID: &str = "1234567890";
    const PSID: &str = "6578293018472301";

    fn wa_messages() -> String {
        Fake::graph_path(&format!("{PHONE_ID}/messages"))
    }

    fn wa_media() -> String {
        Fake::graph_path(&format!("{PHONE_ID}/media"))
    }

    fn send_api_path() -> String {
        Fake::graph_path("me/messages")
    }

    fn handle(kind: HandleKind, value: &str) -> IdentityHandle {
        IdentityHandle {
            kind: kind as i32,
            value: value.into(),
            ..Default::default()
        }
    }

    fn reply(
        recipient: IdentityHandle,
        text: &str,
        attachments: Vec<Attachment>,
    ) -> ConversationEvent {
        ConversationEvent {
            event_id: EVENT_ID.into(),
            recipients: vec![recipient],
            content: Some(Content {
                text: text.into(),
                attachments,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn seconds_ago(seconds: u64) -> i64 {
        (SystemTime::now() - Duration::from_secs(seconds))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;

    /// A state where `customer` last wrote `seconds` ago.
    async fn state_with(customer: &str, seconds: u64) -> ChannelState {
        let state = ChannelState::memory("x");
        window::record(
            &state,
            [(customer.to_owned(), seconds_ago(seconds))],
            Vec::new(),
        )
        .await
        .unwrap();
        state
    }

    struct Store {
        _dir: tempfile::TempDir,
        store: Arc<FsAttachmentStore>,
    }

    impl Store {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(FsAttachmentStore::new(dir.path()));
            Self { _dir: dir, store }
        }

        async fn put(&self, name: &str, media_type: &str, bytes: &[u8]) -> Attachment {
            let stored = self.store.put(Bytes::copy_from_slice(bytes)).await.unwrap();
            Attachment {
                name: name.into(),
                media_type: media_type.into(),
                size: stored.size,
                sha256: stored.sha256,
                uri: stored.uri,
            }
        }
    }

    fn whatsapp(
        fake: &Fake,
        state: ChannelState,
        store: &Store,
        template: Option<Template>,
    ) -> WhatsappSender {
        WhatsappSender::new(
            fake.client(),
            PHONE_ID.into(),
            state,
            store.store.clone(),
            template,
        )
    }

    fn template(text_parameter: bool) -> Template {
        Template {
            name: "reply_later".into(),
            language: "en_US".into(),
            text_parameter,
        }
    }

    fn rejected(outcome: Result<Delivered, DeliveryError>) -> String {
        match outcome {
            Err(DeliveryError::Rejected(reason)) => reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn whatsapp_text_inside_the_window() {
        let fake = Fake::start().await;
        let store = Store::new();
        let sender = whatsapp(&fake, state_with(WA_ID, HOUR).await, &store, None);
        let mut message = reply(
            handle(HandleKind::Whatsapp, WA_ID),
            "Hello!\nSecond line",
            Vec::new(),
        );
        message.threading = Some(ThreadingHints {
            reply_to_provider_message_id: "wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBQzQTg=".into(),
            ..Default::default()
        });
        let delivered = sender.deliver(&message).await.unwrap();
        assert_eq!(
            delivered,
            Delivered {
                provider_message_id: "wamid.1".into(),
                provider_status: "accepted".into(),
            }
        );
        let sent = fake.seen(&wa_messages());
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].json.as_ref().unwrap(),
            &json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": WA_ID,
                "type": "text",
                "text": {"body": "Hello!\nSecond line", "preview_url": false},
                "context": {"message_id": "wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBQzQTg="},
                "biz_opaque_callback_data": EVENT_ID,
            })
        );
    }

    #[tokio::test]
    async fn whatsapp_image_reply_uploads_then_sends_with_a_caption() {
        let fake = Fake::start().await;
        let store = Store::new();
        let sender = whatsapp(&fake, state_with(WA_ID, HOUR).await, &store, None);
        let image = store.put("photo.png", "image/png", b"\x89PNG data").await;
        // A phone-number recipient works too.
        let message = reply(
            handle(HandleKind::Phone, "+15551234567"),
            "Here it is",
            vec![image],
        );
        let delivered = sender.deliver(&message).await.unwrap();
        assert_eq!(delivered.provider_message_id, "wamid.2");
        assert_eq!(
            fake.calls(),
            [
                format!("POST {}", wa_media()),
                format!("POST {}", wa_messages())
            ]
        );
        let upload = &fake.seen(&wa_media())[0];
        assert_eq!(
            upload.field("messaging_product").as_deref(),
            Some("whatsapp")
        );
        assert_eq!(upload.field("type").as_deref(), Some("image/png"));
        let file = upload.form.iter().find(|f| f.name == "file").unwrap();
        assert_eq!(file.bytes, b"\x89PNG data");
        assert_eq!(file.file_name.as_deref(), Some("photo.png"));
        assert_eq!(
            fake.seen(&wa_messages())[0].json.as_ref().unwrap(),
            &json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": WA_ID,
                "type": "image",
                "image": {"id": "MEDIA-1", "caption": "Here it is"},
                "biz_opaque_callback_data": EVENT_ID,
            })
        );
    }

    #[tokio::test]
    async fn whatsapp_text_that_cannot_be_a_caption_goes_first() {
        let fake = Fake::start().await;
        let store = Store::new();
        let sender = whatsapp(&fake, state_with(WA_ID, HOUR).await, &store, None);
        let voice = store
            .put("note.ogg", "audio/ogg; codecs=opus", b"OggS")
            .await;
        let report = store.put("dir/report.zip", "application/zip", b"PK").await;
        let message = reply(
            handle(HandleKind::Whatsapp, WA_ID),
            "Two files",
            vec![voice, report],
        );
        let delivered = sender.deliver(&message).await.unwrap();
        // Text, audio (uploaded as MEDIA-2), document (MEDIA-4).
        assert_eq!(delivered.provider_message_id, "wamid.1,wamid.3,wamid.5");
        let sent: Vec<Value> = fake
            .seen(&wa_messages())
            .into_iter()
            .map(|s| s.json.unwrap())
            .collect();
        assert_eq!(sent[0]["text"]["body"], "Two files");
        assert_eq!(sent[1]["type"], "audio");
        assert_eq!(sent[1]["audio"], json!({"id": "MEDIA-2"}));
        assert_eq!(sent[2]["type"], "document");
        assert_eq!(
            sent[2]["document"],
            json!({"id": "MEDIA-4", "filename": "report.zip"})
        );
        assert!(
            sent.iter()
                .all(|s| s["biz_opaque_callback_data"] == EVENT_ID)
        );
    }

    #[tokio::test]
    async fn whatsapp_outside_the_window_uses_the_template() {
        let fake = Fake::start().await;
        let store = Store::new();
        let sender = whatsapp(
            &fake,
            state_with(WA_ID, 2 * DAY).await,
            &store,
            Some(template(true)),
        );
        // Parameters from the metadata.
        let mut message = reply(handle(HandleKind::Whatsapp, WA_ID), "ignored", Vec::new());
        message.provider_metadata = HashMap::from([(
            TEMPLATE_PARAMETERS_KEY.to_owned(),
            r##"["Ada", "#1234"]"##.to_owned(),
        )]);
        let delivered = sender.deliver(&message).await.unwrap();
        assert_eq!(delivered.provider_message_id, "wamid.1");
        assert_eq!(
            fake.seen(&wa_messages())[0].json.as_ref().unwrap(),
            &json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": WA_ID,
                "type": "template",
                "template": {
                    "name": "reply_later",
                    "language": {"code": "en_US"},
                    "components": [{"type": "body", "parameters": [
                        {"type": "text", "text": "Ada"},
                        {"type": "text", "text": "#1234"},
                    ]}],
                },
                "biz_opaque_callback_data": EVENT_ID,
            })
        );
        // Parameter from the text, on one line.
        let message = reply(
            handle(HandleKind::Whatsapp, WA_ID),
            "Your order\n\tshipped",
            Vec::new(),
        );
        sender.deliver(&message).await.unwrap();
        assert_eq!(
            fake.seen(&wa_messages())[1].json.as_ref().unwrap()["template"]["components"],
            json!([{"type": "body", "parameters": [{"type": "text", "text": "Your order shipped"}]}])
        );
        // A template without parameters; a customer who never wrote.
        let sender = whatsapp(
            &fake,
            ChannelState::memory("x"),
            &store,
            Some(template(false)),
        );
        sender.deliver(&message).await.unwrap();
        let sent = fake.seen(&wa_messages())[2].json.clone().unwrap();
        assert_eq!(
            sent["template"],
            json!({"name": "reply_later", "language": {"code": "en_US"}})
        );

        // Bad metadata and files are refused before anything is sent.
        let mut bad = message.clone();
        bad.provider_metadata =
            HashMap::from([(TEMPLATE_PARAMETERS_KEY.to_owned(), "[1]".to_owned())]);
        assert!(rejected(sender.deliver(&bad).await).contains(TEMPLATE_PARAMETERS_KEY));
        let file = store.put("a.png", "image/png", b"png").await;
        let with_file = reply(handle(HandleKind::Whatsapp, WA_ID), "x", vec![file]);
        assert!(rejected(sender.deliver(&with_file).await).contains("carries no attachments"));
        assert_eq!(fake.seen(&wa_messages()).len(), 3);
    }

    #[tokio::test]
    async fn whatsapp_outside_the_window_without_a_template_is_rejected() {
        let fake = Fake::start().await;
        let store = Store::new();
        let message = reply(handle(HandleKind::Whatsapp, WA_ID), "Hello", Vec::new());
        let sender = whatsapp(&fake, state_with(WA_ID, 3 * DAY).await, &store, None);
        assert_eq!(
            rejected(sender.deliver(&message).await),
            "outside WhatsApp's 24-hour customer-service window (the customer last wrote 3 days ago): configure a template to reach them"
        );
        let sender = whatsapp(&fake, ChannelState::memory("x"), &store, None);
        assert_eq!(
            rejected(sender.deliver(&message).await),
            "outside WhatsApp's 24-hour customer-service window (the customer has never written): configure a template to reach them"
        );
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn whatsapp_throttling_is_temporary_with_retry_after() {
        let fake = Fake::start().await;
        let store = Store::new();
        let sender = whatsapp(&fake, state_with(WA_ID, HOUR).await, &store, None);
        let message = reply(handle(HandleKind::Whatsapp, WA_ID), "Hello", Vec::new());
        fake.script(
            &wa_messages(),
            vec![
                Reply::error(400, 130429, Some(2494055), "(#130429) Rate limit hit"),
                Reply::error(429, 4, None, "Application request limit reached")
                    .with_header("retry-after", "30"),
                Reply::error(400, 131047, None, "(#131047) Re-engagement message"),
            ],
        );
        for wait in [60, 30] {
            match sender.deliver(&message).await {
                Err(DeliveryError::Temporary {
                    reason,
                    retry_after,
                }) => {
                    assert_eq!(retry_after, Some(Duration::from_secs(wait)));
                    assert!(reason.contains("throttled"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        let reason = rejected(sender.deliver(&message).await);
        assert!(reason.starts_with("graph error 131047: "), "{reason}");
        assert!(reason.contains("only a template reaches them"), "{reason}");
    }

    #[tokio::test]
    async fn whatsapp_retries_send_only_what_is_left() {
        let fake = Fake::start().await;
        let store = Store::new();
        let sender = whatsapp(&fake, state_with(WA_ID, HOUR).await, &store, None);
        let voice = store.put("v.ogg", "audio/ogg", b"OggS").await;
        let message = reply(handle(HandleKind::Whatsapp, WA_ID), "Listen", vec![voice]);
        fake.script(&wa_media(), vec![Reply::json(503, json!({}))]);
        assert!(matches!(
            sender.deliver(&message).await,
            Err(DeliveryError::Temporary { .. })
        ));
        let delivered = sender.deliver(&message).await.unwrap();
        assert_eq!(delivered.provider_message_id, "wamid.1,wamid.3");
        assert_eq!(fake.seen(&wa_messages()).len(), 2, "the text went once");
        // Done: a new delivery of the same event starts afresh.
        assert!(sender.progress.already_sent(EVENT_ID).is_empty());
    }

    #[tokio::test]
    async fn whatsapp_refusals_before_sending() {
        let fake = Fake::start().await;
        let store = Store::new();
        let sender = whatsapp(&fake, state_with(WA_ID, HOUR).await, &store, None);
        let long = "é".repeat(MAX_WHATSAPP_TEXT_CHARS + 1);
        let reason = rejected(
            sender
                .deliver(&reply(
                    handle(HandleKind::Whatsapp, WA_ID),
                    &long,
                    Vec::new(),
                ))
                .await,
        );
        assert!(reason.contains("over WhatsApp's limit of 4096"), "{reason}");
        // Exactly the limit is fine.
        let max = "é".repeat(MAX_WHATSAPP_TEXT_CHARS);
        sender
            .deliver(&reply(
                handle(HandleKind::Whatsapp, WA_ID),
                &max,
                Vec::new(),
            ))
            .await
            .unwrap();
        for recipient in [
            handle(HandleKind::MessengerPsid, PSID),
            handle(HandleKind::Whatsapp, "+1 555"),
            handle(HandleKind::Phone, "+"),
        ] {
            rejected(sender.deliver(&reply(recipient, "hi", Vec::new())).await);
        }
        rejected(
            sender
                .deliver(&reply(
                    handle(HandleKind::Whatsapp, WA_ID),
                    "  ",
                    Vec::new(),
                ))
                .await,
        );
        let mut no_id = reply(handle(HandleKind::Whatsapp, WA_ID), "hi", Vec::new());
        no_id.event_id.clear();
        rejected(sender.deliver(&no_id).await);
        assert_eq!(fake.seen(&wa_messages()).len(), 1);
    }

    /// A state store that always fails.
    #[derive(Debug)]
    struct Broken;

    impl StateStore for Broken {
        fn get(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, StateError> {
            Err(StateError {
                path: "/var/lib/omnid/state.db".into(),
                message: "disk I/O error".into(),
            })
        }
        fn commit(&self, _: &str, _: &StateUpdate) -> Result<(), StateError> {
            unreachable!()
        }
        fn seen(&self, _: &str, _: &[String]) -> Result<Vec<bool>, StateError> {
            unreachable!()
        }
        fn scan_after(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: usize,
        ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
            unreachable!()
        }
    }

    #[tokio::test]
    async fn an_unreadable_state_is_temporary() {
        let fake = Fake::start().await;
        let store = Store::new();
        let state = ChannelState::new(Arc::new(Broken), "x");
        let wa = whatsapp(&fake, state.clone(), &store, Some(template(true)));
        let outcome = wa
            .deliver(&reply(
                handle(HandleKind::Whatsapp, WA_ID),
                "hi",
                Vec::new(),
            ))
            .await;
        assert!(
            matches!(&outcome, Err(DeliveryError::Temporary { reason, .. }) if reason.contains("disk I/O error")),
            "{outcome:?}"
        );
        let messenger = send_api(&fake, SendPlatform::Messenger, state, &store, true);
        assert!(matches!(
            messenger
                .deliver(&reply(
                    handle(HandleKind::MessengerPsid, PSID),
                    "hi",
                    Vec::new()
                ))
                .await,
            Err(DeliveryError::Temporary { .. })
        ));
        assert!(fake.calls().is_empty());
    }

    fn send_api(
        fake: &Fake,
        platform: SendPlatform,
        state: ChannelState,
        store: &Store,
        human_agent_tag: bool,
    ) -> SendApiSender {
        SendApiSender::new(
            fake.client(),
            platform,
            PAGE_ID.into(),
            state,
            store.store.clone(),
            human_agent_tag,
        )
    }

    #[tokio::test]
    async fn send_api_response_inside_the_window() {
        let fake = Fake::start().await;
        let store = Store::new();
        let sender = send_api(
            &fake,
            SendPlatform::Messenger,
            state_with(PSID, HOUR).await,
            &store,
            false,
        );
        let mut recipient = handle(HandleKind::MessengerPsid, PSID);
        recipient.scope = PAGE_ID.into();
        let delivered = sender
            .deliver(&reply(recipient, "Hi there", Vec::new()))
            .await
            .unwrap();
        assert_eq!(
            delivered,
            Delivered {
                provider_message_id: "m_1".into(),
                provider_status: "accepted".into(),
            }
        );
        assert_eq!(
            fake.seen(&send_api_path())[0].json.as_ref().unwrap(),
            &json!({
                "recipient": {"id": PSID},
                "messaging_type": "RESPONSE",
                "message": {"text": "Hi there"},
            })
        );
        // Another Page's customer is refused.
        let mut other = handle(HandleKind::MessengerPsid, PSID);
        other.scope = "999".into();
        assert!(rejected(sender.deliver(&reply(other, "x", Vec::new())).await).contains("\"999\""));
    }

    #[tokio::test]
    async fn sent_messages_echoes_are_marked_seen_for_the_webhook() {
        let fake = Fake::start().await;
        let store = Store::new();
        let state = state_with(PSID, HOUR).await;
        let sender = send_api(&fake, SendPlatform::Instagram, state.clone(), &store, false)
            .marking_echoes("ig");
        let echo = omni_model::event_id("ig", "m_1").to_string();
        assert_eq!(state.seen(vec![echo.clone()]).await.unwrap(), [false]);
        sender
            .deliver(&reply(
                handle(HandleKind::InstagramIgsid, PSID),
                "Hi",
                Vec::new(),
            ))
            .await
            .unwrap();
        assert_eq!(state.seen(vec![echo]).await.unwrap(), [true]);
    }

    #[tokio::test]
    async fn send_api_human_agent_between_one_and_seven_days() {
        let fake = Fake::start().await;
        let store = Store::new();
        let state = state_with(PSID, 2 * DAY).await;
        let message = reply(
            handle(HandleKind::MessengerPsid, PSID),
            "Following up",
            Vec::new(),
        );
        let tagged = send_api(&fake, SendPlatform::Messenger, state.clone(), &store, true);
        tagged.deliver(&message).await.unwrap();
        assert_eq!(
            fake.seen(&send_api_path())[0].json.as_ref().unwrap(),
            &json!({
                "recipient": {"id": PSID},
                "messaging_type": "MESSAGE_TAG",
                "tag": "HUMAN_AGENT",
                "message": {"text": "Following up"},
            })
        );
        // Without the setting: rejected, naming the window and the setting.
        let untagged = send_api(&fake, SendPlatform::Messenger, state, &store, false);
        assert_eq!(
            rejected(untagged.deliver(&message).await),
            "outside Messenger's 24-hour messaging window (the customer last wrote 2 days ago): set human_agent_tag = true (with Meta's Human Agent permission) to reply up to 7 days after the customer's last message"
        );
        assert_eq!(fake.seen(&send_api_path()).len(), 1);
    }

    #[tokio::test]
    async fn send_api_after_seven_days_is_rejected_even_with_the_tag() {
        let fake = Fake::start().await;
        let store = Store::new();
        let state = state_with(PSID, 8 * DAY).await;
        let sender = send_api(&fake, SendPlatform::Instagram, state, &store, true);
        let message = reply(
            handle(HandleKind::InstagramIgsid, PSID),
            "Hello?",
            Vec::new(),
        );
        let reason = rejected(sender.deliver(&message).await);
        assert!(reason.starts_with("outside Instagram's 24-hour messaging window and the 7-day HUMAN_AGENT window (the customer last wrote 8 days ago)"), "{reason}");
        let never = send_api(
            &fake,
            SendPlatform::Instagram,
            ChannelState::memory("x"),
            &store,
            true,
        );
        assert!(rejected(never.deliver(&message).await).contains("the customer has never written"));
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn send_api_window_edges() {
        let now = SystemTime::now();
        let at = |seconds: u64| {
            Some(
                (now - Duration::from_secs(seconds))
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64,
            )
        };
        let tagging = |last, flag| send_api_tagging(SendPlatform::Messenger, last, now, flag);
        assert_eq!(tagging(at(DAY - 1), false).unwrap(), Tagging::Response);
        assert!(tagging(at(DAY), false).is_err());
        assert_eq!(tagging(at(DAY), true).unwrap(), Tagging::HumanAgent);
        assert_eq!(tagging(at(7 * DAY - 1), true).unwrap(), Tagging::HumanAgent);
        assert!(tagging(at(7 * DAY), true).is_err());
        // A customer's clock ahead of ours still counts as just now.
        let future = Some(at(0).unwrap() + 600);
        assert_eq!(tagging(future, false).unwrap(), Tagging::Response);
    }

    #[tokio::test]
    async fn send_api_attachments_are_multipart_after_the_text() {
        let fake = Fake::start().await;
        let store = Store::new();
        let sender = send_api(
            &fake,
            SendPlatform::Messenger,
            state_with(PSID, 2 * DAY).await,
            &store,
            true,
        );
        let image = store.put("cat.jpg", "image/jpeg", b"\xff\xd8cat").await;
        let pdf = store.put("", "application/pdf", b"%PDF").await;
        let message = reply(
            handle(HandleKind::MessengerPsid, PSID),
            "Two files",
            vec![image, pdf],
        );
        let delivered = sender.deliver(&message).await.unwrap();
        assert_eq!(delivered.provider_message_id, "m_1,m_2,m_3");
        let sent = fake.seen(&send_api_path());
        assert_eq!(
            sent[0].json.as_ref().unwrap()["message"]["text"],
            "Two files"
        );
        let image = &sent[1];
        assert_eq!(
            image.field("recipient").as_deref(),
            Some(r#"{"id":"6578293018472301"}"#)
        );
        assert_eq!(
            image.field("messaging_type").as_deref(),
            Some("MESSAGE_TAG")
        );
        assert_eq!(image.field("tag").as_deref(), Some("HUMAN_AGENT"));
        assert_eq!(
            serde_json::from_str::<Value>(&image.field("message").unwrap()).unwrap(),
            json!({"attachment": {"type": "image", "payload": {"is_reusable": false}}})
        );
        let file = image.form.iter().find(|f| f.name == "filedata").unwrap();
        assert_eq!(file.bytes, b"\xff\xd8cat");
        assert_eq!(file.file_name.as_deref(), Some("cat.jpg"));
        assert_eq!(file.content_type.as_deref(), Some("image/jpeg"));
        let pdf = &sent[2];
        assert_eq!(
            serde_json::from_str::<Value>(&pdf.field("message").unwrap()).unwrap()["attachment"]["type"],
            "file"
        );
        let file = pdf.form.iter().find(|f| f.name == "filedata").unwrap();
        assert_eq!(file.file_name.as_deref(), Some("attachment"));
    }

    #[tokio::test]
    async fn send_api_text_limits_and_errors() {
        let fake = Fake::start().await;
        let store = Store::new();
        let messenger = send_api(
            &fake,
            SendPlatform::Messenger,
            state_with(PSID, HOUR).await,
            &store,
            false,
        );
        let instagram = send_api(
            &fake,
            SendPlatform::Instagram,
            state_with(PSID, HOUR).await,
            &store,
            false,
        );
        let psid = || handle(HandleKind::MessengerPsid, PSID);
        let igsid = || handle(HandleKind::InstagramIgsid, PSID);
        // 2000 characters of two bytes each: fine on Messenger, not on Instagram.
        let text = "é".repeat(MAX_MESSENGER_TEXT_CHARS);
        messenger
            .deliver(&reply(psid(), &text, Vec::new()))
            .await
            .unwrap();
        let reason = rejected(
            messenger
                .deliver(&reply(psid(), &format!("{text}x"), Vec::new()))
                .await,
        );
        assert!(
            reason.contains("2001 characters is over Messenger's limit of 2000"),
            "{reason}"
        );
        let reason = rejected(
            instagram
                .deliver(&reply(igsid(), &"é".repeat(501), Vec::new()))
                .await,
        );
        assert!(
            reason.contains("1002 bytes is over Instagram's limit of 1000"),
            "{reason}"
        );
        // The wrong kind of recipient.
        assert!(
            rejected(instagram.deliver(&reply(psid(), "x", Vec::new())).await).contains("IGSID")
        );

        fake.script(
            &send_api_path(),
            vec![
                Reply::error(
                    400,
                    613,
                    None,
                    "Calls to this api have exceeded the rate limit.",
                ),
                Reply::error(
                    500,
                    2,
                    None,
                    "An unexpected error has occurred. Please retry your request later.",
                ),
                Reply::error(
                    400,
                    10,
                    Some(2018278),
                    "(#10) This message is sent outside of allowed window.",
                ),
            ],
        );
        let message = reply(psid(), "hello", Vec::new());
        assert!(matches!(
            messenger.deliver(&message).await,
            Err(DeliveryError::Temporary { retry_after: Some(wait), .. }) if wait == crate::graph::DEFAULT_THROTTLE_WAIT
        ));
        assert!(matches!(
            messenger.deliver(&message).await,
            Err(DeliveryError::Temporary {
                retry_after: None,
                ..
            })
        ));
        let reason = rejected(messenger.deliver(&message).await);
        assert!(reason.starts_with("graph error 10/2018278: "), "{reason}");
        assert!(
            reason.contains("outside the allowed messaging window"),
            "{reason}"
        );
    }

    #[test]
    fn whatsapp_kinds() {
        assert_eq!(whatsapp_kind(0, "image/jpeg", 10).unwrap(), "image");
        assert_eq!(
            whatsapp_kind(0, "image/png", 6 * 1024 * 1024).unwrap(),
            "document"
        );
        assert_eq!(whatsapp_kind(0, "image/webp", 10).unwrap(), "sticker");
        assert_eq!(whatsapp_kind(0, "audio/ogg", 10).unwrap(), "audio");
        assert_eq!(whatsapp_kind(0, "video/mp4", 10).unwrap(), "video");
        assert_eq!(whatsapp_kind(0, "application/pdf", 10).unwrap(), "document");
        assert!(whatsapp_kind(0, "application/pdf", 101 * 1024 * 1024).is_err());
        assert_eq!(send_api_kind(0, "video/quicktime", 10).unwrap(), "video");
        assert_eq!(send_api_kind(0, "text/plain", 10).unwrap(), "file");
        assert!(send_api_kind(0, "image/png", MAX_SEND_API_FILE_BYTES + 1).is_err());
    }

    #[test]
    fn captions_and_ages() {
        let file = |kind| File {
            kind,
            name: "f".into(),
            media_type: "x/y".into(),
            content: Bytes::new(),
        };
        let parts = whatsapp_parts("caption", vec![file("video"), file("image")]);
        assert!(
            matches!(&parts[..], [Part::File { caption: Some(c), .. }, Part::File { caption: None, .. }] if c == "caption")
        );
        let parts = whatsapp_parts(
            &"x".repeat(MAX_WHATSAPP_CAPTION_CHARS + 1),
            vec![file("image")],
        );
        assert!(matches!(
            &parts[..],
            [Part::Text(_), Part::File { caption: None, .. }]
        ));
        let parts = whatsapp_parts("", vec![file("sticker")]);
        assert!(matches!(&parts[..], [Part::File { caption: None, .. }]));

        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10 * DAY);
        let at = |seconds: u64| (10 * DAY - seconds) as i64;
        assert_eq!(ago(at(125), now), "2 minutes ago");
        assert_eq!(ago(at(47 * HOUR), now), "47 hours ago");
        assert_eq!(ago(at(3 * DAY), now), "3 days ago");
    }
}
