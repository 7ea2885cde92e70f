//! Channel ids: the `id` of a channel file, named again by rule files.
//! They appear in webhook URLs, metric labels and every event id (a UUIDv5
//! of the channel id and the provider's message id), so the rule is part
//! of the stream contract and lives here, once.

/// Longest channel id, in bytes (all ASCII).
pub const MAX_CHANNEL_ID_BYTES: usize = 64;

/// Checks a channel id: 1 to 64 lowercase letters, digits, `-` or `_`,
/// starting with a letter or digit. The error is the sentence admins see.
pub fn check_channel_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_CHANNEL_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid channel id `{id}`: use 1 to {MAX_CHANNEL_ID_BYTES} lowercase letters, digits, '-' or '_', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boring_ids_pass_and_others_say_why() {
        for id in ["shop", "support-mail", "sms_2", "9lives"] {
            assert_eq!(check_channel_id(id), Ok(()), "{id}");
        }
        let long = "a".repeat(MAX_CHANNEL_ID_BYTES + 1);
        for id in [
            "",
            "Shop",
            "-shop",
            "_x",
            "shop mail",
            "shöp",
            long.as_str(),
        ] {
            let error = check_channel_id(id).unwrap_err();
            assert!(error.contains(&format!("`{id}`")), "{error}");
        }
    }
}
