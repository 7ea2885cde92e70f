//! SMS channels of Omnid: Twilio (`kind = "twilio"`), Vonage
//! (`kind = "vonage"`) and a generic regional gateway
//! (`kind = "sms_gateway"`). Each verifies its provider's webhook
//! signature, normalizes the message (numbers to E.164 with the channel's
//! `default_region`), appends it, and answers the provider only once the
//! event is durable; replies go out through the provider's REST API.
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

    use omni_connector::{
        ChannelContext, ConfigError, Connector, ConnectorFactory, parse_settings,
    };

    use crate::{gateway, twilio, vonage};

    /// Builds Twilio channels.
    #[derive(Debug, Default)]
    pub struct TwilioFactory;

    impl ConnectorFactory for TwilioFactory {
        fn kind(&self) -> &'static str {
            twilio::KIND
        }

        fn build(
            &self,
            context: ChannelContext,
            settings: toml::Table,
        ) -> Result<Arc<dyn Connector>, ConfigError> {
            let config: twilio::TwilioConfig = parse_settings(settings)?;
            Ok(Arc::new(twilio::build(context, config)?))
        }
    }

    /// Builds Vonage channels.
    #[derive(Debug, Default)]
    pub struct VonageFactory;

    impl ConnectorFactory for VonageFactory {
        fn kind(&self) -> &'static str {
            vonage::KIND
        }

        fn build(
            &self,
            context: ChannelContext,
            settings: toml::Table,
        ) -> Result<Arc<dyn Connector>, ConfigError> {
            let config: vonage::VonageConfig = parse_settings(settings)?;
            Ok(Arc::new(vonage::build(context, config)?))
        }
    }

    /// Builds generic gateway channels.
    #[derive(Debug, Default)]
    pub struct SmsGatewayFactory;

    impl ConnectorFactory for SmsGatewayFactory {
        fn kind(&self) -> &'static str {
            gateway::KIND
        }

        fn build(
            &self,
            context: ChannelContext,
            settings: toml::Table,
        ) -> Result<Arc<dyn Connector>, ConfigError> {
            let config: gateway::GatewayConfig = parse_settings(settings)?;
            Ok(Arc::new(gateway::build(context, config)?))
        }
    }
}

pub use factories::{SmsGatewayFactory, TwilioFactory, VonageFactory};
