//! The two channel kinds' factories and connectors.

use std::{sync::Arc, time::Duration};

use omni_connector::{
    ChannelConfig, ChannelContext, ConfigError, Connector, ConnectorError, MediaFetcher,
    OutboundHandler, SecretRef, WebhookConnector, WebhookDriver, WebhookHandler,
};
use omni_proto::v1::ChannelKind;
use tokio_util::sync::CancellationToken;

use crate::{
    KF_KIND, OA_KIND, WechatOaConfig, WecomKfConfig,
    api::{ApiClient, Credentials},
    callback::Keys,
    crypto::{AesKey, MsgCrypt},
    events::WechatMetrics,
    kf::sync::{Syncer, Wake},
    kf::webhook::KfWebhook,
    media::WechatFetcher,
    oa::webhook::OaWebhook,
    oa::webhook::UnionidLookup,
    outbound::{KfSender, OaSender},
    xml::XmlLimits,
};

fn secret(key: &str, reference: &SecretRef) -> Result<omni_connector::Secret, ConfigError> {
    reference.resolve().map_err(|e| ConfigError::new(key, e))
}

fn aes_key(key: &str, reference: &SecretRef) -> Result<AesKey, ConfigError> {
    let text = secret(key, reference)?;
    let text = std::str::from_utf8(text.expose())
        .map_err(|_| ConfigError::new(key, "an EncodingAESKey is 43 characters of base64"))?;
    AesKey::from_encoding_aes_key(text.trim()).map_err(|e| ConfigError::new(key, e))
}

/// The AES keys of a channel: the current one, and the one before the
/// last rotation while it is still configured.
fn crypt(
    current: &SecretRef,
    previous: Option<&SecretRef>,
    receive_id: &str,
) -> Result<MsgCrypt, ConfigError> {
    let current = aes_key("encoding_aes_key", current)?;
    let previous = previous
        .map(|p| aes_key("previous_encoding_aes_key", p))
        .transpose()?;
    Ok(MsgCrypt::new(current, previous, receive_id))
}

impl ChannelConfig for WechatOaConfig {
    const KIND: &'static str = OA_KIND;
    const CHANNEL_KIND: ChannelKind = ChannelKind::Wechat;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        self.validate()?;
        let timeout = Duration::from_secs(self.request_timeout_secs);
        let api = self
            .app_secret
            .as_ref()
            .map(|reference| {
                let credentials = Credentials::OfficialAccount {
                    app_id: self.app_id.clone(),
                    app_secret: secret("app_secret", reference)?,
                };
                ApiClient::new(&self.api_base, credentials, timeout)
            })
            .transpose()?;
        let token = if self.verify_signature {
            Some(secret("token", &self.token)?)
        } else {
            None
        };
        let crypt = self
            .encoding_aes_key
            .as_ref()
            .map(|current| {
                crypt(
                    current,
                    self.previous_encoding_aes_key.as_ref(),
                    &self.app_id,
                )
            })
            .transpose()?;
        let unionid_scope = self.open_platform_id.clone();
        let lookup = match (&api, self.lookup_unionid) {
            (Some(api), true) => Some(UnionidLookup {
                api: api.clone(),
                state: context.state.clone(),
                timeout: Duration::from_millis(self.lookup_timeout_ms),
                scope: unionid_scope.clone(),
            }),
            _ => None,
        };
        let webhook = OaWebhook {
            channel_id: context.channel_id.clone(),
            app_id: self.app_id.clone(),
            keys: Keys {
                token,
                crypt,
                limits: XmlLimits::default(),
            },
            unionid_scope,
            lookup,
            metrics: WechatMetrics::register(&context.channel_id),
        };
        let fetcher = Arc::new(WechatFetcher::new(api.clone(), self.max_media_bytes));
        let outbound = api.map(|api| {
            Arc::new(OaSender::new(
                api,
                self.app_id.clone(),
                context.attachments.clone(),
            )) as Arc<dyn OutboundHandler>
        });
        let driver = Arc::new(WebhookDriver::new(&context, webhook));
        Ok(Arc::new(
            WebhookConnector::new(driver)
                .with_outbound(outbound)
                .with_media(Some(fetcher as Arc<dyn MediaFetcher>)),
        ))
    }
}

impl ChannelConfig for WecomKfConfig {
    const KIND: &'static str = KF_KIND;
    const CHANNEL_KIND: ChannelKind = ChannelKind::Wechat;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        Ok(Arc::new(KfConnector::new(context, &self)?))
    }
}

/// One WeChat Customer Service app: the callback, the puller, replies and
/// files.
#[derive(Debug)]
pub struct KfConnector {
    webhook: Arc<WebhookDriver<KfWebhook>>,
    syncer: Syncer,
    outbound: Arc<KfSender>,
    media: Arc<WechatFetcher>,
}

