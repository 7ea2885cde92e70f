//! One browser connection: `hello` → `welcome` and `history`, then the
//! visitor's messages, each acknowledged only once durable in the log,
//! and replies pushed by the channel's outbound sender through the hub.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use omni_connector::{ChannelState, EventSender, GroupCommit, StateUpdate};
use tokio::sync::mpsc;

use crate::{
    address::AddressLimiter,
    history::History,
    hub::{Full, Hub, QUEUE},
    identity::{self, IdentityCheck, SenderIdentity},
    normalize::{self, ChatContext},
    offline::{self, Contact, OfflineMail},
    protocol::{self, AttachmentRef, ClientFrame, Limits, ServerFrame},
    upload,
};

/// WebSocket's "policy violation": a connection that does not open with
/// `hello`.
const CLOSE_POLICY: u16 = 1008;

/// Least time between two `typing` activities of one connection.
const TYPING_EVERY: Duration = Duration::from_secs(10);

/// How long a new connection may take to say `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a connection needs of its channel.
#[derive(Debug)]
pub struct Channel {
    pub channel_id: String,
    pub secret: omni_connector::Secret,
    pub identity_secret: Option<omni_connector::Secret>,
    pub require_identity: bool,
    pub limits: Limits,
    pub messages_per_minute: u32,
    /// Messages per minute of all connections from one address.
    pub addresses: AddressLimiter,
    pub idle_timeout: Duration,
    pub sender: EventSender,
    pub state: ChannelState,
    /// The channel's state writes that only help (seen and read marks,
    /// history), grouped into shared transactions.
    pub writes: GroupCommit,
    pub hub: Hub,
    pub history: History,
    pub metrics: crate::events::ChatMetrics,
    /// Where replies the visitor did not see are emailed, if anywhere.
    pub offline: Option<OfflineMail>,
}

/// A close frame with `code` and a short reason.
fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Serves one upgraded connection, from `address` when known, until it
/// closes.
pub async fn serve(channel: Arc<Channel>, mut socket: WebSocket, address: Option<IpAddr>) {
    if channel.hub.admit().is_err() {
        let _ = socket
            .send(close(
                protocol::CLOSE_TOO_MANY_CONNECTIONS,
                "too_many_connections",
            ))
            .await;
        return;
    }
    let outcome = run(&channel, &mut socket, address).await;
    if let Some((code, reason)) = outcome {
        let _ = socket.send(close(code, reason)).await;
    }
}

/// The connection's life; the close to send, if the channel ends it.
async fn run(
    channel: &Channel,
    socket: &mut WebSocket,
    address: Option<IpAddr>,
) -> Option<(u16, &'static str)> {
    let Ok(Some(Ok(Message::Text(first)))) =
        tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await
    else {
        channel.hub.leave();
        return Some((CLOSE_POLICY, "hello_expected"));
    };
    let Ok(ClientFrame::Hello {
        visitor_id,
        visitor_token,
        identity: claimed,
        locale,
    }) = protocol::parse_client_frame(first.as_str(), &channel.limits)
    else {
        channel.hub.leave();
        return Some((CLOSE_POLICY, "hello_expected"));
    };
    // A visitor id is only resumed with its token; anything else starts a
    // new visitor, so a guessed id reads nothing.
    let visitor = match (visitor_id, visitor_token) {
        (Some(id), Some(token))
            if identity::is_visitor_id(&id)
                && identity::verify_visitor_token(channel.secret.expose(), &id, &token) =>
        {
            id
        }
        _ => identity::new_visitor_id(&mut rand::rng()),
    };
    let checked = identity::check_hello_identity(
        channel.identity_secret.as_ref().map(|s| s.expose()),
        claimed.as_ref(),
        channel.require_identity,
        &channel.channel_id,
    );
    if let IdentityCheck::Refused(_) = checked {
        channel.hub.leave();
        return Some((protocol::CLOSE_IDENTITY_REFUSED, "identity_refused"));
    }
    let identity = checked.sender(claimed.as_ref());
    let (frames, mut queued) = mpsc::channel(QUEUE);
    let tab = match channel.hub.register(&visitor, frames) {
        Ok(tab) => tab,
        Err(Full::Visitor | Full::Channel) => {
            channel.hub.leave();
            return Some((protocol::CLOSE_TOO_MANY_CONNECTIONS, "too_many_connections"));
        }
    };
    let outcome = converse(
        channel,
        socket,
        Visitor {
            id: &visitor,
            address,
            status: checked.status(),
            identity,
            locale: locale.unwrap_or_default(),
        },
        &mut queued,
    )
    .await;
    channel.hub.unregister(&visitor, tab);
    outcome
}

