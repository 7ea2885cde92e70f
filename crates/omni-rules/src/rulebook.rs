//! Compiling rule files into a [`RuleBook`]: all files or none, with every
//! problem reported.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use omni_proto::v1::ChannelKind;

use crate::{
    calendar::{Calendar, Hours, parse_holiday, parse_interval},
    error::{RuleBookError, RuleFileError},
    evaluate::ConversationState,
    file::{RuleSetFile, SlaTargetFile, TemplateOrNever},
    language::Language,
    matcher::{MAX_REGEXES, TextMatcher, TextMatcherBuilder, compile_regex, prepare_keyword},
    sla::{Priority, ResponseKind, SlaClock, SlaDeadline, SlaTarget, parse_duration},
    template::{Template, TemplateValues},
};

/// Most rules one file may hold.
const MAX_RULES: usize = 10_000;
/// Longest name of a rule set, rule, template or tag (characters).
const MAX_NAME_CHARS: usize = 64;

/// All rule sets, ready to evaluate. Cheap to share (`Arc`) and immutable:
/// a reload compiles a new book.
#[derive(Debug, Clone, Default)]
pub struct RuleBook {
    sets: Vec<RuleSet>,
    by_channel: HashMap<String, usize>,
    by_kind: HashMap<i32, usize>,
    catch_all: Option<usize>,
}

/// One rule file, compiled.
#[derive(Debug, Clone)]
pub struct RuleSet {
    name: String,
    file: String,
    time_zone: String,
    pub(crate) calendar: Calendar,
    default_language: Language,
    pub(crate) default_priority: Priority,
    sla_clock: SlaClock,
    sla: [Option<SlaTarget>; 4],
    rate_limits: RateLimits,
    templates: BTreeMap<String, LocalizedTemplate>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) matcher: TextMatcher,
    channels: Vec<(String, String)>,
    channel_kinds: Vec<ChannelKind>,
}

/// Bounds on automatic messages, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// At most one acknowledgement per conversation in this window.
    pub acknowledgement_window_ms: i64,
    /// At most this many acknowledgements per customer ...
    pub customer_acknowledgements: u32,
    /// ... within this window.
    pub customer_window_ms: i64,
    /// The same auto-reply at most once per conversation in this window.
    pub auto_reply_window_ms: i64,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            acknowledgement_window_ms: 12 * 3_600_000,
            customer_acknowledgements: 3,
            customer_window_ms: 24 * 3_600_000,
            auto_reply_window_ms: 3_600_000,
        }
    }
}

/// A named template's texts per language; always has one in the rule
/// set's default language.
#[derive(Debug, Clone)]
pub struct LocalizedTemplate {
    texts: BTreeMap<Language, Template>,
}

impl LocalizedTemplate {
    /// The text in `language`, else in `fallback`, with the language used.
    pub fn text_for(
        &self,
        language: Language,
        fallback: Language,
    ) -> Option<(Language, &Template)> {
        self.texts
            .get_key_value(&language)
            .or_else(|| self.texts.get_key_value(&fallback))
            .map(|(language, template)| (*language, template))
    }

    pub fn languages(&self) -> impl Iterator<Item = Language> + '_ {
        self.texts.keys().copied()
    }
}

/// `acknowledge`/`auto_reply`: a template, or `false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplyAction {
    Template(String),
    Never,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) enabled: bool,
    pub(crate) stop: bool,
    pub(crate) channels: Vec<String>,
    pub(crate) channel_kinds: Vec<ChannelKind>,
    pub(crate) segments: Vec<String>,
    pub(crate) customer_tags: Vec<String>,
    pub(crate) conversation: Vec<ConversationState>,
    pub(crate) other_open_conversations: Option<bool>,
    pub(crate) hours: Vec<Hours>,
    pub(crate) languages: Vec<Language>,
    pub(crate) has_keywords: bool,
    pub(crate) has_regex: bool,
    pub(crate) acknowledge: Option<ReplyAction>,
    pub(crate) auto_reply: Option<ReplyAction>,
    pub(crate) tags: Vec<String>,
    pub(crate) priority: Option<Priority>,
    pub(crate) escalate_before_ms: Option<i64>,
}

