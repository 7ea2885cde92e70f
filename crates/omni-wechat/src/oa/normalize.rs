//! An Official Account's messages and events (the fields of one
//! plaintext or decrypted XML body, see [`crate::xml`]) to events. Pure.
//!
//! - Messages (`text`, `image`, `voice`, `video`, `shortvideo`,
//!   `location`, `link`, `file`) become `EVENT_KIND_MESSAGE`. Their files
//!   are named by WeChat's media id: the attachment's `uri` is
//!   `wechat-media:{MediaId}` ([`MEDIA_URI_PREFIX`]) and a [`MediaRef`]
//!   (`media:{MediaId}`, [`crate::media::media_source`]) asks the media
//!   worker to download it once the message is durable. A `file` message
//!   has no media id (its `FileKey` cannot be downloaded through the media
//!   API), so its attachment keeps `wechat-file:{FileKey}`.
//! - Events (`subscribe`, `unsubscribe`, `SCAN`, `CLICK`, `VIEW`,
//!   `LOCATION`) become `EVENT_KIND_ACTIVITY`, with the event's own fields
//!   as the activity's attributes.
//! - Any other `MsgType` or `Event` is an error (`unknown_msg_type`,
//!   `unknown_event`): the driver dead-letters it rather than losing it.
//!
//! The provider message id, which makes a retried push the same event, is
//! `MsgId` for messages and `{FromUserName}:{CreateTime}:{Event}` for
//! events (WeChat documents `FromUserName` + `CreateTime` as the retry key
//! of events; the event name keeps two different events of one second
//! apart).

use std::collections::HashMap;

use omni_connector::{Inbound, MediaRef, ParseError};
use omni_model::{Handle, HandleKind};
use omni_proto::{
    Timestamp,
    v1::{
        Activity, Attachment, ChannelKind, Content, ConversationEvent, Direction, EventKind,
        IdentityHandle, ThreadingHints,
    },
};

use crate::xml::Fields;

/// The `uri` of an attachment still on WeChat's servers, followed by the
/// media id, until the media worker has stored the file.
pub const MEDIA_URI_PREFIX: &str = "wechat-media:";

/// The `uri` of a `file` message's attachment, followed by its `FileKey`
/// (WeChat offers no download of it through the media API).
pub const FILE_URI_PREFIX: &str = "wechat-file:";

/// Media ids are opaque ASCII; a longer or stranger one is not WeChat's.
const MAX_MEDIA_ID_LEN: usize = 512;

/// What normalization needs besides the message.
#[derive(Debug, Clone, Copy)]
pub struct OaContext<'a> {
    pub channel_id: &'a str,
    /// The account's AppID: the scope of its openids.
    pub app_id: &'a str,
    /// The scope of unionids (the Open Platform account), when configured.
    pub unionid_scope: Option<&'a str>,
    pub received_at: Timestamp,
}

/// The fields WeChat adds to every push: never activity attributes.
const ENVELOPE: &[&str] = &[
    "ToUserName",
    "FromUserName",
    "CreateTime",
    "MsgType",
    "Event",
    "Encrypt",
    "UnionId",
];

/// Fields copied into `provider_metadata` when present (the text and
/// identity fields have their own places).
const METADATA: &[&str] = &[
    "ToUserName",
    "MsgType",
    "MsgId",
    "MsgDataId",
    "Idx",
    "PicUrl",
    "MediaId",
    "Format",
    "ThumbMediaId",
    "Location_X",
    "Location_Y",
    "Scale",
    "Url",
    "FileKey",
    "FileMd5",
    "FileTotalLen",
    "Event",
    "AgentID",
];

/// The `uri` of an attachment that names a WeChat media id.
pub fn media_uri(media_id: &str) -> String {
    format!("{MEDIA_URI_PREFIX}{media_id}")
}

/// The attachment standing for a media id until it is stored, and the
/// download owed for it (attachment `index` of the message).
pub(crate) fn media_file(
    media_id: &str,
    media_type: &str,
    index: u32,
) -> Result<(Attachment, MediaRef), ParseError> {
    let id = media_id.trim();
    if id.is_empty() || id.len() > MAX_MEDIA_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ParseError::new(
            "invalid_media_id",
            "the media id is empty, too long or not printable ASCII",
        ));
    }
    Ok((
        Attachment {
            name: String::new(),
            media_type: media_type.to_owned(),
            size: 0,
            sha256: String::new(),
            uri: media_uri(id),
        },
        MediaRef {
            attachment: index,
            source: crate::media::media_source(id),
        },
    ))
}

