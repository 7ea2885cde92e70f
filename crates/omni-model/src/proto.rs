//! Handles on the stream: the one mapping between the model's kinds and
//! `omni.v1.HandleKind`, and the inbound topic's partitioning key.

use omni_proto::v1::{self, IdentityHandle};

use crate::{Handle, HandleKind, HandleText};

/// The stream's kind of a model kind.
pub const fn kind_to_proto(kind: HandleKind) -> v1::HandleKind {
    match kind {
        HandleKind::Email => v1::HandleKind::Email,
        HandleKind::Phone => v1::HandleKind::Phone,
        HandleKind::TelegramUser => v1::HandleKind::TelegramUser,
        HandleKind::WechatOpenid => v1::HandleKind::WechatOpenid,
        HandleKind::WechatUnionid => v1::HandleKind::WechatUnionid,
        HandleKind::Whatsapp => v1::HandleKind::Whatsapp,
        HandleKind::ChatVisitor => v1::HandleKind::ChatVisitor,
        HandleKind::External => v1::HandleKind::External,
        HandleKind::WecomExternalUser => v1::HandleKind::WecomExternalUser,
        HandleKind::MessengerPsid => v1::HandleKind::MessengerPsid,
        HandleKind::InstagramIgsid => v1::HandleKind::InstagramIgsid,
    }
}

/// The model's kind of a stream handle's kind number; `None` for
/// `UNSPECIFIED` and for a number a newer producer added.
pub fn kind_from_proto(kind: i32) -> Option<HandleKind> {
    HandleKind::ALL
        .into_iter()
        .find(|k| kind_to_proto(*k) as i32 == kind)
}

/// The stream form of a normalized handle.
pub fn to_proto(handle: &Handle, display_name: &str, verified: bool) -> IdentityHandle {
    IdentityHandle {
        kind: kind_to_proto(handle.kind()) as i32,
        value: handle.value().to_owned(),
        scope: handle.scope().unwrap_or_default().to_owned(),
        display_name: crate::normalize_display_name(display_name),
        verified,
    }
}

/// The partitioning key of a handle on `omni.inbound.v1`: its
/// [`HandleText`] (`unspecified` as the kind when it has none). All
/// messages of one sender share a key, so they keep their order. Consumers
/// should treat it as opaque and read the handle from the payload.
pub fn partition_key(handle: &IdentityHandle) -> String {
    HandleText {
        kind: kind_from_proto(handle.kind).map_or("unspecified", HandleKind::as_str),
        scope: &handle.scope,
        value: &handle.value,
    }
    .to_string()
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
            assert_eq!(kind_from_proto(kind_to_proto(kind) as i32), Some(kind));
        }
    }

    #[test]
    fn kinds_map_one_to_one() {
        let wire: Vec<(HandleKind, v1::HandleKind)> = HandleKind::ALL
            .into_iter()
            .map(|k| (k, kind_to_proto(k)))
            .collect();
        assert_eq!(
            wire,
            [
                (HandleKind::Email, v1::HandleKind::Email),
                (HandleKind::Phone, v1::HandleKind::Phone),
                (HandleKind::TelegramUser, v1::HandleKind::TelegramUser),
                (HandleKind::WechatOpenid, v1::HandleKind::WechatOpenid),
                (HandleKind::WechatUnionid, v1::HandleKind::WechatUnionid),
                (HandleKind::Whatsapp, v1::HandleKind::Whatsapp),
                (HandleKind::ChatVisitor, v1::HandleKind::ChatVisitor),
                (HandleKind::External, v1::HandleKind::External),
                (
                    HandleKind::WecomExternalUser,
                    v1::HandleKind::WecomExternalUser
                ),
                (HandleKind::MessengerPsid, v1::HandleKind::MessengerPsid),
                (HandleKind::InstagramIgsid, v1::HandleKind::InstagramIgsid),
            ]
        );
        assert_eq!(kind_from_proto(v1::HandleKind::Unspecified as i32), None);
        assert_eq!(kind_from_proto(999), None);
        assert_eq!(kind_from_proto(-1), None);
    }

    #[test]
    fn unspecified_kind_keys_say_so() {
        let handle = IdentityHandle {
            value: "x".into(),
            scope: "s".into(),
            ..Default::default()
        };
        assert_eq!(partition_key(&handle), "unspecified:s:x");
    }

    #[test]
    fn partition_key_is_the_handle_text() {
        for (handle, key) in [
            (Handle::email("Ana@Example.COM"), "email:ana@example.com"),
            (
                Handle::provider(HandleKind::Phone, "+1 415 555 0134", None),
                "phone:+14155550134",
            ),
            (
                Handle::provider(HandleKind::WechatOpenid, "oUpF8u", Some("wx123")),
                "wechat_openid:wx123:oUpF8u",
            ),
            (
                Handle::provider(HandleKind::ChatVisitor, "v:1", Some("web")),
                "chat_visitor:web:v:1",
            ),
        ] {
            let handle = handle.unwrap();
            assert_eq!(partition_key(&to_proto(&handle, "", false)), key);
            assert_eq!(handle.to_string(), key);
        }
    }
}
