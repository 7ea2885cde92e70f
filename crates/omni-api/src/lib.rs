//! The generic API channel (`kind = "api"`): any system that can sign a
//! JSON request can post customer messages to Omnid. It is the reference
//! connector: verify, parse, normalize, append, and answer 2xx only once
//! the event is durable.
//!
//! Signing scheme (documented for senders in the README):
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

use omni_connector::{
    ChannelContext, ConfigError, Connector, ConnectorFactory, WebhookConnector, parse_settings,
};

pub use config::ApiChannelConfig;
pub use handler::ApiWebhook;

/// The `kind` of API channels in channel files.
pub const KIND: &str = "api";

/// Registers the API channel with the daemon's factory registry.
#[derive(Debug, Default)]
pub struct ApiFactory;

impl ConnectorFactory for ApiFactory {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn build(
        &self,
        context: ChannelContext,
        settings: toml::Table,
    ) -> Result<Arc<dyn Connector>, ConfigError> {
        let config: ApiChannelConfig = parse_settings(settings)?;
        let webhook = ApiWebhook::new(context, config)?;
        // A webhook, nothing to pull, nothing to send.
        Ok(Arc::new(WebhookConnector {
            webhook: Arc::new(webhook),
            outbound: None,
        }))
    }
}
