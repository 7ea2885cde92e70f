//! Separating what the sender wrote this time from the earlier messages
//! their client quoted below (or between) it.

/// Verbs that end an attribution line (`On <date>, <name> wrote:`), in the
/// languages of the common clients, compared case-insensitively after the
/// trailing colon (ASCII or full-width) and white space are removed.
const ATTRIBUTION_VERBS: &[&str] = &[
    "wrote",
    "writes",
    "schrieb",
    "a écrit",
    "escribió",
    "escreveu",
    "ha scritto",
    "scrisse",
    "schreef",
    "skrev",
    "kirjoitti",
    "napisał",
    "napisała",
    "napsal",
    "napsala",
    "написал",
    "написала",
    "написал(а)",
    "пишет",
    "yazdı",
    "写道",
    "寫道",
    "كتب",
    "نوشت",
];

/// Words that open an attribution line; used to find where an attribution
/// that the client wrapped over several lines begins.
const ATTRIBUTION_OPENERS: &[&str] = &[
    "on ", "am ", "le ", "el ", "em ", "il ", "op ", "den ", "в ", "在", "於",
];

/// Separators Outlook-style clients put above the quoted message. The text
/// between the dashes must be one of these (case-insensitive); "Forwarded
/// message" and its translations are deliberately absent.
const ORIGINAL_MESSAGE_MARKERS: &[&str] = &[
    "original message",
    "ursprüngliche nachricht",
    "originalnachricht",
    "message d'origine",
    "mensaje original",
    "mensagem original",
    "messaggio originale",
    "oorspronkelijk bericht",
    "originalmeddelande",
    "oprindelig meddelelse",
    "opprinnelig melding",
    "alkuperäinen viesti",
    "wiadomość oryginalna",
    "původní zpráva",
    "исходное сообщение",
    "原始邮件",
    "原始郵件",
    "原始信件",
    "元のメッセージ",
    "원본 메시지",
    "الرسالة الأصلية",
    "پیام اصلی",
];

/// Header names that start the `From: / Sent:` block Outlook writes above
/// a quoted message (with or without the underscore separator).
const FROM_FIELDS: &[&str] = &[
    "from",
    "von",
    "de",
    "van",
    "da",
    "od",
    "fra",
    "från",
    "lähettäjä",
    "от",
    "kimden",
    "发件人",
    "寄件者",
    "寄件人",
    "差出人",
    "보낸 사람",
    "من",
    "از",
];

const SENT_FIELDS: &[&str] = &[
    "sent",
    "date",
    "gesendet",
    "datum",
    "envoyé",
    "date d'envoi",
    "enviado",
    "enviado el",
    "fecha",
    "inviato",
    "data",
    "verzonden",
    "verzonden op",
    "wysłano",
    "sendt",
    "skickat",
    "lähetetty",
    "отправлено",
    "gönderildi",
    "tarih",
    "发送时间",
    "日期",
    "時間",
    "傳送時間",
    "寄件日期",
    "送信日時",
    "보낸 날짜",
    "التاريخ",
    "تاريخ الإرسال",
    "ارسال شده",
    "تاریخ",
];

/// The text above the quoted part of a reply, or `None` when nothing was
/// stripped.
///
/// What is recognized as quoted:
/// - lines starting with `>` (optionally indented), wherever they are, so an
///   inline (interleaved) reply keeps its answers and loses the quotes;
/// - everything from an attribution line on: `On <date>, <name> wrote:`
///   and its translations (`Am ... schrieb ...:`, `Le ... a écrit :`,
///   `El ... escribió:`, `在 ... 写道：`, `... 於 ... 寫道：`, ...), also
///   when the client wrapped it over up to three lines. To avoid cutting a
///   customer's own "my colleague wrote:", the attribution must contain a
///   digit or an `@`, or be followed by a `>` line;
/// - everything from an `-----Original Message-----` separator (and its
///   translations, e.g. Foxmail's `------------------ 原始邮件 ------------------`);
/// - everything from an Outlook header block: a `From:` line followed
///   within three lines by a `Sent:`/`Date:` line (in the client's
///   language), with or without the `________________________________` line
///   above it.
///
/// Forwarded messages (`---------- Forwarded message ---------`, Apple
/// Mail's `Begin forwarded message:` and translations) are not quotes: what
/// was forwarded is what the customer wants read, so everything from such a
/// marker on is kept as it is, quotes inside the forward included.
///
/// Returns `None` also when the text would be empty (a message that is
/// only a quote): then the full text is the useful content. Trailing blank
/// lines are removed and runs of blank lines left by removed quotes become
/// one. Work is linear in the length of the text.
pub fn strip_quoted_reply(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let cut = find_cut(&lines);
    let mut kept = Vec::with_capacity(cut.quote.min(lines.len()));
    let mut stripped = cut.quote < lines.len();
    for (i, line) in lines[..cut.quote].iter().enumerate() {
        if i < cut.forward && is_quoted(line) {
            stripped = true;
        } else {
            kept.push(*line);
        }
    }
    if !stripped {
        return None;
    }
    let out = super::tidy::tidy_lines(kept, text.len());
    if out.trim().is_empty() {
        None
    } else {
        Some(out)
    }
}

