//! Text normalization: customers write the same word many ways (full-width
//! Latin from a Chinese IME, Arabic-keyboard ي/ك in Persian text, harakat,
//! tatweel, ZWNJ, Persian digits), and a keyword must match all of them.
//!
//! [`normalize`] applies, in order:
//!
//! 1. NFKC (full-width forms become half-width, Arabic presentation forms
//!    become letters, ligatures split);
//! 2. removal of format characters (ZWNJ, ZWJ, bidi marks and isolates,
//!    soft hyphen, BOM, Arabic letter mark, tag characters), variation
//!    selectors, other control characters, the tatweel, and Arabic
//!    diacritics (U+064B..U+065F, U+0670, U+0610..U+061A and the Quranic
//!    annotation marks);
//! 3. Arabic-script letter unification: ي ی ى → ي, ك ک ڪ → ك,
//!    أ إ آ ٱ ٲ ٳ → ا, ة ۀ ھ → ه (so "مدرسة", "مدرسه" and "مدرسۀ" meet);
//! 4. Arabic-Indic (٠-٩) and Persian (۰-۹) digits → ASCII digits, Arabic
//!    comma, semicolon, question mark, percent and decimal/thousands
//!    separators → their ASCII forms;
//! 5. lowercase: Unicode's default lowercase mapping per character
//!    (`char::to_lowercase`), plus final sigma ς → σ and İ → i; this is not
//!    full case folding (ß stays ß);
//! 6. whitespace runs collapsed to one ASCII space, trimmed.
//!
//! The result is a fixed point: `normalize(normalize(x)) == normalize(x)`.

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

/// At most this many passes; two always suffice in practice (a removed
/// joiner can leave a base letter and a combining mark to compose).
const MAX_PASSES: usize = 4;

/// The canonical form of `text` that keywords, phrases and regexes are
/// matched against.
pub fn normalize(text: &str) -> String {
    if text.is_ascii() {
        return normalize_ascii(text);
    }
    let mut current = pass(text);
    for _ in 1..MAX_PASSES {
        if is_fixed_point(&current) {
            break;
        }
        let next = pass(&current);
        if next == current {
            break;
        }
        current = next;
    }
    current
}

/// ASCII text in one pass: it is NFKC already, and lowercase, dropped
/// controls and collapsed spaces leave a fixed point.
fn normalize_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for b in text.bytes() {
        if b.is_ascii_whitespace() || b == 0x0B {
            space = !out.is_empty();
        } else if !b.is_ascii_control() {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(char::from(b.to_ascii_lowercase()));
        }
    }
    out
}

/// One pass of steps 1-6. NFKC is skipped when the quick check proves the
/// text already is (all ASCII text, most Persian, Arabic and Chinese).
fn pass(text: &str) -> String {
    if is_nfkc_quick(text.chars()) == IsNormalized::Yes {
        fold_chars(text.chars(), text.len())
    } else {
        fold_chars(text.nfkc(), text.len())
    }
}

/// Steps 2-6 over NFKC characters.
fn fold_chars(chars: impl Iterator<Item = char>, capacity: usize) -> String {
    let mut out = String::with_capacity(capacity);
    let mut space = false;
    for c in chars {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if c.is_ascii() {
            if !c.is_ascii_control() {
                if space {
                    out.push(' ');
                    space = false;
                }
                out.push(c.to_ascii_lowercase());
            }
            continue;
        }
        let mut push = |c: char| {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        };
        match fold(c) {
            Fold::Drop => {}
            Fold::To(mapped) => push(mapped),
            Fold::Lower => {
                for lower in c.to_lowercase() {
                    push(lower);
                }
            }
        }
    }
    out
}

/// Whether another pass would change `text`: it is NFKC, has nothing to
/// fold or drop, and its spaces are already collapsed.
fn is_fixed_point(text: &str) -> bool {
    if is_nfkc_quick(text.chars()) != IsNormalized::Yes {
        return false;
    }
    let mut previous_space = true;
    for c in text.chars() {
        if c.is_whitespace() {
            if c != ' ' || previous_space {
                return false;
            }
            previous_space = true;
            continue;
        }
        previous_space = false;
        match fold(c) {
            Fold::Drop => return false,
            Fold::To(mapped) if mapped != c => return false,
            Fold::To(_) => {}
            Fold::Lower => {
                let mut lower = c.to_lowercase();
                if lower.next() != Some(c) || lower.next().is_some() {
                    return false;
                }
            }
        }
    }
    !text.ends_with(' ')
}

enum Fold {
    Drop,
    To(char),
    Lower,
}

