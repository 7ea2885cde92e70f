//! The delivery-status event that reports what became of an outbound
//! message.

use std::time::SystemTime;

use omni_connector::Delivered;
use omni_proto::v1::{
    ConversationEvent, DeliveryState, DeliveryStatus, Direction, EventKind, ThreadingHints,
};

use crate::consume::timestamp;

/// The delivery-status event of `outbound`: same channel, the outbound
/// recipients (so it is keyed and threaded with the customer), the
/// outbound content and threading hints (so the timeline shows what was
/// sent), and for a sent message its provider id as `provider_message_id`
/// and `threading.message_id`, so the customer's answer threads onto it.
pub(super) fn delivery_status(
    outbound: &ConversationEvent,
    result: Result<&Delivered, &String>,
    now: SystemTime,
) -> ConversationEvent {
    let (state, provider_message_id, provider_status, error) = match result {
        Ok(delivered) => (
            DeliveryState::Sent,
            delivered.provider_message_id.clone(),
            delivered.provider_status.clone(),
            String::new(),
        ),
        Err(reason) => (
            DeliveryState::Failed,
            String::new(),
            String::new(),
            reason.clone(),
        ),
    };
    let threading = ThreadingHints {
        message_id: provider_message_id.clone(),
        ..outbound.threading.clone().unwrap_or_default()
    };
    ConversationEvent {
        event_id: omni_model::event_id(
            &outbound.channel_id,
            &format!("delivery:{}", outbound.event_id),
        )
        .to_string(),
        channel_id: outbound.channel_id.clone(),
        channel_kind: outbound.channel_kind,
        direction: Direction::Outbound as i32,
        kind: EventKind::DeliveryStatus as i32,
        sender: outbound.sender.clone(),
        recipients: outbound.recipients.clone(),
        provider_message_id,
        sent_at: outbound.sent_at,
        received_at: None,
        ingested_at: Some(timestamp(now)),
        content: outbound.content.clone(),
        threading: Some(threading),
        provider_metadata: outbound.provider_metadata.clone(),
        delivery: Some(DeliveryStatus {
            outbound_event_id: outbound.event_id.clone(),
            state: state as i32,
            provider_status,
            error,
        }),
        sender_identities: Vec::new(),
        attachment_stored: None,
        activity: None,
        // The language the message was written in, as the outbound event
        // says (an acknowledgement carries its template's language).
        language: outbound.language.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::fixtures::outbound;

    #[test]
    fn a_sent_status_carries_the_message_id_for_threading() {
        let outbound = outbound();
        let delivered = Delivered {
            provider_message_id: "abc@acme.example".into(),
            provider_status: "250 2.0.0 OK".into(),
        };
        let status = delivery_status(&outbound, Ok(&delivered), SystemTime::now());
        assert_eq!(
            status.event_id,
            omni_model::event_id("support-mail", &format!("delivery:{}", outbound.event_id))
                .to_string()
        );
        assert_eq!(status.kind, EventKind::DeliveryStatus as i32);
        assert_eq!(status.direction, Direction::Outbound as i32);
        assert_eq!(status.recipients, outbound.recipients);
        assert_eq!(status.provider_message_id, "abc@acme.example");
        let threading = status.threading.unwrap();
        assert_eq!(threading.message_id, "abc@acme.example");
        assert_eq!(threading.in_reply_to, ["m2@shop.example"]);
        let delivery = status.delivery.unwrap();
        assert_eq!(delivery.outbound_event_id, outbound.event_id);
        assert_eq!(delivery.state, DeliveryState::Sent as i32);
        assert_eq!(delivery.provider_status, "250 2.0.0 OK");
        assert!(delivery.error.is_empty());
    }

    #[test]
    fn a_failed_status_says_why() {
        let outbound = outbound();
        let rejected = "550 5.1.1 no such user".to_owned();
        let status = delivery_status(&outbound, Err(&rejected), SystemTime::now());
        assert!(status.provider_message_id.is_empty());
        assert!(status.threading.unwrap().message_id.is_empty());
        let delivery = status.delivery.unwrap();
        assert_eq!(delivery.state, DeliveryState::Failed as i32);
        assert_eq!(delivery.error, "550 5.1.1 no such user");
    }
}
