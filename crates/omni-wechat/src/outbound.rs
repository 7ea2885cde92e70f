//! Replies, through both platforms' customer-service APIs.
//!
//! - Official Account: `cgi-bin/message/custom/send` to the customer's
//!   openid. WeChat allows it for 48 hours after the customer last wrote,
//!   and a few messages per customer message (45015 and 45047 otherwise).
//! - WeChat Customer Service: `cgi-bin/kf/send_msg` from a
//!   customer-service account (`open_kfid`) to the customer's
//!   `external_userid`, under the same kind of limits (5 messages within
//!   48 hours per customer message: 95001, 95002); or, for a reply carrying
//!   the `welcome_code` of an `enter_session` event,
//!   `cgi-bin/kf/send_msg_on_event` (once per code, within 20 seconds).
//!
//! Each file goes as its own message after the text: it is uploaded with
//! `cgi-bin/media/upload` (a temporary media id) and then sent. Every file
//! is loaded from the attachment store and checked before anything is
//! sent. A reply is thus several API calls; which of them went out is
//! remembered in memory per outbound event id, so a retry after a
//! temporary failure sends only the rest. After a restart (or once the
//! memory of old replies is trimmed) a retry sends the whole reply again:
//! at least once, as every reply.
//!
//! WeCom messages carry a `msgid` derived from the outbound event id (the
//! event id itself when it fits, with the part's index after the first
//! part), so a repeat is recognisable on WeCom's side too. (WeCom's
//! documentation does not say whether it refuses a repeated `msgid`; if it
//! does, the refusal is reported as a rejection of a message that in fact
//! went out.)

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use omni_connector::{
    AttachmentStore, Delivered, DeliveryError, OutboundHandler,
    attachments::{load_outbound, outbound_file_name},
};
use omni_proto::v1::{Attachment, ConversationEvent, HandleKind, IdentityHandle};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use tokio::time::Instant;

use crate::api::{ApiClient, ApiError};

/// Most bytes one reply's files may total (they are held in memory while
/// they are sent).
pub const MAX_REPLY_BYTES: u64 = 50_000_000;

/// WeCom's limit on a `kf/send_msg` text, in bytes.
pub const MAX_KF_TEXT_BYTES: usize = 2048;

/// Longest `msgid` WeCom accepts.
pub const MAX_MSGID_BYTES: usize = 32;

/// How long the dispatcher waits after a quota error (45009 and friends
/// say neither how long nor which quota).
pub const QUOTA_WAIT: Duration = Duration::from_secs(60);

/// How many unfinished replies' progress is remembered.
const MAX_REMEMBERED: usize = 10_000;

/// How long an unfinished reply's progress is worth keeping (the
/// customer's reply window is 48 hours).
const REMEMBER_FOR: Duration = Duration::from_secs(48 * 3600);

/// The API names of the calls, in errors.
const OA_SEND: &str = "message/custom/send";
const KF_SEND: &str = "kf/send_msg";
const KF_SEND_ON_EVENT: &str = "kf/send_msg_on_event";

/// What each part of a reply is.
#[derive(Debug, Clone)]
enum Part {
    Text(String),
    File(File),
}

/// A file, loaded and checked, and the message type it goes as.
#[derive(Debug, Clone)]
struct File {
    /// `image`, `voice`, `video` or `file`: both the upload's `type` and
    /// the message's `msgtype`.
    kind: &'static str,
    name: String,
    media_type: String,
    content: Bytes,
}

/// Which parts of unfinished replies went out, by outbound event id.
#[derive(Debug, Default)]
struct Progress {
    sent: Mutex<HashMap<String, (Instant, usize)>>,
}

impl Progress {
    /// How many parts of `event_id` were sent by an earlier attempt.
    fn already_sent(&self, event_id: &str) -> usize {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.get(event_id).map_or(0, |(_, count)| *count)
    }

    /// `count` parts of `event_id` are out.
    fn record(&self, event_id: &str, count: usize) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent.len() >= MAX_REMEMBERED && !sent.contains_key(event_id) {
            let now = Instant::now();
            sent.retain(|_, (at, _)| now.duration_since(*at) < REMEMBER_FOR);
            if sent.len() >= MAX_REMEMBERED {
                sent.clear();
            }
        }
        sent.insert(event_id.to_owned(), (Instant::now(), count));
    }

    /// Records the outcome of part `index`: sent, or failed (a rejected
    /// reply is not retried, so it is forgotten).
    fn settle<T>(
        &self,
        event_id: &str,
        index: usize,
        outcome: Result<T, DeliveryError>,
    ) -> Result<T, DeliveryError> {
        match &outcome {
            Ok(_) => self.record(event_id, index + 1),
            Err(DeliveryError::Rejected(_)) => self.finish(event_id),
            Err(DeliveryError::Temporary { .. }) => {}
        }
        outcome
    }

    /// The reply is complete (or given up): nothing to remember.
    fn finish(&self, event_id: &str) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.remove(event_id);
    }
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

