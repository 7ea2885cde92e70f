//! Replies: `sendMessage`, and `sendDocument` / `sendPhoto` for
//! attachments, within Telegram's rate limits (about 30 messages a second
//! per bot, one a second per chat). A 429 is handed back to the daemon's
//! dispatcher with its `retry_after` ([`DeliveryError::throttled`]), which
//! waits that long before retrying this channel; the chat is also held
//! here until then.
//!
//! A reply with attachments is sent as one message per file. With exactly
//! one file and a text of at most [`MAX_CAPTION_CHARS`], the text is that
//! file's caption; otherwise the text (if any) goes first with
//! `sendMessage`, then the files in order. The first message sent answers
//! the customer's message and is the delivery's provider message id.
//!
//! Attachments are read from the attachment store only
//! (`omni-att://sha256/<hex>`; any other URI is rejected, as replies never
//! make the daemon fetch an arbitrary URL) and every file is loaded and
//! checked against its SHA-256 before anything is sent. A missing or
//! corrupt file, a reply over [`MAX_UPLOAD_BYTES`], or a name or media type
//! with a line break is rejected; a store I/O error is temporary. A failure
//! after some messages went out fails the delivery, and a retry sends them
//! again (at least once, as every reply).

use std::{collections::HashMap, sync::Arc, sync::Mutex, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use omni_connector::{
    AttachmentStore, Delivered, DeliveryError, OutboundHandler,
    attachments::{load_outbound, outbound_file_name},
};
use omni_proto::v1::{Attachment, ConversationEvent, HandleKind};
use teloxide_core::{
    RequestError,
    payloads::{SendDocumentSetters, SendMessageSetters, SendPhotoSetters},
    prelude::Requester,
    requests::{Payload, Request},
    types::{ChatId, InputFile, Message, MessageId, ReplyParameters},
};
use tokio::time::Instant;

use crate::{
    api::{BotApi, is_temporary},
    normalize::provider_message_id,
};

/// Telegram's limit on one text message, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;

/// Telegram's limit on a media caption, in characters.
pub const MAX_CAPTION_CHARS: usize = 1024;

/// Most bytes one reply's attachments may total: the Bot API's upload limit
/// for one file (50 MB), applied to the whole reply so its files, held in
/// memory while they are sent, stay bounded.
pub const MAX_UPLOAD_BYTES: u64 = 50_000_000;

/// Largest image sent with `sendPhoto` (the Bot API's limit); larger ones,
/// and other types, go as documents.
pub const MAX_PHOTO_BYTES: usize = 10_000_000;

/// Spaces sends out: globally and per chat.
#[derive(Debug)]
pub struct RateLimiter {
    global_interval: Duration,
    per_chat_interval: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    next_global: Instant,
    next_per_chat: HashMap<i64, Instant>,
}

impl RateLimiter {
    pub fn new(global_per_sec: u32, per_chat_interval: Duration) -> Self {
        Self {
            global_interval: Duration::from_secs(1) / global_per_sec.max(1),
            per_chat_interval,
            state: Mutex::new(LimiterState {
                next_global: Instant::now(),
                next_per_chat: HashMap::new(),
            }),
        }
    }

    /// Reserves the next slot for `chat` and returns when it starts.
    pub fn reserve(&self, chat: i64) -> Instant {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if state.next_per_chat.len() > 10_000 {
            state.next_per_chat.retain(|_, next| *next > now);
        }
        let chat_next = state.next_per_chat.get(&chat).copied().unwrap_or(now);
        // The global slot is taken now, so one slow chat does not hold
        // back the others.
        let global_slot = state.next_global.max(now);
        state.next_global = global_slot + self.global_interval;
        let at = chat_next.max(global_slot);
        state
            .next_per_chat
            .insert(chat, at + self.per_chat_interval);
        at
    }

    /// Telegram asked to wait: nothing goes to `chat` before `until`.
    pub fn hold(&self, chat: i64, until: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let next = state.next_per_chat.entry(chat).or_insert(until);
        *next = (*next).max(until);
    }
}

/// Sends replies for one Telegram channel.
#[derive(Debug)]
pub struct TelegramSender {
    pub(crate) api: BotApi,
    pub(crate) limiter: RateLimiter,
    /// Where reply attachments are read from.
    pub(crate) attachments: Arc<dyn AttachmentStore>,
}

/// One attachment, loaded and checked.
#[derive(Debug, Clone)]
struct File {
    name: String,
    as_photo: bool,
    content: Bytes,
}

/// Where a reply goes: the conversation's chat, else the customer's
/// private chat (a user id is also their private chat's id).
fn target_chat(message: &ConversationEvent) -> Result<i64, DeliveryError> {
    let from_threading = message
        .threading
        .as_ref()
        .map(|t| t.provider_chat_id.trim())
        .filter(|id| !id.is_empty());
    let raw = match from_threading {
        Some(id) => id.to_owned(),
        None => message
            .recipients
            .iter()
            .find(|h| h.kind == HandleKind::TelegramUser as i32)
            .map(|h| h.value.clone())
            .ok_or_else(|| {
                DeliveryError::Rejected(
                    "no chat: set threading.provider_chat_id or a telegram recipient".into(),
                )
            })?,
    };
    raw.parse()
        .map_err(|_| DeliveryError::Rejected(format!("chat id `{raw}` is not a number")))
}

/// The message id inside `chat` of a `chat_id:message_id` reference.
fn reply_message_id(reference: &str, chat: i64) -> Option<i32> {
    let (chat_part, id) = reference.rsplit_once(':')?;
    if chat_part.parse::<i64>().ok()? != chat {
        return None;
    }
    id.parse().ok()
}

#[async_trait]
impl OutboundHandler for TelegramSender {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError> {
        let chat = target_chat(message)?;
        let content = message.content.clone().unwrap_or_default();
        let text = content.text;
        if text.trim().is_empty() && content.attachments.is_empty() {
            return Err(DeliveryError::Rejected("content.text is empty".into()));
        }
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(DeliveryError::Rejected(format!(
                "text of {chars} characters is over telegram's limit of {MAX_TEXT_CHARS}"
            )));
        }
        let files = load_files(self.attachments.as_ref(), &content.attachments).await?;
        let mut reply_to = message
            .threading
            .as_ref()
            .and_then(|t| reply_message_id(&t.reply_to_provider_message_id, chat))
            .map(|id| ReplyParameters::new(MessageId(id)).allow_sending_without_reply());

        let caption = (files.len() == 1 && !text.trim().is_empty() && chars <= MAX_CAPTION_CHARS)
            .then(|| text.clone());
        let mut first: Option<Message> = None;
        if caption.is_none() && !text.trim().is_empty() {
            let mut request = self.api.bot.send_message(ChatId(chat), text.clone());
            if let Some(reply) = reply_to.take() {
                request = request.reply_parameters(reply);
            }
            first = Some(self.send(chat, "sendMessage", request).await?);
        }
        for file in files {
            let input = InputFile::memory(file.content).file_name(file.name);
            let sent = if file.as_photo {
                let mut request = self.api.bot.send_photo(ChatId(chat), input);
                if let Some(caption) = &caption {
                    request = request.caption(caption.clone());
                }
                if let Some(reply) = reply_to.take() {
                    request = request.reply_parameters(reply);
                }
                self.send(chat, "sendPhoto", request).await?
            } else {
                let mut request = self.api.bot.send_document(ChatId(chat), input);
                if let Some(caption) = &caption {
                    request = request.caption(caption.clone());
                }
                if let Some(reply) = reply_to.take() {
                    request = request.reply_parameters(reply);
                }
                self.send(chat, "sendDocument", request).await?
            };
            first.get_or_insert(sent);
        }
        let first = first.expect("a text or at least one file was sent");
        Ok(Delivered {
            provider_message_id: provider_message_id(first.chat.id.0, first.id.0),
            provider_status: "ok".into(),
        })
    }
}