/// The id a push dedupes by: `MsgId` for messages, and
/// `{FromUserName}:{CreateTime}:{Event}` for events.
pub fn provider_message_id(fields: &Fields) -> Result<String, ParseError> {
    if required(fields, "MsgType")? == "event" {
        let from = required(fields, "FromUserName")?;
        let created = required(fields, "CreateTime")?;
        parse_create_time(created)?;
        let event = required(fields, "Event")?;
        if event.is_empty() {
            return Err(ParseError::new("missing_field", "`Event` is empty"));
        }
        Ok(format!("{from}:{created}:{event}"))
    } else {
        let id = required(fields, "MsgId")?;
        id.parse::<u64>()
            .map_err(|_| ParseError::new("invalid_msg_id", "`MsgId` is not a 64-bit number"))?;
        Ok(id.to_owned())
    }
}

/// Normalizes one message or event.
pub fn normalize(fields: &Fields, cx: &OaContext<'_>) -> Result<Inbound, ParseError> {
    let msg_type = required(fields, "MsgType")?;
    let from = required(fields, "FromUserName")?;
    let sender = Handle::provider(HandleKind::WechatOpenid, from, Some(cx.app_id))
        .map_err(|e| ParseError::new("invalid_sender", format!("`FromUserName`: {e}")))?;
    let sent_at = parse_create_time(required(fields, "CreateTime")?)?;
    let pmid = provider_message_id(fields)?;

    let mut body = Body::default();
    let kind = if msg_type == "event" {
        body.activity = Some(activity(fields)?);
        EventKind::Activity
    } else {
        message_body(msg_type, fields, &mut body)?;
        EventKind::Message
    };
    for name in METADATA {
        if let Some(value) = fields.get(name) {
            body.metadata
                .insert((*name).to_owned(), value.trim().to_owned());
        }
    }

    let event = ConversationEvent {
        event_id: omni_model::event_id(cx.channel_id, &pmid).to_string(),
        channel_id: cx.channel_id.to_owned(),
        channel_kind: ChannelKind::Wechat as i32,
        direction: Direction::Inbound as i32,
        kind: kind as i32,
        sender: Some(omni_connector::handle::to_proto(&sender, "", true)),
        recipients: Vec::new(),
        provider_message_id: pmid,
        sent_at: Some(sent_at),
        received_at: Some(cx.received_at),
        ingested_at: Some(cx.received_at),
        content: body.content(),
        threading: Some(ThreadingHints {
            provider_chat_id: sender.value().to_owned(),
            ..Default::default()
        }),
        provider_metadata: body.metadata,
        sender_identities: unionid(fields, cx).into_iter().collect(),
        activity: body.activity,
        ..Default::default()
    };
    Ok(Inbound::new(event).with_media(body.media))
}

/// What a message says, gathered per type (by both kinds' normalizers).
#[derive(Default)]
pub(crate) struct Body {
    pub(crate) text: String,
    pub(crate) attachments: Vec<Attachment>,
    pub(crate) media: Vec<MediaRef>,
    pub(crate) metadata: HashMap<String, String>,
    pub(crate) activity: Option<Activity>,
}

impl Body {
    /// Activities carry no content.
    pub(crate) fn content(&self) -> Option<Content> {
        if self.activity.is_some() {
            return None;
        }
        Some(Content {
            text: self.text.clone(),
            attachments: self.attachments.clone(),
            ..Default::default()
        })
    }

    /// A file to download after the message is durable.
    pub(crate) fn add_media(&mut self, media_id: &str, media_type: &str) -> Result<(), ParseError> {
        let index = u32::try_from(self.attachments.len()).unwrap_or(u32::MAX);
        let (attachment, media) = media_file(media_id, media_type, index)?;
        self.attachments.push(attachment);
        self.media.push(media);
        Ok(())
    }
}

