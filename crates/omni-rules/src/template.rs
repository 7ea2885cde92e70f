//! Reply templates: text with `{variable}` or `{variable|fallback}`
//! placeholders, parsed when the rule file loads so a misspelt variable is
//! a load error, never a customer seeing "{custmer_name}".

use std::fmt;

/// Longest template text (characters): a reply, not a newsletter.
pub(crate) const MAX_TEMPLATE_CHARS: usize = 4096;

/// Longest customer name put into a reply (characters).
const MAX_NAME_CHARS: usize = 64;

/// The values a template can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    /// The customer's display name, cleaned (control, format and bidi
    /// characters removed, at most 64 characters).
    CustomerName,
    /// The local time of the applicable SLA deadline in the rule set's
    /// time zone: `HH:MM` on the day of the message, `YYYY-MM-DD HH:MM`
    /// on a later day. Empty when no SLA target applies.
    ExpectedResponse,
    /// The conversation's reference, as the caller gives it.
    ConversationRef,
    /// The channel's display name, or its id.
    Channel,
}

impl Variable {
    const ALL: [Self; 4] = [
        Self::CustomerName,
        Self::ExpectedResponse,
        Self::ConversationRef,
        Self::Channel,
    ];

    /// The name templates use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::CustomerName => "customer_name",
            Self::ExpectedResponse => "expected_response",
            Self::ConversationRef => "conversation_ref",
            Self::Channel => "channel",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// The values of a rendering; empty ones use the placeholder's fallback.
#[derive(Debug, Clone, Copy, Default)]
pub struct TemplateValues<'a> {
    pub customer_name: Option<&'a str>,
    pub expected_response: Option<&'a str>,
    pub conversation_ref: &'a str,
    pub channel: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Value {
        variable: Variable,
        fallback: String,
    },
}

/// A parsed template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Template {
    /// Parses `{variable}`, `{variable|fallback}`, `{{` and `}}` (literal
    /// braces). Errors name the problem, e.g. an unknown variable.
    pub fn parse(source: &str) -> Result<Self, String> {
        if source.trim().is_empty() {
            return Err("template text is empty".into());
        }
        if source.chars().count() > MAX_TEMPLATE_CHARS {
            return Err(format!(
                "template text is longer than {MAX_TEMPLATE_CHARS} characters"
            ));
        }
        let mut segments = Vec::new();
        let mut text = String::new();
        let mut rest = source;
        while let Some(index) = rest.find(['{', '}']) {
            text.push_str(&rest[..index]);
            let brace = &rest[index..];
            if let Some(after) = brace
                .strip_prefix("{{")
                .or_else(|| brace.strip_prefix("}}"))
            {
                text.push_str(&brace[..1]);
                rest = after;
                continue;
            }
            if brace.starts_with('}') {
                return Err("unmatched `}` (write `}}` for a literal brace)".into());
            }
            let Some(end) = brace.find('}') else {
                return Err("unclosed `{` (write `{{` for a literal brace)".into());
            };
            let inner = &brace[1..end];
            if inner.contains('{') {
                return Err(format!("`{{` inside the placeholder `{{{inner}}}`"));
            }
            let (name, fallback) = inner.split_once('|').unwrap_or((inner, ""));
            let name = name.trim();
            let Some(variable) = Variable::parse(name) else {
                let known: Vec<_> = Variable::ALL.iter().map(|v| v.name()).collect();
                return Err(format!(
                    "unknown variable `{{{name}}}`, expected one of {}",
                    known.join(", ")
                ));
            };
            if !text.is_empty() {
                segments.push(Segment::Text(std::mem::take(&mut text)));
            }
            segments.push(Segment::Value {
                variable,
                fallback: fallback.to_owned(),
            });
            rest = &brace[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            segments.push(Segment::Text(text));
        }
        Ok(Self {
            source: source.to_owned(),
            segments,
        })
    }

    /// The variables this template uses.
    pub fn variables(&self) -> impl Iterator<Item = Variable> + '_ {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Value { variable, .. } => Some(*variable),
            Segment::Text(_) => None,
        })
    }

    /// The text with every placeholder filled. Pure: the same values give
    /// the same text.
    pub fn render(&self, values: &TemplateValues<'_>) -> String {
        let mut out = String::with_capacity(self.source.len() + 32);
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => out.push_str(text),
                Segment::Value { variable, fallback } => {
                    let value = match variable {
                        Variable::CustomerName => clean_name(values.customer_name.unwrap_or("")),
                        Variable::ExpectedResponse => {
                            values.expected_response.unwrap_or("").to_owned()
                        }
                        Variable::ConversationRef => clean_name(values.conversation_ref),
                        Variable::Channel => clean_name(values.channel),
                    };
                    if value.is_empty() {
                        out.push_str(fallback);
                    } else {
                        out.push_str(&value);
                    }
                }
            }
        }
        out
    }
}

