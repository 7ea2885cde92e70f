//! Outbound delivery: replies and auto-acknowledgements go back out through
//! the channel that owns the conversation.
//!
//! An outbound message is a [`ConversationEvent`] with direction
//! `DIRECTION_OUTBOUND`, read by the daemon from `omni.outbound.v1` and
//! handed to the channel's [`OutboundHandler`]. The daemon appends the
//! outcome as a delivery-status event and only then commits its position on
//! the outbound topic, so a crash between the two delivers again (at least
//! once) rather than never. Handlers derive every provider-visible id from
//! the outbound event id, so a repeat is recognisable downstream.

use std::time::Duration;

use async_trait::async_trait;
use omni_proto::v1::ConversationEvent;

/// The provider accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The provider's id for the sent message (an email Message-ID without
    /// angle brackets, a Telegram `chat_id:message_id`, a gateway's sid).
    pub provider_message_id: String,
    /// The provider's own word for the outcome (an SMTP reply line, an API
    /// status), for people reading the delivery status.
    pub provider_status: String,
}

/// Why a message was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Will never succeed as sent (bad recipient, permanent SMTP 5xx,
    /// content the channel cannot carry): reported as a failed delivery.
    #[error("rejected: {0}")]
    Rejected(String),
    /// May succeed later (connection refused, SMTP 4xx, provider 5xx or
    /// 429): the daemon retries this channel's queue with backoff, waiting
    /// at least `retry_after` when the provider said how long (a 429's
    /// Retry-After, Telegram's `retry_after`), so a throttled channel is
    /// not hammered and other channels' replies keep flowing.
    #[error("temporarily failed: {reason}")]
    Temporary {
        reason: String,
        retry_after: Option<Duration>,
    },
}

impl DeliveryError {
    /// A temporary failure without the provider's word on when to retry.
    pub fn temporary(reason: impl Into<String>) -> Self {
        Self::Temporary {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A temporary failure the provider said to retry after `wait`.
    pub fn throttled(reason: impl Into<String>, wait: Duration) -> Self {
        Self::Temporary {
            reason: reason.into(),
            retry_after: Some(wait),
        }
    }

    /// How long the provider asked to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Temporary { retry_after, .. } => *retry_after,
            Self::Rejected(_) => None,
        }
    }
}

/// The wait a `Retry-After` header value asks for: delta-seconds only
/// (providers' APIs send those; an HTTP date is ignored rather than
/// trusted against this machine's clock), capped at an hour so a hostile
/// or broken answer cannot park a channel for days.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(3600)))
}

/// Sends outbound messages for one channel.
#[async_trait]
pub trait OutboundHandler: Send + Sync + std::fmt::Debug + 'static {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError>;
}