fn message_body(msg_type: &str, fields: &Fields, body: &mut Body) -> Result<(), ParseError> {
    match msg_type {
        "text" => {
            // The customer's words, white space included.
            required(fields, "Content")?;
            body.text = fields.get("Content").unwrap_or_default().to_owned();
        }
        "image" => body.add_media(required(fields, "MediaId")?, "image/jpeg")?,
        "voice" => {
            let format = fields.get("Format").unwrap_or_default().trim();
            body.add_media(required(fields, "MediaId")?, voice_media_type(format))?;
            if let Some(recognition) = fields.get("Recognition") {
                body.text = recognition.to_owned();
            }
        }
        "video" | "shortvideo" => body.add_media(required(fields, "MediaId")?, "video/mp4")?,
        "location" => {
            let latitude = coordinate(fields, "Location_X", 90.0)?;
            let longitude = coordinate(fields, "Location_Y", 180.0)?;
            body.metadata.insert("latitude".into(), latitude);
            body.metadata.insert("longitude".into(), longitude);
            if let Some(scale) = fields.get("Scale") {
                body.metadata
                    .insert("scale".into(), scale.trim().to_owned());
            }
            body.text = fields.get("Label").unwrap_or_default().to_owned();
        }
        "link" => {
            body.text = join_lines(&[
                fields.get("Title").unwrap_or_default(),
                fields.get("Description").unwrap_or_default(),
                fields.get("Url").unwrap_or_default(),
            ]);
        }
        "file" => body.attachments.push(file_attachment(fields)?),
        other => {
            return Err(ParseError::new(
                "unknown_msg_type",
                format!("MsgType {:?} is not ingested", shown(other)),
            ));
        }
    }
    Ok(())
}

/// WeChat sends voice as AMR or Speex (`Format`).
fn voice_media_type(format: &str) -> &'static str {
    if format.eq_ignore_ascii_case("amr") {
        "audio/amr"
    } else if format.eq_ignore_ascii_case("speex") {
        "audio/speex"
    } else {
        "application/octet-stream"
    }
}

/// A `file` message's attachment: named and sized, but with no media id to
/// download it by.
fn file_attachment(fields: &Fields) -> Result<Attachment, ParseError> {
    let size = match fields.get("FileTotalLen").map(str::trim) {
        None | Some("") => 0,
        Some(len) => len
            .parse::<u64>()
            .map_err(|_| ParseError::new("invalid_file", "`FileTotalLen` is not a byte count"))?,
    };
    let key = fields.get("FileKey").unwrap_or_default().trim();
    Ok(Attachment {
        name: fields.get("Title").unwrap_or_default().to_owned(),
        media_type: "application/octet-stream".to_owned(),
        size,
        sha256: String::new(),
        uri: if key.is_empty() {
            String::new()
        } else {
            format!("{FILE_URI_PREFIX}{key}")
        },
    })
}

/// A latitude or longitude, checked to be a number within `limit`
/// degrees, kept as WeChat wrote it.
fn coordinate(fields: &Fields, name: &str, limit: f64) -> Result<String, ParseError> {
    let raw = required(fields, name)?.trim();
    match raw.parse::<f64>() {
        Ok(value) if value.is_finite() && value.abs() <= limit => Ok(raw.to_owned()),
        _ => Err(ParseError::new(
            "invalid_location",
            format!("`{name}` is not a coordinate"),
        )),
    }
}

/// The activity of an event push.
fn activity(fields: &Fields) -> Result<Activity, ParseError> {
    let event = required(fields, "Event")?;
    let name = match event.to_ascii_lowercase().as_str() {
        "subscribe" => "subscribe",
        "unsubscribe" => "unsubscribe",
        "scan" => "scan",
        "click" => "menu_click",
        "view" => "menu_view",
        "location" => "location_report",
        _ => {
            return Err(ParseError::new(
                "unknown_event",
                format!("Event {:?} is not ingested", shown(event)),
            ));
        }
    };
    let attributes = fields
        .iter()
        .filter(|(name, _)| !ENVELOPE.contains(name))
        .map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
        .collect();
    Ok(Activity {
        name: name.to_owned(),
        attributes,
    })
}

/// The sender's unionid, when the push carries one: a verified identity
/// of the same person across the Open Platform account's apps. One that
/// is not a valid id is left out rather than failing the message.
fn unionid(fields: &Fields, cx: &OaContext<'_>) -> Option<IdentityHandle> {
    let value = fields.get("UnionId")?.trim();
    if value.is_empty() {
        return None;
    }
    let handle = Handle::provider(HandleKind::WechatUnionid, value, cx.unionid_scope).ok()?;
    Some(omni_connector::handle::to_proto(&handle, "", true))
}

/// A field every push of its kind has.
fn required<'f>(fields: &'f Fields, name: &str) -> Result<&'f str, ParseError> {
    fields
        .get(name)
        .map(str::trim)
        .ok_or_else(|| ParseError::new("missing_field", format!("no `{name}` field")))
}