/// Who is on a connection, once `hello` is checked.
struct Visitor<'a> {
    id: &'a str,
    address: Option<IpAddr>,
    status: protocol::IdentityStatus,
    /// The identity the page passed, checked.
    identity: Option<SenderIdentity>,
    /// The page's language from `hello`; empty when it sent none.
    locale: String,
}

/// The address replies go to while the visitor is away: the one kept for
/// the visitor, replaced by a signed-in email identity that differs (the
/// page knows best who is signed in now).
async fn contact_of(channel: &Channel, visitor: &Visitor<'_>) -> Option<Contact> {
    let kept = offline::load_contact(&channel.state, visitor.id)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(channel = %channel.channel_id, error = %e, "contact address unreadable");
            None
        });
    let signed_in = visitor
        .identity
        .as_ref()
        .filter(|i| i.handle.kind() == omni_model::HandleKind::Email)
        .map(|i| Contact {
            email: i.handle.value().to_owned(),
            name: i.name.clone(),
        });
    match signed_in {
        Some(contact) if kept.as_ref() != Some(&contact) => {
            if let Err(e) = offline::save_contact(&channel.state, visitor.id, &contact).await {
                tracing::warn!(channel = %channel.channel_id, error = %e, "contact address not kept");
            }
            Some(contact)
        }
        _ => kept,
    }
}

/// The identity on the visitor's messages: the page's, else the address
/// the visitor left, as an unverified claim.
fn sender_of(
    identity: Option<&SenderIdentity>,
    contact: Option<&Contact>,
) -> Option<SenderIdentity> {
    identity.cloned().or_else(|| {
        let contact = contact?;
        Some(SenderIdentity {
            handle: omni_model::Handle::email(&contact.email).ok()?,
            verified: false,
            name: contact.name.clone(),
        })
    })
}

