//! WeChat as the daemon sees it, for end-to-end tests of the `wechat_oa`
//! and `wecom_kf` channels: what WeChat's servers post to a server URL
//! (signed, and encrypted in compatible and safe mode), what WeCom posts to
//! a callback URL, and a local server speaking both platforms' HTTP APIs.
//!
//! The signatures and the AES framing are written here from the published
//! algorithm, independently of `omni-wechat`: a test that checked the
//! channel with the channel's own code would only prove it agrees with
//! itself.
//!
//! - [`signature`], [`msg_signature`], [`encrypt`], [`decrypt`]: WeChat's
//!   message security (消息加解密), shared by Official Accounts and WeCom.
//! - [`OfficialAccount`]: requests to an Official Account's server URL in
//!   plaintext, compatible and safe mode, and its GET URL check; the XML
//!   samples of WeChat's documentation ([`text_message`],
//!   [`image_message`], [`voice_message`], [`subscribe_event`]).
//! - [`WecomApp`]: WeCom's `kf_msg_or_event` callback and its URL check;
//!   the `kf/sync_msg` message samples ([`kf_text`], [`kf_servicer_text`],
//!   [`kf_enter_session`], [`kf_image`]).
//! - [`FakeWechat`]: `api.weixin.qq.com` and `qyapi.weixin.qq.com` on
//!   loopback: access tokens, media, customer-service messages, user info
//!   and WeChat Customer Service's `sync_msg`/`send_msg`, with programmable
//!   failures and a record of every call.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aes::Aes256;
use axum::{
    Router,
    body::Bytes,
    extract::{Multipart, Query, State},
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{
    Engine, alphabet,
    engine::{
        DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig,
        general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    },
};
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, generic_array::GenericArray};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

// ---------------------------------------------------------------------------
// Signatures and encryption
// ---------------------------------------------------------------------------

/// The `signature` of a server-URL request: SHA-1 (lowercase hex) of the
/// token, timestamp and nonce, sorted and concatenated.
pub fn signature(token: &str, timestamp: &str, nonce: &str) -> String {
    sha1_of_sorted(&[token, timestamp, nonce])
}

/// The `msg_signature` of an encrypted request: the same over the token,
/// timestamp, nonce and the `Encrypt` value (or the encrypted `echostr`).
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    sha1_of_sorted(&[token, timestamp, nonce, encrypt])
}

fn sha1_of_sorted(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    hex::encode(Sha1::digest(sorted.concat().as_bytes()))
}

/// Decodes an EncodingAESKey the way WeChat's sample code does:
/// base64 of the 43 characters and a `=`. The 43rd character carries two
/// bits beyond the 32 bytes, which WeChat ignores; a strict decoder would
/// refuse most real keys.
fn aes_key(encoding_aes_key: &str) -> [u8; 32] {
    let lenient = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = lenient
        .decode(format!("{encoding_aes_key}="))
        .unwrap_or_else(|e| panic!("EncodingAESKey {encoding_aes_key:?}: {e}"));
    bytes
        .try_into()
        .unwrap_or_else(|b: Vec<u8>| panic!("an EncodingAESKey is 32 bytes, not {}", b.len()))
}

/// Encrypts `xml` for `receive_id` (the AppID, or the WeCom corp id) the
/// way WeChat's servers do; base64 of the ciphertext.
///
/// Plaintext: 16 random bytes, the XML's length as a big-endian u32, the
/// XML, the receive id; PKCS#7-padded to a multiple of 32 bytes (pad value
/// 1..=32, so whole AES blocks), AES-256-CBC with the key's first 16 bytes
/// as the IV.
pub fn encrypt(encoding_aes_key: &str, receive_id: &str, xml: &str) -> String {
    let random: [u8; 16] = rand::random();
    encrypt_with_random(encoding_aes_key, receive_id, xml, random)
}

/// [`encrypt`] with the 16 leading bytes chosen by the caller.
pub fn encrypt_with_random(
    encoding_aes_key: &str,
    receive_id: &str,
    xml: &str,
    random: [u8; 16],
) -> String {
    let mut plain = Vec::with_capacity(xml.len() + receive_id.len() + 52);
    plain.extend_from_slice(&random);
    let length = u32::try_from(xml.len()).expect("an XML under 4 GiB");
    plain.extend_from_slice(&length.to_be_bytes());
    plain.extend_from_slice(xml.as_bytes());
    plain.extend_from_slice(receive_id.as_bytes());
    let pad = 32 - plain.len() % 32;
    plain.resize(plain.len() + pad, pad as u8);
    encrypt_blocks(encoding_aes_key, plain)
}

/// AES-256-CBC of `plain` as it is, without any padding: for ciphertexts
/// WeChat would never produce (bad padding, a lying length).
///
/// # Panics
/// If `plain` is not whole 16-byte blocks.
pub fn encrypt_blocks(encoding_aes_key: &str, mut plain: Vec<u8>) -> String {
    assert!(
        plain.len().is_multiple_of(16),
        "AES-CBC without padding needs whole blocks"
    );
    let key = aes_key(encoding_aes_key);
    let mut cipher = cbc::Encryptor::<Aes256>::new(
        GenericArray::from_slice(&key),
        GenericArray::from_slice(&key[..16]),
    );
    for block in plain.chunks_exact_mut(16) {
        cipher.encrypt_block_mut(GenericArray::from_mut_slice(block));
    }
    STANDARD.encode(plain)
}

/// What [`decrypt`] found inside a ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The message (XML, or the plain `echostr`).
    pub message: String,
    /// The AppID or corp id after it.
    pub receive_id: String,
}

/// Decrypts a ciphertext of [`encrypt`] (e.g. the channel's own encrypted
/// answer), checking the padding strictly.
pub fn decrypt(encoding_aes_key: &str, encrypt: &str) -> Result<Decrypted, String> {
    let mut data = STANDARD
        .decode(encrypt.trim())
        .map_err(|e| format!("base64: {e}"))?;
    if data.is_empty() || !data.len().is_multiple_of(16) {
        return Err(format!("{} bytes is not whole AES blocks", data.len()));
    }
    let key = aes_key(encoding_aes_key);
    let mut cipher = cbc::Decryptor::<Aes256>::new(
        GenericArray::from_slice(&key),
        GenericArray::from_slice(&key[..16]),
    );
    for block in data.chunks_exact_mut(16) {
        cipher.decrypt_block_mut(GenericArray::from_mut_slice(block));
    }
    let pad = usize::from(*data.last().unwrap_or(&0));
    if !(1..=32).contains(&pad)
        || pad > data.len()
        || !data[data.len() - pad..]
            .iter()
            .all(|&b| usize::from(b) == pad)
    {
        return Err(format!("bad PKCS#7 padding (last byte {pad})"));
    }
    data.truncate(data.len() - pad);
    let rest = data.get(16..).ok_or("shorter than the random prefix")?;
    let (length, rest) = rest.split_at_checked(4).ok_or("no length")?;
    let length = u32::from_be_bytes(length.try_into().map_err(|_| "no length")?) as usize;
    let (message, receive_id) = rest
        .split_at_checked(length)
        .ok_or_else(|| format!("length {length} beyond the plaintext"))?;
    Ok(Decrypted {
        message: String::from_utf8(message.to_vec()).map_err(|e| e.to_string())?,
        receive_id: String::from_utf8(receive_id.to_vec()).map_err(|e| e.to_string())?,
    })
}

