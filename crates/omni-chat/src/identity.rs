//! Who is typing in the widget: an anonymous visitor proved by a token the
//! channel issued, and optionally a customer identity proved by a hash the
//! business's backend signed (`docs/channels/webchat.md`, "Identity").
//!
//! Pure: the random source is passed in, secrets are plain bytes, and every
//! comparison of a received token or hash with the expected one is
//! constant-time, so timing leaks nothing about how many bytes matched.

use omni_connector::signature::{constant_time_eq, hmac_sha256};
use omni_model::{Handle, HandleKind};
use serde::{Deserialize, Serialize};

use crate::protocol::IdentityStatus;

/// What every visitor id starts with, so one is recognisable in logs and
/// cannot be mistaken for a customer-supplied external id.
pub const VISITOR_ID_PREFIX: &str = "v_";

/// Random base62 characters after the prefix: 22 of them carry 130 bits,
/// so ids never collide and cannot be guessed.
pub const VISITOR_ID_RANDOM_CHARS: usize = 22;

/// The visitor id's alphabet.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of a hex HMAC-SHA256: visitor tokens and identity hashes.
pub const HEX_MAC_CHARS: usize = 64;

/// Longest claimed identity value, in bytes. Handles cap provider ids at
/// 256 bytes and emails at 254; a longer claim is no real address.
pub const MAX_IDENTITY_VALUE_BYTES: usize = 256;

/// Longest claimed name kept, in characters. The name is not signed, so it
/// is only a label for agents; a longer one is cut rather than refused.
pub const MAX_IDENTITY_NAME_CHARS: usize = 128;

/// Longest E.164 number: `+` and at most 15 digits (ITU-T E.164 §6).
const MAX_E164_DIGITS: usize = 15;

/// Every code of [`IdentityCheck::Refused`] and [`IdentityCheck::Anonymous`].
pub const CODES: [&str; 2] = ["identity_refused", "invalid_identity"];

/// A fresh visitor id: [`VISITOR_ID_PREFIX`] and
/// [`VISITOR_ID_RANDOM_CHARS`] base62 characters, each drawn uniformly.
/// The caller passes the random source (`rand::rng()` in the daemon, a
/// seeded one in tests).
pub fn new_visitor_id(rng: &mut impl rand::Rng) -> String {
    let mut id = String::with_capacity(VISITOR_ID_PREFIX.len() + VISITOR_ID_RANDOM_CHARS);
    id.push_str(VISITOR_ID_PREFIX);
    for _ in 0..VISITOR_ID_RANDOM_CHARS {
        let index = rng.random_range(0..BASE62.len());
        id.push(char::from(BASE62.get(index).copied().unwrap_or(b'0')));
    }
    id
}

/// Whether `s` has the exact shape [`new_visitor_id`] produces. A visitor
/// id comes back from the browser's storage, so its shape is checked before
/// it keys anything.
pub fn is_visitor_id(s: &str) -> bool {
    s.strip_prefix(VISITOR_ID_PREFIX).is_some_and(|rest| {
        rest.len() == VISITOR_ID_RANDOM_CHARS && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// The token that lets a browser resume `visitor_id`: the hex HMAC-SHA256 of
/// `visitor:<visitor id>` under the channel's `secret`. Derived, not stored,
/// so the channel keeps no table of tokens and rotating the secret logs
/// every visitor out.
pub fn visitor_token(secret: &[u8], visitor_id: &str) -> String {
    hex::encode(hmac_sha256(secret, &[b"visitor:", visitor_id.as_bytes()]))
}

/// Whether `token` is [`visitor_token`] of `visitor_id`, compared in
/// constant time. A malformed id or token (wrong length, not hex) is simply
/// a mismatch: a stale or tampered browser storage starts a new visitor
/// rather than failing the connection.
pub fn verify_visitor_token(secret: &[u8], visitor_id: &str, token: &str) -> bool {
    if !is_visitor_id(visitor_id) {
        return false;
    }
    let Some(provided) = decode_mac(token) else {
        return false;
    };
    constant_time_eq(
        &hmac_sha256(secret, &[b"visitor:", visitor_id.as_bytes()]),
        &provided,
    )
}

/// The kinds of identity a business may sign; their wire names are the
/// `<kind>` of the signed string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    Email,
    /// A number in E.164 (`+989121234567`), exactly as the backend signed it.
    Phone,
    /// The business's own user id, scoped by the channel: two businesses'
    /// user 42 are different people.
    External,
}

impl IdentityKind {
    /// The wire name: `email`, `phone` or `external`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::External => "external",
        }
    }
}

