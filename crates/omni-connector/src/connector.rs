//! The connector contract and its typed factory, after Quickwit's source
//! factories: the daemon keeps an explicit registry of factories by kind,
//! and each factory deserializes its own typed config. A channel crate
//! implements [`ChannelConfig`] for its settings struct; one blanket
//! factory ([`factory`]) does the rest, so registering a channel is one
//! line in the daemon.

use std::{marker::PhantomData, sync::Arc};

use async_trait::async_trait;
use omni_proto::v1::ChannelKind;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::{
    attachments::{AttachmentStore, MemoryAttachmentStore},
    config::{ConfigError, parse_settings},
    media::{MediaFetcher, MediaQueue, MemoryMediaQueue},
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
    /// What the channel's events and dead letters carry as `channel_kind`
    /// (set by the typed factory from [`ChannelConfig::CHANNEL_KIND`]).
    pub channel_kind: ChannelKind,
    /// Where its events go.
    pub sender: EventSender,
    /// The daemon's public base URL (scheme, host, optional path prefix),
    /// if configured; providers that sign the URL need it.
    pub public_base_url: Option<String>,
    /// Durable checkpoints and seen ids, for pull channels.
    pub state: ChannelState,
    /// Where attachment bytes go.
    pub attachments: Arc<dyn AttachmentStore>,
    /// Where a message's files wait to be downloaded once the message is
    /// durable.
    pub media: Arc<dyn MediaQueue>,
}

impl ChannelContext {
    /// A context whose state and attachments live in memory: what tests and
    /// `omnid check-config` need. The daemon replaces both with durable
    /// stores before building channels that ingest.
    pub fn new(channel_id: &str, sender: EventSender) -> Self {
        Self {
            channel_id: channel_id.to_owned(),
            channel_kind: ChannelKind::Unspecified,
            sender,
            public_base_url: None,
            state: ChannelState::memory(channel_id),
            attachments: Arc::new(MemoryAttachmentStore::default()),
            media: Arc::new(MemoryMediaQueue::default()),
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

    /// The downloader of the files this channel's messages refer to, for
    /// channels whose media is fetched after the message is durable.
    fn media(&self) -> Option<Arc<dyn MediaFetcher>> {
        None
    }

    /// Endpoints of the channel's own, served by the daemon under
    /// `/channels/{channel_id}/` with the path below that: a web chat's
    /// WebSocket, its widget script, a visitor's history. Plain axum
    /// handlers, since such a channel is an HTTP application of its own
    /// rather than a provider's callback. Called once, when the channel is
    /// built; the daemon's connection limits, header timeouts and request
    /// timeout apply, and WebSocket upgrades are handed over.
    fn routes(&self) -> Option<axum::Router> {
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
    pub media: Option<Arc<dyn MediaFetcher>>,
}

impl WebhookConnector {
    /// A push channel with only a webhook.
    pub fn new(webhook: Arc<dyn WebhookHandler>) -> Self {
        Self {
            webhook,
            outbound: None,
            media: None,
        }
    }

    /// Adds the sender of replies.
    pub fn with_outbound(mut self, outbound: Option<Arc<dyn OutboundHandler>>) -> Self {
        self.outbound = outbound;
        self
    }

    /// Adds the downloader of deferred media.
    pub fn with_media(mut self, media: Option<Arc<dyn MediaFetcher>>) -> Self {
        self.media = media;
        self
    }
}

impl Connector for WebhookConnector {
    fn webhook(&self) -> Option<Arc<dyn WebhookHandler>> {
        Some(self.webhook.clone())
    }

    fn outbound(&self) -> Option<Arc<dyn OutboundHandler>> {
        self.outbound.clone()
    }

    fn media(&self) -> Option<Arc<dyn MediaFetcher>> {
        self.media.clone()
    }
}

/// A channel kind's typed settings: the one thing a channel crate
/// implements to be registered. The struct is the file's schema (serde,
/// `deny_unknown_fields`, a doc comment on every field), so the kind's
/// name, its stream kind and its keys are declared in one place.
pub trait ChannelConfig: DeserializeOwned + Send + 'static {
    /// The `kind` value in channel files.
    const KIND: &'static str;
    /// What this kind's events and dead letters carry as `channel_kind`.
    const CHANNEL_KIND: ChannelKind;

    /// Validates what serde cannot (secrets, ranges, combinations), naming
    /// the key of each error, and builds the channel. `context` already
    /// carries [`Self::CHANNEL_KIND`].
    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError>;
}

/// Builds connectors of one kind from their settings. Implemented once, by
/// [`TypedFactory`], for every [`ChannelConfig`].
pub trait ConnectorFactory: Send + Sync + 'static {
    /// The `kind` value in channel files.
    fn kind(&self) -> &'static str;

    /// What this kind's events carry as `channel_kind` on the stream.
    fn channel_kind(&self) -> ChannelKind;

    /// Validates `settings` (the channel file minus `id` and `kind`),
    /// resolves secrets, and builds the connector. Called by
    /// `omnid check-config` too, so every error must name its key.
    fn build(
        &self,
        context: ChannelContext,
        settings: toml::Table,
    ) -> Result<Arc<dyn Connector>, ConfigError>;
}

/// The factory of a [`ChannelConfig`]: parses the settings once into the
/// typed config, then builds.
pub struct TypedFactory<C>(PhantomData<fn() -> C>);

impl<C> std::fmt::Debug for TypedFactory<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TypedFactory")
            .field(&std::any::type_name::<C>())
            .finish()
    }
}

impl<C: ChannelConfig> ConnectorFactory for TypedFactory<C> {
    fn kind(&self) -> &'static str {
        C::KIND
    }

    fn channel_kind(&self) -> ChannelKind {
        C::CHANNEL_KIND
    }

    fn build(
        &self,
        mut context: ChannelContext,
        settings: toml::Table,
    ) -> Result<Arc<dyn Connector>, ConfigError> {
        context.channel_kind = C::CHANNEL_KIND;
        parse_settings::<C>(settings)?.build(context)
    }
}

/// The registry entry of a channel kind: `factory::<TwilioConfig>()`.
pub fn factory<C: ChannelConfig>() -> Box<dyn ConnectorFactory> {
    Box::new(TypedFactory::<C>(PhantomData))
}
