//! HTML to readable plain text, for HTML-only mail.
//!
//! A single forward pass over the input with no element stack: every
//! construct (tag, comment, script body, entity) is consumed once, so work
//! is linear in the input whatever its nesting, and unterminated constructs
//! end the scan instead of being retried.

/// Longest entity name looked at (`&CounterClockwiseContourIntegral;` is
/// the longest HTML has); anything longer is text.
const MAX_ENTITY_CHARS: usize = 32;
/// Deepest list nesting shown as indentation.
const MAX_LIST_INDENT: usize = 8;

/// Readable text of an HTML document.
///
/// - block elements (`p`, `div`, `h1`–`h6`, `table` rows...) start new
///   lines, paragraphs are separated by one blank line, `<br>` is a line
///   break, `<hr>` a blank line;
/// - `blockquote` content is quoted with `> ` (per nesting level), as a
///   plain-text client would, so [`super::strip_quoted_reply`] finds it;
/// - list items become `- ` lines, indented two spaces per nesting level;
/// - table cells of a row are separated by a space;
/// - links keep their text (the URL is dropped), images are dropped;
/// - `script`, `style`, `title`, `template`, Outlook's `xml` islands and
///   comments are dropped with their content;
/// - white space is collapsed as a browser does, except inside `<pre>`;
/// - character references are decoded (named ones that mail uses, and every
///   numeric one; invalid code points become U+FFFD); `&nbsp;` is a space.
pub fn html_to_text(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut w = Writer::new(html.len());
    let bytes = html.as_bytes();
    let mut pos = 0;
    let mut pre_depth = 0usize;
    let mut list_depth = 0usize;
    while pos < bytes.len() {
        match bytes[pos] {
            b'<' => {
                let Some(next) = bytes.get(pos + 1) else {
                    w.text_char('<', pre_depth > 0);
                    break;
                };
                if lower[pos..].starts_with("<!--") {
                    pos = lower[pos + 4..]
                        .find("-->")
                        .map_or(bytes.len(), |i| pos + 4 + i + 3);
                    continue;
                }
                if *next == b'!' || *next == b'?' {
                    pos = find_byte(bytes, pos, b'>').map_or(bytes.len(), |i| i + 1);
                    continue;
                }
                let closing = *next == b'/';
                let name_start = pos + 1 + usize::from(closing);
                let name_len = bytes[name_start..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric())
                    .count();
                if name_len == 0 || !bytes[name_start].is_ascii_alphabetic() {
                    // `a < b`, `<3`: not a tag.
                    w.text_char('<', pre_depth > 0);
                    pos += 1;
                    continue;
                }
                let name = &lower[name_start..name_start + name_len];
                let Some(tag_end) = find_tag_end(bytes, name_start + name_len) else {
                    // An unterminated tag swallows the rest, as in a browser.
                    break;
                };
                pos = tag_end + 1;
                let self_closing = tag_end > 0 && bytes[tag_end - 1] == b'/';
                if !closing && is_raw_text(name) && !self_closing {
                    let close = format!("</{name}");
                    pos = lower[pos..].find(&close).map_or(bytes.len(), |i| {
                        let end = pos + i;
                        find_byte(bytes, end, b'>').map_or(bytes.len(), |j| j + 1)
                    });
                    continue;
                }
                match name {
                    "br" => w.line_break(),
                    "p" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "table" | "dl" | "figure"
                    | "address" | "center" => w.paragraph(),
                    "blockquote" => {
                        w.paragraph();
                        w.quote = if closing {
                            w.quote.saturating_sub(1)
                        } else {
                            w.quote.saturating_add(1)
                        };
                    }
                    "hr" => w.paragraph(),
                    "ul" | "ol" | "menu" => {
                        if closing {
                            list_depth = list_depth.saturating_sub(1);
                        } else {
                            list_depth = list_depth.saturating_add(1);
                        }
                        if list_depth == 0 {
                            w.paragraph();
                        } else {
                            w.block();
                        }
                    }
                    "li" => {
                        w.block();
                        if !closing {
                            let indent = list_depth.clamp(1, MAX_LIST_INDENT) - 1;
                            for _ in 0..indent {
                                w.raw("  ");
                            }
                            w.raw("- ");
                        }
                    }
                    "pre" => {
                        w.paragraph();
                        pre_depth = if closing {
                            pre_depth.saturating_sub(1)
                        } else {
                            pre_depth.saturating_add(1)
                        };
                    }
                    "div" | "tr" | "section" | "article" | "header" | "footer" | "nav"
                    | "aside" | "main" | "form" | "fieldset" | "dt" | "dd" | "caption"
                    | "figcaption" | "tbody" | "thead" | "tfoot" | "html" | "body" => w.block(),
                    "td" | "th" if !closing => w.space(),
                    _ => {}
                }
            }
            b'&' => {
                let (decoded, used) = decode_entity(&html[pos..]);
                match decoded {
                    Some(text) => {
                        for c in text.chars() {
                            w.text_char(c, pre_depth > 0);
                        }
                        pos += used;
                    }
                    None => {
                        w.text_char('&', pre_depth > 0);
                        pos += 1;
                    }
                }
            }
            _ => {
                let end = bytes[pos..]
                    .iter()
                    .position(|&b| b == b'<' || b == b'&')
                    .map_or(bytes.len(), |i| pos + i);
                for c in html[pos..end].chars() {
                    w.text_char(c, pre_depth > 0);
                }
                pos = end;
            }
        }
    }
    w.finish()
}

