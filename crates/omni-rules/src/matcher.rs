//! Text conditions of a whole rule set, compiled once: every keyword and
//! phrase of every rule in one Aho-Corasick automaton, so a message is
//! scanned once however many rules there are.
//!
//! Regexes go into a `RegexSet`, which decides all of them in one pass
//! with a lazy DFA: about 0.1-0.4 µs for 200 patterns on a short message.
//! Except one case: the DFA handles Unicode word boundaries (`\b`) only on
//! ASCII text, and on Persian or Chinese text a set with `\b` fell back to
//! an engine that took 0.3-0.8 ms for 200 patterns. So on ASCII text one
//! set runs every regex. On other text a second set runs every regex with
//! its word-boundary assertions removed: a necessary condition (dropping
//! an assertion only allows more matches), decided by the DFA; only the
//! few regexes that pass it run on their own, with their assertions.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use crate::normalize::{is_boundary, is_unspaced, normalize};

/// Compiled size bound of one regex (bytes): enough for any sensible
/// pattern, small enough that a pasted monster is refused at load.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Lazy DFA cache bound of one regex; matching stays linear when it fills.
const REGEX_DFA_LIMIT: usize = 256 << 10;
/// Compiled size bound of a rule set's regexes together, in one set.
const REGEX_SET_SIZE_LIMIT: usize = 64 << 20;
/// Lazy DFA cache bound of a set.
const REGEX_SET_DFA_LIMIT: usize = 8 << 20;
/// Most regexes one rule set may hold (with the size bounds above, this
/// bounds the memory of a rule set's regexes).
pub(crate) const MAX_REGEXES: usize = 2_000;
/// Longest regex source (characters).
const MAX_REGEX_CHARS: usize = 1000;
/// Longest keyword or phrase (characters).
const MAX_KEYWORD_CHARS: usize = 200;

/// One rule's use of a pattern: whether the match must start and end at
/// word boundaries.
#[derive(Debug, Clone, Copy)]
struct KeywordUse {
    rule: u32,
    word_start: bool,
    word_end: bool,
}

#[derive(Debug, Default)]
pub(crate) struct TextMatcherBuilder {
    patterns: Vec<String>,
    pattern_index: HashMap<String, usize>,
    uses: Vec<Vec<KeywordUse>>,
    /// Every regex: (rule, source, has word-boundary assertions, compiled).
    regexes: Vec<(u32, String, bool, Regex)>,
}

/// A keyword or phrase as written, checked and normalized.
pub(crate) fn prepare_keyword(raw: &str, phrase: bool) -> Result<(String, bool, bool), String> {
    let trimmed = raw.trim();
    if trimmed.chars().count() > MAX_KEYWORD_CHARS {
        return Err(format!("longer than {MAX_KEYWORD_CHARS} characters"));
    }
    let (body, open_start) = match trimmed.strip_prefix('*') {
        Some(rest) => (rest, true),
        None => (trimmed, false),
    };
    let (body, open_end) = match body.strip_suffix('*') {
        Some(rest) => (rest, true),
        None => (body, false),
    };
    if body.contains('*') {
        return Err(format!(
            "`{raw}`: `*` may only stand at the start or end of a keyword"
        ));
    }
    let normalized = normalize(body);
    if normalized.is_empty() {
        return Err(format!("`{raw}` is empty after normalization"));
    }
    if !phrase && normalized.contains(' ') {
        return Err(format!(
            "`{raw}` is more than one word: list it under `phrases`"
        ));
    }
    if phrase && !normalized.contains(' ') && !normalized.chars().any(is_unspaced) {
        return Err(format!("`{raw}` is one word: list it under `keywords`"));
    }
    let first_unspaced = normalized.chars().next().is_some_and(is_unspaced);
    let last_unspaced = normalized.chars().next_back().is_some_and(is_unspaced);
    Ok((
        normalized,
        !open_start && !first_unspaced,
        !open_end && !last_unspaced,
    ))
}

