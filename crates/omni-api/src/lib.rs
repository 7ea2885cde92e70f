//! The generic API channel (`kind = "api"`): any system that can sign a
//! JSON request can post customer messages to Omnid. It is the reference
//! connector: verify, parse, normalize, append, and answer 2xx only once
//! the event is durable.
//!
//! Signing scheme (documented for senders in `docs/channels/api.md`):
//! `X-Omnid-Timestamp: <unix seconds>` and
//! `X-Omnid-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`.
//! The timestamp is inside the signed material so a captured request cannot
//! be replayed outside the configured window; inside it, a replay carries
//! the same external id and so the same event id, which the threading
//! service drops.

mod config;
mod handler;
pub mod message;
pub mod signature;

use std::sync::Arc;

use omni_connector::{ChannelConfig, ChannelContext, ConfigError, Connector, WebhookConnector};
use omni_proto::v1::ChannelKind;

pub use config::ApiChannelConfig;
pub use handler::{ApiChannel, ApiWebhook};

/// The `kind` of API channels in channel files.
pub const KIND: &str = "api";

impl ChannelConfig for ApiChannelConfig {
    const KIND: &'static str = KIND;
    const CHANNEL_KIND: ChannelKind = ChannelKind::Api;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        let webhook = ApiChannel::webhook(&context, self)?;
        // A webhook, nothing to pull, nothing to send.
        Ok(Arc::new(WebhookConnector::new(Arc::new(webhook))))
    }
}
