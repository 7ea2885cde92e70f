//! The email channel's file: an `[imap]` table for customer mail in, an
//! `[smtp]` table for replies out, and `[limits]` for hostile mail.

use std::path::PathBuf;

use omni_connector::{ConfigError, SecretRef};
use serde::Deserialize;

use crate::{parse::ParseLimits, smtp::SmtpSettings};

/// Settings of one email channel (its channel file, minus `id` and `kind`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailChannelConfig {
    /// Where customer mail is pulled from. Without it the channel only
    /// sends.
    #[serde(default)]
    pub imap: Option<ImapSettings>,
    /// Where replies are sent through. Without it the channel only
    /// receives.
    #[serde(default)]
    pub smtp: Option<SmtpSettings>,
    /// Bounds on what one message may cost to parse.
    #[serde(default)]
    pub limits: LimitSettings,
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (IMAPS, port 993).
    Tls,
    /// Plain connection upgraded with STARTTLS before login (port 143).
    /// Refuses to log in when the server does not offer STARTTLS.
    Starttls,
    /// No encryption. Only accepted for loopback hosts (a local test
    /// server or a sidecar), since the password would travel in clear.
    None,
}

/// Where and how to pull mail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapSettings {
    /// Server host name; also the name its TLS certificate must carry.
    pub host: String,
    /// Server port; default 993 for `tls`, 143 otherwise.
    #[serde(default)]
    pub port: Option<u16>,
    /// `tls` (default), `starttls` or `none`.
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// PEM file of extra CA certificates to trust (a private CA); the
    /// Mozilla roots are always trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Login name.
    pub username: String,
    /// Password for `LOGIN`. Exactly one of `password` and
    /// `oauth2_token` is required.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// OAuth 2.0 access token for `AUTHENTICATE XOAUTH2` (Gmail,
    /// Microsoft 365). Read again at every connection, so a token file
    /// refreshed by a sidecar is picked up without a reload.
    #[serde(default)]
    pub oauth2_token: Option<SecretRef>,
    /// Mailboxes to ingest, each on its own connection.
    #[serde(default = "default_mailboxes")]
    pub mailboxes: Vec<String>,
    /// Where a mailbox without a checkpoint starts: `"all"` (default) or a
    /// date `"YYYY-MM-DD"` (messages the server received on or after it).
    #[serde(default = "default_start_from")]
    pub start_from: String,
    /// Messages fetched per round trip while catching up; the checkpoint
    /// advances after each batch is durable.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Waits with IDLE when the server supports it. Off, or without server
    /// support, the mailbox is polled every `poll_interval_secs`.
    #[serde(default = "default_true")]
    pub idle: bool,
    /// IDLE is ended and re-issued after this many seconds (RFC 2177 asks
    /// for less than 29 minutes; many NATs drop idle flows sooner).
    #[serde(default = "default_idle_refresh_secs")]
    pub idle_refresh_secs: u64,
    /// Polling interval without IDLE.
    #[serde(default = "default_poll_interval_secs")]
    pub poll_interval_secs: u64,
    /// Upper bound on any single command, the connection and the login; a
    /// server that does not answer in time is reconnected to.
    #[serde(default = "default_command_timeout_secs")]
    pub command_timeout_secs: u64,
    /// Longest wait between reconnection attempts (the wait doubles from
    /// one second up to this).
    #[serde(default = "default_max_backoff_secs")]
    pub max_backoff_secs: u64,
}

/// Limits on one message; see [`ParseLimits`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest message fetched and parsed; larger ones become dead-letter
    /// records carrying their header only.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Deepest MIME nesting accepted.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Most MIME parts accepted.
    #[serde(default = "default_max_parts")]
    pub max_parts: usize,
    /// Largest attachment stored; larger ones are listed without content.
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: default_max_message_bytes(),
            max_depth: default_max_depth(),
            max_parts: default_max_parts(),
            max_attachment_bytes: default_max_attachment_bytes(),
        }
    }
}

impl LimitSettings {
    pub fn parse_limits(&self) -> ParseLimits {
        ParseLimits {
            max_message_bytes: self.max_message_bytes,
            max_depth: self.max_depth,
            max_parts: self.max_parts,
            max_attachment_bytes: self.max_attachment_bytes,
            ..ParseLimits::DEFAULT
        }
    }
}

/// The first message a mailbox without a checkpoint ingests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    All,
    /// Year, month (1-12), day.
    Since(u16, u8, u8),
}

impl StartFrom {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "all" {
            return Ok(Self::All);
        }
        let bad = || format!("expected \"all\" or a date YYYY-MM-DD, got {text:?}");
        let mut parts = text.split('-');
        let (Some(y), Some(m), Some(d), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return Err(bad());
        }
        let (y, m, d) = (
            y.parse().map_err(|_| bad())?,
            m.parse().map_err(|_| bad())?,
            d.parse().map_err(|_| bad())?,
        );
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return Err(bad());
        }
        Ok(Self::Since(y, m, d))
    }

    /// The IMAP SEARCH criterion (`SINCE 1-Feb-2026`), if any.
    pub fn search_criterion(self) -> Option<String> {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        match self {
            Self::All => None,
            Self::Since(y, m, d) => Some(format!("SINCE {d}-{}-{y}", MONTHS[m as usize - 1])),
        }
    }
}

