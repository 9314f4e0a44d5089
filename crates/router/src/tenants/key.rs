//! API keys: `tg_` followed by 32 random bytes in unpadded base64url (43 characters). The
//! prefix makes keys recognisable to secret scanners and to people; only [`ApiKey::sha256`] of a
//! key is ever stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::store::TenantStoreError;

pub const API_KEY_PREFIX: &str = "tg_";
const RANDOM_BYTES: usize = 32;
/// base64 of 32 bytes without padding.
const ENCODED_CHARS: usize = 43;
pub const API_KEY_CHARS: usize = API_KEY_PREFIX.len() + ENCODED_CHARS;

/// A tenant's secret. `Debug` shows only the prefix so that keys never reach logs by accident;
/// [`ApiKey::expose`] is the one way to the text, for showing it to its owner once.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({API_KEY_PREFIX}<redacted>)")
    }
}

impl ApiKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, TenantStoreError> {
        let mut bytes = [0_u8; RANDOM_BYTES];
        getrandom::fill(&mut bytes)
            .map_err(|e| TenantStoreError::Internal(format!("OS random source: {e}")))?;
        Ok(Self(format!(
            "{API_KEY_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    /// The key text, when `text` has the shape of a tollgate key (it may still be unknown).
    pub fn parse(text: &str) -> Option<Self> {
        looks_like_api_key(text).then(|| Self(text.to_owned()))
    }

    /// The secret itself: to show its owner once, or to send in `authorization`.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the store keeps and looks keys up by.
    pub fn sha256(&self) -> [u8; 32] {
        sha256(&self.0)
    }
}

/// SHA-256 of `text`.
pub fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// `tg_` + 43 base64url characters.
pub fn looks_like_api_key(text: &str) -> bool {
    text.len() == API_KEY_CHARS
        && text.starts_with(API_KEY_PREFIX)
        && text[API_KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape_and_differ() -> Result<(), TenantStoreError> {
        let first = ApiKey::generate()?;
        let second = ApiKey::generate()?;
        assert_ne!(first, second);
        assert_eq!(first.expose().len(), 46);
        assert!(first.expose().starts_with("tg_"));
        assert!(looks_like_api_key(first.expose()));
        assert_eq!(ApiKey::parse(first.expose()), Some(first.clone()));
        assert_eq!(first.sha256(), sha256(first.expose()));
        assert_ne!(first.sha256(), second.sha256());
        Ok(())
    }

    #[test]
    fn debug_never_shows_the_secret() -> Result<(), TenantStoreError> {
        let key = ApiKey::generate()?;
        let shown = format!("{key:?} {:?}", Some(&key));
        assert!(!shown.contains(&key.expose()[3..]), "{shown}");
        assert!(shown.contains("redacted"));
        Ok(())
    }

    #[test]
    fn only_tollgate_shaped_text_parses() {
        assert!(ApiKey::parse("").is_none());
        assert!(ApiKey::parse("sk-abc").is_none());
        assert!(ApiKey::parse(&format!("tg_{}", "a".repeat(42))).is_none());
        assert!(ApiKey::parse(&format!("tg_{}", "a".repeat(44))).is_none());
        assert!(ApiKey::parse(&format!("tg_{}+", "a".repeat(42))).is_none());
        assert!(ApiKey::parse(&format!("tg_{}", "a".repeat(43))).is_some());
    }
}
