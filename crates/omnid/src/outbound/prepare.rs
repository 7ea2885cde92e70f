//! `POST /v1/outbound`'s checks: what a posted reply must say, and what the
//! daemon fills in before it goes on the outbound topic.

use std::time::SystemTime;

use axum::http::StatusCode;
use omni_proto::v1::{ConversationEvent, Direction, EventKind};

use crate::{channels::ChannelSet, consume::timestamp};

/// Longest idempotency key (`provider_message_id`) the API accepts.
pub(super) const MAX_IDEMPOTENCY_KEY_BYTES: usize = 512;

/// Why `POST /v1/outbound` refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            message: message.into(),
        }
    }
}

/// Checks a message posted to `POST /v1/outbound` and completes it for the
/// outbound topic: direction and kind (when unset), the channel's kind,
/// `event_id` from the channel and the client's idempotency key
/// (`provider_message_id`), and `ingested_at`.
pub(crate) fn prepare(
    mut event: ConversationEvent,
    channels: &ChannelSet,
    now: SystemTime,
) -> Result<ConversationEvent, Refusal> {
    if event.channel_id.is_empty() {
        return Err(Refusal::invalid("channel_id is required"));
    }
    let Some(channel) = channels.get(&event.channel_id) else {
        return Err(Refusal {
            status: StatusCode::NOT_FOUND,
            code: "unknown_channel",
            message: format!("no channel with id {:?}", event.channel_id),
        });
    };
    if channel.connector.outbound().is_none() {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "outbound_not_supported",
            message: format!(
                "channel {:?} (kind {}) cannot send messages",
                event.channel_id, channel.kind
            ),
        });
    }
    let key = &event.provider_message_id;
    if key.is_empty() {
        return Err(Refusal::invalid(
            "provider_message_id (your idempotency key for this message) is required",
        ));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES || key.chars().any(char::is_control) {
        return Err(Refusal::invalid(format!(
            "provider_message_id must be at most {MAX_IDEMPOTENCY_KEY_BYTES} bytes without control characters"
        )));
    }
    if !matches!(
        Direction::try_from(event.direction),
        Ok(Direction::Unspecified | Direction::Outbound)
    ) {
        return Err(Refusal::invalid(
            "direction must be DIRECTION_OUTBOUND or left out",
        ));
    }
    if !matches!(
        EventKind::try_from(event.kind),
        Ok(EventKind::Unspecified | EventKind::Message)
    ) {
        return Err(Refusal::invalid(
            "kind must be EVENT_KIND_MESSAGE or left out",
        ));
    }
    if event.delivery.is_some() {
        return Err(Refusal::invalid(
            "delivery is reported by the daemon, not posted",
        ));
    }
    if event.recipients.is_empty() {
        return Err(Refusal::invalid(
            "recipients must name at least one recipient",
        ));
    }
    let has_body = event
        .content
        .as_ref()
        .is_some_and(|c| !c.text.trim().is_empty() || !c.html.trim().is_empty());
    if !has_body {
        return Err(Refusal::invalid("content.text or content.html is required"));
    }
    let event_id = omni_model::event_id(&event.channel_id, key).to_string();
    if !event.event_id.is_empty() && event.event_id != event_id {
        return Err(Refusal::invalid(
            "event_id is derived from channel_id and provider_message_id; leave it out",
        ));
    }
    event.event_id = event_id;
    event.direction = Direction::Outbound as i32;
    event.kind = EventKind::Message as i32;
    event.channel_kind = channel.channel_kind as i32;
    event.ingested_at = Some(timestamp(now));
    Ok(event)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use omni_proto::v1::{ChannelKind, DeliveryStatus};

    use super::*;
    use crate::outbound::fixtures::{channels, posted};

    #[test]
    fn prepare_completes_a_posted_reply() {
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let event = prepare(posted(), &channels(), now).unwrap();
        assert_eq!(
            event.event_id,
            omni_model::event_id("support-mail", "ticket-19/reply-3").to_string()
        );
        assert_eq!(event.direction, Direction::Outbound as i32);
        assert_eq!(event.kind, EventKind::Message as i32);
        assert_eq!(event.channel_kind, ChannelKind::Email as i32);
        assert_eq!(event.ingested_at.unwrap().seconds, 1_767_225_600);
        // A retry with the same key gets the same id, also when it says so.
        let mut again = posted();
        again.event_id = event.event_id.clone();
        assert_eq!(
            prepare(again, &channels(), now).unwrap().event_id,
            event.event_id
        );
    }

    #[test]
    fn prepare_refuses_what_cannot_be_sent() {
        let now = SystemTime::now();
        let refuse = |edit: fn(&mut ConversationEvent)| {
            let mut event = posted();
            edit(&mut event);
            let refusal = prepare(event, &channels(), now).unwrap_err();
            (refusal.status, refusal.code)
        };
        let bad = (StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(
            refuse(|e| e.channel_id = "nope".into()),
            (StatusCode::NOT_FOUND, "unknown_channel")
        );
        assert_eq!(
            refuse(|e| e.channel_id = "shop-api".into()),
            (StatusCode::BAD_REQUEST, "outbound_not_supported")
        );
        assert_eq!(refuse(|e| e.channel_id.clear()), bad);
        assert_eq!(refuse(|e| e.provider_message_id.clear()), bad);
        assert_eq!(refuse(|e| e.provider_message_id = "a\nb".into()), bad);
        assert_eq!(refuse(|e| e.recipients.clear()), bad);
        assert_eq!(refuse(|e| e.content = None), bad);
        assert_eq!(refuse(|e| e.direction = Direction::Inbound as i32), bad);
        assert_eq!(refuse(|e| e.kind = EventKind::DeliveryStatus as i32), bad);
        assert_eq!(refuse(|e| e.event_id = "made-up".into()), bad);
        assert_eq!(
            refuse(|e| e.delivery = Some(DeliveryStatus::default())),
            bad
        );
    }
}
