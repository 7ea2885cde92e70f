//! WeChat's published message crypto (the scheme of its `WXBizMsgCrypt`
//! samples), shared by Official Accounts (safe and compatible mode) and
//! WeCom callbacks. Pure: no I/O, no clock; [`MsgCrypt::encrypt`] is the
//! only function that draws randomness.
//!
//! - Signatures: SHA-1 over the token and the request's parts, sorted and
//!   concatenated ([`sign`], [`verify`]). The URL check signs
//!   `timestamp, nonce`; safe mode and WeCom sign
//!   `timestamp, nonce, Encrypt` (`msg_signature`).
//! - Bodies: AES-256-CBC with the IV the key's first 16 bytes, PKCS#7
//!   padded to a multiple of 32 bytes, over
//!   `random(16) | u32 BE length | message | receive id`, base64 encoded.
//!
//! CBC has no integrity of its own: a changed ciphertext can decrypt to a
//! changed message. The `msg_signature` covers the ciphertext, so a caller
//! verifies it before decrypting ([`MsgCrypt::decrypt_verified`] does
//! both); the padding, length and receive-id checks only catch accidents
//! such as a wrong or rotated key.

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig, general_purpose::STANDARD},
};
use omni_connector::signature::constant_time_eq;
use sha1::{Digest, Sha1};

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

/// The longest `Encrypt` value (base64 characters) [`MsgCrypt::decrypt`]
/// reads. WeChat's messages are a few kilobytes; this only bounds the work
/// a hostile request can cause.
pub const MAX_CIPHERTEXT_LEN: usize = 1024 * 1024;

/// WeChat pads to multiples of 32 bytes (twice the AES block).
const PAD_BLOCK: usize = 32;
const AES_BLOCK: usize = 16;
const RANDOM_LEN: usize = 16;
const HEADER_LEN: usize = RANDOM_LEN + 4;

/// An EncodingAESKey is 43 base64 characters drawn at random, so its last
/// character usually carries non-zero bits beyond the 32 bytes; WeChat's
/// own samples ignore them, and so does this engine.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// A 32-byte AES key from an EncodingAESKey. Its `Debug` never shows the
/// key.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

impl AesKey {
    /// Reads the 43-character EncodingAESKey (`AESKey =
    /// Base64_Decode(EncodingAESKey + "=")`). Anything but exactly 43
    /// base64 characters is refused, surrounding white space included.
    pub fn from_encoding_aes_key(text: &str) -> Result<AesKey, CryptoError> {
        if text.len() != 43
            || !text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        {
            return Err(CryptoError::InvalidKey);
        }
        let bytes = KEY_ENGINE
            .decode(format!("{text}="))
            .map_err(|_| CryptoError::InvalidKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::InvalidKey)?;
        Ok(AesKey(key))
    }

    fn iv(&self) -> [u8; AES_BLOCK] {
        let mut iv = [0u8; AES_BLOCK];
        iv.copy_from_slice(&self.0[..AES_BLOCK]);
        iv
    }
}

