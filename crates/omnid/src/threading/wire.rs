//! Handles and timeline entries as the query API and the CLI read and
//! write them.

use omni_model::{Handle, HandleKind};
use omni_threading::{HandleKey, OutboxRow};
use serde_json::{Value, json};

/// Reads a handle as the query API and the CLI take it: a kind's wire name
/// (`email`, `phone`, `telegram`, ...), the value, and for channel-local
/// kinds (`external`, `chat_visitor`) the channel id as scope. Values are
/// normalized like the channels do (phones need their country code).
pub(crate) fn handle_key(
    kind: &str,
    value: &str,
    scope: Option<&str>,
) -> Result<HandleKey, String> {
    let kind: HandleKind = kind
        .parse()
        .map_err(|_| format!("unknown handle kind `{kind}`"))?;
    let scope = scope.filter(|s| !s.is_empty());
    let handle = Handle::provider(kind, value, scope).map_err(|e| e.to_string())?;
    Ok(HandleKey::from_handle(&handle))
}

/// Parses a handle in the form of inbound record keys, `kind:value` or
/// `kind:scope:value` ([`omni_model::HandleText`]), normalizing the value.
pub(super) fn parse_handle(text: &str) -> Result<HandleKey, String> {
    let handle: Handle = text.parse().map_err(|e| format!("handle `{text}`: {e}"))?;
    Ok(HandleKey::from_handle(&handle))
}

/// A handle key as JSON.
pub(crate) fn handle_json(key: &HandleKey) -> Value {
    json!({ "kind": key.kind, "scope": key.scope, "value": key.value })
}

/// A timeline entry as JSON: the protobuf JSON mapping of `TimelineEvent`.
pub(crate) fn entry_json(row: &OutboxRow) -> Value {
    serde_json::to_value(&row.event).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_parse_like_record_keys() {
        let email = parse_handle("email:Ana@Example.COM").unwrap();
        assert_eq!(
            (email.kind.as_str(), email.value.as_str()),
            ("email", "ana@example.com")
        );
        let phone = parse_handle("phone:+1 415 555 0134").unwrap();
        assert_eq!(phone.value, "+14155550134");
        let external = parse_handle("external:shop-api:user:7").unwrap();
        assert_eq!(
            (external.scope.as_str(), external.value.as_str()),
            ("shop-api", "user:7")
        );
        let telegram = parse_handle("telegram:12345").unwrap();
        assert_eq!(
            (telegram.scope.as_str(), telegram.value.as_str()),
            ("", "12345")
        );
        let wechat = parse_handle("wechat_openid:wx123:oUpF8u").unwrap();
        assert_eq!(
            (wechat.scope.as_str(), wechat.value.as_str()),
            ("wx123", "oUpF8u")
        );
        assert_eq!(wechat.to_string(), "wechat_openid:wx123:oUpF8u");
        assert!(parse_handle("fax:1").is_err());
        assert!(parse_handle("ana@example.com").is_err());
        assert!(parse_handle("external:no-scope").is_err());
    }
}
