//! Omnid's vocabulary that every other crate shares: identity handles and
//! their normalization and stream form, deterministic event ids, checked
//! stream timestamps, and the CloudEvents header mapping.
//!
//! Everything here is a pure function without I/O, because these rules are
//! part of the stream contract: a connector, the threading service and a
//! helpdesk consumer must all derive the same handle from the same address
//! and the same id from the same provider message, in every process and every
//! release.

mod channel_id;
pub mod cloudevents;
mod display_name;
mod event_id;
mod handle;
mod language;
pub mod proto;
pub mod timestamp;

pub use channel_id::{MAX_CHANNEL_ID_BYTES, check_channel_id};
pub use display_name::{MAX_DISPLAY_NAME_CHARS, normalize_display_name};
pub use event_id::{EventId, NAMESPACE, ParseEventIdError, event_id};
pub use handle::{Handle, HandleError, HandleKind, HandleText, Region};
pub use language::{MAX_LANGUAGE_TAG_BYTES, is_language_tag};
