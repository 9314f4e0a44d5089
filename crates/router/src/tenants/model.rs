//! The tenant as the rest of the router sees it, and the rule for tenant names.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::store::TenantStoreError;

/// Longest tenant name: names end up in metric labels, log lines and other services' keys.
pub const MAX_TENANT_NAME_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    /// Sustained requests per second; 0 means unlimited.
    pub rate_limit_rps: u32,
    /// Requests that may arrive at once after a quiet spell; 0 means one second's worth
    /// (`rate_limit_rps`).
    pub burst: u32,
    /// Stored with microsecond precision (what Postgres keeps), so a created tenant compares
    /// equal to the one read back.
    pub created_at: SystemTime,
}

/// What `TenantStore::create` needs; the store sets `created_at` and generates the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    pub name: String,
    pub rate_limit_rps: u32,
    pub burst: u32,
}

/// Checks a tenant name: 1 to 64 characters of `[A-Za-z0-9._-]`. The error names `field`, the
/// name the caller knows it by (`name`, `tenant`, `tenant.name`).
pub fn validate_tenant_name(field: &str, name: &str) -> Result<(), TenantStoreError> {
    let problem = if name.is_empty() {
        "must not be empty".to_owned()
    } else if name.chars().count() > MAX_TENANT_NAME_CHARS {
        format!("must be at most {MAX_TENANT_NAME_CHARS} characters")
    } else if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        format!("character {bad:?} is not allowed (use A-Z, a-z, 0-9, '.', '_', '-')")
    } else {
        return Ok(());
    };
    Err(TenantStoreError::InvalidArgument {
        field: field.to_owned(),
        problem,
    })
}

/// Now, truncated to whole microseconds.
pub(crate) fn now_micros() -> SystemTime {
    from_unix_micros(to_unix_micros(SystemTime::now()))
}

pub(crate) fn to_unix_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

pub(crate) fn from_unix_micros(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(name: &str) -> Option<String> {
        validate_tenant_name("tenant.name", name)
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn tenant_names_are_short_and_plain() {
        assert_eq!(problem("acme"), None);
        assert_eq!(problem("team-a.prod_2"), None);
        assert_eq!(problem(&"a".repeat(64)), None);
        assert_eq!(
            problem("").as_deref(),
            Some("tenant.name: must not be empty")
        );
        assert_eq!(
            problem(&"a".repeat(65)).as_deref(),
            Some("tenant.name: must be at most 64 characters")
        );
        let spaced = problem("acme corp").unwrap_or_default();
        assert!(spaced.starts_with("tenant.name: character ' '"), "{spaced}");
        assert!(problem("é").is_some());
        assert!(problem("a/b").is_some());
    }

    #[test]
    fn microsecond_times_round_trip() {
        let now = now_micros();
        assert_eq!(from_unix_micros(to_unix_micros(now)), now);
        let before_epoch = from_unix_micros(-1_500_000);
        assert_eq!(to_unix_micros(before_epoch), -1_500_000);
    }
}