/// A name as it may appear in a reply: no controls, no format characters
/// (a right-to-left override in a display name must not reorder the
/// reply), one space between words, bounded length.
fn clean_name(name: &str) -> String {
    let mut out = String::new();
    let mut space = false;
    for c in name.chars().take(MAX_NAME_CHARS * 4) {
        if c.is_whitespace() {
            space = !out.is_empty();
        } else if c.is_control() || is_format(c) {
            continue;
        } else {
            if out.chars().count() >= MAX_NAME_CHARS {
                break;
            }
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    out
}

fn is_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> TemplateValues<'static> {
        TemplateValues {
            customer_name: Some("Sara"),
            expected_response: Some("09:15"),
            conversation_ref: "C-1042",
            channel: "Telegram",
        }
    }

    #[test]
    fn renders_every_variable() {
        let template = Template::parse(
            "Hi {customer_name}, we got your message on {channel} (ref {conversation_ref}) and will answer by {expected_response}.",
        )
        .unwrap();
        assert_eq!(
            template.render(&values()),
            "Hi Sara, we got your message on Telegram (ref C-1042) and will answer by 09:15."
        );
        assert_eq!(template.variables().count(), 4);
    }

    #[test]
    fn empty_values_use_the_fallback() {
        let template = Template::parse("سلام {customer_name|دوست عزیز}، پیام شما رسید").unwrap();
        let mut values = values();
        values.customer_name = None;
        assert_eq!(template.render(&values), "سلام دوست عزیز، پیام شما رسید");
        values.customer_name = Some(" \u{200F} ");
        assert_eq!(template.render(&values), "سلام دوست عزیز، پیام شما رسید");
        values.customer_name = Some("مریم");
        assert_eq!(template.render(&values), "سلام مریم، پیام شما رسید");
    }

    #[test]
    fn names_are_cleaned() {
        let template = Template::parse("{customer_name}!").unwrap();
        let mut values = values();
        values.customer_name = Some("Eve\u{202E}\n\tlive");
        assert_eq!(template.render(&values), "Eve live!");
        let long = "x".repeat(500);
        values.customer_name = Some(&long);
        assert_eq!(template.render(&values).chars().count(), MAX_NAME_CHARS + 1);
    }

    #[test]
    fn literal_braces_and_errors() {
        let template = Template::parse("{{ref}} = {conversation_ref}").unwrap();
        assert_eq!(template.render(&values()), "{ref} = C-1042");
        let error = Template::parse("Hello {custmer_name}").unwrap_err();
        assert!(
            error.contains("unknown variable `{custmer_name}`"),
            "{error}"
        );
        assert!(error.contains("customer_name"), "{error}");
        assert!(
            Template::parse("Hello {customer_name")
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            Template::parse("Hello }")
                .unwrap_err()
                .contains("unmatched")
        );
        assert!(Template::parse("  ").unwrap_err().contains("empty"));
        assert!(
            Template::parse(&"a".repeat(5000))
                .unwrap_err()
                .contains("longer")
        );
    }
}
