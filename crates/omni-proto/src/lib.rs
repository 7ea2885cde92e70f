//! The Omnid stream schema as Rust types.
//!
//! Everything here is generated from `proto/omni/v1/*.proto`; the `.proto`
//! files are the contract helpdesk products read, so documentation lives
//! there. This crate adds no behaviour beyond the generated code and the
//! protobuf JSON mapping (serde), so that every other crate can depend on it
//! without pulling in I/O.

/// Version 1 of the schema (package `omni.v1`).
pub mod v1 {
    #![allow(missing_docs, clippy::all, missing_debug_implementations)]
    include!(concat!(env!("OUT_DIR"), "/omni.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/omni.v1.serde.rs"));
}

pub use pbjson_types::Timestamp;
pub use prost::Message;

/// A wall-clock time as a protobuf `Timestamp` (times before 1970 become
/// the epoch: no event predates Omnid's clock that far).
pub fn timestamp(time: std::time::SystemTime) -> Timestamp {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

/// The encoded `FileDescriptorSet` of the schema, for tools that decode the
/// stream reflectively.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/omni_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::v1::*;
    use prost::Message;

    #[test]
    fn protobuf_and_json_round_trip() {
        let event = ConversationEvent {
            event_id: "6f1c".into(),
            channel_id: "acme-api".into(),
            channel_kind: ChannelKind::Api as i32,
            direction: Direction::Inbound as i32,
            kind: EventKind::Message as i32,
            sender: Some(IdentityHandle {
                kind: HandleKind::Email as i32,
                value: "li.wei@example.cn".into(),
                display_name: "李伟".into(),
                ..Default::default()
            }),
            content: Some(Content {
                text: "你好".into(),
                ..Default::default()
            }),
            sent_at: Some(pbjson_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            ..Default::default()
        };
        let bytes = event.encode_to_vec();
        assert_eq!(ConversationEvent::decode(bytes.as_slice()).unwrap(), event);

        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["channelKind"], "CHANNEL_KIND_API");
        assert_eq!(json["sender"]["displayName"], "李伟");
        // RFC 3339, as the protobuf JSON mapping requires.
        let sent_at = json["sentAt"].as_str().unwrap();
        assert!(
            sent_at.starts_with("2023-11-14T22:13:20.000000005"),
            "{sent_at}"
        );
        let back: ConversationEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
