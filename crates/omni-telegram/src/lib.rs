//! The Telegram channel (`kind = "telegram"`): a bot's updates in, by
//! webhook or long polling, and replies out with `sendMessage`.
//!
//! Both modes share one normalization (pure, in [`normalize`]) and one
//! rule: Telegram learns that an update was taken (a webhook's 2xx, a
//! confirmed `getUpdates` offset) only once its event is durable in the
//! log. Event ids come from `chat_id:message_id` (plus the edit date for
//! edits), so an update delivered twice yields the same event id. A
//! message's files never hold it up: it is appended with each file named
//! by its `file_id`, and the daemon's media worker downloads them after,
//! through this channel's [`TelegramFetcher`].

pub mod api;
pub mod config;
pub mod events;
pub mod normalize;
pub mod outbound;
pub mod polling;
pub mod webhook;

use std::{sync::Arc, time::Duration};

use omni_connector::{
    ChannelConfig, ChannelContext, ConfigError, Connector, ConnectorError, MediaFetcher,
    OutboundHandler, WebhookDriver, WebhookHandler,
};
use omni_proto::v1::ChannelKind;
use teloxide_core::{payloads::SetWebhookSetters, prelude::Requester, requests::Request};
use tokio_util::sync::CancellationToken;

pub use api::TelegramFetcher;
pub use config::{Mode, TelegramChannelConfig};
pub use outbound::TelegramSender;
pub use webhook::TelegramWebhook;

use crate::{
    api::BotApi, config::valid_secret_token, events::TelegramMetrics, outbound::RateLimiter,
    polling::Poller,
};

/// The `kind` of Telegram channels in channel files.
pub const KIND: &str = "telegram";

impl ChannelConfig for TelegramChannelConfig {
    const KIND: &'static str = KIND;
    const CHANNEL_KIND: ChannelKind = ChannelKind::Telegram;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        Ok(Arc::new(TelegramConnector::new(context, &self)?))
    }
}

/// One Telegram bot.
#[derive(Debug)]
pub struct TelegramConnector {
    webhook: Option<Arc<WebhookDriver<TelegramWebhook>>>,
    poller: Option<Poller>,
    /// Webhook mode with `set_webhook`: what to register at start.
    register: Option<WebhookRegistration>,
    outbound: Arc<TelegramSender>,
    media: Arc<TelegramFetcher>,
}

#[derive(Debug, Clone)]
struct WebhookRegistration {
    api: BotApi,
    url: String,
    secret: Option<String>,
    allowed_updates: Vec<teloxide_core::types::AllowedUpdate>,
    channel_id: String,
}

impl TelegramConnector {
    pub fn new(
        context: ChannelContext,
        config: &TelegramChannelConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let api = BotApi::new(config)?;
        let metrics = TelegramMetrics::register(&context.channel_id);
        let outbound = Arc::new(TelegramSender {
            api: api.clone(),
            limiter: RateLimiter::new(
                config.global_rate_per_sec,
                Duration::from_millis(config.per_chat_interval_ms),
            ),
            attachments: context.attachments.clone(),
        });
        let media = Arc::new(TelegramFetcher {
            api: api.clone(),
            metrics: metrics.clone(),
        });
        let (mut webhook, mut poller, mut register) = (None, None, None);
        match config.mode {
            Mode::Webhook => {
                let secret = if config.verify_secret_token {
                    let reference = config.secret_token.as_ref().ok_or_else(|| {
                        ConfigError::new(
                            "secret_token",
                            "required in webhook mode unless verify_secret_token = false",
                        )
                    })?;
                    let secret = reference
                        .resolve()
                        .map_err(|e| ConfigError::new("secret_token", e))?;
                    if !valid_secret_token(secret.expose()) {
                        return Err(ConfigError::new(
                            "secret_token",
                            "telegram accepts 1-256 characters of A-Z, a-z, 0-9, _ and -",
                        ));
                    }
                    Some(secret)
                } else {
                    // The webhook driver warns at every load while it is off.
                    None
                };
                if config.set_webhook {
                    let url = context.webhook_url().ok_or_else(|| {
                        ConfigError::new(
                            "set_webhook",
                            "needs http.public_base_url (the URL telegram reaches the daemon at)",
                        )
                    })?;
                    register = Some(WebhookRegistration {
                        api: api.clone(),
                        url,
                        secret: secret
                            .as_ref()
                            .map(|s| String::from_utf8_lossy(s.expose()).into_owned()),
                        allowed_updates: config.allowed_updates.clone(),
                        channel_id: context.channel_id.clone(),
                    });
                }
                webhook = Some(Arc::new(
                    TelegramWebhook {
                        channel_id: context.channel_id.clone(),
                        secret,
                        metrics: metrics.clone(),
                    }
                    .driver(&context),
                ));
            }
            Mode::LongPolling => {
                poller = Some(Poller {
                    context,
                    api,
                    poll_timeout_secs: config.poll_timeout_secs,
                    limit: config.poll_limit,
                    allowed_updates: config.allowed_updates.clone(),
                    delete_webhook: config.delete_webhook,
                    max_backoff: Duration::from_secs(config.max_backoff_secs),
                    metrics,
                });
            }
        }
        Ok(Self {
            webhook,
            poller,
            register,
            outbound,
            media,
        })
    }
}