fn find_byte(bytes: &[u8], from: usize, needle: u8) -> Option<usize> {
    memchr::memchr(needle, bytes.get(from..)?).map(|i| from + i)
}

/// Index of the `>` closing a tag whose attributes start at `from`, skipping
/// quoted attribute values.
fn find_tag_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut quote = None;
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate().skip(from) {
        match (quote, b) {
            (None, b'>') => return Some(i),
            // Only a quote right after `=` (possibly spaced) opens a value;
            // stray quotes elsewhere are attribute junk.
            (None, b'"' | b'\'') if prev == b'=' => quote = Some(b),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            prev = b;
        }
    }
    None
}

/// Elements whose content is not text to show.
fn is_raw_text(name: &str) -> bool {
    matches!(name, "script" | "style" | "title" | "template" | "xml")
}

/// Decodes a character reference at the start of `s` (which starts with
/// `&`): the text and the number of bytes consumed.
fn decode_entity(s: &str) -> (Option<String>, usize) {
    let body = &s[1..];
    let end = body
        .char_indices()
        .take(MAX_ENTITY_CHARS + 1)
        .find(|&(_, c)| c == ';' || !(c.is_ascii_alphanumeric() || c == '#'))
        .map(|(i, c)| (i, c == ';'));
    let Some((end, has_semicolon)) = end else {
        return (None, 0);
    };
    let name = &body[..end];
    let used = 1 + end + usize::from(has_semicolon);
    if let Some(num) = name.strip_prefix('#') {
        let value = if let Some(hex) = num.strip_prefix('x').or_else(|| num.strip_prefix('X')) {
            u32::from_str_radix(hex, 16).ok()
        } else {
            num.parse::<u32>().ok()
        };
        let Some(value) = value else {
            return (None, 0);
        };
        let c = Some(value)
            .filter(|&v| v != 0)
            .and_then(char::from_u32)
            .unwrap_or('\u{FFFD}');
        return (Some(c.to_string()), used);
    }
    if !has_semicolon && !matches!(name, "amp" | "lt" | "gt" | "quot" | "nbsp") {
        return (None, 0);
    }
    let text = match name {
        "amp" => "&",
        "lt" => "<",
        "gt" => ">",
        "quot" => "\"",
        "apos" => "'",
        "nbsp" | "ensp" | "emsp" | "thinsp" => " ",
        "shy" | "zwsp" => "",
        "zwnj" => "\u{200C}",
        "zwj" => "\u{200D}",
        "lrm" => "\u{200E}",
        "rlm" => "\u{200F}",
        "copy" => "©",
        "reg" => "®",
        "trade" => "™",
        "hellip" => "…",
        "mdash" => "—",
        "ndash" => "–",
        "lsquo" => "‘",
        "rsquo" => "’",
        "sbquo" => "‚",
        "ldquo" => "“",
        "rdquo" => "”",
        "bdquo" => "„",
        "laquo" => "«",
        "raquo" => "»",
        "lsaquo" => "‹",
        "rsaquo" => "›",
        "bull" => "•",
        "middot" => "·",
        "euro" => "€",
        "pound" => "£",
        "yen" => "¥",
        "cent" => "¢",
        "sect" => "§",
        "para" => "¶",
        "deg" => "°",
        "plusmn" => "±",
        "times" => "×",
        "divide" => "÷",
        "frac12" => "½",
        "frac14" => "¼",
        "frac34" => "¾",
        "iexcl" => "¡",
        "iquest" => "¿",
        "larr" => "←",
        "rarr" => "→",
        "uarr" => "↑",
        "darr" => "↓",
        "auml" => "ä",
        "ouml" => "ö",
        "uuml" => "ü",
        "Auml" => "Ä",
        "Ouml" => "Ö",
        "Uuml" => "Ü",
        "szlig" => "ß",
        "eacute" => "é",
        "egrave" => "è",
        "ecirc" => "ê",
        "Eacute" => "É",
        "aacute" => "á",
        "agrave" => "à",
        "acirc" => "â",
        "iacute" => "í",
        "oacute" => "ó",
        "uacute" => "ú",
        "ntilde" => "ñ",
        "Ntilde" => "Ñ",
        "ccedil" => "ç",
        "Ccedil" => "Ç",
        _ => return (None, 0),
    };
    (Some(text.to_owned()), used)
}

