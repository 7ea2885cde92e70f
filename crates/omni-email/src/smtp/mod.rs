//! SMTP out: replies and auto-acknowledgements through the channel's relay.
//!
//! Two halves, as everywhere in this crate: [`Composer`] turns an outbound
//! [`ConversationEvent`] into an RFC 5322 message with pure functions (see
//! [`compose`] for every rule), and [`SmtpSender`] submits it with lettre's
//! async SMTP client.
//!
//! Delivery is at least once: the daemon reports the outcome and only then
//! moves past the outbound record, so a crash in between sends the message
//! again. The repeat carries the same `Message-ID` (derived from the
//! outbound event id), which lets mail systems and our own IMAP ingestion
//! recognise it.
//!
//! Outcomes, as [`OutboundHandler`] reports them:
//! - the relay accepted the message: [`Delivered`] with the Message-ID
//!   (without angle brackets) and the relay's reply (`250 2.0.0 Ok: queued
//!   as 4Xyz`);
//! - the message itself is unsendable (see [`compose`]), one of its
//!   attachments is unusable (see [`load_attachments`]) or the relay
//!   refused it with a permanent 5xx reply: [`DeliveryError::Rejected`];
//! - anything that may pass later: a connection, TLS or timeout failure,
//!   a transient 4xx reply, and also a 5xx reply to our credentials
//!   (530/534/535/538), since a wrong password is the operator's to fix,
//!   not a reason to fail every customer's reply, and an I/O error of the
//!   attachment store: [`DeliveryError::Temporary`].
//!
//! Each delivery opens its own connection and ends it with `QUIT` (no
//! pool): replies are few and sent one at a time, and a fresh connection
//! never trips over one the relay has quietly dropped.

pub mod compose;
mod config;

use std::{
    error::Error as _,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, CertificateStore, Tls, TlsParameters},
        response::{Response, Severity},
    },
};
use omni_connector::{AttachmentStore, ConfigError, Delivered, DeliveryError, OutboundHandler};
use omni_proto::v1::{Attachment, ConversationEvent};

pub use compose::{Composed, Composer, FileBytes};
pub use config::{SmtpSettings, SmtpTls};

/// SMTP reply codes that refuse our credentials rather than the message.
const AUTH_FAILURE_CODES: [u16; 4] = [530, 534, 535, 538];

/// Sends one channel's outbound email through its relay.
#[derive(Clone)]
pub struct SmtpSender {
    channel_id: Arc<str>,
    composer: Composer,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Bound on a whole delivery (lettre bounds each step by the
    /// configured timeout).
    deadline: Duration,
    relay: String,
    /// Where `omni-att://` attachments are read from; without one, a reply
    /// with attachments is rejected.
    attachments: Option<Arc<dyn AttachmentStore>>,
    max_attachment_bytes: u64,
}

impl std::fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSender")
            .field("channel_id", &self.channel_id)
            .field("relay", &self.relay)
            .field("from", &self.composer.from().to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpSender {
    /// Validates `settings`, reads the CA file and the password, and
    /// prepares the client. Connects to nothing: an unreachable relay shows
    /// up as temporary delivery failures, not as a configuration error.
    /// Errors name their key under `smtp.`.
    pub fn new(channel_id: &str, settings: SmtpSettings) -> Result<Self, ConfigError> {
        settings.validate()?;
        let composer = Composer::new(&settings)?;
        let timeout = Duration::from_secs(settings.timeout_secs);
        let port = settings.port();
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.as_str())
                .port(port)
                .timeout(Some(timeout));
        builder = match settings.tls {
            SmtpTls::None => builder.tls(Tls::None),
            SmtpTls::Starttls => builder.tls(Tls::Required(tls_parameters(&settings)?)),
            SmtpTls::Tls => builder.tls(Tls::Wrapper(tls_parameters(&settings)?)),
        };
        if let (Some(username), Some(password)) = (&settings.username, &settings.password) {
            let secret = password
                .resolve()
                .map_err(|e| ConfigError::new("smtp.password", e))?;
            let password = String::from_utf8(secret.expose().to_vec())
                .map_err(|_| ConfigError::new("smtp.password", "must be valid UTF-8"))?;
            builder = builder.credentials(Credentials::new(username.clone(), password));
        }
        Ok(Self {
            channel_id: channel_id.into(),
            composer,
            transport: builder.build(),
            deadline: timeout.saturating_mul(4),
            relay: format!("{}:{port} ({})", settings.host, settings.tls.as_str()),
            attachments: None,
            max_attachment_bytes: settings.max_attachment_bytes,
        })
    }

    /// Reads reply attachments from `store` (the channel's attachment
    /// store); without it a reply with attachments is rejected.
    #[must_use]
    pub fn with_attachments(mut self, store: Arc<dyn AttachmentStore>) -> Self {
        self.attachments = Some(store);
        self
    }

    /// The composer, for callers that want the message without sending it.
    pub fn composer(&self) -> &Composer {
        &self.composer
    }
}

fn tls_parameters(settings: &SmtpSettings) -> Result<TlsParameters, ConfigError> {
    let mut builder = TlsParameters::builder(settings.host.clone())
        .certificate_store(CertificateStore::WebpkiRoots);
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            ConfigError::new(
                "smtp.ca_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        if !pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            return Err(ConfigError::new(
                "smtp.ca_file",
                format!("no certificates in {}", path.display()),
            ));
        }
        let certificate = Certificate::from_pem(&pem).map_err(|e| {
            ConfigError::new(
                "smtp.ca_file",
                format!("invalid certificate in {}: {e}", path.display()),
            )
        })?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build_rustls()
        .map_err(|e| ConfigError::new("smtp.tls", format!("cannot set up tls: {e}")))
}