/// Seconds since the epoch, as WeChat puts them in `timestamp`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

fn nonce() -> String {
    rand::random::<u32>().to_string()
}

// ---------------------------------------------------------------------------
// Requests to the daemon
// ---------------------------------------------------------------------------

/// A request WeChat or WeCom makes to a channel's URL: query parameters
/// (in WeChat's order) and the XML body (empty for a GET).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookPost {
    pub params: Vec<(String, String)>,
    pub body: String,
}

impl WebhookPost {
    /// The query string, form-encoded.
    pub fn query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.params {
            query.append_pair(name, value);
        }
        query.finish()
    }

    /// `endpoint?query` (`endpoint` e.g. `http://127.0.0.1:8080/webhooks/wx-oa`).
    pub fn url(&self, endpoint: &str) -> String {
        format!("{endpoint}?{}", self.query())
    }

    /// One query parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Replaces (or adds) a query parameter: a forged signature, a stale
    /// timestamp.
    pub fn set(mut self, name: &str, value: &str) -> Self {
        match self.params.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_owned(),
            None => self.params.push((name.to_owned(), value.to_owned())),
        }
        self
    }
}

/// A GET URL check and the answer the channel must give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlCheck {
    pub params: Vec<(String, String)>,
    /// The body of a right answer (text/plain).
    pub answer: String,
}

impl UrlCheck {
    /// `endpoint?query`.
    pub fn url(&self, endpoint: &str) -> String {
        WebhookPost {
            params: self.params.clone(),
            body: String::new(),
        }
        .url(endpoint)
    }

    /// The same check with a parameter replaced.
    pub fn set(self, name: &str, value: &str) -> Self {
        let post = WebhookPost {
            params: self.params,
            body: String::new(),
        }
        .set(name, value);
        Self {
            params: post.params,
            answer: self.answer,
        }
    }
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// The text of `<name><![CDATA[...]]></name>` (or `<name>...</name>`) in
/// a sample XML; for taking FromUserName and ToUserName back out.
fn xml_field<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let inner = &xml[start..end];
    Some(
        inner
            .strip_prefix("<![CDATA[")
            .and_then(|s| s.strip_suffix("]]>"))
            .unwrap_or(inner),
    )
}

/// A value inside CDATA, with any `]]>` split across two sections.
fn cdata(value: &str) -> String {
    format!("<![CDATA[{}]]>", value.replace("]]>", "]]]]><![CDATA[>"))
}

/// An Official Account's server configuration as WeChat knows it: what it
/// signs and encrypts with.
#[derive(Debug, Clone)]
pub struct OfficialAccount {
    /// `wx` and 16 hex digits: the receive id inside every ciphertext.
    pub app_id: String,
    /// The server configuration's Token.
    pub token: String,
    /// The EncodingAESKey (43 characters).
    pub encoding_aes_key: String,
}

impl OfficialAccount {
    pub fn new(app_id: &str, token: &str, encoding_aes_key: &str) -> Self {
        Self {
            app_id: app_id.to_owned(),
            token: token.to_owned(),
            encoding_aes_key: encoding_aes_key.to_owned(),
        }
    }

    /// The GET WeChat sends when the admin saves the server URL; the
    /// right answer is `echostr` itself.
    pub fn url_check(&self, echostr: &str) -> UrlCheck {
        let (timestamp, nonce) = (unix_now().to_string(), nonce());
        let signature = signature(&self.token, &timestamp, &nonce);
        UrlCheck {
            params: pairs(&[
                ("signature", &signature),
                ("echostr", echostr),
                ("timestamp", &timestamp),
                ("nonce", &nonce),
            ]),
            answer: echostr.to_owned(),
        }
    }

    /// Plaintext mode (明文模式): `signature`, `timestamp`, `nonce` and
    /// `openid` in the query, the XML as it is.
    pub fn plaintext(&self, xml: &str) -> WebhookPost {
        let (timestamp, nonce) = (unix_now().to_string(), nonce());
        let mut params = pairs(&[
            ("signature", &signature(&self.token, &timestamp, &nonce)),
            ("timestamp", &timestamp),
            ("nonce", &nonce),
        ]);
        if let Some(openid) = xml_field(xml, "FromUserName") {
            params.push(("openid".into(), openid.into()));
        }
        WebhookPost {
            params,
            body: xml.to_owned(),
        }
    }

    /// Compatible mode (兼容模式): the plain fields and their `<Encrypt>`
    /// in one body, `encrypt_type=aes` and `msg_signature` in the query.
    pub fn compatible(&self, xml: &str) -> WebhookPost {
        let encrypted = encrypt(&self.encoding_aes_key, &self.app_id, xml);
        let body = match xml.rfind("</xml>") {
            Some(end) => format!(
                "{}<Encrypt>{}</Encrypt>\n{}",
                &xml[..end],
                cdata(&encrypted),
                &xml[end..]
            ),
            None => xml.to_owned(),
        };
        self.encrypted_post(xml, &encrypted, body)
    }

    /// Safe mode (安全模式): only ToUserName and `<Encrypt>` in the body.
    pub fn safe(&self, xml: &str) -> WebhookPost {
        let encrypted = encrypt(&self.encoding_aes_key, &self.app_id, xml);
        self.safe_with(xml, &encrypted)
    }

    /// A safe-mode post whose `<Encrypt>` is `encrypted` as given (any
    /// ciphertext, or none at all), correctly signed; `xml` only supplies
    /// ToUserName and the openid.
    pub fn safe_with(&self, xml: &str, encrypted: &str) -> WebhookPost {
        let to = xml_field(xml, "ToUserName").unwrap_or("gh_0000000000000");
        let body = format!(
            "<xml>\n<ToUserName>{}</ToUserName>\n<Encrypt>{}</Encrypt>\n</xml>",
            cdata(to),
            cdata(encrypted)
        );
        self.encrypted_post(xml, encrypted, body)
    }

    fn encrypted_post(&self, xml: &str, encrypted: &str, body: String) -> WebhookPost {
        let (timestamp, nonce) = (unix_now().to_string(), nonce());
        let mut params = pairs(&[
            ("signature", &signature(&self.token, &timestamp, &nonce)),
            ("timestamp", &timestamp),
            ("nonce", &nonce),
        ]);
        if let Some(openid) = xml_field(xml, "FromUserName") {
            params.push(("openid".into(), openid.into()));
        }
        params.push(("encrypt_type".into(), "aes".into()));
        params.push((
            "msg_signature".into(),
            msg_signature(&self.token, &timestamp, &nonce, encrypted),
        ));
        WebhookPost { params, body }
    }
}

