//! Load errors that point admins at the file, the key and the reason, in
//! the same shape as the daemon's channel-file errors.

/// One problem in one rule file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: key `{key}`: {reason}")]
pub struct RuleFileError {
    /// The file name as the caller gave it.
    pub file: String,
    /// Path of the offending key, e.g. `rules[2].match.keywords[0]` (`.`
    /// for the file as a whole).
    pub key: String,
    pub reason: String,
}

/// Every problem found in a set of rule files; nothing was loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rule files:\n  {}", lines(.errors))]
pub struct RuleBookError {
    pub errors: Vec<RuleFileError>,
}

fn lines(errors: &[RuleFileError]) -> String {
    let lines: Vec<_> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n  ")
}