/// The message type an Official Account sends a file as: custom messages
/// carry images, voice (AMR, MP3) and video (MP4), within the upload
/// limits of `media/upload`; there is no file message.
fn oa_kind(index: usize, media_type: &str, size: usize) -> Result<&'static str, DeliveryError> {
    const MIB: usize = 1024 * 1024;
    let essence = essence(media_type);
    let (kind, limit) = match essence.as_str() {
        "image/jpeg" | "image/jpg" | "image/png" | "image/gif" | "image/bmp" => ("image", 10 * MIB),
        "audio/amr" | "audio/mp3" | "audio/mpeg" => ("voice", 2 * MIB),
        "video/mp4" => ("video", 10 * MIB),
        _ => {
            let shown = if essence.is_empty() {
                "files without a media type"
            } else {
                essence.as_str()
            };
            return Err(DeliveryError::Rejected(format!(
                "attachments[{index}]: WeChat custom messages cannot carry {shown} (only images, AMR/MP3 voice and MP4 video)"
            )));
        }
    };
    if size > limit {
        return Err(DeliveryError::Rejected(format!(
            "attachments[{index}]: a WeChat {kind} is at most {limit} bytes, this one is {size}"
        )));
    }
    Ok(kind)
}

/// The message type WeCom sends a file as: JPG/PNG images, AMR voice and
/// MP4 video within their limits; anything else (and those when larger) as
/// a file of at most 20 MB.
fn kf_kind(index: usize, media_type: &str, size: usize) -> Result<&'static str, DeliveryError> {
    const MIB: usize = 1024 * 1024;
    let typed = match essence(media_type).as_str() {
        "image/jpeg" | "image/jpg" | "image/png" => Some(("image", 10 * MIB)),
        "audio/amr" => Some(("voice", 2 * MIB)),
        "video/mp4" => Some(("video", 10 * MIB)),
        _ => None,
    };
    match typed {
        Some((kind, limit)) if size <= limit => Ok(kind),
        _ if size <= 20 * MIB => Ok("file"),
        _ => Err(DeliveryError::Rejected(format!(
            "attachments[{index}]: a WeCom file is at most {} bytes, this one is {size}",
            20 * MIB
        ))),
    }
}

/// The extension WeChat expects for a media type (it checks the upload's
/// file name).
fn extension_of(media_type: &str) -> Option<&'static str> {
    Some(match essence(media_type).as_str() {
        "image/jpeg" | "image/jpg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/bmp" => "bmp",
        "audio/amr" => "amr",
        "audio/mp3" | "audio/mpeg" => "mp3",
        "video/mp4" => "mp4",
        _ => return None,
    })
}

/// The name a file is uploaded under: its own, with the extension of its
/// type when it has none.
fn upload_name(index: usize, attachment: &Attachment) -> Result<String, DeliveryError> {
    let name = outbound_file_name(index, &attachment.name)?;
    let has_extension = name
        .rsplit_once('.')
        .is_some_and(|(stem, ext)| !stem.is_empty() && !ext.is_empty());
    Ok(match extension_of(&attachment.media_type) {
        Some(ext) if !has_extension => format!("{name}.{ext}"),
        _ => name,
    })
}

/// The parts of a reply: its text (if any), then each file, all loaded and
/// checked; `kind_of` picks each file's message type or refuses it.
async fn reply_parts(
    store: &dyn AttachmentStore,
    message: &ConversationEvent,
    kind_of: fn(usize, &str, usize) -> Result<&'static str, DeliveryError>,
) -> Result<Vec<Part>, DeliveryError> {
    let content = message.content.clone().unwrap_or_default();
    if content.text.trim().is_empty() && content.attachments.is_empty() {
        return Err(DeliveryError::Rejected(
            "content has neither text nor attachments".into(),
        ));
    }
    let mut names = Vec::with_capacity(content.attachments.len());
    for (i, attachment) in content.attachments.iter().enumerate() {
        if attachment.media_type.chars().any(char::is_control) {
            return Err(DeliveryError::Rejected(format!(
                "attachments[{i}].media_type contains a line break or control character"
            )));
        }
        names.push(upload_name(i, attachment)?);
    }
    let contents = load_outbound(
        store,
        &content.attachments,
        MAX_REPLY_BYTES,
        "the most one WeChat reply carries",
    )
    .await?;
    let mut parts = Vec::with_capacity(1 + contents.len());
    if !content.text.trim().is_empty() {
        parts.push(Part::Text(content.text.clone()));
    }
    for (i, ((attachment, name), content)) in content
        .attachments
        .iter()
        .zip(names)
        .zip(contents)
        .enumerate()
    {
        let media_type = essence(&attachment.media_type);
        parts.push(Part::File(File {
            kind: kind_of(i, &media_type, content.len())?,
            name,
            media_type: if media_type.is_empty() {
                "application/octet-stream".to_owned()
            } else {
                media_type
            },
            content,
        }));
    }
    Ok(parts)
}

/// The outbound event's id, which every provider-visible id derives from.
fn event_id(message: &ConversationEvent) -> Result<&str, DeliveryError> {
    let id = message.event_id.trim();
    if id.is_empty() {
        return Err(DeliveryError::Rejected("event_id is empty".into()));
    }
    Ok(id)
}

