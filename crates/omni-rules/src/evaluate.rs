//! Evaluating a rule book against one customer message: a pure function
//! of its inputs, so a replayed event gets the decision it got the first
//! time (given the same facts).
//!
//! Semantics, per action kind, over the enabled rules that match, in file
//! order (a matching rule with `stop = true` ends the evaluation):
//! - acknowledgement: the first matching rule with `acknowledge` decides
//!   (a template, or `false` for none); one at most;
//! - auto-reply: the first matching rule with `auto_reply` decides (a
//!   template, or `false` for none); one at most. A sent auto-reply stands
//!   in for the acknowledgement;
//! - tags: every matching rule's tags, in order, without duplicates;
//! - priority: the most urgent any matching rule sets, else the rule
//!   set's default;
//! - escalation margin: the largest any matching rule sets, else the
//!   priority's own.

use omni_proto::v1::ChannelKind;

use crate::{
    calendar::Hours,
    language::{Language, LanguageSource, detect_language},
    normalize::normalize,
    rulebook::{ReplyAction, Rule, RuleBook, RuleSet},
    sla::{Priority, ResponseKind, SlaDeadline},
    template::TemplateValues,
};

/// Only the start of a message is matched (bytes): a keyword deep in a
/// quoted email thread is not what the customer asked now, and a 1 MB
/// message must not cost 1 MB of matching.
pub const MAX_MATCHED_TEXT_BYTES: usize = 16 * 1024;

/// Where the conversation a message belongs to stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConversationState {
    /// This message started it.
    #[default]
    New,
    /// It had been closed; this message opened it again.
    Reopened,
    /// It was open already.
    Ongoing,
}

impl ConversationState {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "new" => Some(Self::New),
            "reopened" => Some(Self::Reopened),
            "ongoing" => Some(Self::Ongoing),
            _ => None,
        }
    }
}

/// An auto-reply already sent in the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentAutoReply {
    pub template: String,
    pub at_ms: i64,
}

/// Everything a decision depends on. All times are UTC milliseconds.
/// Histories (acknowledgements, auto-replies) should be as of before the
/// event; later entries count as recent, so a replay never sends twice.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    pub channel_id: &'a str,
    pub channel_kind: ChannelKind,
    /// `{channel}` in templates; the channel id when absent.
    pub channel_name: Option<&'a str>,
    pub customer_name: Option<&'a str>,
    pub customer_segment: Option<&'a str>,
    pub customer_tags: &'a [String],
    /// `{conversation_ref}` in templates.
    pub conversation_ref: &'a str,
    pub conversation: ConversationState,
    /// The customer's other open conversations (a returning customer whose
    /// issue is still open).
    pub other_open_conversations: u32,
    /// Whether an agent has replied in this conversation (the next
    /// response's SLA applies) or not (the first response's).
    pub agent_has_replied: bool,
    /// The conversation's priority before this message, if it has one:
    /// the SLA deadline follows the more urgent of it and the message's
    /// own, so a P1 conversation's next message is not given a P3 target.
    pub conversation_priority: Option<Priority>,
    /// When the customer sent the message.
    pub event_time_ms: i64,
    pub text: &'a str,
    /// The channel's language hint (Telegram `language_code`, a page's
    /// `lang`).
    pub language_hint: Option<&'a str>,
    /// An auto-reply, bounce, bulk mail, delivery status, our own echo or
    /// another automation (see [`crate::automated_email`] for email).
    pub automated: bool,
    /// The last acknowledgement sent in this conversation.
    pub last_acknowledgement_ms: Option<i64>,
    /// Recent acknowledgements sent to this customer in any conversation.
    pub customer_acknowledgements_ms: &'a [i64],
    /// Auto-replies sent in this conversation.
    pub recent_auto_replies: &'a [SentAutoReply],
}

/// A reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The rule that asked for it.
    pub rule: String,
    pub template: String,
    /// The language of the text (the customer's, or the default).
    pub language: Language,
    pub text: String,
}

/// Why no reply of a kind is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// No rule set covers the channel.
    NoRuleSet,
    /// No matching rule asked for one.
    NoRule,
    /// The first rule deciding said none (`acknowledge = false`,
    /// `auto_reply = false`).
    RuleSaidNo { rule: String },
    /// The message is automated: answering could start a loop.
    Automated,
    /// An auto-reply answers the message already.
    AnsweredByAutoReply,
    /// The conversation was acknowledged within the window.
    ConversationRateLimited { last_ms: i64 },
    /// The customer got this many acknowledgements within the window.
    CustomerRateLimited { count: u32 },
    /// The same auto-reply went to this conversation within the window.
    RepeatedAutoReply { last_ms: i64 },
}

/// Send a reply, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyDecision {
    Send(Reply),
    Skip(SkipReason),
}

impl ReplyDecision {
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Self::Send(reply) => Some(reply),
            Self::Skip(_) => None,
        }
    }
}

