//! The email channel (`kind = "email"`).
//!
//! The crate has two halves, kept apart as the architecture asks: [`parse`]
//! turns the bytes of one raw message into a normalized event with pure
//! functions (MIME, charsets, quoting, subject normalization,
//! auto-reply/bounce/bulk detection), and the I/O half (IMAP fetch and UID
//! checkpointing, SMTP replies) only moves bytes in and out.
//!
//! Decisions worth knowing when consuming the events:
//! - The sender handle is never `verified`. `From` is typed by the sending
//!   client; SPF, DKIM and DMARC are not evaluated here. A message with two
//!   `From` headers is rejected (`invalid_sender`) rather than guessed at.
//! - A message without a usable `Message-ID` gets
//!   `sha256:<hex of the raw bytes>` as its provider id, so fetching the
//!   same bytes twice yields the same event id.
//! - Limits ([`ParseLimits`], plus fixed bounds on header fields and bytes
//!   and on boundary length) are checked by a structural walk before the
//!   full parse, and again on the parsed tree; a message over a limit is an
//!   error with a bounded code (for the dead-letter topic), oversized bodies
//!   are cut (`truncated`) and oversized attachments listed without bytes
//!   (`attachments_skipped`).
//! - Attachments are every non-body part with a non-text type, a file name
//!   or `Content-Disposition: attachment`, including inline images and
//!   attached messages (`message/rfc822`, kept whole, never read as the
//!   body). Text attachments keep their bytes as sent; their media type
//!   carries the declared charset. File names lose any directories.
//! - Machine mail is flagged from header evidence only
//!   ([`Classification`]); an out-of-office subject alone is not evidence
//!   (customers write "Out of office until Monday, but ..." too). The flags
//!   travel in `provider_metadata` (`auto_reply`, `bounce`, `bulk`,
//!   `noise_reasons`) until the schema has a typed field for them.
//! - Subject normalization follows RFC 5256's base subject: leading
//!   `[tags]` go along with reply/forward prefixes (see
//!   [`normalize_subject`]).

pub mod config;
mod connector;
pub mod events;
pub mod imap;
pub mod parse;
pub mod smtp;

pub use config::EmailChannelConfig;
pub use connector::KIND;

pub use parse::{
    AttachmentBody, Classification, ParseError, ParseLimits, ParsedEmail, header_message_id,
    html_to_text, normalize_subject, parse_message, strip_quoted_reply,
};
