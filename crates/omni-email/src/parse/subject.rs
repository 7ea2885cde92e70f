//! Subject normalization for the threading service's subject fallback.

/// Reply and forward prefixes mail clients put in front of a subject, in the
/// languages their users write. Compared case-insensitively, char by char;
/// each must be followed (after an optional counter and white space) by `:`
/// or the full-width `：`, so `Rebate: 20%` or `Reply all` are left alone.
const PREFIXES: &[&str] = &[
    // English, and what most clients write whatever the locale
    "re",
    "fwd",
    "fw",
    // German
    "aw",
    "wg",
    // Nordic (Swedish, Danish, Norwegian, Finnish, Icelandic)
    "sv",
    "vs",
    "vb",
    "vl",
    "fs",
    // Dutch
    "antw",
    "doorst",
    // French
    "réf",
    "tr",
    // Spanish, Portuguese, Italian
    "rv",
    "res",
    "enc",
    "r",
    "rif",
    "i",
    // Polish, Czech, Slovak
    "odp",
    "pd",
    "přeposlat",
    // Turkish
    "ynt",
    "İlt",
    "ilt",
    "yml",
    // Hungarian
    "vá",
    "továbbítás",
    // Indonesian, Malay
    "bls",
    "trs",
    // Baltic
    "atb",
    "pārs",
    "ats",
    "pers",
    // Greek
    "απ",
    "σχετ",
    "πρθ",
    // Russian, Ukrainian, Bulgarian
    "ответ",
    "отв",
    "пересл",
    "відп",
    // Hebrew
    "השב",
    "הועבר",
    // Arabic (the multi-word forward prefix is what Outlook writes)
    "رد",
    "إعادة توجيه",
    "إعادة توجية",
    "تحويل",
    // Persian, Urdu
    "پاسخ",
    "هدایت",
    "باز ارسال",
    "جواب",
    // Vietnamese
    "trả lời",
    "chuyển tiếp",
    // Chinese (simplified and traditional), Japanese, Korean
    "回复",
    "回覆",
    "答复",
    "答覆",
    "转发",
    "轉寄",
    "轉發",
    "返信",
    "転送",
    "회신",
    "답장",
    "전달",
];

/// Longest run of characters a `[list tag]` may have before it is treated as
/// ordinary subject text; keeps the scan linear on hostile subjects.
const MAX_TAG_CHARS: usize = 64;

/// The subject with reply/forward prefixes removed, for matching a reply to
/// the conversation it answers when its threading headers are missing.
///
/// Rules (the "base subject" of RFC 5256, section 2.1, with more languages):
/// - any number of leading reply/forward prefixes (`Re:`, `RE :`, `Fwd:`,
///   `AW:`, `SV:`, `Antw:`, `Réf :`, `R:`, `回复：`, `返信:`, `رد:`,
///   `إعادة توجيه:`, `Ynt:` ... about seventy in all) are removed, in any case,
///   with an ASCII or full-width colon, optional white space before the
///   colon (French typography) and an optional counter (`Re[2]:`, `Re(3):`);
/// - leading `[tags]` (`[support]`, `[EXTERNAL]`, `[Ticket #12]`) are removed
///   too, before or between prefixes, as long as some text remains: a list or
///   a mail gateway adds them to some copies of a conversation and not to
///   others (`RE: [EXTERNAL] Order 7781` answers `Order 7781`), so keeping
///   them would split threads. A subject that is only a tag keeps it;
/// - trailing `(fwd)` markers are removed;
/// - bidi marks and other format characters between prefixes are skipped
///   (Outlook writes U+200F before `پاسخ:`);
/// - every run of white space becomes one space; the result is trimmed.
///
/// Work is linear in the length of the subject.
pub fn normalize_subject(subject: &str) -> String {
    let mut rest = subject;
    loop {
        let trimmed = skip_space(rest);
        if let Some(after) = strip_prefix_word(trimmed) {
            rest = after;
            continue;
        }
        if let Some(after) = strip_tag(trimmed)
            && !skip_space(after).is_empty()
        {
            rest = after;
            continue;
        }
        rest = trimmed;
        break;
    }
    let mut rest = rest.trim_end();
    loop {
        let len = rest.len();
        if len >= 5
            && rest.is_char_boundary(len - 5)
            && rest[len - 5..].eq_ignore_ascii_case("(fwd)")
        {
            rest = rest[..len - 5].trim_end();
        } else {
            break;
        }
    }
    collapse_whitespace(rest)
}

fn is_skippable(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{061C}' | '\u{FEFF}'
        )
}

fn skip_space(s: &str) -> &str {
    s.trim_start_matches(is_skippable)
}

fn chars_eq_ignore_case(a: char, b: char) -> bool {
    a == b || a.to_lowercase().eq(b.to_lowercase())
}

/// `s` after a reply/forward prefix, its counter and its colon.
fn strip_prefix_word(s: &str) -> Option<&str> {
    PREFIXES.iter().find_map(|prefix| {
        let mut chars = s.char_indices();
        for p in prefix.chars() {
            let (_, c) = chars.next()?;
            if !chars_eq_ignore_case(c, p) {
                return None;
            }
        }
        let after_word = chars.next().map_or(s.len(), |(i, _)| i);
        let rest = strip_counter(&s[after_word..]);
        let rest = rest.trim_start_matches(|c: char| c.is_whitespace());
        rest.strip_prefix(':')
            .or_else(|| rest.strip_prefix('：'))
            .or_else(|| rest.strip_prefix('﹕'))
    })
}

