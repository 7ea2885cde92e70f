//! The connector contract and its factory, after Quickwit's source
//! factories: the daemon keeps an explicit registry of factories by kind,
//! and each factory deserializes its own typed config.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::{
    attachments::{AttachmentStore, MemoryAttachmentStore},
    config::ConfigError,
    outbound::OutboundHandler,
    sender::EventSender,
    state::ChannelState,
    webhook::WebhookHandler,
};

/// What the daemon gives a channel when building it.
#[derive(Debug, Clone)]
pub struct ChannelContext {
    /// The channel's unique id from its file.
    pub channel_id: String,
    /// Where its events go.
    pub sender: EventSender,
    /// The daemon's public base URL (scheme, host, optional path prefix),
    /// if configured; providers that sign the URL need it.
    pub public_base_url: Option<String>,
    /// Durable checkpoints and seen ids, for pull channels.
    pub state: ChannelState,
    /// Where attachment bytes go.
    pub attachments: Arc<dyn AttachmentStore>,
}

impl ChannelContext {
    /// A context whose state and attachments live in memory: what tests and
    /// `omnid check-config` need. The daemon replaces both with durable
    /// stores before building channels that ingest.
    pub fn new(channel_id: &str, sender: EventSender) -> Self {
        Self {
            channel_id: channel_id.to_owned(),
            sender,
            public_base_url: None,
            state: ChannelState::memory(channel_id),
            attachments: Arc::new(MemoryAttachmentStore::default()),
        }
    }

    /// The public URL of this channel's webhook, if the base is known.
    pub fn webhook_url(&self) -> Option<String> {
        self.public_base_url.as_ref().map(|base| {
            format!(
                "{}/webhooks/{}",
                base.trim_end_matches('/'),
                self.channel_id
            )
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("channel {channel}: {message}")]
pub struct ConnectorError {
    pub channel: String,
    pub message: String,
}

/// One configured channel instance.
#[async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug + 'static {
    /// The handler of `POST /webhooks/{channel_id}`, for push channels.
    fn webhook(&self) -> Option<Arc<dyn WebhookHandler>> {
        None
    }

    /// The sender of replies, for channels that can send.
    fn outbound(&self) -> Option<Arc<dyn OutboundHandler>> {
        None
    }

    /// The pulling loop (IMAP, long polling), for pull channels. Runs until
    /// `shutdown` is cancelled, then returns after its in-flight events are
    /// acknowledged or abandoned unacknowledged (so they are pulled again).
    async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ConnectorError> {
        shutdown.cancelled().await;
        Ok(())
    }
}

/// A push channel: a webhook in and, optionally, replies out; nothing to
/// pull. Most channel kinds are exactly this.
#[derive(Debug)]
pub struct WebhookConnector {
    pub webhook: Arc<dyn WebhookHandler>,
    pub outbound: Option<Arc<dyn OutboundHandler>>,
}

impl Connector for WebhookConnector {
    fn webhook(&self) -> Option<Arc<dyn WebhookHandler>> {
        Some(self.webhook.clone())
    }

    fn outbound(&self) -> Option<Arc<dyn OutboundHandler>> {
        self.outbound.clone()
    }
}

/// Builds connectors of one kind from their settings.
pub trait ConnectorFactory: Send + Sync + 'static {
    /// The `kind` value in channel files.
    fn kind(&self) -> &'static str;

    /// Validates `settings` (the channel file minus `id` and `kind`),
    /// resolves secrets, and builds the connector. Called by
    /// `omnid check-config` too, so every error must name its key.
    fn build(
        &self,
        context: ChannelContext,
        settings: toml::Table,
    ) -> Result<Arc<dyn Connector>, ConfigError>;
}
