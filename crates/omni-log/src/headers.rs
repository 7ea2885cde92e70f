//! The on-disk encoding of a record's headers: one blob per record instead
//! of a headers table, because headers are always read and written with
//! their record and a join per record would halve throughput.
//!
//! Two encodings, told apart by the first byte; readers accept both, so a
//! file keeps its older rows as they were written.
//!
//! **Literal (`1`)**, every header spelled out: the header count (`u32
//! LE`), then per header, in order: `name_len: u32 LE`, `name` (UTF-8),
//! `value_len: u32 LE`, `value`. The count makes a blob cut at a header
//! boundary an error rather than fewer headers.
//!
//! **Templated (`2`)**: CloudEvents headers are mostly the same from one
//! record to the next. `ce_specversion`, `ce_source`, `ce_type` and
//! `content-type` depend on the channel and topic only, and the per-record
//! ones can often be derived from the rest of the record: the daemon's
//! `ce_id` is the event id inside the payload, its `ce_time` the record's
//! timestamp plus the sub-millisecond part. So a record's headers are split
//! into a [`Template`], stored once per file (the log's
//! `log_header_templates` table) and referred to by id, and the few bytes
//! that differ per record, its *slots*. The blob is `2`, the template id
//! (varint), then one slot per header the template does not hold, in
//! header order:
//!
//! - [`Kind::Inline`]: `len` (varint), the value.
//! - [`Kind::PayloadSlice`]: `start`, `len` (varints): the value is these
//!   bytes of the (uncompressed) payload.
//! - [`Kind::Time`]: nanoseconds after the record's timestamp (zigzag
//!   varint): the value is that instant in RFC 3339, UTC, with the fewest
//!   of 0, 3, 6 or 9 fraction digits that represent it exactly (the form
//!   the daemon writes).
//! - [`Kind::TraceParent`]: 26 bytes: the value is a W3C `traceparent` of
//!   version `00` (55 lower-case characters) spelling them in hex.
//!
//! A value is derived only where deriving it gives back the same bytes
//! (checked when encoding), so readers always get byte-identical headers.
//! The template is `1`, the header count (varint), then per header: name
//! (varint length, UTF-8), kind (one byte) and, for [`Kind::Stored`], the
//! value (varint length, bytes).
//!
//! An empty blob means no headers in either encoding. Decoding checks every
//! length against the bytes that are left, so a damaged blob is an error,
//! never a panic or a huge allocation.

use bytes::Bytes;

/// First byte of a literal blob.
const LITERAL: u8 = 1;
/// First byte of a templated blob.
const TEMPLATED: u8 = 2;
/// First byte of an encoded template.
const TEMPLATE_VERSION: u8 = 1;

/// Headers whose values are set per channel or topic, not per record, and
/// so go into the template. Only these: a header unique to each record in
/// the template would make a template per record.
const SHARED_HEADERS: [&str; 6] = [
    "ce_specversion",
    "ce_source",
    "ce_type",
    "content-type",
    "ce_dataschema",
    // The spool's record of the primary topic (see `spool`).
    "omnid-spool-topic",
];

/// Longest value a template holds; a longer one is unlikely to repeat.
const MAX_SHARED_VALUE: usize = 256;

/// Shortest `ce_id` looked up in the payload: a slot takes 2 to 4 bytes.
const MIN_SLICE: usize = 5;

/// Why a stored header blob (or a record's payload, stored compressed)
/// could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderDecodeError {
    #[error("unknown header encoding version {0}")]
    UnknownVersion(u8),
    #[error("header blob truncated at byte {at}: {needed} more bytes needed, {left} left")]
    Truncated {
        at: usize,
        needed: usize,
        left: usize,
    },
    #[error("header name at byte {at} is not valid utf-8")]
    NameNotUtf8 { at: usize },
    #[error("header blob has {0} bytes after its last header")]
    TrailingBytes(usize),
    /// A varint longer than 64 bits.
    #[error("header blob has an overlong number at byte {at}")]
    BadNumber { at: usize },
    /// The template a blob refers to is not in the file.
    #[error("header template {0} does not exist")]
    UnknownTemplate(i64),
    /// A template holds a kind this build does not know.
    #[error("header template has unknown kind {0}")]
    UnknownKind(u8),
    /// A derived value falls outside what it is derived from.
    #[error("derived header {name} is out of range")]
    OutOfRange { name: String },
    /// The payload's codec is unknown or its compressed bytes are damaged.
    #[error("payload cannot be decompressed: {0}")]
    Payload(String),
}

/// The size of [`encode`]'s output, so the caller can reject oversized
/// headers before encoding them. Templated blobs are never larger.
pub(crate) fn encoded_len(headers: &[(String, Bytes)]) -> usize {
    if headers.is_empty() {
        return 0;
    }
    // Version byte and count, then two lengths per header.
    5 + headers
        .iter()
        .map(|(name, value)| 8 + name.len() + value.len())
        .sum::<usize>()
}

