use omni_connector::SecretRef;
use serde::Deserialize;

/// Settings of one API channel (its channel file, minus `id` and `kind`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiChannelConfig {
    /// Where the shared HMAC-SHA256 secret lives:
    /// `{ env = "NAME" }` or `{ file = "/path" }`. Required unless
    /// `verify_signatures = false`.
    #[serde(default)]
    pub secret: Option<SecretRef>,

    /// A second accepted secret, so senders can move to a new secret
    /// without a window where their requests fail.
    #[serde(default)]
    pub previous_secret: Option<SecretRef>,

    /// Checks every request's signature. Turning it off makes the endpoint
    /// accept anything from anyone; the daemon logs a warning at every
    /// (re)load while it is off.
    #[serde(default = "default_verify_signatures")]
    pub verify_signatures: bool,

    /// How far (seconds) a request's signed timestamp may be from the
    /// daemon's clock, either way. Bounds how long a captured request can
    /// be replayed.
    #[serde(default = "default_replay_window_secs")]
    pub replay_window_secs: u64,

    /// ISO 3166 region (e.g. `"IR"`, `"CN"`) for phone handles written
    /// without a country code.
    #[serde(default)]
    pub default_region: Option<String>,

    /// Marks senders' handles as verified, for identity linking. Only for
    /// sources that authenticated the person themselves (a logged-in
    /// customer portal); never for anything a person can type freely.
    #[serde(default)]
    pub trust_sender: bool,
}

const fn default_verify_signatures() -> bool {
    true
}

const fn default_replay_window_secs() -> u64 {
    300
}
