//! Language tags as channels report them (Telegram's `language_code`, a
//! web page's `lang`, an email's `Content-Language`), checked before they
//! enter the stream's `language` field: a hint from the customer's device
//! is still hostile input.

/// Longest tag kept. Real BCP 47 tags with a region and a script are well
/// under it; RFC 5646 asks implementations to accept at least 35.
pub const MAX_LANGUAGE_TAG_BYTES: usize = 35;

/// Whether `tag` looks like a BCP 47 tag: starts with a letter, then
/// letters, digits, `-` or `_` (some browsers and Android report `fa_IR`),
/// at most [`MAX_LANGUAGE_TAG_BYTES`]. Not a registry check: `xx-YY`
/// passes, because rules compare primary subtags and an unknown one
/// simply matches nothing.
pub fn is_language_tag(tag: &str) -> bool {
    (1..=MAX_LANGUAGE_TAG_BYTES).contains(&tag.len())
        && tag.as_bytes()[0].is_ascii_alphabetic()
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_as_devices_send_them_pass_and_anything_else_does_not() {
        for tag in ["en", "fa-IR", "pt-br", "zh-Hant-TW", "fa_IR", "x-klingon"] {
            assert!(is_language_tag(tag), "{tag}");
        }
        let long = "a".repeat(MAX_LANGUAGE_TAG_BYTES + 1);
        for tag in ["", "fa IR", "<script>", "-en", "1a", "ف", long.as_str()] {
            assert!(!is_language_tag(tag), "{tag}");
        }
    }
}