/// Strips `[2]`, `(3)` or `^4` directly after a prefix word.
fn strip_counter(s: &str) -> &str {
    let close = match s.as_bytes().first() {
        Some(b'[') => b']',
        Some(b'(') => b')',
        Some(b'^') => 0,
        _ => return s,
    };
    let digits = s[1..].bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 6 {
        return s;
    }
    let end = 1 + digits;
    if close == 0 {
        return &s[end..];
    }
    if s.as_bytes().get(end) == Some(&close) {
        &s[end + 1..]
    } else {
        s
    }
}

/// `s` after one `[tag]`, or None if it does not start with a short,
/// closed, non-nested tag.
fn strip_tag(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('[').or_else(|| s.strip_prefix('【'))?;
    for (count, (i, c)) in inner.char_indices().enumerate() {
        if count > MAX_TAG_CHARS || c == '[' || c == '【' {
            return None;
        }
        if c == ']' || c == '】' {
            return if i == 0 {
                None
            } else {
                Some(&inner[i + c.len_utf8()..])
            };
        }
    }
    None
}

fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending = false;
    for c in s.chars() {
        if c.is_whitespace() {
            pending = !out.is_empty();
        } else {
            if pending {
                out.push(' ');
                pending = false;
            }
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_in_many_languages() {
        let cases = [
            ("Re: Order 7781 not delivered", "Order 7781 not delivered"),
            ("RE: RE: Fwd: Order 7781", "Order 7781"),
            ("Fw: FW: fwd: invoice", "invoice"),
            ("AW: WG: Rechnung März", "Rechnung März"),
            ("SV: VS: Faktura", "Faktura"),
            ("Antw: Doorst: Bestelling", "Bestelling"),
            ("Réf : TR : Commande en retard", "Commande en retard"),
            ("RE : Commande", "Commande"),
            ("RV: RE: Pedido", "Pedido"),
            ("RES: ENC: Pedido atrasado", "Pedido atrasado"),
            ("R: I: Ordine", "Ordine"),
            ("Odp: PD: Zamówienie", "Zamówienie"),
            ("Ynt: İlt: Sipariş", "Sipariş"),
            ("ΑΠ: ΣΧΕΤ: Παραγγελία", "Παραγγελία"),
            ("Ответ: Пересл: Заказ", "Заказ"),
            ("回复: 订单未到", "订单未到"),
            ("回复：转发：订单未到", "订单未到"),
            ("答复: 回覆: 訂單", "訂單"),
            ("轉寄：訂單", "訂單"),
            ("返信: 転送: 注文について", "注文について"),
            ("Re: 返信：注文", "注文"),
            ("회신: 전달: 주문", "주문"),
            ("رد: طلبي لم يصل", "طلبي لم يصل"),
            ("إعادة توجيه: رد: طلبي", "طلبي"),
            ("\u{200F}پاسخ: سفارش من", "سفارش من"),
            ("Trả lời: Đơn hàng", "Đơn hàng"),
            ("Re[2]: Order", "Order"),
            ("Re(3): Order", "Order"),
            ("RE^2: Order", "Order"),
            ("Re:Order", "Order"),
            ("Re：Order", "Order"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_subject(input), expected, "{input}");
        }
    }

    #[test]
    fn lookalikes_are_left_alone() {
        for subject in [
            "Rebate: 20% off",
            "Ref: 12345 invoice",
            "Reply needed",
            "Return request",
            "Ideas: three",
            "Travel: next week",
            "Fwding rules",
            "Re",
            "",
        ] {
            assert_eq!(normalize_subject(subject), subject, "{subject}");
        }
    }

    #[test]
    fn tags_and_whitespace() {
        let cases = [
            ("[support] Re: Order 7781", "Order 7781"),
            ("Re: [support] Order 7781", "Order 7781"),
            ("RE: [EXTERNAL] Re: [support] Order", "Order"),
            ("[support] Order 7781", "Order 7781"),
            ("【重要】回复：订单", "订单"),
            ("[support]", "[support]"),
            ("Re: [support]", "[support]"),
            ("[] Order", "[] Order"),
            ("[unclosed Re: Order", "[unclosed Re: Order"),
            ("  Re:   Order \t 7781\r\n  ", "Order 7781"),
            ("Order 7781 (fwd)", "Order 7781"),
            ("Order\u{3000}7781", "Order 7781"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_subject(input), expected, "{input}");
        }
    }

    #[test]
    fn hostile_subjects_are_linear() {
        let many = "Re: ".repeat(50_000) + "x";
        assert_eq!(normalize_subject(&many), "x");
        let tags = "[a] ".repeat(50_000) + "x";
        assert_eq!(normalize_subject(&tags), "x");
        let open = "[".repeat(100_000);
        assert_eq!(normalize_subject(&open), open);
    }
}
