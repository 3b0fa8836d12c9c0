//! A shared secret (the bearer token between the services). It never shows in logs, `Debug`
//! output or errors.

use std::fmt;
use std::path::Path;

use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct Secret(String);

/// Why a token could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the token is empty")]
    Empty,
    #[error("give the token either directly or as a file, not both")]
    Both,
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Result<Secret, SecretError> {
        let value = value.into().trim().to_string();
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret(value))
    }

    /// The token from a value (an environment variable, say) or from a file, whichever is given.
    pub fn load(value: Option<&str>, file: Option<&Path>) -> Result<Option<Secret>, SecretError> {
        match (value, file) {
            (Some(_), Some(_)) => Err(SecretError::Both),
            (Some(v), None) => Secret::new(v).map(Some),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| SecretError::Read { path: path.display().to_string(), source })?;
                Secret::new(text).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    /// Compares with a presented token in time that does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }

    /// The value, for the one place that must send it (an `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed_and_compared_exactly() {
        let s = Secret::new("  hunter2\n").expect("secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(s.matches("hunter2"));
        assert!(!s.matches("hunter3"));
        assert!(!s.matches("hunter"));
        assert!(!s.matches(""));
    }

    #[test]
    fn loads_from_a_file_or_a_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").expect("write");
        assert!(Secret::load(None, Some(&path)).expect("load").expect("some").matches("from-file"));
        assert!(Secret::load(Some("v"), None).expect("load").expect("some").matches("v"));
        assert!(Secret::load(None, None).expect("load").is_none());
        assert!(matches!(Secret::load(Some("v"), Some(&path)), Err(SecretError::Both)));
        assert!(matches!(Secret::load(Some("  "), None), Err(SecretError::Empty)));
    }
}
