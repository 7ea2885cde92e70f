//! Replies: `sendMessage` within Telegram's rate limits (about 30 messages
//! a second per bot, one a second per chat), honouring a 429's
//! `retry_after`.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use async_trait::async_trait;
use omni_connector::{Delivered, DeliveryError, OutboundHandler};
use omni_proto::v1::{ConversationEvent, HandleKind};
use teloxide_core::{
    ApiError, RequestError,
    payloads::SendMessageSetters,
    prelude::Requester,
    requests::Request,
    types::{ChatId, MessageId, ReplyParameters},
};
use tokio::time::Instant;

use crate::{api::BotApi, normalize::provider_message_id};

/// Telegram's limit on one text message, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;

/// How many 429s one delivery waits out before handing back.
const MAX_RETRIES: u32 = 3;

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
    pub(crate) max_retry_wait: Duration,
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

/// Whether an API error may pass on a retry.
fn is_temporary(error: &ApiError) -> bool {
    match error {
        // The operator's fix, not the customer's fault.
        ApiError::InvalidToken => true,
        ApiError::Unknown(text) => {
            let text = text.to_ascii_lowercase();
            [
                "internal server error",
                "bad gateway",
                "gateway timeout",
                "service unavailable",
                "too many requests",
            ]
            .iter()
            .any(|t| text.contains(t))
        }
        _ => false,
    }
}

#[async_trait]
impl OutboundHandler for TelegramSender {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError> {
        let chat = target_chat(message)?;
        let content = message.content.clone().unwrap_or_default();
        if !content.attachments.is_empty() {
            return Err(DeliveryError::Rejected(
                "attachments are not sent on telegram yet".into(),
            ));
        }
        let text = content.text;
        if text.trim().is_empty() {
            return Err(DeliveryError::Rejected("content.text is empty".into()));
        }
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(DeliveryError::Rejected(format!(
                "text of {chars} characters is over telegram's limit of {MAX_TEXT_CHARS}"
            )));
        }
        let reply_to = message
            .threading
            .as_ref()
            .and_then(|t| reply_message_id(&t.reply_to_provider_message_id, chat));

        let mut attempt = 0;
        loop {
            attempt += 1;
            tokio::time::sleep_until(self.limiter.reserve(chat)).await;
            let mut request = self.api.bot.send_message(ChatId(chat), text.clone());
            if let Some(id) = reply_to {
                request = request.reply_parameters(
                    ReplyParameters::new(MessageId(id)).allow_sending_without_reply(),
                );
            }
            let result = tokio::time::timeout(self.api.request_timeout, request.send()).await;
            let error = match result {
                Err(_) => return Err(DeliveryError::Temporary("sendMessage timed out".into())),
                Ok(Ok(sent)) => {
                    return Ok(Delivered {
                        provider_message_id: provider_message_id(sent.chat.id.0, sent.id.0),
                        provider_status: "ok".into(),
                    });
                }
                Ok(Err(error)) => error,
            };
            match error {
                RequestError::RetryAfter(after) => {
                    let wait = after.duration();
                    self.limiter.hold(chat, Instant::now() + wait);
                    if wait > self.max_retry_wait || attempt > MAX_RETRIES {
                        return Err(DeliveryError::Temporary(format!(
                            "429 too many requests: retry after {} s",
                            after.seconds()
                        )));
                    }
                    tracing::debug!(
                        chat,
                        retry_after_secs = after.seconds(),
                        "telegram asked to slow down"
                    );
                }
                RequestError::Api(error) if is_temporary(&error) => {
                    return Err(DeliveryError::Temporary(error.to_string()));
                }
                RequestError::Api(error) => return Err(DeliveryError::Rejected(error.to_string())),
                RequestError::MigrateToChatId(to) => {
                    return Err(DeliveryError::Rejected(format!(
                        "the group became supergroup {to}; reply there"
                    )));
                }
                other => return Err(DeliveryError::Temporary(other.to_string())),
            }
        }
    }
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
