//! The rule file as admins write it (`config/rules/*.toml`), before
//! validation. Unknown keys are errors, so a typo never silently turns a
//! condition off. Values with a syntax of their own (time zones, hours,
//! priorities, durations, languages, regexes) are plain strings here and
//! checked by the compiler, which reports every problem with its key.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, de};

/// One rule set: one file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSetFile {
    /// Unique among all rule files; shown in decisions and audits.
    pub(crate) name: String,

    /// IANA time zone of the business hours and of `{expected_response}`,
    /// e.g. `"Asia/Tehran"`.
    pub(crate) time_zone: String,

    /// Language of replies when the customer's language is unknown or has
    /// no text in a template (a primary subtag such as `"fa"`). Every
    /// template must have a text in it.
    pub(crate) default_language: String,

    /// Channel ids this rule set covers. With `channel_kinds`, empty both:
    /// every channel no other rule set covers. A channel id listed here
    /// wins over a kind listed elsewhere.
    #[serde(default)]
    pub(crate) channels: Vec<String>,

    /// Channel kinds this rule set covers (`email`, `sms`, `telegram`,
    /// `wechat`, `whatsapp`, `chat`, `messenger`, `instagram`, `api`).
    #[serde(default)]
    pub(crate) channel_kinds: Vec<String>,

    /// Priority of a conversation no rule sets one for; `"P3"` if absent.
    #[serde(default)]
    pub(crate) default_priority: Option<String>,

    /// Weekly opening hours and holidays.
    #[serde(default)]
    pub(crate) business_hours: BusinessHoursFile,

    /// Response-time targets per priority.
    #[serde(default)]
    pub(crate) sla: SlaFile,

    /// Bounds on automatic messages.
    #[serde(default)]
    pub(crate) rate_limits: RateLimitsFile,

    /// Named texts per language: `[templates.after_hours]` with
    /// `fa = "..."`, `en = "..."`.
    #[serde(default)]
    pub(crate) templates: BTreeMap<String, BTreeMap<String, String>>,

    /// The rules, evaluated in this order.
    #[serde(default)]
    pub(crate) rules: Vec<RuleFile>,
}

/// Opening intervals per weekday in local time (`"09:00-17:30"`; a day
/// left out is closed), and holidays (`"2026-03-20"` or
/// `"2026-03-20..2026-03-24"`, inclusive).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BusinessHoursFile {
    #[serde(default)]
    pub(crate) monday: Vec<String>,
    #[serde(default)]
    pub(crate) tuesday: Vec<String>,
    #[serde(default)]
    pub(crate) wednesday: Vec<String>,
    #[serde(default)]
    pub(crate) thursday: Vec<String>,
    #[serde(default)]
    pub(crate) friday: Vec<String>,
    #[serde(default)]
    pub(crate) saturday: Vec<String>,
    #[serde(default)]
    pub(crate) sunday: Vec<String>,
    #[serde(default)]
    pub(crate) holidays: Vec<String>,
}

impl BusinessHoursFile {
    /// Monday first, with each day's key name.
    pub(crate) fn days(&self) -> [(&'static str, &[String]); 7] {
        [
            ("monday", &self.monday),
            ("tuesday", &self.tuesday),
            ("wednesday", &self.wednesday),
            ("thursday", &self.thursday),
            ("friday", &self.friday),
            ("saturday", &self.saturday),
            ("sunday", &self.sunday),
        ]
    }
}

/// `clock` and one table per priority; a priority without a table has no
/// deadline.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SlaFile {
    /// `"calendar"` (wall-clock time, the default) or `"business_hours"`
    /// (time runs only while open).
    #[serde(default)]
    pub(crate) clock: Option<String>,
    #[serde(default)]
    pub(crate) p1: Option<SlaTargetFile>,
    #[serde(default)]
    pub(crate) p2: Option<SlaTargetFile>,
    #[serde(default)]
    pub(crate) p3: Option<SlaTargetFile>,
    #[serde(default)]
    pub(crate) p4: Option<SlaTargetFile>,
}

/// Durations are `"90s"`, `"15m"`, `"4h"`, `"1d"` or combinations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SlaTargetFile {
    /// From a conversation's first customer message to the first agent
    /// reply.
    pub(crate) first_response: String,
    /// From a customer message after an agent reply to the next one.
    pub(crate) next_response: String,
    /// Escalate this long before a deadline; none if absent.
    #[serde(default)]
    pub(crate) escalate_before: Option<String>,
}

