//! A deterministic corpus of realistic customer emails, for seeding a
//! mailbox in tests and benchmarks.
//!
//! Message `i` of a set is always the same bytes, so a benchmark's figures
//! compare across runs and machines, and a test can recompute the
//! Message-ID of any message it appended. The mix is what a support
//! mailbox sees: about 2 KB of plain text (a third quoting a reply),
//! multipart/alternative with quoted-printable HTML, and one in fifty with
//! a 50 KB PDF, with RFC 2047 names, DKIM and Received headers.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The shape of a corpus message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// text/plain, about 2 KB with headers, a third with a quoted reply.
    Plain,
    /// multipart/alternative: text/plain and a quoted-printable HTML part.
    Html,
    /// multipart/mixed: the alternative above plus a 50 KB PDF.
    Attachment,
}

/// The shape of message `i`: one in fifty has an attachment, a quarter
/// are HTML, the rest plain text.
pub fn kind(i: usize) -> Kind {
    if i % 50 == 49 {
        Kind::Attachment
    } else if i % 4 == 1 {
        Kind::Html
    } else {
        Kind::Plain
    }
}

/// The Message-ID (without angle brackets) of message `i` of the set `tag`.
pub fn message_id(i: usize, tag: &str) -> String {
    format!("bench-{tag}-{i}.{:08x}@mail.shop.example", hash(i as u64))
}

/// Message `i` of the set `tag`, raw with CRLF line ends; `tag` keeps
/// the Message-IDs of different sets apart.
pub fn message(i: usize, tag: &str) -> Vec<u8> {
    let mut rng = Rng::new(hash(i as u64 ^ hash(tag.len() as u64 + 7)));
    let customer = i % 997;
    let (first, last) = (
        FIRST_NAMES[customer % FIRST_NAMES.len()],
        LAST_NAMES[(customer / FIRST_NAMES.len()) % LAST_NAMES.len()],
    );
    let order = 100_000 + (hash(customer as u64) % 900_000);
    let subject = format!(
        "Order #{order}: {}",
        sentence(&mut rng, 4).trim_end_matches('.')
    );
    let day = 1 + i % 28;
    let (hour, minute, second) = (i / 3600 % 24, i / 60 % 60, i % 60);
    let date = format!("{day} Nov 2026 {hour:02}:{minute:02}:{second:02} +0100");
    let mut m = String::with_capacity(4096);
    let _ = write!(
        m,
        "Return-Path: <customer{customer}@mail.shop.example>\r\n\
         Received: from mx2.mail.shop.example (mx2.mail.shop.example [203.0.113.{a}])\r\n\
         \tby mx.acme.example (Postfix) with ESMTPS id 4Q{h:X}\r\n\
         \tfor <support@acme.example>; Mon, {date}\r\n\
         Received: by mail.shop.example with SMTP id q{h2:x}; Mon, {date}\r\n\
         DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=mail.shop.example; s=s1;\r\n\
         \th=from:to:subject:date:message-id:mime-version; bh={bh};\r\n\
         \tb={b}\r\n\
         From: {from} <customer{customer}@mail.shop.example>\r\n\
         To: Acme Support <support@acme.example>\r\n\
         Subject: {subject}\r\n\
         Date: Mon, {date}\r\n\
         Message-ID: <{id}>\r\n\
         MIME-Version: 1.0\r\n\
         X-Mailer: Bench Mail 1.0\r\n",
        from = encoded_word(&format!("{first} {last}")),
        subject = encoded_word(&subject),
        a = i % 250,
        h = hash(i as u64 + 1),
        h2 = hash(i as u64 + 2),
        bh = base64_of(&mut rng, 32),
        b = base64_of(&mut rng, 190),
        id = message_id(i, tag),
    );
    let text = body_text(&mut rng, first, order, i.is_multiple_of(3));
    match kind(i) {
        Kind::Plain => {
            m.push_str(
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
            );
            m.push_str(&text);
        }
        Kind::Html => {
            let boundary = format!("alt-{:016x}", hash(i as u64 + 3));
            let _ = write!(
                m,
                "Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n"
            );
            alternative(&mut m, &boundary, &text, &mut rng, first, order);
        }
        Kind::Attachment => {
            let mixed = format!("mix-{:016x}", hash(i as u64 + 4));
            let alt = format!("alt-{:016x}", hash(i as u64 + 3));
            let _ = write!(
                m,
                "Content-Type: multipart/mixed; boundary=\"{mixed}\"\r\n\r\n\
                 This is a multi-part message in MIME format.\r\n\r\n--{mixed}\r\n\
                 Content-Type: multipart/alternative; boundary=\"{alt}\"\r\n\r\n"
            );
            alternative(&mut m, &alt, &text, &mut rng, first, order);
            let _ = write!(
                m,
                "\r\n--{mixed}\r\nContent-Type: application/pdf; name=\"invoice-{order}.pdf\"\r\n\
                 Content-Disposition: attachment; filename=\"invoice-{order}.pdf\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n"
            );
            let mut pdf = b"%PDF-1.4\n".to_vec();
            while pdf.len() < 50 * 1024 {
                pdf.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
            base64_lines(&mut m, &pdf);
            let _ = write!(m, "--{mixed}--\r\n");
        }
    }
    m.into_bytes()
}

/// Header text as is when ASCII, else as one RFC 2047 encoded word.
fn encoded_word(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let mut word = "=?UTF-8?B?".to_owned();
    let mut encoded = String::new();
    base64_lines(&mut encoded, text.as_bytes());
    word.push_str(&encoded.replace("\r\n", ""));
    word.push_str("?=");
    word
}

fn alternative(m: &mut String, boundary: &str, text: &str, rng: &mut Rng, name: &str, order: u64) {
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n--{boundary}\r\n\
         Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    );
    let mut html = String::with_capacity(3000);
    html.push_str(
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Type\" content=\"text/html; \
         charset=utf-8\"><style>body{font-family:Arial,sans-serif;font-size:14px}\
         .sig{color:#888888}</style></head><body><div dir=\"ltr\">",
    );
    let _ = write!(html, "<p>Hello,</p>");
    for _ in 0..3 {
        let _ = write!(html, "<p>{}</p>", paragraph(rng, 300));
    }
    let _ = write!(
        html,
        "<table border=\"0\" cellpadding=\"4\"><tr><td><b>Order</b></td><td>#{order}</td></tr>\
         <tr><td><b>Status</b></td><td>{}</td></tr></table>\
         <p>Merci beaucoup,<br>{name}</p><div class=\"sig\">Envoy\u{e9} de mon t\u{e9}l\u{e9}phone</div>\
         </div></body></html>",
        sentence(rng, 3)
    );
    quoted_printable(m, html.as_bytes());
    let _ = write!(m, "\r\n--{boundary}--\r\n");
}