/// A text message (文本消息) as WeChat posts it.
pub fn text_message(to: &str, from: &str, create_time: u64, content: &str, msg_id: u64) -> String {
    format!(
        "<xml>\n<ToUserName>{}</ToUserName>\n<FromUserName>{}</FromUserName>\n\
         <CreateTime>{create_time}</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n\
         <Content>{}</Content>\n<MsgId>{msg_id}</MsgId>\n</xml>",
        cdata(to),
        cdata(from),
        cdata(content)
    )
}

/// An image message (图片消息): the picture's URL and its media id.
pub fn image_message(
    to: &str,
    from: &str,
    create_time: u64,
    pic_url: &str,
    media_id: &str,
    msg_id: u64,
) -> String {
    format!(
        "<xml>\n<ToUserName>{}</ToUserName>\n<FromUserName>{}</FromUserName>\n\
         <CreateTime>{create_time}</CreateTime>\n<MsgType><![CDATA[image]]></MsgType>\n\
         <PicUrl>{}</PicUrl>\n<MediaId>{}</MediaId>\n<MsgId>{msg_id}</MsgId>\n</xml>",
        cdata(to),
        cdata(from),
        cdata(pic_url),
        cdata(media_id)
    )
}

/// A voice message (语音消息), with WeChat's speech recognition result.
pub fn voice_message(
    to: &str,
    from: &str,
    create_time: u64,
    media_id: &str,
    recognition: &str,
    msg_id: u64,
) -> String {
    format!(
        "<xml>\n<ToUserName>{}</ToUserName>\n<FromUserName>{}</FromUserName>\n\
         <CreateTime>{create_time}</CreateTime>\n<MsgType><![CDATA[voice]]></MsgType>\n\
         <MediaId>{}</MediaId>\n<Format><![CDATA[amr]]></Format>\n\
         <Recognition>{}</Recognition>\n<MsgId>{msg_id}</MsgId>\n</xml>",
        cdata(to),
        cdata(from),
        cdata(media_id),
        cdata(recognition)
    )
}

/// A follow (关注) event.
pub fn subscribe_event(to: &str, from: &str, create_time: u64) -> String {
    format!(
        "<xml>\n<ToUserName>{}</ToUserName>\n<FromUserName>{}</FromUserName>\n\
         <CreateTime>{create_time}</CreateTime>\n<MsgType><![CDATA[event]]></MsgType>\n\
         <Event><![CDATA[subscribe]]></Event>\n</xml>",
        cdata(to),
        cdata(from)
    )
}

/// A message of a type WeChat may add one day (or `msg_type` of choice).
pub fn unknown_message(
    to: &str,
    from: &str,
    create_time: u64,
    msg_type: &str,
    msg_id: u64,
) -> String {
    format!(
        "<xml>\n<ToUserName>{}</ToUserName>\n<FromUserName>{}</FromUserName>\n\
         <CreateTime>{create_time}</CreateTime>\n<MsgType>{}</MsgType>\n\
         <Hologram><![CDATA[3d]]></Hologram>\n<MsgId>{msg_id}</MsgId>\n</xml>",
        cdata(to),
        cdata(from),
        cdata(msg_type)
    )
}

/// A WeCom app's callback configuration as WeCom knows it.
#[derive(Debug, Clone)]
pub struct WecomApp {
    /// The corp id (`ww...`): the receive id inside every ciphertext.
    pub corp_id: String,
    /// The callback's Token.
    pub token: String,
    /// The callback's EncodingAESKey.
    pub encoding_aes_key: String,
    /// The `AgentID` of the outer XML.
    pub agent_id: String,
}

impl WecomApp {
    pub fn new(corp_id: &str, token: &str, encoding_aes_key: &str) -> Self {
        Self {
            corp_id: corp_id.to_owned(),
            token: token.to_owned(),
            encoding_aes_key: encoding_aes_key.to_owned(),
            agent_id: "1000002".to_owned(),
        }
    }

    /// The GET WeCom sends when the callback URL is saved: `echostr` is
    /// encrypted and `msg_signature` covers it; the right answer is the
    /// decrypted echostr.
    pub fn url_check(&self, plain_echostr: &str) -> UrlCheck {
        let (timestamp, nonce) = (unix_now().to_string(), nonce());
        let echostr = encrypt(&self.encoding_aes_key, &self.corp_id, plain_echostr);
        UrlCheck {
            params: pairs(&[
                (
                    "msg_signature",
                    &msg_signature(&self.token, &timestamp, &nonce, &echostr),
                ),
                ("timestamp", &timestamp),
                ("nonce", &nonce),
                ("echostr", &echostr),
            ]),
            answer: plain_echostr.to_owned(),
        }
    }

    /// The `kf_msg_or_event` callback: "there is news for `open_kfid`",
    /// with the `Token` that `kf/sync_msg` may be called with.
    pub fn kf_msg_or_event(&self, callback_token: &str, open_kfid: &str) -> WebhookPost {
        self.callback(&kf_msg_or_event_xml(
            &self.corp_id,
            unix_now(),
            callback_token,
            open_kfid,
        ))
    }

    /// Any inner XML, encrypted and signed as a callback.
    pub fn callback(&self, inner_xml: &str) -> WebhookPost {
        let encrypted = encrypt(&self.encoding_aes_key, &self.corp_id, inner_xml);
        self.callback_with(&encrypted)
    }

    /// A callback whose `<Encrypt>` is `encrypted` as given, correctly
    /// signed.
    pub fn callback_with(&self, encrypted: &str) -> WebhookPost {
        let (timestamp, nonce) = (unix_now().to_string(), nonce());
        let body = format!(
            "<xml><ToUserName>{}</ToUserName><Encrypt>{}</Encrypt><AgentID>{}</AgentID></xml>",
            cdata(&self.corp_id),
            cdata(encrypted),
            cdata(&self.agent_id)
        );
        WebhookPost {
            params: pairs(&[
                (
                    "msg_signature",
                    &msg_signature(&self.token, &timestamp, &nonce, encrypted),
                ),
                ("timestamp", &timestamp),
                ("nonce", &nonce),
            ]),
            body,
        }
    }
}

/// The inner XML of a `kf_msg_or_event` callback.
pub fn kf_msg_or_event_xml(
    corp_id: &str,
    create_time: u64,
    callback_token: &str,
    open_kfid: &str,
) -> String {
    format!(
        "<xml><ToUserName>{}</ToUserName><CreateTime>{create_time}</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>\
         <Token>{}</Token><OpenKfId>{}</OpenKfId></xml>",
        cdata(corp_id),
        cdata(callback_token),
        cdata(open_kfid)
    )
}