/// Encodes `headers` literally; `None` if a name or value is longer than
/// `u32::MAX` bytes (the caller rejects such records long before, by size).
pub(crate) fn encode(headers: &[(String, Bytes)]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded_len(headers));
    if headers.is_empty() {
        return Some(out);
    }
    out.push(LITERAL);
    out.extend_from_slice(&u32::try_from(headers.len()).ok()?.to_le_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&u32::try_from(name.len()).ok()?.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&u32::try_from(value.len()).ok()?.to_le_bytes());
        out.extend_from_slice(value);
    }
    Some(out)
}

/// How one header's value is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// In the template: the same for every record that uses it.
    Stored(Bytes),
    /// In the record's slot.
    Inline,
    /// A range of the payload.
    PayloadSlice,
    /// The record's timestamp plus a slot's nanoseconds, in RFC 3339.
    Time,
    /// A W3C `traceparent` of version `00`, its 26 bytes unhexed.
    TraceParent,
}

impl Kind {
    fn code(&self) -> u8 {
        match self {
            Kind::Stored(_) => 0,
            Kind::Inline => 1,
            Kind::PayloadSlice => 2,
            Kind::Time => 3,
            Kind::TraceParent => 4,
        }
    }
}

/// The part of a templated record's headers stored once per file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pub entries: Vec<(String, Kind)>,
}

/// Headers split for the templated encoding: the encoded template (the key
/// under which the file stores it) and the record's slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Split {
    pub template: Vec<u8>,
    pub slots: Vec<u8>,
}

/// Splits non-empty `headers` of a record with this payload and timestamp
/// into template and slots; `None` for no headers (stored as an empty
/// blob) or a value longer than `u32::MAX` bytes.
pub(crate) fn split(
    headers: &[(String, Bytes)],
    payload: &[u8],
    timestamp_ms: i64,
) -> Option<Split> {
    if headers.is_empty() {
        return None;
    }
    // Enough for every name and value with their lengths: no regrowing.
    let estimate = headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 6)
        .sum::<usize>();
    let mut template = Vec::with_capacity(estimate.min(4096));
    template.push(TEMPLATE_VERSION);
    put_varint(&mut template, headers.len() as u64);
    let mut slots = Vec::with_capacity(32);
    for (name, value) in headers {
        u32::try_from(value.len()).ok()?;
        put_bytes(&mut template, name.as_bytes());
        let kind = if name == "ce_id" && value.len() >= MIN_SLICE {
            match memchr::memmem::find(payload, value) {
                Some(start) => {
                    put_varint(&mut slots, start as u64);
                    put_varint(&mut slots, value.len() as u64);
                    Kind::PayloadSlice
                }
                None => Kind::Inline,
            }
        } else if name == "ce_time" {
            match time::delta_ns(value, timestamp_ms) {
                Some(delta) => {
                    put_varint(&mut slots, zigzag(delta));
                    Kind::Time
                }
                None => Kind::Inline,
            }
        } else if name == "traceparent" {
            match trace_context::pack(value) {
                Some(packed) => {
                    slots.extend_from_slice(&packed);
                    Kind::TraceParent
                }
                None => Kind::Inline,
            }
        } else if value.len() <= MAX_SHARED_VALUE && SHARED_HEADERS.contains(&name.as_str()) {
            Kind::Stored(Bytes::new())
        } else {
            Kind::Inline
        };
        template.push(kind.code());
        match kind {
            Kind::Stored(_) => put_bytes(&mut template, value),
            Kind::Inline => put_bytes(&mut slots, value),
            Kind::PayloadSlice | Kind::Time | Kind::TraceParent => {}
        }
    }
    Some(Split { template, slots })
}

/// The record blob of a templated record.
pub(crate) fn encode_templated(template_id: i64, slots: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 10 + slots.len());
    out.push(TEMPLATED);
    put_varint(&mut out, template_id as u64);
    out.extend_from_slice(slots);
    out
}

/// The template a blob refers to, if it is a templated one.
pub(crate) fn template_id(blob: &[u8]) -> Result<Option<i64>, HeaderDecodeError> {
    match blob.split_first() {
        Some((&TEMPLATED, mut rest)) => {
            let id = take_varint(blob, &mut rest)?;
            Ok(Some(id as i64))
        }
        _ => Ok(None),
    }
}

