//! The channel: its routes (the socket, the widget, the demo page) and its
//! outbound sender, which pushes replies to the visitor's open tabs.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use axum::{
    Router,
    extract::{State, WebSocketUpgrade},
    http::{Extensions, HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use omni_connector::{
    ChannelConfig, ChannelContext, ConfigError, Connector, ConnectorError, Delivered,
    DeliveryError, GroupCommit, OutboundHandler, Secret, SecretRef,
};
use omni_proto::v1::{ChannelKind, ConversationEvent, HandleKind};

use tokio_util::sync::CancellationToken;

use crate::{
    KIND, WebchatConfig,
    address::{self, AddressLimiter},
    history::{self, History},
    hub::Hub,
    offline::{self, Mailer, OfflineMail, Pending},
    protocol::{self, Limits},
    session::{self, Channel},
    upload::{self, UploadLimits, Uploads},
};

const WIDGET_JS: &str = include_str!("../assets/widget.js");
const WIDGET_CSS: &str = include_str!("../assets/widget.css");
const DEMO_HTML: &str = include_str!("../assets/demo.html");

/// Read and write buffer of each socket.
const SOCKET_BUFFER: usize = 4 * 1024;

/// The demo page's policy: everything from the daemon itself, nothing
/// inline, as a strict site would set it.
const DEMO_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

fn secret(key: &str, reference: &SecretRef) -> Result<Secret, ConfigError> {
    reference.resolve().map_err(|e| ConfigError::new(key, e))
}

impl ChannelConfig for WebchatConfig {
    const KIND: &'static str = KIND;
    const CHANNEL_KIND: ChannelKind = ChannelKind::Chat;

    fn build(self, context: ChannelContext) -> Result<Arc<dyn Connector>, ConfigError> {
        self.validate()?;
        let writes = GroupCommit::new(context.state.clone());
        let channel = Arc::new(Channel {
            channel_id: context.channel_id.clone(),
            secret: secret("secret", &self.secret)?,
            identity_secret: self
                .identity_secret
                .as_ref()
                .map(|s| secret("identity_secret", s))
                .transpose()?,
            require_identity: self.require_identity,
            limits: Limits {
                max_frame_bytes: self.max_message_bytes,
                max_text_chars: self.max_text_chars,
                ..Limits::default()
            },
            messages_per_minute: self.messages_per_minute,
            addresses: AddressLimiter::new(self.messages_per_minute_per_address),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            sender: context.sender.clone(),
            state: context.state.clone(),
            hub: Hub::new(self.max_connections, self.max_connections_per_visitor),
            history: History::new(writes.clone(), self.history_messages),
            writes,
            metrics: crate::events::ChatMetrics::register(&context.channel_id),
            offline: self.offline_email.map(|o| OfflineMail {
                channel: o.channel,
                after: Duration::from_secs(o.after_secs),
                subject: o.subject,
            }),
        });
        let uploads = Arc::new(Uploads::new(
            channel.clone(),
            context.attachments.clone(),
            self.allowed_origins.clone().into(),
            UploadLimits {
                max_bytes: self.max_attachment_bytes,
                types: self
                    .attachment_types
                    .iter()
                    .filter_map(|t| upload::media_type(t))
                    .collect(),
                max_concurrent: self.max_concurrent_uploads,
            },
            self.client_address_header.clone().map(Into::into),
        ));
        Ok(Arc::new(ChatConnector {
            channel,
            uploads,
            allowed_origins: self.allowed_origins,
            max_message_bytes: self.max_message_bytes,
            client_address_header: self.client_address_header.map(Into::into),
        }))
    }
}

/// One web chat channel.
#[derive(Debug)]
pub struct ChatConnector {
    channel: Arc<Channel>,
    /// Built with the channel, so its upload permits are the channel's.
    uploads: Arc<Uploads>,
    allowed_origins: Vec<String>,
    max_message_bytes: usize,
    client_address_header: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
struct Routes {
    channel: Arc<Channel>,
    allowed_origins: Arc<[String]>,
    max_message_bytes: usize,
    client_address_header: Option<Arc<str>>,
}

#[async_trait]
impl Connector for ChatConnector {
    fn routes(&self) -> Option<Router> {
        let routes = Routes {
            channel: self.channel.clone(),
            allowed_origins: self.allowed_origins.clone().into(),
            max_message_bytes: self.max_message_bytes,
            client_address_header: self.client_address_header.clone(),
        };
        Some(
            Router::new()
                .route("/socket", get(socket))
                .route("/widget.js", get(widget_js))
                .route("/widget.css", get(widget_css))
                .route("/demo", get(demo))
                .with_state(routes)
                .merge(self.uploads.router()),
        )
    }

    fn outbound(&self) -> Option<Arc<dyn OutboundHandler>> {
        Some(Arc::new(Pusher {
            channel: self.channel.clone(),
        }))
    }

    /// Emails the replies visitors did not see, when `offline_email` is
    /// set; nothing else runs in the background.
    async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ConnectorError> {
        let Some(mail) = self.channel.offline.clone() else {
            shutdown.cancelled().await;
            return Ok(());
        };
        Mailer {
            chat_channel: self.channel.channel_id.clone(),
            mail,
            state: self.channel.state.clone(),
            sender: self.channel.sender.clone(),
            metrics: self.channel.metrics.clone(),
        }
        .run(shutdown)
        .await;
        Ok(())
    }
}

/// Whether a page of `origin` may open the chat or upload to it: an
/// allowed origin, or the daemon's own pages (the origin's host is the
/// request's `Host`).
pub(crate) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Not a browser (browsers always send Origin on WebSocket
        // handshakes): nothing a page could abuse.
        return true;
    };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| !host.is_empty() && authority.eq_ignore_ascii_case(host))
}