/// A customer's text in `kf/sync_msg`'s `msg_list` (origin 3).
pub fn kf_text(
    msgid: &str,
    open_kfid: &str,
    external_userid: &str,
    send_time: u64,
    content: &str,
) -> Value {
    json!({
        "msgid": msgid,
        "open_kfid": open_kfid,
        "external_userid": external_userid,
        "send_time": send_time,
        "origin": 3,
        "msgtype": "text",
        "text": { "content": content },
    })
}

/// A text a servicer sent from the WeCom client (origin 5).
pub fn kf_servicer_text(
    msgid: &str,
    open_kfid: &str,
    external_userid: &str,
    servicer_userid: &str,
    send_time: u64,
    content: &str,
) -> Value {
    json!({
        "msgid": msgid,
        "open_kfid": open_kfid,
        "external_userid": external_userid,
        "send_time": send_time,
        "origin": 5,
        "servicer_userid": servicer_userid,
        "msgtype": "text",
        "text": { "content": content },
    })
}

/// The customer entered the session (an `enter_session` system event,
/// origin 4), with the `welcome_code` for `send_msg_on_event`.
pub fn kf_enter_session(
    msgid: &str,
    open_kfid: &str,
    external_userid: &str,
    send_time: u64,
    welcome_code: &str,
) -> Value {
    json!({
        "msgid": msgid,
        "send_time": send_time,
        "origin": 4,
        "msgtype": "event",
        "event": {
            "event_type": "enter_session",
            "open_kfid": open_kfid,
            "external_userid": external_userid,
            "scene": "123",
            "scene_param": "abc",
            "welcome_code": welcome_code,
            "wechat_channels": { "nickname": "videochannel", "scene": 1 },
        },
    })
}

/// A customer's image (origin 3), fetched through `media/get`.
pub fn kf_image(
    msgid: &str,
    open_kfid: &str,
    external_userid: &str,
    send_time: u64,
    media_id: &str,
) -> Value {
    json!({
        "msgid": msgid,
        "open_kfid": open_kfid,
        "external_userid": external_userid,
        "send_time": send_time,
        "origin": 3,
        "msgtype": "image",
        "image": { "media_id": media_id },
    })
}

// ---------------------------------------------------------------------------
// The fake API server
// ---------------------------------------------------------------------------

/// An API of [`FakeWechat`] that can be told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /cgi-bin/token` and `POST /cgi-bin/stable_token` (OA).
    Token,
    /// `GET /cgi-bin/gettoken` (WeCom).
    GetToken,
    MediaGet,
    MediaUpload,
    CustomSend,
    UserInfo,
    SyncMsg,
    KfSendMsg,
    KfSendMsgOnEvent,
}

/// A file uploaded with `media/upload`.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The `type` parameter (image, voice, video, thumb, file).
    pub kind: String,
    pub media_id: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// One `kf/sync_msg` call as the fake saw it.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub open_kfid: String,
    /// The `cursor` as sent (empty when absent).
    pub cursor: String,
    /// The position it stands for: 0 for none, `None` for a cursor the
    /// fake never issued (or issued for another account).
    pub position: Option<usize>,
    /// The callback's `token`, as sent (empty when absent).
    pub token: String,
    pub limit: u64,
    /// The answer, once given (after the delay).
    pub answer: Option<SyncAnswer>,
}

/// What a `kf/sync_msg` call was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAnswer {
    pub errcode: i64,
    /// Messages in `msg_list`.
    pub served: usize,
    pub next_cursor: String,
    pub next_position: usize,
    pub has_more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenState {
    Valid,
    Expired,
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Platform {
    OfficialAccount,
    Wecom,
}

#[derive(Debug, Clone, Copy)]
struct Failure {
    errcode: i64,
    /// `None`: until told otherwise.
    remaining: Option<usize>,
}

#[derive(Debug, Default)]
struct Inner {
    apps: HashMap<String, String>,
    corps: HashMap<String, String>,
    tokens: HashMap<String, (Platform, TokenState)>,
    token_calls: usize,
    media: HashMap<String, (String, Vec<u8>)>,
    media_gets: Vec<String>,
    uploads: Vec<Upload>,
    custom_sends: Vec<Value>,
    kf_sends: Vec<Value>,
    kf_event_sends: Vec<Value>,
    kf_sent_msgids: Vec<String>,
    users: HashMap<String, String>,
    user_info_calls: usize,
    kf_messages: HashMap<String, Vec<Value>>,
    sync_requests: Vec<SyncRequest>,
    sync_delay: Duration,
    failures: HashMap<Endpoint, Failure>,
    log: Vec<String>,
    next_id: u64,
}

impl Inner {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The programmed failure of `endpoint` for this call, if any.
    fn failure(&mut self, endpoint: Endpoint) -> Option<i64> {
        let failure = self.failures.get_mut(&endpoint)?;
        let errcode = failure.errcode;
        match &mut failure.remaining {
            None => {}
            Some(0) => {
                self.failures.remove(&endpoint);
                return None;
            }
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.failures.remove(&endpoint);
                }
            }
        }
        Some(errcode)
    }

    /// The platform of a valid `access_token`, or the error WeChat gives.
    fn check_token(&self, query: &HashMap<String, String>) -> Result<Platform, Value> {
        let Some(token) = query.get("access_token").filter(|t| !t.is_empty()) else {
            return Err(error(41001));
        };
        match self.tokens.get(token) {
            None => Err(error(40014)),
            Some((_, TokenState::Expired)) => Err(error(42001)),
            // A superseded token: Official Accounts say 40001, WeCom
            // keeps 40001 for a wrong secret and says 40014.
            Some((Platform::OfficialAccount, TokenState::Invalid)) => Err(error(40001)),
            Some((Platform::Wecom, TokenState::Invalid)) => Err(error(40014)),
            Some((platform, TokenState::Valid)) => Ok(*platform),
        }
    }

    fn issue_token(&mut self, platform: Platform) -> String {
        let token = format!(
            "ACCESS_TOKEN_{}_{:016x}",
            self.next_id(),
            rand::random::<u64>()
        );
        self.tokens
            .insert(token.clone(), (platform, TokenState::Valid));
        token
    }
}

/// The errmsg WeChat gives with an errcode (the documented ones; others
/// get a made-up text).
fn errmsg(errcode: i64) -> String {
    match errcode {
        -1 => "system error",
        0 => "ok",
        40001 => "invalid credential, access_token is invalid or not latest",
        40002 => "invalid grant_type",
        40003 => "invalid openid",
        40004 => "invalid media type",
        40007 => "invalid media_id",
        40013 => "invalid appid",
        40014 => "invalid access_token",
        40058 => "invalid Request Parameter",
        40125 => "invalid appsecret",
        41001 => "access_token missing",
        41005 => "media data missing",
        42001 => "access_token expired",
        45009 => "reach max api daily quota limit",
        45015 => "response out of time limit or subscription is canceled",
        45047 => "out of response count limit",
        47001 => "data format error",
        _ => return format!("fake error {errcode}"),
    }
    .to_owned()
}