/// The lowercase hex SHA-1 of the token and `parts`, sorted byte-wise and
/// concatenated: the URL check's `signature` is `sign(token, [timestamp,
/// nonce])`, safe mode's and WeCom's `msg_signature` is `sign(token,
/// [timestamp, nonce, encrypt])`.
pub fn sign(token: &[u8], parts: &[&str]) -> String {
    let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    all.push(token);
    all.extend(parts.iter().map(|p| p.as_bytes()));
    // A stable sort: for a handful of parts it is a plain insertion sort.
    all.sort();
    let mut hasher = Sha1::new();
    for part in all {
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

/// Whether `given` is [`sign`]`(token, parts)`, compared in constant time.
/// WeChat sends lowercase hex, and only that is accepted.
pub fn verify(token: &[u8], parts: &[&str], given: &str) -> bool {
    constant_time_eq(sign(token, parts).as_bytes(), given.as_bytes())
}

/// The crypto of one channel: its current key, the key before the last
/// rotation (still accepted for decryption), and its receive id (the
/// Official Account's AppID, or the WeCom corp id).
#[derive(Debug, Clone)]
pub struct MsgCrypt {
    current: AesKey,
    previous: Option<AesKey>,
    receive_id: String,
}

impl MsgCrypt {
    pub fn new(current: AesKey, previous: Option<AesKey>, receive_id: impl Into<String>) -> Self {
        Self {
            current,
            previous,
            receive_id: receive_id.into(),
        }
    }

    /// The receive id every ciphertext must name.
    pub fn receive_id(&self) -> &str {
        &self.receive_id
    }

    /// Decrypts an `Encrypt` value to the message bytes. Tries the current
    /// key, then the previous one; when both fail, the current key's error
    /// is returned. Check the `msg_signature` first (see the module's
    /// documentation), or use [`MsgCrypt::decrypt_verified`].
    pub fn decrypt(&self, encrypted: &str) -> Result<Vec<u8>, CryptoError> {
        let ciphertext = decode_ciphertext(encrypted)?;
        match open(&self.current, &ciphertext, &self.receive_id) {
            Ok(message) => Ok(message),
            Err(error) => match &self.previous {
                Some(previous) => open(previous, &ciphertext, &self.receive_id).map_err(|_| error),
                None => Err(error),
            },
        }
    }

    /// Checks `msg_signature` (`sign(token, [timestamp, nonce,
    /// encrypted])`) in constant time, then decrypts.
    pub fn decrypt_verified(
        &self,
        token: &[u8],
        timestamp: &str,
        nonce: &str,
        msg_signature: &str,
        encrypted: &str,
    ) -> Result<Vec<u8>, CryptoError> {
        if !verify(token, &[timestamp, nonce, encrypted], msg_signature) {
            return Err(CryptoError::BadSignature);
        }
        self.decrypt(encrypted)
    }

    /// Encrypts `message` with the current key and 16 fresh random bytes.
    pub fn encrypt(&self, message: &[u8]) -> String {
        self.encrypt_with(message, rand::random())
    }

    /// Encrypts with the given random prefix (for known-answer tests).
    pub fn encrypt_with(&self, message: &[u8], random: [u8; 16]) -> String {
        // Replies are at most a few megabytes; a message of 4 GiB or more
        // cannot be framed and gets a saturated (wrong) length instead of a
        // panic.
        let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
        let content_len = HEADER_LEN + message.len() + self.receive_id.len();
        let pad = PAD_BLOCK - content_len % PAD_BLOCK;
        let mut buf = Vec::with_capacity(content_len + pad);
        buf.extend_from_slice(&random);
        buf.extend_from_slice(&length.to_be_bytes());
        buf.extend_from_slice(message);
        buf.extend_from_slice(self.receive_id.as_bytes());
        // pad is 1..=32, so it fits a byte.
        buf.resize(content_len + pad, pad as u8);
        let key = &self.current;
        let mut encryptor = Aes256CbcEnc::new(&key.0.into(), &key.iv().into());
        for chunk in buf.chunks_exact_mut(AES_BLOCK) {
            encryptor.encrypt_block_mut(chunk.into());
        }
        STANDARD.encode(&buf)
    }
}

/// Base64 to ciphertext bytes, with the length checks that need no key.
fn decode_ciphertext(encrypted: &str) -> Result<Vec<u8>, CryptoError> {
    if encrypted.len() > MAX_CIPHERTEXT_LEN {
        return Err(CryptoError::TooLong {
            len: encrypted.len(),
        });
    }
    let ciphertext = STANDARD
        .decode(encrypted)
        .map_err(|_| CryptoError::Base64)?;
    // WeChat pads to 32 bytes; whole AES blocks are all decryption needs.
    if ciphertext.is_empty() || ciphertext.len() % AES_BLOCK != 0 {
        return Err(CryptoError::BlockLength {
            len: ciphertext.len(),
        });
    }
    Ok(ciphertext)
}

/// Decrypts with one key and unframes the message.
fn open(key: &AesKey, ciphertext: &[u8], receive_id: &str) -> Result<Vec<u8>, CryptoError> {
    let mut buf = ciphertext.to_vec();
    let mut decryptor = Aes256CbcDec::new(&key.0.into(), &key.iv().into());
    for chunk in buf.chunks_exact_mut(AES_BLOCK) {
        decryptor.decrypt_block_mut(chunk.into());
    }
    let content = unpad(&buf)?;
    let (header, rest) = content
        .split_at_checked(HEADER_LEN)
        .ok_or(CryptoError::Truncated)?;
    let mut length = [0u8; 4];
    length.copy_from_slice(&header[RANDOM_LEN..]);
    let length = usize::try_from(u32::from_be_bytes(length)).map_err(|_| CryptoError::Truncated)?;
    let (message, named) = rest
        .split_at_checked(length)
        .ok_or(CryptoError::Truncated)?;
    if !constant_time_eq(named, receive_id.as_bytes()) {
        return Err(CryptoError::WrongReceiveId);
    }
    Ok(message.to_vec())
}

/// Strips WeChat's PKCS#7 padding (1 to 32 bytes, all equal to the count).
fn unpad(buf: &[u8]) -> Result<&[u8], CryptoError> {
    let &last = buf.last().ok_or(CryptoError::Padding)?;
    let pad = usize::from(last);
    if !(1..=PAD_BLOCK).contains(&pad) || pad > buf.len() {
        return Err(CryptoError::Padding);
    }
    let (content, padding) = buf.split_at(buf.len() - pad);
    if padding.iter().any(|&b| b != last) {
        return Err(CryptoError::Padding);
    }
    Ok(content)
}

/// Why a key or a ciphertext was refused. Messages never contain key
/// material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Not 43 base64 characters.
    #[error("the EncodingAESKey is not 43 base64 characters")]
    InvalidKey,
    /// Longer than [`MAX_CIPHERTEXT_LEN`].
    #[error("ciphertext of {len} characters is longer than {MAX_CIPHERTEXT_LEN}")]
    TooLong { len: usize },
    /// Not canonical padded base64.
    #[error("ciphertext is not valid base64")]
    Base64,
    /// Empty, or not whole AES blocks.
    #[error("ciphertext of {len} bytes is not a positive multiple of 16")]
    BlockLength { len: usize },
    /// The padding is not 1 to 32 bytes of its own count: a wrong key, or
    /// a damaged ciphertext.
    #[error("bad padding after decryption (wrong key or damaged ciphertext)")]
    Padding,
    /// The length field points past the decrypted data.
    #[error("decrypted data is shorter than its length field says")]
    Truncated,
    /// The ciphertext was made for another AppID or corp id.
    #[error("the ciphertext names another receive id (AppID or corp id)")]
    WrongReceiveId,
    /// `msg_signature` does not match (only from
    /// [`MsgCrypt::decrypt_verified`]).
    #[error("msg_signature does not match")]
    BadSignature,
}

impl CryptoError {
    /// Every [`CryptoError::code`], for telling crypto failures apart from
    /// other parse errors and for registering metric labels.
    pub const CODES: &'static [&'static str] = &[
        "invalid_aes_key",
        "ciphertext_too_long",
        "invalid_base64",
        "bad_block_length",
        "bad_padding",
        "truncated_plaintext",
        "wrong_receive_id",
        "bad_signature",
    ];

    /// A stable snake_case code (a metric label, an HTTP error code).
    pub fn code(&self) -> &'static str {
        match self {
            CryptoError::InvalidKey => "invalid_aes_key",
            CryptoError::TooLong { .. } => "ciphertext_too_long",
            CryptoError::Base64 => "invalid_base64",
            CryptoError::BlockLength { .. } => "bad_block_length",
            CryptoError::Padding => "bad_padding",
            CryptoError::Truncated => "truncated_plaintext",
            CryptoError::WrongReceiveId => "wrong_receive_id",
            CryptoError::BadSignature => "bad_signature",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WeCom's published sample (the `Sample.cpp`/`Sample.py` of its
    /// `WXBizMsgCrypt` download and the 加解密方案说明 page), checked at
    /// development time with `openssl enc -d -aes-256-cbc -nopad` and
    /// `sha1sum`.
    const WECOM_TOKEN: &str = "QDG6eK";
    const WECOM_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const WECOM_CORP: &str = "wx5823bf96d3bd56c7";
    const WECOM_ENCRYPT: &str = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==";
    const WECOM_PLAIN: &str = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n<FromUserName><![CDATA[mycreate]]></FromUserName>\n<CreateTime>1409659813</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[hello]]></Content>\n<MsgId>4561255354251345929</MsgId>\n<AgentID>218</AgentID>\n</xml>";
    const WECOM_ECHOSTR: &str =
        "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";

    /// The Official Account sample of WeChat's `WXBizMsgCrypt` download
    /// (token `spamtest`), checked the same way.
    const OA_TOKEN: &str = "spamtest";
    const OA_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const OA_APP_ID: &str = "wx2c2769f8efd9abc2";
    const OA_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";

    fn key(text: &str) -> AesKey {
        AesKey::from_encoding_aes_key(text).unwrap()
    }

    fn wecom() -> MsgCrypt {
        MsgCrypt::new(key(WECOM_KEY), None, WECOM_CORP)
    }

    #[test]
    fn key_decodes_like_wechat_ignoring_trailing_bits() {
        // `printf '%s=' KEY | base64 -d | xxd -p -c 64`
        assert_eq!(
            hex::encode(key(WECOM_KEY).0),
            "8d69989bbaabe67328014c194631ad0719b3dca035b64023df292447aab60760"
        );
        assert_eq!(
            hex::encode(key(OA_KEY).0),
            "69b71d79f8218a39259a7a29aabb2dbafc31cb3d35db7e39ebbf3d0010831051"
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            &WECOM_KEY[..42],
            &format!("{WECOM_KEY}="),
            &format!("{WECOM_KEY}A"),
            &format!(" {}", &WECOM_KEY[1..]),
            &format!("{}-", &WECOM_KEY[..42]),
            &format!("{}é", &WECOM_KEY[..41]),
        ] {
            assert_eq!(
                AesKey::from_encoding_aes_key(bad).unwrap_err(),
                CryptoError::InvalidKey,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let crypt = wecom();
        let shown = format!("{crypt:?}");
        assert!(!shown.contains("8d69"), "{shown}");
        assert!(!shown.contains("141"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn wecom_sample_signature_and_decryption() {
        let signature = sign(
            WECOM_TOKEN.as_bytes(),
            &["1409659813", "1372623149", WECOM_ENCRYPT],
        );
        assert_eq!(signature, "477715d11cdb4164915debcba66cb864d751f3e6");
        assert!(verify(
            WECOM_TOKEN.as_bytes(),
            &["1409659813", "1372623149", WECOM_ENCRYPT],
            "477715d11cdb4164915debcba66cb864d751f3e6"
        ));
        let plain = wecom().decrypt(WECOM_ENCRYPT).unwrap();
        assert_eq!(String::from_utf8(plain).unwrap(), WECOM_PLAIN);
        let verified = wecom()
            .decrypt_verified(
                WECOM_TOKEN.as_bytes(),
                "1409659813",
                "1372623149",
                "477715d11cdb4164915debcba66cb864d751f3e6",
                WECOM_ENCRYPT,
            )
            .unwrap();
        assert_eq!(verified, WECOM_PLAIN.as_bytes());
    }

    #[test]
    fn wecom_sample_url_check() {
        let parts = ["1409659589", "263014780", WECOM_ECHOSTR];
        assert!(verify(
            WECOM_TOKEN.as_bytes(),
            &parts,
            "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
        ));
        assert_eq!(
            wecom().decrypt(WECOM_ECHOSTR).unwrap(),
            b"1616140317555161061"
        );
    }

    #[test]
    fn official_account_sample() {
        let parts = ["1409735669", "1320562132", OA_ENCRYPT];
        assert!(verify(
            OA_TOKEN.as_bytes(),
            &parts,
            "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
        ));
        let crypt = MsgCrypt::new(key(OA_KEY), None, OA_APP_ID);
        let plain = String::from_utf8(crypt.decrypt(OA_ENCRYPT).unwrap()).unwrap();
        assert!(plain.starts_with("<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]>"));
        assert!(plain.contains("<Content><![CDATA[abcdteT]]></Content>"));
        assert!(plain.ends_with("<MsgId>6054768590064713728</MsgId>\n</xml>"));
        assert_eq!(plain.len(), 0x118);
        // Another app's id is refused.
        let other = MsgCrypt::new(key(OA_KEY), None, "wx0000000000000000");
        assert_eq!(other.decrypt(OA_ENCRYPT), Err(CryptoError::WrongReceiveId));
    }

    #[test]
    fn url_check_signature_of_timestamp_and_nonce() {
        // printf '%s' 1409659589263014780QDG6eK | sha1sum (sorted: digits
        // before letters).
        assert_eq!(
            sign(b"QDG6eK", &["263014780", "1409659589"]),
            "93d1cec91cee4a4a8baada4c807ed13137622215"
        );
    }

    #[test]
    fn signatures_compare_exactly() {
        let good = sign(b"token", &["1", "2"]);
        assert!(verify(b"token", &["2", "1"], &good));
        assert!(!verify(b"token", &["1", "2"], &good.to_uppercase()));
        assert!(!verify(b"token", &["1", "2"], &good[..39]));
        assert!(!verify(b"token", &["1", "2"], ""));
        assert!(!verify(b"other", &["1", "2"], &good));
        assert!(!verify(b"token", &["1", "3"], &good));
    }

    #[test]
    fn known_answer_encryption() {
        // printf '%s' "$random$len$message$corp" + 32-byte PKCS#7 padding |
        // openssl enc -aes-256-cbc -nopad -K <key> -iv <first 16 bytes> |
        // base64 -w0
        let crypt = wecom();
        let sealed = crypt.encrypt_with(b"hello", *b"aaaabbbbccccdddd");
        assert_eq!(sealed, KNOWN_SEALED);
        assert_eq!(crypt.decrypt(&sealed).unwrap(), b"hello");
    }

    const KNOWN_SEALED: &str =
        "ZA4HuQypHxnRrA+A6SOHGNOB7gDkeg+o+hG8ENTXAny8CPEgaO1IvTTlbHRbpeGQQVVrc60WYA641YjLK+BMxg==";

    #[test]
    fn round_trips_at_every_padding_length() {
        let crypt = wecom();
        for len in 0..100 {
            let message: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let sealed = crypt.encrypt(&message);
            assert_eq!(crypt.decrypt(&sealed).unwrap(), message, "len {len}");
        }
        assert_ne!(crypt.encrypt(b"x"), crypt.encrypt(b"x"));
    }

    #[test]
    fn previous_key_is_accepted_and_unknown_key_refused() {
        let old = MsgCrypt::new(key(OA_KEY), None, WECOM_CORP);
        let sealed_old = old.encrypt(b"from before the rotation");
        let rotated = MsgCrypt::new(key(WECOM_KEY), Some(key(OA_KEY)), WECOM_CORP);
        assert_eq!(
            rotated.decrypt(&sealed_old).unwrap(),
            b"from before the rotation"
        );
        assert_eq!(
            rotated.decrypt(WECOM_ENCRYPT).unwrap(),
            WECOM_PLAIN.as_bytes()
        );
        // Without the previous key, the old ciphertext is refused.
        assert!(wecom().decrypt(&sealed_old).is_err());
        // A third key is refused by both.
        let stranger = MsgCrypt::new(
            key("ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkj"),
            None,
            WECOM_CORP,
        );
        assert!(rotated.decrypt(&stranger.encrypt(b"hi")).is_err());
    }

    #[test]
    fn wrong_receive_id_is_refused() {
        let other = MsgCrypt::new(key(WECOM_KEY), None, "ww0000000000000000");
        assert_eq!(
            other.decrypt(WECOM_ENCRYPT),
            Err(CryptoError::WrongReceiveId)
        );
        let prefix = MsgCrypt::new(key(WECOM_KEY), None, "wx5823bf96d3bd56");
        assert_eq!(
            prefix.decrypt(WECOM_ENCRYPT),
            Err(CryptoError::WrongReceiveId)
        );
    }

    #[test]
    fn bad_signature_is_refused_before_decrypting() {
        assert_eq!(
            wecom().decrypt_verified(
                WECOM_TOKEN.as_bytes(),
                "1409659813",
                "1372623149",
                "577715d11cdb4164915debcba66cb864d751f3e6",
                WECOM_ENCRYPT,
            ),
            Err(CryptoError::BadSignature)
        );
    }

    /// Seals raw plaintext bytes (already framed and padded, or not) with
    /// the WeCom key, to reach every check of `open`.
    fn seal_raw(plain: &[u8]) -> String {
        let key = key(WECOM_KEY);
        let mut buf = plain.to_vec();
        let mut encryptor = Aes256CbcEnc::new(&key.0.into(), &key.iv().into());
        for chunk in buf.chunks_exact_mut(AES_BLOCK) {
            encryptor.encrypt_block_mut(chunk.into());
        }
        STANDARD.encode(&buf)
    }

    fn framed(length: u32, body: &[u8], pad: u8, pad_len: usize) -> Vec<u8> {
        let mut plain = vec![0x41u8; RANDOM_LEN];
        plain.extend_from_slice(&length.to_be_bytes());
        plain.extend_from_slice(body);
        plain.extend(std::iter::repeat_n(pad, pad_len));
        plain
    }

    #[test]
    fn malformed_ciphertexts_are_errors() {
        let crypt = wecom();
        let code = |text: &str| crypt.decrypt(text).unwrap_err().code();
        assert_eq!(code(""), "bad_block_length");
        assert_eq!(code("!!!!"), "invalid_base64");
        assert_eq!(
            code(&WECOM_ENCRYPT[..WECOM_ENCRYPT.len() - 3]),
            "invalid_base64"
        );
        assert_eq!(code("AAAA"), "bad_block_length");
        assert_eq!(code(&STANDARD.encode([0u8; 15])), "bad_block_length");
        // One whole block decrypts, but cannot hold a framed message.
        assert!(crypt.decrypt(&STANDARD.encode([0u8; 16])).is_err());
        assert_eq!(code(&STANDARD.encode([0u8; 40])), "bad_block_length");
        assert_eq!(
            code(&"A".repeat(MAX_CIPHERTEXT_LEN + 4)),
            "ciphertext_too_long"
        );
        // Padding byte 0, 33 and inconsistent padding bytes.
        let corp = WECOM_CORP.as_bytes();
        let mut body = b"hi".to_vec();
        body.extend_from_slice(corp);
        // 20 + 2 + 18 = 40; 24 more bytes make 64.
        assert_eq!(code(&seal_raw(&framed(2, &body, 0, 24))), "bad_padding");
        let mut long = body.clone();
        long.extend_from_slice(&[0u8; 23]);
        assert_eq!(code(&seal_raw(&framed(2, &long, 33, 33))), "bad_padding");
        let mut mixed = framed(2, &body, 24, 24);
        if let Some(b) = mixed.get_mut(50) {
            *b = 23;
        }
        assert_eq!(code(&seal_raw(&mixed)), "bad_padding");
        // Correct padding, then the length field past the end.
        assert_eq!(
            code(&seal_raw(&framed(200, &body, 24, 24))),
            "truncated_plaintext"
        );
        assert_eq!(
            code(&seal_raw(&framed(u32::MAX, &body, 24, 24))),
            "truncated_plaintext"
        );
        // Less than the 20-byte header before the padding.
        assert_eq!(code(&seal_raw(&[20u8; 32][..])), "truncated_plaintext");
        assert_eq!(code(&seal_raw(&[32u8; 32][..])), "truncated_plaintext");
        // Well formed for someone else.
        assert_eq!(
            code(&seal_raw(&framed(2, b"hiww1234567890abcdef", 24, 24))),
            "wrong_receive_id"
        );
        // And the good one still opens.
        assert_eq!(
            crypt.decrypt(&seal_raw(&framed(2, &body, 24, 24))).unwrap(),
            b"hi"
        );
    }

    #[test]
    fn codes_are_stable() {
        let all = [
            CryptoError::InvalidKey,
            CryptoError::TooLong { len: 1 },
            CryptoError::Base64,
            CryptoError::BlockLength { len: 1 },
            CryptoError::Padding,
            CryptoError::Truncated,
            CryptoError::WrongReceiveId,
            CryptoError::BadSignature,
        ];
        let codes: Vec<_> = all.iter().map(CryptoError::code).collect();
        assert_eq!(codes, CryptoError::CODES);
    }
}