/// Decodes an encoded template.
pub(crate) fn decode_template(bytes: &[u8]) -> Result<Template, HeaderDecodeError> {
    let Some((&version, mut rest)) = bytes.split_first() else {
        return Err(HeaderDecodeError::Truncated {
            at: 0,
            needed: 1,
            left: 0,
        });
    };
    if version != TEMPLATE_VERSION {
        return Err(HeaderDecodeError::UnknownVersion(version));
    }
    let count = take_varint(bytes, &mut rest)?;
    // Each entry takes at least 2 bytes.
    let mut entries = Vec::with_capacity((count as usize).min(rest.len() / 2));
    for _ in 0..count {
        let name_at = bytes.len() - rest.len();
        let name = take_varint_prefixed(bytes, &mut rest)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| HeaderDecodeError::NameNotUtf8 { at: name_at })?;
        let kind = match take(bytes, &mut rest, 1)?[0] {
            0 => Kind::Stored(Bytes::copy_from_slice(take_varint_prefixed(
                bytes, &mut rest,
            )?)),
            1 => Kind::Inline,
            2 => Kind::PayloadSlice,
            3 => Kind::Time,
            4 => Kind::TraceParent,
            other => return Err(HeaderDecodeError::UnknownKind(other)),
        };
        entries.push((name.to_owned(), kind));
    }
    if !rest.is_empty() {
        return Err(HeaderDecodeError::TrailingBytes(rest.len()));
    }
    Ok(Template { entries })
}

/// Decodes a record's blob. `template` is the one [`template_id`] names
/// (ignored for literal blobs); `payload` is the uncompressed payload.
pub(crate) fn decode(
    blob: &[u8],
    template: Option<&Template>,
    payload: &Bytes,
    timestamp_ms: i64,
) -> Result<Vec<(String, Bytes)>, HeaderDecodeError> {
    let Some((&version, mut rest)) = blob.split_first() else {
        return Ok(Vec::new());
    };
    match version {
        LITERAL => decode_literal(blob, rest),
        TEMPLATED => {
            let id = take_varint(blob, &mut rest)? as i64;
            let template = template.ok_or(HeaderDecodeError::UnknownTemplate(id))?;
            let mut headers = Vec::with_capacity(template.entries.len());
            for (name, kind) in &template.entries {
                let value = match kind {
                    Kind::Stored(value) => value.clone(),
                    Kind::Inline => Bytes::copy_from_slice(take_varint_prefixed(blob, &mut rest)?),
                    Kind::PayloadSlice => {
                        let start = take_varint(blob, &mut rest)?;
                        let len = take_varint(blob, &mut rest)?;
                        let range = usize::try_from(start)
                            .ok()
                            .zip(usize::try_from(len).ok())
                            .and_then(|(start, len)| Some(start..start.checked_add(len)?))
                            .filter(|range| range.end <= payload.len());
                        match range {
                            Some(range) => payload.slice(range),
                            None => return Err(out_of_range(name)),
                        }
                    }
                    Kind::TraceParent => {
                        let packed = take(blob, &mut rest, trace_context::PACKED)?;
                        Bytes::from(trace_context::unpack(packed))
                    }
                    Kind::Time => {
                        let delta = unzigzag(take_varint(blob, &mut rest)?);
                        let text = time::format_after(timestamp_ms, delta)
                            .ok_or_else(|| out_of_range(name))?;
                        Bytes::from(text)
                    }
                };
                headers.push((name.clone(), value));
            }
            if !rest.is_empty() {
                return Err(HeaderDecodeError::TrailingBytes(rest.len()));
            }
            Ok(headers)
        }
        other => Err(HeaderDecodeError::UnknownVersion(other)),
    }
}

fn out_of_range(name: &str) -> HeaderDecodeError {
    HeaderDecodeError::OutOfRange {
        name: name.to_owned(),
    }
}

fn decode_literal(blob: &[u8], mut rest: &[u8]) -> Result<Vec<(String, Bytes)>, HeaderDecodeError> {
    let count = take(blob, &mut rest, 4)?;
    let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]);
    // Each header takes at least 8 bytes: a corrupt count cannot make us
    // reserve more than the blob could hold.
    let mut headers = Vec::with_capacity((count as usize).min(rest.len() / 8));
    for _ in 0..count {
        let name_at = blob.len() - rest.len();
        let name = take_prefixed(blob, &mut rest)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| HeaderDecodeError::NameNotUtf8 { at: name_at })?;
        let value = take_prefixed(blob, &mut rest)?;
        headers.push((name.to_owned(), Bytes::copy_from_slice(value)));
    }
    if !rest.is_empty() {
        return Err(HeaderDecodeError::TrailingBytes(rest.len()));
    }
    Ok(headers)
}

/// Splits one `u32 LE` length-prefixed field off the front of `rest`.
fn take_prefixed<'a>(blob: &[u8], rest: &mut &'a [u8]) -> Result<&'a [u8], HeaderDecodeError> {
    let len = take(blob, rest, 4)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
    // A length that does not fit in usize cannot fit in what is left either.
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    take(blob, rest, len)
}

