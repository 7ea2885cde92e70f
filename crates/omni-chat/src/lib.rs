//! The web chat channel (`kind = "webchat"`): a widget served by the
//! daemon talks to the channel over a WebSocket under
//! `/channels/{channel_id}/`. The pure halves ([`identity`], [`protocol`],
//! [`normalize`]) do no I/O, so they are unit tested and fuzzed.

pub mod address;
pub mod config;
pub mod connector;
pub mod events;
pub mod history;
pub mod hub;
pub mod identity;
pub mod normalize;
pub mod offline;
pub mod protocol;
pub mod session;
pub mod upload;

pub use config::WebchatConfig;

/// The `kind` of web chat channels in channel files.
pub const KIND: &str = "webchat";