fn body_text(rng: &mut Rng, name: &str, order: u64, quoted: bool) -> String {
    let mut text = String::with_capacity(1500);
    text.push_str("Hello,\r\n\r\n");
    let paragraphs = if quoted { 2 } else { 3 };
    for _ in 0..paragraphs {
        wrap(&mut text, &paragraph(rng, 340));
        text.push_str("\r\n");
    }
    let _ = write!(
        text,
        "Order number: {order}\r\n\r\nThanks a lot,\r\n{name}\r\n\r\n-- \r\nEnvoy\u{e9} de mon iPhone\r\n"
    );
    if quoted {
        text.push_str(
            "\r\nOn Fri, 20 Nov 2026 at 09:12, Acme Support <support@acme.example> wrote:\r\n",
        );
        let mut q = String::new();
        wrap(&mut q, &paragraph(rng, 300));
        for line in q.lines() {
            let _ = write!(text, "> {line}\r\n");
        }
    }
    text
}

const FIRST_NAMES: &[&str] = &[
    "Ana", "Bruno", "Chloé", "Dmitri", "Elif", "Farah", "Gustavo", "Hana", "Ines", "Jonas",
    "Keiko", "Lucía", "Mehmet", "Nora", "Oskar", "Priya", "Quentin", "Rania", "Sven", "Tariq",
];
const LAST_NAMES: &[&str] = &[
    "Silva",
    "Müller",
    "Dubois",
    "Ivanova",
    "Yılmaz",
    "Haddad",
    "Costa",
    "Sato",
    "Moreau",
    "Novak",
    "Berg",
    "Kaya",
    "Rossi",
    "Nguyen",
    "Okafor",
    "Larsen",
    "Jensen",
    "Fischer",
    "Garcia",
    "Kowalski",
    "Tanaka",
    "Petrov",
    "Schmidt",
    "Martin",
    "Rahman",
    "Lopez",
    "Weber",
    "Andersen",
    "Popescu",
    "Horvat",
    "Kim",
    "Sousa",
    "Lindqvist",
    "Baker",
    "Ortiz",
    "Fontaine",
    "Wagner",
    "Singh",
    "Mendes",
    "Ali",
    "Kruger",
    "Dahl",
    "Ferreira",
    "Bianchi",
    "Eriksson",
    "Demir",
    "Romero",
    "Costa",
];
/// The words of the corpus's sentences: what customers write to a support
/// desk, a few with accents. Also the vocabulary of other generated
/// messages (the event log's benchmark records).
pub const WORDS: &[&str] = &[
    "order",
    "delivery",
    "package",
    "refund",
    "invoice",
    "parcel",
    "tracking",
    "number",
    "still",
    "not",
    "arrived",
    "yesterday",
    "week",
    "please",
    "could",
    "you",
    "check",
    "the",
    "status",
    "of",
    "my",
    "I",
    "was",
    "told",
    "it",
    "would",
    "be",
    "here",
    "by",
    "Monday",
    "but",
    "nothing",
    "came",
    "courier",
    "address",
    "changed",
    "apartment",
    "wrong",
    "size",
    "colour",
    "return",
    "label",
    "exchange",
    "payment",
    "charged",
    "twice",
    "card",
    "account",
    "password",
    "reset",
    "discount",
    "code",
    "expired",
    "customer",
    "service",
    "waiting",
    "reply",
    "urgent",
    "gift",
    "birthday",
    "café",
    "größe",
    "déjà",
    "naïve",
    "thank",
    "again",
    "help",
    "when",
    "will",
];