fn is_quoted(line: &str) -> bool {
    line.trim_start_matches([' ', '\t']).starts_with('>')
}

/// Lines that introduce a forwarded message (Apple Mail and friends); the
/// header block after them belongs to the forward and is not a quote.
const FORWARD_INTROS: &[&str] = &[
    "begin forwarded message:",
    "anfang der weitergeleiteten nachricht:",
    "début du message réexpédié :",
    "début du message réexpédié:",
    "inicio del mensaje reenviado:",
    "início da mensagem reencaminhada:",
    "inizio messaggio inoltrato:",
    "begin doorgestuurd bericht:",
    "転送されたメッセージ:",
    "转发的邮件：",
    "轉寄的郵件：",
];

/// Where the quoted tail starts, and where a forwarded message starts
/// (which is kept whole, its own quotes included).
struct Cut {
    quote: usize,
    forward: usize,
}

fn find_cut(lines: &[&str]) -> Cut {
    let none = lines.len();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if is_dash_separator(trimmed) {
            if is_original_message_separator(trimmed) {
                return Cut {
                    quote: i,
                    forward: none,
                };
            }
            // `---------- Forwarded message ---------` in any language.
            return Cut {
                quote: none,
                forward: i,
            };
        }
        if trimmed.len() < 80 && {
            let lower = trimmed.to_lowercase();
            FORWARD_INTROS.iter().any(|f| lower == *f)
        } {
            return Cut {
                quote: none,
                forward: i,
            };
        }
        if let Some(start) = attribution_start(lines, i) {
            return Cut {
                quote: start,
                forward: none,
            };
        }
        if is_underscore_separator(trimmed) {
            let next = next_non_blank(lines, i + 1, 2);
            if next.is_some_and(|j| header_field(lines[j], FROM_FIELDS)) {
                return Cut {
                    quote: i,
                    forward: none,
                };
            }
        }
        if header_field(trimmed, FROM_FIELDS) && sent_field_follows(lines, i) {
            return Cut {
                quote: i,
                forward: none,
            };
        }
    }
    Cut {
        quote: none,
        forward: none,
    }
}

/// If line `i` ends an attribution, the line it starts on.
fn attribution_start(lines: &[&str], i: usize) -> Option<usize> {
    let line = lines[i].trim();
    if is_quoted(line) {
        return None;
    }
    let body = line
        .trim_end_matches(|c: char| c.is_whitespace())
        .strip_suffix(':')
        .or_else(|| line.strip_suffix('：'))?
        .trim_end_matches(|c: char| c.is_whitespace());
    // `... schrieb Jane Doe <jane@example.com>:` puts the name after the
    // verb; `... wrote:` does not. Look at the tail only, so the check
    // stays cheap on long lines.
    let mut tail: Vec<char> = body
        .chars()
        .rev()
        .take(120)
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    tail.reverse();
    let tail = tail.into_iter().collect::<String>().to_lowercase();
    let verb_at_end = ATTRIBUTION_VERBS.iter().any(|v| tail.ends_with(v));
    let verb_inside = ["schrieb ", "a écrit ", "schreef ", "skrev ", "написал "]
        .iter()
        .any(|v| tail.contains(v));
    if !verb_at_end && !verb_inside {
        return None;
    }
    // Walk back over a wrapped attribution (at most two more lines).
    let mut start = i;
    for back in 1..=2 {
        let Some(j) = i.checked_sub(back) else { break };
        let prev = lines[j].trim();
        if prev.is_empty() || is_quoted(prev) {
            break;
        }
        if starts_with_opener(prev) {
            start = j;
            break;
        }
    }
    if start == i && !starts_with_opener(line) && !verb_at_end {
        return None;
    }
    let has_detail = lines[start..=i]
        .iter()
        .any(|l| l.contains('@') || l.chars().any(|c| c.is_ascii_digit() || c == '年'));
    let quote_follows = next_non_blank(lines, i + 1, 3).is_some_and(|j| is_quoted(lines[j]));
    (has_detail || quote_follows).then_some(start)
}

