//! Display names as customers set them in their providers' profiles.

/// Longest display name kept, in characters: enough for any real name with
/// titles, short enough that a hostile profile cannot bloat every event and
/// timeline row.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;

/// Cleans a provider-supplied display name for storage and for showing to
/// agents.
///
/// Rules (part of the stream contract):
/// - every run of Unicode whitespace (tabs, newlines, NBSP, ideographic
///   space...) becomes one ASCII space, so a name pasted across lines reads
///   as one line;
/// - other control characters (C0, DEL, C1) are removed: they corrupt logs
///   and terminals and no name needs them;
/// - leading and trailing whitespace is removed;
/// - the result is cut to [`MAX_DISPLAY_NAME_CHARS`] characters (never inside
///   a UTF-8 sequence; a combining sequence may be cut, which only affects
///   absurdly long names).
///
/// Nothing else changes: no case folding, no Unicode normalization (NFC
/// would rewrite CJK compatibility ideographs), and format characters such
/// as bidi marks and ZWNJ stay, because Arabic and Persian names need them to
/// render correctly.
pub fn normalize_display_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_DISPLAY_NAME_CHARS * 4));
    let mut chars = 0;
    let mut pending_space = false;
    for ch in raw.chars() {
        if ch.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if ch.is_control() {
            continue;
        }
        let needed = if pending_space { 2 } else { 1 };
        if chars + needed > MAX_DISPLAY_NAME_CHARS {
            break;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(ch);
        chars += needed;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn international_names_kept() {
        assert_eq!(normalize_display_name("王小明"), "王小明");
        assert_eq!(normalize_display_name("  محمد   علي  "), "محمد علي");
        // Persian with a zero-width non-joiner inside a word.
        assert_eq!(
            normalize_display_name("مهدی\u{200C}زاده"),
            "مهدی\u{200C}زاده"
        );
        assert_eq!(normalize_display_name("José Ñúñez"), "José Ñúñez");
        // CJK compatibility ideograph: NFC would change it; we must not.
        assert_eq!(normalize_display_name("\u{F900}"), "\u{F900}");
    }

    #[test]
    fn whitespace_collapsed_and_controls_removed() {
        assert_eq!(
            normalize_display_name("\tJohn\r\n  Doe \u{3000}"),
            "John Doe"
        );
        assert_eq!(
            normalize_display_name("Jo\u{0}hn\u{1B}[31m Doe\u{7F}\u{85}"),
            "John[31m Doe"
        );
        assert_eq!(normalize_display_name("a\u{00A0}\u{00A0}b"), "a b");
        assert_eq!(normalize_display_name(" \n\t "), "");
        assert_eq!(normalize_display_name(""), "");
    }

    #[test]
    fn capped_on_char_boundary() {
        let long = "名".repeat(300);
        let name = normalize_display_name(&long);
        assert_eq!(name.chars().count(), MAX_DISPLAY_NAME_CHARS);
        assert!(name.chars().all(|c| c == '名'));

        // A space that would be the last kept character is dropped, not left
        // trailing.
        let edge = format!("{} b", "a".repeat(MAX_DISPLAY_NAME_CHARS - 1));
        let name = normalize_display_name(&edge);
        assert_eq!(name, "a".repeat(MAX_DISPLAY_NAME_CHARS - 1));

        let exact = "é".repeat(MAX_DISPLAY_NAME_CHARS);
        assert_eq!(normalize_display_name(&exact), exact);
    }
}
