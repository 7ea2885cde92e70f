//! What both WeChat callbacks share: the query WeChat signs, the signature
//! checks, and opening an encrypted envelope. Pure; the two webhooks
//! ([`crate::oa::webhook`], [`crate::kf::webhook`]) decide what the content
//! means.

use http::{StatusCode, Uri};
use omni_connector::{ParseError, Refusal, Secret, WebhookResponse};

use crate::{
    crypto::{self, MsgCrypt},
    xml::{self, Fields, XmlLimits},
};

/// Longest query value kept: WeChat's are short (a 40-digit signature, a
/// 10-digit timestamp, a nonce, an echostr of a few hundred characters).
const MAX_QUERY_VALUE: usize = 1024;

/// The query parameters WeChat adds to a callback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CallbackQuery {
    pub(crate) signature: Option<String>,
    pub(crate) msg_signature: Option<String>,
    pub(crate) timestamp: Option<String>,
    pub(crate) nonce: Option<String>,
    pub(crate) echostr: Option<String>,
    pub(crate) encrypt_type: Option<String>,
}

impl CallbackQuery {
    /// Reads the parameters WeChat signs; an overlong value is dropped, so
    /// its check fails rather than hashing megabytes.
    pub(crate) fn parse(uri: &Uri) -> Self {
        let mut query = Self::default();
        for (name, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            if value.len() > MAX_QUERY_VALUE {
                continue;
            }
            let slot = match name.as_ref() {
                "signature" => &mut query.signature,
                "msg_signature" => &mut query.msg_signature,
                "timestamp" => &mut query.timestamp,
                "nonce" => &mut query.nonce,
                "echostr" => &mut query.echostr,
                "encrypt_type" => &mut query.encrypt_type,
                _ => continue,
            };
            *slot = Some(value.into_owned());
        }
        query
    }

    /// Safe or compatible mode: the content to trust is in `<Encrypt>`.
    pub(crate) fn encrypted(&self) -> bool {
        self.encrypt_type.as_deref() == Some("aes")
    }

    fn stamp(&self) -> Result<(&str, &str), Refusal> {
        match (self.timestamp.as_deref(), self.nonce.as_deref()) {
            (Some(timestamp), Some(nonce)) => Ok((timestamp, nonce)),
            _ => Err(Refusal::new(
                "missing_signature",
                "timestamp and nonce are required",
            )),
        }
    }
}

/// One channel's keys: the token every signature covers and, when
/// configured, the AES keys of encrypted content.
#[derive(Debug)]
pub(crate) struct Keys {
    /// None when an admin turned verification off.
    pub(crate) token: Option<Secret>,
    pub(crate) crypt: Option<MsgCrypt>,
    pub(crate) limits: XmlLimits,
}

impl Keys {
    /// `signature` = SHA-1 of the sorted token, timestamp and nonce: the
    /// URL check and plaintext messages.
    pub(crate) fn verify_signature(&self, query: &CallbackQuery) -> Result<(), Refusal> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let (timestamp, nonce) = query.stamp()?;
        let given = query
            .signature
            .as_deref()
            .ok_or_else(|| Refusal::new("missing_signature", "no signature parameter"))?;
        if crypto::verify(token.expose(), &[timestamp, nonce], given) {
            Ok(())
        } else {
            Err(Refusal::new(
                "invalid_signature",
                "the signature does not match",
            ))
        }
    }

    /// `msg_signature` = SHA-1 of the sorted token, timestamp, nonce and
    /// the ciphertext: encrypted messages and WeCom's URL check.
    pub(crate) fn verify_msg_signature(
        &self,
        query: &CallbackQuery,
        encrypted: &str,
    ) -> Result<(), Refusal> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let (timestamp, nonce) = query.stamp()?;
        let given = query
            .msg_signature
            .as_deref()
            .ok_or_else(|| Refusal::new("missing_signature", "no msg_signature parameter"))?;
        if crypto::verify(token.expose(), &[timestamp, nonce, encrypted], given) {
            Ok(())
        } else {
            Err(Refusal::new(
                "invalid_signature",
                "the msg_signature does not match",
            ))
        }
    }

    /// The `<Encrypt>` of an envelope, for the signature check.
    pub(crate) fn envelope(&self, body: &[u8]) -> Result<String, Refusal> {
        let fields = xml::parse(body, &self.limits)
            .map_err(|e| Refusal::new("unreadable_envelope", e.to_string()))?;
        fields
            .get("Encrypt")
            .map(str::to_owned)
            .ok_or_else(|| Refusal::new("missing_encrypt", "the body has no <Encrypt> element"))
    }

    /// The decrypted message inside an envelope, read as XML.
    pub(crate) fn open(&self, body: &[u8]) -> Result<Fields, ParseError> {
        let envelope =
            xml::parse(body, &self.limits).map_err(|e| ParseError::new(e.code(), e.to_string()))?;
        let encrypted = envelope.get("Encrypt").ok_or_else(|| {
            ParseError::new("missing_encrypt", "the body has no <Encrypt> element")
        })?;
        let plain = self.decrypt(encrypted)?;
        xml::parse(&plain, &self.limits).map_err(|e| ParseError::new(e.code(), e.to_string()))
    }

    /// Decrypts one ciphertext (a message, or WeCom's echostr).
    pub(crate) fn decrypt(&self, encrypted: &str) -> Result<Vec<u8>, ParseError> {
        let crypt = self.crypt.as_ref().ok_or_else(|| {
            ParseError::new(
                "no_aes_key",
                "the message is encrypted but the channel has no encoding_aes_key",
            )
        })?;
        crypt
            .decrypt(encrypted)
            .map_err(|e| ParseError::new(e.code(), e.to_string()))
    }
}

/// The plain `success` WeChat expects once a message is taken (it accepts
/// it unencrypted in every mode).
pub(crate) fn success() -> WebhookResponse {
    omni_connector::driver::static_response(StatusCode::OK, "text/plain", "success")
}

/// A text/plain answer of dynamic content (the URL check's echostr).
pub(crate) fn text(body: Vec<u8>) -> WebhookResponse {
    let mut response = http::Response::new(bytes::Bytes::from(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}
