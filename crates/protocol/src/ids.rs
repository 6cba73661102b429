//! Validated identifiers that come off the network.
//!
//! Execution and flow ids become directory names, so constructing one of these
//! types is the only place the path-safety rule lives (PROTOCOL.md §5): every
//! other module can join them onto a path without thinking again.

use std::fmt;

/// Longest id accepted, in bytes. Real ids are UUIDs (36 bytes).
pub const MAX_ID_BYTES: usize = 128;

/// Why an id from the server was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} {value:?} is a relative path component")]
    Dots { kind: &'static str, value: String },
    #[error("{kind} {value:?} contains a path separator or NUL")]
    Separator { kind: &'static str, value: String },
    #[error("{kind} is {len} bytes long (at most {MAX_ID_BYTES})")]
    TooLong { kind: &'static str, len: usize },
}

fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
        });
    }
    if value == "." || value == ".." {
        return Err(IdError::Dots {
            kind,
            value: value.to_string(),
        });
    }
    if value.contains(['/', '\\', '\0']) {
        return Err(IdError::Separator {
            kind,
            value: value.escape_debug().to_string(),
        });
    }
    Ok(())
}

macro_rules! path_safe_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` as a single, safe path component.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                validate($kind, value)?;
                Ok(Self(value.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<std::path::Path> for $name {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&self.0)
            }
        }
    };
}

path_safe_id!(
    /// `execution.id` from a pending execution: a directory name and a URL path segment.
    ExecutionId,
    "execution id"
);
path_safe_id!(
    /// `execution.flo_id` from a pending execution: a directory name.
    FloId,
    "flow id"
);

/// The runner identifier: 16 ASCII letters, generated once (PROTOCOL.md §1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunnerIdentifier(String);

impl RunnerIdentifier {
    pub const LEN: usize = 16;

    pub fn generate() -> Self {
        use rand::Rng;
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut rng = rand::thread_rng();
        let id = (0..Self::LEN)
            .map(|_| LETTERS[rng.gen_range(0..LETTERS.len())] as char)
            .collect();
        Self(id)
    }

    /// Accepts any non-empty run of ASCII letters and digits, so a state file
    /// written by another runner build still works; the identifier goes into
    /// URL paths, so nothing else is allowed.
    pub fn parse(value: &str) -> Option<Self> {
        if value.is_empty() || value.len() > MAX_ID_BYTES {
            return None;
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        Some(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunnerIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_uuids() {
        let id = ExecutionId::parse("7e255955-5303-449d-8a30-a9810d3e55c0").unwrap();
        assert_eq!(id.as_str(), "7e255955-5303-449d-8a30-a9810d3e55c0");
    }

    #[test]
    fn rejects_hostile_values() {
        for bad in ["", ".", "..", "a/b", "../x", "a\\b", "a\0b", "/etc"] {
            assert!(FloId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(FloId::parse(&"x".repeat(129)).is_err());
        assert!(FloId::parse(&"x".repeat(128)).is_ok());
        assert!(FloId::parse("..a").is_ok());
    }

    #[test]
    fn generated_identifier_is_sixteen_letters() {
        let id = RunnerIdentifier::generate();
        assert_eq!(id.as_str().len(), 16);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_alphabetic()));
        assert!(RunnerIdentifier::parse(id.as_str()).is_some());
        assert!(RunnerIdentifier::parse("a/b").is_none());
    }
}