/// Most `>` markers put in front of a line for nested blockquotes.
const MAX_QUOTE_MARKERS: usize = 8;

/// Builds the output with pending separators, so runs of empty blocks never
/// produce runs of blank lines and nothing leads or trails.
struct Writer {
    out: String,
    started: bool,
    /// Line breaks owed before the next text: 0, 1 (line) or 2 (paragraph).
    newlines: u8,
    space: bool,
    /// Blockquote nesting; quoted lines start with `> `.
    quote: usize,
    /// Blockquote nesting of the last text written.
    text_quote: usize,
}

impl Writer {
    fn new(capacity: usize) -> Self {
        Self {
            out: String::with_capacity(capacity.min(1 << 20)),
            started: false,
            newlines: 0,
            space: false,
            quote: 0,
            text_quote: 0,
        }
    }

    fn push_prefix(&mut self, depth: usize) {
        if depth > 0 {
            for _ in 0..depth.min(MAX_QUOTE_MARKERS) {
                self.out.push('>');
            }
            self.out.push(' ');
        }
    }

    fn flush(&mut self) {
        if !self.started {
            self.started = true;
            self.push_prefix(self.quote);
        } else if self.newlines > 0 {
            while self.out.ends_with(' ') {
                self.out.pop();
            }
            // A blank line between quote levels belongs to the outer one.
            for _ in 1..self.newlines {
                self.out.push('\n');
                self.push_prefix(self.quote.min(self.text_quote));
            }
            self.out.push('\n');
            self.push_prefix(self.quote);
        } else if self.space && !self.out.ends_with([' ', '\n']) {
            self.out.push(' ');
        }
        self.newlines = 0;
        self.space = false;
        self.text_quote = self.quote;
    }

    fn text_char(&mut self, c: char, pre: bool) {
        if pre {
            self.flush();
            match c {
                '\r' => {}
                '\n' => {
                    self.out.push('\n');
                    self.push_prefix(self.quote);
                }
                c => self.out.push(c),
            }
        } else if c.is_whitespace() {
            self.space = true;
        } else {
            self.flush();
            self.out.push(c);
        }
    }

    /// Text that is not collapsed (list markers).
    fn raw(&mut self, s: &str) {
        self.flush();
        self.out.push_str(s);
    }

    fn space(&mut self) {
        self.space = true;
    }

    /// `<br>`: one more line break, up to a blank line.
    fn line_break(&mut self) {
        self.newlines = (self.newlines + 1).min(2);
    }

    fn block(&mut self) {
        self.newlines = self.newlines.max(1);
    }

    fn paragraph(&mut self) {
        self.newlines = 2;
    }

