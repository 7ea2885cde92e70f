//! The on-disk encoding of a record's headers: one blob per record instead
//! of a headers table, because headers are always read and written with
//! their record and a join per record would halve throughput.
//!
//! Layout: an empty blob means no headers (the common case costs nothing).
//! Otherwise a version byte (`1`), the header count (`u32 LE`), then per
//! header, in order: `name_len: u32 LE`, `name` (UTF-8), `value_len: u32
//! LE`, `value`. The count makes a blob cut at a header boundary an error
//! rather than fewer headers. Decoding checks every length against the
//! bytes that are left, so a damaged blob is an error, never a panic or a
//! huge allocation.

use bytes::Bytes;

const VERSION: u8 = 1;

/// Why a stored header blob could not be decoded.
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
}

/// The size of [`encode`]'s output, so the caller can reject oversized
/// headers before encoding them.
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

/// Encodes `headers`; `None` if a name or value is longer than `u32::MAX`
/// bytes (the caller rejects such records long before, by size).
pub(crate) fn encode(headers: &[(String, Bytes)]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded_len(headers));
    if headers.is_empty() {
        return Some(out);
    }
    out.push(VERSION);
    out.extend_from_slice(&u32::try_from(headers.len()).ok()?.to_le_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&u32::try_from(name.len()).ok()?.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&u32::try_from(value.len()).ok()?.to_le_bytes());
        out.extend_from_slice(value);
    }
    Some(out)
}

pub(crate) fn decode(blob: &[u8]) -> Result<Vec<(String, Bytes)>, HeaderDecodeError> {
    let Some((&version, mut rest)) = blob.split_first() else {
        return Ok(Vec::new());
    };
    if version != VERSION {
        return Err(HeaderDecodeError::UnknownVersion(version));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(String, Bytes)> {
        vec![
            ("ce_id".to_owned(), Bytes::from_static(b"abc-123")),
            (
                "ce_type".to_owned(),
                Bytes::from_static(b"omni.conversation.v1"),
            ),
            ("empty".to_owned(), Bytes::new()),
            (String::new(), Bytes::from_static(&[0, 255, 1, 254])),
            (
                "ce_id".to_owned(),
                Bytes::from_static(b"duplicate names are kept"),
            ),
            ("ünïcødé".to_owned(), Bytes::from_static("välue".as_bytes())),
        ]
    }

    #[test]
    fn roundtrip_keeps_order_duplicates_and_binary_values() {
        let headers = sample();
        let blob = encode(&headers).unwrap();
        assert_eq!(blob.len(), encoded_len(&headers));
        assert_eq!(decode(&blob).unwrap(), headers);
    }

    #[test]
    fn no_headers_is_an_empty_blob() {
        assert!(encode(&[]).unwrap().is_empty());
        assert_eq!(encoded_len(&[]), 0);
        assert_eq!(decode(&[]).unwrap(), Vec::new());
    }

    #[test]
    fn layout_is_stable() {
        let blob = encode(&[("k".to_owned(), Bytes::from_static(b"vv"))]).unwrap();
        assert_eq!(
            blob,
            [1, 1, 0, 0, 0, 1, 0, 0, 0, b'k', 2, 0, 0, 0, b'v', b'v']
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let blob = encode(&sample()).unwrap();
        for cut in 1..blob.len() {
            let result = decode(&blob[..cut]);
            assert!(
                result.is_err(),
                "prefix of {cut} bytes decoded as {result:?}"
            );
        }
    }

    #[test]
    fn corrupt_bytes_are_errors() {
        assert_eq!(
            decode(&[2, 0, 0]),
            Err(HeaderDecodeError::UnknownVersion(2))
        );
        assert_eq!(
            decode(&[1, 1, 0, 0, 0, 255, 255, 255, 255, b'a']),
            Err(HeaderDecodeError::Truncated {
                at: 9,
                needed: 4_294_967_295,
                left: 1
            })
        );
        assert_eq!(
            decode(&[1, 1, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xfe, 0, 0, 0, 0]),
            Err(HeaderDecodeError::NameNotUtf8 { at: 5 })
        );
        // A name whose value length is missing.
        assert!(matches!(
            decode(&[1, 1, 0, 0, 0, 1, 0, 0, 0, b'k', 9]),
            Err(HeaderDecodeError::Truncated { .. })
        ));
        // A count far beyond what the blob holds.
        assert!(matches!(
            decode(&[1, 255, 255, 255, 255, 0, 0]),
            Err(HeaderDecodeError::Truncated { .. })
        ));
        let mut extra = encode(&sample()).unwrap();
        extra.push(0);
        assert_eq!(decode(&extra), Err(HeaderDecodeError::TrailingBytes(1)));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic xorshift stream stands in for a fuzzer: random
        // blobs, and valid blobs with random bytes flipped.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = encode(&sample()).unwrap();
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut blob: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = blob.first_mut() {
                *first = 1;
            }
            let _ = decode(&blob);
            let mut flipped = valid.clone();
            let at = (next() as usize) % flipped.len();
            flipped[at] = next() as u8;
            let _ = decode(&flipped);
        }
    }
}
