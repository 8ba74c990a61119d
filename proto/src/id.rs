//! Session ids: one rule everywhere (control makes them, the relay routes
//! by them, SSH takes them as the user name, the tunnel carries them).
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest session id (a DNS label).
pub const MAX_LEN: usize = 63;

/// True when `s` is a session id as Warren makes them: 1 to 63 lowercase
/// letters and digits, so it is always a single DNS label.
pub fn is_session_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A checked session id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(String);

/// Why a string is not a session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSessionId;

impl fmt::Display for BadSessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a session id is 1 to {MAX_LEN} lowercase letters and digits"
        )
    }
}

impl std::error::Error for BadSessionId {}

impl SessionId {
    pub fn parse(s: &str) -> Result<Self, BadSessionId> {
        if is_session_id(s) {
            Ok(Self(s.to_string()))
        } else {
            Err(BadSessionId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for SessionId {
    type Err = BadSessionId;
    fn from_str(s: &str) -> Result<Self, BadSessionId> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule() {
        assert!(is_session_id("abc123"));
        for bad in ["", "ABC", "a-b", "a.b", "a b", &"a".repeat(64), "é"] {
            assert!(!is_session_id(bad), "{bad:?}");
            assert!(SessionId::parse(bad).is_err());
        }
        assert!(serde_json::from_str::<SessionId>("\"Bad\"").is_err());
        let id: SessionId = serde_json::from_str("\"s1\"").expect("valid id");
        assert_eq!(id.as_str(), "s1");
    }
}
