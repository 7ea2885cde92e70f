//! Bounds for JSON from outside, checked before serde reads it.

/// The deepest nesting of `[` and `{` outside strings: one pass over the
/// bytes and no recursion, so a hostile `[[[[...` costs what its length
/// does. Unbalanced input is serde's to refuse; this only bounds the work
/// serde may do.
pub fn depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::depth;

    #[test]
    fn depth_ignores_brackets_inside_strings() {
        assert_eq!(depth(br#"{"a":"[[[{{{\"[[["}"#), 1);
        assert_eq!(depth(br#"[[{}],[]]"#), 3);
        assert_eq!(depth(b""), 0);
        assert_eq!(depth("[".repeat(100_000).as_bytes()), 100_000);
    }
}
