//! The API channel's request signature: pure functions, no I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use omni_connector::signature::{HmacSha256Key, hmac_sha256};

pub const TIMESTAMP_HEADER: &str = "x-omnid-timestamp";
pub const SIGNATURE_HEADER: &str = "x-omnid-signature";

/// Why a request is not authentic. All map to 403; the code tells the
/// sender what to fix without revealing anything about the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing X-Omnid-Timestamp header")]
    MissingTimestamp,
    #[error("X-Omnid-Timestamp is not a unix time in seconds")]
    InvalidTimestamp,
    #[error("X-Omnid-Timestamp is outside the replay window")]
    StaleTimestamp,
    #[error("missing X-Omnid-Signature header")]
    MissingSignature,
    #[error("signature does not match")]
    Mismatch,
}

impl AuthError {
    pub const fn code(self) -> &'static str {
        match self {
            Self::MissingTimestamp | Self::InvalidTimestamp => "invalid_timestamp",
            Self::StaleTimestamp => "stale_timestamp",
            Self::MissingSignature => "missing_signature",
            Self::Mismatch => "invalid_signature",
        }
    }
}

/// The `X-Omnid-Signature` value for `body` signed at `timestamp`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    format!(
        "v1={}",
        hex::encode(hmac_sha256(secret, &[timestamp.as_bytes(), b".", body]))
    )
}

/// Checks the headers of a request against any of `secrets`.
///
/// The signature header may list several `v1=` values separated by commas,
/// so a sender rotating secrets can sign with both.
pub fn verify<S: AsRef<[u8]>>(
    secrets: &[S],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: SystemTime,
    window: Duration,
) -> Result<(), AuthError> {
    let keys: Vec<HmacSha256Key> = secrets
        .iter()
        .map(|secret| HmacSha256Key::new(secret.as_ref()))
        .collect();
    verify_keyed(&keys, timestamp, signature, body, now, window)
}

/// [`verify`] with keys prepared once per channel, as the channel does for
/// every request.
pub fn verify_keyed(
    keys: &[HmacSha256Key],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: SystemTime,
    window: Duration,
) -> Result<(), AuthError> {
    let timestamp = timestamp.ok_or(AuthError::MissingTimestamp)?.trim();
    let seconds: u64 = timestamp.parse().map_err(|_| AuthError::InvalidTimestamp)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now.abs_diff(seconds) > window.as_secs() {
        return Err(AuthError::StaleTimestamp);
    }
    let signature = signature.ok_or(AuthError::MissingSignature)?;
    let mut matched = false;
    for candidate in signature
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
    {
        for key in keys {
            // No early exit: the work done does not depend on which matched.
            matched |= key.verify_hex(&[timestamp.as_bytes(), b".", body], candidate);
        }
    }
    if matched {
        Ok(())
    } else {
        Err(AuthError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_763_884_800;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn accepts_a_fresh_correct_signature_with_either_secret() {
        let body = br#"{"external_id":"1"}"#;
        let sig = sign(b"new", NOW, body);
        let ts = NOW.to_string();
        let window = Duration::from_secs(300);
        assert_eq!(
            verify(
                &[b"new"],
                Some(&ts),
                Some(&sig),
                body,
                at(NOW + 299),
                window
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                &[b"old", b"new"],
                Some(&ts),
                Some(&sig),
                body,
                at(NOW),
                window
            ),
            Ok(())
        );
        let both = format!("v1=00ff, {sig}");
        assert_eq!(
            verify(&[b"new"], Some(&ts), Some(&both), body, at(NOW), window),
            Ok(())
        );
    }

    #[test]
    fn rejects_tampering_staleness_and_missing_parts() {
        let body = br#"{"external_id":"1"}"#;
        let sig = sign(b"k", NOW, body);
        let ts = NOW.to_string();
        let w = Duration::from_secs(300);
        let now = at(NOW);
        assert_eq!(
            verify(
                &[b"k"],
                Some(&ts),
                Some(&sig),
                b"{\"external_id\":\"2\"}",
                now,
                w
            ),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            verify(&[b"other"], Some(&ts), Some(&sig), body, now, w),
            Err(AuthError::Mismatch)
        );
        let moved = (NOW + 1).to_string();
        assert_eq!(
            verify(&[b"k"], Some(&moved), Some(&sig), body, now, w),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            verify(&[b"k"], Some(&ts), Some(&sig), body, at(NOW + 301), w),
            Err(AuthError::StaleTimestamp)
        );
        assert_eq!(
            verify(&[b"k"], Some(&ts), Some(&sig), body, at(NOW - 301), w),
            Err(AuthError::StaleTimestamp)
        );
        assert_eq!(
            verify(&[b"k"], None, Some(&sig), body, now, w),
            Err(AuthError::MissingTimestamp)
        );
        assert_eq!(
            verify(&[b"k"], Some("soon"), Some(&sig), body, now, w),
            Err(AuthError::InvalidTimestamp)
        );
        assert_eq!(
            verify(&[b"k"], Some(&ts), None, body, now, w),
            Err(AuthError::MissingSignature)
        );
        let bare = sig.trim_start_matches("v1=");
        assert_eq!(
            verify(&[b"k"], Some(&ts), Some(bare), body, now, w),
            Err(AuthError::Mismatch)
        );
    }
}