impl KfConnector {
    pub fn new(context: ChannelContext, config: &WecomKfConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let api = ApiClient::new(
            &config.api_base,
            Credentials::WeCom {
                corp_id: config.corp_id.clone(),
                secret: secret("secret", &config.secret)?,
            },
            Duration::from_secs(config.request_timeout_secs),
        )?;
        let token = if config.verify_signature {
            Some(secret("token", &config.token)?)
        } else {
            None
        };
        let keys = Keys {
            token,
            crypt: Some(crypt(
                &config.encoding_aes_key,
                config.previous_encoding_aes_key.as_ref(),
                &config.corp_id,
            )?),
            limits: XmlLimits::default(),
        };
        let wake = Arc::new(Wake::default());
        let metrics = WechatMetrics::register(&context.channel_id);
        let webhook = Arc::new(WebhookDriver::new(
            &context,
            KfWebhook {
                keys,
                wake: wake.clone(),
            },
        ));
        let syncer = Syncer {
            channel_id: context.channel_id.clone(),
            corp_id: config.corp_id.clone(),
            api: api.clone(),
            sender: context.sender.clone(),
            state: context.state.clone(),
            media: context.media.clone(),
            limit: config.sync_limit,
            poll_interval: Duration::from_secs(config.poll_interval_secs),
            configured: config.open_kfids.clone(),
            wake,
            metrics,
        };
        let mut outbound = KfSender::new(
            api.clone(),
            config.corp_id.clone(),
            context.attachments.clone(),
        );
        if let [only] = config.open_kfids.as_slice() {
            // A reply that names no account goes out from the only one.
            outbound = outbound.with_default_open_kfid(only.clone());
        }
        Ok(Self {
            webhook,
            syncer,
            outbound: Arc::new(outbound),
            media: Arc::new(WechatFetcher::new(Some(api), config.max_media_bytes)),
        })
    }
}

#[async_trait::async_trait]
impl Connector for KfConnector {
    fn webhook(&self) -> Option<Arc<dyn WebhookHandler>> {
        Some(self.webhook.clone() as Arc<dyn WebhookHandler>)
    }

    fn outbound(&self) -> Option<Arc<dyn OutboundHandler>> {
        Some(self.outbound.clone() as Arc<dyn OutboundHandler>)
    }

    fn media(&self) -> Option<Arc<dyn MediaFetcher>> {
        Some(self.media.clone() as Arc<dyn MediaFetcher>)
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ConnectorError> {
        self.syncer.run(shutdown).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use omni_connector::parse_settings;
    use omni_connector::testing::example_channel;

    use super::*;

    #[test]
    fn the_example_channel_files_are_valid() {
        let oa: WechatOaConfig = example_channel("wechat_oa.toml");
        oa.validate().unwrap();
        assert!(oa.encoding_aes_key.is_some() && oa.app_secret.is_some());
        let kf: WecomKfConfig = example_channel("wecom_kf.toml");
        kf.validate().unwrap();
        assert_eq!(kf.open_kfids.len(), 1);
    }

    #[test]
    fn mistakes_name_their_key() {
        let parse = |text: &str| -> Result<WechatOaConfig, ConfigError> {
            let config: WechatOaConfig = parse_settings(toml::from_str(text).unwrap())?;
            config.validate().map(|()| config)
        };
        let base = "token = { env = \"T\" }\n";
        let key = |text: &str| parse(&format!("{base}{text}")).unwrap_err().key;
        assert_eq!(key("app_id = \"wx123\""), "app_id");
        assert_eq!(
            key("app_id = \"wx1234567890abcdef\"\napp_secrt = { env = \"S\" }"),
            "app_secrt"
        );
        assert_eq!(
            key("app_id = \"wx1234567890abcdef\"\nlookup_unionid = true"),
            "lookup_unionid"
        );
        assert_eq!(
            key("app_id = \"wx1234567890abcdef\"\nprevious_encoding_aes_key = { env = \"K\" }"),
            "previous_encoding_aes_key"
        );
        assert_eq!(
            key("app_id = \"wx1234567890abcdef\"\napi_base = \"ftp://x\""),
            "api_base"
        );

        let kf = |text: &str| -> ConfigError {
            let settings = format!(
                "corp_id = \"ww1\"\nsecret = {{ env = \"S\" }}\ntoken = {{ env = \"T\" }}\n\
                 encoding_aes_key = {{ env = \"K\" }}\n{text}"
            );
            let config: WecomKfConfig = parse_settings(toml::from_str(&settings).unwrap()).unwrap();
            config.validate().unwrap_err()
        };
        assert_eq!(kf("sync_limit = 1001").key, "sync_limit");
        assert_eq!(kf("open_kfids = [\"wk/../x\"]").key, "open_kfids[0]");
        assert_eq!(kf("poll_interval_secs = 0").key, "poll_interval_secs");
    }

    #[test]
    fn a_bad_encoding_aes_key_is_a_config_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (token, key) = (dir.path().join("token"), dir.path().join("key"));
        std::fs::write(&token, "t").unwrap();
        std::fs::write(&key, "too-short").unwrap();
        let settings = format!(
            "app_id = \"wx1234567890abcdef\"\ntoken = {{ file = {token:?} }}\n\
             encoding_aes_key = {{ file = {key:?} }}\n"
        );
        let context = ChannelContext::new(
            "wx",
            omni_connector::EventSender::new(Arc::new(
                omni_connector::testing::MemorySink::default(),
            )),
        );
        let error = omni_connector::factory::<WechatOaConfig>()
            .build(context, toml::from_str(&settings).unwrap())
            .unwrap_err();
        assert_eq!(error.key, "encoding_aes_key");
    }
}