/// After `hello`: welcome, history, then frames both ways.
async fn converse(
    channel: &Channel,
    socket: &mut WebSocket,
    visitor: Visitor<'_>,
    queued: &mut mpsc::Receiver<ServerFrame>,
) -> Option<(u16, &'static str)> {
    let mut contact = contact_of(channel, &visitor).await;
    let mut sender = sender_of(visitor.identity.as_ref(), contact.as_ref());
    let welcome = ServerFrame::Welcome {
        visitor_id: visitor.id.to_owned(),
        visitor_token: identity::visitor_token(channel.secret.expose(), visitor.id),
        identity: visitor.status,
        contact_email: contact.as_ref().map(|c| c.email.clone()),
        email_replies: channel.offline.is_some(),
    };
    let visitor_id = visitor.id;
    let messages = channel.history.load(visitor_id).await.unwrap_or_default();
    for frame in [welcome, ServerFrame::History { messages }] {
        if socket
            .send(Message::Text(frame.to_text().into()))
            .await
            .is_err()
        {
            return None;
        }
    }
    let mut window = (Instant::now(), 0u32);
    let mut typing: Option<Instant> = None;
    loop {
        let incoming = tokio::select! {
            frame = queued.recv() => {
                let frame = frame?;
                if socket.send(Message::Text(frame.to_text().into())).await.is_err() {
                    return None;
                }
                continue;
            }
            incoming = tokio::time::timeout(channel.idle_timeout, socket.recv()) => incoming,
        };
        let text = match incoming {
            Err(_) => return Some((protocol::CLOSE_GOING_AWAY, "idle")),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => {
                send_error(
                    channel,
                    socket,
                    "binary_not_supported",
                    "frames are JSON text",
                    None,
                )
                .await;
                continue;
            }
        };
        let frame = match protocol::parse_client_frame(text.as_str(), &channel.limits) {
            Ok(frame) => frame,
            Err(error) => {
                // Name the message refused (a text too long, say), so the
                // widget gives it up instead of resending it forever.
                let id = refused_message_id(text.as_str());
                send_error(channel, socket, error.code(), &error.to_string(), id).await;
                continue;
            }
        };
        match frame {
            ClientFrame::Message {
                client_message_id,
                text,
                attachments,
            } => {
                // A fixed one-minute window: over the limit is refused, at
                // twice the limit the connection is closed.
                if window.0.elapsed() >= Duration::from_secs(60) {
                    window = (Instant::now(), 0);
                }
                window.1 += 1;
                if window.1 > 2 * channel.messages_per_minute {
                    return Some((protocol::CLOSE_RATE_LIMITED, "rate_limited"));
                }
                let address_allows = visitor
                    .address
                    .is_none_or(|address| channel.addresses.allow(address, Instant::now()));
                if window.1 > channel.messages_per_minute || !address_allows {
                    send_error(
                        channel,
                        socket,
                        "rate_limited",
                        "too many messages; wait a minute",
                        Some(client_message_id),
                    )
                    .await;
                    continue;
                }
                let reply = accept(
                    channel,
                    visitor_id,
                    &visitor.locale,
                    sender.as_ref(),
                    &client_message_id,
                    &text,
                    &attachments,
                )
                .await;
                if socket
                    .send(Message::Text(reply.to_text().into()))
                    .await
                    .is_err()
                {
                    return None;
                }
            }
            ClientFrame::Hello { .. } => {
                send_error(
                    channel,
                    socket,
                    "unexpected_hello",
                    "hello only opens a connection",
                    None,
                )
                .await;
            }
            ClientFrame::Typing { on } => {
                // Only the start of typing, at most every 10 s: enough for a
                // helpdesk's "typing…" without an event per keystroke.
                if on && typing.is_none_or(|at| at.elapsed() >= TYPING_EVERY) {
                    typing = Some(Instant::now());
                    activity(channel, visitor_id, "typing", Vec::new()).await;
                }
            }
            ClientFrame::Read { event_id } => {
                if channel.offline.is_some() {
                    // Read in time: the mailer will not email it.
                    let mark = StateUpdate {
                        seen: vec![offline::read_mark(&event_id)],
                        ..StateUpdate::default()
                    };
                    if let Err(e) = channel.writes.commit(mark).await {
                        tracing::warn!(channel = %channel.channel_id, error = %e, "read not kept");
                    }
                }
                activity(channel, visitor_id, "read", vec![("event_id", event_id)]).await;
            }
            ClientFrame::Contact { email } => {
                let left = Contact {
                    email,
                    name: sender.as_ref().and_then(|s| s.name.clone()),
                };
                let frame = match offline::save_contact(&channel.state, visitor_id, &left).await {
                    Ok(()) => {
                        let frame = ServerFrame::Contact {
                            email: left.email.clone(),
                        };
                        contact = Some(left);
                        sender = sender_of(visitor.identity.as_ref(), contact.as_ref());
                        frame
                    }
                    Err(e) => {
                        channel.metrics.refused("state_unavailable");
                        ServerFrame::error("state_unavailable", e.to_string())
                    }
                };
                if socket
                    .send(Message::Text(frame.to_text().into()))
                    .await
                    .is_err()
                {
                    return None;
                }
            }
        }
    }
}

/// The `error` frame refusing the message `client_message_id` for
/// `code`, counted.
fn refused(
    channel: &Channel,
    code: &'static str,
    message: impl Into<String>,
    client_message_id: &str,
) -> ServerFrame {
    channel.metrics.refused(code);
    ServerFrame::Error {
        code: code.to_owned(),
        message: message.into(),
        client_message_id: Some(client_message_id.to_owned()),
    }
}

