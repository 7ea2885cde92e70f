//! The channel files of the three kinds.
//!
//! Each Meta app has one callback URL per product, so one channel file
//! serves one phone number, Page or Instagram account; updates for another
//! account reaching its URL are dead-lettered with the account's id rather
//! than taken for this one's.

use omni_connector::{ConfigError, SecretRef};
use serde::Deserialize;

/// Settings of one WhatsApp Business Cloud API phone number
/// (`kind = "whatsapp"`), minus `id` and `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappConfig {
    /// The phone number's id in WhatsApp Manager (digits, not the number
    /// itself). Replies are sent from it; webhook changes for another
    /// number of the same business account are dead-lettered.
    pub phone_number_id: String,

    /// The Meta app's App Secret: every POST's `X-Hub-Signature-256` is an
    /// HMAC-SHA256 of the raw body with it. `{ env = "NAME" }` or
    /// `{ file = "/path" }`.
    pub app_secret: SecretRef,

    /// The App Secret before the last reset, still accepted while Meta's
    /// in-flight retries (up to 7 days) are signed with it. Remove it once
    /// the rotation is done.
    #[serde(default)]
    pub previous_app_secret: Option<SecretRef>,

    /// The Verify Token typed into the app's webhook settings; Meta's URL
    /// check (`GET` with `hub.verify_token`) must present it.
    pub verify_token: SecretRef,

    /// A system user access token with `whatsapp_business_messaging`:
    /// needed for replies and media downloads. Without it the channel only
    /// receives, and files keep WhatsApp's media id.
    #[serde(default)]
    pub access_token: Option<SecretRef>,

    /// The approved template a reply is sent as outside the 24-hour
    /// customer-service window. Without one, such a reply is rejected.
    #[serde(default)]
    pub template: Option<TemplateConfig>,

    /// Check `X-Hub-Signature-256` on every POST (in constant time).
    /// Turning it off accepts messages from anyone; the daemon warns at
    /// every (re)load while it is off.
    #[serde(default = "default_true")]
    pub verify_signature: bool,

    /// The Graph API's base URL. Tests point it at a local server.
    #[serde(default = "default_graph_base")]
    pub graph_base: String,

    /// The Graph API version in every request path.
    #[serde(default = "default_api_version")]
    pub api_version: String,

    /// Bound (seconds) on each Graph API call and each file download.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,

    /// Largest file (bytes) downloaded into the attachment store; a larger
    /// one keeps its media id. WhatsApp's own limit is 100 MB (documents).
    #[serde(default = "default_max_media_bytes")]
    pub max_media_bytes: u64,
}

/// An approved WhatsApp message template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    /// The template's name, as approved in WhatsApp Manager.
    pub name: String,
    /// The template's language code (`en_US`, `fa`, `ar`).
    pub language: String,
    /// Whether the template's body takes the reply's text as its one
    /// parameter (`{{1}}`). A reply may instead carry its parameters as a
    /// JSON array of strings in the metadata key
    /// `whatsapp.template_parameters`.
    #[serde(default = "default_true")]
    pub text_parameter: bool,
}

/// Settings of one Facebook Page's Messenger inbox (`kind = "messenger"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessengerConfig {
    /// The Page's id. Customers' page-scoped ids (PSIDs) are scoped by it;
    /// updates for another Page are dead-lettered.
    pub page_id: String,

    /// The Meta app's App Secret (see `whatsapp`).
    pub app_secret: SecretRef,

    /// The App Secret before the last reset, accepted during rotation.
    #[serde(default)]
    pub previous_app_secret: Option<SecretRef>,

    /// The Verify Token of the app's webhook settings.
    pub verify_token: SecretRef,

    /// A Page access token with `pages_messaging`: needed for replies.
    #[serde(default)]
    pub access_token: Option<SecretRef>,

    /// The app's id. Omnid's own replies are on the timeline already, and
    /// their echoes are recognised by the message ids the Send API
    /// returned; with the app id, an echo that arrives before that answer
    /// is recognised too. Echoes of messages sent from the Page inbox or
    /// other apps are recorded as outbound messages either way.
    #[serde(default)]
    pub app_id: Option<String>,

    /// Allow replies outside the 24-hour window, up to 7 days after the
    /// customer's last message, tagged `HUMAN_AGENT` (the app needs Meta's
    /// Human Agent permission). Off: such replies are rejected.
    #[serde(default)]
    pub human_agent_tag: bool,

    /// Check `X-Hub-Signature-256` on every POST (in constant time).
    #[serde(default = "default_true")]
    pub verify_signature: bool,

    /// The Graph API's base URL.
    #[serde(default = "default_graph_base")]
    pub graph_base: String,

    /// The Graph API version in every request path.
    #[serde(default = "default_api_version")]
    pub api_version: String,

    /// Bound (seconds) on each Graph API call and each file download.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,

    /// Largest file (bytes) downloaded into the attachment store; a larger
    /// one keeps its URL (which Meta expires after a while).
    #[serde(default = "default_max_media_bytes")]
    pub max_media_bytes: u64,
}

