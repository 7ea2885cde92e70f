//! The three kinds' factories: each builds the shared webhook, the media
//! fetcher and its kind's sender on the SDK's webhook connector.

use std::{sync::Arc, time::Duration};

use omni_connector::{
    ChannelConfig, ChannelContext, ConfigError, Connector, MediaFetcher, OutboundHandler, Secret,
    SecretRef, WebhookConnector, WebhookDriver,
};
use omni_proto::v1::ChannelKind;

use crate::{
    INSTAGRAM_KIND, InstagramConfig, MESSENGER_KIND, MessengerConfig, WHATSAPP_KIND,
    WhatsappConfig,
    envelope::Limits,
    events::MetaMetrics,
    graph::GraphClient,
    marks::Marks,
    media::MetaFetcher,
    messaging::normalize::Platform,
    outbound::{SendApiSender, SendPlatform, Template, WhatsappSender},
    webhook::{AppSecrets, MetaWebhook, Product},
};

fn secret(key: &str, reference: &SecretRef) -> Result<Secret, ConfigError> {
    reference.resolve().map_err(|e| ConfigError::new(key, e))
}

/// What the three kinds' files share, resolved.
struct Common<'a> {
    app_secret: &'a SecretRef,
    previous_app_secret: Option<&'a SecretRef>,
    verify_token: &'a SecretRef,
    access_token: Option<&'a SecretRef>,
    verify_signature: bool,
    graph_base: &'a str,
    api_version: &'a str,
    request_timeout_secs: u64,
    max_media_bytes: u64,
}

/// The settings every kind's file has under the same names.
macro_rules! common {
    ($config:expr) => {
        Common {
            app_secret: &$config.app_secret,
            previous_app_secret: $config.previous_app_secret.as_ref(),
            verify_token: &$config.verify_token,
            access_token: $config.access_token.as_ref(),
            verify_signature: $config.verify_signature,
            graph_base: &$config.graph_base,
            api_version: &$config.api_version,
            request_timeout_secs: $config.request_timeout_secs,
            max_media_bytes: $config.max_media_bytes,
        }
    };
}

impl Common<'_> {
    fn webhook(
        &self,
        context: &ChannelContext,
        product: Product,
        marks: &Arc<Marks>,
    ) -> Result<MetaWebhook, ConfigError> {
        let secrets = if self.verify_signature {
            Some(AppSecrets {
                current: secret("app_secret", self.app_secret)?,
                previous: self
                    .previous_app_secret
                    .map(|p| secret("previous_app_secret", p))
                    .transpose()?,
            })
        } else {
            None
        };
        Ok(MetaWebhook {
            channel_id: context.channel_id.clone(),
            product,
            secrets,
            verify_token: secret("verify_token", self.verify_token)?,
            marks: marks.clone(),
            limits: Limits::default(),
            metrics: MetaMetrics::register(&context.channel_id),
        })
    }

    fn graph(&self) -> Result<Option<GraphClient>, ConfigError> {
        self.access_token
            .map(|reference| {
                GraphClient::new(
                    self.graph_base,
                    self.api_version,
                    secret("access_token", reference)?,
                    Duration::from_secs(self.request_timeout_secs),
                )
            })
            .transpose()
    }

    /// The connector: the webhook, files through `graph` (or, without a
    /// token, only the CDN URLs Messenger and Instagram send), and replies.
    fn connector(
        &self,
        context: &ChannelContext,
        webhook: MetaWebhook,
        graph: Option<GraphClient>,
        outbound: Option<Arc<dyn OutboundHandler>>,
    ) -> Arc<dyn Connector> {
        let fetcher = Arc::new(MetaFetcher::new(graph, self.max_media_bytes));
        let marks = webhook.marks.clone();
        let driver = Arc::new(WebhookDriver::new(context, webhook));
        Arc::new(MetaConnector {
            inner: WebhookConnector::new(driver)
                .with_outbound(outbound)
                .with_media(Some(fetcher as Arc<dyn MediaFetcher>)),
            marks,
        })
    }
}

/// A Meta channel: the SDK's webhook connector, whose marks are flushed
/// when the channel stops (a deploy, a reload), so a redelivery right
/// after a restart is still dropped before the log.
#[derive(Debug)]
struct MetaConnector {
    inner: WebhookConnector,
    marks: Arc<Marks>,
}

#[async_trait::async_trait]
impl Connector for MetaConnector {
    fn webhook(&self) -> Option<Arc<dyn omni_connector::WebhookHandler>> {
        self.inner.webhook()
    }

    fn outbound(&self) -> Option<Arc<dyn OutboundHandler>> {
        self.inner.outbound()
    }

    fn media(&self) -> Option<Arc<dyn MediaFetcher>> {
        self.inner.media()
    }

    async fn run(
        self: Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), omni_connector::ConnectorError> {
        shutdown.cancelled().await;
        if let Err(e) = self.marks.flush().await {
            // Their repeats are appended again and dropped downstream.
            tracing::warn!(error = %e, "seen marks not flushed at stop");
        }
        Ok(())
    }
}

