//! One `msg_list` item of WeCom's `kf/sync_msg` (WeChat Customer Service)
//! to an event. Pure.
//!
//! - `origin` 3, a WeChat customer's message: an inbound
//!   `EVENT_KIND_MESSAGE` from the customer.
//! - `origin` 5, a reply an agent (servicer) typed in the WeCom app: an
//!   outbound `EVENT_KIND_MESSAGE` to the customer, with no sender (the
//!   agent's `servicer_userid` is in `provider_metadata`). Messages sent
//!   through `kf/send_msg` are never returned by `sync_msg`.
//! - `msgtype` `event` (`origin` 4): an `EVENT_KIND_ACTIVITY` of the
//!   customer it names, with the event's fields as attributes. An event
//!   that names no customer (`servicer_status_change`: an agent went
//!   on or off duty) has no conversation to join and is refused with the
//!   code [`SERVICER_EVENT`], which the puller counts and skips instead of
//!   dead-lettering.
//! - Any other `msgtype` (`unknown_msgtype`), `origin` (`unknown_origin`)
//!   or a malformed item is an error the puller dead-letters.
//!
//! Customers are `wecom_external_user` handles (`external_userid`) scoped
//! by the corp id. The conversation is `{open_kfid}:{external_userid}`.
//! Files are named by their media id exactly as for Official Accounts
//! ([`crate::oa::normalize::MEDIA_URI_PREFIX`]).

use std::collections::HashMap;

use omni_connector::{Inbound, ParseError};
use omni_model::{Handle, HandleKind};
use omni_proto::{
    Timestamp,
    v1::{Activity, ChannelKind, ConversationEvent, Direction, EventKind, ThreadingHints},
};
use serde_json::{Map, Value};

use crate::oa::normalize::{Body, join_lines, shown};

/// The error code of an event that names no customer (an agent's own
/// status): counted and skipped, not dead-lettered.
pub const SERVICER_EVENT: &str = "servicer_event";

/// Longest msgid, event type or id taken from an item.
const MAX_ID_LEN: usize = 256;

/// What normalization needs besides the item.
#[derive(Debug, Clone, Copy)]
pub struct KfContext<'a> {
    pub channel_id: &'a str,
    /// The WeCom corp id: the scope of its `external_userid`s.
    pub corp_id: &'a str,
    pub received_at: Timestamp,
}

