//! CloudEvents 1.0 attributes as Kafka headers (Kafka protocol binding,
//! binary content mode).
//!
//! Binary mode keeps the record value the bare protobuf event, so consumers
//! that ignore CloudEvents lose nothing, while routers and tracing can read
//! the envelope from headers without decoding the value. The same headers are
//! written by the SQLite event log, so `omnid tail` shows both backends alike.

pub(crate) mod rfc3339;

use std::time::SystemTime;

pub use rfc3339::{Rfc3339, format_rfc3339, parse_rfc3339};

/// The CloudEvents version these headers follow.
pub const SPEC_VERSION: &str = "1.0";

/// `ce_type` of a normalized inbound message on `omni.inbound.v1`.
pub const TYPE_CONVERSATION_EVENT: &str = "dev.omnid.conversation_event.v1";
/// `ce_type` of a record on `omni.deadletter.v1`.
pub const TYPE_DEAD_LETTER: &str = "dev.omnid.dead_letter.v1";
/// `ce_type` of a sequenced entry on `omni.timeline.v1`.
pub const TYPE_TIMELINE_EVENT: &str = "dev.omnid.timeline_event.v1";
/// `ce_type` of a helpdesk command (`omni.v1.ThreadingCommand`) on the
/// commands topic.
pub const TYPE_THREADING_COMMAND: &str = "dev.omnid.threading_command.v1";

/// Content type of protobuf-encoded values: `application/protobuf` is the
/// media type registered with IANA, unlike the older unregistered
/// `application/x-protobuf`. It does not name the message type; consumers
/// find that from `ce_type`.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/protobuf";
/// Content type of JSON-encoded values.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Header carrying the event id.
pub const HEADER_ID: &str = "ce_id";
/// Header carrying the event source.
pub const HEADER_SOURCE: &str = "ce_source";
/// Header carrying the event type.
pub const HEADER_TYPE: &str = "ce_type";
/// Header carrying the event time.
pub const HEADER_TIME: &str = "ce_time";
/// Header carrying the CloudEvents spec version.
pub const HEADER_SPEC_VERSION: &str = "ce_specversion";
/// Header carrying the value's media type; the Kafka binding maps
/// `datacontenttype` to this plain header, not to a `ce_` one.
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// Header carrying the W3C trace context.
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// Why a record's headers do not form a CloudEvent we can consume.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudEventError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header appears twice; which one is meant is ambiguous.
    #[error("duplicate header {0}")]
    DuplicateHeader(&'static str),
    /// A required header is present but empty.
    #[error("header {0} is empty")]
    EmptyHeader(&'static str),
    /// A header value is not UTF-8, which the binding requires.
    #[error("header {0} is not valid utf-8")]
    InvalidUtf8(&'static str),
    /// A `ce_specversion` other than 1.0.
    #[error("unsupported specversion {0:?}")]
    UnsupportedSpecVersion(String),
    /// A `ce_time` that is not an RFC 3339 date-time.
    #[error("invalid timestamp {0:?}")]
    InvalidTime(String),
}

/// The CloudEvents attributes Omnid sets on every record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// The event id; for inbound messages the [`crate::EventId`].
    pub id: String,
    /// Where the event came from, e.g. [`source_for_channel`].
    pub source: String,
    /// One of the `TYPE_*` constants.
    pub ty: String,
    /// When the event happened (for messages: when the provider says it was
    /// sent, else when Omnid received it).
    pub time: SystemTime,
    /// One of the `CONTENT_TYPE_*` constants.
    pub content_type: String,
    /// The W3C trace context of the request that produced the event, if any;
    /// written as given, so callers set only values that pass
    /// [`is_valid_traceparent`].
    pub traceparent: Option<String>,
}

impl CloudEvent {
    /// The record headers for this event, in a fixed order.
    pub fn to_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (HEADER_SPEC_VERSION, SPEC_VERSION.to_owned()),
            (HEADER_ID, self.id.clone()),
            (HEADER_SOURCE, self.source.clone()),
            (HEADER_TYPE, self.ty.clone()),
            (HEADER_TIME, format_rfc3339(self.time)),
            (HEADER_CONTENT_TYPE, self.content_type.clone()),
        ];
        if let Some(traceparent) = &self.traceparent {
            headers.push((HEADER_TRACEPARENT, traceparent.clone()));
        }
        headers
    }

    /// Reads the event back from record headers.
    ///
    /// Header names match ASCII case-insensitively and unknown headers
    /// (extensions, other middleware's) are ignored. `ce_id`, `ce_source`,
    /// `ce_type`, `ce_time`, `ce_specversion` (= 1.0) and `content-type` are
    /// required, since Omnid always writes them; a repeated known header is
    /// an error. A malformed `traceparent` is dropped, not an error: the W3C
    /// Trace Context spec says to start a new trace instead.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<CloudEvent, CloudEventError> {
        const KNOWN: [&str; 7] = [
            HEADER_ID,
            HEADER_SOURCE,
            HEADER_TYPE,
            HEADER_TIME,
            HEADER_SPEC_VERSION,
            HEADER_CONTENT_TYPE,
            HEADER_TRACEPARENT,
        ];
        let mut values: [Option<&str>; 7] = [None; 7];
        for (name, value) in headers {
            let Some(index) = KNOWN
                .iter()
                .position(|known| known.eq_ignore_ascii_case(name))
            else {
                continue;
            };
            let known = KNOWN[index];
            if values[index].is_some() {
                return Err(CloudEventError::DuplicateHeader(known));
            }
            let value =
                std::str::from_utf8(value).map_err(|_| CloudEventError::InvalidUtf8(known))?;
            values[index] = Some(value);
        }
        let [
            id,
            source,
            ty,
            time,
            spec_version,
            content_type,
            traceparent,
        ] = values;
        let required = |name: &'static str, value: Option<&'a str>| match value {
            None => Err(CloudEventError::MissingHeader(name)),
            Some("") => Err(CloudEventError::EmptyHeader(name)),
            Some(v) => Ok(v),
        };
        let spec_version = required(HEADER_SPEC_VERSION, spec_version)?;
        if spec_version != SPEC_VERSION {
            return Err(CloudEventError::UnsupportedSpecVersion(
                spec_version.chars().take(32).collect(),
            ));
        }
        Ok(CloudEvent {
            id: required(HEADER_ID, id)?.to_owned(),
            source: required(HEADER_SOURCE, source)?.to_owned(),
            ty: required(HEADER_TYPE, ty)?.to_owned(),
            time: parse_rfc3339(required(HEADER_TIME, time)?)?,
            content_type: required(HEADER_CONTENT_TYPE, content_type)?.to_owned(),
            traceparent: traceparent
                .filter(|t| is_valid_traceparent(t))
                .map(str::to_owned),
        })
    }
}

