//! The `[smtp]` table of an email channel: where replies are submitted.

use std::path::PathBuf;

use omni_connector::{ConfigError, SecretRef};
use serde::Deserialize;

use crate::config::is_loopback;

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS before anything else is
    /// sent (submission, port 587). Refuses to send when the relay does not
    /// offer STARTTLS.
    Starttls,
    /// TLS from the first byte (submissions, port 465).
    Tls,
    /// No encryption. Only accepted for loopback hosts (a local relay or
    /// test server), since credentials and mail would travel in clear.
    None,
}

impl SmtpTls {
    /// The conventional port of the mode.
    pub const fn default_port(self) -> u16 {
        match self {
            Self::Starttls => 587,
            Self::Tls => 465,
            Self::None => 25,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Starttls => "starttls",
            Self::Tls => "tls",
            Self::None => "none",
        }
    }
}

/// Where and how replies are sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// Relay host name; also the name its TLS certificate must carry.
    pub host: String,
    /// Relay port; default 587 for `starttls`, 465 for `tls`, 25 for
    /// `none`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `tls` (implicit TLS) or `none` (loopback
    /// hosts only).
    #[serde(default = "default_tls")]
    pub tls: SmtpTls,
    /// PEM file of extra CA certificates to trust (a private CA); the
    /// Mozilla roots are always trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Login name for SMTP AUTH (PLAIN or LOGIN). Without it the relay is
    /// used unauthenticated (a local relay that trusts this host).
    #[serde(default)]
    pub username: Option<String>,
    /// Password for `username`: `{ env = "NAME" }` or `{ file = "PATH" }`.
    /// Read when the channel is built (start, reload, SIGHUP).
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// The business address replies are sent from, with an optional
    /// display name: `"Acme Support <support@acme.example>"`. Also the
    /// envelope sender (`MAIL FROM`).
    pub from: String,
    /// Right-hand side of the Message-IDs we generate
    /// (`<event id@domain>`); default: the domain of `from`.
    #[serde(default)]
    pub message_id_domain: Option<String>,
    /// Upper bound (seconds) on connecting and on each SMTP reply; a whole
    /// delivery is abandoned (and retried) after four times this.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Upper bound on the total size (bytes, before base64 adds a third) of
    /// one reply's attachments; a reply over it fails. Default 20 MiB. `0`
    /// refuses every attachment.
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: u64,
}

const fn default_tls() -> SmtpTls {
    SmtpTls::Starttls
}

const fn default_timeout_secs() -> u64 {
    30
}

const fn default_max_attachment_bytes() -> u64 {
    20 * 1024 * 1024
}

/// Largest `max_attachment_bytes` accepted (256 MiB): the files of a reply
/// are held in memory while it is sent.
pub(super) const MAX_ATTACHMENT_BYTES_LIMIT: u64 = 256 * 1024 * 1024;

/// Longest `timeout_secs` accepted (an hour): beyond that a silent relay
/// would hold the outbound queue for no good reason.
const MAX_TIMEOUT_SECS: u64 = 3600;

impl SmtpSettings {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.tls.default_port())
    }

    /// Checks what serde cannot; errors name their key under `smtp.`.
    /// Reading `ca_file` and `password` is left to the sender, which needs
    /// their contents anyway.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("smtp.{k}");
        let host = self.host.trim();
        if host.is_empty() {
            return Err(ConfigError::new(key("host"), "must not be empty"));
        }
        if host != self.host
            || self
                .host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::new(
                key("host"),
                "must be a host name or address without spaces",
            ));
        }
        if self.tls == SmtpTls::None && !is_loopback(&self.host) {
            return Err(ConfigError::new(
                key("tls"),
                "`none` is only allowed for loopback hosts (localhost, 127.0.0.1, ::1); use `starttls` or `tls`",
            ));
        }
        if self.port == Some(0) {
            return Err(ConfigError::new(key("port"), "must be between 1 and 65535"));
        }
        match (&self.username, &self.password) {
            (Some(username), Some(_)) => {
                if username.is_empty() || username.chars().any(char::is_control) {
                    return Err(ConfigError::new(
                        key("username"),
                        "must be non-empty, without control characters",
                    ));
                }
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    key("password"),
                    "`username` is set, so `password` is required",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    key("username"),
                    "`password` is set, so `username` is required",
                ));
            }
            (None, None) => {}
        }
        if !(1..=MAX_TIMEOUT_SECS).contains(&self.timeout_secs) {
            return Err(ConfigError::new(
                key("timeout_secs"),
                format!("must be between 1 and {MAX_TIMEOUT_SECS}"),
            ));
        }
        if self.max_attachment_bytes > MAX_ATTACHMENT_BYTES_LIMIT {
            return Err(ConfigError::new(
                key("max_attachment_bytes"),
                format!("must be at most {MAX_ATTACHMENT_BYTES_LIMIT}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SmtpSettings, ConfigError> {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            smtp: SmtpSettings,
        }
        let file: File = omni_connector::parse_settings(toml::from_str(text).unwrap())?;
        file.smtp.validate()?;
        Ok(file.smtp)
    }

    const BASE: &str =
        "[smtp]\nhost = \"smtp.acme.example\"\nfrom = \"Acme <support@acme.example>\"\n";

    #[test]
    fn defaults_follow_the_tls_mode() {
        let settings = parse(BASE).unwrap();
        assert_eq!(settings.tls, SmtpTls::Starttls);
        assert_eq!(settings.port(), 587);
        assert_eq!(settings.timeout_secs, 30);
        assert_eq!(settings.max_attachment_bytes, 20 * 1024 * 1024);
        assert_eq!(parse(&format!("{BASE}tls = \"tls\"")).unwrap().port(), 465);
        let local = "[smtp]\nhost = \"127.0.0.1\"\nfrom = \"s@acme.example\"\ntls = \"none\"";
        assert_eq!(parse(local).unwrap().port(), 25);
        assert_eq!(parse(&format!("{BASE}port = 2525")).unwrap().port(), 2525);
    }

    #[test]
    fn errors_name_their_key() {
        let cases = [
            ("tls = \"none\"", "smtp.tls"),
            ("tls = \"ssl\"", "smtp.tls"),
            ("username = \"u\"", "smtp.password"),
            ("password = { env = \"P\" }", "smtp.username"),
            ("timeout_secs = 0", "smtp.timeout_secs"),
            ("port = 0", "smtp.port"),
            (
                "max_attachment_bytes = 268435457",
                "smtp.max_attachment_bytes",
            ),
            ("hots = \"x\"", "smtp.hots"),
        ];
        for (extra, key) in cases {
            let err = parse(&format!("{BASE}{extra}")).expect_err(extra);
            assert_eq!(err.key, key, "{extra}: {err}");
        }
        let err = parse("[smtp]\nhost = \"\"\nfrom = \"a@b.example\"").unwrap_err();
        assert_eq!(err.key, "smtp.host");
        let err = parse("[smtp]\nhost = \"h.example\"").unwrap_err();
        assert!(err.reason.contains("missing field `from`"), "{err}");
    }
}
