//! The channel file of `kind = "webchat"`.

use omni_connector::{ConfigError, SecretRef};
use serde::Deserialize;

/// Settings of one web chat (`kind = "webchat"`), minus `id` and `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebchatConfig {
    /// Signs visitor tokens (`{ env = "NAME" }` or `{ file = "/path" }`):
    /// only the browser holding a visitor's token can resume that
    /// conversation. Changing it starts every visitor afresh.
    pub secret: SecretRef,

    /// The secret the business's backend signs logged-in customers'
    /// identities with (the "identity hash"). Without it every identity
    /// the page passes is an unverified claim.
    #[serde(default)]
    pub identity_secret: Option<SecretRef>,

    /// Refuse visitors whose identity is unsigned or wrongly signed (close
    /// code 4001), rather than taking it as an unverified claim. Needs
    /// `identity_secret`.
    #[serde(default)]
    pub require_identity: bool,

    /// Origins (`https://shop.example`) whose pages may open the chat. The
    /// daemon's own demo page (same origin as the socket) is always
    /// allowed. Others are refused with close code 4003.
    #[serde(default)]
    pub allowed_origins: Vec<String>,

    /// Largest frame (bytes) a browser may send; a larger one closes the
    /// connection with 1009.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,

    /// Longest message text, in characters (at most 4,000).
    #[serde(default = "default_max_text_chars")]
    pub max_text_chars: usize,

    /// Open chat connections at most, for the whole channel (close code
    /// 4009 beyond).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,

    /// Open connections (tabs) at most per visitor.
    #[serde(default = "default_max_connections_per_visitor")]
    pub max_connections_per_visitor: usize,

    /// Messages a connection may send per minute (an error frame beyond,
    /// and close code 4008 at twice the rate).
    #[serde(default = "default_messages_per_minute")]
    pub messages_per_minute: u32,

    /// A connection silent this long (seconds) is closed; the widget
    /// reconnects when the visitor acts.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,

    /// Messages of a visitor's conversation kept for the widget's history.
    #[serde(default = "default_history_messages")]
    pub history_messages: usize,

    /// Largest file (bytes) a visitor may upload (413 beyond; 1 KiB to
    /// 50 MiB). The body is never held beyond this.
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: usize,

    /// Kinds of file visitors may upload, judged by the file's content:
    /// any of `image/png`, `image/jpeg`, `image/gif`, `image/webp` and
    /// `application/pdf`. `[]` turns uploads off.
    #[serde(default = "default_attachment_types")]
    pub attachment_types: Vec<String>,

    /// Uploads in progress at most, for the whole channel (429 beyond):
    /// their memory is at most this times `max_attachment_bytes`.
    #[serde(default = "default_max_concurrent_uploads")]
    pub max_concurrent_uploads: usize,

    /// Messages all visitors behind one IP address may send per minute
    /// together (an error frame beyond): one machine opening many
    /// connections is held to this, whatever each connection's own limit.
    #[serde(default = "default_messages_per_minute_per_address")]
    pub messages_per_minute_per_address: u32,

    /// The request header that holds the visitor's IP address when the
    /// daemon sits behind a reverse proxy (`x-real-ip`, or
    /// `x-forwarded-for`, of which the last address, the one the proxy
    /// added, is taken). Only set it behind a proxy that overwrites the
    /// header, or visitors could choose their own address. Unset: the
    /// address the connection comes from.
    #[serde(default)]
    pub client_address_header: Option<String>,

    /// Email a reply the visitor has not read when they are away, to the
    /// address they left (the widget's form, or a signed-in email
    /// identity). Unset: replies wait in the widget only.
    #[serde(default)]
    pub offline_email: Option<OfflineEmailConfig>,
}

/// `[offline_email]`: replies a visitor did not see, sent on by email.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineEmailConfig {
    /// The id of the email channel (`kind = "email"`) that sends them. A
    /// channel that does not exist or cannot send is reported on the
    /// dead-letter topic (`unknown_channel`, `outbound_not_supported`).
    pub channel: String,
    /// How long (seconds) a reply that found no open tab may stay unread
    /// before it is emailed. It is emailed once; a reply the visitor reads
    /// in time is not emailed.
    #[serde(default = "default_offline_after_secs")]
    pub after_secs: u64,
    /// The email's subject.
    #[serde(default = "default_offline_subject")]
    pub subject: String,
}

