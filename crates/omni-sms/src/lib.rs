//! SMS channels of Omnid: Twilio (`kind = "twilio"`), Vonage
//! (`kind = "vonage"`) and a generic regional gateway
//! (`kind = "sms_gateway"`). Each verifies its provider's webhook
//! signature, normalizes the message (numbers to E.164 with the channel's
//! `default_region`), appends it, and answers the provider only once the
//! event is durable; replies go out through the provider's REST API. Each
//! runs in the connector SDK's webhook driver, so only the provider's
//! signature, payload and expected answers live here. A Twilio MMS is
//! answered as soon as its text is durable; its files are downloaded
//! afterwards through the media queue.
//!
//! Authentic input that cannot be normalized goes to the dead-letter topic.
//! Twilio and Vonage are then answered with their normal 2xx (they would
//! otherwise resend, for up to a day, something that can never parse);
//! the generic gateway gets a 400 naming the problem, like the API channel.

mod common;
pub mod gateway;
pub mod twilio;
pub mod vonage;

mod factories {
    use std::sync::Arc;

    use omni_connector::{ChannelConfig, ChannelContext, ConfigError, Connector};
    use omni_proto::v1::ChannelKind;

    use crate::{gateway, twilio, vonage};

    impl ChannelConfig for twilio::TwilioConfig {
        const KIND: &'static str = twilio::KIND;
        const CHANNEL_KIND: ChannelKind = ChannelKind::Sms;

        fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
            Ok(Arc::new(twilio::build(context, self)?))
        }
    }

    impl ChannelConfig for vonage::VonageConfig {
        const KIND: &'static str = vonage::KIND;
        const CHANNEL_KIND: ChannelKind = ChannelKind::Sms;

        fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
            Ok(Arc::new(vonage::build(context, self)?))
        }
    }

    impl ChannelConfig for gateway::GatewayConfig {
        const KIND: &'static str = gateway::KIND;
        const CHANNEL_KIND: ChannelKind = ChannelKind::Sms;

        fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
            Ok(Arc::new(gateway::build(context, self)?))
        }
    }
}
