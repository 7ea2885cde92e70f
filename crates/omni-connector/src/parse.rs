//! The one error type of every connector's pure parsing half.

/// Why authentic input is not a message. `code` is bounded and stable (the
/// dead-letter reason, an HTTP error code, a metric label); `message` is
/// for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub code: &'static str,
    pub message: String,
}

impl ParseError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