fn error(errcode: i64) -> Value {
    json!({ "errcode": errcode, "errmsg": errmsg(errcode) })
}

fn json_response(value: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; encoding=utf-8")],
        value.to_string(),
    )
        .into_response()
}

fn encode_cursor(open_kfid: &str, position: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("{open_kfid}#{position}"))
}

/// The account and position a cursor of [`FakeWechat`] stands for.
pub fn cursor_position(cursor: &str) -> Option<(String, usize)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (kfid, position) = text.rsplit_once('#')?;
    Some((kfid.to_owned(), position.parse().ok()?))
}

/// WeChat's and WeCom's API servers on one loopback port. Tokens from
/// either platform are accepted on the shared paths (`media/get`,
/// `media/upload`), each answered in its platform's format.
#[derive(Debug, Clone)]
pub struct FakeWechat {
    base_url: String,
    inner: Arc<Mutex<Inner>>,
}

type Shared = Arc<Mutex<Inner>>;
type Params = Query<HashMap<String, String>>;

impl FakeWechat {
    /// Listens on a free loopback port, on the caller's runtime.
    pub async fn start() -> Self {
        let inner = Shared::default();
        let app = Router::new()
            .route("/cgi-bin/token", get(oa_token))
            .route("/cgi-bin/stable_token", post(oa_stable_token))
            .route("/cgi-bin/gettoken", get(wecom_token))
            .route("/cgi-bin/media/get", get(media_get))
            .route("/cgi-bin/media/upload", post(media_upload))
            .route("/cgi-bin/message/custom/send", post(custom_send))
            .route("/cgi-bin/user/info", get(user_info))
            .route("/cgi-bin/kf/sync_msg", post(sync_msg))
            .route("/cgi-bin/kf/send_msg", post(kf_send_msg))
            .route("/cgi-bin/kf/send_msg_on_event", post(kf_send_msg_on_event))
            .fallback(unknown)
            .layer(axum::middleware::from_fn_with_state(
                inner.clone(),
                log_request,
            ))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base_url = format!("http://{}", listener.local_addr().expect("local addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base_url, inner }
    }

    /// `http://127.0.0.1:PORT`: the channels' `api_base`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An Official Account `cgi-bin/token` issues tokens to.
    pub fn add_official_account(&self, app_id: &str, app_secret: &str) {
        self.lock()
            .apps
            .insert(app_id.to_owned(), app_secret.to_owned());
    }

    /// A WeCom corporation (and app secret) `cgi-bin/gettoken` issues
    /// tokens to.
    pub fn add_corp(&self, corp_id: &str, secret: &str) {
        self.lock()
            .corps
            .insert(corp_id.to_owned(), secret.to_owned());
    }

    /// A file `media/get` serves.
    pub fn add_media(&self, media_id: &str, content_type: &str, bytes: &[u8]) {
        self.lock().media.insert(
            media_id.to_owned(),
            (content_type.to_owned(), bytes.to_vec()),
        );
    }

    /// A follower whose `user/info` carries `unionid`.
    pub fn add_user(&self, openid: &str, unionid: &str) {
        self.lock()
            .users
            .insert(openid.to_owned(), unionid.to_owned());
    }

    /// Appends messages to what `kf/sync_msg` serves for `open_kfid`.
    pub fn push_kf_messages(&self, open_kfid: &str, messages: impl IntoIterator<Item = Value>) {
        self.lock()
            .kf_messages
            .entry(open_kfid.to_owned())
            .or_default()
            .extend(messages);
    }

    /// Every message `kf/sync_msg` serves for `open_kfid`, in order.
    pub fn kf_messages(&self, open_kfid: &str) -> Vec<Value> {
        self.lock()
            .kf_messages
            .get(open_kfid)
            .cloned()
            .unwrap_or_default()
    }

    /// Each `kf/sync_msg` call waits this long before answering.
    pub fn set_sync_delay(&self, delay: Duration) {
        self.lock().sync_delay = delay;
    }

    /// The next `times` calls of `endpoint` answer `errcode` (after the
    /// token check).
    pub fn fail(&self, endpoint: Endpoint, errcode: i64, times: usize) {
        self.lock().failures.insert(
            endpoint,
            Failure {
                errcode,
                remaining: Some(times),
            },
        );
    }

    /// Every call of `endpoint` answers `errcode` until [`Self::recover`].
    pub fn fail_always(&self, endpoint: Endpoint, errcode: i64) {
        self.lock().failures.insert(
            endpoint,
            Failure {
                errcode,
                remaining: None,
            },
        );
    }

    /// `endpoint` answers normally again.
    pub fn recover(&self, endpoint: Endpoint) {
        self.lock().failures.remove(&endpoint);
    }

    /// Every token issued so far expires (calls with it get 42001).
    pub fn expire_tokens(&self) {
        self.set_all_tokens(TokenState::Expired);
    }

    /// Every token issued so far is superseded (calls get 40001 on
    /// Official Accounts, 40014 on WeCom).
    pub fn invalidate_tokens(&self) {
        self.set_all_tokens(TokenState::Invalid);
    }

    fn set_all_tokens(&self, state: TokenState) {
        for (_, slot) in self.lock().tokens.values_mut() {
            *slot = state;
        }
    }

    /// Calls of `cgi-bin/token`, `stable_token` and `gettoken`.
    pub fn token_calls(&self) -> usize {
        self.lock().token_calls
    }

    /// The media ids `media/get` was asked for (with a valid token).
    pub fn media_gets(&self) -> Vec<String> {
        self.lock().media_gets.clone()
    }

    pub fn uploads(&self) -> Vec<Upload> {
        self.lock().uploads.clone()
    }

    /// Bodies of `message/custom/send` calls with a valid token.
    pub fn custom_sends(&self) -> Vec<Value> {
        self.lock().custom_sends.clone()
    }

    /// Bodies of `kf/send_msg` calls with a valid token.
    pub fn kf_sends(&self) -> Vec<Value> {
        self.lock().kf_sends.clone()
    }

    /// The `msgid` of every successful `kf/send_msg` and
    /// `send_msg_on_event` answer, in order.
    pub fn kf_sent_msgids(&self) -> Vec<String> {
        self.lock().kf_sent_msgids.clone()
    }

    /// Bodies of `kf/send_msg_on_event` calls with a valid token.
    pub fn kf_event_sends(&self) -> Vec<Value> {
        self.lock().kf_event_sends.clone()
    }

    pub fn user_info_calls(&self) -> usize {
        self.lock().user_info_calls
    }

    /// Every `kf/sync_msg` call so far, in arrival order (recorded on
    /// arrival, answered after the delay).
    pub fn sync_requests(&self) -> Vec<SyncRequest> {
        self.lock().sync_requests.clone()
    }

    /// `kf/sync_msg` calls answered so far.
    pub fn sync_pages_served(&self) -> usize {
        self.lock()
            .sync_requests
            .iter()
            .filter(|r| r.answer.is_some())
            .count()
    }

    /// `METHOD path?query` of every request, for failure messages.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// The cursor the fake issues for `position` of `open_kfid`.
    pub fn cursor_at(open_kfid: &str, position: usize) -> String {
        encode_cursor(open_kfid, position)
    }
}

async fn log_request(
    State(inner): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let line = format!("{} {}", request.method(), request.uri());
    lock(&inner).log.push(line);
    next.run(request).await
}

fn lock(inner: &Shared) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

async fn unknown(uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("the fake WeChat does not serve {uri}"),
    )
        .into_response()
}

/// `GET /cgi-bin/token?grant_type=client_credential&appid=..&secret=..`.
async fn oa_token(State(inner): State<Shared>, Query(query): Params) -> Response {
    let param = |name: &str| query.get(name).map(String::as_str).unwrap_or_default();
    json_response(&oa_token_answer(
        &inner,
        param("grant_type"),
        param("appid"),
        param("secret"),
    ))
}

/// `POST /cgi-bin/stable_token` with the same fields as JSON.
async fn oa_stable_token(State(inner): State<Shared>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return json_response(&error(47001));
    };
    let field = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
    json_response(&oa_token_answer(
        &inner,
        &field("grant_type"),
        &field("appid"),
        &field("secret"),
    ))
}

