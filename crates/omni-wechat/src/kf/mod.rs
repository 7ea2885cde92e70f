//! WeChat Customer Service (微信客服) through WeCom: the callback that says
//! there is news, the puller that fetches it, and the normalization of what
//! it fetches.

pub mod normalize;
pub(crate) mod sync;
pub mod webhook;

/// Whether `value` can be an `open_kfid` (`wk` ids of letters, digits, `_`
/// and `-`): what a callback names is used as a state key and an API
/// argument.
pub(crate) fn valid_open_kfid(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