/// Splits one varint length-prefixed field off the front of `rest`.
fn take_varint_prefixed<'a>(
    blob: &[u8],
    rest: &mut &'a [u8],
) -> Result<&'a [u8], HeaderDecodeError> {
    let len = take_varint(blob, rest)?;
    take(blob, rest, usize::try_from(len).unwrap_or(usize::MAX))
}

fn take<'a>(blob: &[u8], rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderDecodeError> {
    if rest.len() < n {
        return Err(HeaderDecodeError::Truncated {
            at: blob.len() - rest.len(),
            needed: n,
            left: rest.len(),
        });
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

/// Appends `value` as a LEB128 varint (7 bits a byte, low bits first).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads a LEB128 varint off the front of `rest`.
fn take_varint(blob: &[u8], rest: &mut &[u8]) -> Result<u64, HeaderDecodeError> {
    let at = blob.len() - rest.len();
    let mut value = 0_u64;
    for (i, &byte) in rest.iter().enumerate() {
        let bits = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return Err(HeaderDecodeError::BadNumber { at });
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            *rest = &rest[i + 1..];
            return Ok(value);
        }
        if i == 9 {
            return Err(HeaderDecodeError::BadNumber { at });
        }
    }
    Err(HeaderDecodeError::Truncated {
        at: blob.len(),
        needed: 1,
        left: 0,
    })
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// W3C Trace Context `traceparent` headers of version `00`:
/// `00-<32 hex>-<16 hex>-<2 hex>`, lower-case as the spec requires, kept as
/// the 26 bytes they spell. Anything else (upper case, another version or
/// length) is stored as it is.
mod trace_context {
    /// The bytes of a packed value.
    pub(super) const PACKED: usize = 26;
    const LEN: usize = 55;
    const DASHES: [usize; 3] = [2, 35, 52];
    const HEX: &[u8; 16] = b"0123456789abcdef";

    pub(super) fn pack(value: &[u8]) -> Option<[u8; PACKED]> {
        if value.len() != LEN || !value.starts_with(b"00") {
            return None;
        }
        let mut digits = [0_u8; 2 * PACKED];
        let mut n = 0;
        for (at, &byte) in value.iter().enumerate() {
            if DASHES.contains(&at) {
                if byte != b'-' {
                    return None;
                }
                continue;
            }
            digits[n] = match byte {
                b'0'..=b'9' => byte - b'0',
                b'a'..=b'f' => byte - b'a' + 10,
                _ => return None,
            };
            n += 1;
        }
        let mut packed = [0_u8; PACKED];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            packed[i] = pair[0] << 4 | pair[1];
        }
        Some(packed)
    }

    pub(super) fn unpack(packed: &[u8]) -> Vec<u8> {
        let mut value = Vec::with_capacity(LEN);
        for &byte in packed {
            if DASHES.contains(&value.len()) {
                value.push(b'-');
            }
            value.push(HEX[usize::from(byte >> 4)]);
            value.push(HEX[usize::from(byte & 0xf)]);
        }
        value
    }
}

/// `ce_time` as the daemon writes it ([`omni_model::cloudevents::Rfc3339`]:
/// UTC with a `Z` and the fewest of 0, 3, 6 or 9 fraction digits that
/// represent the instant exactly), kept as nanoseconds after the record's
/// timestamp.
mod time {
    use omni_model::cloudevents::Rfc3339;

    const NANOS_PER_SECOND: i128 = 1_000_000_000;

    /// Nanoseconds from `timestamp_ms` to the instant `value` names, if
    /// `value` is in exactly the form [`format_after`] writes back.
    pub(super) fn delta_ns(value: &[u8], timestamp_ms: i64) -> Option<i64> {
        let (seconds, nanos) = Rfc3339::parse_exact(value)?;
        let instant = i128::from(seconds) * NANOS_PER_SECOND + i128::from(nanos);
        i64::try_from(instant - i128::from(timestamp_ms) * 1_000_000).ok()
    }

