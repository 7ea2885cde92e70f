//! The channel files of the two WeChat kinds.

use omni_connector::{ConfigError, SecretRef};
use serde::Deserialize;

/// Settings of one Official Account (`kind = "wechat_oa"`): the values of
/// the account's "server configuration" page (服务器配置), minus `id` and
/// `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatOaConfig {
    /// The account's AppID (`wx` and 16 hex digits). It scopes every
    /// openid this channel sees, and safe mode checks that each
    /// ciphertext names it.
    pub app_id: String,

    /// The server configuration's Token (令牌): `{ env = "NAME" }` or
    /// `{ file = "/path" }`. Every request's `signature` (and, in safe
    /// mode, `msg_signature`) is a SHA-1 over it.
    pub token: SecretRef,

    /// The EncodingAESKey (消息加解密密钥, 43 characters). Needed in
    /// compatible and safe mode; without it only plaintext messages are
    /// read and an encrypted one is refused.
    #[serde(default)]
    pub encoding_aes_key: Option<SecretRef>,

    /// The EncodingAESKey before the last rotation, still accepted for
    /// decryption: WeChat switches keys when the admin saves the new one,
    /// and requests already signed with the old key keep arriving for a
    /// while. Remove it once the rotation is done.
    #[serde(default)]
    pub previous_encoding_aes_key: Option<SecretRef>,

    /// The AppSecret (开发者密码): needed for replies, media downloads and
    /// unionid lookups (all need an access token). Without it the channel
    /// only receives, and files keep WeChat's media id.
    #[serde(default)]
    pub app_secret: Option<SecretRef>,

    /// Check `signature` and `msg_signature` on every request (in constant
    /// time). Turning it off accepts messages from anyone; the daemon warns
    /// at every (re)load while it is off.
    #[serde(default = "default_true")]
    pub verify_signature: bool,

    /// Ask `cgi-bin/user/info` for the sender's unionid when a message
    /// does not carry one (needs `app_secret`, and an account bound to an
    /// Open Platform account). The answer is cached per openid; a lookup
    /// that fails or is slow never holds the message back.
    #[serde(default)]
    pub lookup_unionid: bool,

    /// The Open Platform account the unionids belong to, used as their
    /// scope when set (unionids are unique within one Open Platform
    /// account).
    #[serde(default)]
    pub open_platform_id: Option<String>,

    /// WeChat's API server. Tests point it at a local server.
    #[serde(default = "default_oa_api_base")]
    pub api_base: String,

    /// Bound (seconds) on each API call and on each file download.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,

    /// Bound (milliseconds) on the unionid lookup done while WeChat waits
    /// for its answer (it gives up after 5 seconds and retries).
    #[serde(default = "default_lookup_timeout_ms")]
    pub lookup_timeout_ms: u64,

    /// Largest file (bytes) downloaded into the attachment store; a larger
    /// one keeps WeChat's media id.
    #[serde(default = "default_max_media_bytes")]
    pub max_media_bytes: u64,
}

/// Settings of one WeChat Customer Service (微信客服) app of a WeCom
/// corporation (`kind = "wecom_kf"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WecomKfConfig {
    /// The WeCom corporation id (企业ID, `ww...`): the receive id inside
    /// every ciphertext, and the `corpid` of token requests.
    pub corp_id: String,

    /// The customer-service app's Secret (`{ env = "NAME" }` or
    /// `{ file = "/path" }`), for access tokens.
    pub secret: SecretRef,

    /// The callback's Token.
    pub token: SecretRef,

    /// The callback's EncodingAESKey (43 characters). WeCom always
    /// encrypts.
    pub encoding_aes_key: SecretRef,

    /// The EncodingAESKey before the last rotation, still accepted while
    /// an admin rotates it.
    #[serde(default)]
    pub previous_encoding_aes_key: Option<SecretRef>,

    /// Customer-service accounts (`open_kfid`, `wk...`) to poll even when no
    /// callback names them. Accounts named by a callback are remembered
    /// and polled too.
    #[serde(default)]
    pub open_kfids: Vec<String>,

    /// Check `msg_signature` on every callback (in constant time).
    /// Turning it off accepts callbacks from anyone (they only trigger a
    /// sync; the messages themselves come from the API).
    #[serde(default = "default_true")]
    pub verify_signature: bool,

    /// How often (seconds) every known account is synced without a
    /// callback, so a lost callback is recovered long before WeCom drops
    /// the messages (it keeps them 3 days).
    #[serde(default = "default_poll_interval_secs")]
    pub poll_interval_secs: u64,

    /// Messages asked for per `kf/sync_msg` call (1–1000).
    #[serde(default = "default_sync_limit")]
    pub sync_limit: u32,

    /// WeCom's API server. Tests point it at a local server.
    #[serde(default = "default_kf_api_base")]
    pub api_base: String,

    /// Bound (seconds) on each API call and on each file download.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,

    /// Largest file (bytes) downloaded into the attachment store.
    #[serde(default = "default_max_media_bytes")]
    pub max_media_bytes: u64,
}