/// A regex as written, compiled on its own so its error names its key.
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.chars().count() > MAX_REGEX_CHARS {
        return Err(format!("regex longer than {MAX_REGEX_CHARS} characters"));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .build()
        .map_err(|e| format!("invalid regex: {}", one_line(&e.to_string())))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl TextMatcherBuilder {
    pub(crate) fn keyword(&mut self, rule: usize, normalized: String, start: bool, end: bool) {
        let index = *self
            .pattern_index
            .entry(normalized.clone())
            .or_insert_with(|| {
                self.patterns.push(normalized);
                self.uses.push(Vec::new());
                self.patterns.len() - 1
            });
        self.uses[index].push(KeywordUse {
            rule: rule as u32,
            word_start: start,
            word_end: end,
        });
    }

    /// A regex `source` compiled by [`compile_regex`]; `false` once the
    /// rule set has [`MAX_REGEXES`].
    pub(crate) fn regex(&mut self, rule: usize, source: &str, regex: Regex) -> bool {
        if self.regexes.len() >= MAX_REGEXES {
            return false;
        }
        self.regexes.push((
            rule as u32,
            source.to_owned(),
            has_word_assertion(source),
            regex,
        ));
        true
    }

    pub(crate) fn build(self) -> Result<TextMatcher, String> {
        let keywords = if self.patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .build(&self.patterns)
                    .map_err(|e| format!("keywords and phrases cannot be compiled: {e}"))?,
            )
        };
        let set = |sources: Vec<String>| -> Result<Option<RegexSet>, String> {
            if sources.is_empty() {
                return Ok(None);
            }
            RegexSetBuilder::new(sources)
                .size_limit(REGEX_SET_SIZE_LIMIT)
                .dfa_size_limit(REGEX_SET_DFA_LIMIT)
                .build()
                .map(Some)
                .map_err(|e| {
                    format!(
                        "the rule set's regexes together are too large: {}",
                        one_line(&e.to_string())
                    )
                })
        };
        let mut rules = Vec::with_capacity(self.regexes.len());
        let mut ascii = Vec::with_capacity(self.regexes.len());
        let mut relaxed = Vec::with_capacity(self.regexes.len());
        let mut checks = Vec::with_capacity(self.regexes.len());
        let mut always = Vec::new();
        for (rule, source, bounded, regex) in self.regexes {
            let (relaxed_source, check) = if bounded {
                let stripped = strip_word_assertions(&source);
                let valid = RegexBuilder::new(&stripped)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .is_ok();
                if valid {
                    (stripped, Some(regex))
                } else {
                    // An assertion in an odd place (`\b+`) leaves no valid
                    // regex behind: such a pattern runs on its own on every
                    // non-ASCII text, and its place in the set never matches.
                    always.push((rule, regex));
                    (String::from(r"[^\s\S]"), None)
                }
            } else {
                (source.clone(), None)
            };
            rules.push(rule);
            ascii.push(source);
            relaxed.push(relaxed_source);
            checks.push(check);
        }
        Ok(TextMatcher {
            keywords,
            uses: self.uses,
            ascii: set(ascii)?,
            relaxed: set(relaxed)?,
            rules,
            checks,
            always,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TextMatcher {
    keywords: Option<AhoCorasick>,
    uses: Vec<Vec<KeywordUse>>,
    /// Every regex, for ASCII text.
    ascii: Option<RegexSet>,
    /// Every regex without its word-boundary assertions, for other text
    /// (the same pattern order).
    relaxed: Option<RegexSet>,
    /// The rule of each pattern.
    rules: Vec<u32>,
    /// Per pattern: the regex itself when its relaxed form is only a
    /// necessary condition.
    checks: Vec<Option<Regex>>,
    /// Regexes without a relaxed form, run on their own on non-ASCII text.
    always: Vec<(u32, Regex)>,
}

/// Whether a regex source has `\b`, `\B`, `\<` or `\>` (in any form,
/// e.g. `\b{start}`). Only decides how it runs, never whether it matches:
/// a false positive costs time only.
fn has_word_assertion(source: &str) -> bool {
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && matches!(chars.next(), Some('b' | 'B' | '<' | '>')) {
            return true;
        }
    }
    false
}

/// `source` without its word-boundary assertions (`\b`, `\B`, `\<`,
/// `\>`, `\b{start}`, ...) and any quantifier on them (else `x\B{2}`
/// would become `x{2}`). Removing a zero-width condition can only add
/// matches, so the result matching is necessary for `source` to match.
fn strip_word_assertions(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(assertion @ ('b' | 'B' | '<' | '>')) => {
                if assertion == 'b' && chars.peek() == Some(&'{') {
                    skip_braces(&mut chars);
                }
                // A quantifier on the assertion, possibly lazy.
                match chars.peek() {
                    Some('*' | '+' | '?') => {
                        chars.next();
                    }
                    Some('{') => skip_braces(&mut chars),
                    _ => continue,
                }
                if chars.peek() == Some(&'?') {
                    chars.next();
                }
            }
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn skip_braces(chars: &mut impl Iterator<Item = char>) {
    for c in chars.by_ref() {
        if c == '}' {
            break;
        }
    }
}

impl TextMatcher {
    /// Marks in `hits` (one flag per rule) the rules with a keyword or
    /// phrase in `text` (normalized).
    pub(crate) fn keyword_hits(&self, text: &str, hits: &mut [bool]) {
        let Some(keywords) = &self.keywords else {
            return;
        };
        for found in keywords.find_overlapping_iter(text) {
            let before = || text[..found.start()].chars().next_back();
            let after = || text[found.end()..].chars().next();
            for keyword in &self.uses[found.pattern().as_usize()] {
                let rule = keyword.rule as usize;
                if hits[rule] {
                    continue;
                }
                if (!keyword.word_start || is_boundary(before()))
                    && (!keyword.word_end || is_boundary(after()))
                {
                    hits[rule] = true;
                }
            }
        }
    }

    /// Marks in `hits` (one flag per rule) the rules with a regex matching
    /// `text` (normalized).
    pub(crate) fn regex_hits(&self, text: &str, hits: &mut [bool]) {
        if text.is_ascii() {
            if let Some(set) = &self.ascii {
                for pattern in set.matches(text).iter() {
                    hits[self.rules[pattern] as usize] = true;
                }
            }
            return;
        }
        if let Some(set) = &self.relaxed {
            for pattern in set.matches(text).iter() {
                let rule = self.rules[pattern] as usize;
                if hits[rule] {
                    continue;
                }
                hits[rule] = match &self.checks[pattern] {
                    None => true,
                    Some(regex) => regex.is_match(text),
                };
            }
        }
        for (rule, regex) in &self.always {
            let rule = *rule as usize;
            if !hits[rule] && regex.is_match(text) {
                hits[rule] = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(keywords: &[(&str, bool)], regexes: &[&str]) -> TextMatcher {
        let mut builder = TextMatcherBuilder::default();
        for (rule, (keyword, phrase)) in keywords.iter().enumerate() {
            let (normalized, start, end) = prepare_keyword(keyword, *phrase).unwrap();
            builder.keyword(rule, normalized, start, end);
        }
        for (i, regex) in regexes.iter().enumerate() {
            assert!(builder.regex(keywords.len() + i, regex, compile_regex(regex).unwrap()));
        }
        builder.build().unwrap()
    }

    fn hits(matcher: &TextMatcher, rules: usize, text: &str) -> Vec<usize> {
        let mut hits = vec![false; rules];
        let text = normalize(text);
        matcher.keyword_hits(&text, &mut hits);
        matcher.regex_hits(&text, &mut hits);
        (0..rules).filter(|&i| hits[i]).collect()
    }

    #[test]
    fn keywords_respect_word_boundaries_in_spaced_scripts() {
        let m = matcher(
            &[("refund", false), ("refund*", false), ("money back", true)],
            &[],
        );
        assert_eq!(hits(&m, 3, "I want a REFUND!"), [0, 1]);
        assert_eq!(hits(&m, 3, "was it refunded?"), [1]);
        assert_eq!(hits(&m, 3, "prerefund"), Vec::<usize>::new());
        assert_eq!(hits(&m, 3, "I want my  money\nback"), [2]);
        assert_eq!(hits(&m, 3, "moneyback"), Vec::<usize>::new());
        // A Chinese neighbour is a boundary.
        assert_eq!(hits(&m, 3, "我要refund谢谢"), [0, 1]);
    }

    #[test]
    fn persian_and_arabic_keywords_match_every_spelling() {
        let m = matcher(
            &[
                ("سفارش", false),
                ("*استرداد", false),
                ("پس گرفتن پول", true),
            ],
            &[],
        );
        // Persian with ZWNJ and Arabic-keyboard yeh/kaf.
        assert_eq!(hits(&m, 3, "سفارش من كجاست؟"), [0]);
        // The Arabic article joined to the word, with diacritics and tatweel.
        assert_eq!(hits(&m, 3, "أريد الاسْتـــرْداد"), [1]);
        assert_eq!(hits(&m, 3, "می‌خواهم پس گرفتن پول"), [2]);
        // A keyword inside a longer word does not match.
        assert_eq!(hits(&m, 3, "سفارشات"), Vec::<usize>::new());
    }

    #[test]
    fn cjk_keywords_match_as_substrings() {
        let m = matcher(&[("退款", false), ("ＯＲＤＥＲ", false)], &[]);
        assert_eq!(hits(&m, 2, "我想申请退款可以吗"), [0]);
        // Full-width keyword and text both normalize; "order" is Latin, so
        // it still needs boundaries: a digit after it is not one.
        assert_eq!(hits(&m, 2, "ＯＲＤＥＲ １２３"), [1]);
        assert_eq!(hits(&m, 2, "ＯＲＤＥＲ１２３"), Vec::<usize>::new());
    }

    #[test]
    fn regexes_run_on_normalized_text() {
        let m = matcher(&[], &[r"\border\s*#?\d{3,}", r"(?:سفارش|طلب)\s*\d+"]);
        assert_eq!(hits(&m, 2, "ＯＲＤＥＲ１２３"), [0]);
        assert_eq!(hits(&m, 2, "Order #55821"), [0]);
        assert_eq!(hits(&m, 2, "سفارش ۱۲۳"), [1]);
        assert_eq!(hits(&m, 2, "طلب ٤٥٦"), [1]);
    }

    #[test]
    fn word_boundaries_hold_on_every_script_and_engine() {
        let m = matcher(&[], &[r"\bسفارش\s*\d+", r"\border\d+", r"\d{5}"]);
        // Non-ASCII text: the first two are confirmed one by one after the
        // relaxed set, the third is decided by the set.
        assert_eq!(hits(&m, 3, "لطفا سفارش ۱۲۳۴۵"), [0, 2]);
        assert_eq!(hits(&m, 3, "پیش\u{200C}سفارش ۱۲"), Vec::<usize>::new());
        assert_eq!(hits(&m, 3, "订单 order12345"), [1, 2]);
        // Regex `\b` is Unicode's: a Han letter is a word character.
        assert_eq!(hits(&m, 3, "订单order12345"), [2]);
        // ASCII text: one set for all.
        assert_eq!(hits(&m, 3, "my order12345"), [1, 2]);
        assert_eq!(hits(&m, 3, "reorder123"), Vec::<usize>::new());
        assert!(has_word_assertion(r"\bx"));
        assert!(has_word_assertion(r"x\b{end}"));
        assert!(!has_word_assertion(r"\\b"));
        assert!(!has_word_assertion(r"\d+"));
        assert_eq!(strip_word_assertions(r"\bسفارش\s*\d+\b"), r"سفارش\s*\d+");
        assert_eq!(strip_word_assertions(r"\b{start}x\B\<y\>\\b"), r"xy\\b");
        assert_eq!(strip_word_assertions(r"x\B{2}y\b+?z\b*"), "xyz");
    }

    const HYBRID_PATTERNS: [&str; 7] = [
        r"\bسفارش\s*\d+",
        r"\border\d+",
        r"\d{5}",
        r"\b(?:refund|退款)\b",
        r"x\b+ ",
        r"\Border",
        r"(?:سفارش|order)\s*\d{2}",
    ];

    fn hybrid() -> &'static (TextMatcher, Vec<Regex>) {
        static HYBRID: std::sync::OnceLock<(TextMatcher, Vec<Regex>)> = std::sync::OnceLock::new();
        HYBRID.get_or_init(|| {
            let regexes = HYBRID_PATTERNS
                .iter()
                .map(|p| Regex::new(p).unwrap())
                .collect();
            (matcher(&[], &HYBRID_PATTERNS), regexes)
        })
    }

    proptest::proptest! {
        /// The sets, relaxed forms and one-by-one checks decide exactly
        /// what each regex alone decides.
        #[test]
        fn the_hybrid_agrees_with_each_regex_alone(
            words in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("order"),
                    proptest::strategy::Just("reorder"),
                    proptest::strategy::Just("سفارش"),
                    proptest::strategy::Just("پیش"),
                    proptest::strategy::Just("退款"),
                    proptest::strategy::Just("refund"),
                    proptest::strategy::Just("12345"),
                    proptest::strategy::Just("۶۷"),
                    proptest::strategy::Just("x"),
                    proptest::strategy::Just(" "),
                    proptest::strategy::Just("\u{200C}"),
                    proptest::strategy::Just("!"),
                ],
                0..12,
            )
        ) {
            let (m, regexes) = hybrid();
            let patterns = HYBRID_PATTERNS;
            let text = normalize(&words.concat());
            let expected: Vec<usize> = patterns
                .iter()
                .enumerate()
                .filter(|&(i, _)| regexes[i].is_match(&text))
                .map(|(i, _)| i)
                .collect();
            let mut hits = vec![false; patterns.len()];
            m.regex_hits(&text, &mut hits);
            let found: Vec<usize> = (0..patterns.len()).filter(|&i| hits[i]).collect();
            proptest::prop_assert_eq!(found, expected, "text {:?}", text);
        }
    }

    #[test]
    fn quantified_assertions_keep_their_meaning() {
        let m = matcher(&[], &[r"x\b+ سفارش"]);
        assert_eq!(hits(&m, 1, "x سفارش"), [0]);
        assert_eq!(hits(&m, 1, "xسفارش"), Vec::<usize>::new());
        assert_eq!(hits(&m, 1, "x order"), Vec::<usize>::new());
    }

    #[test]
    fn bad_keywords_and_regexes_are_explained() {
        assert!(
            prepare_keyword("money back", false)
                .unwrap_err()
                .contains("phrases")
        );
        assert!(
            prepare_keyword("refund", true)
                .unwrap_err()
                .contains("keywords")
        );
        assert!(
            prepare_keyword("\u{200C}", false)
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            prepare_keyword("re*fund", false)
                .unwrap_err()
                .contains("`*`")
        );
        assert!(
            compile_regex("order(")
                .unwrap_err()
                .starts_with("invalid regex")
        );
        assert!(compile_regex(r"(a)\1").is_err(), "no backreferences");
        assert!(
            compile_regex(r"\w{1000}\w{1000}\w{1000}").is_err(),
            "size limit"
        );
    }
}