    /// The instant `delta_ns` after `timestamp_ms`, formatted; `None` outside
    /// years 0000 to 9999.
    pub(super) fn format_after(timestamp_ms: i64, delta_ns: i64) -> Option<Vec<u8>> {
        let instant = i128::from(timestamp_ms) * 1_000_000 + i128::from(delta_ns);
        let seconds = i64::try_from(instant.div_euclid(NANOS_PER_SECOND)).ok()?;
        let nanos = instant.rem_euclid(NANOS_PER_SECOND) as u32;
        Rfc3339::from_unix(seconds, nanos).map(|text| text.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        time::{Duration, SystemTime},
    };

    use super::*;

    fn h(name: &str, value: &[u8]) -> (String, Bytes) {
        (name.to_owned(), Bytes::copy_from_slice(value))
    }

    fn sample() -> Vec<(String, Bytes)> {
        vec![
            h("ce_id", b"abc-123"),
            h("ce_type", b"omni.conversation.v1"),
            h("empty", b""),
            h("", &[0, 255, 1, 254]),
            h("ce_id", b"duplicate names are kept"),
            h("ünïcødé", "välue".as_bytes()),
        ]
    }

    /// The templated round trip, with the template through its encoding.
    fn roundtrip(
        headers: &[(String, Bytes)],
        payload: &[u8],
        timestamp_ms: i64,
    ) -> (Split, Vec<(String, Bytes)>) {
        let split = split(headers, payload, timestamp_ms).expect("non-empty headers");
        let blob = encode_templated(42, &split.slots);
        assert_eq!(template_id(&blob), Ok(Some(42)));
        let template = decode_template(&split.template).expect("template decodes");
        let payload = Bytes::copy_from_slice(payload);
        let decoded = decode(&blob, Some(&template), &payload, timestamp_ms).expect("decodes");
        (split, decoded)
    }

    /// Headers as the daemon writes them (omni-model's CloudEvent).
    fn cloudevent(id: &str, time: SystemTime, traceparent: Option<&str>) -> Vec<(String, Bytes)> {
        omni_model::cloudevents::CloudEvent {
            id: id.to_owned(),
            source: omni_model::cloudevents::source_for_channel("api-main"),
            ty: omni_model::cloudevents::TYPE_CONVERSATION_EVENT.to_owned(),
            time,
            content_type: omni_model::cloudevents::CONTENT_TYPE_PROTOBUF.to_owned(),
            traceparent: traceparent.map(str::to_owned),
        }
        .to_headers()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), Bytes::from(value)))
        .collect()
    }

    fn millis(time: SystemTime) -> i64 {
        time.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    #[test]
    fn literal_roundtrip_keeps_order_duplicates_and_binary_values() {
        let headers = sample();
        let blob = encode(&headers).unwrap();
        assert_eq!(blob.len(), encoded_len(&headers));
        assert_eq!(template_id(&blob), Ok(None));
        assert_eq!(decode(&blob, None, &Bytes::new(), 0).unwrap(), headers);
    }

    #[test]
    fn no_headers_is_an_empty_blob() {
        assert!(encode(&[]).unwrap().is_empty());
        assert_eq!(encoded_len(&[]), 0);
        assert_eq!(split(&[], b"payload", 0), None);
        assert_eq!(template_id(&[]), Ok(None));
        assert_eq!(decode(&[], None, &Bytes::new(), 0).unwrap(), Vec::new());
    }

    #[test]
    fn literal_layout_is_stable() {
        let blob = encode(&[h("k", b"vv")]).unwrap();
        assert_eq!(
            blob,
            [1, 1, 0, 0, 0, 1, 0, 0, 0, b'k', 2, 0, 0, 0, b'v', b'v']
        );
    }

    #[test]
    fn templated_layout_is_stable() {
        // 2023-11-14T22:13:20.000123456Z is 123456 ns after the timestamp.
        let headers = [
            h("ce_id", b"id-77777"),
            h("ce_type", b"t"),
            h("ce_time", b"2023-11-14T22:13:20.000123456Z"),
            h("x", b"vv"),
        ];
        let payload = b"...id-77777...";
        let split = split(&headers, payload, 1_700_000_000_000).unwrap();
        assert_eq!(
            split.template,
            [
                1, 4, //
                5, b'c', b'e', b'_', b'i', b'd', 2, //
                7, b'c', b'e', b'_', b't', b'y', b'p', b'e', 0, 1, b't', //
                7, b'c', b'e', b'_', b't', b'i', b'm', b'e', 3, //
                1, b'x', 1,
            ]
        );
        // Slice 3..11; zigzag(123456) = 246912 = 0x3c480; "vv".
        assert_eq!(split.slots, [3, 8, 0x80, 0x89, 0x0f, 2, b'v', b'v']);
        assert_eq!(encode_templated(300, &[9]), [2, 0xac, 0x02, 9]);
    }

    #[test]
    fn daemon_headers_shrink_to_a_few_bytes_and_come_back_identical() {
        let time = SystemTime::UNIX_EPOCH + Duration::new(1_795_417_445, 123_456_789);
        let id = "65fa96f4-d8c7-5e3d-ad7f-16c7267f481d";
        let payload = [b"\x0a\x24".as_slice(), id.as_bytes(), b"\x12\x08api-main"].concat();
        let headers = cloudevent(id, time, None);
        let (split, decoded) = roundtrip(&headers, &payload, millis(time));
        assert_eq!(decoded, headers);
        // ce_id: start and length; ce_time: 456789 ns as a zigzag varint.
        assert_eq!(split.slots.len(), 2 + 3, "{:?}", split.slots);
        // Every record of the channel shares the template.
        let later = time + Duration::from_micros(1234);
        let other_id = "0e6c0f3d-61f4-5b1e-9d77-0c6b1b8b3f20";
        let other_payload = [b"\x0a\x24".as_slice(), other_id.as_bytes()].concat();
        let (other, decoded) = roundtrip(
            &cloudevent(other_id, later, None),
            &other_payload,
            millis(later),
        );
        assert_eq!(decoded, cloudevent(other_id, later, None));
        assert_eq!(other.template, split.template);
    }

    #[test]
    fn every_shape_round_trips_byte_for_byte() {
        let ts = 1_700_000_000_123_i64;
        let payload = b"\x0a\x05hello event-id-1 \xff\x00 binary".as_slice();
        let traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let shapes: Vec<Vec<(String, Bytes)>> = vec![
            // Absent content-type and ce_time.
            vec![h("ce_specversion", b"1.0"), h("ce_id", b"event-id-1")],
            // Traceparent and extra headers, in an odd order.
            vec![
                h("traceparent", traceparent),
                h("ce_source", b"/omnid/channels/x"),
                h("x-tenant", b"acme"),
                h("ce_id", b"event-id-1"),
            ],
            // Binary values, empty values, empty and non-ASCII names.
            vec![
                h("bin", &[0, 1, 2, 255, 254]),
                h("", b""),
                h("ünï", &[0xc3]),
                h("content-type", &[0xff; 3]),
            ],
            // Duplicates, also of derived and shared names.
            vec![
                h("ce_id", b"event-id-1"),
                h("ce_id", b"event-id-1"),
                h("ce_id", b"not-in-payload"),
                h("ce_type", b"a"),
                h("ce_type", b"b"),
                h("ce_time", b"2023-11-14T22:13:20.123Z"),
                h("ce_time", b"2023-11-14T22:13:20.123Z"),
            ],
            // A ce_id too short to look up, one at the payload's very end.
            vec![h("ce_id", b"hi"), h("ce_id", b"binary")],
            // A shared name with a value too long to share.
            vec![h("ce_source", &[b's'; MAX_SHARED_VALUE + 1])],
            // Spool headers.
            vec![
                h("ce_id", b"event-id-1"),
                h("omnid-spool-topic", b"omni.inbound.v1"),
                h("omnid-spool-original", b"17"),
            ],
        ];
        for headers in &shapes {
            let (_, decoded) = roundtrip(headers, payload, ts);
            assert_eq!(&decoded, headers);
        }
    }

    #[test]
    fn times_derive_only_in_the_daemons_exact_form() {
        let ts = 1_700_000_000_123_i64;
        let cases: [(&[u8], bool); 16] = [
            (b"2023-11-14T22:13:20.123Z", true),
            (b"2023-11-14T22:13:20.123456Z", true),
            (b"2023-11-14T22:13:20.123456789Z", true),
            (b"2023-11-14T22:13:20Z", true),
            // Years away, before 1970; more than 292 years (i64
            // nanoseconds) from the timestamp stays inline.
            (b"1969-12-31T23:59:59.999999999Z", true),
            (b"0000-01-01T00:00:00Z", false),
            (b"9999-12-31T23:59:59.999999999Z", false),
            // Not the fewest digits, other offsets, other letters.
            (b"2023-11-14T22:13:20.120Z", true),
            (b"2023-11-14T22:13:20.100000Z", false),
            (b"2023-11-14T22:13:20.000Z", false),
            (b"2023-11-14T22:13:20.1Z", false),
            (b"2023-11-14T22:13:20+00:00", false),
            (b"2023-11-14t22:13:20Z", false),
            (b"2023-11-14T22:13:20z", false),
            // Dates that do not exist.
            (b"2023-02-30T22:13:20Z", false),
            (b"2023-11-14T24:00:00Z", false),
        ];
        for (value, derived) in cases {
            let headers = [h("ce_time", value)];
            let split = split(&headers, b"", ts).unwrap();
            let kind = decode_template(&split.template).unwrap().entries[0]
                .1
                .clone();
            let shown = String::from_utf8_lossy(value);
            assert_eq!(kind == Kind::Time, derived, "{shown}");
            let (_, decoded) = roundtrip(&headers, b"", ts);
            assert_eq!(decoded, headers, "{shown}");
        }
        // The ends of the range, from a timestamp near them.
        assert!(time::delta_ns(b"0000-01-01T00:00:00Z", -62_167_219_200_000).is_some());
        let end = 253_402_300_799_999;
        let delta = time::delta_ns(b"9999-12-31T23:59:59.999999999Z", end).unwrap();
        assert_eq!(
            time::format_after(end, delta).unwrap(),
            b"9999-12-31T23:59:59.999999999Z"
        );
        // Leap years.
        assert!(time::delta_ns(b"2024-02-29T00:00:00Z", 0).is_some());
        assert!(time::delta_ns(b"2023-02-29T00:00:00Z", 0).is_none());
        assert!(time::delta_ns(b"2000-02-29T00:00:00Z", 0).is_some());
        assert!(time::delta_ns(b"1900-02-29T00:00:00Z", 0).is_none());
    }

    #[test]
    fn times_match_the_daemons_formatter() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Up to ~2200, at every precision.
            let seconds = state % 7_258_118_400;
            let nanos = match state >> 60 & 3 {
                0 => 0,
                1 => (state >> 20) as u32 % 1000 * 1_000_000,
                2 => (state >> 20) as u32 % 1_000_000 * 1000,
                _ => (state >> 20) as u32 % 1_000_000_000,
            };
            let time = SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos);
            let text = omni_model::cloudevents::format_rfc3339(time);
            let ts = millis(time);
            let delta =
                time::delta_ns(text.as_bytes(), ts).unwrap_or_else(|| panic!("{text} not derived"));
            assert!((0..1_000_000).contains(&delta), "{text}: {delta}");
            assert_eq!(time::format_after(ts, delta).unwrap(), text.as_bytes());
            // From a timestamp far from the time, too.
            let far = ts - 86_400_000 * 400;
            let delta = time::delta_ns(text.as_bytes(), far).unwrap();
            assert_eq!(time::format_after(far, delta).unwrap(), text.as_bytes());
        }
    }

    #[test]
    fn trace_parents_pack_only_in_the_exact_form() {
        let valid = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let packed = trace_context::pack(valid).unwrap();
        assert_eq!(packed[..3], [0x00, 0x4b, 0xf9]);
        assert_eq!(trace_context::unpack(&packed), valid);
        let cases: [&[u8]; 7] = [
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            b"004bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            b"",
        ];
        for value in cases {
            assert_eq!(trace_context::pack(value), None, "{value:?}");
        }
        for value in cases.iter().copied().chain([valid.as_slice()]) {
            let headers = [h("traceparent", value), h("ce_id", b"x")];
            let (split, decoded) = roundtrip(&headers, b"", 0);
            assert_eq!(decoded, headers);
            let kind = decode_template(&split.template).unwrap().entries[0]
                .1
                .clone();
            assert_eq!(kind == Kind::TraceParent, value == valid);
        }
        // Packed, a traceparent takes 26 bytes of the record instead of 56.
        let (split, _) = roundtrip(&[h("traceparent", valid)], b"", 0);
        assert_eq!(split.slots.len(), 26);
    }

    #[test]
    fn templates_differ_only_where_records_differ() {
        let payload = b"xx event-0001 event-0002";
        let t = |headers: &[(String, Bytes)]| split(headers, payload, 0).unwrap().template;
        let base = t(&[h("ce_id", b"event-0001"), h("ce_type", b"a")]);
        // Another derived id: the same template.
        assert_eq!(base, t(&[h("ce_id", b"event-0002"), h("ce_type", b"a")]));
        // Another shared value, another kind, another order: another one.
        let others = [
            t(&[h("ce_id", b"event-0001"), h("ce_type", b"b")]),
            t(&[h("ce_id", b"event-0003"), h("ce_type", b"a")]),
            t(&[h("ce_type", b"a"), h("ce_id", b"event-0001")]),
        ];
        let mut seen = HashMap::new();
        for template in std::iter::once(&base).chain(&others) {
            assert!(seen.insert(template.clone(), ()).is_none());
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let blob = encode(&sample()).unwrap();
        for cut in 1..blob.len() {
            let result = decode(&blob[..cut], None, &Bytes::new(), 0);
            assert!(
                result.is_err(),
                "prefix of {cut} bytes decoded as {result:?}"
            );
        }
        let headers = [
            h("ce_id", b"event-id-1"),
            h("x", b"value"),
            h("ce_time", b"2023-11-14T22:13:20.123Z"),
            h(
                "traceparent",
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ];
        let payload = Bytes::from_static(b"event-id-1");
        let split = split(&headers, &payload, 0).unwrap();
        let template = decode_template(&split.template).unwrap();
        let blob = encode_templated(1, &split.slots);
        for cut in 1..blob.len() {
            let result = decode(&blob[..cut], Some(&template), &payload, 0);
            assert!(
                result.is_err(),
                "prefix of {cut} bytes decoded as {result:?}"
            );
        }
        for cut in 0..split.template.len() {
            let result = decode_template(&split.template[..cut]);
            assert!(result.is_err(), "template prefix of {cut} bytes decoded");
        }
    }

    #[test]
    fn corrupt_bytes_are_errors() {
        let none = Bytes::new();
        assert_eq!(
            decode(&[3, 0, 0], None, &none, 0),
            Err(HeaderDecodeError::UnknownVersion(3))
        );
        assert_eq!(
            decode(&[1, 1, 0, 0, 0, 255, 255, 255, 255, b'a'], None, &none, 0),
            Err(HeaderDecodeError::Truncated {
                at: 9,
                needed: 4_294_967_295,
                left: 1
            })
        );
        assert_eq!(
            decode(
                &[1, 1, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xfe, 0, 0, 0, 0],
                None,
                &none,
                0
            ),
            Err(HeaderDecodeError::NameNotUtf8 { at: 5 })
        );
        // A count far beyond what the blob holds.
        assert!(matches!(
            decode(&[1, 255, 255, 255, 255, 0, 0], None, &none, 0),
            Err(HeaderDecodeError::Truncated { .. })
        ));
        let mut extra = encode(&sample()).unwrap();
        extra.push(0);
        assert_eq!(
            decode(&extra, None, &none, 0),
            Err(HeaderDecodeError::TrailingBytes(1))
        );
        // Templated: no template, an overlong id, a slice past the payload.
        assert_eq!(
            decode(&[2, 5], None, &none, 0),
            Err(HeaderDecodeError::UnknownTemplate(5))
        );
        assert_eq!(
            template_id(&[
                2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
            ]),
            Err(HeaderDecodeError::BadNumber { at: 1 })
        );
        let template = Template {
            entries: vec![("ce_id".to_owned(), Kind::PayloadSlice)],
        };
        assert_eq!(
            decode(
                &[2, 1, 3, 8],
                Some(&template),
                &Bytes::from_static(b"0123456789"),
                0
            ),
            Err(HeaderDecodeError::OutOfRange {
                name: "ce_id".to_owned()
            })
        );
        assert_eq!(
            decode(
                &[2, 1, 3, 7, 0],
                Some(&template),
                &Bytes::from_static(b"0123456789"),
                0
            ),
            Err(HeaderDecodeError::TrailingBytes(1))
        );
        // A time past year 9999.
        let template = Template {
            entries: vec![("ce_time".to_owned(), Kind::Time)],
        };
        let mut blob = vec![2, 1];
        put_varint(&mut blob, zigzag(i64::MAX));
        assert!(matches!(
            decode(&blob, Some(&template), &none, 253_402_300_799_000),
            Err(HeaderDecodeError::OutOfRange { .. })
        ));
        // Templates: an unknown version and kind, a name that is not UTF-8.
        assert_eq!(
            decode_template(&[2, 0]),
            Err(HeaderDecodeError::UnknownVersion(2))
        );
        assert_eq!(
            decode_template(&[1, 1, 1, b'a', 9]),
            Err(HeaderDecodeError::UnknownKind(9))
        );
        assert_eq!(
            decode_template(&[1, 1, 1, 0xff, 1]),
            Err(HeaderDecodeError::NameNotUtf8 { at: 2 })
        );
        assert_eq!(
            decode_template(&[1, 0, 0]),
            Err(HeaderDecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn varints_round_trip_at_their_edges() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut rest = out.as_slice();
            assert_eq!(take_varint(&out, &mut rest), Ok(value));
            assert!(rest.is_empty());
        }
        for value in [0, 1, -1, i64::MAX, i64::MIN, 999_999, -999_999] {
            assert_eq!(unzigzag(zigzag(value)), value);
        }
        // Eleven bytes, or a tenth byte above 1, overflow 64 bits.
        let mut rest = [0x80_u8; 10].as_slice();
        let blob = [0x80_u8; 10];
        assert!(take_varint(&blob, &mut rest).is_err());
        let blob = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(take_varint(&blob, &mut blob.as_slice()).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic xorshift stream stands in for a fuzzer: random
        // blobs, and valid blobs and templates with random bytes flipped.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let literal = encode(&sample()).unwrap();
        let payload = Bytes::from_static(b"event-id-1 and more");
        let headers = [
            h("ce_id", b"event-id-1"),
            h("x", b"value"),
            h("ce_type", b"t"),
            h("ce_time", b"2023-11-14T22:13:20.123Z"),
            h(
                "traceparent",
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ];
        let split = split(&headers, &payload, 0).unwrap();
        let template = decode_template(&split.template).unwrap();
        let templated = encode_templated(1, &split.slots);
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut blob: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = blob.first_mut() {
                *first = 1 + (next() % 2) as u8;
            }
            let _ = decode(&blob, Some(&template), &payload, next() as i64);
            let _ = decode_template(&blob);
            for valid in [&literal, &templated, &split.template] {
                let mut flipped = valid.clone();
                let at = (next() as usize) % flipped.len();
                flipped[at] = next() as u8;
                let _ = decode(&flipped, Some(&template), &payload, 0);
                let _ = decode_template(&flipped);
            }
        }
    }
}