fn sentence(rng: &mut Rng, words: usize) -> String {
    let mut s = String::new();
    for k in 0..words {
        let word = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize];
        if k == 0 {
            let mut chars = word.chars();
            if let Some(c) = chars.next() {
                s.extend(c.to_uppercase());
                s.push_str(chars.as_str());
            }
        } else {
            s.push(' ');
            s.push_str(word);
        }
    }
    s.push('.');
    s
}

fn paragraph(rng: &mut Rng, bytes: usize) -> String {
    let mut p = String::with_capacity(bytes + 80);
    while p.len() < bytes {
        if !p.is_empty() {
            p.push(' ');
        }
        let words = 6 + (rng.next_u64() % 10) as usize;
        p.push_str(&sentence(rng, words));
    }
    p
}

/// Wraps at 72 columns with CRLF.
fn wrap(out: &mut String, text: &str) {
    let mut column = 0;
    for word in text.split(' ') {
        if column > 0 && column + 1 + word.chars().count() > 72 {
            out.push_str("\r\n");
            column = 0;
        } else if column > 0 {
            out.push(' ');
            column += 1;
        }
        out.push_str(word);
        column += word.chars().count();
    }
    out.push_str("\r\n");
}

fn quoted_printable(out: &mut String, bytes: &[u8]) {
    let mut column = 0;
    for &b in bytes {
        let literal = (b' '..=b'~').contains(&b) && b != b'=';
        let width = if literal { 1 } else { 3 };
        if column + width > 75 {
            out.push_str("=\r\n");
            column = 0;
        }
        if literal {
            out.push(b as char);
        } else {
            let _ = write!(out, "={b:02X}");
        }
        column += width;
    }
}

/// The alphabet of the random DKIM-like values.
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 in lines of 76 characters, as MIME wants.
fn base64_lines(out: &mut String, bytes: &[u8]) {
    for line in bytes.chunks(57) {
        STANDARD.encode_string(line, out);
        out.push_str("\r\n");
    }
}

fn base64_of(rng: &mut Rng, chars: usize) -> String {
    (0..chars)
        .map(|_| BASE64[(rng.next_u64() % 64) as usize] as char)
        .collect()
}

/// splitmix64's output function: a well-mixed 64-bit value of `x`, for
/// seeds and stable per-message choices.
pub fn hash(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// splitmix64: small, fast and the same everywhere, which is all a
/// corpus needs (nothing here is about security).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next value of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        hash(self.0)
    }

    /// A number below `n` (0 when `n` is 0), for picking and mutating.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// One of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_deterministic_and_of_their_kind() {
        assert_eq!(message(7, "a"), message(7, "a"));
        assert_ne!(message(7, "a"), message(8, "a"));
        let text = |i| String::from_utf8(message(i, "backlog")).unwrap();
        assert!(text(1).contains("multipart/alternative"));
        assert_eq!(kind(1), Kind::Html);
        assert!(text(49).contains("application/pdf"));
        assert!(text(49).len() > 50 * 1024);
        assert!(text(0).contains("Content-Type: text/plain"));
        assert!(text(0).contains(&format!("Message-ID: <{}>", message_id(0, "backlog"))));
        assert_ne!(message_id(0, "backlog"), message_id(0, "idle"));
    }

    #[test]
    fn encodes_non_ascii_headers_and_base64_like_the_standard() {
        assert_eq!(encoded_word("Ana Silva"), "Ana Silva");
        assert_eq!(encoded_word("Chloé"), "=?UTF-8?B?Q2hsb8Op?=");
        let mut out = String::new();
        base64_lines(&mut out, b"any carnal pleas");
        assert_eq!(out, "YW55IGNhcm5hbCBwbGVhcw==\r\n");
    }
}