/// What to do about one customer message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The rule set that covered the channel.
    pub rule_set: Option<String>,
    pub language: Language,
    pub language_source: LanguageSource,
    /// `None` without a rule set.
    pub hours: Option<Hours>,
    /// Names of the rules that matched, in evaluation order.
    pub matched_rules: Vec<String>,
    pub acknowledgement: ReplyDecision,
    pub auto_reply: ReplyDecision,
    pub tags: Vec<String>,
    pub priority: Priority,
    /// The response deadline, for the more urgent of `priority` and the
    /// conversation's priority; `None` for automated messages, without a
    /// rule set, or when the priority has no target.
    pub sla: Option<SlaDeadline>,
}

/// Evaluates `book` for one message. Deterministic: the same book and
/// facts give the same decision.
pub fn evaluate(book: &RuleBook, facts: &Facts<'_>) -> Decision {
    let Some(set) = book.rule_set_for(facts.channel_id, facts.channel_kind) else {
        let detected = detect_language(facts.text, facts.language_hint, Language::ENGLISH);
        return Decision {
            rule_set: None,
            language: detected.language,
            language_source: detected.source,
            hours: None,
            matched_rules: Vec::new(),
            acknowledgement: ReplyDecision::Skip(SkipReason::NoRuleSet),
            auto_reply: ReplyDecision::Skip(SkipReason::NoRuleSet),
            tags: Vec::new(),
            priority: Priority::P3,
            sla: None,
        };
    };
    evaluate_set(set, facts)
}

impl RuleBook {
    /// [`evaluate`] as a method.
    pub fn evaluate(&self, facts: &Facts<'_>) -> Decision {
        evaluate(self, facts)
    }
}

/// Per-message state shared by the rules: the text is normalized once and
/// the keyword automaton runs once; regexes run only when a rule with
/// them passes its other conditions and no keyword of it matched (the
/// regex set at most once per message).
struct TextState<'a> {
    set: &'a RuleSet,
    text: String,
    keyword_hits: Vec<bool>,
    regex_hits: Option<Vec<bool>>,
}

impl TextState<'_> {
    fn matches(&mut self, index: usize, rule: &Rule) -> bool {
        if rule.has_keywords && self.keyword_hits[index] {
            return true;
        }
        if !rule.has_regex {
            return false;
        }
        let hits = self.regex_hits.get_or_insert_with(|| {
            let mut hits = vec![false; self.set.rules.len()];
            self.set.matcher.regex_hits(&self.text, &mut hits);
            hits
        });
        hits[index]
    }
}