    fn finish(self) -> String {
        // Lines never end in spaces and never hold more than one blank line
        // in a row.
        super::tidy::tidy_lines(self.out.split('\n'), self.out.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn blocks_breaks_and_lists() {
        let html = "<html><head><title>x</title><style>p{color:red}</style></head><body>\
            <p>Hello&nbsp;support,</p><p>my order <b>7781</b> has not arrived.<br>Can you check?</p>\
            <ul><li>item one</li><li>item <a href=\"https://x.example/a?b=1&amp;c=2\">two</a></li></ul>\
            <div>Thanks,<br>Jane</div><script>alert('x')</script></body></html>";
        assert_eq!(
            html_to_text(html),
            "Hello support,\n\nmy order 7781 has not arrived.\nCan you check?\n\n- item one\n- item two\n\nThanks,\nJane"
        );
    }

    #[test]
    fn entities() {
        assert_eq!(
            html_to_text(
                "a &lt;b&gt; &amp; &quot;c&quot; &#233;&#xE9;&#X1F600; &euro;5 &bogus; AT&T &#0; &#xD800;"
            ),
            "a <b> & \"c\" éé😀 €5 &bogus; AT&T \u{FFFD} \u{FFFD}"
        );
        assert_eq!(html_to_text("fish &amp chips"), "fish & chips");
    }

    #[test]
    fn whitespace_and_pre() {
        assert_eq!(html_to_text("  a \n\t b  "), "a b");
        assert_eq!(
            html_to_text("<pre>line 1\n  line 2</pre>after"),
            "line 1\n  line 2\n\nafter"
        );
        assert_eq!(html_to_text("a<br><br><br><br>b"), "a\n\nb");
        assert_eq!(
            html_to_text("<div><div><div>x</div></div></div><div>y</div>"),
            "x\ny"
        );
        assert_eq!(
            html_to_text("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>"),
            "a b\nc"
        );
        assert_eq!(
            html_to_text("<ul><li>a<ul><li>b</li></ul></li></ul>"),
            "- a\n  - b"
        );
        assert_eq!(
            html_to_text("<div>a<br></div><div><br></div><div>b</div>"),
            "a\n\nb"
        );
        assert_eq!(
            html_to_text(
                "<p>Thanks</p><div>On Fri wrote:<blockquote>old<br>text<blockquote>older</blockquote></blockquote></div>new"
            ),
            "Thanks\n\nOn Fri wrote:\n\n> old\n> text\n>\n>> older\n\nnew"
        );
    }

    #[test]
    fn not_tags_and_broken_markup() {
        assert_eq!(html_to_text("1 < 2 and 3 > 2"), "1 < 2 and 3 > 2");
        assert_eq!(html_to_text("I <3 you"), "I <3 you");
        assert_eq!(html_to_text("a <!-- hidden --> b"), "a b");
        assert_eq!(html_to_text("a <!-- never closed"), "a");
        assert_eq!(html_to_text("a <b title=\"x > y\">bold</b>"), "a bold");
        assert_eq!(html_to_text("a <span"), "a");
        assert_eq!(html_to_text("x<script>never closed"), "x");
        assert_eq!(html_to_text("<!DOCTYPE html><p>x</p>"), "x");
        assert_eq!(html_to_text("<"), "<");
        assert_eq!(html_to_text("<SCRIPT>x</SCRIPT >y"), "y");
        assert_eq!(
            html_to_text("<p>ünïcødé 中文 العربية</p>"),
            "ünïcødé 中文 العربية"
        );
    }

    fn assert_fast(input: &str) {
        let start = Instant::now();
        let _ = html_to_text(input);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "took {:?} on {} bytes",
            start.elapsed(),
            input.len()
        );
    }

    #[test]
    fn hostile_input_is_linear() {
        assert_fast(&"<div>".repeat(100_000));
        assert_fast(&("<div><span><b><i><ul><li>".repeat(20_000) + "x"));
        assert_fast(&"<a ".repeat(100_000));
        assert_fast(&"<a title=\"".repeat(100_000));
        assert_fast(&"<!--".repeat(100_000));
        assert_fast(&"<script>".repeat(100_000));
        assert_fast(&"&#".repeat(200_000));
        assert_fast(&"&aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".repeat(20_000));
        assert_fast(&"<br>".repeat(200_000));
        assert_fast(&"<pre>".repeat(100_000));
        assert_eq!(html_to_text(&("<div>".repeat(100_000) + "deep")), "deep");
    }
}
