//! Typed channel settings with errors that name the key.

use serde::de::DeserializeOwned;

/// A problem in one channel's settings: which key, and why. The daemon adds
/// the file name.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("key `{key}`: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending key (`.` for the file's top level).
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self {
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}

/// Deserializes a channel's settings table into its typed config,
/// reporting the path of the first bad key. Unknown keys are errors (the
/// config structs use `deny_unknown_fields`), so a typo never silently
/// falls back to a default.
pub fn parse_settings<T: DeserializeOwned>(settings: toml::Table) -> Result<T, ConfigError> {
    let value = toml::Value::Table(settings);
    serde_path_to_error::deserialize(value).map_err(|error| {
        let mut key = error.path().to_string();
        let reason = error.inner().to_string();
        // At the top level an unknown key is reported at `.`; name the key.
        if key == "."
            && let Some(field) = reason
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
        {
            key = field.to_owned();
        }
        ConfigError { key, reason }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        limits: Limits,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Limits {
        max: u32,
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn names_the_key_of_each_error() {
        let err = parse_settings::<Sample>(table("name = 'a'\n[limits]\nmax = 'x'")).unwrap_err();
        assert_eq!(err.key, "limits.max");
        assert!(err.reason.contains("invalid type"), "{}", err.reason);

        let err =
            parse_settings::<Sample>(table("name = 'a'\n[limits]\nmax = 1\nmix = 2")).unwrap_err();
        assert_eq!(err.key, "limits.mix");
        assert!(
            err.reason.starts_with("unknown field `mix`"),
            "{}",
            err.reason
        );

        let err = parse_settings::<Sample>(table("name = 'a'\nnmae = 'b'\n[limits]\nmax = 1"))
            .unwrap_err();
        assert_eq!(err.key, "nmae");

        let err = parse_settings::<Sample>(table("[limits]\nmax = 1")).unwrap_err();
        assert!(
            err.reason.contains("missing field `name`"),
            "{}",
            err.reason
        );
    }
}
