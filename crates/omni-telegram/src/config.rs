//! The channel file of a Telegram channel.

use omni_connector::{ConfigError, SecretRef};
use serde::Deserialize;
use teloxide_core::types::AllowedUpdate;

/// The Bot API's own limit on files a bot can download (`getFile`).
pub const BOT_API_DOWNLOAD_LIMIT: u64 = 20 * 1024 * 1024;

/// How updates reach the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Telegram posts each update to `POST /webhooks/{id}`.
    Webhook,
    /// The daemon asks with `getUpdates`; no public URL needed.
    LongPolling,
}

/// Settings of one Telegram channel (its channel file, minus `id` and
/// `kind`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramChannelConfig {
    /// `webhook` or `long_polling`.
    pub mode: Mode,

    /// The bot token from @BotFather: `{ env = "NAME" }` or
    /// `{ file = "/path" }`. Needed for polling, files, replies and
    /// `set_webhook`.
    pub bot_token: SecretRef,

    /// Webhook mode: the secret Telegram sends in
    /// `X-Telegram-Bot-Api-Secret-Token` (1–256 characters of `A-Z`, `a-z`,
    /// `0-9`, `_`, `-`). Required unless `verify_secret_token = false`.
    #[serde(default)]
    pub secret_token: Option<SecretRef>,

    /// Webhook mode: check the secret-token header of every request (in
    /// constant time). Turning it off accepts updates from anyone; the
    /// daemon warns at every (re)load while it is off.
    #[serde(default = "default_true")]
    pub verify_secret_token: bool,

    /// Webhook mode: call `setWebhook` at start with this channel's public
    /// URL (`http.public_base_url` + `/webhooks/{id}`), the secret and
    /// `allowed_updates`.
    #[serde(default)]
    pub set_webhook: bool,

    /// Long-polling mode: call `deleteWebhook` at start, since Telegram
    /// refuses `getUpdates` while a webhook is set. Pending updates are
    /// kept.
    #[serde(default = "default_true")]
    pub delete_webhook: bool,

    /// Update kinds to ask Telegram for (`message`, `edited_message`, ...).
    #[serde(default = "default_allowed_updates")]
    pub allowed_updates: Vec<AllowedUpdate>,

    /// The Bot API server: the public one, or a self-hosted
    /// `telegram-bot-api` (which also lifts the 20 MB download limit).
    #[serde(default = "default_api_url")]
    pub api_url: String,

    /// Long polling: how long (seconds) one `getUpdates` waits for updates.
    #[serde(default = "default_poll_timeout_secs")]
    pub poll_timeout_secs: u32,

    /// Long polling: most updates per `getUpdates` (1–100); the offset moves
    /// after each durable batch.
    #[serde(default = "default_poll_limit")]
    pub poll_limit: u8,

    /// Bound (seconds) on every Bot API call other than the long poll
    /// itself, and on each file download.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,

    /// Long polling: after a failed call the wait doubles from 1 s up to
    /// this.
    #[serde(default = "default_max_backoff_secs")]
    pub max_backoff_secs: u64,

    /// Files larger than this are not downloaded; their attachment keeps
    /// the `file_id` (`tg-file:<file_id>`). At most 20 MiB on the public
    /// Bot API.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,

    /// Outbound: most messages per second across all chats (Telegram
    /// allows about 30).
    #[serde(default = "default_global_rate_per_sec")]
    pub global_rate_per_sec: u32,

    /// Outbound: least time (milliseconds) between two messages to one chat
    /// (Telegram allows about one per second).
    #[serde(default = "default_per_chat_interval_ms")]
    pub per_chat_interval_ms: u64,
}

impl TelegramChannelConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100).contains(&self.poll_limit) {
            return Err(ConfigError::new("poll_limit", "must be between 1 and 100"));
        }
        if self.poll_timeout_secs > 600 {
            return Err(ConfigError::new("poll_timeout_secs", "must be at most 600"));
        }
        for (key, value) in [
            ("request_timeout_secs", self.request_timeout_secs),
            ("max_backoff_secs", self.max_backoff_secs),
            ("max_file_bytes", self.max_file_bytes),
            ("global_rate_per_sec", u64::from(self.global_rate_per_sec)),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if self.allowed_updates.is_empty() {
            return Err(ConfigError::new(
                "allowed_updates",
                "must name at least one update kind",
            ));
        }
        if self.set_webhook && self.mode != Mode::Webhook {
            return Err(ConfigError::new(
                "set_webhook",
                "only applies to mode = \"webhook\"",
            ));
        }
        Ok(())
    }
}

/// Whether `token` is a secret Telegram accepts for `setWebhook`.
pub fn valid_secret_token(token: &[u8]) -> bool {
    (1..=256).contains(&token.len())
        && token
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
}

const fn default_true() -> bool {
    true
}

fn default_allowed_updates() -> Vec<AllowedUpdate> {
    vec![AllowedUpdate::Message, AllowedUpdate::EditedMessage]
}

fn default_api_url() -> String {
    "https://api.telegram.org".to_owned()
}

const fn default_poll_timeout_secs() -> u32 {
    30
}

const fn default_poll_limit() -> u8 {
    100
}

const fn default_request_timeout_secs() -> u64 {
    30
}

const fn default_max_backoff_secs() -> u64 {
    60
}

const fn default_max_file_bytes() -> u64 {
    BOT_API_DOWNLOAD_LIMIT
}

const fn default_global_rate_per_sec() -> u32 {
    30
}

const fn default_per_chat_interval_ms() -> u64 {
    1000
}