fn default_true() -> bool {
    true
}

fn default_oa_api_base() -> String {
    "https://api.weixin.qq.com".to_owned()
}

fn default_kf_api_base() -> String {
    "https://qyapi.weixin.qq.com".to_owned()
}

fn default_request_timeout_secs() -> u64 {
    10
}

fn default_lookup_timeout_ms() -> u64 {
    1500
}

fn default_max_media_bytes() -> u64 {
    20 * 1024 * 1024
}

fn default_poll_interval_secs() -> u64 {
    60
}

fn default_sync_limit() -> u32 {
    1000
}

/// An API base must be an http(s) URL.
fn check_api_base(value: &str) -> Result<(), ConfigError> {
    if value.starts_with("https://") || value.starts_with("http://") {
        Ok(())
    } else {
        Err(ConfigError::new("api_base", "an http(s) URL"))
    }
}

impl WechatOaConfig {
    /// What serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = self.app_id.as_bytes();
        if !(id.len() == 18 && id.starts_with(b"wx") && id[2..].iter().all(u8::is_ascii_hexdigit)) {
            return Err(ConfigError::new(
                "app_id",
                "an AppID is `wx` followed by 16 hex digits",
            ));
        }
        if self.previous_encoding_aes_key.is_some() && self.encoding_aes_key.is_none() {
            return Err(ConfigError::new(
                "previous_encoding_aes_key",
                "only meaningful beside encoding_aes_key",
            ));
        }
        if self.lookup_unionid && self.app_secret.is_none() {
            return Err(ConfigError::new(
                "lookup_unionid",
                "needs app_secret (the lookup needs an access token)",
            ));
        }
        if self.request_timeout_secs == 0 {
            return Err(ConfigError::new(
                "request_timeout_secs",
                "must be at least 1",
            ));
        }
        if !(1..=4000).contains(&self.lookup_timeout_ms) {
            return Err(ConfigError::new(
                "lookup_timeout_ms",
                "1 to 4000: WeChat stops waiting for the answer after 5 seconds",
            ));
        }
        check_api_base(&self.api_base)
    }
}

impl WecomKfConfig {
    /// What serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.corp_id.is_empty() || !self.corp_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::new(
                "corp_id",
                "a WeCom corp id (letters and digits)",
            ));
        }
        for (i, kfid) in self.open_kfids.iter().enumerate() {
            if kfid.is_empty()
                || kfid.len() > 64
                || !kfid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(ConfigError::new(
                    format!("open_kfids[{i}]"),
                    "an open_kfid (letters, digits, `_`, `-`)",
                ));
            }
        }
        if !(1..=1000).contains(&self.sync_limit) {
            return Err(ConfigError::new(
                "sync_limit",
                "1 to 1000 (WeCom's maximum)",
            ));
        }
        if self.poll_interval_secs == 0 {
            return Err(ConfigError::new("poll_interval_secs", "must be at least 1"));
        }
        if self.request_timeout_secs == 0 {
            return Err(ConfigError::new(
                "request_timeout_secs",
                "must be at least 1",
            ));
        }
        check_api_base(&self.api_base)
    }
}