fn matched_text(text: &str) -> &str {
    if text.len() <= MAX_MATCHED_TEXT_BYTES {
        return text;
    }
    let mut end = MAX_MATCHED_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn evaluate_set(set: &RuleSet, facts: &Facts<'_>) -> Decision {
    let detected = detect_language(facts.text, facts.language_hint, set.default_language());
    let language = detected.language;
    let hours = set.hours_at(facts.event_time_ms);
    let text = normalize(matched_text(facts.text));
    let mut keyword_hits = vec![false; set.rules.len()];
    set.matcher.keyword_hits(&text, &mut keyword_hits);
    let mut text = TextState {
        set,
        text,
        keyword_hits,
        regex_hits: None,
    };

    let mut matched_rules = Vec::new();
    let mut acknowledge: Option<(&Rule, &ReplyAction)> = None;
    let mut auto_reply: Option<(&Rule, &ReplyAction)> = None;
    let mut tags: Vec<String> = Vec::new();
    let mut priority: Option<Priority> = None;
    let mut escalate_before_ms: Option<i64> = None;
    for (index, rule) in set.rules.iter().enumerate() {
        if !rule.enabled || !conditions_hold(rule, facts, hours, language) {
            continue;
        }
        if rule.has_text() && !text.matches(index, rule) {
            continue;
        }
        matched_rules.push(rule.name.clone());
        if acknowledge.is_none()
            && let Some(action) = &rule.acknowledge
        {
            acknowledge = Some((rule, action));
        }
        if auto_reply.is_none()
            && let Some(action) = &rule.auto_reply
        {
            auto_reply = Some((rule, action));
        }
        for tag in &rule.tags {
            if !tags.iter().any(|t| t.eq_ignore_ascii_case(tag)) {
                tags.push(tag.clone());
            }
        }
        if let Some(p) = rule.priority {
            priority = Some(priority.map_or(p, |q| q.most_urgent(p)));
        }
        if let Some(margin) = rule.escalate_before_ms {
            escalate_before_ms = Some(escalate_before_ms.map_or(margin, |m| m.max(margin)));
        }
        if rule.stop {
            break;
        }
    }
    let priority = priority.unwrap_or(set.default_priority);

    let kind = if facts.agent_has_replied {
        ResponseKind::Next
    } else {
        ResponseKind::First
    };
    let sla_priority = facts
        .conversation_priority
        .map_or(priority, |p| p.most_urgent(priority));
    let sla = if facts.automated {
        None
    } else {
        set.sla_deadline_with_margin(sla_priority, kind, facts.event_time_ms, escalate_before_ms)
    };
    let expected_response =
        sla.and_then(|deadline| set.format_local(deadline.due_ms, facts.event_time_ms));
    let values = TemplateValues {
        customer_name: facts.customer_name,
        expected_response: expected_response.as_deref(),
        conversation_ref: facts.conversation_ref,
        channel: facts.channel_name.unwrap_or(facts.channel_id),
    };
    let render = |rule: &Rule, template: &str| {
        set.render(template, language, &values)
            .map(|(language, text)| Reply {
                rule: rule.name.clone(),
                template: template.to_owned(),
                language,
                text,
            })
    };

    let limits = set.rate_limits();
    let auto_reply = match auto_reply {
        _ if facts.automated => ReplyDecision::Skip(SkipReason::Automated),
        None => ReplyDecision::Skip(SkipReason::NoRule),
        Some((rule, ReplyAction::Never)) => ReplyDecision::Skip(SkipReason::RuleSaidNo {
            rule: rule.name.clone(),
        }),
        Some((rule, ReplyAction::Template(template))) => {
            let window_start = facts
                .event_time_ms
                .saturating_sub(limits.auto_reply_window_ms);
            let last = facts
                .recent_auto_replies
                .iter()
                .filter(|sent| sent.template == *template && sent.at_ms > window_start)
                .map(|sent| sent.at_ms)
                .max();
            match (last, render(rule, template)) {
                (Some(last_ms), _) => {
                    ReplyDecision::Skip(SkipReason::RepeatedAutoReply { last_ms })
                }
                (None, Some(reply)) => ReplyDecision::Send(reply),
                // Compilation guarantees the template exists.
                (None, None) => ReplyDecision::Skip(SkipReason::NoRule),
            }
        }
    };

    let acknowledgement = match acknowledge {
        _ if facts.automated => ReplyDecision::Skip(SkipReason::Automated),
        None => ReplyDecision::Skip(SkipReason::NoRule),
        Some((rule, ReplyAction::Never)) => ReplyDecision::Skip(SkipReason::RuleSaidNo {
            rule: rule.name.clone(),
        }),
        Some(_) if matches!(auto_reply, ReplyDecision::Send(_)) => {
            ReplyDecision::Skip(SkipReason::AnsweredByAutoReply)
        }
        Some((rule, ReplyAction::Template(template))) => {
            acknowledgement(facts, limits, || render(rule, template))
        }
    };

    Decision {
        rule_set: Some(set.name().to_owned()),
        language,
        language_source: detected.source,
        hours: Some(hours),
        matched_rules,
        acknowledgement,
        auto_reply,
        tags,
        priority,
        sla,
    }
}

fn acknowledgement(
    facts: &Facts<'_>,
    limits: crate::RateLimits,
    render: impl FnOnce() -> Option<Reply>,
) -> ReplyDecision {
    let event = facts.event_time_ms;
    if let Some(last_ms) = facts.last_acknowledgement_ms
        && last_ms > event.saturating_sub(limits.acknowledgement_window_ms)
    {
        return ReplyDecision::Skip(SkipReason::ConversationRateLimited { last_ms });
    }
    let customer_window_start = event.saturating_sub(limits.customer_window_ms);
    let count = facts
        .customer_acknowledgements_ms
        .iter()
        .filter(|&&at| at > customer_window_start)
        .count();
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    if count >= limits.customer_acknowledgements {
        return ReplyDecision::Skip(SkipReason::CustomerRateLimited { count });
    }
    match render() {
        Some(reply) => ReplyDecision::Send(reply),
        None => ReplyDecision::Skip(SkipReason::NoRule),
    }
}

/// The conditions other than text: cheap, checked first.
fn conditions_hold(rule: &Rule, facts: &Facts<'_>, hours: Hours, language: Language) -> bool {
    if !rule.channels.is_empty() && !rule.channels.iter().any(|id| id == facts.channel_id) {
        return false;
    }
    if !rule.channel_kinds.is_empty() && !rule.channel_kinds.contains(&facts.channel_kind) {
        return false;
    }
    if !rule.segments.is_empty()
        && !facts.customer_segment.is_some_and(|segment| {
            rule.segments
                .iter()
                .any(|s| s.eq_ignore_ascii_case(segment))
        })
    {
        return false;
    }
    if !rule.customer_tags.is_empty()
        && !facts.customer_tags.iter().any(|tag| {
            rule.customer_tags
                .iter()
                .any(|t| t.eq_ignore_ascii_case(tag))
        })
    {
        return false;
    }
    if !rule.conversation.is_empty() && !rule.conversation.contains(&facts.conversation) {
        return false;
    }
    if let Some(other_open) = rule.other_open_conversations
        && other_open != (facts.other_open_conversations > 0)
    {
        return false;
    }
    if !rule.hours.is_empty() && !rule.hours.contains(&hours) {
        return false;
    }
    if !rule.languages.is_empty() && !rule.languages.contains(&language) {
        return false;
    }
    true
}