/// The first recipient, which must be of `kind`, and (when it has a scope)
/// in `scope`.
fn recipient<'a>(
    message: &'a ConversationEvent,
    kind: HandleKind,
    scope: &str,
    what: &str,
) -> Result<&'a IdentityHandle, DeliveryError> {
    let Some(first) = message.recipients.first() else {
        return Err(DeliveryError::Rejected(format!(
            "no recipient: the first recipient must be {what}"
        )));
    };
    if first.kind != kind as i32 {
        return Err(DeliveryError::Rejected(format!(
            "the first recipient must be {what}"
        )));
    }
    if !first.scope.is_empty() && first.scope != scope {
        return Err(DeliveryError::Rejected(format!(
            "the recipient belongs to {:?}, not to this channel's {scope}",
            first.scope
        )));
    }
    check_id("the recipient", &first.value)?;
    Ok(first)
}

/// An id WeChat issued (openid, external_userid, open_kfid): printable
/// ASCII, not too long.
fn check_id(what: &str, value: &str) -> Result<(), DeliveryError> {
    if value.is_empty() || value.len() > 128 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(DeliveryError::Rejected(format!(
            "{what} is not a WeChat id"
        )));
    }
    Ok(())
}

/// Why a call failed, for the dispatcher: quota errors are throttled,
/// other temporary ones retried, the rest rejected with `explain`'s word
/// on the code.
fn delivery_error(error: ApiError, explain: fn(i64) -> Option<&'static str>) -> DeliveryError {
    let reason = match error.errcode().and_then(explain) {
        Some(why) => format!("{error} ({why})"),
        None => error.to_string(),
    };
    match (&error, error.errcode()) {
        (_, Some(45009 | 45011 | 45033)) | (ApiError::Http { status: 429, .. }, _) => {
            DeliveryError::throttled(reason, QUOTA_WAIT)
        }
        _ if error.is_temporary() => DeliveryError::temporary(reason),
        _ => DeliveryError::Rejected(reason),
    }
}

/// What the common errors of both platforms mean.
fn explain_common(errcode: i64) -> Option<&'static str> {
    Some(match errcode {
        40004 | 40005 => "WeChat refused the file's type",
        40006 | 40009 | 40010 | 40011 => "WeChat refused the file's size",
        45009 | 45011 | 45033 => "API call quota reached; retried later",
        48001 => "the account is not authorised to use this API",
        _ => return None,
    })
}

fn explain_oa(errcode: i64) -> Option<&'static str> {
    Some(match errcode {
        45015 => "the reply window is closed: the customer has not written in 48 hours",
        45047 => {
            "too many messages since the customer last wrote; more can be sent once they write again"
        }
        40003 => "invalid openid: not a follower of this account",
        43004 => "the customer has unfollowed the account",
        43019 => "the customer has blocked the account",
        45002 => "the text is too long",
        _ => return explain_common(errcode),
    })
}

fn explain_kf(errcode: i64) -> Option<&'static str> {
    Some(match errcode {
        95000 | 95004 => "invalid or unknown open_kfid",
        95001 => {
            "five messages already sent since the customer last wrote; more can be sent once they write again"
        }
        95002 => "the reply window is closed: the customer has not written in 48 hours",
        95013 => "the session has ended",
        95018 => {
            "the session's state does not allow API messages (it is not new or with the assistant)"
        }
        40096 => "invalid external_userid",
        _ => return explain_common(errcode),
    })
}

fn explain_welcome(errcode: i64) -> Option<&'static str> {
    match errcode {
        95000..=95099 => {
            Some("the welcome code is expired (20 seconds), already used, or the session moved on")
        }
        _ => explain_kf(errcode),
    }
}

/// Uploads a file: its temporary media id.
async fn upload(
    api: &ApiClient,
    file: &File,
    explain: fn(i64) -> Option<&'static str>,
) -> Result<String, DeliveryError> {
    api.media_upload(
        file.kind,
        &file.name,
        &file.media_type,
        file.content.clone(),
    )
    .await
    .map_err(|e| delivery_error(e, explain))
}

/// Sends replies of one Official Account.
#[derive(Debug)]
pub struct OaSender {
    pub(crate) api: ApiClient,
    /// The account's AppID: the scope of the openids it answers.
    pub(crate) app_id: String,
    /// Where reply attachments are read from.
    pub(crate) attachments: Arc<dyn AttachmentStore>,
    progress: Progress,
}

impl OaSender {
    /// A sender of the account `app_id` through `api`.
    pub fn new(api: ApiClient, app_id: String, attachments: Arc<dyn AttachmentStore>) -> Self {
        Self {
            api,
            app_id,
            attachments,
            progress: Progress::default(),
        }
    }

    /// The custom message of one part.
    async fn body(&self, openid: &str, part: &Part) -> Result<Value, DeliveryError> {
        Ok(match part {
            Part::Text(text) => json!({
                "touser": openid,
                "msgtype": "text",
                "text": { "content": text },
            }),
            Part::File(file) => {
                let media_id = upload(&self.api, file, explain_oa).await?;
                let payload = if file.kind == "video" {
                    json!({ "media_id": media_id, "title": file.name, "description": "" })
                } else {
                    json!({ "media_id": media_id })
                };
                json!({
                    "touser": openid,
                    "msgtype": file.kind,
                    file.kind: payload,
                })
            }
        })
    }
}

