//! Channels and messages shared by the outbound module's tests.

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use omni_connector::{Connector, Delivered, DeliveryError, OutboundHandler};
use omni_proto::v1::{
    ChannelKind, Content, ConversationEvent, HandleKind, IdentityHandle, ThreadingHints,
};

use crate::channels::{Channel, ChannelSet};

#[derive(Debug)]
struct Sends;

#[async_trait::async_trait]
impl OutboundHandler for Sends {
    async fn deliver(&self, _: &ConversationEvent) -> Result<Delivered, DeliveryError> {
        Err(DeliveryError::temporary("not in this test"))
    }
}

#[derive(Debug)]
struct Mailer(bool);

impl Connector for Mailer {
    fn outbound(&self) -> Option<Arc<dyn OutboundHandler>> {
        self.0.then(|| Arc::new(Sends) as Arc<dyn OutboundHandler>)
    }
}

/// A channel named `id` whose connector is `connector`.
pub(crate) fn channel(id: &str, kind: &str, connector: Arc<dyn Connector>) -> Channel {
    Channel {
        id: id.into(),
        kind: kind.into(),
        channel_kind: match kind {
            "email" => ChannelKind::Email,
            _ => ChannelKind::Api,
        },
        file: PathBuf::from(format!("{id}.toml")),
        fingerprint: String::new(),
        connector,
        webhook: None,
        routes: None,
    }
}

/// `support-mail` (email, sends) and `shop-api` (api, receives only).
pub(crate) fn channels() -> ChannelSet {
    ChannelSet::from([
        (
            "support-mail".into(),
            channel("support-mail", "email", Arc::new(Mailer(true))),
        ),
        (
            "shop-api".into(),
            channel("shop-api", "api", Arc::new(Mailer(false))),
        ),
    ])
}

/// A reply as a helpdesk posts it.
pub(crate) fn posted() -> ConversationEvent {
    ConversationEvent {
        channel_id: "support-mail".into(),
        provider_message_id: "ticket-19/reply-3".into(),
        recipients: vec![IdentityHandle {
            kind: HandleKind::Email as i32,
            value: "ana@example.com".into(),
            ..Default::default()
        }],
        content: Some(Content {
            text: "It ships today.".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A prepared reply of `support-mail`, with threading hints.
pub(crate) fn outbound() -> ConversationEvent {
    let mut event = super::prepare(posted(), &channels(), SystemTime::now()).unwrap();
    event.threading = Some(ThreadingHints {
        in_reply_to: vec!["m2@shop.example".into()],
        references: vec!["m1@shop.example".into(), "m2@shop.example".into()],
        ..Default::default()
    });
    event
}