/// `CreateTime`: seconds since the Unix epoch.
fn parse_create_time(raw: &str) -> Result<Timestamp, ParseError> {
    let invalid = || ParseError::new("invalid_create_time", "`CreateTime` is not a Unix time");
    let seconds = raw.parse::<i64>().map_err(|_| invalid())?;
    omni_model::timestamp::checked_timestamp(seconds, 0).map_err(|_| invalid())
}

/// Non-empty parts, one per line.
pub(crate) fn join_lines(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A provider value for an error message: bounded, since it is hostile.
pub(crate) fn shown(value: &str) -> String {
    value.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{XmlLimits, parse};

    const AT: Timestamp = Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };

    const CX: OaContext<'static> = OaContext {
        channel_id: "oa",
        app_id: "wx1234567890abcdef",
        unionid_scope: Some("open123"),
        received_at: AT,
    };

    fn fixture(name: &str) -> Fields {
        let path = format!("{}/tests/fixtures/oa/{name}", env!("CARGO_MANIFEST_DIR"));
        let body = std::fs::read(&path).unwrap();
        parse(&body, &XmlLimits::default()).unwrap()
    }

    fn inline(xml: &str) -> Fields {
        parse(xml.as_bytes(), &XmlLimits::default()).unwrap()
    }

    fn event(name: &str) -> Inbound {
        normalize(&fixture(name), &CX).unwrap_or_else(|e| panic!("{name}: {e:?}"))
    }

    fn error(fields: &Fields) -> &'static str {
        normalize(fields, &CX).unwrap_err().code
    }

    #[test]
    fn text_message() {
        let inbound = event("text.xml");
        let e = &inbound.event;
        assert_eq!(e.kind, EventKind::Message as i32);
        assert_eq!(e.channel_kind, ChannelKind::Wechat as i32);
        assert_eq!(e.direction, Direction::Inbound as i32);
        assert_eq!(e.provider_message_id, "1234567890123456");
        assert_eq!(
            e.event_id,
            omni_model::event_id("oa", "1234567890123456").to_string()
        );
        let sender = e.sender.as_ref().unwrap();
        assert_eq!(sender.kind, omni_proto::v1::HandleKind::WechatOpenid as i32);
        assert_eq!(sender.value, "fromUser");
        assert_eq!(sender.scope, "wx1234567890abcdef");
        assert!(sender.verified);
        assert!(e.sender_identities.is_empty());
        assert_eq!(e.content.as_ref().unwrap().text, "this is a test");
        assert_eq!(
            e.sent_at,
            Some(Timestamp {
                seconds: 1348831860,
                nanos: 0
            })
        );
        assert_eq!(e.received_at, Some(AT));
        assert_eq!(e.ingested_at, Some(AT));
        assert_eq!(e.threading.as_ref().unwrap().provider_chat_id, "fromUser");
        let m = &e.provider_metadata;
        assert_eq!(m["MsgType"], "text");
        assert_eq!(m["ToUserName"], "toUser");
        assert_eq!(m["MsgId"], "1234567890123456");
        assert_eq!(m["MsgDataId"], "xxxx");
        assert_eq!(m["Idx"], "xxxx");
        assert!(!m.contains_key("Content"));
        assert!(e.activity.is_none());
        assert!(inbound.media.is_empty());
    }

    #[test]
    fn image_names_its_media() {
        let inbound = event("image.xml");
        let content = inbound.event.content.as_ref().unwrap();
        assert_eq!(
            content.attachments,
            [Attachment {
                name: String::new(),
                media_type: "image/jpeg".into(),
                size: 0,
                sha256: String::new(),
                uri: "wechat-media:media_id".into(),
            }]
        );
        assert_eq!(
            inbound.media,
            [MediaRef {
                attachment: 0,
                source: "media:media_id".into()
            }]
        );
        assert_eq!(inbound.event.provider_metadata["PicUrl"], "this is a url");
        assert_eq!(content.text, "");
    }

    #[test]
    fn voice_video_and_shortvideo() {
        let voice = event("voice.xml");
        let attachment = &voice.event.content.as_ref().unwrap().attachments[0];
        // The sample's `Format` is the placeholder "Format".
        assert_eq!(attachment.media_type, "application/octet-stream");
        assert_eq!(voice.event.provider_metadata["Format"], "Format");
        let recognized = event("voice_recognition.xml");
        assert_eq!(
            recognized.event.content.as_ref().unwrap().text,
            "腾讯微信团队"
        );
        let amr = inline(
            "<xml><ToUserName>t</ToUserName><FromUserName>u</FromUserName><CreateTime>1</CreateTime><MsgType>voice</MsgType><MediaId>m</MediaId><Format>amr</Format><MsgId>7</MsgId></xml>",
        );
        let inbound = normalize(&amr, &CX).unwrap();
        assert_eq!(
            inbound.event.content.unwrap().attachments[0].media_type,
            "audio/amr"
        );
        assert_eq!(voice_media_type("speex"), "audio/speex");
        for name in ["video.xml", "shortvideo.xml"] {
            let inbound = event(name);
            let content = inbound.event.content.as_ref().unwrap();
            assert_eq!(content.attachments[0].media_type, "video/mp4", "{name}");
            assert_eq!(content.attachments[0].uri, "wechat-media:media_id");
            assert_eq!(inbound.media.len(), 1);
            assert_eq!(
                inbound.event.provider_metadata["ThumbMediaId"],
                "thumb_media_id"
            );
        }
    }

    #[test]
    fn location_and_link() {
        let e = event("location.xml").event;
        assert_eq!(e.content.as_ref().unwrap().text, "位置信息");
        assert_eq!(e.provider_metadata["latitude"], "23.134521");
        assert_eq!(e.provider_metadata["longitude"], "113.358803");
        assert_eq!(e.provider_metadata["scale"], "20");
        assert_eq!(e.provider_metadata["Location_X"], "23.134521");
        let e = event("link.xml").event;
        assert_eq!(
            e.content.as_ref().unwrap().text,
            "公众平台官网链接\n公众平台官网链接\nurl"
        );
        assert_eq!(e.provider_metadata["Url"], "url");
    }

    #[test]
    fn file_keeps_its_key() {
        let inbound = event("file.xml");
        assert!(inbound.media.is_empty());
        assert_eq!(
            inbound.event.content.unwrap().attachments,
            [Attachment {
                name: "invoice.pdf".into(),
                media_type: "application/octet-stream".into(),
                size: 230895,
                sha256: String::new(),
                uri: "wechat-file:BAAAAAAAAACJHA0y".into(),
            }]
        );
        assert_eq!(inbound.event.provider_message_id, "6537645505819204914");
    }

    fn activity_of(name: &str) -> (ConversationEvent, Activity) {
        let e = event(name).event;
        assert_eq!(e.kind, EventKind::Activity as i32, "{name}");
        assert!(e.content.is_none(), "{name}");
        let activity = e.activity.clone().unwrap();
        (e, activity)
    }

    #[test]
    fn events_become_activities() {
        let (e, a) = activity_of("subscribe.xml");
        assert_eq!(a.name, "subscribe");
        assert!(a.attributes.is_empty());
        assert_eq!(e.provider_message_id, "FromUser:123456789:subscribe");
        assert_eq!(
            e.event_id,
            omni_model::event_id("oa", "FromUser:123456789:subscribe").to_string()
        );
        assert_eq!(e.sender.as_ref().unwrap().value, "FromUser");
        assert_eq!(e.provider_metadata["Event"], "subscribe");
        assert_eq!(e.sent_at.unwrap().seconds, 123456789);

        let (_, a) = activity_of("subscribe_qrscene.xml");
        assert_eq!(a.name, "subscribe");
        assert_eq!(a.attributes["EventKey"], "qrscene_123123");
        assert_eq!(a.attributes["Ticket"], "TICKET");
        assert_eq!(a.attributes.len(), 2);

        let (_, a) = activity_of("unsubscribe.xml");
        assert_eq!(a.name, "unsubscribe");

        let (e, a) = activity_of("scan.xml");
        assert_eq!(a.name, "scan");
        assert_eq!(a.attributes["EventKey"], "SCENE_VALUE");
        assert_eq!(e.provider_message_id, "FromUser:123456789:SCAN");

        let (_, a) = activity_of("click.xml");
        assert_eq!(a.name, "menu_click");
        assert_eq!(a.attributes["EventKey"], "EVENTKEY");

        let (_, a) = activity_of("view.xml");
        assert_eq!(a.name, "menu_view");
        assert_eq!(a.attributes["EventKey"], "www.qq.com");
        assert_eq!(a.attributes["MenuId"], "MENUID");

        let (e, a) = activity_of("location_event.xml");
        assert_eq!(a.name, "location_report");
        assert_eq!(a.attributes["Latitude"], "23.137466");
        assert_eq!(a.attributes["Longitude"], "113.352425");
        assert_eq!(a.attributes["Precision"], "119.385040");
        assert_eq!(e.sender.unwrap().value, "fromUser");
    }

    #[test]
    fn unionid_is_a_verified_identity() {
        let f = inline(
            "<xml><ToUserName>t</ToUserName><FromUserName>oUser</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>hi</Content><MsgId>7</MsgId><UnionId>oUnion</UnionId></xml>",
        );
        let e = normalize(&f, &CX).unwrap().event;
        let [union] = e.sender_identities.as_slice() else {
            panic!("{:?}", e.sender_identities)
        };
        assert_eq!(union.kind, omni_proto::v1::HandleKind::WechatUnionid as i32);
        assert_eq!(union.value, "oUnion");
        assert_eq!(union.scope, "open123");
        assert!(union.verified);
        let unscoped = OaContext {
            unionid_scope: None,
            ..CX
        };
        let e = normalize(&f, &unscoped).unwrap().event;
        assert_eq!(e.sender_identities[0].scope, "");
        let f = inline(
            "<xml><FromUserName>oUser</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>subscribe</Event><UnionId>oUnion</UnionId></xml>",
        );
        let e = normalize(&f, &CX).unwrap().event;
        assert_eq!(e.sender_identities.len(), 1);
        assert!(e.activity.unwrap().attributes.is_empty());
    }

    #[test]
    fn unknown_types_and_events_are_errors() {
        let f = inline(
            "<xml><FromUserName>u</FromUserName><CreateTime>1</CreateTime><MsgType>miniprogrampage</MsgType><MsgId>7</MsgId></xml>",
        );
        assert_eq!(error(&f), "unknown_msg_type");
        let f = inline(
            "<xml><FromUserName>u</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>scancode_push</Event><ScanCodeInfo><ScanType>qrcode</ScanType></ScanCodeInfo></xml>",
        );
        assert_eq!(error(&f), "unknown_event");
    }

    #[test]
    fn broken_envelopes_are_errors() {
        let base = |from: &str, time: &str, id: &str| {
            inline(&format!(
                "<xml><FromUserName>{from}</FromUserName><CreateTime>{time}</CreateTime><MsgType>text</MsgType><Content>x</Content>{id}</xml>"
            ))
        };
        assert!(normalize(&base("u", "1", "<MsgId>7</MsgId>"), &CX).is_ok());
        assert_eq!(error(&base("", "1", "<MsgId>7</MsgId>")), "invalid_sender");
        assert_eq!(
            error(&base("u", "soon", "<MsgId>7</MsgId>")),
            "invalid_create_time"
        );
        assert_eq!(
            error(&base("u", "999999999999999", "<MsgId>7</MsgId>")),
            "invalid_create_time"
        );
        assert_eq!(error(&base("u", "1", "")), "missing_field");
        assert_eq!(
            error(&base("u", "1", "<MsgId>x7</MsgId>")),
            "invalid_msg_id"
        );
        assert_eq!(
            error(&inline("<xml><FromUserName>u</FromUserName></xml>")),
            "missing_field"
        );
        let no_media = inline(
            "<xml><FromUserName>u</FromUserName><CreateTime>1</CreateTime><MsgType>image</MsgType><MediaId> </MediaId><MsgId>7</MsgId></xml>",
        );
        assert_eq!(error(&no_media), "invalid_media_id");
        let bad_location = inline(
            "<xml><FromUserName>u</FromUserName><CreateTime>1</CreateTime><MsgType>location</MsgType><Location_X>north</Location_X><Location_Y>1</Location_Y><MsgId>7</MsgId></xml>",
        );
        assert_eq!(error(&bad_location), "invalid_location");
        let no_event = inline(
            "<xml><FromUserName>u</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType></xml>",
        );
        assert_eq!(error(&no_event), "missing_field");
    }

    #[test]
    fn provider_message_ids() {
        assert_eq!(
            provider_message_id(&fixture("text.xml")).unwrap(),
            "1234567890123456"
        );
        assert_eq!(
            provider_message_id(&fixture("click.xml")).unwrap(),
            "FromUser:123456789:CLICK"
        );
        // A retry is the same event.
        assert_eq!(
            event("scan.xml").event.event_id,
            event("scan.xml").event.event_id
        );
    }
}
