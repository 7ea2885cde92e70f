//! A cheap walk over the MIME structure of a raw message, run before the
//! full parse so that hostile nesting or part counts are refused before
//! anything is decoded or allocated per part.
//!
//! It follows the same decisions as `mail-parser` (the last `Content-Type`
//! header of an entity wins, a multipart whose boundary never occurs is a
//! leaf, `message/rfc822` and `message/global` bodies are messages, also when
//! base64 or quoted-printable encoded, and parts without a type inside
//! `multipart/digest` are messages), so its counts match the parse. Each
//! byte is looked at once per nesting level, and nesting stops at the limit,
//! so the walk is linear in the size of the message.

use std::borrow::Cow;

use mail_parser::parsers::MessageStream;
use memchr::memmem;

use super::{ParseError, ParseLimits};

/// Longest multipart boundary accepted. RFC 2046 allows 70 characters;
/// longer ones only come from broken or hostile senders, and a long boundary
/// makes every delimiter search slower.
pub const MAX_BOUNDARY_BYTES: usize = 200;
/// Most header fields in a message, all parts together. A parsed field
/// takes about a hundred bytes however short its line, so a message of
/// nothing but tiny header lines would otherwise cost twenty times its size
/// in memory. Real messages have a few hundred.
pub const MAX_HEADER_FIELDS: usize = 10_000;
/// Most header bytes in a message, all parts together (address lists parse
/// into a dozen times their size). Real messages have tens of kilobytes.
pub const MAX_HEADER_BYTES: usize = 2 * 1024 * 1024;

/// One MIME entity still to look at: a range of one of the buffers (the
/// raw message, or a decoded attached message).
struct Entity {
    buffer: usize,
    start: usize,
    end: usize,
    depth: usize,
    in_digest: bool,
}

/// Checks nesting depth and part count against the limits. The message
/// itself is at depth 0 and counts as one part; every part of a multipart
/// and every attached message is one deeper and counts once more.
pub(crate) fn check(raw: &[u8], limits: &ParseLimits) -> Result<(), ParseError> {
    let mut buffers: Vec<Cow<'_, [u8]>> = vec![Cow::Borrowed(raw)];
    let mut parts = 1usize;
    let mut header_fields = 0usize;
    let mut header_bytes = 0usize;
    let mut stack = vec![Entity {
        buffer: 0,
        start: 0,
        end: raw.len(),
        depth: 0,
        in_digest: false,
    }];
    while let Some(entity) = stack.pop() {
        let bytes = &buffers[entity.buffer][entity.start..entity.end];
        let head = headers(
            bytes,
            MAX_HEADER_FIELDS.saturating_sub(header_fields),
            MAX_HEADER_BYTES.saturating_sub(header_bytes),
        );
        header_fields += head.fields;
        header_bytes += head.body_start;
        if head.over_budget || header_fields > MAX_HEADER_FIELDS || header_bytes > MAX_HEADER_BYTES
        {
            return Err(ParseError::new(
                "headers_too_large",
                format!(
                    "more than {MAX_HEADER_FIELDS} header fields or {MAX_HEADER_BYTES} header bytes"
                ),
            ));
        }
        let body_start = entity.start + head.body_start;
        let content_type = head.content_type.map(parse_content_type);
        let (kind, boundary) = match &content_type {
            Some(ct) => (ct.kind(), ct.boundary.as_deref()),
            None if entity.in_digest => (Kind::Message, None),
            None => (Kind::Leaf, None),
        };
        let child_depth = entity.depth + 1;
        let mut count_child = || {
            parts += 1;
            if parts > limits.max_parts {
                Err(too_many_parts(limits))
            } else if child_depth > limits.max_depth {
                Err(too_deep(limits))
            } else {
                Ok(())
            }
        };
        match kind {
            Kind::Multipart { digest } => {
                let Some(boundary) = boundary.filter(|b| !b.is_empty()) else {
                    continue;
                };
                if boundary.len() > MAX_BOUNDARY_BYTES {
                    return Err(ParseError::new(
                        "invalid_mime",
                        format!("multipart boundary longer than {MAX_BOUNDARY_BYTES} bytes"),
                    ));
                }
                let body = &buffers[entity.buffer][body_start..entity.end];
                for (start, end) in split_multipart(body, boundary.as_bytes()) {
                    count_child()?;
                    stack.push(Entity {
                        buffer: entity.buffer,
                        start: body_start + start,
                        end: body_start + end,
                        depth: child_depth,
                        in_digest: digest,
                    });
                }
            }
            Kind::Message => {
                count_child()?;
                let body = &buffers[entity.buffer][body_start..entity.end];
                let decoded = match head.transfer_encoding.as_deref() {
                    Some(b"base64") => Some(
                        MessageStream::new(body)
                            .decode_base64_mime(b"")
                            .1
                            .into_owned(),
                    ),
                    Some(b"quoted-printable") => Some(
                        MessageStream::new(body)
                            .decode_quoted_printable_mime(b"")
                            .1
                            .into_owned(),
                    ),
                    _ => None,
                };
                let next = match decoded {
                    Some(inner) => {
                        buffers.push(Cow::Owned(inner));
                        let len = buffers[buffers.len() - 1].len();
                        Entity {
                            buffer: buffers.len() - 1,
                            start: 0,
                            end: len,
                            depth: child_depth,
                            in_digest: false,
                        }
                    }
                    None => Entity {
                        buffer: entity.buffer,
                        start: body_start,
                        end: entity.end,
                        depth: child_depth,
                        in_digest: false,
                    },
                };
                stack.push(next);
            }
            Kind::Leaf => {}
        }
    }
    Ok(())
}

