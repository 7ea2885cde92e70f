//! Identity handles: the addresses a customer reaches a business from.
//!
//! A handle is the key of the inbound topic and the unit the threading
//! service links into one customer, so its normalized form is part of the
//! stream contract. The rules below lean towards *missing* a link rather than
//! *inventing* one: merging two different people into one timeline leaks one
//! customer's messages to another, while a missed link only costs an agent a
//! manual merge.

use std::fmt;
use std::str::FromStr;

use phonenumber::Mode;
use phonenumber::country::Id;
use unicode_normalization::UnicodeNormalization;

/// Longest email address in bytes after normalization (RFC 5321 §4.5.3.1.3
/// path limit minus the angle brackets).
const MAX_EMAIL_BYTES: usize = 254;
/// Longest email local part in bytes after normalization (RFC 5321 §4.5.3.1.1).
const MAX_EMAIL_LOCAL_BYTES: usize = 64;
/// Raw input beyond this is rejected before IDNA processing, so a hostile
/// header cannot make us normalize megabytes to reject it afterwards.
const MAX_RAW_EMAIL_BYTES: usize = 1024;
/// Longest DNS label in bytes (RFC 1035 §2.3.4).
const MAX_DOMAIN_LABEL_BYTES: usize = 63;
/// Raw phone input beyond this many characters is rejected before parsing:
/// no real number, however decorated, comes close, and the parser's work is
/// bounded by it.
const MAX_PHONE_INPUT_CHARS: usize = 64;
/// Longest provider id or scope in bytes; generous for every provider we know
/// (WeChat openids are 28 bytes, Telegram ids fit in 20 digits) while keeping
/// keys and index entries small.
const MAX_PROVIDER_ID_BYTES: usize = 256;

/// Characters that are only legal inside a quoted local part (RFC 5322
/// §3.2.3). Quoted local parts are vanishingly rare in customer mail, so they
/// are rejected rather than parsed; that also turns a whole `Name <a@b>`
/// header pasted in by mistake into an error instead of a strange handle.
const EMAIL_LOCAL_SPECIALS: &[char] =
    &['"', '(', ')', ',', ':', ';', '<', '>', '[', '\\', ']', '@'];

/// The kind of address a handle is; its string form appears in URLs
/// (`GET /v1/identities/{kind}/{value}`), topic keys and the database, so
/// the strings never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HandleKind {
    /// An email address, normalized by [`Handle::email`].
    Email,
    /// A phone number in E.164, normalized by [`Handle::phone`].
    Phone,
    /// A Telegram user id; global across bots, so a scope is optional.
    TelegramUser,
    /// A WeChat openid; unique per official account, so callers normally
    /// scope it by the account's app id.
    WechatOpenid,
    /// A WeChat unionid; shared by all apps of one open-platform account.
    WechatUnionid,
    /// A WhatsApp id (`wa_id`) as the Cloud API reports it.
    Whatsapp,
    /// A web-chat visitor id; only meaningful within one chat channel, so the
    /// channel id is a required scope.
    ChatVisitor,
    /// An id from the generic API channel; only meaningful within that
    /// channel, so the channel id is a required scope.
    External,
    /// A WeChat user as one WeCom corporation sees them (`external_userid`,
    /// e.g. in WeChat Customer Service); the corp id is a required scope.
    WecomExternalUser,
    /// A Messenger user as one Facebook Page sees them (page-scoped id);
    /// the Page id is a required scope.
    MessengerPsid,
    /// An Instagram user as one professional account sees them
    /// (Instagram-scoped id); the account id is a required scope.
    InstagramIgsid,
}

impl HandleKind {
    /// Every kind, for iteration in tests, CLIs and docs.
    pub const ALL: [HandleKind; 11] = [
        HandleKind::Email,
        HandleKind::Phone,
        HandleKind::TelegramUser,
        HandleKind::WechatOpenid,
        HandleKind::WechatUnionid,
        HandleKind::Whatsapp,
        HandleKind::ChatVisitor,
        HandleKind::External,
        HandleKind::WecomExternalUser,
        HandleKind::MessengerPsid,
        HandleKind::InstagramIgsid,
    ];

    /// The stable wire name of the kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            HandleKind::Email => "email",
            HandleKind::Phone => "phone",
            HandleKind::TelegramUser => "telegram",
            HandleKind::WechatOpenid => "wechat_openid",
            HandleKind::WechatUnionid => "wechat_unionid",
            HandleKind::Whatsapp => "whatsapp",
            HandleKind::ChatVisitor => "chat_visitor",
            HandleKind::External => "external",
            HandleKind::WecomExternalUser => "wecom_external_user",
            HandleKind::MessengerPsid => "messenger_psid",
            HandleKind::InstagramIgsid => "instagram_igsid",
        }
    }

    /// Ids of these kinds collide across channels (two web-chat widgets both
    /// number visitors from 1), so a handle must name the channel they came
    /// from.
    pub const fn requires_scope(self) -> bool {
        matches!(
            self,
            HandleKind::ChatVisitor
                | HandleKind::External
                | HandleKind::WecomExternalUser
                | HandleKind::MessengerPsid
                | HandleKind::InstagramIgsid
        )
    }
}

impl fmt::Display for HandleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HandleKind {
    type Err = HandleError;

    /// Only the exact wire names are accepted, so a URL has one spelling.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HandleKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or(HandleError::UnknownKind)
    }
}