#[async_trait]
impl OutboundHandler for OaSender {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError> {
        let event_id = event_id(message)?;
        let openid = recipient(
            message,
            HandleKind::WechatOpenid,
            &self.app_id,
            "a WeChat openid",
        )?;
        let parts = reply_parts(self.attachments.as_ref(), message, oa_kind).await?;
        let done = self.progress.already_sent(event_id);
        for (i, part) in parts.iter().enumerate().skip(done) {
            let sent = match self.body(&openid.value, part).await {
                Ok(body) => self
                    .api
                    .post_json(OA_SEND, "cgi-bin/message/custom/send", &body)
                    .await
                    .map_err(|e| delivery_error(e, explain_oa)),
                Err(error) => Err(error),
            };
            self.progress.settle(event_id, i, sent)?;
        }
        self.progress.finish(event_id);
        Ok(Delivered {
            // Custom messages get no id back.
            provider_message_id: format!("custom:{event_id}"),
            provider_status: "ok".into(),
        })
    }
}

/// Sends replies of one WeChat Customer Service app.
#[derive(Debug)]
pub struct KfSender {
    pub(crate) api: ApiClient,
    /// The WeCom corporation: the scope of the external users it answers.
    pub(crate) corp_id: String,
    /// Where reply attachments are read from.
    pub(crate) attachments: Arc<dyn AttachmentStore>,
    /// The account replies go from when the reply does not say (set when
    /// the channel has exactly one).
    pub(crate) default_open_kfid: Option<String>,
    progress: Progress,
}

/// Who a WeCom reply goes to, and from which account.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KfTarget {
    open_kfid: String,
    external_userid: String,
}

impl KfSender {
    /// A sender of the corporation `corp_id` through `api`.
    pub fn new(api: ApiClient, corp_id: String, attachments: Arc<dyn AttachmentStore>) -> Self {
        Self {
            api,
            corp_id,
            attachments,
            default_open_kfid: None,
            progress: Progress::default(),
        }
    }

    /// Replies that name no customer-service account go from `open_kfid`.
    pub fn with_default_open_kfid(mut self, open_kfid: impl Into<String>) -> Self {
        self.default_open_kfid = Some(open_kfid.into());
        self
    }

    /// The account and customer of a reply: `provider_metadata["open_kfid"]`,
    /// else the `{open_kfid}:{external_userid}` chat id, else the default
    /// account; the customer is the first recipient (or the chat id's).
    fn target(&self, message: &ConversationEvent) -> Result<KfTarget, DeliveryError> {
        let chat = message
            .threading
            .as_ref()
            .map(|t| t.provider_chat_id.trim())
            .and_then(|chat| chat.split_once(':'))
            .filter(|(kfid, user)| !kfid.is_empty() && !user.is_empty());
        let open_kfid = message
            .provider_metadata
            .get("open_kfid")
            .map(|kfid| kfid.trim())
            .filter(|kfid| !kfid.is_empty())
            .or(chat.map(|(kfid, _)| kfid))
            .or(self.default_open_kfid.as_deref())
            .ok_or_else(|| {
                DeliveryError::Rejected(
                    "no customer-service account: set provider_metadata.open_kfid or threading.provider_chat_id ({open_kfid}:{external_userid})".into(),
                )
            })?;
        check_id("open_kfid", open_kfid)?;
        let external_userid = if message.recipients.is_empty() {
            chat.map(|(_, user)| user).ok_or_else(|| {
                DeliveryError::Rejected(
                    "no recipient: the first recipient must be a WeCom external user".into(),
                )
            })?
        } else {
            let user = &recipient(
                message,
                HandleKind::WecomExternalUser,
                &self.corp_id,
                "a WeCom external user",
            )?
            .value;
            if chat.is_some_and(|(_, chat_user)| chat_user != user) {
                return Err(DeliveryError::Rejected(
                    "threading.provider_chat_id names another customer than the recipient".into(),
                ));
            }
            user.as_str()
        };
        check_id("the recipient", external_userid)?;
        Ok(KfTarget {
            open_kfid: open_kfid.to_owned(),
            external_userid: external_userid.to_owned(),
        })
    }

    /// The `kf/send_msg` body of one part.
    async fn body(
        &self,
        target: &KfTarget,
        msgid: &str,
        part: &Part,
    ) -> Result<Value, DeliveryError> {
        let (msgtype, payload) = match part {
            Part::Text(text) => ("text", json!({ "content": text })),
            Part::File(file) => {
                let media_id = upload(&self.api, file, explain_kf).await?;
                (file.kind, json!({ "media_id": media_id }))
            }
        };
        Ok(json!({
            "touser": target.external_userid,
            "open_kfid": target.open_kfid,
            "msgid": msgid,
            "msgtype": msgtype,
            msgtype: payload,
        }))
    }

    /// A welcome message with the code of an `enter_session` event.
    async fn welcome(
        &self,
        event_id: &str,
        code: &str,
        message: &ConversationEvent,
    ) -> Result<Delivered, DeliveryError> {
        let content = message.content.clone().unwrap_or_default();
        if !content.attachments.is_empty() {
            return Err(DeliveryError::Rejected(
                "a welcome message (welcome_code) carries text only".into(),
            ));
        }
        check_kf_text(&content.text)?;
        let msgid = kf_msgid(event_id, 0);
        let body = json!({
            "code": code,
            "msgid": msgid,
            "msgtype": "text",
            "text": { "content": content.text },
        });
        let answer = self
            .api
            .post_json(KF_SEND_ON_EVENT, "cgi-bin/kf/send_msg_on_event", &body)
            .await
            .map_err(|e| delivery_error(e, explain_welcome))?;
        Ok(Delivered {
            provider_message_id: answered_msgid(&answer, msgid),
            provider_status: "ok".into(),
        })
    }
}

