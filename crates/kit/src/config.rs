//! Layered configuration: built-in defaults, then an optional TOML file, then `TOLLGATE_*`
//! environment variables (`__` separates nesting: `TOLLGATE_ROUTER__LISTEN__GRPC=0.0.0.0:50051`).
//! `DATABASE_URL` and `REDIS_URL` are also read, into `storage.database_url` and
//! `storage.redis_url`, because that is how every platform hands them out.
//!
//! Unknown keys and values of the wrong type are errors that name the key and where it came
//! from; the binary exits with code 64 (EX_USAGE) on them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Environment variables with the `TOLLGATE_` prefix that are not configuration keys: the
/// config file's path, the log filter, and the client commands' API key.
const NON_CONFIG_VARS: [&str; 3] = ["CONFIG", "LOG", "API_KEY"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist")]
    MissingFile { path: PathBuf },
    /// figment's message names the key (`for key "router.listen.grpc"`) and its source (the
    /// file or the environment variable).
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `T` from its defaults, the TOML file at `path_opt` (which must exist when given) and the
/// environment.
pub fn load<T>(path_opt: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = path_opt {
        if !path.exists() {
            return Err(ConfigError::MissingFile {
                path: path.to_owned(),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment
        .merge(
            Env::raw()
                .only(&["DATABASE_URL", "REDIS_URL"])
                .map(|key| format!("storage.{}", key.as_str().to_ascii_lowercase()).into()),
        )
        .merge(
            Env::prefixed("TOLLGATE_")
                .filter(|key| {
                    !NON_CONFIG_VARS
                        .iter()
                        .any(|skip| key.as_str().eq_ignore_ascii_case(skip))
                })
                .split("__"),
        );
    figment
        .extract()
        .map_err(|error| ConfigError::Invalid(describe(error)))
}

/// One line per problem, each naming the key (`server.concurrency_limit`) and where the bad
/// value came from (the file, or the exact environment variable).
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let path: Vec<String> = e
                .path
                .iter()
                .map(|part| part.to_ascii_lowercase())
                .collect();
            let key = path.join(".");
            let source = match &e.metadata {
                Some(metadata) => match &metadata.source {
                    Some(figment::Source::File(file)) => format!(" (in {})", file.display()),
                    _ if metadata.name.contains("TOLLGATE_") => {
                        format!(
                            " (from environment variable TOLLGATE_{})",
                            path.join("__").to_ascii_uppercase()
                        )
                    }
                    _ if metadata.name.contains("environment") => {
                        let var = path
                            .last()
                            .map(|last| last.to_ascii_uppercase())
                            .unwrap_or_default();
                        format!(" (from environment variable {var})")
                    }
                    _ => String::new(),
                },
                None => String::new(),
            };
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("`{key}`: {}{source}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where one service listens: gRPC, and HTTP for `/metrics` and `/healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

impl ListenConfig {
    pub fn loopback(grpc_port: u16, metrics_port: u16) -> Self {
        Self {
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
        }
    }
}

/// Limits and timings that apply to every gRPC server of the process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Upper bound for any request; a shorter `grpc-timeout` from the client wins.
    pub request_timeout_secs: u64,
    /// Requests handled at once per server; more wait in line (bounded by the timeout).
    pub concurrency_limit: usize,
    /// After SIGTERM: time with health NOT_SERVING while still accepting, so that load balancers
    /// stop sending before the listener closes.
    pub shutdown_delay_secs: u64,
    /// After the delay: time for in-flight requests to finish before connections are closed.
    pub grace_period_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024 * 1024,
            request_timeout_secs: 300,
            concurrency_limit: 1024,
            shutdown_delay_secs: 0,
            grace_period_secs: 25,
        }
    }
}

impl ServerConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_secs(self.shutdown_delay_secs)
    }
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(self.grace_period_secs)
    }
}