const fn default_max_message_bytes() -> usize {
    16 * 1024
}
const fn default_max_text_chars() -> usize {
    4000
}
const fn default_max_connections() -> usize {
    10_000
}
const fn default_max_connections_per_visitor() -> usize {
    8
}
const fn default_messages_per_minute() -> u32 {
    30
}
const fn default_idle_timeout_secs() -> u64 {
    600
}
const fn default_history_messages() -> usize {
    100
}
const fn default_max_attachment_bytes() -> usize {
    10 * 1024 * 1024
}
/// Spelled out, not taken from [`crate::upload::MEDIA_TYPES`], so the
/// generated configuration reference shows the list (a test keeps the two
/// equal).
fn default_attachment_types() -> Vec<String> {
    vec![
        "image/png".to_owned(),
        "image/jpeg".to_owned(),
        "image/gif".to_owned(),
        "image/webp".to_owned(),
        "application/pdf".to_owned(),
    ]
}
const fn default_max_concurrent_uploads() -> usize {
    8
}
const fn default_messages_per_minute_per_address() -> u32 {
    120
}
const fn default_offline_after_secs() -> u64 {
    300
}
fn default_offline_subject() -> String {
    "Reply to your chat".to_owned()
}

impl WebchatConfig {
    /// What serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.require_identity && self.identity_secret.is_none() {
            return Err(ConfigError::new(
                "require_identity",
                "needs identity_secret (the key identity hashes are checked with)",
            ));
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let ok = is_origin(origin);
            if !ok {
                return Err(ConfigError::new(
                    format!("allowed_origins[{i}]"),
                    "an origin: scheme and host, optionally a port, no path (https://shop.example)",
                ));
            }
        }
        let ranges: [(&str, usize, usize, usize); 5] = [
            (
                "max_message_bytes",
                self.max_message_bytes,
                256,
                1024 * 1024,
            ),
            ("max_text_chars", self.max_text_chars, 1, 4000),
            ("max_connections", self.max_connections, 1, 1_000_000),
            (
                "max_connections_per_visitor",
                self.max_connections_per_visitor,
                1,
                1000,
            ),
            ("history_messages", self.history_messages, 0, 10_000),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::new(key, format!("{min} to {max}")));
            }
        }
        let uploads: [(&str, usize, usize, usize); 2] = [
            (
                "max_attachment_bytes",
                self.max_attachment_bytes,
                1024,
                50 * 1024 * 1024,
            ),
            (
                "max_concurrent_uploads",
                self.max_concurrent_uploads,
                1,
                256,
            ),
        ];
        for (key, value, min, max) in uploads {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::new(key, format!("{min} to {max}")));
            }
        }
        for (i, value) in self.attachment_types.iter().enumerate() {
            if crate::upload::media_type(value).is_none() {
                return Err(ConfigError::new(
                    format!("attachment_types[{i}]"),
                    format!("one of {}", crate::upload::MEDIA_TYPES.join(", ")),
                ));
            }
        }
        if self.messages_per_minute == 0 {
            return Err(ConfigError::new(
                "messages_per_minute",
                "must be at least 1",
            ));
        }
        if self.idle_timeout_secs == 0 {
            return Err(ConfigError::new("idle_timeout_secs", "must be at least 1"));
        }
        if self.messages_per_minute_per_address < self.messages_per_minute {
            return Err(ConfigError::new(
                "messages_per_minute_per_address",
                "at least messages_per_minute (one visitor alone may use all of it)",
            ));
        }
        if let Some(header) = &self.client_address_header
            && http::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            return Err(ConfigError::new(
                "client_address_header",
                "a header name (x-real-ip, x-forwarded-for)",
            ));
        }
        if let Some(offline) = &self.offline_email {
            if offline.channel.trim().is_empty() {
                return Err(ConfigError::new(
                    "offline_email.channel",
                    "the id of an email channel",
                ));
            }
            if !(1..=7 * 24 * 3600).contains(&offline.after_secs) {
                return Err(ConfigError::new(
                    "offline_email.after_secs",
                    "1 to 604800 (a week)",
                ));
            }
            let subject = offline.subject.trim();
            if subject.is_empty()
                || subject.chars().count() > 200
                || subject.contains(char::is_control)
            {
                return Err(ConfigError::new(
                    "offline_email.subject",
                    "1 to 200 characters on one line",
                ));
            }
        }
        Ok(())
    }
}