/// Normalizes one `msg_list` item.
pub fn normalize(item: &Value, cx: &KfContext<'_>) -> Result<Inbound, ParseError> {
    let item = item
        .as_object()
        .ok_or_else(|| ParseError::new("invalid_item", "the item is not a JSON object"))?;
    let msgid = id(item, "msgid")?.ok_or_else(|| missing("msgid"))?;
    let msgtype = id(item, "msgtype")?.ok_or_else(|| missing("msgtype"))?;
    let sent_at = send_time(item)?;

    let mut body = Body::default();
    let (direction, kind, event) = if msgtype == "event" {
        let event = item
            .get("event")
            .and_then(Value::as_object)
            .ok_or_else(|| missing("event"))?;
        body.activity = Some(activity(event)?);
        (Direction::Inbound, EventKind::Activity, Some(event))
    } else {
        let direction = match item.get("origin").and_then(Value::as_i64) {
            Some(3) => Direction::Inbound,
            Some(5) => Direction::Outbound,
            _ => {
                return Err(ParseError::new(
                    "unknown_origin",
                    "`origin` is neither 3 (customer) nor 5 (servicer)",
                ));
            }
        };
        message_body(msgtype, item, &mut body)?;
        (direction, EventKind::Message, None)
    };

    // Events carry the account and the customer inside `event`.
    let lookup = |name: &str| -> Result<Option<&str>, ParseError> {
        match event.map(|e| id(e, name)).transpose()?.flatten() {
            Some(value) => Ok(Some(value)),
            None => id(item, name),
        }
    };
    let Some(external_userid) = lookup("external_userid")? else {
        return Err(if event.is_some() {
            ParseError::new(SERVICER_EVENT, "the event names no customer")
        } else {
            missing("external_userid")
        });
    };
    let open_kfid = lookup("open_kfid")?.ok_or_else(|| missing("open_kfid"))?;
    if !super::valid_open_kfid(open_kfid) {
        return Err(ParseError::new(
            "invalid_open_kfid",
            "`open_kfid` is not letters, digits, `_` and `-`",
        ));
    }
    let customer = Handle::provider(
        HandleKind::WecomExternalUser,
        external_userid,
        Some(cx.corp_id),
    )
    .map_err(|e| ParseError::new("invalid_customer", format!("`external_userid`: {e}")))?;
    let customer = omni_connector::handle::to_proto(&customer, "", true);

    body.metadata
        .insert("open_kfid".into(), open_kfid.to_owned());
    body.metadata.insert("msgtype".into(), msgtype.to_owned());
    if let Some(origin) = item.get("origin").and_then(scalar) {
        body.metadata.insert("origin".into(), origin);
    }
    if let Some(servicer) = lookup("servicer_userid")? {
        body.metadata
            .insert("servicer_userid".into(), servicer.to_owned());
    }
    let (sender, recipients) = match direction {
        Direction::Outbound => (None, vec![customer]),
        _ => (Some(customer), Vec::new()),
    };

    let event = ConversationEvent {
        event_id: omni_model::event_id(cx.channel_id, msgid).to_string(),
        channel_id: cx.channel_id.to_owned(),
        channel_kind: ChannelKind::Wechat as i32,
        direction: direction as i32,
        kind: kind as i32,
        sender,
        recipients,
        provider_message_id: msgid.to_owned(),
        sent_at: Some(sent_at),
        received_at: Some(cx.received_at),
        ingested_at: Some(cx.received_at),
        content: body.content(),
        threading: Some(ThreadingHints {
            provider_chat_id: format!("{open_kfid}:{external_userid}"),
            ..Default::default()
        }),
        provider_metadata: body.metadata,
        activity: body.activity,
        ..Default::default()
    };
    Ok(Inbound::new(event).with_media(body.media))
}

impl Body {
    /// Copies the scalar fields `names` of `part` into the metadata as
    /// `{msgtype}.{name}`.
    fn keep(&mut self, msgtype: &str, part: &Map<String, Value>, names: &[&str]) {
        for name in names {
            if let Some(value) = part.get(*name).and_then(scalar) {
                self.metadata.insert(format!("{msgtype}.{name}"), value);
            }
        }
    }
}

fn message_body(
    msgtype: &str,
    item: &Map<String, Value>,
    body: &mut Body,
) -> Result<(), ParseError> {
    let media_type = match msgtype {
        "image" => Some("image/jpeg"),
        // sync_msg returns AMR unless asked for SILK (`voice_format` 1).
        "voice" => Some("audio/amr"),
        "video" => Some("video/mp4"),
        "file" => Some("application/octet-stream"),
        _ => None,
    };
    let known = media_type.is_some()
        || matches!(
            msgtype,
            "text" | "location" | "link" | "business_card" | "miniprogram" | "msgmenu" | "channels"
        );
    if !known {
        return Err(ParseError::new(
            "unknown_msgtype",
            format!("msgtype {:?} is not ingested", shown(msgtype)),
        ));
    }
    let part = item
        .get(msgtype)
        .and_then(Value::as_object)
        .ok_or_else(|| missing(msgtype))?;
    if let Some(media_type) = media_type {
        let media_id = text(part, "media_id").ok_or_else(|| missing("media_id"))?;
        body.add_media(media_id, media_type)?;
        return Ok(());
    }
    match msgtype {
        "text" => {
            body.text = text(part, "content")
                .ok_or_else(|| missing("content"))?
                .to_owned();
            body.keep(msgtype, part, &["menu_id"]);
        }
        "location" => {
            let latitude = coordinate(part, "latitude", 90.0)?;
            let longitude = coordinate(part, "longitude", 180.0)?;
            body.metadata.insert("latitude".into(), latitude);
            body.metadata.insert("longitude".into(), longitude);
            body.keep(msgtype, part, &["name", "address"]);
            body.text = join_lines(&[
                text(part, "name").unwrap_or_default(),
                text(part, "address").unwrap_or_default(),
            ]);
        }
        "link" => {
            body.text = join_lines(&[
                text(part, "title").unwrap_or_default(),
                text(part, "desc").unwrap_or_default(),
                text(part, "url").unwrap_or_default(),
            ]);
            body.keep(msgtype, part, &["url", "pic_url"]);
        }
        "business_card" => body.keep(msgtype, part, &["userid"]),
        "miniprogram" => {
            body.text = text(part, "title").unwrap_or_default().to_owned();
            body.keep(msgtype, part, &["appid", "pagepath", "thumb_media_id"]);
        }
        "msgmenu" => body.text = menu_text(part),
        "channels" => {
            body.text = text(part, "title").unwrap_or_default().to_owned();
            body.keep(msgtype, part, &["nickname", "sub_type"]);
        }
        _ => {}
    }
    Ok(())
}

