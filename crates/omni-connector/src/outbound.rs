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
    /// 429): the daemon retries with backoff and does not move on.
    #[error("temporarily failed: {0}")]
    Temporary(String),
}

/// Sends outbound messages for one channel.
#[async_trait]
pub trait OutboundHandler: Send + Sync + std::fmt::Debug + 'static {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError>;
}