fn starts_with_opener(line: &str) -> bool {
    let head: String = line.chars().take(4).collect::<String>().to_lowercase();
    ATTRIBUTION_OPENERS.iter().any(|o| head.starts_with(o))
}

/// `----- text -----` (at least three dashes each side, short).
fn is_dash_separator(line: &str) -> bool {
    line.len() > 6
        && line.len() < 200
        && line.starts_with("---")
        && line.ends_with("---")
        && line.chars().any(|c| c != '-' && !c.is_whitespace())
}

fn is_original_message_separator(line: &str) -> bool {
    let inner = line
        .trim_matches(|c: char| c == '-' || c.is_whitespace())
        .to_lowercase();
    ORIGINAL_MESSAGE_MARKERS.iter().any(|m| inner == *m)
}

fn is_underscore_separator(line: &str) -> bool {
    line.len() >= 20 && line.bytes().all(|b| b == b'_')
}

/// True if `line` is `<field>:` followed by a value, for one of `fields`.
fn header_field(line: &str, fields: &[&str]) -> bool {
    let line = line.trim_start_matches(['*', ' ', '\t']);
    let Some(colon) = line.find([':', '：']) else {
        return false;
    };
    if colon > 40 {
        return false;
    }
    let name = line[..colon]
        .trim()
        .trim_end_matches('*')
        .trim()
        .to_lowercase();
    fields.iter().any(|f| name == *f)
}

fn sent_field_follows(lines: &[&str], i: usize) -> bool {
    lines
        .iter()
        .skip(i + 1)
        .take(3)
        .any(|l| header_field(l, SENT_FIELDS))
}