pub(crate) fn too_deep(limits: &ParseLimits) -> ParseError {
    ParseError::new(
        "too_deep",
        format!("mime nesting deeper than {} levels", limits.max_depth),
    )
}

pub(crate) fn too_many_parts(limits: &ParseLimits) -> ParseError {
    ParseError::new(
        "too_many_parts",
        format!("more than {} mime parts", limits.max_parts),
    )
}

/// The parts of a multipart body as byte ranges, split as `mail-parser`
/// splits them: a delimiter is `--boundary` anywhere (not only at a line
/// start); the preamble before the first one is dropped; a delimiter
/// followed by `--` ends the body.
fn split_multipart(body: &[u8], boundary: &[u8]) -> Vec<(usize, usize)> {
    let mut delimiter = Vec::with_capacity(boundary.len() + 2);
    delimiter.extend_from_slice(b"--");
    delimiter.extend_from_slice(boundary);
    let finder = memmem::Finder::new(&delimiter);
    let mut children = Vec::new();
    let Some(first) = finder.find(body) else {
        return children;
    };
    let mut pos = first + delimiter.len();
    while !body[pos..].starts_with(b"--") {
        // The rest of the delimiter line (transport padding) is not content.
        let start = memchr::memchr(b'\n', &body[pos..]).map_or(body.len(), |i| pos + i + 1);
        match finder.find(&body[start..]) {
            Some(i) => {
                children.push((start, start + i));
                pos = start + i + delimiter.len();
            }
            None => {
                children.push((start, body.len()));
                break;
            }
        }
    }
    children
}

enum Kind {
    Multipart { digest: bool },
    Message,
    Leaf,
}

struct ContentType {
    media_type: String,
    subtype: String,
    boundary: Option<String>,
}

impl ContentType {
    fn kind(&self) -> Kind {
        match (self.media_type.as_str(), self.subtype.as_str()) {
            ("multipart", sub) => Kind::Multipart {
                digest: sub == "digest",
            },
            ("message", "rfc822" | "global") => Kind::Message,
            _ => Kind::Leaf,
        }
    }
}

struct Headers {
    /// Header fields (continuation lines not counted).
    fields: usize,
    /// The block has more fields or bytes than the budget given; the scan
    /// stopped there.
    over_budget: bool,
    content_type: Option<Vec<u8>>,
    transfer_encoding: Option<Vec<u8>>,
    body_start: usize,
}

/// The MIME headers of an entity (unfolded, last occurrence wins) and where
/// its body starts: after the first line that is empty or only white space
/// (as `mail-parser` reads it), or at the end if there is none.
fn headers(bytes: &[u8], max_fields: usize, max_bytes: usize) -> Headers {
    let mut fields = 0;
    let mut over_budget = false;
    let mut content_type = None;
    let mut transfer_encoding = None;
    let mut current: Option<(u8, Vec<u8>)> = None;
    let mut pos = 0;
    let body_start = loop {
        if pos >= bytes.len() {
            break bytes.len();
        }
        let end = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i + 1);
        let line = &bytes[pos..end];
        let content = trim_eol(line);
        if content.iter().all(u8::is_ascii_whitespace) {
            break end;
        }
        if fields > max_fields || end > max_bytes {
            over_budget = true;
            break end;
        }
        if content[0] == b' ' || content[0] == b'\t' {
            if let Some((_, value)) = current.as_mut() {
                value.push(b' ');
                value.extend_from_slice(content);
            }
        } else {
            finish(&mut current, &mut content_type, &mut transfer_encoding);
            fields += 1;
            if let Some(colon) = memchr::memchr(b':', content) {
                let name = trim(&content[..colon]);
                let value = content[colon + 1..].to_vec();
                if name.eq_ignore_ascii_case(b"content-type") {
                    current = Some((0, value));
                } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
                    current = Some((1, value));
                }
            }
        }
        pos = end;
    };
    finish(&mut current, &mut content_type, &mut transfer_encoding);
    Headers {
        fields,
        over_budget,
        content_type,
        transfer_encoding: transfer_encoding.map(|v: Vec<u8>| trim(&v).to_ascii_lowercase()),
        body_start,
    }
}

fn finish(
    current: &mut Option<(u8, Vec<u8>)>,
    content_type: &mut Option<Vec<u8>>,
    transfer_encoding: &mut Option<Vec<u8>>,
) {
    match current.take() {
        Some((0, value)) => *content_type = Some(value),
        Some((_, value)) => *transfer_encoding = Some(value),
        None => {}
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// `type/subtype; boundary="..."`, enough of RFC 2045 for the walk.
fn parse_content_type(value: Vec<u8>) -> ContentType {
    let value = String::from_utf8_lossy(&value);
    let mut params = split_params(&value).into_iter();
    let full = params.next().unwrap_or_default();
    let (media_type, subtype) = full.split_once('/').unwrap_or((full.as_str(), ""));
    let mut boundary = None;
    for param in params {
        if let Some((name, value)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("boundary")
        {
            boundary = Some(unquote(value.trim()));
        }
    }
    ContentType {
        media_type: media_type.trim().to_ascii_lowercase(),
        subtype: subtype
            .trim()
            .split(|c: char| c.is_whitespace() || c == '(')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase(),
        boundary,
    }
}

/// Splits at `;` outside double quotes.
fn split_params(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ';' && !quoted {
            out.push(std::mem::take(&mut current));
            continue;
        }
        current.push(c);
    }
    out.push(current);
    out
}

fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"') else {
        return value
            .split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or_default()
            .to_owned();
    };
    let mut out = String::new();
    let mut escaped = false;
    for c in inner.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            break;
        } else {
            out.push(c);
        }
    }
    out
}