/// Why a raw value could not become a [`Handle`] (or a [`HandleKind`] or
/// [`Region`]); connectors put the message in the dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The value, or one of its required parts, is empty after trimming.
    #[error("{field} is empty")]
    Empty {
        /// Which part was empty.
        field: &'static str,
    },
    /// The value exceeds a length limit.
    #[error("{field} exceeds {max} {unit}")]
    TooLong {
        /// Which part was too long.
        field: &'static str,
        /// The limit.
        max: usize,
        /// What the limit counts: "bytes" or "characters".
        unit: &'static str,
    },
    /// The value contains a character its kind does not allow.
    #[error("{field} contains invalid character {ch:?}")]
    InvalidCharacter {
        /// Which part held the character.
        field: &'static str,
        /// The offending character.
        ch: char,
    },
    /// An email address without an '@'.
    #[error("email address has no '@'")]
    MissingAt,
    /// An email domain that is not a valid (internationalized) host name.
    #[error("invalid email domain")]
    InvalidDomain,
    /// A string that the phone-number metadata does not accept as a valid
    /// number for its country.
    #[error("not a valid phone number")]
    InvalidPhone,
    /// A national phone number (no '+', no "00") and no default region to
    /// read it in.
    #[error("phone number has no country code and no default region was given")]
    MissingRegion,
    /// A kind whose ids are channel-local was given without a scope.
    #[error("handle kind {0} requires a scope")]
    MissingScope(HandleKind),
    /// Email and phone handles are global, so a scope would split one person
    /// into several handles.
    #[error("handle kind {0} takes no scope")]
    UnexpectedScope(HandleKind),
    /// A string that is not one of the [`HandleKind`] wire names.
    #[error("unknown handle kind")]
    UnknownKind,
    /// Handle text without the `kind:` prefix of [`HandleText`].
    #[error("handle text is not `kind:value`")]
    MissingKind,
    /// A string that is not an ISO 3166-1 alpha-2 code with phone metadata.
    #[error("unknown region code {0:?}")]
    UnknownRegion(String),
}

/// A region (ISO 3166-1 alpha-2 code such as `IR`, `CN`, `DE`) in which
/// national phone numbers without a country code are read; usually a channel
/// setting, since an SMS gateway in Tehran sees Iranian numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region(Id);

impl Region {
    /// The upper-case alpha-2 code.
    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Region {
    type Err = HandleError;

    /// Case-insensitive, because config files write `ir` as often as `IR`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 2 || !s.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(HandleError::UnknownRegion(s.chars().take(16).collect()));
        }
        Id::from_str(&s.to_ascii_uppercase())
            .map(Region)
            .map_err(|_| HandleError::UnknownRegion(s.to_owned()))
    }
}

/// A normalized identity handle: the kind, the canonical value, and for
/// channel-local ids the scope (channel or app id) that makes them unique.
///
/// Fields are private so that every handle in the system went through the
/// normalization rules; the constructors are idempotent, so a handle read
/// back from storage can be rebuilt with [`Handle::provider`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle {
    kind: HandleKind,
    value: String,
    scope: Option<String>,
}

impl Handle {
    /// An email handle.
    ///
    /// Normalization (part of the stream contract):
    /// 1. trim surrounding whitespace; strip one surrounding `<...>`, then a
    ///    case-insensitive `mailto:` prefix;
    /// 2. reject whitespace, control characters and invisible formatting
    ///    characters (bidi marks, overrides and isolates, zero-width
    ///    characters, the BOM) anywhere, and RFC 5322
    ///    specials (`"(),:;<>[\]@`) in the local part — so quoted local parts
    ///    and a second '@' are rejected rather than parsed;
    /// 3. split at the last '@'; neither side may be empty;
    /// 4. local part: Unicode lower-case then NFC. Providers treat local parts
    ///    case-insensitively and agents expect `John@` and `john@` to be one
    ///    person; NFC makes a name typed on macOS (often NFD) equal the same
    ///    name typed elsewhere. Dots and `+tags` are kept: which of them a
    ///    mailbox ignores is provider-specific, and merging two people is
    ///    worse than missing a link;
    /// 5. domain: IDNA (UTS 46) to ASCII, which also lower-cases and maps
    ///    ideographic full stops; one trailing dot removed; every label must
    ///    be 1–63 bytes of `a-z`, `0-9`, `-`;
    /// 6. local part at most 64 bytes, whole address at most 254 bytes, both
    ///    measured after normalization.
    ///
    /// So `Zoë@Bücher.Example` becomes `zoë@xn--bcher-kva.example`.
    pub fn email(raw: &str) -> Result<Handle, HandleError> {
        Ok(Handle {
            kind: HandleKind::Email,
            value: normalize_email(raw)?,
            scope: None,
        })
    }

    /// A phone handle in E.164 (`+989121234567`).
    ///
    /// Normalization (part of the stream contract):
    /// 1. reject input longer than 64 characters; trim surrounding
    ///    whitespace;
    /// 2. map Persian (U+06F0–U+06F9), Arabic-Indic (U+0660–U+0669) and
    ///    full-width (U+FF10–U+FF19) digits to ASCII, and the full-width plus
    ///    (U+FF0B) to '+', because customers type in their own script;
    /// 3. drop Unicode spaces (NBSP included, control characters such as
    ///    tab or newline not), `-` `.` `(` `)` `/`, their
    ///    full-width forms, Unicode dashes and minus, zero-width characters
    ///    and the BOM, and bidi marks (U+061C, U+200E, U+200F,
    ///    U+202A–U+202E, U+2066–U+2069), which numbers copy-pasted from
    ///    right-to-left text carry;
    /// 4. anything else, including letters, extensions and control
    ///    characters, is rejected: a
    ///    handle must not silently lose part of what the customer wrote;
    /// 5. a leading "00" becomes '+'; a '+' is only allowed first;
    /// 6. without a '+', the number is read as a national number of
    ///    `default_region`, and without one it is rejected
    ///    ([`HandleError::MissingRegion`]) rather than guessed;
    /// 7. the number must be valid according to libphonenumber's metadata.
    pub fn phone(raw: &str, default_region: Option<Region>) -> Result<Handle, HandleError> {
        Ok(Handle {
            kind: HandleKind::Phone,
            value: normalize_phone(raw, default_region)?,
            scope: None,
        })
    }

    /// A handle for any kind, mainly provider-assigned ids.
    ///
    /// Provider ids (and scopes) are trimmed, must be non-empty, at most 256
    /// bytes and free of control and invisible formatting characters (bidi
    /// controls, zero-width characters, the BOM), and are otherwise kept
    /// verbatim:
    /// they are opaque and case-sensitive (WeChat openids differ only in
    /// case). [`HandleKind::ChatVisitor`] and [`HandleKind::External`] need a
    /// scope (the channel id); the others take one optionally.
    ///
    /// [`HandleKind::Email`] and [`HandleKind::Phone`] delegate to
    /// [`Handle::email`] and [`Handle::phone`] (without a default region, so
    /// the number needs its country code) and refuse a scope.
    pub fn provider(
        kind: HandleKind,
        value: &str,
        scope: Option<&str>,
    ) -> Result<Handle, HandleError> {
        match kind {
            HandleKind::Email | HandleKind::Phone if scope.is_some() => {
                Err(HandleError::UnexpectedScope(kind))
            }
            HandleKind::Email => Handle::email(value),
            HandleKind::Phone => Handle::phone(value, None),
            _ => {
                let value = check_opaque_id("provider id", value)?;
                let scope = scope.map(|s| check_opaque_id("scope", s)).transpose()?;
                if kind.requires_scope() && scope.is_none() {
                    return Err(HandleError::MissingScope(kind));
                }
                Ok(Handle {
                    kind,
                    value: value.to_owned(),
                    scope: scope.map(str::to_owned),
                })
            }
        }
    }