#[async_trait]
impl OutboundHandler for SmtpSender {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError> {
        let attachments = message
            .content
            .as_ref()
            .map(|c| c.attachments.as_slice())
            .unwrap_or_default();
        let Composed {
            message,
            message_id,
        } = if attachments.is_empty() {
            self.composer.compose(message, SystemTime::now())?
        } else {
            let store = self.attachments.as_deref().ok_or_else(|| {
                DeliveryError::Rejected("this sender has no attachment store".into())
            })?;
            let files = load_attachments(store, attachments, self.max_attachment_bytes).await?;
            // Base64 of up to the size cap: off the async workers.
            let composer = self.composer.clone();
            let event = message.clone();
            tokio::task::spawn_blocking(move || {
                composer.compose_with(&event, &files, SystemTime::now())
            })
            .await
            .map_err(|e| DeliveryError::temporary(format!("composing the message failed: {e}")))??
        };
        let sent = tokio::time::timeout(self.deadline, self.transport.send(message)).await;
        match sent {
            Ok(Ok(response)) => Ok(Delivered {
                provider_message_id: message_id,
                provider_status: reply_line(&response),
            }),
            Ok(Err(error)) => Err(classify(&error)),
            Err(_) => Err(DeliveryError::temporary(format!(
                "smtp delivery did not finish within {}s",
                self.deadline.as_secs()
            ))),
        }
    }
}

/// Reads each attachment's bytes from `store`, in order, checking them.
///
/// - Only attachment store references (`omni-att://sha256/<hex>`) are
///   read; any other URI (`https://...`) is rejected: replies never make
///   the daemon fetch an arbitrary URL.
/// - A `sha256` on the attachment must name the same file as its URI.
/// - A file missing from the store, or whose content does not hash to its
///   name, is rejected; an I/O error of the store is temporary.
/// - Over `max_total_bytes` in all (declared sizes are checked before
///   anything is read, actual sizes as files are read), the reply is
///   rejected.
pub async fn load_attachments(
    store: &dyn AttachmentStore,
    attachments: &[Attachment],
    max_total_bytes: u64,
) -> Result<Vec<FileBytes>, DeliveryError> {
    omni_connector::attachments::load_outbound(
        store,
        attachments,
        max_total_bytes,
        "smtp.max_attachment_bytes",
    )
    .await
}

/// The relay's reply as one line: `250 2.0.0 Ok: queued as 4Xyz`.
fn reply_line(response: &Response) -> String {
    let text: Vec<&str> = response.message().collect();
    let code = response.code().to_string();
    if text.is_empty() {
        code
    } else {
        format!("{code} {}", text.join(" "))
    }
}

/// Permanent replies reject the message; everything else may pass later.
fn classify(error: &lettre::transport::smtp::Error) -> DeliveryError {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    match error.status() {
        Some(code) if code.severity == Severity::PermanentNegativeCompletion => {
            if AUTH_FAILURE_CODES.contains(&u16::from(code)) {
                DeliveryError::temporary(format!("relay refused the credentials: {text}"))
            } else {
                DeliveryError::Rejected(text)
            }
        }
        _ => DeliveryError::temporary(text),
    }
}