impl Rule {
    pub(crate) fn has_text(&self) -> bool {
        self.has_keywords || self.has_regex
    }
}

impl RuleBook {
    /// Compiles rule files given as (file name, TOML text) pairs; reading
    /// the directory is the caller's job. Files are taken in file-name
    /// order, so the result does not depend on the order given. Returns
    /// the whole book, or every problem in every file.
    pub fn compile<N, T>(files: impl IntoIterator<Item = (N, T)>) -> Result<Self, RuleBookError>
    where
        N: AsRef<str>,
        T: AsRef<str>,
    {
        let mut files: Vec<(N, T)> = files.into_iter().collect();
        files.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let mut errors = Vec::new();
        let mut book = Self::default();
        let mut names: HashMap<String, String> = HashMap::new();
        for (file, text) in &files {
            let file = file.as_ref();
            let mut ctx = Ctx {
                file,
                errors: &mut errors,
            };
            let Some(parsed) = parse_file(&mut ctx, text.as_ref()) else {
                continue;
            };
            let Some(set) = compile_set(&mut ctx, parsed) else {
                continue;
            };
            if let Some(other) = names.get(&set.name) {
                ctx.error(
                    "name",
                    format!("rule set name `{}` is also used by {other}", set.name),
                );
                continue;
            }
            names.insert(set.name.clone(), file.to_owned());
            book.add(&mut ctx, set);
        }
        if errors.is_empty() {
            Ok(book)
        } else {
            Err(RuleBookError { errors })
        }
    }

    /// Registers a set's scope, refusing overlaps: a channel id, a kind or
    /// the catch-all may belong to one rule set only.
    fn add(&mut self, ctx: &mut Ctx<'_>, set: RuleSet) {
        let index = self.sets.len();
        let mut ok = true;
        for (key, id) in &set.channels {
            if let Some(&other) = self.by_channel.get(id) {
                let other = &self.sets[other];
                ctx.error(
                    key,
                    format!(
                        "channel `{id}` is already covered by rule set `{}` ({})",
                        other.name, other.file
                    ),
                );
                ok = false;
            }
        }
        for (i, kind) in set.channel_kinds.iter().enumerate() {
            if let Some(&other) = self.by_kind.get(&(*kind as i32)) {
                let other = &self.sets[other];
                ctx.error(
                    &format!("channel_kinds[{i}]"),
                    format!(
                        "channel kind `{}` is already covered by rule set `{}` ({})",
                        kind_name(*kind),
                        other.name,
                        other.file
                    ),
                );
                ok = false;
            }
        }
        let catch_all = set.channels.is_empty() && set.channel_kinds.is_empty();
        if catch_all && let Some(other) = self.catch_all {
            let other = &self.sets[other];
            ctx.error(
                ".",
                format!(
                    "rule set `{}` ({}) already covers every other channel: give this one `channels` or `channel_kinds`",
                    other.name, other.file
                ),
            );
            ok = false;
        }
        if !ok {
            return;
        }
        for (_, id) in &set.channels {
            self.by_channel.insert(id.clone(), index);
        }
        for kind in &set.channel_kinds {
            self.by_kind.insert(*kind as i32, index);
        }
        if catch_all {
            self.catch_all = Some(index);
        }
        self.sets.push(set);
    }

    /// The rule set covering a channel: the one listing its id, else the
    /// one listing its kind, else the catch-all.
    pub fn rule_set_for(&self, channel_id: &str, kind: ChannelKind) -> Option<&RuleSet> {
        self.by_channel
            .get(channel_id)
            .or_else(|| self.by_kind.get(&(kind as i32)))
            .or(self.catch_all.as_ref())
            .map(|&index| &self.sets[index])
    }

    /// The rule sets in file-name order.
    pub fn rule_sets(&self) -> &[RuleSet] {
        &self.sets
    }