/// Where the stores live. Both unset is the embedded default: SQLite files under `data_dir` and
/// an in-process token cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Postgres URL (`DATABASE_URL`); switches the case bank and the cost ledger to Postgres.
    pub database_url: Option<String>,
    /// Redis URL (`REDIS_URL`); turns on the token cache's shared L2.
    pub redis_url: Option<String>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            database_url: None,
            redis_url: None,
        }
    }
}

/// How services reach each other. In `--target all` the binary fills these with the addresses it
/// actually bound, so they only matter when services run in separate processes or pods.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PeersConfig {
    pub router: String,
    pub token_cache: String,
    pub casebank: String,
    pub cost_tracker: String,
    pub provider_adapter: String,
    /// Bound on establishing a connection to a peer.
    pub connect_timeout_ms: u64,
    /// Services started in the same process call each other in process (the same gRPC stack,
    /// no socket); `false` sends every call over loopback TCP as separate processes would.
    pub in_process: bool,
}

impl Default for PeersConfig {
    fn default() -> Self {
        Self {
            router: "http://127.0.0.1:50051".into(),
            token_cache: "http://127.0.0.1:50052".into(),
            casebank: "http://127.0.0.1:50053".into(),
            cost_tracker: "http://127.0.0.1:50054".into(),
            provider_adapter: "http://127.0.0.1:50055".into(),
            connect_timeout_ms: 1000,
            in_process: true,
        }
    }
}

#[cfg(test)]
// figment's Jail fixes the closure's error type; its size is not ours to choose.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        server: ServerConfig,
        storage: StorageConfig,
    }

    fn error_text(result: Result<Sample, ConfigError>) -> String {
        match result {
            Err(error) => error.to_string(),
            Ok(sample) => panic!("bad configuration accepted: {sample:?}"),
        }
    }

    #[test]
    fn defaults_then_file_then_environment() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "tollgate.toml",
                "[server]\nconcurrency_limit = 7\ngrace_period_secs = 3\n",
            )?;
            jail.set_env("TOLLGATE_SERVER__GRACE_PERIOD_SECS", "9");
            jail.set_env("REDIS_URL", "redis://h:1");
            let loaded: Sample =
                load(Some(Path::new("tollgate.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(loaded.server.concurrency_limit, 7, "file overrides default");
            assert_eq!(
                loaded.server.grace_period_secs, 9,
                "environment overrides file"
            );
            assert_eq!(
                loaded.server.max_message_bytes,
                ServerConfig::default().max_message_bytes
            );
            assert_eq!(loaded.storage.redis_url.as_deref(), Some("redis://h:1"));
            Ok(())
        });
    }

    #[test]
    fn wrong_type_names_the_key_and_the_variable() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("TOLLGATE_SERVER__CONCURRENCY_LIMIT", "lots");
            let message = error_text(load(None));
            assert!(message.contains("server.concurrency_limit"), "{message}");
            assert!(
                message.contains("TOLLGATE_SERVER__CONCURRENCY_LIMIT"),
                "{message}"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_key_in_file_is_an_error_naming_it() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("tollgate.toml", "[server]\nconcurency_limit = 7\n")?;
            let message = error_text(load(Some(Path::new("tollgate.toml"))));
            assert!(message.contains("concurency_limit"), "{message}");
            assert!(message.contains("tollgate.toml"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let message = error_text(load(Some(Path::new("/nonexistent/tollgate.toml"))));
        assert!(message.contains("/nonexistent/tollgate.toml"), "{message}");
    }

    #[test]
    fn non_config_variables_are_ignored() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("TOLLGATE_CONFIG", "x.toml");
            jail.set_env("TOLLGATE_LOG", "debug");
            jail.set_env("TOLLGATE_API_KEY", "tg_secret");
            let loaded: Result<Sample, _> = load(None);
            assert!(loaded.is_ok(), "{loaded:?}");
            Ok(())
        });
    }
}