/// Whether `origin` is `scheme://host[:port]` with an http(s) scheme.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains('/')
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use omni_connector::parse_settings;

    use super::*;

    fn parse(text: &str) -> Result<WebchatConfig, ConfigError> {
        let config: WebchatConfig = parse_settings(toml::from_str(text).unwrap())?;
        config.validate().map(|()| config)
    }

    #[test]
    fn the_example_channel_file_is_valid() {
        let config: WebchatConfig = omni_connector::testing::example_channel("webchat.toml");
        config.validate().unwrap();
        assert_eq!(config.allowed_origins, ["https://shop.example"]);
    }

    #[test]
    fn mistakes_name_their_key() {
        let base = "secret = { env = \"S\" }\n";
        let key = |text: &str| parse(&format!("{base}{text}")).unwrap_err().key;
        assert_eq!(key("require_identity = true"), "require_identity");
        assert_eq!(
            key("allowed_origins = [\"shop.example\"]"),
            "allowed_origins[0]"
        );
        assert_eq!(
            key("allowed_origins = [\"https://a.example\", \"https://b.example/path\"]"),
            "allowed_origins[1]"
        );
        assert_eq!(key("max_text_chars = 5000"), "max_text_chars");
        assert_eq!(key("messages_per_minute = 0"), "messages_per_minute");
        assert_eq!(key("max_conections = 5"), "max_conections");
        assert_eq!(
            key("messages_per_minute = 50\nmessages_per_minute_per_address = 40"),
            "messages_per_minute_per_address"
        );
        assert_eq!(
            key("client_address_header = \"x real ip\""),
            "client_address_header"
        );
        assert_eq!(
            key("[offline_email]\nchannel = \"mail\"\nafter_secs = 0"),
            "offline_email.after_secs"
        );
        assert_eq!(
            key("[offline_email]\nchannel = \"mail\"\nsubject = \"a\\nb\""),
            "offline_email.subject"
        );
        assert_eq!(
            key("[offline_email]\nchanel = \"mail\""),
            "offline_email.chanel"
        );
        let offline = parse(&format!("{base}[offline_email]\nchannel = \"mail\"\n"))
            .unwrap()
            .offline_email
            .unwrap();
        assert_eq!(
            (offline.after_secs, offline.subject.as_str()),
            (300, "Reply to your chat")
        );
        assert!(
            parse(&format!(
                "{base}allowed_origins = [\"http://localhost:8080\"]"
            ))
            .is_ok()
        );
    }

    #[test]
    fn attachment_keys_have_safe_defaults_and_bounds() {
        let base = "secret = { env = \"S\" }\n";
        let config = parse(base).unwrap();
        assert_eq!(config.max_attachment_bytes, 10_485_760);
        assert_eq!(config.max_concurrent_uploads, 8);
        assert_eq!(config.attachment_types, crate::upload::MEDIA_TYPES);
        let key = |text: &str| parse(&format!("{base}{text}")).unwrap_err().key;
        assert_eq!(key("max_attachment_bytes = 1023"), "max_attachment_bytes");
        assert_eq!(
            key("max_attachment_bytes = 52428801"),
            "max_attachment_bytes"
        );
        assert_eq!(key("max_concurrent_uploads = 0"), "max_concurrent_uploads");
        assert_eq!(
            key("attachment_types = [\"image/png\", \"image/svg+xml\"]"),
            "attachment_types[1]"
        );
        assert_eq!(
            key("attachment_types = [\"IMAGE/PNG\"]"),
            "attachment_types[0]"
        );
        let narrowed = parse(&format!(
            "{base}attachment_types = [\"application/pdf\"]\nmax_attachment_bytes = 52428800"
        ))
        .unwrap();
        assert_eq!(narrowed.attachment_types, ["application/pdf"]);
        assert!(parse(&format!("{base}attachment_types = []")).is_ok());
    }
}