    /// The kind of handle.
    pub fn kind(&self) -> HandleKind {
        self.kind
    }

    /// The normalized value.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The scope (channel or app id) of a channel-local id.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

impl fmt::Display for Handle {
    /// The handle's [`HandleText`], e.g. `email:ana@example.com`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        HandleText {
            kind: self.kind.as_str(),
            scope: self.scope().unwrap_or_default(),
            value: &self.value,
        }
        .fmt(f)
    }
}

impl FromStr for Handle {
    type Err = HandleError;

    /// Reads [`HandleText`] and normalizes the value as [`Handle::provider`]
    /// does, so `phone:+1 415 555 0134` and `phone:+14155550134` are the
    /// same handle.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = HandleText::parse(s)?;
        let scope = (!text.scope.is_empty()).then_some(text.scope);
        Handle::provider(text.kind.parse()?, text.value, scope)
    }
}

/// A handle as text: `kind:value`, or `kind:scope:value` for a scoped one,
/// with the kind's wire name (`email`, `telegram`, `external`, ...).
///
/// It is the key of a sender's messages on `omni.inbound.v1` and the form
/// the CLI and stored link records use, so its bytes are part of the stream
/// contract. The parts are borrowed so that a [`Handle`], a stored key and a
/// stream handle all format through this one type.
///
/// The text is not escaped, so reading it back relies on what normalization
/// and channel ids guarantee: email and phone values are never scoped and
/// keep their colons; for every other kind a scope never contains `:` (the
/// first colon after the kind ends it), and unscoped values of optionally
/// scoped kinds (Telegram, WeChat and WhatsApp ids) have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandleText<'a> {
    /// The kind's wire name; `unspecified` for a stream handle without one.
    pub kind: &'a str,
    /// The scope, empty for an unscoped handle.
    pub scope: &'a str,
    /// The value.
    pub value: &'a str,
}

impl<'a> HandleText<'a> {
    /// Splits `kind:value` or `kind:scope:value`. The kind must be a known
    /// wire name, since it decides whether a scope can follow; the value is
    /// not normalized (parse a [`Handle`] for that).
    pub fn parse(text: &'a str) -> Result<HandleText<'a>, HandleError> {
        let (kind, rest) = text.split_once(':').ok_or(HandleError::MissingKind)?;
        let takes_scope = !matches!(
            kind.parse::<HandleKind>()?,
            HandleKind::Email | HandleKind::Phone
        );
        let (scope, value) = match rest.split_once(':') {
            Some(parts) if takes_scope => parts,
            _ => ("", rest),
        };
        Ok(HandleText { kind, scope, value })
    }
}

impl fmt::Display for HandleText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scope.is_empty() {
            write!(f, "{}:{}", self.kind, self.value)
        } else {
            write!(f, "{}:{}:{}", self.kind, self.scope, self.value)
        }
    }
}

fn normalize_email(raw: &str) -> Result<String, HandleError> {
    const FIELD: &str = "email address";
    if raw.len() > MAX_RAW_EMAIL_BYTES {
        return Err(HandleError::TooLong {
            field: FIELD,
            max: MAX_EMAIL_BYTES,
            unit: "bytes",
        });
    }
    let mut s = raw.trim();
    if let Some(inner) = s.strip_prefix('<').and_then(|s| s.strip_suffix('>')) {
        s = inner;
    }
    if s.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("mailto:"))
    {
        s = &s[7..];
    }
    if s.is_empty() {
        return Err(HandleError::Empty { field: FIELD });
    }
    if let Some(ch) = s
        .chars()
        .find(|&c| c.is_whitespace() || c.is_control() || is_invisible_format(c))
    {
        return Err(HandleError::InvalidCharacter { field: FIELD, ch });
    }
    let (local, domain) = s.rsplit_once('@').ok_or(HandleError::MissingAt)?;
    if local.is_empty() {
        return Err(HandleError::Empty {
            field: "email local part",
        });
    }
    if let Some(ch) = local.chars().find(|c| EMAIL_LOCAL_SPECIALS.contains(c)) {
        return Err(HandleError::InvalidCharacter {
            field: "email local part",
            ch,
        });
    }
    let local: String = local.to_lowercase().nfc().collect();
    if local.len() > MAX_EMAIL_LOCAL_BYTES {
        return Err(HandleError::TooLong {
            field: "email local part",
            max: MAX_EMAIL_LOCAL_BYTES,
            unit: "bytes",
        });
    }
    let domain = normalize_domain(domain)?;
    let address = format!("{local}@{domain}");
    if address.len() > MAX_EMAIL_BYTES {
        return Err(HandleError::TooLong {
            field: FIELD,
            max: MAX_EMAIL_BYTES,
            unit: "bytes",
        });
    }
    Ok(address)
}

fn normalize_domain(domain: &str) -> Result<String, HandleError> {
    if domain.is_empty() {
        return Err(HandleError::InvalidDomain);
    }
    let mut ascii = idna::domain_to_ascii(domain).map_err(|_| HandleError::InvalidDomain)?;
    // After IDNA, so that a trailing ideographic full stop goes too.
    if ascii.ends_with('.') {
        ascii.pop();
    }
    let labels_ok = !ascii.is_empty()
        && ascii.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_DOMAIN_LABEL_BYTES
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if !labels_ok {
        return Err(HandleError::InvalidDomain);
    }
    Ok(ascii)
}