fn fold(c: char) -> Fold {
    match c {
        // Arabic-script letter variants.
        '\u{064A}' | '\u{06CC}' | '\u{0649}' => Fold::To('\u{064A}'),
        '\u{0643}' | '\u{06A9}' | '\u{06AA}' => Fold::To('\u{0643}'),
        '\u{0623}' | '\u{0625}' | '\u{0622}' | '\u{0671}' | '\u{0672}' | '\u{0673}' => {
            Fold::To('\u{0627}')
        }
        '\u{0629}' | '\u{06C0}' | '\u{06BE}' => Fold::To('\u{0647}'),
        // Digits.
        '\u{0660}'..='\u{0669}' => Fold::To(digit(c, '\u{0660}')),
        '\u{06F0}'..='\u{06F9}' => Fold::To(digit(c, '\u{06F0}')),
        // Arabic punctuation.
        '\u{060C}' | '\u{066C}' => Fold::To(','),
        '\u{061B}' => Fold::To(';'),
        '\u{061F}' => Fold::To('?'),
        '\u{066A}' => Fold::To('%'),
        '\u{066B}' | '\u{06D4}' => Fold::To('.'),
        // Lowercase special cases.
        '\u{03C2}' => Fold::To('\u{03C3}'),
        '\u{0130}' => Fold::To('i'),
        _ if is_dropped(c) => Fold::Drop,
        _ => Fold::Lower,
    }
}

fn digit(c: char, zero: char) -> char {
    char::from(b'0' + (u32::from(c) - u32::from(zero)) as u8)
}

/// Characters that carry no letters of their own: format characters,
/// controls, the tatweel and Arabic diacritics.
fn is_dropped(c: char) -> bool {
    matches!(c,
        // Controls other than whitespace (whitespace is handled before).
        '\u{0000}'..='\u{001F}' | '\u{007F}'..='\u{009F}'
        // Format characters (general category Cf).
        | '\u{00AD}'
        | '\u{0600}'..='\u{0605}'
        | '\u{061C}'
        | '\u{06DD}'
        | '\u{070F}'
        | '\u{0890}'..='\u{0891}'
        | '\u{08E2}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}' | '\u{110CD}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}' | '\u{E0020}'..='\u{E007F}'
        // Variation selectors.
        | '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}'
        // Tatweel.
        | '\u{0640}'
        // Arabic diacritics and Quranic marks.
        | '\u{0610}'..='\u{061A}'
        | '\u{064B}'..='\u{065F}'
        | '\u{0670}'
        | '\u{06D6}'..='\u{06DC}'
        | '\u{06DF}'..='\u{06E4}'
        | '\u{06E7}'..='\u{06E8}'
        | '\u{06EA}'..='\u{06ED}'
    )
}

/// Scripts written without spaces between words (Han, kana, Hangul, Thai,
/// Lao, Khmer, Myanmar): a keyword in them matches as a substring, and
/// their characters count as word boundaries for keywords in other
/// scripts ("我要refund" contains the word "refund").
pub(crate) fn is_unspaced(c: char) -> bool {
    matches!(c,
        '\u{1100}'..='\u{11FF}'
        | '\u{2E80}'..='\u{2FDF}'
        | '\u{3005}'..='\u{3007}'
        | '\u{3021}'..='\u{3029}'
        | '\u{3031}'..='\u{303B}'
        | '\u{3040}'..='\u{30FF}'
        | '\u{3130}'..='\u{318F}'
        | '\u{31F0}'..='\u{31FF}'
        | '\u{3400}'..='\u{4DBF}'
        | '\u{4E00}'..='\u{9FFF}'
        | '\u{A960}'..='\u{A97F}'
        | '\u{AC00}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{FF66}'..='\u{FF9F}'
        | '\u{0E00}'..='\u{0EFF}'
        | '\u{1000}'..='\u{109F}'
        | '\u{1780}'..='\u{17FF}'
        | '\u{20000}'..='\u{3FFFF}'
    )
}

