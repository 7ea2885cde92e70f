//! The envelope every Meta webhook shares: `{"object", "entry": [{"id",
//! "time", "changes": [{"field", "value"}], "messaging": [...]}]}`.
//!
//! WhatsApp puts its messages and statuses in `changes[].value`; Messenger
//! and Instagram put theirs in `messaging[]`. Each item is kept as raw JSON
//! here and read by its kind's normalizer, so one item Omnid cannot read is
//! dead-lettered on its own while the rest of the POST is appended.
//!
//! Everything is bounded before serde sees it: the body must be UTF-8, at
//! most [`Limits::max_depth`] deep (a plain byte scan, so a hostile
//! `[[[[...` costs one pass and never recursion), and carry at most
//! [`Limits::max_items`] entries, changes and messaging items together
//! (Meta batches up to 1,000 updates in one POST).

use omni_connector::ParseError;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Bounds on one POST's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of arrays and objects. Meta's payloads are at most
    /// 8 deep (an order's product items); 32 leaves room for new fields.
    pub max_depth: usize,
    /// Most entries, changes and messaging items in one POST.
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_items: 2_000,
        }
    }
}

/// Why a body is not a Meta webhook envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the body is not UTF-8 (byte {0})")]
    InvalidUtf8(usize),
    #[error("the body nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("the body is not a webhook envelope: {0}")]
    InvalidJson(String),
    #[error("the body carries {count} entries, changes and items; at most {max} are read")]
    TooManyItems { count: usize, max: usize },
    #[error("the envelope is for {found:?}, this channel reads {expected:?}")]
    UnexpectedObject {
        found: String,
        expected: &'static str,
    },
}

impl EnvelopeError {
    /// Every [`EnvelopeError::code`]: bodies Meta never sends, answered
    /// 400 rather than acknowledged.
    pub const CODES: [&'static str; 5] = [
        "invalid_utf8",
        "too_deep",
        "invalid_json",
        "too_many_items",
        "unexpected_object",
    ];

    /// The stable code of the error (dead-letter reason, metric label).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUtf8(_) => "invalid_utf8",
            Self::TooDeep(_) => "too_deep",
            Self::InvalidJson(_) => "invalid_json",
            Self::TooManyItems { .. } => "too_many_items",
            Self::UnexpectedObject { .. } => "unexpected_object",
        }
    }
}

impl From<EnvelopeError> for ParseError {
    fn from(error: EnvelopeError) -> Self {
        ParseError::new(error.code(), error.to_string())
    }
}

/// One POST, its items still raw.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// `whatsapp_business_account`, `page` or `instagram`.
    pub object: String,
    #[serde(default, borrow)]
    pub entry: Vec<Entry<'a>>,
}

/// One account's part of a POST.
#[derive(Debug, Deserialize)]
pub struct Entry<'a> {
    /// The WhatsApp Business Account, Page or Instagram account id. Meta
    /// sends it as a string; a number is accepted too.
    #[serde(default, deserialize_with = "string_or_number")]
    pub id: String,
    /// When Meta sent the entry (seconds or, on Messenger, milliseconds).
    #[serde(default)]
    pub time: Option<i64>,
    #[serde(default, borrow)]
    pub changes: Vec<Change<'a>>,
    #[serde(default, borrow)]
    pub messaging: Vec<&'a RawValue>,
}

/// One `changes[]` item: which field changed and its new value.
#[derive(Debug, Deserialize)]
pub struct Change<'a> {
    #[serde(default)]
    pub field: String,
    #[serde(borrow)]
    pub value: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    /// Reads `body` as the envelope of `object` (`whatsapp_business_account`,
    /// `page`, `instagram`) within `limits`.
    pub fn parse(
        body: &'a [u8],
        expected: &'static str,
        limits: &Limits,
    ) -> Result<Self, EnvelopeError> {
        let text =
            std::str::from_utf8(body).map_err(|e| EnvelopeError::InvalidUtf8(e.valid_up_to()))?;
        if omni_connector::json::depth(body) > limits.max_depth {
            return Err(EnvelopeError::TooDeep(limits.max_depth));
        }
        let envelope: Envelope<'a> = serde_json::from_str(text).map_err(|e| {
            // serde quotes the input, which may be any UTF-8: cut on a
            // character boundary.
            EnvelopeError::InvalidJson(e.to_string().chars().take(200).collect())
        })?;
        if envelope.object != expected {
            let found = envelope.object.chars().take(64).collect();
            return Err(EnvelopeError::UnexpectedObject { found, expected });
        }
        let count = envelope
            .entry
            .iter()
            .map(|e| 1 + e.changes.len() + e.messaging.len())
            .sum::<usize>();
        if count > limits.max_items {
            return Err(EnvelopeError::TooManyItems {
                count,
                max: limits.max_items,
            });
        }
        Ok(envelope)
    }
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(u64),
    }
    Ok(match Id::deserialize(deserializer)? {
        Id::Text(text) => text,
        Id::Number(number) => number.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_changes_and_messaging_items_raw() {
        let body = br#"{"object":"page","entry":[{"id":"1","time":1458692752478,
            "messaging":[{"sender":{"id":"2"}},{"x":[1,2]}]},
            {"id":3,"changes":[{"field":"messages","value":{"a":1}}]}]}"#;
        let envelope = Envelope::parse(body, "page", &Limits::default()).unwrap();
        assert_eq!(envelope.entry.len(), 2);
        assert_eq!(envelope.entry[0].messaging[1].get(), r#"{"x":[1,2]}"#);
        assert_eq!(envelope.entry[1].id, "3");
        assert_eq!(envelope.entry[1].changes[0].field, "messages");
        assert_eq!(
            envelope.entry[1].changes[0].value.unwrap().get(),
            r#"{"a":1}"#
        );
    }

    #[test]
    fn refuses_what_meta_never_sends() {
        let limits = Limits::default();
        let code = |body: &[u8], object| Envelope::parse(body, object, &limits).unwrap_err().code();
        assert_eq!(code(b"{\"object\":\"page\xff\"}", "page"), "invalid_utf8");
        assert_eq!(code(b"not json", "page"), "invalid_json");
        assert_eq!(
            code(br#"{"object":"page"}"#, "instagram"),
            "unexpected_object"
        );
        let deep = format!(
            "{{\"object\":\"page\",\"x\":{}{}}}",
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(code(deep.as_bytes(), "page"), "too_deep");
        let many = format!(
            "{{\"object\":\"page\",\"entry\":[{}]}}",
            vec!["{\"id\":\"1\"}"; 10_000].join(",")
        );
        assert_eq!(code(many.as_bytes(), "page"), "too_many_items");
        for code in EnvelopeError::CODES {
            assert!(!code.is_empty());
        }
    }

    #[test]
    fn long_multibyte_input_in_errors_is_cut_on_character_boundaries() {
        // serde quotes the offending string; 200 bytes falls inside a
        // two-byte letter here.
        let body = format!("{{\"object\":\"x{}\",\"entry\":5}}", "ش".repeat(300));
        let error = Envelope::parse(body.as_bytes(), "page", &Limits::default()).unwrap_err();
        assert!(matches!(error.code(), "invalid_json" | "unexpected_object"));
        let object = format!("{{\"object\":\"x{}\"}}", "ش".repeat(300));
        let error = Envelope::parse(object.as_bytes(), "page", &Limits::default()).unwrap_err();
        assert_eq!(error.code(), "unexpected_object");
    }
}