/// The `ce_source` of events from one channel: `/omnid/channels/{channel_id}`.
///
/// Every byte outside RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`)
/// is percent-encoded as UTF-8, so any channel id yields a valid
/// URI-reference and distinct ids yield distinct sources.
pub fn source_for_channel(channel_id: &str) -> String {
    const PREFIX: &str = "/omnid/channels/";
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut source = String::with_capacity(PREFIX.len() + channel_id.len());
    source.push_str(PREFIX);
    for b in channel_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            source.push(char::from(b));
        } else {
            source.push('%');
            source.push(char::from(HEX[usize::from(b >> 4)]));
            source.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    source
}

/// Whether a `traceparent` value is well formed per W3C Trace Context:
/// `version-traceid-parentid-flags` in lower-case hex, with a trace id and a
/// parent id that are not all zeros and a version other than `ff`.
///
/// Version `00` must be exactly 55 characters; a higher version may append
/// further `-`-prefixed fields, which the spec asks parsers to tolerate.
pub fn is_valid_traceparent(value: &str) -> bool {
    let b = value.as_bytes();
    let is_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let not_zero = |s: &[u8]| s.iter().any(|&c| c != b'0');
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return false;
    }
    let (version, trace_id, parent_id, flags) = (&b[0..2], &b[3..35], &b[36..52], &b[53..55]);
    if ![version, trace_id, parent_id, flags]
        .iter()
        .all(|s| is_hex(s))
        || version == b"ff"
    {
        return false;
    }
    if !not_zero(trace_id) || !not_zero(parent_id) {
        return false;
    }
    if version == b"00" {
        b.len() == 55
    } else {
        b.len() == 55 || b[55] == b'-'
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn sample() -> CloudEvent {
        CloudEvent {
            id: crate::event_id("telegram-main", "12345").to_string(),
            source: source_for_channel("telegram-main"),
            ty: TYPE_CONVERSATION_EVENT.to_owned(),
            time: SystemTime::UNIX_EPOCH + Duration::new(1_795_417_445, 123_456_000),
            content_type: CONTENT_TYPE_PROTOBUF.to_owned(),
            traceparent: Some(TRACEPARENT.to_owned()),
        }
    }

    fn as_borrowed<'a>(headers: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a [u8])> {
        headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    #[test]
    fn headers_round_trip() {
        let event = sample();
        let headers = event.to_headers();
        assert_eq!(
            headers,
            [
                ("ce_specversion", "1.0".to_owned()),
                ("ce_id", "65fa96f4-d8c7-5e3d-ad7f-16c7267f481d".to_owned()),
                ("ce_source", "/omnid/channels/telegram-main".to_owned()),
                ("ce_type", "dev.omnid.conversation_event.v1".to_owned()),
                ("ce_time", "2026-11-23T07:04:05.123456Z".to_owned()),
                ("content-type", "application/protobuf".to_owned()),
                ("traceparent", TRACEPARENT.to_owned()),
            ]
        );
        assert_eq!(CloudEvent::from_headers(as_borrowed(&headers)), Ok(event));
    }

    #[test]
    fn traceparent_only_when_present() {
        let event = CloudEvent {
            traceparent: None,
            ..sample()
        };
        let headers = event.to_headers();
        assert!(headers.iter().all(|(name, _)| *name != "traceparent"));
        assert_eq!(CloudEvent::from_headers(as_borrowed(&headers)), Ok(event));
    }

    #[test]
    fn from_headers_tolerates_extensions_and_case() {
        let owned = sample().to_headers();
        let mut headers = as_borrowed(&owned);
        headers.insert(0, ("ce_partitionkey", b"x"));
        headers.push(("X-Other", &[0xff, 0xfe]));
        headers[1].0 = "CE_SPECVERSION";
        assert_eq!(CloudEvent::from_headers(headers), Ok(sample()));
    }

    #[test]
    fn from_headers_rejects_bad_envelopes() {
        let good = sample().to_headers();
        let without = |name: &str| -> Vec<(&'static str, &[u8])> {
            good.iter()
                .filter(|(n, _)| *n != name)
                .map(|(n, v)| (*n, v.as_bytes()))
                .collect()
        };
        for name in [
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_specversion",
            "content-type",
        ] {
            assert!(
                matches!(CloudEvent::from_headers(without(name)), Err(CloudEventError::MissingHeader(n)) if n == name),
                "{name}"
            );
        }

        let with = |name: &'static str, value: &'static [u8]| {
            let mut h = without(name);
            h.push((name, value));
            CloudEvent::from_headers(h)
        };
        assert_eq!(
            with("ce_specversion", b"0.3"),
            Err(CloudEventError::UnsupportedSpecVersion("0.3".to_owned()))
        );
        assert_eq!(
            with("ce_id", b""),
            Err(CloudEventError::EmptyHeader("ce_id"))
        );
        assert_eq!(
            with("ce_type", b"\xff"),
            Err(CloudEventError::InvalidUtf8("ce_type"))
        );
        assert!(matches!(
            with("ce_time", b"yesterday"),
            Err(CloudEventError::InvalidTime(_))
        ));

        let mut dup = as_borrowed(&good);
        dup.push(("ce_id", b"other"));
        assert_eq!(
            CloudEvent::from_headers(dup),
            Err(CloudEventError::DuplicateHeader("ce_id"))
        );

        // A broken traceparent is dropped, not fatal.
        let event = with("traceparent", b"00-zz-00f067aa0ba902b7-01").unwrap();
        assert_eq!(event.traceparent, None);
    }

    #[test]
    fn time_header_known_values() {
        let event = |secs: u64, nanos: u32| CloudEvent {
            time: SystemTime::UNIX_EPOCH + Duration::new(secs, nanos),
            ..sample()
        };
        let time_of = |e: CloudEvent| {
            e.to_headers()
                .into_iter()
                .find(|(n, _)| *n == "ce_time")
                .unwrap()
                .1
        };
        assert_eq!(time_of(event(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            time_of(event(1_709_164_800, 7_000_000)),
            "2024-02-29T00:00:00.007Z"
        );
        assert_eq!(
            time_of(event(1_795_417_445, 123_456_000)),
            "2026-11-23T07:04:05.123456Z"
        );
    }

    #[test]
    fn source_percent_encodes() {
        assert_eq!(
            source_for_channel("sms-ir_1.a~b"),
            "/omnid/channels/sms-ir_1.a~b"
        );
        assert_eq!(source_for_channel("a/b c"), "/omnid/channels/a%2Fb%20c");
        assert_eq!(
            source_for_channel("微信"),
            "/omnid/channels/%E5%BE%AE%E4%BF%A1"
        );
        assert_eq!(source_for_channel("%"), "/omnid/channels/%25");
    }

    #[test]
    fn traceparent_validation() {
        assert!(is_valid_traceparent(TRACEPARENT));
        assert!(is_valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad:?}");
        }
    }
}
