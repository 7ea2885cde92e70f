//! Deterministic ids of customers, conversations and timeline entries.
//!
//! Replaying `omni.inbound.v1` from the start must rebuild an identical
//! timeline, so no id the threading service hands out may be random: each is
//! a UUIDv5 of what caused it. The namespaces are fixed forever for the same
//! reason.

use std::fmt;

use omni_model::proto::kind_to_proto;
use omni_model::{Handle, HandleKind, HandleText};
use uuid::Uuid;

/// Namespace of customer ids (UUIDv5 of a handle key).
const CUSTOMER_NAMESPACE: Uuid = Uuid::from_u128(0x5c1b_64a2_8e0f_4d57_9a13_72c4_0b8e_d3f1);
/// Namespace of conversation ids (UUIDv5 of the opening event id).
const CONVERSATION_NAMESPACE: Uuid = Uuid::from_u128(0x0d9e_3a71_5b26_4c8f_b4e0_19a7_6f2c_8d45);
/// Namespace of the ids of timeline entries that are not messages.
const TIMELINE_NAMESPACE: Uuid = Uuid::from_u128(0x9f42_c8d1_7e3b_4a06_8c5d_2b91_e6a0_47f3);

/// A customer id: the UUIDv5 of one of the customer's handles.
///
/// Ids are ordered (by their hyphenated string, which orders like the
/// UUID's bytes), and a customer's id is always the smallest id derived
/// from any handle it ever had: that is what makes merges give the same
/// surviving id whatever order the evidence arrives in.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct CustomerId(String);

impl CustomerId {
    /// The id a customer created from `handle` gets.
    pub fn for_handle(handle: &HandleKey) -> CustomerId {
        let name = format!("{}\u{0}{}\u{0}{}", handle.kind, handle.scope, handle.value);
        CustomerId(
            Uuid::new_v5(&CUSTOMER_NAMESPACE, name.as_bytes())
                .hyphenated()
                .to_string(),
        )
    }

    /// The id of a customer a helpdesk command creates (unlink, split):
    /// from the command id, so it never collides with an id derived from
    /// a handle and a retried command names the same customer.
    pub fn for_command(command_id: &str) -> CustomerId {
        let name = format!("command\u{0}{command_id}");
        CustomerId(
            Uuid::new_v5(&CUSTOMER_NAMESPACE, name.as_bytes())
                .hyphenated()
                .to_string(),
        )
    }

    /// Wraps an id read back from storage or a URL.
    pub fn from_string(id: String) -> CustomerId {
        CustomerId(id)
    }

    /// The id as stored and published.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of the conversation an event opened.
pub fn conversation_id(opening_event_id: &str) -> String {
    Uuid::new_v5(&CONVERSATION_NAMESPACE, opening_event_id.as_bytes())
        .hyphenated()
        .to_string()
}

/// The id of a non-message timeline entry caused by `event_id`; `what`
/// distinguishes several entries caused by one event.
pub fn timeline_entry_id(event_id: &str, what: &str) -> String {
    let name = format!("{event_id}\u{0}{what}");
    Uuid::new_v5(&TIMELINE_NAMESPACE, name.as_bytes())
        .hyphenated()
        .to_string()
}

/// A normalized handle as stored: wire kind name, scope (empty for global
/// kinds) and value. Equal keys are the same identifier.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct HandleKey {
    /// The stable wire name of the kind (`email`, `phone`, ...).
    pub kind: String,
    /// The scope, or empty.
    pub scope: String,
    /// The normalized value.
    pub value: String,
}

impl HandleKey {
    /// The key of a normalized handle.
    pub fn from_handle(handle: &Handle) -> HandleKey {
        HandleKey {
            kind: handle.kind().as_str().to_owned(),
            scope: handle.scope().unwrap_or_default().to_owned(),
            value: handle.value().to_owned(),
        }
    }

    /// Rebuilds the proto handle (without display name) for timeline
    /// entries.
    pub fn to_proto(&self, verified: bool) -> omni_proto::v1::IdentityHandle {
        let kind = self
            .kind
            .parse::<HandleKind>()
            .map_or(omni_proto::v1::HandleKind::Unspecified, kind_to_proto);
        omni_proto::v1::IdentityHandle {
            kind: kind as i32,
            value: self.value.clone(),
            scope: self.scope.clone(),
            display_name: String::new(),
            verified,
        }
    }
}

impl fmt::Display for HandleKey {
    /// The handle's [`HandleText`], the same bytes as its inbound record
    /// key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        HandleText {
            kind: &self.kind,
            scope: &self.scope,
            value: &self.value,
        }
        .fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use omni_model::proto::{partition_key, to_proto};

    use super::*;

    #[test]
    fn keys_print_as_record_keys() {
        for handle in [
            Handle::email("Ana@Example.COM").unwrap(),
            Handle::provider(HandleKind::TelegramUser, "777", None).unwrap(),
            Handle::provider(HandleKind::WechatOpenid, "oUpF8u", Some("wx1")).unwrap(),
            Handle::provider(HandleKind::External, "user:7", Some("shop-api")).unwrap(),
        ] {
            let key = HandleKey::from_handle(&handle);
            let proto = to_proto(&handle, "", true);
            assert_eq!(key.to_string(), partition_key(&proto));
            assert_eq!(key.to_proto(true), proto);
        }
        let external = Handle::provider(HandleKind::External, "user:7", Some("shop-api")).unwrap();
        assert_eq!(
            HandleKey::from_handle(&external).to_string(),
            "external:shop-api:user:7"
        );
    }
}
