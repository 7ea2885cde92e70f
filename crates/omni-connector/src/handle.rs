//! Identity handles as they appear on the stream.

use omni_model::{Handle, HandleKind};
use omni_proto::v1::{self, IdentityHandle};

/// The stream form of a normalized handle.
pub fn to_proto(handle: &Handle, display_name: &str, verified: bool) -> IdentityHandle {
    IdentityHandle {
        kind: proto_kind(handle.kind()) as i32,
        value: handle.value().to_owned(),
        scope: handle.scope().unwrap_or_default().to_owned(),
        display_name: omni_model::normalize_display_name(display_name),
        verified,
    }
}

pub fn proto_kind(kind: HandleKind) -> v1::HandleKind {
    match kind {
        HandleKind::Email => v1::HandleKind::Email,
        HandleKind::Phone => v1::HandleKind::Phone,
        HandleKind::TelegramUser => v1::HandleKind::TelegramUser,
        HandleKind::WechatOpenid => v1::HandleKind::WechatOpenid,
        HandleKind::WechatUnionid => v1::HandleKind::WechatUnionid,
        HandleKind::Whatsapp => v1::HandleKind::Whatsapp,
        HandleKind::ChatVisitor => v1::HandleKind::ChatVisitor,
        HandleKind::External => v1::HandleKind::External,
    }
}

/// The model's kind of a stream handle kind (None for unspecified).
pub fn model_kind(kind: v1::HandleKind) -> Option<HandleKind> {
    HandleKind::ALL.into_iter().find(|k| proto_kind(*k) == kind)
}

/// The partitioning key of a handle on `omni.inbound.v1`:
/// `kind:value`, or `kind:scope:value` for scoped kinds, with the kind
/// spelled as everywhere else (`email`, `phone`, `telegram`, ...). All
/// messages of one sender share a key, so they keep their order. Consumers
/// should treat it as opaque and read the handle from the payload.
pub fn partition_key(handle: &IdentityHandle) -> String {
    let kind = v1::HandleKind::try_from(handle.kind)
        .ok()
        .and_then(model_kind)
        .map_or("unspecified", HandleKind::as_str);
    if handle.scope.is_empty() {
        format!("{kind}:{}", handle.value)
    } else {
        format!("{kind}:{}:{}", handle.scope, handle.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kind_scope_value() {
        let email = to_proto(
            &Handle::email("Li.Wei@Example.CN").unwrap(),
            " 李伟 ",
            false,
        );
        assert_eq!(partition_key(&email), "email:li.wei@example.cn");
        assert_eq!(email.display_name, "李伟");
        let ext = to_proto(
            &Handle::provider(HandleKind::External, "u-42", Some("acme")).unwrap(),
            "",
            true,
        );
        assert_eq!(partition_key(&ext), "external:acme:u-42");
        assert!(ext.verified);
        let telegram = to_proto(
            &Handle::provider(HandleKind::TelegramUser, "777", None).unwrap(),
            "",
            true,
        );
        assert_eq!(partition_key(&telegram), "telegram:777");
        for kind in HandleKind::ALL {
            assert_eq!(model_kind(proto_kind(kind)), Some(kind));
        }
    }
}
