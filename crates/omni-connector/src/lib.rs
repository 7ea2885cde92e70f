//! The connector SDK: everything a channel crate needs, and nothing that
//! ties it to a transport or a storage backend.
//!
//! A connector verifies, parses and normalizes input, hands each event to an
//! [`EventSender`], and acknowledges upstream (a webhook's 2xx, an IMAP
//! checkpoint, a Telegram offset) only once the returned [`Ack`] resolves,
//! which happens when the event is durable in the event log. That one rule
//! is what makes "nothing acknowledged is lost" hold for every channel.

pub mod attachments;
pub mod config;
pub mod connector;
pub mod driver;
pub mod events;
pub mod group;
pub mod handle;
pub mod json;
pub mod media;
pub mod outbound;
mod parse;
pub mod secret;
pub mod sender;
pub mod signature;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod webhook;

pub use attachments::{AttachmentStore, FsAttachmentStore, StoredAttachment};
pub use config::{ConfigError, parse_settings};
pub use connector::{
    ChannelConfig, ChannelContext, Connector, ConnectorError, ConnectorFactory, TypedFactory,
    WebhookConnector, factory,
};
pub use driver::{
    EnrichError, Inbound, Parsed, Refusal, Unreadable, WebhookChannel, WebhookDriver,
};
pub use group::GroupCommit;
pub use media::{
    FetchError, Fetched, MediaFetcher, MediaJob, MediaQueue, MediaQueueError, MediaRef,
    MemoryMediaQueue,
};
pub use outbound::{Delivered, DeliveryError, OutboundHandler, parse_retry_after};
pub use parse::ParseError;
pub use secret::{Secret, SecretRef};
pub use sender::{
    Ack, EventSender, EventSink, LogEntry, Receipt, SendError, dead_letter, dead_letter_id,
};
pub use state::{ChannelState, SqliteStateStore, StateStore, StateUpdate};
pub use webhook::{WebhookHandler, WebhookRequest, WebhookResponse};