    /// Channel ids named by rule files (scopes and rule conditions) that
    /// `exists` does not know, as errors for `omnid check-config`.
    pub fn unknown_channels(&self, exists: impl Fn(&str) -> bool) -> Vec<RuleFileError> {
        let mut errors = Vec::new();
        for set in &self.sets {
            let rule_channels = set.rules.iter().enumerate().flat_map(|(r, rule)| {
                rule.channels
                    .iter()
                    .enumerate()
                    .map(move |(i, id)| (format!("rules[{r}].match.channels[{i}]"), id))
            });
            let scope = set.channels.iter().map(|(key, id)| (key.clone(), id));
            for (key, id) in scope.chain(rule_channels) {
                if !exists(id) {
                    errors.push(RuleFileError {
                        file: set.file.clone(),
                        key,
                        reason: format!("no channel `{id}` is configured"),
                    });
                }
            }
        }
        errors
    }
}

impl RuleSet {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file it was compiled from.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// IANA name of its time zone.
    pub fn time_zone(&self) -> &str {
        &self.time_zone
    }

    pub fn default_language(&self) -> Language {
        self.default_language
    }

    pub fn default_priority(&self) -> Priority {
        self.default_priority
    }

    pub fn rate_limits(&self) -> RateLimits {
        self.rate_limits
    }

    pub fn sla_clock(&self) -> SlaClock {
        self.sla_clock
    }

    /// Names of its rules, in evaluation order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|rule| rule.name.as_str())
    }

    pub fn template(&self, name: &str) -> Option<&LocalizedTemplate> {
        self.templates.get(name)
    }

    /// Inside, outside or holiday at `at_ms` (UTC milliseconds).
    pub fn hours_at(&self, at_ms: i64) -> Hours {
        self.calendar.hours_at(at_ms)
    }

    /// A priority's targets, if the rule set has any.
    pub fn sla_target(&self, priority: Priority) -> Option<SlaTarget> {
        self.sla[priority.index()]
    }

    /// The deadline of a response to a customer message sent at
    /// `message_ms`, on this rule set's SLA clock, with the priority's own
    /// escalation margin. `None` if the priority has no target.
    pub fn sla_deadline(
        &self,
        priority: Priority,
        kind: ResponseKind,
        message_ms: i64,
    ) -> Option<SlaDeadline> {
        self.sla_deadline_with_margin(priority, kind, message_ms, None)
    }

    /// As [`Self::sla_deadline`], escalating `escalate_before_ms` before the
    /// deadline instead of the priority's margin when given.
    pub fn sla_deadline_with_margin(
        &self,
        priority: Priority,
        kind: ResponseKind,
        message_ms: i64,
        escalate_before_ms: Option<i64>,
    ) -> Option<SlaDeadline> {
        let target = self.sla_target(priority)?;
        let target_ms = target.for_kind(kind);
        let margin = escalate_before_ms.unwrap_or(target.escalate_before_ms);
        let due_ms = match self.sla_clock {
            SlaClock::Calendar => None,
            SlaClock::BusinessHours => self.calendar.add_business_time(message_ms, target_ms),
        }
        .unwrap_or_else(|| message_ms.saturating_add(target_ms));
        Some(SlaDeadline::with_due(
            kind, priority, message_ms, target_ms, due_ms, margin,
        ))
    }

    /// A template rendered in `language` (else the default language), with
    /// the language used. `None` for an unknown template name.
    pub fn render(
        &self,
        template: &str,
        language: Language,
        values: &TemplateValues<'_>,
    ) -> Option<(Language, String)> {
        let (language, text) = self
            .templates
            .get(template)?
            .text_for(language, self.default_language)?;
        Some((language, text.render(values)))
    }

    /// `{expected_response}`: the deadline's local time, `HH:MM` on the
    /// day of the message, else `YYYY-MM-DD HH:MM`.
    pub fn format_local(&self, at_ms: i64, relative_to_ms: i64) -> Option<String> {
        let local = self.calendar.local(at_ms)?;
        let time = format!("{:02}:{:02}", local.hour(), local.minute());
        let same_day = self
            .calendar
            .local(relative_to_ms)
            .is_some_and(|base| base.date() == local.date());
        Some(if same_day {
            time
        } else {
            format!("{} {time}", local.date())
        })
    }
}

/// The rule-file name of a stream channel kind (`CHANNEL_KIND_EMAIL` →
/// `email`).
pub(crate) fn kind_name(kind: ChannelKind) -> String {
    kind.as_str_name()
        .trim_start_matches("CHANNEL_KIND_")
        .to_ascii_lowercase()
}