/// The `identity` of a `hello` frame: what the page says the visitor is.
/// Only `kind` and `value` are signed; `name` is a label, never proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedIdentity {
    pub kind: IdentityKind,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// The outcome of [`check_identity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityCheck {
    /// The hash is right: the handle is a verified identity of the sender.
    Verified(Handle),
    /// No hash or a wrong one, and identity is not required: the handle is
    /// kept as the visitor's unverified claim.
    Unverified(Handle),
    /// The visitor carries on anonymously: no identity was claimed
    /// (`None`), or the claimed value is not a usable address and identity
    /// is not required (`Some("invalid_identity")`, for logs and metrics).
    Anonymous(Option<&'static str>),
    /// The connection is refused (close code 4001,
    /// [`crate::protocol::CLOSE_IDENTITY_REFUSED`]), with the code of the
    /// `error` frame sent before the close: `identity_refused` (missing or
    /// wrong hash) or `invalid_identity` (a value that is no address).
    Refused(&'static str),
}

/// A checked identity as events carry it: a sender identity, verified or
/// not, and the name the page gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderIdentity {
    pub handle: Handle,
    pub verified: bool,
    /// Cleaned and cut to [`MAX_IDENTITY_NAME_CHARS`]; `None` when empty.
    pub name: Option<String>,
}

impl IdentityCheck {
    /// What the `welcome` frame says of the identity.
    pub fn status(&self) -> IdentityStatus {
        match self {
            Self::Verified(_) => IdentityStatus::Verified,
            Self::Unverified(_) => IdentityStatus::Unverified,
            Self::Anonymous(_) | Self::Refused(_) => IdentityStatus::None,
        }
    }

    /// The identity to put on the visitor's events, with `claimed`'s name;
    /// `None` when the visitor is anonymous or refused.
    pub fn sender(&self, claimed: Option<&ClaimedIdentity>) -> Option<SenderIdentity> {
        let (handle, verified) = match self {
            Self::Verified(handle) => (handle, true),
            Self::Unverified(handle) => (handle, false),
            Self::Anonymous(_) | Self::Refused(_) => return None,
        };
        Some(SenderIdentity {
            handle: handle.clone(),
            verified,
            name: claimed.and_then(|c| c.name.as_deref()).and_then(clean_name),
        })
    }
}

/// `hex(HMAC-SHA256(identity_secret, "<kind>:<value>"))`: what the
/// business's backend computes for a logged-in customer (and what tests and
/// the demo page use to sign one).
pub fn identity_hash(identity_secret: &[u8], kind: IdentityKind, value: &str) -> String {
    hex::encode(signed_identity(identity_secret, kind, value))
}

fn signed_identity(identity_secret: &[u8], kind: IdentityKind, value: &str) -> [u8; 32] {
    hmac_sha256(
        identity_secret,
        &[kind.as_str().as_bytes(), b":", value.as_bytes()],
    )
}