/// The first non-blank line at or after `from`, looking at most `window`
/// lines ahead.
fn next_non_blank(lines: &[&str], from: usize, window: usize) -> Option<usize> {
    (from..lines.len().min(from + window)).find(|&j| !lines[j].trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmail_reply() {
        let text = "Thanks, that worked.\n\nJane\n\nOn Fri, Nov 20, 2026 at 10:02 AM Acme Support <support@acme.example> wrote:\n\n> Please try again.\n>\n> > earlier\n";
        assert_eq!(
            strip_quoted_reply(text).as_deref(),
            Some("Thanks, that worked.\n\nJane")
        );
    }

    #[test]
    fn wrapped_attribution() {
        let text = "Yes.\n\nOn Fri, Nov 20, 2026 at 10:02 AM Acme Customer Support Team <\nsupport@acme.example> wrote:\n> Can you confirm?\n";
        assert_eq!(strip_quoted_reply(text).as_deref(), Some("Yes."));
    }

    #[test]
    fn translations() {
        let cases = [
            "Danke!\n\nAm 20.11.2026 um 10:02 schrieb Acme Support:\n> Bitte prüfen.\n",
            "Danke!\n\nAm Fr., 20. Nov. 2026 um 10:02 Uhr schrieb Acme Support <support@acme.example>:\n> Bitte prüfen.\n",
            "Merci !\n\nLe ven. 20 nov. 2026 à 10:02, Acme Support <support@acme.example> a écrit :\n> Merci de vérifier.\n",
            "Merci !\n\nLe 20/11/2026 à 10:02, Acme Support a\u{00A0}écrit\u{00A0}:\n> Merci.\n",
            "¡Gracias!\n\nEl vie, 20 nov 2026 a las 10:02, Acme Support (<support@acme.example>) escribió:\n> Por favor.\n",
            "Obrigado!\n\nEm sex., 20 de nov. de 2026 às 10:02, Acme <support@acme.example> escreveu:\n> Por favor.\n",
            "Bedankt!\n\nOp vr 20 nov. 2026 om 10:02 schreef Acme Support <support@acme.example>:\n> Graag.\n",
            "谢谢！\n\n在 2026年11月20日 星期五 10:02，Acme Support <support@acme.example> 写道：\n> 请确认。\n",
            "謝謝！\n\nAcme Support <support@acme.example> 於 2026年11月20日 週五 上午10:02 寫道：\n> 請確認。\n",
            "Спасибо!\n\n20.11.2026 10:02, Acme Support пишет:\n> Проверьте.\n",
        ];
        for text in cases {
            let first = text.lines().next().unwrap();
            assert_eq!(strip_quoted_reply(text).as_deref(), Some(first), "{text}");
        }
    }

    #[test]
    fn outlook_blocks() {
        let original = "Please see below.\r\n\r\nRegards,\r\nBob\r\n\r\n-----Original Message-----\r\nFrom: Acme Support <support@acme.example>\r\nSent: Friday, November 20, 2026 10:02 AM\r\nTo: Bob <bob@example.com>\r\nSubject: Order 7781\r\n\r\nHello Bob,\r\n";
        assert_eq!(
            strip_quoted_reply(original).as_deref(),
            Some("Please see below.\n\nRegards,\nBob")
        );
        let underscores = "Fixed, thanks.\n\n________________________________\nFrom: Acme Support <support@acme.example>\nSent: Friday, November 20, 2026 10:02\nTo: Bob\nSubject: RE: Order\n\nHello\n";
        assert_eq!(
            strip_quoted_reply(underscores).as_deref(),
            Some("Fixed, thanks.")
        );
        let german = "Danke.\n\nVon: Acme Support <support@acme.example>\nGesendet: Freitag, 20. November 2026 10:02\nAn: Bob\nBetreff: Bestellung\n";
        assert_eq!(strip_quoted_reply(german).as_deref(), Some("Danke."));
        let chinese = "收到。\n\n发件人: Acme Support <support@acme.example>\n发送时间: 2026年11月20日 10:02\n收件人: 李伟\n主题: 订单\n";
        assert_eq!(strip_quoted_reply(chinese).as_deref(), Some("收到。"));
        let foxmail = "好的\n\n------------------ 原始邮件 ------------------\n发件人: \"Acme\" <support@acme.example>;\n发送时间: 2026年11月20日(星期五) 上午10:02\n";
        assert_eq!(strip_quoted_reply(foxmail).as_deref(), Some("好的"));
    }

    #[test]
    fn interleaved_reply_keeps_answers() {
        let text = "See inline.\n\n> What is the order number?\n7781\n\n> And the date?\nNov 20\n";
        assert_eq!(
            strip_quoted_reply(text).as_deref(),
            Some("See inline.\n\n7781\n\nNov 20")
        );
    }

    #[test]
    fn not_stripped() {
        for text in [
            "Just a message.\nWith two lines.",
            "Hi,\n\n---------- Forwarded message ---------\nFrom: Shop <shop@example.com>\nDate: Fri, Nov 20, 2026\nSubject: Receipt\n\nTotal: 5",
            "-------- Forwarded Message --------\nSubject: x\n",
            "FYI\n\nBegin forwarded message:\n\nFrom: Shop <shop@example.com>\nSubject: Receipt\nDate: 20 November 2026 at 10:02:11 CET\nTo: Bob\n\nTotal: 5",
            "My colleague wrote:\nthe part is broken",
            "From: the warehouse team\nthe parcel left today",
            "",
            "> only a quote\n> nothing else\n",
        ] {
            assert_eq!(strip_quoted_reply(text), None, "{text}");
        }
    }

    #[test]
    fn hostile_text_is_linear() {
        let text = "On x wrote:\n".repeat(50_000);
        let _ = strip_quoted_reply(&text);
        let text = "From: a\n".repeat(100_000);
        let _ = strip_quoted_reply(&text);
        let long = "a".repeat(1_000_000) + " wrote:";
        let _ = strip_quoted_reply(&long);
    }
}
