//! The Meta platform channels: one crate, since WhatsApp, Messenger and
//! Instagram share Meta's webhook envelope, its signature, its URL check
//! and its Graph API.
//!
//! - `kind = "whatsapp"`: a WhatsApp Business Cloud API phone number.
//! - `kind = "messenger"`: a Facebook Page's Messenger inbox.
//! - `kind = "instagram"`: an Instagram professional account's Direct
//!   messages.
//!
//! Meta signs each POST with `X-Hub-Signature-256` (HMAC-SHA256 of the
//! raw body with the app secret), checked in constant time before a byte
//! is parsed; it retries a failed delivery for up to 7 days and sometimes
//! delivers twice after a 200, so event ids come from Meta's message ids
//! and the channel remembers which it has appended.
//!
//! The pure halves ([`envelope`], [`whatsapp::normalize`],
//! [`messaging::normalize`]) do no I/O, so they are unit tested on the
//! documentation's payloads and fuzzed; [`graph`] is the one client of the
//! Graph API, used by media downloads and replies.

pub mod config;
pub mod envelope;
pub mod events;
pub mod graph;
pub mod marks;
pub mod media;
pub mod messaging;
pub mod outbound;
pub mod webhook;
pub mod whatsapp;
pub mod window;

mod connectors;

pub use config::{InstagramConfig, MessengerConfig, WhatsappConfig};

/// The `kind` of WhatsApp channels in channel files.
pub const WHATSAPP_KIND: &str = "whatsapp";
/// The `kind` of Messenger channels in channel files.
pub const MESSENGER_KIND: &str = "messenger";
/// The `kind` of Instagram channels in channel files.
pub const INSTAGRAM_KIND: &str = "instagram";