/// A menu message as the customer saw it: the head, one line per option,
/// the tail.
fn menu_text(menu: &Map<String, Value>) -> String {
    let mut lines = vec![text(menu, "head_content").unwrap_or_default()];
    for option in menu
        .get("list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = option
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(content) = option
            .get(kind)
            .and_then(Value::as_object)
            .and_then(|o| text(o, "content"))
        {
            lines.push(content);
        }
    }
    lines.push(text(menu, "tail_content").unwrap_or_default());
    join_lines(&lines)
}

/// The activity of an event, named for what happened.
fn activity(event: &Map<String, Value>) -> Result<Activity, ParseError> {
    let event_type = id(event, "event_type")?.ok_or_else(|| missing("event_type"))?;
    if !event_type
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(ParseError::new(
            "invalid_event_type",
            "`event_type` is not a lowercase word",
        ));
    }
    let name = match event_type {
        "enter_session" => "session_entered".to_owned(),
        "msg_send_fail" => "send_failed".to_owned(),
        "session_status_change" => "session_changed".to_owned(),
        "servicer_status_change" => "servicer_status_changed".to_owned(),
        "user_recall_msg" | "servicer_recall_msg" => "recall".to_owned(),
        other => format!("kf_{other}"),
    };
    Ok(Activity {
        name,
        attributes: attributes(event),
    })
}

/// The event's scalar fields under their own names, and those of a nested
/// object as `outer.inner` (`wechat_channels.nickname`).
fn attributes(event: &Map<String, Value>) -> HashMap<String, String> {
    let mut attributes = HashMap::new();
    for (name, value) in event {
        if let Some(value) = scalar(value) {
            attributes.insert(name.clone(), value);
        } else if let Some(inner) = value.as_object() {
            for (inner_name, inner_value) in inner {
                if let Some(value) = scalar(inner_value) {
                    attributes.insert(format!("{name}.{inner_name}"), value);
                }
            }
        }
    }
    attributes
}

/// A string, number or boolean as text.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A string field.
fn text<'v>(part: &'v Map<String, Value>, name: &str) -> Option<&'v str> {
    part.get(name).and_then(Value::as_str)
}

/// An id field: absent or empty is None; present, it must be a short
/// string without control characters.
fn id<'v>(part: &'v Map<String, Value>, name: &str) -> Result<Option<&'v str>, ParseError> {
    match part.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_ID_LEN && !s.chars().any(char::is_control) => {
            Ok(Some(s))
        }
        Some(_) => Err(ParseError::new(
            "invalid_item",
            format!("`{name}` is not a short string"),
        )),
    }
}

fn missing(name: &str) -> ParseError {
    ParseError::new("missing_field", format!("the item has no `{name}`"))
}