/// Checks the identity a `hello` claims.
///
/// - The signed string is `<kind>:<value>` with the value **byte for byte
///   as sent**, not normalized: it is what the business's backend signed,
///   so a right signature over `Ana@Example.com` verifies without the
///   backend having to know Omnid's normalization rules. Only the handle
///   the event carries is normalized.
/// - The value must be a usable address first: at most
///   [`MAX_IDENTITY_VALUE_BYTES`]; an email [`Handle::email`] accepts; a
///   phone in strict E.164 (`+` and 1–15 digits, no spaces), as the
///   contract says, that [`Handle::phone`] accepts; an external id
///   [`Handle::provider`] accepts, scoped by `channel_id`. Otherwise it is
///   `Refused("invalid_identity")` when `require`, else
///   `Anonymous(Some("invalid_identity"))`: a typo'd address must not
///   become anyone's handle, even unverified.
/// - The hash must be exactly 64 hex characters (either case) and match in
///   constant time → `Verified`. A missing, empty, malformed or wrong hash,
///   or no `identity_secret` configured (nothing can be verified), is
///   `Refused("identity_refused")` when `require`, else `Unverified`.
pub fn check_identity(
    identity_secret: Option<&[u8]>,
    claimed: &ClaimedIdentity,
    require: bool,
    channel_id: &str,
) -> IdentityCheck {
    let Some(handle) = identity_handle(claimed.kind, &claimed.value, channel_id) else {
        return if require {
            IdentityCheck::Refused("invalid_identity")
        } else {
            IdentityCheck::Anonymous(Some("invalid_identity"))
        };
    };
    let verified = match (
        identity_secret,
        claimed.hash.as_deref().and_then(decode_mac),
    ) {
        (Some(secret), Some(provided)) => constant_time_eq(
            &signed_identity(secret, claimed.kind, &claimed.value),
            &provided,
        ),
        _ => false,
    };
    match (verified, require) {
        (true, _) => IdentityCheck::Verified(handle),
        (false, true) => IdentityCheck::Refused("identity_refused"),
        (false, false) => IdentityCheck::Unverified(handle),
    }
}

/// [`check_identity`] for a `hello` that may claim nothing: no claim is
/// `Refused("identity_refused")` when `require`, else `Anonymous(None)`.
pub fn check_hello_identity(
    identity_secret: Option<&[u8]>,
    claimed: Option<&ClaimedIdentity>,
    require: bool,
    channel_id: &str,
) -> IdentityCheck {
    match claimed {
        Some(claimed) => check_identity(identity_secret, claimed, require, channel_id),
        None if require => IdentityCheck::Refused("identity_refused"),
        None => IdentityCheck::Anonymous(None),
    }
}

/// The normalized handle of a claimed value, or `None` if it is not one.
fn identity_handle(kind: IdentityKind, value: &str, channel_id: &str) -> Option<Handle> {
    if value.is_empty() || value.len() > MAX_IDENTITY_VALUE_BYTES {
        return None;
    }
    match kind {
        IdentityKind::Email => Handle::email(value).ok(),
        IdentityKind::Phone => is_e164(value)
            .then(|| Handle::phone(value, None).ok())
            .flatten(),
        IdentityKind::External => {
            Handle::provider(HandleKind::External, value, Some(channel_id)).ok()
        }
    }
}