/// A WeCom text: not empty, at most [`MAX_KF_TEXT_BYTES`].
fn check_kf_text(text: &str) -> Result<(), DeliveryError> {
    if text.trim().is_empty() {
        return Err(DeliveryError::Rejected("content.text is empty".into()));
    }
    if text.len() > MAX_KF_TEXT_BYTES {
        return Err(DeliveryError::Rejected(format!(
            "text of {} bytes is over WeCom's limit of {MAX_KF_TEXT_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// The `msgid` WeCom returned, else the one sent.
fn answered_msgid(answer: &Value, sent: String) -> String {
    answer
        .get("msgid")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map_or(sent, str::to_owned)
}

/// The `msgid` of part `part` of a reply (at most 32 bytes of
/// `[0-9a-zA-Z_-]`): the event id (a UUID without its dashes) when it
/// fits, else a SHA-1 of it; after the first part, cut to make room for
/// `_{part}`.
pub fn kf_msgid(event_id: &str, part: usize) -> String {
    let compact: String = event_id.chars().filter(|c| *c != '-').collect();
    let fits = !compact.is_empty()
        && compact.len() <= MAX_MSGID_BYTES
        && compact
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let base = if fits {
        compact
    } else {
        hex::encode(Sha1::digest(event_id.as_bytes()))
    };
    if part == 0 {
        return base.chars().take(MAX_MSGID_BYTES).collect();
    }
    let suffix = format!("_{part}");
    let keep = MAX_MSGID_BYTES.saturating_sub(suffix.len());
    format!("{}{suffix}", &base[..keep.min(base.len())])
}

#[async_trait]
impl OutboundHandler for KfSender {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError> {
        let event_id = event_id(message)?;
        if let Some(code) = message
            .provider_metadata
            .get("welcome_code")
            .map(|code| code.trim())
            .filter(|code| !code.is_empty())
        {
            check_id("welcome_code", code)?;
            return self.welcome(event_id, code, message).await;
        }
        let target = self.target(message)?;
        if let Some(text) = message.content.as_ref().map(|c| &c.text)
            && !text.trim().is_empty()
        {
            check_kf_text(text)?;
        }
        let parts = reply_parts(self.attachments.as_ref(), message, kf_kind).await?;
        let done = self.progress.already_sent(event_id);
        let mut first = None;
        for (i, part) in parts.iter().enumerate().skip(done) {
            let msgid = kf_msgid(event_id, i);
            let sent = match self.body(&target, &msgid, part).await {
                Ok(body) => self
                    .api
                    .post_json(KF_SEND, "cgi-bin/kf/send_msg", &body)
                    .await
                    .map_err(|e| delivery_error(e, explain_kf)),
                Err(error) => Err(error),
            };
            let answer = self.progress.settle(event_id, i, sent)?;
            if i == 0 {
                first = Some(answered_msgid(&answer, msgid));
            }
        }
        self.progress.finish(event_id);
        Ok(Delivered {
            provider_message_id: first.unwrap_or_else(|| kf_msgid(event_id, 0)),
            provider_status: "ok".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use omni_connector::attachments::MemoryAttachmentStore;
    use omni_proto::v1::{Content, ThreadingHints};

    use super::*;
    use crate::api::fake::{APP_ID, CORP_ID, Fake, Reply};

    const EVENT_ID: &str = "0b3f3c3e-8a4c-5f6e-9d2b-1c2d3e4f5a6b";
    const OA_PATH: &str = "/cgi-bin/message/custom/send";
    const KF_PATH: &str = "/cgi-bin/kf/send_msg";

    fn handle(kind: HandleKind, value: &str, scope: &str) -> IdentityHandle {
        IdentityHandle {
            kind: kind as i32,
            value: value.into(),
            scope: scope.into(),
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

    fn oa_reply(text: &str, attachments: Vec<Attachment>) -> ConversationEvent {
        reply(
            handle(HandleKind::WechatOpenid, "oOPENID", APP_ID),
            text,
            attachments,
        )
    }

    fn kf_reply(text: &str) -> ConversationEvent {
        let mut message = reply(
            handle(HandleKind::WecomExternalUser, "wmEXTERNAL", CORP_ID),
            text,
            Vec::new(),
        );
        message.provider_metadata = HashMap::from([("open_kfid".to_owned(), "wkKFID".to_owned())]);
        message
    }

    async fn stored(
        store: &MemoryAttachmentStore,
        name: &str,
        media_type: &str,
        bytes: &'static [u8],
    ) -> Attachment {
        let stored = store.put(Bytes::from_static(bytes)).await.unwrap();
        Attachment {
            name: name.into(),
            media_type: media_type.into(),
            size: stored.size,
            sha256: stored.sha256,
            uri: stored.uri,
        }
    }

    fn oa_sender(fake: &Fake, store: &MemoryAttachmentStore) -> OaSender {
        OaSender::new(fake.oa_client(), APP_ID.into(), Arc::new(store.clone()))
    }

    fn kf_sender(fake: &Fake, store: &MemoryAttachmentStore) -> KfSender {
        KfSender::new(fake.wecom_client(), CORP_ID.into(), Arc::new(store.clone()))
    }

    fn errcode(code: i64) -> Reply {
        Reply::Json(json!({"errcode": code, "errmsg": format!("error {code}")}))
    }

    #[tokio::test]
    async fn oa_text_reply() {
        let fake = Fake::start().await;
        let sender = oa_sender(&fake, &MemoryAttachmentStore::default());
        let delivered = sender.deliver(&oa_reply("你好", Vec::new())).await.unwrap();
        assert_eq!(
            delivered,
            Delivered {
                provider_message_id: format!("custom:{EVENT_ID}"),
                provider_status: "ok".into(),
            }
        );
        let sent = fake.seen(OA_PATH);
        assert_eq!(
            sent[0].json.as_ref().unwrap(),
            &json!({"touser": "oOPENID", "msgtype": "text", "text": {"content": "你好"}})
        );
    }

    #[tokio::test]
    async fn oa_errors_are_mapped() {
        let fake = Fake::start().await;
        let sender = oa_sender(&fake, &MemoryAttachmentStore::default());
        let message = oa_reply("hello", Vec::new());
        fake.script(
            OA_PATH,
            vec![
                errcode(45015),
                errcode(45047),
                errcode(40003),
                Reply::Status(500),
                errcode(-1),
                errcode(45009),
            ],
        );
        match sender.deliver(&message).await.unwrap_err() {
            DeliveryError::Rejected(reason) => {
                assert!(reason.contains("45015"), "{reason}");
                assert!(reason.contains("has not written in 48 hours"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match sender.deliver(&message).await.unwrap_err() {
            DeliveryError::Rejected(reason) => {
                assert!(
                    reason.contains("45047") && reason.contains("too many"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        match sender.deliver(&message).await.unwrap_err() {
            DeliveryError::Rejected(reason) => assert!(reason.contains("openid"), "{reason}"),
            other => panic!("{other:?}"),
        }
        for _ in 0..2 {
            let error = sender.deliver(&message).await.unwrap_err();
            assert!(
                matches!(
                    error,
                    DeliveryError::Temporary {
                        retry_after: None,
                        ..
                    }
                ),
                "{error:?}"
            );
        }
        let error = sender.deliver(&message).await.unwrap_err();
        assert_eq!(error.retry_after(), Some(QUOTA_WAIT));
    }

    #[tokio::test]
    async fn oa_recipients_are_checked() {
        let fake = Fake::start().await;
        let sender = oa_sender(&fake, &MemoryAttachmentStore::default());
        let cases = [
            reply(handle(HandleKind::Email, "a@b.c", ""), "hi", Vec::new()),
            reply(
                handle(HandleKind::WechatOpenid, "o1", "wxffffffffffffffff"),
                "hi",
                Vec::new(),
            ),
            reply(
                handle(HandleKind::WechatOpenid, "o 1", APP_ID),
                "hi",
                Vec::new(),
            ),
            ConversationEvent {
                recipients: Vec::new(),
                ..oa_reply("hi", Vec::new())
            },
            oa_reply(" ", Vec::new()),
            ConversationEvent {
                event_id: String::new(),
                ..oa_reply("hi", Vec::new())
            },
        ];
        for message in cases {
            assert!(
                matches!(
                    sender.deliver(&message).await,
                    Err(DeliveryError::Rejected(_))
                ),
                "{message:?}"
            );
        }
        // A handle without a scope is taken as this account's.
        let unscoped = reply(handle(HandleKind::WechatOpenid, "o1", ""), "hi", Vec::new());
        sender.deliver(&unscoped).await.unwrap();
        assert_eq!(fake.seen(OA_PATH).len(), 1);
    }

    #[tokio::test]
    async fn oa_image_is_uploaded_then_sent_after_the_text() {
        let fake = Fake::start().await;
        let store = MemoryAttachmentStore::default();
        let image = stored(&store, "photo", "image/png", b"\x89PNG\r\n").await;
        let sender = oa_sender(&fake, &store);
        sender
            .deliver(&oa_reply("see this", vec![image]))
            .await
            .unwrap();
        assert_eq!(
            fake.calls(),
            [
                "/cgi-bin/message/custom/send",
                "/cgi-bin/media/upload",
                "/cgi-bin/message/custom/send"
            ]
        );
        let upload = &fake.seen("/cgi-bin/media/upload")[0];
        assert_eq!(upload.query["type"], "image");
        assert_eq!(
            upload.upload.as_ref().unwrap(),
            &(
                "media".to_owned(),
                "photo.png".to_owned(),
                "image/png".to_owned(),
                b"\x89PNG\r\n".to_vec()
            )
        );
        let sent = fake.seen(OA_PATH);
        assert_eq!(
            sent[1].json.as_ref().unwrap(),
            &json!({"touser": "oOPENID", "msgtype": "image", "image": {"media_id": "MEDIA-1"}})
        );
    }

    #[tokio::test]
    async fn oa_video_and_voice_bodies() {
        let fake = Fake::start().await;
        let store = MemoryAttachmentStore::default();
        let video = stored(&store, "clip.mp4", "video/mp4", b"mp4").await;
        let voice = stored(&store, "", "audio/amr", b"#!AMR").await;
        let sender = oa_sender(&fake, &store);
        sender
            .deliver(&oa_reply("", vec![video, voice]))
            .await
            .unwrap();
        let sent = fake.seen(OA_PATH);
        assert_eq!(
            sent[0].json.as_ref().unwrap(),
            &json!({"touser": "oOPENID", "msgtype": "video", "video": {
                "media_id": "MEDIA-1", "title": "clip.mp4", "description": ""}})
        );
        assert_eq!(
            sent[1].json.as_ref().unwrap(),
            &json!({"touser": "oOPENID", "msgtype": "voice", "voice": {"media_id": "MEDIA-2"}})
        );
        let uploads = fake.seen("/cgi-bin/media/upload");
        assert_eq!(uploads[1].query["type"], "voice");
        assert_eq!(uploads[1].upload.as_ref().unwrap().1, "attachment.amr");
    }

    #[tokio::test]
    async fn oa_refuses_files_it_cannot_carry_before_sending_anything() {
        let fake = Fake::start().await;
        let store = MemoryAttachmentStore::default();
        let pdf = stored(&store, "a.pdf", "application/pdf", b"%PDF").await;
        let sender = oa_sender(&fake, &store);
        match sender
            .deliver(&oa_reply("text", vec![pdf]))
            .await
            .unwrap_err()
        {
            DeliveryError::Rejected(reason) => assert!(
                reason.contains("WeChat custom messages cannot carry application/pdf"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn a_retry_sends_only_what_did_not_go_out() {
        let fake = Fake::start().await;
        let store = MemoryAttachmentStore::default();
        let image = stored(&store, "a.jpg", "image/jpeg", b"\xff\xd8").await;
        let sender = oa_sender(&fake, &store);
        let message = oa_reply("text first", vec![image]);
        fake.script(OA_PATH, vec![errcode(0), Reply::Status(503)]);
        let error = sender.deliver(&message).await.unwrap_err();
        assert!(
            matches!(error, DeliveryError::Temporary { .. }),
            "{error:?}"
        );
        sender.deliver(&message).await.unwrap();
        let sent: Vec<_> = fake
            .seen(OA_PATH)
            .into_iter()
            .map(|s| s.json.unwrap()["msgtype"].clone())
            .collect();
        // text, image (503), image again: the text went out once.
        assert_eq!(sent, ["text", "image", "image"]);
        // Done: a new delivery of the same event starts over.
        sender.deliver(&message).await.unwrap();
        assert_eq!(fake.seen(OA_PATH).len(), 5);
    }

    #[tokio::test]
    async fn kf_send_msg_body() {
        let fake = Fake::start().await;
        let sender = kf_sender(&fake, &MemoryAttachmentStore::default());
        let delivered = sender.deliver(&kf_reply("您好")).await.unwrap();
        assert_eq!(
            delivered.provider_message_id,
            "0b3f3c3e8a4c5f6e9d2b1c2d3e4f5a6b"
        );
        assert_eq!(delivered.provider_status, "ok");
        assert_eq!(
            fake.seen(KF_PATH)[0].json.as_ref().unwrap(),
            &json!({
                "touser": "wmEXTERNAL",
                "open_kfid": "wkKFID",
                "msgid": "0b3f3c3e8a4c5f6e9d2b1c2d3e4f5a6b",
                "msgtype": "text",
                "text": {"content": "您好"},
            })
        );
    }

    #[tokio::test]
    async fn kf_files_go_as_their_own_messages() {
        let fake = Fake::start().await;
        let store = MemoryAttachmentStore::default();
        let pdf = stored(&store, "invoice.pdf", "application/pdf", b"%PDF-1.7").await;
        let sender = kf_sender(&fake, &store);
        let mut message = kf_reply("here it is");
        message.content.as_mut().unwrap().attachments.push(pdf);
        sender.deliver(&message).await.unwrap();
        let upload = &fake.seen("/cgi-bin/media/upload")[0];
        assert_eq!(upload.query["type"], "file");
        assert_eq!(upload.upload.as_ref().unwrap().1, "invoice.pdf");
        let sent = fake.seen(KF_PATH);
        assert_eq!(
            sent[1].json.as_ref().unwrap(),
            &json!({
                "touser": "wmEXTERNAL",
                "open_kfid": "wkKFID",
                "msgid": "0b3f3c3e8a4c5f6e9d2b1c2d3e4f5a_1",
                "msgtype": "file",
                "file": {"media_id": "MEDIA-1"},
            })
        );
    }

    #[tokio::test]
    async fn kf_account_comes_from_metadata_then_chat_id_then_default() {
        let fake = Fake::start().await;
        let sender = kf_sender(&fake, &MemoryAttachmentStore::default());
        let mut message = kf_reply("hi");
        message.provider_metadata.clear();
        message.threading = Some(ThreadingHints {
            provider_chat_id: "wkCHAT:wmEXTERNAL".into(),
            ..Default::default()
        });
        sender.deliver(&message).await.unwrap();
        assert_eq!(
            fake.seen(KF_PATH)[0].json.as_ref().unwrap()["open_kfid"],
            "wkCHAT"
        );

        // The chat id alone names the customer too.
        message.recipients.clear();
        sender.deliver(&message).await.unwrap();
        assert_eq!(
            fake.seen(KF_PATH)[1].json.as_ref().unwrap()["touser"],
            "wmEXTERNAL"
        );

        // Another customer than the recipient: refused.
        let mut other = kf_reply("hi");
        other.threading = message.threading.clone();
        other.recipients[0].value = "wmOTHER".into();
        assert!(matches!(
            sender.deliver(&other).await,
            Err(DeliveryError::Rejected(_))
        ));

        // Neither: refused, unless there is a default account.
        let mut bare = kf_reply("hi");
        bare.provider_metadata.clear();
        assert!(matches!(
            sender.deliver(&bare).await,
            Err(DeliveryError::Rejected(_))
        ));
        let sender =
            kf_sender(&fake, &MemoryAttachmentStore::default()).with_default_open_kfid("wkDEFAULT");
        sender.deliver(&bare).await.unwrap();
        assert_eq!(
            fake.seen(KF_PATH)[2].json.as_ref().unwrap()["open_kfid"],
            "wkDEFAULT"
        );

        // A recipient of another corporation: refused.
        let mut foreign = kf_reply("hi");
        foreign.recipients[0].scope = "wwOTHER".into();
        assert!(matches!(
            sender.deliver(&foreign).await,
            Err(DeliveryError::Rejected(_))
        ));
    }

    #[tokio::test]
    async fn kf_errors_are_mapped() {
        let fake = Fake::start().await;
        let sender = kf_sender(&fake, &MemoryAttachmentStore::default());
        fake.script(
            KF_PATH,
            vec![
                errcode(95001),
                errcode(95002),
                errcode(95018),
                errcode(45033),
                Reply::Status(502),
            ],
        );
        for expected in ["95001", "95002", "95018"] {
            match sender.deliver(&kf_reply("hi")).await.unwrap_err() {
                DeliveryError::Rejected(reason) => assert!(reason.contains(expected), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            sender
                .deliver(&kf_reply("hi"))
                .await
                .unwrap_err()
                .retry_after(),
            Some(QUOTA_WAIT)
        );
        assert!(matches!(
            sender.deliver(&kf_reply("hi")).await,
            Err(DeliveryError::Temporary { .. })
        ));
        let long = "字".repeat(700);
        assert!(matches!(
            sender.deliver(&kf_reply(&long)).await,
            Err(DeliveryError::Rejected(_))
        ));
    }

    #[tokio::test]
    async fn kf_welcome_message_uses_send_msg_on_event() {
        let fake = Fake::start().await;
        let sender = kf_sender(&fake, &MemoryAttachmentStore::default());
        let mut message = kf_reply("欢迎咨询");
        message
            .provider_metadata
            .insert("welcome_code".into(), "WELCOME_CODE".into());
        let delivered = sender.deliver(&message).await.unwrap();
        assert_eq!(
            delivered.provider_message_id,
            "0b3f3c3e8a4c5f6e9d2b1c2d3e4f5a6b"
        );
        assert!(fake.seen(KF_PATH).is_empty());
        assert_eq!(
            fake.seen("/cgi-bin/kf/send_msg_on_event")[0]
                .json
                .as_ref()
                .unwrap(),
            &json!({
                "code": "WELCOME_CODE",
                "msgid": "0b3f3c3e8a4c5f6e9d2b1c2d3e4f5a6b",
                "msgtype": "text",
                "text": {"content": "欢迎咨询"},
            })
        );
        fake.script("/cgi-bin/kf/send_msg_on_event", vec![errcode(95017)]);
        match sender.deliver(&message).await.unwrap_err() {
            DeliveryError::Rejected(reason) => {
                assert!(reason.contains("welcome code"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn msgids_fit_wecom() {
        assert_eq!(kf_msgid(EVENT_ID, 0), "0b3f3c3e8a4c5f6e9d2b1c2d3e4f5a6b");
        assert_eq!(kf_msgid(EVENT_ID, 12), "0b3f3c3e8a4c5f6e9d2b1c2d3e4f5_12");
        let long = kf_msgid(&"x".repeat(100), 0);
        assert_eq!(long.len(), 32);
        assert_eq!(long, kf_msgid(&"x".repeat(100), 0));
        for id in [
            kf_msgid("a/b c", 3),
            kf_msgid("short", 1),
            kf_msgid(&"é".repeat(40), 999),
        ] {
            assert!(id.len() <= MAX_MSGID_BYTES, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{id}"
            );
        }
        assert_eq!(kf_msgid("short", 1), "short_1");
    }

    #[test]
    fn file_kinds() {
        assert_eq!(oa_kind(0, "image/jpeg", 10).unwrap(), "image");
        assert_eq!(oa_kind(0, "audio/mpeg", 10).unwrap(), "voice");
        assert!(oa_kind(0, "audio/ogg", 10).is_err());
        assert!(oa_kind(0, "image/png", 11 * 1024 * 1024).is_err());
        assert_eq!(kf_kind(0, "image/png", 10).unwrap(), "image");
        assert_eq!(kf_kind(0, "image/png", 11 * 1024 * 1024).unwrap(), "file");
        assert_eq!(kf_kind(0, "image/gif", 10).unwrap(), "file");
        assert_eq!(kf_kind(0, "audio/amr", 10).unwrap(), "voice");
        assert_eq!(kf_kind(0, "video/mp4", 10).unwrap(), "video");
        assert!(kf_kind(0, "application/zip", 21 * 1024 * 1024).is_err());
    }
}