/// Settings of one Instagram professional account's Direct messages
/// (`kind = "instagram"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstagramConfig {
    /// The Instagram professional account's id (the `entry[].id` of its
    /// webhooks). Customers' Instagram-scoped ids (IGSIDs) are scoped by
    /// it; updates for another account are dead-lettered.
    pub account_id: String,

    /// The Meta app's App Secret (see `whatsapp`).
    pub app_secret: SecretRef,

    /// The App Secret before the last reset, accepted during rotation.
    #[serde(default)]
    pub previous_app_secret: Option<SecretRef>,

    /// The Verify Token of the app's webhook settings.
    pub verify_token: SecretRef,

    /// An access token with `instagram_manage_messages` (the linked Page's
    /// token): needed for replies.
    #[serde(default)]
    pub access_token: Option<SecretRef>,

    /// The app's id, to recognise echoes of Omnid's own replies (see
    /// `messenger`).
    #[serde(default)]
    pub app_id: Option<String>,

    /// Allow `HUMAN_AGENT` replies up to 7 days after the customer's last
    /// message (see `messenger`).
    #[serde(default)]
    pub human_agent_tag: bool,

    /// Check `X-Hub-Signature-256` on every POST (in constant time).
    #[serde(default = "default_true")]
    pub verify_signature: bool,

    /// The Graph API's base URL.
    #[serde(default = "default_graph_base")]
    pub graph_base: String,

    /// The Graph API version in every request path.
    #[serde(default = "default_api_version")]
    pub api_version: String,

    /// Bound (seconds) on each Graph API call and each file download.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,

    /// Largest file (bytes) downloaded into the attachment store.
    #[serde(default = "default_max_media_bytes")]
    pub max_media_bytes: u64,
}

const fn default_true() -> bool {
    true
}
fn default_graph_base() -> String {
    "https://graph.facebook.com".to_owned()
}
fn default_api_version() -> String {
    "v23.0".to_owned()
}
const fn default_request_timeout_secs() -> u64 {
    10
}
const fn default_max_media_bytes() -> u64 {
    100 * 1024 * 1024
}

/// What serde cannot check of the settings all three kinds share.
pub(crate) fn check_common(
    account_key: &str,
    account_id: &str,
    graph_base: &str,
    api_version: &str,
    request_timeout_secs: u64,
) -> Result<(), ConfigError> {
    if account_id.is_empty()
        || account_id.len() > 32
        || !account_id.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(ConfigError::new(
            account_key,
            "Meta's account ids are digits (copy it from the app dashboard)",
        ));
    }
    let url = reqwest::Url::parse(graph_base)
        .map_err(|e| ConfigError::new("graph_base", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::new("graph_base", "an http(s) URL with a host"));
    }
    let version = api_version.strip_prefix('v').unwrap_or("");
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(ConfigError::new(
            "api_version",
            "a Graph API version such as \"v23.0\"",
        ));
    }
    if request_timeout_secs == 0 {
        return Err(ConfigError::new(
            "request_timeout_secs",
            "must be at least 1",
        ));
    }
    Ok(())
}

impl WhatsappConfig {
    /// What serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_common(
            "phone_number_id",
            &self.phone_number_id,
            &self.graph_base,
            &self.api_version,
            self.request_timeout_secs,
        )?;
        if let Some(template) = &self.template {
            if template.name.is_empty()
                || !template
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(ConfigError::new(
                    "template.name",
                    "a template name (lowercase letters, digits and `_`)",
                ));
            }
            if template.language.is_empty()
                || template.language.len() > 16
                || !template
                    .language
                    .bytes()
                    .all(|b| b.is_ascii_alphabetic() || b == b'_')
            {
                return Err(ConfigError::new(
                    "template.language",
                    "a language code such as \"en_US\" or \"fa\"",
                ));
            }
            if self.access_token.is_none() {
                return Err(ConfigError::new(
                    "template",
                    "templates are replies, which need access_token",
                ));
            }
        }
        Ok(())
    }
}

impl MessengerConfig {
    /// What serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_common(
            "page_id",
            &self.page_id,
            &self.graph_base,
            &self.api_version,
            self.request_timeout_secs,
        )?;
        check_app_id(self.app_id.as_deref())
    }
}

impl InstagramConfig {
    /// What serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_common(
            "account_id",
            &self.account_id,
            &self.graph_base,
            &self.api_version,
            self.request_timeout_secs,
        )?;
        check_app_id(self.app_id.as_deref())
    }
}

fn check_app_id(app_id: Option<&str>) -> Result<(), ConfigError> {
    match app_id {
        Some(id) if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) => Err(
            ConfigError::new("app_id", "the app's id is digits (App ID on the dashboard)"),
        ),
        _ => Ok(()),
    }
}