/// Appends one message (unless a resend of one already durable) and
/// answers its `ack`, or an error the widget retries after.
async fn accept(
    channel: &Channel,
    visitor: &str,
    locale: &str,
    sender: Option<&SenderIdentity>,
    client_message_id: &str,
    text: &str,
    attachments: &[AttachmentRef],
) -> ServerFrame {
    let cx = ChatContext {
        channel_id: &channel.channel_id,
        received_at: omni_proto::timestamp(SystemTime::now()),
        language: locale,
    };
    // Only files this visitor uploaded: the records are keyed by visitor,
    // so another visitor's file id (or a guess) is unknown here.
    let files = if attachments.is_empty() {
        Vec::new()
    } else {
        let keys = attachments
            .iter()
            .map(|a| upload::record_key(visitor, &a.id))
            .collect();
        let records = match channel.state.get_many(keys).await {
            Ok(records) => records,
            Err(e) => {
                return refused(
                    channel,
                    "state_unavailable",
                    e.to_string(),
                    client_message_id,
                );
            }
        };
        match upload::resolve(attachments, records) {
            Ok(files) => files,
            Err(unknown) => {
                return refused(
                    channel,
                    "unknown_attachment",
                    format!("attachment {unknown} was not uploaded by this visitor"),
                    client_message_id,
                );
            }
        }
    };
    let event = match normalize::message_event(&cx, visitor, sender, client_message_id, text, files)
    {
        Ok(event) => event,
        Err(error) => {
            return refused(channel, error.code, error.message, client_message_id);
        }
    };
    let event_id = event.event_id.clone();
    let ack = ServerFrame::Ack {
        client_message_id: client_message_id.to_owned(),
        event_id: event_id.clone(),
    };
    match channel.state.seen(vec![event_id.clone()]).await {
        Ok(seen) if seen.first() == Some(&true) => {
            channel.metrics.duplicates.increment(1);
            return ack;
        }
        Ok(_) => {}
        Err(e) => {
            return refused(
                channel,
                "state_unavailable",
                e.to_string(),
                client_message_id,
            );
        }
    }
    let entry = crate::history::entry(&event);
    if let Err(error) = channel.sender.send_event(event).await {
        return refused(
            channel,
            "storage_unavailable",
            format!("not stored, send it again: {error}"),
            client_message_id,
        );
    }
    channel.metrics.accepted.increment(1);
    // Durable: the marks and the history only help, so their failure is
    // logged, never the message's.
    let update = StateUpdate {
        seen: vec![event_id],
        ..StateUpdate::default()
    };
    if let Err(e) = channel.writes.commit(update).await {
        tracing::warn!(channel = %channel.channel_id, error = %e, "message stored, but not marked seen");
    }
    if let Some(entry) = entry
        && let Err(e) = channel.history.append(visitor, entry).await
    {
        tracing::warn!(channel = %channel.channel_id, error = %e, "message stored, but not in the widget's history");
    }
    ack
}

async fn send_error(
    channel: &Channel,
    socket: &mut WebSocket,
    code: &'static str,
    message: &str,
    client_message_id: Option<String>,
) {
    channel.metrics.refused(code);
    let frame = ServerFrame::Error {
        code: code.to_owned(),
        message: message.to_owned(),
        client_message_id,
    };
    let _ = socket.send(Message::Text(frame.to_text().into())).await;
}

/// The `client_message_id` of a refused `message` frame, when the frame is
/// JSON enough to name a well-formed one.
fn refused_message_id(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = value.get("client_message_id")?.as_str()?;
    protocol::is_client_message_id(id).then(|| id.to_owned())
}

/// Appends what the visitor did that is not a message (`typing`, `read`)
/// as an activity: never opening a conversation, and best effort: a
/// failure is logged, the visitor is not told.
async fn activity(channel: &Channel, visitor: &str, name: &str, attributes: Vec<(&str, String)>) {
    let Ok(event) = normalize::activity_event(
        &ChatContext {
            channel_id: &channel.channel_id,
            received_at: omni_proto::timestamp(SystemTime::now()),
            language: "",
        },
        visitor,
        name,
        attributes,
    ) else {
        return;
    };
    if let Err(e) = channel.sender.send_event(event).await {
        tracing::debug!(channel = %channel.channel_id, error = %e, "chat activity not stored");
    }
}