impl WebhookRegistration {
    /// Calls `setWebhook`, retrying with backoff until it passes or
    /// shutdown.
    async fn run(&self, shutdown: &CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let result = match self.url.parse() {
                Ok(url) => {
                    let mut request = self
                        .api
                        .bot
                        .set_webhook(url)
                        .allowed_updates(self.allowed_updates.clone());
                    if let Some(secret) = &self.secret {
                        request = request.secret_token(secret.clone());
                    }
                    self.api
                        .call("setWebhook", request.send())
                        .await
                        .map(|_| ())
                }
                Err(e) => {
                    tracing::error!(channel = %self.channel_id, url = %self.url, error = %e, "webhook url is not a url");
                    return;
                }
            };
            match result {
                Ok(()) => {
                    tracing::info!(channel = %self.channel_id, url = %self.url, "telegram webhook set");
                    return;
                }
                Err(error) => {
                    tracing::warn!(channel = %self.channel_id, error = %error, retry_in_ms = backoff.as_millis() as u64, "setwebhook failed, retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(300));
        }
    }
}

#[async_trait::async_trait]
impl Connector for TelegramConnector {
    fn webhook(&self) -> Option<Arc<dyn WebhookHandler>> {
        self.webhook.clone().map(|w| w as Arc<dyn WebhookHandler>)
    }

    fn outbound(&self) -> Option<Arc<dyn OutboundHandler>> {
        Some(self.outbound.clone() as Arc<dyn OutboundHandler>)
    }

    fn media(&self) -> Option<Arc<dyn MediaFetcher>> {
        Some(self.media.clone() as Arc<dyn MediaFetcher>)
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ConnectorError> {
        if let Some(register) = &self.register {
            register.run(&shutdown).await;
        }
        match &self.poller {
            Some(poller) => poller.clone().run(shutdown).await,
            None => shutdown.cancelled().await,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use omni_connector::parse_settings;

    use super::*;

    #[test]
    fn the_example_channel_file_is_valid() {
        let config: TelegramChannelConfig =
            omni_connector::testing::example_channel("telegram.toml");
        config.validate().unwrap();
        assert_eq!(config.mode, Mode::Webhook);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_key() {
        let table: toml::Table =
            toml::from_str("mode = \"long_polling\"\nbot_token = { env = \"X\" }\npoll_limt = 5")
                .unwrap();
        let error = parse_settings::<TelegramChannelConfig>(table).unwrap_err();
        assert_eq!(error.key, "poll_limt");
        let table: toml::Table =
            toml::from_str("mode = \"long_polling\"\nbot_token = { env = \"X\" }\npoll_limit = 0")
                .unwrap();
        let config: TelegramChannelConfig = parse_settings(table).unwrap();
        assert_eq!(config.validate().unwrap_err().key, "poll_limit");
    }
}
