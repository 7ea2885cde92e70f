//! Deterministic event ids.
//!
//! A provider retries a webhook, an IMAP fetch is replayed after a crash, a
//! Telegram update is redelivered: each time the connector must produce the
//! same event id, so the threading service can drop the duplicate. Hence the
//! id is a name-based UUID of where the message came from, never a random
//! one, and the derivation must never change.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// The UUIDv5 namespace of Omnid event ids.
///
/// Generated once at random for this project. Changing it would give every
/// message a new id, so replays after an upgrade would slip past
/// deduplication: it is fixed forever.
pub const NAMESPACE: Uuid = Uuid::from_u128(0xd641_8134_c9bf_4075_b3ea_05e5_1e00_7fec);

/// The id of one event on the stream (`ce_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Uuid);

impl EventId {
    /// Wraps a UUID read back from storage or the wire.
    pub const fn from_uuid(uuid: Uuid) -> EventId {
        EventId(uuid)
    }

    /// The UUID, for storage and protobuf conversions.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// A string that is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event id")]
pub struct ParseEventIdError;

impl FromStr for EventId {
    type Err = ParseEventIdError;

    /// Accepts any UUID spelling the `uuid` crate does (hyphenated, simple,
    /// braced, urn, either case); [`Display`](fmt::Display) always writes
    /// lower-case hyphenated.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(EventId)
            .map_err(|_| ParseEventIdError)
    }
}

/// The id of the event for one provider message.
///
/// UUIDv5 under [`NAMESPACE`] of `channel_id ++ 0x00 ++ provider_message_id`.
/// The channel id keeps two channels' message numbers apart (two Telegram
/// bots both have a message 1); the NUL separator keeps `("ab", "c")` apart
/// from `("a", "bc")`, and cannot occur in either part since neither config
/// ids nor provider ids carry control characters.
pub fn event_id(channel_id: &str, provider_message_id: &str) -> EventId {
    let mut name = Vec::with_capacity(channel_id.len() + 1 + provider_message_id.len());
    name.extend_from_slice(channel_id.as_bytes());
    name.push(0);
    name.extend_from_slice(provider_message_id.as_bytes());
    EventId(Uuid::new_v5(&NAMESPACE, &name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_value_never_changes() {
        // Computed independently with Python:
        // uuid.uuid5(UUID("d6418134-c9bf-4075-b3ea-05e51e007fec"), "telegram-main\x0012345")
        assert_eq!(
            NAMESPACE.to_string(),
            "d6418134-c9bf-4075-b3ea-05e51e007fec"
        );
        assert_eq!(
            event_id("telegram-main", "12345").to_string(),
            "65fa96f4-d8c7-5e3d-ad7f-16c7267f481d"
        );
    }

    #[test]
    fn deterministic_and_version_5() {
        let a = event_id("sms-ir", "SM0123456789abcdef");
        assert_eq!(a, event_id("sms-ir", "SM0123456789abcdef"));
        assert_eq!(a.as_uuid().get_version_num(), 5);
    }

    #[test]
    fn separator_prevents_collision() {
        assert_ne!(event_id("ab", "c"), event_id("a", "bc"));
        assert_ne!(event_id("", "abc"), event_id("abc", ""));
    }

    #[test]
    fn different_channels_differ() {
        assert_ne!(event_id("telegram-a", "1"), event_id("telegram-b", "1"));
        assert_ne!(event_id("telegram-a", "1"), event_id("telegram-a", "2"));
    }

    #[test]
    fn display_and_parse_round_trip() {
        let id = event_id("email-support", "<CAF=abc@mail.gmail.com>");
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<EventId>(), Ok(id));
        assert_eq!(text.to_uppercase().parse::<EventId>(), Ok(id));
        assert_eq!("not-a-uuid".parse::<EventId>(), Err(ParseEventIdError));
        assert_eq!(EventId::from_uuid(*id.as_uuid()), id);
    }
}
