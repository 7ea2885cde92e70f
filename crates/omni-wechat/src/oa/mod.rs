//! Official Accounts (公众号): the server URL WeChat pushes to, and the
//! normalization of what it pushes.

pub mod normalize;
pub mod webhook;
