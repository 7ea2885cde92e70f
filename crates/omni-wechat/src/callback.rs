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
    /// its check fails rather than hashing megabytes. WeChat's values are
    /// plain ASCII, so only a value that holds an escape is decoded (a
    /// general form decoder cost more than the signature check itself).
    pub(crate) fn parse(uri: &Uri) -> Self {
        let mut query = Self::default();
        for pair in uri.query().unwrap_or("").split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if value.len() > MAX_QUERY_VALUE {
                continue;
            }
            let slot = match name {
                "signature" => &mut query.signature,
                "msg_signature" => &mut query.msg_signature,
                "timestamp" => &mut query.timestamp,
                "nonce" => &mut query.nonce,
                "echostr" => &mut query.echostr,
                "encrypt_type" => &mut query.encrypt_type,
                _ => continue,
            };
            *slot = Some(if value.contains(['%', '+']) {
                form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            } else {
                value.to_owned()
            });
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

    /// The `<Encrypt>` of an envelope, for the signature check: found by a
    /// plain scan rather than the XML reader, since the signature is
    /// checked on every request, signed or not. It must be the one
    /// `<Encrypt>` of the body, and [`Keys::open`] decrypts
    /// only what the XML reader finds there when it is this same text.
    pub(crate) fn envelope<'a>(&self, body: &'a [u8]) -> Result<&'a str, Refusal> {
        const OPEN: &[u8] = b"<Encrypt>";
        const CLOSE: &[u8] = b"</Encrypt>";
        let unreadable = |why: &str| Refusal::new("unreadable_envelope", why.to_owned());
        if body.len() > self.limits.max_bytes {
            return Err(unreadable("the body is larger than any WeChat envelope"));
        }
        let start = memchr::memmem::find(body, OPEN)
            .filter(|&start| memchr::memmem::rfind(body, OPEN) == Some(start))
            .ok_or_else(|| {
                Refusal::new(
                    "missing_encrypt",
                    "the body has no single <Encrypt> element",
                )
            })?;
        let rest = &body[start + OPEN.len()..];
        let end = memchr::memmem::find(rest, CLOSE)
            .ok_or_else(|| unreadable("<Encrypt> is not closed"))?;
        let inner = &rest[..end];
        let inner = inner
            .strip_prefix(b"<![CDATA[")
            .and_then(|i| i.strip_suffix(b"]]>"))
            .unwrap_or(inner);
        // Nothing else is checked here: `open` decrypts only when the XML
        // reader's text is byte for byte this slice, and the decoder
        // refuses what is not base64.
        match std::str::from_utf8(inner) {
            Ok(inner) if !inner.is_empty() => Ok(inner),
            _ => Err(unreadable("<Encrypt> is empty or not text")),
        }
    }

    /// The decrypted message inside an envelope, read as XML.
    pub(crate) fn open(&self, body: &[u8]) -> Result<Fields, ParseError> {
        let envelope =
            xml::parse(body, &self.limits).map_err(|e| ParseError::new(e.code(), e.to_string()))?;
        let encrypted = envelope.get("Encrypt").ok_or_else(|| {
            ParseError::new("missing_encrypt", "the body has no <Encrypt> element")
        })?;
        // What the signature covered (when verification is on) must be
        // what is decrypted.
        if self.envelope(body).ok() != Some(encrypted) {
            return Err(ParseError::new(
                "ambiguous_envelope",
                "the <Encrypt> the XML holds is not the one that was signed",
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys {
            token: None,
            crypt: None,
            limits: XmlLimits::default(),
        }
    }

    #[test]
    fn the_signed_ciphertext_is_the_one_encrypt_in_plain_base64() {
        let keys = keys();
        let body = b"<xml><ToUserName><![CDATA[gh]]></ToUserName><Encrypt><![CDATA[aGVsbG8+/w==]]></Encrypt></xml>";
        assert_eq!(keys.envelope(body).unwrap(), "aGVsbG8+/w==");
        assert_eq!(
            keys.envelope(b"<xml><Encrypt>aGk=</Encrypt></xml>")
                .unwrap(),
            "aGk="
        );
        for (body, code) in [
            (
                &b"<xml><Encrypt>YQ==</Encrypt><Encrypt>Yg==</Encrypt></xml>"[..],
                "missing_encrypt",
            ),
            (b"<xml><ToUserName>gh</ToUserName></xml>", "missing_encrypt"),
            (b"<xml><Encrypt>YQ==</xml>", "unreadable_envelope"),
            (b"<xml><Encrypt></Encrypt></xml>", "unreadable_envelope"),
            (b"<xml><Encrypt>\xff</Encrypt></xml>", "unreadable_envelope"),
        ] {
            assert_eq!(keys.envelope(body).unwrap_err().code, code, "{body:?}");
        }
        // An entity in the raw text: signed as is, never decrypted, since
        // the XML reader reads it differently.
        let body = b"<xml><Encrypt>&#89;Q==</Encrypt></xml>";
        assert_eq!(keys.envelope(body).unwrap(), "&#89;Q==");
        assert_eq!(keys.open(body).unwrap_err().code, "ambiguous_envelope");
        let huge = format!("<xml><Encrypt>{}</Encrypt></xml>", "A".repeat(70_000));
        assert_eq!(
            keys.envelope(huge.as_bytes()).unwrap_err().code,
            "unreadable_envelope"
        );
    }

    #[test]
    fn only_the_signed_ciphertext_is_decrypted() {
        // The scan finds the commented-out one; the XML reader the other.
        let body = b"<xml><!-- <Encrypt>YQ==</Encrypt> --><Encrypt2>Yg==</Encrypt2></xml>";
        assert!(keys().envelope(body).is_ok());
        let error = keys().open(body).unwrap_err();
        assert_eq!(error.code, "missing_encrypt");
        let body = b"<xml><Encrypt >Yg==</Encrypt><!-- <Encrypt>YQ==</Encrypt> --></xml>";
        assert_eq!(keys().envelope(body).unwrap(), "YQ==");
        assert_eq!(keys().open(body).unwrap_err().code, "ambiguous_envelope");
    }

    #[test]
    fn query_values_are_taken_as_sent_and_decoded_only_when_escaped() {
        let query = CallbackQuery::parse(
            &"/webhooks/wx?signature=abc&timestamp=1409659813&nonce=1372623149\
              &echostr=a%2Bb%3D&encrypt_type=aes&msg_signature=def&openid=o1"
                .parse()
                .unwrap(),
        );
        assert_eq!(query.signature.as_deref(), Some("abc"));
        assert_eq!(query.echostr.as_deref(), Some("a+b="));
        assert!(query.encrypted());
        let long = format!("/w?signature={}", "a".repeat(2000));
        assert_eq!(CallbackQuery::parse(&long.parse().unwrap()).signature, None);
    }
}