/// `+` and 1–15 ASCII digits, the first not 0.
fn is_e164(value: &str) -> bool {
    value.strip_prefix('+').is_some_and(|digits| {
        (1..=MAX_E164_DIGITS).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// The bytes of a hex MAC: exactly [`HEX_MAC_CHARS`] hex digits, either
/// case, nothing around them.
fn decode_mac(text: &str) -> Option<Vec<u8>> {
    if text.len() != HEX_MAC_CHARS {
        return None;
    }
    hex::decode(text).ok()
}

/// A claimed name as agents see it: cleaned like every display name, cut to
/// [`MAX_IDENTITY_NAME_CHARS`], `None` when nothing is left.
fn clean_name(raw: &str) -> Option<String> {
    let cleaned = omni_model::normalize_display_name(raw);
    let name: String = cleaned
        .chars()
        .take(MAX_IDENTITY_NAME_CHARS)
        .collect::<String>()
        .trim_end()
        .to_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    const SECRET: &[u8] = b"channel-secret";
    const ID_SECRET: &[u8] = b"identity-secret";
    const CHANNEL: &str = "chat-main";

    fn claim(kind: IdentityKind, value: &str, hash: Option<String>) -> ClaimedIdentity {
        ClaimedIdentity {
            kind,
            value: value.to_owned(),
            name: Some("Ana".to_owned()),
            hash,
        }
    }

    fn signed(kind: IdentityKind, value: &str) -> ClaimedIdentity {
        claim(kind, value, Some(identity_hash(ID_SECRET, kind, value)))
    }

    #[test]
    fn visitor_ids_have_the_documented_shape_and_differ() {
        let mut rng = StdRng::seed_from_u64(7);
        let a = new_visitor_id(&mut rng);
        let b = new_visitor_id(&mut rng);
        assert_eq!(a.len(), 24);
        assert!(a.starts_with("v_"));
        assert!(is_visitor_id(&a), "{a}");
        assert!(is_visitor_id(&b), "{b}");
        assert_ne!(a, b);
        // Deterministic for a seed, so tests can pin ids.
        assert_eq!(a, new_visitor_id(&mut StdRng::seed_from_u64(7)));
    }

    #[test]
    fn visitor_ids_use_the_whole_alphabet() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.extend(new_visitor_id(&mut rng).bytes().skip(2));
        }
        assert_eq!(seen.len(), 62);
    }

    #[test]
    fn is_visitor_id_refuses_other_shapes() {
        assert!(is_visitor_id("v_0123456789ABCDEFGHIJab"));
        for bad in [
            "",
            "v_",
            "v_0123456789ABCDEFGHIJa",
            "v_0123456789ABCDEFGHIJabc",
            "x_0123456789ABCDEFGHIJab",
            "V_0123456789ABCDEFGHIJab",
            "v_0123456789ABCDEFGHIJa-",
            "v_0123456789ABCDEFGHIJa_",
            "v_0123456789ABCDEFGHIJ۱۲",
            "v_0123456789ABCDEFGHIJé",
        ] {
            assert!(!is_visitor_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn visitor_token_is_the_documented_hmac() {
        let id = "v_0123456789ABCDEFGHIJab";
        let token = visitor_token(SECRET, id);
        assert_eq!(
            token,
            hex::encode(hmac_sha256(SECRET, &[b"visitor:v_0123456789ABCDEFGHIJab"]))
        );
        assert_eq!(token.len(), 64);
        assert!(verify_visitor_token(SECRET, id, &token));
        assert!(verify_visitor_token(SECRET, id, &token.to_uppercase()));
    }

    #[test]
    fn a_tampered_token_or_id_or_secret_fails() {
        let id = "v_0123456789ABCDEFGHIJab";
        let token = visitor_token(SECRET, id);
        for i in 0..token.len() {
            let mut bad = token.clone().into_bytes();
            bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(!verify_visitor_token(SECRET, id, &bad), "byte {i}");
        }
        assert!(!verify_visitor_token(SECRET, id, &token[..62]));
        assert!(!verify_visitor_token(SECRET, id, &format!("{token}00")));
        assert!(!verify_visitor_token(
            SECRET,
            id,
            &format!(" {}", &token[1..])
        ));
        assert!(!verify_visitor_token(SECRET, id, ""));
        assert!(!verify_visitor_token(SECRET, id, &"z".repeat(64)));
        assert!(!verify_visitor_token(
            SECRET,
            "v_0123456789ABCDEFGHIJaB",
            &token
        ));
        assert!(!verify_visitor_token(b"other", id, &token));
        // A token for a string that is not a visitor id is never accepted.
        let odd = "not-a-visitor";
        assert!(!verify_visitor_token(
            SECRET,
            odd,
            &visitor_token(SECRET, odd)
        ));
    }

    #[test]
    fn right_hash_is_verified_for_every_kind() {
        for (kind, value, expected) in [
            (IdentityKind::Email, "Ana@Example.com", "ana@example.com"),
            (IdentityKind::Phone, "+989121234567", "+989121234567"),
            (IdentityKind::External, "user-42", "user-42"),
        ] {
            let check = check_identity(Some(ID_SECRET), &signed(kind, value), true, CHANNEL);
            let IdentityCheck::Verified(handle) = &check else {
                panic!("{kind:?}: {check:?}");
            };
            assert_eq!(handle.value(), expected);
            assert_eq!(check.status(), IdentityStatus::Verified);
        }
        let IdentityCheck::Verified(handle) = check_identity(
            Some(ID_SECRET),
            &signed(IdentityKind::External, "user-42"),
            false,
            CHANNEL,
        ) else {
            panic!()
        };
        assert_eq!(handle.kind(), HandleKind::External);
        assert_eq!(handle.scope(), Some(CHANNEL));
    }

    #[test]
    fn the_hash_covers_the_value_as_sent() {
        // Signed over the normalized form, sent in another spelling: the
        // backend did not sign what was sent.
        let mut claimed = signed(IdentityKind::Email, "ana@example.com");
        claimed.value = "Ana@Example.com".to_owned();
        assert_eq!(
            check_identity(Some(ID_SECRET), &claimed, true, CHANNEL),
            IdentityCheck::Refused("identity_refused")
        );
        // The kind is signed too.
        let mut claimed = signed(IdentityKind::External, "ana@example.com");
        claimed.kind = IdentityKind::Email;
        assert_eq!(
            check_identity(Some(ID_SECRET), &claimed, true, CHANNEL),
            IdentityCheck::Refused("identity_refused")
        );
        assert_eq!(
            identity_hash(ID_SECRET, IdentityKind::Email, "ana@example.com"),
            hex::encode(hmac_sha256(ID_SECRET, &[b"email:ana@example.com"]))
        );
    }

    #[test]
    fn uppercase_hash_is_accepted() {
        let mut claimed = signed(IdentityKind::Email, "ana@example.com");
        claimed.hash = claimed.hash.map(|h| h.to_uppercase());
        assert!(matches!(
            check_identity(Some(ID_SECRET), &claimed, true, CHANNEL),
            IdentityCheck::Verified(_)
        ));
    }

    #[test]
    fn missing_or_wrong_hash_is_refused_when_required_else_unverified() {
        let good = identity_hash(ID_SECRET, IdentityKind::Email, "ana@example.com");
        let mut flipped = good.clone().into_bytes();
        flipped[0] = if flipped[0] == b'a' { b'b' } else { b'a' };
        let hashes = [
            None,
            Some(String::new()),
            Some(String::from_utf8(flipped).unwrap()),
            Some(good[..63].to_owned()),
            Some(format!("{good} ")),
            Some("g".repeat(64)),
            Some(identity_hash(
                b"other",
                IdentityKind::Email,
                "ana@example.com",
            )),
        ];
        for hash in hashes {
            let claimed = claim(IdentityKind::Email, "ana@example.com", hash.clone());
            assert_eq!(
                check_identity(Some(ID_SECRET), &claimed, true, CHANNEL),
                IdentityCheck::Refused("identity_refused"),
                "{hash:?}"
            );
            let check = check_identity(Some(ID_SECRET), &claimed, false, CHANNEL);
            let IdentityCheck::Unverified(handle) = &check else {
                panic!("{hash:?}: {check:?}");
            };
            assert_eq!(handle.to_string(), "email:ana@example.com");
            assert_eq!(check.status(), IdentityStatus::Unverified);
        }
    }

    #[test]
    fn without_an_identity_secret_nothing_verifies() {
        let claimed = signed(IdentityKind::Email, "ana@example.com");
        assert_eq!(
            check_identity(None, &claimed, true, CHANNEL),
            IdentityCheck::Refused("identity_refused")
        );
        assert!(matches!(
            check_identity(None, &claimed, false, CHANNEL),
            IdentityCheck::Unverified(_)
        ));
    }

    #[test]
    fn invalid_values_are_refused_or_dropped_even_when_signed() {
        let long = format!("{}@example.com", "a".repeat(250));
        let long_external = "x".repeat(257);
        for (kind, value) in [
            (IdentityKind::Email, "not an email"),
            (IdentityKind::Email, ""),
            (IdentityKind::Email, long.as_str()),
            (IdentityKind::Phone, "09121234567"),
            (IdentityKind::Phone, "+98 912 123 4567"),
            (IdentityKind::Phone, "00989121234567"),
            (IdentityKind::Phone, "+۹۸۹۱۲۱۲۳۴۵۶۷"),
            (IdentityKind::Phone, "+0123"),
            (IdentityKind::Phone, "+1234567890123456"),
            (IdentityKind::Phone, "+999"),
            (IdentityKind::External, ""),
            (IdentityKind::External, "   "),
            (IdentityKind::External, "a\u{0}b"),
            (IdentityKind::External, "a\u{200b}b"),
            (IdentityKind::External, long_external.as_str()),
        ] {
            let claimed = signed(kind, value);
            assert_eq!(
                check_identity(Some(ID_SECRET), &claimed, true, CHANNEL),
                IdentityCheck::Refused("invalid_identity"),
                "{kind:?} {value:?}"
            );
            let check = check_identity(Some(ID_SECRET), &claimed, false, CHANNEL);
            assert_eq!(check, IdentityCheck::Anonymous(Some("invalid_identity")));
            assert_eq!(check.status(), IdentityStatus::None);
            assert_eq!(check.sender(Some(&claimed)), None);
        }
    }

    #[test]
    fn external_ids_are_scoped_by_the_channel() {
        let a = check_identity(
            Some(ID_SECRET),
            &signed(IdentityKind::External, "42"),
            true,
            "shop-a",
        );
        let b = check_identity(
            Some(ID_SECRET),
            &signed(IdentityKind::External, "42"),
            true,
            "shop-b",
        );
        assert_ne!(a, b);
    }

    #[test]
    fn a_hello_without_identity() {
        assert_eq!(
            check_hello_identity(Some(ID_SECRET), None, true, CHANNEL),
            IdentityCheck::Refused("identity_refused")
        );
        assert_eq!(
            check_hello_identity(Some(ID_SECRET), None, false, CHANNEL),
            IdentityCheck::Anonymous(None)
        );
        let claimed = signed(IdentityKind::Email, "ana@example.com");
        assert!(matches!(
            check_hello_identity(Some(ID_SECRET), Some(&claimed), true, CHANNEL),
            IdentityCheck::Verified(_)
        ));
    }

    #[test]
    fn sender_identity_carries_the_cleaned_name() {
        let mut claimed = signed(IdentityKind::Email, "ana@example.com");
        claimed.name = Some("  آناهیتا\u{200c}ی \n رضایی ".to_owned());
        let check = check_identity(Some(ID_SECRET), &claimed, false, CHANNEL);
        let sender = check.sender(Some(&claimed)).unwrap();
        assert!(sender.verified);
        assert_eq!(sender.name.as_deref(), Some("آناهیتا\u{200c}ی رضایی"));
        assert_eq!(sender.handle.to_string(), "email:ana@example.com");

        claimed.name = Some("ب".repeat(500));
        let sender = check.sender(Some(&claimed)).unwrap();
        assert_eq!(
            sender.name.map(|n| n.chars().count()),
            Some(MAX_IDENTITY_NAME_CHARS)
        );
        claimed.name = Some(" \t ".to_owned());
        assert_eq!(check.sender(Some(&claimed)).unwrap().name, None);

        claimed.hash = None;
        let unverified = check_identity(Some(ID_SECRET), &claimed, false, CHANNEL);
        assert!(!unverified.sender(Some(&claimed)).unwrap().verified);
        assert_eq!(
            IdentityCheck::Refused("identity_refused").sender(Some(&claimed)),
            None
        );
    }

    #[test]
    fn claimed_identity_reads_the_documented_json() {
        let claimed: ClaimedIdentity = serde_json::from_str(
            r#"{"kind":"phone","value":"+989121234567","name":null,"extra":1}"#,
        )
        .unwrap();
        assert_eq!(claimed.kind, IdentityKind::Phone);
        assert_eq!(claimed.hash, None);
        assert!(serde_json::from_str::<ClaimedIdentity>(r#"{"kind":"sms","value":"x"}"#).is_err());
    }
}
