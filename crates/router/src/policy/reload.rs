//! Hot reloading of the routing policy file without dropping requests.
//!
//! Requests read the policy through [`PolicyHandle::current`], an `Arc` clone under a read lock
//! held for nanoseconds: a request keeps the policy it started with to its end, and the next
//! request sees the new one. A watcher polls the file's modification time and contents (a poll
//! every second needs no inotify dependency and works on ConfigMap volumes, whose updates are
//! symlink swaps). A file that does not parse or validate is refused: the old policy stays in
//! force, the error is logged and counted in `tollgate_router_policy_reloads_total{result="error"}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use tollgate_kit::shutdown::Shutdown;

use crate::policy::{PolicyConfig, PolicyError};

/// How often the watcher looks at the policy file.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The policy in force; cheap to clone, shared by every request.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    current: Arc<RwLock<Arc<PolicyConfig>>>,
}

impl PolicyHandle {
    pub fn new(policy: PolicyConfig) -> Self {
        publish_switches(&policy);
        Self {
            current: Arc::new(RwLock::new(Arc::new(policy))),
        }
    }

    pub fn current(&self) -> Arc<PolicyConfig> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            // A writer panicked mid-swap; the value itself is a complete Arc either way.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn replace(&self, policy: PolicyConfig) {
        publish_switches(&policy);
        let policy = Arc::new(policy);
        match self.current.write() {
            Ok(mut guard) => *guard = policy,
            Err(poisoned) => *poisoned.into_inner() = policy,
        }
    }

    /// Loads `path` now (start-up: an error stops the service) and then watches it until
    /// shutdown, swapping in each valid new version.
    pub fn watch_file(path: PathBuf, shutdown: &Shutdown) -> Result<Self, PolicyError> {
        let (policy, mut last_text) = load_file(&path)?;
        let handle = Self::new(policy);
        let watched = handle.clone();
        let stop = shutdown.clone();
        shutdown.spawn_tracked(async move {
            let mut ticker = tokio::time::interval(POLL_INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.triggered() => break,
                    _ = ticker.tick() => {}
                }
                let text = match tokio::fs::read_to_string(&path).await {
                    Ok(text) => text,
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "cannot read the routing policy file; keeping the current policy");
                        continue;
                    }
                };
                if text == last_text {
                    continue;
                }
                match parse(&path, &text) {
                    Ok(policy) => {
                        watched.replace(policy);
                        metrics::counter!("tollgate_router_policy_reloads_total", "result" => "ok")
                            .increment(1);
                        tracing::info!(path = %path.display(), "routing policy reloaded");
                    }
                    Err(error) => {
                        metrics::counter!("tollgate_router_policy_reloads_total", "result" => "error")
                            .increment(1);
                        tracing::error!(%error, "routing policy refused; the previous one stays in force");
                    }
                }
                last_text = text;
            }
        });
        Ok(handle)
    }
}

/// `tollgate_router_switch_enabled{switch}`: 1 when on, so dashboards show which switches were
/// in effect at any time (responses carry them per request).
fn publish_switches(policy: &PolicyConfig) {
    let switches = policy.switches;
    for (name, on) in [
        ("routing", switches.routing),
        ("casebank", switches.casebank),
        ("case_memory", switches.case_memory),
        ("token_cache", switches.token_cache),
        ("cascade", switches.cascade),
    ] {
        metrics::gauge!("tollgate_router_switch_enabled", "switch" => name).set(if on {
            1.0
        } else {
            0.0
        });
    }
}

/// Reads and checks a policy file: the same keys as `[router.policy]`, at the top level.
pub fn load_file(path: &Path) -> Result<(PolicyConfig, String), PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|error| PolicyError::File {
        path: path.display().to_string(),
        message: error.to_string(),
    })?;
    let policy = parse(path, &text)?;
    Ok((policy, text))
}

fn parse(path: &Path, text: &str) -> Result<PolicyConfig, PolicyError> {
    let policy: PolicyConfig = Figment::from(Serialized::defaults(PolicyConfig::default()))
        .merge(Toml::string(text))
        .extract()
        .map_err(|error| PolicyError::File {
            path: path.display().to_string(),
            message: error.to_string(),
        })?;
    policy.validate().map_err(|error| PolicyError::File {
        path: path.display().to_string(),
        message: error.to_string(),
    })?;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::Tier;

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-policy-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("policy.toml");
        let _ = std::fs::write(&path, text);
        path
    }

    #[test]
    fn a_file_overrides_only_the_keys_it_names_and_errors_name_the_key() {
        let path = temp_file(
            "parse",
            "default_tier = \"standard\"\n[switches]\ncascade = false\n",
        );
        let (policy, _) = match load_file(&path) {
            Ok(loaded) => loaded,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(policy.default_tier, Tier::Standard);
        assert!(!policy.switches.cascade);
        assert!(policy.switches.routing);
        assert_eq!(
            policy.critical_agents,
            PolicyConfig::default().critical_agents
        );

        let bad = temp_file("bad", "[casebank]\nneighbors = 3\n");
        let error = load_file(&bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("neighbors"), "{error}");
    }

    #[tokio::test]
    async fn the_watcher_swaps_in_valid_files_and_keeps_the_old_policy_on_errors() {
        let path = temp_file("watch", "default_tier = \"cheap\"\n");
        let shutdown = Shutdown::new();
        let handle = match PolicyHandle::watch_file(path.clone(), &shutdown) {
            Ok(handle) => handle,
            Err(error) => panic!("{error}"),
        };
        let before = handle.current();
        assert_eq!(before.default_tier, Tier::Cheap);

        let _ = std::fs::write(&path, "default_tier = \"premium\"\n");
        let mut reloaded = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if handle.current().default_tier == Tier::Premium {
                reloaded = true;
                break;
            }
        }
        assert!(reloaded, "the new policy was not picked up");
        // A request that started before the reload keeps its policy.
        assert_eq!(before.default_tier, Tier::Cheap);

        let _ = std::fs::write(&path, "default_tier = \"platinum\"\n");
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        assert_eq!(handle.current().default_tier, Tier::Premium);
        shutdown.trigger();
    }
}