fn oa_token_answer(inner: &Shared, grant_type: &str, app_id: &str, secret: &str) -> Value {
    let mut inner = lock(inner);
    inner.token_calls += 1;
    if let Some(errcode) = inner.failure(Endpoint::Token) {
        return error(errcode);
    }
    if grant_type != "client_credential" {
        return error(40002);
    }
    match inner.apps.get(app_id) {
        None => error(40013),
        Some(expected) if expected != secret => error(40125),
        Some(_) => {
            let token = inner.issue_token(Platform::OfficialAccount);
            json!({ "access_token": token, "expires_in": 7200 })
        }
    }
}

/// `GET /cgi-bin/gettoken?corpid=..&corpsecret=..`.
async fn wecom_token(State(inner): State<Shared>, Query(query): Params) -> Response {
    let mut inner = lock(&inner);
    inner.token_calls += 1;
    if let Some(errcode) = inner.failure(Endpoint::GetToken) {
        return json_response(&error(errcode));
    }
    let corp_id = query.get("corpid").map(String::as_str).unwrap_or_default();
    let secret = query
        .get("corpsecret")
        .map(String::as_str)
        .unwrap_or_default();
    let answer = match inner.corps.get(corp_id) {
        None => error(40013),
        Some(expected) if expected != secret => error(40001),
        Some(_) => {
            let token = inner.issue_token(Platform::Wecom);
            json!({ "errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200 })
        }
    };
    json_response(&answer)
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "audio/amr" => "amr",
        "audio/mpeg" => "mp3",
        "video/mp4" => "mp4",
        _ => "bin",
    }
}

/// `GET /cgi-bin/media/get?access_token=..&media_id=..`: the file with
/// its Content-Type and a Content-disposition naming it, or a JSON error.
async fn media_get(State(inner): State<Shared>, Query(query): Params) -> Response {
    let mut inner = lock(&inner);
    if let Err(error) = inner.check_token(&query) {
        return json_response(&error);
    }
    let media_id = query.get("media_id").cloned().unwrap_or_default();
    inner.media_gets.push(media_id.clone());
    if let Some(errcode) = inner.failure(Endpoint::MediaGet) {
        return json_response(&error(errcode));
    }
    match inner.media.get(&media_id) {
        None => json_response(&error(40007)),
        Some((content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, content_type.clone()),
                (
                    header::CONTENT_DISPOSITION,
                    format!(
                        "attachment; filename=\"{media_id}.{}\"",
                        extension(content_type)
                    ),
                ),
            ],
            bytes.clone(),
        )
            .into_response(),
    }
}

/// `POST /cgi-bin/media/upload?access_token=..&type=..`, the file in the
/// multipart field `media`.
async fn media_upload(
    State(inner): State<Shared>,
    Query(query): Params,
    mut multipart: Multipart,
) -> Response {
    let platform = match lock(&inner).check_token(&query) {
        Ok(platform) => platform,
        Err(error) => return json_response(&error),
    };
    let kind = query.get("type").cloned().unwrap_or_default();
    let allowed: &[&str] = match platform {
        Platform::OfficialAccount => &["image", "voice", "video", "thumb"],
        Platform::Wecom => &["image", "voice", "video", "file"],
    };
    if !allowed.contains(&kind.as_str()) {
        return json_response(&error(40004));
    }
    let mut upload = None;
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() != Some("media") {
            continue;
        }
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(str::to_owned);
        let Ok(bytes) = field.bytes().await else {
            return json_response(&error(41005));
        };
        upload = Some((file_name, content_type, bytes.to_vec()));
    }
    let Some((file_name, content_type, bytes)) = upload else {
        return json_response(&error(41005));
    };
    let mut inner = lock(&inner);
    if let Some(errcode) = inner.failure(Endpoint::MediaUpload) {
        return json_response(&error(errcode));
    }
    let media_id = format!("MEDIA_{}_{:08x}", inner.next_id(), rand::random::<u32>());
    inner.media.insert(
        media_id.clone(),
        (
            content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
            bytes.clone(),
        ),
    );
    inner.uploads.push(Upload {
        kind: kind.clone(),
        media_id: media_id.clone(),
        file_name,
        content_type,
        bytes,
    });
    let created_at = unix_now();
    json_response(&match platform {
        Platform::OfficialAccount => {
            json!({ "type": kind, "media_id": media_id, "created_at": created_at })
        }
        Platform::Wecom => json!({
            "errcode": 0, "errmsg": "", "type": kind, "media_id": media_id,
            "created_at": created_at.to_string(),
        }),
    })
}

/// `POST /cgi-bin/message/custom/send` (客服消息).
async fn custom_send(State(inner): State<Shared>, Query(query): Params, body: Bytes) -> Response {
    let mut inner = lock(&inner);
    if let Err(error) = inner.check_token(&query) {
        return json_response(&error);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return json_response(&error(47001));
    };
    inner.custom_sends.push(body);
    let errcode = inner.failure(Endpoint::CustomSend).unwrap_or(0);
    json_response(&error(errcode))
}

