//! Customer-service automation as pure logic: rule files, multilingual
//! text normalization and matching, language detection, business-hours
//! calendars, reply templates and SLA targets.
//!
//! Nothing here does I/O or keeps state between calls: the caller reads
//! `config/rules/*.toml` and hands the texts to [`RuleBook::compile`], and
//! for each customer message hands [`Facts`] (including what automation
//! already sent) to [`evaluate`], which returns a [`Decision`]. The
//! threading service runs it inside the transaction of the event it
//! reacts to, so each decision is taken once per event and a replay
//! reproduces it.
//!
//! ```
//! use omni_rules::{ConversationState, Facts, RuleBook, ReplyDecision, evaluate};
//! use omni_rules::ChannelKind;
//!
//! let book = RuleBook::compile([("support.toml", r#"
//!     name = "support"
//!     time_zone = "Asia/Tehran"
//!     default_language = "fa"
//!     [templates.received]
//!     fa = "پیام شما رسید"
//!     en = "We got your message"
//!     [[rules]]
//!     name = "acknowledge"
//!     match.conversation = ["new"]
//!     actions.acknowledge = "received"
//! "#)]).unwrap();
//! let decision = evaluate(&book, &Facts {
//!     channel_id: "support-telegram",
//!     channel_kind: ChannelKind::Telegram,
//!     conversation: ConversationState::New,
//!     text: "Hi, where is my order?",
//!     event_time_ms: 1_767_000_000_000,
//!     ..Facts::default()
//! });
//! let ReplyDecision::Send(reply) = decision.acknowledgement else { panic!() };
//! assert_eq!(reply.text, "We got your message");
//! ```

mod automated;
mod calendar;
mod error;
mod evaluate;
mod file;
mod language;
mod matcher;
mod normalize;
mod rulebook;
mod sla;
mod template;

pub use automated::{AutomatedReason, automated_email};
pub use calendar::Hours;
pub use error::{RuleBookError, RuleFileError};
pub use evaluate::{
    ConversationState, Decision, Facts, MAX_MATCHED_TEXT_BYTES, Reply, ReplyDecision,
    SentAutoReply, SkipReason, evaluate,
};
pub use language::{DetectedLanguage, Language, LanguageSource, detect_language};
pub use normalize::normalize;
/// The stream's channel kinds, which rule files name in lowercase
/// (`CHANNEL_KIND_EMAIL` is `email`).
pub use omni_proto::v1::ChannelKind;
pub use rulebook::{LocalizedTemplate, RateLimits, RuleBook, RuleSet};
pub use sla::{Priority, ResponseKind, SlaClock, SlaDeadline, SlaStatus, SlaTarget, is_breached};
pub use template::{Template, TemplateValues, Variable};