fn normalize_phone(raw: &str, default_region: Option<Region>) -> Result<String, HandleError> {
    const FIELD: &str = "phone number";
    if raw.chars().nth(MAX_PHONE_INPUT_CHARS).is_some() {
        return Err(HandleError::TooLong {
            field: FIELD,
            max: MAX_PHONE_INPUT_CHARS,
            unit: "characters",
        });
    }
    let raw = raw.trim();
    let mut cleaned = String::with_capacity(raw.len());
    for ch in raw.chars() {
        if let Some(digit) = ascii_digit(ch) {
            cleaned.push(digit);
        } else if ch == '+' || ch == '\u{FF0B}' {
            if !cleaned.is_empty() {
                return Err(HandleError::InvalidCharacter { field: FIELD, ch });
            }
            cleaned.push('+');
        } else if !is_phone_filler(ch) {
            return Err(HandleError::InvalidCharacter { field: FIELD, ch });
        }
    }
    if cleaned.is_empty() {
        return Err(HandleError::Empty { field: FIELD });
    }
    if let Some(rest) = cleaned.strip_prefix("00") {
        cleaned = format!("+{rest}");
    }
    let region = if cleaned.starts_with('+') {
        None
    } else {
        Some(default_region.ok_or(HandleError::MissingRegion)?.0)
    };
    e164(region, cleaned).ok_or(HandleError::InvalidPhone)
}

/// Distinct cleaned numbers whose E.164 form a thread remembers.
const PHONE_CACHE_ENTRIES: usize = 4096;

/// Cleaned number (and region) -> E.164 form, `None` when invalid.
type PhoneCache = std::collections::HashMap<(Option<Id>, String), Option<String>>;

thread_local! {
    /// What [`e164`] computed on this thread, up to [`PHONE_CACHE_ENTRIES`].
    ///
    /// `phonenumber`'s parse and validation cost tens of microseconds (regex
    /// matching through an LRU keyed by pattern text), and the same people
    /// write again and again: the threading worker normalizes every inbound
    /// sender, often twice. The result only depends on the input and the
    /// compiled-in metadata, so remembering it changes nothing else.
    static PHONE_CACHE: std::cell::RefCell<PhoneCache> = std::cell::RefCell::new(PhoneCache::new());
}

/// The E.164 form of a cleaned number (digits, optionally after a `+`).
fn e164(region: Option<Id>, cleaned: String) -> Option<String> {
    let key = (region, cleaned);
    if let Some(hit) = PHONE_CACHE.with_borrow(|cache| cache.get(&key).cloned()) {
        return hit;
    }
    let formatted = phonenumber::parse(region, &key.1)
        .ok()
        .filter(phonenumber::is_valid)
        .map(|number| number.format().mode(Mode::E164).to_string());
    PHONE_CACHE.with_borrow_mut(|cache| {
        if cache.len() >= PHONE_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, formatted.clone());
    });
    formatted
}

/// The ASCII digit for an ASCII, Arabic-Indic, Persian or full-width digit.
fn ascii_digit(ch: char) -> Option<char> {
    let base = match ch {
        '0'..='9' => '0',
        '\u{0660}'..='\u{0669}' => '\u{0660}',
        '\u{06F0}'..='\u{06F9}' => '\u{06F0}',
        '\u{FF10}'..='\u{FF19}' => '\u{FF10}',
        _ => return None,
    };
    char::from_digit(u32::from(ch) - u32::from(base), 10)
}

