//! Webhook signature checks. Every comparison of a received signature with
//! an expected one is constant-time, so response timing leaks nothing about
//! how many bytes matched.

use hmac::{
    Hmac, Mac, SimpleHmac,
    digest::{Digest, core_api::BlockSizeUser},
};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 over the concatenation of `parts` (so callers sign
/// `timestamp || "." || body` without copying the body).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // new_from_slice accepts keys of any length for HMAC; it cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("hmac accepts keys of any length"),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Whether `provided_hex` is the hex HMAC-SHA256 of `parts` under `key`.
/// Malformed hex is simply a mismatch.
pub fn verify_hmac_sha256_hex(key: &[u8], parts: &[&[u8]], provided_hex: &str) -> bool {
    HmacSha256Key::new(key).verify_hex(parts, provided_hex)
}

/// An HMAC-SHA256 key with its inner and outer pads already hashed, for a
/// secret that signs every request of a channel: each MAC then starts from
/// a copy of that state instead of hashing the key's two blocks again.
#[derive(Clone)]
pub struct HmacSha256Key(HmacSha256);

impl std::fmt::Debug for HmacSha256Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The state is derived from the secret: never printed.
        f.write_str("HmacSha256Key(..)")
    }
}

impl HmacSha256Key {
    pub fn new(key: &[u8]) -> Self {
        match HmacSha256::new_from_slice(key) {
            Ok(mac) => Self(mac),
            Err(_) => unreachable!("hmac accepts keys of any length"),
        }
    }

    /// HMAC-SHA256 over the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `provided_hex` (either case, surrounding whitespace ignored)
    /// is the MAC of `parts`, compared in constant time. Malformed hex is
    /// simply a mismatch.
    pub fn verify_hex(&self, parts: &[&[u8]], provided_hex: &str) -> bool {
        let Some(provided) = decode_hex_32(provided_hex.trim()) else {
            return false;
        };
        constant_time_eq(&self.mac(parts), &provided)
    }
}

/// The 32 bytes a 64-digit hex string spells, without allocating; `None`
/// for any other length or a non-hex digit. The string is the sender's
/// claim, not a secret, so decoding it may take data-dependent time.
fn decode_hex_32(hex: &str) -> Option<[u8; 32]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// HMAC over the concatenation of `parts` with any hash, for providers
/// that sign with something other than SHA-256 (Twilio's SHA-1, the MD5
/// and SHA-512 variants Vonage offers). Generic over the hash so this crate
/// depends on none of them.
pub fn hmac<D: Digest + BlockSizeUser>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = match <SimpleHmac<D> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("hmac accepts keys of any length"),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// A plain digest of the concatenation of `parts`, for the older schemes
/// that hash the payload with the secret appended instead of keying an
/// HMAC (Vonage's `md5hash`).
pub fn digest<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
    let mut hasher = D::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().to_vec()
}

/// Whether `provided_hex` (either case) spells `expected`. Malformed hex
/// is simply a mismatch.
pub fn eq_hex(expected: &[u8], provided_hex: &str) -> bool {
    hex::decode(provided_hex.trim()).is_ok_and(|provided| constant_time_eq(expected, &provided))
}

/// Constant-time equality; differing lengths compare unequal (the length of
/// a signature is public anyway).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_test_case_2() {
        // RFC 4231, test case 2: key "Jefe".
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn generic_hmac_matches_rfc4231_test_case_2() {
        // RFC 4231, test case 2, for SHA-256 and SHA-512.
        let parts: &[&[u8]] = &[b"what do ya want ", b"for nothing?"];
        assert_eq!(
            hmac::<Sha256>(b"Jefe", parts),
            hmac_sha256(b"Jefe", parts).to_vec()
        );
        assert_eq!(
            hex::encode(hmac::<sha2::Sha512>(b"Jefe", parts)),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554\
             9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    #[test]
    fn generic_hmac_matches_rfc4231_test_case_6_long_key() {
        // RFC 4231, test case 6: a 131-byte key, longer than the block.
        let key = [0xaa_u8; 131];
        assert_eq!(
            hex::encode(hmac::<Sha256>(
                &key,
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn digest_and_hex_comparison() {
        // FIPS 180-2, appendix B.1: SHA-256("abc"), in two parts.
        let abc = digest::<Sha256>(&[b"a", b"bc"]);
        let spelled = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hex::encode(&abc), spelled);
        assert!(eq_hex(&abc, spelled));
        assert!(eq_hex(&abc, &spelled.to_uppercase()));
        assert!(!eq_hex(&abc, &spelled[..62]));
        assert!(!eq_hex(&abc, "not hex"));
        assert!(!eq_hex(&abc, &spelled.replace('b', "c")));
    }

    #[test]
    fn keyed_mac_matches_the_one_shot_mac_and_decodes_only_64_hex_digits() {
        let key = HmacSha256Key::new(b"Jefe");
        let parts: &[&[u8]] = &[b"what do ya want ", b"for nothing?"];
        assert_eq!(key.mac(parts), hmac_sha256(b"Jefe", parts));
        // The state is reused: a second MAC is not the continuation of the first.
        assert_eq!(key.mac(parts), hmac_sha256(b"Jefe", parts));
        let spelled = hex::encode(key.mac(parts));
        assert!(key.verify_hex(parts, &spelled));
        assert!(key.verify_hex(parts, &format!(" {} ", spelled.to_uppercase())));
        assert!(!key.verify_hex(parts, &spelled[..62]));
        assert!(!key.verify_hex(parts, &format!("{spelled}00")));
        assert!(!key.verify_hex(parts, &spelled.replacen(&spelled[..1], "g", 1)));
        assert!(!key.verify_hex(&[b"what do ya want for nothing!"], &spelled));
        assert_eq!(decode_hex_32(&"0f".repeat(32)), Some([0x0f; 32]));
        assert_eq!(decode_hex_32(&"é".repeat(32)), None);
        assert!(!format!("{key:?}").contains("Jefe"));
    }

    #[test]
    fn verify_accepts_right_and_rejects_wrong() {
        let key = b"secret";
        let good = hex::encode(hmac_sha256(key, &[b"1700000000", b".", b"{}"]));
        assert!(verify_hmac_sha256_hex(key, &[b"1700000000.{}"], &good));
        assert!(verify_hmac_sha256_hex(
            key,
            &[b"1700000000.{}"],
            &good.to_uppercase()
        ));
        let mut bad = good.clone().into_bytes();
        bad[10] = if bad[10] == b'0' { b'1' } else { b'0' };
        assert!(!verify_hmac_sha256_hex(
            key,
            &[b"1700000000.{}"],
            std::str::from_utf8(&bad).unwrap()
        ));
        assert!(!verify_hmac_sha256_hex(key, &[b"1700000000.{}"], "zz"));
        assert!(!verify_hmac_sha256_hex(
            key,
            &[b"1700000000.{}"],
            &good[..62]
        ));
        assert!(!verify_hmac_sha256_hex(
            b"other",
            &[b"1700000000.{}"],
            &good
        ));
    }
}
