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
        if self.messages_per_minute == 0 {
            return Err(ConfigError::new(
                "messages_per_minute",
                "must be at least 1",
            ));
        }
        if self.idle_timeout_secs == 0 {
            return Err(ConfigError::new("idle_timeout_secs", "must be at least 1"));
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
        assert!(
            parse(&format!(
                "{base}allowed_origins = [\"http://localhost:8080\"]"
            ))
            .is_ok()
        );
    }
}