fn parse_kind(name: &str) -> Result<ChannelKind, String> {
    let upper = format!("CHANNEL_KIND_{}", name.trim().to_ascii_uppercase());
    match ChannelKind::from_str_name(&upper) {
        Some(kind) if kind != ChannelKind::Unspecified && name == kind_name(kind) => Ok(kind),
        _ => {
            let known: Vec<_> = (1..64)
                .filter_map(|n| ChannelKind::try_from(n).ok())
                .map(kind_name)
                .collect();
            Err(format!(
                "unknown channel kind `{name}`, expected one of {}",
                known.join(", ")
            ))
        }
    }
}

struct Ctx<'a> {
    file: &'a str,
    errors: &'a mut Vec<RuleFileError>,
}

impl Ctx<'_> {
    fn error(&mut self, key: &str, reason: impl Into<String>) {
        self.errors.push(RuleFileError {
            file: self.file.to_owned(),
            key: key.to_owned(),
            reason: reason.into(),
        });
    }

    fn count(&self) -> usize {
        self.errors.len()
    }
}

fn parse_file(ctx: &mut Ctx<'_>, text: &str) -> Option<RuleSetFile> {
    let table: toml::Table = match toml::from_str(text) {
        Ok(table) => table,
        Err(e) => {
            ctx.error(".", format!("invalid TOML: {}", e.to_string().trim_end()));
            return None;
        }
    };
    match serde_path_to_error::deserialize(toml::Value::Table(table)) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let mut key = error.path().to_string();
            let reason = error.inner().to_string().trim_end().to_owned();
            // At the top level an unknown key is reported at `.`; name it.
            if key == "."
                && let Some(field) = reason
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
            {
                key = field.to_owned();
            }
            ctx.error(&key, reason);
            None
        }
    }
}

/// A language key: a known primary subtag, written as such.
fn parse_language(text: &str) -> Result<Language, String> {
    match Language::parse(text) {
        Some(language) if language.as_str() == text => Ok(language),
        Some(language) => Err(format!(
            "write the language as its primary subtag `{language}`, not `{text}`"
        )),
        None => Err(format!(
            "unknown language `{text}`: use an ISO 639-1 code such as \"fa\", \"ar\", \"zh\", \"en\""
        )),
    }
}

/// Names of rules, templates and rule sets: short, printable.
fn check_name(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        Err("must not be empty".into())
    } else if text.chars().count() > MAX_NAME_CHARS {
        Err(format!("longer than {MAX_NAME_CHARS} characters"))
    } else if text.chars().any(char::is_control) {
        Err("contains control characters".into())
    } else {
        Ok(())
    }
}

/// Template names: referenced from rules, so kept simple.
fn check_template_name(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= MAX_NAME_CHARS
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid template name `{text}`: use 1 to {MAX_NAME_CHARS} lowercase letters, digits, '_' or '-'"
        ))
    }
}

/// Tags and segments: one word, any script.
fn check_tag(text: &str) -> Result<(), String> {
    if text.is_empty() || text.chars().count() > MAX_NAME_CHARS {
        Err(format!(
            "tag `{text}` must have 1 to {MAX_NAME_CHARS} characters"
        ))
    } else if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!(
            "tag `{text}` must not contain spaces or control characters"
        ))
    } else {
        Ok(())
    }
}