/// Bounds that keep automation polite; all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitsFile {
    /// At most one acknowledgement per conversation in this window
    /// (default `"12h"`).
    #[serde(default)]
    pub(crate) acknowledgement_window: Option<String>,
    /// At most this many acknowledgements per customer, over all their
    /// conversations, within `customer_window` (default 3).
    #[serde(default)]
    pub(crate) customer_acknowledgements: Option<u32>,
    /// Default `"24h"`.
    #[serde(default)]
    pub(crate) customer_window: Option<String>,
    /// The same auto-reply at most once per conversation in this window
    /// (default `"1h"`).
    #[serde(default)]
    pub(crate) auto_reply_window: Option<String>,
}

/// One rule: conditions and actions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleFile {
    /// Unique within the rule set; decisions list the rules that matched.
    pub(crate) name: String,
    /// `false` keeps a rule in the file without effect.
    #[serde(default = "default_true")]
    pub(crate) enabled: bool,
    /// All conditions given must hold; an absent one always does.
    #[serde(default, rename = "match")]
    pub(crate) when: MatchFile,
    #[serde(default)]
    pub(crate) actions: ActionsFile,
    /// After this rule matches, later rules are not evaluated.
    #[serde(default)]
    pub(crate) stop: bool,
}

const fn default_true() -> bool {
    true
}

/// Conditions of a rule. Each list holds when any of its entries does;
/// the text holds when any keyword, phrase or regex matches.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MatchFile {
    /// Channel ids.
    #[serde(default)]
    pub(crate) channels: Vec<String>,
    /// Channel kinds (`email`, `telegram`, ...).
    #[serde(default)]
    pub(crate) channel_kinds: Vec<String>,
    /// The customer's segment (e.g. `vip`), compared ignoring ASCII case.
    #[serde(default)]
    pub(crate) segments: Vec<String>,
    /// The customer's tags, compared ignoring ASCII case.
    #[serde(default)]
    pub(crate) customer_tags: Vec<String>,
    /// `new`, `reopened` or `ongoing`.
    #[serde(default)]
    pub(crate) conversation: Vec<String>,
    /// Whether the customer has other open conversations (a returning
    /// customer whose issue is still open).
    #[serde(default)]
    pub(crate) other_open_conversations: Option<bool>,
    /// `inside`, `outside` or `holiday`.
    #[serde(default)]
    pub(crate) hours: Vec<String>,
    /// The customer's language (primary subtags).
    #[serde(default)]
    pub(crate) languages: Vec<String>,
    /// Whole words; `*` at either end also matches the rest of a word
    /// (`refund*` matches "refunded"). Words of unspaced scripts (Chinese,
    /// Japanese, Thai, ...) match anywhere.
    #[serde(default)]
    pub(crate) keywords: Vec<String>,
    /// Word sequences ("money back"), matched like keywords.
    #[serde(default)]
    pub(crate) phrases: Vec<String>,
    /// Regular expressions (Rust `regex` syntax) over the normalized text
    /// (lowercase, ASCII digits, unified Arabic letters).
    #[serde(default)]
    pub(crate) regex: Vec<String>,
}

/// What a matching rule does.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionsFile {
    /// A template name, or `false` for no acknowledgement.
    #[serde(default)]
    pub(crate) acknowledge: Option<TemplateOrNever>,
    /// A template name answering the question, or `false` so that no later
    /// rule's auto-reply answers it.
    #[serde(default)]
    pub(crate) auto_reply: Option<TemplateOrNever>,
    /// Tags added to the conversation.
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    /// `"P1"` (most urgent) to `"P4"`.
    #[serde(default)]
    pub(crate) priority: Option<String>,
    /// Escalate this long before the SLA deadline.
    #[serde(default)]
    pub(crate) escalate_before: Option<String>,
}

/// `acknowledge = "template"` or `acknowledge = false` (also for
/// `auto_reply`).
#[derive(Debug)]
pub(crate) enum TemplateOrNever {
    Template(String),
    Never,
}

impl<'de> Deserialize<'de> for TemplateOrNever {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = TemplateOrNever;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a template name, or false for none")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<TemplateOrNever, E> {
                Ok(TemplateOrNever::Template(value.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<TemplateOrNever, E> {
                if value {
                    Err(E::custom(
                        "`true` names no text: give a template name, or false for none",
                    ))
                } else {
                    Ok(TemplateOrNever::Never)
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