impl ChannelConfig for WhatsappConfig {
    const KIND: &'static str = WHATSAPP_KIND;
    const CHANNEL_KIND: ChannelKind = ChannelKind::Whatsapp;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        self.validate()?;
        let common = common!(self);
        let marks = Arc::new(Marks::new(context.state.clone(), &context.channel_id));
        let webhook = common.webhook(
            &context,
            Product::Whatsapp {
                phone_number_id: self.phone_number_id.clone(),
            },
            &marks,
        )?;
        let graph = common.graph()?;
        let outbound = graph.clone().map(|graph| {
            Arc::new(
                WhatsappSender::new(
                    graph,
                    self.phone_number_id.clone(),
                    context.state.clone(),
                    context.attachments.clone(),
                    self.template.as_ref().map(Template::from),
                )
                .with_marks(marks),
            ) as Arc<dyn OutboundHandler>
        });
        Ok(common.connector(&context, webhook, graph, outbound))
    }
}

/// Builds a Messenger or Instagram channel.
#[allow(clippy::too_many_arguments)]
fn messaging(
    context: ChannelContext,
    common: Common<'_>,
    platform: Platform,
    send_platform: SendPlatform,
    account_id: &str,
    app_id: Option<&str>,
    human_agent_tag: bool,
) -> Result<Arc<dyn Connector>, ConfigError> {
    let marks = Arc::new(Marks::new(context.state.clone(), &context.channel_id));
    let webhook = common.webhook(
        &context,
        Product::Messaging {
            platform,
            account_id: account_id.to_owned(),
            own_app_id: app_id.map(str::to_owned),
        },
        &marks,
    )?;
    let graph = common.graph()?;
    // Without a token the CDN URLs Messenger and Instagram send are still
    // downloaded; only replies need the token.
    let files = match &graph {
        Some(graph) => graph.clone(),
        None => GraphClient::anonymous(
            common.graph_base,
            common.api_version,
            Duration::from_secs(common.request_timeout_secs),
        )?,
    };
    let outbound = graph.map(|graph| {
        Arc::new(
            SendApiSender::new(
                graph,
                send_platform,
                account_id.to_owned(),
                context.state.clone(),
                context.attachments.clone(),
                human_agent_tag,
            )
            .marking_echoes(&context.channel_id)
            .with_marks(marks),
        ) as Arc<dyn OutboundHandler>
    });
    Ok(common.connector(&context, webhook, Some(files), outbound))
}

impl ChannelConfig for MessengerConfig {
    const KIND: &'static str = MESSENGER_KIND;
    const CHANNEL_KIND: ChannelKind = ChannelKind::Messenger;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        self.validate()?;
        let common = common!(self);
        messaging(
            context,
            common,
            Platform::Messenger,
            SendPlatform::Messenger,
            &self.page_id,
            self.app_id.as_deref(),
            self.human_agent_tag,
        )
    }
}

impl ChannelConfig for InstagramConfig {
    const KIND: &'static str = INSTAGRAM_KIND;
    const CHANNEL_KIND: ChannelKind = ChannelKind::Instagram;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        self.validate()?;
        let common = common!(self);
        messaging(
            context,
            common,
            Platform::Instagram,
            SendPlatform::Instagram,
            &self.account_id,
            self.app_id.as_deref(),
            self.human_agent_tag,
        )
    }
}

#[cfg(test)]
mod tests {
    use omni_connector::parse_settings;
    use omni_connector::testing::example_channel;

    use super::*;

    #[test]
    fn the_example_channel_files_are_valid() {
        let wa: WhatsappConfig = example_channel("whatsapp.toml");
        wa.validate().unwrap();
        assert!(wa.template.is_some() && wa.access_token.is_some());
        let messenger: MessengerConfig = example_channel("messenger.toml");
        messenger.validate().unwrap();
        let instagram: InstagramConfig = example_channel("instagram.toml");
        instagram.validate().unwrap();
    }

    #[test]
    fn mistakes_name_their_key() {
        let base = "app_secret = { env = \"S\" }\nverify_token = { env = \"T\" }\n";
        let wa = |text: &str| -> ConfigError {
            let parsed: Result<WhatsappConfig, _> =
                parse_settings(toml::from_str(&format!("{base}{text}")).unwrap());
            match parsed {
                Ok(config) => config.validate().unwrap_err(),
                Err(e) => e,
            }
        };
        assert_eq!(wa("phone_number_id = \"+1 555\"").key, "phone_number_id");
        assert_eq!(
            wa("phone_number_id = \"1\"\napi_version = \"23\"").key,
            "api_version"
        );
        assert_eq!(
            wa("phone_number_id = \"1\"\ngraph_base = \"ftp://x\"").key,
            "graph_base"
        );
        assert_eq!(
            wa("phone_number_id = \"1\"\nverify_tokn = \"x\"").key,
            "verify_tokn"
        );
        assert_eq!(
            wa("phone_number_id = \"1\"\naccess_token = { env = \"A\" }\n[template]\nname = \"Hello There\"\nlanguage = \"en\"").key,
            "template.name"
        );
        assert_eq!(
            wa("phone_number_id = \"1\"\n[template]\nname = \"hello\"\nlanguage = \"en\"").key,
            "template"
        );
        let messenger = |text: &str| -> ConfigError {
            let config: MessengerConfig =
                parse_settings(toml::from_str(&format!("{base}{text}")).unwrap()).unwrap();
            config.validate().unwrap_err()
        };
        assert_eq!(messenger("page_id = \"\"").key, "page_id");
        assert_eq!(messenger("page_id = \"1\"\napp_id = \"abc\"").key, "app_id");
    }
}