fn compile_set(ctx: &mut Ctx<'_>, file: RuleSetFile) -> Option<RuleSet> {
    let before = ctx.count();
    if let Err(reason) = check_name(&file.name) {
        ctx.error("name", reason);
    }
    let tz = match jiff::tz::TimeZoneDatabase::bundled().get(&file.time_zone) {
        Ok(tz) => Some(tz),
        Err(_) => {
            ctx.error(
                "time_zone",
                format!(
                    "unknown time zone `{}`: use an IANA name such as \"Asia/Tehran\" or \"Europe/Berlin\"",
                    file.time_zone
                ),
            );
            None
        }
    };
    let default_language = parse_language(&file.default_language)
        .map_err(|reason| ctx.error("default_language", reason))
        .ok();
    let default_priority = match &file.default_priority {
        None => Priority::P3,
        Some(text) => Priority::parse(text).unwrap_or_else(|reason| {
            ctx.error("default_priority", reason);
            Priority::P3
        }),
    };

    // Scope.
    let mut channels = Vec::new();
    let mut seen = HashSet::new();
    for (i, id) in file.channels.iter().enumerate() {
        let key = format!("channels[{i}]");
        if let Err(reason) = omni_model::check_channel_id(id) {
            ctx.error(&key, reason);
        } else if !seen.insert(id.clone()) {
            ctx.error(&key, format!("channel `{id}` is listed twice"));
        } else {
            channels.push((key, id.clone()));
        }
    }
    let channel_kinds = parse_kinds(ctx, "channel_kinds", &file.channel_kinds);

    // Business hours.
    let mut weekly: [Vec<(u16, u16)>; 7] = Default::default();
    for (day, (name, intervals)) in file.business_hours.days().into_iter().enumerate() {
        for (i, text) in intervals.iter().enumerate() {
            match parse_interval(text) {
                Ok(interval) => weekly[day].push(interval),
                Err(reason) => ctx.error(&format!("business_hours.{name}[{i}]"), reason),
            }
        }
        weekly[day].sort_unstable();
        if weekly[day].windows(2).any(|pair| pair[1].0 < pair[0].1) {
            ctx.error(
                &format!("business_hours.{name}"),
                "intervals overlap".to_owned(),
            );
        }
    }
    let mut holidays = BTreeSet::new();
    for (i, text) in file.business_hours.holidays.iter().enumerate() {
        match parse_holiday(text) {
            Ok(dates) => holidays.extend(dates),
            Err(reason) => ctx.error(&format!("business_hours.holidays[{i}]"), reason),
        }
    }

    // SLA.
    let sla_clock = match file.sla.clock.as_deref() {
        None | Some("calendar") => SlaClock::Calendar,
        Some("business_hours") => {
            if weekly.iter().all(Vec::is_empty) {
                ctx.error(
                    "sla.clock",
                    "`business_hours` needs opening hours in [business_hours]",
                );
            }
            SlaClock::BusinessHours
        }
        Some(other) => {
            ctx.error(
                "sla.clock",
                format!("unknown clock `{other}`, expected calendar or business_hours"),
            );
            SlaClock::Calendar
        }
    };
    let mut sla = [None; 4];
    for (priority, target) in
        Priority::ALL
            .into_iter()
            .zip([&file.sla.p1, &file.sla.p2, &file.sla.p3, &file.sla.p4])
    {
        if let Some(target) = target {
            let key = format!("sla.{}", priority.as_str().to_ascii_lowercase());
            sla[priority.index()] = compile_target(ctx, &key, target);
        }
    }

    // Rate limits.
    let mut rate_limits = RateLimits::default();
    let limits = &file.rate_limits;
    let mut duration = |key: &str, value: &Option<String>, slot: &mut i64| {
        if let Some(text) = value {
            match parse_duration(text) {
                Ok(ms) => *slot = ms,
                Err(reason) => ctx.error(&format!("rate_limits.{key}"), reason),
            }
        }
    };
    duration(
        "acknowledgement_window",
        &limits.acknowledgement_window,
        &mut rate_limits.acknowledgement_window_ms,
    );
    duration(
        "customer_window",
        &limits.customer_window,
        &mut rate_limits.customer_window_ms,
    );
    duration(
        "auto_reply_window",
        &limits.auto_reply_window,
        &mut rate_limits.auto_reply_window_ms,
    );
    match limits.customer_acknowledgements {
        Some(0) => ctx.error(
            "rate_limits.customer_acknowledgements",
            "must be at least 1 (to send none, give no rule an `acknowledge` action)",
        ),
        Some(n) => rate_limits.customer_acknowledgements = n,
        None => {}
    }

    // Templates.
    let mut templates = BTreeMap::new();
    for (name, texts) in &file.templates {
        let key = format!("templates.{name}");
        if let Err(reason) = check_template_name(name) {
            ctx.error(&key, reason);
            continue;
        }
        let mut compiled = BTreeMap::new();
        for (language, text) in texts {
            let key = format!("{key}.{language}");
            let language = match parse_language(language) {
                Ok(language) => language,
                Err(reason) => {
                    ctx.error(&key, reason);
                    continue;
                }
            };
            match Template::parse(text) {
                Ok(template) => {
                    compiled.insert(language, template);
                }
                Err(reason) => ctx.error(&key, reason),
            }
        }
        if let Some(default) = default_language
            && !texts.contains_key(default.as_str())
        {
            ctx.error(
                &key,
                format!("no text in the default language `{default}` (the fallback of every other language)"),
            );
        }
        templates.insert(name.clone(), LocalizedTemplate { texts: compiled });
    }

    // Rules.
    if file.rules.len() > MAX_RULES {
        ctx.error("rules", format!("more than {MAX_RULES} rules in one file"));
    }
    let mut matcher = TextMatcherBuilder::default();
    let mut rules = Vec::with_capacity(file.rules.len());
    let mut rule_names = HashSet::new();
    for (index, rule) in file.rules.iter().enumerate().take(MAX_RULES) {
        let key = format!("rules[{index}]");
        if let Err(reason) = check_name(&rule.name) {
            ctx.error(&format!("{key}.name"), reason);
        } else if !rule_names.insert(rule.name.as_str()) {
            ctx.error(
                &format!("{key}.name"),
                format!("rule name `{}` is used twice", rule.name),
            );
        }
        let when = &rule.when;
        let mkey = format!("{key}.match");
        let mut channels = Vec::new();
        for (i, id) in when.channels.iter().enumerate() {
            match omni_model::check_channel_id(id) {
                Ok(()) => channels.push(id.clone()),
                Err(reason) => ctx.error(&format!("{mkey}.channels[{i}]"), reason),
            }
        }
        let channel_kinds = parse_kinds(ctx, &format!("{mkey}.channel_kinds"), &when.channel_kinds);
        let mut tag_list = |field: &str, values: &[String]| -> Vec<String> {
            let mut out = Vec::new();
            for (i, value) in values.iter().enumerate() {
                match check_tag(value) {
                    Ok(()) => out.push(value.clone()),
                    Err(reason) => ctx.error(&format!("{mkey}.{field}[{i}]"), reason),
                }
            }
            out
        };
        let segments = tag_list("segments", &when.segments);
        let customer_tags = tag_list("customer_tags", &when.customer_tags);
        let mut conversation = Vec::new();
        for (i, state) in when.conversation.iter().enumerate() {
            match ConversationState::parse(state) {
                Some(state) => conversation.push(state),
                None => ctx.error(
                    &format!("{mkey}.conversation[{i}]"),
                    format!(
                        "unknown conversation state `{state}`, expected new, reopened or ongoing"
                    ),
                ),
            }
        }
        let mut hours = Vec::new();
        for (i, text) in when.hours.iter().enumerate() {
            match [Hours::Inside, Hours::Outside, Hours::Holiday]
                .into_iter()
                .find(|h| h.as_str() == text)
            {
                Some(h) => hours.push(h),
                None => ctx.error(
                    &format!("{mkey}.hours[{i}]"),
                    format!("unknown hours `{text}`, expected inside, outside or holiday"),
                ),
            }
        }
        let mut languages = Vec::new();
        for (i, text) in when.languages.iter().enumerate() {
            match parse_language(text) {
                Ok(language) => languages.push(language),
                Err(reason) => ctx.error(&format!("{mkey}.languages[{i}]"), reason),
            }
        }
        let mut has_keywords = false;
        for (field, values, phrase) in [
            ("keywords", &when.keywords, false),
            ("phrases", &when.phrases, true),
        ] {
            for (i, raw) in values.iter().enumerate() {
                match prepare_keyword(raw, phrase) {
                    Ok((normalized, start, end)) => {
                        matcher.keyword(index, normalized, start, end);
                        has_keywords = true;
                    }
                    Err(reason) => ctx.error(&format!("{mkey}.{field}[{i}]"), reason),
                }
            }
        }
        let mut has_regex = false;
        for (i, pattern) in when.regex.iter().enumerate() {
            match compile_regex(pattern) {
                Ok(regex) => {
                    if matcher.regex(index, pattern, regex) {
                        has_regex = true;
                    } else {
                        ctx.error(
                            &format!("{mkey}.regex[{i}]"),
                            format!("more than {MAX_REGEXES} regexes in one rule set"),
                        );
                    }
                }
                Err(reason) => ctx.error(&format!("{mkey}.regex[{i}]"), reason),
            }
        }

        let actions = &rule.actions;
        let akey = format!("{key}.actions");
        let mut template_ref = |field: &str, name: &str| {
            if !file.templates.contains_key(name) {
                let known: Vec<_> = file.templates.keys().map(String::as_str).collect();
                ctx.error(
                    &format!("{akey}.{field}"),
                    format!(
                        "unknown template `{name}`{}",
                        if known.is_empty() {
                            " (this file defines no templates)".to_owned()
                        } else {
                            format!(", expected one of {}", known.join(", "))
                        }
                    ),
                );
            }
        };
        let mut reply_action = |field: &str, action: &Option<TemplateOrNever>| match action {
            None => None,
            Some(TemplateOrNever::Never) => Some(ReplyAction::Never),
            Some(TemplateOrNever::Template(name)) => {
                template_ref(field, name);
                Some(ReplyAction::Template(name.clone()))
            }
        };
        let acknowledge = reply_action("acknowledge", &actions.acknowledge);
        let auto_reply = reply_action("auto_reply", &actions.auto_reply);
        let mut tags = Vec::new();
        for (i, tag) in actions.tags.iter().enumerate() {
            match check_tag(tag) {
                Ok(()) => tags.push(tag.clone()),
                Err(reason) => ctx.error(&format!("{akey}.tags[{i}]"), reason),
            }
        }
        let priority = actions.priority.as_deref().and_then(|text| {
            Priority::parse(text)
                .map_err(|reason| ctx.error(&format!("{akey}.priority"), reason))
                .ok()
        });
        let escalate_before_ms = actions.escalate_before.as_deref().and_then(|text| {
            parse_duration(text)
                .map_err(|reason| ctx.error(&format!("{akey}.escalate_before"), reason))
                .ok()
        });
        rules.push(Rule {
            name: rule.name.clone(),
            enabled: rule.enabled,
            stop: rule.stop,
            channels,
            channel_kinds,
            segments,
            customer_tags,
            conversation,
            other_open_conversations: when.other_open_conversations,
            hours,
            languages,
            has_keywords,
            has_regex,
            acknowledge,
            auto_reply,
            tags,
            priority,
            escalate_before_ms,
        });
    }

    let matcher = match matcher.build() {
        Ok(matcher) => Some(matcher),
        Err(reason) => {
            ctx.error("rules", reason);
            None
        }
    };

    if ctx.count() > before {
        return None;
    }
    Some(RuleSet {
        name: file.name,
        file: ctx.file.to_owned(),
        time_zone: file.time_zone,
        calendar: Calendar::new(tz?, weekly, holidays),
        default_language: default_language?,
        default_priority,
        sla_clock,
        sla,
        rate_limits,
        templates,
        rules,
        matcher: matcher?,
        channels,
        channel_kinds,
    })
}

fn parse_kinds(ctx: &mut Ctx<'_>, key: &str, names: &[String]) -> Vec<ChannelKind> {
    let mut kinds = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match parse_kind(name) {
            Ok(kind) if kinds.contains(&kind) => {
                ctx.error(
                    &format!("{key}[{i}]"),
                    format!("channel kind `{name}` is listed twice"),
                );
            }
            Ok(kind) => kinds.push(kind),
            Err(reason) => ctx.error(&format!("{key}[{i}]"), reason),
        }
    }
    kinds
}

fn compile_target(ctx: &mut Ctx<'_>, key: &str, target: &SlaTargetFile) -> Option<SlaTarget> {
    let mut duration = |field: &str, text: &str| {
        parse_duration(text)
            .map_err(|reason| ctx.error(&format!("{key}.{field}"), reason))
            .ok()
    };
    let first = duration("first_response", &target.first_response);
    let next = duration("next_response", &target.next_response);
    let escalate = match &target.escalate_before {
        Some(text) => duration("escalate_before", text),
        None => Some(0),
    };
    Some(SlaTarget {
        first_response_ms: first?,
        next_response_ms: next?,
        escalate_before_ms: escalate?,
    })
}
