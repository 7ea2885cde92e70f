//! The email channel as the daemon sees it: a factory that checks the
//! channel file, and a connector whose `run` pulls every configured mailbox
//! and whose outbound handler sends replies over SMTP.

use std::sync::Arc;

use omni_connector::{
    ChannelConfig, ChannelContext, ConfigError, Connector, ConnectorError, OutboundHandler,
};
use omni_proto::v1::ChannelKind;
use tokio_util::sync::CancellationToken;

use crate::{
    config::EmailChannelConfig,
    events::ImapMetrics,
    imap::{MailboxWorker, transport},
    smtp::SmtpSender,
};

/// The `kind` of email channels in channel files.
pub const KIND: &str = "email";

impl ChannelConfig for EmailChannelConfig {
    const KIND: &'static str = KIND;
    const CHANNEL_KIND: ChannelKind = ChannelKind::Email;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        let config = self;
        if config.imap.is_none() && config.smtp.is_none() {
            return Err(ConfigError::new(
                ".",
                "an email channel needs an [imap] table, an [smtp] table, or both",
            ));
        }
        let limits = config.limits.parse_limits();
        let mut workers = Vec::new();
        if let Some(imap) = config.imap {
            let start = imap.validate()?;
            let credentials = match (&imap.password, &imap.oauth2_token) {
                (Some(password), _) => {
                    password
                        .resolve()
                        .map_err(|e| ConfigError::new("imap.password", e))?;
                    transport::Credentials::Password(password.clone())
                }
                (None, Some(token)) => transport::Credentials::OAuth2(token.clone()),
                (None, None) => unreachable!("validate requires credentials"),
            };
            let tls = transport::tls_config(&imap)?;
            let imap = Arc::new(imap);
            for mailbox in &imap.mailboxes {
                workers.push(MailboxWorker {
                    metrics: ImapMetrics::register(&context.channel_id, mailbox),
                    context: context.clone(),
                    settings: imap.clone(),
                    mailbox: mailbox.clone(),
                    start,
                    credentials: credentials.clone(),
                    tls: tls.clone(),
                    limits: limits.clone(),
                });
            }
        }
        let outbound = match config.smtp {
            Some(smtp) => Some(Arc::new(
                SmtpSender::new(&context.channel_id, smtp)?
                    .with_attachments(context.attachments.clone()),
            )),
            None => None,
        };
        Ok(Arc::new(EmailConnector { workers, outbound }))
    }
}

/// One email channel: its mailboxes and its relay.
#[derive(Debug)]
struct EmailConnector {
    workers: Vec<MailboxWorker>,
    outbound: Option<Arc<SmtpSender>>,
}

#[async_trait::async_trait]
impl Connector for EmailConnector {
    fn outbound(&self) -> Option<Arc<dyn OutboundHandler>> {
        self.outbound
            .clone()
            .map(|sender| sender as Arc<dyn OutboundHandler>)
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ConnectorError> {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in self.workers.iter().cloned() {
            tasks.spawn(worker.run(shutdown.clone()));
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}
