//! Secrets in channel config. A channel file names where a secret lives
//! (`{ env = "NAME" }` or `{ file = "/run/secrets/name" }`), never the
//! secret itself, so channel files can be committed and reviewed.

use std::path::PathBuf;

use serde::Deserialize;

/// Where to read a secret from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretRef {
    /// An environment variable of the daemon.
    Env(String),
    /// A file (e.g. a Kubernetes or Docker secret); one trailing newline is
    /// ignored, since editors and `echo` add one.
    File(PathBuf),
}

/// A resolved secret. Its Debug output is redacted so it never reaches a
/// log line by accident.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl AsRef<[u8]> for Secret {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Secret {
    /// A secret held in memory (tests, and values derived at run time).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("environment variable {0} is not valid unicode")]
    EnvNotUnicode(String),
    #[error("cannot read secret file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("secret from {0} is empty")]
    Empty(String),
    /// A template or a mount gone wrong, and as an HMAC key or a token it
    /// would be guessable, so it is refused like an empty one.
    #[error("secret from {0} is only whitespace")]
    Blank(String),
}

impl SecretRef {
    /// Reads the secret now (at channel build and on every reload, so a
    /// rotated file or variable is picked up by a reload).
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let (bytes, origin) = match self {
            SecretRef::Env(name) => {
                let value = std::env::var(name).map_err(|e| match e {
                    std::env::VarError::NotPresent => SecretError::EnvMissing(name.clone()),
                    std::env::VarError::NotUnicode(_) => SecretError::EnvNotUnicode(name.clone()),
                })?;
                (value.into_bytes(), format!("environment variable {name}"))
            }
            SecretRef::File(path) => {
                let mut bytes = std::fs::read(path).map_err(|e| SecretError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                }
                (bytes, format!("file {}", path.display()))
            }
        };
        if bytes.is_empty() {
            return Err(SecretError::Empty(origin));
        }
        if std::str::from_utf8(&bytes).is_ok_and(|s| s.trim().is_empty()) {
            return Err(SecretError::Blank(origin));
        }
        Ok(Secret(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_secret_trims_one_newline_and_debug_is_redacted() {
        let dir = std::env::temp_dir().join(format!("omni-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        std::fs::write(&path, "hunter2\n").unwrap();
        let secret = SecretRef::File(path.clone()).resolve().unwrap();
        assert_eq!(secret.expose(), b"hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            SecretRef::File(path).resolve(),
            Err(SecretError::Empty(_))
        ));
        let missing = SecretRef::Env("OMNI_TEST_SURELY_UNSET_VARIABLE".into()).resolve();
        assert_eq!(
            missing.unwrap_err(),
            SecretError::EnvMissing("OMNI_TEST_SURELY_UNSET_VARIABLE".into())
        );
    }

    #[test]
    fn whitespace_only_secrets_are_refused() {
        let dir = std::env::temp_dir().join(format!("omni-secret-blank-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        for blank in [" ", "  \n\n", "\t\r\n", "\u{3000}\u{a0}\n"] {
            std::fs::write(&path, blank).unwrap();
            let err = SecretRef::File(path.clone()).resolve().unwrap_err();
            assert_eq!(
                err,
                SecretError::Blank(format!("file {}", path.display())),
                "{blank:?}"
            );
            assert!(err.to_string().ends_with("is only whitespace"), "{err}");
        }
        // Whitespace inside or around a real secret is part of it.
        std::fs::write(&path, " hunter 2 \n").unwrap();
        let secret = SecretRef::File(path.clone()).resolve().unwrap();
        assert_eq!(secret.expose(), b" hunter 2 ");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parses_from_toml() {
        #[derive(Deserialize)]
        struct Wrapper {
            secret: SecretRef,
        }
        let w: Wrapper = toml::from_str(r#"secret = { env = "X" }"#).unwrap();
        assert_eq!(w.secret, SecretRef::Env("X".into()));
        let w: Wrapper = toml::from_str(r#"secret = { file = "/run/s" }"#).unwrap();
        assert_eq!(w.secret, SecretRef::File("/run/s".into()));
        assert!(toml::from_str::<Wrapper>(r#"secret = "inline""#).is_err());
    }
}