/// `send_time`: seconds since the Unix epoch.
fn send_time(item: &Map<String, Value>) -> Result<Timestamp, ParseError> {
    let invalid = || ParseError::new("invalid_send_time", "`send_time` is not a Unix time");
    let seconds = item
        .get("send_time")
        .ok_or_else(|| missing("send_time"))?
        .as_i64()
        .ok_or_else(invalid)?;
    omni_model::timestamp::checked_timestamp(seconds, 0).map_err(|_| invalid())
}

/// A latitude or longitude within `limit` degrees.
fn coordinate(part: &Map<String, Value>, name: &str, limit: f64) -> Result<String, ParseError> {
    match part.get(name).and_then(Value::as_f64) {
        Some(value) if value.is_finite() && value.abs() <= limit => Ok(value.to_string()),
        _ => Err(ParseError::new(
            "invalid_location",
            format!("`{name}` is not a coordinate"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use omni_connector::MediaRef;
    use omni_proto::v1::Attachment;

    use super::*;

    const AT: Timestamp = Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };

    const CX: KfContext<'static> = KfContext {
        channel_id: "kf",
        corp_id: "ww1234567890",
        received_at: AT,
    };

    const KFID: &str = "wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q";
    const CUSTOMER: &str = "wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw";

    fn sample(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/kf/sync_msg_items.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        all[name].clone()
    }

    fn event(name: &str) -> Inbound {
        normalize(&sample(name), &CX).unwrap_or_else(|e| panic!("{name}: {e:?}"))
    }

    fn error(item: &Value) -> &'static str {
        normalize(item, &CX).unwrap_err().code
    }

    fn is_customer(handle: &omni_proto::v1::IdentityHandle) {
        assert_eq!(
            handle.kind,
            omni_proto::v1::HandleKind::WecomExternalUser as i32
        );
        assert_eq!(handle.value, CUSTOMER);
        assert_eq!(handle.scope, "ww1234567890");
        assert!(handle.verified);
    }

    #[test]
    fn customer_text() {
        let inbound = event("text");
        let e = &inbound.event;
        assert_eq!(e.kind, EventKind::Message as i32);
        assert_eq!(e.direction, Direction::Inbound as i32);
        assert_eq!(e.channel_kind, ChannelKind::Wechat as i32);
        assert_eq!(e.provider_message_id, "from_msgid_4622416642169452483");
        assert_eq!(
            e.event_id,
            omni_model::event_id("kf", "from_msgid_4622416642169452483").to_string()
        );
        is_customer(e.sender.as_ref().unwrap());
        assert!(e.recipients.is_empty());
        assert_eq!(e.content.as_ref().unwrap().text, "你好");
        assert_eq!(e.sent_at.unwrap().seconds, 1615478585);
        assert_eq!(e.received_at, Some(AT));
        assert_eq!(e.ingested_at, Some(AT));
        assert_eq!(
            e.threading.as_ref().unwrap().provider_chat_id,
            format!("{KFID}:{CUSTOMER}")
        );
        let m = &e.provider_metadata;
        assert_eq!(m["open_kfid"], KFID);
        assert_eq!(m["origin"], "3");
        assert_eq!(m["msgtype"], "text");
        assert_eq!(m["text.menu_id"], "101");
        assert!(!m.contains_key("servicer_userid"));
        assert!(e.activity.is_none());
        assert!(inbound.media.is_empty());
    }

    #[test]
    fn servicer_reply_is_outbound() {
        let e = event("servicer_text").event;
        assert_eq!(e.kind, EventKind::Message as i32);
        assert_eq!(e.direction, Direction::Outbound as i32);
        assert!(e.sender.is_none());
        let [customer] = e.recipients.as_slice() else {
            panic!("{:?}", e.recipients)
        };
        is_customer(customer);
        assert_eq!(e.provider_metadata["servicer_userid"], "zhangsan");
        assert_eq!(e.provider_metadata["origin"], "5");
        assert_eq!(e.content.unwrap().text, "您好，请问有什么可以帮您？");
    }

    #[test]
    fn files_are_named_by_media_id() {
        for (name, media_type) in [
            ("image", "image/jpeg"),
            ("voice", "audio/amr"),
            ("video", "video/mp4"),
            ("file", "application/octet-stream"),
        ] {
            let inbound = event(name);
            let sample = sample(name);
            let media_id = sample[name]["media_id"].as_str().unwrap();
            assert_eq!(
                inbound.event.content.as_ref().unwrap().attachments,
                [Attachment {
                    name: String::new(),
                    media_type: media_type.into(),
                    size: 0,
                    sha256: String::new(),
                    uri: format!("wechat-media:{media_id}"),
                }],
                "{name}"
            );
            assert_eq!(
                inbound.media,
                [MediaRef {
                    attachment: 0,
                    source: format!("media:{media_id}")
                }]
            );
        }
    }

    #[test]
    fn other_message_types() {
        let e = event("location").event;
        assert_eq!(
            e.content.as_ref().unwrap().text,
            "广州国际媒体港(广州市海珠区)\n广东省广州市海珠区滨江东路"
        );
        assert_eq!(e.provider_metadata["latitude"], "23.1060218811035");
        assert_eq!(e.provider_metadata["longitude"], "113.3247528076172");
        let e = event("link").event;
        assert_eq!(e.content.as_ref().unwrap().text, "TITLE\nDESC\nURL");
        assert_eq!(e.provider_metadata["link.pic_url"], "PIC_URL");
        let e = event("business_card").event;
        assert_eq!(e.provider_metadata["business_card.userid"], "USERID");
        let e = event("miniprogram").event;
        assert_eq!(e.content.as_ref().unwrap().text, "TITLE");
        assert_eq!(e.provider_metadata["miniprogram.appid"], "APPID");
        assert_eq!(e.provider_metadata["miniprogram.pagepath"], "PAGE_PATH");
        let e = event("msgmenu").event;
        assert_eq!(e.direction, Direction::Outbound as i32);
        assert_eq!(
            e.content.as_ref().unwrap().text,
            "您对本次服务是否满意呢?\n满意\n不满意\n点击跳转到自助查询页面\n点击打开小程序查询更多\n欢迎再次光临"
        );
        let e = event("channels").event;
        assert_eq!(e.content.as_ref().unwrap().text, "视频号动态标题");
        assert_eq!(e.provider_metadata["channels.nickname"], "视频号名称");
        assert_eq!(e.provider_metadata["channels.sub_type"], "1");
    }

    fn activity_of(name: &str) -> (ConversationEvent, Activity) {
        let e = event(name).event;
        assert_eq!(e.kind, EventKind::Activity as i32, "{name}");
        assert_eq!(e.direction, Direction::Inbound as i32, "{name}");
        assert!(e.content.is_none(), "{name}");
        is_customer(e.sender.as_ref().unwrap());
        assert_eq!(
            e.threading.as_ref().unwrap().provider_chat_id,
            format!("{KFID}:{CUSTOMER}")
        );
        let activity = e.activity.clone().unwrap();
        (e, activity)
    }

    #[test]
    fn events_become_activities_of_the_customer() {
        let (e, a) = activity_of("enter_session");
        assert_eq!(a.name, "session_entered");
        assert_eq!(a.attributes["welcome_code"], "aaaaaa");
        assert_eq!(a.attributes["scene"], "123");
        assert_eq!(a.attributes["scene_param"], "abc");
        assert_eq!(a.attributes["event_type"], "enter_session");
        assert_eq!(a.attributes["wechat_channels.nickname"], "xxx");
        assert_eq!(a.attributes["wechat_channels.scene"], "1");
        assert_eq!(e.provider_metadata["origin"], "4");
        assert_eq!(e.provider_metadata["msgtype"], "event");
        assert_eq!(e.provider_metadata["open_kfid"], KFID);
        assert_eq!(e.sent_at.unwrap().seconds, 1548310702);

        let (_, a) = activity_of("msg_send_fail");
        assert_eq!(a.name, "send_failed");
        assert_eq!(a.attributes["fail_msgid"], "FAIL_MSGID");
        assert_eq!(a.attributes["fail_type"], "4");

        let (_, a) = activity_of("session_status_change");
        assert_eq!(a.name, "session_changed");
        assert_eq!(a.attributes["change_type"], "1");
        assert_eq!(a.attributes["new_servicer_userid"], "NEW_SERVICER_USERID");

        let (_, a) = activity_of("user_recall_msg");
        assert_eq!(a.name, "recall");
        assert_eq!(a.attributes["recall_msgid"], "RECALL_MSGID");

        let (e, a) = activity_of("servicer_recall_msg");
        assert_eq!(a.name, "recall");
        assert_eq!(a.attributes["event_type"], "servicer_recall_msg");
        assert_eq!(e.provider_metadata["servicer_userid"], "SERVICER_USERID");
    }

    #[test]
    fn events_without_a_customer_are_servicer_events() {
        assert_eq!(error(&sample("servicer_status_change")), SERVICER_EVENT);
        // With a customer named, an unlisted event keeps its type.
        let mut item = sample("user_recall_msg");
        item["event"]["event_type"] = "reject_customer_msg_switch_change".into();
        let e = normalize(&item, &CX).unwrap().event;
        assert_eq!(
            e.activity.unwrap().name,
            "kf_reject_customer_msg_switch_change"
        );
        // Top-level ids stand in when `event` lacks them.
        let mut item = sample("user_recall_msg");
        let event = item["event"].as_object_mut().unwrap();
        event.remove("external_userid");
        event.remove("open_kfid");
        item["external_userid"] = CUSTOMER.into();
        item["open_kfid"] = KFID.into();
        assert!(normalize(&item, &CX).is_ok());
    }

    #[test]
    fn broken_items_are_errors() {
        assert_eq!(error(&Value::Null), "invalid_item");
        assert_eq!(error(&serde_json::json!([1])), "invalid_item");
        let with = |f: &dyn Fn(&mut Value)| {
            let mut item = sample("text");
            f(&mut item);
            error(&item)
        };
        assert_eq!(
            with(&|i| i["msgtype"] = "merged_msg".into()),
            "unknown_msgtype"
        );
        assert_eq!(with(&|i| i["origin"] = 4.into()), "unknown_origin");
        assert_eq!(with(&|i| i["origin"] = "3".into()), "unknown_origin");
        assert_eq!(with(&|i| i["msgid"] = "".into()), "missing_field");
        assert_eq!(with(&|i| i["msgid"] = 7.into()), "invalid_item");
        assert_eq!(with(&|i| i["msgid"] = "a\u{0}b".into()), "invalid_item");
        assert_eq!(
            with(&|i| i["send_time"] = "soon".into()),
            "invalid_send_time"
        );
        assert_eq!(
            with(&|i| i["send_time"] = 1e300.into()),
            "invalid_send_time"
        );
        assert_eq!(
            with(&|i| i["send_time"] = 999_999_999_999_i64.into()),
            "invalid_send_time"
        );
        assert_eq!(
            with(&|i| {
                i.as_object_mut().unwrap().remove("send_time");
            }),
            "missing_field"
        );
        assert_eq!(
            with(&|i| {
                i.as_object_mut().unwrap().remove("external_userid");
            }),
            "missing_field"
        );
        assert_eq!(
            with(&|i| {
                i.as_object_mut().unwrap().remove("open_kfid");
            }),
            "missing_field"
        );
        assert_eq!(
            with(&|i| i["external_userid"] = " ".into()),
            "invalid_customer"
        );
        assert_eq!(with(&|i| i["text"] = "hi".into()), "missing_field");
        let mut image = sample("image");
        image["image"]["media_id"] = "bad id".into();
        assert_eq!(error(&image), "invalid_media_id");
        let mut location = sample("location");
        location["location"]["latitude"] = 91.into();
        assert_eq!(error(&location), "invalid_location");
        let mut event = sample("enter_session");
        event["event"]["event_type"] = "Enter Session".into();
        assert_eq!(error(&event), "invalid_event_type");
        event.as_object_mut().unwrap().remove("event");
        assert_eq!(error(&event), "missing_field");
    }
}