async fn socket(
    State(routes): State<Routes>,
    extensions: Extensions,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let allowed = origin_allowed(&headers, &routes.allowed_origins);
    let address = address::of_request(
        routes.client_address_header.as_deref(),
        &headers,
        &extensions,
    );
    let channel = routes.channel.clone();
    // Small buffers: most sockets sit idle for minutes, and the library's
    // default 128 KiB read buffer per socket made 10,000 visitors cost
    // 1.4 GiB. A frame larger than the buffer is still read, in steps.
    upgrade
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_message_size(routes.max_message_bytes)
        .max_frame_size(routes.max_message_bytes)
        .on_upgrade(move |mut socket| async move {
            if !allowed {
                channel.metrics.refused("origin_not_allowed");
                // The browser sees the close code; an HTTP 403 would reach
                // the page only as a failed connection.
                let _ = socket
                    .send(axum::extract::ws::Message::Close(Some(
                        axum::extract::ws::CloseFrame {
                            code: protocol::CLOSE_ORIGIN_NOT_ALLOWED,
                            reason: "origin_not_allowed".into(),
                        },
                    )))
                    .await;
                return;
            }
            session::serve(channel, socket, address).await;
        })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn widget_js() -> Response {
    asset("text/javascript; charset=utf-8", WIDGET_JS)
}

async fn widget_css() -> Response {
    asset("text/css; charset=utf-8", WIDGET_CSS)
}

async fn demo() -> Response {
    let mut response = asset("text/html; charset=utf-8", DEMO_HTML);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DEMO_CSP),
    );
    *response.status_mut() = StatusCode::OK;
    response
}

/// The outbound sender: a reply goes to every open tab of its visitor and
/// into the visitor's history, which a tab opened later loads.
#[derive(Debug)]
struct Pusher {
    channel: Arc<Channel>,
}

impl Pusher {
    /// Queues a reply that found no open tab to be emailed after
    /// `mail.after`, when the visitor left an address.
    async fn email_later(
        &self,
        mail: &OfflineMail,
        visitor: &str,
        entry: &crate::protocol::HistoryEntry,
    ) -> Result<(), DeliveryError> {
        let state = &self.channel.state;
        let contact = offline::load_contact(state, visitor)
            .await
            .map_err(|e| DeliveryError::temporary(format!("contact not readable: {e}")))?;
        let Some(contact) = contact else {
            return Ok(());
        };
        let pending = Pending {
            visitor: visitor.to_owned(),
            contact,
            reply_event_id: entry.event_id.clone(),
            text: entry.text.clone(),
            sent_at: entry.sent_at.seconds,
        };
        offline::schedule(state, mail.after, &pending, std::time::SystemTime::now())
            .await
            .map_err(|e| DeliveryError::temporary(format!("email not queued: {e}")))
    }
}

#[async_trait]
impl OutboundHandler for Pusher {
    async fn deliver(&self, message: &ConversationEvent) -> Result<Delivered, DeliveryError> {
        let visitor = message
            .recipients
            .iter()
            .find(|h| h.kind == HandleKind::ChatVisitor as i32)
            .map(|h| h.value.clone())
            .ok_or_else(|| DeliveryError::Rejected("no recipient is a chat visitor".into()))?;
        let text = message
            .content
            .as_ref()
            .map(|c| c.text.clone())
            .unwrap_or_default();
        if text.trim().is_empty() {
            return Err(DeliveryError::Rejected("the reply has no text".into()));
        }
        let mut entry = history::entry(message)
            .ok_or_else(|| DeliveryError::Rejected("only text replies reach the chat".into()))?;
        if entry.sent_at.seconds <= 0 {
            // A reply carries no send time until it is sent: now.
            entry.sent_at = omni_proto::timestamp(std::time::SystemTime::now());
        }
        // History first: a tab that connects between the two still sees it.
        self.channel
            .history
            .append(&visitor, entry.clone())
            .await
            .map_err(|e| DeliveryError::temporary(format!("history not stored: {e}")))?;
        let tabs = self
            .channel
            .hub
            .push(&visitor, &history::reply_frame(&entry));
        if tabs == 0
            && let Some(mail) = &self.channel.offline
        {
            self.email_later(mail, &visitor, &entry).await?;
        }
        Ok(Delivered {
            provider_message_id: message.event_id.clone(),
            provider_status: if tabs == 0 {
                "stored for the visitor's next visit".into()
            } else {
                format!("pushed to {tabs} open tab(s)")
            },
        })
    }
}