impl ImapSettings {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Tls => 993,
            TlsMode::Starttls | TlsMode::None => 143,
        })
    }

    /// Checks what serde cannot; errors name their key under `imap.`.
    pub fn validate(&self) -> Result<StartFrom, ConfigError> {
        let key = |k: &str| format!("imap.{k}");
        if self.host.trim().is_empty() {
            return Err(ConfigError::new(key("host"), "must not be empty"));
        }
        if self.tls == TlsMode::None && !is_loopback(&self.host) {
            return Err(ConfigError::new(
                key("tls"),
                "`none` is only allowed for loopback hosts (localhost, 127.0.0.1, ::1); use `tls` or `starttls`",
            ));
        }
        match (&self.password, &self.oauth2_token) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    key("oauth2_token"),
                    "set either `password` or `oauth2_token`, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    key("password"),
                    "one of `password` or `oauth2_token` is required",
                ));
            }
            _ => {}
        }
        if self.mailboxes.is_empty() {
            return Err(ConfigError::new(
                key("mailboxes"),
                "at least one mailbox is required",
            ));
        }
        for (i, mailbox) in self.mailboxes.iter().enumerate() {
            if mailbox.is_empty()
                || mailbox
                    .chars()
                    .any(|c| c.is_control() || c == '"' || c == '\\')
            {
                return Err(ConfigError::new(
                    format!("imap.mailboxes[{i}]"),
                    "mailbox names must be non-empty, without quotes, backslashes or control characters",
                ));
            }
            if self.mailboxes[..i].contains(mailbox) {
                return Err(ConfigError::new(
                    format!("imap.mailboxes[{i}]"),
                    format!("mailbox {mailbox:?} is listed twice"),
                ));
            }
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(ConfigError::new(
                key("batch_size"),
                "must be between 1 and 10000",
            ));
        }
        if !(10..=1740).contains(&self.idle_refresh_secs) {
            return Err(ConfigError::new(
                key("idle_refresh_secs"),
                "must be between 10 and 1740 (29 minutes)",
            ));
        }
        for (name, value) in [
            ("poll_interval_secs", self.poll_interval_secs),
            ("command_timeout_secs", self.command_timeout_secs),
            ("max_backoff_secs", self.max_backoff_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key(name), "must be at least 1"));
            }
        }
        StartFrom::parse(&self.start_from)
            .map_err(|reason| ConfigError::new(key("start_from"), reason))
    }
}

pub(crate) fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

const fn default_tls() -> TlsMode {
    TlsMode::Tls
}
fn default_mailboxes() -> Vec<String> {
    vec!["INBOX".to_owned()]
}
fn default_start_from() -> String {
    "all".to_owned()
}
const fn default_batch_size() -> u32 {
    100
}
const fn default_true() -> bool {
    true
}
const fn default_idle_refresh_secs() -> u64 {
    600
}
const fn default_poll_interval_secs() -> u64 {
    60
}
const fn default_command_timeout_secs() -> u64 {
    60
}
const fn default_max_backoff_secs() -> u64 {
    300
}
const fn default_max_message_bytes() -> usize {
    ParseLimits::DEFAULT.max_message_bytes
}
const fn default_max_depth() -> usize {
    ParseLimits::DEFAULT.max_depth
}
const fn default_max_parts() -> usize {
    ParseLimits::DEFAULT.max_parts
}
const fn default_max_attachment_bytes() -> usize {
    ParseLimits::DEFAULT.max_attachment_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imap(extra: &str) -> Result<StartFrom, ConfigError> {
        let text = format!("[imap]\nhost = \"imap.example.com\"\nusername = \"support\"\n{extra}");
        let config: EmailChannelConfig =
            omni_connector::parse_settings(toml::from_str(&text).unwrap())?;
        config.imap.unwrap().validate()
    }

    #[test]
    fn validates_with_errors_that_name_the_key() {
        assert_eq!(imap("password = { env = \"P\" }"), Ok(StartFrom::All));
        let cases = [
            ("", "imap.password"),
            (
                "password = { env = \"P\" }\noauth2_token = { env = \"T\" }",
                "imap.oauth2_token",
            ),
            ("password = { env = \"P\" }\ntls = \"none\"", "imap.tls"),
            (
                "password = { env = \"P\" }\nmailboxes = []",
                "imap.mailboxes",
            ),
            (
                "password = { env = \"P\" }\nmailboxes = [\"INBOX\", \"INBOX\"]",
                "imap.mailboxes[1]",
            ),
            (
                "password = { env = \"P\" }\nmailboxes = [\"a\\\"b\"]",
                "imap.mailboxes[0]",
            ),
            (
                "password = { env = \"P\" }\nidle_refresh_secs = 1800",
                "imap.idle_refresh_secs",
            ),
            (
                "password = { env = \"P\" }\nstart_from = \"2026-13-01\"",
                "imap.start_from",
            ),
            (
                "password = { env = \"P\" }\nstart_from = \"yesterday\"",
                "imap.start_from",
            ),
            (
                "password = { env = \"P\" }\nbatch_size = 0",
                "imap.batch_size",
            ),
            ("password = { env = \"P\" }\nidel = true", "imap.idel"),
            ("password = { env = \"P\" }\ntls = \"ssl\"", "imap.tls"),
        ];
        for (extra, key) in cases {
            let err = imap(extra).expect_err(extra);
            assert_eq!(err.key, key, "{extra}: {err}");
        }
    }

    #[test]
    fn start_from_becomes_a_search_criterion() {
        assert_eq!(StartFrom::parse("all").unwrap().search_criterion(), None);
        assert_eq!(
            StartFrom::parse("2026-02-01")
                .unwrap()
                .search_criterion()
                .as_deref(),
            Some("SINCE 1-Feb-2026")
        );
    }

    #[test]
    fn none_is_only_for_loopback() {
        for host in ["localhost", "127.0.0.1", "::1", "[::1]"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["imap.example.com", "10.0.0.1", "127.0.0.1.nip.io"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
