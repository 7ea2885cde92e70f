//! Protobuf `Timestamp`s from the times providers send.
//!
//! A `Timestamp` holds only years 0001 to 9999 (its JSON mapping is RFC
//! 3339 with four-digit years, and consumers convert it to their own time
//! types), and a value outside that range makes encoding the event to JSON
//! fail downstream. Every parser of provider times builds its timestamp
//! through [`checked_timestamp`], so a hostile or broken sender cannot put
//! such a value on the stream.

use omni_proto::Timestamp;

/// 0001-01-01T00:00:00Z, the earliest time a `Timestamp` holds.
pub const MIN_SECONDS: i64 = -62_135_596_800;
/// 9999-12-31T23:59:59Z, the latest whole second a `Timestamp` holds.
pub const MAX_SECONDS: i64 = 253_402_300_799;
/// One more than the largest nanosecond part.
const NANOS_PER_SECOND: i32 = 1_000_000_000;

/// Why a provider's time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// The text is not an RFC 3339 date-time (a leap second `:60`
    /// included: the Unix time scale has no such second).
    #[error("time {0:?} is not an RFC 3339 date-time")]
    Malformed(String),
    /// Seconds before year 1 or after year 9999, or nanoseconds outside
    /// `0..=999999999`.
    #[error("time {seconds}s {nanos}ns is outside the years 0001 to 9999")]
    OutOfRange {
        /// Seconds since the Unix epoch.
        seconds: i64,
        /// The nanosecond part.
        nanos: i64,
    },
}

/// The timestamp of `seconds` since the Unix epoch plus `nanos`, if
/// protobuf can represent it.
pub fn checked_timestamp(seconds: i64, nanos: i32) -> Result<Timestamp, TimestampError> {
    if (MIN_SECONDS..=MAX_SECONDS).contains(&seconds) && (0..NANOS_PER_SECOND).contains(&nanos) {
        Ok(Timestamp { seconds, nanos })
    } else {
        Err(TimestampError::OutOfRange {
            seconds,
            nanos: i64::from(nanos),
        })
    }
}

/// Parses an RFC 3339 date-time, with the grammar of
/// [`crate::cloudevents::parse_rfc3339`] (numeric offsets, any number of
/// fraction digits), into a checked timestamp. A space may stand for the
/// `T`, as RFC 3339 §5.6 allows applications and providers do.
pub fn parse_timestamp(text: &str) -> Result<Timestamp, TimestampError> {
    let parts = if text.as_bytes().get(10) == Some(&b' ') {
        let spelled = format!("{}T{}", &text[..10], &text[11..]);
        crate::cloudevents::rfc3339::parse_unix_parts(&spelled)
    } else {
        crate::cloudevents::rfc3339::parse_unix_parts(text)
    };
    let (seconds, nanos) =
        parts.ok_or_else(|| TimestampError::Malformed(text.chars().take(64).collect()))?;
    // Below 1e9 by construction of the parser.
    let nanos = i32::try_from(nanos).unwrap_or(i32::MAX);
    checked_timestamp(seconds, nanos)
}

/// Deserializes an optional RFC 3339 string with [`parse_timestamp`], for
/// `#[serde(default, deserialize_with = "...")]` on request fields: serde's
/// own `Timestamp` deserializer accepts year 0000 and leap seconds, which
/// give values protobuf cannot represent.
pub fn deserialize_optional<'de, D>(deserializer: D) -> Result<Option<Timestamp>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text: Option<String> = serde::Deserialize::deserialize(deserializer)?;
    text.map(|t| parse_timestamp(&t))
        .transpose()
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_boundaries() {
        assert_eq!(
            parse_timestamp("0001-01-01T00:00:00Z"),
            Ok(Timestamp {
                seconds: MIN_SECONDS,
                nanos: 0
            })
        );
        assert_eq!(
            parse_timestamp("9999-12-31T23:59:59.999999999Z"),
            Ok(Timestamp {
                seconds: MAX_SECONDS,
                nanos: 999_999_999
            })
        );
        assert!(checked_timestamp(MIN_SECONDS, 0).is_ok());
        assert!(checked_timestamp(MAX_SECONDS, 999_999_999).is_ok());
        for (seconds, nanos) in [
            (MIN_SECONDS - 1, 0),
            (MIN_SECONDS - 1, 999_999_999),
            (MAX_SECONDS + 1, 0),
            (i64::MIN, 0),
            (i64::MAX, 0),
            (0, -1),
            (0, 1_000_000_000),
            (0, i32::MAX),
        ] {
            assert_eq!(
                checked_timestamp(seconds, nanos),
                Err(TimestampError::OutOfRange {
                    seconds,
                    nanos: i64::from(nanos)
                }),
                "{seconds} {nanos}"
            );
        }
    }

    #[test]
    fn out_of_range_texts_refused() {
        for text in [
            "0000-01-01T00:00:00Z",
            "0000-12-31T23:59:59.999999999Z",
            // Year 1 in UTC, year 0 after the offset.
            "0001-01-01T00:30:00+01:00",
            // Year 9999 locally, year 10000 in UTC.
            "9999-12-31T23:30:00-01:00",
        ] {
            assert!(
                matches!(
                    parse_timestamp(text),
                    Err(TimestampError::OutOfRange { .. })
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn leap_seconds_and_junk_refused() {
        for text in [
            "2024-01-01T23:59:60Z",
            "2016-12-31T23:59:60Z",
            "",
            "yesterday",
            "2024-01-01",
            "10000-01-01T00:00:00Z",
            "-0001-01-01T00:00:00Z",
        ] {
            assert!(
                matches!(parse_timestamp(text), Err(TimestampError::Malformed(_))),
                "{text}"
            );
        }
        for text in [
            "2025-11-23T07:59:00+00:00",
            "2025-11-23t07:59:00z",
            "2025-11-23 07:59:00Z",
            "2025-11-23 11:29:00+03:30",
        ] {
            assert_eq!(
                parse_timestamp(text),
                Ok(Timestamp {
                    seconds: 1_763_884_740,
                    nanos: 0
                }),
                "{text}"
            );
        }
        for text in [
            "2025-11-23 07:59:00",
            "2025-11-23  07:59:00Z",
            "2025-11-2 07:59:00Z",
        ] {
            assert!(parse_timestamp(text).is_err(), "{text}");
        }
    }

    #[test]
    fn optional_fields_deserialize_checked() {
        #[derive(Debug, serde::Deserialize)]
        struct Body {
            #[serde(default, deserialize_with = "deserialize_optional")]
            at: Option<Timestamp>,
        }
        let at = |json: &str| serde_json::from_str::<Body>(json).map(|b| b.at);
        assert_eq!(at("{}").unwrap(), None);
        assert_eq!(at(r#"{"at":null}"#).unwrap(), None);
        assert_eq!(
            at(r#"{"at":"1970-01-01T00:00:01.5Z"}"#).unwrap(),
            Some(Timestamp {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        for bad in [
            r#"{"at":"0000-01-01T00:00:00Z"}"#,
            r#"{"at":"2024-01-01T23:59:60Z"}"#,
            r#"{"at":5}"#,
        ] {
            assert!(at(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_messages_follow_house_style() {
        for e in [
            TimestampError::Malformed("x".into()),
            TimestampError::OutOfRange {
                seconds: 0,
                nanos: -1,
            },
        ] {
            let msg = e.to_string();
            assert!(msg.starts_with(|c: char| c.is_lowercase()), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
        }
    }
}
