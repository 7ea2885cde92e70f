//! The WeChat channels.
//!
//! - `kind = "wechat_oa"`: an Official Account's server URL. WeChat posts
//!   each message and event (plaintext, compatible or safe mode) and waits
//!   5 seconds for `success`; the answer goes out only once the event is
//!   durable, and a retry gets the same event id (from `MsgId`, or for
//!   events from the sender and `CreateTime`).
//! - `kind = "wecom_kf"`: WeChat Customer Service through WeCom, which is
//!   pull-after-notify: a callback says "there is news", the channel pulls
//!   it with `kf/sync_msg`, appends every message, and only then stores the
//!   cursor. Accounts are also polled without callbacks, since WeCom keeps
//!   messages for 3 days only.
//!
//! The pure halves (signatures and AES in [`crypto`], XML in [`xml`],
//! payloads to events in [`oa::normalize`] and [`kf::normalize`]) do no
//! I/O, so they are unit tested on the documentation's samples and fuzzed;
//! [`api`] is the one client of both platforms' HTTP APIs, with the
//! access-token manager the whole crate shares.

pub mod api;
mod callback;
pub mod config;
pub mod crypto;
pub mod events;
pub mod kf;
pub mod media;
pub mod oa;
pub mod outbound;
pub mod xml;

mod connectors;

pub use config::{WechatOaConfig, WecomKfConfig};
pub use connectors::KfConnector;

/// The `kind` of Official Account channels in channel files.
pub const OA_KIND: &str = "wechat_oa";
/// The `kind` of WeChat Customer Service channels in channel files.
pub const KF_KIND: &str = "wecom_kf";