impl TelegramSender {
    /// Sends `request` to `chat` in its rate-limit slot.
    async fn send<R>(
        &self,
        chat: i64,
        method: &'static str,
        request: R,
    ) -> Result<Message, DeliveryError>
    where
        R: Request<Err = RequestError> + Send + Sync,
        R::Payload: Payload<Output = Message>,
    {
        tokio::time::sleep_until(self.limiter.reserve(chat)).await;
        let error = match tokio::time::timeout(self.api.request_timeout, request.send()).await {
            Err(_) => return Err(DeliveryError::temporary(format!("{method} timed out"))),
            Ok(Ok(sent)) => return Ok(sent),
            Ok(Err(error)) => error,
        };
        Err(match error {
            RequestError::RetryAfter(after) => {
                let wait = after.duration();
                self.limiter.hold(chat, Instant::now() + wait);
                DeliveryError::throttled(
                    format!(
                        "{method}: 429 too many requests, retry after {} s",
                        after.seconds()
                    ),
                    wait,
                )
            }
            RequestError::Api(error) if is_temporary(&error) => {
                DeliveryError::temporary(error.to_string())
            }
            RequestError::Api(error) => DeliveryError::Rejected(error.to_string()),
            RequestError::MigrateToChatId(to) => {
                DeliveryError::Rejected(format!("the group became supergroup {to}; reply there"))
            }
            other => DeliveryError::temporary(other.to_string()),
        })
    }
}

/// Loads and checks every attachment before anything is sent (see
/// [`omni_connector::attachments::load_outbound`]); images Telegram shows
/// inline go as photos.
async fn load_files(
    store: &dyn AttachmentStore,
    attachments: &[Attachment],
) -> Result<Vec<File>, DeliveryError> {
    let mut checked = Vec::with_capacity(attachments.len());
    for (i, attachment) in attachments.iter().enumerate() {
        let name = outbound_file_name(i, &attachment.name)?;
        let media_type = attachment.media_type.trim();
        if media_type.chars().any(char::is_control) {
            return Err(DeliveryError::Rejected(format!(
                "attachments[{i}].media_type contains a line break or control character"
            )));
        }
        let photo_type = matches!(
            media_type.to_ascii_lowercase().as_str(),
            "image/jpeg" | "image/png" | "image/webp"
        );
        checked.push((name, photo_type));
    }
    let contents = load_outbound(
        store,
        attachments,
        MAX_UPLOAD_BYTES,
        "telegram's upload limit",
    )
    .await?;
    Ok(checked
        .into_iter()
        .zip(contents)
        .map(|((name, photo_type), content)| File {
            as_photo: photo_type && content.len() < MAX_PHOTO_BYTES,
            name,
            content,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_references_must_be_in_the_chat() {
        assert_eq!(reply_message_id("123:45", 123), Some(45));
        assert_eq!(reply_message_id("-100123:45", -100123), Some(45));
        assert_eq!(reply_message_id("999:45", 123), None);
        assert_eq!(reply_message_id("", 123), None);
    }

    #[tokio::test]
    async fn limiter_spaces_one_chat_but_not_others() {
        let limiter = RateLimiter::new(1000, Duration::from_millis(500));
        let a1 = limiter.reserve(1);
        let a2 = limiter.reserve(1);
        let b1 = limiter.reserve(2);
        assert!(a2 - a1 >= Duration::from_millis(500));
        assert!(b1 - a1 < Duration::from_millis(100));
    }
}