/// Whether `c` (a neighbour of a keyword in normalized text) ends a word:
/// anything that is not a letter or digit, or a character of an unspaced
/// script.
pub(crate) fn is_boundary(c: Option<char>) -> bool {
    match c {
        None => true,
        Some(c) => !c.is_alphanumeric() || is_unspaced(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn persian_yeh_keheh_and_zwnj() {
        // "I want my order" typed on an Arabic keyboard and on a Persian one,
        // with and without the ZWNJ after "می".
        let arabic_keyboard = normalize("مي\u{200C}خواهم سفارشم را ببينم، كجاست؟");
        let persian_keyboard = normalize("میخواهم سفارشم را ببینم، کجاست؟");
        assert_eq!(arabic_keyboard, persian_keyboard);
        assert_eq!(arabic_keyboard, "ميخواهم سفارشم را ببينم, كجاست?");
    }

    #[test]
    fn arabic_diacritics_tatweel_and_letter_variants() {
        let text = "أُرِيدُ اسْتِرْدَادَ المـــال لطلبيّة رقم ١٢٣ إلى";
        assert_eq!(normalize(text), "اريد استرداد المال لطلبيه رقم 123 الي");
        // Teh marbuta and heh meet, as do alef maksura and yeh.
        assert_eq!(normalize("مدرسة"), normalize("مدرسه"));
        assert_eq!(normalize("على"), normalize("علي"));
        // Presentation forms (from old PDFs and some keyboards) are letters.
        assert_eq!(normalize("\u{FEF7}"), "لا");
    }

    #[test]
    fn digits_of_every_arabic_script_become_ascii() {
        assert_eq!(normalize("سفارش ۱۲۳۴۵"), "سفارش 12345");
        assert_eq!(normalize("طلب رقم ٩٨٧٦"), "طلب رقم 9876");
        assert_eq!(normalize("۱۲٫۵٪"), "12.5%");
    }

    #[test]
    fn chinese_full_width_forms_become_half_width() {
        assert_eq!(normalize("ＯＲＤＥＲ１２３"), "order123");
        assert_eq!(
            normalize("我的订单ＯＲＤＥＲ１２３在哪里？"),
            "我的订单order123在哪里?"
        );
        // The ideographic space is a space.
        assert_eq!(normalize("退款\u{3000}\u{3000}申请"), "退款 申请");
    }

    #[test]
    fn case_whitespace_and_invisible_characters() {
        assert_eq!(
            normalize("  Where IS\tmy\n\nORDER?  "),
            "where is my order?"
        );
        assert_eq!(normalize("re\u{00AD}fund\u{200B}"), "refund");
        assert_eq!(normalize("ΟΔΟΣ"), normalize("οδος"));
        assert_eq!(normalize("İSTANBUL"), "istanbul");
        // A bidi override in a name cannot hide text from a keyword.
        assert_eq!(normalize("\u{202E}dnufer\u{202C}"), "dnufer");
        assert_eq!(normalize(""), "");
        assert_eq!(normalize(" \u{200C} "), "");
    }

    #[test]
    fn removing_a_joiner_lets_marks_compose() {
        // e + ZWJ + combining acute: once the joiner is gone, NFKC composes.
        assert_eq!(normalize("e\u{200D}\u{0301}"), "é");
    }

    #[test]
    fn unspaced_scripts_and_boundaries() {
        assert!(is_unspaced('退'));
        assert!(is_unspaced('カ'));
        assert!(is_unspaced('한'));
        assert!(!is_unspaced('a'));
        assert!(!is_unspaced('س'));
        assert!(is_boundary(Some('要')));
        assert!(is_boundary(Some(' ')));
        assert!(!is_boundary(Some('s')));
        assert!(!is_boundary(Some('ش')));
    }

    #[test]
    fn the_ascii_path_agrees_with_the_general_one() {
        for text in [
            "  Where IS\tmy\n\nORDER?  ",
            "a\u{1}b\x7fc",
            "\x0b\x0c x \r\n",
            "",
        ] {
            assert_eq!(normalize_ascii(text), pass(text), "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn ascii_fast_path_matches_the_full_pipeline(text in "[\\x00-\\x7f]{0,40}") {
            prop_assert_eq!(normalize_ascii(&text), pass(&text));
        }

        #[test]
        fn normalize_never_panics_and_is_idempotent(text in any::<String>()) {
            let once = normalize(&text);
            prop_assert_eq!(normalize(&once), once);
        }

        #[test]
        fn idempotent_on_the_characters_that_matter(
            chars in proptest::collection::vec(
                prop_oneof![
                    proptest::char::range('\u{0600}', '\u{06FF}'),
                    proptest::char::range('\u{0300}', '\u{036F}'),
                    proptest::char::range('\u{FB50}', '\u{FEFF}'),
                    proptest::char::range('\u{FF00}', '\u{FFEF}'),
                    proptest::char::range('\u{2000}', '\u{206F}'),
                    proptest::char::range('\u{1E00}', '\u{1FFF}'),
                    proptest::char::range('A', 'z'),
                    Just(' '),
                ],
                0..40,
            )
        ) {
            let text: String = chars.into_iter().collect();
            let once = normalize(&text);
            prop_assert_eq!(normalize(&once), once.clone());
            prop_assert!(!once.starts_with(' ') && !once.ends_with(' '));
            prop_assert!(!once.contains("  "));
        }
    }
}