/// `GET /cgi-bin/user/info?access_token=..&openid=..&lang=..`.
async fn user_info(State(inner): State<Shared>, Query(query): Params) -> Response {
    let mut inner = lock(&inner);
    if let Err(error) = inner.check_token(&query) {
        return json_response(&error);
    }
    inner.user_info_calls += 1;
    if let Some(errcode) = inner.failure(Endpoint::UserInfo) {
        return json_response(&error(errcode));
    }
    let openid = query.get("openid").cloned().unwrap_or_default();
    match inner.users.get(&openid) {
        None => json_response(&error(40003)),
        Some(unionid) => json_response(&json!({
            "subscribe": 1,
            "openid": openid,
            "language": "zh_CN",
            "subscribe_time": 1_382_694_957,
            "unionid": unionid,
            "remark": "",
            "groupid": 0,
            "tagid_list": [],
            "subscribe_scene": "ADD_SCENE_QR_CODE",
            "qr_scene": 98765,
            "qr_scene_str": "",
        })),
    }
}

/// `POST /cgi-bin/kf/sync_msg`: a page of up to `limit` (at most 1000)
/// messages from the cursor's position, `next_cursor` after them and
/// `has_more` while any are left.
async fn sync_msg(State(shared): State<Shared>, Query(query): Params, body: Bytes) -> Response {
    let (index, delay) = {
        let mut inner = lock(&shared);
        match inner.check_token(&query) {
            Ok(Platform::Wecom) => {}
            Ok(Platform::OfficialAccount) => return json_response(&error(40014)),
            Err(error) => return json_response(&error),
        }
        let Ok(body) = serde_json::from_slice::<Value>(&body) else {
            return json_response(&error(47001));
        };
        let text = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
        let mut open_kfid = text("open_kfid");
        if open_kfid.is_empty() && inner.kf_messages.len() == 1 {
            open_kfid = inner.kf_messages.keys().next().cloned().unwrap_or_default();
        }
        let cursor = text("cursor");
        let position = if cursor.is_empty() {
            Some(0)
        } else {
            cursor_position(&cursor)
                .filter(|(kfid, _)| *kfid == open_kfid)
                .map(|(_, position)| position)
        };
        inner.sync_requests.push(SyncRequest {
            open_kfid,
            cursor,
            position,
            token: text("token"),
            limit: body["limit"].as_u64().unwrap_or(0),
            answer: None,
        });
        (inner.sync_requests.len() - 1, inner.sync_delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut inner = lock(&shared);
    let request = inner.sync_requests[index].clone();
    let (answer, response) = match (inner.failure(Endpoint::SyncMsg), request.position) {
        (Some(errcode), _) => (failed_sync(errcode), error(errcode)),
        (None, None) => (failed_sync(40058), error(40058)),
        (None, Some(position)) => {
            let all = inner
                .kf_messages
                .get(&request.open_kfid)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let limit = match request.limit {
                1..=1000 => request.limit as usize,
                _ => 1000,
            };
            let start = position.min(all.len());
            let end = (start + limit).min(all.len());
            let page = all[start..end].to_vec();
            let answer = SyncAnswer {
                errcode: 0,
                served: page.len(),
                next_cursor: encode_cursor(&request.open_kfid, end),
                next_position: end,
                has_more: end < all.len(),
            };
            let response = json!({
                "errcode": 0,
                "errmsg": "ok",
                "next_cursor": answer.next_cursor,
                "has_more": u8::from(answer.has_more),
                "msg_list": page,
            });
            (answer, response)
        }
    };
    inner.sync_requests[index].answer = Some(answer);
    json_response(&response)
}

fn failed_sync(errcode: i64) -> SyncAnswer {
    SyncAnswer {
        errcode,
        served: 0,
        next_cursor: String::new(),
        next_position: 0,
        has_more: false,
    }
}

/// `POST /cgi-bin/kf/send_msg`: `touser`, `open_kfid` and `msgtype`
/// required; the answer's `msgid` is the request's, or a new one.
async fn kf_send_msg(State(inner): State<Shared>, Query(query): Params, body: Bytes) -> Response {
    kf_send(
        inner,
        query,
        body,
        Endpoint::KfSendMsg,
        &["touser", "open_kfid", "msgtype"],
    )
}

/// `POST /cgi-bin/kf/send_msg_on_event`: `code` and `msgtype` required.
async fn kf_send_msg_on_event(
    State(inner): State<Shared>,
    Query(query): Params,
    body: Bytes,
) -> Response {
    kf_send(
        inner,
        query,
        body,
        Endpoint::KfSendMsgOnEvent,
        &["code", "msgtype"],
    )
}

fn kf_send(
    inner: Shared,
    query: HashMap<String, String>,
    body: Bytes,
    endpoint: Endpoint,
    required: &[&str],
) -> Response {
    let mut inner = lock(&inner);
    match inner.check_token(&query) {
        Ok(Platform::Wecom) => {}
        Ok(Platform::OfficialAccount) => return json_response(&error(40014)),
        Err(error) => return json_response(&error),
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return json_response(&error(47001));
    };
    let msgid = body["msgid"]
        .as_str()
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    let complete = required
        .iter()
        .all(|name| body[*name].as_str().is_some_and(|v| !v.is_empty()));
    match endpoint {
        Endpoint::KfSendMsgOnEvent => inner.kf_event_sends.push(body),
        _ => inner.kf_sends.push(body),
    }
    if !complete {
        return json_response(&error(40058));
    }
    if let Some(errcode) = inner.failure(endpoint) {
        return json_response(&error(errcode));
    }
    let msgid =
        msgid.unwrap_or_else(|| format!("MSG_{}_{:08x}", inner.next_id(), rand::random::<u32>()));
    inner.kf_sent_msgids.push(msgid.clone());
    json_response(&json!({ "errcode": 0, "errmsg": "ok", "msgid": msgid }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WeChat documentation's sample key: its last character has bits
    /// beyond the 32 bytes.
    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const APP_ID: &str = "wx5823bf96d3bd56c7";

    #[test]
    fn signatures_sort_their_parts() {
        // Digits sort before letters, upper case before lower.
        let expected = hex::encode(Sha1::digest(b"1409304348nonce123token"));
        assert_eq!(signature("token", "1409304348", "nonce123"), expected);
        let four = hex::encode(Sha1::digest(b"1409304348ENCnonce123token"));
        assert_eq!(
            msg_signature("token", "1409304348", "nonce123", "ENC"),
            four
        );
    }

    /// The URL-check vector of WeCom's documentation (加解密方案说明).
    #[test]
    fn the_documented_vector_verifies_and_decrypts() {
        let echostr = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
        assert_eq!(
            msg_signature("QDG6eK", "1409659589", "263014780", echostr),
            "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
        );
        let decrypted = decrypt(KEY, echostr).unwrap();
        assert_eq!(decrypted.message, "1616140317555161061");
        assert_eq!(decrypted.receive_id, APP_ID);
    }

    #[test]
    fn encryption_round_trips_with_whole_32_byte_padding() {
        for len in [0usize, 1, 11, 12, 13, 44, 100] {
            let xml = "x".repeat(len);
            let encrypted = encrypt(KEY, APP_ID, &xml);
            let raw = STANDARD.decode(&encrypted).unwrap();
            assert_eq!(raw.len() % 32, 0, "padded to 32 bytes");
            assert!(raw.len() > 16 + 4 + len + APP_ID.len());
            let decrypted = decrypt(KEY, &encrypted).unwrap();
            assert_eq!(decrypted.message, xml);
            assert_eq!(decrypted.receive_id, APP_ID);
        }
    }

    #[test]
    fn decrypt_refuses_bad_padding_and_truncation() {
        let bad = encrypt_blocks(KEY, vec![0u8; 64]);
        assert!(decrypt(KEY, &bad).unwrap_err().contains("padding"));
        let good = encrypt(KEY, APP_ID, "<xml/>");
        assert!(decrypt(KEY, &good[..good.len() - 6]).is_err());
    }

    #[test]
    fn posts_carry_the_documented_parameters() {
        let account = OfficialAccount::new(APP_ID, "token", KEY);
        let xml = text_message("gh_1", "oUser", 1, "hi ]]> there", 7);
        assert_eq!(xml_field(&xml, "Content"), Some("hi ]]]]><![CDATA[> there"));
        let post = account.safe(&xml);
        assert_eq!(post.param("openid"), Some("oUser"));
        assert_eq!(post.param("encrypt_type"), Some("aes"));
        let encrypted = xml_field(&post.body, "Encrypt").unwrap();
        let (ts, nonce) = (
            post.param("timestamp").unwrap(),
            post.param("nonce").unwrap(),
        );
        assert_eq!(
            post.param("msg_signature").unwrap(),
            msg_signature("token", ts, nonce, encrypted)
        );
        assert_eq!(decrypt(KEY, encrypted).unwrap().message, xml);
        let compatible = account.compatible(&xml);
        assert!(compatible.body.contains("<MsgId>7</MsgId>"));
        assert!(compatible.body.contains("<Encrypt>"));

        let wecom = WecomApp::new("ww1234567890", "token", KEY);
        let check = wecom.url_check("4242");
        let echostr = &check.params.iter().find(|(n, _)| n == "echostr").unwrap().1;
        assert_eq!(decrypt(KEY, echostr).unwrap().message, "4242");
        assert!(check.url("http://x/w").contains("msg_signature="));
    }

    #[test]
    fn cursors_round_trip() {
        let cursor = FakeWechat::cursor_at("wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw", 2500);
        assert!(cursor.len() <= 64);
        assert_eq!(
            cursor_position(&cursor),
            Some(("wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw".into(), 2500))
        );
        assert_eq!(cursor_position("garbage!"), None);
    }

    async fn call(request: reqwest::RequestBuilder) -> Value {
        let text = request.send().await.unwrap().text().await.unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[tokio::test]
    async fn the_fake_checks_tokens_and_pages_sync_msg() {
        let fake = FakeWechat::start().await;
        fake.add_official_account(APP_ID, "app-secret");
        fake.add_corp("ww1", "corp-secret");
        let http = reqwest::Client::new();
        let url = |path: &str| format!("{}/cgi-bin/{path}", fake.base_url());

        let token_url = |secret: &str| {
            format!(
                "{}?grant_type=client_credential&appid={APP_ID}&secret={secret}",
                url("token")
            )
        };
        assert_eq!(call(http.get(token_url("wrong"))).await["errcode"], 40125);
        let answer = call(http.get(token_url("app-secret"))).await;
        let token = answer["access_token"].as_str().unwrap().to_owned();
        let send = |token: &str| {
            http.post(format!(
                "{}?access_token={token}",
                url("message/custom/send")
            ))
            .body(r#"{"touser":"o1","msgtype":"text","text":{"content":"hi"}}"#)
        };
        assert_eq!(call(send(&token)).await["errcode"], 0);
        assert_eq!(call(send("nope")).await["errcode"], 40014);
        fake.fail(Endpoint::CustomSend, 45015, 1);
        assert_eq!(call(send(&token)).await["errcode"], 45015);
        assert_eq!(call(send(&token)).await["errcode"], 0);
        fake.expire_tokens();
        assert_eq!(call(send(&token)).await["errcode"], 42001);
        assert_eq!(fake.custom_sends().len(), 3, "calls with a valid token");
        assert_eq!(fake.token_calls(), 2);

        fake.add_media("m1", "image/png", b"png bytes");
        let token = call(http.get(token_url("app-secret"))).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let media = http
            .get(format!(
                "{}?access_token={token}&media_id=m1",
                url("media/get")
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(media.headers()["content-type"], "image/png");
        assert_eq!(&media.bytes().await.unwrap()[..], b"png bytes");
        let missing = http.get(format!(
            "{}?access_token={token}&media_id=m2",
            url("media/get")
        ));
        assert_eq!(call(missing).await["errcode"], 40007);

        let kf = "wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw";
        fake.push_kf_messages(
            kf,
            (0..5).map(|i| kf_text(&format!("m{i}"), kf, "wm1", 1, "x")),
        );
        let wecom = call(http.get(format!(
            "{}?corpid=ww1&corpsecret=corp-secret",
            url("gettoken")
        )))
        .await;
        let wecom = wecom["access_token"].as_str().unwrap().to_owned();
        let sync = |cursor: &str| {
            http.post(format!("{}?access_token={wecom}", url("kf/sync_msg")))
                .body(
                    json!({ "cursor": cursor, "token": "T", "limit": 2, "open_kfid": kf })
                        .to_string(),
                )
        };
        let mut cursor = String::new();
        let mut seen = Vec::new();
        loop {
            let page = call(sync(&cursor)).await;
            assert_eq!(page["errcode"], 0, "{page}");
            for message in page["msg_list"].as_array().unwrap() {
                seen.push(message["msgid"].as_str().unwrap().to_owned());
            }
            cursor = page["next_cursor"].as_str().unwrap().to_owned();
            if page["has_more"] == 0 {
                break;
            }
        }
        assert_eq!(seen, ["m0", "m1", "m2", "m3", "m4"]);
        let requests = fake.sync_requests();
        let positions: Vec<_> = requests.iter().map(|r| r.position).collect();
        assert_eq!(positions, [Some(0), Some(2), Some(4)]);
        assert!(requests.iter().all(|r| r.token == "T" && r.limit == 2));
        assert_eq!(call(sync("forged")).await["errcode"], 40058);
        // An Official Account token is no WeCom token.
        let wrong = http
            .post(format!("{}?access_token={token}", url("kf/sync_msg")))
            .body("{}");
        assert_eq!(call(wrong).await["errcode"], 40014);
    }
}