/// Decoration that people and RTL text put into phone numbers.
fn is_phone_filler(ch: char) -> bool {
    (ch.is_whitespace() && !ch.is_control())
        || matches!(
            ch,
            '-' | '.' | '(' | ')' | '/'
            // full-width ( ) - . /
            | '\u{FF08}' | '\u{FF09}' | '\u{FF0D}' | '\u{FF0E}' | '\u{FF0F}'
            // hyphen, non-breaking hyphen, figure dash, en/em dash, bar, minus
            | '\u{2010}'..='\u{2015}' | '\u{2212}'
            // zero-width space/non-joiner/joiner, word joiner, BOM
            | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}'
            // Arabic letter mark, LRM/RLM, embeddings/overrides, isolates
            | '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

fn check_opaque_id<'a>(field: &'static str, raw: &'a str) -> Result<&'a str, HandleError> {
    let value = raw.trim();
    if value.is_empty() {
        return Err(HandleError::Empty { field });
    }
    if value.len() > MAX_PROVIDER_ID_BYTES {
        return Err(HandleError::TooLong {
            field,
            max: MAX_PROVIDER_ID_BYTES,
            unit: "bytes",
        });
    }
    if let Some(ch) = value
        .chars()
        .find(|&c| c.is_control() || is_invisible_format(c))
    {
        return Err(HandleError::InvalidCharacter { field, ch });
    }
    Ok(value)
}

/// Characters that render as nothing or reorder the text around them.
///
/// In a handle they would let two handles look identical while being
/// different keys (`a\u{200B}b` and `ab`), or make a value display as
/// something else entirely (a right-to-left override turns `moc.evil@x`
/// into what reads as another address), so every handle refuses them.
/// Phone input is the exception in appearance only: those characters are
/// decoration there and never reach the E.164 value.
fn is_invisible_format(ch: char) -> bool {
    matches!(
        ch,
        // soft hyphen, Mongolian vowel separator
        '\u{00AD}' | '\u{180E}'
        // Arabic letter mark, LRM/RLM, embeddings/overrides, isolates
        | '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        // zero-width space/non-joiner/joiner, word joiner, invisible operators, BOM
        | '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}'
        // deprecated shaping controls, interlinear annotation
        | '\u{206A}'..='\u{206F}' | '\u{FFF9}'..='\u{FFFB}'
        // language tag and tag characters
        | '\u{E0001}' | '\u{E0020}'..='\u{E007F}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(code: &str) -> Option<Region> {
        Some(code.parse().expect("known region"))
    }

    fn phone(raw: &str, code: Option<&str>) -> Result<String, HandleError> {
        Handle::phone(raw, code.and_then(region)).map(|h| h.value().to_owned())
    }

    fn email(raw: &str) -> Result<String, HandleError> {
        Handle::email(raw).map(|h| h.value().to_owned())
    }

    #[test]
    fn kind_strings_round_trip_and_are_stable() {
        let wire: Vec<&str> = HandleKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            wire,
            [
                "email",
                "phone",
                "telegram",
                "wechat_openid",
                "wechat_unionid",
                "whatsapp",
                "chat_visitor",
                "external",
                "wecom_external_user",
                "messenger_psid",
                "instagram_igsid"
            ]
        );
        for kind in HandleKind::ALL {
            assert_eq!(kind.to_string().parse::<HandleKind>(), Ok(kind));
        }
        assert_eq!("Email".parse::<HandleKind>(), Err(HandleError::UnknownKind));
        assert_eq!(
            "telegram_user".parse::<HandleKind>(),
            Err(HandleError::UnknownKind)
        );
    }

    #[test]
    fn region_parses_case_insensitively() {
        assert_eq!(
            "ir".parse::<Region>().map(|r| r.to_string()),
            Ok("IR".to_owned())
        );
        assert_eq!(
            "Cn".parse::<Region>().map(|r| r.to_string()),
            Ok("CN".to_owned())
        );
        assert!(matches!(
            "XX".parse::<Region>(),
            Err(HandleError::UnknownRegion(_))
        ));
        assert!(matches!(
            "IRN".parse::<Region>(),
            Err(HandleError::UnknownRegion(_))
        ));
        assert!(matches!(
            "".parse::<Region>(),
            Err(HandleError::UnknownRegion(_))
        ));
        assert!(matches!(
            "И".parse::<Region>(),
            Err(HandleError::UnknownRegion(_))
        ));
    }

    #[test]
    fn persian_digits_iran_mobile() {
        assert_eq!(
            phone("۰۹۱۲ ۱۲۳ ۴۵۶۷", Some("IR")),
            Ok("+989121234567".to_owned())
        );
        assert_eq!(
            phone("+۹۸ ۹۱۲ ۱۲۳ ۴۵۶۷", None),
            Ok("+989121234567".to_owned())
        );
    }

    #[test]
    fn arabic_indic_digits_uae_mobile() {
        assert_eq!(
            phone("٠٥٠ ١٢٣ ٤٥٦٧", Some("AE")),
            Ok("+971501234567".to_owned())
        );
    }

    #[test]
    fn bidi_marked_rtl_paste() {
        // As copied from an Arabic or Persian chat: isolates and marks around
        // and inside the number, NBSP between the groups.
        let pasted = "\u{2068}\u{200E}+98\u{00A0}912\u{200F} 123\u{202F}4567\u{2069}";
        assert_eq!(phone(pasted, None), Ok("+989121234567".to_owned()));
        let arabic = "\u{061C}\u{202B}٠٠٩٧١ ٥٠ ١٢٣ ٤٥٦٧\u{202C}";
        assert_eq!(phone(arabic, None), Ok("+971501234567".to_owned()));
    }

    #[test]
    fn international_prefixes() {
        assert_eq!(
            phone("+86 138 0013 8000", None),
            Ok("+8613800138000".to_owned())
        );
        assert_eq!(
            phone("0044 20 7946 0958", None),
            Ok("+442079460958".to_owned())
        );
        // A default region does not override an explicit country code.
        assert_eq!(
            phone("+86 138 0013 8000", Some("DE")),
            Ok("+8613800138000".to_owned())
        );
        assert_eq!(
            phone("(+1) 650/253.0000", None),
            Ok("+16502530000".to_owned())
        );
    }

    #[test]
    fn full_width_digits() {
        assert_eq!(
            phone("＋８６ １３８－００１３－８０００", None),
            Ok("+8613800138000".to_owned())
        );
        assert_eq!(
            phone("１３８００１３８０００", Some("CN")),
            Ok("+8613800138000".to_owned())
        );
    }

    #[test]
    fn german_national_number() {
        assert_eq!(
            phone("030 901820", Some("DE")),
            Ok("+4930901820".to_owned())
        );
        assert_eq!(
            phone("0151 23456789", Some("DE")),
            Ok("+4915123456789".to_owned())
        );
        assert_eq!(
            phone("(030) 901820", Some("de")),
            Ok("+4930901820".to_owned())
        );
    }

    #[test]
    fn invalid_numbers_rejected() {
        assert_eq!(phone("+98 123", None), Err(HandleError::InvalidPhone));
        assert_eq!(
            phone("+999 1234 5678", None),
            Err(HandleError::InvalidPhone)
        );
        assert_eq!(phone("0000000", Some("DE")), Err(HandleError::InvalidPhone));
        assert_eq!(phone("+", None), Err(HandleError::InvalidPhone));
        assert_eq!(
            phone("   ", None),
            Err(HandleError::Empty {
                field: "phone number"
            })
        );
        assert!(matches!(
            phone("+49 30 901820 ext. 12", None),
            Err(HandleError::InvalidCharacter { ch: 'e', .. })
        ));
        assert!(matches!(
            phone("+49 30+901820", None),
            Err(HandleError::InvalidCharacter { ch: '+', .. })
        ));
        assert!(matches!(
            phone("1-800-FLOWERS", Some("US")),
            Err(HandleError::InvalidCharacter { .. })
        ));
        let long = "1 ".repeat(40);
        assert!(matches!(
            phone(&long, Some("DE")),
            Err(HandleError::TooLong { .. })
        ));
    }

    #[test]
    fn national_number_without_region_rejected() {
        assert_eq!(
            phone("0912 123 4567", None),
            Err(HandleError::MissingRegion)
        );
        assert_eq!(
            Handle::provider(HandleKind::Phone, "0912 123 4567", None),
            Err(HandleError::MissingRegion)
        );
    }

    #[test]
    fn phone_normalization_is_idempotent() {
        for raw in ["۰۹۱۲ ۱۲۳ ۴۵۶۷", "٠٥٠ ١٢٣ ٤٥٦٧"] {
            let first =
                Handle::phone(raw, region(if raw.starts_with('۰') { "IR" } else { "AE" })).unwrap();
            let again = Handle::provider(HandleKind::Phone, first.value(), None).unwrap();
            assert_eq!(first, again);
        }
    }

    #[test]
    fn remembered_numbers_normalize_as_the_first_time() {
        // The same cleaned digits under different regions, valid and
        // invalid, more often than the cache holds, so it also refills.
        let inputs = [
            ("030 1234567", "DE"),
            ("0301234567", "DE"),
            ("030 1234567", "US"),
            ("0000000", "DE"),
            ("+1 415 555 2671", "DE"),
        ];
        let first: Vec<_> = inputs
            .iter()
            .map(|(raw, code)| phone(raw, Some(code)))
            .collect();
        for n in 0..PHONE_CACHE_ENTRIES + 10 {
            let _ = phone(&format!("+1 415 {:07}", n % 10_000_000), None);
        }
        for _ in 0..2 {
            let again: Vec<_> = inputs
                .iter()
                .map(|(raw, code)| phone(raw, Some(code)))
                .collect();
            assert_eq!(again, first);
        }
        assert_eq!(first[0], Ok("+49301234567".to_owned()));
        assert_eq!(first[3], Err(HandleError::InvalidPhone));
    }

    /// A tiny xorshift generator, so this runs without a property-testing
    /// dependency and is reproducible.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }
    }

    /// Re-spells an ASCII digit in one of the scripts customers type in.
    fn respell_digit(d: char, script: usize) -> char {
        let base = ['0', '\u{0660}', '\u{06F0}', '\u{FF10}'][script % 4];
        char::from_u32(u32::from(base) + d.to_digit(10).unwrap()).unwrap()
    }

    #[test]
    fn phone_never_panics_on_junk() {
        const JUNK: &[char] = &[
            '0',
            '7',
            '۰',
            '۹',
            '٠',
            '٥',
            '０',
            '９',
            '+',
            '＋',
            ' ',
            '\u{00A0}',
            '-',
            '(',
            ')',
            '.',
            '/',
            '\u{200F}',
            '\u{2066}',
            'x',
            'e',
            ';',
            '#',
            '*',
            '\0',
            '\n',
            'é',
            '中',
            '\u{10FFFF}',
            ':',
            't',
            'l',
        ];
        const FILLER: &[char] = &[
            ' ', '\u{00A0}', '-', '.', '\u{200E}', '\u{200F}', '\u{2067}', '\u{061C}', '（',
        ];
        const SEEDS: &[(&str, Option<&str>, &str)] = &[
            ("+989121234567", None, "+989121234567"),
            ("09121234567", Some("IR"), "+989121234567"),
            ("0501234567", Some("AE"), "+971501234567"),
            ("00442079460958", None, "+442079460958"),
            ("13800138000", Some("CN"), "+8613800138000"),
            ("030901820", Some("DE"), "+4930901820"),
        ];
        let regions = [
            None,
            region("IR"),
            region("DE"),
            region("US"),
            region("CN"),
            region("AE"),
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut accepted = 0;
        for _ in 0..5000 {
            if rng.below(2) == 0 {
                // Pure junk: must not panic, and whatever passes is E.164.
                let len = rng.below(24);
                let s: String = (0..len).map(|_| JUNK[rng.below(JUNK.len())]).collect();
                if let Ok(handle) = Handle::phone(&s, regions[rng.below(regions.len())]) {
                    assert!(handle.value().starts_with('+'), "{s:?} gave {handle:?}");
                    assert!(handle.value()[1..].bytes().all(|b| b.is_ascii_digit()));
                }
                continue;
            }
            // A real number decorated the way people and RTL text decorate
            // them must normalize to the same handle; with junk mixed in it
            // must be rejected.
            let (seed, seed_region, expected) = SEEDS[rng.below(SEEDS.len())];
            let script = rng.below(4);
            let mut s = String::new();
            let mut junked = false;
            for ch in seed.chars() {
                match rng.below(10) {
                    0 => s.push(FILLER[rng.below(FILLER.len())]),
                    1 if ch.is_ascii_digit() => {
                        let junk = JUNK[rng.below(JUNK.len())];
                        junked |= !is_phone_filler(junk);
                        s.push(junk);
                    }
                    _ => {}
                }
                s.push(if ch.is_ascii_digit() {
                    respell_digit(ch, script)
                } else {
                    ch
                });
            }
            let result = Handle::phone(&s, seed_region.and_then(region));
            if junked {
                continue;
            }
            assert_eq!(result.as_ref().map(Handle::value), Ok(expected), "{s:?}");
            accepted += 1;
        }
        // Proves the generator exercised the success path, not only the
        // cheap rejections.
        assert!(accepted > 500, "{accepted}");
    }

    #[test]
    fn email_idn_domains() {
        assert_eq!(
            email("Zoë@Bücher.Example"),
            Ok("zoë@xn--bcher-kva.example".to_owned())
        );
        assert_eq!(
            email("用户@例子.广告"),
            Ok("用户@xn--fsqu00a.xn--4rr70v".to_owned())
        );
        assert_eq!(
            email("用户@例子.公司"),
            Ok("用户@xn--fsqu00a.xn--55qx5d".to_owned())
        );
        // Ideographic full stops, as typed with a Chinese input method.
        assert_eq!(
            email("用户@例子。公司"),
            Ok("用户@xn--fsqu00a.xn--55qx5d".to_owned())
        );
        assert_eq!(
            email("علي@مثال.إختبار"),
            Ok("علي@xn--mgbh0fb.xn--kgbechtv".to_owned())
        );
    }

    #[test]
    fn email_case_and_wrappers() {
        assert_eq!(
            email("John.Doe+Sales@Example.COM"),
            Ok("john.doe+sales@example.com".to_owned())
        );
        assert_eq!(
            email("  <john@example.com>  "),
            Ok("john@example.com".to_owned())
        );
        assert_eq!(
            email("mailto:John@Example.com"),
            Ok("john@example.com".to_owned())
        );
        assert_eq!(
            email("<MAILTO:john@example.com>"),
            Ok("john@example.com".to_owned())
        );
        assert_eq!(
            email("john@example.com."),
            Ok("john@example.com".to_owned())
        );
        // NFD "e" + combining diaeresis equals precomposed "ë".
        assert_eq!(
            email("Zoe\u{0308}@example.com"),
            Ok("zo\u{00EB}@example.com".to_owned())
        );
    }

    #[test]
    fn email_normalization_is_idempotent() {
        for raw in [
            "Zoë@Bücher.Example",
            "用户@例子.广告",
            "ΣΊΣΥΦΟΣ@example.gr",
            "İstanbul@example.tr",
        ] {
            let first = Handle::email(raw).unwrap();
            let again = Handle::provider(HandleKind::Email, first.value(), None).unwrap();
            assert_eq!(first, again, "{raw}");
        }
    }

    #[test]
    fn bad_emails_rejected() {
        let field = "email address";
        assert_eq!(email(""), Err(HandleError::Empty { field }));
        assert_eq!(email("<>"), Err(HandleError::Empty { field }));
        assert_eq!(email("john.example.com"), Err(HandleError::MissingAt));
        assert_eq!(
            email("@example.com"),
            Err(HandleError::Empty {
                field: "email local part"
            })
        );
        assert_eq!(email("john@"), Err(HandleError::InvalidDomain));
        assert_eq!(email("john@exa_mple.com"), Err(HandleError::InvalidDomain));
        assert_eq!(email("john@example..com"), Err(HandleError::InvalidDomain));
        assert_eq!(email("john@[192.0.2.1]"), Err(HandleError::InvalidDomain));
        assert!(matches!(
            email("john doe@example.com"),
            Err(HandleError::InvalidCharacter { ch: ' ', .. })
        ));
        assert!(matches!(
            email("john\u{0}@example.com"),
            Err(HandleError::InvalidCharacter { .. })
        ));
        assert!(matches!(
            email("a@b@example.com"),
            Err(HandleError::InvalidCharacter { ch: '@', .. })
        ));
        assert!(matches!(
            email("\"john\"@example.com"),
            Err(HandleError::InvalidCharacter { ch: '"', .. })
        ));
        assert!(matches!(
            email("John <john@example.com>"),
            Err(HandleError::InvalidCharacter { .. })
        ));
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(matches!(
            email(&long_local),
            Err(HandleError::TooLong {
                field: "email local part",
                ..
            })
        ));
        let long_total = format!(
            "{}@{}.com",
            "a".repeat(64),
            vec!["b".repeat(63); 3].join(".")
        );
        assert!(
            matches!(email(&long_total), Err(HandleError::TooLong { field, .. }) if field == "email address")
        );
        assert!(matches!(
            email(&"a".repeat(5000)),
            Err(HandleError::TooLong { .. })
        ));
    }

    #[test]
    fn provider_ids_verbatim_and_scoped() {
        let h = Handle::provider(
            HandleKind::WechatOpenid,
            "  oUpF8uMuAJO_M2pxb1Q9zNjWeS6o ",
            Some("wx123"),
        )
        .unwrap();
        assert_eq!(h.kind(), HandleKind::WechatOpenid);
        assert_eq!(h.value(), "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
        assert_eq!(h.scope(), Some("wx123"));
        let upper = Handle::provider(
            HandleKind::WechatOpenid,
            "OUPF8UMUAJO_M2PXB1Q9ZNJWES6O",
            Some("wx123"),
        )
        .unwrap();
        assert_ne!(h, upper);

        let tg = Handle::provider(HandleKind::TelegramUser, "123456789", None).unwrap();
        assert_eq!((tg.value(), tg.scope()), ("123456789", None));

        assert_eq!(
            Handle::provider(HandleKind::ChatVisitor, "v-1", None),
            Err(HandleError::MissingScope(HandleKind::ChatVisitor))
        );
        assert_eq!(
            Handle::provider(HandleKind::External, "c-9", None),
            Err(HandleError::MissingScope(HandleKind::External))
        );
        assert!(Handle::provider(HandleKind::ChatVisitor, "v-1", Some("web-main")).is_ok());
        assert_eq!(
            Handle::provider(HandleKind::ChatVisitor, "v-1", Some(" ")),
            Err(HandleError::Empty { field: "scope" })
        );
        assert_eq!(
            Handle::provider(HandleKind::Whatsapp, "", None),
            Err(HandleError::Empty {
                field: "provider id"
            })
        );
        assert!(matches!(
            Handle::provider(HandleKind::Whatsapp, "1\u{7}2", None),
            Err(HandleError::InvalidCharacter { ch: '\u{7}', .. })
        ));
        assert!(matches!(
            Handle::provider(HandleKind::External, &"x".repeat(257), Some("api")),
            Err(HandleError::TooLong { max: 256, .. })
        ));
        assert!(Handle::provider(HandleKind::External, &"x".repeat(256), Some("api")).is_ok());
    }

    #[test]
    fn provider_delegates_email_and_phone() {
        assert_eq!(
            Handle::provider(HandleKind::Email, "John@Example.com", None),
            Handle::email("john@example.com")
        );
        assert_eq!(
            Handle::provider(HandleKind::Phone, "+98 912 123 4567", None)
                .map(|h| h.value().to_owned()),
            Ok("+989121234567".to_owned())
        );
        assert_eq!(
            Handle::provider(HandleKind::Email, "john@example.com", Some("ch")),
            Err(HandleError::UnexpectedScope(HandleKind::Email))
        );
    }

    /// Bidi controls, zero-width characters, the BOM, a soft hyphen and a
    /// tag character.
    const INVISIBLE: &[char] = &[
        '\u{202A}',
        '\u{202B}',
        '\u{202C}',
        '\u{202D}',
        '\u{202E}',
        '\u{2066}',
        '\u{2067}',
        '\u{2068}',
        '\u{2069}',
        '\u{200E}',
        '\u{200F}',
        '\u{061C}',
        '\u{200B}',
        '\u{200C}',
        '\u{200D}',
        '\u{2060}',
        '\u{FEFF}',
        '\u{00AD}',
        '\u{E0041}',
    ];

    fn refused(result: Result<Handle, HandleError>, ch: char) -> bool {
        matches!(result, Err(HandleError::InvalidCharacter { ch: c, .. }) if c == ch)
    }

    #[test]
    fn email_refuses_invisible_characters() {
        assert!(refused(Handle::email("a\u{202e}@example.com"), '\u{202e}'));
        for &ch in INVISIBLE {
            for raw in [
                format!("{ch}ana@example.com"),
                format!("a{ch}na@example.com"),
                format!("ana{ch}@example.com"),
                format!("ana@{ch}example.com"),
                format!("ana@exam{ch}ple.com"),
                format!("ana@example.com{ch}"),
                format!("<ana@example.com{ch}>"),
            ] {
                assert!(refused(Handle::email(&raw), ch), "{raw:?}");
                assert!(
                    refused(Handle::provider(HandleKind::Email, &raw, None), ch),
                    "{raw:?}"
                );
            }
        }
        for ch in ['\u{7}', '\u{1b}', '\u{85}', '\u{9f}'] {
            assert!(refused(Handle::email(&format!("a{ch}b@example.com")), ch));
            assert!(refused(Handle::email(&format!("ab@exa{ch}mple.com")), ch));
        }
    }

    #[test]
    fn provider_ids_and_scopes_refuse_invisible_characters() {
        for &ch in INVISIBLE {
            for kind in [
                HandleKind::TelegramUser,
                HandleKind::WechatOpenid,
                HandleKind::WechatUnionid,
                HandleKind::Whatsapp,
                HandleKind::ChatVisitor,
                HandleKind::External,
            ] {
                for value in [format!("{ch}42"), format!("4{ch}2"), format!("42{ch}")] {
                    assert!(
                        refused(Handle::provider(kind, &value, Some("web")), ch),
                        "{kind} {value:?}"
                    );
                    assert!(
                        refused(Handle::provider(kind, "42", Some(&value)), ch),
                        "{kind} scope {value:?}"
                    );
                }
            }
        }
        for ch in ['\0', '\u{1b}', '\u{7f}', '\u{85}'] {
            assert!(refused(
                Handle::provider(HandleKind::External, "42", Some(&format!("a{ch}b"))),
                ch
            ));
        }
    }

    #[test]
    fn phone_refuses_control_characters_and_never_keeps_invisible_ones() {
        for ch in ['\0', '\t', '\n', '\r', '\u{1b}', '\u{7f}', '\u{85}'] {
            let raw = format!("+98 912{ch}123 4567");
            assert!(refused(Handle::phone(&raw, None), ch), "{raw:?}");
            assert!(
                refused(Handle::provider(HandleKind::Phone, &raw, None), ch),
                "{raw:?}"
            );
        }
        // Surrounding whitespace is trimmed, as for every other handle.
        assert_eq!(
            phone("\t+98 912 123 4567\r\n", None),
            Ok("+989121234567".to_owned())
        );
        // Bidi and zero-width characters are how right-to-left text
        // decorates numbers (see `bidi_marked_rtl_paste`): they are dropped,
        // and the value that becomes the handle is plain E.164.
        for &ch in INVISIBLE.iter().filter(|&&c| is_phone_filler(c)) {
            let handle = Handle::phone(&format!("{ch}+98 912{ch}123 4567{ch}"), None).unwrap();
            assert_eq!(handle.value(), "+989121234567");
        }
        // Those that are not decoration are refused like letters.
        for ch in ['\u{00AD}', '\u{E0041}'] {
            assert!(refused(
                Handle::phone(&format!("+98 912{ch}1234567"), None),
                ch
            ));
        }
    }

    #[test]
    fn handle_text_round_trips_for_every_kind() {
        for kind in HandleKind::ALL {
            let value = match kind {
                HandleKind::Email => "ana@example.com",
                HandleKind::Phone => "+14155550134",
                HandleKind::ChatVisitor | HandleKind::External => "user:7",
                _ => "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
            };
            let mut handles = Vec::new();
            if !kind.requires_scope() {
                handles.push(Handle::provider(kind, value, None).unwrap());
            }
            if !matches!(kind, HandleKind::Email | HandleKind::Phone) {
                handles.push(Handle::provider(kind, value, Some("wx-app_1")).unwrap());
            }
            for handle in handles {
                let text = handle.to_string();
                let parsed = HandleText::parse(&text).unwrap();
                assert_eq!(
                    (parsed.kind, parsed.scope, parsed.value),
                    (
                        kind.as_str(),
                        handle.scope().unwrap_or_default(),
                        handle.value()
                    ),
                    "{text}"
                );
                assert_eq!(parsed.to_string(), text);
                assert_eq!(text.parse::<Handle>(), Ok(handle), "{text}");
            }
        }
    }

    #[test]
    fn handle_text_forms() {
        assert_eq!(
            Handle::email("Ana@Example.COM").unwrap().to_string(),
            "email:ana@example.com"
        );
        assert_eq!(
            Handle::provider(HandleKind::External, "u-42", Some("acme"))
                .unwrap()
                .to_string(),
            "external:acme:u-42"
        );
        // Values are normalized on the way in.
        assert_eq!(
            "phone:+1 415 555 0134".parse::<Handle>(),
            Handle::phone("+14155550134", None)
        );
        assert_eq!(
            "email:Ana@Example.COM".parse::<Handle>(),
            Handle::email("ana@example.com")
        );
        // Email and phone values are never split at a colon.
        assert_eq!(
            HandleText::parse("email:a:b@example.com"),
            Ok(HandleText {
                kind: "email",
                scope: "",
                value: "a:b@example.com"
            })
        );
        assert_eq!("fax:1".parse::<Handle>(), Err(HandleError::UnknownKind));
        assert_eq!(
            "ana@example.com".parse::<Handle>(),
            Err(HandleError::MissingKind)
        );
        assert_eq!(
            "external:no-scope".parse::<Handle>(),
            Err(HandleError::MissingScope(HandleKind::External))
        );
        assert_eq!(
            "email:a\u{202e}@example.com".parse::<Handle>(),
            Err(HandleError::InvalidCharacter {
                field: "email address",
                ch: '\u{202e}'
            })
        );
    }

    #[test]
    fn error_messages_follow_house_style() {
        let errors = [
            HandleError::Empty { field: "scope" },
            HandleError::TooLong {
                field: "phone number",
                max: 64,
                unit: "characters",
            },
            HandleError::InvalidCharacter {
                field: "email address",
                ch: '\0',
            },
            HandleError::MissingAt,
            HandleError::InvalidDomain,
            HandleError::InvalidPhone,
            HandleError::MissingRegion,
            HandleError::MissingScope(HandleKind::External),
            HandleError::UnexpectedScope(HandleKind::Email),
            HandleError::UnknownKind,
            HandleError::MissingKind,
            HandleError::UnknownRegion("XX".to_owned()),
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(msg.starts_with(|c: char| c.is_lowercase()), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
        }
    }
}
